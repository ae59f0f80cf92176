import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../util/clock.js';

/**
 * Long-term credential support for the TURN server (RFC 8489 §9.2): nonces with the
 * "obMatJos2" security-feature cookie, and TURN REST ephemeral credentials.
 */

// RFC 8489 §9.2 nonce cookie and security features: codec facts, in src/wire/stun-nonce.ts
// (the key agent's client reads them too).
export {
  NONCE_COOKIE,
  FEATURE_PASSWORD_ALGORITHMS,
  FEATURE_USERNAME_ANONYMITY,
  encodeFeatures,
  nonceFeatures,
} from '../wire/stun-nonce.js';
import { NONCE_COOKIE, FEATURE_PASSWORD_ALGORITHMS, encodeFeatures } from '../wire/stun-nonce.js';

export type NonceCheck = 'ok' | 'stale' | 'invalid';

/**
 * Stateless nonces: cookie + features + base64url(expiry u32 seconds || 6 random bytes
 * || HMAC-SHA256(server secret, expiry || random || client IP)[0..12]). They expire after
 * `lifetimeS` (config.turn.nonce_lifetime) by the injected clock and are bound to the
 * client's IP address (RFC 8489 §9.2: nonces are best bound to the client).
 */
export class NonceManager {
  private readonly secret: Buffer;
  private readonly prefix: string;

  constructor(
    private readonly clock: Clock,
    private readonly lifetimeS: number,
    features = FEATURE_PASSWORD_ALGORITHMS,
    secret: Buffer = randomBytes(32),
  ) {
    this.secret = secret;
    this.prefix = NONCE_COOKIE + encodeFeatures(features);
  }

  issue(clientIp: string): string {
    const body = Buffer.alloc(22);
    const expiry = Math.floor(this.clock.now() / 1000) + this.lifetimeS;
    body.writeUInt32BE(expiry >>> 0, 0);
    randomBytes(6).copy(body, 4);
    this.mac(body.subarray(0, 10), clientIp).copy(body, 10, 0, 12);
    return this.prefix + body.toString('base64url');
  }

  check(nonce: string, clientIp: string): NonceCheck {
    if (!nonce.startsWith(this.prefix) || nonce.length > 64) return 'invalid';
    const body = Buffer.from(nonce.slice(this.prefix.length), 'base64url');
    if (body.length !== 22) return 'invalid';
    const mac = this.mac(body.subarray(0, 10), clientIp).subarray(0, 12);
    if (!timingSafeEqual(mac, body.subarray(10, 22))) return 'invalid';
    const expiry = body.readUInt32BE(0);
    return Math.floor(this.clock.now() / 1000) < expiry ? 'ok' : 'stale';
  }

  private mac(data: Buffer, clientIp: string): Buffer {
    return createHmac('sha256', this.secret).update(data).update(clientIp).digest();
  }
}

/**
 * RFC 8489 §9.2.2 long-term keys computed ahead for `realm` (MD5, and SHA-256 for
 * PASSWORD-ALGORITHM 0x0002, §18.5): a user known by its keys, never its password.
 */
export interface LongTermKeys {
  realm: string;
  md5: Buffer;
  sha256: Buffer;
}

/** A user with a password, or (cluster users) only the keys derived from it. */
export interface UserRecord {
  name: string;
  password?: string;
  keys?: LongTermKeys;
  groups: string[];
}

export interface UserDirectory {
  lookup(name: string): UserRecord | undefined;
}

export interface ResolvedCredential {
  /** The USERNAME as sent (REST: "expiry:user"); what 441 compares. */
  username: string;
  /** The account the allocation is charged to (REST: the part after the colon). */
  user: string;
  groups: string[];
  /** The password the key is derived from (RFC 8489 §9.2.2), or (keys set) none. */
  password?: string;
  /** A user known by its precomputed long-term keys (no password). */
  keys?: LongTermKeys;
  rest: boolean;
  /** A conference guest (REST username `EXPIRY:guest/CONFERENCE/IDENTITY`, core.md §8). */
  guest?: true;
  /** The conference a guest credential is stamped with (core.md §8), or the core's issue record says a user's is for. */
  conference?: string;
  /** The room a user's credential was issued for (the core's issue record, core.md §7). */
  room?: string;
  /** The organisation of a user the core admitted by transfer (core.md §6). */
  org?: string;
  /** REST credentials: EXPIRY (Unix seconds), what revocation compares (src/turn/revoked.ts). */
  expiry?: number;
}

/**
 * What the conferencing core recorded when it issued a user's REST credential
 * (src/core/turn-credentials.ts contextOf): the conference or room it is for, the user's
 * groups as the core's directory says at issue time, and the organisation of a
 * transferred user. Guests need none: their username says it all (core.md §8).
 */
export interface IssuedContext {
  conference?: string;
  room?: string;
  groups?: readonly string[];
  org?: string;
}

/** Looks up the core's record of a REST username (`EXPIRY:USER`), or undefined. */
export type IssuedContextLookup = (username: string) => IssuedContext | undefined;

export type CredentialResult = { ok: true; cred: ResolvedCredential } | { ok: false; reason: 'unknown_user' | 'rest_expired' };

const REST_RE = /^(\d{1,12})(?::(.*))?$/s;

/** The prefix of a guest's REST user part (core.md §8). */
export const GUEST_PREFIX = 'guest/';

/**
 * `guest/CONFERENCE/IDENTITY` (core.md §8), or null. CONFERENCE is non-empty and has no
 * `/`; IDENTITY is 1 to 64 characters with no `/`, `:` or control character (core.md §4).
 * Anything else that starts with `guest/` is malformed: null, and resolveCredential then
 * treats it as a REST user name that gets no directory groups (never a guest, never a user).
 */
export function parseGuestUser(user: string): { conference: string; identity: string } | null {
  if (!user.startsWith(GUEST_PREFIX)) return null;
  const rest = user.slice(GUEST_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return null;
  const conference = rest.slice(0, slash);
  const identity = rest.slice(slash + 1);
  // eslint-disable-next-line no-control-regex
  if (conference.length > 128 || /[\u0000-\u001f\u007f]/.test(conference)) return null;
  // eslint-disable-next-line no-control-regex
  if (!identity.length || [...identity].length > 64 || /[/:\u0000-\u001f\u007f]/.test(identity)) return null;
  return { conference, identity };
}

/** The REST user part for a guest (core.md §8): `guest/CONFERENCE/IDENTITY`. */
export function guestUser(conference: string, identity: string): string {
  return `${GUEST_PREFIX}${conference}/${identity}`;
}

/** TURN REST API password: base64(HMAC-SHA1(secret, username)). */
export function restPassword(secret: string, username: string): string {
  return createHmac('sha1', secret).update(username, 'utf8').digest('base64');
}

/**
 * Maps a USERNAME to its password. With a REST secret, "expiry:user" (expiry in unix
 * seconds) names an ephemeral credential whose password is restPassword(); configured
 * user names never contain ':' (config validation), so the two cannot collide.
 */
export function resolveCredential(
  username: string,
  users: UserDirectory,
  restSecret: string | null,
  nowMs: number,
  issued?: IssuedContextLookup | null,
): CredentialResult {
  if (restSecret) {
    const m = REST_RE.exec(username);
    if (m) {
      const expiry = Number(m[1]);
      if (expiry * 1000 <= nowMs) return { ok: false, reason: 'rest_expired' };
      const user = m[2] ?? username;
      const password = restPassword(restSecret, username);
      // core.md §8: `EXPIRY:guest/CONFERENCE/IDENTITY` is a conference guest. The account is
      // the whole `guest/CONFERENCE/IDENTITY` (quotas and blocks are per guest identity, and
      // it cannot be mistaken for a directory user, whose groups it never gets).
      const g = m[2] !== undefined ? parseGuestUser(m[2]) : null;
      if (g) return { ok: true, cred: { username, user, groups: [], password, rest: true, guest: true, conference: g.conference, expiry } };
      const named = m[2] !== undefined && !m[2].startsWith(GUEST_PREFIX);
      // A credential the core issued: its record names the conference or room, and the
      // groups the core's directory gave the user then (LDAP: they decide policy, issue 12).
      const ctx = named ? issued?.(username) : undefined;
      const rec = named && !ctx?.groups ? users.lookup(m[2]!) : undefined;
      return {
        ok: true,
        cred: {
          username,
          user,
          groups: ctx?.groups ? [...ctx.groups] : (rec?.groups ?? []),
          password,
          rest: true,
          expiry,
          ...(ctx?.conference !== undefined ? { conference: ctx.conference } : {}),
          ...(ctx?.room !== undefined ? { room: ctx.room } : {}),
          ...(ctx?.org !== undefined ? { org: ctx.org } : {}),
        },
      };
    }
  }
  const rec = users.lookup(username);
  if (!rec) return { ok: false, reason: 'unknown_user' };
  if (rec.password) return { ok: true, cred: { username, user: rec.name, groups: rec.groups, password: rec.password, rest: false } };
  if (rec.keys) return { ok: true, cred: { username, user: rec.name, groups: rec.groups, keys: rec.keys, rest: false } };
  return { ok: false, reason: 'unknown_user' };
}
