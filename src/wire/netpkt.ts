/**
 * Link, IP, UDP and TCP decoding for captured frames (offline inspection of pcap files),
 * plus the small amount of state a capture needs: IP fragment reassembly, in-order TCP
 * stream reassembly and RFC 8656 §5/§12.5 framing of TURN messages on a TCP stream.
 *
 * Pure: no I/O, no clock (time is passed in). Decoders return subarrays of the input
 * (zero-copy) and null on malformed or truncated input; they never throw.
 */

// Link-layer header types (tcpdump.org/linktypes.html, the values found in pcap files).
export const LINKTYPE_NULL = 0; // BSD loopback: 4-byte AF in host byte order
export const LINKTYPE_ETHERNET = 1; // IEEE 802.3, with 802.1Q / 802.1ad tags
export const LINKTYPE_RAW = 101; // raw IPv4 or IPv6, version from the first nibble
export const LINKTYPE_LOOP = 108; // OpenBSD loopback: 4-byte AF in network byte order
export const LINKTYPE_LINUX_SLL = 113; // Linux cooked capture v1 (16-byte header)
export const LINKTYPE_IPV4 = 228;
export const LINKTYPE_IPV6 = 229;
export const LINKTYPE_LINUX_SLL2 = 276; // Linux cooked capture v2 (20-byte header)

export const SUPPORTED_LINKTYPES: readonly number[] = [
  LINKTYPE_NULL,
  LINKTYPE_ETHERNET,
  LINKTYPE_RAW,
  LINKTYPE_LOOP,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_IPV4,
  LINKTYPE_IPV6,
  LINKTYPE_LINUX_SLL2,
];

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100; // IEEE 802.1Q
const ETHERTYPE_QINQ = 0x88a8; // IEEE 802.1ad
const ETHERTYPE_QINQ_OLD = 0x9100;

export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

/**
 * Finds the network-layer header in a link-layer frame. Returns the offset of the IP
 * header, or -1 when the frame is not IPv4/IPv6 or is malformed.
 */
export function linkPayloadOffset(linktype: number, frame: Uint8Array): number {
  const n = frame.length;
  switch (linktype) {
    case LINKTYPE_ETHERNET: {
      if (n < 14) return -1;
      let off = 12;
      let et = (frame[off]! << 8) | frame[off + 1]!;
      // 802.1Q / 802.1ad: a 4-byte tag (TPID, TCI) before the real ethertype; allow stacking.
      for (let tags = 0; (et === ETHERTYPE_VLAN || et === ETHERTYPE_QINQ || et === ETHERTYPE_QINQ_OLD) && tags < 4; tags++) {
        off += 4;
        if (off + 2 > n) return -1;
        et = (frame[off]! << 8) | frame[off + 1]!;
      }
      off += 2;
      return et === ETHERTYPE_IPV4 || et === ETHERTYPE_IPV6 ? off : -1;
    }
    case LINKTYPE_LINUX_SLL: {
      // Packet type(2) ARPHRD(2) addr len(2) addr(8) protocol(2).
      if (n < 16) return -1;
      const et = (frame[14]! << 8) | frame[15]!;
      return et === ETHERTYPE_IPV4 || et === ETHERTYPE_IPV6 ? 16 : -1;
    }
    case LINKTYPE_LINUX_SLL2: {
      // Protocol(2) reserved(2) ifindex(4) ARPHRD(2) pkttype(1) addr len(1) addr(8).
      if (n < 20) return -1;
      const et = (frame[0]! << 8) | frame[1]!;
      return et === ETHERTYPE_IPV4 || et === ETHERTYPE_IPV6 ? 20 : -1;
    }
    case LINKTYPE_NULL:
    case LINKTYPE_LOOP: {
      if (n < 5) return -1;
      // The AF value's byte order depends on the capturing host (NULL) or is network
      // order (LOOP); the IP version nibble is authoritative either way.
      const v = frame[4]! >> 4;
      return v === 4 || v === 6 ? 4 : -1;
    }
    case LINKTYPE_RAW:
    case LINKTYPE_IPV4:
    case LINKTYPE_IPV6: {
      if (n < 1) return -1;
      const v = frame[0]! >> 4;
      if (linktype === LINKTYPE_IPV4 && v !== 4) return -1;
      if (linktype === LINKTYPE_IPV6 && v !== 6) return -1;
      return v === 4 || v === 6 ? 0 : -1;
    }
    default:
      return -1;
  }
}

export interface IpPacket {
  version: 4 | 6;
  src: string;
  dst: string;
  /** Upper-layer protocol after IPv6 extension headers (6 TCP, 17 UDP, ...). */
  proto: number;
  /** The IP payload (transport header onward), trimmed to the IP length. */
  payload: Buffer;
  /** True when this packet is a fragment (first or not). */
  fragment: boolean;
  /** Fragment offset in bytes. */
  fragOffset: number;
  moreFragments: boolean;
  /** IPv4 Identification or IPv6 Fragment header Identification. */
  fragId: number;
}

export function formatIpv4(b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/**
 * RFC 5952 §4 canonical text form: lower case, longest run (>1) of zero groups as "::".
 * IPv4-mapped addresses are written ::ffff:a.b.c.d (RFC 5952 §5) unless mappedDotted is
 * false (then ::ffff:c000:201, the all-hex form).
 */
export function formatIpv6(b: Uint8Array, off: number, mappedDotted = true): string {
  const g: number[] = new Array(8);
  for (let i = 0; i < 8; i++) g[i] = (b[off + 2 * i]! << 8) | b[off + 2 * i + 1]!;
  // IPv4-mapped ::ffff:a.b.c.d (RFC 5952 §5).
  if (mappedDotted && g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${formatIpv4(b, off + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestLen < 2) bestStart = -1; // RFC 5952 §4.2.2: "::" not for one 16-bit zero field
  let s = '';
  for (let i = 0; i < 8; i++) {
    if (i === bestStart) {
      s += '::';
      i += bestLen - 1;
      continue;
    }
    if (s.length > 0 && !s.endsWith(':')) s += ':';
    s += g[i]!.toString(16);
  }
  return s;
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** Decodes an IPv4 or IPv6 header at `off`. Null on malformed or truncated packets. */
export function decodeIp(frame: Uint8Array, off = 0): IpPacket | null {
  const buf = asBuffer(frame);
  if (off < 0 || off >= buf.length) return null;
  const v = buf[off]! >> 4;
  if (v === 4) return decodeIpv4(buf, off);
  if (v === 6) return decodeIpv6(buf, off);
  return null;
}

/** Big-endian 16 bits at off; the caller checked off + 2 <= length (no per-call validation on the packet path). */
function u16(buf: Buffer, off: number): number {
  return (buf[off]! << 8) | buf[off + 1]!;
}

function decodeIpv4(buf: Buffer, off: number): IpPacket | null {
  // RFC 791 §3.1. The header checksum is not verified (captures of locally sent
  // packets often carry checksum-offload placeholders).
  if (buf.length - off < 20) return null;
  const ihl = (buf[off]! & 0x0f) * 4;
  if (ihl < 20) return null;
  const total = u16(buf, off + 2);
  // total 0 happens with TSO captures; then trust the captured length.
  const end = total === 0 ? buf.length : off + total;
  if (end > buf.length || end < off + ihl) return null;
  const fragField = u16(buf, off + 6);
  const moreFragments = (fragField & 0x2000) !== 0; // RFC 791: MF flag
  const fragOffset = (fragField & 0x1fff) * 8; // RFC 791: offset in 8-octet units
  return {
    version: 4,
    src: ipv4Text(buf, off + 12),
    dst: ipv4Text(buf, off + 16),
    proto: buf[off + 9]!,
    payload: buf.subarray(off + ihl, end),
    fragment: moreFragments || fragOffset !== 0,
    fragOffset,
    moreFragments,
    fragId: u16(buf, off + 4),
  };
}

/** Where readUdp4 puts what it read (one object, reused). */
export interface Udp4View {
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  /** The UDP payload is buf[payloadStart..payloadEnd). */
  payloadStart: number;
  payloadEnd: number;
}

export function newUdp4View(): Udp4View {
  return { src: '', dst: '', srcPort: 0, dstPort: 0, payloadStart: 0, payloadEnd: 0 };
}

/**
 * decodeIp + decodeTransport for the packets that are most of a capture, without their
 * objects: an unfragmented IPv4 packet carrying UDP at `off`, read by the same rules
 * (RFC 791 §3.1, RFC 768). Fills `out` and returns true; false, with `out` unspecified,
 * for anything else (IPv6, fragments, other protocols, malformed: decode it with decodeIp).
 */
export function readUdp4(buf: Buffer, off: number, out: Udp4View): boolean {
  if (off < 0 || buf.length - off < 20 || buf[off]! >> 4 !== 4) return false;
  const ihl = (buf[off]! & 0x0f) * 4;
  if (ihl < 20) return false;
  const total = u16(buf, off + 2);
  const end = total === 0 ? buf.length : off + total; // as decodeIpv4: 0 with TSO captures
  if (end > buf.length || end < off + ihl) return false;
  if ((u16(buf, off + 6) & 0x3fff) !== 0 || buf[off + 9] !== IPPROTO_UDP) return false; // MF or offset: a fragment
  const u = off + ihl;
  if (end - u < 8) return false;
  const len = u16(buf, u + 4);
  if (len < 8 || len > end - u) return false;
  out.src = ipv4Text(buf, off + 12);
  out.dst = ipv4Text(buf, off + 16);
  out.srcPort = u16(buf, u);
  out.dstPort = u16(buf, u + 2);
  out.payloadStart = u + 8;
  out.payloadEnd = u + len;
  return true;
}

/**
 * The text of an IPv4 address, cached by its 32-bit value: a capture or a queue sees few
 * addresses, so most packets get the same string (no allocation, and the flow table's
 * string compares hit the same object). Bounded: cleared when full.
 */
const V4_TEXT = new Map<number, string>();
const V4_TEXT_MAX = 4096;
function ipv4Text(buf: Buffer, off: number): string {
  const k = buf.readUInt32BE(off);
  let s = V4_TEXT.get(k);
  if (s === undefined) {
    if (V4_TEXT.size >= V4_TEXT_MAX) V4_TEXT.clear();
    s = formatIpv4(buf, off);
    V4_TEXT.set(k, s);
  }
  return s;
}

const MAX_EXT_HEADERS = 8;

function decodeIpv6(buf: Buffer, off: number): IpPacket | null {
  // RFC 8200 §3.
  if (buf.length - off < 40) return null;
  const plen = buf.readUInt16BE(off + 4);
  if (plen === 0) return null; // RFC 2675 jumbograms are not supported
  const end = off + 40 + plen;
  if (end > buf.length) return null;
  let next = buf[off + 6]!;
  let p = off + 40;
  let fragment = false;
  let fragOffset = 0;
  let moreFragments = false;
  let fragId = 0;
  // RFC 8200 §4: walk extension headers to the upper-layer header.
  for (let i = 0; i <= MAX_EXT_HEADERS; i++) {
    if (next === 0 || next === 43 || next === 60 || next === 135 || next === 139 || next === 140) {
      // Hop-by-Hop, Routing, Destination Options, Mobility, HIP, Shim6:
      // next header(1), Hdr Ext Len(1) in 8-octet units not counting the first 8.
      if (p + 8 > end) return null;
      const len = (buf[p + 1]! + 1) * 8;
      next = buf[p]!;
      p += len;
      if (p > end) return null;
      continue;
    }
    if (next === 44) {
      // RFC 8200 §4.5 Fragment header: next(1) reserved(1) offset(13 bits)|res(2)|M(1), id(4).
      if (p + 8 > end) return null;
      const fo = buf.readUInt16BE(p + 2);
      fragOffset = fo & 0xfff8;
      moreFragments = (fo & 1) !== 0;
      fragId = buf.readUInt32BE(p + 4);
      fragment = fragOffset !== 0 || moreFragments;
      next = buf[p]!;
      p += 8;
      continue;
    }
    if (next === 51) {
      // RFC 4302 AH: Payload Len in 4-octet units minus 2.
      if (p + 8 > end) return null;
      const len = (buf[p + 1]! + 2) * 4;
      next = buf[p]!;
      p += len;
      if (p > end) return null;
      continue;
    }
    if (next === 59) return null; // No Next Header
    break;
  }
  return {
    version: 6,
    src: formatIpv6(buf, off + 8),
    dst: formatIpv6(buf, off + 24),
    proto: next,
    payload: buf.subarray(p, end),
    fragment,
    fragOffset,
    moreFragments,
    fragId,
  };
}

export interface UdpDatagram {
  srcPort: number;
  dstPort: number;
  payload: Buffer;
}

/** RFC 768. The checksum is not verified. Null when the length field is inconsistent. */
export function decodeUdp(seg: Uint8Array): UdpDatagram | null {
  const buf = asBuffer(seg);
  if (buf.length < 8) return null;
  const len = u16(buf, 4);
  if (len < 8 || len > buf.length) return null;
  return { srcPort: u16(buf, 0), dstPort: u16(buf, 2), payload: buf.subarray(8, len) };
}

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK = 0x10;

export interface TcpSegment {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  payload: Buffer;
}

/** RFC 9293 §3.1. Null when the data offset is out of range. */
export function decodeTcp(seg: Uint8Array): TcpSegment | null {
  const buf = asBuffer(seg);
  if (buf.length < 20) return null;
  const doff = (buf[12]! >> 4) * 4;
  if (doff < 20 || doff > buf.length) return null;
  return {
    srcPort: buf.readUInt16BE(0),
    dstPort: buf.readUInt16BE(2),
    seq: buf.readUInt32BE(4),
    ack: buf.readUInt32BE(8),
    flags: buf[13]!,
    payload: buf.subarray(doff),
  };
}

export interface DecodedFrame {
  ip: IpPacket;
  /** 'udp' or 'tcp'; frames of other protocols and non-first fragments are not decoded. */
  transport: 'udp' | 'tcp';
  srcPort: number;
  dstPort: number;
  payload: Buffer;
  tcp?: TcpSegment;
}

/** Decodes a transport header over an (unfragmented or reassembled) IP packet. */
export function decodeTransport(ip: IpPacket): DecodedFrame | null {
  if (ip.proto === IPPROTO_UDP) {
    const u = decodeUdp(ip.payload);
    if (!u) return null;
    return { ip, transport: 'udp', srcPort: u.srcPort, dstPort: u.dstPort, payload: u.payload };
  }
  if (ip.proto === IPPROTO_TCP) {
    const s = decodeTcp(ip.payload);
    if (!s) return null;
    return { ip, transport: 'tcp', srcPort: s.srcPort, dstPort: s.dstPort, payload: s.payload, tcp: s };
  }
  return null;
}

/**
 * One-shot decode of a link-layer frame down to UDP/TCP. Fragments return null: feed
 * decodeIp() results to an IpReassembler first when fragments matter.
 */
export function decodeFrame(linktype: number, frame: Uint8Array): DecodedFrame | null {
  const off = linkPayloadOffset(linktype, frame);
  if (off < 0) return null;
  const ip = decodeIp(frame, off);
  if (!ip || ip.fragment) return null;
  return decodeTransport(ip);
}

// ---------------------------------------------------------------------------------
// IP fragment reassembly (RFC 791 §3.2, RFC 8200 §4.5), bounded.

interface FragEntry {
  first: IpPacket | null;
  parts: { off: number; data: Buffer }[];
  bytes: number;
  total: number; // -1 until the last fragment (MF=0) arrives
  started: number;
}

export interface ReassemblerStats {
  fragments: number;
  reassembled: number;
  dropped: number;
}

export class IpReassembler {
  private readonly pending = new Map<string, FragEntry>();
  readonly stats: ReassemblerStats = { fragments: 0, reassembled: 0, dropped: 0 };

  constructor(
    private readonly maxDatagrams = 256,
    private readonly timeoutMs = 30_000,
    private readonly maxBytes = 65_535,
  ) {}

  /**
   * Feeds a fragment; returns the reassembled packet (fragment=false, payload = the
   * whole upper-layer data) when the last missing piece arrives, else null.
   */
  push(ip: IpPacket, time: number): IpPacket | null {
    if (!ip.fragment) return ip;
    this.stats.fragments++;
    this.expire(time);
    const key = `${ip.version}|${ip.src}|${ip.dst}|${ip.proto}|${ip.fragId}`;
    let e = this.pending.get(key);
    if (!e) {
      if (this.pending.size >= this.maxDatagrams) {
        // Evict the oldest (Map keeps insertion order).
        const oldest = this.pending.keys().next().value as string;
        this.pending.delete(oldest);
        this.stats.dropped++;
      }
      e = { first: null, parts: [], bytes: 0, total: -1, started: time };
      this.pending.set(key, e);
    }
    const end = ip.fragOffset + ip.payload.length;
    if (end > this.maxBytes) {
      this.pending.delete(key);
      this.stats.dropped++;
      return null;
    }
    if (ip.fragOffset === 0) e.first = ip;
    if (!ip.moreFragments) e.total = end;
    // Copy: fragments outlive the frame buffer they arrived in.
    e.parts.push({ off: ip.fragOffset, data: Buffer.from(ip.payload) });
    e.bytes += ip.payload.length;
    if (e.total < 0 || !e.first || e.bytes < e.total) return null;
    // Enough bytes; check coverage (overlaps are tolerated, later data wins).
    const out = Buffer.alloc(e.total);
    e.parts.sort((a, b) => a.off - b.off);
    let covered = 0;
    for (const p of e.parts) {
      if (p.off > covered) return null; // a hole remains
      const n = Math.min(p.data.length, e.total - p.off);
      if (n > 0) p.data.copy(out, p.off, 0, n);
      covered = Math.max(covered, p.off + n);
    }
    if (covered < e.total) return null;
    this.pending.delete(key);
    this.stats.reassembled++;
    return { ...e.first, payload: out, fragment: false, fragOffset: 0, moreFragments: false };
  }

  private expire(time: number): void {
    for (const [k, e] of this.pending) {
      if (time - e.started <= this.timeoutMs) break; // insertion order ~ start order
      this.pending.delete(k);
      this.stats.dropped++;
    }
  }
}

// ---------------------------------------------------------------------------------
// TCP: in-order stream reassembly of one direction (RFC 9293 §3.4 sequence numbers).

/** Signed distance a - b in sequence-number space (RFC 9293 §3.4, modulo 2^32). */
export function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}

export interface TcpStreamStats {
  bytes: number;
  retransmitted: number;
  outOfOrder: number;
  gaps: number;
}

/**
 * Delivers the bytes of one TCP direction in order. Retransmitted bytes are trimmed;
 * a few out-of-order segments are held; when too many pile up the gap is declared lost
 * (`lost` is set and delivery resumes after it, so a framer must resynchronise).
 */
export class TcpStream {
  private next = -1; // next expected sequence number; -1 until known
  private held: { seq: number; data: Buffer }[] = [];
  private heldBytes = 0;
  lost = false;
  private gapPending = false;
  finished = false;
  readonly stats: TcpStreamStats = { bytes: 0, retransmitted: 0, outOfOrder: 0, gaps: 0 };

  constructor(
    /** `afterGap` is true for the first bytes delivered after a lost gap. */
    private readonly deliver: (data: Buffer, afterGap: boolean) => void,
    private readonly maxHeldSegments = 64,
    private readonly maxHeldBytes = 1 << 20,
  ) {}

  push(seg: TcpSegment): void {
    let seq = seg.seq;
    if (seg.flags & TCP_SYN) {
      this.next = (seq + 1) >>> 0; // RFC 9293 §3.4: SYN occupies one sequence number
      seq = this.next;
    }
    if (seg.flags & (TCP_FIN | TCP_RST)) this.finished = true;
    let data = seg.payload;
    if (data.length === 0) return;
    if (this.next < 0) this.next = seq; // capture started mid-connection
    const d = seqDiff(seq, this.next);
    if (d < 0) {
      // Retransmission, possibly with new bytes at the end.
      if (-d >= data.length) {
        this.stats.retransmitted++;
        return;
      }
      data = data.subarray(-d);
      seq = this.next;
    } else if (d > 0) {
      this.stats.outOfOrder++;
      this.held.push({ seq, data: Buffer.from(data) });
      this.heldBytes += data.length;
      if (this.held.length > this.maxHeldSegments || this.heldBytes > this.maxHeldBytes) {
        // Declare the gap lost: skip to the earliest held segment.
        this.held.sort((a, b) => seqDiff(a.seq, b.seq));
        this.stats.gaps++;
        this.lost = true;
        this.gapPending = true;
        this.next = this.held[0]!.seq;
        this.drain();
      }
      return;
    }
    this.emit(data);
    this.drain();
  }

  private emit(data: Buffer): void {
    this.next = (this.next + data.length) >>> 0;
    this.stats.bytes += data.length;
    const gap = this.gapPending;
    this.gapPending = false;
    this.deliver(data, gap);
  }

  private drain(): void {
    for (let progress = true; progress && this.held.length > 0;) {
      progress = false;
      for (let i = 0; i < this.held.length; i++) {
        const h = this.held[i]!;
        const d = seqDiff(h.seq, this.next);
        if (d > 0) continue;
        this.held.splice(i, 1);
        this.heldBytes -= h.data.length;
        if (-d < h.data.length) this.emit(h.data.subarray(-d));
        progress = true;
        break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// RFC 8656 §5 / §12.5: TURN over TCP has no framing of its own; STUN messages
// (first two bits 00, 20-byte header + length, RFC 8489 §5) and ChannelData messages
// (first two bits 01, 4-byte header + length, padded to a multiple of 4 over TCP per
// RFC 8656 §12.5) follow each other on the stream.

const MAX_PENDING = 4 + 0xffff + 3;

export class TurnStreamFramer {
  private pending: Buffer | null = null;
  /** Set once the stream is found not to be TURN (e.g. TLS, RFC 4571 framing). */
  broken = false;
  messages = 0;

  constructor(private readonly onMessage: (msg: Buffer) => void) {}

  /** Size of the message starting at buf[off], 0 if incomplete header, -1 if not TURN. */
  static messageSize(buf: Uint8Array, off: number, avail: number): number {
    if (avail < 4) return 0;
    const b0 = buf[off]!;
    const len = (buf[off + 2]! << 8) | buf[off + 3]!;
    if (b0 >> 6 === 0) {
      // RFC 7983 §7: STUN first byte 0..3 (so TLS 0x16 is not STUN). RFC 8489 §5: the
      // magic cookie at 4..7, a 20-byte header; length excludes it, multiple of 4.
      if (b0 > 3 || len & 3) return -1;
      if (avail < 8) return 0;
      if (buf[off + 4] !== 0x21 || buf[off + 5] !== 0x12 || buf[off + 6] !== 0xa4 || buf[off + 7] !== 0x42) return -1;
      return 20 + len;
    }
    if (b0 >> 6 === 1) {
      // RFC 8656 §12: channel numbers 0x4000-0x4FFF; §12.5 padding over TCP.
      if (b0 > 0x4f) return -1;
      return 4 + ((len + 3) & ~3);
    }
    return -1;
  }

  push(data: Buffer): void {
    if (this.broken || data.length === 0) return;
    let buf: Buffer;
    if (this.pending) {
      buf = Buffer.concat([this.pending, data]);
      this.pending = null;
    } else buf = data;
    let off = 0;
    while (off < buf.length) {
      const size = TurnStreamFramer.messageSize(buf, off, buf.length - off);
      if (size < 0) {
        this.broken = true;
        return;
      }
      if (size === 0 || off + size > buf.length) break;
      this.messages++;
      // For ChannelData the padding is not part of the message (RFC 8656 §12.5).
      const b0 = buf[off]!;
      const msgLen = b0 >> 6 === 1 ? 4 + ((buf[off + 2]! << 8) | buf[off + 3]!) : size;
      this.onMessage(buf.subarray(off, off + msgLen));
      off += size;
    }
    if (off < buf.length) {
      const rest = buf.subarray(off);
      if (rest.length > MAX_PENDING) {
        this.broken = true;
        return;
      }
      // Copy so the pending bytes do not pin a large frame buffer.
      this.pending = Buffer.from(rest);
    }
  }
}

// ---------------------------------------------------------------------------------
// Encoders, for tests, fixtures and synthetic captures. Checksums are left zero
// (RFC 768: a zero UDP checksum over IPv4 means "none"; IPv4 header checksum is filled).

function parseIpv4(s: string): Buffer {
  const p = s.split('.').map((x) => Number(x));
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new RangeError(`bad IPv4 address ${s}`);
  return Buffer.from(p);
}

function parseIpv6(s: string): Buffer {
  const out = Buffer.alloc(16);
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const hs = head ? head.split(':') : [];
  const ts = tail !== undefined && tail !== '' ? tail.split(':') : [];
  if (tail === undefined && hs.length !== 8) throw new RangeError(`bad IPv6 address ${s}`);
  hs.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  ts.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), (8 - ts.length + i) * 2));
  return out;
}

function ipv4Checksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < h.length; i += 2) sum += h.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export interface BuildIpOpts {
  /** IPv4 identification / IPv6 fragment id. */
  id?: number;
  /** Fragment offset in bytes (multiple of 8) and more-fragments flag. */
  fragOffset?: number;
  moreFragments?: boolean;
}

/** An IPv4 or IPv6 packet (version from the address form) around `payload`. */
export function buildIp(src: string, dst: string, proto: number, payload: Buffer, o: BuildIpOpts = {}): Buffer {
  if (src.includes(':')) {
    const frag = o.fragOffset !== undefined || o.moreFragments;
    const ext = frag ? 8 : 0;
    const h = Buffer.alloc(40 + ext);
    h[0] = 0x60;
    h.writeUInt16BE(ext + payload.length, 4);
    h[6] = frag ? 44 : proto;
    h[7] = 64;
    parseIpv6(src).copy(h, 8);
    parseIpv6(dst).copy(h, 24);
    if (frag) {
      h[40] = proto;
      h.writeUInt16BE(((o.fragOffset ?? 0) & 0xfff8) | (o.moreFragments ? 1 : 0), 42);
      h.writeUInt32BE(o.id ?? 0, 44);
    }
    return Buffer.concat([h, payload]);
  }
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(o.id ?? 0, 4);
  h.writeUInt16BE((o.moreFragments ? 0x2000 : 0) | (((o.fragOffset ?? 0) >> 3) & 0x1fff), 6);
  h[8] = 64;
  h[9] = proto;
  parseIpv4(src).copy(h, 12);
  parseIpv4(dst).copy(h, 16);
  h.writeUInt16BE(ipv4Checksum(h), 10);
  return Buffer.concat([h, payload]);
}

export function buildUdp(srcPort: number, dstPort: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(srcPort, 0);
  h.writeUInt16BE(dstPort, 2);
  h.writeUInt16BE(8 + payload.length, 4);
  return Buffer.concat([h, payload]);
}

export function buildTcp(srcPort: number, dstPort: number, seq: number, flags: number, payload: Buffer, ack = 0): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(srcPort, 0);
  h.writeUInt16BE(dstPort, 2);
  h.writeUInt32BE(seq >>> 0, 4);
  h.writeUInt32BE(ack >>> 0, 8);
  h[12] = 5 << 4;
  h[13] = flags;
  h.writeUInt16BE(65535, 14);
  return Buffer.concat([h, payload]);
}

/** Ethernet II frame, optionally 802.1Q-tagged. */
export function buildEthernet(ipPacket: Buffer, vlan?: number): Buffer {
  const v6 = ipPacket[0]! >> 4 === 6;
  const et = v6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4;
  const h = Buffer.alloc(vlan === undefined ? 14 : 18);
  Buffer.from([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]).copy(h, 0);
  if (vlan !== undefined) {
    h.writeUInt16BE(ETHERTYPE_VLAN, 12);
    h.writeUInt16BE(vlan & 0x0fff, 14);
    h.writeUInt16BE(et, 16);
  } else h.writeUInt16BE(et, 12);
  return Buffer.concat([h, ipPacket]);
}

/** A UDP datagram in an IP packet, wrapped for `linktype` (Ethernet, SLL, SLL2, NULL, raw). */
export function buildUdpFrame(linktype: number, src: string, srcPort: number, dst: string, dstPort: number, payload: Buffer): Buffer {
  return wrapLink(linktype, buildIp(src, dst, IPPROTO_UDP, buildUdp(srcPort, dstPort, payload)));
}

export function wrapLink(linktype: number, ip: Buffer): Buffer {
  const v6 = ip[0]! >> 4 === 6;
  const et = v6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4;
  switch (linktype) {
    case LINKTYPE_ETHERNET:
      return buildEthernet(ip);
    case LINKTYPE_LINUX_SLL: {
      const h = Buffer.alloc(16);
      h.writeUInt16BE(0, 0); // to us
      h.writeUInt16BE(772, 2); // ARPHRD_LOOPBACK
      h.writeUInt16BE(6, 4);
      h.writeUInt16BE(et, 14);
      return Buffer.concat([h, ip]);
    }
    case LINKTYPE_LINUX_SLL2: {
      const h = Buffer.alloc(20);
      h.writeUInt16BE(et, 0);
      h.writeUInt32BE(1, 4);
      h.writeUInt16BE(772, 8);
      h[11] = 6;
      return Buffer.concat([h, ip]);
    }
    case LINKTYPE_NULL: {
      const h = Buffer.alloc(4);
      h.writeUInt32LE(v6 ? 30 : 2, 0);
      return Buffer.concat([h, ip]);
    }
    case LINKTYPE_LOOP: {
      const h = Buffer.alloc(4);
      h.writeUInt32BE(v6 ? 24 : 2, 0);
      return Buffer.concat([h, ip]);
    }
    case LINKTYPE_RAW:
    case LINKTYPE_IPV4:
    case LINKTYPE_IPV6:
      return ip;
    default:
      throw new RangeError(`unsupported linktype ${linktype}`);
  }
}
