/*
 * logcap: a module's stderr as rate-limited log records (see logcap.h).
 *
 * One reader thread owns the pipe's read end (non-blocking; writers keep a
 * blocking fd 2, as they expect) and an eventfd that tells it to stop. It
 * never holds a lock: the state below is written by logcap_start before
 * the thread exists and read back by logcap_stop after it is joined.
 */
#include "plugin/logcap.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "plugin/log.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SAN_REPORT_FD(fd)	__sanitizer_set_report_fd((void *)(intptr_t)(fd))
#else
#define SAN_REPORT_FD(fd)	((void)(fd))
#endif

#define NS_PER_MS	1000000ull
#define NS_PER_S	1000000000ull
#define PIPE_WANT	(1 << 20)	/* room for a burst; best effort */
#define READ_CHUNK	4096

static struct {
	int started;
	int rfd;		/* pipe read end, O_NONBLOCK */
	int stop_fd;		/* eventfd: logcap_stop wants the reader out */
	int saved_fd;		/* the original stderr */
	int moved_log;		/* log_fd was 2; now saved_fd */
	pthread_t thread;
	struct logcap_config cfg;
	/* Reader thread only, while it runs. */
	char *line;		/* cfg.line_max + 1 bytes */
	size_t len;
	int cut;		/* line reached line_max: drop to newline */
	uint64_t since;		/* when the partial line began */
	struct log_ratelim rl;
} cap = { .rfd = -1, .stop_fd = -1, .saved_fd = -1 };

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/*
 * Says how many lines the limiter refused in seconds that are over (all of
 * them with now = UINT64_MAX, at the end).
 */
static void
report_dropped(uint64_t now)
{
	unsigned n = log_ratelim_take_dropped(&cap.rl, now);
	char num[24], lim[24];

	if (n == 0)
		return;
	snprintf(num, sizeof(num), "%u", n);
	snprintf(lim, sizeof(lim), "%u", cap.cfg.lines_per_s);
	log_kv(LOG_WARN, "module stderr lines dropped", "dropped", num,
	    "limit_per_s", lim, NULL);
}

/* Logs the buffered line (cut: it was longer than line_max). */
static void
emit_line(uint64_t now, int cut)
{
	size_t i, n = cap.len;

	cap.len = 0;
	if (n > 0 && cap.line[n - 1] == '\r')
		n--;
	if (n == 0)
		return;
	if (!log_ratelim_allow(&cap.rl, now))
		return;
	report_dropped(now);
	/* A NUL would end the string early: make it an invalid byte. */
	for (i = 0; i < n; i++)
		if (cap.line[i] == '\0')
			cap.line[i] = (char)0xff;
	cap.line[n] = '\0';
	log_kv(LOG_WARN, "module stderr", "line", cap.line,
	    cut ? "line_cut" : NULL, "true", NULL);
}

static void
take(const char *b, size_t n, uint64_t now)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (b[i] == '\n') {
			if (cap.cut)
				cap.cut = 0;
			else
				emit_line(now, 0);
			continue;
		}
		if (cap.cut)
			continue;
		if (cap.len == cap.cfg.line_max) {
			emit_line(now, 1);
			cap.cut = 1;
			continue;
		}
		if (cap.len == 0)
			cap.since = now;
		cap.line[cap.len++] = b[i];
	}
}

/* Reads what the pipe holds. 1 at end of file, else 0. */
static int
drain(void)
{
	char b[READ_CHUNK];
	ssize_t r;

	for (;;) {
		r = read(cap.rfd, b, sizeof(b));
		if (r > 0) {
			take(b, (size_t)r, now_ns());
			continue;
		}
		if (r == 0)
			return 1;
		if (errno == EINTR)
			continue;
		return 0;	/* EAGAIN: empty for now */
	}
}

/* Milliseconds until a, or 0 when it is past. */
static int
ms_until(uint64_t a, uint64_t now)
{
	return a <= now ? 0 : (int)((a - now + NS_PER_MS - 1) / NS_PER_MS);
}

static void *
reader(void *arg)
{
	struct pollfd p[2];
	uint64_t now, flush_ns = cap.cfg.flush_ms * NS_PER_MS;
	int timeout, t, stop = 0, eof = 0;

	(void)arg;
	p[0].fd = cap.rfd;
	p[0].events = POLLIN;
	p[1].fd = cap.stop_fd;
	p[1].events = POLLIN;
	while (!stop && !eof) {
		now = now_ns();
		timeout = -1;
		if (cap.len > 0)
			timeout = ms_until(cap.since + flush_ns, now);
		/* Wake when a second with refused lines is over, to say so. */
		if (cap.rl.dropped > 0) {
			t = ms_until(cap.rl.window + NS_PER_S, now);
			timeout = timeout < 0 || t < timeout ? t : timeout;
		}
		p[0].revents = p[1].revents = 0;
		if (poll(p, 2, timeout) < 0 && errno != EINTR)
			break;
		if (p[1].revents != 0)
			stop = 1;
		/* fd 2 is restored before stop: this drains what is left. */
		eof = drain();
		now = now_ns();
		if (cap.len > 0 && (stop || eof ||
		    now - cap.since >= flush_ns))
			emit_line(now, 0);
		report_dropped(stop || eof ? UINT64_MAX : now);
	}
	return NULL;
}

static void
cfg_defaults(struct logcap_config *c, const struct logcap_config *in)
{
	memset(c, 0, sizeof(*c));
	if (in != NULL)
		*c = *in;
	if (c->lines_per_s == 0)
		c->lines_per_s = LOGCAP_LINES_PER_S;
	if (c->flush_ms == 0)
		c->flush_ms = LOGCAP_FLUSH_MS;
	if (c->line_max == 0)
		c->line_max = LOGCAP_LINE_MAX;
}

int
logcap_start(const struct logcap_config *cfg, char *err, size_t errlen)
{
	sigset_t all, old;
	int p[2] = { -1, -1 }, saved = -1, stop_fd = -1, e;
	char *line = NULL;

	if (cap.started) {
		snprintf(err, errlen, "stderr capture already running");
		return -1;
	}
	cfg_defaults(&cap.cfg, cfg);
	if ((line = malloc(cap.cfg.line_max + 1)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if ((saved = fcntl(2, F_DUPFD_CLOEXEC, 3)) == -1 ||
	    pipe2(p, O_CLOEXEC) != 0 ||
	    (stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) == -1 ||
	    fcntl(p[0], F_SETFL, O_NONBLOCK) != 0) {
		snprintf(err, errlen, "cannot capture stderr: %s",
		    strerror(errno));
		goto fail;
	}
	(void)fcntl(p[1], F_SETPIPE_SZ, PIPE_WANT);
	cap.rfd = p[0];
	cap.stop_fd = stop_fd;
	cap.saved_fd = saved;
	cap.line = line;
	cap.len = 0;
	cap.cut = 0;
	log_ratelim_init(&cap.rl, cap.cfg.lines_per_s);
	cap.moved_log = log_fd == 2;
	if (cap.moved_log)
		log_fd = saved;
	/* No signal handling in the reader: the daemon has its signalfd. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	e = pthread_create(&cap.thread, NULL, reader, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e != 0) {
		if (cap.moved_log)
			log_fd = 2;
		snprintf(err, errlen, "cannot capture stderr: thread: %s",
		    strerror(e));
		goto fail;
	}
	/* From here, what goes to fd 2 reaches the reader. */
	if (dup2(p[1], 2) == -1) {
		e = errno;
		(void)eventfd_write(stop_fd, 1);
		pthread_join(cap.thread, NULL);
		if (cap.moved_log)
			log_fd = 2;
		snprintf(err, errlen, "cannot capture stderr: %s",
		    strerror(e));
		goto fail;
	}
	close(p[1]);
	SAN_REPORT_FD(saved);
	cap.started = 1;
	return 0;
 fail:
	free(line);
	cap.line = NULL;
	cap.rfd = cap.stop_fd = cap.saved_fd = -1;
	if (p[0] != -1)
		close(p[0]);
	if (p[1] != -1)
		close(p[1]);
	if (stop_fd != -1)
		close(stop_fd);
	if (saved != -1)
		close(saved);
	return -1;
}

void
logcap_stop(void)
{
	if (!cap.started)
		return;
	/* Writers now reach the real stderr; the pipe only drains. */
	while (dup2(cap.saved_fd, 2) == -1 && errno == EINTR)
		;
	SAN_REPORT_FD(2);
	(void)eventfd_write(cap.stop_fd, 1);
	pthread_join(cap.thread, NULL);
	if (cap.moved_log)
		log_fd = 2;
	close(cap.saved_fd);
	close(cap.rfd);
	close(cap.stop_fd);
	free(cap.line);
	cap.line = NULL;
	cap.rfd = cap.stop_fd = cap.saved_fd = -1;
	cap.started = 0;
}
