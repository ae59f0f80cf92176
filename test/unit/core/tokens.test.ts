// Core tokens (src/core/tokens.ts): opaque, 256 bits, kept hashed; expiry by the driven
// clock; revoke one or by predicate with onRevoke listeners; bounded count.
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { TokenService, tokenId, bearerToken, requireToken, requireUser } from '../../../src/core/tokens.js';
import { CoreError } from '../../../src/core/errors.js';
import type { IncomingMessage } from 'node:http';

/** The CoreError fn throws (or null). */
function thrown(fn: () => unknown): CoreError | null {
  try {
    fn();
  } catch (e) {
    return e instanceof CoreError ? e : null;
  }
  return null;
}

const req = (authorization?: string) => ({ headers: authorization ? { authorization } : {} }) as IncomingMessage;

t.test('issue, verify, expiry (default 1 h), claims with Unix seconds', async (t) => {
  const clock = new ManualClock();
  const ts = new TokenService(clock);
  const { token, claims } = ts.issue({ kind: 'user', sub: 'alice', groups: ['g'] });
  t.match(token, /^ght_[A-Za-z0-9_-]{43}$/, '256 random bits, base64url');
  t.equal(claims.iat, Math.floor(clock.now() / 1000));
  t.equal(claims.exp, claims.iat + 3600);
  t.same(ts.verify(token), claims);
  t.not(ts.issue({ kind: 'user', sub: 'alice', groups: [] }).token, token, 'each token is fresh');
  t.equal(ts.verify(token + 'x'), null);
  t.equal(ts.verify(''), null);
  clock.advance(3599_000);
  t.ok(ts.verify(token));
  clock.advance(1000);
  t.equal(ts.verify(token), null, 'expired at exp');
  t.equal(tokenId(token).length, 43, 'kept under its SHA-256, never the token itself');
  // A shorter ttl is honoured; a longer one is clamped to core.token_ttl.
  t.equal(ts.issue({ kind: 'user', sub: 'a', groups: [] }, 60).claims.exp - Math.floor(clock.now() / 1000), 60);
  t.equal(ts.issue({ kind: 'user', sub: 'a', groups: [] }, 99999).claims.exp - Math.floor(clock.now() / 1000), 3600);
});

t.test('revoke one, revoke by predicate, listeners hear it, a throwing listener is contained', async (t) => {
  const clock = new ManualClock();
  const errors: unknown[] = [];
  const ts = new TokenService(clock, { onListenerError: (e) => errors.push(e) });
  const heard: string[] = [];
  ts.onRevoke(() => {
    throw new Error('listener bug');
  });
  const off = ts.onRevoke((c) => heard.push(`${c.sub}@${c.conference ?? c.room ?? '-'}`));
  const a = ts.issue({ kind: 'guest', sub: 'guest/c1/bob', groups: [], conference: 'c1', identity: 'bob' });
  const b = ts.issue({ kind: 'guest', sub: 'guest/c1/bob', groups: [], conference: 'c1', identity: 'bob' });
  const c = ts.issue({ kind: 'guest', sub: 'guest/c2/bob', groups: [], conference: 'c2', identity: 'bob' });
  const u = ts.issue({ kind: 'user', sub: 'alice', groups: [] });
  t.equal(
    ts.revokeWhere((x) => x.conference === 'c1' && x.identity === 'bob'),
    2,
  );
  t.equal(ts.verify(a.token), null);
  t.equal(ts.verify(b.token), null);
  t.ok(ts.verify(c.token), 'the same identity in another conference stays');
  t.same(heard, ['guest/c1/bob@c1', 'guest/c1/bob@c1']);
  t.equal(errors.length, 2, 'the throwing listener was contained each time');
  t.equal(ts.revoke(u.token), true);
  t.equal(ts.revoke(u.token), false);
  off();
  ts.revoke(c.token);
  t.equal(heard.length, 3, 'unsubscribed');
});

t.test('bounded: beyond max, expired first, then the oldest (announced as revoked)', async (t) => {
  const clock = new ManualClock();
  const ts = new TokenService(clock, { max: 3 });
  const revoked: string[] = [];
  ts.onRevoke((c) => revoked.push(c.sub));
  const old = ts.issue({ kind: 'user', sub: 'old', groups: [] }, 10);
  const a = ts.issue({ kind: 'user', sub: 'a', groups: [] });
  ts.issue({ kind: 'user', sub: 'b', groups: [] });
  clock.advance(11_000);
  ts.issue({ kind: 'user', sub: 'c', groups: [] });
  t.equal(ts.size, 3);
  t.same(revoked, [], 'the expired one made room silently');
  t.equal(ts.verify(old.token), null);
  ts.issue({ kind: 'user', sub: 'd', groups: [] });
  t.equal(ts.size, 3);
  t.same(revoked, ['a'], 'the oldest live one was evicted and announced');
  t.equal(ts.verify(a.token), null);
});

t.test('bearer parsing, requireToken (401 with WWW-Authenticate: Bearer), requireUser (403 for stamped tokens)', async (t) => {
  const ts = new TokenService(new ManualClock());
  const u = ts.issue({ kind: 'user', sub: 'alice', groups: [] });
  const g = ts.issue({ kind: 'guest', sub: 'guest/c/x', groups: [], conference: 'c', identity: 'x' });
  const r = ts.issue({ kind: 'user', sub: 'bob', groups: [], room: 'r1' });
  t.equal(bearerToken(req(`Bearer ${u.token}`)), u.token);
  t.equal(bearerToken(req(`bearer ${u.token}`)), u.token, 'scheme is case-insensitive (RFC 9110 §11.1)');
  t.equal(bearerToken(req(`Basic abc`)), null);
  t.equal(requireToken(req(`Bearer ${u.token}`), ts).sub, 'alice');
  {
    const e = thrown(() => requireToken(req(), ts));
    t.ok(e && e.status === 401 && e.headers['www-authenticate'] === 'Bearer');
  }
  {
    const e = thrown(() => requireToken(req('Bearer ght_nope'), ts));
    t.ok(e && e.code === 'unauthenticated' && /invalid_token/.test(String(e.headers['www-authenticate'])));
  }
  t.equal(requireUser(req(`Bearer ${u.token}`), ts).sub, 'alice');
  {
    const e = thrown(() => requireUser(req(`Bearer ${g.token}`), ts));
    t.ok(e && e.status === 403 && e.code === 'forbidden');
  }
  {
    const e = thrown(() => requireUser(req(`Bearer ${r.token}`), ts));
    t.ok(e && e.status === 403);
  }
});

t.test('core.md §2 "on any mechanism": bad bearer tokens count toward the per-source limit', async (t) => {
  const { FailureLimiter } = await import('../../../src/core/ratelimit.js');
  const clock = new ManualClock();
  const limiter = new FailureLimiter(clock);
  const ts = new TokenService(clock, { limiter });
  const good = ts.issue({ kind: 'user', sub: 'alice', groups: [] }).token;
  const from = (authorization: string, addr: string) =>
    ({ headers: { authorization }, socket: { remoteAddress: addr } }) as unknown as IncomingMessage;
  for (let i = 0; i < 10; i++) t.equal(thrown(() => requireToken(from('Bearer ght_wrong', '::ffff:192.0.2.9'), ts))?.status, 401);
  t.equal(
    thrown(() => requireToken(from(`Bearer ${good}`, '192.0.2.9'), ts))?.code,
    'rate_limited',
    'then even a good token waits (IPv4-mapped is one source)',
  );
  t.equal(requireToken(from(`Bearer ${good}`, '192.0.2.10'), ts).sub, 'alice', 'another source is not affected');
  clock.advance(60_000);
  t.equal(requireToken(from(`Bearer ${good}`, '192.0.2.9'), ts).sub, 'alice', 'after the minute');
});
