/*
 * pool_replica: the replica half of the pool (pool.h, pool_int.h): which
 * replica a job goes to (least-busy or primary-first among the healthy
 * ones), what a token or session fault does (the replica goes down, its
 * queue moves to the others, the job runs once more elsewhere), and the
 * watchdog that takes a job away from a call hung in its token. The
 * worker runs on a private copy of a job (pool_copy_in/out), so a job
 * taken from it can go on while the call is still inside the token.
 */
#include "pkcs11/pool_int.h"
#include "pkcs11/token.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* Jobs per worker on replica r, in thousandths, for comparing. */
static unsigned long
load_of(const struct pool *p, unsigned r)
{
	const struct replica *rp = &p->rep[r];

	return (unsigned long)(rp->queued + rp->running) * 1000ul /
	    (rp->nworkers > 0 ? rp->nworkers : 1);
}

/*
 * The replica for a job that may go anywhere but `not` (-1: none
 * excluded): a healthy one by the policy, else (none healthy) the least
 * busy of the others, else -1. Ties rotate, so idle replicas share.
 */
int
pool_pick_locked(struct pool *p, int not)
{
	unsigned k, r;
	unsigned long l, best_l = 0;
	int best = -1, pass;

	for (pass = 0; pass < 2 && best < 0; pass++) {
		for (k = 0; k < p->nrep; k++) {
			r = p->policy == POOL_PRIMARY_FIRST ? k :
			    (p->rr + k) % p->nrep;
			if ((int)r == not || (pass == 0 &&
			    !atomic_load(&p->rep[r].up)))
				continue;
			if (p->policy == POOL_PRIMARY_FIRST && pass == 0) {
				best = (int)r;
				break;
			}
			l = load_of(p, r);
			if (best < 0 || l < best_l) {
				best = (int)r;
				best_l = l;
			}
		}
	}
	p->rr++;
	return best;
}

void
pool_enqueue_locked(struct pool *p, unsigned r, struct pool_job *job,
    int front, int wake)
{
	struct replica *rp = &p->rep[r];

	if (front && rp->head != NULL) {
		job->next = rp->head;
		rp->head = job;
	} else {
		job->next = NULL;
		if (rp->tail != NULL)
			rp->tail->next = job;
		else
			rp->head = job;
		rp->tail = job;
	}
	rp->queued++;
	atomic_fetch_add_explicit(&p->queued, 1, memory_order_relaxed);
	/* A spinning worker of this replica takes it without a wake-up. */
	if (wake && (!p->spinning || p->spin_rep != (int)r))
		pthread_cond_signal(&rp->cond);
}

/*
 * Replica r failed (a token or session fault, or a hang): no more jobs
 * for it, and what waits in its queue, but probes aimed at it, goes to
 * the others. Only with replicas: one token has no other to go to.
 */
static void
mark_down_locked(struct pool *p, unsigned r)
{
	struct replica *rp = &p->rep[r];
	struct pool_job *job, *keep = NULL, **kt = &keep, *next;
	int t;

	if (p->nrep < 2 || !atomic_load(&rp->up))
		return;
	atomic_store(&rp->up, 0);
	for (job = rp->head; job != NULL; job = next) {
		next = job->next;
		job->next = NULL;
		if (job->replica < 0 && (t = pool_pick_locked(p, (int)r)) >= 0 &&
		    atomic_load(&p->rep[t].up)) {
			rp->queued--;
			atomic_fetch_sub_explicit(&p->queued, 1,
			    memory_order_relaxed);
			pool_enqueue_locked(p, (unsigned)t, job, 0, 1);
		} else {
			*kt = job;
			kt = &job->next;
		}
	}
	rp->head = keep;
	rp->tail = NULL;
	for (job = keep; job != NULL; job = job->next)
		rp->tail = job;
}

static int
retry_status(int status)
{
	return status == KEYRING_E_TOKEN || status == KEYRING_E_SESSION;
}

/* Jobs waiting in every queue. */
unsigned
pool_queued_locked(const struct pool *p)
{
	unsigned r, n = 0;

	for (r = 0; r < p->nrep; r++)
		n += p->rep[r].queued;
	return n;
}

void
pool_wake_all_locked(struct pool *p)
{
	unsigned r;

	for (r = 0; r < p->nrep; r++)
		pthread_cond_broadcast(&p->rep[r].cond);
}

/* A job ran on replica r (or was taken from its hung call): FIN_*. */
int
pool_finish_locked(struct pool *p, unsigned r, struct pool_job *job)
{
	int t, wake;

	job->ran_on = (int)r;
	if (p->nrep > 1 && retry_status(job->status)) {
		mark_down_locked(p, r);
		if (job->replica < 0 && job->tries < 2 &&
		    (t = pool_pick_locked(p, (int)r)) >= 0) {
			job->failed_on = (int)r;
			job->status = KEYRING_OK;
			job->out_len = 0;
			/* Ahead of the others: it has waited once already. */
			pool_enqueue_locked(p, (unsigned)t, job, 1, 1);
			return FIN_REQUEUED;
		}
	} else if (p->nrep > 1 && job->op == POOL_PROBE &&
	    job->status == KEYRING_OK && job->replica == (int)r) {
		atomic_store(&p->rep[r].up, 1);
	}
	if (p->feed.finish != NULL) {
		p->inflight--;
		return FIN_FEED;
	}
	job->next = p->done;
	wake = p->done == NULL;
	p->done = job;
	return wake ? FIN_WAKE : FIN_DONE;
}

/* Copies what a worker reads of a job (replicas: it runs on a copy). */
void
pool_copy_in(struct pool_job *dst, const struct pool_job *src)
{
	dst->op = src->op;
	dst->deadline = src->deadline;
	memcpy(dst->in, src->in, src->in_len);
	dst->in_len = src->in_len;
	memcpy(dst->key_id, src->key_id, sizeof(dst->key_id));
	dst->status = KEYRING_OK;
	dst->out_len = 0;
	dst->key_id_out[0] = '\0';
	dst->detail[0] = '\0';
}

void
pool_copy_out(struct pool_job *dst, struct pool_job *src)
{
	dst->status = src->status;
	memcpy(dst->out, src->out, src->out_len);
	dst->out_len = src->out_len;
	memcpy(dst->key_id_out, src->key_id_out, sizeof(dst->key_id_out));
	/* A retried job keeps the first replica's words unless this one
	 * failed too. */
	if (src->detail[0] != '\0' || dst->failed_on < 0)
		memcpy(dst->detail, src->detail, sizeof(dst->detail));
	if (dst->started == 0)
		dst->started = src->started;
	dst->finished = src->finished;
	OPENSSL_cleanse(src->in, src->in_len);
	OPENSSL_cleanse(src->out, src->out_len);
	src->in_len = src->out_len = 0;
}

/*
 * Replicas: takes jobs away from calls hung longer than hang_ns; they run
 * again on another replica (or end with KEYRING_E_TOKEN). The worker keeps
 * its copy and drops the answer if the call ever returns.
 */
void *
pool_watchdog_main(void *arg)
{
	struct pool *p = arg;
	struct timespec ts;
	struct pool_job *job, *fed, *next;
	struct wslot *ws;
	uint64_t now, one = 1;
	unsigned i;
	int wake, fin;

	(void)pthread_setname_np(pthread_self(), "p11kms-watchdog");
	pthread_mutex_lock(&p->lock);
	while (!p->stopping) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		(void)pthread_cond_timedwait(&p->wd_cond, &p->lock, &ts);
		now = token_now_ns();
		wake = 0;
		fed = NULL;
		for (i = 0; i < p->nthreads; i++) {
			ws = &p->workers[i];
			if ((job = ws->cur) == NULL || now - ws->since <
			    p->hang_ns)
				continue;
			ws->cur = NULL;
			p->abandoned++;
			job->status = KEYRING_E_TOKEN;
			snprintf(job->detail, sizeof(job->detail), "no "
			    "answer from the token in %llu ms (hung)",
			    (unsigned long long)(p->hang_ns / 1000000));
			if (job->started == 0)
				job->started = ws->since;
			job->finished = now;
			fin = pool_finish_locked(p, ws->rep, job);
			if (fin == FIN_WAKE)
				wake = 1;
			else if (fin == FIN_FEED) {
				job->next = fed;
				fed = job;
			}
		}
		if (wake || fed != NULL) {
			pthread_mutex_unlock(&p->lock);
			if (wake)
				(void)!write(p->efd, &one, sizeof(one));
			for (job = fed; job != NULL; job = next) {
				next = job->next;
				job->next = NULL;
				p->feed.finish(p->feed.ctx, job, next != NULL);
			}
			pthread_mutex_lock(&p->lock);
		}
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

unsigned
pool_replicas(const struct pool *p)
{
	return p->nrep;
}

int
pool_replica_up(struct pool *p, unsigned r)
{
	return r < p->nrep && atomic_load(&p->rep[r].up);
}
