import { Attr, Family, getAttr } from '../../wire/stun.js';
import type { Req } from '../responder.js';
import { lifetimeFor, ownAllocation, type TurnContext } from './context.js';

/** Refresh (RFC 8656 §8.2): a new time-to-expiry, or deletion with LIFETIME 0. */
export function onRefresh(ctx: TurnContext, r: Req): void {
  const a = ownAllocation(ctx, r);
  if (!a) return;
  const raf = getAttr(r.msg, Attr.RequestedAddressFamily);
  if (raf && (raf.length !== 4 || (raf[0] === Family.IPv6 ? 6 : raf[0] === Family.IPv4 ? 4 : 0) !== a.family)) {
    // RFC 8656 §8.2: REQUESTED-ADDRESS-FAMILY must match the allocation's family: 443.
    ctx.res.fail(r, 443);
    return;
  }
  const lifetime = lifetimeFor(ctx, r.msg);
  if (lifetime === null) return ctx.res.fail(r, 400, 'Malformed LIFETIME');
  if (lifetime === 0) ctx.table.delete(a, 'deleted');
  else {
    a.expiresAt = ctx.clock.now() + lifetime * 1000;
    ctx.table.refreshed(a);
    ctx.events.allocation(a, 'refreshed', lifetime);
  }
  const w = ctx.res.success(r.msg);
  w.u32(Attr.Lifetime, lifetime);
  ctx.res.ok(r, w);
}
