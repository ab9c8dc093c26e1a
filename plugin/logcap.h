/*
 * logcap: what a PKCS#11 module writes on the process's stderr becomes log
 * records instead of raw text between ours. Modules print there from any
 * thread (tpm2's TSS: "ERROR:esys ..."); on a shared fd 2 their lines and
 * the structured log would interleave.
 *
 * logcap_start() moves the log to a copy of fd 2 (log_fd, when it is 2) and
 * puts a pipe on fd 2. A reader thread drains the pipe at once, always, so
 * a writer never waits on the log; it splits the bytes into lines (capped
 * at line_max, the rest of an over-long line dropped; a partial last line
 * is flushed after flush_ms or at stop) and logs each as
 *   level=warn msg="module stderr" line="..."
 * escaped like every log value, at most lines_per_s a second: the lines
 * over that are counted and reported as one record
 *   level=warn msg="module stderr lines dropped" dropped=N
 * once their second is over. Sanitizer reports (SANITIZE builds) go to the
 * log's fd too, so a crash report is never left in the pipe.
 *
 * One capture per process. Call start before the module is loaded and
 * before threads that could write fd 2 start (log_level and log_format
 * set); stop after the module is finalized, from the same thread.
 */
#ifndef P11KMS_LOGCAP_H
#define P11KMS_LOGCAP_H

#include <stddef.h>

#define LOGCAP_LINES_PER_S	20
#define LOGCAP_FLUSH_MS		250
#define LOGCAP_LINE_MAX		1024

struct logcap_config {
	unsigned lines_per_s;	/* 0: LOGCAP_LINES_PER_S */
	unsigned flush_ms;	/* 0: LOGCAP_FLUSH_MS */
	size_t line_max;	/* bytes; 0: LOGCAP_LINE_MAX */
};

/*
 * Starts the capture (cfg NULL: defaults). Returns 0, or -1 with err
 * written and fd 2 and log_fd as they were.
 */
int logcap_start(const struct logcap_config *cfg, char *err, size_t errlen);
/*
 * Puts the original stderr back on fd 2 (and log_fd back to 2 if start
 * moved it), logs what the pipe still holds, partial line included, and
 * joins the reader. Does nothing when not started.
 */
void logcap_stop(void);

#endif
