import t from 'tap';
import { constants, createHash, publicEncrypt, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decryptConferenceKey, guestHa1, loadOrCreateFeKeys, validIdentity } from '../../../src/core/fe/keys.js';
import { FrontEnd } from '../../../src/core/fe/frontend.js';
import { MAX_IDENTITIES_PER_CONFERENCE } from '../../../src/core/fe/store.js';
import { RequestVerifier, signRequest, signResponse, verifyResponse, H_SIG, MAX_SKEW_S } from '../../../src/core/fe/sign.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-fe-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const oaep = (pem: string, k: string) =>
  publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from(k, 'utf8')).toString('base64');

t.test('key pair: made once, 0600, reloaded identically', async (t) => {
  const d = join(dir, 'keys');
  const a = loadOrCreateFeKeys(d, 2048);
  t.equal(statSync(join(d, 'fe-key.pem')).mode & 0o777, 0o600);
  t.equal(statSync(join(d, 'fe-kek.bin')).mode & 0o777, 0o600);
  t.match(a.publicPem, /^-----BEGIN PUBLIC KEY-----/);
  t.equal(a.privateKey.asymmetricKeyDetails?.modulusLength, 2048);
  const b = loadOrCreateFeKeys(d, 2048);
  t.equal(b.fingerprint, a.fingerprint, 'same key after reload');
  t.same(b.kek, a.kek);
  t.equal(loadOrCreateFeKeys(join(dir, 'keys2'), 2048).fingerprint === a.fingerprint, false, 'another dir, another key');
});

t.test('RSA-OAEP SHA-256 decryption of K', async (t) => {
  const keys = loadOrCreateFeKeys(join(dir, 'keys'), 2048);
  const k = randomBytes(16).toString('base64url'); // 22 characters
  t.equal(decryptConferenceKey(keys.privateKey, oaep(keys.publicPem, k)), k);
  t.equal(decryptConferenceKey(keys.privateKey, oaep(keys.publicPem, 'short')), null, 'K under 22 characters');
  t.equal(decryptConferenceKey(keys.privateKey, oaep(keys.publicPem, 'a'.repeat(21) + '!')), null, 'not base64url');
  const sha1 = publicEncrypt({ key: keys.publicPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from(k)).toString(
    'base64',
  );
  t.equal(decryptConferenceKey(keys.privateKey, sha1), null, 'OAEP with SHA-1 is refused');
  const other = loadOrCreateFeKeys(join(dir, 'keys2'), 2048);
  t.equal(decryptConferenceKey(keys.privateKey, oaep(other.publicPem, k)), null, 'for another FE');
  t.equal(decryptConferenceKey(keys.privateKey, 'not base64!'), null);
  t.equal(decryptConferenceKey(keys.privateKey, 42), null);
});

t.test('HA1 per RFC 7616 §3.4.2 and identities', async (t) => {
  const expect = createHash('sha256').update('alice:conference:abc:KKKK').digest('hex');
  t.equal(guestHa1('alice', 'abc', 'KKKK'), expect);
  t.ok(validIdentity('alice'));
  t.ok(validIdentity('Zoë 🎉'));
  t.ok(validIdentity('x'.repeat(64)));
  for (const bad of ['', 'x'.repeat(65), 'a/b', 'a:b', 'a\nb', 'a\u0000', 'a\u007f', 'a\u0085', 3])
    t.notOk(validIdentity(bad), JSON.stringify(bad));
});

t.test('FrontEnd: conference stored with K encrypted at rest, HA1 computed, identities atomic', async (t) => {
  const d = join(dir, 'fe1');
  const fe = new FrontEnd(d, undefined, { rsaBits: 2048 });
  t.teardown(() => fe.close());
  const info = await fe.info();
  const k = randomBytes(24).toString('base64url');
  const { id } = await fe.createConference({ key: oaep(info.public_key, k), owner: 'alice', title: 'Board' });
  t.match(id, /^[A-Za-z0-9_-]{16}$/);
  const row = await fe.conference(id);
  t.equal(row?.owner, 'alice');
  t.equal(row?.title, 'Board');
  t.equal(statSync(join(d, 'fe.sqlite')).mode & 0o777, 0o600, 'store file 0600');
  const raw = fe.store.rawKeyRow(id)!;
  t.notOk(raw.key_ct.includes(Buffer.from(k)), 'ciphertext is not K');
  fe.store.close();
  // Nothing in the database files holds K in the clear.
  for (const f of ['fe.sqlite', 'fe.sqlite-wal']) {
    try {
      t.notOk(readFileSync(join(d, f)).includes(Buffer.from(k)), `${f} has no K`);
    } catch {
      /* no WAL file */
    }
  }
  const fe2 = new FrontEnd(d, undefined, { rsaBits: 2048 });
  t.teardown(() => fe2.close());
  t.equal(await fe2.ha1(id, 'bob'), guestHa1('bob', id, k), 'HA1 after reopening');
  t.equal(await fe2.ha1('nope', 'bob'), null);
  await t.rejects(fe2.ha1(id, 'a:b'), { code: 'bad_request', status: 400 });
  await t.rejects(fe2.createConference({ key: 'AAAA', owner: 'alice' }), { code: 'bad_request' });
  await t.rejects(fe2.createConference({ key: oaep(info.public_key, k), owner: 'alice', expires: 5 }), { code: 'bad_request' });

  const now = Math.floor(Date.now() / 1000);
  const race = await Promise.all([fe2.claim(id, 'bob', 'h1', now + 60), fe2.claim(id, 'bob', 'h2', now + 60)]);
  t.same(race.filter(Boolean).length, 1, 'exactly one of two racing claims wins');
  t.equal(await fe2.claim(id, 'carol', 'h3', now + 60), true);
  t.equal(await fe2.release(id, 'bob', 'someone-else'), false, 'only the holder frees it');
  t.equal(await fe2.release(id, 'bob'), true);
  t.equal(await fe2.claim(id, 'bob', 'h4', now + 60), true, 'free again after leaving');
  t.equal(await fe2.claim(id, 'dave', 'h5', now - 1), true);
  t.equal(await fe2.claim(id, 'dave', 'h6', now + 60), true, 'an expired claim is free');
  await t.rejects(fe2.claim('nope', 'x', 'h', now + 60), { code: 'not_found' });
  // A full conference is its own answer (409 conference_full), not identity_in_use.
  const live = 3; // bob, carol, dave hold identities now
  for (let i = 0; i < MAX_IDENTITIES_PER_CONFERENCE - live; i++) await fe2.claim(id, `g${i}`, `hx${i}`, now + 60);
  await t.rejects(fe2.claim(id, 'one-too-many', 'hz', now + 60), { code: 'conference_full', status: 409 }, 'the 1001st identity');
  t.equal(await fe2.release(id, 'g0'), true);
  t.equal(await fe2.claim(id, 'one-too-many', 'hz', now + 60), true, 'room again once someone leaves');
});

t.test('tampered ciphertext is refused (AES-GCM tag)', async (t) => {
  const fe = new FrontEnd(join(dir, 'fe2'), undefined, { rsaBits: 2048 });
  t.teardown(() => fe.close());
  const { id } = await fe.createConference({ key: oaep(fe.keys.publicPem, 'k'.repeat(30)), owner: 'a' });
  const { id: id2 } = await fe.createConference({ key: oaep(fe.keys.publicPem, 'j'.repeat(30)), owner: 'a' });
  // Moving one conference's ciphertext to another fails: the id is the AAD.
  const r = fe.store.rawKeyRow(id)!;
  (fe.store as unknown as { db: { prepare(s: string): { run(...a: unknown[]): void } } }).db
    .prepare('UPDATE conferences SET key_iv = ?, key_ct = ?, key_tag = ? WHERE id = ?')
    .run(r.key_iv, r.key_ct, r.key_tag, id2);
  t.throws(() => fe.store.conferenceKey(id2));
});

t.test('pool request signatures: valid, tampered, stale, replayed', async (t) => {
  const secret = 's'.repeat(32);
  const v = new RequestVerifier(secret);
  const now = 1_800_000_000;
  const h = signRequest(secret, 'POST', '/fe/v1/conferences', '{"a":1}', now);
  t.same(v.verify('POST', '/fe/v1/conferences', h, '{"a":1}', now), { ok: true, nonce: h['x-gatehouse-nonce'] });
  t.same(v.verify('POST', '/fe/v1/conferences', h, '{"a":1}', now), { ok: false, reason: 'replayed' });
  const h2 = signRequest(secret, 'POST', '/fe/v1/conferences', '{"a":1}', now);
  t.same(v.verify('POST', '/fe/v1/conferences', h2, '{"a":2}', now), { ok: false, reason: 'bad_signature' }, 'body changed');
  t.same(v.verify('POST', '/fe/v1/other', h2, '{"a":1}', now), { ok: false, reason: 'bad_signature' }, 'path changed');
  t.same(v.verify('GET', '/fe/v1/conferences', h2, '{"a":1}', now), { ok: false, reason: 'bad_signature' }, 'method changed');
  const old = signRequest(secret, 'GET', '/x', '', now - MAX_SKEW_S - 1);
  t.same(v.verify('GET', '/x', old, '', now), { ok: false, reason: 'stale' });
  t.same(
    v.verify('GET', '/x', signRequest('t'.repeat(32), 'GET', '/x', '', now), '', now),
    { ok: false, reason: 'bad_signature' },
    'other secret',
  );
  t.same(v.verify('GET', '/x', {}, '', now), { ok: false, reason: 'unsigned' });
  t.throws(() => new RequestVerifier('short'));
  const sig = signResponse(secret, 'n', 200, '{}');
  t.ok(verifyResponse(secret, 'n', 200, '{}', sig));
  t.notOk(verifyResponse(secret, 'n', 201, '{}', sig));
  t.notOk(verifyResponse(secret, 'm', 200, '{}', sig));
  t.notOk(verifyResponse(secret, 'n', 200, '{}', undefined));
  t.equal(H_SIG, 'x-gatehouse-sig');
});

t.test('purgeExpired drops expired claims and conferences', async (t) => {
  const fe = new FrontEnd(join(dir, 'fe3'), undefined, { rsaBits: 2048 });
  t.teardown(() => fe.close());
  const now = Math.floor(Date.now() / 1000);
  const { id } = await fe.createConference({ key: oaep(fe.keys.publicPem, 'q'.repeat(30)), owner: 'a', expires: now + 2 });
  t.equal(await fe.claim(id, 'x', 'h', now - 1), true);
  t.equal(fe.store.purgeExpired(now), 1, 'the expired claim');
  t.equal(fe.store.purgeExpired(now + 3), 1, 'the expired conference');
  t.equal(fe.store.conference(id), null);
  t.equal(fe.store.conferenceKey(id), null, 'its key is gone too');
});

t.test('releaseOthers frees the claims of an earlier director run only', async (t) => {
  const fe = new FrontEnd(join(dir, 'fe4'), undefined, { rsaBits: 2048 });
  t.teardown(() => fe.close());
  const now = Math.floor(Date.now() / 1000);
  const { id } = await fe.createConference({ key: oaep(fe.keys.publicPem, 'r'.repeat(30)), owner: 'a' });
  t.equal(await fe.claim(id, 'old', 'oldrun123.tok', now + 60), true);
  t.equal(await fe.claim(id, 'new', 'newrun123.tok', now + 60), true);
  t.equal(await fe.releaseOthers('newrun123'), 1);
  t.equal(await fe.claim(id, 'old', 'newrun123.tok2', now + 60), true, 'the old run’s identity is free');
  t.equal(await fe.claim(id, 'new', 'newrun123.tok3', now + 60), false, 'this run’s claims stay');
  await t.rejects(fe.releaseOthers('x'), { code: 'bad_request' });
});
