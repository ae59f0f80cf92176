/**
 * Issue 9: a reassembled data-channel transfer is recorded once, whole, under
 * files/<sha256>; its chunks are listed in the transcript but not stored on their own.
 */
import t from 'tap';
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { RecordingStore, type FlowRecorder } from '../../../src/record/recorder.js';
import { runVerify } from '../../../src/cli/verify.js';
import type { FileEvent, InspectEvent } from '../../../src/inspect/events.js';
import { testSigner } from './identity-helper.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-transfer-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const flow = { flowId: 'flow-t', client: { ip: '192.0.2.1', port: 5000 }, peer: { ip: '192.0.2.2', port: 6000 } };

async function open(name: string): Promise<{ rec: FlowRecorder; dir: string; clock: ManualClock }> {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, name);
  const store = new RecordingStore({ dir, identity, clock, fsync: false });
  return { rec: store.open(flow), dir, clock };
}

const base = { dir: 'c2s' as const, stream: 1, label: 'file' };
const msg = (time: number, index: number, data: Buffer, ppid = 53): InspectEvent => ({
  type: 'datachannel.message',
  time,
  ...base,
  ppid,
  size: data.length,
  sha256: sha(data),
  index,
  data,
});
const chunkFile = (time: number, index: number, data: Buffer): InspectEvent => ({
  type: 'file',
  time,
  ...base,
  size: data.length,
  sha256: sha(data),
  fileType: 'unknown',
  index,
  data,
});
function transferFile(time: number, first: number, whole: Buffer, extra: Partial<FileEvent> = {}): InspectEvent {
  return {
    type: 'file',
    time,
    ...base,
    size: whole.length,
    sha256: sha(whole),
    fileType: 'unknown',
    data: whole,
    name: 'report.bin',
    transfer: { firstMessage: first, lastMessage: first + 3, messages: 4, end: 'size', announcedSize: whole.length },
    ...extra,
  };
}

function lines(dir: string): Record<string, unknown>[] {
  return readFileSync(join(dir, 'dc-1.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
const stored = (dir: string) => (existsSync(join(dir, 'files')) ? readdirSync(join(dir, 'files')).sort() : []);

async function verify(dir: string): Promise<number> {
  const w = new Writable({ write: (_c, _e, cb) => cb() });
  return runVerify([dir], { stdout: w, stderr: w });
}

/** A header, 4 chunks of 16 KiB (each a `file` of its own too) and the transfer's event. */
function sendChunked(rec: FlowRecorder, t0: number, whole: Buffer, extra: Partial<FileEvent> = {}): Buffer[] {
  const chunks = [0, 1, 2, 3].map((i) => whole.subarray(i * 16384, (i + 1) * 16384));
  rec.onEvent(msg(t0, 0, Buffer.from(JSON.stringify({ name: 'report.bin', size: whole.length })), 51));
  chunks.forEach((c, i) => {
    rec.onEvent(msg(t0 + 1 + i, 1 + i, c));
    rec.onEvent(chunkFile(t0 + 1 + i, 1 + i, c));
  });
  const data = extra.headOnly ? whole.subarray(0, 20000) : whole;
  rec.onEvent(transferFile(t0 + 5, 1, data, { size: whole.length, sha256: sha(whole), ...extra }));
  return chunks;
}

t.test('a chunked transfer is stored once, whole, and its chunks name it', async (t) => {
  const { rec, dir, clock } = await open('whole');
  const whole = randomBytes(4 * 16384);
  const chunks = sendChunked(rec, clock.now(), whole);
  rec.close();
  const rd = rec.recordingDir;
  t.same(stored(rd), [sha(whole)], 'files/ holds the whole transfer only, no chunk');
  t.same(readFileSync(join(rd, 'files', sha(whole))), whole, 'byte for byte');
  const ls = lines(rd);
  t.equal(ls.length, 1 + 4 * 2 + 1, 'header, 4 messages and 4 chunk files, the transfer');
  const msgs = ls.filter((l) => l.event === 'message' && l.ppid === 53);
  t.same(
    msgs.map((l) => [l.index, l.size, l.sha256, l.transfer, l.file]),
    chunks.map((c, i) => [1 + i, 16384, sha(c), sha(whole), null]),
    'each message listed with its sha256 and size, naming the transfer',
  );
  const chunkLines = ls.filter((l) => l.event === 'file' && l.index !== undefined);
  t.equal(chunkLines.length, 4);
  t.ok(
    chunkLines.every((l) => l.file === null && l.transfer === sha(whole)),
    'chunk-level files are no objects of their own',
  );
  const tl = ls.at(-1)!;
  t.match(tl, {
    event: 'file',
    name: 'report.bin',
    size: whole.length,
    sha256: sha(whole),
    file: `files/${sha(whole)}`,
    transfer: { first_message: 1, last_message: 4, messages: 4, end: 'size', announced_size: whole.length },
  });
  t.notOk('content' in tl);
  const m = JSON.parse(readFileSync(join(rd, 'manifest.json'), 'utf8')) as { files: Record<string, unknown> };
  t.ok(m.files[`files/${sha(whole)}`], 'the manifest covers the file');
  t.equal(Object.keys(m.files).filter((f) => f.startsWith('files/')).length, 1);
  t.equal(await verify(dir), 0, 'gatehouse verify: intact');
});

t.test('headOnly: the head is never stored; the line says the content was not kept', async (t) => {
  const { rec, clock } = await open('head');
  const whole = randomBytes(4 * 16384);
  const chunks = sendChunked(rec, clock.now(), whole, { headOnly: true });
  rec.close();
  const rd = rec.recordingDir;
  const tl = lines(rd).at(-1)!;
  t.match(tl, { event: 'file', size: whole.length, sha256: sha(whole), file: null, content: 'not kept' });
  t.notOk(stored(rd).includes(sha(whole.subarray(0, 20000))), 'no object of the head');
  t.notOk(stored(rd).includes(sha(whole)), 'no whole');
  // The messages themselves were seen whole: they are kept as they came.
  t.same(stored(rd), chunks.map((c) => sha(c)).sort());
});

t.test('a single large message (no transfer event) is stored once under its sha256', async (t) => {
  const { rec, clock } = await open('single');
  const one = randomBytes(200 * 1024);
  rec.onEvent(msg(clock.now(), 0, one));
  rec.onEvent(chunkFile(clock.now(), 0, one));
  rec.onEvent(msg(clock.now() + 1, 1, Buffer.from('done'), 51));
  rec.onEvent(msg(clock.now() + 2, 2, Buffer.from('next'), 51));
  rec.close();
  const rd = rec.recordingDir;
  t.same(stored(rd), [sha(one)]);
  const ls = lines(rd);
  t.same(
    ls.map((l) => [l.event, l.index, l.file ?? null]),
    [
      ['message', 0, `files/${sha(one)}`],
      ['file', 0, `files/${sha(one)}`],
      ['message', undefined, null],
      ['message', undefined, null],
    ],
    'in order, written once the text message showed no transfer followed',
  );
});

t.test('messages before the transfer range, and held runs at close, are stored on their own', async (t) => {
  const { rec, clock } = await open('partial');
  const a = randomBytes(3000);
  const b = randomBytes(3000);
  const t0 = clock.now();
  rec.onEvent(msg(t0, 0, a));
  rec.onEvent(msg(t0 + 1, 1, b));
  // The tracker's transfer started at message 1 (message 0 ended by a pause, unreported).
  rec.onEvent(transferFile(t0 + 2, 1, b, { transfer: { firstMessage: 1, lastMessage: 1, messages: 1, end: 'pause' } }));
  const c = randomBytes(5000);
  rec.onEvent(msg(t0 + 3, 2, c)); // still held at close
  rec.close();
  const rd = rec.recordingDir;
  t.same(stored(rd), [sha(a), sha(b), sha(c)].sort());
  const ls = lines(rd);
  t.same(
    ls.map((l) => [l.event, l.index, l.file, l.transfer === undefined ? undefined : typeof l.transfer]),
    [
      ['message', 0, `files/${sha(a)}`, undefined],
      ['message', 1, null, 'string'],
      ['file', undefined, `files/${sha(b)}`, 'object'],
      ['message', 2, `files/${sha(c)}`, undefined],
    ],
  );
});
