/**
 * The gateway's inspection glue (design.md "One packet's walk"): given to TurnServer as
 * `flowHooks`, with `inspector.extension` in `extensions`. Per flow: one FlowGuard (key
 * escrow state machine, key-escrow.md §5) and one FlowPipeline (decryption, data channels,
 * media), policy verdicts, and EVE events with `gatehouse: { user, allocation, association }`.
 *
 *   const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock, logger });
 *   const turn = new TurnServer({ ..., flowHooks: inspector, extensions: [inspector.extension] });
 *   inspector.attach(turn);   // closing blocked flows, re-sending held packets
 *
 * Knows no sockets itself: sending released packets and closing flows go through a
 * FlowRelay (attach() builds one for a TurnServer).
 */
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { Supervisor } from '../util/supervise.js';
import { BufferAccounts, type FlowAccount } from './memory.js';
import { silentLogger, type Logger } from '../util/log.js';
import { eveTimestamp, type EventSink, type EveEvent } from '../events/eve.js';
import type { GatewayIdentity } from '../store/identity.js';
import type { FlowContext, PolicyEngine, ScanMatch, Subject, VerdictAction } from '../policy/engine.js';
import type { ScannerKind } from '../policy/rules-schema.js';
import type { GuardedResult, ScanInput, ScanMeta } from '../scan/index.js';
import { createReadStream } from 'node:fs';
import { spoolOf, TRANSFER_DEFAULTS, type SpoolFactory, type SpoolMode } from '../inspect/transfer.js';
import { ACTION_RANK } from '../policy/engine.js';
import type { Flow, FlowDirection, FlowHooks, TurnRequestContext } from '../turn/flow.js';
import { FlowBlockList } from './block-list.js';
import { assignCoreRef } from '../turn/events.js';
import type { CoreIdentity } from '../turn/state.js';
import { TurnEscrowExtension, type EscrowHost, type EscrowKeysPolicy } from './escrow.js';
import { KeyEscrowService, type KeyEscrowHost } from './keyescrow.js';
import { KP_FLAG_ETM, KP_FLAG_MEDIA, KP_FLAG_RECORD_KEYS_HELD, KP_FLAG_SRTP_UNKNOWN, type KeyPending } from '../wire/keyescrow.js';
import {
  FlowGuard,
  type BlockReason,
  type BudgetName,
  type GuardKeysPolicy,
  type QueuedPacket,
  type UninspectedReport,
} from './flow-guard.js';
import { FlowPipeline } from '../inspect/pipeline.js';
import { toEve, type FlowMeta } from '../inspect/eve-format.js';
import { associationId, type KeySet } from '../wire/keyset.js';
import type { KeyStatus } from '../inspect/dtls-session.js';
import type { InspectEvent } from '../inspect/events.js';
import { policySubject } from '../policy/subject.js';
import { isPcpFlow } from './pcp-path.js';
import { demux, isRtcp } from '../wire/demux.js';
import type { FlowInfo, RecordingSealed } from '../record/recorder.js';

/** How released packets are sent and flows are torn down (a TurnServer, see attach()). */
export interface FlowRelay {
  send(flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): void;
  close(flow: Flow, reason: string): void;
}

export interface GatewayInspectorOptions {
  /** The policy in force (a getter, so a reload takes effect for new flows). */
  policy: () => PolicyEngine;
  identity: GatewayIdentity;
  events?: EventSink;
  clock?: Clock;
  logger?: Logger;
  /** Data quotas (issue 5): counted per relayed packet; over quota, non-vital traffic is dropped. */
  quotas?: { account(user: string | undefined, groups: readonly string[], peerIp: string | undefined, bytes: number): 'pass' | 'drop' };
  /** Where flows selected by a `record` rule are recorded (src/record). */
  recordings?: { open(flow: FlowInfo): FlowRecorderLike };
  /**
   * The supervision wrapper (src/util/supervise.ts): packet hooks, key handling and the
   * flows' deadline timers run inside it; an exception closes that flow, never the process.
   */
  supervisor?: Supervisor;
  /** Memory bounds (config gateway.allocation_buffer_bytes / max_buffered_bytes, in bytes). */
  memory?: { allocationBytes: number; maxBytes: number };
  /** Data-channel file transfers (issue 9; config policy.max_file_bytes, policy.transfer_pause_ms). */
  transfers?: { maxFileBytes: number; pauseMs: number };
  /**
   * Malware scanners for `scan:` rules (config `scan:`, src/scan GuardedScanner): a file
   * whose rule asks for a missing scanner, or beyond MAX_SCANS_PER_FLOW, is unscanned and
   * follows failOpen (scan.fail_open, default false).
   */
  scanners?: { icap?: FileScanner | null; clamd?: FileScanner | null; failOpen?: boolean; maxCopyBytes?: number };
  /**
   * Spool files for transfers a recorder or a scanner needs (issue 9; DATA_DIR/spool,
   * src/record/spool.ts): beyond their first 64 KiB they go to disk, not memory. None:
   * they are kept in memory (within the allocation's account).
   */
  spool?: SpoolFactory | null;
}

/** What the inspector needs of a scanner: GuardedScanner (deadline, max_concurrent, fail_open, stats). */
export interface FileScanner {
  readonly kind: string;
  scan(file: ScanInput, meta: ScanMeta): Promise<GuardedResult>;
}

/**
 * Bounds of what a flow holds while scans run (README "Malware scanning"): datagrams held
 * (the one completing a scanned file, then the later DTLS datagrams of the flow, so a
 * retransmission of the final chunk cannot pass before the verdict) and files waiting for
 * a verdict. Held bytes count in the flow's allocation memory account
 * (gateway.allocation_buffer_bytes); a datagram beyond the bounds is withheld without a
 * copy (a reliable SCTP sender retransmits it), counted as scan_hold_overflow.
 */
export const MAX_SCAN_HELD_DATAGRAMS = 64;
export const MAX_SCAN_HELD_BYTES = 256 * 1024;
export const MAX_SCANS_PER_FLOW = 4;
/**
 * Bytes of file copies waiting for a scanner's verdict, all flows together (a file kept in
 * memory for content rules is copied whole; a spooled one holds its 64 KiB head). Beyond,
 * the file is unscanned (`queue_full`) and follows scan.fail_open. Each copy also counts
 * in its flow's allocation memory account.
 */
export const MAX_SCAN_COPY_BYTES = 256 * 1024 * 1024;

interface ScanJob {
  /** The rules that ask this scanner, in rule-file order. */
  matches: ScanMatch[];
  scanner: ScannerKind;
  event: Extract<InspectEvent, { type: 'file' }>;
  /** The event's spool file is kept until this is called (the scan read it, or the job was dropped). */
  release: (() => void) | null;
}

interface ScanHold {
  /** Scans not answered yet. */
  pending: number;
  /** Datagrams held until every pending scan has answered, in arrival order. */
  held: { data: Buffer; dir: FlowDirection; peerPort: number }[];
  heldBytes: number;
  /**
   * Bytes of the file copies waiting for a verdict (the events' `data`: the whole file when
   * kept in memory, the 64 KiB head when spooled to disk): in the flow's memory account.
   */
  fileBytes: number;
  /** A `drop` rule matched an infected file: the held datagrams are withheld, not released. */
  drop: boolean;
}

/** What the inspector needs of a FlowRecorder. */
export interface FlowRecorderLike {
  onEvent(e: InspectEvent): void;
  close(): RecordingSealed | null;
  readonly recordingId?: string;
}

interface FlowState {
  flow: Flow;
  /** What policy knows of the flow (policyContext), made once: the flow's identity is fixed. */
  policyCtx: FlowContext;
  guard: FlowGuard;
  pipeline: FlowPipeline;
  meta: FlowMeta;
  policy: PolicyEngine;
  keys: EscrowKeysPolicy | null;
  /** Strongest policy verdict for the datagram being inspected. */
  verdict: VerdictAction;
  closed: boolean;
  /** Set while the flow is being recorded (a `record` rule selected it). */
  recorder: FlowRecorderLike | null;
  /** Media streams a `drop` rule matched: their RTP is withheld, the rest of the flow goes on. */
  droppedSsrcs: Set<number>;
  /** While key sets are applied: verdicts of records decrypted from the session's backlog, by datagram tag. */
  keying: boolean;
  tagVerdicts: Map<number, VerdictAction> | null;
  /** An exception inside the pipeline or policy (caught there): the flow is closed. */
  failure: unknown;
  pipelineErrors: number;
  mem: FlowAccount;
  /** When this flow last reported `cap.hit` for the memory bounds (rate limit). */
  lastCapHit: number;
  /** Index key of byUserPeer. */
  userPeer: string;
  /** Ends data-channel transfers at their pause (their file events are judged then). */
  transferTimer: TimerHandle | null;
  /** Files to scan found while the current datagram was inspected. */
  scanJobs: ScanJob[] | null;
  /** While keys are applied: scan jobs of records decrypted from the backlog, by datagram tag. */
  tagScans: Map<number, ScanJob[]> | null;
  /** Scans in flight for this flow and what is held for them. */
  scanHold: ScanHold | null;
  /** Rule matches on this flow and the strongest action among them (the dashboard). */
  alerts: number;
  worst: VerdictAction;
}

const RANK_FORWARD = ACTION_RANK.forward;
/** At most one `cap.hit` per flow in this time for the memory bounds (a flow under pressure sheds on every datagram). */
const CAP_HIT_INTERVAL_MS = 10_000;
/** A transfer-pause timer this late means the event loop was busy (armTransferTimer). */
const TRANSFER_TIMER_LATE_MS = 100;
/** Then it looks again after this long, after the sockets were polled ... */
const TRANSFER_TIMER_RECHECK_MS = 50;
/** ... at most this many times in a row (a loop that is always late still ends pauses). */
const TRANSFER_TIMER_DEFERRALS = 20;

/** No `keys` section: keys are welcome but not asked for; traffic passes. */
const NO_KEYS: GuardKeysPolicy = { required: false, deadline: 10_000, unverified: 'pass', media: true, data: true };

/** Client randoms indexed per flow for KeyEscrow (key-escrow.md §6.4); DtlsSession keeps as many associations. */
const MAX_HANDSHAKES_INDEXED = 8;

export class GatewayInspector implements FlowHooks, EscrowHost, KeyEscrowHost {
  readonly extension: TurnEscrowExtension;
  /** KeyEscrow requests (key-escrow.md §6): the TurnServer's `keyEscrow` handler. */
  readonly keyEscrow: KeyEscrowService;
  /** Live TURN flows by user (§6.4: key sets go to the requesting user's flows only). */
  private readonly byUser = new Map<string, Set<FlowState>>();
  /** Flows whose ServerHello of a client_random crossed them, by client_random hex (§6.4). */
  private readonly byHandshake = new Map<string, Set<FlowState>>();
  /** The client_randoms indexed for a flow (removed at close). */
  private readonly handshakesOf = new Map<FlowState, string[]>();
  readonly blockList: FlowBlockList;
  private readonly o: GatewayInspectorOptions;
  private readonly clock: Clock;
  private readonly log: Logger;
  private relay: FlowRelay | null = null;
  private readonly byPeer = new Map<string, FlowState>();
  /** Live flows by user × peer IP (a block holds for all of them, key-escrow.md §5.4). */
  private readonly byUserPeer = new Map<string, Set<FlowState>>();
  readonly supervisor: Supervisor;
  readonly memory: BufferAccounts;
  /** Flows blocked, by reason (`budget_exceeded:<budget>` for budgets): read by /metrics. */
  private readonly blockedBy: Record<string, number> = {};
  /** Scan holds (issue 9): files scanned, datagrams held and released, held ones beyond the bounds. */
  private readonly scanCounts = { files: 0, held: 0, released: 0, withheld: 0, overflow: 0, rejected: 0 };
  /** Per rule set: whether a rule judges a file's bytes in memory (contains, contains_text, regex). */
  private readonly contentRules = new WeakMap<PolicyEngine, boolean>();
  private scanCopyBytes = 0;
  /** Flows to tear down once the request being handled has taken effect (escrow.ts). */
  private deferred: { flow: Flow; reason: string }[] | null = null;

  constructor(opts: GatewayInspectorOptions) {
    this.o = opts;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    this.blockList = new FlowBlockList(this.clock);
    this.extension = new TurnEscrowExtension(this, opts.identity);
    this.keyEscrow = new KeyEscrowService(this, opts.identity, this.clock);
    this.supervisor = opts.supervisor ?? new Supervisor(this.log);
    this.memory = new BufferAccounts(opts.memory?.allocationBytes, opts.memory?.maxBytes);
  }

  /** Uses a TurnServer to close blocked flows and to send released (held) packets. */
  attach(server: RelayServer): this {
    this.relay = turnRelay(server);
    return this;
  }

  /** Or any other relay (tests, PCP). */
  setRelay(relay: FlowRelay): this {
    this.relay = relay;
    return this;
  }

  // ------------------------------------------------------------------ FlowHooks

  permitPeer(info: { allocationId: string; user: string }, peerAddress: string): boolean {
    // key-escrow.md §5.4: after a block, the same user and peer address are refused from
    // any allocation of that user for keys.block_for (403 Forbidden).
    return !this.blockList.isBlocked(info.user, peerAddress);
  }

  /** EscrowHost: the extension answers 403 for a blocked user × peer (any allocation, §5.4). */
  isBlocked(user: string, peerIp: string): boolean {
    return this.blockList.isBlocked(user, peerIp);
  }

  onFlowCreated(flow: Flow): void {
    this.supervisor.run(
      'gateway.flow.created',
      () => this.createFlow(flow),
      () => this.failFlow(flow, flow.ctx as FlowState | undefined),
    );
  }

  private createFlow(flow: Flow): void {
    const policy = this.o.policy();
    const keys = policy.keys;
    const gk: GuardKeysPolicy = keys
      ? { required: keys.required, deadline: keys.deadline, unverified: keys.unverified, media: keys.media, data: keys.data }
      : NO_KEYS;
    const st = {} as FlowState;
    // The flow's identity is fixed for its life (Flow's fields are readonly): one policy
    // context per flow, not one per inspected message.
    const flowCtx = policyContext(flow);
    st.policyCtx = flowCtx;
    const recordRules = this.o.recordings ? policy.recordsFlow(flowCtx) : [];
    // rtp.packet events (decrypted payloads) are produced only for recorded flows. One DTLS
    // parse per flow: the pipeline's session, fed by the guard on arrival (dtlsExternal);
    // key sets go to it from the guard, so the pipeline needs no key provider.
    const tx = this.o.transfers;
    const pipeline = new FlowPipeline({
      keys: {},
      rtpPackets: recordRules.length > 0,
      dtlsExternal: true,
      // Issue 9: a transfer's content is kept only when a recorder, a scanner or a content
      // rule needs it; in memory for content rules (they judge `data` in the same call),
      // else beyond 64 KiB in a spool file (DATA_DIR/spool) when the gateway gave one.
      transfers: {
        ...(tx ? { maxFileBytes: tx.maxFileBytes, pauseMs: tx.pauseMs } : {}),
        expireOnPacket: false, // armTransferTimer judges pauses
        spool: () => this.spoolMode(!!st.recorder),
        spoolFiles: this.o.spool ?? null,
      },
    });
    const guard = new FlowGuard({
      keys: gk,
      clock: this.flowClock(st),
      dtls: { session: pipeline.dtlsSession, feed: (d, dir, t, tag, owned) => pipeline.feedDtls(d, dir, t, tag, owned) },
      onRelease: (q) => this.onRelease(st, q),
      onBlock: (reason, assoc, budget) => this.block(st, reason, assoc, budget),
      onKeys: (kind, assoc, reason) =>
        this.keyEvent(st, kind === 'verified' ? 'keys_verified' : 'keys_invalid', assoc, reason ? { reason } : {}),
      // key-escrow.md §5.1: keys not required and none verified by the deadline: the flow
      // is relayed from here without inspection, and reported as such.
      onUninspected: (reason, assoc) => this.keyEvent(st, 'flow_uninspected', assoc, { reason }),
      // Issue 8: what went (or was kept) uninspected, counted by reason, at a bounded rate.
      onReport: (r) => this.uninspectedReport(st, r),
    });
    const meta: FlowMeta = {
      flowId: flow.id,
      proto: 'UDP',
      a: { ip: flow.client.address, port: flow.client.port },
      b: { ip: flow.peerAddress, port: 0 },
    };
    Object.assign(st, {
      flow,
      guard,
      pipeline,
      meta,
      policy,
      keys,
      verdict: 'forward',
      closed: false,
      recorder: null,
      droppedSsrcs: new Set(),
      keying: false,
      tagVerdicts: null,
      failure: undefined,
      pipelineErrors: 0,
      mem: this.memory.open(flow.allocationId),
      lastCapHit: -Infinity,
      userPeer: peerKey(flow.user, flow.peerAddress),
      transferTimer: null,
      scanJobs: null,
      tagScans: null,
      scanHold: null,
      alerts: 0,
      worst: 'forward',
    });
    pipeline.on((e) => this.onInspectEvent(st, e));
    flow.ctx = st;
    this.byPeer.set(peerKey(flow.allocationId, flow.peerAddress), st);
    let set = this.byUserPeer.get(st.userPeer);
    if (!set) this.byUserPeer.set(st.userPeer, (set = new Set()));
    set.add(st);
    if (!isPcpFlow(flow)) {
      let mine = this.byUser.get(flow.user);
      if (!mine) this.byUser.set(flow.user, (mine = new Set()));
      mine.add(st);
    }
    if (recordRules.length) this.startRecording(st, recordRules[0]!.id);
  }

  /** The clock a flow's guard uses: its timers (deadlines) run supervised (design.md). */
  private flowClock(st: FlowState): Clock {
    const c = this.clock;
    const sup = this.supervisor;
    const fail = () => this.failFlow(st.flow, st);
    return {
      now: () => c.now(),
      // A deadline releases or drops what the flow buffers: its memory account follows at once.
      setTimeout: (fn: () => void, ms: number): TimerHandle =>
        c.setTimeout(
          sup.guard('gateway.flow.timer', () => this.afterTimer(st, fn), fail),
          ms,
        ),
      setInterval: (fn: () => void, ms: number): TimerHandle => c.setInterval(sup.guard('gateway.flow.timer', fn, fail), ms),
    };
  }

  /**
   * What /metrics shows of the gateway (gatehouse_gateway_*): live flows, the bytes they
   * buffer (held datagrams, DTLS backlog, SCTP reassembly; README limits table) and blocks.
   */
  get stats(): { flows: number; bufferedBytes: number; blocked: Record<string, number>; scanHold: Record<string, number> } {
    return { flows: this.byPeer.size, bufferedBytes: this.memory.total, blocked: this.blockedBy, scanHold: this.scanCounts };
  }

  /**
   * What the dashboard shows of a flow's inspection (read only, never key material): key
   * status and deadline, bytes inspected, rule matches, recording.
   */
  flowStatus(flow: Flow):
    | {
        keys: { status: string; deadline: number | null; reason?: string };
        bytes: number;
        packets: number;
        alerts: number;
        verdict: VerdictAction;
        recording: string | null;
      }
    | undefined {
    const st = flow.ctx as FlowState | undefined;
    if (!st || !st.guard) return undefined;
    return {
      keys: st.guard.keyState,
      bytes: st.pipeline.counters.bytes,
      packets: st.pipeline.counters.packets,
      alerts: st.alerts,
      verdict: st.worst,
      recording: st.recorder?.recordingId ?? null,
    };
  }

  private afterTimer(st: FlowState, fn: () => void): void {
    fn();
    if (!st.closed) this.account(st);
  }

  /**
   * Issue 9: a data-channel transfer with no announced size ends at a pause; its `file`
   * event is judged then, when its records are already forwarded, so a verdict can only
   * block the rest of the flow. This timer is the only judge of pauses here (the pipeline's
   * expireOnPacket is off): a timer that fires more than TRANSFER_TIMER_LATE_MS late says
   * the event loop was busy, and Node runs timers before it polls the sockets, so the
   * streams' next datagrams may be waiting unread; it looks again shortly after they were
   * read (at most TRANSFER_TIMER_DEFERRALS times in a row) instead of cutting the file.
   */
  private armTransferTimer(st: FlowState, delay?: number, deferrals = 0): void {
    if (st.closed || st.transferTimer || st.pipeline.transfersInFlight === 0) return;
    const wait = delay ?? (this.o.transfers?.pauseMs ?? TRANSFER_DEFAULTS.pauseMs) + 1;
    const due = this.clock.now() + wait;
    st.transferTimer = this.flowClock(st).setTimeout(() => {
      st.transferTimer = null;
      if (st.closed) return;
      if (this.clock.now() - due > TRANSFER_TIMER_LATE_MS && deferrals < TRANSFER_TIMER_DEFERRALS) {
        this.armTransferTimer(st, TRANSFER_TIMER_RECHECK_MS, deferrals + 1);
        return;
      }
      st.verdict = 'forward';
      this.clearScanJobs(st);
      st.pipeline.expireTransfers(this.clock.now());
      this.check(st);
      if ((st.verdict as VerdictAction) === 'block') {
        this.block(st, 'policy', st.guard.association);
        return;
      }
      // Judged at a pause: its data is already forwarded; an infected verdict blocks the rest.
      this.afterDatagram(st, false, null);
      this.armTransferTimer(st);
    }, wait);
  }

  /** A bound function (TurnServer keeps a reference to it for its hot path). */
  readonly onPacket = (flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): boolean => {
    const st = flow.ctx as FlowState | undefined;
    // A flow whose state is gone (closed, or its set-up failed) relays nothing.
    if (st === undefined) return !this.failedSetup.has(flow);
    if (st.closed) return false;
    try {
      return this.packet(st, flow, dir, data, peerPort);
    } catch (err) {
      // The supervision wrapper's containment (design.md): this flow closes, the rest go on.
      this.supervisor.caught('gateway.flow.packet', err, () => this.failFlow(flow, st));
      return false;
    }
  };

  private packet(st: FlowState, flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): boolean {
    st.meta.b.port = peerPort;
    // Quotas count what is relayed; vital peers are counted but never cut (issue 5).
    if (this.o.quotas && this.o.quotas.account(flow.user, flow.groups, flow.peerAddress, data.length) === 'drop') return false;
    // RFC 7983 §7 / RFC 5761 §4: RTP (not RTCP); RFC 3711 §3.1: the SSRC is in the clear.
    if (st.droppedSsrcs.size && data.length >= 12 && demux(data) === 'rtp' && !isRtcp(data) && st.droppedSsrcs.has(data.readUInt32BE(8)))
      return false;
    // DTLS is parsed once, inside guard.packet() (the pipeline's session): the verdict of
    // what it decrypted is set by onInspectEvent meanwhile.
    st.verdict = 'forward';
    this.clearScanJobs(st);
    const v = st.guard.packet(data, dir, peerPort);
    this.check(st);
    let ok: boolean;
    if (st.closed) ok = false;
    else if ((st.verdict as VerdictAction) === 'block') {
      this.block(st, 'policy', st.guard.association);
      ok = false;
    } else if (v !== 'forward') ok = false;
    else if (st.guard.lastQueued)
      ok = true; // inspected, in order, when the flow's keys verify
    else ok = this.inspect(st, data, dir);
    // RFC 7983 §7 [20..63]: DTLS. A reliable sender retransmits a withheld DATA chunk under
    // its TSN in new records (RFC 9260 §6.3.3): withheld again, so `drop` keeps the message
    // from the peer; a datagram withheld by a `drop` verdict has its TSNs remembered.
    const b0 = data[0] ?? 0;
    if (b0 >= 20 && b0 <= 63 && !st.closed) {
      if (ok && st.pipeline.carriesWithheld) ok = false;
      else if (!ok && (st.verdict as VerdictAction) === 'drop') st.pipeline.markWithheld();
    }
    ok = this.afterDatagram(st, ok, { data, dir, peerPort });
    if (!st.closed) {
      this.account(st);
      this.armTransferTimer(st);
    }
    return ok;
  }

  onFlowClosed(flow: Flow): void {
    this.failedSetup.delete(flow);
    const st = flow.ctx as FlowState | undefined;
    if (!st) return;
    this.supervisor.run('gateway.flow.closed', () => this.dispose(st));
    flow.ctx = undefined;
  }

  /** Flows whose set-up threw: their packets are dropped until the server closes them. */
  private readonly failedSetup = new WeakSet<Flow>();

  /** Contains an exception of one flow: it is closed (never the process), and reported. */
  private failFlow(flow: Flow, st: FlowState | undefined): void {
    if (!st || !st.flow) {
      this.failedSetup.add(flow);
      flow.ctx = undefined;
      this.relay?.close(flow, 'internal_error');
      return;
    }
    if (st.closed) return;
    this.keyEvent(st, 'flow_closed', st.guard?.association, { reason: 'internal_error' });
    this.dispose(st);
    if (this.deferred) this.deferred.push({ flow, reason: 'internal_error' });
    else this.relay?.close(flow, 'internal_error');
  }

  /** Throws what the pipeline or policy caught for this flow (so the flow is closed). */
  private check(st: FlowState): void {
    if (st.failure !== undefined) {
      const f = st.failure;
      st.failure = undefined;
      throw f instanceof Error ? f : new Error(String(f));
    }
    const n = st.pipeline.counters.internalErrors;
    if (n !== st.pipelineErrors) {
      st.pipelineErrors = n;
      throw new Error('inspection pipeline internal error');
    }
  }

  /** Memory bounds (memory.ts): the flow's buffered bytes into its allocation's and the global sum. */
  private account(st: FlowState): void {
    const bytes = st.guard.bufferedBytes + st.pipeline.bufferedBytes + (st.scanHold ? st.scanHold.heldBytes + st.scanHold.fileBytes : 0);
    const over = this.memory.set(st.mem, bytes);
    if (!over) return;
    if (st.keys?.required) {
      // Fail closed: a required flow is not inspected partially.
      st.guard.blockFor('memory');
      return;
    }
    // Otherwise this flow gives back what it buffers (the one that crossed the bound: the
    // others were within it before this datagram), so the allocation and global sums stay
    // within their bounds: copies of forwarded datagrams first (only their later inspection
    // is lost; it copies no more until keys come, counted as uninspected `budget`), then the
    // oldest held datagrams, then the DTLS backlog and SCTP reassembly.
    const limit = this.memory.limit(over);
    const now = this.clock.now();
    const buffered = () =>
      st.guard.bufferedBytes + st.pipeline.bufferedBytes + (st.scanHold ? st.scanHold.heldBytes + st.scanHold.fileBytes : 0);
    let shed = st.guard.stopCopies() > 0;
    while (this.memory.set(st.mem, buffered()) && st.guard.shedOldest() > 0) shed = true;
    const report = now - st.lastCapHit >= CAP_HIT_INTERVAL_MS;
    if (this.memory.set(st.mem, buffered())) {
      st.pipeline.shedBuffers(now, `gateway.${over}`, limit, report); // reports cap.hit itself
      if (report) st.lastCapHit = now;
    } else if (shed && report) {
      st.lastCapHit = now;
      this.emit(this.decorate(st, toEve({ type: 'cap.hit', what: `gateway.${over}`, limit, time: now }, st.meta), undefined));
    }
    this.memory.set(st.mem, buffered());
  }

  // ------------------------------------------------------------------ EscrowHost

  keysPolicy(): EscrowKeysPolicy | null {
    return this.o.policy().keys;
  }

  findFlow(allocationId: string, peerIp: string): Flow | undefined {
    const st = this.byPeer.get(peerKey(allocationId, peerIp));
    return st && !st.closed && st.flow.open ? st.flow : undefined;
  }

  applyKeySet(flow: Flow, ks: KeySet): KeyStatus {
    const st = flow.ctx as FlowState | undefined;
    if (!st || st.closed) return 'pending';
    this.keyEvent(st, 'keys_received', associationId(ks.clientRandom), { cipher_suite: ks.cipherSuite, epoch: ks.epoch });
    // Records held in the session's backlog are decrypted now; their verdicts are kept by
    // datagram tag and applied when the guard releases those datagrams (onRelease).
    st.keying = true;
    st.verdict = 'forward';
    this.clearScanJobs(st);
    try {
      const r = this.supervisor.run(
        'gateway.flow.keys',
        () => {
          const out = st.guard.addKeySet(ks);
          this.check(st);
          return out;
        },
        () => this.failFlow(flow, st),
      );
      if (!st.closed && (st.verdict as VerdictAction) === 'block') this.block(st, 'policy', st.guard.association);
      // Files completed by records whose datagrams were forwarded before the keys came (or
      // by no datagram still held): scanned, an infected verdict blocks the rest.
      if (!st.closed) this.afterDatagram(st, false, null);
      if (!st.closed) {
        this.account(st);
        this.armTransferTimer(st);
      }
      return r ?? 'pending';
    } finally {
      st.keying = false;
      st.tagVerdicts = null;
      if (st.tagScans) for (const jobs of st.tagScans.values()) this.dropScanJobs(jobs);
      st.tagScans = null;
    }
  }

  applyDecline(flow: Flow, reason: string): void {
    const st = flow.ctx as FlowState | undefined;
    if (!st || st.closed) return;
    this.keyEvent(st, 'keys_declined', st.guard.association, { reason });
    this.supervisor.run(
      'gateway.flow.decline',
      () => st.guard.decline(),
      () => this.failFlow(flow, st),
    );
  }

  keyRequested(flow: Flow, deadline: number, flags: number): void {
    const st = flow.ctx as FlowState | undefined;
    if (!st) return;
    this.keyEvent(st, 'key_request', st.guard.association, { deadline, flags });
  }

  writeKeysRejected(ctx: TurnRequestContext, reason: string): void {
    this.emit({
      timestamp: eveTimestamp(this.clock.now()),
      event_type: 'keys_invalid',
      proto: 'UDP',
      ...(ctx.peers[0] ? { dest_ip: ctx.peers[0].address, dest_port: ctx.peers[0].port } : {}),
      keys: { what: 'write_keys', reason },
      gatehouse: { user: ctx.user, allocation: ctx.allocationId },
    });
  }

  // ------------------------------------------------------------------ KeyEscrowHost (key-escrow.md §6)

  userFlowsWithAssociation(user: string, clientRandomHex: string): Flow[] {
    const out: Flow[] = [];
    for (const st of this.byHandshake.get(clientRandomHex) ?? []) {
      if (!st.closed && st.flow.open && st.flow.user === user && !isPcpFlow(st.flow)) out.push(st.flow);
    }
    return out;
  }

  pendingAssociations(user: string, max: number): KeyPending[] {
    const out: KeyPending[] = [];
    for (const st of this.byUser.get(user) ?? []) {
      if (out.length >= max) break;
      const keys = st.keys ?? this.o.policy().keys;
      if (st.closed || !st.flow.open || !keys || !(keys.media || keys.data)) continue;
      const session = st.pipeline.dtlsSession;
      const newest = session.newestAssociation();
      if (newest === undefined) continue;
      const a = session.associations().find((x) => x.id === newest);
      if (!a || !a.serverRandom || a.cipherSuite === undefined) continue; // §6.5: once its ServerHello crossed
      const v13 = a.version === 'DTLS1.3';
      const recordKeys = a.keyStatus === 'verified' || a.keyStatus === 'pending';
      // RFC 5764 §4.1.1 / RFC 8446 §4.3.1: DTLS 1.3 names the profile in EncryptedExtensions.
      const srtpUnknown = v13 && a.srtpOffered && a.srtpProfile === undefined;
      const media = keys.media && (a.srtpProfile !== undefined || srtpUnknown);
      // Listed while record keys are missing, or SRTP keys are missing and can be made.
      if (recordKeys && (!media || a.hasSrtpKeys || srtpUnknown)) continue;
      out.push({
        clientRandom: Buffer.from(a.id, 'hex'),
        serverRandom: Buffer.from(a.serverRandom, 'hex'),
        cipherSuite: a.cipherSuite,
        srtpProfile: a.srtpProfile ?? 0,
        version: v13 ? 3 : 2,
        flags:
          (a.encryptThenMac ? KP_FLAG_ETM : 0) |
          (media ? KP_FLAG_MEDIA : 0) |
          (srtpUnknown ? KP_FLAG_SRTP_UNKNOWN : 0) |
          (recordKeys ? KP_FLAG_RECORD_KEYS_HELD : 0),
        epoch: a.epoch,
      });
    }
    return out;
  }

  keyEscrowRejected(user: string, reason: string): void {
    this.emit({
      timestamp: eveTimestamp(this.clock.now()),
      event_type: 'keys_invalid',
      proto: 'UDP',
      keys: { what: 'key_escrow', reason },
      gatehouse: { user },
    });
  }

  /** A ServerHello crossed the flow: index it (§6.4), and apply what its user sent before, once this datagram is done. */
  private handshakeSeen(st: FlowState, id: string): void {
    if (isPcpFlow(st.flow)) return;
    let ids = this.handshakesOf.get(st);
    if (!ids) this.handshakesOf.set(st, (ids = []));
    if (!ids.includes(id)) {
      // Bounded like the flow's DTLS associations (DtlsSession keeps 8): the oldest goes.
      if (ids.length >= MAX_HANDSHAKES_INDEXED) {
        const old = ids.shift()!;
        const olds = this.byHandshake.get(old);
        olds?.delete(st);
        if (olds && olds.size === 0) this.byHandshake.delete(old);
      }
      ids.push(id);
      let set = this.byHandshake.get(id);
      if (!set) this.byHandshake.set(id, (set = new Set()));
      set.add(st);
    }
    if (!this.keyEscrow.held.sizeOf(st.flow.user)) return;
    const flow = st.flow;
    queueMicrotask(() =>
      this.supervisor.run(
        'gateway.key_escrow.held',
        () => this.keyEscrow.onHandshake(flow, id),
        () => this.failFlow(flow, st),
      ),
    );
  }

  private unindexKeyEscrow(st: FlowState): void {
    const mine = this.byUser.get(st.flow.user);
    if (mine) {
      mine.delete(st);
      if (!mine.size) this.byUser.delete(st.flow.user);
    }
    for (const id of this.handshakesOf.get(st) ?? []) {
      const set = this.byHandshake.get(id);
      if (!set) continue;
      set.delete(st);
      if (!set.size) this.byHandshake.delete(id);
    }
    this.handshakesOf.delete(st);
  }

  // ------------------------------------------------------------------ internals

  private onRelease(st: FlowState, q: QueuedPacket[]): void {
    for (const p of q) {
      if (st.closed) return;
      st.verdict = (p.tag >= 0 && st.tagVerdicts?.get(p.tag)) || 'forward';
      const outer = st.scanJobs;
      st.scanJobs = (p.tag >= 0 && st.tagScans?.get(p.tag)) || null;
      if (st.scanJobs) st.tagScans!.delete(p.tag);
      let ok = this.inspect(st, p.data, p.dir);
      // A held datagram that completes a scanned file (or comes while scans run) stays held
      // here; one that was forwarded already (a copy) can only lead to a block.
      ok = this.afterDatagram(st, ok && p.held && !p.withhold, p.held && !p.withhold ? p : null) && ok;
      st.scanJobs = outer;
      if (ok && p.held && !p.withhold && this.relay && !st.closed) {
        try {
          this.relay.send(st.flow, p.dir, p.data, p.peerPort);
        } catch (err) {
          this.log.warn({ err: (err as Error).message }, 'releasing a held packet failed');
        }
      }
    }
  }

  /**
   * Feeds the pipeline (media; DTLS was parsed on arrival and is only counted here); policy
   * judges what it saw, on top of st.verdict. False: the datagram must not go on.
   */
  private inspect(st: FlowState, data: Buffer, dir: FlowDirection): boolean {
    st.pipeline.feed(data, dir === 'c2p' ? 'c2s' : 's2c', this.clock.now());
    this.check(st);
    // SRTP/SRTCP goes on only when the flow's keys authenticated it (or media keys are not wanted).
    if (st.pipeline.lastMediaAuthenticated === false && !st.guard.mediaUnauthenticated(data.length)) return false;
    const v = st.verdict as VerdictAction; // set by onInspectEvent during feed()
    if (v === 'block') {
      this.block(st, 'policy', st.guard.association);
      return false;
    }
    return v !== 'drop';
  }

  private onInspectEvent(st: FlowState, e: InspectEvent): void {
    if (st.closed) return;
    try {
      this.judge(st, e);
    } catch (err) {
      // Caught inside the pipeline otherwise: kept, and thrown by check() so the flow closes.
      st.failure ??= err;
    }
  }

  private judge(st: FlowState, e: InspectEvent): void {
    st.meta.dtlsClientIsA = st.pipeline.dtlsClientIsA;
    if (e.type === 'keys.verified' || e.type === 'keys.invalid') st.guard.onSessionEvent(e);
    if (e.type === 'dtls.handshake' && e.association) this.handshakeSeen(st, e.association);
    if (st.recorder) {
      try {
        st.recorder.onEvent(e);
      } catch (err) {
        this.log.warn({ err: (err as Error).message, flow: st.flow.id }, 'recording failed; recording stopped');
        this.stopRecording(st);
      }
    }
    if (e.type === 'rtp.packet' || e.type === 'keys.verified' || e.type === 'keys.invalid') return; // the guard reports keys
    const subject = subjectOf(e, st.pipeline.dtlsClientIsA);
    if (e.type !== 'appdata') this.emit(this.decorate(st, toEve(e, st.meta), e.association));
    if (!subject) return;
    // The rule set in force now: a reload applies to live flows (issue 5). An exception
    // here closes the flow (fail closed: it is not relayed unjudged).
    const verdict = this.o.policy().evaluate(st.policyCtx, subject);
    for (const m of verdict.matches) {
      st.alerts++;
      if (ACTION_RANK[m.action] > ACTION_RANK[st.worst]) st.worst = m.action;
      const ev = toEve(e, st.meta);
      ev.event_type = 'alert';
      ev.alert = {
        action: m.action === 'block' || m.action === 'drop' ? 'blocked' : 'allowed',
        signature_id: m.rule.id,
        signature: m.rule.description ?? m.rule.id,
        severity: m.rule.severity,
      };
      this.emit(this.decorate(st, ev, e.association));
    }
    if (ACTION_RANK[verdict.action] > ACTION_RANK[st.verdict]) st.verdict = verdict.action;
    if (st.keying && ACTION_RANK[verdict.action] > RANK_FORWARD) {
      // A record decrypted from the backlog while keys are applied: remember it for its datagram.
      const tag = st.pipeline.dtlsSession.currentTag;
      if (tag >= 0) {
        st.tagVerdicts ??= new Map();
        const prev = st.tagVerdicts.get(tag);
        if (!prev || ACTION_RANK[verdict.action] > ACTION_RANK[prev]) st.tagVerdicts.set(tag, verdict.action);
      }
    }
    if (verdict.scans && e.type === 'file') this.addScanJobs(st, verdict.scans, e);
    // drop on media withholds that stream (one SSRC) from here on, not just this packet.
    if (verdict.action === 'drop' && e.type === 'rtp.stream') st.droppedSsrcs.add(e.ssrc);
    // A content rule with action `record` starts recording the flow from here on.
    if (verdict.action === 'record' && !st.recorder && this.o.recordings) {
      const m = verdict.matches.find((x) => x.action === 'record');
      if (m) this.startRecording(st, m.rule.id);
    }
  }

  // ------------------------------------------------------------------ malware scanning (issue 9)

  /** Where a starting transfer keeps its content (TransferOptions.spool). */
  private spoolMode(recording: boolean): SpoolMode {
    const p = this.o.policy();
    let content = this.contentRules.get(p);
    if (content === undefined) {
      // contains / contains_text / regex judge the event's `data`: the whole file in memory.
      content = p.rules.some(
        (r) => r.when.channel !== 'media' && (r.when.contains.length > 0 || r.when.contains_text.length > 0 || r.when.regex.length > 0),
      );
      this.contentRules.set(p, content);
    }
    if (content) return true;
    return recording || p.needsFileContent ? 'disk' : false;
  }

  /** Releases the spool files of scan jobs that will not run (flow closed, datagram dropped). */
  private dropScanJobs(jobs: ScanJob[] | null | undefined): void {
    if (!jobs) return;
    for (const j of jobs) {
      const r = j.release;
      j.release = null;
      r?.();
    }
  }

  private clearScanJobs(st: FlowState): void {
    const jobs = st.scanJobs;
    st.scanJobs = null;
    this.dropScanJobs(jobs);
  }

  /** `scan:` rules matched a file: one job per scanner (several rules may ask the same one). */
  private addScanJobs(st: FlowState, scans: ScanMatch[], e: Extract<InspectEvent, { type: 'file' }>): void {
    const by = new Map<ScannerKind, ScanMatch[]>();
    for (const m of scans) {
      const l = by.get(m.scanner);
      if (l) l.push(m);
      else by.set(m.scanner, [m]);
    }
    // A spooled file is removed once the tracker's call returns: each job holds it until its scan read it.
    const sp = spoolOf(e);
    const jobs = [...by].map(([scanner, matches]): ScanJob => ({ scanner, matches, event: e, release: sp ? sp.hold() : null }));
    if (st.keying) {
      // A record decrypted from the backlog: its datagram is released (or not) by onRelease.
      const tag = st.pipeline.dtlsSession.currentTag;
      if (tag >= 0) {
        st.tagScans ??= new Map();
        st.tagScans.set(tag, [...(st.tagScans.get(tag) ?? []), ...jobs]);
        return;
      }
    }
    (st.scanJobs ??= []).push(...jobs);
  }

  /**
   * After a datagram was inspected: `forward` is what policy decided so far. A datagram that
   * completes a file to scan is held (not forwarded) until every scan of the flow answered;
   * while scans run, the flow's later DTLS datagrams are held too (a retransmission of the
   * final chunk must not pass before the verdict). No datagram (a pause, a forwarded copy):
   * the scans still run and an infected verdict blocks the rest of the flow.
   */
  private afterDatagram(st: FlowState, forward: boolean, pkt: { data: Buffer; dir: FlowDirection; peerPort: number } | null): boolean {
    const jobs = st.scanJobs;
    st.scanJobs = null;
    if (st.closed) {
      this.dropScanJobs(jobs);
      return false;
    }
    if (jobs?.length) this.startScans(st, jobs);
    else if (!st.scanHold || !pkt || demux(pkt.data) !== 'dtls') return forward;
    if (!forward || !pkt) return forward;
    this.holdDatagram(st, st.scanHold!, pkt);
    return false;
  }

  private holdDatagram(st: FlowState, h: ScanHold, pkt: { data: Buffer; dir: FlowDirection; peerPort: number }): void {
    if (h.held.length >= MAX_SCAN_HELD_DATAGRAMS || h.heldBytes + pkt.data.length > MAX_SCAN_HELD_BYTES) {
      this.scanCounts.overflow++; // withheld without a copy: never forwarded unjudged
      return;
    }
    h.held.push({ data: Buffer.from(pkt.data), dir: pkt.dir, peerPort: pkt.peerPort });
    h.heldBytes += pkt.data.length;
    this.scanCounts.held++;
    this.account(st);
  }

  private startScans(st: FlowState, jobs: ScanJob[]): void {
    const h = (st.scanHold ??= { pending: 0, held: [], heldBytes: 0, fileBytes: 0, drop: false });
    for (const job of jobs) {
      h.pending++;
      this.scanCounts.files++;
      const fail = () => this.failFlow(st.flow, st);
      let run: Promise<GuardedResult>;
      // The copy waiting for the verdict (the event's `data`: the whole file when kept in
      // memory, its 64 KiB head when spooled to disk) counts in the flow's memory account,
      // and in MAX_SCAN_COPY_BYTES for all flows, until the scanner answers.
      const copy = job.event.data.length;
      let close: (() => void) | null = null;
      let counted = false;
      try {
        const r = this.scanFile(job, h.pending > MAX_SCANS_PER_FLOW, copy);
        run = r.run;
        close = r.close;
        counted = r.counted;
      } catch (err) {
        run = Promise.reject(err);
      }
      if (counted) {
        h.fileBytes += copy;
        this.scanCopyBytes += copy;
      }
      const done = () => {
        if (counted) {
          h.fileBytes -= copy;
          this.scanCopyBytes -= copy;
          counted = false;
        }
        close?.(); // an early answer leaves the rest of a spool file unread
        this.dropScanJobs([job]);
      };
      // Inside the supervisor's reach: a rejection (or a throw in the verdict) closes this flow.
      run.then(
        (r) => {
          done();
          this.supervisor.run('gateway.flow.scan', () => this.scanDone(st, h, job, r), fail);
        },
        (err) => {
          done();
          this.supervisor.caught('gateway.flow.scan', err, fail);
        },
      );
    }
    this.account(st);
  }

  /** Bytes of file copies waiting for a scanner's verdict, all flows (bound MAX_SCAN_COPY_BYTES). */
  get scanCopies(): number {
    return this.scanCopyBytes;
  }

  /** A scan of the job's file: `counted` when its copy is kept until the answer; `close` ends a spool read. */
  private scanFile(
    job: ScanJob,
    overBound: boolean,
    copy: number,
  ): { run: Promise<GuardedResult>; close: (() => void) | null; counted: boolean } {
    const sc = this.o.scanners?.[job.scanner];
    const failOpen = this.o.scanners?.failOpen ?? false;
    const unscanned = (error: GuardedResult['error'], reason: string) => {
      this.scanCounts.rejected++;
      const run = Promise.resolve<GuardedResult>(
        failOpen
          ? { verdict: 'clean', block: false, error, reason: `${reason} (fail_open)`, scanner: job.scanner }
          : { verdict: 'unscanned', block: true, error, reason, scanner: job.scanner },
      );
      return { run, close: null, counted: false };
    };
    if (!sc) return unscanned('unreachable', `scan.${job.scanner} is not configured`);
    if (overBound) return unscanned('queue_full', `more than ${MAX_SCANS_PER_FLOW} files of this flow wait for a scan`);
    const maxCopies = this.o.scanners?.maxCopyBytes ?? MAX_SCAN_COPY_BYTES;
    if (this.scanCopyBytes + copy > maxCopies) return unscanned('queue_full', `file copies waiting for a scan over ${maxCopies} bytes`);
    const e = job.event;
    const meta = { ...(e.name !== undefined ? { name: e.name } : {}), size: e.size };
    const sp = spoolOf(e);
    if (sp && job.release) {
      // Spooled to disk (issue 9): the scanner reads the file in 64 KiB pieces, never all of
      // it at once; opened when the scanner starts reading (not while it waits for a slot).
      let stream: ReturnType<typeof createReadStream> | null = null;
      let closed = false;
      const input: AsyncIterable<Buffer> = {
        [Symbol.asyncIterator]: () => {
          if (closed) throw new Error('scan input closed');
          stream = createReadStream(sp.path, { highWaterMark: 64 * 1024 });
          stream.on('error', () => {}); // the iteration rejects with it: the scan errs (fail_open)
          return stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
        },
      };
      const close = () => {
        closed = true;
        (stream as ReturnType<typeof createReadStream> | null)?.destroy();
      };
      return { run: sc.scan(input, { ...meta, size: sp.size }), close, counted: true };
    }
    // Not kept (over memory, a spool write that failed): unscanned, scan.fail_open decides.
    if (e.headOnly) return unscanned('protocol', 'the file content was not kept');
    return { run: sc.scan(e.data, meta), close: null, counted: true };
  }

  private scanDone(st: FlowState, h: ScanHold, job: ScanJob, r: GuardedResult): void {
    if (st.closed || st.scanHold !== h) return;
    const scan = {
      scanner: r.scanner,
      verdict: r.verdict,
      ...(r.virus ? { virus: r.virus } : {}),
      ...(r.error ? { error: r.error } : {}),
      ...(r.reason ? { reason: r.reason } : {}),
    };
    // What was scanned and how it came out (names and hashes, never the content).
    const sev = toEve(job.event, st.meta);
    sev.event_type = 'scan';
    sev.gatehouse = { ...(sev.gatehouse ?? {}), scan };
    this.emit(this.decorate(st, sev, job.event.association));
    if (r.block) {
      // Infected, or unscanned with fail_open false: the rules match.
      const what = r.verdict === 'infected' ? (r.virus ?? 'infected') : `unscanned (${r.error ?? 'error'})`;
      let best: VerdictAction = 'forward';
      for (const m of job.matches) {
        const ev = toEve(job.event, st.meta);
        ev.event_type = 'alert';
        ev.alert = {
          action: m.action === 'block' || m.action === 'drop' ? 'blocked' : 'allowed',
          signature_id: m.rule.id,
          signature: `${m.rule.description ?? m.rule.id}: ${what}`,
          severity: m.rule.severity,
        };
        ev.gatehouse = { ...(ev.gatehouse ?? {}), ...(r.virus ? { virus: r.virus } : {}), scan };
        this.emit(this.decorate(st, ev, job.event.association));
        if (ACTION_RANK[m.action] > ACTION_RANK[best]) best = m.action;
      }
      if (best === 'block') {
        this.block(st, 'policy', job.event.association ?? st.guard.association); // the held datagrams go with the flow
        return;
      }
      if (best === 'drop') h.drop = true;
      if (best === 'record' && !st.recorder && this.o.recordings) {
        const m = job.matches.find((x) => x.action === 'record');
        if (m) this.startRecording(st, m.rule.id);
      }
    }
    if (--h.pending > 0) return;
    st.scanHold = null;
    const held = h.held;
    h.held = [];
    h.heldBytes = 0;
    if (h.drop) this.scanCounts.withheld += held.length;
    else {
      for (const p of held) {
        if (st.closed || !this.relay) break;
        try {
          this.relay.send(st.flow, p.dir, p.data, p.peerPort);
          this.scanCounts.released++;
        } catch (err) {
          this.log.warn({ err: (err as Error).message }, 'releasing a datagram held for a scan failed');
        }
      }
    }
    if (!st.closed) this.account(st);
  }

  private startRecording(st: FlowState, ruleId: string): void {
    const f = st.flow;
    try {
      st.recorder = this.o.recordings!.open({
        flowId: f.id,
        client: { ip: f.client.address, port: f.client.port },
        // The flow's own endpoint object: its port is set by the first datagram (a flow
        // recorded from its creation has none yet), so the recorder's pcaps carry it.
        peer: st.meta.b,
        dtlsClientIsClient: () => st.pipeline.dtlsClientIsA,
        user: f.user,
        ruleId,
      });
    } catch (err) {
      this.log.error({ err: (err as Error).message, flow: f.id }, 'cannot start recording');
      return;
    }
    this.keyEvent(st, 'recording', st.guard.association, { recording: { action: 'started', rule: ruleId, id: st.recorder.recordingId } });
  }

  private stopRecording(st: FlowState): void {
    const r = st.recorder;
    if (!r) return;
    st.recorder = null;
    let sealed: RecordingSealed | null = null;
    try {
      sealed = r.close();
    } catch (err) {
      this.log.error({ err: (err as Error).message, flow: st.flow.id }, 'sealing a recording failed');
    }
    this.keyEvent(st, 'recording', st.guard.association, {
      recording: { action: 'sealed', id: sealed?.id ?? r.recordingId, seq: sealed?.seq, manifest_sha256: sealed?.manifestHash },
    });
  }

  private block(st: FlowState, reason: BlockReason | 'policy', association: string | undefined, budget?: BudgetName, via?: number): void {
    if (st.closed) return;
    const blockFor = st.keys?.block_for ?? 300_000;
    // §5.4: the same user and peer address, from any allocation of that user.
    this.blockList.block(st.flow.user, st.flow.peerAddress, blockFor);
    this.keyEvent(st, 'flow_blocked', association, {
      reason,
      ...(budget ? { budget } : {}),
      ...(via !== undefined ? { blocked_with_flow: via } : {}),
    });
    this.log.info({ flow: st.flow.id, allocation: st.flow.allocationId, reason, ...(budget ? { budget } : {}) }, 'flow blocked');
    const key = budget ? `${reason}:${budget}` : reason;
    this.blockedBy[key] = (this.blockedBy[key] ?? 0) + 1;
    const flow = st.flow;
    this.dispose(st);
    // §5.4: stop relaying both ways and remove the permission and channels.
    if (this.deferred) this.deferred.push({ flow, reason: `blocked_${reason}` });
    else this.relay?.close(flow, `blocked_${reason}`);
    // The block holds for the user and peer across all that user's allocations: their live
    // flows to that peer go too.
    if (via === undefined) {
      for (const other of [...(this.byUserPeer.get(st.userPeer) ?? [])]) this.block(other, reason, undefined, budget, st.flow.id);
    }
  }

  holdCloses(): void {
    if (this.deferred) return;
    this.deferred = [];
    // The server handles a request synchronously; should commit() never come, flush anyway.
    queueMicrotask(() => this.flushCloses());
  }

  flushCloses(): void {
    const d = this.deferred;
    this.deferred = null;
    for (const x of d ?? []) this.relay?.close(x.flow, x.reason);
  }

  private dispose(st: FlowState): void {
    if (st.closed) return;
    st.transferTimer?.cancel();
    st.transferTimer = null;
    st.scanHold = null; // held datagrams are never sent; memory.close below releases their account
    // The guard's final uninspected report goes out while the flow is still open.
    try {
      st.guard.close();
    } finally {
      st.closed = true;
      try {
        this.stopRecording(st);
      } finally {
        st.pipeline.close(); // wipes the flow's one copy of its key sets (§5.5)
        // Scans that will not start give their spool files back (transfers ended by the close included).
        this.clearScanJobs(st);
        if (st.tagScans) for (const jobs of st.tagScans.values()) this.dropScanJobs(jobs);
        st.tagScans = null;
        this.memory.close(st.mem); // releases everything it buffered
        const k = peerKey(st.flow.allocationId, st.flow.peerAddress);
        if (this.byPeer.get(k) === st) this.byPeer.delete(k);
        const set = this.byUserPeer.get(st.userPeer);
        if (set) {
          set.delete(st);
          if (!set.size) this.byUserPeer.delete(st.userPeer);
        }
        this.unindexKeyEscrow(st);
      }
    }
  }

  /** flow_uninspected with the counts (issue 8) in gatehouse.uninspected. */
  private uninspectedReport(st: FlowState, r: UninspectedReport): void {
    // reason: why the flow is uninspected (keys_missing / rekey_missing once its deadline
    // passed without keys), else `uninspected_traffic` (traffic nothing can inspect).
    const { keys, ...counts } = r;
    this.keyEvent(st, 'flow_uninspected', st.guard?.association, { reason: keys ?? 'uninspected_traffic', uninspected: counts });
  }

  private keyEvent(st: FlowState, type: string, association: string | undefined, extra: Record<string, unknown>): void {
    const f = st.flow;
    const e: EveEvent = {
      timestamp: eveTimestamp(this.clock.now()),
      event_type: type,
      flow_id: f.id,
      src_ip: f.client.address,
      src_port: f.client.port,
      dest_ip: f.peerAddress,
      proto: 'UDP',
      gatehouse: Object.assign(assignFlowIdentity({}, f, association), extra),
    };
    if (st.meta.b.port) e.dest_port = st.meta.b.port;
    this.emit(e);
  }

  /**
   * The flow's identity in e.gatehouse, after what the event carried (assignFlowIdentity).
   * e and its gatehouse object are the caller's own (made by toEve for this one event), so
   * they are completed in place.
   */
  private decorate(st: FlowState, e: EveEvent, association: string | undefined): EveEvent {
    e.gatehouse = assignFlowIdentity(e.gatehouse ?? {}, st.flow, association);
    return e;
  }

  private emit(e: EveEvent): void {
    try {
      this.o.events?.emit(e);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'event sink failed');
    }
  }
}

/**
 * What policy knows of a flow: user, groups, peer, and for core participants (core.md §8
 * TURN REST credentials) guest and conference (contract.md rule conditions).
 */
export function policyContext(f: Flow): FlowContext {
  return {
    user: f.user,
    groups: f.groups,
    peerIp: f.peerAddress,
    ...(f.guest ? { guest: true } : {}),
    ...(f.conference !== undefined ? { conference: f.conference } : {}),
    ...(f.room !== undefined ? { room: f.room } : {}),
    ...(f.org !== undefined ? { org: f.org } : {}),
  };
}

/**
 * A flow's identity assigned onto `g` (every inspected message's event passes here: plain
 * assignments, no spreads), in the event format's order: user, groups, allocation or
 * mapping (contract.md: PCP flows carry gatehouse.mapping where TURN flows carry
 * gatehouse.allocation), the core fields (turn/events.ts coreRef), association.
 */
function assignFlowIdentity(g: Record<string, unknown>, f: Flow, association: string | undefined): Record<string, unknown> {
  g.user = f.user;
  if (f.groups.length) g.groups = [...f.groups];
  if (isPcpFlow(f)) g.mapping = f.allocationId;
  else g.allocation = f.allocationId;
  assignCoreRef(g, f as CoreIdentity);
  if (association) g.association = association;
  return g;
}

function peerKey(allocationId: string, peerIp: string): string {
  return `${allocationId}|${peerIp}`;
}

function subjectOf(e: InspectEvent, clientIsA: boolean | undefined): Subject | null {
  // Side A of the pipeline is the TURN client; event directions are DTLS roles (events.ts).
  const fromA = (e.dir ?? 'c2s') === 'c2s' ? clientIsA !== false : clientIsA === false;
  return policySubject(e, fromA ? 'to_peer' : 'from_peer');
}

/**
 * A FlowRelay over a TurnServer: released packets go out through TurnServer.inject(),
 * which does not call onPacket again.
 */
function turnRelay(server: RelayServer): FlowRelay {
  return {
    close: (flow, reason) => server.closeFlow(flow, reason),
    send: (flow, dir, data, peerPort) => server.inject(flow, dir, data, peerPort),
  };
}

/** What attach() needs of a TurnServer. */
export interface RelayServer {
  closeFlow(flow: Flow, reason?: string): void;
  inject(flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): void;
}
