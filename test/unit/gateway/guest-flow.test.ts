/**
 * core.md §8 on the live path: a flow of a conference guest (TURN REST
 * `EXPIRY:guest/CONFERENCE/IDENTITY`) has its events decorated with gatehouse.conference and
 * gatehouse.guest: true, and the policy context carries guest and conference, so a rule
 * `guest: true` + `conference` + `file_type` drops the guest's executable (contract.md).
 */
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector, policyContext } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import type { Flow } from '../../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';

const RULES = `keys: { required: false, unverified: pass }
rules:
  - id: guests-no-exe
    when: { guest: true, conference: [board-*], file_type: [exe] }
    action: drop
  - id: users-exe
    when: { guest: false, file_type: [exe] }
    action: alert
`;

/** A minimal PE image (PE/COFF spec: "MZ", e_lfanew at 0x3C, "PE\0\0", COFF header). */
function peImage(): Buffer {
  const b = Buffer.alloc(512, 0x90);
  b.write('MZ', 0, 'latin1');
  b.writeUInt32LE(0x40, 0x3c);
  b.write('PE\0\0', 0x40, 'latin1');
  b.writeUInt16LE(0x014c, 0x44); // Machine i386
  b.writeUInt16LE(0x0002, 0x44 + 18); // Characteristics: EXECUTABLE_IMAGE
  return b;
}

let nextId = 1;
function makeFlow(who: { user: string; groups: string[]; guest?: true; conference?: string }): Flow {
  return {
    id: nextId++,
    allocationId: `alloc-${nextId}`,
    ...who,
    client: { proto: 'udp', address: '192.0.2.10', port: 50000 },
    relayed: { address: '127.0.0.1', port: 49200 },
    peerAddress: '198.51.100.7',
    createdAt: 0,
    open: true,
    ctx: undefined,
  };
}

async function rig(flow: Flow) {
  const events = new MemoryEventSink();
  const engine = new PolicyEngine([parseRuleFile(RULES, 'rules.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity: await testIdentity(), events, clock: new ManualClock() });
  const closed: string[] = [];
  inspector.setRelay({ send: () => {}, close: (_f, reason) => void closed.push(reason) });
  inspector.onFlowCreated(flow);
  const s = syntheticSession();
  for (const h of s.hello) t.ok(inspector.onPacket(flow, h.fromClient ? 'c2p' : 'p2c', h.data, 5000), 'handshake forwarded');
  inspector.applyKeySet(flow, s.keySet);
  const sctp = new SctpBuilder();
  const send = (plain: Buffer) => inspector.onPacket(flow, 'c2p', s.appData(true, plain), 5000);
  t.ok(send(sctp.init()));
  t.ok(send(sctp.open(1, 'files')));
  return { events, closed, send, sctp };
}

t.test('policyContext: guest and conference only when the flow has them', async (t) => {
  t.same(policyContext(makeFlow({ user: 'alice', groups: ['g'] })), { user: 'alice', groups: ['g'], peerIp: '198.51.100.7' });
  t.same(policyContext(makeFlow({ user: 'guest/board-1/eve', groups: [], guest: true, conference: 'board-1' })), {
    user: 'guest/board-1/eve',
    groups: [],
    peerIp: '198.51.100.7',
    guest: true,
    conference: 'board-1',
  });
});

t.test('a board guest: events carry conference and guest; the executable is dropped', async (t) => {
  const r = await rig(makeFlow({ user: 'guest/board-1/eve', groups: [], guest: true, conference: 'board-1' }));
  t.ok(r.send(r.sctp.message(1, Buffer.from('hello'))), 'a text message is forwarded');
  t.notOk(r.send(r.sctp.message(1, peImage(), true)), 'the guest executable is dropped');
  t.same(r.closed, [], 'drop keeps the flow');
  const flowEvents = r.events.events.filter((e) => e.flow_id !== undefined);
  t.ok(flowEvents.length >= 3, 'events of the flow');
  for (const e of flowEvents) {
    t.equal(e.gatehouse?.conference, 'board-1', `${e.event_type}: gatehouse.conference`);
    t.equal(e.gatehouse?.guest, true, `${e.event_type}: gatehouse.guest`);
  }
  const alerts = r.events.events.filter((e) => e.event_type === 'alert');
  t.same(
    alerts.map((a) => a.alert!.signature_id),
    ['guests-no-exe'],
  );
  t.equal(alerts[0]!.alert!.action, 'blocked');
  t.ok(
    r.events.events.some((e) => e.event_type === 'file' && (e as { file?: { file_type?: string } }).file?.file_type === 'exe'),
    'the file event names the type',
  );
});

t.test('a guest of another conference and a user: not dropped, no guest decoration for the user', async (t) => {
  const g = await rig(makeFlow({ user: 'guest/sales-1/eve', groups: [], guest: true, conference: 'sales-1' }));
  t.ok(g.send(g.sctp.message(1, peImage(), true)), 'sales guest: forwarded');
  t.same(
    g.events.events.filter((e) => e.event_type === 'alert'),
    [],
  );
  t.ok(g.events.events.filter((e) => e.flow_id !== undefined).every((e) => e.gatehouse?.conference === 'sales-1'));

  const u = await rig(makeFlow({ user: 'alice', groups: ['staff'] }));
  t.ok(u.send(u.sctp.message(1, peImage(), true)), 'user: alert only, forwarded');
  t.same(
    u.events.events.filter((e) => e.event_type === 'alert').map((a) => a.alert!.signature_id),
    ['users-exe'],
  );
  for (const e of u.events.events) {
    t.notOk(e.gatehouse && 'guest' in e.gatehouse, `${e.event_type}: no gatehouse.guest`);
    t.notOk(e.gatehouse && 'conference' in e.gatehouse, `${e.event_type}: no gatehouse.conference`);
  }
});
