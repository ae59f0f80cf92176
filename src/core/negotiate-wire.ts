/**
 * The Negotiate auth-scheme on the wire (RFC 4559): the server's bare
 * `WWW-Authenticate: Negotiate` challenge (§4.1), the client's
 * `Authorization: Negotiate <base64 gssapi-data>` (§4.2), and the final
 * `WWW-Authenticate: Negotiate <base64 gssapi-data>` the 2xx carries for mutual
 * authentication (§4.2, the exchange of §5). The token is a GSSAPI initial context token
 * (RFC 2743 §3.1: tag 0x60) of SPNEGO (RFC 4178 §4.2) with Kerberos inside (RFC 4121).
 */

import { isPaddedBase64 } from '../util/base64.js';

/** The largest token accepted, in base64 characters (Windows' MaxTokenSize is 48000 bytes, 65535 at most). */
export const MAX_TOKEN_CHARS = 88_000;

export type NegotiateToken = { ok: true; token: string } | { ok: false; problem: string };

/**
 * The base64 gssapi-data of an Authorization header (RFC 4559 §4.2), or why it is refused.
 * The credentials are the auth-scheme then token68 (RFC 9110 §11.3, §11.4): the scheme is
 * case-insensitive; the token here must be strict base64 (RFC 4648 §4, padded) that
 * decodes to a GSSAPI initial token (RFC 2743 §3.1).
 */
export function parseNegotiate(header: string | undefined): NegotiateToken {
  if (!header) return { ok: false, problem: 'no Authorization header' };
  const m = /^[ \t]*negotiate(?:[ ]+([^ \t]*))?[ \t]*$/i.exec(header);
  if (!m) return { ok: false, problem: 'not the Negotiate scheme' };
  const b64 = m[1] ?? '';
  if (!b64) return { ok: false, problem: 'the Negotiate credentials carry no token' };
  if (b64.length > MAX_TOKEN_CHARS) return { ok: false, problem: 'the Negotiate token is too long' };
  if (!isPaddedBase64(b64)) return { ok: false, problem: 'the Negotiate token is not base64' };
  const raw = Buffer.from(b64, 'base64');
  // RFC 4559 §4.2 lets a Windows client without a ticket send NTLMSSP inside Negotiate
  // (MS-NLMP §2.2.1: signature "NTLMSSP\0"); only Kerberos is accepted here.
  if (raw.subarray(0, 8).equals(Buffer.from('NTLMSSP\0', 'latin1')))
    return { ok: false, problem: 'NTLM is not accepted: obtain a Kerberos ticket (kinit)' };
  // RFC 2743 §3.1: the initial context token is [APPLICATION 0] (0x60); SPNEGO's
  // negTokenResp (RFC 4178 §4.2.2, 0xa1) only follows a continued exchange, which one-leg
  // Kerberos never needs.
  if (raw[0] !== 0x60) return { ok: false, problem: 'the Negotiate token is not a GSSAPI initial context token' };
  return { ok: true, token: b64 };
}

/** RFC 4559 §4.2: the final leg (the Kerberos AP-REP, RFC 4120 §3.2.4, inside SPNEGO) on the 2xx, which the client verifies. */
export function negotiateResponseHeader(tokenB64: string | null | undefined): string {
  return tokenB64 ? `Negotiate ${tokenB64}` : 'Negotiate';
}

/**
 * A GSSAPI failure (gss_display_status text of MIT krb5 or Heimdal) as the reason the
 * client is told, and the core.md code: a replay (RFC 4120 §3.2.3 replay cache) is
 * `replayed`, everything else `unauthenticated`. The library's own text goes to the log
 * only (it names principals and key versions, never a key).
 */
export function classifyGssError(message: string): { code: 'replayed' | 'unauthenticated'; reason: string } {
  const m = message.toLowerCase();
  if (/replay/.test(m)) return { code: 'replayed', reason: 'this Kerberos authenticator was already used' };
  if (/expired/.test(m)) return { code: 'unauthenticated', reason: 'the Kerberos ticket has expired' };
  if (/skew/.test(m)) return { code: 'unauthenticated', reason: 'the Kerberos authenticator is outside the allowed clock skew' };
  if (/wrong principal|does not match server principal|not found in keytab|no key table entry|cannot find key|key version/.test(m))
    return { code: 'unauthenticated', reason: 'the Kerberos ticket is not for this service (or its key has changed)' };
  if (/integrity|decrypt|bad encryption|bad_integrity/.test(m))
    return { code: 'unauthenticated', reason: 'the Kerberos ticket could not be decrypted with this service key' };
  return { code: 'unauthenticated', reason: 'the Kerberos token was not accepted' };
}

/** A DER length at buf[i] (X.690 §8.1.3: short form, or long form of up to 3 bytes). */
function derLength(buf: Buffer, i: number): { len: number; next: number } | null {
  const b = buf[i];
  if (b === undefined) return null;
  if (b < 0x80) return { len: b, next: i + 1 };
  const n = b & 0x7f;
  if (n < 1 || n > 3 || i + 1 + n > buf.length) return null;
  let len = 0;
  for (let k = 0; k < n; k++) len = len * 256 + buf[i + 1 + k]!;
  return { len, next: i + 1 + n };
}

/**
 * The negState of a SPNEGO negTokenResp (RFC 4178 §4.2.2: [1] SEQUENCE { negState [0]
 * ENUMERATED { accept-completed(0), accept-incomplete(1), reject(2), request-mic(3) }
 * OPTIONAL, ... }); null when the token is not a negTokenResp or has no negState (a bare
 * Kerberos AP-REP, RFC 4121 §4.1).
 */
export function spnegoNegState(tokenB64: string): number | null {
  const buf = Buffer.from(tokenB64, 'base64');
  if (buf[0] !== 0xa1) return null;
  const outer = derLength(buf, 1);
  if (!outer || buf[outer.next] !== 0x30) return null;
  const seq = derLength(buf, outer.next + 1);
  if (!seq || buf[seq.next] !== 0xa0) return null;
  const field = derLength(buf, seq.next + 1);
  if (!field || buf[field.next] !== 0x0a || buf[field.next + 1] !== 0x01) return null;
  return buf[field.next + 2] ?? null;
}
