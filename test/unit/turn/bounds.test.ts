/** Bounds (README "Limits"): caps answered 508, connection caps at accept, idle close, rates. */
import t from 'tap';
import { connect, type Socket as NetSocket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Attr, Class, Method, StunWriter, getString, getXorAddress, messageType, type StunWriter as W } from '../../../src/wire/stun.js';
import { ManualClock } from '../../../src/util/clock.js';
import { RateLimiter } from '../../../src/turn/limits.js';
import { Client, errCode, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const peers =
  (...ips: string[]) =>
  (w: W): void => {
    for (const ip of ips) w.xorAddress(Attr.XorPeerAddress, ip, 9);
  };
const bindCh =
  (n: number, ip: string, port: number) =>
  (w: W): void =>
    void w.attr(Attr.ChannelNumber, Buffer.from([n >> 8, n & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, ip, port);
const binding = (): Buffer => new StunWriter().reset(messageType(Method.Binding, Class.Request), randomBytes(12)).copy();

async function allocated(port: number, user = 'alice', password = 'secret'): Promise<Client> {
  const c = await Client.udp(port);
  c.username = user;
  c.password = password;
  const r = await c.authed(Method.Allocate, udpTransport);
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  return c;
}

function closed(s: NetSocket): Promise<void> {
  return new Promise((r) => (s.destroyed ? r() : s.once('close', () => r())));
}

async function tcp(port: number): Promise<NetSocket> {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => {});
  await new Promise<void>((r) => s.once('connect', () => r()));
  return s;
}

/** Binding over a raw TCP socket; resolves with true when answered. */
function answers(s: NetSocket): Promise<boolean> {
  return new Promise((r) => {
    s.once('data', () => r(true));
    s.once('close', () => r(false));
    s.write(binding());
  });
}

t.test('permissions per allocation: 508 beyond the cap, refreshes still fine (RFC 8656 §10.2, §19)', async (t) => {
  const h = await startServer((c) => void (c.turn.max_permissions_per_allocation = 2));
  t.teardown(h.close);
  const c = await allocated(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.CreatePermission, peers('127.0.0.2', '127.0.0.3'))).cls, Class.Success);
  const r = await c.authed(Method.CreatePermission, peers('127.0.0.4'));
  t.equal(errCode(r), 508, '508 Insufficient Capacity');
  t.equal(errCode(await c.authed(Method.CreatePermission, peers('127.0.0.2', '127.0.0.5'))), 508, 'all or nothing');
  t.equal(h.server.stats.permissions, 2, 'nothing of the refused requests took effect');
  t.equal((await c.authed(Method.CreatePermission, peers('127.0.0.2', '127.0.0.3'))).cls, Class.Success, 'refresh is not new');
  t.equal(h.server.stats.refused.permission_cap, 2);
  // An expired permission frees its place (RFC 8656 §9: 300 s).
  h.clock.advance(301_000);
  t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 3600))).cls, Class.Success);
  t.equal((await c.authed(Method.CreatePermission, peers('127.0.0.4'))).cls, Class.Success);
});

t.test('channels per allocation: 508 beyond the cap (RFC 8656 §12.2)', async (t) => {
  const h = await startServer((c) => void (c.turn.max_channels_per_allocation = 1));
  t.teardown(h.close);
  const c = await allocated(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.ChannelBind, bindCh(0x4000, '127.0.0.2', 5))).cls, Class.Success);
  t.equal((await c.authed(Method.ChannelBind, bindCh(0x4000, '127.0.0.2', 5))).cls, Class.Success, 'rebinding the same is a refresh');
  t.equal(errCode(await c.authed(Method.ChannelBind, bindCh(0x4001, '127.0.0.2', 6))), 508);
  t.equal(h.server.stats.channels, 1);
  t.equal(h.server.stats.refused.channel_cap, 1);
});

t.test('flows per user and in total: 508 (RFC 8656 §10.2, §12.2, §19)', async (t) => {
  const h = await startServer((c) => {
    c.turn.max_flows_per_user = 2;
    c.turn.max_flows = 3;
  });
  t.teardown(h.close);
  const a1 = await allocated(h.udpPort);
  const a2 = await allocated(h.udpPort);
  const b = await allocated(h.udpPort, 'bob', 'hunter2');
  t.teardown(() => (a1.close(), a2.close(), b.close()));
  t.equal((await a1.authed(Method.CreatePermission, peers('127.0.0.2'))).cls, Class.Success);
  t.equal((await a2.authed(Method.ChannelBind, bindCh(0x4000, '127.0.0.3', 5))).cls, Class.Success);
  t.equal(errCode(await a1.authed(Method.CreatePermission, peers('127.0.0.4'))), 508, "alice's third flow");
  t.equal(h.server.stats.refused.flow_cap_user, 1);
  t.equal((await b.authed(Method.CreatePermission, peers('127.0.0.2'))).cls, Class.Success, "bob's first (3 in total)");
  t.equal(errCode(await b.authed(Method.CreatePermission, peers('127.0.0.5'))), 508, 'server-wide cap');
  t.equal(h.server.stats.refused.flow_cap_total, 1);
  h.server.closeFlow(
    h.server.flows().find((f) => f.user === 'bob')!,
    'policy',
  );
  t.equal((await b.authed(Method.CreatePermission, peers('127.0.0.5'))).cls, Class.Success, 'a closed flow frees its place');
});

t.test('TCP connections per source and in total: closed at accept', async (t) => {
  const h = await startServer((c) => {
    c.turn.max_connections_per_source = 2;
    c.turn.max_connections = 100;
  });
  t.teardown(h.close);
  const s1 = await tcp(h.tcpPort);
  const s2 = await tcp(h.tcpPort);
  const s3 = await tcp(h.tcpPort);
  t.teardown(() => [s1, s2, s3].forEach((s) => s.destroy()));
  t.equal(await answers(s1), true);
  t.equal(await answers(s2), true);
  await closed(s3);
  t.equal(h.server.stats.refused.connection_cap_source, 1, 'third from one source closed');
  s1.destroy();
  // The server learns of the close asynchronously: retry until the freed place is seen.
  let served = false;
  for (let i = 0; i < 40 && !served; i++) {
    await new Promise((r) => setTimeout(r, 25));
    const s4 = await tcp(h.tcpPort);
    served = await answers(s4);
    s4.destroy();
  }
  t.equal(served, true, 'a freed place can be used');

  const h2 = await startServer((c) => {
    c.turn.max_connections_per_source = 100;
    c.turn.max_connections = 1;
  });
  t.teardown(h2.close);
  const x1 = await tcp(h2.tcpPort);
  const x2 = await tcp(h2.tcpPort);
  t.teardown(() => (x1.destroy(), x2.destroy()));
  await closed(x2);
  t.equal(h2.server.stats.refused.connection_cap_total, 1);
  t.equal(await answers(x1), true);
});

t.test('idle TCP connections close; one with a live allocation does not (RFC 8656 §6, §8)', async (t) => {
  const h = await startServer((c) => void (c.turn.connection_idle_timeout = 10));
  t.teardown(h.close);
  const idle = await tcp(h.tcpPort);
  t.equal(await answers(idle), true);
  const c = await Client.tcp(h.tcpPort);
  t.teardown(() => (idle.destroy(), c.close()));
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  h.clock.advance(5_000);
  t.equal(idle.destroyed, false, 'not yet idle');
  h.clock.advance(7_000);
  await closed(idle);
  t.equal(h.server.stats.refused.connection_idle, 1);
  // The allocation's connection is quiet for 500 s (< lifetime 600 s) and stays open.
  h.clock.advance(500_000);
  t.equal(h.server.stats.allocations, 1);
  t.equal((await c.request(Method.Binding)).cls, Class.Success, 'still open');
  // Deleted allocation: the connection gets one idle period, then goes.
  t.equal((await c.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0))).cls, Class.Success);
  h.clock.advance(12_000);
  await closed(c.tcp!);
  t.equal(h.server.stats.refused.connection_idle, 2);
});

t.test('Allocate over its per-source rate is dropped silently', async (t) => {
  const h = await startServer((c) => void (c.turn.allocate_rate_per_source = 1)); // burst 2
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal(errCode(await c.request(Method.Allocate, udpTransport)), 401);
  t.equal(errCode(await c.request(Method.Allocate, udpTransport)), 401);
  c.sendRaw(c.build(Method.Allocate, udpTransport, false));
  // Fence: the Binding answer comes after anything the dropped Allocate would have drawn.
  t.equal((await c.request(Method.Binding)).cls, Class.Success);
  t.equal(c.inbox.length, 0, 'no answer to the third Allocate');
  t.equal(h.server.stats.refused.allocate_rate, 1);
  h.clock.advance(1000);
  t.equal(errCode(await c.request(Method.Allocate, udpTransport)), 401, 'a token again after 1 s');
});

t.test('401 answers over the unauthorized rate are dropped (no amplification)', async (t) => {
  const h = await startServer((c) => {
    c.turn.unauthorized_rate_per_source = 1; // burst 2
    c.turn.allocate_rate_per_source = 1000;
  });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal(errCode(await c.request(Method.Refresh)), 401);
  t.equal(errCode(await c.request(Method.Allocate, udpTransport)), 401);
  c.sendRaw(c.build(Method.Allocate, udpTransport, false));
  c.sendRaw(c.build(Method.CreatePermission, peers('127.0.0.2'), false));
  t.equal((await c.request(Method.Binding)).cls, Class.Success, 'Binding is not limited');
  t.equal(c.inbox.length, 0, 'no 401s beyond the burst');
  t.equal(h.server.stats.refused.unauthorized_rate, 2);
  // A wrong password draws 401 too, and is limited the same way.
  h.clock.advance(1000);
  const ch = await c.request(Method.Allocate, udpTransport);
  c.nonce = getString(ch, Attr.Nonce);
  c.sendRaw(c.build(Method.Allocate, udpTransport, true, { password: 'wrong' }));
  t.equal((await c.request(Method.Binding)).cls, Class.Success);
  t.equal(c.inbox.length, 0);
  t.equal(h.server.stats.refused.unauthorized_rate, 3);
  // The right password still works: authentication failures never block a valid request.
  const ok = await c.request(Method.Allocate, udpTransport, true);
  t.equal(ok.cls, Class.Success);
  t.ok(getXorAddress(ok, Attr.XorRelayedAddress));
});

t.test('RateLimiter: token bucket, burst 2x, bounded map of sources', async (t) => {
  const clock = new ManualClock();
  const r = new RateLimiter(5, clock, 3);
  let n = 0;
  while (r.take('a')) n++;
  t.equal(n, 10, 'burst is 2 x rate');
  clock.advance(200);
  t.equal(r.take('a'), true, 'one token per 200 ms at 5/s');
  t.equal(r.take('a'), false);
  for (const s of ['b', 'c', 'd', 'e']) r.take(s);
  t.equal(r.size, 3, 'never more than maxSources entries');
  t.equal(r.take('a'), true, "'a' was evicted (least recently used) and starts full");
  clock.advance(10_000);
  r.sweep(clock.now());
  t.equal(r.size, 0, 'refilled buckets are swept');
});

t.test('a TCP client that sends Bindings and never reads: answers past the stream bound are dropped, counted', async (t) => {
  const h = await startServer();
  t.teardown(() => h.close());
  const s = await tcp(h.tcpPort);
  s.pause(); // never read: the server's answers pile up in its socket
  const batch = Buffer.concat(Array.from({ length: 1000 }, binding)); // 20 000 bytes of requests
  for (let i = 0; i < 400 && !h.server.stats.refused['stream_backlog']; i++) {
    if (!s.write(batch)) await new Promise((r) => s.once('drain', r));
    await new Promise((r) => setImmediate(r));
  }
  const dropped = h.server.stats.refused['stream_backlog'] ?? 0;
  t.ok(dropped > 0, `answers dropped once 4 MiB were waiting: ${dropped}`);
  const other = await tcp(h.tcpPort);
  t.ok(await answers(other), 'another connection is answered');
  other.destroy();
  s.destroy();
});
