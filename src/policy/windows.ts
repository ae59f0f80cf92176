/**
 * Calendar windows for quotas (issue 5, "data quota over a day, week or month") in a
 * configurable IANA time zone. A window runs from local midnight to local midnight, so
 * a day across a DST change is 23 or 25 hours long; weeks start on Monday (ISO 8601).
 */
export type Period = 'day' | 'week' | 'month';

interface Parts {
  y: number;
  m: number; // 1-12
  d: number;
  hh: number;
  mm: number;
  ss: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();
function fmt(tz: string): Intl.DateTimeFormat {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(tz, f);
  }
  return f;
}

/** Throws RangeError for an unknown time zone (used by validation). */
export function checkTimeZone(tz: string): void {
  fmt(tz);
}

function localParts(ms: number, tz: string): Parts {
  const p: Record<string, number> = {};
  for (const x of fmt(tz).formatToParts(new Date(ms))) if (x.type !== 'literal') p[x.type] = Number(x.value);
  return { y: p.year!, m: p.month!, d: p.day!, hh: p.hour!, mm: p.minute!, ss: p.second! };
}

/** Offset (local - UTC) in ms at instant ms. */
function offsetAt(ms: number, tz: string): number {
  const p = localParts(ms, tz);
  const asUtc = Date.UTC(p.y, p.m - 1, p.d, p.hh, p.mm, p.ss);
  return asUtc - Math.floor(ms / 1000) * 1000;
}

/**
 * The UTC instant of local wall time y-m-d 00:00 in tz. Where midnight does not exist
 * (a DST gap at midnight), the first instant after the gap.
 */
export function localMidnight(y: number, m: number, d: number, tz: string): number {
  const wall = Date.UTC(y, m - 1, d);
  // Two passes settle the offset on either side of a transition.
  let guess = wall - offsetAt(wall, tz);
  guess = wall - offsetAt(guess, tz);
  const p = localParts(guess, tz);
  if (p.y !== y || p.m !== m || p.d !== d) {
    // Landed on the previous day (gap): step forward to the first instant of day d.
    for (let t = guess; t < guess + 3 * 3_600_000; t += 60_000) {
      const q = localParts(t, tz);
      if (q.y === y && q.m === m && q.d === d) return t;
    }
  }
  return guess;
}

/** [start, end) of the window containing instant ms. */
export function windowOf(ms: number, period: Period, tz: string): { start: number; end: number } {
  const p = localParts(ms, tz);
  if (period === 'day') {
    const next = new Date(Date.UTC(p.y, p.m - 1, p.d + 1));
    return {
      start: localMidnight(p.y, p.m, p.d, tz),
      end: localMidnight(next.getUTCFullYear(), next.getUTCMonth() + 1, next.getUTCDate(), tz),
    };
  }
  if (period === 'week') {
    const dow = (new Date(Date.UTC(p.y, p.m - 1, p.d)).getUTCDay() + 6) % 7; // Monday = 0
    const s = new Date(Date.UTC(p.y, p.m - 1, p.d - dow));
    const e = new Date(Date.UTC(p.y, p.m - 1, p.d - dow + 7));
    return {
      start: localMidnight(s.getUTCFullYear(), s.getUTCMonth() + 1, s.getUTCDate(), tz),
      end: localMidnight(e.getUTCFullYear(), e.getUTCMonth() + 1, e.getUTCDate(), tz),
    };
  }
  const e = new Date(Date.UTC(p.y, p.m, 1));
  return { start: localMidnight(p.y, p.m, 1, tz), end: localMidnight(e.getUTCFullYear(), e.getUTCMonth() + 1, 1, tz) };
}

/** A stable key naming the window (for the store): e.g. day:2026-11-22, week:2026-11-16, month:2026-11. */
export function windowKey(ms: number, period: Period, tz: string): string {
  const { start } = windowOf(ms, period, tz);
  const p = localParts(start, tz);
  const pad = (n: number) => String(n).padStart(2, '0');
  return period === 'month' ? `month:${p.y}-${pad(p.m)}` : `${period}:${p.y}-${pad(p.m)}-${pad(p.d)}`;
}
