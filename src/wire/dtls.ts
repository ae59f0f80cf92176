/**
 * DTLS record and handshake codecs (pure, no I/O, no copies on the record path).
 *
 * Public API:
 *   readRecord(buf, off, out): number        — parses one record at `off` into `out` (reused
 *       object), returns the offset after it, or -1 when the rest of the datagram is not a
 *       parsable record (truncated, bad length, unknown first byte, CID record).
 *   parseRecords(datagram): DtlsRecord[]     — convenience (allocates), stops at the first bad record.
 *   isDtlsFirstByte(b), isUnifiedHeader(b)   — RFC 7983 §7 / RFC 9147 §4 demux helpers.
 *   readHandshakeHeader(buf, off, out): number — RFC 6347 §4.2.2 header, returns body offset or -1.
 *   class HandshakeReassembler               — capped fragment reassembly of handshake messages.
 *   parseClientHello(body), parseServerHello(body), parseHelloVerifyRequest(body): ... | null
 *   parseEncryptedExtensions(body): HelloExtensions | null   (DTLS 1.3: the server's use_srtp)
 *
 * Unified-header records (DTLS 1.3, first byte 0b001xxxxx) are delimited here (so that a
 * datagram mixing them can be walked) but their content is the DTLS 1.3 layer's business
 * (src/wire/dtls13.ts).
 */

/** RFC 5246 §6.2.1 / RFC 6347 §4.1 / RFC 9146 §4 / RFC 9147 §4 content types. */
export const CT_CHANGE_CIPHER_SPEC = 20;
export const CT_ALERT = 21;
export const CT_HANDSHAKE = 22;
export const CT_APPLICATION_DATA = 23;
export const CT_HEARTBEAT = 24;
export const CT_TLS12_CID = 25;
export const CT_ACK = 26;

/** RFC 6347 §4.1: DTLS 1.0 = {254,255}, DTLS 1.2 = {254,253}; RFC 9147 §5.3: DTLS 1.3 = 0xfefc. */
export const DTLS_1_0 = 0xfeff;
export const DTLS_1_2 = 0xfefd;
export const DTLS_1_3 = 0xfefc;

/** RFC 5246 §7.4 / RFC 6347 §4.3.2 / RFC 8446 §4 handshake types. */
export const HT_HELLO_REQUEST = 0;
export const HT_CLIENT_HELLO = 1;
export const HT_SERVER_HELLO = 2;
export const HT_HELLO_VERIFY_REQUEST = 3;
export const HT_NEW_SESSION_TICKET = 4;
export const HT_ENCRYPTED_EXTENSIONS = 8; // RFC 8446 §4.3.1 (DTLS 1.3: carries use_srtp)
export const HT_FINISHED = 20;
export const HT_KEY_UPDATE = 24;

/** RFC 6347 §4.1: type(1) version(2) epoch(2) sequence_number(6) length(2). */
export const RECORD_HEADER_LEN = 13;
/** RFC 6347 §4.2.2: msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3). */
export const HANDSHAKE_HEADER_LEN = 12;
/** RFC 6347 §4.1.2.1 / RFC 5246 §6.2.3: a ciphertext fragment is at most 2^14 + 2048 bytes. */
export const MAX_FRAGMENT_LEN = 16384 + 2048;

export interface DtlsRecord {
  /** True for an RFC 9147 §4 unified-header (DTLS 1.3 ciphertext) record. */
  unified: boolean;
  /** Content type (RFC 6347 §4.1); for unified-header records always CT_APPLICATION_DATA (the real type is encrypted, RFC 9147 §4). */
  type: number;
  /** Record version (0 for unified-header records). */
  version: number;
  /** Epoch; for unified-header records only its low two bits (RFC 9147 §4). */
  epoch: number;
  /** 48-bit sequence number; for unified-header records the (encrypted) 8- or 16-bit low bits. */
  seq: number;
  /** Offset of the record's first byte in the datagram. */
  start: number;
  /** The header bytes (subarray of the datagram). */
  header: Buffer;
  /** The record body (subarray of the datagram). */
  fragment: Buffer;
}

export function newRecord(): DtlsRecord {
  const empty = Buffer.alloc(0);
  return { unified: false, type: 0, version: 0, epoch: 0, seq: 0, start: 0, header: empty, fragment: empty };
}

/** RFC 7983 §7: first byte 20..63 is DTLS. */
export function isDtlsFirstByte(b: number): boolean {
  return b >= 20 && b <= 63;
}

/** RFC 9147 §4: the unified header starts with the bits 001. */
export function isUnifiedHeader(b: number): boolean {
  return (b & 0xe0) === 0x20;
}

/**
 * Parses the record at `off`. Returns the offset of the next record, or -1 if no valid
 * record starts here. Never throws.
 */
export function readRecord(buf: Buffer, off: number, out: DtlsRecord): number {
  if (off >= buf.length) return -1;
  const b0 = buf[off]!;
  if (isUnifiedHeader(b0)) {
    // RFC 9147 §4: 0 0 1 C S L E E. C: connection ID present (length unknown to us:
    // RFC 9146 CIDs are out of scope, key-escrow.md), S: 16-bit sequence number,
    // L: length field present, EE: low epoch bits.
    if (b0 & 0x10) return -1;
    const seqLen = b0 & 0x08 ? 2 : 1;
    const hasLen = (b0 & 0x04) !== 0;
    const hdrLen = 1 + seqLen + (hasLen ? 2 : 0);
    if (off + hdrLen > buf.length) return -1;
    const seq = seqLen === 2 ? buf.readUInt16BE(off + 1) : buf[off + 1]!;
    let end: number;
    if (hasLen) {
      const len = buf.readUInt16BE(off + 1 + seqLen);
      end = off + hdrLen + len;
      if (end > buf.length || len > MAX_FRAGMENT_LEN) return -1;
    } else {
      end = buf.length; // RFC 9147 §4: without L the record extends to the end of the datagram
    }
    out.unified = true;
    out.type = CT_APPLICATION_DATA;
    out.version = 0;
    out.epoch = b0 & 0x03;
    out.seq = seq;
    out.start = off;
    out.header = buf.subarray(off, off + hdrLen);
    out.fragment = buf.subarray(off + hdrLen, end);
    return end;
  }
  // RFC 6347 §4.1: DTLSPlaintext header. Content types 20..26 only; 25 (tls12_cid,
  // RFC 9146 §4) has a CID of negotiated length before the length field: not parsable here.
  if (b0 < CT_CHANGE_CIPHER_SPEC || b0 > CT_ACK || b0 === CT_TLS12_CID) return -1;
  if (off + RECORD_HEADER_LEN > buf.length) return -1;
  const version = buf.readUInt16BE(off + 1);
  if (buf[off + 1] !== 0xfe) return -1; // RFC 6347 §4.1: DTLS versions are 254.x
  const len = buf.readUInt16BE(off + 11);
  const end = off + RECORD_HEADER_LEN + len;
  if (end > buf.length || len > MAX_FRAGMENT_LEN) return -1;
  out.unified = false;
  out.type = b0;
  out.version = version;
  out.epoch = buf.readUInt16BE(off + 3);
  out.seq = buf.readUIntBE(off + 5, 6);
  out.start = off;
  out.header = buf.subarray(off, off + RECORD_HEADER_LEN);
  out.fragment = buf.subarray(off + RECORD_HEADER_LEN, end);
  return end;
}

/** All records of a datagram (allocating convenience for tools and tests). */
export function parseRecords(datagram: Buffer): DtlsRecord[] {
  const out: DtlsRecord[] = [];
  let off = 0;
  while (off < datagram.length) {
    const r = newRecord();
    const next = readRecord(datagram, off, r);
    if (next < 0) break;
    out.push(r);
    off = next;
  }
  return out;
}

export interface HandshakeHeader {
  msgType: number;
  /** Total message body length. */
  length: number;
  messageSeq: number;
  fragmentOffset: number;
  fragmentLength: number;
}

/**
 * RFC 6347 §4.2.2 handshake header at `off`; returns the offset of the fragment body,
 * or -1 if the header or fragment does not fit in `buf` or is inconsistent.
 */
export function readHandshakeHeader(buf: Buffer, off: number, out: HandshakeHeader): number {
  if (off + HANDSHAKE_HEADER_LEN > buf.length) return -1;
  out.msgType = buf[off]!;
  out.length = buf.readUIntBE(off + 1, 3);
  out.messageSeq = buf.readUInt16BE(off + 4);
  out.fragmentOffset = buf.readUIntBE(off + 6, 3);
  out.fragmentLength = buf.readUIntBE(off + 9, 3);
  const body = off + HANDSHAKE_HEADER_LEN;
  if (body + out.fragmentLength > buf.length) return -1;
  if (out.fragmentOffset + out.fragmentLength > out.length) return -1;
  return body;
}

export interface HandshakeMessage {
  msgType: number;
  messageSeq: number;
  body: Buffer;
}

interface Partial {
  msgType: number;
  messageSeq: number;
  body: Buffer;
  /** Sorted, merged [start, end) ranges received. */
  ranges: number[];
}

/**
 * Reassembles fragmented handshake messages (RFC 6347 §4.2.3). Every completed message is
 * returned (retransmissions included; deduplication is the caller's business). Caps:
 * messages longer than `maxMessageLen` and types not accepted by `wanted` are skipped;
 * at most `maxPartial` messages are in progress (the oldest is dropped).
 */
export class HandshakeReassembler {
  private partials: Partial[] = [];
  /** Count of fragments dropped by the caps (for diagnostics). */
  dropped = 0;

  constructor(
    private readonly maxMessageLen = 16384,
    private readonly maxPartial = 4,
    private readonly wanted: (msgType: number) => boolean = () => true,
  ) {}

  /**
   * Adds one fragment. `fragment` is the fragment body as described by `h`. Returns the
   * complete message when this fragment completes it (or is itself complete), else null.
   */
  add(h: HandshakeHeader, fragment: Buffer): HandshakeMessage | null {
    if (!this.wanted(h.msgType)) return null;
    if (h.length > this.maxMessageLen) {
      this.dropped++;
      return null;
    }
    if (h.fragmentOffset === 0 && h.fragmentLength === h.length) {
      return { msgType: h.msgType, messageSeq: h.messageSeq, body: fragment.subarray(0, h.length) };
    }
    let p = this.partials.find((x) => x.messageSeq === h.messageSeq && x.msgType === h.msgType && x.body.length === h.length);
    if (!p) {
      if (this.partials.length >= this.maxPartial) {
        this.partials.shift();
        this.dropped++;
      }
      p = { msgType: h.msgType, messageSeq: h.messageSeq, body: Buffer.alloc(h.length), ranges: [] };
      this.partials.push(p);
    }
    fragment.copy(p.body, h.fragmentOffset, 0, h.fragmentLength);
    p.ranges = mergeRange(p.ranges, h.fragmentOffset, h.fragmentOffset + h.fragmentLength);
    if (p.ranges.length === 2 && p.ranges[0] === 0 && p.ranges[1] === h.length) {
      this.partials.splice(this.partials.indexOf(p), 1);
      return { msgType: p.msgType, messageSeq: p.messageSeq, body: p.body };
    }
    return null;
  }

  reset(): void {
    this.partials = [];
  }
}

function mergeRange(ranges: number[], s: number, e: number): number[] {
  if (e <= s) return ranges;
  const out: number[] = [];
  let placed = false;
  for (let i = 0; i < ranges.length; i += 2) {
    const a = ranges[i]!;
    const b = ranges[i + 1]!;
    if (b < s) out.push(a, b);
    else if (a > e) {
      if (!placed) {
        out.push(s, e);
        placed = true;
      }
      out.push(a, b);
    } else {
      s = Math.min(s, a);
      e = Math.max(e, b);
    }
  }
  if (!placed) out.push(s, e);
  return out;
}

/** IANA TLS extension types used here. */
export const EXT_USE_SRTP = 14; // RFC 5764 §9
export const EXT_ENCRYPT_THEN_MAC = 22; // RFC 7366 §2
export const EXT_EXTENDED_MASTER_SECRET = 23; // RFC 7627 §5.1
export const EXT_SUPPORTED_VERSIONS = 43; // RFC 8446 §4.2.1
export const EXT_CONNECTION_ID = 54; // RFC 9146 §3
export const EXT_RENEGOTIATION_INFO = 0xff01; // RFC 5746 §3.2

/** RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest. */
export const HELLO_RETRY_REQUEST_RANDOM = Buffer.from('cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c', 'hex');

export interface HelloExtensions {
  /** use_srtp protection profiles (RFC 5764 §4.1.1); empty when absent. */
  srtpProfiles: number[];
  /** srtp_mki (RFC 5764 §4.1.1), when use_srtp is present. */
  srtpMki?: Buffer;
  /** encrypt_then_mac present (RFC 7366 §2). */
  encryptThenMac: boolean;
  /** extended_master_secret present (RFC 7627 §5.1). */
  extendedMasterSecret: boolean;
  /** supported_versions (RFC 8446 §4.2.1): the client's list or the server's single selection. */
  supportedVersions: number[];
  /** connection_id present (RFC 9146 §3). */
  connectionId: boolean;
  /** All extension types in order of appearance. */
  types: number[];
}

export interface ClientHello extends HelloExtensions {
  legacyVersion: number;
  random: Buffer;
  sessionId: Buffer;
  /** RFC 6347 §4.2.1: empty in the first ClientHello, the HelloVerifyRequest cookie in the second. */
  cookie: Buffer;
  cipherSuites: number[];
}

export interface ServerHello extends HelloExtensions {
  legacyVersion: number;
  random: Buffer;
  sessionId: Buffer;
  cipherSuite: number;
  compressionMethod: number;
  /** RFC 8446 §4.1.3 / RFC 9147 §5.3: a HelloRetryRequest, not a real ServerHello. */
  helloRetryRequest: boolean;
  /** The negotiated version: supported_versions selection if present (DTLS 1.3), else legacyVersion. */
  version: number;
}

export interface HelloVerifyRequest {
  serverVersion: number;
  cookie: Buffer;
}

/** Small bounds-checked reader; every method returns -1/null past the end. */
class Reader {
  constructor(
    readonly b: Buffer,
    public o = 0,
    readonly end = b.length,
  ) {}
  u8(): number {
    return this.o + 1 <= this.end ? this.b[this.o++]! : -1;
  }
  u16(): number {
    if (this.o + 2 > this.end) return -1;
    const v = this.b.readUInt16BE(this.o);
    this.o += 2;
    return v;
  }
  bytes(n: number): Buffer | null {
    if (n < 0 || this.o + n > this.end) return null;
    const v = this.b.subarray(this.o, this.o + n);
    this.o += n;
    return v;
  }
  left(): number {
    return this.end - this.o;
  }
}

/** RFC 5246 §7.4.1.4: Extension extensions<0..2^16-1>; returns false when malformed. */
function parseExtensions(r: Reader, out: HelloExtensions, server: boolean): boolean {
  if (r.left() === 0) return true; // extensions are optional (RFC 5246 §7.4.1.2)
  const total = r.u16();
  if (total < 0 || total > r.left()) return false;
  const end = r.o + total;
  while (r.o < end) {
    const type = r.u16();
    const len = r.u16();
    const data = len >= 0 && r.o + len <= end ? r.bytes(len) : null;
    if (type < 0 || !data) return false;
    out.types.push(type);
    const x = new Reader(data);
    switch (type) {
      case EXT_USE_SRTP: {
        // RFC 5764 §4.1.1: SRTPProtectionProfile SRTPProtectionProfiles<2..2^16-1>; opaque srtp_mki<0..255>
        const n = x.u16();
        if (n < 2 || n % 2 !== 0 || n > x.left()) return false;
        for (let i = 0; i < n; i += 2) out.srtpProfiles.push(x.u16());
        const mkiLen = x.u8();
        const mki = mkiLen >= 0 ? x.bytes(mkiLen) : null;
        if (!mki) return false;
        out.srtpMki = Buffer.from(mki);
        break;
      }
      case EXT_ENCRYPT_THEN_MAC:
        out.encryptThenMac = true; // RFC 7366 §2: empty extension_data
        break;
      case EXT_EXTENDED_MASTER_SECRET:
        out.extendedMasterSecret = true; // RFC 7627 §5.1: empty extension_data
        break;
      case EXT_SUPPORTED_VERSIONS:
        if (server) {
          // RFC 8446 §4.2.1: ServerHello carries ProtocolVersion selected_version
          const v = x.u16();
          if (v < 0) return false;
          out.supportedVersions.push(v);
        } else {
          // ClientHello: ProtocolVersion versions<2..254>
          const n = x.u8();
          if (n < 2 || n % 2 !== 0 || n > x.left()) return false;
          for (let i = 0; i < n; i += 2) out.supportedVersions.push(x.u16());
        }
        break;
      case EXT_CONNECTION_ID:
        out.connectionId = true;
        break;
      default:
        break; // unknown extensions are ignored (RFC 5246 §7.4.1.4)
    }
  }
  return r.o === end;
}

function emptyExt(): HelloExtensions {
  return {
    srtpProfiles: [],
    encryptThenMac: false,
    extendedMasterSecret: false,
    supportedVersions: [],
    connectionId: false,
    types: [],
  };
}

/**
 * RFC 6347 §4.2.1 / RFC 5246 §7.4.1.2 ClientHello body: client_version, random(32),
 * session_id<0..32>, cookie<0..2^8-1>, cipher_suites<2..2^16-2>,
 * compression_methods<1..2^8-1>, extensions. Returns null when malformed. The random,
 * session id and cookie are copies (safe to keep).
 */
export function parseClientHello(body: Buffer): ClientHello | null {
  const r = new Reader(body);
  const legacyVersion = r.u16();
  const random = r.bytes(32);
  const sidLen = r.u8();
  const sessionId = sidLen >= 0 && sidLen <= 32 ? r.bytes(sidLen) : null;
  const cookieLen = r.u8();
  const cookie = cookieLen >= 0 ? r.bytes(cookieLen) : null;
  const csLen = r.u16();
  if (legacyVersion < 0 || !random || !sessionId || !cookie || csLen < 2 || csLen % 2 !== 0 || csLen > r.left()) return null;
  const cipherSuites: number[] = [];
  for (let i = 0; i < csLen; i += 2) cipherSuites.push(r.u16());
  const cmLen = r.u8();
  if (cmLen < 1 || !r.bytes(cmLen)) return null;
  const ext = emptyExt();
  // RFC 5246 §7.4.1.2: nothing may follow the extensions block.
  if (!parseExtensions(r, ext, false) || r.left() !== 0) return null;
  return {
    ...ext,
    legacyVersion,
    random: Buffer.from(random),
    sessionId: Buffer.from(sessionId),
    cookie: Buffer.from(cookie),
    cipherSuites,
  };
}

/**
 * RFC 5246 §7.4.1.3 ServerHello body: server_version, random(32), session_id<0..32>,
 * cipher_suite, compression_method, extensions (RFC 8446 §4.1.3 for DTLS 1.3, whose real
 * version is in supported_versions). Returns null when malformed.
 */
export function parseServerHello(body: Buffer): ServerHello | null {
  const r = new Reader(body);
  const legacyVersion = r.u16();
  const random = r.bytes(32);
  const sidLen = r.u8();
  const sessionId = sidLen >= 0 && sidLen <= 32 ? r.bytes(sidLen) : null;
  const cipherSuite = r.u16();
  const compressionMethod = r.u8();
  if (legacyVersion < 0 || !random || !sessionId || cipherSuite < 0 || compressionMethod < 0) return null;
  const ext = emptyExt();
  if (!parseExtensions(r, ext, true) || r.left() !== 0) return null;
  return {
    ...ext,
    legacyVersion,
    random: Buffer.from(random),
    sessionId: Buffer.from(sessionId),
    cipherSuite,
    compressionMethod,
    helloRetryRequest: random.equals(HELLO_RETRY_REQUEST_RANDOM),
    version: ext.supportedVersions.length === 1 ? ext.supportedVersions[0]! : legacyVersion,
  };
}

/** RFC 6347 §4.2.1: HelloVerifyRequest = server_version, cookie<0..2^8-1>. */
export function parseHelloVerifyRequest(body: Buffer): HelloVerifyRequest | null {
  const r = new Reader(body);
  const serverVersion = r.u16();
  const n = r.u8();
  const cookie = n >= 0 ? r.bytes(n) : null;
  if (serverVersion < 0 || !cookie) return null;
  return { serverVersion, cookie: Buffer.from(cookie) };
}

/**
 * RFC 8446 §4.3.1 EncryptedExtensions body: Extension extensions<0..2^16-1>. In DTLS 1.3
 * the server's use_srtp answer (RFC 5764 §4.1.1) is here, not in the ServerHello.
 */
export function parseEncryptedExtensions(body: Buffer): HelloExtensions | null {
  const r = new Reader(body);
  if (r.left() < 2) return null;
  const ext = emptyExt();
  if (!parseExtensions(r, ext, true) || r.left() !== 0) return null;
  return ext;
}
