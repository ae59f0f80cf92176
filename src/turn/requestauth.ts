/**
 * RFC 8489 §9.2.4 long-term credential checks for TURN requests (RFC 8656 §5, §7.2 step 1),
 * with 401/438 challenges. The key and password never leave this module except as the
 * AuthOk handed to the request's handler.
 */
import type { GatehouseConfig } from '../config/config.js';
import type { Clock } from '../util/clock.js';
import {
  Attr,
  PasswordAlgorithmId,
  decodePasswordAlgorithm,
  decodePasswordAlgorithms,
  encodePasswordAlgorithms,
  getAttr,
  getString,
  hasAttr,
  longTermKey,
  verifyIntegrity,
  verifyIntegritySha256,
  type StunMessage,
} from '../wire/stun.js';
import { NonceManager, resolveCredential, type IssuedContextLookup, type UserDirectory } from './auth.js';
import type { RateLimiter } from './limits.js';
import type { RevokedSubjects } from './revoked.js';
import type { AuthOk, Responder } from './responder.js';
import type { Endpoint } from './state.js';
import { count, type TurnStats } from './stats.js';
import { sourcePrefix } from '../wire/source-prefix.js';

/** Password algorithms we offer, in order of preference (RFC 8489 §9.2.1, §14.11). */
const OFFERED_ALGS = [PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5];
const OFFERED_ALGS_VALUE = encodePasswordAlgorithms(OFFERED_ALGS);

export class Authenticator {
  private readonly nonces: NonceManager;

  constructor(
    private readonly cfg: GatehouseConfig,
    private readonly users: UserDirectory,
    private readonly clock: Clock,
    private readonly stats: TurnStats,
    private readonly res: Responder,
    private readonly unauthorized: RateLimiter,
    private readonly revoked: RevokedSubjects | null = null,
    /** The core's issue records (set by the gateway when the core runs in-process). */
    private readonly issued: () => IssuedContextLookup | null = () => null,
  ) {
    this.nonces = new NonceManager(clock, cfg.turn.nonce_lifetime);
  }

  private fail(reason: string): void {
    count(this.stats.authFailures, reason);
  }

  /**
   * 401/438 carry REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4). 401s
   * beyond turn.unauthorized_rate_per_source are not sent: an unauthenticated flood
   * (spoofed sources included) gets no answers to amplify (RFC 8656 §21).
   */
  private challenge(ep: Endpoint, msg: StunMessage, code: 401 | 438): void {
    if (code === 401 && !this.unauthorized.take(sourcePrefix(ep.remoteAddress))) {
      count(this.stats.refused, 'unauthorized_rate');
      return;
    }
    const w = this.res.errorStart(msg, code);
    w.attr(Attr.Realm, this.cfg.realm);
    w.attr(Attr.Nonce, this.nonces.issue(ep.remoteAddress));
    w.attr(Attr.PasswordAlgorithms, OFFERED_ALGS_VALUE);
    this.res.reply(ep, msg, w, null, false);
  }

  /** RFC 8489 §9.2.4, in the RFC's order. Returns null when an error response was sent (or dropped). */
  authenticate(ep: Endpoint, msg: StunMessage): AuthOk | null {
    const hasMI256 = hasAttr(msg, Attr.MessageIntegritySha256);
    const hasMI = hasAttr(msg, Attr.MessageIntegrity);
    if (!hasMI && !hasMI256) {
      this.challenge(ep, msg, 401);
      return null;
    }
    const username = getString(msg, Attr.Username);
    const realm = getString(msg, Attr.Realm);
    const nonce = getString(msg, Attr.Nonce);
    if (username === undefined || realm === undefined || nonce === undefined) {
      // USERHASH (username anonymity) is not offered, so USERNAME is required.
      this.fail('bad_request');
      this.res.reply(ep, msg, this.res.errorStart(msg, 400), null, false);
      return null;
    }
    // RFC 8489 §9.2.4 / §9.2.5: our nonces announce password algorithms, so the two
    // attributes come together, the list must be ours, and the choice from it.
    let alg: 'md5' | 'sha256' = 'md5';
    const pas = getAttr(msg, Attr.PasswordAlgorithms);
    const pa = getAttr(msg, Attr.PasswordAlgorithm);
    if (pas || pa) {
      const list = pas ? decodePasswordAlgorithms(pas) : null;
      const choice = pa ? decodePasswordAlgorithm(pa) : null;
      const listOk =
        list !== null && list.length === OFFERED_ALGS.length && list.every((e, i) => e.id === OFFERED_ALGS[i] && e.params.length === 0);
      if (!listOk || !choice || !(OFFERED_ALGS as number[]).includes(choice.id)) {
        this.fail('bad_request');
        this.res.reply(ep, msg, this.res.errorStart(msg, 400), null, false);
        return null;
      }
      alg = choice.id === PasswordAlgorithmId.SHA256 ? 'sha256' : 'md5';
    }
    if (this.nonces.check(nonce, ep.remoteAddress) !== 'ok') {
      this.fail('stale_nonce');
      this.challenge(ep, msg, 438);
      return null;
    }
    if (realm !== this.cfg.realm) {
      this.fail('bad_realm');
      this.challenge(ep, msg, 401);
      return null;
    }
    const r = resolveCredential(username, this.users, this.cfg.turn.rest_secret, this.clock.now(), this.issued());
    if (!r.ok) {
      this.fail(r.reason);
      this.challenge(ep, msg, 401);
      return null;
    }
    // RFC 8489 §9.2.2: the key from the password, or a cluster user's key computed ahead for
    // this realm (copied: a failed request's key is zeroed below, the user's stays).
    const stored = r.cred.keys;
    if (!r.cred.password && (!stored || stored.realm !== realm)) {
      this.fail('bad_realm'); // keys made for another realm can never verify (README "Cluster")
      this.challenge(ep, msg, 401);
      return null;
    }
    const key = r.cred.password ? longTermKey(username, realm, r.cred.password, alg) : Buffer.from(stored![alg]);
    // RFC 8489 §9.2.4: with both present, only MESSAGE-INTEGRITY-SHA256 counts.
    const ok = hasMI256 ? verifyIntegritySha256(msg, key) : verifyIntegrity(msg, key);
    if (!ok) {
      key.fill(0); // the long-term key of a failed request is not kept (it is the password's hash)
      this.fail('bad_integrity');
      this.challenge(ep, msg, 401);
      return null;
    }
    // Issue 11 / core.md §8: a REST credential issued before its subject was revoked is
    // refused as a bad credential would be: 401 with a fresh challenge (RFC 8489 §9.2.4,
    // RFC 8656 §5). Checked on every authenticated request, not only at Allocate.
    if (r.cred.rest && r.cred.expiry !== undefined && this.revoked?.refuses(r.cred.user, r.cred.expiry)) {
      key.fill(0);
      this.fail('revoked');
      this.challenge(ep, msg, 401);
      return null;
    }
    return { cred: r.cred, key, sha256: hasMI256, nonce };
  }

  /**
   * key-escrow.md §6.3 step 2: an authenticated request whose (NONCE, transaction ID) was
   * used before gets the stale-nonce answer of RFC 8489 §9.2.4: 438 with a fresh NONCE.
   */
  staleNonce(ep: Endpoint, msg: StunMessage): void {
    this.fail('replayed');
    this.challenge(ep, msg, 438);
  }

  /** 441 counts as an authentication failure (RFC 8656 §5). */
  wrongCredentials(): void {
    this.fail('wrong_credentials');
  }
}
