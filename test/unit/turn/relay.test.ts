import type { GatehouseConfig } from '../../../src/config/config.js';
import t from 'tap';
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
  verifyIntegrity,
  type StunWriter as W,
} from '../../../src/wire/stun.js';
import { buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import type { Flow } from '../../../src/turn/server.js';
import { Client, errCode, peerSocket, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const peerAttr =
  (ip: string, port: number) =>
  (w: W): void =>
    void w.xorAddress(Attr.XorPeerAddress, ip, port);

function sendIndication(c: Client, ip: string, port: number, data: Buffer): void {
  const w = new StunWriter();
  w.reset(messageType(Method.Send, Class.Indication), randomBytes(12)).xorAddress(Attr.XorPeerAddress, ip, port).attr(Attr.Data, data);
  c.sendRaw(w.copy());
}

const isDataIndication = (b: Buffer): boolean => b.length >= 20 && b.readUInt16BE(0) === messageType(Method.Data, Class.Indication);
const isChannelData = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x7f;

async function allocated(port: number): Promise<{ c: Client; relayPort: number }> {
  const c = await Client.udp(port);
  const r = await c.authed(Method.Allocate, udpTransport);
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  return { c, relayPort: getXorAddress(r, Attr.XorRelayedAddress)!.port };
}

t.test('CreatePermission, Send and Data indications (RFC 8656 §9, §10)', async (t) => {
  const created: Flow[] = [];
  const closed: string[] = [];
  const h = await startServer(undefined, { flowHooks: { onFlowCreated: (f) => created.push(f), onFlowClosed: (_f, r) => closed.push(r) } });
  t.teardown(h.close);
  const { c, relayPort } = await allocated(h.udpPort);
  const peer = await peerSocket();
  const stranger = await peerSocket('127.0.0.2');
  t.teardown(() => (c.close(), peer.close(), stranger.close()));

  // Without a permission, data goes nowhere in either direction.
  sendIndication(c, '127.0.0.1', peer.port, Buffer.from('early'));
  stranger.sock.send(Buffer.from('unsolicited'), relayPort, '127.0.0.1');

  const r = await c.authed(Method.CreatePermission, peerAttr('127.0.0.1', peer.port));
  t.equal(r.cls, Class.Success);
  t.ok(verifyIntegrity(r, c.key()));
  t.equal(h.server.stats.permissions, 1);
  t.equal(created.length, 1, 'flow created with the permission');
  t.match(created[0], { peerAddress: '127.0.0.1', user: 'alice', groups: ['trading'], relayed: { port: relayPort }, open: true });
  const pe = h.events.events.find((e) => e.event_type === 'permission')!;
  t.match(pe, {
    flow_id: created[0]!.id,
    src_port: c.port,
    dest_ip: '127.0.0.1',
    permission: { action: 'created' },
    gatehouse: { user: 'alice' },
  });

  sendIndication(c, '127.0.0.1', peer.port, Buffer.from('hello peer'));
  const got = await peer.next();
  t.equal(got.msg.toString(), 'hello peer', 'first datagram at the peer is the one sent after the permission');
  t.equal(got.port, relayPort, 'from the relayed address');

  peer.sock.send(Buffer.from('hello client!'), relayPort, '127.0.0.1');
  const di = decodeStun(await c.next(isDataIndication))!;
  t.ok(di);
  t.same(getXorAddress(di, Attr.XorPeerAddress), { family: 4, address: '127.0.0.1', port: peer.port });
  t.equal(getAttr(di, Attr.Data)!.toString(), 'hello client!');
  t.equal(c.inbox.filter(isDataIndication).length, 0, 'the unsolicited datagram was not relayed');
  t.equal(h.server.stats.packets.clientToPeer, 1);
  t.equal(h.server.stats.packets.peerToClient, 1);
  t.equal(h.server.stats.bytes.peerToClient, 13);

  // Forbidden peers -> 403; all or nothing.
  for (const ip of ['10.0.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '224.0.0.1', '0.0.0.1', '255.255.255.255']) {
    const f = await c.authed(Method.CreatePermission, peerAttr(ip, 1000));
    t.equal(errCode(f), 403, `403 for ${ip}`);
  }
  const mixed = await c.authed(Method.CreatePermission, (w) => (peerAttr('127.0.0.2', 1)(w), peerAttr('10.1.1.1', 1)(w)));
  t.equal(errCode(mixed), 403);
  t.equal(h.server.stats.permissions, 1, 'nothing of a refused request took effect');
  t.equal(errCode(await c.authed(Method.CreatePermission, peerAttr('2001:db8::1', 1))), 443, 'IPv6 peer on an IPv4 relay');
  t.equal(errCode(await c.authed(Method.CreatePermission)), 400, 'no XOR-PEER-ADDRESS');

  // Permission expiry (300 s) by the clock.
  h.clock.advance(301_000);
  t.equal(h.server.stats.permissions, 0);
  t.same(closed, ['expired']);
  t.equal(created[0]!.open, false);
  t.ok(h.events.events.some((e) => e.event_type === 'permission' && (e.permission as { action: string }).action === 'expired'));
  peer.sock.send(Buffer.from('after expiry'), relayPort, '127.0.0.1');
  sendIndication(c, '127.0.0.1', peer.port, Buffer.from('dropped too'));
  // Re-install: a new flow; the first things to arrive are the markers, not the dropped ones.
  c.nonce = undefined;
  t.equal((await c.authed(Method.CreatePermission, peerAttr('127.0.0.1', peer.port))).cls, Class.Success);
  t.equal(created.length, 2);
  t.not(created[1]!.id, created[0]!.id);
  sendIndication(c, '127.0.0.1', peer.port, Buffer.from('marker'));
  t.equal((await peer.next()).msg.toString(), 'marker');
  peer.sock.send(Buffer.from('marker2'), relayPort, '127.0.0.1');
  const di2 = decodeStun(await c.next(isDataIndication))!;
  t.equal(getAttr(di2, Attr.Data)!.toString(), 'marker2');
});

t.test('ChannelBind and ChannelData (RFC 8656 §11, §12)', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const { c, relayPort } = await allocated(h.udpPort);
  const peer = await peerSocket();
  const peer2 = await peerSocket();
  t.teardown(() => (c.close(), peer.close(), peer2.close()));
  const bind = (n: number, port: number, ip = '127.0.0.1') =>
    c.authed(Method.ChannelBind, (w) =>
      w.attr(Attr.ChannelNumber, Buffer.from([n >> 8, n & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, ip, port),
    );

  t.equal(errCode(await bind(0x3fff, peer.port)), 400, 'below range');
  t.equal(errCode(await bind(0x8000, peer.port)), 400, 'above range');
  t.equal(errCode(await c.authed(Method.ChannelBind, peerAttr('127.0.0.1', peer.port))), 400, 'no CHANNEL-NUMBER');
  t.equal(errCode(await bind(0x4001, 1, '10.0.0.1')), 403);
  const ok = await bind(0x4001, peer.port);
  t.equal(ok.cls, Class.Success);
  t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 3600))).cls, Class.Success);
  t.equal(h.server.stats.channels, 1);
  t.equal(h.server.stats.permissions, 1, 'ChannelBind installs the permission');
  t.equal((await bind(0x4001, peer.port)).cls, Class.Success, 'refresh of the same binding');
  t.equal(errCode(await bind(0x4001, peer2.port)), 400, 'channel bound to another peer');
  t.equal(errCode(await bind(0x4002, peer.port)), 400, 'peer bound to another channel');
  t.equal((await bind(0x4002, peer2.port)).cls, Class.Success);

  c.sendRaw(buildChannelData(0x4001, Buffer.from('via channel')));
  const got = await peer.next();
  t.equal(got.msg.toString(), 'via channel');
  t.equal(got.port, relayPort);
  c.sendRaw(Buffer.concat([buildChannelData(0x4002, Buffer.from('pad')), Buffer.alloc(1)]));
  t.equal((await peer2.next()).msg.toString(), 'pad', 'UDP padding tolerated');
  c.sendRaw(Buffer.from([0x40, 0x01, 0x00, 0x10, 1, 2])); // shorter than its length: dropped
  c.sendRaw(buildChannelData(0x4003, Buffer.from('unbound'))); // dropped
  c.sendRaw(buildChannelData(0x4001, Buffer.from('second')));
  t.equal((await peer.next()).msg.toString(), 'second', 'bad ChannelData dropped, good one relayed');

  peer.sock.send(Buffer.from('back'), relayPort, '127.0.0.1');
  const cd = parseChannelData(await c.next(isChannelData))!;
  t.equal(cd.channel, 0x4001);
  t.equal(cd.data.toString(), 'back');

  // Permission lapses at 300 s unless refreshed; the channel lives 600 s.
  h.clock.advance(290_000);
  t.equal((await bind(0x4001, peer.port)).cls, Class.Success, 'refresh channel (and permission)');
  h.clock.advance(20_000);
  t.equal(h.server.stats.channels, 2);
  t.equal(h.server.stats.permissions, 1);
  h.clock.advance(600_000);
  t.equal(h.server.stats.channels, 0, 'channels expired');
  // RFC 8656 §11: after expiry the number stays reserved for its peer for 5 minutes.
  t.equal(errCode(await bind(0x4001, peer2.port)), 400, 'quarantined number');
  t.equal((await bind(0x4001, peer.port)).cls, Class.Success, 'same peer may rebind it');
  h.clock.advance(600_000 + 301_000);
  t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 3600))).cls, Class.Success);
  t.equal((await bind(0x4001, peer2.port)).cls, Class.Success, 'reusable 5 minutes after expiry');
});

t.test('channel numbers: RFC 8656 range by default, RFC 5766 range only when configured', async (t) => {
  for (const [mut, want0x5000] of [
    [undefined, 400],
    [(c: GatehouseConfig) => void (c.turn.channel_numbers = 'rfc5766'), 0],
  ] as const) {
    const h = await startServer(mut);
    const { c } = await allocated(h.udpPort);
    const r = await c.authed(Method.ChannelBind, (w) =>
      w.attr(Attr.ChannelNumber, Buffer.from([0x50, 0, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9),
    );
    if (want0x5000) t.equal(errCode(r), 400, '0x5000 refused (RFC 8656 §12)');
    else t.equal(r.cls, Class.Success, '0x5000 accepted with channel_numbers: rfc5766');
    c.close();
    await h.close();
  }
});

t.test('RFC 8656 strict channel range option', async (t) => {
  const h = await startServer(undefined, { strictChannelRange: true });
  t.teardown(h.close);
  const { c } = await allocated(h.udpPort);
  t.teardown(() => c.close());
  const r = await c.authed(Method.ChannelBind, (w) =>
    w.attr(Attr.ChannelNumber, Buffer.from([0x50, 0, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9),
  );
  t.equal(errCode(r), 400);
  const r2 = await c.authed(Method.ChannelBind, (w) =>
    w.attr(Attr.ChannelNumber, Buffer.from([0x4f, 0xff, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9),
  );
  t.equal(r2.cls, Class.Success);
});

t.test('flow hooks: onPacket can drop, closeFlow tears down, permitPeer refuses', async (t) => {
  let dropNext = false;
  const seen: string[] = [];
  const h = await startServer(undefined, {
    flowHooks: {
      onPacket: (_f, dir, data) => {
        seen.push(`${dir}:${data.toString()}`);
        if (dropNext) {
          dropNext = false;
          return false;
        }
        return true;
      },
      permitPeer: (_info, ip) => ip !== '127.0.0.9',
    },
  });
  t.teardown(h.close);
  const { c, relayPort } = await allocated(h.udpPort);
  const peer = await peerSocket();
  t.teardown(() => (c.close(), peer.close()));
  t.equal(errCode(await c.authed(Method.CreatePermission, peerAttr('127.0.0.9', 1))), 403, 'refused by permitPeer');
  t.equal(
    (
      await c.authed(Method.ChannelBind, (w) =>
        w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x10, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', peer.port),
      )
    ).cls,
    Class.Success,
  );
  dropNext = true;
  c.sendRaw(buildChannelData(0x4010, Buffer.from('blocked')));
  c.sendRaw(buildChannelData(0x4010, Buffer.from('allowed')));
  t.equal((await peer.next()).msg.toString(), 'allowed');
  t.same(seen, ['c2p:blocked', 'c2p:allowed']);
  const flow = h.server.flows()[0]!;
  t.ok(flow);
  h.server.closeFlow(flow, 'policy');
  t.equal(h.server.stats.permissions, 0);
  t.equal(h.server.stats.channels, 0);
  t.equal(flow.open, false);
  peer.sock.send(Buffer.from('after close'), relayPort, '127.0.0.1');
  c.sendRaw(buildChannelData(0x4010, Buffer.from('after close')));
  // Prove nothing passed: a fresh permission then a marker arrives first at both ends.
  t.equal((await c.authed(Method.CreatePermission, peerAttr('127.0.0.1', peer.port))).cls, Class.Success);
  sendIndication(c, '127.0.0.1', peer.port, Buffer.from('marker'));
  t.equal((await peer.next()).msg.toString(), 'marker');
  t.notOk(seen.includes('p2c:after close'), 'peer data after close never reached the hook');
});

t.test('request extension: extra attributes, rejection, comprehension-required registration', async (t) => {
  const h = await startServer(undefined, {
    extensions: [
      {
        attributes: [0x0070],
        onRequest: (ctx) => {
          if (getAttr(ctx.msg, 0x0070)?.toString() === 'no') return { error: { code: 400, reason: 'Invalid WRITE-KEYS' } };
          t.equal(ctx.key.length, 16, 'extension sees the long-term key');
          return { attrs: [{ type: 0xc1a0, value: Buffer.from('key-request') }] };
        },
      },
    ],
  });
  t.teardown(h.close);
  const { c } = await allocated(h.udpPort);
  t.teardown(() => c.close());
  const ok = await c.authed(Method.CreatePermission, (w) => (peerAttr('127.0.0.1', 5)(w), w.attr(0x0070, 'yes')));
  t.equal(ok.cls, Class.Success);
  t.equal(getAttr(ok, 0xc1a0)!.toString(), 'key-request');
  t.ok(verifyIntegrity(ok, c.key()), 'integrity covers the extension attribute');
  const no = await c.authed(Method.CreatePermission, (w) => (peerAttr('127.0.0.2', 5)(w), w.attr(0x0070, 'no')));
  t.equal(errCode(no), 400);
  t.ok(verifyIntegrity(no, c.key()));
  t.equal(h.server.stats.permissions, 1, 'rejected request took no effect');
});
