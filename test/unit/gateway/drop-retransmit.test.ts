/**
 * README, Policy, "What `drop` means for a data channel": when `drop` withholds the DTLS
 * records of a message on a reliable channel, the sender retransmits (RFC 9260 §6.3.3,
 * the T3-rtx timer; §7.2.4 fast retransmit) the same DATA chunk, same TSN, in a new DTLS
 * record, and the gateway must withhold the retransmissions too; otherwise the peer gets
 * the dropped message. Other messages still pass.
 *
 * Found, then fixed: the tracker de-duplicates the TSN (no event, no verdict), so the
 * retransmission used to go on; the TSNs of a withheld datagram are now remembered
 * (DataChannelTracker.markWithheld) and a datagram carrying one is withheld again.
 */
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import type { Flow } from '../../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';

const RULES = `keys: { required: false, unverified: pass }
rules:
  - { id: no-secrets, when: { contains: [TOPSECRET] }, action: drop }
`;

async function rig() {
  const events = new MemoryEventSink();
  const engine = new PolicyEngine([parseRuleFile(RULES, 'rules.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity: await testIdentity(), events, clock: new ManualClock() });
  const closed: string[] = [];
  inspector.setRelay({ send: () => {}, close: (_f, reason) => void closed.push(reason) });
  const flow: Flow = {
    id: 1,
    allocationId: 'alloc-1',
    user: 'alice',
    groups: [],
    client: { proto: 'udp', address: '192.0.2.10', port: 50000 },
    relayed: { address: '127.0.0.1', port: 49200 },
    peerAddress: '198.51.100.7',
    createdAt: 0,
    open: true,
    ctx: undefined,
  };
  inspector.onFlowCreated(flow);
  const s = syntheticSession();
  for (const h of s.hello) inspector.onPacket(flow, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  inspector.applyKeySet(flow, s.keySet);
  const sctp = new SctpBuilder();
  /** Each call is a new DTLS record (its own sequence number) carrying `plain`. */
  const send = (plain: Buffer) => inspector.onPacket(flow, 'c2p', s.appData(true, plain), 5000);
  send(sctp.init());
  send(sctp.open(1, 'chat'));
  return { send, sctp, events, closed };
}

t.test('a dropped single-chunk message: its retransmission (same TSN, new DTLS record) is withheld too', async (t) => {
  const r = await rig();
  t.ok(r.send(r.sctp.message(1, Buffer.from('hello'))), 'a plain message passes');
  const secret = r.sctp.message(1, Buffer.from('this is TOPSECRET'));
  t.notOk(r.send(secret), 'drop: the first copy is withheld');
  const drops = r.events.events.filter((e) => e.event_type === 'alert').length;
  t.equal(drops, 1, 'one alert');
  t.notOk(r.send(secret), 'the retransmission (same SCTP packet, same TSN) is withheld');
  t.notOk(r.send(secret), 'and the next one');
  t.ok(r.send(r.sctp.message(1, Buffer.from('after the drop'))), 'a later message passes');
  t.ok(r.send(r.sctp.message(1, Buffer.from('and another'))), 'and the next');
  t.same(r.closed, [], 'the flow goes on');
});

t.test('a dropped fragmented message: a retransmitted final fragment is withheld too', async (t) => {
  const r = await rig();
  const big = Buffer.concat([Buffer.alloc(3000, 'a'), Buffer.from('TOPSECRET'), Buffer.alloc(100, 'b')]);
  const frags = r.sctp.fragmented(1, big, 1200);
  t.equal(frags.length, 3);
  const v = frags.map((f) => r.send(f));
  t.same(v, [true, true, false], 'the fragment completing the message is withheld');
  t.notOk(r.send(frags[2]!), 'its retransmission is withheld');
  t.ok(r.send(r.sctp.message(1, Buffer.from('after'))), 'a later message passes');
  t.same(r.closed, []);
});
