// FlowGuard.keyState (the dashboard's key status): waiting with the deadline's time once the
// first handshake starts the clock, verified once escrowed keys cover the association,
// blocked (keys required) or uninspected (keys optional) once the deadline passed.
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { FlowGuard, type GuardKeysPolicy } from '../../../src/gateway/flow-guard.js';
import { fixtureFlow } from './flow-guard-helpers.js';

const POLICY: GuardKeysPolicy = { required: true, deadline: 10_000, unverified: 'hold', media: true, data: true };
const FIRST = 13;

function rig(policy: Partial<GuardKeysPolicy> = {}) {
  const clock = new ManualClock();
  const guard = new FlowGuard({ keys: { ...POLICY, ...policy }, clock });
  return { clock, guard };
}

t.test('waiting with a deadline, then verified', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const { clock, guard } = rig();
  t.same(guard.keyState, { status: 'waiting', deadline: null }, 'no DTLS yet: no deadline');
  const start = clock.now();
  for (const p of f.packets.slice(0, FIRST)) guard.packet(p.data, p.dir, 5000);
  const w = guard.keyState;
  t.equal(w.status, 'waiting');
  t.ok(w.deadline !== null && w.deadline >= start + 10_000 && w.deadline <= clock.now() + 10_000, `deadline ${w.deadline}`);
  t.equal(guard.addKeySet(f.keySets[0]!), 'verified');
  t.same(guard.keyState, { status: 'verified', deadline: null });
  t.notMatch(JSON.stringify(guard.keyState), /[0-9a-f]{32}/, 'no key material in it');
  guard.close();
});

t.test('required: blocked at the deadline; optional: uninspected', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const a = rig();
  for (const p of f.packets.slice(0, FIRST)) a.guard.packet(p.data, p.dir, 5000);
  a.clock.advance(10_001);
  t.same(a.guard.keyState, { status: 'blocked', deadline: null, reason: 'keys_missing' });
  const b = rig({ required: false, unverified: 'pass' });
  for (const p of f.packets.slice(0, FIRST)) b.guard.packet(p.data, p.dir, 5000);
  t.equal(b.guard.keyState.status, 'waiting');
  b.clock.advance(10_001);
  t.same(b.guard.keyState, { status: 'uninspected', deadline: null, reason: 'keys_missing' });
  a.guard.close();
  b.guard.close();
});
