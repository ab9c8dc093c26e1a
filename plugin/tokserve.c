/*
 * tokserve: the token process (see tokproc.h). The worker pool runs fed
 * (pool.h): an idle worker reads the front's socket itself, queues every
 * request one read brings, and each worker writes its own replies, so a
 * request wakes one thread here, not a loop thread, then a worker, then the
 * loop again. Replies finished while more jobs are queued share a write
 * (up to OUT_BATCH). The main thread only sends the pool's figures and the
 * token calls every STATS_NS and waits for the input to end.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <sys/prctl.h>

#include <openssl/crypto.h>

#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "pkcs11/spin.h"
#include "plugin/config.h"
#include "plugin/gen.h"
#include "plugin/harden.h"
#include "plugin/log.h"
#include "plugin/logcap.h"
#include "plugin/loop.h"
#include "plugin/tokproc.h"
#include "plugin/tokwire.h"

#define IN_CAP		(256 * 1024)
#define OUT_CAP		(256 * 1024)
#define CALL_RING	4096
#define STATS_NS	250000000ull

struct srv {
	struct loop *loop;
	struct gen *g;
	int fd;				/* blocking; read by the filler */
	struct loop_watch endw;		/* end_efd: the input ended */
	struct loop_timer stats_timer;
	struct tokwire_stats sent;
	int end_efd;
	atomic_int stop;

	/* The filler's (one worker at a time, ordered by the pool lock). */
	uint8_t *in;			/* wiped after use */
	size_t in_len;
	struct tokwire_msg rmsg;	/* decode scratch, wiped */
	struct spin_gate spin;		/* the filler's wait for input */

	/* Replies and other messages out: under wlock. */
	pthread_mutex_t wlock;
	uint8_t *out;			/* wiped after use */
	size_t out_len;
	unsigned out_n;			/* replies in out */
	struct tokwire_msg wmsg;	/* encode scratch, wiped */
};

/* Replies that may wait in out for a write shared with later ones. */
#define OUT_BATCH	8

/* Token calls, from the worker threads to the loop thread. */
static struct {
	pthread_mutex_t lock;
	struct tokwire_call c[CALL_RING];
	size_t head, n;
} calls = { PTHREAD_MUTEX_INITIALIZER, { { "", 0, 0 } }, 0, 0 };

static void
call_observer(const char *function, unsigned long rv, double seconds)
{
	struct tokwire_call *c;

	pthread_mutex_lock(&calls.lock);
	if (calls.n < CALL_RING) {
		c = &calls.c[(calls.head + calls.n) % CALL_RING];
		snprintf(c->fn, sizeof(c->fn), "%s", function ? function : "");
		c->rv = rv;
		c->ns = seconds > 0 ? (uint64_t)(seconds * 1e9) : 0;
		calls.n++;
	}
	pthread_mutex_unlock(&calls.lock);
}

/* Tells the loop thread the input ended: it stops the process. */
static void
end_input(struct srv *s)
{
	uint64_t one = 1;

	atomic_store(&s->stop, 1);
	(void)!write(s->end_efd, &one, sizeof(one));
}

/* Writes everything queued, blocking: the front always reads. wlock. */
static void
flush(struct srv *s)
{
	size_t off = 0;
	ssize_t w;

	while (off < s->out_len) {
		w = write(s->fd, s->out + off, s->out_len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			end_input(s);	/* the front is gone */
			break;
		}
		off += (size_t)w;
	}
	OPENSSL_cleanse(s->out, s->out_len);
	s->out_len = 0;
	s->out_n = 0;
}

/* wlock. */
static void
queue_msg(struct srv *s, const struct tokwire_msg *m)
{
	size_t n;

	if (OUT_CAP - s->out_len < TOKWIRE_MAX_FRAME)
		flush(s);
	n = tokwire_encode(m, s->out + s->out_len, OUT_CAP - s->out_len);
	if (n == 0) {
		log_error("token process: cannot encode a %s message",
		    tokwire_type_name(m->type));
		end_input(s);
		return;
	}
	s->out_len += n;
}

/* wlock. */
static void
queue_calls(struct srv *s)
{
	struct tokwire_msg *m = &s->wmsg;

	for (;;) {
		memset(&m->u.calls, 0, sizeof(m->u.calls));
		pthread_mutex_lock(&calls.lock);
		while (calls.n > 0 && m->u.calls.n < TOKWIRE_CALLS_MAX) {
			m->u.calls.c[m->u.calls.n++] = calls.c[calls.head];
			calls.head = (calls.head + 1) % CALL_RING;
			calls.n--;
		}
		pthread_mutex_unlock(&calls.lock);
		if (m->u.calls.n == 0)
			return;
		m->type = TOKWIRE_CALLS;
		m->id = 0;
		queue_msg(s, m);
	}
}

/*
 * Queues the reply to request id; writes it at once unless more jobs are
 * queued, in which case up to OUT_BATCH replies share one write (the last
 * job of a burst always finds the queue empty and writes them all).
 */
static void
reply(struct srv *s, uint64_t id, const struct pool_job *job, int more)
{
	struct tokwire_reply *r = &s->wmsg.u.reply;

	pthread_mutex_lock(&s->wlock);
	s->wmsg.type = TOKWIRE_REPLY;
	s->wmsg.id = id;
	r->status = job->status;
	r->out_len = (uint16_t)(job->status == KEYRING_OK ? job->out_len : 0);
	memcpy(r->out, job->out, r->out_len);
	memcpy(r->key_id_out, job->key_id_out, sizeof(r->key_id_out));
	r->key_id_out[sizeof(r->key_id_out) - 1] = '\0';
	memcpy(r->detail, job->detail, sizeof(r->detail));
	r->detail[sizeof(r->detail) - 1] = '\0';
	r->started = job->started;
	r->finished = job->finished;
	r->ran_on = job->ran_on >= 0 ? (uint8_t)job->ran_on :
	    TOKWIRE_NO_REPLICA;
	r->failed_on = job->failed_on >= 0 ? (uint8_t)job->failed_on :
	    TOKWIRE_NO_REPLICA;
	queue_msg(s, &s->wmsg);
	OPENSSL_cleanse(r->out, r->out_len);
	if (!more || ++s->out_n >= OUT_BATCH) {
		queue_calls(s);
		flush(s);
	}
	pthread_mutex_unlock(&s->wlock);
}

/* The pool's finish: the job's id rides in arg, the server in ctx. */
static void
on_finish(void *ctx, struct pool_job *job, int more)
{
	reply(ctx, (uint64_t)(uintptr_t)job->arg, job, more);
	pool_job_free(job);		/* wipes */
}

/* A job handed to done instead (pool_free's leftovers): no reply. */
static void
job_drop(struct pool_job *job)
{
	pool_job_free(job);
}

static struct pool_job *
new_job(struct srv *s, const struct tokwire_msg *m)
{
	const struct tokwire_req *q = &m->u.req;
	struct pool_job *job;

	if ((job = pool_job_new((enum pool_op)q->op)) == NULL) {
		struct pool_job tmp;

		memset(&tmp, 0, sizeof(tmp));
		tmp.status = KEYRING_E_NOMEM;
		reply(s, m->id, &tmp, 0);
		return NULL;
	}
	job->deadline = q->deadline;
	memcpy(job->in, q->in, q->in_len);
	job->in_len = q->in_len;
	memcpy(job->key_id, q->key_id, sizeof(job->key_id));
	job->replica = q->replica == TOKWIRE_NO_REPLICA ? -1 : q->replica;
	job->done = job_drop;
	job->arg = (void *)(uintptr_t)m->id;
	job->ctx = s;
	return job;
}

/*
 * The pool's fill, on an idle worker: one blocking read, then every whole
 * request it completed goes to the pool at once.
 */
static int
fill(void *ctx, struct pool *p)
{
	struct srv *s = ctx;
	struct pool_job *head = NULL, **tail = &head, *job;
	unsigned njobs = 0;
	size_t off = 0;
	ssize_t n;
	long fl;
	int r = 0;

	if (atomic_load(&s->stop))
		return -1;
	n = -1;
	/* Busy polling (pkcs11/spin.h): the next request, awake. */
	if (spin_gate_open(&s->spin)) {
		uint64_t now, next = 0, end = loop_now() + s->spin.ns;

		for (;;) {
			n = recv(s->fd, s->in + s->in_len, IN_CAP - s->in_len,
			    MSG_DONTWAIT);
			if (n >= 0 || errno != EAGAIN ||
			    (now = loop_now()) >= end || atomic_load(&s->stop))
				break;
			spin_relax(now, &next);
		}
		spin_gate_done(&s->spin, n >= 0);
	}
	if (n < 0)
		n = read(s->fd, s->in + s->in_len, IN_CAP - s->in_len);
	if (n < 0 && errno == EINTR)
		return 0;
	if (n <= 0) {
		end_input(s);		/* EOF: the front closed it or died */
		return -1;
	}
	s->in_len += (size_t)n;
	while ((fl = tokwire_frame(s->in + off, s->in_len - off)) > 0) {
		r = tokwire_decode(s->in + off, (size_t)fl, TOKWIRE_TO_TOKEN,
		    &s->rmsg);
		if (r != 0)
			break;
		if (s->rmsg.type == TOKWIRE_REQ &&
		    (job = new_job(s, &s->rmsg)) != NULL) {
			*tail = job;
			tail = &job->next;
			njobs++;
		}
		OPENSSL_cleanse(s->rmsg.u.req.in, sizeof(s->rmsg.u.req.in));
		off += (size_t)fl;
	}
	memmove(s->in, s->in + off, s->in_len - off);
	OPENSSL_cleanse(s->in + (s->in_len - off), off);
	s->in_len -= off;
	pool_feed_push(p, head, njobs);
	if (fl < 0 || (fl > 0 && r != 0)) {
		log_error("token process: bad message from the front (%s); "
		    "exiting", tokwire_strerror(fl < 0 ? (int)fl : r));
		end_input(s);
		return -1;
	}
	return 0;
}

static void
on_end(void *arg, uint32_t events)
{
	struct srv *s = arg;
	uint64_t v;

	(void)events;
	(void)!read(s->end_efd, &v, sizeof(v));
}

static void
on_stats(void *arg)
{
	struct srv *s = arg;
	struct tokwire_stats st;
	unsigned n = pool_inflight(s->g->pool);

	st.workers = pool_workers(s->g->pool);
	st.busy = pool_busy(s->g->pool);
	st.inflight = n;
	pthread_mutex_lock(&s->wlock);
	if (memcmp(&st, &s->sent, sizeof(st)) != 0) {
		s->wmsg.type = TOKWIRE_STATS;
		s->wmsg.id = 0;
		s->wmsg.u.stats = st;
		s->sent = st;
		queue_msg(s, &s->wmsg);
	}
	queue_calls(s);
	flush(s);
	pthread_mutex_unlock(&s->wlock);
	(void)loop_timer_start(s->loop, &s->stats_timer,
	    loop_now() + STATS_NS);
}

static void
copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src != NULL ? src : "");
}

static void
fill_ready(struct tokwire_ready *m, const struct gen *g)
{
	const struct config *c = &g->cfg;
	size_t i;

	memset(m, 0, sizeof(*m));
	m->pid = (uint32_t)getpid();
	copy_str(m->socket_path, sizeof(m->socket_path), c->socket_path);
	copy_str(m->kms_version, sizeof(m->kms_version), c->kms_version);
	copy_str(m->ops_listen, sizeof(m->ops_listen), c->ops_listen);
	copy_str(m->audit_log, sizeof(m->audit_log), c->audit_log);
	m->max_request = c->max_request;
	m->probe_interval_s = c->probe_interval_s;
	m->grace_s = c->grace_s;
	m->log_level = c->log_level;
	copy_str(m->log_format, sizeof(m->log_format), c->log_format);
	m->max_connections = c->max_connections;
	m->busy_poll = (uint8_t)(c->busy_poll ? 1 : 0);
	copy_str(m->pid_file, sizeof(m->pid_file), c->pid_file);
	m->workers = g->workers;
	m->inflight = g->inflight;
	copy_str(m->workers_from, sizeof(m->workers_from), g->workers_from);
	(void)keyring_key_token(g->kr, 0, m->token_label, m->token_serial);
	m->hw_slot = (uint8_t)keyring_hw_slot(g->kr);
	m->max_sessions = keyring_max_sessions(g->kr);
	m->nkeys = (uint8_t)keyring_nkeys(g->kr);
	for (i = 0; i < m->nkeys; i++) {
		struct tokwire_key *k = &m->keys[i];

		copy_str(k->key_id, sizeof(k->key_id), keyring_key_id(g->kr, i));
		copy_str(k->desc, sizeof(k->desc), keyring_key_desc(g->kr, i));
		copy_str(k->mechanism, sizeof(k->mechanism),
		    keyring_key_mechanism(g->kr, i));
		copy_str(k->seal_detail, sizeof(k->seal_detail),
		    keyring_key_seal_detail(g->kr, i));
		copy_str(k->mechanisms, sizeof(k->mechanisms),
		    keyring_key_mechanisms(g->kr, i));
	}
	m->nreplicas = (uint8_t)gen_nreplicas(g);
	for (i = 0; i < m->nreplicas; i++)
		copy_str(m->replicas[i], sizeof(m->replicas[i]),
		    gen_replica_name(g, i));
}

int
tokserve_main(int argc, char **argv)
{
	struct srv s;
	struct pool_feed feed;
	struct config cfg;
	sigset_t set;
	char err[512], *end;
	long fd;
	int r, ret = 1;

	memset(&s, 0, sizeof(s));
	s.end_efd = -1;
	pthread_mutex_init(&s.wlock, NULL);
	/* The spawner is our parent; it dies with the front. */
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* exec'ed as /proc/self/exe: ps and top would say "exe". */
	(void)prctl(PR_SET_NAME, "p11kms-token");
	if (argc < 3)
		return 2;
	fd = strtol(argv[2], &end, 10);
	if (*end != '\0' || fd < 3 || fd > 1024)
		return 2;
	s.fd = (int)fd;
	(void)fcntl(s.fd, F_SETFD, FD_CLOEXEC);
	/* The filler blocks in read(2); writes wait for the front. */
	if ((r = fcntl(s.fd, F_GETFL)) != -1)
		(void)fcntl(s.fd, F_SETFL, r & ~O_NONBLOCK);
	/* exec kept the front's blocked mask; the front ends us by EOF. */
	sigemptyset(&set);
	(void)sigprocmask(SIG_SETMASK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, SIG_IGN);	/* a group kill: drain, EOF ends us */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGUSR1, SIG_IGN);
	/* argv[0] stays: the rest is the daemon's own command line. */
	argv[2] = argv[0];
	config_defaults(&cfg);
	if ((r = config_parse_args(&cfg, argc - 2, argv + 2, err,
	    sizeof(err))) != CONFIG_OK) {
		config_free(&cfg);
		s.wmsg.type = TOKWIRE_FAILED;
		s.wmsg.u.failed.status = KEYRING_E_CONFIG;
		copy_str(s.wmsg.u.failed.err, sizeof(s.wmsg.u.failed.err), r ==
		    CONFIG_EXIT ? "--help/--version in a reload" : err);
		goto tell;
	}
	log_level = cfg.log_level;
	log_format = log_format_parse(cfg.log_format);
	harden_process(err, sizeof(err));
	log_debug("token process %ld: %s", (long)getpid(), err);
	if (logcap_start(NULL, err, sizeof(err)) != 0)
		log_warn("%s; module output stays on stderr as is", err);
	keyring_set_call_observer(call_observer);
	if ((s.in = malloc(IN_CAP)) == NULL || (s.out = malloc(OUT_CAP)) ==
	    NULL || loop_new(&s.loop) != 0 || (s.end_efd = eventfd(0,
	    EFD_NONBLOCK | EFD_CLOEXEC)) == -1) {
		config_free(&cfg);
		goto out;
	}
	err[0] = '\0';
	if ((r = gen_open(&cfg, &s.g, err, sizeof(err))) != KEYRING_OK) {
		s.wmsg.type = TOKWIRE_FAILED;
		s.wmsg.u.failed.status = r;
		copy_str(s.wmsg.u.failed.err, sizeof(s.wmsg.u.failed.err), err);
		goto tell;
	}
	/* The front never sees the keyring: the warning is said here. */
	if (*keyring_module_warning(s.g->kr) != '\0')
		log_warn("%s", keyring_module_warning(s.g->kr));
	s.wmsg.type = TOKWIRE_READY;
	fill_ready(&s.wmsg.u.ready, s.g);
 tell:
	s.wmsg.id = 0;
	if (s.out == NULL && (s.out = malloc(OUT_CAP)) == NULL)
		goto out;
	queue_msg(&s, &s.wmsg);
	flush(&s);
	if (s.g == NULL || s.stop)
		goto out;
	feed.fill = fill;
	feed.finish = on_finish;
	feed.ctx = &s;
	feed.reader_handoff = keyring_hw_slot(s.g->kr);
	s.endw.fd = s.end_efd;
	s.endw.cb = on_end;
	s.endw.arg = &s;
	s.stats_timer.cb = on_stats;
	s.stats_timer.arg = &s;
	if (loop_watch(s.loop, &s.endw, EPOLLIN) != 0)
		goto out;
	/* From here on the workers read the socket and write the replies. */
	s.spin.ns = gen_spin_ns(&s.g->cfg, GEN_SPIN_REQUEST_NS);
	pool_set_feed(s.g->pool, &feed);
	on_stats(&s);
	while (!atomic_load(&s.stop))
		if (loop_once(s.loop, -1) != 0)
			break;
	ret = 0;
 out:
	if (s.loop != NULL) {
		loop_timer_stop(s.loop, &s.stats_timer);
		if (s.g != NULL)
			loop_unwatch(s.loop, &s.endw);
	}
	/*
	 * Running jobs finish; their replies go where they can. A filler
	 * blocked in read(2) returns 0 on the shut-down socket.
	 */
	atomic_store(&s.stop, 1);
	(void)shutdown(s.fd, SHUT_RD);
	gen_free(s.g);
	loop_free(s.loop);
	if (s.in != NULL)
		OPENSSL_cleanse(s.in, IN_CAP);
	free(s.in);
	free(s.out);
	OPENSSL_cleanse(&s.wmsg, sizeof(s.wmsg));
	OPENSSL_cleanse(&s.rmsg, sizeof(s.rmsg));
	if (s.end_efd != -1)
		close(s.end_efd);
	/* The module's last words, then EOF tells the front we are done. */
	logcap_stop();
	close(s.fd);
	return ret;
}
