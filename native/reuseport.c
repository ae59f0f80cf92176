/*
 * SO_REUSEPORT listener sockets for relay workers (issue 13, turn.workers; Linux only).
 *
 * Node 20's dgram ignores `reusePort` (it came in 22.12 / 23.1) and cluster shares one
 * UDP handle between workers, so the supervisor (src/turn/workers.ts) makes the sockets
 * here and hands each to one worker, which adopts it with dgram `bind({ fd })` or
 * net.Server `listen({ fd })`.
 *
 * socket(7) SO_REUSEPORT: several sockets may bind the same address and port when each
 * sets the option before bind(2) and all belong to the same effective UID; "for UDP
 * sockets, the use of this option can provide better distribution of incoming
 * datagrams to multiple processes (or threads)", and for TCP the kernel spreads incoming
 * connections over the listening sockets. The kernel picks the socket by a hash of the
 * 4-tuple over the group of sockets bound there, so a client keeps landing on the same
 * socket as long as that group does not change (which is why the supervisor keeps every
 * socket open, even while the worker that reads it restarts).
 *
 * reuseportSocket(kind, family, address, port[, backlog]) -> { fd, port }
 *   kind 'udp' | 'tcp', family 4 | 6, address an IP literal, port 0-65535 (0: the kernel
 *   picks one; the caller then binds the others of the group to the returned port).
 *   The socket is non-blocking and close-on-exec (socket(2) SOCK_NONBLOCK, SOCK_CLOEXEC):
 *   a child gets it only where the spawner puts it (libuv dup2s stdio entries, which
 *   clears the flag on the copy), never by accident. A 'tcp' socket is listening (listen(2),
 *   backlog default 511 as Node's). Failures throw an Error whose `code` is the errno name
 *   (EADDRINUSE, EACCES, EINVAL, ...) and whose message names the call and the address.
 *
 * closeFd(fd): close(2), for sockets the supervisor no longer needs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <node_api.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "sockaddr.h"

static void throw_errno(napi_env env, const char *call, const char *kind, const char *address, int port, int err) {
  char msg[256];
  const char *name = strerrorname_np(err); /* glibc >= 2.32 */
  snprintf(msg, sizeof msg, "reuseport: %s %s %s port %d: %s", call, kind, address, port, strerror(err));
  napi_throw_error(env, name ? name : "EUNKNOWN", msg);
}

static napi_value js_reuseport_socket(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  char kind[8] = {0}, address[64] = {0};
  size_t len = 0;
  int32_t family = 0, port = -1, backlog = 511;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_string_utf8(env, argv[0], kind, sizeof kind, &len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &family) != napi_ok ||
      napi_get_value_string_utf8(env, argv[2], address, sizeof address, &len) != napi_ok ||
      napi_get_value_int32(env, argv[3], &port) != napi_ok) {
    napi_throw_type_error(env, NULL, "reuseportSocket(kind, family, address, port[, backlog])");
    return NULL;
  }
  if (argc >= 5 && napi_get_value_int32(env, argv[4], &backlog) != napi_ok) backlog = 511;
  int udp = strcmp(kind, "udp") == 0;
  if ((!udp && strcmp(kind, "tcp") != 0) || (family != 4 && family != 6) || port < 0 || port > 65535 || backlog < 1) {
    napi_throw_range_error(env, NULL, "reuseportSocket: kind udp|tcp, family 4|6, port 0-65535, backlog >= 1");
    return NULL;
  }
  struct sockaddr_storage ss;
  socklen_t sslen;
  if (!sockaddr_from_literal(family, address, port, &ss, &sslen)) {
    napi_throw_range_error(env, NULL, family == 4 ? "reuseportSocket: address is not an IPv4 literal" : "reuseportSocket: address is not an IPv6 literal");
    return NULL;
  }
  int fd = socket(family == 4 ? AF_INET : AF_INET6, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, "socket", kind, address, port, errno);
    return NULL;
  }
  int one = 1, err;
  /* socket(7): SO_REUSEPORT must be set on every socket of the group before bind(2). */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) goto fail_setsockopt;
  /* TCP as Node's own listeners (libuv sets SO_REUSEADDR): a restart binds while old
   * connections sit in TIME_WAIT (tcp(7)). */
  if (!udp && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) goto fail_setsockopt;
  if (bind(fd, (struct sockaddr *)&ss, sslen) != 0) {
    err = errno;
    close(fd);
    throw_errno(env, "bind", kind, address, port, err);
    return NULL;
  }
  if (!udp && listen(fd, backlog) != 0) {
    err = errno;
    close(fd);
    throw_errno(env, "listen", kind, address, port, err);
    return NULL;
  }
  sslen = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
    err = errno;
    close(fd);
    throw_errno(env, "getsockname", kind, address, port, err);
    return NULL;
  }
  int bound = family == 4 ? ntohs(((struct sockaddr_in *)&ss)->sin_port) : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  napi_value out, v;
  napi_create_object(env, &out);
  napi_create_int32(env, fd, &v);
  napi_set_named_property(env, out, "fd", v);
  napi_create_int32(env, bound, &v);
  napi_set_named_property(env, out, "port", v);
  return out;

fail_setsockopt:
  err = errno;
  close(fd);
  throw_errno(env, "setsockopt", kind, address, port, err);
  return NULL;
}

static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      fd < 0) {
    napi_throw_type_error(env, NULL, "closeFd(fd)");
    return NULL;
  }
  if (close(fd) != 0) {
    throw_errno(env, "close", "fd", "-", fd, errno);
    return NULL;
  }
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
      {"reuseportSocket", 0, js_reuseport_socket, 0, 0, 0, napi_default, 0},
      {"closeFd", 0, js_close_fd, 0, 0, 0, napi_default, 0},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
