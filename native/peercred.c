/*
 * The credentials of the process at the other end of a Unix stream socket (issue 13, Linux
 * only): getsockopt(2) SO_PEERCRED (unix(7)) gives the pid, uid and gid the kernel recorded
 * when that process called connect(2), which the peer cannot forge. The key broker
 * (src/util/key-broker.ts) matches them against the workers it spawned before it hands
 * over a key; without this addon the broker refuses every request.
 *
 * peercred(fd) -> { pid, uid, gid }; throws on a descriptor that is not a connected Unix
 * socket (ENOTSOCK, ENOTCONN, EBADF, ...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

static napi_value js_peercred(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      fd < 0) {
    napi_throw_type_error(env, NULL, "peercred: a file descriptor is required");
    return NULL;
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  memset(&cred, 0, sizeof cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) {
    napi_throw_error(env, NULL, len != sizeof cred ? "peercred: short SO_PEERCRED answer" : strerror(errno));
    return NULL;
  }
  /* A socket whose peer has no credentials (never connected) reports pid 0 (unix(7)). */
  if (cred.pid <= 0) {
    napi_throw_error(env, NULL, "peercred: the socket has no peer credentials");
    return NULL;
  }
  napi_value out, v;
  napi_create_object(env, &out);
  napi_create_int32(env, (int32_t)cred.pid, &v);
  napi_set_named_property(env, out, "pid", v);
  napi_create_uint32(env, (uint32_t)cred.uid, &v);
  napi_set_named_property(env, out, "uid", v);
  napi_create_uint32(env, (uint32_t)cred.gid, &v);
  napi_set_named_property(env, out, "gid", v);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {{"peercred", 0, js_peercred, 0, 0, 0, napi_default, 0}};
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
