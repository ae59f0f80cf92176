/**
 * SRTP and SRTCP (RFC 3711) for the DTLS-SRTP protection profiles (RFC 5764 §4.1.2,
 * RFC 7714 §14.2):
 *
 *   0x0001 SRTP_AES128_CM_HMAC_SHA1_80   AES-CM + HMAC-SHA1, 80-bit tags
 *   0x0002 SRTP_AES128_CM_HMAC_SHA1_32   AES-CM + HMAC-SHA1, 32-bit SRTP / 80-bit SRTCP tags
 *   0x0007 SRTP_AEAD_AES_128_GCM         AES-GCM (RFC 7714), 16-octet tags
 *   0x0008 SRTP_AEAD_AES_256_GCM
 *
 * Pure computation (node:crypto only; no I/O, no clocks, no imports of ours).
 *
 * Speed: Node offers no way to re-key or re-IV a cipher object, and one createDecipheriv
 * per packet costs several microseconds, so the hot path keeps ONE `aes-*-ecb` cipher per
 * session key and produces counter-mode keystream by encrypting counter blocks written
 * into a reused buffer (RFC 3711 §4.1.1 AES-CM; RFC 7714 §7 GCM uses the same CTR). The
 * GCM authenticator (GHASH) runs in JS with per-key 8-bit multiplication tables, and
 * HMAC-SHA1 runs in JS from precomputed inner/outer states for small packets, falling
 * back to node's createHmac for large ones. See bench/srtp.ts for the measured figures.
 *
 * Native path: when the optional addon (src/wire/native.ts, native/srtp_openssl.c) is
 * built, each session key set gets one OpenSSL context and a packet costs one JS→C call
 * (same results; test/unit/wire/native-srtp.test.ts compares both paths). Without it, or
 * with `native: false`, the pure-JS path below runs.
 *
 * Unprotect functions never return unauthenticated plaintext: the tag is checked first
 * (AES-CM) or the plaintext is released only after the GCM tag matched.
 */
import { createCipheriv, createHmac, type Cipher } from 'node:crypto';
import { loadNative, type NativeSrtpCrypto } from './native.js';

export const SRTP_AES128_CM_HMAC_SHA1_80 = 0x0001;
export const SRTP_AES128_CM_HMAC_SHA1_32 = 0x0002;
export const SRTP_AEAD_AES_128_GCM = 0x0007;
export const SRTP_AEAD_AES_256_GCM = 0x0008;

export interface SrtpProfileParams {
  id: number;
  name: string;
  aead: boolean;
  /** Master (and session) cipher key length in octets. */
  keyLength: number;
  /** Master (and session) salt length: 14 for AES-CM (RFC 3711 §8.2), 12 for GCM (RFC 7714 §12). */
  saltLength: number;
  /** Session authentication key length (RFC 3711 §5.2: 160 bits for HMAC-SHA1), 0 for AEAD. */
  authKeyLength: number;
  rtpTagLength: number;
  rtcpTagLength: number;
}

const PROFILES: Record<number, SrtpProfileParams> = {
  // RFC 5764 §4.1.2
  1: {
    id: 1,
    name: 'SRTP_AES128_CM_HMAC_SHA1_80',
    aead: false,
    keyLength: 16,
    saltLength: 14,
    authKeyLength: 20,
    rtpTagLength: 10,
    rtcpTagLength: 10,
  },
  // RFC 5764 §4.1.2: "SRTCP_auth_tag_length 80" even for the _32 profile.
  2: {
    id: 2,
    name: 'SRTP_AES128_CM_HMAC_SHA1_32',
    aead: false,
    keyLength: 16,
    saltLength: 14,
    authKeyLength: 20,
    rtpTagLength: 4,
    rtcpTagLength: 10,
  },
  // RFC 7714 §14.2: 96-bit salt, 16-octet tag.
  7: {
    id: 7,
    name: 'SRTP_AEAD_AES_128_GCM',
    aead: true,
    keyLength: 16,
    saltLength: 12,
    authKeyLength: 0,
    rtpTagLength: 16,
    rtcpTagLength: 16,
  },
  8: {
    id: 8,
    name: 'SRTP_AEAD_AES_256_GCM',
    aead: true,
    keyLength: 32,
    saltLength: 12,
    authKeyLength: 0,
    rtpTagLength: 16,
    rtcpTagLength: 16,
  },
};

/** Parameters of a protection profile, or null when unsupported. */
export function srtpProfileParams(profile: number): SrtpProfileParams | null {
  return PROFILES[profile] ?? null;
}

// RFC 3711 §4.3.1 (SRTP, 0x00-0x02) / §4.3.2 (SRTCP, 0x03-0x05): key derivation labels.
export const LABEL_RTP_ENCRYPTION = 0x00;
export const LABEL_RTP_AUTH = 0x01;
export const LABEL_RTP_SALT = 0x02;
export const LABEL_RTCP_ENCRYPTION = 0x03;
export const LABEL_RTCP_AUTH = 0x04;
export const LABEL_RTCP_SALT = 0x05;

function ecbCipher(key: Buffer): Cipher {
  if (key.length !== 16 && key.length !== 32) throw new RangeError('AES key must be 16 or 32 octets');
  const c = createCipheriv(key.length === 16 ? 'aes-128-ecb' : 'aes-256-ecb', key, null);
  c.setAutoPadding(false);
  return c;
}

/**
 * AES-CM keystream (RFC 3711 §4.1.1): E(k, IV), E(k, IV + 1), ... truncated to `length`.
 * `iv` is the full 16-octet counter block. Used for key derivation and test vectors.
 */
export function aesCmKeystream(key: Buffer, iv: Buffer, length: number): Buffer {
  if (iv.length !== 16) throw new RangeError('IV must be 16 octets');
  const nb = Math.ceil(length / 16);
  const blocks = Buffer.alloc(nb * 16);
  for (let i = 0; i < nb; i++) {
    iv.copy(blocks, i * 16);
    // RFC 3711 §4.1.1: the 128-bit counter is incremented per block.
    let carry = i;
    for (let j = 15; j >= 0 && carry; j--) {
      const v = blocks[i * 16 + j] + (carry & 0xff);
      blocks[i * 16 + j] = v & 0xff;
      carry = (carry >>> 8) + (v >> 8);
    }
  }
  return ecbCipher(key).update(blocks).subarray(0, length);
}

/**
 * RFC 3711 §4.3.1 key derivation with key_derivation_rate 0 (so r = 0), using the AES-CM
 * PRF of §4.3.3 (AES-256 for 32-octet master keys, RFC 6188 §7). x = key_id XOR
 * master_salt, with key_id = label || r (56 bits) aligned to the low end of the 112-bit
 * salt; the PRF input block is x * 2^16. A 96-bit GCM master salt is first multiplied by
 * 2^16 (RFC 7714 §11, erratum 4938), i.e. padded with two zero octets.
 */
export function deriveSessionKey(masterKey: Buffer, masterSalt: Buffer, label: number, length: number): Buffer {
  if (masterSalt.length !== 14 && masterSalt.length !== 12) throw new RangeError('master salt must be 14 or 12 octets');
  const iv = Buffer.alloc(16);
  masterSalt.copy(iv, 0);
  // Octet 7 of the 14-octet salt holds the label; octets 8..13 hold r (0 here).
  iv[7] ^= label;
  return aesCmKeystream(masterKey, iv, length);
}

export interface SrtpSessionKeys {
  rtpKey: Buffer;
  rtpSalt: Buffer;
  /** Empty for AEAD profiles. */
  rtpAuthKey: Buffer;
  rtcpKey: Buffer;
  rtcpSalt: Buffer;
  rtcpAuthKey: Buffer;
}

/** Derives the six session keys of RFC 3711 §4.3.1 / §4.3.2 for a profile. Throws RangeError on bad lengths. */
export function deriveSrtpSessionKeys(profile: number, masterKey: Buffer, masterSalt: Buffer): SrtpSessionKeys {
  const p = srtpProfileParams(profile);
  if (!p) throw new RangeError('unsupported SRTP profile');
  if (masterKey.length !== p.keyLength) throw new RangeError('wrong master key length for the profile');
  if (masterSalt.length !== p.saltLength) throw new RangeError('wrong master salt length for the profile');
  return {
    rtpKey: deriveSessionKey(masterKey, masterSalt, LABEL_RTP_ENCRYPTION, p.keyLength),
    rtpSalt: deriveSessionKey(masterKey, masterSalt, LABEL_RTP_SALT, p.saltLength),
    rtpAuthKey: p.aead ? Buffer.alloc(0) : deriveSessionKey(masterKey, masterSalt, LABEL_RTP_AUTH, p.authKeyLength),
    rtcpKey: deriveSessionKey(masterKey, masterSalt, LABEL_RTCP_ENCRYPTION, p.keyLength),
    rtcpSalt: deriveSessionKey(masterKey, masterSalt, LABEL_RTCP_SALT, p.saltLength),
    rtcpAuthKey: p.aead ? Buffer.alloc(0) : deriveSessionKey(masterKey, masterSalt, LABEL_RTCP_AUTH, p.authKeyLength),
  };
}

// ---------------------------------------------------------------------------------------
// Counter-mode keystream through one reused ECB cipher
// ---------------------------------------------------------------------------------------

/** Largest packet handled (UDP payload bound); caps the reused buffers. */
const MAX_PACKET = 65536;

class CtrGen {
  private readonly ecb: Cipher;
  /** Counter blocks; block 0 (the IV) is written by the caller into `iv`. */
  private blocks = Buffer.alloc(16 * 96);
  readonly iv = Buffer.alloc(16);

  constructor(key: Buffer) {
    this.ecb = ecbCipher(key);
  }

  /**
   * Encrypts nb counter blocks: block i is `iv` with its last 16 bits replaced by
   * start + i. Valid because the callers' counters never carry out of those bits: AES-CM
   * IVs end in 16 zero bits (RFC 3711 §4.1.1) and GCM counters start at 1 with at most
   * 4097 blocks per packet (RFC 7714 §7: 32-bit counter, 64 KiB packets).
   */
  run(nb: number, start: number): Buffer {
    const bytes = nb * 16;
    if (this.blocks.length < bytes) this.blocks = Buffer.alloc(Math.max(bytes, this.blocks.length * 2));
    const b = this.blocks;
    b.fill(this.iv, 0, bytes);
    for (let i = 0, o = 14; i < nb; i++, o += 16) {
      const c = start + i;
      b[o] = c >>> 8;
      b[o + 1] = c & 0xff;
    }
    return this.ecb.update(b.subarray(0, bytes));
  }

  /** One block E(k, block). */
  encryptBlock(block: Buffer): Buffer {
    return this.ecb.update(block);
  }
}

// ---------------------------------------------------------------------------------------
// HMAC-SHA1 (RFC 2104) with precomputed pads; JS for small inputs, node for large ones
// ---------------------------------------------------------------------------------------

const W = new Int32Array(80);

/** SHA-1 compression function (FIPS 180-4 §6.1.2) of one 64-octet block at b[o..]. */
function sha1Compress(s: Int32Array, b: Uint8Array, o: number): void {
  const w = W;
  for (let i = 0; i < 16; i++, o += 4) w[i] = (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
  for (let i = 16; i < 80; i++) {
    const x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
    w[i] = (x << 1) | (x >>> 31);
  }
  let a = s[0];
  let bb = s[1];
  let c = s[2];
  let d = s[3];
  let e = s[4];
  for (let i = 0; i < 20; i++) {
    const t = (((a << 5) | (a >>> 27)) + ((bb & c) | (~bb & d)) + e + w[i] + 0x5a827999) | 0;
    e = d;
    d = c;
    c = (bb << 30) | (bb >>> 2);
    bb = a;
    a = t;
  }
  for (let i = 20; i < 40; i++) {
    const t = (((a << 5) | (a >>> 27)) + (bb ^ c ^ d) + e + w[i] + 0x6ed9eba1) | 0;
    e = d;
    d = c;
    c = (bb << 30) | (bb >>> 2);
    bb = a;
    a = t;
  }
  for (let i = 40; i < 60; i++) {
    const t = (((a << 5) | (a >>> 27)) + ((bb & c) | (bb & d) | (c & d)) + e + w[i] - 0x70e44324) | 0;
    e = d;
    d = c;
    c = (bb << 30) | (bb >>> 2);
    bb = a;
    a = t;
  }
  for (let i = 60; i < 80; i++) {
    const t = (((a << 5) | (a >>> 27)) + (bb ^ c ^ d) + e + w[i] - 0x359d3e2a) | 0;
    e = d;
    d = c;
    c = (bb << 30) | (bb >>> 2);
    bb = a;
    a = t;
  }
  s[0] = (s[0] + a) | 0;
  s[1] = (s[1] + bb) | 0;
  s[2] = (s[2] + c) | 0;
  s[3] = (s[3] + d) | 0;
  s[4] = (s[4] + e) | 0;
}

const SHA1_IV = [0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476, 0xc3d2e1f0 | 0];

/**
 * Messages up to this many octets use the JS SHA-1; longer ones node's createHmac, whose
 * fixed per-call cost (~2.5 µs) is then smaller than JS's per-block cost (measured
 * crossover, bench/srtp.ts).
 */
export const HMAC_JS_MAX = 640;

class HmacSha1 {
  private readonly inner = new Int32Array(5);
  private readonly outer = new Int32Array(5);
  private readonly st = new Int32Array(5);
  private readonly scratch = Buffer.alloc(128);
  private readonly trailer = Buffer.alloc(4);
  readonly digest = Buffer.alloc(20);

  constructor(private readonly key: Buffer) {
    // RFC 2104 §2: keys up to the block size are zero-padded; ours are 20 octets.
    const k = Buffer.alloc(64);
    key.copy(k);
    for (let i = 0; i < 64; i++) k[i] ^= 0x36;
    this.inner.set(SHA1_IV);
    sha1Compress(this.inner, k, 0);
    for (let i = 0; i < 64; i++) k[i] ^= 0x36 ^ 0x5c;
    this.outer.set(SHA1_IV);
    sha1Compress(this.outer, k, 0);
    k.fill(0);
  }

  /** HMAC-SHA1(key, buf[off..off+len) || trailer as u32 big-endian) into this.digest. */
  mac(buf: Buffer, off: number, len: number, trailer: number): Buffer {
    if (len > HMAC_JS_MAX) {
      this.trailer.writeUInt32BE(trailer >>> 0, 0);
      const d = createHmac('sha1', this.key)
        .update(buf.subarray(off, off + len))
        .update(this.trailer)
        .digest();
      d.copy(this.digest);
      return this.digest;
    }
    const st = this.st;
    st.set(this.inner);
    const end = off + len;
    let p = off;
    for (; p + 64 <= end; p += 64) sha1Compress(st, buf, p);
    const sc = this.scratch;
    const r = end - p;
    for (let i = 0; i < r; i++) sc[i] = buf[p + i];
    sc[r] = trailer >>> 24;
    sc[r + 1] = (trailer >>> 16) & 0xff;
    sc[r + 2] = (trailer >>> 8) & 0xff;
    sc[r + 3] = trailer & 0xff;
    sc[r + 4] = 0x80; // FIPS 180-4 §5.1.1 padding
    const total = r + 5 + 8 <= 64 ? 64 : 128;
    sc.fill(0, r + 5, total - 4);
    const bits = (64 + len + 4) * 8; // < 2^32 since len <= HMAC_JS_MAX
    sc.writeUInt32BE(bits >>> 0, total - 4);
    sha1Compress(st, sc, 0);
    if (total === 128) sha1Compress(st, sc, 64);
    for (let i = 0; i < 5; i++) sc.writeInt32BE(st[i], 4 * i);
    sc[20] = 0x80;
    sc.fill(0, 21, 60);
    sc.writeUInt32BE((64 + 20) * 8, 60);
    st.set(this.outer);
    sha1Compress(st, sc, 0);
    const d = this.digest;
    for (let i = 0; i < 5; i++) d.writeInt32BE(st[i], 4 * i);
    return d;
  }
}

// ---------------------------------------------------------------------------------------
// GHASH (NIST SP 800-38D §6.4) with 8-bit tables: T[j][b] = (b at octet j) · H
// ---------------------------------------------------------------------------------------

class Ghash {
  private readonly T = new Int32Array(16 * 256 * 4);
  private y0 = 0;
  private y1 = 0;
  private y2 = 0;
  private y3 = 0;
  private readonly pad = Buffer.alloc(16);

  constructor(h: Buffer) {
    const T = this.T;
    let v0 = h.readInt32BE(0);
    let v1 = h.readInt32BE(4);
    let v2 = h.readInt32BE(8);
    let v3 = h.readInt32BE(12);
    // Bit k of octet j (MSB first) is the coefficient of x^(8j+k); entry = H·x^(8j+k).
    for (let j = 0; j < 16; j++) {
      for (let k = 0; k < 8; k++) {
        const base = (j * 256 + (0x80 >> k)) * 4;
        T[base] = v0;
        T[base + 1] = v1;
        T[base + 2] = v2;
        T[base + 3] = v3;
        // Multiply by x: right shift in GCM's reflected bit order, reduce by R = 0xE1 || 0^120.
        const lsb = v3 & 1;
        v3 = (v3 >>> 1) | (v2 << 31);
        v2 = (v2 >>> 1) | (v1 << 31);
        v1 = (v1 >>> 1) | (v0 << 31);
        v0 = v0 >>> 1;
        if (lsb) v0 ^= 0xe1000000 | 0;
      }
    }
    for (let j = 0; j < 16; j++) {
      for (let b = 3; b < 256; b++) {
        if ((b & (b - 1)) === 0) continue;
        const hi = 1 << (31 - Math.clz32(b));
        const d = (j * 256 + b) * 4;
        const a = (j * 256 + hi) * 4;
        const c = (j * 256 + (b ^ hi)) * 4;
        T[d] = T[a] ^ T[c];
        T[d + 1] = T[a + 1] ^ T[c + 1];
        T[d + 2] = T[a + 2] ^ T[c + 2];
        T[d + 3] = T[a + 3] ^ T[c + 3];
      }
    }
  }

  reset(): void {
    this.y0 = this.y1 = this.y2 = this.y3 = 0;
  }

  /** Absorbs len octets, zero-padding the last partial block (SP 800-38D §7.1 step 5). */
  update(buf: Uint8Array, off: number, len: number): void {
    const full = len & ~15;
    if (full) this.blocks(buf, off, full);
    const r = len - full;
    if (r) {
      const p = this.pad;
      p.fill(0);
      for (let i = 0; i < r; i++) p[i] = buf[off + full + i];
      this.blocks(p, 0, 16);
    }
  }

  /** Final block: 64-bit bit lengths of A and C. */
  lengths(aadLen: number, ctLen: number): void {
    const p = this.pad;
    p.fill(0);
    p.writeUInt32BE(Math.floor(aadLen / 0x20000000), 0);
    p.writeUInt32BE((aadLen * 8) >>> 0, 4);
    p.writeUInt32BE(Math.floor(ctLen / 0x20000000), 8);
    p.writeUInt32BE((ctLen * 8) >>> 0, 12);
    this.blocks(p, 0, 16);
  }

  /** Writes S XOR mask (the GCM tag, SP 800-38D §7.1 step 6) into out[0..16). */
  finish(mask: Uint8Array, maskOff: number, out: Buffer): void {
    out.writeInt32BE(this.y0, 0);
    out.writeInt32BE(this.y1, 4);
    out.writeInt32BE(this.y2, 8);
    out.writeInt32BE(this.y3, 12);
    for (let i = 0; i < 16; i++) out[i] ^= mask[maskOff + i];
  }

  private blocks(buf: Uint8Array, off: number, len: number): void {
    const T = this.T;
    let y0 = this.y0;
    let y1 = this.y1;
    let y2 = this.y2;
    let y3 = this.y3;
    for (let o = off, end = off + len; o < end; o += 16) {
      const x0 = y0 ^ ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]);
      const x1 = y1 ^ ((buf[o + 4] << 24) | (buf[o + 5] << 16) | (buf[o + 6] << 8) | buf[o + 7]);
      const x2 = y2 ^ ((buf[o + 8] << 24) | (buf[o + 9] << 16) | (buf[o + 10] << 8) | buf[o + 11]);
      const x3 = y3 ^ ((buf[o + 12] << 24) | (buf[o + 13] << 16) | (buf[o + 14] << 8) | buf[o + 15]);
      let i = (x0 >>> 24) << 2;
      y0 = T[i];
      y1 = T[i + 1];
      y2 = T[i + 2];
      y3 = T[i + 3];
      i = (256 + ((x0 >>> 16) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (512 + ((x0 >>> 8) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (768 + (x0 & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (1024 + (x1 >>> 24)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (1280 + ((x1 >>> 16) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (1536 + ((x1 >>> 8) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (1792 + (x1 & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (2048 + (x2 >>> 24)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (2304 + ((x2 >>> 16) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (2560 + ((x2 >>> 8) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (2816 + (x2 & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (3072 + (x3 >>> 24)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (3328 + ((x3 >>> 16) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (3584 + ((x3 >>> 8) & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
      i = (3840 + (x3 & 255)) << 2;
      y0 ^= T[i];
      y1 ^= T[i + 1];
      y2 ^= T[i + 2];
      y3 ^= T[i + 3];
    }
    this.y0 = y0;
    this.y1 = y1;
    this.y2 = y2;
    this.y3 = y3;
  }
}

// ---------------------------------------------------------------------------------------
// Per-direction session crypto (one for SRTP, one for SRTCP)
// ---------------------------------------------------------------------------------------

class SessionCrypto {
  readonly ctr: CtrGen;
  readonly salt: Buffer;
  readonly hmac: HmacSha1 | null;
  private ghashInst: Ghash | null = null;
  private readonly hkey: Buffer | null;
  readonly tag = Buffer.alloc(16);
  /** OpenSSL context reading its IV from ctr.iv, or null (pure JS). */
  readonly native: NativeSrtpCrypto | null;

  constructor(key: Buffer, salt: Buffer, authKey: Buffer, aead: boolean, useNative: boolean) {
    this.ctr = new CtrGen(key);
    const nat = useNative ? loadNative() : null;
    this.native = nat ? new nat.SrtpCrypto(aead, key, aead ? null : authKey, this.ctr.iv) : null;
    this.salt = Buffer.from(salt);
    this.hmac = aead ? null : new HmacSha1(authKey);
    // SP 800-38D §6.4: H = E(K, 0^128); tables are built on first use (SRTCP may never run).
    this.hkey = aead ? Buffer.from(this.ctr.encryptBlock(Buffer.alloc(16))) : null;
  }

  get ghash(): Ghash {
    if (!this.ghashInst) this.ghashInst = new Ghash(this.hkey!);
    return this.ghashInst;
  }

  /**
   * RFC 3711 §4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16), written into ctr.iv.
   * `hi` is the index above 32 bits (ROC's top 16 bits for SRTP, 0 for SRTCP), `lo` the low 32.
   */
  cmIv(ssrc: number, hi: number, lo: number): void {
    const iv = this.ctr.iv;
    const s = this.salt;
    for (let i = 0; i < 14; i++) iv[i] = s[i];
    iv[14] = 0;
    iv[15] = 0;
    iv[4] ^= ssrc >>> 24;
    iv[5] ^= (ssrc >>> 16) & 0xff;
    iv[6] ^= (ssrc >>> 8) & 0xff;
    iv[7] ^= ssrc & 0xff;
    iv[8] ^= (hi >>> 8) & 0xff;
    iv[9] ^= hi & 0xff;
    iv[10] ^= lo >>> 24;
    iv[11] ^= (lo >>> 16) & 0xff;
    iv[12] ^= (lo >>> 8) & 0xff;
    iv[13] ^= lo & 0xff;
  }

  /**
   * RFC 7714 §8.1 (SRTP): IV = (0x0000 || SSRC || ROC || SEQ) XOR salt; §9.1 (SRTCP):
   * IV = (0x0000 || SSRC || 0x0000 || 0 || SRTCP index) XOR salt. Written as J0 = IV || 1
   * (SP 800-38D §7.1 step 2, 96-bit IV) into ctr.iv.
   */
  gcmIv(ssrc: number, w6: number, w10: number, rtcp: boolean): void {
    const iv = this.ctr.iv;
    const s = this.salt;
    for (let i = 0; i < 12; i++) iv[i] = s[i];
    iv[12] = 0;
    iv[13] = 0;
    iv[14] = 0;
    iv[15] = 1;
    iv[2] ^= ssrc >>> 24;
    iv[3] ^= (ssrc >>> 16) & 0xff;
    iv[4] ^= (ssrc >>> 8) & 0xff;
    iv[5] ^= ssrc & 0xff;
    if (rtcp) {
      // w10 is the 31-bit SRTCP index at octets 8..11.
      iv[8] ^= w10 >>> 24;
      iv[9] ^= (w10 >>> 16) & 0xff;
      iv[10] ^= (w10 >>> 8) & 0xff;
      iv[11] ^= w10 & 0xff;
    } else {
      // w6 = ROC at octets 6..9, w10 = SEQ at octets 10..11.
      iv[6] ^= w6 >>> 24;
      iv[7] ^= (w6 >>> 16) & 0xff;
      iv[8] ^= (w6 >>> 8) & 0xff;
      iv[9] ^= w6 & 0xff;
      iv[10] ^= (w10 >>> 8) & 0xff;
      iv[11] ^= w10 & 0xff;
    }
  }
}

function xorInto(out: Buffer, outOff: number, src: Buffer, srcOff: number, ks: Buffer, ksOff: number, n: number): void {
  let i = 0;
  const oa = out.byteOffset + outOff;
  const sa = src.byteOffset + srcOff;
  const ka = ks.byteOffset + ksOff;
  // Word-at-a-time when all three are 4-aligned (the usual case: pooled output buffers,
  // RTP headers of 4-octet multiples, datagrams at aligned offsets). Byte order does not
  // matter for XOR.
  if (n >= 64 && ((oa | sa | ka) & 3) === 0) {
    const w = n >> 2;
    const o32 = new Int32Array(out.buffer, oa, w);
    const s32 = new Int32Array(src.buffer, sa, w);
    const k32 = new Int32Array(ks.buffer, ka, w);
    for (let j = 0; j < w; j++) o32[j] = s32[j] ^ k32[j];
    i = w << 2;
  }
  for (; i < n; i++) out[outOff + i] = src[srcOff + i] ^ ks[ksOff + i];
}

/** Constant-time comparison of a[ao..ao+n) and b[bo..bo+n). */
function tagEqual(a: Buffer, ao: number, b: Buffer, bo: number, n: number): boolean {
  let d = 0;
  for (let i = 0; i < n; i++) d |= a[ao + i] ^ b[bo + i];
  return d === 0;
}

// ---------------------------------------------------------------------------------------
// Replay window (RFC 3711 §3.3.2)
// ---------------------------------------------------------------------------------------

class ReplayWindow {
  private readonly seen: Uint8Array;
  private top = -1;
  constructor(private readonly size: number) {
    this.seen = new Uint8Array(size);
  }
  check(idx: number): boolean {
    if (idx > this.top) return true;
    if (idx <= this.top - this.size) return false; // too old: left of the window
    return this.seen[idx % this.size] === 0;
  }
  commit(idx: number): void {
    if (idx > this.top) {
      const gap = this.top < 0 ? this.size : Math.min(idx - this.top, this.size);
      for (let k = 1; k <= gap; k++) this.seen[(idx - gap + k) % this.size] = 0;
      this.top = idx;
    }
    this.seen[idx % this.size] = 1;
  }
}

interface RtpStreamState {
  roc: number;
  /** s_l: the highest sequence number received (RFC 3711 §3.3.1). */
  sl: number;
  replay: ReplayWindow | null;
}

export type SrtpFailure = 'malformed' | 'auth' | 'replay' | 'none';

export interface SrtpOptions {
  /** Replay window size in packets (RFC 3711 §3.3.2, minimum 64 when on); 0 = off (default). */
  replayWindow?: number;
  /** Cap on tracked SSRCs per direction (oldest forgotten first). Default 256. */
  maxStreams?: number;
  /** Use these session keys instead of deriving them (RFC 7714 §16 vectors give session keys). */
  sessionKeys?: SrtpSessionKeys;
  /** Use the native OpenSSL addon when it is built (default true); false forces pure JS. */
  native?: boolean;
}

/**
 * One direction's SRTP/SRTCP crypto context (RFC 3711 §3.2) for all SSRCs sharing a master
 * key, as in DTLS-SRTP (RFC 5764 §4.2: one master key per direction). The constructor
 * throws RangeError on an unknown profile or wrong key/salt lengths (never echoing keys).
 */
export class SrtpContext {
  readonly params: SrtpProfileParams;
  private readonly rtp: SessionCrypto;
  private readonly rtcp: SessionCrypto;
  private readonly rx = new Map<number, RtpStreamState>();
  private readonly tx = new Map<number, RtpStreamState>();
  private readonly rtcpRx = new Map<number, ReplayWindow>();
  private readonly rtcpTx = new Map<number, number>();
  private readonly replaySize: number;
  private readonly maxStreams: number;
  /** Why the last unprotect returned null. */
  lastFailure: SrtpFailure = 'none';
  /** Packet index (ROC * 2^16 + SEQ) of the last RTP packet processed successfully. */
  lastRtpIndex = 0;
  /** ROC of the last RTP packet processed successfully. */
  lastRoc = 0;
  /** SRTCP index of the last RTCP packet processed successfully. */
  lastRtcpIndex = 0;

  constructor(profile: number, masterKey: Buffer, masterSalt: Buffer, opts: SrtpOptions = {}) {
    const p = srtpProfileParams(profile);
    if (!p) throw new RangeError('unsupported SRTP profile');
    this.params = p;
    const k = opts.sessionKeys ?? deriveSrtpSessionKeys(profile, masterKey, masterSalt);
    if (k.rtpKey.length !== p.keyLength || k.rtcpKey.length !== p.keyLength) throw new RangeError('wrong session key length');
    if (k.rtpSalt.length !== p.saltLength || k.rtcpSalt.length !== p.saltLength) throw new RangeError('wrong session salt length');
    if (!p.aead && (k.rtpAuthKey.length !== p.authKeyLength || k.rtcpAuthKey.length !== p.authKeyLength)) {
      throw new RangeError('wrong session auth key length');
    }
    const useNative = opts.native ?? true;
    this.rtp = new SessionCrypto(k.rtpKey, k.rtpSalt, k.rtpAuthKey, p.aead, useNative);
    this.rtcp = new SessionCrypto(k.rtcpKey, k.rtcpSalt, k.rtcpAuthKey, p.aead, useNative);
    const w = opts.replayWindow ?? 0;
    this.replaySize = w > 0 ? Math.min(Math.max(64, w | 0), 32768) : 0;
    this.maxStreams = Math.max(1, opts.maxStreams ?? 256);
  }

  /** RTP header length (RFC 3550 §5.1), or -1 when the header does not fit. */
  private static rtpHeaderLength(pkt: Buffer, min: number): number {
    const len = pkt.length;
    if (len < 12 + min || len > MAX_PACKET) return -1;
    const b0 = pkt[0];
    if (b0 >> 6 !== 2) return -1; // RFC 3550 §5.1: version 2
    let hl = 12 + 4 * (b0 & 0x0f);
    if (b0 & 0x10) {
      // RFC 3550 §5.3.1: extension header with length in 32-bit words.
      if (hl + 4 > len) return -1;
      hl += 4 + 4 * ((pkt[hl + 2] << 8) | pkt[hl + 3]);
    }
    return hl + min <= len ? hl : -1;
  }

  private remember<T>(map: Map<number, T>, key: number, v: T): void {
    if (map.size >= this.maxStreams && !map.has(key)) {
      const first = map.keys().next().value as number;
      map.delete(first);
    }
    map.set(key, v);
  }

  /**
   * RFC 3711 §3.3.1 / Appendix A: estimate the ROC of a received SEQ from s_l and ROC.
   * Returns v (may be ROC - 1 or ROC + 1).
   */
  private static guessRoc(st: RtpStreamState | undefined, seq: number): number {
    if (!st) return 0; // first packet of the SSRC: ROC 0, s_l := SEQ (§3.3.1)
    const { roc, sl } = st;
    let v: number;
    if (sl < 32768) v = seq - sl > 32768 ? roc - 1 : roc;
    else v = sl - 32768 > seq ? roc + 1 : roc;
    // A ROC of -1 cannot exist (the sender started at ROC 0): read it as a jump forward.
    if (v < 0) v = roc;
    return v >>> 0 === v ? v : roc;
  }

  private static commitRoc(st: RtpStreamState, v: number, seq: number): void {
    // RFC 3711 §3.3.1: update ROC and s_l only after authentication succeeded.
    if (v > st.roc) {
      st.roc = v;
      st.sl = seq;
    } else if (v === st.roc && seq > st.sl) st.sl = seq;
  }

  /**
   * Authenticates and decrypts one SRTP packet (RFC 3711 §3.3). Returns a new Buffer with
   * the RTP header and plaintext payload (tag removed), or null (see lastFailure). The
   * input is not modified.
   */
  unprotectRtp(pkt: Buffer): Buffer | null {
    const p = this.params;
    const tagLen = p.rtpTagLength;
    const hl = SrtpContext.rtpHeaderLength(pkt, tagLen);
    if (hl < 0) return this.fail('malformed');
    const seq = (pkt[2] << 8) | pkt[3];
    const ssrc = pkt.readUInt32BE(8);
    const st = this.rx.get(ssrc);
    const v = SrtpContext.guessRoc(st, seq);
    const index = v * 65536 + seq;
    if (st?.replay && !st.replay.check(index)) return this.fail('replay');
    const c = this.rtp;
    const end = pkt.length - tagLen;
    const n = end - hl;
    const out = Buffer.allocUnsafe(end);
    const nat = c.native;
    if (nat) {
      if (!p.aead) {
        // RFC 3711 §4.2 tag over header+payload || ROC, checked before §4.1.1 decryption.
        c.cmIv(ssrc, v >>> 16, (v << 16) | seq);
        if (!nat.cmOpen(pkt, end, v, end, tagLen, hl, n, true, out)) return this.fail('auth');
      } else {
        // RFC 7714 §8.1 IV, §8.2 AAD = RTP header, tag after the ciphertext.
        c.gcmIv(ssrc, v, seq, false);
        if (!nat.gcmOpen(pkt, hl, n, end, -1, out)) return this.fail('auth');
      }
    } else if (!p.aead) {
      // RFC 3711 §4.2: tag = HMAC(k_a, authenticated portion || ROC), truncated (§3.1).
      const d = c.hmac!.mac(pkt, 0, end, v);
      if (!tagEqual(d, 0, pkt, end, tagLen)) return this.fail('auth');
      for (let i = 0; i < hl; i++) out[i] = pkt[i];
      if (n > 0) {
        c.cmIv(ssrc, v >>> 16, (v << 16) | seq);
        const ks = c.ctr.run((n + 15) >> 4, 0);
        xorInto(out, hl, pkt, hl, ks, 0, n);
      }
    } else {
      // RFC 7714 §8.1 IV; §8.2 AAD = the RTP header; tag follows the ciphertext.
      c.gcmIv(ssrc, v, seq, false);
      const ks = c.ctr.run(1 + ((n + 15) >> 4), 1);
      const g = c.ghash;
      g.reset();
      g.update(pkt, 0, hl);
      g.update(pkt, hl, n);
      g.lengths(hl, n);
      g.finish(ks, 0, c.tag);
      if (!tagEqual(c.tag, 0, pkt, end, 16)) return this.fail('auth');
      for (let i = 0; i < hl; i++) out[i] = pkt[i];
      xorInto(out, hl, pkt, hl, ks, 16, n);
    }
    if (st) {
      SrtpContext.commitRoc(st, v, seq);
      st.replay?.commit(index);
    } else {
      const ns: RtpStreamState = { roc: v, sl: seq, replay: this.replaySize ? new ReplayWindow(this.replaySize) : null };
      ns.replay?.commit(index);
      this.remember(this.rx, ssrc, ns);
    }
    this.lastRoc = v;
    this.lastRtpIndex = index;
    this.lastFailure = 'none';
    return out;
  }

  /**
   * Encrypts and authenticates one RTP packet (RFC 3711 §3.3). The ROC is tracked per
   * SSRC from the sequence numbers (in-order sender), unless given. Throws RangeError on a
   * malformed packet (this side is for tests and tools).
   */
  protectRtp(pkt: Buffer, roc?: number): Buffer {
    const p = this.params;
    const hl = SrtpContext.rtpHeaderLength(pkt, 0);
    if (hl < 0) throw new RangeError('malformed RTP packet');
    const seq = (pkt[2] << 8) | pkt[3];
    const ssrc = pkt.readUInt32BE(8);
    let st = this.tx.get(ssrc);
    const v = roc ?? SrtpContext.guessRoc(st, seq);
    if (!st) {
      st = { roc: v, sl: seq, replay: null };
      this.remember(this.tx, ssrc, st);
    } else SrtpContext.commitRoc(st, v, seq);
    const c = this.rtp;
    const n = pkt.length - hl;
    const out = Buffer.alloc(pkt.length + p.rtpTagLength);
    const nat = c.native;
    if (nat) {
      if (!p.aead) {
        c.cmIv(ssrc, v >>> 16, (v << 16) | seq);
        nat.cmSeal(pkt, out, hl, n, true, pkt.length, v, pkt.length, p.rtpTagLength);
      } else {
        c.gcmIv(ssrc, v, seq, false);
        nat.gcmSeal(pkt, hl, n, -1, out);
      }
      return out;
    }
    pkt.copy(out, 0, 0, hl);
    if (!p.aead) {
      if (n > 0) {
        c.cmIv(ssrc, v >>> 16, (v << 16) | seq);
        const ks = c.ctr.run((n + 15) >> 4, 0);
        xorInto(out, hl, pkt, hl, ks, 0, n);
      }
      c.hmac!.mac(out, 0, pkt.length, v).copy(out, pkt.length, 0, p.rtpTagLength);
    } else {
      c.gcmIv(ssrc, v, seq, false);
      const ks = c.ctr.run(1 + ((n + 15) >> 4), 1);
      xorInto(out, hl, pkt, hl, ks, 16, n);
      const g = c.ghash;
      g.reset();
      g.update(out, 0, hl);
      g.update(out, hl, n);
      g.lengths(hl, n);
      g.finish(ks, 0, c.tag);
      c.tag.copy(out, pkt.length);
    }
    return out;
  }

  /**
   * Authenticates and decrypts one SRTCP packet (RFC 3711 §3.4; RFC 7714 §9 for GCM).
   * Returns header + plaintext RTCP (trailer removed), or null (see lastFailure).
   */
  unprotectRtcp(pkt: Buffer): Buffer | null {
    const p = this.params;
    const tagLen = p.rtcpTagLength;
    const len = pkt.length;
    // 8 octets of header + SSRC, the 4-octet E||index, the tag (RFC 3711 §3.4).
    if (len < 8 + 4 + tagLen || len > MAX_PACKET || pkt[0] >> 6 !== 2) return this.fail('malformed');
    const ssrc = pkt.readUInt32BE(4);
    const c = this.rtcp;
    let word: number;
    let end: number; // end of the RTCP packet (= start of the trailer)
    if (!p.aead) {
      // RFC 3711 §3.4: ... encrypted portion | E | SRTCP index | [MKI] | auth tag.
      word = pkt.readUInt32BE(len - tagLen - 4);
      end = len - tagLen - 4;
    } else {
      // RFC 7714 §9: ... ciphertext | tag (16) | E | SRTCP index.
      word = pkt.readUInt32BE(len - 4);
      end = len - 4 - 16;
    }
    const encrypted = (word & 0x80000000) !== 0;
    const index = word & 0x7fffffff;
    let rw = this.rtcpRx.get(ssrc);
    if (rw && !rw.check(index)) return this.fail('replay');
    const out = Buffer.allocUnsafe(end);
    const n = end - 8;
    const nat = c.native;
    if (nat) {
      if (!p.aead) {
        // RFC 3711 §3.4: the tag covers the packet and E||index (pkt[0..end+4)).
        c.cmIv(ssrc, 0, index);
        if (!nat.cmOpen(pkt, end + 4, -1, end + 4, tagLen, 8, n, encrypted, out)) return this.fail('auth');
      } else {
        c.gcmIv(ssrc, 0, index, true);
        // RFC 7714 §9.2 (E=1): AAD = header || E||index; §9.3 (E=0): AAD = packet || E||index.
        const ok = encrypted ? nat.gcmOpen(pkt, 8, n, end, word >>> 0, out) : nat.gcmOpen(pkt, end, 0, end, word >>> 0, out);
        if (!ok) return this.fail('auth');
      }
    } else if (!p.aead) {
      // RFC 3711 §3.4: the authenticated portion includes E||index; no ROC is appended.
      // mac() appends a 4-octet trailer: here the E||index word that follows pkt[0..end).
      const d = c.hmac!.mac(pkt, 0, end, word);
      if (!tagEqual(d, 0, pkt, end + 4, tagLen)) return this.fail('auth');
      for (let i = 0; i < 8; i++) out[i] = pkt[i];
      if (encrypted && n > 0) {
        c.cmIv(ssrc, 0, index);
        const ks = c.ctr.run((n + 15) >> 4, 0);
        xorInto(out, 8, pkt, 8, ks, 0, n);
      } else pkt.copy(out, 8, 8, end);
    } else {
      c.gcmIv(ssrc, 0, index, true);
      const g = c.ghash;
      g.reset();
      const trailer = c.tag; // reuse as a 4-octet scratch before the tag is computed
      trailer.writeUInt32BE(word >>> 0, 0);
      let ks: Buffer;
      if (encrypted) {
        // RFC 7714 §9.2 (E=1): AAD = header (8 octets) || E||index; ciphertext follows.
        ks = c.ctr.run(1 + ((n + 15) >> 4), 1);
        const aad = Buffer.allocUnsafe(12);
        pkt.copy(aad, 0, 0, 8);
        trailer.copy(aad, 8, 0, 4);
        g.update(aad, 0, 12);
        g.update(pkt, 8, n);
        g.lengths(12, n);
      } else {
        // RFC 7714 §9.3 (E=0): the whole packet and E||index are AAD; no ciphertext.
        ks = c.ctr.run(1, 1);
        const aad = Buffer.allocUnsafe(end + 4);
        pkt.copy(aad, 0, 0, end);
        trailer.copy(aad, end, 0, 4);
        g.update(aad, 0, end + 4);
        g.lengths(end + 4, 0);
      }
      g.finish(ks, 0, c.tag);
      if (!tagEqual(c.tag, 0, pkt, end, 16)) return this.fail('auth');
      for (let i = 0; i < 8; i++) out[i] = pkt[i];
      if (encrypted) xorInto(out, 8, pkt, 8, ks, 16, n);
      else pkt.copy(out, 8, 8, end);
    }
    if (this.replaySize) {
      if (!rw) {
        rw = new ReplayWindow(this.replaySize);
        this.remember(this.rtcpRx, ssrc, rw);
      }
      rw.commit(index);
    }
    this.lastRtcpIndex = index;
    this.lastFailure = 'none';
    return out;
  }

  /**
   * Protects one RTCP packet (RFC 3711 §3.4; RFC 7714 §9). The SRTCP index counts per
   * SSRC from 0 unless given; `encrypt` false sends it authenticated only (E = 0).
   */
  protectRtcp(pkt: Buffer, index?: number, encrypt = true): Buffer {
    const p = this.params;
    const len = pkt.length;
    if (len < 8 || len > MAX_PACKET || pkt[0] >> 6 !== 2) throw new RangeError('malformed RTCP packet');
    const ssrc = pkt.readUInt32BE(4);
    const idx = (index ?? this.rtcpTx.get(ssrc) ?? 0) & 0x7fffffff;
    if (!this.rtcpTx.has(ssrc) && this.rtcpTx.size >= this.maxStreams) this.rtcpTx.delete(this.rtcpTx.keys().next().value as number);
    this.rtcpTx.set(ssrc, (idx + 1) & 0x7fffffff);
    const word = ((encrypt ? 0x80000000 : 0) | idx) >>> 0;
    const c = this.rtcp;
    const n = len - 8;
    const out = Buffer.alloc(len + 4 + p.rtcpTagLength);
    const nat = c.native;
    if (nat) {
      if (!p.aead) {
        c.cmIv(ssrc, 0, idx);
        out.writeUInt32BE(word, len);
        nat.cmSeal(pkt, out, 8, n, encrypt, len + 4, -1, len + 4, p.rtcpTagLength);
      } else {
        c.gcmIv(ssrc, 0, idx, true);
        if (encrypt) nat.gcmSeal(pkt, 8, n, word, out);
        else nat.gcmSeal(pkt, len, 0, word, out);
        out.writeUInt32BE(word, len + 16);
      }
      return out;
    }
    pkt.copy(out, 0, 0, 8);
    if (!p.aead) {
      if (encrypt && n > 0) {
        c.cmIv(ssrc, 0, idx);
        const ks = c.ctr.run((n + 15) >> 4, 0);
        xorInto(out, 8, pkt, 8, ks, 0, n);
      } else pkt.copy(out, 8, 8);
      out.writeUInt32BE(word, len);
      c.hmac!.mac(out, 0, len, word).copy(out, len + 4, 0, p.rtcpTagLength);
    } else {
      c.gcmIv(ssrc, 0, idx, true);
      const g = c.ghash;
      g.reset();
      const aad = Buffer.alloc(encrypt ? 12 : len + 4);
      let ks: Buffer;
      if (encrypt) {
        ks = c.ctr.run(1 + ((n + 15) >> 4), 1);
        pkt.copy(aad, 0, 0, 8);
        aad.writeUInt32BE(word, 8);
        xorInto(out, 8, pkt, 8, ks, 16, n);
        g.update(aad, 0, 12);
        g.update(out, 8, n);
        g.lengths(12, n);
      } else {
        ks = c.ctr.run(1, 1);
        pkt.copy(aad, 0, 0, len);
        aad.writeUInt32BE(word, len);
        pkt.copy(out, 8, 8);
        g.update(aad, 0, len + 4);
        g.lengths(len + 4, 0);
      }
      g.finish(ks, 0, c.tag);
      c.tag.copy(out, len);
      out.writeUInt32BE(word, len + 16);
    }
    return out;
  }

  /** Forgets all per-SSRC state. */
  reset(): void {
    this.rx.clear();
    this.tx.clear();
    this.rtcpRx.clear();
    this.rtcpTx.clear();
  }

  /** Number of SSRCs with receive state (bounded by maxStreams). */
  get streamCount(): number {
    return this.rx.size;
  }

  private fail(why: SrtpFailure): null {
    this.lastFailure = why;
    return null;
  }
}
