import 'reflect-metadata'; // required by @peculiar/x509 (tsyringe)
import { webcrypto, createHash, createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { readKeyFile } from '../util/key-files.js';

/**
 * The gateway identity of key-escrow.md §1: an ECDSA P-256 key and X.509 certificate.
 * Made on first start and kept in the data dir (key 0600), or loaded from configured
 * PEM files (for instance a certificate signed by an enterprise CA).
 */
export interface GatewayIdentity {
  privateKey: KeyObject;
  certificatePem: string;
  certificateDer: Buffer;
  /** SHA-256 of the DER certificate: the KEY-REQUEST fingerprint (§2.1). */
  fingerprint: Buffer;
}

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

function fromPem(keyPem: string, certPem: string): GatewayIdentity {
  const privateKey = createPrivateKey(keyPem);
  const d = privateKey.asymmetricKeyDetails;
  if (privateKey.asymmetricKeyType !== 'ec' || d?.namedCurve !== 'prime256v1') {
    throw new Error('the gateway key must be an ECDSA P-256 key (key-escrow.md §1)');
  }
  const cert = new X509Certificate(certPem);
  if (!cert.checkPrivateKey(privateKey)) throw new Error('the gateway certificate does not match its key');
  const der = cert.raw;
  return { privateKey, certificatePem: cert.toString(), certificateDer: der, fingerprint: createHash('sha256').update(der).digest() };
}

export async function createSelfSigned(commonName: string, now = new Date()): Promise<{ keyPem: string; certPem: string }> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    name: `CN=${commonName}`,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + 5 * 365 * 86_400_000),
    signingAlgorithm: ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END PRIVATE KEY-----\n`;
  return { keyPem, certPem: cert.toString('pem') + '\n' };
}

/** Loads the configured identity, or the one in dataDir, or makes one there. */
export async function loadOrCreateIdentity(
  dataDir: string,
  configured: { cert: string | null; key: string | null },
  commonName: string,
): Promise<{ identity: GatewayIdentity; created: boolean }> {
  if (configured.cert && configured.key) {
    return { identity: fromPem(readKeyFile(configured.key).toString('utf8'), readFileSync(configured.cert, 'utf8')), created: false };
  }
  const keyFile = join(dataDir, 'gateway.key');
  const certFile = join(dataDir, 'gateway.crt');
  if (existsSync(keyFile) && existsSync(certFile)) {
    return { identity: fromPem(readFileSync(keyFile, 'utf8'), readFileSync(certFile, 'utf8')), created: false };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const { keyPem, certPem } = await createSelfSigned(commonName);
  writeFileSync(keyFile, keyPem, { mode: 0o600 });
  chmodSync(keyFile, 0o600);
  writeFileSync(certFile, certPem, { mode: 0o644 });
  return { identity: fromPem(keyPem, certPem), created: true };
}
