import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { createServer as createTcpServer, type Server as NetServer, type Socket as NetSocket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { randomBytes } from 'node:crypto';
import { parseListen, type GatehouseConfig } from '../config/config.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { silentLogger, type Logger } from '../util/log.js';
import { eveTimestamp, type EventSink, type EveEvent } from '../events/eve.js';
import {
  Attr,
  Class,
  Family,
  Method,
  PasswordAlgorithmId,
  StunWriter,
  decodePasswordAlgorithm,
  decodePasswordAlgorithms,
  decodeStun,
  encodePasswordAlgorithms,
  findAttr,
  getAttr,
  getString,
  getXorAddress,
  getXorAddresses,
  hasAttr,
  longTermKey,
  messageType,
  parseIP,
  unknownComprehensionRequired,
  verifyFingerprint,
  verifyIntegrity,
  verifyIntegritySha256,
  type StunMessage,
  type TransportAddress,
} from '../wire/stun.js';
import { StreamFramer, channelDataPadding, isValidChannelNumber } from '../wire/channeldata.js';
import { NonceManager, resolveCredential, type ResolvedCredential, type UserDirectory } from './auth.js';
import { PeerFilter } from './peerfilter.js';
import { PortPool, bindUdp, enlargeBuffers } from './relay.js';
import type { Flow, FlowDirection, FlowHooks, TurnRequestExtension, TurnRequestVerdict } from './flow.js';

export type { UserRecord, UserDirectory } from './auth.js';
export type { Flow, FlowDirection, FlowHooks, TurnRequestContext, TurnRequestExtension, TurnRequestVerdict } from './flow.js';

export interface TurnStats {
  allocations: number;
  permissions: number;
  channels: number;
  packets: { clientToPeer: number; peerToClient: number };
  bytes: { clientToPeer: number; peerToClient: number };
  /**
   * Authentication failures by reason: bad_request (missing USERNAME/REALM/NONCE or bad
   * PASSWORD-ALGORITHM(S)), stale_nonce, bad_realm, unknown_user, rest_expired,
   * bad_integrity, wrong_credentials (441). The initial 401 challenge is not a failure.
   */
  authFailures: Record<string, number>;
}

export interface TurnServerOptions {
  config: GatehouseConfig;
  users: UserDirectory;
  clock?: Clock;
  logger?: Logger;
  events?: EventSink;
  /** Key escrow / inspection seam (flow.ts). Default: forward everything. */
  flowHooks?: FlowHooks;
  /** Request extensions (key escrow attributes). */
  extensions?: TurnRequestExtension[];
  /**
   * Overrides config.turn.channel_numbers: true accepts only RFC 8656 channel numbers
   * 0x4000-0x4FFF; false also the RFC 5766 range 0x4000-0x7FFF.
   */
  strictChannelRange?: boolean;
}

type Proto = 'udp' | 'tcp' | 'tls';

// RFC 8656 §9: permissions last 300 s; §11: channel bindings 600 s; §12 (§11.3 note): a
// channel number or peer address stays reserved 5 minutes after its binding expired.
const PERMISSION_LIFETIME_MS = 300_000;
const CHANNEL_LIFETIME_MS = 600_000;
const CHANNEL_QUARANTINE_MS = 300_000;
// RFC 8656 §14.9 / §7.2: a reservation made with EVEN-PORT R=1 is kept about 30 s.
const RESERVATION_MS = 30_000;
// RFC 8489 §6.3.1: responses are remembered for retransmissions for about 40 s (Ti).
const TX_CACHE_MS = 40_000;
const TX_CACHE_MAX = 50_000;
const SWEEP_MS = 1000;
const MAX_STREAM_BUFFERED = 4 * 1024 * 1024;
const RING = 256;
// RFC 8656 §3.1 / §7.2: only UDP relaying (REQUESTED-TRANSPORT protocol 17).
const PROTO_UDP = 17;

interface UdpListener {
  proto: 'udp';
  index: number;
  socket: Socket;
  address: string;
  port: number;
  /** 5-tuple lookup without building a key: client IP -> client port -> allocation. */
  clients: Map<string, Map<number, Allocation>>;
}

interface StreamListener {
  proto: 'tcp' | 'tls';
  index: number;
  server: NetServer;
  address: string;
  port: number;
}

/** One client 5-tuple (RFC 8656 §2: client address, server address, transport). */
interface Endpoint {
  proto: Proto;
  remoteAddress: string;
  remotePort: number;
  localAddress: string;
  localPort: number;
  udp: UdpListener | null;
  conn: StreamConn | null;
  key: string;
}

interface StreamConn {
  socket: NetSocket;
  framer: StreamFramer;
  ep: Endpoint;
  allocation: Allocation | null;
  closed: boolean;
}

interface Channel {
  number: number;
  peerIp: string;
  peerPort: number;
  perm: Permission;
  expiresAt: number;
  active: boolean;
  reuseAfter: number;
}

interface Permission {
  ip: string;
  ipBytes: Buffer;
  expiresAt: number;
  /** Non-null while the permission is installed (the flow is open). */
  flow: FlowImpl | null;
  channelsByPort: Map<number, Channel>;
}

class FlowImpl implements Flow {
  open = true;
  ctx: unknown = undefined;
  constructor(
    readonly id: number,
    readonly allocationId: string,
    readonly user: string,
    readonly groups: readonly string[],
    readonly client: { proto: Proto; address: string; port: number },
    readonly relayed: { address: string; port: number },
    readonly peerAddress: string,
    readonly createdAt: number,
  ) {}
}

interface Allocation {
  id: string;
  ep: Endpoint;
  user: string;
  username: string;
  groups: readonly string[];
  family: 4 | 6;
  relayAddress: string;
  relayPort: number;
  socket: Socket;
  expiresAt: number;
  permissions: Map<string, Permission>;
  channels: Map<number, Channel>;
  dontFragment: boolean;
  deleted: boolean;
}

interface Reservation {
  token: string;
  port: number;
  socket: Socket;
  family: 4 | 6;
  expiresAt: number;
}

interface AuthOk {
  cred: ResolvedCredential;
  key: Buffer;
  sha256: boolean;
  nonce: string;
}

const PADS = [Buffer.alloc(0), Buffer.alloc(1), Buffer.alloc(2), Buffer.alloc(3)];

/** Comprehension-required attributes this server understands (RFC 8489 §7.3.1). */
const KNOWN_REQUIRED = new Set<number>([
  Attr.MappedAddress,
  Attr.Username,
  Attr.MessageIntegrity,
  Attr.ErrorCode,
  Attr.UnknownAttributes,
  Attr.ChannelNumber,
  Attr.Lifetime,
  Attr.XorPeerAddress,
  Attr.Data,
  Attr.Realm,
  Attr.Nonce,
  Attr.XorRelayedAddress,
  Attr.RequestedAddressFamily,
  Attr.EvenPort,
  Attr.RequestedTransport,
  Attr.DontFragment,
  Attr.MessageIntegritySha256,
  Attr.PasswordAlgorithm,
  Attr.Userhash,
  Attr.XorMappedAddress,
  Attr.ReservationToken,
  Attr.Priority,
  Attr.UseCandidate,
]);

/** Password algorithms we offer, in order of preference (RFC 8489 §9.2.1, §14.11). */
const OFFERED_ALGS = [PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5];
const OFFERED_ALGS_VALUE = encodePasswordAlgorithms(OFFERED_ALGS);

function familyOf(ip: string): 4 | 6 {
  return isIPv6(ip) ? 6 : 4;
}

/**
 * The TURN server core: STUN Binding (RFC 8489) and TURN over UDP, TCP and TLS
 * (RFC 8656) with long-term and TURN REST credentials. See flow.ts for the
 * inspection / key-escrow seam.
 */
export class TurnServer {
  readonly stats: TurnStats = {
    allocations: 0,
    permissions: 0,
    channels: 0,
    packets: { clientToPeer: 0, peerToClient: 0 },
    bytes: { clientToPeer: 0, peerToClient: 0 },
    authFailures: {},
  };

  private readonly cfg: GatehouseConfig;
  private readonly users: UserDirectory;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly events: EventSink | null;
  private readonly hooks: FlowHooks;
  private readonly onPacket: FlowHooks['onPacket'];
  private readonly extensions: TurnRequestExtension[];
  private readonly known: (t: number) => boolean;
  private readonly nonces: NonceManager;
  private readonly filter: PeerFilter;
  private readonly pool: PortPool;
  private readonly relayFamily: 4 | 6;
  private readonly legacyChannels: boolean;
  private readonly maxChannelByte: number;
  private readonly w = new StunWriter(2048);

  private udpListeners: UdpListener[] = [];
  private streamListeners: StreamListener[] = [];
  private readonly conns = new Set<StreamConn>();
  private readonly allocations = new Set<Allocation>();
  private readonly allocationsById = new Map<string, Allocation>();
  private readonly perUser = new Map<string, number>();
  private readonly pending = new Map<string, string>(); // 5-tuple key -> Allocate tid in progress
  private readonly reservations = new Map<string, Reservation>();
  private readonly txCache = new Map<string, { buf: Buffer; expires: number }>();
  private sweepTimer: TimerHandle | null = null;
  private started = false;
  private stopped = false;
  private flowSeq = 0;

  // Hot-path scratch: rings of preallocated headers so a send that is still queued in
  // the kernel path is not overwritten by the next packet (RFC 8656 §12.4 / §10.3).
  private readonly cdRing: Buffer[] = Array.from({ length: RING }, () => Buffer.alloc(4));
  private readonly di4Ring: Buffer[] = Array.from({ length: RING }, () => Buffer.alloc(36));
  private readonly di6Ring: Buffer[] = Array.from({ length: RING }, () => Buffer.alloc(48));
  private ringIdx = 0;
  private readonly tidBase = randomBytes(8);
  private tidCounter = 0;

  constructor(opts: TurnServerOptions) {
    this.cfg = opts.config;
    this.users = opts.users;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    this.events = opts.events ?? null;
    this.hooks = opts.flowHooks ?? {};
    this.onPacket = this.hooks.onPacket;
    this.extensions = opts.extensions ?? [];
    const extra = new Set<number>();
    for (const e of this.extensions) for (const a of e.attributes ?? []) extra.add(a);
    this.known = (t) => KNOWN_REQUIRED.has(t) || extra.has(t);
    this.nonces = new NonceManager(this.clock, this.cfg.turn.nonce_lifetime);
    const t = this.cfg.turn;
    const self = [t.relay_address, ...t.listen.map((l) => parseListen(l).host)];
    this.filter = new PeerFilter({ allow: t.peers.allow, deny: t.peers.deny, selfAddresses: self });
    this.pool = new PortPool(t.relay_ports[0]!, t.relay_ports[1]!);
    this.relayFamily = familyOf(t.relay_address);
    this.legacyChannels = opts.strictChannelRange === undefined ? t.channel_numbers === 'rfc5766' : !opts.strictChannelRange;
    this.maxChannelByte = this.legacyChannels ? 0x7f : 0x4f;
  }

  // -------------------------------------------------------------------------
  // Lifecycle

  async start(): Promise<void> {
    if (this.started) throw new Error('TurnServer already started');
    this.started = true;
    try {
      for (const url of this.cfg.turn.listen) {
        const { proto, host, port } = parseListen(url);
        if (proto === 'udp') await this.listenUdp(host, port);
        else await this.listenStream(proto, host, port);
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.sweepTimer = this.clock.setInterval(() => this.sweep(), SWEEP_MS);
    this.log.info({ listen: this.addresses() }, 'turn server listening');
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.sweepTimer?.cancel();
    this.sweepTimer = null;
    for (const a of [...this.allocations]) this.deleteAllocation(a, 'shutdown');
    for (const r of this.reservations.values()) this.closeSocket(r.socket);
    this.reservations.clear();
    for (const c of this.conns) c.socket.destroy();
    this.conns.clear();
    const waits: Promise<void>[] = [];
    for (const l of this.udpListeners) waits.push(new Promise((res) => l.socket.close(() => res())));
    for (const l of this.streamListeners) waits.push(new Promise((res) => l.server.close(() => res())));
    this.udpListeners = [];
    this.streamListeners = [];
    await Promise.all(waits);
    this.txCache.clear();
  }

  addresses(): { proto: 'udp' | 'tcp' | 'tls'; address: string; port: number }[] {
    return [
      ...this.udpListeners.map((l) => ({ proto: l.proto, address: l.address, port: l.port })),
      ...this.streamListeners.map((l) => ({ proto: l.proto, address: l.address, port: l.port })),
    ];
  }

  /** Closes a flow at once: its permission and channels go, both directions stop. */
  closeFlow(flow: Flow, reason = 'closed'): void {
    for (const a of this.allocations) {
      if (a.id !== flow.allocationId) continue;
      const perm = a.permissions.get(flow.peerAddress);
      if (!perm || perm.flow !== flow) return;
      for (const ch of [...perm.channelsByPort.values()]) {
        this.deactivateChannel(ch);
        a.channels.delete(ch.number);
      }
      this.closePermission(a, perm, reason);
      a.permissions.delete(perm.ip);
      return;
    }
  }

  /** The open flows (for the admin API). */
  flows(): Flow[] {
    const out: Flow[] = [];
    for (const a of this.allocations) for (const p of a.permissions.values()) if (p.flow) out.push(p.flow);
    return out;
  }

  private async listenUdp(host: string, port: number): Promise<void> {
    const socket = createSocket({ type: familyOf(host) === 6 ? 'udp6' : 'udp4' });
    await new Promise<void>((res, rej) => {
      socket.once('error', rej);
      socket.bind({ port, address: host }, () => {
        socket.removeListener('error', rej);
        res();
      });
    });
    enlargeBuffers(socket);
    const a = socket.address();
    const l: UdpListener = {
      proto: 'udp',
      index: this.udpListeners.length,
      socket,
      address: a.address,
      port: a.port,
      clients: new Map(),
    };
    socket.on('error', (err) => this.log.warn({ err: err.message }, 'udp listener error'));
    socket.on('message', (msg, rinfo) => this.onUdp(l, msg, rinfo));
    this.udpListeners.push(l);
  }

  private async listenStream(proto: 'tcp' | 'tls', host: string, port: number): Promise<void> {
    let server: NetServer;
    if (proto === 'tls') {
      const { cert, key } = this.cfg.turn.tls;
      if (!cert || !key) throw new Error('tls:// listener needs turn.tls.cert and turn.tls.key');
      const s = createTlsServer({ cert: readFileSync(cert), key: readFileSync(key) });
      s.on('secureConnection', (sock) => this.onStream(l, sock));
      s.on('tlsClientError', (err) => this.log.debug({ err: err.message }, 'tls handshake failed'));
      server = s;
    } else {
      server = createTcpServer((sock) => this.onStream(l, sock));
    }
    server.on('error', (err) => this.log.warn({ err: err.message }, `${proto} listener error`));
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen({ port, host }, () => {
        server.removeListener('error', rej);
        res();
      });
    });
    const a = server.address() as { address: string; port: number };
    const l: StreamListener = { proto, index: this.streamListeners.length, server, address: a.address, port: a.port };
    this.streamListeners.push(l);
  }

  // -------------------------------------------------------------------------
  // Receive paths

  private onUdp(l: UdpListener, msg: Buffer, rinfo: RemoteInfo): void {
    if (msg.length < 4) return;
    const b0 = msg[0]!;
    if (b0 >= 0x40 && b0 <= this.maxChannelByte) {
      // RFC 8656 §12.5 / RFC 7983: ChannelData — the hot path, no allocation here.
      const alloc = l.clients.get(rinfo.address)?.get(rinfo.port);
      if (alloc !== undefined) this.channelDataFromClient(alloc, msg, 0, msg.length);
      return;
    }
    if (b0 > 3) return; // RFC 7983 §7: neither STUN nor ChannelData; drop
    const ep: Endpoint = {
      proto: 'udp',
      remoteAddress: rinfo.address,
      remotePort: rinfo.port,
      localAddress: l.address,
      localPort: l.port,
      udp: l,
      conn: null,
      key: `u${l.index}|${rinfo.address}|${rinfo.port}`,
    };
    this.onStun(ep, msg);
  }

  private onStream(l: StreamListener, socket: NetSocket): void {
    if (this.stopped) {
      socket.destroy();
      return;
    }
    const remoteAddress = socket.remoteAddress ?? '';
    const remotePort = socket.remotePort ?? 0;
    const ep: Endpoint = {
      proto: l.proto,
      remoteAddress: remoteAddress.startsWith('::ffff:') ? remoteAddress.slice(7) : remoteAddress,
      remotePort,
      localAddress: l.address,
      localPort: l.port,
      udp: null,
      conn: null,
      key: '',
    };
    const conn: StreamConn = { socket, framer: new StreamFramer(this.legacyChannels), ep, allocation: null, closed: false };
    ep.conn = conn;
    ep.key = `${l.proto}${l.index}|${ep.remoteAddress}|${remotePort}`;
    this.conns.add(conn);
    socket.setNoDelay(true);
    const onFrame = (frame: Buffer): void => {
      if (frame[0]! < 0x40) this.onStun(ep, frame);
      else if (conn.allocation !== null) this.channelDataFromClient(conn.allocation, frame, 0, frame.length);
    };
    socket.on('data', (chunk: Buffer) => {
      if (!conn.framer.push(chunk, onFrame)) {
        // RFC 8656 §5: a stream that is not STUN/ChannelData cannot be resynchronised.
        this.log.debug({ client: ep.key }, 'stream framing error, closing connection');
        socket.destroy();
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      conn.closed = true;
      this.conns.delete(conn);
      // RFC 8656 §3.1 / RFC 6062 §4: the allocation lives and dies with its connection.
      if (conn.allocation) this.deleteAllocation(conn.allocation, 'connection_closed');
    });
  }

  private findAllocation(ep: Endpoint): Allocation | undefined {
    if (ep.udp) return ep.udp.clients.get(ep.remoteAddress)?.get(ep.remotePort);
    return ep.conn?.allocation ?? undefined;
  }

  private onStun(ep: Endpoint, buf: Buffer): void {
    const msg = decodeStun(buf);
    if (!msg) return; // RFC 8489 §6.3: malformed, silently discarded
    // RFC 8489 §7.3: a wrong FINGERPRINT means "not STUN": discard.
    if (!verifyFingerprint(msg)) return;
    try {
      if (msg.cls === Class.Request) this.onRequest(ep, msg);
      else if (msg.cls === Class.Indication && msg.method === Method.Send) this.onSend(ep, msg);
      // RFC 8489 §6.3.2/§6.3.3: other indications and responses are ignored.
    } catch (err) {
      // Programmer error guard: one bad message never takes the server down.
      this.log.error({ err: (err as Error).message, method: msg.method }, 'request handling failed');
      this.reply(ep, msg, this.errorStart(msg, 500), null, false);
    }
  }

  // -------------------------------------------------------------------------
  // Requests

  private onRequest(ep: Endpoint, msg: StunMessage): void {
    const method = msg.method;
    if (method === Method.Binding) return this.onBinding(ep, msg);
    if (method !== Method.Allocate && method !== Method.Refresh && method !== Method.CreatePermission && method !== Method.ChannelBind) {
      // RFC 8489 §6.3.1: unknown method in a request -> 400.
      this.reply(ep, msg, this.errorStart(msg, 400, 'Unknown method'), null, false);
      return;
    }
    // RFC 8489 §6.3.1 / RFC 8656 §7.2: a retransmission gets the same answer.
    const cacheKey = ep.key + '|' + msg.transactionId.toString('hex');
    const cached = this.txCache.get(cacheKey);
    if (cached) {
      this.sendToClient(ep, cached.buf);
      return;
    }
    if (method === Method.Allocate && this.pending.get(ep.key) === msg.transactionId.toString('hex')) return;

    const auth = this.authenticate(ep, msg);
    if (!auth) return;
    // RFC 8489 §6.3.1.1: after authentication, unknown comprehension-required attributes -> 420.
    const unknown = unknownComprehensionRequired(msg, this.known);
    if (unknown.length) {
      this.reply(ep, msg, this.errorStart(msg, 420).unknownAttributes(unknown), auth, true, cacheKey);
      return;
    }
    switch (method) {
      case Method.Allocate:
        // Async (relay socket bind); a failure must not become an unhandled rejection.
        this.onAllocate(ep, msg, auth, cacheKey).catch((err: Error) => {
          this.log.error({ err: err.message }, 'allocate failed');
          this.pending.delete(ep.key);
        });
        return;
      case Method.Refresh:
        return this.onRefresh(ep, msg, auth, cacheKey);
      case Method.CreatePermission:
        return this.onCreatePermission(ep, msg, auth, cacheKey);
      case Method.ChannelBind:
        return this.onChannelBind(ep, msg, auth, cacheKey);
    }
  }

  private onBinding(ep: Endpoint, msg: StunMessage): void {
    const unknown = unknownComprehensionRequired(msg, this.known);
    if (unknown.length) {
      this.reply(ep, msg, this.errorStart(msg, 420).unknownAttributes(unknown), null, false);
      return;
    }
    // RFC 8489 §7.3.1: the success response carries XOR-MAPPED-ADDRESS.
    const w = this.w.reset(messageType(Method.Binding, Class.Success), msg.transactionId);
    w.xorAddress(Attr.XorMappedAddress, ep.remoteAddress, ep.remotePort);
    this.reply(ep, msg, w, null, false);
  }

  private fail(reason: string): void {
    this.stats.authFailures[reason] = (this.stats.authFailures[reason] ?? 0) + 1;
  }

  /** 401/438 carry REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4). */
  private challenge(ep: Endpoint, msg: StunMessage, code: 401 | 438): void {
    const w = this.errorStart(msg, code);
    w.attr(Attr.Realm, this.cfg.realm);
    w.attr(Attr.Nonce, this.nonces.issue(ep.remoteAddress));
    w.attr(Attr.PasswordAlgorithms, OFFERED_ALGS_VALUE);
    this.reply(ep, msg, w, null, false);
  }

  /**
   * RFC 8489 §9.2.4 long-term credential checks, in the RFC's order. Returns null when
   * an error response has been sent.
   */
  private authenticate(ep: Endpoint, msg: StunMessage): AuthOk | null {
    const hasMI256 = hasAttr(msg, Attr.MessageIntegritySha256);
    const hasMI = hasAttr(msg, Attr.MessageIntegrity);
    if (!hasMI && !hasMI256) {
      this.challenge(ep, msg, 401);
      return null;
    }
    const username = getString(msg, Attr.Username);
    const realm = getString(msg, Attr.Realm);
    const nonce = getString(msg, Attr.Nonce);
    if (username === undefined || realm === undefined || nonce === undefined) {
      // USERHASH (username anonymity) is not offered, so USERNAME is required.
      this.fail('bad_request');
      this.reply(ep, msg, this.errorStart(msg, 400), null, false);
      return null;
    }
    // RFC 8489 §9.2.4 / §9.2.5: our nonces announce password algorithms, so the two
    // attributes come together, the list must be ours, and the choice from it.
    let alg: 'md5' | 'sha256' = 'md5';
    const pas = getAttr(msg, Attr.PasswordAlgorithms);
    const pa = getAttr(msg, Attr.PasswordAlgorithm);
    if (pas || pa) {
      const list = pas ? decodePasswordAlgorithms(pas) : null;
      const choice = pa ? decodePasswordAlgorithm(pa) : null;
      const listOk =
        list !== null && list.length === OFFERED_ALGS.length && list.every((e, i) => e.id === OFFERED_ALGS[i] && e.params.length === 0);
      if (!listOk || !choice || !(OFFERED_ALGS as number[]).includes(choice.id)) {
        this.fail('bad_request');
        this.reply(ep, msg, this.errorStart(msg, 400), null, false);
        return null;
      }
      alg = choice.id === PasswordAlgorithmId.SHA256 ? 'sha256' : 'md5';
    }
    if (this.nonces.check(nonce, ep.remoteAddress) !== 'ok') {
      this.fail('stale_nonce');
      this.challenge(ep, msg, 438);
      return null;
    }
    if (realm !== this.cfg.realm) {
      this.fail('bad_realm');
      this.challenge(ep, msg, 401);
      return null;
    }
    const r = resolveCredential(username, this.users, this.cfg.turn.rest_secret, this.clock.now());
    if (!r.ok) {
      this.fail(r.reason);
      this.challenge(ep, msg, 401);
      return null;
    }
    const key = longTermKey(username, realm, r.cred.password, alg);
    // RFC 8489 §9.2.4: with both present, only MESSAGE-INTEGRITY-SHA256 counts.
    const ok = hasMI256 ? verifyIntegritySha256(msg, key) : verifyIntegrity(msg, key);
    if (!ok) {
      this.fail('bad_integrity');
      this.challenge(ep, msg, 401);
      return null;
    }
    return { cred: r.cred, key, sha256: hasMI256, nonce };
  }

  /** The allocation of this 5-tuple with 437/441 checks (RFC 8656 §5, §7.3, §9.2, §11.2). */
  private ownAllocation(ep: Endpoint, msg: StunMessage, auth: AuthOk, cacheKey: string): Allocation | null {
    const a = this.findAllocation(ep);
    if (!a) {
      this.reply(ep, msg, this.errorStart(msg, 437), auth, true, cacheKey);
      return null;
    }
    if (a.username !== auth.cred.username) {
      this.fail('wrong_credentials');
      this.reply(ep, msg, this.errorStart(msg, 441), auth, true, cacheKey);
      return null;
    }
    return a;
  }

  /** RFC 8656 §7.2 (and §7.3 for Refresh): desired lifetime in seconds. */
  private lifetimeFor(msg: StunMessage): number | null {
    const v = getAttr(msg, Attr.Lifetime);
    const t = this.cfg.turn;
    if (!v) return t.default_lifetime;
    if (v.length !== 4) return null;
    const req = v.readUInt32BE(0);
    if (req === 0) return 0;
    return Math.max(t.default_lifetime, Math.min(req, t.max_lifetime));
  }

  private async onAllocate(ep: Endpoint, msg: StunMessage, auth: AuthOk, cacheKey: string): Promise<void> {
    const err = (code: number, reason?: string): void => this.reply(ep, msg, this.errorStart(msg, code, reason), auth, true, cacheKey);
    // RFC 8656 §7.2 step 2: one allocation per 5-tuple.
    if (this.findAllocation(ep) || this.pending.has(ep.key)) return err(437);
    // Step 3: REQUESTED-TRANSPORT is mandatory; only UDP is relayed.
    const rt = getAttr(msg, Attr.RequestedTransport);
    if (!rt || rt.length !== 4) return err(400, 'Missing or malformed REQUESTED-TRANSPORT');
    if (rt[0] !== PROTO_UDP) return err(442);
    // Step 4: DONT-FRAGMENT is accepted: Linux's default PMTU discovery
    // (IP_PMTUDISC_WANT) already sends relayed UDP with DF set.
    const dontFragment = hasAttr(msg, Attr.DontFragment);
    // Steps 5-7: RESERVATION-TOKEN, EVEN-PORT, REQUESTED-ADDRESS-FAMILY.
    const tokenV = getAttr(msg, Attr.ReservationToken);
    const evenV = getAttr(msg, Attr.EvenPort);
    const rafV = getAttr(msg, Attr.RequestedAddressFamily);
    const aafV = getAttr(msg, Attr.AdditionalAddressFamily);
    if (tokenV && (evenV || rafV)) return err(400, 'RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY');
    if (tokenV && tokenV.length !== 8) return err(400, 'Malformed RESERVATION-TOKEN');
    if (evenV && evenV.length !== 1) return err(400, 'Malformed EVEN-PORT');
    if (rafV && aafV) return err(400, 'REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY');
    let family: 4 | 6 = 4;
    if (rafV) {
      if (rafV.length !== 4) return err(400, 'Malformed REQUESTED-ADDRESS-FAMILY');
      if (rafV[0] === Family.IPv4) family = 4;
      else if (rafV[0] === Family.IPv6) family = 6;
      else return err(440);
    }
    // RFC 8656 §7.2: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6.
    if (aafV && (aafV.length !== 4 || aafV[0] !== Family.IPv6)) return err(400, 'Malformed ADDITIONAL-ADDRESS-FAMILY');
    if (tokenV) {
      const r = this.reservations.get(tokenV.toString('hex'));
      if (!r || r.expiresAt <= this.clock.now()) return err(508);
      family = r.family;
    }
    if (family !== this.relayFamily) {
      // Only the family of config.turn.relay_address can be relayed.
      if (!aafV) return err(440);
    }
    const wantsAdditionalV6 = !!aafV;
    // Step 8: quota.
    const count = this.perUser.get(auth.cred.user) ?? 0;
    if (count >= this.cfg.turn.max_allocations_per_user) return err(486);
    const lifetime = this.lifetimeFor(msg);
    if (lifetime === null) return err(400, 'Malformed LIFETIME');

    const tid = msg.transactionId.toString('hex');
    this.pending.set(ep.key, tid);
    let socket: Socket | null = null;
    let reservationToken: Buffer | null = null;
    let port = 0;
    try {
      if (tokenV) {
        const r = this.reservations.get(tokenV.toString('hex'))!;
        this.reservations.delete(r.token);
        socket = r.socket;
        port = r.port;
      } else {
        const even = !!evenV;
        const reserve = even && (evenV![0]! & 0x80) !== 0;
        const got = await this.bindRelay(even, reserve);
        if (got) {
          socket = got.socket;
          port = got.port;
          reservationToken = got.token;
        }
      }
    } finally {
      this.pending.delete(ep.key);
    }
    if (!socket) return err(508);
    if (this.stopped || (ep.conn && ep.conn.closed)) {
      this.closeSocket(socket);
      this.pool.release(port);
      return;
    }
    const now = this.clock.now();
    const alloc: Allocation = {
      id: randomBytes(8).toString('hex'),
      ep,
      user: auth.cred.user,
      username: auth.cred.username,
      groups: auth.cred.groups,
      family: this.relayFamily,
      relayAddress: this.cfg.turn.relay_address,
      relayPort: port,
      socket,
      expiresAt: now + lifetime * 1000,
      permissions: new Map(),
      channels: new Map(),
      dontFragment,
      deleted: false,
    };
    socket.removeAllListeners('message');
    socket.on('message', (m: Buffer, rinfo: RemoteInfo) => this.fromPeer(alloc, m, rinfo));
    socket.on('error', (e) => this.log.debug({ err: e.message, allocation: alloc.id }, 'relay socket error'));
    this.allocations.add(alloc);
    this.allocationsById.set(alloc.id, alloc);
    this.perUser.set(alloc.user, count + 1);
    this.stats.allocations++;
    if (ep.udp) {
      let m = ep.udp.clients.get(ep.remoteAddress);
      if (!m) ep.udp.clients.set(ep.remoteAddress, (m = new Map()));
      m.set(ep.remotePort, alloc);
    } else if (ep.conn) ep.conn.allocation = alloc;

    const w = this.w.reset(messageType(Method.Allocate, Class.Success), msg.transactionId);
    w.xorAddress(Attr.XorRelayedAddress, alloc.relayAddress, alloc.relayPort);
    if (wantsAdditionalV6) {
      // RFC 8656 §7.2: dual allocation asked (IPv4 + IPv6) but only the relay's family is
      // served; ADDRESS-ERROR-CODE names the family that failed, with 440.
      const reason = Buffer.from('Address Family not Supported');
      const v = Buffer.alloc(4 + reason.length);
      v[0] = this.relayFamily === 6 ? Family.IPv4 : Family.IPv6;
      v[2] = 4;
      v[3] = 40;
      reason.copy(v, 4);
      w.attr(Attr.AddressErrorCode, v);
    }
    w.u32(Attr.Lifetime, lifetime);
    if (reservationToken) w.attr(Attr.ReservationToken, reservationToken);
    w.xorAddress(Attr.XorMappedAddress, ep.remoteAddress, ep.remotePort);
    this.reply(ep, msg, w, auth, true, cacheKey);
    this.log.debug({ allocation: alloc.id, user: alloc.user, relayed: `${alloc.relayAddress}:${port}` }, 'allocation created');
    this.emitAllocation(alloc, 'created', lifetime);
  }

  /** Binds a relay socket on a free port (even, and reserving port+1, on request). */
  private async bindRelay(even: boolean, reserve: boolean): Promise<{ socket: Socket; port: number; token: Buffer | null } | null> {
    const type = this.relayFamily === 6 ? 'udp6' : 'udp4';
    const addr = this.cfg.turn.relay_address;
    for (const p of this.pool.candidates(64, even)) {
      if (this.pool.isUsed(p) || (reserve && this.pool.isUsed(p + 1))) continue;
      this.pool.take(p);
      if (reserve) this.pool.take(p + 1);
      let s: Socket;
      try {
        s = await bindUdp(type, addr, p);
      } catch {
        this.pool.release(p);
        if (reserve) this.pool.release(p + 1);
        continue;
      }
      if (!reserve) return { socket: s, port: p, token: null };
      try {
        const s2 = await bindUdp(type, addr, p + 1);
        const token = randomBytes(8);
        this.reservations.set(token.toString('hex'), {
          token: token.toString('hex'),
          port: p + 1,
          socket: s2,
          family: this.relayFamily,
          expiresAt: this.clock.now() + RESERVATION_MS,
        });
        return { socket: s, port: p, token };
      } catch {
        this.closeSocket(s);
        this.pool.release(p);
        this.pool.release(p + 1);
      }
    }
    return null;
  }

  private onRefresh(ep: Endpoint, msg: StunMessage, auth: AuthOk, cacheKey: string): void {
    const a = this.ownAllocation(ep, msg, auth, cacheKey);
    if (!a) return;
    const raf = getAttr(msg, Attr.RequestedAddressFamily);
    if (raf && (raf.length !== 4 || (raf[0] === Family.IPv6 ? 6 : raf[0] === Family.IPv4 ? 4 : 0) !== a.family)) {
      // RFC 8656 §7.3: REQUESTED-ADDRESS-FAMILY must match the allocation.
      this.reply(ep, msg, this.errorStart(msg, 443), auth, true, cacheKey);
      return;
    }
    const lifetime = this.lifetimeFor(msg);
    if (lifetime === null) {
      this.reply(ep, msg, this.errorStart(msg, 400, 'Malformed LIFETIME'), auth, true, cacheKey);
      return;
    }
    if (lifetime === 0) this.deleteAllocation(a, 'deleted');
    else {
      a.expiresAt = this.clock.now() + lifetime * 1000;
      this.emitAllocation(a, 'refreshed', lifetime);
    }
    const w = this.w.reset(messageType(Method.Refresh, Class.Success), msg.transactionId);
    w.u32(Attr.Lifetime, lifetime);
    this.reply(ep, msg, w, auth, true, cacheKey);
  }

  /** Common peer checks: family (443) and filtering (403). Returns an error code or 0. */
  private checkPeer(a: Allocation, peer: TransportAddress): number {
    if (peer.family !== a.family) return 443; // RFC 8656 §9.2 / §11.2
    if (!this.filter.permits(peer.address)) return 403; // RFC 8656 §9.2: policy
    if (this.hooks.permitPeer && !a.permissions.get(peer.address)?.flow) {
      if (!this.hooks.permitPeer({ allocationId: a.id, user: a.user, groups: a.groups }, peer.address)) return 403;
    }
    return 0;
  }

  private runExtensions(
    a: Allocation,
    msg: StunMessage,
    auth: AuthOk,
    peers: TransportAddress[],
  ): TurnRequestVerdict[] | { code: number; reason?: string } {
    const out: TurnRequestVerdict[] = [];
    for (const e of this.extensions) {
      if (!e.onRequest) continue;
      const v = e.onRequest({
        method: msg.method,
        msg,
        key: auth.key,
        nonce: auth.nonce,
        user: a.user,
        username: a.username,
        groups: a.groups,
        allocationId: a.id,
        peers,
        transactionId: msg.transactionId,
      });
      if (!v) continue;
      if (v.error) return v.error;
      out.push(v);
    }
    return out;
  }

  private onCreatePermission(ep: Endpoint, msg: StunMessage, auth: AuthOk, cacheKey: string): void {
    const a = this.ownAllocation(ep, msg, auth, cacheKey);
    if (!a) return;
    const peers = getXorAddresses(msg, Attr.XorPeerAddress);
    if (!peers || peers.length === 0) {
      this.reply(ep, msg, this.errorStart(msg, 400, 'Missing or malformed XOR-PEER-ADDRESS'), auth, true, cacheKey);
      return;
    }
    // RFC 8656 §9.2: all or nothing.
    for (const p of peers) {
      const code = this.checkPeer(a, p);
      if (code) {
        this.reply(ep, msg, this.errorStart(msg, code), auth, true, cacheKey);
        return;
      }
    }
    const verdicts = this.runExtensions(a, msg, auth, peers);
    if (!Array.isArray(verdicts)) {
      this.reply(ep, msg, this.errorStart(msg, verdicts.code, verdicts.reason), auth, true, cacheKey);
      return;
    }
    const flows: Flow[] = [];
    for (const p of peers) flows.push(this.installPermission(a, p.address, p.port, null));
    const w = this.w.reset(messageType(Method.CreatePermission, Class.Success), msg.transactionId);
    for (const v of verdicts) for (const x of v.attrs ?? []) w.attr(x.type, x.value);
    this.reply(ep, msg, w, auth, true, cacheKey);
    for (const v of verdicts) v.commit?.(flows);
  }

  private onChannelBind(ep: Endpoint, msg: StunMessage, auth: AuthOk, cacheKey: string): void {
    const a = this.ownAllocation(ep, msg, auth, cacheKey);
    if (!a) return;
    const bad = (reason: string): void => this.reply(ep, msg, this.errorStart(msg, 400, reason), auth, true, cacheKey);
    const cn = getAttr(msg, Attr.ChannelNumber);
    // RFC 8656 §11.2: CHANNEL-NUMBER in 0x4000-0x4FFF and XOR-PEER-ADDRESS are required.
    if (!cn || cn.length !== 4) return bad('Missing or malformed CHANNEL-NUMBER');
    const num = cn.readUInt16BE(0);
    if (!isValidChannelNumber(num, this.legacyChannels)) return bad('Channel number out of range');
    const peer = getXorAddress(msg, Attr.XorPeerAddress);
    if (!peer) return bad('Missing or malformed XOR-PEER-ADDRESS');
    const existing = a.channels.get(num);
    // RFC 8656 §11.2: the number must not be bound (or quarantined) to another peer ...
    if (existing && (existing.peerIp !== peer.address || existing.peerPort !== peer.port)) return bad('Channel bound to another peer');
    // ... and the peer must not be bound to another number.
    const other = a.permissions.get(peer.address)?.channelsByPort.get(peer.port);
    if (other && other.number !== num) return bad('Peer bound to another channel');
    const code = this.checkPeer(a, peer);
    if (code) {
      this.reply(ep, msg, this.errorStart(msg, code), auth, true, cacheKey);
      return;
    }
    const verdicts = this.runExtensions(a, msg, auth, [peer]);
    if (!Array.isArray(verdicts)) {
      this.reply(ep, msg, this.errorStart(msg, verdicts.code, verdicts.reason), auth, true, cacheKey);
      return;
    }
    const flow = this.installPermission(a, peer.address, peer.port, num);
    const perm = a.permissions.get(peer.address)!;
    const now = this.clock.now();
    let ch = existing;
    if (!ch) {
      ch = { number: num, peerIp: peer.address, peerPort: peer.port, perm, expiresAt: 0, active: false, reuseAfter: 0 };
      a.channels.set(num, ch);
    }
    ch.perm = perm;
    ch.expiresAt = now + CHANNEL_LIFETIME_MS;
    if (!ch.active) {
      ch.active = true;
      perm.channelsByPort.set(peer.port, ch);
      this.stats.channels++;
    }
    const w = this.w.reset(messageType(Method.ChannelBind, Class.Success), msg.transactionId);
    for (const v of verdicts) for (const x of v.attrs ?? []) w.attr(x.type, x.value);
    this.reply(ep, msg, w, auth, true, cacheKey);
    for (const v of verdicts) v.commit?.([flow]);
  }

  /** Installs or refreshes the permission for a peer IP (RFC 8656 §9.2); opens its flow. */
  private installPermission(a: Allocation, ip: string, port: number, channel: number | null): Flow {
    const now = this.clock.now();
    let perm = a.permissions.get(ip);
    if (!perm) {
      perm = { ip, ipBytes: parseIP(ip)!, expiresAt: 0, flow: null, channelsByPort: new Map() };
      a.permissions.set(ip, perm);
    }
    perm.expiresAt = now + PERMISSION_LIFETIME_MS;
    if (!perm.flow) {
      const f = new FlowImpl(
        ++this.flowSeq,
        a.id,
        a.user,
        a.groups,
        { proto: a.ep.proto, address: a.ep.remoteAddress, port: a.ep.remotePort },
        { address: a.relayAddress, port: a.relayPort },
        ip,
        now,
      );
      perm.flow = f;
      this.stats.permissions++;
      this.emitPermission(a, f, 'created', port, channel);
      try {
        this.hooks.onFlowCreated?.(f);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'onFlowCreated hook failed');
      }
    }
    return perm.flow;
  }

  private closePermission(a: Allocation, perm: Permission, reason: string): void {
    const f = perm.flow;
    if (!f) return;
    perm.flow = null;
    f.open = false;
    this.stats.permissions--;
    this.emitPermission(a, f, reason, undefined, null);
    try {
      this.hooks.onFlowClosed?.(f, reason);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'onFlowClosed hook failed');
    }
  }

  private deactivateChannel(ch: Channel): void {
    if (!ch.active) return;
    ch.active = false;
    ch.perm.channelsByPort.delete(ch.peerPort);
    this.stats.channels--;
  }

  private deleteAllocation(a: Allocation, reason: string): void {
    if (a.deleted) return;
    a.deleted = true;
    for (const ch of a.channels.values()) this.deactivateChannel(ch);
    a.channels.clear();
    for (const p of a.permissions.values()) this.closePermission(a, p, reason === 'expired' ? 'allocation_expired' : 'allocation_deleted');
    a.permissions.clear();
    this.closeSocket(a.socket);
    this.pool.release(a.relayPort);
    this.allocations.delete(a);
    this.allocationsById.delete(a.id);
    this.stats.allocations--;
    const n = (this.perUser.get(a.user) ?? 1) - 1;
    if (n > 0) this.perUser.set(a.user, n);
    else this.perUser.delete(a.user);
    const ep = a.ep;
    if (ep.udp) {
      const m = ep.udp.clients.get(ep.remoteAddress);
      if (m && m.get(ep.remotePort) === a) {
        m.delete(ep.remotePort);
        if (m.size === 0) ep.udp.clients.delete(ep.remoteAddress);
      }
    } else if (ep.conn && ep.conn.allocation === a) ep.conn.allocation = null;
    this.log.debug({ allocation: a.id, user: a.user, reason }, 'allocation removed');
    this.emitAllocation(a, reason, 0);
  }

  private closeSocket(s: Socket): void {
    try {
      s.close();
    } catch {
      /* already closed */
    }
  }

  // -------------------------------------------------------------------------
  // Relaying (hot paths)

  /** ChannelData from the client (RFC 8656 §12.5): channel -> peer, no allocation. */
  private channelDataFromClient(a: Allocation, buf: Buffer, off: number, avail: number): void {
    if (avail < 4) return;
    const ch = a.channels.get(buf.readUInt16BE(off));
    if (ch === undefined || !ch.active) return; // RFC 8656 §12.5: unbound channel, discard
    const len = buf.readUInt16BE(off + 2);
    if (4 + len > avail) return; // shorter than its Length: discard
    const flow = ch.perm.flow;
    if (flow === null) return; // RFC 8656 §12.5: no permission, discard
    if (this.onPacket !== undefined && !this.onPacket(flow, 'c2p', buf.subarray(off + 4, off + 4 + len), ch.peerPort)) return;
    this.stats.packets.clientToPeer++;
    this.stats.bytes.clientToPeer += len;
    a.socket.send(buf, off + 4, len, ch.peerPort, ch.peerIp);
  }

  /** Send indication (RFC 8656 §10.2): never answered; bad ones are dropped. */
  private onSend(ep: Endpoint, msg: StunMessage): void {
    const a = this.findAllocation(ep);
    if (!a) return;
    if (unknownComprehensionRequired(msg, this.known).length) return; // RFC 8489 §6.3.2
    const peer = getXorAddress(msg, Attr.XorPeerAddress);
    const dataAttr = findAttr(msg, Attr.Data);
    if (!peer || !dataAttr || peer.family !== a.family) return;
    const perm = a.permissions.get(peer.address);
    if (perm === undefined || perm.flow === null) return;
    const data = msg.raw.subarray(dataAttr.offset, dataAttr.offset + dataAttr.length);
    if (this.onPacket !== undefined && !this.onPacket(perm.flow, 'c2p', data, peer.port)) return;
    this.stats.packets.clientToPeer++;
    this.stats.bytes.clientToPeer += data.length;
    a.socket.send(data, peer.port, peer.address);
  }

  /** A datagram from a peer on a relay socket (RFC 8656 §10.3, §12.5). */
  private fromPeer(a: Allocation, msg: Buffer, rinfo: RemoteInfo): void {
    const perm = a.permissions.get(rinfo.address);
    if (perm === undefined || perm.flow === null) return; // no permission: discard silently
    if (this.onPacket !== undefined && !this.onPacket(perm.flow, 'p2c', msg, rinfo.port)) return;
    this.deliverToClient(a, perm, msg, rinfo.port);
  }

  private deliverToClient(a: Allocation, perm: Permission, msg: Buffer, peerPort: number): void {
    const ch = perm.channelsByPort.get(peerPort);
    const ep = a.ep;
    if (ch !== undefined) {
      // RFC 8656 §12.5: a bound channel -> ChannelData (padded over TCP/TLS).
      if (ep.udp !== null) {
        const hdr = this.cdRing[(this.ringIdx = (this.ringIdx + 1) & (RING - 1))]!;
        hdr.writeUInt16BE(ch.number, 0);
        hdr.writeUInt16BE(msg.length, 2);
        ep.udp.socket.send([hdr, msg], ep.remotePort, ep.remoteAddress);
      } else if (!this.streamWrite(ep, ch.number, null, 0, msg)) return;
    } else {
      // RFC 8656 §10.3: otherwise a Data indication with XOR-PEER-ADDRESS and DATA.
      if (msg.length > 0xffff - 48) return;
      const v6 = perm.ipBytes.length === 16;
      if (ep.udp !== null) {
        const ring = v6 ? this.di6Ring : this.di4Ring;
        const hdr = ring[(this.ringIdx = (this.ringIdx + 1) & (RING - 1))]!;
        this.writeDataIndicationHeader(hdr, perm.ipBytes, peerPort, msg.length);
        const pad = channelDataPadding(msg.length);
        if (pad) ep.udp.socket.send([hdr, msg, PADS[pad]!], ep.remotePort, ep.remoteAddress);
        else ep.udp.socket.send([hdr, msg], ep.remotePort, ep.remoteAddress);
      } else if (!this.streamWrite(ep, 0, perm.ipBytes, peerPort, msg)) return;
    }
    this.stats.packets.peerToClient++;
    this.stats.bytes.peerToClient += msg.length;
  }

  /**
   * Sends a payload on an open flow without calling flowHooks.onPacket again: the
   * inspection layer uses it to release packets it held while waiting for keys
   * (key-escrow.md §5.1). c2p goes out of the relay socket to peerPort; p2c goes to the
   * client as ChannelData or a Data indication, as the live path would.
   */
  inject(flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): void {
    if (!flow.open) return;
    const a = this.allocationsById.get(flow.allocationId);
    if (a === undefined || a.deleted) return;
    const perm = a.permissions.get(flow.peerAddress);
    if (perm === undefined || perm.flow !== flow) return;
    if (dir === 'c2p') {
      this.stats.packets.clientToPeer++;
      this.stats.bytes.clientToPeer += data.length;
      a.socket.send(data, peerPort, flow.peerAddress);
    } else {
      this.deliverToClient(a, perm, data, peerPort);
    }
  }

  /**
   * Stream write of a ChannelData (channel > 0) or Data indication (channel 0) with its
   * payload and padding; false when dropped (closed, or backpressure beyond
   * MAX_STREAM_BUFFERED: relayed UDP may be lost, a stalled client must not grow memory).
   */
  private streamWrite(ep: Endpoint, channel: number, ip: Buffer | null, port: number, payload: Buffer): boolean {
    const c = ep.conn;
    if (c === null || c.closed || c.socket.writableLength > MAX_STREAM_BUFFERED) return false;
    // TCP keeps written buffers queued: a fresh (pool-backed) header, not the UDP ring.
    let h: Buffer;
    if (channel !== 0) {
      h = Buffer.allocUnsafe(4);
      h.writeUInt16BE(channel, 0);
      h.writeUInt16BE(payload.length, 2);
    } else {
      h = Buffer.allocUnsafe(ip!.length === 16 ? 48 : 36);
      this.writeDataIndicationHeader(h, ip!, port, payload.length);
    }
    // RFC 8656 §12.5: ChannelData over TCP/TLS is padded to 4 bytes; the DATA attribute
    // of an indication is padded anyway (RFC 8489 §14).
    const pad = channelDataPadding(payload.length);
    c.socket.cork();
    c.socket.write(h);
    c.socket.write(payload);
    if (pad) c.socket.write(PADS[pad]!);
    c.socket.uncork();
    return true;
  }

  private writeDataIndicationHeader(h: Buffer, ip: Buffer, port: number, len: number): void {
    const v6 = ip.length === 16;
    const xorLen = v6 ? 20 : 8;
    const pad = channelDataPadding(len);
    h.writeUInt16BE(messageType(Method.Data, Class.Indication), 0);
    h.writeUInt16BE(4 + xorLen + 4 + len + pad, 2);
    h.writeUInt32BE(0x2112a442, 4);
    // Transaction ID: random base + counter (RFC 8489 §6: unique per indication).
    this.tidBase.copy(h, 8);
    h.writeUInt32BE((this.tidCounter = (this.tidCounter + 1) >>> 0), 16);
    h.writeUInt16BE(Attr.XorPeerAddress, 20);
    h.writeUInt16BE(xorLen, 22);
    // RFC 8489 §14.2: X-Port = port ^ top 16 bits of the cookie; X-Address ^ cookie (|| tid for IPv6).
    h[24] = 0;
    h[25] = v6 ? Family.IPv6 : Family.IPv4;
    h.writeUInt16BE(port ^ 0x2112, 26);
    h.writeUInt32BE((ip.readUInt32BE(0) ^ 0x2112a442) >>> 0, 28);
    if (v6) for (let i = 0; i < 12; i++) h[32 + i] = ip[4 + i]! ^ h[8 + i]!;
    const d = 24 + xorLen;
    h.writeUInt16BE(Attr.Data, d);
    h.writeUInt16BE(len, d + 2);
  }

  // -------------------------------------------------------------------------
  // Responses

  private errorStart(msg: StunMessage, code: number, reason?: string): StunWriter {
    return this.w.reset(messageType(msg.method, Class.Error), msg.transactionId).errorCode(code, reason);
  }

  /**
   * Finishes and sends the response in this.w: SOFTWARE (RFC 8489 §14.14), then
   * MESSAGE-INTEGRITY(-SHA256) with the request's key and algorithm when the request
   * authenticated (RFC 8489 §9.2.4), then FINGERPRINT when the request had one (§7.3).
   */
  private reply(ep: Endpoint, req: StunMessage, w: StunWriter, auth: AuthOk | null, cache: boolean, cacheKey?: string): void {
    if (this.cfg.turn.software) w.attr(Attr.Software, this.cfg.turn.software);
    if (auth) {
      if (auth.sha256) w.integritySha256(auth.key);
      else w.integrity(auth.key);
    }
    if (hasAttr(req, Attr.Fingerprint)) w.fingerprint();
    const out = w.copy();
    this.sendToClient(ep, out);
    if (cache && cacheKey) {
      if (this.txCache.size >= TX_CACHE_MAX) {
        const first = this.txCache.keys().next();
        if (!first.done) this.txCache.delete(first.value);
      }
      this.txCache.set(cacheKey, { buf: out, expires: this.clock.now() + TX_CACHE_MS });
    }
  }

  private sendToClient(ep: Endpoint, buf: Buffer): void {
    if (ep.udp) ep.udp.socket.send(buf, ep.remotePort, ep.remoteAddress);
    else if (ep.conn && !ep.conn.closed) ep.conn.socket.write(buf);
  }

  // -------------------------------------------------------------------------
  // Expiry (driven by the injected clock)

  private sweep(): void {
    const now = this.clock.now();
    for (const a of [...this.allocations]) {
      if (a.expiresAt <= now) {
        this.deleteAllocation(a, 'expired');
        continue;
      }
      for (const ch of a.channels.values()) {
        if (ch.active && ch.expiresAt <= now) {
          this.deactivateChannel(ch);
          ch.reuseAfter = ch.expiresAt + CHANNEL_QUARANTINE_MS;
        } else if (!ch.active && ch.reuseAfter <= now) a.channels.delete(ch.number);
      }
      for (const p of a.permissions.values()) {
        if (p.flow && p.expiresAt <= now) this.closePermission(a, p, 'expired');
        if (!p.flow && p.channelsByPort.size === 0) a.permissions.delete(p.ip);
      }
    }
    for (const r of this.reservations.values()) {
      if (r.expiresAt <= now) {
        this.reservations.delete(r.token);
        this.closeSocket(r.socket);
        this.pool.release(r.port);
      }
    }
    for (const [k, v] of this.txCache) {
      if (v.expires > now) break; // insertion order == expiry order
      this.txCache.delete(k);
    }
  }

  // -------------------------------------------------------------------------
  // Events (contract.md "Events"; never secrets)

  private emit(e: EveEvent): void {
    if (!this.events) return;
    try {
      this.events.emit(e);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'event sink failed');
    }
  }

  private emitAllocation(a: Allocation, action: string, lifetime: number): void {
    this.emit({
      timestamp: eveTimestamp(this.clock.now()),
      event_type: 'allocation',
      src_ip: a.ep.remoteAddress,
      src_port: a.ep.remotePort,
      dest_ip: a.ep.localAddress,
      dest_port: a.ep.localPort,
      proto: a.ep.proto === 'udp' ? 'UDP' : 'TCP',
      allocation: {
        action,
        transport: a.ep.proto,
        relayed_ip: a.relayAddress,
        relayed_port: a.relayPort,
        lifetime,
      },
      gatehouse: { user: a.user, allocation: a.id },
    });
  }

  private emitPermission(a: Allocation, f: FlowImpl, action: string, peerPort: number | undefined, channel: number | null): void {
    const e: EveEvent = {
      timestamp: eveTimestamp(this.clock.now()),
      event_type: 'permission',
      flow_id: f.id,
      src_ip: a.ep.remoteAddress,
      src_port: a.ep.remotePort,
      dest_ip: f.peerAddress,
      proto: 'UDP',
      permission: {
        action,
        peer_ip: f.peerAddress,
        relayed_ip: a.relayAddress,
        relayed_port: a.relayPort,
        ...(channel !== null ? { channel } : {}),
      },
      gatehouse: { user: a.user, allocation: a.id },
    };
    if (peerPort !== undefined) e.dest_port = peerPort;
    this.emit(e);
  }
}
