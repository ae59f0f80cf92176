import t from 'tap';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileEventSink, eveTimestamp, type EveEvent } from '../../../src/events/eve.js';
import { filterEvents } from '../../../src/admin/event-filter.js';

const ev = (i: number, extra: Partial<EveEvent> = {}): EveEvent => ({
  timestamp: eveTimestamp(Date.UTC(2026, 10, 22, 10, 0, i)),
  event_type: 'alert',
  flow_id: i,
  ...extra,
});

t.test('Suricata timestamp form', async (t) => {
  t.equal(eveTimestamp(Date.UTC(2026, 10, 22, 10, 0, 0, 123)), '2026-11-22T10:00:00.123000+0000');
});

t.test('events.jsonl rotates by size and keeps N files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const path = join(dir, 'events.jsonl');
  const sink = new FileEventSink(path, 1000, 2);
  for (let i = 0; i < 60; i++) sink.emit(ev(i));
  sink.close();
  t.ok(existsSync(`${path}.1`) && existsSync(`${path}.2`));
  t.notOk(existsSync(`${path}.3`), 'only `keep` rotated files');
  for (const f of [path, `${path}.1`, `${path}.2`]) {
    const text = readFileSync(f, 'utf8');
    t.ok(text.length <= 1000, `${f} within the limit`);
    for (const line of text.trim().split('\n')) JSON.parse(line); // whole lines only
  }
  const newest = readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).flow_id);
  t.equal(newest.at(-1), 59, 'the newest event is in events.jsonl');
  // Reopening appends after what is there.
  const again = new FileEventSink(path, 1000, 2);
  again.emit(ev(60));
  again.close();
  t.equal(JSON.parse(readFileSync(path, 'utf8').trim().split('\n').at(-1)!).flow_id, 60);
});

t.test('/v1/events filters', async (t) => {
  const all = [
    ev(1, { event_type: 'allocation', gatehouse: { user: 'alice' } }),
    ev(2, { alert: { action: 'blocked', signature_id: 'nightingale', signature: 'x', severity: 1 }, gatehouse: { user: 'bob' } }),
    ev(3, { event_type: 'flow_blocked', gatehouse: { user: 'alice', reason: 'keys_missing' }, dest_ip: '198.51.100.7' }),
  ];
  const q = (s: string) => filterEvents(all, new URLSearchParams(s)).map((e) => e.flow_id);
  t.same(q(''), [1, 2, 3]);
  t.same(q('event_type=alert,flow_blocked'), [2, 3]);
  t.same(q('user=alice'), [1, 3]);
  t.same(q('signature_id=nightingale'), [2]);
  t.same(q('reason=keys_missing'), [3]);
  t.same(q('dest_ip=198.51.100.7'), [3]);
  t.same(q('flow_id=2'), [2]);
  t.same(q('limit=2'), [2, 3], 'the newest, in order');
  t.same(q('since=2026-11-22T10:00:02Z'), [2, 3]);
});

t.test('the in-memory view keeps the newest events, oldest first', async (t) => {
  const { MemoryEventSink } = await import('../../../src/events/eve.js');
  const m = new MemoryEventSink(3);
  for (let i = 1; i <= 5; i++) m.emit(ev(i));
  t.same(
    m.events.map((e) => e.flow_id),
    [3, 4, 5],
  );
});

t.test('file writes are queued and written asynchronously after the turn', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-eve-'));
  const path = join(dir, 'events.jsonl');
  const sink = new FileEventSink(path);
  sink.emit(ev(1));
  sink.emit(ev(2));
  t.equal(readFileSync(path, 'utf8'), '', 'not written on the emitting turn');
  await sink.drained();
  t.same(
    readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).flow_id),
    [1, 2],
    'on disk once the queue drains',
  );
  sink.close();
});

t.test('eveTimestamp: the cached second prefix gives what Date.toISOString gives, for every kind of time', async (t) => {
  const ref = (ms: number) => `${new Date(ms).toISOString().slice(0, 23)}000+0000`;
  const xs = [0, 999, 1000, 1500.7, -1, -1000.5, -999, Date.UTC(2026, 10, 22, 10, 0, 0, 999), 1796320753942.25, 253402300799999];
  for (let i = 0; i < 20000; i++) xs.push(Math.random() * 4e12 - 1e12);
  // Bursts inside one second and across its boundary (the cache is per second).
  for (let i = 0; i < 3000; i++) xs.push(Date.UTC(2026, 10, 22, 10, 0, 0) - 700 + i * 0.5);
  const bad = xs.filter((x) => eveTimestamp(x) !== ref(x));
  t.same(bad.slice(0, 5), [], `${xs.length} times`);
  t.equal(eveTimestamp(Date.UTC(2026, 10, 22, 10, 0, 0, 5)), '2026-11-22T10:00:00.005000+0000');
  t.throws(() => eveTimestamp(NaN), RangeError, 'an invalid time throws, as Date does');
});

t.test('the byte ring (MemoryEventSink bytes) keeps the newest events, whole and in order, within both bounds', async (t) => {
  const { MemoryEventSink, FanoutEventSink } = await import('../../../src/events/eve.js');
  let seed = 99;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
  for (const [max, bytes] of [
    [3, 4096],
    [50, 3000],
    [1000, 5000],
    [10, 1 << 16],
  ] as const) {
    const m = new MemoryEventSink(max, 4, { bytes });
    const sent: EveEvent[] = [];
    let bad = 0;
    for (let i = 1; i <= 3000; i++) {
      // Sizes from a few bytes to ~600, with some non-ASCII text (UTF-8 of 2 and 3 bytes).
      const e = ev(i, { note: 'é€x'.repeat(rnd(200)) } as Partial<EveEvent>);
      sent.push(e);
      if (i % 2 === 0) m.emit(e);
      else m.emitJson(e, JSON.stringify(e));
      if (i % 97 !== 0 && i !== 3000) continue;
      const got = m.events;
      const want = sent.slice(sent.length - got.length);
      if (JSON.stringify(got) !== JSON.stringify(want)) bad++;
      const used = got.reduce((n, x) => n + Buffer.byteLength(JSON.stringify(x)), 0);
      if (got.length > max || used > bytes) bad++;
      // Not needlessly short: the ring drops only what a new entry overlaps.
      const longest = Math.max(...sent.map((x) => Buffer.byteLength(JSON.stringify(x))));
      if (got.length < Math.min(max, Math.floor(bytes / longest) - 1)) bad++;
    }
    t.equal(bad, 0, `max ${max}, ${bytes} bytes: always the newest events, whole, within both bounds`);
  }
  // A text larger than the whole ring is not kept; the others are.
  const small = new MemoryEventSink(10, 4, { bytes: 300 });
  small.emit(ev(1));
  small.emit(ev(2, { note: 'x'.repeat(400) } as Partial<EveEvent>));
  small.emit(ev(3));
  t.same(
    small.events.map((e) => e.flow_id),
    [1, 3],
  );
  // An event JSON cannot carry is not kept, and does not stop the live listeners.
  const seen: unknown[] = [];
  small.subscribe((e) => seen.push(e.flow_id));
  small.emit(ev(4, { n: 1n } as unknown as Partial<EveEvent>));
  t.same(seen, [4]);
  t.same(
    small.events.map((e) => e.flow_id),
    [1, 3],
  );
  // The fan-out stringifies once and hands the text to the sinks that take it.
  const a = new MemoryEventSink(10, 4, { bytes: 4096 });
  const b = new MemoryEventSink(10);
  let calls = 0;
  const counting = {
    emit: () => {},
    emitJson: (_e: EveEvent, json: string) => void ((calls += 1), t.equal(JSON.parse(json).flow_id, 7)),
    close: () => {},
  };
  new FanoutEventSink([a, b, counting], undefined, 'gw-1').emit(ev(7));
  t.equal(calls, 1);
  t.same(a.events[0], { ...ev(7), host: 'gw-1' }, 'the host is in the text the byte ring keeps');
  t.equal(b.events[0]!.flow_id, 7, 'a sink without emitJson gets emit()');
});
