/*
 * audit: the audit log's queue, writer thread and file (audit_format.c
 * makes the bytes; audit.h has the record format and the hash chain). The
 * loop thread copies each record into the queue; one writer thread
 * (SCHED_BATCH) makes its JSON, owns the file, chains the lines, appends,
 * syncs (every record, or in batches) and reopens on SIGHUP/SIGUSR1, so
 * the loop never waits on disk. While the file cannot be written, records
 * wait in a bounded queue and the overflow is counted as lost and
 * reported in a 'lost' record.
 */
#include "plugin/audit.h"
#include "plugin/audit_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "plugin/log.h"
#include "plugin/metrics.h"

#define NS_PER_MS		1000000ull
#define BATCH_GATHER_MS		50	/* batch mode: writes at most this often */
#define SYNC_MAX_MS		1000	/* batch mode: fdatasync at least this often */
#define RETRY_MS		500	/* after a failed write, open or sync */
#define TAIL_READ		(2 * AUDIT_RECORD_MAX)
#define WHY_MAX			300
#define LOST_LOG_PER_S		1
#define DROP_MIN		(256 * 1024)	/* bytes dropped at once */

/*
 * Request records waiting for the writer, back to back: a 4-byte length,
 * then the record as audit_pack made it. Length 0 is a marker: reopen the
 * file here, in queue order. One buffer for many records: no allocation
 * per record.
 */
struct qbuf {
	char *p;
	size_t len, cap;
	size_t n;		/* records and markers */
};

#define QBUF_KEEP	(4u << 20)	/* emptied buffers above it are freed */

struct audit {
	/* Set at open, then read-only. */
	char *path;
	enum audit_sync sync;
	size_t queue_max;
	size_t wake_at;			/* batch: records that end a gather */
	pthread_t thread;
	int started;

	/* Under lock: the loop's side. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct qbuf q;
	uint64_t lost_new;		/* dropped, not yet in a "lost" line */
	int stop, reopen;
	char why[WHY_MAX];		/* while failing */
	struct log_ratelim lost_rl;	/* loop thread only */

	atomic_int failing;
	_Atomic uint64_t written, lost;

	/* Writer thread only. */
	struct qbuf wq;			/* swapped with q to take it */
	EVP_MD *md;			/* SHA-256, fetched once */
	EVP_MD_CTX *mdctx;
	int fd;
	off_t size;			/* bytes the file should hold */
	off_t uncached;			/* cache dropped below this offset */
	uint64_t seq;			/* of the last line made */
	uint8_t chain[AUDIT_CHAIN_LEN];	/* of the last line made */
	char *out;			/* lines made, not yet written */
	size_t out_len, out_off, out_cap;
	uint64_t owed;			/* request records in out */
	int dirty;			/* written since the last sync */
	uint64_t last_sync;
	int reopen_pending;		/* reopen asked, not done yet */
	int closed_old;			/* its "close" line is made */
	uint64_t err_logged;		/* last error log, to keep it rare */
};

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- the queue (loop side) ---- */

static void
set_failing(struct audit *a, const char *why)
{
	pthread_mutex_lock(&a->lock);
	snprintf(a->why, sizeof(a->why), "%s", why);
	pthread_mutex_unlock(&a->lock);
	if (!atomic_exchange(&a->failing, 1))
		log_error("audit log: %s", why);
}

static void
clear_failing(struct audit *a)
{
	if (!atomic_load(&a->failing))
		return;
	pthread_mutex_lock(&a->lock);
	a->why[0] = '\0';
	pthread_mutex_unlock(&a->lock);
	if (atomic_exchange(&a->failing, 0))
		log_info("audit log %s is written again", a->path);
}

int
audit_failing(const struct audit *a)
{
	return a != NULL && atomic_load(&a->failing);
}

void
audit_why(struct audit *a, char *why, size_t cap)
{
	pthread_mutex_lock(&a->lock);
	snprintf(why, cap, "%s", a->why[0] ? a->why : "ok");
	pthread_mutex_unlock(&a->lock);
}

void
audit_counts(struct audit *a, uint64_t *written, uint64_t *lost)
{
	*written = atomic_load(&a->written);
	*lost = atomic_load(&a->lost);
}

/* Appends one record (len 0: a reopen marker). 0, or -1 out of memory. */
static int
qbuf_put(struct qbuf *q, const char *rec, size_t len)
{
	size_t need = 4 + len, ncap;
	uint32_t n32 = (uint32_t)len;
	char *np;

	if (need > q->cap - q->len) {
		ncap = q->cap ? q->cap : 65536;
		while (ncap - q->len < need)
			ncap *= 2;
		if ((np = realloc(q->p, ncap)) == NULL)
			return -1;
		q->p = np;
		q->cap = ncap;
	}
	memcpy(q->p + q->len, &n32, 4);
	if (len > 0)
		memcpy(q->p + q->len + 4, rec, len);
	q->len += need;
	q->n++;
	return 0;
}

/* Queues rec, or drops it (counted) when the queue is full. */
static void
enqueue(struct audit *a, const char *rec, size_t len)
{
	size_t depth;
	int wake, dropped = 0;
	unsigned n;

	pthread_mutex_lock(&a->lock);
	if (len == 0 || a->q.n >= a->queue_max ||
	    qbuf_put(&a->q, rec, len) != 0) {
		a->lost_new++;
		dropped = 1;
	}
	depth = a->q.n;
	/* batch: the writer gathers for BATCH_GATHER_MS unless the queue
	 * fills up; every: it writes each record at once. */
	wake = !dropped && (a->sync == AUDIT_SYNC_EVERY ? depth == 1 :
	    depth == a->wake_at);
	if (wake)
		pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (dropped) {
		atomic_fetch_add(&a->lost, 1);
		metrics_audit_lost(1);
		if ((n = log_ratelim_take_dropped(&a->lost_rl,
		    mono_ns())) > 0)
			log_error("audit log: %u more audit records lost", n);
		if (log_ratelim_allow(&a->lost_rl, mono_ns()))
			log_error("audit log: an audit record was lost: %zu "
			    "records wait for %s (it cannot be written, or "
			    "the writer is behind)", depth, a->path);
	}
}

void
audit_record(struct audit *a, const struct audit_event *ev)
{
	char packed[AUDIT_PACK_MAX];

	if (a == NULL)
		return;
	/* A copy: the writer makes the JSON, off the loop thread. */
	enqueue(a, packed, audit_pack(ev, packed));
}

void
audit_reopen(struct audit *a)
{
	if (a == NULL)
		return;
	pthread_mutex_lock(&a->lock);
	/* A marker in the queue: records before it go to the old file. */
	if (qbuf_put(&a->q, NULL, 0) != 0)
		a->reopen = 1;		/* out of memory: at the next batch */
	pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
}

/* ---- the writer thread ---- */

/* Makes the line for body and appends it to the output. -1: no memory. */
static int
out_add(struct audit *a, const char *body, size_t len)
{
	size_t need = len + 128, ncap;
	char *np;

	if (need > a->out_cap - a->out_len) {
		ncap = a->out_cap ? a->out_cap : 65536;
		while (ncap - a->out_len < need)
			ncap *= 2;
		if ((np = realloc(a->out, ncap)) == NULL)
			return -1;
		a->out = np;
		a->out_cap = ncap;
	}
	a->out_len += audit_line_ctx(a->mdctx, a->md, a->seq + 1, body, len,
	    a->chain, a->out + a->out_len, a->out_cap - a->out_len);
	a->seq++;
	return 0;
}

/* Makes the line of a queued request record. -1: it was lost. */
static int
out_request(struct audit *a, const char *packed, size_t len)
{
	char body[AUDIT_RECORD_MAX];
	struct audit_event ev;
	size_t n;

	/* Neither fails on what audit_record queued. */
	if (audit_unpack(packed, len, &ev) != 0 ||
	    (n = audit_encode(&ev, body, sizeof(body))) == 0)
		return -1;
	return out_add(a, body, n);
}

/* A line of the log's own: type, then the fields in extra (may be ""). */
static void
out_event(struct audit *a, const char *type, const char *extra)
{
	char body[AUDIT_RECORD_MAX];
	struct timespec ts;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	if ((n = audit_encode_own(&ts, type, extra, a->chain, body,
	    sizeof(body))) > 0)
		(void)out_add(a, body, n);
}

static void
open_event(struct audit *a, const char *reason)
{
	char extra[AUDIT_RECORD_MAX];

	(void)audit_open_fields(reason, a->path, getpid(), extra,
	    sizeof(extra));
	out_event(a, "open", extra);
}

static void
error_log(struct audit *a, const char *what, int err)
{
	char why[WHY_MAX];

	snprintf(why, sizeof(why), "%s %s: %s", what, a->path, strerror(err));
	metrics_audit_write_error();
	if (!atomic_load(&a->failing) ||
	    mono_ns() - a->err_logged > 10000 * NS_PER_MS) {
		a->err_logged = mono_ns();
		if (atomic_load(&a->failing))
			log_error("audit log: %s (still failing)", why);
	}
	set_failing(a, why);
}

/*
 * Opens the path for appending. Returns the fd, or -1 with errno. The
 * mode 0600 applies when the file is created; umask only narrows it.
 */
static int (*opener)(const char *path);

void
audit_set_opener(int (*fn)(const char *path))
{
	opener = fn;
}

static int
open_path(const char *path)
{
	if (opener != NULL)
		return opener(path);
	return open(path, AUDIT_OPEN_FLAGS, 0600);
}

/*
 * Checks the file still holds what we wrote (copytruncate empties it
 * under us); if it shrank, says so in the log, the metrics and a
 * "truncated" line that starts the new content.
 */
static void
check_truncated(struct audit *a)
{
	char extra[128];
	struct stat st;

	if (fstat(a->fd, &st) != 0 || st.st_size >= a->size)
		return;
	log_warn("audit log %s shrank from %lld to %lld bytes under p11kms "
	    "(copytruncate, or someone cut it): records written in between "
	    "may be lost; rotate with create and SIGUSR1 instead",
	    a->path, (long long)a->size, (long long)st.st_size);
	metrics_audit_truncated();
	snprintf(extra, sizeof(extra), "\"expected_bytes\":%lld,"
	    "\"found_bytes\":%lld", (long long)a->size, (long long)st.st_size);
	a->size = st.st_size;
	out_event(a, "truncated", extra);
}

/* Writes the pending output. 0 when all of it is in the file. */
static int
flush_out(struct audit *a)
{
	ssize_t w;

	while (a->out_off < a->out_len) {
		w = write(a->fd, a->out + a->out_off, a->out_len - a->out_off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			error_log(a, "cannot write", w < 0 ? errno : ENOSPC);
			return -1;
		}
		a->out_off += (size_t)w;
		a->size += w;
		a->dirty = 1;
	}
	a->out_len = a->out_off = 0;
	return 0;
}

/*
 * Nothing reads the log back, so the pages a sync made clean leave the
 * page cache: the next writes reuse free pages instead of filling memory
 * with new ones (that costs the writer more than the copy itself, and
 * more still in a VM whose host backs a new page on first touch). Advice
 * only: durability is the fdatasync's; a reader (a log shipper) that lags
 * reads from the disk. Only after a sync, when the pages are clean.
 */
static void
drop_cached(struct audit *a)
{
	if (a->size < a->uncached)	/* it shrank (copytruncate) */
		a->uncached = a->size;
	if (a->size - a->uncached < DROP_MIN)
		return;
	(void)posix_fadvise(a->fd, a->uncached, a->size - a->uncached,
	    POSIX_FADV_DONTNEED);
	a->uncached = a->size;
}

static int
sync_file(struct audit *a)
{
	if (!a->dirty)
		return 0;
	if (fdatasync(a->fd) != 0) {
		error_log(a, "cannot sync", errno);
		return -1;
	}
	a->dirty = 0;
	a->last_sync = mono_ns();
	drop_cached(a);
	return 0;
}

/*
 * Rotation: a "close" line into the old file, then the path opened anew
 * with an "open" line naming the last chain value. If the path cannot be
 * opened, the old file stays in use and the reopen is retried.
 */
static void
do_reopen(struct audit *a)
{
	struct stat st;
	int fd;

	if ((fd = open_path(a->path)) == -1) {
		error_log(a, "cannot reopen", errno);
		return;
	}
	if (!a->closed_old)
		out_event(a, "close", "\"reason\":\"reopen\"");
	a->closed_old = 1;
	if (flush_out(a) != 0 || sync_file(a) != 0) {
		/* Still owed to the old file; try again later. */
		close(fd);
		return;
	}
	close(a->fd);
	a->fd = fd;
	a->size = fstat(fd, &st) == 0 ? st.st_size : 0;
	a->uncached = a->size;
	a->reopen_pending = 0;
	a->closed_old = 0;
	open_event(a, "reopen");
	log_info("audit log %s reopened", a->path);
	(void)flush_out(a);
}

static void
timed_wait(struct audit *a, uint64_t ms)
{
	struct timespec ts;
	uint64_t ns;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ns = (uint64_t)ts.tv_nsec + ms * NS_PER_MS;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	(void)pthread_cond_timedwait(&a->cond, &a->lock, &ts);
}

static void *
writer_main(void *arg)
{
	struct audit *a = arg;
	struct sched_param sp = { 0 };
	struct qbuf tmp;
	uint64_t lost, n;
	uint32_t len;
	size_t off;
	size_t depth;
	char extra[64];
	int stop, ok;

	/*
	 * No wake-up preemption for the writer: when it wakes it must not
	 * push the event loop off its CPU, which stalls every request. It
	 * keeps its fair share (SCHED_BATCH is not idle priority). Best
	 * effort: a seccomp filter may refuse it.
	 */
	(void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
	pthread_mutex_lock(&a->lock);
	for (;;) {
		stop = a->stop;
		if (a->reopen) {
			a->reopen = 0;
			a->reopen_pending = 1;
		}
		/* While output is owed, leave the queue be: it is the bound. */
		if (a->out_len == 0) {
			tmp = a->q;
			a->q = a->wq;
			a->wq = tmp;
			lost = a->lost_new;
			a->lost_new = 0;
		} else {
			lost = 0;
		}
		depth = a->q.n;
		pthread_mutex_unlock(&a->lock);
		metrics_audit_queue((unsigned)(depth + a->owed));

		/* A reopen still owed from before goes first. */
		if (a->reopen_pending)
			do_reopen(a);
		check_truncated(a);
		n = 0;
		for (off = 0; off < a->wq.len; off += 4 + len) {
			memcpy(&len, a->wq.p + off, 4);
			if (len == 0) {
				a->reopen_pending = 1;
				do_reopen(a);
			} else if (out_request(a, a->wq.p + off + 4,
			    len) == 0) {
				n++;
			} else {
				atomic_fetch_add(&a->lost, 1);
				metrics_audit_lost(1);
			}
		}
		/* The records dropped came after every one the queue held. */
		if (lost > 0) {
			snprintf(extra, sizeof(extra), "\"count\":%" PRIu64,
			    lost);
			out_event(a, "lost", extra);
		}
		a->wq.len = a->wq.n = 0;
		if (a->wq.cap > QBUF_KEEP) {	/* after a burst */
			free(a->wq.p);
			memset(&a->wq, 0, sizeof(a->wq));
		}
		if (stop && !atomic_load(&a->failing))
			out_event(a, "close", "\"reason\":\"stop\"");
		a->owed += n;
		ok = flush_out(a) == 0;
		if (ok && a->owed > 0) {
			atomic_fetch_add(&a->written, a->owed);
			metrics_audit_written(a->owed);
			a->owed = 0;
		}
		if (ok && (a->sync == AUDIT_SYNC_EVERY || stop ||
		    mono_ns() - a->last_sync >= SYNC_MAX_MS * NS_PER_MS))
			ok = sync_file(a) == 0;
		if (ok && !a->reopen_pending)
			clear_failing(a);

		pthread_mutex_lock(&a->lock);
		if (stop)
			break;
		if (atomic_load(&a->failing))
			timed_wait(a, RETRY_MS);
		else if (a->q.n == 0 && !a->reopen && !a->stop)
			timed_wait(a, a->sync == AUDIT_SYNC_EVERY ?
			    SYNC_MAX_MS : BATCH_GATHER_MS);
		else if (a->sync == AUDIT_SYNC_BATCH && !a->reopen &&
		    !a->stop && a->q.n < a->wake_at)
			timed_wait(a, BATCH_GATHER_MS);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* ---- open and close ---- */

/*
 * Continues the chain of an existing file: seq and chain of its last
 * line. A file that ends in a partial line gets a newline first, so the
 * damage stays on its own line for audit-verify to name.
 */
static int
read_tail(struct audit *a, char *err, size_t errlen)
{
	char buf[TAIL_READ + 1], *line, *end;
	struct stat st;
	off_t from;
	ssize_t n;
	int fd;

	if ((fd = open(a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		snprintf(err, errlen, "cannot read audit log '%.200s': %s",
		    a->path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || st.st_size == 0) {
		close(fd);
		return 0;
	}
	from = st.st_size > TAIL_READ ? st.st_size - TAIL_READ : 0;
	n = pread(fd, buf, TAIL_READ, from);
	close(fd);
	if (n <= 0) {
		snprintf(err, errlen, "cannot read audit log '%.200s': %s",
		    a->path, n < 0 ? strerror(errno) : "empty read");
		return -1;
	}
	buf[n] = '\0';
	if (buf[n - 1] != '\n') {
		log_warn("audit log %s ends with a partial line (a crash while "
		    "writing?); audit-verify will report it", a->path);
		if (write(a->fd, "\n", 1) == 1)
			a->size++;
		return 0;	/* new chain: the break is visible */
	}
	buf[n - 1] = '\0';
	line = strrchr(buf, '\n');
	line = line != NULL ? line + 1 : buf;
	end = buf + n - 1;
	if (strncmp(line, "{\"seq\":", 7) != 0 ||
	    (size_t)(end - line) < AUDIT_CHAIN_SUFFIX + 8 ||
	    strncmp(end - AUDIT_CHAIN_SUFFIX, ",\"chain\":\"", 10) != 0 ||
	    audit_unhex(end - AUDIT_CHAIN_SUFFIX + 10, AUDIT_CHAIN_HEX,
	    a->chain) != 0) {
		log_warn("audit log %s: its last line is not an audit record; "
		    "starting a new chain after it", a->path);
		return 0;
	}
	a->seq = strtoull(line + 7, NULL, 10);
	return 0;
}

int
audit_open(const struct audit_config *cfg, struct audit **out, char *err,
    size_t errlen)
{
	struct audit *a;
	struct stat st;

	*out = NULL;
	if ((a = calloc(1, sizeof(*a))) == NULL ||
	    (a->path = strdup(cfg->path)) == NULL) {
		free(a);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	a->sync = cfg->sync;
	a->queue_max = cfg->queue_max ? cfg->queue_max : AUDIT_QUEUE_MAX;
	/* A quarter full ends the 50 ms gather early, well before the queue
	 * fills; at 100k records a second that is rarely before the timer. */
	a->wake_at = a->queue_max / 4 > 0 ? a->queue_max / 4 : 1;
	a->fd = -1;
	pthread_mutex_init(&a->lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&a->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	log_ratelim_init(&a->lost_rl, LOST_LOG_PER_S);
	if ((a->md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL ||
	    (a->mdctx = EVP_MD_CTX_new()) == NULL) {
		snprintf(err, errlen, "audit log: OpenSSL has no SHA-256");
		goto fail;
	}
	if ((a->fd = open_path(a->path)) == -1) {
		snprintf(err, errlen, "--audit-log '%.200s': %s; give a file "
		    "in a directory p11kms can write", a->path,
		    strerror(errno));
		goto fail;
	}
	if (fstat(a->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "--audit-log '%.200s' is not a regular "
		    "file", a->path);
		goto fail;
	}
	a->size = st.st_size;
	a->uncached = a->size;
	if (read_tail(a, err, errlen) != 0)
		goto fail;
	a->last_sync = mono_ns();
	open_event(a, "start");
	/* The first line is written before serving: a log that cannot be
	 * written at all is a configuration error. */
	if (flush_out(a) != 0 || sync_file(a) != 0) {
		snprintf(err, errlen, "--audit-log '%.200s': %s", a->path,
		    a->why);
		goto fail;
	}
	atomic_store(&a->failing, 0);
	a->why[0] = '\0';
	if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
		snprintf(err, errlen, "cannot start the audit writer thread");
		goto fail;
	}
	a->started = 1;
	metrics_audit_enable();
	*out = a;
	return 0;

 fail:
	if (a->fd != -1)
		close(a->fd);
	EVP_MD_CTX_free(a->mdctx);
	EVP_MD_free(a->md);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->lock);
	free(a->out);
	free(a->path);
	free(a);
	return -1;
}

void
audit_close(struct audit *a)
{
	if (a == NULL)
		return;
	if (a->started) {
		pthread_mutex_lock(&a->lock);
		a->stop = 1;
		pthread_cond_signal(&a->cond);
		pthread_mutex_unlock(&a->lock);
		pthread_join(a->thread, NULL);
	}
	if (a->out_len > a->out_off || a->q.n > 0)
		log_error("audit log %s: stopping with records not written",
		    a->path);
	free(a->q.p);
	free(a->wq.p);
	EVP_MD_CTX_free(a->mdctx);
	EVP_MD_free(a->md);
	if (a->fd != -1)
		close(a->fd);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->lock);
	free(a->out);
	free(a->path);
	free(a);
}
