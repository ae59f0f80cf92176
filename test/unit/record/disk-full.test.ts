/**
 * Recordings on a full disk. /dev/full answers every write with ENOSPC: a recording file
 * (or a manifest's temp file) made a symlink to it fails the way a full filesystem does.
 * Nothing throws into the caller; the recording is marked incomplete, counted and logged
 * once; a manifest that cannot be written is retried at the next seal.
 */
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { RecordingStore } from '../../../src/record/recorder.js';
import { UnitFile } from '../../../src/record/unit-file.js';
import { verifyRecordings, type Manifest } from '../../../src/record/manifest.js';
import { createLogger } from '../../../src/util/log.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { testSigner } from './identity-helper.js';

if (!existsSync('/dev/full')) t.plan(0, 'no /dev/full');

const work = mkdtempSync(join(tmpdir(), 'gh-rec-full-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** Writes are asynchronous: waits (polling) until cond holds. */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines, msgs: () => lines.map((l) => String(l.msg)) };
}

const open = (stream: number, time: number): InspectEvent => ({
  type: 'datachannel.open',
  time,
  dir: 'c2s',
  stream,
  label: 'chat',
  protocol: '',
  channelType: 0,
  ordered: true,
});
const msg = (stream: number, time: number, text: string): InspectEvent => ({
  type: 'datachannel.message',
  time,
  dir: 'c2s',
  stream,
  label: 'chat',
  ppid: 51,
  size: text.length,
  sha256: '',
  data: Buffer.from(text),
});

t.test('UnitFile: ENOSPC is reported once and never thrown', async (t) => {
  const errs: string[] = [];
  const f = new UnitFile('/dev/full', { onError: (e, file) => errs.push(`${e.code} ${file}`) });
  let closed: Promise<void> | undefined;
  t.doesNotThrow(() => {
    f.append(Buffer.from('one unit'));
    f.flush();
    f.append(Buffer.from('another'));
    f.flush();
    f.patch(0, Buffer.from('x'));
    closed = f.closeAsync();
  });
  t.same(errs, [], 'the write is asynchronous: nothing failed yet');
  await closed;
  t.same(errs, ['ENOSPC full']);
  t.equal(f.error?.code, 'ENOSPC');
  t.equal(f.size, 0, 'nothing counted as written');
});

t.test('UnitFile: a file that cannot be opened is reported, not thrown', async (t) => {
  const errs: string[] = [];
  const f = new UnitFile(join(work, 'no', 'such', 'dir', 'x'), { onError: (e) => errs.push(String(e.code)) });
  t.doesNotThrow(() => (f.append(Buffer.from('u')), f.close()));
  t.same(errs, ['ENOENT']);
});

t.test('a recording whose transcript hits ENOSPC is stopped, counted, logged once and sealed incomplete', async (t) => {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, 'write');
  const { log, msgs } = capture();
  const store = new RecordingStore({ dir, identity, clock, fsync: false, flushIntervalMs: 100, log });
  const rec = store.open({ flowId: 'full', client: { ip: '10.0.0.1', port: 1 }, peer: { ip: '10.0.0.2', port: 2 } });
  symlinkSync('/dev/full', join(rec.recordingDir, 'dc-1.jsonl'));
  t.doesNotThrow(() => {
    rec.onEvent(open(1, clock.now()));
    rec.onEvent(msg(1, clock.now(), 'hello'));
    clock.advance(100); // the flush timer starts a write, which fails
  });
  await until(() => rec.failure !== null);
  t.doesNotThrow(() => {
    rec.onEvent(msg(1, clock.now(), 'after the failure'));
    clock.advance(300);
  });
  t.match(rec.failure, { reason: 'enospc', file: 'dc-1.jsonl' });
  t.same(store.stats.failures.write, { enospc: 1 });
  t.equal(store.stats.incomplete, 1);
  t.equal(msgs().filter((m) => m.startsWith('recording stopped')).length, 1, 'logged once');
  unlinkSync(join(rec.recordingDir, 'dc-1.jsonl')); // (reading /dev/full never ends: not something to hash)
  const sealed = rec.close();
  t.ok(sealed, 'sealed');
  const m = JSON.parse(readFileSync(join(sealed!.dir, 'manifest.json'), 'utf8')) as Manifest;
  t.match(m.incomplete, { reason: 'enospc', file: 'dc-1.jsonl' });
  const v = verifyRecordings(dir);
  t.ok(v.ok, v.problems.join('; '));
});

t.test('a manifest that cannot be written is retried at the next seal, in chain order', async (t) => {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, 'seal');
  const { log, msgs } = capture();
  const store = new RecordingStore({ dir, identity, clock, fsync: false, flushIntervalMs: 100, log });
  const a = store.open({ flowId: 'a', client: { ip: '10.0.0.1', port: 1 }, peer: { ip: '10.0.0.2', port: 2 } });
  a.onEvent(open(1, clock.now()));
  symlinkSync('/dev/full', join(a.recordingDir, 'manifest.json.tmp'));
  let sealedA: ReturnType<typeof a.close> = null;
  t.doesNotThrow(() => (sealedA = a.close()));
  t.equal(sealedA, null, 'not sealed yet');
  t.same(store.stats.failures.seal, { enospc: 1 });
  t.equal(store.stats.unsealed, 1);
  t.notOk(existsSync(join(a.recordingDir, 'manifest.json.tmp')), 'no temp file left behind');
  t.equal(msgs().filter((m) => m.startsWith('recordings: cannot write a manifest')).length, 1);

  const b = store.open({ flowId: 'b', client: { ip: '10.0.0.1', port: 1 }, peer: { ip: '10.0.0.2', port: 3 } });
  b.onEvent(open(2, clock.now()));
  const sealedB = b.close();
  t.equal(store.stats.unsealed, 0, 'the held-back manifest was written first');
  t.equal(sealedB?.seq, 2, 'b follows a in the chain');
  t.ok(existsSync(join(a.recordingDir, 'manifest.json')));
  t.equal(msgs().filter((m) => m === 'recordings: sealing again').length, 1);
  const v = verifyRecordings(dir);
  t.ok(v.ok, v.problems.join('; '));
});
