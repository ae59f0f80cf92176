/**
 * The firewall path, composed (issue 10; design.md "The PCP path is the same walk with a
 * mapping instead of a permission"):
 *
 *   PcpServer (src/pcp)  ── mappings ──► FirewallBackend (nftables NAT + filter + NFQUEUE rules)
 *        │ extension                                   │ queued packets of mapped flows
 *        ▼                                             ▼
 *   PcpEscrowExtension ◄── keys ──  GatewayInspector ◄── PcpPath ◄── NfQueueReader
 *                                   (guard, pipeline, policy: the same as TURN flows)
 *
 * Fail closed: when the queue cannot be read here (no binding, no permission), the
 * backend is replaced by one that creates nothing, so the server never answers SUCCESS
 * for a mapping whose packets nobody would inspect.
 */
import { readFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { parseListen, type GatehouseConfig } from '../config/config.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/netpkt.js';
import type { Logger } from '../util/log.js';
import type { Clock } from '../util/clock.js';
import type { Supervisor } from '../util/supervise.js';
import type { EventSink } from '../events/eve.js';
import type { GatewayIdentity } from '../store/identity.js';
import type { FirewallBackend, PcpMapping, PcpMappingEnd, PcpRequestExtension } from '../pcp/hooks.js';
import { PcpServer, pcpOptionsFromConfig } from '../pcp/server.js';
import { createFirewallBackend, NfQueueReader, UnavailableBackend, type NfQueueStats } from '../pcp/firewall/index.js';
import { createPcpAuth } from '../pcp/auth/index.js';
import type { PcpAuthServer } from '../pcp/auth/pa-server.js';
import type { GatewayInspector } from './inspector.js';
import { PcpPath, type PcpPathStats } from './pcp-path.js';
import { PcpEscrowExtension, pcpEscrowHost } from './pcp-escrow.js';

/** Flows (remote addresses) per mapping; as turn.max_permissions_per_allocation for TURN. */
export const PCP_MAX_FLOWS_PER_MAPPING = 64;
/**
 * A held packet not released within this long is dropped. Longer than any keys deadline
 * the rules can set in practice is not needed: the guard blocks a required flow at its
 * deadline and its held packets are dropped then; this is the bound for the rest.
 */
export const PCP_HOLD_TIMEOUT_MS = 30_000;

export interface RunningPcp {
  server: PcpServer;
  firewall: FirewallBackend;
  /** Why mappings cannot be created here (null when they can). */
  unavailable: string | null;
  /** The inspector's relay for PCP flows: releases held packets, ends blocked mappings. */
  path: PcpPath;
  stats(): { server: Record<string, unknown>; path: PcpPathStats; nfqueue: NfQueueStats | null; mappings: number };
  stop(): Promise<void>;
}

export interface PcpDeps {
  cfg: GatehouseConfig;
  inspector: GatewayInspector;
  identity: GatewayIdentity;
  events: EventSink;
  clock: Clock;
  log: Logger;
  supervisor: Supervisor;
  /** Groups of an authenticated identity (the users directory). */
  groupsOf?(identity: string): readonly string[];
}

/** Starts the PCP server and its data path; null when pcp.listen is empty. */
export async function startPcp(d: PcpDeps): Promise<RunningPcp | null> {
  const pcp = d.cfg.pcp;
  if (pcp.listen.length === 0) return null;
  const log = d.log;

  let firewall = await createFirewallBackend({
    kind: pcp.firewall,
    queue: { num: pcp.nfqueue.queue, failOpen: pcp.nfqueue.fail_open },
    internalInterfaces: pcp.internal_interfaces,
  });

  const path = new PcpPath({
    hooks: d.inspector,
    clock: d.clock,
    logger: log,
    maxHeld: pcp.nfqueue.max_held,
    holdTimeoutMs: PCP_HOLD_TIMEOUT_MS,
    maxFlowsPerMapping: PCP_MAX_FLOWS_PER_MAPPING,
    maxFlows: d.cfg.turn.max_flows,
    isBlocked: (u, ip) => d.inspector.isBlocked(u, ip),
    ...(d.groupsOf ? { groupsOf: d.groupsOf } : {}),
    onFlowCreated: (f) => escrow.flowCreated(f),
  });

  let queue: NfQueueReader | null = null;
  if (firewall.available) {
    try {
      queue = openQueue(d, path);
    } catch (err) {
      const reason = `the gateway cannot read NFQUEUE ${pcp.nfqueue.queue}: ${(err as Error).message}`;
      await firewall.close().catch(() => {});
      firewall = new UnavailableBackend(reason);
    }
  }
  const unavailable = firewall.available ? null : (firewall.reason ?? 'no firewall backend');
  if (unavailable) {
    // Said at start (issue 10): the server answers, but creates no mapping (never SUCCESS).
    log.warn({ reason: unavailable }, 'PCP: mappings cannot be created on this machine; the PCP server answers NO_RESOURCES');
  }

  const escrow = new PcpEscrowExtension(
    pcpEscrowHost(
      d.inspector,
      (e) => d.events.emit(e),
      () => d.clock.now(),
    ),
    path,
    d.identity,
  );
  const extension: PcpRequestExtension = {
    onRequest: (ctx) => escrow.onRequest(ctx),
    onMappingCreated: (m: PcpMapping) => path.mappingCreated(m),
    onMappingEnded: (m: PcpMapping, why: PcpMappingEnd) => {
      path.mappingEnded(m, why);
      escrow.onMappingEnded(m, why);
    },
  };

  // contract.md: external_address null is the default route's source address.
  const externalAddress = pcp.external_address ?? (await defaultRouteAddress());
  if (!externalAddress)
    log.warn('PCP: no pcp.external_address and no default route: MAP/PEER for IPv4 get NETWORK_FAILURE (RFC 6887 §7.4)');
  const auth = createAuth(d);
  const server = new PcpServer({
    ...pcpOptionsFromConfig(pcp),
    externalAddress,
    // The path inspects UDP (DTLS, SRTP, STUN); other protocols are refused, not mapped blind.
    protocols: [IPPROTO_UDP],
    reservedPorts: reservedPortsOf(d.cfg, externalAddress),
    firewall,
    clock: d.clock,
    log: log.child({ module: 'pcp' }),
    supervisor: d.supervisor,
    events: d.events,
    ...(auth ? { auth } : {}),
    extension,
  });
  escrow.setSender(server);
  path.setControl(server);
  try {
    await server.start();
  } catch (err) {
    // Nothing is left behind: the queue is let go and the kernel table removed.
    queue?.close();
    await firewall.close().catch(() => {});
    throw err;
  }

  return {
    server,
    firewall,
    unavailable,
    path,
    stats: () => ({
      server: server.stats.snapshot(),
      path: path.stats,
      nfqueue: queue?.stats() ?? null,
      mappings: server.mappings().length,
    }),
    async stop() {
      path.stop();
      await server.close(); // ends mappings: their rules go
      queue?.close();
      await firewall.close().catch((err: Error) => log.warn({ err: err.message }, 'PCP firewall close failed'));
    },
  };
}

/** Opens the queue; verdicts given during the handler are its return value, later ones go by id. */
function openQueue(d: PcpDeps, path: PcpPath): NfQueueReader {
  const n = d.cfg.pcp.nfqueue;
  let current = -1;
  let now: 'accept' | 'drop' | null = null;
  const reader = NfQueueReader.open(
    {
      queue: n.queue,
      // The kernel's queue holds the delayed verdicts too: room for them and a burst beyond.
      maxLen: n.max_held + 1024,
      failOpen: n.fail_open,
      // The path bounds its delayed verdicts (max_held, PCP_HOLD_TIMEOUT_MS); the reader's
      // own bounds sit just beyond, as a backstop.
      maxHeld: n.max_held + 1,
      maxHoldMs: PCP_HOLD_TIMEOUT_MS + 5000,
      holdTimeoutVerdict: 'drop',
    },
    (p) => {
      current = p.id;
      now = null;
      d.supervisor.run('gateway.pcp.packet', () => path.onQueued({ id: p.id, packet: p.payload }));
      current = -1;
      // No verdict yet: held (delayed); path gives it later through verdicts.accept/drop.
      return now ?? 'hold';
    },
  );
  const verdict = (id: number, v: 'accept' | 'drop') => {
    if (id === current) now = v;
    else reader.verdict(id, v);
  };
  path.setVerdicts({ accept: (id) => verdict(id, 'accept'), drop: (id) => verdict(id, 'drop') });
  return reader;
}

/**
 * The host's own ports on the external address (RFC 6887 §11.3: only available ports are
 * assigned): TURN and PCP listeners, the admin API, and the TURN relay range when relays are
 * bound on that address. A mapping on them would DNAT the gateway's own traffic to a client.
 */
export function reservedPortsOf(cfg: GatehouseConfig, externalAddress: string | null): (protocol: number, port: number) => boolean {
  const udp = new Set<number>();
  const tcp = new Set<number>();
  for (const l of cfg.turn.listen) {
    const { proto, port } = parseListen(l);
    (proto === 'udp' ? udp : tcp).add(port);
  }
  for (const l of cfg.pcp.listen) udp.add(parseListen(l).port);
  const admin = /:(\d+)$/.exec(cfg.admin.listen);
  if (admin) tcp.add(Number(admin[1]));
  const relay = cfg.turn.relay_address === externalAddress || cfg.turn.relay_address === '0.0.0.0' ? cfg.turn.relay_ports : null;
  return (protocol, port) =>
    (protocol === IPPROTO_UDP && (udp.has(port) || (!!relay && port >= relay[0]! && port <= relay[1]!))) ||
    (protocol === IPPROTO_TCP && tcp.has(port));
}

/**
 * The source address the kernel picks for the default route: a connected UDP socket to a
 * documentation address (RFC 5737) sends nothing, but the route lookup names it.
 */
async function defaultRouteAddress(): Promise<string | null> {
  const sock = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.connect(9, '192.0.2.1', () => resolve());
    });
    const a = sock.address().address;
    return a && a !== '0.0.0.0' ? a : null;
  } catch {
    return null;
  } finally {
    sock.close();
  }
}

function createAuth(d: PcpDeps): PcpAuthServer | null {
  const a = d.cfg.pcp.auth;
  const common = {
    required: a.required,
    lifetime: a.lifetime,
    onEvent: (e: { kind: string; client: { address: string; port: number }; identity?: string; reason?: string }) =>
      d.log.info({ pcp_auth: e.kind, client: e.client.address, identity: e.identity, reason: e.reason }, 'PCP authentication'),
  };
  if (a.eap === 'radius') {
    const m = /^udp:\/\/(\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(a.radius.server ?? '')!;
    return createPcpAuth({
      ...common,
      backend: { kind: 'radius', address: m[2] ?? m[3]!, port: Number(m[4]), secret: a.radius.secret!, timeout: a.radius.timeout_ms },
    });
  }
  if (a.ca.length === 0) {
    if (a.required) d.log.warn('pcp.auth.required without pcp.auth.ca: no client can authenticate (builtin EAP-TLS needs CA roots)');
    return a.required ? createPcpAuth({ ...common, backend: { kind: 'eap-tls', ca: d.identity.certificatePem, ...serverCert(d) } }) : null;
  }
  const ca = a.ca.map((f) => readFileSync(f, 'utf8')).join('\n');
  return createPcpAuth({ ...common, backend: { kind: 'eap-tls', ca, ...serverCert(d) } });
}

/** The builtin EAP-TLS server presents the gateway certificate (key-escrow.md §1). */
function serverCert(d: PcpDeps): { cert: string; key: string } {
  return { cert: d.identity.certificatePem, key: d.identity.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}
