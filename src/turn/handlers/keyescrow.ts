/**
 * KeyEscrow (key-escrow.md §6): key sets for the flows of the requesting user's
 * allocations, sent without an allocation. This module does the TURN-side checks of §6.3
 * (replay memory, per-user rate, number of WRITE-KEYS) after the server authenticated the
 * request exactly as a TURN request (§6.2, RFC 8489 §9.2.4, src/turn/requestauth.ts); the
 * gateway's KeyEscrowHandler (src/gateway/keyescrow.ts) opens, applies and answers.
 */
import type { Clock } from '../../util/clock.js';
import { getAttrs } from '../../wire/stun.js';
import { ATTR_WRITE_KEYS } from '../../wire/escrow.js';
import { MAX_ESCROW_KEY_SETS } from '../../wire/keyescrow.js';
import { RateLimiter } from '../limits.js';
import type { Req } from '../responder.js';
import type { StunMessage } from '../../wire/stun.js';
import { refuse, type TurnContext } from './context.js';

/** What the gateway sees of an authenticated KeyEscrow request. */
export interface KeyEscrowRequest {
  msg: StunMessage;
  /** The long-term key that verified the request (HKDF input of WRITE-KEYS, §2.2). Never log it. */
  key: Buffer;
  nonce: string;
  /** The requesting user (§6.2): the allocation user the credential maps to. */
  user: string;
  username: string;
  transactionId: Buffer;
}

export interface KeyEscrowVerdict {
  error?: { code: number; reason?: string };
  /** Attributes for the success response, before MESSAGE-INTEGRITY. */
  attrs?: { type: number; value: Buffer }[];
}

/** The gateway side of §6 (src/gateway/keyescrow.ts). Called synchronously; it must not keep `key`. */
export interface KeyEscrowHandler {
  onKeyEscrow(req: KeyEscrowRequest): KeyEscrowVerdict;
}

/** §6.3 step 2: pairs remembered at most (then 508, nothing forgotten early). */
export const REPLAY_MEMORY_MAX = 65_536;
/**
 * §6.3 step 2: pairs one requesting user holds in the memory at most (then 508 for that
 * user only), so no user, nor a few, can fill it for everyone: 50/s for the default
 * turn.nonce_lifetime of 600 s would be 30,000 pairs per user.
 */
export const REPLAY_PER_USER_MAX = 4096;
/** §6.3 step 3: KeyEscrow requests per second per user (burst 2 ×). */
export const KEY_ESCROW_RATE_PER_USER = 50;

/**
 * §6.3 step 2: (NONCE, transaction ID) pairs of authenticated KeyEscrow requests, each kept
 * for the full nonce lifetime from its first use (an upper bound of the NONCE's remaining
 * life, so insertion order is expiry order and the sweep stops at the first live pair).
 */
export class ReplayMemory {
  private readonly seen = new Map<string, { exp: number; user: string }>();
  private readonly perUser = new Map<string, number>();

  constructor(
    private readonly clock: Clock,
    private readonly lifetimeMs: number,
    private readonly max = REPLAY_MEMORY_MAX,
    private readonly maxPerUser = REPLAY_PER_USER_MAX,
  ) {}

  get size(): number {
    return this.seen.size;
  }

  /** 'fresh' (now remembered), 'replay', or 'full' (in all, or the user's share: not remembered, refuse the request). */
  use(nonce: string, transactionId: Buffer, user = ''): 'fresh' | 'replay' | 'full' {
    const k = nonce + '|' + transactionId.toString('hex');
    const now = this.clock.now();
    const old = this.seen.get(k);
    if (old !== undefined && old.exp > now) return 'replay';
    if (old !== undefined) this.forget(k, old.user);
    this.sweep(now);
    const mine = this.perUser.get(user) ?? 0;
    if (this.seen.size >= this.max || mine >= this.maxPerUser) return 'full';
    this.seen.set(k, { exp: now + this.lifetimeMs, user });
    this.perUser.set(user, mine + 1);
    return 'fresh';
  }

  sweep(now: number): void {
    for (const [k, e] of this.seen) {
      if (e.exp > now) break;
      this.forget(k, e.user);
    }
  }

  private forget(k: string, user: string): void {
    this.seen.delete(k);
    const n = (this.perUser.get(user) ?? 1) - 1;
    if (n > 0) this.perUser.set(user, n);
    else this.perUser.delete(user);
  }
}

/** The per-server state of §6.3. */
export class KeyEscrowLimits {
  readonly replay: ReplayMemory;
  readonly rate: RateLimiter;

  constructor(clock: Clock, nonceLifetimeS: number) {
    this.replay = new ReplayMemory(clock, nonceLifetimeS * 1000);
    this.rate = new RateLimiter(KEY_ESCROW_RATE_PER_USER, clock);
  }

  sweep(now: number): void {
    this.replay.sweep(now);
    this.rate.sweep(now);
  }
}

/**
 * KeyEscrow request (§6), after authentication and the 420 check. The retransmission of
 * §6.3 step 1 never reaches here: the server answers it from its cache (RFC 8489 §6.3.1).
 */
export function onKeyEscrow(ctx: TurnContext, r: Req, handler: KeyEscrowHandler, limits: KeyEscrowLimits): void {
  // §6.3 step 2: a (NONCE, transaction ID) pair seen before is a replay: 438 with a fresh
  // NONCE (RFC 8489 §9.2.4's stale-nonce answer), nothing applied.
  const seen = limits.replay.use(r.auth.nonce, r.msg.transactionId, r.auth.cred.user);
  if (seen === 'replay') {
    refuse(ctx, 'key_escrow_replay');
    r.auth.key.fill(0);
    ctx.auth.staleNonce(r.ep, r.msg);
    return;
  }
  // §6.3 steps 2-3: capacity, in all or the user's share (RFC 8656 §19: 508 Insufficient Capacity).
  if (seen === 'full') {
    refuse(ctx, 'key_escrow_replay_full');
    return ctx.res.fail(r, 508, 'Insufficient Capacity');
  }
  const user = r.auth.cred.user;
  if (!limits.rate.take(user)) {
    refuse(ctx, 'key_escrow_rate');
    return ctx.res.fail(r, 508, 'Insufficient Capacity');
  }
  // §6.3 step 4.
  if (getAttrs(r.msg, ATTR_WRITE_KEYS).length > MAX_ESCROW_KEY_SETS) {
    refuse(ctx, 'key_escrow_too_many');
    return ctx.res.fail(r, 400, 'Too many WRITE-KEYS');
  }
  let v: KeyEscrowVerdict;
  try {
    v = handler.onKeyEscrow({
      msg: r.msg,
      key: r.auth.key,
      nonce: r.auth.nonce,
      user,
      username: r.auth.cred.username,
      transactionId: r.msg.transactionId,
    });
  } catch (err) {
    // RFC 8489 §14.8: 500, a temporary server error; the supervisor counts it.
    ctx.sup.caught('turn.key_escrow', err);
    return ctx.res.fail(r, 500);
  }
  if (v.error) return ctx.res.fail(r, v.error.code, v.error.reason);
  const w = ctx.res.success(r.msg);
  for (const a of v.attrs ?? []) w.attr(a.type, a.value);
  ctx.res.ok(r, w);
}
