/**
 * The failed-authentication limit (core.md §2): at most 10 failed authentications per
 * source address (an IPv6 source: its /64, src/wire/source-prefix.ts) per minute, on any mechanism (Digest login, guest join, bearer
 * tokens, certificates, transfer); beyond that `429 rate_limited` with `Retry-After`
 * (RFC 6585 §4, RFC 9110 §10.2.3 delay-seconds) until the minute has passed.
 *
 * Fixed windows: a source's minute starts at its first failure. The table is bounded
 * (maxSources): expired windows go first, then the oldest.
 */
import type { Clock } from '../util/clock.js';
import { sourcePrefix } from '../wire/source-prefix.js';
import { CoreError } from './errors.js';

export interface LimitState {
  /** Failures counted in the current window. */
  count: number;
  /** When the window ends, ms. */
  until: number;
}

export class FailureLimiter {
  private readonly bySource = new Map<string, LimitState>();
  readonly max: number;
  readonly windowMs: number;
  readonly maxSources: number;

  constructor(
    private readonly clock: Clock,
    opts: { max?: number; windowMs?: number; maxSources?: number } = {},
  ) {
    this.max = opts.max ?? 10;
    this.windowMs = opts.windowMs ?? 60_000;
    this.maxSources = opts.maxSources ?? 100_000;
  }

  private live(key: string): LimitState | undefined {
    const s = this.bySource.get(key);
    if (s && s.until <= this.clock.now()) {
      this.bySource.delete(key);
      return undefined;
    }
    return s;
  }

  /** Seconds until this source may try again, or 0 when it may now. */
  retryAfter(source: string): number {
    const s = this.live(sourcePrefix(source));
    if (!s || s.count < this.max) return 0;
    return Math.max(1, Math.ceil((s.until - this.clock.now()) / 1000));
  }

  /** Throws 429 rate_limited (with Retry-After) when the source is over its limit. */
  check(source: string): void {
    const wait = this.retryAfter(source);
    if (wait > 0)
      throw new CoreError('rate_limited', `too many failed authentications from this address; retry in ${wait} s`, {
        'retry-after': String(wait),
      });
  }

  /** Counts one failed authentication for this source. */
  fail(source: string): void {
    const now = this.clock.now();
    const key = sourcePrefix(source);
    const s = this.live(key);
    if (s) {
      s.count++;
      return;
    }
    if (this.bySource.size >= this.maxSources) {
      for (const [k, v] of this.bySource) if (v.until <= now) this.bySource.delete(k);
      if (this.bySource.size >= this.maxSources) this.bySource.delete(this.bySource.keys().next().value as string);
    }
    this.bySource.set(key, { count: 1, until: now + this.windowMs });
  }

  get size(): number {
    return this.bySource.size;
  }
}

/**
 * Failed logins per claimed user name (issue 11: "rate-limited per source and user"; issue
 * 12: lockout): an attacker spread over many addresses still gets at most `max` guesses per
 * user per window. Each time a user reaches `max` failures the name is locked, the first
 * time for one window, then twice as long each time again (capped at `maxLockMs`), until a
 * success resets it. While locked, logins for that name get `429 rate_limited` with
 * Retry-After before any credential is checked.
 *
 * The trade-off is the usual one (OWASP: account lockout): someone who knows a name can
 * keep it locked by failing on purpose; the cap keeps that to `maxLockMs` at a time, the
 * per-source limit (FailureLimiter) slows one address down, and every failure is an `auth`
 * event for the SIEM. Bounded (maxUsers): unlocked, quiet names go first, then the oldest.
 */
interface UserState {
  count: number;
  windowUntil: number;
  lockedUntil: number;
  strikes: number;
}

export class UserLockout {
  private readonly byUser = new Map<string, UserState>();
  readonly max: number;
  readonly windowMs: number;
  readonly maxLockMs: number;
  readonly maxUsers: number;

  constructor(
    private readonly clock: Clock,
    opts: { max?: number; windowMs?: number; maxLockMs?: number; maxUsers?: number } = {},
  ) {
    this.max = opts.max ?? 10;
    this.windowMs = opts.windowMs ?? 60_000;
    this.maxLockMs = opts.maxLockMs ?? 3_600_000;
    this.maxUsers = opts.maxUsers ?? 100_000;
  }

  get size(): number {
    return this.byUser.size;
  }

  /** Seconds until `user` may try again, or 0. */
  retryAfter(user: string): number {
    const s = this.byUser.get(user);
    const now = this.clock.now();
    if (!s || s.lockedUntil <= now) return 0;
    return Math.max(1, Math.ceil((s.lockedUntil - now) / 1000));
  }

  /** Throws 429 rate_limited while `user` is locked. The message never says whether the user exists. */
  check(user: string): void {
    const wait = this.retryAfter(user);
    if (wait > 0)
      throw new CoreError('rate_limited', `too many failed logins for this user; retry in ${wait} s`, { 'retry-after': String(wait) });
  }

  fail(user: string): void {
    const now = this.clock.now();
    let s = this.byUser.get(user);
    if (!s) {
      if (this.byUser.size >= this.maxUsers) this.evict(now);
      s = { count: 0, windowUntil: now + this.windowMs, lockedUntil: 0, strikes: 0 };
      this.byUser.set(user, s);
    } else if (s.windowUntil <= now) {
      s.count = 0;
      s.windowUntil = now + this.windowMs;
    }
    if (++s.count >= this.max) {
      const lock = Math.min(this.maxLockMs, this.windowMs * 2 ** s.strikes);
      s.strikes = Math.min(s.strikes + 1, 30);
      s.lockedUntil = now + lock;
      s.count = 0;
      s.windowUntil = s.lockedUntil + this.windowMs;
    }
  }

  /** A successful login: the name starts afresh. */
  succeed(user: string): void {
    this.byUser.delete(user);
  }

  private evict(now: number): void {
    for (const [k, v] of this.byUser) if (v.lockedUntil <= now && v.windowUntil <= now) this.byUser.delete(k);
    if (this.byUser.size >= this.maxUsers) this.byUser.delete(this.byUser.keys().next().value as string);
  }
}
