/*
 * dfaScan(next, accepts, seen, data, fold, hits) -> count | -1: one pass of a dense DFA
 * (src/policy/matcher.ts: Aho–Corasick compiled to next[state * 256 + byte]) over data,
 * the `contains` rules' scan of every inspected message. Writes each accepting state
 * reached (accepts[state] != 0) once into hits and returns how many; -1 when hits is too
 * small (the caller then scans in JS). `seen` is the caller's scratch (one octet per
 * state, all zero): marked while scanning, cleared again before returning. fold: bytes
 * pass through ASCII case folding (A-Z to a-z) first, as the JS scan does.
 * Every state read is checked against the table's size, so a bad table cannot make it
 * read out of bounds. Part of gatehouse_native.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

#include "dfa.h"

static int typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  bool is = false;
  napi_typedarray_type type;
  napi_value ab;
  size_t off;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  if (napi_get_typedarray_info(env, v, &type, len, data, &ab, &off) != napi_ok) return 0;
  return type == want || (want == napi_uint8_array && type == napi_uint8_clamped_array);
}

static napi_value dfa_scan(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int32_t *next, *hits;
  uint8_t *accepts, *seen, *data;
  size_t nextLen, acceptsLen, seenLen, dataLen, hitsLen;
  bool fold = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 ||
      !typed(env, argv[0], napi_int32_array, (void **)&next, &nextLen) ||
      !typed(env, argv[1], napi_uint8_array, (void **)&accepts, &acceptsLen) ||
      !typed(env, argv[2], napi_uint8_array, (void **)&seen, &seenLen) ||
      !typed(env, argv[3], napi_uint8_array, (void **)&data, &dataLen) || napi_get_value_bool(env, argv[4], &fold) != napi_ok ||
      !typed(env, argv[5], napi_int32_array, (void **)&hits, &hitsLen)) {
    napi_throw_type_error(env, NULL, "dfaScan: (Int32Array, Uint8Array, Uint8Array, Uint8Array, boolean, Int32Array) expected");
    return NULL;
  }
  size_t states = acceptsLen;
  if (states == 0 || nextLen != states * 256 || seenLen < states) {
    napi_throw_range_error(env, NULL, "dfaScan: table sizes do not match");
    return NULL;
  }
  size_t count = 0;
  int overflow = 0;
  uint32_t s = 0;
  for (size_t i = 0; i < dataLen; i++) {
    if (s == 0) {
      /* The root's row is next[0..255]: bytes that lead back to the root are skipped by
         loads that do not depend on each other. */
      if (fold)
        while (i < dataLen && next[data[i] >= 0x41 && data[i] <= 0x5a ? data[i] + 32 : data[i]] == 0) i++;
      else
        while (i < dataLen && next[data[i]] == 0) i++;
      if (i == dataLen) break;
    }
    uint32_t b = data[i];
    if (fold && b >= 0x41 && b <= 0x5a) b += 32;
    uint32_t t = (uint32_t)next[((size_t)s << 8) | b];
    if (t >= states) {
      overflow = 1; /* a corrupt table: let the JS scan (bounds-checked) decide */
      break;
    }
    s = t;
    if (accepts[s] && !seen[s]) {
      if (count == hitsLen) {
        overflow = 1;
        break;
      }
      seen[s] = 1;
      hits[count++] = (int32_t)s;
    }
  }
  for (size_t k = 0; k < count; k++) seen[hits[k]] = 0;
  napi_value out;
  if (napi_create_int32(env, overflow ? -1 : (int32_t)count, &out) != napi_ok) return NULL;
  return out;
}

int dfa_register(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "dfaScan", NAPI_AUTO_LENGTH, dfa_scan, NULL, &fn) != napi_ok) return 0;
  return napi_set_named_property(env, exports, "dfaScan", fn) == napi_ok;
}
