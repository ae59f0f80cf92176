/**
 * Certificate chains of `Gatehouse-Cert` logins (core.md §5): built certificate by
 * certificate from the leaf to a certificate in core.trust.roots, following the path
 * validation of RFC 5280 §6.1 where it applies to a client certificate:
 *
 * - each certificate's issuer is the next one's subject and its signature verifies with
 *   the next one's key (§6.1.3 (a)(1), (a)(4)); the chain may end with the root itself
 *   (the configured certificate or another with its subject and key: the trust anchor is
 *   the configured one, RFC 5280 §6.1.1 (d)); nothing else may follow the root it reaches;
 * - each certificate below the root is signed with SHA-256 or longer (RSA, RSA-PSS,
 *   ECDSA) or EdDSA: MD5 and SHA-1 signatures are refused (checkSignatureAlgorithm);
 * - every issuing certificate (intermediates and the root) has a key that cannot be
 *   broken to forge what it signs: RSA of 2048 bits or more, EC on P-256, P-384 or P-521,
 *   Ed25519 or Ed448 (checkIssuerKey; the leaf's own key is checked in cert-login.ts);
 * - each certificate, the root included, is valid now: notBefore <= now <= notAfter
 *   (§4.1.2.5: both bounds inclusive; §6.1.3 (a)(2));
 * - every issuing certificate (intermediates and the root) has basicConstraints cA=TRUE
 *   (§4.2.1.9, §6.1.4 (k)), its pathLenConstraint bounds the intermediates below it
 *   (§6.1.4 (l), (m); self-issued intermediates are counted too: stricter than the RFC),
 *   and its keyUsage, when present, has keyCertSign (§4.2.1.3, §6.1.4 (n));
 * - the leaf's keyUsage, when present, has digitalSignature (§4.2.1.3), and its
 *   extendedKeyUsage, when present, has id-kp-clientAuth (§4.2.1.12; anyExtendedKeyUsage
 *   alone is not enough: "applications ... MAY reject certificates that include the
 *   anyExtendedKeyUsage OID but not the particular OID expected");
 * - a critical extension this code does not process refuses the certificate (§4.2);
 * - revocation by the CRLs of core.trust.crls (src/core/x509-crl.ts, §6.3);
 * - a trust root itself is not accepted as a client certificate.
 *
 * Failures are ChainError with a reason and a message naming the rule and the
 * certificate's position (never a certificate dump).
 */
import 'reflect-metadata'; // required by @peculiar/x509 (tsyringe)
import { X509Certificate as NodeCert, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { pemBlocks } from '../util/pem.js';
import { MAX_CHAIN } from './cert-header.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export type ChainFailure =
  | 'malformed'
  | 'too_long'
  | 'not_yet_valid'
  | 'expired'
  | 'not_ca'
  | 'path_len'
  | 'key_usage'
  | 'ext_key_usage'
  | 'unknown_critical'
  | 'issuer_mismatch'
  | 'bad_signature'
  | 'weak_signature'
  | 'weak_key'
  | 'no_root'
  | 'root_as_leaf'
  | 'extra_after_root'
  | 'revoked'
  | 'crl_unusable';

export class ChainError extends Error {
  constructor(
    readonly reason: ChainFailure,
    message: string,
  ) {
    super(message);
    this.name = 'ChainError';
  }
}

/** One certificate, parsed by OpenSSL (signatures, names) and by @peculiar/x509 (extensions). */
export interface ParsedCert {
  der: Buffer;
  node: NodeCert;
  px: x509.X509Certificate;
}

export function parseCert(der: Buffer): ParsedCert | null {
  try {
    const node = new NodeCert(der);
    // Only the DER itself: trailing bytes or a PEM wrapper are refused.
    if (!node.raw.equals(der)) return null;
    return { der, node, px: new x509.X509Certificate(new Uint8Array(der)) };
  } catch {
    return null;
  }
}

/** Every certificate of a PEM text (one or more `CERTIFICATE` blocks). */
export function parsePemCerts(pem: string): ParsedCert[] | null {
  const ders = pemBlocks(pem, 'CERTIFICATE');
  if (!ders.length) return null;
  const out: ParsedCert[] = [];
  for (const der of ders) {
    const c = parseCert(der);
    if (!c) return null;
    out.push(c);
  }
  return out;
}

const OID = {
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyId: '2.5.29.14',
  authorityKeyId: '2.5.29.35',
  clientAuth: '1.3.6.1.5.5.7.3.2',
};
/** The extensions processed here (or harmless to process by ignoring): RFC 5280 §4.2. */
const UNDERSTOOD = new Set([OID.basicConstraints, OID.keyUsage, OID.extKeyUsage, OID.subjectAltName, OID.subjectKeyId, OID.authorityKeyId]);

const posName = (i: number, n: number) => (i === 0 ? 'the leaf certificate' : i === n ? 'the trust root' : `chain certificate ${i + 1}`);

function checkTime(c: ParsedCert, nowMs: number, what: string): void {
  if (nowMs < c.px.notBefore.getTime()) throw new ChainError('not_yet_valid', `${what} is not valid yet`);
  if (nowMs > c.px.notAfter.getTime()) throw new ChainError('expired', `${what} has expired`);
}

function checkCritical(c: ParsedCert, what: string): void {
  for (const e of c.px.extensions) {
    if (e.critical && !UNDERSTOOD.has(e.type))
      throw new ChainError('unknown_critical', `${what} has a critical extension this core does not process (${e.type})`);
  }
}

function keyUsage(c: ParsedCert): number | null {
  const ku = c.px.getExtension(x509.KeyUsagesExtension);
  return ku ? ku.usages : null;
}

/** RFC 5280 §6.1.4 (k)-(n) for an issuing certificate with `below` intermediates under it. */
function checkIssuer(c: ParsedCert, below: number, what: string): void {
  const bc = c.px.getExtension(x509.BasicConstraintsExtension);
  if (!bc || !bc.ca) throw new ChainError('not_ca', `${what} issues certificates but is not a CA (basicConstraints cA)`);
  if (bc.pathLength !== undefined && below > bc.pathLength)
    throw new ChainError(
      'path_len',
      `${what} allows ${bc.pathLength} intermediate certificates below it (pathLenConstraint), the chain has ${below}`,
    );
  const ku = keyUsage(c);
  if (ku !== null && !(ku & x509.KeyUsageFlags.keyCertSign))
    throw new ChainError('key_usage', `${what} may not sign certificates (keyUsage keyCertSign)`);
}

function checkLeaf(c: ParsedCert): void {
  const ku = keyUsage(c);
  if (ku !== null && !(ku & x509.KeyUsageFlags.digitalSignature))
    throw new ChainError('key_usage', 'the leaf certificate may not sign (keyUsage digitalSignature)');
  const eku = c.px.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && !eku.usages.map(String).includes(OID.clientAuth))
    throw new ChainError('ext_key_usage', 'the leaf certificate is not for client authentication (extendedKeyUsage clientAuth)');
}

/** Whether `issuer`'s subject is `c`'s issuer name (OpenSSL's comparison, RFC 5280 §7.1). */
function namesIssuer(issuer: ParsedCert, c: ParsedCert): boolean {
  return issuer.node.subject === c.node.issuer;
}

/** The largest RSA modulus whose signatures are verified (bounded work per login). */
export const MAX_RSA_BITS = 8192;
/**
 * The shortest RSA modulus an issuing certificate may have: 1024-bit RSA has been
 * disallowed for signatures since 2013 (NIST SP 800-131A) and is within reach of a
 * well-funded attacker; whoever factors an intermediate's key issues any leaf they like.
 */
export const MIN_ISSUER_RSA_BITS = 2048;
const ISSUER_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);

/** An issuing certificate's key is strong enough to trust what it signs. */
function checkIssuerKey(c: ParsedCert, what: string): void {
  const k = c.node.publicKey;
  const t = k.asymmetricKeyType;
  const d = k.asymmetricKeyDetails ?? {};
  let ok = false;
  if (t === 'rsa' || t === 'rsa-pss') ok = (d.modulusLength ?? 0) >= MIN_ISSUER_RSA_BITS;
  else if (t === 'ec') ok = ISSUER_CURVES.has(String(d.namedCurve));
  else ok = t === 'ed25519' || t === 'ed448';
  if (!ok)
    throw new ChainError(
      'weak_key',
      `${what} signs with a key this core does not trust (RSA shorter than ${MIN_ISSUER_RSA_BITS} bits, or an unknown curve or type)`,
    );
}

function signedBy(c: ParsedCert, issuer: ParsedCert): boolean {
  try {
    const k = issuer.node.publicKey;
    if ((k.asymmetricKeyType === 'rsa' || k.asymmetricKeyType === 'rsa-pss') && (k.asymmetricKeyDetails?.modulusLength ?? 0) > MAX_RSA_BITS)
      return false;
    return c.node.verify(issuer.node.publicKey);
  } catch {
    return false;
  }
}

/**
 * The signature algorithms (RFC 5280 §4.1.1.2 signatureAlgorithm) whose certificate
 * signatures are verified: RSASSA-PKCS1-v1_5, RSASSA-PSS and ECDSA with SHA-256 or longer,
 * Ed25519, Ed448. MD5 (RFC 6151) and SHA-1 (RFC 9155) are refused: OpenSSL still verifies
 * them, and their chosen-prefix collisions let a CA's MD5 or SHA-1 signature over one
 * certificate be reused for another (a rogue CA).
 */
const STRONG_HASHES = new Set(['SHA-256', 'SHA-384', 'SHA-512']);
function checkSignatureAlgorithm(c: ParsedCert, what: string): void {
  let alg: { name?: unknown; hash?: { name?: unknown } };
  try {
    alg = c.px.signatureAlgorithm as typeof alg;
  } catch {
    alg = {};
  }
  const name = typeof alg.name === 'string' ? alg.name : '';
  const ok =
    name === 'Ed25519' ||
    name === 'Ed448' ||
    ((name === 'RSASSA-PKCS1-v1_5' || name === 'RSA-PSS' || name === 'ECDSA') && STRONG_HASHES.has(String(alg.hash?.name)));
  if (!ok) throw new ChainError('weak_signature', `${what} is signed with an algorithm this core does not accept (MD5, SHA-1 or unknown)`);
}

/** Revocation (src/core/x509-crl.ts): throws ChainError('revoked' | 'crl_unusable'). */
export interface RevocationChecker {
  check(cert: ParsedCert, issuer: ParsedCert, nowMs: number, what: string): Promise<void>;
}

export interface ValidatedChain {
  leaf: ParsedCert;
  /** Leaf … root (the root is the trust root reached, whether or not the client sent it). */
  path: ParsedCert[];
}

/**
 * Validates `chain` (leaf first) against `roots` at `nowMs`; the leaf's signature over the
 * challenge is checked by the caller (src/core/cert-login.ts).
 */
export async function validateChain(
  chain: ParsedCert[],
  roots: ParsedCert[],
  nowMs: number,
  revocation: RevocationChecker | null = null,
): Promise<ValidatedChain> {
  if (!chain.length) throw new ChainError('malformed', 'the chain is empty');
  if (chain.length > MAX_CHAIN) throw new ChainError('too_long', `the chain has more than ${MAX_CHAIN} certificates`);
  const isRoot = (c: ParsedCert) => roots.some((r) => r.der.equals(c.der));
  const leaf = chain[0]!;
  if (isRoot(leaf)) throw new ChainError('root_as_leaf', 'a trust root is not a client certificate');
  const path: ParsedCert[] = [leaf];
  for (let i = 0; ; i++) {
    const c = path[i]!;
    const what = i === 0 ? 'the leaf certificate' : `chain certificate ${i + 1}`;
    checkTime(c, nowMs, what);
    checkCritical(c, what);
    if (i === 0) checkLeaf(c);
    checkSignatureAlgorithm(c, what);
    // Reached a trust root: c is issued (name and signature) by one of core.trust.roots.
    const anchor = roots.find((r) => namesIssuer(r, c) && signedBy(c, r));
    if (anchor) {
      const rest = chain.slice(i + 1);
      // The chain may end with the root (core.md §5): ours, or another certificate of it (same subject and key, e.g. re-issued).
      const sameRoot = (c: ParsedCert) =>
        c.der.equals(anchor.der) || (c.node.subject === anchor.node.subject && c.node.publicKey.equals(anchor.node.publicKey));
      if (rest.length > 1 || (rest.length === 1 && !sameRoot(rest[0]!)))
        throw new ChainError('extra_after_root', 'the chain goes on past the trust root it reaches');
      checkTime(anchor, nowMs, 'the trust root');
      checkCritical(anchor, 'the trust root');
      checkIssuer(anchor, i, 'the trust root');
      checkIssuerKey(anchor, 'the trust root');
      path.push(anchor);
      break;
    }
    const next = chain[i + 1];
    if (!next) throw new ChainError('no_root', 'the chain does not lead to a trusted root (core.trust.roots)');
    const nextWhat = isRoot(next) ? 'the trust root' : `chain certificate ${i + 2}`;
    if (!namesIssuer(next, c)) throw new ChainError('issuer_mismatch', `${what} is not issued by ${nextWhat} (issuer and subject differ)`);
    if (!signedBy(c, next)) throw new ChainError('bad_signature', `the signature of ${what} does not verify with ${nextWhat}'s key`);
    if (isRoot(next)) throw new ChainError('no_root', 'the chain does not lead to a trusted root (core.trust.roots)'); // unreachable: found above
    checkIssuer(next, i, nextWhat);
    checkIssuerKey(next, nextWhat);
    path.push(next);
  }
  if (revocation) {
    // RFC 5280 §6.3: each certificate below the root, by its issuer's CRL.
    for (let i = 0; i < path.length - 1; i++) await revocation.check(path[i]!, path[i + 1]!, nowMs, posName(i, path.length - 1));
  }
  return { leaf, path };
}
