import t from 'tap';
import { createHmac } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import {
  NONCE_COOKIE,
  NonceManager,
  encodeFeatures,
  nonceFeatures,
  resolveCredential,
  restPassword,
  FEATURE_PASSWORD_ALGORITHMS,
} from '../../../src/turn/auth.js';

t.test('nonces: cookie, features, expiry, binding to the client IP', async (t) => {
  const clock = new ManualClock();
  const n = new NonceManager(clock, 600);
  const a = n.issue('192.0.2.1');
  t.ok(a.startsWith(NONCE_COOKIE + 'gAAA'));
  t.equal(nonceFeatures(a), FEATURE_PASSWORD_ALGORITHMS);
  t.equal(encodeFeatures(0x000002), 'AAAC');
  t.equal(nonceFeatures('plain'), null);
  t.ok(a.length < 128, 'short (RFC 8489 §14.10: < 128 characters)');
  t.notOk(/["\\]/.test(a), 'qdtext only');
  t.equal(n.check(a, '192.0.2.1'), 'ok');
  t.equal(n.check(a, '192.0.2.2'), 'invalid', 'bound to the client IP');
  t.equal(n.check(a.slice(0, -2) + (a.endsWith('AA') ? 'BB' : 'AA'), '192.0.2.1'), 'invalid', 'tampered');
  t.equal(n.check('obMatJos2gAAA', '192.0.2.1'), 'invalid');
  t.not(n.issue('192.0.2.1'), a, 'fresh each time');
  clock.advance(599_000);
  t.equal(n.check(a, '192.0.2.1'), 'ok');
  clock.advance(1_000);
  t.equal(n.check(a, '192.0.2.1'), 'stale');
  const other = new NonceManager(clock, 600);
  t.equal(other.check(n.issue('192.0.2.1'), '192.0.2.1'), 'invalid', 'another server secret');
});

t.test('credentials: directory users and TURN REST', async (t) => {
  const users = { lookup: (n: string) => (n === 'alice' ? { name: 'alice', password: 'pw', groups: ['g'] } : undefined) };
  const now = Date.UTC(2026, 0, 1);
  const r = resolveCredential('alice', users, null, now);
  t.ok(r.ok && r.cred.password === 'pw' && r.cred.user === 'alice' && !r.cred.rest);
  t.same(resolveCredential('bob', users, null, now), { ok: false, reason: 'unknown_user' });
  const exp = now / 1000 + 60;
  const u = `${exp}:alice`;
  const rr = resolveCredential(u, users, 's3cret', now);
  t.ok(rr.ok);
  if (rr.ok) {
    t.equal(rr.cred.user, 'alice');
    t.same(rr.cred.groups, ['g'], 'groups of the named user');
    t.equal(rr.cred.password, createHmac('sha1', 's3cret').update(u).digest('base64'));
    t.equal(rr.cred.password, restPassword('s3cret', u));
  }
  t.same(resolveCredential(`${now / 1000 - 1}:alice`, users, 's3cret', now), { ok: false, reason: 'rest_expired' });
  t.same(resolveCredential(`${exp}:alice`, users, null, now), { ok: false, reason: 'unknown_user' }, 'no REST without a secret');
  const bare = resolveCredential(`${exp}`, users, 's3cret', now);
  t.ok(bare.ok && bare.cred.user === `${exp}`, 'timestamp-only REST username');
});
