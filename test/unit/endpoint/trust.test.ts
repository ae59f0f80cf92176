// Gateway trust of the endpoint agent: pinned fingerprint, CA chain, refusals, and the
// KEY-REQUEST signature / fingerprint checks of key-escrow.md §2.1.
import 'reflect-metadata';
import t from 'tap';
import { createHash, createPrivateKey, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { GatewayTrust, TrustError, parseFingerprint } from '../../../src/endpoint/trust.js';
import { ManualClock } from '../../../src/util/clock.js';
import { decodeKeyRequest, encodeKeyRequest } from '../../../src/wire/escrow.js';
import { makeGateway } from './helpers.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

function pemKey(pkcs8: ArrayBuffer): string {
  return `-----BEGIN PRIVATE KEY-----\n${Buffer.from(pkcs8)
    .toString('base64')
    .replace(/.{1,64}/g, '$&\n')}-----END PRIVATE KEY-----\n`;
}

async function makeCa(cn: string) {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: `CN=${cn}`,
    notBefore: new Date(Date.now() - 86_400_000),
    notAfter: new Date(Date.now() + 86_400_000 * 365),
    signingAlgorithm: ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  return { keys, cert, pem: cert.toString('pem') };
}

async function issue(ca: Awaited<ReturnType<typeof makeCa>>, cn: string) {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: `CN=${cn}`,
    issuer: ca.cert.subject,
    notBefore: new Date(Date.now() - 86_400_000),
    notAfter: new Date(Date.now() + 86_400_000 * 30),
    signingAlgorithm: ALG,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
  });
  const pem = cert.toString('pem');
  return {
    pem,
    privateKey: createPrivateKey(pemKey(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey))),
    fingerprint: createHash('sha256').update(new X509Certificate(pem).raw).digest(),
  };
}

t.test('pinned fingerprint', async (t) => {
  const gw = await makeGateway('pinned gw');
  const hexColons = gw.fingerprint.toString('hex').toUpperCase().match(/../g)!.join(':');
  const trust = new GatewayTrust({ pinnedFingerprints: [hexColons] });
  const ok = trust.evaluate(gw.certPem);
  t.equal(ok.via, 'pin');
  t.ok(ok.fingerprint.equals(gw.fingerprint));
  t.match(ok.subject, /pinned gw/);
  const other = await makeGateway('other');
  t.throws(
    () => new GatewayTrust({ pinnedFingerprints: [other.fingerprint.toString('hex')] }).evaluate(gw.certPem),
    TrustError,
    'wrong pin refused',
  );
  t.throws(() => parseFingerprint('abcd'), TrustError);
  t.throws(() => new GatewayTrust({}), TrustError, 'nothing configured');
  t.throws(() => trust.evaluate('not a pem'), TrustError);

  // KEY-REQUEST checks: signature over the response transaction ID (§2.1).
  const tid = randomBytes(12);
  const kr = decodeKeyRequest(encodeKeyRequest('turn', tid, { deadline: 5, flags: 3, fingerprint: gw.fingerprint }, gw.privateKey))!;
  t.doesNotThrow(() => trust.acceptKeyRequest(ok, tid, kr), 'valid KEY-REQUEST accepted');
  t.throws(() => trust.acceptKeyRequest(ok, randomBytes(12), kr), TrustError, 'other transaction ID refused');
  const forged = decodeKeyRequest(encodeKeyRequest('turn', tid, { deadline: 5, flags: 3, fingerprint: gw.fingerprint }, other.privateKey))!;
  t.throws(() => trust.acceptKeyRequest(ok, tid, forged), TrustError, 'signature by another key refused');
  const otherFp = decodeKeyRequest(
    encodeKeyRequest('turn', tid, { deadline: 5, flags: 3, fingerprint: other.fingerprint }, gw.privateKey),
  )!;
  t.throws(() => trust.acceptKeyRequest(ok, tid, otherFp), TrustError, 'fingerprint of another certificate refused');
  const tampered = { ...kr, flags: 7 };
  t.throws(() => trust.acceptKeyRequest(ok, tid, tampered), TrustError, 'tampered flags refused');
});

t.test('CA chain', async (t) => {
  const ca = await makeCa('Enterprise Root');
  const leaf = await issue(ca, 'gw.corp');
  const trust = new GatewayTrust({ caPem: ca.pem });
  const ok = trust.evaluate(leaf.pem);
  t.equal(ok.via, 'ca');
  t.ok(ok.fingerprint.equals(leaf.fingerprint));
  const tid = randomBytes(12);
  const kr = decodeKeyRequest(encodeKeyRequest('turn', tid, { deadline: 0, flags: 7, fingerprint: leaf.fingerprint }, leaf.privateKey))!;
  t.doesNotThrow(() => trust.acceptKeyRequest(ok, tid, kr));

  const rogue = await makeCa('Rogue Root');
  const rogueLeaf = await issue(rogue, 'gw.corp');
  t.throws(() => trust.evaluate(rogueLeaf.pem), TrustError, 'leaf of another CA refused');
  t.throws(() => trust.evaluate(rogueLeaf.pem + rogue.pem), TrustError, 'untrusted root in the bundle does not help');
  const selfSigned = await makeGateway('self');
  t.throws(() => trust.evaluate(selfSigned.certPem), TrustError, 'self-signed refused under CA trust');

  const later = new ManualClock(Date.now() + 86_400_000 * 60);
  t.throws(() => new GatewayTrust({ caPem: ca.pem }, later).evaluate(leaf.pem), TrustError, 'expired leaf refused');
});
