/**
 * Optional native SRTP crypto (native/srtp_openssl.c, built by
 * `node-gyp rebuild -C native --nodedir=/usr` into native/build/Release/): reusable
 * OpenSSL cipher contexts from the OpenSSL that node itself ships, so a packet costs one
 * JS→C call instead of several node:crypto calls (which also cannot re-IV a GCM context).
 * Everything works without it: loadNative() returns null when the addon is missing, fails
 * to load, or disableNative() was called (the CLI does for GATEHOUSE_NATIVE=0), and src/wire/srtp.ts then uses its pure-JS path.
 */
import { createRequire } from 'node:module';

/**
 * One session key set (RFC 3711 §4.3.1; §4.3.2 for SRTCP). The IV is read from the 16-octet scratch Buffer
 * passed to the constructor: callers write the per-packet IV there first (AES-CM: the full
 * 16-octet counter block of RFC 3711 §4.1.1; GCM: the 12-octet IV of RFC 7714 §8.1/§9.1 in
 * octets 0..11). A trailer/extra word of -1 means "none". Bad offsets throw RangeError.
 */
export interface NativeSrtpCrypto {
  /**
   * AES-GCM open: AAD = src[0..aadLen) || [BE32 extraWord], C = src[aadLen..+ctLen), tag at
   * src[tagOff..+16). True: out[0..aadLen) = header, out[aadLen..+ctLen) = plaintext.
   * False (tag mismatch): out's plaintext range is zeroed.
   */
  gcmOpen(src: Buffer, aadLen: number, ctLen: number, tagOff: number, extraWord: number, out: Buffer): boolean;
  /** AES-GCM open in place of reading: AAD = aad, C = src[ctOff..+ctLen), tag the 16 octets after; plaintext to out[0..ctLen). */
  gcmOpenAt(aad: Buffer, src: Buffer, ctOff: number, ctLen: number, out: Buffer): boolean;
  /** AES-GCM seal: out = src[0..aadLen) || ciphertext || tag (16). */
  gcmSeal(src: Buffer, aadLen: number, ctLen: number, extraWord: number, out: Buffer): void;
  /**
   * AES-CM + HMAC-SHA1 open: checks HMAC(src[0..authLen) || [BE32 trailer]) truncated to
   * tagLen against src[tagOff..) in constant time; only then out[0..hdrLen) = header and
   * out[hdrLen..+n) = decrypted (or copied when decrypt is false).
   */
  cmOpen(
    src: Buffer,
    authLen: number,
    trailer: number,
    tagOff: number,
    tagLen: number,
    hdrLen: number,
    n: number,
    decrypt: boolean,
    out: Buffer,
  ): boolean;
  /** AES-CM + HMAC-SHA1 seal: header copy, encrypt (or copy) n octets, tag = HMAC(out[0..authLen) || [trailer]) at out[tagOff..+tagLen). */
  cmSeal(
    src: Buffer,
    out: Buffer,
    hdrLen: number,
    n: number,
    encrypt: boolean,
    authLen: number,
    trailer: number,
    tagOff: number,
    tagLen: number,
  ): void;
}

export interface NativeCrypto {
  /** aead: AES-GCM (key 16/32) else AES-CTR + HMAC-SHA1 (authKey required). */
  SrtpCrypto: new (aead: boolean, key: Buffer, authKey: Buffer | null, iv: Buffer) => NativeSrtpCrypto;
  /** OpenSSL version string of the library the addon runs on (node's own). */
  openssl: string;
  /**
   * The SCTP checksum of a packet (RFC 9260 §6.8, App. B: CRC32c with octets 8..11 taken
   * as zeros), as an unsigned 32-bit number; native/crc32c.c. Absent in older builds.
   */
  sctpChecksum?: (pkt: Buffer) => number;
  /**
   * The TLS 1.2 PRF (RFC 5246 §5, P_SHA256 or P_SHA384) of secret over labelAndSeed,
   * filling out; native/prf.c. Absent in older builds.
   */
  tls12Prf?: (sha384: boolean, secret: Buffer, labelAndSeed: Buffer, out: Buffer) => void;
  /**
   * One pass of a dense DFA (src/policy/matcher.ts) over data; native/dfa.c. Returns how
   * many distinct accepting states it wrote into hits, or -1 when hits is too small.
   */
  dfaScan?: (next: Int32Array, accepts: Uint8Array, seen: Uint8Array, data: Uint8Array, fold: boolean, hits: Int32Array) => number;
}

const ADDON = 'Release/gatehouse_native.node';
let cached: NativeCrypto | null | undefined;

function tryLoad(): NativeCrypto | null {
  const req = createRequire(import.meta.url);
  // src/wire/native.ts (tsx) and dist/src/wire/native.js (tsc build) live 2–3 levels below
  // the repository root; `node-gyp rebuild -C native` builds into native/build/Release
  // (binding.gyp sits in native/ so that npm never compiles it implicitly on install).
  for (const rel of ['../../native/build/', '../../../native/build/', '../../build/', '../../../build/']) {
    try {
      const m = req(rel + ADDON) as Partial<NativeCrypto>;
      if (typeof m?.SrtpCrypto === 'function' && typeof m.openssl === 'string') return m as NativeCrypto;
    } catch {
      // missing or unloadable: try the next location, then fall back to pure JS
    }
  }
  return null;
}

/**
 * Forces the pure-JS paths from now on (the CLI calls it for GATEHOUSE_NATIVE=0; modules
 * read no environment themselves). Contexts created earlier keep what they have.
 */
export function disableNative(): void {
  cached = null;
}

/** The native addon, or null (pure-JS fallback). Loaded once. */
export function loadNative(): NativeCrypto | null {
  if (cached === undefined) cached = tryLoad();
  return cached;
}

/**
 * AES-GCM open with one keyed OpenSSL context reused across records (DTLS 1.2 RFC 5288,
 * DTLS 1.3 RFC 9147 §4): only the IV is reset per record, instead of a new decipher
 * object (and key expansion) per record. The record is read where it lies (no copy of
 * the ciphertext); the plaintext is a fresh Buffer the caller may keep.
 */
export class GcmOpener {
  /** The context reads its IV from this buffer, given at construction. */
  private constructor(
    private readonly ctx: NativeSrtpCrypto,
    private readonly iv: Buffer,
  ) {}

  /** null when the addon is not built (callers keep their pure-JS path). */
  static create(key: Buffer): GcmOpener | null {
    const n = loadNative();
    if (!n || (key.length !== 16 && key.length !== 32)) return null;
    const iv = Buffer.alloc(16);
    return new GcmOpener(new n.SrtpCrypto(true, key, null, iv), iv);
  }

  /**
   * A record as it lies in its datagram: ciphertext src[ctOff..+ctLen) followed by its
   * 16-octet tag. Nothing is copied; the plaintext is a fresh Buffer the caller may keep.
   */
  openAt(nonce: Buffer, aad: Buffer, src: Buffer, ctOff: number, ctLen: number): Buffer | null {
    if (nonce.length !== 12 || ctOff < 0 || ctLen < 0 || ctOff + ctLen + 16 > src.length) return null;
    nonce.copy(this.iv, 0);
    const out = Buffer.allocUnsafe(ctLen);
    return this.ctx.gcmOpenAt(aad, src, ctOff, ctLen, out) ? out : null;
  }

  /**
   * A DTLS 1.2 AES-GCM record as it lies in its datagram (RFC 5288 §3): the 8-octet
   * nonce_explicit at src[ctOff-8..ctOff), then the ciphertext and its tag. The nonce,
   * salt(4) || nonce_explicit(8), is written straight into the context's IV (no copies).
   * The plaintext is a fresh Buffer, or a view of `into` when given and large enough (the
   * caller's to reuse: no allocation per record).
   */
  openExplicitAt(salt: Buffer, aad: Buffer, src: Buffer, ctOff: number, ctLen: number, into?: Buffer): Buffer | null {
    if (salt.length !== 4 || ctOff < 8 || ctLen < 0 || ctOff + ctLen + 16 > src.length) return null;
    const iv = this.iv;
    iv[0] = salt[0]!;
    iv[1] = salt[1]!;
    iv[2] = salt[2]!;
    iv[3] = salt[3]!;
    for (let i = 0; i < 8; i++) iv[4 + i] = src[ctOff - 8 + i]!;
    const out = into && into.length >= ctLen ? into.subarray(0, ctLen) : Buffer.allocUnsafe(ctLen);
    return this.ctx.gcmOpenAt(aad, src, ctOff, ctLen, out) ? out : null;
  }
}
