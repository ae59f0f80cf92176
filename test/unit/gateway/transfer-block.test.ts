/**
 * Issue 9 on the live path: a file sent as a JSON header and 16 KiB binary messages is
 * judged as a whole. A sha256_list naming the whole file's hash blocks the flow at the
 * last chunk, and the datagram that completes the file is not forwarded: the peer never
 * has the whole file.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import type { Flow } from '../../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';

const CHUNK = 16 * 1024;

async function rig(hashes: string[], pauseMs = 2000, clock = new ManualClock()) {
  const dir = mkdtempSync(join(tmpdir(), 'gh-transfer-'));
  const list = join(dir, 'malware.txt');
  writeFileSync(list, `# known bad\n${hashes.join('\n')}\n`);
  const engine = new PolicyEngine([
    parseRuleFile(
      `keys: { required: false, unverified: pass }
rules:
  - { id: known-malware, when: { sha256_list: ${JSON.stringify(list)} }, action: block }
`,
      'rules.yaml',
    ),
  ]);
  await engine.loadHashLists();
  const events = new MemoryEventSink();
  const inspector = new GatewayInspector({
    policy: () => engine,
    identity: await testIdentity(),
    events,
    clock,
    transfers: { maxFileBytes: 100 * 1024 * 1024, pauseMs },
  });
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
  const send = (plain: Buffer) => inspector.onPacket(flow, 'c2p', s.appData(true, plain), 5000);
  send(sctp.init());
  send(sctp.open(1, 'file:payload.bin'));
  return { inspector, events, closed, send, sctp, clock };
}

const FILE = randomBytes(150_000);
const HASH = createHash('sha256').update(FILE).digest('hex');

t.test('sha256_list on the whole file: the final chunk is withheld and the flow blocked', async (t) => {
  const r = await rig([HASH]);
  t.ok(r.send(r.sctp.message(1, Buffer.from(JSON.stringify({ name: 'evil.bin', size: FILE.length })))), 'header forwarded');
  const verdicts: boolean[] = [];
  // Each 16 KiB chunk is fragmented into DATA chunks of 1200 bytes (RFC 9260 §6.9), one per datagram.
  for (let o = 0; o < FILE.length; o += CHUNK) {
    for (const frag of r.sctp.fragmented(1, FILE.subarray(o, o + CHUNK), 1200)) verdicts.push(r.send(frag));
  }
  const last = verdicts.length - 1;
  t.ok(verdicts.slice(0, last).every(Boolean), 'every datagram before the final one forwarded');
  t.equal(verdicts[last], false, 'the datagram completing the file is not forwarded');
  t.same(r.closed, ['blocked_policy'], 'flow blocked');
  const files = r.events.events.filter((e) => e.event_type === 'file' && (e.file as { transfer?: unknown }).transfer);
  t.equal(files.length, 1, 'one file event for the transfer');
  t.match(files[0]!.file, { sha256: HASH, size: FILE.length, name: 'evil.bin', transfer: { messages: 10, end: 'size' } });
  t.ok(
    r.events.events.some((e) => e.event_type === 'alert' && e.alert!.signature_id === 'known-malware' && e.alert!.action === 'blocked'),
    'alert for the rule',
  );
});

t.test('a file with another hash passes whole', async (t) => {
  const r = await rig(['0'.repeat(64)]);
  r.send(r.sctp.message(1, Buffer.from(JSON.stringify({ name: 'ok.bin', size: FILE.length }))));
  let all = true;
  for (let o = 0; o < FILE.length; o += CHUNK)
    for (const frag of r.sctp.fragmented(1, FILE.subarray(o, o + CHUNK), 1200)) all &&= r.send(frag);
  t.ok(all, 'every datagram forwarded');
  t.same(r.closed, []);
  t.ok(r.events.events.some((e) => e.event_type === 'file' && (e.file as { sha256: string }).sha256 === HASH));
});

t.test('no header: judged at the pause (timer), blocks the rest of the flow', async (t) => {
  const r = await rig([HASH], 500);
  for (let o = 0; o < FILE.length; o += CHUNK)
    for (const frag of r.sctp.fragmented(1, FILE.subarray(o, o + CHUNK), 1200)) t.ok(r.send(frag) || true);
  t.same(r.closed, [], 'not yet');
  r.clock.advance(1200);
  t.same(r.closed, ['blocked_policy'], 'blocked at the pause');
  t.ok(r.events.events.some((e) => e.event_type === 'file' && (e.file as { sha256: string }).sha256 === HASH));
});

/** A clock whose first transfer-pause timer (pause 500 ms: 501 ms) fires `lag` ms late, as on an event loop that was busy. */
class LateClock extends ManualClock {
  private lagged = false;
  constructor(private readonly lag: number) {
    super();
  }
  override setTimeout(fn: () => void, ms: number) {
    if (this.lagged || ms !== 501) return super.setTimeout(fn, ms);
    this.lagged = true;
    return super.setTimeout(fn, ms + this.lag);
  }
}

t.test('no header, the event loop stalled past the pause: the late timer and the queued datagrams do not cut the file', async (t) => {
  const clock = new LateClock(1000);
  const r = await rig([HASH], 500, clock);
  const frags: Buffer[] = [];
  for (let o = 0; o < FILE.length; o += CHUNK) frags.push(...r.sctp.fragmented(1, FILE.subarray(o, o + CHUNK), 1200));
  const half = frags.length >> 1;
  const start = clock.now();
  for (const f of frags.slice(0, half)) r.send(f);
  // The loop was busy for 1.5 s: the pause timer (due at +501) fires at +1501, before the
  // datagrams that waited in the socket meanwhile are read (Node: timers before poll).
  clock.advance(start + 1501 - clock.now());
  t.same(r.closed, [], 'not judged by the late timer');
  for (const f of frags.slice(half)) r.send(f);
  t.same(r.closed, [], 'the queued datagrams continue the transfer');
  clock.advance(600);
  t.same(r.closed, ['blocked_policy'], 'the whole file is judged at the real pause, and blocked');
  const files = r.events.events.filter((e) => e.event_type === 'file' && (e.file as { transfer?: unknown }).transfer);
  t.equal(files.length, 1, 'one transfer');
  t.match(files[0]!.file, { sha256: HASH, size: FILE.length, transfer: { end: 'pause' } });
});
