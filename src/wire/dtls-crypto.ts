/**
 * DTLS 1.2 record protection (pure, no I/O): the cipher suite table and per-direction
 * record decryptors (plus encryptors, for tests and tools).
 *
 * Public API:
 *   CIPHER_SUITES: ReadonlyMap<number, CipherSuiteInfo>, cipherSuiteInfo(id)
 *   class DtlsRecordDecryptor(suite, keys)   — one per direction and epoch; keeps cipher state
 *     .decrypt(type, version, epoch, seq, fragment): Buffer | null
 *         plaintext, or null when the record does not authenticate or is malformed.
 *         Authentication is ALWAYS verified before plaintext is returned.
 *   class DtlsRecordEncryptor(suite, keys)
 *     .encrypt(type, version, epoch, seq, plaintext, explicitIv?): Buffer  (the record fragment)
 *   recordAad(...) helper.
 *
 * `seq` is the 48-bit DTLS sequence number as a JS number (RFC 6347 §4.1); the TLS
 * "seq_num" used in MACs/AAD is epoch (16 bits) || sequence_number (48 bits), RFC 6347 §4.1.2.1.
 *
 * Constructors throw DtlsCryptoError on an unsupported suite or wrong key lengths
 * (callers validate key sets first, see src/wire/keyset.ts); decrypt() never throws.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { GcmOpener } from './native.js';
import type { Cipher, Decipher, Hash } from 'node:crypto';
import type { PrfHash } from './tls-prf.js';

export type SuiteKind = 'gcm' | 'chacha20' | 'cbc';

export interface CipherSuiteInfo {
  id: number;
  name: string;
  kind: SuiteKind;
  /** Encryption key length (bytes). */
  keyLen: number;
  /** Fixed IV length from the key block: 4 for GCM (RFC 5288 §3), 12 for ChaCha20 (RFC 7905 §2) and TLS 1.3; 0 for CBC. */
  ivLen: number;
  /** HMAC key/tag length for CBC suites; 0 for AEAD. */
  macLen: number;
  macHash: 'sha1' | 'sha256' | 'sha384' | null;
  /** PRF / HKDF hash (RFC 5246 §5: SHA-256 unless the suite says otherwise). */
  prfHash: PrfHash;
  /** True for the TLS/DTLS 1.3 suites (RFC 8446 §B.4). */
  tls13: boolean;
}

function s(
  id: number,
  name: string,
  kind: SuiteKind,
  keyLen: number,
  ivLen: number,
  macHash: 'sha1' | 'sha256' | 'sha384' | null,
  prfHash: PrfHash,
  tls13 = false,
): [number, CipherSuiteInfo] {
  const macLen = macHash === 'sha1' ? 20 : macHash === 'sha256' ? 32 : macHash === 'sha384' ? 48 : 0;
  return [id, { id, name, kind, keyLen, ivLen, macLen, macHash, prfHash, tls13 }];
}

/**
 * The suites of key-escrow.md §3. IANA values: RFC 8422 §6 (ECDHE CBC), RFC 5289 §3.2 (ECDHE GCM),
 * RFC 7905 §2 (ChaCha20-Poly1305), RFC 4279 §2 / RFC 5487 §3.2 (PSK), RFC 8446 §B.4 (TLS 1.3).
 */
export const CIPHER_SUITES: ReadonlyMap<number, CipherSuiteInfo> = new Map([
  s(0xc02b, 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256', 'gcm', 16, 4, null, 'sha256'),
  s(0xc02f, 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256', 'gcm', 16, 4, null, 'sha256'),
  s(0xc02c, 'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384', 'gcm', 32, 4, null, 'sha384'),
  s(0xc030, 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384', 'gcm', 32, 4, null, 'sha384'),
  s(0xcca8, 'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256', 'chacha20', 32, 12, null, 'sha256'),
  s(0xcca9, 'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256', 'chacha20', 32, 12, null, 'sha256'),
  s(0xc009, 'TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA', 'cbc', 16, 0, 'sha1', 'sha256'),
  s(0xc013, 'TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA', 'cbc', 16, 0, 'sha1', 'sha256'),
  s(0xc00a, 'TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA', 'cbc', 32, 0, 'sha1', 'sha256'),
  s(0xc014, 'TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA', 'cbc', 32, 0, 'sha1', 'sha256'),
  s(0x008c, 'TLS_PSK_WITH_AES_128_CBC_SHA', 'cbc', 16, 0, 'sha1', 'sha256'),
  s(0x008d, 'TLS_PSK_WITH_AES_256_CBC_SHA', 'cbc', 32, 0, 'sha1', 'sha256'),
  s(0x00ae, 'TLS_PSK_WITH_AES_128_CBC_SHA256', 'cbc', 16, 0, 'sha256', 'sha256'),
  s(0x1301, 'TLS_AES_128_GCM_SHA256', 'gcm', 16, 12, null, 'sha256', true),
  s(0x1302, 'TLS_AES_256_GCM_SHA384', 'gcm', 32, 12, null, 'sha384', true),
  s(0x1303, 'TLS_CHACHA20_POLY1305_SHA256', 'chacha20', 32, 12, null, 'sha256', true),
]);

export function cipherSuiteInfo(id: number): CipherSuiteInfo | undefined {
  return CIPHER_SUITES.get(id);
}

export class DtlsCryptoError extends Error {
  readonly code = 'E_DTLS_CRYPTO';
  constructor(message: string) {
    super(message);
    this.name = 'DtlsCryptoError';
  }
}

/** One direction's record keys (the writer's key block part, RFC 5246 §6.3). */
export interface DirectionKeys {
  key: Buffer;
  /** Fixed IV (AEAD): 4 bytes GCM, 12 bytes ChaCha20. Unused for CBC. */
  iv?: Buffer;
  /** HMAC key (CBC suites). */
  macKey?: Buffer;
  /** RFC 7366 encrypt-then-MAC negotiated (CBC suites). */
  encryptThenMac?: boolean;
}

const TAG_LEN = 16; // RFC 5116 §5.1 / RFC 8439 §2.8: 16-byte AEAD tags

export interface DtlsDecryptorOptions {
  /**
   * AES-GCM with the native addon: plaintexts are written into this buffer (when large
   * enough) and returned as views of it, valid only until the next record decrypted into
   * it. No allocation per record, for callers that copy what they keep.
   */
  plaintextInto?: Buffer;
}
const CBC_BLOCK = 16;

/**
 * Writes the 13-byte additional data of RFC 5246 §6.2.3.3 (AEAD) and the MAC header of
 * §6.2.3.1: seq_num(8) = epoch(2) || sequence_number(6) (RFC 6347 §4.1.2.1), type(1),
 * version(2), length(2).
 */
export function recordAad(out: Buffer, type: number, version: number, epoch: number, seq: number, length: number): Buffer {
  // Byte by byte: Buffer's write*BE validate every argument, per record.
  const hi = Math.floor(seq / 0x100000000) & 0xffff; // the 48-bit sequence number's top 16 bits
  const lo = seq >>> 0;
  out[0] = (epoch >>> 8) & 0xff;
  out[1] = epoch & 0xff;
  out[2] = hi >>> 8;
  out[3] = hi & 0xff;
  out[4] = lo >>> 24;
  out[5] = (lo >>> 16) & 0xff;
  out[6] = (lo >>> 8) & 0xff;
  out[7] = lo & 0xff;
  out[8] = type;
  out[9] = (version >>> 8) & 0xff;
  out[10] = version & 0xff;
  out[11] = (length >>> 8) & 0xff;
  out[12] = length & 0xff;
  return out;
}

/**
 * HMAC (RFC 2104) with the inner and outer hash states precomputed once per key; each
 * MAC clones them (Hash.copy), saving two compression-function calls and the key setup.
 */
class FastHmac {
  private readonly inner: Hash;
  private readonly outer: Hash;
  constructor(alg: 'sha1' | 'sha256' | 'sha384', key: Buffer) {
    const block = alg === 'sha384' ? 128 : 64;
    let k = key.length > block ? createHash(alg).update(key).digest() : key;
    const ipad = Buffer.alloc(block, 0x36);
    const opad = Buffer.alloc(block, 0x5c);
    for (let i = 0; i < k.length; i++) {
      ipad[i] ^= k[i]!;
      opad[i] ^= k[i]!;
    }
    this.inner = createHash(alg).update(ipad);
    this.outer = createHash(alg).update(opad);
    ipad.fill(0);
    opad.fill(0);
    if (k !== key) k.fill(0);
    k = Buffer.alloc(0);
  }
  mac(a: Buffer, b: Buffer, c?: Buffer): Buffer {
    const h = this.inner.copy().update(a).update(b);
    if (c) h.update(c);
    return this.outer.copy().update(h.digest()).digest();
  }
}

function checkKeys(info: CipherSuiteInfo, k: DirectionKeys): void {
  if (info.tls13) throw new DtlsCryptoError(`suite 0x${info.id.toString(16)} is TLS 1.3 (use the DTLS 1.3 record layer)`);
  if (k.key.length !== info.keyLen) throw new DtlsCryptoError('write key length does not match the suite');
  if (info.kind === 'cbc') {
    if (!k.macKey || k.macKey.length !== info.macLen) throw new DtlsCryptoError('MAC key length does not match the suite');
  } else if (!k.iv || k.iv.length !== info.ivLen) {
    throw new DtlsCryptoError('IV length does not match the suite');
  }
}

function aesName(keyLen: number, mode: string): string {
  return `aes-${keyLen * 8}-${mode}`;
}

/** Decrypts and authenticates DTLS 1.2 records of one direction (RFC 6347 §4.1.2, RFC 5246 §6.2.3). */
export class DtlsRecordDecryptor {
  readonly suite: CipherSuiteInfo;
  private readonly key: Buffer;
  private readonly iv: Buffer;
  private readonly etm: boolean;
  private readonly hmac: FastHmac | null;
  private readonly ecb: Decipher | null;
  private readonly aad = Buffer.alloc(13);
  private readonly nonce = Buffer.alloc(12);
  /** Reused OpenSSL GCM context (native addon), when built. */
  private readonly gcmNative: GcmOpener | null;
  /** DtlsDecryptorOptions.plaintextInto */
  private readonly into: Buffer | undefined;

  constructor(suite: number, keys: DirectionKeys, opts: DtlsDecryptorOptions = {}) {
    this.into = opts.plaintextInto;
    const info = CIPHER_SUITES.get(suite);
    if (!info) throw new DtlsCryptoError(`unsupported cipher suite 0x${suite.toString(16)}`);
    checkKeys(info, keys);
    this.suite = info;
    this.key = Buffer.from(keys.key);
    this.iv = keys.iv ? Buffer.from(keys.iv) : Buffer.alloc(0);
    this.etm = !!keys.encryptThenMac;
    if (info.kind === 'cbc') {
      this.hmac = new FastHmac(info.macHash!, keys.macKey!);
      // One long-lived AES-ECB decipher, CBC chaining done by hand (no per-record cipher setup).
      this.ecb = createDecipheriv(aesName(info.keyLen, 'ecb'), this.key, null).setAutoPadding(false);
    } else {
      this.hmac = null;
      this.ecb = null;
    }
    this.gcmNative = info.kind === 'gcm' ? GcmOpener.create(this.key) : null;
  }

  /**
   * Returns the plaintext of a record fragment (the bytes after the 13-byte DTLS header),
   * or null if it is malformed or does not authenticate. Never throws.
   */
  decrypt(type: number, version: number, epoch: number, seq: number, fragment: Buffer): Buffer | null {
    try {
      switch (this.suite.kind) {
        case 'gcm':
          return this.gcm(type, version, epoch, seq, fragment, 0, fragment.length);
        case 'chacha20':
          return this.chacha(type, version, epoch, seq, fragment);
        default:
          return this.etm ? this.cbcEtm(type, version, epoch, seq, fragment) : this.cbcMte(type, version, epoch, seq, fragment);
      }
    } catch {
      return null;
    }
  }

  /**
   * decrypt() of the fragment buf[off..off+len) where it lies (AES-GCM reads it in place,
   * no view made of it). Never throws.
   */
  decryptAt(type: number, version: number, epoch: number, seq: number, buf: Buffer, off: number, len: number): Buffer | null {
    if (this.suite.kind !== 'gcm') return this.decrypt(type, version, epoch, seq, buf.subarray(off, off + len));
    try {
      return this.gcm(type, version, epoch, seq, buf, off, len);
    } catch {
      return null;
    }
  }

  /** Zeroes the key copies held by this object. Cipher state inside OpenSSL is released by GC. */
  wipe(): void {
    this.key.fill(0);
    this.iv.fill(0);
  }

  // RFC 5288 §3: GenericAEADCipher = nonce_explicit(8) || ciphertext || tag(16); nonce = salt(4) || nonce_explicit.
  // The fragment is buf[off..off+len).
  private gcm(type: number, version: number, epoch: number, seq: number, buf: Buffer, off: number, len: number): Buffer | null {
    if (len < 8 + TAG_LEN || off < 0 || off + len > buf.length) return null;
    const ctLen = len - 8 - TAG_LEN;
    // RFC 5246 §6.2.3.3: additional_data = seq_num + type + version + length (of the plaintext)
    recordAad(this.aad, type, version, epoch, seq, ctLen);
    if (this.gcmNative) return this.gcmNative.openExplicitAt(this.iv, this.aad, buf, off + 8, ctLen, this.into);
    this.iv.copy(this.nonce, 0, 0, 4);
    buf.copy(this.nonce, 4, off, off + 8);
    const d = createDecipheriv(aesName(this.suite.keyLen, 'gcm') as 'aes-128-gcm', this.key, this.nonce, { authTagLength: TAG_LEN });
    d.setAAD(this.aad);
    d.setAuthTag(buf.subarray(off + len - TAG_LEN, off + len));
    const pt = d.update(buf.subarray(off + 8, off + 8 + ctLen));
    d.final(); // throws when the tag does not verify
    return pt;
  }

  // RFC 7905 §2: nonce = fixed IV (12) XOR (4 zero bytes || seq_num(8)); no explicit nonce.
  private chacha(type: number, version: number, epoch: number, seq: number, f: Buffer): Buffer | null {
    if (f.length < TAG_LEN) return null;
    const ctLen = f.length - TAG_LEN;
    recordAad(this.aad, type, version, epoch, seq, ctLen);
    this.iv.copy(this.nonce);
    for (let i = 0; i < 8; i++) this.nonce[4 + i] ^= this.aad[i]!;
    const d = createDecipheriv('chacha20-poly1305', this.key, this.nonce, { authTagLength: TAG_LEN });
    d.setAAD(this.aad, { plaintextLength: ctLen });
    d.setAuthTag(f.subarray(ctLen));
    const pt = d.update(f.subarray(0, ctLen));
    d.final();
    return pt;
  }

  /** AES-CBC decryption of ct with the given IV, using the shared ECB object. */
  private cbcDecrypt(iv: Buffer, ct: Buffer): Buffer {
    const p = this.ecb!.update(ct);
    if (p.length !== ct.length) throw new Error('ecb');
    for (let i = 0; i < CBC_BLOCK; i++) p[i] ^= iv[i]!;
    for (let i = CBC_BLOCK; i < p.length; i++) p[i] ^= ct[i - CBC_BLOCK]!;
    return p;
  }

  // RFC 5246 §6.2.3.2 (MAC-then-encrypt): IV(16) || ENC(content || MAC || padding || padding_length).
  private cbcMte(type: number, version: number, epoch: number, seq: number, f: Buffer): Buffer | null {
    const macLen = this.suite.macLen;
    const ctLen = f.length - CBC_BLOCK;
    // At least one block, whole blocks, room for MAC + padding_length byte.
    if (ctLen < CBC_BLOCK || ctLen % CBC_BLOCK !== 0 || ctLen < macLen + 1) return null;
    const p = this.cbcDecrypt(f.subarray(0, CBC_BLOCK), f.subarray(CBC_BLOCK));
    const padLen = p[p.length - 1]!;
    // Padding check without early exit (RFC 5246 §6.2.3.2 implementation note: avoid a
    // timing oracle); a bad padding still computes a MAC, over the unpadded-as-0 content.
    let bad = padLen + 1 + macLen > p.length ? 1 : 0;
    const checkLen = Math.min(256, p.length);
    for (let i = 1; i <= checkLen; i++) {
      const inPad = i <= padLen + 1 ? 1 : 0;
      bad |= inPad & (p[p.length - i] !== padLen ? 1 : 0);
    }
    const contentLen = bad ? p.length - 1 - macLen : p.length - padLen - 1 - macLen;
    recordAad(this.aad, type, version, epoch, seq, contentLen);
    const content = p.subarray(0, contentLen);
    const mac = this.hmac!.mac(this.aad, content);
    const ok = timingSafeEqual(mac, p.subarray(contentLen, contentLen + macLen));
    if (!ok || bad) {
      p.fill(0);
      return null;
    }
    return content;
  }

  // RFC 7366 §3: IV || ENC(content || padding || padding_length) || MAC, where
  // MAC = MAC(MAC_write_key, seq_num + type + version + length + IV + ENC(...)), and length
  // is the length of IV + ENC(...), i.e. without the MAC.
  private cbcEtm(type: number, version: number, epoch: number, seq: number, f: Buffer): Buffer | null {
    const macLen = this.suite.macLen;
    const encLen = f.length - macLen; // IV + ciphertext
    if (encLen < 2 * CBC_BLOCK || (encLen - CBC_BLOCK) % CBC_BLOCK !== 0) return null;
    recordAad(this.aad, type, version, epoch, seq, encLen);
    const mac = this.hmac!.mac(this.aad, f.subarray(0, encLen));
    if (!timingSafeEqual(mac, f.subarray(encLen))) return null;
    const p = this.cbcDecrypt(f.subarray(0, CBC_BLOCK), f.subarray(CBC_BLOCK, encLen));
    const padLen = p[p.length - 1]!;
    if (padLen + 1 > p.length) return null;
    for (let i = p.length - 1 - padLen; i < p.length - 1; i++) if (p[i] !== padLen) return null;
    return p.subarray(0, p.length - padLen - 1);
  }
}

/** Encrypts DTLS 1.2 record fragments (tests and tools; the gateway itself only decrypts). */
export class DtlsRecordEncryptor {
  readonly suite: CipherSuiteInfo;
  private readonly keys: DirectionKeys;
  private readonly hmac: FastHmac | null;
  private readonly aad = Buffer.alloc(13);

  constructor(suite: number, keys: DirectionKeys) {
    const info = CIPHER_SUITES.get(suite);
    if (!info) throw new DtlsCryptoError(`unsupported cipher suite 0x${suite.toString(16)}`);
    checkKeys(info, keys);
    this.suite = info;
    this.keys = keys;
    this.hmac = info.kind === 'cbc' ? new FastHmac(info.macHash!, keys.macKey!) : null;
  }

  /** Returns the protected fragment for a record with the given header fields. */
  encrypt(type: number, version: number, epoch: number, seq: number, plaintext: Buffer, explicitIv?: Buffer): Buffer {
    const info = this.suite;
    if (info.kind === 'gcm') {
      const explicit = Buffer.alloc(8);
      explicit.writeUInt16BE(epoch, 0);
      explicit.writeUIntBE(seq, 2, 6);
      const nonce = Buffer.concat([this.keys.iv!, explicit]);
      recordAad(this.aad, type, version, epoch, seq, plaintext.length);
      const c = createCipheriv(aesName(info.keyLen, 'gcm') as 'aes-128-gcm', this.keys.key, nonce, { authTagLength: TAG_LEN });
      c.setAAD(this.aad);
      const ct = Buffer.concat([c.update(plaintext), c.final()]);
      return Buffer.concat([explicit, ct, c.getAuthTag()]);
    }
    if (info.kind === 'chacha20') {
      recordAad(this.aad, type, version, epoch, seq, plaintext.length);
      const nonce = Buffer.from(this.keys.iv!);
      for (let i = 0; i < 8; i++) nonce[4 + i] ^= this.aad[i]!;
      const c = createCipheriv('chacha20-poly1305', this.keys.key, nonce, { authTagLength: TAG_LEN });
      c.setAAD(this.aad, { plaintextLength: plaintext.length });
      const ct = Buffer.concat([c.update(plaintext), c.final()]);
      return Buffer.concat([ct, c.getAuthTag()]);
    }
    const iv = explicitIv ?? randomBytes(CBC_BLOCK);
    const cbc = (data: Buffer): Buffer => {
      const c: Cipher = createCipheriv(aesName(info.keyLen, 'cbc'), this.keys.key, iv).setAutoPadding(false);
      return Buffer.concat([c.update(data), c.final()]);
    };
    const pad = (len: number): Buffer => {
      const padLen = CBC_BLOCK - 1 - (len % CBC_BLOCK);
      return Buffer.alloc(padLen + 1, padLen);
    };
    if (this.keys.encryptThenMac) {
      const enc = Buffer.concat([iv, cbc(Buffer.concat([plaintext, pad(plaintext.length)]))]);
      recordAad(this.aad, type, version, epoch, seq, enc.length);
      return Buffer.concat([enc, this.hmac!.mac(this.aad, enc)]);
    }
    recordAad(this.aad, type, version, epoch, seq, plaintext.length);
    const mac = this.hmac!.mac(this.aad, plaintext);
    const body = Buffer.concat([plaintext, mac]);
    return Buffer.concat([iv, cbc(Buffer.concat([body, pad(body.length)]))]);
  }
}
