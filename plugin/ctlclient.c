/*
 * ctlclient: blocking HTTP/1.0 and gRPC-over-HTTP/2 clients for the
 * control subcommands (ctlclient.h). nghttp2 drives the HTTP/2 side with
 * mem_send/mem_recv, as the server does, so the socket stays ours and every
 * wait is a poll() bounded by the caller's deadline.
 */
#include "plugin/ctlclient.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <nghttp2/nghttp2.h>

#include "kms_v2.pb-c.h"

#define GRPC_BODY_MAX	(64 * 1024)
#define STATUS_PATH	"/v2.KeyManagementService/Status"

static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
left_ms(long long deadline)
{
	long long l = deadline - now_ms();

	return l < 0 ? 0 : l > 60000 ? 60000 : (int)l;
}

/* Waits for events on fd until the deadline; 1 ready, 0 timed out. */
static int
wait_fd(int fd, short events, long long deadline)
{
	struct pollfd p = { fd, events, 0 };
	int r;

	do
		r = poll(&p, 1, left_ms(deadline));
	while (r < 0 && errno == EINTR);
	return r > 0;
}

/* Non-blocking connect to sa, finished by the deadline; fd or -1. */
static int
connect_to(const struct sockaddr *sa, socklen_t len, int family,
    long long deadline, const char *what, char *err, size_t errlen)
{
	int fd, e = 0;
	socklen_t el = sizeof(e);

	if ((fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
	    0)) == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, sa, len) == 0)
		return fd;
	if (errno != EINPROGRESS && errno != EAGAIN) {
		e = errno;
		goto fail;
	}
	if (!wait_fd(fd, POLLOUT, deadline)) {
		e = ETIMEDOUT;
		goto fail;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
		e = errno;
	if (e == 0)
		return fd;
 fail:
	snprintf(err, errlen, "connect %.200s: %s", what, strerror(e));
	close(fd);
	return -1;
}

static int
connect_unix(const char *path, long long deadline, char *err, size_t errlen)
{
	struct sockaddr_un sun;
	size_t n = strlen(path);
	socklen_t len;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (n == 0 || n >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "socket path '%.200s': empty or too "
		    "long", path);
		return -1;
	}
	memcpy(sun.sun_path, path, n);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
	    (path[0] == '@' ? 0 : 1));
	return connect_to((struct sockaddr *)&sun, len, AF_UNIX, deadline,
	    path, err, errlen);
}

/* Connects to an --ops-listen style address. */
static int
connect_ops(const char *addr, long long deadline, char *err, size_t errlen)
{
	struct addrinfo hints, *res = NULL;
	char host[128], port[16];
	const char *colon;
	size_t hl;
	int fd, r;

	if (strncmp(addr, "unix:", 5) == 0)
		return connect_unix(addr + 5, deadline, err, errlen);
	if (addr[0] == '[') {
		colon = strstr(addr, "]:");
		if (colon == NULL)
			goto bad;
		hl = (size_t)(colon - addr - 1);
		if (hl >= sizeof(host))
			goto bad;
		memcpy(host, addr + 1, hl);
		host[hl] = '\0';
		colon++;
	} else if ((colon = strrchr(addr, ':')) != NULL) {
		hl = (size_t)(colon - addr);
		if (hl >= sizeof(host))
			goto bad;
		memcpy(host, addr, hl);
		host[hl] = '\0';
	} else {
		colon = addr - 1;	/* a bare port */
		host[0] = '\0';
	}
	if (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	else if (strcmp(host, "::") == 0)
		snprintf(host, sizeof(host), "::1");
	if (snprintf(port, sizeof(port), "%s", colon + 1) >= (int)sizeof(port)
	    || port[0] == '\0')
		goto bad;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if (strcmp(host, "localhost") != 0)
		hints.ai_flags |= AI_NUMERICHOST;
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(err, errlen, "ops address '%.100s': %s", addr,
		    gai_strerror(r));
		return -1;
	}
	fd = connect_to(res->ai_addr, res->ai_addrlen, res->ai_family,
	    deadline, addr, err, errlen);
	freeaddrinfo(res);
	return fd;
 bad:
	snprintf(err, errlen, "ops address '%.100s': use HOST:PORT, "
	    "[IPV6]:PORT or unix:/path", addr);
	return -1;
}

/* Writes all of buf by the deadline; 0 or -1. */
static int
write_all(int fd, const uint8_t *buf, size_t len, long long deadline)
{
	ssize_t w;

	while (len > 0) {
		w = send(fd, buf, len, MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (!wait_fd(fd, POLLOUT, deadline))
				return -1;
			continue;
		}
		if (w <= 0)
			return -1;
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

int
ctl_http_get(const char *addr, const char *path, int timeout_ms,
    int *status, char **body, char *err, size_t errlen)
{
	long long deadline = now_ms() + timeout_ms;
	char req[512], *buf = NULL, *p, *np;
	size_t len = 0, cap = 0;
	ssize_t n;
	int fd, ret = -1;

	*body = NULL;
	*status = 0;
	if ((fd = connect_ops(addr, deadline, err, errlen)) == -1)
		return -1;
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: localhost\r\n"
	    "User-Agent: p11kms-ctl\r\n\r\n", path);
	if (write_all(fd, (const uint8_t *)req, strlen(req), deadline) != 0) {
		snprintf(err, errlen, "%.100s: sending the request: %s", addr,
		    strerror(errno));
		goto out;
	}
	for (;;) {
		if (cap - len < 4097) {
			if (cap > CTL_BODY_MAX) {
				snprintf(err, errlen, "%.100s%s: answer longer "
				    "than %d bytes", addr, path, CTL_BODY_MAX);
				goto out;
			}
			if ((np = realloc(buf, cap + 16384)) == NULL) {
				snprintf(err, errlen, "out of memory");
				goto out;
			}
			buf = np;
			cap += 16384;
		}
		n = recv(fd, buf + len, cap - len - 1, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (!wait_fd(fd, POLLIN, deadline)) {
				snprintf(err, errlen, "%.100s%s: no answer "
				    "within %d ms", addr, path, timeout_ms);
				goto out;
			}
			continue;
		}
		if (n < 0) {
			snprintf(err, errlen, "%.100s: %s", addr,
			    strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0 ||
	    (p = strstr(buf, "\r\n\r\n")) == NULL) {
		snprintf(err, errlen, "%.100s%s: not an HTTP answer", addr,
		    path);
		goto out;
	}
	*status = atoi(buf + 9);
	memmove(buf, p + 4, len - (size_t)(p + 4 - buf) + 1);
	/* success */
	*body = buf;
	buf = NULL;
	ret = 0;
 out:
	free(buf);
	close(fd);
	return ret;
}

/* ---- gRPC Status ---- */

struct call {
	uint8_t body[GRPC_BODY_MAX];
	size_t len;
	int too_big;
	int http_status;
	int grpc_status;		/* -1: no trailer yet */
	char grpc_message[256];
	int closed;
	size_t sent;			/* request body bytes sent */
};

static ssize_t
req_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *user)
{
	static const uint8_t frame[5];	/* uncompressed, empty message */
	struct call *c = user;
	size_t n = sizeof(frame) - c->sent;

	(void)s;
	(void)sid;
	(void)src;
	if (n > len)
		n = len;
	memcpy(buf, frame + c->sent, n);
	c->sent += n;
	if (c->sent == sizeof(frame))
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

static int
on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
    void *user)
{
	struct call *c = user;

	(void)s;
	(void)f;
	(void)flags;
	if (namelen == 7 && memcmp(name, ":status", 7) == 0)
		c->http_status = atoi((const char *)value);
	else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0)
		c->grpc_status = atoi((const char *)value);
	else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0)
		snprintf(c->grpc_message, sizeof(c->grpc_message), "%.*s",
		    (int)valuelen, (const char *)value);
	return 0;
}

static int
on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
    size_t len, void *user)
{
	struct call *c = user;

	(void)s;
	(void)flags;
	(void)sid;
	if (len > sizeof(c->body) - c->len) {
		c->too_big = 1;
		return 0;
	}
	memcpy(c->body + c->len, data, len);
	c->len += len;
	return 0;
}

static int
on_close(nghttp2_session *s, int32_t sid, uint32_t code, void *user)
{
	struct call *c = user;

	(void)s;
	(void)sid;
	(void)code;
	c->closed = 1;
	return 0;
}

#define HDR(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, \
	sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE }

/* Runs the exchange until the stream closes; 0, or -1 with err. */
static int
exchange(int fd, nghttp2_session *h2, struct call *c, long long deadline,
    const char *path, char *err, size_t errlen)
{
	const uint8_t *out;
	uint8_t in[16384];
	ssize_t n, r;

	while (!c->closed) {
		while ((n = nghttp2_session_mem_send(h2, &out)) > 0)
			if (write_all(fd, out, (size_t)n, deadline) != 0) {
				snprintf(err, errlen, "%.200s: sending: %s",
				    path, strerror(errno));
				return -1;
			}
		if (n < 0) {
			snprintf(err, errlen, "%.200s: HTTP/2: %s", path,
			    nghttp2_strerror((int)n));
			return -1;
		}
		if (!wait_fd(fd, POLLIN, deadline)) {
			snprintf(err, errlen, "%.200s: no Status answer in "
			    "time", path);
			return -1;
		}
		n = recv(fd, in, sizeof(in), 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0) {
			snprintf(err, errlen, "%.200s: connection closed%s%s",
			    path, n < 0 ? ": " : "", n < 0 ?
			    strerror(errno) : "");
			return -1;
		}
		r = nghttp2_session_mem_recv(h2, in, (size_t)n);
		if (r < 0) {
			snprintf(err, errlen, "%.200s: HTTP/2: %s", path,
			    nghttp2_strerror((int)r));
			return -1;
		}
	}
	return 0;
}

int
ctl_kms_status(const char *socket_path, int timeout_ms,
    struct ctl_kms_status *out, char *err, size_t errlen)
{
	long long deadline = now_ms() + timeout_ms;
	nghttp2_session_callbacks *cb = NULL;
	nghttp2_session *h2 = NULL;
	nghttp2_data_provider dp;
	V2__StatusResponse *m = NULL;
	struct call *c = NULL;
	char tmo[24];
	uint32_t mlen;
	int fd, ret = -1;
	nghttp2_nv hdr[] = {
		HDR(":method", "POST"), HDR(":scheme", "http"),
		HDR(":path", STATUS_PATH), HDR(":authority", "localhost"),
		HDR("content-type", "application/grpc"), HDR("te", "trailers"),
		HDR("grpc-timeout", "0"),
	};

	memset(out, 0, sizeof(*out));
	if ((fd = connect_unix(socket_path, deadline, err, errlen)) == -1)
		return -1;
	snprintf(tmo, sizeof(tmo), "%dm", timeout_ms > 0 ? timeout_ms : 1);
	hdr[6].value = (uint8_t *)tmo;
	hdr[6].valuelen = strlen(tmo);
	if ((c = calloc(1, sizeof(*c))) == NULL ||
	    nghttp2_session_callbacks_new(&cb) != 0) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	c->grpc_status = -1;
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
	if (nghttp2_session_client_new(&h2, cb, c) != 0 ||
	    nghttp2_submit_settings(h2, NGHTTP2_FLAG_NONE, NULL, 0) != 0) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	dp.source.ptr = NULL;
	dp.read_callback = req_body;
	if (nghttp2_submit_request(h2, NULL, hdr, sizeof(hdr) / sizeof(hdr[0]),
	    &dp, NULL) < 0) {
		snprintf(err, errlen, "HTTP/2: cannot submit the request");
		goto out;
	}
	if (exchange(fd, h2, c, deadline, socket_path, err, errlen) != 0)
		goto out;
	if (c->http_status != 200) {
		snprintf(err, errlen, "%.200s: HTTP status %d", socket_path,
		    c->http_status);
		goto out;
	}
	if (c->grpc_status != 0) {
		snprintf(err, errlen, "%.200s: Status failed: grpc-status %d"
		    "%s%.200s", socket_path, c->grpc_status,
		    c->grpc_message[0] ? ": " : "", c->grpc_message);
		goto out;
	}
	if (c->too_big || c->len < 5 || c->body[0] != 0) {
		snprintf(err, errlen, "%.200s: malformed Status answer",
		    socket_path);
		goto out;
	}
	mlen = (uint32_t)c->body[1] << 24 | (uint32_t)c->body[2] << 16 |
	    (uint32_t)c->body[3] << 8 | c->body[4];
	if (mlen != c->len - 5 || (m = v2__status_response__unpack(NULL,
	    mlen, c->body + 5)) == NULL) {
		snprintf(err, errlen, "%.200s: malformed Status answer",
		    socket_path);
		goto out;
	}
	snprintf(out->version, sizeof(out->version), "%s", m->version);
	snprintf(out->healthz, sizeof(out->healthz), "%s", m->healthz);
	snprintf(out->key_id, sizeof(out->key_id), "%s", m->key_id);
	/* success */
	ret = 0;
 out:
	if (m != NULL)
		v2__status_response__free_unpacked(m, NULL);
	nghttp2_session_del(h2);
	nghttp2_session_callbacks_del(cb);
	free(c);
	close(fd);
	return ret;
}
