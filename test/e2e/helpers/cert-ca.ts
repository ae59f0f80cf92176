// A test CA for certificate login (core.md §5), made with `openssl` in a temp dir:
// root → intermediate → leaves (ECDSA P-256 and RSA), an unrelated root with its own
// leaf, an intermediate without cA=TRUE, an expired leaf (`openssl ca -startdate
// -enddate` in the past) and a revoked leaf with the intermediate's CRL (`openssl ca
// -revoke`, `-gencrl`). Every CA is an `openssl ca` directory (index.txt, serial).
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function ossl(dir: string, ...args: string[]): Promise<void> {
  try {
    await run('openssl', args, { cwd: dir });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0]}: ${e.stderr ?? e.message}`);
  }
}

const CNF = (name: string) => `[ ca ]
default_ca = ca_${name}
[ ca_${name} ]
dir = ./${name}
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = ./${name}.pem
private_key = ./${name}.key
default_md = sha256
default_days = 30
default_crl_days = 7
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ policy_any ]
commonName = supplied
organizationName = optional
[ leaf_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ server_leaf_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
[ tls_server_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[ ca_ext ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ notca_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

export type KeyKind = 'ec' | 'rsa';

export interface Issued {
  cert: string; // PEM file path
  key: string;
  der: Buffer;
}

export class TestCa {
  constructor(readonly dir: string) {}

  private async newKey(name: string, kind: KeyKind): Promise<void> {
    if (kind === 'ec') await ossl(this.dir, 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`);
    else await ossl(this.dir, 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', `${name}.key`);
  }

  private initCa(name: string): void {
    mkdirSync(join(this.dir, name, 'new'), { recursive: true });
    writeFileSync(join(this.dir, name, 'index.txt'), '');
    writeFileSync(join(this.dir, name, 'serial'), `${(0x100000 + Math.floor(Math.random() * 0xefffff)).toString(16)}\n`);
    writeFileSync(join(this.dir, name, 'crlnumber'), '01\n');
    writeFileSync(join(this.dir, `${name}.cnf`), CNF(name));
  }

  private issued(name: string): Issued {
    const cert = join(this.dir, `${name}.pem`);
    const pem = readFileSync(cert, 'utf8');
    const b64 = /-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/.exec(pem)![1]!.replace(/\s+/g, '');
    return { cert, key: join(this.dir, `${name}.key`), der: Buffer.from(b64, 'base64') };
  }

  /** A self-signed root CA (ECDSA P-256). */
  async root(name: string, cn: string): Promise<Issued> {
    await this.newKey(name, 'ec');
    // prettier-ignore
    await ossl(this.dir, 'req', '-x509', '-new', '-key', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${cn}`, '-days', '30', '-sha256',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    this.initCa(name);
    return this.issued(name);
  }

  /**
   * A certificate `name` with subject CN `cn` issued by CA `issuer` (`openssl ca`), with
   * the extensions section `ext` of the CA's config; `dates` as openssl YYYYMMDDHHMMSSZ.
   */
  async issue(
    issuer: string,
    name: string,
    cn: string,
    o: {
      kind?: KeyKind;
      ext?: 'leaf_ext' | 'ca_ext' | 'notca_ext' | 'server_leaf_ext' | 'tls_server_ext';
      start?: string;
      end?: string;
    } = {},
  ): Promise<Issued> {
    await this.newKey(name, o.kind ?? 'ec');
    await ossl(this.dir, 'req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    const dates = [...(o.start ? ['-startdate', o.start] : []), ...(o.end ? ['-enddate', o.end] : [])];
    // prettier-ignore
    await ossl(this.dir, 'ca', '-batch', '-config', `${issuer}.cnf`, '-in', `${name}.csr`, '-out', `${name}.pem`, '-notext',
      '-extensions', o.ext ?? 'leaf_ext', ...dates);
    const ext = o.ext ?? 'leaf_ext';
    if (ext === 'ca_ext' || ext === 'notca_ext') this.initCa(name);
    return this.issued(name);
  }

  /** Revokes `name` (issued by `issuer`) in the issuer's database. */
  async revoke(issuer: string, name: string): Promise<void> {
    await ossl(this.dir, 'ca', '-batch', '-config', `${issuer}.cnf`, '-revoke', `${name}.pem`, '-crl_reason', 'keyCompromise');
  }

  /** The issuer's CRL (PEM) at `file`; `next`: nextUpdate (YYYYMMDDHHMMSSZ), default 7 days on. */
  async crl(issuer: string, file: string, o: { last?: string; next?: string; der?: boolean } = {}): Promise<string> {
    const out = join(this.dir, file);
    // prettier-ignore
    await ossl(this.dir, 'ca', '-batch', '-config', `${issuer}.cnf`, '-gencrl', '-out', o.der ? `${file}.pem` : file,
      ...(o.last ? ['-crl_lastupdate', o.last] : []), ...(o.next ? ['-crl_nextupdate', o.next] : []));
    if (o.der) await ossl(this.dir, 'crl', '-in', `${file}.pem`, '-outform', 'DER', '-out', file);
    return out;
  }
}

/** openssl's YYYYMMDDHHMMSSZ for a time. */
export function opensslTime(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:T]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}
