/*
 * gatehouse_native: reusable SRTP cipher contexts over the OpenSSL that the node binary
 * ships and exports to addons (nothing extra is linked). Plain N-API (node_api.h).
 *
 * One SrtpCrypto object per session key set (RFC 3711 §4.3.2: one for SRTP, one for
 * SRTCP). The key schedule is expanded ONCE; per packet the cipher context is only
 * re-initialised with a new IV (EVP_*Init_ex with NULL cipher and key).
 *
 *   AEAD (RFC 7714): AES-128/256-GCM, 12-octet IV, 16-octet tag.
 *   AES-CM (RFC 3711 §4.1.1): AES-128-CTR keystream XOR; HMAC-SHA1 (RFC 2104, §4.2) from
 *   precomputed inner/outer SHA-1 states.
 *
 * The IV is read from a 16-octet scratch Buffer given to the constructor (JS writes it
 * per packet; this saves passing a Buffer per call). All offsets/lengths are checked
 * against the Buffers' lengths; a bad call throws RangeError (a programming error: the
 * JS caller computes them), never reads or writes out of bounds.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#define NAPI_VERSION 8
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "dfa.h"
#include "prf.h"

typedef struct {
  int aead;
  EVP_CIPHER_CTX *enc; /* GCM seal, or AES-CTR (CTR encryption == decryption) */
  EVP_CIPHER_CTX *dec; /* GCM open; NULL for AES-CM */
  SHA_CTX inner;       /* SHA-1 state after absorbing K XOR ipad (RFC 2104 §2) */
  SHA_CTX outer;       /* ... after K XOR opad */
  napi_ref ivRef;
  uint8_t *iv; /* 16 octets, kept alive by ivRef */
} SrtpCrypto;

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != napi_ok) {                                          \
      napi_throw_error(env, NULL, "gatehouse_native: N-API failure"); \
      return NULL;                                                    \
    }                                                                 \
  } while (0)

static napi_value throw_range(napi_env env, const char *msg) {
  napi_throw_range_error(env, NULL, msg);
  return NULL;
}

static int get_buf(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return 0;
  void *d;
  if (napi_get_buffer_info(env, v, &d, len) != napi_ok) return 0;
  *data = (uint8_t *)d;
  return 1;
}

/* Non-negative integer argument (<= 2^31), or -1 when not a number in range. */
static int64_t get_int(napi_env env, napi_value v) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return -1;
  if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int64_t)d) return -1;
  return (int64_t)d;
}

/* Optional 32-bit trailer word: -1 (or any negative) = none. Returns 1 and sets *w when present. */
static int get_word(napi_env env, napi_value v, uint32_t *w, int *ok) {
  double d;
  *ok = 1;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    *ok = 0;
    return 0;
  }
  if (d < 0) return 0;
  if (d > 4294967295.0 || d != (double)(int64_t)d) {
    *ok = 0;
    return 0;
  }
  *w = (uint32_t)d;
  return 1;
}

static void put_be32(uint8_t *p, uint32_t w) {
  p[0] = (uint8_t)(w >> 24);
  p[1] = (uint8_t)(w >> 16);
  p[2] = (uint8_t)(w >> 8);
  p[3] = (uint8_t)w;
}

static void crypto_free(SrtpCrypto *c) {
  if (!c) return;
  if (c->enc) EVP_CIPHER_CTX_free(c->enc);
  if (c->dec) EVP_CIPHER_CTX_free(c->dec);
  OPENSSL_cleanse(&c->inner, sizeof c->inner);
  OPENSSL_cleanse(&c->outer, sizeof c->outer);
  free(c);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  SrtpCrypto *c = (SrtpCrypto *)data;
  if (c->ivRef) napi_delete_reference(env, c->ivRef);
  crypto_free(c);
}

/* new SrtpCrypto(aead: boolean, key: Buffer(16|32), authKey: Buffer|null, iv: Buffer(>=16)) */
static napi_value ctor(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  if (argc < 4) return throw_range(env, "SrtpCrypto: 4 arguments expected");
  bool aead;
  if (napi_get_value_bool(env, argv[0], &aead) != napi_ok) return throw_range(env, "SrtpCrypto: aead must be boolean");
  uint8_t *key, *iv, *akey = NULL;
  size_t keyLen, ivLen, akeyLen = 0;
  if (!get_buf(env, argv[1], &key, &keyLen) || (keyLen != 16 && keyLen != 32)) return throw_range(env, "SrtpCrypto: key must be 16 or 32 octets");
  if (!get_buf(env, argv[3], &iv, &ivLen) || ivLen < 16) return throw_range(env, "SrtpCrypto: iv scratch must be >= 16 octets");
  if (!aead) {
    /* RFC 2104 §2: keys longer than the 64-octet block would be hashed first; SRTP's are 20. */
    if (!get_buf(env, argv[2], &akey, &akeyLen) || akeyLen > 64) return throw_range(env, "SrtpCrypto: auth key must be <= 64 octets");
  }
  SrtpCrypto *c = (SrtpCrypto *)calloc(1, sizeof *c);
  if (!c) return throw_range(env, "SrtpCrypto: out of memory");
  c->aead = aead;
  int ok = 1;
  if (aead) {
    const EVP_CIPHER *cipher = keyLen == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    c->enc = EVP_CIPHER_CTX_new();
    c->dec = EVP_CIPHER_CTX_new();
    /* Key set once; the default GCM IV length is 12 octets (RFC 7714 §8.1). */
    ok = c->enc && c->dec && EVP_EncryptInit_ex(c->enc, cipher, NULL, key, NULL) == 1 &&
         EVP_DecryptInit_ex(c->dec, cipher, NULL, key, NULL) == 1;
  } else {
    const EVP_CIPHER *cipher = keyLen == 16 ? EVP_aes_128_ctr() : EVP_aes_256_ctr();
    c->enc = EVP_CIPHER_CTX_new();
    ok = c->enc && EVP_EncryptInit_ex(c->enc, cipher, NULL, key, NULL) == 1;
    if (ok) {
      uint8_t pad[64];
      memset(pad, 0, sizeof pad);
      memcpy(pad, akey, akeyLen);
      for (int i = 0; i < 64; i++) pad[i] ^= 0x36;
      ok = SHA1_Init(&c->inner) == 1 && SHA1_Update(&c->inner, pad, 64) == 1;
      for (int i = 0; i < 64; i++) pad[i] ^= 0x36 ^ 0x5c;
      ok = ok && SHA1_Init(&c->outer) == 1 && SHA1_Update(&c->outer, pad, 64) == 1;
      OPENSSL_cleanse(pad, sizeof pad);
    }
  }
  if (!ok) {
    crypto_free(c);
    return throw_range(env, "SrtpCrypto: OpenSSL initialisation failed");
  }
  c->iv = iv;
  if (napi_create_reference(env, argv[3], 1, &c->ivRef) != napi_ok ||
      napi_wrap(env, self, c, finalize, NULL, NULL) != napi_ok) {
    if (c->ivRef) napi_delete_reference(env, c->ivRef);
    crypto_free(c);
    napi_throw_error(env, NULL, "SrtpCrypto: wrap failed");
    return NULL;
  }
  return self;
}

static SrtpCrypto *unwrap(napi_env env, napi_value self, int aead) {
  void *p = NULL;
  if (napi_unwrap(env, self, &p) != napi_ok || !p) {
    napi_throw_type_error(env, NULL, "SrtpCrypto: bad receiver");
    return NULL;
  }
  SrtpCrypto *c = (SrtpCrypto *)p;
  if (c->aead != aead) {
    napi_throw_type_error(env, NULL, aead ? "SrtpCrypto: not an AEAD context" : "SrtpCrypto: not an AES-CM context");
    return NULL;
  }
  return c;
}

static napi_value make_bool(napi_env env, int v) {
  napi_value r;
  if (napi_get_boolean(env, v ? true : false, &r) != napi_ok) return NULL;
  return r;
}

/* HMAC-SHA1(k_a, a[0..alen) || [BE32 word]) -> md (20 octets). */
static void hmac_sha1(SrtpCrypto *c, const uint8_t *a, size_t alen, int hasWord, uint32_t word, uint8_t md[20]) {
  SHA_CTX s = c->inner;
  SHA1_Update(&s, a, alen);
  if (hasWord) {
    uint8_t w[4];
    put_be32(w, word);
    SHA1_Update(&s, w, 4);
  }
  SHA1_Final(md, &s);
  s = c->outer;
  SHA1_Update(&s, md, 20);
  SHA1_Final(md, &s);
  OPENSSL_cleanse(&s, sizeof s);
}

/* out[0..n) = in[0..n) XOR AES-CTR keystream from the 16-octet IV (RFC 3711 §4.1.1). */
static int ctr_xor(SrtpCrypto *c, const uint8_t *in, uint8_t *out, size_t n) {
  int outl = 0;
  if (n == 0) return 1;
  if (EVP_EncryptInit_ex(c->enc, NULL, NULL, NULL, c->iv) != 1) return 0;
  return EVP_EncryptUpdate(c->enc, out, &outl, in, (int)n) == 1 && (size_t)outl == n;
}

/*
 * One AES-GCM open on the keyed context (new IV per packet, RFC 7714 §8/§9 and DTLS
 * RFC 5288 §3: no key re-expansion): AAD = aad[0..aadLen) || extra[0..extraLen), C =
 * ct[0..ctLen) into out, tag = tag[0..16). 1 when the tag verifies
 * (EVP_DecryptFinal_ex compares it in constant time, CRYPTO_memcmp); else 0 and
 * out[0..ctLen) is zeroed, so no unauthenticated plaintext is left behind.
 */
static int gcm_decrypt(SrtpCrypto *c, const uint8_t *aad, size_t aadLen, const uint8_t *extra, size_t extraLen, const uint8_t *ct,
                       size_t ctLen, const uint8_t *tag, uint8_t *out) {
  EVP_CIPHER_CTX *x = c->dec;
  int outl = 0, ok;
  uint8_t fin[16];
  ok = EVP_DecryptInit_ex(x, NULL, NULL, NULL, c->iv) == 1;
  ok = ok && (aadLen == 0 || EVP_DecryptUpdate(x, NULL, &outl, aad, (int)aadLen) == 1);
  ok = ok && (extraLen == 0 || EVP_DecryptUpdate(x, NULL, &outl, extra, (int)extraLen) == 1);
  ok = ok && (ctLen == 0 || (EVP_DecryptUpdate(x, out, &outl, ct, (int)ctLen) == 1 && (size_t)outl == ctLen));
  ok = ok && EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) == 1;
  ok = ok && EVP_DecryptFinal_ex(x, fin, &outl) == 1;
  if (!ok && ctLen) memset(out, 0, ctLen);
  return ok;
}

/*
 * gcmOpen(src, aadLen, ctLen, tagOff, extraWord, out) -> boolean
 * AAD = src[0..aadLen) || [BE32 extraWord when >= 0]; C = src[aadLen..aadLen+ctLen);
 * tag = src[tagOff..tagOff+16). On success out[0..aadLen) = src[0..aadLen) and
 * out[aadLen..aadLen+ctLen) = plaintext. On tag failure out is zeroed over that range
 * (no unauthenticated plaintext is left behind) and false is returned.
 */
static napi_value gcm_open(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  SrtpCrypto *c = unwrap(env, self, 1);
  if (!c) return NULL;
  if (argc < 6) return throw_range(env, "gcmOpen: 6 arguments expected");
  uint8_t *src, *out;
  size_t srcLen, outLen;
  if (!get_buf(env, argv[0], &src, &srcLen) || !get_buf(env, argv[5], &out, &outLen)) return throw_range(env, "gcmOpen: buffers expected");
  int64_t aadLen = get_int(env, argv[1]), ctLen = get_int(env, argv[2]), tagOff = get_int(env, argv[3]);
  uint32_t word = 0;
  int wok;
  int hasWord = get_word(env, argv[4], &word, &wok);
  if (aadLen < 0 || ctLen < 0 || tagOff < 0 || !wok || (uint64_t)(aadLen + ctLen) > srcLen || (uint64_t)(tagOff + 16) > srcLen ||
      (uint64_t)(aadLen + ctLen) > outLen)
    return throw_range(env, "gcmOpen: bad offsets");
  uint8_t w[4];
  put_be32(w, word);
  if (!gcm_decrypt(c, src, (size_t)aadLen, w, hasWord ? 4 : 0, src + aadLen, (size_t)ctLen, src + tagOff, out + aadLen))
    return make_bool(env, 0);
  if (aadLen) memmove(out, src, (size_t)aadLen);
  return make_bool(env, 1);
}

/*
 * gcmOpenAt(aad, src, ctOff, ctLen, out) -> boolean
 * A record decrypted where it lies (DTLS, RFC 5288 §3 / RFC 9147 §4): AAD = aad (whole
 * buffer), C = src[ctOff..ctOff+ctLen), tag = the 16 octets after C; on success
 * out[0..ctLen) = plaintext. No copy of the ciphertext is made on either side. On tag
 * failure out[0..ctLen) is zeroed (no unauthenticated plaintext left) and false returned.
 */
static napi_value gcm_open_at(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  SrtpCrypto *c = unwrap(env, self, 1);
  if (!c) return NULL;
  if (argc < 5) return throw_range(env, "gcmOpenAt: 5 arguments expected");
  uint8_t *aad, *src, *out;
  size_t aadLen, srcLen, outLen;
  if (!get_buf(env, argv[0], &aad, &aadLen) || !get_buf(env, argv[1], &src, &srcLen) || !get_buf(env, argv[4], &out, &outLen))
    return throw_range(env, "gcmOpenAt: buffers expected");
  int64_t ctOff = get_int(env, argv[2]), ctLen = get_int(env, argv[3]);
  if (ctOff < 0 || ctLen < 0 || (uint64_t)(ctOff + ctLen + 16) > srcLen || (uint64_t)ctLen > outLen || aadLen > INT32_MAX)
    return throw_range(env, "gcmOpenAt: bad offsets");
  return make_bool(env, gcm_decrypt(c, aad, aadLen, NULL, 0, src + ctOff, (size_t)ctLen, src + ctOff + ctLen, out));
}

/*
 * gcmSeal(src, aadLen, ctLen, extraWord, out) -> undefined
 * out[0..aadLen) = src[0..aadLen); out[aadLen..+ctLen) = ciphertext; out[aadLen+ctLen..+16) = tag.
 */
static napi_value gcm_seal(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  SrtpCrypto *c = unwrap(env, self, 1);
  if (!c) return NULL;
  if (argc < 5) return throw_range(env, "gcmSeal: 5 arguments expected");
  uint8_t *src, *out;
  size_t srcLen, outLen;
  if (!get_buf(env, argv[0], &src, &srcLen) || !get_buf(env, argv[4], &out, &outLen)) return throw_range(env, "gcmSeal: buffers expected");
  int64_t aadLen = get_int(env, argv[1]), ctLen = get_int(env, argv[2]);
  uint32_t word = 0;
  int wok;
  int hasWord = get_word(env, argv[3], &word, &wok);
  if (aadLen < 0 || ctLen < 0 || !wok || (uint64_t)(aadLen + ctLen) > srcLen || (uint64_t)(aadLen + ctLen + 16) > outLen)
    return throw_range(env, "gcmSeal: bad offsets");
  EVP_CIPHER_CTX *x = c->enc;
  int outl = 0, ok;
  uint8_t w[4], fin[16];
  put_be32(w, word);
  ok = EVP_EncryptInit_ex(x, NULL, NULL, NULL, c->iv) == 1;
  ok = ok && (aadLen == 0 || EVP_EncryptUpdate(x, NULL, &outl, src, (int)aadLen) == 1);
  ok = ok && (!hasWord || EVP_EncryptUpdate(x, NULL, &outl, w, 4) == 1);
  ok = ok && (ctLen == 0 || (EVP_EncryptUpdate(x, out + aadLen, &outl, src + aadLen, (int)ctLen) == 1 && outl == ctLen));
  ok = ok && EVP_EncryptFinal_ex(x, fin, &outl) == 1;
  ok = ok && EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, 16, out + aadLen + ctLen) == 1;
  if (!ok) {
    napi_throw_error(env, NULL, "gcmSeal: OpenSSL failure");
    return NULL;
  }
  if (aadLen && out != src) memmove(out, src, (size_t)aadLen);
  return NULL;
}

/*
 * cmOpen(src, authLen, trailer, tagOff, tagLen, hdrLen, n, decrypt, out) -> boolean
 * RFC 3711 §3.3/§3.4: tag = HMAC-SHA1(src[0..authLen) || [BE32 trailer when >= 0]) truncated
 * to tagLen, compared in constant time with src[tagOff..). Only when it matches:
 * out[0..hdrLen) = src[0..hdrLen) and out[hdrLen..hdrLen+n) = src XOR keystream (decrypt)
 * or a copy (decrypt false, SRTCP E=0).
 */
static napi_value cm_open(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  SrtpCrypto *c = unwrap(env, self, 0);
  if (!c) return NULL;
  if (argc < 9) return throw_range(env, "cmOpen: 9 arguments expected");
  uint8_t *src, *out;
  size_t srcLen, outLen;
  if (!get_buf(env, argv[0], &src, &srcLen) || !get_buf(env, argv[8], &out, &outLen)) return throw_range(env, "cmOpen: buffers expected");
  int64_t authLen = get_int(env, argv[1]), tagOff = get_int(env, argv[3]), tagLen = get_int(env, argv[4]),
          hdrLen = get_int(env, argv[5]), n = get_int(env, argv[6]);
  uint32_t word = 0;
  int wok;
  int hasWord = get_word(env, argv[2], &word, &wok);
  bool decrypt;
  if (napi_get_value_bool(env, argv[7], &decrypt) != napi_ok) return throw_range(env, "cmOpen: decrypt must be boolean");
  if (authLen < 0 || tagOff < 0 || tagLen < 1 || tagLen > 20 || hdrLen < 0 || n < 0 || !wok || (uint64_t)authLen > srcLen ||
      (uint64_t)(tagOff + tagLen) > srcLen || (uint64_t)(hdrLen + n) > srcLen || (uint64_t)(hdrLen + n) > outLen)
    return throw_range(env, "cmOpen: bad offsets");
  uint8_t md[20];
  hmac_sha1(c, src, (size_t)authLen, hasWord, word, md);
  int eq = CRYPTO_memcmp(md, src + tagOff, (size_t)tagLen) == 0;
  OPENSSL_cleanse(md, sizeof md);
  if (!eq) return make_bool(env, 0);
  if (hdrLen) memmove(out, src, (size_t)hdrLen);
  if (decrypt) {
    if (!ctr_xor(c, src + hdrLen, out + hdrLen, (size_t)n)) {
      napi_throw_error(env, NULL, "cmOpen: OpenSSL failure");
      return NULL;
    }
  } else if (n) memmove(out + hdrLen, src + hdrLen, (size_t)n);
  return make_bool(env, 1);
}

/*
 * cmSeal(src, out, hdrLen, n, encrypt, authLen, trailer, tagOff, tagLen) -> undefined
 * out[0..hdrLen) = src[0..hdrLen); out[hdrLen..+n) = src XOR keystream (or a copy); then
 * out[tagOff..+tagLen) = HMAC-SHA1(out[0..authLen) || [BE32 trailer]) truncated. Octets of
 * out in [hdrLen+n, authLen) are the caller's (e.g. the SRTCP E||index word).
 */
static napi_value cm_seal(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  SrtpCrypto *c = unwrap(env, self, 0);
  if (!c) return NULL;
  if (argc < 9) return throw_range(env, "cmSeal: 9 arguments expected");
  uint8_t *src, *out;
  size_t srcLen, outLen;
  if (!get_buf(env, argv[0], &src, &srcLen) || !get_buf(env, argv[1], &out, &outLen)) return throw_range(env, "cmSeal: buffers expected");
  int64_t hdrLen = get_int(env, argv[2]), n = get_int(env, argv[3]), authLen = get_int(env, argv[5]), tagOff = get_int(env, argv[7]),
          tagLen = get_int(env, argv[8]);
  bool encrypt;
  if (napi_get_value_bool(env, argv[4], &encrypt) != napi_ok) return throw_range(env, "cmSeal: encrypt must be boolean");
  uint32_t word = 0;
  int wok;
  int hasWord = get_word(env, argv[6], &word, &wok);
  if (hdrLen < 0 || n < 0 || authLen < 0 || tagOff < 0 || tagLen < 1 || tagLen > 20 || !wok || (uint64_t)(hdrLen + n) > srcLen ||
      (uint64_t)(hdrLen + n) > outLen || (uint64_t)authLen > outLen || (uint64_t)(tagOff + tagLen) > outLen)
    return throw_range(env, "cmSeal: bad offsets");
  if (hdrLen && out != src) memmove(out, src, (size_t)hdrLen);
  if (encrypt) {
    if (!ctr_xor(c, src + hdrLen, out + hdrLen, (size_t)n)) {
      napi_throw_error(env, NULL, "cmSeal: OpenSSL failure");
      return NULL;
    }
  } else if (n && out != src) memmove(out + hdrLen, src + hdrLen, (size_t)n);
  uint8_t md[20];
  hmac_sha1(c, out, (size_t)authLen, hasWord, word, md);
  memcpy(out + tagOff, md, (size_t)tagLen);
  OPENSSL_cleanse(md, sizeof md);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"gcmOpen", NULL, gcm_open, NULL, NULL, NULL, napi_default, NULL},
      {"gcmOpenAt", NULL, gcm_open_at, NULL, NULL, NULL, napi_default, NULL},
      {"gcmSeal", NULL, gcm_seal, NULL, NULL, NULL, napi_default, NULL},
      {"cmOpen", NULL, cm_open, NULL, NULL, NULL, napi_default, NULL},
      {"cmSeal", NULL, cm_seal, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_value cls, ver;
  CHECK(napi_define_class(env, "SrtpCrypto", NAPI_AUTO_LENGTH, ctor, NULL, sizeof props / sizeof props[0], props, &cls));
  CHECK(napi_set_named_property(env, exports, "SrtpCrypto", cls));
  CHECK(napi_create_string_utf8(env, OpenSSL_version(OPENSSL_VERSION), NAPI_AUTO_LENGTH, &ver));
  CHECK(napi_set_named_property(env, exports, "openssl", ver));
  if (!crc32c_register(env, exports) || !dfa_register(env, exports) || !prf_register(env, exports)) {
    napi_throw_error(env, NULL, "gatehouse_native: N-API failure");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
