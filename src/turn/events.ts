/**
 * EVE events of the TURN server (contract.md "Events"): `allocation` and `permission`.
 * Never secrets: no passwords, keys, nonces or integrity values.
 */
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import { eveTimestamp, type EventSink, type EveEvent } from '../events/eve.js';
import type { Allocation, CoreIdentity, FlowImpl } from './state.js';

export class TurnEvents {
  constructor(
    private readonly sink: EventSink | null,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  private emit(e: EveEvent): void {
    if (!this.sink) return;
    try {
      this.sink.emit(e);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'event sink failed');
    }
  }

  allocation(a: Allocation, action: string, lifetime: number): void {
    if (!this.sink) return;
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
      gatehouse: { user: a.user, ...groupsRef(a.groups), allocation: a.id, ...coreRef(a) },
    });
  }

  permission(a: Allocation, f: FlowImpl, action: string, peerPort: number | undefined, channel: number | null): void {
    if (!this.sink) return;
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
      gatehouse: { user: a.user, ...groupsRef(a.groups), allocation: a.id, ...coreRef(a) },
    };
    if (peerPort !== undefined) e.dest_port = peerPort;
    this.emit(e);
  }
}

/**
 * Issue 12: events name the user's groups (as the directory gave them to the credential,
 * src/turn/auth.ts resolveCredential) next to the user, when there are any.
 */
export function groupsRef(groups: readonly string[]): { groups?: string[] } {
  return groups.length ? { groups: [...groups] } : {};
}

/**
 * contract.md "Events": flows of core participants carry gatehouse.conference (and guest:
 * true); room participants carry gatehouse.room, transferred users gatehouse.org.
 */
export function coreRef(a: CoreIdentity): CoreIdentity {
  return assignCoreRef({}, a);
}

/** coreRef's fields assigned onto `target` (in that order), for a caller that builds one object per event. */
export function assignCoreRef<T extends Record<string, unknown>>(target: T, a: CoreIdentity): T & CoreIdentity {
  const t = target as T & CoreIdentity;
  if (a.conference !== undefined) t.conference = a.conference;
  if (a.room !== undefined) t.room = a.room;
  if (a.org !== undefined) t.org = a.org;
  if (a.guest) t.guest = true;
  return t;
}

/** The core identity fields of an allocation, or undefined when it has none (not a core participant). */
export function coreIdentityOf(a: CoreIdentity): CoreIdentity | undefined {
  return a.guest || a.conference !== undefined || a.room !== undefined || a.org !== undefined ? coreRef(a) : undefined;
}
