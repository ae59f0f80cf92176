/**
 * Compact JWS with ES256 only (authentication transfer tickets, core.md §6).
 *
 * - Serialisation: RFC 7515 §7.1, `BASE64URL(header) '.' BASE64URL(payload) '.'
 *   BASE64URL(signature)`, the JWS Signing Input being the ASCII of the first two parts and
 *   the dot (RFC 7515 §2, §5.1 step 5). base64url without padding (RFC 7515 §2, RFC 4648 §5);
 *   anything else in a segment (padding, `+`, `/`, whitespace) is refused.
 * - Algorithm: ES256 (RFC 7518 §3.4): ECDSA P-256 with SHA-256, the signature being the
 *   64 octets R || S, each a 32-octet big-endian integer, NOT the DER of RFC 3279. The
 *   verifier takes the key from its own configuration (core.peers), never from the
 *   header, and accepts `alg` = `ES256` exactly: no `none` (RFC 7518 §3.6), no HS256
 *   (a public key used as an HMAC secret, the classic algorithm confusion), no other
 *   curve.
 * - Header: exactly `{"alg":"ES256","typ":"JWT"}` when signing. When verifying, the only
 *   members allowed are `alg` and `typ` (`typ`, if present, `JWT`, RFC 7519 §5.1): a
 *   `crit` (RFC 7515 §4.1.11), `jwk`, `jku`, `x5u`, `x5c`, `kid` or any other member
 *   refuses the JWS (fail closed: nothing here would honour them).
 * - JSON: header and payload are UTF-8 (refused when not valid UTF-8) JSON objects
 *   (RFC 7515 §5.2 step 3); a duplicate member name refuses them (RFC 7515 §4 and
 *   RFC 7519 §4 allow refusing, which this does rather than taking the last):
 *   src/util/strict-json.ts.
 *
 * Nothing here logs; error messages never repeat the token.
 */
import { createPublicKey, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { strictBase64url } from '../util/base64.js';
import { isP256 } from '../util/p256.js';
import { parseStrictObject } from '../util/strict-json.js';

/** The longest compact JWS accepted (a transfer ticket is ~500 characters). */
export const MAX_JWS_CHARS = 4096;

export const JWS_HEADER = { alg: 'ES256', typ: 'JWT' } as const;

/** RFC 7518 §3.4: R and S, 32 octets each for P-256. */
const ES256_SIG_BYTES = 64;

export class JwsError extends Error {
  constructor(
    /** Not a compact JWS of two JSON objects and a signature. */
    readonly reason: 'malformed',
    message: string,
  ) {
    super(message);
    this.name = 'JwsError';
  }
}

/** Signs `payload` with an ECDSA P-256 private key: a compact ES256 JWS. */
export function signEs256(payload: Record<string, unknown>, privateKey: KeyObject): string {
  if (!isP256(privateKey)) throw new Error('ES256 needs an ECDSA P-256 key (RFC 7518 §3.4)');
  const input =
    Buffer.from(JSON.stringify(JWS_HEADER), 'utf8').toString('base64url') +
    '.' +
    Buffer.from(JSON.stringify(payload), 'utf8').toString('base64url');
  // RFC 7518 §3.4: the JWS Signature is R || S (ieee-p1363), not DER.
  const sig = cryptoSign('sha256', Buffer.from(input, 'ascii'), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

export interface DecodedJws {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  /** The JWS Signing Input, ASCII (RFC 7515 §2). */
  signingInput: Buffer;
  signature: Buffer;
}

/**
 * Splits and parses a compact JWS without verifying it or judging its header (the caller
 * needs the payload's claims, e.g. the challenge, to decide which key to verify with and
 * what to spend, even for a ticket it will refuse). Throws JwsError `malformed`.
 */
export function decodeJws(jws: string): DecodedJws {
  if (typeof jws !== 'string' || jws.length > MAX_JWS_CHARS) throw new JwsError('malformed', 'the ticket is not a compact JWS');
  const parts = jws.split('.');
  // RFC 7515 §7.1: exactly three parts (a JWE, RFC 7516 §7.1, has five).
  if (parts.length !== 3) throw new JwsError('malformed', 'the ticket is not a compact JWS (three base64url parts)');
  const [h, p, s] = parts as [string, string, string];
  const hb = strictBase64url(h);
  const pb = strictBase64url(p);
  const sb = strictBase64url(s);
  if (!hb || !pb || !sb || !hb.length || !pb.length) throw new JwsError('malformed', 'the ticket is not base64url (RFC 7515 §2)');
  const header = parseStrictObject(hb);
  const payload = parseStrictObject(pb);
  if (!header || !payload) throw new JwsError('malformed', 'the ticket header or payload is not one JSON object');
  return { header, payload, signingInput: Buffer.from(`${h}.${p}`, 'ascii'), signature: sb };
}

/**
 * Why this header is refused, or null: `alg` exactly ES256 (RFC 7515 §4.1.1, RFC 7518
 * §3.1: not `none`, not HS256), `typ` absent or `JWT` (RFC 7519 §5.1), no other member
 * (so no `crit`, RFC 7515 §4.1.11, and no key named by the header, §4.1.2-§4.1.6).
 */
export function headerProblem(header: Record<string, unknown>): string | null {
  if (header.alg !== 'ES256') return 'the ticket alg is not ES256';
  for (const k of Object.keys(header)) {
    if (k !== 'alg' && k !== 'typ') return `the ticket header has ${JSON.stringify(k.slice(0, 32))}, which is not accepted`;
  }
  if ('typ' in header && header.typ !== 'JWT') return 'the ticket header typ is not JWT';
  return null;
}

/** Whether `d`'s ES256 signature verifies with this P-256 public key (RFC 7518 §3.4). */
export function verifyEs256(d: DecodedJws, publicKey: KeyObject): boolean {
  if (headerProblem(d.header) !== null) return false;
  if (!isP256(publicKey)) return false;
  // RFC 7518 §3.4: "The JWS Signature value MUST be a 64-octet sequence"; a DER signature is refused.
  if (d.signature.length !== ES256_SIG_BYTES) return false;
  try {
    return cryptoVerify('sha256', d.signingInput, { key: publicKey, dsaEncoding: 'ieee-p1363' }, d.signature);
  } catch {
    return false;
  }
}

/** The public key of a PEM certificate or SPKI (tests, tools). */
export function publicKeyOf(pem: string): KeyObject {
  return createPublicKey(pem);
}
