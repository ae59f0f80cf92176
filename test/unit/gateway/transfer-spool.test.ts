/**
 * Issue 9, the disk spool: a transfer a recorder or a scanner needs is written to
 * DATA_DIR/spool beyond its first 64 KiB (src/inspect/transfer.ts, src/record/spool.ts),
 * so a 1 MB file does not sit in the flow's memory account. The spool file exists while
 * the file arrives and while the scan reads it, and is gone after; the recording holds
 * the file under its SHA-256; the scanner reads a stream, not a Buffer. A spool that
 * cannot be written (a full disk, here the spool's byte bound) judges the file on what
 * was seen, says so with `cap.hit` `datachannel.spool`, and a scan rule follows fail_open.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { GatewayInspector, type FileScanner } from '../../../src/gateway/inspector.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { RecordingStore } from '../../../src/record/recorder.js';
import { DiskSpool } from '../../../src/record/spool.js';
import type { GuardedResult, ScanInput } from '../../../src/scan/index.js';
import type { Flow } from '../../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../inspect/pipeline-helpers.js';
import { testIdentity } from './escrow-helpers.js';
import { testSigner } from '../record/identity-helper.js';

const CHUNK = 16 * 1024;
const FILE = randomBytes(1024 * 1024);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const tick = () => new Promise<void>((r) => setImmediate(r));
/** Waits (real time: the scan reads a file through libuv's pool) until cond holds, at most 5 s. */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
}

/** Answers clean after reading the whole input; notes what it was given. */
class ReadingScanner implements FileScanner {
  readonly kind = 'icap';
  calls: { buffer: boolean; sha: string; bytes: number; size: number }[] = [];
  private gate: (() => void) | null = null;
  private opened: Promise<void> = new Promise((r) => (this.gate = r));
  /** Lets the scans (waiting since their call) read and answer. */
  open(): void {
    this.gate?.();
  }
  async scan(file: ScanInput, meta: { size: number }): Promise<GuardedResult> {
    await this.opened;
    const h = createHash('sha256');
    let bytes = 0;
    if (Buffer.isBuffer(file)) {
      h.update(file);
      bytes = file.length;
    } else
      for await (const c of file) {
        h.update(c);
        bytes += c.length;
      }
    this.calls.push({ buffer: Buffer.isBuffer(file), sha: h.digest('hex'), bytes, size: meta.size });
    return { verdict: 'clean', block: false, scanner: 'icap' };
  }
}

async function rig(o: { spool: DiskSpool | null; scanner: FileScanner | null; failOpen?: boolean; maxCopyBytes?: number }) {
  const work = mkdtempSync(join(tmpdir(), 'gh-spool-'));
  const engine = new PolicyEngine([
    parseRuleFile(
      `keys: { required: false, unverified: pass }
rules:
  - { id: rec, when: { group: [staff] }, action: record }
  - { id: av, description: Malware, when: { scan: icap }, action: block }
`,
      'rules.yaml',
    ),
  ]);
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const recordings = new RecordingStore({ dir: join(work, 'recordings'), identity: await testSigner(), clock, fsync: false });
  const inspector = new GatewayInspector({
    policy: () => engine,
    identity: await testIdentity(),
    events,
    clock,
    recordings,
    transfers: { maxFileBytes: 100 * 1024 * 1024, pauseMs: 2000 },
    scanners: { icap: o.scanner, failOpen: o.failOpen ?? false, ...(o.maxCopyBytes ? { maxCopyBytes: o.maxCopyBytes } : {}) },
    spool: o.spool,
  });
  const closed: string[] = [];
  inspector.setRelay({ send: () => {}, close: (_f, reason) => void closed.push(reason) });
  const flow: Flow = {
    id: 1,
    allocationId: 'alloc-1',
    user: 'alice',
    groups: ['staff'],
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
  /** Header and 16 KiB messages; `each` runs after every message with the bytes sent so far. */
  const sendFile = (each: (sent: number) => void = () => {}, file = FILE) => {
    send(sctp.message(1, Buffer.from(JSON.stringify({ name: 'big.bin', size: file.length }))));
    for (let o = 0; o < file.length; o += CHUNK) {
      for (const frag of sctp.fragmented(1, file.subarray(o, o + CHUNK), 1200)) send(frag);
      each(Math.min(file.length, o + CHUNK));
    }
  };
  return { inspector, events, closed, sendFile, recordings, flow, work };
}

/** files/<sha> of every recording under dir. */
function recordedFiles(dir: string): string[] {
  const out: string[] = [];
  for (const r of existsSync(dir) ? readdirSync(dir) : []) {
    const f = join(dir, r, 'files');
    if (existsSync(f)) for (const n of readdirSync(f)) out.push(join(f, n));
  }
  return out;
}

t.test('1 MB recorded and scanned: spooled to disk, not memory; the spool file goes after the scan', async (t) => {
  const spoolDir = mkdtempSync(join(tmpdir(), 'gh-spool-dir-'));
  const spool = new DiskSpool(spoolDir);
  const scanner = new ReadingScanner();
  const r = await rig({ spool, scanner });
  let maxBuffered = 0;
  const during: { files: number; size: number; mode: number }[] = [];
  r.sendFile((sent) => {
    maxBuffered = Math.max(maxBuffered, r.inspector.stats.bufferedBytes);
    if (sent === 512 * 1024) {
      const names = readdirSync(spoolDir);
      const st = names[0] ? statSync(join(spoolDir, names[0])) : null;
      during.push({ files: names.length, size: st?.size ?? -1, mode: (st?.mode ?? 0) & 0o777 });
    }
  });
  t.same(during, [{ files: 1, size: 512 * 1024, mode: 0o600 }], 'half-way: one spool file (0600) holding the bytes seen');
  t.ok(maxBuffered <= 256 * 1024, `the flow's memory account stayed at ${maxBuffered} bytes (≤ 256 KiB) for a 1 MiB file`);
  t.equal(readdirSync(spoolDir).length, 1, 'the scan in flight still holds the spool file');
  t.equal(r.inspector.stats.scanHold.files, 1, 'one file sent to the scanner');
  const waiting = r.inspector.stats.bufferedBytes;
  t.ok(
    waiting >= 64 * 1024 && waiting <= 256 * 1024,
    `waiting for the verdict: ${waiting} bytes in the account (the 64 KiB head and held datagrams)`,
  );
  t.equal(r.inspector.scanCopies, 64 * 1024, 'the global count of scan copies holds the head only');
  scanner.open();
  await until(() => scanner.calls.length > 0 && readdirSync(spoolDir).length === 0);
  t.same(
    scanner.calls,
    [{ buffer: false, sha: sha(FILE), bytes: FILE.length, size: FILE.length }],
    'the scanner read the spool as a stream',
  );
  t.same(readdirSync(spoolDir), [], 'spool file removed once the verdict and the recording are done');
  t.same(spool.stats.failures, {}, 'no spool failure');
  t.equal(spool.stats.created, 1);
  t.equal(spool.stats.bytes, 0, 'no spool bytes outstanding');
  t.same(r.closed, [], 'clean: the flow goes on');
  r.inspector.onFlowClosed(r.flow);
  await r.recordings.drained();
  const files = recordedFiles(join(r.work, 'recordings'));
  t.equal(files.length, 1, 'the recording holds the file once');
  t.equal(files[0]!.endsWith(sha(FILE)), true, 'named by its SHA-256');
  t.equal(sha(readFileSync(files[0]!)), sha(FILE), "the recorded file's SHA-256 is the sent one");
});

t.test('control: without a spool the same transfer is held in memory (the bound above can fail)', async (t) => {
  const scanner = new ReadingScanner();
  const r = await rig({ spool: null, scanner });
  let maxBuffered = 0;
  r.sendFile(() => (maxBuffered = Math.max(maxBuffered, r.inspector.stats.bufferedBytes)));
  t.ok(maxBuffered >= FILE.length, `in memory: ${maxBuffered} bytes`);
  t.ok(r.inspector.stats.bufferedBytes >= FILE.length, 'the copy waiting for the scan counts in the memory account');
  scanner.open();
  await until(() => scanner.calls.length > 0);
  await tick();
  t.equal(scanner.calls[0]?.buffer, true, 'scanned from memory');
  t.ok(r.inspector.stats.bufferedBytes < 64 * 1024, 'given back after the verdict');
  t.equal(r.inspector.scanCopies, 0, 'no scan copy outstanding');
  r.inspector.onFlowClosed(r.flow);
  await r.recordings.drained();
});

t.test('scan copies in memory have a global bound: beyond it the file is unscanned (queue_full → fail_open)', async (t) => {
  const scanner = new ReadingScanner();
  const r = await rig({ spool: null, scanner, maxCopyBytes: FILE.length + 512 * 1024 });
  r.sendFile();
  t.equal(r.inspector.scanCopies, FILE.length, 'the first copy is counted');
  const second = randomBytes(600 * 1024);
  r.sendFile(() => {}, second);
  await tick();
  const scans = r.events.events.filter((e) => e.event_type === 'scan') as {
    gatehouse?: { scan?: { verdict?: string; error?: string; reason?: string } };
  }[];
  t.equal(scans.length, 1, 'the second file was answered at once');
  t.match(scans[0]?.gatehouse?.scan, { verdict: 'unscanned', error: 'queue_full', reason: /file copies waiting for a scan over/ });
  t.ok(r.closed.length > 0, 'fail_open false: the flow is blocked as unscanned');
  t.equal(r.inspector.scanCopies, FILE.length, 'the refused file added nothing');
  scanner.open();
  await until(() => r.inspector.scanCopies === 0);
  t.equal(r.inspector.scanCopies, 0, 'the first copy given back with its answer');
  await r.recordings.drained();
});

t.test('a full spool: judged on what was seen, reported, and the scan rule follows fail_open', async (t) => {
  for (const failOpen of [false, true]) {
    const spoolDir = mkdtempSync(join(tmpdir(), 'gh-spool-full-'));
    // The spool's byte bound stands in for a full disk: writes beyond it fail like ENOSPC.
    const spool = new DiskSpool(spoolDir, { maxBytes: 200 * 1024 });
    const scanner = new ReadingScanner();
    scanner.open();
    const r = await rig({ spool, scanner, failOpen });
    r.sendFile();
    for (let i = 0; i < 50; i++) await tick();
    const cap = r.events.events.filter((e) => e.event_type === 'cap.hit' || (e as { cap?: { what?: string } }).cap?.what);
    t.ok(
      cap.some((e) => (e as { cap?: { what?: string } }).cap?.what === 'datachannel.spool'),
      `fail_open ${failOpen}: cap.hit datachannel.spool reported`,
    );
    t.equal(spool.stats.failures.bytes, 1, 'counted');
    t.same(readdirSync(spoolDir), [], 'nothing left in the spool');
    const file = r.events.events.find((e) => e.event_type === 'file' && (e as { file?: { size?: number } }).file?.size === FILE.length);
    t.ok(file, 'the transfer is still one file event (hash and size of the whole)');
    t.equal(scanner.calls.length, 0, 'the scanner had nothing to read');
    const scan = r.events.events.find((e) => e.event_type === 'scan') as { gatehouse?: { scan?: { verdict?: string } } } | undefined;
    t.equal(scan?.gatehouse?.scan?.verdict, failOpen ? 'clean' : 'unscanned', 'the scan verdict follows fail_open');
    t.same(r.closed.length > 0, !failOpen, failOpen ? 'fail_open true: the flow goes on' : 'fail_open false: blocked as unscanned');
    if (!r.closed.length) r.inspector.onFlowClosed(r.flow);
    await r.recordings.drained();
  }
});

t.test('DiskSpool: 0600 files, holds keep a file, the last release removes it, sweep clears leftovers', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'gh-spool-unit-')), 'spool');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'left-by-a-crash'), 'x');
  const sp = new DiskSpool(dir, { maxFiles: 1 });
  t.equal(sp.sweep(), 1, 'sweep removed the leftover');
  const f = sp.create();
  t.throws(() => sp.create(), /more than 1 spool files/, 'maxFiles bound');
  t.equal(sp.stats.failures.files, 1);
  f.write(Buffer.from('hello '));
  f.write(Buffer.from('world'));
  f.finish();
  t.equal((statSync(f.path).mode & 0o777).toString(8), '600');
  const release = f.content.hold();
  f.release();
  t.ok(existsSync(f.path), 'a hold keeps the file after the writer released it');
  t.equal(readFileSync(f.path, 'utf8'), 'hello world');
  t.equal(f.content.size, 11);
  release();
  release(); // once only
  t.notOk(existsSync(f.path), 'removed with the last hold');
  t.same({ live: sp.stats.live, bytes: sp.stats.bytes, removed: sp.stats.removed }, { live: 0, bytes: 0, removed: 1 });
  t.throws(() => f.content.hold(), /removed/, 'no hold on a removed file');
});
