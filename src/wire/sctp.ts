/**
 * SCTP packet codec (RFC 4960 / RFC 9260), as carried over DTLS for WebRTC data
 * channels (RFC 8261: one SCTP packet per DTLS application_data record, no IP header).
 *
 * Pure: no I/O, no clocks. Decoders return null for malformed input and never throw.
 * Decoded `Buffer` fields are subarrays of the input (zero copy); callers that keep
 * them beyond the input's lifetime must copy.
 *
 * Also includes small encoders (used by tests and tools to build packets from the RFC
 * formats).
 */
import { crc32cFinal, crc32cInit, crc32cUpdate, crc32cZeros } from './crc32c.js';
import { loadNative } from './native.js';

// RFC 9260 §3.2 chunk types; RFC 8260 (I-DATA, I-FORWARD-TSN), RFC 3758 (FORWARD-TSN),
// RFC 6525 (RE-CONFIG), RFC 4895 (AUTH), RFC 5061 (ASCONF), RFC 4820 (PAD).
export const ChunkType = {
  DATA: 0,
  INIT: 1,
  INIT_ACK: 2,
  SACK: 3,
  HEARTBEAT: 4,
  HEARTBEAT_ACK: 5,
  ABORT: 6,
  SHUTDOWN: 7,
  SHUTDOWN_ACK: 8,
  ERROR: 9,
  COOKIE_ECHO: 10,
  COOKIE_ACK: 11,
  ECNE: 12,
  CWR: 13,
  SHUTDOWN_COMPLETE: 14,
  AUTH: 15,
  I_DATA: 64,
  ASCONF_ACK: 0x80,
  RE_CONFIG: 130,
  PAD: 132,
  FORWARD_TSN: 192,
  ASCONF: 0xc1,
  I_FORWARD_TSN: 194,
} as const;

// RFC 9260 §3.3.2.1 / RFC 3758 §3.1 / RFC 5061 §4.2.7 parameter types (INIT / INIT-ACK).
export const ParamType = {
  HEARTBEAT_INFO: 1,
  IPV4: 5,
  IPV6: 6,
  STATE_COOKIE: 7,
  UNRECOGNIZED: 8,
  COOKIE_PRESERVATIVE: 9,
  HOSTNAME: 11,
  SUPPORTED_ADDRESS_TYPES: 12,
  // RFC 6525 §4: RE-CONFIG parameters
  OUTGOING_SSN_RESET: 13,
  INCOMING_SSN_RESET: 14,
  SSN_TSN_RESET: 15,
  RECONFIG_RESPONSE: 16,
  ADD_OUTGOING_STREAMS: 17,
  ADD_INCOMING_STREAMS: 18,
  ECN_CAPABLE: 0x8000,
  ZERO_CHECKSUM_ACCEPTABLE: 0x8001, // RFC 9653 §5.1
  RANDOM: 0x8002, // RFC 4895 §3.1
  CHUNK_LIST: 0x8003, // RFC 4895 §3.2
  HMAC_ALGO: 0x8004, // RFC 4895 §3.3
  PADDING: 0x8005, // RFC 4820 §4
  SUPPORTED_EXTENSIONS: 0x8008, // RFC 5061 §4.2.7
  FORWARD_TSN_SUPPORTED: 0xc000, // RFC 3758 §3.1
} as const;

export const SCTP_COMMON_HEADER_LEN = 12; // RFC 9260 §3.1
export const CHUNK_HEADER_LEN = 4; // RFC 9260 §3.2

// ---------------------------------------------------------------------------------
// Serial number arithmetic for 32-bit TSNs (RFC 1982 §3.2; RFC 9260 §1.6).

/** a < b in 32-bit serial arithmetic. Undefined (false) when the distance is exactly 2^31. */
export function tsnLt(a: number, b: number): boolean {
  const d = (b - a) >>> 0;
  return d !== 0 && d < 0x80000000;
}
export function tsnLte(a: number, b: number): boolean {
  return a >>> 0 === b >>> 0 || tsnLt(a, b);
}
/** (b - a) mod 2^32 as a signed distance (RFC 1982). */
export function tsnDiff(a: number, b: number): number {
  return (b - a) | 0;
}
export function tsnAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}
/** 16-bit serial compare for SSNs (RFC 1982 with SERIAL_BITS = 16). */
export function ssnLt(a: number, b: number): boolean {
  const d = (b - a) & 0xffff;
  return d !== 0 && d < 0x8000;
}

// ---------------------------------------------------------------------------------
// Common header and checksum (RFC 9260 §3.1, §6.8).

export interface SctpHeader {
  srcPort: number;
  dstPort: number;
  verificationTag: number;
  /** The checksum as transmitted (RFC 9260 App. B: CRC32c, least significant byte first). */
  checksum: number;
}

export function parseSctpHeader(pkt: Buffer): SctpHeader | null {
  if (pkt.length < SCTP_COMMON_HEADER_LEN) return null;
  return {
    srcPort: pkt.readUInt16BE(0),
    dstPort: pkt.readUInt16BE(2),
    verificationTag: pkt.readUInt32BE(4),
    checksum: pkt.readUInt32LE(8),
  };
}

/**
 * CRC32c of the packet computed with the checksum field taken as zero
 * (RFC 9260 §6.8: "fill in the proper Verification Tag ... set the checksum field to 0's,
 * calculate the CRC32c ... over the whole packet"). No copy.
 */
export function computeSctpChecksum(pkt: Buffer): number {
  if (pkt.length < SCTP_COMMON_HEADER_LEN) return 0;
  // The addon's CRC32c (SSE4.2 where the CPU has it) gives the same value; every inspected
  // data-channel record is checksummed, so this is on the hot path.
  const native = loadNative()?.sctpChecksum;
  if (native) return native(pkt);
  let r = crc32cInit();
  r = crc32cUpdate(r, pkt, 0, 8);
  r = crc32cZeros(r, 4);
  r = crc32cUpdate(r, pkt, 12, pkt.length);
  return crc32cFinal(r);
}

/** RFC 9260 §6.8 / App. B: the CRC32c is stored least significant byte first. */
export function verifySctpChecksum(pkt: Buffer): boolean {
  if (pkt.length < SCTP_COMMON_HEADER_LEN) return false;
  return pkt.readUInt32LE(8) === computeSctpChecksum(pkt);
}

// ---------------------------------------------------------------------------------
// Chunk iteration (RFC 9260 §3.2).

/**
 * Allocation-free chunk iterator. `reset(pkt)` then `while (it.next()) { it.type ... }`.
 * Chunk Length includes the 4-byte header but not the padding; chunks are padded to
 * 4 bytes (RFC 9260 §3.2). A chunk shorter than 4 or running past the packet stops the
 * iteration and sets `malformed`. A missing pad after the last chunk is tolerated.
 */
export class ChunkIterator {
  pkt: Buffer = Buffer.alloc(0);
  pos = SCTP_COMMON_HEADER_LEN;
  type = 0;
  flags = 0;
  /** Chunk Length field (header + value, no padding). */
  length = 0;
  /** Offset of the chunk header in the packet. */
  offset = 0;
  malformed = false;
  count = 0;
  maxChunks: number;

  constructor(maxChunks = 1024) {
    this.maxChunks = maxChunks;
  }

  reset(pkt: Buffer, start = SCTP_COMMON_HEADER_LEN): this {
    this.pkt = pkt;
    this.pos = start;
    this.malformed = false;
    this.count = 0;
    return this;
  }

  next(): boolean {
    const p = this.pkt;
    if (this.pos + CHUNK_HEADER_LEN > p.length) {
      if (this.pos < p.length) {
        // Trailing bytes that are not all zero padding are malformed.
        for (let i = this.pos; i < p.length; i++) if (p[i] !== 0) this.malformed = true;
      }
      return false;
    }
    if (this.count >= this.maxChunks) {
      this.malformed = true;
      return false;
    }
    const len = p.readUInt16BE(this.pos + 2);
    if (len < CHUNK_HEADER_LEN || this.pos + len > p.length) {
      this.malformed = true;
      this.pos = p.length;
      return false;
    }
    this.offset = this.pos;
    this.type = p[this.pos]!;
    this.flags = p[this.pos + 1]!;
    this.length = len;
    this.pos += (len + 3) & ~3; // RFC 9260 §3.2: padded to a multiple of 4 bytes
    this.count++;
    return true;
  }

  /** The chunk value (after the 4-byte header, without padding); subarray, no copy. */
  value(): Buffer {
    return this.pkt.subarray(this.offset + CHUNK_HEADER_LEN, this.offset + this.length);
  }
}

export interface RawChunk {
  type: number;
  flags: number;
  value: Buffer;
}

/** Convenience: all chunks of a packet (after the common header). Malformed tail is dropped. */
export function parseChunks(pkt: Buffer): { chunks: RawChunk[]; malformed: boolean } {
  const it = new ChunkIterator().reset(pkt);
  const chunks: RawChunk[] = [];
  while (it.next()) chunks.push({ type: it.type, flags: it.flags, value: it.value() });
  return { chunks, malformed: it.malformed };
}

// ---------------------------------------------------------------------------------
// Chunk decoders. `v` is the chunk value (after the 4-byte chunk header).

export interface DataChunk {
  tsn: number;
  stream: number;
  /** SSN for DATA; for I-DATA this is 0 (I-DATA has no SSN). */
  ssn: number;
  /** For I-DATA fragments without B the PPID is not transmitted: 0 here (see fsn). */
  ppid: number;
  /** RFC 8260: Message Identifier (I-DATA only; 0 for DATA). */
  mid: number;
  /** RFC 8260: Fragment Sequence Number (I-DATA only; 0 for B fragments and DATA). */
  fsn: number;
  unordered: boolean;
  begin: boolean;
  end: boolean;
  immediate: boolean;
  idata: boolean;
  data: Buffer;
}

// RFC 9260 §3.3.1 DATA flags: I (RFC 7053) bit 3, U bit 2, B bit 1, E bit 0.
const FLAG_E = 0x01;
const FLAG_B = 0x02;
const FLAG_U = 0x04;
const FLAG_I = 0x08;

/**
 * RFC 9260 §3.3.1 DATA: TSN(4) Stream Identifier(2) SSN(2) PPID(4) User Data.
 * A DATA chunk with no user data is a protocol violation (§6.2) → null.
 */
export function decodeData(flags: number, v: Buffer): DataChunk | null {
  if (v.length < 12 + 1) return null;
  return {
    tsn: v.readUInt32BE(0),
    stream: v.readUInt16BE(4),
    ssn: v.readUInt16BE(6),
    ppid: v.readUInt32BE(8),
    mid: 0,
    fsn: 0,
    unordered: (flags & FLAG_U) !== 0,
    begin: (flags & FLAG_B) !== 0,
    end: (flags & FLAG_E) !== 0,
    immediate: (flags & FLAG_I) !== 0,
    idata: false,
    data: v.subarray(12),
  };
}

/**
 * RFC 8260 §2.1 I-DATA: TSN(4) Stream Identifier(2) Reserved(2) MID(4)
 * PPID / FSN(4) User Data. The fourth word is the PPID when B is set (FSN is then 0),
 * otherwise the FSN.
 */
export function decodeIData(flags: number, v: Buffer): DataChunk | null {
  if (v.length < 16 + 1) return null;
  const begin = (flags & FLAG_B) !== 0;
  const w = v.readUInt32BE(12);
  return {
    tsn: v.readUInt32BE(0),
    stream: v.readUInt16BE(4),
    ssn: 0,
    mid: v.readUInt32BE(8),
    ppid: begin ? w : 0,
    fsn: begin ? 0 : w,
    unordered: (flags & FLAG_U) !== 0,
    begin,
    end: (flags & FLAG_E) !== 0,
    immediate: (flags & FLAG_I) !== 0,
    idata: true,
    data: v.subarray(16),
  };
}

export interface Tlv {
  type: number;
  value: Buffer;
}

/**
 * RFC 9260 §3.2.1 TLV parameters / error causes: Type(2) Length(2, incl. header) Value,
 * padded to 4 bytes. Stops (returns what was parsed) at a malformed entry.
 */
export function decodeTlvs(v: Buffer, max = 256): { tlvs: Tlv[]; malformed: boolean } {
  const tlvs: Tlv[] = [];
  let pos = 0;
  while (pos + 4 <= v.length) {
    if (tlvs.length >= max) return { tlvs, malformed: true };
    const type = v.readUInt16BE(pos);
    const len = v.readUInt16BE(pos + 2);
    if (len < 4 || pos + len > v.length) return { tlvs, malformed: true };
    tlvs.push({ type, value: v.subarray(pos + 4, pos + len) });
    pos += (len + 3) & ~3;
  }
  return { tlvs, malformed: false };
}

export interface InitChunk {
  initiateTag: number;
  aRwnd: number;
  outboundStreams: number;
  inboundStreams: number;
  initialTsn: number;
  params: Tlv[];
  /** RFC 5061 §4.2.7 Supported Extensions parameter: chunk types. */
  supportedExtensions: number[];
  /** RFC 3758 §3.1 Forward-TSN-Supported parameter present (or FORWARD-TSN in extensions). */
  forwardTsn: boolean;
  /** RFC 8260 §2.2: I-DATA listed in Supported Extensions. */
  idata: boolean;
  /** RFC 6525 §5: RE-CONFIG listed in Supported Extensions. */
  reconfig: boolean;
  /**
   * RFC 9653 §5.1 Zero Checksum Acceptable parameter present: the sender of this INIT
   * accepts packets whose checksum field is 0 (EDMID 1 = SCTP over DTLS, §7).
   */
  zeroChecksum: boolean;
  /** INIT-ACK only (RFC 9260 §3.3.3): State Cookie parameter. */
  stateCookie: Buffer | null;
}

/**
 * RFC 9260 §3.3.2 INIT / §3.3.3 INIT ACK fixed part: Initiate Tag(4) a_rwnd(4)
 * OS(2) MIS(2) Initial TSN(4), then parameters. §3.3.2: Initiate Tag must not be 0,
 * OS and MIS must not be 0 → null.
 */
export function decodeInit(v: Buffer): InitChunk | null {
  if (v.length < 16) return null;
  const initiateTag = v.readUInt32BE(0);
  const outboundStreams = v.readUInt16BE(8);
  const inboundStreams = v.readUInt16BE(10);
  if (initiateTag === 0 || outboundStreams === 0 || inboundStreams === 0) return null;
  const { tlvs } = decodeTlvs(v.subarray(16));
  const ext: number[] = [];
  let forwardTsn = false;
  let stateCookie: Buffer | null = null;
  let zeroChecksum = false;
  for (const p of tlvs) {
    if (p.type === ParamType.ZERO_CHECKSUM_ACCEPTABLE) zeroChecksum = true;
    if (p.type === ParamType.SUPPORTED_EXTENSIONS) for (const b of p.value) ext.push(b);
    else if (p.type === ParamType.FORWARD_TSN_SUPPORTED) forwardTsn = true;
    else if (p.type === ParamType.STATE_COOKIE) stateCookie = p.value;
  }
  if (ext.includes(ChunkType.FORWARD_TSN)) forwardTsn = true;
  return {
    initiateTag,
    aRwnd: v.readUInt32BE(4),
    outboundStreams,
    inboundStreams,
    initialTsn: v.readUInt32BE(12),
    params: tlvs,
    supportedExtensions: ext,
    forwardTsn,
    idata: ext.includes(ChunkType.I_DATA),
    reconfig: ext.includes(ChunkType.RE_CONFIG),
    zeroChecksum,
    stateCookie,
  };
}

export interface SackChunk {
  cumTsnAck: number;
  aRwnd: number;
  /** Gap Ack Blocks as [start, end] offsets from cumTsnAck (RFC 9260 §3.3.4). */
  gapBlocks: Array<[number, number]>;
  dupTsns: number[];
}

/**
 * RFC 9260 §3.3.4 SACK: Cumulative TSN Ack(4) a_rwnd(4) #Gap Blocks(2) #Dup TSNs(2),
 * Gap Ack Blocks (start(2), end(2)), Duplicate TSNs(4). Counts exceeding the chunk → null.
 */
export function decodeSack(v: Buffer): SackChunk | null {
  if (v.length < 12) return null;
  const nGap = v.readUInt16BE(8);
  const nDup = v.readUInt16BE(10);
  if (12 + nGap * 4 + nDup * 4 > v.length) return null;
  const gapBlocks: Array<[number, number]> = [];
  let p = 12;
  for (let i = 0; i < nGap; i++, p += 4) gapBlocks.push([v.readUInt16BE(p), v.readUInt16BE(p + 2)]);
  const dupTsns: number[] = [];
  for (let i = 0; i < nDup; i++, p += 4) dupTsns.push(v.readUInt32BE(p));
  return { cumTsnAck: v.readUInt32BE(0), aRwnd: v.readUInt32BE(4), gapBlocks, dupTsns };
}

export interface ForwardTsnChunk {
  newCumTsn: number;
  /** FORWARD-TSN: (stream, ssn). I-FORWARD-TSN: (stream, unordered, mid). */
  streams: Array<{ stream: number; ssn: number; unordered: boolean; mid: number }>;
  iforward: boolean;
}

/** RFC 3758 §3.2 FORWARD TSN: New Cumulative TSN(4), then Stream(2) Stream Sequence(2) pairs. */
export function decodeForwardTsn(v: Buffer): ForwardTsnChunk | null {
  if (v.length < 4 || (v.length - 4) % 4 !== 0) return null;
  const streams: ForwardTsnChunk['streams'] = [];
  for (let p = 4; p + 4 <= v.length; p += 4) {
    streams.push({ stream: v.readUInt16BE(p), ssn: v.readUInt16BE(p + 2), unordered: false, mid: 0 });
  }
  return { newCumTsn: v.readUInt32BE(0), streams, iforward: false };
}

/**
 * RFC 8260 §2.3.1 I-FORWARD-TSN: New Cumulative TSN(4), then entries of
 * Stream Identifier(2), Reserved(15 bits) + U(1 bit), Message Identifier(4).
 */
export function decodeIForwardTsn(v: Buffer): ForwardTsnChunk | null {
  if (v.length < 4 || (v.length - 4) % 8 !== 0) return null;
  const streams: ForwardTsnChunk['streams'] = [];
  for (let p = 4; p + 8 <= v.length; p += 8) {
    streams.push({
      stream: v.readUInt16BE(p),
      ssn: 0,
      unordered: (v.readUInt16BE(p + 2) & 1) !== 0,
      mid: v.readUInt32BE(p + 4),
    });
  }
  return { newCumTsn: v.readUInt32BE(0), streams, iforward: true };
}

export interface AbortChunk {
  /** RFC 9260 §3.3.7 T bit: the verification tag is reflected. */
  tBit: boolean;
  causes: Tlv[];
}

/** RFC 9260 §3.3.7 ABORT (and §3.3.10 ERROR): zero or more error causes. */
export function decodeAbort(flags: number, v: Buffer): AbortChunk {
  return { tBit: (flags & 1) !== 0, causes: decodeTlvs(v).tlvs };
}

/** RFC 9260 §3.3.8 SHUTDOWN: Cumulative TSN Ack(4). */
export function decodeShutdown(v: Buffer): { cumTsnAck: number } | null {
  if (v.length !== 4) return null;
  return { cumTsnAck: v.readUInt32BE(0) };
}

/**
 * RFC 9260 §3.3.5 HEARTBEAT / §3.3.6 HEARTBEAT ACK: one Heartbeat Info TLV (type 1).
 */
export function decodeHeartbeat(v: Buffer): { info: Buffer } | null {
  const { tlvs } = decodeTlvs(v, 4);
  const p = tlvs.find((x) => x.type === ParamType.HEARTBEAT_INFO);
  return p ? { info: p.value } : null;
}

/** RFC 9260 §3.3.11 COOKIE ECHO: the cookie from the INIT ACK, opaque. */
export function decodeCookieEcho(v: Buffer): { cookie: Buffer } | null {
  return v.length > 0 ? { cookie: v } : null;
}

export type ReconfigParam =
  | { kind: 'outgoing-reset'; reqSeq: number; respSeq: number; lastTsn: number; streams: number[] }
  | { kind: 'incoming-reset'; reqSeq: number; streams: number[] }
  | { kind: 'ssn-tsn-reset'; reqSeq: number }
  | { kind: 'response'; respSeq: number; result: number; senderNextTsn?: number; receiverNextTsn?: number }
  | { kind: 'add-outgoing'; reqSeq: number; newStreams: number }
  | { kind: 'add-incoming'; reqSeq: number; newStreams: number }
  | { kind: 'unknown'; type: number; value: Buffer };

function streamList(v: Buffer, from: number): number[] | null {
  if ((v.length - from) % 2 !== 0) return null;
  const out: number[] = [];
  for (let p = from; p + 2 <= v.length; p += 2) out.push(v.readUInt16BE(p));
  return out;
}

/**
 * RFC 6525 §3.1 RE-CONFIG chunk: one or two parameters (§4). Malformed parameters are
 * skipped; returns null only when the chunk's TLV framing is broken before any parameter.
 */
export function decodeReconfig(v: Buffer): { params: ReconfigParam[] } | null {
  const { tlvs, malformed } = decodeTlvs(v, 8);
  if (tlvs.length === 0 && malformed) return null;
  const params: ReconfigParam[] = [];
  for (const { type, value: p } of tlvs) {
    switch (type) {
      case ParamType.OUTGOING_SSN_RESET: {
        // RFC 6525 §4.1: Req Seq(4) Resp Seq(4) Sender's Last Assigned TSN(4) Streams(2)*
        if (p.length < 12) break;
        const streams = streamList(p, 12);
        if (!streams) break;
        params.push({
          kind: 'outgoing-reset',
          reqSeq: p.readUInt32BE(0),
          respSeq: p.readUInt32BE(4),
          lastTsn: p.readUInt32BE(8),
          streams,
        });
        break;
      }
      case ParamType.INCOMING_SSN_RESET: {
        // RFC 6525 §4.2: Req Seq(4) Streams(2)*
        if (p.length < 4) break;
        const streams = streamList(p, 4);
        if (!streams) break;
        params.push({ kind: 'incoming-reset', reqSeq: p.readUInt32BE(0), streams });
        break;
      }
      case ParamType.SSN_TSN_RESET: // RFC 6525 §4.3
        if (p.length === 4) params.push({ kind: 'ssn-tsn-reset', reqSeq: p.readUInt32BE(0) });
        break;
      case ParamType.RECONFIG_RESPONSE: {
        // RFC 6525 §4.4: Resp Seq(4) Result(4) [Sender's Next TSN(4) Receiver's Next TSN(4)]
        if (p.length !== 8 && p.length !== 16) break;
        const r: ReconfigParam = { kind: 'response', respSeq: p.readUInt32BE(0), result: p.readUInt32BE(4) };
        if (p.length === 16) {
          r.senderNextTsn = p.readUInt32BE(8);
          r.receiverNextTsn = p.readUInt32BE(12);
        }
        params.push(r);
        break;
      }
      case ParamType.ADD_OUTGOING_STREAMS: // RFC 6525 §4.5: Req Seq(4) #New Streams(2) Reserved(2)
      case ParamType.ADD_INCOMING_STREAMS: // RFC 6525 §4.6
        if (p.length !== 8) break;
        params.push({
          kind: type === ParamType.ADD_OUTGOING_STREAMS ? 'add-outgoing' : 'add-incoming',
          reqSeq: p.readUInt32BE(0),
          newStreams: p.readUInt16BE(4),
        });
        break;
      default:
        params.push({ kind: 'unknown', type, value: p });
    }
  }
  return { params };
}

// ---------------------------------------------------------------------------------
// Encoders (RFC formats; used by tests and tooling).

function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** A chunk with header (RFC 9260 §3.2), padded to 4 bytes. */
export function encodeChunk(type: number, flags: number, value: Buffer): Buffer {
  const out = Buffer.alloc(pad4(4 + value.length));
  out[0] = type;
  out[1] = flags;
  out.writeUInt16BE(4 + value.length, 2);
  value.copy(out, 4);
  return out;
}

/**
 * Encodes a TLV parameter (RFC 9260 §3.2.1). The padding of the last parameter of a
 * chunk is not counted in the chunk length, so pass pad=false for it.
 */
export function encodeTlv(type: number, value: Buffer, pad = true): Buffer {
  const out = Buffer.alloc(pad ? pad4(4 + value.length) : 4 + value.length);
  out.writeUInt16BE(type, 0);
  out.writeUInt16BE(4 + value.length, 2);
  value.copy(out, 4);
  return out;
}

/** A full packet: common header + chunks, with the CRC32c filled in (RFC 9260 §6.8). */
export function encodeSctpPacket(srcPort: number, dstPort: number, vtag: number, chunks: Buffer[]): Buffer {
  const pkt = Buffer.concat([Buffer.alloc(12), ...chunks]);
  pkt.writeUInt16BE(srcPort, 0);
  pkt.writeUInt16BE(dstPort, 2);
  pkt.writeUInt32BE(vtag >>> 0, 4);
  pkt.writeUInt32LE(computeSctpChecksum(pkt), 8);
  return pkt;
}

export interface DataChunkInit {
  tsn: number;
  stream: number;
  ssn?: number;
  ppid?: number;
  mid?: number;
  fsn?: number;
  unordered?: boolean;
  begin?: boolean;
  end?: boolean;
  data: Buffer;
}

function dataFlags(d: DataChunkInit): number {
  return (d.unordered ? FLAG_U : 0) | ((d.begin ?? true) ? FLAG_B : 0) | ((d.end ?? true) ? FLAG_E : 0);
}

/** RFC 9260 §3.3.1 DATA chunk. B and E default to true (unfragmented). */
export function encodeDataChunk(d: DataChunkInit): Buffer {
  const v = Buffer.alloc(12 + d.data.length);
  v.writeUInt32BE(d.tsn >>> 0, 0);
  v.writeUInt16BE(d.stream, 4);
  v.writeUInt16BE((d.ssn ?? 0) & 0xffff, 6);
  v.writeUInt32BE((d.ppid ?? 0) >>> 0, 8);
  d.data.copy(v, 12);
  return encodeChunk(ChunkType.DATA, dataFlags(d), v);
}

/** RFC 8260 §2.1 I-DATA chunk: PPID when B is set, else FSN. */
export function encodeIDataChunk(d: DataChunkInit): Buffer {
  const v = Buffer.alloc(16 + d.data.length);
  v.writeUInt32BE(d.tsn >>> 0, 0);
  v.writeUInt16BE(d.stream, 4);
  v.writeUInt32BE((d.mid ?? 0) >>> 0, 8);
  const begin = d.begin ?? true;
  v.writeUInt32BE((begin ? (d.ppid ?? 0) : (d.fsn ?? 0)) >>> 0, 12);
  d.data.copy(v, 16);
  return encodeChunk(ChunkType.I_DATA, dataFlags(d), v);
}

/** RFC 9260 §3.3.2/§3.3.3 INIT or INIT ACK chunk. */
export function encodeInitChunk(
  ack: boolean,
  i: { initiateTag: number; aRwnd?: number; outboundStreams?: number; inboundStreams?: number; initialTsn: number; params?: Buffer[] },
): Buffer {
  const fixed = Buffer.alloc(16);
  fixed.writeUInt32BE(i.initiateTag >>> 0, 0);
  fixed.writeUInt32BE((i.aRwnd ?? 131072) >>> 0, 4);
  fixed.writeUInt16BE(i.outboundStreams ?? 1024, 8);
  fixed.writeUInt16BE(i.inboundStreams ?? 1024, 10);
  fixed.writeUInt32BE(i.initialTsn >>> 0, 12);
  return encodeChunk(ack ? ChunkType.INIT_ACK : ChunkType.INIT, 0, Buffer.concat([fixed, ...(i.params ?? [])]));
}

/** RFC 3758 §3.2 FORWARD TSN / RFC 8260 §2.3.1 I-FORWARD-TSN chunk. */
export function encodeForwardTsnChunk(
  newCumTsn: number,
  streams: Array<{ stream: number; ssn?: number; unordered?: boolean; mid?: number }> = [],
  iforward = false,
): Buffer {
  const per = iforward ? 8 : 4;
  const v = Buffer.alloc(4 + streams.length * per);
  v.writeUInt32BE(newCumTsn >>> 0, 0);
  streams.forEach((s, k) => {
    const p = 4 + k * per;
    v.writeUInt16BE(s.stream, p);
    if (iforward) {
      v.writeUInt16BE(s.unordered ? 1 : 0, p + 2);
      v.writeUInt32BE((s.mid ?? 0) >>> 0, p + 4);
    } else {
      v.writeUInt16BE((s.ssn ?? 0) & 0xffff, p + 2);
    }
  });
  return encodeChunk(iforward ? ChunkType.I_FORWARD_TSN : ChunkType.FORWARD_TSN, 0, v);
}

/** RFC 9260 §3.3.4 SACK chunk. */
export function encodeSackChunk(cumTsnAck: number, aRwnd = 131072, gaps: Array<[number, number]> = [], dups: number[] = []): Buffer {
  const v = Buffer.alloc(12 + gaps.length * 4 + dups.length * 4);
  v.writeUInt32BE(cumTsnAck >>> 0, 0);
  v.writeUInt32BE(aRwnd >>> 0, 4);
  v.writeUInt16BE(gaps.length, 8);
  v.writeUInt16BE(dups.length, 10);
  let p = 12;
  for (const [s, e] of gaps) {
    v.writeUInt16BE(s, p);
    v.writeUInt16BE(e, p + 2);
    p += 4;
  }
  for (const d of dups) {
    v.writeUInt32BE(d >>> 0, p);
    p += 4;
  }
  return encodeChunk(ChunkType.SACK, 0, v);
}

/** RFC 6525 §4.1 Outgoing SSN Reset Request inside a RE-CONFIG chunk (§3.1). */
export function encodeOutgoingResetChunk(reqSeq: number, respSeq: number, lastTsn: number, streams: number[]): Buffer {
  const p = Buffer.alloc(12 + streams.length * 2);
  p.writeUInt32BE(reqSeq >>> 0, 0);
  p.writeUInt32BE(respSeq >>> 0, 4);
  p.writeUInt32BE(lastTsn >>> 0, 8);
  streams.forEach((s, k) => p.writeUInt16BE(s, 12 + k * 2));
  return encodeChunk(ChunkType.RE_CONFIG, 0, encodeTlv(ParamType.OUTGOING_SSN_RESET, p, false));
}
