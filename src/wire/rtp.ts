/**
 * RTP and RTCP codecs (RFC 3550), header extensions (RFC 8285), RTCP feedback (RFC 4585)
 * and the RTP/RTCP multiplexing rule (RFC 5761, shared with demux.ts). Pure: no I/O, no
 * clocks. Parsers are zero-copy: they return offsets into the caller's Buffer and never
 * throw on malformed input (they return null).
 */
import { demux } from './demux.js';

/** RFC 3550 §5.1: the fixed header is 12 octets. */
export const RTP_FIXED_HEADER = 12;
/** RFC 3550 §5.1 and §6.4.1: the version field is 2. */
export const RTP_VERSION = 2;

export interface RtpHeader {
  version: number;
  padding: boolean;
  extension: boolean;
  csrcCount: number;
  marker: boolean;
  payloadType: number;
  sequenceNumber: number;
  timestamp: number;
  ssrc: number;
  /** Offset of the first CSRC (always 12); csrcCount entries of 4 octets follow. */
  csrcOffset: number;
  /** 16-bit "defined by profile" field of the extension header, or -1 without extension. */
  extensionProfile: number;
  /** Offset of the extension data (after its 4-octet header); 0 without extension. */
  extensionOffset: number;
  /** Length of the extension data in octets (RFC 3550 §5.3.1: 32-bit words × 4). */
  extensionLength: number;
  /** Total header length = payload offset. */
  headerLength: number;
  payloadOffset: number;
  /** Payload length without padding. */
  payloadLength: number;
  /** Number of padding octets at the end (including the count octet), 0 when P is clear. */
  paddingLength: number;
}

/**
 * Parses the RTP header (RFC 3550 §5.1) without looking at padding: use it for SRTP, where
 * the padding sits inside the encrypted payload (RFC 3711 §3.1). payloadLength is then the
 * rest of the buffer and paddingLength 0.
 */
export function parseRtpHeader(buf: Buffer): RtpHeader | null {
  const len = buf.length;
  if (len < RTP_FIXED_HEADER) return null;
  const b0 = buf[0];
  // RFC 3550 §5.1: V is the top two bits and must be 2.
  if (b0 >> 6 !== RTP_VERSION) return null;
  const cc = b0 & 0x0f;
  const x = (b0 & 0x10) !== 0;
  const b1 = buf[1];
  let off = RTP_FIXED_HEADER + 4 * cc;
  if (off > len) return null;
  let extensionProfile = -1;
  let extensionOffset = 0;
  let extensionLength = 0;
  if (x) {
    // RFC 3550 §5.3.1: 16-bit profile field, 16-bit length in 32-bit words, then data.
    if (off + 4 > len) return null;
    extensionProfile = buf.readUInt16BE(off);
    extensionLength = buf.readUInt16BE(off + 2) * 4;
    extensionOffset = off + 4;
    off = extensionOffset + extensionLength;
    if (off > len) return null;
  }
  return {
    version: RTP_VERSION,
    padding: (b0 & 0x20) !== 0,
    extension: x,
    csrcCount: cc,
    marker: (b1 & 0x80) !== 0,
    payloadType: b1 & 0x7f,
    sequenceNumber: buf.readUInt16BE(2),
    timestamp: buf.readUInt32BE(4),
    ssrc: buf.readUInt32BE(8),
    csrcOffset: RTP_FIXED_HEADER,
    extensionProfile,
    extensionOffset,
    extensionLength,
    headerLength: off,
    payloadOffset: off,
    payloadLength: len - off,
    paddingLength: 0,
  };
}

/**
 * Parses a plaintext RTP packet (RFC 3550 §5.1) including padding: when P is set, the last
 * octet counts the padding octets, itself included, and must fit in the payload.
 */
export function parseRtp(buf: Buffer): RtpHeader | null {
  const h = parseRtpHeader(buf);
  if (!h) return null;
  if (h.padding) {
    // RFC 3550 §5.1: the last octet of the padding is the count; 0 is invalid (the count
    // includes itself) and padding may not reach into the header.
    const pad = buf[buf.length - 1];
    if (pad === 0 || pad > h.payloadLength) return null;
    h.paddingLength = pad;
    h.payloadLength -= pad;
  }
  return h;
}

/** The i-th CSRC (RFC 3550 §5.1), or -1 when out of range. */
export function rtpCsrc(buf: Buffer, h: RtpHeader, i: number): number {
  if (i < 0 || i >= h.csrcCount) return -1;
  return buf.readUInt32BE(h.csrcOffset + 4 * i);
}

export interface RtpExtensionElement {
  id: number;
  /** Offset of the element data in the packet. */
  offset: number;
  length: number;
}

/** RFC 8285 §4.2: the one-byte header form's "defined by profile" value. */
export const EXT_PROFILE_ONE_BYTE = 0xbede;
/** RFC 8285 §4.3: two-byte form is 0x100 in the top 12 bits, appbits in the low 4. */
export const EXT_PROFILE_TWO_BYTE_MASK = 0xfff0;
export const EXT_PROFILE_TWO_BYTE = 0x1000;

/**
 * Splits the header extension into RFC 8285 elements. Returns [] for a packet without
 * extension or with a profile-specific (non RFC 8285) extension, null when malformed.
 * At most 255 elements are returned (caps hostile input).
 */
export function parseRtpHeaderExtensions(buf: Buffer, h: RtpHeader): RtpExtensionElement[] | null {
  if (!h.extension) return [];
  const out: RtpExtensionElement[] = [];
  let p = h.extensionOffset;
  const end = h.extensionOffset + h.extensionLength;
  if (h.extensionProfile === EXT_PROFILE_ONE_BYTE) {
    while (p < end && out.length < 255) {
      const b = buf[p];
      // RFC 8285 §4.2: a zero byte is padding between elements.
      if (b === 0) {
        p++;
        continue;
      }
      const id = b >> 4;
      // RFC 8285 §4.2: ID 15 is reserved and terminates processing of the extension.
      if (id === 15) break;
      const len = (b & 0x0f) + 1; // RFC 8285 §4.2: length field is data length minus one
      if (p + 1 + len > end) return null;
      out.push({ id, offset: p + 1, length: len });
      p += 1 + len;
    }
    return out;
  }
  if ((h.extensionProfile & EXT_PROFILE_TWO_BYTE_MASK) === EXT_PROFILE_TWO_BYTE) {
    while (p < end && out.length < 255) {
      const id = buf[p];
      // RFC 8285 §4.3: ID 0 is padding (a single octet).
      if (id === 0) {
        p++;
        continue;
      }
      if (p + 2 > end) return null;
      const len = buf[p + 1]; // RFC 8285 §4.3: length is the data length, 0..255
      if (p + 2 + len > end) return null;
      out.push({ id, offset: p + 2, length: len });
      p += 2 + len;
    }
    return out;
  }
  return [];
}

// RFC 5761 §4 (RTP/RTCP on one port): one definition, in demux.ts.
export { isRtcp } from './demux.js';

/** RFC 7983 §7: a first octet in 128..191 demultiplexes to RTP/RTCP. */
export function isRtpOrRtcp(buf: Buffer): boolean {
  return demux(buf) === 'rtp';
}

export interface RtpBuildOptions {
  payloadType: number;
  sequenceNumber: number;
  timestamp: number;
  ssrc: number;
  marker?: boolean;
  csrcs?: number[];
  /** Raw extension: profile field and data (length must be a multiple of 4). */
  extension?: { profile: number; data: Buffer };
  payload: Buffer;
  /** Padding octets to append (1..255); sets P. */
  padding?: number;
}

/** Serialises an RTP packet (RFC 3550 §5.1). Used by tests and tools; throws on bad input. */
export function serializeRtp(o: RtpBuildOptions): Buffer {
  const cc = o.csrcs?.length ?? 0;
  if (cc > 15) throw new RangeError('at most 15 CSRCs');
  const extData = o.extension?.data;
  if (extData && extData.length % 4 !== 0) throw new RangeError('extension length must be a multiple of 4');
  const pad = o.padding ?? 0;
  if (pad < 0 || pad > 255) throw new RangeError('padding 0..255');
  const hl = RTP_FIXED_HEADER + 4 * cc + (extData ? 4 + extData.length : 0);
  const out = Buffer.alloc(hl + o.payload.length + pad);
  out[0] = (RTP_VERSION << 6) | (pad ? 0x20 : 0) | (extData ? 0x10 : 0) | cc;
  out[1] = (o.marker ? 0x80 : 0) | (o.payloadType & 0x7f);
  out.writeUInt16BE(o.sequenceNumber & 0xffff, 2);
  out.writeUInt32BE(o.timestamp >>> 0, 4);
  out.writeUInt32BE(o.ssrc >>> 0, 8);
  let p = RTP_FIXED_HEADER;
  for (let i = 0; i < cc; i++, p += 4) out.writeUInt32BE(o.csrcs![i] >>> 0, p);
  if (extData) {
    out.writeUInt16BE(o.extension!.profile, p);
    out.writeUInt16BE(extData.length / 4, p + 2);
    extData.copy(out, p + 4);
    p += 4 + extData.length;
  }
  o.payload.copy(out, p);
  if (pad) out[out.length - 1] = pad;
  return out;
}

/** Builds RFC 8285 one-byte form extension data (padded to 4 octets). Tests and tools. */
export function buildOneByteExtensions(elems: { id: number; data: Buffer }[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of elems) {
    if (e.id < 1 || e.id > 14 || e.data.length < 1 || e.data.length > 16) throw new RangeError('bad one-byte element');
    parts.push(Buffer.from([(e.id << 4) | (e.data.length - 1)]), e.data);
  }
  const raw = Buffer.concat(parts);
  return Buffer.concat([raw, Buffer.alloc((4 - (raw.length % 4)) % 4)]);
}

// ---------------------------------------------------------------------------------------
// RTCP (RFC 3550 §6)
// ---------------------------------------------------------------------------------------

/** RFC 3550 §12.1 and RFC 4585 §6.1 packet types. */
export const RTCP_SR = 200;
export const RTCP_RR = 201;
export const RTCP_SDES = 202;
export const RTCP_BYE = 203;
export const RTCP_APP = 204;
export const RTCP_RTPFB = 205;
export const RTCP_PSFB = 206;

export interface RtcpPacket {
  /** Offset of this packet's header in the compound buffer. */
  offset: number;
  /** Total length in octets, header and padding included. */
  length: number;
  padding: boolean;
  /** Padding octets at the end of this packet (only the last packet may have them). */
  paddingLength: number;
  /** RC / SC / FMT / subtype: the 5-bit field of the first octet. */
  count: number;
  packetType: number;
  /** The first SSRC field after the header (sender / packet sender), or -1 if absent. */
  ssrc: number;
}

export interface RtcpParseOptions {
  /**
   * RFC 3550 §6.1: a compound packet must start with SR or RR. Reduced-size RTCP
   * (RFC 5506) relaxes this, so it is off by default.
   */
  requireReportFirst?: boolean;
}

/** At most this many packets are returned from one compound packet. */
export const RTCP_MAX_PACKETS = 64;

/**
 * Splits a (plaintext) compound RTCP packet (RFC 3550 §6.1) into its packets, checking the
 * header validity rules of RFC 3550 §6.4.1 / Appendix A.2: version 2, lengths adding up
 * exactly to the datagram, padding only on the last packet.
 */
export function parseRtcpCompound(buf: Buffer, opts: RtcpParseOptions = {}): RtcpPacket[] | null {
  const total = buf.length;
  if (total < 4) return null;
  const out: RtcpPacket[] = [];
  let off = 0;
  while (off < total) {
    if (off + 4 > total || out.length >= RTCP_MAX_PACKETS) return null;
    const b0 = buf[off];
    if (b0 >> 6 !== RTP_VERSION) return null;
    const pt = buf[off + 1];
    // RFC 3550 §6.4.1: length is in 32-bit words minus one, header included.
    const len = (buf.readUInt16BE(off + 2) + 1) * 4;
    if (off + len > total) return null;
    const padding = (b0 & 0x20) !== 0;
    let paddingLength = 0;
    if (padding) {
      // RFC 3550 §6.4.1: only the last packet of a compound packet may be padded.
      if (off + len !== total) return null;
      paddingLength = buf[total - 1];
      if (paddingLength === 0 || paddingLength > len - 4) return null;
    }
    out.push({
      offset: off,
      length: len,
      padding,
      paddingLength,
      count: b0 & 0x1f,
      packetType: pt,
      ssrc: len >= 8 ? buf.readUInt32BE(off + 4) : -1,
    });
    off += len;
  }
  if (opts.requireReportFirst && out[0].packetType !== RTCP_SR && out[0].packetType !== RTCP_RR) return null;
  return out;
}

export interface RtcpReportBlock {
  ssrc: number;
  fractionLost: number;
  /** RFC 3550 §6.4.1: 24-bit signed cumulative number of packets lost. */
  cumulativeLost: number;
  highestSeq: number;
  jitter: number;
  lastSr: number;
  delaySinceLastSr: number;
}

export interface RtcpSenderInfo {
  ntpSec: number;
  ntpFrac: number;
  rtpTimestamp: number;
  packetCount: number;
  octetCount: number;
}

export interface RtcpReport {
  ssrc: number;
  /** Present for SR (RFC 3550 §6.4.1), absent for RR (§6.4.2). */
  sender?: RtcpSenderInfo;
  blocks: RtcpReportBlock[];
}

/** Decodes an SR or RR (RFC 3550 §6.4.1, §6.4.2), or null. */
export function parseRtcpReport(buf: Buffer, p: RtcpPacket): RtcpReport | null {
  if (p.packetType !== RTCP_SR && p.packetType !== RTCP_RR) return null;
  const end = p.offset + p.length - p.paddingLength;
  let q = p.offset + 8;
  if (q > end) return null;
  const r: RtcpReport = { ssrc: buf.readUInt32BE(p.offset + 4), blocks: [] };
  if (p.packetType === RTCP_SR) {
    // RFC 3550 §6.4.1: 20 octets of sender info follow the SSRC.
    if (q + 20 > end) return null;
    r.sender = {
      ntpSec: buf.readUInt32BE(q),
      ntpFrac: buf.readUInt32BE(q + 4),
      rtpTimestamp: buf.readUInt32BE(q + 8),
      packetCount: buf.readUInt32BE(q + 12),
      octetCount: buf.readUInt32BE(q + 16),
    };
    q += 20;
  }
  // RFC 3550 §6.4.1: RC report blocks of 24 octets; profile-specific extensions may follow.
  if (q + 24 * p.count > end) return null;
  for (let i = 0; i < p.count; i++, q += 24) {
    const lost = buf.readUIntBE(q + 5, 3);
    r.blocks.push({
      ssrc: buf.readUInt32BE(q),
      fractionLost: buf[q + 4],
      cumulativeLost: lost & 0x800000 ? lost - 0x1000000 : lost,
      highestSeq: buf.readUInt32BE(q + 8),
      jitter: buf.readUInt32BE(q + 12),
      lastSr: buf.readUInt32BE(q + 16),
      delaySinceLastSr: buf.readUInt32BE(q + 20),
    });
  }
  return r;
}

export interface SdesItem {
  type: number;
  offset: number;
  length: number;
}
export interface SdesChunk {
  ssrc: number;
  items: SdesItem[];
}

/** RFC 3550 §6.5: SDES item type 1 is CNAME. */
export const SDES_CNAME = 1;

/** Decodes SDES chunks (RFC 3550 §6.5), or null when malformed. */
export function parseSdes(buf: Buffer, p: RtcpPacket): SdesChunk[] | null {
  if (p.packetType !== RTCP_SDES) return null;
  const end = p.offset + p.length - p.paddingLength;
  const chunks: SdesChunk[] = [];
  let q = p.offset + 4;
  for (let c = 0; c < p.count; c++) {
    if (q + 4 > end) return null;
    const chunk: SdesChunk = { ssrc: buf.readUInt32BE(q), items: [] };
    q += 4;
    for (;;) {
      if (q >= end) return null;
      const type = buf[q];
      // RFC 3550 §6.5: a null item ends the list; the chunk is then padded to 32 bits.
      if (type === 0) {
        // Alignment is relative to the packet start (itself on a 32-bit boundary).
        q = p.offset + ((q - p.offset + 4) & ~3);
        if (q > end) return null;
        break;
      }
      if (q + 2 > end) return null;
      const len = buf[q + 1];
      if (q + 2 + len > end) return null;
      if (chunk.items.length < 16) chunk.items.push({ type, offset: q + 2, length: len });
      q += 2 + len;
    }
    chunks.push(chunk);
  }
  return chunks;
}

/** Decodes a BYE (RFC 3550 §6.6): SC SSRCs and an optional reason. */
export function parseBye(buf: Buffer, p: RtcpPacket): { ssrcs: number[]; reason?: string } | null {
  if (p.packetType !== RTCP_BYE) return null;
  const end = p.offset + p.length - p.paddingLength;
  let q = p.offset + 4;
  if (q + 4 * p.count > end) return null;
  const ssrcs: number[] = [];
  for (let i = 0; i < p.count; i++, q += 4) ssrcs.push(buf.readUInt32BE(q));
  if (q < end) {
    const len = buf[q];
    if (q + 1 + len > end) return null;
    return { ssrcs, reason: buf.toString('utf8', q + 1, q + 1 + len) };
  }
  return { ssrcs };
}

/** Decodes APP (RFC 3550 §6.7): subtype, SSRC, 4-character name, data offsets. */
export function parseApp(
  buf: Buffer,
  p: RtcpPacket,
): { subtype: number; ssrc: number; name: string; dataOffset: number; dataLength: number } | null {
  if (p.packetType !== RTCP_APP) return null;
  const end = p.offset + p.length - p.paddingLength;
  if (p.offset + 12 > end) return null;
  return {
    subtype: p.count,
    ssrc: buf.readUInt32BE(p.offset + 4),
    name: buf.toString('latin1', p.offset + 8, p.offset + 12),
    dataOffset: p.offset + 12,
    dataLength: end - (p.offset + 12),
  };
}

export interface RtcpFeedback {
  /** 205 (transport layer, RTPFB) or 206 (payload specific, PSFB). */
  packetType: number;
  fmt: number;
  senderSsrc: number;
  mediaSsrc: number;
  fciOffset: number;
  fciLength: number;
  /** A name for well-known FMTs: nack, tmmbr, tmmbn, twcc, pli, sli, rpsi, fir, afb. */
  name: string;
}

/** Decodes an RTPFB/PSFB common header (RFC 4585 §6.1), or null. */
export function parseFeedback(buf: Buffer, p: RtcpPacket): RtcpFeedback | null {
  if (p.packetType !== RTCP_RTPFB && p.packetType !== RTCP_PSFB) return null;
  const end = p.offset + p.length - p.paddingLength;
  if (p.offset + 12 > end) return null;
  let name = 'unknown';
  if (p.packetType === RTCP_RTPFB) {
    // RFC 4585 §6.2: FMT 1 generic NACK; RFC 5104 §4.2: 3 TMMBR, 4 TMMBN;
    // draft-holmer-rmcat-transport-wide-cc-extensions: 15 transport-wide CC.
    name = ({ 1: 'nack', 3: 'tmmbr', 4: 'tmmbn', 15: 'twcc' } as Record<number, string>)[p.count] ?? 'unknown';
  } else {
    // RFC 4585 §6.3: 1 PLI, 2 SLI, 3 RPSI, 15 application layer FB; RFC 5104 §4.3: 4 FIR.
    name = ({ 1: 'pli', 2: 'sli', 3: 'rpsi', 4: 'fir', 15: 'afb' } as Record<number, string>)[p.count] ?? 'unknown';
  }
  return {
    packetType: p.packetType,
    fmt: p.count,
    senderSsrc: buf.readUInt32BE(p.offset + 4),
    mediaSsrc: buf.readUInt32BE(p.offset + 8),
    fciOffset: p.offset + 12,
    fciLength: end - (p.offset + 12),
    name,
  };
}

/** Expands generic NACK FCI entries (RFC 4585 §6.2.1) into lost sequence numbers (capped). */
export function parseGenericNack(buf: Buffer, fb: RtcpFeedback, max = 1024): number[] {
  const out: number[] = [];
  for (let q = fb.fciOffset; q + 4 <= fb.fciOffset + fb.fciLength && out.length < max; q += 4) {
    const pid = buf.readUInt16BE(q);
    const blp = buf.readUInt16BE(q + 2);
    out.push(pid);
    for (let i = 0; i < 16; i++) if (blp & (1 << i)) out.push((pid + i + 1) & 0xffff);
  }
  return out.slice(0, max);
}
