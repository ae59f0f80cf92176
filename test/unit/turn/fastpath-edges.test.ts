/**
 * The native fast path at its edges (native/fastpath.c, review of the client -> peer
 * step): ChannelData whose Length field disagrees with the datagram (RFC 8656 §12.4,
 * §12.6), state closed from JavaScript while C hands it a batch (a relay, the listener),
 * and the permission/channel hash tables through many inserts and removals. A bug here
 * is a crash of the whole process, so these run against the real addon (also built with
 * -fsanitize=address,undefined for the review); without it they fail in CI and skip
 * elsewhere.
 */
import t, { type Test } from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { buildChannelData } from '../../../src/wire/channeldata.js';
import { FastPath } from '../../../src/turn/fastpath.js';
import { bindUdp } from '../../../src/turn/relay.js';
import { listenUdp } from '../../../src/turn/listeners.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';
import type { Allocation, Channel, Permission, UdpListener } from '../../../src/turn/state.js';
import { Client, mirroredFlow, peerSocket, startServer, fastPathForTests } from './helpers.js';
import { Attr, Class, Method, getXorAddress } from '../../../src/wire/stun.js';

const { addon, skip } = fastPathForTests(t);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A ChannelData header whose Length (RFC 8656 §12.4) says `claimed`, over `data`. */
const rawCd = (n: number, claimed: number, data: Buffer): Buffer =>
  Buffer.concat([Buffer.from([n >> 8, n & 255, claimed >> 8, claimed & 255]), data]);

/** A STUN-range datagram (first byte 0x00): never ChannelData, always handed to JS. */
const stunLike = (tag: number): Buffer => Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, tag, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

interface Rig {
  fp: FastPath;
  listener: UdpListener;
  client: Socket;
  peer: Awaited<ReturnType<typeof peerSocket>>;
  atPeer: Buffer[];
  toJs: Buffer[];
  a: Allocation;
  perm: Permission;
  send(b: Buffer): void;
  settle(cond: () => boolean): Promise<void>;
  /** Replaced by a test: runs for every datagram C hands to the listener's handler. */
  onJs: (m: Buffer) => void;
}

/** One FastPath reading one listener in C, one mirrored allocation with channel 0x4005. */
async function rig(t: Test): Promise<Rig> {
  const now = 1_000_000;
  const clock = { now: () => now, setTimeout: () => ({ cancel() {} }), setInterval: () => ({ cancel() {} }) };
  const sup = new Supervisor(silentLogger, 10, () => now);
  const stats = { packets: { clientToPeer: 0, peerToClient: 0 }, bytes: { clientToPeer: 0, peerToClient: 0 } };
  const fp = new FastPath(addon!, clock, silentLogger, sup, stats, true, () => {});
  const toJs: Buffer[] = [];
  const r = { onJs: (_m: Buffer) => {} } as Rig;
  const listener = await listenUdp('127.0.0.1', 0, 0, sup, silentLogger, (_l, m) => {
    toJs.push(m);
    r.onJs(m);
  });
  t.ok(fp.takeListener(listener, 0x4f), 'C reads the listener');
  const relay = await bindUdp('udp4', '127.0.0.1', 0);
  const client = createSocket('udp4');
  await new Promise<void>((res) => client.bind(0, '127.0.0.1', () => res()));
  const peer = await peerSocket();
  const atPeer: Buffer[] = [];
  peer.sock.on('message', (m) => void atPeer.push(m));
  const { a, perm, ch } = mirroredFlow({
    id: 'edge',
    listener,
    relay,
    clientPort: client.address().port,
    peerPort: peer.port,
    now,
    allocationMs: 600_000,
    permissionMs: 300_000,
    channelMs: 600_000,
  });
  // deleted(): C's poll of the relay would keep the process alive (the server's table.clear() does it).
  t.teardown(() => (fp.deleted(a), fp.close(), listener.socket.close(), relay.close(), client.close(), peer.close()));
  fp.added(a);
  fp.permission(a, perm);
  const lport = listener.port;
  return Object.assign(r, {
    fp,
    listener,
    client,
    peer,
    atPeer,
    toJs,
    a,
    perm,
    send: (b: Buffer) => void client.send(b, lport, '127.0.0.1'),
    settle: async (cond: () => boolean) => {
      for (let i = 0; i < 200 && !cond(); i++) await sleep(10);
      await sleep(50);
    },
  });
}

t.test('ChannelData Length against the datagram length (RFC 8656 §12.4, §12.6)', { skip }, async (t) => {
  const r = await rig(t);
  const max = 65507 - 4; // the largest UDP/IPv4 payload, less the ChannelData header
  // §12.4: Length 0 is a valid message (no application data): an empty datagram to the peer.
  r.send(rawCd(0x4005, 0, Buffer.alloc(0)));
  // Length one more than the datagram holds, and the largest Length over a full datagram:
  // §12.6 discards both (no read past the datagram).
  r.send(rawCd(0x4005, 6, Buffer.from('fiver')));
  r.send(rawCd(0x4005, 0xffff, Buffer.alloc(max, 0x61)));
  // Exactly as long as the datagram, at the largest size: forwarded whole.
  r.send(rawCd(0x4005, max, Buffer.alloc(max, 0x62)));
  // Bytes past Length (padding, §12.5 over UDP "need not"): ignored, not forwarded.
  r.send(rawCd(0x4005, 3, Buffer.from('abcXYZ')));
  // Shorter than 4 bytes: not a ChannelData message C can read; the listener's handler
  // sees it (and the server drops it, as dgram's path does). Sent last: from here on the
  // client's datagrams of this batch go to JS too (its order is kept).
  r.send(Buffer.from([0x40, 0x05, 0x00]));
  await r.settle(() => r.atPeer.length >= 3 && r.toJs.length >= 1 && r.fp.counters.malformed >= 2);
  t.same(
    r.atPeer.map((b) => b.length),
    [0, max, 3],
    'the empty one, the full-size one and the one with bytes past its Length reached the peer',
  );
  t.equal(
    r.atPeer[1]!.every((x) => x === 0x62),
    true,
    'the full-size payload intact',
  );
  t.equal(r.atPeer[2]!.toString(), 'abc');
  t.equal(r.fp.counters.malformed, 2, 'the two longer than their datagram dropped in C');
  t.same(
    r.toJs.map((b) => [...b]),
    [[0x40, 0x05, 0x00]],
    'the 3-byte one went to the handler',
  );
});

t.test('an allocation closed from the handler while C hands it a listener batch', { skip }, async (t) => {
  const r = await rig(t);
  // The handler deletes the allocation (what a Refresh with LIFETIME 0 does, RFC 8656 §7.3)
  // on the STUN datagram: C's relay is closed inside C's call to JS. ChannelData after it
  // goes to JS (in the same batch: the client's order; in a later one: unknown client)
  // and is not relayed; nothing of the closed relay is touched again.
  r.onJs = (m) => {
    if (m[0] === 0 && m[8] === 1) {
      (r.a as { deleted: boolean }).deleted = true;
      r.fp.deleted(r.a);
    }
  };
  r.send(buildChannelData(0x4005, Buffer.from('before')));
  r.send(stunLike(1));
  for (let i = 0; i < 8; i++) r.send(buildChannelData(0x4005, Buffer.from(`after ${i}`)));
  await r.settle(() => r.toJs.length >= 9);
  t.same(
    r.atPeer.map((b) => b.toString()),
    ['before'],
    'only what came before the close was relayed',
  );
  t.same(
    r.toJs.slice(1).map((b) => b.subarray(4).toString()),
    [0, 1, 2, 3, 4, 5, 6, 7].map((i) => `after ${i}`),
    'the rest reached the handler, in order',
  );
  t.equal(r.fp.counters.clientToPeer, 1);
});

t.test('the listener closed from its handler in the middle of a batch', { skip }, async (t) => {
  const r = await rig(t);
  // FastPath.close (server stop) from inside a listener batch: C stops reading and frees
  // the listener after the batch; the datagrams of that batch after the close are not
  // delivered to the stopped listener's handler (dgram delivers nothing after close()).
  r.onJs = (m) => {
    if (m[0] === 0 && m[8] === 2) r.fp.close();
  };
  r.send(stunLike(1));
  r.send(stunLike(2));
  for (let i = 3; i < 10; i++) r.send(stunLike(i));
  await r.settle(() => r.toJs.length >= 2);
  await sleep(100);
  t.same(
    r.toJs.map((b) => b[8]),
    [1, 2],
    'nothing after the close reached the handler',
  );
  // A closed listener's id is not read again; a second close is harmless.
  r.fp.close();
  t.pass('closed twice');
});

t.test('permission and channel lookups through many inserts and removals (hash tables)', { skip }, async (t) => {
  const r = await rig(t);
  const mir = r.fp as unknown as { mirrors: WeakMap<Allocation, { id: number }> };
  const id = mir.mirrors.get(r.a)!.id;
  // 300 more permissions (slots 1..300) with one channel each, to ports of the real peer's
  // IP only for the odd ones: the tables grow, collide, and are rebuilt on every change.
  const ip = (k: number): Buffer => Buffer.from([10, 1, k >> 8, k & 255]);
  for (let k = 1; k <= 300; k++) {
    addon!.perm(id, k, ip(k), true, 300_000);
    addon!.chan(id, k, 10_000 + k, 0x4100 + k, 600_000);
  }
  // Channel 0x4005 (slot 0, the real peer) still goes out in C after every kind of change.
  const probe = async (tag: string): Promise<void> => {
    const before = r.atPeer.length;
    r.send(buildChannelData(0x4005, Buffer.from(tag)));
    await r.settle(() => r.atPeer.length > before);
  };
  await probe('grown');
  // Remove in an order unlike insertion: every third, then the rest of the even ones.
  for (let k = 3; k <= 300; k += 3) addon!.unperm(id, k);
  await probe('thirds gone');
  for (let k = 2; k <= 300; k += 2) addon!.chan(id, k, 10_000 + k, 0, 0);
  await probe('even channels gone');
  for (let k = 1; k <= 300; k++) if (k % 3 !== 0) addon!.unperm(id, k);
  await probe('all others gone');
  // A removed channel's number is unknown to C: handed to JS (which discards it, §12.6).
  r.send(buildChannelData(0x4101, Buffer.from('removed')));
  await r.settle(() => r.toJs.length >= 1);
  t.same(
    r.atPeer.map((b) => b.toString()),
    ['grown', 'thirds gone', 'even channels gone', 'all others gone'],
    'the real channel was found after every rebuild',
  );
  t.same(
    r.toJs.map((b) => b.subarray(4).toString()),
    ['removed'],
    'the removed channel went to JS',
  );
  // Bad arguments throw, they do not reach the tables.
  t.throws(() => addon!.perm(id, -1, ip(1), true, 1000), /bad slot/);
  t.throws(() => addon!.perm(id, 1, Buffer.alloc(5), true, 1000), /bad arguments/);
  t.throws(() => addon!.chan(id, 1, 70_000, 0x4001, 1000), /bad arguments/);
});

t.test('a hook closing the allocation during a relay batch handed to JS', { skip }, async (t) => {
  const seen: string[] = [];
  let closeAlloc: (() => void) | null = null;
  const h = await startServer((c) => void (c.turn.fast_path = 'auto'), {
    flowHooks: {
      onPacket: (_f, _dir, data) => {
        seen.push(data.toString());
        // The allocation goes (its relay closed in C) from inside C's call to JS.
        if (data.toString() === 'close') closeAlloc?.();
        return true;
      },
    },
  });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  t.equal(r.cls, Class.Success);
  const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  const p1 = await peerSocket();
  t.teardown(() => (c.close(), p1.close()));
  t.equal((await c.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', p1.port))).cls, Class.Success);
  const table = (h.server as unknown as { table: { all: Set<Allocation>; delete(a: Allocation, why: string): void } }).table;
  closeAlloc = () => {
    for (const a of [...table.all]) table.delete(a, 'deleted');
  };
  for (const m of ['one', 'two', 'close', 'x1', 'x2', 'x3']) p1.sock.send(Buffer.from(m), relayPort, '127.0.0.1');
  for (let i = 0; i < 200 && seen.length < 3; i++) await sleep(10);
  await sleep(100);
  t.same(seen, ['one', 'two', 'close'], 'nothing of the closed allocation reached the hook after the close');
  t.equal(h.server.stats.packets.peerToClient, 3, 'the three before (and with) the close were relayed');
});
