/**
 * RFC 6184 H.264 RTP depacketization (packetization-mode 0 and 1) into Annex-B access
 * units (ITU-T H.264 Annex B start codes), for writing a raw .h264 elementary stream.
 */

const START_CODE = Buffer.from([0, 0, 0, 1]);
const MAX_NAL = 4 << 20; // cap on one reassembled NAL unit
const MAX_AU = 16 << 20; // cap on one access unit

export interface H264AccessUnit {
  timestamp: number;
  /** Annex-B bytes (start code before every NAL unit). */
  data: Buffer;
  /** Contains an IDR slice (nal_unit_type 5). */
  idr: boolean;
  /** All packets of the access unit arrived in sequence. */
  complete: boolean;
}

/** H.264 §7.4.1.2.3: nal_unit_type 1-5 are VCL (slice) NAL units. */
export const NAL_IDR = 5;
export const NAL_SPS = 7;
export const NAL_PPS = 8;

export class H264Depacketizer {
  private nals: Buffer[] = [];
  private auBytes = 0;
  private ts = -1;
  private nextSeq = -1;
  private complete = true;
  private fu: Buffer[] | null = null;
  private fuBytes = 0;
  private sps: Buffer | null = null;
  private pps: Buffer | null = null;

  /**
   * Feeds one RTP payload; returns the access unit it completes (on the marker bit, RFC
   * 6184 §5.1, or when the timestamp changes), else null. Never throws on malformed input.
   */
  push(payload: Buffer, seq: number, timestamp: number, marker: boolean): H264AccessUnit | null {
    let out: H264AccessUnit | null = null;
    // A sequence gap: the lost packet belonged to the unit in progress or to the next one.
    const gap = this.nextSeq !== -1 && seq !== this.nextSeq;
    if (gap) {
      this.complete = false;
      this.fu = null;
    }
    if (this.ts !== -1 && timestamp !== this.ts) out = this.finish();
    if (gap) this.complete = false;
    this.nextSeq = (seq + 1) & 0xffff;
    this.ts = timestamp;
    this.depacketize(payload);
    if (marker) {
      const au = this.finish();
      // Two units at once (timestamp change plus marker): keep the later, it is whole.
      return au ?? out;
    }
    return out;
  }

  private depacketize(p: Buffer): void {
    if (p.length < 1) return;
    const type = p[0]! & 0x1f;
    if (type >= 1 && type <= 23) {
      this.fu = null;
      this.addNal(p); // RFC 6184 §5.6 single NAL unit packet
    } else if (type === 24) {
      // RFC 6184 §5.7.1 STAP-A: 16-bit size then the NAL unit, repeated.
      this.fu = null;
      let off = 1;
      while (off + 2 <= p.length) {
        const n = p.readUInt16BE(off);
        off += 2;
        if (n === 0 || off + n > p.length) {
          this.complete = false;
          break;
        }
        this.addNal(p.subarray(off, off + n));
        off += n;
      }
    } else if (type === 28) {
      // RFC 6184 §5.8 FU-A: FU indicator, FU header (S E R Type), fragment.
      if (p.length < 3) return;
      const fh = p[1]!;
      const start = (fh & 0x80) !== 0;
      const end = (fh & 0x40) !== 0;
      if (start) {
        // The NAL header is rebuilt from the indicator's F/NRI and the FU header's type.
        this.fu = [Buffer.from([(p[0]! & 0xe0) | (fh & 0x1f)]), p.subarray(2)];
        this.fuBytes = p.length - 1;
      } else if (this.fu) {
        this.fu.push(p.subarray(2));
        this.fuBytes += p.length - 2;
        if (this.fuBytes > MAX_NAL) {
          this.fu = null;
          this.complete = false;
          return;
        }
      } else {
        this.complete = false; // a middle or end fragment without its start
        return;
      }
      if (end && this.fu) {
        this.addNal(Buffer.concat(this.fu, this.fuBytes));
        this.fu = null;
      }
    } else {
      // STAP-B, MTAP16/24, FU-B (§5.7.2, §5.8) belong to interleaved mode 2: not supported.
      this.complete = false;
    }
  }

  private addNal(nal: Buffer): void {
    if (nal.length < 1 || this.auBytes + nal.length > MAX_AU) return;
    const t = nal[0]! & 0x1f;
    if (t === NAL_SPS) this.sps = Buffer.from(nal);
    else if (t === NAL_PPS) this.pps = Buffer.from(nal);
    this.nals.push(nal);
    this.auBytes += nal.length;
  }

  private finish(): H264AccessUnit | null {
    const nals = this.nals;
    const ts = this.ts;
    const complete = this.complete && this.fu === null;
    this.nals = [];
    this.auBytes = 0;
    this.ts = -1;
    this.complete = true;
    this.fu = null;
    // A unit lost entirely still reports the loss, so the writer waits for the next IDR.
    if (nals.length === 0) return complete || ts === -1 ? null : { timestamp: ts, data: Buffer.alloc(0), idr: false, complete: false };
    let idr = false;
    let hasSps = false;
    let hasPps = false;
    for (const n of nals) {
      const t = n[0]! & 0x1f;
      if (t === NAL_IDR) idr = true;
      else if (t === NAL_SPS) hasSps = true;
      else if (t === NAL_PPS) hasPps = true;
    }
    const parts: Buffer[] = [];
    // An IDR without in-band parameter sets gets the last ones seen, so a file that starts
    // at it decodes on its own (H.264 §7.4.1.2.1: SPS/PPS precede the slices using them).
    if (idr && !hasSps && this.sps) parts.push(START_CODE, this.sps);
    if (idr && !hasPps && this.pps) parts.push(START_CODE, this.pps);
    for (const n of nals) parts.push(START_CODE, n);
    return {
      timestamp: ts,
      data: Buffer.concat(parts),
      idr: idr && (hasSps || this.sps !== null) && (hasPps || this.pps !== null),
      complete,
    };
  }
}
