/**
 * RFC 7983 §7 first-byte demultiplexing of packets that share one 5-tuple in WebRTC
 * (STUN, ZRTP, DTLS, TURN ChannelData, RTP/RTCP). Pure: no state, no allocation.
 *
 * RFC 7983 §7:
 *
 *                  +----------------+
 *                  |        [0..3] -+--> forward to STUN
 *                  |      [16..19] -+--> forward to ZRTP
 *      packet -->  |      [20..63] -+--> forward to DTLS
 *                  |      [64..79] -+--> forward to TURN Channel
 *                  |    [128..191] -+--> forward to RTP/RTCP
 *                  +----------------+
 *
 * Every other first byte is dropped (RFC 7983 §7: "If the value of the first byte is
 * ... [4..15], [80..127] or [192..255] ... the packet MUST be dropped").
 *
 * DTLS 1.3 (RFC 9147 §4) records with the unified header start with 0b001xxxxx, i.e.
 * 0x20-0x3F, which lies inside 20..63, so they go to DTLS as well (RFC 9147 §4.1
 * updates RFC 7983 exactly for that purpose).
 */

export type PacketClass = 'stun' | 'zrtp' | 'dtls' | 'channeldata' | 'rtp' | 'drop';

/** Numeric codes for hot paths that want to switch on small integers. */
export const PC_DROP = 0;
export const PC_STUN = 1;
export const PC_ZRTP = 2;
export const PC_DTLS = 3;
export const PC_CHANNELDATA = 4;
export const PC_RTP = 5;
export type PacketClassCode = 0 | 1 | 2 | 3 | 4 | 5;

const NAMES: readonly PacketClass[] = ['drop', 'stun', 'zrtp', 'dtls', 'channeldata', 'rtp'];

/** RFC 7983 §7: classify by the first byte alone. */
export function classifyByte(b: number): PacketClassCode {
  if (b <= 3) return PC_STUN; // RFC 7983 §7 [0..3]: STUN (RFC 8489 §5: top two bits zero)
  if (b < 16) return PC_DROP;
  if (b <= 19) return PC_ZRTP; // RFC 7983 §7 [16..19]: ZRTP (RFC 6189)
  if (b <= 63) return PC_DTLS; // RFC 7983 §7 [20..63]: DTLS (incl. RFC 9147 §4 unified header 0x20-0x3F)
  if (b <= 79) return PC_CHANNELDATA; // RFC 7983 §7 [64..79]: TURN ChannelData (RFC 8656 §12)
  if (b < 128) return PC_DROP;
  if (b <= 191) return PC_RTP; // RFC 7983 §7 [128..191]: RTP/RTCP (version 2, RFC 3550 §5.1)
  return PC_DROP;
}

/** Classifies the packet at buf[off]; an empty packet is dropped. */
export function demuxCode(buf: Uint8Array, off = 0): PacketClassCode {
  if (off < 0 || off >= buf.length) return PC_DROP;
  return classifyByte(buf[off]!);
}

export function demux(buf: Uint8Array, off = 0): PacketClass {
  return NAMES[demuxCode(buf, off)]!;
}

export function packetClassName(code: PacketClassCode): PacketClass {
  return NAMES[code]!;
}

/**
 * RFC 5761 §4: with RTP and RTCP on one port, a packet whose second octet (M bit + PT) is
 * in 192..223 is RTCP: RTCP packet types 192-223 (SR 200, RR 201, SDES 202, BYE 203, APP
 * 204, RTPFB 205, PSFB 206, XR 207, ...) map onto RTP payload types 64-95, which therefore
 * must not be used for RTP.
 */
export function isRtcp(buf: Uint8Array, off = 0): boolean {
  if (off < 0 || off + 1 >= buf.length) return false;
  const b1 = buf[off + 1]!;
  return b1 >= 192 && b1 <= 223;
}

/** True when the DTLS first byte is an RFC 9147 §4 unified header (0b001xxxxx). */
export function isDtls13Unified(b: number): boolean {
  return (b & 0xe0) === 0x20;
}
