/**
 * The native UDP fast path of the relay (native/fastpath.c, issue 13; `turn.fast_path`).
 *
 * With it, a relay socket of an allocation whose client is on UDP is read in C with
 * recvmmsg into one preallocated ring; the peer -> client datagrams of eligible flows go
 * out in C (sendmmsg) as ChannelData (RFC 8656 §12.5) or Data indications (§11.3), and
 * the others come back here once per batch (src/turn/datapath.ts fromPermission, which
 * calls the flow hooks as the pure-JS path does). Client -> peer stays in JavaScript.
 *
 * This module owns nothing of the TURN state: it mirrors into C what AllocationTable
 * tells it (TableObserver) — the allocation's and each permission's and channel's expiry
 * as a remaining time that C turns into an absolute CLOCK_MONOTONIC deadline checked on
 * every packet, so a late JS sweep never keeps a flow open.
 *
 * Eligible: a flow no per-packet hook must see. This session that is exactly "the
 * server has no flowHooks.onPacket": the gateway (which inspects, counts quotas and
 * guards every datagram) always has one, so none of its flows is forwarded in C.
 */
import type { Socket } from 'node:dgram';
import { createRequire } from 'node:module';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import type { TableObserver } from './allocations.js';
import type { RelayCounters } from './datapath.js';
import type { Allocation, Channel, Permission, UdpListener } from './state.js';

export interface FastPathAddon {
  init(ring: Buffer, meta: Int32Array, onBatch: () => void): { batch: number; slot: number; rec: number };
  listener(fd: number): number;
  listenerClose(id: number): void;
  open(relayFd: number, listener: number, clientIp: string, clientPort: number, remainingMs: number): number;
  close(id: number): void;
  expiry(id: number, remainingMs: number): void;
  perm(id: number, slot: number, ip: Buffer, eligible: boolean, remainingMs: number): void;
  unperm(id: number, slot: number): void;
  chan(id: number, slot: number, peerPort: number, number: number, remainingMs: number): void;
  readonly metaLength: number;
  readonly ringLength: number;
}

const ADDON = 'Release/gatehouse_fastpath.node';
let cached: FastPathAddon | null | undefined;

/** The addon, or null (not built, not Linux, or failed to load). Loaded once. */
export function loadFastPath(): FastPathAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.platform !== 'linux') return cached;
  const req = createRequire(import.meta.url);
  for (const rel of ['../../native/build/', '../../../native/build/']) {
    try {
      const m = req(rel + ADDON) as Partial<FastPathAddon>;
      if (typeof m?.open === 'function' && typeof m.metaLength === 'number') return (cached = m as FastPathAddon);
    } catch {
      // missing or unloadable: the pure-JS path
    }
  }
  return cached;
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
  rec: number;
  nIndex: number;
  /** Relay id (C) -> the FastPath that opened it. */
  owners: (FastPath | undefined)[];
}

const hubs = new WeakMap<FastPathAddon, Hub>();

function hubOf(addon: FastPathAddon): Hub {
  const known = hubs.get(addon);
  if (known !== undefined) return known;
  const ring = Buffer.alloc(addon.ringLength);
  const meta = new Int32Array(addon.metaLength);
  const owners: (FastPath | undefined)[] = [];
  let nIndex = 0;
  // Called from C once per batch; each owner's handler runs inside its server's supervisor.
  const info = addon.init(ring, meta, () => owners[meta[nIndex + 5]!]?.batch());
  nIndex = info.batch * info.rec;
  if (addon.metaLength < nIndex + 6) throw new Error('native/fastpath is out of date (no relay id per batch): npm run build:native');
  const hub: Hub = { ring, meta, rec: info.rec, nIndex, owners };
  hubs.set(addon, hub);
  return hub;
}

export class FastPath implements TableObserver {
  private readonly hub: Hub;
  private readonly byId: (Mirror | undefined)[] = [];
  private readonly mirrors = new WeakMap<Allocation, Mirror>();
  private readonly listeners = new Map<UdpListener, number>();
  /** Datagrams C dropped for an expiry JS had not swept yet, and client sends lost to a full buffer. */
  readonly counters = { expired: 0, sendDropped: 0, batches: 0 };
  /** This server's handler of a batch read from one of its relays (hubOf). */
  readonly batch: () => void;

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
    this.batch = sup.guard('turn.fastpath.batch', () => this.onBatch());
  }

  /** One batch read in C: counters, then the datagrams that JavaScript must see. */
  private onBatch(): void {
    const { meta: m, nIndex: n, rec, ring } = this.hub;
    this.counters.batches++;
    this.stats.packets.peerToClient += m[n + 1]!;
    this.stats.bytes.peerToClient += m[n + 2]!;
    this.counters.sendDropped += m[n + 3]!;
    this.counters.expired += m[n + 4]!;
    const k = m[n]!;
    for (let i = 0; i < k; i++) {
      const r = i * rec;
      const mir = this.byId[m[r]!];
      if (mir === undefined || mir.a.deleted) continue;
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

  private listenerId(l: UdpListener): number {
    let id = this.listeners.get(l);
    if (id === undefined) {
      const h = handleOf(l.socket);
      if (h === null) return -1;
      id = this.addon.listener(h.fd);
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
      id = this.addon.open(h.fd, lid, a.ep.sendAddress, a.ep.remotePort, this.remaining(a.expiresAt));
    } catch (err) {
      this.log.warn({ err: (err as Error).message, allocation: a.id }, 'fast path: relay socket left to the JS path');
      return;
    }
    // From here the C side reads the socket; dgram stops (its 'message' never fires again).
    h.recvStop();
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
    for (const id of this.listeners.values()) this.addon.listenerClose(id);
    this.listeners.clear();
  }
}

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
