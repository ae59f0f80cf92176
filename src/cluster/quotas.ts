import type { Logger } from '../util/log.js';
import type { QuotaCrossing, QuotaShare, QuotaTracker, QuotaUsageRow } from '../policy/quota.js';
import type { ClusterLink } from './link.js';

/**
 * Quota counters shared by the gateways of a cluster (store.redis; README "Cluster").
 *
 * Redis holds one integer per quota × subject × window (`<prefix>quota:<id>:<subject>:<window>`,
 * expiring an hour after the window ends) and a flag beside it (`...:crossed`). The packet path
 * never waits on Redis: QuotaTracker counts in memory and tells this share (counted()), which
 * adds to a local delta; every sync interval one pipeline runs, per counter, a Lua script that
 * INCRBYs the delta, reads the cluster total back and, when the total is at or over the limit,
 * sets the crossed flag with SET NX. Redis runs a script atomically, so exactly one gateway's
 * push sets the flag: that gateway reports the `quota` event, and publishes the crossing so
 * the others cut the subject at once instead of at their next sync. Every gateway then merges
 * the total into its tracker, which cuts the subject's non-vital traffic (vital peers are
 * counted, never cut: unchanged).
 *
 * Redis away: deltas accumulate here (nothing is lost; the entries are bounded), the tracker
 * cuts on its local view and reports a crossing it sees itself (crossedLocally). When Redis
 * is back the deltas are pushed (INCRBY), so a crossing that the sum of the gateways' counts
 * makes is reported then by the one push that sets the flag; a crossing this gateway reported
 * during the outage is not reported again by it. Two gateways that both saw the crossing
 * during the outage have each reported it (they could not know of each other).
 */
export interface ClusterQuotasOptions {
  /** Emits the `quota` event (the gateway's own reporter). */
  report: (c: QuotaCrossing) => void;
  /** Sync interval (store.sync_interval_ms). */
  intervalMs: number;
  /** Counters followed at most (README limits); beyond it the oldest finished one goes. */
  maxEntries?: number;
  log?: Logger;
  now?: () => number;
}

interface Entry {
  quota: string;
  subject: string;
  window: string;
  limit: number;
  windowEnd: number;
  /** Counted here, not pushed yet. */
  pending: number;
  /** Pushed, not acknowledged yet. */
  inflight: number;
  /** The cluster total at the last push (or crossing message). */
  total: number;
  /** Reported by this gateway while Redis was away. */
  reportedLocally: boolean;
  /** Known crossed in the cluster (flag set). */
  crossed: boolean;
  /** Last push or read of this counter (ms). */
  lastSync: number;
  /** No longer in the map (evicted, window over). */
  dead?: boolean;
}

/**
 * A counter with nothing to push is read back at most this often (a crossing reaches the
 * other gateways by pub/sub at once; this read catches a message missed during a reconnect)
 * and not at all once it is known crossed: Redis work follows the traffic, not the number
 * of counters.
 */
const IDLE_REFRESH_MS = 2000;

/** Keys live this long after their window ends (clock skew between gateways, late pushes). */
const EXPIRY_MARGIN_MS = 3_600_000;

/**
 * KEYS[1] counter, KEYS[2] crossed flag; ARGV delta, limit, expire-at (ms), node id, floor.
 * The floor is the total this gateway last read: a counter below it was lost by Redis (a
 * restart without persistence) and starts again from the floor, so an outage never gives
 * a subject its quota back. Returns {total, 1 when this call set the flag}.
 */
const PUSH_LUA = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[5])
if cur < floor then redis.call('SET', KEYS[1], floor) end
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
local first = 0
if total >= tonumber(ARGV[2]) then
  if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PXAT', ARGV[3]) then first = 1 end
end
return {total, first}
`;

type PushFn = (
  counter: string,
  flag: string,
  delta: number,
  limit: number,
  expireAt: number,
  node: string,
  floor: number,
) => Promise<[number, number]>;

export interface ClusterQuotaStats {
  /** Counters followed. */
  counters: number;
  /** Bytes counted here and not yet in Redis. */
  pendingBytes: number;
  pushes: number;
  pushFailures: number;
  /** Crossings this gateway reported for the cluster (flag set by its push). */
  crossingsReported: number;
}

export class ClusterQuotas implements QuotaShare {
  private readonly entries = new Map<string, Entry>();
  private readonly byRow = new WeakMap<QuotaUsageRow, Entry>();
  private tracker: QuotaTracker | null = null;
  private timer: NodeJS.Timeout | null = null;
  private syncing = false;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly unsubscribe: () => void;
  private readonly counts = { pushes: 0, pushFailures: 0, crossingsReported: 0 };

  constructor(
    private readonly link: ClusterLink,
    private readonly opts: ClusterQuotasOptions,
  ) {
    this.maxEntries = opts.maxEntries ?? 100_000;
    this.now = opts.now ?? Date.now;
    if (!('ghQuotaPush' in link.redis)) link.redis.defineCommand('ghQuotaPush', { numberOfKeys: 2, lua: PUSH_LUA });
    // Another gateway's crossing: cut here now, not at the next sync.
    this.unsubscribe = link.subscribe('quota', (msg) => this.onRemoteCrossing(msg));
    link.on('up', this.onUp);
    this.timer = setInterval(() => void this.sync(), opts.intervalMs);
    this.timer.unref();
  }

  /** The tracker of the policy in force (a reload makes a new one; the deltas stay here). */
  attach(tracker: QuotaTracker): void {
    this.tracker = tracker;
    for (const e of this.entries.values()) this.mergeInto(e);
  }

  get up(): boolean {
    return this.link.up;
  }

  private static id(quota: string, subject: string, window: string): string {
    return `${quota}\0${subject}\0${window}`;
  }

  private entryFor(row: QuotaUsageRow, limit: number, windowEnd: number, base = row.bytes): Entry {
    const id = ClusterQuotas.id(row.quota, row.subject, row.window);
    let e = this.entries.get(id);
    if (!e) {
      if (this.entries.size >= this.maxEntries) this.evict();
      e = {
        quota: row.quota,
        subject: row.subject,
        window: row.window,
        limit,
        windowEnd,
        pending: 0,
        inflight: 0,
        // What the tracker had before this gateway counted (restored from SQLite after a restart).
        total: base,
        reportedLocally: false,
        lastSync: 0,
        crossed: false,
      };
      this.entries.set(id, e);
    }
    e.limit = limit;
    e.windowEnd = windowEnd;
    return e;
  }

  /** Packet path: in memory only. */
  counted(row: QuotaUsageRow, limit: number, windowEnd: number, bytes: number): void {
    // A tracker's row object is stable per counter: the packet path looks its entry up by
    // identity (no key string per packet); an evicted entry or a new tracker's row misses.
    let e = this.byRow.get(row);
    if (!e || e.dead) {
      // The tracker has added `bytes` already: what it had before is the starting total.
      e = this.entryFor(row, limit, windowEnd, row.bytes - bytes);
      this.byRow.set(row, e);
    }
    e.pending += bytes;
  }

  crossedLocally(row: QuotaUsageRow): void {
    const e = this.entries.get(ClusterQuotas.id(row.quota, row.subject, row.window));
    if (e) e.reportedLocally = true;
  }

  /** Drops the oldest entry with nothing to push (or, failing that, the oldest). */
  private evict(): void {
    for (const [k, e] of this.entries)
      if (e.pending === 0 && e.inflight === 0) {
        e.dead = true;
        this.entries.delete(k);
        return;
      }
    const first = this.entries.keys().next();
    if (!first.done) {
      this.entries.get(first.value)!.dead = true;
      this.entries.delete(first.value);
    }
  }

  private onUp = (): void => {
    for (const e of this.entries.values()) e.lastSync = 0; // read everything back after an outage
    // Resynchronise at once: push what the outage accumulated, read the totals back.
    void this.sync();
  };

  private mergeInto(e: Entry): void {
    this.tracker?.merge(e.quota, e.subject, e.window, e.total + e.inflight + e.pending);
  }

  private onRemoteCrossing(msg: string): void {
    let m: { quota?: unknown; subject?: unknown; window?: unknown; total?: unknown; limit?: unknown; end?: unknown; node?: unknown } | null;
    try {
      m = JSON.parse(msg) as typeof m;
    } catch {
      return;
    }
    if (typeof m !== 'object' || m === null) return; // `null`, a number: not ours, ignored
    if (m.node === this.link.nodeId) return;
    if (typeof m.quota !== 'string' || typeof m.subject !== 'string' || typeof m.window !== 'string') return;
    if (typeof m.total !== 'number' || typeof m.limit !== 'number' || typeof m.end !== 'number') return;
    const e = this.entryFor({ quota: m.quota, subject: m.subject, window: m.window, bytes: 0, crossed: false }, m.limit, m.end);
    e.total = Math.max(e.total, m.total);
    e.crossed = true;
    this.mergeInto(e);
  }

  /** One round: push every delta (0 for counters only read), merge the totals. */
  async sync(): Promise<void> {
    if (this.syncing || !this.link.up) return;
    this.syncing = true;
    try {
      const now = this.now();
      const batch: Entry[] = [];
      for (const [k, e] of this.entries) {
        if (e.windowEnd + EXPIRY_MARGIN_MS <= now && e.pending === 0) {
          e.dead = true;
          this.entries.delete(k); // a finished window: nothing more to count
          continue;
        }
        if (e.pending === 0 && (e.windowEnd <= now || e.crossed || now - e.lastSync < IDLE_REFRESH_MS)) continue;
        e.lastSync = now;
        e.inflight = e.pending;
        e.pending = 0;
        batch.push(e);
      }
      if (!batch.length) return;
      const p = this.link.redis.pipeline() as unknown as { ghQuotaPush: PushFn; exec(): Promise<[Error | null, unknown][] | null> };
      for (const e of batch) {
        const counter = this.link.key('quota', encodeURIComponent(e.quota), encodeURIComponent(e.subject), e.window);
        p.ghQuotaPush(counter, `${counter}:crossed`, e.inflight, e.limit, e.windowEnd + EXPIRY_MARGIN_MS, this.link.nodeId, e.total);
      }
      let res: [Error | null, unknown][] | null = null;
      try {
        res = await p.exec();
      } catch {
        res = null;
      }
      batch.forEach((e, i) => {
        const knewCrossed = e.crossed;
        const r = res?.[i];
        if (!r || r[0] || !Array.isArray(r[1])) {
          // Not acknowledged: the bytes go back into the delta and are pushed next time.
          // (A push that did reach Redis before the connection dropped is counted twice:
          // a quota errs toward cutting early, never toward losing a crossing.)
          e.pending += e.inflight;
          e.inflight = 0;
          this.counts.pushFailures++;
          return;
        }
        const [total, first] = r[1] as [number, number];
        e.inflight = 0;
        // A window's cluster total only grows (PUSH_LUA's floor keeps it so across a Redis
        // restart): a reply lower than what is known is older than a crossing message that
        // arrived first on the subscriber connection (another socket, no common order).
        e.total = Math.max(e.total, Number(total));
        this.counts.pushes++;
        if (Number(first) === 1) {
          e.crossed = true;
          // Not again for a crossing known here already (the flag was lost with Redis's data).
          if (!e.reportedLocally && !knewCrossed) {
            this.counts.crossingsReported++;
            this.opts.report({ quota: e.quota, subject: e.subject, window: e.window, limit: e.limit, used: e.total });
          }
          void this.link.publish(
            'quota',
            JSON.stringify({
              quota: e.quota,
              subject: e.subject,
              window: e.window,
              total: e.total,
              limit: e.limit,
              end: e.windowEnd,
              node: this.link.nodeId,
            }),
          );
        } else if (e.total >= e.limit) e.crossed = true;
        this.mergeInto(e);
      });
    } catch (err) {
      this.opts.log?.warn({ err: (err as Error).message }, 'cluster: quota sync failed');
    } finally {
      this.syncing = false;
    }
  }

  /** Read when /metrics is scraped (a walk over the bounded entries). */
  get stats(): ClusterQuotaStats {
    let pendingBytes = 0;
    for (const e of this.entries.values()) pendingBytes += e.pending + e.inflight;
    return { counters: this.entries.size, pendingBytes, ...this.counts };
  }

  /** The cluster total known here for a counter (tests, dashboard). */
  total(quota: string, subject: string, window: string): number | undefined {
    const e = this.entries.get(ClusterQuotas.id(quota, subject, window));
    return e ? e.total + e.inflight + e.pending : undefined;
  }

  /** A last push (shutdown), then stop. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.link.off('up', this.onUp);
    this.unsubscribe();
    await this.sync();
  }
}
