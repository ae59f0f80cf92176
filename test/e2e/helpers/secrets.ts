// "No key material anywhere": one list of every secret a test has in play, searched for
// in every encoding a leak could take, in everything the gateway (or a CLI) wrote.
//
// Secrets (key-escrow.md §3 and more):
//   - every byte field of a KeySet except the two randoms (public: they are in the
//     handshake and name the association in events): client/server write keys, IVs, MAC
//     keys, SRTP master keys and salts, application and handshake traffic secrets — and,
//     for DTLS 1.3, the write key, IV and record-number key the gateway derives from each
//     traffic secret (RFC 8446 §7.3, RFC 9147 §4.2.3);
//   - every secret of an NSS key log (CLIENT_RANDOM master secrets, *_TRAFFIC_SECRET_*,
//     EXPORTER_SECRET, ...), with the DTLS 1.3 traffic keys and the SRTP keys an
//     EXPORTER_SECRET yields;
//   - a JSON key-set file (contract.md form);
//   - TURN passwords (and the RFC 8489 §9.2.2 long-term keys, MD5 and SHA-256, when the
//     user and realm are known), admin tokens, any other string or bytes the test names.
//
// Encodings searched: hex (lower and upper case), base64 (with or without padding),
// base64url, the raw bytes, and the decimal list JSON.stringify(Buffer) writes. Raw bytes
// of a secret shorter than 8 bytes (the 4-byte implicit GCM IVs) are looked for in text
// only (logs, JSON, PEM ...): in megabytes of media or ciphertext 4 given bytes occur by
// chance (about one in 2^32 per offset); their text encodings are searched everywhere.
//
// Places: named texts (a process's log, an output, serialised in-memory events) and
// directories walked recursively (DATA_DIR: events.jsonl and its rotations
// events.jsonl.N, state.db and its -wal/-shm, recordings/ with their manifests, the
// gateway certificate and key ...). A file that holds one kind of secret BY DESIGN is
// still scanned for every other kind; only that kind is allowed there (DATA_DIR_ALLOWED).
//
// Findings name the secret's kind and source, the encoding, the place and the byte offset
// — never the value. Nothing here prints a secret.
import { createHash, type KeyObject } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join, relative, sep } from 'node:path';
import { keySetToJson, keySetsFromJson, isDtls13Suite, type KeySet } from '../../../src/wire/keyset.js';
import { deriveTrafficKeys, dtls13SuiteInfo } from '../../../src/wire/dtls13.js';
import { deriveSrtpTls13, SRTP_PROFILES } from '../../../src/wire/tls-prf.js';
import { dtlsStateFromWerift, keySetFromDtls12, type WeriftDtlsSocketLike } from '../../../src/endpoint/keyset.js';

export interface Secret {
  /** What it is: a key-set field name (client_write_key ...), an NSS label, turn_password, admin_token ... */
  kind: string;
  /** Where it came from: "key set 0", "key log 1a2b3c4d…", "user alice" ... */
  source: string;
  value: Buffer;
}

export type Encoding = 'hex' | 'HEX' | 'base64' | 'base64url' | 'raw' | 'bytes-json';

export interface Finding {
  kind: string;
  source: string;
  encoding: Encoding;
  /** The text's name, or the file path relative to its scanned directory (prefixed by the directory's label). */
  where: string;
  offset: number;
}

/** A file under a scanned directory that holds secrets of these kinds by design. */
export interface Allowance {
  /** Path relative to the scanned directory (forward slashes). */
  path: string;
  kinds: string[];
  reason: string;
}

/**
 * DATA_DIR files that hold a secret by design. Each is still scanned for every other
 * secret kind (a DTLS key in admin-token would be found).
 */
export const DATA_DIR_ALLOWED: Allowance[] = [
  {
    path: 'admin-token',
    kinds: ['admin_token'],
    reason: 'the generated admin API token is kept here (mode 0600, README "admin.token: null")',
  },
  {
    path: 'initial-user.json',
    kinds: ['turn_password', 'turn_long_term_key'],
    reason: 'the first-start TURN user and its password are kept here (mode 0600, src/store/users.ts)',
  },
  {
    path: 'gateway.key',
    kinds: ['gateway_private_key'],
    reason: 'the gateway identity key for KEY-REQUEST signatures (mode 0600, README "Key escrow")',
  },
];

/** Raw bytes shorter than this are searched in text places only (see the header). */
export const MIN_RAW_BINARY = 8;
/** A secret shorter than this cannot be searched for meaningfully: refused. */
export const MIN_SECRET = 4;

const RANDOMS = new Set(['client_random', 'server_random']);
const TEXT_EXT = new Set(['.json', '.jsonl', '.txt', '.log', '.yaml', '.yml', '.pem', '.crt', '.key', '.csv', '']);

/** The list of secrets in play; add everything the test knows. */
export class Secrets {
  readonly list: Secret[] = [];
  private keySetCount = 0;

  add(kind: string, source: string, value: Buffer | string): this {
    const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value);
    if (v.length < MIN_SECRET) throw new Error(`secret ${kind} (${source}) is ${v.length} bytes: too short to search for`);
    if (v.every((b) => b === 0)) throw new Error(`secret ${kind} (${source}) is all zeros: wiped before it was listed?`);
    if (!this.list.some((s) => s.kind === kind && s.value.equals(v))) this.list.push({ kind, source, value: v });
    return this;
  }

  /** Every secret byte field of the key set (key-escrow.md §3), and what DTLS 1.3 derives from it. */
  keySet(ks: KeySet, source = `key set ${this.keySetCount}`): this {
    this.keySetCount++;
    for (const [name, v] of Object.entries(keySetToJson(ks))) {
      if (RANDOMS.has(name) || typeof v !== 'string') continue;
      this.add(name, source, Buffer.from(v, 'hex'));
    }
    if (isDtls13Suite(ks.cipherSuite)) {
      const pairs: Array<[string, Buffer | undefined]> = [
        ['client_application_traffic_secret', ks.clientAppTrafficSecret],
        ['server_application_traffic_secret', ks.serverAppTrafficSecret],
        ['client_handshake_traffic_secret', ks.clientHsTrafficSecret],
        ['server_handshake_traffic_secret', ks.serverHsTrafficSecret],
      ];
      for (const [name, secret] of pairs) if (secret) this.trafficKeys(name, source, secret, [ks.cipherSuite]);
    }
    return this;
  }

  keySets(kss: Iterable<KeySet>, source?: string): this {
    let i = 0;
    for (const ks of kss) this.keySet(ks, source ? `${source} ${i++}` : undefined);
    return this;
  }

  /**
   * Every secret of an NSS key log (`LABEL <client_random> <secret>`; '#' comments and
   * malformed lines skipped), plus the DTLS 1.3 traffic keys of each traffic secret (for
   * every DTLS 1.3 suite of its length) and the SRTP keys of each EXPORTER_SECRET (every
   * profile, "dtls13" and "tls13 " label prefixes).
   */
  keyLog(text: string, source = 'key log'): this {
    for (const raw of text.split('\n')) {
      const p = raw.trim().split(/\s+/);
      if (p.length !== 3 || p[0]!.startsWith('#') || !/^[0-9a-fA-F]{64}$/.test(p[1]!) || !/^(?:[0-9a-fA-F]{2})+$/.test(p[2]!)) continue;
      const label = p[0]!;
      const src = `${source} ${p[1]!.slice(0, 8).toLowerCase()}…`;
      const secret = Buffer.from(p[2]!, 'hex');
      this.add(label, src, secret);
      if (/TRAFFIC_SECRET/.test(label)) this.trafficKeys(label, src, secret, [0x1301, 0x1302, 0x1303]);
      if (label === 'EXPORTER_SECRET') {
        const hash = secret.length === 48 ? 'sha384' : 'sha256';
        for (const profile of SRTP_PROFILES.keys()) {
          for (const prefix of ['dtls13', 'tls13 ']) {
            const m = deriveSrtpTls13(hash, secret, profile, prefix);
            if (!m) continue;
            const from = `${src} (from EXPORTER_SECRET, SRTP profile ${profile})`;
            this.add('srtp_client_master_key', from, m.clientMasterKey);
            this.add('srtp_server_master_key', from, m.serverMasterKey);
            this.add('srtp_client_master_salt', from, m.clientMasterSalt);
            this.add('srtp_server_master_salt', from, m.serverMasterSalt);
          }
        }
      }
    }
    return this;
  }

  /** A key file as `gatehouse inspect --keys` takes it: a JSON key-set file, else an NSS key log. */
  keyFile(path: string): this {
    const text = readFileSync(path, 'utf8');
    if (/^\s*[[{]/.test(text)) return this.keySets(keySetsFromJson(text), `key file ${path.split(sep).pop()}`);
    return this.keyLog(text, `key log ${path.split(sep).pop()}`);
  }

  /**
   * A TURN password; with realm (and user) also its long-term keys (RFC 8489 §9.2.2).
   * opts.word: the password is a plain word that legitimately occurs in output (the unit
   * fixtures' "secret" is in the field name extended_master_secret): it is searched as a
   * JSON string ("secret") and as a key=value / key: value, not as a bare substring.
   */
  turnPassword(user: string, password: string, realm?: string, opts: { word?: boolean } = {}): this {
    if (opts.word) {
      for (const form of [`"${password}"`, `=${password}`, `: ${password}`, `:${password}@`])
        this.add('turn_password', `user ${user} (the word as a value: ${form.replace(password, '…')})`, form);
    } else this.add('turn_password', `user ${user}`, password);
    if (realm !== undefined) {
      for (const alg of ['md5', 'sha256'] as const)
        this.add('turn_long_term_key', `user ${user} (${alg})`, createHash(alg).update(`${user}:${realm}:${password}`, 'utf8').digest());
    }
    return this;
  }

  /**
   * The DTLS secrets of a werift RTCPeerConnection (the endpoint agent's or a plain
   * peer's): per connected transport, the master secret and the key set the agent would
   * escrow. Call it while the connection is up (werift forgets them on close).
   */
  werift(pc: { dtlsTransports: unknown[] }, source = 'werift'): this {
    pc.dtlsTransports.forEach((tr, i) => {
      const sock = (tr as { dtls?: WeriftDtlsSocketLike }).dtls;
      const st = sock && dtlsStateFromWerift(sock);
      if (!st) return;
      this.add('master_secret', `${source} transport ${i}`, st.masterSecret);
      this.keySet(keySetFromDtls12(st), `${source} transport ${i}`);
    });
    return this;
  }

  /** The gateway's identity key: its private scalar and PKCS#8 DER (what gateway.key holds in PEM). */
  gatewayKey(privateKey: KeyObject): this {
    const jwk = privateKey.export({ format: 'jwk' });
    if (jwk.d) this.add('gateway_private_key', 'gateway identity (scalar)', Buffer.from(jwk.d, 'base64url'));
    this.add('gateway_private_key', 'gateway identity (PKCS#8)', privateKey.export({ type: 'pkcs8', format: 'der' }));
    // PEM wraps its base64 every 64 characters: the body lines after the first (which is
    // the same for every P-256 key) are searched as they are.
    const lines = String(privateKey.export({ type: 'pkcs8', format: 'pem' }))
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'));
    lines.slice(1).forEach((l, i) => l.length >= 16 && this.add('gateway_private_key', `gateway identity (PEM line ${i + 2})`, l));
    return this;
  }

  adminToken(token: string): this {
    return this.add('admin_token', 'admin API', token);
  }

  get size(): number {
    return this.list.length;
  }

  private trafficKeys(name: string, source: string, secret: Buffer, suites: number[]): void {
    for (const suite of suites) {
      const info = dtls13SuiteInfo(suite);
      if (!info) continue;
      const k = deriveTrafficKeys(suite, secret);
      if (!k) continue;
      const from = `${source} (derived from ${name}, suite 0x${suite.toString(16)})`;
      this.add('dtls13_write_key', from, k.key);
      this.add('dtls13_write_iv', from, k.iv);
      this.add('dtls13_sn_key', from, k.snKey);
    }
  }
}

/** Where to look. */
export interface Places {
  /** Named texts or bytes: a process's whole log, a CLI's stdout, serialised in-memory events ... */
  texts?: Record<string, string | Buffer>;
  /**
   * Named texts in which some secret kinds are expected by design (e.g. the first-start
   * notice on stdout that prints the bootstrap password once).
   */
  allowedTexts?: Array<{ name: string; data: string | Buffer; kinds: string[]; reason: string }>;
  /** Directories walked recursively (label → path), e.g. { DATA_DIR: gh.dataDir }. Must exist. */
  dirs?: Record<string, string>;
  /** Per-file allowances under dirs (default DATA_DIR_ALLOWED, applied to every dir). */
  allowed?: Allowance[];
}

export interface ScanReport {
  findings: Finding[];
  /** Every place searched: text names and file paths (label/relative), with sizes. */
  searched: Array<{ where: string; bytes: number }>;
  /** Files where a kind was allowed, with the reason. */
  allowances: Array<{ where: string; kinds: string[]; reason: string }>;
}

function needles(s: Secret, binary: boolean): Array<[Encoding, Buffer]> {
  const v = s.value;
  const out: Array<[Encoding, Buffer]> = [];
  const hex = v.toString('hex');
  out.push(['hex', Buffer.from(hex)]);
  if (hex.toUpperCase() !== hex) out.push(['HEX', Buffer.from(hex.toUpperCase())]);
  out.push(['base64', Buffer.from(v.toString('base64').replace(/=+$/, ''))]);
  const b64u = v.toString('base64url');
  if (b64u !== v.toString('base64').replace(/=+$/, '')) out.push(['base64url', Buffer.from(b64u)]);
  if (!binary || v.length >= MIN_RAW_BINARY) out.push(['raw', v]);
  out.push(['bytes-json', Buffer.from([...v].join(','))]);
  return out;
}

function scanBuffer(secrets: Secret[], where: string, data: Buffer, binary: boolean, allowedKinds: Set<string>, out: Finding[]): void {
  for (const s of secrets) {
    if (allowedKinds.has(s.kind)) continue;
    for (const [encoding, n] of needles(s, binary)) {
      const offset = data.indexOf(n);
      if (offset >= 0) out.push({ kind: s.kind, source: s.source, encoding, where, offset });
    }
  }
}

function looksBinary(path: string, data: Buffer): boolean {
  if (!TEXT_EXT.has(extname(path).toLowerCase()) && !/\.jsonl\.\d+$/.test(path)) return true;
  return data.subarray(0, 8192).includes(0);
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.isFile()) out.push(p);
    else if (e.isSymbolicLink() && statSync(p, { throwIfNoEntry: false })?.isFile()) out.push(p);
  }
  return out.sort();
}

/** Searches every place for every secret. Throws if a directory does not exist (a wrong path would pass vacuously). */
export function findSecrets(secrets: Secrets | Secret[], places: Places): ScanReport {
  const list = Array.isArray(secrets) ? secrets : secrets.list;
  const report: ScanReport = { findings: [], searched: [], allowances: [] };
  for (const [name, data] of Object.entries(places.texts ?? {})) {
    const b = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    report.searched.push({ where: name, bytes: b.length });
    scanBuffer(list, name, b, false, new Set(), report.findings);
  }
  for (const a of places.allowedTexts ?? []) {
    const b = typeof a.data === 'string' ? Buffer.from(a.data, 'utf8') : a.data;
    report.searched.push({ where: a.name, bytes: b.length });
    report.allowances.push({ where: a.name, kinds: a.kinds, reason: a.reason });
    scanBuffer(list, a.name, b, false, new Set(a.kinds), report.findings);
  }
  const allowed = places.allowed ?? DATA_DIR_ALLOWED;
  for (const [label, dir] of Object.entries(places.dirs ?? {})) {
    if (!existsSync(dir)) throw new Error(`findSecrets: ${label} (${dir}) does not exist`);
    for (const file of walk(dir)) {
      const rel = relative(dir, file).split(sep).join('/');
      const where = `${label}/${rel}`;
      let data: Buffer;
      try {
        data = readFileSync(file);
      } catch (e) {
        // Rotated or removed while we walked: nothing left to leak.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
      const kinds = new Set<string>();
      for (const a of allowed) {
        if (a.path === rel) {
          a.kinds.forEach((k) => kinds.add(k));
          report.allowances.push({ where, kinds: a.kinds, reason: a.reason });
        }
      }
      report.searched.push({ where, bytes: data.length });
      scanBuffer(list, where, data, looksBinary(file, data), kinds, report.findings);
    }
  }
  return report;
}

/** One line per finding, without the value. */
export function describeFinding(f: Finding): string {
  return `${f.kind} (${f.source}) as ${f.encoding} in ${f.where} at offset ${f.offset}`;
}

/** The part of a tap Test this needs (tap's overloads are looser than any one signature). */
/* eslint-disable @typescript-eslint/no-explicit-any */
interface TapLike {
  ok(...args: any[]): unknown;
  same(...args: any[]): unknown;
  comment(...args: any[]): unknown;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/**
 * Asserts that no secret is in any place. Fails when there are no secrets to look for or
 * nothing was searched (a vacuous pass), and lists findings by kind/place/offset only.
 */
export function assertNoSecrets(t: TapLike, secrets: Secrets | Secret[], places: Places, what = 'no secrets'): ScanReport {
  const list = Array.isArray(secrets) ? secrets : secrets.list;
  t.ok(list.length > 0, `${what}: there are secrets to look for (${list.length})`);
  const report = findSecrets(list, places);
  const bytes = report.searched.reduce((a, s) => a + s.bytes, 0);
  t.ok(report.searched.length > 0 && bytes > 0, `${what}: searched ${report.searched.length} places, ${bytes} bytes`);
  const kinds = [...new Set(list.map((s) => s.kind))].sort();
  t.comment(`${what}: ${list.length} secrets (${kinds.join(', ')}) in ${report.searched.map((s) => s.where).join(', ')}`);
  for (const a of report.allowances) t.comment(`${what}: ${a.where} may hold ${a.kinds.join(', ')}: ${a.reason}`);
  t.same(report.findings.map(describeFinding), [], what);
  return report;
}
