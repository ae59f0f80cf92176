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
import { systemClock, type Clock } from '../util/clock.js';
import { silentLogger, type Logger } from '../util/log.js';
import { eveTimestamp, type EventSink, type EveEvent } from '../events/eve.js';
import type { GatewayIdentity } from '../store/identity.js';
import type { PolicyEngine, Subject, VerdictAction } from '../policy/engine.js';
import { ACTION_RANK } from '../policy/engine.js';
import type { Flow, FlowDirection, FlowHooks, TurnRequestContext } from '../turn/flow.js';
import { FlowBlockList } from './block-list.js';
import { TurnEscrowExtension, type EscrowHost, type EscrowKeysPolicy } from './escrow.js';
import { FlowGuard, type BlockReason, type GuardKeysPolicy, type QueuedPacket } from './flow-guard.js';
import { FlowPipeline } from '../inspect/pipeline.js';
import { toEve, type FlowMeta } from '../inspect/eve-format.js';
import { associationId, type KeySet } from '../wire/keyset.js';
import type { KeyStatus } from '../inspect/dtls-session.js';
import type { InspectEvent } from '../inspect/events.js';
import { policySubject } from '../policy/subject.js';
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
}

/** What the inspector needs of a FlowRecorder. */
export interface FlowRecorderLike {
  onEvent(e: InspectEvent): void;
  close(): RecordingSealed | null;
  readonly recordingId?: string;
}

interface FlowState {
  flow: Flow;
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
}

/** No `keys` section: keys are welcome but not asked for; traffic passes. */
const NO_KEYS: GuardKeysPolicy = { required: false, deadline: 10_000, unverified: 'pass', media: true, data: true };

export class GatewayInspector implements FlowHooks, EscrowHost {
  readonly extension: TurnEscrowExtension;
  readonly blockList: FlowBlockList;
  private readonly o: GatewayInspectorOptions;
  private readonly clock: Clock;
  private readonly log: Logger;
  private relay: FlowRelay | null = null;
  private readonly byPeer = new Map<string, FlowState>();
  /** Flows to tear down once the request being handled has taken effect (escrow.ts). */
  private deferred: { flow: Flow; reason: string }[] | null = null;

  constructor(opts: GatewayInspectorOptions) {
    this.o = opts;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    this.blockList = new FlowBlockList(this.clock);
    this.extension = new TurnEscrowExtension(this, opts.identity);
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

  permitPeer(info: { allocationId: string }, peerAddress: string): boolean {
    // key-escrow.md §5.4: a blocked flow is refused for keys.block_for (403 Forbidden).
    return !this.blockList.isBlocked(info.allocationId, peerAddress);
  }

  onFlowCreated(flow: Flow): void {
    const policy = this.o.policy();
    const keys = policy.keys;
    const gk: GuardKeysPolicy = keys
      ? { required: keys.required, deadline: keys.deadline, unverified: keys.unverified, media: keys.media, data: keys.data }
      : NO_KEYS;
    const st = {} as FlowState;
    const guard = new FlowGuard({
      keys: gk,
      clock: this.clock,
      onRelease: (q) => this.onRelease(st, q),
      onBlock: (reason, assoc) => this.block(st, reason, assoc),
      onKeys: (kind, assoc, reason) =>
        this.keyEvent(st, kind === 'verified' ? 'keys_verified' : 'keys_invalid', assoc, reason ? { reason } : {}),
      // key-escrow.md §5.1: keys not required and none verified by the deadline: the flow
      // is relayed from here without inspection, and reported as such.
      onUninspected: (reason, assoc) => this.keyEvent(st, 'flow_uninspected', assoc, { reason }),
    });
    const flowCtx = { user: flow.user, groups: flow.groups, peerIp: flow.peerAddress };
    const recordRules = this.o.recordings ? policy.recordsFlow(flowCtx) : [];
    // rtp.packet events (decrypted payloads) are produced only for recorded flows.
    const pipeline = new FlowPipeline({ keys: { keySetsFor: (a) => guard.keySetsFor(a) }, rtpPackets: recordRules.length > 0 });
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
    });
    if (recordRules.length) this.startRecording(st, recordRules[0]!.id);
    pipeline.on((e) => this.onInspectEvent(st, e));
    flow.ctx = st;
    this.byPeer.set(peerKey(flow.allocationId, flow.peerAddress), st);
  }

  /** A bound function (TurnServer keeps a reference to it for its hot path). */
  readonly onPacket = (flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): boolean => {
    const st = flow.ctx as FlowState | undefined;
    if (st === undefined || st.closed) return true;
    st.meta.b.port = peerPort;
    // Quotas count what is relayed; vital peers are counted but never cut (issue 5).
    if (this.o.quotas && this.o.quotas.account(flow.user, flow.groups, flow.peerAddress, data.length) === 'drop') return false;
    // RFC 7983 §7 / RFC 5761 §4: RTP (not RTCP); RFC 3711 §3.1: the SSRC is in the clear.
    if (st.droppedSsrcs.size && data.length >= 12 && demux(data) === 'rtp' && !isRtcp(data) && st.droppedSsrcs.has(data.readUInt32BE(8)))
      return false;
    const v = st.guard.packet(data, dir, peerPort);
    if (v !== 'forward') return false;
    if (st.guard.lastQueued) return true; // inspected, in order, when the flow's keys verify
    return this.inspect(st, data, dir);
  };

  onFlowClosed(flow: Flow): void {
    const st = flow.ctx as FlowState | undefined;
    if (!st) return;
    this.dispose(st);
    flow.ctx = undefined;
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
    return st.guard.addKeySet(ks);
  }

  applyDecline(flow: Flow, reason: string): void {
    const st = flow.ctx as FlowState | undefined;
    if (!st || st.closed) return;
    this.keyEvent(st, 'keys_declined', st.guard.association, { reason });
    st.guard.decline();
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

  // ------------------------------------------------------------------ internals

  private onRelease(st: FlowState, q: QueuedPacket[]): void {
    for (const p of q) {
      if (st.closed) return;
      const ok = this.inspect(st, p.data, p.dir);
      if (ok && p.held && this.relay && !st.closed) {
        try {
          this.relay.send(st.flow, p.dir, p.data, p.peerPort);
        } catch (err) {
          this.log.warn({ err: (err as Error).message }, 'releasing a held packet failed');
        }
      }
    }
  }

  /** Feeds the pipeline; policy judges what it saw. False: the datagram must not go on. */
  private inspect(st: FlowState, data: Buffer, dir: FlowDirection): boolean {
    st.verdict = 'forward';
    st.pipeline.feed(data, dir === 'c2p' ? 'c2s' : 's2c', this.clock.now());
    const v = st.verdict as VerdictAction; // set by onInspectEvent during feed()
    if (v === 'block') {
      this.block(st, 'policy', st.guard.association);
      return false;
    }
    return v !== 'drop';
  }

  private onInspectEvent(st: FlowState, e: InspectEvent): void {
    st.meta.dtlsClientIsA = st.pipeline.dtlsClientIsA;
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
    let verdict;
    try {
      // The rule set in force now: a reload applies to live flows (issue 5).
      verdict = this.o.policy().evaluate({ user: st.flow.user, groups: st.flow.groups, peerIp: st.flow.peerAddress }, subject);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'policy evaluation failed');
      return;
    }
    for (const m of verdict.matches) {
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
    // drop on media withholds that stream (one SSRC) from here on, not just this packet.
    if (verdict.action === 'drop' && e.type === 'rtp.stream') st.droppedSsrcs.add(e.ssrc);
    // A content rule with action `record` starts recording the flow from here on.
    if (verdict.action === 'record' && !st.recorder && this.o.recordings) {
      const m = verdict.matches.find((x) => x.action === 'record');
      if (m) this.startRecording(st, m.rule.id);
    }
  }

  private startRecording(st: FlowState, ruleId: string): void {
    const f = st.flow;
    try {
      st.recorder = this.o.recordings!.open({
        flowId: f.id,
        client: { ip: f.client.address, port: f.client.port },
        peer: { ip: f.peerAddress, port: st.meta.b.port },
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

  private block(st: FlowState, reason: BlockReason | 'policy', association: string | undefined): void {
    if (st.closed) return;
    const blockFor = st.keys?.block_for ?? 300_000;
    this.blockList.block(st.flow.allocationId, st.flow.peerAddress, blockFor);
    this.keyEvent(st, 'flow_blocked', association, { reason });
    this.log.info({ flow: st.flow.id, allocation: st.flow.allocationId, reason }, 'flow blocked');
    const flow = st.flow;
    this.dispose(st);
    // §5.4: stop relaying both ways and remove the permission and channels.
    if (this.deferred) this.deferred.push({ flow, reason: `blocked_${reason}` });
    else this.relay?.close(flow, `blocked_${reason}`);
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
    st.closed = true;
    this.stopRecording(st);
    st.guard.close(); // wipes key material (§5.5)
    st.pipeline.close();
    const k = peerKey(st.flow.allocationId, st.flow.peerAddress);
    if (this.byPeer.get(k) === st) this.byPeer.delete(k);
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
      gatehouse: { user: f.user, allocation: f.allocationId, ...(association ? { association } : {}), ...extra },
    };
    if (st.meta.b.port) e.dest_port = st.meta.b.port;
    this.emit(e);
  }

  private decorate(st: FlowState, e: EveEvent, association: string | undefined): EveEvent {
    e.gatehouse = { ...(e.gatehouse ?? {}), user: st.flow.user, allocation: st.flow.allocationId, ...(association ? { association } : {}) };
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
