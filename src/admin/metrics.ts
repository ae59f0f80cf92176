import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { EventCountsSource } from './event-counts.js';

/** The relay worker restart counter (README "Metrics"): the supervisor's count in the workers' aggregate. */
export const WORKER_RESTARTS_METRIC = 'gatehouse_worker_restarts_total';

/**
 * Prometheus metrics. The packet path keeps plain counters (no label lookups per
 * packet); this module reads them when /metrics is scraped.
 */
export interface RelayStatsSource {
  allocations: number;
  permissions: number;
  channels: number;
  packets: { clientToPeer: number; peerToClient: number };
  bytes: { clientToPeer: number; peerToClient: number };
  authFailures: Record<string, number>;
  /** Requests or packets refused, by reason (read when present). */
  refused?: Record<string, number>;
}

/** Optional sources beyond the relay's stats; each is read when /metrics is scraped. */
export interface MetricsSources {
  /** The Supervisor: exceptions contained, by call site. */
  supervisor?: { readonly failures: ReadonlyMap<string, number> };
  /** events.jsonl (FileEventSink.stats). */
  events?: () =>
    { dropped: Record<string, number>; written: number; queueEvents: number; queueBytes: number; degraded: boolean } | undefined;
  /** The recordings store (RecordingStore.stats). */
  recordings?: () => { failures: Record<string, Record<string, number>>; incomplete: number; unsealed: number; open?: number } | undefined;
  /** Quota store write failures by reason, and whether they are failing now (QuotaFlushHealth). */
  quotaFlush?: () => { failures: Record<string, number>; failing: boolean } | undefined;
  /**
   * Gateway stats: a plain number field becomes a gauge gatehouse_gateway_<name>, a
   * Record<string, number> field a counter gatehouse_gateway_<name>_total{reason}. The
   * fields are those present when createMetrics is called.
   */
  gateway?: () => Record<string, unknown> | undefined;
  /** The PCP server and its NFQUEUE path (src/gateway/pcp-gateway.ts RunningPcp.stats). */
  pcp?: () => PcpStatsSource | undefined;
  /**
   * The relay's native fast path (TurnServer.fastPath, `turn.fast_path`): null when it is
   * off or the addon is not built. Each number field becomes a counter
   * gatehouse_turn_fast_path_<name>_total (the fields present when createMetrics is called).
   */
  fastPath?: () => Record<string, number> | null | undefined;
  /** Malware scanners (src/scan GuardedScanner.stats), one entry per configured scanner. */
  scanners?: () => { scanner: string; stats: ScanStatsSource }[] | undefined;
  /** Events emitted, alerts by action, quota crossings by quota id (src/admin/event-counts.ts). */
  eventCounts?: () => EventCountsSource | undefined;
  /** The Redis event output (src/events/redis.ts RedisEventSink.stats); undefined while events.redis is off. */
  redisEvents?: () => { queued: number; sent: number; dropped: number } | undefined;
  /**
   * The cluster link (store.redis, src/cluster/link.ts): gatehouse_cluster_redis_up and
   * gatehouse_cluster_redis_outages_total; each number in `gauges` becomes a gauge
   * gatehouse_cluster_<name>, each in `counters` a counter gatehouse_cluster_<name>_total
   * (the names present when createMetrics is called).
   */
  cluster?: () => { up: boolean; outages: number; gauges?: Record<string, number>; counters?: Record<string, number> } | undefined;
}

/** What /metrics reads of the PCP server (PcpStats.snapshot), the PCP path and the queue. */
export interface PcpStatsSource {
  server: {
    requests?: Record<string, number>;
    results?: Record<string, number>;
    mappings?: Record<string, number>;
    dropped?: Record<string, number>;
  } & Record<string, unknown>;
  path: {
    flows: number;
    accepted: number;
    dropped: number;
    held: number;
    released: number;
    heldExpired: number;
    heldOverflow: number;
    unknown: number;
  };
  nfqueue: { enobufs?: number; errors?: number; exceptions?: number } | null;
  mappings: number;
}

/** What /metrics reads of a GuardedScanner's stats (src/scan/guard.ts ScanStats). */
export interface ScanStatsSource {
  scans: number;
  clean: number;
  infected: number;
  errors: Record<string, number>;
  failed_open: number;
  failed_closed: number;
  in_flight: number;
  queued: number;
}

const snake = (s: string) =>
  s
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9_]/g, '_')
    .toLowerCase();

const isCounts = (v: unknown): v is Record<string, number> =>
  !!v && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'number');

export function createMetrics(stats: () => RelayStatsSource | undefined, sources: MetricsSources = {}): Registry {
  const registry = new Registry();
  // Standard process_* and nodejs_* names; the event-loop monitor samples every 100 ms
  // (prom-client's 10 ms default costs ~10 ms of CPU per second on an idle gateway).
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  const safe = <T>(read: () => T): T | undefined => {
    try {
      return read();
    } catch {
      return undefined; // a scrape never fails because one source did
    }
  };
  const gaugeOf = <S>(src: () => S | undefined, name: string, help: string, read: (s: S) => number | undefined) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const s = safe(src);
        const v = s === undefined ? undefined : safe(() => read(s));
        if (typeof v === 'number' && Number.isFinite(v)) this.set(v);
      },
    });
  const gauge = (name: string, help: string, read: (s: RelayStatsSource) => number) => gaugeOf(stats, name, help, read);
  gauge('gatehouse_turn_allocations', 'Active TURN allocations', (s) => s.allocations);
  gauge('gatehouse_turn_permissions', 'Active TURN permissions', (s) => s.permissions);
  gauge('gatehouse_turn_channels', 'Active TURN channel bindings', (s) => s.channels);
  // Monotonic totals read from plain counters: exposed as counters by adding the
  // difference since the last scrape (a source that starts again from zero, e.g. a
  // tracker rebuilt by a policy reload, is followed from its new value).
  const countersOf = <S>(src: () => S | undefined, name: string, help: string, labels: string[], read: (s: S) => [string[], number][]) => {
    const last = new Map<string, number>();
    return new Counter({
      name,
      help,
      labelNames: labels,
      registers: [registry],
      collect() {
        const s = safe(src);
        if (s === undefined) return;
        for (const [vals, v] of safe(() => read(s)) ?? []) {
          if (typeof v !== 'number' || !Number.isFinite(v)) continue;
          const key = vals.join('\0');
          const d = v - (last.get(key) ?? 0);
          // A label set the source reports at 0 is exported at 0 (Prometheus practice: a
          // series that exists before its first increment lets rate() and alerts see it).
          if (d > 0 || !last.has(key)) this.inc(Object.fromEntries(labels.map((l, i) => [l, vals[i]!])), Math.max(d, 0));
          last.set(key, v);
        }
      },
    });
  };
  const entries = (r: Record<string, number> | undefined): [string[], number][] =>
    r && typeof r === 'object'
      ? Object.entries(r).flatMap(([k, v]): [string[], number][] => (typeof v === 'number' ? [[[k], v]] : []))
      : [];
  const counterFrom = (name: string, help: string, read: (s: RelayStatsSource) => Record<string, number> | undefined, label: string) =>
    countersOf(stats, name, help, [label], (s) => entries(read(s)));
  counterFrom(
    'gatehouse_relayed_packets_total',
    'Packets relayed, by direction',
    (s) => ({ client_to_peer: s.packets.clientToPeer, peer_to_client: s.packets.peerToClient }),
    'direction',
  );
  counterFrom(
    'gatehouse_relayed_bytes_total',
    'Payload bytes relayed, by direction',
    (s) => ({ client_to_peer: s.bytes.clientToPeer, peer_to_client: s.bytes.peerToClient }),
    'direction',
  );
  counterFrom('gatehouse_auth_failures_total', 'TURN authentication failures, by reason', (s) => s.authFailures, 'reason');
  counterFrom('gatehouse_turn_refused_total', 'TURN requests or packets refused, by reason', (s) => s.refused, 'reason');

  // Degraded service: what could not be written, and whether it is failing now.
  const { supervisor, events, recordings, quotaFlush, gateway, scanners, pcp, fastPath, eventCounts, redisEvents } = sources;
  if (fastPath) {
    // Packets relayed in C are in gatehouse_relayed_packets_total already; these say how
    // (batches read with recvmmsg) and what C dropped (an expiry JS had not swept yet, a
    // send to a client whose socket buffer was full).
    gaugeOf(
      () => ({ on: safe(fastPath) ? 1 : 0 }),
      'gatehouse_turn_fast_path_active',
      'The native relay fast path is in use (1) or not (0): turn.fast_path',
      (s) => s.on,
    );
    const f = safe(fastPath);
    for (const [k, v] of Object.entries(f ?? {})) {
      if (typeof v !== 'number') continue;
      countersOf(fastPath, `gatehouse_turn_fast_path_${snake(k)}_total`, `Relay fast path: ${k}`, [], (s) =>
        s === null ? [] : [[[], s[k]!]],
      );
    }
  }
  if (pcp) {
    // RFC 6887 requests by opcode, answers by opcode and result code ("MAP/SUCCESS").
    countersOf(pcp, 'gatehouse_pcp_requests_total', 'PCP requests, by opcode', ['opcode'], (s) =>
      entries(s.server.requests as Record<string, number>),
    );
    countersOf(pcp, 'gatehouse_pcp_responses_total', 'PCP responses, by opcode and result code', ['opcode', 'result'], (s) =>
      Object.entries((s.server.results as Record<string, number> | undefined) ?? {}).map(([k, v]): [string[], number] => {
        const [op, res] = k.split('/');
        return [[op ?? k, res ?? ''], v];
      }),
    );
    countersOf(pcp, 'gatehouse_pcp_mapping_events_total', 'PCP mappings created, refreshed, deleted, expired, blocked', ['action'], (s) =>
      entries(s.server.mappings as Record<string, number>),
    );
    countersOf(pcp, 'gatehouse_pcp_dropped_total', 'PCP datagrams not answered, by reason', ['reason'], (s) =>
      entries(s.server.dropped as Record<string, number>),
    );
    gaugeOf(pcp, 'gatehouse_pcp_mappings', 'PCP mappings in force', (s) => s.mappings);
    gaugeOf(pcp, 'gatehouse_pcp_flows', 'Flows (mapping × remote) on the PCP path', (s) => s.path.flows);
    countersOf(pcp, 'gatehouse_pcp_packets_total', 'Packets of mapped flows read from NFQUEUE, by verdict', ['verdict'], (s) => [
      [['accepted'], s.path.accepted ?? 0],
      [['dropped'], s.path.dropped ?? 0],
      [['held'], s.path.held ?? 0],
      [['released'], s.path.released ?? 0],
      [['held_expired'], s.path.heldExpired ?? 0],
      [['held_overflow'], s.path.heldOverflow ?? 0],
      [['unknown'], s.path.unknown ?? 0],
    ]);
    countersOf(pcp, 'gatehouse_pcp_nfqueue_errors_total', 'NFQUEUE reader errors, by kind', ['kind'], (s) =>
      s.nfqueue
        ? [
            [['enobufs'], s.nfqueue.enobufs ?? 0],
            [['errors'], s.nfqueue.errors ?? 0],
            [['exceptions'], s.nfqueue.exceptions ?? 0],
          ]
        : [],
    );
  }
  if (scanners) {
    // gatehouse_scan_total{scanner,outcome}: clean, infected, failed_open, failed_closed
    // (an error counts in one of the last two, and by kind in gatehouse_scan_errors_total).
    countersOf(scanners, 'gatehouse_scan_total', 'Files scanned, by scanner and outcome', ['scanner', 'outcome'], (l) =>
      l.flatMap(({ scanner, stats: s }): [string[], number][] => [
        [[scanner, 'clean'], s.clean],
        [[scanner, 'infected'], s.infected],
        [[scanner, 'failed_open'], s.failed_open],
        [[scanner, 'failed_closed'], s.failed_closed],
      ]),
    );
    countersOf(scanners, 'gatehouse_scan_errors_total', 'Scans without an answer, by scanner and kind', ['scanner', 'kind'], (l) =>
      l.flatMap(({ scanner, stats: s }) => Object.entries(s.errors).map(([k, v]): [string[], number] => [[scanner, k], v])),
    );
    const perScanner = (name: string, help: string, read: (s: ScanStatsSource) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['scanner'],
        registers: [registry],
        collect() {
          for (const { scanner, stats: s } of safe(scanners) ?? []) {
            const v = safe(() => read(s));
            if (typeof v === 'number' && Number.isFinite(v)) this.set({ scanner }, v);
          }
        },
      });
    perScanner('gatehouse_scan_in_flight', 'Scans running now, by scanner (at most scan.max_concurrent)', (s) => s.in_flight);
    perScanner('gatehouse_scan_queued', 'Scans waiting for a slot, by scanner', (s) => s.queued);
  }
  if (supervisor) {
    countersOf(
      () => supervisor,
      'gatehouse_supervised_exceptions_total',
      'Exceptions contained by the supervision wrapper, by call site (each one is a bug to report)',
      ['where'],
      (s) => [...s.failures].map(([k, v]) => [[k], v]),
    );
  }
  const degraded = new Map<string, () => boolean | undefined>();
  if (events) {
    countersOf(events, 'gatehouse_events_dropped_total', 'Events not written to events.jsonl, by reason', ['reason'], (s) =>
      entries(s.dropped),
    );
    countersOf(events, 'gatehouse_events_written_total', 'Events written to events.jsonl', [], (s) => [[[], s.written]]);
    gaugeOf(events, 'gatehouse_events_queue_events', 'Events waiting in the events.jsonl write queue', (s) => s.queueEvents);
    gaugeOf(events, 'gatehouse_events_queue_bytes', 'Bytes waiting in the events.jsonl write queue', (s) => s.queueBytes);
    degraded.set('events', () => safe(events)?.degraded);
  }
  if (recordings) {
    countersOf(
      recordings,
      'gatehouse_recording_write_failures_total',
      'Recording I/O failures, by operation (open, write, seal, head, certificate) and reason',
      ['op', 'reason'],
      (s) =>
        Object.entries(s.failures).flatMap(([op, m]) =>
          isCounts(m) ? Object.entries(m).map(([r, v]): [string[], number] => [[op, r], v]) : [],
        ),
    );
    countersOf(recordings, 'gatehouse_recordings_incomplete_total', 'Recordings stopped early by a write failure', [], (s) => [
      [[], s.incomplete],
    ]);
    gaugeOf(recordings, 'gatehouse_recordings_unsealed', 'Recordings whose manifest waits for the disk', (s) => s.unsealed);
    gaugeOf(recordings, 'gatehouse_recordings_open', 'Recordings being written now', (s) => s.open ?? 0);
    degraded.set('recordings', () => {
      const s = safe(recordings);
      return s ? s.unsealed > 0 : undefined;
    });
  }
  if (quotaFlush) {
    countersOf(quotaFlush, 'gatehouse_quota_flush_failures_total', 'Quota counter saves that failed, by reason', ['reason'], (s) =>
      entries(s.failures),
    );
    degraded.set('quota_store', () => safe(quotaFlush)?.failing);
  }
  if (degraded.size) {
    new Gauge({
      name: 'gatehouse_degraded',
      help: 'A component that cannot write (1) or works (0): events, recordings, quota_store',
      labelNames: ['component'],
      registers: [registry],
      collect() {
        for (const [c, read] of degraded) {
          const v = read();
          if (v !== undefined) this.set({ component: c }, v ? 1 : 0);
        }
      },
    });
  }
  if (eventCounts) {
    countersOf(
      eventCounts,
      'gatehouse_events_total',
      'Events emitted (to events.jsonl, the admin API and events.redis alike), by event_type',
      ['event_type'],
      (s) => entries(s.byType),
    );
    countersOf(eventCounts, 'gatehouse_alerts_total', 'Alert events (rule matches), by alert.action: allowed or blocked', ['action'], (s) =>
      entries(s.alertsByAction),
    );
    countersOf(
      eventCounts,
      'gatehouse_quota_crossings_total',
      'Quota windows crossed (a quota event: the subject is over its limit), by quota id',
      ['quota'],
      (s) => entries(s.quotaCrossings),
    );
  }
  if (redisEvents) {
    // Unlabelled, so always exported (0 while events.redis is off): the event-drop alert
    // reads them beside gatehouse_events_dropped_total.
    countersOf(redisEvents, 'gatehouse_events_redis_sent_total', 'Events sent to Redis (events.redis; 0 while it is off)', [], (s) => [
      [[], s.sent],
    ]);
    countersOf(
      redisEvents,
      'gatehouse_events_redis_dropped_total',
      'Events dropped because the Redis output queue (events.redis.max_queue) was full (0 while events.redis is off)',
      [],
      (s) => [[[], s.dropped]],
    );
    gaugeOf(
      () => safe(redisEvents) ?? { queued: 0 },
      'gatehouse_events_redis_queue_events',
      'Events waiting for Redis (events.redis; 0 while it is off)',
      (s) => s.queued,
    );
  }
  // Relay worker restarts (turn.workers, issue 13): one process restarts nothing, so 0 here;
  // with workers the supervisor's count replaces it in the aggregate worker 0 serves
  // (src/admin/worker-metrics.ts).
  new Counter({
    name: WORKER_RESTARTS_METRIC,
    help: 'Relay worker processes restarted after they died (turn.workers > 1; 0 with one process)',
    registers: [registry],
  });
  const g = gateway ? safe(gateway) : undefined;
  if (gateway && g && typeof g === 'object') {
    for (const [k, v] of Object.entries(g)) {
      const name = `gatehouse_gateway_${snake(k)}`;
      if (typeof v === 'number') gaugeOf(gateway, name, `Gateway: ${k}`, (s) => s[k] as number);
      else if (isCounts(v))
        countersOf(gateway, `${name.replace(/_total$/, '')}_total`, `Gateway: ${k}, by reason`, ['reason'], (s) =>
          entries(s[k] as Record<string, number>),
        );
    }
  }
  const cluster = sources.cluster;
  const cl = cluster ? safe(cluster) : undefined;
  if (cluster && cl) {
    gaugeOf(cluster, 'gatehouse_cluster_redis_up', 'The cluster Redis (store.redis) is reachable (1) or not (0)', (s) => (s.up ? 1 : 0));
    countersOf(cluster, 'gatehouse_cluster_redis_outages_total', 'Times the cluster Redis became unreachable', [], (s) => [
      [[], s.outages],
    ]);
    for (const k of Object.keys(cl.gauges ?? {})) gaugeOf(cluster, `gatehouse_cluster_${snake(k)}`, `Cluster: ${k}`, (s) => s.gauges?.[k]);
    for (const k of Object.keys(cl.counters ?? {}))
      countersOf(cluster, `gatehouse_cluster_${snake(k).replace(/_total$/, '')}_total`, `Cluster: ${k}`, [], (s) => [
        [[], s.counters?.[k] ?? 0],
      ]);
  }
  return registry;
}
