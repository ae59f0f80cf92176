/**
 * Recording (issue 5): one FlowRecorder per recorded flow turns inspection events into
 * files in a recording directory, sealed with a signed manifest on close or rotation
 * (manifest.ts describes the chain). See src/record/README.md.
 *
 *   rtp-<ssrc>.pcap      decrypted RTP of one SSRC as IPv4/UDP (header rebuilt from the
 *                        event: extensions and CSRCs are not kept)
 *   rtcp.pcap            decrypted RTCP compound packets of the flow
 *   audio-<ssrc>.opus    Ogg/Opus           video-<ssrc>.webm   WebM/VP8 (or .ivf: IVF/VP8)
 *   video-<ssrc>.h264    Annex-B H.264      dc-<stream>.jsonl   data channel transcript
 *   files/<sha256>       binary data channel messages and extracted files
 *   meta.json            the flow and the recording's start
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants as fsConstants,
  copyFileSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { basename, join } from 'node:path';
import type { Clock, TimerHandle } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { FileEvent, InspectEvent, RtpPacketEvent } from '../inspect/events.js';
import { RtpPcapWriter } from './pcap-writer.js';
import { QueueBudget, UnitFile, UNIT_FILE_MAX_QUEUED_BYTES, type UnitFileOptions } from './unit-file.js';
import {
  H264Writer,
  OggOpusWriter,
  Vp8IvfWriter,
  Vp8WebmWriter,
  OPUS_PRESKIP_MIDSTREAM,
  OPUS_PRESKIP_START,
  type MediaWriter,
  type RtpIn,
} from './media-writers.js';
import { opusPacketSamples } from './ogg.js';
import { codecSignature } from '../wire/rtp-codecs.js';
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
  type ManifestStream,
  type Signer,
} from './manifest.js';

export interface Endpoint {
  ip: string;
  port: number;
}

export interface FlowInfo {
  /** Stable id of the flow (used in the directory name). */
  flowId: string | number;
  /** The TURN client side (the DTLS client too unless dtlsClientIsClient says otherwise). */
  client: Endpoint;
  peer: Endpoint;
  /**
   * Whether `client` is the DTLS client, read at every packet (events carry directions
   * relative to the DTLS client: 'c2s' = from it). Undefined (or absent): it is.
   */
  dtlsClientIsClient?: () => boolean | undefined;
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
  /** Write failures (a full disk) are logged here: once per recording, once per sealing state change. */
  log?: Logger;
  /** Bytes one recording file may hold queued in memory (default UNIT_FILE_MAX_QUEUED_BYTES, 4 MiB). */
  maxQueuedBytesPerFile?: number;
  /** Bytes all recording files of the store may hold queued in memory (default RECORDING_QUEUE_MAX_BYTES, 64 MiB). */
  maxQueuedBytes?: number;
  /** Container of VP8 video: 'webm' (default: browsers play it) or 'ivf' (config recording.video_container). */
  videoContainer?: VideoContainer;
}

export type VideoContainer = 'webm' | 'ivf';

/**
 * A stream's first packets are kept until its codec is known (the inspector's rtp.stream
 * event, or the recorder's own look at the payloads), so the playable file starts at the
 * first packet: at most this many packets and this many payload bytes per stream. A
 * stream not classified within the bound is kept as the RTP pcap only (manifest
 * `streams[].note: 'unclassified'`).
 */
export const RECORDING_CLASSIFY_MAX_PACKETS = 64;
export const RECORDING_CLASSIFY_MAX_BYTES = 256 * 1024;
/** Packets that must look like Opus (RFC 6716 TOC, RFC 7587 48 kHz clock steps) for the recorder's own guess. */
const OPUS_GUESS_PACKETS = 4;

/** Bound of the bytes all recording files hold queued in memory (src/record/README.md). */
export const RECORDING_QUEUE_MAX_BYTES = 64 * 1024 * 1024;

/** Where a recording's I/O failed: one label of gatehouse_recording_write_failures_total. */
export type RecordingOp = 'open' | 'write' | 'seal' | 'head' | 'certificate';

/** What /metrics reads of a RecordingStore. */
export interface RecordingStats {
  /** I/O failures by operation, then by reason (the errno code, lower case: enospc, eio, ...). */
  failures: Record<RecordingOp, Record<string, number>>;
  /** Recordings that stopped writing early and are (or will be) sealed as incomplete. */
  incomplete: number;
  /** Recordings whose manifest could not be written yet (retried at the next seal). */
  unsealed: number;
  open: number;
  /** Bytes queued in memory for recording files (pending and in flight). */
  queuedBytes: number;
  /** Closed parts whose files are still being written (sealed once they are). */
  closing: number;
}

function reasonOf(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && /^[A-Z0-9_]{1,32}$/.test(code) ? code.toLowerCase() : 'error';
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

/**
 * Bounds of what a recording holds while its binary runs wait for their transfer's `file`
 * event (all runs of the recording together; the inspector's memory account does not see
 * them). Beyond RECORDING_HELD_LINES the held lines are written at once, as they are, with
 * `flushed: true` (their transfer is not named on them; the transfer's own line gives its
 * message range). Beyond RECORDING_HELD_BYTES (or RECORDING_HELD_BYTES_TOTAL for the
 * store) a message's bytes are not kept with its line:
 * if its transfer is stored whole the line names it as usual, otherwise the line says
 * `content: "not kept"`.
 */
export const RECORDING_HELD_LINES = 4096;
export const RECORDING_HELD_BYTES = 1024 * 1024;
/** The same bytes for every recording of the store together. */
export const RECORDING_HELD_BYTES_TOTAL = 64 * 1024 * 1024;

/** A transcript line of a binary message (or of its own `file` event) held until its transfer is known. */
interface HeldLine {
  rec: Record<string, unknown>;
  /** The message's bytes, stored under files/ only if no transfer holds them; null: beyond RECORDING_HELD_BYTES. */
  data: Buffer | null;
  sha: string;
  index: number;
}

/**
 * Consecutive binary messages of one data channel direction (as src/inspect/transfer.ts
 * joins them): their lines wait for the transfer's `file` event, which holds the whole.
 */
interface Run {
  stream: number;
  /** Index of the next message that continues the run. */
  next: number;
  held: HeldLine[];
  bytes: number;
  /** A text message followed: its transfer event comes next, or none does. */
  ended: boolean;
  /** That text message's line (written after the run's). */
  tail?: Record<string, unknown>;
}

/**
 * The spool file of a `file` event whose content the gateway spooled to disk
 * (src/inspect/transfer.ts spoolOf; this floor may not import it): path and size, read
 * during the event's call (the tracker removes it after).
 */
function spooledContent(e: FileEvent): { path: string; size: number } | null {
  const s = (e as FileEvent & { spool?: { path?: unknown; size?: unknown } }).spool;
  return s && typeof s.path === 'string' && typeof s.size === 'number' ? { path: s.path, size: s.size } : null;
}

function stamp(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

/** The flow as plain data (what meta.json and the manifest hold: no functions). */
function flowData(f: FlowInfo): Record<string, unknown> {
  return JSON.parse(JSON.stringify(f)) as Record<string, unknown>;
}

function safe(s: string): string {
  return s.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64) || 'flow';
}

/** One part of a recording: its directory, and the first write failure of its files. */
interface Part {
  id: string;
  dir: string;
  part: number;
  startedAt: number;
  failure: { reason: string; file: string; at: string } | null;
  opts: UnitFileOptions;
}

interface StreamState {
  ssrc: number;
  /** null while the stream is being classified. */
  codec: string | null;
  classifiedBy: ManifestStream['classifiedBy'];
  note?: ManifestStream['note'];
  pcap: RtpPcapWriter | null;
  media: MediaWriter | null;
  /** The first packets, held until the codec is known (bounded, see RECORDING_CLASSIFY_MAX_*). */
  pending: RtpIn[];
  pendingBytes: number;
  /** The recorder saw the inspector announce the stream: it has the stream from its first packet. */
  fromStart: boolean;
  /** The recorder's own Opus guess: packets that passed so far. */
  opusLike: number;
  lastTs: number;
  lastSamples: number;
}

/**
 * Records one flow. Feed it events with onEvent(); close() seals it. onEvent() only
 * queues whole units in memory (UnitFile): the writes happen asynchronously, started by
 * the flush timer (on the event-loop turn after it fires) or by a file's pending bytes.
 */
export class FlowRecorder {
  private cur!: Part;
  private part = 0;
  private streams = new Map<number, StreamState>();
  private codecs = new Map<number, string>(); // ssrc -> codec from rtp.stream
  /** ssrcs whose rtp.stream event this part saw before or among the stream's first packets. */
  private announced = new Set<number>();
  private channels = new Map<number, UnitFile>();
  private labels = new Map<number, string>();
  /** Binary runs per `${dir}:${stream}` whose transcript lines wait for their transfer. */
  private runs = new Map<string, Run>();
  /** Lines and message bytes held by `runs` (bounds RECORDING_HELD_LINES / RECORDING_HELD_BYTES). */
  private heldLines = 0;
  private heldBytes = 0;
  /** Times the held lines were written early (the line bound), and messages whose bytes were not kept. */
  readonly heldStats = { flushes: 0, dataDropped: 0 };
  private rtcp: RtpPcapWriter | null = null;
  private timer: TimerHandle | null;
  private closed = false;
  /** Set by the first write that failed: the recording stops taking data and is sealed incomplete. */
  failure: { reason: string; file: string; at: string } | null = null;
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
    return this.cur.id;
  }
  get recordingDir(): string {
    return this.cur.dir;
  }
  private get dir(): string {
    return this.cur.dir;
  }

  private openPart(): void {
    const startedAt = this.store.clock.now();
    const part = this.part + 1;
    const id = `${stamp(startedAt)}-${safe(String(this.flow.flowId))}-p${part}-${randomBytes(3).toString('hex')}`;
    const dir = join(this.store.dir, id);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    writeFileSync(join(dir, 'meta.json'), JSON.stringify({ flow: this.flow, part, startedAt: new Date(startedAt).toISOString() }) + '\n');
    const p: Part = { id, dir, part, startedAt, failure: null, opts: {} };
    p.opts = { ...this.store.fileOptions, onError: (err, file) => this.fail(err, file, p) };
    this.part = part;
    this.cur = p;
    this.store.opened(id);
  }

  /** Never throws: a recording that cannot be written stops, the flow goes on. */
  onEvent(e: InspectEvent): void {
    if (this.closed || this.failure) return;
    try {
      this.record(e);
    } catch (err) {
      this.fail(err, 'recording');
    }
  }

  /**
   * The first I/O failure of this recording (a write error or a full write queue, also of
   * a part still being written after rotation): counted and logged once, writing stops.
   */
  private fail(err: unknown, file: string, part: Part = this.cur): void {
    const f = { reason: reasonOf(err), file, at: new Date(this.store.clock.now()).toISOString() };
    part.failure ??= f;
    if (this.failure) return;
    this.failure = f;
    this.store.writeFailed(part.id, 'write', err, file);
  }

  private record(e: InspectEvent): void {
    // A run that a text message ended and whose transfer event did not follow at once had none.
    if (this.runs.size > 0) {
      for (const [k, run] of this.runs) {
        if (!run.ended) continue;
        if (e.type === 'file' && e.transfer && `${e.dir}:${e.stream}` === k) continue;
        this.settle(k, run, null);
      }
    }
    switch (e.type) {
      case 'rtp.stream': {
        if (!this.codecs.has(e.ssrc) && this.codecs.size < this.store.maxStreams) this.codecs.set(e.ssrc, e.codec);
        const st = this.streams.get(e.ssrc);
        if (!st) {
          if (this.part === 1) this.announced.add(e.ssrc);
        } else if (st.codec === null) {
          // Announced while its first packets are held: the stream is whole from its start.
          st.fromStart = this.part === 1;
          this.classify(st, e.codec, 'rtp.stream');
        }
        break;
      }
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
        const k = `${e.dir}:${e.stream}`;
        if (text) {
          rec.text = e.data.toString('utf8');
          // The channel's transfer ends with a text message: its file event (if any) comes next;
          // the line waits after the run's so that the transcript keeps the order.
          const run = this.runs.get(k);
          if (run && !run.ended) {
            run.ended = true;
            run.tail = rec;
          } else this.line(e.stream, rec);
        } else if (e.index === undefined || e.data.length === 0) {
          rec.file = this.storeFile(e.data, rec.sha256 as string);
          this.line(e.stream, rec);
        } else {
          this.holdMessage(k, e.stream, e.index, rec, e.data);
        }
        break;
      }
      case 'file':
        if (e.transfer) this.transferFile(e);
        else if (e.index !== undefined && this.runs.get(`${e.dir}:${e.stream}`)?.held.at(-1)?.index === e.index) {
          // A message that is a file of its own: its content is its message's, held with it.
          const sha = sha256Hex(e.data);
          const k = `${e.dir}:${e.stream}`;
          this.holdLine(k, this.runs.get(k)!, this.fileLine(e, sha), e.data, sha, e.index);
        } else {
          const sha = sha256Hex(e.data);
          this.line(e.stream, { ...this.fileLine(e, sha), file: this.storeFile(e.data, sha) });
        }
        break;
      default:
        break;
    }
  }

  private writeRtp(e: RtpPacketEvent): void {
    let st = this.streams.get(e.ssrc);
    if (!st) {
      if (this.streams.size >= this.store.maxStreams) return;
      st = {
        ssrc: e.ssrc >>> 0,
        codec: null,
        classifiedBy: null,
        pcap: null,
        media: null,
        pending: [],
        pendingBytes: 0,
        fromStart: this.announced.has(e.ssrc),
        opusLike: 0,
        lastTs: 0,
        lastSamples: 0,
      };
      // The flow's addresses: the peer's port is the one its datagrams use (FlowInfo.peer
      // is read at every packet, so a port learned after open() is the one written).
      st.pcap = new RtpPcapWriter(join(this.dir, `rtp-${st.ssrc}.pcap`), this.flow.client, this.flow.peer, this.cur.opts);
      this.streams.set(e.ssrc, st);
      const known = this.codecs.get(e.ssrc);
      if (known !== undefined) this.classify(st, known, 'rtp.stream');
    }
    // RFC 3550 §5.1 fixed header rebuilt: V=2, no padding, extension or CSRCs.
    const h = this.rtpHdr;
    h[0] = 0x80;
    h[1] = (e.marker ? 0x80 : 0) | (e.payloadType & 0x7f);
    h.writeUInt16BE(e.seq & 0xffff, 2);
    h.writeUInt32BE(e.timestamp >>> 0, 4);
    h.writeUInt32BE(e.ssrc >>> 0, 8);
    st.pcap?.writeParts(e.time, h, e.payload, this.fromPeer(e));
    if (st.codec === null) this.hold(st, e);
    else st.media?.write(e);
  }

  /** Keeps a packet of a stream not classified yet, and tries to classify it from its payloads. */
  private hold(st: StreamState, e: RtpPacketEvent): void {
    if (st.pending.length >= RECORDING_CLASSIFY_MAX_PACKETS || st.pendingBytes + e.payload.length > RECORDING_CLASSIFY_MAX_BYTES) {
      st.note = 'unclassified';
      this.classify(st, 'unclassified', null);
      this.store.log?.info(
        { recording: this.cur.id, ssrc: st.ssrc, packets: st.pending.length },
        'recording: RTP stream not classified within the bound; kept as RTP pcap only',
      );
      return;
    }
    // The event's buffer may be reused upstream: keep a copy.
    st.pending.push({ payload: Buffer.from(e.payload), seq: e.seq, timestamp: e.timestamp, marker: e.marker });
    st.pendingBytes += e.payload.length;
    const guess = this.guess(st, e);
    if (guess) this.classify(st, guess, 'payload');
  }

  /**
   * The recorder's own classification, for a stream the inspector announced before this
   * recording saw it: a VP8 key frame or H.264 SPS/IDR start (codecSignature), or Opus
   * when OPUS_GUESS_PACKETS packets in a row have a valid TOC (RFC 6716 §3.1) and RTP
   * timestamps that advance by whole multiples of the previous packet's duration on the
   * 48 kHz clock (RFC 7587 §4.1; more than one when packets were lost or in DTX).
   */
  private guess(st: StreamState, e: RtpPacketEvent): string | null {
    const sig = codecSignature(e.payload);
    if (sig) return sig;
    const n = opusPacketSamples(e.payload);
    if (n === 0 || n > 5760) {
      st.opusLike = 0;
      return null;
    }
    if (st.opusLike > 0) {
      const d = (e.timestamp - st.lastTs) >>> 0;
      if (d === 0 || d % st.lastSamples !== 0 || d > 48000 * 10) st.opusLike = 0;
    }
    st.opusLike++;
    st.lastTs = e.timestamp >>> 0;
    st.lastSamples = n;
    return st.opusLike >= OPUS_GUESS_PACKETS ? 'opus' : null;
  }

  /** The codec of a stream is known: its writer is made and the held packets written first. */
  private classify(st: StreamState, codec: string, by: ManifestStream['classifiedBy']): void {
    if (st.codec !== null) return;
    st.codec = codec;
    st.classifiedBy = by;
    const opts = this.cur.opts;
    if (codec === 'opus')
      st.media = new OggOpusWriter(
        join(this.dir, `audio-${st.ssrc}.opus`),
        st.ssrc,
        opts,
        st.fromStart ? OPUS_PRESKIP_START : OPUS_PRESKIP_MIDSTREAM,
      );
    else if (codec === 'vp8')
      st.media =
        this.store.videoContainer === 'ivf'
          ? new Vp8IvfWriter(join(this.dir, `video-${st.ssrc}.ivf`), opts)
          : new Vp8WebmWriter(join(this.dir, `video-${st.ssrc}.webm`), opts);
    else if (codec === 'h264') st.media = new H264Writer(join(this.dir, `video-${st.ssrc}.h264`), opts);
    else st.note ??= codec === 'unclassified' ? 'unclassified' : 'codec';
    const held = st.pending;
    st.pending = [];
    st.pendingBytes = 0;
    if (st.media) for (const p of held) st.media.write(p);
  }

  /** What the manifest says of each RTP stream of the part. */
  private streamSummary(): ManifestStream[] {
    return [...this.streams.values()].map((st) => ({
      ssrc: st.ssrc,
      codec: st.codec ?? 'unclassified',
      classifiedBy: st.classifiedBy,
      file: st.media ? basename(st.media.path) : null,
      pcap: `rtp-${st.ssrc}.pcap`,
      ...(st.media ? {} : { note: st.note ?? 'unclassified' }),
    }));
  }

  /** Whether the packet came from the peer: event directions are DTLS roles (events.ts). */
  private fromPeer(e: RtpPacketEvent): boolean {
    const clientIsDtlsClient = this.flow.dtlsClientIsClient?.() !== false;
    return (e.dir === 's2c') === clientIsDtlsClient;
  }

  private writeRtcp(e: RtpPacketEvent): void {
    if (!this.rtcp) this.rtcp = new RtpPcapWriter(join(this.dir, 'rtcp.pcap'), this.flow.client, this.flow.peer, this.cur.opts);
    this.rtcp.write(e.time, e.payload, this.fromPeer(e));
  }

  private fileLine(e: FileEvent, sha: string): Record<string, unknown> {
    const rec: Record<string, unknown> = {
      time: new Date(e.time).toISOString(),
      event: 'file',
      dir: e.dir,
      stream: e.stream,
      label: e.label,
    };
    if (e.name !== undefined) rec.name = e.name;
    rec.fileType = e.fileType;
    rec.size = e.headOnly ? e.size : e.data.length;
    rec.sha256 = sha;
    if (e.index !== undefined) rec.index = e.index;
    return rec;
  }

  /** A binary message: its line waits with its run (consecutive binary messages) for the transfer. */
  private holdMessage(k: string, stream: number, index: number, rec: Record<string, unknown>, data: Buffer): void {
    let run = this.runs.get(k);
    if (run && (run.ended || run.next !== index)) {
      this.settle(k, run, null);
      run = undefined;
    }
    if (!run) this.runs.set(k, (run = { stream, next: index, held: [], bytes: 0, ended: false }));
    rec.index = index;
    this.holdLine(k, run, rec, data, rec.sha256 as string, index);
    run.next = index + 1;
    run.bytes += data.length;
    // Bounded: a run larger than a stored file keeps its messages as they are.
    if (run.bytes > this.store.maxFileBytes && this.runs.get(k) === run) this.settle(k, run, null);
  }

  /** Holds a line with its run, within RECORDING_HELD_LINES / RECORDING_HELD_BYTES. */
  private holdLine(k: string, run: Run, rec: Record<string, unknown>, data: Buffer, sha: string, index: number): void {
    let keep: Buffer | null = data;
    if (this.heldBytes + data.length > RECORDING_HELD_BYTES || this.store.heldBytes + data.length > RECORDING_HELD_BYTES_TOTAL) {
      keep = null;
      this.heldStats.dataDropped++;
    }
    run.held.push({ rec, data: keep, sha, index });
    this.heldLines++;
    if (keep) {
      this.heldBytes += keep.length;
      this.store.heldBytes += keep.length;
    }
    if (this.heldLines >= RECORDING_HELD_LINES) {
      // Too many lines waiting: every run is written now, marked; the run goes on empty.
      this.heldStats.flushes++;
      for (const [rk, r] of [...this.runs]) {
        this.settle(rk, r, null, true);
        if (rk !== k || r.ended) continue;
        r.held = []; // the same run goes on, empty (its transfer may still come)
        this.runs.set(rk, r);
      }
    }
  }

  /**
   * Writes a run's held lines. Messages inside `t`'s range (its transfer, stored whole at
   * `whole`, or not kept) name the transfer; the others are stored under files/ each.
   */
  private settle(k: string, run: Run, t: { first: number; last: number; sha: string; whole: string | null } | null, flushed = false): void {
    this.runs.delete(k);
    for (const h of run.held) {
      this.heldLines--;
      if (h.data) {
        this.heldBytes -= h.data.length;
        this.store.heldBytes -= h.data.length;
      }
    }
    for (const h of run.held) {
      const inT = t && h.index >= t.first && h.index <= t.last;
      const mark = flushed ? { flushed: true } : {};
      if (inT && t.whole) {
        this.line(run.stream, { ...h.rec, transfer: t.sha, file: null });
      } else if (h.data) {
        // No whole to hold them (no transfer, or its content was not kept): the message is kept as it came.
        this.line(run.stream, { ...h.rec, ...(inT ? { transfer: t.sha } : {}), ...mark, file: this.storeFile(h.data, h.sha) });
      } else {
        // Its bytes were beyond RECORDING_HELD_BYTES.
        this.line(run.stream, { ...h.rec, ...(inT ? { transfer: t.sha } : {}), ...mark, file: null, content: 'not kept' });
      }
    }
    if (run.tail) this.line(run.stream, run.tail);
  }

  /**
   * A reassembled transfer (issue 9): stored once, whole, under files/<sha256>; its
   * messages' lines name it. A large one comes in a spool file (src/record/spool.ts; the
   * event's `headOnly` data is its head): copied from there, never read into memory.
   */
  private transferFile(e: FileEvent): void {
    const tr = e.transfer!;
    const k = `${e.dir}:${e.stream}`;
    const spool = spooledContent(e);
    // The spool's name is the tracker's streamed SHA-256 of exactly the bytes it wrote.
    const sha = e.headOnly ? e.sha256 : sha256Hex(e.data);
    const whole = spool ? this.storeSpooled(spool, sha) : e.headOnly ? null : this.storeFile(e.data, sha);
    const run = this.runs.get(k);
    if (run) this.settle(k, run, { first: tr.firstMessage, last: tr.lastMessage, sha, whole });
    const rec = this.fileLine(e, sha);
    rec.transfer = {
      first_message: tr.firstMessage,
      last_message: tr.lastMessage,
      messages: tr.messages,
      end: tr.end,
      ...(tr.announcedSize !== undefined ? { announced_size: tr.announcedSize } : {}),
    };
    if (e.overLimit) rec.over_limit = true;
    rec.file = whole;
    // headOnly: the gateway did not keep the content (over policy.max_file_bytes, memory pressure, spool failure).
    const kept = spool ? spool.size : e.data.length;
    if (e.headOnly && !spool) rec.content = 'not kept';
    else if (!whole) rec.content = kept > this.store.maxFileBytes ? 'over maxFileBytes' : 'not written';
    this.line(e.stream, rec);
  }

  /** Writes every held line (the part ends). */
  private settleAll(): void {
    for (const [k, run] of [...this.runs]) this.settle(k, run, null);
  }

  private line(stream: number, rec: Record<string, unknown>): void {
    let f = this.channels.get(stream);
    if (!f) {
      if (this.channels.size >= this.store.maxChannels) return;
      f = new UnitFile(join(this.dir, `dc-${stream}.jsonl`), this.cur.opts);
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
      try {
        mkdirSync(join(this.dir, 'files'), { recursive: true });
        writeAtomic(p, data); // whole or absent after a crash (or a full disk)
      } catch (err) {
        this.fail(err, rel);
        return null;
      }
    }
    return rel;
  }

  /**
   * Stores a spooled transfer under files/<sha256> (once): copied in the kernel
   * (copy_file_range) to a temp file, fsynced, renamed — whole or absent after a crash,
   * like writeAtomic. Synchronous like every files/ write (README "Recording").
   */
  private storeSpooled(spool: { path: string; size: number }, sha: string): string | null {
    if (spool.size > this.store.maxFileBytes) return null;
    const rel = `files/${sha}`;
    const p = join(this.dir, rel);
    if (!existsSync(p)) {
      const tmp = `${p}.tmp`;
      try {
        mkdirSync(join(this.dir, 'files'), { recursive: true });
        copyFileSync(spool.path, tmp, fsConstants.COPYFILE_FICLONE);
        const fd = openSync(tmp, 'r+');
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        renameSync(tmp, p);
      } catch (err) {
        rmSync(tmp, { force: true });
        this.fail(err, rel);
        return null;
      }
    }
    return rel;
  }

  /** Starts a write of every file's pending units (soon: on the next event-loop turn); never waits. */
  flush(soon = false): void {
    for (const st of this.streams.values()) {
      st.pcap?.flush(soon);
      st.media?.flush(soon);
    }
    this.rtcp?.flush(soon);
    for (const f of this.channels.values()) soon ? f.flushSoon() : f.flush();
  }

  /** The flush timer: never throws (it runs outside any flow's call stack). */
  private tick(): void {
    if (this.closed) return;
    try {
      // The writes start on the next turn: a close (or rotation) in this one still finds
      // nothing in flight and seals at once.
      this.flush(true);
      if (this.failure) return; // no new parts for a recording that stopped
      const { rotateBytes, rotateMs } = this.store;
      if ((rotateMs && this.store.clock.now() - this.cur.startedAt >= rotateMs) || (rotateBytes && this.partBytes() >= rotateBytes))
        this.rotate();
    } catch (err) {
      this.fail(err, 'recording');
    }
  }

  private partBytes(): number {
    let n = 0;
    for (const st of this.streams.values()) n += (st.pcap?.size ?? 0) + (st.media?.size ?? 0);
    n += this.rtcp?.size ?? 0;
    for (const f of this.channels.values()) n += f.size;
    return n;
  }

  /** Seals the current part and continues in a new one (null: the manifest could not be written yet). */
  rotate(): RecordingSealed | null {
    const s = this.closePart();
    try {
      this.openPart();
    } catch (err) {
      // No directory for the next part (a full disk): the recording ends here.
      this.store.writeFailed(this.cur.id, 'open', err, 'meta.json');
      this.closed = true;
      this.timer?.cancel();
      this.timer = null;
    }
    return s;
  }

  /**
   * Closes the part's files and seals it once every one of them is written and closed (the
   * manifest hashes them). With no write in flight that is now, and the result is
   * returned; otherwise null, and the part is sealed when its last write completes
   * (RecordingStore.drained() waits for that).
   */
  private closePart(): RecordingSealed | null {
    try {
      if (!this.failure) this.settleAll();
    } catch (err) {
      this.fail(err, 'recording');
    }
    this.runs.clear();
    this.store.heldBytes -= this.heldBytes;
    this.heldLines = 0;
    this.heldBytes = 0;
    const part = this.cur;
    const stoppedBy = this.failure; // a failure of another part that stopped this one early
    let left = 1;
    let now = true;
    let result: RecordingSealed | null = null;
    const streams = this.streamSummary();
    const one = () => {
      if (--left > 0) return;
      try {
        const s = this.store.seal(
          part.dir,
          part.id,
          part.part,
          flowData(this.flow),
          part.startedAt,
          false,
          part.failure ?? stoppedBy ?? undefined,
          streams.length ? streams : undefined,
        );
        if (s) this.sealed.push(s);
        result = s;
      } catch (err) {
        this.store.log?.error({ recording: part.id, err: (err as Error).message }, 'recordings: sealing failed');
      } finally {
        if (!now) this.store.partSealed();
      }
    };
    const closeOne = (close: (done: () => void) => void) => {
      left++;
      try {
        close(one);
      } catch (err) {
        this.fail(err, 'recording', part);
        one();
      }
    };
    for (const st of this.streams.values()) {
      const { pcap, media } = st;
      if (pcap) closeOne((d) => pcap.close(d));
      if (media) closeOne((d) => media.close(d));
    }
    const rtcp = this.rtcp;
    if (rtcp) closeOne((d) => rtcp.close(d));
    for (const f of this.channels.values()) closeOne((d) => void f.close(d));
    this.streams.clear();
    this.announced.clear();
    this.channels.clear();
    this.rtcp = null;
    if (left > 1) {
      now = false;
      this.store.partClosing();
    }
    one();
    return now ? result : null;
  }

  /**
   * Closes every file and seals the recording; idempotent. The seal comes after every
   * file's last write: with none in flight that is now and the sealed recording is
   * returned; otherwise null, and it is sealed when the writes complete (await
   * store.drained()). Null also when already closed, or when the manifest could not be
   * written (a full disk): the store retries at its next seal, and the next start seals
   * it as recovered otherwise.
   */
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
  readonly videoContainer: VideoContainer;
  private readonly identity: Signer;
  private readonly retention: RetentionPolicy;
  private readonly openIds = new Set<string>();
  /** @internal */
  readonly log: Logger | undefined;
  /** The bound of the bytes every recording file of this store holds queued. */
  readonly queue: QueueBudget;
  /** @internal Message bytes held by every recording's binary runs (bound RECORDING_HELD_BYTES_TOTAL). */
  heldBytes = 0;
  /** @internal What every recording file is opened with (onError is added per part). */
  readonly fileOptions: UnitFileOptions;
  private closingParts = 0;
  private drainWaiters: (() => void)[] = [];
  private readonly failures: RecordingStats['failures'] = { open: {}, write: {}, seal: {}, head: {}, certificate: {} };
  private incomplete = 0;
  /** Recordings whose manifest could not be written yet, oldest first. */
  private readonly pendingSeals: {
    dir: string;
    id: string;
    part: number;
    flow: Record<string, unknown>;
    startedAt: number;
    recovered: boolean;
    incomplete?: { reason: string; file: string; at: string };
    streams?: ManifestStream[];
  }[] = [];
  private sealFailing = false;
  private certificateStored = false;
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
    this.videoContainer = opts.videoContainer ?? 'webm';
    this.log = opts.log;
    this.queue = new QueueBudget(opts.maxQueuedBytes ?? RECORDING_QUEUE_MAX_BYTES);
    this.fileOptions = { fsync: this.fsync, maxQueued: opts.maxQueuedBytesPerFile ?? UNIT_FILE_MAX_QUEUED_BYTES, budget: this.queue };
    mkdirSync(this.dir, { recursive: true, mode: 0o750 });
    this.storeCertificate();
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
    if (last) this.writeHead({ seq: this.seq, manifestHash: last.hash, id: last.id }); // repair a head left stale by a crash
    for (const id of unsealed) {
      const d = join(this.dir, id);
      let startedAt = this.clock.now();
      try {
        startedAt = statSync(d).mtimeMs;
      } catch {
        /* keep now */
      }
      const s = this.seal(d, id, 0, { recovered: true }, startedAt, true);
      if (s) this.recovered.push(s);
    }
  }

  /** Starts recording a flow; throws when its directory cannot be made (counted as an `open` failure). */
  open(flow: FlowInfo): FlowRecorder {
    try {
      return new FlowRecorder(this, flow);
    } catch (err) {
      this.count('open', err);
      throw err;
    }
  }

  get stats(): RecordingStats {
    const failures = {} as RecordingStats['failures'];
    for (const [op, m] of Object.entries(this.failures)) failures[op as RecordingOp] = { ...m };
    return {
      failures,
      incomplete: this.incomplete,
      unsealed: this.pendingSeals.length,
      open: this.openIds.size,
      queuedBytes: this.queue.bytes,
      closing: this.closingParts,
    };
  }

  /**
   * Resolves once every recording part closed so far is written and sealed (or its seal
   * is held back by a full disk: see stats.unsealed). `gatehouse serve` waits for it on stop.
   */
  drained(): Promise<void> {
    if (this.closingParts === 0) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  /** @internal A closed part waits for its files' writes. */
  partClosing(): void {
    this.closingParts++;
  }

  /** @internal That part is sealed (or its seal is pending). */
  partSealed(): void {
    this.closingParts = Math.max(0, this.closingParts - 1);
    if (this.closingParts > 0) return;
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const r of w) r();
  }

  private count(op: RecordingOp, err: unknown): void {
    const r = reasonOf(err);
    this.failures[op][r] = (this.failures[op][r] ?? 0) + 1;
  }

  /** @internal A recording's file could not be written: counted, logged once per recording. */
  writeFailed(id: string, op: RecordingOp, err: unknown, file: string): void {
    this.count(op, err);
    const fields = { recording: id, file, reason: reasonOf(err), err: (err as Error)?.message };
    if (op === 'open') this.log?.warn(fields, 'recording stopped: its next part could not be started');
    if (op !== 'write') return;
    this.incomplete++;
    this.log?.warn(fields, 'recording stopped: a file could not be written; it will be sealed as incomplete');
  }

  private storeCertificate(): void {
    if (this.certificateStored) return;
    try {
      storeCertificate(this.dir, this.identity);
      this.certificateStored = true;
    } catch (err) {
      this.count('certificate', err);
      this.log?.warn({ reason: reasonOf(err), err: (err as Error).message }, 'recordings: cannot store the gateway certificate (retried)');
    }
  }

  private writeHead(p: { seq: number; manifestHash: string; id: string }): void {
    try {
      writeChainPoint(this.dir, HEAD, p, this.identity);
    } catch (err) {
      // A stale head is repaired by the next seal or the next start.
      this.count('head', err);
    }
  }

  /** Ids of recordings being written. */
  get openRecordings(): string[] {
    return [...this.openIds];
  }

  /** @internal */
  opened(id: string): void {
    this.openIds.add(id);
  }

  /**
   * @internal Seals one recording directory as the next link of the chain. Never throws:
   * when the manifest cannot be written (a full disk) it returns null and the recording
   * is retried, first, at the next seal or retention run.
   */
  seal(
    dir: string,
    id: string,
    part: number,
    flow: Record<string, unknown>,
    startedAt: number,
    recovered: boolean,
    incomplete?: { reason: string; file: string; at: string },
    streams?: ManifestStream[],
  ): RecordingSealed | null {
    this.openIds.delete(id);
    this.retryPendingSeals();
    const job = { dir, id, part, flow, startedAt, recovered, ...(incomplete ? { incomplete } : {}), ...(streams ? { streams } : {}) };
    if (this.pendingSeals.length) {
      this.pendingSeals.push(job); // keep chain order: older recordings are sealed first
      return null;
    }
    return this.trySeal(job);
  }

  private retryPendingSeals(): void {
    while (this.pendingSeals.length) {
      if (!this.trySeal(this.pendingSeals[0]!, true)) return;
      this.pendingSeals.shift();
    }
  }

  private trySeal(job: (typeof this.pendingSeals)[number], retry = false): RecordingSealed | null {
    const { dir, id, part, flow, startedAt, recovered, incomplete, streams } = job;
    const seq = this.seq + 1;
    let hash: string;
    try {
      this.storeCertificate();
      ({ hash } = sealRecording(
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
          ...(incomplete ? { incomplete } : {}),
          ...(streams ? { streams } : {}),
        },
        this.identity,
      ));
    } catch (err) {
      this.count('seal', err);
      if (!retry) this.pendingSeals.push(job);
      if (!this.sealFailing) {
        this.sealFailing = true;
        this.log?.warn(
          { recording: id, reason: reasonOf(err), err: (err as Error).message },
          'recordings: cannot write a manifest; sealing is retried at the next seal (or the next start)',
        );
      }
      return null;
    }
    if (this.sealFailing) {
      this.sealFailing = false;
      this.log?.info({ recording: id }, 'recordings: sealing again');
    }
    this.seq = seq;
    this.headHash = hash;
    this.writeHead({ seq, manifestHash: hash, id });
    return { id, dir, seq, manifestHash: hash, recovered };
  }

  /** Applies the store's retention policy now (and retries manifests a full disk held back); returns what was deleted. */
  applyRetention(): RetentionDeleted[] {
    const deleted = applyRetention(this.dir, this.retention, this.clock.now(), this.identity);
    this.retryPendingSeals();
    return deleted;
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
