/**
 * events.jsonl under faults: a full disk (ENOSPC), EIO, a stalled disk. The sink drops
 * what it cannot write, counts it by reason, logs once per state change, retries, and
 * never throws into emit() or the process.
 */
import t from 'tap';
import * as fs from 'node:fs';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  EVENT_QUEUE_MAX_BYTES,
  EVENT_QUEUE_MAX_EVENTS,
  FanoutEventSink,
  FileEventSink,
  MemoryEventSink,
  eveTimestamp,
  type EveEvent,
  type SinkFs,
} from '../../../src/events/eve.js';
import { createLogger } from '../../../src/util/log.js';
import { Supervisor } from '../../../src/util/supervise.js';

const ev = (i: number, pad = 0): EveEvent => ({
  timestamp: eveTimestamp(Date.UTC(2026, 10, 22, 10, 0, 0, i)),
  event_type: 'alert',
  flow_id: i,
  ...(pad ? { pad: 'x'.repeat(pad) } : {}),
});

function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines, msgs: () => lines.map((l) => String(l.msg)) };
}

const errno = (code: string) => Object.assign(new Error(`${code}: simulated, write`), { code });

/** fs.write that fails with `code` while `failing()` is true; optionally writes a torn half first. */
function faultyWrite(failing: () => boolean, code: string, tornHalf = false): Partial<SinkFs> {
  return {
    write(fd, buf, off, len, pos, cb) {
      if (!failing()) return fs.write(fd, buf, off, len, pos, cb);
      if (tornHalf && len > 1) {
        const half = Math.floor(len / 2);
        fs.writeSync(fd, buf, off, half); // what a full disk does: a short write, then ENOSPC
        return setImmediate(() => cb(errno(code), 0));
      }
      setImmediate(() => cb(errno(code), 0));
    },
  };
}

function readLines(path: string): EveEvent[] {
  const text = readFileSync(path, 'utf8');
  if (text === '') return [];
  t.ok(text.endsWith('\n'), 'file ends on a whole line');
  return text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as EveEvent);
}

t.test('the bounds are the documented ones', async (t) => {
  t.equal(EVENT_QUEUE_MAX_BYTES, 4 * 1024 * 1024);
  t.equal(EVENT_QUEUE_MAX_EVENTS, 16384);
});

t.test('a stalled disk: the queue stops at its event bound and counts the rest as queue_full', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  let stalled: (() => void) | null = null;
  const { log, msgs } = capture();
  const sink = new FileEventSink(join(dir, 'events.jsonl'), 1 << 30, 2, {
    maxQueueEvents: 10,
    log,
    fs: {
      write(fd, buf, off, len, pos, cb) {
        if (stalled) return fs.write(fd, buf, off, len, pos, cb);
        stalled = () => fs.write(fd, buf, off, len, pos, cb); // the first write hangs until released
      },
    },
  });
  sink.emit(ev(0));
  await new Promise((r) => setImmediate(r)); // ev(0) is in flight
  t.ok(stalled, 'a write is in flight');
  for (let i = 1; i <= 25; i++) sink.emit(ev(i));
  t.equal(sink.stats.queueEvents, 10, 'queue holds its bound');
  t.same(sink.stats.dropped, { queue_full: 15 });
  t.equal(sink.stats.degraded, true);
  t.equal(msgs().filter((m) => m.startsWith('events.jsonl: cannot write')).length, 1, 'logged once');
  stalled!();
  await sink.drained();
  t.same(
    readLines(join(dir, 'events.jsonl')).map((e) => e.flow_id),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    'the in-flight event and the queued ten were written, in order',
  );
  t.equal(sink.stats.degraded, false, 'recovered after a write succeeded');
  t.equal(msgs().filter((m) => m === 'events.jsonl: writing again').length, 1);
  sink.close();
});

t.test('the byte bound applies too', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const sink = new FileEventSink(join(dir, 'events.jsonl'), 1 << 30, 2, {
    maxQueueBytes: 4096,
    fs: { write() {} }, // never completes
  });
  for (let i = 0; i < 20; i++) sink.emit(ev(i, 900)); // ~1 KB each
  t.ok(sink.stats.queueBytes <= 4096, `queued ${sink.stats.queueBytes} bytes`);
  t.ok(sink.stats.queueEvents < 20);
  t.equal((sink.stats.dropped.queue_full ?? 0) + sink.stats.queueEvents, 20, 'every event is queued or counted');
});

t.test('ENOSPC: dropped by reason, logged once, retried, recovers; whole lines only', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const path = join(dir, 'events.jsonl');
  let full = false;
  const { log, lines, msgs } = capture();
  const sink = new FileEventSink(path, 1 << 30, 2, { retryMs: 1, log, fs: faultyWrite(() => full, 'ENOSPC', true) });
  sink.emit(ev(1));
  await sink.drained();
  full = true;
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 4; i++) t.doesNotThrow(() => sink.emit(ev(100 + round * 10 + i)));
    await new Promise((r) => setTimeout(r, 5)); // let retries fail
  }
  // On a loaded machine (CI runs test files in parallel) the 1 ms retries may not have run
  // yet: wait for the first failed write instead of trusting the 25 ms above.
  for (let waited = 0; (sink.stats.dropped.enospc ?? 0) === 0 && waited < 5000; waited += 10) await new Promise((r) => setTimeout(r, 10));
  t.ok((sink.stats.dropped.enospc ?? 0) > 0, `dropped ${sink.stats.dropped.enospc} as enospc`);
  t.equal(sink.stats.degraded, true);
  t.same(
    readLines(path).map((e) => e.flow_id),
    [1],
    'torn writes were cut back to the last whole line',
  );
  full = false;
  sink.emit(ev(2));
  await sink.drained();
  t.equal(sink.stats.degraded, false);
  const got = readLines(path).map((e) => e.flow_id);
  t.equal(got[0], 1);
  t.equal(got.at(-1), 2, 'writing again after the disk has room');
  t.equal(got.length - 1 + (sink.stats.dropped.enospc ?? 0), 21, 'every event was written or counted');
  t.equal(msgs().filter((m) => m.startsWith('events.jsonl: cannot write')).length, 1, 'degraded: one line');
  t.equal(msgs().filter((m) => m === 'events.jsonl: writing again').length, 1, 'recovered: one line');
  const warn = lines.find((l) => String(l.msg).startsWith('events.jsonl: cannot write'))!;
  t.equal(warn.reason, 'enospc');
  sink.close();
});

t.test('EIO on close: dropped and counted, close does not throw', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const sink = new FileEventSink(join(dir, 'events.jsonl'), 1 << 30, 2, {
    fs: {
      writeSync() {
        throw errno('EIO');
      },
    },
  });
  sink.emit(ev(1));
  sink.emit(ev(2));
  t.doesNotThrow(() => sink.close());
  t.same(sink.stats.dropped, { eio: 2 });
  sink.emit(ev(3));
  t.equal(sink.stats.dropped.closed, 1, 'after close: counted, not thrown');
});

t.test('an event that cannot be serialized is counted, not thrown', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const sink = new FileEventSink(join(dir, 'events.jsonl'));
  t.doesNotThrow(() => sink.emit({ ...ev(1), big: 1n }));
  t.equal(sink.stats.dropped.unserializable, 1);
  sink.close();
});

t.test('rotation keeps working across a failure', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const path = join(dir, 'events.jsonl');
  let full = false;
  const sink = new FileEventSink(path, 1000, 2, { retryMs: 1, fs: faultyWrite(() => full, 'ENOSPC') });
  for (let i = 0; i < 30; i++) sink.emit(ev(i));
  await sink.drained();
  full = true;
  for (let i = 30; i < 40; i++) sink.emit(ev(i));
  await new Promise((r) => setTimeout(r, 5));
  full = false;
  for (let i = 40; i < 70; i++) sink.emit(ev(i));
  await sink.drained();
  sink.close();
  t.ok(existsSync(`${path}.1`) && existsSync(`${path}.2`), 'rotated');
  t.notOk(existsSync(`${path}.3`));
  for (const f of [path, `${path}.1`, `${path}.2`]) t.ok(readFileSync(f, 'utf8').length <= 1000, `${f} within the limit`);
  t.equal(readLines(path).at(-1)!.flow_id, 69);
});

t.test('fanout: a sink that throws does not stop the others, and is counted', async (t) => {
  const { log } = capture();
  const sup = new Supervisor(log);
  const memory = new MemoryEventSink(10);
  const bad = {
    emit() {
      throw new Error('boom');
    },
    close() {
      throw new Error('boom on close');
    },
  };
  const fan = new FanoutEventSink([bad, memory], sup);
  t.doesNotThrow(() => fan.emit(ev(1)));
  t.doesNotThrow(() => fan.emit(ev(2)));
  t.doesNotThrow(() => fan.close());
  t.same(
    memory.events.map((e) => e.flow_id),
    [1, 2],
  );
  t.same(fan.failures, [3, 0]);
  t.equal(sup.failures.get('events.sink.emit'), 2);
  t.equal(sup.failures.get('events.sink.close'), 1);
});
