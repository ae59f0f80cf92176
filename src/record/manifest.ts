/**
 * Tamper evidence for recordings (issue 5). Layout of a recordings directory:
 *
 *   <dir>/<recording-id>/...           the recorded files (pcap, .opus, .webm, .ivf, .h264,
 *                                      dc-*.jsonl, files/<sha256>, meta.json)
 *   <dir>/<recording-id>/manifest.json SHA-256 and size of every other file in the
 *                                      recording, `seq` (position in the chain), `prev`
 *                                      (SHA-256 of the previous recording's manifest.json
 *                                      bytes, null for the first) and an ECDSA P-256 /
 *                                      SHA-256 signature by the gateway key over the
 *                                      canonical JSON of every other field
 *   <dir>/chain-head.json              signed {seq, manifestHash} of the newest manifest,
 *                                      so removing the newest recordings is noticed
 *   <dir>/chain-anchor.json            written by retention: signed {seq, manifestHash}
 *                                      of the newest recording deleted by retention
 *   <dir>/certs/<sha256-of-DER>.pem    the certificates that signed (the signer field)
 *
 * Verification recomputes every file hash (naming changed, removed and added files),
 * checks every signature, and walks the chain in seq order: each manifest's prev must be
 * the hash of the one before it, seq must have no holes, and the first present one must
 * be either the genesis (seq 1, prev null) or the successor of the anchor (prev equal to
 * the anchor's manifestHash: its predecessor was pruned by retention, which is allowed).
 * A retention run interrupted after writing the anchor leaves recordings with seq <=
 * anchor.seq; they are accepted when the one at anchor.seq has the anchored hash.
 *
 * Without a pinned certificate (--cert) the check proves consistency with the
 * certificates in certs/; pin the gateway certificate to prove origin.
 */
import { createPublicKey, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { sha256Hex } from '../util/sha256.js';

export const MANIFEST = 'manifest.json';
export const HEAD = 'chain-head.json';
export const ANCHOR = 'chain-anchor.json';
export const CERTS = 'certs';
export const MANIFEST_FORMAT = 'gatehouse-recording/1';

export interface Signer {
  privateKey: KeyObject;
  certificatePem: string;
  certificateDer: Buffer;
}

export interface FileEntry {
  sha256: string;
  size: number;
}

export interface Manifest {
  format: string;
  id: string;
  seq: number;
  prev: string | null;
  part: number;
  flow: Record<string, unknown>;
  startedAt: string;
  endedAt: string;
  recovered?: boolean;
  /** Writing stopped early (e.g. a full disk): the files end where writing failed. */
  incomplete?: { reason: string; file: string; at: string };
  /** Per RTP stream: the codec and how it was learned, the playable file or why there is none. */
  streams?: ManifestStream[];
  files: Record<string, FileEntry>;
  signer: string;
  signature: string;
}

export interface ManifestStream {
  ssrc: number;
  /** 'opus', 'vp8', 'h264', another codec the inspector named, or 'unclassified'. */
  codec: string;
  /** 'rtp.stream': the inspector's event; 'payload': the recorder's own look at the packets. */
  classifiedBy: 'rtp.stream' | 'payload' | null;
  /** The playable file (null: the RTP pcap only). */
  file: string | null;
  pcap: string;
  /** Why there is no playable file: 'unclassified' (not classified within the bound) or 'codec' (no writer for it). */
  note?: 'unclassified' | 'codec';
}

export interface ChainPoint {
  seq: number;
  manifestHash: string;
  id: string;
}

/** JSON with object keys sorted at every level: the bytes that are signed. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
}

export { sha256Hex };

export function signerId(certDer: Buffer): string {
  return sha256Hex(certDer);
}

function signBody(body: Record<string, unknown>, s: Signer): string {
  // ECDSA P-256 with SHA-256 (FIPS 186-4), DER-encoded signature.
  return sign('sha256', Buffer.from(canonicalJson(body)), s.privateKey).toString('base64');
}

function verifyBody(obj: Record<string, unknown>, key: KeyObject): boolean {
  const { signature, ...body } = obj;
  if (typeof signature !== 'string') return false;
  try {
    return verify('sha256', Buffer.from(canonicalJson(body)), key, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}

/** Writes a file atomically (temp file, fsync, rename) and returns its bytes; on failure no temp file is left. */
export function writeAtomic(path: string, data: Buffer | string): Buffer {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o640);
  try {
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    // A full disk: leave no half-written temp file behind (it would be hashed as content).
    rmSync(tmp, { force: true });
    throw err;
  }
  return buf;
}

/** Every regular file under dir (relative paths with '/'), except the manifest. */
export function listFiles(dir: string, sub = ''): string[] {
  const out: string[] = [];
  for (const ent of readdirSync(join(dir, sub), { withFileTypes: true })) {
    const rel = sub ? `${sub}/${ent.name}` : ent.name;
    if (ent.isDirectory()) out.push(...listFiles(dir, rel));
    else if (!(sub === '' && (ent.name === MANIFEST || ent.name === `${MANIFEST}.tmp`))) out.push(rel);
  }
  return out.sort();
}

export function hashFile(path: string): FileEntry {
  const data = readFileSync(path);
  return { sha256: sha256Hex(data), size: data.length };
}

export function hashFiles(dir: string): Record<string, FileEntry> {
  const files: Record<string, FileEntry> = {};
  for (const f of listFiles(dir)) files[f] = hashFile(join(dir, f));
  return files;
}

/** Keeps the signer's certificate in <recordingsDir>/certs/. */
export function storeCertificate(recordingsDir: string, s: Signer): string {
  const id = signerId(s.certificateDer);
  const dir = join(recordingsDir, CERTS);
  mkdirSync(dir, { recursive: true });
  const p = join(dir, `${id}.pem`);
  if (!existsSync(p)) writeAtomic(p, s.certificatePem);
  return id;
}

/** Seals one recording: hashes its files, signs, writes manifest.json; returns its hash. */
export function sealRecording(
  recDir: string,
  fields: Omit<Manifest, 'files' | 'signer' | 'signature' | 'format'>,
  s: Signer,
): { manifest: Manifest; hash: string } {
  const body: Omit<Manifest, 'signature'> = {
    format: MANIFEST_FORMAT,
    ...fields,
    files: hashFiles(recDir),
    signer: signerId(s.certificateDer),
  };
  const manifest: Manifest = { ...body, signature: signBody(body as unknown as Record<string, unknown>, s) };
  const bytes = writeAtomic(join(recDir, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
  return { manifest, hash: sha256Hex(bytes) };
}

export function writeChainPoint(
  recordingsDir: string,
  name: typeof HEAD | typeof ANCHOR,
  p: ChainPoint,
  s: Signer,
  extra: Record<string, unknown> = {},
): void {
  const body = { format: MANIFEST_FORMAT, ...p, ...extra, signer: signerId(s.certificateDer) };
  writeAtomic(join(recordingsDir, name), JSON.stringify({ ...body, signature: signBody(body, s) }, null, 2) + '\n');
}

export interface SealedRecording {
  id: string;
  dir: string;
  manifest: Manifest;
  hash: string;
}

/** The sealed recordings of a directory, by seq; unreadable manifests are skipped. */
export function readRecordings(recordingsDir: string): { sealed: SealedRecording[]; unsealed: string[]; broken: string[] } {
  const sealed: SealedRecording[] = [];
  const unsealed: string[] = [];
  const broken: string[] = [];
  let ents: import('node:fs').Dirent[] = [];
  try {
    ents = readdirSync(recordingsDir, { withFileTypes: true });
  } catch {
    return { sealed, unsealed, broken };
  }
  for (const ent of ents) {
    if (!ent.isDirectory() || ent.name === CERTS) continue;
    const dir = join(recordingsDir, ent.name);
    let bytes: Buffer;
    try {
      bytes = readFileSync(join(dir, MANIFEST));
    } catch {
      unsealed.push(ent.name);
      continue;
    }
    try {
      const manifest = JSON.parse(bytes.toString('utf8')) as Manifest;
      if (typeof manifest.seq !== 'number' || typeof manifest.files !== 'object' || manifest.files === null) throw new Error('shape');
      sealed.push({ id: ent.name, dir, manifest, hash: sha256Hex(bytes) });
    } catch {
      broken.push(ent.name);
    }
  }
  sealed.sort((a, b) => a.manifest.seq - b.manifest.seq);
  unsealed.sort();
  broken.sort();
  return { sealed, unsealed, broken };
}

function readJson(path: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

export function readChainPoint(
  recordingsDir: string,
  name: typeof HEAD | typeof ANCHOR,
): (ChainPoint & { signer: string; raw: Record<string, unknown> }) | null {
  const v = readJson(join(recordingsDir, name));
  if (!v || typeof v.seq !== 'number' || typeof v.manifestHash !== 'string') return null;
  return { seq: v.seq, manifestHash: v.manifestHash, id: String(v.id ?? ''), signer: String(v.signer ?? ''), raw: v };
}

export interface VerifyResult {
  ok: boolean;
  problems: string[];
  recordings: number;
  files: number;
}

class KeyRing {
  private cache = new Map<string, KeyObject | null>();
  constructor(
    private readonly certsDir: string | null,
    private readonly pinned: X509Certificate | null,
  ) {}
  /** The public key for a signer id, or null (unknown, or not the pinned certificate). */
  get(id: string): KeyObject | null {
    if (this.pinned) return signerId(this.pinned.raw) === id ? this.pinned.publicKey : null;
    if (!/^[0-9a-f]{64}$/.test(id) || !this.certsDir) return null;
    if (!this.cache.has(id)) {
      let key: KeyObject | null = null;
      try {
        const cert = new X509Certificate(readFileSync(join(this.certsDir, `${id}.pem`)));
        if (signerId(cert.raw) === id) key = createPublicKey(cert.publicKey.export({ format: 'pem', type: 'spki' }));
      } catch {
        key = null;
      }
      this.cache.set(id, key);
    }
    return this.cache.get(id) ?? null;
  }
}

function checkRecording(rec: SealedRecording, keys: KeyRing, problems: string[]): number {
  const m = rec.manifest;
  const key = keys.get(String(m.signer));
  if (!key) problems.push(`${rec.id}/${MANIFEST}: signed by an unknown or untrusted certificate (${String(m.signer).slice(0, 16)})`);
  else if (!verifyBody(m as unknown as Record<string, unknown>, key))
    problems.push(`${rec.id}/${MANIFEST}: bad signature (manifest changed)`);
  if (m.id !== undefined && m.id !== rec.id) problems.push(`${rec.id}/${MANIFEST}: manifest is for recording ${m.id} (moved or renamed)`);
  const present = new Set(listFiles(rec.dir));
  for (const [f, want] of Object.entries(m.files)) {
    if (!present.has(f)) {
      problems.push(`${rec.id}/${f}: removed`);
      continue;
    }
    const got = hashFile(join(rec.dir, f));
    if (got.sha256 !== want.sha256 || got.size !== want.size) problems.push(`${rec.id}/${f}: changed`);
  }
  for (const f of present) if (!Object.prototype.hasOwnProperty.call(m.files, f)) problems.push(`${rec.id}/${f}: added`);
  return present.size;
}

/**
 * Verifies a recordings directory (every recording, the chain, head and anchor) or, when
 * dir holds a manifest.json, that one recording (files and signature only).
 */
export function verifyRecordings(dir: string, opts: { certPem?: string } = {}): VerifyResult {
  const problems: string[] = [];
  let pinned: X509Certificate | null = null;
  if (opts.certPem) pinned = new X509Certificate(opts.certPem); // caller reports a bad file
  if (existsSync(join(dir, MANIFEST))) {
    const bytes = readFileSync(join(dir, MANIFEST));
    let manifest: Manifest;
    try {
      manifest = JSON.parse(bytes.toString('utf8')) as Manifest;
      if (typeof manifest.files !== 'object' || manifest.files === null) throw new Error('shape');
    } catch {
      return { ok: false, problems: [`${MANIFEST}: unreadable`], recordings: 1, files: 0 };
    }
    const id = dir.replace(/\/+$/, '').split('/').pop() ?? dir;
    const keys = new KeyRing(join(dir, '..', CERTS), pinned);
    const files = checkRecording({ id, dir, manifest, hash: sha256Hex(bytes) }, keys, problems);
    return { ok: problems.length === 0, problems, recordings: 1, files };
  }
  const keys = new KeyRing(join(dir, CERTS), pinned);
  const { sealed, unsealed, broken } = readRecordings(dir);
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (!ent.isDirectory() && ent.name !== HEAD && ent.name !== ANCHOR) problems.push(`${ent.name}: added (not part of any recording)`);
  }
  for (const u of unsealed) problems.push(`${u}: no ${MANIFEST} (unsealed: still recording, or the manifest was removed)`);
  for (const b of broken) problems.push(`${b}/${MANIFEST}: unreadable`);
  let files = 0;
  for (const rec of sealed) files += checkRecording(rec, keys, problems);

  const anchor = readChainPoint(dir, ANCHOR);
  const head = readChainPoint(dir, HEAD);
  for (const [name, p] of [
    [ANCHOR, anchor],
    [HEAD, head],
  ] as const) {
    if (!p) continue;
    const key = keys.get(p.signer);
    if (!key || !verifyBody(p.raw, key)) problems.push(`${name}: bad or untrusted signature`);
  }
  // Chain walk.
  for (let i = 0; i < sealed.length; i++) {
    const cur = sealed[i]!;
    if (i === 0) {
      const m = cur.manifest;
      if (m.seq === 1 && m.prev === null) continue; // genesis
      if (anchor && m.seq === anchor.seq + 1 && m.prev === anchor.manifestHash) continue; // predecessor pruned
      if (anchor && m.seq <= anchor.seq) {
        const at = sealed.find((r) => r.manifest.seq === anchor.seq);
        if (at && at.hash === anchor.manifestHash) continue; // interrupted retention run
      }
      problems.push(
        anchor
          ? `${cur.id}: chain broken: seq ${m.seq} does not follow the retention anchor (seq ${anchor.seq}); earlier recordings were removed`
          : `${cur.id}: chain broken: first recording has seq ${m.seq}, earlier recordings were removed`,
      );
      continue;
    }
    const prev = sealed[i - 1]!;
    if (cur.manifest.seq === prev.manifest.seq) problems.push(`${cur.id}: chain broken: seq ${cur.manifest.seq} also used by ${prev.id}`);
    else if (cur.manifest.seq !== prev.manifest.seq + 1)
      problems.push(`${cur.id}: chain broken: recording(s) with seq ${prev.manifest.seq + 1}..${cur.manifest.seq - 1} removed`);
    else if (cur.manifest.prev !== prev.hash) problems.push(`${cur.id}: chain broken: prev does not match the manifest of ${prev.id}`);
  }
  const last = sealed[sealed.length - 1];
  if (head) {
    if (last) {
      if (head.seq > last.manifest.seq)
        problems.push(`${HEAD}: newest recording(s) with seq ${last.manifest.seq + 1}..${head.seq} removed`);
      else if (head.seq === last.manifest.seq && head.manifestHash !== last.hash)
        problems.push(`${HEAD}: does not match the manifest of ${last.id}`);
      else if (head.seq < last.manifest.seq) problems.push(`${HEAD}: stale (seq ${head.seq}, newest manifest seq ${last.manifest.seq})`);
    } else if (!anchor || anchor.seq !== head.seq || anchor.manifestHash !== head.manifestHash) {
      problems.push(`${HEAD}: recordings up to seq ${head.seq} removed`);
    }
  } else if (sealed.length > 0) {
    problems.push(`${HEAD}: missing`);
  }
  return { ok: problems.length === 0, problems, recordings: sealed.length + unsealed.length + broken.length, files };
}

export function recordingBytes(rec: SealedRecording): number {
  let n = 0;
  for (const f of Object.values(rec.manifest.files)) n += f.size;
  try {
    n += statSync(join(rec.dir, MANIFEST)).size;
  } catch {
    /* gone */
  }
  return n;
}
