import t from 'tap';
import { mkdtempSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, X509Certificate, generateKeyPairSync } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { loadOrCreateIdentity } from '../../../src/store/identity.js';
import { encodeKeyRequest, decodeKeyRequest, verifyKeyRequest } from '../../../src/wire/escrow.js';
import { writeFileSync } from 'node:fs';

t.test('first start makes a P-256 identity kept with 0600; the next start loads the same', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-id-'));
  const a = await loadOrCreateIdentity(dir, { cert: null, key: null }, 'gatehouse.test');
  t.ok(a.created);
  t.equal(statSync(join(dir, 'gateway.key')).mode & 0o777, 0o600);
  const cert = new X509Certificate(readFileSync(join(dir, 'gateway.crt')));
  t.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.match(cert.subject, /CN=gatehouse.test/);
  t.same(a.identity.fingerprint, createHash('sha256').update(cert.raw).digest());
  // OpenSSL, a program we did not write, reads the certificate and agrees on the fingerprint.
  const out = execFileSync('openssl', ['x509', '-in', join(dir, 'gateway.crt'), '-noout', '-fingerprint', '-sha256']).toString();
  t.equal(out.split('=')[1]!.trim().replace(/:/g, '').toLowerCase(), a.identity.fingerprint.toString('hex'));
  const b = await loadOrCreateIdentity(dir, { cert: null, key: null }, 'gatehouse.test');
  t.notOk(b.created);
  t.same(b.identity.fingerprint, a.identity.fingerprint);
  // The identity signs KEY-REQUESTs that verify against the certificate's public key.
  const txid = Buffer.alloc(12, 9);
  const v = encodeKeyRequest('turn', txid, { deadline: 5, flags: 3, fingerprint: a.identity.fingerprint }, a.identity.privateKey);
  t.ok(verifyKeyRequest('turn', txid, decodeKeyRequest(v)!, cert.publicKey));
});

t.test('configured PEM files: an enterprise-CA-signed cert is loaded; a non-P-256 key is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-id-'));
  const sh = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  sh([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-subj',
    '/CN=Bank CA',
    '-days',
    '30',
  ]);
  sh([
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    'gw.key',
    '-out',
    'gw.csr',
    '-subj',
    '/CN=gateway.bank',
  ]);
  sh(['x509', '-req', '-in', 'gw.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'gw.crt', '-days', '30']);
  const r = await loadOrCreateIdentity(join(dir, 'data'), { cert: join(dir, 'gw.crt'), key: join(dir, 'gw.key') }, 'x');
  t.notOk(r.created);
  const gw = new X509Certificate(readFileSync(join(dir, 'gw.crt')));
  t.ok(gw.verify(new X509Certificate(readFileSync(join(dir, 'ca.crt'))).publicKey), 'chains to the CA');
  t.same(r.identity.fingerprint, createHash('sha256').update(gw.raw).digest());

  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(join(dir, 'rsa.key'), rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await t.rejects(loadOrCreateIdentity(dir, { cert: join(dir, 'gw.crt'), key: join(dir, 'rsa.key') }, 'x'), /P-256/);
  await t.rejects(loadOrCreateIdentity(dir, { cert: join(dir, 'ca.crt'), key: join(dir, 'gw.key') }, 'x'), /does not match/);
});
