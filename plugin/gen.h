/*
 * gen: a generation of the daemon's token state: the config it came from,
 * the keyring it loaded and the worker pool on it. Start-up builds the
 * first one; a reload (SIGHUP) or a token recovery builds the next one on a
 * helper thread, so a slow token never stalls the loop, and the daemon
 * swaps it in whole. The old generation is retired: calls already queued on
 * it finish there, and it is freed once its pool is empty.
 */
#ifndef P11KMS_GEN_H
#define P11KMS_GEN_H

#include <pthread.h>

#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "plugin/config.h"
#include "plugin/loop.h"
#include "plugin/tokproc.h"

/* Default worker count on a hardware slot: 4 per CPU, 8 to 64. */
#define GEN_HW_WORKERS_PER_CPU	4
#define GEN_HW_WORKERS_MIN	8
#define GEN_HW_WORKERS_MAX	64
#define GEN_WORKERS_FROM_MAX	96	/* gen_choose_workers' from */

/*
 * CPUs a cgroup v2 "cpu.max" text ("QUOTA PERIOD" or "max PERIOD") allows,
 * rounded up; 0 when it sets no limit or does not parse.
 */
long gen_cpus_from_cpu_max(const char *text);
/*
 * CPUs this process may use: its affinity mask, lowered by the CPU quota of
 * its cgroup and every cgroup above it (cgroup v2). At least 1.
 */
long gen_usable_cpus(void);

/*
 * Busy-poll budgets (pkcs11/spin.h, --busy-poll): the front waiting for
 * the token's answers (main.c's spin_want says when), and the token side
 * waiting for the next request. A software token's seal or open plus the hop takes
 * 10-40 us here, and the next request of a client that waits for each
 * answer comes 20-60 us after it.
 */
#define GEN_SPIN_ANSWER_NS	50000
#define GEN_SPIN_REQUEST_NS	100000
/* budget, or 0 under --busy-poll off or with fewer than 2 usable CPUs
 * (a spinning thread would hold the only core the answer needs). */
uint64_t gen_spin_ns(const struct config *cfg, uint64_t budget);

struct gen {
	struct config cfg;		/* owned (config_free) */
	struct keyring *kr;
	struct pool *pool;
	unsigned workers, inflight;
	char workers_from[GEN_WORKERS_FROM_MAX];	/* for the log */
	struct loop_watch watch;	/* the pool's eventfd */
	struct gen *next;		/* retired list */
	/*
	 * --token-process=on (in the front): kr and pool are NULL, the
	 * keyring and pool live in this token process, and the gen_key_*
	 * answers come from the metadata it sent.
	 */
	struct tokproc *tp;
};

/*
 * Builds a generation from cfg, taking ownership of cfg whatever happens.
 * Returns KEYRING_OK, or a keyring status with a message in err.
 */
int gen_open(struct config *cfg, struct gen **out, char *err, size_t errlen);
/*
 * gen_open on a helper thread while this one watches sigfd (a signalfd of
 * SIGTERM, SIGINT and SIGHUP, blocked in every thread): a SIGTERM or
 * SIGINT while the module hangs (C_Initialize, C_Login...) logs a line and
 * ends the process at once with status 0 (_exit: a module with a thread
 * inside cannot be finalized); SIGHUP is logged and dropped. Otherwise as
 * gen_open.
 */
int gen_open_or_signal(struct config *cfg, int sigfd, struct gen **out,
    char *err, size_t errlen);
/* Stops the pool (running its pending done callbacks), frees it all. */
void gen_free(struct gen *g);

/*
 * How many workers (token sessions) a generation gets. requested is
 * --workers (0: not given) and wins. Otherwise a hardware slot, where a
 * worker mostly waits on the device, gets GEN_HW_WORKERS_PER_CPU per CPU,
 * GEN_HW_WORKERS_MIN to GEN_HW_WORKERS_MAX; a software slot, which computes
 * on our CPUs, gets one per CPU. ncpu < 1 counts as 1. Any count is cut to
 * max_sessions - 1 when the token has a limit (max_sessions > 1): the
 * keyring holds one session itself. *capped is 1 when that cut applied.
 * from (fromlen bytes, GEN_WORKERS_FROM_MAX is enough) receives how the
 * count was chosen, for the start-up log: "hardware slot: 4 x 2 CPUs, at
 * least 8; token allows 6 sessions".
 */
unsigned gen_choose_workers(unsigned requested, long ncpu, int hw_slot,
    unsigned long max_sessions, int *capped, char *from, size_t fromlen);

/*
 * Loads a generation from argv on a helper thread; when it is done, the
 * loop calls done(arg, gen, status, err) on the loop thread, handing over
 * gen (NULL on failure). One load at a time.
 */
typedef void (*gen_loaded_cb)(void *arg, struct gen *g, int status,
    const char *err);

struct gen_loader {
	struct loop *loop;
	struct loop_watch watch;	/* eventfd: the thread finished */
	pthread_t thread;
	int running;
	int argc;
	char **argv;
	gen_loaded_cb done;
	void *arg;
	struct gen *result;		/* written by the thread */
	int status;
	char err[512];
};

int gen_loader_init(struct gen_loader *ld, struct loop *l, int argc,
    char **argv, gen_loaded_cb done, void *arg);
/* Starts a load; -1 if one is already running. */
int gen_loader_start(struct gen_loader *ld);
/* Waits for a running load and discards its result. */
void gen_loader_fini(struct gen_loader *ld);
/*
 * Waits at most max_s seconds for a running load; 0 when none runs any
 * more (its result discarded, as gen_loader_fini), -1 when it is still
 * inside the token (then the caller must not finalize modules: _exit).
 */
int gen_loader_wait(struct gen_loader *ld, unsigned max_s);

/* ---- one view of both modes (gen_view.c) ---- */

/*
 * The front (--token-process=on, spawner started): from now on gen_open
 * starts a token process instead of loading the keyring here, and a
 * reload takes its settings from that process (the sandboxed front
 * cannot read the config file). Set once at start.
 */
void gen_set_remote(int on);
int gen_remote(void);
/*
 * gen_open's remote half: starts g's token process. A g->cfg with no keys
 * (a reload in the front) is filled from the settings the process sent.
 */
int gen_open_tokproc(struct gen *g, char *err, size_t errlen);

/*
 * What plugin/ asks of keyring.h and pool.h, for either kind of
 * generation (g may be NULL: none serving). Loop thread.
 */
size_t gen_nkeys(const struct gen *g);
const char *gen_key_id(const struct gen *g, size_t i);
const char *gen_primary_key_id(const struct gen *g);
const char *gen_key_desc(const struct gen *g, size_t i);
const char *gen_key_mechanism(const struct gen *g, size_t i);
const char *gen_key_seal_detail(const struct gen *g, size_t i);
int gen_key_token(const struct gen *g, size_t i, char *label,
    char *serial);
/* As keyring_envelope_info (pure header parsing, no token call). */
int gen_envelope_info(const struct gen *g, const uint8_t *ct, size_t ctlen,
    const char **mech, char *key_id);
/* As pool_submit; KEYRING_E_TOKEN when the token process is gone. */
int gen_submit(struct gen *g, struct pool_job *job);
unsigned gen_workers(const struct gen *g);
unsigned gen_inflight(const struct gen *g);
unsigned gen_busy(const struct gen *g);
/*
 * Watches the pool's eventfd (off: done(g, events) reaps the finished
 * jobs) or the token process's socket (on: dead(arg, why) runs once when
 * the process is lost; token calls it reports go to the metrics).
 */
int gen_watch(struct gen *g, struct loop *l, loop_io_cb done,
    tokproc_dead_cb dead, void *arg);
void gen_unwatch(struct gen *g, struct loop *l);

#endif
