/**
 * Issue 9, malware scanning on the live path: a `scan: icap` rule holds the datagram that
 * completes a file (and the flow's later DTLS datagrams) until the scanner answers. Clean:
 * released in order. Infected: the rule's action (block/drop) with an alert naming the
 * virus. No answer: the guard's fail_open. A scan promise that rejects closes that flow.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector, MAX_SCAN_HELD_DATAGRAMS, type FileScanner } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { GuardedScanner, type GuardedResult } from '../../../src/scan/index.js';
import type { Scanner, ScanResult } from '../../../src/scan/scanner.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';
import type { Flow } from '../../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';

const CHUNK = 16 * 1024;
const FILE = randomBytes(150_000);
const VIRUS = 'Gatehouse.Test.Sig-1';

/** A scanner whose answers the test gives (each call waits for `answer`). */
class FakeScanner implements FileScanner {
  readonly kind = 'icap';
  calls: { size: number; name?: string; bytes: number }[] = [];
  private waiting: ((r: GuardedResult) => void)[] = [];
  private failing: ((e: Error) => void)[] = [];
  scan(file: Buffer, meta: { name?: string; size: number }): Promise<GuardedResult> {
    this.calls.push({ size: meta.size, ...(meta.name !== undefined ? { name: meta.name } : {}), bytes: file.length });
    return new Promise((resolve, reject) => {
      this.waiting.push(resolve);
      this.failing.push(reject);
    });
  }
  answer(r: Partial<GuardedResult> & { verdict: GuardedResult['verdict'] }): void {
    this.failing.shift();
    this.waiting.shift()!({ block: r.verdict !== 'clean', scanner: 'icap', ...r });
  }
  reject(e: Error): void {
    this.waiting.shift();
    this.failing.shift()!(e);
  }
}

const tick = () => new Promise<void>((r) => setImmediate(r));

async function rig(action: 'block' | 'drop', scanner: FileScanner | null, failOpen = false) {
  const engine = new PolicyEngine([
    parseRuleFile(
      `keys: { required: false, unverified: pass }
rules:
  - { id: av, description: Malware, when: { scan: icap }, action: ${action} }
`,
      'rules.yaml',
    ),
  ]);
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const supervisor = new Supervisor(silentLogger);
  const inspector = new GatewayInspector({
    policy: () => engine,
    identity: await testIdentity(),
    events,
    clock,
    supervisor,
    transfers: { maxFileBytes: 100 * 1024 * 1024, pauseMs: 2000 },
    scanners: { icap: scanner, failOpen },
  });
  const closed: string[] = [];
  const sent: Buffer[] = [];
  inspector.setRelay({ send: (_f, _d, data) => void sent.push(data), close: (_f, reason) => void closed.push(reason) });
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
  const datagrams: Buffer[] = [];
  const send = (plain: Buffer) => {
    const d = s.appData(true, plain);
    datagrams.push(d);
    return inspector.onPacket(flow, 'c2p', d, 5000);
  };
  send(sctp.init());
  send(sctp.open(1, 'file:payload.bin'));
  /** Sends the file as a JSON header and 16 KiB messages; the verdict of each datagram. */
  const sendFile = (file = FILE) => {
    const verdicts: boolean[] = [];
    verdicts.push(send(sctp.message(1, Buffer.from(JSON.stringify({ name: 'payload.bin', size: file.length })))));
    for (let o = 0; o < file.length; o += CHUNK)
      for (const frag of sctp.fragmented(1, file.subarray(o, o + CHUNK), 1200)) verdicts.push(send(frag));
    return verdicts;
  };
  return { inspector, events, closed, sent, send, sendFile, sctp, datagrams, supervisor, flow };
}

const alerts = (events: MemoryEventSink) => events.events.filter((e) => e.event_type === 'alert');

t.test('clean: the final chunk is held until the verdict, then released with what came meanwhile', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('block', sc);
  const verdicts = r.sendFile();
  const last = verdicts.length - 1;
  t.ok(verdicts.slice(0, last).every(Boolean), 'everything before the final datagram forwarded');
  t.equal(verdicts[last], false, 'the datagram completing the file is held');
  const final = r.datagrams[r.datagrams.length - 1]!;
  t.equal(sc.calls.length, 1, 'one scan');
  t.same(sc.calls[0], { size: FILE.length, name: 'payload.bin', bytes: FILE.length }, 'the whole file goes to the scanner');
  // A later datagram (e.g. a retransmission of the final chunk) is held behind it.
  t.equal(r.send(r.sctp.message(1, Buffer.from('after'))), false, 'a later datagram waits for the verdict');
  const later = r.datagrams[r.datagrams.length - 1]!;
  await tick();
  t.same(r.sent, [], 'nothing released before the verdict');
  t.ok(r.inspector.stats.bufferedBytes >= final.length + later.length, 'held bytes are in the memory account');
  sc.answer({ verdict: 'clean' });
  await tick();
  t.same(r.closed, []);
  t.equal(r.sent.length, 2, 'both released');
  t.ok(r.sent[0]!.equals(final) && r.sent[1]!.equals(later), 'in arrival order, unchanged');
  t.equal(alerts(r.events).length, 0, 'no alert');
  const scan = r.events.events.find((e) => e.event_type === 'scan');
  t.match(scan?.gatehouse, { scan: { scanner: 'icap', verdict: 'clean' } }, 'a scan event');
  t.equal(r.send(r.sctp.message(1, Buffer.from('next'))), true, 'after the verdict, datagrams flow again');
  t.equal(r.inspector.stats.scanHold.released, 2);
});

t.test('infected with block: withheld, flow blocked, alert names the virus', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('block', sc);
  const verdicts = r.sendFile();
  t.equal(verdicts[verdicts.length - 1], false);
  sc.answer({ verdict: 'infected', virus: VIRUS });
  await tick();
  t.same(r.sent, [], 'the final datagram is never sent');
  t.same(r.closed, ['blocked_policy'], 'flow blocked');
  const a = alerts(r.events);
  t.equal(a.length, 1);
  t.match(a[0], {
    alert: { action: 'blocked', signature_id: 'av', signature: `Malware: ${VIRUS}` },
    gatehouse: { virus: VIRUS, scan: { scanner: 'icap', verdict: 'infected', virus: VIRUS } },
    file: { name: 'payload.bin', size: FILE.length },
  });
  t.ok(
    r.events.events.some((e) => e.event_type === 'flow_blocked'),
    'flow_blocked event',
  );
});

t.test('infected with drop: the final datagram and those held after it are withheld; the flow stays', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('drop', sc);
  r.sendFile();
  t.equal(r.send(r.sctp.message(1, Buffer.from('after'))), false);
  const during = r.inspector.stats.bufferedBytes;
  sc.answer({ verdict: 'infected', virus: VIRUS });
  await tick();
  t.same(r.sent, [], 'nothing released');
  t.same(r.closed, [], 'flow kept');
  t.match(alerts(r.events)[0], { alert: { action: 'blocked', signature: `Malware: ${VIRUS}` } });
  t.equal(r.inspector.stats.scanHold.withheld, 2);
  t.ok(r.inspector.stats.bufferedBytes < during, 'the withheld datagrams leave the memory account');
  t.equal(r.send(r.sctp.message(1, Buffer.from('next'))), true, 'the flow goes on');
});

t.test('holds are bounded: beyond MAX_SCAN_HELD_DATAGRAMS a datagram is withheld without a copy', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('block', sc);
  r.sendFile();
  let forwarded = 0;
  for (let i = 0; i < MAX_SCAN_HELD_DATAGRAMS + 5; i++) if (r.send(r.sctp.message(1, Buffer.from(`m${i}`)))) forwarded++;
  t.equal(forwarded, 0, 'none forwarded while the scan runs');
  t.equal(r.inspector.stats.scanHold.overflow, 6, 'the final one and 63 later ones held, 6 over the bound');
  sc.answer({ verdict: 'clean' });
  await tick();
  t.equal(r.sent.length, MAX_SCAN_HELD_DATAGRAMS);
});

/** A Scanner that never answers (within the guard's deadline) or throws. */
const slow: Scanner = { kind: 'icap', scan: () => new Promise<ScanResult>(() => {}) };
const throwing: Scanner = {
  kind: 'icap',
  scan: () => Promise.reject(new Error('socket exploded')),
};

for (const failOpen of [false, true]) {
  t.test(`time-out with fail_open ${failOpen}`, async (t) => {
    const g = new GuardedScanner(slow, { timeoutMs: 100, failOpen, maxConcurrent: 2 });
    const r = await rig('block', g, failOpen);
    const verdicts = r.sendFile();
    t.equal(verdicts[verdicts.length - 1], false, 'held while the scan runs');
    await new Promise((res) => setTimeout(res, 250));
    if (failOpen) {
      t.same(r.closed, [], 'passes');
      t.equal(r.sent.length, 1, 'final datagram released');
      t.equal(alerts(r.events).length, 0);
      t.match(r.events.events.find((e) => e.event_type === 'scan')?.gatehouse, { scan: { verdict: 'clean', error: 'timeout' } });
      t.equal(g.stats.failed_open, 1);
    } else {
      t.same(r.closed, ['blocked_policy'], 'unscanned: blocked');
      t.same(r.sent, []);
      t.match(alerts(r.events)[0], { alert: { signature: 'Malware: unscanned (timeout)' }, gatehouse: { scan: { verdict: 'unscanned' } } });
      t.equal(g.stats.failed_closed, 1);
    }
    t.equal(g.stats.errors.timeout, 1, 'counted');
  });
}

t.test('a scanner that throws (inside the guard): a protocol error, fail_open false blocks', async (t) => {
  const g = new GuardedScanner(throwing, { timeoutMs: 1000, failOpen: false, maxConcurrent: 1 });
  const r = await rig('block', g);
  r.sendFile();
  await tick();
  await tick();
  t.same(r.closed, ['blocked_policy']);
  t.equal(g.stats.errors.protocol, 1);
});

t.test('a scan promise that rejects closes that flow (supervised), never the process', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('block', sc);
  r.sendFile();
  sc.reject(new Error('bug in a scanner'));
  await tick();
  t.same(r.closed, ['internal_error'], 'flow closed');
  t.same(r.sent, [], 'the held datagram is not released');
  t.equal(r.supervisor.failures.get('gateway.flow.scan'), 1, 'counted at its call site');
  t.ok(r.events.events.some((e) => e.event_type === 'flow_closed'));
});

t.test('no scanner configured for the rule: unscanned, fail_open false blocks', async (t) => {
  const r = await rig('block', null);
  r.sendFile();
  await tick();
  t.same(r.closed, ['blocked_policy']);
  t.match(alerts(r.events)[0], { alert: { signature: 'Malware: unscanned (unreachable)' } });
});

t.test('messages that are not files are not scanned', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('block', sc);
  t.equal(r.send(r.sctp.message(1, Buffer.from('hello'))), true);
  t.equal(sc.calls.length, 0);
});

t.test('a file sent as one message (no header) is scanned too: held until the verdict, withheld when infected', async (t) => {
  const sc = new FakeScanner();
  const r = await rig('block', sc);
  const one = Buffer.alloc(60_000, 0x5a);
  const verdicts = r.sctp.fragmented(1, one, 1200).map((f) => r.send(f));
  t.equal(verdicts[verdicts.length - 1], false, 'the datagram completing the message is held');
  t.equal(sc.calls.length, 1, 'one scan');
  sc.answer({ verdict: 'infected', virus: VIRUS });
  await tick();
  t.same(r.sent, [], 'never sent');
  t.same(r.closed, ['blocked_policy'], 'flow blocked');
});
