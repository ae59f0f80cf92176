/*
 * One IPv4/IPv6 literal and port to a sockaddr, for the addons that bind or send to
 * addresses given by JavaScript (reuseport.c, fastpath.c). Literals only, no name
 * resolution: the addresses come from validated configuration or from the peer's own
 * datagram.
 */
#ifndef GATEHOUSE_SOCKADDR_H
#define GATEHOUSE_SOCKADDR_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* family 4 or 6, a literal of that family, port 0-65535 -> 1 (ss, len filled), else 0. */
static inline int sockaddr_from_literal(int family, const char *literal, int port, struct sockaddr_storage *ss, socklen_t *len) {
  if (port < 0 || port > 65535) return 0;
  memset(ss, 0, sizeof *ss);
  if (family == 4) {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, literal, &a->sin_addr) != 1) return 0;
    a->sin_family = AF_INET, a->sin_port = htons((uint16_t)port), *len = sizeof *a;
    return 1;
  }
  if (family == 6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, literal, &a->sin6_addr) != 1) return 0;
    a->sin6_family = AF_INET6, a->sin6_port = htons((uint16_t)port), *len = sizeof *a;
    return 1;
  }
  return 0;
}

#endif
