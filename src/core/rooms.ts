/**
 * Rooms with personal single-use URLs (core.md §7). Filled in by the next commit; the
 * RoomService interface is what signalling (src/core/signal.ts) relies on.
 */
import type { TokenClaims } from './tokens.js';

export interface RoomService {
  /** Whether these claims may join this room: its owner with a user token, or a token stamped with it. */
  mayJoin(claims: TokenClaims, room: string): boolean;
  /** The room's owner and title, or null. */
  get(room: string): { id: string; owner: string; title: string } | null;
}
