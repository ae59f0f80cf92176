/*
 * Differential fuzz of native/fastpath.c send_indication_out (the Send indication parser
 * of the fast path, RFC 8656 §11.2), built by test/unit/turn/fastpath-send-fuzz.test.ts
 * with -fsanitize=address,undefined. It includes the addon's source (N-API and libuv are
 * never called: their symbols stay unresolved), feeds it random and mutated Send
 * indications in exactly-sized heap buffers (a read past the datagram is an ASan error),
 * checks that a queued payload lies inside the datagram, and writes every datagram C
 * queued (and a sample of those it handed to JS) to a file: the test decides each one
 * the way the JS path does (src/wire/stun.ts decodeStun, verifyFingerprint,
 * src/turn/handlers/send.ts) and fails on any C forwards that JS would not, or forwards
 * differently.
 *
 *   fastpath_send_fuzz ITERATIONS DUMPFILE [SEED]
 * Lines: "Q fam offset length port HEX" (queued in C), "J fam 0 0 0 HEX" (to JS).
 * The mirrored allocation: an eligible permission for 127.0.0.1 (IPv4 relay) and for
 * 7f00:1:: (IPv6 relay), allocation and permissions unexpired.
 */
#include "../../native/fastpath.c"
#include <assert.h>

static uint32_t rs = 12345;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 17; rs ^= rs << 5; return rs; }

int main(int argc, char **argv) {
  long iters = argc > 1 ? atol(argv[1]) : 2000000;
  FILE *dump = argc > 2 ? fopen(argv[2], "w") : NULL;
  if (argc > 3) rs = (uint32_t)atol(argv[3]) | 1;
  crc_init();
  static int32_t meta[META_LEN];
  relay_t r;
  memset(&r, 0, sizeof r);
  r.fam = AF_INET;
  r.exp = INT64_MAX;
  r.fd = -1;
  r.perms = calloc(4, sizeof(perm_t));
  r.capperm = 4;
  r.nperm = 1;
  r.perms[0].slot = 0;
  r.perms[0].iplen = 4;
  r.perms[0].ip[0] = 127, r.perms[0].ip[3] = 1;
  r.perms[0].eligible = 1;
  r.perms[0].exp = INT64_MAX;
  r.nperm = 2;
  r.perms[1].slot = 1;
  r.perms[1].iplen = 16;
  r.perms[1].ip[0] = 127, r.perms[1].ip[3] = 1;
  r.perms[1].eligible = 1;
  r.perms[1].exp = INT64_MAX;
  if (!rebuild(&r)) return 2;
  long queued = 0, tojs = 0;
  for (long it = 0; it < iters; it++) {
    if (it % 2 == 0) { r.fam = AF_INET; } else { r.fam = (it % 4 == 1) ? AF_INET6 : AF_INET; }
    size_t len = 20 + (rnd() % 200);
    uint8_t *msg = malloc(len); /* exact size: ASan catches any read past it */
    for (size_t i = 0; i < len; i++) msg[i] = (uint8_t)rnd();
    /* mostly plausible headers so the attribute walk is reached */
    if (rnd() % 8) {
      msg[0] = 0, msg[1] = 0x16;
      msg[4] = 0x21, msg[5] = 0x12, msg[6] = 0xa4, msg[7] = 0x42;
      size_t ml = (rnd() % 4 == 0) ? (rnd() & 0xffff) : len - 20;
      msg[2] = (uint8_t)(ml >> 8), msg[3] = (uint8_t)ml;
      /* plausible attributes */
      size_t p = 20;
      while (p + 4 <= len && rnd() % 6) {
        static const uint16_t types[] = {0x0012, 0x0013, 0x001a, 0x8028, 0x8022, 0x0008, 0xc0de};
        uint16_t t = types[rnd() % 7];
        size_t room = len - p - 4;
        size_t al = room ? rnd() % (room + 3) : 0;
        if (t == 0x0012 && rnd() % 2) al = (rnd() % 2) ? 8 : 20;
        if (t == 0x8028 && rnd() % 2) al = 4;
        msg[p] = (uint8_t)(t >> 8), msg[p + 1] = (uint8_t)t, msg[p + 2] = (uint8_t)(al >> 8), msg[p + 3] = (uint8_t)al;
        if (t == 0x0012 && p + 8 <= len) {
          msg[p + 5] = (rnd() % 2) ? 1 : 2;
          /* peer 127.0.0.1 XOR cookie half the time */
          if (al == 8 && p + 12 <= len && rnd() % 2) { msg[p + 8] = 127 ^ 0x21, msg[p + 9] = 0 ^ 0x12, msg[p + 10] = 0 ^ 0xa4, msg[p + 11] = 1 ^ 0x42; }
        }
        p += 4 + ((al + 3) & ~(size_t)3);
      }
    }
    if (rnd() % 2) {
      /* a valid Send: XPA 127.0.0.1 (or ::1-ish for v6), DATA, maybe FINGERPRINT; then mutated */
      free(msg);
      int v6 = r.fam == AF_INET6;
      size_t dl = rnd() % 64;
      size_t xl = v6 ? 20 : 8;
      int fp = rnd() % 2;
      /* sometimes one more attribute before FINGERPRINT: SOFTWARE (C forwards), DONT-FRAGMENT
         and MESSAGE-INTEGRITY (JS relays), an unknown comprehension-required one (JS drops) */
      static const uint16_t xt[] = {0x001a, 0x8022, 0x0008, 0x7f01};
      static const size_t xv[] = {0, 3, 20, 1};
      int extra = (int)(rnd() % 6) - 2; /* -2..-1: none */
      size_t el = extra >= 0 ? 4 + ((xv[extra] + 3) & ~(size_t)3) : 0;
      len = 20 + 4 + xl + 4 + ((dl + 3) & ~(size_t)3) + el + (fp ? 8 : 0);
      msg = malloc(len);
      memset(msg, 0, len);
      msg[1] = 0x16;
      msg[2] = (uint8_t)((len - 20) >> 8), msg[3] = (uint8_t)(len - 20);
      msg[4] = 0x21, msg[5] = 0x12, msg[6] = 0xa4, msg[7] = 0x42;
      for (int i = 8; i < 20; i++) msg[i] = (uint8_t)rnd();
      size_t p = 20;
      msg[p + 1] = 0x12, msg[p + 3] = (uint8_t)xl;
      msg[p + 5] = v6 ? 2 : 1;
      msg[p + 6] = 0x12 ^ 0x21, msg[p + 7] = 0x34 ^ 0x12;
      uint8_t ip[16] = {127, 0, 0, 1};
      for (size_t i = 0; i < (v6 ? 16 : 4); i++) msg[p + 8 + i] = ip[i] ^ msg[4 + i];
      p += 4 + xl;
      msg[p + 1] = 0x13, msg[p + 2] = (uint8_t)(dl >> 8), msg[p + 3] = (uint8_t)dl;
      for (size_t i = 0; i < dl; i++) msg[p + 4 + i] = (uint8_t)rnd();
      p += 4 + ((dl + 3) & ~(size_t)3);
      if (extra >= 0) {
        msg[p] = (uint8_t)(xt[extra] >> 8), msg[p + 1] = (uint8_t)xt[extra], msg[p + 3] = (uint8_t)xv[extra];
        for (size_t i = 0; i < xv[extra]; i++) msg[p + 4 + i] = (uint8_t)rnd();
        p += el;
      }
      if (fp) {
        msg[p] = 0x80, msg[p + 1] = 0x28, msg[p + 3] = 4;
        uint32_t c = crc32_of(msg, p) ^ 0x5354554eu;
        msg[p + 4] = (uint8_t)(c >> 24), msg[p + 5] = (uint8_t)(c >> 16), msg[p + 6] = (uint8_t)(c >> 8), msg[p + 7] = (uint8_t)c;
      }
      int muts = rnd() % 3;
      for (int m = 0; m < muts; m++) msg[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
      if (rnd() % 5 == 0 && len > 20) len -= 1 + rnd() % (len - 20); /* truncated datagram */
    }
    int nq = (int)(rnd() % BATCH);
    int v = send_indication_out(&r, msg, len, 0, nq, meta);
    if (v == CD_QUEUED) {
      queued++;
      /* the queued iov must lie inside the message */
      uint8_t *b = g_ciov[nq].iov_base;
      assert(b >= msg + 20 && b + g_ciov[nq].iov_len <= msg + len);
      if (dump) {
        struct sockaddr_storage *to = g_cmsg[nq].msg_hdr.msg_name;
        int port = to->ss_family == AF_INET ? ntohs(((struct sockaddr_in *)to)->sin_port) : ntohs(((struct sockaddr_in6 *)to)->sin6_port);
        fprintf(dump, "Q %d %ld %zu %d ", r.fam == AF_INET6 ? 6 : 4, (long)(b - msg), g_ciov[nq].iov_len, port);
        for (size_t i = 0; i < len; i++) fprintf(dump, "%02x", msg[i]);
        fputc('\n', dump);
      }
    } else if (dump && v == CD_TO_JS && rnd() % 8 == 0) {
      fprintf(dump, "J %d 0 0 0 ", r.fam == AF_INET6 ? 6 : 4);
      for (size_t i = 0; i < len; i++) fprintf(dump, "%02x", msg[i]);
      fputc('\n', dump);
    } else tojs++;
    free(msg);
  }
  printf("iters %ld queued %ld to-js %ld\n", iters, queued, tojs);
  return 0;
}
