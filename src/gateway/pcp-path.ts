/**
 * The PCP path of the gateway (design.md "One packet's walk": the same walk with a
 * mapping instead of a permission). A flow is one PCP mapping × one remote IP address
 * (key-escrow.md §1). The firewall backend queues the mapped flows' packets to NFQUEUE
 * (src/pcp/firewall); each one is handed here, goes through the same guard, pipeline and
 * policy as a TURN flow (GatewayInspector's FlowHooks), and gets its verdict:
 *
 *  - forward: accepted at once;
 *  - hold (keys pending, a scan running): the verdict is delayed, the packet stays in
 *    the kernel's queue, and is accepted when the inspector releases it (relay.send),
 *    or dropped when the flow ends or the hold outlives `holdTimeoutMs`;
 *  - drop: dropped;
 *  - block: the mapping is deleted (its kernel rules go with it), its flows closed, and
 *    PEER/MAP requests of that user for that remote (or internal port) are refused with
 *    NOT_AUTHORIZED for keys.block_for (key-escrow.md §5.4).
 *
 * Packets that cannot be told (not IP, fragments, not UDP, no mapping) are dropped: fail
 * closed (the queue only carries mapped flows, so these are anomalies, counted).
 */
import type { Clock, TimerHandle } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Flow, FlowDirection, FlowHooks } from '../turn/flow.js';
import type { PcpMapping, PcpMappingEnd } from '../pcp/hooks.js';
import { decodeIp, decodeUdp, IPPROTO_UDP } from '../wire/netpkt.js';

/** A packet read from the queue: its id for the verdict, the whole IP packet (valid during the call). */
export interface QueuedIpPacket {
  id: number;
  packet: Buffer;
}

/** Where verdicts go (the NFQUEUE binding). */
export interface VerdictTarget {
  accept(id: number): void;
  drop(id: number): void;
}

/** What the path needs of the PCP server. */
export interface PcpMappingControl {
  deleteMapping(m: PcpMapping, why: PcpMappingEnd): unknown;
}

export interface PcpPathOptions {
  hooks: Required<Pick<FlowHooks, 'onFlowCreated' | 'onPacket' | 'onFlowClosed'>>;
  /** Where verdicts go; setVerdicts() when the queue opens after the path is made. */
  verdicts?: VerdictTarget;
  clock: Clock;
  logger: Logger;
  /** Delayed verdicts at once on the whole path (pcp.nfqueue.max_held); beyond, the oldest is dropped. */
  maxHeld: number;
  /** A held packet not released within this long is dropped (its sender retransmits). */
  holdTimeoutMs: number;
  /** Flows (remote addresses) per mapping; packets of more remotes are dropped. */
  maxFlowsPerMapping: number;
  /** Flows on the whole PCP path. */
  maxFlows: number;
  /** A flow was created on a mapping (the escrow asks for keys in an unsolicited response). */
  onFlowCreated?(flow: PcpFlow): void;
  /** Groups of an authenticated identity (the users directory), for mappings that carry none. */
  groupsOf?(user: string): readonly string[];
  /** A blocked user × remote: packets are refused before a flow is made. */
  isBlocked(user: string, remoteIp: string): boolean;
}

/** PCP flow ids are kept apart from TURN's (EVE flow_id is unique across both paths). */
const PCP_FLOW_ID_BASE = 1_000_000_000;

/** A Flow (turn/flow.ts shape) for one mapping × one remote IP. */
export class PcpFlow implements Flow {
  readonly allocationId: string;
  readonly user: string;
  readonly groups: readonly string[];
  readonly client: { proto: 'udp'; address: string; port: number };
  readonly createdAt: number;
  open = true;
  ctx: unknown = undefined;
  /** Delayed verdicts of this flow, oldest first, per direction. */
  readonly held: { c2p: HeldPacket[]; p2c: HeldPacket[] } = { c2p: [], p2c: [] };
  constructor(
    readonly id: number,
    readonly mapping: PcpMapping,
    readonly peerAddress: string,
    now: number,
    groups: readonly string[],
  ) {
    this.allocationId = mapping.id;
    this.user = pcpUser(mapping);
    this.groups = groups;
    this.client = { proto: 'udp', address: mapping.internal.address, port: mapping.internal.port };
    this.createdAt = now;
  }

  /** The mapping's external address now (it moves with an external address change, RFC 6887 §14.2). */
  get relayed(): { address: string; port: number } {
    return { address: this.mapping.external.address, port: this.mapping.external.port };
  }
}

interface HeldPacket {
  id: number;
  /** The UDP payload as the inspector saw it (to match its release). */
  payload: Buffer;
  at: number;
  flow: PcpFlow;
  dir: FlowDirection;
  settled: boolean;
}

/** The user a PCP flow is charged to: the RFC 7652 identity, or the client's address. */
export function pcpUser(m: PcpMapping): string {
  return m.user ?? `pcp:${m.client.address}`;
}

export function isPcpFlow(f: Flow): f is PcpFlow {
  return f instanceof PcpFlow;
}

export interface PcpPathStats {
  packets: number;
  accepted: number;
  dropped: number;
  held: number;
  released: number;
  heldExpired: number;
  heldOverflow: number;
  /** Packets the path could not tell (not IPv4/IPv6 UDP, a fragment, no mapping): dropped. */
  unknown: number;
  flows: number;
}

export class PcpPath {
  private readonly o: PcpPathOptions;
  /**
   * Mappings by internal `address|port` (port 0: an all-ports pinhole). Several may share a
   * tuple: a MAP and PEERs of the same internal port (RFC 6887 §12.3 gives them one external
   * port); a packet goes to the PEER of its remote, else to the MAP.
   */
  private readonly byInternal = new Map<string, PcpMapping[]>();
  private readonly flowsOf = new Map<string, Map<string, PcpFlow>>();
  private readonly heldQueue: HeldPacket[] = [];
  private heldHead = 0;
  private nextFlowId = PCP_FLOW_ID_BASE;
  private sweepTimer: TimerHandle | null = null;
  private control: PcpMappingControl | null = null;
  private flowCount = 0;
  readonly stats: PcpPathStats = {
    packets: 0,
    accepted: 0,
    dropped: 0,
    held: 0,
    released: 0,
    heldExpired: 0,
    heldOverflow: 0,
    unknown: 0,
    flows: 0,
  };

  private verdicts: VerdictTarget;

  constructor(opts: PcpPathOptions) {
    this.o = opts;
    this.verdicts = opts.verdicts ?? { accept: () => {}, drop: () => {} };
  }

  setVerdicts(v: VerdictTarget): void {
    this.verdicts = v;
  }

  setControl(c: PcpMappingControl): void {
    this.control = c;
  }

  // ------------------------------------------------------------------ mappings

  mappingCreated(m: PcpMapping): void {
    // The path carries UDP only (the server refuses other protocols here): protocol 0 is an all-protocols pinhole.
    if (m.protocol !== IPPROTO_UDP && m.protocol !== 0) return;
    const k = internalKey(m.internal.address, m.protocol === 0 ? 0 : m.internal.port);
    const list = this.byInternal.get(k);
    if (list) {
      if (!list.includes(m)) list.push(m);
    } else this.byInternal.set(k, [m]);
    // PEER (RFC 6887 §12): the remote is known now; the flow exists from the mapping on.
    if (m.remote) this.flowFor(m, m.remote.address);
  }

  mappingEnded(m: PcpMapping, why: PcpMappingEnd): void {
    const k = internalKey(m.internal.address, m.protocol === 0 ? 0 : m.internal.port);
    const list = this.byInternal.get(k);
    if (list) {
      const i = list.indexOf(m);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.byInternal.delete(k);
    }
    const flows = this.flowsOf.get(m.id);
    if (!flows) return;
    this.flowsOf.delete(m.id);
    for (const f of flows.values()) this.endFlow(f, `mapping_${why}`);
  }

  /** Every open flow of the path (/v1/flows). */
  flows(): PcpFlow[] {
    const out: PcpFlow[] = [];
    for (const fs of this.flowsOf.values()) for (const f of fs.values()) if (f.open) out.push(f);
    return out;
  }

  flowsOfMapping(m: PcpMapping): PcpFlow[] {
    return [...(this.flowsOf.get(m.id)?.values() ?? [])];
  }

  findFlow(mappingId: string, remoteIp: string): PcpFlow | undefined {
    return this.flowsOf.get(mappingId)?.get(remoteIp);
  }

  // ------------------------------------------------------------------ packets

  /** One packet from the queue. Exactly one verdict is given for it, now or later. */
  onQueued(q: QueuedIpPacket): void {
    this.stats.packets++;
    const ip = decodeIp(q.packet);
    const udp = ip && !ip.fragment && ip.proto === IPPROTO_UDP ? decodeUdp(ip.payload) : null;
    if (!ip || !udp) return this.unknown(q.id);
    // Queued in FORWARD (src/pcp/firewall): inbound after DNAT (dst = internal), outbound
    // before SNAT (src = internal).
    let dir: FlowDirection = 'c2p';
    let remote = ip.dst;
    let remotePort = udp.dstPort;
    let m = this.lookup(ip.src, udp.srcPort, remote, remotePort);
    if (!m) {
      dir = 'p2c';
      remote = ip.src;
      remotePort = udp.srcPort;
      m = this.lookup(ip.dst, udp.dstPort, remote, remotePort);
    }
    if (!m) return this.unknown(q.id);
    const flow = this.flowFor(m, remote);
    if (!flow) {
      this.stats.dropped++;
      this.verdicts.drop(q.id);
      return;
    }
    let ok: boolean;
    try {
      ok = this.o.hooks.onPacket(flow, dir, udp.payload, remotePort);
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message, flow: flow.id }, 'pcp packet hook failed');
      ok = false;
    }
    if (ok) {
      this.stats.accepted++;
      this.verdicts.accept(q.id);
      return;
    }
    if (!flow.open) {
      this.stats.dropped++;
      this.verdicts.drop(q.id);
      return;
    }
    // Not forwarded now: it may be held (released later through send()) or dropped. The
    // verdict is delayed; a packet the inspector does not release is dropped at the flow's
    // end, when a later packet of the same direction is released past it, or at the timeout.
    this.hold(flow, dir, q.id, udp.payload);
  }

  /** FlowRelay.send for PCP flows: the inspector releases a held packet. */
  send(flow: PcpFlow, dir: FlowDirection, data: Buffer): void {
    const list = flow.held[dir];
    // Released in order: the first held packet with these bytes is the one; older ones of
    // the same direction before it were not released (dropped by policy) and get their
    // drop verdict now (the kernel frees them).
    let i = 0;
    while (i < list.length && !list[i]!.payload.equals(data)) i++;
    if (i === list.length) {
      // Not a packet we hold (it was accepted, or timed out): nothing to release. The
      // inspector never sends bytes of its own, so this is counted, not re-injected.
      this.stats.heldExpired++;
      return;
    }
    for (let j = 0; j < i; j++) this.settle(list[j]!, false);
    const p = list[i]!;
    list.splice(0, i + 1);
    this.settle(p, true);
    this.stats.released++;
  }

  /** FlowRelay.close for PCP flows: a block (or an internal error) ends the whole mapping. */
  close(flow: PcpFlow, reason: string): void {
    const m = flow.mapping;
    this.endFlow(flow, reason);
    this.flowsOf.get(m.id)?.delete(flow.peerAddress);
    if (this.control) {
      try {
        this.control.deleteMapping(m, reason === 'internal_error' ? 'deleted' : 'blocked');
      } catch (err) {
        this.o.logger.warn({ err: (err as Error).message, mapping: m.id }, 'deleting a blocked mapping failed');
      }
    }
  }

  stop(): void {
    if (this.sweepTimer) this.sweepTimer.cancel();
    this.sweepTimer = null;
    for (const flows of this.flowsOf.values()) for (const f of flows.values()) this.endFlow(f, 'shutdown');
    this.flowsOf.clear();
    this.byInternal.clear();
  }

  // ------------------------------------------------------------------ internals

  /** The PEER of this remote on the internal tuple, else its MAP, else an all-ports pinhole. */
  private lookup(address: string, port: number, remote: string, remotePort: number): PcpMapping | undefined {
    for (const k of [internalKey(address, port), internalKey(address, 0)]) {
      const list = this.byInternal.get(k);
      if (!list) continue;
      let map: PcpMapping | undefined;
      for (const m of list) {
        if (!m.remote) map ??= m;
        else if (m.remote.address === remote && (m.remote.port === 0 || m.remote.port === remotePort)) return m;
      }
      if (map) return map;
    }
    return undefined;
  }

  private flowFor(m: PcpMapping, remoteIp: string): PcpFlow | null {
    let flows = this.flowsOf.get(m.id);
    const f = flows?.get(remoteIp);
    if (f) return f;
    if (this.o.isBlocked(pcpUser(m), remoteIp)) return null;
    if ((flows?.size ?? 0) >= this.o.maxFlowsPerMapping || this.flowCount >= this.o.maxFlows) return null;
    if (!flows) this.flowsOf.set(m.id, (flows = new Map()));
    const groups = m.groups.length || !m.user ? m.groups : (this.o.groupsOf?.(m.user) ?? []);
    const flow = new PcpFlow(++this.nextFlowId, m, remoteIp, this.o.clock.now(), groups);
    flows.set(remoteIp, flow);
    this.flowCount++;
    this.stats.flows = this.flowCount;
    this.o.hooks.onFlowCreated(flow);
    this.o.onFlowCreated?.(flow);
    return flow.open ? flow : null;
  }

  private endFlow(f: PcpFlow, reason: string): void {
    if (!f.open) return;
    f.open = false;
    this.flowCount--;
    this.stats.flows = this.flowCount;
    for (const d of ['c2p', 'p2c'] as const) {
      for (const p of f.held[d]) this.settle(p, false);
      f.held[d].length = 0;
    }
    try {
      this.o.hooks.onFlowClosed(f, reason);
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message, flow: f.id }, 'pcp flow close hook failed');
    }
  }

  private hold(flow: PcpFlow, dir: FlowDirection, id: number, payload: Buffer): void {
    // Bounded (pcp.nfqueue.max_held): the oldest delayed verdict gives way.
    while (this.heldQueue.length - this.heldHead >= this.o.maxHeld) {
      const old = this.heldQueue[this.heldHead++]!;
      if (!old.settled) {
        this.stats.heldOverflow++;
        this.unlink(old);
        this.settle(old, false);
      }
    }
    const p: HeldPacket = { id, payload: Buffer.from(payload), at: this.o.clock.now(), flow, dir, settled: false };
    flow.held[dir].push(p);
    this.heldQueue.push(p);
    this.stats.held++;
    this.compact();
    this.armSweep();
  }

  private unlink(p: HeldPacket): void {
    const l = p.flow.held[p.dir];
    const i = l.indexOf(p);
    if (i >= 0) l.splice(i, 1);
  }

  private settle(p: HeldPacket, accept: boolean): void {
    if (p.settled) return;
    p.settled = true;
    if (accept) this.verdicts.accept(p.id);
    else {
      this.stats.dropped++;
      this.verdicts.drop(p.id);
    }
  }

  private compact(): void {
    while (this.heldHead < this.heldQueue.length && this.heldQueue[this.heldHead]!.settled) this.heldHead++;
    if (this.heldHead > 1024 && this.heldHead * 2 > this.heldQueue.length) {
      this.heldQueue.splice(0, this.heldHead);
      this.heldHead = 0;
    }
  }

  private armSweep(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = this.o.clock.setTimeout(
      () => {
        this.sweepTimer = null;
        this.sweep();
      },
      Math.max(50, Math.ceil(this.o.holdTimeoutMs / 4)),
    );
  }

  /** Held packets older than holdTimeoutMs are dropped (the sender retransmits what matters). */
  private sweep(): void {
    const cutoff = this.o.clock.now() - this.o.holdTimeoutMs;
    while (this.heldHead < this.heldQueue.length) {
      const p = this.heldQueue[this.heldHead]!;
      if (!p.settled) {
        if (p.at > cutoff) break;
        this.stats.heldExpired++;
        this.unlink(p);
        this.settle(p, false);
      }
      this.heldHead++;
    }
    this.compact();
    if (this.heldHead < this.heldQueue.length) this.armSweep();
  }

  private unknown(id: number): void {
    this.stats.unknown++;
    this.stats.dropped++;
    this.verdicts.drop(id);
  }
}

function internalKey(address: string, port: number): string {
  return `${address}|${port}`;
}
