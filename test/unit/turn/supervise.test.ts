/** Supervision (design.md): a throwing hook closes its flow only; bad input never kills the server. */
import t from 'tap';
import { Attr, Class, Method, getString, getXorAddress, type StunWriter as W } from '../../../src/wire/stun.js';
import { buildChannelData } from '../../../src/wire/channeldata.js';
import type { Flow } from '../../../src/turn/server.js';
import { Client, errCode, peerSocket, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const bindCh =
  (n: number, port: number) =>
  (w: W): void =>
    void w.attr(Attr.ChannelNumber, Buffer.from([n >> 8, n & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', port);

t.test('a flow hook that throws closes that flow only; the other keeps relaying', async (t) => {
  let poisoned = -1;
  const closed: string[] = [];
  const h = await startServer(undefined, {
    flowHooks: {
      onPacket: (_f, _dir, data, peerPort) => {
        if (peerPort === poisoned && data.toString() === 'boom') throw new Error('hook bug');
        return true;
      },
      onFlowClosed: (_f, reason) => closed.push(reason),
    },
  });
  t.teardown(h.close);
  const c1 = await Client.udp(h.udpPort);
  const c2 = await Client.udp(h.udpPort);
  const p1 = await peerSocket('127.0.0.1');
  const p2 = await peerSocket('127.0.0.2');
  t.teardown(() => (c1.close(), c2.close(), p1.close(), p2.close()));
  t.equal((await c1.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  const r2 = await c2.authed(Method.Allocate, udpTransport);
  const relay2 = getXorAddress(r2, Attr.XorRelayedAddress)!.port;
  t.equal((await c1.authed(Method.ChannelBind, bindCh(0x4001, p1.port))).cls, Class.Success);
  t.equal(
    (
      await c2.authed(Method.ChannelBind, (w) =>
        w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x02, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.2', p2.port),
      )
    ).cls,
    Class.Success,
  );
  const [f1] = h.server.flows().filter((f: Flow) => f.peerAddress === '127.0.0.1');
  poisoned = p1.port;
  c1.sendRaw(buildChannelData(0x4001, Buffer.from('boom')));
  c2.sendRaw(buildChannelData(0x4002, Buffer.from('fine')));
  t.equal((await p2.next()).msg.toString(), 'fine', 'the other flow relays');
  // Fence on c1's side: a Binding answered means the poisoned datagram was processed.
  t.equal((await c1.request(Method.Binding)).cls, Class.Success, 'server still answers');
  t.equal(f1!.open, false, 'the flow whose hook threw is closed');
  t.same(closed, ['hook_error']);
  t.equal(h.server.supervisor.failures.get('turn.hook.packet'), 1, 'counted');
  t.equal(h.server.stats.permissions, 1);
  p2.sock.send(Buffer.from('back'), relay2, '127.0.0.1');
  t.ok(await c2.next((b) => b.toString().endsWith('back')), 'and both directions of the other flow work');
});

t.test('onFlowCreated that throws: the request fails with 500, the flow is closed', async (t) => {
  const h = await startServer(undefined, {
    flowHooks: {
      onFlowCreated: (f) => {
        if (f.peerAddress === '127.0.0.3') throw new Error('bad');
      },
    },
  });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  const peer = (ip: string) => (w: W) => void w.xorAddress(Attr.XorPeerAddress, ip, 9);
  t.equal(errCode(await c.authed(Method.CreatePermission, peer('127.0.0.3'))), 500);
  t.equal(h.server.stats.permissions, 0);
  t.equal((await c.authed(Method.CreatePermission, peer('127.0.0.4'))).cls, Class.Success, 'others unaffected');
});

t.test('an extension that throws: 500, counted, server goes on', async (t) => {
  const h = await startServer(undefined, {
    extensions: [
      {
        onRequest: () => {
          throw new Error('extension bug');
        },
      },
    ],
  });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  const r = await c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.2', 9));
  t.equal(errCode(r), 500);
  t.equal(h.server.supervisor.failures.get('turn.extension'), 1);
  t.equal((await c.request(Method.Binding)).cls, Class.Success);
});

t.test('an encoder exception inside a UDP handler drops that datagram; over TCP it closes that connection', async (t) => {
  const h = await startServer(undefined, {
    // An attribute too long for STUN's 16-bit length: StunWriter throws RangeError.
    extensions: [{ onRequest: () => ({ attrs: [{ type: 0xc1a0, value: Buffer.alloc(70_000) }] }) }],
  });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  c.sendRaw(c.build(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.2', 9), true));
  t.equal((await c.request(Method.Binding)).cls, Class.Success, 'still answering');
  t.equal(h.server.supervisor.failures.get('turn.udp.message'), 1);
  const s = await Client.tcp(h.tcpPort);
  t.equal((await s.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  const gone = new Promise<void>((r) => s.tcp!.once('close', () => r()));
  s.sendRaw(s.build(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.2', 9), true));
  await gone;
  t.equal(h.server.supervisor.failures.get('turn.tcp.data'), 1, 'that connection closed');
  t.equal((await c.request(Method.Binding)).cls, Class.Success, 'the server goes on');
});

t.test('turn.software of 70 000 bytes does not kill the server (RFC 8489 §14.14: < 128 characters)', async (t) => {
  const h = await startServer((c) => void (c.turn.software = 'x'.repeat(70_000)));
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  const r = await c.request(Method.Binding);
  t.equal(r.cls, Class.Success, 'answers');
  t.equal(getString(r, Attr.Software)!.length, 127, 'SOFTWARE cut to 127 characters');
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success, 'and keeps answering');
});
