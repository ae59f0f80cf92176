/**
 * `Gatehouse-Cert` login (core.md §5, seed 004 FIG. 5): offered only when core.trust.roots
 * is set, as `WWW-Authenticate: Gatehouse-Cert realm="REALM"` (RFC 9110 §11.6.1; the
 * realm is config `realm`). The client gets a challenge from `GET /v1/auth/challenge`
 * (src/core/login.ts), signs ASCII `gatehouse-core cert-auth v1` || the 24 challenge bytes
 * with its leaf key and retries `POST /v1/login` with
 *
 *   Authorization: Gatehouse-Cert challenge="...", signature="base64", chain="base64(DER),..."
 *
 * (parsed strictly: src/core/cert-header.ts). Checks, in this order:
 *
 * 1. the credentials parse, else `401 unauthenticated`;
 * 2. the challenge is one this core issued, unexpired, unused and issued to this source
 *    address (src/core/challenges.ts), else `401 replayed`;
 * 3. every chain element is a DER certificate, the leaf key is ECDSA P-256 or RSA of 2048
 *    to 8192 bits, and the signature verifies with it: ECDSA P-256/SHA-256 with a DER
 *    (RFC 3279 §2.2.3 Ecdsa-Sig-Value) signature, or RSASSA-PSS (RFC 8017 §8.1) with SHA-256,
 *    MGF1-SHA-256 and a 32-byte salt; else `401 untrusted` (core.md §5 lists the signature
 *    with the chain under "else 401 untrusted"), and the challenge stays unspent;
 * 4. the signature verified: the challenge is spent (core.md §5), whatever follows;
 * 5. the chain leads to core.trust.roots, each certificate valid now, with the constraints
 *    and CRLs of src/core/x509-chain.ts and src/core/x509-crl.ts, else `401 untrusted`;
 * 6. the user is the leaf's subject CN (exactly one CN, 1 to 256 characters, no control
 *    character, else `401 untrusted`). With core.directory, it must name a user there
 *    (else `401 unauthenticated`: the certificate is good but names nobody here), and the
 *    groups and organisation are the directory's (an outage: 503 `unavailable`). Without a
 *    directory, the groups are those of the gateway's user of that name when there is one,
 *    else none (a certificate from a trusted CA is enough to be a user; policy selects on
 *    groups).
 *
 * Messages name the rule that failed and the certificate's position, never a certificate,
 * signature or key. Failures count toward the per-source limit and are `auth` events
 * (login.ts).
 */
import { constants, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { GatehouseError } from '../util/errors.js';
import { isP256 } from '../util/p256.js';
import type { CoreContext, CoreModule } from './director.js';
import { CoreError } from './errors.js';
import { addLoginMechanism, type LoginMechanism, type LoginSuccess } from './login.js';
import { CERT_SCHEME, certSignedBytes, parseCertAuthorization } from './cert-header.js';
import {
  ChainError,
  MAX_RSA_BITS,
  parseCert,
  parsePemCerts,
  validateChain,
  type ParsedCert,
  type RevocationChecker,
} from './x509-chain.js';
import { CrlStore } from './x509-crl.js';
import { isName, MAX_NAME } from './names.js';

/** The roots of core.trust.roots (each file one or more PEM certificates); E_CONFIG names the key of a bad file. */
export function loadTrustRoots(paths: string[]): ParsedCert[] {
  const out: ParsedCert[] = [];
  paths.forEach((path, i) => {
    const key = `core.trust.roots[${i}]`;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new GatehouseError('E_CONFIG', `${key}: ${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { key });
    }
    const certs = parsePemCerts(text);
    if (!certs) throw new GatehouseError('E_CONFIG', `${key}: ${path}: not a PEM certificate file`, { key });
    out.push(...certs);
  });
  return out;
}

/** The WWW-Authenticate challenge (RFC 9110 §11.6.1, quoted-string realm). */
export function certChallenge(realm: string): string {
  return `${CERT_SCHEME} realm="${realm.replace(/["\\]/g, '\\$&')}"`;
}

const REPLAYED: Record<'unknown' | 'spent' | 'expired' | 'elsewhere', string> = {
  unknown: 'the challenge is not one this core issued, or it expired and was forgotten',
  spent: 'the challenge was already used',
  expired: 'the challenge has expired',
  elsewhere: 'the challenge was issued to another address',
};

/** Whether `key` is a leaf key this login accepts (core.md §5: ECDSA P-256 or RSA). */
function leafKeyProblem(key: KeyObject): string | null {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (t === 'ec') return isP256(key) ? null : 'the leaf key is an EC key on a curve other than P-256';
  if (t === 'rsa' || t === 'rsa-pss') {
    const bits = d.modulusLength ?? 0;
    if (bits < 2048) return 'the leaf RSA key is shorter than 2048 bits';
    // Bounded work per answer: larger moduli cost much more to verify and are not used in practice.
    return bits <= MAX_RSA_BITS ? null : `the leaf RSA key is longer than ${MAX_RSA_BITS} bits`;
  }
  return 'the leaf key is neither ECDSA P-256 nor RSA';
}

/** core.md §5 signature check (ECDSA P-256 SHA-256 DER, or RSA-PSS SHA-256 salt 32). */
export function verifyCertSignature(key: KeyObject, challengeBytes: Buffer, signature: Buffer): boolean {
  const data = certSignedBytes(challengeBytes);
  try {
    if (key.asymmetricKeyType === 'ec') return cryptoVerify('sha256', data, { key, dsaEncoding: 'der' }, signature);
    return cryptoVerify('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
  } catch {
    return false;
  }
}

/** The leaf's first subject CN, for events (null when it has none or cannot be read). */
function leafCn(leaf: ParsedCert): string | null {
  try {
    return leaf.px.subjectName.getField('CN')[0] ?? null;
  } catch {
    return null;
  }
}

/** The user a verified leaf names: its one subject CN. */
export function leafUser(leaf: ParsedCert): string {
  const cns = leaf.px.subjectName.getField('CN');
  if (cns.length !== 1) throw new CoreError('untrusted', 'the leaf certificate must have exactly one subject CN (the user name)');
  const cn = cns[0]!.normalize('NFC');
  // src/core/names.ts: 1 to MAX_NAME characters, no C0, DEL or C1 control character.
  if (!isName(cn, { c1: true })) throw new CoreError('untrusted', 'the leaf certificate subject CN is not a user name');
  return cn;
}

export function certMechanism(core: CoreContext, roots: ParsedCert[], crls: RevocationChecker | null): LoginMechanism {
  const realm = core.cfg.realm;
  return {
    scheme: CERT_SCHEME,
    challenge: () => certChallenge(realm),
    async verify(ctx): Promise<LoginSuccess> {
      const p = parseCertAuthorization(ctx.req.headers.authorization);
      if (!p.ok) throw new CoreError('unauthenticated', `the Gatehouse-Cert credentials are malformed: ${p.problem}`);
      const { creds } = p;
      // Steps 2 to 4 run without an await: no other answer can spend the challenge between check and spend.
      const ch = core.challenges.check(creds.challenge, ctx.source);
      if (!ch.ok) throw new CoreError('replayed', REPLAYED[ch.reason]);
      const chain: ParsedCert[] = [];
      for (let i = 0; i < creds.chain.length; i++) {
        const c = parseCert(creds.chain[i]!);
        if (!c) throw new CoreError('untrusted', `chain element ${i + 1} is not a DER X.509 certificate`);
        chain.push(c);
      }
      let key: KeyObject;
      try {
        key = chain[0]!.node.publicKey;
      } catch {
        // An algorithm OpenSSL cannot read (RFC 5280 §4.1.2.7): a refusal like any other, counted and reported.
        throw new CoreError('untrusted', 'the leaf certificate key cannot be read (neither ECDSA P-256 nor RSA)');
      }
      const kp = leafKeyProblem(key);
      if (kp) throw new CoreError('untrusted', kp);
      if (!verifyCertSignature(key, ch.bytes, creds.signature))
        throw new CoreError('untrusted', "the signature does not verify with the leaf certificate's key over this challenge");
      core.challenges.spend(creds.challenge);
      // The auth event of a refusal from here on names the leaf's CN (login.ts reads `user`):
      // the key holder proved possession, the chain is what failed.
      const cn = (leafCn(chain[0]!) ?? '').slice(0, MAX_NAME);
      const named = (e: CoreError) => (cn ? Object.assign(e, { user: cn }) : e);
      try {
        await validateChain(chain, roots, core.clock.now(), crls);
      } catch (err) {
        if (err instanceof ChainError) throw named(new CoreError('untrusted', err.message));
        throw err;
      }
      const user = leafUser(chain[0]!);
      if (core.directory) {
        const u = await core.directory.user(user);
        if (!u) throw Object.assign(new CoreError('unauthenticated', 'the certificate subject names no user in the directory'), { user });
        return { user: u.name, groups: [...u.groups], ...(u.org !== undefined ? { org: u.org } : {}) };
      }
      const local = core.users.lookup(user);
      return { user, groups: local ? [...local.groups] : [] };
    },
  };
}

/** Registers Gatehouse-Cert when core.trust.roots is set (README "Identity" → "Certificates"). */
export const certLoginModule: CoreModule = (core) => {
  const { roots: rootPaths, crls: crlPaths } = core.cfg.core.trust;
  if (!rootPaths.length) {
    if (crlPaths.length)
      throw new GatehouseError('E_CONFIG', 'core.trust.crls: CRLs are set but core.trust.roots is empty (certificate login is off)', {
        key: 'core.trust.crls',
      });
    return;
  }
  const roots = loadTrustRoots(rootPaths);
  const crls = crlPaths.length ? new CrlStore(crlPaths, () => core.clock.now()) : null;
  addLoginMechanism(core, certMechanism(core, roots, crls));
};
