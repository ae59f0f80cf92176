/**
 * STUN message codec (RFC 8489) with the TURN attributes of RFC 8656.
 *
 * Pure: no I/O, no clocks, imports nothing else of ours. Decoding is zero-copy: a
 * decoded message keeps the original buffer (`raw`) and lists its attributes as
 * offsets into it. Public entry points never throw on malformed input; they return
 * null / false / undefined instead (the writer throws only on programmer errors such
 * as a value longer than 65535 bytes).
 */
import { formatIpv6 } from './netpkt.js';
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';

// RFC 8489 §5: the fixed magic cookie, in network byte order.
export const MAGIC_COOKIE = 0x2112a442;
export const HEADER_LENGTH = 20;
// RFC 8489 §14.7: FINGERPRINT is CRC-32 XOR 0x5354554e ("STUN").
export const FINGERPRINT_XOR = 0x5354554e;
/** Upper bound on attributes we index in one message (hostile input cap). */
export const MAX_ATTRIBUTES = 256;

/** RFC 8489 §18.2 / RFC 8656 §17 method registry. */
export const Method = {
  Binding: 0x001,
  Allocate: 0x003,
  Refresh: 0x004,
  Send: 0x006,
  Data: 0x007,
  CreatePermission: 0x008,
  ChannelBind: 0x009,
} as const;

/** RFC 8489 §5: the two class bits C1 C0. */
export const Class = {
  Request: 0b00,
  Indication: 0b01,
  Success: 0b10,
  Error: 0b11,
} as const;

/** RFC 8489 §18.3 / RFC 8656 §18 attribute registry (the ones we handle). */
export const Attr = {
  MappedAddress: 0x0001,
  Username: 0x0006,
  MessageIntegrity: 0x0008,
  ErrorCode: 0x0009,
  UnknownAttributes: 0x000a,
  ChannelNumber: 0x000c,
  Lifetime: 0x000d,
  XorPeerAddress: 0x0012,
  Data: 0x0013,
  Realm: 0x0014,
  Nonce: 0x0015,
  XorRelayedAddress: 0x0016,
  RequestedAddressFamily: 0x0017,
  EvenPort: 0x0018,
  RequestedTransport: 0x0019,
  DontFragment: 0x001a,
  MessageIntegritySha256: 0x001c,
  PasswordAlgorithm: 0x001d,
  Userhash: 0x001e,
  XorMappedAddress: 0x0020,
  ReservationToken: 0x0022,
  Priority: 0x0024,
  UseCandidate: 0x0025,
  // comprehension-optional (0x8000-0xFFFF)
  AdditionalAddressFamily: 0x8000,
  AddressErrorCode: 0x8001,
  PasswordAlgorithms: 0x8002,
  AlternateDomain: 0x8003,
  Icmp: 0x8004,
  Software: 0x8022,
  AlternateServer: 0x8023,
  Fingerprint: 0x8028,
  IceControlled: 0x8029,
  IceControlling: 0x802a,
} as const;

/** RFC 8489 §14: attribute types below 0x8000 are comprehension-required. */
export function isComprehensionRequired(type: number): boolean {
  return type < 0x8000;
}

/** RFC 8489 §14.8 / RFC 8656 §19 recommended reason phrases. */
export const ErrorReason: Record<number, string> = {
  300: 'Try Alternate',
  400: 'Bad Request',
  401: 'Unauthenticated',
  403: 'Forbidden',
  420: 'Unknown Attribute',
  437: 'Allocation Mismatch',
  438: 'Stale Nonce',
  440: 'Address Family not Supported',
  441: 'Wrong Credentials',
  442: 'Unsupported Transport Protocol',
  443: 'Peer Address Family Mismatch',
  486: 'Allocation Quota Reached',
  500: 'Server Error',
  508: 'Insufficient Capacity',
};

/** RFC 8489 §18.5 password algorithm registry. */
export const PasswordAlgorithmId = { MD5: 0x0001, SHA256: 0x0002 } as const;
export type PasswordAlgorithmName = 'md5' | 'sha256';

/** RFC 8489 §14.1 / RFC 8656 §18.6: address family values (also used by XOR-*-ADDRESS, RFC 8489 §14.2). */
export const Family = { IPv4: 0x01, IPv6: 0x02 } as const;

export interface StunAttr {
  type: number;
  /** Offset of the value in msg.raw. */
  offset: number;
  /** Value length without padding. */
  length: number;
}

export interface StunMessage {
  type: number;
  method: number;
  cls: number;
  /** Header length field (bytes after the 20-byte header). */
  length: number;
  /** 12 bytes, a view into raw. */
  transactionId: Buffer;
  /**
   * Attributes in order. RFC 8489 §14.5/§14.6/§14.7: after MESSAGE-INTEGRITY only
   * MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are kept, after MESSAGE-INTEGRITY-SHA256
   * only FINGERPRINT, and nothing after FINGERPRINT; the rest is ignored.
   */
  attrs: StunAttr[];
  /** The whole message (exactly 20 + length bytes). */
  raw: Buffer;
}

// ---------------------------------------------------------------------------
// Message type (RFC 8489 §5: method bits M11..M0 interleaved with class C1 C0)

export function messageType(method: number, cls: number): number {
  return ((method & 0xf80) << 2) | ((method & 0x070) << 1) | (method & 0x00f) | ((cls & 0b10) << 7) | ((cls & 0b01) << 4);
}

export function methodOf(type: number): number {
  return ((type & 0x3e00) >> 2) | ((type & 0x00e0) >> 1) | (type & 0x000f);
}

export function classOf(type: number): number {
  return ((type & 0x0100) >> 7) | ((type & 0x0010) >> 4);
}

// ---------------------------------------------------------------------------
// Recognition and decoding

/**
 * RFC 7983 §7: a STUN packet starts with a byte 0..3 (top two bits zero, RFC 8489 §5);
 * RFC 8489 §5: the magic cookie follows the type and length, and the length is a
 * multiple of 4 that fits the buffer.
 */
export function isStun(buf: Buffer, off = 0): boolean {
  if (off < 0 || buf.length - off < HEADER_LENGTH) return false;
  if ((buf[off]! & 0xc0) !== 0) return false;
  if (buf.readUInt32BE(off + 4) !== MAGIC_COOKIE) return false;
  const len = buf.readUInt16BE(off + 2);
  if ((len & 3) !== 0) return false;
  return HEADER_LENGTH + len <= buf.length - off;
}

/**
 * Decodes one STUN message occupying the whole buffer. Returns null when the header is
 * not STUN (RFC 8489 §6.3: top bits, magic cookie, length a multiple of 4 and matching
 * the buffer) or an attribute overruns the message. Does not check FINGERPRINT or
 * MESSAGE-INTEGRITY (see verifyFingerprint, verifyIntegrity).
 */
export function decodeStun(buf: Buffer): StunMessage | null {
  if (!isStun(buf, 0)) return null;
  const length = buf.readUInt16BE(2);
  if (HEADER_LENGTH + length !== buf.length) return null;
  const type = buf.readUInt16BE(0);
  const attrs: StunAttr[] = [];
  let p = HEADER_LENGTH;
  const end = HEADER_LENGTH + length;
  let sawMI = false;
  let sawMI256 = false;
  let sawFP = false;
  while (p < end) {
    if (end - p < 4) return null;
    const at = buf.readUInt16BE(p);
    const al = buf.readUInt16BE(p + 2);
    const vo = p + 4;
    // RFC 8489 §14: values are padded to a multiple of 4 bytes.
    const next = vo + ((al + 3) & ~3);
    if (next > end) return null;
    let keep: boolean;
    if (sawFP)
      keep = false; // §14.7: FINGERPRINT is last
    else if (sawMI256)
      keep = at === Attr.Fingerprint; // §14.6
    else if (sawMI)
      keep = at === Attr.Fingerprint || at === Attr.MessageIntegritySha256; // §14.5
    else keep = true;
    if (keep) {
      if (attrs.length >= MAX_ATTRIBUTES) return null;
      attrs.push({ type: at, offset: vo, length: al });
      if (at === Attr.MessageIntegrity) sawMI = true;
      else if (at === Attr.MessageIntegritySha256) sawMI256 = true;
      else if (at === Attr.Fingerprint) sawFP = true;
    }
    p = next;
  }
  return {
    type,
    method: methodOf(type),
    cls: classOf(type),
    length,
    transactionId: buf.subarray(8, 20),
    attrs,
    raw: buf,
  };
}

/** The first attribute of a type (RFC 8489 §14: only the first occurrence counts). */
export function findAttr(msg: StunMessage, type: number): StunAttr | undefined {
  const a = msg.attrs;
  for (let i = 0; i < a.length; i++) if (a[i]!.type === type) return a[i];
  return undefined;
}

/** The value of the first attribute of a type, as a view into msg.raw. */
export function getAttr(msg: StunMessage, type: number): Buffer | undefined {
  const a = findAttr(msg, type);
  return a ? msg.raw.subarray(a.offset, a.offset + a.length) : undefined;
}

/** Every attribute of a type (e.g. several XOR-PEER-ADDRESS in CreatePermission, RFC 8656 §10). */
export function getAttrs(msg: StunMessage, type: number): Buffer[] {
  const out: Buffer[] = [];
  for (const a of msg.attrs) if (a.type === type) out.push(msg.raw.subarray(a.offset, a.offset + a.length));
  return out;
}

export function hasAttr(msg: StunMessage, type: number): boolean {
  return findAttr(msg, type) !== undefined;
}

/** A UTF-8 attribute value (USERNAME, REALM, NONCE, SOFTWARE) or undefined. */
export function getString(msg: StunMessage, type: number): string | undefined {
  const v = getAttr(msg, type);
  return v ? v.toString('utf8') : undefined;
}

/** A 32-bit attribute value (LIFETIME, PRIORITY) or undefined when absent or malformed. */
export function getUint32(msg: StunMessage, type: number): number | undefined {
  const v = getAttr(msg, type);
  return v && v.length === 4 ? v.readUInt32BE(0) : undefined;
}

/**
 * RFC 8489 §6.3.1: comprehension-required attributes the receiver does not know, in
 * order and without duplicates; a request with any gets a 420 listing them.
 */
export function unknownComprehensionRequired(msg: StunMessage, known: (type: number) => boolean): number[] {
  const out: number[] = [];
  for (const a of msg.attrs) {
    if (isComprehensionRequired(a.type) && !known(a.type) && !out.includes(a.type)) out.push(a.type);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Addresses (RFC 8489 §14.1 MAPPED-ADDRESS, §14.2 XOR-MAPPED-ADDRESS)

export interface TransportAddress {
  family: 4 | 6;
  address: string;
  port: number;
}

/** Formats 16 bytes as a canonical (RFC 5952 §4) IPv6 string, IPv4-mapped ones in hex. */
export function formatIPv6(b: Buffer, off = 0): string {
  return formatIpv6(b, off, false);
}

/** Parses an IPv4 or IPv6 string into 4 or 16 bytes; null when not an IP address. */
export function parseIP(ip: string): Buffer | null {
  if (isIPv4(ip)) {
    const b = Buffer.alloc(4);
    const parts = ip.split('.');
    for (let i = 0; i < 4; i++) b[i] = Number(parts[i]);
    return b;
  }
  if (!isIPv6(ip)) return null;
  let s = ip;
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  const out = Buffer.alloc(16);
  // An embedded dotted quad in the last 32 bits.
  let tail: number[] = [];
  const lastColon = s.lastIndexOf(':');
  if (s.indexOf('.', lastColon) >= 0) {
    const v4 = s
      .slice(lastColon + 1)
      .split('.')
      .map(Number);
    tail = [(v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!];
    s = s.slice(0, lastColon + 1) + '0:0';
  }
  const [head, rest] = s.split('::') as [string, string | undefined];
  const hs = head ? head.split(':') : [];
  const rs = rest !== undefined && rest !== '' ? rest.split(':') : [];
  const groups: number[] = new Array(8).fill(0);
  for (let i = 0; i < hs.length; i++) groups[i] = parseInt(hs[i]!, 16);
  for (let i = 0; i < rs.length; i++) groups[8 - rs.length + i] = parseInt(rs[i]!, 16);
  if (tail.length) {
    groups[6] = tail[0]!;
    groups[7] = tail[1]!;
  }
  for (let i = 0; i < 8; i++) out.writeUInt16BE(groups[i]! & 0xffff, i * 2);
  return out;
}

/** Decodes a (non-XOR) MAPPED-ADDRESS value (RFC 8489 §14.1). */
export function decodeAddress(v: Buffer): TransportAddress | null {
  if (v.length < 4) return null;
  const fam = v[1];
  const port = v.readUInt16BE(2);
  if (fam === Family.IPv4 && v.length === 8) return { family: 4, address: `${v[4]}.${v[5]}.${v[6]}.${v[7]}`, port };
  if (fam === Family.IPv6 && v.length === 20) return { family: 6, address: formatIPv6(v, 4), port };
  return null;
}

/**
 * Decodes an XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value
 * (RFC 8489 §14.2: port XOR the cookie's top 16 bits; IPv4 XOR the cookie; IPv6 XOR
 * cookie || transaction ID).
 */
export function decodeXorAddress(v: Buffer, transactionId: Buffer): TransportAddress | null {
  if (v.length < 4) return null;
  const fam = v[1];
  const port = v.readUInt16BE(2) ^ (MAGIC_COOKIE >>> 16);
  if (fam === Family.IPv4 && v.length === 8) {
    const a = (v.readUInt32BE(4) ^ MAGIC_COOKIE) >>> 0;
    return { family: 4, address: `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`, port };
  }
  if (fam === Family.IPv6 && v.length === 20) {
    const b = Buffer.allocUnsafe(16);
    b.writeUInt32BE(MAGIC_COOKIE, 0);
    transactionId.copy(b, 4, 0, 12);
    for (let i = 0; i < 16; i++) b[i] = b[i]! ^ v[4 + i]!;
    return { family: 6, address: formatIPv6(b), port };
  }
  return null;
}

/** Reads an XOR address attribute of msg (first occurrence). */
export function getXorAddress(msg: StunMessage, type: number): TransportAddress | null {
  const v = getAttr(msg, type);
  return v ? decodeXorAddress(v, msg.transactionId) : null;
}

/** Every XOR address attribute of a type; null when any of them is malformed. */
export function getXorAddresses(msg: StunMessage, type: number): TransportAddress[] | null {
  const out: TransportAddress[] = [];
  for (const v of getAttrs(msg, type)) {
    const a = decodeXorAddress(v, msg.transactionId);
    if (!a) return null;
    out.push(a);
  }
  return out;
}

/** Writes an XOR address value (8 or 20 bytes) into dst at off; returns bytes written. */
export function writeXorAddressValue(dst: Buffer, off: number, ipBytes: Buffer, port: number, transactionId: Buffer): number {
  dst[off] = 0;
  dst.writeUInt16BE((port ^ (MAGIC_COOKIE >>> 16)) & 0xffff, off + 2);
  if (ipBytes.length === 4) {
    dst[off + 1] = Family.IPv4;
    dst.writeUInt32BE((ipBytes.readUInt32BE(0) ^ MAGIC_COOKIE) >>> 0, off + 4);
    return 8;
  }
  dst[off + 1] = Family.IPv6;
  dst.writeUInt32BE((ipBytes.readUInt32BE(0) ^ MAGIC_COOKIE) >>> 0, off + 4);
  for (let i = 0; i < 12; i++) dst[off + 8 + i] = ipBytes[4 + i]! ^ transactionId[i]!;
  return 20;
}

// ---------------------------------------------------------------------------
// ERROR-CODE (RFC 8489 §14.8), UNKNOWN-ATTRIBUTES (§14.13)

export function decodeErrorCode(v: Buffer): { code: number; reason: string } | null {
  if (v.length < 4) return null;
  const cls = v[2]! & 0x07;
  const num = v[3]!;
  if (cls < 3 || cls > 6 || num > 99) return null;
  return { code: cls * 100 + num, reason: v.subarray(4).toString('utf8') };
}

export function getErrorCode(msg: StunMessage): { code: number; reason: string } | null {
  const v = getAttr(msg, Attr.ErrorCode);
  return v ? decodeErrorCode(v) : null;
}

export function decodeUnknownAttributes(v: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i + 1 < v.length; i += 2) out.push(v.readUInt16BE(i));
  return out;
}

// ---------------------------------------------------------------------------
// PASSWORD-ALGORITHMS (RFC 8489 §14.11) / PASSWORD-ALGORITHM (§14.12)

export interface PasswordAlgorithmEntry {
  id: number;
  params: Buffer;
}

/** Parses PASSWORD-ALGORITHMS; null when malformed. */
export function decodePasswordAlgorithms(v: Buffer): PasswordAlgorithmEntry[] | null {
  const out: PasswordAlgorithmEntry[] = [];
  let p = 0;
  while (p < v.length) {
    if (v.length - p < 4) return null;
    const id = v.readUInt16BE(p);
    const l = v.readUInt16BE(p + 2);
    const e = p + 4 + ((l + 3) & ~3);
    if (p + 4 + l > v.length) return null;
    out.push({ id, params: v.subarray(p + 4, p + 4 + l) });
    p = Math.min(e, v.length);
    if (out.length > 64) return null;
  }
  return out;
}

/** Parses PASSWORD-ALGORITHM; null when malformed. */
export function decodePasswordAlgorithm(v: Buffer): PasswordAlgorithmEntry | null {
  if (v.length < 4) return null;
  const l = v.readUInt16BE(2);
  if (4 + l > v.length) return null;
  return { id: v.readUInt16BE(0), params: v.subarray(4, 4 + l) };
}

/** Encodes algorithm entries (no parameters) for PASSWORD-ALGORITHMS. */
export function encodePasswordAlgorithms(ids: number[]): Buffer {
  const b = Buffer.alloc(ids.length * 4);
  ids.forEach((id, i) => b.writeUInt16BE(id, i * 4));
  return b;
}

// ---------------------------------------------------------------------------
// String preparation and the long-term key (RFC 8489 §9.2.2)

const NON_ASCII_SPACE = /[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]/g;
// RFC 3454 table B.1: characters SASLprep maps to nothing.
const MAPPED_TO_NOTHING = /[\u00ad\u034f\u1806\u180b-\u180d\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff]/g;

/**
 * OpaqueString profile (RFC 8265 §4.2), as RFC 8489 §9.2.2 requires for realm and
 * password. Simplification: we apply its mapping (non-ASCII spaces to U+0020) and NFC
 * normalisation, but do not reject the code points the PRECIS IdentifierClass
 * disallows; for passwords that are already valid OpaqueStrings (every ASCII
 * password) the result is exact.
 */
export function opaqueString(s: string): string {
  return s.replace(NON_ASCII_SPACE, ' ').normalize('NFC');
}

/**
 * SASLprep (RFC 4013), the RFC 5389 predecessor of OpaqueString, for clients that
 * still prepare passwords that way (it is what RFC 5769 §2.4 uses): map B.1 to
 * nothing, non-ASCII spaces to U+0020, then NFKC. Prohibited-output and bidi checks are
 * not performed.
 */
export function saslprep(s: string): string {
  return s.replace(MAPPED_TO_NOTHING, '').replace(NON_ASCII_SPACE, ' ').normalize('NFKC');
}

/**
 * RFC 8489 §9.2.2: key = MD5(username ":" OpaqueString(realm) ":" OpaqueString(password))
 * (16 bytes), or SHA-256 of the same string (32 bytes) when PASSWORD-ALGORITHM is
 * SHA-256. The username is used as given (it has been through UsernameCasePreserved
 * at the client; we compare it byte for byte).
 */
export function longTermKey(username: string, realm: string, password: string, alg: PasswordAlgorithmName = 'md5'): Buffer {
  const h = createHash(alg === 'sha256' ? 'sha256' : 'md5');
  h.update(`${username}:${opaqueString(realm)}:${opaqueString(password)}`, 'utf8');
  return h.digest();
}

/** RFC 8489 §9.1.1: the short-term key is OpaqueString(password). */
export function shortTermKey(password: string): Buffer {
  return Buffer.from(opaqueString(password), 'utf8');
}

/** RFC 8489 §14.4: USERHASH = SHA-256(OpaqueString(username) ":" OpaqueString(realm)). */
export function userhash(username: string, realm: string): Buffer {
  return createHash('sha256')
    .update(`${opaqueString(username)}:${opaqueString(realm)}`, 'utf8')
    .digest();
}

// ---------------------------------------------------------------------------
// MESSAGE-INTEGRITY (RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6), FINGERPRINT (§14.7)

const hdrScratch = Buffer.alloc(HEADER_LENGTH);

/**
 * HMAC over raw[0, end) with the header length field replaced by `lengthField`
 * (the RFC's "adjusted" length that points at the end of the integrity attribute).
 */
function hmacOver(alg: 'sha1' | 'sha256', key: Buffer, raw: Buffer, end: number, lengthField: number): Buffer {
  raw.copy(hdrScratch, 0, 0, HEADER_LENGTH);
  hdrScratch.writeUInt16BE(lengthField, 2);
  const h = createHmac(alg, key);
  h.update(hdrScratch);
  h.update(raw.subarray(HEADER_LENGTH, end));
  return h.digest();
}

function attrStart(a: StunAttr): number {
  return a.offset - 4;
}

/**
 * Verifies MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes) with key. False when absent,
 * malformed or wrong.
 */
export function verifyIntegrity(msg: StunMessage, key: Buffer): boolean {
  const a = findAttr(msg, Attr.MessageIntegrity);
  if (!a || a.length !== 20) return false;
  const start = attrStart(a);
  const mac = hmacOver('sha1', key, msg.raw, start, start - HEADER_LENGTH + 24);
  return timingSafeEqual(mac, msg.raw.subarray(a.offset, a.offset + 20));
}

/**
 * Verifies MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4,
 * possibly truncated). False when absent, malformed or wrong.
 */
export function verifyIntegritySha256(msg: StunMessage, key: Buffer): boolean {
  const a = findAttr(msg, Attr.MessageIntegritySha256);
  if (!a || a.length < 16 || a.length > 32 || a.length % 4 !== 0) return false;
  const start = attrStart(a);
  const mac = hmacOver('sha256', key, msg.raw, start, start - HEADER_LENGTH + 4 + a.length);
  return timingSafeEqual(mac.subarray(0, a.length), msg.raw.subarray(a.offset, a.offset + a.length));
}

let crcTable: Int32Array | null = null;
function table(): Int32Array {
  if (crcTable) return crcTable;
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  crcTable = t;
  return t;
}

/** CRC-32 (ISO 3309 / ITU-T V.42, as RFC 8489 §14.7 requires) of buf[start, end). */
export function crc32(buf: Buffer, start = 0, end = buf.length, seed = 0): number {
  const t = table();
  let c = ~seed;
  for (let i = start; i < end; i++) c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * Checks FINGERPRINT. Returns true when the message has no FINGERPRINT, false when it
 * has a wrong one (RFC 8489 §6.3, §7: such a message is not treated as STUN).
 */
export function verifyFingerprint(msg: StunMessage): boolean {
  const a = findAttr(msg, Attr.Fingerprint);
  if (!a) return true;
  if (a.length !== 4) return false;
  // §14.7: FINGERPRINT must be the last attribute.
  if (a.offset + 4 !== msg.raw.length) return false;
  const v = (crc32(msg.raw, 0, attrStart(a)) ^ FINGERPRINT_XOR) >>> 0;
  return v === msg.raw.readUInt32BE(a.offset);
}

// ---------------------------------------------------------------------------
// Encoding

/**
 * Builds one STUN message in a reusable buffer. Usage:
 *   w.reset(messageType(Method.Binding, Class.Success), tid).xorAddress(...).integrity(key).fingerprint();
 *   const out = w.copy();    // or w.view() when sent at once and not kept
 * Attribute order is the call order; integrity()/integritySha256()/fingerprint() must
 * be called last in that order (RFC 8489 §14.5-§14.7).
 */
export class StunWriter {
  private buf: Buffer;
  private len = 0;

  constructor(capacity = 1500) {
    this.buf = Buffer.alloc(Math.max(capacity, HEADER_LENGTH));
  }

  /** Starts a new message. The transaction ID (12 bytes) is copied. */
  reset(type: number, transactionId: Buffer): this {
    const b = this.buf;
    b.writeUInt16BE(type & 0x3fff, 0);
    b.writeUInt16BE(0, 2);
    b.writeUInt32BE(MAGIC_COOKIE, 4);
    transactionId.copy(b, 8, 0, 12);
    this.len = HEADER_LENGTH;
    return this;
  }

  get length(): number {
    return this.len;
  }

  get transactionId(): Buffer {
    return this.buf.subarray(8, 20);
  }

  private ensure(extra: number): void {
    if (this.len + extra <= this.buf.length) return;
    let n = this.buf.length * 2;
    while (n < this.len + extra) n *= 2;
    const nb = Buffer.alloc(n);
    this.buf.copy(nb, 0, 0, this.len);
    this.buf = nb;
  }

  /** Opens an attribute of `valueLength` bytes; returns the value offset to fill. */
  private open(type: number, valueLength: number): number {
    if (valueLength > 0xffff) throw new RangeError(`STUN attribute 0x${type.toString(16)} too long`);
    const padded = (valueLength + 3) & ~3;
    this.ensure(4 + padded);
    const b = this.buf;
    const p = this.len;
    b.writeUInt16BE(type, p);
    b.writeUInt16BE(valueLength, p + 2);
    // RFC 8489 §14: padding bytes are sent as zero.
    if (padded !== valueLength) b.fill(0, p + 4 + valueLength, p + 4 + padded);
    this.len = p + 4 + padded;
    if (this.len - HEADER_LENGTH > 0xffff) throw new RangeError('STUN message too long');
    b.writeUInt16BE(this.len - HEADER_LENGTH, 2);
    return p + 4;
  }

  attr(type: number, value: Buffer | string): this {
    const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    const o = this.open(type, v.length);
    v.copy(this.buf, o);
    return this;
  }

  /** An attribute whose value is a slice of another buffer (no intermediate copy). */
  attrSlice(type: number, src: Buffer, start: number, end: number): this {
    const o = this.open(type, end - start);
    src.copy(this.buf, o, start, end);
    return this;
  }

  u32(type: number, v: number): this {
    const o = this.open(type, 4);
    this.buf.writeUInt32BE(v >>> 0, o);
    return this;
  }

  /** XOR-MAPPED-ADDRESS and friends (RFC 8489 §14.2) from an IP string. */
  xorAddress(type: number, ip: string, port: number): this {
    const ipb = parseIP(ip);
    if (!ipb) throw new RangeError('not an IP address');
    return this.xorAddressBytes(type, ipb, port);
  }

  xorAddressBytes(type: number, ipBytes: Buffer, port: number): this {
    const o = this.open(type, ipBytes.length === 4 ? 8 : 20);
    writeXorAddressValue(this.buf, o, ipBytes, port, this.buf.subarray(8, 20));
    return this;
  }

  /** MAPPED-ADDRESS (RFC 8489 §14.1), for RFC 3489 clients. */
  address(type: number, ip: string, port: number): this {
    const ipb = parseIP(ip);
    if (!ipb) throw new RangeError('not an IP address');
    const o = this.open(type, 4 + ipb.length);
    this.buf[o] = 0;
    this.buf[o + 1] = ipb.length === 4 ? Family.IPv4 : Family.IPv6;
    this.buf.writeUInt16BE(port, o + 2);
    ipb.copy(this.buf, o + 4);
    return this;
  }

  /** ERROR-CODE (RFC 8489 §14.8): class = hundreds, number = code mod 100, reason UTF-8 (< 128 chars). */
  errorCode(code: number, reason = ErrorReason[code] ?? ''): this {
    const r = Buffer.from(reason.slice(0, 127), 'utf8');
    const o = this.open(Attr.ErrorCode, 4 + r.length);
    this.buf.writeUInt16BE(0, o);
    this.buf[o + 2] = Math.floor(code / 100) & 0x07;
    this.buf[o + 3] = code % 100;
    r.copy(this.buf, o + 4);
    return this;
  }

  /** UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): a list of 16-bit types. */
  unknownAttributes(types: number[]): this {
    const o = this.open(Attr.UnknownAttributes, types.length * 2);
    types.forEach((t, i) => this.buf.writeUInt16BE(t, o + i * 2));
    return this;
  }

  /** MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1 over the message so far, length adjusted. */
  integrity(key: Buffer): this {
    const start = this.len;
    const o = this.open(Attr.MessageIntegrity, 20);
    const h = createHmac('sha1', key);
    h.update(this.buf.subarray(0, start)); // header length already counts this attribute
    h.digest().copy(this.buf, o);
    return this;
  }

  /** MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), full 32 bytes. */
  integritySha256(key: Buffer): this {
    const start = this.len;
    const o = this.open(Attr.MessageIntegritySha256, 32);
    const h = createHmac('sha256', key);
    h.update(this.buf.subarray(0, start));
    h.digest().copy(this.buf, o);
    return this;
  }

  /** FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message so far XOR 0x5354554e. */
  fingerprint(): this {
    const start = this.len;
    const o = this.open(Attr.Fingerprint, 4);
    this.buf.writeUInt32BE((crc32(this.buf, 0, start) ^ FINGERPRINT_XOR) >>> 0, o);
    return this;
  }

  /** The encoded message as a view of the internal buffer (valid until the next reset). */
  view(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  /** A copy of the encoded message. */
  copy(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}
