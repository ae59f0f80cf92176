/**
 * Test helpers for recording: make real media with ffmpeg, read its packets with small
 * readers of our own, and packetize them into RTP (RFC 7587 Opus, RFC 7741 VP8, RFC 6184
 * H.264) as rtp.packet events.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { RtpPacketEvent, RtpStreamEvent } from '../../../src/inspect/events.js';

export function haveTool(name: string): boolean {
  return spawnSync(name, ['-version'], { stdio: 'ignore' }).status === 0;
}

export function ffmpeg(args: string[]): void {
  execFileSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', '-y', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 120_000,
  });
}

export function makeOpus(out: string, seconds = 3): void {
  ffmpeg(['-f', 'lavfi', '-i', `sine=frequency=440:duration=${seconds}`, '-c:a', 'libopus', '-b:a', '32k', '-frame_duration', '20', out]);
}
export function makeVp8(out: string, seconds = 3): void {
  ffmpeg([
    '-f',
    'lavfi',
    '-i',
    `testsrc=size=320x240:rate=25:duration=${seconds}`,
    '-c:v',
    'libvpx',
    '-b:v',
    '400k',
    '-g',
    '25',
    '-auto-alt-ref',
    '0',
    '-f',
    'ivf',
    out,
  ]);
}
export function makeH264(out: string, seconds = 3): void {
  ffmpeg([
    '-f',
    'lavfi',
    '-i',
    `testsrc=size=320x240:rate=25:duration=${seconds}`,
    '-c:v',
    'libx264',
    '-profile:v',
    'baseline',
    '-bf',
    '0',
    '-g',
    '25',
    '-pix_fmt',
    'yuv420p',
    '-f',
    'h264',
    out,
  ]);
}

/** Packets of an Ogg file (RFC 3533 lacing), in order, all logical streams together. */
export function readOggPackets(file: string): Buffer[] {
  const b = readFileSync(file);
  const out: Buffer[] = [];
  let partial: Buffer[] = [];
  let off = 0;
  while (off + 27 <= b.length && b.toString('ascii', off, off + 4) === 'OggS') {
    const nseg = b[off + 26]!;
    const lacing = b.subarray(off + 27, off + 27 + nseg);
    let data = off + 27 + nseg;
    for (const l of lacing) {
      partial.push(b.subarray(data, data + l));
      data += l;
      if (l < 255) {
        out.push(Buffer.concat(partial));
        partial = [];
      }
    }
    off = data;
  }
  return out;
}

/** Frames of an IVF file with their pts. */
export function readIvf(file: string): {
  fourcc: string;
  width: number;
  height: number;
  frames: { pts: bigint; data: Buffer }[];
  count: number;
} {
  const b = readFileSync(file);
  if (b.toString('ascii', 0, 4) !== 'DKIF') throw new Error('not IVF');
  const hl = b.readUInt16LE(6);
  const frames: { pts: bigint; data: Buffer }[] = [];
  let off = hl;
  while (off + 12 <= b.length) {
    const n = b.readUInt32LE(off);
    if (off + 12 + n > b.length) break;
    frames.push({ pts: b.readBigUInt64LE(off + 4), data: b.subarray(off + 12, off + 12 + n) });
    off += 12 + n;
  }
  return { fourcc: b.toString('ascii', 8, 12), width: b.readUInt16LE(12), height: b.readUInt16LE(14), frames, count: b.readUInt32LE(24) };
}

/** NAL units of an Annex-B stream, grouped into access units (H.264 §7.4.1.2.3). */
export function readAnnexB(file: string): Buffer[][] {
  const b = readFileSync(file);
  const starts: { at: number; len: number }[] = [];
  for (let i = 0; i + 3 <= b.length; i++) {
    if (b[i] === 0 && b[i + 1] === 0 && b[i + 2] === 1) {
      const four = i > 0 && b[i - 1] === 0;
      starts.push({ at: four ? i - 1 : i, len: four ? 4 : 3 });
      i += 2;
    }
  }
  const nals: Buffer[] = [];
  for (let k = 0; k < starts.length; k++) {
    const s = starts[k]!.at + starts[k]!.len;
    const e = k + 1 < starts.length ? starts[k + 1]!.at : b.length;
    nals.push(b.subarray(s, e));
  }
  const aus: Buffer[][] = [];
  let cur: Buffer[] = [];
  let sawVcl = false;
  for (const n of nals) {
    const t = n[0]! & 0x1f;
    const vcl = t >= 1 && t <= 5;
    // A new access unit starts at AUD/SPS/PPS/SEI after a slice, or at a slice with
    // first_mb_in_slice == 0 (ue(v) '1' in the first bit) after a slice.
    const boundary = sawVcl && ((t >= 6 && t <= 9) || (vcl && (n[1]! & 0x80) !== 0));
    if (boundary) {
      aus.push(cur);
      cur = [];
      sawVcl = false;
    }
    cur.push(n);
    if (vcl) sawVcl = true;
  }
  if (cur.length) aus.push(cur);
  return aus;
}

export interface RtpOut {
  payload: Buffer;
  timestamp: number;
  marker: boolean;
}

/** RFC 7587 §4.2: one Opus packet per RTP packet, timestamp in 48 kHz samples. */
export function packetizeOpus(packets: Buffer[], samplesOf: (p: Buffer) => number, ts0 = 123456): RtpOut[] {
  let ts = ts0;
  return packets.map((p) => {
    const o = { payload: p, timestamp: ts >>> 0, marker: false };
    ts += samplesOf(p);
    return o;
  });
}

/** RFC 7741 §4.2 descriptor (X=1, I=1, M=1: 15-bit PictureID), fragments of <= mtu bytes. */
export function packetizeVp8(frames: { pts: bigint; data: Buffer }[], ptsToRtp: (pts: bigint) => number, mtu = 1200): RtpOut[] {
  const out: RtpOut[] = [];
  let picId = 100;
  for (const f of frames) {
    const ts = ptsToRtp(f.pts) >>> 0;
    for (let off = 0; off < f.data.length; off += mtu) {
      const chunk = f.data.subarray(off, Math.min(off + mtu, f.data.length));
      const d = Buffer.from([0x80 | (off === 0 ? 0x10 : 0), 0x80, 0x80 | ((picId >> 8) & 0x7f), picId & 0xff]);
      out.push({ payload: Buffer.concat([d, chunk]), timestamp: ts, marker: off + mtu >= f.data.length });
    }
    picId = (picId + 1) & 0x7fff;
  }
  return out;
}

/** RFC 6184 mode 1: SPS+PPS in one STAP-A, small NALs single, large ones as FU-A. */
export function packetizeH264(aus: Buffer[][], ts0 = 5000, step = 3600, mtu = 1200): RtpOut[] {
  const out: RtpOut[] = [];
  let ts = ts0;
  for (const au of aus) {
    const pkts: Buffer[] = [];
    let i = 0;
    while (i < au.length) {
      const n = au[i]!;
      const t = n[0]! & 0x1f;
      const next = au[i + 1];
      if (t === 7 && next && (next[0]! & 0x1f) === 8) {
        const hdr = Buffer.from([(n[0]! & 0x60) | 24]); // RFC 6184 §5.7.1 STAP-A
        const s1 = Buffer.alloc(2);
        s1.writeUInt16BE(n.length);
        const s2 = Buffer.alloc(2);
        s2.writeUInt16BE(next.length);
        pkts.push(Buffer.concat([hdr, s1, n, s2, next]));
        i += 2;
        continue;
      }
      if (n.length <= mtu) pkts.push(n);
      else {
        // RFC 6184 §5.8 FU-A
        const ind = (n[0]! & 0xe0) | 28;
        const body = n.subarray(1);
        for (let off = 0; off < body.length; off += mtu) {
          const last = off + mtu >= body.length;
          const fh = (off === 0 ? 0x80 : 0) | (last ? 0x40 : 0) | t;
          pkts.push(Buffer.concat([Buffer.from([ind, fh]), body.subarray(off, Math.min(off + mtu, body.length))]));
        }
      }
      i++;
    }
    pkts.forEach((p, k) => out.push({ payload: p, timestamp: ts >>> 0, marker: k === pkts.length - 1 }));
    ts += step;
  }
  return out;
}

export function streamEvent(ssrc: number, codec: string, pt: number, time: number): RtpStreamEvent {
  return { type: 'rtp.stream', time, dir: 'c2s', ssrc, payloadType: pt, codec, kind: codec === 'opus' ? 'audio' : 'video' };
}

/** rtp.packet events with consecutive sequence numbers (wrapping from seq0). */
export function rtpEvents(pkts: RtpOut[], ssrc: number, pt: number, t0: number, msPer = 20, seq0 = 65500): RtpPacketEvent[] {
  return pkts.map((p, i) => ({
    type: 'rtp.packet',
    time: t0 + i * msPer,
    dir: 'c2s',
    ssrc,
    payloadType: pt,
    seq: (seq0 + i) & 0xffff,
    index: seq0 + i,
    timestamp: p.timestamp,
    marker: p.marker,
    payloadSize: p.payload.length,
    payload: p.payload,
  }));
}

export interface Probe {
  codec: string;
  duration: number;
  frames: number;
}

export function ffprobe(file: string): Probe {
  const out = execFileSync(
    'ffprobe',
    ['-v', 'error', '-count_packets', '-show_entries', 'stream=codec_name,duration,nb_read_packets:format=duration', '-of', 'json', file],
    { encoding: 'utf8', timeout: 120_000 },
  );
  const j = JSON.parse(out) as {
    streams: { codec_name: string; duration?: string; nb_read_packets?: string }[];
    format: { duration?: string };
  };
  const s = j.streams[0]!;
  return { codec: s.codec_name, duration: Number(s.duration ?? j.format.duration ?? NaN), frames: Number(s.nb_read_packets ?? NaN) };
}

/** Decodes the whole file; returns ffmpeg's stderr (empty when it decoded cleanly). */
export function decodeErrors(file: string, extra: string[] = []): string {
  const r = spawnSync('ffmpeg', ['-hide_banner', '-nostdin', '-v', 'error', ...extra, '-i', file, '-f', 'null', '-'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  return (r.stderr ?? '') + (r.status === 0 ? '' : `exit ${r.status}`);
}

export function tsharkSeqs(pcap: string, port: number): number[] {
  const out = execFileSync('tshark', ['-r', pcap, '-d', `udp.port==${port},rtp`, '-T', 'fields', '-e', 'rtp.seq'], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, HOME: process.env.HOME ?? '/tmp' },
  });
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number);
}

export interface VideoProbe {
  codec: string;
  width: number;
  height: number;
  /** Decoded frames (ffprobe -count_frames). */
  frames: number;
  /** The container's duration (format=duration), s. */
  duration: number;
  formatName: string;
}

/** ffprobe -show_streams -show_format -count_frames of a video file's first stream. */
export function probeVideo(file: string): VideoProbe {
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-count_frames', '-of', 'json', file], {
    encoding: 'utf8',
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const j = JSON.parse(out) as {
    streams: { codec_name: string; width: number; height: number; nb_read_frames?: string }[];
    format: { duration?: string; format_name: string };
  };
  const s = j.streams[0]!;
  return {
    codec: s.codec_name,
    width: s.width,
    height: s.height,
    frames: Number(s.nb_read_frames ?? NaN),
    duration: Number(j.format.duration ?? NaN),
    formatName: j.format.format_name,
  };
}

/** One EBML element as read by readEbml: its ID, offset, header length, size (null: unknown) and children. */
export interface EbmlNode {
  id: number;
  offset: number;
  headerLen: number;
  size: number | null;
  data: Buffer;
  children: EbmlNode[];
}

const EBML_MASTERS = new Set([
  0x1a45dfa3, 0x18538067, 0x114d9b74, 0x4dbb, 0x1549a966, 0x1654ae6b, 0xae, 0xe0, 0x1f43b675, 0x1c53bb6b, 0xbb, 0xb7,
]);
/** IDs that end an unknown-size Cluster (its siblings at Segment level, RFC 8794 §6.2). */
const SEGMENT_LEVEL = new Set([0x1f43b675, 0x1c53bb6b, 0x114d9b74, 0x1549a966, 0x1654ae6b, 0x1254c367, 0x1941a469, 0x1043a770]);

function readVint(b: Buffer, off: number, keepMarker: boolean): { v: number; len: number; unknown: boolean } {
  const first = b[off]!;
  let len = 1;
  while (len <= 8 && !(first & (0x80 >> (len - 1)))) len++;
  if (len > 8 || off + len > b.length) throw new Error(`bad VINT at ${off}`);
  let v = BigInt(keepMarker ? first : first & (0xff >> len));
  for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(b[off + i]!);
  const unknown = !keepMarker && v === (1n << BigInt(7 * len)) - 1n;
  return { v: Number(v), len, unknown };
}

/** A small EBML reader (RFC 8794) of the WebM elements this project writes, unknown sizes included. */
export function readEbml(b: Buffer, start = 0, end = b.length, parentId = 0): EbmlNode[] {
  const out: EbmlNode[] = [];
  let off = start;
  while (off < end) {
    const id = readVint(b, off, true);
    if (parentId === 0x1f43b675 && SEGMENT_LEVEL.has(id.v)) break; // an unknown-size Cluster ends here
    const sz = readVint(b, off + id.len, false);
    const headerLen = id.len + sz.len;
    const dataStart = off + headerLen;
    let dataEnd = sz.unknown ? end : Math.min(dataStart + sz.v, end);
    const children = EBML_MASTERS.has(id.v) ? readEbml(b, dataStart, dataEnd, id.v) : [];
    if (sz.unknown && children.length) {
      const last = children[children.length - 1]!;
      dataEnd = last.offset + last.headerLen + (last.size ?? last.data.length);
    } else if (sz.unknown) dataEnd = dataStart;
    out.push({ id: id.v, offset: off, headerLen, size: sz.unknown ? null : sz.v, data: b.subarray(dataStart, dataEnd), children });
    off = dataEnd;
  }
  return out;
}

export interface WebmSummary {
  docType: string;
  segmentDataOffset: number;
  segmentSize: number | null;
  fileSize: number;
  width: number;
  height: number;
  codecId: string;
  duration: number | null;
  seek: Map<number, number>;
  clusters: { offset: number; size: number | null; time: number; blocks: { time: number; key: boolean; data: Buffer }[] }[];
  cues: { time: number; clusterPosition: number }[];
}

function uintOf(n: EbmlNode | undefined): number {
  return n ? n.data.reduce((a, x) => a * 256 + x, 0) : NaN;
}

/** Reads a WebM file written by Vp8WebmWriter into its parts. */
export function readWebm(file: string): WebmSummary {
  const b = readFileSync(file);
  const top = readEbml(b);
  const ebml = top.find((n) => n.id === 0x1a45dfa3)!;
  const seg = top.find((n) => n.id === 0x18538067)!;
  const kid = (n: EbmlNode | undefined, id: number) => n?.children.find((c) => c.id === id);
  const tracks = kid(seg, 0x1654ae6b);
  const entry = kid(tracks, 0xae);
  const video = kid(entry, 0xe0);
  const info = kid(seg, 0x1549a966);
  const dur = kid(info, 0x4489);
  const seek = new Map<number, number>();
  for (const s of kid(seg, 0x114d9b74)?.children.filter((c) => c.id === 0x4dbb) ?? []) {
    seek.set(uintOf(kid(s, 0x53ab)), uintOf(kid(s, 0x53ac)));
  }
  const clusters = seg.children
    .filter((c) => c.id === 0x1f43b675)
    .map((c) => {
      const time = uintOf(kid(c, 0xe7));
      const blocks = c.children
        .filter((x) => x.id === 0xa3)
        .map((x) => ({ time: time + x.data.readInt16BE(1), key: (x.data[3]! & 0x80) !== 0, data: x.data.subarray(4) }));
      return { offset: c.offset, size: c.size, time, blocks };
    });
  const cues = (kid(seg, 0x1c53bb6b)?.children ?? []).map((cp) => ({
    time: uintOf(kid(cp, 0xb3)),
    clusterPosition: uintOf(kid(kid(cp, 0xb7), 0xf1)),
  }));
  return {
    docType: kid(ebml, 0x4282)!.data.toString('ascii'),
    segmentDataOffset: seg.offset + seg.headerLen,
    segmentSize: seg.size,
    fileSize: b.length,
    width: uintOf(kid(video, 0xb0)),
    height: uintOf(kid(video, 0xba)),
    codecId: kid(entry, 0x86)!.data.toString('ascii'),
    duration: dur ? dur.data.readDoubleBE(0) : null,
    seek,
    clusters,
    cues,
  };
}
