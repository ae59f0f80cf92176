// core.md §3 (login) and §7 (rooms with personal single-use URLs) over real HTTP against
// startCore() (the director `gatehouse serve` runs) with a driven clock: the Digest
// SHA-256 challenge and retry, fresh challenges after a wrong answer, `replayed`, stale
// nonces, the failed-authentication limit (429 + Retry-After); rooms: owner-only
// invites, the GET that spends nothing, another user's 403 that leaves the URL valid,
// spent 410, expired 410 (clock driven), replaced 410, revoked 410 with the room tokens
// ended, participant removal, listing. Secrets (passwords, tokens, invite URLs, TURN
// credentials, the REST secret) are searched for in the log and DATA_DIR.
import t from 'tap';
import { request as httpRequest } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ManualClock } from '../../src/util/clock.js';
import { createLogger } from '../../src/util/log.js';
import { Supervisor } from '../../src/util/supervise.js';
import { parseConfig } from '../../src/config/config.js';
import { StaticUserDirectory } from '../../src/store/users.js';
import { startCore, type RunningCore } from '../../src/core/index.js';
import { digestHa1, digestResponse, parseAuthHeader, quote } from '../../src/core/digest.js';
import { resolveCredential } from '../../src/turn/auth.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';
import { MemoryEventSink } from '../../src/events/eve.js';

interface Res {
  status: number;
  headers: Record<string, string[]>;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** One request; headers kept as lists (several WWW-Authenticate must stay apart). */
function req(
  base: string,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: unknown; from?: string } = {},
): Promise<Res> {
  const u = new URL(path, base);
  const body = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
  return new Promise((resolve, reject) => {
    const r = httpRequest(
      {
        host: u.hostname,
        port: u.port,
        method,
        ...(opts.from ? { localAddress: opts.from } : {}),
        path: u.pathname + u.search,
        headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...opts.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const headers: Record<string, string[]> = {};
          for (let i = 0; i < res.rawHeaders.length; i += 2)
            (headers[res.rawHeaders[i]!.toLowerCase()] ??= []).push(res.rawHeaders[i + 1]!);
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = null;
          try {
            json = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode!, headers, text, json });
        });
      },
    );
    r.on('error', reject);
    r.end(body);
  });
}

const USERS = [
  { name: 'alice', password: 'alice-' + randomBytes(9).toString('base64url'), groups: ['owners'] },
  { name: 'bob', password: 'bob-' + randomBytes(9).toString('base64url'), groups: ['staff'] },
  { name: 'carol', password: 'carol-' + randomBytes(9).toString('base64url'), groups: [] },
];
const pw = (u: string) => USERS.find((x) => x.name === u)!.password;

/** The Digest retry for a 401 (RFC 7616 §3.4), from its WWW-Authenticate. */
function digestAuth(
  challenge: string,
  user: string,
  password: string,
  o: { nc?: number; cnonce?: string; uri?: string; method?: string } = {},
): string {
  const p = parseAuthHeader(challenge)!.params;
  const realm = p.get('realm')!;
  const nonce = p.get('nonce')!;
  const nc = (o.nc ?? 1).toString(16).padStart(8, '0');
  const cnonce = o.cnonce ?? randomBytes(8).toString('hex');
  const uri = o.uri ?? '/v1/login';
  const response = digestResponse({
    ha1: digestHa1(user, realm, password),
    nonce,
    nc,
    cnonce,
    qop: 'auth',
    method: o.method ?? 'POST',
    uri,
  });
  return `Digest username=${quote(user)}, realm=${quote(realm)}, nonce=${quote(nonce)}, uri=${quote(uri)}, algorithm=SHA-256, qop=auth, nc=${nc}, cnonce=${quote(cnonce)}, response="${response}", opaque=${quote(p.get('opaque')!)}`;
}

function digestChallenge(r: Res): string {
  const all = r.headers['www-authenticate'] ?? [];
  const d = all.find((h) => /^Digest /.test(h));
  if (!d) throw new Error(`no Digest challenge in ${JSON.stringify(all)}`);
  return d;
}

t.test('login (core.md §3) and rooms with personal URLs (core.md §7)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-core-'));
  const clock = new ManualClock(Date.UTC(2026, 11, 1, 12, 0, 0));
  const logLines: string[] = [];
  const log = createLogger({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
  const supervisor = new Supervisor(log);
  const restSecret = randomBytes(24).toString('base64url');
  const cfg = parseConfig(`realm: REALM\ndata_dir: ${dir}\ncore:\n  listen: http://127.0.0.1:0\n`, 'test.yaml');
  const users = new StaticUserDirectory(USERS);
  const events = new MemoryEventSink();
  const core: RunningCore = await startCore(cfg, { users, logger: log, clock, supervisor, restSecret, dataDir: dir, events });
  t.teardown(() => core.stop());
  const base = core.url;
  const secrets = new Secrets().add('rest_secret', 'turn.rest_secret', restSecret);
  for (const u of USERS) secrets.add('password', `user ${u.name}`, u.password);
  const nowS = () => Math.floor(clock.now() / 1000);

  async function login(user: string): Promise<string> {
    const c = await req(base, 'POST', '/v1/login');
    const r = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(digestChallenge(c), user, pw(user)) } });
    if (r.status !== 200) throw new Error(`login ${user}: ${r.status} ${r.text}`);
    secrets.add('token', `token of ${user}`, r.json.token);
    return r.json.token;
  }
  const bearer = (tok: string) => ({ authorization: `Bearer ${tok}` });

  await t.test('POST /v1/login: 401 with the Digest challenge, then 200 with the authorized retry', async (t) => {
    const c = await req(base, 'POST', '/v1/login');
    t.equal(c.status, 401);
    t.same(c.json, { error: { code: 'unauthenticated', message: c.json.error.message } });
    t.equal(c.headers['www-authenticate']!.length, 1, 'one WWW-Authenticate per enabled mechanism (Digest only here)');
    t.match(digestChallenge(c), /^Digest realm="REALM", qop="auth", algorithm=SHA-256, nonce="[^"]+", opaque="[^"]+"$/);
    const ok = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(digestChallenge(c), 'alice', pw('alice')) } });
    t.equal(ok.status, 200);
    t.same(Object.keys(ok.json).sort(), ['expires', 'groups', 'token', 'user']);
    t.equal(ok.json.user, 'alice');
    t.same(ok.json.groups, ['owners']);
    t.equal(ok.json.expires, nowS() + 3600, 'expires: Unix seconds, 1 h (core.md §2)');
    secrets.add('token', 'alice login', ok.json.token);
    const rooms = await req(base, 'GET', '/v1/rooms', { headers: bearer(ok.json.token) });
    t.equal(rooms.status, 200, 'the token works');
  });

  await t.test('a wrong answer: 401 again with a fresh challenge; same nonce+nc: replayed; higher nc: fine; stale nonce', async (t) => {
    const c = await req(base, 'POST', '/v1/login');
    const ch = digestChallenge(c);
    const wrong = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(ch, 'alice', 'not-the-password') } });
    t.equal(wrong.status, 401);
    t.equal(wrong.json.error.code, 'unauthenticated');
    const fresh = digestChallenge(wrong);
    t.not(parseAuthHeader(fresh)!.params.get('nonce'), parseAuthHeader(ch)!.params.get('nonce'), 'a fresh nonce');
    const unknown = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(ch, 'mallory', 'x') } });
    t.equal(unknown.status, 401, 'an unknown user looks the same');
    t.equal(unknown.json.error.code, 'unauthenticated');

    const auth1 = digestAuth(ch, 'bob', pw('bob'), { nc: 1, cnonce: 'c1' });
    t.equal((await req(base, 'POST', '/v1/login', { headers: { authorization: auth1 } })).status, 200);
    const again = await req(base, 'POST', '/v1/login', { headers: { authorization: auth1 } });
    t.equal(again.status, 401);
    t.equal(again.json.error.code, 'replayed', 'the same nonce and nc twice');
    t.ok(digestChallenge(again), 'with a fresh challenge');
    const nc2 = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(ch, 'bob', pw('bob'), { nc: 2 }) } });
    t.equal(nc2.status, 200, 'the nonce reused with a higher nc');
    secrets.add('token', 'bob nc2', nc2.json.token);

    const basic = await req(base, 'POST', '/v1/login', {
      headers: { authorization: 'Basic ' + Buffer.from(`alice:${pw('alice')}`).toString('base64') },
    });
    t.equal(basic.status, 401, 'Basic is not offered without LDAP over HTTPS');
    t.ok(digestChallenge(basic));

    clock.advance(301_000); // past the nonce lifetime
    const stale = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(ch, 'bob', pw('bob'), { nc: 3 }) } });
    t.equal(stale.status, 401);
    t.match(digestChallenge(stale), /stale=true/, 'RFC 7616 §3.3: stale=true');
    const retried = await req(base, 'POST', '/v1/login', {
      headers: { authorization: digestAuth(digestChallenge(stale), 'bob', pw('bob')) },
    });
    t.equal(retried.status, 200, 'the retry with the new nonce');
    secrets.add('token', 'bob retried', retried.json.token);
    clock.advance(61_000); // a new rate-limit minute for what follows
  });

  await t.test('10 failed authentications per source per minute, then 429 rate_limited with Retry-After', async (t) => {
    for (let i = 0; i < 10; i++) {
      const c = await req(base, 'POST', '/v1/login');
      const r = await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(digestChallenge(c), 'carol', 'wrong') } });
      t.equal(r.status, 401, `failure ${i + 1}`);
    }
    const c = await req(base, 'POST', '/v1/login');
    t.equal(c.status, 429, 'even the challenge is refused now');
    const r = await req(base, 'POST', '/v1/login', { headers: { authorization: 'Digest username="carol"' } });
    t.equal(r.status, 429);
    t.equal(r.json.error.code, 'rate_limited');
    t.equal(r.headers['retry-after']?.[0], '60');
    clock.advance(30_000);
    t.equal((await req(base, 'POST', '/v1/login')).headers['retry-after']?.[0], '30');
    clock.advance(30_000);
    const after = await req(base, 'POST', '/v1/login');
    t.equal(after.status, 401, 'the minute has passed');
    t.equal(
      (await req(base, 'POST', '/v1/login', { headers: { authorization: digestAuth(digestChallenge(after), 'carol', pw('carol')) } }))
        .status,
      200,
    );
  });

  await t.test('per user too: 10 failures for one name from 10 addresses lock that name (429), not the others', async (t) => {
    clock.advance(61_000);
    for (let i = 0; i < 10; i++) {
      const from = `127.0.0.${20 + i}`;
      const c = await req(base, 'POST', '/v1/login', { from });
      const r = await req(base, 'POST', '/v1/login', {
        from,
        headers: { authorization: digestAuth(digestChallenge(c), 'carol', 'wrong') },
      });
      t.equal(r.status, 401, `failure ${i + 1} from ${from}`);
    }
    const from = '127.0.0.40';
    const c = await req(base, 'POST', '/v1/login', { from });
    t.equal(c.status, 401, 'a fresh address still gets challenges');
    const right = await req(base, 'POST', '/v1/login', {
      from,
      headers: { authorization: digestAuth(digestChallenge(c), 'carol', pw('carol')) },
    });
    t.equal(right.status, 429, 'the right password does not help while the name is locked');
    t.equal(right.json.error.code, 'rate_limited');
    t.equal(right.headers['retry-after']?.[0], '60');
    const c2 = await req(base, 'POST', '/v1/login', { from });
    const bobOk = await req(base, 'POST', '/v1/login', {
      from,
      headers: { authorization: digestAuth(digestChallenge(c2), 'bob', pw('bob')) },
    });
    t.equal(bobOk.status, 200, 'another user from the same address gets in');
    secrets.add('token', 'bob lockout', bobOk.json.token);
    clock.advance(60_000);
    const c3 = await req(base, 'POST', '/v1/login', { from });
    const later = await req(base, 'POST', '/v1/login', {
      from,
      headers: { authorization: digestAuth(digestChallenge(c3), 'carol', pw('carol')) },
    });
    t.equal(later.status, 200, 'the lock ends');
    secrets.add('token', 'carol after lockout', later.json.token);
    // Every outcome is an auth event, without the password.
    const auth = events.events.filter((e) => e.event_type === 'auth').map((e) => e.auth as Record<string, unknown>);
    t.ok(auth.some((a) => a.user === 'carol' && a.result === 'failure' && a.reason === 'rate_limited' && a.mechanism === 'Digest'));
    t.ok(auth.some((a) => a.user === 'carol' && a.result === 'failure' && a.reason === 'unauthenticated'));
    t.ok(auth.some((a) => a.user === 'carol' && a.result === 'success'));
    t.ok(
      events.events.filter((e) => e.event_type === 'auth').every((e) => e.src_ip && e.proto === 'TCP'),
      'with the source address',
    );
    assertNoSecrets(t, secrets, { texts: { 'auth events': JSON.stringify(events.events) } }, 'auth events');
  });

  const alice = await login('alice');
  const bob = await login('bob');
  const carol = await login('carol');
  let room = '';

  await t.test('POST /v1/rooms (user token) → {id}; invites by the owner only, to users only', async (t) => {
    t.equal((await req(base, 'POST', '/v1/rooms', { body: { title: 'x' } })).status, 401, 'no token');
    const r = await req(base, 'POST', '/v1/rooms', { headers: bearer(alice), body: { title: 'Board' } });
    t.equal(r.status, 201);
    t.match(r.json, { id: /^r[A-Za-z0-9_-]{16}$/ });
    room = r.json.id;
    t.same((await req(base, 'GET', '/v1/rooms', { headers: bearer(alice) })).json, { rooms: [{ id: room, title: 'Board' }] });
    const byBob = await req(base, 'POST', `/v1/rooms/${room}/invites`, { headers: bearer(bob), body: { invitee: 'bob', expires_in: 600 } });
    t.equal(byBob.status, 403, 'not the owner');
    t.equal(byBob.json.error.code, 'forbidden');
    const noUser = await req(base, 'POST', `/v1/rooms/${room}/invites`, {
      headers: bearer(alice),
      body: { invitee: 'nobody', expires_in: 600 },
    });
    t.equal(noUser.status, 400, 'the invitee must be a user');
    t.equal(noUser.json.error.code, 'bad_request');
    t.equal(
      (await req(base, 'POST', `/v1/rooms/${room}/invites`, { headers: bearer(alice), body: { invitee: 'bob', expires_in: -1 } })).status,
      400,
    );
    t.equal((await req(base, 'POST', `/v1/rooms/nope/invites`, { headers: bearer(alice), body: { invitee: 'bob' } })).status, 404);
    t.equal((await req(base, 'GET', `/v1/rooms/${room}/invites`, { headers: bearer(bob) })).status, 403, 'only the owner lists');
  });

  await t.test('the personal URL: GET spends nothing, another user 403 (still valid), the invitee 200 once, then 410', async (t) => {
    const inv = await req(base, 'POST', `/v1/rooms/${room}/invites`, { headers: bearer(alice), body: { invitee: 'bob', expires_in: 600 } });
    t.equal(inv.status, 201);
    const url = new URL(inv.json.url);
    secrets.add('invite_url', 'bob invite', url.pathname.split('/').pop()!);
    t.equal(url.origin, base);
    const secret = url.pathname.split('/').pop()!;
    t.ok(Buffer.from(secret, 'base64url').length * 8 >= 128, 'at least 128 random bits');
    t.equal(inv.json.expires, nowS() + 600);

    for (let i = 0; i < 2; i++) {
      const g = await req(base, 'GET', url.pathname);
      t.equal(g.status, 200, 'GET serves the web client');
      t.match(g.headers['content-type']![0], /^text\/html/);
    }
    t.equal((await req(base, 'POST', url.pathname)).status, 401, 'no token: log in first');
    const other = await req(base, 'POST', url.pathname, { headers: bearer(carol) });
    t.equal(other.status, 403, 'another user');
    t.equal(other.json.error.code, 'forbidden');
    const ok = await req(base, 'POST', url.pathname, { headers: bearer(bob) });
    t.equal(ok.status, 200, 'the invitee is admitted: the URL stayed valid through the GETs and the 403');
    t.same(Object.keys(ok.json).sort(), ['room', 'token', 'turn']);
    t.equal(ok.json.room, room);
    secrets.add('token', 'bob room token', ok.json.token);
    const turn = ok.json.turn;
    secrets.add('turn_credential', 'bob', turn.credential);
    t.match(turn, { urls: Array, username: new RegExp(`^\\d+:bob$`), ttl: 600 });
    const v = resolveCredential(turn.username, users, restSecret, clock.now());
    t.ok(v.ok && v.cred.password === turn.credential, 'the gateway accepts the TURN credential');
    t.same(core.core.tokens.verify(ok.json.token)?.room, room, 'the token is stamped with the room');
    t.ok(core.core.rooms.mayJoin(core.core.tokens.verify(ok.json.token)!, room), 'signalling may let it join the room');
    t.notOk(core.core.rooms.mayJoin(core.core.tokens.verify(ok.json.token)!, 'other-room'), 'and no other');
    t.ok(core.core.rooms.mayJoin(core.core.tokens.verify(alice)!, room), 'the owner enters directly');
    t.notOk(core.core.rooms.mayJoin(core.core.tokens.verify(carol)!, room), 'the room is locked to others');
    t.equal(
      (await req(base, 'POST', '/v1/rooms', { headers: bearer(ok.json.token), body: {} })).status,
      403,
      'a room token is not a user token',
    );

    const spent = await req(base, 'POST', url.pathname, { headers: bearer(bob) });
    t.equal(spent.status, 410, 'spent');
    t.equal(spent.json.error.code, 'gone');
    t.equal((await req(base, 'GET', url.pathname)).status, 200, 'GET of a spent URL still serves the page');
    const unknown = await req(base, 'POST', '/i/' + randomBytes(32).toString('base64url'), { headers: bearer(bob) });
    t.equal(unknown.status, 404);
  });

  await t.test('expired (driven clock): 410; listed as expired', async (t) => {
    const inv = await req(base, 'POST', `/v1/rooms/${room}/invites`, {
      headers: bearer(alice),
      body: { invitee: 'carol', expires_in: 60 },
    });
    const path = new URL(inv.json.url).pathname;
    secrets.add('invite_url', 'carol invite', path.split('/').pop()!);
    clock.advance(60_000);
    const r = await req(base, 'POST', path, { headers: bearer(carol) });
    t.equal(r.status, 410);
    t.equal(r.json.error.code, 'gone');
    const list = await req(base, 'GET', `/v1/rooms/${room}/invites`, { headers: bearer(alice) });
    t.same(
      list.json.invites.map((i: { invitee: string; state: string }) => [i.invitee, i.state]),
      [
        ['bob', 'spent'],
        ['carol', 'expired'],
      ],
    );
  });

  await t.test('a new invite for the same invitee replaces the old one (410)', async (t) => {
    const a = await req(base, 'POST', `/v1/rooms/${room}/invites`, { headers: bearer(alice), body: { invitee: 'carol', expires_in: 600 } });
    const b = await req(base, 'POST', `/v1/rooms/${room}/invites`, { headers: bearer(alice), body: { invitee: 'carol', expires_in: 600 } });
    for (const x of [a, b]) secrets.add('invite_url', 'carol invite', new URL(x.json.url).pathname.split('/').pop()!);
    t.not(a.json.url, b.json.url);
    t.equal((await req(base, 'POST', new URL(a.json.url).pathname, { headers: bearer(carol) })).status, 410, 'the replaced one');
    const ok = await req(base, 'POST', new URL(b.json.url).pathname, { headers: bearer(carol) });
    t.equal(ok.status, 200, 'the new one');
    secrets.add('token', 'carol room token', ok.json.token);
    secrets.add('turn_credential', 'carol', ok.json.turn.credential);
  });

  await t.test('revoked: the URL answers 410; revoking or removing a participant ends their room tokens (onRevoke)', async (t) => {
    const revoked: string[] = [];
    core.core.tokens.onRevoke((c) => revoked.push(`${c.sub}@${c.room}`));
    // Revoke an unused invite.
    const inv = await req(base, 'POST', `/v1/rooms/${room}/invites`, { headers: bearer(alice), body: { invitee: 'bob', expires_in: 600 } });
    secrets.add('invite_url', 'bob invite 2', new URL(inv.json.url).pathname.split('/').pop()!);
    t.equal((await req(base, 'DELETE', `/v1/rooms/${room}/invites/bob`, { headers: bearer(bob) })).status, 403, 'only the owner revokes');
    t.equal((await req(base, 'DELETE', `/v1/rooms/${room}/invites/bob`, { headers: bearer(alice) })).status, 204);
    t.equal((await req(base, 'POST', new URL(inv.json.url).pathname, { headers: bearer(bob) })).status, 410, 'revoked');
    t.same(revoked, ['bob@' + room], "bob's earlier room token was revoked with it");
    // Remove an admitted participant.
    t.equal((await req(base, 'DELETE', `/v1/rooms/${room}/participants/carol`, { headers: bearer(carol) })).status, 403);
    t.equal((await req(base, 'DELETE', `/v1/rooms/${room}/participants/carol`, { headers: bearer(alice) })).status, 204);
    t.same(revoked, ['bob@' + room, 'carol@' + room], "carol's room token is revoked");
    t.equal((await req(base, 'GET', '/v1/rooms', { headers: bearer(carol) })).status, 200, "carol's own user token is untouched");
    t.equal((await req(base, 'DELETE', `/v1/rooms/${room}/invites/nobody`, { headers: bearer(alice) })).status, 404);
  });

  await t.test('no secret in the log or DATA_DIR; no contained exception', async (t) => {
    log.flush?.();
    await new Promise((r) => setTimeout(r, 50));
    t.ok(
      logLines.some((l) => /invitation spent: admitted/.test(l)),
      'the log was captured',
    );
    assertNoSecrets(t, secrets, { texts: { log: logLines.join(''), events: JSON.stringify(events.events) }, dirs: { data: dir } });
    t.equal(supervisor.total, 0, 'no handler failed');
  });
});
