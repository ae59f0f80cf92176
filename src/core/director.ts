/**
 * The director's shared services (core.md §1): what every core module (login, rooms,
 * conferences, signalling, web client) is given by startCore() (src/core/index.ts).
 *
 * A module is a function `(core: CoreContext) => void | Promise<void>` that adds its
 * routes (`core.http.addRoutes([...])`, `core.http.onUpgrade('/v1/signal', ...)`) and
 * registers what must happen at stop (`core.onStop(...)`). Modules are listed in
 * MODULES in src/core/index.ts.
 */
import type { GatehouseConfig } from '../config/config.js';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import type { EventSink } from '../events/eve.js';
import type { UserDirectory } from '../store/users.js';
import type { Router } from './http.js';
import type { TokenService, TokenClaims } from './tokens.js';
import type { DigestAuthenticator } from './digest.js';
import type { FailureLimiter, UserLockout } from './ratelimit.js';
import type { ChallengeStore } from './challenges.js';
import type { TurnCredentialIssuer } from './turn-credentials.js';
import type { RoomService } from './rooms.js';

/** A user as the directory says (core.md §1 "directory"; LDAP: issue 12). */
export interface DirectoryUser {
  name: string;
  groups: string[];
  /** The user's organisation (core.md §6: transfer checks it). */
  org?: string;
}

/**
 * Users and groups from an enterprise directory (core.directory). Answers may come from a
 * cache with a TTL; when the directory cannot be reached and nothing cached answers, the
 * calls throw CoreError('unavailable') (503): never an admit by default.
 */
export interface Directory {
  /** The user, or null when the directory has no such user. */
  user(name: string): Promise<DirectoryUser | null>;
  /** Checks a password (LDAP: a bind as the user); null when it is wrong or the user unknown. */
  authenticate(name: string, password: string): Promise<DirectoryUser | null>;
}

export interface CoreContext {
  cfg: GatehouseConfig;
  http: Router;
  tokens: TokenService;
  /** RFC 7616 Digest (SHA-256): login realm cfg.realm, guests `conference:{id}`. */
  digest: DigestAuthenticator;
  /** Failed authentications per source (core.md §2): check() before, fail() on each failure. */
  limiter: FailureLimiter;
  /** Failed logins per claimed user name, with lockout (src/core/ratelimit.ts UserLockout). */
  lockout: UserLockout;
  /** Single-use challenges of GET /v1/auth/challenge (core.md §5, §6). */
  challenges: ChallengeStore;
  /** TURN REST credentials for admitted participants (core.md §8). */
  turn: TurnCredentialIssuer;
  /** The gateway's own users (core.directory null). */
  users: UserDirectory;
  /** core.directory (LDAP), or null: the gateway's own users are the directory. */
  directory: Directory | null;
  events: EventSink | null;
  log: Logger;
  clock: Clock;
  supervisor: Supervisor;
  /** DATA_DIR, or null for an in-memory core (tests). */
  dataDir: string | null;
  /** Rooms and personal URLs (core.md §7): signalling asks it who may join a room. */
  rooms: RoomService;
  /** The director's base URL (after listen), e.g. http://127.0.0.1:8088. */
  baseUrl(): string;
  /** Runs at stop, in reverse order of registration; errors are contained. */
  onStop(fn: () => void | Promise<void>): void;
}

export type CoreModule = (core: CoreContext) => void | Promise<void>;

/** Whether these claims may act in this conference (core.md §2: stamped tokens only there). */
export function claimsAllowConference(c: TokenClaims, conference: string): boolean {
  if (c.room !== undefined) return false;
  if (c.kind === 'guest') return c.conference === conference;
  return c.conference === undefined || c.conference === conference;
}
