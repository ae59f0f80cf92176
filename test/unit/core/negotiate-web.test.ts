// The web client's Kerberos login (src/core/web/lib.js): whether a 401 offers Negotiate
// (RFC 4559 §4.1, among other challenges joined by Fetch), and negotiatePost's request
// (credentials 'include', so that the browser may answer Negotiate itself) and answers.
// fetch is a stand-in here; the browser's own Negotiate is proved with Chromium in
// test/e2e/core-kerberos.test.ts.
import t from 'tap';
// @ts-expect-error: plain JS module of the web client, no types
import { negotiatePost, offersNegotiate } from '../../../src/core/web/lib.js';

const res = (status: number, www: string | null, body: unknown = {}) =>
  new Response(JSON.stringify(body), {
    status,
    headers: www === null ? {} : { 'www-authenticate': www, 'content-type': 'application/json' },
  });

t.test('offersNegotiate', async (t) => {
  const digest = 'Digest realm="r", qop="auth", algorithm=SHA-256, nonce="n", opaque="o"';
  t.ok(offersNegotiate(res(401, 'Negotiate')));
  t.ok(offersNegotiate(res(401, `${digest}, Negotiate`)), 'after a Digest challenge (commas inside it)');
  t.ok(offersNegotiate(res(401, `Negotiate, ${digest}`)));
  t.ok(offersNegotiate(res(401, 'negotiate')), 'case-insensitive scheme (RFC 9110 §11.1)');
  t.notOk(offersNegotiate(res(401, digest)));
  t.notOk(offersNegotiate(res(401, 'Digest realm="Negotiated", nonce="x"')), 'not a word inside a parameter');
  t.notOk(offersNegotiate(res(401, null)));
});

t.test('negotiatePost: credentials include; 200 → the body; 401 → a Kerberos hint', async (t) => {
  const calls: RequestInit[] = [];
  const real = globalThis.fetch;
  t.teardown(() => void (globalThis.fetch = real));
  let next = res(200, 'Negotiate b2s=', { token: 'T', user: 'alice', groups: ['g'], expires: 1 });
  globalThis.fetch = (async (_url: string, init: RequestInit) => (calls.push(init), next)) as typeof fetch;
  t.same(await negotiatePost('/v1/login'), { token: 'T', user: 'alice', groups: ['g'], expires: 1 });
  t.equal(calls[0]!.credentials, 'include', 'the browser may use its Kerberos ticket');
  t.equal(calls[0]!.method, 'POST');
  t.notOk((calls[0]!.headers as Record<string, string>).Authorization, 'the page sends no credentials itself');
  next = res(401, 'Negotiate', { error: { code: 'unauthenticated', message: 'mallory is not a user here' } });
  const e = await negotiatePost('/v1/login').catch((x: unknown) => x);
  t.match(e, {
    status: 401,
    code: 'unauthenticated',
    message: /Kerberos login failed: mallory is not a user here\. Does this browser have a ticket/,
  });
  next = res(429, null, { error: { code: 'rate_limited', message: 'slow down' } });
  t.match(await negotiatePost('/v1/login').catch((x: unknown) => x), { status: 429, code: 'rate_limited' });
});
