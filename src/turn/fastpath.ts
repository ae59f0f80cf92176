/**
 * The native UDP fast path of the relay (native/fastpath.c, issue 13; `turn.fast_path`).
 *
 * With it, a relay socket of an allocation whose client is on UDP is read in C with
 * recvmmsg into one preallocated ring; the peer -> client datagrams of eligible flows go
 * out in C (sendmmsg) as ChannelData (RFC 8656 §12.5) or Data indications (§11.3), and
 * the others come back here once per batch (src/turn/datapath.ts fromPermission, which
 * calls the flow hooks as the pure-JS path does).
 *
 * Client -> peer: the server's UDP listener sockets are read in C too (takeListener):
 * ChannelData (RFC 8656 §12.4) from a client whose
 * allocation is mirrored, on a bound channel whose binding, permission and allocation all
 * run, goes out of the relay socket in C, and so does a Send indication (RFC 8656 §11.2)
 * with XOR-PEER-ADDRESS and DATA whose peer IP has a running permission (the cases the
 * JS handler relays; anything else, e.g. MESSAGE-INTEGRITY or an attribute C does not
 * know, is left to JS); everything else read there (STUN requests, other Send
 * indications, unknown clients) comes back here once per batch and goes to the listener's
 * own handler (UdpListener.onMessage, what dgram's 'message' calls), with the same rinfo
 * fields the server reads. A server with a per-packet hook has no eligible flow, so C
 * forwards none of its datagrams and hands every one to JS, one call per batch (the hook
 * sees each, in order); what the hook lets through goes to the peer out of the relay
 * socket in C (sendToPeer), without dgram's per-datagram receive and send work.
 *
 * This module owns nothing of the TURN state: it mirrors into C what AllocationTable
 * tells it (TableObserver) — the allocation's and each permission's and channel's expiry
 * as a remaining time that C turns into an absolute CLOCK_MONOTONIC deadline checked on
 * every packet, so a late JS sweep never keeps a flow open.
 *
 * Eligible: a flow no per-packet hook must see. This session that is exactly "the
 * server has no flowHooks.onPacket": the gateway (which inspects, counts quotas and
 * guards every datagram) always has one, so none of its flows is forwarded in C; its
 * datagrams are read and sent in C, and judged in JS.
 */
import type { RemoteInfo, Socket } from 'node:dgram';
import { loadAddon } from '../util/native-addon.js';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import type { TableObserver } from './allocations.js';
import type { RelayCounters } from './datapath.js';
import type { Allocation, Channel, Permission, UdpListener } from './state.js';

export interface FastPathAddon {
  init(
    ring: Buffer,
    meta: Int32Array,
    onBatch: () => void,
    acc: Float64Array,
  ): { batch: number; slot: number; rec: number; lrec: number; counters: number; accN: number; accOwners: number };
  /** owner: the row of the counters array (init's acc) the listener's batches count in. */
  listener(fd: number, owner: number): number;
  /** Reads the listener in C from now on; maxFirstByte: 0x4f, or 0x7f with RFC 5766 channel numbers. */
  listenerRead(id: number, maxFirstByte: number): void;
  listenerClose(id: number): void;
  open(relayFd: number, listener: number, clientIp: string, clientPort: number, remainingMs: number, owner: number): number;
  close(id: number): void;
  /** One datagram to a peer out of the relay socket: 1 sent, 0 lost (counted), -1 not sent (use dgram). */
  sendTo(id: number, buf: Buffer, off: number, len: number, peerIp: Buffer, peerPort: number): number;
  expiry(id: number, remainingMs: number): void;
  perm(id: number, slot: number, ip: Buffer, eligible: boolean, remainingMs: number): void;
  unperm(id: number, slot: number): void;
  chan(id: number, slot: number, peerPort: number, number: number, remainingMs: number): void;
  readonly metaLength: number;
  readonly ringLength: number;
}

let cached: FastPathAddon | null | undefined;

/** The addon, or null (not built, not Linux, or failed to load). Loaded once. */
export function loadFastPath(): FastPathAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.platform !== 'linux') return cached;
  // Missing, unloadable or out of date: the pure-JS path.
  return (cached = loadAddon<FastPathAddon>(
    'gatehouse_fastpath.node',
    (m) =>
      typeof m.open === 'function' &&
      typeof m.listenerRead === 'function' &&
      typeof m.sendTo === 'function' &&
      typeof m.metaLength === 'number',
  ).addon);
}

/** What dgram keeps of a socket (internal: `_handle` is deprecated, DEP0112). */
interface UdpHandle {
  fd: number;
  recvStop(): number;
}

function handleOf(s: Socket): UdpHandle | null {
  for (const sym of Object.getOwnPropertySymbols(s)) {
    if (sym.description !== 'state symbol') continue;
    const h = (s as unknown as Record<symbol, { handle?: Partial<UdpHandle> } | undefined>)[sym]?.handle;
    if (h && typeof h.fd === 'number' && h.fd >= 0 && typeof h.recvStop === 'function') return h as UdpHandle;
  }
  return null;
}

/** The descriptor of a bound dgram socket (without the deprecated `_handle`), or null. */
export function dgramFd(s: Socket): number | null {
  return handleOf(s)?.fd ?? null;
}

/** A relay handle's mirror: the C id and the permissions by slot. */
interface Mirror {
  id: number;
  a: Allocation;
  perms: (Permission | undefined)[];
  slotOf: Map<Permission, number>;
  freeSlots: number[];
}

export type SlowPacket = (a: Allocation, perm: Permission, payload: Buffer, peerPort: number) => void;

/**
 * The addon keeps one ring, one meta array and one callback per process (globals in
 * native/fastpath.c), while there is one FastPath per TurnServer. All FastPaths share that
 * state through this hub: a batch is always read from one relay socket, and C names it
 * (meta[batch * rec + 5]), so the batch goes to the FastPath that opened that relay.
 * Without it a second server's init took the callback, and the first server's slow
 * datagrams (its hooked flows) and counters went to a server that did not know them.
 */
interface Hub {
  ring: Buffer;
  meta: Int32Array;
  /** The meta array's bytes: a listener record carries the client's address as text. */
  metaBytes: Buffer;
  rec: number;
  lrec: number;
  nIndex: number;
  /** Relay id (C) -> the FastPath that opened it. */
  owners: (FastPath | undefined)[];
  /** Listener id (C) -> the FastPath that had C read it. */
  listenerOwners: (FastPath | undefined)[];
  /**
   * Counters C adds after every batch, ACC_N per owner row (one row per FastPath): a batch
   * C forwarded whole makes no call into JS, so its counts are read here when wanted.
   */
  acc: Float64Array;
  /** Row -> the FastPath holding it (from its construction to its last relay's close). */
  rowOwners: (FastPath | undefined)[];
}

/** Columns of a counters row (native/fastpath.c, enum A_*). */
const A_P2C_PACKETS = 0;
const A_P2C_BYTES = 1;
const A_C2P_PACKETS = 2;
const A_C2P_BYTES = 3;
const A_SEND_DROPPED = 4;
const A_EXPIRED = 5;
const A_MALFORMED = 6;
const A_SEND_INDICATIONS = 7;
const A_BATCHES = 8;
const A_LISTENER_BATCHES = 9;
const ACC_N = 10;
const ACC_OWNERS = 64;

const hubs = new WeakMap<FastPathAddon, Hub>();

function hubOf(addon: FastPathAddon): Hub {
  const known = hubs.get(addon);
  if (known !== undefined) return known;
  const ring = Buffer.alloc(addon.ringLength);
  const meta = new Int32Array(addon.metaLength);
  const acc = new Float64Array(ACC_OWNERS * ACC_N);
  const owners: (FastPath | undefined)[] = [];
  const listenerOwners: (FastPath | undefined)[] = [];
  let nIndex = 0;
  // Called from C once per batch, read from one relay (kind 0) or one listener (kind 1);
  // each owner's handler runs inside its server's supervisor.
  const info = addon.init(
    ring,
    meta,
    () => (meta[nIndex + 6] === 1 ? listenerOwners[meta[nIndex + 5]!]?.listenerBatch() : owners[meta[nIndex + 5]!]?.batch()),
    acc,
  );
  nIndex = info.counters;
  if (typeof nIndex !== 'number' || addon.metaLength < nIndex + 9)
    throw new Error('native/fastpath is out of date (no Send indications in C): npm run build:native');
  if (info.accN !== ACC_N || info.accOwners !== ACC_OWNERS)
    throw new Error('native/fastpath is out of date (counters per batch call): npm run build:native');
  const metaBytes = Buffer.from(meta.buffer, meta.byteOffset, meta.byteLength);
  const hub: Hub = {
    ring,
    meta,
    metaBytes,
    rec: info.rec,
    lrec: info.lrec,
    nIndex,
    owners,
    listenerOwners,
    acc,
    rowOwners: [],
  };
  hubs.set(addon, hub);
  return hub;
}

export class FastPath implements TableObserver {
  private readonly hub: Hub;
  private readonly byId: (Mirror | undefined)[] = [];
  private readonly mirrors = new WeakMap<Allocation, Mirror>();
  private readonly listeners = new Map<UdpListener, number>();
  /** Listener id (C) -> the listener C reads for this server (takeListener). */
  private readonly readListeners: (UdpListener | undefined)[] = [];
  /**
   * Datagrams C dropped for an expiry JS had not swept yet, sends lost to a full buffer
   * (to clients and to peers), malformed ChannelData from clients dropped in C, relay
   * batches and listener batches, the client -> peer datagrams forwarded in C (also
   * in the server's stats.packets.clientToPeer, with the JS ones), and of those the
   * Send indications (RFC 8656 §11.2; the rest are ChannelData). Read from C's counters
   * row on every read (syncCounters).
   */
  get counters(): FastPathCounters {
    this.syncCounters();
    return this.c;
  }
  private readonly c: FastPathCounters = {
    expired: 0,
    sendDropped: 0,
    malformed: 0,
    batches: 0,
    listenerBatches: 0,
    clientToPeer: 0,
    sendIndications: 0,
  };
  /** This FastPath's row of the hub's counters, and the values already added to c / stats. */
  private readonly row: number;
  private readonly seen = new Float64Array(ACC_N);
  private readonly delta = new Float64Array(ACC_N);
  private liveRelays = 0;
  private closed = false;
  /** This server's handler of a batch read from one of its relays (hubOf). */
  readonly batch: () => void;
  /** This server's handler of a batch read from one of its UDP listeners (hubOf). */
  readonly listenerBatch: () => void;

  constructor(
    private readonly addon: FastPathAddon,
    private readonly clock: Clock,
    private readonly log: Logger,
    sup: Supervisor,
    private readonly stats: RelayCounters,
    /** True: the flows of this server are forwarded in C (no per-packet hook). */
    private readonly eligible: boolean,
    private readonly slow: SlowPacket,
  ) {
    this.hub = hubOf(addon);
    const rows = this.hub.rowOwners;
    let row = 0;
    while (row < ACC_OWNERS && rows[row] !== undefined) row++;
    if (row === ACC_OWNERS) throw new Error(`more than ${ACC_OWNERS} servers with a fast path in one process`);
    rows[row] = this;
    this.hub.acc.fill(0, row * ACC_N, (row + 1) * ACC_N);
    this.row = row;
    this.batch = sup.guard('turn.fastpath.batch', () => this.onBatch());
    this.listenerBatch = sup.guard('turn.fastpath.listener', () => this.onListenerBatch());
  }

  /**
   * One batch read in C from a client-facing listener: the client -> peer counters, then
   * every datagram C did not forward, to the listener's own handler in order (each
   * supervised there, as from dgram).
   */
  private onListenerBatch(): void {
    const { meta: m, metaBytes, nIndex: n, lrec, ring } = this.hub;
    const lid = m[n + 5]!;
    const l = this.readListeners[lid];
    // What C forwarded before and in this batch counts before the handlers run (C added it).
    this.syncCounters();
    if (l === undefined) return;
    const k = m[n]!;
    const family = l.v6 ? 'IPv6' : 'IPv4';
    for (let i = 0; i < k; i++) {
      // A handler may stop the server (close(): listenerClose) in the middle of the batch;
      // like dgram after socket.close(), the stopped listener gets nothing more.
      if (this.readListeners[lid] !== l) return;
      const r = i * lrec;
      const off = m[r]!;
      const len = m[r + 1]!;
      // The same fields dgram's rinfo has; the address as the kernel reported it (inet_ntop).
      const at = (r + 4) * 4;
      const rinfo: RemoteInfo = { address: metaBytes.toString('latin1', at, at + m[r + 3]!), family, port: m[r + 2]!, size: len };
      // A copy: the ring is overwritten by the next batch, and handlers keep slices of it
      // (the response cache, a queued send).
      const msg = Buffer.allocUnsafe(len);
      ring.copy(msg, 0, off, off + len);
      l.onMessage(msg, rinfo);
    }
  }

  /**
   * Has C read a UDP listener from now on: client -> peer ChannelData and Send
   * indications of eligible flows go out in C, everything else (with a per-packet hook:
   * every datagram) comes to the listener's handler in one call per batch. False: left
   * to dgram.
   */
  takeListener(l: UdpListener, maxFirstByte: number): boolean {
    const h = handleOf(l.socket);
    if (h === null) return false;
    try {
      const id = this.listenerId(l);
      if (id < 0) return false;
      this.addon.listenerRead(id, maxFirstByte);
      this.readListeners[id] = l;
      this.hub.listenerOwners[id] = this;
    } catch (err) {
      this.log.warn({ err: (err as Error).message, port: l.port }, 'fast path: listener left to dgram');
      return false;
    }
    // From here C reads the socket; dgram stops (its 'message' never fires again).
    h.recvStop();
    return true;
  }

  /** One batch read in C: counters, then the datagrams that JavaScript must see. */
  private onBatch(): void {
    const { meta: m, nIndex: n, rec, ring } = this.hub;
    this.syncCounters();
    const k = m[n]!;
    // Every record of a batch is of the one relay C names (meta[n + 5]): resolved once, so
    // an id closed by a hook during the batch (and reused by a new allocation) never sends
    // the rest of the batch to another allocation's client.
    const mir = this.byId[m[n + 5]!];
    if (mir === undefined) return;
    for (let i = 0; i < k; i++) {
      const r = i * rec;
      if (mir.a.deleted || this.byId[mir.id] !== mir) return;
      const perm = mir.perms[m[r + 1]!];
      if (perm === undefined) continue;
      const off = m[r + 3]!;
      const len = m[r + 4]!;
      // A copy: the ring is overwritten by the next batch, and dgram may queue a send
      // (EAGAIN) or a hook may keep the view.
      const payload = Buffer.allocUnsafe(len);
      ring.copy(payload, 0, off, off + len);
      this.slow(mir.a, perm, payload, m[r + 2]!);
    }
  }

  /**
   * Adds what C counted since the last call (its row of the hub's counters) to the
   * counters and to the server's stats: a few reads, done whenever either is read.
   */
  syncCounters(): void {
    // After the row went back (server stopped), what was counted is all here already.
    if (this.hub.rowOwners[this.row] !== this) return;
    const acc = this.hub.acc;
    const base = this.row * ACC_N;
    const seen = this.seen;
    // Every count changes with a batch read, but sendTo's losses (counted between batches).
    if (
      acc[base + A_BATCHES] === seen[A_BATCHES] &&
      acc[base + A_LISTENER_BATCHES] === seen[A_LISTENER_BATCHES] &&
      acc[base + A_SEND_DROPPED] === seen[A_SEND_DROPPED]
    )
      return;
    // What C added since the last call, column by column (no closure: this runs per batch).
    const delta = this.delta;
    for (let k = 0; k < ACC_N; k++) {
      const v = acc[base + k]!;
      delta[k] = v - seen[k]!;
      seen[k] = v;
    }
    const c = this.c;
    const s = this.stats;
    s.packets.peerToClient += delta[A_P2C_PACKETS]!;
    s.bytes.peerToClient += delta[A_P2C_BYTES]!;
    s.packets.clientToPeer += delta[A_C2P_PACKETS]!;
    s.bytes.clientToPeer += delta[A_C2P_BYTES]!;
    c.clientToPeer += delta[A_C2P_PACKETS]!;
    c.sendDropped += delta[A_SEND_DROPPED]!;
    c.expired += delta[A_EXPIRED]!;
    c.malformed += delta[A_MALFORMED]!;
    c.sendIndications += delta[A_SEND_INDICATIONS]!;
    c.batches += delta[A_BATCHES]!;
    c.listenerBatches += delta[A_LISTENER_BATCHES]!;
  }

  private listenerId(l: UdpListener): number {
    let id = this.listeners.get(l);
    if (id === undefined) {
      const h = handleOf(l.socket);
      if (h === null) return -1;
      id = this.addon.listener(h.fd, this.row);
      this.listeners.set(l, id);
    }
    return id;
  }

  private remaining(at: number): number {
    return at - this.clock.now();
  }

  // --------------------------------------------------------------- TableObserver

  added(a: Allocation): void {
    // TCP/TLS clients: the relay socket stays with dgram (the stream write is JS anyway).
    const l = a.ep.udp;
    if (l === null) return;
    const h = handleOf(a.socket);
    if (h === null) return;
    let id: number;
    try {
      const lid = this.listenerId(l);
      if (lid < 0) return;
      id = this.addon.open(h.fd, lid, a.ep.sendAddress, a.ep.remotePort, this.remaining(a.expiresAt), this.row);
    } catch (err) {
      this.log.warn({ err: (err as Error).message, allocation: a.id }, 'fast path: relay socket left to the JS path');
      return;
    }
    // From here the C side reads the socket; dgram stops (its 'message' never fires again).
    h.recvStop();
    this.liveRelays++;
    const mir: Mirror = { id, a, perms: [], slotOf: new Map(), freeSlots: [] };
    this.byId[id] = mir;
    this.hub.owners[id] = this;
    this.mirrors.set(a, mir);
  }

  deleted(a: Allocation): void {
    const mir = this.mirrors.get(a);
    if (mir === undefined) return;
    this.addon.close(mir.id);
    if (this.byId[mir.id] === mir) this.byId[mir.id] = undefined;
    if (this.hub.owners[mir.id] === this) this.hub.owners[mir.id] = undefined;
    this.mirrors.delete(a);
    this.liveRelays--;
    this.releaseRow();
  }

  /**
   * What JavaScript relays to a peer of a mirrored allocation (client -> peer after the
   * hooks, RFC 8656 §11.2 / §12.6) goes out of its relay socket in C, one sendto(2), without
   * dgram's per-send objects. False: not mirrored, or the peer is not of the relay socket's
   * family; the caller sends it through dgram. A datagram the kernel would not take (full
   * buffer) is lost, counted in sendDropped, as in the batches C relays itself.
   */
  sendToPeer(a: Allocation, perm: Permission, buf: Buffer, off: number, len: number, port: number): boolean {
    const mir = this.mirrors.get(a);
    if (mir === undefined) return false;
    return this.addon.sendTo(mir.id, buf, off, len, perm.ipBytes, port) >= 0;
  }

  /** The counters row goes back to the hub once nothing of this server can count in it. */
  private releaseRow(): void {
    if (!this.closed || this.liveRelays > 0 || this.hub.rowOwners[this.row] !== this) return;
    this.syncCounters();
    this.hub.rowOwners[this.row] = undefined;
  }

  refreshed(a: Allocation): void {
    const mir = this.mirrors.get(a);
    if (mir !== undefined) this.addon.expiry(mir.id, this.remaining(a.expiresAt));
  }

  permission(a: Allocation, p: Permission): void {
    const mir = this.mirrors.get(a);
    if (mir === undefined) return;
    let slot = mir.slotOf.get(p);
    if (slot === undefined) {
      slot = mir.freeSlots.pop() ?? mir.perms.length;
      mir.slotOf.set(p, slot);
      mir.perms[slot] = p;
    }
    this.addon.perm(mir.id, slot, p.ipBytes, this.eligible, this.remaining(p.expiresAt));
    // A channel outlives its permission (RFC 8656 §12: 600 s against §9's 300 s): when the
    // permission comes back, its still-bound channels carry the data again (§12.5).
    for (const ch of p.channelsByPort.values()) this.addon.chan(mir.id, slot, ch.peerPort, ch.number, this.remaining(ch.expiresAt));
  }

  permissionClosed(a: Allocation, p: Permission): void {
    const mir = this.mirrors.get(a);
    const slot = mir?.slotOf.get(p);
    if (mir === undefined || slot === undefined) return;
    this.addon.unperm(mir.id, slot);
    mir.slotOf.delete(p);
    mir.perms[slot] = undefined;
    mir.freeSlots.push(slot);
  }

  channel(a: Allocation, ch: Channel): void {
    const mir = this.mirrors.get(a);
    const slot = mir?.slotOf.get(ch.perm);
    if (mir === undefined || slot === undefined) return;
    this.addon.chan(mir.id, slot, ch.peerPort, ch.number, this.remaining(ch.expiresAt));
  }

  channelGone(a: Allocation, ch: Channel): void {
    const mir = this.mirrors.get(a);
    const slot = mir?.slotOf.get(ch.perm);
    if (mir === undefined || slot === undefined) return;
    this.addon.chan(mir.id, slot, ch.peerPort, 0, 0);
  }

  /** Server stop: the listener descriptors this module duplicated. */
  close(): void {
    for (const id of this.listeners.values()) {
      this.addon.listenerClose(id);
      if (this.hub.listenerOwners[id] === this) this.hub.listenerOwners[id] = undefined;
      this.readListeners[id] = undefined;
    }
    this.listeners.clear();
    this.closed = true;
    this.releaseRow();
  }
}

/** What FastPath.counters holds (TurnServer.fastPath(), /metrics). */
export type FastPathCounters = {
  expired: number;
  sendDropped: number;
  malformed: number;
  batches: number;
  listenerBatches: number;
  clientToPeer: number;
  sendIndications: number;
};

export interface FastPathDeps {
  clock: Clock;
  log: Logger;
  sup: Supervisor;
  stats: RelayCounters;
  eligible: boolean;
  slow: SlowPacket;
}

/**
 * `turn.fast_path`: off -> null (the pure-JS path); auto -> the fast path when the addon
 * is built (`npm run build:native`, Linux), else null with a log line.
 */
export function createFastPath(mode: 'off' | 'auto', d: FastPathDeps): FastPath | null {
  if (mode === 'off') return null;
  const addon = loadFastPath();
  if (addon === null) {
    d.log.info({}, 'turn.fast_path auto: native/fastpath not built (npm run build:native) or not Linux; relaying in JS');
    return null;
  }
  try {
    return new FastPath(addon, d.clock, d.log, d.sup, d.stats, d.eligible, d.slow);
  } catch (err) {
    d.log.warn({ err: (err as Error).message }, 'turn.fast_path auto: addon refused to start; relaying in JS');
    return null;
  }
}
