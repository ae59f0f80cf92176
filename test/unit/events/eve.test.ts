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
