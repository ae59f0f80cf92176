/*
 * gatehouse_nfqueue: a small N-API binding over libnetfilter_queue (the legacy
 * nfq_* API over libnfnetlink; no libmnl headers needed) for the PCP firewall path's
 * inline inspection (src/pcp/firewall/nfqueue.ts is its only user).
 *
 *   const q = new NfQueue(queueNum, maxLen, failOpen, batch, rcvbuf,
 *                         (id, payload, mark, hook, indev, outdev) => { ... });
 *   q.verdict(id, verdict, mark)   verdict: 1 = NF_ACCEPT, 0 = NF_DROP; mark: -1 = unchanged
 *   q.stats() -> { received, enobufs, errors, exceptions }
 *   q.ref(bool)  q.close()
 *
 * Reading is integrated with libuv: a uv_poll handle on the netlink socket (non-blocking);
 * when it becomes readable up to `batch` recv() calls are drained in one go, each message
 * dispatched through nfq_handle_packet() to the JS callback. The whole batch runs inside one
 * N-API callback scope, so promises/microtasks scheduled by the callback run after the batch.
 *
 * The payload handed to JS is a COPY of the full IP packet (napi_create_buffer_copy): the
 * callback may keep it. Verdicts are by packet id (nfq_set_verdict / nfq_set_verdict2 when a
 * mark is set); a verdict may come later (a held packet): the kernel keeps the packet queued
 * until then (bounded by the queue's max length; the JS side bounds how many and how long).
 *
 * Fail mode: NFQA_CFG_F_FAIL_OPEN (kernel accepts instead of dropping when the queue is full)
 * is set when failOpen is true; otherwise cleared (default closed). If the JS callback throws,
 * the packet gets the fail-mode verdict here (accept when failOpen, else drop).
 */
#define _GNU_SOURCE 1
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <libnfnetlink/libnfnetlink.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <sched.h>
#include <unistd.h>

typedef struct {
  napi_env env;
  struct nfq_handle *h;
  struct nfq_q_handle *qh;
  int fd;
  uv_poll_t poll;
  int poll_inited;
  int open;        /* the queue is bound and polled */
  int dispatching; /* inside on_readable: close() is deferred */
  int close_wanted;
  int handle_closed; /* uv_close callback ran (or never inited) */
  int finalized;     /* the JS object is gone */
  int fail_open;
  int batch;
  napi_ref cb;
  napi_ref self; /* strong while open: the reader lives as long as the queue is bound */
  napi_async_context actx;
  char *buf;
  size_t buflen;
  double received, enobufs, errors, exceptions;
  /* valid during dispatch only */
  napi_value js_cb, js_self;
} Queue;

#define CHECK(call)                                                    \
  do {                                                                 \
    if ((call) != napi_ok) {                                           \
      napi_throw_error(env, NULL, "gatehouse_nfqueue: N-API failure"); \
      return NULL;                                                     \
    }                                                                  \
  } while (0)

static void maybe_free(Queue *q) {
  if (q->finalized && q->handle_closed) {
    free(q->buf);
    free(q);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  Queue *q = (Queue *)h->data;
  q->handle_closed = 1;
  maybe_free(q);
}

/* Unbinds the queue (the kernel drops what is still queued: no verdict comes from a closed
 * reader), closes the socket, releases the JS references. Not during dispatch. */
static void do_close(Queue *q, int release_js) {
  if (q->open) {
    q->open = 0;
    if (q->poll_inited) {
      uv_poll_stop(&q->poll);
      uv_close((uv_handle_t *)&q->poll, on_handle_closed);
    } else {
      q->handle_closed = 1;
    }
    if (q->qh) nfq_destroy_queue(q->qh);
    if (q->h) nfq_close(q->h);
    q->qh = NULL;
    q->h = NULL;
  }
  if (release_js) {
    napi_env env = q->env;
    if (q->cb) napi_delete_reference(env, q->cb);
    if (q->self) napi_delete_reference(env, q->self);
    if (q->actx) napi_async_destroy(env, q->actx);
    q->cb = NULL;
    q->self = NULL;
    q->actx = NULL;
  }
}

static int pkt_cb(struct nfq_q_handle *qh, struct nfgenmsg *nfmsg, struct nfq_data *nfa, void *data) {
  Queue *q = (Queue *)data;
  napi_env env = q->env;
  struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
  if (!ph) return 0;
  uint32_t id = ntohl(ph->packet_id);
  q->received++;
  unsigned char *payload = NULL;
  int len = nfq_get_payload(nfa, &payload);
  if (len < 0) len = 0;
  napi_value argv[6], ret;
  int ok = napi_create_uint32(env, id, &argv[0]) == napi_ok &&
           napi_create_buffer_copy(env, (size_t)len, payload, NULL, &argv[1]) == napi_ok &&
           napi_create_uint32(env, nfq_get_nfmark(nfa), &argv[2]) == napi_ok &&
           napi_create_uint32(env, ph->hook, &argv[3]) == napi_ok &&
           napi_create_uint32(env, nfq_get_indev(nfa), &argv[4]) == napi_ok &&
           napi_create_uint32(env, nfq_get_outdev(nfa), &argv[5]) == napi_ok;
  napi_status st = ok ? napi_call_function(env, q->js_self, q->js_cb, 6, argv, &ret) : napi_generic_failure;
  if (st != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value e;
      napi_get_and_clear_last_exception(env, &e);
    }
    q->exceptions++;
    /* The fail-mode verdict: the packet is never left without one. */
    if (q->qh) nfq_set_verdict(q->qh, id, q->fail_open ? NF_ACCEPT : NF_DROP, 0, NULL);
  }
  return 0;
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  Queue *q = (Queue *)handle->data;
  if (!q->open) return;
  napi_env env = q->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_callback_scope cscope = NULL;
  if (napi_get_reference_value(env, q->self, &q->js_self) != napi_ok ||
      napi_get_reference_value(env, q->cb, &q->js_cb) != napi_ok ||
      napi_open_callback_scope(env, q->js_self, q->actx, &cscope) != napi_ok) {
    napi_close_handle_scope(env, scope);
    return;
  }
  q->dispatching = 1;
  for (int i = 0; i < q->batch && q->open && !q->close_wanted; i++) {
    ssize_t n = recv(q->fd, q->buf, q->buflen, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      /* ENOBUFS: the socket buffer overflowed and the kernel dropped packets (counted). */
      if (errno == ENOBUFS) {
        q->enobufs++;
        continue;
      }
      q->errors++;
      break;
    }
    if (n == 0) break;
    nfq_handle_packet(q->h, q->buf, (int)n);
  }
  q->dispatching = 0;
  napi_close_callback_scope(env, cscope);
  napi_close_handle_scope(env, scope);
  if (q->close_wanted) do_close(q, 1);
}

static void finalize(napi_env env, void *data, void *hint) {
  Queue *q = (Queue *)data;
  do_close(q, 0);
  q->finalized = 1;
  maybe_free(q);
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "nfqueue: %s: %s", what, strerror(err));
  napi_value m, e, code;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m) == napi_ok &&
      napi_create_error(env, NULL, m, &e) == napi_ok &&
      napi_create_int32(env, err, &code) == napi_ok) {
    napi_set_named_property(env, e, "errno", code);
    napi_throw(env, e);
  } else {
    napi_throw_error(env, NULL, msg);
  }
  return NULL;
}

static int64_t get_int(napi_env env, napi_value v, int64_t lo, int64_t hi) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return INT64_MIN;
  if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) return INT64_MIN;
  return (int64_t)d;
}

/* new NfQueue(queueNum, maxLen, failOpen, batch, rcvbuf, callback) */
static napi_value ctor(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  if (argc < 6) {
    napi_throw_type_error(env, NULL, "NfQueue(queueNum, maxLen, failOpen, batch, rcvbuf, callback)");
    return NULL;
  }
  int64_t num = get_int(env, argv[0], 0, 65535);
  int64_t maxlen = get_int(env, argv[1], 1, 1 << 20);
  bool fail_open = false;
  int64_t batch = get_int(env, argv[3], 1, 4096);
  int64_t rcvbuf = get_int(env, argv[4], 0, 1 << 30);
  napi_valuetype t;
  if (num == INT64_MIN || maxlen == INT64_MIN || batch == INT64_MIN || rcvbuf == INT64_MIN ||
      napi_get_value_bool(env, argv[2], &fail_open) != napi_ok || napi_typeof(env, argv[5], &t) != napi_ok ||
      t != napi_function) {
    napi_throw_range_error(env, NULL, "NfQueue: bad arguments");
    return NULL;
  }
  Queue *q = calloc(1, sizeof *q);
  if (!q) return throw_errno(env, "calloc", ENOMEM);
  q->env = env;
  q->fail_open = fail_open;
  q->batch = (int)batch;
  q->handle_closed = 1; /* until the poll handle is inited */
  q->buflen = 0x10000 + 4096;
  q->buf = malloc(q->buflen);
  if (!q->buf) {
    free(q);
    return throw_errno(env, "malloc", ENOMEM);
  }
  errno = 0;
  q->h = nfq_open();
  if (!q->h) {
    int e = errno ? errno : EPERM;
    free(q->buf);
    free(q);
    return throw_errno(env, "nfq_open", e);
  }
  /* No-ops since Linux 3.8; kept for older kernels (errors ignored: another reader may hold them). */
  nfq_unbind_pf(q->h, AF_INET);
  nfq_bind_pf(q->h, AF_INET);
  nfq_unbind_pf(q->h, AF_INET6);
  nfq_bind_pf(q->h, AF_INET6);
  errno = 0;
  q->qh = nfq_create_queue(q->h, (uint16_t)num, pkt_cb, q);
  const char *what = NULL;
  int err = 0;
  if (!q->qh) {
    what = "bind queue (another reader? not root?)";
    err = errno ? errno : EBUSY;
  } else if (nfq_set_mode(q->qh, NFQNL_COPY_PACKET, 0xffff) < 0) {
    what = "set copy mode";
    err = errno;
  } else if (nfq_set_queue_maxlen(q->qh, (uint32_t)maxlen) < 0) {
    what = "set queue maxlen";
    err = errno;
  } else if (nfq_set_queue_flags(q->qh, NFQA_CFG_F_FAIL_OPEN, fail_open ? NFQA_CFG_F_FAIL_OPEN : 0) < 0) {
    what = "set fail-open flag";
    err = errno;
  }
  if (what) {
    if (q->qh) nfq_destroy_queue(q->qh);
    nfq_close(q->h);
    free(q->buf);
    free(q);
    return throw_errno(env, what, err ? err : EINVAL);
  }
  if (rcvbuf > 0) nfnl_rcvbufsiz(nfq_nfnlh(q->h), (unsigned int)rcvbuf);
  q->fd = nfq_fd(q->h);
  fcntl(q->fd, F_SETFL, fcntl(q->fd, F_GETFL) | O_NONBLOCK);
  /* Verdicts for packets that no longer exist (a late verdict after the kernel flushed them)
   * get ENOENT acks we do not ask for: no NLM_F_ACK is set by nfq_set_verdict. */
  uv_loop_t *loop;
  napi_value name;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok ||
      napi_create_string_utf8(env, "gatehouse.nfqueue", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &q->actx) != napi_ok || uv_poll_init(loop, &q->poll, q->fd) != 0) {
    nfq_destroy_queue(q->qh);
    nfq_close(q->h);
    free(q->buf);
    free(q);
    napi_throw_error(env, NULL, "nfqueue: libuv poll init failed");
    return NULL;
  }
  q->poll.data = q;
  q->poll_inited = 1;
  q->handle_closed = 0;
  q->open = 1;
  if (napi_create_reference(env, argv[5], 1, &q->cb) != napi_ok ||
      napi_wrap(env, self, q, finalize, NULL, NULL) != napi_ok ||
      napi_create_reference(env, self, 1, &q->self) != napi_ok) {
    do_close(q, 1);
    q->finalized = 1; /* not wrapped (or wrap failed): free when the handle closes */
    napi_throw_error(env, NULL, "nfqueue: wrap failed");
    return NULL;
  }
  uv_poll_start(&q->poll, UV_READABLE, on_readable);
  return self;
}

static Queue *unwrap(napi_env env, napi_value self) {
  void *p = NULL;
  if (napi_unwrap(env, self, &p) != napi_ok || !p) {
    napi_throw_type_error(env, NULL, "NfQueue: bad receiver");
    return NULL;
  }
  return (Queue *)p;
}

static napi_value make_bool(napi_env env, int v) {
  napi_value r;
  if (napi_get_boolean(env, v ? true : false, &r) != napi_ok) return NULL;
  return r;
}

/* verdict(id, verdict, mark) -> boolean (false when closed or the send failed) */
static napi_value verdict(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  Queue *q = unwrap(env, self);
  if (!q) return NULL;
  int64_t id = argc > 0 ? get_int(env, argv[0], 0, 4294967295LL) : INT64_MIN;
  int64_t v = argc > 1 ? get_int(env, argv[1], 0, 1) : INT64_MIN;
  int64_t mark = argc > 2 ? get_int(env, argv[2], -1, 4294967295LL) : -1;
  if (id == INT64_MIN || v == INT64_MIN || mark == INT64_MIN) {
    napi_throw_range_error(env, NULL, "verdict(id, 0|1, mark|-1)");
    return NULL;
  }
  if (!q->open || !q->qh) return make_bool(env, 0);
  /* v: NF_DROP (0) or NF_ACCEPT (1) (linux/netfilter.h). */
  int r = mark >= 0 ? nfq_set_verdict2(q->qh, (uint32_t)id, (uint32_t)v, (uint32_t)mark, 0, NULL)
                    : nfq_set_verdict(q->qh, (uint32_t)id, (uint32_t)v, 0, NULL);
  if (r < 0) q->errors++;
  return make_bool(env, r >= 0);
}

static napi_value close_q(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  Queue *q = unwrap(env, self);
  if (!q) return NULL;
  if (q->dispatching)
    q->close_wanted = 1;
  else
    do_close(q, 1);
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

static napi_value ref_q(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  Queue *q = unwrap(env, self);
  if (!q) return NULL;
  bool on = true;
  if (argc > 0) napi_get_value_bool(env, argv[0], &on);
  if (q->open && q->poll_inited) {
    if (on)
      uv_ref((uv_handle_t *)&q->poll);
    else
      uv_unref((uv_handle_t *)&q->poll);
  }
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

static napi_value stats(napi_env env, napi_callback_info info) {
  napi_value self, o, v;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  Queue *q = unwrap(env, self);
  if (!q) return NULL;
  CHECK(napi_create_object(env, &o));
  CHECK(napi_create_double(env, q->received, &v));
  CHECK(napi_set_named_property(env, o, "received", v));
  CHECK(napi_create_double(env, q->enobufs, &v));
  CHECK(napi_set_named_property(env, o, "enobufs", v));
  CHECK(napi_create_double(env, q->errors, &v));
  CHECK(napi_set_named_property(env, o, "errors", v));
  CHECK(napi_create_double(env, q->exceptions, &v));
  CHECK(napi_set_named_property(env, o, "exceptions", v));
  CHECK(napi_get_boolean(env, q->open ? true : false, &v));
  CHECK(napi_set_named_property(env, o, "open", v));
  return o;
}


/* ---- conntrack deletion (ctnetlink, no libnetfilter_conntrack needed) ----
 *
 * conntrackDelete(netnsPath | null, family 4|6, proto, origSrc | null, origSport, origDst | null, origDport)
 *   -> Promise of the number of entries deleted (the work runs on the libuv thread pool).
 * Dumps the conntrack table of the namespace (IPCTNL_MSG_CT_GET + NLM_F_DUMP), keeps the
 * entries whose ORIGINAL tuple matches (a null address / port 0 matches any), then deletes
 * each by its original tuple (IPCTNL_MSG_CT_DELETE). Used when a PCP mapping is installed
 * (an entry created before it, with no NAT binding, would keep the mapped port unreachable
 * until it times out) and removed (the flow's NAT binding ends with the mapping).
 * netnsPath (e.g. /var/run/netns/gw): the socket is opened inside that namespace (setns on
 * this thread, then back).
 */
#define CT_MAX 8192

struct ct_match {
  int family;
  uint8_t proto;
  int has_src, has_dst;
  uint8_t src[16], dst[16];
  uint16_t sport, dport; /* host order; 0 = any */
};

static int open_ct_socket(const char *nspath) {
  int back = -1, target = -1, fd = -1;
  if (nspath) {
    back = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    target = open(nspath, O_RDONLY | O_CLOEXEC);
    if (back < 0 || target < 0 || setns(target, CLONE_NEWNET) != 0) {
      int e = errno;
      if (back >= 0) close(back);
      if (target >= 0) close(target);
      errno = e;
      return -1;
    }
  }
  fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  int e = errno;
  if (nspath) {
    if (setns(back, CLONE_NEWNET) != 0) abort(); /* cannot return to our namespace: unsafe to continue */
    close(back);
    close(target);
  }
  errno = e;
  if (fd >= 0) {
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      e = errno;
      close(fd);
      errno = e;
      return -1;
    }
  }
  return fd;
}

/* Walks attributes at p..p+len; calls back per attribute. */
#define ATTR_OK(a, len) ((len) >= (int)sizeof(struct nlattr) && (a)->nla_len >= sizeof(struct nlattr) && (int)(a)->nla_len <= (len))
#define ATTR_NEXT(a, len) ((len) -= NLA_ALIGN((a)->nla_len), (struct nlattr *)((char *)(a) + NLA_ALIGN((a)->nla_len)))
#define ATTR_DATA(a) ((void *)((char *)(a) + NLA_HDRLEN))
#define ATTR_TYPE(a) ((a)->nla_type & NLA_TYPE_MASK)

static struct nlattr *find_attr(void *p, int len, int type) {
  for (struct nlattr *a = (struct nlattr *)p; ATTR_OK(a, len); a = ATTR_NEXT(a, len))
    if (ATTR_TYPE(a) == type) return a;
  return NULL;
}

static int tuple_matches(struct nlattr *orig, const struct ct_match *m) {
  int olen = orig->nla_len - NLA_HDRLEN;
  struct nlattr *ip = find_attr(ATTR_DATA(orig), olen, CTA_TUPLE_IP);
  struct nlattr *pr = find_attr(ATTR_DATA(orig), olen, CTA_TUPLE_PROTO);
  if (!ip || !pr) return 0;
  int alen = m->family == 4 ? 4 : 16;
  int ilen = ip->nla_len - NLA_HDRLEN, plen = pr->nla_len - NLA_HDRLEN;
  struct nlattr *src = find_attr(ATTR_DATA(ip), ilen, m->family == 4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC);
  struct nlattr *dst = find_attr(ATTR_DATA(ip), ilen, m->family == 4 ? CTA_IP_V4_DST : CTA_IP_V6_DST);
  struct nlattr *num = find_attr(ATTR_DATA(pr), plen, CTA_PROTO_NUM);
  if (!src || !dst || !num || src->nla_len < NLA_HDRLEN + alen || dst->nla_len < NLA_HDRLEN + alen) return 0;
  if (m->proto && *(uint8_t *)ATTR_DATA(num) != m->proto) return 0;
  if (m->has_src && memcmp(ATTR_DATA(src), m->src, alen) != 0) return 0;
  if (m->has_dst && memcmp(ATTR_DATA(dst), m->dst, alen) != 0) return 0;
  if (m->sport || m->dport) {
    struct nlattr *sp = find_attr(ATTR_DATA(pr), plen, CTA_PROTO_SRC_PORT);
    struct nlattr *dp = find_attr(ATTR_DATA(pr), plen, CTA_PROTO_DST_PORT);
    if (m->sport && (!sp || ntohs(*(uint16_t *)ATTR_DATA(sp)) != m->sport)) return 0;
    if (m->dport && (!dp || ntohs(*(uint16_t *)ATTR_DATA(dp)) != m->dport)) return 0;
  }
  return 1;
}

static void put_hdr(char *buf, uint16_t type, uint16_t flags, uint32_t seq, int family) {
  struct nlmsghdr *nh = (struct nlmsghdr *)buf;
  nh->nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
  nh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | type;
  nh->nlmsg_flags = flags;
  nh->nlmsg_seq = seq;
  nh->nlmsg_pid = 0;
  struct nfgenmsg *g = (struct nfgenmsg *)NLMSG_DATA(nh);
  g->nfgen_family = family == 4 ? AF_INET : AF_INET6;
  g->version = NFNETLINK_V0;
  g->res_id = 0;
}

/* Returns the count deleted, or -errno. */
static int ct_delete(const char *nspath, const struct ct_match *m) {
  int fd = open_ct_socket(nspath);
  if (fd < 0) return -errno;
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char req[256];
  put_hdr(req, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, m->family);
  if (send(fd, req, ((struct nlmsghdr *)req)->nlmsg_len, 0) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  /* Matching original tuples, copied (attribute bytes as the kernel sent them). */
  size_t cap = 64, n = 0;
  char **tuples = malloc(cap * sizeof *tuples);
  size_t bufsz = 1 << 16;
  char *buf = malloc(bufsz);
  int done = 0, err = 0;
  while (!done && buf && tuples) {
    ssize_t r = recv(fd, buf, bufsz, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      err = -errno;
      break;
    }
    int len = (int)r;
    for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, len); nh = NLMSG_NEXT(nh, len)) {
      if (nh->nlmsg_type == NLMSG_DONE) {
        done = 1;
        break;
      }
      if (nh->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = (struct nlmsgerr *)NLMSG_DATA(nh);
        if (e->error) err = e->error;
        done = 1;
        break;
      }
      int alen = (int)nh->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
      struct nlattr *orig = find_attr((char *)NLMSG_DATA(nh) + NLMSG_ALIGN(sizeof(struct nfgenmsg)), alen, CTA_TUPLE_ORIG);
      if (!orig || !tuple_matches(orig, m) || n >= CT_MAX) continue;
      if (n == cap) {
        char **nt = realloc(tuples, cap * 2 * sizeof *tuples);
        if (!nt) continue;
        tuples = nt;
        cap *= 2;
      }
      char *copy = malloc(orig->nla_len);
      if (!copy) continue;
      memcpy(copy, orig, orig->nla_len);
      tuples[n++] = copy;
    }
  }
  int deleted = 0;
  for (size_t i = 0; i < n; i++) {
    struct nlattr *orig = (struct nlattr *)tuples[i];
    if (!err && NLMSG_LENGTH(sizeof(struct nfgenmsg)) + NLA_ALIGN(orig->nla_len) <= bufsz) {
      put_hdr(buf, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, 2 + (uint32_t)i, m->family);
      struct nlmsghdr *nh = (struct nlmsghdr *)buf;
      memcpy(buf + nh->nlmsg_len, orig, orig->nla_len);
      nh->nlmsg_len += NLA_ALIGN(orig->nla_len);
      if (send(fd, buf, nh->nlmsg_len, 0) >= 0) {
        ssize_t r = recv(fd, buf, bufsz, 0);
        struct nlmsghdr *ack = (struct nlmsghdr *)buf;
        /* ENOENT: gone meanwhile (timed out), not an error. */
        if (r >= (ssize_t)NLMSG_LENGTH(sizeof(struct nlmsgerr)) && ack->nlmsg_type == NLMSG_ERROR &&
            ((struct nlmsgerr *)NLMSG_DATA(ack))->error == 0)
          deleted++;
      }
    }
    free(tuples[i]);
  }
  free(tuples);
  free(buf);
  close(fd);
  return err ? err : deleted;
}

static int get_addr(napi_env env, napi_value v, int family, uint8_t *out, int *has) {
  napi_valuetype t;
  *has = 0;
  if (napi_typeof(env, v, &t) != napi_ok) return 0;
  if (t == napi_null || t == napi_undefined) return 1;
  char s[64];
  size_t n;
  if (t != napi_string || napi_get_value_string_utf8(env, v, s, sizeof s, &n) != napi_ok) return 0;
  if (inet_pton(family == 4 ? AF_INET : AF_INET6, s, out) != 1) return 0;
  *has = 1;
  return 1;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  struct ct_match m;
  char path[512];
  int has_path;
  int result;
} CtWork;

/* On a libuv pool thread: a large conntrack table must not stall the event loop (the
 * queue reader runs on it). setns() there affects that thread only, and is undone. */
static void ct_execute(napi_env env, void *data) {
  CtWork *w = (CtWork *)data;
  w->result = ct_delete(w->has_path ? w->path : NULL, &w->m);
}

static void ct_complete(napi_env env, napi_status status, void *data) {
  CtWork *w = (CtWork *)data;
  napi_value v;
  if (status == napi_ok && w->result >= 0 && napi_create_int32(env, w->result, &v) == napi_ok) {
    napi_resolve_deferred(env, w->deferred, v);
  } else {
    char msg[256];
    snprintf(msg, sizeof msg, "nfqueue: conntrack delete: %s", w->result < 0 ? strerror(-w->result) : "cancelled");
    napi_value m, e;
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, NULL, m, &e);
    napi_reject_deferred(env, w->deferred, e);
  }
  napi_delete_async_work(env, w->work);
  free(w);
}

/* conntrackDelete(netnsPath|null, 4|6, proto, src|null, sport, dst|null, dport) -> Promise<number> */
static napi_value conntrack_delete(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 7) {
    napi_throw_type_error(env, NULL, "conntrackDelete(netnsPath|null, 4|6, proto, src|null, sport, dst|null, dport)");
    return NULL;
  }
  CtWork *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "calloc", ENOMEM);
  napi_valuetype t;
  if (napi_typeof(env, argv[0], &t) != napi_ok) {
    free(w);
    return throw_errno(env, "typeof", EINVAL);
  }
  if (t == napi_string) {
    size_t n;
    if (napi_get_value_string_utf8(env, argv[0], w->path, sizeof w->path, &n) != napi_ok || n >= sizeof w->path - 1) {
      free(w);
      napi_throw_range_error(env, NULL, "conntrackDelete: bad netns path");
      return NULL;
    }
    w->has_path = 1;
  }
  int64_t fam = get_int(env, argv[1], 4, 6);
  int64_t proto = get_int(env, argv[2], 0, 255);
  int64_t sport = get_int(env, argv[4], 0, 65535);
  int64_t dport = get_int(env, argv[6], 0, 65535);
  if ((fam != 4 && fam != 6) || proto == INT64_MIN || sport == INT64_MIN || dport == INT64_MIN) {
    free(w);
    napi_throw_range_error(env, NULL, "conntrackDelete: bad arguments");
    return NULL;
  }
  w->m.family = (int)fam;
  w->m.proto = (uint8_t)proto;
  w->m.sport = (uint16_t)sport;
  w->m.dport = (uint16_t)dport;
  if (!get_addr(env, argv[3], w->m.family, w->m.src, &w->m.has_src) ||
      !get_addr(env, argv[5], w->m.family, w->m.dst, &w->m.has_dst)) {
    free(w);
    napi_throw_range_error(env, NULL, "conntrackDelete: bad address");
    return NULL;
  }
  napi_value promise, name;
  if (napi_create_promise(env, &w->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "gatehouse.conntrackDelete", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, ct_execute, ct_complete, w, &w->work) != napi_ok ||
      napi_queue_async_work(env, w->work) != napi_ok) {
    free(w); /* (a created deferred without resolution leaks one promise: N-API failure only) */
    napi_throw_error(env, NULL, "conntrackDelete: async work failed");
    return NULL;
  }
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"verdict", NULL, verdict, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, close_q, NULL, NULL, NULL, napi_default, NULL},
      {"ref", NULL, ref_q, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, stats, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_value cls;
  CHECK(napi_define_class(env, "NfQueue", NAPI_AUTO_LENGTH, ctor, NULL, sizeof props / sizeof props[0], props, &cls));
  CHECK(napi_set_named_property(env, exports, "NfQueue", cls));
  napi_value fn;
  CHECK(napi_create_function(env, "conntrackDelete", NAPI_AUTO_LENGTH, conntrack_delete, NULL, &fn));
  CHECK(napi_set_named_property(env, exports, "conntrackDelete", fn));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
