/*
 * pool: the token worker threads (pool.h). Workers sleep on a condition
 * variable over a bounded FIFO; each runs jobs on its own logged-in session
 * (one retry on a fresh session after KEYRING_E_SESSION) and pushes the
 * result onto a done list the loop drains after an eventfd wake-up. In fed
 * mode (pool_set_feed) an idle worker reads the input itself and hands each
 * result to the feed, so no other thread stands between the socket and the
 * token. The queues, the done list, the counts and the replicas' states are
 * under the pool mutex. With replicas, each has its own FIFO, condition
 * variable and workers; where a job goes, what a fault does to it and the
 * hung-call watchdog are pool_replica.c's (pool_int.h).
 */
#include "pkcs11/pool.h"
#include "pkcs11/spin.h"
#include "pkcs11/token.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define POOL_WORKER_NICE	5

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/pool_int.h"

struct worker_arg {
	struct pool *p;
	unsigned idx;
};

struct pool_job *
pool_job_new(enum pool_op op)
{
	struct pool_job *job;

	/*
	 * Not calloc: in/out are 1 KiB each and only their first in_len /
	 * out_len bytes are ever read, so zeroing (and wiping) the rest would
	 * cost more than the rest of the request path on the loop thread.
	 */
	if ((job = malloc(sizeof(*job))) == NULL)
		return NULL;
	job->op = op;
	job->deadline = 0;
	job->in_len = 0;
	job->key_id[0] = '\0';
	job->done = NULL;
	job->arg = job->ctx = NULL;
	job->replica = -1;
	job->ran_on = job->failed_on = -1;
	job->tries = 0;
	job->status = KEYRING_OK;
	job->out_len = 0;
	job->key_id_out[0] = '\0';
	job->detail[0] = '\0';
	job->started = job->finished = 0;
	atomic_init(&job->cancelled, 0);
	job->next = NULL;
	return job;
}

void
pool_job_free(struct pool_job *job)
{
	if (job == NULL)
		return;
	/* in/out may hold a plaintext: wipe what was written. */
	OPENSSL_cleanse(job->in, job->in_len);
	OPENSSL_cleanse(job->out, job->out_len);
	free(job);
}

static int
probe(struct keyring_worker *w, struct pool_job *job)
{
	uint8_t canary[32], back[KEYRING_MAX_PLAINTEXT];
	size_t backlen = 0;
	int r;

	if (RAND_bytes(canary, sizeof(canary)) != 1)
		return KEYRING_E_NOMEM;
	r = keyring_seal(w, canary, sizeof(canary), job->out, sizeof(job->out),
	    &job->out_len, job->key_id_out);
	if (r == KEYRING_OK)
		r = keyring_open(w, job->key_id_out, job->out, job->out_len,
		    back, sizeof(back), &backlen, NULL);
	if (r == KEYRING_OK && (backlen != sizeof(canary) ||
	    CRYPTO_memcmp(back, canary, sizeof(canary)) != 0))
		r = KEYRING_E_AUTH;	/* the token gave back other bytes */
	OPENSSL_cleanse(back, sizeof(back));
	OPENSSL_cleanse(canary, sizeof(canary));
	job->out_len = 0;
	return r;
}

static void
run_op(struct keyring_worker *w, struct pool_job *job)
{
	switch (job->op) {
	case POOL_SEAL:
		job->status = keyring_seal(w, job->in, job->in_len, job->out,
		    sizeof(job->out), &job->out_len, job->key_id_out);
		break;
	case POOL_OPEN:
		job->status = keyring_open(w,
		    job->key_id[0] != '\0' ? job->key_id : NULL,
		    job->in, job->in_len, job->out, sizeof(job->out),
		    &job->out_len, job->key_id_out);
		break;
	case POOL_PROBE:
		job->status = probe(w, job);
		break;
	default:
		job->status = KEYRING_E_INVALID;
	}
}

static void
run_job(struct keyring_worker *w, struct pool_job *job)
{
	job->started = token_now_ns();
	run_op(w, job);
	if (job->status == KEYRING_E_SESSION) {
		/* Only this session is gone: a new one, then once more. */
		snprintf(job->detail, sizeof(job->detail), "%s",
		    keyring_worker_error(w));
		if (keyring_worker_reopen(w) != KEYRING_OK)
			job->status = KEYRING_E_TOKEN;	/* beyond a session */
		else
			run_op(w, job);	/* may still say SESSION: this one
					 * failed too, but the next may not */
	}
	if (job->status == KEYRING_E_TOKEN)
		snprintf(job->detail, sizeof(job->detail), "%s",
		    keyring_worker_error(w));
	job->finished = token_now_ns();
	/* The input is not needed any more; do not keep a plaintext around. */
	OPENSSL_cleanse(job->in, job->in_len);
}

/*
 * A software token computes on our CPUs: its workers are CPU-bound batch
 * work, so they run SCHED_BATCH, which the kernel never lets preempt a
 * running thread when they wake (a job handed over by the loop no longer
 * pushes the loop, or the client it is answering, off its core; measured
 * with `make bench`: lower Status p99 under load and fewer context
 * switches). A hardware token's workers mostly wait on the device and keep
 * the default policy, so its answers are picked up at once. Best effort.
 */
static void
worker_sched(struct keyring *kr)
{
	struct sched_param sp;

	if (keyring_hw_slot(kr))
		return;
	memset(&sp, 0, sizeof(sp));
	(void)sched_setscheduler(0, SCHED_BATCH, &sp);
}

/*
 * One idle worker at a time waits for the next job awake, for up to the
 * spin's budget, before it sleeps (pool_set_spin): a lone request then
 * finds a worker on a core that is running.
 */
static void
spin_for_job(struct pool *p)
{
	uint64_t now, next = 0, end = token_now_ns() + p->spin.ns;

	while (atomic_load_explicit(&p->queued, memory_order_relaxed) == 0 &&
	    atomic_load_explicit(&p->spin_stop, memory_order_relaxed) == 0 &&
	    (now = token_now_ns()) < end)
		spin_relax(now, &next);
}

/*
 * An idle worker's sleep. Fed without reader hand-off, the filler runs
 * the job it read while nobody reads: if that job hangs in the token, the
 * requests behind it would wait for it. So such a sleep ends after a while
 * to look whether anyone reads (and read if not): after 1 ms, doubling up
 * to 128 ms while a reader is found at work, so an idle daemon wakes its
 * idle workers about 8 times a second. Lock held.
 */
#define LOOK_MS_MAX	128

static void
idle_wait(struct pool *p, struct replica *rp, unsigned *look_ms)
{
	struct timespec ts;

	if (p->feed.fill == NULL || p->feed.reader_handoff || p->feed_ended) {
		pthread_cond_wait(&rp->cond, &p->lock);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += (long)*look_ms * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	if (pthread_cond_timedwait(&rp->cond, &p->lock, &ts) != ETIMEDOUT)
		*look_ms = 1;		/* woken for work */
	else if (p->filling && *look_ms < LOOK_MS_MAX)
		*look_ms *= 2;		/* a reader is at work: look less */
}

static void *
worker_main(void *varg)
{
	struct worker_arg *wa = varg;
	struct pool *p = wa->p;
	struct wslot *ws = &p->workers[wa->idx];
	struct replica *rp = &p->rep[ws->rep];
	struct keyring_worker *w = ws->kw;
	struct pool_job *job, *run;
	uint64_t one = 1;
	int nice_now, stop, more, r, fin, spun = 0;
	unsigned look_ms = 1;

	free(wa);
	(void)pthread_setname_np(pthread_self(), "p11kms-worker");
	worker_sched(rp->kr);
	/*
	 * Workers run a notch below the event loop: with a software token
	 * they are CPU-bound, and the loop must win the core at once to
	 * answer Status while they work (Linux nice values are per thread).
	 */
	errno = 0;
	nice_now = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
	if (errno == 0)
		(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid),
		    nice_now + POOL_WORKER_NICE);
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (rp->head == NULL && !p->stopping) {
			/* Fed: the first idle worker reads; the rest sleep. */
			if (p->feed.fill != NULL && !p->filling &&
			    !p->feed_ended) {
				p->filling = 1;
				pthread_mutex_unlock(&p->lock);
				r = p->feed.fill(p->feed.ctx, p);
				pthread_mutex_lock(&p->lock);
				p->filling = 0;
				if (r != 0) {
					p->feed_ended = 1;
					pool_wake_all_locked(p);
				}
				continue;
			}
			/* One spin per idle spell: a miss sleeps next. */
			if (p->feed.fill == NULL && !p->spinning && !spun &&
			    spin_gate_open(&p->spin)) {
				p->spinning = 1;
				p->spin_rep = (int)ws->rep;
				pthread_mutex_unlock(&p->lock);
				spin_for_job(p);
				pthread_mutex_lock(&p->lock);
				p->spinning = 0;
				spun = 1;
				spin_gate_done(&p->spin, rp->head != NULL);
				continue;
			}
			idle_wait(p, rp, &look_ms);
			spun = 0;
		}
		if (rp->head == NULL)	/* stopping and nothing queued */
			break;
		job = rp->head;
		spun = 0;
		atomic_fetch_sub_explicit(&p->queued, 1, memory_order_relaxed);
		if ((rp->head = job->next) == NULL)
			rp->tail = NULL;
		job->next = NULL;
		rp->queued--;
		rp->running++;
		p->busy++;
		stop = p->stopping;	/* under lock, as pool.c's struct says */
		ws->cur = job;
		ws->since = token_now_ns();
		job->tries++;
		/* Replicas: run on a copy the watchdog never takes away. */
		run = ws->scratch != NULL ? ws->scratch : job;
		if (run != job)
			pool_copy_in(run, job);
		pthread_mutex_unlock(&p->lock);

		if (stop || atomic_load(&job->cancelled))
			run->status = POOL_E_CANCELLED;
		else if (job->deadline != 0 && token_now_ns() >= job->deadline)
			run->status = POOL_E_DEADLINE;
		else
			run_job(w, run);

		pthread_mutex_lock(&p->lock);
		rp->running--;
		p->busy--;
		if (ws->cur != job) {
			/* The watchdog gave the job to another replica. */
			p->abandoned--;
			OPENSSL_cleanse(run->in, run->in_len);
			OPENSSL_cleanse(run->out, run->out_len);
			continue;
		}
		ws->cur = NULL;
		if (run != job)
			pool_copy_out(job, run);
		fin = pool_finish_locked(p, ws->rep, job);
		if (fin == FIN_FEED) {
			more = pool_queued_locked(p) > 0;
			pthread_mutex_unlock(&p->lock);
			p->feed.finish(p->feed.ctx, job, more);
			pthread_mutex_lock(&p->lock);
			continue;
		}
		pthread_mutex_unlock(&p->lock);
		/*
		 * Only the job that makes the list non-empty wakes the loop:
		 * the others are taken with it by the pool_reap that wake-up
		 * brings (it empties the list after reading the eventfd).
		 * A full counter cannot happen: the loop drains it.
		 */
		if (fin == FIN_WAKE)
			(void)!write(p->efd, &one, sizeof(one));
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int
pool_new(struct keyring *kr, unsigned nworkers, unsigned max_queued,
    struct pool **out, char *err, size_t errlen)
{
	struct pool_replicas cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.krs[0] = kr;
	cfg.workers[0] = nworkers;
	cfg.n = 1;
	cfg.max_queued = max_queued;
	return pool_new_replicas(&cfg, out, err, errlen);
}

int
pool_new_replicas(const struct pool_replicas *cfg, struct pool **out,
    char *err, size_t errlen)
{
	struct pool *p;
	struct worker_arg *wa;
	unsigned i, r, k, nworkers = 0, max_queued = cfg->max_queued;
	int rc, ret = KEYRING_E_NOMEM;

	*out = NULL;
	if (cfg->n < 1 || cfg->n > POOL_MAX_REPLICAS) {
		snprintf(err, errlen, "%u replicas: 1 to %d are possible",
		    cfg->n, POOL_MAX_REPLICAS);
		return KEYRING_E_CONFIG;
	}
	for (r = 0; r < cfg->n; r++)
		nworkers += cfg->workers[r] > 0 ? cfg->workers[r] : 1;
	if (max_queued < nworkers)
		max_queued = nworkers;
	if ((p = calloc(1, sizeof(*p))) == NULL)
		goto fail_msg;
	atomic_init(&p->queued, 0);
	atomic_init(&p->spin_stop, 0);
	p->kr = cfg->krs[0];
	p->nrep = cfg->n;
	p->policy = cfg->policy;
	p->max_queued = max_queued;
	p->nworkers = nworkers;
	p->efd = -1;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wd_cond, NULL);
	for (r = 0; r < cfg->n; r++) {
		p->rep[r].kr = cfg->krs[r];
		p->rep[r].nworkers = cfg->workers[r] > 0 ? cfg->workers[r] : 1;
		atomic_init(&p->rep[r].up, 1);
		pthread_cond_init(&p->rep[r].cond, NULL);
	}
	if ((p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1)
		goto fail_msg;
	if ((p->threads = calloc(nworkers, sizeof(*p->threads))) == NULL ||
	    (p->workers = calloc(nworkers, sizeof(*p->workers))) == NULL)
		goto fail_msg;
	/* Open every session first, so a token refusal fails start-up. */
	for (r = 0, i = 0; r < cfg->n; r++) {
		for (k = 0; k < p->rep[r].nworkers; k++, i++) {
			p->workers[i].rep = r;
			if (cfg->n > 1 && (p->workers[i].scratch =
			    pool_job_new(POOL_SEAL)) == NULL)
				goto fail_msg;
			if ((rc = keyring_worker_new(cfg->krs[r],
			    &p->workers[i].kw)) != KEYRING_OK) {
				if (cfg->n > 1)
					snprintf(err, errlen, "replica %u: "
					    "cannot open token session %u of "
					    "%u: %s (lower --workers if the "
					    "token limits sessions)", r + 1,
					    k + 1, p->rep[r].nworkers,
					    keyring_strerror(rc));
				else
					snprintf(err, errlen, "cannot open "
					    "token session %u of %u: %s "
					    "(lower --workers if the token "
					    "limits sessions)", k + 1,
					    nworkers, keyring_strerror(rc));
				ret = rc;
				goto fail;
			}
		}
	}
	for (i = 0; i < nworkers; i++) {
		if ((wa = malloc(sizeof(*wa))) == NULL)
			goto fail_msg;
		wa->p = p;
		wa->idx = i;
		if ((rc = pthread_create(&p->threads[i], NULL, worker_main,
		    wa)) != 0) {
			free(wa);
			snprintf(err, errlen, "cannot start worker thread: %s",
			    strerror(rc));
			goto fail;
		}
		p->nthreads++;
	}
	if (cfg->n > 1 && cfg->hang_ms > 0) {
		p->hang_ns = (uint64_t)cfg->hang_ms * 1000000ull;
		if ((rc = pthread_create(&p->watchdog, NULL, pool_watchdog_main,
		    p)) != 0) {
			snprintf(err, errlen, "cannot start the watchdog "
			    "thread: %s", strerror(rc));
			goto fail;
		}
		p->watchdog_on = 1;
	}
	*out = p;
	return KEYRING_OK;

 fail_msg:
	snprintf(err, errlen, "out of memory starting the token worker pool");
 fail:
	pool_free(p);
	return ret;
}

void
pool_free(struct pool *p)
{
	struct pool_job *job, *next;
	unsigned i, r;

	if (p == NULL)
		return;
	atomic_store(&p->spin_stop, 1);
	pthread_mutex_lock(&p->lock);
	p->stopping = 1;
	for (r = 0; r < p->nrep; r++)
		pthread_cond_broadcast(&p->rep[r].cond);
	pthread_cond_broadcast(&p->wd_cond);
	pthread_mutex_unlock(&p->lock);
	if (p->watchdog_on)
		pthread_join(p->watchdog, NULL);
	for (i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	/* Workers drained the queues as cancelled; hand everything back. */
	for (r = 0; r < p->nrep; r++) {
		for (job = p->rep[r].head; job != NULL; job = next) {
			next = job->next;
			job->status = POOL_E_CANCELLED;
			if (p->feed.finish != NULL)
				p->feed.finish(p->feed.ctx, job, 0);
			else
				job->done(job);
		}
		p->rep[r].head = p->rep[r].tail = NULL;
	}
	pool_reap(p);
	for (i = 0; p->workers != NULL && i < p->nworkers; i++) {
		keyring_worker_free(p->workers[i].kw);
		pool_job_free(p->workers[i].scratch);
	}
	free(p->workers);
	free(p->threads);
	if (p->efd != -1)
		close(p->efd);
	for (r = 0; r < p->nrep; r++)
		pthread_cond_destroy(&p->rep[r].cond);
	pthread_cond_destroy(&p->wd_cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

void
pool_set_feed(struct pool *p, const struct pool_feed *feed)
{
	pthread_mutex_lock(&p->lock);
	p->feed = *feed;
	pool_wake_all_locked(p);		/* one of them starts reading */
	pthread_mutex_unlock(&p->lock);
}

void
pool_set_spin(struct pool *p, uint64_t ns)
{
	pthread_mutex_lock(&p->lock);
	p->spin.ns = ns;
	pool_wake_all_locked(p);	/* idle workers look at it now */
	pthread_mutex_unlock(&p->lock);
}

void
pool_spin_counts(struct pool *p, uint64_t *spins, uint64_t *misses)
{
	pthread_mutex_lock(&p->lock);
	*spins = p->spin.spins;
	*misses = p->spin.misses;
	pthread_mutex_unlock(&p->lock);
}

void
pool_feed_push(struct pool *p, struct pool_job *head, unsigned n)
{
	struct pool_job *job, *next;
	unsigned i;
	int r;

	if (head == NULL || n == 0)
		return;
	pthread_mutex_lock(&p->lock);
	p->inflight += n;
	/*
	 * The filler takes one job itself; one wake-up for each other job.
	 * With reader_handoff one more: the last one woken finds the queue
	 * empty and reads next while the filler's job runs (a hardware token,
	 * whose workers wait on the device). Without it the filler reads
	 * again when its job is done: a software token computes on our
	 * cores, and a worker woken only to read would take the core the
	 * answer needs (measured: a lone request then ran 2-3x slower).
	 * Replicas: one wake-up per job on the replica it goes to
	 * (pool_enqueue_locked), since the filler may not serve that one.
	 */
	for (job = head, i = 0; job != NULL; job = next, i++) {
		next = job->next;
		if (job->replica >= (int)p->nrep)
			job->replica = -1;
		r = p->nrep == 1 ? 0 : job->replica >= 0 ? job->replica :
		    pool_pick_locked(p, -1);
		job->tries = 0;
		job->ran_on = job->failed_on = -1;
		pool_enqueue_locked(p, (unsigned)r, job, 0,
		    p->nrep > 1 || i > 0 || p->feed.reader_handoff);
	}
	pthread_mutex_unlock(&p->lock);
}

int
pool_submit(struct pool *p, struct pool_job *job)
{
	int r;

	pthread_mutex_lock(&p->lock);
	if (p->inflight >= p->max_queued || p->stopping) {
		pthread_mutex_unlock(&p->lock);
		return POOL_E_BUSY;
	}
	if (job->replica >= (int)p->nrep)
		job->replica = -1;
	r = p->nrep == 1 ? 0 : job->replica >= 0 ? job->replica :
	    pool_pick_locked(p, -1);
	p->inflight++;
	job->tries = 0;
	job->ran_on = job->failed_on = -1;
	pool_enqueue_locked(p, (unsigned)r, job, 0, 1);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

int
pool_fd(const struct pool *p)
{
	return p->efd;
}

size_t
pool_reap_some(struct pool *p, size_t max)
{
	struct pool_job *list, *job, *prev = NULL, *first, *newest;
	uint64_t v, one = 1;
	size_t n, left;

	(void)!read(p->efd, &v, sizeof(v));
	pthread_mutex_lock(&p->lock);
	list = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->lock);
	/*
	 * Reverse to finishing order, so replies keep their order, and queue
	 * behind what an earlier call left; the newest job ends up last.
	 */
	newest = list;
	while (list != NULL) {
		job = list;
		list = job->next;
		job->next = prev;
		prev = job;
		p->rcount++;
	}
	if (prev != NULL) {
		if (p->rtail != NULL)
			p->rtail->next = prev;
		else
			p->rhead = prev;
		p->rtail = newest;
	}
	/* Detach at most max jobs, then run their callbacks. */
	first = max > 0 ? p->rhead : NULL;
	for (n = 0, job = NULL; n < max && p->rhead != NULL; n++) {
		job = p->rhead;
		p->rhead = job->next;
	}
	if (job != NULL)
		job->next = NULL;
	if (p->rhead == NULL)
		p->rtail = NULL;
	if (n > 0) {
		pthread_mutex_lock(&p->lock);
		p->inflight -= (unsigned)n;
		pthread_mutex_unlock(&p->lock);
	}
	left = p->rcount -= n;
	/*
	 * Jobs left over: keep the eventfd readable so the loop comes back
	 * for them after it has looked at its other events.
	 */
	if (left > 0)
		(void)!write(p->efd, &one, sizeof(one));
	while ((job = first) != NULL) {
		first = job->next;
		job->next = NULL;
		job->done(job);		/* may free job */
	}
	return left;
}

void
pool_reap(struct pool *p)
{
	while (pool_reap_some(p, SIZE_MAX) > 0)
		;
}

unsigned
pool_workers(const struct pool *p)
{
	return p->nworkers;
}

unsigned
pool_busy(struct pool *p)
{
	unsigned n;

	pthread_mutex_lock(&p->lock);
	n = p->busy;
	pthread_mutex_unlock(&p->lock);
	return n;
}

unsigned
pool_inflight(struct pool *p)
{
	unsigned n;

	pthread_mutex_lock(&p->lock);
	n = p->inflight + p->abandoned;
	pthread_mutex_unlock(&p->lock);
	return n;
}

unsigned
pool_finished(struct pool *p)
{
	const struct pool_job *j;
	unsigned n = 0;

	pthread_mutex_lock(&p->lock);
	for (j = p->done; j != NULL; j = j->next)
		n++;
	pthread_mutex_unlock(&p->lock);
	return n;
}
