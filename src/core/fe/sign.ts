import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Director↔FE request authentication with the shared `core.pool_secret`: never open.
 *
 * Each request carries
 *   X-Gatehouse-Time:  integer Unix seconds
 *   X-Gatehouse-Nonce: 16 random bytes, base64url
 *   X-Gatehouse-Sig:   base64url HMAC-SHA256 (RFC 2104) under the secret over
 *                      "gatehouse-pool v1\n" METHOD "\n" PATH "\n" TIME "\n" NONCE "\n" hex(SHA-256(body))
 * The FE rejects a time more than MAX_SKEW_S from its clock (stale) and a nonce it has
 * seen within that window (replayed); the nonce cache is bounded. Responses are signed the
 * same way over the status and body with the request's nonce, so a director cannot be fed
 * an answer (HA1 in particular) by anyone but a pool member.
 */
export const MAX_SKEW_S = 30;
export const MAX_NONCES = 100_000;

export const H_TIME = 'x-gatehouse-time';
export const H_NONCE = 'x-gatehouse-nonce';
export const H_SIG = 'x-gatehouse-sig';

function mac(secret: string, parts: string[]): string {
  return createHmac('sha256', secret)
    .update(['gatehouse-pool v1', ...parts].join('\n'))
    .digest('base64url');
}

const bodyHash = (body: string) => createHash('sha256').update(body, 'utf8').digest('hex');

export function signRequest(secret: string, method: string, path: string, body: string, nowS: number): Record<string, string> {
  const nonce = randomBytes(16).toString('base64url');
  const time = String(nowS);
  return { [H_TIME]: time, [H_NONCE]: nonce, [H_SIG]: mac(secret, [method.toUpperCase(), path, time, nonce, bodyHash(body)]) };
}

export function signResponse(secret: string, nonce: string, status: number, body: string): string {
  return mac(secret, ['response', nonce, String(status), bodyHash(body)]);
}

function eq(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export function verifyResponse(secret: string, nonce: string, status: number, body: string, sig: string | undefined): boolean {
  return typeof sig === 'string' && eq(sig, signResponse(secret, nonce, status, body));
}

export type VerifyResult = { ok: true; nonce: string } | { ok: false; reason: 'unsigned' | 'bad_signature' | 'stale' | 'replayed' };

/** The FE's side: verifies signatures and remembers nonces for the skew window (bounded). */
export class RequestVerifier {
  private readonly seen = new Map<string, number>();

  constructor(private readonly secret: string) {
    if (secret.length < 16) throw new Error('core.pool_secret: at least 16 characters');
  }

  verify(method: string, path: string, headers: Record<string, string | string[] | undefined>, body: string, nowS: number): VerifyResult {
    const time = headers[H_TIME];
    const nonce = headers[H_NONCE];
    const sig = headers[H_SIG];
    if (typeof time !== 'string' || typeof nonce !== 'string' || typeof sig !== 'string') return { ok: false, reason: 'unsigned' };
    if (!/^\d{1,12}$/.test(time) || !/^[A-Za-z0-9_-]{16,64}$/.test(nonce)) return { ok: false, reason: 'bad_signature' };
    if (!eq(sig, mac(this.secret, [method.toUpperCase(), path, time, nonce, bodyHash(body)])))
      return { ok: false, reason: 'bad_signature' };
    if (Math.abs(nowS - Number(time)) > MAX_SKEW_S) return { ok: false, reason: 'stale' };
    this.expire(nowS);
    if (this.seen.has(nonce)) return { ok: false, reason: 'replayed' };
    if (this.seen.size >= MAX_NONCES) {
      // Full: the oldest goes (Map keeps insertion order); its time is outside what a
      // replay could still use only when the cache is sized for the request rate.
      const first = this.seen.keys().next().value;
      if (first !== undefined) this.seen.delete(first);
    }
    this.seen.set(nonce, Number(time));
    return { ok: true, nonce };
  }

  private expire(nowS: number): void {
    for (const [n, t] of this.seen) {
      if (t >= nowS - MAX_SKEW_S) break;
      this.seen.delete(n);
    }
  }
}
