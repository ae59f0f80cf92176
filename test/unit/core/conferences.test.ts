import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { createLogger } from '../../../src/util/log.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { systemClock } from '../../../src/util/clock.js';
import { Router, CoreHttpServer } from '../../../src/core/http.js';
import { TokenService } from '../../../src/core/tokens.js';
import { DigestAuthenticator } from '../../../src/core/digest.js';
import { FailureLimiter } from '../../../src/core/ratelimit.js';
import { TurnCredentialIssuer } from '../../../src/core/turn-credentials.js';
import { Conferences, FePool } from '../../../src/core/conferences.js';
import { FrontEnd } from '../../../src/core/fe/frontend.js';
import { FeHttpServer } from '../../../src/core/fe/server.js';
import { RemoteFe } from '../../../src/core/fe/client.js';
import { guestHa1 } from '../../../src/core/fe/keys.js';
import { call, digestAuthorization, encryptKey, joinAsGuest, newConferenceKey } from '../../e2e/helpers/core-guest.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-conf-'));
const logText: string[] = [];
const sink = new PassThrough();
sink.on('data', (c: Buffer) => logText.push(c.toString()));
const log = createLogger({ level: 'debug' }, sink);
const secret = 'p'.repeat(40);
const feA = new FrontEnd(join(dir, 'a'), systemClock, { rsaBits: 2048 });
const feB = new FrontEnd(join(dir, 'b'), systemClock, { rsaBits: 2048 });
const feBHttp = new FeHttpServer(feB, secret, log);
const tokens = new TokenService(systemClock);
const limiter = new FailureLimiter(systemClock);
const turn = new TurnCredentialIssuer('r'.repeat(32), ['turn:127.0.0.1:3478?transport=udp'], 300, () => Date.now());
const router = new Router(log, new Supervisor(log));
const server = new CoreHttpServer(router);
let base = '';
let fePort = 0;
let conferences: Conferences;

t.before(async () => {
  const { port } = await feBHttp.listen(0, '127.0.0.1');
  fePort = port;
  const pool = new FePool(
    [
      { fe: feA, label: 'a' },
      { fe: new RemoteFe(`http://127.0.0.1:${port}`, secret), label: 'b' },
    ],
    secret,
    log,
  );
  await pool.refresh();
  conferences = new Conferences({
    pool,
    tokens,
    digest: new DigestAuthenticator(systemClock),
    limiter,
    turnFor: (c) => turn.issue({ kind: 'guest', conference: c.conference!, identity: c.identity! }),
    publicUrl: () => base,
    log,
    clock: systemClock,
  });
  router.addRoutes(conferences.routes());
  await server.listen('127.0.0.1', 0);
  base = server.url;
});
t.teardown(async () => {
  conferences.close();
  await server.close();
  await feBHttp.close();
  feA.close();
  feB.close();
  rmSync(dir, { recursive: true, force: true });
});

const alice = tokens.issue({ kind: 'user', sub: 'alice', groups: [] }).token;
const bob = tokens.issue({ kind: 'user', sub: 'bob', groups: [] }).token;
const secrets: string[] = [alice, bob];

async function create(token = alice): Promise<{ id: string; k: string; fe: string }> {
  const ck = await call(base, 'GET', '/v1/conference-key', { token });
  const k = newConferenceKey();
  secrets.push(k);
  const r = await call(base, 'POST', '/v1/conferences', {
    token,
    body: { fe: ck.json.fe, key: encryptKey(ck.json.public_key, k), title: 'T' },
  });
  if (r.status !== 201) throw new Error(`create: ${r.status} ${r.text}`);
  return { id: r.json.id, k, fe: ck.json.fe };
}

t.test('conference-key: user token, opaque FE ids, round robin over the pool', async (t) => {
  t.equal((await call(base, 'GET', '/v1/conference-key')).status, 401);
  const a = await call(base, 'GET', '/v1/conference-key', { token: alice });
  const b = await call(base, 'GET', '/v1/conference-key', { token: alice });
  t.equal(a.status, 200);
  t.match(a.json.public_key, /^-----BEGIN PUBLIC KEY-----\n/);
  t.not(a.json.fe, b.json.fe, 'two FEs, two ids');
  for (const id of [a.json.fe, b.json.fe]) {
    t.match(id, /^[A-Za-z0-9_-]{22}$/);
    t.notOk(id.includes(feA.keys.fingerprint.slice(0, 8)) || id.includes(feB.keys.fingerprint.slice(0, 8)), 'not the fingerprint');
    t.notOk(id.includes(String(fePort)) || id.includes('127.0') || id.includes('http'), 'no address');
  }
});

t.test('create: lands on the FE the id names; forged id 409; key for another FE 400', async (t) => {
  const seen = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const c = await create();
    const onA = feA.store.conference(c.id);
    const onB = feB.store.conference(c.id);
    t.ok(Boolean(onA) !== Boolean(onB), 'on exactly one FE');
    seen.add(onA ? 'a' : 'b');
    t.equal((onA ?? onB)!.owner, 'alice');
  }
  t.same([...seen].sort(), ['a', 'b'], 'both FEs used');
  const ck = await call(base, 'GET', '/v1/conference-key', { token: alice });
  const forged = await call(base, 'POST', '/v1/conferences', {
    token: alice,
    body: { fe: 'A'.repeat(22), key: encryptKey(ck.json.public_key, newConferenceKey()) },
  });
  t.equal(forged.status, 409);
  t.equal(forged.json.error.code, 'unknown_fe');
  const other = await call(base, 'GET', '/v1/conference-key', { token: alice });
  const cross = await call(base, 'POST', '/v1/conferences', {
    token: alice,
    body: { fe: other.json.fe, key: encryptKey(ck.json.public_key, newConferenceKey()) },
  });
  t.equal(cross.status, 400, 'encrypted for the other FE');
  const short = await call(base, 'POST', '/v1/conferences', {
    token: alice,
    body: { fe: ck.json.fe, key: encryptKey(ck.json.public_key, 'tooShort') },
  });
  t.equal(short.status, 400, 'K under 22 characters');
  t.equal((await call(base, 'POST', '/v1/conferences', { body: { fe: ck.json.fe, key: 'x' } })).status, 401);
});

t.test('join: challenge, wrong key, success, identity_in_use (racing too), 403 elsewhere, leave, removal', async (t) => {
  const c = await create();
  const c2 = await create();
  const path = `/v1/conferences/${c.id}/join`;
  const ch = await call(base, 'POST', path);
  t.equal(ch.status, 401);
  const www = ch.headers.get('www-authenticate')!;
  t.match(www, new RegExp(`^Digest realm="conference:${c.id}", qop="auth", algorithm=SHA-256, nonce="[^"]+", opaque="[^"]+"`));
  t.equal(ch.json.error.code, 'unauthenticated');

  const wrong = await call(base, 'POST', path, { authorization: digestAuthorization(www, 'carol', newConferenceKey(), 'POST', path) });
  t.equal(wrong.status, 401, 'wrong key');
  t.ok(wrong.headers.get('www-authenticate'), 'fresh challenge');

  const { answer } = await joinAsGuest(base, c.id, 'carol', c.k);
  t.equal(answer.status, 200, answer.text);
  t.equal(answer.json.conference, c.id);
  t.equal(answer.json.identity, 'carol');
  t.match(answer.json.turn.username, new RegExp(`^\\d+:guest/${c.id}/carol$`));
  t.ok(answer.json.turn.credential);
  const guest = answer.json.token as string;
  secrets.push(guest);

  const dup = await joinAsGuest(base, c.id, 'carol', c.k);
  t.equal(dup.answer.status, 409);
  t.equal(dup.answer.json.error.code, 'identity_in_use');
  const dupWrong = await joinAsGuest(base, c.id, 'carol', newConferenceKey());
  t.equal(dupWrong.answer.status, 401, 'a wrong key learns nothing of the identity');

  const race = await Promise.all([joinAsGuest(base, c.id, 'dave', c.k), joinAsGuest(base, c.id, 'dave', c.k)]);
  t.same(race.map((r) => r.answer.status).sort(), [200, 409], 'two racing joins: one wins');

  t.equal((await call(base, 'GET', `/v1/conferences/${c.id}`, { token: guest })).status, 200);
  const elsewhere = await call(base, 'GET', `/v1/conferences/${c2.id}`, { token: guest });
  t.equal(elsewhere.status, 403, 'guest token for another conference');
  t.equal(elsewhere.json.error.code, 'forbidden');
  t.equal((await call(base, 'GET', '/v1/conference-key', { token: guest })).status, 403, 'guest on a user-only call');
  t.equal((await call(base, 'POST', `/v1/conferences/${c2.id}/leave`, { token: guest })).status, 403);

  t.equal((await joinAsGuest(base, c2.id, 'carol', c2.k)).answer.status, 200, 'same identity in another conference');
  const bad = await joinAsGuest(base, c.id, 'a:b', c.k);
  t.equal(bad.answer.status, 401, 'identity with ":"');

  t.equal((await call(base, 'POST', `/v1/conferences/${c.id}/leave`, { token: guest })).status, 204);
  t.equal((await call(base, 'GET', `/v1/conferences/${c.id}`, { token: guest })).status, 401, 'token ended');
  await new Promise((r) => setTimeout(r, 50));
  const again = await joinAsGuest(base, c.id, 'carol', c.k);
  t.equal(again.answer.status, 200, 'free again after leaving');

  t.equal((await call(base, 'DELETE', `/v1/conferences/${c.id}/guests/carol`, { token: bob })).status, 403, 'not the owner');
  t.equal((await call(base, 'DELETE', `/v1/conferences/${c.id}/guests/carol`, { token: alice })).status, 204);
  t.equal(
    (await call(base, 'GET', `/v1/conferences/${c.id}`, { token: again.answer.json.token })).status,
    401,
    'removed guest token revoked',
  );
  t.equal((await joinAsGuest(base, c.id, 'carol', c.k)).answer.status, 200, 'free again after removal');
  t.equal((await joinAsGuest(base, 'nosuchconference', 'x', c.k)).answer.status, 404);
});

t.test('exists(): what signalling asks before a join', async (t) => {
  const c = await create();
  t.equal(await conferences.exists(c.id), true);
  t.equal(await conferences.exists('nosuch'), false);
  t.equal(await conferences.exists('../x'), false);
});

t.test('failed joins are rate-limited per source: 429 with Retry-After', async (t) => {
  const c = await create();
  let last = 0;
  let retry: string | null = null;
  for (let i = 0; i < 12; i++) {
    const r = await joinAsGuest(base, c.id, `x${i}`, newConferenceKey());
    last = r.answer.status;
    retry = r.answer.headers.get('retry-after');
    if (last === 429) break;
  }
  t.equal(last, 429);
  t.match(retry, /^\d+$/);
});

t.test('no secret in the log', async (t) => {
  const text = logText.join('');
  t.ok(text.length > 0, 'something was logged');
  for (const s of secrets) t.notOk(text.includes(s), 'secret absent');
  t.notMatch(text, /[0-9a-f]{64}/, 'no HA1-looking hex');
  t.notOk(text.includes(guestHa1('carol', 'x', 'y').slice(0, 0) + 'BEGIN PRIVATE'), 'no private key');
});
