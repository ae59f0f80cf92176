/**
 * What the per-method handlers share: configuration, state, the responder, and the
 * checks more than one method needs (allocation lookup with 437/441, lifetime, peer
 * checks, request extensions).
 */
import type { GatehouseConfig } from '../../config/config.js';
import type { Clock } from '../../util/clock.js';
import type { Logger } from '../../util/log.js';
import type { Supervisor } from '../../util/supervise.js';
import { Attr, getAttr, type StunMessage, type TransportAddress } from '../../wire/stun.js';
import type { AllocationTable } from '../allocations.js';
import type { TurnEvents } from '../events.js';
import type { FlowHooks, TurnRequestExtension, TurnRequestVerdict } from '../flow.js';
import type { PeerFilter } from '../peerfilter.js';
import type { PortPool } from '../relay.js';
import type { Authenticator } from '../requestauth.js';
import type { Req, Responder } from '../responder.js';
import type { Allocation, FlowImpl } from '../state.js';
import { count, type TurnStats } from '../stats.js';
import type { KeyEscrowHandler, KeyEscrowLimits } from './keyescrow.js';
import type { AlternateLookup } from '../shedding.js';
import type { ReservationExchange } from '../reservations.js';

export interface TurnContext {
  cfg: GatehouseConfig;
  clock: Clock;
  log: Logger;
  stats: TurnStats;
  sup: Supervisor;
  table: AllocationTable;
  pool: PortPool;
  events: TurnEvents;
  hooks: FlowHooks;
  extensions: TurnRequestExtension[];
  known: (t: number) => boolean;
  filter: PeerFilter;
  res: Responder;
  auth: Authenticator;
  relayFamily: 4 | 6;
  legacyChannels: boolean;
  /** 5-tuple key -> transaction id of an Allocate waiting for its relay socket. */
  pending: Map<string, string>;
  stopped(): boolean;
  /** Closes a flow after a hook or extension threw (supervision). */
  hookFailed(where: string, err: unknown, flow: FlowImpl | null): void;
  /** Legacy (RFC 5766) channel numbers seen per source: log once per client. */
  legacyLogged: Set<string>;
  /** KeyEscrow (key-escrow.md §6): the gateway's handler and the §6.3 limits; null: method unknown. */
  keyEscrow: { handler: KeyEscrowHandler; limits: KeyEscrowLimits } | null;
  /** Issue 14: where an Allocate goes when this server is at turn.max_allocations (src/turn/shedding.ts); null: nowhere (508). */
  alternate: AlternateLookup | null;
  /** Issue 13: RESERVATION-TOKENs of sibling relay workers (src/turn/reservations.ts); null: this server's only. */
  reservations: ReservationExchange | null;
}

export function refuse(ctx: TurnContext, reason: string): void {
  count(ctx.stats.refused, reason);
}

/** The allocation of this 5-tuple with the 437/441 checks (RFC 8656 §5). */
export function ownAllocation(ctx: TurnContext, r: Req): Allocation | null {
  const a = ctx.table.find(r.ep);
  if (!a) {
    ctx.res.fail(r, 437);
    return null;
  }
  if (a.username !== r.auth.cred.username) {
    ctx.auth.wrongCredentials();
    ctx.res.fail(r, 441);
    return null;
  }
  return a;
}

/** RFC 8656 §7.2 / §8.2: the lifetime in seconds, or null when LIFETIME is malformed. */
export function lifetimeFor(ctx: TurnContext, msg: StunMessage): number | null {
  const v = getAttr(msg, Attr.Lifetime);
  const t = ctx.cfg.turn;
  if (!v) return t.default_lifetime;
  if (v.length !== 4) return null;
  const req = v.readUInt32BE(0);
  if (req === 0) return 0;
  return Math.max(t.default_lifetime, Math.min(req, t.max_lifetime));
}

/** Common peer checks: family (443) and filtering (403). Returns an error code or 0. */
export function checkPeer(ctx: TurnContext, a: Allocation, peer: TransportAddress): number {
  if (peer.family !== a.family) return 443; // RFC 8656 §10.2 / §12.2
  if (!ctx.filter.permits(peer.address)) return 403; // §10.2 / §12.2: local restrictions
  if (ctx.hooks.permitPeer && !a.permissions.get(peer.address)?.flow) {
    let ok = false;
    try {
      ok = ctx.hooks.permitPeer({ allocationId: a.id, user: a.user, groups: a.groups }, peer.address);
    } catch (err) {
      // Fail closed: a policy hook that throws refuses the peer.
      ctx.sup.caught('turn.hook.permit_peer', err);
    }
    if (!ok) return 403;
  }
  return 0;
}

/**
 * Caps on what a CreatePermission or ChannelBind would newly create: permissions per
 * allocation, flows per user and in total. RFC 8656 §19: 508 (Insufficient Capacity),
 * "unable to carry out the request due to some capacity limit being reached"; §10.2 installs
 * permissions only when the server "is capable of carrying out the request", and §12.2
 * names 508 for ChannelBind. Returns true when refused (answer sent).
 */
export function overFlowCaps(ctx: TurnContext, r: Req, a: Allocation, fresh: number): boolean {
  if (fresh === 0) return false;
  const t = ctx.cfg.turn;
  let reason: string | null = null;
  let open = 0;
  for (const p of a.permissions.values()) if (p.flow) open++;
  if (open + fresh > t.max_permissions_per_allocation) reason = 'permission_cap';
  else if (ctx.table.flowsOf(a.user) + fresh > t.max_flows_per_user) reason = 'flow_cap_user';
  else if (ctx.table.flowCount + fresh > t.max_flows) reason = 'flow_cap_total';
  if (reason === null) return false;
  refuse(ctx, reason);
  ctx.res.fail(r, 508, 'Insufficient Capacity');
  return true;
}

export function runExtensions(
  ctx: TurnContext,
  a: Allocation,
  r: Req,
  peers: TransportAddress[],
): TurnRequestVerdict[] | { code: number; reason?: string } {
  const out: TurnRequestVerdict[] = [];
  for (const e of ctx.extensions) {
    if (!e.onRequest) continue;
    let v: TurnRequestVerdict | void;
    try {
      v = e.onRequest({
        method: r.msg.method,
        msg: r.msg,
        key: r.auth.key,
        nonce: r.auth.nonce,
        user: a.user,
        username: a.username,
        groups: a.groups,
        allocationId: a.id,
        peers,
        transactionId: r.msg.transactionId,
      });
    } catch (err) {
      // An extension that throws closes the flows this request touches; the request
      // fails with 500 (RFC 8489 §14.8: a temporary server error).
      const touched = peers.map((p) => a.permissions.get(p.address)?.flow ?? null);
      ctx.sup.caught('turn.extension', err, () => {
        for (const f of touched) if (f) ctx.table.closeFlow(f, 'hook_error');
      });
      return { code: 500 };
    }
    if (!v) continue;
    if (v.error) return v.error;
    out.push(v);
  }
  return out;
}

/** Runs the verdicts' commit callbacks; one that throws closes those flows. */
export function commitVerdicts(ctx: TurnContext, verdicts: TurnRequestVerdict[], flows: FlowImpl[]): void {
  for (const v of verdicts) {
    if (!v.commit) continue;
    try {
      v.commit(flows);
    } catch (err) {
      ctx.sup.caught('turn.extension.commit', err, () => {
        for (const f of flows) ctx.table.closeFlow(f, 'hook_error');
      });
    }
  }
}
