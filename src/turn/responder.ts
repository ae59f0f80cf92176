/**
 * Responses: one StunWriter, SOFTWARE, MESSAGE-INTEGRITY(-SHA256), FINGERPRINT, and the
 * retransmission cache (RFC 8489 §6.3.1, RFC 8656 §5: a retransmitted request gets the
 * same answer).
 */
import type { Clock } from '../util/clock.js';
import { Attr, Class, StunWriter, hasAttr, messageType, type StunMessage } from '../wire/stun.js';
import type { ResolvedCredential } from './auth.js';
import { MAX_STREAM_BUFFERED, TX_CACHE_MAX, TX_CACHE_MS, type Endpoint } from './state.js';

export interface AuthOk {
  cred: ResolvedCredential;
  key: Buffer;
  sha256: boolean;
  nonce: string;
}

/** An authenticated TURN request being handled. */
export interface Req {
  ep: Endpoint;
  msg: StunMessage;
  auth: AuthOk;
  cacheKey: string;
}

/** RFC 8489 §14.14: SOFTWARE is fewer than 128 characters. */
export const SOFTWARE_MAX_CHARS = 127;

export function sanitizeSoftware(s: string): string {
  const chars = [...s];
  return chars.length > SOFTWARE_MAX_CHARS ? chars.slice(0, SOFTWARE_MAX_CHARS).join('') : s;
}

export class Responder {
  private readonly w = new StunWriter(2048);
  private readonly txCache = new Map<string, { buf: Buffer; expires: number }>();

  constructor(
    private readonly software: string,
    private readonly clock: Clock,
    /** Called when an answer is dropped because its stream client does not read (README "Limits"). */
    private readonly onStreamBacklog: () => void = () => {},
  ) {}

  success(msg: StunMessage): StunWriter {
    return this.w.reset(messageType(msg.method, Class.Success), msg.transactionId);
  }

  errorStart(msg: StunMessage, code: number, reason?: string): StunWriter {
    return this.w.reset(messageType(msg.method, Class.Error), msg.transactionId).errorCode(code, reason);
  }

  /** An error answer to an authenticated request (integrity, cached for retransmissions). */
  fail(r: Req, code: number, reason?: string): void {
    this.reply(r.ep, r.msg, this.errorStart(r.msg, code, reason), r.auth, true, r.cacheKey);
  }

  /** A success answer to an authenticated request (the writer came from success()). */
  ok(r: Req, w: StunWriter): void {
    this.reply(r.ep, r.msg, w, r.auth, true, r.cacheKey);
  }

  /**
   * Finishes and sends the response in w: SOFTWARE (RFC 8489 §14.14), then
   * MESSAGE-INTEGRITY(-SHA256) with the request's key and algorithm when the request
   * authenticated (RFC 8489 §9.2.4), then FINGERPRINT when the request had one (§7.3).
   */
  reply(ep: Endpoint, req: StunMessage, w: StunWriter, auth: AuthOk | null, cache: boolean, cacheKey?: string): void {
    if (this.software) w.attr(Attr.Software, this.software);
    if (auth) {
      if (auth.sha256) w.integritySha256(auth.key);
      else w.integrity(auth.key);
      // The long-term key (RFC 8489 §9.2.2) was derived for this request alone; its last use
      // is this signature, so it is wiped (key hygiene: no copy outlives the request).
      auth.key.fill(0);
    }
    if (hasAttr(req, Attr.Fingerprint)) w.fingerprint();
    const out = w.copy();
    this.send(ep, out);
    if (cache && cacheKey) {
      if (this.txCache.size >= TX_CACHE_MAX) {
        const first = this.txCache.keys().next();
        if (!first.done) this.txCache.delete(first.value);
      }
      this.txCache.set(cacheKey, { buf: out, expires: this.clock.now() + TX_CACHE_MS });
    }
  }

  cached(cacheKey: string): Buffer | undefined {
    return this.txCache.get(cacheKey)?.buf;
  }

  send(ep: Endpoint, buf: Buffer): void {
    if (ep.udp) ep.udp.socket.send(buf, ep.remotePort, ep.sendAddress);
    else if (ep.conn && !ep.conn.closed) {
      // A client that sends requests and never reads must not grow our memory: past the
      // same bound as relayed data (MAX_STREAM_BUFFERED) answers are dropped, as over UDP.
      if (ep.conn.socket.writableLength > MAX_STREAM_BUFFERED) this.onStreamBacklog();
      else ep.conn.socket.write(buf);
    }
  }

  sweep(now: number): void {
    for (const [k, v] of this.txCache) {
      if (v.expires > now) break; // insertion order == expiry order
      this.txCache.delete(k);
    }
  }

  clear(): void {
    this.txCache.clear();
  }
}
