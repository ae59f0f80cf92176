/**
 * Playable files from decrypted RTP: Ogg/Opus (RFC 7845), WebM/VP8 or IVF/VP8 (RFC 7741
 * frames) and Annex-B H.264 (RFC 6184). Each writes whole pages/frames through a UnitFile, so what
 * was written before a crash stays readable.
 */
import { UnitFile, type UnitFileOptions } from './unit-file.js';
import { OGG_BOS, OGG_EOS, oggPage, opusHead, opusTags, opusPacketSamples } from './ogg.js';
import { ivfFileHeader, ivfFrameHeader, vp8KeyframeSize, Vp8Assembler } from './ivf.js';
import { H264Depacketizer } from './h264.js';
import { WebmMuxer } from './webm.js';

export interface RtpIn {
  payload: Buffer;
  seq: number;
  timestamp: number;
  marker: boolean;
}

export interface MediaWriter {
  readonly path: string;
  readonly size: number;
  write(p: RtpIn): void;
  /** Hands what is complete to the file and starts its write (soon: on the next event-loop turn). */
  flush(soon?: boolean): void;
  /** Closes the file; done is called once it is written and closed (see UnitFile.close). */
  close(done?: () => void): void;
}

/**
 * Ogg/Opus pre-skip (RFC 7845 §4.2), in 48 kHz samples. RTP carries no pre-skip (RFC 7587
 * has no such parameter), so the recorder picks one: a stream recorded from its first
 * packet uses 312 (6.5 ms), the encoder delay of libopus (OPUS_GET_LOOKAHEAD at 48 kHz),
 * the encoder of WebRTC stacks and ffmpeg; a stream joined mid-way uses 3840 (80 ms),
 * which RFC 7845 §4.2 recommends so the decoder has converged before output starts.
 */
export const OPUS_PRESKIP_START = 312;
export const OPUS_PRESKIP_MIDSTREAM = 3840;

/** Longest gap (in 48 kHz samples) filled with packet-loss-concealment packets: 60 s. */
const MAX_FILL = 48000 * 60;
/** Packets per Ogg page (RFC 3533 §6 allows 255 lacing values; Opus packets are < 255*4). */
const PAGE_PACKETS = 50;

/**
 * Ogg/Opus per RFC 7845. Granule positions count 48 kHz samples from the TOC of every
 * packet (RFC 7845 §4, RFC 6716 §3.1); an RTP timestamp gap (loss or DTX) is filled with
 * TOC-only packets (a zero-length frame, RFC 6716 §3.2.1, which decoders conceal), so the
 * timeline stays that of the RTP clock. Late or duplicate packets are dropped.
 */
export class OggOpusWriter implements MediaWriter {
  private readonly file: UnitFile;
  private readonly serial: number;
  private pageSeq = 0;
  private granule = 0n;
  private page: Buffer[] = [];
  private pageSegs = 0;
  private nextTs = -1;
  private started = false;
  private lastToc = 0xfc; // CELT FB 20 ms, stereo, code 0

  constructor(
    readonly path: string,
    serial: number,
    opts: UnitFileOptions = {},
    private readonly preSkip = OPUS_PRESKIP_MIDSTREAM,
  ) {
    this.file = new UnitFile(path, opts);
    this.serial = serial >>> 0;
  }

  get size(): number {
    return this.file.size;
  }

  write(p: RtpIn): void {
    const n = opusPacketSamples(p.payload);
    if (n === 0 || n > 5760 || p.payload.length > 255 * 16) return; // RFC 6716 §3.4 R5: <= 120 ms
    if (!this.started) {
      // RFC 7845 §3: the ID header alone on the BOS page, then the comment header on its
      // own page(s), both with granule position 0. WebRTC Opus is always "opus/48000/2"
      // (RFC 7587 §7), so the stream is declared stereo; mono packets decode as stereo.
      // Pre-skip: OPUS_PRESKIP_START or OPUS_PRESKIP_MIDSTREAM (see there).
      this.file.append(oggPage(this.serial, this.pageSeq++, 0n, OGG_BOS, [opusHead(2, this.preSkip)]));
      this.file.append(oggPage(this.serial, this.pageSeq++, 0n, 0, [opusTags('gatehouse')]));
      this.started = true;
    } else {
      const delta = (p.timestamp - this.nextTs) | 0; // RTP timestamps wrap (RFC 3550 §5.1)
      if (delta < 0) return; // late or duplicate
      if (delta > 0 && delta <= MAX_FILL) this.fill(delta);
    }
    this.lastToc = p.payload[0]!;
    this.addPacket(p.payload, n);
    this.nextTs = (p.timestamp + n) >>> 0;
  }

  private fill(samples: number): void {
    const toc = this.lastToc & 0xfc; // same mode/bandwidth/stereo, code 0: one frame
    const per = opusPacketSamples(Buffer.from([toc]));
    if (per === 0) return;
    const plc = Buffer.from([toc]);
    for (let left = samples; left >= per; left -= per) this.addPacket(plc, per);
  }

  private addPacket(pkt: Buffer, samples: number): void {
    const segs = Math.floor(pkt.length / 255) + 1;
    if (this.page.length >= PAGE_PACKETS || this.pageSegs + segs > 255) this.emitPage(0);
    this.page.push(Buffer.from(pkt)); // the event's buffer may be reused upstream
    this.pageSegs += segs;
    this.granule += BigInt(samples);
  }

  private emitPage(flags: number): void {
    if (this.page.length === 0) return;
    // RFC 7845 §4: the granule position of a page is the sample count at the end of its
    // last completed packet (packets never span pages here).
    this.file.append(oggPage(this.serial, this.pageSeq++, this.granule, flags, this.page));
    this.page = [];
    this.pageSegs = 0;
  }

  flush(soon = false): void {
    this.emitPage(0);
    if (soon) this.file.flushSoon();
    else this.file.flush();
  }

  close(done?: () => void): void {
    if (this.started) {
      // Pages already flushed cannot be rewritten; an empty page is avoided by ending on
      // one concealment frame when nothing is pending.
      if (this.page.length === 0) this.fill(opusPacketSamples(Buffer.from([this.lastToc & 0xfc])));
      this.emitPage(OGG_EOS); // RFC 3533 §6: the last page carries end-of-stream
    }
    this.file.close(done);
  }
}

/**
 * VP8 frames out of RTP (RFC 7741 §4.5 reassembly) for a writer that starts at the first
 * key frame and, after a loss (a sequence gap), resumes at the next key frame, so a
 * decoder never sees a frame whose references are missing. push() gives the frame and
 * whether it is a key frame (RFC 6386 §9.1: P bit 0), or null while it waits; the first
 * frame comes with its size from the key frame header (`dim`), a first key frame without
 * a readable size is skipped. Shared by the IVF and WebM writers.
 */
class Vp8KeyGate {
  private readonly asm = new Vp8Assembler();
  private needKey = true;
  private nextSeq = -1;
  private started = false;

  push(p: RtpIn): { frame: Buffer; key: boolean; dim: { width: number; height: number } | null } | null {
    if (this.nextSeq !== -1 && p.seq !== this.nextSeq) this.needKey = true;
    this.nextSeq = (p.seq + 1) & 0xffff;
    const frame = this.asm.push(p.payload, p.seq, p.timestamp, p.marker);
    if (!frame || frame.length === 0) return null;
    const key = (frame[0]! & 0x01) === 0;
    if (this.needKey) {
      if (!key) return null;
      this.needKey = false;
    }
    let dim: { width: number; height: number } | null = null;
    if (!this.started) {
      dim = vp8KeyframeSize(frame);
      if (!dim) {
        this.needKey = true;
        return null;
      }
      this.started = true;
    }
    return { frame, key, dim };
  }
}

/**
 * IVF with VP8 frames (RFC 7741 §4.5 reassembly), pts in the 90 kHz RTP clock. Output
 * starts at the first key frame (its header gives the size) and, after a loss, resumes
 * at the next key frame, so decoders never see a frame whose references are missing.
 */
export class Vp8IvfWriter implements MediaWriter {
  private readonly file: UnitFile;
  private readonly gate = new Vp8KeyGate();
  private frames = 0;
  private firstTs = -1;
  private lastPts = -1n;

  constructor(
    readonly path: string,
    opts: UnitFileOptions = {},
  ) {
    this.file = new UnitFile(path, opts);
  }

  get size(): number {
    return this.file.size;
  }

  write(p: RtpIn): void {
    const f = this.gate.push(p);
    if (!f) return;
    const { frame, dim } = f;
    if (dim) {
      this.firstTs = p.timestamp;
      this.file.append(ivfFileHeader('VP80', dim.width, dim.height, 90000, 0));
    }
    let pts = BigInt(((p.timestamp - this.firstTs) >>> 0) >>> 0);
    if (this.lastPts >= 0n && pts <= this.lastPts) pts = this.lastPts + 1n; // keep pts increasing
    this.lastPts = pts;
    this.file.append(Buffer.concat([ivfFrameHeader(frame.length, pts), frame]));
    this.frames++;
  }

  flush(soon = false): void {
    if (soon) this.file.flushSoon();
    else this.file.flush();
  }

  close(done?: () => void): void {
    if (this.firstTs !== -1) {
      // Header bytes 24-27: libvpx calls it the frame count, ffmpeg's IVF demuxer reads it
      // as the stream duration in time base units (they agree when the time base is the
      // frame rate). With a 90 kHz time base the duration is what players need: the last
      // pts plus one mean frame interval. A crash leaves 0 (unknown), which ffmpeg accepts.
      const last = this.lastPts < 0n ? 0n : this.lastPts;
      const step = this.frames > 1 ? last / BigInt(this.frames - 1) : 3000n;
      const n = Buffer.alloc(4);
      n.writeUInt32LE(Number((last + step) & 0xffffffffn));
      this.file.patch(24, n);
    }
    this.file.close(done);
  }
}

/**
 * WebM with VP8 frames (RFC 7741 §4.5 reassembly; container in webm.ts), which browsers
 * play. Like the IVF writer it starts at the first key frame (its header, RFC 6386 §9.1,
 * gives PixelWidth/PixelHeight) and, after a loss, resumes at the next key frame.
 * Timestamps: the RTP timestamp (90 kHz, RFC 7741 §4.1) extended across wraparound by
 * adding each frame's signed 32-bit difference to the previous one (RFC 3550 §5.1),
 * converted to ms from the first frame, kept strictly increasing. A timestamp that goes
 * back (a sender that restarted its RTP timeline, whose start is random, RFC 3550 §5.1)
 * continues the file one frame interval (the last positive difference) later instead of
 * crawling 1 ms per frame until the old timeline is caught up.
 *
 * Crash-safe as the other writers: each unit is whole elements with the Segment and
 * Clusters of unknown size; close() appends the Cues and patches sizes, Duration and the
 * Cues' SeekHead entry in place (not after a write failure or dropped units: then the
 * unknown sizes stay, which players accept).
 */
export class Vp8WebmWriter implements MediaWriter {
  private readonly file: UnitFile;
  private readonly gate = new Vp8KeyGate();
  private readonly mux = new WebmMuxer();
  private started = false;
  private lastTs = 0;
  /** 90 kHz ticks since the first frame (extended). */
  private ext = 0;
  /** The last positive difference between frames (90 kHz), 1/30 s before there is one. */
  private step = 3000;
  private lastMs = -1;

  constructor(
    readonly path: string,
    opts: UnitFileOptions = {},
  ) {
    this.file = new UnitFile(path, opts);
  }

  get size(): number {
    return this.file.size;
  }

  get frames(): number {
    return this.mux.frames;
  }

  write(p: RtpIn): void {
    const f = this.gate.push(p);
    if (!f) return;
    const { frame, key, dim } = f;
    if (dim) {
      this.started = true;
      this.lastTs = p.timestamp >>> 0;
      this.file.append(this.mux.header(dim));
    } else {
      const d = (p.timestamp - this.lastTs) | 0; // signed: RTP timestamps wrap (RFC 3550 §5.1)
      if (d > 0) this.step = d;
      this.ext += d < 0 ? this.step : d;
      this.lastTs = p.timestamp >>> 0;
    }
    let ms = Math.round(this.ext / 90);
    if (ms <= this.lastMs) ms = this.lastMs + 1; // keep timestamps increasing
    this.lastMs = ms;
    this.file.append(this.mux.frame(frame, ms, key));
  }

  flush(soon = false): void {
    if (soon) this.file.flushSoon();
    else this.file.flush();
  }

  close(done?: () => void): void {
    if (this.started && !this.file.error) {
      const { tail, patches } = this.mux.finish();
      if (tail.length) this.file.append(tail);
      // Sizes are patched only when every unit reached the file (a dropped unit would make them wrong).
      if (!this.file.error) for (const p of patches) this.file.patch(p.offset, p.data);
    }
    this.file.close(done);
  }
}

/**
 * Annex-B H.264 elementary stream (RFC 6184 depacketization). Starts at the first IDR
 * with parameter sets and, after a loss, resumes at the next IDR.
 */
export class H264Writer implements MediaWriter {
  private readonly file: UnitFile;
  private readonly depak = new H264Depacketizer();
  private needKey = true;

  constructor(
    readonly path: string,
    opts: UnitFileOptions = {},
  ) {
    this.file = new UnitFile(path, opts);
  }

  get size(): number {
    return this.file.size;
  }

  write(p: RtpIn): void {
    const au = this.depak.push(p.payload, p.seq, p.timestamp, p.marker);
    if (!au) return;
    if (!au.complete) {
      this.needKey = true;
      return;
    }
    if (this.needKey) {
      if (!au.idr) return;
      this.needKey = false;
    }
    this.file.append(au.data);
  }

  flush(soon = false): void {
    if (soon) this.file.flushSoon();
    else this.file.flush();
  }

  close(done?: () => void): void {
    this.file.close(done);
  }
}
