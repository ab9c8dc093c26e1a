/*
 * tokproc: the front's side of the token process (contracts in tokproc.h):
 * a client that stands in for the keyring and the pool (the spawner is
 * tokspawn.c).
 *
 * Request ids: slot index in the low 16 bits, a sequence number above, so
 * a reply names exactly one job in flight; any other id is a protocol
 * error and the process counts as lost.
 */
#include "plugin/tokproc.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <openssl/crypto.h>

#include "plugin/log.h"

#define IN_CAP		(64 * 1024)
#define OUT_CAP		(256 * 1024)
#define SLOT_BITS	16
#define READ_SLICE	4096	/* bytes of replies read per wake-up */
#define MAX_SLOTS	(1u << SLOT_BITS)

/* ---- the client ---- */

struct slot {
	uint64_t id;			/* 0: free */
	struct pool_job *job;
	unsigned next_free;
};

struct tokproc {
	int fd;
	pid_t pid;
	int dead;
	char why[KEYRING_ERROR_MAX];
	struct loop *loop;
	struct loop_watch watch;
	int watching_out;
	struct loop_timer flush_timer;
	tokproc_dead_cb on_dead;
	tokproc_call_cb on_call;
	void *arg;
	struct tokwire_ready meta;
	struct tokwire_stats stats;
	struct tokwire_msg msg;		/* scratch, wiped after use */
	uint8_t *in, *out;
	size_t in_len, out_len;
	struct slot *slots;
	unsigned nslots, free_head, inflight;
	uint64_t seq;
};

static struct tokproc *
client_new(int fd, unsigned max_inflight)
{
	struct tokproc *tp;
	unsigned i;

	if (max_inflight == 0)
		max_inflight = 1;
	if (max_inflight > MAX_SLOTS - 1)
		max_inflight = MAX_SLOTS - 1;
	if ((tp = calloc(1, sizeof(*tp))) == NULL)
		return NULL;
	tp->fd = fd;
	tp->watch.fd = -1;
	tp->nslots = max_inflight;
	tp->in = malloc(IN_CAP);
	tp->out = malloc(OUT_CAP);
	tp->slots = calloc(tp->nslots, sizeof(*tp->slots));
	if (tp->in == NULL || tp->out == NULL || tp->slots == NULL) {
		free(tp->in);
		free(tp->out);
		free(tp->slots);
		free(tp);
		return NULL;
	}
	for (i = 0; i < tp->nslots; i++)
		tp->slots[i].next_free = i + 1;
	tp->free_head = 0;
	return tp;
}

struct tokproc *
tokproc_from_fd(int fd, const struct tokwire_ready *meta,
    unsigned max_inflight)
{
	struct tokproc *tp = client_new(fd, max_inflight);

	if (tp != NULL && meta != NULL)
		tp->meta = *meta;
	return tp;
}

/* Reads one frame, blocking, within the deadline (ms). */
static int
read_frame(int fd, uint8_t *buf, size_t cap, size_t *len, int ms)
{
	struct pollfd pf = { fd, POLLIN, 0 };
	size_t have = 0;
	ssize_t n;
	long fl;

	for (;;) {
		fl = tokwire_frame(buf, have);
		if (fl < 0)
			return (int)fl;
		if (fl > 0) {
			*len = (size_t)fl;
			return have == (size_t)fl ? 0 : TOKWIRE_E_TRAILING;
		}
		if (poll(&pf, 1, ms) <= 0)
			return -100;
		/* Only what the first frame still needs. */
		n = read(fd, buf + have, have < 4 ? 4 - have :
		    (size_t)(((uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
		    (uint32_t)buf[2] << 8 | buf[3]) + 4 - have));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -101;
		have += (size_t)n;
		if (have > cap)
			return TOKWIRE_E_BIG;
	}
}

int
tokproc_open(struct tokproc **out, char *err, size_t errlen)
{
	struct tokproc *tp = NULL;
	struct tokwire_msg *m = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;
	pid_t pid = 0;
	int fd, r, ret = KEYRING_E_TOKEN;

	*out = NULL;
	if (tokproc_spawn(&fd, &pid, err, errlen) != 0)
		return KEYRING_E_TOKEN;
	if ((buf = malloc(TOKWIRE_MAX_FRAME)) == NULL ||
	    (m = malloc(sizeof(*m))) == NULL) {
		snprintf(err, errlen, "out of memory");
		ret = KEYRING_E_NOMEM;
		goto fail;
	}
	r = read_frame(fd, buf, TOKWIRE_MAX_FRAME, &len,
	    TOKPROC_READY_S * 1000);
	if (r == -100 || r == -101) {
		snprintf(err, errlen, "token process %ld %s before it loaded "
		    "the keyring", (long)pid, r == -100 ? "did not answer "
		    "in time" : "exited");
		goto fail;
	}
	if (r == 0)
		r = tokwire_decode(buf, len, TOKWIRE_TO_FRONT, m);
	if (r != 0 || (m->type != TOKWIRE_READY && m->type !=
	    TOKWIRE_FAILED)) {
		snprintf(err, errlen, "token process %ld: protocol error "
		    "at load: %s", (long)pid, r != 0 ? tokwire_strerror(r) :
		    "unexpected message");
		goto fail;
	}
	if (m->type == TOKWIRE_FAILED) {
		snprintf(err, errlen, "%s", m->u.failed.err);
		ret = m->u.failed.status < 0 ? m->u.failed.status :
		    KEYRING_E_TOKEN;
		goto fail;
	}
	if ((tp = client_new(fd, m->u.ready.inflight)) == NULL) {
		snprintf(err, errlen, "out of memory");
		ret = KEYRING_E_NOMEM;
		goto fail;
	}
	tp->meta = m->u.ready;
	tp->pid = pid;
	tp->stats.workers = m->u.ready.workers;
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	free(buf);
	free(m);
	*out = tp;
	return KEYRING_OK;
 fail:
	free(buf);
	free(m);
	close(fd);		/* a process still loading sees EOF, exits */
	return ret;
}

const struct tokwire_ready *
tokproc_meta(const struct tokproc *tp)
{
	return &tp->meta;
}

pid_t
tokproc_pid(const struct tokproc *tp)
{
	return tp->pid;
}

unsigned
tokproc_inflight(const struct tokproc *tp)
{
	return tp->inflight;
}

unsigned
tokproc_busy(const struct tokproc *tp)
{
	return tp->dead ? 0 : tp->stats.busy;
}

int
tokproc_dead(const struct tokproc *tp)
{
	return tp->dead;
}

static void
slot_release(struct tokproc *tp, unsigned i)
{
	tp->slots[i].id = 0;
	tp->slots[i].job = NULL;
	tp->slots[i].next_free = tp->free_head;
	tp->free_head = i;
	tp->inflight--;
}

/* Hands every job in flight to its callback with status. */
static void
fail_all(struct tokproc *tp, int status, const char *detail)
{
	struct pool_job *job;
	unsigned i;

	for (i = 0; i < tp->nslots; i++) {
		if ((job = tp->slots[i].job) == NULL)
			continue;
		slot_release(tp, i);
		job->status = status;
		job->out_len = 0;
		snprintf(job->detail, sizeof(job->detail), "%s", detail);
		job->done(job);
	}
}

static void lost(struct tokproc *tp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The process is gone or broke the protocol: fail it all, once. */
static void
lost(struct tokproc *tp, const char *fmt, ...)
{
	char what[KEYRING_ERROR_MAX];
	va_list ap;
	int n;

	if (tp->dead)
		return;
	tp->dead = 1;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	n = snprintf(tp->why, sizeof(tp->why), "token process %ld ",
	    (long)tp->pid);
	if (n > 0 && (size_t)n < sizeof(tp->why))
		snprintf(tp->why + n, sizeof(tp->why) - (size_t)n, "%.*s",
		    (int)(sizeof(tp->why) - (size_t)n - 1), what);
	log_error("%s", tp->why);
	if (tp->loop != NULL && tp->watch.fd != -1) {
		loop_unwatch(tp->loop, &tp->watch);
		loop_timer_stop(tp->loop, &tp->flush_timer);
	}
	tp->watch.fd = -1;
	if (tp->fd != -1)
		close(tp->fd);
	tp->fd = -1;
	OPENSSL_cleanse(tp->out, tp->out_len);
	tp->out_len = 0;
	fail_all(tp, KEYRING_E_TOKEN, tp->why);
	if (tp->on_dead != NULL)
		tp->on_dead(tp->arg, tp->why);
}

static void
flush(struct tokproc *tp)
{
	ssize_t w;
	size_t off = 0;

	while (off < tp->out_len) {
		w = send(tp->fd, tp->out + off, tp->out_len - off,
		    MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			break;
		if (w <= 0) {
			OPENSSL_cleanse(tp->out, off);
			lost(tp, "cannot be written to (%s)",
			    strerror(errno));
			return;
		}
		off += (size_t)w;
	}
	OPENSSL_cleanse(tp->out, off);
	memmove(tp->out, tp->out + off, tp->out_len - off);
	tp->out_len -= off;
	if (tp->loop == NULL || tp->watch.fd == -1)
		return;
	/* A full socket: write the rest when it drains, read meanwhile. */
	if ((tp->out_len > 0) != tp->watching_out) {
		tp->watching_out = tp->out_len > 0;
		(void)loop_rewatch(tp->loop, &tp->watch, EPOLLIN |
		    (tp->watching_out ? EPOLLOUT : 0));
	}
}

static void
on_flush(void *arg)
{
	flush(arg);
}

int
tokproc_submit(struct tokproc *tp, struct pool_job *job)
{
	struct tokwire_req *q = &tp->msg.u.req;
	unsigned i;
	size_t n;

	if (tp->dead)
		return KEYRING_E_TOKEN;
	if (tp->inflight >= tp->nslots)
		return POOL_E_BUSY;
	if (OUT_CAP - tp->out_len < TOKWIRE_MAX_FRAME) {
		flush(tp);
		if (tp->dead)
			return KEYRING_E_TOKEN;
		if (OUT_CAP - tp->out_len < TOKWIRE_MAX_FRAME)
			return POOL_E_BUSY;
	}
	i = tp->free_head;
	tp->msg.type = TOKWIRE_REQ;
	tp->msg.id = (++tp->seq << SLOT_BITS) | i;
	q->op = (uint8_t)job->op;
	q->deadline = job->deadline;
	snprintf(q->key_id, sizeof(q->key_id), "%s", job->key_id);
	q->in_len = (uint16_t)(job->in_len <= sizeof(q->in) ? job->in_len :
	    0);
	memcpy(q->in, job->in, q->in_len);
	q->replica = job->replica >= 0 && job->replica <
	    TOKWIRE_REPLICAS_MAX ? (uint8_t)job->replica : TOKWIRE_NO_REPLICA;
	n = tokwire_encode(&tp->msg, tp->out + tp->out_len,
	    OUT_CAP - tp->out_len);
	OPENSSL_cleanse(q->in, q->in_len);
	if (n == 0)
		return KEYRING_E_INVALID;
	tp->out_len += n;
	tp->free_head = tp->slots[i].next_free;
	tp->slots[i].id = tp->msg.id;
	tp->slots[i].job = job;
	tp->inflight++;
	/* Timers run after the I/O of this loop iteration: one write. */
	if (tp->loop != NULL && tp->flush_timer.slot == 0)
		(void)loop_timer_start(tp->loop, &tp->flush_timer, 0);
	return 0;
}

static int
on_reply(struct tokproc *tp, const struct tokwire_msg *m)
{
	const struct tokwire_reply *r = &m->u.reply;
	uint64_t slot = m->id & (MAX_SLOTS - 1);
	struct pool_job *job;

	if (slot >= tp->nslots || tp->slots[slot].job == NULL ||
	    tp->slots[slot].id != m->id)
		return -1;
	job = tp->slots[slot].job;
	slot_release(tp, (unsigned)slot);
	job->status = r->status;
	job->out_len = r->out_len;
	memcpy(job->out, r->out, r->out_len);
	memcpy(job->key_id_out, r->key_id_out, sizeof(job->key_id_out));
	memcpy(job->detail, r->detail, sizeof(job->detail));
	job->started = r->started;
	job->finished = r->finished;
	job->ran_on = r->ran_on == TOKWIRE_NO_REPLICA ? -1 : r->ran_on;
	job->failed_on = r->failed_on == TOKWIRE_NO_REPLICA ? -1 :
	    r->failed_on;
	job->done(job);
	return 0;
}

/* Decodes and dispatches every whole frame in the input buffer. */
static int
drain(struct tokproc *tp)
{
	struct tokwire_msg *m = &tp->msg;
	size_t off = 0, i;
	long fl = 0;
	int r = 0;

	while (!tp->dead && (fl = tokwire_frame(tp->in + off,
	    tp->in_len - off)) > 0) {
		if ((r = tokwire_decode(tp->in + off, (size_t)fl,
		    TOKWIRE_TO_FRONT, m)) != 0)
			break;
		off += (size_t)fl;
		switch (m->type) {
		case TOKWIRE_REPLY:
			r = on_reply(tp, m);
			OPENSSL_cleanse(m->u.reply.out, m->u.reply.out_len);
			if (r != 0) {
				char what[64];

				snprintf(what, sizeof(what), "%llu",
				    (unsigned long long)m->id);
				OPENSSL_cleanse(tp->in, tp->in_len);
				tp->in_len = 0;
				lost(tp, "broke the protocol: a reply to "
				    "request id %s, which is not in flight",
				    what);
				return -1;
			}
			break;
		case TOKWIRE_STATS:
			tp->stats = m->u.stats;
			break;
		case TOKWIRE_CALLS:
			for (i = 0; tp->on_call != NULL && i < m->u.calls.n; i++)
				tp->on_call(m->u.calls.c[i].fn,
				    (unsigned long)m->u.calls.c[i].rv,
				    (double)m->u.calls.c[i].ns / 1e9);
			break;
		default:
			r = TOKWIRE_E_TYPE;
		}
		if (r != 0)
			break;
	}
	if (!tp->dead && (r != 0 || fl < 0)) {
		OPENSSL_cleanse(tp->in, tp->in_len);
		tp->in_len = 0;
		lost(tp, "broke the protocol: %s",
		    tokwire_strerror(r != 0 ? r : (int)fl));
		return -1;
	}
	if (tp->dead)
		return -1;
	memmove(tp->in, tp->in + off, tp->in_len - off);
	OPENSSL_cleanse(tp->in + (tp->in_len - off), off);
	tp->in_len -= off;
	return 0;
}

int
tokproc_feed(struct tokproc *tp, const uint8_t *buf, size_t len)
{
	size_t n;

	while (len > 0 && !tp->dead) {
		n = IN_CAP - tp->in_len < len ? IN_CAP - tp->in_len : len;
		memcpy(tp->in + tp->in_len, buf, n);
		tp->in_len += n;
		buf += n;
		len -= n;
		if (drain(tp) != 0)
			return -1;
		if (tp->in_len == IN_CAP) {
			lost(tp, "broke the protocol: a message over "
			    "its limit");
			return -1;
		}
	}
	return tp->dead ? -1 : 0;
}

static void
on_io(void *arg, uint32_t events)
{
	struct tokproc *tp = arg;
	ssize_t n;

	if (events & EPOLLOUT)
		flush(tp);
	/*
	 * At most READ_SLICE bytes a wake-up (some 20 replies): the socket
	 * stays readable for the rest, and this watch is late, so a Status
	 * read in the next wake-up is answered before the next slice of
	 * replies, as the in-process loop answers at most 16 finished jobs
	 * a wake-up (measured: Status p99 beside Encrypt c=64 went up
	 * 1.1-1.7x with the token process while each wake-up drained every
	 * reply that had come).
	 */
	while (!tp->dead && tp->in_len < IN_CAP) {
		n = read(tp->fd, tp->in + tp->in_len, IN_CAP - tp->in_len <
		    READ_SLICE ? IN_CAP - tp->in_len : READ_SLICE);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			lost(tp, "exited or was killed (%s)", n == 0 ?
			    "its socket closed" : strerror(errno));
			return;
		}
		tp->in_len += (size_t)n;
		(void)drain(tp);
		break;
	}
	if (!tp->dead && tp->in_len == IN_CAP)
		lost(tp, "broke the protocol: a message over its "
		    "limit");
}

int
tokproc_attach(struct tokproc *tp, struct loop *l, tokproc_dead_cb dead,
    void *arg, tokproc_call_cb calls)
{
	int r;

	tp->loop = l;
	tp->on_dead = dead;
	tp->arg = arg;
	tp->on_call = calls;
	tp->flush_timer.cb = on_flush;
	tp->flush_timer.arg = tp;
	if (tp->dead)
		return 0;
	tp->watch.fd = tp->fd;
	tp->watch.cb = on_io;
	tp->watch.arg = tp;
	/* Late: a Status read in the same wake-up is answered first. */
	tp->watch.late = 1;
	if ((r = loop_watch(l, &tp->watch, EPOLLIN)) != 0) {
		tp->watch.fd = -1;
		return r;
	}
	return 0;
}

void
tokproc_detach(struct tokproc *tp)
{
	if (tp->loop == NULL)
		return;
	loop_timer_stop(tp->loop, &tp->flush_timer);
	if (tp->watch.fd != -1)
		loop_unwatch(tp->loop, &tp->watch);
	tp->watch.fd = -1;
	tp->loop = NULL;
}

static int exit_wait_ms;

void
tokproc_set_exit_wait(int ms)
{
	exit_wait_ms = ms;
}

/*
 * Shuts our side down and reads until the process closes its own (it has
 * finalized the module and exited) or ms pass. Replies still coming are
 * dropped.
 */
static void
wait_exit(int fd, int ms)
{
	struct pollfd pf = { fd, POLLIN, 0 };
	uint64_t until;
	struct timespec ts;
	uint8_t junk[4096];
	ssize_t n;

	(void)shutdown(fd, SHUT_WR);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	until = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 +
	    (uint64_t)ms;
	for (;;) {
		uint64_t now;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		now = (uint64_t)ts.tv_sec * 1000 +
		    (uint64_t)ts.tv_nsec / 1000000;
		if (now >= until || poll(&pf, 1, (int)(until - now)) <= 0)
			break;
		n = read(fd, junk, sizeof(junk));
		OPENSSL_cleanse(junk, sizeof(junk));
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			break;
	}
}

void
tokproc_free(struct tokproc *tp)
{
	if (tp == NULL)
		return;
	tokproc_detach(tp);
	if (tp->fd != -1) {
		if (tp->out_len > 0) {
			(void)fcntl(tp->fd, F_SETFL, fcntl(tp->fd, F_GETFL) &
			    ~O_NONBLOCK);
			flush(tp);
		}
		if (tp->fd != -1 && exit_wait_ms > 0)
			wait_exit(tp->fd, exit_wait_ms);
		if (tp->fd != -1)
			close(tp->fd);
	}
	tp->fd = -1;
	tp->dead = 1;
	fail_all(tp, POOL_E_CANCELLED, "");
	OPENSSL_cleanse(tp->in, IN_CAP);
	OPENSSL_cleanse(tp->out, OUT_CAP);
	OPENSSL_cleanse(&tp->msg, sizeof(tp->msg));
	free(tp->in);
	free(tp->out);
	free(tp->slots);
	free(tp);
}
