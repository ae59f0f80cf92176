import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { FlowGuard, type BlockReason, type GuardKeysPolicy, type QueuedPacket } from '../../../src/gateway/flow-guard.js';
import { fixtureFlow, isAppData } from './flow-guard-helpers.js';

const POLICY: GuardKeysPolicy = { required: true, deadline: 10_000, unverified: 'hold', media: true, data: true };

function rig(policy: Partial<GuardKeysPolicy> = {}) {
  const clock = new ManualClock();
  const released: QueuedPacket[] = [];
  const blocks: BlockReason[] = [];
  const keys: string[] = [];
  const guard = new FlowGuard({
    keys: { ...POLICY, ...policy },
    clock,
    onRelease: (q) => released.push(...q),
    onBlock: (r) => blocks.push(r),
    onKeys: (k) => keys.push(k),
  });
  const forwarded: Buffer[] = [];
  const feed = (p: { dir: 'c2p' | 'p2c'; data: Buffer }) => {
    const v = guard.packet(p.data, p.dir, 5000);
    if (v === 'forward') forwarded.push(p.data);
    return v;
  };
  return { clock, guard, released, blocks, keys, forwarded, feed };
}

const FIRST = 13; // the first 13 datagrams of the renegotiation fixture: handshake + app data of association 1

t.test('hold: handshake forwarded, application data held until escrowed keys verify, then released in order', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const r = rig();
  const verdicts = f.packets.slice(0, FIRST).map((p) => r.feed(p));
  const app = f.packets.slice(0, FIRST).filter((p) => isAppData(p.data));
  t.ok(app.length >= 3, 'fixture has application data');
  t.equal(r.forwarded.filter((d) => isAppData(d)).length, 0, 'no application data forwarded before keys');
  t.equal(verdicts.filter((v) => v === 'hold').length, app.length, 'every application data datagram held');
  t.equal(r.forwarded.length, FIRST - app.length, 'handshake, CCS and Finished forwarded');
  t.notOk(r.guard.covered);
  const st = r.guard.addKeySet(f.keySets[0]!);
  t.equal(st, 'verified', 'KEY-STATUS 1: verified against traffic already seen');
  t.ok(r.guard.covered);
  t.same(r.keys, ['verified']);
  const held = r.released.filter((q) => q.held);
  t.same(
    held.map((q) => q.data.toString('hex')),
    app.map((p) => p.data.toString('hex')),
    'held datagrams released in arrival order',
  );
  t.equal(r.released.length, FIRST, 'the whole flow so far is handed to inspection, in order');
  r.clock.advance(60_000);
  t.same(r.blocks, [], 'no block once verified');
  r.guard.close();
});

t.test('deadline passes without keys: keys_missing block, held traffic discarded', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const r = rig();
  for (const p of f.packets.slice(0, FIRST)) r.feed(p);
  r.clock.advance(9_999);
  t.same(r.blocks, []);
  r.clock.advance(1);
  t.same(r.blocks, ['keys_missing']);
  t.equal(r.released.length, 0, 'nothing released');
  t.equal(r.feed(f.packets[1]!), 'drop', 'a blocked flow forwards nothing');
  t.equal(r.guard.addKeySet(f.keySets[0]!) === 'verified' && r.released.length > 0, false, 'late keys do not release a blocked flow');
});

t.test('key set of a different association is never verified: keys_missing', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const r = rig();
  for (const p of f.packets.slice(0, FIRST)) r.feed(p);
  t.equal(r.guard.addKeySet(f.keySets[1]!), 'pending', 'KEY-STATUS 0: no traffic of that association');
  t.notOk(r.guard.covered);
  r.clock.advance(10_000);
  t.same(r.blocks, ['keys_missing']);
});

t.test('re-key: renegotiation is a new association; old keys do not cover it (rekey_missing)', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const r = rig();
  t.equal(r.guard.addKeySet(f.keySets[0]!), 'pending', 'keys before traffic: received');
  for (const p of f.packets.slice(0, FIRST)) t.equal(r.feed(p), 'forward');
  t.ok(r.guard.covered);
  const first = r.guard.association;
  const rest = f.packets.slice(FIRST);
  const v = rest.map((p) => r.feed(p));
  t.not(r.guard.association, first, 'new association after renegotiation');
  t.notOk(r.guard.covered);
  const app2 = rest.map((p, i) => [p, v[i]] as const).filter(([p]) => isAppData(p.data, 2));
  t.ok(app2.length > 0);
  t.ok(
    app2.every(([, x]) => x === 'hold'),
    'application data of the new association held',
  );
  // Replaying the old key set does not cover the new association.
  t.not(r.guard.addKeySet(f.keySets[0]!), 'pending', 'the old key set is the old association (already judged)');
  t.notOk(r.guard.covered, 'replayed old key set does not cover the new association');
  r.clock.advance(10_000);
  t.same(r.blocks, ['rekey_missing']);
});

t.test('re-key with the new association keys: verified and released', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const r = rig();
  r.guard.addKeySet(f.keySets[0]!);
  for (const p of f.packets) r.feed(p);
  t.notOk(r.guard.covered);
  t.equal(r.guard.addKeySet(f.keySets[1]!), 'verified');
  t.ok(r.guard.covered);
  const held = r.released.filter((q) => q.held).map((q) => q.data.toString('hex'));
  t.same(
    held,
    f.packets.filter((p) => isAppData(p.data, 2)).map((p) => p.data.toString('hex')),
  );
  r.clock.advance(60_000);
  t.same(r.blocks, []);
});

t.test('KEY-DECLINE blocks at once when keys are required, not otherwise', async (t) => {
  const a = rig();
  a.guard.decline();
  t.same(a.blocks, ['keys_declined']);
  const b = rig({ required: false });
  b.guard.decline();
  t.same(b.blocks, []);
});

t.test('unverified: drop and pass', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const d = rig({ unverified: 'drop' });
  const vd = f.packets.map((p) => d.feed(p));
  t.ok(f.packets.every((p, i) => (isAppData(p.data) ? vd[i] === 'drop' : vd[i] === 'forward')));
  const p = rig({ unverified: 'pass' });
  const vp = f.packets.map((x) => p.feed(x));
  t.ok(vp.every((x) => x === 'forward'));
  t.equal(p.guard.addKeySet(f.keySets[0]!), 'verified');
  t.equal(p.released.filter((q) => q.held).length, 0, 'nothing was held');
  t.ok(p.released.length > 0, 'passed traffic is still handed to inspection');
});

t.test('keys not required: deadline passes, held traffic forwarded uninspected', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const r = rig({ required: false });
  for (const p of f.packets) r.feed(p);
  r.clock.advance(10_000);
  t.same(r.blocks, []);
  t.equal(r.released.filter((q) => q.held).length, f.packets.filter((p) => isAppData(p.data)).length);
  t.equal(r.feed(f.packets[f.packets.length - 1]!), 'forward');
});

t.test('deadline 0: application data without keys blocks at once', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const r = rig({ deadline: 0 });
  for (const p of f.packets) r.feed(p);
  t.same(r.blocks, ['keys_missing']);
  t.equal(r.forwarded.filter((x) => isAppData(x)).length, 0);
});

t.test('STUN is never held; hold is bounded', async (t) => {
  const r = rig();
  const binding = Buffer.alloc(20);
  binding.writeUInt16BE(0x0001, 0); // RFC 8489 §5: Binding request, length 0, magic cookie
  binding.writeUInt32BE(0x2112a442, 4);
  t.equal(r.guard.packet(binding, 'c2p', 1), 'forward', 'a STUN Binding passes');
  t.not(r.guard.packet(Buffer.from([0, 1, 0, 0]), 'c2p', 1), 'forward', 'four bytes in the STUN range are not STUN: not forwarded');
  const small = new FlowGuard({ keys: POLICY, clock: new ManualClock(), maxQueuePackets: 2 });
  const rtp = Buffer.alloc(40);
  rtp[0] = 0x80;
  rtp[1] = 0x60;
  t.same([small.packet(rtp, 'c2p', 1), small.packet(rtp, 'c2p', 1), small.packet(rtp, 'c2p', 1)], ['hold', 'hold', 'drop']);
  small.close();
});

t.test('SRTP: covered only by a verified key set with SRTP keys when media keys are wanted', async (t) => {
  const rtp = Buffer.alloc(40);
  rtp[0] = 0x80;
  rtp[1] = 0x60;
  const withSrtp = fixtureFlow('gcm128-srtp-reneg.json');
  const a = rig();
  a.guard.addKeySet(withSrtp.keySets[0]!);
  for (const p of withSrtp.packets.slice(0, FIRST)) a.feed(p);
  t.ok(a.guard.covered);
  t.equal(a.guard.packet(rtp, 'c2p', 1), 'forward', 'association with SRTP keys covers SRTP');
  const noSrtp = fixtureFlow('chacha20.json');
  const b = rig();
  b.guard.addKeySet(noSrtp.keySets[0]!);
  for (const p of noSrtp.packets) b.feed(p);
  t.ok(b.guard.covered);
  t.equal(b.guard.packet(rtp, 'c2p', 1), 'hold', 'no SRTP keys: media held');
  const c = rig({ media: false });
  c.guard.addKeySet(noSrtp.keySets[0]!);
  for (const p of noSrtp.packets) c.feed(p);
  t.equal(c.guard.packet(rtp, 'c2p', 1), 'forward', 'media keys not wanted: media passes');
  // SRTP before any DTLS starts the clock (§5.1).
  const d = rig();
  t.equal(d.guard.packet(rtp, 'c2p', 1), 'hold');
  d.clock.advance(10_000);
  t.same(d.blocks, ['keys_missing']);
});

t.test('DTLS 1.3 handshake datagrams kept for late handshake secrets are given back under memory pressure', async (t) => {
  const { Dtls13Writer } = await import('../../../src/wire/dtls13.js');
  const { randomBytes } = await import('node:crypto');
  const hsRecord = (type: number, body: Buffer, seq: number): Buffer => {
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
  };
  const withExt = (head: Buffer, exts: Buffer): Buffer => Buffer.concat([head, Buffer.from([exts.length >> 8, exts.length & 255]), exts]);
  const ch = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), randomBytes(32), Buffer.from([0, 0, 0, 2, 0x13, 0x01, 1, 0])]),
    Buffer.from([0, 43, 0, 3, 2, 0xfe, 0xfc, 0, 14, 0, 7, 0, 4, 0, 7, 0, 1, 0]),
  );
  const sh = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), randomBytes(32), Buffer.from([0, 0x13, 0x01, 0])]),
    Buffer.from([0, 43, 0, 2, 0xfe, 0xfc]),
  );
  const ee = new Dtls13Writer(0x1301, randomBytes(32), 2).seal(22, Buffer.alloc(40, 8));
  const r = rig({ required: false });
  r.feed({ dir: 'c2p', data: hsRecord(1, ch, 0) });
  r.feed({ dir: 'p2c', data: hsRecord(2, sh, 0) });
  t.equal(r.feed({ dir: 'p2c', data: ee }), 'forward', 'the encrypted handshake is forwarded');
  t.ok(r.guard.bufferedBytes >= ee.length, 'kept (and counted) for handshake secrets that may come');
  const freed = r.guard.stopCopies();
  t.ok(freed >= ee.length, 'its copy is freed with the other copies of forwarded datagrams');
  t.equal(r.guard.bufferedBytes, 0, 'nothing left in the memory account');
  const ee2 = new Dtls13Writer(0x1301, randomBytes(32), 2).seal(22, Buffer.alloc(40, 9));
  r.feed({ dir: 'p2c', data: ee2 });
  t.ok(r.guard.bufferedBytes <= ee2.length, 'not copying under pressure: not kept for late secrets (at most its queued copy)');
  r.guard.close();
});
