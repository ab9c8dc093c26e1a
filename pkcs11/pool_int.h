/*
 * pool_int: what pool.c (workers, queues, reaping, fed mode) and
 * pool_replica.c (where a job goes, what a fault does to it, the hung-call
 * watchdog) share. Not an API: nothing outside pkcs11/pool*.c includes it.
 * Every *_locked function must be called with the pool lock held.
 */
#ifndef P11KMS_POOL_INT_H
#define P11KMS_POOL_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "pkcs11/pool.h"
#include "pkcs11/spin.h"

struct replica {
	struct keyring *kr;
	pthread_cond_t cond;		/* its workers wait here */
	struct pool_job *head, *tail;	/* queued, FIFO; under lock */
	unsigned queued, running;	/* under lock */
	unsigned nworkers;
	atomic_int up;			/* written under lock */
};

/* One worker thread's state; cur and since under the pool lock. */
struct wslot {
	struct keyring_worker *kw;
	unsigned rep;
	struct pool_job *cur;		/* running; NULL once taken away */
	uint64_t since;
	struct pool_job *scratch;	/* replicas: the copy it runs on */
};

struct pool {
	struct keyring *kr;
	pthread_mutex_t lock;
	struct replica rep[POOL_MAX_REPLICAS];
	unsigned nrep;
	enum pool_policy policy;
	unsigned rr;			/* tie-break rotation; under lock */
	uint64_t hang_ns;		/* 0: no watchdog */
	pthread_t watchdog;
	int watchdog_on;
	pthread_cond_t wd_cond;
	unsigned abandoned;		/* hung calls whose job went on */
	struct pool_job *done;		/* finished, LIFO; under lock */
	struct pool_job *rhead, *rtail;	/* taken from done, not yet handed
					   to their callbacks; loop only */
	size_t rcount;			/* jobs from rhead to rtail */
	unsigned inflight;		/* queued + running; under lock */
	unsigned busy;			/* running; under lock */
	unsigned max_queued;
	int stopping;			/* under lock */
	int efd;
	unsigned nworkers;
	pthread_t *threads;
	struct wslot *workers;
	unsigned nthreads;		/* threads actually started */
	struct pool_feed feed;		/* fed mode; set once, under lock */
	int filling;			/* a worker is in feed.fill; lock */
	int feed_ended;			/* feed.fill said -1; under lock */
	struct spin_gate spin;		/* pool_set_spin; under lock */
	int spinning;			/* a worker spins; under lock */
	int spin_rep;			/* the spinner's replica; lock */
	atomic_uint queued;		/* jobs in the queue, for the spinner */
	atomic_int spin_stop;		/* pool_free: end a spin now */
};


/* What pool_finish_locked did with a job. */
#define FIN_REQUEUED	0	/* it runs again on another replica */
#define FIN_DONE	1	/* on the done list */
#define FIN_WAKE	2	/* on the done list, which was empty: wake */
#define FIN_FEED	3	/* fed mode: hand it to feed.finish, unlocked */

/* The replica for a job that may go anywhere but `not` (-1: none). */
int pool_pick_locked(struct pool *p, int not);
/* Queues job on replica r (front: ahead of the others); wake: signals
 * one of its workers (unless one of them spins). */
void pool_enqueue_locked(struct pool *p, unsigned r, struct pool_job *job,
    int front, int wake);
/* A job ran on replica r (or was taken from its hung call): FIN_*. */
int pool_finish_locked(struct pool *p, unsigned r, struct pool_job *job);
unsigned pool_queued_locked(const struct pool *p);
void pool_wake_all_locked(struct pool *p);
/* A worker's private copy of a job (replicas), in and back out (wiped). */
void pool_copy_in(struct pool_job *dst, const struct pool_job *src);
void pool_copy_out(struct pool_job *dst, struct pool_job *src);
/* The hung-call watchdog thread (replicas with hang_ms). */
void *pool_watchdog_main(void *arg);

#endif
