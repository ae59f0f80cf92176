/**
 * Key escrow over PCP (key-escrow.md §4): the PcpRequestExtension that
 *  - adds a signed WRITE_KEYS_REQUEST (option 228) to MAP and PEER success responses
 *    when policy wants keys, signed over the mapping nonce; and sends it again in an
 *    unsolicited response (RFC 6887 §14.2) when a mapping gets a new flow;
 *  - opens WRITE_KEYS (option 229) of a request from a client with an RFC 7652 security
 *    association, under HKDF(transport key, salt = mapping nonce), AAD = mapping nonce;
 *  - takes KEY_DECLINE (option 230).
 *
 * Where the spec is silent (it names no PCP error for bad WRITE_KEYS), RFC 6887 §7.4:
 * a WRITE_KEYS that does not open is MALFORMED_OPTION; one from a client without a
 * security association is NOT_AUTHORIZED ("an operation that cannot be fulfilled by the
 * PCP server's security policy"); a blocked user × remote is NOT_AUTHORIZED (§5.4).
 * Nothing of a refused request takes effect.
 */
import type { GatewayIdentity } from '../store/identity.js';
import { eveTimestamp, type EveEvent } from '../events/eve.js';
import {
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  PCP_OPT_KEY_DECLINE,
  PCP_OPT_WRITE_KEYS,
  PCP_OPT_WRITE_KEYS_REQUEST,
  decodeKeyDecline,
  encodeKeyRequest,
  openWriteKeys,
  pcpWriteKeysKey,
} from '../wire/escrow.js';
import { decodeKeySet, validateKeySet, wipeKeySet, type KeySet } from '../wire/keyset.js';
import type { PcpMapping, PcpMappingEnd, PcpOption, PcpRequestContext, PcpRequestExtension, PcpRequestVerdict } from '../pcp/hooks.js';
import type { EscrowKeysPolicy } from './escrow.js';
import type { Flow } from '../turn/flow.js';
import type { KeyStatus } from '../inspect/dtls-session.js';
import { pcpUser, type PcpFlow } from './pcp-path.js';

/** RFC 6887 §7.4 result codes used here. */
export const PCP_NOT_AUTHORIZED = 2;
export const PCP_MALFORMED_OPTION = 6;

/** Key sets kept for a mapping whose flows do not exist yet (keys may come before the first packet). */
export const MAX_PENDING_KEY_SETS = 8;

export interface PcpEscrowHost {
  keysPolicy(): EscrowKeysPolicy | null;
  applyKeySet(flow: Flow, ks: KeySet): KeyStatus;
  applyDecline(flow: Flow, reason: string): void;
  keyRequested(flow: Flow, deadline: number, flags: number): void;
  isBlocked(user: string, peerIp: string): boolean;
  /** A refused WRITE_KEYS (event; never secrets). */
  writeKeysRejected(m: PcpMapping, reason: string): void;
}

/** A PcpEscrowHost over the GatewayInspector: the refusal events name the mapping (contract.md). */
export function pcpEscrowHost(
  inspector: Omit<PcpEscrowHost, 'writeKeysRejected'>,
  emit: (e: EveEvent) => void,
  now: () => number,
): PcpEscrowHost {
  return {
    keysPolicy: () => inspector.keysPolicy(),
    applyKeySet: (f, ks) => inspector.applyKeySet(f, ks),
    applyDecline: (f, r) => inspector.applyDecline(f, r),
    keyRequested: (f, d, fl) => inspector.keyRequested(f, d, fl),
    isBlocked: (u, ip) => inspector.isBlocked(u, ip),
    writeKeysRejected(m, reason) {
      emit({
        timestamp: eveTimestamp(now()),
        event_type: 'keys_invalid',
        proto: 'UDP',
        src_ip: m.internal.address,
        src_port: m.internal.port,
        ...(m.remote ? { dest_ip: m.remote.address, dest_port: m.remote.port } : {}),
        keys: { what: 'write_keys', reason },
        gatehouse: { user: pcpUser(m), mapping: m.id },
      });
    },
  };
}

export interface PcpFlowIndex {
  flowsOfMapping(m: PcpMapping): PcpFlow[];
  findFlow(mappingId: string, remoteIp: string): PcpFlow | undefined;
}

export interface UnsolicitedSender {
  sendUnsolicited(m: PcpMapping, options: PcpOption[]): void;
}

interface MappingKeys {
  /** Key sets that came before the flows they are for (bounded), by remote ('' = any). */
  pending: { remote: string; ks: KeySet }[];
  declines: { remote: string; reason: string }[];
  /** A WRITE_KEYS_REQUEST went out for this mapping (flows made later get key_request events). */
  requested: { deadline: number; flags: number } | null;
}

export class PcpEscrowExtension implements PcpRequestExtension {
  private readonly state = new Map<string, MappingKeys>();
  private sender: UnsolicitedSender | null = null;

  constructor(
    private readonly host: PcpEscrowHost,
    private readonly flows: PcpFlowIndex,
    private readonly identity: GatewayIdentity,
  ) {}

  setSender(s: UnsolicitedSender): void {
    this.sender = s;
  }

  onRequest(ctx: PcpRequestContext): PcpRequestVerdict | void {
    const m = ctx.mapping;
    const user = pcpUser(m);
    const remote = m.remote?.address ?? '';
    // key-escrow.md §5.4: after a block, PEER for the same user and remote is refused.
    if (remote && this.host.isBlocked(user, remote)) return { result: PCP_NOT_AUTHORIZED };

    const declines: string[] = [];
    const sets: KeySet[] = [];
    const wipe = (): void => {
      for (const ks of sets) wipeKeySet(ks);
      sets.length = 0;
    };
    for (const o of ctx.options) {
      if (o.code === PCP_OPT_KEY_DECLINE) {
        // key-escrow.md §2.3: UTF-8, at most 128 bytes.
        const r = decodeKeyDecline(o.data);
        if (r === null) {
          wipe();
          return { result: PCP_MALFORMED_OPTION };
        }
        declines.push(r);
      } else if (o.code === PCP_OPT_WRITE_KEYS) {
        // §4: unauthenticated PCP clients cannot escrow keys.
        if (!ctx.sa) {
          wipe();
          this.host.writeKeysRejected(m, 'unauthenticated');
          return { result: PCP_NOT_AUTHORIZED };
        }
        const key = pcpWriteKeysKey(ctx.sa.transportKey, m.nonce);
        try {
          const opened = openWriteKeys(key, m.nonce, o.data); // AAD = the mapping nonce (§4)
          if (!opened.ok) {
            wipe();
            this.host.writeKeysRejected(m, opened.reason);
            return { result: PCP_MALFORMED_OPTION };
          }
          try {
            const ks = decodeKeySet(opened.keySet);
            validateKeySet(ks);
            sets.push(ks);
          } catch {
            wipe();
            this.host.writeKeysRejected(m, 'key_set');
            return { result: PCP_MALFORMED_OPTION };
          } finally {
            opened.keySet.fill(0);
          }
        } finally {
          key.fill(0);
        }
      }
    }

    const policy = this.host.keysPolicy();
    const options: PcpOption[] = [];
    let request: { deadline: number; flags: number } | null = null;
    if (policy && (policy.media || policy.data)) {
      request = keyRequestOf(policy);
      options.push(this.keyRequestOption(m, request));
    }
    const self = this;
    return {
      options,
      commit(mapping: PcpMapping): void {
        const st = self.stateOf(mapping);
        if (request) st.requested = request;
        const targets = remote
          ? [self.flows.findFlow(mapping.id, remote)].filter((f): f is PcpFlow => !!f)
          : self.flows.flowsOfMapping(mapping);
        for (const f of targets) if (request) self.host.keyRequested(f, request.deadline, request.flags);
        for (const ks of sets) {
          if (targets.length) for (const f of targets) self.host.applyKeySet(f, ks);
          // Kept for flows still to come (and for more remotes of a MAP); bounded.
          st.pending.push({ remote, ks: cloneKeySet(ks) });
          while (st.pending.length > MAX_PENDING_KEY_SETS) wipeKeySet(st.pending.shift()!.ks);
        }
        for (const r of declines) {
          for (const f of targets) self.host.applyDecline(f, r);
          if (st.declines.length < MAX_PENDING_KEY_SETS) st.declines.push({ remote, reason: r });
        }
        wipe();
      },
      // The request did not take effect: nothing of it is applied (key-escrow.md §5.5).
      abort: wipe,
    };
  }

  /** A new flow on a mapping: keys and declines that came first apply; keys are asked for again. */
  flowCreated(f: PcpFlow): void {
    const st = this.state.get(f.mapping.id);
    const policy = this.host.keysPolicy();
    if (st) {
      for (const p of st.pending) if (p.remote === '' || p.remote === f.peerAddress) this.host.applyKeySet(f, p.ks);
      for (const d of st.declines) if (d.remote === '' || d.remote === f.peerAddress) this.host.applyDecline(f, d.reason);
    }
    if (policy && (policy.media || policy.data)) {
      const request = keyRequestOf(policy);
      this.host.keyRequested(f, request.deadline, request.flags);
      // RFC 6887 §14.2: an unsolicited MAP/PEER response tells the client; key-escrow.md §4
      // puts WRITE_KEYS_REQUEST there so the endpoint learns its new flow needs keys.
      if (f.mapping.opcode === 'map') this.sender?.sendUnsolicited(f.mapping, [this.keyRequestOption(f.mapping, request)]);
    }
  }

  onMappingEnded(m: PcpMapping, _why: PcpMappingEnd): void {
    const st = this.state.get(m.id);
    if (!st) return;
    this.state.delete(m.id);
    // key-escrow.md §5.5: key material lives only as long as the flow (mapping) using it.
    for (const p of st.pending) wipeKeySet(p.ks);
  }

  private stateOf(m: PcpMapping): MappingKeys {
    let st = this.state.get(m.id);
    if (!st) this.state.set(m.id, (st = { pending: [], declines: [], requested: null }));
    return st;
  }

  private keyRequestOption(m: PcpMapping, r: { deadline: number; flags: number }): PcpOption {
    // §4: signed over "gatehouse pcp key-request v1" || mapping nonce || deadline || flags || fingerprint.
    return {
      code: PCP_OPT_WRITE_KEYS_REQUEST,
      data: encodeKeyRequest('pcp', m.nonce, { ...r, fingerprint: this.identity.fingerprint }, this.identity.privateKey),
    };
  }
}

function keyRequestOf(policy: EscrowKeysPolicy): { deadline: number; flags: number } {
  return {
    deadline: Math.min(0xffff, Math.ceil(policy.deadline / 1000)),
    flags: (policy.media ? KR_FLAG_MEDIA : 0) | (policy.data ? KR_FLAG_DATA : 0) | (policy.required ? KR_FLAG_REQUIRED : 0),
  };
}

function cloneKeySet(ks: KeySet): KeySet {
  const out = { ...ks } as Record<string, unknown>;
  for (const [k, v] of Object.entries(ks)) if (Buffer.isBuffer(v)) out[k] = Buffer.from(v);
  return out as unknown as KeySet;
}
