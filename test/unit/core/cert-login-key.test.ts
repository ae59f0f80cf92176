// Gatehouse-Cert (src/core/cert-login.ts): a leaf whose public key OpenSSL cannot read (an
// unknown SubjectPublicKeyInfo algorithm, RFC 5280 §4.1.2.7) is `401 untrusted`, a
// CoreError that login.ts counts toward the source limit and reports as an auth event,
// never a plain exception (a 500 that is neither counted nor reported, with the challenge
// left unspent for another try).
import 'reflect-metadata';
import t from 'tap';
import { randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { certMechanism } from '../../../src/core/cert-login.js';
import { formatCertAuthorization } from '../../../src/core/cert-header.js';
import { parseCert } from '../../../src/core/x509-chain.js';
import { ChallengeStore } from '../../../src/core/challenges.js';
import { ManualClock } from '../../../src/util/clock.js';
import { CoreError } from '../../../src/core/errors.js';
import type { CoreContext } from '../../../src/core/director.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);
const NOW = Date.UTC(2026, 11, 1, 12, 0, 0);

t.test('an unreadable leaf key is untrusted, not an internal error', async (t) => {
  const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=alice',
    notBefore: new Date(NOW - 86_400_000),
    notAfter: new Date(NOW + 86_400_000),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    keys,
  });
  const der = Buffer.from(cert.rawData);
  // id-ecPublicKey 1.2.840.10045.2.1 → 1.2.840.10045.2.99 in the SubjectPublicKeyInfo.
  const oid = Buffer.from('2a8648ce3d0201', 'hex');
  const at = der.indexOf(oid);
  t.ok(at > 0);
  der[at + oid.length - 1] = 0x63;
  const p = parseCert(der);
  t.ok(p, 'still a DER certificate');
  t.throws(() => p!.node.publicKey, 'OpenSSL cannot read its key');
  const clock = new ManualClock(NOW);
  const challenges = new ChallengeStore(clock);
  const core = { cfg: { realm: 'R' }, challenges, clock, directory: null, users: { lookup: () => undefined } } as unknown as CoreContext;
  const m = certMechanism(core, [], null);
  const c = challenges.issue('192.0.2.1');
  const authorization = formatCertAuthorization(c.challenge, randomBytes(64), [der]);
  const err = await m.verify({ req: { headers: { authorization } }, source: '192.0.2.1' } as never).catch((e: unknown) => e);
  t.ok(err instanceof CoreError, 'a CoreError');
  t.match(err, { code: 'untrusted', message: /leaf/ });
});
