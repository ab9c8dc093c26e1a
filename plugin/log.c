#include "plugin/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int log_level = LOG_INFO;

static const char *const names[] = { "error", "warn", "info", "debug" };

int
log_level_parse(const char *s)
{
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(s, names[i]) == 0)
			return (int)i;
	return -1;
}

void
log_msg(int level, const char *fmt, ...)
{
	char line[1024], ts[32];
	struct timespec now;
	struct tm tm;
	va_list ap;
	size_t i;
	int n;

	if (level > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	/* One event, one line: a newline in a message would forge a record. */
	for (i = 0; line[i] != '\0'; i++)
		if (line[i] == '\n' || line[i] == '\r' || line[i] == '"')
			line[i] = line[i] == '"' ? '\'' : ' ';
	/* Single write per line so threads do not interleave. */
	fprintf(stderr, "ts=%s.%03ldZ level=%s msg=\"%s\"\n", ts,
	    now.tv_nsec / 1000000, names[level], line);
}
