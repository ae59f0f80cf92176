/**
 * Stream framing of STUN and ChannelData over TCP/TLS (RFC 8489 §6.2.2, RFC 8656 §12.5), linear in
 * the bytes received: whole frames inside a chunk are views of that chunk (no copy); a
 * frame split across chunks is copied once, byte by byte as it arrives, into a buffer of
 * exactly its size, which then belongs to the receiver (it stays valid after the next
 * push). Nothing is re-concatenated per chunk, so a 64 KB frame arriving in 16-byte
 * pieces costs 64 KB of copying, not 64 KB²/32.
 */
import { channelDataPadding, streamFrameSize } from '../wire/channeldata.js';

const HEADER_NEED = 4; // STUN Length and ChannelData Length both sit in bytes 2-3

export class StreamFramer {
  /** The frame being assembled (exact size once the header is known), or null. */
  private frame: Buffer | null = null;
  private have = 0;
  private readonly head = Buffer.alloc(HEADER_NEED);
  private headLen = 0;
  /** Set once a framing error was seen; the stream is then unusable. */
  broken = false;
  /** Bytes copied into internal buffers so far (for tests of the linear bound). */
  copied = 0;

  /** With `legacy`, ChannelData with RFC 5766 channel numbers (0x5000-0x7FFF) frames too. */
  constructor(private readonly legacy = false) {}

  /** Bytes waiting for the rest of their frame. */
  get buffered(): number {
    return this.frame ? this.have : this.headLen;
  }

  /**
   * Feeds a chunk and calls onFrame for each complete frame. Returns false on a framing
   * error (after which nothing more is delivered).
   */
  push(chunk: Buffer, onFrame: (frame: Buffer) => void): boolean {
    if (this.broken) return false;
    let off = 0;
    // 1. Finish a frame begun in an earlier chunk.
    if (this.headLen > 0 || this.frame !== null) {
      if (this.frame === null) {
        const n = Math.min(HEADER_NEED - this.headLen, chunk.length);
        chunk.copy(this.head, this.headLen, 0, n);
        this.copied += n;
        this.headLen += n;
        off = n;
        if (this.headLen < HEADER_NEED) return this.checkPrefix(this.head.subarray(0, this.headLen));
        const size = this.frameSizeFromHeader(this.head);
        if (size < 0) return this.fail();
        this.frame = Buffer.allocUnsafe(size);
        this.head.copy(this.frame, 0, 0, HEADER_NEED);
        this.have = HEADER_NEED;
        this.headLen = 0;
      }
      const need = this.frame.length - this.have;
      const n = Math.min(need, chunk.length - off);
      chunk.copy(this.frame, this.have, off, off + n);
      this.copied += n;
      this.have += n;
      off += n;
      if (this.have < this.frame.length) return true;
      const f = this.frame;
      this.frame = null;
      this.have = 0;
      // Full validation (STUN magic cookie) on the complete frame.
      if (streamFrameSize(f, 0, this.legacy) !== f.length) return this.fail();
      onFrame(f);
      if (this.broken) return false;
    }
    // 2. Whole frames inside this chunk: views, no copy.
    for (;;) {
      const n = streamFrameSize(chunk, off, this.legacy);
      if (n < 0) return this.fail();
      if (n === 0) break;
      onFrame(chunk.subarray(off, off + n));
      if (this.broken) return false;
      off += n;
    }
    // 3. The start of a frame that continues in the next chunk.
    const rest = chunk.length - off;
    if (rest === 0) return true;
    if (rest < HEADER_NEED) {
      chunk.copy(this.head, 0, off);
      this.copied += rest;
      this.headLen = rest;
      return this.checkPrefix(this.head.subarray(0, rest));
    }
    const size = this.frameSizeFromHeader(chunk.subarray(off, off + HEADER_NEED));
    if (size < 0) return this.fail();
    this.frame = Buffer.allocUnsafe(size);
    chunk.copy(this.frame, 0, off);
    this.copied += rest;
    this.have = rest;
    return true;
  }

  /** Rejects a partial header early when its first byte already says "not TURN". */
  private checkPrefix(p: Buffer): boolean {
    if (streamFrameSize(p, 0, this.legacy) < 0) return this.fail();
    return true;
  }

  /** Frame size from the first 4 bytes (RFC 8489 §5 STUN; RFC 8656 §12.4/§12.5 ChannelData); -1 if invalid. */
  private frameSizeFromHeader(h: Buffer): number {
    const top = h[0]! >> 6;
    const len = h.readUInt16BE(2);
    if (top === 0) return len & 3 ? -1 : 20 + len;
    if (top === 1) {
      if (h[0]! > 0x4f && !this.legacy) return -1; // RFC 8656 §12.6: reserved range
      return 4 + len + channelDataPadding(len);
    }
    return -1;
  }

  private fail(): false {
    this.broken = true;
    this.frame = null;
    this.headLen = 0;
    return false;
  }
}
