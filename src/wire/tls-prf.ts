/**
 * TLS key derivation used by DTLS inspection (pure, no I/O).
 *
 * Public API:
 *   tls12Prf(hash, secret, label, seed, length): Buffer          RFC 5246 §5
 *   tls12KeyBlock(hash, masterSecret, clientRandom, serverRandom, lens): Tls12RecordKeys
 *                                                                 RFC 5246 §6.3
 *   tls12Exporter(hash, masterSecret, label, clientRandom, serverRandom, length, context?)
 *                                                                 RFC 5705 §4
 *   SRTP_PROFILES / srtpProfileInfo(profile)                      RFC 5764 §4.1.2, RFC 7714 §14.2
 *   splitSrtpKeyingMaterial(profile, material): SrtpKeyMaterial   RFC 5764 §4.2
 *   deriveSrtpTls12(hash, masterSecret, clientRandom, serverRandom, profile)
 *   hkdfExtract(hash, salt, ikm), hkdfExpandLabel(hash, secret, label, context, length, prefix?)
 *                                                                 RFC 5869, RFC 8446 §7.1
 *   tls13Exporter(hash, exporterMasterSecret, label, context, length, prefix?)  RFC 8446 §7.5
 *   deriveSrtpTls13(hash, exporterMasterSecret, profile, prefix?)
 *
 * `hash` is 'sha256' or 'sha384' (the PRF hash of the cipher suite).
 */
import { DTLS13_PREFIX, tls13Exporter as hkdfTls13Exporter } from './hkdf.js';
import { createHash, createHmac } from 'node:crypto';
import { loadNative } from './native.js';

export type PrfHash = 'sha256' | 'sha384';

export { hashLength } from './hkdf.js';

/**
 * RFC 5246 §5: P_hash(secret, seed) = HMAC(secret, A(1) + seed) + HMAC(secret, A(2) + seed) ...
 * with A(0) = seed, A(i) = HMAC(secret, A(i-1)); PRF(secret, label, seed) = P_<hash>(secret, label + seed).
 */
export function tls12Prf(hash: PrfHash, secret: Buffer, label: string, seed: Buffer, length: number): Buffer {
  const fullSeed = Buffer.concat([Buffer.from(label, 'latin1'), seed]);
  const out = Buffer.alloc(length);
  // The addon's P_hash (native/prf.c): one call instead of an HMAC object per block.
  const native = loadNative()?.tls12Prf;
  if (native) {
    native(hash === 'sha384', secret, fullSeed, out);
    return out;
  }
  return tls12PrfJs(hash, secret, fullSeed, out);
}

/** tls12Prf with node's HMAC (the addon not built); also the reference its tests compare with. */
export function tls12PrfJs(hash: PrfHash, secret: Buffer, fullSeed: Buffer, out: Buffer): Buffer {
  const length = out.length;
  let a: Buffer = fullSeed;
  let off = 0;
  while (off < length) {
    a = createHmac(hash, secret).update(a).digest();
    const block = createHmac(hash, secret).update(a).update(fullSeed).digest();
    off += block.copy(out, off);
  }
  return out;
}

export interface Tls12RecordKeys {
  clientMacKey: Buffer;
  serverMacKey: Buffer;
  clientWriteKey: Buffer;
  serverWriteKey: Buffer;
  clientWriteIv: Buffer;
  serverWriteIv: Buffer;
}

/**
 * RFC 5246 §6.3: key_block = PRF(master_secret, "key expansion", server_random + client_random),
 * partitioned as client MAC, server MAC, client key, server key, client IV, server IV.
 * (For AEAD suites mac = 0 and iv = the implicit nonce part, RFC 5288 §3 / RFC 7905 §2.)
 */
export function tls12KeyBlock(
  hash: PrfHash,
  masterSecret: Buffer,
  clientRandom: Buffer,
  serverRandom: Buffer,
  lens: { macLen: number; keyLen: number; ivLen: number },
): Tls12RecordKeys {
  const { macLen, keyLen, ivLen } = lens;
  const total = 2 * (macLen + keyLen + ivLen);
  const kb = tls12Prf(hash, masterSecret, 'key expansion', Buffer.concat([serverRandom, clientRandom]), total);
  let o = 0;
  const take = (n: number): Buffer => {
    const b = Buffer.from(kb.subarray(o, o + n)); // own copy, so the block can be wiped
    o += n;
    return b;
  };
  const r: Tls12RecordKeys = {
    clientMacKey: take(macLen),
    serverMacKey: take(macLen),
    clientWriteKey: take(keyLen),
    serverWriteKey: take(keyLen),
    clientWriteIv: take(ivLen),
    serverWriteIv: take(ivLen),
  };
  kb.fill(0);
  return r;
}

/**
 * RFC 5705 §4: PRF(master_secret, label, client_random + server_random [+ context_length + context]).
 * DTLS-SRTP (RFC 5764 §4.2) uses no context.
 */
export function tls12Exporter(
  hash: PrfHash,
  masterSecret: Buffer,
  label: string,
  clientRandom: Buffer,
  serverRandom: Buffer,
  length: number,
  context?: Buffer,
): Buffer {
  const parts = [clientRandom, serverRandom];
  if (context) {
    const l = Buffer.alloc(2);
    l.writeUInt16BE(context.length);
    parts.push(l, context);
  }
  return tls12Prf(hash, masterSecret, label, Buffer.concat(parts), length);
}

/** RFC 5764 §4.2: the exporter label for DTLS-SRTP keying material. */
export const DTLS_SRTP_EXPORTER_LABEL = 'EXTRACTOR-dtls_srtp';

export interface SrtpProfileInfo {
  id: number;
  name: string;
  keyLen: number;
  saltLen: number;
  aead: boolean;
}

/**
 * RFC 5764 §4.1.2 (SRTP_AES128_CM_HMAC_SHA1_80/32: 128-bit key, 112-bit salt) and
 * RFC 7714 §14.2 (AEAD_AES_128_GCM / AEAD_AES_256_GCM: 96-bit salt).
 */
export const SRTP_PROFILES: ReadonlyMap<number, SrtpProfileInfo> = new Map([
  [0x0001, { id: 0x0001, name: 'SRTP_AES128_CM_HMAC_SHA1_80', keyLen: 16, saltLen: 14, aead: false }],
  [0x0002, { id: 0x0002, name: 'SRTP_AES128_CM_HMAC_SHA1_32', keyLen: 16, saltLen: 14, aead: false }],
  [0x0007, { id: 0x0007, name: 'SRTP_AEAD_AES_128_GCM', keyLen: 16, saltLen: 12, aead: true }],
  [0x0008, { id: 0x0008, name: 'SRTP_AEAD_AES_256_GCM', keyLen: 32, saltLen: 12, aead: true }],
]);

export function srtpProfileInfo(profile: number): SrtpProfileInfo | undefined {
  return SRTP_PROFILES.get(profile);
}

export interface SrtpKeyMaterial {
  profile: number;
  clientMasterKey: Buffer;
  serverMasterKey: Buffer;
  clientMasterSalt: Buffer;
  serverMasterSalt: Buffer;
}

/**
 * RFC 5764 §4.2: the exported material is client_write_SRTP_master_key,
 * server_write_SRTP_master_key, client_write_SRTP_master_salt, server_write_SRTP_master_salt,
 * in that order. Returns null for an unknown profile or a short input.
 */
export function splitSrtpKeyingMaterial(profile: number, material: Buffer): SrtpKeyMaterial | null {
  const p = SRTP_PROFILES.get(profile);
  if (!p || material.length < 2 * (p.keyLen + p.saltLen)) return null;
  const k = splitSrtpKeyMaterial(material, p.keyLen, p.saltLen);
  return {
    profile,
    clientMasterKey: k.clientKey,
    serverMasterKey: k.serverKey,
    clientMasterSalt: k.clientSalt,
    serverMasterSalt: k.serverSalt,
  };
}

/** Master key and salt lengths of an SRTP protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2). */
export function srtpProfileLengths(profile: number): { keyLen: number; saltLen: number } | null {
  const p = SRTP_PROFILES.get(profile);
  return p ? { keyLen: p.keyLen, saltLen: p.saltLen } : null;
}

/** The four RFC 5764 §4.2 parts of exported keying material, in order. */
export interface SrtpKeyParts {
  clientKey: Buffer;
  serverKey: Buffer;
  clientSalt: Buffer;
  serverSalt: Buffer;
}

/** RFC 5764 §4.2 split: client key | server key | client salt | server salt (copies). */
export function splitSrtpKeyMaterial(m: Buffer, keyLen: number, saltLen: number): SrtpKeyParts {
  let o = 0;
  const take = (n: number): Buffer => Buffer.from(m.subarray(o, (o += n)));
  return { clientKey: take(keyLen), serverKey: take(keyLen), clientSalt: take(saltLen), serverSalt: take(saltLen) };
}

/** DTLS 1.2 SRTP keys: RFC 5705 exporter with label EXTRACTOR-dtls_srtp, split per RFC 5764 §4.2. */
export function deriveSrtpTls12(
  hash: PrfHash,
  masterSecret: Buffer,
  clientRandom: Buffer,
  serverRandom: Buffer,
  profile: number,
): SrtpKeyMaterial | null {
  const p = SRTP_PROFILES.get(profile);
  if (!p) return null;
  const m = tls12Exporter(hash, masterSecret, DTLS_SRTP_EXPORTER_LABEL, clientRandom, serverRandom, 2 * (p.keyLen + p.saltLen));
  const r = splitSrtpKeyingMaterial(profile, m);
  m.fill(0);
  return r;
}

// RFC 5869 HKDF and the RFC 8446 §7.1/§7.5 label and exporter functions: one
// implementation, in hkdf.ts.
export { hkdfExtract, hkdfExpand, hkdfExpandLabel, tls13Exporter } from './hkdf.js';

/** DTLS 1.3 SRTP keys: TLS 1.3 exporter (empty context) with label EXTRACTOR-dtls_srtp, RFC 5764 §4.2 split. */
export function deriveSrtpTls13(hash: PrfHash, exporterMasterSecret: Buffer, profile: number, prefix = 'tls13 '): SrtpKeyMaterial | null {
  const p = SRTP_PROFILES.get(profile);
  if (!p) return null;
  const m = hkdfTls13Exporter(hash, exporterMasterSecret, DTLS_SRTP_EXPORTER_LABEL, Buffer.alloc(0), 2 * (p.keyLen + p.saltLen), prefix);
  const r = splitSrtpKeyingMaterial(profile, m);
  m.fill(0);
  return r;
}

/**
 * DTLS 1.3 SRTP keys as the four parts (RFC 5764 §4.2 over the RFC 8446 §7.5 exporter);
 * the label prefix defaults to "dtls13" (RFC 9147 §5.9). Null for an unknown profile.
 */
export function srtpKeysFromExporter(
  hash: PrfHash,
  exporterSecret: Buffer,
  profile: number,
  prefix: string = DTLS13_PREFIX,
): SrtpKeyParts | null {
  const k = deriveSrtpTls13(hash, exporterSecret, profile, prefix);
  return k
    ? { clientKey: k.clientMasterKey, serverKey: k.serverMasterKey, clientSalt: k.clientMasterSalt, serverSalt: k.serverMasterSalt }
    : null;
}
