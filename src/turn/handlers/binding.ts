import { Attr, unknownComprehensionRequired, type StunMessage } from '../../wire/stun.js';
import type { Endpoint } from '../state.js';
import type { TurnContext } from './context.js';

/** Binding (RFC 8489 §7.3.1): unauthenticated; the success carries XOR-MAPPED-ADDRESS. */
export function onBinding(ctx: TurnContext, ep: Endpoint, msg: StunMessage): void {
  const unknown = unknownComprehensionRequired(msg, ctx.known);
  if (unknown.length) {
    ctx.res.reply(ep, msg, ctx.res.errorStart(msg, 420).unknownAttributes(unknown), null, false);
    return;
  }
  const w = ctx.res.success(msg);
  w.xorAddress(Attr.XorMappedAddress, ep.remoteAddress, ep.remotePort);
  ctx.res.reply(ep, msg, w, null, false);
}
