/**
 * Key escrow on TURN (key-escrow.md §2): the TurnRequestExtension that
 *  - adds a signed KEY-REQUEST (0xC1A0) to CreatePermission / ChannelBind success
 *    responses when policy wants keys (§2.1),
 *  - opens WRITE-KEYS (0xC1A1) of an authenticated request (§2.2) and answers with one
 *    KEY-STATUS (0xC1A3) per WRITE-KEYS, in order (§2.4),
 *  - takes KEY-DECLINE (0xC1A2) (§2.3).
 *
 * The per-flow work (verification, deadlines, blocking, events) is the host's
 * (src/gateway/inspector.ts). The server only calls onRequest for requests whose
 * MESSAGE-INTEGRITY(-SHA256) verified (src/turn/server.ts runExtensions), as §2.2 requires.
 */
import type { GatewayIdentity } from '../store/identity.js';
import { Attr, Method, getAttr, getAttrs, type StunMessage } from '../wire/stun.js';
import {
  ATTR_KEY_DECLINE,
  ATTR_KEY_REQUEST,
  ATTR_KEY_STATUS,
  ATTR_WRITE_KEYS,
  KEY_STATUS_FAILED,
  KEY_STATUS_RECEIVED,
  KEY_STATUS_VERIFIED,
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  decodeKeyDecline,
  encodeKeyRequest,
  encodeKeyStatus,
  openWriteKeys,
  turnWriteKeysAad,
  turnWriteKeysKey,
} from '../wire/escrow.js';
import { decodeKeySet, validateKeySet, wipeKeySet, type KeySet } from '../wire/keyset.js';
import type { KeyStatus } from '../inspect/dtls-session.js';
import type { Flow, TurnRequestContext, TurnRequestExtension, TurnRequestVerdict } from '../turn/flow.js';

/** The `keys` section of the rules (contract.md), durations in ms. */
export interface EscrowKeysPolicy {
  required: boolean;
  deadline: number;
  unverified: 'hold' | 'pass' | 'drop';
  block_for: number;
  media: boolean;
  data: boolean;
}

/** What the extension needs from the inspection side. */
export interface EscrowHost {
  /** The keys policy in force (null: no keys wanted, no KEY-REQUEST). */
  keysPolicy(): EscrowKeysPolicy | null;
  /** The open flow of an allocation and peer IP, if any. */
  findFlow(allocationId: string, peerIp: string): Flow | undefined;
  /** Hands a validated key set to a flow; returns its status against traffic seen. */
  applyKeySet(flow: Flow, ks: KeySet): KeyStatus;
  /** KEY-DECLINE for a flow. */
  applyDecline(flow: Flow, reason: string): void;
  /** A KEY-REQUEST went out for a flow (event). */
  keyRequested(flow: Flow, deadline: number, flags: number): void;
  /** A request was refused with `400 Invalid WRITE-KEYS` (event; never secrets). */
  writeKeysRejected(ctx: TurnRequestContext, reason: string): void;
  /** Whether flows between this user and peer IP are refused (a block, §5.4). */
  isBlocked?(user: string, peerIp: string): boolean;
  /**
   * Keys applied while the request is being handled can block a flow (policy judging the
   * released data); the server installs the request's permission after onRequest, so
   * tearing flows down waits until commit(): holdCloses() before, flushCloses() in commit.
   */
  holdCloses?(): void;
  flushCloses?(): void;
}

export const INVALID_WRITE_KEYS = 'Invalid WRITE-KEYS';

export class TurnEscrowExtension implements TurnRequestExtension {
  // All four attributes are comprehension-optional (§2; RFC 8489 §14): no registration.
  readonly attributes: readonly number[] = [];

  constructor(
    private readonly host: EscrowHost,
    private readonly identity: GatewayIdentity,
  ) {}

  onRequest(ctx: TurnRequestContext): TurnRequestVerdict | void {
    if (ctx.method !== Method.CreatePermission && ctx.method !== Method.ChannelBind) return;
    const msg = ctx.msg;

    // key-escrow.md §5.4: after a block, this user and peer are refused from any of the
    // user's allocations (also where a permission already exists on another allocation).
    if (this.host.isBlocked && ctx.peers.some((p) => this.host.isBlocked!(ctx.user, p.address)))
      return { error: { code: 403, reason: 'Forbidden' } };

    // §2.3: KEY-DECLINE reason is UTF-8, at most 128 bytes; longer → 400 Bad Request.
    const declines: string[] = [];
    for (const v of getAttrs(msg, ATTR_KEY_DECLINE)) {
      const r = decodeKeyDecline(v);
      if (r === null) return { error: { code: 400, reason: 'Bad Request' } };
      declines.push(r);
    }

    // §2.2: WRITE-KEYS, only looked at because MESSAGE-INTEGRITY passed (the server calls
    // extensions after authentication). Any failure → 400 Invalid WRITE-KEYS, nothing applied.
    const opened = openRequestKeySets(msg, ctx.key);
    if (!opened.ok) return this.reject(ctx, opened.reason);
    const sets = opened.sets;

    const policy = this.host.keysPolicy();
    const attrs: { type: number; value: Buffer }[] = [];

    // §2.4: KEY-STATUS per WRITE-KEYS, same order. Flows that already exist get the keys
    // now (their status depends on traffic already seen); new flows get them in commit().
    const applied = new Set<string>();
    if (sets.length) this.host.holdCloses?.();
    for (let i = 0; i < sets.length; i++) {
      const ks = sets[i]!;
      let st: KeyStatus = 'pending';
      for (const p of ctx.peers) {
        const f = this.host.findFlow(ctx.allocationId, p.address);
        if (!f || applied.has(`${f.id}:${i}`)) continue;
        applied.add(`${f.id}:${i}`);
        const s = this.host.applyKeySet(f, ks);
        if (s === 'verified' || (s === 'invalid' && st === 'pending')) st = s;
      }
      attrs.push({
        type: ATTR_KEY_STATUS,
        value: encodeKeyStatus(st === 'verified' ? KEY_STATUS_VERIFIED : st === 'invalid' ? KEY_STATUS_FAILED : KEY_STATUS_RECEIVED),
      });
    }

    // §2.1: KEY-REQUEST when policy wants keys, signed over the response's transaction ID
    // (the request's, RFC 8489 §6.3.1).
    let deadline = 0;
    let flags = 0;
    if (policy && (policy.media || policy.data)) {
      deadline = Math.min(0xffff, Math.ceil(policy.deadline / 1000));
      flags = (policy.media ? KR_FLAG_MEDIA : 0) | (policy.data ? KR_FLAG_DATA : 0) | (policy.required ? KR_FLAG_REQUIRED : 0);
      attrs.push({
        type: ATTR_KEY_REQUEST,
        value: encodeKeyRequest(
          'turn',
          ctx.transactionId,
          { deadline, flags, fingerprint: this.identity.fingerprint },
          this.identity.privateKey,
        ),
      });
    }

    const host = this.host;
    // §5.5: the decoded key sets are wiped once the flows have their copies (commit), or,
    // should the request not take effect (commit never comes; the server handles a request
    // synchronously), on the next microtask.
    let wiped = false;
    const wipe = (): void => {
      if (wiped) return;
      wiped = true;
      for (const ks of sets) wipeKeySet(ks);
    };
    if (sets.length) queueMicrotask(wipe);
    return {
      attrs,
      commit(flows: Flow[]): void {
        if (wiped) return; // too late: nothing of it is applied any more
        const seen = new Set<number>();
        for (const f of flows) {
          if (seen.has(f.id)) continue;
          seen.add(f.id);
          if (flags) host.keyRequested(f, deadline, flags);
          sets.forEach((ks, i) => {
            if (!applied.has(`${f.id}:${i}`)) host.applyKeySet(f, ks);
          });
          for (const r of declines) host.applyDecline(f, r);
        }
        // The flows' sessions keep the one copy each: wipe ours (key-escrow.md §5.5).
        wipe();
        if (sets.length) host.flushCloses?.();
      },
    };
  }

  private reject(ctx: TurnRequestContext, reason: string): TurnRequestVerdict {
    this.host.writeKeysRejected(ctx, reason);
    return { error: { code: 400, reason: INVALID_WRITE_KEYS } };
  }
}

/**
 * key-escrow.md §2.2 (and §6.3 for KeyEscrow requests): every WRITE-KEYS of an
 * authenticated STUN request opened with HKDF(ikm = the request's long-term key, salt =
 * its NONCE value) and AAD = magic cookie + transaction ID (bytes 4..19), then decoded and
 * validated as a §3 key set (required TLVs, supported suite / SRTP profile, key lengths).
 * All or nothing: on the first failure the sets opened so far are wiped and only the
 * reason comes back (`no_nonce`, the open failure's reason, or `key_set`). The derived key
 * and every decrypted value are wiped here.
 */
export function openRequestKeySets(msg: StunMessage, longTermKey: Buffer): { ok: true; sets: KeySet[] } | { ok: false; reason: string } {
  const sets: KeySet[] = [];
  const wk = getAttrs(msg, ATTR_WRITE_KEYS);
  if (!wk.length) return { ok: true, sets };
  const nonce = getAttr(msg, Attr.Nonce);
  if (!nonce) return { ok: false, reason: 'no_nonce' };
  const fail = (reason: string): { ok: false; reason: string } => {
    for (const ks of sets) wipeKeySet(ks);
    return { ok: false, reason };
  };
  const key = turnWriteKeysKey(longTermKey, nonce);
  const aad = turnWriteKeysAad(msg.raw);
  try {
    for (const v of wk) {
      const o = openWriteKeys(key, aad, v);
      if (!o.ok) return fail(o.reason);
      let ks: KeySet;
      try {
        ks = decodeKeySet(o.keySet);
        validateKeySet(ks);
      } catch {
        return fail('key_set');
      } finally {
        o.keySet.fill(0);
      }
      sets.push(ks);
    }
  } finally {
    key.fill(0);
  }
  return { ok: true, sets };
}
