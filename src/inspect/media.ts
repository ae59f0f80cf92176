/**
 * Media inspection: SRTP/SRTCP packets of one flow (one DTLS association) in, decrypted
 * RTP/RTCP and events out. The pipeline classifies the datagram as RTP/RTCP first (RFC 7983
 * §7: first octet 128..191) and calls handle(); this class tells RTP from RTCP (RFC 5761 §4),
 * decrypts with the association's SRTP keys (RFC 5764 §4.2: c2s is protected with the client
 * write keys, s2c with the server write keys) and emits:
 *
 *   keys.verified / keys.invalid (what 'srtp')  first packet per direction that authenticates
 *                                               (or fails to, before any success)
 *   rtp.stream                                  once per (direction, SSRC), with the codec
 *   rtp.packet                                  every authenticated RTP packet (and RTCP,
 *                                               with rtcp: true)
 *   undecryptable (what 'srtp' | 'srtcp')       failures, rate-limited with a count
 *
 * State is bounded: at most maxSsrcs tracked streams per direction and SrtpContext's own
 * per-SSRC cap. Key material never reaches events.
 */
import type { Direction, InspectEvent, EventListener } from './events.js';
import { SrtpContext, srtpProfileParams, type SrtpFailure } from '../wire/srtp.js';
import { isRtcp, parseRtp, parseRtpHeader, parseRtcpCompound } from '../wire/rtp.js';
import { codecSignature } from '../wire/rtp-codecs.js';

export { codecSignature };

export interface MediaKeys {
  /** RFC 5764 §4.1.2 / RFC 7714 §14.2 protection profile. */
  profile: number;
  clientMasterKey: Buffer;
  clientMasterSalt: Buffer;
  serverMasterKey: Buffer;
  serverMasterSalt: Buffer;
}

export interface MediaTrackerOptions {
  emit: EventListener;
  /** Default association id for events (client_random hex). */
  association?: string;
  /** Streams tracked per direction (oldest forgotten first). Default 64. */
  maxSsrcs?: number;
  /** Minimum interval between two `undecryptable` events of one kind, in ms. Default 1000. */
  undecryptableIntervalMs?: number;
  /** SRTP replay window (RFC 3711 §3.3.2), 0 = off. Default 0 (a gateway forwards originals). */
  replayWindow?: number;
  /** Failures (with no success yet in that direction) before keys.invalid. Default 1. */
  invalidAfter?: number;
  /** Packets to watch before giving up on guessing a codec. Default 30. */
  guessPackets?: number;
}

export type MediaVerdict = 'rtp' | 'rtcp' | 'no-keys' | 'undecryptable' | 'not-media';

export interface MediaStats {
  rtp: number;
  rtcp: number;
  undecryptable: number;
  noKeys: number;
}

// RFC 3551 §6 static payload types.
const STATIC_PT: Record<number, [string, 'audio' | 'video']> = {
  0: ['pcmu', 'audio'],
  3: ['gsm', 'audio'],
  4: ['g723', 'audio'],
  8: ['pcma', 'audio'],
  9: ['g722', 'audio'],
  13: ['cn', 'audio'],
  18: ['g729', 'audio'],
  26: ['jpeg', 'video'],
  31: ['h261', 'video'],
  32: ['mpv', 'video'],
  34: ['h263', 'video'],
};

const AUDIO = new Set([
  'opus',
  'pcmu',
  'pcma',
  'g722',
  'g729',
  'gsm',
  'g723',
  'cn',
  'isac',
  'ilbc',
  'telephone-event',
  'l16',
  'amr',
  'amr-wb',
]);
const VIDEO = new Set(['vp8', 'vp9', 'h264', 'h265', 'av1', 'jpeg', 'h261', 'h263', 'mpv']);

function kindOf(codec: string): 'audio' | 'video' | 'unknown' {
  if (AUDIO.has(codec)) return 'audio';
  if (VIDEO.has(codec)) return 'video';
  return 'unknown';
}

/**
 * Opus TOC plausibility (RFC 6716 §3.1): any config is legal, so check only the frame
 * count rules: code 3 needs a frame-count octet with M in 1..48.
 */
function opusPlausible(p: Buffer): boolean {
  if (p.length < 1 || p.length > 1275 * 3) return false;
  const c = p[0] & 0x03;
  if (c === 3) {
    if (p.length < 2) return false;
    const m = p[1] & 0x3f;
    return m >= 1 && m <= 48;
  }
  if (c === 2) return p.length >= 2;
  if (c === 1) return (p.length - 1) % 2 === 0;
  return true;
}

interface StreamInfo {
  ssrc: number;
  pt: number;
  announced: boolean;
  packets: number;
  lastTs: number;
  sameTs: number;
  audioLikeDeltas: number;
  opusOk: number;
}

interface DirState {
  ctx: SrtpContext | null;
  verified: boolean;
  failuresBeforeVerify: number;
  invalidReported: boolean;
  streams: Map<number, StreamInfo>;
}

interface FailCounter {
  count: number;
  lastEmit: number;
  emitted: boolean;
}

export class MediaTracker {
  private readonly emit: EventListener;
  private readonly association?: string;
  private readonly maxSsrcs: number;
  private readonly interval: number;
  private readonly replayWindow: number;
  private readonly invalidAfter: number;
  private readonly guessPackets: number;
  private profile = 0;
  private ptMap = new Map<number, string>();
  private readonly dirs: Record<Direction, DirState> = { c2s: MediaTracker.newDir(), s2c: MediaTracker.newDir() };
  private readonly fails: Record<'srtp' | 'srtcp', FailCounter> = {
    srtp: { count: 0, lastEmit: 0, emitted: false },
    srtcp: { count: 0, lastEmit: 0, emitted: false },
  };
  readonly stats: MediaStats = { rtp: 0, rtcp: 0, undecryptable: 0, noKeys: 0 };

  constructor(opts: MediaTrackerOptions) {
    this.emit = opts.emit;
    this.association = opts.association;
    this.maxSsrcs = Math.max(1, opts.maxSsrcs ?? 64);
    this.interval = Math.max(0, opts.undecryptableIntervalMs ?? 1000);
    this.replayWindow = opts.replayWindow ?? 0;
    this.invalidAfter = Math.max(1, opts.invalidAfter ?? 1);
    this.guessPackets = Math.max(1, opts.guessPackets ?? 30);
  }

  private static newDir(): DirState {
    return { ctx: null, verified: false, failuresBeforeVerify: 0, invalidReported: false, streams: new Map() };
  }

  /**
   * Installs the association's SRTP keys (a new key set replaces the old one and must
   * verify again). Returns false, after emitting keys.invalid, when the profile is
   * unsupported or a length is wrong.
   */
  setKeys(keys: MediaKeys, time = 0): boolean {
    for (const d of ['c2s', 's2c'] as const) {
      this.dirs[d].ctx = null;
      this.dirs[d].verified = false;
      this.dirs[d].failuresBeforeVerify = 0;
      this.dirs[d].invalidReported = false;
    }
    const p = srtpProfileParams(keys.profile);
    try {
      if (!p) throw new RangeError('unsupported SRTP profile');
      const o = { replayWindow: this.replayWindow, maxStreams: this.maxSsrcs };
      // RFC 5764 §4.2: client_write_SRTP_master_key protects what the client sends.
      this.dirs.c2s.ctx = new SrtpContext(keys.profile, keys.clientMasterKey, keys.clientMasterSalt, o);
      this.dirs.s2c.ctx = new SrtpContext(keys.profile, keys.serverMasterKey, keys.serverMasterSalt, o);
      this.profile = keys.profile;
      return true;
    } catch (err) {
      this.dirs.c2s.ctx = null;
      this.dirs.s2c.ctx = null;
      // The message of our RangeErrors names the problem, never key bytes.
      this.send({ type: 'keys.invalid', what: 'srtp', reason: (err as Error).message, time });
      return false;
    }
  }

  /** Streams currently tracked, both directions (bounded by 2 × maxSsrcs). */
  get trackedStreams(): number {
    return this.dirs.c2s.streams.size + this.dirs.s2c.streams.size;
  }

  /** True once keys are installed. */
  get hasKeys(): boolean {
    return this.dirs.c2s.ctx !== null;
  }

  /** The negotiated profile, 0 before setKeys. */
  get srtpProfile(): number {
    return this.profile;
  }

  /**
   * Payload type → codec from SDP (a=rtpmap values such as 'opus/48000/2', 'VP8/90000' or
   * plain names). Overrides guessing for those PTs.
   */
  setPayloadTypeMap(map: Map<number, string> | Record<number, string>): void {
    const m = new Map<number, string>();
    const entries = map instanceof Map ? [...map.entries()] : Object.entries(map).map(([k, v]) => [Number(k), v] as const);
    for (const [pt, name] of entries) {
      if (Number.isInteger(pt) && pt >= 0 && pt <= 127 && typeof name === 'string') {
        m.set(pt, name.split('/')[0].trim().toLowerCase().slice(0, 32));
      }
    }
    this.ptMap = m;
  }

  /** Processes one SRTP or SRTCP datagram. Never throws on packet content. */
  handle(packet: Buffer, dir: Direction, time: number, association?: string): MediaVerdict {
    if (packet.length < 8 || packet[0] >> 6 !== 2) return 'not-media';
    const ds = this.dirs[dir];
    const ctx = ds.ctx;
    const rtcp = isRtcp(packet); // RFC 5761 §4
    if (!ctx) {
      this.stats.noKeys++;
      return 'no-keys';
    }
    const assoc = association ?? this.association;
    if (rtcp) {
      const out = ctx.unprotectRtcp(packet);
      if (!out) return this.failed(ds, dir, 'srtcp', ctx.lastFailure, time, assoc);
      this.verified(ds, dir, time, assoc);
      this.stats.rtcp++;
      // Plaintext RTCP is checked (RFC 3550 §6.4.1) only to report its first packet type.
      const parts = parseRtcpCompound(out);
      this.send({
        type: 'rtp.packet',
        time,
        dir,
        association: assoc,
        ssrc: out.readUInt32BE(4),
        payloadType: parts ? parts[0].packetType : out[1],
        seq: 0,
        index: ctx.lastRtcpIndex,
        timestamp: 0,
        marker: false,
        payloadSize: out.length,
        payload: out,
        rtcp: true,
      });
      return 'rtcp';
    }
    const out = ctx.unprotectRtp(packet);
    if (!out) return this.failed(ds, dir, 'srtp', ctx.lastFailure, time, assoc);
    this.verified(ds, dir, time, assoc);
    this.stats.rtp++;
    // Authenticated, so the header is the sender's; padding is checked on the plaintext
    // (RFC 3550 §5.1). A bad padding count is reported as no padding.
    const h = parseRtp(out) ?? parseRtpHeader(out)!;
    const payload = out.subarray(h.payloadOffset, h.payloadOffset + h.payloadLength);
    this.track(ds, dir, h.ssrc, h.payloadType, h.timestamp, payload, time, assoc);
    this.send({
      type: 'rtp.packet',
      time,
      dir,
      association: assoc,
      ssrc: h.ssrc,
      payloadType: h.payloadType,
      seq: h.sequenceNumber,
      index: ctx.lastRtpIndex,
      timestamp: h.timestamp,
      marker: h.marker,
      payloadSize: h.payloadLength,
      payload,
    });
    return 'rtp';
  }

  private verified(ds: DirState, dir: Direction, time: number, assoc?: string): void {
    if (ds.verified) return;
    ds.verified = true;
    this.send({ type: 'keys.verified', what: 'srtp', time, dir, association: assoc });
  }

  private failed(ds: DirState, dir: Direction, what: 'srtp' | 'srtcp', why: SrtpFailure, time: number, assoc?: string): MediaVerdict {
    this.stats.undecryptable++;
    if (why === 'auth' && !ds.verified && !ds.invalidReported) {
      ds.failuresBeforeVerify++;
      if (ds.failuresBeforeVerify >= this.invalidAfter) {
        ds.invalidReported = true;
        this.send({ type: 'keys.invalid', what: 'srtp', reason: `${what} authentication failed`, time, dir, association: assoc });
      }
    }
    // Rate limit: the first failure at once, then one event per interval with the count
    // of failures since the previous event.
    const f = this.fails[what];
    f.count++;
    if (!f.emitted || time - f.lastEmit >= this.interval) {
      this.send({
        type: 'undecryptable',
        what,
        reason: why === 'auth' ? 'authentication failed' : why,
        count: f.count,
        time,
        dir,
        association: assoc,
      });
      f.count = 0;
      f.lastEmit = time;
      f.emitted = true;
    }
    return 'undecryptable';
  }

  private track(ds: DirState, dir: Direction, ssrc: number, pt: number, ts: number, payload: Buffer, time: number, assoc?: string): void {
    let s = ds.streams.get(ssrc);
    if (!s) {
      if (ds.streams.size >= this.maxSsrcs) ds.streams.delete(ds.streams.keys().next().value as number);
      s = { ssrc, pt, announced: false, packets: 0, lastTs: ts, sameTs: 0, audioLikeDeltas: 0, opusOk: 0 };
      ds.streams.set(ssrc, s);
    } else if (!s.announced) {
      const d = (ts - s.lastTs) >>> 0;
      if (d === 0) s.sameTs++;
      // Opus frames are 2.5..120 ms: RTP clock (48 kHz, RFC 7587 §4.1) steps that are
      // multiples of 120 up to 5760; video shares one timestamp across a frame's packets.
      else if (d % 120 === 0 && d <= 5760) s.audioLikeDeltas++;
      s.lastTs = ts;
    }
    s.packets++;
    if (s.announced) return;
    let codec: string | null = null;
    const mapped = this.ptMap.get(pt);
    if (mapped) codec = mapped;
    else if (STATIC_PT[pt]) codec = STATIC_PT[pt][0];
    else {
      codec = codecSignature(payload);
      if (!codec && opusPlausible(payload)) s.opusOk++;
      if (!codec && s.packets >= 4 && s.sameTs === 0 && s.audioLikeDeltas >= s.packets - 1 && s.opusOk === s.packets) codec = 'opus';
      if (!codec && s.packets < this.guessPackets) return;
    }
    s.announced = true;
    const c = codec ?? 'unknown';
    let kind = kindOf(c);
    if (kind === 'unknown' && c === 'unknown' && s.sameTs > 0) kind = 'video';
    this.send({ type: 'rtp.stream', time, dir, association: assoc, ssrc, payloadType: pt, codec: c, kind });
  }

  private send(e: InspectEvent): void {
    if (e.association === undefined) {
      if (this.association !== undefined) e.association = this.association;
      else delete e.association;
    }
    this.emit(e);
  }
}
