// RFC 7616 Digest SHA-256 (src/core/digest.ts): the RFC's §3.9.1 example vector, the
// header parser (quoted strings, escapes, commas), nonces (realm-bound, expiring), and
// core.md §3's replay rule (a higher nc again is fine, the same nonce and nc is not).
import t from 'tap';
import { createHash } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { DigestAuthenticator, digestHa1, digestResponse, parseAuthHeader, quote, decodeExtValue } from '../../../src/core/digest.js';

const H = (s: string) => createHash('sha256').update(s).digest('hex');

t.test('RFC 7616 §3.9.1: the SHA-256 example response', async (t) => {
  // RFC 7616 §3.9.1 (with erratum 4495: "Circle of Life", lowercase "of").
  const ha1 = digestHa1('Mufasa', 'http-auth@example.org', 'Circle of Life');
  t.equal(ha1, H('Mufasa:http-auth@example.org:Circle of Life'));
  const r = digestResponse({
    ha1,
    nonce: '7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v',
    nc: '00000001',
    cnonce: 'f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ',
    qop: 'auth',
    method: 'GET',
    uri: '/dir/index.html',
  });
  t.equal(r, '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1');
});

t.test('parseAuthHeader: RFC 9110 §11.2 auth-params with quoted strings and commas', async (t) => {
  const h = parseAuthHeader(
    'Digest username="Mu\\"fa, sa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nc=00000001, ,qop=auth, response="ab"',
  )!;
  t.equal(h.scheme, 'Digest');
  t.equal(h.params.get('username'), 'Mu"fa, sa');
  t.equal(h.params.get('realm'), 'http-auth@example.org');
  t.equal(h.params.get('algorithm'), 'SHA-256');
  t.equal(h.params.get('nc'), '00000001');
  t.equal(h.params.get('qop'), 'auth');
  t.equal(parseAuthHeader('Digest realm="unterminated'), null, 'unterminated quoted string');
  t.equal(parseAuthHeader('Digest realm="a", realm="b"'), null, 'a parameter twice (RFC 9110 §11.2)');
  t.equal(parseAuthHeader('Digest realm'), null, 'no =');
  t.equal(parseAuthHeader('Digest ' + 'a=b,'.repeat(2000)), null, 'over the length bound');
  t.equal(quote('a"b\\c'), '"a\\"b\\\\c"');
  t.equal(parseAuthHeader(`Digest x=${quote('a"b\\c')}`)!.params.get('x'), 'a"b\\c', 'quote() round-trips');
  t.equal(decodeExtValue("UTF-8''J%C3%A4s%C3%B8n%20Doe"), 'Jäsøn Doe', 'RFC 7616 §3.9.2 username* ext-value');
});

/** A client answer for a challenge (RFC 7616 §3.4). */
function answer(
  challenge: string,
  o: { user: string; password: string; method?: string; uri?: string; nc?: number; cnonce?: string; realm?: string },
) {
  const c = parseAuthHeader(challenge)!.params;
  const realm = o.realm ?? c.get('realm')!;
  const nonce = c.get('nonce')!;
  const nc = (o.nc ?? 1).toString(16).padStart(8, '0');
  const cnonce = o.cnonce ?? 'cn' + Math.random().toString(36).slice(2);
  const method = o.method ?? 'POST';
  const uri = o.uri ?? '/v1/login';
  const response = digestResponse({ ha1: digestHa1(o.user, realm, o.password), nonce, nc, cnonce, qop: 'auth', method, uri });
  return {
    method,
    url: uri,
    authorization: `Digest username=${quote(o.user)}, realm=${quote(realm)}, uri=${quote(uri)}, algorithm=SHA-256, qop=auth, nc=${nc}, cnonce=${quote(cnonce)}, nonce=${quote(nonce)}, opaque=${quote(c.get('opaque')!)}, response="${response}"`,
  };
}

t.test('challenge → answer → verified; wrong password; unknown user; replay; nonce expiry; realm binding', async (t) => {
  const clock = new ManualClock();
  const d = new DigestAuthenticator(clock, { nonceLifetimeS: 300 });
  const ch = d.challenge('REALM');
  t.match(ch, /^Digest realm="REALM", qop="auth", algorithm=SHA-256, nonce="[A-Za-z0-9_-]{43}", opaque="[A-Za-z0-9_-]+"$/);
  const ha1Of = (u: string) => (u === 'alice' ? digestHa1('alice', 'REALM', 'pw') : null);

  const ok = await d.verify(answer(ch, { user: 'alice', password: 'pw' }), 'REALM', ha1Of);
  t.same(ok, { ok: true, username: 'alice', nonce: parseAuthHeader(ch)!.params.get('nonce'), nc: 1 });

  const replay = answer(ch, { user: 'alice', password: 'pw', nc: 1, cnonce: 'fixed' });
  t.same(
    await d.verify(replay, 'REALM', ha1Of),
    { ok: false, reason: 'replayed', username: 'alice' },
    'the same nonce and nc twice: replayed',
  );
  t.equal((await d.verify(answer(ch, { user: 'alice', password: 'pw', nc: 2 }), 'REALM', ha1Of)).ok, true, 'a higher nc on the same nonce');
  t.same(await d.verify(answer(ch, { user: 'alice', password: 'pw', nc: 2 }), 'REALM', ha1Of), {
    ok: false,
    reason: 'replayed',
    username: 'alice',
  });

  t.same(await d.verify(answer(ch, { user: 'alice', password: 'bad', nc: 9 }), 'REALM', ha1Of), {
    ok: false,
    reason: 'wrong',
    username: 'alice',
  });
  t.equal(
    (await d.verify(answer(ch, { user: 'alice', password: 'pw', nc: 9 }), 'REALM', ha1Of)).ok,
    true,
    'a wrong answer did not burn nc 9',
  );
  t.same(await d.verify(answer(ch, { user: 'mallory', password: 'pw', nc: 10 }), 'REALM', ha1Of), {
    ok: false,
    reason: 'wrong',
    username: 'mallory',
  });

  // Another realm's nonce (a guest challenge replayed at login) is not ours.
  const other = d.challenge('conference:c1');
  t.equal((await d.verify(answer(other, { user: 'alice', password: 'pw', realm: 'REALM' }), 'REALM', ha1Of)).ok, false);
  // A tampered nonce.
  const forged = answer(ch, { user: 'alice', password: 'pw', nc: 20 });
  forged.authorization = forged.authorization.replace(/ nonce="(.)/, (_m, c: string) => ` nonce="${c === 'A' ? 'B' : 'A'}`);
  t.match(await d.verify(forged, 'REALM', ha1Of), { ok: false, reason: 'unknown_nonce' });
  // The digest-uri must be the request-target (RFC 7616 §3.4.6).
  const moved = answer(ch, { user: 'alice', password: 'pw', nc: 21 });
  t.match(await d.verify({ ...moved, url: '/v1/other' }, 'REALM', ha1Of), { ok: false, reason: 'malformed' });
  // MD5 or no qop: not what we offer.
  const md5 = answer(ch, { user: 'alice', password: 'pw', nc: 22 });
  t.match(await d.verify({ ...md5, authorization: md5.authorization.replace('algorithm=SHA-256', 'algorithm=MD5') }, 'REALM', ha1Of), {
    reason: 'malformed',
  });
  t.match(await d.verify({ method: 'POST', url: '/v1/login', authorization: undefined }, 'REALM', ha1Of), { reason: 'missing' });
  t.match(await d.verify({ method: 'POST', url: '/v1/login', authorization: 'Basic YTpi' }, 'REALM', ha1Of), { reason: 'missing' });

  clock.advance(301_000);
  t.match(
    await d.verify(answer(ch, { user: 'alice', password: 'pw', nc: 30 }), 'REALM', ha1Of),
    { ok: false, reason: 'stale' },
    'an expired nonce is stale',
  );
  t.match(d.challenge('REALM', true), /, stale=true$/);
});

t.test('the used-nonce table is bounded and never re-opens a replay when it overflows', async (t) => {
  const clock = new ManualClock();
  const d = new DigestAuthenticator(clock, { maxUsedNonces: 2 });
  const ha1Of = () => digestHa1('u', 'R', 'p');
  const chs = [d.challenge('R'), d.challenge('R'), d.challenge('R')];
  const first = answer(chs[0]!, { user: 'u', password: 'p', cnonce: 'x' });
  t.equal((await d.verify(first, 'R', ha1Of)).ok, true);
  t.equal((await d.verify(answer(chs[1]!, { user: 'u', password: 'p' }), 'R', ha1Of)).ok, true);
  t.equal((await d.verify(answer(chs[2]!, { user: 'u', password: 'p' }), 'R', ha1Of)).ok, true);
  t.equal(d.usedNonces, 2, 'bounded');
  t.equal((await d.verify(first, 'R', ha1Of)).ok, false, 'the forgotten nonce is not accepted again');
});
