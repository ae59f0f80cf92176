/**
 * Authentication transfer between organisations (core.md §6, seed 004 FIG. 6).
 *
 *   GET  /v1/core/certificate        (no token) this core's signing certificate, PEM
 *   POST /v1/auth/transfer-ticket    (user token, at the home core A) {challenge, audience} → {ticket}
 *   POST /v1/auth/transfer           (no token, at the other core B)  {ticket, user, org} → login body
 *
 * The ticket is a compact JWS, ES256 by A's core key (src/core/jws.ts), over
 * `{"typ":"gatehouse-transfer","iss":A,"sub":USER,"org":A,"aud":B,"challenge","iat","exp"}`
 * with exp = iat + 60 (core.md §6: at most 60 s).
 *
 * A (ticket):
 * - Needs core.org (it is `iss` and `org`): without it, 403 `forbidden`.
 * - A user's own token only (core.md §2 "user-only call": guests and invitees 403), and
 *   not a token B-style transferred in from another organisation (its claims carry a
 *   foreign `org`): a ticket says "A vouches for its own user", never for someone else's
 *   (no chains A→B→C). 403.
 *
 * B (transfer), in this order, each failure `401` with `Connection: close`:
 * (1) the ticket's `challenge` is one B issued (src/core/challenges.ts), to this source
 *     address, unexpired and unused: else `replayed`. Then the challenge is spent,
 *     whatever follows (check then spend; also when issued to another address or when
 *     the ticket is refused for any other reason: core.md §6 "the challenge is spent").
 * (2) `typ` is `gatehouse-transfer` and `aud` is B's core.org (a B without core.org
 *     accepts no transfer).
 * (3)+(4) the header is exactly ES256 (no `none`, no HS256, no key in the header), and the
 *     signature verifies with the certificate of the `core.peers` entry for the body's
 *     `org` (the key comes from B's configuration only; never B's own core.org, also
 *     refused in config), that certificate valid now:
 *     else `untrusted`. The ticket's `iss` and `org` must be that org and its `sub` the
 *     body's `user`; `iat`/`exp` integers with 0 < exp - iat <= 60, now within
 *     [iat - 30 s, exp + 30 s) (clock skew between the two cores).
 * (5) the name is not one of B's own users (the gateway's users file: a transferred
 *     user's subject is their bare name, so admitting a local name would hand that user's
 *     rooms and invitations to the other organisation), and
 *     the peer entry allows the user: `allow.users` names them, or one of their groups is
 *     in `allow.groups`. Groups come from B's directory (core.directory): the ticket
 *     carries none (core.md §6), and B's own users (the gateway's users file) are B's
 *     people, not A's, so without a directory a transferred user has no groups and only
 *     `allow.users` can admit them. With a directory, it must know the user and say
 *     their organisation is `org` (DirectoryUser.org; LDAP: core.ldap.org_attribute):
 *     else refused. A directory that cannot answer: `503 unavailable` (never an admit).
 * Success: the login body (src/core/login.ts loginBody) with `org`; the token, signalling
 * and TURN issue records carry it, so the gateway's policy selects on `org`.
 *
 * Every transfer is an `auth` event `mechanism: "transfer"` (success or failure with the
 * reason), and every refusal counts toward the per-source limit (core.md §2; over it,
 * 429 before the body is read). A malformed body is 400 `bad_request` (counted too).
 * Bodies are at most MAX_BODY_BYTES, strict JSON (src/core/json-body.ts: UTF-8, one object,
 * no duplicate member names), no unknown members. The ticket never reaches a log, event or error.
 */
import type { CoreContext, CoreModule, Directory } from './director.js';
import type { RequestContext } from './http.js';
import { base64OfBytes } from '../util/base64.js';
import { CHALLENGE_BYTES, type ChallengeStore } from './challenges.js';
import { CoreError, forbidden } from './errors.js';
import { requireUser } from './tokens.js';
import { emitAuthEvent } from './auth-events.js';
import { loginBody } from './login.js';
import { readJsonBody } from './json-body.js';
import { hasNonUserChar, isName, MAX_NAME } from './names.js';
import { decodeJws, headerProblem, JwsError, signEs256, verifyEs256, type DecodedJws } from './jws.js';
import { loadOrCreateCoreSigning, loadPeers, type CoreSigning, type LoadedPeer } from './core-signing.js';

/** core.md §6: `typ` of a transfer ticket. */
export const TICKET_TYP = 'gatehouse-transfer';
/** core.md §6: a ticket lives at most 60 s. */
export const TICKET_TTL_S = 60;
/** Clock skew allowed between the issuing core and this one, seconds. */
export const CLOCK_SKEW_S = 30;
/** A transfer or ticket request body is small: a ~600-character ticket and two names. */
export const MAX_BODY_BYTES = 8 * 1024;

export interface TicketClaims {
  typ: typeof TICKET_TYP;
  iss: string;
  sub: string;
  org: string;
  aud: string;
  challenge: string;
  iat: number;
  exp: number;
}

/** A's side: the signed ticket for `user` of organisation `org` to `audience`. */
export function makeTicket(signing: Pick<CoreSigning, 'privateKey'>, c: Omit<TicketClaims, 'typ' | 'iss' | 'exp'>): string {
  const claims: TicketClaims = {
    typ: TICKET_TYP,
    iss: c.org,
    sub: c.sub,
    org: c.org,
    aud: c.aud,
    challenge: c.challenge,
    iat: c.iat,
    exp: c.iat + TICKET_TTL_S,
  };
  return signEs256(claims as unknown as Record<string, unknown>, signing.privateKey);
}

export type TransferCheck =
  | { ok: true; user: string; groups: string[]; org: string }
  | { ok: false; code: 'replayed' | 'untrusted' | 'unauthenticated' | 'unavailable'; message: string };

export interface TransferDeps {
  challenges: ChallengeStore;
  peers: readonly LoadedPeer[];
  /** B's core.org. */
  org: string | null;
  directory: Directory | null;
  /** Whether the name is one of this core's own users (the gateway's users file). */
  localUser: (name: string) => boolean;
  nowMs: number;
}

const refuse = (code: 'replayed' | 'untrusted' | 'unauthenticated', message: string): TransferCheck => ({ ok: false, code, message });

const CHALLENGE_REASON = {
  unknown: 'the challenge is not one this core issued',
  spent: 'the challenge was already used',
  expired: 'the challenge has expired',
  elsewhere: 'the challenge was issued to another address',
} as const;

/**
 * B's five checks of core.md §6 over a well-formed body (`ticket`, `user`, `org`
 * strings). Spends the ticket's challenge in every case once it is read.
 */
export async function checkTransfer(
  body: { ticket: string; user: string; org: string },
  source: string,
  d: TransferDeps,
): Promise<TransferCheck> {
  let jws: DecodedJws;
  try {
    jws = decodeJws(body.ticket);
  } catch (err) {
    if (err instanceof JwsError) return refuse('untrusted', err.message);
    throw err;
  }
  const p = jws.payload;
  // (1) issued here, to this address, unexpired, unused; then spent whatever follows.
  if (typeof p.challenge !== 'string') return refuse('replayed', 'the ticket names no challenge');
  const ch = d.challenges.check(p.challenge, source);
  d.challenges.spend(p.challenge);
  if (!ch.ok) return refuse('replayed', CHALLENGE_REASON[ch.reason]);
  // (2) what the ticket is for, and for whom.
  if (p.typ !== TICKET_TYP) return refuse('unauthenticated', `the ticket typ is not ${TICKET_TYP}`);
  if (d.org === null) return refuse('unauthenticated', 'this core has no core.org: it accepts no transfer');
  if (p.aud !== d.org) return refuse('unauthenticated', 'the ticket is for another audience');
  // (3) ES256 exactly (RFC 7518 §3.4), (4) by the core core.peers trusts for `org`.
  const hp = headerProblem(jws.header);
  if (hp) return refuse('untrusted', hp);
  // A transfer comes from another organisation: a ticket "from" this core's own org would
  // make its subject one of our users (token org = home org: their directory groups, rooms).
  if (body.org === d.org) return refuse('untrusted', "a transfer from this core's own organisation is not accepted");
  const peer = d.peers.find((x) => x.org === body.org);
  if (!peer) return refuse('untrusted', 'no core.peers entry trusts this organisation');
  const now = new Date(d.nowMs);
  if (now < new Date(peer.certificate.validFrom) || now > new Date(peer.certificate.validTo))
    return refuse('untrusted', "the peer's certificate is not valid now");
  if (!verifyEs256(jws, peer.publicKey))
    return refuse('untrusted', 'the ticket signature does not verify with the certificate trusted for this organisation');
  if (p.iss !== body.org || p.org !== body.org) return refuse('untrusted', 'the ticket was issued for another organisation');
  if (p.sub !== body.user) return refuse('unauthenticated', 'the ticket is for another user');
  // The users file's rule (src/core/names.ts): a transferred user's subject is their bare name.
  if (hasNonUserChar(body.user)) return refuse('unauthenticated', 'the user name contains ":", "/" or a control character');
  const nowS = Math.floor(d.nowMs / 1000);
  if (!Number.isSafeInteger(p.iat) || !Number.isSafeInteger(p.exp))
    return refuse('unauthenticated', 'the ticket iat and exp are not integers');
  const iat = p.iat as number;
  const exp = p.exp as number;
  if (exp <= iat || exp - iat > TICKET_TTL_S) return refuse('unauthenticated', `the ticket lives more than ${TICKET_TTL_S} s`);
  if (nowS + CLOCK_SKEW_S < iat) return refuse('unauthenticated', 'the ticket is not valid yet');
  if (nowS >= exp + CLOCK_SKEW_S) return refuse('unauthenticated', 'the ticket has expired');
  // (5) the peer entry allows the user or one of their groups; the directory confirms the org.
  // A name one of B's own users holds is B's: admitting it from elsewhere would hand that
  // user's rooms, invitations and rules to the other organisation (names are the subject).
  if (d.localUser(body.user)) return refuse('unauthenticated', "the user name is one of this core's own users");
  let groups: string[] = [];
  if (d.directory) {
    let du;
    try {
      du = await d.directory.user(body.user);
    } catch (err) {
      if (err instanceof CoreError && err.code === 'unavailable') return { ok: false, code: 'unavailable', message: err.message };
      throw err;
    }
    // The directory's spelling must be the ticket's (LDAP matches names case-insensitively).
    if (!du || du.name !== body.user) return refuse('unauthenticated', 'the directory has no such user');
    if (du.org !== body.org) return refuse('unauthenticated', 'the directory does not place this user in this organisation');
    groups = [...du.groups];
  }
  if (!peer.allow.users.includes(body.user) && !groups.some((g) => peer.allow.groups.includes(g)))
    return refuse('unauthenticated', 'the peer entry does not allow this user to transfer');
  return { ok: true, user: body.user, groups, org: body.org };
}

/** Exactly these string members, each a valid name-like string; else 400. */
function fields<K extends string>(
  body: Record<string, unknown>,
  keys: readonly K[],
  max: Partial<Record<K, number>> = {},
): Record<K, string> {
  for (const k of Object.keys(body))
    if (!keys.includes(k as K)) throw new CoreError('bad_request', `unknown member ${JSON.stringify(k.slice(0, 32))}`);
  const out = {} as Record<K, string>;
  for (const k of keys) {
    const v = body[k];
    if (typeof v !== 'string' || !isName(v, { max: max[k] ?? MAX_NAME }))
      throw new CoreError('bad_request', `${k} must be a non-empty string`);
    out[k] = v;
  }
  return out;
}

/** A transfer or ticket request body: strict JSON, at most MAX_BODY_BYTES, never empty. */
const readBody = (ctx: RequestContext) => readJsonBody(ctx.req, MAX_BODY_BYTES, { emptyIsObject: false });

/** RFC 9110 §15.5.2: a 401 carries a challenge; the credentials of this resource are the ticket in the body. */
const transferChallenge = (core: CoreContext) => `Gatehouse-Transfer realm="${core.cfg.realm.replace(/[\\"]/g, '\\$&')}"`;

export const transferModule: CoreModule = async (core) => {
  // At start: a bad peer certificate is a configuration error naming core.peers[i].cert.
  const peers = loadPeers(core.cfg);
  const { signing, created } = await loadOrCreateCoreSigning(core.cfg, core.dataDir);
  core.log.info({ created, persisted: core.dataDir !== null, peers: peers.map((p) => p.org) }, 'core signing identity');

  // core.md §6: the certificate, no token. PEM (RFC 7468 §5), as the admin API's GET /v1/gateway/certificate.
  core.http.add('GET', '/v1/core/certificate', (ctx) => {
    ctx.req.resume();
    ctx.res.writeHead(200, { 'content-type': 'application/x-pem-file', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
    ctx.res.end(ctx.req.method === 'HEAD' ? undefined : signing.certificatePem);
  });

  core.http.add('POST', '/v1/auth/transfer-ticket', async (ctx) => {
    const c = requireUser(ctx.req, core.tokens);
    const org = core.cfg.core.org;
    if (!org) {
      ctx.req.resume();
      throw forbidden('this core has no core.org: it cannot issue transfer tickets');
    }
    if (c.org !== undefined && c.org !== org) {
      ctx.req.resume();
      throw forbidden('a user transferred from another organisation cannot transfer onwards');
    }
    const b = fields(await readBody(ctx), ['challenge', 'audience'] as const);
    // core.md §5: canonical base64 (RFC 4648 §4) of 24 bytes, exactly 32 characters, no padding.
    if (!base64OfBytes(b.challenge, CHALLENGE_BYTES))
      throw new CoreError('bad_request', 'challenge must be the base64 of 24 bytes (core.md §5)');
    const ticket = makeTicket(signing, {
      sub: c.sub,
      org,
      aud: b.audience,
      challenge: b.challenge,
      iat: Math.floor(core.clock.now() / 1000),
    });
    emitAuthEvent(core, ctx, { mechanism: 'transfer-ticket', result: 'success', user: c.sub, org });
    ctx.send(200, { ticket });
  });

  core.http.add('POST', '/v1/auth/transfer', async (ctx) => {
    try {
      core.limiter.check(ctx.source);
    } catch (err) {
      ctx.req.resume();
      emitAuthEvent(core, ctx, { mechanism: 'transfer', result: 'failure', reason: 'rate_limited' });
      throw err;
    }
    let body: { ticket: string; user: string; org: string };
    try {
      body = fields(await readBody(ctx), ['ticket', 'user', 'org'] as const, { ticket: 4096 });
    } catch (err) {
      if (!(err instanceof CoreError)) throw err;
      core.limiter.fail(ctx.source);
      emitAuthEvent(core, ctx, { mechanism: 'transfer', result: 'failure', reason: err.code });
      throw new CoreError(err.code, err.message, { ...err.headers, connection: 'close' }, err.status);
    }
    const r = await checkTransfer(body, ctx.source, {
      challenges: core.challenges,
      peers,
      org: core.cfg.core.org,
      directory: core.directory,
      localUser: (name) => core.users.lookup(name) !== undefined,
      nowMs: core.clock.now(),
    });
    if (!r.ok) {
      // A directory outage is not the client's failure: not counted, 503 (never an admit).
      if (r.code !== 'unavailable') core.limiter.fail(ctx.source);
      emitAuthEvent(core, ctx, { mechanism: 'transfer', result: 'failure', reason: r.code, user: body.user, org: body.org });
      core.log.info({ mechanism: 'transfer', org: body.org.slice(0, MAX_NAME), reason: r.code }, 'transfer refused');
      throw new CoreError(
        r.code,
        r.message,
        r.code === 'unavailable' ? { connection: 'close' } : { connection: 'close', 'www-authenticate': transferChallenge(core) },
      );
    }
    core.log.info({ user: r.user, org: r.org, mechanism: 'transfer' }, 'login');
    emitAuthEvent(core, ctx, { mechanism: 'transfer', result: 'success', user: r.user, groups: r.groups, org: r.org });
    ctx.send(200, loginBody(core, { user: r.user, groups: r.groups, org: r.org }));
  });
};
