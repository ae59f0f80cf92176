/** Permission and channel expiry, rebinding and quarantine on the driven clock (RFC 8656 §9, §12). */
import t from 'tap';
import { Attr, Class, Method, getXorAddress, type StunWriter as W } from '../../../src/wire/stun.js';
import { buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import { Client, errCode, peerSocket, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const isDataInd = (b: Buffer): boolean => b.length >= 20 && b.readUInt16BE(0) === 0x0017;
const isCd = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x4f;

t.test('expiry, refresh, rebinding, quarantine', async (t) => {
  const closed: string[] = [];
  const h = await startServer(undefined, { flowHooks: { onFlowClosed: (_f, r) => closed.push(r) } });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  const p1 = await peerSocket();
  const p2 = await peerSocket();
  t.teardown(() => (c.close(), p1.close(), p2.close()));
  const r = await c.authed(Method.Allocate, udpTransport, {});
  const relay = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  const refresh = async (): Promise<void> =>
    void t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 3600))).cls, Class.Success);
  await refresh();
  const bind = (n: number, port: number) =>
    c.authed(Method.ChannelBind, (w) =>
      w.attr(Attr.ChannelNumber, Buffer.from([n >> 8, n & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', port),
    );
  const perm = () => c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 1));
  /** Marker from p1 through the relay; resolves with what the client got before it. */
  const fence = async (): Promise<Buffer[]> => {
    const before = c.inbox.length;
    t.equal((await c.request(Method.Binding)).cls, Class.Success);
    return c.inbox.splice(before);
  };

  t.equal((await bind(0x4001, p1.port)).cls, Class.Success);
  // RFC 8656 §12.6: ChannelData does not refresh the permission (300 s, §9).
  h.clock.advance(299_000);
  c.sendRaw(buildChannelData(0x4001, Buffer.from('alive')));
  t.equal((await p1.next()).msg.toString(), 'alive');
  h.clock.advance(2_000);
  t.equal(h.server.stats.permissions, 0, 'permission expired at 300 s despite traffic');
  t.same(closed, ['expired']);
  p1.sock.send(Buffer.from('late'), relay, '127.0.0.1');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('late')));
  t.same(await fence(), [], 'nothing relayed without the permission, either way');
  t.equal(h.server.stats.channels, 1, 'the channel binding itself lives 600 s');

  // CreatePermission brings the peer back; the still-bound channel carries its data.
  t.equal((await perm()).cls, Class.Success);
  p1.sock.send(Buffer.from('cd'), relay, '127.0.0.1');
  t.equal(parseChannelData(await c.next(isCd))!.data.toString(), 'cd', 'ChannelData while the channel is bound (§12.5)');

  // Rebinding the same number to the same peer refreshes it (§12): at 590 s, then alive at 610 s.
  h.clock.advance(289_000); // t = 590 s since the bind
  t.equal((await bind(0x4001, p1.port)).cls, Class.Success, 'refresh');
  h.clock.advance(20_000);
  t.equal(h.server.stats.channels, 1, 'alive past the first 600 s');
  h.clock.advance(600_000);
  await refresh();
  t.equal(h.server.stats.channels, 0, 'expired 600 s after the refresh');

  // Channel gone, permission renewed: the peer's data now arrives as a Data indication (§11.3).
  t.equal((await perm()).cls, Class.Success);
  p1.sock.send(Buffer.from('di'), relay, '127.0.0.1');
  t.ok(isDataInd(await c.next(isDataInd)), 'Data indication once the channel expired');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('expired channel')));
  t.equal((await fence()).length, 0);

  // Quarantine (§12): 5 minutes after expiry neither the number nor the peer may be bound differently.
  t.equal(errCode(await bind(0x4001, p2.port)), 400, 'number quarantined for another peer');
  t.equal(errCode(await bind(0x4002, p1.port)), 400, 'peer quarantined for another number');
  t.equal(h.server.stats.channels, 0, 'refusals took no effect');
  h.clock.advance(301_000);
  await refresh();
  t.equal((await bind(0x4001, p2.port)).cls, Class.Success, 'number free 5 minutes after expiry');
  t.equal((await bind(0x4002, p1.port)).cls, Class.Success, 'peer free too');
  p2.sock.send(Buffer.from('p2'), relay, '127.0.0.1');
  const cd = parseChannelData(await c.next(isCd))!;
  t.same([cd.channel, cd.data.toString()], [0x4001, 'p2'], 'the number now means the new peer');
});
