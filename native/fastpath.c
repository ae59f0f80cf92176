/*
 * The TURN relay's UDP fast path (issue 13, Linux only): relay sockets read with
 * recvmmsg(2) in batches into one preallocated ring, and the peer -> client datagrams of
 * flows the JavaScript side marked eligible (no inspection hook) forwarded to the client
 * here, with sendmmsg(2), as ChannelData (RFC 8656 §12.5, a channel is bound to the peer's
 * transport address) or as a Data indication (RFC 8656 §11.3). Everything else read from a
 * relay socket (flows that must be inspected) goes to JavaScript: one call per batch,
 * records in a shared Int32Array and payloads left in the shared ring (no Buffer, address
 * string or object per packet).
 *
 * The client-facing UDP listener sockets of a server whose flows are all eligible are read
 * here too (recvmmsg into the same ring): a ChannelData message (RFC 8656 §12.4, first
 * byte 0x40-0x4F, or up to 0x7F with RFC 5766 numbers; RFC 7983 demultiplexing) from a
 * client 5-tuple this module knows, on a bound, unexpired channel whose permission and
 * allocation are unexpired, goes out of that allocation's relay socket to the peer here
 * (sendmmsg, consecutive datagrams of one relay in one call). So does a Send indication
 * (RFC 8656 §11.2) from such a client whose XOR-PEER-ADDRESS has an unexpired, eligible
 * permission, when it is one JavaScript would relay too (send_indication_out: anything
 * it is not sure of goes to JS). Everything else (STUN requests, other or doubtful Send
 * indications, unknown clients, channels not mirrored here) goes to JavaScript once per batch, with the client's address as text, and is dispatched to the
 * same handler dgram's 'message' calls. Once a client has a datagram handed to JS in a
 * batch, its later datagrams of that batch go to JS too: its own order is kept (a
 * ChannelBind request followed by ChannelData on the new channel works as in JS).
 *
 * JavaScript owns the state (src/turn/fastpath.ts mirrors it here): allocations,
 * permissions (RFC 8656 §9, by peer IP address only) and channels (§12). Every one carries
 * an absolute expiry on CLOCK_MONOTONIC, checked on every packet, so a late JS timer can
 * never keep a flow open: a datagram after its permission's (or allocation's, or
 * channel's) time is dropped (permission, allocation) or not sent as ChannelData
 * (channel: it goes to JavaScript, which has the last word).
 *
 * A relay socket stays a Node dgram socket (bound, sent on and closed by Node); this
 * module reads a dup(2) of its descriptor after JavaScript stopped Node's own receiving
 * (recvStop), and writes to the client through a dup of the listener's descriptor (UDP
 * datagrams from two writers on one socket do not interleave).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "sockaddr.h"

#define BATCH 32
#define SLOT 65536 /* larger than any UDP payload (65507): nothing is truncated */
#define REC 5      /* int32 per record handed to JS: relay id, permission slot, peer port, offset, length */
/* int32 per record of a listener batch: offset, length, client port, address text length,
   then the address text (inet_ntop form, as dgram's rinfo.address, with %scope) */
#define LREC 20
#define LADDR 64 /* bytes of address text room in a listener record (16 int32) */
/* meta[] after the records: records, fast packets, fast bytes, send drops, expired drops,
   the id of the relay (kind 0) or listener (kind 1) the batch was read from (every record
   and counter of a batch is of that one socket: JS hands the batch to the server owning
   it, src/turn/fastpath.ts), the kind, malformed ChannelData dropped, and Send indications
   forwarded here (also in the fast packets and bytes) */
#define M_N (BATCH * LREC)
#define META_LEN (M_N + 9)
/* Counters per owner (the FastPath of one TurnServer in src/turn/fastpath.ts), in a
   Float64Array JavaScript reads when it wants them: every batch adds its meta counters
   there, so a batch C forwarded whole needs no call into JavaScript (README Benchmarks,
   issue 13 part 4: a few per cent of the bare relay's CPU per packet). */
#define ACC_N 10
#define ACC_OWNERS 64
enum {
  A_P2C_PACKETS,    /* peer -> client datagrams forwarded here */
  A_P2C_BYTES,      /* and their payload bytes */
  A_C2P_PACKETS,    /* client -> peer datagrams forwarded here (ChannelData, Send indications) */
  A_C2P_BYTES,      /* and their payload bytes */
  A_SEND_DROPPED,   /* datagrams a full socket buffer (or a send error) lost */
  A_EXPIRED,        /* datagrams dropped for an allocation, permission or channel past its time */
  A_MALFORMED,      /* ChannelData shorter than its Length (RFC 8656 §12.6), dropped */
  A_SEND_INDICATIONS, /* of A_C2P_PACKETS, the Send indications (RFC 8656 §11.2) */
  A_BATCHES,        /* relay socket batches read */
  A_LISTENER_BATCHES /* listener socket batches read */
};

typedef struct {
  uint8_t ip[16];
  uint8_t iplen;
  uint8_t eligible;
  int32_t slot;
  int64_t exp; /* ms, CLOCK_MONOTONIC */
} perm_t;

typedef struct {
  int32_t slot;
  uint16_t port;
  uint16_t number;
  int64_t exp;
  /* the peer (permission IP, channel port) in the relay socket's family; plen 0: not
     representable there (an IPv4 peer on an IPv6 relay socket): client -> peer goes to JS */
  struct sockaddr_storage peer;
  socklen_t plen;
} chan_t;

typedef struct relay {
  int id;
  int fd;
  int fam; /* the relay socket's family (getsockname) */
  int lid; /* listener index, -1: the client is not on UDP (everything to JS) */
  int closing;
  uv_poll_t poll;
  struct sockaddr_storage client;
  socklen_t clen;
  int64_t exp;
  perm_t *perms;
  int nperm, capperm;
  chan_t *chans;
  int nchan, capchan;
  /* Lookups, rebuilt when the set of permissions or channels changes (control plane, not
     per packet): open addressing, linear probing, at most half full, -1 empty. */
  int32_t *ptab;  /* permission IP -> index in perms */
  int32_t *ktab;  /* (slot, peer port) -> index in chans */
  int32_t *ntab;  /* channel number -> index in chans */
  int pcap, ccap; /* power of two */
  int32_t *slotidx; /* permission slot -> index in perms, -1 */
  int nslotidx;
  /* the client 5-tuple table (listener, client address): chain */
  struct relay *cnext;
  int in_ctab;
  uint32_t taint; /* listener batch in which a datagram of this client went to JS */
  int owner;      /* its counters' row in g_acc */
} relay_t;

typedef struct listener {
  int id;
  int fd;     /* a dup of the listener's descriptor */
  int reading; /* read here (recvmmsg), dgram stopped */
  int maxb;   /* the highest first byte of a ChannelData message the server accepts */
  int closing;
  int owner; /* its counters' row in g_acc */
  uv_poll_t poll;
} listener_t;

static napi_env g_env = NULL;
static napi_ref g_cb = NULL, g_ring_ref = NULL, g_meta_ref = NULL;
static napi_async_context g_actx = NULL;
static uint8_t *g_ring = NULL;
static int32_t *g_meta = NULL;
static double *g_acc = NULL; /* ACC_OWNERS rows of ACC_N counters (init) */
static napi_ref g_acc_ref = NULL;

/* What JavaScript sends to peers (sendTo) while it handles a batch read here is queued and
   goes out with sendmmsg when the batch's call returns: one system call per run of one
   relay socket, and the peer woken once per batch, instead of a sendto each. The bytes
   are copied (the caller's Buffer is JavaScript's); a datagram that does not fit the
   arena or the queue flushes what is queued first. */
#define SQ_MAX 64
#define SQ_ARENA (256 * 1024)
static int g_in_batch = 0;
static int g_sqn = 0;
static size_t g_sq_used = 0;
static uint8_t *g_sq_arena = NULL;
static struct mmsghdr g_sqmsg[SQ_MAX];
static struct iovec g_sqiov[SQ_MAX];
static struct sockaddr_storage g_sqaddr[SQ_MAX];
static int g_sqfd[SQ_MAX];
static int g_sqowner[SQ_MAX];
static void flush_js_sends(void);
static relay_t **g_relays = NULL;
static int g_nrelays = 0;
static listener_t **g_listeners = NULL; /* NULL: free */
static int g_nlisteners = 0;
static relay_t **g_ctab = NULL; /* client 5-tuple -> relay, chained */
static int g_ccap = 0, g_cn = 0;
static uint32_t g_lseq = 0; /* listener batches read (taint) */
static uint8_t g_tid[12];
static uint32_t g_tidc = 0;

static struct mmsghdr g_rmsg[BATCH];
static struct iovec g_riov[BATCH];
static struct sockaddr_storage g_raddr[BATCH];
static struct mmsghdr g_smsg[BATCH];
static struct iovec g_siov[BATCH][3];
static uint8_t g_hdr[BATCH][48];
static const uint8_t ZERO[4] = {0, 0, 0, 0};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* remaining ms from JS -> absolute; <= 0: already expired */
static int64_t deadline(double remaining) {
  if (!(remaining > 0)) return INT64_MIN;
  if (remaining > 1e12) remaining = 1e12;
  return now_ms() + (int64_t)remaining;
}

/* ---------------------------------------------------------------- argument helpers */

#define THROW(msg)                                   \
  do {                                               \
    napi_throw_error(env, "ERR_GATEHOUSE_FASTPATH", msg); \
    return NULL;                                     \
  } while (0)

static int arg_i32(napi_env env, napi_value v, int32_t *out) { return napi_get_value_int32(env, v, out) == napi_ok; }
static int arg_f64(napi_env env, napi_value v, double *out) { return napi_get_value_double(env, v, out) == napi_ok; }

static relay_t *relay_arg(napi_env env, napi_value v) {
  int32_t id;
  if (!arg_i32(env, v, &id) || id < 0 || id >= g_nrelays || g_relays[id] == NULL || g_relays[id]->closing) return NULL;
  return g_relays[id];
}

static int ip_arg(napi_env env, napi_value v, uint8_t *ip, uint8_t *len) {
  void *data;
  size_t n;
  if (napi_get_buffer_info(env, v, &data, &n) != napi_ok || (n != 4 && n != 16)) return 0;
  memcpy(ip, data, n);
  *len = (uint8_t)n;
  return 1;
}

static napi_value undef(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

/* ---------------------------------------------------------------- the batch */

/* FNV-1a */
static uint32_t hash_bytes(const void *data, size_t n, uint32_t h) {
  const uint8_t *b = data;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 16777619u;
  return h;
}
#define HASH0 2166136261u

static uint32_t hash_key(int32_t slot, uint16_t port) {
  uint32_t k[2] = {(uint32_t)slot, port};
  return hash_bytes(k, sizeof k, HASH0);
}

static perm_t *find_perm(relay_t *r, const uint8_t *ip, int len) {
  if (r->pcap == 0) return NULL;
  uint32_t m = (uint32_t)r->pcap - 1;
  for (uint32_t i = hash_bytes(ip, len, HASH0) & m;; i = (i + 1) & m) {
    int32_t k = r->ptab[i];
    if (k < 0) return NULL;
    perm_t *p = &r->perms[k];
    if (p->iplen == len && memcmp(p->ip, ip, len) == 0) return p;
  }
}

static perm_t *perm_of_slot(relay_t *r, int32_t slot) {
  if (slot < 0 || slot >= r->nslotidx || r->slotidx[slot] < 0) return NULL;
  return &r->perms[r->slotidx[slot]];
}

static chan_t *find_chan(relay_t *r, int32_t slot, uint16_t port) {
  if (r->ccap == 0) return NULL;
  uint32_t m = (uint32_t)r->ccap - 1;
  for (uint32_t i = hash_key(slot, port) & m;; i = (i + 1) & m) {
    int32_t k = r->ktab[i];
    if (k < 0) return NULL;
    chan_t *c = &r->chans[k];
    if (c->slot == slot && c->port == port) return c;
  }
}

static chan_t *find_chan_number(relay_t *r, uint16_t number) {
  if (r->ccap == 0) return NULL;
  uint32_t m = (uint32_t)r->ccap - 1;
  for (uint32_t i = hash_bytes(&number, sizeof number, HASH0) & m;; i = (i + 1) & m) {
    int32_t k = r->ntab[i];
    if (k < 0) return NULL;
    if (r->chans[k].number == number) return &r->chans[k];
  }
}

/* A peer (IP bytes, port) as the relay socket sends to it: the address length, or 0 when
   the peer is not of the socket's family (an IPv4 peer on an IPv6 relay socket). */
static socklen_t peer_sockaddr(const relay_t *r, const uint8_t *ip, size_t iplen, uint16_t port, struct sockaddr_storage *sa) {
  memset(sa, 0, sizeof *sa);
  if (r->fam == AF_INET && iplen == 4) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    memcpy(&s4->sin_addr, ip, 4);
    return sizeof *s4;
  }
  if (r->fam == AF_INET6 && iplen == 16) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    memcpy(&s6->sin6_addr, ip, 16);
    return sizeof *s6;
  }
  return 0;
}

/* The channel's peer as the relay socket sends to it (RFC 8656 §12.6: to the peer the
   channel is bound to). */
static void chan_peer(relay_t *r, chan_t *c) {
  perm_t *p = perm_of_slot(r, c->slot);
  memset(&c->peer, 0, sizeof c->peer);
  c->plen = 0;
  if (p == NULL) return;
  c->plen = peer_sockaddr(r, p->ip, p->iplen, c->port, &c->peer);
}

static int32_t *table(int cap) {
  int32_t *t = malloc(sizeof(int32_t) * (size_t)cap);
  if (t) memset(t, 0xff, sizeof(int32_t) * (size_t)cap); /* -1 */
  return t;
}

/* After the set of permissions or channels changed: every lookup table anew. 0: out of memory
   (the old tables stay, still consistent with the arrays only if nothing moved: callers
   throw, and JS leaves the allocation to the JS path by closing it in C). */
static int rebuild(relay_t *r) {
  int pc = 8, cc = 8, ns = 0;
  while (pc < r->nperm * 2) pc <<= 1;
  while (cc < r->nchan * 2) cc <<= 1;
  for (int i = 0; i < r->nperm; i++)
    if (r->perms[i].slot + 1 > ns) ns = r->perms[i].slot + 1;
  int32_t *pt = table(pc), *kt = table(cc), *nt = table(cc), *st = table(ns ? ns : 1);
  if (!pt || !kt || !nt || !st) {
    free(pt), free(kt), free(nt), free(st);
    return 0;
  }
  for (int i = 0; i < r->nperm; i++) {
    perm_t *p = &r->perms[i];
    uint32_t j = hash_bytes(p->ip, p->iplen, HASH0) & (uint32_t)(pc - 1);
    while (pt[j] >= 0) j = (j + 1) & (uint32_t)(pc - 1);
    pt[j] = i;
    st[p->slot] = i;
  }
  for (int i = 0; i < r->nchan; i++) {
    chan_t *c = &r->chans[i];
    uint32_t j = hash_key(c->slot, c->port) & (uint32_t)(cc - 1);
    while (kt[j] >= 0) j = (j + 1) & (uint32_t)(cc - 1);
    kt[j] = i;
    j = hash_bytes(&c->number, sizeof c->number, HASH0) & (uint32_t)(cc - 1);
    while (nt[j] >= 0) j = (j + 1) & (uint32_t)(cc - 1);
    nt[j] = i;
  }
  free(r->ptab), free(r->ktab), free(r->ntab), free(r->slotidx);
  r->ptab = pt, r->ktab = kt, r->ntab = nt, r->slotidx = st;
  r->pcap = pc, r->ccap = cc, r->nslotidx = ns;
  for (int i = 0; i < r->nchan; i++) chan_peer(r, &r->chans[i]);
  return 1;
}

/* ---------------------------------------------------------------- client 5-tuples */

/* A client address as received on a listener and as JS sends to it (family, IP, port;
   not flow label or the rest of the sockaddr). */
static uint32_t client_hash(int lid, const struct sockaddr_storage *sa) {
  uint32_t h = hash_bytes(&lid, sizeof lid, HASH0);
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    h = hash_bytes(&s4->sin_addr, 4, h);
    return hash_bytes(&s4->sin_port, 2, h);
  }
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
  h = hash_bytes(&s6->sin6_addr, 16, h);
  return hash_bytes(&s6->sin6_port, 2, h);
}

static int client_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
  return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static relay_t *client_find(int lid, const struct sockaddr_storage *sa) {
  if (g_ccap == 0 || (sa->ss_family != AF_INET && sa->ss_family != AF_INET6)) return NULL;
  for (relay_t *r = g_ctab[client_hash(lid, sa) & (uint32_t)(g_ccap - 1)]; r; r = r->cnext)
    if (r->lid == lid && client_same(&r->client, sa)) return r;
  return NULL;
}

static void client_remove(relay_t *r) {
  if (!r->in_ctab) return;
  relay_t **pp = &g_ctab[client_hash(r->lid, &r->client) & (uint32_t)(g_ccap - 1)];
  while (*pp && *pp != r) pp = &(*pp)->cnext;
  if (*pp) *pp = r->cnext;
  r->cnext = NULL;
  r->in_ctab = 0;
  g_cn--;
}

static int client_insert(relay_t *r) {
  if (g_cn + 1 > g_ccap) {
    int cap = g_ccap ? g_ccap * 2 : 256;
    relay_t **nt = calloc((size_t)cap, sizeof(relay_t *));
    if (!nt) return 0;
    for (int i = 0; i < g_ccap; i++)
      for (relay_t *x = g_ctab[i], *nx; x; x = nx) {
        nx = x->cnext;
        uint32_t j = client_hash(x->lid, &x->client) & (uint32_t)(cap - 1);
        x->cnext = nt[j];
        nt[j] = x;
      }
    free(g_ctab);
    g_ctab = nt;
    g_ccap = cap;
  }
  uint32_t j = client_hash(r->lid, &r->client) & (uint32_t)(g_ccap - 1);
  r->cnext = g_ctab[j];
  g_ctab[j] = r;
  r->in_ctab = 1;
  g_cn++;
  return 1;
}

/* RFC 8656 §11.3 Data indication header (RFC 8489 §5, §14.2 XOR-PEER-ADDRESS, §14 DATA padded). */
static int data_indication(uint8_t *h, const perm_t *p, uint16_t port, size_t len) {
  int v6 = p->iplen == 16;
  int xlen = v6 ? 20 : 8;
  size_t pad = (4 - (len & 3)) & 3;
  size_t mlen = 4 + xlen + 4 + len + pad;
  h[0] = 0x00; /* Data indication: method 0x007, class 0b01 -> 0x0017 */
  h[1] = 0x17;
  h[2] = (uint8_t)(mlen >> 8);
  h[3] = (uint8_t)mlen;
  h[4] = 0x21, h[5] = 0x12, h[6] = 0xa4, h[7] = 0x42; /* magic cookie */
  /* RFC 8489 §6: a transaction ID unique per indication: random base + counter */
  memcpy(h + 8, g_tid, 8);
  g_tidc++;
  h[16] = (uint8_t)(g_tidc >> 24), h[17] = (uint8_t)(g_tidc >> 16), h[18] = (uint8_t)(g_tidc >> 8), h[19] = (uint8_t)g_tidc;
  h[20] = 0x00, h[21] = 0x12; /* XOR-PEER-ADDRESS */
  h[22] = 0, h[23] = (uint8_t)xlen;
  h[24] = 0;
  h[25] = v6 ? 0x02 : 0x01;
  uint16_t xp = port ^ 0x2112;
  h[26] = (uint8_t)(xp >> 8), h[27] = (uint8_t)xp;
  for (int i = 0; i < 4; i++) h[28 + i] = p->ip[i] ^ h[4 + i];
  if (v6)
    for (int i = 0; i < 12; i++) h[32 + i] = p->ip[4 + i] ^ h[8 + i];
  int d = 24 + xlen;
  h[d] = 0x00, h[d + 1] = 0x13; /* DATA */
  h[d + 2] = (uint8_t)(len >> 8), h[d + 3] = (uint8_t)len;
  return d + 4;
}

static void flush_fd(int fd, struct mmsghdr *msgs, int n, int32_t *meta) {
  int off = 0;
  while (off < n) {
    int sent = sendmmsg(fd, msgs + off, n - off, MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      /* EAGAIN (kernel buffer full) or an error for the first datagram: that one is lost,
         as relayed UDP may be; the rest are tried. */
      meta[M_N + 3]++;
      off++;
    } else
      off += sent;
  }
}

static void flush(int lid, int n, int32_t *meta) { flush_fd(g_listeners[lid]->fd, g_smsg, n, meta); }

static void call_js(napi_env env) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv;
  if (napi_get_reference_value(env, g_cb, &cb) == napi_ok && cb != NULL) {
    /* node's MakeCallback wants an object as `this` (undefined throws a TypeError) */
    napi_get_global(env, &recv);
    napi_status st = napi_make_callback(env, g_actx, recv, cb, 0, NULL, NULL);
    if (st == napi_pending_exception) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
}

static int clear_socket_error(int fd);

/* A JavaScript batch call: sendTo queues while it runs; what it queued goes out after. */
static void call_js_batch(napi_env env) {
  g_in_batch = 1;
  call_js(env);
  g_in_batch = 0;
  if (g_sqn) flush_js_sends();
}

/* One recvmmsg of up to BATCH datagrams into the ring's slots (a fresh header per slot:
   the kernel rewrites msg_namelen and msg_len). The result: count, or <= 0. */
static int recv_batch(int fd) {
  for (int i = 0; i < BATCH; i++) {
    g_riov[i].iov_base = g_ring + (size_t)i * SLOT;
    g_riov[i].iov_len = SLOT;
    memset(&g_rmsg[i].msg_hdr, 0, sizeof(struct msghdr));
    g_rmsg[i].msg_hdr.msg_iov = &g_riov[i];
    g_rmsg[i].msg_hdr.msg_iovlen = 1;
    g_rmsg[i].msg_hdr.msg_name = &g_raddr[i];
    g_rmsg[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
  }
  return recvmmsg(fd, g_rmsg, BATCH, MSG_DONTWAIT, NULL);
}


static void on_readable(uv_poll_t *h, int status, int events) {
  relay_t *r = (relay_t *)h->data;
  if (r->closing || g_ring == NULL) return;
  if (status < 0) {
    /* libuv stopped the handle on POLLERR. On a UDP socket that is a pending socket error
       (an ICMP error, RFC 8656 §11.5, reported on a connected socket) or the error queue
       (IP_RECVERR): transient. Left stopped, the relay would read nothing more while the
       allocation lives. Clear both and read on; a descriptor that is really bad stays
       stopped (JS closes the allocation's socket anyway). */
    if (!clear_socket_error(r->fd)) {
      uv_poll_stop(h);
      return;
    }
    uv_poll_start(h, UV_READABLE, on_readable);
    return;
  }
  int n = recv_batch(r->fd);
  if (n <= 0) return; /* EAGAIN, or an ICMP error reported on the socket: nothing to relay */
  int32_t *meta = g_meta;
  memset(meta + M_N, 0, 9 * sizeof(int32_t));
  int64_t now = now_ms();
  int nslow = 0, nfast = 0;
  for (int i = 0; i < n; i++) {
    size_t len = g_rmsg[i].msg_len;
    uint8_t *payload = g_ring + (size_t)i * SLOT;
    uint8_t ip[16];
    int iplen;
    uint16_t port;
    struct sockaddr_storage *sa = &g_raddr[i];
    if (sa->ss_family == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
      memcpy(ip, &s4->sin_addr, 4);
      iplen = 4;
      port = ntohs(s4->sin_port);
    } else if (sa->ss_family == AF_INET6) {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
      /* RFC 4291 §2.5.5.2: an IPv4-mapped peer is the IPv4 address (permissions hold that form) */
      if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        memcpy(ip, (uint8_t *)&s6->sin6_addr + 12, 4);
        iplen = 4;
      } else {
        memcpy(ip, &s6->sin6_addr, 16);
        iplen = 16;
      }
      port = ntohs(s6->sin6_port);
    } else
      continue;
    /* RFC 8656 §6 / §9: after the allocation's or the permission's expiry, discard. */
    if (now >= r->exp) {
      meta[M_N + 4]++;
      continue;
    }
    perm_t *p = find_perm(r, ip, iplen);
    if (p == NULL) continue; /* RFC 8656 §9: no permission for this IP, discard */
    if (now >= p->exp) {
      meta[M_N + 4]++;
      continue;
    }
    if (p->eligible && r->lid >= 0) {
      chan_t *c = find_chan(r, p->slot, port);
      struct iovec *iov = g_siov[nfast];
      int niov;
      if (c != NULL && now < c->exp) {
        /* RFC 8656 §12.5: the server MUST use ChannelData when a channel is bound; over
           UDP no padding. */
        uint8_t *hd = g_hdr[nfast];
        hd[0] = (uint8_t)(c->number >> 8), hd[1] = (uint8_t)c->number;
        hd[2] = (uint8_t)(len >> 8), hd[3] = (uint8_t)len;
        iov[0].iov_base = hd, iov[0].iov_len = 4;
        iov[1].iov_base = payload, iov[1].iov_len = len;
        niov = 2;
        if (len > 0xffff) continue;
      } else if (c == NULL) {
        if (len > 0xffff - 48) continue; /* RFC 8656 §11.3: would not fit a STUN message */
        int hl = data_indication(g_hdr[nfast], p, port, len);
        size_t pad = (4 - (len & 3)) & 3;
        iov[0].iov_base = g_hdr[nfast], iov[0].iov_len = hl;
        iov[1].iov_base = payload, iov[1].iov_len = len;
        iov[2].iov_base = (void *)ZERO, iov[2].iov_len = pad;
        niov = pad ? 3 : 2;
      } else
        goto slow; /* a channel past its time here, not yet swept in JS: JS decides */
      struct msghdr *m = &g_smsg[nfast].msg_hdr;
      memset(m, 0, sizeof(*m));
      m->msg_name = &r->client;
      m->msg_namelen = r->clen;
      m->msg_iov = iov;
      m->msg_iovlen = niov;
      nfast++;
      meta[M_N + 1]++;
      meta[M_N + 2] += (int32_t)len;
      continue;
    }
  slow:
    meta[nslow * REC + 0] = r->id;
    meta[nslow * REC + 1] = p->slot;
    meta[nslow * REC + 2] = port;
    meta[nslow * REC + 3] = i * SLOT;
    meta[nslow * REC + 4] = (int32_t)len;
    nslow++;
  }
  if (nfast) flush(r->lid, nfast, meta);
  meta[M_N] = nslow;
  meta[M_N + 5] = r->id;
  meta[M_N + 6] = 0;
  double *a = g_acc + (size_t)r->owner * ACC_N;
  a[A_BATCHES]++;
  a[A_P2C_PACKETS] += meta[M_N + 1];
  a[A_P2C_BYTES] += meta[M_N + 2];
  a[A_SEND_DROPPED] += meta[M_N + 3];
  a[A_EXPIRED] += meta[M_N + 4];
  /* JavaScript is called for the datagrams it must see, at most once per batch. */
  if (nslow) call_js_batch(g_env);
}

/* ---------------------------------------------------------------- client -> peer */

/* Up to BATCH datagrams of one listener batch queued for their relay sockets: g_cmsg[i]
   goes out of g_cfd[i]; runs of one relay go in one sendmmsg. */
static struct mmsghdr g_cmsg[BATCH];
static struct iovec g_ciov[BATCH];
static int g_cfd[BATCH];

static void flush_client_sends(int n, int32_t *meta) {
  int start = 0;
  for (int i = 1; i <= n; i++)
    if (i == n || g_cfd[i] != g_cfd[start]) {
      flush_fd(g_cfd[start], g_cmsg + start, i - start, meta);
      start = i;
    }
}

/* Sends what sendTo queued during a batch (see g_in_batch), runs of one descriptor per
   sendmmsg; a datagram the kernel refuses is lost and counted in its owner's sendDropped. */
static void flush_js_sends(void) {
  int start = 0;
  while (start < g_sqn) {
    int end = start + 1;
    while (end < g_sqn && g_sqfd[end] == g_sqfd[start]) end++;
    int off = start;
    while (off < end) {
      int sent = sendmmsg(g_sqfd[start], g_sqmsg + off, end - off, MSG_DONTWAIT);
      if (sent < 0) {
        if (errno == EINTR) continue;
        g_acc[(size_t)g_sqowner[off] * ACC_N + A_SEND_DROPPED]++;
        off++;
      } else
        off += sent;
    }
    start = end;
  }
  g_sqn = 0;
  g_sq_used = 0;
}

enum { CD_QUEUED, CD_DROPPED, CD_TO_JS };

/*
 * A ChannelData message from a known client (RFC 8656 §12.6, the server's side of §12.4).
 * Queued for the peer when the channel is bound and all three lifetimes run; dropped
 * when one is over (a late JS sweep must not keep the flow open) or when it is shorter
 * than its Length; to JS when this module cannot decide (a channel number not mirrored
 * here, a flow that is not eligible, a peer not representable on the relay socket).
 */
static int channel_data_out(relay_t *r, uint8_t *msg, size_t len, int64_t now, int nq, int32_t *meta) {
  uint16_t number = (uint16_t)(msg[0] << 8 | msg[1]);
  size_t dlen = (size_t)(msg[2] << 8 | msg[3]);
  chan_t *c = find_chan_number(r, number);
  if (c == NULL) return CD_TO_JS; /* JS discards an unbound channel (§12.6) */
  perm_t *p = perm_of_slot(r, c->slot);
  if (p == NULL || !p->eligible || c->plen == 0) return CD_TO_JS;
  /* RFC 8656 §12.4 / §12.6: the Length field counts the application data only; over UDP
     padding may be there or not, bytes past Length are ignored; a message shorter than
     4 + Length is discarded. */
  if (4 + dlen > len) {
    meta[M_N + 7]++;
    return CD_DROPPED;
  }
  /* §6 (allocation), §9 (permission), §12 (channel binding: 10 minutes unless refreshed):
     past any of them nothing is relayed. */
  if (now >= r->exp || now >= p->exp || now >= c->exp) {
    meta[M_N + 4]++;
    return CD_DROPPED;
  }
  g_ciov[nq].iov_base = msg + 4;
  g_ciov[nq].iov_len = dlen;
  struct msghdr *m = &g_cmsg[nq].msg_hdr;
  memset(m, 0, sizeof *m);
  m->msg_name = &c->peer;
  m->msg_namelen = c->plen;
  m->msg_iov = &g_ciov[nq];
  m->msg_iovlen = 1;
  g_cfd[nq] = r->fd;
  meta[M_N + 1]++;
  meta[M_N + 2] += (int32_t)dlen;
  return CD_QUEUED;
}

/* RFC 8489 §14.7: FINGERPRINT is the CRC-32 of ISO 3309 / ITU-T V.42 (the one of zlib and
   of src/wire/stun.ts crc32), XORed with 0x5354554e. Table built once (js_init). */
static uint32_t g_crc[256];

static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    g_crc[n] = c;
  }
}

static uint32_t crc32_of(const uint8_t *b, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) c = g_crc[(c ^ b[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/* Where a Send indication's payload goes (one per queued slot: g_cmsg[i].msg_name). */
static struct sockaddr_storage g_cpeer[BATCH];

#define RD16(b) ((uint16_t)((b)[0] << 8 | (b)[1]))

/*
 * A Send indication from a known client (RFC 8656 §11.2, "Receiving a Send Indication"),
 * decided exactly as the JS path decides (src/turn/server.ts onStun, decodeStun,
 * verifyFingerprint, src/turn/handlers/send.ts), or handed to JS when this module cannot
 * be sure. Queued for the peer: a well-formed STUN message (RFC 8489 §5: top two bits 0,
 * the magic cookie, a Length that is a multiple of 4 and matches the datagram), type
 * 0x0016 (method Send 0x006, class indication), attributes walked with their padding
 * (§14), an XOR-PEER-ADDRESS (RFC 8656 §18.3) of the allocation's family and a DATA
 * (§18.4) (the first of each counts, §14), no comprehension-required attribute but those
 * two (DONT-FRAGMENT, §18.9, goes to JS, which sends the datagram with DF set, §14, or
 * discards the Send when it cannot, §11.2; every other one, known or not, goes to JS:
 * RFC 8489 §6.3.2 says an indication with an unknown one is discarded, and JS has the
 * list), a FINGERPRINT if any that is last and
 * right (§14.7, §7.3: a wrong one is "not STUN", JS discards it), an eligible, unexpired
 * permission (RFC 8656 §9) for the peer's IP and an unexpired allocation. Dropped here:
 * only a Send whose permission or allocation is past its time (a late JS sweep must not
 * keep the flow open; JS would discard it too: datapath.ts toPeer). Everything else
 * (no permission, malformed, MESSAGE-INTEGRITY, port 0, ...) goes to JS, which discards
 * or handles it silently (§11.2: a Send indication is never answered).
 */
static int send_indication_out(relay_t *r, uint8_t *msg, size_t len, int64_t now, int nq, int32_t *meta) {
  if (len < 20 || msg[0] != 0x00 || msg[1] != 0x16) return CD_TO_JS; /* top two bits 0 (§5) */
  if (msg[4] != 0x21 || msg[5] != 0x12 || msg[6] != 0xa4 || msg[7] != 0x42) return CD_TO_JS;
  size_t mlen = RD16(msg + 2);
  if ((mlen & 3) != 0 || 20 + mlen != len) return CD_TO_JS;
  const uint8_t *peer = NULL, *data = NULL;
  size_t plen = 0, dlen = 0;
  size_t p = 20, end = len;
  int nattr = 0;
  while (p < end) {
    if (end - p < 4) return CD_TO_JS;
    uint16_t at = RD16(msg + p);
    size_t al = RD16(msg + p + 2);
    size_t vo = p + 4;
    size_t next = vo + ((al + 3) & ~(size_t)3); /* RFC 8489 §14: padded to 4 */
    if (next > end) return CD_TO_JS;
    if (++nattr > 256) return CD_TO_JS; /* MAX_ATTRIBUTES in src/wire/stun.ts */
    if (at == 0x0012) { /* XOR-PEER-ADDRESS */
      if (peer == NULL) peer = msg + vo, plen = al;
    } else if (at == 0x0013) { /* DATA */
      if (data == NULL) data = msg + vo, dlen = al;
    } else if (at == 0x001a) { /* DONT-FRAGMENT: JS sends it with DF set (or discards it) */
      return CD_TO_JS;
    } else if (at == 0x8028) { /* FINGERPRINT: 4 bytes, the last attribute, right */
      if (al != 4 || next != end) return CD_TO_JS;
      uint32_t want = crc32_of(msg, p) ^ 0x5354554eu;
      uint32_t got = (uint32_t)msg[vo] << 24 | (uint32_t)msg[vo + 1] << 16 | (uint32_t)msg[vo + 2] << 8 | msg[vo + 3];
      if (want != got) return CD_TO_JS;
    } else if (at < 0x8000)
      return CD_TO_JS; /* comprehension-required (RFC 8489 §14): JS knows the server's list */
    /* other comprehension-optional attributes are ignored (RFC 8489 §14) */
    p = next;
  }
  if (peer == NULL || data == NULL || plen < 4) return CD_TO_JS;
  /* RFC 8489 §14.2 / RFC 8656 §18.3: X-Port is the port XOR the cookie's top 16 bits; the
     address is XORed with the cookie (IPv4) or the cookie and the transaction ID (IPv6). */
  uint16_t port = (uint16_t)(RD16(peer + 2) ^ 0x2112);
  uint8_t ip[16];
  int iplen;
  if (peer[1] == 0x01 && plen == 8) {
    iplen = 4;
    for (int i = 0; i < 4; i++) ip[i] = peer[4 + i] ^ msg[4 + i];
  } else if (peer[1] == 0x02 && plen == 20) {
    iplen = 16;
    for (int i = 0; i < 16; i++) ip[i] = peer[4 + i] ^ msg[4 + i];
  } else
    return CD_TO_JS;
  /* §11.2 via send.ts: the peer of the allocation's family (the relay socket's) */
  if ((iplen == 4) != (r->fam == AF_INET) || (iplen == 16) != (r->fam == AF_INET6)) return CD_TO_JS;
  if (port == 0) return CD_TO_JS; /* dgram refuses port 0: JS has its own way with it */
  perm_t *pm = find_perm(r, ip, iplen);
  if (pm == NULL || !pm->eligible) return CD_TO_JS; /* §9: no permission, JS discards */
  /* RFC 8656 §6 (allocation), §9 (permission): past either, nothing is relayed */
  if (now >= r->exp || now >= pm->exp) {
    meta[M_N + 4]++;
    return CD_DROPPED;
  }
  struct sockaddr_storage *to = &g_cpeer[nq];
  socklen_t tl;
  if (iplen == 4) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)to;
    memset(s4, 0, sizeof *s4);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    memcpy(&s4->sin_addr, ip, 4);
    tl = sizeof *s4;
  } else {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)to;
    memset(s6, 0, sizeof *s6);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    memcpy(&s6->sin6_addr, ip, 16);
    tl = sizeof *s6;
  }
  g_ciov[nq].iov_base = (void *)data;
  g_ciov[nq].iov_len = dlen;
  struct msghdr *m = &g_cmsg[nq].msg_hdr;
  memset(m, 0, sizeof *m);
  m->msg_name = to;
  m->msg_namelen = tl;
  m->msg_iov = &g_ciov[nq];
  m->msg_iovlen = 1;
  g_cfd[nq] = r->fd;
  meta[M_N + 1]++;
  meta[M_N + 2] += (int32_t)dlen;
  meta[M_N + 8]++;
  return CD_QUEUED;
}

/* The client's address as dgram reports it (rinfo.address: inet_ntop, and %scope for a
   scoped IPv6 address as Node adds it), into a listener record. */
static int address_text(const struct sockaddr_storage *sa, char *out, uint16_t *port) {
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    *port = ntohs(s4->sin_port);
    if (!inet_ntop(AF_INET, &s4->sin_addr, out, LADDR)) return -1;
    return (int)strlen(out);
  }
  if (sa->ss_family != AF_INET6) return -1;
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
  *port = ntohs(s6->sin6_port);
  if (!inet_ntop(AF_INET6, &s6->sin6_addr, out, LADDR)) return -1;
  size_t n = strlen(out);
  if (s6->sin6_scope_id != 0) {
    char ifn[IF_NAMESIZE];
    if (if_indextoname(s6->sin6_scope_id, ifn) != NULL)
      snprintf(out + n, LADDR - n, "%%%s", ifn);
    else
      snprintf(out + n, LADDR - n, "%%%u", s6->sin6_scope_id);
    n = strlen(out);
  }
  return (int)n;
}

/* On POLLERR (libuv stopped the handle): the pending error and the error queue of a UDP
   socket are transient; 0 when the descriptor is really bad (stay stopped). */
static int clear_socket_error(int fd) {
  int e = 0;
  socklen_t el = sizeof e;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0) return 0;
  uint8_t junk[256];
  for (int i = 0; i < 64; i++) {
    struct iovec jv = {junk, sizeof junk};
    struct msghdr jm;
    memset(&jm, 0, sizeof jm);
    jm.msg_iov = &jv;
    jm.msg_iovlen = 1;
    if (recvmsg(fd, &jm, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) break;
  }
  return 1;
}

static void on_listener_readable(uv_poll_t *h, int status, int events) {
  listener_t *l = (listener_t *)h->data;
  if (l->closing || g_ring == NULL) return;
  if (status < 0) {
    if (!clear_socket_error(l->fd))
      uv_poll_stop(h);
    else
      uv_poll_start(h, UV_READABLE, on_listener_readable);
    return;
  }
  int n = recv_batch(l->fd);
  if (n <= 0) return;
  int32_t *meta = g_meta;
  memset(meta + M_N, 0, 9 * sizeof(int32_t));
  int64_t now = now_ms();
  uint32_t seq = ++g_lseq;
  if (seq == 0) seq = ++g_lseq; /* 0 is "never" in relay_t.taint */
  int nslow = 0, nq = 0;
  for (int i = 0; i < n; i++) {
    size_t len = g_rmsg[i].msg_len;
    uint8_t *msg = g_ring + (size_t)i * SLOT;
    struct sockaddr_storage *sa = &g_raddr[i];
    relay_t *r = NULL;
    int looked = 0;
    /* RFC 7983 §7 / RFC 8656 §12: 0x40-0x4F (0x7F with RFC 5766 numbers) is ChannelData */
    if (len >= 4 && msg[0] >= 0x40 && msg[0] <= l->maxb) {
      r = client_find(l->id, sa);
      looked = 1;
      if (r != NULL && !r->closing && r->taint != seq) {
        int v = channel_data_out(r, msg, len, now, nq, meta);
        if (v == CD_QUEUED) nq++;
        if (v != CD_TO_JS) continue;
      }
    } else if (len >= 20 && msg[0] == 0x00 && msg[1] == 0x16) {
      /* RFC 8489 §5 / RFC 7983 §7: STUN; 0x0016 is a Send indication (RFC 8656 §11.2) */
      r = client_find(l->id, sa);
      looked = 1;
      if (r != NULL && !r->closing && r->taint != seq) {
        int v = send_indication_out(r, msg, len, now, nq, meta);
        if (v == CD_QUEUED) nq++;
        if (v != CD_TO_JS) continue;
      }
    }
    if (!looked) r = client_find(l->id, sa);
    if (r != NULL) r->taint = seq; /* the rest of this client's batch keeps its order through JS */
    int32_t *rec = meta + nslow * LREC;
    uint16_t port = 0;
    int tl = address_text(sa, (char *)(rec + 4), &port);
    if (tl < 0) continue; /* not an IP datagram: dgram would not report it either */
    rec[0] = i * SLOT;
    rec[1] = (int32_t)len;
    rec[2] = port;
    rec[3] = tl;
    nslow++;
  }
  if (nq) flush_client_sends(nq, meta);
  meta[M_N] = nslow;
  meta[M_N + 5] = l->id;
  meta[M_N + 6] = 1;
  double *a = g_acc + (size_t)l->owner * ACC_N;
  a[A_LISTENER_BATCHES]++;
  a[A_C2P_PACKETS] += meta[M_N + 1];
  a[A_C2P_BYTES] += meta[M_N + 2];
  a[A_SEND_DROPPED] += meta[M_N + 3];
  a[A_EXPIRED] += meta[M_N + 4];
  a[A_MALFORMED] += meta[M_N + 7];
  a[A_SEND_INDICATIONS] += meta[M_N + 8];
  if (nslow) call_js_batch(g_env);
}

/* ---------------------------------------------------------------- exported functions */

/* init(ring: Buffer(BATCH*SLOT), meta: Int32Array(META_LEN), onBatch: () => void,
        acc: Float64Array(ACC_OWNERS*ACC_N)) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (g_env != NULL && g_env != env) THROW("fast path already initialised in another environment");
  void *ring;
  size_t rlen;
  if (argc < 3 || napi_get_buffer_info(env, argv[0], &ring, &rlen) != napi_ok || rlen < (size_t)BATCH * SLOT)
    THROW("init: ring Buffer too small");
  napi_typedarray_type tt;
  size_t mlen;
  void *meta;
  if (napi_get_typedarray_info(env, argv[1], &tt, &mlen, &meta, NULL, NULL) != napi_ok || tt != napi_int32_array || mlen < META_LEN)
    THROW("init: meta Int32Array too small");
  napi_valuetype vt;
  napi_typeof(env, argv[2], &vt);
  if (vt != napi_function) THROW("init: callback required");
  size_t alen;
  void *acc;
  if (argc < 4 || napi_get_typedarray_info(env, argv[3], &tt, &alen, &acc, NULL, NULL) != napi_ok || tt != napi_float64_array ||
      alen < (size_t)ACC_OWNERS * ACC_N)
    THROW("init: counters Float64Array too small");
  if (g_cb) napi_delete_reference(env, g_cb);
  if (g_ring_ref) napi_delete_reference(env, g_ring_ref);
  if (g_meta_ref) napi_delete_reference(env, g_meta_ref);
  if (g_acc_ref) napi_delete_reference(env, g_acc_ref);
  napi_create_reference(env, argv[3], 1, &g_acc_ref);
  napi_create_reference(env, argv[2], 1, &g_cb);
  napi_create_reference(env, argv[0], 1, &g_ring_ref);
  napi_create_reference(env, argv[1], 1, &g_meta_ref);
  if (g_actx == NULL) {
    napi_value res, name;
    napi_create_object(env, &res);
    napi_create_string_utf8(env, "gatehouse.fastpath", NAPI_AUTO_LENGTH, &name);
    napi_async_init(env, res, name, &g_actx);
  }
  g_ring = ring;
  g_meta = meta;
  g_acc = acc;
  if (g_sq_arena == NULL && (g_sq_arena = malloc(SQ_ARENA)) == NULL) THROW("out of memory");
  g_env = env;
  if (getrandom(g_tid, sizeof g_tid, 0) != sizeof g_tid) THROW("getrandom failed");
  crc_init();
  napi_value out;
  napi_create_object(env, &out);
  napi_value v;
  napi_create_int32(env, BATCH, &v);
  napi_set_named_property(env, out, "batch", v);
  napi_create_int32(env, SLOT, &v);
  napi_set_named_property(env, out, "slot", v);
  napi_create_int32(env, REC, &v);
  napi_set_named_property(env, out, "rec", v);
  napi_create_int32(env, LREC, &v);
  napi_set_named_property(env, out, "lrec", v);
  napi_create_int32(env, M_N, &v);
  napi_set_named_property(env, out, "counters", v);
  napi_create_int32(env, ACC_N, &v);
  napi_set_named_property(env, out, "accN", v);
  napi_create_int32(env, ACC_OWNERS, &v);
  napi_set_named_property(env, out, "accOwners", v);
  return out;
}

/* listener(fd, owner) -> listener id (a dup of fd, for sendmmsg to clients); owner: the
   row of g_acc its batches count in */
static napi_value js_listener(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, owner;
  if (argc < 2 || !arg_i32(env, argv[0], &fd) || fd < 0) THROW("listener: fd required");
  if (!arg_i32(env, argv[1], &owner) || owner < 0 || owner >= ACC_OWNERS) THROW("listener: owner required");
  listener_t *l = calloc(1, sizeof(listener_t));
  if (!l) THROW("out of memory");
  int id = -1;
  for (int i = 0; i < g_nlisteners; i++)
    if (g_listeners[i] == NULL) {
      id = i;
      break;
    }
  if (id < 0) {
    listener_t **nl = realloc(g_listeners, sizeof(listener_t *) * (g_nlisteners + 1));
    if (!nl) {
      free(l);
      THROW("out of memory");
    }
    g_listeners = nl;
    g_listeners[g_nlisteners] = NULL;
    id = g_nlisteners++;
  }
  l->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (l->fd < 0) {
    free(l);
    THROW("listener: dup failed");
  }
  l->id = id;
  l->owner = owner;
  g_listeners[id] = l;
  napi_value out;
  napi_create_int32(env, id, &out);
  return out;
}

/* listenerRead(id, maxFirstByte): read the listener here from now on (JS stops dgram's
   reading right after); maxFirstByte 0x4f (RFC 8656 numbers) or 0x7f (RFC 5766). */
static napi_value js_listener_read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t id, maxb;
  if (argc < 2 || !arg_i32(env, argv[0], &id) || id < 0 || id >= g_nlisteners || g_listeners[id] == NULL ||
      !arg_i32(env, argv[1], &maxb) || maxb < 0x40 || maxb > 0x7f)
    THROW("listenerRead: bad arguments");
  if (g_env == NULL) THROW("listenerRead: init first");
  listener_t *l = g_listeners[id];
  l->maxb = maxb;
  if (l->reading) return undef(env);
  fcntl(l->fd, F_SETFL, fcntl(l->fd, F_GETFL) | O_NONBLOCK);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &l->poll, l->fd) != 0) THROW("listenerRead: uv_poll_init failed");
  l->poll.data = l;
  l->reading = 1;
  uv_poll_start(&l->poll, UV_READABLE, on_listener_readable);
  return undef(env);
}

static void on_listener_closed(uv_handle_t *h) {
  listener_t *l = (listener_t *)h->data;
  close(l->fd);
  free(l);
}

static napi_value js_listener_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t id;
  if (argc >= 1 && arg_i32(env, argv[0], &id) && id >= 0 && id < g_nlisteners && g_listeners[id] != NULL) {
    /* relays still pointing at it stop forwarding (lid -1: to JS) and leave the client table */
    for (int i = 0; i < g_nrelays; i++)
      if (g_relays[i] && g_relays[i]->lid == id) {
        client_remove(g_relays[i]);
        g_relays[i]->lid = -1;
      }
    listener_t *l = g_listeners[id];
    g_listeners[id] = NULL;
    l->closing = 1;
    if (l->reading) {
      uv_poll_stop(&l->poll);
      uv_close((uv_handle_t *)&l->poll, on_listener_closed);
    } else {
      close(l->fd);
      free(l);
    }
  }
  return undef(env);
}

/*
 * open(relayFd, listenerId (-1: none), clientIp (string, as the listener sends to it),
 *      clientPort, allocationRemainingMs, owner (its counters' row in g_acc)) -> relay id
 */
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, lid, cport, owner;
  double rem;
  char ipstr[64];
  size_t iplen;
  if (argc < 6 || !arg_i32(env, argv[0], &fd) || !arg_i32(env, argv[1], &lid) || !arg_i32(env, argv[3], &cport) ||
      !arg_f64(env, argv[4], &rem) || !arg_i32(env, argv[5], &owner) || owner < 0 || owner >= ACC_OWNERS ||
      napi_get_value_string_utf8(env, argv[2], ipstr, sizeof ipstr, &iplen) != napi_ok)
    THROW("open: bad arguments");
  if (g_env == NULL) THROW("open: init first");
  if (lid >= g_nlisteners || (lid >= 0 && g_listeners[lid] == NULL)) THROW("open: unknown listener");
  relay_t *r = calloc(1, sizeof(relay_t));
  if (!r) THROW("out of memory");
  r->lid = lid;
  r->owner = owner;
  if (lid >= 0) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&r->client;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r->client;
    if (inet_pton(AF_INET, ipstr, &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
      s4->sin_port = htons((uint16_t)cport);
      r->clen = sizeof(*s4);
    } else if (inet_pton(AF_INET6, ipstr, &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons((uint16_t)cport);
      r->clen = sizeof(*s6);
    } else {
      free(r);
      THROW("open: client address is not an IP literal");
    }
  }
  int id = -1;
  for (int i = 0; i < g_nrelays; i++)
    if (g_relays[i] == NULL) {
      id = i;
      break;
    }
  if (id < 0) {
    int cap = g_nrelays ? g_nrelays * 2 : 64;
    relay_t **nr = realloc(g_relays, sizeof(relay_t *) * cap);
    if (!nr) {
      free(r);
      THROW("out of memory");
    }
    for (int i = g_nrelays; i < cap; i++) nr[i] = NULL;
    g_relays = nr;
    id = g_nrelays;
    g_nrelays = cap;
  }
  r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r->fd < 0) {
    free(r);
    THROW("open: dup failed");
  }
  fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK);
  struct sockaddr_storage self;
  socklen_t sl = sizeof self;
  r->fam = getsockname(r->fd, (struct sockaddr *)&self, &sl) == 0 ? self.ss_family : AF_UNSPEC;
  if (!rebuild(r) || (lid >= 0 && !client_insert(r))) {
    close(r->fd);
    free(r->ptab), free(r->ktab), free(r->ntab), free(r->slotidx);
    free(r);
    THROW("out of memory");
  }
  r->exp = deadline(rem);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &r->poll, r->fd) != 0) {
    client_remove(r);
    close(r->fd);
    free(r->ptab), free(r->ktab), free(r->ntab), free(r->slotidx);
    free(r);
    THROW("open: uv_poll_init failed");
  }
  r->poll.data = r;
  r->id = id;
  g_relays[id] = r;
  uv_poll_start(&r->poll, UV_READABLE, on_readable);
  napi_value out;
  napi_create_int32(env, id, &out);
  return out;
}

/*
 * sendTo(relayId, buf, off, len, peerIp (4|16 bytes), peerPort) -> 1 sent, 0 lost, -1 not
 * sent here. What JavaScript relays to a peer (a hooked flow's datagram after the hook
 * let it through, RFC 8656 §11.2 / §12.6) goes out of the relay socket without dgram's
 * per-send objects and lookup: during a batch call queued for sendmmsg after it (the
 * relay's descriptor is a dup that stays open until its uv_close callback, so it is still
 * this relay's then), else one sendto(2). Lost: the socket's buffer was full or the
 * send failed (counted in sendDropped; relayed UDP may be lost, and nothing is queued
 * without bound). -1: the relay is closed here, or the peer is not of its socket's family:
 * JavaScript sends it through dgram as before.
 */
static napi_value js_send_to(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t id, off, len, port;
  void *data, *ip;
  size_t dlen, iplen;
  if (argc < 6 || !arg_i32(env, argv[0], &id) || napi_get_buffer_info(env, argv[1], &data, &dlen) != napi_ok ||
      !arg_i32(env, argv[2], &off) || !arg_i32(env, argv[3], &len) || napi_get_buffer_info(env, argv[4], &ip, &iplen) != napi_ok ||
      !arg_i32(env, argv[5], &port) || off < 0 || len < 0 || (size_t)off + (size_t)len > dlen || port <= 0 || port > 65535)
    THROW("sendTo: bad arguments");
  int32_t res = -1;
  relay_t *r = id >= 0 && id < g_nrelays ? g_relays[id] : NULL;
  struct sockaddr_storage sa;
  socklen_t sl = r != NULL && !r->closing ? peer_sockaddr(r, ip, iplen, (uint16_t)port, &sa) : 0;
  if (sl > 0 && g_in_batch && g_sq_arena != NULL && (size_t)len <= SQ_ARENA) {
    if (g_sqn == SQ_MAX || g_sq_used + (size_t)len > SQ_ARENA) flush_js_sends();
    int k = g_sqn++;
    uint8_t *dst = g_sq_arena + g_sq_used;
    memcpy(dst, (uint8_t *)data + off, (size_t)len);
    g_sq_used += (size_t)len;
    g_sqaddr[k] = sa;
    g_sqiov[k].iov_base = dst;
    g_sqiov[k].iov_len = (size_t)len;
    struct msghdr *m = &g_sqmsg[k].msg_hdr;
    memset(m, 0, sizeof *m);
    m->msg_name = &g_sqaddr[k];
    m->msg_namelen = sl;
    m->msg_iov = &g_sqiov[k];
    m->msg_iovlen = 1;
    g_sqfd[k] = r->fd;
    g_sqowner[k] = r->owner;
    res = 1;
  } else if (sl > 0) {
    ssize_t n;
    do n = sendto(r->fd, (uint8_t *)data + off, (size_t)len, MSG_DONTWAIT, (struct sockaddr *)&sa, sl);
    while (n < 0 && errno == EINTR);
    res = n < 0 ? 0 : 1;
    if (n < 0) g_acc[(size_t)r->owner * ACC_N + A_SEND_DROPPED]++;
  }
  napi_value out;
  napi_create_int32(env, res, &out);
  return out;
}

static void on_closed(uv_handle_t *h) {
  relay_t *r = (relay_t *)h->data;
  close(r->fd);
  free(r->perms);
  free(r->chans);
  free(r->ptab), free(r->ktab), free(r->ntab), free(r->slotidx);
  free(r);
}

/* close(relayId): stops reading at once; memory goes on the next loop turn. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  relay_t *r = argc ? relay_arg(env, argv[0]) : NULL;
  if (r) {
    r->closing = 1;
    client_remove(r);
    g_relays[r->id] = NULL;
    uv_poll_stop(&r->poll);
    uv_close((uv_handle_t *)&r->poll, on_closed);
  }
  return undef(env);
}

/* expiry(relayId, allocationRemainingMs) */
static napi_value js_expiry(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  relay_t *r = argc >= 2 ? relay_arg(env, argv[0]) : NULL;
  double rem;
  if (r && arg_f64(env, argv[1], &rem)) r->exp = deadline(rem);
  return undef(env);
}

/* perm(relayId, slot, ipBytes(4|16), eligible, remainingMs): install or refresh */
static napi_value js_perm(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  relay_t *r = argc >= 5 ? relay_arg(env, argv[0]) : NULL;
  int32_t slot;
  uint8_t ip[16], len;
  bool el;
  double rem;
  if (!r || !arg_i32(env, argv[1], &slot) || !ip_arg(env, argv[2], ip, &len) || napi_get_value_bool(env, argv[3], &el) != napi_ok ||
      !arg_f64(env, argv[4], &rem))
    THROW("perm: bad arguments");
  if (slot < 0 || slot > (1 << 20)) THROW("perm: bad slot");
  perm_t *p = perm_of_slot(r, slot);
  int added = 0;
  if (p == NULL) {
    if (find_perm(r, ip, len)) THROW("perm: that address has another slot");
    added = 1;
    if (r->nperm == r->capperm) {
      int cap = r->capperm ? r->capperm * 2 : 4;
      perm_t *np = realloc(r->perms, sizeof(perm_t) * cap);
      if (!np) THROW("out of memory");
      r->perms = np;
      r->capperm = cap;
    }
    p = &r->perms[r->nperm++];
    memset(p, 0, sizeof(*p));
    p->slot = slot;
  }
  int moved = p->iplen != len || memcmp(p->ip, ip, len) != 0;
  memcpy(p->ip, ip, len);
  p->iplen = len;
  p->eligible = el ? 1 : 0;
  p->exp = deadline(rem);
  if ((added || moved) && !rebuild(r)) {
    /* no tables: the permission is not there for lookups; JS must not rely on it */
    r->nperm -= added;
    THROW("out of memory");
  }
  return undef(env);
}

/* unperm(relayId, slot): the permission and its channels go */
static napi_value js_unperm(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  relay_t *r = argc >= 2 ? relay_arg(env, argv[0]) : NULL;
  int32_t slot;
  if (!r || !arg_i32(env, argv[1], &slot)) return undef(env);
  for (int i = 0; i < r->nperm; i++)
    if (r->perms[i].slot == slot) {
      r->perms[i] = r->perms[--r->nperm];
      break;
    }
  for (int i = 0; i < r->nchan;)
    if (r->chans[i].slot == slot)
      r->chans[i] = r->chans[--r->nchan];
    else
      i++;
  if (!rebuild(r)) {
    /* the old tables point into moved arrays: forget them all (everything to JS) */
    r->nperm = r->nchan = 0;
    free(r->ptab), free(r->ktab), free(r->ntab), free(r->slotidx);
    r->ptab = r->ktab = r->ntab = r->slotidx = NULL;
    r->pcap = r->ccap = r->nslotidx = 0;
    THROW("out of memory");
  }
  return undef(env);
}

/* chan(relayId, slot, peerPort, number, remainingMs): bind or refresh; number 0 removes */
static napi_value js_chan(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  relay_t *r = argc >= 5 ? relay_arg(env, argv[0]) : NULL;
  int32_t slot, port, number;
  double rem;
  if (!r || !arg_i32(env, argv[1], &slot) || !arg_i32(env, argv[2], &port) || !arg_i32(env, argv[3], &number) || !arg_f64(env, argv[4], &rem) ||
      port < 0 || port > 65535 || number < 0 || number > 0xffff)
    THROW("chan: bad arguments");
  chan_t *c = find_chan(r, slot, (uint16_t)port);
  int changed = 0;
  if (number == 0) {
    if (c == NULL) return undef(env);
    *c = r->chans[--r->nchan];
    changed = 1;
  } else if (c == NULL) {
    changed = 1;
    if (r->nchan == r->capchan) {
      int cap = r->capchan ? r->capchan * 2 : 4;
      chan_t *nc = realloc(r->chans, sizeof(chan_t) * cap);
      if (!nc) THROW("out of memory");
      r->chans = nc;
      r->capchan = cap;
    }
    c = &r->chans[r->nchan++];
    c->slot = slot;
    c->port = (uint16_t)port;
    c->number = 0;
  }
  if (number != 0) {
    if (c->number != (uint16_t)number) changed = 1;
    c->number = (uint16_t)number;
    c->exp = deadline(rem);
  }
  if (changed && !rebuild(r)) {
    r->nperm = r->nchan = 0;
    free(r->ptab), free(r->ktab), free(r->ntab), free(r->slotidx);
    r->ptab = r->ktab = r->ntab = r->slotidx = NULL;
    r->pcap = r->ccap = r->nslotidx = 0;
    THROW("out of memory");
  }
  return undef(env);
}

/*
 * DONT-FRAGMENT (RFC 8656 §18.9): the DF bit of the datagrams a relay socket sends.
 * Linux has no per-datagram DF for IPv4 (ip(7): IP_MTU_DISCOVER is per socket), so a
 * datagram that must go with DF is sent here, synchronously, between setting
 * IP_PMTUDISC_DO (IPV6_PMTUDISC_DO for IPv6, ipv6(7)) and putting the socket's previous
 * mode back: the JS thread is the only writer of the relay socket, so no other datagram
 * goes out in between. IP_PMTUDISC_DO sets DF and never fragments locally: a datagram
 * larger than the path MTU fails with EMSGSIZE instead of going out in fragments.
 */
static int df_levels(int32_t family, int *level, int *opt) {
  if (family == 4) *level = IPPROTO_IP, *opt = IP_MTU_DISCOVER;
  else if (family == 6) *level = IPPROTO_IPV6, *opt = IPV6_MTU_DISCOVER;
  else return 0;
  return 1;
}

/* The (fd, family) every DF call starts with, and that family's option: 1, or 0 when malformed. */
static int df_target(napi_env env, size_t argc, napi_value *argv, int32_t *fd, int32_t *fam, int *level, int *opt) {
  return argc >= 2 && arg_i32(env, argv[0], fd) && arg_i32(env, argv[1], fam) && *fd >= 0 && df_levels(*fam, level, opt);
}

/* dontFragmentMode(fd, family) -> the socket's IP(V6)_MTU_DISCOVER value, or -errno. */
static napi_value js_df_mode(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, fam;
  int level, opt, val = 0;
  socklen_t len = sizeof val;
  int rc;
  if (!df_target(env, argc, argv, &fd, &fam, &level, &opt)) rc = -EINVAL;
  else rc = getsockopt(fd, level, opt, &val, &len) == 0 ? val : -errno;
  napi_value out;
  napi_create_int32(env, rc, &out);
  return out;
}

/* setDontFragment(fd, family, on) -> 0 or errno: IP(V6)_PMTUDISC_DO, or the kernel default WANT. */
static napi_value js_df_set(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, fam;
  bool on = false;
  int level, opt, rc;
  if (argc < 3 || !df_target(env, argc, argv, &fd, &fam, &level, &opt) || napi_get_value_bool(env, argv[2], &on) != napi_ok)
    rc = EINVAL;
  else {
    int val = fam == 4 ? (on ? IP_PMTUDISC_DO : IP_PMTUDISC_WANT) : (on ? IPV6_PMTUDISC_DO : IPV6_PMTUDISC_WANT);
    rc = setsockopt(fd, level, opt, &val, sizeof val) == 0 ? 0 : errno;
  }
  napi_value out;
  napi_create_int32(env, rc, &out);
  return out;
}

/* sendDontFragment(fd, family, data, ip, port) -> 0 or errno: one datagram with DF set. */
static napi_value js_df_send(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, fam, port;
  void *data = NULL;
  size_t dlen = 0;
  char ipstr[INET6_ADDRSTRLEN + 1];
  size_t iplen = 0;
  int level, opt, rc = EINVAL;
  napi_value out;
  struct sockaddr_storage ss;
  socklen_t slen;
  if (argc < 5 || !df_target(env, argc, argv, &fd, &fam, &level, &opt) || napi_get_buffer_info(env, argv[2], &data, &dlen) != napi_ok ||
      napi_get_value_string_utf8(env, argv[3], ipstr, sizeof ipstr, &iplen) != napi_ok || !arg_i32(env, argv[4], &port) || port <= 0 ||
      !sockaddr_from_literal(fam, ipstr, port, &ss, &slen))
    goto done;
  int prev = 0, df = fam == 4 ? IP_PMTUDISC_DO : IPV6_PMTUDISC_DO;
  socklen_t plen = sizeof prev;
  if (getsockopt(fd, level, opt, &prev, &plen) != 0 || setsockopt(fd, level, opt, &df, sizeof df) != 0) {
    rc = errno;
    goto done;
  }
  ssize_t n;
  do n = sendto(fd, data, dlen, 0, (struct sockaddr *)&ss, slen);
  while (n < 0 && errno == EINTR);
  rc = n < 0 ? errno : 0;
  if (prev != df) setsockopt(fd, level, opt, &prev, sizeof prev);
done:
  napi_create_int32(env, rc, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
      {"init", 0, js_init, 0, 0, 0, napi_default, 0},         {"listener", 0, js_listener, 0, 0, 0, napi_default, 0},
      {"listenerClose", 0, js_listener_close, 0, 0, 0, napi_default, 0}, {"open", 0, js_open, 0, 0, 0, napi_default, 0},
      {"close", 0, js_close, 0, 0, 0, napi_default, 0},       {"expiry", 0, js_expiry, 0, 0, 0, napi_default, 0},
      {"perm", 0, js_perm, 0, 0, 0, napi_default, 0},         {"unperm", 0, js_unperm, 0, 0, 0, napi_default, 0},
      {"chan", 0, js_chan, 0, 0, 0, napi_default, 0},         {"listenerRead", 0, js_listener_read, 0, 0, 0, napi_default, 0},
      {"sendTo", 0, js_send_to, 0, 0, 0, napi_default, 0},
      {"dontFragmentMode", 0, js_df_mode, 0, 0, 0, napi_default, 0},
      {"setDontFragment", 0, js_df_set, 0, 0, 0, napi_default, 0},
      {"sendDontFragment", 0, js_df_send, 0, 0, 0, napi_default, 0},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  napi_value v;
  napi_create_int32(env, META_LEN, &v);
  napi_set_named_property(env, exports, "metaLength", v);
  napi_create_int32(env, BATCH * SLOT, &v);
  napi_set_named_property(env, exports, "ringLength", v);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
