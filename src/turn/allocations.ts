/**
 * Allocation state (RFC 8656 §6): allocations by 5-tuple and id, per-user quota slots,
 * permissions (§9) and the flows they open, channels (§12) with their quarantine,
 * EVEN-PORT reservations (§7.2), and the sweep that expires all of them on the driven
 * clock. Knows no sockets beyond closing relay sockets it owns.
 */
import type { Socket } from 'node:dgram';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import { parseIP } from '../wire/stun.js';
import type { FlowHooks } from './flow.js';
import { coreIdentityOf, type TurnEvents } from './events.js';
import type { PortPool } from './relay.js';
import {
  CHANNEL_LIFETIME_MS,
  CHANNEL_QUARANTINE_MS,
  FlowImpl,
  PERMISSION_LIFETIME_MS,
  type Allocation,
  type Channel,
  type Endpoint,
  type Permission,
  type Reservation,
} from './state.js';

export interface TableCounters {
  allocations: number;
  permissions: number;
  channels: number;
}

/**
 * Told of every change the data path depends on, after it took effect (the native fast
 * path mirrors the state into C, src/turn/fastpath.ts). Must not throw.
 */
export interface TableObserver {
  added(a: Allocation): void;
  /** Before the relay socket is closed. */
  deleted(a: Allocation): void;
  /** a.expiresAt changed (Refresh, RFC 8656 §8). */
  refreshed(a: Allocation): void;
  /** Installed or refreshed (RFC 8656 §9): p.expiresAt is new. */
  permission(a: Allocation, p: Permission): void;
  permissionClosed(a: Allocation, p: Permission): void;
  /** Bound or refreshed (RFC 8656 §12): ch.expiresAt is new. */
  channel(a: Allocation, ch: Channel): void;
  channelGone(a: Allocation, ch: Channel): void;
}

/** Called when a flow hook threw: the table closes that flow (supervision, design.md). */
export type HookFailure = (where: string, err: unknown, flow: FlowImpl | null) => void;

export class AllocationTable {
  readonly all = new Set<Allocation>();
  readonly byId = new Map<string, Allocation>();
  /**
   * Allocation quota slots per user (RFC 8656 §7.2 step 10). A slot is taken
   * synchronously when an Allocate passes its checks, before the relay socket is bound,
   * so concurrent Allocates cannot all read the same count.
   */
  private readonly perUser = new Map<string, number>();
  /** Open flows (installed permissions) per user and in total. */
  private readonly flowsPerUser = new Map<string, number>();
  flowCount = 0;
  readonly reservations = new Map<string, Reservation>();
  private flowSeq = 0;
  /** The fast path's mirror of this state, when `turn.fast_path` is on (server.ts). */
  observer: TableObserver | null = null;

  constructor(
    private readonly counters: TableCounters,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly events: TurnEvents,
    private readonly hooks: FlowHooks,
    private readonly pool: PortPool,
    private readonly hookFailed: HookFailure,
  ) {}

  // ---------------------------------------------------------------------------
  // Quota slots

  allocationsOf(user: string): number {
    return this.perUser.get(user) ?? 0;
  }

  /** Takes one allocation slot for user if fewer than max are in use. */
  takeSlot(user: string, max: number): boolean {
    const n = this.perUser.get(user) ?? 0;
    if (n >= max) return false;
    this.perUser.set(user, n + 1);
    return true;
  }

  releaseSlot(user: string): void {
    const n = (this.perUser.get(user) ?? 1) - 1;
    if (n > 0) this.perUser.set(user, n);
    else this.perUser.delete(user);
  }

  flowsOf(user: string): number {
    return this.flowsPerUser.get(user) ?? 0;
  }

  // ---------------------------------------------------------------------------
  // Allocations

  find(ep: Endpoint): Allocation | undefined {
    if (ep.udp) return ep.udp.clients.get(ep.sendAddress)?.get(ep.remotePort);
    return ep.conn?.allocation ?? undefined;
  }

  /** Registers a new allocation (its quota slot was taken with takeSlot). */
  add(a: Allocation): void {
    this.all.add(a);
    this.byId.set(a.id, a);
    this.counters.allocations++;
    const ep = a.ep;
    if (ep.udp) {
      let m = ep.udp.clients.get(ep.sendAddress);
      if (!m) ep.udp.clients.set(ep.sendAddress, (m = new Map()));
      m.set(ep.remotePort, a);
    } else if (ep.conn) ep.conn.allocation = a;
    this.observer?.added(a);
  }

  /** Refresh changed a.expiresAt (RFC 8656 §8.2). */
  refreshed(a: Allocation): void {
    this.observer?.refreshed(a);
  }

  delete(a: Allocation, reason: string): void {
    if (a.deleted) return;
    a.deleted = true;
    for (const ch of a.channels.values()) this.deactivateChannel(a, ch);
    a.channels.clear();
    const why = reason === 'expired' ? 'allocation_expired' : 'allocation_deleted';
    for (const p of a.permissions.values()) this.closePermission(a, p, why);
    a.permissions.clear();
    this.observer?.deleted(a);
    closeSocket(a.socket);
    this.pool.release(a.relayPort);
    this.all.delete(a);
    this.byId.delete(a.id);
    this.counters.allocations--;
    this.releaseSlot(a.user);
    const ep = a.ep;
    if (ep.udp) {
      const m = ep.udp.clients.get(ep.sendAddress);
      if (m && m.get(ep.remotePort) === a) {
        m.delete(ep.remotePort);
        if (m.size === 0) ep.udp.clients.delete(ep.sendAddress);
      }
    } else if (ep.conn && ep.conn.allocation === a) {
      ep.conn.allocation = null;
      // The connection's idle clock restarts when it loses its allocation.
      ep.conn.lastRx = this.clock.now();
    }
    this.log.debug({ allocation: a.id, user: a.user, reason }, 'allocation removed');
    this.events.allocation(a, reason, 0);
  }

  // ---------------------------------------------------------------------------
  // Permissions and flows (RFC 8656 §9)

  /** Permissions a request for these peer IPs would newly create (for the caps). */
  newPermissions(a: Allocation, ips: readonly string[]): number {
    let n = 0;
    const seen = ips.length > 1 ? new Set<string>() : null;
    for (const ip of ips) {
      if (seen) {
        if (seen.has(ip)) continue;
        seen.add(ip);
      }
      if (!a.permissions.get(ip)?.flow) n++;
    }
    return n;
  }

  /** Installs or refreshes the permission for a peer IP (RFC 8656 §9); opens its flow. */
  installPermission(a: Allocation, ip: string, port: number, channel: number | null): FlowImpl {
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
        coreIdentityOf(a),
      );
      perm.flow = f;
      this.counters.permissions++;
      this.flowCount++;
      this.flowsPerUser.set(a.user, (this.flowsPerUser.get(a.user) ?? 0) + 1);
      this.events.permission(a, f, 'created', port, channel);
      if (this.hooks.onFlowCreated) {
        try {
          this.hooks.onFlowCreated(f);
        } catch (err) {
          this.hookFailed('turn.hook.flow_created', err, f);
        }
      }
    }
    if (perm.flow) this.observer?.permission(a, perm);
    return perm.flow ?? this.closedFlowPlaceholder(perm);
  }

  /** A hook closed the flow while it was being created; the caller gets the closed flow. */
  private closedFlowPlaceholder(perm: Permission): FlowImpl {
    return perm.lastFlow!;
  }

  closePermission(a: Allocation, perm: Permission, reason: string): void {
    const f = perm.flow;
    if (!f) return;
    perm.flow = null;
    perm.lastFlow = f;
    f.open = false;
    this.observer?.permissionClosed(a, perm);
    this.counters.permissions--;
    this.flowCount--;
    const n = (this.flowsPerUser.get(a.user) ?? 1) - 1;
    if (n > 0) this.flowsPerUser.set(a.user, n);
    else this.flowsPerUser.delete(a.user);
    this.events.permission(a, f, reason, undefined, null);
    if (this.hooks.onFlowClosed) {
      try {
        this.hooks.onFlowClosed(f, reason);
      } catch (err) {
        this.hookFailed('turn.hook.flow_closed', err, null);
      }
    }
  }

  /** TurnServer.closeFlow: its permission and channels go, both directions stop. */
  closeFlow(flow: { allocationId: string; peerAddress: string }, reason: string): void {
    const a = this.byId.get(flow.allocationId);
    if (!a || a.deleted) return;
    const perm = a.permissions.get(flow.peerAddress);
    if (!perm || perm.flow !== flow) return;
    for (const ch of [...perm.channelsByPort.values()]) {
      this.deactivateChannel(a, ch);
      a.channels.delete(ch.number);
    }
    this.closePermission(a, perm, reason);
    a.permissions.delete(perm.ip);
  }

  // ---------------------------------------------------------------------------
  // Channels (RFC 8656 §12)

  /** Creates or refreshes the binding num -> peer (checks done by the handler, §12.2). */
  bindChannel(a: Allocation, perm: Permission, num: number, peerIp: string, peerPort: number): Channel {
    let ch = a.channels.get(num);
    if (!ch) {
      ch = { number: num, peerIp, peerPort, perm, expiresAt: 0, active: false, reuseAfter: 0 };
      a.channels.set(num, ch);
    }
    ch.perm = perm;
    ch.expiresAt = this.clock.now() + CHANNEL_LIFETIME_MS;
    if (!ch.active) {
      ch.active = true;
      perm.channelsByPort.set(peerPort, ch);
      a.activeChannels++;
      this.counters.channels++;
    }
    this.observer?.channel(a, ch);
    return ch;
  }

  deactivateChannel(a: Allocation, ch: Channel): void {
    if (!ch.active) return;
    ch.active = false;
    ch.perm.channelsByPort.delete(ch.peerPort);
    a.activeChannels--;
    this.counters.channels--;
    this.observer?.channelGone(a, ch);
  }

  // ---------------------------------------------------------------------------
  // Reservations (RFC 8656 §7.2, §18.10)

  /** Takes (removes) a live reservation by token, or null. */
  takeReservation(tokenHex: string): Reservation | null {
    const r = this.reservations.get(tokenHex);
    if (!r || r.expiresAt <= this.clock.now()) return null;
    this.reservations.delete(tokenHex);
    return r;
  }

  // ---------------------------------------------------------------------------
  // Expiry (driven by the injected clock)

  sweep(now: number): void {
    for (const a of [...this.all]) {
      if (a.expiresAt <= now) {
        this.delete(a, 'expired');
        continue;
      }
      for (const ch of a.channels.values()) {
        if (ch.active && ch.expiresAt <= now) {
          this.deactivateChannel(a, ch);
          // RFC 8656 §12: the number and the peer stay reserved 5 minutes after expiry.
          ch.reuseAfter = ch.expiresAt + CHANNEL_QUARANTINE_MS;
        } else if (!ch.active && ch.reuseAfter <= now) a.channels.delete(ch.number);
      }
      for (const p of a.permissions.values()) {
        // RFC 8656 §9: a permission expires when its time-to-expiry reaches zero.
        if (p.flow && p.expiresAt <= now) this.closePermission(a, p, 'expired');
        if (!p.flow && p.channelsByPort.size === 0) a.permissions.delete(p.ip);
      }
    }
    for (const r of this.reservations.values()) {
      if (r.expiresAt <= now) {
        this.reservations.delete(r.token);
        closeSocket(r.socket);
        this.pool.release(r.port);
      }
    }
  }

  /** Shutdown: every allocation and reservation goes. */
  clear(): void {
    for (const a of [...this.all]) this.delete(a, 'shutdown');
    for (const r of this.reservations.values()) {
      closeSocket(r.socket);
      this.pool.release(r.port);
    }
    this.reservations.clear();
  }
}

export function closeSocket(s: Socket): void {
  try {
    s.close();
  } catch {
    /* already closed */
  }
}
