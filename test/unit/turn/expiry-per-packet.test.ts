/**
 * Lifetimes are checked on every packet, not only by the once-a-second sweep (issue 13):
 * with the clock past a permission's (RFC 8656 §9), a channel binding's (§12) or an
 * allocation's (§8) end and the sweep not run yet (a stalled event loop), nothing more
 * is relayed on it. Pure-JS data path (turn.fast_path off, set here: the driven clock is
 * JavaScript's, which C does not see; fastpath.test.ts checks expiry in C on real time).
 */
import t from 'tap';
import { Attr, Class, Method, getXorAddress, type StunWriter as W } from '../../../src/wire/stun.js';
import { buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import { Client, peerSocket, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const isDataInd = (b: Buffer): boolean => b.length >= 20 && b.readUInt16BE(0) === 0x0017;
const isCd = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x4f;

t.test('an expired permission, channel or allocation relays nothing before the sweep runs', async (t) => {
  const h = await startServer((c) => void (c.turn.fast_path = 'off'));
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  const p1 = await peerSocket();
  t.teardown(() => (c.close(), p1.close()));
  const r = await c.authed(Method.Allocate, udpTransport, {});
  const relay = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 3600))).cls, Class.Success);
  const bind = () =>
    c.authed(Method.ChannelBind, (w) =>
      w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x01, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', p1.port),
    );
  const perm = () => c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 1));
  /** What the client got before a Binding answer (the loopback keeps order). */
  const fence = async (): Promise<Buffer[]> => {
    const before = c.inbox.length;
    t.equal((await c.request(Method.Binding)).cls, Class.Success);
    return c.inbox.splice(before);
  };

  t.equal((await bind()).cls, Class.Success);
  c.sendRaw(buildChannelData(0x4001, Buffer.from('first')));
  t.equal((await p1.next()).msg.toString(), 'first', 'relayed while everything is alive');

  // The permission (300 s, §9) is over; the sweep has not run.
  h.clock.stall(300_000);
  t.equal(h.server.stats.permissions, 1, 'the sweep has not removed the permission yet');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('late-perm')));
  p1.sock.send(Buffer.from('late-perm'), relay, '127.0.0.1');
  t.same(await fence(), [], 'nothing peer -> client on an expired permission');
  t.equal((await perm()).cls, Class.Success, 'CreatePermission renews it');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('renewed')));
  t.equal((await p1.next()).msg.toString(), 'renewed', 'the expired ChannelData was dropped, the next one relayed');

  // The binding (600 s from the bind, §12) is over while the permission is alive:
  // peer data comes as a Data indication (§11.3), ChannelData from the client is dropped.
  h.clock.stall(299_000);
  t.equal((await perm()).cls, Class.Success, 'the permission renewed once more (to 899 s)');
  h.clock.stall(1_500); // 600.5 s since the bind
  t.equal(h.server.stats.channels, 1, 'the sweep has not unbound the channel yet');
  p1.sock.send(Buffer.from('as-indication'), relay, '127.0.0.1');
  const got = await fence();
  t.equal(got.filter(isCd).length, 0, 'no ChannelData on an expired binding');
  t.equal(got.filter(isDataInd).length, 1, 'a Data indication instead');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('late-chan')));
  t.equal((await bind()).cls, Class.Success, 'rebinding renews the binding');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('rebound')));
  t.equal((await p1.next()).msg.toString(), 'rebound', 'the ChannelData on the expired binding was dropped');
  p1.sock.send(Buffer.from('cd-again'), relay, '127.0.0.1');
  t.equal(parseChannelData(await c.next(isCd))!.data.toString(), 'cd-again', 'ChannelData again once bound');

  // The allocation (3600 s from the refresh, §8) is over: nothing either way.
  h.clock.stall(3_600_000);
  t.equal(h.server.stats.allocations, 1, 'the sweep has not deleted the allocation yet');
  p1.sock.send(Buffer.from('late-alloc'), relay, '127.0.0.1');
  t.same(await fence(), [], 'nothing peer -> client on an expired allocation');
  h.clock.advance(1_000);
  t.equal(h.server.stats.allocations, 0, 'the sweep deletes it when it runs');
});
