/**
 * DTLS 1.3 record protection (RFC 9147) for passive decryption: unified header parsing,
 * record-number decryption, sequence-number reconstruction, AEAD open, inner plaintext,
 * key derivation from traffic secrets and KeyUpdate. Pure: no I/O, no clock, no logging.
 *
 * API
 *   isUnifiedHeader(firstByte): boolean            RFC 9147 §4: 0b001xxxxx
 *   unifiedRecordEnd(buf, off): number              end offset of the record at off, -1 if malformed
 *                                                   or a CID record (connection ids unsupported)
 *   parseUnifiedHeader(buf, off): UnifiedHeader | null
 *   dtls13SuiteInfo(suite): Dtls13Suite | null      0x1301, 0x1302, 0x1303
 *   deriveTrafficKeys(suite, secret): { key, iv, snKey } | null   RFC 8446 §7.3, RFC 9147 §4.2.3
 *   nextTrafficSecret(suite, secret): Buffer        RFC 8446 §7.2 "traffic upd" (dtls13 prefix)
 *   class Dtls13Reader(suite, trafficSecret, epoch)  one direction, one epoch chain
 *     open(buf, off): Dtls13Record | null           null: not authentic, malformed, CID, or an epoch
 *                                                   this reader has no keys for
 *     update(): number                              step to the next traffic secret (KeyUpdate)
 *     epoch: number                                 current receive epoch
 *     accepts(firstByte): boolean                   epoch bits this reader has (or may step to) keys for
 *     wipe(): void
 *   class Dtls13Stream(suite, appSecret, appEpoch = 3, handshakeSecret?)  one direction: handshake
 *                                                   epoch 2 + application chain, routed by epoch bits
 *     open(buf, off) / update() / epoch / wipe()
 *   class Dtls13Writer(suite, trafficSecret, epoch)  the sending side (tests, tools)
 *     seal(contentType, plaintext, opts?): Buffer
 *   findKeyUpdate(plaintext): { requested: boolean } | null   in a decrypted handshake record
 *   parseAck(plaintext): { epoch: number; seq: number }[] | null   RFC 9147 §7
 *   recordNumberMask(suite, snKey, sample): Buffer | null          RFC 9147 §4.2.3
 *   reconstructSeq(expected, bits, window): number                 RFC 9147 §4.2.2
 *
 * Reader behaviour: the reader keeps the current epoch's keys, the previous epoch's (for
 * records reordered across a key update) and, for application epochs (>= 3), lazily the
 * next epoch's. A record whose epoch bits name the next epoch is tried with the next keys
 * and, when it authenticates, the reader moves on (RFC 9147 §8: KeyUpdate). So callers
 * need not call update() themselves; if they do on seeing a KeyUpdate (result.keyUpdate),
 * the effect is the same. Handshake epoch 2 readers never step.
 *
 * Record numbers: the 8/16 low bits in the header are decrypted with the sn_key mask and
 * the full 64-bit sequence number is the candidate closest to one plus the highest number
 * authenticated so far in that epoch (RFC 9147 §4.2.2). The AAD is the header as on the
 * wire but with the record number decrypted (RFC 9147 §4: "prior to record number
 * encryption"), verified against Firefox ESR traffic.
 */
import { createCipheriv, createDecipheriv, type Cipher } from 'node:crypto';
import { GcmOpener } from './native.js';
import { DTLS13_PREFIX, hashLength, hkdfExpandLabel, type HashName } from './hkdf.js';

// RFC 8446 §5 / RFC 9147 §7 content types.
export const CT_CHANGE_CIPHER_SPEC = 20;
export const CT_ALERT = 21;
export const CT_HANDSHAKE = 22;
export const CT_APPLICATION_DATA = 23;
export const CT_ACK = 26;
// RFC 8446 §4: HandshakeType key_update(24).
export const HS_KEY_UPDATE = 24;

/** RFC 9147 §4.2.3 / RFC 8446 §5.2: AEAD tag length of every suite here. */
const TAG_LEN = 16;
/** RFC 9147 §4.2.3: the record-number mask is computed over the first 16 ciphertext bytes. */
const SN_SAMPLE = 16;
/** RFC 8446 §5.2: TLSInnerPlaintext is at most 2^14 + 1 bytes; ciphertext adds up to 255. */
const MAX_CIPHERTEXT = (1 << 14) + 256;

export interface Dtls13Suite {
  suite: number;
  hash: HashName;
  keyLen: number;
  aead: 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';
  sn: 'aes-128-ecb' | 'aes-256-ecb' | 'chacha20';
}

/** RFC 8446 §B.4 cipher suites with RFC 9147 §4.2.3 record-number ciphers. */
export function dtls13SuiteInfo(suite: number): Dtls13Suite | null {
  switch (suite) {
    case 0x1301: // TLS_AES_128_GCM_SHA256
      return { suite, hash: 'sha256', keyLen: 16, aead: 'aes-128-gcm', sn: 'aes-128-ecb' };
    case 0x1302: // TLS_AES_256_GCM_SHA384
      return { suite, hash: 'sha384', keyLen: 32, aead: 'aes-256-gcm', sn: 'aes-256-ecb' };
    case 0x1303: // TLS_CHACHA20_POLY1305_SHA256
      return { suite, hash: 'sha256', keyLen: 32, aead: 'chacha20-poly1305', sn: 'chacha20' };
    default:
      return null;
  }
}

export interface TrafficKeys {
  key: Buffer;
  iv: Buffer;
  snKey: Buffer;
}

/**
 * RFC 8446 §7.3: key = HKDF-Expand-Label(Secret, "key", "", key_length), iv = ("iv", "", 12);
 * RFC 9147 §4.2.3: sn_key = HKDF-Expand-Label(Secret, "sn", "", key_length);
 * all with the "dtls13" label prefix (RFC 9147 §5.9).
 */
export function deriveTrafficKeys(suite: number, secret: Buffer): TrafficKeys | null {
  const s = dtls13SuiteInfo(suite);
  if (!s || secret.length !== hashLength(s.hash)) return null;
  const empty = Buffer.alloc(0);
  return {
    key: hkdfExpandLabel(s.hash, secret, 'key', empty, s.keyLen, DTLS13_PREFIX),
    iv: hkdfExpandLabel(s.hash, secret, 'iv', empty, 12, DTLS13_PREFIX),
    snKey: hkdfExpandLabel(s.hash, secret, 'sn', empty, s.keyLen, DTLS13_PREFIX),
  };
}

/** RFC 8446 §7.2: application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length). */
export function nextTrafficSecret(suite: number, secret: Buffer): Buffer | null {
  const s = dtls13SuiteInfo(suite);
  if (!s) return null;
  return hkdfExpandLabel(s.hash, secret, 'traffic upd', Buffer.alloc(0), hashLength(s.hash), DTLS13_PREFIX);
}

/** RFC 9147 §4: the first byte of a unified header is 0b001CSLEE. */
export function isUnifiedHeader(firstByte: number): boolean {
  return (firstByte & 0xe0) === 0x20;
}

export interface UnifiedHeader {
  /** C bit: a connection id follows (unsupported: RFC 9146 CIDs are out of scope). */
  cid: boolean;
  /** S bit: 2-byte (true) or 1-byte record number. */
  seqLen: 1 | 2;
  /** L bit: 16-bit length present; otherwise the record runs to the end of the datagram. */
  lengthPresent: boolean;
  epochLowBits: number;
  headerLen: number;
  /** Offset of the ciphertext (encrypted record body). */
  bodyOff: number;
  /** End offset (exclusive) of this record in the buffer. */
  end: number;
}

/**
 * RFC 9147 §4 unified header at buf[off]. Returns null when not a unified header, when the
 * C bit is set (the CID length is negotiated, so the record cannot be delimited), or when
 * the record is truncated.
 */
export function parseUnifiedHeader(buf: Buffer, off: number): UnifiedHeader | null {
  const end = unifiedRecordEnd(buf, off);
  if (end < 0) return null;
  const b0 = buf[off]!;
  const seqLen: 1 | 2 = b0 & 0x08 ? 2 : 1; // S bit
  const lengthPresent = (b0 & 0x04) !== 0; // L bit
  const headerLen = 1 + seqLen + (lengthPresent ? 2 : 0);
  return { cid: false, seqLen, lengthPresent, epochLowBits: b0 & 0x03, headerLen, bodyOff: off + headerLen, end };
}

/** End offset of the unified-header record at buf[off], without decrypting; -1 when malformed or CID. */
export function unifiedRecordEnd(buf: Buffer, off: number): number {
  if (off < 0 || off >= buf.length) return -1;
  const b0 = buf[off]!;
  if ((b0 & 0xe0) !== 0x20) return -1; // RFC 9147 §4: fixed bits 001
  if (b0 & 0x10) return -1; // C bit: connection id of negotiated length (RFC 9146), unsupported
  const seqLen = b0 & 0x08 ? 2 : 1;
  const hdr = 1 + seqLen + (b0 & 0x04 ? 2 : 0);
  if (off + hdr > buf.length) return -1;
  if (b0 & 0x04) {
    const len = buf.readUInt16BE(off + 1 + seqLen);
    const end = off + hdr + len;
    return end <= buf.length ? end : -1;
  }
  // RFC 9147 §4: without a length field the record extends to the end of the datagram.
  return buf.length;
}

export interface Dtls13Record {
  /** Inner content type (RFC 8446 §5.4, padding removed). */
  contentType: number;
  plaintext: Buffer;
  epochLowBits: number;
  /** Full epoch the record was decrypted in. */
  epoch: number;
  /** Reconstructed 64-bit record sequence number (exact below 2^53). */
  seq: number;
  /** Offset just past this record (the next record of the datagram, or buf.length). */
  next: number;
  /** Present when the record carries a KeyUpdate (RFC 9147 §8). */
  keyUpdate?: { requested: boolean };
}

/** Keys and replay/reconstruction state of one epoch in one direction. */
class EpochState {
  readonly key: Buffer;
  readonly iv: Buffer;
  readonly snKey: Buffer;
  /** AES-ECB for the sn mask, reused across records (ECB keeps no chaining state). */
  readonly snEcb: Cipher | null;
  /** Highest authenticated sequence number, -1 before the first. */
  maxSeq = -1;
  /** Reused native AES-GCM context: undefined until first use, null without the addon. */
  gcm: GcmOpener | null | undefined = undefined;
  constructor(
    readonly info: Dtls13Suite,
    readonly epoch: number,
    readonly secret: Buffer,
  ) {
    const k = deriveTrafficKeys(info.suite, secret)!;
    this.key = k.key;
    this.iv = k.iv;
    this.snKey = k.snKey;
    if (info.sn === 'chacha20') {
      this.snEcb = null;
    } else {
      this.snEcb = createCipheriv(info.sn, this.snKey, null);
      this.snEcb.setAutoPadding(false);
    }
  }
  wipe(): void {
    this.gcm = null; // OpenSSL cleanses the context when it is freed
    this.key.fill(0);
    this.iv.fill(0);
    this.snKey.fill(0);
    this.secret.fill(0);
  }
}

const ZERO16 = Buffer.alloc(16);

/** RFC 9147 §4.2.3: Mask = AES-ECB(sn_key, Ciphertext[0..15]) or ChaCha20(sn_key, Ciphertext[0..3], Ciphertext[4..15]). */
function snMask(st: EpochState, sample: Buffer): Buffer {
  if (st.snEcb) return st.snEcb.update(sample);
  // Node's chacha20 IV = 4-byte little-endian block counter || 12-byte nonce, i.e. exactly
  // Ciphertext[0..3] || Ciphertext[4..15]; the keystream XOR zeros is the mask.
  return createCipheriv('chacha20', st.snKey, sample).update(ZERO16);
}

/**
 * RFC 9147 §4.2.3 record-number mask for a suite, sn_key and the first 16 ciphertext bytes
 * (stand-alone form of what the reader does with cached cipher state). Null on a bad suite
 * or a sample shorter than 16 bytes.
 */
export function recordNumberMask(suite: number, snKey: Buffer, sample: Buffer): Buffer | null {
  const s = dtls13SuiteInfo(suite);
  if (!s || sample.length < SN_SAMPLE || snKey.length !== s.keyLen) return null;
  const smp = sample.subarray(0, SN_SAMPLE);
  if (s.sn === 'chacha20') return createCipheriv('chacha20', snKey, smp).update(ZERO16);
  const c = createCipheriv(s.sn, snKey, null);
  c.setAutoPadding(false);
  return c.update(smp);
}

/**
 * RFC 9147 §4.2.2: the full sequence number whose low bits are `bits` (window = 2^8 or 2^16)
 * closest to `expected` (one plus the highest authenticated so far).
 */
export function reconstructSeq(expected: number, bits: number, window: number): number {
  const base = expected - (expected % window) + bits;
  let best = base;
  const lo = base - window;
  const hi = base + window;
  if (lo >= 0 && Math.abs(lo - expected) < Math.abs(best - expected)) best = lo;
  if (Math.abs(hi - expected) < Math.abs(best - expected)) best = hi;
  return best;
}

/** RFC 8446 §5.3: nonce = iv XOR (64-bit record sequence number, left-padded to iv length). */
function makeNonce(out: Buffer, iv: Buffer, seq: number): Buffer {
  iv.copy(out, 0);
  const hi = Math.floor(seq / 0x100000000);
  const lo = seq >>> 0;
  out.writeUInt32BE((out.readUInt32BE(4) ^ hi) >>> 0, 4);
  out.writeUInt32BE((out.readUInt32BE(8) ^ lo) >>> 0, 8);
  return out;
}

/** The record's ciphertext is buf[ctOff..ctEnd), its 16-octet tag right after (RFC 9147 §4). */
function aeadOpen(st: EpochState, nonce: Buffer, aad: Buffer, buf: Buffer, ctOff: number, ctEnd: number): Buffer | null {
  if (st.info.aead !== 'chacha20-poly1305') {
    // A keyed OpenSSL context reused per epoch (native addon), when built; no copies.
    if (st.gcm === undefined) st.gcm = GcmOpener.create(st.key);
    if (st.gcm) return st.gcm.openAt(nonce, aad, buf, ctOff, ctEnd - ctOff);
  }
  const ct = buf.subarray(ctOff, ctEnd);
  const tag = buf.subarray(ctEnd, ctEnd + TAG_LEN);
  try {
    const d =
      st.info.aead === 'chacha20-poly1305'
        ? createDecipheriv('chacha20-poly1305', st.key, nonce, { authTagLength: TAG_LEN })
        : createDecipheriv(st.info.aead, st.key, nonce, { authTagLength: TAG_LEN });
    d.setAAD(aad);
    d.setAuthTag(tag);
    const a = d.update(ct);
    const b = d.final();
    return b.length ? Buffer.concat([a, b]) : a;
  } catch {
    return null; // authentication failure
  }
}

/** RFC 8446 §5.4: strip zero padding; the last non-zero byte is the content type. */
function innerPlaintext(p: Buffer): { contentType: number; len: number } | null {
  let i = p.length - 1;
  while (i >= 0 && p[i] === 0) i--;
  if (i < 0) return null; // all zeros: unexpected_message
  return { contentType: p[i]!, len: i };
}

/**
 * Finds a KeyUpdate (RFC 8446 §4.6.3) in the plaintext of a handshake record: DTLS handshake
 * header (RFC 9147 §5.2: type u8, length u24, message_seq u16, fragment_offset u24,
 * fragment_length u24) with msg_type 24 and a 1-byte body.
 */
export function findKeyUpdate(plaintext: Buffer): { requested: boolean } | null {
  let o = 0;
  while (o + 12 <= plaintext.length) {
    const type = plaintext[o]!;
    const fragLen = plaintext.readUIntBE(o + 9, 3);
    if (o + 12 + fragLen > plaintext.length) return null;
    if (type === HS_KEY_UPDATE && fragLen >= 1) return { requested: plaintext[o + 12] === 1 };
    o += 12 + fragLen;
  }
  return null;
}

/** RFC 9147 §7: ACK = RecordNumber record_numbers<0..2^16-1>, RecordNumber = (u64 epoch, u64 seq). */
export function parseAck(plaintext: Buffer): { epoch: number; seq: number }[] | null {
  if (plaintext.length < 2) return null;
  const len = plaintext.readUInt16BE(0);
  if (len % 16 !== 0 || 2 + len > plaintext.length) return null;
  const out: { epoch: number; seq: number }[] = [];
  for (let o = 2; o < 2 + len; o += 16) {
    out.push({
      epoch: plaintext.readUInt32BE(o) * 0x100000000 + plaintext.readUInt32BE(o + 4),
      seq: plaintext.readUInt32BE(o + 8) * 0x100000000 + plaintext.readUInt32BE(o + 12),
    });
  }
  return out;
}

/** Decrypts DTLS 1.3 records of one direction (one traffic-secret chain). */
export class Dtls13Reader {
  private readonly info: Dtls13Suite;
  private cur: EpochState | null;
  private prev: EpochState | null = null;
  private nextSt: EpochState | null = null;
  private readonly nonce = Buffer.alloc(12);
  private readonly aad = Buffer.alloc(5);

  /** Throws RangeError on an unsupported suite or a secret of the wrong length (programming errors). */
  constructor(suite: number, trafficSecret: Buffer, epoch: number) {
    const info = dtls13SuiteInfo(suite);
    if (!info) throw new RangeError(`unsupported DTLS 1.3 suite 0x${suite.toString(16)}`);
    if (trafficSecret.length !== hashLength(info.hash)) throw new RangeError('traffic secret length does not match the suite hash');
    if (!Number.isInteger(epoch) || epoch < 0) throw new RangeError('bad epoch');
    this.info = info;
    this.cur = new EpochState(info, epoch, Buffer.from(trafficSecret));
  }

  /** Current receive epoch. */
  get epoch(): number {
    return this.cur ? this.cur.epoch : -1;
  }

  /**
   * Whether a record with this first byte names an epoch this reader holds or may step to
   * (current, previous, or next application epoch). Decides nothing about authenticity.
   */
  accepts(firstByte: number): boolean {
    const cur = this.cur;
    if (!cur || !isUnifiedHeader(firstByte)) return false;
    const eb = firstByte & 3;
    return (
      (cur.epoch & 3) === eb || (this.prev !== null && (this.prev.epoch & 3) === eb) || (cur.epoch >= 3 && ((cur.epoch + 1) & 3) === eb)
    );
  }

  open(buf: Buffer, off: number): Dtls13Record | null {
    const cur = this.cur;
    if (!cur) return null;
    const end = unifiedRecordEnd(buf, off);
    if (end < 0) return null;
    const b0 = buf[off]!;
    const seqLen = b0 & 0x08 ? 2 : 1;
    const hdrLen = 1 + seqLen + (b0 & 0x04 ? 2 : 0);
    const bodyOff = off + hdrLen;
    const bodyLen = end - bodyOff;
    // RFC 9147 §4.2.3: records with less than 16 bytes of ciphertext cannot be unmasked.
    if (bodyLen < Math.max(SN_SAMPLE, TAG_LEN + 1) || bodyLen > MAX_CIPHERTEXT) return null;
    const eb = b0 & 0x03;
    let st: EpochState | null = null;
    let isNext = false;
    if ((cur.epoch & 3) === eb) st = cur;
    else if (this.prev && (this.prev.epoch & 3) === eb) st = this.prev;
    else if (cur.epoch >= 3 && ((cur.epoch + 1) & 3) === eb) {
      // RFC 9147 §8: the peer moved to the next epoch after a KeyUpdate.
      st = this.nextSt ??= new EpochState(this.info, cur.epoch + 1, nextTrafficSecret(this.info.suite, cur.secret)!);
      isNext = true;
    }
    if (!st) return null;

    const mask = snMask(st, buf.subarray(bodyOff, bodyOff + SN_SAMPLE));
    const aad = this.aad.subarray(0, hdrLen);
    buf.copy(aad, 0, off, bodyOff);
    let bits: number;
    if (seqLen === 2) {
      bits = (buf.readUInt16BE(off + 1) ^ ((mask[0]! << 8) | mask[1]!)) & 0xffff;
      aad.writeUInt16BE(bits, 1);
    } else {
      bits = (buf[off + 1]! ^ mask[0]!) & 0xff;
      aad[1] = bits;
    }
    const seq = reconstructSeq(st.maxSeq + 1, bits, seqLen === 2 ? 0x10000 : 0x100);
    const nonce = makeNonce(this.nonce, st.iv, seq);
    const pt = aeadOpen(st, nonce, aad, buf, bodyOff, end - TAG_LEN);
    if (!pt) return null;
    const inner = innerPlaintext(pt);
    if (!inner) return null;
    if (seq > st.maxSeq) st.maxSeq = seq;
    if (isNext) this.advance();
    const plaintext = pt.subarray(0, inner.len);
    const rec: Dtls13Record = { contentType: inner.contentType, plaintext, epochLowBits: eb, epoch: st.epoch, seq, next: end };
    if (inner.contentType === CT_HANDSHAKE && st.epoch >= 3) {
      const ku = findKeyUpdate(plaintext);
      if (ku) rec.keyUpdate = ku;
    }
    return rec;
  }

  /** RFC 9147 §8: steps to the next traffic secret; returns the new epoch (-1 after wipe). */
  update(): number {
    if (!this.cur) return -1;
    this.nextSt ??= new EpochState(this.info, this.cur.epoch + 1, nextTrafficSecret(this.info.suite, this.cur.secret)!);
    this.advance();
    return this.cur.epoch;
  }

  private advance(): void {
    this.prev?.wipe();
    this.prev = this.cur;
    this.cur = this.nextSt;
    this.nextSt = null;
  }

  /** Zeroes all key material; the reader then opens nothing. */
  wipe(): void {
    for (const s of [this.cur, this.prev, this.nextSt]) s?.wipe();
    this.cur = this.prev = this.nextSt = null;
  }

  toJSON(): string {
    return '[Dtls13Reader]';
  }
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `Dtls13Reader { suite: 0x${this.info.suite.toString(16)}, epoch: ${this.epoch} }`;
  }
}

/**
 * One direction of a DTLS 1.3 association: the handshake epoch (2, optional) and the
 * application epoch chain (3 and up). Routes each record by its epoch bits; because only
 * 2 epoch bits are on the wire, epoch 2 and epochs 6, 10, ... share them (also 5 after
 * two updates with the previous epoch), so an application record is tried first when the
 * application chain claims the bits, then the handshake keys (RFC 9147 §4.2.2 leaves the
 * disambiguation to the receiver; AEAD authentication decides).
 */
export class Dtls13Stream {
  private readonly app: Dtls13Reader;
  private readonly hs: Dtls13Reader | null;
  constructor(suite: number, appSecret: Buffer, appEpoch = 3, handshakeSecret?: Buffer) {
    this.app = new Dtls13Reader(suite, appSecret, appEpoch);
    this.hs = handshakeSecret ? new Dtls13Reader(suite, handshakeSecret, 2) : null;
  }
  get epoch(): number {
    return this.app.epoch;
  }
  open(buf: Buffer, off: number): Dtls13Record | null {
    if (off < 0 || off >= buf.length) return null;
    const b0 = buf[off]!;
    if (this.app.accepts(b0)) {
      const r = this.app.open(buf, off);
      if (r) return r;
    }
    return this.hs && this.hs.accepts(b0) ? this.hs.open(buf, off) : null;
  }
  update(): number {
    return this.app.update();
  }
  wipe(): void {
    this.app.wipe();
    this.hs?.wipe();
  }
  toJSON(): string {
    return '[Dtls13Stream]';
  }
}

export interface SealOptions {
  /** 1 or 2 record-number bytes in the header (default 2). */
  seqLen?: 1 | 2;
  /** Include the 16-bit length (default true). */
  withLength?: boolean;
  /** Zero padding bytes in the inner plaintext (default 0). */
  padding?: number;
  /** Explicit sequence number (default: next). */
  seq?: number;
}

/** Produces DTLS 1.3 protected records (RFC 9147 §4) — the inverse of Dtls13Reader. */
export class Dtls13Writer {
  private readonly info: Dtls13Suite;
  private st: EpochState;
  private seq = 0;
  private readonly nonce = Buffer.alloc(12);

  constructor(suite: number, trafficSecret: Buffer, epoch: number) {
    const info = dtls13SuiteInfo(suite);
    if (!info) throw new RangeError(`unsupported DTLS 1.3 suite 0x${suite.toString(16)}`);
    if (trafficSecret.length !== hashLength(info.hash)) throw new RangeError('traffic secret length does not match the suite hash');
    this.info = info;
    this.st = new EpochState(info, epoch, Buffer.from(trafficSecret));
  }

  get epoch(): number {
    return this.st.epoch;
  }

  seal(contentType: number, plaintext: Buffer, opts: SealOptions = {}): Buffer {
    const seqLen = opts.seqLen ?? 2;
    const withLength = opts.withLength ?? true;
    const seq = opts.seq ?? this.seq;
    this.seq = Math.max(this.seq, seq + 1);
    const inner = Buffer.concat([plaintext, Buffer.of(contentType), Buffer.alloc(opts.padding ?? 0)]);
    const hdrLen = 1 + seqLen + (withLength ? 2 : 0);
    const bodyLen = inner.length + TAG_LEN;
    const out = Buffer.alloc(hdrLen + bodyLen);
    // RFC 9147 §4: 001 C=0 S L EE
    out[0] = 0x20 | (seqLen === 2 ? 0x08 : 0) | (withLength ? 0x04 : 0) | (this.st.epoch & 3);
    if (seqLen === 2) out.writeUInt16BE(seq & 0xffff, 1);
    else out[1] = seq & 0xff;
    if (withLength) out.writeUInt16BE(bodyLen, 1 + seqLen);
    const aad = Buffer.from(out.subarray(0, hdrLen)); // header with the plaintext record number
    const nonce = makeNonce(this.nonce, this.st.iv, seq);
    const c =
      this.info.aead === 'chacha20-poly1305'
        ? createCipheriv('chacha20-poly1305', this.st.key, nonce, { authTagLength: TAG_LEN })
        : createCipheriv(this.info.aead, this.st.key, nonce, { authTagLength: TAG_LEN });
    c.setAAD(aad);
    const ct = Buffer.concat([c.update(inner), c.final()]);
    ct.copy(out, hdrLen);
    c.getAuthTag().copy(out, hdrLen + ct.length);
    // RFC 9147 §4.2.3: encrypt the record number with the mask over the first 16 ciphertext bytes.
    const mask = snMask(this.st, out.subarray(hdrLen, hdrLen + SN_SAMPLE));
    out[1] = out[1]! ^ mask[0]!;
    if (seqLen === 2) out[2] = out[2]! ^ mask[1]!;
    return out;
  }

  /** Steps to the next traffic secret (after sending a KeyUpdate); returns the new epoch. */
  update(): number {
    const s = nextTrafficSecret(this.info.suite, this.st.secret)!;
    this.st.wipe();
    this.st = new EpochState(this.info, this.st.epoch + 1, s);
    this.seq = 0;
    return this.st.epoch;
  }

  toJSON(): string {
    return '[Dtls13Writer]';
  }
}
