/**
 * KeyEscrow (key-escrow.md §6): escrow without an allocation. An in-process TurnServer
 * with the GatewayInspector, a scripted TURN client relaying a real OpenSSL DTLS 1.2
 * session (test/fixtures/openssl) on its allocation, and second clients (no allocation)
 * sending KeyEscrow requests: every error case of §6.6 and the applying rules of §6.4/§6.5.
 */
import t from 'tap';
import { createSocket } from 'node:dgram';
import { createPublicKey, randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { GatewayInspector } from '../../../src/gateway/inspector.js';
import {
  Attr,
  Class,
  Method,
  decodeStun,
  getAttrs,
  getErrorCode,
  getString,
  getXorAddress,
  type StunMessage,
} from '../../../src/wire/stun.js';
import { ATTR_KEY_REQUEST, ATTR_KEY_STATUS, decodeKeyRequest, decodeKeyStatus, verifyKeyRequest } from '../../../src/wire/escrow.js';
import { ATTR_KEY_PENDING, METHOD_KEY_ESCROW, decodeKeyPending } from '../../../src/wire/keyescrow.js';
import { ReplayMemory } from '../../../src/turn/handlers/keyescrow.js';
import { HeldKeySets } from '../../../src/gateway/held-keysets.js';
import type { KeySet } from '../../../src/wire/keyset.js';
import { Client, errCode, peerSocket, startServer } from '../turn/helpers.js';
import { KEYS_RULES, bindAttrs, relayOne, testIdentity, writeKeys, type EscrowRig } from './escrow-helpers.js';
import { fixtureFlow, isAppData } from './flow-guard-helpers.js';

const CH = 0x4001;
const hex = (b: Buffer) => b.toString('hex');

async function rig(rules = KEYS_RULES): Promise<EscrowRig & { setRules(rules: string): void }> {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const identity = await testIdentity();
  let engine = new PolicyEngine([parseRuleFile(rules, 'test.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock });
  const h = await startServer(undefined, {
    clock,
    events,
    flowHooks: inspector,
    extensions: [inspector.extension],
    keyEscrow: inspector.keyEscrow,
  });
  inspector.attach(h.server);
  const c = await Client.udp(h.udpPort);
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  const peer = await peerSocket();
  const b = await c.authed(Method.ChannelBind, bindAttrs(CH, peer.port));
  if (b.cls !== Class.Success) throw new Error(`bind failed ${errCode(b)}`);
  return {
    h,
    clock,
    events,
    identity,
    inspector,
    c,
    relayPort,
    peer,
    setRules: (rules: string) => void (engine = new PolicyEngine([parseRuleFile(rules, 'test.yaml')])),
    close: async () => {
      c.close();
      peer.close();
      await h.close();
    },
  };
}

/** Relays the first DTLS handshake of the fixture (and its held application data). */
async function handshake(r: EscrowRig, n = 13): Promise<ReturnType<typeof fixtureFlow>> {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  for (const p of f.packets.slice(0, n)) await relayOne(r, CH, p.dir, p.data);
  return f;
}

/** A client without an allocation (another 5-tuple), as `user`. */
async function agent(r: EscrowRig, user = 'alice', password = 'secret'): Promise<Client> {
  const a = await Client.udp(r.h.udpPort);
  a.username = user;
  a.password = password;
  return a;
}

async function escrow(a: Client, sets: KeySet[], tid = randomBytes(12), mangle?: (v: Buffer) => Buffer): Promise<StunMessage> {
  if (!a.nonce) {
    const r0 = await a.request(METHOD_KEY_ESCROW);
    a.nonce = getString(r0, Attr.Nonce);
  }
  return a.request(METHOD_KEY_ESCROW, writeKeys(a, tid, sets, mangle), true, { tid });
}

const statuses = (m: StunMessage) => getAttrs(m, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v));
const pendings = (m: StunMessage) => getAttrs(m, ATTR_KEY_PENDING).map((v) => decodeKeyPending(v)!);
const ev = (r: EscrowRig, type: string) => r.events.events.filter((e) => e.event_type === type);

t.test('401 without integrity: REALM, NONCE, PASSWORD-ALGORITHMS (RFC 8489 §9.2.4)', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const a = await agent(r);
  t.teardown(() => a.close());
  const m = await a.request(METHOD_KEY_ESCROW);
  t.equal(m.method, METHOD_KEY_ESCROW);
  t.equal(errCode(m), 401);
  t.ok(getString(m, Attr.Nonce));
  t.equal(getString(m, Attr.Realm), 'gatehouse.local');
  t.ok(getAttrs(m, Attr.PasswordAlgorithms).length);
});

t.test('forged request (wrong password): 401, nothing applied', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  const a = await agent(r, 'alice', 'not-the-password');
  t.teardown(() => a.close());
  const m = await escrow(a, [f.keySets[0]!]);
  t.equal(errCode(m), 401);
  t.same(ev(r, 'keys_received'), []);
});

t.test('stale or foreign NONCE: 438 with a fresh NONCE', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const a = await agent(r);
  t.teardown(() => a.close());
  a.nonce = 'not-a-nonce-of-ours';
  const m = await a.request(METHOD_KEY_ESCROW, undefined, true);
  t.equal(errCode(m), 438);
  t.ok(getString(m, Attr.Nonce));
});

t.test('missing USERNAME: 400', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const a = await agent(r);
  t.teardown(() => a.close());
  const m = await a.request(METHOD_KEY_ESCROW, (w) => void w.attr(Attr.Realm, 'gatehouse.local').attr(Attr.Nonce, 'x').integrity(a.key()));
  t.equal(errCode(m), 400);
});

t.test('unknown comprehension-required attribute after authentication: 420', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const a = await agent(r);
  t.teardown(() => a.close());
  await escrow(a, []);
  const m = await a.request(METHOD_KEY_ESCROW, (w) => void w.attr(0x0077, Buffer.alloc(4)), true);
  t.equal(errCode(m), 420);
});

t.test('pending query: KEY-PENDING names the handshake, KEY-REQUEST verifies with the gateway key', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const a = await agent(r);
  t.teardown(() => a.close());
  const before = await escrow(a, []);
  t.equal(before.cls, Class.Success);
  t.same(pendings(before), [], 'nothing pending before the handshake');
  const f = await handshake(r);
  const ks = f.keySets[0]!;
  const tid = randomBytes(12);
  const m = await escrow(a, [], tid);
  t.equal(m.cls, Class.Success);
  t.same(statuses(m), []);
  const p = pendings(m);
  t.equal(p.length, 1);
  t.equal(hex(p[0]!.clientRandom), hex(ks.clientRandom));
  t.equal(hex(p[0]!.serverRandom), hex(ks.serverRandom));
  t.equal(p[0]!.cipherSuite, ks.cipherSuite);
  t.equal(p[0]!.version, 2);
  t.equal(p[0]!.epoch, 1);
  t.equal(p[0]!.srtpProfile, ks.srtpProfile);
  t.ok(p[0]!.flags & 0x02, 'media keys wanted');
  const kr = decodeKeyRequest(getAttrs(m, ATTR_KEY_REQUEST)[0]!)!;
  t.ok(verifyKeyRequest('turn', tid, kr, createPublicKey(r.identity.privateKey)), 'KEY-REQUEST signed over the response transaction ID');
  // Another user sees nothing of alice's flows.
  const b = await agent(r, 'bob', 'hunter2');
  t.teardown(() => b.close());
  t.same(pendings(await escrow(b, [])), [], "bob is not told about alice's associations");
});

t.test('rules reloaded without a keys section: the flows that still require keys are still listed in KEY-PENDING', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  r.setRules('rules: []\n'); // a reload: new flows need no keys, this one keeps its rules (required)
  const a = await agent(r);
  t.teardown(() => a.close());
  const p = pendings(await escrow(a, []));
  t.equal(p.length, 1, 'listed: the agent can still unlock it before its deadline');
  t.equal(hex(p[0]!.clientRandom), hex(f.keySets[0]!.clientRandom));
});

t.test('key sets apply to the user’s flow: KEY-STATUS 1, held data released, no longer pending', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  const a = await agent(r);
  t.teardown(() => a.close());
  const m = await escrow(a, [f.keySets[0]!]);
  t.equal(m.cls, Class.Success);
  t.same(statuses(m), [1], 'verified against traffic already seen');
  t.equal(ev(r, 'keys_verified').length, 1);
  t.same(pendings(m), [], 'covered: not pending any more');
  const more = f.packets.find((p) => p.dir === 'c2p' && isAppData(p.data))!;
  t.ok(
    (await relayOne(r, CH, 'c2p', more.data)).some((d) => d.equals(more.data)),
    'covered traffic forwarded',
  );
  t.notOk(JSON.stringify(r.events.events).includes(hex(f.keySets[0]!.clientWriteKey!)), 'no key material in events');
});

t.test(
  "another user's credential cannot unlock the flow: nothing applied, and the answer does not tell that alice's flow shows it",
  async (t) => {
    const r = await rig();
    t.teardown(r.close);
    const f = await handshake(r);
    const b = await agent(r, 'bob', 'hunter2');
    t.teardown(() => b.close());
    const m = await escrow(b, [f.keySets[0]!]);
    t.equal(m.cls, Class.Success);
    const unseen = { ...f.keySets[0]!, clientRandom: randomBytes(32) };
    t.same(statuses(m), statuses(await escrow(b, [unseen])), 'the same KEY-STATUS as for a client_random no flow shows (no oracle)');
    t.same(statuses(m), [0], 'held for bob alone');
    t.equal(r.inspector.keyEscrow.held.sizeOf('alice'), 0);
    t.same(ev(r, 'keys_received'), []);
    t.notOk(JSON.stringify(m.raw.toString('latin1')).includes('alice'), 'the answer names nobody');
    r.clock.advance(11_000);
    t.same(
      ev(r, 'flow_blocked').map((e) => (e.gatehouse as Record<string, unknown>).reason),
      ['keys_missing'],
      'the flow is blocked at its deadline',
    );
  },
);

t.test('keys before the handshake are held, then applied when the ServerHello crosses', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const a = await agent(r);
  t.teardown(() => a.close());
  const m = await escrow(a, [f.keySets[0]!]);
  t.same(statuses(m), [0], 'held: received');
  t.equal(r.inspector.keyEscrow.held.size, 1);
  await handshake(r);
  t.equal(r.inspector.keyEscrow.held.size, 0, 'taken from the hold');
  t.equal(ev(r, 'keys_received').length, 1);
  t.equal(ev(r, 'keys_verified').length, 1);
});

t.test('held key sets expire at keys.deadline and the hold is bounded (16 per user): KEY-STATUS 3', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const a = await agent(r);
  t.teardown(() => a.close());
  const fake = (): KeySet => ({ ...f.keySets[0]!, clientRandom: randomBytes(32) });
  const got: (number | null)[] = [];
  for (let i = 0; i < 3; i++) got.push(...statuses(await escrow(a, Array.from({ length: i < 2 ? 8 : 1 }, fake))));
  t.same(got, [...Array(16).fill(0), 3], 'the 17th is not held');
  r.clock.advance(10_001);
  r.inspector.keyEscrow.sweep(r.clock.now());
  t.equal(r.inspector.keyEscrow.held.size, 0, 'expired and wiped');
});

t.test('more than 8 WRITE-KEYS: 400 Too many WRITE-KEYS, nothing applied', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  const a = await agent(r);
  t.teardown(() => a.close());
  const m = await escrow(a, Array(9).fill(f.keySets[0]!));
  t.equal(errCode(m), 400);
  t.equal(getErrorCode(m)?.reason, 'Too many WRITE-KEYS');
  t.ok(getAttrs(m, Attr.MessageIntegrity).length, 'authenticated answer carries integrity');
  t.same(ev(r, 'keys_received'), []);
});

t.test('a WRITE-KEYS that does not open: 400 Invalid WRITE-KEYS, keys_invalid event, nothing applied', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  const a = await agent(r);
  t.teardown(() => a.close());
  const m = await escrow(a, [f.keySets[0]!], randomBytes(12), (v) => {
    const x = Buffer.from(v);
    x[x.length - 1]! ^= 1;
    return x;
  });
  t.equal(errCode(m), 400);
  t.equal(getErrorCode(m)?.reason, 'Invalid WRITE-KEYS');
  const inv = ev(r, 'keys_invalid');
  t.equal(inv.length, 1);
  t.same((inv[0] as Record<string, unknown>).keys, { what: 'key_escrow', reason: 'decrypt' });
  t.same(ev(r, 'keys_received'), []);
});

t.test('a key set that fails against the flow: KEY-STATUS 2 (keys_invalid), the flow stays uncovered', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  const a = await agent(r);
  t.teardown(() => a.close());
  const bad: KeySet = { ...f.keySets[0]!, clientWriteKey: randomBytes(16), serverWriteKey: randomBytes(16) };
  const m = await escrow(a, [bad]);
  t.same(statuses(m), [2]);
  t.ok(ev(r, 'keys_invalid').length >= 1);
  t.equal(pendings(m).length, 1, 'still pending');
});

t.test('replay: a captured request sent again from another port gets 438; a retransmission the cached answer', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const f = await handshake(r);
  const a = await agent(r);
  t.teardown(() => a.close());
  await escrow(a, []);
  const tid = randomBytes(12);
  const bytes = a.build(METHOD_KEY_ESCROW, writeKeys(a, tid, [f.keySets[0]!]), true, { tid });
  const first = await sendRaw(a.serverPort, bytes, a);
  t.equal(first.cls, Class.Success);
  const again = await sendRaw(a.serverPort, bytes, a);
  t.same(again.raw, first.raw, 'retransmission from the same 5-tuple: the same answer');
  const other = await sendRaw(a.serverPort, bytes);
  t.equal(errCode(other), 438, 'replay from another port: 438');
  t.ok(getString(other, Attr.Nonce), 'with a fresh NONCE');
  t.equal(ev(r, 'keys_received').length, 1, 'applied once');
});

t.test('rate: over 50/s per user (burst 100) KeyEscrow gets 508', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const a = await agent(r);
  t.teardown(() => a.close());
  let ok = 0;
  let refused = 0;
  for (let i = 0; i < 102; i++) {
    const m = await escrow(a, []);
    if (m.cls === Class.Success) ok++;
    else if (errCode(m) === 508) refused++;
  }
  t.equal(ok, 100);
  t.equal(refused, 2);
});

t.test('without a KeyEscrow handler the method is unknown: 400 (RFC 8489 §6.3.1)', async (t) => {
  const h = await startServer();
  t.teardown(() => h.close());
  const a = await Client.udp(h.udpPort);
  t.teardown(() => a.close());
  const m = await a.request(METHOD_KEY_ESCROW);
  t.equal(errCode(m), 400);
});

t.test('ReplayMemory: replay, expiry, full (no pair forgotten early)', async (t) => {
  const clock = new ManualClock();
  const m = new ReplayMemory(clock, 1000, 2);
  const a = randomBytes(12);
  const b = randomBytes(12);
  t.equal(m.use('n', a), 'fresh');
  t.equal(m.use('n', a), 'replay');
  t.equal(m.use('n2', a), 'fresh', 'another nonce');
  t.equal(m.use('n', b), 'full');
  clock.advance(1001);
  t.equal(m.use('n', b), 'fresh');
  t.equal(m.use('n', a), 'fresh', 'after the nonce lifetime the pair is gone (the nonce is stale anyway)');
});

t.test('ReplayMemory: one user cannot fill the memory for the others (per-user share, §6.3 step 2)', async (t) => {
  const clock = new ManualClock();
  const m = new ReplayMemory(clock, 1000, 8, 2);
  t.equal(m.use('n', randomBytes(12), 'mallory'), 'fresh');
  t.equal(m.use('n', randomBytes(12), 'mallory'), 'fresh');
  t.equal(m.use('n', randomBytes(12), 'mallory'), 'full', "mallory's share is used up");
  t.equal(m.use('n', randomBytes(12), 'alice'), 'fresh', 'alice still escrows');
  const a = randomBytes(12);
  t.equal(m.use('n2', a, 'alice'), 'fresh');
  t.equal(m.use('n2', a, 'alice'), 'replay', 'a replay is a replay, share or not');
  t.equal(m.size, 4);
  clock.advance(1001);
  t.equal(m.use('n', randomBytes(12), 'mallory'), 'fresh', 'her pairs expired: her share is back');
  t.equal(m.size, 1);
});

t.test('HeldKeySets: per-user and total bounds, take removes, wipes on expiry', async (t) => {
  const clock = new ManualClock();
  const h = new HeldKeySets(clock, { perUser: 2, total: 3 });
  const ks = (): KeySet => ({
    clientRandom: randomBytes(32),
    serverRandom: randomBytes(32),
    cipherSuite: 0xc02b,
    epoch: 1,
    clientWriteKey: randomBytes(16),
  });
  const k1 = ks();
  t.ok(h.hold('u', k1, 5000));
  t.ok(h.hold('u', ks(), 5000));
  t.notOk(h.hold('u', ks(), 5000), 'per user');
  t.ok(h.hold('v', ks(), 5000));
  t.notOk(h.hold('w', ks(), 5000), 'total');
  t.same(h.take('v', hex(k1.clientRandom)), [], "another user's take gets nothing");
  t.equal(h.take('u', hex(k1.clientRandom)).length, 1);
  const k2 = ks();
  h.hold('w', k2, 1000);
  clock.advance(1001);
  h.sweep(clock.now());
  t.ok(
    k2.clientWriteKey!.every((x) => x === 0),
    'wiped at expiry',
  );
});

/** Sends raw bytes from `via` (same 5-tuple) or a fresh socket, returns the answer with that tid. */
async function sendRaw(port: number, bytes: Buffer, via?: Client): Promise<StunMessage> {
  const tid = bytes.subarray(8, 20);
  if (via) {
    const p = via.next((b) => b.length >= 20 && b.subarray(8, 20).equals(tid));
    via.sendRaw(bytes);
    return decodeStun(await p)!;
  }
  const s = createSocket('udp4');
  await new Promise<void>((res) => s.bind(0, '127.0.0.1', () => res()));
  try {
    const p = new Promise<Buffer>((res) => s.on('message', (m) => m.subarray(8, 20).equals(tid) && res(m)));
    s.send(bytes, port, '127.0.0.1');
    return decodeStun(await p)!;
  } finally {
    s.close();
  }
}

/** Plaintext epoch-0 handshake record with one whole message (RFC 6347 §4.1, §4.2.2). */
function hsRecord(type: number, body: Buffer, seq: number): Buffer {
  const hh = Buffer.alloc(12);
  hh[0] = type;
  hh.writeUIntBE(body.length, 1, 3);
  hh.writeUIntBE(body.length, 9, 3);
  const hdr = Buffer.alloc(13);
  hdr[0] = 22;
  hdr.writeUInt16BE(0xfefd, 1);
  hdr.writeUIntBE(seq, 5, 6);
  hdr.writeUInt16BE(12 + body.length, 11);
  return Buffer.concat([hdr, hh, body]);
}
const withExt = (head: Buffer, exts: Buffer): Buffer => Buffer.concat([head, Buffer.from([exts.length >> 8, exts.length & 255]), exts]);

t.test('DTLS 1.3: SRTP profile unknown (flag 0x04) → record + handshake secrets → listed again with the profile → SRTP keys', async (t) => {
  const { Dtls13Writer } = await import('../../../src/wire/dtls13.js');
  const { deriveSrtpTls13 } = await import('../../../src/wire/tls-prf.js');
  const r = await rig();
  t.teardown(r.close);
  const cr = randomBytes(32);
  const sr = randomBytes(32);
  // ClientHello: supported_versions [DTLS 1.3], use_srtp [7, 1]; the ServerHello has no use_srtp (RFC 8446 §4.2: it is in EncryptedExtensions).
  const ch = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), cr, Buffer.from([0, 0, 0, 2, 0x13, 0x01, 1, 0])]),
    Buffer.from([0, 43, 0, 3, 2, 0xfe, 0xfc, 0, 14, 0, 7, 0, 4, 0, 7, 0, 1, 0]),
  );
  const sh = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), sr, Buffer.from([0, 0x13, 0x01, 0])]),
    Buffer.from([0, 43, 0, 2, 0xfe, 0xfc]),
  );
  const [chs, shs, cts, sts, exp] = [randomBytes(32), randomBytes(32), randomBytes(32), randomBytes(32), randomBytes(32)];
  const eeExt = Buffer.from([0, 14, 0, 5, 0, 2, 0, 7, 0]);
  const eeBody = Buffer.concat([Buffer.from([0, eeExt.length]), eeExt]);
  const hh = Buffer.alloc(12);
  hh[0] = 8; // EncryptedExtensions
  hh.writeUIntBE(eeBody.length, 1, 3);
  hh.writeUInt16BE(1, 4);
  hh.writeUIntBE(eeBody.length, 9, 3);
  const ee = new Dtls13Writer(0x1301, shs, 2).seal(22, Buffer.concat([hh, eeBody]));
  await relayOne(r, CH, 'c2p', hsRecord(1, ch, 0));
  await relayOne(r, CH, 'p2c', hsRecord(2, sh, 0));
  t.equal((await relayOne(r, CH, 'p2c', ee)).length, 1, 'the encrypted handshake is forwarded at once');
  const app = new Dtls13Writer(0x1301, cts, 3).seal(23, Buffer.from('held until keys'));
  t.same(await relayOne(r, CH, 'c2p', app), [], 'application data held');
  const a = await agent(r);
  t.teardown(() => a.close());
  const q = pendings(await escrow(a, []));
  t.equal(q.length, 1);
  t.equal(q[0]!.version, 3);
  t.equal(q[0]!.epoch, 3);
  t.equal(q[0]!.srtpProfile, 0);
  t.equal(q[0]!.flags & 0x06, 0x06, 'media wanted, SRTP profile not known yet');
  const base: KeySet = {
    clientRandom: cr,
    serverRandom: sr,
    cipherSuite: 0x1301,
    epoch: 3,
    clientAppTrafficSecret: cts,
    serverAppTrafficSecret: sts,
  };
  const m1 = await escrow(a, [{ ...base, clientHsTrafficSecret: chs, serverHsTrafficSecret: shs }]);
  t.same(statuses(m1), [1], 'record keys verified against the held record');
  const p1 = pendings(m1);
  t.equal(p1.length, 1, 'still pending: SRTP keys missing');
  t.equal(p1[0]!.srtpProfile, 7, 'the profile, read from the EncryptedExtensions that passed before the keys');
  t.equal(p1[0]!.flags & 0x0e, 0x0a, 'media wanted, record keys held, profile known');
  const s = deriveSrtpTls13('sha256', exp, 7, 'dtls13')!;
  const m2 = await escrow(a, [
    {
      ...base,
      srtpProfile: 7,
      srtpClientMasterKey: s.clientMasterKey,
      srtpServerMasterKey: s.serverMasterKey,
      srtpClientMasterSalt: s.clientMasterSalt,
      srtpServerMasterSalt: s.serverMasterSalt,
    },
  ]);
  t.equal(m2.cls, Class.Success);
  t.same(pendings(m2), [], 'nothing pending once the SRTP keys are there');
});
