/**
 * core.md §8: the TURN REST username forms `EXPIRY:USER` and
 * `EXPIRY:guest/CONFERENCE/IDENTITY` map to user, groups, guest and conference.
 */
import t from 'tap';
import { guestUser, parseGuestUser, resolveCredential, restPassword } from '../../../src/turn/auth.js';

const users = {
  lookup: (n: string) =>
    n === 'alice'
      ? { name: 'alice', password: 'pw', groups: ['trading'] }
      : n === 'guest/board-1/eve'
        ? { name: 'guest/board-1/eve', password: 'x', groups: ['admins'] }
        : undefined,
};
const now = Date.UTC(2026, 0, 1);
const exp = Math.floor(now / 1000) + 600;

t.test('EXPIRY:USER: the user with its directory groups, not a guest', async (t) => {
  const r = resolveCredential(`${exp}:alice`, users, 's3cret', now);
  t.ok(r.ok);
  if (!r.ok) return;
  t.equal(r.cred.user, 'alice');
  t.same(r.cred.groups, ['trading']);
  t.equal(r.cred.guest, undefined);
  t.equal(r.cred.conference, undefined);
  t.equal(r.cred.password, restPassword('s3cret', `${exp}:alice`));
});

t.test('EXPIRY:guest/CONFERENCE/IDENTITY: a guest of that conference, no groups', async (t) => {
  const name = `${exp}:${guestUser('board-1', 'eve')}`;
  const r = resolveCredential(name, users, 's3cret', now);
  t.ok(r.ok);
  if (!r.ok) return;
  t.equal(r.cred.username, name, 'the username as sent (what 441 compares)');
  t.equal(r.cred.user, 'guest/board-1/eve', 'the account is the whole guest name');
  t.same(r.cred.groups, [], 'a guest never gets the groups of a directory user of the same name');
  t.equal(r.cred.guest, true);
  t.equal(r.cred.conference, 'board-1');
  t.equal(r.cred.password, restPassword('s3cret', name), 'password over the whole username');
});

t.test('expired guest credentials are refused like any REST credential', async (t) => {
  const r = resolveCredential(`${Math.floor(now / 1000) - 1}:guest/board-1/eve`, users, 's3cret', now);
  t.same(r, { ok: false, reason: 'rest_expired' });
});

t.test('without a REST secret the guest form is not a credential', async (t) => {
  const r = resolveCredential(`${exp}:guest/board-1/eve`, users, null, now);
  t.same(r, { ok: false, reason: 'unknown_user' });
});

t.test('malformed guest names: never a guest, never a directory user', async (t) => {
  for (const u of ['guest/', 'guest/board-1', 'guest//eve', 'guest/board-1/', 'guest/b/e/x', 'guest/b/e:x', `guest/b/${'x'.repeat(65)}`]) {
    t.equal(parseGuestUser(u), null, `${JSON.stringify(u)} is not a guest name`);
    const r = resolveCredential(`${exp}:${u}`, users, 's3cret', now);
    t.ok(r.ok);
    if (!r.ok) continue;
    t.equal(r.cred.guest, undefined, `${u}: not a guest`);
    t.same(r.cred.groups, [], `${u}: no directory groups`);
  }
  t.same(parseGuestUser('guest/board-1/Ève 2'), { conference: 'board-1', identity: 'Ève 2' });
  t.same(parseGuestUser(`guest/c/${'é'.repeat(64)}`), { conference: 'c', identity: 'é'.repeat(64) }, '64 characters, not bytes');
  t.equal(parseGuestUser('guest/c/a\u0007'), null, 'control characters');
  t.equal(parseGuestUser('alice'), null);
});
