/*
 * log: one line per event on stderr, logfmt ("ts=… level=… msg=…").
 * Never pass a PIN, plaintext, DEK or key handle value; print strings that
 * come from a peer bounded (%.100s).
 */
#ifndef P11KMS_LOG_H
#define P11KMS_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern int log_level;

/* Parses "error|warn|info|debug"; -1 when unknown. */
int log_level_parse(const char *s);
void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...)	log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)	log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)	log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)	do { if (log_level >= LOG_DEBUG) \
				log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
