/**
 * HTTP Digest Access Authentication, RFC 7616, with SHA-256 and qop=auth only: the
 * login of the gateway's own users (core.md §3, realm = config `realm`) and the guests'
 * join (core.md §4, realm `conference:{id}`, HA1 supplied by the front end).
 *
 * Nonces are stateless (HMAC over expiry, randomness and realm), so a flood of 401s
 * costs no memory; only nonces that have authenticated someone are remembered, with
 * the highest `nc` seen, until they expire (bounded). core.md §3: a nonce may be
 * reused with a higher nc until it expires; the same nonce and nc twice is `replayed`.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../util/clock.js';
import { parseAuthParams, type AuthParamSyntax } from './auth-params.js';

export const DIGEST_ALGORITHM = 'SHA-256';

const sha256hex = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

/** RFC 7616 §3.4.2: HA1 = H(username ":" realm ":" passwd) for algorithm SHA-256 (not -sess). */
export function digestHa1(username: string, realm: string, password: string): string {
  return sha256hex(`${username}:${realm}:${password}`);
}

/**
 * RFC 7616 §3.4.1 with qop=auth: response = KD(HA1, nonce:nc:cnonce:qop:H(A2)),
 * KD(s, d) = H(s ":" d), A2 = method ":" request-uri (§3.4.3).
 */
export function digestResponse(p: {
  ha1: string;
  nonce: string;
  nc: string;
  cnonce: string;
  qop: string;
  method: string;
  uri: string;
}): string {
  const ha2 = sha256hex(`${p.method}:${p.uri}`);
  return sha256hex(`${p.ha1}:${p.nonce}:${p.nc}:${p.cnonce}:${p.qop}:${ha2}`);
}

/** A `WWW-Authenticate` / `Authorization` credential split into scheme and auth-params. */
export interface AuthHeader {
  scheme: string;
  params: Map<string, string>;
}

/**
 * Digest's auth-param syntax, unchanged: RFC 7616 §3.4 fixes which parameters a sender
 * quotes (username, realm, nonce, uri, response, cnonce, opaque) and which it does not
 * (algorithm, qop, nc); as a recipient Digest stays lenient: a quoted value may hold any
 * character, `\` taking the next one as it is, and an unquoted value may also carry `/`
 * and `=` (base64 text).
 */
const DIGEST_SYNTAX: AuthParamSyntax = { quoted: 'any', unquoted: /^[!#$%&'*+\-.^_`|~0-9A-Za-z/=]+/ };

/**
 * Parses `Scheme k=v, k="quoted \"str\"", ...` (RFC 9110 §11.2 auth-param, §5.6.4
 * quoted-string with quoted-pair; §5.6.1 lists with empty elements allowed), the params
 * by src/core/auth-params.ts with DIGEST_SYNTAX. Parameter names are case-insensitive
 * (lowercased here). Returns null on a syntax error or a parameter given twice (RFC 9110
 * §11.2: each parameter name MUST only occur once).
 */
export function parseAuthHeader(header: string, maxLength = 4096): AuthHeader | null {
  if (header.length > maxLength) return null;
  const m = /^\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?:\s+|$)/.exec(header);
  if (!m) return null;
  const scheme = m[1]!;
  const params = parseAuthParams(header.slice(m[0].length), DIGEST_SYNTAX);
  return params ? { scheme, params } : null;
}

/** RFC 9110 §5.6.4: a quoted-string with `\` and `"` escaped. */
export function quote(v: string): string {
  return `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** RFC 8187 §3.2 ext-value `UTF-8''percent-encoded` (RFC 7616 §3.4.4 `username*`), or null. */
export function decodeExtValue(v: string): string | null {
  const m = /^UTF-8'[^']*'(.*)$/i.exec(v);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]!);
  } catch {
    return null;
  }
}

export type DigestResult =
  | { ok: true; username: string; nonce: string; nc: number }
  /**
   * missing: no Digest credentials; malformed: not parseable or not our parameters;
   * stale: a nonce of ours that expired (RFC 7616 §3.3 stale=true); unknown_nonce:
   * not one of ours or for another realm; wrong: the response does not verify (or
   * no such user); replayed: the same nonce and nc (or a lower nc) again.
   */
  | { ok: false; reason: 'missing' | 'malformed' | 'stale' | 'unknown_nonce' | 'wrong' | 'replayed'; username?: string };

/** What a verification needs from the request. */
export interface DigestRequest {
  method: string;
  /** The request-target as received (RFC 7616 §3.4.6: digest-uri must name it). */
  url: string;
  authorization: string | undefined;
}

export class DigestAuthenticator {
  private readonly secret: Buffer;
  /** nonce → { highest nc accepted, expiry ms }: only nonces that authenticated someone. */
  private readonly used = new Map<string, { nc: number; exp: number }>();

  constructor(
    private readonly clock: Clock,
    private readonly opts: { nonceLifetimeS?: number; maxUsedNonces?: number; secret?: Buffer } = {},
  ) {
    this.secret = opts.secret ?? randomBytes(32);
  }

  private get lifetimeMs(): number {
    return (this.opts.nonceLifetimeS ?? 300) * 1000;
  }

  /** A fresh nonce for `realm`: base64url(expiry u32 s || 12 random bytes || HMAC-SHA256(..)[0..16]). */
  nonce(realm: string): string {
    const b = Buffer.alloc(32);
    b.writeUInt32BE(Math.floor((this.clock.now() + this.lifetimeMs) / 1000) >>> 0, 0);
    randomBytes(12).copy(b, 4);
    this.mac(b.subarray(0, 16), realm).copy(b, 16, 0, 16);
    return b.toString('base64url');
  }

  /** RFC 7616 §3.3: opaque is passed back unchanged; ours is bound to the nonce. */
  private opaque(nonce: string): string {
    return createHmac('sha256', this.secret).update('opaque:').update(nonce).digest('base64url').slice(0, 22);
  }

  /**
   * The `WWW-Authenticate` value (RFC 7616 §3.3) with a fresh nonce:
   * `Digest realm="...", qop="auth", algorithm=SHA-256, nonce="...", opaque="..."`.
   */
  challenge(realm: string, stale = false): string {
    const nonce = this.nonce(realm);
    return (
      `Digest realm=${quote(realm)}, qop="auth", algorithm=${DIGEST_ALGORITHM}, nonce=${quote(nonce)}, opaque=${quote(this.opaque(nonce))}` +
      (stale ? ', stale=true' : '')
    );
  }

  private checkNonce(nonce: string, realm: string): 'ok' | 'stale' | 'unknown_nonce' {
    if (nonce.length !== 43) return 'unknown_nonce';
    const b = Buffer.from(nonce, 'base64url');
    if (b.length !== 32) return 'unknown_nonce';
    const mac = this.mac(b.subarray(0, 16), realm).subarray(0, 16);
    if (!timingSafeEqual(mac, b.subarray(16, 32))) return 'unknown_nonce';
    return b.readUInt32BE(0) * 1000 > this.clock.now() ? 'ok' : 'stale';
  }

  private mac(data: Buffer, realm: string): Buffer {
    return createHmac('sha256', this.secret).update(data).update('\0').update(realm, 'utf8').digest();
  }

  /**
   * Verifies an `Authorization: Digest ...` for `realm`. `ha1Of(username)` gives HA1
   * (RFC 7616 §3.4.2) or null for an unknown user (then the answer is `wrong`, after the
   * same work, so users cannot be told apart). The nc is recorded only for a response
   * that verifies: a wrong answer cannot burn a client's counter.
   */
  async verify(
    req: DigestRequest,
    realm: string,
    ha1Of: (username: string) => Promise<string | null> | string | null,
  ): Promise<DigestResult> {
    if (!req.authorization) return { ok: false, reason: 'missing' };
    if (!/^\s*digest(\s|$)/i.test(req.authorization)) return { ok: false, reason: 'missing' };
    const h = parseAuthHeader(req.authorization);
    if (!h) return { ok: false, reason: 'malformed' };
    const p = h.params;
    let username = p.get('username');
    const ext = p.get('username*');
    // RFC 7616 §3.4.4: username and username* are mutually exclusive.
    if (ext !== undefined) {
      if (username !== undefined) return { ok: false, reason: 'malformed' };
      username = decodeExtValue(ext) ?? undefined;
    }
    const nonce = p.get('nonce');
    const nc = p.get('nc');
    const cnonce = p.get('cnonce');
    const qop = p.get('qop');
    const uri = p.get('uri');
    const response = p.get('response');
    const algorithm = p.get('algorithm') ?? 'MD5'; // RFC 7616 §3.3: absent means MD5
    if (!username || !nonce || !nc || !cnonce || !qop || !uri || !response) return { ok: false, reason: 'malformed', username };
    // We offer SHA-256 and qop=auth only (core.md §3), no userhash (RFC 7616 §3.4.4).
    if (algorithm.toUpperCase() !== DIGEST_ALGORITHM || qop !== 'auth' || p.get('userhash') === 'true')
      return { ok: false, reason: 'malformed', username };
    if (p.get('realm') !== realm) return { ok: false, reason: 'unknown_nonce', username };
    // RFC 7616 §3.4: nc is 8 hex digits.
    if (!/^[0-9a-fA-F]{8}$/.test(nc) || !/^[0-9a-f]{64}$/i.test(response) || cnonce.length > 256)
      return { ok: false, reason: 'malformed', username };
    // RFC 7616 §3.4.6: the digest-uri must be the request-target.
    if (uri !== req.url) return { ok: false, reason: 'malformed', username };
    const opaque = p.get('opaque');
    const n = this.checkNonce(nonce, realm);
    if (n === 'unknown_nonce' || (opaque !== undefined && opaque !== this.opaque(nonce)))
      return { ok: false, reason: 'unknown_nonce', username };
    if (n === 'stale') return { ok: false, reason: 'stale', username };
    const known = await ha1Of(username);
    const ha1 = known ?? sha256hex(randomBytes(16).toString('hex'));
    const expected = digestResponse({ ha1, nonce, nc, cnonce, qop, method: req.method, uri });
    const good = timingSafeEqual(Buffer.from(expected, 'hex'), Buffer.from(response.toLowerCase(), 'hex'));
    if (!good || known === null) return { ok: false, reason: 'wrong', username };
    const count = parseInt(nc, 16);
    const prev = this.used.get(nonce);
    if (prev && count <= prev.nc) return { ok: false, reason: 'replayed', username };
    // A nonce issued before the table last overflowed may have been forgotten: refused
    // as stale (the client gets a fresh nonce), never accepted twice.
    if (!prev && Buffer.from(nonce, 'base64url').readUInt32BE(0) * 1000 <= this.evictedUntil)
      return { ok: false, reason: 'stale', username };
    this.remember(nonce, count);
    return { ok: true, username, nonce, nc: count };
  }

  private remember(nonce: string, nc: number): void {
    const now = this.clock.now();
    const max = this.opts.maxUsedNonces ?? 100_000;
    if (!this.used.has(nonce) && this.used.size >= max) {
      for (const [k, v] of this.used) if (v.exp <= now) this.used.delete(k);
      // Still full: the oldest is forgotten, and every nonce expiring no later than it
      // is refused from now on (see verify), so forgetting never re-opens a replay.
      if (this.used.size >= max) {
        const [oldest, v] = this.used.entries().next().value as [string, { exp: number }];
        this.used.delete(oldest);
        this.evictedUntil = Math.max(this.evictedUntil, v.exp);
      }
    }
    const b = Buffer.from(nonce, 'base64url');
    this.used.set(nonce, { nc, exp: b.readUInt32BE(0) * 1000 });
  }

  /** Nonces expiring at or before this (ms) are refused unless remembered (set when the table overflows). */
  private evictedUntil = 0;

  get usedNonces(): number {
    return this.used.size;
  }
}
