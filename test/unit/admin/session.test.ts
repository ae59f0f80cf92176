// Dashboard sessions (src/admin/session.ts): bounded, expiring, a CSRF token per session,
// and the cookie attributes the dashboard relies on (HttpOnly, SameSite=Strict, Secure on https).
import t from 'tap';
import { SessionStore, SESSION_COOKIE, cookieValue, sessionCookie } from '../../../src/admin/session.js';

t.test('create, lookup by Cookie header, CSRF match, destroy', async (t) => {
  const s = new SessionStore(4, 1000);
  const a = s.create();
  t.match(a.id, /^[A-Za-z0-9_-]{43}$/, '256-bit base64url id');
  t.not(a.id, a.csrf, 'the CSRF token is not the session id');
  t.same(s.lookup(`other=1; ${SESSION_COOKIE}=${a.id}`), a);
  t.equal(s.lookup(`${SESSION_COOKIE}=${a.id}x`), undefined, 'an unknown id is no session');
  t.equal(s.lookup(undefined), undefined);
  t.ok(s.csrfMatches(a, a.csrf));
  t.notOk(s.csrfMatches(a, a.csrf.slice(1)), 'a prefix does not match');
  t.notOk(s.csrfMatches(a, ''), 'empty never matches');
  t.notOk(s.csrfMatches(a, undefined));
  t.notOk(s.csrfMatches(a, s.create().csrf), "another session's token does not match");
  s.destroy(a.id);
  t.equal(s.lookup(`${SESSION_COOKIE}=${a.id}`), undefined, 'gone after destroy');
});

t.test('sessions expire and the store is bounded (oldest goes)', async (t) => {
  let now = 1000;
  const s = new SessionStore(3, 500, () => now);
  const a = s.create();
  const b = s.create();
  const c = s.create();
  const d = s.create();
  t.equal(s.size, 3, 'never more than the bound');
  t.equal(s.lookup(`${SESSION_COOKIE}=${a.id}`), undefined, 'the oldest was dropped');
  t.ok(s.lookup(`${SESSION_COOKIE}=${d.id}`));
  now += 500;
  t.equal(s.lookup(`${SESSION_COOKIE}=${b.id}`), undefined, 'expired at its TTL');
  t.equal(s.lookup(`${SESSION_COOKIE}=${c.id}`), undefined);
  s.create();
  t.equal(s.size, 1, 'expired sessions are swept on create');
});

t.test('sessionCookie attributes (RFC 6265 §4.1.2) and cookieValue', async (t) => {
  const plain = sessionCookie('abc', false, 60);
  t.match(plain, /^gh_session=abc; /);
  t.match(plain, /; HttpOnly/);
  t.match(plain, /; SameSite=Strict/);
  t.match(plain, /; Path=\//);
  t.match(plain, /; Max-Age=60/);
  t.notMatch(plain, /Secure/, 'no Secure on plain http');
  t.match(sessionCookie('abc', true, 60), /; Secure$/, 'Secure on https');
  t.equal(cookieValue('a=1; gh_session=xyz; b=2', 'gh_session'), 'xyz');
  t.equal(cookieValue('gh_sessionx=1', 'gh_session'), undefined);
  t.equal(cookieValue(undefined, 'gh_session'), undefined);
});
