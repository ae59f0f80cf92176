/**
 * Per-flow key state machine of key-escrow.md §5 (no sockets; time from the injected Clock).
 *
 * Public API:
 *   new FlowGuard(opts: FlowGuardOptions)
 *   .packet(data, dir, peerPort): 'forward' | 'hold' | 'drop'
 *       One relayed datagram ('c2p' from the TURN client, 'p2c' from the peer). Handshake,
 *       change_cipher_spec and alert records and STUN are always forwarded (§5.1); DTLS
 *       application data, DTLS 1.3 unified-header records and SRTP/SRTCP that no verified
 *       key set covers are held / dropped / passed by `unverified`. While the flow is not
 *       covered, a copy of every datagram is queued (bounded) so the inspection pipeline can
 *       see the whole flow, in order, once keys verify (see onRelease).
 *   .addKeySet(ks): KeyStatus      'verified' | 'invalid' (against traffic already seen) | 'pending'
 *   .decline(): void               KEY-DECLINE: blocks at once when keys are required (§2.3)
 *   .keySetsFor(association)       verified key sets (for the inspection pipeline's KeyProvider)
 *   .covered / .association / .blocked
 *   .close(): void                 wipes every key and the queue
 *
 * Callbacks (FlowGuardOptions):
 *   onRelease(entries)      keys verified (or deadline passed with keys not required): the
 *                           queued datagrams in arrival order; `held` ones were not forwarded.
 *   onBlock(reason, assoc)  'keys_missing' | 'keys_declined' | 'rekey_missing' (§5.1, §5.3)
 *   onKeys(kind, assoc, reason?)  'verified' | 'invalid' outcomes of key sets
 *   onUninspected(reason, assoc)  deadline passed, keys not required: the flow goes on uninspected
 */
import type { Clock, TimerHandle } from '../util/clock.js';
import { DtlsSession } from '../inspect/dtls-session.js';
import { demuxCode, PC_DTLS, PC_RTP, PC_STUN } from '../wire/demux.js';
import type { InspectEvent } from '../inspect/events.js';
import { associationId, wipeKeySet, type KeySet } from '../wire/keyset.js';
import type { KeyStatus } from '../inspect/dtls-session.js';

export type GuardDirection = 'c2p' | 'p2c';
export type GuardVerdict = 'forward' | 'hold' | 'drop';
export type BlockReason = 'keys_missing' | 'keys_declined' | 'rekey_missing';

export interface GuardKeysPolicy {
  required: boolean;
  /** Milliseconds (rules `keys.deadline`). */
  deadline: number;
  unverified: 'hold' | 'pass' | 'drop';
  /** SRTP keys wanted (media traffic must be covered). */
  media: boolean;
  /** DTLS record keys wanted (application data must be covered). */
  data: boolean;
}

export interface QueuedPacket {
  data: Buffer;
  dir: GuardDirection;
  peerPort: number;
  /** true when it was held (not forwarded yet). */
  held: boolean;
}

export interface FlowGuardOptions {
  keys: GuardKeysPolicy;
  clock: Clock;
  onRelease?: (entries: QueuedPacket[]) => void;
  onBlock?: (reason: BlockReason, association: string | undefined) => void;
  onKeys?: (kind: 'verified' | 'invalid', association: string, reason?: string) => void;
  /**
   * The deadline passed without verified keys on a flow whose policy does not require
   * them: it goes on uninspected from here (reason: 'keys_missing', or 'rekey_missing'
   * for a new association after a covered one).
   */
  onUninspected?: (reason: BlockReason, association: string | undefined) => void;
  /** Bound on held/queued bytes (default 1 MiB) and datagrams (default 2048). */
  maxQueueBytes?: number;
  maxQueuePackets?: number;
}

// DTLS content types (RFC 5246 §6.2.1; RFC 6347 §4.1).
const CT_CCS = 20;
const CT_ALERT = 21;
const CT_HANDSHAKE = 22;
const CT_APP = 23;
const DTLS_HDR = 13; // RFC 6347 §4.1: type(1) version(2) epoch(2) seq(6) length(2)

/** Classifies a DTLS datagram: 'control' when every record is handshake/CCS/alert. */
function dtlsKind(d: Buffer): { control: boolean; protectedSeen: boolean } {
  let off = 0;
  let control = true;
  let protectedSeen = false;
  while (off < d.length) {
    const t = d[off]!;
    if ((t & 0xe0) === 0x20) {
      // RFC 9147 §4: a unified header (001CSLEE) is always protected. EE are the low two
      // bits of the epoch; §6.1: epoch 2 carries the encrypted handshake (EncryptedExtensions
      // .. Finished, and ACKs), epoch 1 0-RTT data, epoch 3 and later application data. So
      // EE == 2 (before any KeyUpdate, which needs application data to cross first) is
      // handshake and forwarded like DTLS 1.2 handshake records, so the handshake can
      // complete (key-escrow.md §5.1); anything else needs keys.
      protectedSeen = true;
      if ((t & 0x10) !== 0 || (t & 0x03) !== 2) return { control: false, protectedSeen }; // C: CID of unknown length
      let p = off + 1 + ((t & 0x08) !== 0 ? 2 : 1); // S: 16- or 8-bit sequence number
      if ((t & 0x04) === 0) break; // L clear: the record runs to the end of the datagram
      if (p + 2 > d.length) return { control: false, protectedSeen };
      p += 2 + d.readUInt16BE(p);
      if (p > d.length) return { control: false, protectedSeen };
      off = p;
      continue;
    }
    if (off + DTLS_HDR > d.length) return { control: false, protectedSeen };
    const epoch = d.readUInt16BE(off + 3);
    if (epoch >= 1) protectedSeen = true;
    if (t !== CT_CCS && t !== CT_ALERT && t !== CT_HANDSHAKE) control = false;
    off += DTLS_HDR + d.readUInt16BE(off + 11);
  }
  return { control, protectedSeen };
}

export class FlowGuard {
  private readonly o: FlowGuardOptions;
  private readonly session: DtlsSession;
  private readonly verifiedSets = new Map<string, KeySet[]>();
  private readonly allSets: KeySet[] = [];
  private queue: QueuedPacket[] = [];
  private queueBytes = 0;
  private readonly maxBytes: number;
  private readonly maxPackets: number;
  private timer: TimerHandle | null = null;
  private clockStarted = false;
  /** Associations that were covered (a later uncovered one is a re-key, §5.3). */
  private everCovered = false;
  private lastAssoc: string | undefined;
  private bypass = false; // keys not required and the deadline passed: pass uninspected
  private closed = false;
  blocked: BlockReason | null = null;
  /** Whether the last packet() copied the datagram into the queue (it reaches inspection on release). */
  lastQueued = false;
  readonly stats = { held: 0, dropped: 0, overflow: 0, released: 0 };

  constructor(opts: FlowGuardOptions) {
    this.o = opts;
    this.maxBytes = opts.maxQueueBytes ?? 1 << 20;
    this.maxPackets = opts.maxQueuePackets ?? 2048;
    this.session = new DtlsSession({ listener: (e) => this.onSessionEvent(e) });
  }

  /** The newest association (client_random hex) on the flow. */
  get association(): string | undefined {
    return this.lastAssoc;
  }

  /** Whether verified keys cover the newest association (§5.2). */
  get covered(): boolean {
    return this.lastAssoc !== undefined && this.session.keyStatus(this.lastAssoc) === 'verified';
  }

  keySetsFor(association: string): readonly KeySet[] {
    return this.verifiedSets.get(association) ?? [];
  }

  packet(data: Buffer, dir: GuardDirection, peerPort: number): GuardVerdict {
    this.lastQueued = false;
    if (this.closed || this.blocked) return 'drop';
    // RFC 7983 §7 classes; an empty datagram carries nothing to hold and passes like STUN.
    const cls = data.length > 0 ? demuxCode(data) : PC_STUN;
    let needsKeys: boolean;
    let startsClock = false;
    const wasCovered = this.covered;
    if (cls === PC_STUN) {
      return 'forward'; // RFC 7983 §7 [0..3]: STUN (ICE checks), never held
    } else if (cls === PC_DTLS) {
      // RFC 7983 §7 [20..63]: DTLS. Fed to the guard's own session (associations, key verification).
      const k = dtlsKind(data);
      // Once covered, application data needs no second decryption here; control records
      // (a new ClientHello, encrypted renegotiation) still must be followed (§5.3).
      // Without keys on a flow that goes on uninspected (bypass), the same holds.
      if ((!wasCovered && !this.bypass) || k.control) {
        this.session.feed(data, dir === 'c2p' ? 'c2s' : 's2c', this.o.clock.now());
        this.noteAssociation();
      }
      startsClock = k.protectedSeen;
      needsKeys = !k.control && this.o.keys.data;
    } else if (cls === PC_RTP) {
      // RFC 7983 §7 [128..191]: RTP/RTCP (SRTP); §5.1: the first SRTP packet starts the clock.
      startsClock = true;
      needsKeys = this.o.keys.media;
    } else {
      // RFC 7983 §7: anything else cannot be inspected; treated as data that needs keys.
      needsKeys = this.o.keys.data;
    }
    if (this.blocked) return 'drop';
    const covered = this.covered && (!needsKeys || cls !== PC_RTP || this.hasSrtp(this.lastAssoc!));
    if (this.covered && !wasCovered) this.release();
    if (covered || this.bypass) return 'forward';
    if (startsClock) this.startClock();
    if (!needsKeys) {
      this.enqueue(data, dir, peerPort, false);
      return 'forward';
    }
    // §5.1 deadline 0: keys must be there before any application data.
    if (this.o.keys.deadline === 0 && this.o.keys.required) {
      this.block(this.everCovered ? 'rekey_missing' : 'keys_missing');
      return 'drop';
    }
    switch (this.o.keys.unverified) {
      case 'pass':
        this.enqueue(data, dir, peerPort, false);
        return 'forward';
      case 'drop':
        this.stats.dropped++;
        return 'drop';
      default:
        if (!this.enqueue(data, dir, peerPort, true)) {
          this.stats.dropped++;
          return 'drop';
        }
        this.stats.held++;
        return 'hold';
    }
  }

  /** Adds an escrowed key set (validated by the caller). Returns its status against traffic seen. */
  addKeySet(ks: KeySet): KeyStatus {
    if (this.closed) return 'pending';
    const copy = cloneKs(ks);
    this.allSets.push(copy);
    const wasCovered = this.covered;
    let st = this.session.addKeySet(copy, this.o.clock.now());
    if (st === 'pending' && copy.clientAppTrafficSecret) {
      // DTLS 1.3 (RFC 9147 §4): the session judges these keys only on records it sees next.
      // Queued unified-header records reached it before any keys (no opener consumed them),
      // so they can be shown again, in order, until one authenticates (§5.2).
      const now = this.o.clock.now();
      for (const q of this.queue) {
        if (this.session.keyStatus(associationId(copy.clientRandom)) !== 'pending') break;
        if ((q.data[0]! & 0xe0) === 0x20) this.session.feed(q.data, q.dir === 'c2p' ? 'c2s' : 's2c', now);
      }
      st = this.session.keyStatus(associationId(copy.clientRandom)) ?? st;
    }
    if (st === 'verified') this.markVerified(copy);
    if (this.covered && !wasCovered) this.release();
    return st;
  }

  /** KEY-DECLINE (§2.3): where policy requires keys, the flow is blocked at once. */
  decline(): void {
    if (this.o.keys.required && !this.closed) this.block('keys_declined');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    this.timer = null;
    this.session.close();
    for (const ks of this.allSets) wipeKeySet(ks);
    this.allSets.length = 0;
    this.verifiedSets.clear();
    this.queue = [];
    this.queueBytes = 0;
  }

  // ---------------------------------------------------------------- internals

  private hasSrtp(assoc: string): boolean {
    return (this.verifiedSets.get(assoc) ?? []).some((k) => k.srtpProfile !== undefined);
  }

  private markVerified(ks: KeySet): void {
    const id = associationId(ks.clientRandom);
    const l = this.verifiedSets.get(id) ?? [];
    if (!l.includes(ks)) l.push(ks);
    this.verifiedSets.set(id, l);
  }

  private onSessionEvent(e: InspectEvent): void {
    if (e.type === 'keys.verified' && e.association) {
      const st = this.allSets.filter((k) => associationId(k.clientRandom) === e.association);
      for (const k of st) this.markVerified(k);
      this.o.onKeys?.('verified', e.association);
    } else if (e.type === 'keys.invalid' && e.association) {
      this.o.onKeys?.('invalid', e.association, e.reason);
    }
  }

  /** Tracks the newest association; a new one after a covered one is a re-key (§5.3). */
  private noteAssociation(): void {
    const list = this.session.associations();
    const newest = list.length ? list[list.length - 1]!.id : undefined;
    if (newest === undefined || newest === this.lastAssoc) return;
    if (this.lastAssoc !== undefined && this.session.keyStatus(this.lastAssoc) === 'verified') this.everCovered = true;
    this.lastAssoc = newest;
    if (!this.covered) {
      // A new association starts a new deadline (§5.3); the old keys do not cover it.
      this.timer?.cancel();
      this.timer = null;
      this.clockStarted = false;
      this.bypass = false;
    }
  }

  private startClock(): void {
    if (this.clockStarted) return;
    this.clockStarted = true;
    const ms = this.o.keys.deadline;
    if (ms > 0) this.timer = this.o.clock.setTimeout(() => this.deadlinePassed(), ms);
  }

  private deadlinePassed(): void {
    this.timer = null;
    if (this.closed || this.blocked || this.covered) return;
    if (this.o.keys.required) {
      this.block(this.everCovered ? 'rekey_missing' : 'keys_missing');
      return;
    }
    // Keys not required: the flow goes on uninspected; what was held is forwarded.
    this.bypass = true;
    this.o.onUninspected?.(this.everCovered ? 'rekey_missing' : 'keys_missing', this.lastAssoc);
    this.release();
  }

  private block(reason: BlockReason): void {
    if (this.blocked) return;
    this.blocked = reason;
    this.timer?.cancel();
    this.timer = null;
    this.queue = [];
    this.queueBytes = 0;
    this.o.onBlock?.(reason, this.lastAssoc);
  }

  private enqueue(data: Buffer, dir: GuardDirection, peerPort: number, held: boolean): boolean {
    if (this.queue.length >= this.maxPackets || this.queueBytes + data.length > this.maxBytes) {
      this.stats.overflow++;
      return false;
    }
    this.queue.push({ data: Buffer.from(data), dir, peerPort, held });
    this.queueBytes += data.length;
    this.lastQueued = true;
    return true;
  }

  private release(): void {
    if (this.closed || this.blocked) return;
    this.timer?.cancel();
    this.timer = null;
    const q = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    if (!q.length) return;
    this.stats.released += q.filter((x) => x.held).length;
    this.o.onRelease?.(q);
  }
}

function cloneKs(ks: KeySet): KeySet {
  const out = { ...ks } as KeySet;
  for (const [k, v] of Object.entries(ks)) if (Buffer.isBuffer(v)) (out as unknown as Record<string, unknown>)[k] = Buffer.from(v);
  return out;
}
