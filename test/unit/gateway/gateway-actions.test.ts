/**
 * Policy actions on decrypted traffic on the live path (issue 5): the GatewayInspector
 * judges data-channel messages decrypted from genuine DTLS 1.2 AES-GCM records with
 * escrowed keys, and alert / drop / block / record act on the relayed datagrams.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector, type FlowRelay } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { RecordingStore } from '../../../src/record/recorder.js';
import { verifyRecordings } from '../../../src/record/manifest.js';
import type { Flow } from '../../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';

const RULES = `keys: { required: false, unverified: pass }
rules:
  - { id: watch, when: { contains_text: [quarterly] }, action: alert }
  - { id: no-secrets, when: { contains: [TOPSECRET] }, action: drop }
  - { id: nightingale, when: { contains: [PROJECT-NIGHTINGALE] }, action: block }
  - { id: rec-trading, when: { group: [trading] }, action: record }
  - { id: no-media-for-interns, when: { group: [interns], channel: media }, action: drop }
`;

let nextId = 1;
function makeFlow(groups: string[]): Flow {
  return {
    id: nextId++,
    allocationId: `alloc-${nextId}`,
    user: 'alice',
    groups,
    client: { proto: 'udp', address: '192.0.2.10', port: 50000 },
    relayed: { address: '127.0.0.1', port: 49200 },
    peerAddress: '198.51.100.7',
    createdAt: 0,
    open: true,
    ctx: undefined,
  };
}

async function rig(groups: string[], recordings?: RecordingStore) {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const identity = await testIdentity();
  const engine = new PolicyEngine([parseRuleFile(RULES, 'rules.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock, ...(recordings ? { recordings } : {}) });
  const closed: string[] = [];
  const relay: FlowRelay = { send: () => {}, close: (_f, reason) => void closed.push(reason) };
  inspector.setRelay(relay);
  const flow = makeFlow(groups);
  inspector.onFlowCreated(flow);
  const s = syntheticSession();
  for (const h of s.hello) t.ok(inspector.onPacket(flow, h.fromClient ? 'c2p' : 'p2c', h.data, 5000), 'handshake forwarded');
  inspector.applyKeySet(flow, s.keySet);
  const sctp = new SctpBuilder();
  const send = (plain: Buffer) => inspector.onPacket(flow, 'c2p', s.appData(true, plain), 5000);
  t.ok(send(sctp.init()));
  t.ok(send(sctp.open(1, 'chat')));
  const msg = (text: string) => send(sctp.message(1, Buffer.from(text)));
  const rtp = (seq: number, ssrc: number) => inspector.onPacket(flow, 'c2p', s.srtp(true, seq, Buffer.alloc(80, seq & 0xff), ssrc), 5000);
  return { inspector, events, flow, closed, msg, identity, rtp };
}

t.test('alert reports and forwards; drop withholds the message and keeps the flow', async (t) => {
  const r = await rig(['staff']);
  t.ok(r.msg('hello'), 'plain message forwarded');
  t.ok(
    r.events.events.some((e) => e.event_type === 'keys_verified'),
    'escrowed keys verified on traffic',
  );
  t.ok(r.msg('the quarterly numbers'), 'alert: forwarded');
  const alerts = r.events.events.filter((e) => e.event_type === 'alert');
  t.same(
    alerts.map((a) => a.alert!.signature_id),
    ['watch'],
  );
  t.equal(alerts[0]!.alert!.action, 'allowed');
  t.notOk(r.msg('this is TOPSECRET'), 'drop: the datagram carrying the message is withheld');
  t.equal(r.events.events.filter((e) => e.event_type === 'alert').at(-1)!.alert!.action, 'blocked');
  t.ok(r.msg('after the drop'), 'the flow goes on');
  t.same(r.closed, [], 'not torn down');
});

t.test('block tears the flow down and refuses it for block_for', async (t) => {
  const r = await rig(['staff']);
  t.notOk(r.msg('about PROJECT-NIGHTINGALE'), 'blocked datagram not forwarded');
  const fb = r.events.events.find((e) => e.event_type === 'flow_blocked');
  t.equal((fb!.gatehouse as Record<string, unknown>).reason, 'policy');
  t.same(r.closed, ['blocked_policy'], 'permission and channels removed (key-escrow.md §5.4)');
  t.notOk(
    r.inspector.permitPeer({ allocationId: r.flow.allocationId, user: r.flow.user }, r.flow.peerAddress),
    're-creating it is refused (403)',
  );
  const json = JSON.stringify(r.events.events);
  t.notMatch(json, /TOPSECRET|NIGHTINGALE"/, 'content is summarised, not copied into events');
});

t.test('record: a trading flow is recorded, sealed and verifiable', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-rec-live-'));
  const identity = await testIdentity();
  const recordings = new RecordingStore({ dir, identity, clock: new ManualClock(), flushIntervalMs: 50, fsync: false });
  const r = await rig(['trading'], recordings);
  t.ok(r.msg('order 100 shares'));
  t.ok(r.msg('confirmed'));
  const started = r.events.events.find((e) => e.event_type === 'recording');
  t.match(started?.gatehouse, { recording: { action: 'started', rule: 'rec-trading' } });
  r.inspector.onFlowClosed(r.flow);
  const sealed = r.events.events.filter((e) => e.event_type === 'recording').at(-1);
  t.match(sealed?.gatehouse, { recording: { action: 'sealed' } });
  const rec = readdirSync(dir).find((d) => /-p\d+-/.test(d))!;
  const transcript = readdirSync(join(dir, rec)).find((f) => f.startsWith('dc-'))!;
  const lines = readFileSync(join(dir, rec, transcript), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.same(
    lines.filter((l) => l.text !== undefined).map((l) => l.text),
    ['order 100 shares', 'confirmed'],
    'transcript has the decrypted messages',
  );
  const v = verifyRecordings(dir, { certPem: identity.certificatePem });
  t.ok(v.ok, `recordings verify: ${v.problems.join('; ')}`);
});

t.test('drop on media withholds that SSRC from then on and keeps the flow', async (t) => {
  const r = await rig(['interns']);
  const results: boolean[] = [];
  for (let seq = 1; seq <= 12; seq++) results.push(r.rtp(seq, 0xaaaa0001));
  const stream = r.events.events.find((e) => e.event_type === 'rtp.stream');
  t.ok(stream, 'the stream was decrypted and classified');
  const firstDropped = results.indexOf(false);
  t.ok(firstDropped > 0, 'packets before the stream was classified went through');
  t.same(
    results.slice(firstDropped),
    results.slice(firstDropped).map(() => false),
    'every later packet of that SSRC is withheld',
  );
  t.ok(r.msg('chat still works'), 'the data channel of the same flow goes on');
  t.same(r.closed, [], 'not torn down');
});
