/*
 * p11kms-bench: the load generator behind `make bench`.
 *
 * Makes a throwaway SoftHSM token, starts the daemon on it, drives it with
 * gRPC over HTTP/2 on its unix socket (nghttp2 client sessions fed from one
 * poll loop, C requests kept in flight), checks every answer, and in the
 * same run measures the raw baseline: the same seal/open through the
 * keyring API in this process, on the same token and key, with as many
 * threads as the daemon has workers. The two sides run in interleaved
 * rounds (a slice served, the same slice raw, the order alternating), and
 * /proc/stat's steal time is read around each, so that a ratio compares
 * both under the same conditions. See tests/bench/README.md.
 *
 * A benchmark, not a test: targets are printed, never asserted. Exit status
 * 0 when every request succeeded and every plaintext matched, 1 on any wrong
 * answer (or a daemon that died under load), 2 when the bench itself could
 * not run (bad flags, no token, daemon did not start).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <nghttp2/nghttp2.h>

#include "kms_v1beta1.pb-c.h"
#include "kms_v2.pb-c.h"
#include "pkcs11/keyring.h"

#define NS_PER_S	1000000000ull
#define PT_LEN		32		/* the apiserver's DEK / DEK seed */
#define BODY_MAX	2048		/* framed request */
#define RESP_MAX	65536		/* framed response we accept */
#define MAX_ANN		8		/* annotations kept per ciphertext */
#define MAX_CONNS	64
#define MAX_ROWS	48
#define MAX_SLOW	8
#define MAX_SHOWN	10		/* wrong answers printed */
#define MAX_WRAP	16		/* words in --wrap */
#define MAX_PACED	8		/* paced requests per connection */
#define MAX_ROUNDS	32		/* --rounds */
#define STEAL_MIN_TICKS	20		/* fewer /proc/stat ticks: steal n/a */
#define STALL_NS	(30 * NS_PER_S)	/* no answer for this long: give up */
#define READY_NS	(30 * NS_PER_S)	/* daemon must serve by then */
#define STOP_NS		(10 * NS_PER_S)	/* SIGTERM, then SIGKILL */
#define SOFTHSM		"/usr/lib/softhsm/libsofthsm2.so"
#define KEY_URI		"pkcs11:token=kms;object=kek1;type=secret-key"
#define GRPC_UNIMPLEMENTED 12

/* ---- options ---- */

static struct {
	const char *daemon, *mktoken, *module, *fault_module;
	unsigned workers, conc, conns, cold_starts, status_interval_us;
	unsigned rounds;	/* served/raw rounds per paired scenario */
	size_t n1, n64, storm;
	unsigned slow_delay_ms, slow_secs, grpc_timeout_s;
	unsigned slow_workers[MAX_SLOW];
	size_t nslow;
	int no_slow, keep, quick;
	unsigned only;		/* S_* bits of the scenarios to run */
	const char *wrap[MAX_WRAP];	/* --wrap: runs the daemon under it */
	size_t nwrap;
	const char *audit_log, *audit_sync;	/* audit scenario */
	const char *token_process;	/* daemon --token-process, or NULL */
} opt;

/* Scenario groups for --only. */
enum {
	S_STATUS = 1, S_ENCRYPT = 2, S_DECRYPT = 4, S_MIXED = 8, S_V1 = 16,
	S_STORM = 32, S_SLOW = 64, S_CALLS = 128, S_AUDIT = 256, S_ALL = 511,
};

static const char *const group_names[] = {
	"status", "encrypt", "decrypt", "mixed", "v1", "storm", "slow",
	"calls", "audit",
};

static int
want(unsigned s)
{
	return (opt.only & s) != 0;
}

/* ---- process-wide state ---- */

static volatile sig_atomic_t g_stop;
static volatile pid_t g_daemon = -1;	/* running daemon, for cleanup */
static char g_dir[64];			/* temp dir, "" until made */
static char g_sock[100], g_pin[128], g_conf[128], g_log[128];
static char g_counts[128];		/* fault module's counts file, or "" */
static char g_key_id[KEYRING_KEY_ID_MAX]; /* from the first Status */
static const char *g_scen = "setup";	/* for messages */
static unsigned long g_errors;		/* wrong answers */
static unsigned g_daemon_workers;	/* as the daemon logged it */
static clockid_t g_dclk;		/* the daemon's CPU clock */
static int g_dclk_ok;
static const char *g_cpu_src = "none";
static long g_clk_tck;
static unsigned g_nstarts;		/* daemon starts, for log names */
static const char *g_dextra[4];		/* more daemon flags (audit) */
static size_t g_ndextra;

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t
clock_ns(clockid_t clk)
{
	struct timespec ts;

	if (clock_gettime(clk, &ts) != 0)
		return 0;
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void
sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / NS_PER_S), (long)(ns % NS_PER_S) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !g_stop)
		;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2),
    noreturn));
static void die_run(const char *fmt, ...) __attribute__((format(printf, 1, 2),
    noreturn));
static void wrong(size_t idx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void daemon_log_tail(void);

/* The bench could not run: exit 2. */
static void
die(const char *fmt, ...)
{
	va_list ap;

	fputs("p11kms-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* The daemon failed under load (died, dropped the connection): exit 1. */
static void
die_run(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "p11kms-bench: %s: ", g_scen);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	daemon_log_tail();
	exit(g_stop ? 2 : 1);
}

static void
wrong(size_t idx, const char *fmt, ...)
{
	va_list ap;

	if (++g_errors > MAX_SHOWN) {
		if (g_errors == MAX_SHOWN + 1)
			fprintf(stderr, "p11kms-bench: more wrong answers not "
			    "shown\n");
		return;
	}
	fprintf(stderr, "p11kms-bench: WRONG ANSWER in %s, request %zu: ",
	    g_scen, idx);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void *
xcalloc(size_t n, size_t sz)
{
	void *p;

	if ((p = calloc(n ? n : 1, sz ? sz : 1)) == NULL)
		die("out of memory");
	return p;
}

/* ---- latency samples ---- */

struct lat {
	uint64_t *v;		/* ns */
	size_t n, cap;
};

static void
lat_add(struct lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 1024;
		if ((l->v = realloc(l->v, l->cap * sizeof(*l->v))) == NULL)
			die("out of memory");
	}
	l->v[l->n++] = ns;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (per mille) of sorted v, in µs. */
static double
pct_us(const uint64_t *v, size_t n, unsigned pm)
{
	size_t k;

	if (n == 0)
		return NAN;
	k = (pm * n + 999) / 1000;
	if (k == 0)
		k = 1;
	return (double)v[k - 1] / 1e3;
}

struct stats {
	size_t n;
	double p50, p99, max;	/* µs */
};

static void
stats_of(uint64_t *v, size_t n, struct stats *s)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	s->n = n;
	s->p50 = pct_us(v, n, 500);
	s->p99 = pct_us(v, n, 990);
	s->max = n ? (double)v[n - 1] / 1e3 : NAN;
}

/*
 * Where a paced request's time went: from submit to the write that carried
 * its last byte (the bench's own queueing), from that write to the read that
 * carried its answer's last byte (the daemon, the socket and the scheduler),
 * and from that read to the stream's close (the bench parsing the answers
 * read with it).
 */
struct part {
	uint64_t total, pre, mid, post;		/* ns */
};

struct parts {
	struct part *v;
	size_t n, cap;
};

static void
parts_add(struct parts *p, const struct part *x)
{
	if (p->n == p->cap) {
		p->cap = p->cap ? p->cap * 2 : 256;
		if ((p->v = realloc(p->v, p->cap * sizeof(*p->v))) == NULL)
			die("out of memory");
	}
	p->v[p->n++] = *x;
}

static int
cmp_part(const void *a, const void *b)
{
	uint64_t x = ((const struct part *)a)->total;
	uint64_t y = ((const struct part *)b)->total;

	return x < y ? -1 : x > y;
}

/* Mean of each part (µs) over the slowest 1% of requests (at least one). */
static void
parts_tail(struct parts *p, double out[3])
{
	size_t i, k;

	out[0] = out[1] = out[2] = NAN;
	if (p->n == 0)
		return;
	qsort(p->v, p->n, sizeof(*p->v), cmp_part);
	k = (p->n + 99) / 100;
	out[0] = out[1] = out[2] = 0;
	for (i = p->n - k; i < p->n; i++) {
		out[0] += (double)p->v[i].pre / 1e3;
		out[1] += (double)p->v[i].mid / 1e3;
		out[2] += (double)p->v[i].post / 1e3;
	}
	for (i = 0; i < 3; i++)
		out[i] /= (double)k;
}

/* ---- request data: distinct plaintexts, ciphertext sets ---- */

static uint64_t
splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Plaintext i of the set with this seed: the first 8 bytes make it
 * distinct from every other i, the rest look random. */
static void
make_pt(uint64_t seed, size_t i, uint8_t pt[PT_LEN])
{
	uint64_t s = seed ^ ((uint64_t)i << 1), w = seed ^ (uint64_t)i;
	int k;

	memcpy(pt, &w, 8);
	for (k = 1; k < PT_LEN / 8; k++) {
		w = splitmix64(&s);
		memcpy(pt + 8 * k, &w, 8);
	}
}

struct ann {
	char *key;
	uint8_t *val;
	size_t vlen;
};

struct blob {
	uint8_t *ct;
	size_t len;
	struct ann *ann;	/* v2: what Encrypt returned, passed back */
	size_t nann;
};

/* Ciphertexts made by the daemon: blob i seals make_pt(seed, i). */
struct ctset {
	uint64_t seed;
	size_t n;
	struct blob *b;
};

static struct ctset *
ctset_new(size_t n)
{
	struct ctset *s = xcalloc(1, sizeof(*s));
	uint64_t seed;

	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = now_ns() * 0x9e3779b97f4a7c15ull;
	s->seed = seed;
	s->n = n;
	s->b = xcalloc(n, sizeof(*s->b));
	return s;
}

static void
ctset_free(struct ctset *s)
{
	size_t i, j;

	if (s == NULL)
		return;
	for (i = 0; i < s->n; i++) {
		free(s->b[i].ct);
		for (j = 0; j < s->b[i].nann; j++) {
			free(s->b[i].ann[j].key);
			free(s->b[i].ann[j].val);
		}
		free(s->b[i].ann);
	}
	free(s->b);
	free(s);
}

static uint8_t *
dup_bytes(const void *p, size_t n)
{
	uint8_t *d = xcalloc(1, n);

	memcpy(d, p, n);
	return d;
}

/* ---- HTTP/2 client ---- */

enum kind { K_STATUS, K_V2ENC, K_V2DEC, K_V1VER, K_V1ENC, K_V1DEC, K_N };

static const char *const kind_path[K_N] = {
	"/v2.KeyManagementService/Status",
	"/v2.KeyManagementService/Encrypt",
	"/v2.KeyManagementService/Decrypt",
	"/v1beta1.KeyManagementService/Version",
	"/v1beta1.KeyManagementService/Encrypt",
	"/v1beta1.KeyManagementService/Decrypt",
};

struct slot;

struct conn {
	int fd;
	nghttp2_session *h2;
	uint8_t *pend;			/* produced by nghttp2, not yet sent */
	size_t pend_off, pend_len, pend_cap;
	struct slot *done_head, *done_tail; /* closed streams to finish */
	uint64_t t_recv;		/* when the bytes being parsed were read */
	struct slot *unsent[MAX_PACED];	/* paced requests not yet written */
	size_t nunsent;
	char why[160];
};

struct client {
	struct conn c[MAX_CONNS];
	unsigned n;
};

struct lane {
	enum kind kind;
	unsigned conc;
	size_t total;		/* requests to send; 0: background lane that
				   runs until every counted lane is done */
	size_t first;		/* index of its first request (a round's
				   slice of a scenario starts there) */
	int conn_fixed;		/* -1: slots spread over connections */
	uint64_t pt_seed;	/* encrypt: plaintext i = make_pt(seed, i) */
	struct ctset *in;	/* decrypt: ciphertext i % in->n */
	struct ctset *out;	/* encrypt: keeps ciphertext i (may be NULL) */
	int probe;		/* UNIMPLEMENTED is an answer, not an error */
	uint64_t interval_ns;	/* paced: a slot's requests this far apart */
	/* results */
	size_t issued, done, failed;
	int unimplemented;
	struct lat lat;
	struct parts parts;	/* paced lanes: where the time went */
	uint64_t t_first, t_last;
	struct slot *slots;
};

struct slot {
	struct lane *lane;
	struct conn *conn;
	int busy;		/* request in flight */
	int waiting;		/* next request due at `due` */
	uint64_t due;
	size_t idx;
	uint64_t t0, t1;
	uint64_t t_sent, t_read;	/* paced lanes: request written, answer read */
	uint8_t body[BODY_MAX];
	size_t blen, boff;
	uint8_t *resp;
	size_t rlen, rcap;
	int http_status, grpc_status, too_big;
	uint32_t rst;
	char msg[128];
	struct slot *next_done;
};

static nghttp2_session_callbacks *g_cbs;
static char g_timeout_hdr[16];

static int
parse_int(const uint8_t *v, size_t len)
{
	int n = 0;
	size_t i;

	if (len == 0 || len > 6)
		return -2;
	for (i = 0; i < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -2;
		n = n * 10 + (v[i] - '0');
	}
	return n;
}

static int
on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
    void *ud)
{
	struct slot *sl;

	if (f->hd.type != NGHTTP2_HEADERS ||
	    (sl = nghttp2_session_get_stream_user_data(s,
	    f->hd.stream_id)) == NULL)
		return 0;
	if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
		sl->http_status = parse_int(value, valuelen);
	} else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
		sl->grpc_status = parse_int(value, valuelen);
	} else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
		snprintf(sl->msg, sizeof(sl->msg), "%.*s",
		    (int)(valuelen < 120 ? valuelen : 120), (const char *)value);
	}
	return 0;
}

static int
on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
    size_t len, void *ud)
{
	struct slot *sl = nghttp2_session_get_stream_user_data(s, sid);

	if (sl == NULL)
		return 0;
	if (len > RESP_MAX - sl->rlen) {
		sl->too_big = 1;
		return 0;
	}
	if (sl->rlen + len > sl->rcap) {
		sl->rcap = sl->rlen + len < 256 ? 256 : 2 * (sl->rlen + len);
		if ((sl->resp = realloc(sl->resp, sl->rcap)) == NULL)
			die("out of memory");
	}
	memcpy(sl->resp + sl->rlen, data, len);
	sl->rlen += len;
	return 0;
}

static int
on_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud)
{
	struct conn *c = ud;
	struct slot *sl = nghttp2_session_get_stream_user_data(s, sid);

	if (sl == NULL)
		return 0;
	sl->t1 = now_ns();
	sl->t_read = c->t_recv;
	sl->rst = error_code;
	sl->next_done = NULL;
	if (c->done_tail != NULL)
		c->done_tail->next_done = sl;
	else
		c->done_head = sl;
	c->done_tail = sl;
	return 0;
}

static ssize_t
read_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	struct slot *sl = src->ptr;
	size_t n = sl->blen - sl->boff;

	if (n > len)
		n = len;
	memcpy(buf, sl->body + sl->boff, n);
	sl->boff += n;
	if (sl->boff == sl->blen) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		if (sl->lane->interval_ns > 0 &&
		    sl->conn->nunsent < MAX_PACED)
			sl->conn->unsent[sl->conn->nunsent++] = sl;
	}
	return (ssize_t)n;
}

static void
callbacks_init(void)
{
	if (nghttp2_session_callbacks_new(&g_cbs) != 0)
		die("out of memory");
	nghttp2_session_callbacks_set_on_header_callback(g_cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_cbs,
	    on_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(g_cbs, on_close);
	snprintf(g_timeout_hdr, sizeof(g_timeout_hdr), "%uS",
	    opt.grpc_timeout_s);
}

/* One connect attempt. 0, or -1 with errno (ENOENT, ECONNREFUSED while the
 * daemon is still starting). */
static int
conn_open(struct conn *c, const char *path)
{
	struct sockaddr_un sa;
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024 },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20 },
	};
	int fd, e;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	/* A unix connect does not wait for the server: blocking is fine. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == -1)
		die("fcntl: %s", strerror(errno));
	c->fd = fd;
	if (nghttp2_session_client_new(&c->h2, g_cbs, c) != 0)
		die("out of memory");
	if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv,
	    sizeof(iv) / sizeof(iv[0])) != 0 ||
	    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
	    1 << 24) != 0)
		die("nghttp2 settings failed");
	return 0;
}

static void
conn_close(struct conn *c)
{
	if (c->h2 != NULL)
		nghttp2_session_del(c->h2);
	c->h2 = NULL;
	if (c->fd != -1)
		close(c->fd);
	c->fd = -1;
	free(c->pend);
	c->pend = NULL;
	c->pend_off = c->pend_len = c->pend_cap = 0;
}

/* Everything produced is written: so are the paced requests in it. */
static void
conn_stamp_sent(struct conn *c)
{
	uint64_t now;
	size_t i;

	if (c->nunsent == 0)
		return;
	now = now_ns();
	for (i = 0; i < c->nunsent; i++)
		c->unsent[i]->t_sent = now;
	c->nunsent = 0;
}

/* Sends what nghttp2 has, batching it into one write. -1: connection lost. */
static int
conn_flush(struct conn *c)
{
	const uint8_t *data;
	ssize_t n, w;

	for (;;) {
		while (c->pend_len - c->pend_off < 65536) {
			if ((n = nghttp2_session_mem_send(c->h2, &data)) < 0) {
				snprintf(c->why, sizeof(c->why), "nghttp2: %s",
				    nghttp2_strerror((int)n));
				return -1;
			}
			if (n == 0)
				break;
			if (c->pend_off > 0) {
				memmove(c->pend, c->pend + c->pend_off,
				    c->pend_len - c->pend_off);
				c->pend_len -= c->pend_off;
				c->pend_off = 0;
			}
			if (c->pend_len + (size_t)n > c->pend_cap) {
				c->pend_cap = 2 * (c->pend_len + (size_t)n);
				if ((c->pend = realloc(c->pend,
				    c->pend_cap)) == NULL)
					die("out of memory");
			}
			memcpy(c->pend + c->pend_len, data, (size_t)n);
			c->pend_len += (size_t)n;
		}
		if (c->pend_off == c->pend_len) {
			conn_stamp_sent(c);
			return 0;
		}
		w = send(c->fd, c->pend + c->pend_off,
		    c->pend_len - c->pend_off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			snprintf(c->why, sizeof(c->why), "send: %s",
			    strerror(errno));
			return -1;
		}
		c->pend_off += (size_t)w;
		if (c->pend_off < c->pend_len)
			return 0;	/* socket full: wait for POLLOUT */
		c->pend_off = c->pend_len = 0;
	}
}

static int
conn_want_write(struct conn *c)
{
	return c->pend_len > c->pend_off || nghttp2_session_want_write(c->h2);
}

/* Feeds what the socket has to nghttp2. -1: connection lost. */
static int
conn_read(struct conn *c)
{
	uint8_t buf[65536];
	ssize_t r, n;
	int i;

	for (i = 0; i < 16; i++) {
		r = recv(c->fd, buf, sizeof(buf), 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			snprintf(c->why, sizeof(c->why), "recv: %s",
			    strerror(errno));
			return -1;
		}
		if (r == 0) {
			snprintf(c->why, sizeof(c->why), "the daemon closed "
			    "the connection");
			return -1;
		}
		c->t_recv = now_ns();
		if ((n = nghttp2_session_mem_recv(c->h2, buf,
		    (size_t)r)) < 0) {
			snprintf(c->why, sizeof(c->why), "nghttp2: %s",
			    nghttp2_strerror((int)n));
			return -1;
		}
		if ((size_t)r < sizeof(buf))
			return 0;
	}
	return 0;
}

static void
client_open(struct client *cl, unsigned n)
{
	unsigned i;

	memset(cl, 0, sizeof(*cl));
	for (i = 0; i < n; i++) {
		if (conn_open(&cl->c[i], g_sock) != 0)
			die_run("cannot connect to %s: %s", g_sock,
			    strerror(errno));
		cl->n++;
	}
}

static void
client_close(struct client *cl)
{
	unsigned i;

	for (i = 0; i < cl->n; i++)
		conn_close(&cl->c[i]);
	cl->n = 0;
}

/* ---- requests and answers ---- */

static void
make_uid(char *uid, size_t cap, size_t idx)
{
	/* The apiserver sends a UUID per request; same length here. */
	snprintf(uid, cap, "b3nc4000-0000-4000-8000-%012zx", idx);
}

/* Frames the packed message in sl->body. */
static void
pack_body(struct slot *sl, const ProtobufCMessage *m)
{
	size_t len = protobuf_c_message_get_packed_size(m);

	if (len > BODY_MAX - 5)
		die("request of %zu bytes does not fit the bench's buffer", len);
	protobuf_c_message_pack(m, sl->body + 5);
	sl->body[0] = 0;
	sl->body[1] = (uint8_t)(len >> 24);
	sl->body[2] = (uint8_t)(len >> 16);
	sl->body[3] = (uint8_t)(len >> 8);
	sl->body[4] = (uint8_t)len;
	sl->blen = len + 5;
	sl->boff = 0;
}

static void
build_request(struct slot *sl, size_t idx)
{
	struct lane *ln = sl->lane;
	uint8_t pt[PT_LEN];
	char uid[40];
	static char v1ver[] = "v1beta1";

	make_uid(uid, sizeof(uid), idx);
	switch (ln->kind) {
	case K_STATUS: {
		V2__StatusRequest r = V2__STATUS_REQUEST__INIT;
		pack_body(sl, &r.base);
		break;
	}
	case K_V2ENC: {
		V2__EncryptRequest r = V2__ENCRYPT_REQUEST__INIT;
		make_pt(ln->pt_seed, idx, pt);
		r.plaintext.data = pt;
		r.plaintext.len = PT_LEN;
		r.uid = uid;
		pack_body(sl, &r.base);
		break;
	}
	case K_V2DEC: {
		V2__DecryptRequest r = V2__DECRYPT_REQUEST__INIT;
		V2__DecryptRequest__AnnotationsEntry e[MAX_ANN], *ep[MAX_ANN];
		const struct blob *b = &ln->in->b[idx % ln->in->n];
		size_t i;

		for (i = 0; i < b->nann; i++) {
			V2__DecryptRequest__AnnotationsEntry z =
			    V2__DECRYPT_REQUEST__ANNOTATIONS_ENTRY__INIT;
			e[i] = z;
			e[i].key = b->ann[i].key;
			e[i].value.data = b->ann[i].val;
			e[i].value.len = b->ann[i].vlen;
			ep[i] = &e[i];
		}
		r.ciphertext.data = b->ct;
		r.ciphertext.len = b->len;
		r.uid = uid;
		r.key_id = g_key_id;
		r.n_annotations = b->nann;
		r.annotations = b->nann ? ep : NULL;
		pack_body(sl, &r.base);
		break;
	}
	case K_V1VER: {
		V1beta1__VersionRequest r = V1BETA1__VERSION_REQUEST__INIT;
		r.version = v1ver;
		pack_body(sl, &r.base);
		break;
	}
	case K_V1ENC: {
		V1beta1__EncryptRequest r = V1BETA1__ENCRYPT_REQUEST__INIT;
		make_pt(ln->pt_seed, idx, pt);
		r.version = v1ver;
		r.plain.data = pt;
		r.plain.len = PT_LEN;
		pack_body(sl, &r.base);
		break;
	}
	case K_V1DEC: {
		V1beta1__DecryptRequest r = V1BETA1__DECRYPT_REQUEST__INIT;
		const struct blob *b = &ln->in->b[idx % ln->in->n];
		r.version = v1ver;
		r.cipher.data = b->ct;
		r.cipher.len = b->len;
		pack_body(sl, &r.base);
		break;
	}
	default:
		die("bad lane kind");
	}
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, \
	strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE }

static int
slot_submit(struct slot *sl)
{
	struct lane *ln = sl->lane;
	nghttp2_nv nva[] = {
		NV(":method", "POST"),
		NV(":scheme", "http"),
		NV(":authority", "localhost"),
		NV(":path", kind_path[ln->kind]),
		NV("content-type", "application/grpc"),
		NV("te", "trailers"),
		NV("grpc-timeout", g_timeout_hdr),
		NV("user-agent", "p11kms-bench"),
	};
	nghttp2_data_provider dp;
	int32_t sid;

	sl->idx = ln->first + ln->issued++;
	build_request(sl, sl->idx);
	sl->rlen = 0;
	sl->http_status = sl->grpc_status = -1;
	sl->too_big = 0;
	sl->rst = 0;
	sl->msg[0] = '\0';
	dp.source.ptr = sl;
	dp.read_callback = read_body;
	sl->t_sent = sl->t_read = 0;
	sl->t0 = now_ns();
	if (ln->t_first == 0)
		ln->t_first = sl->t0;
	sid = nghttp2_submit_request(sl->conn->h2, NULL, nva,
	    sizeof(nva) / sizeof(nva[0]), &dp, sl);
	if (sid < 0) {
		snprintf(sl->conn->why, sizeof(sl->conn->why),
		    "nghttp2_submit_request: %s", nghttp2_strerror(sid));
		return -1;
	}
	sl->busy = 1;
	return 0;
}

static int
store_ann(struct blob *b, V2__EncryptResponse *r, size_t idx)
{
	size_t i;

	if (r->n_annotations > MAX_ANN) {
		wrong(idx, "%zu annotations; the bench keeps at most %d",
		    r->n_annotations, MAX_ANN);
		return -1;
	}
	b->ann = xcalloc(r->n_annotations, sizeof(*b->ann));
	for (i = 0; i < r->n_annotations; i++) {
		const V2__EncryptResponse__AnnotationsEntry *e =
		    r->annotations[i];
		if (e->key == NULL || e->key[0] == '\0' ||
		    strchr(e->key, '.') == NULL) {
			wrong(idx, "annotation key '%.60s' is not a domain "
			    "name", e->key ? e->key : "");
			return -1;
		}
		b->ann[i].key = strdup(e->key);
		b->ann[i].val = dup_bytes(e->value.data, e->value.len);
		b->ann[i].vlen = e->value.len;
		if (b->ann[i].key == NULL)
			die("out of memory");
		b->nann++;
	}
	return 0;
}

static int
check_plain(size_t idx, const struct ctset *in, const uint8_t *p, size_t len)
{
	uint8_t want[PT_LEN];

	make_pt(in->seed, idx % in->n, want);
	if (len != PT_LEN || memcmp(p, want, PT_LEN) != 0) {
		wrong(idx, "decrypted plaintext (%zu bytes) is not the one "
		    "sent to Encrypt", len);
		return -1;
	}
	return 0;
}

/* Checks one answer's message; stores ciphertexts. 0 or -1 (reported). */
static int
check_answer(struct slot *sl, const uint8_t *msg, size_t mlen)
{
	struct lane *ln = sl->lane;
	size_t idx = sl->idx;
	int ret = -1;

	switch (ln->kind) {
	case K_STATUS: {
		V2__StatusResponse *r = v2__status_response__unpack(NULL, mlen,
		    msg);
		if (r == NULL) {
			wrong(idx, "StatusResponse does not parse");
			break;
		}
		if (strcmp(r->version, "v2") != 0)
			wrong(idx, "version '%.40s', want v2", r->version);
		else if (strcmp(r->healthz, "ok") != 0)
			wrong(idx, "healthz '%.200s'", r->healthz);
		else if (r->key_id[0] == '\0' ||
		    strlen(r->key_id) >= sizeof(g_key_id))
			wrong(idx, "key_id empty or too long");
		else if (g_key_id[0] != '\0' &&
		    strcmp(r->key_id, g_key_id) != 0)
			wrong(idx, "key_id changed: %.80s, was %s", r->key_id,
			    g_key_id);
		else {
			if (g_key_id[0] == '\0')
				strcpy(g_key_id, r->key_id);
			ret = 0;
		}
		v2__status_response__free_unpacked(r, NULL);
		break;
	}
	case K_V2ENC: {
		V2__EncryptResponse *r = v2__encrypt_response__unpack(NULL,
		    mlen, msg);
		if (r == NULL) {
			wrong(idx, "EncryptResponse does not parse");
			break;
		}
		if (r->ciphertext.len == 0 || r->ciphertext.len > 1024)
			wrong(idx, "ciphertext of %zu bytes (1..1024)",
			    r->ciphertext.len);
		else if (strcmp(r->key_id, g_key_id) != 0)
			wrong(idx, "Encrypt key_id %.80s is not Status's %s",
			    r->key_id, g_key_id);
		else if (ln->out == NULL)
			ret = 0;
		else if (idx < ln->out->n) {
			struct blob *b = &ln->out->b[idx];
			b->ct = dup_bytes(r->ciphertext.data,
			    r->ciphertext.len);
			b->len = r->ciphertext.len;
			ret = store_ann(b, r, idx);
		}
		v2__encrypt_response__free_unpacked(r, NULL);
		break;
	}
	case K_V2DEC: {
		V2__DecryptResponse *r = v2__decrypt_response__unpack(NULL,
		    mlen, msg);
		if (r == NULL) {
			wrong(idx, "DecryptResponse does not parse");
			break;
		}
		ret = check_plain(idx, ln->in, r->plaintext.data,
		    r->plaintext.len);
		v2__decrypt_response__free_unpacked(r, NULL);
		break;
	}
	case K_V1VER: {
		V1beta1__VersionResponse *r =
		    v1beta1__version_response__unpack(NULL, mlen, msg);
		if (r == NULL) {
			wrong(idx, "VersionResponse does not parse");
			break;
		}
		if (strcmp(r->version, "v1beta1") != 0)
			wrong(idx, "version '%.40s', want v1beta1", r->version);
		else
			ret = 0;
		v1beta1__version_response__free_unpacked(r, NULL);
		break;
	}
	case K_V1ENC: {
		V1beta1__EncryptResponse *r =
		    v1beta1__encrypt_response__unpack(NULL, mlen, msg);
		if (r == NULL) {
			wrong(idx, "v1 EncryptResponse does not parse");
			break;
		}
		if (r->cipher.len == 0 || r->cipher.len > 1024)
			wrong(idx, "v1 cipher of %zu bytes (1..1024)",
			    r->cipher.len);
		else {
			if (ln->out != NULL && idx < ln->out->n) {
				ln->out->b[idx].ct = dup_bytes(r->cipher.data,
				    r->cipher.len);
				ln->out->b[idx].len = r->cipher.len;
			}
			ret = 0;
		}
		v1beta1__encrypt_response__free_unpacked(r, NULL);
		break;
	}
	case K_V1DEC: {
		V1beta1__DecryptResponse *r =
		    v1beta1__decrypt_response__unpack(NULL, mlen, msg);
		if (r == NULL) {
			wrong(idx, "v1 DecryptResponse does not parse");
			break;
		}
		ret = check_plain(idx, ln->in, r->plain.data, r->plain.len);
		v1beta1__decrypt_response__free_unpacked(r, NULL);
		break;
	}
	default:
		break;
	}
	return ret;
}

/* A stream closed: record its latency and check everything about it. */
static void
slot_finish(struct slot *sl)
{
	struct lane *ln = sl->lane;
	size_t mlen;

	sl->busy = 0;
	ln->done++;
	if (sl->t1 > ln->t_last)
		ln->t_last = sl->t1;
	lat_add(&ln->lat, sl->t1 - sl->t0);
	if (ln->interval_ns > 0 && sl->t_sent >= sl->t0 &&
	    sl->t_read >= sl->t_sent && sl->t1 >= sl->t_read) {
		struct part pt = { sl->t1 - sl->t0, sl->t_sent - sl->t0,
		    sl->t_read - sl->t_sent, sl->t1 - sl->t_read };

		parts_add(&ln->parts, &pt);
	}
	if (sl->rst != 0) {
		wrong(sl->idx, "stream reset (%s)",
		    nghttp2_http2_strerror(sl->rst));
		goto fail;
	}
	if (sl->http_status != 200) {
		wrong(sl->idx, "HTTP :status %d", sl->http_status);
		goto fail;
	}
	if (sl->grpc_status < 0) {
		wrong(sl->idx, "no grpc-status in the trailers");
		goto fail;
	}
	if (sl->grpc_status != 0) {
		if (ln->probe && sl->grpc_status == GRPC_UNIMPLEMENTED) {
			ln->unimplemented = 1;
			return;
		}
		wrong(sl->idx, "grpc-status %d: %s", sl->grpc_status, sl->msg);
		goto fail;
	}
	if (sl->too_big || sl->rlen < 5) {
		wrong(sl->idx, "response body of %zu bytes", sl->rlen);
		goto fail;
	}
	mlen = (size_t)sl->resp[1] << 24 | (size_t)sl->resp[2] << 16 |
	    (size_t)sl->resp[3] << 8 | sl->resp[4];
	if (sl->resp[0] != 0 || mlen != sl->rlen - 5) {
		wrong(sl->idx, "bad gRPC framing (flag %u, length %zu of %zu)",
		    sl->resp[0], mlen, sl->rlen - 5);
		goto fail;
	}
	if (check_answer(sl, sl->resp + 5, mlen) == 0)
		return;
 fail:
	ln->failed++;
}

static int
lane_counted_open(struct lane *const *lanes, size_t nl)
{
	size_t i;

	for (i = 0; i < nl; i++)
		if (lanes[i]->total > 0 && lanes[i]->done < lanes[i]->total)
			return 1;
	return 0;
}

static int
lane_wants_more(struct lane *ln, struct lane *const *lanes, size_t nl)
{
	if (g_stop)
		return 0;
	if (ln->total > 0)
		return ln->issued < ln->total;
	return lane_counted_open(lanes, nl);
}

/*
 * Runs lanes to completion over the client's connections: each lane keeps
 * conc requests in flight until it has sent total (background lanes until
 * every counted lane is done); a paced lane (interval_ns) sends each slot's
 * next request interval_ns after its previous one instead of at once.
 * Returns 0, or -1 when a connection was lost or requests got no answer
 * for STALL_NS (message on stderr).
 */
static int
run_lanes(struct client *cl, struct lane *const *lanes, size_t nl)
{
	struct pollfd pfd[MAX_CONNS];
	struct timespec ts;
	uint64_t now, next, last = now_ns();
	size_t i, inflight, waiting;
	unsigned j, k;
	int r, ret = -1;

	for (i = 0; i < nl; i++) {
		struct lane *ln = lanes[i];
		ln->slots = xcalloc(ln->conc, sizeof(*ln->slots));
		for (j = 0; j < ln->conc; j++) {
			ln->slots[j].lane = ln;
			ln->slots[j].conn = &cl->c[ln->conn_fixed >= 0 ?
			    (unsigned)ln->conn_fixed % cl->n : j % cl->n];
			ln->slots[j].waiting = 1;	/* due at once */
		}
	}
	for (;;) {
		/* Send what is due; find when the next paced one is. */
		now = now_ns();
		next = now + NS_PER_S / 10;
		inflight = waiting = 0;
		for (i = 0; i < nl; i++)
			for (j = 0; j < lanes[i]->conc; j++) {
				struct slot *sl = &lanes[i]->slots[j];

				if (sl->waiting &&
				    !lane_wants_more(sl->lane, lanes, nl))
					sl->waiting = 0;
				if (sl->waiting && sl->due <= now) {
					sl->waiting = 0;
					if (slot_submit(sl) != 0)
						goto lost;
				}
				if (sl->waiting) {
					waiting++;
					if (sl->due < next)
						next = sl->due;
				}
				inflight += sl->busy;
			}
		for (k = 0; k < cl->n; k++)
			if (conn_flush(&cl->c[k]) != 0)
				goto lost;
		if (inflight + waiting == 0)
			break;
		if (g_stop) {
			fprintf(stderr, "p11kms-bench: interrupted\n");
			goto out;
		}
		for (k = 0; k < cl->n; k++) {
			pfd[k].fd = cl->c[k].fd;
			pfd[k].events = POLLIN |
			    (conn_want_write(&cl->c[k]) ? POLLOUT : 0);
			pfd[k].revents = 0;
		}
		next = next > now ? next - now : 0;
		ts.tv_sec = (time_t)(next / NS_PER_S);
		ts.tv_nsec = (long)(next % NS_PER_S);
		r = ppoll(pfd, cl->n, &ts, NULL);
		if (r < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (r <= 0) {
			if (inflight > 0 && now_ns() - last > STALL_NS) {
				fprintf(stderr, "p11kms-bench: %s: %zu requests "
				    "got no answer for %llu s\n", g_scen,
				    inflight, STALL_NS / NS_PER_S);
				goto out;
			}
			continue;
		}
		for (k = 0; k < cl->n; k++) {
			struct conn *c = &cl->c[k];
			struct slot *sl;

			if ((pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) &&
			    conn_read(c) != 0)
				goto lost;
			while ((sl = c->done_head) != NULL) {
				if ((c->done_head = sl->next_done) == NULL)
					c->done_tail = NULL;
				last = now_ns();
				slot_finish(sl);
				if (!lane_wants_more(sl->lane, lanes, nl))
					continue;
				if (sl->lane->interval_ns > 0) {
					sl->waiting = 1;
					sl->due = sl->t0 + sl->lane->interval_ns;
				} else if (slot_submit(sl) != 0) {
					goto lost;
				}
			}
		}
	}
	ret = 0;
	goto out;
 lost:
	for (k = 0; k < cl->n; k++)
		if (cl->c[k].why[0] != '\0')
			fprintf(stderr, "p11kms-bench: %s: connection %u: %s\n",
			    g_scen, k, cl->c[k].why);
 out:
	for (k = 0; k < cl->n; k++)
		cl->c[k].nunsent = 0;	/* those slots are freed below */
	for (i = 0; i < nl; i++) {
		for (j = 0; j < lanes[i]->conc; j++)
			free(lanes[i]->slots[j].resp);
		free(lanes[i]->slots);
		lanes[i]->slots = NULL;
	}
	return ret;
}

static void
lane_init(struct lane *ln, enum kind k, unsigned conc, size_t total)
{
	memset(ln, 0, sizeof(*ln));
	ln->kind = k;
	ln->conc = conc;
	ln->total = total;
	ln->conn_fixed = -1;
	if (getrandom(&ln->pt_seed, sizeof(ln->pt_seed), 0) !=
	    sizeof(ln->pt_seed))
		ln->pt_seed = now_ns();
}

/* Status beside a load, on the load's connection (the first): one in
 * flight, one every --status-interval-us, as long as the load runs. */
static void
status_lane_init(struct lane *ln)
{
	lane_init(ln, K_STATUS, 1, 0);
	ln->conn_fixed = 0;
	ln->interval_ns = (uint64_t)opt.status_interval_us * 1000;
}

/* "every 1ms" or "c=1", for labels. */
static const char *
status_pace(void)
{
	static char buf[32];

	if (opt.status_interval_us == 0)
		return "c=1";
	snprintf(buf, sizeof(buf), "every %gms",
	    opt.status_interval_us / 1000.0);
	return buf;
}

static void
lane_free(struct lane *ln)
{
	free(ln->lat.v);
	ln->lat.v = NULL;
	free(ln->parts.v);
	ln->parts.v = NULL;
}

/* ---- the daemon ---- */

static void
daemon_log_tail(void)
{
	char buf[2048];
	ssize_t n;
	off_t sz;
	int fd;

	if (g_log[0] == '\0' || (fd = open(g_log, O_RDONLY)) == -1)
		return;
	sz = lseek(fd, 0, SEEK_END);
	(void)lseek(fd, sz > (off_t)sizeof(buf) - 1 ?
	    sz - (off_t)sizeof(buf) + 1 : 0, SEEK_SET);
	if ((n = read(fd, buf, sizeof(buf) - 1)) > 0) {
		buf[n] = '\0';
		fprintf(stderr, "--- end of %s ---\n%s---\n", g_log, buf);
	}
	close(fd);
}

/* utime + stime from /proc/PID/stat, in ns (clock-tick resolution). */
static uint64_t
proc_stat_cpu_ns(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY)) == -1)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* Fields after "(comm)": state is field 3, utime 14, stime 15. */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
	    "%llu %llu", &ut, &st) != 2)
		return 0;
	return (ut + st) * (NS_PER_S / (uint64_t)g_clk_tck);
}

/*
 * The daemon's CPU time (all threads, user + system) in ns: the kernel's
 * per-process CPU clock, which is what /proc/PID/stat's utime + stime are
 * rounded from, at ns instead of 10 ms resolution.
 */
/*
 * The daemon's processes: itself, then (--token-process=on) its spawner
 * and the token processes below that, found by parent pid. At most max.
 */
static size_t
daemon_tree(pid_t *pids, size_t max)
{
	char path[64], buf[512], *p;
	struct dirent *de;
	size_t n = 0, i;
	DIR *d;
	int fd, ppid;
	ssize_t r;

	if (max == 0)
		return 0;
	pids[n++] = g_daemon;
	for (i = 0; i < n && i < 2; i++) {	/* two levels down */
		if ((d = opendir("/proc")) == NULL)
			break;
		while ((de = readdir(d)) != NULL && n < max) {
			if (de->d_name[0] < '1' || de->d_name[0] > '9')
				continue;
			snprintf(path, sizeof(path), "/proc/%.20s/stat",
			    de->d_name);
			if ((fd = open(path, O_RDONLY)) == -1)
				continue;
			r = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			if (r <= 0)
				continue;
			buf[r] = '\0';
			if ((p = strrchr(buf, ')')) != NULL &&
			    sscanf(p + 1, " %*c %d", &ppid) == 1 &&
			    ppid == pids[i])
				pids[n++] = (pid_t)atoi(de->d_name);
		}
		closedir(d);
	}
	return n;
}

static uint64_t
daemon_cpu_ns(void)
{
	pid_t pids[16];
	clockid_t ck;
	uint64_t ns;
	size_t n, i;

	ns = g_dclk_ok ? clock_ns(g_dclk) : proc_stat_cpu_ns(g_daemon);
	/* With a token process: its CPU (and the spawner's) counts too. */
	n = daemon_tree(pids, sizeof(pids) / sizeof(pids[0]));
	for (i = 1; i < n; i++)
		ns += clock_getcpuclockid(pids[i], &ck) == 0 ? clock_ns(ck) :
		    proc_stat_cpu_ns(pids[i]);
	return ns;
}

/*
 * proc_status_kib summed over the daemon's processes; *token (may be
 * NULL) gets the part of those below the front.
 */
static long proc_status_kib(pid_t pid, const char *name);

static long
tree_status_kib(const char *name, long *token)
{
	pid_t pids[16];
	size_t n, i;
	long sum = 0, v;

	n = daemon_tree(pids, sizeof(pids) / sizeof(pids[0]));
	if (token != NULL)
		*token = 0;
	for (i = 0; i < n; i++) {
		if ((v = proc_status_kib(pids[i], name)) < 0)
			continue;
		sum += v;
		if (i > 0 && token != NULL)
			*token += v;
	}
	return n > 0 ? sum : -1;
}

/* A "Name:  N kB" line of /proc/PID/status, in KiB; -1 if absent. */
static long
proc_status_kib(pid_t pid, const char *name)
{
	char path[64], line[256];
	size_t nl = strlen(name);
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
			v = strtol(line + nl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* fork + exec of the daemon; *t0 is taken just before the fork. */
static pid_t
daemon_start(const char *module, unsigned workers, const char *fault_ctl,
    uint64_t *t0)
{
	char wbuf[16];
	const char *argv[20 + MAX_WRAP];
	size_t x;
	pid_t pid, parent = getpid();
	int fd, i = 0;

	snprintf(g_log, sizeof(g_log), "%s/daemon-%u.log", g_dir,
	    ++g_nstarts);
	snprintf(wbuf, sizeof(wbuf), "%u", workers);
	for (; i < (int)opt.nwrap; i++)
		argv[i] = opt.wrap[i];
	argv[i++] = opt.daemon;
	argv[i++] = "--socket";
	argv[i++] = g_sock;
	argv[i++] = "--module";
	argv[i++] = module;
	argv[i++] = "--key";
	argv[i++] = KEY_URI;
	argv[i++] = "--pin-file";
	argv[i++] = g_pin;
	argv[i++] = "--workers";
	argv[i++] = wbuf;
	for (x = 0; x < g_ndextra; x++)
		argv[i++] = g_dextra[x];
	if (opt.token_process != NULL) {
		argv[i++] = "--token-process";
		argv[i++] = opt.token_process;
	}
	argv[i] = NULL;
	(void)unlink(g_sock);
	fflush(NULL);
	*t0 = now_ns();
	if ((pid = fork()) == -1)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		sigset_t none;

		/* Die with the bench, even if it is SIGKILLed. */
		(void)prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if ((fd = open(g_log, O_WRONLY | O_CREAT | O_TRUNC, 0600)) != -1) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		if ((fd = open("/dev/null", O_RDONLY)) != -1) {
			dup2(fd, 0);
			close(fd);
		}
		if (fault_ctl != NULL) {
			setenv("P11KMS_FAULT_CONTROL", fault_ctl, 1);
			setenv("P11KMS_FAULT_TARGET", opt.module, 1);
			if (g_counts[0] != '\0')
				setenv("P11KMS_FAULT_COUNTS", g_counts, 1);
		}
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	g_daemon = pid;
	g_dclk_ok = clock_getcpuclockid(pid, &g_dclk) == 0 &&
	    clock_gettime(g_dclk, &(struct timespec){ 0, 0 }) == 0;
	g_cpu_src = g_dclk_ok ? "clock_getcpuclockid" : "/proc/PID/stat";
	return pid;
}

/* SIGTERM, bounded wait, SIGKILL. Returns the exit status or -1. */
static int
daemon_stop(void)
{
	pid_t pid = g_daemon;
	uint64_t until;
	int st;

	if (pid <= 0)
		return -1;
	(void)kill(pid, SIGTERM);
	until = now_ns() + STOP_NS;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r == -1 && errno != EINTR) {
			st = -1;
			break;
		}
		if (now_ns() > until) {
			fprintf(stderr, "p11kms-bench: daemon %d ignored "
			    "SIGTERM for %llu s: SIGKILL\n", (int)pid,
			    STOP_NS / NS_PER_S);
			(void)kill(pid, SIGKILL);
			(void)waitpid(pid, &st, 0);
			break;
		}
		sleep_ns(5000000);
	}
	g_daemon = -1;
	g_dclk_ok = 0;
	if (st != -1 && WIFEXITED(st))
		return WEXITSTATUS(st);
	return -1;
}

/* "workers=N" from the daemon's serving log line; 0 if not found. */
static unsigned
daemon_logged_workers(void)
{
	char buf[8192], *p, *last = NULL;
	ssize_t n;
	int fd;

	if ((fd = open(g_log, O_RDONLY)) == -1)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (p = buf; (p = strstr(p, "workers=")) != NULL; p++)
		last = p;
	return last ? (unsigned)strtoul(last + 8, NULL, 10) : 0;
}

/*
 * Polls connect + Status about every millisecond until the first good
 * Status answer; returns ms from t0 to that answer.
 */
static double
daemon_wait_ready(uint64_t t0)
{
	struct client cl;
	struct lane ln, *lp = &ln;
	const char *was = g_scen;
	double ms;
	int st;

	g_scen = "daemon start";
	memset(&cl, 0, sizeof(cl));
	for (;;) {
		if (g_stop)
			die("interrupted");
		if (waitpid(g_daemon, &st, WNOHANG) == g_daemon) {
			g_daemon = -1;
			daemon_log_tail();
			die("the daemon exited (status %d) before serving",
			    WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		}
		if (now_ns() - t0 > READY_NS) {
			daemon_log_tail();
			die("the daemon did not serve within %llu s",
			    READY_NS / NS_PER_S);
		}
		if (conn_open(&cl.c[0], g_sock) == 0)
			break;
		if (errno != ENOENT && errno != ECONNREFUSED)
			die("connect %s: %s", g_sock, strerror(errno));
		sleep_ns(1000000);
	}
	cl.n = 1;
	lane_init(&ln, K_STATUS, 1, 1);
	if (run_lanes(&cl, &lp, 1) != 0)
		die_run("no answer to the first Status");
	if (ln.failed != 0)
		die_run("the first Status was wrong");
	ms = (double)(ln.t_last - t0) / 1e6;
	lane_free(&ln);
	client_close(&cl);
	g_scen = was;
	return ms;
}

/* ---- hypervisor steal: /proc/stat's aggregate cpu line ---- */

/* One reading of the aggregate "cpu" line, in ticks (all CPUs). */
struct cpustat {
	int ok;
	uint64_t steal, total;
};

/* Steal and all ticks summed over one or more intervals. */
struct steal {
	int bad;		/* a reading failed: n/a */
	uint64_t steal, total;
};

static void
cpustat_read(struct cpustat *c)
{
	unsigned long long v[8];
	char line[512];
	FILE *f;
	int i;

	memset(c, 0, sizeof(*c));
	if ((f = fopen("/proc/stat", "r")) == NULL)
		return;
	/* cpu user nice system idle iowait irq softirq steal [guest ...]:
	 * guest time is already in user, so the first eight are the total. */
	if (fgets(line, sizeof(line), f) != NULL &&
	    sscanf(line, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
	    &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (i = 0; i < 8; i++)
			c->total += v[i];
		c->steal = v[7];
		c->ok = 1;
	}
	fclose(f);
}

/* Adds the interval from a to b. */
static void
steal_add(struct steal *s, const struct cpustat *a, const struct cpustat *b)
{
	if (!a->ok || !b->ok || b->total < a->total || b->steal < a->steal) {
		s->bad = 1;
		return;
	}
	s->steal += b->steal - a->steal;
	s->total += b->total - a->total;
}

static void
steal_sum(struct steal *s, const struct steal *t)
{
	s->bad |= t->bad;
	s->steal += t->steal;
	s->total += t->total;
}

/* Steal as a % of every tick, NAN (n/a) under STEAL_MIN_TICKS ticks. */
static double
steal_pct(const struct steal *s)
{
	if (s->bad || s->total < STEAL_MIN_TICKS)
		return NAN;
	return 100.0 * (double)s->steal / (double)s->total;
}

/* ---- results ---- */

struct base {
	int has;
	unsigned threads;
	size_t n, failed;
	double secs, ops, p50, p99, max, cpu;	/* µs; cpu per op */
	struct steal steal;
};

/* One round of a paired scenario: a slice served, the same slice raw. */
struct round {
	int raw_first;		/* raw side ran first in this round */
	size_t n, bn;		/* answers / raw operations */
	double secs, bsecs;	/* served / raw time */
	double srv_cpu, bcpu;	/* µs per request / per raw operation */
	struct steal steal, bsteal;
};

struct row {
	char key[40], label[64];
	int na;
	char why[120];
	size_t n, failed;
	double secs, ops, p50, p99, max;	/* µs */
	double srv_cpu, cli_cpu;		/* µs per request */
	struct steal steal;			/* served side */
	struct base base;
	double ideal;		/* slow token: workers / delay */
	struct round rnd[MAX_ROUNDS];
	unsigned nrnd;		/* 0: not a paired scenario */
	double tail[3];		/* paced: parts of the slowest 1%, µs */
	int has_tail;
};

static struct row g_rows[MAX_ROWS];
static size_t g_nrows;

static struct row *
row_new(const char *key, const char *label)
{
	struct row *r;

	if (g_nrows == MAX_ROWS)
		die("too many result rows");
	r = &g_rows[g_nrows++];
	memset(r, 0, sizeof(*r));
	snprintf(r->key, sizeof(r->key), "%s", key);
	snprintf(r->label, sizeof(r->label), "%s", label);
	r->srv_cpu = r->cli_cpu = r->ideal = NAN;
	return r;
}

static struct row *
row_find(const char *key)
{
	size_t i;

	for (i = 0; i < g_nrows; i++)
		if (strcmp(g_rows[i].key, key) == 0)
			return &g_rows[i];
	return NULL;
}

static struct row *
row_na(const char *key, const char *label, const char *why)
{
	struct row *r = row_new(key, label);

	r->na = 1;
	snprintf(r->why, sizeof(r->why), "%s", why);
	return r;
}

static void
row_from_lane(struct row *r, struct lane *ln)
{
	struct stats s;

	stats_of(ln->lat.v, ln->lat.n, &s);
	r->n = ln->done;
	r->failed = ln->failed;
	r->secs = (double)(ln->t_last - ln->t_first) / 1e9;
	r->ops = r->secs > 0 ? (double)ln->done / r->secs : NAN;
	r->p50 = s.p50;
	r->p99 = s.p99;
	r->max = s.max;
	if (ln->parts.n > 0) {
		parts_tail(&ln->parts, r->tail);
		r->has_tail = 1;
	}
}

/*
 * Runs lanes on the daemon; adds the daemon's and the bench's CPU (ns) and
 * the machine's steal over the run. Returns the answers of every lane.
 */
static size_t
serve_run(struct client *cl, struct lane *const *lanes, size_t nl,
    uint64_t *srv_ns, uint64_t *cli_ns, struct steal *st)
{
	struct cpustat p0, p1;
	uint64_t s0, c0, s1, c1;
	size_t i, total = 0;

	cpustat_read(&p0);
	s0 = daemon_cpu_ns();
	c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	if (run_lanes(cl, lanes, nl) != 0)
		die_run("load failed");
	s1 = daemon_cpu_ns();
	c1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	cpustat_read(&p1);
	steal_add(st, &p0, &p1);
	*srv_ns += s1 - s0;
	*cli_ns += c1 - c0;
	for (i = 0; i < nl; i++)
		total += lanes[i]->done;
	return total;
}

/*
 * Runs lanes on the daemon as one scenario; the daemon's and the bench's
 * CPU over the whole scenario is divided by every request of every lane.
 */
static void
serve(struct client *cl, struct lane *const *lanes, size_t nl,
    struct row *r, size_t main_lane)
{
	uint64_t srv = 0, cli = 0;
	size_t total;

	g_scen = r->label;
	total = serve_run(cl, lanes, nl, &srv, &cli, &r->steal);
	row_from_lane(r, lanes[main_lane]);
	if (total > 0) {
		r->srv_cpu = (double)srv / 1e3 / (double)total;
		r->cli_cpu = (double)cli / 1e3 / (double)total;
	}
}

/* One lane, one row. */
static void
serve1(struct client *cl, struct lane *ln, const char *key, const char *label)
{
	struct lane *lp = ln;

	serve(cl, &lp, 1, row_new(key, label), 0);
}

/* ---- raw baseline: keyring in this process ---- */

enum bop { B_SEAL, B_OPEN_V2, B_OPEN_V1 };

/*
 * The raw side of one scenario. Operation i seals make_pt(seed, i) or opens
 * in->b[i % in->n]; base_slice runs operations [lo, hi) on `threads`
 * sessions, and the sums over every slice make the row's baseline.
 */
struct bctx {
	struct keyring *kr;
	enum bop op;
	unsigned threads;
	size_t total;		/* operations over every slice */
	const struct ctset *in;
	uint64_t seed;
	atomic_size_t next, failed;
	size_t end;		/* this slice: next .. end - 1 */
	uint64_t *lat;		/* [total], ns */
	pthread_barrier_t bar;
	/* sums over the slices run so far */
	size_t done;
	uint64_t ns, cpu;
	struct steal steal;
};

struct bthread {
	struct bctx *b;
	pthread_t t;
	int err;
	uint64_t cpu, t_start, t_end;
};

static void *
base_main(void *arg)
{
	struct bthread *bt = arg;
	struct bctx *b = bt->b;
	struct keyring_worker *w = NULL;
	uint8_t pt[PT_LEN], out[KEYRING_MAX_CIPHERTEXT];
	char kid[KEYRING_KEY_ID_MAX];
	uint64_t c0, t0;
	size_t i, outlen;
	int r;

	/* Session opening is not part of the measured work. */
	bt->err = keyring_worker_new(b->kr, &w);
	pthread_barrier_wait(&b->bar);
	if (bt->err != KEYRING_OK)
		return NULL;
	c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	bt->t_start = now_ns();
	while ((i = atomic_fetch_add(&b->next, 1)) < b->end && !g_stop) {
		const struct blob *bl = b->in ? &b->in->b[i % b->in->n] : NULL;

		t0 = now_ns();
		if (b->op == B_SEAL) {
			make_pt(b->seed, i, pt);
			r = keyring_seal(w, pt, PT_LEN, out, sizeof(out),
			    &outlen, kid);
		} else {
			r = keyring_open(w, b->op == B_OPEN_V2 ? g_key_id :
			    NULL, bl->ct, bl->len, out, sizeof(out), &outlen,
			    NULL);
		}
		b->lat[i] = now_ns() - t0;
		if (r == KEYRING_OK && b->op != B_SEAL) {
			make_pt(b->in->seed, i % b->in->n, pt);
			if (outlen != PT_LEN || memcmp(out, pt, PT_LEN) != 0)
				r = KEYRING_E_AUTH;
		}
		if (r != KEYRING_OK)
			atomic_fetch_add(&b->failed, 1);
	}
	bt->cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
	bt->t_end = now_ns();
	keyring_worker_free(w);
	return NULL;
}

static void
base_begin(struct bctx *b, struct keyring *kr, enum bop op, unsigned threads,
    size_t total, const struct ctset *in)
{
	memset(b, 0, sizeof(*b));
	b->kr = kr;
	b->op = op;
	b->threads = threads;
	b->total = total;
	b->in = in;
	if (getrandom(&b->seed, sizeof(b->seed), 0) != sizeof(b->seed))
		b->seed = now_ns();
	atomic_init(&b->next, 0);
	atomic_init(&b->failed, 0);
	b->lat = xcalloc(total, sizeof(*b->lat));
}

/*
 * Operations [lo, hi), in process, on b->threads sessions; time is from the
 * first thread's start to the last one's end. Adds to b's sums and, when rd
 * is not NULL, fills the round's raw side.
 */
static void
base_slice(struct bctx *b, size_t lo, size_t hi, struct round *rd)
{
	struct bthread *bt = xcalloc(b->threads, sizeof(*bt));
	struct cpustat p0, p1;
	struct steal st = { 0, 0, 0 };
	uint64_t t0 = UINT64_MAX, t1 = 0, cpu = 0;
	unsigned i;

	atomic_store(&b->next, lo);
	b->end = hi;
	pthread_barrier_init(&b->bar, NULL, b->threads + 1);
	for (i = 0; i < b->threads; i++) {
		bt[i].b = b;
		if (pthread_create(&bt[i].t, NULL, base_main, &bt[i]) != 0)
			die("pthread_create failed");
	}
	pthread_barrier_wait(&b->bar);
	cpustat_read(&p0);
	for (i = 0; i < b->threads; i++) {
		pthread_join(bt[i].t, NULL);
		if (bt[i].err != KEYRING_OK)
			die("baseline: cannot open a token session: %s",
			    keyring_strerror(bt[i].err));
		if (bt[i].t_start < t0)
			t0 = bt[i].t_start;
		if (bt[i].t_end > t1)
			t1 = bt[i].t_end;
		cpu += bt[i].cpu;
	}
	cpustat_read(&p1);
	pthread_barrier_destroy(&b->bar);
	free(bt);
	if (g_stop)
		die("interrupted");
	steal_add(&st, &p0, &p1);
	steal_sum(&b->steal, &st);
	b->done += hi - lo;
	b->ns += t1 - t0;
	b->cpu += cpu;
	if (rd != NULL) {
		rd->bn = hi - lo;
		rd->bsecs = (double)(t1 - t0) / 1e9;
		rd->bcpu = hi > lo ? (double)cpu / 1e3 / (double)(hi - lo) :
		    NAN;
		rd->bsteal = st;
	}
}

/* The sums over every slice make r's baseline; frees b. */
static void
base_end(struct bctx *b, struct row *r)
{
	struct stats s;

	stats_of(b->lat, b->done, &s);
	r->base.has = 1;
	r->base.threads = b->threads;
	r->base.n = b->done;
	r->base.failed = atomic_load(&b->failed);
	r->base.secs = (double)b->ns / 1e9;
	r->base.ops = r->base.secs > 0 ? (double)b->done / r->base.secs :
	    NAN;
	r->base.p50 = s.p50;
	r->base.p99 = s.p99;
	r->base.max = s.max;
	r->base.cpu = b->done ? (double)b->cpu / 1e3 / (double)b->done : NAN;
	r->base.steal = b->steal;
	if (r->base.failed != 0) {
		g_errors += r->base.failed;
		fprintf(stderr, "p11kms-bench: baseline for %s: %zu of %zu "
		    "operations failed or gave back other bytes\n", r->label,
		    r->base.failed, b->done);
	}
	free(b->lat);
	b->lat = NULL;
}

/*
 * A scenario with a raw baseline, in interleaved rounds. ln is set up for
 * the whole scenario (kind, conc, total N, pt_seed, in, out); its N
 * requests are cut into --rounds slices, and each round runs one slice on
 * the daemon and the same slice raw (op on `threads` sessions, opening
 * bin's ciphertexts), served first in even rounds and raw first in odd
 * ones, so that both sides see the same machine. Request i is the same
 * request whatever the slicing: Encrypt answers land in ln->out->b[i], a
 * Decrypt sends ln->in->b[i % n] once. ops/s per side = requests / the sum
 * of its rounds' times; latencies over every request of the side; CPU per
 * request summed over the rounds.
 */
static void
paired(struct client *cl, struct keyring *kr, struct lane *ln,
    const char *key, const char *label, enum bop op, unsigned threads,
    const struct ctset *bin)
{
	struct row *r = row_new(key, label);
	struct lane *lp = ln;
	struct bctx b;
	struct stats s;
	size_t N = ln->total, lo, hi, done = 0;
	uint64_t srv = 0, cli = 0, srv_ns = 0, cli_ns = 0, secs_ns = 0;
	unsigned k, K = opt.rounds, side;

	if (K > N)
		K = (unsigned)N;
	g_scen = r->label;
	base_begin(&b, kr, op, threads, N, bin);
	for (k = 0; k < K; k++) {
		struct round *rd = &r->rnd[k];

		lo = N * k / K;
		hi = N * (k + 1) / K;
		rd->raw_first = k % 2;
		for (side = 0; side < 2; side++) {
			if ((side == 0) == rd->raw_first) {
				base_slice(&b, lo, hi, rd);
				continue;
			}
			/* The slice on the daemon; latencies and failures
			 * pile up in ln over the rounds. */
			ln->first = lo;
			ln->total = hi - lo;
			ln->issued = ln->done = 0;
			ln->t_first = ln->t_last = 0;
			srv = cli = 0;
			rd->n = serve_run(cl, &lp, 1, &srv, &cli, &rd->steal);
			rd->secs = (double)(ln->t_last - ln->t_first) / 1e9;
			rd->srv_cpu = rd->n ? (double)srv / 1e3 /
			    (double)rd->n : NAN;
			steal_sum(&r->steal, &rd->steal);
			done += rd->n;
			srv_ns += srv;
			cli_ns += cli;
			secs_ns += ln->t_last - ln->t_first;
		}
	}
	r->nrnd = K;
	ln->first = 0;
	ln->total = N;
	stats_of(ln->lat.v, ln->lat.n, &s);
	r->n = done;
	r->failed = ln->failed;
	r->secs = (double)secs_ns / 1e9;
	r->ops = r->secs > 0 ? (double)done / r->secs : NAN;
	r->p50 = s.p50;
	r->p99 = s.p99;
	r->max = s.max;
	if (done > 0) {
		r->srv_cpu = (double)srv_ns / 1e3 / (double)done;
		r->cli_cpu = (double)cli_ns / 1e3 / (double)done;
	}
	base_end(&b, r);
}

/* ---- temp dir, token, signals ---- */

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)remove(path);
	return 0;
}

static void
cleanup(void)
{
	if (g_daemon > 0)
		(void)daemon_stop();
	if (g_dir[0] != '\0') {
		if (opt.keep)
			fprintf(stderr, "p11kms-bench: kept %s\n", g_dir);
		else
			(void)nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		g_dir[0] = '\0';
	}
}

static void
on_signal(int sig)
{
	pid_t d = g_daemon;

	g_stop = 1;
	if (d > 0)
		(void)kill(d, SIGTERM);
}

static void
make_token(void)
{
	pid_t pid;
	int st, fd;

	if (mkdtemp(strcpy(g_dir, "/tmp/p11kms-bench-XXXXXX")) == NULL) {
		g_dir[0] = '\0';
		die("mkdtemp: %s", strerror(errno));
	}
	snprintf(g_sock, sizeof(g_sock), "%s/kms.sock", g_dir);
	snprintf(g_pin, sizeof(g_pin), "%s/pin", g_dir);
	snprintf(g_conf, sizeof(g_conf), "%s/softhsm2.conf", g_dir);
	if (setenv("SOFTHSM2_CONF", g_conf, 1) != 0)
		die("setenv failed");
	fflush(NULL);
	if ((pid = fork()) == -1)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		if ((fd = open("/dev/null", O_WRONLY)) != -1) {
			dup2(fd, 1);	/* errors still reach stderr */
			close(fd);
		}
		execlp("sh", "sh", opt.mktoken, g_dir, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
	    WEXITSTATUS(st) != 0)
		die("%s %s failed", opt.mktoken, g_dir);
}

/* Writes the fault module's control file atomically (temp + rename). */
static void
write_ctl(const char *path, const char *text)
{
	char tmp[160];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((f = fopen(tmp, "w")) == NULL || fputs(text, f) == EOF ||
	    fclose(f) != 0 || rename(tmp, path) != 0)
		die("cannot write %s", path);
}

/* ---- scenarios ---- */

static double g_cold_ms[16];
static unsigned g_ncold;
static long g_rss_idle = -1, g_rss_peak = -1, g_rss_now = -1;
static long g_rss_peak_token = -1;	/* of it below the front */
static uint64_t g_cpu_clock_total, g_cpu_stat_total;
static int g_exit_status = -2;
static const char *g_v1_na;		/* why v1 rows are n/a, or NULL */
static const char *g_storm_mode = "v1";
static char g_slow_na[160];
static struct {
	unsigned workers;
	double start_ms;
} g_slow[MAX_SLOW];
static size_t g_nslow;

static void
slow_scenario(void)
{
	char ctl[128], rules[128], key[40], label[64];
	struct client cl;
	uint64_t t0;
	size_t i;
	int st;

	if (opt.no_slow) {
		snprintf(g_slow_na, sizeof(g_slow_na), "skipped (--no-slow)");
		return;
	}
	if (access(opt.fault_module, R_OK) != 0) {
		snprintf(g_slow_na, sizeof(g_slow_na), "fault module %.100s "
		    "not built", opt.fault_module);
		return;
	}
	snprintf(ctl, sizeof(ctl), "%s/fault.ctl", g_dir);
	snprintf(rules, sizeof(rules), "C_Encrypt delay %u\nC_Decrypt delay "
	    "%u\n", opt.slow_delay_ms, opt.slow_delay_ms);
	for (i = 0; i < opt.nslow; i++) {
		unsigned w = opt.slow_workers[i];
		struct lane enc, stat, *lanes[2] = { &enc, &stat };
		size_t n = (size_t)w * opt.slow_secs * 1000 /
		    opt.slow_delay_ms;
		struct row *re, *rs;

		/* Start fast, then slow the token down: the module re-reads
		 * its control file when it changes. */
		write_ctl(ctl, "# no faults while starting\n");
		(void)daemon_start(opt.fault_module, w, ctl, &t0);
		g_scen = "slow token: daemon start";
		g_slow[g_nslow].workers = w;
		g_slow[g_nslow].start_ms = daemon_wait_ready(t0);
		g_nslow++;
		write_ctl(ctl, rules);
		client_open(&cl, 1);
		lane_init(&enc, K_V2ENC, opt.conc, n < 4 ? 4 : n);
		enc.conn_fixed = 0;
		status_lane_init(&stat);
		snprintf(key, sizeof(key), "slow_w%u_encrypt", w);
		snprintf(label, sizeof(label), "slow %ums w=%u Encrypt c=%u",
		    opt.slow_delay_ms, w, opt.conc);
		re = row_new(key, label);
		serve(&cl, lanes, 2, re, 0);
		re->ideal = (double)w * 1000.0 / opt.slow_delay_ms;
		snprintf(key, sizeof(key), "slow_w%u_status", w);
		snprintf(label, sizeof(label), "slow %ums w=%u Status %s",
		    opt.slow_delay_ms, w, status_pace());
		rs = row_new(key, label);
		row_from_lane(rs, &stat);
		rs->steal = re->steal;
		lane_free(&enc);
		lane_free(&stat);
		client_close(&cl);
		write_ctl(ctl, "# stopping\n");
		if ((st = daemon_stop()) != 0)
			fprintf(stderr, "p11kms-bench: slow-token daemon exited "
			    "with status %d after SIGTERM\n", st);
	}
}

/*
 * PKCS#11 calls per request, counted by the fault module in front of the
 * same token (its counts file: every call, by function), for each way of
 * making a GCM IV: ours (the token as it is), and the FIPS-mode forms the
 * module emulates. A 3.0 message-API seal is one C_EncryptMessage, as the
 * operation stays initialized per session.
 */
#define CALLS_FN_MAX	128
#define CALLS_FORMS	3

static void run_quiet(struct client *cl, struct lane *ln, const char *what);

struct calls {
	char fn[CALLS_FN_MAX][64];
	unsigned long n[CALLS_FN_MAX];
	size_t nfn;
};

static const struct {
	const char *name, *rule;
} calls_forms[CALLS_FORMS] = {
	{ "IV chosen by p11kms", "" },
	{ "IV by the token, 3.0 message API", "C_EncryptInit gcm-iv message\n" },
	{ "IV by the token, appended (2.40)", "C_EncryptInit gcm-iv append\n" },
};
static char g_calls_line[CALLS_FORMS][2][256];
static char g_calls_na[160];
static struct row *g_calls_rows[CALLS_FORMS][2];

static void
calls_read(struct calls *c)
{
	char name[64];
	unsigned long v;
	FILE *f;

	memset(c, 0, sizeof(*c));
	if ((f = fopen(g_counts, "r")) == NULL)
		return;
	while (c->nfn < CALLS_FN_MAX &&
	    fscanf(f, "%63s %lu", name, &v) == 2) {
		snprintf(c->fn[c->nfn], sizeof(c->fn[0]), "%s", name);
		c->n[c->nfn++] = v;
	}
	fclose(f);
}

static unsigned long
calls_of(const struct calls *c, const char *fn)
{
	size_t i;

	for (i = 0; i < c->nfn; i++)
		if (strcmp(c->fn[i], fn) == 0)
			return c->n[i];
	return 0;
}

/* "2.00 = C_EncryptInit 1.00 + C_Encrypt 1.00" for the calls between. */
static void
calls_line(const struct calls *a, const struct calls *b, size_t reqs,
    char *out, size_t cap)
{
	unsigned long d, total = 0;
	size_t i, o;

	out[0] = '\0';
	for (i = 0; i < b->nfn; i++)
		total += b->n[i] - calls_of(a, b->fn[i]);
	snprintf(out, cap, "%.2f =", reqs ? (double)total / reqs : 0.0);
	for (i = 0; i < b->nfn; i++) {
		d = b->n[i] - calls_of(a, b->fn[i]);
		if (d == 0)
			continue;
		o = strlen(out);
		snprintf(out + o, cap - o, "%s %s %.2f", o > 0 &&
		    out[o - 1] != '=' ? " +" : "", b->fn[i],
		    (double)d / reqs);
	}
}

static void
calls_scenario(void)
{
	char ctl[128], key[40], label[96];
	struct calls c0, c1, c2;
	struct client cl;
	struct lane ln, *lp = &ln;
	struct ctset *cts;
	uint64_t t0;
	size_t f, n = opt.n64 / 4 ? opt.n64 / 4 : 1;
	int st;

	if (access(opt.fault_module, R_OK) != 0) {
		snprintf(g_calls_na, sizeof(g_calls_na), "fault module %.100s "
		    "not built", opt.fault_module);
		return;
	}
	snprintf(ctl, sizeof(ctl), "%s/calls.ctl", g_dir);
	snprintf(g_counts, sizeof(g_counts), "%s/calls.counts", g_dir);
	for (f = 0; f < CALLS_FORMS; f++) {
		write_ctl(ctl, calls_forms[f].rule);
		(void)daemon_start(opt.fault_module, g_daemon_workers, ctl,
		    &t0);
		g_scen = "calls: daemon start";
		(void)daemon_wait_ready(t0);
		client_open(&cl, 1);
		/* Every worker's session opens its operations first. */
		lane_init(&ln, K_V2ENC, opt.conc, 4 * opt.conc);
		run_quiet(&cl, &ln, "calls: warm-up");
		lane_free(&ln);

		cts = ctset_new(n);
		calls_read(&c0);
		snprintf(key, sizeof(key), "calls%zu_encrypt", f);
		snprintf(label, sizeof(label), "counted: v2 Encrypt c=%u, %s",
		    opt.conc, calls_forms[f].name);
		lane_init(&ln, K_V2ENC, opt.conc, n);
		ln.pt_seed = cts->seed;
		ln.out = cts;
		g_calls_rows[f][0] = row_new(key, label);
		serve(&cl, &lp, 1, g_calls_rows[f][0], 0);
		lane_free(&ln);
		calls_read(&c1);
		snprintf(key, sizeof(key), "calls%zu_decrypt", f);
		snprintf(label, sizeof(label), "counted: v2 Decrypt c=%u, %s",
		    opt.conc, calls_forms[f].name);
		lane_init(&ln, K_V2DEC, opt.conc, n);
		ln.in = cts;
		g_calls_rows[f][1] = row_new(key, label);
		serve(&cl, &lp, 1, g_calls_rows[f][1], 0);
		lane_free(&ln);
		calls_read(&c2);
		calls_line(&c0, &c1, n, g_calls_line[f][0],
		    sizeof(g_calls_line[f][0]));
		calls_line(&c1, &c2, n, g_calls_line[f][1],
		    sizeof(g_calls_line[f][1]));
		ctset_free(cts);
		client_close(&cl);
		if ((st = daemon_stop()) != 0)
			fprintf(stderr, "p11kms-bench: calls daemon exited with "
			    "status %d after SIGTERM\n", st);
	}
	g_counts[0] = '\0';
}

static void
print_calls(void)
{
	size_t f;

	printf("\nPKCS#11 calls per request (the fault module's counts, in "
	    "front of the same token; probes excluded; the \"counted:\" rows' "
	    "times include the module's own cost, a file write per call, and "
	    "are no speed figure):\n");
	if (g_calls_na[0] != '\0') {
		printf("  n/a: %s\n", g_calls_na);
		return;
	}
	for (f = 0; f < CALLS_FORMS; f++) {
		if (g_calls_line[f][0][0] == '\0')
			continue;
		printf("  %-34s Encrypt %s\n", calls_forms[f].name,
		    g_calls_line[f][0]);
		printf("  %-34s Decrypt %s\n", "", g_calls_line[f][1]);
	}
}

/* Runs one unreported lane (warm-up, probes); dies if the daemon fails. */
static void
run_quiet(struct client *cl, struct lane *ln, const char *what)
{
	struct lane *lp = ln;

	g_scen = what;
	if (run_lanes(cl, &lp, 1) != 0)
		die_run("failed");
}

/* Asks the daemon whether it serves v1beta1; sets g_v1_na if not. */
static void
probe_v1(struct client *cl)
{
	struct lane ln;

	lane_init(&ln, K_V1VER, 1, 1);
	ln.probe = 1;
	run_quiet(cl, &ln, "v1 Version probe");
	if (ln.unimplemented)
		g_v1_na = "v1beta1 Version answers UNIMPLEMENTED";
	else if (ln.failed)
		g_v1_na = "v1beta1 Version answered wrongly";
	lane_free(&ln);
	if (g_v1_na != NULL)
		return;
	lane_init(&ln, K_V1ENC, 1, 1);
	ln.probe = 1;
	run_quiet(cl, &ln, "v1 Encrypt probe");
	if (ln.unimplemented)
		g_v1_na = "v1beta1 Encrypt answers UNIMPLEMENTED";
	else if (ln.failed)
		g_v1_na = "v1beta1 Encrypt answered wrongly";
	lane_free(&ln);
}

/*
 * The audit log's cost: v2 Encrypt c=64 on a daemon with --audit-log and
 * --audit-sync batch against the same daemon without, in interleaved
 * rounds (a fresh daemon per side and round, each warmed up first), so both
 * sides see the same machine. The audit side is the row, the other side
 * its "base"; then audit-verify checks the file the audited daemon wrote.
 */
static void
audit_scenario(void)
{
	char path[128], label[64], cmd[400];
	struct client cl;
	struct lane ln, *lp = &ln;
	struct row *r;
	struct round *rd;
	uint64_t t0, c0, c1;
	size_t slice, total_a = 0, total_b = 0;
	double secs_a = 0, secs_b = 0, cpu_a = 0, cpu_b = 0;
	unsigned k, side, K = opt.rounds, C = opt.conc;
	int audited, st;

	if (opt.audit_log != NULL)
		snprintf(path, sizeof(path), "%s", opt.audit_log);
	else
		snprintf(path, sizeof(path), "%s/audit.log", g_dir);
	(void)unlink(path);
	if (K > MAX_ROUNDS)
		K = MAX_ROUNDS;
	slice = opt.n64 / K > 0 ? opt.n64 / K : 1;
	snprintf(label, sizeof(label), "v2 Encrypt c=%u audit-log %s", C,
	    opt.audit_sync != NULL ? opt.audit_sync : "batch");
	r = row_new("audit_encrypt_c64", label);
	for (k = 0; k < K; k++) {
		rd = &r->rnd[k];
		rd->raw_first = k % 2 == 1;	/* "raw": without audit */
		for (side = 0; side < 2; side++) {
			audited = (side == 0) != (rd->raw_first != 0);
			g_ndextra = 0;
			if (audited) {
				g_dextra[g_ndextra++] = "--audit-log";
				g_dextra[g_ndextra++] = path;
				g_dextra[g_ndextra++] = "--audit-sync";
				g_dextra[g_ndextra++] = opt.audit_sync != NULL ?
				    opt.audit_sync : "batch";
			}
			(void)daemon_start(opt.module, opt.workers, NULL, &t0);
			(void)daemon_wait_ready(t0);
			client_open(&cl, opt.conns);
			lane_init(&ln, K_V2ENC, C, 4 * C);
			run_quiet(&cl, &ln, "audit warm-up");
			lane_free(&ln);
			g_scen = audited ? "audit: with --audit-log" :
			    "audit: without --audit-log";
			lane_init(&ln, K_V2ENC, C, slice);
			c0 = daemon_cpu_ns();
			if (run_lanes(&cl, &lp, 1) != 0)
				die_run("load failed");
			c1 = daemon_cpu_ns();
			if (ln.failed > 0)
				r->failed += ln.failed;
			if (audited) {
				rd->n = ln.done;
				rd->secs = (double)(ln.t_last - ln.t_first) /
				    1e9;
				rd->srv_cpu = ln.done ? (double)(c1 - c0) /
				    1e3 / (double)ln.done : NAN;
				total_a += ln.done;
				secs_a += rd->secs;
				cpu_a += (double)(c1 - c0);
			} else {
				rd->bn = ln.done;
				rd->bsecs = (double)(ln.t_last - ln.t_first) /
				    1e9;
				rd->bcpu = ln.done ? (double)(c1 - c0) / 1e3 /
				    (double)ln.done : NAN;
				total_b += ln.done;
				secs_b += rd->bsecs;
				cpu_b += (double)(c1 - c0);
			}
			lane_free(&ln);
			client_close(&cl);
			if ((st = daemon_stop()) != 0)
				fprintf(stderr, "p11kms-bench: audit daemon "
				    "exited with status %d\n", st);
		}
	}
	g_ndextra = 0;
	r->nrnd = K;
	r->n = total_a;
	r->secs = secs_a;
	r->ops = secs_a > 0 ? (double)total_a / secs_a : NAN;
	r->p50 = r->p99 = r->max = NAN;
	r->srv_cpu = total_a ? cpu_a / 1e3 / (double)total_a : NAN;
	r->base.has = 1;
	r->base.threads = g_daemon_workers;
	r->base.n = total_b;
	r->base.secs = secs_b;
	r->base.ops = secs_b > 0 ? (double)total_b / secs_b : NAN;
	r->base.p50 = r->base.p99 = r->base.max = NAN;
	r->base.cpu = total_b ? cpu_b / 1e3 / (double)total_b : NAN;
	snprintf(cmd, sizeof(cmd), "'%s' audit-verify '%s' | head -n 1",
	    opt.daemon, path);
	printf("audit log of the audited rounds: ");
	fflush(stdout);
	if (system(cmd) != 0)
		printf("(audit-verify could not run)\n");
}

static void
server_scenarios(struct keyring *kr)
{
	struct client cl;
	struct lane ln, enc, stat, *mixed[2] = { &enc, &stat };
	struct ctset *e1 = NULL, *e64 = NULL, *v64 = NULL;
	struct row *r;
	unsigned T = g_daemon_workers, C = opt.conc;
	char label[64];

	client_open(&cl, opt.conns);

	/* Warm-up (checked, not reported). */
	lane_init(&ln, K_V2ENC, C, 4 * C);
	run_quiet(&cl, &ln, "warm-up");
	lane_free(&ln);

	if (want(S_STATUS)) {
		lane_init(&ln, K_STATUS, 1, opt.n1);
		serve1(&cl, &ln, "status_c1", "Status c=1");
		lane_free(&ln);
		snprintf(label, sizeof(label), "Status c=%u", C);
		lane_init(&ln, K_STATUS, C, opt.n64);
		serve1(&cl, &ln, "status_c64", label);
		lane_free(&ln);
		/* The reference for Status under load: same pace, idle. */
		if (opt.status_interval_us > 0) {
			status_lane_init(&ln);
			ln.total = opt.n1 / 4 ? opt.n1 / 4 : 1;
			snprintf(label, sizeof(label), "Status %s, idle",
			    status_pace());
			serve1(&cl, &ln, "status_paced", label);
			lane_free(&ln);
		}
	}

	/* Encrypt makes the distinct ciphertexts Decrypt and storm use. */
	if (want(S_ENCRYPT)) {
		e1 = ctset_new(opt.n1);
		lane_init(&ln, K_V2ENC, 1, opt.n1);
		ln.pt_seed = e1->seed;
		ln.out = e1;
		paired(&cl, kr, &ln, "v2_encrypt_c1", "v2 Encrypt c=1",
		    B_SEAL, 1, NULL);
		lane_free(&ln);

		e64 = ctset_new(opt.n64);
		snprintf(label, sizeof(label), "v2 Encrypt c=%u", C);
		lane_init(&ln, K_V2ENC, C, opt.n64);
		ln.pt_seed = e64->seed;
		ln.out = e64;
		paired(&cl, kr, &ln, "v2_encrypt_c64", label, B_SEAL, T,
		    NULL);
		lane_free(&ln);
	}

	if (want(S_DECRYPT)) {
		lane_init(&ln, K_V2DEC, 1, opt.n1);
		ln.in = e1;
		paired(&cl, kr, &ln, "v2_decrypt_c1", "v2 Decrypt c=1",
		    B_OPEN_V2, 1, e1);
		lane_free(&ln);

		snprintf(label, sizeof(label), "v2 Decrypt c=%u", C);
		lane_init(&ln, K_V2DEC, C, opt.n64);
		ln.in = e64;
		paired(&cl, kr, &ln, "v2_decrypt_c64", label, B_OPEN_V2, T,
		    e64);
		lane_free(&ln);
	}

	/* Status next to Encrypt load, same connection. */
	if (want(S_MIXED)) {
		lane_init(&enc, K_V2ENC, C, opt.n64);
		enc.conn_fixed = 0;
		status_lane_init(&stat);
		snprintf(label, sizeof(label), "Encrypt c=%u + Status %s", C,
		    status_pace());
		r = row_new("mixed_encrypt", label);
		serve(&cl, mixed, 2, r, 0);
		snprintf(label, sizeof(label), "Status %s under Encrypt c=%u",
		    status_pace(), C);
		row_from_lane(row_new("mixed_status", label), &stat);
		g_rows[g_nrows - 1].steal = r->steal;
		lane_free(&enc);
		lane_free(&stat);
	}

	/* v1beta1: n/a while the daemon does not serve it. */
	if (want(S_V1)) {
		probe_v1(&cl);
		snprintf(label, sizeof(label), "v1 Encrypt c=%u", C);
		if (g_v1_na != NULL) {
			row_na("v1_encrypt_c1", "v1 Encrypt c=1", g_v1_na);
			row_na("v1_encrypt_c64", label, g_v1_na);
		} else {
			lane_init(&ln, K_V1ENC, 1, opt.n1);
			paired(&cl, kr, &ln, "v1_encrypt_c1", "v1 Encrypt c=1",
			    B_SEAL, 1, NULL);
			lane_free(&ln);
			v64 = ctset_new(opt.n64);
			lane_init(&ln, K_V1ENC, C, opt.n64);
			ln.pt_seed = v64->seed;
			ln.out = v64;
			paired(&cl, kr, &ln, "v1_encrypt_c64", label, B_SEAL,
			    T, NULL);
			lane_free(&ln);
		}
	}

	/* Restart storm: opt.storm distinct DEK Decrypts at c=C. */
	if (want(S_STORM)) {
		if (g_v1_na != NULL) {
			g_storm_mode = "v2-stand-in";
			snprintf(label, sizeof(label), "storm* v2 Decrypt c=%u "
			    "x%zu", C, opt.storm);
			lane_init(&ln, K_V2DEC, C, opt.storm);
			ln.in = e64;
		} else {
			snprintf(label, sizeof(label), "storm v1 Decrypt c=%u "
			    "x%zu", C, opt.storm);
			lane_init(&ln, K_V1DEC, C, opt.storm);
			ln.in = v64;
		}
		if (opt.storm > opt.n64)
			fprintf(stderr, "p11kms-bench: --storm %zu > "
			    "--requests %zu: storm ciphertexts repeat\n",
			    opt.storm, opt.n64);
		/* The raw work of a v1 Decrypt: open, the envelope names
		 * the key. */
		paired(&cl, kr, &ln, "storm", label, B_OPEN_V1, T, e64);
		lane_free(&ln);
	}

	g_rss_peak = tree_status_kib("VmHWM", &g_rss_peak_token);
	g_rss_now = tree_status_kib("VmRSS", NULL);
	g_cpu_clock_total = daemon_cpu_ns();
	g_cpu_stat_total = proc_stat_cpu_ns(g_daemon);
	client_close(&cl);
	ctset_free(e1);
	ctset_free(e64);
	ctset_free(v64);
}

/* ---- output ---- */

/* v with prec decimals, "-" when unknown. */
static void
fmt_num(char *buf, size_t cap, double v, int prec)
{
	if (isnan(v))
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.*f", prec, v);
}

/* Ratio of a round: served ops/s / raw ops/s. */
static double
round_ratio(const struct round *rd)
{
	if (rd->secs <= 0 || rd->bsecs <= 0 || rd->bn == 0)
		return NAN;
	return ((double)rd->n / rd->secs) / ((double)rd->bn / rd->bsecs);
}

/* Steal % for the table: "n/a" under STEAL_MIN_TICKS ticks. */
static void
fmt_steal(char *buf, size_t cap, const struct steal *st)
{
	double v = steal_pct(st);

	if (isnan(v))
		snprintf(buf, cap, "n/a");
	else
		snprintf(buf, cap, "%.1f", v);
}

/* "  rounds: 0.84 0.81 ..." for n values. */
static void
print_rounds(const char *indent, const double *v, unsigned n, int prec)
{
	unsigned k;

	printf("%srounds:", indent);
	for (k = 0; k < n; k++)
		if (isnan(v[k]))
			printf(" -");
		else
			printf(" %.*f", prec, v[k]);
	printf("\n");
}

static void
print_table(void)
{
	char ops[16], p50[16], p99[16], mx[16], cpu[16], bops[16], ratio[16];
	char steal[16];
	double rr[MAX_ROUNDS];
	size_t i;
	unsigned k;
	int any = 0;

	printf("\n%-36s %9s %8s %8s %9s %9s %10s %6s %6s\n", "scenario",
	    "ops/s", "p50 us", "p99 us", "max us", "srvCPU/rq", "base ops/s",
	    "ratio", "steal%");
	for (i = 0; i < g_nrows; i++) {
		struct row *r = &g_rows[i];
		double b = r->base.has ? r->base.ops : r->ideal;

		if (r->na) {
			printf("%-36s %9s  (%s)\n", r->label, "n/a", r->why);
			continue;
		}
		fmt_num(ops, sizeof(ops), r->ops, 0);
		fmt_num(p50, sizeof(p50), r->p50, 0);
		fmt_num(p99, sizeof(p99), r->p99, 0);
		fmt_num(mx, sizeof(mx), r->max, 0);
		fmt_num(cpu, sizeof(cpu), r->srv_cpu, 1);
		fmt_num(bops, sizeof(bops), b, 0);
		if (!r->base.has && !isnan(b))
			strcat(bops, "*");	/* ideal, not measured */
		fmt_num(ratio, sizeof(ratio), isnan(b) ? NAN : r->ops / b, 2);
		fmt_steal(steal, sizeof(steal), &r->steal);
		printf("%-36s %9s %8s %8s %9s %9s %10s %6s %6s%s\n", r->label,
		    ops, p50, p99, mx, cpu, bops, ratio, steal,
		    r->failed ? "  FAILED" : "");
	}
	for (i = 0; i < g_nrows; i++) {
		struct row *r = &g_rows[i];

		if (r->na || r->nrnd < 2)
			continue;
		if (!any++)
			printf("\nratio per round (served ops/s / raw ops/s for "
			    "the same slice; rounds alternate\n  served "
			    "first, raw first, ...):\n");
		for (k = 0; k < r->nrnd; k++)
			rr[k] = round_ratio(&r->rnd[k]);
		printf("  %-36s", r->label);
		print_rounds(" ", rr, r->nrnd, 2);
	}
	printf("\nbaseline: the same seal/open in-process (keyring API, same "
	    "token and key),\n  1 thread for c=1, %u threads (= daemon "
	    "workers) otherwise; ratio = ops/s / baseline ops/s.\n",
	    g_daemon_workers);
	printf("rounds: %u per scenario with a baseline (at most one per "
	    "request), each a slice\n  served then the same slice raw, or "
	    "raw then served; ops/s = requests / time\n  summed over the "
	    "side's rounds.\n", opt.rounds);
	printf("steal%%: the hypervisor's share of all CPU ticks (/proc/stat) "
	    "while the served side\n  ran; n/a under %d ticks.\n",
	    STEAL_MIN_TICKS);
	if (strcmp(g_storm_mode, "v1") != 0)
		printf("storm*: v1 is n/a (%s); v2 Decrypt stands in.\n",
		    g_v1_na);
	if (g_slow_na[0] != '\0')
		printf("slow token: n/a (%s)\n", g_slow_na);
	else
		printf("slow token: base ops/s* is the ideal, workers x "
		    "1000 / delay ms.\n");
}

/* A figure against its target, for the summary and the JSON. */
struct target {
	const char *key, *what, *unit;
	double value, limit;
	int le;			/* value must be <= limit (else >=) */
	double rounds[MAX_ROUNDS];	/* the figure per round, if paired */
	unsigned nrounds;
};

static struct target g_t[16];
static size_t g_nt;

static void
target(const char *key, const char *what, const char *unit, double value,
    double limit, int le)
{
	struct target *t = &g_t[g_nt++];

	memset(t, 0, sizeof(*t));
	t->key = key;
	t->what = what;
	t->unit = unit;
	t->value = value;
	t->limit = limit;
	t->le = le;
}

/* The last target's figure per round. */
static void
target_rounds(const double *v, unsigned n)
{
	struct target *t = &g_t[g_nt - 1];

	if (n < 2)
		return;
	memcpy(t->rounds, v, n * sizeof(*v));
	t->nrounds = n;
}

/* Two rows' rounds can be paired up: both paired, same count. */
static unsigned
common_rounds(const struct row *a, const struct row *b)
{
	if (a == NULL || !a->base.has || a->nrnd == 0)
		return 0;
	if (b != NULL && (!b->base.has || b->nrnd != a->nrnd))
		return 0;
	return a->nrnd;
}

static double
median(double *v, size_t n)
{
	size_t i, j;
	double x;

	if (n == 0)
		return NAN;
	for (i = 1; i < n; i++)		/* insertion sort: n is tiny */
		for (j = i; j > 0 && v[j - 1] > v[j]; j--) {
			x = v[j];
			v[j] = v[j - 1];
			v[j - 1] = x;
		}
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void
compute_targets(void)
{
	struct row *e = row_find("v2_encrypt_c64"), *d = row_find("v2_decrypt_c64");
	struct row *ms = row_find("mixed_status"), *st = row_find("storm");
	double cold[16], srv, raw, ratio = NAN, rv[MAX_ROUNDS];
	size_t i;
	unsigned k, nr;

	if (e && d && e->base.has && d->base.has) {
		srv = (double)(e->n + d->n) / (e->secs + d->secs);
		raw = (double)(e->base.n + d->base.n) /
		    (e->base.secs + d->base.secs);
		ratio = srv / raw;
	}
	target("encdec_ratio", "v2 Encrypt+Decrypt c=64 ops/s / raw baseline",
	    "x", ratio, 0.8, 0);
	/* Round k of Encrypt with round k of Decrypt. */
	nr = d != NULL ? common_rounds(e, d) : 0;
	for (k = 0; k < nr; k++) {
		const struct round *a = &e->rnd[k], *b = &d->rnd[k];

		rv[k] = ((double)(a->n + b->n) / (a->secs + b->secs)) /
		    ((double)(a->bn + b->bn) / (a->bsecs + b->bsecs));
	}
	target_rounds(rv, nr);
	target("overhead_encrypt_us", "server overhead, Encrypt c=64 "
	    "(srv CPU/req - raw CPU/op)", "us", e && e->base.has ?
	    e->srv_cpu - e->base.cpu : NAN, 10, 1);
	nr = common_rounds(e, NULL);
	for (k = 0; k < nr; k++)
		rv[k] = e->rnd[k].srv_cpu - e->rnd[k].bcpu;
	target_rounds(rv, nr);
	target("overhead_decrypt_us", "server overhead, Decrypt c=64 "
	    "(srv CPU/req - raw CPU/op)", "us", d && d->base.has ?
	    d->srv_cpu - d->base.cpu : NAN, 10, 1);
	nr = common_rounds(d, NULL);
	for (k = 0; k < nr; k++)
		rv[k] = d->rnd[k].srv_cpu - d->rnd[k].bcpu;
	target_rounds(rv, nr);
	target("status_p99_under_encrypt_us", "Status p99 under Encrypt c=64, "
	    "same connection", "us", ms ? ms->p99 : NAN, 200, 1);
	target("rss_peak_mib", "daemon peak RSS (VmHWM) incl. SoftHSM", "MiB",
	    g_rss_peak >= 0 ? (double)g_rss_peak / 1024 : NAN, 16, 1);
	memcpy(cold, g_cold_ms, sizeof(cold));
	target("cold_start_ms", "cold start to first Status (median)", "ms",
	    median(cold, g_ncold), 100, 1);
	target("storm_time_ratio", strcmp(g_storm_mode, "v1") == 0 ?
	    "v1 storm time / raw baseline time" :
	    "storm time / raw baseline (v2 stand-in, v1 n/a)", "x",
	    st && st->base.has ? st->secs / st->base.secs : NAN, 1.25, 1);
	nr = common_rounds(st, NULL);
	for (k = 0; k < nr; k++)
		rv[k] = st->rnd[k].bsecs > 0 ? st->rnd[k].secs /
		    st->rnd[k].bsecs : NAN;
	target_rounds(rv, nr);
	if (g_nslow > 0) {
		double worst = NAN;

		for (i = 0; i < g_nslow; i++) {
			char key[40];
			struct row *rs;

			snprintf(key, sizeof(key), "slow_w%u_status",
			    g_slow[i].workers);
			if ((rs = row_find(key)) != NULL &&
			    (isnan(worst) || rs->p99 > worst))
				worst = rs->p99;
		}
		target("slow_status_p99_us", "Status p99 with a slow token "
		    "(worst worker count)", "us", worst, 200, 1);
	}
	if ((st = row_find("audit_encrypt_c64")) != NULL && st->base.has) {
		target("audit_ratio", "v2 Encrypt c=64 ops/s with --audit-log "
		    "--audit-sync batch / without (same run)", "x",
		    st->ops / st->base.ops, 0.9, 0);
		for (k = 0; k < st->nrnd; k++)
			rv[k] = st->rnd[k].secs > 0 && st->rnd[k].bsecs > 0 ?
			    ((double)st->rnd[k].n / st->rnd[k].secs) /
			    ((double)st->rnd[k].bn / st->rnd[k].bsecs) : NAN;
		target_rounds(rv, st->nrnd);
	}
	if ((st = row_find("status_paced")) != NULL)
		target("idle_status_p99_us", "Status p99 idle, same pace "
		    "(reference for the two above)", "us", st->p99, 200, 1);
}

static void
print_targets(void)
{
	size_t i, k;

	printf("\nTargets (reported, not asserted):\n");
	for (i = 0; i < g_nt; i++) {
		struct target *t = &g_t[i];
		const char *v = isnan(t->value) ? "n/a" :
		    (t->le ? t->value <= t->limit : t->value >= t->limit) ?
		    "met" : "MISSED";

		if (isnan(t->value))
			printf("  %-58s %10s\n", t->what, "n/a");
		else
			printf("  %-58s %10.*f %-3s (%s %g) %s\n", t->what,
			    strcmp(t->unit, "x") == 0 ? 3 : 1, t->value,
			    t->unit, t->le ? "<=" : ">=", t->limit, v);
		if (t->nrounds > 0)
			print_rounds("      ", t->rounds, t->nrounds,
			    strcmp(t->unit, "x") == 0 ? 2 : 1);
	}
	for (i = 0, k = 0; i < g_nrows; i++) {
		const struct row *r = &g_rows[i];

		if (r->na || !r->has_tail)
			continue;
		if (k++ == 0)
			printf("  the slowest 1%% of paced Status calls, mean us: "
			    "bench before its write / write to read\n"
			    "  (daemon, socket, scheduler) / bench after "
			    "its read:\n");
		printf("      %-42s %6.0f / %6.0f / %6.0f\n", r->label,
		    r->tail[0], r->tail[1], r->tail[2]);
	}
	if (g_nslow > 0) {
		printf("  slow token (%u ms/call): Encrypt ops/s by workers:",
		    opt.slow_delay_ms);
		for (i = 0; i < g_nslow; i++) {
			char key[40];
			struct row *r;

			snprintf(key, sizeof(key), "slow_w%u_encrypt",
			    g_slow[i].workers);
			if ((r = row_find(key)) != NULL)
				printf(" w=%u:%.1f", g_slow[i].workers, r->ops);
		}
		printf("\n");
	}
}

static struct steal g_run_steal;	/* the whole run */
static double g_run_secs;

/* The whole run's steal, and a plain warning when it is high. */
static void
print_run_steal(void)
{
	double v = steal_pct(&g_run_steal);

	if (isnan(v)) {
		printf("\nsteal over the whole run: n/a (/proc/stat %s)\n",
		    g_run_steal.bad ? "unreadable" : "gave too few ticks");
		return;
	}
	printf("\nsteal over the whole run: %.1f %% of all CPU ticks "
	    "(%.1f s, %ld CPUs)\n", v, g_run_secs,
	    sysconf(_SC_NPROCESSORS_ONLN));
	if (v > 5.0)
		printf("note: the hypervisor took %.1f %% of this machine's CPU "
		    "during the run; absolute latencies are inflated, ratios "
		    "less so\n", v);
}

struct jbuf {
	char *p;
	size_t len, cap;
};

static void jprintf(struct jbuf *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
jprintf(struct jbuf *j, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(j->p ? j->p + j->len : NULL,
		    j->p ? j->cap - j->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			die("vsnprintf failed");
		if (j->p != NULL && (size_t)n < j->cap - j->len) {
			j->len += (size_t)n;
			return;
		}
		j->cap = 2 * (j->cap + (size_t)n + 64);
		if ((j->p = realloc(j->p, j->cap)) == NULL)
			die("out of memory");
	}
}

static void
jsep(struct jbuf *j)
{
	if (j->len > 0 && j->p[j->len - 1] != '{' && j->p[j->len - 1] != '[')
		jprintf(j, ",");
}

/* Keys and strings here are the bench's own: no escaping needed but '"'. */
static void
jstr(struct jbuf *j, const char *k, const char *v)
{
	const char *s;

	jsep(j);
	jprintf(j, "\"%s\":", k);
	if (v == NULL) {
		jprintf(j, "null");
		return;
	}
	jprintf(j, "\"");
	for (s = v; *s; s++)
		jprintf(j, *s == '"' || *s == '\\' ? "\\%c" :
		    (unsigned char)*s < 0x20 ? "?" : "%c", *s);
	jprintf(j, "\"");
}

static void
jnum(struct jbuf *j, const char *k, double v)
{
	jsep(j);
	if (isnan(v) || isinf(v))
		jprintf(j, "\"%s\":null", k);
	else
		jprintf(j, "\"%s\":%.3f", k, v);
}

static void
jint(struct jbuf *j, const char *k, long long v)
{
	jsep(j);
	jprintf(j, "\"%s\":%lld", k, v);
}

static void
jobj(struct jbuf *j, const char *k)
{
	jsep(j);
	if (k != NULL)
		jprintf(j, "\"%s\":{", k);
	else
		jprintf(j, "{");
}

/* "k":[v0,v1,...] */
static void
jarr(struct jbuf *j, const char *k, const double *v, unsigned n)
{
	unsigned i;

	jsep(j);
	jprintf(j, "\"%s\":[", k);
	for (i = 0; i < n; i++) {
		if (isnan(v[i]) || isinf(v[i]))
			jprintf(j, "%snull", i ? "," : "");
		else
			jprintf(j, "%s%.3f", i ? "," : "", v[i]);
	}
	jprintf(j, "]");
}

static void
print_json(void)
{
	struct jbuf j = { NULL, 0, 0 };
	size_t i;

	jobj(&j, NULL);
	jint(&j, "bench_version", 1);
	jsep(&j);
	jprintf(&j, "\"ok\":%s", g_errors == 0 ? "true" : "false");
	jint(&j, "wrong_answers", (long long)g_errors);
	jobj(&j, "config");
	jint(&j, "cpus", sysconf(_SC_NPROCESSORS_ONLN));
	jint(&j, "workers", g_daemon_workers);
	jint(&j, "concurrency", opt.conc);
	jint(&j, "connections", opt.conns);
	jint(&j, "requests_c1", (long long)opt.n1);
	jint(&j, "requests", (long long)opt.n64);
	jint(&j, "storm", (long long)opt.storm);
	jint(&j, "rounds", opt.rounds);
	jint(&j, "plaintext_bytes", PT_LEN);
	jstr(&j, "module", opt.module);
	jstr(&j, "server_cpu_source", g_cpu_src);
	jprintf(&j, "}");

	jobj(&j, "cold_start_ms");
	jprintf(&j, "\"runs\":[");
	for (i = 0; i < g_ncold; i++)
		jprintf(&j, "%s%.3f", i ? "," : "", g_cold_ms[i]);
	jprintf(&j, "]");
	{
		double c[16];
		memcpy(c, g_cold_ms, sizeof(c));
		jnum(&j, "median", median(c, g_ncold));
	}
	jprintf(&j, "}");
	jobj(&j, "daemon");
	jint(&j, "rss_idle_kib", g_rss_idle);
	jint(&j, "rss_after_load_kib", g_rss_now);
	jint(&j, "rss_peak_kib", g_rss_peak);
	jint(&j, "rss_peak_token_kib", g_rss_peak_token);
	jstr(&j, "token_process", opt.token_process != NULL ?
	    opt.token_process : "default");
	jnum(&j, "cpu_total_ms_clock", (double)g_cpu_clock_total / 1e6);
	jnum(&j, "cpu_total_ms_proc_stat", (double)g_cpu_stat_total / 1e6);
	jint(&j, "exit_status_after_sigterm", g_exit_status);
	jprintf(&j, "}");
	jobj(&j, "machine");
	jnum(&j, "steal_pct", steal_pct(&g_run_steal));
	jint(&j, "steal_ticks", (long long)g_run_steal.steal);
	jint(&j, "total_ticks", (long long)g_run_steal.total);
	jnum(&j, "run_secs", g_run_secs);
	jprintf(&j, "}");

	jobj(&j, "scenarios");
	for (i = 0; i < g_nrows; i++) {
		struct row *r = &g_rows[i];

		jobj(&j, r->key);
		jstr(&j, "label", r->label);
		if (r->na) {
			jstr(&j, "na", r->why);
			jprintf(&j, "}");
			continue;
		}
		jint(&j, "n", (long long)r->n);
		jint(&j, "failed", (long long)r->failed);
		jnum(&j, "secs", r->secs);
		jnum(&j, "ops", r->ops);
		jnum(&j, "p50_us", r->p50);
		jnum(&j, "p99_us", r->p99);
		jnum(&j, "max_us", r->max);
		jnum(&j, "server_cpu_us_per_req", r->srv_cpu);
		jnum(&j, "client_cpu_us_per_req", r->cli_cpu);
		jnum(&j, "steal_pct", steal_pct(&r->steal));
		if (r->has_tail) {
			jobj(&j, "slowest_1pct_mean_us");
			jnum(&j, "before_write", r->tail[0]);
			jnum(&j, "write_to_read", r->tail[1]);
			jnum(&j, "after_read", r->tail[2]);
			jprintf(&j, "}");
		}
		if (r->base.has) {
			jobj(&j, "baseline");
			jint(&j, "threads", r->base.threads);
			jint(&j, "n", (long long)r->base.n);
			jint(&j, "failed", (long long)r->base.failed);
			jnum(&j, "secs", r->base.secs);
			jnum(&j, "ops", r->base.ops);
			jnum(&j, "p50_us", r->base.p50);
			jnum(&j, "p99_us", r->base.p99);
			jnum(&j, "max_us", r->base.max);
			jnum(&j, "cpu_us_per_op", r->base.cpu);
			jnum(&j, "steal_pct", steal_pct(&r->base.steal));
			jprintf(&j, "}");
			jnum(&j, "ratio_ops", r->ops / r->base.ops);
			jnum(&j, "overhead_cpu_us", r->srv_cpu - r->base.cpu);
		}
		if (r->nrnd > 0) {
			double rr[MAX_ROUNDS];
			unsigned k;

			for (k = 0; k < r->nrnd; k++)
				rr[k] = round_ratio(&r->rnd[k]);
			jarr(&j, "round_ratios", rr, r->nrnd);
			jsep(&j);
			jprintf(&j, "\"round_detail\":[");
			for (k = 0; k < r->nrnd; k++) {
				const struct round *rd = &r->rnd[k];

				jobj(&j, NULL);
				jstr(&j, "order", rd->raw_first ?
				    "raw-served" : "served-raw");
				jint(&j, "n", (long long)rd->n);
				jnum(&j, "secs", rd->secs);
				jnum(&j, "ops", rd->secs > 0 ?
				    (double)rd->n / rd->secs : NAN);
				jnum(&j, "server_cpu_us_per_req",
				    rd->srv_cpu);
				jnum(&j, "steal_pct", steal_pct(&rd->steal));
				jint(&j, "base_n", (long long)rd->bn);
				jnum(&j, "base_secs", rd->bsecs);
				jnum(&j, "base_ops", rd->bsecs > 0 ?
				    (double)rd->bn / rd->bsecs : NAN);
				jnum(&j, "base_cpu_us_per_op", rd->bcpu);
				jnum(&j, "base_steal_pct",
				    steal_pct(&rd->bsteal));
				jnum(&j, "ratio", round_ratio(rd));
				jprintf(&j, "}");
			}
			jprintf(&j, "]");
		}
		if (!isnan(r->ideal)) {
			jnum(&j, "ideal_ops", r->ideal);
			jnum(&j, "ratio_ideal", r->ops / r->ideal);
		}
		jprintf(&j, "}");
	}
	jprintf(&j, "}");
	jstr(&j, "v1", g_v1_na ? "n/a" : "served");
	jstr(&j, "v1_na_reason", g_v1_na);
	jstr(&j, "storm_mode", g_storm_mode);
	jobj(&j, "slow_token");
	if (g_slow_na[0] != '\0')
		jstr(&j, "na", g_slow_na);
	else {
		jint(&j, "delay_ms", opt.slow_delay_ms);
		jprintf(&j, ",\"start_ms\":{");
		for (i = 0; i < g_nslow; i++)
			jprintf(&j, "%s\"%u\":%.3f", i ? "," : "",
			    g_slow[i].workers, g_slow[i].start_ms);
		jprintf(&j, "}");
	}
	jprintf(&j, "}");
	jobj(&j, "targets");
	for (i = 0; i < g_nt; i++) {
		struct target *t = &g_t[i];

		jobj(&j, t->key);
		jnum(&j, "value", t->value);
		jnum(&j, "limit", t->limit);
		jstr(&j, "cmp", t->le ? "<=" : ">=");
		if (t->nrounds > 0)
			jarr(&j, "rounds", t->rounds, t->nrounds);
		if (isnan(t->value))
			jprintf(&j, ",\"met\":null");
		else
			jprintf(&j, ",\"met\":%s", (t->le ? t->value <=
			    t->limit : t->value >= t->limit) ? "true" :
			    "false");
		jprintf(&j, "}");
	}
	jprintf(&j, "}}");
	printf("BENCH_JSON %s\n", j.p);
	free(j.p);
}

/* ---- main ---- */

static void
usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms-bench [OPTIONS]\n"
"Load generator for p11kms: starts the daemon on a temporary SoftHSM token,\n"
"measures it over gRPC on its unix socket and the raw token in-process,\n"
"prints a table and a BENCH_JSON line. Exit 0: every answer right;\n"
"1: a wrong answer; 2: the bench could not run.\n"
"\n"
"  --daemon PATH        p11kms binary (default build/p11kms)\n"
"  --mktoken PATH       tests/mktoken.sh (default tests/mktoken.sh)\n"
"  --module PATH        PKCS#11 module (default " SOFTHSM ")\n"
"  --fault-module PATH  fault-injecting module for the slow-token scenario\n"
"                       (build/tests/libp11kms-fault.so; n/a if absent)\n"
"  --workers N          daemon --workers and baseline threads (default: CPUs)\n"
"  --concurrency C      requests in flight in the loaded scenarios (64)\n"
"  --conns N            HTTP/2 connections the load is spread over (1)\n"
"  --requests N         requests per loaded scenario (50000)\n"
"  --requests-c1 N      requests per c=1 scenario (5000)\n"
"  --storm N            distinct Decrypts in the restart storm (10000)\n"
"  --cold-starts N      daemon starts timed, median reported (3)\n"
"  --rounds K           split each scenario that has a raw baseline into K\n"
"                       slices, each run served then raw (alternating\n"
"                       which goes first), so both sides share the\n"
"                       machine's conditions (5; 1: one served run, then\n"
"                       one raw run; at most %d)\n"
"  --status-interval-us U  under load, one Status every U us, one in\n"
"                       flight (1000; 0: back to back)\n"
"  --grpc-timeout S     grpc-timeout sent with every request (30)\n"
"  --slow-workers LIST  worker counts for the slow token (1,2,4,8)\n"
"  --slow-delay MS      delay per C_Encrypt/C_Decrypt (50)\n"
"  --slow-seconds S     target length of each slow-token run (2)\n"
"  --no-slow            skip the slow-token scenario\n"
"  --quick              small counts for a smoke run (2000/200/1000, 1 start)\n"
"  --only LIST          scenario groups to run, of status,encrypt,decrypt,\n"
"                       mixed,v1,storm,slow,calls,audit (default all);\n"
"                       decrypt and storm bring in encrypt, storm brings in\n"
"                       v1 (their inputs)\n"
"  --keep               keep the temp dir (token, daemon logs)\n"
"  --audit-log FILE     audit scenario: the audited daemon's log (default\n"
"                       audit.log in the temp dir; it is removed first)\n"
"  --audit-sync S       audit scenario: batch (default) or every\n"
"  --token-process M    daemon --token-process on or off (default: its own);\n"
"                       CPU and RSS count the token process too\n"
"  --wrap 'CMD ARGS'    start the daemon under CMD (profiling, e.g.\n"
"                       'valgrind --tool=callgrind'); figures then measure\n"
"                       the wrapper too\n"
"  -h, --help           this text\n", MAX_ROUNDS);
}

static unsigned long
num_arg(const char *name, const char *s, unsigned long min, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (*s < '0' || *s > '9' || errno != 0 || *end != '\0' || v < min ||
	    v > max)
		die("--%s '%.40s': want a whole number from %lu to %lu", name,
		    s, min, max);
	return v;
}

/* Absolute form of a path (kept as given when it does not exist). */
static const char *
abs_path(const char *p)
{
	char *r;

	if (p[0] == '/' || (r = realpath(p, NULL)) == NULL)
		return p;
	return r;
}

static void
parse_args(int argc, char **argv)
{
	enum {
		O_DAEMON = 256, O_MKTOKEN, O_MODULE, O_FAULT, O_WORKERS,
		O_CONC, O_CONNS, O_REQ, O_REQ1, O_STORM, O_COLD, O_MIXED,
		O_TIMEOUT, O_SLOWW, O_SLOWD, O_SLOWS, O_NOSLOW, O_QUICK,
		O_KEEP, O_ONLY, O_WRAP, O_ROUNDS, O_AUDIT_LOG, O_AUDIT_SYNC,
		O_TOKPROC,
	};
	static const struct option lo[] = {
		{ "daemon", required_argument, NULL, O_DAEMON },
		{ "mktoken", required_argument, NULL, O_MKTOKEN },
		{ "module", required_argument, NULL, O_MODULE },
		{ "fault-module", required_argument, NULL, O_FAULT },
		{ "workers", required_argument, NULL, O_WORKERS },
		{ "concurrency", required_argument, NULL, O_CONC },
		{ "conns", required_argument, NULL, O_CONNS },
		{ "requests", required_argument, NULL, O_REQ },
		{ "requests-c1", required_argument, NULL, O_REQ1 },
		{ "storm", required_argument, NULL, O_STORM },
		{ "cold-starts", required_argument, NULL, O_COLD },
		{ "rounds", required_argument, NULL, O_ROUNDS },
		{ "status-interval-us", required_argument, NULL, O_MIXED },
		{ "grpc-timeout", required_argument, NULL, O_TIMEOUT },
		{ "slow-workers", required_argument, NULL, O_SLOWW },
		{ "slow-delay", required_argument, NULL, O_SLOWD },
		{ "slow-seconds", required_argument, NULL, O_SLOWS },
		{ "no-slow", no_argument, NULL, O_NOSLOW },
		{ "quick", no_argument, NULL, O_QUICK },
		{ "keep", no_argument, NULL, O_KEEP },
		{ "audit-log", required_argument, NULL, O_AUDIT_LOG },
		{ "audit-sync", required_argument, NULL, O_AUDIT_SYNC },
		{ "token-process", required_argument, NULL, O_TOKPROC },
		{ "only", required_argument, NULL, O_ONLY },
		{ "wrap", required_argument, NULL, O_WRAP },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *list, *tok, *save;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int c;

	opt.daemon = "build/p11kms";
	opt.mktoken = "tests/mktoken.sh";
	opt.module = SOFTHSM;
	opt.fault_module = "build/tests/libp11kms-fault.so";
	opt.conc = 64;
	opt.conns = 1;
	opt.status_interval_us = 1000;
	opt.grpc_timeout_s = 30;
	opt.slow_delay_ms = 50;
	opt.rounds = 5;
	opt.workers = ncpu > 0 ? (unsigned)ncpu : 1;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case O_DAEMON: opt.daemon = optarg; break;
		case O_MKTOKEN: opt.mktoken = optarg; break;
		case O_MODULE: opt.module = optarg; break;
		case O_FAULT: opt.fault_module = optarg; break;
		case O_WORKERS:
			opt.workers = (unsigned)num_arg("workers", optarg, 1,
			    256);
			break;
		case O_CONC:
			opt.conc = (unsigned)num_arg("concurrency", optarg, 1,
			    1000);
			break;
		case O_CONNS:
			opt.conns = (unsigned)num_arg("conns", optarg, 1,
			    MAX_CONNS);
			break;
		case O_REQ:
			opt.n64 = num_arg("requests", optarg, 1, 100000000);
			break;
		case O_REQ1:
			opt.n1 = num_arg("requests-c1", optarg, 1, 100000000);
			break;
		case O_STORM:
			opt.storm = num_arg("storm", optarg, 1, 100000000);
			break;
		case O_COLD:
			opt.cold_starts = (unsigned)num_arg("cold-starts",
			    optarg, 1, 16);
			break;
		case O_ROUNDS:
			opt.rounds = (unsigned)num_arg("rounds", optarg, 1,
			    MAX_ROUNDS);
			break;
		case O_MIXED:
			opt.status_interval_us = (unsigned)num_arg(
			    "status-interval-us", optarg, 0, 10000000);
			break;
		case O_TIMEOUT:
			opt.grpc_timeout_s = (unsigned)num_arg("grpc-timeout",
			    optarg, 1, 3600);
			break;
		case O_SLOWW:
			opt.nslow = 0;
			if ((list = strdup(optarg)) == NULL)
				die("out of memory");
			for (tok = strtok_r(list, ",", &save); tok != NULL;
			    tok = strtok_r(NULL, ",", &save)) {
				if (opt.nslow == MAX_SLOW)
					die("--slow-workers: at most %d counts",
					    MAX_SLOW);
				opt.slow_workers[opt.nslow++] = (unsigned)
				    num_arg("slow-workers", tok, 1, 256);
			}
			free(list);
			break;
		case O_SLOWD:
			opt.slow_delay_ms = (unsigned)num_arg("slow-delay",
			    optarg, 1, 10000);
			break;
		case O_SLOWS:
			opt.slow_secs = (unsigned)num_arg("slow-seconds",
			    optarg, 1, 600);
			break;
		case O_NOSLOW: opt.no_slow = 1; break;
		case O_QUICK: opt.quick = 1; break;
		case O_KEEP: opt.keep = 1; break;
		case O_AUDIT_LOG: opt.audit_log = optarg; break;
		case O_TOKPROC:
			if (strcmp(optarg, "on") != 0 &&
			    strcmp(optarg, "off") != 0)
				die("--token-process: on or off");
			opt.token_process = optarg;
			break;
		case O_AUDIT_SYNC:
			if (strcmp(optarg, "batch") != 0 &&
			    strcmp(optarg, "every") != 0)
				die("--audit-sync: batch or every");
			opt.audit_sync = optarg;
			break;
		case O_WRAP:
			if ((list = strdup(optarg)) == NULL)
				die("out of memory");
			opt.nwrap = 0;
			for (tok = strtok_r(list, " ", &save); tok != NULL;
			    tok = strtok_r(NULL, " ", &save)) {
				if (opt.nwrap == MAX_WRAP)
					die("--wrap: at most %d words",
					    MAX_WRAP);
				opt.wrap[opt.nwrap++] = tok;
			}
			break;	/* list stays: opt.wrap points into it */
		case O_ONLY:
			if ((list = strdup(optarg)) == NULL)
				die("out of memory");
			opt.only = 0;
			for (tok = strtok_r(list, ",", &save); tok != NULL;
			    tok = strtok_r(NULL, ",", &save)) {
				size_t g;

				for (g = 0; g < sizeof(group_names) /
				    sizeof(group_names[0]); g++)
					if (strcmp(tok, group_names[g]) == 0)
						break;
				if (g == sizeof(group_names) /
				    sizeof(group_names[0]))
					die("--only: unknown group '%.40s'", tok);
				opt.only |= 1u << g;
			}
			free(list);
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%.60s'", argv[optind]);
	/* --quick sets the defaults that were not given explicitly. */
	if (opt.n64 == 0)
		opt.n64 = opt.quick ? 2000 : 50000;
	if (opt.n1 == 0)
		opt.n1 = opt.quick ? 200 : 5000;
	if (opt.storm == 0)
		opt.storm = opt.quick ? 1000 : 10000;
	if (opt.cold_starts == 0)
		opt.cold_starts = opt.quick ? 1 : 3;
	if (opt.slow_secs == 0)
		opt.slow_secs = opt.quick ? 1 : 2;
	if (opt.only == 0)
		opt.only = S_ALL;
	if (opt.only & S_STORM)		/* needs v1's and v2's ciphertexts */
		opt.only |= S_V1 | S_ENCRYPT;
	if (opt.only & S_DECRYPT)
		opt.only |= S_ENCRYPT;
	if (opt.nslow == 0) {
		static const unsigned def[] = { 1, 2, 4, 8 };
		memcpy(opt.slow_workers, def, sizeof(def));
		opt.nslow = 4;
	}
	/* p11-kit takes a relative module path as relative to its own
	 * module directory: hand the daemon absolute paths. */
	opt.daemon = abs_path(opt.daemon);
	opt.module = abs_path(opt.module);
	opt.fault_module = abs_path(opt.fault_module);
	if (access(opt.daemon, X_OK) != 0)
		die("daemon %s: %s (build it, or pass --daemon)", opt.daemon,
		    strerror(errno));
	if (access(opt.mktoken, R_OK) != 0)
		die("%s: %s (pass --mktoken)", opt.mktoken, strerror(errno));
}

int
main(int argc, char **argv)
{
	struct sigaction sa;
	struct keyring_config kcfg;
	struct keyring *kr = NULL;
	const char *uris[1] = { KEY_URI };
	char err[512];
	struct cpustat run_start, run_end;
	uint64_t t0, run_t0;
	unsigned k;
	int r;

	parse_args(argc, argv);
	cpustat_read(&run_start);
	run_t0 = now_ns();
	g_clk_tck = sysconf(_SC_CLK_TCK);
	if (g_clk_tck <= 0)
		g_clk_tck = 100;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: poll returns */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	atexit(cleanup);
	callbacks_init();
	setvbuf(stdout, NULL, _IOLBF, 0);

	make_token();
	printf("p11kms-bench: daemon %s, token %s, %u workers, c=%u, "
	    "%u connection(s), %zu requests (c=1: %zu), storm %zu, "
	    "%u round(s)\n", opt.daemon, g_dir, opt.workers, opt.conc,
	    opt.conns, opt.n64, opt.n1, opt.storm, opt.rounds);

	/* Cold starts: the last daemon stays up for the load. */
	for (k = 0; k < opt.cold_starts; k++) {
		if (k > 0 && (r = daemon_stop()) != 0)
			fprintf(stderr, "p11kms-bench: daemon exited with "
			    "status %d after SIGTERM\n", r);
		(void)daemon_start(opt.module, opt.workers, NULL, &t0);
		g_cold_ms[g_ncold++] = daemon_wait_ready(t0);
	}
	g_rss_idle = tree_status_kib("VmRSS", NULL);
	g_daemon_workers = daemon_logged_workers();
	if (g_daemon_workers == 0)
		g_daemon_workers = opt.workers;
	else if (g_daemon_workers != opt.workers)
		fprintf(stderr, "p11kms-bench: daemon runs %u workers, not "
		    "%u; the baseline uses %u threads\n", g_daemon_workers,
		    opt.workers, g_daemon_workers);

	/* The raw baseline's keyring: same module, key URI and PIN. */
	memset(&kcfg, 0, sizeof(kcfg));
	kcfg.module = opt.module;
	kcfg.key_uris = uris;
	kcfg.nkeys = 1;
	kcfg.pin_file = g_pin;
	if ((r = keyring_load(&kcfg, &kr, err, sizeof(err))) != KEYRING_OK)
		die("baseline keyring_load: %s", err[0] ? err :
		    keyring_strerror(r));
	if (strcmp(keyring_primary_key_id(kr), g_key_id) != 0)
		die("in-process key_id %s differs from the daemon's %s",
		    keyring_primary_key_id(kr), g_key_id);

	server_scenarios(kr);
	g_scen = "shutdown";
	if ((g_exit_status = daemon_stop()) != 0)
		fprintf(stderr, "p11kms-bench: daemon exited with status %d "
		    "after SIGTERM\n", g_exit_status);
	keyring_free(kr);

	if (want(S_AUDIT))
		audit_scenario();

	if (want(S_SLOW))
		slow_scenario();
	else if (g_slow_na[0] == '\0')
		snprintf(g_slow_na, sizeof(g_slow_na), "not selected (--only)");
	if (want(S_CALLS))
		calls_scenario();
	else
		snprintf(g_calls_na, sizeof(g_calls_na), "not selected "
		    "(--only)");

	cpustat_read(&run_end);
	steal_add(&g_run_steal, &run_start, &run_end);
	g_run_secs = (double)(now_ns() - run_t0) / 1e9;
	compute_targets();
	print_table();
	print_calls();
	print_targets();
	print_run_steal();
	print_json();
	if (g_errors != 0)
		fprintf(stderr, "p11kms-bench: %lu wrong answers\n", g_errors);
	return g_errors != 0 ? 1 : 0;
}
