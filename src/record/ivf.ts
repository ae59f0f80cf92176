/**
 * IVF container for VP8 (the libvpx format ffmpeg reads): a 32-byte file header and
 * a 12-byte header per frame. Written incrementally; the frame count in the header is
 * patched on close, and readers (ffmpeg) tolerate a stale count after a crash.
 */
export function ivfFileHeader(fourcc: 'VP80' | 'VP90', width: number, height: number, timebaseDen: number, frames: number): Buffer {
  const b = Buffer.alloc(32);
  b.write('DKIF', 0, 'ascii');
  b.writeUInt16LE(0, 4); // version
  b.writeUInt16LE(32, 6); // header size
  b.write(fourcc, 8, 'ascii');
  b.writeUInt16LE(width, 12);
  b.writeUInt16LE(height, 14);
  b.writeUInt32LE(timebaseDen, 16); // time base denominator (rate)
  b.writeUInt32LE(1, 20); // numerator (scale)
  b.writeUInt32LE(frames, 24);
  return b;
}

export function ivfFrameHeader(size: number, pts: bigint): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(size, 0);
  b.writeBigUInt64LE(pts, 4);
  return b;
}

/**
 * RFC 7741 §4.2 VP8 payload descriptor: returns the offset of the VP8 payload and the
 * S (start of partition) bit with the partition index, or null when malformed.
 */
export function vp8Descriptor(p: Uint8Array): { offset: number; start: boolean; partition: number } | null {
  if (p.length < 1) return null;
  const b0 = p[0]!;
  let off = 1;
  if (b0 & 0x80) {
    // X: extension byte with I, L, T, K bits.
    if (p.length < 2) return null;
    const x = p[1]!;
    off = 2;
    if (x & 0x80) {
      if (p.length < off + 1) return null;
      off += p[off]! & 0x80 ? 2 : 1; // I: PictureID, 7 or 15 bits (M bit)
    }
    if (x & 0x40) off += 1; // L: TL0PICIDX
    if (x & 0x30) off += 1; // T or K: TID/Y/KEYIDX
  }
  if (off > p.length) return null;
  return { offset: off, start: (b0 & 0x10) !== 0, partition: b0 & 0x07 };
}

/** RFC 6386 §9.1: a key frame's uncompressed header gives the size. */
export function vp8KeyframeSize(frame: Uint8Array): { width: number; height: number } | null {
  if (frame.length < 10) return null;
  const keyframe = (frame[0]! & 0x01) === 0;
  if (!keyframe || frame[3] !== 0x9d || frame[4] !== 0x01 || frame[5] !== 0x2a) return null;
  return { width: (frame[6]! | (frame[7]! << 8)) & 0x3fff, height: (frame[8]! | (frame[9]! << 8)) & 0x3fff };
}

/**
 * Assembles VP8 frames from RTP payloads (RFC 7741 §4.5): a frame is the payloads of
 * one RTP timestamp, from a packet with S=1 and partition 0 to the packet with the
 * marker bit. A sequence gap drops the frame being assembled.
 */
export class Vp8Assembler {
  private parts: Buffer[] = [];
  private ts = -1;
  private nextSeq = -1;
  private broken = false;

  push(payload: Buffer, seq: number, timestamp: number, marker: boolean): Buffer | null {
    const d = vp8Descriptor(payload);
    if (!d) return null;
    const body = payload.subarray(d.offset);
    if (d.start && d.partition === 0) {
      this.parts = [body];
      this.ts = timestamp;
      this.broken = false;
    } else if (timestamp !== this.ts || seq !== this.nextSeq) {
      this.broken = true;
    } else {
      this.parts.push(body);
    }
    this.nextSeq = (seq + 1) & 0xffff;
    if (!marker) return null;
    const ok = !this.broken && this.parts.length > 0 && timestamp === this.ts;
    const frame = ok ? Buffer.concat(this.parts) : null;
    this.parts = [];
    this.ts = -1;
    return frame;
  }
}
