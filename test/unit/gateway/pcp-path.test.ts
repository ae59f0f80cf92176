/**
 * The gateway's PCP path (src/gateway/pcp-path.ts, pcp-escrow.ts) on a real
 * GatewayInspector, without sockets or a kernel: queued IP packets of a mapping get
 * verdicts (accept now, delayed while held, drop), keys escrowed over PCP release the
 * held packets, blocks delete the mapping and refuse the user × remote, and
 * WRITE_KEYS is refused without an RFC 7652 security association or when it does not open.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';
import { PcpPath, isPcpFlow, type PcpFlow } from '../../../src/gateway/pcp-path.js';
import { PcpEscrowExtension, pcpEscrowHost, PCP_MALFORMED_OPTION, PCP_NOT_AUTHORIZED } from '../../../src/gateway/pcp-escrow.js';
import type { PcpMapping, PcpSecurityAssociation } from '../../../src/pcp/hooks.js';
import { buildIp, buildUdp, IPPROTO_UDP } from '../../../src/wire/netpkt.js';
import {
  PCP_OPT_KEY_DECLINE,
  PCP_OPT_WRITE_KEYS,
  PCP_OPT_WRITE_KEYS_REQUEST,
  decodeKeyRequest,
  encodeKeyDecline,
  pcpWriteKeysKey,
  sealWriteKeys,
  verifyKeyRequest,
} from '../../../src/wire/escrow.js';
import { encodeKeySet, type KeySet } from '../../../src/wire/keyset.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';
import { createPublicKey } from 'node:crypto';

const INTERNAL = { address: '10.0.1.2', port: 5000 };
const EXTERNAL = { address: '10.0.2.1', port: 40000 };
const REMOTE = { address: '10.0.2.2', port: 6000 };

let mappingSeq = 0;
function mapping(over: Partial<PcpMapping> = {}): PcpMapping {
  return {
    id: `pcp-${++mappingSeq}`,
    opcode: 'map',
    client: { address: INTERNAL.address, port: 5351 },
    internal: INTERNAL,
    protocol: IPPROTO_UDP,
    external: EXTERNAL,
    remote: null,
    filters: [],
    nonce: randomBytes(12),
    user: 'alice',
    groups: [],
    createdAt: 0,
    expiresAt: 3_600_000,
    ...over,
  };
}

const sa: PcpSecurityAssociation = { sessionId: 7, identity: 'alice', groups: [], transportKey: randomBytes(32), expiresAt: Infinity };

async function rig(rules: string, o: { maxHeld?: number; holdTimeoutMs?: number } = {}) {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const identity = await testIdentity();
  const engine = new PolicyEngine([parseRuleFile(rules, 'rules.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock, supervisor: new Supervisor(silentLogger) });
  const verdicts = new Map<number, 'accept' | 'drop'>();
  const twice: number[] = [];
  const deleted: { id: string; why: string }[] = [];
  const unsolicited: { id: string; codes: number[] }[] = [];
  let escrow!: PcpEscrowExtension;
  const path = new PcpPath({
    hooks: inspector,
    verdicts: {
      accept: (id) => (verdicts.has(id) ? twice.push(id) : verdicts.set(id, 'accept')),
      drop: (id) => (verdicts.has(id) ? twice.push(id) : verdicts.set(id, 'drop')),
    },
    clock,
    logger: silentLogger,
    maxHeld: o.maxHeld ?? 1024,
    holdTimeoutMs: o.holdTimeoutMs ?? 30_000,
    maxFlowsPerMapping: 4,
    maxFlows: 100,
    isBlocked: (u, ip) => inspector.isBlocked(u, ip),
    onFlowCreated: (f) => escrow.flowCreated(f),
  });
  escrow = new PcpEscrowExtension(
    pcpEscrowHost(
      inspector,
      (e) => events.emit(e),
      () => clock.now(),
    ),
    path,
    identity,
  );
  escrow.setSender({ sendUnsolicited: (m, opts) => void unsolicited.push({ id: m.id, codes: opts.map((x) => x.code) }) });
  path.setControl({
    deleteMapping: (m, why) => {
      deleted.push({ id: m.id, why });
      path.mappingEnded(m, why);
      escrow.onMappingEnded(m, why);
    },
  });
  inspector.setRelay({
    send: (f, dir, data) => (isPcpFlow(f) ? path.send(f, dir, data) : undefined),
    close: (f, reason) => (isPcpFlow(f) ? path.close(f, reason) : undefined),
  });
  let nextId = 1;
  /** Queues one UDP payload: outbound (internal → remote, before SNAT) or inbound (after DNAT). */
  const queue = (dir: 'out' | 'in', payload: Buffer, remote = REMOTE): number => {
    const id = nextId++;
    const pkt =
      dir === 'out'
        ? buildIp(INTERNAL.address, remote.address, IPPROTO_UDP, buildUdp(INTERNAL.port, remote.port, payload))
        : buildIp(remote.address, INTERNAL.address, IPPROTO_UDP, buildUdp(remote.port, INTERNAL.port, payload));
    path.onQueued({ id, packet: pkt });
    return id;
  };
  return { clock, events, inspector, path, escrow, verdicts, twice, deleted, unsolicited, queue, identity };
}

const REQUIRED =
  'keys: { required: true, deadline: 10s, unverified: hold, block_for: 5m }\nrules:\n  - id: nightingale\n    when: { contains: ["PROJECT-NIGHTINGALE"] }\n    action: block\n';

function writeKeysOption(m: PcpMapping, ks: KeySet, transportKey = sa.transportKey) {
  const key = pcpWriteKeysKey(transportKey, m.nonce);
  return { code: PCP_OPT_WRITE_KEYS, data: sealWriteKeys(key, m.nonce, encodeKeySet(ks)) };
}

t.test('held until keys come over PCP, then released in order; a block deletes the mapping and refuses the remote', async (t) => {
  const r = await rig(REQUIRED);
  const m = mapping();
  r.path.mappingCreated(m);
  const s = syntheticSession();
  const helloIds = s.hello.map((h) => r.queue(h.fromClient ? 'out' : 'in', h.data));
  for (const id of helloIds) t.equal(r.verdicts.get(id), 'accept', 'the handshake passes at once');
  t.equal(r.unsolicited.length, 1, 'a new flow on a MAP mapping: WRITE_KEYS_REQUEST in an unsolicited response');
  t.same(r.unsolicited[0]!.codes, [PCP_OPT_WRITE_KEYS_REQUEST]);

  const sctp = new SctpBuilder();
  const held = [sctp.init(), sctp.open(1, 'chat'), sctp.message(1, Buffer.from('hello over the firewall'))].map((p) =>
    r.queue('out', s.appData(true, p)),
  );
  for (const id of held) t.notOk(r.verdicts.has(id), 'application data waits for keys: the verdict is delayed');

  // The endpoint answers with WRITE_KEYS in a PEER request for this remote (key-escrow.md §4).
  const peerCtx = {
    opcode: 'peer' as const,
    client: m.client,
    mapping: { ...m, opcode: 'peer' as const, remote: REMOTE },
    isNew: false,
    sa,
  };
  const v = r.escrow.onRequest({ ...peerCtx, options: [writeKeysOption(m, s.keySet)] });
  t.ok(v && !v.result, 'WRITE_KEYS opens under the SA transport key');
  const kr = v!.options!.find((o) => o.code === PCP_OPT_WRITE_KEYS_REQUEST)!;
  const decoded = decodeKeyRequest(kr.data)!;
  t.ok(
    verifyKeyRequest('pcp', m.nonce, decoded, createPublicKey(r.identity.privateKey)),
    'WRITE_KEYS_REQUEST is signed over the mapping nonce',
  );
  t.notOk(verifyKeyRequest('pcp', randomBytes(12), decoded, createPublicKey(r.identity.privateKey)), 'and over nothing else');
  v!.commit!(m);
  for (const id of held) t.equal(r.verdicts.get(id), 'accept', 'released once the keys verify');
  t.ok(
    r.events.events.some((e) => e.event_type === 'keys_verified'),
    'keys_verified',
  );
  const msg = r.events.events.find((e) => e.event_type === 'datachannel.message');
  t.ok(msg, 'the message was inspected');
  t.equal((msg?.gatehouse as Record<string, unknown> | undefined)?.user, 'alice');
  t.equal((msg?.gatehouse as Record<string, unknown> | undefined)?.mapping, m.id, 'PCP flows carry gatehouse.mapping (contract.md)');
  t.notOk((msg?.gatehouse as Record<string, unknown> | undefined)?.allocation, 'and no allocation');

  const bad = r.queue('out', s.appData(true, sctp.message(1, Buffer.from('PROJECT-NIGHTINGALE plans'))));
  t.equal(r.verdicts.get(bad), 'drop', 'a blocked message is dropped');
  t.same(r.deleted, [{ id: m.id, why: 'blocked' }], 'the block deletes the mapping');
  const after = r.queue('in', s.appData(false, Buffer.from('late')));
  t.equal(r.verdicts.get(after), 'drop', 'packets of the ended mapping are dropped');
  const again = r.escrow.onRequest({ ...peerCtx, mapping: { ...m, id: 'pcp-new', opcode: 'peer', remote: REMOTE }, options: [] });
  t.equal(again?.result, PCP_NOT_AUTHORIZED, 'PEER for the same user and remote: NOT_AUTHORIZED for block_for');
  r.clock.advance(5 * 60_000 + 1);
  t.notOk(r.escrow.onRequest({ ...peerCtx, options: [] })?.result, 'after block_for it is allowed again');
  t.same(r.twice, [], 'never two verdicts for one packet');
});

t.test('no keys by the deadline: the flow is blocked, its held packets dropped', async (t) => {
  const r = await rig(REQUIRED);
  const m = mapping();
  r.path.mappingCreated(m);
  const s = syntheticSession();
  for (const h of s.hello) r.queue(h.fromClient ? 'out' : 'in', h.data);
  const id = r.queue('out', s.appData(true, Buffer.from('x')));
  t.notOk(r.verdicts.has(id));
  r.clock.advance(10_001);
  t.equal(r.verdicts.get(id), 'drop', 'held packet dropped at the block');
  t.same(
    r.deleted.map((d) => d.why),
    ['blocked'],
  );
  t.ok(r.events.events.some((e) => e.event_type === 'flow_blocked' && (e.gatehouse as Record<string, unknown>).reason === 'keys_missing'));
});

t.test('KEY_DECLINE blocks the flow when keys are required', async (t) => {
  const r = await rig(REQUIRED);
  const m = mapping();
  r.path.mappingCreated(m);
  const s = syntheticSession();
  for (const h of s.hello) r.queue(h.fromClient ? 'out' : 'in', h.data);
  const v = r.escrow.onRequest({
    opcode: 'map',
    client: m.client,
    mapping: m,
    isNew: false,
    sa: null,
    options: [{ code: PCP_OPT_KEY_DECLINE, data: encodeKeyDecline('user said no') }],
  });
  t.notOk(v?.result);
  v!.commit!(m);
  t.same(
    r.deleted.map((d) => d.why),
    ['blocked'],
    'declined: blocked',
  );
  t.ok(r.events.events.some((e) => e.event_type === 'keys_declined'));
});

t.test('WRITE_KEYS without a security association, or that does not open, is refused and applies nothing', async (t) => {
  const r = await rig(REQUIRED);
  const m = mapping();
  r.path.mappingCreated(m);
  const s = syntheticSession();
  const ctx = { opcode: 'map' as const, client: m.client, mapping: m, isNew: false };
  t.equal(
    r.escrow.onRequest({ ...ctx, sa: null, options: [writeKeysOption(m, s.keySet)] })?.result,
    PCP_NOT_AUTHORIZED,
    'unauthenticated: NOT_AUTHORIZED',
  );
  const wrongKey = writeKeysOption(m, s.keySet, randomBytes(32));
  t.equal(r.escrow.onRequest({ ...ctx, sa, options: [wrongKey] })?.result, PCP_MALFORMED_OPTION, 'another key: MALFORMED_OPTION');
  const flipped = writeKeysOption(m, s.keySet);
  flipped.data[flipped.data.length - 1]! ^= 1;
  t.equal(r.escrow.onRequest({ ...ctx, sa, options: [flipped] })?.result, PCP_MALFORMED_OPTION, 'a flipped tag byte: MALFORMED_OPTION');
  const events = JSON.stringify(r.events.events);
  t.notOk(events.includes(sa.transportKey.toString('hex')), 'no transport key in events');
  t.ok(r.events.events.filter((e) => e.event_type === 'keys_invalid').length >= 3, 'each refusal reported');
});

t.test('keys that come before the first packet are applied to the flow when it appears', async (t) => {
  const r = await rig(REQUIRED);
  const m = mapping();
  r.path.mappingCreated(m);
  const s = syntheticSession();
  const v = r.escrow.onRequest({ opcode: 'map', client: m.client, mapping: m, isNew: false, sa, options: [writeKeysOption(m, s.keySet)] });
  v!.commit!(m);
  for (const h of s.hello) r.queue(h.fromClient ? 'out' : 'in', h.data);
  const sctp = new SctpBuilder();
  const id = r.queue('out', s.appData(true, sctp.init()));
  t.equal(r.verdicts.get(id), 'accept', 'covered at once: forwarded without a hold');
});

t.test('bounds: delayed verdicts beyond max_held and past the hold timeout are dropped; unknown packets are dropped', async (t) => {
  const r = await rig(REQUIRED, { maxHeld: 3, holdTimeoutMs: 1000 });
  const m = mapping();
  r.path.mappingCreated(m);
  const s = syntheticSession();
  for (const h of s.hello) r.queue(h.fromClient ? 'out' : 'in', h.data);
  const ids = [1, 2, 3, 4].map((i) => r.queue('out', s.appData(true, Buffer.alloc(20, i))));
  t.equal(r.verdicts.get(ids[0]!), 'drop', 'the oldest gives way beyond max_held');
  t.equal(r.path.stats.heldOverflow, 1);
  r.clock.advance(1500);
  for (const id of ids.slice(1)) t.equal(r.verdicts.get(id), 'drop', 'dropped past the hold timeout');
  // Not a mapped flow, not UDP, not IP.
  const other = 900;
  r.path.onQueued({ id: other, packet: buildIp('10.9.9.9', '10.8.8.8', IPPROTO_UDP, buildUdp(1, 2, Buffer.alloc(4))) });
  r.path.onQueued({ id: other + 1, packet: Buffer.from('not an ip packet') });
  r.path.onQueued({ id: other + 2, packet: buildIp(INTERNAL.address, REMOTE.address, 6, Buffer.alloc(20)) });
  for (const id of [other, other + 1, other + 2]) t.equal(r.verdicts.get(id), 'drop', `unknown packet ${id} dropped (fail closed)`);
  t.equal(r.path.stats.unknown, 3);
  t.same(r.twice, []);
});

t.test('PEER mappings pass only their remote; flows per mapping are bounded', async (t) => {
  const r = await rig('keys: { required: false, unverified: pass }\n');
  const m = mapping({ opcode: 'peer', remote: REMOTE });
  r.path.mappingCreated(m);
  t.equal(r.path.flowsOfMapping(m).length, 1, 'a PEER mapping has its flow from the start');
  t.equal(r.verdicts.get(r.queue('out', Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, ...randomBytes(12)]))), 'accept');
  t.equal(r.verdicts.get(r.queue('out', Buffer.alloc(10), { address: '10.0.2.99', port: 6000 })), 'drop', 'another remote: dropped');
  r.path.mappingEnded(m, 'deleted');
  const mm = mapping();
  r.path.mappingCreated(mm);
  const ids = [1, 2, 3, 4, 5].map((i) => r.queue('in', Buffer.alloc(10, i), { address: `10.0.2.${10 + i}`, port: 6000 }));
  t.same(
    ids.map((id) => r.verdicts.get(id)),
    ['accept', 'accept', 'accept', 'accept', 'drop'],
    'maxFlowsPerMapping (4) remotes get flows; the fifth is dropped',
  );
  t.equal(r.path.flowsOfMapping(mm).length, 4);
  const f: PcpFlow = r.path.flowsOfMapping(mm)[0]!;
  t.equal(f.allocationId, mm.id, 'the flow carries its mapping id');
});

t.test('a MAP and a PEER on one internal port: the PEER takes its remote, the MAP the rest, and outlives the PEER', async (t) => {
  const r = await rig('keys: { required: false, unverified: pass }\n');
  const map = mapping();
  const peer = mapping({ opcode: 'peer', remote: REMOTE });
  r.path.mappingCreated(map);
  r.path.mappingCreated(peer);
  t.equal(r.verdicts.get(r.queue('in', Buffer.alloc(10, 1))), 'accept', 'the PEER remote passes');
  t.equal(r.path.flowsOfMapping(peer).length, 1, 'on the PEER flow');
  t.equal(r.verdicts.get(r.queue('in', Buffer.alloc(10, 2), { address: '10.0.2.50', port: 7000 })), 'accept', 'another remote: the MAP');
  t.equal(r.path.flowsOfMapping(map).length, 1);
  r.path.mappingEnded(peer, 'deleted');
  t.equal(
    r.verdicts.get(r.queue('in', Buffer.alloc(10, 3), { address: '10.0.2.50', port: 7000 })),
    'accept',
    'the MAP still works after the PEER ended',
  );
  t.equal(r.verdicts.get(r.queue('in', Buffer.alloc(10, 4))), 'accept', 'and now carries the former PEER remote too');
  // A TCP mapping is not carried by the (UDP) path: its tuple does not shadow the UDP MAP.
  const tcp = mapping({ protocol: 6 });
  r.path.mappingCreated(tcp);
  t.equal(
    r.verdicts.get(r.queue('in', Buffer.alloc(10, 5), { address: '10.0.2.51', port: 7000 })),
    'accept',
    'UDP still goes to the UDP MAP',
  );
  t.equal(r.path.flowsOfMapping(tcp).length, 0);
});

t.test('the flow follows its mapping to a new external address', async (t) => {
  const r = await rig('keys: { required: false, unverified: pass }\n');
  const m = mapping({ external: { address: '10.0.2.1', port: 40000 } });
  r.path.mappingCreated(m);
  r.queue('in', Buffer.alloc(10));
  const f = r.path.flowsOfMapping(m)[0]!;
  t.same(f.relayed, { address: '10.0.2.1', port: 40000 });
  (m as { external: { address: string; port: number } }).external = { address: '10.0.3.1', port: 40000 };
  t.same(f.relayed, { address: '10.0.3.1', port: 40000 }, 'relayed is read from the mapping');
});
