import { Attr, findAttr, getXorAddress, unknownComprehensionRequired, type StunMessage } from '../../wire/stun.js';
import type { DataPath } from '../datapath.js';
import type { Endpoint } from '../state.js';
import type { TurnContext } from './context.js';

/** Send indication (RFC 8656 §11.2): never answered; bad ones are dropped. */
export function onSendIndication(ctx: TurnContext, data: DataPath, ep: Endpoint, msg: StunMessage): void {
  const a = ctx.table.find(ep);
  if (!a) return; // RFC 8656 §5: no allocation, indication silently ignored
  if (unknownComprehensionRequired(msg, ctx.known).length) return; // RFC 8489 §6.3.2
  const peer = getXorAddress(msg, Attr.XorPeerAddress);
  const dataAttr = findAttr(msg, Attr.Data);
  if (!peer || !dataAttr || peer.family !== a.family) return; // §11.2: both required
  const perm = a.permissions.get(peer.address);
  if (perm === undefined || perm.flow === null) return; // §11.2: no permission, discard
  data.toPeer(a, perm, msg.raw.subarray(dataAttr.offset, dataAttr.offset + dataAttr.length), peer.port, peer.address);
}
