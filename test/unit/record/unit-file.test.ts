/**
 * UnitFile writes asynchronously through a bounded queue: append() never does I/O, one
 * write is in flight per file, in order, of whole units; over the bound units are dropped
 * and the recording is sealed incomplete (queue_full); close orders after the write in
 * flight and the store seals only once every file of the part is written.
 */
import t from 'tap';
import * as fs from 'node:fs';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { RecordingStore } from '../../../src/record/recorder.js';
import { QueueBudget, UnitFile, type UnitFs } from '../../../src/record/unit-file.js';
import { verifyRecordings, type Manifest } from '../../../src/record/manifest.js';
import { createLogger } from '../../../src/util/log.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { testSigner } from './identity-helper.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-unitfile-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const tick = () => new Promise((r) => setImmediate(r));

/** I/O completes on the thread pool: waits (polling) until cond holds. */
async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** The real fs, counting calls; with hold, write callbacks wait for release(). */
function spyFs(hold = false) {
  const calls: string[] = [];
  const held: (() => void)[] = [];
  const f: Partial<UnitFs> = {
    openSync: (p, fl, m) => (calls.push('openSync'), fs.openSync(p, fl, m)),
    write: (fd, buf, off, len, pos, cb) => {
      calls.push(`write ${len}${pos === null ? '' : ` @${pos}`}`);
      fs.write(fd, buf, off, len, pos, (err, n) => (hold ? held.push(() => cb(err, n)) : cb(err, n)));
    },
    fsync: (fd, cb) => (calls.push('fsync'), fs.fsync(fd, cb)),
    close: (fd, cb) => (calls.push('close'), fs.close(fd, cb)),
    writeSync: (fd, buf, off, len, pos) => (calls.push(`writeSync ${len}`), fs.writeSync(fd, buf, off, len, pos)),
    fsyncSync: (fd) => (calls.push('fsyncSync'), fs.fsyncSync(fd)),
    closeSync: (fd) => (calls.push('closeSync'), fs.closeSync(fd)),
  };
  return {
    fs: f,
    calls,
    held,
    /** Completes the held writes (their data is on disk already; the caller learns it now). */
    release: async () => {
      for (const cb of held.splice(0)) cb(); // only those held now: the writes they start are held again
      await tick();
    },
    waitHeld: (n = 1) => until(() => held.length >= n),
  };
}

const unit = (i: number, n = 100) => Buffer.alloc(n, 0x41 + (i % 26));

t.test('append() never does I/O; past maxPending it schedules one write for the next turn', async (t) => {
  const spy = spyFs();
  const p = join(work, 'noio');
  const f = new UnitFile(p, { fs: spy.fs, maxPending: 1000 });
  t.same(spy.calls, ['openSync']);
  for (let i = 0; i < 50; i++) f.append(unit(i)); // 5000 bytes, 5x the threshold
  t.same(spy.calls, ['openSync'], 'no write from append');
  t.equal(readFileSync(p).length, 0, 'nothing on disk yet');
  t.equal(f.queued, 5000);
  await tick();
  t.same(spy.calls, ['openSync', 'write 5000'], 'one write of every pending unit, on the next turn');
  t.equal(f.queued, 5000, 'in flight');
  await f.closeAsync();
  t.equal(readFileSync(p).length, 5000);
  t.equal(f.queued, 0);
});

t.test('one write in flight per file, in order; close orders after it, then patches, fsync and close', async (t) => {
  const spy = spyFs(true);
  const p = join(work, 'order');
  const f = new UnitFile(p, { fs: spy.fs, fsync: true });
  f.append(Buffer.from('HEAD0000\n'));
  f.append(Buffer.from('one\n'));
  f.flush();
  await spy.waitHeld();
  f.append(Buffer.from('two\n'));
  f.flush(); // a write is in flight: this one waits for it
  f.append(Buffer.from('three\n'));
  t.same(spy.calls, ['openSync', 'write 13'], 'one write in flight');
  f.patch(4, Buffer.from('1234'));
  let done = 0;
  t.equal(
    f.close(() => done++),
    false,
    'close waits for the write in flight',
  );
  t.equal(done, 0);
  await spy.release();
  await spy.waitHeld();
  t.same(spy.calls.slice(1, 4), ['write 13', 'fsync', 'write 10'], 'the rest after the first write (and its fsync)');
  await spy.release();
  await spy.waitHeld();
  t.equal(spy.calls[4], 'fsync');
  t.equal(spy.calls[5], 'write 4 @4', 'the patch after every unit');
  await spy.release();
  await until(() => done > 0);
  t.equal(done, 1, 'done once the file is closed');
  t.same(spy.calls.slice(6), ['fsync', 'close']);
  t.equal(readFileSync(p, 'utf8'), 'HEAD1234\none\ntwo\nthree\n');
  t.ok(f.done);
  t.equal(f.close(), true, 'closing again: already done');
});

t.test('close with nothing in flight finishes before it returns', async (t) => {
  const spy = spyFs();
  const p = join(work, 'sync-close');
  const f = new UnitFile(p, { fs: spy.fs });
  f.append(Buffer.from('a\n'));
  f.append(Buffer.from('b\n'));
  f.patch(0, Buffer.from('A'));
  let done = false;
  t.equal(
    f.close(() => (done = true)),
    true,
  );
  t.ok(done);
  t.equal(readFileSync(p, 'utf8'), 'A\nb\n');
});

t.test('the queue bound: units past it are dropped, the file stops taking units, onError once', async (t) => {
  const spy = spyFs(true);
  const p = join(work, 'bound');
  const errs: string[] = [];
  const f = new UnitFile(p, { fs: spy.fs, maxQueued: 1000, onError: (e, file) => errs.push(`${e.code} ${file}`) });
  for (let i = 0; i < 5; i++) f.append(unit(i));
  f.flush(); // 500 bytes in flight, held: a disk that does not answer
  await spy.waitHeld();
  for (let i = 5; i < 20; i++) t.doesNotThrow(() => f.append(unit(i)));
  t.same(errs, ['QUEUE_FULL bound'], 'told once');
  t.equal(f.error?.code, 'QUEUE_FULL');
  t.equal(f.queued, 1000, 'never more than the bound');
  t.equal(f.dropped, 10);
  t.equal(f.size, 1000);
  const closed = f.closeAsync();
  await spy.release();
  await spy.waitHeld();
  await spy.release();
  await closed;
  const data = readFileSync(p);
  t.equal(data.length, 1000, 'what was queued is written: whole units, a prefix of the stream');
  t.ok(Array.from({ length: 10 }, (_, i) => data.subarray(i * 100, i * 100 + 100).equals(unit(i))).every(Boolean), 'units 0..9 in order');
});

t.test('a budget shared by files bounds them together', async (t) => {
  const budget = new QueueBudget(1500);
  const errs: string[] = [];
  const onError = (e: NodeJS.ErrnoException, file: string) => errs.push(`${e.code} ${file}`);
  const a = new UnitFile(join(work, 'ba'), { budget, onError });
  const b = new UnitFile(join(work, 'bb'), { budget, onError });
  for (let i = 0; i < 10; i++) a.append(unit(i));
  for (let i = 0; i < 6; i++) b.append(unit(i));
  t.same(errs, ['QUEUE_FULL bb']);
  t.equal(budget.bytes, 1500);
  await Promise.all([a.closeAsync(), b.closeAsync()]);
  t.equal(budget.bytes, 0, 'released once written');
  t.equal(readFileSync(join(work, 'bb')).length, 500);
});

t.test('fsync: an async fsync after every write', async (t) => {
  const spy = spyFs();
  const f = new UnitFile(join(work, 'fsync'), { fs: spy.fs, fsync: true });
  f.append(unit(0));
  f.flush();
  t.notOk(spy.calls.includes('fsync'));
  await until(() => f.queued === 0); // the write and its fsync completed
  t.same(spy.calls, ['openSync', 'write 100', 'fsync']);
  t.notOk(spy.calls.includes('fsyncSync'));
  await f.closeAsync();
  t.same(spy.calls.slice(3), ['fsyncSync', 'closeSync'], 'nothing was in flight at close: finished at once');
});

const dcOpen = (stream: number, time: number): InspectEvent => ({
  type: 'datachannel.open',
  time,
  dir: 'c2s',
  stream,
  label: 'chat',
  protocol: '',
  channelType: 0,
  ordered: true,
});
const dcMsg = (stream: number, time: number, text: string): InspectEvent => ({
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
const rtp = (i: number, time: number): InspectEvent => {
  const payload = Buffer.from([0xfc, i & 0xff, 1, 2, 3, 4, 5]);
  return {
    type: 'rtp.packet',
    time,
    dir: 'c2s',
    ssrc: 42,
    payloadType: 111,
    seq: i,
    index: i,
    timestamp: i * 960,
    marker: false,
    payloadSize: payload.length,
    payload,
  };
};
const flow = { flowId: 'q', client: { ip: '10.0.0.1', port: 1 }, peer: { ip: '10.0.0.2', port: 2 } };

t.test('a recording over its queue bound is stopped, counted as queue_full, logged once and sealed incomplete', async (t) => {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, 'store-bound');
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  const store = new RecordingStore({ dir, identity, clock, fsync: false, log, maxQueuedBytesPerFile: 2000 });
  const rec = store.open(flow);
  rec.onEvent(dcOpen(1, clock.now()));
  // No flush timer runs (the clock stands still): the transcript queue fills up.
  for (let i = 0; i < 100; i++) t.doesNotThrow(() => rec.onEvent(dcMsg(1, clock.now(), `message number ${i}`)));
  t.match(rec.failure, { reason: 'queue_full', file: 'dc-1.jsonl' });
  t.same(store.stats.failures.write, { queue_full: 1 });
  t.equal(store.stats.incomplete, 1);
  t.ok(store.stats.queuedBytes <= 2000, `queued ${store.stats.queuedBytes} <= 2000`);
  t.equal(lines.filter((l) => String(l.msg).startsWith('recording stopped')).length, 1, 'logged once');
  const sealed = rec.close();
  t.ok(sealed, 'sealed');
  const m = JSON.parse(readFileSync(join(sealed!.dir, 'manifest.json'), 'utf8')) as Manifest;
  t.match(m.incomplete, { reason: 'queue_full', file: 'dc-1.jsonl' });
  const text = readFileSync(join(sealed!.dir, 'dc-1.jsonl'), 'utf8');
  t.ok(text.endsWith('\n'));
  const got = text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { text?: string });
  t.ok(got.length > 5 && got.length < 101, `${got.length} whole lines kept`);
  t.same(
    got.slice(1).map((l) => l.text),
    got.slice(1).map((_, i) => `message number ${i}`),
    'a prefix, in order',
  );
  t.same(verifyRecordings(dir).problems, []);
  t.equal(store.stats.queuedBytes, 0);
});

t.test('close with writes in flight: the part is sealed once they complete, and the hashes match the files', async (t) => {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, 'store-inflight');
  const store = new RecordingStore({ dir, identity, clock, fsync: true });
  const rec = store.open(flow);
  rec.onEvent({ type: 'rtp.stream', time: clock.now(), ssrc: 42, payloadType: 111, codec: 'opus', kind: 'audio' });
  rec.onEvent(dcOpen(1, clock.now()));
  for (let i = 0; i < 200; i++) {
    rec.onEvent(rtp(i, clock.now() + i * 20));
    if (i % 10 === 0) rec.onEvent(dcMsg(1, clock.now(), `m${i}`));
  }
  rec.flush(); // starts the writes now
  for (let i = 200; i < 300; i++) rec.onEvent(rtp(i, clock.now() + i * 20)); // queued behind them
  const rdir = rec.recordingDir;
  t.equal(rec.close(), null, 'not sealed yet: writes are in flight');
  t.equal(store.stats.closing, 1);
  t.same(store.openRecordings, [rec.recordingId], 'still open until sealed');
  await store.drained();
  t.equal(store.stats.closing, 0);
  t.equal(rec.sealed.length, 1, 'sealed after the writes');
  t.same(store.openRecordings, []);
  t.equal(store.stats.queuedBytes, 0);
  const m = JSON.parse(readFileSync(join(rdir, 'manifest.json'), 'utf8')) as Manifest;
  const files = m.files as Record<string, { sha256: string; size: number }>;
  t.same(Object.keys(files).sort(), ['audio-42.opus', 'dc-1.jsonl', 'meta.json', 'rtp-42.pcap']);
  for (const [name, e] of Object.entries(files)) {
    const data = readFileSync(join(rdir, name));
    t.equal(e.size, data.length, `${name}: size`);
    t.equal(e.sha256, createHash('sha256').update(data).digest('hex'), `${name}: hash of the complete file`);
  }
  // 300 records of 24 (IP/UDP 28 + RTP 12 + 7) + 16 bytes, after a 24-byte global header.
  t.equal(files['rtp-42.pcap']!.size, 24 + 300 * (16 + 28 + 12 + 7), 'every packet, also those queued behind the write in flight');
  t.same(verifyRecordings(dir).problems, []);
  await store.drained(); // nothing left: resolves at once
});
