/*
 * sctpChecksum(pkt) -> uint32: the SCTP packet checksum (RFC 9260 §6.8 and Appendix B,
 * RFC 3309): CRC32c (Castagnoli, reflected polynomial 0x82F63B78, initial value and final
 * XOR 0xFFFFFFFF) over the whole packet with its 4-octet checksum field (octets 8..11)
 * taken as zeros, as the sender computed it. The packet is read where it lies.
 *
 * The SSE4.2 CRC32 instruction computes exactly this polynomial; it is used when the CPU
 * has it (checked once), else a byte-wise table (built once) gives the same result.
 * Part of gatehouse_native; src/wire/sctp.ts keeps its slicing-by-8 JS for builds without
 * the addon, and test/unit/wire/sctp-crc32c.test.ts checks that both agree.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

static uint32_t table[256];
static int hw = -1; /* -1: not checked yet, 0: table, 1: SSE4.2 */

static void setup(void) {
  for (uint32_t b = 0; b < 256; b++) {
    uint32_t c = b;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    table[b] = c;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
  hw = 0;
#endif
}

static uint32_t update_table(uint32_t c, const uint8_t *p, size_t n) {
  while (n--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t update_hw(uint32_t c, const uint8_t *p, size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8); /* little-endian load, as the reflected CRC consumes bytes */
    c64 = __builtin_ia32_crc32di(c64, w);
    p += 8;
    n -= 8;
  }
  c = (uint32_t)c64;
  while (n--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}
#endif

static uint32_t update(uint32_t c, const uint8_t *p, size_t n) {
#if defined(__x86_64__)
  if (hw == 1) return update_hw(c, p, n);
#endif
  return update_table(c, p, n);
}

static napi_value sctp_checksum(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data = NULL;
  size_t len = 0;
  bool isBuf = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_is_buffer(env, argv[0], &isBuf) != napi_ok ||
      !isBuf || napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "sctpChecksum: a Buffer expected");
    return NULL;
  }
  if (hw < 0) setup();
  const uint8_t *p = data;
  static const uint8_t zeros[4] = {0, 0, 0, 0};
  uint32_t c = 0xffffffffu;
  if (len >= 12) {
    /* RFC 9260 §6.8: the checksum field counts as zeros. */
    c = update(c, p, 8);
    c = update(c, zeros, 4);
    c = update(c, p + 12, len - 12);
  } else {
    c = update(c, p, len);
  }
  napi_value out;
  if (napi_create_uint32(env, c ^ 0xffffffffu, &out) != napi_ok) return NULL;
  return out;
}

int crc32c_register(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "sctpChecksum", NAPI_AUTO_LENGTH, sctp_checksum, NULL, &fn) != napi_ok) return 0;
  return napi_set_named_property(env, exports, "sctpChecksum", fn) == napi_ok;
}
