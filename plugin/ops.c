/*
 * ops: the ops HTTP endpoint (ops.h) on libmicrohttpd's own thread. It
 * serves only what the loop published (a heartbeat, the ready verdict and
 * reason, the /status text) and the metrics registry, never calling into
 * the loop, so a stuck loop shows as a failing /livez, not a hung probe.
 */
#include "plugin/ops.h"
#include "plugin/unixsock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "plugin/log.h"
#include "plugin/metrics.h"

#define NS_PER_S		1000000000ull
#define OPS_BACKLOG		64
#define OPS_MAX_CONNS		32	/* probes and a scraper need few */
#define OPS_CONN_TIMEOUT_S	10	/* slow or idle clients are dropped */
#define ADDR_HINT	"use HOST:PORT with an IP address (127.0.0.1:8787, " \
			"[::1]:8787, 0.0.0.0:8787) or unix:/path/to/ops.sock"

struct listen_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	int family;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* AF_UNIX */
};

struct ops {
	struct MHD_Daemon *mhd;
	uint64_t started;		/* monotonic ns */
	uint64_t stale;			/* ns */
	atomic_int serving;		/* MHD started: quieter logging */
	char unlink_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char addr[160];
};

/* ---- what the loop publishes ---- */

static _Atomic uint64_t beat;		/* monotonic ns; 0: never */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int state_ready;			/* under state_lock */
static char state_why[OPS_WHY_MAX] = "starting";
static char state_status[OPS_STATUS_MAX];	/* under state_lock */

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

void
ops_heartbeat(void)
{
	atomic_store_explicit(&beat, now_ns(), memory_order_relaxed);
}

void
ops_set_ready(int ready, const char *why)
{
	pthread_mutex_lock(&state_lock);
	state_ready = ready != 0;
	snprintf(state_why, sizeof(state_why), "%s", why != NULL ? why : "");
	pthread_mutex_unlock(&state_lock);
}

void
ops_set_status(const char *text)
{
	pthread_mutex_lock(&state_lock);
	snprintf(state_status, sizeof(state_status), "%s",
	    text != NULL ? text : "");
	pthread_mutex_unlock(&state_lock);
}

/* ---- address parsing ---- */

static int
parse_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;

	if (*s == '\0' || strlen(s) > 5)
		return -1;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static int
parse_listen(const char *s, struct listen_addr *a, char *err, size_t errlen)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a->ss;
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
	char host[64];
	const char *colon, *port_s;
	uint16_t port;
	size_t n;

	memset(a, 0, sizeof(*a));
	if (s == NULL || *s == '\0') {
		snprintf(err, errlen, "--ops-listen is empty; " ADDR_HINT);
		return -1;
	}
	if (strncmp(s, "unix:", 5) == 0) {
		s += 5;
		n = strlen(s);
		if (n == 0 || (s[0] == '@' && n == 1)) {
			snprintf(err, errlen, "--ops-listen 'unix:' needs a "
			    "path, e.g. unix:/run/p11kms/ops.sock");
			return -1;
		}
		if (n >= sizeof(un->sun_path)) {
			snprintf(err, errlen, "--ops-listen socket path "
			    "'%.120s' is longer than %zu bytes; choose a "
			    "shorter one", s, sizeof(un->sun_path) - 1);
			return -1;
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, s, n);
		a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
		    n + 1);
		if (s[0] == '@') {
			un->sun_path[0] = '\0';	/* abstract: no NUL at end */
			a->len--;
		}
		memcpy(a->path, s, n);
		a->family = AF_UNIX;
		return 0;
	}
	if (s[0] == '/' || s[0] == '.') {
		snprintf(err, errlen, "--ops-listen '%.120s' looks like a path: "
		    "write unix:%.120s for a unix socket", s, s);
		return -1;
	}
	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (close == NULL || close[1] != ':' ||
		    (size_t)(close - s - 1) >= sizeof(host)) {
			snprintf(err, errlen, "--ops-listen '%.120s': write an "
			    "IPv6 address as [ADDR]:PORT, e.g. [::1]:8787", s);
			return -1;
		}
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		port_s = close + 2;
		a->family = AF_INET6;
	} else if ((colon = strrchr(s, ':')) != NULL) {
		if (strchr(s, ':') != colon) {
			snprintf(err, errlen, "--ops-listen '%.120s': put an "
			    "IPv6 address in brackets, e.g. [::1]:8787", s);
			return -1;
		}
		if ((size_t)(colon - s) >= sizeof(host)) {
			snprintf(err, errlen, "--ops-listen '%.120s': host part "
			    "too long; " ADDR_HINT, s);
			return -1;
		}
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port_s = colon + 1;
		a->family = AF_INET;
	} else {
		host[0] = '\0';		/* a bare port */
		port_s = s;
		a->family = AF_INET;
	}
	if (parse_port(port_s, &port) != 0) {
		snprintf(err, errlen, "--ops-listen '%.120s': port '%.20s' is "
		    "not a number from 0 to 65535; " ADDR_HINT, s, port_s);
		return -1;
	}
	if (a->family == AF_INET6) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
			snprintf(err, errlen, "--ops-listen '%.120s': '%.64s' "
			    "is not an IPv6 address; " ADDR_HINT, s, host);
			return -1;
		}
		a->len = sizeof(*in6);
		return 0;
	}
	in4->sin_family = AF_INET;
	in4->sin_port = htons(port);
	if (host[0] == '\0' || strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	if (inet_pton(AF_INET, host, &in4->sin_addr) != 1) {
		snprintf(err, errlen, "--ops-listen '%.120s': '%.64s' is not "
		    "an IP address (host names are not resolved); "
		    ADDR_HINT, s, host);
		return -1;
	}
	a->len = sizeof(*in4);
	return 0;
}

int
ops_listen_check(const char *addr, char *err, size_t errlen)
{
	struct listen_addr a;

	return parse_listen(addr, &a, err, errlen);
}

/* ---- listening socket ---- */

static void
format_addr(const struct listen_addr *a, int fd, char *out, size_t cap)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];

	if (a->family == AF_UNIX) {
		snprintf(out, cap, "unix:%s", a->path);
		return;
	}
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		ss = a->ss;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(out, cap, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(out, cap, "%s:%u", ip, ntohs(s4->sin_port));
	}
}

/* Creates, binds and listens on a TCP address; the fd or -1 with err. */
static int
open_listener(const struct listen_addr *a, const char *text, char *err,
    size_t errlen)
{
	int fd, one = 1, e;

	fd = socket(a->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "--ops-listen '%.120s': socket: %s", text,
		    strerror(errno));
		return -1;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
	    sizeof(one)) != 0) {
		e = errno;
		goto fail_errno;
	}
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
		e = errno;
		if (e == EADDRINUSE)
			snprintf(err, errlen, "--ops-listen '%.120s': address "
			    "in use (another p11kms?); choose another port or "
			    "path", text);
		else if (e == EACCES)
			snprintf(err, errlen, "--ops-listen '%.120s': "
			    "permission denied; ports below 1024 need "
			    "CAP_NET_BIND_SERVICE, use a higher one", text);
		else if (e == EADDRNOTAVAIL)
			snprintf(err, errlen, "--ops-listen '%.120s': not an "
			    "address of this host; use 127.0.0.1 or an "
			    "address of one of its interfaces", text);
		else
			goto fail_errno;
		close(fd);
		return -1;
	}
	if (listen(fd, OPS_BACKLOG) != 0) {
		e = errno;
		goto fail_errno;
	}
	return fd;

 fail_errno:
	snprintf(err, errlen, "--ops-listen '%.120s': %s", text, strerror(e));
	close(fd);
	return -1;
}

/* ---- HTTP ---- */

static enum MHD_Result
reply(struct MHD_Connection *c, unsigned status, const char *ctype,
    void *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	if ((r = MHD_create_response_from_buffer(len, body, mode)) == NULL) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(body);
		return MHD_NO;
	}
	(void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	(void)MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL,
	    "no-store");
	(void)MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		(void)MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW,
		    "GET, HEAD");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	return reply(c, status, "text/plain; charset=utf-8", (void *)text,
	    strlen(text), MHD_RESPMEM_MUST_COPY);
}

/* Seconds since the loop last turned (ops_start counts as a turn). */
static uint64_t
loop_age(const struct ops *o)
{
	uint64_t b = atomic_load_explicit(&beat, memory_order_relaxed);
	uint64_t now = now_ns();

	if (b < o->started)
		b = o->started;
	return now > b ? now - b : 0;
}

static enum MHD_Result
health(struct ops *o, struct MHD_Connection *c, int want_ready,
    int verbose)
{
	char body[OPS_WHY_MAX + 64];
	uint64_t age = loop_age(o);
	int ready;

	if (age > o->stale) {
		snprintf(body, sizeof(body), "event loop stalled: no heartbeat "
		    "for %llu s\n", (unsigned long long)(age / NS_PER_S));
		return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, body);
	}
	if (!want_ready)
		return reply_text(c, MHD_HTTP_OK, "ok\n");
	pthread_mutex_lock(&state_lock);
	ready = state_ready;
	if (verbose)
		snprintf(body, sizeof(body), "not ready: %s\n",
		    state_why[0] != '\0' ? state_why : "unknown");
	pthread_mutex_unlock(&state_lock);
	if (ready && verbose && strncmp(body + 11, "degraded", 8) == 0) {
		/* Serving on fewer tokens: say which one is down. */
		memcpy(body, "ok, ", 4);
		memmove(body + 4, body + 11, strlen(body + 11) + 1);
		return reply_text(c, MHD_HTTP_OK, body);
	}
	if (ready)
		return reply_text(c, MHD_HTTP_OK, "ok\n");
	return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, verbose ? body :
	    "not ready\n");
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_size, void **con_cls)
{
	struct ops *o = cls;
	char *buf;
	size_t len;

	(void)version;
	(void)upload;
	(void)upload_size;
	(void)con_cls;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
	    strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED,
		    "method not allowed: use GET or HEAD\n");
	if (strcmp(url, "/livez") == 0)
		return health(o, c, 0, 0);
	if (strcmp(url, "/readyz") == 0)
		return health(o, c, 1, 0);
	if (strcmp(url, "/healthz") == 0)
		return health(o, c, 1, 1);
	if (strcmp(url, "/status") == 0) {
		pthread_mutex_lock(&state_lock);
		buf = strdup(state_status);
		pthread_mutex_unlock(&state_lock);
		if (buf == NULL)
			return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
			    "out of memory\n");
		return reply(c, MHD_HTTP_OK, "text/plain; charset=utf-8", buf,
		    strlen(buf), MHD_RESPMEM_MUST_FREE);
	}
	if (strcmp(url, "/metrics") == 0) {
		if (metrics_render(&buf, &len) != 0)
			return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
			    "out of memory\n");
		return reply(c, MHD_HTTP_OK, METRICS_CONTENT_TYPE, buf, len,
		    MHD_RESPMEM_MUST_FREE);
	}
	return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /livez, "
	    "/readyz, /healthz, /status or /metrics\n");
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/*
 * libmicrohttpd's messages. While starting they explain a failure (warn);
 * once serving they are about single clients ("closed with incomplete
 * request"), which any peer can cause at will: debug only.
 */
static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct ops *o = cls;
	char msg[512];
	size_t n;

	if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
		return;
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	if (atomic_load(&o->serving))
		log_debug("ops http: %.300s", msg);
	else
		log_warn("ops http: %.300s", msg);
}

int
ops_start(const struct ops_config *cfg, struct ops **out, char *err,
    size_t errlen)
{
	struct listen_addr a;
	struct stat mine, theirs;
	struct ops *o = NULL;
	unsigned flags;
	int fd = -1, mfd;

	*out = NULL;
	if (parse_listen(cfg->listen, &a, err, errlen) != 0)
		return -1;
	if ((o = calloc(1, sizeof(*o))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	o->stale = (uint64_t)(cfg->stale_s ? cfg->stale_s :
	    OPS_STALE_S_DEFAULT) * NS_PER_S;
	fd = a.family == AF_UNIX ?
	    unixsock_listen(a.path, "--ops-listen", OPS_BACKLOG, err, errlen) :
	    open_listener(&a, cfg->listen, err, errlen);
	if (fd == -1)
		goto fail;
	if (a.family == AF_UNIX && a.path[0] != '@')
		memcpy(o->unlink_path, a.path, sizeof(o->unlink_path));
	format_addr(&a, fd, o->addr, sizeof(o->addr));
	o->started = now_ns();

	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
	    MHD_USE_ERROR_LOG;
	if (a.family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/*
	 * The listening socket is ours (clear errors, unix sockets, port 0).
	 * MHD gets a duplicate and closes it in MHD_stop_daemon; when
	 * MHD_start_daemon fails it may or may not have closed it (0.9.75
	 * does either, depending on where it fails), so that case is told
	 * apart by the socket's inode.
	 */
	if ((mfd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) == -1) {
		snprintf(err, errlen, "--ops-listen: dup: %s", strerror(errno));
		goto fail;
	}
	o->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, o,
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_log, o,	/* first, says MHD */
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)mfd,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)OPS_MAX_CONNS,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)OPS_CONN_TIMEOUT_S,
	    MHD_OPTION_END);
	if (o->mhd == NULL) {
		if (fstat(fd, &mine) == 0 && fstat(mfd, &theirs) == 0 &&
		    mine.st_dev == theirs.st_dev &&
		    mine.st_ino == theirs.st_ino)
			close(mfd);
		snprintf(err, errlen, "--ops-listen '%.120s': libmicrohttpd "
		    "could not start its server thread (see the log)",
		    cfg->listen);
		goto fail;
	}
	close(fd);
	atomic_store(&o->serving, 1);
	log_info("ops endpoint on %s: /livez /readyz /healthz /status "
	    "/metrics",
	    o->addr);
	/* success */
	*out = o;
	return 0;

 fail:
	if (fd != -1)
		close(fd);
	if (o->unlink_path[0] != '\0')
		unixsock_unlink(o->unlink_path);
	free(o);
	return -1;
}

void
ops_stop(struct ops *o)
{
	if (o == NULL)
		return;
	MHD_stop_daemon(o->mhd);	/* joins its thread, closes the socket */
	if (o->unlink_path[0] != '\0')
		unixsock_unlink(o->unlink_path);
	free(o);
}

const char *
ops_address(const struct ops *o)
{
	return o->addr;
}
