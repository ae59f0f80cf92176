/**
 * Load shedding (issue 14): a server at its configured capacity (`turn.max_allocations`)
 * sends a new Allocate elsewhere with 300 Try Alternate and ALTERNATE-SERVER (RFC 8489
 * §10, §14.15), or answers 508 Insufficient Capacity (RFC 8656 §19) when no other
 * server has room. Where the others are is the cluster's business (src/cluster/registry.ts);
 * the TURN server only asks an AlternateLookup.
 */
import { Attr, parseIP } from '../wire/stun.js';
import type { Req } from './responder.js';
import { familyOf } from './state.js';
import { refuse, type TurnContext } from './handlers/context.js';

/** A transport address of another TURN server (an IP literal: ALTERNATE-SERVER carries no name, RFC 8489 §14.15). */
export interface AlternateServer {
  address: string;
  port: number;
}

/**
 * Where to send a client this server has no room for: the addresses of one less loaded
 * server for this transport, the request's source family first (RFC 8489 §10: "MUST
 * contain an IP address of the same address family as the source IP address of the
 * request"), then at most one of the other family; [] when none has room.
 */
export type AlternateLookup = (proto: 'udp' | 'tcp' | 'tls', family: 4 | 6) => AlternateServer[];

/** Allocations counted against the capacity: live ones and those waiting for their relay socket. */
export function allocationLoad(ctx: TurnContext): number {
  return ctx.table.all.size + ctx.pending.size;
}

/** The capacity load is measured against: turn.max_allocations, else the relay port range. */
export function capacityOf(ctx: Pick<TurnContext, 'cfg'>): number {
  const t = ctx.cfg.turn;
  return t.max_allocations ?? t.relay_ports[1]! - t.relay_ports[0]! + 1;
}

/**
 * Answers an Allocate this server has no room for, and returns true; false: there is room.
 * Only for authenticated requests (r.auth): RFC 8489 §14.8 allows 300 only in answer to a
 * request with USERNAME/USERHASH and a valid MESSAGE-INTEGRITY(-SHA256), and the 300 is
 * itself integrity-protected (the Responder signs every answer to an authenticated
 * request with the request's key and algorithm, RFC 8489 §9.2.4) so a client can trust
 * the redirection. ALTERNATE-DOMAIN (§14.16) is not sent: over TLS the client then
 * checks the alternate's certificate against the original server's name (§10), which
 * is what a cluster sharing one certificate name wants.
 */
export function shedAllocate(ctx: TurnContext, r: Req): boolean {
  const alternate = ctx.alternate;
  const max = ctx.cfg.turn.max_allocations;
  if (max === null || allocationLoad(ctx) < max) return false;
  const family = familyOf(r.ep.remoteAddress);
  const targets = alternate ? safeLookup(ctx, alternate, r.ep.proto, family) : [];
  // RFC 8489 §10: the first ALTERNATE-SERVER is of the source's family; one more of the
  // other family at most ("SHOULD NOT include more than one ... with the same family").
  const first = targets.find((t) => familyOf(t.address) === family);
  if (!first) {
    refuse(ctx, 'capacity');
    ctx.res.fail(r, 508, 'Insufficient Capacity'); // RFC 8656 §19
    return true;
  }
  const other = targets.find((t) => familyOf(t.address) !== family);
  refuse(ctx, 'capacity_alternate');
  const w = ctx.res.errorStart(r.msg, 300).address(Attr.AlternateServer, first.address, first.port);
  if (other) w.address(Attr.AlternateServer, other.address, other.port);
  ctx.res.reply(r.ep, r.msg, w, r.auth, true, r.cacheKey);
  ctx.log.debug({ alternate: `${first.address}:${first.port}`, proto: r.ep.proto }, 'at capacity: allocate redirected (300)');
  return true;
}

function safeLookup(ctx: TurnContext, lookup: AlternateLookup, proto: 'udp' | 'tcp' | 'tls', family: 4 | 6): AlternateServer[] {
  try {
    return lookup(proto, family).filter((t) => parseIP(t.address) !== null && Number.isInteger(t.port) && t.port > 0 && t.port < 65536);
  } catch (err) {
    // A lookup that throws must not take the Allocate down with it: no alternate, 508.
    ctx.sup.caught('turn.alternate_lookup', err);
    return [];
  }
}
