/**
 * The core's signing identity (core.md §6): an ECDSA P-256 key and its X.509
 * certificate. The key signs authentication-transfer tickets (ES256, src/core/jws.ts);
 * the certificate is what other organisations' cores name for this one in their
 * `core.peers[].cert`, and what `GET /v1/core/certificate` serves.
 *
 * - `core.signing: {cert, key}` (PEM files) when configured (e.g. issued by the
 *   enterprise CA); both or neither.
 * - Otherwise made self-signed at first start into DATA_DIR (`core-signing.key`, mode
 *   0600, and `core-signing.crt`) and reused on every later start, so peers configured
 *   with the certificate keep trusting it.
 * - An in-memory core (dataDir null, tests) makes an ephemeral one.
 *
 * Also the peers' certificates (`core.peers[i].cert`): loaded and checked at start, so a
 * wrong file is a configuration error naming the key, never a transfer that fails later.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GatehouseConfig, CorePeer } from '../config/config.js';
import { createSelfSigned } from '../store/identity.js';
import { isP256 } from '../util/p256.js';
import { readKeyFile } from '../util/key-files.js';

export interface CoreSigning {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** The certificate, PEM (RFC 7468 §5). */
  certificatePem: string;
}

export const SIGNING_KEY_FILE = 'core-signing.key';
export const SIGNING_CERT_FILE = 'core-signing.crt';

/** A configuration error located at a key (the file's contents are not YAML, so no line). */
export class CoreKeyError extends Error {
  constructor(
    readonly key: string,
    problem: string,
  ) {
    super(`configuration error: ${key}: ${problem}`);
    this.name = 'CoreKeyError';
  }
}

function readPem(path: string, key: string, secret = false): string {
  try {
    return (secret ? readKeyFile(path) : readFileSync(path)).toString('utf8');
  } catch (err) {
    throw new CoreKeyError(key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** A PEM certificate whose key is ECDSA P-256; errors name `key`. */
export function parseP256Certificate(pem: string, key: string): X509Certificate {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    throw new CoreKeyError(key, 'not a PEM X.509 certificate');
  }
  if (!isP256(cert.publicKey)) throw new CoreKeyError(key, 'the certificate key is not ECDSA P-256 (core.md §6)');
  return cert;
}

function fromPem(keyPem: string, certPem: string, keyName: string, certName: string): CoreSigning {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(keyPem);
  } catch {
    // Never repeat the file's contents: it is a private key.
    throw new CoreKeyError(keyName, 'not a PEM private key');
  }
  if (!isP256(privateKey)) throw new CoreKeyError(keyName, 'the signing key must be ECDSA P-256 (core.md §6)');
  const cert = parseP256Certificate(certPem, certName);
  if (!cert.checkPrivateKey(privateKey)) throw new CoreKeyError(certName, `the certificate does not match ${keyName}`);
  return { privateKey, publicKey: cert.publicKey, certificatePem: cert.toString() };
}

/** The configured signing identity, or the one in dataDir, or a new one there (or in memory). */
export async function loadOrCreateCoreSigning(
  cfg: GatehouseConfig,
  dataDir: string | null,
): Promise<{ signing: CoreSigning; created: boolean }> {
  const { cert, key } = cfg.core.signing;
  if (cert && key) {
    return {
      signing: fromPem(readPem(key, 'core.signing.key', true), readPem(cert, 'core.signing.cert'), 'core.signing.key', 'core.signing.cert'),
      created: false,
    };
  }
  const cn = `gatehouse core ${cfg.core.org ?? cfg.realm}`;
  if (!dataDir) {
    const made = await createSelfSigned(cn);
    return { signing: fromPem(made.keyPem, made.certPem, 'core signing key', 'core signing certificate'), created: true };
  }
  const keyFile = join(dataDir, SIGNING_KEY_FILE);
  const certFile = join(dataDir, SIGNING_CERT_FILE);
  if (existsSync(keyFile) && existsSync(certFile)) {
    return { signing: fromPem(readPem(keyFile, keyFile, true), readPem(certFile, certFile), keyFile, certFile), created: false };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const made = await createSelfSigned(cn);
  writeFileSync(keyFile, made.keyPem, { mode: 0o600 });
  chmodSync(keyFile, 0o600);
  writeFileSync(certFile, made.certPem, { mode: 0o644 });
  return { signing: fromPem(made.keyPem, made.certPem, keyFile, certFile), created: true };
}

/** A trusted peer core (core.md §6 `core.peers` entry) with its certificate loaded. */
export interface LoadedPeer extends CorePeer {
  certificate: X509Certificate;
  publicKey: KeyObject;
}

/** Every `core.peers[i].cert`, read and checked (PEM X.509, ECDSA P-256); errors name `core.peers[i].cert`. */
export function loadPeers(cfg: GatehouseConfig): LoadedPeer[] {
  return cfg.core.peers.map((p, i) => {
    const key = `core.peers[${i}].cert`;
    const certificate = parseP256Certificate(readPem(p.cert, key), key);
    return { ...p, certificate, publicKey: certificate.publicKey };
  });
}
