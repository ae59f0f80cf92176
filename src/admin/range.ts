/**
 * HTTP Range requests for the dashboard's recordings (RFC 9110 §14): media elements ask
 * for `bytes=N-` or `bytes=N-M` to seek. One range is served as 206 with Content-Range
 * (§14.4). RFC 9110 §14.2 lets a server ignore Range, so anything but a single byte
 * range is answered with the whole
 * representation (200). A range starting at or past the end is 416 with `bytes *\/SIZE`
 * (§15.5.17).
 */
export type RangeResult = { start: number; end: number } | 'unsatisfiable' | null;

export function parseRange(header: string | undefined, size: number, ifRange?: string): RangeResult {
  if (typeof header !== 'string') return null;
  // §13.1.5: a Range under If-Range applies only when the validator matches the current
  // representation; these files are sent without ETag or Last-Modified, so none can
  // match (a file still being written may have changed): the whole file.
  if (ifRange !== undefined) return null;
  // §14.1.2: ranges-specifier = range-unit "=" range-set; the unit is case-insensitive.
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return null; // another unit, several ranges or a malformed header: ignored (§14.2)
  const [, a, b] = m;
  if (a === '' && b === '') return null;
  if (a === '') {
    // suffix-range (§14.1.2): the last N bytes.
    const n = Number(b);
    if (n === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  // Digits only, so Number() is finite or Infinity: a first-pos beyond any size is
  // unsatisfiable and a last-pos beyond it is clamped (§14.1.2), however many digits.
  const start = Number(a);
  let end = b === '' ? Infinity : Number(b);
  if (end < start) return null; // last-pos < first-pos: invalid (§14.1.2), ignored (§14.2)
  if (start >= size) return 'unsatisfiable';
  if (end >= size) end = size - 1;
  return { start, end };
}
