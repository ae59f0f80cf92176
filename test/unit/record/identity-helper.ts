import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createSelfSigned } from '../../../src/store/identity.js';
import type { Signer } from '../../../src/record/manifest.js';

/** A fresh gateway identity (ECDSA P-256 self-signed), shaped like GatewayIdentity. */
export async function testSigner(cn = 'gatehouse-test'): Promise<Signer & { keyPem: string }> {
  const { keyPem, certPem } = await createSelfSigned(cn);
  const cert = new X509Certificate(certPem);
  return { privateKey: createPrivateKey(keyPem), certificatePem: certPem, certificateDer: cert.raw, keyPem };
}
