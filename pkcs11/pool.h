/*
 * pool: token worker threads. Each worker owns one logged-in session
 * (keyring_worker) and runs jobs from a bounded FIFO; finished jobs are
 * handed back to the event loop through an eventfd, so the loop never
 * blocks on the token. A worker whose session fails (KEYRING_E_SESSION)
 * opens a new one and runs the job once more; if the new session fails too
 * the job says KEYRING_E_SESSION; if no session can be opened it says
 * KEYRING_E_TOKEN, for the daemon to recover the keyring.
 *
 * Replicas (pool_new_replicas): tokens holding the same keys, each with
 * workers of its own and a queue of its own. A job goes to a healthy
 * replica (pool_pick: least-busy or primary-first); one that fails there
 * with a token or session fault (KEYRING_E_TOKEN, KEYRING_E_SESSION), or
 * that hangs in the token for longer than hang_ms, marks that replica
 * down and runs once more on another: the job's failed_on names the
 * replica it left. A down replica gets no jobs but probes aimed at it
 * (job->replica); a probe that succeeds there puts it back. Outcomes a
 * request causes itself (KEYRING_E_AUTH: a tag that fails, INVALID,
 * UNKNOWN_KEY, TOOBIG) are never retried.
 *
 * Threading contract: pool_submit, pool_fd, pool_reap and pool_free are
 * called from the loop thread only. A job belongs to the pool from
 * pool_submit until pool_reap hands it to its done callback (on the loop
 * thread); the submitter must not free it meanwhile. To abandon a job (the
 * client went away or its deadline passed) call pool_job_cancel(): the
 * worker then skips it if it has not started, and done still runs.
 */
#ifndef P11KMS_POOL_H
#define P11KMS_POOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "pkcs11/keyring.h"

/* Statuses beyond enum keyring_status. */
#define POOL_E_BUSY		-100	/* queue full: try later */
#define POOL_E_DEADLINE		-101	/* deadline passed before it ran */
#define POOL_E_CANCELLED	-102	/* pool_job_cancel() before it ran */

enum pool_op {
	POOL_SEAL,	/* in = plaintext; out = envelope, key_id = sealing key */
	POOL_OPEN,	/* in = envelope, key_id = expected key ("" = any) */
	POOL_PROBE,	/* seal + open a random canary with the primary key */
};

struct pool_job;
typedef void (*pool_done_cb)(struct pool_job *job);

struct pool_job {
	/* Set by the submitter. */
	enum pool_op op;
	uint64_t deadline;		/* loop_now() clock; 0 = none */
	uint8_t in[KEYRING_MAX_CIPHERTEXT];
	size_t in_len;
	char key_id[KEYRING_KEY_ID_MAX];
	pool_done_cb done;		/* runs on the loop thread */
	void *arg;			/* the submitter's, untouched */
	void *ctx;			/* the submitter's, untouched */
	/* Replica to run on (a probe of one token), or -1: the pool picks. */
	int replica;

	/* Set by the worker. */
	int status;			/* KEYRING_OK, KEYRING_E_*, POOL_E_* */
	uint8_t out[KEYRING_MAX_CIPHERTEXT];
	size_t out_len;
	char key_id_out[KEYRING_KEY_ID_MAX];
	char detail[KEYRING_ERROR_MAX];	/* token failure, "" if none */
	int ran_on;			/* replica of the result; -1 never ran */
	/* Replica whose token or session fault (or hang) sent the job to
	 * ran_on, or -1; detail then holds that fault's words. */
	int failed_on;
	unsigned tries;			/* pool-internal: runs started */
	/*
	 * loop_now() clock; 0 = never ran. Written by the worker, readable
	 * by the loop once pool_reap hands the job back (the pool lock
	 * orders them); never poll them from another thread.
	 */
	uint64_t started, finished;

	atomic_int cancelled;
	struct pool_job *next;
};

struct pool;

/* Zeroed job; NULL on out of memory. Free with pool_job_free (wipes). */
struct pool_job *pool_job_new(enum pool_op op);
void pool_job_free(struct pool_job *job);
static inline void
pool_job_cancel(struct pool_job *job)
{
	atomic_store(&job->cancelled, 1);
}

/*
 * Starts nworkers threads, each with its own session on kr (kr must outlive
 * the pool). max_queued bounds jobs waiting or running. On failure returns a
 * keyring status and a message in err.
 */
int pool_new(struct keyring *kr, unsigned nworkers, unsigned max_queued,
    struct pool **out, char *err, size_t errlen);

#define POOL_MAX_REPLICAS	4

enum pool_policy {
	POOL_LEAST_BUSY = 0,	/* fewest jobs queued + running per worker */
	POOL_PRIMARY_FIRST,	/* the first healthy replica in order */
};

struct pool_replicas {
	struct keyring *krs[POOL_MAX_REPLICAS];	/* outlive the pool */
	unsigned workers[POOL_MAX_REPLICAS];	/* per replica, >= 1 */
	unsigned n;				/* 1..POOL_MAX_REPLICAS */
	unsigned max_queued;			/* over all replicas */
	enum pool_policy policy;
	/* n > 1: a call running longer counts as hung (0: never). */
	unsigned hang_ms;
};

/* As pool_new, with a worker set per replica (n == 1: pool_new). */
int pool_new_replicas(const struct pool_replicas *cfg, struct pool **out,
    char *err, size_t errlen);
unsigned pool_replicas(const struct pool *p);
/* 1 while replica r takes jobs (any thread). */
int pool_replica_up(struct pool *p, unsigned r);
/* Stops the workers (waiting for running jobs), then frees queued jobs
 * through their done callbacks with POOL_E_CANCELLED. */
void pool_free(struct pool *p);

/*
 * Fed mode: the workers take their input themselves instead of a loop
 * thread handing it over (the token process, where a request would
 * otherwise wake the loop thread, then a worker, then the loop again).
 * When the queue is empty one worker at a time calls fill, which blocks
 * for input (a socket read) and queues what it brings with
 * pool_feed_push; every finished job goes to finish on the worker that
 * ran it (no eventfd, no pool_reap). A job the pool drops at stop goes to
 * finish too, with POOL_E_CANCELLED.
 */
struct pool_feed {
	/*
	 * Blocks for input; 0 to be called again, -1 at its end (the
	 * workers then only finish what is queued). No pool lock is held;
	 * pool_free waits for it, so its owner must make it return
	 * (shutdown(2) of the socket it reads) before pool_free.
	 */
	int (*fill)(void *ctx, struct pool *p);
	/*
	 * A finished job, now the callee's. more: jobs are still queued, so
	 * another finish follows soon (a reply may wait to share a write).
	 */
	void (*finish)(void *ctx, struct pool_job *job, int more);
	void *ctx;
	/*
	 * 1: when fill queues jobs, one more idle worker than there are jobs
	 * besides the filler's own is woken, to read while they run (workers
	 * that wait on a device); 0: the filler reads again after its job
	 * (workers that compute on the CPUs the rest of the path needs).
	 */
	int reader_handoff;
};
/*
 * Switches p to fed mode (once, from the thread that owns p, with nothing
 * submitted). pool_submit must not be used afterwards.
 */
void pool_set_feed(struct pool *p, const struct pool_feed *feed);
/*
 * From fill: queues the n jobs chained through ->next from head (no cap:
 * the feed bounds its input) and wakes workers for them (reader_handoff).
 */
void pool_feed_push(struct pool *p, struct pool_job *head, unsigned n);

/*
 * Busy polling (pkcs11/spin.h): one idle worker at a time waits awake for
 * the next job for up to ns before it sleeps; 0 (the default) never. Not
 * for fed mode, whose feed spins on its own input.
 */
void pool_set_spin(struct pool *p, uint64_t ns);
/* The spin gate's counts: spins started, and those that ended with none. */
void pool_spin_counts(struct pool *p, uint64_t *spins, uint64_t *misses);

/* Queues job. 0, or POOL_E_BUSY when max_queued jobs are in the pool. */
int pool_submit(struct pool *p, struct pool_job *job);
/* Readable when finished jobs wait for pool_reap. */
int pool_fd(const struct pool *p);
/* Runs the done callback of every finished job. Loop thread only. */
void pool_reap(struct pool *p);
/*
 * Runs the done callbacks of at most max finished jobs, oldest first, and
 * returns how many are left; while some are, pool_fd() stays readable.
 * Bounds the loop's work per wake-up. Loop thread only.
 */
size_t pool_reap_some(struct pool *p, size_t max);

unsigned pool_workers(const struct pool *p);
/* Jobs queued or running right now (calls still hung in a token whose
 * job went elsewhere included: the pool cannot be freed under them). */
unsigned pool_inflight(struct pool *p);
/* Workers inside a token call right now (hung ones included). */
unsigned pool_busy(struct pool *p);
/*
 * Finished jobs waiting for pool_reap. Takes the pool lock, so a thread
 * other than the workers may poll it (tests); O(jobs waiting).
 */
unsigned pool_finished(struct pool *p);

#endif
