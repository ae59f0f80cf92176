/**
 * The `Gatehouse-Cert` credentials of core.md §5, parsed strictly:
 *
 *   Authorization: Gatehouse-Cert challenge="...", signature="base64", chain="base64(DER),base64(DER),..."
 *
 * Grammar: RFC 9110 §11.4 `credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`,
 * §11.2 `auth-param = token BWS "=" BWS ( token / quoted-string )`, the list rule of §5.6.1
 * (elements separated by OWS "," OWS; a recipient ignores empty elements, §5.6.1.2), and
 * §5.6.4 quoted-string (qdtext and quoted-pair). The auth-scheme and parameter names are
 * case-insensitive (§11.1, §11.2); each parameter occurs once (§11.2: "each parameter name
 * MUST only occur once per challenge", applied to credentials too). The auth-params are
 * read by src/core/auth-params.ts with its RFC9110_SYNTAX (the grammar as written).
 *
 * Where the page is silent we fail closed: all three parameters are required, a parameter
 * this version does not define is refused, every value is canonical base64 (RFC 4648 §4,
 * padded, no whitespace: re-encoding gives the same text), the chain's elements are
 * separated by a bare ",", the challenge is exactly 24 bytes, and the sizes are bounded
 * (MAX_CERT_HEADER, MAX_CHAIN, MAX_CERT_BYTES) before anything is decoded.
 */
import { base64OfBytes, strictBase64 } from '../util/base64.js';
import { CHALLENGE_BYTES } from './challenges.js';
import { parseAuthParams } from './auth-params.js';

export const CERT_SCHEME = 'Gatehouse-Cert';
/** The longest Authorization read (Node's own header limit is 16 KiB in all). */
export const MAX_CERT_HEADER = 64 * 1024;
/** At most this many certificates in `chain` (leaf, intermediates, optionally the root). */
export const MAX_CHAIN = 8;
/** The largest DER certificate accepted. */
export const MAX_CERT_BYTES = 8192;
/** The largest signature (an RSA-8192 signature is 1024 bytes; ECDSA P-256 DER at most 72). */
export const MAX_SIGNATURE_BYTES = 1024;

export interface CertCredentials {
  /** The challenge as sent (base64 text, the ChallengeStore's key). */
  challenge: string;
  signature: Buffer;
  /** DER certificates, leaf first. */
  chain: Buffer[];
}

export type CertHeaderResult = { ok: true; creds: CertCredentials } | { ok: false; problem: string };

/** core.md §5 credentials from an Authorization value. Problems name the rule, never the value. */
export function parseCertAuthorization(header: string | undefined): CertHeaderResult {
  const bad = (problem: string): CertHeaderResult => ({ ok: false, problem });
  if (!header) return bad('no Authorization');
  if (header.length > MAX_CERT_HEADER) return bad('the Authorization is too long');
  // §11.4: auth-scheme 1*SP params; the scheme is case-insensitive (§11.1).
  const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) +/.exec(header);
  if (!m || m[1]!.toLowerCase() !== CERT_SCHEME.toLowerCase()) return bad('not Gatehouse-Cert credentials');
  const params = parseAuthParams(header.slice(m[0].length));
  if (!params) return bad('the credentials do not follow the auth-param syntax (RFC 9110 §11.2)');
  for (const k of params.keys()) if (k !== 'challenge' && k !== 'signature' && k !== 'chain') return bad(`unknown parameter ${k}`);
  const challenge = params.get('challenge');
  const sig = params.get('signature');
  const chain = params.get('chain');
  if (challenge === undefined || sig === undefined || chain === undefined) return bad('challenge, signature and chain are required');
  if (!base64OfBytes(challenge, CHALLENGE_BYTES)) return bad(`the challenge is not base64 of ${CHALLENGE_BYTES} bytes`);
  const signature = strictBase64(sig, MAX_SIGNATURE_BYTES);
  if (!signature) return bad('the signature is not base64');
  const parts = chain.split(',');
  if (parts.length > MAX_CHAIN) return bad(`the chain has more than ${MAX_CHAIN} certificates`);
  const ders: Buffer[] = [];
  for (const p of parts) {
    const d = strictBase64(p, MAX_CERT_BYTES);
    if (!d) return bad(`a chain element is not base64 DER of at most ${MAX_CERT_BYTES} bytes`);
    ders.push(d);
  }
  return { ok: true, creds: { challenge, signature, chain: ders } };
}

/** The Authorization value a client sends (src/cli/login.ts). */
export function formatCertAuthorization(challenge: string, signature: Buffer, chain: Buffer[]): string {
  return `${CERT_SCHEME} challenge="${challenge}", signature="${signature.toString('base64')}", chain="${chain.map((d) => d.toString('base64')).join(',')}"`;
}

/** core.md §5: the signed bytes, ASCII `gatehouse-core cert-auth v1` immediately followed by the 24 challenge bytes. */
export const CERT_AUTH_CONTEXT = Buffer.from('gatehouse-core cert-auth v1', 'ascii');
export function certSignedBytes(challengeBytes: Buffer): Buffer {
  return Buffer.concat([CERT_AUTH_CONTEXT, challengeBytes]);
}
