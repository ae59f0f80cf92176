/** IPv4-mapped IPv6 client addresses are normalised on every transport (RFC 4291 §2.5.5.2). */
import t from 'tap';
import { Attr, Class, Method, getXorAddress, type StunWriter as W } from '../../../src/wire/stun.js';
import { buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import { unmapV4 } from '../../../src/turn/state.js';
import { Client, peerSocket, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

t.test('unmapV4', async (t) => {
  t.equal(unmapV4('::ffff:192.0.2.1'), '192.0.2.1');
  t.equal(unmapV4('::ffff:c000:201'), '::ffff:c000:201', 'hex form is not dotted: left alone');
  t.equal(unmapV4('2001:db8::1'), '2001:db8::1');
  t.equal(unmapV4('127.0.0.1'), '127.0.0.1');
});

t.test('UDP on a dual-stack [::] listener: an IPv4 client is 127.0.0.1, not ::ffff:127.0.0.1', async (t) => {
  const h = await startServer((c) => void (c.turn.listen = ['udp://[::]:0', 'tcp://[::]:0']));
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  const peer = await peerSocket();
  t.teardown(() => (c.close(), peer.close()));
  const b = await c.request(Method.Binding);
  t.same(getXorAddress(b, Attr.XorMappedAddress), { family: 4, address: '127.0.0.1', port: c.port }, 'XOR-MAPPED-ADDRESS IPv4');
  const r = await c.authed(Method.Allocate, udpTransport);
  t.equal(r.cls, Class.Success);
  t.same(getXorAddress(r, Attr.XorMappedAddress), { family: 4, address: '127.0.0.1', port: c.port });
  const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  const ev = h.events.events.find((e) => e.event_type === 'allocation')!;
  t.equal(ev.src_ip, '127.0.0.1', 'events show the plain IPv4 address');
  t.equal(
    (
      await c.authed(Method.ChannelBind, (w) =>
        w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x01, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', peer.port),
      )
    ).cls,
    Class.Success,
  );
  t.equal(h.server.flows()[0]!.client.address, '127.0.0.1', 'flow client address');
  c.sendRaw(buildChannelData(0x4001, Buffer.from('up')));
  t.equal((await peer.next()).msg.toString(), 'up', 'ChannelData found its allocation');
  peer.sock.send(Buffer.from('down'), relayPort, '127.0.0.1');
  const cd = parseChannelData(await c.next((m) => m[0] === 0x40));
  t.equal(cd?.data.toString(), 'down', 'and the answer reached the client through the udp6 socket');
  const tc = await Client.tcp(h.tcpPort);
  t.teardown(() => tc.close());
  t.same(
    getXorAddress(await tc.request(Method.Binding), Attr.XorMappedAddress),
    { family: 4, address: '127.0.0.1', port: tc.port },
    'TCP too',
  );
});
