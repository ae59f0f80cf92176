import { BlockList, isIP } from 'node:net';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Quota } from './rules-schema.js';
import { windowOf, windowKey } from './windows.js';

/**
 * Data quotas over a calendar day, week or month (issue 5). Traffic to or from a
 * `vital` CIDR counts toward the quota but is never cut; once a subject is over its
 * limit, its non-vital traffic is dropped until the window ends. A `quota` event is
 * reported once per window crossing.
 *
 * Counting is in memory on the packet path; a QuotaStore persists the counters every
 * flush interval, so a kill -9 loses at most one interval of counting.
 */
export interface QuotaUsageRow {
  quota: string;
  subject: string;
  window: string;
  bytes: number;
  crossed: boolean;
}

export interface QuotaStore {
  load(windows: string[]): QuotaUsageRow[];
  save(rows: QuotaUsageRow[]): void;
}

export interface QuotaCrossing {
  quota: string;
  subject: string;
  window: string;
  limit: number;
  used: number;
}

/**
 * Health of the quota store's writes, shared by the trackers a policy reload replaces:
 * failures counted by reason (the store's error code, lower case: sqlite_full,
 * sqlite_ioerr, ...), one log line when writes start failing and one when they work again.
 */
export class QuotaFlushHealth {
  readonly failures: Record<string, number> = {};
  failing = false;
  constructor(private readonly log?: Logger) {}

  failed(err: unknown): void {
    const code = (err as { code?: unknown } | null)?.code;
    const reason = typeof code === 'string' && /^[A-Z0-9_]{1,40}$/i.test(code) ? code.toLowerCase() : 'error';
    this.failures[reason] = (this.failures[reason] ?? 0) + 1;
    if (this.failing) return;
    this.failing = true;
    this.log?.warn(
      { reason, err: (err as Error)?.message },
      'quota counters cannot be saved; they are kept in memory and saved again every flush',
    );
  }

  ok(): void {
    if (!this.failing) return;
    this.failing = false;
    this.log?.info('quota counters saved again');
  }
}

/**
 * Quota counters shared across gateways (store.redis, src/cluster/quotas.ts). The packet
 * path stays in memory: counted() only adds to a local delta that the share pushes every
 * sync interval; the share writes cluster totals back with QuotaTracker.merge(). While the
 * share is up it decides (atomically, in Redis) which gateway reports a crossing; while it
 * is down the tracker reports crossings itself and tells the share (crossedLocally), so a
 * crossing is never lost and, once Redis is back, not reported twice by this gateway.
 */
export interface QuotaShare {
  readonly up: boolean;
  counted(row: QuotaUsageRow, limit: number, windowEnd: number, bytes: number): void;
  crossedLocally(row: QuotaUsageRow): void;
}

interface Counter {
  row: QuotaUsageRow;
  dirty: boolean;
}

interface CompiledQuota {
  q: Quota;
  users: Set<string>;
  groups: Set<string>;
  vital: BlockList;
}

export class QuotaTracker {
  private readonly quotas: CompiledQuota[];
  private readonly counters = new Map<string, Counter>();
  /** The current window per period, recomputed only when it ends (no date maths per packet). */
  private readonly windows = new Map<string, { key: string; start: number; end: number }>();

  constructor(
    quotas: readonly Quota[],
    private readonly clock: Clock,
    private readonly tz: string,
    private readonly store: QuotaStore | null,
    private readonly onCrossing: (c: QuotaCrossing) => void = () => {},
    private readonly health: QuotaFlushHealth = new QuotaFlushHealth(),
    private readonly share: QuotaShare | null = null,
  ) {
    this.quotas = quotas.map((q) => {
      const vital = new BlockList();
      for (const c of q.vital) {
        const [a, bits] = c.split('/');
        const fam = isIP(a!) === 6 ? 'ipv6' : 'ipv4';
        if (bits === undefined) vital.addAddress(a!, fam);
        else vital.addSubnet(a!, Number(bits), fam);
      }
      return { q, users: new Set(q.users), groups: new Set(q.groups), vital };
    });
    if (store) this.restore();
  }

  /** Loads the current windows' counters from the store (after a restart). */
  private restore(): void {
    const now = this.clock.now();
    const keys = [...new Set(this.quotas.map((c) => windowKey(now, c.q.period, this.tz)))];
    for (const row of this.store!.load(keys)) this.counters.set(`${row.quota}\0${row.subject}\0${row.window}`, { row, dirty: false });
  }

  private subjectOf(c: CompiledQuota, user: string | undefined, groups: readonly string[]): string | null {
    const byUser = !!user && c.users.has(user);
    const group = groups.find((g) => c.groups.has(g));
    if (!byUser && !group) return null;
    if (c.q.scope === 'group') return group ? `group:${group}` : `user:${user}`;
    return user ? `user:${user}` : null;
  }

  private isVital(c: CompiledQuota, ip: string | undefined): boolean {
    if (!ip) return false;
    const fam = isIP(ip);
    return fam !== 0 && c.vital.check(ip, fam === 6 ? 'ipv6' : 'ipv4');
  }

  /**
   * Counts bytes of one packet or message and says whether it may pass. Returns
   * 'drop' when a quota that selects this user is exhausted and the peer is not vital.
   */
  account(user: string | undefined, groups: readonly string[], peerIp: string | undefined, bytes: number): 'pass' | 'drop' {
    if (this.quotas.length === 0) return 'pass'; // the packet path pays nothing without quotas
    const now = this.clock.now();
    let verdict: 'pass' | 'drop' = 'pass';
    for (const c of this.quotas) {
      const subject = this.subjectOf(c, user, groups);
      if (!subject) continue;
      const win = this.windowAt(now, c.q.period);
      const key = `${c.q.id}\0${subject}\0${win}`;
      let ctr = this.counters.get(key);
      if (!ctr) {
        ctr = { row: { quota: c.q.id, subject, window: win, bytes: 0, crossed: false }, dirty: true };
        this.counters.set(key, ctr);
      }
      const vital = this.isVital(c, peerIp);
      if (!vital && ctr.row.bytes >= c.q.limit) {
        verdict = 'drop'; // over quota: non-vital traffic is cut and not counted again
        continue;
      }
      ctr.row.bytes += bytes;
      ctr.dirty = true;
      this.share?.counted(ctr.row, c.q.limit, this.windows.get(c.q.period)!.end, bytes);
      if (!ctr.row.crossed && ctr.row.bytes >= c.q.limit) {
        ctr.row.crossed = true;
        // Shared and up: the share reports the crossing once for the cluster (its next push).
        if (!this.share?.up) {
          this.onCrossing({ quota: c.q.id, subject, window: win, limit: c.q.limit, used: ctr.row.bytes });
          this.share?.crossedLocally(ctr.row);
        }
      }
    }
    return verdict;
  }

  private windowAt(now: number, period: Quota['period']): string {
    const w = this.windows.get(period);
    if (w && now >= w.start && now < w.end) return w.key;
    const { start, end } = windowOf(now, period, this.tz);
    const key = windowKey(now, period, this.tz);
    this.windows.set(period, { key, start, end });
    return key;
  }

  /**
   * The cluster's view of a counter (QuotaShare): `bytes` is the cluster total plus what
   * this gateway counted since its last push. At or over the limit the subject's non-vital
   * traffic is cut here too, without a local event (the share reported it). A lower figure
   * than the one held is ignored (an older reply). Returns false when this tracker has no
   * such quota (a reload removed it).
   */
  merge(quota: string, subject: string, window: string, bytes: number): boolean {
    const c = this.quotas.find((x) => x.q.id === quota);
    if (!c) return false;
    const key = `${quota}\0${subject}\0${window}`;
    let ctr = this.counters.get(key);
    if (!ctr) {
      ctr = { row: { quota, subject, window, bytes: 0, crossed: false }, dirty: false };
      this.counters.set(key, ctr);
    }
    // Never lowered: a window's count only grows, and a stale view must not give a cut
    // subject its quota back.
    if (bytes > ctr.row.bytes) {
      ctr.row.bytes = bytes;
      ctr.dirty = true;
    }
    if (bytes >= c.q.limit) ctr.row.crossed = true;
    return true;
  }

  usage(quotaId: string, subject: string): number {
    const c = this.quotas.find((x) => x.q.id === quotaId);
    if (!c) return 0;
    const win = windowKey(this.clock.now(), c.q.period, this.tz);
    return this.counters.get(`${quotaId}\0${subject}\0${win}`)?.row.bytes ?? 0;
  }

  /**
   * Writes dirty counters to the store and forgets windows that have ended. Never throws:
   * when the store cannot write (SQLITE_FULL, an I/O error) the counters stay dirty in
   * memory, so the next flush writes them, and the failure is counted in `health`.
   * Returns whether everything dirty was saved.
   */
  flush(): boolean {
    const dirty: Counter[] = [];
    for (const c of this.counters.values()) if (c.dirty) dirty.push(c);
    let saved = true;
    if (dirty.length && this.store) {
      try {
        this.store.save(dirty.map((c) => ({ ...c.row })));
        this.health.ok();
      } catch (err) {
        saved = false;
        this.health.failed(err);
      }
    }
    if (saved) for (const c of dirty) c.dirty = false;
    const now = this.clock.now();
    for (const [k, c] of this.counters) {
      const q = this.quotas.find((x) => x.q.id === c.row.quota);
      if (!q || (!c.dirty && windowKey(now, q.q.period, this.tz) !== c.row.window)) this.counters.delete(k);
    }
    return saved;
  }

  /**
   * The counters of the current windows (the dashboard, read only): per quota, subject
   * and window, bytes used against the limit. At most `max` rows, fullest first.
   */
  snapshot(max = 500): { quota: string; subject: string; window: string; period: string; used: number; limit: number; ends: number }[] {
    const now = this.clock.now();
    const out: { quota: string; subject: string; window: string; period: string; used: number; limit: number; ends: number }[] = [];
    for (const c of this.quotas) {
      const win = windowKey(now, c.q.period, this.tz);
      const ends = windowOf(now, c.q.period, this.tz).end;
      for (const ctr of this.counters.values()) {
        const r = ctr.row;
        if (r.quota !== c.q.id || r.window !== win) continue;
        out.push({ quota: r.quota, subject: r.subject, window: r.window, period: c.q.period, used: r.bytes, limit: c.q.limit, ends });
      }
    }
    out.sort((a, b) => b.used / b.limit - a.used / a.limit);
    return out.slice(0, max);
  }

  /** End of the window that holds now, for a quota (reporting). */
  windowEnd(quotaId: string): number | null {
    const c = this.quotas.find((x) => x.q.id === quotaId);
    return c ? windowOf(this.clock.now(), c.q.period, this.tz).end : null;
  }
}
