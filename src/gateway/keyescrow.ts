/**
 * KeyEscrow (key-escrow.md §6): key sets sent without an allocation, for the flows of the
 * requesting user's allocations. The TURN server authenticated the request (§6.2) and
 * checked replay, rate and count (§6.3, src/turn/handlers/keyescrow.ts); here:
 *  - each WRITE-KEYS is opened as §2.2 says (HKDF salt: the request's NONCE; AAD: magic
 *    cookie and transaction ID); any failure: 400 Invalid WRITE-KEYS, nothing applied;
 *  - each key set goes to that user's flows whose handshake has its client_random, or is
 *    held until that handshake crosses a flow of the user (bounded, src/gateway/held-keysets.ts),
 *    or, with the hold full, is wiped: KEY-STATUS 3 (§6.4); other users' flows play no part;
 *  - the success response carries KEY-STATUS per WRITE-KEYS, a signed KEY-REQUEST (the
 *    gateway's identity, §6.5) and KEY-PENDING for what the gateway waits for (§6.5).
 * Key material is never logged; the flows' sessions keep their own copies (§5.5).
 */
import type { Clock } from '../util/clock.js';
import type { GatewayIdentity } from '../store/identity.js';
import {
  ATTR_KEY_REQUEST,
  ATTR_KEY_STATUS,
  KEY_STATUS_FAILED,
  KEY_STATUS_RECEIVED,
  KEY_STATUS_VERIFIED,
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  encodeKeyRequest,
} from '../wire/escrow.js';
import { ATTR_KEY_PENDING, KEY_STATUS_UNKNOWN, MAX_KEY_PENDING, encodeKeyPending, type KeyPending } from '../wire/keyescrow.js';
import { associationId, wipeKeySet, type KeySet } from '../wire/keyset.js';
import type { KeyStatus } from '../inspect/dtls-session.js';
import type { Flow } from '../turn/flow.js';
import type { KeyEscrowHandler, KeyEscrowRequest, KeyEscrowVerdict } from '../turn/handlers/keyescrow.js';
import { openRequestKeySets, type EscrowKeysPolicy } from './escrow.js';
import { HeldKeySets } from './held-keysets.js';

export { INVALID_WRITE_KEYS } from './escrow.js';

/** What the service needs of the inspection side (src/gateway/inspector.ts). */
export interface KeyEscrowHost {
  keysPolicy(): EscrowKeysPolicy | null;
  /** Open flows of this user's allocations whose DTLS showed the association's hellos. */
  userFlowsWithAssociation(user: string, clientRandomHex: string): Flow[];
  /** Hands a validated key set to a flow (its session clones it); its status against traffic seen. */
  applyKeySet(flow: Flow, ks: KeySet): KeyStatus;
  /** §6.5: the associations of this user's flows that wait for keys, oldest first, at most `max`. */
  pendingAssociations(user: string, max: number): KeyPending[];
  /** A KeyEscrow request refused with 400 Invalid WRITE-KEYS (event; never secrets). */
  keyEscrowRejected(user: string, reason: string): void;
}

/** Held key sets live keys.deadline; without a keys section, this long. */
const HOLD_DEFAULT_MS = 10_000;

function statusValue(s: number): Buffer {
  const b = Buffer.alloc(4); // §2.4: status u8, then 3 zero bytes
  b[0] = s;
  return b;
}

export class KeyEscrowService implements KeyEscrowHandler {
  readonly held: HeldKeySets;

  constructor(
    private readonly host: KeyEscrowHost,
    private readonly identity: GatewayIdentity,
    clock: Clock,
  ) {
    this.held = new HeldKeySets(clock);
  }

  onKeyEscrow(req: KeyEscrowRequest): KeyEscrowVerdict {
    // §6.3 step 5: each WRITE-KEYS opens as in §2.2; any failure → 400 Invalid WRITE-KEYS, nothing applied.
    const opened = openRequestKeySets(req.msg, req.key);
    if (!opened.ok) return this.reject(req, opened.reason);
    const sets = opened.sets;

    const policy = this.host.keysPolicy();
    const attrs: { type: number; value: Buffer }[] = [];
    // §6.4, in the order of the WRITE-KEYS.
    for (const ks of sets) attrs.push({ type: ATTR_KEY_STATUS, value: statusValue(this.place(req.user, ks, policy)) });

    // §6.5: KEY-REQUEST signed over this response's transaction ID (the request's, RFC 8489
    // §6.3.1): the client checks the gateway's identity with it before it sends keys.
    let deadline = 0;
    let flags = 0;
    if (policy && (policy.media || policy.data)) {
      deadline = Math.min(0xffff, Math.ceil(policy.deadline / 1000));
      flags = (policy.media ? KR_FLAG_MEDIA : 0) | (policy.data ? KR_FLAG_DATA : 0) | (policy.required ? KR_FLAG_REQUIRED : 0);
    }
    attrs.push({
      type: ATTR_KEY_REQUEST,
      value: encodeKeyRequest(
        'turn',
        req.transactionId,
        { deadline, flags, fingerprint: this.identity.fingerprint },
        this.identity.privateKey,
      ),
    });
    // §6.5: what the gateway waits for, after the key sets above took effect. Each flow by
    // the rules it was created with (pendingAssociations), not by the rules in force now: a
    // reload without `keys` leaves earlier flows that require keys, still to be unlocked.
    for (const p of this.host.pendingAssociations(req.user, MAX_KEY_PENDING))
      attrs.push({ type: ATTR_KEY_PENDING, value: encodeKeyPending(p) });
    return { attrs };
  }

  /**
   * §6.4: the ServerHello of `clientRandomHex` crossed `flow`: key sets the flow's user
   * sent before are applied now. Called outside the packet's own processing (the caller
   * defers it), so the session is not re-entered.
   */
  onHandshake(flow: Flow, clientRandomHex: string): void {
    if (!flow.open) return;
    for (const ks of this.held.take(flow.user, clientRandomHex)) {
      try {
        this.host.applyKeySet(flow, ks);
      } finally {
        wipeKeySet(ks);
      }
    }
  }

  sweep(now: number): void {
    this.held.sweep(now);
  }

  close(): void {
    this.held.clear();
  }

  /** Applies, holds or discards one key set; its KEY-STATUS. The key set is wiped or given to the hold. */
  private place(user: string, ks: KeySet, policy: EscrowKeysPolicy | null): number {
    const id = associationId(ks.clientRandom);
    const flows = this.host.userFlowsWithAssociation(user, id);
    if (flows.length) {
      let st: KeyStatus = 'pending';
      try {
        for (const f of flows) {
          const s = this.host.applyKeySet(f, ks);
          if (s === 'verified' || (s === 'invalid' && st === 'pending')) st = s;
        }
      } finally {
        wipeKeySet(ks); // each flow's session has its own copy (§5.5)
      }
      return st === 'verified' ? KEY_STATUS_VERIFIED : st === 'invalid' ? KEY_STATUS_FAILED : KEY_STATUS_RECEIVED;
    }
    // §6.4: no flow of this user shows it (yet): held for this user alone (taken only by a
    // flow of the same user, onHandshake), whether or not another user's flow shows that
    // client_random, so the answer says nothing about other users' flows (it was KEY-STATUS
    // 3 for "seen only on other users' flows": an oracle for a client_random read off the wire).
    if (this.held.hold(user, ks, policy?.deadline ?? HOLD_DEFAULT_MS)) return KEY_STATUS_RECEIVED;
    wipeKeySet(ks);
    return KEY_STATUS_UNKNOWN;
  }

  private reject(req: KeyEscrowRequest, reason: string): KeyEscrowVerdict {
    this.host.keyEscrowRejected(req.user, reason);
    return { error: { code: 400, reason: 'Invalid WRITE-KEYS' } };
  }
}
