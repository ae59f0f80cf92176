/**
 * TURN ChannelData messages (RFC 8656 §12.4) and stream framing of STUN/ChannelData
 * over TCP and TLS (RFC 8656 §5, §12.5). Pure: no I/O; reads with offsets into the
 * caller's buffer, allocates nothing per message.
 *
 *   0                   1                   2                   3
 *  +-------------------------------+-------------------------------+
 *  |         Channel Number        |            Length             |
 *  +-------------------------------+-------------------------------+
 *  |                     Application Data ...                      |
 */

export const CHANNELDATA_HEADER = 4;
// RFC 8656 §12: channel numbers 0x4000 through 0x4FFF; 0x5000-0xFFFF are reserved.
export const CHANNEL_MIN = 0x4000;
export const CHANNEL_MAX = 0x4fff;

/**
 * RFC 5766 §11 (obsoleted by RFC 8656) allowed 0x4000-0x7FFF; clients built on it
 * (coturn's turnutils among them) still pick numbers up there. A server may accept that
 * range for interoperability; RFC 8656 clients never use it, and first bytes 0x50-0x7F
 * still cannot be mistaken for STUN, DTLS or RTP (RFC 7983 §7).
 */
export const LEGACY_CHANNEL_MAX = 0x7fff;

export function isValidChannelNumber(n: number, legacy = false): boolean {
  return n >= CHANNEL_MIN && n <= (legacy ? LEGACY_CHANNEL_MAX : CHANNEL_MAX);
}

/**
 * RFC 7983 §7 / RFC 8656 §12 (Table 3): a ChannelData message starts with a byte 64..79
 * (0x40-0x4F). Checks the header fits and the length fits the buffer.
 */
export function isChannelData(buf: Buffer, off = 0): boolean {
  if (buf.length - off < CHANNELDATA_HEADER) return false;
  const b0 = buf[off]!;
  if (b0 < 0x40 || b0 > 0x4f) return false;
  return CHANNELDATA_HEADER + buf.readUInt16BE(off + 2) <= buf.length - off;
}

/** The channel number of a ChannelData header at off (caller checked 4 bytes). */
export function channelNumberAt(buf: Buffer, off = 0): number {
  return buf.readUInt16BE(off);
}

/** The payload length of a ChannelData header at off (caller checked 4 bytes). */
export function channelDataLengthAt(buf: Buffer, off = 0): number {
  return buf.readUInt16BE(off + 2);
}

/**
 * RFC 8656 §12.5: over TCP/TLS the message is padded to a multiple of 4 bytes; the
 * Length field does not count the padding. Over UDP padding is optional.
 */
export function channelDataPadding(length: number): number {
  return (4 - (length & 3)) & 3;
}

/** Writes a ChannelData header at off. */
export function writeChannelDataHeader(buf: Buffer, off: number, channel: number, length: number): void {
  buf.writeUInt16BE(channel, off);
  buf.writeUInt16BE(length, off + 2);
}

/** Builds a whole ChannelData message (a new buffer), padded when `stream`. */
export function buildChannelData(channel: number, data: Buffer, stream = false): Buffer {
  const pad = stream ? channelDataPadding(data.length) : 0;
  const b = Buffer.alloc(CHANNELDATA_HEADER + data.length + pad);
  writeChannelDataHeader(b, 0, channel, data.length);
  data.copy(b, CHANNELDATA_HEADER);
  return b;
}

/**
 * A parsed ChannelData header. For the hot path prefer channelNumberAt /
 * channelDataLengthAt, which do not allocate.
 */
export interface ChannelDataView {
  channel: number;
  /** The payload, a view into the input buffer. */
  data: Buffer;
}

/**
 * Parses a ChannelData message in a datagram. Returns null when the first byte is not
 * 0x40-0x4F or the datagram is shorter than the claimed length (RFC 8656 §12.6:
 * discard). Trailing bytes (padding) are ignored.
 */
export function parseChannelData(buf: Buffer, off = 0): ChannelDataView | null {
  if (!isChannelData(buf, off)) return null;
  const len = buf.readUInt16BE(off + 2);
  return { channel: buf.readUInt16BE(off), data: buf.subarray(off + 4, off + 4 + len) };
}

/**
 * Size of the next complete frame in a TCP/TLS byte stream (RFC 8656 §5: STUN messages
 * and ChannelData messages follow each other; the first two bits tell them apart,
 * RFC 7983):
 *  - > 0: that many bytes form the next frame (ChannelData includes its padding),
 *  - 0: more bytes are needed,
 *  - -1: the stream is not STUN/ChannelData (framing error; close the connection).
 */
export function streamFrameSize(buf: Buffer, off = 0, legacy = false): number {
  const avail = buf.length - off;
  if (avail < 1) return 0;
  const top = buf[off]! >> 6;
  if (top === 0) {
    // STUN: 20-byte header + Length (RFC 8489 §5).
    if (avail < 4) return 0;
    const len = buf.readUInt16BE(off + 2);
    if (len & 3) return -1;
    if (avail >= 8 && buf.readUInt32BE(off + 4) !== 0x2112a442) return -1;
    const total = 20 + len;
    return avail >= total ? total : 0;
  }
  if (top === 1) {
    const b0 = buf[off]!;
    if (b0 > 0x4f && !legacy) return -1; // RFC 8656 §12: 0x5000-0x7FFF reserved
    if (avail < 4) return 0;
    const len = buf.readUInt16BE(off + 2);
    const total = 4 + len + channelDataPadding(len);
    return avail >= total ? total : 0;
  }
  return -1;
}

/**
 * Reassembles frames from a byte stream. push() returns frames as views: of the input
 * chunk when it holds whole frames, otherwise of an internal buffer. A view is valid
 * only until the next push(); copy what you keep.
 */
export class StreamFramer {
  private pending: Buffer | null = null;
  private readonly max: number;
  /** Set once a framing error was seen; the stream is then unusable. */
  broken = false;

  /** With `legacy`, ChannelData with RFC 5766 channel numbers (0x5000-0x7FFF) frames too. */
  constructor(
    private readonly legacy = false,
    maxFrame = 20 + 0xffff + 3,
  ) {
    this.max = maxFrame;
  }

  /**
   * Feeds a chunk and calls onFrame for each complete frame. Returns false on a
   * framing error (after which nothing more is delivered).
   */
  push(chunk: Buffer, onFrame: (frame: Buffer) => void): boolean {
    if (this.broken) return false;
    let buf = chunk;
    if (this.pending) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let off = 0;
    for (;;) {
      const n = streamFrameSize(buf, off, this.legacy);
      if (n < 0) {
        this.broken = true;
        return false;
      }
      if (n === 0) break;
      onFrame(buf.subarray(off, off + n));
      if (this.broken) return false;
      off += n;
    }
    if (off < buf.length) {
      if (buf.length - off > this.max) {
        this.broken = true;
        return false;
      }
      this.pending = Buffer.from(buf.subarray(off));
    }
    return true;
  }

  /** Bytes waiting for the rest of their frame. */
  get buffered(): number {
    return this.pending ? this.pending.length : 0;
  }
}
