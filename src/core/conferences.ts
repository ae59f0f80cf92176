/**
 * The director's side of conferences with anonymous guests (core.md §4, seed 000).
 *
 *   GET  /v1/conference-key                (user token)  → {public_key, fe}
 *   POST /v1/conferences                   (user token)  {fe, key, title?, expires?} → 201 {id, join_url}
 *   GET  /v1/conferences/{id}              (user token, or a guest token of this conference) → {id, title, expires, owner?}
 *   POST /v1/conferences/{id}/join         (no token: Digest, RFC 7616) → 200 {token, conference, identity, turn}
 *   POST /v1/conferences/{id}/leave        (guest token of this conference) → 204; the identity is free again
 *   DELETE /v1/conferences/{id}/guests/{identity}  (the conference's owner) → 204; the guest is removed
 *
 * The director never sees a conference key: the FE decrypts `key` (RSA-OAEP) and keeps K;
 * for a join the director asks that FE for HA1 of the identity and verifies the Digest
 * response itself. FE ids are opaque: HMAC-SHA256 under a director secret over the FE's
 * public-key fingerprint (they say nothing of the pool's URLs, order or size); a request
 * naming an id that is not a current pool member is `409 unknown_fe`.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { CoreContext } from './director.js';
import type { DigestAuthenticator } from './digest.js';
import { CoreError, badRequest, forbidden, notFound } from './errors.js';
import type { Route, RequestContext } from './http.js';
import type { FailureLimiter } from './ratelimit.js';
import { bearerToken, requireToken, requireUser, tokenId, type TokenClaims, type TokenService } from './tokens.js';
import { FeError, FrontEnd, type FeApi } from './fe/frontend.js';
import { RemoteFe } from './fe/client.js';
import { validIdentity } from './fe/keys.js';
import { emitAuthEvent, type AuthOutcome } from './auth-events.js';

/** A member of the pool, as the director knows it. */
interface Member {
  fe: FeApi;
  /** For logs only (never the opaque id's key). */
  label: string;
  info: { public_key: string; fingerprint: string; id: string } | null;
  down: boolean;
  /** Whether this run's reset of older claims reached the FE. */
  reset: boolean;
}

/** Conference → member cache (bounded; a miss asks every member). */
const MAX_ROUTES = 100_000;

export class FePool {
  private readonly members: Member[];
  private readonly routes = new Map<string, Member>();
  private rr = 0;
  /**
   * This director run: identity claims are held as `RUN.TOKEN-ID`. Tokens live in the
   * director's memory, so at start each FE frees the claims of earlier runs (else a guest
   * could not rejoin under its identity until the dead token's expiry).
   */
  readonly run = randomBytes(12).toString('base64url');

  constructor(
    fes: { fe: FeApi; label: string }[],
    /** Keys the opaque FE ids (core.pool_secret, or random per director). */
    private readonly idKey: string | Buffer,
    private readonly log: Logger,
  ) {
    if (fes.length === 0) throw new Error('FePool: at least one front end');
    this.members = fes.map((f) => ({ fe: f.fe, label: f.label, info: null, down: false, reset: false }));
  }

  private opaqueId(fingerprint: string): string {
    return createHmac('sha256', this.idKey).update('gatehouse-fe-id\0').update(fingerprint).digest('base64url').slice(0, 22);
  }

  private async load(m: Member): Promise<Member['info']> {
    try {
      const i = await m.fe.info();
      m.info = { ...i, id: this.opaqueId(i.fingerprint) };
      if (!m.reset) {
        const n = await m.fe.releaseOthers(this.run);
        m.reset = true;
        if (n > 0) this.log.info({ fe: m.label, released: n }, 'core: identities held by an earlier director run freed');
      }
      if (m.down) this.log.info({ fe: m.label }, 'core: front end is reachable again');
      m.down = false;
    } catch (err) {
      if (!m.down) this.log.warn({ fe: m.label, err: String((err as Error)?.message ?? err) }, 'core: front end unreachable');
      m.down = true;
    }
    return m.info;
  }

  /** Asks every member for its key (at start; members that are down are retried when needed). */
  async refresh(): Promise<void> {
    await Promise.all(this.members.map((m) => this.load(m)));
  }

  /** The next reachable member (round robin), with its public key. */
  async pick(): Promise<{ public_key: string; id: string }> {
    for (let i = 0; i < this.members.length; i++) {
      const m = this.members[this.rr++ % this.members.length]!;
      // Asked each time: a key is only handed out for an FE that answers now (and whose
      // key is still the one it had: an FE whose key changed gets a new id).
      const info = await this.load(m);
      if (info && !m.down) return { public_key: info.public_key, id: info.id };
    }
    throw new CoreError('internal', 'no front end is reachable', {}, 503);
  }

  /** The member an opaque id names, only when it is one of the pool (membership is verified before routing). */
  async byId(id: string): Promise<Member | null> {
    for (const m of this.members) if (m.info?.id === id) return m;
    // Maybe a member whose key the director has not read yet.
    await Promise.all(this.members.filter((m) => !m.info).map((m) => this.load(m)));
    for (const m of this.members) if (m.info?.id === id) return m;
    return null;
  }

  remember(conference: string, m: Member): void {
    if (this.routes.size >= MAX_ROUTES) this.routes.delete(this.routes.keys().next().value as string);
    this.routes.set(conference, m);
  }

  /** The member owning the conference, or null (no such conference, or its FE is down). */
  async owner(conference: string): Promise<{ member: Member; row: NonNullable<Awaited<ReturnType<FeApi['conference']>>> } | null> {
    const cached = this.routes.get(conference);
    if (cached) {
      const row = await cached.fe.conference(conference).catch(() => undefined);
      if (row) return { member: cached, row };
      if (row === null) this.routes.delete(conference);
      if (row === undefined) return null; // its FE is down: the conference is not elsewhere
    }
    const found = await Promise.all(
      this.members.map((m) =>
        m.fe.conference(conference).then(
          (row) => ({ m, row }),
          () => ({ m, row: null }),
        ),
      ),
    );
    const hit = found.find((f) => f.row);
    if (!hit || !hit.row) return null;
    this.remember(conference, hit.m);
    return { member: hit.m, row: hit.row };
  }
}

export interface ConferenceDeps {
  pool: FePool;
  tokens: TokenService;
  digest: DigestAuthenticator;
  limiter: FailureLimiter;
  /** TURN REST credentials (core.md §8) for an admitted participant's claims. */
  turnFor: (claims: TokenClaims) => unknown;
  /** The director's public base URL (for join_url). */
  publicUrl: () => string;
  log: Logger;
  clock: Clock;
  /** Every answered guest join (success, or failure of presented credentials) as an `auth` event (src/core/auth-events.ts). */
  onAuth?: (ctx: RequestContext, outcome: AuthOutcome) => void;
}

/** core.md §2 codes for what an FE answered. */
function fromFe(err: unknown): never {
  if (err instanceof FeError) {
    if (err.status === 400) throw badRequest(err.message);
    if (err.status === 404) throw notFound('no such conference');
    if (err.code === 'conference_full') throw new CoreError('conference_full', 'the conference is full');
  }
  if (err instanceof CoreError) throw err;
  throw new CoreError('internal', 'the front end did not answer', {}, 502);
}

const CONF_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** A guest or invitee token outside its own conference is 403 (core.md §2). */
export function requireConferenceAccess(claims: TokenClaims, conference: string): void {
  if (claims.room !== undefined) throw forbidden('this token is for a room');
  if (claims.kind === 'guest' && claims.conference !== conference) throw forbidden('this token is for another conference');
  if (claims.kind !== 'guest' && claims.conference !== undefined && claims.conference !== conference)
    throw forbidden('this token is for another conference');
}

export class Conferences {
  /** token id → the identity claim it holds, to free it when the token ends early. */
  private readonly holders = new Map<string, { conference: string; identity: string }>();
  private readonly unsubscribe: () => void;

  constructor(private readonly d: ConferenceDeps) {
    // A guest token revoked (leave, removal, eviction) frees its identity at the FE.
    this.unsubscribe = d.tokens.onRevoke((claims, id) => {
      const h = this.holders.get(id);
      if (!h) return;
      this.holders.delete(id);
      void this.release(h.conference, h.identity, `${d.pool.run}.${id}`);
      void claims;
    });
  }

  close(): void {
    this.unsubscribe();
  }

  /** Whether the conference exists now at a reachable FE (for signalling's join, core.md §8). */
  async exists(id: string): Promise<boolean> {
    if (!CONF_ID_RE.test(id)) return false;
    return (await this.d.pool.owner(id).catch(() => null)) !== null;
  }

  /** Ends a guest's participation: its tokens revoked, its identity free (core.md §4.3 "removed"). */
  async removeGuest(conference: string, identity: string): Promise<void> {
    this.d.tokens.revokeWhere((c) => c.kind === 'guest' && c.conference === conference && c.identity === identity);
    const o = await this.d.pool.owner(conference);
    if (o) await o.member.fe.release(conference, identity, null);
  }

  private async release(conference: string, identity: string, holder: string): Promise<void> {
    try {
      const o = await this.d.pool.owner(conference);
      if (o) await o.member.fe.release(conference, identity, holder);
    } catch (err) {
      this.d.log.warn(
        { err: String((err as Error)?.message ?? err) },
        'core: could not free a guest identity (it frees itself when the token expires)',
      );
    }
  }

  routes(): Route[] {
    return [
      { method: 'GET', path: '/v1/conference-key', handler: (ctx) => this.conferenceKey(ctx) },
      { method: 'POST', path: '/v1/conferences', handler: (ctx) => this.create(ctx) },
      { method: 'GET', path: '/v1/conferences/:id', handler: (ctx) => this.get(ctx) },
      {
        method: 'POST',
        path: '/v1/conferences/:id/join',
        handler: async (ctx) => {
          try {
            await this.join(ctx);
          } catch (err) {
            // The first, credential-less request's 401 is the challenge, not a failure.
            if (err instanceof CoreError && ctx.req.headers.authorization)
              this.d.onAuth?.(ctx, {
                mechanism: 'conference-key',
                result: 'failure',
                reason: err.code,
                conference: ctx.params.id!,
                guest: true,
              });
            throw err;
          }
        },
      },
      { method: 'POST', path: '/v1/conferences/:id/leave', handler: (ctx) => this.leave(ctx) },
      { method: 'DELETE', path: '/v1/conferences/:id/guests/:identity', handler: (ctx) => this.remove(ctx) },
    ];
  }

  /** A bearer token, with failed ones counted in the rate limit (core.md §2: "on any mechanism"). */
  private authed(ctx: RequestContext, user: boolean): TokenClaims {
    this.d.limiter.check(ctx.source);
    try {
      return user ? requireUser(ctx.req, this.d.tokens) : requireToken(ctx.req, this.d.tokens);
    } catch (err) {
      if (err instanceof CoreError && err.code === 'unauthenticated' && bearerToken(ctx.req)) this.d.limiter.fail(ctx.source);
      throw err;
    }
  }

  private async conferenceKey(ctx: RequestContext): Promise<void> {
    this.authed(ctx, true);
    const { public_key, id } = await this.d.pool.pick();
    ctx.send(200, { public_key, fe: id });
  }

  private async create(ctx: RequestContext): Promise<void> {
    const user = this.authed(ctx, true);
    const b = await ctx.body();
    if (typeof b.fe !== 'string' || b.fe.length === 0 || b.fe.length > 64) throw badRequest('fe: the id from GET /v1/conference-key');
    if (typeof b.key !== 'string') throw badRequest('key: base64 RSA-OAEP ciphertext');
    const m = await this.d.pool.byId(b.fe);
    if (!m) throw new CoreError('unknown_fe', 'no such front end in the pool: get a new key from GET /v1/conference-key');
    let id: string;
    try {
      ({ id } = await m.fe.createConference({ key: b.key, owner: user.sub, title: b.title, expires: b.expires }));
    } catch (err) {
      fromFe(err);
    }
    this.d.pool.remember(id, m);
    this.d.log.info({ conference: id, owner: user.sub }, 'core: conference created');
    ctx.send(201, { id, join_url: `${this.d.publicUrl().replace(/\/$/, '')}/join/${encodeURIComponent(id)}` });
  }

  private async get(ctx: RequestContext): Promise<void> {
    const claims = this.authed(ctx, false);
    const id = ctx.params.id!;
    requireConferenceAccess(claims, id);
    if (!CONF_ID_RE.test(id)) throw notFound('no such conference');
    const o = await this.d.pool.owner(id);
    if (!o) throw notFound('no such conference');
    const { row } = o;
    ctx.send(200, { id: row.id, title: row.title, expires: row.expires, ...(claims.kind === 'user' ? { owner: row.owner } : {}) });
  }

  /** core.md §4.3: Digest over the conference key, HA1 from the owning FE. */
  private async join(ctx: RequestContext): Promise<void> {
    const id = ctx.params.id!;
    const realm = `conference:${id}`;
    this.d.limiter.check(ctx.source);
    if (!CONF_ID_RE.test(id)) throw notFound('no such conference');
    const o = await this.d.pool.owner(id);
    if (!o) throw notFound('no such conference');
    const challenge = (stale = false) => ({ 'www-authenticate': this.d.digest.challenge(realm, stale) });
    const authorization = ctx.req.headers.authorization;
    if (!authorization || !/^\s*digest\s/i.test(authorization)) {
      // RFC 7616 §3.3 / RFC 9110 §11.6.1: 401 with the challenge.
      throw new CoreError(
        'unauthenticated',
        'join with HTTP Digest (RFC 7616, SHA-256): username = your identity, password = the conference key',
        challenge(),
      );
    }
    let badIdentity = false;
    let feFailed: unknown = null;
    const r = await this.d.digest.verify(
      { method: ctx.req.method ?? 'POST', url: ctx.req.url ?? '', authorization },
      realm,
      async (identity) => {
        if (!validIdentity(identity)) {
          badIdentity = true;
          return null;
        }
        try {
          return await o.member.fe.ha1(id, identity);
        } catch (err) {
          feFailed = err;
          return null;
        }
      },
    );
    if (feFailed) fromFe(feFailed);
    if (!r.ok) {
      if (r.reason === 'stale') throw new CoreError('unauthenticated', 'the nonce has expired: retry with the new one', challenge(true));
      this.d.limiter.fail(ctx.source);
      if (r.reason === 'replayed') throw new CoreError('replayed', 'this nonce and nc were used already', challenge());
      if (badIdentity)
        throw new CoreError('unauthenticated', 'identity: 1 to 64 characters, none of them "/", ":" or a control character', challenge());
      throw new CoreError('unauthenticated', 'the Digest response does not verify', challenge());
    }
    const identity = r.username;
    // Only now, the Digest verified: is the identity free? (atomic claim at the FE)
    const issued = this.d.tokens.issue({ kind: 'guest', sub: `guest/${id}/${identity}`, groups: [], conference: id, identity });
    const holder = `${this.d.pool.run}.${tokenId(issued.token)}`;
    let claimed: boolean;
    try {
      claimed = await o.member.fe.claim(id, identity, holder, issued.claims.exp);
    } catch (err) {
      this.d.tokens.revoke(issued.token);
      fromFe(err);
    }
    if (!claimed) {
      this.d.tokens.revoke(issued.token);
      throw new CoreError('identity_in_use', 'this identity is already in the conference: choose another');
    }
    if (this.holders.size >= this.d.tokens.max) this.holders.delete(this.holders.keys().next().value as string);
    this.holders.set(tokenId(issued.token), { conference: id, identity });
    this.d.log.info({ conference: id, guest: true }, 'core: guest joined');
    this.d.onAuth?.(ctx, { mechanism: 'conference-key', result: 'success', user: identity, conference: id, guest: true });
    ctx.send(200, { token: issued.token, conference: id, identity, expires: issued.claims.exp, turn: this.d.turnFor(issued.claims) });
  }

  private async leave(ctx: RequestContext): Promise<void> {
    const claims = this.authed(ctx, false);
    const id = ctx.params.id!;
    requireConferenceAccess(claims, id);
    if (claims.kind !== 'guest') throw forbidden('leave is for guests; users just disconnect');
    this.d.tokens.revoke(bearerToken(ctx.req)!); // frees the identity (onRevoke)
    ctx.res.writeHead(204, { 'cache-control': 'no-store' });
    ctx.res.end();
  }

  private async remove(ctx: RequestContext): Promise<void> {
    const user = this.authed(ctx, true);
    const id = ctx.params.id!;
    const identity = ctx.params.identity!;
    if (!CONF_ID_RE.test(id)) throw notFound('no such conference');
    const o = await this.d.pool.owner(id);
    if (!o) throw notFound('no such conference');
    if (o.row.owner !== user.sub) throw forbidden('only the conference owner removes guests');
    try {
      await this.removeGuest(id, identity);
    } catch (err) {
      fromFe(err);
    }
    ctx.res.writeHead(204, { 'cache-control': 'no-store' });
    ctx.res.end();
  }
}

/** A random id key for opaque FE ids when no pool secret is configured. */
export function randomIdKey(): Buffer {
  return randomBytes(32);
}

const byCore = new WeakMap<CoreContext, Conferences>();

/**
 * The conferences module of a running core (after conferencesModule ran), for the other
 * modules: signalling uses `conferencesOf(core)?.exists(id)` as its conferenceExists.
 */
export function conferencesOf(core: CoreContext): Conferences | undefined {
  return byCore.get(core);
}

export const POOL_SECRET_FILE = 'core-pool-secret';

/**
 * core.pool_secret when configured; else the one in DATA_DIR/core-pool-secret (mode
 * 0600, 256 random bits, made on first use: an FE and a director sharing a data dir
 * share it). Never logged.
 */
export function loadOrCreatePoolSecret(dataDir: string | null, configured: string | null): string {
  if (configured) return configured;
  if (!dataDir) return randomBytes(32).toString('base64url');
  const file = join(dataDir, POOL_SECRET_FILE);
  if (existsSync(file)) {
    const s = readFileSync(file, 'utf8').trim();
    if (s.length >= 32) return s;
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(file, secret + '\n', { mode: 0o600 });
  chmodSync(file, 0o600);
  return secret;
}

/**
 * The conferences module of startCore (src/core/index.ts MODULES): with `core.pool: []`
 * one FE in-process (its keys and store in DATA_DIR/core-fe), else the listed
 * `gatehouse core-fe` processes, reached with requests signed by core.pool_secret.
 */
export async function conferencesModule(core: CoreContext): Promise<Conferences> {
  const secret = loadOrCreatePoolSecret(core.dataDir, core.cfg.core.pool_secret);
  let fes: { fe: FeApi; label: string }[];
  if (core.cfg.core.pool.length === 0) {
    let dir: string;
    if (core.dataDir) dir = join(core.dataDir, 'core-fe');
    else {
      dir = mkdtempSync(join(tmpdir(), 'gatehouse-fe-'));
      core.onStop(() => rmSync(dir, { recursive: true, force: true }));
    }
    const fe = new FrontEnd(dir, core.clock);
    core.onStop(() => fe.close());
    fes = [{ fe, label: 'embedded' }];
  } else {
    fes = core.cfg.core.pool.map((url) => {
      const u = new URL(url);
      // core.md §1: plain HTTP only on loopback (HA1 travels between director and FE).
      if (u.protocol === 'http:' && !/^(127\.|\[::1\]$|localhost$)/.test(u.hostname)) {
        throw new Error(`core.pool: ${u.host}: plain http:// only on loopback; use https://`);
      }
      return { fe: new RemoteFe(url, secret, core.clock), label: u.host };
    });
  }
  const pool = new FePool(fes, secret, core.log);
  await pool.refresh();
  const conferences = new Conferences({
    pool,
    tokens: core.tokens,
    digest: core.digest,
    limiter: core.limiter,
    turnFor: (c) =>
      core.turn.issue(
        c.kind === 'guest'
          ? { kind: 'guest', conference: c.conference!, identity: c.identity! }
          : {
              kind: 'user',
              user: c.sub,
              context: {
                ...(c.conference !== undefined ? { conference: c.conference } : {}),
                ...(c.org !== undefined ? { org: c.org } : {}),
              },
            },
      ),
    publicUrl: () => core.baseUrl(),
    onAuth: (ctx, outcome) => emitAuthEvent(core, ctx, outcome),
    log: core.log,
    clock: core.clock,
  });
  core.http.addRoutes(conferences.routes());
  byCore.set(core, conferences);
  core.onStop(() => {
    byCore.delete(core);
    conferences.close();
  });
  return conferences;
}
