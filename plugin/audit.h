/*
 * audit: the audit log (--audit-log FILE). One JSON object per line
 * (JSON Lines) for every Encrypt and Decrypt the daemon finished, answered
 * or refused (and Status/Version with --audit-status), plus the log's own
 * events: open, close, lost, truncated. docs/audit.md describes each field.
 *
 * Tamper evidence: every line carries "seq" (first field, +1 per line,
 * across files and restarts) and "chain" (last field): the lowercase hex
 * SHA-256 of the previous line's chain value (32 raw bytes; 32 zero bytes
 * before the first line ever written) followed by this line's bytes up to,
 * not including, its `,"chain":"` suffix. A line is therefore
 *
 *   P ,"chain":"<64 hex>"}\n      with chain = SHA-256(prev || P)
 *
 * Every file the daemon opens starts with an "open" (or "truncated") line
 * whose "prev_chain" names the chain value before it, so one file verifies
 * alone and consecutive files verify across the rotation
 * (`p11kms audit-verify old new`). A clean stop or a reopen ends the file
 * with a "close" line, so a cut tail is seen too.
 *
 * Threads: audit_record, audit_reopen, audit_failing and audit_why are for
 * the loop thread (they take a short mutex, never block on the disk). A
 * writer thread owns the file: it writes, syncs (every batch, or at least
 * once a second), reopens, notices a file that shrank under it
 * (copytruncate) and retries a write that failed. Records wait in memory
 * (at most queue_max) while the file cannot be written; beyond that they
 * are dropped, counted (metrics, a "lost" line once writing works again)
 * and logged. Nothing a record holds is secret: no plaintext, DEK,
 * ciphertext, PIN or key handle is ever passed in.
 */
#ifndef P11KMS_AUDIT_H
#define P11KMS_AUDIT_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <sys/types.h>

#define AUDIT_QUEUE_MAX		16384	/* records held while unwritable */
#define AUDIT_UID_MAX		128	/* bytes of a request's uid kept */
#define AUDIT_RECORD_MAX	4096	/* one encoded record, bound */
#define AUDIT_CHAIN_LEN		32	/* SHA-256 */
#define AUDIT_CHAIN_HEX		(2 * AUDIT_CHAIN_LEN)
/* `,"chain":"` + 64 hex + `"}`: what a line ends with before its newline */
#define AUDIT_CHAIN_SUFFIX	(10 + AUDIT_CHAIN_HEX + 2)

enum audit_sync { AUDIT_SYNC_BATCH = 0, AUDIT_SYNC_EVERY };

struct audit_config {
	const char *path;
	enum audit_sync sync;	/* batch: fdatasync at least once a second */
	size_t queue_max;	/* 0: AUDIT_QUEUE_MAX */
};

/* One finished request. Strings may be NULL (written as ""). */
struct audit_event {
	struct timespec ts;		/* CLOCK_REALTIME at completion */
	const char *api;		/* "v2", "v1beta1" */
	const char *op;			/* "Encrypt", "Decrypt", "Status"… */
	const char *key_id;
	const char *token_label;
	const char *token_serial;
	const char *mechanism;		/* "aes-gcm"…; "" when unknown */
	const char *uid;		/* the request's uid; NULL: none (v1) */
	int peer_known;
	uid_t peer_uid;
	gid_t peer_gid;
	pid_t peer_pid;
	int code;			/* gRPC status code */
	const char *code_name;		/* "OK", "INVALID_ARGUMENT"… */
	const char *reason;		/* class: "ok", "bad-request"… */
	uint64_t latency_ns;
};

struct audit;

/*
 * Opens (creating with mode 0600, else appending to) cfg->path, continues
 * the chain from its last line when it has one, writes the "open" line and
 * starts the writer thread. Returns 0, or -1 with a message in err.
 * Start from the main thread after signals are blocked.
 */
int audit_open(const struct audit_config *cfg, struct audit **out, char *err,
    size_t errlen);
/* Writes what is queued and a "close" line, syncs, stops. NULL ok. */
void audit_close(struct audit *a);

/* Queues one record (copied). Never blocks on the disk. */
void audit_record(struct audit *a, const struct audit_event *ev);
/* Asks the writer to close the file and open the path again (rotation). */
void audit_reopen(struct audit *a);
/* How the log is opened, mode 0600; an opener must do the same. */
#define AUDIT_OPEN_FLAGS	(O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | \
				 O_NOFOLLOW)
/*
 * Opens the log through fn (the fd, or -1 with errno) instead of open():
 * the sandboxed front asks the token process spawner, which may open
 * that one path. Set once before audit_open. NULL: open().
 */
void audit_set_opener(int (*fn)(const char *path));
/*
 * 1 while the log cannot be written (a write, sync or reopen failed and
 * has not worked since), else 0. audit_why copies the reason (cap bytes).
 */
int audit_failing(const struct audit *a);
void audit_why(struct audit *a, char *why, size_t cap);
/* Records written and lost so far (for tests and logs). */
void audit_counts(struct audit *a, uint64_t *written, uint64_t *lost);

/* ---- the format, shared with audit-verify and the unit tests ---- */

/*
 * Writes s as a JSON string (with the quotes) into out, reading at most
 * max bytes of s (cut at a UTF-8 character boundary; *cut, may be NULL,
 * set to 1 when it was). Quote, backslash, C0, DEL and C1 controls, bidi
 * and other invisible format characters (U+061C, U+200B-U+200F,
 * U+2028-U+202E, U+2060-U+206F, U+FEFF) come out as \uXXXX, invalid UTF-8
 * as \ufffd. Returns the length written, or 0 when cap is too small
 * (cap >= 6 * max + 3 always suffices).
 */
size_t audit_json_string(const char *s, size_t max, char *out, size_t cap,
    int *cut);
/*
 * The body of a request record: `"ts":…` to its last field, without the
 * braces, "seq" and "chain". Returns its length, 0 when cap is too small
 * (AUDIT_RECORD_MAX always suffices).
 */
size_t audit_encode(const struct audit_event *ev, char *out, size_t cap);
/*
 * Makes the line for body with sequence number seq after chain value prev
 * (updated to this line's): `{"seq":N,` body `,"chain":"…"}\n` and a NUL.
 * Returns its length, 0 when cap is too small (body length + 120
 * suffices).
 */
size_t audit_line(uint64_t seq, const char *body, size_t len,
    uint8_t prev[AUDIT_CHAIN_LEN], char *out, size_t cap);
/* SHA-256(prev || p[0..len)) into out. */
void audit_chain(const uint8_t prev[AUDIT_CHAIN_LEN], const char *p,
    size_t len, uint8_t out[AUDIT_CHAIN_LEN]);
/* Lowercase hex of the 32 bytes (65 bytes with the NUL); parse: 0 or -1. */
void audit_hex(const uint8_t v[AUDIT_CHAIN_LEN], char *out);
int audit_unhex(const char *s, size_t len, uint8_t out[AUDIT_CHAIN_LEN]);

/*
 * `p11kms audit-verify [--live] FILE…`: checks the chain through the files
 * in order, prints counts by operation and outcome. Exit 0 intact, 1
 * broken (the first bad record named by file and line), 2 unreadable or
 * bad usage.
 */
int audit_verify_main(int argc, char **argv);
/* The same check of one stream, printing nothing (fuzzing); 0, 1 or 2. */
int audit_verify_stream(FILE *fp, int live);

#endif
