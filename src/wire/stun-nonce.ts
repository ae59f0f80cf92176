/**
 * The RFC 8489 §9.2 nonce cookie and its security-feature bits (§18.1): how a NONCE says
 * which features the server offers. Shared by the TURN server and STUN clients.
 */

// RFC 8489 §9.2: nonce cookie, then 24 bits of security features as 4 base64 chars.
export const NONCE_COOKIE = 'obMatJos2';
/**
 * RFC 8489 §18.1 "STUN Security Features": bit 0 = Password algorithms, bit 1 = Username
 * anonymity; bit 0 is the most significant bit of the 24-bit field. We offer password
 * algorithms only (no USERHASH support), so the field is 0x800000 = "gAAA".
 */
export const FEATURE_PASSWORD_ALGORITHMS = 0x800000;
export const FEATURE_USERNAME_ANONYMITY = 0x400000;

export function encodeFeatures(bits: number): string {
  const b = Buffer.from([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255]);
  return b.toString('base64');
}

/** Security features announced by a nonce, or null when it has no cookie. */
export function nonceFeatures(nonce: string): number | null {
  if (!nonce.startsWith(NONCE_COOKIE) || nonce.length < NONCE_COOKIE.length + 4) return null;
  const b = Buffer.from(nonce.slice(NONCE_COOKIE.length, NONCE_COOKIE.length + 4), 'base64');
  if (b.length !== 3) return null;
  return (b[0]! << 16) | (b[1]! << 8) | b[2]!;
}
