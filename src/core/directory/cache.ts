/**
 * The directory's answer cache (issue 12: "cached with a TTL, and a directory outage
 * degrades clearly"). One entry per looked-up name, the answer (a user or "no such user")
 * and when the directory gave it:
 *
 * - younger than `ttlMs`: answered from the cache, the directory is not asked;
 * - older: the directory is asked again (concurrent askers of one name share one lookup);
 *   its answer replaces the entry;
 * - the directory cannot be reached (DirectoryDown): an entry younger than
 *   `ttlMs + graceMs` answers (stale, and the first such answer per entry is logged);
 *   with none, the lookup throws CoreError('unavailable') → 503. Nothing is ever admitted
 *   because the directory is down: a stale answer is one the directory really gave.
 *
 * Bounded: at most `max` entries (least recently used evicted first) and at most
 * `maxInFlight` lookups at once (beyond: 503 at once, the directory is not hammered).
 */
import { CoreError } from '../errors.js';

/** The directory could not be reached or did not answer (as opposed to "no such user"). */
export class DirectoryDown extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DirectoryDown';
  }
}

export interface CacheOptions {
  ttlMs: number;
  graceMs: number;
  max: number;
  maxInFlight?: number;
  now: () => number;
  /** Told once per entry when a stale answer is served (logging). */
  onStale?: (key: string, ageMs: number) => void;
}

interface Entry<V> {
  value: V;
  at: number;
  staleTold: boolean;
}

export class DirectoryCache<V> {
  private readonly entries = new Map<string, Entry<V>>();
  private readonly inFlight = new Map<string, Promise<V>>();
  private readonly maxInFlight: number;

  constructor(private readonly o: CacheOptions) {
    this.maxInFlight = o.maxInFlight ?? 256;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The answer for `key`: cached while fresh, else `load()`ed (see the file comment). */
  async get(key: string, load: () => Promise<V>): Promise<V> {
    const e = this.entries.get(key);
    const now = this.o.now();
    if (e && now - e.at < this.o.ttlMs) {
      this.touch(key, e);
      return e.value;
    }
    let p = this.inFlight.get(key);
    if (!p) {
      if (this.inFlight.size >= this.maxInFlight) return this.fallback(key, new DirectoryDown('too many directory lookups in flight'));
      p = load()
        .then((v) => {
          this.set(key, v);
          return v;
        })
        .finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, p);
    }
    try {
      return await p;
    } catch (err) {
      if (err instanceof DirectoryDown) return this.fallback(key, err);
      throw err;
    }
  }

  /** Stores a fresh answer (e.g. the one a successful bind read). */
  set(key: string, value: V): void {
    this.entries.delete(key);
    while (this.entries.size >= this.o.max) this.entries.delete(this.entries.keys().next().value as string);
    this.entries.set(key, { value, at: this.o.now(), staleTold: false });
  }

  /** The fresh (within ttl) answer for `key` without asking the directory, or undefined. */
  peek(key: string): V | undefined {
    const e = this.entries.get(key);
    return e && this.o.now() - e.at < this.o.ttlMs ? e.value : undefined;
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  private fallback(key: string, err: DirectoryDown): V {
    const e = this.entries.get(key);
    const age = e ? this.o.now() - e.at : Infinity;
    if (e && age < this.o.ttlMs + this.o.graceMs) {
      if (!e.staleTold) {
        e.staleTold = true;
        this.o.onStale?.(key, age);
      }
      return e.value;
    }
    if (e) this.entries.delete(key); // past the grace: never answered again
    throw new CoreError('unavailable', `the directory cannot be reached (${err.message}); try again later`, { 'retry-after': '30' });
  }

  private touch(key: string, e: Entry<V>): void {
    this.entries.delete(key);
    this.entries.set(key, e);
  }
}
