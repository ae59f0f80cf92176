/**
 * Issue 8 on the GatewayInspector (no sockets): supervision (an exception in one flow's
 * pipeline or policy closes that flow, the others go on), memory bounds per allocation,
 * uninspected traffic reported on flows whose keys are not required, budgets named in
 * flow_blocked, and key material never in events.
 */
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink, type EveEvent } from '../../../src/events/eve.js';
import { GatewayInspector, type FlowRelay } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';
import type { Flow } from '../../../src/turn/flow.js';
import { record, syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';
import { certRecord } from './flow-guard-helpers.js';
import { HANDSHAKE_BYTES_BUDGET } from '../../../src/gateway/classify.js';

let nextId = 1;
function makeFlow(user = 'alice', allocationId = `alloc-${nextId}`, peer = '198.51.100.7'): Flow {
  return {
    id: nextId++,
    allocationId,
    user,
    groups: [],
    client: { proto: 'udp', address: '192.0.2.10', port: 50000 },
    relayed: { address: '127.0.0.1', port: 49200 },
    peerAddress: peer,
    createdAt: 0,
    open: true,
    ctx: undefined,
  };
}

async function rig(rules: string, opts: { memory?: { allocationBytes: number; maxBytes: number } } = {}) {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const identity = await testIdentity();
  const engine = new PolicyEngine([parseRuleFile(rules, 'rules.yaml')]);
  const supervisor = new Supervisor(silentLogger);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock, supervisor, ...opts });
  const closed: { flow: number; reason: string }[] = [];
  const sent: Buffer[] = [];
  const relay: FlowRelay = { send: (_f, _d, data) => void sent.push(data), close: (f, reason) => void closed.push({ flow: f.id, reason }) };
  inspector.setRelay(relay);
  return { clock, events, engine, supervisor, inspector, closed, sent };
}

/** A flow with a verified synthetic DTLS 1.2 session and an SCTP data channel. */
function liveFlow(r: Awaited<ReturnType<typeof rig>>, flow: Flow) {
  r.inspector.onFlowCreated(flow);
  const s = syntheticSession();
  for (const h of s.hello) r.inspector.onPacket(flow, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  r.inspector.applyKeySet(flow, s.keySet);
  const sctp = new SctpBuilder();
  const send = (plain: Buffer) => r.inspector.onPacket(flow, 'c2p', s.appData(true, plain), 5000);
  send(sctp.init());
  send(sctp.open(1, 'chat'));
  return { s, msg: (text: string) => send(sctp.message(1, Buffer.from(text))), send, sctp };
}

const gh = (e: EveEvent) => e.gatehouse as Record<string, unknown>;
const PASS = 'keys: { required: false, unverified: pass }\n';
const REQUIRED = 'keys: { required: true, deadline: 10s, unverified: hold, block_for: 5m }\n';

t.test('an exception in one flow pipeline closes that flow; another flow goes on', async (t) => {
  const r = await rig(PASS);
  const a = makeFlow('alice', 'alloc-a');
  const b = makeFlow('bob', 'alloc-b');
  const fa = liveFlow(r, a);
  const fb = liveFlow(r, b);
  t.ok(fa.msg('one') && fb.msg('one'), 'both flows relay');
  // Inject a fault into flow a's pipeline (a decoder bug).
  const st = a.ctx as { pipeline: { feed: (...x: unknown[]) => void } };
  st.pipeline.feed = () => {
    throw new Error('injected pipeline fault');
  };
  t.equal(r.inspector.onPacket(a, 'c2p', fa.s.srtp(true, 1, Buffer.alloc(40), 1234), 5000), false, 'the faulty datagram is not relayed');
  t.same(
    r.closed.map((c) => [c.flow, c.reason]),
    [[a.id, 'internal_error']],
    'flow a closed',
  );
  t.equal(r.supervisor.failures.get('gateway.flow.packet'), 1, 'counted by the supervisor');
  t.ok(
    r.events.events.some((e) => e.event_type === 'flow_closed' && e.flow_id === a.id && gh(e).reason === 'internal_error'),
    'flow_closed internal_error reported',
  );
  t.equal(r.inspector.onPacket(a, 'c2p', Buffer.from([0x17, 0xfe, 0xfd]), 5000), false, 'a closed flow relays nothing');
  t.ok(fb.msg('two'), 'flow b goes on');
  t.ok(
    r.events.events.some(
      (e) => e.event_type === 'datachannel.message' && e.flow_id === b.id && (e.datachannel as { size?: number } | undefined)?.size === 3,
    ),
    'flow b still inspected',
  );
});

t.test('an exception in a policy call on one flow closes that flow; another flow goes on', async (t) => {
  const r = await rig(PASS);
  const a = makeFlow('mallory', 'alloc-a');
  const b = makeFlow('bob', 'alloc-b');
  const fa = liveFlow(r, a);
  const fb = liveFlow(r, b);
  const evaluate = r.engine.evaluate.bind(r.engine);
  r.engine.evaluate = (ctx, subject) => {
    if (ctx.user === 'mallory') throw new Error('injected policy fault');
    return evaluate(ctx, subject);
  };
  t.equal(fa.msg('judge me'), false, 'not relayed unjudged');
  t.same(
    r.closed.map((c) => c.flow),
    [a.id],
    'flow a closed',
  );
  t.ok(fb.msg('fine'), 'flow b goes on');
  t.equal(r.closed.length, 1);
});

t.test('an exception in a deadline timer closes that flow only', async (t) => {
  const r = await rig(REQUIRED);
  const a = makeFlow('alice', 'alloc-a');
  const b = makeFlow('bob', 'alloc-b');
  r.inspector.onFlowCreated(a);
  r.inspector.onFlowCreated(b);
  const s = syntheticSession();
  for (const f of [a, b]) for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  // Flow a's guard fails when its deadline fires.
  const st = a.ctx as { guard: { deadlinePassed: () => void } };
  st.guard.deadlinePassed = () => {
    throw new Error('injected timer fault');
  };
  r.clock.advance(10_000);
  const reasons = r.closed.map((c) => [c.flow, c.reason]);
  t.same(reasons, [
    [a.id, 'internal_error'],
    [b.id, 'blocked_keys_missing'],
  ]);
  t.equal(r.supervisor.failures.get('gateway.flow.timer'), 1);
});

t.test('keys not required: uninspected traffic is counted and reported in flow_uninspected', async (t) => {
  const r = await rig(PASS);
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  const junk = Buffer.alloc(100, 0xff); // RFC 7983 §7: no WebRTC protocol starts with 255
  const zrtp = Buffer.alloc(60, 0x10);
  const stunAlloc = Buffer.alloc(20);
  stunAlloc.writeUInt16BE(0x0003, 0); // Allocate request: not a peer-to-peer method
  stunAlloc.writeUInt32BE(0x2112a442, 4);
  t.ok(r.inspector.onPacket(f, 'c2p', junk, 5000), 'passed (unverified: pass)');
  t.ok(r.inspector.onPacket(f, 'p2c', zrtp, 5000));
  t.ok(r.inspector.onPacket(f, 'c2p', stunAlloc, 5000));
  r.clock.advance(11_000);
  t.ok(r.inspector.onPacket(f, 'c2p', junk, 5000));
  const reports = r.events.events.filter((e) => e.event_type === 'flow_uninspected' && gh(e).uninspected !== undefined);
  t.ok(reports.length >= 2, 'reported at a bounded rate (the first at once, the next after the interval)');
  r.inspector.onFlowClosed(f);
  const last = r.events.events.filter((e) => e.event_type === 'flow_uninspected' && gh(e).uninspected !== undefined).at(-1)!;
  const u = gh(last).uninspected as {
    packets: number;
    bytes: number;
    forwarded_bytes: number;
    by: Record<string, { packets: number; bytes: number }>;
  };
  t.equal(u.packets, 4);
  t.equal(u.bytes, 100 + 60 + 20 + 100);
  t.equal(u.forwarded_bytes, 280, 'every uninspected byte that was passed is counted');
  t.same(u.by.other, { packets: 2, bytes: 200 });
  t.same(u.by.zrtp, { packets: 1, bytes: 60 });
  t.same(u.by.stun_method, { packets: 1, bytes: 20 });
});

t.test('required: epoch-0 handshake exfiltration is blocked at the handshake budget, with the budget named', async (t) => {
  const r = await rig(REQUIRED);
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  let forwarded = 0;
  for (let i = 0; i < 200; i++) {
    const d = certRecord(i, 1000);
    if (r.inspector.onPacket(f, 'c2p', d, 5000)) forwarded += d.length;
  }
  t.ok(forwarded <= HANDSHAKE_BYTES_BUDGET, `forwarded ${forwarded} <= ${HANDSHAKE_BYTES_BUDGET}`);
  t.ok(forwarded > HANDSHAKE_BYTES_BUDGET - 1100, 'up to the budget');
  const b = r.events.events.filter((e) => e.event_type === 'flow_blocked');
  t.equal(b.length, 1);
  t.match(gh(b[0]!), { reason: 'budget_exceeded', budget: 'handshake_bytes' });
  t.same(
    r.closed.map((c) => c.reason),
    ['blocked_budget_exceeded'],
  );
});

t.test('memory: a required flow over the allocation budget is blocked (budget memory)', async (t) => {
  const r = await rig(REQUIRED, { memory: { allocationBytes: 64 * 1024, maxBytes: 1 << 30 } });
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  const s = syntheticSession();
  for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  // Application data without keys: held (a copy each), up to the allocation's budget.
  let held = 0;
  for (let i = 0; i < 100 && !r.closed.length; i++) {
    t.notOk(r.inspector.onPacket(f, 'c2p', s.appData(true, Buffer.alloc(1000, i)), 5000));
    held++;
  }
  t.ok(held > 30 && held < 100, `blocked after ${held} held datagrams`);
  const b = r.events.events.find((e) => e.event_type === 'flow_blocked')!;
  t.match(gh(b), { reason: 'budget_exceeded', budget: 'memory' });
  t.equal(r.inspector.memory.total, 0, 'a closed flow releases everything');
});

t.test('memory: a flow whose keys are not required drops its oldest held data and reports cap.hit', async (t) => {
  const r = await rig('keys: { required: false, unverified: hold, deadline: 10s }\n', {
    memory: { allocationBytes: 32 * 1024, maxBytes: 1 << 30 },
  });
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  const s = syntheticSession();
  for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  for (let i = 0; i < 100; i++) r.inspector.onPacket(f, 'c2p', s.appData(true, Buffer.alloc(1000, i)), 5000);
  t.same(r.closed, [], 'not blocked');
  t.ok(
    r.inspector.memory.allocationBytes(f.allocationId) <= 32 * 1024,
    `within the budget: ${r.inspector.memory.allocationBytes(f.allocationId)}`,
  );
  t.ok(
    r.events.events.some((e) => e.event_type === 'cap.hit' || JSON.stringify(e).includes('gateway.allocation_buffer_bytes')),
    'cap.hit reported',
  );
  r.inspector.onFlowClosed(f);
  t.equal(r.inspector.memory.total, 0, 'closed: released');
});

t.test('memory: with unverified pass, many flows of one allocation stay within its budget together (copies shed)', async (t) => {
  const budget = 64 * 1024;
  const r = await rig('keys: { required: false, unverified: pass, deadline: 10s }\n', {
    memory: { allocationBytes: budget, maxBytes: 1 << 30 },
  });
  const flows = Array.from({ length: 20 }, (_, i) => makeFlow('alice', 'alloc-shared', `198.51.100.${i + 1}`));
  let forwarded = 0;
  let peak = 0;
  for (const f of flows) {
    r.inspector.onFlowCreated(f);
    const s = syntheticSession();
    for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
    // 16 KB of application data per flow, forwarded at once (pass) and copied for inspection.
    for (let i = 0; i < 16; i++) {
      if (r.inspector.onPacket(f, 'c2p', s.appData(true, Buffer.alloc(1000, i)), 5000)) forwarded++;
      peak = Math.max(peak, r.inspector.memory.allocationBytes('alloc-shared'));
    }
  }
  t.equal(forwarded, 20 * 16, 'pass forwards everything');
  t.ok(peak <= budget + 1100, `allocation peak ${peak} within ${budget} (+ one datagram)`);
  t.ok(r.inspector.memory.allocationBytes('alloc-shared') <= budget, 'within the budget after every datagram');
  t.same(r.closed, [], 'nothing blocked');
  const caps = r.events.events.filter((e) => e.event_type === 'cap.hit');
  t.ok(caps.length > 0 && caps.length <= flows.length, `cap.hit reported, at most once per flow in 10 s: ${caps.length}`);
  for (const f of flows) r.inspector.onFlowClosed(f);
  t.equal(r.inspector.memory.total, 0, 'closed: released');
});

t.test('a block holds for the user and peer across that user’s allocations; other users are not affected', async (t) => {
  const r = await rig(REQUIRED);
  const a1 = makeFlow('alice', 'alloc-1', '198.51.100.9');
  const a2 = makeFlow('alice', 'alloc-2', '198.51.100.9');
  const other = makeFlow('bob', 'alloc-3', '198.51.100.9');
  for (const f of [a1, a2, other]) r.inspector.onFlowCreated(f);
  r.inspector.applyDecline(a1, 'no');
  t.same(r.closed.map((c) => c.flow).sort(), [a1.id, a2.id].sort(), "both of alice's flows to that peer are closed");
  t.notOk(r.inspector.permitPeer({ allocationId: 'alloc-9', user: 'alice' }, '198.51.100.9'), 'a new allocation of alice is refused');
  t.ok(r.inspector.permitPeer({ allocationId: 'alloc-3', user: 'bob' }, '198.51.100.9'), 'bob is not');
  t.ok(r.inspector.permitPeer({ allocationId: 'alloc-1', user: 'alice' }, '198.51.100.10'), 'another peer is not');
  r.clock.advance(300_000);
  t.ok(r.inspector.permitPeer({ allocationId: 'alloc-1', user: 'alice' }, '198.51.100.9'), 'after block_for');
});

t.test('no key material in events', async (t) => {
  const r = await rig(PASS);
  const f = makeFlow();
  const l = liveFlow(r, f);
  l.msg('x');
  r.inspector.onFlowClosed(f);
  const json = JSON.stringify(r.events.events);
  const ks = l.s.keySet as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(ks)) {
    if (!Buffer.isBuffer(v) || /random/i.test(k)) continue;
    t.notOk(json.includes(v.toString('hex')) || json.includes(v.toString('base64')), `${k} not in events`);
  }
});

// A covered flow (keys verified) is not a free channel: only records and packets that the
// flow's keys authenticate go on where keys are required (issue 8, review findings).
t.test('covered, keys required: a tampered record and records of a foreign epoch are never forwarded; then blocked', async (t) => {
  const r = await rig(REQUIRED);
  const f = makeFlow();
  const live = liveFlow(r, f);
  t.ok(live.msg('hello'), 'an authenticated record goes on');
  const tampered = live.s.appData(true, Buffer.from('real data'));
  tampered[tampered.length - 1]! ^= 0x01; // the GCM tag no longer authenticates
  t.notOk(r.inspector.onPacket(f, 'c2p', tampered, 5000), 'a tampered record is withheld');
  let forwarded = 0;
  for (let i = 0; i < 40 && !r.closed.length; i++) {
    if (r.inspector.onPacket(f, 'c2p', record(23, 9, i, Buffer.alloc(1200, i)), 5000)) forwarded++;
  }
  t.equal(forwarded, 0, 'no epoch-9 application record reaches the peer');
  const b = r.events.events.find((e) => e.event_type === 'flow_blocked');
  t.match(b && gh(b), { reason: 'budget_exceeded', budget: 'uninspected' }, 'blocked over the uninspected budget');
});

t.test('covered, keys required: handshake-shaped records stay within the handshake budget', async (t) => {
  const r = await rig(REQUIRED);
  const f = makeFlow();
  liveFlow(r, f);
  let forwarded = 0;
  for (let i = 0; i < 200 && !r.closed.length; i++) {
    const d = certRecord(100 + i, 1000);
    if (r.inspector.onPacket(f, 'c2p', d, 5000)) forwarded += d.length;
  }
  t.ok(forwarded <= HANDSHAKE_BYTES_BUDGET, `forwarded ${forwarded} ≤ ${HANDSHAKE_BYTES_BUDGET}`);
  const b = r.events.events.find((e) => e.event_type === 'flow_blocked');
  t.match(b && gh(b), { reason: 'budget_exceeded', budget: 'handshake_bytes' });
});

t.test('covered, keys required: SRTP that the escrowed keys do not authenticate is withheld', async (t) => {
  const r = await rig(REQUIRED);
  const f = makeFlow();
  const live = liveFlow(r, f);
  t.ok(r.inspector.onPacket(f, 'c2p', live.s.srtp(true, 1, Buffer.alloc(160, 1)), 5000), 'authentic SRTP goes on');
  const junk = Buffer.alloc(200, 7);
  junk[0] = 0x80; // RTP version 2, RFC 7983 §7 [128..191]
  junk[1] = 111;
  let forwarded = 0;
  for (let i = 0; i < 40 && !r.closed.length; i++) {
    junk.writeUInt16BE(i + 2, 2);
    if (r.inspector.onPacket(f, 'c2p', junk, 5000)) forwarded++;
  }
  t.equal(forwarded, 0, 'junk SRTP never reaches the peer');
  const b = r.events.events.find((e) => e.event_type === 'flow_blocked');
  t.match(b && gh(b), { reason: 'budget_exceeded', budget: 'uninspected' });
});

t.test('held before keys: at release only the records the keys authenticate are sent', async (t) => {
  const r = await rig(REQUIRED);
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  const s = syntheticSession();
  for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  const real: Buffer[] = [];
  for (let i = 0; i < 5; i++) {
    const d = s.appData(true, Buffer.from(`real ${i}`));
    real.push(Buffer.from(d));
    t.notOk(r.inspector.onPacket(f, 'c2p', d, 5000), 'held');
    const junk = s.appData(true, Buffer.from(`junk ${i}`));
    junk[junk.length - 1]! ^= 0x55;
    t.notOk(r.inspector.onPacket(f, 'c2p', junk, 5000), 'held');
    t.notOk(r.inspector.onPacket(f, 'c2p', record(23, 9, i, Buffer.alloc(300, i)), 5000), 'held');
  }
  r.sent.length = 0;
  t.equal(r.inspector.applyKeySet(f, s.keySet), 'verified');
  t.same(
    r.sent.map((b) => b.toString('hex')),
    real.map((b) => b.toString('hex')),
    'exactly the authentic records are released, in order',
  );
  t.same(r.closed, [], 'ten withheld datagrams stay within the uninspected budget');
});

t.test('keys required: new ClientHellos do not stretch the deadline of a flow that was never covered', async (t) => {
  const r = await rig('keys: { required: true, deadline: 1s, unverified: pass, block_for: 5m }\n');
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  for (let i = 0; i < 3; i++) {
    const s = syntheticSession(); // a fresh client_random each time: a new association
    for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
    r.clock.advance(400);
  }
  const b = r.events.events.find((e) => e.event_type === 'flow_blocked');
  t.match(b && gh(b), { reason: 'keys_missing' }, 'blocked 1 s after the first datagram, not 1 s after the last ClientHello');
});

t.test('memory: a deadline that releases held data gives the account back at once', async (t) => {
  const r = await rig('keys: { required: false, unverified: hold, deadline: 2s }\n');
  const f = makeFlow();
  r.inspector.onFlowCreated(f);
  const s = syntheticSession();
  for (const h of s.hello) r.inspector.onPacket(f, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  for (let i = 0; i < 10; i++) r.inspector.onPacket(f, 'c2p', s.appData(true, Buffer.alloc(1000, i)), 5000);
  t.ok(r.inspector.memory.allocationBytes(f.allocationId) >= 10_000, 'held data is accounted');
  r.clock.advance(2500); // no datagram after this: only the timer runs
  t.equal(r.inspector.memory.allocationBytes(f.allocationId), 0, 'released by the deadline, accounted as released');
  t.ok(
    r.events.events.some((e) => e.event_type === 'flow_uninspected'),
    'the flow goes on uninspected',
  );
});
