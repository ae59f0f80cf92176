import t from 'tap';
import { makeCert } from '../../../scripts/fixtures/openssl-dtls.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { connect as netConnect, type Socket as NetSocket } from 'node:net';
import { randomBytes } from 'node:crypto';
import {
  Attr,
  Class,
  Method,
  StunWriter,
  decodeStun,
  getAttr,
  getXorAddress,
  messageType,
  type StunWriter as W,
} from '../../../src/wire/stun.js';
import { StreamFramer, buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import { Client, peerSocket, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const binding = (): Buffer => new StunWriter().reset(messageType(Method.Binding, Class.Request), randomBytes(12)).copy();
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

t.test('TCP framing (RFC 8656 §5): split and coalesced STUN messages', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const c = await Client.tcp(h.tcpPort);
  t.teardown(() => c.close());
  const a = binding();
  const b = binding();
  const both = Buffer.concat([a, b]);
  const ra = c.next((m) => m.subarray(8, 20).equals(a.subarray(8, 20)));
  const rb = c.next((m) => m.subarray(8, 20).equals(b.subarray(8, 20)));
  // Split at awkward points: inside the header, inside nothing-yet, across the boundary.
  for (const [s, e] of [
    [0, 1],
    [1, 3],
    [3, 25],
    [25, both.length],
  ] as const) {
    c.sendRaw(both.subarray(s, e));
    await tick();
  }
  const [ma, mb] = [decodeStun(await ra)!, decodeStun(await rb)!];
  t.same(getXorAddress(ma, Attr.XorMappedAddress), { family: 4, address: '127.0.0.1', port: c.port });
  t.equal(mb.cls, Class.Success);
  // Coalesced: three requests in one write.
  const three = [binding(), binding(), binding()];
  const waits = three.map((m) => c.next((x) => x.subarray(8, 20).equals(m.subarray(8, 20))));
  c.sendRaw(Buffer.concat(three));
  t.equal((await Promise.all(waits)).length, 3, 'three answers');
});

t.test('TCP relaying: ChannelData padded to 4 bytes both ways, Data indications', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const c = await Client.tcp(h.tcpPort);
  const peer = await peerSocket();
  t.teardown(() => (c.close(), peer.close()));
  const r = await c.authed(Method.Allocate, udpTransport);
  t.equal(r.cls, Class.Success);
  const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  t.equal(h.server.stats.allocations, 1);
  const bound = await c.authed(Method.ChannelBind, (w) =>
    w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x05, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', peer.port),
  );
  t.equal(bound.cls, Class.Success);
  // Two padded ChannelData frames and a STUN request coalesced, then split oddly.
  const stream = Buffer.concat([
    buildChannelData(0x4005, Buffer.from('abcde'), true),
    buildChannelData(0x4005, Buffer.from('xy'), true),
    binding(),
  ]);
  c.sendRaw(stream.subarray(0, 7));
  await tick();
  c.sendRaw(stream.subarray(7));
  t.equal((await peer.next()).msg.toString(), 'abcde');
  t.equal((await peer.next()).msg.toString(), 'xy');
  peer.sock.send(Buffer.from('12345'), relayPort, '127.0.0.1');
  const frame = await c.next((b) => b[0] === 0x40);
  t.equal(frame.length, 12, 'ChannelData toward a TCP client is padded (RFC 8656 §12.5)');
  t.equal(parseChannelData(frame)!.data.toString(), '12345');
  // A peer without a channel but with permission: Data indication over TCP.
  const peer2 = await peerSocket();
  t.teardown(() => peer2.close());
  t.equal((await c.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', peer2.port))).cls, Class.Success);
  peer2.sock.send(Buffer.from('odd'), relayPort, '127.0.0.1');
  const di = decodeStun(await c.next((b) => b.readUInt16BE(0) === 0x0017))!;
  t.ok(di, 'a well-formed STUN message on the stream');
  t.equal(getAttr(di, Attr.Data)!.toString(), 'odd');
  // Closing the connection deletes the allocation.
  c.close();
  for (let i = 0; i < 100 && h.server.stats.allocations > 0; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(h.server.stats.allocations, 0, 'allocation deleted with its connection');
});

t.test('a framing error closes only that connection', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const bad = await Client.tcp(h.tcpPort);
  const good = await Client.tcp(h.tcpPort);
  const udp = await Client.udp(h.udpPort);
  t.teardown(() => (bad.close(), good.close(), udp.close()));
  const closed = new Promise<void>((r) => bad.tcp!.once('close', () => r()));
  bad.sendRaw(Buffer.from([0x80, 0x60, 0, 1, 0, 0, 0, 0]));
  await closed;
  t.pass('bad connection closed by the server');
  t.equal((await good.request(Method.Binding)).cls, Class.Success, 'other TCP client unaffected');
  t.equal((await udp.request(Method.Binding)).cls, Class.Success, 'UDP unaffected');
});

t.test('TLS listener', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { cert, key } = makeCert(dir, 'ec', '/CN=localhost');
  const h = await startServer((c) => {
    c.turn.listen = ['tls://127.0.0.1:0'];
    c.turn.tls = { cert, key };
  });
  t.teardown(h.close);
  const addr = h.server.addresses();
  t.same(
    addr.map((a) => a.proto),
    ['tls'],
  );
  const sock = tlsConnect({ host: '127.0.0.1', port: addr[0]!.port, rejectUnauthorized: false });
  t.teardown(() => sock.destroy());
  await new Promise<void>((r, j) => (sock.once('secureConnect', () => r()), sock.once('error', j)));
  const framer = new StreamFramer();
  const req = binding();
  const resp = new Promise<Buffer>((r) => sock.on('data', (d) => framer.push(d, (f) => r(Buffer.from(f)))));
  sock.write(req);
  const m = decodeStun(await resp)!;
  t.equal(m.cls, Class.Success);
  t.same(getXorAddress(m, Attr.XorMappedAddress), { family: 4, address: '127.0.0.1', port: sock.localPort });
});

t.test('TLS: the per-source cap applies at TCP accept, before any handshake', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { cert, key } = makeCert(dir, 'ec', '/CN=localhost');
  const h = await startServer((c) => {
    c.turn.listen = ['tls://127.0.0.1:0'];
    c.turn.tls = { cert, key };
    c.turn.max_connections_per_source = 5;
  });
  t.teardown(h.close);
  const port = h.server.addresses()[0]!.port;
  // Raw TCP connections that never start a handshake (a handshake flood's first step).
  const raws: NetSocket[] = [];
  const fates = await Promise.all(
    Array.from(
      { length: 12 },
      () =>
        new Promise<'closed' | 'open'>((resolve) => {
          const s = netConnect(port, '127.0.0.1');
          raws.push(s);
          s.on('error', () => {});
          s.once('close', () => resolve('closed'));
          setTimeout(() => resolve('open'), 500);
        }),
    ),
  );
  t.teardown(() => raws.forEach((s) => s.destroy()));
  t.equal(fates.filter((f) => f === 'open').length, 5, 'five pending handshakes held open');
  t.equal(fates.filter((f) => f === 'closed').length, 7, 'the rest closed at accept');
  t.equal(h.server.stats.refused['connection_cap_source'], 7, 'counted');
  for (const s of raws) s.destroy();
  await new Promise((r) => setTimeout(r, 100));
  // Slots come back when the raw sockets close: a real TLS client is served.
  const sock = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false });
  t.teardown(() => sock.destroy());
  await new Promise<void>((r, j) => (sock.once('secureConnect', () => r()), sock.once('error', j)));
  const framer = new StreamFramer();
  const resp = new Promise<Buffer>((r) => sock.on('data', (d) => framer.push(d, (f) => r(Buffer.from(f)))));
  sock.write(binding());
  t.equal(decodeStun(await resp)!.cls, Class.Success, 'Binding over TLS answered after the flood');
});
