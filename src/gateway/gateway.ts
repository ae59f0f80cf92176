/**
 * The live composition (design.md "gateway"): the TURN server with the inspector as its
 * flow hooks, policy, quotas, recordings, event sinks and the admin API, started and
 * stopped together. `gatehouse serve` (cli/serve.ts) parses arguments and calls this.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import type { GatehouseConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { systemClock } from '../util/clock.js';
import { FanoutEventSink, FileEventSink, MemoryEventSink, type EventSink, type EveEvent } from '../events/eve.js';
import { RedisEventSink } from '../events/redis.js';
import { clusterNodeId, startClusterNode, type ClusterNode } from '../cluster/node.js';
import { clusterRestSecret } from '../cluster/rest-secret.js';
import { startClusterShare, type ClusterShare } from '../cluster/share.js';
import { ensureBootstrapUser, StaticUserDirectory } from '../store/users.js';
import { TurnServer } from '../turn/server.js';
import type { Flow } from '../turn/flow.js';
import { createMetrics } from '../admin/metrics.js';
import type { Registry } from 'prom-client';
import type { ReservationExchange } from '../turn/reservations.js';
import { EventCounter } from '../admin/event-counts.js';
import type { BlockReason, BudgetName } from './flow-guard.js';
import { AdminServer } from '../admin/server.js';
import { loadOrCreateAdminToken } from '../admin/token.js';
import { loadOrCreateIdentity, type GatewayIdentity } from '../store/identity.js';
import { PolicyHolder } from '../policy/loader.js';
import { GatewayInspector } from './inspector.js';
import { DEFAULT_ALLOCATION_BUFFER_BYTES, DEFAULT_MAX_BUFFERED_BYTES } from './memory.js';
import { QuotaFlushHealth, QuotaTracker, type QuotaCrossing } from '../policy/quota.js';
import { Supervisor } from '../util/supervise.js';
import type { PolicyEngine } from '../policy/engine.js';
import { parseSize } from '../policy/rules-schema.js';
import { SqliteStore } from '../store/sqlite.js';
import { RecordingStore } from '../record/recorder.js';
import { DiskSpool } from '../record/spool.js';
import { eveTimestamp } from '../events/eve.js';
import { scannersFromConfig } from '../scan/index.js';
import { startPcp, type RunningPcp } from './pcp-gateway.js';
import { isPcpFlow } from './pcp-path.js';
import type { ScannerKind } from '../policy/rules-schema.js';
import { startCore, type RunningCore } from '../core/index.js';
import { loadOrCreateRestSecret } from '../core/turn-credentials.js';
import { DEFAULT_CORE_LISTEN } from '../config/config.js';

/** The keys of gatehouse_gateway_blocked_total{reason} (inspector.ts block()); tsc checks both lists are whole. */
/** Bytes of JSON text the recent-events ring (`/v1/events`, 10 000 events) keeps at most (README limits table). */
const RECENT_EVENTS_BYTES = 16 * 1024 * 1024;

const BLOCK_REASONS: Record<Exclude<BlockReason, 'budget_exceeded'> | 'policy', 0> = {
  keys_missing: 0,
  keys_declined: 0,
  rekey_missing: 0,
  policy: 0,
};
const BUDGETS: Record<BudgetName, 0> = { handshake_bytes: 0, client_hellos: 0, stun: 0, uninspected: 0, memory: 0 };
const BLOCK_REASONS_AT_ZERO: Record<string, number> = {
  ...BLOCK_REASONS,
  ...Object.fromEntries(Object.keys(BUDGETS).map((b) => [`budget_exceeded:${b}`, 0])),
};

export interface RunningGateway {
  config: GatehouseConfig;
  /** The gateway's metrics (/metrics; a relay worker's part of the supervisor's aggregate). */
  registry: Registry;
  /** This process's flows as /v1/flows lists them. */
  flows(): unknown[];
  /** This process's quota windows as the dashboard lists them. */
  quotas(): unknown[];
  /** Puts an event of another relay worker into this one's recent events and dashboard stream only. */
  showEvent(e: EveEvent): void;
  turn: TurnServer;
  admin: AdminServer;
  adminPort: number;
  identity: GatewayIdentity;
  policy: PolicyHolder;
  /** The conferencing core (director and embedded front end), or null when its default address was taken. */
  core: RunningCore | null;
  /** The supervision wrapper of this gateway (cli/main.ts also routes process-level exceptions to it). */
  supervisor: Supervisor;
  /** store.redis: this gateway's link to the cluster and its shared state; null: alone. */
  cluster: ClusterNode | null;
  stop(): Promise<void>;
}

/**
 * What /v1/flows shows of a flow: addresses, owner, conference; key status (and its
 * deadline), bytes inspected and rule matches, never key material.
 */
function flowSummary(f: Flow, inspector: GatewayInspector) {
  const s = inspector.flowStatus(f);
  return {
    flow_id: f.id,
    ...(isPcpFlow(f) ? { path: 'pcp', mapping: f.allocationId } : { allocation: f.allocationId }),
    user: f.user,
    groups: f.groups,
    client: f.client,
    relayed: f.relayed,
    peer: f.peerAddress,
    created: new Date(f.createdAt).toISOString(),
    ...(f.conference !== undefined ? { conference: f.conference } : {}),
    ...(f.room !== undefined ? { room: f.room } : {}),
    ...(f.guest ? { guest: true } : {}),
    ...(s
      ? {
          key_status: s.keys.status,
          key_deadline: s.keys.deadline === null ? null : new Date(s.keys.deadline).toISOString(),
          ...(s.keys.reason ? { key_reason: s.keys.reason } : {}),
          bytes: s.bytes,
          packets: s.packets,
          alerts: s.alerts,
          verdict: s.verdict,
          recording: s.recording,
        }
      : {}),
  };
}

/** The rules in force, as the dashboard shows them (ids, conditions, actions; no secret is in a rule file). */
function policyView(policy: PolicyHolder) {
  const e = policy.current;
  return {
    path: policy.path,
    files: policy.files,
    keys: e.keys,
    rules: e.rules.map((r) => ({
      id: r.id,
      description: r.description,
      action: r.action,
      severity: r.severity,
      when: Object.fromEntries(
        Object.entries(r.when).filter(
          ([, v]) =>
            v !== null &&
            v !== 'any' &&
            !(Array.isArray(v) && v.length === 0) &&
            !(typeof v === 'object' && !Array.isArray(v) && Object.values(v as object).every((x) => x === null)),
        ),
      ),
    })),
    quotas: e.quotas.map((q) => ({ id: q.id, scope: q.scope, users: q.users, groups: q.groups, limit: q.limit, period: q.period })),
  };
}

export async function startGateway(
  cfgIn: GatehouseConfig,
  log: Logger,
  stdout: Writable,
  opts: {
    supervisor?: Supervisor;
    /** Issue 13 (turn.workers): this process is one relay worker (src/turn/workers.ts). */
    worker?: {
      /** The SO_REUSEPORT listener sockets the supervisor made, by turn.listen URL. */
      listenFds: ReadonlyMap<string, number>;
      /**
       * true: TURN and the per-flow floor only; the parts with one port (admin API, the
       * conferencing core, PCP) run in worker 0 alone.
       */
      relayOnly: boolean;
      /** Worker 0: /metrics of all the workers (asked of the supervisor); else this one's registry. */
      metricsText?: () => Promise<string>;
      /** RESERVATION-TOKENs of sibling workers (src/turn/reservations.ts). */
      reservations?: ReservationExchange;
      /** Worker 0: the flows of every worker for /v1/flows and the dashboard (src/cli/worker-views.ts). */
      flowsView?: () => Promise<unknown[]>;
      /** Workers > 0: a sink that forwards this worker's events to worker 0's dashboard. */
      eventTap?: EventSink;
      /** Worker 0: every worker's quota windows for the dashboard (src/cli/worker-views.ts). */
      quotasView?: () => Promise<unknown[]>;
      /** Worker 0: every worker's recordings directory, in worker order, for the dashboard. */
      recordingsDirs?: string[];
    };
  } = {},
): Promise<RunningGateway> {
  const supervisor = opts.supervisor ?? new Supervisor(log.child({ module: 'supervise' }));
  mkdirSync(cfgIn.data_dir, { recursive: true, mode: 0o700 });
  // core.md §8: the core hands out TURN REST credentials that this TURN server verifies;
  // with no turn.rest_secret configured one is made once into DATA_DIR (0600).
  const rest = loadOrCreateRestSecret(cfgIn.data_dir, cfgIn.turn.rest_secret);
  if (rest.created) log.info({ file: rest.file }, 'turn.rest_secret not set: generated one for the core (kept in this file)');
  // Issue 14: one REST secret for a cluster (store.redis), so a core's credentials verify on every gateway.
  const restSecret =
    cfgIn.turn.rest_secret === null && cfgIn.store.redis
      ? await clusterRestSecret(cfgIn.store.redis, cfgIn.store.key_prefix, rest.secret, log.child({ module: 'cluster' }))
      : rest.secret;
  const cfg: GatehouseConfig = { ...cfgIn, turn: { ...cfgIn.turn, rest_secret: restSecret } };
  const boot = ensureBootstrapUser(cfg.data_dir, cfg.users);
  if (boot.created) {
    // Printed once, to the terminal only (never to the log): appliance-style first start.
    stdout.write(
      `\nFirst start: created TURN user "${boot.created.name}" with password ${boot.created.password}\n` +
        `(kept in ${join(cfg.data_dir, 'initial-user.json')}; add users under "users:" in a config file)\n\n`,
    );
  }
  const { identity, created } = await loadOrCreateIdentity(cfg.data_dir, cfg.identity, cfg.realm);
  log.info({ fingerprint: identity.fingerprint.toString('hex'), created }, 'gateway identity');
  const token = loadOrCreateAdminToken(cfg);
  if (token.created) log.info({ file: token.file }, 'admin token created (read it from this file)');

  // Malware scanners (issue 9): a `scan:` rule whose scanner is not configured is refused
  // at start and on reload (a located error), so no rule silently scans nothing.
  const scanners = scannersFromConfig(cfg.scan);
  const configured = new Set<ScannerKind>([...(scanners.icap ? ['icap' as const] : []), ...(scanners.clamd ? ['clamd' as const] : [])]);
  const policy = await PolicyHolder.open(cfg.policy.rules, log.child({ module: 'policy' }), { scanners: configured });
  policy.watch();

  const memory = new MemoryEventSink(10000, 64, { bytes: RECENT_EVENTS_BYTES });
  const eventFile = new FileEventSink(
    join(cfg.data_dir, 'events.jsonl'),
    parseSize(cfg.events.max_bytes) ?? 100 * 1024 * 1024,
    cfg.events.keep,
    {
      log: log.child({ module: 'events' }),
      supervisor,
    },
  );
  // With store.redis and no events.redis.url, the EVE stream goes to the cluster's Redis
  // too (events.redis.mode/key): one stream of every gateway's events (README "Cluster").
  const eventsRedisUrl = cfg.events.redis.url ?? cfg.store.redis;
  const redisEvents =
    eventsRedisUrl === null
      ? null
      : new RedisEventSink({
          url: eventsRedisUrl,
          mode: cfg.events.redis.mode,
          key: cfg.events.redis.key,
          maxQueue: cfg.events.redis.max_queue,
          log: log.child({ module: 'events' }),
        });
  // /metrics counts what every sink sees: gatehouse_events_total, _alerts_total, _quota_crossings_total.
  const eventCounts = new EventCounter();
  // With store.redis every event names its gateway (top-level `host`, as Suricata EVE's sensor name).
  const events = new FanoutEventSink(
    [eventFile, memory, eventCounts, ...(redisEvents ? [redisEvents] : []), ...(opts.worker?.eventTap ? [opts.worker.eventTap] : [])],
    supervisor,
    cfg.store.redis ? clusterNodeId(cfg) : undefined,
  );
  const configUsers = new StaticUserDirectory(boot.users);
  // Quotas (issue 5): counters in the SQLite store, flushed every second, so a kill -9
  // loses at most one second of counting. A policy reload rebuilds the tracker from the
  // new quotas and restores the current windows' counters from the store.
  const store = new SqliteStore(join(cfg.data_dir, 'state.db'));
  const quotaHealth = new QuotaFlushHealth(log.child({ module: 'quota' }));
  const reportQuota = (c: QuotaCrossing) =>
    events.emit({
      timestamp: eveTimestamp(systemClock.now()),
      event_type: 'quota',
      quota: { id: c.quota, subject: c.subject, window: c.window, limit: c.limit, used: c.used },
      gatehouse: { reason: 'quota_exceeded' },
    });
  // Issue 14: store.redis shares quotas, blocks and events with the other gateways; null: alone.
  const cluster: ClusterNode | null = startClusterNode(cfg, { log: log.child({ module: 'cluster' }), reportQuota, configUsers });
  // The configuration's users, then (store.redis) those `gatehouse user add` shared with the cluster.
  const users = cluster?.users ?? configUsers;
  const makeQuotas = (e: PolicyEngine) => {
    const q = new QuotaTracker(e.quotas, systemClock, cfg.timezone, store, reportQuota, quotaHealth, cluster?.quotas ?? null);
    cluster?.quotas.attach(q);
    return q;
  };
  let quotas = makeQuotas(policy.current);
  eventCounts.knowQuotas(policy.current.quotas.map((q) => q.id));
  policy.onChange((e) => {
    eventCounts.knowQuotas(e.quotas.map((q) => q.id));
    quotas.flush();
    quotas = makeQuotas(e);
  });
  const quotaFlush = systemClock.setInterval(
    supervisor.guard('gateway.quota.flush', () => void quotas.flush()),
    1000,
  );

  const recordings = new RecordingStore({
    dir: join(cfg.data_dir, 'recordings'),
    identity,
    clock: systemClock,
    flushIntervalMs: cfg.recording.flush_interval_ms,
    videoContainer: cfg.recording.video_container,
    log: log.child({ module: 'record' }),
    retention: {
      ...(cfg.recording.max_age_days ? { maxAgeMs: cfg.recording.max_age_days * 86_400_000 } : {}),
      ...(cfg.recording.max_bytes ? { maxBytes: parseSize(cfg.recording.max_bytes) ?? undefined } : {}),
    },
  });
  for (const r of recordings.recovered) log.warn({ recording: r.id }, 'sealed a recording left open by a crash');
  const retention = systemClock.setInterval(
    supervisor.guard('gateway.retention', () => {
      for (const d of recordings.applyRetention())
        log.info({ recording: d.id, bytes: d.bytes, reason: d.reason }, 'retention deleted a recording');
    }),
    3_600_000,
  );

  // Issue 9: transfers a recorder or a scanner needs go to DATA_DIR/spool beyond 64 KiB;
  // what a crash left there is removed now, before any flow.
  const spool = new DiskSpool(join(cfg.data_dir, 'spool'));
  const swept = spool.sweep();
  if (swept > 0) log.info({ files: swept }, 'removed spool files left by a previous run');

  // Every relayed flow runs through the inspection pipeline and the key-escrow guard
  // (key-escrow.md §5); policy is read per decision, so a reload applies to live flows.
  const inspector = new GatewayInspector({
    policy: () => policy.current,
    identity,
    events,
    clock: systemClock,
    logger: log.child({ module: 'inspect' }),
    quotas: { account: (u, g, ip, n) => quotas.account(u, g, ip, n) },
    recordings,
    // Packet hooks, key handling and deadline timers run supervised: an exception closes that flow.
    supervisor,
    // Issue 8: held datagrams, DTLS backlog and SCTP reassembly, per allocation and in all.
    memory: {
      allocationBytes: parseSize(cfg.gateway.allocation_buffer_bytes) ?? DEFAULT_ALLOCATION_BUFFER_BYTES,
      maxBytes: parseSize(cfg.gateway.max_buffered_bytes) ?? DEFAULT_MAX_BUFFERED_BYTES,
    },
    // Issue 9: data-channel file transfers.
    transfers: { maxFileBytes: parseSize(cfg.policy.max_file_bytes) ?? 100 * 1024 * 1024, pauseMs: cfg.policy.transfer_pause_ms },
    // `scan: icap | clamd` rules: the final chunk of a file is held while it is scanned.
    scanners: { icap: scanners.icap, clamd: scanners.clamd, failOpen: cfg.scan.fail_open },
    spool,
  });
  const turn = new TurnServer({
    config: cfg,
    users,
    clock: systemClock,
    logger: log.child({ module: 'turn' }),
    events,
    flowHooks: inspector,
    extensions: [inspector.extension],
    // key-escrow.md §6: KeyEscrow requests (desktop key agents, `gatehouse keyagent`).
    keyEscrow: inspector.keyEscrow,
    supervisor, // one counter of contained exceptions for the whole process
    ...(opts.worker ? { listenFds: opts.worker.listenFds } : {}),
    ...(opts.worker?.reservations ? { reservations: opts.worker.reservations } : {}),
  });
  inspector.attach(turn);
  // A flow blocked here (user × peer IP, key-escrow.md §5.4) is refused on every gateway.
  cluster?.blocks.attach(inspector.blockList);
  // key-escrow.md §6.4: held key sets are wiped when they expire.
  const heldSweep = systemClock.setInterval(
    supervisor.guard('gateway.key_escrow.sweep', () => inspector.keyEscrow.sweep(systemClock.now())),
    1000,
  );
  await turn.start();

  // The firewall path (issue 10): PCP mappings, kernel rules, NFQUEUE into the same inspector.
  let pcp: RunningPcp | null = null;
  try {
    if (!opts.worker?.relayOnly)
      pcp = await startPcp({
        cfg,
        inspector,
        identity,
        events,
        clock: systemClock,
        log: log.child({ module: 'pcp' }),
        supervisor,
        groupsOf: (name) => users.lookup(name)?.groups ?? [],
      });
  } catch (err) {
    await turn.stop();
    throw err;
  }
  if (pcp) {
    const path = pcp.path;
    // Released (held) packets and blocks go to the path that carries the flow.
    inspector.setRelay({
      send: (f, dir, data, peerPort) => (isPcpFlow(f) ? path.send(f, dir, data) : turn.inject(f, dir, data, peerPort)),
      close: (f, reason) => (isPcpFlow(f) ? path.close(f, reason) : turn.closeFlow(f, reason)),
    });
  }

  const flowsNow = () => [...turn.flows(), ...(pcp?.path.flows() ?? [])].map((f) => flowSummary(f, inspector));
  // Issue 14: the flow registry (GET /v1/cluster, ALTERNATE-SERVER when turn.max_allocations
  // is reached) and policy distribution (a reload here applies on every gateway).
  const share: ClusterShare | null = cluster
    ? startClusterShare({
        cfg,
        link: cluster.link,
        turn,
        policy,
        adminUrl: (): string => admin.url,
        flows: flowsNow,
        log: log.child({ module: 'cluster' }),
      })
    : null;
  const registry = createMetrics(() => turn.stats, {
    supervisor,
    events: () => eventFile.stats,
    recordings: () => recordings.stats,
    quotaFlush: () => quotaHealth,
    ...(cluster ? { cluster: () => (share ? share.metrics(cluster.metrics()) : cluster.metrics()) } : {}),
    // Every block reason is exported from the start, at 0 (gatehouse_gateway_blocked_total).
    gateway: () => {
      const s = inspector.stats;
      return { ...s, blocked: { ...BLOCK_REASONS_AT_ZERO, ...s.blocked } };
    },
    eventCounts: () => eventCounts.counts,
    redisEvents: () => redisEvents?.stats,
    fastPath: () => turn.fastPath(),
    ...(pcp ? { pcp: () => pcp.stats() } : {}),
    scanners: () => [scanners.icap, scanners.clamd].flatMap((g) => (g ? [{ scanner: g.kind, stats: g.stats }] : [])),
  });
  const admin = new AdminServer(
    {
      registry,
      ...(opts.worker?.metricsText ? { metricsText: opts.worker.metricsText } : {}),
      token: token.token,
      recentEvents: () => memory.events,
      certificatePem: () => identity.certificatePem,
      flows: opts.worker?.flowsView ?? flowsNow,
      reloadPolicy: () => (share ? share.policy.reload() : policy.reload()),
      ...(share ? { cluster: share.admin } : {}),
      // The dashboard (issue 14): live events, recordings with their verify status, quota use, rules.
      subscribe: (fn) => memory.subscribe(fn),
      recordingsDir: join(cfg.data_dir, 'recordings'),
      ...(opts.worker?.recordingsDirs ? { recordingsDirs: opts.worker.recordingsDirs } : {}),
      quotas: opts.worker?.quotasView ?? (() => quotas.snapshot()),
      policy: () => policyView(policy),
      // A full disk degrades service and says so: /healthz names what cannot write.
      degraded: () => [
        ...(eventFile.stats.degraded ? ['events'] : []),
        ...(recordings.stats.unsealed > 0 ? ['recordings'] : []),
        ...(quotaHealth.failing ? ['quota_store'] : []),
        ...(cluster?.degraded() ? ['cluster'] : []),
      ],
    },
    log.child({ module: 'admin' }),
  );
  let adminAddr = { port: 0 };
  try {
    if (!opts.worker?.relayOnly) adminAddr = await admin.listenConfigured(cfg.admin); // https:// with admin.tls
  } catch (err) {
    await pcp?.stop();
    await turn.stop();
    throw err;
  }
  share?.start(); // heartbeats name the admin URL: after listen
  // The conferencing core (core.md): director and the embedded front end. The default
  // address taken (another gateway on this host) leaves the gateway up without a core;
  // an explicitly configured core.listen that cannot be bound stops the start.
  let core: RunningCore | null = null;
  try {
    if (!opts.worker?.relayOnly)
      core = await startCore(cfg, {
        users,
        events,
        logger: log.child({ module: 'core' }),
        clock: systemClock,
        supervisor,
        restSecret,
        dataDir: cfg.data_dir,
      });
  } catch (err) {
    const inUse = (err as NodeJS.ErrnoException).code === 'EADDRINUSE';
    if (!(inUse && cfg.core.listen === DEFAULT_CORE_LISTEN)) {
      await admin.close();
      await pcp?.stop();
      await turn.stop();
      throw err;
    }
    log.warn({ listen: cfg.core.listen }, 'conferencing core not started: its address is in use (set core.listen)');
  }
  // Issue 11 / core.md §8: a participant the core revokes (room removal or revoked
  // invitation: tokens stamped with a room; a guest removed or leaving) loses its TURN
  // credentials at once, not at their EXPIRY, and its allocations close. Listener errors
  // are contained by the token service (onListenerError -> supervisor).
  // core.md §8 / contract.md "Events": a user's credential names no conference; the core's
  // issue record does (and the directory groups it was issued with), looked up on use.
  if (core) {
    const issuer = core.core.turn;
    turn.setIssuedContexts((username) => issuer.contextOf(username));
  }
  core?.core.tokens.onRevoke((claims) => {
    if (claims.kind === 'guest' || claims.room !== undefined) turn.revokeSubject(claims.sub);
  });
  log.info(
    {
      turn: turn.addresses(),
      admin: admin.url,
      core: core?.url ?? 'off',
      users: users.size,
      rules: policy.current.rules.length,
      pcp: pcp
        ? { listen: pcp.server.addresses(), firewall: pcp.firewall.name, ...(pcp.unavailable ? { unavailable: pcp.unavailable } : {}) }
        : 'off',
    },
    'gatehouse listening',
  );
  return {
    config: cfg,
    registry,
    flows: flowsNow,
    quotas: () => quotas.snapshot(),
    // A sibling worker's event, shown here (worker 0's recent events and dashboard), not written again.
    showEvent: (e) => memory.emit(e),
    turn,
    admin,
    adminPort: adminAddr.port,
    identity,
    policy,
    core,
    supervisor,
    cluster,
    async stop() {
      policy.close();
      await share?.close(); // out of the registry first: no node sends clients here any more
      await core?.stop();
      await admin.close();
      await pcp?.stop(); // deletes the mappings and their kernel rules
      await turn.stop(); // closes flows: recordings are sealed
      await recordings.drained(); // parts still being written are sealed once their writes complete
      quotaFlush.cancel();
      retention.cancel();
      heldSweep.cancel();
      inspector.keyEscrow.close();
      quotas.flush();
      await cluster?.close();
      store.close();
      events.close();
    },
  };
}
