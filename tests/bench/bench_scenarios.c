/*
 * bench_scenarios: what the bench measures (bench.h): the daemon it
 * starts and watches (CPU, RSS, logged workers), hypervisor steal, result
 * rows, the raw keyring baseline in this process, paired served/raw
 * rounds (with the echo baseline at c=1), and the scenarios (cold start,
 * Status, Encrypt, Decrypt, mixed, Status beside Encrypt c=1, v1, storm,
 * slow token, calls per request, audit).
 */
#include "tests/bench/bench.h"

/* ---- the daemon ---- */

void
daemon_log_tail(void)
{
	char buf[2048];
	ssize_t n;
	off_t sz;
	int fd;

	if (g_log[0] == '\0' || (fd = open(g_log, O_RDONLY)) == -1)
		return;
	sz = lseek(fd, 0, SEEK_END);
	(void)lseek(fd, sz > (off_t)sizeof(buf) - 1 ?
	    sz - (off_t)sizeof(buf) + 1 : 0, SEEK_SET);
	if ((n = read(fd, buf, sizeof(buf) - 1)) > 0) {
		buf[n] = '\0';
		fprintf(stderr, "--- end of %s ---\n%s---\n", g_log, buf);
	}
	close(fd);
}

/* utime + stime from /proc/PID/stat, in ns (clock-tick resolution). */
static uint64_t
proc_stat_cpu_ns(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY)) == -1)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* Fields after "(comm)": state is field 3, utime 14, stime 15. */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
	    "%llu %llu", &ut, &st) != 2)
		return 0;
	return (ut + st) * (NS_PER_S / (uint64_t)g_clk_tck);
}

/*
 * The daemon's processes: itself, then (--token-process=on) its spawner
 * and the token processes below that, found by parent pid. At most max.
 */
static size_t
daemon_tree(pid_t *pids, size_t max)
{
	char path[64], buf[512], *p;
	struct dirent *de;
	size_t n = 0, i;
	DIR *d;
	int fd, ppid;
	ssize_t r;

	if (max == 0)
		return 0;
	pids[n++] = g_daemon;
	for (i = 0; i < n && i < 2; i++) {	/* two levels down */
		if ((d = opendir("/proc")) == NULL)
			break;
		while ((de = readdir(d)) != NULL && n < max) {
			if (de->d_name[0] < '1' || de->d_name[0] > '9')
				continue;
			snprintf(path, sizeof(path), "/proc/%.20s/stat",
			    de->d_name);
			if ((fd = open(path, O_RDONLY)) == -1)
				continue;
			r = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			if (r <= 0)
				continue;
			buf[r] = '\0';
			if ((p = strrchr(buf, ')')) != NULL &&
			    sscanf(p + 1, " %*c %d", &ppid) == 1 &&
			    ppid == pids[i])
				pids[n++] = (pid_t)atoi(de->d_name);
		}
		closedir(d);
	}
	return n;
}

/*
 * The daemon's CPU time (all threads, user + system) in ns: the kernel's
 * per-process CPU clock, which is what /proc/PID/stat's utime + stime are
 * rounded from, at ns instead of 10 ms resolution.
 */
uint64_t
daemon_cpu_ns(void)
{
	pid_t pids[16];
	clockid_t ck;
	uint64_t ns;
	size_t n, i;

	ns = g_dclk_ok ? clock_ns(g_dclk) : proc_stat_cpu_ns(g_daemon);
	/* With a token process: its CPU (and the spawner's) counts too. */
	n = daemon_tree(pids, sizeof(pids) / sizeof(pids[0]));
	for (i = 1; i < n; i++)
		ns += clock_getcpuclockid(pids[i], &ck) == 0 ? clock_ns(ck) :
		    proc_stat_cpu_ns(pids[i]);
	return ns;
}

long
tree_status_kib(const char *name, long *token)
{
	pid_t pids[16];
	size_t n, i;
	long sum = 0, v;

	n = daemon_tree(pids, sizeof(pids) / sizeof(pids[0]));
	if (token != NULL)
		*token = 0;
	for (i = 0; i < n; i++) {
		if ((v = proc_status_kib(pids[i], name)) < 0)
			continue;
		sum += v;
		if (i > 0 && token != NULL)
			*token += v;
	}
	return n > 0 ? sum : -1;
}

long
tree_smaps_kib(const char *name)
{
	char path[64], line[256];
	size_t nl = strlen(name), i, n;
	pid_t pids[16];
	long sum = -1;
	FILE *f;

	n = daemon_tree(pids, sizeof(pids) / sizeof(pids[0]));
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "/proc/%d/smaps_rollup",
		    (int)pids[i]);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		while (fgets(line, sizeof(line), f) != NULL)
			if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
				sum = (sum < 0 ? 0 : sum) +
				    strtol(line + nl + 1, NULL, 10);
				break;
			}
		fclose(f);
	}
	return sum;
}

/* A "Name:  N kB" line of /proc/PID/status, in KiB; -1 if absent. */
long
proc_status_kib(pid_t pid, const char *name)
{
	char path[64], line[256];
	size_t nl = strlen(name);
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
			v = strtol(line + nl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* fork + exec of the daemon; *t0 is taken just before the fork. */
pid_t
daemon_start(const char *module, unsigned workers, const char *fault_ctl,
    uint64_t *t0)
{
	char wbuf[16];
	const char *argv[20 + MAX_WRAP + BENCH_DEXTRA_MAX];
	size_t x;
	pid_t pid, parent = getpid();
	int fd, i = 0;

	snprintf(g_log, sizeof(g_log), "%s/daemon-%u.log", g_dir,
	    ++g_nstarts);
	snprintf(wbuf, sizeof(wbuf), "%u", workers);
	for (; i < (int)opt.nwrap; i++)
		argv[i] = opt.wrap[i];
	argv[i++] = opt.daemon;
	argv[i++] = "--socket";
	argv[i++] = g_sock;
	argv[i++] = "--module";
	argv[i++] = module;
	argv[i++] = "--key";
	argv[i++] = KEY_URI;
	argv[i++] = "--pin-file";
	argv[i++] = g_pin;
	argv[i++] = "--workers";
	argv[i++] = wbuf;
	for (x = 0; x < g_ndextra; x++)
		argv[i++] = g_dextra[x];
	if (opt.token_process != NULL) {
		argv[i++] = "--token-process";
		argv[i++] = opt.token_process;
	}
	argv[i] = NULL;
	(void)unlink(g_sock);
	fflush(NULL);
	*t0 = now_ns();
	if ((pid = fork()) == -1)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		sigset_t none;

		/* Die with the bench, even if it is SIGKILLed. */
		(void)prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if ((fd = open(g_log, O_WRONLY | O_CREAT | O_TRUNC, 0600)) != -1) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		if ((fd = open("/dev/null", O_RDONLY)) != -1) {
			dup2(fd, 0);
			close(fd);
		}
		if (fault_ctl != NULL) {
			setenv("P11KMS_FAULT_CONTROL", fault_ctl, 1);
			setenv("P11KMS_FAULT_TARGET", opt.module, 1);
			if (g_counts[0] != '\0')
				setenv("P11KMS_FAULT_COUNTS", g_counts, 1);
		}
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	g_daemon = pid;
	g_dclk_ok = clock_getcpuclockid(pid, &g_dclk) == 0 &&
	    clock_gettime(g_dclk, &(struct timespec){ 0, 0 }) == 0;
	g_cpu_src = g_dclk_ok ? "clock_getcpuclockid" : "/proc/PID/stat";
	return pid;
}

/* SIGTERM, bounded wait, SIGKILL. Returns the exit status or -1. */
int
daemon_stop(void)
{
	pid_t pid = g_daemon;
	uint64_t until;
	int st;

	if (pid <= 0)
		return -1;
	(void)kill(pid, SIGTERM);
	until = now_ns() + STOP_NS;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r == -1 && errno != EINTR) {
			st = -1;
			break;
		}
		if (now_ns() > until) {
			fprintf(stderr, "p11kms-bench: daemon %d ignored "
			    "SIGTERM for %llu s: SIGKILL\n", (int)pid,
			    STOP_NS / NS_PER_S);
			(void)kill(pid, SIGKILL);
			(void)waitpid(pid, &st, 0);
			break;
		}
		sleep_ns(5000000);
	}
	g_daemon = -1;
	g_dclk_ok = 0;
	if (st != -1 && WIFEXITED(st))
		return WEXITSTATUS(st);
	return -1;
}

/* "workers=N" from the daemon's serving log line; 0 if not found. */
unsigned
daemon_logged_workers(void)
{
	char buf[8192], *p, *last = NULL;
	ssize_t n;
	int fd;

	if ((fd = open(g_log, O_RDONLY)) == -1)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (p = buf; (p = strstr(p, "workers=")) != NULL; p++)
		last = p;
	return last ? (unsigned)strtoul(last + 8, NULL, 10) : 0;
}

/*
 * Polls connect + Status about every millisecond until the first good
 * Status answer; returns ms from t0 to that answer.
 */
double
daemon_wait_ready(uint64_t t0)
{
	struct client cl;
	struct lane ln, *lp = &ln;
	const char *was = g_scen;
	double ms;
	int st;

	g_scen = "daemon start";
	memset(&cl, 0, sizeof(cl));
	for (;;) {
		if (g_stop)
			die("interrupted");
		if (waitpid(g_daemon, &st, WNOHANG) == g_daemon) {
			g_daemon = -1;
			daemon_log_tail();
			die("the daemon exited (status %d) before serving",
			    WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		}
		if (now_ns() - t0 > READY_NS) {
			daemon_log_tail();
			die("the daemon did not serve within %llu s",
			    READY_NS / NS_PER_S);
		}
		if (conn_open(&cl.c[0], g_sock) == 0)
			break;
		if (errno != ENOENT && errno != ECONNREFUSED)
			die("connect %s: %s", g_sock, strerror(errno));
		sleep_ns(1000000);
	}
	cl.n = 1;
	lane_init(&ln, K_STATUS, 1, 1);
	if (run_lanes(&cl, &lp, 1) != 0)
		die_run("no answer to the first Status");
	if (ln.failed != 0)
		die_run("the first Status was wrong");
	ms = (double)(ln.t_last - t0) / 1e6;
	lane_free(&ln);
	client_close(&cl);
	g_scen = was;
	return ms;
}

/* ---- hypervisor steal: /proc/stat's aggregate cpu line ---- */

void
cpustat_read(struct cpustat *c)
{
	unsigned long long v[8];
	char line[512];
	FILE *f;
	int i;

	memset(c, 0, sizeof(*c));
	if ((f = fopen("/proc/stat", "r")) == NULL)
		return;
	/* cpu user nice system idle iowait irq softirq steal [guest ...]:
	 * guest time is already in user, so the first eight are the total. */
	if (fgets(line, sizeof(line), f) != NULL &&
	    sscanf(line, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
	    &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (i = 0; i < 8; i++)
			c->total += v[i];
		c->steal = v[7];
		c->ok = 1;
	}
	fclose(f);
}

/* Adds the interval from a to b. */
void
steal_add(struct steal *s, const struct cpustat *a, const struct cpustat *b)
{
	if (!a->ok || !b->ok || b->total < a->total || b->steal < a->steal) {
		s->bad = 1;
		return;
	}
	s->steal += b->steal - a->steal;
	s->total += b->total - a->total;
}

static void
steal_sum(struct steal *s, const struct steal *t)
{
	s->bad |= t->bad;
	s->steal += t->steal;
	s->total += t->total;
}

/* Steal as a % of every tick, NAN (n/a) under STEAL_MIN_TICKS ticks. */
double
steal_pct(const struct steal *s)
{
	if (s->bad || s->total < STEAL_MIN_TICKS)
		return NAN;
	return 100.0 * (double)s->steal / (double)s->total;
}

/* ---- results ---- */

struct row g_rows[MAX_ROWS];
size_t g_nrows;

struct row *
row_new(const char *key, const char *label)
{
	struct row *r;

	if (g_nrows == MAX_ROWS)
		die("too many result rows");
	r = &g_rows[g_nrows++];
	memset(r, 0, sizeof(*r));
	snprintf(r->key, sizeof(r->key), "%s", key);
	snprintf(r->label, sizeof(r->label), "%s", label);
	r->srv_cpu = r->cli_cpu = r->ideal = NAN;
	return r;
}

struct row *
row_find(const char *key)
{
	size_t i;

	for (i = 0; i < g_nrows; i++)
		if (strcmp(g_rows[i].key, key) == 0)
			return &g_rows[i];
	return NULL;
}

static struct row *
row_na(const char *key, const char *label, const char *why)
{
	struct row *r = row_new(key, label);

	r->na = 1;
	snprintf(r->why, sizeof(r->why), "%s", why);
	return r;
}

static void
row_from_lane(struct row *r, struct lane *ln)
{
	struct stats s;

	stats_of(ln->lat.v, ln->lat.n, &s);
	r->n = ln->done;
	r->failed = ln->failed;
	r->secs = (double)(ln->t_last - ln->t_first) / 1e9;
	r->ops = r->secs > 0 ? (double)ln->done / r->secs : NAN;
	r->p50 = s.p50;
	r->p99 = s.p99;
	r->max = s.max;
	if (ln->parts.n > 0) {
		parts_tail(&ln->parts, r->tail);
		r->has_tail = 1;
	}
}

/*
 * Runs lanes on the daemon; adds the daemon's and the bench's CPU (ns) and
 * the machine's steal over the run. Returns the answers of every lane.
 */
static size_t
serve_run(struct client *cl, struct lane *const *lanes, size_t nl,
    uint64_t *srv_ns, uint64_t *cli_ns, struct steal *st)
{
	struct cpustat p0, p1;
	uint64_t s0, c0, s1, c1;
	size_t i, total = 0;

	cpustat_read(&p0);
	s0 = daemon_cpu_ns();
	c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	if (run_lanes(cl, lanes, nl) != 0)
		die_run("load failed");
	s1 = daemon_cpu_ns();
	c1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	cpustat_read(&p1);
	steal_add(st, &p0, &p1);
	*srv_ns += s1 - s0;
	*cli_ns += c1 - c0;
	for (i = 0; i < nl; i++)
		total += lanes[i]->done;
	return total;
}

/*
 * Runs lanes on the daemon as one scenario; the daemon's and the bench's
 * CPU over the whole scenario is divided by every request of every lane.
 */
static void
serve(struct client *cl, struct lane *const *lanes, size_t nl,
    struct row *r, size_t main_lane)
{
	uint64_t srv = 0, cli = 0;
	size_t total;

	g_scen = r->label;
	total = serve_run(cl, lanes, nl, &srv, &cli, &r->steal);
	row_from_lane(r, lanes[main_lane]);
	if (total > 0) {
		r->srv_cpu = (double)srv / 1e3 / (double)total;
		r->cli_cpu = (double)cli / 1e3 / (double)total;
	}
}

/* One lane, one row. */
static void
serve1(struct client *cl, struct lane *ln, const char *key, const char *label)
{
	struct lane *lp = ln;

	serve(cl, &lp, 1, row_new(key, label), 0);
}

/* ---- raw baseline: keyring in this process ---- */

static void *
base_main(void *arg)
{
	struct bthread *bt = arg;
	struct bctx *b = bt->b;
	struct keyring_worker *w = NULL;
	uint8_t pt[PT_LEN], out[KEYRING_MAX_CIPHERTEXT];
	char kid[KEYRING_KEY_ID_MAX];
	uint64_t c0, t0;
	size_t i, outlen;
	int r;

	/* Session opening is not part of the measured work. */
	bt->err = keyring_worker_new(b->kr, &w);
	pthread_barrier_wait(&b->bar);
	if (bt->err != KEYRING_OK)
		return NULL;
	c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	bt->t_start = now_ns();
	while ((i = atomic_fetch_add(&b->next, 1)) < b->end && !g_stop) {
		const struct blob *bl = b->in ? &b->in->b[i % b->in->n] : NULL;

		t0 = now_ns();
		if (b->op == B_SEAL) {
			make_pt(b->seed, i, pt);
			r = keyring_seal(w, pt, PT_LEN, out, sizeof(out),
			    &outlen, kid);
		} else {
			r = keyring_open(w, b->op == B_OPEN_V2 ? g_key_id :
			    NULL, bl->ct, bl->len, out, sizeof(out), &outlen,
			    NULL);
		}
		b->lat[i] = now_ns() - t0;
		if (r == KEYRING_OK && b->op != B_SEAL) {
			make_pt(b->in->seed, i % b->in->n, pt);
			if (outlen != PT_LEN || memcmp(out, pt, PT_LEN) != 0)
				r = KEYRING_E_AUTH;
		}
		if (r != KEYRING_OK)
			atomic_fetch_add(&b->failed, 1);
	}
	bt->cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
	bt->t_end = now_ns();
	keyring_worker_free(w);
	return NULL;
}

static void
base_begin(struct bctx *b, struct keyring *kr, enum bop op, unsigned threads,
    size_t total, const struct ctset *in)
{
	memset(b, 0, sizeof(*b));
	b->kr = kr;
	b->op = op;
	b->threads = threads;
	b->total = total;
	b->in = in;
	if (getrandom(&b->seed, sizeof(b->seed), 0) != sizeof(b->seed))
		b->seed = now_ns();
	atomic_init(&b->next, 0);
	atomic_init(&b->failed, 0);
	b->lat = xcalloc(total, sizeof(*b->lat));
}

/*
 * Operations [lo, hi), in process, on b->threads sessions; time is from the
 * first thread's start to the last one's end. Adds to b's sums and, when rd
 * is not NULL, fills the round's raw side.
 */
static void
base_slice(struct bctx *b, size_t lo, size_t hi, struct round *rd)
{
	struct bthread *bt = xcalloc(b->threads, sizeof(*bt));
	struct cpustat p0, p1;
	struct steal st = { 0, 0, 0 };
	uint64_t t0 = UINT64_MAX, t1 = 0, cpu = 0;
	unsigned i;

	atomic_store(&b->next, lo);
	b->end = hi;
	pthread_barrier_init(&b->bar, NULL, b->threads + 1);
	for (i = 0; i < b->threads; i++) {
		bt[i].b = b;
		if (pthread_create(&bt[i].t, NULL, base_main, &bt[i]) != 0)
			die("pthread_create failed");
	}
	pthread_barrier_wait(&b->bar);
	cpustat_read(&p0);
	for (i = 0; i < b->threads; i++) {
		pthread_join(bt[i].t, NULL);
		if (bt[i].err != KEYRING_OK)
			die("baseline: cannot open a token session: %s",
			    keyring_strerror(bt[i].err));
		if (bt[i].t_start < t0)
			t0 = bt[i].t_start;
		if (bt[i].t_end > t1)
			t1 = bt[i].t_end;
		cpu += bt[i].cpu;
	}
	cpustat_read(&p1);
	pthread_barrier_destroy(&b->bar);
	free(bt);
	if (g_stop)
		die("interrupted");
	steal_add(&st, &p0, &p1);
	steal_sum(&b->steal, &st);
	b->done += hi - lo;
	b->ns += t1 - t0;
	b->cpu += cpu;
	if (rd != NULL) {
		rd->bn = hi - lo;
		rd->bsecs = (double)(t1 - t0) / 1e9;
		rd->bcpu = hi > lo ? (double)cpu / 1e3 / (double)(hi - lo) :
		    NAN;
		rd->bsteal = st;
	}
}

/* The sums over every slice make r's baseline; frees b. */
static void
base_end(struct bctx *b, struct row *r)
{
	struct stats s;

	stats_of(b->lat, b->done, &s);
	r->base.has = 1;
	r->base.threads = b->threads;
	r->base.n = b->done;
	r->base.failed = atomic_load(&b->failed);
	r->base.secs = (double)b->ns / 1e9;
	r->base.ops = r->base.secs > 0 ? (double)b->done / r->base.secs :
	    NAN;
	r->base.p50 = s.p50;
	r->base.p99 = s.p99;
	r->base.max = s.max;
	r->base.cpu = b->done ? (double)b->cpu / 1e3 / (double)b->done : NAN;
	r->base.steal = b->steal;
	if (r->base.failed != 0) {
		g_errors += r->base.failed;
		fprintf(stderr, "p11kms-bench: baseline for %s: %zu of %zu "
		    "operations failed or gave back other bytes\n", r->label,
		    r->base.failed, b->done);
	}
	free(b->lat);
	b->lat = NULL;
}

/* Percentiles of n samples without reordering v (a round's slice). */
static void
slice_stats(const uint64_t *v, size_t n, struct stats *s)
{
	uint64_t *t = xcalloc(n, sizeof(*t));

	memcpy(t, v, n * sizeof(*t));
	stats_of(t, n, s);
	free(t);
}

/*
 * The echo side of round rd: the same slice [lo, hi) on the echo server
 * (eln, over ecl), with the echo's CPU, the bench's and the steal.
 */
static void
echo_slice(struct client *ecl, struct lane *eln, size_t lo, size_t hi,
    struct round *rd, uint64_t *ecpu, uint64_t *ccpu, struct steal *est)
{
	struct lane *ep = eln;
	struct cpustat p0, p1;
	struct stats s;
	uint64_t e0, c0;
	size_t n0 = eln->lat.n;
	const char *was = g_scen;

	eln->first = lo;
	eln->total = hi - lo;
	eln->issued = eln->done = 0;
	eln->t_first = eln->t_last = 0;
	g_scen = "echo baseline";
	cpustat_read(&p0);
	e0 = echo_cpu_ns();
	c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	if (run_lanes(ecl, &ep, 1) != 0)
		die_run("the echo server failed");
	*ccpu += clock_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
	*ecpu += echo_cpu_ns() - e0;
	cpustat_read(&p1);
	steal_add(est, &p0, &p1);
	g_scen = was;
	rd->has_echo = 1;
	rd->en = eln->done;
	rd->esecs = (double)(eln->t_last - eln->t_first) / 1e9;
	rd->ecpu = NAN;
	slice_stats(eln->lat.v + n0, eln->lat.n - n0, &s);
	rd->ep50 = s.p50;
	rd->ep99 = s.p99;
}

/*
 * A scenario with a raw baseline, in interleaved rounds. ln is set up for
 * the whole scenario (kind, conc, total N, pt_seed, in, out); its N
 * requests are cut into --rounds slices, and each round runs one slice on
 * the daemon and the same slice raw (op on `threads` sessions, opening
 * bin's ciphertexts), served first in even rounds and raw first in odd
 * ones, so that both sides see the same machine. Request i is the same
 * request whatever the slicing: Encrypt answers land in ln->out->b[i], a
 * Decrypt sends ln->in->b[i % n] once. ops/s per side = requests / the sum
 * of its rounds' times; latencies over every request of the side; CPU per
 * request summed over the rounds.
 *
 * With an echo lane (eln over ecl, a c=1 lane of the same kind on the echo
 * server) each round also runs the slice there, the three sides rotating
 * (served-raw-echo, raw-echo-served, echo-served-raw, ...), and the echo's
 * figures make row ekey.
 */
static void
paired_run(struct client *cl, struct keyring *kr, struct lane *ln,
    const char *key, const char *label, enum bop op, unsigned threads,
    const struct ctset *bin, struct client *ecl, struct lane *eln,
    const char *ekey, const char *elabel)
{
	struct row *r = row_new(key, label), *er = NULL;
	struct lane *lp = ln;
	struct bctx b;
	struct stats s;
	struct steal est = { 0, 0, 0 };
	size_t N = ln->total, lo, hi, done = 0, n0;
	uint64_t srv = 0, cli = 0, srv_ns = 0, cli_ns = 0, secs_ns = 0;
	uint64_t ecpu = 0, eccpu = 0, esecs_ns = 0;
	unsigned k, K = opt.rounds, side;
	static const char *const rot[3] = { "sre", "res", "esr" };

	if (K > N)
		K = (unsigned)N;
	if (eln != NULL) {
		er = row_new(ekey, elabel);
		snprintf(r->echo_key, sizeof(r->echo_key), "%s", ekey);
	}
	g_scen = r->label;
	base_begin(&b, kr, op, threads, N, bin);
	for (k = 0; k < K; k++) {
		struct round *rd = &r->rnd[k];

		lo = N * k / K;
		hi = N * (k + 1) / K;
		snprintf(rd->order, sizeof(rd->order), "%s", eln != NULL ?
		    rot[k % 3] : k % 2 ? "rs" : "sr");
		rd->raw_first = strchr(rd->order, 'r') <
		    strchr(rd->order, 's');
		for (side = 0; rd->order[side] != '\0'; side++) {
			if (rd->order[side] == 'r') {
				base_slice(&b, lo, hi, rd);
				slice_stats(b.lat + lo, hi - lo, &s);
				rd->bp50 = s.p50;
				continue;
			}
			if (rd->order[side] == 'e') {
				uint64_t e0 = ecpu;

				echo_slice(ecl, eln, lo, hi, rd, &ecpu, &eccpu,
				    &est);
				rd->ecpu = rd->en ? (double)(ecpu - e0) / 1e3 /
				    (double)rd->en : NAN;
				esecs_ns += eln->t_last - eln->t_first;
				continue;
			}
			/* The slice on the daemon; latencies and failures
			 * pile up in ln over the rounds. */
			ln->first = lo;
			ln->total = hi - lo;
			ln->issued = ln->done = 0;
			ln->t_first = ln->t_last = 0;
			srv = cli = 0;
			n0 = ln->lat.n;
			rd->n = serve_run(cl, &lp, 1, &srv, &cli, &rd->steal);
			rd->secs = (double)(ln->t_last - ln->t_first) / 1e9;
			rd->srv_cpu = rd->n ? (double)srv / 1e3 /
			    (double)rd->n : NAN;
			slice_stats(ln->lat.v + n0, ln->lat.n - n0, &s);
			rd->p50 = s.p50;
			steal_sum(&r->steal, &rd->steal);
			done += rd->n;
			srv_ns += srv;
			cli_ns += cli;
			secs_ns += ln->t_last - ln->t_first;
		}
	}
	r->nrnd = K;
	ln->first = 0;
	ln->total = N;
	stats_of(ln->lat.v, ln->lat.n, &s);
	r->n = done;
	r->failed = ln->failed;
	r->secs = (double)secs_ns / 1e9;
	r->ops = r->secs > 0 ? (double)done / r->secs : NAN;
	r->p50 = s.p50;
	r->p99 = s.p99;
	r->max = s.max;
	if (done > 0) {
		r->srv_cpu = (double)srv_ns / 1e3 / (double)done;
		r->cli_cpu = (double)cli_ns / 1e3 / (double)done;
	}
	base_end(&b, r);
	if (er != NULL) {
		stats_of(eln->lat.v, eln->lat.n, &s);
		er->n = eln->lat.n;
		er->failed = eln->failed;
		er->secs = (double)esecs_ns / 1e9;
		er->ops = er->secs > 0 ? (double)er->n / er->secs : NAN;
		er->p50 = s.p50;
		er->p99 = s.p99;
		er->max = s.max;
		if (er->n > 0) {
			er->srv_cpu = ecpu ? (double)ecpu / 1e3 /
			    (double)er->n : NAN;
			er->cli_cpu = (double)eccpu / 1e3 / (double)er->n;
		}
		er->steal = est;
	}
}

void
paired(struct client *cl, struct keyring *kr, struct lane *ln,
    const char *key, const char *label, enum bop op, unsigned threads,
    const struct ctset *bin)
{
	paired_run(cl, kr, ln, key, label, op, threads, bin, NULL, NULL,
	    NULL, NULL);
}

/* ---- scenarios ---- */

double g_cold_ms[16];
unsigned g_ncold;
long g_rss_idle = -1, g_rss_peak = -1, g_rss_now = -1, g_pss_now = -1;
long g_rss_peak_token = -1;
uint64_t g_cpu_clock_total, g_cpu_stat_total;
int g_exit_status = -2;
const char *g_v1_na;		/* why v1 rows are n/a, or NULL */
const char *g_storm_mode = "v1";
char g_slow_na[160];
struct bench_slow g_slow[MAX_SLOW];
size_t g_nslow;

void
slow_scenario(void)
{
	char ctl[128], rules[128], key[40], label[64];
	struct client cl;
	uint64_t t0;
	size_t i;
	int st;

	if (opt.no_slow) {
		snprintf(g_slow_na, sizeof(g_slow_na), "skipped (--no-slow)");
		return;
	}
	if (access(opt.fault_module, R_OK) != 0) {
		snprintf(g_slow_na, sizeof(g_slow_na), "fault module %.100s "
		    "not built", opt.fault_module);
		return;
	}
	snprintf(ctl, sizeof(ctl), "%s/fault.ctl", g_dir);
	snprintf(rules, sizeof(rules), "C_Encrypt delay %u\nC_Decrypt delay "
	    "%u\n", opt.slow_delay_ms, opt.slow_delay_ms);
	for (i = 0; i < opt.nslow; i++) {
		unsigned w = opt.slow_workers[i];
		struct lane enc, stat, *lanes[2] = { &enc, &stat };
		size_t n = (size_t)w * opt.slow_secs * 1000 /
		    opt.slow_delay_ms;
		struct row *re, *rs;

		/* Start fast, then slow the token down: the module re-reads
		 * its control file when it changes. */
		write_ctl(ctl, "# no faults while starting\n");
		(void)daemon_start(opt.fault_module, w, ctl, &t0);
		g_scen = "slow token: daemon start";
		g_slow[g_nslow].workers = w;
		g_slow[g_nslow].start_ms = daemon_wait_ready(t0);
		g_nslow++;
		write_ctl(ctl, rules);
		client_open(&cl, 1);
		lane_init(&enc, K_V2ENC, opt.conc, n < 4 ? 4 : n);
		enc.conn_fixed = 0;
		status_lane_init(&stat);
		snprintf(key, sizeof(key), "slow_w%u_encrypt", w);
		snprintf(label, sizeof(label), "slow %ums w=%u Encrypt c=%u",
		    opt.slow_delay_ms, w, opt.conc);
		re = row_new(key, label);
		serve(&cl, lanes, 2, re, 0);
		re->ideal = (double)w * 1000.0 / opt.slow_delay_ms;
		snprintf(key, sizeof(key), "slow_w%u_status", w);
		snprintf(label, sizeof(label), "slow %ums w=%u Status %s",
		    opt.slow_delay_ms, w, status_pace());
		rs = row_new(key, label);
		row_from_lane(rs, &stat);
		rs->steal = re->steal;
		lane_free(&enc);
		lane_free(&stat);
		client_close(&cl);
		write_ctl(ctl, "# stopping\n");
		if ((st = daemon_stop()) != 0)
			fprintf(stderr, "p11kms-bench: slow-token daemon exited "
			    "with status %d after SIGTERM\n", st);
	}
}

static const struct {
	const char *name, *rule;
} calls_forms[CALLS_FORMS] = {
	{ "IV chosen by p11kms", "" },
	{ "IV by the token, 3.0 message API", "C_EncryptInit gcm-iv message\n" },
	{ "IV by the token, appended (2.40)", "C_EncryptInit gcm-iv append\n" },
};
static char g_calls_line[CALLS_FORMS][2][256];
char g_calls_na[160];
static struct row *g_calls_rows[CALLS_FORMS][2];

static void
calls_read(struct calls *c)
{
	char name[64];
	unsigned long v;
	FILE *f;

	memset(c, 0, sizeof(*c));
	if ((f = fopen(g_counts, "r")) == NULL)
		return;
	while (c->nfn < CALLS_FN_MAX &&
	    fscanf(f, "%63s %lu", name, &v) == 2) {
		snprintf(c->fn[c->nfn], sizeof(c->fn[0]), "%s", name);
		c->n[c->nfn++] = v;
	}
	fclose(f);
}

static unsigned long
calls_of(const struct calls *c, const char *fn)
{
	size_t i;

	for (i = 0; i < c->nfn; i++)
		if (strcmp(c->fn[i], fn) == 0)
			return c->n[i];
	return 0;
}

/* "2.00 = C_EncryptInit 1.00 + C_Encrypt 1.00" for the calls between. */
static void
calls_line(const struct calls *a, const struct calls *b, size_t reqs,
    char *out, size_t cap)
{
	unsigned long d, total = 0;
	size_t i, o;

	out[0] = '\0';
	for (i = 0; i < b->nfn; i++)
		total += b->n[i] - calls_of(a, b->fn[i]);
	snprintf(out, cap, "%.2f =", reqs ? (double)total / reqs : 0.0);
	for (i = 0; i < b->nfn; i++) {
		d = b->n[i] - calls_of(a, b->fn[i]);
		if (d == 0)
			continue;
		o = strlen(out);
		snprintf(out + o, cap - o, "%s %s %.2f", o > 0 &&
		    out[o - 1] != '=' ? " +" : "", b->fn[i],
		    (double)d / reqs);
	}
}

void
calls_scenario(void)
{
	char ctl[128], key[40], label[96];
	struct calls c0, c1, c2;
	struct client cl;
	struct lane ln, *lp = &ln;
	struct ctset *cts;
	uint64_t t0;
	size_t f, n = opt.n64 / 4 ? opt.n64 / 4 : 1;
	int st;

	if (access(opt.fault_module, R_OK) != 0) {
		snprintf(g_calls_na, sizeof(g_calls_na), "fault module %.100s "
		    "not built", opt.fault_module);
		return;
	}
	snprintf(ctl, sizeof(ctl), "%s/calls.ctl", g_dir);
	snprintf(g_counts, sizeof(g_counts), "%s/calls.counts", g_dir);
	for (f = 0; f < CALLS_FORMS; f++) {
		write_ctl(ctl, calls_forms[f].rule);
		(void)daemon_start(opt.fault_module, g_daemon_workers, ctl,
		    &t0);
		g_scen = "calls: daemon start";
		(void)daemon_wait_ready(t0);
		client_open(&cl, 1);
		/* Every worker's session opens its operations first. */
		lane_init(&ln, K_V2ENC, opt.conc, 4 * opt.conc);
		run_quiet(&cl, &ln, "calls: warm-up");
		lane_free(&ln);

		cts = ctset_new(n);
		calls_read(&c0);
		snprintf(key, sizeof(key), "calls%zu_encrypt", f);
		snprintf(label, sizeof(label), "counted: v2 Encrypt c=%u, %s",
		    opt.conc, calls_forms[f].name);
		lane_init(&ln, K_V2ENC, opt.conc, n);
		ln.pt_seed = cts->seed;
		ln.out = cts;
		g_calls_rows[f][0] = row_new(key, label);
		serve(&cl, &lp, 1, g_calls_rows[f][0], 0);
		lane_free(&ln);
		calls_read(&c1);
		snprintf(key, sizeof(key), "calls%zu_decrypt", f);
		snprintf(label, sizeof(label), "counted: v2 Decrypt c=%u, %s",
		    opt.conc, calls_forms[f].name);
		lane_init(&ln, K_V2DEC, opt.conc, n);
		ln.in = cts;
		g_calls_rows[f][1] = row_new(key, label);
		serve(&cl, &lp, 1, g_calls_rows[f][1], 0);
		lane_free(&ln);
		calls_read(&c2);
		calls_line(&c0, &c1, n, g_calls_line[f][0],
		    sizeof(g_calls_line[f][0]));
		calls_line(&c1, &c2, n, g_calls_line[f][1],
		    sizeof(g_calls_line[f][1]));
		ctset_free(cts);
		client_close(&cl);
		if ((st = daemon_stop()) != 0)
			fprintf(stderr, "p11kms-bench: calls daemon exited with "
			    "status %d after SIGTERM\n", st);
	}
	g_counts[0] = '\0';
}

void
print_calls(void)
{
	size_t f;

	printf("\nPKCS#11 calls per request (the fault module's counts, in "
	    "front of the same token; probes excluded; the \"counted:\" rows' "
	    "times include the module's own cost, a file write per call, and "
	    "are no speed figure):\n");
	if (g_calls_na[0] != '\0') {
		printf("  n/a: %s\n", g_calls_na);
		return;
	}
	for (f = 0; f < CALLS_FORMS; f++) {
		if (g_calls_line[f][0][0] == '\0')
			continue;
		printf("  %-34s Encrypt %s\n", calls_forms[f].name,
		    g_calls_line[f][0]);
		printf("  %-34s Decrypt %s\n", "", g_calls_line[f][1]);
	}
}

/* Runs one unreported lane (warm-up, probes); dies if the daemon fails. */
void
run_quiet(struct client *cl, struct lane *ln, const char *what)
{
	struct lane *lp = ln;

	g_scen = what;
	if (run_lanes(cl, &lp, 1) != 0)
		die_run("failed");
}

/* Asks the daemon whether it serves v1beta1; sets g_v1_na if not. */
static void
probe_v1(struct client *cl)
{
	struct lane ln;

	lane_init(&ln, K_V1VER, 1, 1);
	ln.probe = 1;
	run_quiet(cl, &ln, "v1 Version probe");
	if (ln.unimplemented)
		g_v1_na = "v1beta1 Version answers UNIMPLEMENTED";
	else if (ln.failed)
		g_v1_na = "v1beta1 Version answered wrongly";
	lane_free(&ln);
	if (g_v1_na != NULL)
		return;
	lane_init(&ln, K_V1ENC, 1, 1);
	ln.probe = 1;
	run_quiet(cl, &ln, "v1 Encrypt probe");
	if (ln.unimplemented)
		g_v1_na = "v1beta1 Encrypt answers UNIMPLEMENTED";
	else if (ln.failed)
		g_v1_na = "v1beta1 Encrypt answered wrongly";
	lane_free(&ln);
}

/*
 * The audit log's cost: v2 Encrypt c=64 on a daemon with --audit-log and
 * --audit-sync batch against the same daemon without, in interleaved
 * rounds (a fresh daemon per side and round, each warmed up first), so both
 * sides see the same machine. The audit side is the row, the other side
 * its "base"; then audit-verify checks the file the audited daemon wrote.
 */
void
audit_scenario(void)
{
	char path[128], label[64], cmd[400];
	struct client cl;
	struct lane ln, *lp = &ln;
	struct row *r;
	struct round *rd;
	uint64_t t0, c0, c1;
	size_t slice, total_a = 0, total_b = 0;
	double secs_a = 0, secs_b = 0, cpu_a = 0, cpu_b = 0;
	unsigned k, side, K = opt.rounds, C = opt.conc;
	int audited, st;

	if (opt.audit_log != NULL)
		snprintf(path, sizeof(path), "%s", opt.audit_log);
	else
		snprintf(path, sizeof(path), "%s/audit.log", g_dir);
	(void)unlink(path);
	if (K > MAX_ROUNDS)
		K = MAX_ROUNDS;
	slice = opt.n64 / K > 0 ? opt.n64 / K : 1;
	snprintf(label, sizeof(label), "v2 Encrypt c=%u audit-log %s", C,
	    opt.audit_sync != NULL ? opt.audit_sync : "batch");
	r = row_new("audit_encrypt_c64", label);
	for (k = 0; k < K; k++) {
		rd = &r->rnd[k];
		rd->raw_first = k % 2 == 1;	/* "raw": without audit */
		for (side = 0; side < 2; side++) {
			audited = (side == 0) != (rd->raw_first != 0);
			g_ndextra = 0;
			if (audited) {
				g_dextra[g_ndextra++] = "--audit-log";
				g_dextra[g_ndextra++] = path;
				g_dextra[g_ndextra++] = "--audit-sync";
				g_dextra[g_ndextra++] = opt.audit_sync != NULL ?
				    opt.audit_sync : "batch";
			}
			(void)daemon_start(opt.module, opt.workers, NULL, &t0);
			(void)daemon_wait_ready(t0);
			client_open(&cl, opt.conns);
			lane_init(&ln, K_V2ENC, C, 4 * C);
			run_quiet(&cl, &ln, "audit warm-up");
			lane_free(&ln);
			g_scen = audited ? "audit: with --audit-log" :
			    "audit: without --audit-log";
			lane_init(&ln, K_V2ENC, C, slice);
			c0 = daemon_cpu_ns();
			if (run_lanes(&cl, &lp, 1) != 0)
				die_run("load failed");
			c1 = daemon_cpu_ns();
			if (ln.failed > 0)
				r->failed += ln.failed;
			if (audited) {
				rd->n = ln.done;
				rd->secs = (double)(ln.t_last - ln.t_first) /
				    1e9;
				rd->srv_cpu = ln.done ? (double)(c1 - c0) /
				    1e3 / (double)ln.done : NAN;
				total_a += ln.done;
				secs_a += rd->secs;
				cpu_a += (double)(c1 - c0);
			} else {
				rd->bn = ln.done;
				rd->bsecs = (double)(ln.t_last - ln.t_first) /
				    1e9;
				rd->bcpu = ln.done ? (double)(c1 - c0) / 1e3 /
				    (double)ln.done : NAN;
				total_b += ln.done;
				secs_b += rd->bsecs;
				cpu_b += (double)(c1 - c0);
			}
			lane_free(&ln);
			client_close(&cl);
			if ((st = daemon_stop()) != 0)
				fprintf(stderr, "p11kms-bench: audit daemon "
				    "exited with status %d\n", st);
		}
	}
	g_ndextra = 0;
	r->nrnd = K;
	r->n = total_a;
	r->secs = secs_a;
	r->ops = secs_a > 0 ? (double)total_a / secs_a : NAN;
	r->p50 = r->p99 = r->max = NAN;
	r->srv_cpu = total_a ? cpu_a / 1e3 / (double)total_a : NAN;
	r->base.has = 1;
	r->base.threads = g_daemon_workers;
	r->base.n = total_b;
	r->base.secs = secs_b;
	r->base.ops = secs_b > 0 ? (double)total_b / secs_b : NAN;
	r->base.p50 = r->base.p99 = r->base.max = NAN;
	r->base.cpu = total_b ? cpu_b / 1e3 / (double)total_b : NAN;
	snprintf(cmd, sizeof(cmd), "'%s' audit-verify '%s' | head -n 1",
	    opt.daemon, path);
	printf("audit log of the audited rounds: ");
	fflush(stdout);
	if (system(cmd) != 0)
		printf("(audit-verify could not run)\n");
}

double g_c1s_p99[MAX_ROUNDS][2];
unsigned g_c1s_nrnd;

/* A row from a lane run over several rounds (secs_ns: their sum). */
static void
row_from_rounds(struct row *r, struct lane *ln, uint64_t secs_ns,
    uint64_t srv_ns, uint64_t cli_ns, size_t reqs)
{
	row_from_lane(r, ln);
	r->n = ln->lat.n;
	r->secs = (double)secs_ns / 1e9;
	r->ops = r->secs > 0 ? (double)r->n / r->secs : NAN;
	if (reqs > 0) {
		r->srv_cpu = (double)srv_ns / 1e3 / (double)reqs;
		r->cli_cpu = (double)cli_ns / 1e3 / (double)reqs;
	}
}

/* A lane's next slice: requests [first, first + total). */
static void
lane_slice(struct lane *ln, size_t first, size_t total)
{
	ln->first = first;
	ln->total = total;
	ln->issued = ln->done = 0;
	ln->t_first = ln->t_last = 0;
}

/*
 * Status beside a lone Encrypt: one Status every --status-interval-us on a
 * second connection, the daemon otherwise idle, against the same with
 * Encrypt c=1 back to back on the first connection, in interleaved rounds
 * (idle first in rounds 1, 3, 5, ...). Both sides send the same Status
 * calls (n1/4 in all); the Encrypt lane runs until the loaded side's Status
 * calls are answered. A token call run on the loop thread, or a worker
 * hand-off that holds the loop, shows here as a Status p99 above the idle
 * one.
 */
static void
c1_status_scenario(void)
{
	struct client cl;
	struct lane idle, stat, enc, *ip = &idle, *loaded[2] = { &stat, &enc };
	struct row *ri, *rs, *re;
	struct stats s;
	size_t M = opt.n1 / 4 ? opt.n1 / 4 : 1, lo, hi, n0, nreq_i = 0;
	size_t nreq_l = 0, enc_next = 0;
	uint64_t srv, cli, srv_i = 0, cli_i = 0, srv_l = 0, cli_l = 0;
	uint64_t secs_i = 0, secs_l = 0, secs_e = 0;
	unsigned k, K = opt.rounds, side;
	char label[64];

	if (opt.status_interval_us == 0)
		return;		/* back to back Status: no pace to compare */
	if (K > M)
		K = (unsigned)M;
	client_open(&cl, 2);
	status_lane_init(&idle);
	idle.conn_fixed = 1;
	status_lane_init(&stat);
	stat.conn_fixed = 1;
	lane_init(&enc, K_V2ENC, 1, 0);	/* background: while Status runs */
	enc.conn_fixed = 0;
	snprintf(label, sizeof(label), "Status %s, 2nd conn, idle",
	    status_pace());
	ri = row_new("status2_idle", label);
	snprintf(label, sizeof(label), "Status %s, 2nd conn, Enc c=1",
	    status_pace());
	rs = row_new("status2_encrypt_c1", label);
	re = row_new("encrypt_c1_status2", "Encrypt c=1 + Status on 2nd conn");
	for (k = 0; k < K; k++) {
		lo = M * k / K;
		hi = M * (k + 1) / K;
		for (side = 0; side < 2; side++) {
			srv = cli = 0;
			if ((side == 0) == (k % 2 == 0)) {
				g_scen = ri->label;
				lane_slice(&idle, lo, hi - lo);
				n0 = idle.lat.n;
				nreq_i += serve_run(&cl, &ip, 1, &srv, &cli,
				    &ri->steal);
				srv_i += srv;
				cli_i += cli;
				secs_i += idle.t_last - idle.t_first;
				slice_stats(idle.lat.v + n0, idle.lat.n - n0,
				    &s);
				g_c1s_p99[k][0] = s.p99;
				continue;
			}
			g_scen = rs->label;
			lane_slice(&stat, lo, hi - lo);
			lane_slice(&enc, enc_next, 0);
			n0 = stat.lat.n;
			nreq_l += serve_run(&cl, loaded, 2, &srv, &cli,
			    &rs->steal);
			enc_next += enc.issued;
			srv_l += srv;
			cli_l += cli;
			secs_l += stat.t_last - stat.t_first;
			secs_e += enc.t_last - enc.t_first;
			slice_stats(stat.lat.v + n0, stat.lat.n - n0, &s);
			g_c1s_p99[k][1] = s.p99;
		}
	}
	g_c1s_nrnd = K;
	row_from_rounds(ri, &idle, secs_i, srv_i, cli_i, nreq_i);
	row_from_rounds(rs, &stat, secs_l, srv_l, cli_l, nreq_l);
	row_from_rounds(re, &enc, secs_e, srv_l, cli_l, nreq_l);
	re->steal = rs->steal;
	lane_free(&idle);
	lane_free(&stat);
	lane_free(&enc);
	client_close(&cl);
}

void
server_scenarios(struct keyring *kr)
{
	struct client cl, ecl;
	struct lane ln, eln, enc, stat, *mixed[2] = { &enc, &stat };
	struct ctset *e1 = NULL, *e64 = NULL, *v64 = NULL;
	struct row *r;
	unsigned T = g_daemon_workers, C = opt.conc;
	char label[64];
	int echo = want(S_ECHO) && echo_running();

	client_open(&cl, opt.conns);

	/* Warm-up (checked, not reported). */
	lane_init(&ln, K_V2ENC, C, 4 * C);
	run_quiet(&cl, &ln, "warm-up");
	lane_free(&ln);

	/* The echo baseline: one connection, as many requests warm it. */
	if (echo) {
		client_open_path(&ecl, 1, g_echo_sock);
		lane_init(&ln, K_V2ENC, 1, 4 * C);
		run_quiet(&ecl, &ln, "echo warm-up");
		lane_free(&ln);
		lane_init(&ln, K_V2DEC, 1, 4 * C);
		ln.in = g_echo_in;
		run_quiet(&ecl, &ln, "echo warm-up");
		lane_free(&ln);
	}

	if (want(S_STATUS)) {
		lane_init(&ln, K_STATUS, 1, opt.n1);
		serve1(&cl, &ln, "status_c1", "Status c=1");
		lane_free(&ln);
		snprintf(label, sizeof(label), "Status c=%u", C);
		lane_init(&ln, K_STATUS, C, opt.n64);
		serve1(&cl, &ln, "status_c64", label);
		lane_free(&ln);
		/* The reference for Status under load: same pace, idle. */
		if (opt.status_interval_us > 0) {
			status_lane_init(&ln);
			ln.total = opt.n1 / 4 ? opt.n1 / 4 : 1;
			snprintf(label, sizeof(label), "Status %s, idle",
			    status_pace());
			serve1(&cl, &ln, "status_paced", label);
			lane_free(&ln);
		}
	}

	/* Encrypt makes the distinct ciphertexts Decrypt and storm use. */
	if (want(S_ENCRYPT)) {
		e1 = ctset_new(opt.n1);
		lane_init(&ln, K_V2ENC, 1, opt.n1);
		ln.pt_seed = e1->seed;
		ln.out = e1;
		if (echo) {
			lane_init(&eln, K_V2ENC, 1, opt.n1);
			paired_run(&cl, kr, &ln, "v2_encrypt_c1",
			    "v2 Encrypt c=1", B_SEAL, 1, NULL, &ecl, &eln,
			    "echo_v2_encrypt_c1", "echo v2 Encrypt c=1 "
			    "(fixed reply)");
			lane_free(&eln);
		} else {
			paired(&cl, kr, &ln, "v2_encrypt_c1",
			    "v2 Encrypt c=1", B_SEAL, 1, NULL);
		}
		lane_free(&ln);

		e64 = ctset_new(opt.n64);
		snprintf(label, sizeof(label), "v2 Encrypt c=%u", C);
		lane_init(&ln, K_V2ENC, C, opt.n64);
		ln.pt_seed = e64->seed;
		ln.out = e64;
		paired(&cl, kr, &ln, "v2_encrypt_c64", label, B_SEAL, T,
		    NULL);
		lane_free(&ln);
	}

	if (want(S_DECRYPT)) {
		lane_init(&ln, K_V2DEC, 1, opt.n1);
		ln.in = e1;
		if (echo) {
			lane_init(&eln, K_V2DEC, 1, opt.n1);
			eln.in = g_echo_in;
			paired_run(&cl, kr, &ln, "v2_decrypt_c1",
			    "v2 Decrypt c=1", B_OPEN_V2, 1, e1, &ecl, &eln,
			    "echo_v2_decrypt_c1", "echo v2 Decrypt c=1 "
			    "(fixed reply)");
			lane_free(&eln);
		} else {
			paired(&cl, kr, &ln, "v2_decrypt_c1",
			    "v2 Decrypt c=1", B_OPEN_V2, 1, e1);
		}
		lane_free(&ln);

		snprintf(label, sizeof(label), "v2 Decrypt c=%u", C);
		lane_init(&ln, K_V2DEC, C, opt.n64);
		ln.in = e64;
		paired(&cl, kr, &ln, "v2_decrypt_c64", label, B_OPEN_V2, T,
		    e64);
		lane_free(&ln);
	}

	/* Status next to Encrypt load, same connection. */
	if (want(S_MIXED)) {
		lane_init(&enc, K_V2ENC, C, opt.n64);
		enc.conn_fixed = 0;
		status_lane_init(&stat);
		snprintf(label, sizeof(label), "Encrypt c=%u + Status %s", C,
		    status_pace());
		r = row_new("mixed_encrypt", label);
		serve(&cl, mixed, 2, r, 0);
		snprintf(label, sizeof(label), "Status %s under Encrypt c=%u",
		    status_pace(), C);
		row_from_lane(row_new("mixed_status", label), &stat);
		g_rows[g_nrows - 1].steal = r->steal;
		lane_free(&enc);
		lane_free(&stat);
	}

	/* Status on its own connection beside a lone Encrypt, and idle. */
	if (want(S_MIXED))
		c1_status_scenario();

	/* v1beta1: n/a while the daemon does not serve it. */
	if (want(S_V1)) {
		probe_v1(&cl);
		snprintf(label, sizeof(label), "v1 Encrypt c=%u", C);
		if (g_v1_na != NULL) {
			row_na("v1_encrypt_c1", "v1 Encrypt c=1", g_v1_na);
			row_na("v1_encrypt_c64", label, g_v1_na);
		} else {
			lane_init(&ln, K_V1ENC, 1, opt.n1);
			paired(&cl, kr, &ln, "v1_encrypt_c1", "v1 Encrypt c=1",
			    B_SEAL, 1, NULL);
			lane_free(&ln);
			v64 = ctset_new(opt.n64);
			lane_init(&ln, K_V1ENC, C, opt.n64);
			ln.pt_seed = v64->seed;
			ln.out = v64;
			paired(&cl, kr, &ln, "v1_encrypt_c64", label, B_SEAL,
			    T, NULL);
			lane_free(&ln);
		}
	}

	/* Restart storm: opt.storm distinct DEK Decrypts at c=C. */
	if (want(S_STORM)) {
		if (g_v1_na != NULL) {
			g_storm_mode = "v2-stand-in";
			snprintf(label, sizeof(label), "storm* v2 Decrypt c=%u "
			    "x%zu", C, opt.storm);
			lane_init(&ln, K_V2DEC, C, opt.storm);
			ln.in = e64;
		} else {
			snprintf(label, sizeof(label), "storm v1 Decrypt c=%u "
			    "x%zu", C, opt.storm);
			lane_init(&ln, K_V1DEC, C, opt.storm);
			ln.in = v64;
		}
		if (opt.storm > opt.n64)
			fprintf(stderr, "p11kms-bench: --storm %zu > "
			    "--requests %zu: storm ciphertexts repeat\n",
			    opt.storm, opt.n64);
		/* The raw work of a v1 Decrypt: open, the envelope names
		 * the key. */
		paired(&cl, kr, &ln, "storm", label, B_OPEN_V1, T, e64);
		lane_free(&ln);
	}

	if (echo)
		client_close(&ecl);
	g_rss_peak = tree_status_kib("VmHWM", &g_rss_peak_token);
	g_rss_now = tree_status_kib("VmRSS", NULL);
	g_pss_now = tree_smaps_kib("Pss");
	g_cpu_clock_total = daemon_cpu_ns();
	g_cpu_stat_total = proc_stat_cpu_ns(g_daemon);
	client_close(&cl);
	ctset_free(e1);
	ctset_free(e64);
	ctset_free(v64);
}
