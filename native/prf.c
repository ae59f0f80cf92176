/*
 * tls12Prf(sha384, secret, labelAndSeed, out) -> undefined
 *
 * The TLS 1.2 PRF (RFC 5246 §5): P_hash(secret, seed) = HMAC(secret, A(1) || seed) ||
 * HMAC(secret, A(2) || seed) || ..., A(0) = seed, A(i) = HMAC(secret, A(i-1)); here
 * seed = label || seed as the caller concatenated them, and the output fills `out`.
 * HMAC (RFC 2104 §2) over SHA-256 or SHA-384 (FIPS 180-4) with the padded key's inner and
 * outer states computed once and copied per block: the key derivation of every DTLS 1.2
 * association seen (key block, SRTP exporter) without an OpenSSL HMAC object (and its
 * algorithm lookup) per block. Uses the digest functions of the OpenSSL node ships.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#define NAPI_VERSION 8
#include "prf.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  int is384;
  SHA256_CTX s256;
  SHA512_CTX s512;
} Hash;

static void h_init(Hash *h, int is384) {
  h->is384 = is384;
  if (is384)
    SHA384_Init(&h->s512);
  else
    SHA256_Init(&h->s256);
}

static void h_update(Hash *h, const uint8_t *p, size_t n) {
  if (h->is384)
    SHA384_Update(&h->s512, p, n);
  else
    SHA256_Update(&h->s256, p, n);
}

static void h_final(Hash *h, uint8_t *md) {
  if (h->is384)
    SHA384_Final(md, &h->s512);
  else
    SHA256_Final(md, &h->s256);
}

/* HMAC(K, m1 || m2) from the states after K^ipad and K^opad (RFC 2104 §2). */
static void hmac2(const Hash *inner, const Hash *outer, const uint8_t *m1, size_t n1, const uint8_t *m2, size_t n2, size_t mdLen,
                  uint8_t *md) {
  Hash h = *inner;
  uint8_t t[48];
  h_update(&h, m1, n1);
  if (n2) h_update(&h, m2, n2);
  h_final(&h, t);
  h = *outer;
  h_update(&h, t, mdLen);
  h_final(&h, md);
  OPENSSL_cleanse(t, sizeof t);
  OPENSSL_cleanse(&h, sizeof h);
}

static int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is = false;
  void *d = NULL;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is || napi_get_buffer_info(env, v, &d, len) != napi_ok) return 0;
  *data = d;
  return 1;
}

static napi_value tls12_prf(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  bool is384 = false;
  uint8_t *secret, *seed, *out;
  size_t secretLen, seedLen, outLen;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || napi_get_value_bool(env, argv[0], &is384) != napi_ok ||
      !get_buffer(env, argv[1], &secret, &secretLen) || !get_buffer(env, argv[2], &seed, &seedLen) ||
      !get_buffer(env, argv[3], &out, &outLen)) {
    napi_throw_type_error(env, NULL, "tls12Prf: (boolean, Buffer, Buffer, Buffer) expected");
    return NULL;
  }
  const size_t block = is384 ? 128 : 64, mdLen = is384 ? 48 : 32;
  uint8_t key[128], pad[128], a[48], md[48];
  memset(key, 0, sizeof key);
  if (secretLen > block) {
    /* RFC 2104 §2: a key longer than the block is hashed first. */
    Hash h;
    h_init(&h, is384);
    h_update(&h, secret, secretLen);
    h_final(&h, key);
    OPENSSL_cleanse(&h, sizeof h);
  } else if (secretLen) {
    memcpy(key, secret, secretLen);
  }
  Hash inner, outer;
  for (size_t i = 0; i < block; i++) pad[i] = key[i] ^ 0x36;
  h_init(&inner, is384);
  h_update(&inner, pad, block);
  for (size_t i = 0; i < block; i++) pad[i] = key[i] ^ 0x5c;
  h_init(&outer, is384);
  h_update(&outer, pad, block);
  /* A(1) = HMAC(secret, seed); block i = HMAC(secret, A(i) || seed); A(i+1) = HMAC(secret, A(i)). */
  hmac2(&inner, &outer, seed, seedLen, NULL, 0, mdLen, a);
  for (size_t off = 0; off < outLen; off += mdLen) {
    hmac2(&inner, &outer, a, mdLen, seed, seedLen, mdLen, md);
    memcpy(out + off, md, outLen - off < mdLen ? outLen - off : mdLen);
    hmac2(&inner, &outer, a, mdLen, NULL, 0, mdLen, a);
  }
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(a, sizeof a);
  OPENSSL_cleanse(md, sizeof md);
  OPENSSL_cleanse(&inner, sizeof inner);
  OPENSSL_cleanse(&outer, sizeof outer);
  return NULL;
}

int prf_register(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "tls12Prf", NAPI_AUTO_LENGTH, tls12_prf, NULL, &fn) != napi_ok) return 0;
  return napi_set_named_property(env, exports, "tls12Prf", fn) == napi_ok;
}
