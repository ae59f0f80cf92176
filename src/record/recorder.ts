/**
 * Recording (issue 5): one FlowRecorder per recorded flow turns inspection events into
 * files in a recording directory, sealed with a signed manifest on close or rotation
 * (manifest.ts describes the chain). See src/record/README.md.
 *
 *   rtp-<ssrc>.pcap      decrypted RTP of one SSRC as IPv4/UDP (header rebuilt from the
 *                        event: extensions and CSRCs are not kept)
 *   rtcp.pcap            decrypted RTCP compound packets of the flow
 *   audio-<ssrc>.opus    Ogg/Opus           video-<ssrc>.ivf    IVF/VP8
 *   video-<ssrc>.h264    Annex-B H.264      dc-<stream>.jsonl   data channel transcript
 *   files/<sha256>       binary data channel messages and extracted files
 *   meta.json            the flow and the recording's start
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock, TimerHandle } from '../util/clock.js';
import type { InspectEvent, RtpPacketEvent } from '../inspect/events.js';
import { RtpPcapWriter } from './pcap-writer.js';
import { UnitFile } from './unit-file.js';
import { H264Writer, OggOpusWriter, Vp8IvfWriter, type MediaWriter } from './media-writers.js';
import {
  ANCHOR,
  HEAD,
  listFiles,
  readChainPoint,
  readRecordings,
  recordingBytes,
  sealRecording,
  sha256Hex,
  storeCertificate,
  writeAtomic,
  writeChainPoint,
  type Signer,
} from './manifest.js';

export interface Endpoint {
  ip: string;
  port: number;
}

export interface FlowInfo {
  /** Stable id of the flow (used in the directory name). */
  flowId: string | number;
  /** The DTLS client side ('c2s' packets come from here). */
  client: Endpoint;
  peer: Endpoint;
  user?: string;
  ruleId?: string;
  [k: string]: unknown;
}

export interface RetentionPolicy {
  /** Delete recordings that ended more than this long ago. */
  maxAgeMs?: number;
  /** Delete the oldest recordings while the total exceeds this. */
  maxBytes?: number;
}

export interface RecordingOptions {
  dir: string;
  identity: Signer;
  clock: Clock;
  retention?: RetentionPolicy;
  /** How often buffered pages/frames/lines reach the file (default 1000 ms). */
  flushIntervalMs?: number;
  /** fsync on every flush (default true). */
  fsync?: boolean;
  /** Seal and start a new part when a part reaches this size or age. */
  rotateBytes?: number;
  rotateMs?: number;
  /** Caps per recording. */
  maxStreams?: number;
  maxChannels?: number;
  /** Largest data channel message stored under files/ (default 64 MiB). */
  maxFileBytes?: number;
}

export interface RecordingSealed {
  id: string;
  dir: string;
  seq: number;
  manifestHash: string;
  recovered: boolean;
}

export interface RetentionDeleted {
  id: string;
  seq: number;
  bytes: number;
  endedAt: string;
  reason: 'age' | 'size';
}

const TEXT_PPIDS = new Set([51, 54, 56]); // RFC 8831 §8: WebRTC String (partial, empty)

function stamp(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

function safe(s: string): string {
  return s.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64) || 'flow';
}

interface StreamState {
  codec: string;
  pcap: RtpPcapWriter | null;
  media: MediaWriter | null;
}

/** Records one flow. Feed it events with onEvent(); close() seals it. */
export class FlowRecorder {
  private id = '';
  private dir = '';
  private part = 0;
  private startedAt = 0;
  private streams = new Map<number, StreamState>();
  private codecs = new Map<number, string>(); // ssrc -> codec from rtp.stream
  private channels = new Map<number, UnitFile>();
  private labels = new Map<number, string>();
  private rtcp: RtpPcapWriter | null = null;
  private timer: TimerHandle | null;
  private closed = false;
  private readonly rtpHdr = Buffer.alloc(12);
  /** Recordings sealed by this recorder (one per part). */
  readonly sealed: RecordingSealed[] = [];

  constructor(
    private readonly store: RecordingStore,
    readonly flow: FlowInfo,
  ) {
    this.openPart();
    this.timer = store.clock.setInterval(() => this.tick(), store.flushIntervalMs);
  }

  get recordingId(): string {
    return this.id;
  }
  get recordingDir(): string {
    return this.dir;
  }

  private openPart(): void {
    this.part++;
    this.startedAt = this.store.clock.now();
    this.id = `${stamp(this.startedAt)}-${safe(String(this.flow.flowId))}-p${this.part}-${randomBytes(3).toString('hex')}`;
    this.dir = join(this.store.dir, this.id);
    mkdirSync(this.dir, { recursive: true, mode: 0o750 });
    writeFileSync(
      join(this.dir, 'meta.json'),
      JSON.stringify({ flow: this.flow, part: this.part, startedAt: new Date(this.startedAt).toISOString() }) + '\n',
    );
    this.store.opened(this.id);
  }

  onEvent(e: InspectEvent): void {
    if (this.closed) return;
    switch (e.type) {
      case 'rtp.stream':
        if (!this.codecs.has(e.ssrc) && this.codecs.size < this.store.maxStreams) this.codecs.set(e.ssrc, e.codec);
        break;
      case 'rtp.packet':
        if (e.rtcp) this.writeRtcp(e);
        else this.writeRtp(e);
        break;
      case 'datachannel.open':
        this.labels.set(e.stream, e.label);
        this.line(e.stream, {
          time: new Date(e.time).toISOString(),
          event: 'open',
          dir: e.dir,
          stream: e.stream,
          label: e.label,
          protocol: e.protocol,
          channelType: e.channelType,
          ordered: e.ordered,
        });
        break;
      case 'datachannel.message': {
        const text = TEXT_PPIDS.has(e.ppid);
        const rec: Record<string, unknown> = {
          time: new Date(e.time).toISOString(),
          event: 'message',
          dir: e.dir,
          stream: e.stream,
          label: e.label,
          ppid: e.ppid,
          size: e.data.length,
          sha256: sha256Hex(e.data),
        };
        if (text) rec.text = e.data.toString('utf8');
        else rec.file = this.storeFile(e.data, rec.sha256 as string);
        this.line(e.stream, rec);
        break;
      }
      case 'file': {
        const sha = sha256Hex(e.data);
        this.line(e.stream, {
          time: new Date(e.time).toISOString(),
          event: 'file',
          dir: e.dir,
          stream: e.stream,
          label: e.label,
          fileType: e.fileType,
          size: e.data.length,
          sha256: sha,
          file: this.storeFile(e.data, sha),
        });
        break;
      }
      default:
        break;
    }
  }

  private writeRtp(e: RtpPacketEvent): void {
    let st = this.streams.get(e.ssrc);
    if (!st) {
      if (this.streams.size >= this.store.maxStreams) return;
      const codec = this.codecs.get(e.ssrc) ?? 'unknown';
      st = { codec, pcap: null, media: null };
      const opts = { fsync: this.store.fsync };
      st.pcap = new RtpPcapWriter(join(this.dir, `rtp-${e.ssrc >>> 0}.pcap`), this.flow.client, this.flow.peer, opts);
      if (codec === 'opus') st.media = new OggOpusWriter(join(this.dir, `audio-${e.ssrc >>> 0}.opus`), e.ssrc, opts);
      else if (codec === 'vp8') st.media = new Vp8IvfWriter(join(this.dir, `video-${e.ssrc >>> 0}.ivf`), opts);
      else if (codec === 'h264') st.media = new H264Writer(join(this.dir, `video-${e.ssrc >>> 0}.h264`), opts);
      this.streams.set(e.ssrc, st);
    }
    // RFC 3550 §5.1 fixed header rebuilt: V=2, no padding, extension or CSRCs.
    const h = this.rtpHdr;
    h[0] = 0x80;
    h[1] = (e.marker ? 0x80 : 0) | (e.payloadType & 0x7f);
    h.writeUInt16BE(e.seq & 0xffff, 2);
    h.writeUInt32BE(e.timestamp >>> 0, 4);
    h.writeUInt32BE(e.ssrc >>> 0, 8);
    st.pcap?.writeParts(e.time, h, e.payload, e.dir === 's2c');
    st.media?.write(e);
  }

  private writeRtcp(e: RtpPacketEvent): void {
    if (!this.rtcp)
      this.rtcp = new RtpPcapWriter(join(this.dir, 'rtcp.pcap'), this.flow.client, this.flow.peer, { fsync: this.store.fsync });
    this.rtcp.write(e.time, e.payload, e.dir === 's2c');
  }

  private line(stream: number, rec: Record<string, unknown>): void {
    let f = this.channels.get(stream);
    if (!f) {
      if (this.channels.size >= this.store.maxChannels) return;
      f = new UnitFile(join(this.dir, `dc-${stream}.jsonl`), { fsync: this.store.fsync });
      this.channels.set(stream, f);
    }
    f.append(Buffer.from(JSON.stringify(rec) + '\n'));
  }

  /** Stores content under files/<sha256> (once); returns the relative path or null. */
  private storeFile(data: Buffer, sha: string): string | null {
    if (data.length > this.store.maxFileBytes) return null;
    const rel = `files/${sha}`;
    const p = join(this.dir, rel);
    if (!existsSync(p)) {
      mkdirSync(join(this.dir, 'files'), { recursive: true });
      writeAtomic(p, data); // whole or absent after a crash
    }
    return rel;
  }

  /** Flushes every file; rotates when the part is over its size or age. */
  flush(): void {
    for (const st of this.streams.values()) {
      st.pcap?.flush();
      st.media?.flush();
    }
    this.rtcp?.flush();
    for (const f of this.channels.values()) f.flush();
  }

  private tick(): void {
    if (this.closed) return;
    this.flush();
    const { rotateBytes, rotateMs } = this.store;
    if ((rotateMs && this.store.clock.now() - this.startedAt >= rotateMs) || (rotateBytes && this.partBytes() >= rotateBytes))
      this.rotate();
  }

  private partBytes(): number {
    let n = 0;
    for (const st of this.streams.values()) n += (st.pcap?.size ?? 0) + (st.media?.size ?? 0);
    n += this.rtcp?.size ?? 0;
    for (const f of this.channels.values()) n += f.size;
    return n;
  }

  /** Seals the current part and continues in a new one. */
  rotate(): RecordingSealed {
    const s = this.closePart();
    this.openPart();
    return s;
  }

  private closePart(): RecordingSealed {
    for (const st of this.streams.values()) {
      st.pcap?.close();
      st.media?.close();
    }
    this.rtcp?.close();
    for (const f of this.channels.values()) f.close();
    this.streams.clear();
    this.channels.clear();
    this.rtcp = null;
    const s = this.store.seal(this.dir, this.id, this.part, this.flow, this.startedAt, false);
    this.sealed.push(s);
    return s;
  }

  /** Closes every file and seals the recording; idempotent. */
  close(): RecordingSealed | null {
    if (this.closed) return null;
    this.closed = true;
    this.timer?.cancel();
    this.timer = null;
    return this.closePart();
  }
}

/**
 * The recordings directory: opens FlowRecorders, keeps the manifest chain, applies
 * retention. On construction it seals recordings left unsealed by a crash (marked
 * `recovered`), so the chain has no gaps.
 */
export class RecordingStore {
  readonly dir: string;
  readonly clock: Clock;
  readonly flushIntervalMs: number;
  readonly fsync: boolean;
  readonly rotateBytes: number;
  readonly rotateMs: number;
  readonly maxStreams: number;
  readonly maxChannels: number;
  readonly maxFileBytes: number;
  private readonly identity: Signer;
  private readonly retention: RetentionPolicy;
  private readonly openIds = new Set<string>();
  private seq = 0;
  private headHash: string | null = null;
  /** What the constructor sealed after a crash. */
  readonly recovered: RecordingSealed[] = [];

  constructor(opts: RecordingOptions) {
    this.dir = opts.dir;
    this.clock = opts.clock;
    this.identity = opts.identity;
    this.retention = opts.retention ?? {};
    this.flushIntervalMs = opts.flushIntervalMs ?? 1000;
    this.fsync = opts.fsync ?? true;
    this.rotateBytes = opts.rotateBytes ?? 0;
    this.rotateMs = opts.rotateMs ?? 0;
    this.maxStreams = opts.maxStreams ?? 64;
    this.maxChannels = opts.maxChannels ?? 1024;
    this.maxFileBytes = opts.maxFileBytes ?? 64 << 20;
    mkdirSync(this.dir, { recursive: true, mode: 0o750 });
    storeCertificate(this.dir, this.identity);
    const { sealed, unsealed } = readRecordings(this.dir);
    const last = sealed[sealed.length - 1];
    const anchor = readAnchor(this.dir);
    if (last) {
      this.seq = last.manifest.seq;
      this.headHash = last.hash;
    } else if (anchor) {
      this.seq = anchor.seq;
      this.headHash = anchor.manifestHash;
    }
    if (last) writeChainPoint(this.dir, HEAD, { seq: this.seq, manifestHash: last.hash, id: last.id }, this.identity); // repair a head left stale by a crash
    for (const id of unsealed) {
      const d = join(this.dir, id);
      let startedAt = this.clock.now();
      try {
        startedAt = statSync(d).mtimeMs;
      } catch {
        /* keep now */
      }
      this.recovered.push(this.seal(d, id, 0, { recovered: true }, startedAt, true));
    }
  }

  open(flow: FlowInfo): FlowRecorder {
    return new FlowRecorder(this, flow);
  }

  /** Ids of recordings being written. */
  get openRecordings(): string[] {
    return [...this.openIds];
  }

  /** @internal */
  opened(id: string): void {
    this.openIds.add(id);
  }

  /** @internal Seals one recording directory as the next link of the chain. */
  seal(dir: string, id: string, part: number, flow: Record<string, unknown>, startedAt: number, recovered: boolean): RecordingSealed {
    this.openIds.delete(id);
    const seq = this.seq + 1;
    const { hash } = sealRecording(
      dir,
      {
        id,
        seq,
        prev: this.headHash,
        part,
        flow,
        startedAt: new Date(startedAt).toISOString(),
        endedAt: new Date(this.clock.now()).toISOString(),
        ...(recovered ? { recovered: true } : {}),
      },
      this.identity,
    );
    this.seq = seq;
    this.headHash = hash;
    writeChainPoint(this.dir, HEAD, { seq, manifestHash: hash, id }, this.identity);
    return { id, dir, seq, manifestHash: hash, recovered };
  }

  /** Applies the store's retention policy now; returns what was deleted. */
  applyRetention(): RetentionDeleted[] {
    return applyRetention(this.dir, this.retention, this.clock.now(), this.identity);
  }
}

function readAnchor(dir: string): { seq: number; manifestHash: string } | null {
  return readChainPoint(dir, ANCHOR);
}

/**
 * Deletes sealed recordings, oldest (lowest seq) first, while the oldest ended more than
 * maxAgeMs before now or the total size exceeds maxBytes. Unsealed (open) recordings are
 * never deleted but count toward the size. Before deleting, the signed chain anchor is
 * moved to the newest deleted manifest, so the chain stays verifiable (manifest.ts).
 */
export function applyRetention(dir: string, policy: RetentionPolicy, now: number, identity: Signer): RetentionDeleted[] {
  if (!policy.maxAgeMs && !policy.maxBytes) return [];
  const { sealed, unsealed } = readRecordings(dir);
  const sizes = sealed.map(recordingBytes);
  let total = sizes.reduce((a, b) => a + b, 0);
  for (const u of unsealed) total += dirBytes(join(dir, u));
  const victims: RetentionDeleted[] = [];
  for (let i = 0; i < sealed.length; i++) {
    const rec = sealed[i]!;
    const ended = Date.parse(rec.manifest.endedAt);
    let reason: 'age' | 'size' | null = null;
    if (policy.maxAgeMs && Number.isFinite(ended) && now - ended > policy.maxAgeMs) reason = 'age';
    else if (policy.maxBytes && total > policy.maxBytes) reason = 'size';
    if (!reason) break; // only a prefix of the chain is pruned
    victims.push({ id: rec.id, seq: rec.manifest.seq, bytes: sizes[i]!, endedAt: rec.manifest.endedAt, reason });
    total -= sizes[i]!;
  }
  if (victims.length === 0) return [];
  const lastVictim = sealed[victims.length - 1]!;
  writeChainPoint(dir, ANCHOR, { seq: lastVictim.manifest.seq, manifestHash: lastVictim.hash, id: lastVictim.id }, identity, {
    prunedAt: new Date(now).toISOString(),
  });
  for (const v of victims) rmSync(join(dir, v.id), { recursive: true, force: true });
  return victims;
}

function dirBytes(d: string): number {
  let n = 0;
  try {
    for (const f of listFiles(d)) {
      try {
        n += statSync(join(d, f)).size;
      } catch {
        /* raced */
      }
    }
  } catch {
    /* gone */
  }
  return n;
}
