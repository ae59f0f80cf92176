/*
 * srtp_tool: a small filter over Debian's libsrtp2, used by Gatehouse's tests and bench
 * as an independent reference implementation of SRTP/SRTCP (RFC 3711, RFC 7714).
 *
 *   srtp_tool protect   <profile> <master key||salt, hex>   stdin records -> stdout records
 *   srtp_tool unprotect <profile> <master key||salt, hex>   stdin records -> stdout records
 *   srtp_tool bench     <profile> <master key||salt, hex> <payload bytes> <packets> <rounds>
 *
 * Record format (both directions): kind (u8: 'r' RTP, 'c' RTCP), status (u8, 0 = ok,
 * else the srtp_err_status_t; input records carry 0), length (u16 big-endian), bytes.
 * <profile> is the RFC 5764 / RFC 7714 protection profile number (1, 2, 7 or 8).
 * The bench prints one line: "protect_ns=<n> unprotect_ns=<n>" (per packet, best round).
 *
 * Build: gcc -O2 srtp_tool.c -o srtp_tool -lsrtp2
 */
#include <srtp2/srtp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

#define MAX_PKT (65535 + SRTP_MAX_TRAILER_LEN)

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int parse_hex(const char *s, unsigned char *out, int max) {
    int n = 0;
    while (s[0] && s[1]) {
        int hi = hexval(s[0]), lo = hexval(s[1]);
        if (hi < 0 || lo < 0 || n >= max) return -1;
        out[n++] = (unsigned char)(hi << 4 | lo);
        s += 2;
    }
    return s[0] ? -1 : n;
}

static srtp_t make_session(int profile, unsigned char *key, int outbound) {
    srtp_policy_t policy;
    srtp_t session;
    memset(&policy, 0, sizeof policy);
    if (srtp_crypto_policy_set_from_profile_for_rtp(&policy.rtp, (srtp_profile_t)profile) ||
        srtp_crypto_policy_set_from_profile_for_rtcp(&policy.rtcp, (srtp_profile_t)profile)) {
        fprintf(stderr, "unsupported profile %d\n", profile);
        exit(2);
    }
    policy.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
    policy.key = key;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 0;
    policy.next = NULL;
    if (srtp_create(&session, &policy) != srtp_err_status_ok) {
        fprintf(stderr, "srtp_create failed\n");
        exit(2);
    }
    return session;
}

static int read_full(unsigned char *buf, size_t n) {
    return fread(buf, 1, n, stdin) == n;
}

static int filter(srtp_t s, int protect) {
    static unsigned char pkt[MAX_PKT];
    unsigned char hdr[4];
    while (read_full(hdr, 4)) {
        int len = hdr[2] << 8 | hdr[3];
        int st;
        if (len > 65535 - SRTP_MAX_TRAILER_LEN || !read_full(pkt, (size_t)len)) return 2;
        if (hdr[0] == 'r')
            st = protect ? srtp_protect(s, pkt, &len) : srtp_unprotect(s, pkt, &len);
        else
            st = protect ? srtp_protect_rtcp(s, pkt, &len) : srtp_unprotect_rtcp(s, pkt, &len);
        if (st != srtp_err_status_ok) len = 0;
        hdr[1] = (unsigned char)st;
        hdr[2] = (unsigned char)(len >> 8);
        hdr[3] = (unsigned char)len;
        fwrite(hdr, 1, 4, stdout);
        fwrite(pkt, 1, (size_t)len, stdout);
    }
    fflush(stdout);
    return 0;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int bench(int profile, unsigned char *key, int payload, int count, int rounds) {
    size_t stride = (size_t)(12 + payload + SRTP_MAX_TRAILER_LEN);
    unsigned char *plain = malloc(stride * count);
    unsigned char *prot = malloc(stride * count);
    unsigned char *work = malloc(stride * count);
    int *lens = malloc(sizeof(int) * count);
    double best_p = 1e30, best_u = 1e30;
    if (!plain || !prot || !work || !lens) return 2;
    for (int i = 0; i < count; i++) {
        unsigned char *p = plain + stride * i;
        p[0] = 0x80; p[1] = 111;
        p[2] = (unsigned char)(i >> 8); p[3] = (unsigned char)i;
        p[4] = 0; p[5] = 0; p[6] = (unsigned char)(i >> 8); p[7] = (unsigned char)i;
        p[8] = 0xca; p[9] = 0xfe; p[10] = 0xba; p[11] = 0xbe;
        for (int j = 0; j < payload; j++) p[12 + j] = (unsigned char)(i + j);
    }
    for (int r = 0; r < rounds; r++) {
        srtp_t tx = make_session(profile, key, 1);
        srtp_t rx = make_session(profile, key, 0);
        memcpy(prot, plain, stride * count);
        double t0 = now_ns();
        for (int i = 0; i < count; i++) {
            lens[i] = 12 + payload;
            if (srtp_protect(tx, prot + stride * i, &lens[i])) return 3;
        }
        double t1 = now_ns();
        memcpy(work, prot, stride * count);
        double t2 = now_ns();
        for (int i = 0; i < count; i++) {
            int len = lens[i];
            if (srtp_unprotect(rx, work + stride * i, &len)) return 4;
        }
        double t3 = now_ns();
        if ((t1 - t0) / count < best_p) best_p = (t1 - t0) / count;
        if ((t3 - t2) / count < best_u) best_u = (t3 - t2) / count;
        srtp_dealloc(tx);
        srtp_dealloc(rx);
    }
    printf("protect_ns=%.1f unprotect_ns=%.1f\n", best_p, best_u);
    return 0;
}

int main(int argc, char **argv) {
    unsigned char key[64 + 16];
    int profile, n;
    if (argc < 4) {
        fprintf(stderr, "usage: srtp_tool protect|unprotect|bench <profile> <keyhex> ...\n");
        return 2;
    }
    profile = atoi(argv[2]);
    memset(key, 0, sizeof key);
    n = parse_hex(argv[3], key, 64);
    if (n < 28) {
        fprintf(stderr, "bad key\n");
        return 2;
    }
    if (srtp_init() != srtp_err_status_ok) return 2;
    if (!strcmp(argv[1], "protect")) return filter(make_session(profile, key, 1), 1);
    if (!strcmp(argv[1], "unprotect")) return filter(make_session(profile, key, 0), 0);
    if (!strcmp(argv[1], "bench") && argc >= 7)
        return bench(profile, key, atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    fprintf(stderr, "bad mode\n");
    return 2;
}
