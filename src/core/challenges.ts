/**
 * Single-use challenges (core.md §5 and §6): `GET /v1/auth/challenge` issues 24 random
 * bytes, base64, answerable once within 60 s. Certificate login (§5) spends a challenge
 * when its answer's signature verifies; authentication transfer (§6) spends it on any
 * answer, accepted or not.
 *
 * A challenge is bound to the request that got it: the source address it was issued to
 * (`bind`); an answer from elsewhere is treated as a replay (the challenge is not ours to
 * answer there).
 *
 * Bounded (`max`): expired challenges go first, then the oldest. Per source address at
 * most `maxPerSource` (spent ones included, until they expire): beyond, that source's own
 * oldest goes, so one client asking in a loop (the endpoint needs no token) cannot evict
 * everyone else's challenges. Challenges are kept as given (they are public nonces, not
 * secrets) in a Map keyed by their base64 text.
 */
import { randomBytes } from 'node:crypto';
import type { Clock } from '../util/clock.js';

/** core.md §5: 24 random bytes. */
export const CHALLENGE_BYTES = 24;
/** core.md §5: answerable within 60 s. */
export const CHALLENGE_TTL_MS = 60_000;
/** Challenges one source address may hold at once (a busy NAT: ~17 logins a second). */
export const MAX_CHALLENGES_PER_SOURCE = 1024;

export interface IssuedChallenge {
  /** base64 (RFC 4648 §4) of CHALLENGE_BYTES random bytes. */
  challenge: string;
  /** Unix seconds (core.md §2). */
  expires: number;
}

export type ChallengeCheck =
  /** Issued here, to this source, unexpired and unspent. `bytes` are the raw challenge bytes. */
  | { ok: true; bytes: Buffer }
  /** Never issued (or forgotten), spent, issued to another source, or expired. */
  | { ok: false; reason: 'unknown' | 'spent' | 'expired' | 'elsewhere' };

interface Entry {
  bytes: Buffer;
  bind: string;
  expiresMs: number;
  spent: boolean;
}

export class ChallengeStore {
  private readonly byText = new Map<string, Entry>();
  /** Each source's challenges, oldest first (the TTL is fixed, so they go in this order). */
  private readonly bySource = new Map<string, string[]>();
  readonly ttlMs: number;
  readonly max: number;
  readonly maxPerSource: number;

  constructor(
    private readonly clock: Clock,
    opts: { ttlMs?: number; max?: number; maxPerSource?: number } = {},
  ) {
    this.ttlMs = opts.ttlMs ?? CHALLENGE_TTL_MS;
    this.max = opts.max ?? 100_000;
    this.maxPerSource = opts.maxPerSource ?? MAX_CHALLENGES_PER_SOURCE;
  }

  /** Forgets one challenge (and its place in its source's list). */
  private drop(challenge: string): void {
    const e = this.byText.get(challenge);
    if (!e) return;
    this.byText.delete(challenge);
    const q = this.bySource.get(e.bind);
    if (!q) return;
    const i = q.indexOf(challenge);
    if (i >= 0) q.splice(i, 1);
    if (!q.length) this.bySource.delete(e.bind);
  }

  get size(): number {
    return this.byText.size;
  }

  /** A fresh challenge bound to `bind` (the requester's source address). */
  issue(bind: string): IssuedChallenge {
    const now = this.clock.now();
    const mine = this.bySource.get(bind);
    if (mine && mine.length >= this.maxPerSource) this.drop(mine[0]!);
    if (this.byText.size >= this.max) this.sweep();
    if (this.byText.size >= this.max) this.drop(this.byText.keys().next().value as string);
    const bytes = randomBytes(CHALLENGE_BYTES);
    const challenge = bytes.toString('base64');
    const expiresMs = now + this.ttlMs;
    this.byText.set(challenge, { bytes, bind, expiresMs, spent: false });
    const q = this.bySource.get(bind);
    if (q) q.push(challenge);
    else this.bySource.set(bind, [challenge]);
    return { challenge, expires: Math.ceil(expiresMs / 1000) };
  }

  /** Whether `challenge` may be answered now from `bind`; does not spend it. */
  check(challenge: string, bind: string): ChallengeCheck {
    const e = this.byText.get(challenge);
    if (!e) return { ok: false, reason: 'unknown' };
    if (e.spent) return { ok: false, reason: 'spent' };
    if (e.expiresMs <= this.clock.now()) return { ok: false, reason: 'expired' };
    if (e.bind !== bind) return { ok: false, reason: 'elsewhere' };
    return { ok: true, bytes: e.bytes };
  }

  /**
   * Spends `challenge` (a later check() says `spent`). Kept until it would have expired,
   * so a replay is told apart from an unknown challenge.
   */
  spend(challenge: string): void {
    const e = this.byText.get(challenge);
    if (e) e.spent = true;
  }

  /** check() then spend() when it passed: the usual single-use answer. */
  take(challenge: string, bind: string): ChallengeCheck {
    const r = this.check(challenge, bind);
    if (r.ok) this.spend(challenge);
    return r;
  }

  /** Drops challenges that can no longer be answered. */
  sweep(): void {
    const now = this.clock.now();
    for (const [k, e] of this.byText) if (e.expiresMs <= now) this.drop(k);
  }
}
