/*
 * gen: building a generation (config + keyring + worker pool, gen.h), the
 * worker count it gets from the CPUs this process may use (affinity and
 * cgroup v2 quota) and the token, and the helper thread that loads the next
 * generation for a reload or recovery and hands it to the loop via eventfd.
 */
#include "plugin/gen.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>

#include "plugin/log.h"

#define DEFAULT_INFLIGHT	1024

/* Appends to the NUL-terminated text in buf (cap bytes), truncating. */
static void appendf(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
appendf(char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	if (cap == 0 || (n = strnlen(buf, cap)) + 1 >= cap)
		return;
	va_start(ap, fmt);
	(void)vsnprintf(buf + n, cap - n, fmt, ap);
	va_end(ap);
}

unsigned
gen_choose_workers(unsigned requested, long ncpu, int hw_slot,
    unsigned long max_sessions, int *capped, char *from, size_t fromlen)
{
	unsigned long w;

	*capped = 0;
	if (fromlen > 0)
		from[0] = '\0';
	if (ncpu < 1)
		ncpu = 1;
	if (requested > 0) {
		w = requested;
		appendf(from, fromlen, "--workers");
	} else if (hw_slot) {
		w = (unsigned long)ncpu > ULONG_MAX / GEN_HW_WORKERS_PER_CPU ?
		    ULONG_MAX : GEN_HW_WORKERS_PER_CPU * (unsigned long)ncpu;
		appendf(from, fromlen, "hardware slot: %d x %ld CPU%s",
		    GEN_HW_WORKERS_PER_CPU, ncpu, ncpu == 1 ? "" : "s");
		if (w < GEN_HW_WORKERS_MIN) {
			w = GEN_HW_WORKERS_MIN;
			appendf(from, fromlen, ", at least %d",
			    GEN_HW_WORKERS_MIN);
		} else if (w > GEN_HW_WORKERS_MAX) {
			w = GEN_HW_WORKERS_MAX;
			appendf(from, fromlen, ", at most %d",
			    GEN_HW_WORKERS_MAX);
		}
	} else {
		w = (unsigned long)ncpu;
		appendf(from, fromlen, "software slot: CPU count");
	}
	/* One session is the keyring's own, holding the login. */
	if (max_sessions > 1 && w > max_sessions - 1) {
		w = max_sessions - 1;
		*capped = 1;
		appendf(from, fromlen, "; token allows %lu sessions",
		    max_sessions);
	}
	return w > UINT_MAX ? UINT_MAX : (unsigned)w;
}

long
gen_cpus_from_cpu_max(const char *text)
{
	unsigned long long quota, period;
	char *end;

	while (*text == ' ' || *text == '\t')
		text++;
	if (strncmp(text, "max", 3) == 0 || *text < '0' || *text > '9')
		return 0;
	errno = 0;
	quota = strtoull(text, &end, 10);
	if (errno != 0 || quota == 0 || (*end != ' ' && *end != '\t'))
		return 0;
	period = strtoull(end, &end, 10);
	if (errno != 0 || period == 0 || (*end != '\0' && *end != '\n'))
		return 0;
	quota = quota / period + (quota % period != 0);
	return quota > LONG_MAX ? LONG_MAX : (long)quota;
}

/* The quota of the cgroup at rel (below /sys/fs/cgroup), 0 if none. */
static long
cgroup_cpus(const char *rel)
{
	char path[PATH_MAX], text[64];
	FILE *f;
	long n = 0;

	if (snprintf(path, sizeof(path), "/sys/fs/cgroup%s/cpu.max",
	    strcmp(rel, "/") == 0 ? "" : rel) >= (int)sizeof(path) ||
	    (f = fopen(path, "re")) == NULL)
		return 0;
	if (fgets(text, sizeof(text), f) != NULL)
		n = gen_cpus_from_cpu_max(text);
	fclose(f);
	return n;
}

long
gen_usable_cpus(void)
{
	cpu_set_t set;
	char line[PATH_MAX], *slash;
	long n = 0, q;
	FILE *f;

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		n = CPU_COUNT(&set);
	if (n <= 0)
		n = sysconf(_SC_NPROCESSORS_ONLN);
	/*
	 * cgroup v2: the "0::/path" line; the quota of each level up to the
	 * top applies (the root has none). cgroup v1 quotas are not read.
	 */
	if ((f = fopen("/proc/self/cgroup", "re")) != NULL) {
		while (fgets(line, sizeof(line), f) != NULL) {
			if (strncmp(line, "0::/", 4) != 0)
				continue;
			line[strcspn(line, "\n")] = '\0';
			for (;;) {
				if ((q = cgroup_cpus(line + 3)) > 0 &&
				    (n <= 0 || q < n))
					n = q;
				if ((slash = strrchr(line + 3, '/')) == NULL ||
				    slash == line + 3)
					break;
				*slash = '\0';
			}
		}
		fclose(f);
	}
	return n > 0 ? n : 1;
}

uint64_t
gen_spin_ns(const struct config *cfg, uint64_t budget)
{
	static long ncpu;

	if (!cfg->busy_poll)
		return 0;
	if (ncpu == 0)
		ncpu = gen_usable_cpus();
	return ncpu >= 2 ? budget : 0;
}

static unsigned
choose_workers(const struct config *cfg, const struct keyring *kr,
    char *from, size_t fromlen)
{
	unsigned long max = keyring_max_sessions(kr);
	unsigned w;
	int capped;

	w = gen_choose_workers(cfg->workers, gen_usable_cpus(),
	    keyring_hw_slot(kr), max, &capped, from, fromlen);
	if (capped)
		log_warn("token allows %lu sessions: using %u workers", max,
		    w);
	return w;
}

int
gen_open(struct config *cfg, struct gen **out, char *err, size_t errlen)
{
	struct keyring_config kcfg;
	struct gen *g;
	int r;

	*out = NULL;
	if ((g = calloc(1, sizeof(*g))) == NULL) {
		config_free(cfg);
		snprintf(err, errlen, "out of memory");
		return KEYRING_E_NOMEM;
	}
	g->cfg = *cfg;			/* the file buffer moves with it */
	cfg->filebuf = NULL;
	g->watch.fd = -1;
	if (gen_remote()) {
		if ((r = gen_open_tokproc(g, err, errlen)) != KEYRING_OK)
			goto fail;
		*out = g;
		return KEYRING_OK;
	}
	memset(&kcfg, 0, sizeof(kcfg));
	kcfg.module = g->cfg.module;
	kcfg.module_init_args = g->cfg.module_init_args;
	kcfg.key_uris = g->cfg.keys;
	kcfg.nkeys = g->cfg.nkeys;
	kcfg.pin_file = g->cfg.pin_file;
	kcfg.mechanism = g->cfg.mechanism;
	err[0] = '\0';
	if ((r = keyring_load(&kcfg, &g->kr, err, errlen)) != KEYRING_OK) {
		if (err[0] == '\0')
			snprintf(err, errlen, "%s", keyring_strerror(r));
		goto fail;
	}
	g->workers = choose_workers(&g->cfg, g->kr, g->workers_from,
	    sizeof(g->workers_from));
	g->inflight = g->cfg.max_inflight ? g->cfg.max_inflight :
	    DEFAULT_INFLIGHT;
	if ((r = pool_new(g->kr, g->workers, g->inflight, &g->pool, err,
	    errlen)) != KEYRING_OK)
		goto fail;
	/* In-process the workers wait for the next request; in the token
	 * process the pool runs fed and its reader does (tokserve.c). */
	pool_set_spin(g->pool, gen_spin_ns(&g->cfg, GEN_SPIN_REQUEST_NS));
	g->watch.fd = pool_fd(g->pool);
	*out = g;
	return KEYRING_OK;

 fail:
	gen_free(g);
	return r;
}

void
gen_free(struct gen *g)
{
	if (g == NULL)
		return;
	tokproc_free(g->tp);
	pool_free(g->pool);	/* workers before their keyring */
	keyring_free(g->kr);
	config_free(&g->cfg);
	free(g);
}

/* ---- loading on a helper thread ---- */

static void *
loader_main(void *arg)
{
	struct gen_loader *ld = arg;
	struct config cfg;
	uint64_t one = 1;
	int r;

	config_defaults(&cfg);
	ld->err[0] = '\0';
	/* The token process reads the config file, not the front. */
	r = gen_remote() ? CONFIG_OK : config_parse_args(&cfg, ld->argc,
	    ld->argv, ld->err, sizeof(ld->err));
	if (r != CONFIG_OK) {
		config_free(&cfg);
		ld->status = KEYRING_E_CONFIG;
		if (r == CONFIG_EXIT)
			snprintf(ld->err, sizeof(ld->err), "--help/--version "
			    "in a reload");
	} else {
		ld->status = gen_open(&cfg, &ld->result, ld->err,
		    sizeof(ld->err));
	}
	(void)!write(ld->watch.fd, &one, sizeof(one));
	return NULL;
}

static void
loader_ready(void *arg, uint32_t events)
{
	struct gen_loader *ld = arg;
	struct gen *g;
	uint64_t v;

	(void)events;
	(void)!read(ld->watch.fd, &v, sizeof(v));
	if (!ld->running)
		return;
	pthread_join(ld->thread, NULL);
	ld->running = 0;
	g = ld->result;
	ld->result = NULL;
	ld->done(ld->arg, g, ld->status, ld->err);
}

int
gen_loader_init(struct gen_loader *ld, struct loop *l, int argc,
    char **argv, gen_loaded_cb done, void *arg)
{
	memset(ld, 0, sizeof(*ld));
	ld->loop = l;
	ld->argc = argc;
	ld->argv = argv;
	ld->done = done;
	ld->arg = arg;
	if ((ld->watch.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1)
		return -1;
	ld->watch.cb = loader_ready;
	ld->watch.arg = ld;
	if (loop_watch(l, &ld->watch, EPOLLIN) != 0) {
		close(ld->watch.fd);
		ld->watch.fd = -1;
		return -1;
	}
	return 0;
}

int
gen_loader_start(struct gen_loader *ld)
{
	int r;

	if (ld->running)
		return -1;
	ld->result = NULL;
	ld->status = KEYRING_OK;
	if ((r = pthread_create(&ld->thread, NULL, loader_main, ld)) != 0) {
		log_error("cannot start the reload thread: %s", strerror(r));
		return -1;
	}
	ld->running = 1;
	return 0;
}

void
gen_loader_fini(struct gen_loader *ld)
{
	if (ld->running) {
		pthread_join(ld->thread, NULL);
		ld->running = 0;
		gen_free(ld->result);
		ld->result = NULL;
	}
	if (ld->watch.fd != -1) {
		loop_unwatch(ld->loop, &ld->watch);
		close(ld->watch.fd);
		ld->watch.fd = -1;
	}
}

int
gen_loader_wait(struct gen_loader *ld, unsigned max_s)
{
	struct pollfd pfd;
	uint64_t until, now;
	int r;

	if (!ld->running)
		return 0;
	pfd.fd = ld->watch.fd;
	pfd.events = POLLIN;
	until = loop_now() + (uint64_t)max_s * 1000000000ull;
	/* The thread writes the eventfd as its last act: then join. */
	for (;;) {
		now = loop_now();
		r = poll(&pfd, 1, now >= until ? 0 :
		    (int)((until - now) / 1000000 + 1));
		if (r > 0)
			break;
		if (r == 0 && loop_now() >= until)
			return -1;
		if (r < 0 && errno != EINTR)
			return -1;
	}
	gen_loader_fini(ld);
	return 0;
}

/* ---- start-up that a signal can end ---- */

struct start_job {
	struct config *cfg;
	struct gen *g;
	int status;
	char *err;
	size_t errlen;
	int efd;
};

static void *
start_main(void *arg)
{
	struct start_job *j = arg;
	uint64_t one = 1;

	j->status = gen_open(j->cfg, &j->g, j->err, j->errlen);
	(void)!write(j->efd, &one, sizeof(one));
	return NULL;
}

int
gen_open_or_signal(struct config *cfg, int sigfd, struct gen **out,
    char *err, size_t errlen)
{
	struct start_job j;
	struct signalfd_siginfo si;
	struct pollfd pfd[2];
	pthread_t t;
	int r;

	*out = NULL;
	memset(&j, 0, sizeof(j));
	j.cfg = cfg;
	j.err = err;
	j.errlen = errlen;
	if ((j.efd = eventfd(0, EFD_CLOEXEC)) == -1 ||
	    pthread_create(&t, NULL, start_main, &j) != 0) {
		/* No thread: open here, as before (a signal waits for it). */
		if (j.efd != -1)
			close(j.efd);
		return gen_open(cfg, out, err, errlen);
	}
	pfd[0].fd = j.efd;
	pfd[0].events = POLLIN;
	pfd[1].fd = sigfd;
	pfd[1].events = POLLIN;
	for (;;) {
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			continue;
		if (pfd[0].revents & POLLIN)
			break;
		if (!(pfd[1].revents & POLLIN))
			continue;
		while (read(sigfd, &si, sizeof(si)) == sizeof(si)) {
			if (si.ssi_signo != SIGTERM && si.ssi_signo != SIGINT) {
				log_info("signal %d during start-up: ignored "
				    "until the keys are loaded",
				    (int)si.ssi_signo);
				continue;
			}
			/*
			 * The module has not answered (C_Initialize, C_Login
			 * or a search hung): it cannot be finalized while a
			 * thread is inside it, so leave without unwinding.
			 */
			log_info("signal %d during start-up: exiting while "
			    "the token still has not answered",
			    (int)si.ssi_signo);
			_exit(0);
		}
	}
	pthread_join(t, NULL);
	close(j.efd);
	r = j.status;
	*out = j.g;
	return r;
}
