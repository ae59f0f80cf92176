/**
 * The native UDP fast path (native/fastpath.c, src/turn/fastpath.ts, `turn.fast_path:
 * auto`): peer -> client relayed in C for hook-free flows, the same wire results as the
 * JS path (RFC 8656 §12.5 ChannelData, §11.3 Data indications), permissions by IP only
 * (§9), flows with a per-packet hook handed to JS, and expiry checked in C on every
 * packet even when no JS timer runs. The addon is built by `npm run build:native` (CI
 * builds it): without it these tests fail in CI and skip elsewhere.
 */
import t, { type Test } from 'tap';
import { createSocket } from 'node:dgram';
import { spawn, type ChildProcess } from 'node:child_process';
import { defaultConfig } from '../../../src/config/config.js';
import { TurnServer } from '../../../src/turn/server.js';
import { requirePeer } from '../../e2e/helpers/require-peer.js';
import { createMetrics } from '../../../src/admin/metrics.js';
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
import { buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import { FastPath } from '../../../src/turn/fastpath.js';
import { bindUdp } from '../../../src/turn/relay.js';
import { listenUdp } from '../../../src/turn/listeners.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';
import type { Allocation, Channel, Permission } from '../../../src/turn/state.js';
import { Client, mirroredFlow, peerSocket, startServer, fastPathForTests } from './helpers.js';

const { addon, skip } = fastPathForTests(t);

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const isDataInd = (b: Buffer): boolean => b.length >= 20 && b.readUInt16BE(0) === 0x0017;
const isCd = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x4f;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function allocated(port: number): Promise<{ c: Client; relayPort: number }> {
  const c = await Client.udp(port);
  const r = await c.authed(Method.Allocate, udpTransport);
  if (r.cls !== Class.Success) throw new Error('allocate failed');
  return { c, relayPort: getXorAddress(r, Attr.XorRelayedAddress)!.port };
}

const bindReq = (c: Client, n: number, ip: string, port: number) =>
  c.authed(Method.ChannelBind, (w) =>
    w.attr(Attr.ChannelNumber, Buffer.from([n >> 8, n & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, ip, port),
  );

t.test('peer -> client in C: ChannelData, Data indications, permissions by IP', { skip }, async (t) => {
  const h = await startServer((c) => void (c.turn.fast_path = 'auto'));
  t.teardown(h.close);
  t.ok(h.server.fastPath(), 'the fast path is in use');
  const { c, relayPort } = await allocated(h.udpPort);
  const p1 = await peerSocket();
  const p2 = await peerSocket(); // same IP, another port: one permission (RFC 8656 §9)
  const stranger = await peerSocket('127.0.0.2');
  t.teardown(() => (c.close(), p1.close(), p2.close(), stranger.close()));

  t.equal((await bindReq(c, 0x4001, '127.0.0.1', p1.port)).cls, Class.Success);
  stranger.sock.send(Buffer.from('no permission'), relayPort, '127.0.0.1');
  p1.sock.send(Buffer.from('via channel'), relayPort, '127.0.0.1');
  const cd = parseChannelData(await c.next(isCd))!;
  t.same([cd.channel, cd.data.toString()], [0x4001, 'via channel'], 'ChannelData for the bound peer (§12.5)');

  // 5 octets: the DATA attribute is padded to 4 (RFC 8489 §14); XOR-PEER-ADDRESS names p2.
  p2.sock.send(Buffer.from('odd!!'), relayPort, '127.0.0.1');
  const raw = await c.next(isDataInd);
  t.equal(raw.length % 4, 0, 'padded');
  const di = decodeStun(raw)!;
  t.ok(di, 'a well-formed STUN message');
  t.same(getXorAddress(di, Attr.XorPeerAddress), { family: 4, address: '127.0.0.1', port: p2.port });
  t.equal(getAttr(di, Attr.Data)!.toString(), 'odd!!', 'Data indication for an unbound port of a permitted IP (§11.3)');
  const di2 = decodeStun(await (p2.sock.send(Buffer.from('again'), relayPort, '127.0.0.1'), c.next(isDataInd)))!;
  t.not(di2.transactionId.toString('hex'), di.transactionId.toString('hex'), 'a new transaction ID per indication (RFC 8489 §6)');
  await sleep(50);
  t.equal(
    c.inbox.filter((b) => isDataInd(b) && getAttr(decodeStun(b)!, Attr.Data)?.toString() === 'no permission').length,
    0,
    'no permission: dropped',
  );
  t.equal(h.server.stats.packets.peerToClient, 3);
  t.equal(h.server.stats.bytes.peerToClient, 11 + 5 + 5);
  t.ok(h.server.fastPath()!.batches >= 3, 'read in C');

  // Client -> peer stays in JS and works alongside.
  c.sendRaw(buildChannelData(0x4001, Buffer.from('out')));
  t.equal((await p1.next()).msg.toString(), 'out');

  // The permission expires on the JS clock (sweep): C drops at once.
  h.clock.advance(301_000);
  t.equal(h.server.stats.permissions, 0);
  p1.sock.send(Buffer.from('late'), relayPort, '127.0.0.1');
  await sleep(100);
  t.equal(c.inbox.filter(isCd).length, 0, 'nothing after the permission expired');
  // Back with CreatePermission: the still-bound channel carries it again (§12.5).
  c.nonce = undefined;
  t.equal((await c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 1))).cls, Class.Success);
  p1.sock.send(Buffer.from('back'), relayPort, '127.0.0.1');
  t.equal(parseChannelData(await c.next(isCd))!.data.toString(), 'back');

  // Refresh LIFETIME 0 deletes the allocation (§8): its relay socket is read no more.
  t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0))).cls, Class.Success);
  p1.sock.send(Buffer.from('gone'), relayPort, '127.0.0.1');
  await sleep(100);
  t.equal(c.inbox.filter(isCd).length, 0, 'nothing after the allocation went');
});

t.test('flows with a per-packet hook are handed to JS, one call per batch', { skip }, async (t) => {
  const seen: string[] = [];
  const h = await startServer((c) => void (c.turn.fast_path = 'auto'), {
    flowHooks: {
      onPacket: (_f, dir, data) => {
        seen.push(`${dir}:${data.toString()}`);
        return !data.toString().startsWith('drop');
      },
    },
  });
  t.teardown(h.close);
  const { c, relayPort } = await allocated(h.udpPort);
  const p1 = await peerSocket();
  t.teardown(() => (c.close(), p1.close()));
  t.equal((await bindReq(c, 0x4001, '127.0.0.1', p1.port)).cls, Class.Success);
  p1.sock.send(Buffer.from('drop me'), relayPort, '127.0.0.1');
  p1.sock.send(Buffer.from('keep me'), relayPort, '127.0.0.1');
  const cd = parseChannelData(await c.next(isCd))!;
  t.equal(cd.data.toString(), 'keep me', 'the hook dropped the first, passed the second');
  t.same(seen, ['p2c:drop me', 'p2c:keep me'], 'the hook saw every peer datagram');
  t.equal(h.server.stats.packets.peerToClient, 1);
});

t.test('a hooked flow: a burst of client -> peer datagrams goes out in C, all of them, in order', { skip }, async (t) => {
  // The listener is read in C; what the hook passes during a batch call is queued there
  // and sent with sendmmsg after it returns.
  const seen: string[] = [];
  const h = await startServer((c) => void (c.turn.fast_path = 'auto'), {
    flowHooks: { onPacket: (_f, dir, data) => (seen.push(`${dir}:${data.toString()}`), true) },
  });
  t.teardown(h.close);
  const { c } = await allocated(h.udpPort);
  const p1 = await peerSocket();
  t.teardown(() => (c.close(), p1.close()));
  t.equal((await bindReq(c, 0x4001, '127.0.0.1', p1.port)).cls, Class.Success);
  const sent = Array.from({ length: 40 }, (_, i) => `burst ${i}`);
  for (const m of sent) c.sendRaw(buildChannelData(0x4001, Buffer.from(m)));
  const got: string[] = [];
  for (let i = 0; i < sent.length; i++) got.push((await p1.next()).msg.toString());
  t.same(got, sent, 'every datagram at the peer, in the order sent');
  t.same(
    seen,
    sent.map((m) => `c2p:${m}`),
    'each through the hook first',
  );
  const fp = h.server.fastPath()!;
  t.comment(`read in ${fp.listenerBatches} listener batches`);
  t.ok(fp.listenerBatches > 0, 'the listener was read in C');
  t.equal(fp.sendDropped, 0, 'nothing lost');
  t.equal(h.server.stats.packets.clientToPeer, sent.length);
});

t.test('two servers in one process: each batch goes to the server whose relay read it', { skip }, async (t) => {
  // The addon has one callback per process; a second server used to take it, and the
  // first server's hooked flows then lost every peer datagram (and its counters).
  const seen: string[] = [];
  const a = await startServer((c) => void (c.turn.fast_path = 'auto'), {
    flowHooks: { onPacket: (_f, dir, data) => (seen.push(`${dir}:${data.toString()}`), true) },
  });
  t.teardown(a.close);
  const ca = await allocated(a.udpPort);
  const pa = await peerSocket();
  t.teardown(() => (ca.c.close(), pa.close()));
  t.equal((await bindReq(ca.c, 0x4001, '127.0.0.1', pa.port)).cls, Class.Success);

  const b = await startServer((c) => ((c.turn.fast_path = 'auto'), (c.turn.relay_ports = [45000, 45999])));
  t.teardown(b.close);
  t.ok(a.server.fastPath() && b.server.fastPath(), 'both use the fast path');
  const cb = await allocated(b.udpPort);
  const pb = await peerSocket();
  t.teardown(() => (cb.c.close(), pb.close()));
  t.equal((await bindReq(cb.c, 0x4002, '127.0.0.1', pb.port)).cls, Class.Success);

  pa.sock.send(Buffer.from('to a'), ca.relayPort, '127.0.0.1');
  t.equal(parseChannelData(await ca.c.next(isCd))!.data.toString(), 'to a', "the first server's hooked flow still relays");
  t.same(seen, ['p2c:to a'], 'through its own hook');
  pb.sock.send(Buffer.from('to b!'), cb.relayPort, '127.0.0.1');
  t.equal(parseChannelData(await cb.c.next(isCd))!.data.toString(), 'to b!', "the second server's flow relays in C");
  await sleep(50);
  t.same([a.server.stats.packets.peerToClient, a.server.stats.bytes.peerToClient], [1, 4], 'counters of the first server: its packet only');
  t.same(
    [b.server.stats.packets.peerToClient, b.server.stats.bytes.peerToClient],
    [1, 5],
    'counters of the second server: its packet only',
  );
});

t.test('expiry is checked in C on every packet, with no JS timer running', { skip }, async (t) => {
  // A clock that never fires its timers: the JS sweep never runs (a "late timer").
  let now = 1_000_000;
  const clock = { now: () => now, setTimeout: () => ({ cancel() {} }), setInterval: () => ({ cancel() {} }) };
  const sup = new Supervisor(silentLogger, 10, () => now);
  const stats = { packets: { clientToPeer: 0, peerToClient: 0 }, bytes: { clientToPeer: 0, peerToClient: 0 } };
  const slow: string[] = [];
  const fp = new FastPath(addon!, clock, silentLogger, sup, stats, true, (_a, _p, m) => void slow.push(m.toString()));
  const listener = await listenUdp('127.0.0.1', 0, 0, sup, silentLogger, () => {});
  const relay = await bindUdp('udp4', '127.0.0.1', 0);
  const client = createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  const got: Buffer[] = [];
  client.on('message', (m) => void got.push(m));
  const peer = await peerSocket();
  t.teardown(() => (fp.close(), listener.socket.close(), relay.close(), client.close(), peer.close()));

  const { a, perm, ch } = mirroredFlow({
    id: 'x',
    listener,
    relay,
    clientPort: client.address().port,
    peerPort: peer.port,
    now,
    allocationMs: 60_000,
    permissionMs: 300,
    channelMs: 60_000,
  });
  fp.added(a);
  fp.permission(a, perm);
  // A batch C forwarded or dropped whole makes no call into JS: its counts are read from C.
  let jsBatches = 0;
  const viaJs = fp.batch;
  (fp as unknown as { batch: () => void }).batch = () => {
    jsBatches++;
    viaJs();
  };
  const relayPort = relay.address().port;
  const waitFor = async (n: number): Promise<void> => {
    for (let i = 0; i < 100 && got.length < n; i++) await sleep(10);
  };
  peer.sock.send(Buffer.from('in time'), relayPort, '127.0.0.1');
  await waitFor(1);
  t.same(
    got.map((b) => [b.readUInt16BE(0), b.subarray(4).toString()]),
    [[0x4005, 'in time']],
    'ChannelData while the permission lives',
  );
  await sleep(400); // past the permission's 300 ms; the clock above did not move, no sweep ran
  peer.sock.send(Buffer.from('too late'), relayPort, '127.0.0.1');
  await sleep(150);
  t.equal(got.length, 1, 'dropped in C after the permission expired (RFC 8656 §9)');
  t.equal(fp.counters.expired, 1);

  // Refreshed permission, then an allocation whose time runs out (RFC 8656 §6).
  now += 400;
  perm.expiresAt = now + 60_000;
  fp.permission(a, perm);
  a.expiresAt = now + 200;
  fp.refreshed(a);
  peer.sock.send(Buffer.from('alloc alive'), relayPort, '127.0.0.1');
  await waitFor(2);
  t.equal(got.length, 2);
  await sleep(300);
  peer.sock.send(Buffer.from('alloc expired'), relayPort, '127.0.0.1');
  await sleep(150);
  t.equal(got.length, 2, 'dropped in C after the allocation expired');
  t.equal(fp.counters.expired, 2);
  t.same(slow, [], 'nothing handed to JS for an eligible flow');
  t.equal(jsBatches, 0, 'no call into JS for the batches C forwarded or dropped whole');
  t.equal(fp.counters.batches, 4, 'the four datagrams were read in C, one batch each');
  t.same([stats.packets.peerToClient, stats.bytes.peerToClient], [2, 18], 'what C forwarded is in the stats, read from C');

  // The channel's own expiry (§12): the datagram goes to JS, which decides.
  a.expiresAt = now + 60_000;
  fp.refreshed(a);
  ch.expiresAt = now + 100;
  fp.channel(a, ch);
  await sleep(200);
  peer.sock.send(Buffer.from('channel expired'), relayPort, '127.0.0.1');
  for (let i = 0; i < 50 && slow.length === 0; i++) await sleep(10);
  t.same(slow, ['channel expired'], 'a channel past its time is not used in C');
  t.equal(jsBatches, 1, 'the batch with a datagram for JS: one call');
  fp.deleted(a);
  peer.sock.send(Buffer.from('closed'), relayPort, '127.0.0.1');
  await sleep(100);
  t.equal(got.length, 2, 'after deleted(): nothing read');
  t.equal(slow.length, 1);
});

t.test('a socket error (ICMP port unreachable) does not stop the relay socket being read in C', { skip }, async (t) => {
  // libuv stops a poll handle on POLLERR; a UDP socket reports one for an ICMP error
  // (RFC 8656 §11.5) when connected, or with IP_RECVERR. The relay must read on.
  const now = 1_000_000;
  const clock = { now: () => now, setTimeout: () => ({ cancel() {} }), setInterval: () => ({ cancel() {} }) };
  const sup = new Supervisor(silentLogger, 10, () => now);
  const stats = { packets: { clientToPeer: 0, peerToClient: 0 }, bytes: { clientToPeer: 0, peerToClient: 0 } };
  const fp = new FastPath(addon!, clock, silentLogger, sup, stats, true, () => {});
  const listener = await listenUdp('127.0.0.1', 0, 0, sup, silentLogger, () => {});
  const probe = createSocket('udp4');
  await new Promise<void>((r) => probe.bind(0, '127.0.0.1', () => r()));
  const fixedPort = probe.address().port;
  await new Promise<void>((r) => probe.close(() => r()));
  // An explicit port, as relay ports are (RFC 8656 §7.2): disconnect() would unbind an
  // ephemeral one.
  const relay = await bindUdp('udp4', '127.0.0.1', fixedPort);
  const client = createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  const got: Buffer[] = [];
  client.on('message', (m) => void got.push(m));
  const peer = await peerSocket();
  const shut = createSocket('udp4');
  await new Promise<void>((r) => shut.bind(0, '127.0.0.1', () => r()));
  const unreachable = shut.address().port;
  await new Promise<void>((r) => shut.close(() => r()));
  t.teardown(() => (fp.close(), listener.socket.close(), relay.close(), client.close(), peer.close()));
  const a = {
    id: 'e',
    ep: { udp: listener, sendAddress: '127.0.0.1', remotePort: client.address().port },
    socket: relay,
    expiresAt: now + 60_000,
    deleted: false,
  } as unknown as Allocation;
  const perm = {
    ip: '127.0.0.1',
    ipBytes: Buffer.from([127, 0, 0, 1]),
    expiresAt: now + 60_000,
    flow: {},
    channelsByPort: new Map(),
  } as unknown as Permission;
  const relayPort = relay.address().port;
  fp.added(a);
  fp.permission(a, perm);
  // A connected relay socket sends to a closed port: the ICMP error is pending on it.
  await new Promise<void>((r) => relay.connect(unreachable, '127.0.0.1', () => r()));
  relay.send(Buffer.from('x'));
  await sleep(100);
  relay.disconnect();
  peer.sock.send(Buffer.from('after the error'), relayPort, '127.0.0.1');
  for (let i = 0; i < 100 && got.length === 0; i++) await sleep(10);
  t.equal(got.length, 1, 'the next peer datagram is still relayed in C');
  t.equal(got[0] && getAttr(decodeStun(got[0])!, Attr.Data)?.toString(), 'after the error');
  fp.deleted(a);
});

t.test('a real client: coturn turnutils_uclient through the fast path (channels, Send/Data, client-to-client)', { skip }, async (t) => {
  if (!requirePeer(t, 'turnutils_uclient', 'turnutils_peer')) return;
  const cfg = defaultConfig();
  cfg.turn.listen = ['udp://127.0.0.1:0'];
  cfg.turn.relay_address = '127.0.0.1';
  cfg.turn.relay_ports = [38000, 39999];
  cfg.turn.peers.allow = ['127.0.0.0/8'];
  cfg.turn.max_allocations_per_user = 100;
  cfg.turn.channel_numbers = 'rfc5766'; // turnutils_uclient's channel numbers
  cfg.turn.fast_path = 'auto';
  const server = new TurnServer({
    config: cfg,
    users: { lookup: (n) => (n === 'alice' ? { name: 'alice', password: 'wonderland', groups: [] } : undefined) },
  });
  await server.start();
  const port = server.addresses()[0]!.port;
  const probe = createSocket('udp4');
  await new Promise<void>((r) => probe.bind(0, '127.0.0.1', () => r()));
  const peerPort = probe.address().port;
  await new Promise<void>((r) => probe.close(() => r()));
  const kids: ChildProcess[] = [];
  const peer = spawn('turnutils_peer', ['-p', String(peerPort), '-L', '127.0.0.1'], { stdio: 'ignore' });
  kids.push(peer);
  t.teardown(async () => {
    for (const k of kids) k.kill('SIGKILL');
    await server.stop();
  });
  await sleep(300);
  const run = (args: string[]): Promise<string> =>
    new Promise((resolve) => {
      const c = spawn('turnutils_uclient', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      kids.push(c);
      let out = '';
      c.stdout!.on('data', (d) => (out += d));
      c.stderr!.on('data', (d) => (out += d));
      const timer = setTimeout(() => c.kill('SIGKILL'), 90_000);
      c.on('close', () => (clearTimeout(timer), resolve(out)));
    });
  const base = [
    '-u',
    'alice',
    '-w',
    'wonderland',
    '-e',
    '127.0.0.1',
    '-r',
    String(peerPort),
    '-n',
    '200',
    '-l',
    '170',
    '-z',
    '1',
    '-p',
    String(port),
  ];
  // What /metrics shows of the fast path (gatehouse_turn_fast_path_*_total, src/admin/metrics.ts).
  const registry = createMetrics(() => server.stats, { fastPath: () => server.fastPath() });
  const scrape = async (name: string): Promise<number> =>
    Number(new RegExp(`^gatehouse_turn_fast_path_${name}_total (\\d+)$`, 'm').exec(await registry.metrics())?.[1] ?? NaN);
  for (const [name, extra] of [
    ['channels', ['-m', '5']],
    ['Send/Data indications (-s)', ['-s']],
    ['client-to-client (-y)', ['-y']],
  ] as const) {
    const sendsBefore = await scrape('send_indications');
    const out = await run([...extra, ...base, '127.0.0.1']);
    const sr = [...out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/gm)].pop();
    const lost = /Total lost packets (\d+)/.exec(out);
    t.ok(sr && lost, `${name}: uclient printed its totals`);
    if (!sr || !lost) {
      t.comment(out.slice(-1500));
      continue;
    }
    t.ok(Number(sr[1]) > 0, `${name}: sent ${sr[1]}`);
    t.equal(sr[2], sr[1], `${name}: every message came back`);
    t.equal(lost[1], '0', `${name}: 0 lost`);
    const sends = (await scrape('send_indications')) - sendsBefore;
    if (name.endsWith('(-s)'))
      // RFC 8656 §11.2 in C: the Send indications of the run (the echoes come back as Data
      // indications, §11.3, in C too). One sent right after a request of its client in the
      // same recvmmsg batch follows it to JS (the client's order is kept), hence "nearly".
      t.ok(
        sends <= Number(sr[1]) && sends >= 0.95 * Number(sr[1]),
        `${name}: ${sends} Send indications forwarded in C for ${sr[1]} messages (/metrics)`,
      );
    else t.equal(sends, 0, `${name}: no Send indication (ChannelData)`);
  }
  t.equal(await scrape('send_dropped'), 0, '/metrics: no send lost in C');
  t.equal(await scrape('expired'), 0);
  t.ok(server.fastPath()!.batches > 0, 'the peer -> client direction went through C');
  t.ok(server.fastPath()!.listenerBatches > 0, 'the listener was read in C');
  t.ok(server.fastPath()!.clientToPeer > 0, 'client -> peer ChannelData went out in C (RFC 5766 channel numbers)');
  t.ok(server.stats.packets.peerToClient > 0);
});

// ---------------------------------------------------------------------------------------
// Client -> peer in C (the UDP listener read by the addon, issue 13 step 1).

/** A Send indication (RFC 8656 §11.2): XOR-PEER-ADDRESS and DATA, no integrity. */
function sendIndication(ip: string, port: number, data: Buffer): Buffer {
  const w = new StunWriter();
  w.reset(messageType(Method.Send, Class.Indication), randomBytes(12));
  w.xorAddress(Attr.XorPeerAddress, ip, port);
  w.attr(Attr.Data, data);
  return w.copy();
}

/** A ChannelData message whose Length (RFC 8656 §12.4) says `claimed` over `data`. */
const rawCd = (n: number, claimed: number, data: Buffer): Buffer =>
  Buffer.concat([Buffer.from([n >> 8, n & 255, claimed >> 8, claimed & 255]), data]);

interface Outcome {
  atP1: string[];
  atP2: string[];
  atClient: string[];
  events: string[];
  stats: { c2p: number[]; p2c: number[] };
  hook: string[];
  fast: ReturnType<TurnServer['fastPath']>;
}

/**
 * One scenario, run with fast_path off and auto: every kind of datagram a client sends on
 * the listener, and what came out (at the peers, at the client, events, counters).
 */
async function clientScenario(t: Test, mode: 'off' | 'auto', hooked: boolean): Promise<Outcome> {
  const hook: string[] = [];
  const h = await startServer(
    (c) => void (c.turn.fast_path = mode),
    hooked ? { flowHooks: { onPacket: (_f, dir, data) => (hook.push(`${dir}:${data.toString()}`), true) } } : {},
  );
  const { c, relayPort } = await allocated(h.udpPort);
  const p1 = await peerSocket();
  const p2 = await peerSocket();
  const out: Outcome = { atP1: [], atP2: [], atClient: [], events: [], stats: { c2p: [], p2c: [] }, hook, fast: null };
  p1.sock.on('message', (m) => void out.atP1.push(m.toString()));
  p2.sock.on('message', (m) => void out.atP2.push(m.toString()));
  try {
    // STUN is still answered on the listener C reads (RFC 8489 §6.3: Binding).
    t.equal((await c.request(Method.Binding)).cls, Class.Success, `${mode}: Binding answered`);
    t.equal((await bindReq(c, 0x4001, '127.0.0.1', p1.port)).cls, Class.Success);
    // RFC 8656 §12.4/§12.5: over UDP the padding may be absent or present.
    c.sendRaw(rawCd(0x4001, 9, Buffer.from('unpadded!')));
    c.sendRaw(rawCd(0x4001, 5, Buffer.from('abcde\0\0\0')));
    c.sendRaw(rawCd(0x4001, 50, Buffer.from('too short!'))); // §12.6: shorter than its Length
    c.sendRaw(rawCd(0x4002, 4, Buffer.from('none'))); // §12.6: unbound channel
    c.sendRaw(sendIndication('127.0.0.1', p2.port, Buffer.from('via send'))); // §11.2
    c.sendRaw(rawCd(0x4001, 5, Buffer.from('after')));
    for (let i = 0; i < 200 && (out.atP1.length < 3 || out.atP2.length < 1); i++) await sleep(10);
    await sleep(100); // anything more would have come by now
    p1.sock.send(Buffer.from('back'), relayPort, '127.0.0.1');
    out.atClient.push(parseChannelData(await c.next(isCd))!.data.toString());
    // The permission expires on the JS clock (sweep, RFC 8656 §9): nothing goes out.
    h.clock.advance(301_000);
    c.sendRaw(rawCd(0x4001, 4, Buffer.from('late')));
    c.sendRaw(sendIndication('127.0.0.1', p2.port, Buffer.from('late send')));
    await sleep(150);
    out.events = h.events.events.map((e) => {
      const x = e as unknown as { event_type: string; allocation?: { action: string }; permission?: { action: string; channel?: number } };
      return `${x.event_type}:${x.allocation?.action ?? x.permission?.action}:${x.permission?.channel ?? ''}`;
    });
    const s = h.server.stats;
    out.stats = { c2p: [s.packets.clientToPeer, s.bytes.clientToPeer], p2c: [s.packets.peerToClient, s.bytes.peerToClient] };
    out.fast = h.server.fastPath();
  } finally {
    c.close();
    p1.close();
    p2.close();
    await h.close();
  }
  return out;
}

t.test('client -> peer: the same delivered bytes and events with fast_path off and auto', async (t) => {
  const off = await clientScenario(t, 'off', false);
  t.same(off.atP1, ['unpadded!', 'abcde', 'after'], 'off: ChannelData with and without padding; the malformed and unbound ones dropped');
  t.same(off.atP2, ['via send'], 'off: the Send indication');
  t.same(off.atClient, ['back']);
  t.same(off.stats, { c2p: [4, 9 + 5 + 8 + 5], p2c: [1, 4] });
  t.equal(off.fast, null, 'off: no fast path');
  if (!addon) {
    if (process.env.CI) t.fail('the fast path addon is not built (npm run build:native) in CI');
    return;
  }
  const auto = await clientScenario(t, 'auto', false);
  t.same(
    [auto.atP1, auto.atP2, auto.atClient, auto.events, auto.stats],
    [off.atP1, off.atP2, off.atClient, off.events, off.stats],
    'auto: the same datagrams at the peers and the client, the same events and counters',
  );
  t.ok(off.events.includes('permission:expired:'), 'the events include the permission expiry');
  t.ok(auto.fast!.listenerBatches > 0, 'auto: the listener was read in C');
  // The first two always go out in C. The Send indication (RFC 8656 §11.2, in C too when
  // JS would relay it) and 'after' follow the unbound channel that went to JS: in the same
  // batch they go to JS too (the client's order is kept), in a later one in C.
  const inC = auto.fast!.clientToPeer;
  t.ok(inC >= 2 && inC <= 4, `auto: ChannelData and Send went out in C (${inC} of 4)`);
  t.ok(auto.fast!.sendIndications <= 1, 'auto: the Send indication counted when C sent it');
  t.equal(auto.fast!.malformed, 1, 'auto: the short one was dropped in C');
});

t.test('a server with a per-packet hook: its listener is read in C, the hook sees every datagram', { skip }, async (t) => {
  const off = await clientScenario(t, 'off', true);
  // What the hook let through goes to the peer out of the relay socket in C (sendTo), not dgram.
  let sentInC = 0;
  const viaDgram = FastPath.prototype.sendToPeer;
  FastPath.prototype.sendToPeer = function (this: FastPath, ...args: Parameters<FastPath['sendToPeer']>): boolean {
    const sent = viaDgram.apply(this, args);
    if (sent) sentInC++;
    return sent;
  };
  t.teardown(() => void (FastPath.prototype.sendToPeer = viaDgram));
  const auto = await clientScenario(t, 'auto', true);
  t.equal(sentInC, 4, 'the four client -> peer datagrams the hook passed went out in C');
  t.same(auto.hook, ['c2p:unpadded!', 'c2p:abcde', 'c2p:via send', 'c2p:after', 'p2c:back'], 'every datagram through the hook');
  t.same([auto.atP1, auto.atP2, auto.events, auto.stats], [off.atP1, off.atP2, off.events, off.stats], 'as with fast_path off');
  t.same(auto.hook, off.hook);
  t.ok(auto.fast!.listenerBatches > 0, 'the listener was read in C');
  t.equal(auto.fast!.clientToPeer, 0, 'nothing forwarded in C without the hook (every datagram went to JS)');
});

t.test('client -> peer expiry is checked in C on every datagram, with no JS timer running', { skip }, async (t) => {
  // A clock that never fires its timers: the JS sweep never runs (a "late timer").
  let now = 1_000_000;
  const clock = { now: () => now, setTimeout: () => ({ cancel() {} }), setInterval: () => ({ cancel() {} }) };
  const sup = new Supervisor(silentLogger, 10, () => now);
  const stats = { packets: { clientToPeer: 0, peerToClient: 0 }, bytes: { clientToPeer: 0, peerToClient: 0 } };
  const fp = new FastPath(addon!, clock, silentLogger, sup, stats, true, () => {});
  const toJs: { msg: string; address: string; port: number; family: string }[] = [];
  const listener = await listenUdp('127.0.0.1', 0, 0, sup, silentLogger, (_l, m, r) => {
    toJs.push({ msg: m.toString('latin1'), address: r.address, port: r.port, family: r.family });
  });
  t.ok(fp.takeListener(listener, 0x4f), 'C reads the listener');
  const relay = await bindUdp('udp4', '127.0.0.1', 0);
  const client = createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  const other = createSocket('udp4');
  await new Promise<void>((r) => other.bind(0, '127.0.0.1', () => r()));
  const peer = await peerSocket();
  const atPeer: string[] = [];
  peer.sock.on('message', (m) => void atPeer.push(m.toString()));
  t.teardown(() => (fp.close(), listener.socket.close(), relay.close(), client.close(), other.close(), peer.close()));
  const { a, perm, ch } = mirroredFlow({
    id: 'c',
    listener,
    relay,
    clientPort: client.address().port,
    peerPort: peer.port,
    now,
    allocationMs: 60_000,
    permissionMs: 300,
    channelMs: 60_000,
  });
  fp.added(a);
  fp.permission(a, perm);
  const lport = listener.port;
  const send = (s: typeof client, b: Buffer): void => void s.send(b, lport, '127.0.0.1');
  const settle = async (cond: () => boolean): Promise<void> => {
    for (let i = 0; i < 100 && !cond(); i++) await sleep(10);
    await sleep(50);
  };

  send(client, buildChannelData(0x4005, Buffer.from('in time')));
  await settle(() => atPeer.length >= 1);
  t.same(atPeer, ['in time'], 'ChannelData to the peer while channel, permission and allocation live');
  t.equal(fp.counters.clientToPeer, 1);
  t.same(stats.packets.clientToPeer, 1, 'counted in the stats as peer -> client are');
  t.equal(stats.bytes.clientToPeer, 7);

  // Malformed (§12.6: shorter than its Length): dropped in C, JS does not see it either.
  send(client, rawCd(0x4005, 40, Buffer.from('short')));
  // Not ChannelData for C: STUN-range and unknown clients go to the listener's handler.
  send(client, Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
  send(other, buildChannelData(0x4005, Buffer.from('stranger')));
  await settle(() => toJs.length >= 2);
  t.equal(fp.counters.malformed, 1, 'the short ChannelData dropped in C');
  t.same(
    toJs.map((x) => [x.msg.length, x.address, x.port, x.family]),
    [
      [20, '127.0.0.1', client.address().port, 'IPv4'],
      [12, '127.0.0.1', other.address().port, 'IPv4'],
    ],
    'STUN and an unknown client handed to JS with the rinfo dgram would give',
  );
  t.equal(toJs[1]!.msg.slice(4), 'stranger');
  t.same(atPeer, ['in time']);

  await sleep(400); // past the permission's 300 ms; the clock above did not move, no sweep ran
  send(client, buildChannelData(0x4005, Buffer.from('perm expired')));
  await settle(() => fp.counters.expired >= 1);
  t.same(atPeer, ['in time'], 'dropped in C after the permission expired (RFC 8656 §9)');
  t.equal(fp.counters.expired, 1);

  // Refreshed permission; then the channel binding's own time runs out (§12).
  now += 400;
  perm.expiresAt = now + 60_000;
  fp.permission(a, perm);
  send(client, buildChannelData(0x4005, Buffer.from('refreshed')));
  await settle(() => atPeer.length >= 2);
  t.same(atPeer, ['in time', 'refreshed']);
  ch.expiresAt = now + 100;
  fp.channel(a, ch);
  await sleep(200);
  send(client, buildChannelData(0x4005, Buffer.from('channel expired')));
  await settle(() => fp.counters.expired >= 2);
  t.same(atPeer, ['in time', 'refreshed'], 'dropped in C after the channel binding expired');
  t.equal(fp.counters.expired, 2);

  // And the allocation's (§6).
  ch.expiresAt = now + 60_000;
  fp.channel(a, ch);
  a.expiresAt = now + 100;
  fp.refreshed(a);
  await sleep(200);
  send(client, buildChannelData(0x4005, Buffer.from('allocation expired')));
  await settle(() => fp.counters.expired >= 3);
  t.same(atPeer, ['in time', 'refreshed'], 'dropped in C after the allocation expired');
  t.equal(toJs.length, 2, 'none of the expired ones reached JS');

  // deleted(): the client is unknown to C, its ChannelData goes to JS (which drops it).
  fp.deleted(a);
  send(client, buildChannelData(0x4005, Buffer.from('deleted')));
  await settle(() => toJs.length >= 3);
  t.equal(toJs[2]?.msg.slice(4), 'deleted');
  t.same(atPeer, ['in time', 'refreshed']);
});
