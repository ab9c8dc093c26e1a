/*
 * grpc: the gRPC server over HTTP/2 on a unix socket: the listening
 * socket, accepts (bounded by --max-connections), one nghttp2 server
 * session per connection fed from the loop, output gathered per send and
 * wiped, and the server's life cycle. Calls are grpc_call.c's; what both
 * share is in grpc_int.h.
 */
#include "plugin/grpc_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <nghttp2/nghttp2.h>

#include "plugin/h2scan.h"
#include "plugin/log.h"
#include "plugin/mem.h"
#include "plugin/unixsock.h"

/* ---- connections ---- */

int
out_append(struct conn *c, const uint8_t *data, size_t len)
{
	uint8_t *nb;
	size_t ncap;

	if (len > c->out_cap - c->out_len) {
		ncap = c->out_cap ? c->out_cap : 16384;
		while (ncap - c->out_len < len)
			ncap *= 2;
		/* What is buffered may hold plaintexts: no plain realloc. */
		if ((nb = mem_realloc_secret(c->out, ncap)) == NULL)
			return -1;
		c->out = nb;
		c->out_cap = ncap;
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	return 0;
}

static void
conn_set_events(struct conn *c, uint32_t ev)
{
	if (ev == c->events)
		return;
	c->events = ev;
	(void)loop_rewatch(c->srv->loop, &c->watch, ev);
}

/*
 * Gathers what nghttp2 has behind what is already buffered (up to
 * OUT_GATHER), then writes it with one send: a reply's HEADERS, DATA and
 * trailers, and every reply of one loop tick, go out together instead of as
 * one send (and one peer wake-up) per frame. Sent bytes are wiped: they may
 * hold Decrypt plaintexts.
 */
static void
conn_flush(struct conn *c)
{
	const uint8_t *data;
	ssize_t n, w;
	size_t off;

	if (c->dead)
		return;
	c->replied = 0;
	do {
		while (c->out_len < OUT_GATHER) {
			n = nghttp2_session_mem_send(c->h2, &data);
			if (n < 0) {
				log_debug("connection: nghttp2 send: %s",
				    nghttp2_strerror((int)n));
				conn_close(c);
				return;
			}
			if (n == 0)
				break;
			if (out_append(c, data, (size_t)n) != 0) {
				conn_close(c);
				return;
			}
		}
		if (c->out_len == 0)
			break;
		w = send(c->watch.fd, c->out, c->out_len, MSG_NOSIGNAL);
		if (w < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(c);
			return;
		}
		off = w > 0 ? (size_t)w : 0;
		memmove(c->out, c->out + off, c->out_len - off);
		mem_wipe(c->out + c->out_len - off, off);
		c->out_len -= off;
		/* All sent: nghttp2 may have more than one gather. */
	} while (c->out_len == 0 && off > 0);
	if (c->dead)
		return;
	if (c->out_len == 0 && !nghttp2_session_want_read(c->h2) &&
	    !nghttp2_session_want_write(c->h2)) {
		conn_close(c);
		return;
	}
	/* Stop reading while the peer does not read what we send. */
	conn_set_events(c, (c->out_len > 0 ? EPOLLOUT : 0) |
	    (c->out_len < OUT_GATHER ? EPOLLIN : 0));
}

/*
 * Feeds nghttp2 in slices, and sends at once what a slice answered (Status
 * is answered as it is read; so are refusals): a reply does not wait for
 * the rest of a 16 KiB read, which can hold a hundred other requests.
 * Returns -1 when the connection was closed.
 */
static int
conn_recv(struct conn *c, const uint8_t *in, size_t len)
{
	ssize_t rv;
	size_t off, m;

	for (off = 0; off < len; off += m) {
		m = len - off < RECV_SLICE ? len - off : RECV_SLICE;
		rv = nghttp2_session_mem_recv(c->h2, in + off, m);
		if (rv < 0) {
			/* Bad preface, protocol error: nghttp2 has queued a
			 * GOAWAY; send it, then close. */
			log_warn("closing a connection: %s",
			    nghttp2_strerror((int)rv));
			(void)nghttp2_session_terminate_session(c->h2,
			    NGHTTP2_PROTOCOL_ERROR);
			conn_flush(c);
			conn_close(c);
			return -1;
		}
		if (c->replied && off + m < len) {
			conn_flush(c);
			if (c->dead)
				return -1;
		}
	}
	return 0;
}

static void
conn_io(void *arg, uint32_t events)
{
	struct conn *c = arg;
	uint8_t buf[READ_CHUNK], fbuf[READ_CHUNK + 9];
	ssize_t n;
	size_t k;
	int i;

	if (c->dead)
		return;
	if (events & EPOLLIN) {
		for (i = 0; i < READS_PER_WAKEUP; i++) {
			n = recv(c->watch.fd, buf, sizeof(buf), 0);
			if (n == 0) {
				conn_close(c);
				goto out;
			}
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				conn_close(c);
				goto out;
			}
			k = h2scan_filter(&c->scan, buf, (size_t)n, fbuf);
			if (conn_recv(c, fbuf, k) != 0)
				goto out;
			if ((size_t)n < sizeof(buf))
				break;
		}
	} else if (events & (EPOLLHUP | EPOLLERR)) {
		conn_close(c);
		return;
	}
	conn_flush(c);
out:
	/* What was read may hold Encrypt plaintexts. */
	mem_wipe(buf, sizeof(buf));
	mem_wipe(fbuf, sizeof(fbuf));
}

void
conn_close(struct conn *c)
{
	if (c->dead)
		return;
	c->dead = 1;
	loop_unwatch(c->srv->loop, &c->watch);
	/* Freed in grpc_server_tick, after the current batch of events. */
}

static void
conn_free(struct conn *c)
{
	struct grpc_server *s = c->srv;
	struct grpc_call *call;

	c->dead = 1;
	nghttp2_session_del(c->h2);
	while ((call = c->calls) != NULL)
		call_free(call);
	close(c->watch.fd);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	s->nconns--;
	mem_free_secret(c->out);
	free(c);
}

/* The peer's credentials as the kernel saw them at connect. */
static void
peer_read(int fd, struct grpc_peer *p)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);

	memset(p, 0, sizeof(*p));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0 &&
	    len == sizeof(uc) && uc.pid != 0) {
		p->known = 1;
		p->uid = uc.uid;
		p->gid = uc.gid;
		p->pid = uc.pid;
	}
}

void
grpc_server_set_max_conns(struct grpc_server *s, size_t n)
{
	s->max_conns = n;
}

/*
 * Makes room for one more connection under max_conns: closes the oldest
 * live connection with no call open (connections are listed newest
 * first). 0, or -1 when every connection has a call open.
 */
static int
conn_make_room(struct grpc_server *s)
{
	struct conn *c, *oldest = NULL;
	size_t live = 0;

	for (c = s->conns; c != NULL; c = c->next) {
		if (c->dead)
			continue;
		live++;
		if (c->calls == NULL)
			oldest = c;
	}
	if (s->max_conns == 0 || live < s->max_conns)
		return 0;
	if (oldest == NULL)
		return -1;
	log_debug("--max-connections %zu reached: closing the oldest idle "
	    "connection", s->max_conns);
	conn_close(oldest);
	return 0;
}

/* Takes ownership of fd: on failure it is closed. Returns 0 or -1. */
static int
conn_add(struct grpc_server *s, int fd)
{
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
		    MAX_CONCURRENT_STREAMS },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST },
	};
	struct conn *c;

	if (conn_make_room(s) != 0) {
		if (log_ratelim_allow(&s->refuse_rl, loop_now()))
			log_warn("--max-connections %zu reached and every "
			    "connection has a call open: a new connection is "
			    "refused", s->max_conns);
		close(fd);
		return -1;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return -1;
	}
	c->srv = s;
	h2scan_init(&c->scan);
	peer_read(fd, &c->peer);
	c->watch.fd = fd;
	c->watch.cb = conn_io;
	c->watch.arg = c;
	/* nghttp2's buffers hold DATA (plaintexts): its allocator wipes. */
	if (nghttp2_session_server_new3(&c->h2, s->cbs, c, s->opt,
	    &mem_nghttp2) != 0) {
		close(fd);
		free(c);
		return -1;
	}
	c->events = EPOLLIN;
	if (loop_watch(s->loop, &c->watch, EPOLLIN) != 0) {
		nghttp2_session_del(c->h2);
		close(fd);
		free(c);
		return -1;
	}
	c->next = s->conns;
	if (s->conns != NULL)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	(void)nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv,
	    sizeof(iv) / sizeof(iv[0]));
	conn_flush(c);
	return 0;
}

static void
on_accept(void *arg, uint32_t events)
{
	struct grpc_server *s = arg;
	int fd, i;

	(void)events;
	for (i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
		fd = accept4(s->lwatch.fd, NULL, NULL,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EAGAIN || errno == EINTR ||
			    errno == ECONNABORTED)
				return;
			/*
			 * Out of fds or memory: the socket stays readable, so
			 * stop watching it for a while instead of spinning;
			 * clients wait in the backlog meanwhile.
			 */
			log_warn("accept: %s (%zu connections open); pausing "
			    "accepts for %d ms", strerror(errno), s->nconns,
			    ACCEPT_PAUSE_MS);
			loop_unwatch(s->loop, &s->lwatch);
			(void)loop_timer_start(s->loop, &s->accept_timer,
			    loop_now() + ACCEPT_PAUSE_MS * 1000000ull);
			return;
		}
		(void)conn_add(s, fd);
	}
}

static void
accept_resume(void *arg)
{
	struct grpc_server *s = arg;

	if (s->lwatch.fd != -1)
		(void)loop_watch(s->loop, &s->lwatch, EPOLLIN);
}

int
grpc_server_adopt(struct grpc_server *s, int fd)
{
	int fl;

	if ((fl = fcntl(fd, F_GETFL)) == -1 ||
	    fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
		close(fd);
		return -1;
	}
	return conn_add(s, fd);
}

/* ---- server ---- */

int
grpc_server_new(struct loop *l, const struct grpc_method *methods,
    size_t nmethods, void *ctx, size_t max_request,
    struct grpc_server **out)
{
	struct grpc_server *s;

	*out = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return -1;
	s->loop = l;
	s->methods = methods;
	s->nmethods = nmethods;
	s->ctx = ctx;
	s->max_request = max_request;
	s->lwatch.fd = -1;
	log_ratelim_init(&s->refuse_rl, 1);
	s->accept_timer.cb = accept_resume;
	s->accept_timer.arg = s;
	if (nghttp2_session_callbacks_new(&s->cbs) != 0 ||
	    nghttp2_option_new(&s->opt) != 0) {
		grpc_server_free(s);
		return -1;
	}
	call_set_callbacks(s->cbs);
	nghttp2_option_set_max_settings(s->opt, 32);
	/*
	 * Rapid-reset protection (CVE-2023-44487) stays on, but with room for
	 * a client whose deadlines expire in bulk: every expired call is one
	 * RST_STREAM from grpc-go or grpc-core, and nghttp2's default (a burst
	 * of 1000, 33/s) would drop the apiserver's connection during a slow
	 * token. Reset streams cost no token work: queued jobs are skipped.
	 */
	nghttp2_option_set_stream_reset_rate_limit(s->opt, RST_BURST,
	    RST_RATE);
	*out = s;
	return 0;
}

int
grpc_server_listen(struct grpc_server *s, const char *path, char *err,
    size_t errlen)
{
	int fd;

	/* SOMAXCONN: a burst of clients waits in the backlog, not refused. */
	if ((fd = unixsock_listen(path, "--socket", SOMAXCONN, err,
	    errlen)) == -1)
		return -1;
	if (path[0] != '@' && (s->sock_path = strdup(path)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	s->lwatch.fd = fd;
	s->lwatch.cb = on_accept;
	s->lwatch.arg = s;
	if (loop_watch(s->loop, &s->lwatch, EPOLLIN) != 0) {
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		s->lwatch.fd = -1;
		goto fail;
	}
	return 0;

 fail:
	close(fd);
	if (path[0] != '@')
		(void)unlink(path);
	free(s->sock_path);
	s->sock_path = NULL;
	return -1;
}

void
grpc_server_shutdown(struct grpc_server *s)
{
	struct conn *c;

	loop_timer_stop(s->loop, &s->accept_timer);
	if (s->lwatch.fd != -1) {
		loop_unwatch(s->loop, &s->lwatch);
		close(s->lwatch.fd);
		s->lwatch.fd = -1;
	}
	if (s->sock_path != NULL) {
		unixsock_unlink(s->sock_path);
		free(s->sock_path);
		s->sock_path = NULL;
	}
	for (c = s->conns; c != NULL; c = c->next) {
		if (c->dead)
			continue;
		/* Graceful: streams already open may finish. */
		(void)nghttp2_submit_shutdown_notice(c->h2);
		(void)nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
		    nghttp2_session_get_last_proc_stream_id(c->h2),
		    NGHTTP2_NO_ERROR, NULL, 0);
		conn_mark_dirty(c);
	}
}

size_t
grpc_server_active_calls(const struct grpc_server *s)
{
	return s->ncalls;
}

size_t
grpc_server_connections(const struct grpc_server *s)
{
	return s->nconns;
}

void
grpc_server_tick(struct grpc_server *s)
{
	struct conn *c, *next;

	while ((c = s->dirty) != NULL) {
		s->dirty = c->dirty_next;
		c->dirty = 0;
		conn_flush(c);
	}
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (c->dead)
			conn_free(c);
	}
}

void
grpc_server_free(struct grpc_server *s)
{
	if (s == NULL)
		return;
	grpc_server_shutdown(s);
	s->dirty = NULL;
	while (s->conns != NULL) {
		if (!s->conns->dead)
			loop_unwatch(s->loop, &s->conns->watch);
		conn_free(s->conns);
	}
	if (s->cbs != NULL)
		nghttp2_session_callbacks_del(s->cbs);
	if (s->opt != NULL)
		nghttp2_option_del(s->opt);
	free(s);
}

