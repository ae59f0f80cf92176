/**
 * Per-source token buckets (README "Limits"): `rate` tokens per second, burst 2 × rate,
 * on the driven clock. The map of sources is bounded: at most `maxSources` entries; a
 * full map evicts its least recently refilled source (Map insertion order, re-inserted on
 * use), and the sweep drops buckets that have refilled completely (they are
 * indistinguishable from a new source).
 */
import type { Clock } from '../util/clock.js';

/** Sources one limiter tracks at most. */
export const MAX_TRACKED_SOURCES = 16_384;

interface Bucket {
  tokens: number;
  at: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly burst: number;
  private readonly perMs: number;

  constructor(
    rate: number,
    private readonly clock: Clock,
    private readonly maxSources = MAX_TRACKED_SOURCES,
  ) {
    this.burst = 2 * rate;
    this.perMs = rate / 1000;
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Takes one token for source; false when its bucket is empty. */
  take(source: string): boolean {
    const now = this.clock.now();
    let b = this.buckets.get(source);
    if (b === undefined) {
      if (this.buckets.size >= this.maxSources) {
        const oldest = this.buckets.keys().next();
        if (!oldest.done) this.buckets.delete(oldest.value);
      }
      b = { tokens: this.burst, at: now };
    } else {
      this.buckets.delete(source); // re-inserted below: most recently used last
      b.tokens = Math.min(this.burst, b.tokens + (now - b.at) * this.perMs);
      b.at = now;
    }
    this.buckets.set(source, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  sweep(now: number): void {
    for (const [k, b] of this.buckets) {
      if (b.tokens + (now - b.at) * this.perMs >= this.burst) this.buckets.delete(k);
    }
  }
}
