// Cluster users carry their RFC 8489 §9.2.2 long-term keys, never the password (issue 14,
// README "Cluster"): what `gatehouse user add` stores holds no password; the TURN server
// verifies MESSAGE-INTEGRITY (MD5 key) and MESSAGE-INTEGRITY-SHA256 (PASSWORD-ALGORITHM
// SHA-256, §18.5) with the stored keys; a wrong password gets 401 (§9.2.4); keys made for
// another realm or the old {password} form are refused; configuration users are unchanged.
import t from 'tap';
import { Attr, Class, Method, longTermKey, type StunWriter } from '../../../src/wire/stun.js';
import { encodeEntry, parseEntry } from '../../../src/cluster/users.js';
import type { UserRecord } from '../../../src/store/users.js';
import { Client, errCode, startServer } from '../turn/helpers.js';

const REALM = 'gatehouse.local';
const PW = 'dave-Pässwörd-\u00a0x'; // non-ASCII and a non-ASCII space: OpaqueString matters (RFC 8265 §4.2)
const alloc = (w: StunWriter) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

t.test('the stored entry: keys, no password', async (t) => {
  const json = encodeEntry({ name: 'dave', password: PW, groups: ['staff'], realm: REALM });
  t.notOk(json.includes(PW), 'the password is not in the entry');
  t.notOk(json.includes('password'), 'nor a password field');
  const v = JSON.parse(json);
  t.same(Object.keys(v).sort(), ['groups', 'key_md5', 'key_sha256', 'realm']);
  t.equal(v.key_md5, longTermKey('dave', REALM, PW, 'md5').toString('hex'), 'MD5(user:OpaqueString(realm):OpaqueString(pw))');
  t.equal(v.key_sha256, longTermKey('dave', REALM, PW, 'sha256').toString('hex'), 'SHA-256 of the same');
  t.equal(v.key_md5.length, 32);
  t.equal(v.key_sha256.length, 64);
  const p = parseEntry('dave', json, REALM);
  t.ok(p.ok);
  if (p.ok) {
    t.equal(p.user.password, undefined, 'the record has no password');
    t.same(p.user.groups, ['staff']);
    t.equal(p.user.keys!.realm, REALM);
  }
  const other = parseEntry('dave', json, 'other.example');
  t.same(other, { ok: false, why: 'other_realm', realm: REALM }, 'another realm is refused');
  t.same(
    parseEntry('x', JSON.stringify({ password: 'pw', groups: [] }), REALM),
    { ok: false, why: 'clear_password' },
    'the old form is refused',
  );
  t.same(parseEntry('x', 'not json', REALM), { ok: false, why: 'malformed' });
  t.same(parseEntry('x', JSON.stringify({ realm: REALM, key_md5: 'zz', key_sha256: 'aa', groups: [] }), REALM), {
    ok: false,
    why: 'malformed',
  });
});

t.test('TURN verifies with the stored keys', async (t) => {
  const dave = parseEntry('dave', encodeEntry({ name: 'dave', password: PW, groups: [], realm: REALM }), REALM);
  const far = parseEntry('erin', encodeEntry({ name: 'erin', password: 'erin-pw', groups: [], realm: 'other.example' }), null);
  if (!dave.ok || !far.ok) throw new Error('entries');
  const users: UserRecord[] = [dave.user, far.user, { name: 'alice', password: 'secret', groups: [] }];
  const h = await startServer(undefined, { users: { lookup: (n) => users.find((u) => u.name === n) } });
  t.teardown(() => h.close());
  const cl = async (username: string, password: string) => {
    const c = await Client.udp(h.udpPort);
    c.username = username;
    c.password = password;
    t.teardown(() => c.close());
    return c;
  };
  t.equal((await (await cl('dave', PW)).authed(Method.Allocate, alloc)).cls, Class.Success, 'MD5 key: allocated');
  const sha = await cl('dave', PW);
  t.equal(
    (await sha.authed(Method.Allocate, alloc, { sha256: true, passwordAlgorithms: true })).cls,
    Class.Success,
    'PASSWORD-ALGORITHM SHA-256, MESSAGE-INTEGRITY-SHA256: allocated',
  );
  t.equal(errCode(await (await cl('dave', 'wrong')).authed(Method.Allocate, alloc)), 401, 'a wrong password: 401');
  t.equal(
    errCode(await (await cl('dave', 'wrong')).authed(Method.Allocate, alloc, { sha256: true, passwordAlgorithms: true })),
    401,
    'a wrong password with SHA-256: 401',
  );
  t.equal(errCode(await (await cl('erin', 'erin-pw')).authed(Method.Allocate, alloc)), 401, 'keys of another realm: 401');
  t.equal((await (await cl('alice', 'secret')).authed(Method.Allocate, alloc)).cls, Class.Success, 'a password user as before');
  t.equal(
    dave.user.keys!.md5.toString('hex'),
    longTermKey('dave', REALM, PW, 'md5').toString('hex'),
    'the stored key is not zeroed by the failures',
  );
});
