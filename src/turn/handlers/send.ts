import { Attr, findAttr, getXorAddress, hasAttr, unknownComprehensionRequired, type StunMessage } from '../../wire/stun.js';
import type { DataPath } from '../datapath.js';
import type { Endpoint } from '../state.js';
import { refuse, type TurnContext } from './context.js';

/** Send indication (RFC 8656 §11.2): never answered; bad ones are dropped. */
export function onSendIndication(ctx: TurnContext, data: DataPath, ep: Endpoint, msg: StunMessage): void {
  const a = ctx.table.find(ep);
  if (!a) return; // RFC 8656 §5: no allocation, indication silently ignored
  // RFC 8656 §11.2: a server that cannot set DF treats DONT-FRAGMENT as an unknown
  // comprehension-required attribute (ctx.known then lacks it), so the Send is discarded.
  const unknown = unknownComprehensionRequired(msg, ctx.known);
  if (unknown.length) {
    if (unknown.includes(Attr.DontFragment)) refuse(ctx, 'dont_fragment');
    return; // RFC 8489 §6.3.2
  }
  const peer = getXorAddress(msg, Attr.XorPeerAddress);
  const dataAttr = findAttr(msg, Attr.Data);
  if (!peer || !dataAttr || peer.family !== a.family) return; // §11.2: both required
  const perm = a.permissions.get(peer.address);
  if (perm === undefined || perm.flow === null) return; // §11.2: no permission, discard
  // §11.2 / §14: with DONT-FRAGMENT the datagram goes to the peer with DF set.
  const df = hasAttr(msg, Attr.DontFragment);
  data.toPeer(a, perm, msg.raw.subarray(dataAttr.offset, dataAttr.offset + dataAttr.length), peer.port, peer.address, df);
}
