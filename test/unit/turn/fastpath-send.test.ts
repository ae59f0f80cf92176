/**
 * Send indications client -> peer in C (native/fastpath.c send_indication_out, issue 13):
 * a Send indication (RFC 8656 §11.2) the JS handler would relay goes out of the relay
 * socket in C; every other one is handed to JS, which discards it (or, for the few C does
 * not decide, relays it) exactly as with `turn.fast_path: off`. One scenario of every
 * kind of Send a client can send, run with fast_path off and auto, over IPv4 and IPv6
 * (::1): the same bytes at the peers, the same events and counters, and which ones C
 * forwarded. Then expiry as an absolute deadline in C with no JS timer running. The addon
 * is built by `npm run build:native`: without it these tests fail in CI and skip elsewhere.
 */
import t, { type Test } from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { Attr, Class, Method, StunWriter, getXorAddress, messageType, parseIP, writeXorAddressValue } from '../../../src/wire/stun.js';
import { FastPath } from '../../../src/turn/fastpath.js';
import { loadDontFragment } from '../../../src/turn/dont-fragment.js';
import { bindUdp } from '../../../src/turn/relay.js';
import { listenUdp } from '../../../src/turn/listeners.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';
import { Client, mirroredFlow, peerSocket, startServer, fastPathForTests } from './helpers.js';

const { addon, skip } = fastPathForTests(t);
const canDf = loadDontFragment() !== null;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const SEND = messageType(Method.Send, Class.Indication); // 0x0016

/** One attribute as it goes on the wire: type, value, then `pad` (default: zeros to 4). */
interface RawAttr {
  type: number;
  value: Buffer;
  pad?: Buffer;
}

/** XOR-PEER-ADDRESS's value (RFC 8656 §18.3, RFC 8489 §14.2) for this transaction ID. */
function xorPeer(ip: string, port: number, tid: Buffer): Buffer {
  const b = parseIP(ip)!;
  const v = Buffer.alloc(b.length === 4 ? 8 : 20);
  writeXorAddressValue(v, 0, b, port, tid);
  return v;
}

/** A STUN message from raw attributes; `lengthDelta` makes the header's Length lie. */
function rawStun(type: number, tid: Buffer, attrs: RawAttr[], lengthDelta = 0): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    const h = Buffer.alloc(4);
    h.writeUInt16BE(a.type, 0);
    h.writeUInt16BE(a.value.length, 2);
    parts.push(h, a.value, a.pad ?? Buffer.alloc((4 - (a.value.length & 3)) & 3));
  }
  const body = Buffer.concat(parts);
  const hdr = Buffer.alloc(20);
  hdr.writeUInt16BE(type, 0);
  hdr.writeUInt16BE(body.length + lengthDelta, 2);
  hdr.writeUInt32BE(0x2112a442, 4);
  tid.copy(hdr, 8);
  return Buffer.concat([hdr, body]);
}

/** A Send indication built with StunWriter (`more` adds attributes after DATA). */
function send(ip: string, port: number, data: Buffer, more?: (w: StunWriter) => void): Buffer {
  const w = new StunWriter(70_000);
  w.reset(SEND, randomBytes(12));
  w.xorAddress(Attr.XorPeerAddress, ip, port);
  w.attr(Attr.Data, data);
  more?.(w);
  return w.copy();
}

/** What a case expects: the payloads the peer gets (in order), and whether C sent them. */
interface Case {
  name: string;
  msgs: Buffer[];
  /** Hex of what reaches the peer; [] when discarded. */
  want: string[];
  /** With fast_path auto: forwarded in C (else JS decided, relayed or not). */
  inC: boolean;
  /** Sent by the client without an allocation. */
  stranger?: boolean;
}

function cases(fam: 4 | 6, ip: string, port: number, noPermIp: string, otherFamIp: string): Case[] {
  const tid = (): Buffer => randomBytes(12);
  const hex = (s: string | Buffer): string => (typeof s === 'string' ? Buffer.from(s) : s).toString('hex');
  // The same bytes in both runs (off and auto), every byte value.
  const big = Buffer.from(Array.from({ length: fam === 4 ? 8000 : 1201 }, (_, i) => (i * 131 + 7) & 255));
  const cs: Case[] = [];
  const fwd = (name: string, msgs: Buffer[], want: (string | Buffer)[], inC = true): void =>
    void cs.push({ name, msgs, want: want.map(hex), inC });
  const drop = (name: string, msg: Buffer, stranger = false): void => void cs.push({ name, msgs: [msg], want: [], inC: false, stranger });
  fwd('plain', [send(ip, port, Buffer.from('plain'))], ['plain']);
  // RFC 8489 §14: the DATA value padded to 4 bytes; the padding never reaches the peer.
  fwd(
    '1, 2, 3 and 4 bytes',
    ['a', 'ab', 'abc', 'abcd'].map((s) => send(ip, port, Buffer.from(s))),
    ['a', 'ab', 'abc', 'abcd'],
  );
  fwd(`${big.length} random bytes`, [send(ip, port, big)], [big]);
  fwd('empty DATA', [send(ip, port, Buffer.alloc(0))], ['']);
  // RFC 8656 §11.2, §14: with the addon's sendDontFragment JS relays it with DF set (C
  // hands it over); without it DONT-FRAGMENT is unknown and the Send discarded, both ways
  // (test/unit/turn/dont-fragment.test.ts has both cases).
  const dfMsg = send(ip, port, Buffer.from('df'), (w) => void w.attr(Attr.DontFragment, Buffer.alloc(0)));
  if (canDf) fwd('DONT-FRAGMENT (sent with DF by JS)', [dfMsg], ['df'], false);
  else drop('DONT-FRAGMENT (no addon to set DF: discarded)', dfMsg);
  // RFC 8489 §14: comprehension-optional attributes (0x8000-0xFFFF) are ignored.
  fwd(
    'SOFTWARE and an unknown optional attribute',
    [send(ip, port, Buffer.from('opt'), (w) => void w.attr(Attr.Software, 'x').attr(0xc0de, Buffer.from([1, 2, 3])))],
    ['opt'],
  );
  fwd('a right FINGERPRINT', [send(ip, port, Buffer.from('fp'), (w) => void w.fingerprint())], ['fp']);
  const badFp = send(ip, port, Buffer.from('bad fp'), (w) => void w.fingerprint());
  badFp[badFp.length - 1]! ^= 1;
  drop('a wrong FINGERPRINT (RFC 8489 §7.3: not STUN)', badFp);
  // FINGERPRINT not last: attributes after it do not count, and the check fails (§14.7).
  drop(
    'an attribute after FINGERPRINT',
    send(ip, port, Buffer.from('fp first'), (w) => void w.fingerprint().attr(Attr.Software, 'late')),
  );
  // Indications are not authenticated (RFC 8656 §21.1.4): JS relays it with a
  // MESSAGE-INTEGRITY it does not check; C leaves that to JS.
  fwd(
    'MESSAGE-INTEGRITY (left to JS)',
    [send(ip, port, Buffer.from('mi'), (w) => void w.attr(Attr.MessageIntegrity, randomBytes(20)))],
    ['mi'],
    false,
  );
  {
    // RFC 8489 §14.5: after MESSAGE-INTEGRITY only FINGERPRINT (and -SHA256) count, so DATA is missing.
    const t0 = tid();
    drop(
      'DATA after MESSAGE-INTEGRITY',
      rawStun(SEND, t0, [
        { type: Attr.XorPeerAddress, value: xorPeer(ip, port, t0) },
        { type: Attr.MessageIntegrity, value: randomBytes(20) },
        { type: Attr.Data, value: Buffer.from('after mi') },
      ]),
    );
  }
  // RFC 8489 §6.3.2 (an indication with an unknown comprehension-required attribute is discarded).
  drop(
    'an unknown comprehension-required attribute',
    send(ip, port, Buffer.from('unknown'), (w) => void w.attr(0x7f01, Buffer.from([1]))),
  );
  {
    const t0 = tid();
    drop('no DATA (RFC 8656 §11.2)', rawStun(SEND, t0, [{ type: Attr.XorPeerAddress, value: xorPeer(ip, port, t0) }]));
    drop('no XOR-PEER-ADDRESS (RFC 8656 §11.2)', rawStun(SEND, tid(), [{ type: Attr.Data, value: Buffer.from('nowhere') }]));
  }
  {
    const t0 = tid();
    const ok = [
      { type: Attr.XorPeerAddress, value: xorPeer(ip, port, t0) },
      { type: Attr.Data, value: Buffer.from('12345') },
    ];
    // RFC 8489 §5: Length must match the datagram and be a multiple of 4.
    drop('Length 4 more than the datagram', rawStun(SEND, t0, ok, 4));
    drop('Length 4 less than the datagram', rawStun(SEND, t0, ok, -4));
    drop('DATA unpadded at the end (Length not a multiple of 4)', rawStun(SEND, t0, [ok[0]!, { ...ok[1]!, pad: Buffer.alloc(0) }], 0));
    // An attribute running past the message (§14).
    const over = rawStun(SEND, t0, [ok[0]!, { type: Attr.Data, value: Buffer.from('1234') }]);
    over.writeUInt16BE(9, 20 + 4 + ok[0]!.value.length + 2); // DATA says 9 bytes (12 padded), 4 are there
    drop('DATA longer than the message', over);
    // Padding bytes are ignored whatever their value (RFC 8489 §14).
    fwd('non-zero padding bytes', [rawStun(SEND, t0, [ok[0]!, { ...ok[1]!, pad: Buffer.from([0xff, 0xee, 0xdd]) }])], ['12345']);
    // The first of an attribute type counts (RFC 8489 §14).
    fwd(
      'two DATA: the first one counts',
      [rawStun(SEND, t0, [ok[0]!, ok[1]!, { type: Attr.Data, value: Buffer.from('second') }])],
      ['12345'],
    );
    fwd(
      'two XOR-PEER-ADDRESS: the first one counts',
      [rawStun(SEND, t0, [ok[0]!, { type: Attr.XorPeerAddress, value: xorPeer(noPermIp, port, t0) }, ok[1]!])],
      ['12345'],
    );
    drop(
      'two XOR-PEER-ADDRESS: the first, without permission, counts',
      rawStun(SEND, t0, [{ type: Attr.XorPeerAddress, value: xorPeer(noPermIp, port, t0) }, ...ok]),
    );
    // XOR-PEER-ADDRESS of the wrong size for its family (§14.2).
    const v = xorPeer(ip, port, t0);
    v[1] = fam === 4 ? 0x02 : 0x01;
    drop('XOR-PEER-ADDRESS family and length disagree', rawStun(SEND, t0, [{ type: Attr.XorPeerAddress, value: v }, ok[1]!]));
    // RFC 8489 §5: the first two bits of a STUN message are 0.
    const notSend = rawStun(messageType(Method.Send, Class.Indication) | 0xc000, t0, ok);
    drop('first two bits not 0', notSend);
    const cookie = rawStun(SEND, t0, ok);
    cookie[7] ^= 1;
    drop('a wrong magic cookie', cookie);
  }
  drop('a peer of the other family (RFC 8656 §11.2)', send(otherFamIp, port, Buffer.from('other family')));
  drop('no permission for the peer IP (RFC 8656 §11.2: silently discarded)', send(noPermIp, port, Buffer.from('no permission')));
  drop('port 0', send(ip, 0, Buffer.from('port zero')));
  drop('from a client without an allocation', send(ip, port, Buffer.from('stranger')), true);
  return cs;
}

interface Outcome {
  /** Per case: hex of what the peer got. */
  got: Record<string, string[]>;
  /** Per case: Send indications C counted while it ran. */
  inC: Record<string, number>;
  atNoPerm: number;
  events: string[];
  stats: number[];
  /** TurnStats.refused and the allocation/permission/channel gauges: the same both ways too. */
  other: unknown;
  fast: ReturnType<import('../../../src/turn/server.js').TurnServer['fastPath']>;
}

async function scenario(t: Test, mode: 'off' | 'auto', fam: 4 | 6): Promise<Outcome> {
  const host = fam === 4 ? '127.0.0.1' : '::1';
  const h = await startServer((c) => {
    c.turn.fast_path = mode;
    if (fam === 6) {
      c.turn.listen = ['udp://[::1]:0'];
      c.turn.relay_address = '::1';
      // ::1 also carries the IPv4-compatible 0.0.0.1 (src/turn/peerfilter.ts embeddedV4).
      c.turn.peers.allow = ['::1/128', '::2/128', '0.0.0.1/32', '0.0.0.2/32'];
    }
  });
  const c = await Client.udp(h.udpPort, host);
  const stranger = await Client.udp(h.udpPort, host);
  const peer = await peerSocket(host);
  const noPerm = await peerSocket(fam === 4 ? '127.0.0.2' : host);
  const out: Outcome = { got: {}, inC: {}, atNoPerm: 0, events: [], stats: [], other: null, fast: null };
  let cur = '';
  peer.sock.on('message', (m) => void (out.got[cur] ??= []).push(m.toString('hex')));
  noPerm.sock.on('message', () => void out.atNoPerm++);
  try {
    const raf = Buffer.from([fam === 4 ? 0x01 : 0x02, 0, 0, 0]);
    const r = await c.authed(
      Method.Allocate,
      (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])).attr(Attr.RequestedAddressFamily, raf),
    );
    t.equal(r.cls, Class.Success, `${mode} IPv${fam}: allocated`);
    t.equal(getXorAddress(r, Attr.XorRelayedAddress)?.family, fam);
    const perm = await c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, host, 1));
    t.equal(perm.cls, Class.Success, `${mode} IPv${fam}: permission for ${host}`);
    // The IPv6 "no permission" peer is ::2 (nothing listens there): only ::1 is on loopback.
    const noPermIp = fam === 4 ? '127.0.0.2' : '::2';
    const port = peer.port;
    for (const k of cases(fam, host, port, noPermIp, fam === 4 ? '::1' : '127.0.0.1')) {
      cur = k.name;
      const before = h.server.fastPath()?.sendIndications ?? 0;
      for (const m of k.msgs) {
        (k.stranger ? stranger : c).sendRaw(m);
        // One datagram per listener batch: C's per-client order rule does not mix cases.
        await sleep(5);
      }
      for (let i = 0; i < 200 && (out.got[k.name]?.length ?? 0) < k.want.length; i++) await sleep(10);
      await sleep(k.want.length ? 10 : 40);
      out.inC[k.name] = (h.server.fastPath()?.sendIndications ?? 0) - before;
    }
    // A permission for the "other" IPv4 peer IP would change nothing here: IPv4 stays IPv4.
    // The permission expires on the JS clock (sweep, RFC 8656 §9): nothing goes out.
    h.clock.advance(301_000);
    cur = 'after the permission expired';
    c.sendRaw(send(host, port, Buffer.from('late')));
    await sleep(150);
    out.events = h.events.events.map((e) => {
      const x = e as unknown as { event_type: string; allocation?: { action: string }; permission?: { action: string } };
      return `${x.event_type}:${x.allocation?.action ?? x.permission?.action}`;
    });
    const s = h.server.stats;
    out.stats = [s.packets.clientToPeer, s.bytes.clientToPeer, s.packets.peerToClient, s.bytes.peerToClient];
    out.other = { refused: { ...s.refused }, allocations: s.allocations, permissions: s.permissions, channels: s.channels };
    out.fast = h.server.fastPath();
  } finally {
    c.close();
    stranger.close();
    peer.close();
    noPerm.close();
    await h.close();
  }
  return out;
}

for (const fam of [4, 6] as const) {
  t.test(
    `Send indications over IPv${fam}: the same bytes, events and counters with fast_path off and auto; the ones JS relays go out in C`,
    async (t) => {
      const host = fam === 4 ? '127.0.0.1' : '::1';
      const off = await scenario(t, 'off', fam);
      const expected = cases(fam, host, 1, '127.0.0.2', '::1');
      for (const k of expected)
        t.same(off.got[k.name]?.length ?? 0, k.want.length, `off: ${k.name}: ${k.want.length ? 'relayed' : 'discarded'}`);
      t.same(off.got['plain'], [Buffer.from('plain').toString('hex')]);
      t.notOk(off.got['after the permission expired'], 'off: nothing after the permission expired');
      t.equal(off.atNoPerm, 0, 'off: nothing at the IP without permission');
      const relayed = Object.values(off.got).flat();
      t.same(
        off.stats.slice(0, 2),
        [relayed.length, relayed.reduce((n, h) => n + h.length / 2, 0)],
        'off: stats count what reached the peer, nothing more (port 0 is not counted)',
      );
      t.equal(off.fast, null);
      if (!addon) {
        if (process.env.CI) t.fail('the fast path addon is not built (npm run build:native) in CI');
        return;
      }
      const auto = await scenario(t, 'auto', fam);
      t.same(auto.got, off.got, 'auto: the peer got exactly the same bytes for every case');
      t.same(
        [auto.events, auto.stats, auto.other, auto.atNoPerm],
        [off.events, off.stats, off.other, off.atNoPerm],
        'auto: the same events and counters',
      );
      t.ok(off.events.includes('permission:expired'), 'the events include the permission expiry');
      for (const k of expected)
        t.equal(auto.inC[k.name], k.inC ? k.msgs.length : 0, `auto: ${k.name}: ${k.inC ? 'forwarded in C' : 'left to JS'}`);
      const n = expected.filter((k) => k.inC).reduce((s, k) => s + k.msgs.length, 0);
      t.equal(auto.fast!.sendIndications, n, `auto: ${n} Send indications forwarded in C`);
      t.equal(auto.fast!.clientToPeer, n, 'counted in clientToPeer (no ChannelData here)');
      t.equal(auto.fast!.sendDropped, 0);
    },
  );
}

t.test('Send indication expiry is an absolute deadline checked in C, with no JS timer running', { skip }, async (t) => {
  let now = 1_000_000;
  const clock = { now: () => now, setTimeout: () => ({ cancel() {} }), setInterval: () => ({ cancel() {} }) };
  const sup = new Supervisor(silentLogger, 10, () => now);
  const stats = { packets: { clientToPeer: 0, peerToClient: 0 }, bytes: { clientToPeer: 0, peerToClient: 0 } };
  const fp = new FastPath(addon!, clock, silentLogger, sup, stats, true, () => {});
  const toJs: string[] = [];
  const listener = await listenUdp('127.0.0.1', 0, 0, sup, silentLogger, (_l, m) => void toJs.push(m.subarray(-8).toString('latin1')));
  t.ok(fp.takeListener(listener, 0x4f), 'C reads the listener');
  const relay = await bindUdp('udp4', '127.0.0.1', 0);
  const client: Socket = createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  const peer = await peerSocket();
  const atPeer: string[] = [];
  peer.sock.on('message', (m) => void atPeer.push(m.toString()));
  const { a, perm } = mirroredFlow({
    id: 's',
    listener,
    relay,
    clientPort: client.address().port,
    peerPort: peer.port,
    now,
    allocationMs: 60_000,
    permissionMs: 300,
    channelMs: 60_000,
  });
  t.teardown(() => (fp.deleted(a), fp.close(), listener.socket.close(), relay.close(), client.close(), peer.close()));
  fp.added(a);
  fp.permission(a, perm);
  const go = (s: string): void => void client.send(send('127.0.0.1', peer.port, Buffer.from(s)), listener.port, '127.0.0.1');
  const settle = async (cond: () => boolean): Promise<void> => {
    for (let i = 0; i < 200 && !cond(); i++) await sleep(10);
    await sleep(50);
  };
  go('in time!');
  await settle(() => atPeer.length >= 1);
  t.same(atPeer, ['in time!'], 'forwarded in C while the permission and allocation run');
  t.equal(fp.counters.sendIndications, 1);
  t.same([stats.packets.clientToPeer, stats.bytes.clientToPeer], [1, 8], 'in the server stats as JS counts them');

  await sleep(400); // past the permission's 300 ms; the JS clock did not move, no sweep ran
  go('perm exp');
  await settle(() => fp.counters.expired >= 1);
  t.same(atPeer, ['in time!'], 'dropped in C after the permission expired (RFC 8656 §9)');
  t.equal(fp.counters.expired, 1);

  now += 400;
  perm.expiresAt = now + 60_000;
  fp.permission(a, perm);
  go('refresh!');
  await settle(() => atPeer.length >= 2);
  t.same(atPeer, ['in time!', 'refresh!'], 'a refreshed permission carries Send indications again');

  a.expiresAt = now + 100;
  fp.refreshed(a);
  await sleep(200);
  go('alloc ex');
  await settle(() => fp.counters.expired >= 2);
  t.same(atPeer, ['in time!', 'refresh!'], 'dropped in C after the allocation expired (RFC 8656 §6)');
  t.equal(fp.counters.expired, 2);
  t.same(toJs, [], 'none of them reached JS');
  t.equal(fp.counters.sendIndications, 2);

  // permissionClosed: C no longer knows the IP; the Send goes to JS (which discards it).
  a.expiresAt = now + 60_000;
  fp.refreshed(a);
  fp.permissionClosed(a, perm);
  go('no perm!');
  await settle(() => toJs.length >= 1);
  t.same(toJs, ['no perm!'], 'without a mirrored permission the Send is handed to JS');
  t.same(atPeer, ['in time!', 'refresh!']);
});
