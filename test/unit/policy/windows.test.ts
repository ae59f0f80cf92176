import t from 'tap';
import { windowOf, windowKey, localMidnight } from '../../../src/policy/windows.js';

const H = 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();

t.test('day windows in UTC and in a zone', async (t) => {
  const w = windowOf(Date.UTC(2026, 10, 22, 15, 0), 'day', 'UTC');
  t.equal(iso(w.start), '2026-11-22T00:00:00.000Z');
  t.equal(iso(w.end), '2026-11-23T00:00:00.000Z');
  // 23:30 UTC on the 22nd is already the 23rd in Berlin (UTC+1 in November).
  const b = windowOf(Date.UTC(2026, 10, 22, 23, 30), 'day', 'Europe/Berlin');
  t.equal(iso(b.start), '2026-11-22T23:00:00.000Z');
  t.equal(windowKey(Date.UTC(2026, 10, 22, 23, 30), 'day', 'Europe/Berlin'), 'day:2026-11-23');
});

t.test('DST: the spring-forward day is 23 h, the fall-back day 25 h', async (t) => {
  const spring = windowOf(Date.UTC(2026, 2, 29, 12), 'day', 'Europe/Berlin'); // 2026-03-29
  t.equal(spring.end - spring.start, 23 * H);
  const fall = windowOf(Date.UTC(2026, 9, 25, 12), 'day', 'Europe/Berlin'); // 2026-10-25
  t.equal(fall.end - fall.start, 25 * H);
  const ny = windowOf(Date.UTC(2026, 2, 8, 12), 'day', 'America/New_York');
  t.equal(ny.end - ny.start, 23 * H);
});

t.test('midnight inside a DST gap moves to the first instant of the day', async (t) => {
  // America/Santiago springs forward at 24:00 local: midnight does not exist on 2026-09-06.
  const m = localMidnight(2026, 9, 6, 'America/Santiago');
  const local = new Intl.DateTimeFormat('en-CA', {
    timeZone: 'America/Santiago',
    hourCycle: 'h23',
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
  }).format(new Date(m));
  t.match(local, /^2026-09-06, 01/);
});

t.test('weeks start Monday; months run to the 1st', async (t) => {
  const w = windowOf(Date.UTC(2026, 10, 22, 12), 'week', 'UTC'); // Sunday
  t.equal(iso(w.start), '2026-11-16T00:00:00.000Z');
  t.equal(iso(w.end), '2026-11-23T00:00:00.000Z');
  const mo = windowOf(Date.UTC(2026, 11, 31, 23, 59), 'month', 'UTC');
  t.equal(iso(mo.start), '2026-12-01T00:00:00.000Z');
  t.equal(iso(mo.end), '2027-01-01T00:00:00.000Z');
  t.equal(windowKey(Date.UTC(2026, 1, 28), 'month', 'UTC'), 'month:2026-02');
  // A boundary instant belongs to the new window.
  t.equal(windowOf(Date.UTC(2026, 10, 23), 'week', 'UTC').start, Date.UTC(2026, 10, 23));
  // A week that crosses the Berlin fall-back is 7 days + 1 h.
  const wk = windowOf(Date.UTC(2026, 9, 22), 'week', 'Europe/Berlin');
  t.equal(wk.end - wk.start, 7 * 24 * H + H);
});
