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
#include <netinet/in.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define BATCH 32
#define SLOT 65536 /* larger than any UDP payload (65507): nothing is truncated */
#define REC 5      /* int32 per record handed to JS: relay id, permission slot, peer port, offset, length */
/* meta[] after the records: records, fast packets, fast bytes, send drops, expired drops,
   and the relay id the batch was read from (every record and counter of a batch is of that
   one relay: JS hands the batch to the server owning it, src/turn/fastpath.ts) */
#define M_N (BATCH * REC)
#define META_LEN (M_N + 6)

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
} chan_t;

typedef struct relay {
  int id;
  int fd;
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
} relay_t;

static napi_env g_env = NULL;
static napi_ref g_cb = NULL, g_ring_ref = NULL, g_meta_ref = NULL;
static napi_async_context g_actx = NULL;
static uint8_t *g_ring = NULL;
static int32_t *g_meta = NULL;
static relay_t **g_relays = NULL;
static int g_nrelays = 0;
static int *g_listeners = NULL; /* dup'd fds, -1 free */
static int g_nlisteners = 0;
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

static perm_t *find_perm(relay_t *r, const uint8_t *ip, int len) {
  for (int i = 0; i < r->nperm; i++)
    if (r->perms[i].iplen == len && memcmp(r->perms[i].ip, ip, len) == 0) return &r->perms[i];
  return NULL;
}

static chan_t *find_chan(relay_t *r, int32_t slot, uint16_t port) {
  for (int i = 0; i < r->nchan; i++)
    if (r->chans[i].slot == slot && r->chans[i].port == port) return &r->chans[i];
  return NULL;
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

static void flush(int lid, int n, int32_t *meta) {
  int off = 0;
  while (off < n) {
    int sent = sendmmsg(g_listeners[lid], g_smsg + off, n - off, MSG_DONTWAIT);
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

static void on_readable(uv_poll_t *h, int status, int events) {
  relay_t *r = (relay_t *)h->data;
  if (r->closing || g_ring == NULL) return;
  if (status < 0) {
    /* libuv stopped the handle on POLLERR. On a UDP socket that is a pending socket error
       (an ICMP error, RFC 8656 §11.5, reported on a connected socket) or the error queue
       (IP_RECVERR): transient. Left stopped, the relay would read nothing more while the
       allocation lives. Clear both and read on; a descriptor that is really bad stays
       stopped (JS closes the allocation's socket anyway). */
    int e = 0;
    socklen_t el = sizeof e;
    if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0) {
      uv_poll_stop(h);
      return;
    }
    uint8_t junk[256];
    for (int i = 0; i < 64; i++) {
      struct iovec jv = {junk, sizeof junk};
      struct msghdr jm;
      memset(&jm, 0, sizeof jm);
      jm.msg_iov = &jv;
      jm.msg_iovlen = 1;
      if (recvmsg(r->fd, &jm, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) break;
    }
    uv_poll_start(h, UV_READABLE, on_readable);
    return;
  }
  for (int i = 0; i < BATCH; i++) {
    g_riov[i].iov_base = g_ring + (size_t)i * SLOT;
    g_riov[i].iov_len = SLOT;
    memset(&g_rmsg[i].msg_hdr, 0, sizeof(struct msghdr));
    g_rmsg[i].msg_hdr.msg_iov = &g_riov[i];
    g_rmsg[i].msg_hdr.msg_iovlen = 1;
    g_rmsg[i].msg_hdr.msg_name = &g_raddr[i];
    g_rmsg[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
  }
  int n = recvmmsg(r->fd, g_rmsg, BATCH, MSG_DONTWAIT, NULL);
  if (n <= 0) return; /* EAGAIN, or an ICMP error reported on the socket: nothing to relay */
  int32_t *meta = g_meta;
  memset(meta + M_N, 0, 5 * sizeof(int32_t));
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
  /* One call per batch: the slow records, and the counters of what was forwarded here. */
  if (nslow || nfast || meta[M_N + 4] || meta[M_N + 3]) call_js(g_env);
}

/* ---------------------------------------------------------------- exported functions */

/* init(ring: Buffer(BATCH*SLOT), meta: Int32Array(META_LEN), onBatch: () => void) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
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
  if (g_cb) napi_delete_reference(env, g_cb);
  if (g_ring_ref) napi_delete_reference(env, g_ring_ref);
  if (g_meta_ref) napi_delete_reference(env, g_meta_ref);
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
  g_env = env;
  if (getrandom(g_tid, sizeof g_tid, 0) != sizeof g_tid) THROW("getrandom failed");
  napi_value out;
  napi_create_object(env, &out);
  napi_value v;
  napi_create_int32(env, BATCH, &v);
  napi_set_named_property(env, out, "batch", v);
  napi_create_int32(env, SLOT, &v);
  napi_set_named_property(env, out, "slot", v);
  napi_create_int32(env, REC, &v);
  napi_set_named_property(env, out, "rec", v);
  return out;
}

/* listener(fd) -> listener id (a dup of fd, for sendmmsg to clients) */
static napi_value js_listener(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  if (argc < 1 || !arg_i32(env, argv[0], &fd) || fd < 0) THROW("listener: fd required");
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) THROW("listener: dup failed");
  int id = -1;
  for (int i = 0; i < g_nlisteners; i++)
    if (g_listeners[i] < 0) {
      id = i;
      break;
    }
  if (id < 0) {
    int *nl = realloc(g_listeners, sizeof(int) * (g_nlisteners + 1));
    if (!nl) {
      close(d);
      THROW("out of memory");
    }
    g_listeners = nl;
    id = g_nlisteners++;
  }
  g_listeners[id] = d;
  napi_value out;
  napi_create_int32(env, id, &out);
  return out;
}

static napi_value js_listener_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t id;
  if (argc >= 1 && arg_i32(env, argv[0], &id) && id >= 0 && id < g_nlisteners && g_listeners[id] >= 0) {
    /* relays still pointing at it stop forwarding (lid -1: to JS) */
    for (int i = 0; i < g_nrelays; i++)
      if (g_relays[i] && g_relays[i]->lid == id) g_relays[i]->lid = -1;
    close(g_listeners[id]);
    g_listeners[id] = -1;
  }
  return undef(env);
}

/*
 * open(relayFd, listenerId (-1: none), clientIp (string, as the listener sends to it),
 *      clientPort, allocationRemainingMs) -> relay id
 */
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, lid, cport;
  double rem;
  char ipstr[64];
  size_t iplen;
  if (argc < 5 || !arg_i32(env, argv[0], &fd) || !arg_i32(env, argv[1], &lid) || !arg_i32(env, argv[3], &cport) ||
      !arg_f64(env, argv[4], &rem) ||
      napi_get_value_string_utf8(env, argv[2], ipstr, sizeof ipstr, &iplen) != napi_ok)
    THROW("open: bad arguments");
  if (g_env == NULL) THROW("open: init first");
  if (lid >= g_nlisteners || (lid >= 0 && g_listeners[lid] < 0)) THROW("open: unknown listener");
  relay_t *r = calloc(1, sizeof(relay_t));
  if (!r) THROW("out of memory");
  r->lid = lid;
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
  r->exp = deadline(rem);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &r->poll, r->fd) != 0) {
    close(r->fd);
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

static void on_closed(uv_handle_t *h) {
  relay_t *r = (relay_t *)h->data;
  close(r->fd);
  free(r->perms);
  free(r->chans);
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
  perm_t *p = NULL;
  for (int i = 0; i < r->nperm; i++)
    if (r->perms[i].slot == slot) p = &r->perms[i];
  if (p == NULL) {
    if (find_perm(r, ip, len)) THROW("perm: that address has another slot");
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
  memcpy(p->ip, ip, len);
  p->iplen = len;
  p->eligible = el ? 1 : 0;
  p->exp = deadline(rem);
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
  if (number == 0) {
    if (c) *c = r->chans[--r->nchan];
    return undef(env);
  }
  if (c == NULL) {
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
  }
  c->number = (uint16_t)number;
  c->exp = deadline(rem);
  return undef(env);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
      {"init", 0, js_init, 0, 0, 0, napi_default, 0},         {"listener", 0, js_listener, 0, 0, 0, napi_default, 0},
      {"listenerClose", 0, js_listener_close, 0, 0, 0, napi_default, 0}, {"open", 0, js_open, 0, 0, 0, napi_default, 0},
      {"close", 0, js_close, 0, 0, 0, napi_default, 0},       {"expiry", 0, js_expiry, 0, 0, 0, napi_default, 0},
      {"perm", 0, js_perm, 0, 0, 0, napi_default, 0},         {"unperm", 0, js_unperm, 0, 0, 0, napi_default, 0},
      {"chan", 0, js_chan, 0, 0, 0, napi_default, 0},
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
