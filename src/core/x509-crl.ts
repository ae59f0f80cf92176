/**
 * Revocation for certificate login (core.md §5) by the CRL files of core.trust.crls
 * (PEM `X509 CRL` blocks or DER), RFC 5280 §5 and §6.3:
 *
 * - a CRL applies to the certificates whose issuer name is the CRL's issuer (§5.1.2.3):
 *   the same DER, or the same text after RFC 4518-style folding (case, runs of spaces;
 *   §7.1 compares names that way, so a CA that writes its name in another case or string
 *   type is still matched), or the CRL's authorityKeyIdentifier names the issuer's
 *   subjectKeyIdentifier (§5.2.1). Matching more CRLs is the fail-closed side: every
 *   matched CRL must still verify with the issuer's key;
 * - its signature must verify with the issuing certificate's key, and that certificate's
 *   keyUsage, when present, must have cRLSign (§6.3.3 (f), (g), §4.2.1.3);
 * - it must be current: thisUpdate <= now (5 minutes of clock skew allowed) and
 *   now <= nextUpdate (§5.1.2.4, §5.1.2.5). An
 *   out-of-date CRL (or one without nextUpdate, which §5.1.2.5 requires) fails closed:
 *   every certificate of that issuer is refused (`untrusted`) until a fresh CRL is in
 *   the file;
 * - a CRL whose issuer name matches but whose signature does not verify fails closed too;
 * - a delta CRL, or one with a critical extension not processed here (a partitioned or
 *   indirect CRL's issuingDistributionPoint or certificateIssuer), fails closed (§5.2);
 * - a certificate whose serial number is listed is revoked (§5.3.1's reason is not needed).
 * Issuers with no CRL configured are not checked for revocation.
 *
 * The files are read at start (an unreadable or malformed file is a configuration error
 * naming core.trust.crls[i]) and re-read when their size or modification time changes,
 * checked at most every RECHECK_MS: publishing a fresh CRL means replacing the file. A
 * file that becomes unreadable or malformed refuses every certificate login until fixed
 * (fail closed: its issuer is no longer known).
 */
import 'reflect-metadata'; // required by @peculiar/x509 (tsyringe)
import { readFileSync, statSync } from 'node:fs';
import * as x509 from '@peculiar/x509';
import { GatehouseError } from '../util/errors.js';
import { hasPemBegin, pemBlocks } from '../util/pem.js';
import { ChainError, type ParsedCert, type RevocationChecker } from './x509-chain.js';

/** A Name's text folded as RFC 5280 §7.1 / RFC 4518 §2 compare it: NFKC, case, spaces. */
function foldName(n: x509.Name): string {
  return n.toString().normalize('NFKC').toLowerCase().replace(/\s+/g, ' ').trim();
}

interface IssuerKeys {
  der: Buffer;
  folded: string;
  /** subjectKeyIdentifier (RFC 5280 §4.2.1.2), hex, or null. */
  ski: string | null;
}

function issuerKeys(issuer: ParsedCert): IssuerKeys {
  const ski = issuer.px.getExtension(x509.SubjectKeyIdentifierExtension);
  return {
    der: Buffer.from(issuer.px.subjectName.toArrayBuffer()),
    folded: foldName(issuer.px.subjectName),
    ski: ski ? ski.keyId.toLowerCase() : null,
  };
}

/** Whether this CRL is in the issuer's name (§5.1.2.3) or by its key (§5.2.1). */
function crlNamesIssuer(crl: x509.X509Crl, k: IssuerKeys): boolean {
  if (Buffer.from(crl.issuerName.toArrayBuffer()).equals(k.der) || foldName(crl.issuerName) === k.folded) return true;
  if (k.ski === null) return false;
  const aki = crl.getExtension(x509.AuthorityKeyIdentifierExtension);
  return typeof aki?.keyId === 'string' && aki.keyId.toLowerCase() === k.ski;
}

export const RECHECK_MS = 10_000;
/** A CRL made on a host whose clock is ahead by up to this much is already in force (thisUpdate only; nextUpdate is exact). */
export const THIS_UPDATE_SKEW_MS = 300_000;
/** The largest CRL file read. */
export const MAX_CRL_BYTES = 16 * 1024 * 1024;

interface CrlFile {
  path: string;
  key: string;
  stamp: string;
  crls: x509.X509Crl[] | null;
}

/** The CRLs of one file (PEM with one or more `X509 CRL` blocks, or one DER CRL). */
export function parseCrlFile(data: Buffer): x509.X509Crl[] {
  if (data.length > MAX_CRL_BYTES) throw new Error('the file is too large');
  const text = data.toString('latin1');
  if (hasPemBegin(text, 'X509 CRL')) {
    const ders = pemBlocks(text, 'X509 CRL');
    if (!ders.length) throw new Error('no X509 CRL block');
    return ders.map((der) => new x509.X509Crl(new Uint8Array(der)));
  }
  return [new x509.X509Crl(new Uint8Array(data))];
}

/** CRL extensions (RFC 5280 §5.2) and entry extensions (§5.3) a complete, direct CRL may carry. */
const CRL_EXTENSIONS = new Set(['2.5.29.20', '2.5.29.35']); // cRLNumber, authorityKeyIdentifier
const ENTRY_EXTENSIONS = new Set(['2.5.29.21', '2.5.29.24']); // reasonCode, invalidityDate
const DELTA_CRL_INDICATOR = '2.5.29.27';

/**
 * Why this CRL cannot be used as the complete CRL of its issuer, or null: a delta CRL
 * (§5.2.4) is not complete; a critical extension this code does not process (§5.2: "If a
 * CRL contains a critical extension that the application cannot process, then the
 * application MUST NOT use that CRL", e.g. a partitioned CRL's issuingDistributionPoint,
 * §5.2.5, or an indirect CRL's certificateIssuer entry extension, §5.3.3). Fail closed.
 */
export function crlExtensionProblem(crl: x509.X509Crl): string | null {
  for (const e of crl.extensions) {
    if (e.type === DELTA_CRL_INDICATOR) return 'is a delta CRL (a complete CRL is needed)';
    if (e.critical && !CRL_EXTENSIONS.has(e.type)) return `has a critical extension this core does not process (${e.type})`;
  }
  for (const entry of crl.entries) {
    for (const e of entry.extensions) {
      if (e.critical && !ENTRY_EXTENSIONS.has(e.type))
        return `has an entry with a critical extension this core does not process (${e.type})`;
    }
  }
  return null;
}

const stampOf = (path: string) => {
  const s = statSync(path);
  return `${s.size}:${s.mtimeMs}`;
};

export class CrlStore implements RevocationChecker {
  private readonly files: CrlFile[];
  private lastCheck = -Infinity;
  /** Signature results per CRL and issuer certificate (a CRL is verified once per issuer). */
  private readonly verified = new WeakMap<x509.X509Crl, Map<string, boolean>>();
  /** crlExtensionProblem() per CRL (it walks every entry once). */
  private readonly extProblem = new WeakMap<x509.X509Crl, string | null>();

  /** Reads every file now; throws GatehouseError E_CONFIG naming the key of a bad one. */
  constructor(
    paths: string[],
    private readonly now: () => number,
  ) {
    this.files = paths.map((path, i) => {
      const key = `core.trust.crls[${i}]`;
      try {
        const stamp = stampOf(path);
        return { path, key, stamp, crls: parseCrlFile(readFileSync(path)) };
      } catch (err) {
        throw new GatehouseError('E_CONFIG', `${key}: ${path}: not a readable CRL file (PEM or DER): ${(err as Error).message}`, { key });
      }
    });
  }

  get size(): number {
    return this.files.length;
  }

  private refresh(): void {
    const t = this.now();
    if (t - this.lastCheck < RECHECK_MS) return;
    this.lastCheck = t;
    for (const f of this.files) {
      try {
        const stamp = stampOf(f.path);
        if (stamp === f.stamp && f.crls) continue;
        f.stamp = stamp;
        f.crls = parseCrlFile(readFileSync(f.path));
      } catch {
        f.crls = null;
      }
    }
  }

  private async signedBy(crl: x509.X509Crl, issuer: ParsedCert): Promise<boolean> {
    let m = this.verified.get(crl);
    if (!m) this.verified.set(crl, (m = new Map()));
    const k = issuer.node.fingerprint256;
    let ok = m.get(k);
    if (ok === undefined) {
      try {
        ok = await crl.verify({ publicKey: issuer.px });
      } catch {
        ok = false;
      }
      if (m.size < 64) m.set(k, ok);
    }
    return ok;
  }

  async check(cert: ParsedCert, issuer: ParsedCert, nowMs: number, what: string): Promise<void> {
    this.refresh();
    const names = issuerKeys(issuer);
    for (const f of this.files) {
      if (!f.crls) throw new ChainError('crl_unusable', `${f.key} cannot be read: certificate logins are refused until it is fixed`);
      for (const crl of f.crls) {
        if (!crlNamesIssuer(crl, names)) continue;
        const ku = issuer.px.getExtension(x509.KeyUsagesExtension);
        if (ku && !(ku.usages & x509.KeyUsageFlags.cRLSign))
          throw new ChainError(
            'crl_unusable',
            `the issuer of ${what} may not sign CRLs (keyUsage cRLSign), yet ${f.key} has a CRL in its name`,
          );
        let ext = this.extProblem.get(crl);
        if (ext === undefined) this.extProblem.set(crl, (ext = crlExtensionProblem(crl)));
        if (ext) throw new ChainError('crl_unusable', `the CRL in ${f.key} for the issuer of ${what} ${ext}`);
        if (!(await this.signedBy(crl, issuer)))
          throw new ChainError('crl_unusable', `the CRL in ${f.key} for the issuer of ${what} does not verify with the issuer's key`);
        if (crl.thisUpdate.getTime() > nowMs + THIS_UPDATE_SKEW_MS)
          throw new ChainError('crl_unusable', `the CRL in ${f.key} for the issuer of ${what} is not valid yet`);
        const next = crl.nextUpdate;
        if (!next || next.getTime() < nowMs)
          throw new ChainError(
            'crl_unusable',
            `the CRL in ${f.key} for the issuer of ${what} is out of date (nextUpdate passed): refused until it is refreshed`,
          );
        if (crl.findRevoked(cert.px)) throw new ChainError('revoked', `${what} is revoked (${f.key})`);
      }
    }
  }
}
