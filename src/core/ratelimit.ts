/**
 * The failed-authentication limit (core.md §2): at most 10 failed authentications per
 * source address per minute, on any mechanism (Digest login, guest join, bearer
 * tokens, certificates, transfer); beyond that `429 rate_limited` with `Retry-After`
 * (RFC 6585 §4, RFC 9110 §10.2.3 delay-seconds) until the minute has passed.
 *
 * Fixed windows: a source's minute starts at its first failure. The table is bounded
 * (maxSources): expired windows go first, then the oldest.
 */
import type { Clock } from '../util/clock.js';
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

  private live(source: string): LimitState | undefined {
    const s = this.bySource.get(source);
    if (s && s.until <= this.clock.now()) {
      this.bySource.delete(source);
      return undefined;
    }
    return s;
  }

  /** Seconds until this source may try again, or 0 when it may now. */
  retryAfter(source: string): number {
    const s = this.live(source);
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
    const s = this.live(source);
    if (s) {
      s.count++;
      return;
    }
    if (this.bySource.size >= this.maxSources) {
      for (const [k, v] of this.bySource) if (v.until <= now) this.bySource.delete(k);
      if (this.bySource.size >= this.maxSources) this.bySource.delete(this.bySource.keys().next().value as string);
    }
    this.bySource.set(source, { count: 1, until: now + this.windowMs });
  }

  get size(): number {
    return this.bySource.size;
  }
}
