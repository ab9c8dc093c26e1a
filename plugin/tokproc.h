/*
 * tokproc: the token in its own process (--token-process=on).
 *
 * Processes:
 *   front     the daemon: loop, HTTP/2, gRPC, protobuf, ops HTTP, logging,
 *             audit. Never maps the PKCS#11 module, never opens the PIN
 *             file, never holds a key handle; sandboxed once set up.
 *   spawner   forked by the front at start, before any thread, the
 *             config's module or any peer input: it only execs token
 *             processes on request (one byte in, one fd + pid out over
 *             SCM_RIGHTS). The sandboxed front cannot fork or exec, so a
 *             reload or a respawn asks the spawner.
 *   token     `p11kms __token-process FD ARGS...`, exec'ed by the spawner
 *             (as --token-user if given): parses ARGS (the daemon's own
 *             command line: it re-reads the config file), loads the
 *             keyring and the worker pool, sends READY with the key
 *             metadata and the settings (or FAILED), then serves jobs on
 *             FD until the front closes it. One token process per
 *             generation: a reload starts a new one and the front swaps
 *             when it is READY; the old one drains and exits.
 *
 * Every process below the front has PR_SET_PDEATHSIG and also exits on
 * EOF of its socket: the front's death leaves no orphan.
 *
 * Threading: tokproc_spawn and tokproc_open run on the loader thread
 * (they block); everything else on the loop thread.
 */
#ifndef P11KMS_TOKPROC_H
#define P11KMS_TOKPROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "pkcs11/pool.h"
#include "plugin/loop.h"
#include "plugin/tokwire.h"

#define TOKPROC_ARG		"__token-process"
#define TOKPROC_READY_S		300	/* a load must answer by then */

/* ---- spawner (front side) ---- */

/*
 * Forks the spawner. argv is the daemon's command line (copied by the
 * fork); token_user NULL or a user name; audit_path NULL or the audit
 * log, the one file the spawner opens for the front (reopens after
 * SIGUSR1/SIGHUP). Call before any thread starts. Returns 0, or -1 with
 * err.
 */
int tokproc_spawner_start(int argc, char **argv, const char *token_user,
    const char *audit_path, char *err, size_t errlen);
/*
 * An audit_set_opener() function: the audit log, opened by the spawner
 * (AUDIT_OPEN_FLAGS, 0600) and passed over. path is ignored: only the
 * start-up one can be opened. The fd, or -1 with errno.
 */
int tokproc_open_audit(const char *path);
/* Closes the spawner's socket (it exits); waits for it. */
void tokproc_spawner_stop(void);
/*
 * Asks the spawner for a new token process: *fd its socket (close-on-
 * exec), *pid its pid. Returns 0, or -1 with err. Any thread.
 */
int tokproc_spawn(int *fd, pid_t *pid, char *err, size_t errlen);

/* ---- a token process, seen from the front ---- */

struct tokproc;

/*
 * Asks the spawner for a new token process and waits (at most
 * TOKPROC_READY_S) for its READY or FAILED. Returns KEYRING_OK with *out,
 * or a keyring status (the token process's own for FAILED: KEYRING_E_PIN
 * for a refused PIN) with a message in err.
 */
int tokproc_open(struct tokproc **out, char *err, size_t errlen);
/*
 * Closes the socket (the token process finalizes and exits) and hands
 * every job still in flight to its done callback with POOL_E_CANCELLED.
 */
void tokproc_free(struct tokproc *tp);
/*
 * From now on tokproc_free waits up to ms for the process to exit (its
 * module finalized, its last log lines written): at the daemon's
 * shutdown. 0 (the default): it does not wait.
 */
void tokproc_set_exit_wait(int ms);

/* Metadata and settings it sent at load (READY). */
const struct tokwire_ready *tokproc_meta(const struct tokproc *tp);
pid_t tokproc_pid(const struct tokproc *tp);

/*
 * Called once when the token process is lost (EOF, an I/O or protocol
 * error), after every job in flight got KEYRING_E_TOKEN with why as its
 * detail. Must not free tp.
 */
typedef void (*tokproc_dead_cb)(void *arg, const char *why);
/* Token calls the process reports (for metrics). */
typedef void (*tokproc_call_cb)(const char *function, unsigned long rv,
    double seconds);

/* Starts watching its socket on l. Returns 0 or -errno. */
int tokproc_attach(struct tokproc *tp, struct loop *l, tokproc_dead_cb dead,
    void *arg, tokproc_call_cb calls);
void tokproc_detach(struct tokproc *tp);

/*
 * Queues job (as pool_submit). 0, POOL_E_BUSY when max_inflight jobs are
 * out, or KEYRING_E_TOKEN when the process is gone. Requests of one loop
 * iteration go out in one write.
 */
int tokproc_submit(struct tokproc *tp, struct pool_job *job);
unsigned tokproc_inflight(const struct tokproc *tp);
unsigned tokproc_busy(const struct tokproc *tp);
int tokproc_dead(const struct tokproc *tp);

/*
 * Feeds bytes as if read from the socket (unit tests). Returns 0, or -1
 * when they made the process count as lost.
 */
int tokproc_feed(struct tokproc *tp, const uint8_t *buf, size_t len);
/* A client on an already connected socket (unit tests), owning fd. */
struct tokproc *tokproc_from_fd(int fd, const struct tokwire_ready *meta,
    unsigned max_inflight);

/* ---- the token process ---- */

/* main() of `p11kms __token-process FD ARGS...`; returns the exit code. */
int tokserve_main(int argc, char **argv);

#endif
