/**
 * Core session tokens (core.md §2): opaque bearer tokens (RFC 6750) of 256 random bits,
 * kept in memory only as SHA-256 hashes, with their claims. Short-lived (core.token_ttl,
 * default 1 h), revocable one by one or by predicate (all tokens of a guest in a
 * conference, all tokens stamped with a room for one user), bounded in number.
 *
 * Listeners registered with onRevoke() hear of every token that stops being valid
 * before its time (revoked or evicted): signalling closes the connections it carries.
 * Expiry is not announced: holders re-check with verify() (signalling on each message).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Clock } from '../util/clock.js';
import { forbidden, unauthenticated } from './errors.js';
import { sourceOf } from './http.js';

/** What counts failed authentications per source (core.md §2; src/core/ratelimit.ts FailureLimiter). */
export interface FailureCounter {
  check(source: string): void;
  fail(source: string): void;
}

export interface TokenClaims {
  kind: 'user' | 'guest';
  /** The user name, or for a guest its identity's subject (`guest/CONFERENCE/IDENTITY`). */
  sub: string;
  groups: string[];
  /** Stamped for guests: the one conference the token is good for (core.md §2, §4). */
  conference?: string;
  /** Stamped for invitees: the one room the token is good for (core.md §7). */
  room?: string;
  /** A guest's chosen identity in its conference. */
  identity?: string;
  /** The organisation a transferred user comes from (core.md §6). */
  org?: string;
  /** Unix seconds (core.md §2). */
  iat: number;
  exp: number;
}

export type NewClaims = Omit<TokenClaims, 'iat' | 'exp'>;

/** The hash a token is kept under (also a safe handle to name it in logs: it is not the token). */
export function tokenId(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('base64url');
}

export const TOKEN_PREFIX = 'ght_';

export class TokenService {
  private readonly byHash = new Map<string, TokenClaims>();
  private readonly listeners = new Set<(claims: TokenClaims, id: string) => void>();
  readonly ttlS: number;
  readonly max: number;

  constructor(
    private readonly clock: Clock,
    opts: { ttlS?: number; max?: number; onListenerError?: (err: unknown) => void; limiter?: FailureCounter } = {},
  ) {
    this.limiter = opts.limiter ?? null;
    this.ttlS = opts.ttlS ?? 3600;
    this.max = opts.max ?? 100_000;
    this.onListenerError = opts.onListenerError ?? (() => {});
  }
  private readonly onListenerError: (err: unknown) => void;
  /** core.md §2 "on any mechanism": an unknown, revoked or expired bearer token is a failed authentication. */
  readonly limiter: FailureCounter | null;

  private nowS(): number {
    return Math.floor(this.clock.now() / 1000);
  }

  /** A new token for these claims; `ttlS` shortens (never extends beyond core.token_ttl) its life. */
  issue(claims: NewClaims, ttlS?: number): { token: string; claims: TokenClaims } {
    const now = this.nowS();
    const life = Math.max(1, Math.min(ttlS ?? this.ttlS, this.ttlS));
    const full: TokenClaims = { ...claims, groups: [...claims.groups], iat: now, exp: now + life };
    if (this.byHash.size >= this.max) this.sweep();
    if (this.byHash.size >= this.max) {
      // Bounded: the oldest token goes (and its holders hear of it).
      const [oldest, c] = this.byHash.entries().next().value as [string, TokenClaims];
      this.byHash.delete(oldest);
      this.notify(c, oldest);
    }
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    this.byHash.set(tokenId(token), full);
    return { token, claims: full };
  }

  /** The claims of a live token, or null (unknown, revoked or expired). */
  verify(token: string | null | undefined): TokenClaims | null {
    if (!token || token.length > 200) return null;
    const id = tokenId(token);
    const c = this.byHash.get(id);
    if (!c) return null;
    if (c.exp <= this.nowS()) {
      this.byHash.delete(id);
      return null;
    }
    return c;
  }

  /** Revokes one token; true when it was live. */
  revoke(token: string): boolean {
    const id = tokenId(token);
    const c = this.byHash.get(id);
    if (!c) return false;
    this.byHash.delete(id);
    this.notify(c, id);
    return true;
  }

  /** Revokes every token whose claims match; returns how many. */
  revokeWhere(pred: (c: TokenClaims) => boolean): number {
    let n = 0;
    for (const [id, c] of [...this.byHash]) {
      if (!pred(c)) continue;
      this.byHash.delete(id);
      this.notify(c, id);
      n++;
    }
    return n;
  }

  /** Hears of every token revoked or evicted before its expiry; returns an unsubscribe function. */
  onRevoke(listener: (claims: TokenClaims, id: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Drops expired tokens. */
  sweep(): number {
    const now = this.nowS();
    let n = 0;
    for (const [id, c] of this.byHash) {
      if (c.exp <= now) {
        this.byHash.delete(id);
        n++;
      }
    }
    return n;
  }

  get size(): number {
    return this.byHash.size;
  }

  private notify(c: TokenClaims, id: string): void {
    for (const l of this.listeners) {
      try {
        l(c, id);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}

/** The token of `Authorization: Bearer TOKEN` (RFC 6750 §2.1), or null. */
export function bearerToken(req: IncomingMessage): string | null {
  const h = req.headers.authorization;
  if (!h) return null;
  const m = /^Bearer\s+([A-Za-z0-9\-._~+/]+=*)\s*$/i.exec(h);
  return m ? m[1]! : null;
}

/** The claims of the request's bearer token, or 401 unauthenticated (core.md §2). */
export function requireToken(req: IncomingMessage, tokens: TokenService): TokenClaims {
  const t = bearerToken(req);
  if (!t) throw unauthenticated();
  const source = tokens.limiter ? sourceOf(req) : '';
  tokens.limiter?.check(source);
  const c = tokens.verify(t);
  // RFC 6750 §3.1: invalid_token for an unknown, revoked or expired token.
  if (!c) {
    tokens.limiter?.fail(source);
    throw unauthenticated('the token is unknown, revoked or expired', 'Bearer error="invalid_token"');
  }
  return c;
}

/** A user's own token (not a guest's, not one stamped with a room): else 403 (core.md §2 "a user-only call"). */
export function requireUser(req: IncomingMessage, tokens: TokenService): TokenClaims {
  const c = requireToken(req, tokens);
  if (c.kind !== 'user' || c.conference !== undefined || c.room !== undefined) throw forbidden('this call needs a user token');
  return c;
}
