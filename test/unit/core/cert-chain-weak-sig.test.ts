// Certificate login chains (src/core/x509-chain.ts): a certificate signed with SHA-1 (or
// MD5) is refused as `weak_signature` even though OpenSSL verifies it; SHA-256 and longer,
// RSA-PSS, ECDSA and Ed25519 pass (RFC 5280 §4.1.1.2; RFC 9155, RFC 6151).
import 'reflect-metadata';
import t from 'tap';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { ChainError, parseCert, validateChain, type ParsedCert } from '../../../src/core/x509-chain.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);
const subtle = webcrypto.subtle;
const NOW = Date.UTC(2026, 11, 1, 12, 0, 0);
const DAY = 86_400_000;
let serial = 1;

async function rsaKeys(hash: string): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(
    { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash },
    true,
    ['sign', 'verify'],
  )) as CryptoKeyPair;
}

async function cert(
  cn: string,
  issuerCn: string,
  publicKey: CryptoKey,
  signingKey: CryptoKey,
  signingAlgorithm: Algorithm & { hash?: string },
  ca: boolean,
): Promise<ParsedCert> {
  const c = await x509.X509CertificateGenerator.create({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    subject: `CN=${cn}`,
    issuer: `CN=${issuerCn}`,
    notBefore: new Date(NOW - DAY),
    notAfter: new Date(NOW + 30 * DAY),
    signingAlgorithm,
    publicKey,
    signingKey,
    extensions: [new x509.BasicConstraintsExtension(ca, undefined, true)],
  });
  return parseCert(Buffer.from(c.rawData))!;
}

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    if (err instanceof ChainError) return err.reason;
    throw err;
  }
}

t.test('SHA-1 certificate signatures are refused, SHA-256 accepted', async (t) => {
  const root256 = await rsaKeys('SHA-256');
  const root1 = await rsaKeys('SHA-1');
  const leafKeys = (await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const good = await cert(
    'Root256',
    'Root256',
    root256.publicKey,
    root256.privateKey,
    { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
    true,
  );
  const weak = await cert('Root1', 'Root1', root1.publicKey, root1.privateKey, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true);
  const leafGood = await cert(
    'alice',
    'Root256',
    leafKeys.publicKey,
    root256.privateKey,
    { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
    false,
  );
  const leafSha1 = await cert('alice', 'Root1', leafKeys.publicKey, root1.privateKey, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-1' }, false);
  t.match(leafSha1.px.signatureAlgorithm, { hash: { name: 'SHA-1' } }, 'the leaf really is SHA-1 signed');
  t.ok(leafSha1.node.verify(weak.node.publicKey), 'OpenSSL verifies the SHA-1 signature');
  t.equal(await reason(validateChain([leafGood], [good], NOW)), 'ok');
  t.equal(await reason(validateChain([leafSha1], [weak], NOW)), 'weak_signature');
  // An intermediate signed with SHA-1 under a SHA-256 root.
  const ikeys = await rsaKeys('SHA-1');
  const inter = await cert('I', 'Root256', ikeys.publicKey, root256.privateKey, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true);
  const leafUnderI = await cert('bob', 'I', leafKeys.publicKey, ikeys.privateKey, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-1' }, false);
  t.equal(await reason(validateChain([leafUnderI, inter], [good], NOW)), 'weak_signature', 'SHA-1 below an intermediate');
});

t.test('an issuing certificate with a weak key is refused (RSA < 2048 bits): intermediate or root', async (t) => {
  const rsa = async (bits: number): Promise<CryptoKeyPair> =>
    (await subtle.generateKey(
      { name: 'RSASSA-PKCS1-v1_5', modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
      true,
      ['sign', 'verify'],
    )) as CryptoKeyPair;
  const sha256 = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  const ecdsa = { name: 'ECDSA', hash: 'SHA-384' };
  const rootKeys = await rsa(2048);
  const root = await cert('Root', 'Root', rootKeys.publicKey, rootKeys.privateKey, sha256, true);
  const leafKeys = (await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;

  const weakKeys = await rsa(1024);
  const weakInter = await cert('Weak', 'Root', weakKeys.publicKey, rootKeys.privateKey, sha256, true);
  const underWeak = await cert('carol', 'Weak', leafKeys.publicKey, weakKeys.privateKey, sha256, false);
  t.ok(underWeak.node.verify(weakInter.node.publicKey), 'the signature itself verifies');
  t.equal(await reason(validateChain([underWeak, weakInter], [root], NOW)), 'weak_key', 'a 1024-bit RSA intermediate');

  const weakRoot = await cert('WeakRoot', 'WeakRoot', weakKeys.publicKey, weakKeys.privateKey, sha256, true);
  const underWeakRoot = await cert('dave', 'WeakRoot', leafKeys.publicKey, weakKeys.privateKey, sha256, false);
  t.equal(await reason(validateChain([underWeakRoot], [weakRoot], NOW)), 'weak_key', 'a 1024-bit RSA trust root');

  const goodKeys = await rsa(2048);
  const goodInter = await cert('Good', 'Root', goodKeys.publicKey, rootKeys.privateKey, sha256, true);
  const underGood = await cert('erin', 'Good', leafKeys.publicKey, goodKeys.privateKey, sha256, false);
  t.equal(await reason(validateChain([underGood, goodInter], [root], NOW)), 'ok', 'a 2048-bit RSA intermediate');

  const ecKeys = (await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const ecInter = await cert('EC', 'Root', ecKeys.publicKey, rootKeys.privateKey, sha256, true);
  const underEc = await cert('frank', 'EC', leafKeys.publicKey, ecKeys.privateKey, ecdsa, false);
  t.equal(await reason(validateChain([underEc, ecInter], [root], NOW)), 'ok', 'a P-384 intermediate');
});
