import { Attr, getAttr, getXorAddress } from '../../wire/stun.js';
import { CHANNEL_MIN, LEGACY_CHANNEL_MAX, isValidChannelNumber } from '../../wire/channeldata.js';
import type { Req } from '../responder.js';
import { checkPeer, commitVerdicts, ownAllocation, overFlowCaps, refuse, runExtensions, type TurnContext } from './context.js';

/** Sources whose legacy channel numbers were logged, at most (then the set restarts). */
const LEGACY_LOG_MAX = 4096;

function hex(n: number): string {
  return '0x' + n.toString(16).toUpperCase().padStart(4, '0');
}

/** ChannelBind (RFC 8656 §12.2): bind or refresh a channel, install the permission. */
export function onChannelBind(ctx: TurnContext, r: Req): void {
  const a = ownAllocation(ctx, r);
  if (!a) return;
  const bad = (reason: string): void => ctx.res.fail(r, 400, reason);
  const cn = getAttr(r.msg, Attr.ChannelNumber);
  // RFC 8656 §12.2: CHANNEL-NUMBER and XOR-PEER-ADDRESS are required, the number is in
  // 0x4000-0x4FFF, else 400.
  if (!cn || cn.length !== 4) return bad('Missing or malformed CHANNEL-NUMBER');
  const num = cn.readUInt16BE(0);
  if (!isValidChannelNumber(num, ctx.legacyChannels)) {
    if (num > 0x4fff && num <= LEGACY_CHANNEL_MAX) return legacyRefused(ctx, r, num);
    return bad(`Bad Request: channel number ${hex(num)} is out of range; RFC 8656 §12 allows ${hex(CHANNEL_MIN)}-0x4FFF`);
  }
  const peer = getXorAddress(r.msg, Attr.XorPeerAddress);
  if (!peer) return bad('Missing or malformed XOR-PEER-ADDRESS');
  const existing = a.channels.get(num);
  // RFC 8656 §12.2: the number must not be bound (or, §12, quarantined) to another peer ...
  if (existing && (existing.peerIp !== peer.address || existing.peerPort !== peer.port)) return bad('Channel bound to another peer');
  // ... and the peer must not be bound (or, §12, within 5 minutes of expiry) to another
  // number. Not a hot path: at most max_channels_per_allocation + quarantined entries.
  for (const ch of a.channels.values()) {
    if (ch.number !== num && ch.peerPort === peer.port && ch.peerIp === peer.address) return bad('Peer bound to another channel');
  }
  const code = checkPeer(ctx, a, peer);
  if (code) return ctx.res.fail(r, code);
  // RFC 8656 §12.2: a valid request the server cannot fulfil for a capacity limit: 508.
  if (!existing?.active && a.activeChannels >= ctx.cfg.turn.max_channels_per_allocation) {
    refuse(ctx, 'channel_cap');
    return ctx.res.fail(r, 508, 'Insufficient Capacity');
  }
  if (overFlowCaps(ctx, r, a, ctx.table.newPermissions(a, [peer.address]))) return;
  const verdicts = runExtensions(ctx, a, r, [peer]);
  if (!Array.isArray(verdicts)) return ctx.res.fail(r, verdicts.code, verdicts.reason);
  const flow = ctx.table.installPermission(a, peer.address, peer.port, num);
  if (!flow.open) return ctx.res.fail(r, 500); // a flow hook threw and closed it
  ctx.table.bindChannel(a, a.permissions.get(peer.address)!, num, peer.address, peer.port);
  const w = ctx.res.success(r.msg);
  for (const v of verdicts) for (const x of v.attrs ?? []) w.attr(x.type, x.value);
  ctx.res.ok(r, w);
  commitVerdicts(ctx, verdicts, [flow]);
}

/**
 * 0x5000-0x7FFF were channel numbers under RFC 5766 §11; RFC 8656 §12 reserves them and
 * §12.2 answers 400. The reason phrase says so, and the first time per client a warning
 * names the setting that accepts such clients.
 */
function legacyRefused(ctx: TurnContext, r: Req, num: number): void {
  refuse(ctx, 'legacy_channel');
  const src = r.ep.remoteAddress;
  if (!ctx.legacyLogged.has(src)) {
    if (ctx.legacyLogged.size >= LEGACY_LOG_MAX) ctx.legacyLogged.clear();
    ctx.legacyLogged.add(src);
    ctx.log.warn(
      { client: src, channel: hex(num), user: r.auth.cred.user },
      'ChannelBind with a legacy RFC 5766 channel number refused (RFC 8656 §12 allows 0x4000-0x4FFF); set turn.channel_numbers: rfc5766 to accept such clients',
    );
  }
  ctx.res.fail(r, 400, `Bad Request: channel number ${hex(num)} is from the legacy RFC 5766 range; RFC 8656 §12 allows 0x4000-0x4FFF`);
}
