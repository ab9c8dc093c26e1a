/*
 * log: one line per event on stderr, as logfmt (the default)
 *   ts=2024-05-01T10:00:00.123Z level=info msg="serving" socket=/run/p11kms/kms.sock
 * or JSON (--log-format json)
 *   {"ts":"2024-05-01T10:00:00.123Z","level":"info","msg":"serving","socket":"/run/p11kms/kms.sock"}
 *
 * Every line is written with one write(2) of at most LOG_LINE_MAX bytes
 * (PIPE_BUF), so lines from different threads never interleave on a pipe.
 * Strings are escaped, never trusted: quotes, backslashes, newlines and
 * every other control character (C0, DEL, C1) come out as \" \\ \n \u001b…,
 * bidi controls and U+2028/U+2029 as \u202e…, invalid UTF-8 as \ufffd, so
 * no message can forge a second record, reach a terminal as an escape
 * sequence or show other text than it holds. An over-long line is cut at an
 * escape boundary and marked truncated=true.
 *
 * Never pass a PIN, plaintext, DEK or key handle value; print strings that
 * come from a peer bounded (%.100s).
 *
 * log_level and log_format are set at start-up and again by a reload (on
 * the loop thread, while the ops thread and the workers log): log_level is
 * _Atomic; write log_format with __atomic_store_n; the logger reads both
 * atomically.
 */
#ifndef P11KMS_LOG_H
#define P11KMS_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_FORMAT_LOGFMT = 0, LOG_FORMAT_JSON };

#define LOG_LINE_MAX	4096	/* bytes per line, newline included */
#define LOG_KV_MAX	24	/* key/value pairs per log_kv line */

extern _Atomic int log_level;
extern int log_format;
/* Where lines go: stderr unless a test points it elsewhere. */
extern int log_fd;

/* Parses "error|warn|info|debug"; -1 when unknown. */
int log_level_parse(const char *s);
/* "error".."debug" for a level; "?" when out of range. */
const char *log_level_name(int level);
/* Parses "logfmt|json"; -1 when unknown. */
int log_format_parse(const char *s);

void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/*
 * A line with a fixed message and fields: key, value, key, value, …, NULL.
 * Keys are code constants ([A-Za-z0-9_.-], other bytes become '_'); values
 * are any strings (NULL prints as empty) and are escaped like messages.
 * A key written with a leading '#' ("#workers") holds a number: JSON gets
 * it bare ("workers":4) when it is a valid JSON number, quoted otherwise;
 * logfmt drops the '#'.
 * Pairs beyond LOG_KV_MAX are dropped and the line marked truncated.
 *   log_kv(LOG_WARN, "request failed", "method", "Encrypt",
 *       "code", "INVALID_ARGUMENT", NULL);
 */
void log_kv(int level, const char *msg, ...) __attribute__((sentinel));
/*
 * log_kv with one more field first whose value has a length: key = the
 * len bytes at val, NUL bytes included (escaped \u0000 like every other
 * control byte), for a peer's string such as a KMS request uid, which a
 * C string would cut at its first NUL. Then the NULL-terminated pairs.
 */
void log_kv_bytes(int level, const char *msg, const char *key,
    const void *val, size_t len, ...) __attribute__((sentinel));

#define log_error(...)	log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)	log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)	log_msg(LOG_INFO, __VA_ARGS__)
/*
 * A lines-per-second limiter for a log line that may repeat in bulk (one
 * per failed request while the token is down). Not thread-safe: each
 * limiter belongs to one thread. Times are CLOCK_MONOTONIC nanoseconds.
 *   log_ratelim_init(&rl, 50);
 *   if ((n = log_ratelim_take_dropped(&rl, now)) > 0) log_warn("%u …", n);
 *   if (log_ratelim_allow(&rl, now)) log_kv(…);
 */
struct log_ratelim {
	uint64_t window;		/* start of the current second */
	unsigned per_s;			/* lines allowed a second */
	unsigned taken, dropped;	/* in the current window */
	unsigned report;		/* dropped in a finished window */
};

void log_ratelim_init(struct log_ratelim *rl, unsigned per_s);
/* 1 when one more line fits in the second now falls in; else counts it. */
int log_ratelim_allow(struct log_ratelim *rl, uint64_t now);
/* Lines refused in windows that are over, once (then 0 until more are). */
unsigned log_ratelim_take_dropped(struct log_ratelim *rl, uint64_t now);

#define log_debug(...)	do { if (__atomic_load_n(&log_level, \
				__ATOMIC_RELAXED) >= LOG_DEBUG) \
				log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
