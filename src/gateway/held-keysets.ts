/**
 * Key sets that came by KeyEscrow before their handshake crossed the gateway
 * (key-escrow.md §6.4): held per user and client_random, bounded by count (per user and
 * in all) and by time (keys.deadline, 1-60 s), wiped when they expire or are taken (the
 * flow's session keeps its own copy, §5.5).
 *
 * Public API:
 *   class HeldKeySets(clock, limits?)
 *     .hold(user, ks, ttlMs): boolean     false: full (the caller answers KEY-STATUS 3)
 *     .take(user, clientRandomHex): KeySet[]   removes them; the caller applies and wipes
 *     .sweep(now) / .clear() / .size / .sizeOf(user)
 */
import type { Clock } from '../util/clock.js';
import { associationId, wipeKeySet, type KeySet } from '../wire/keyset.js';

export const HELD_PER_USER = 16;
export const HELD_TOTAL = 4096;
export const HELD_MIN_MS = 1000;
export const HELD_MAX_MS = 60_000;

interface Entry {
  user: string;
  id: string;
  ks: KeySet;
  expires: number;
}

export class HeldKeySets {
  /** Insertion order; expiry order need not follow (ttl varies with the rules), so the sweep looks at all. */
  private readonly entries = new Set<Entry>();
  private readonly byUser = new Map<string, Entry[]>();

  constructor(
    private readonly clock: Clock,
    private readonly limits = { perUser: HELD_PER_USER, total: HELD_TOTAL },
  ) {}

  get size(): number {
    return this.entries.size;
  }

  sizeOf(user: string): number {
    return this.byUser.get(user)?.length ?? 0;
  }

  /** Holds a copy-owned key set (the caller gives it up). False when full: the caller wipes it. */
  hold(user: string, ks: KeySet, ttlMs: number): boolean {
    const now = this.clock.now();
    this.sweep(now);
    const list = this.byUser.get(user) ?? [];
    if (list.length >= this.limits.perUser || this.entries.size >= this.limits.total) return false;
    const ttl = Math.max(HELD_MIN_MS, Math.min(HELD_MAX_MS, ttlMs));
    const e: Entry = { user, id: associationId(ks.clientRandom), ks, expires: now + ttl };
    list.push(e);
    this.byUser.set(user, list);
    this.entries.add(e);
    return true;
  }

  /** The unexpired key sets this user holds for the association (removed from the hold). */
  take(user: string, clientRandomHex: string): KeySet[] {
    const list = this.byUser.get(user);
    if (!list) return [];
    const now = this.clock.now();
    const out: KeySet[] = [];
    const rest: Entry[] = [];
    for (const e of list) {
      if (e.id !== clientRandomHex) rest.push(e);
      else {
        this.entries.delete(e);
        if (e.expires > now) out.push(e.ks);
        else wipeKeySet(e.ks);
      }
    }
    if (rest.length) this.byUser.set(user, rest);
    else this.byUser.delete(user);
    return out;
  }

  sweep(now: number): void {
    for (const e of this.entries) {
      if (e.expires > now) continue;
      this.entries.delete(e);
      wipeKeySet(e.ks);
      const list = this.byUser.get(e.user);
      if (!list) continue;
      const i = list.indexOf(e);
      if (i >= 0) list.splice(i, 1);
      if (!list.length) this.byUser.delete(e.user);
    }
  }

  clear(): void {
    for (const e of this.entries) wipeKeySet(e.ks);
    this.entries.clear();
    this.byUser.clear();
  }
}
