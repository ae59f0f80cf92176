/**
 * Strict base64 checks (RFC 4648): the one place the core's parsers of credentials,
 * challenges and tokens say what base64 text they accept. Nothing here decodes leniently:
 * Node's Buffer.from(s, 'base64') skips characters outside the alphabet, so text is
 * checked before it is decoded.
 */

/** RFC 4648 §4 alphabet, then at most two `=` of padding. */
const B64 = /^[A-Za-z0-9+/]+={0,2}$/;
/** RFC 4648 §5 alphabet (base64url), no padding (RFC 7515 §2). */
const B64URL = /^[A-Za-z0-9_-]*$/;

/**
 * Whether `s` has the shape of padded base64 (RFC 4648 §4): non-empty, the alphabet, at
 * most two `=` at the end, a multiple of 4 characters. No canonical check (strictBase64).
 */
export function isPaddedBase64(s: string): boolean {
  return s.length > 0 && s.length % 4 === 0 && B64.test(s);
}

/**
 * Canonical RFC 4648 §4 base64 (padded, no whitespace: re-encoding gives the same text)
 * of at most `maxBytes` bytes, or null. The length is bounded before anything is decoded.
 */
export function strictBase64(s: string, maxBytes: number): Buffer | null {
  if (s.length > Math.ceil(maxBytes / 3) * 4 || !isPaddedBase64(s)) return null;
  const b = Buffer.from(s, 'base64');
  return b.length <= maxBytes && b.toString('base64') === s ? b : null;
}

/** Canonical base64 (RFC 4648 §4) of exactly `n` bytes, or null. */
export function base64OfBytes(s: string, n: number): Buffer | null {
  const b = strictBase64(s, n);
  return b && b.length === n ? b : null;
}

/** RFC 7515 §2 base64url without padding (RFC 4648 §5); null when not canonical. */
export function strictBase64url(s: string): Buffer | null {
  if (!B64URL.test(s) || s.length % 4 === 1) return null;
  const b = Buffer.from(s, 'base64url');
  // Canonical: re-encoding gives the same text (no stray low bits in the last character).
  return b.toString('base64url') === s ? b : null;
}
