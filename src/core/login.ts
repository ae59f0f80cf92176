/**
 * POST /v1/login (core.md §3) for the gateway's own users: no Authorization → 401 with
 * one WWW-Authenticate per enabled mechanism (here RFC 7616 Digest SHA-256, realm =
 * config `realm`); the authorized retry → 200 {token, user, groups, expires}. A wrong
 * answer is 401 again with fresh challenges; the same nonce and nc twice is 401
 * `replayed`; failures count toward the per-source limit (core.md §2, 429) and toward
 * the claimed user's lockout (src/core/ratelimit.ts UserLockout). Every success and
 * failure is an `auth` event (src/core/auth-events.ts), without secrets.
 *
 * `GET /v1/auth/challenge` (core.md §5) issues the single-use challenges that
 * certificate login and authentication transfer answer (src/core/challenges.ts).
 *
 * Other mechanisms (Negotiate, Basic over LDAP, Gatehouse-Cert) register a
 * LoginMechanism with addLoginMechanism() (the directory issue).
 */
import type { IncomingMessage } from 'node:http';
import type { CoreContext, CoreModule } from './director.js';
import { CoreError } from './errors.js';
import { digestHa1, parseAuthHeader } from './digest.js';
import type { RequestContext } from './http.js';
import type { TokenClaims } from './tokens.js';
import { emitAuthEvent } from './auth-events.js';

export interface LoginSuccess {
  user: string;
  groups: string[];
  org?: string;
  /** Headers of the 200 (Negotiate's mutual-authentication token, RFC 4559 §4.2). */
  headers?: Record<string, string>;
}

/** One login mechanism: its challenge (or null when disabled) and its verification of an Authorization it recognises. */
export interface LoginMechanism {
  /** The auth-scheme it answers (case-insensitive), e.g. `Digest`. */
  scheme: string;
  /** The WWW-Authenticate value of a fresh challenge, or null when not offered now (e.g. Basic without HTTPS). */
  challenge(ctx: RequestContext): string | null;
  /**
   * Verifies the Authorization; a failure throws CoreError (`unauthenticated`,
   * `replayed`, `untrusted`); the caller adds fresh challenges and counts it.
   */
  verify(ctx: RequestContext): Promise<LoginSuccess>;
  /**
   * The user name the Authorization claims before it is verified (Digest `username`,
   * Basic's user part), for the per-user lockout; null when the scheme names nobody
   * up front (Negotiate, certificates: their failures count per source only).
   */
  claimedUser?(ctx: RequestContext): string | null;
}

const MECHANISMS = new WeakMap<CoreContext, LoginMechanism[]>();

export function addLoginMechanism(core: CoreContext, m: LoginMechanism): void {
  const list = MECHANISMS.get(core) ?? [];
  list.push(m);
  MECHANISMS.set(core, list);
}

/** Names already logged by keysOnlyUser (bounded: a client may claim any name). */
const KEYS_ONLY_LOGGED = new WeakMap<CoreContext, Set<string>>();

/**
 * A cluster user (`gatehouse user add`) is kept as its TURN long-term keys, never its
 * password (README "Cluster"), and RFC 7616 Digest needs H(user:realm:password) over
 * the clear password: no Digest login for it. The client gets the usual refusal (no hint
 * that the name exists); the operator one log line per name.
 */
function keysOnlyUser(core: CoreContext, name: string): void {
  let seen = KEYS_ONLY_LOGGED.get(core);
  if (!seen) KEYS_ONLY_LOGGED.set(core, (seen = new Set()));
  if (seen.has(name) || seen.size >= 1024) return;
  seen.add(name);
  core.log.warn(
    { user: name },
    'login: this user is a cluster user (gatehouse user add), kept without its password: Digest login is not possible for it; add it under "users:" in the configuration, or use another login',
  );
}

/** Digest SHA-256 over the gateway's own users' passwords (RFC 7616 §3.4). */
export function digestMechanism(core: CoreContext): LoginMechanism {
  const realm = core.cfg.realm;
  return {
    scheme: 'Digest',
    challenge: () => core.digest.challenge(realm),
    claimedUser(ctx) {
      const h = ctx.req.headers.authorization;
      const p = h ? parseAuthHeader(h) : null;
      const u = p?.scheme.toLowerCase() === 'digest' ? p.params.get('username') : undefined;
      return typeof u === 'string' && u.length ? u : null;
    },
    async verify(ctx) {
      const r = await core.digest.verify(
        { method: ctx.req.method ?? 'POST', url: ctx.req.url ?? '', authorization: ctx.req.headers.authorization },
        realm,
        (name) => {
          const u = core.users.lookup(name);
          if (u && !u.password) keysOnlyUser(core, u.name);
          return u?.password ? digestHa1(u.name, realm, u.password) : null;
        },
      );
      if (r.ok) {
        const u = core.users.lookup(r.username)!;
        return { user: u.name, groups: [...u.groups] };
      }
      // RFC 7616 §3.3: an expired nonce of ours gets stale=true (the client retries with the new one).
      if (r.reason === 'stale')
        throw Object.assign(
          new CoreError('unauthenticated', 'the nonce has expired', { 'www-authenticate': core.digest.challenge(realm, true) }),
          {
            notCounted: true,
          },
        );
      if (r.reason === 'replayed') throw new CoreError('replayed', 'this nonce and nc were already used');
      throw new CoreError(
        'unauthenticated',
        r.reason === 'malformed' ? 'the Digest credentials are malformed' : 'the credentials are not valid',
      );
    },
  };
}

/** Every enabled mechanism's fresh challenge (core.md §3: one WWW-Authenticate per mechanism). */
function challenges(core: CoreContext, ctx: RequestContext, except?: string): string[] {
  const out: string[] = [];
  for (const m of MECHANISMS.get(core) ?? []) {
    if (except && m.scheme.toLowerCase() === except) continue;
    const c = m.challenge(ctx);
    if (c) out.push(c);
  }
  return out;
}

/**
 * Schemes of the IANA HTTP Authentication Scheme Registry (RFC 9110 §16.4) that an auth
 * event may name when the core does not offer them. Anything else is `other`: a
 * scheme-less Authorization (a bare token or password) would otherwise be the "scheme",
 * and the secret itself would reach the event.
 */
const REGISTERED_SCHEMES = new Set([
  'basic',
  'bearer',
  'concealed',
  'digest',
  'dpop',
  'gnap',
  'hoba',
  'mutual',
  'negotiate',
  'ntlm',
  'oauth',
  'privatetoken',
  'scram-sha-1',
  'scram-sha-256',
  'vapid',
  'gatehouse-cert',
]);

/** The auth-scheme of the Authorization header, lowercased, or null. */
function schemeOf(req: IncomingMessage): string | null {
  const h = req.headers.authorization;
  if (!h) return null;
  return parseAuthHeader(h)?.scheme.toLowerCase() ?? h.trim().split(/\s+/)[0]!.toLowerCase();
}

/** The 200 body of a login (also used by other ways in: certificates, transfer). */
export function loginBody(
  core: CoreContext,
  who: LoginSuccess,
): { token: string; user: string; groups: string[]; expires: number; org?: string } {
  const claims: Omit<TokenClaims, 'iat' | 'exp'> = {
    kind: 'user',
    sub: who.user,
    groups: who.groups,
    ...(who.org ? { org: who.org } : {}),
  };
  const { token, claims: c } = core.tokens.issue(claims);
  return { token, user: who.user, groups: [...who.groups], expires: c.exp, ...(who.org ? { org: who.org } : {}) };
}

export const loginModule: CoreModule = (core) => {
  addLoginMechanism(core, digestMechanism(core));
  // core.md §5: a single-use challenge bound to the requester's address (src/core/challenges.ts).
  core.http.add('GET', '/v1/auth/challenge', (ctx) => {
    ctx.req.resume();
    const c = core.challenges.issue(ctx.source);
    ctx.send(200, { challenge: c.challenge, expires: c.expires, org: core.cfg.core.org });
  });
  core.http.add('POST', '/v1/login', async (ctx) => {
    core.limiter.check(ctx.source);
    ctx.req.resume(); // no body is read: the credentials are in Authorization
    const scheme = schemeOf(ctx.req);
    const mech = scheme ? (MECHANISMS.get(core) ?? []).find((m) => m.scheme.toLowerCase() === scheme) : undefined;
    if (!scheme)
      throw new CoreError('unauthenticated', 'authenticate with one of the offered mechanisms', {
        'www-authenticate': challenges(core, ctx),
      });
    if (!mech) {
      core.limiter.fail(ctx.source);
      emitAuthEvent(core, ctx, {
        mechanism: REGISTERED_SCHEMES.has(scheme) ? scheme : 'other',
        result: 'failure',
        reason: 'unauthenticated',
      });
      throw new CoreError('unauthenticated', 'this authentication scheme is not offered', { 'www-authenticate': challenges(core, ctx) });
    }
    const claimed = mech.claimedUser?.(ctx) ?? null;
    if (claimed !== null) {
      try {
        core.lockout.check(claimed);
      } catch (err) {
        emitAuthEvent(core, ctx, { mechanism: mech.scheme, result: 'failure', reason: 'rate_limited', user: claimed });
        throw err;
      }
    }
    let who: LoginSuccess;
    try {
      who = await mech.verify(ctx);
    } catch (err) {
      if (!(err instanceof CoreError)) {
        // A mechanism's own fault (500 internal, http.ts): still a failed login, counted per
        // source (core.md §2) and reported, so an input that trips it cannot be retried freely.
        core.limiter.fail(ctx.source);
        emitAuthEvent(core, ctx, {
          mechanism: mech.scheme,
          result: 'failure',
          reason: 'internal',
          ...(claimed !== null ? { user: claimed } : {}),
        });
        throw err;
      }
      // An expired nonce is not a failed authentication (the password was not tried).
      if (!(err as { notCounted?: boolean }).notCounted) {
        // A mechanism's own 429 (Negotiate: too many logins in progress) tried no credential
        // either: not a failed authentication (core.md §2), or a busy NAT would lock itself out.
        const busy = err.code === 'rate_limited';
        if (!busy) core.limiter.fail(ctx.source);
        // A directory that cannot be reached (503) tried no password: it does not lock the
        // name out (an outage must not lock everyone out after it); the source still counts.
        if (claimed !== null && err.code !== 'unavailable' && !busy) core.lockout.fail(claimed);
        // A mechanism that learnt who it was (a verified Kerberos principal with no user
        // here) names them on the error as `user`.
        const named = (err as { user?: unknown }).user;
        const user = claimed ?? (typeof named === 'string' ? named : null);
        emitAuthEvent(core, ctx, { mechanism: mech.scheme, result: 'failure', reason: err.code, ...(user !== null ? { user } : {}) });
      }
      // A wrong answer is 401 again with fresh challenges (core.md §3); a mechanism's own
      // challenge in the error (Digest stale=true) replaces its plain one. 503 (directory
      // down) and 429 carry no challenge.
      if (err.status !== 401) throw err;
      const own = err.headers['www-authenticate'];
      const fresh = own
        ? [...(Array.isArray(own) ? own : [own]), ...challenges(core, ctx, mech.scheme.toLowerCase())]
        : challenges(core, ctx);
      throw new CoreError(err.code, err.message, { ...err.headers, 'www-authenticate': fresh }, err.status);
    }
    core.lockout.succeed(who.user);
    if (claimed !== null && claimed !== who.user) core.lockout.succeed(claimed);
    core.log.info({ user: who.user, mechanism: mech.scheme }, 'login');
    emitAuthEvent(core, ctx, {
      mechanism: mech.scheme,
      result: 'success',
      user: who.user,
      groups: who.groups,
      ...(who.org ? { org: who.org } : {}),
    });
    ctx.send(200, loginBody(core, who), who.headers);
  });
};
