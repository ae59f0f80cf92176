import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  privateDecrypt,
  randomBytes,
  constants,
  type KeyObject,
} from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A front end's own key material, kept in its data dir (core.md §1: "FEs own ... their
 * own RSA key pair"):
 * - `fe-key.pem`: RSA 3072-bit private key (PKCS#8), made once, mode 0600; its public half
 *   is what `GET /v1/conference-key` hands out (core.md §4.1: "RSA, 2048 bits or more").
 * - `fe-kek.bin`: 32 random bytes, mode 0600: the key-encryption key under which the
 *   conference keys are stored at rest (AES-256-GCM, see store.ts).
 */
export interface FeKeys {
  privateKey: KeyObject;
  /** PEM SubjectPublicKeyInfo (RFC 5280 §4.1.2.7). */
  publicPem: string;
  /** SHA-256 over the DER SPKI, hex: names this FE's key without revealing anything else. */
  fingerprint: string;
  /** 32 bytes: AES-256-GCM key-encryption key. */
  kek: Buffer;
}

export const RSA_BITS = 3072;

function writeSecret(path: string, data: string | Buffer): void {
  writeFileSync(path, data, { mode: 0o600, flag: 'wx' });
  chmodSync(path, 0o600);
}

/** Loads the FE's keys from dataDir, making them on first use. */
export function loadOrCreateFeKeys(dataDir: string, bits = RSA_BITS): FeKeys {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const keyPath = join(dataDir, 'fe-key.pem');
  const kekPath = join(dataDir, 'fe-kek.bin');
  if (!existsSync(keyPath)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: bits, publicExponent: 0x10001 });
    writeSecret(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
  }
  if (!existsSync(kekPath)) writeSecret(kekPath, randomBytes(32));
  const privateKey = createPrivateKey(readFileSync(keyPath));
  if (privateKey.asymmetricKeyType !== 'rsa' || (privateKey.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
    throw new Error(`${keyPath}: not an RSA key of 2048 bits or more`);
  }
  const kek = readFileSync(kekPath);
  if (kek.length !== 32) throw new Error(`${kekPath}: expected 32 bytes`);
  const pub = createPublicKey(privateKey);
  const der = pub.export({ type: 'spki', format: 'der' });
  return {
    privateKey,
    publicPem: pub.export({ type: 'spki', format: 'pem' }) as string,
    fingerprint: createHash('sha256').update(der).digest('hex'),
    kek,
  };
}

/** K: at least 22 base64url characters (core.md §4.2: at least 128 random bits). */
export const CONFERENCE_KEY_RE = /^[A-Za-z0-9_-]{22,512}$/;

/**
 * Decrypts `key` of POST /v1/conferences: base64 of RSA-OAEP (RFC 8017 §7.1.2
 * RSAES-OAEP-DECRYPT) with SHA-256, MGF1-SHA-256 and an empty label, over UTF-8(K).
 * Returns K, or null when it does not decrypt or is not a valid conference key (the
 * reason is not told: RFC 8017 §7.1.2 note — one error for every decryption failure).
 */
export function decryptConferenceKey(privateKey: KeyObject, b64: unknown): string | null {
  if (typeof b64 !== 'string' || b64.length === 0 || b64.length > 2048 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return null;
  let plain: Buffer;
  try {
    plain = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from(b64, 'base64'));
  } catch {
    return null;
  }
  const k = plain.toString('utf8');
  plain.fill(0);
  return CONFERENCE_KEY_RE.test(k) ? k : null;
}

/**
 * HA1 for a guest (RFC 7616 §3.4.2: A1 = unq(username) ":" unq(realm) ":" passwd, with
 * H = SHA-256 for algorithm=SHA-256), realm "conference:{id}" (core.md §4.3), the
 * password being K. Lower-case hex (RFC 7616 §3.4.1: 64 hex digits for SHA-256).
 */
export function guestHa1(identity: string, conferenceId: string, k: string): string {
  return createHash('sha256').update(`${identity}:conference:${conferenceId}:${k}`, 'utf8').digest('hex');
}

/**
 * A guest identity (core.md §4.3): 1 to 64 characters, none of them '/', ':' or a
 * control character (C0, DEL, C1).
 */
export function validIdentity(s: unknown): s is string {
  if (typeof s !== 'string') return false;
  const chars = [...s];
  if (chars.length < 1 || chars.length > 64) return false;
  // eslint-disable-next-line no-control-regex
  return !/[/:\u0000-\u001f\u007f-\u009f]/.test(s);
}
