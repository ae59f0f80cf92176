/**
 * Per-flow key state machine of key-escrow.md §5, failing closed and bounded (issue 8).
 * No sockets; time from the injected Clock.
 *
 * Public API:
 *   new FlowGuard(opts: FlowGuardOptions)
 *   .packet(data, dir, peerPort): 'forward' | 'hold' | 'drop'
 *       One relayed datagram ('c2p' from the TURN client, 'p2c' from the peer), classified by
 *       src/gateway/classify.ts:
 *       - STUN Binding (ICE checks, consent; RFC 8445 §7.2, RFC 7675): forwarded within the
 *         STUN budget;
 *       - the records of a plausible DTLS handshake, CCS and alerts of their RFC sizes,
 *         DTLS 1.3 epoch-2 records (RFC 6347 §4.2, RFC 9147 §6.1): forwarded within the
 *         handshake budgets, so the handshake can complete (§5.1);
 *       - DTLS application data and SRTP/SRTCP that no verified key set covers: held /
 *         dropped / passed by `unverified` (§5.1);
 *       - everything else is *uninspected*: on a flow whose keys are required never
 *         forwarded (with `hold` it is withheld for good: keys cannot make it inspectable);
 *         elsewhere held, dropped or passed by `unverified`, and counted (onReport).
 *       Over a budget, a required flow is blocked ('budget_exceeded'); elsewhere the excess
 *       is uninspected. The deadline starts at the first datagram that is not STUN.
 *   .addKeySet(ks): KeyStatus      'verified' | 'invalid' (against traffic already seen) | 'pending'
 *   .decline(): void               KEY-DECLINE: blocks at once when keys are required (§2.3)
 *   .onSessionEvent(e)             keys.verified / keys.invalid of a shared DtlsSession (opts.dtls)
 *   .covered / .association / .blocked / .bufferedBytes
 *   .shedCopies(): number          drops the queued copies of forwarded datagrams (memory pressure)
 *   .stopCopies(): number          the same, and copies no more until a key set is added
 *   .shedOldest(): number          drops the oldest held datagram (memory pressure), bytes freed
 *   .close(): void                 wipes the queue (and the guard's own session's keys)
 *
 * One DTLS parse per flow: with `opts.dtls` the guard feeds the flow pipeline's DtlsSession
 * (every DTLS datagram once, on arrival) and keeps no key material of its own; without it
 * (tests) it makes its own session. Either way the one copy of a key set is the session's.
 *
 * Callbacks (FlowGuardOptions):
 *   onRelease(entries)      keys verified (or deadline passed with keys not required): the
 *                           queued datagrams in arrival order; `held` ones were not forwarded.
 *   onBlock(reason, assoc, budget?)  'keys_missing' | 'keys_declined' | 'rekey_missing' (§5.1,
 *                           §5.3) | 'budget_exceeded' (budget: which one)
 *   onKeys(kind, assoc, reason?)  'verified' | 'invalid' outcomes of key sets
 *   onUninspected(reason, assoc)  deadline passed, keys not required: the flow goes on uninspected
 *   onReport(report)        uninspected traffic counts, at most every reportIntervalMs (on a
 *                           packet) and once at close when anything was counted since
 */
import type { Clock, TimerHandle } from '../util/clock.js';
import { DtlsSession } from '../inspect/dtls-session.js';
import type { InspectEvent } from '../inspect/events.js';
import { associationId, type KeySet } from '../wire/keyset.js';
import type { KeyStatus } from '../inspect/dtls-session.js';
import {
  CLIENT_HELLO_BUDGET,
  HANDSHAKE_BYTES_BUDGET,
  K_CONTROL,
  K_EMPTY,
  K_PROTECTED,
  K_STUN,
  K_UNINSPECTED,
  R_BUDGET,
  R_NO_KEYS,
  R_DTLS_UNAUTHENTICATED,
  R_SRTP_UNAUTHENTICATED,
  STUN_BUCKET_BYTES,
  STUN_REFILL_BYTES_PER_S,
  UNINSPECTED_PACKETS_BUDGET,
  UNINSPECTED_REASONS,
  classify,
  isMedia,
  newClassified,
  type UninspectedReason,
} from './classify.js';

export type GuardDirection = 'c2p' | 'p2c';
export type GuardVerdict = 'forward' | 'hold' | 'drop';
export type BlockReason = 'keys_missing' | 'keys_declined' | 'rekey_missing' | 'budget_exceeded';
/** Which budget a 'budget_exceeded' block went over. */
export type BudgetName = 'handshake_bytes' | 'client_hellos' | 'stun' | 'uninspected' | 'memory';

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
  /** The guard's number of the datagram (DtlsSession.currentTag while its records are processed). */
  tag: number;
  /** Uninspected (index into UNINSPECTED_REASONS), or -1. */
  reason: number;
  /** Application data or media that keys would make inspectable. */
  needsKeys: boolean;
  /** Protected records of it that have not authenticated (yet): 0 once keys opened them all. */
  unauth: number;
  /** Set at release: held, but its records never authenticated, on a flow whose keys are required: not to be sent. */
  withhold?: boolean;
}

/** The flow's one DTLS parse (the pipeline's session, src/inspect/pipeline.ts). */
export interface GuardDtls {
  readonly session: DtlsSession;
  /** Feeds one DTLS datagram to it (dir in session terms: 'c2s' = from the TURN client). */
  feed(data: Buffer, dir: 'c2s' | 's2c', time: number, tag: number, owned: boolean): void;
}

export interface UninspectedReport {
  /** Everything counted as uninspected on the flow so far (forwarded or not). */
  packets: number;
  bytes: number;
  /** Of those, what was forwarded (passed) without inspection. */
  forwarded_packets: number;
  forwarded_bytes: number;
  /** By reason (classify.ts UNINSPECTED_REASONS). */
  by: Partial<Record<UninspectedReason, { packets: number; bytes: number }>>;
  /** The report at flow end. */
  final: boolean;
  /** Set once the deadline passed without keys (keys not required): why the flow goes on uninspected. */
  keys?: 'keys_missing' | 'rekey_missing';
}

export interface FlowGuardOptions {
  keys: GuardKeysPolicy;
  clock: Clock;
  /** The flow's shared DTLS parse; without it the guard makes its own session. */
  dtls?: GuardDtls;
  onRelease?: (entries: QueuedPacket[]) => void;
  onBlock?: (reason: BlockReason, association: string | undefined, budget?: BudgetName) => void;
  onKeys?: (kind: 'verified' | 'invalid', association: string, reason?: string) => void;
  /**
   * The deadline passed without verified keys on a flow whose policy does not require
   * them: it goes on uninspected from here (reason: 'keys_missing', or 'rekey_missing'
   * for a new association after a covered one).
   */
  onUninspected?: (reason: 'keys_missing' | 'rekey_missing', association: string | undefined) => void;
  onReport?: (report: UninspectedReport) => void;
  /** Minimum time between two onReport calls (default 10 s). */
  reportIntervalMs?: number;
  /** Bound on held/queued bytes (default 1 MiB) and datagrams (default 2048). */
  maxQueueBytes?: number;
  maxQueuePackets?: number;
}

const NREASONS = UNINSPECTED_REASONS.length;
/** DTLS 1.3 handshake datagrams kept for handshake secrets that come later (see FlowGuard.hs13). */
const HS13_MAX_DATAGRAMS = 16;
const HS13_MAX_BYTES = 32 * 1024;

export class FlowGuard {
  private readonly o: FlowGuardOptions;
  private readonly session: DtlsSession;
  private readonly shared: boolean;
  private readonly feedDtls: (data: Buffer, dir: 'c2s' | 's2c', time: number, tag: number, owned: boolean) => void;
  private readonly c = newClassified();
  private queue: QueuedPacket[] = [];
  private queueBytes = 0;
  private readonly maxBytes: number;
  private readonly maxPackets: number;
  private timer: TimerHandle | null = null;
  private clockStarted = false;
  /** When the running deadline timer fires (keyState). */
  private deadlineAt = 0;
  /** Associations that were covered (a later uncovered one is a re-key, §5.3). */
  private everCovered = false;
  private lastAssoc: string | undefined;
  private bypass = false; // keys not required and the deadline passed: pass uninspected
  /**
   * `pass` copies forwarded datagrams for inspection once keys arrive; under memory
   * pressure (stopCopies) the flow stops copying until a key set comes, so a flow over its
   * share makes no garbage per datagram: what it forwards meanwhile is counted uninspected.
   */
  private copying = true;
  /**
   * DTLS 1.3 protected handshake datagrams (RFC 9147 §4 unified header, epoch 2) that no
   * key set opened when they passed: kept (bounded: HS13_MAX_DATAGRAMS, HS13_MAX_BYTES)
   * until handshake traffic secrets arrive, which open them again (key-escrow.md §6.5:
   * the server's use_srtp choice is in EncryptedExtensions, RFC 8446 §4.3.1). They were
   * forwarded already; this is only so the gateway can read them.
   */
  private hs13: { data: Buffer; dir: 'c2s' | 's2c' }[] = [];
  private hs13Bytes = 0;
  /** Queued DTLS datagrams (by tag) whose records have not all authenticated: see QueuedPacket.unauth. */
  private readonly pendingAuth = new Map<number, QueuedPacket>();
  private bypassReason: 'keys_missing' | 'rekey_missing' | undefined;
  private closed = false;
  private seq = 0;
  // Budgets (classify.ts).
  private hsBytes = 0;
  private clientHellos = 0;
  private stunTokens = STUN_BUCKET_BYTES;
  private stunAt = -1;
  private withheld = 0;
  // Uninspected counters (by reason), and what was reported last.
  private readonly unPackets = new Float64Array(NREASONS);
  private readonly unBytes = new Float64Array(NREASONS);
  private fwdPackets = 0;
  private fwdBytes = 0;
  private unChanged = false;
  private lastReport = -Infinity;
  blocked: BlockReason | null = null;
  /** Whether the last packet() copied the datagram into the queue (it reaches inspection on release). */
  lastQueued = false;
  readonly stats = { held: 0, dropped: 0, overflow: 0, released: 0, uninspected: 0 };

  constructor(opts: FlowGuardOptions) {
    this.o = opts;
    this.maxBytes = opts.maxQueueBytes ?? 1 << 20;
    this.maxPackets = opts.maxQueuePackets ?? 2048;
    if (opts.dtls) {
      this.shared = true;
      this.session = opts.dtls.session;
      const d = opts.dtls;
      this.feedDtls = (data, dir, time, tag, owned) => d.feed(data, dir, time, tag, owned);
    } else {
      this.shared = false;
      const s = new DtlsSession({ listener: (e) => this.onSessionEvent(e) });
      this.session = s;
      this.feedDtls = (data, dir, time, tag, owned) => s.feed(data, dir, time, tag, owned);
    }
    this.session.onAuthenticated = (tag) => {
      const q = this.pendingAuth.get(tag);
      if (q && --q.unauth <= 0) this.pendingAuth.delete(tag);
    };
  }

  /** The newest association (client_random hex) on the flow. */
  get association(): string | undefined {
    return this.lastAssoc;
  }

  /** Whether verified keys cover the newest association (§5.2). */
  get covered(): boolean {
    return this.lastAssoc !== undefined && this.session.keyStatus(this.lastAssoc) === 'verified';
  }

  /**
   * Where the flow's keys stand (the dashboard, read only): `waiting` with the time the
   * deadline passes (ms, null before the first DTLS handshake starts the clock), `verified`,
   * `uninspected` (keys not required, the deadline passed) or `blocked`. Never key material.
   */
  get keyState(): { status: 'waiting' | 'verified' | 'uninspected' | 'blocked'; deadline: number | null; reason?: string } {
    if (this.blocked) return { status: 'blocked', deadline: null, reason: this.blocked };
    if (this.covered) return { status: 'verified', deadline: null };
    if (this.bypass) return { status: 'uninspected', deadline: null, ...(this.bypassReason ? { reason: this.bypassReason } : {}) };
    return { status: 'waiting', deadline: this.timer ? this.deadlineAt : null };
  }

  /** Bytes of queued (held or to-be-inspected) datagram copies. */
  get bufferedBytes(): number {
    return this.queueBytes + this.hs13Bytes;
  }

  packet(data: Buffer, dir: GuardDirection, peerPort: number): GuardVerdict {
    this.lastQueued = false;
    if (this.closed || this.blocked) return 'drop';
    const c = classify(data, this.c);
    const now = this.o.clock.now();
    const k = this.o.keys;
    if (c.kind === K_EMPTY) return 'forward'; // nothing to inspect, nothing to leak
    if (c.kind === K_STUN) {
      // RFC 8445 §7.2 / RFC 7675: ICE connectivity and consent checks between the peers.
      if (this.stunTake(data.length, now)) return 'forward';
      return this.overBudget('stun', data, dir, peerPort, now);
    }
    let kind = c.kind;
    let reason = c.reason;
    const wasCovered = this.covered;
    if (kind === K_CONTROL) {
      // Handshake budgets hold on every flow, covered or not (the count restarts when keys
      // verify: a renegotiation gets a fresh budget), so handshake-shaped records are never
      // a channel of their own.
      if (this.hsBytes + c.handshakeBytes > HANDSHAKE_BYTES_BUDGET) {
        if (k.required) return this.overBudget('handshake_bytes', data, dir, peerPort, now);
        kind = K_UNINSPECTED;
        reason = R_BUDGET;
      } else if (this.clientHellos + c.clientHellos > CLIENT_HELLO_BUDGET) {
        if (k.required) return this.overBudget('client_hellos', data, dir, peerPort, now);
        kind = K_UNINSPECTED;
        reason = R_BUDGET;
      } else {
        this.hsBytes += c.handshakeBytes;
        this.clientHellos += c.clientHellos;
      }
    }
    if (kind === K_UNINSPECTED) return this.uninspected(reason, data, dir, peerPort, now);

    const media = isMedia(data);
    const needsKeys = kind === K_PROTECTED && (media ? k.media : k.data);
    let buf = data;
    let owned = false;
    let unauth = 0; // protected records of this datagram that did not authenticate on arrival
    if (!media) {
      // RFC 7983 §7 [20..63]: DTLS, fed once to the flow's one parse (associations, key
      // verification, decryption). What will be queued is copied first, so the session's
      // backlog can refer into that copy instead of making a second one.
      const passUncopied = !this.copying && kind === K_PROTECTED && needsKeys && k.unverified === 'pass';
      const willQueue =
        !wasCovered && !this.bypass && !passUncopied && (kind === K_PROTECTED ? !(needsKeys && k.unverified === 'drop') : !this.shared);
      if (willQueue) {
        buf = Buffer.from(data);
        owned = true;
      }
      // Not copying (memory pressure, no keys offered yet): application data is not shown to
      // the session either, which would keep its own copy in the backlog.
      if (!(passUncopied && !wasCovered)) {
        this.feedDtls(buf, dir === 'c2p' ? 'c2s' : 's2c', now, ++this.seq, owned);
        unauth = this.session.lastUnauthenticated;
        if (
          kind === K_CONTROL &&
          !wasCovered &&
          this.copying && // under memory pressure (stopCopies) nothing more is kept for later reading
          this.session.lastUnauthenticatedHandshake > 0 &&
          this.hs13.length < HS13_MAX_DATAGRAMS &&
          this.hs13Bytes + data.length <= HS13_MAX_BYTES
        ) {
          this.hs13.push({ data: owned ? buf : Buffer.from(data), dir: dir === 'c2p' ? 'c2s' : 's2c' });
          this.hs13Bytes += data.length;
        }
      }
      this.noteAssociation();
      if (this.blocked || this.closed) return 'drop';
    }
    const covered = this.covered && (!needsKeys || !media || this.session.hasVerifiedSrtp(this.lastAssoc!));
    if (this.covered && !wasCovered) {
      this.hsBytes = 0; // a later renegotiation gets a fresh handshake budget
      this.release();
    }
    if (covered) {
      // Covered means keys verified for the association, not that this datagram's records
      // authenticated: one that did not (tampered, a foreign epoch, another association) is
      // nothing the gateway can vouch for (key-escrow.md §5.2).
      if (unauth > 0) return this.uninspected(R_DTLS_UNAUTHENTICATED, data, dir, peerPort, now);
      return 'forward';
    }
    if (this.bypass) {
      if (needsKeys) this.count(R_NO_KEYS, data.length, true, now);
      return 'forward';
    }
    this.startClock(); // §5.1, issue 8: at the first datagram that is not STUN
    if (!needsKeys) {
      // Handshake records (and data whose keys are not wanted): forwarded; queued when the
      // guard has its own session, so inspection sees the whole flow in order on release.
      if (kind === K_PROTECTED || !this.shared) this.enqueue(buf, owned, dir, peerPort, false, -1, false, unauth);
      return 'forward';
    }
    // §5.1 deadline 0: keys must be there before any application data.
    if (k.deadline === 0 && k.required) {
      this.block(this.everCovered ? 'rekey_missing' : 'keys_missing');
      return 'drop';
    }
    switch (k.unverified) {
      case 'pass':
        if (!this.copying) {
          this.count(R_BUDGET, data.length, true, now); // forwarded, never to be inspected
          return 'forward';
        }
        this.enqueue(buf, owned, dir, peerPort, false, -1, true, unauth);
        return 'forward';
      case 'drop':
        this.stats.dropped++;
        return 'drop';
      default:
        if (!this.enqueue(buf, owned, dir, peerPort, true, -1, true, unauth)) {
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
    this.copying = true; // the next records can verify these keys (they are shown to the session again)
    const wasCovered = this.covered;
    const now = this.o.clock.now();
    // The session keeps the flow's one copy (DtlsSession.addKeySet clones; the caller wipes its own).
    let st = this.session.addKeySet(ks, now);
    const id = associationId(ks.clientRandom);
    if (this.hs13.length && (ks.clientHsTrafficSecret || ks.serverHsTrafficSecret)) {
      // The DTLS 1.3 handshake records seen before these secrets: opened now (EncryptedExtensions).
      const hs = this.hs13;
      this.hs13 = [];
      this.hs13Bytes = 0;
      for (const h of hs) if (!this.closed) this.feedDtls(h.data, h.dir, now, -1, true);
    }
    if (st === 'pending' && ks.clientAppTrafficSecret) {
      // DTLS 1.3 (RFC 9147 §4): the session judges these keys only on records it sees next.
      // Queued unified-header records reached it before any keys (no opener consumed them),
      // so they can be shown again, in order, until one authenticates (§5.2).
      // Every such record still unauthenticated is shown (not only up to the first that
      // verifies), so each is opened and inspected, and none is released unauthenticated.
      for (const q of this.queue) {
        if (this.closed || this.session.keyStatus(id) === 'invalid') break;
        if (q.unauth > 0 && (q.data[0]! & 0xe0) === 0x20) this.feedDtls(q.data, q.dir === 'c2p' ? 'c2s' : 's2c', now, q.tag, true);
      }
      st = this.session.keyStatus(id) ?? st;
    }
    if (this.closed || this.blocked) return st;
    if (this.covered && !wasCovered) {
      this.hsBytes = 0;
      this.release();
    }
    return st;
  }

  /** KEY-DECLINE (§2.3): where policy requires keys, the flow is blocked at once. */
  decline(): void {
    if (this.o.keys.required && !this.closed) this.block('keys_declined');
  }

  /** keys.verified / keys.invalid from the session (the own one, or the shared one via the inspector). */
  onSessionEvent(e: InspectEvent): void {
    if (this.closed) return;
    if (e.type === 'keys.verified' && e.association) this.o.onKeys?.('verified', e.association);
    else if (e.type === 'keys.invalid' && e.association) this.o.onKeys?.('invalid', e.association, e.reason);
  }

  /** Drops the oldest held datagram (memory pressure on a flow whose keys are not required). */
  /**
   * Memory pressure: drops every queued copy of a datagram that was already forwarded
   * (`pass`): only its later inspection is lost, nothing the peer needs. Returns bytes freed.
   */
  stopCopies(): number {
    this.copying = false;
    return this.shedCopies();
  }

  shedCopies(): number {
    // The DTLS 1.3 handshake copies kept for late handshake secrets were forwarded already:
    // only their later reading is lost (the SRTP profile may stay unknown).
    const hs13 = this.hs13Bytes;
    this.hs13 = [];
    this.hs13Bytes = 0;
    let freed = 0;
    let w = 0;
    for (let i = 0; i < this.queue.length; i++) {
      const q = this.queue[i]!;
      if (q.held) this.queue[w++] = q;
      else {
        freed += q.data.length;
        if (q.tag >= 0) this.pendingAuth.delete(q.tag);
      }
    }
    if (freed === 0) return hs13;
    this.stats.overflow += this.queue.length - w;
    this.queue.length = w;
    this.queueBytes -= freed;
    return freed + hs13;
  }

  shedOldest(): number {
    const i = this.queue.findIndex((q) => q.held);
    if (i < 0) return 0;
    const [q] = this.queue.splice(i, 1);
    this.queueBytes -= q!.data.length;
    if (q!.tag >= 0) this.pendingAuth.delete(q!.tag);
    this.stats.overflow++;
    return q!.data.length;
  }

  /** Blocks the flow for going over a budget the gateway keeps outside the guard (memory). */
  blockFor(budget: BudgetName): void {
    if (!this.closed) this.block('budget_exceeded', budget);
  }

  close(): void {
    if (this.closed) return;
    this.report(this.o.clock.now(), true);
    this.closed = true;
    this.timer?.cancel();
    this.timer = null;
    if (!this.shared) this.session.close(); // wipes every key (§5.5); a shared one is the pipeline's
    this.session.onAuthenticated = null;
    this.hs13 = [];
    this.hs13Bytes = 0;
    this.queue = [];
    this.queueBytes = 0;
    this.pendingAuth.clear();
  }

  // ---------------------------------------------------------------- internals

  /** STUN token bucket (classify.ts STUN_BUCKET_BYTES / STUN_REFILL_BYTES_PER_S). */
  private stunTake(n: number, now: number): boolean {
    if (this.stunAt >= 0 && now > this.stunAt)
      this.stunTokens = Math.min(STUN_BUCKET_BYTES, this.stunTokens + ((now - this.stunAt) * STUN_REFILL_BYTES_PER_S) / 1000);
    this.stunAt = now;
    if (this.stunTokens < n) return false;
    this.stunTokens -= n;
    return true;
  }

  private overBudget(budget: BudgetName, data: Buffer, dir: GuardDirection, peerPort: number, now: number): GuardVerdict {
    if (this.o.keys.required) {
      this.count(R_BUDGET, data.length, false, now);
      this.block('budget_exceeded', budget);
      return 'drop';
    }
    return this.uninspected(R_BUDGET, data, dir, peerPort, now);
  }

  /** What nothing can inspect (classify.ts UNINSPECTED_REASONS). */
  private uninspected(reason: number, data: Buffer, dir: GuardDirection, peerPort: number, now: number): GuardVerdict {
    this.stats.uninspected++;
    const k = this.o.keys;
    if (k.required) {
      // Never forwarded: keys cannot make it inspectable, so even `hold` keeps nothing.
      this.count(reason, data.length, false, now);
      if (!this.covered) this.startClock();
      if (++this.withheld > UNINSPECTED_PACKETS_BUDGET) {
        this.block('budget_exceeded', 'uninspected');
        return 'drop';
      }
      return k.unverified === 'hold' ? 'hold' : 'drop';
    }
    if (this.bypass || k.unverified === 'pass') {
      this.count(reason, data.length, true, now);
      if (!this.bypass && !this.covered) this.startClock();
      return 'forward';
    }
    this.startClock();
    if (k.unverified === 'drop') {
      this.count(reason, data.length, false, now);
      this.stats.dropped++;
      return 'drop';
    }
    // hold: released (uninspected) with the rest at the deadline; counted as forwarded then.
    if (!this.enqueue(data, false, dir, peerPort, true, reason, false)) {
      this.count(reason, data.length, false, now);
      this.stats.dropped++;
      return 'drop';
    }
    this.stats.held++;
    return 'hold';
  }

  private count(reason: number, bytes: number, forwarded: boolean, now: number): void {
    this.unPackets[reason]!++;
    this.unBytes[reason]! += bytes;
    if (forwarded) {
      this.fwdPackets++;
      this.fwdBytes += bytes;
    }
    this.unChanged = true;
    if (now - this.lastReport >= (this.o.reportIntervalMs ?? 10_000)) this.report(now, false);
  }

  private report(now: number, final: boolean): void {
    if (!this.unChanged || !this.o.onReport) return;
    this.unChanged = false;
    this.lastReport = now;
    let packets = 0;
    let bytes = 0;
    const by: UninspectedReport['by'] = {};
    for (let i = 0; i < NREASONS; i++) {
      if (!this.unPackets[i]) continue;
      packets += this.unPackets[i]!;
      bytes += this.unBytes[i]!;
      by[UNINSPECTED_REASONS[i]!] = { packets: this.unPackets[i]!, bytes: this.unBytes[i]! };
    }
    this.o.onReport({
      packets,
      bytes,
      forwarded_packets: this.fwdPackets,
      forwarded_bytes: this.fwdBytes,
      by,
      final,
      ...(this.bypassReason ? { keys: this.bypassReason } : {}),
    });
  }

  /** Tracks the newest association; a new one after a covered one is a re-key (§5.3). */
  private noteAssociation(): void {
    const newest = this.session.newestAssociation();
    if (newest === undefined || newest === this.lastAssoc) return;
    if (this.lastAssoc !== undefined && this.session.keyStatus(this.lastAssoc) === 'verified') this.everCovered = true;
    this.lastAssoc = newest;
    if (!this.covered && (this.everCovered || !this.o.keys.required)) {
      // A new association after a covered one starts a new deadline (§5.3); the old keys do
      // not cover it. On a required flow that was never covered, the first deadline stands:
      // new ClientHellos must not stretch it.
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
    if (ms > 0) {
      this.deadlineAt = this.o.clock.now() + ms;
      this.timer = this.o.clock.setTimeout(() => this.deadlinePassed(), ms);
    }
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
    this.bypassReason = this.everCovered ? 'rekey_missing' : 'keys_missing';
    this.o.onUninspected?.(this.bypassReason, this.lastAssoc);
    // Nothing will verify the held records any more: the session's copies go (memory).
    this.session.dropBacklog();
    const now = this.o.clock.now();
    for (const q of this.queue) {
      // Forwarded without inspection now (held) or before (passed, never inspected).
      if (q.reason >= 0) this.count(q.reason, q.data.length, true, now);
      else if (q.needsKeys) this.count(R_NO_KEYS, q.data.length, true, now);
    }
    this.release(true);
  }

  private block(reason: BlockReason, budget?: BudgetName): void {
    if (this.blocked) return;
    this.blocked = reason;
    this.timer?.cancel();
    this.timer = null;
    this.queue = [];
    this.queueBytes = 0;
    this.pendingAuth.clear();
    this.session.dropBacklog();
    this.o.onBlock?.(reason, this.lastAssoc, budget);
  }

  /** Queues a datagram; `owned`: it is the guard's copy already (packet() copied DTLS it queues). */
  private enqueue(
    data: Buffer,
    owned: boolean,
    dir: GuardDirection,
    peerPort: number,
    held: boolean,
    reason: number,
    needsKeys: boolean,
    unauth = 0,
  ): boolean {
    if (this.queue.length >= this.maxPackets || this.queueBytes + data.length > this.maxBytes) {
      this.stats.overflow++;
      return false;
    }
    const tag = owned ? this.seq : -1; // owned copies are the DTLS datagrams fed to the session
    const q: QueuedPacket = { data: owned ? data : Buffer.from(data), dir, peerPort, held, tag, reason, needsKeys, unauth };
    this.queue.push(q);
    if (unauth > 0 && tag >= 0) this.pendingAuth.set(tag, q);
    this.queueBytes += data.length;
    this.lastQueued = true;
    return true;
  }

  private release(deadline = false): void {
    if (this.closed || this.blocked) return;
    this.timer?.cancel();
    this.timer = null;
    const q = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    this.pendingAuth.clear();
    if (!q.length) return;
    const required = this.o.keys.required;
    if (!deadline) {
      // Keys verified: uninspected datagrams held meanwhile (keys not required) go now, uninspected.
      const now = this.o.clock.now();
      for (const x of q) {
        if (x.reason >= 0) this.count(x.reason, x.data.length, true, now);
        else if (x.unauth > 0) {
          // Its records did not authenticate under the keys that verified (§5.2): where keys
          // are required a held one is never sent; otherwise it goes, counted uninspected.
          const send = !(required && x.held);
          if (!send) {
            x.withhold = true;
            this.withheld++;
          }
          this.count(R_DTLS_UNAUTHENTICATED, x.data.length, !x.withhold, now);
        }
      }
    }
    let n = 0;
    for (const x of q) if (x.held && !x.withhold) n++;
    this.stats.released += n;
    this.o.onRelease?.(q);
    if (required && this.withheld > UNINSPECTED_PACKETS_BUDGET && !this.closed) this.block('budget_exceeded', 'uninspected');
  }

  /**
   * An SRTP/SRTCP packet of a covered flow that the flow's keys did not authenticate (the
   * pipeline tried them, RFC 3711 §3.4 / RFC 7714 §9.3): whether it may go on. Where media
   * keys are required it is uninspected and never forwarded; over the budget the flow is
   * blocked.
   */
  mediaUnauthenticated(bytes: number): boolean {
    if (this.closed || this.blocked) return false;
    const now = this.o.clock.now();
    const k = this.o.keys;
    if (!k.media) return true; // media keys not wanted: SRTP passes as it is
    if (!k.required) {
      // Uncovered media was counted by packet() already (no_keys, budget).
      if (this.covered) {
        this.stats.uninspected++;
        this.count(R_SRTP_UNAUTHENTICATED, bytes, true, now);
      }
      return true;
    }
    this.stats.uninspected++;
    this.count(R_SRTP_UNAUTHENTICATED, bytes, false, now);
    if (++this.withheld > UNINSPECTED_PACKETS_BUDGET) this.block('budget_exceeded', 'uninspected');
    return false;
  }
}
