/**
 * Data channel inspection: reassembles WebRTC data channel messages from the decrypted
 * SCTP packets of one DTLS association (RFC 8261 §4: one SCTP packet per DTLS record)
 * and emits `datachannel.open`, `datachannel.message`, `file` and `cap.hit` events.
 *
 * Model (per direction = per SCTP sender):
 * - TSN de-duplication (RFC 9260 §6.2, serial arithmetic RFC 1982): the tracker keeps
 *   the cumulative TSN `cum` (all TSNs <= cum were processed) and an out-of-order buffer
 *   of TSNs above it. A chunk whose TSN is <= cum or already buffered is a duplicate
 *   (retransmission) and is ignored; the first copy wins, as in a receiving endpoint.
 * - Chunks are processed strictly in TSN order as `cum` advances. Because RFC 9260 §6.9
 *   gives the fragments of a DATA message consecutive TSNs, reassembly is an append
 *   (B … E), for ordered and unordered (U) messages alike. I-DATA (RFC 8260 §2.1)
 *   fragments may interleave between messages and are keyed by (stream, U, MID) and
 *   ordered by FSN. Delivery order across messages is TSN order, which is enough for
 *   inspection (each message is emitted once, byte-identical).
 * - FORWARD-TSN (RFC 3758 §3.5) / I-FORWARD-TSN (RFC 8260 §2.3) move `cum` forward;
 *   buffered complete messages below it are still delivered, partial ones are dropped.
 * - A SACK from the other side (RFC 9260 §3.3.4) whose Cumulative TSN Ack exceeds `cum`
 *   means the receiver got TSNs the tracker never saw (capture gap): the tracker skips
 *   them, but never beyond the highest TSN it actually saw, so a peer cannot make the
 *   tracker skip data that is still to come.
 * - DCEP (RFC 8832, PPID 50) DATA_CHANNEL_OPEN names the channel for its stream; both
 *   directions use the same stream id (RFC 8832 §6; the DTLS client opens even ids, the
 *   server odd ones). RE-CONFIG Outgoing SSN Reset (RFC 6525 §4.1, RFC 8831 §6.7) closes
 *   a direction of a stream once its Sender's Last Assigned TSN has been processed; the
 *   channel is forgotten when both directions are reset (or replaced by a new OPEN).
 * - Legacy PPIDs 52/54 (RFC 8831 §8, deprecated): consecutive partial messages on a
 *   stream are concatenated up to the next 53/51 message, which ends the message.
 *
 * File rule (documented for policy): a `file` event is emitted for a non-DCEP message
 * when (a) its magic bytes identify a known type (detectFileType != 'unknown') — for any
 * PPID, because a peer chooses the PPID freely and "string" must not hide an executable
 * (option `fileOnStringPpid`, default true) — or (b) it is binary (PPID 53, 52-concat,
 * 0 or any non-WebRTC PPID) and at least `fileMinBytes` (default 1024) long, with
 * fileType 'unknown'. Empty messages (PPID 56/57, RFC 8831 §6.6) are never files.
 *
 * Memory is bounded per tracker (one association, both directions):
 * - `maxReassemblyBytes` (default 16 MiB): bytes held in out-of-order chunks, partial
 *   messages and legacy 52/54 runs together (each held fragment also counts
 *   FRAGMENT_OVERHEAD bytes);
 * - `maxMessageBytes` (default 8 MiB, half the total so a maximal message still leaves
 *   room for reordering): largest message reassembled; a larger message is dropped (its
 *   remaining fragments are skipped) and `cap.hit` emitted;
 * - `maxFragments` (default 65536): fragments held (out-of-order + partial);
 * - `maxPartialMessages` (default 256 per direction): concurrent partial messages; the
 *   oldest is evicted;
 * - `maxTsnWindow` (default 65536): chunks further than this above `cum` are dropped
 *   (a receiver would not accept them either, RFC 9260 §6.2 mapping array).
 * When the out-of-order buffer would exceed a cap, the tracker skips the missing TSNs
 * (messages that needed them are dropped) and emits `cap.hit`. When a message would
 * exceed a cap, that message's reassembly is dropped and `cap.hit` emitted.
 *
 * Checksums (RFC 9260 §6.8) are verified; a bad packet is counted and ignored. A zero
 * checksum is accepted when the receiving side advertised Zero Checksum Acceptable
 * (RFC 9653 §5) or its INIT was not seen.
 *
 * Message data is copied out of the input packets: callers may reuse their buffers.
 */
import { sha256Hex } from '../util/sha256.js';
import type { Direction, EventListener, InspectEvent } from './events.js';
import {
  ChunkIterator,
  ChunkType,
  computeSctpChecksum,
  decodeData,
  decodeForwardTsn,
  decodeIData,
  decodeIForwardTsn,
  decodeInit,
  decodeReconfig,
  decodeSack,
  SCTP_COMMON_HEADER_LEN,
  tsnAdd,
  tsnDiff,
  tsnLt,
  tsnLte,
  type DataChunk,
} from '../wire/sctp.js';
import { decodeDcep, isEmptyPpid, isStringPpid, Ppid, type Reliability } from '../wire/dcep.js';
import { detectFileType } from './filetype.js';
import { TransferTracker, type TransferOptions } from './transfer.js';

export interface DataChannelTrackerOptions {
  /** Association id (client_random hex) put on events unless push() passes one. */
  association?: string;
  maxReassemblyBytes?: number;
  maxMessageBytes?: number;
  maxFragments?: number;
  maxPartialMessages?: number;
  maxTsnWindow?: number;
  /** Binary messages at least this long are `file` events even with an unknown type. */
  fileMinBytes?: number;
  /** Detect files in string-PPID messages too (anti-evasion). Default true. */
  fileOnStringPpid?: boolean;
  /** Verify the SCTP CRC32c. Default true. */
  verifyChecksum?: boolean;
  /** File transfers of several messages (src/inspect/transfer.ts, issue 9). */
  transfers?: TransferOptions;
}

export const DATACHANNEL_DEFAULTS = {
  maxReassemblyBytes: 16 * 1024 * 1024,
  maxMessageBytes: 8 * 1024 * 1024,
  maxFragments: 65536,
  maxPartialMessages: 256,
  maxTsnWindow: 65536,
  fileMinBytes: 1024,
  fileOnStringPpid: true,
  verifyChecksum: true,
} as const;

/** Accounting overhead per held fragment, so many tiny fragments also hit the byte cap. */
export const FRAGMENT_OVERHEAD = 64;
const MAX_PENDING_RESETS = 64;

export interface DataChannelStats {
  packets: number;
  badChecksum: number;
  /** Packets shorter than the common header or with broken chunk framing. */
  malformed: number;
  chunks: number;
  dataChunks: number;
  /** DATA/I-DATA chunks that were retransmissions of TSNs already seen. */
  duplicates: number;
  /** DATA chunks too far ahead of the cumulative TSN (dropped). */
  outOfWindow: number;
  /** Packets whose Verification Tag the receiver would reject (RFC 9260 §8.5). */
  badVtag: number;
  /** Undecodable DATA/I-DATA/control chunks. */
  badChunks: number;
  messages: number;
  files: number;
  dcep: number;
  dcepMalformed: number;
  /** Partial messages dropped (gap, FORWARD-TSN, reset, abort, cap, eviction). */
  abandoned: number;
  /** Fragments that belonged to no partial message (e.g. middle fragment after a gap). */
  orphanFragments: number;
  /** TSNs skipped without being seen (FORWARD-TSN, SACK catch-up, cap). */
  skippedTsns: number;
  forwardTsn: number;
  streamResets: number;
  channelsOpened: number;
  channelsClosed: number;
  /** DCEP OPEN on a stream of the wrong parity for its sender (RFC 8832 §6). */
  parityViolations: number;
  capHits: number;
  aborts: number;
  /** Exceptions caught inside the tracker (bugs; expected 0). */
  internalErrors: number;
}

export interface ChannelInfo {
  stream: number;
  label: string;
  protocol: string;
  channelType: number;
  ordered: boolean;
  reliability: Reliability;
  reliabilityParameter: number;
  priority: number;
  openedBy: Direction;
  acked: boolean;
  /** Bit 1: c2s reset its outgoing stream; bit 2: s2c did. */
  resetMask: number;
}

/** A chunk held in the out-of-order buffer (data copied). */
interface Held {
  c: DataChunk;
}

/** A partial DATA message (consecutive TSNs) or I-DATA message (FSN-indexed). */
interface Partial {
  key: string | number;
  stream: number;
  ppid: number;
  /** DATA: the TSN the next fragment must have. */
  nextTsn: number;
  idata: boolean;
  /** DATA: fragments in order. I-DATA: index = FSN (sparse until complete). */
  parts: Buffer[];
  /** I-DATA: number of fragments held, and FSN of E when seen (-1 until then). */
  count: number;
  lastFsn: number;
  mid: number;
  unordered: boolean;
  size: number;
  /** Over a cap: swallow the remaining fragments of this message without storing. */
  discard: boolean;
}

interface Legacy {
  ppid: number;
  parts: Buffer[];
  size: number;
  discard: boolean;
}

interface PendingReset {
  lastTsn: number;
  streams: number[];
}

class DirState {
  started = false;
  cum = 0;
  /** Highest TSN seen (valid when started). */
  highest = 0;
  initialTsn = -1;
  /** Candidate initial TSN of an association restart (RFC 9260 §5.2.4), not yet in use. */
  restartTsn = -1;
  /**
   * Initiate Tags this side advertised (RFC 9260 §3.3.2): packets sent TO this side must
   * carry one of them as Verification Tag (§8.5). Last few kept (restarts).
   */
  tags: number[] = [];
  /** What this side (as a receiver) advertised in its INIT / INIT-ACK; null = not seen. */
  advertised: { forwardTsn: boolean; idata: boolean; zeroChecksum: boolean } | null = null;
  held = new Map<number, Held>();
  partials = new Map<string | number, Partial>();
  legacy = new Map<number, Legacy>();
  resets: PendingReset[] = [];
}

function emptyStats(): DataChannelStats {
  return {
    packets: 0,
    badChecksum: 0,
    malformed: 0,
    chunks: 0,
    dataChunks: 0,
    duplicates: 0,
    outOfWindow: 0,
    badVtag: 0,
    badChunks: 0,
    messages: 0,
    files: 0,
    dcep: 0,
    dcepMalformed: 0,
    abandoned: 0,
    orphanFragments: 0,
    skippedTsns: 0,
    forwardTsn: 0,
    streamResets: 0,
    channelsOpened: 0,
    channelsClosed: 0,
    parityViolations: 0,
    capHits: 0,
    aborts: 0,
    internalErrors: 0,
  };
}

const EMPTY = Buffer.alloc(0);

/** TSNs of withheld DATA chunks remembered per direction (oldest forgotten first). */
const MAX_DROPPED_TSNS = 4096;

export class DataChannelTracker {
  readonly stats: DataChannelStats = emptyStats();
  /**
   * The gateway never re-encrypts: to withhold a message it withholds the DTLS records that
   * carry it, and a reliable sender retransmits the same DATA chunk, same TSN, in new
   * records (RFC 9260 §6.3.3, §7.2.4). The tracker sees those as duplicates; so that the
   * gateway withholds them too, the TSNs of the packets it withheld are remembered
   * (markWithheld) and a packet carrying one sets `carriesWithheld`. beginDatagram() starts
   * the per-datagram view.
   */
  carriesWithheld = false;
  private readonly seenTsns: number[] = [];
  private seenDir: Direction = 'c2s';
  private readonly withheld = { c2s: new Set<number>(), s2c: new Set<number>() };
  private readonly opt: Required<Omit<DataChannelTrackerOptions, 'association' | 'transfers'>>;
  private readonly transfers: TransferTracker;
  /** Each packet ends the transfers idle for their pause (TransferOptions.expireOnPacket). */
  private readonly expireOnPacket: boolean;
  private readonly defaultAssociation: string | undefined;
  private readonly c2s = new DirState();
  private readonly s2c = new DirState();
  private readonly chans = new Map<number, ChannelInfo>();
  private readonly it = new ChunkIterator();
  /** Bytes held (incl. FRAGMENT_OVERHEAD per fragment) and fragment count, both directions. */
  private bytes = 0;
  private frags = 0;
  // Context of the packet being processed (avoids passing it through every call).
  private time = 0;
  private assoc: string | undefined;

  constructor(
    private readonly listener: EventListener,
    opts: DataChannelTrackerOptions = {},
  ) {
    this.defaultAssociation = opts.association;
    this.expireOnPacket = opts.transfers?.expireOnPacket ?? true;
    this.opt = {
      maxReassemblyBytes: opts.maxReassemblyBytes ?? DATACHANNEL_DEFAULTS.maxReassemblyBytes,
      maxMessageBytes: opts.maxMessageBytes ?? DATACHANNEL_DEFAULTS.maxMessageBytes,
      maxFragments: opts.maxFragments ?? DATACHANNEL_DEFAULTS.maxFragments,
      maxPartialMessages: opts.maxPartialMessages ?? DATACHANNEL_DEFAULTS.maxPartialMessages,
      maxTsnWindow: opts.maxTsnWindow ?? DATACHANNEL_DEFAULTS.maxTsnWindow,
      fileMinBytes: opts.fileMinBytes ?? DATACHANNEL_DEFAULTS.fileMinBytes,
      fileOnStringPpid: opts.fileOnStringPpid ?? DATACHANNEL_DEFAULTS.fileOnStringPpid,
      verifyChecksum: opts.verifyChecksum ?? DATACHANNEL_DEFAULTS.verifyChecksum,
    };
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this; // the context reads the packet being processed
    this.transfers = new TransferTracker(
      {
        get time() {
          return self.time;
        },
        get association() {
          return self.assoc;
        },
        emit: (e) => {
          if (e.type === 'file') this.stats.files++;
          this.emit(e);
        },
        capHit: (dir, what, limit) => this.capHit(dir, what, limit),
      },
      { fileMinBytes: this.opt.fileMinBytes, ...opts.transfers },
    );
  }

  /** Bytes of file-transfer content held (heads and spools, src/inspect/transfer.ts). */
  get spooledBytes(): number {
    return this.transfers.spooledBytes;
  }

  /** File transfers in flight (a pause may still end them: call expireTransfers). */
  get transfersInFlight(): number {
    return this.transfers.inFlight;
  }

  /** Ends the transfers without data for the pause (policy.transfer_pause_ms): their `file` events. */
  expireTransfers(now: number): void {
    this.time = now;
    try {
      this.transfers.expire(now);
    } catch {
      this.stats.internalErrors++;
    }
  }

  /** Bytes currently held for reassembly (with per-fragment overhead). */
  get bufferedBytes(): number {
    return this.bytes;
  }
  get bufferedFragments(): number {
    return this.frags;
  }

  channel(stream: number): ChannelInfo | undefined {
    const c = this.chans.get(stream);
    return c ? { ...c } : undefined;
  }

  channels(): ChannelInfo[] {
    return [...this.chans.values()].map((c) => ({ ...c }));
  }

  /**
   * Memory pressure: drops every partial message and out-of-order chunk (those messages
   * are lost, as on a cap), keeps the channels.
   */
  dropReassembly(): void {
    this.resetDir(this.c2s);
    this.resetDir(this.s2c);
    this.transfers.dropSpools();
  }

  /** Releases all held reassembly state and forgets channels (association gone); ends transfers. */
  close(): void {
    this.resetDir(this.c2s);
    this.resetDir(this.s2c);
    this.chans.clear();
    try {
      this.transfers.closeAll();
    } catch {
      this.stats.internalErrors++;
    }
  }

  /**
   * Feeds one SCTP packet (the plaintext of one DTLS application_data record).
   * `checksumVerified`: the caller has already checked its CRC32c (RFC 9260 §6.8), which
   * is then not computed twice. Never throws on malformed input.
   */
  push(pkt: Buffer, dir: Direction, time: number, association?: string, checksumVerified = false): void {
    this.stats.packets++;
    this.time = time;
    this.assoc = association ?? this.defaultAssociation;
    if (pkt.length < SCTP_COMMON_HEADER_LEN) {
      this.stats.malformed++;
      return;
    }
    const me = dir === 'c2s' ? this.c2s : this.s2c;
    const peer = dir === 'c2s' ? this.s2c : this.c2s;
    // A pause ends transfers (their file events come before this packet's).
    if (this.expireOnPacket && this.transfers.inFlight > 0) this.expireTransfers(time);
    if (this.opt.verifyChecksum && !checksumVerified) {
      const sent = pkt.readUInt32LE(8); // RFC 9260 App. B: CRC32c, least significant byte first
      // RFC 9653 §5.2: zero checksum acceptable if the receiver advertised it.
      const zeroOk = sent === 0 && (peer.advertised === null || peer.advertised.zeroChecksum);
      if (!zeroOk && sent !== computeSctpChecksum(pkt)) {
        this.stats.badChecksum++;
        return;
      }
    }
    if (!this.vtagOk(pkt, me, peer)) {
      this.stats.badVtag++;
      return;
    }
    try {
      this.chunks(pkt, dir, me, peer);
    } catch {
      // Defensive: decoders are bounds-checked; a bug must not escape into the pipeline.
      this.stats.internalErrors++;
    }
  }

  /**
   * RFC 9260 §8.5: the receiver drops packets whose Verification Tag is not its own tag;
   * the tracker does the same so that it never accepts data the receiver ignores (which
   * would let a sender desynchronise TSN de-duplication). Exceptions: §8.5.1 (A) INIT
   * carries tag 0; (B)/(C) ABORT and SHUTDOWN COMPLETE with the T bit carry the sender's
   * own tag. Unknown tags (INIT not seen) accept everything.
   */
  private vtagOk(pkt: Buffer, me: DirState, peer: DirState): boolean {
    if (peer.tags.length === 0) return true;
    const vtag = pkt.readUInt32BE(4);
    if (peer.tags.includes(vtag)) return true;
    if (pkt.length < SCTP_COMMON_HEADER_LEN + 4) return false;
    const first = pkt[SCTP_COMMON_HEADER_LEN]!;
    const tBit = (pkt[SCTP_COMMON_HEADER_LEN + 1]! & 1) !== 0;
    if (first === ChunkType.INIT && vtag === 0) return true;
    if ((first === ChunkType.ABORT || first === ChunkType.SHUTDOWN_COMPLETE) && tBit && me.tags.includes(vtag)) return true;
    return false;
  }

  private chunks(pkt: Buffer, dir: Direction, me: DirState, peer: DirState): void {
    const it = this.it.reset(pkt);
    while (it.next()) {
      this.stats.chunks++;
      const type = it.type;
      const flags = it.flags;
      switch (type) {
        case ChunkType.DATA:
        case ChunkType.I_DATA: {
          this.stats.dataChunks++;
          const c = type === ChunkType.DATA ? decodeData(flags, it.value()) : decodeIData(flags, it.value());
          if (!c) {
            this.stats.badChunks++;
            break;
          }
          this.onData(c, dir, me);
          break;
        }
        case ChunkType.INIT:
        case ChunkType.INIT_ACK: {
          const init = decodeInit(it.value());
          if (!init) {
            this.stats.badChunks++;
            break;
          }
          me.advertised = { forwardTsn: init.forwardTsn, idata: init.idata, zeroChecksum: init.zeroChecksum };
          if (!me.tags.includes(init.initiateTag)) {
            me.tags.push(init.initiateTag);
            if (me.tags.length > 4) me.tags.shift();
          }
          // RFC 9260 §5.1: Initial TSN of this side's DATA. A different value while running
          // is a restart candidate (§5.2.4), applied when data shows it is in use.
          if (!me.started) this.startAt(me, dir, init.initialTsn, false);
          else if (init.initialTsn !== me.initialTsn) me.restartTsn = init.initialTsn;
          break;
        }
        case ChunkType.SACK: {
          // A SACK from this side acknowledges the peer's DATA (RFC 9260 §6.2).
          const s = decodeSack(it.value());
          if (!s) {
            this.stats.badChunks++;
            break;
          }
          const pdir: Direction = dir === 'c2s' ? 's2c' : 'c2s';
          if (!peer.started) this.startAt(peer, pdir, tsnAdd(s.cumTsnAck, 1), false);
          else if (tsnLt(peer.cum, s.cumTsnAck)) {
            // Capture gap: skip only up to the highest TSN actually seen.
            const to = tsnLt(peer.highest, s.cumTsnAck) ? peer.highest : s.cumTsnAck;
            if (tsnLt(peer.cum, to)) this.skipTo(peer, pdir, to);
          }
          break;
        }
        case ChunkType.FORWARD_TSN:
        case ChunkType.I_FORWARD_TSN: {
          const f = type === ChunkType.FORWARD_TSN ? decodeForwardTsn(it.value()) : decodeIForwardTsn(it.value());
          if (!f) {
            this.stats.badChunks++;
            break;
          }
          // RFC 3758 §3.3 / RFC 8260 §2.3: only meaningful if the receiver supports it;
          // a receiver that does not would ignore it, and so do we.
          const adv = peer.advertised;
          if (adv && !(f.iforward ? adv.idata : adv.forwardTsn)) break;
          this.stats.forwardTsn++;
          if (f.iforward) {
            // RFC 8260 §2.3.1: messages up to MID on (stream, U) are abandoned.
            for (const e of f.streams) {
              for (const p of [...me.partials.values()]) {
                if (p.idata && p.stream === e.stream && p.unordered === e.unordered && tsnLte(p.mid, e.mid)) {
                  this.dropPartial(me, p, true);
                }
              }
            }
          }
          if (!me.started) this.startAt(me, dir, tsnAdd(f.newCumTsn, 1), false);
          else if (tsnLt(me.cum, f.newCumTsn)) this.skipTo(me, dir, f.newCumTsn);
          break;
        }
        case ChunkType.RE_CONFIG: {
          const r = decodeReconfig(it.value());
          if (!r) {
            this.stats.badChunks++;
            break;
          }
          for (const p of r.params) {
            if (p.kind !== 'outgoing-reset') continue;
            // RFC 6525 §5.2.2: the reset takes effect once all TSNs up to the Sender's
            // Last Assigned TSN have been received.
            if (me.resets.length >= MAX_PENDING_RESETS) me.resets.shift();
            me.resets.push({ lastTsn: p.lastTsn, streams: p.streams });
          }
          this.applyResets(me, dir);
          break;
        }
        case ChunkType.ABORT:
          // RFC 9260 §9.1: the association is gone; drop partial state of both sides.
          this.stats.aborts++;
          this.resetDir(this.c2s);
          this.resetDir(this.s2c);
          this.transfers.closeAll(); // the channels' transfers end with it
          break;
        default:
          // HEARTBEAT(-ACK), COOKIE-ECHO/ACK, SHUTDOWN*, ERROR, PAD, AUTH, ASCONF…:
          // nothing to inspect. Unknown types are skipped (RFC 9260 §3.2 action bits are
          // the receiver's business).
          break;
      }
    }
    if (it.malformed) this.stats.malformed++;
  }

  // --- TSN bookkeeping ---------------------------------------------------------------

  private startAt(d: DirState, _dir: Direction, firstTsn: number, _fromData: boolean): void {
    this.resetDir(d);
    d.started = true;
    d.cum = tsnAdd(firstTsn, -1);
    d.highest = d.cum;
    d.initialTsn = firstTsn;
    d.restartTsn = -1;
  }

  /** Drops everything held for a direction (not the channels). */
  private resetDir(d: DirState): void {
    for (const h of d.held.values()) this.release(h.c.data.length);
    d.held.clear();
    for (const p of [...d.partials.values()]) this.dropPartial(d, p, true);
    for (const [s, l] of d.legacy) {
      this.releaseLegacy(l);
      d.legacy.delete(s);
      this.stats.abandoned++;
    }
    d.resets = [];
    d.started = false;
  }

  /** A new datagram: forgets the TSNs of the last one. */
  beginDatagram(): void {
    this.seenTsns.length = 0;
    this.carriesWithheld = false;
  }

  /** The datagram just fed is withheld: its DATA chunks' TSNs are remembered (bounded). */
  markWithheld(): void {
    const set = this.withheld[this.seenDir];
    for (const tsn of this.seenTsns) {
      if (set.size >= MAX_DROPPED_TSNS) set.delete(set.values().next().value as number);
      set.add(tsn);
    }
  }

  private onData(c: DataChunk, dir: Direction, d: DirState): void {
    if (this.seenTsns.length < 64) this.seenTsns.push(c.tsn);
    this.seenDir = dir;
    if (this.withheld[dir].size && this.withheld[dir].has(c.tsn)) this.carriesWithheld = true;
    if (!d.started) this.startAt(d, dir, c.tsn, true);
    let ahead = tsnDiff(d.cum, c.tsn);
    if (ahead <= 0 || ahead > this.opt.maxTsnWindow) {
      // Restart in use? (RFC 9260 §5.2.4: new Initial TSN after a restart.)
      if (d.restartTsn >= 0) {
        const r = tsnDiff(tsnAdd(d.restartTsn, -1), c.tsn);
        if (r > 0 && r <= this.opt.maxTsnWindow) {
          const init = d.restartTsn;
          this.startAt(d, dir, init, true);
          ahead = tsnDiff(d.cum, c.tsn);
        }
      }
    }
    if (ahead <= 0) {
      this.stats.duplicates++;
      return;
    }
    if (ahead > this.opt.maxTsnWindow) {
      this.stats.outOfWindow++;
      return;
    }
    if (d.held.has(c.tsn)) {
      this.stats.duplicates++;
      return;
    }
    if (tsnLt(d.highest, c.tsn)) d.highest = c.tsn;
    if (ahead === 1) {
      d.cum = c.tsn;
      this.deliver(d, dir, c, false);
      this.drain(d, dir);
      return;
    }
    // Out of order: hold a copy, within the caps; otherwise give up on the gap.
    const cap = this.associationCapExceeded(c.data.length);
    if (cap) {
      this.capHit(dir, cap.what, cap.limit);
      this.skipTo(d, dir, tsnAdd(c.tsn, -1));
      d.cum = c.tsn;
      this.deliver(d, dir, c, false);
      this.drain(d, dir);
      return;
    }
    const copy: DataChunk = { ...c, data: Buffer.from(c.data) };
    d.held.set(c.tsn, { c: copy });
    this.bytes += c.data.length + FRAGMENT_OVERHEAD;
    this.frags++;
  }

  /** Delivers held chunks that became in-order. */
  private drain(d: DirState, dir: Direction): void {
    for (;;) {
      const next = tsnAdd(d.cum, 1);
      const h = d.held.get(next);
      if (!h) break;
      d.held.delete(next);
      this.release(h.c.data.length);
      d.cum = next;
      this.deliver(d, dir, h.c, true);
    }
    this.applyResets(d, dir);
  }

  /**
   * Moves cum to `to`, delivering held chunks <= to in TSN order; missing TSNs are
   * counted as skipped and break any DATA partial message that needed them.
   */
  private skipTo(d: DirState, dir: Direction, to: number): void {
    if (!tsnLt(d.cum, to)) return;
    const keys: number[] = [];
    for (const k of d.held.keys()) if (tsnLte(k, to)) keys.push(k);
    keys.sort((a, b) => tsnDiff(d.cum, a) - tsnDiff(d.cum, b));
    for (const k of keys) {
      const h = d.held.get(k)!;
      d.held.delete(k);
      this.release(h.c.data.length);
      const gap = tsnDiff(d.cum, k) - 1;
      if (gap > 0) {
        this.stats.skippedTsns += gap;
        d.cum = tsnAdd(k, -1);
        this.breakDataPartials(d);
      }
      d.cum = k;
      this.deliver(d, dir, h.c, true);
    }
    const gap = tsnDiff(d.cum, to);
    if (gap > 0) {
      this.stats.skippedTsns += gap;
      d.cum = to;
      this.breakDataPartials(d);
    }
    if (tsnLt(d.highest, d.cum)) d.highest = d.cum;
    this.drain(d, dir);
  }

  /** DATA partials expecting a TSN that is now <= cum can never complete. */
  private breakDataPartials(d: DirState): void {
    if (d.partials.size === 0) return;
    for (const p of [...d.partials.values()]) {
      if (!p.idata && tsnLte(p.nextTsn, d.cum)) this.dropPartial(d, p, true);
    }
  }

  // --- Reassembly ------------------------------------------------------------------

  /** Processes one chunk in TSN order. `owned`: c.data is already a private copy. */
  private deliver(d: DirState, dir: Direction, c: DataChunk, owned: boolean): void {
    this.transfers.touch(dir, c.stream, this.time);
    if (c.idata) this.deliverIData(d, dir, c, owned);
    else this.deliverData(d, dir, c, owned);
    // A DATA partial that expected this TSN but did not get its continuation is broken
    // (RFC 9260 §6.9: fragments of one message have consecutive TSNs).
    if (d.partials.size > 0) this.breakDataPartials(d);
  }

  private deliverData(d: DirState, dir: Direction, c: DataChunk, owned: boolean): void {
    const key = c.stream | (c.unordered ? 0x10000 : 0);
    const p = d.partials.get(key);
    if (c.begin) {
      if (p) this.dropPartial(d, p, true); // a new message while one was open: broken
      if (c.end) {
        this.message(d, dir, c.stream, c.ppid, owned ? c.data : Buffer.from(c.data));
        return;
      }
      const np = this.newPartial(d, dir, key, c, false);
      if (np) this.append(d, dir, np, c.data, owned);
      return;
    }
    if (!p || p.nextTsn !== c.tsn || (!c.unordered && p.mid !== c.ssn)) {
      this.stats.orphanFragments++;
      if (p) this.dropPartial(d, p, true);
      return;
    }
    p.nextTsn = tsnAdd(c.tsn, 1);
    this.append(d, dir, p, c.data, owned);
    if (c.end) this.finish(d, dir, p);
  }

  private deliverIData(d: DirState, dir: Direction, c: DataChunk, owned: boolean): void {
    // RFC 8260 §2.1: a message is identified by (stream, U, MID); FSN orders fragments.
    const key = `${c.stream}/${c.unordered ? 1 : 0}/${c.mid}`;
    let p = d.partials.get(key);
    if (c.begin && c.end) {
      if (p) this.dropPartial(d, p, true);
      this.message(d, dir, c.stream, c.ppid, owned ? c.data : Buffer.from(c.data));
      return;
    }
    if (c.begin) {
      // A second B for the same (stream, U, MID): inconsistent, restart the message.
      if (p) this.dropPartial(d, p, true);
      p = this.newPartial(d, dir, key, c, true);
    } else if (!p) {
      // Processing is in TSN order and the sender assigns TSNs to a message's fragments
      // in FSN order, so B comes first; a fragment without one is an orphan (gap,
      // abandoned or evicted message). Not creating a partial for it keeps orphans from
      // evicting live messages.
      this.stats.orphanFragments++;
      return;
    }
    const fsn = c.fsn;
    if (fsn > this.opt.maxFragments || p.parts[fsn] !== undefined || (p.lastFsn >= 0 && fsn > p.lastFsn)) {
      // Duplicate FSN (same message, different TSN) or beyond E: inconsistent, drop.
      this.stats.orphanFragments++;
      this.dropPartial(d, p, true);
      return;
    }
    if (c.end) {
      p.lastFsn = fsn;
      if (p.parts.length > fsn + 1) {
        this.dropPartial(d, p, true);
        return;
      }
    }
    if (p.discard) {
      p.parts[fsn] = EMPTY;
      p.count++;
    } else {
      if (!this.reserve(d, dir, p, c.data.length)) return;
      p.parts[fsn] = owned ? c.data : Buffer.from(c.data);
      p.count++;
    }
    if (p.lastFsn >= 0 && p.count === p.lastFsn + 1 && p.parts[0] !== undefined) this.finish(d, dir, p);
  }

  private newPartial(d: DirState, dir: Direction, key: string | number, c: DataChunk, idata: boolean): Partial {
    if (d.partials.size >= this.opt.maxPartialMessages) {
      // Evict the oldest partial message (Map keeps insertion order).
      const oldest = d.partials.values().next().value as Partial;
      this.dropPartial(d, oldest, true);
      this.capHit(dir, 'datachannel.partial_messages', this.opt.maxPartialMessages);
    }
    const p: Partial = {
      key,
      stream: c.stream,
      ppid: c.ppid,
      nextTsn: tsnAdd(c.tsn, 1),
      idata,
      parts: [],
      count: 0,
      lastFsn: -1,
      mid: idata ? c.mid : c.ssn,
      unordered: c.unordered,
      size: 0,
      discard: false,
    };
    d.partials.set(key, p);
    return p;
  }

  /**
   * Which cap, if any, adding n bytes (one more fragment) to a message of `size` bytes
   * would pass: the message size, then the association-wide caps.
   */
  private capExceeded(size: number, n: number): { what: string; limit: number } | null {
    if (size + n > this.opt.maxMessageBytes) return { what: 'datachannel.message_bytes', limit: this.opt.maxMessageBytes };
    return this.associationCapExceeded(n);
  }

  /** Which association-wide cap, if any, holding n more bytes as one more fragment would pass. */
  private associationCapExceeded(n: number): { what: string; limit: number } | null {
    if (this.bytes + n + FRAGMENT_OVERHEAD > this.opt.maxReassemblyBytes)
      return { what: 'datachannel.reassembly_bytes', limit: this.opt.maxReassemblyBytes };
    if (this.frags + 1 > this.opt.maxFragments) return { what: 'datachannel.fragments', limit: this.opt.maxFragments };
    return null;
  }

  /** Accounts for `n` more bytes in partial p; on a cap, turns p into a discarding partial. */
  private reserve(d: DirState, dir: Direction, p: Partial, n: number): boolean {
    const cost = n + FRAGMENT_OVERHEAD;
    const cap = this.capExceeded(p.size, n);
    if (cap) {
      this.capHit(dir, cap.what, cap.limit);
      this.freeParts(p, p.idata);
      p.discard = true;
      this.stats.abandoned++;
      void d;
      return false;
    }
    this.bytes += cost;
    this.frags++;
    p.size += n;
    return true;
  }

  private append(d: DirState, dir: Direction, p: Partial, data: Buffer, owned: boolean): void {
    if (p.discard) return;
    if (!this.reserve(d, dir, p, data.length)) return;
    p.parts.push(owned ? data : Buffer.from(data));
    p.count++;
  }

  private finish(d: DirState, dir: Direction, p: Partial): void {
    d.partials.delete(p.key);
    if (p.discard) return; // already counted when the cap was hit
    const data = p.parts.length === 1 ? p.parts[0]! : Buffer.concat(p.parts, p.size);
    this.freeParts(p);
    this.message(d, dir, p.stream, p.ppid, data);
  }

  /** Releases the bytes held by p. keepIndex: keep I-DATA FSN slots (as EMPTY). */
  private freeParts(p: Partial, keepIndex = false): void {
    let n = 0;
    for (const b of p.parts) if (b !== undefined && b !== EMPTY) n++;
    this.bytes -= p.size + n * FRAGMENT_OVERHEAD;
    this.frags -= n;
    if (keepIndex) {
      for (let i = 0; i < p.parts.length; i++) if (p.parts[i] !== undefined) p.parts[i] = EMPTY;
    } else {
      p.parts = [];
    }
    p.size = 0;
  }

  private dropPartial(d: DirState, p: Partial, count: boolean): void {
    if (d.partials.get(p.key) === p) d.partials.delete(p.key);
    if (!p.discard && count) this.stats.abandoned++;
    this.freeParts(p);
  }

  private release(n: number): void {
    this.bytes -= n + FRAGMENT_OVERHEAD;
    this.frags--;
  }

  private releaseLegacy(l: Legacy): void {
    this.bytes -= l.size + l.parts.length * FRAGMENT_OVERHEAD;
    this.frags -= l.parts.length;
    l.parts = [];
    l.size = 0;
  }

  // --- Messages --------------------------------------------------------------------

  /** A complete SCTP user message from `dir` on `stream`. */
  private message(d: DirState, dir: Direction, stream: number, ppid: number, data: Buffer): void {
    if (ppid === Ppid.DCEP) {
      this.onDcep(dir, stream, data);
      return;
    }
    // RFC 8831 §8 legacy partial PPIDs: concatenate the run up to the final 51/53.
    if (ppid === Ppid.BINARY_PARTIAL || ppid === Ppid.STRING_PARTIAL) {
      let l = d.legacy.get(stream);
      if (!l) {
        l = { ppid, parts: [], size: 0, discard: false };
        d.legacy.set(stream, l);
      }
      if (l.discard) return;
      const cost = data.length + FRAGMENT_OVERHEAD;
      const cap = this.capExceeded(l.size, data.length);
      if (cap) {
        this.capHit(dir, cap.what, cap.limit);
        this.releaseLegacy(l);
        l.discard = true;
        this.stats.abandoned++;
        return;
      }
      l.parts.push(data);
      l.size += data.length;
      this.bytes += cost;
      this.frags++;
      return;
    }
    const l = d.legacy.get(stream);
    if (l) {
      d.legacy.delete(stream);
      const finalPpid = l.ppid === Ppid.BINARY_PARTIAL ? Ppid.BINARY : Ppid.STRING;
      if (l.discard) {
        // The run was over a cap: the final part belongs to the dropped message.
        if (ppid === finalPpid) return;
      } else if (ppid === finalPpid) {
        if (l.size + data.length > this.opt.maxMessageBytes) {
          this.capHit(dir, 'datachannel.message_bytes', this.opt.maxMessageBytes);
          this.releaseLegacy(l);
          this.stats.abandoned++;
          return;
        }
        const all = Buffer.concat([...l.parts, data], l.size + data.length);
        this.releaseLegacy(l);
        this.emitMessage(dir, stream, ppid, all);
        return;
      } else {
        // The run ended without its final part: report what was collected on its own.
        const all = Buffer.concat(l.parts, l.size);
        this.releaseLegacy(l);
        this.emitMessage(dir, stream, finalPpid, all);
      }
    }
    this.emitMessage(dir, stream, ppid, data);
  }

  private emitMessage(dir: Direction, stream: number, ppid: number, data: Buffer): void {
    // RFC 8831 §6.6: an empty message is sent as one byte with PPID 56/57; the byte is not data.
    if (isEmptyPpid(ppid)) data = EMPTY;
    const ch = this.chans.get(stream);
    const label = ch ? ch.label : '';
    const sha256 = sha256Hex(data);
    const index = this.transfers.nextIndex(dir, stream);
    this.stats.messages++;
    this.emit({
      type: 'datachannel.message',
      time: this.time,
      dir,
      association: this.assoc,
      stream,
      label,
      ppid,
      size: data.length,
      sha256,
      index,
      data,
    });
    const str = isStringPpid(ppid);
    if (data.length === 0) {
      if (str) this.transfers.text(dir, stream, data);
      return;
    }
    // Issue 9: a text message ends the channel's transfer (and may announce the next).
    if (str) this.transfers.text(dir, stream, data);
    let reported = false;
    if (!str || this.opt.fileOnStringPpid) {
      const fileType = detectFileType(data);
      // A message that completes an announced transfer on its own is reported as that transfer (with its name).
      const alone = !str && this.transfers.completesAlone(dir, stream, data.length);
      if (!alone && (fileType !== 'unknown' || (!str && data.length >= this.opt.fileMinBytes))) {
        this.stats.files++;
        reported = true;
        // A message inside a transfer under way or announced is judged whole with it; one
        // that starts nothing known (a file sent as one message) is a file of its own.
        const inTransfer = !str && this.transfers.inTransfer(dir, stream);
        this.emit({
          type: 'file',
          time: this.time,
          dir,
          association: this.assoc,
          stream,
          label,
          size: data.length,
          sha256,
          fileType,
          index,
          data,
          ...(inTransfer ? { inTransfer: true } : {}),
        });
      }
    }
    // Binary messages build the channel's transfer; the `file` event of a transfer this
    // message completes is emitted now, before the datagram that carried it is forwarded.
    if (!str) this.transfers.binary(dir, stream, label, index, data, reported);
  }

  private onDcep(dir: Direction, stream: number, data: Buffer): void {
    const m = decodeDcep(data);
    if (!m) {
      this.stats.dcepMalformed++;
      return;
    }
    this.stats.dcep++;
    if (m.type === 'ack') {
      const ch = this.chans.get(stream);
      if (ch && ch.openedBy !== dir) ch.acked = true;
      return;
    }
    // RFC 8832 §6: the DTLS client uses even stream ids, the server odd ones.
    if ((stream & 1) !== (dir === 'c2s' ? 0 : 1)) this.stats.parityViolations++;
    this.stats.channelsOpened++;
    this.chans.set(stream, {
      stream,
      label: m.label,
      protocol: m.protocol,
      channelType: m.channelType,
      ordered: m.ordered,
      reliability: m.reliability,
      reliabilityParameter: m.reliabilityParameter,
      priority: m.priority,
      openedBy: dir,
      acked: false,
      resetMask: 0,
    });
    this.emit({
      type: 'datachannel.open',
      time: this.time,
      dir,
      association: this.assoc,
      stream,
      label: m.label,
      protocol: m.protocol,
      channelType: m.channelType,
      ordered: m.ordered,
    });
  }

  // --- Stream reset ------------------------------------------------------------------

  private applyResets(d: DirState, dir: Direction): void {
    if (d.resets.length === 0 || !d.started) return;
    const keep: PendingReset[] = [];
    for (const r of d.resets) {
      if (!tsnLte(r.lastTsn, d.cum)) {
        keep.push(r);
        continue;
      }
      this.stats.streamResets++;
      // RFC 6525 §4.1: an empty list means all streams.
      const streams = r.streams.length > 0 ? r.streams : [...this.chans.keys()];
      const bit = dir === 'c2s' ? 1 : 2;
      for (const s of streams) {
        // RFC 8831 §6.7: the sender closed its side of the channel: its transfer ends.
        this.transfers.closeStream(dir, s);
        for (const p of [...d.partials.values()]) if (p.stream === s) this.dropPartial(d, p, true);
        const l = d.legacy.get(s);
        if (l) {
          this.releaseLegacy(l);
          d.legacy.delete(s);
          this.stats.abandoned++;
        }
        const ch = this.chans.get(s);
        if (!ch) continue;
        ch.resetMask |= bit;
        // RFC 8831 §6.7: closing resets the outgoing stream of each side.
        if (ch.resetMask === 3) {
          this.chans.delete(s);
          this.stats.channelsClosed++;
        }
      }
    }
    d.resets = keep;
  }

  // --- Events ------------------------------------------------------------------------

  private capHit(dir: Direction, what: string, limit: number): void {
    this.stats.capHits++;
    this.emit({ type: 'cap.hit', time: this.time, dir, association: this.assoc, what, limit });
  }

  private emit(e: InspectEvent): void {
    if (e.association === undefined) delete e.association;
    this.listener(e);
  }
}
