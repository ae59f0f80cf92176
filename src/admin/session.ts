import { randomBytes } from 'node:crypto';
import { secretDigest, secretMatches } from './token.js';

/**
 * Dashboard sessions (issue 14): a random session id in an HttpOnly, SameSite=Strict
 * cookie (RFC 6265 §4.1.2.5-6; SameSite per RFC 6265bis §5.4.7), a CSRF token bound to
 * the session, kept in a bounded map that forgets expired and oldest sessions.
 * Used by the dashboard (dashboard.ts) on the admin listener.
 */
export const SESSION_COOKIE = 'gh_session';

interface Session {
  csrf: string;
  expiresAt: number;
}

export class SessionStore {
  private readonly sessions = new Map<string, Session>();
  constructor(
    private readonly maxSessions = 64,
    private readonly ttlMs = 8 * 3600_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** A new session: its id (cookie value) and CSRF token. The oldest goes when full. */
  create(): { id: string; csrf: string } {
    this.sweep();
    while (this.sessions.size >= this.maxSessions) this.sessions.delete(this.sessions.keys().next().value!);
    const id = randomBytes(32).toString('base64url');
    const csrf = randomBytes(32).toString('base64url');
    this.sessions.set(id, { csrf, expiresAt: this.now() + this.ttlMs });
    return { id, csrf };
  }

  /** The live session of a Cookie header, or undefined. */
  lookup(cookieHeader: string | undefined): { id: string; csrf: string } | undefined {
    const id = cookieValue(cookieHeader, SESSION_COOKIE);
    if (!id) return undefined;
    const s = this.sessions.get(id);
    if (!s) return undefined;
    if (s.expiresAt <= this.now()) {
      this.sessions.delete(id);
      return undefined;
    }
    return { id, csrf: s.csrf };
  }

  /** Whether `sent` (the X-CSRF-Token header) is the session's token. */
  csrfMatches(session: { csrf: string }, sent: string | undefined): boolean {
    return secretMatches(sent, secretDigest(session.csrf));
  }

  destroy(id: string): void {
    this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.sessions) if (s.expiresAt <= t) this.sessions.delete(id);
  }
}

/** Set-Cookie for a session id (RFC 6265 §4.1); Secure on an https:// listener. */
export function sessionCookie(id: string, secure: boolean, maxAgeSeconds: number): string {
  return `${SESSION_COOKIE}=${id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}${secure ? '; Secure' : ''}`;
}

/** One cookie's value from a Cookie header (RFC 6265 §5.4). */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
