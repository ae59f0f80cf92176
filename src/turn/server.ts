/**
 * The TURN server (RFC 8489 STUN, RFC 8656 TURN over UDP, TCP and TLS): the wiring of
 * listeners.ts (sockets, framing, connections), allocations.ts (state and expiry),
 * handlers/* (one per STUN method), datapath.ts (relaying) and events.ts (EVE events).
 * See flow.ts for the inspection / key-escrow seam.
 */
import type { RemoteInfo } from 'node:dgram';
import type { Socket as NetSocket } from 'node:net';
import { parseListen, type GatehouseConfig } from '../config/config.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { silentLogger, type Logger } from '../util/log.js';
import { Supervisor } from '../util/supervise.js';
import type { EventSink } from '../events/eve.js';
import {
  Attr,
  Class,
  Method,
  decodeStun,
  unknownComprehensionRequired as unknownRequired,
  verifyFingerprint,
  type StunMessage,
} from '../wire/stun.js';
import type { IssuedContextLookup, UserDirectory } from './auth.js';
import { AllocationTable } from './allocations.js';
import { DataPath } from './datapath.js';
import { createFastPath, type FastPath } from './fastpath.js';
import { TurnEvents } from './events.js';
import type { Flow, FlowDirection, FlowHooks, TurnRequestExtension } from './flow.js';
import type { HandedReservation, ReservationExchange } from './reservations.js';
import { onAllocate } from './handlers/allocate.js';
import { onBinding } from './handlers/binding.js';
import { onChannelBind } from './handlers/channelbind.js';
import type { TurnContext } from './handlers/context.js';
import { onCreatePermission } from './handlers/createpermission.js';
import { KeyEscrowLimits, onKeyEscrow, type KeyEscrowHandler } from './handlers/keyescrow.js';
import { METHOD_KEY_ESCROW } from '../wire/keyescrow.js';
import { onRefresh } from './handlers/refresh.js';
import { onSendIndication } from './handlers/send.js';
import { RateLimiter } from './limits.js';
import { StreamConnections, listenStream, listenUdp } from './listeners.js';
import { PeerFilter } from './peerfilter.js';
import { PortPool } from './relay.js';
import { Authenticator } from './requestauth.js';
import { RevokedSubjects } from './revoked.js';
import { Responder, sanitizeSoftware } from './responder.js';
import { SWEEP_MS, familyOf, unmapV4, type Endpoint, type FlowImpl, type StreamListener, type UdpListener } from './state.js';
import { count, newStats, type TurnStats } from './stats.js';
import { sourcePrefix } from '../wire/source-prefix.js';
import { allocationLoad, capacityOf, type AlternateLookup } from './shedding.js';
import { loadDontFragment, type DontFragmentSend } from './dont-fragment.js';

export type { UserRecord, UserDirectory } from './auth.js';
export type { Flow, FlowDirection, FlowHooks, TurnRequestContext, TurnRequestExtension, TurnRequestVerdict } from './flow.js';
export type { TurnStats } from './stats.js';
export type { KeyEscrowHandler, KeyEscrowRequest, KeyEscrowVerdict } from './handlers/keyescrow.js';

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
  /** KeyEscrow requests (key-escrow.md §6). Without it the method is unknown (400, RFC 8489 §6.3.1). */
  keyEscrow?: KeyEscrowHandler;
  /**
   * Overrides config.turn.channel_numbers: true accepts only RFC 8656 channel numbers
   * 0x4000-0x4FFF; false also the RFC 5766 range 0x4000-0x7FFF.
   */
  strictChannelRange?: boolean;
  /**
   * The supervision wrapper every socket callback and timer runs in (design.md). Default:
   * one built from the logger.
   */
  supervisor?: Supervisor;
  /** Issue 14: where Allocates go when this server is at turn.max_allocations (src/turn/shedding.ts). */
  alternate?: AlternateLookup;
  /**
   * Sends a datagram with DF set (RFC 8656 §18.9). Default: the native addon's
   * (src/turn/dont-fragment.ts); null (or no addon): DONT-FRAGMENT is unknown to the server.
   */
  dontFragment?: DontFragmentSend | null;
  /**
   * Issue 13 (turn.workers): listener sockets inherited from the supervisor, by the
   * turn.listen URL they serve (src/turn/workers.ts); a URL not here is bound as usual.
   */
  listenFds?: ReadonlyMap<string, number>;
  /** Issue 13 (turn.workers): RESERVATION-TOKENs made by sibling workers (src/turn/reservations.ts). */
  reservations?: ReservationExchange;
}

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
  // Known only when the native addon can set DF (`known` in the constructor, RFC 8656 §7.2 step 4).
  Attr.DontFragment,
  Attr.MessageIntegritySha256,
  Attr.PasswordAlgorithm,
  Attr.Userhash,
  Attr.XorMappedAddress,
  Attr.ReservationToken,
  Attr.Priority,
  Attr.UseCandidate,
]);

/** A TURN REST USERNAME `EXPIRY:...` (src/turn/auth.ts resolveCredential). */
const REST_USERNAME_RE = /^\d{1,12}:/;

export class TurnServer {
  private readonly counts: TurnStats = newStats();
  /** The server's counters; with the fast path, what C forwarded since the last read is added first. */
  get stats(): TurnStats {
    this.fast?.syncCounters();
    return this.counts;
  }
  /** Exceptions contained by the supervisor, by call site. */
  readonly supervisor: Supervisor;

  private readonly cfg: GatehouseConfig;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly ctx: TurnContext;
  private readonly table: AllocationTable;
  private readonly data: DataPath;
  /** turn.fast_path (issue 13): null when off or the addon is not built. */
  private readonly fast: FastPath | null;
  private readonly res: Responder;
  private readonly streams: StreamConnections;
  private readonly allocateRate: RateLimiter;
  private readonly unauthorizedRate: RateLimiter;
  private readonly maxChannelByte: number;
  /** REST subjects revoked by the core (issue 11, src/turn/revoked.ts); bounded. */
  readonly revoked: RevokedSubjects;
  /** The conferencing core's records of the REST credentials it issued (src/core/turn-credentials.ts). */
  private issuedLookup: IssuedContextLookup | null = null;

  private udpListeners: UdpListener[] = [];
  private streamListeners: StreamListener[] = [];
  private readonly listenFds: ReadonlyMap<string, number>;
  private sweepTimer: TimerHandle | null = null;
  private started = false;
  private stopped = false;

  constructor(opts: TurnServerOptions) {
    const cfg = (this.cfg = opts.config);
    const t = cfg.turn;
    this.listenFds = opts.listenFds ?? new Map();
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    const clock = this.clock;
    this.supervisor = opts.supervisor ?? new Supervisor(this.log, 10, () => clock.now());
    const hooks = opts.flowHooks ?? {};
    const extensions = opts.extensions ?? [];
    const extra = new Set<number>();
    for (const e of extensions) for (const a of e.attributes ?? []) extra.add(a);
    // RFC 8656 §7.2 step 4, §11.2: a server that cannot set DF treats DONT-FRAGMENT as an
    // unknown comprehension-required attribute (420 for an Allocate, a Send discarded).
    const dontFragment = opts.dontFragment === undefined ? loadDontFragment() : opts.dontFragment;
    const known = (x: number): boolean => (x === Attr.DontFragment ? dontFragment !== null : KNOWN_REQUIRED.has(x) || extra.has(x));
    const self = [t.relay_address, ...t.listen.map((l) => parseListen(l).host)];
    const filter = new PeerFilter({ allow: t.peers.allow, deny: t.peers.deny, selfAddresses: self });
    const pool = new PortPool(t.relay_ports[0]!, t.relay_ports[1]!);
    const legacyChannels = opts.strictChannelRange === undefined ? t.channel_numbers === 'rfc5766' : !opts.strictChannelRange;
    this.maxChannelByte = legacyChannels ? 0x7f : 0x4f;
    // RFC 8489 §14.14: SOFTWARE is fewer than 128 characters; config refuses more, and a
    // longer value handed in directly is cut rather than made to throw in the encoder.
    const software = sanitizeSoftware(t.software);
    if (software !== t.software)
      this.log.warn({ chars: [...t.software].length }, 'turn.software longer than 127 characters, truncated (RFC 8489 §14.14)');
    this.allocateRate = new RateLimiter(t.allocate_rate_per_source, clock);
    this.unauthorizedRate = new RateLimiter(t.unauthorized_rate_per_source, clock);
    const events = new TurnEvents(opts.events ?? null, clock, this.log);
    const hookFailed = (where: string, err: unknown, flow: FlowImpl | null): void =>
      this.supervisor.caught(where, err, flow ? () => this.table.closeFlow(flow, 'hook_error') : undefined);
    this.table = new AllocationTable(this.stats, clock, this.log, events, hooks, pool, hookFailed);
    this.data = new DataPath(this.stats, this.table, clock, hooks, hookFailed, dontFragment);
    // Flows no hook must see relayed in C, peer -> client and (the UDP listeners read in C,
    // start()) client -> peer ChannelData (src/turn/fastpath.ts).
    this.fast = createFastPath(t.fast_path, {
      clock,
      log: this.log,
      sup: this.supervisor,
      stats: this.stats,
      eligible: hooks.onPacket === undefined,
      slow: (a, p, m, port) => this.data.fromPermission(a, p, m, port),
    });
    this.table.observer = this.fast;
    // Client -> peer datagrams JS relays (hooked flows, and what C left to JS) go out in C too.
    const fast = this.fast;
    if (fast !== null) this.data.peerSend = (a, p, b, o, l, port) => fast.sendToPeer(a, p, b, o, l, port);
    this.res = new Responder(software, clock, () => count(this.stats.refused, 'stream_backlog'));
    this.revoked = new RevokedSubjects(clock, cfg.core.turn_ttl);
    const auth = new Authenticator(
      cfg,
      opts.users,
      clock,
      this.stats,
      this.res,
      this.unauthorizedRate,
      this.revoked,
      () => this.issuedLookup,
    );
    this.ctx = {
      cfg,
      clock,
      log: this.log,
      stats: this.stats,
      sup: this.supervisor,
      table: this.table,
      pool,
      events,
      hooks,
      extensions,
      known,
      filter,
      res: this.res,
      auth,
      relayFamily: familyOf(t.relay_address),
      legacyChannels,
      pending: new Map(),
      stopped: () => this.stopped,
      hookFailed,
      legacyLogged: new Set(),
      keyEscrow: opts.keyEscrow ? { handler: opts.keyEscrow, limits: new KeyEscrowLimits(clock, t.nonce_lifetime) } : null,
      alternate: opts.alternate ?? null,
      reservations: opts.reservations ?? null,
    };
    this.streams = new StreamConnections(cfg, clock, this.log, this.supervisor, this.stats, legacyChannels, {
      stun: (ep, frame) => this.onStun(ep, frame),
      channelData: (conn, frame) => this.data.channelDataFromClient(conn.allocation!, frame, 0, frame.length),
      closed: (conn) => {
        if (conn.allocation) this.table.delete(conn.allocation, 'connection_closed');
      },
    });
  }

  // -------------------------------------------------------------------------
  // Lifecycle

  async start(): Promise<void> {
    if (this.started) throw new Error('TurnServer already started');
    this.started = true;
    const onStream = (l: StreamListener, s: NetSocket): void => this.streams.accept(l, s);
    try {
      for (const url of this.cfg.turn.listen) {
        const { proto, host, port } = parseListen(url);
        const fd = this.listenFds.get(url);
        if (proto === 'udp') {
          const l = await listenUdp(host, port, this.udpListeners.length, this.supervisor, this.log, (l, m, r) => this.onUdp(l, m, r), fd);
          this.udpListeners.push(l);
          // Read in C: client -> peer ChannelData of hook-free flows goes out there; the rest
          // (with a per-packet hook: every datagram) reaches onUdp, one call per batch.
          this.fast?.takeListener(l, this.maxChannelByte);
        } else {
          this.streamListeners.push(
            await listenStream(
              proto,
              host,
              port,
              this.streamListeners.length,
              this.cfg.turn.tls,
              this.log,
              onStream,
              (raw) => this.streams.admitRaw(raw),
              fd,
            ),
          );
        }
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.sweepTimer = this.clock.setInterval(
      this.supervisor.guard('turn.sweep', () => this.sweep()),
      SWEEP_MS,
    );
    this.log.info({ listen: this.addresses() }, 'turn server listening');
  }

  /**
   * Issue 13 (turn.workers): takes a reservation this server holds so a sibling worker can
   * serve the Allocate that carries its token (RFC 8656 §7.2 step 5). It leaves the table,
   * and its port leaves this pool: the kernel keeps the port bound to the socket wherever
   * it then lives, so a later bind of it here fails and bindRelay tries the next port.
   */
  giveReservation(tokenHex: string): HandedReservation | null {
    const r = this.table.takeReservation(tokenHex);
    if (!r) return null;
    this.ctx.pool.release(r.port);
    return { socket: r.socket, port: r.port, family: r.family };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.sweepTimer?.cancel();
    this.sweepTimer = null;
    this.table.clear();
    this.fast?.close();
    this.streams.closeAll();
    const waits: Promise<void>[] = [];
    for (const l of this.udpListeners) waits.push(new Promise((res) => l.socket.close(() => res())));
    for (const l of this.streamListeners) waits.push(new Promise((res) => l.server.close(() => res())));
    this.udpListeners = [];
    this.streamListeners = [];
    await Promise.all(waits);
    this.res.clear();
  }

  addresses(): { proto: 'udp' | 'tcp' | 'tls'; address: string; port: number }[] {
    return [
      ...this.udpListeners.map((l) => ({ proto: l.proto, address: l.address, port: l.port })),
      ...this.streamListeners.map((l) => ({ proto: l.proto, address: l.address, port: l.port })),
    ];
  }

  /**
   * Issue 14: this server's load for the cluster registry: allocations (live and being
   * made) against the capacity (turn.max_allocations, else the relay port range).
   */
  load(): { allocations: number; capacity: number } {
    return { allocations: allocationLoad(this.ctx), capacity: capacityOf(this.ctx) };
  }

  /** Where Allocates go when this server is full (src/turn/shedding.ts); null: 508. */
  setAlternateLookup(lookup: AlternateLookup | null): void {
    this.ctx.alternate = lookup;
  }

  /** The native fast path's counters, or null when it is not in use (turn.fast_path). */
  fastPath(): FastPath['counters'] | null {
    return this.fast ? { ...this.fast.counters } : null;
  }

  /** Closes a flow at once: its permission and channels go, both directions stop. */
  closeFlow(flow: Flow, reason = 'closed'): void {
    this.table.closeFlow(flow, reason);
  }

  /**
   * Where the conferencing core's records of issued REST credentials are looked up
   * (conference or room, directory groups, organisation: core.md §6-§8). Consulted on every
   * authenticated request; null: none (credentials carry only what their username says).
   */
  setIssuedContexts(lookup: IssuedContextLookup | null): void {
    this.issuedLookup = lookup;
  }

  /**
   * Revokes a TURN REST subject (`USER` or `guest/CONFERENCE/IDENTITY`, core.md §8): its
   * credentials issued up to now get 401 (src/turn/revoked.ts), and its allocations made
   * with REST credentials close at once (flows closed `revoked`, allocation event
   * `revoked`). Returns how many allocations were closed. Directory-credential
   * allocations of a same-named user are left alone: the core does not issue those.
   */
  revokeSubject(subject: string): number {
    this.revoked.revoke(subject);
    let n = 0;
    for (const a of [...this.table.all]) {
      if (a.deleted || a.user !== subject || !REST_USERNAME_RE.test(a.username)) continue;
      for (const p of a.permissions.values()) this.table.closePermission(a, p, 'revoked');
      this.table.delete(a, 'revoked');
      n++;
    }
    if (n) this.log.info({ subject, allocations: n }, 'turn subject revoked: allocations closed');
    return n;
  }

  /** The open flows (for the admin API). */
  flows(): Flow[] {
    const out: Flow[] = [];
    for (const a of this.table.all) for (const p of a.permissions.values()) if (p.flow) out.push(p.flow);
    return out;
  }

  /**
   * Sends a payload on an open flow without calling flowHooks.onPacket again: the
   * inspection layer uses it to release packets it held while waiting for keys
   * (key-escrow.md §5.1). c2p goes out of the relay socket to peerPort; p2c goes to the
   * client as ChannelData or a Data indication, as the live path would.
   */
  inject(flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): void {
    this.data.inject(flow, dir, data, peerPort);
  }

  // -------------------------------------------------------------------------
  // Receive paths

  private onUdp(l: UdpListener, msg: Buffer, rinfo: RemoteInfo): void {
    if (msg.length < 4) return;
    const b0 = msg[0]!;
    if (b0 >= 0x40 && b0 <= this.maxChannelByte) {
      // RFC 8656 §12.6 / RFC 7983: ChannelData — the hot path, no allocation here.
      const alloc = l.clients.get(rinfo.address)?.get(rinfo.port);
      if (alloc !== undefined) this.data.channelDataFromClient(alloc, msg, 0, msg.length);
      return;
    }
    // RFC 8656 §12 Table 3 / §12.6: reserved first bytes (and 0x50-0x7F without
    // channel_numbers: rfc5766) are neither STUN nor ChannelData: drop.
    if (b0 > 3) return;
    const ep: Endpoint = {
      proto: 'udp',
      // IPv4 clients on a dual-stack udp6 socket appear as ::ffff:a.b.c.d.
      remoteAddress: l.v6 ? unmapV4(rinfo.address) : rinfo.address,
      remotePort: rinfo.port,
      sendAddress: rinfo.address,
      localAddress: l.address,
      localPort: l.port,
      udp: l,
      conn: null,
      key: `u${l.index}|${rinfo.address}|${rinfo.port}`,
    };
    this.onStun(ep, msg);
  }

  private onStun(ep: Endpoint, buf: Buffer): void {
    const msg = decodeStun(buf);
    if (!msg) return; // RFC 8489 §6.3: malformed, silently discarded
    // RFC 8489 §7.3: a wrong FINGERPRINT means "not STUN": discard.
    if (!verifyFingerprint(msg)) return;
    if (msg.cls === Class.Request) this.onRequest(ep, msg);
    else if (msg.cls === Class.Indication && msg.method === Method.Send) onSendIndication(this.ctx, this.data, ep, msg);
    // RFC 8489 §6.3.2/§6.3.3: other indications and responses are ignored.
  }

  private onRequest(ep: Endpoint, msg: StunMessage): void {
    const method = msg.method;
    const ctx = this.ctx;
    if (method === Method.Binding) return onBinding(ctx, ep, msg);
    const escrow = method === METHOD_KEY_ESCROW ? ctx.keyEscrow : null;
    if (
      method !== Method.Allocate &&
      method !== Method.Refresh &&
      method !== Method.CreatePermission &&
      method !== Method.ChannelBind &&
      !escrow
    ) {
      // RFC 8489 §6.3.1: unknown method in a request -> 400.
      this.res.reply(ep, msg, this.res.errorStart(msg, 400, 'Unknown method'), null, false);
      return;
    }
    // RFC 8489 §6.3.1 / RFC 8656 §5: a retransmission gets the same answer.
    const cacheKey = ep.key + '|' + msg.transactionId.toString('hex');
    const cached = this.res.cached(cacheKey);
    if (cached) {
      this.res.send(ep, cached);
      return;
    }
    if (method === Method.Allocate) {
      if (ctx.pending.get(ep.key) === msg.transactionId.toString('hex')) return;
      // turn.allocate_rate_per_source: over the rate an Allocate is dropped without an
      // answer. RFC 8656 defines no error for a rate (486 is the per-user quota, §7.2 step
      // 10); silence gives a flood nothing to amplify (§21), and a real client retransmits
      // over UDP (RFC 8489 §6.2.1) or retries.
      if (!this.allocateRate.take(sourcePrefix(ep.remoteAddress))) {
        count(this.stats.refused, 'allocate_rate');
        return;
      }
    }
    const auth = ctx.auth.authenticate(ep, msg);
    if (!auth) return;
    const r = { ep, msg, auth, cacheKey };
    // RFC 8489 §6.3.1.1: after authentication, unknown comprehension-required attributes -> 420.
    const unknown = unknownRequired(msg, ctx.known);
    if (unknown.length) {
      if (unknown.includes(Attr.DontFragment)) count(this.stats.refused, 'dont_fragment');
      this.res.reply(ep, msg, this.res.errorStart(msg, 420).unknownAttributes(unknown), auth, true, cacheKey);
      return;
    }
    switch (method) {
      case Method.Allocate:
        return onAllocate(ctx, r, (a, m, rinfo) => this.data.fromPeer(a, m, rinfo));
      case Method.Refresh:
        return onRefresh(ctx, r);
      case Method.CreatePermission:
        return onCreatePermission(ctx, r);
      case Method.ChannelBind:
        return onChannelBind(ctx, r);
      case METHOD_KEY_ESCROW:
        // key-escrow.md §6: authenticated as any TURN request above (§6.2), no allocation.
        if (escrow) onKeyEscrow(ctx, r, escrow.handler, escrow.limits);
        return;
    }
  }

  // -------------------------------------------------------------------------
  // Expiry (driven by the injected clock)

  private sweep(): void {
    const now = this.clock.now();
    this.table.sweep(now);
    this.revoked.sweep();
    this.streams.sweep(now);
    this.res.sweep(now);
    this.allocateRate.sweep(now);
    this.unauthorizedRate.sweep(now);
    this.ctx.keyEscrow?.limits.sweep(now);
  }
}
