/*
 * bench_report: the bench's output (bench.h): the results table, the
 * targets and their verdicts, steal time over the run, the PKCS#11 calls
 * table, and BENCH_JSON.
 */
#include "tests/bench/bench.h"

/* ---- output ---- */

/* v with prec decimals, "-" when unknown. */
static void
fmt_num(char *buf, size_t cap, double v, int prec)
{
	if (isnan(v))
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.*f", prec, v);
}

/* Ratio of a round: served ops/s / raw ops/s. */
static double
round_ratio(const struct round *rd)
{
	if (rd->secs <= 0 || rd->bsecs <= 0 || rd->bn == 0)
		return NAN;
	return ((double)rd->n / rd->secs) / ((double)rd->bn / rd->bsecs);
}

/* Steal % for the table: "n/a" under STEAL_MIN_TICKS ticks. */
static void
fmt_steal(char *buf, size_t cap, const struct steal *st)
{
	double v = steal_pct(st);

	if (isnan(v))
		snprintf(buf, cap, "n/a");
	else
		snprintf(buf, cap, "%.1f", v);
}

/* "  rounds: 0.84 0.81 ..." for n values. */
static void
print_rounds(const char *indent, const double *v, unsigned n, int prec)
{
	unsigned k;

	printf("%srounds:", indent);
	for (k = 0; k < n; k++)
		if (isnan(v[k]))
			printf(" -");
		else
			printf(" %.*f", prec, v[k]);
	printf("\n");
}

/* Served p50 / (echo p50 + raw p50): the c=1 floor ratio, whole row or
 * round k (k < 0). NAN without an echo. */
static double
floor_ratio(const struct row *r, const struct row *er, int k)
{
	const struct round *rd;

	if (r == NULL || er == NULL || !r->base.has)
		return NAN;
	if (k < 0)
		return r->p50 / (er->p50 + r->base.p50);
	rd = &r->rnd[k];
	if (!rd->has_echo)
		return NAN;
	return rd->p50 / (rd->ep50 + rd->bp50);
}

static const struct row *
echo_of(const struct row *r)
{
	return r != NULL && r->echo_key[0] != '\0' ? row_find(r->echo_key) :
	    NULL;
}

/* The c=1 rows beside their floor, and Status beside a lone Encrypt. */
static void
print_floor(void)
{
	static const char *const keys[] = { "v2_encrypt_c1", "v2_decrypt_c1" };
	const struct row *r, *er, *si = row_find("status2_idle");
	const struct row *sl = row_find("status2_encrypt_c1");
	double v[MAX_ROUNDS];
	size_t i;
	unsigned k;
	int any = 0;

	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		r = row_find(keys[i]);
		if ((er = echo_of(r)) == NULL || r->na || er->na)
			continue;
		if (!any++)
			printf("\nc=1 against its floor (echo round trip + raw "
			    "op, same rounds), us:\n  %-16s %8s %8s %8s %8s "
			    "%8s %8s %8s %8s\n", "", "p50", "p99", "echo p50",
			    "echo p99", "raw p50", "raw p99", "floor",
			    "p50/flr");
		printf("  %-16s %8.0f %8.0f %8.1f %8.1f %8.1f %8.1f %8.1f "
		    "%8.2f\n", r->label, r->p50, r->p99, er->p50, er->p99,
		    r->base.p50, r->base.p99, er->p50 + r->base.p50,
		    floor_ratio(r, er, -1));
		for (k = 0; k < r->nrnd; k++)
			v[k] = floor_ratio(r, er, (int)k);
		if (r->nrnd > 1)
			print_rounds("      p50/floor ", v, r->nrnd, 2);
	}
	if (si == NULL || sl == NULL || si->na || sl->na)
		return;
	printf("\nStatus %s on a 2nd connection, us:\n  %-34s %8s %8s %8s\n",
	    status_pace(), "", "p50", "p99", "max");
	printf("  %-34s %8.0f %8.0f %8.0f\n", "idle daemon", si->p50,
	    si->p99, si->max);
	printf("  %-34s %8.0f %8.0f %8.0f\n", "Encrypt c=1 on the 1st conn",
	    sl->p50, sl->p99, sl->max);
	if (g_c1s_nrnd > 1) {
		printf("      p99 rounds, idle / beside Encrypt:");
		for (k = 0; k < g_c1s_nrnd; k++)
			printf(" %.0f/%.0f", g_c1s_p99[k][0], g_c1s_p99[k][1]);
		printf("\n");
	}
}

void
print_table(void)
{
	char ops[16], p50[16], p99[16], mx[16], cpu[16], bops[16], ratio[16];
	char steal[16];
	double rr[MAX_ROUNDS];
	size_t i;
	unsigned k;
	int any = 0;

	printf("\n%-36s %9s %8s %8s %9s %9s %10s %6s %6s\n", "scenario",
	    "ops/s", "p50 us", "p99 us", "max us", "srvCPU/rq", "base ops/s",
	    "ratio", "steal%");
	for (i = 0; i < g_nrows; i++) {
		struct row *r = &g_rows[i];
		double b = r->base.has ? r->base.ops : r->ideal;

		if (r->na) {
			printf("%-36s %9s  (%s)\n", r->label, "n/a", r->why);
			continue;
		}
		fmt_num(ops, sizeof(ops), r->ops, 0);
		fmt_num(p50, sizeof(p50), r->p50, 0);
		fmt_num(p99, sizeof(p99), r->p99, 0);
		fmt_num(mx, sizeof(mx), r->max, 0);
		fmt_num(cpu, sizeof(cpu), r->srv_cpu, 1);
		fmt_num(bops, sizeof(bops), b, 0);
		if (!r->base.has && !isnan(b))
			strcat(bops, "*");	/* ideal, not measured */
		fmt_num(ratio, sizeof(ratio), isnan(b) ? NAN : r->ops / b, 2);
		fmt_steal(steal, sizeof(steal), &r->steal);
		printf("%-36s %9s %8s %8s %9s %9s %10s %6s %6s%s\n", r->label,
		    ops, p50, p99, mx, cpu, bops, ratio, steal,
		    r->failed ? "  FAILED" : "");
	}
	for (i = 0; i < g_nrows; i++) {
		struct row *r = &g_rows[i];

		if (r->na || r->nrnd < 2)
			continue;
		if (!any++)
			printf("\nratio per round (served ops/s / raw ops/s for "
			    "the same slice; rounds alternate\n  served "
			    "first, raw first, ...):\n");
		for (k = 0; k < r->nrnd; k++)
			rr[k] = round_ratio(&r->rnd[k]);
		printf("  %-36s", r->label);
		print_rounds(" ", rr, r->nrnd, 2);
	}
	print_floor();
	printf("\nbaseline: the same seal/open in-process (keyring API, same "
	    "token and key),\n  1 thread for c=1, %u threads (= daemon "
	    "workers) otherwise; ratio = ops/s / baseline ops/s.\n",
	    g_daemon_workers);
	printf("rounds: %u per scenario with a baseline (at most one per "
	    "request), each a slice\n  served then the same slice raw, or "
	    "raw then served; ops/s = requests / time\n  summed over the "
	    "side's rounds.\n", opt.rounds);
	printf("steal%%: the hypervisor's share of all CPU ticks (/proc/stat) "
	    "while the served side\n  ran; n/a under %d ticks.\n",
	    STEAL_MIN_TICKS);
	if (strcmp(g_storm_mode, "v1") != 0)
		printf("storm*: v1 is n/a (%s); v2 Decrypt stands in.\n",
		    g_v1_na);
	if (g_slow_na[0] != '\0')
		printf("slow token: n/a (%s)\n", g_slow_na);
	else
		printf("slow token: base ops/s* is the ideal, workers x "
		    "1000 / delay ms.\n");
}

static struct target g_t[32];
static size_t g_nt;

void
target(const char *key, const char *what, const char *unit, double value,
    double limit, int le)
{
	struct target *t;

	if (g_nt == sizeof(g_t) / sizeof(g_t[0]))
		die("too many targets");
	t = &g_t[g_nt++];
	memset(t, 0, sizeof(*t));
	t->key = key;
	t->what = what;
	t->unit = unit;
	t->value = value;
	t->limit = limit;
	t->le = le;
}

/* The last target's figure per round. */
static void
target_rounds(const double *v, unsigned n)
{
	struct target *t = &g_t[g_nt - 1];

	if (n < 2)
		return;
	memcpy(t->rounds, v, n * sizeof(*v));
	t->nrounds = n;
}

/* Two rows' rounds can be paired up: both paired, same count. */
static unsigned
common_rounds(const struct row *a, const struct row *b)
{
	if (a == NULL || !a->base.has || a->nrnd == 0)
		return 0;
	if (b != NULL && (!b->base.has || b->nrnd != a->nrnd))
		return 0;
	return a->nrnd;
}

double
median(double *v, size_t n)
{
	size_t i, j;
	double x;

	if (n == 0)
		return NAN;
	for (i = 1; i < n; i++)		/* insertion sort: n is tiny */
		for (j = i; j > 0 && v[j - 1] > v[j]; j--) {
			x = v[j];
			v[j] = v[j - 1];
			v[j - 1] = x;
		}
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* --only tokproc: on against off, from the rounds of one run. */
static void
tokproc_targets(double *rv)
{
	struct row *e = row_find("tokproc_encrypt");
	struct row *d = row_find("tokproc_decrypt");
	struct row *s = row_find("tokproc_status");
	const struct round *a, *b;
	double on, off;
	unsigned k, n;

	if (e == NULL || d == NULL || !e->base.has || !d->base.has)
		return;
	on = (double)(e->n + d->n) / (e->secs + d->secs);
	off = (double)(e->base.n + d->base.n) / (e->base.secs + d->base.secs);
	target("tokproc_ratio", "token process on / off, v2 Encrypt+Decrypt "
	    "c=64 ops/s (same run)", "x", on / off, 0.9, 0);
	n = e->nrnd < d->nrnd ? e->nrnd : d->nrnd;
	for (k = 0; k < n; k++) {
		a = &e->rnd[k];
		b = &d->rnd[k];
		rv[k] = a->secs + b->secs > 0 && a->bsecs + b->bsecs > 0 ?
		    ((double)(a->n + b->n) / (a->secs + b->secs)) /
		    ((double)(a->bn + b->bn) / (a->bsecs + b->bsecs)) : NAN;
	}
	target_rounds(rv, n);
	target("tokproc_cpu_us", "server CPU per request, on - off, both "
	    "processes (Enc+Dec c=64)", "us",
	    (e->srv_cpu * (double)e->n + d->srv_cpu * (double)d->n) /
	    (double)(e->n + d->n) -
	    (e->base.cpu * (double)e->base.n + d->base.cpu * (double)d->base.n) /
	    (double)(e->base.n + d->base.n), 5, 1);
	for (k = 0; k < n; k++) {
		a = &e->rnd[k];
		b = &d->rnd[k];
		rv[k] = (a->srv_cpu * (double)a->n + b->srv_cpu * (double)b->n) /
		    (double)(a->n + b->n) - (a->bcpu * (double)a->bn +
		    b->bcpu * (double)b->bn) / (double)(a->bn + b->bn);
	}
	target_rounds(rv, n);
	if (s != NULL && s->base.p99 > 0)
		target("tokproc_status_p99", "Status p99 beside Encrypt c=64, "
		    "on / off", "x", s->p99 / s->base.p99, 1.25, 1);
	if (g_tokproc_mem.has)
		target("tokproc_pss_mib", "memory with the token process: PSS "
		    "over every process", "MiB", (double)g_tokproc_mem.pss_on /
		    1024, 16, 1);
}

/* The median of the figures of v that are numbers; v is left as it is. */
static double
median_of(const double *v, unsigned n)
{
	double w[MAX_ROUNDS];
	unsigned k, m = 0;

	for (k = 0; k < n && k < MAX_ROUNDS; k++)
		if (!isnan(v[k]))
			w[m++] = v[k];
	return median(w, m);
}

void
compute_targets(void)
{
	struct row *e = row_find("v2_encrypt_c64"), *d = row_find("v2_decrypt_c64");
	struct row *ms = row_find("mixed_status"), *st = row_find("storm");
	double cold[16], srv, raw, ratio = NAN, rv[MAX_ROUNDS];
	size_t i;
	unsigned k, nr;

	if (e && d && e->base.has && d->base.has) {
		srv = (double)(e->n + d->n) / (e->secs + d->secs);
		raw = (double)(e->base.n + d->base.n) /
		    (e->base.secs + d->base.secs);
		ratio = srv / raw;
	}
	target("encdec_ratio", "v2 Encrypt+Decrypt c=64 ops/s / raw baseline",
	    "x", ratio, 0.8, 0);
	/* Round k of Encrypt with round k of Decrypt. */
	nr = d != NULL ? common_rounds(e, d) : 0;
	for (k = 0; k < nr; k++) {
		const struct round *a = &e->rnd[k], *b = &d->rnd[k];

		rv[k] = ((double)(a->n + b->n) / (a->secs + b->secs)) /
		    ((double)(a->bn + b->bn) / (a->bsecs + b->bsecs));
	}
	target_rounds(rv, nr);
	target("overhead_encrypt_us", "server overhead, Encrypt c=64 "
	    "(srv CPU/req - raw CPU/op)", "us", e && e->base.has ?
	    e->srv_cpu - e->base.cpu : NAN, 10, 1);
	nr = common_rounds(e, NULL);
	for (k = 0; k < nr; k++)
		rv[k] = e->rnd[k].srv_cpu - e->rnd[k].bcpu;
	target_rounds(rv, nr);
	target("overhead_decrypt_us", "server overhead, Decrypt c=64 "
	    "(srv CPU/req - raw CPU/op)", "us", d && d->base.has ?
	    d->srv_cpu - d->base.cpu : NAN, 10, 1);
	nr = common_rounds(d, NULL);
	for (k = 0; k < nr; k++)
		rv[k] = d->rnd[k].srv_cpu - d->rnd[k].bcpu;
	target_rounds(rv, nr);
	target("status_p99_under_encrypt_us", "Status p99 under Encrypt c=64, "
	    "same connection", "us", ms ? ms->p99 : NAN, 200, 1);
	target("rss_peak_mib", g_rss_peak_token > 0 ?
	    "daemon peak RSS (VmHWM) incl. SoftHSM, summed" :
	    "daemon peak RSS (VmHWM) incl. SoftHSM", "MiB",
	    g_rss_peak >= 0 ? (double)g_rss_peak / 1024 : NAN, 16, 1);
	/* With a token process the sum counts each shared page per process. */
	if (g_rss_peak_token > 0)
		target("pss_mib", "  the same as PSS after load (each page "
		    "once)", "MiB", g_pss_now >= 0 ? (double)g_pss_now / 1024 :
		    NAN, 16, 1);
	memcpy(cold, g_cold_ms, sizeof(cold));
	target("cold_start_ms", "cold start to first Status (median)", "ms",
	    median(cold, g_ncold), 100, 1);
	target("storm_time_ratio", strcmp(g_storm_mode, "v1") == 0 ?
	    "v1 storm time / raw baseline time" :
	    "storm time / raw baseline (v2 stand-in, v1 n/a)", "x",
	    st && st->base.has ? st->secs / st->base.secs : NAN, 1.25, 1);
	nr = common_rounds(st, NULL);
	for (k = 0; k < nr; k++)
		rv[k] = st->rnd[k].bsecs > 0 ? st->rnd[k].secs /
		    st->rnd[k].bsecs : NAN;
	target_rounds(rv, nr);
	if (g_nslow > 0) {
		double worst = NAN;

		for (i = 0; i < g_nslow; i++) {
			char key[40];
			struct row *rs;

			snprintf(key, sizeof(key), "slow_w%u_status",
			    g_slow[i].workers);
			if ((rs = row_find(key)) != NULL &&
			    (isnan(worst) || rs->p99 > worst))
				worst = rs->p99;
		}
		target("slow_status_p99_us", "Status p99 with a slow token "
		    "(worst worker count)", "us", worst, 200, 1);
	}
	if ((st = row_find("audit_encrypt_c64")) != NULL && st->base.has) {
		target("audit_ratio", "v2 Encrypt c=64 ops/s with --audit-log "
		    "--audit-sync batch / without (same run)", "x",
		    st->ops / st->base.ops, 0.9, 0);
		for (k = 0; k < st->nrnd; k++)
			rv[k] = st->rnd[k].secs > 0 && st->rnd[k].bsecs > 0 ?
			    ((double)st->rnd[k].n / st->rnd[k].secs) /
			    ((double)st->rnd[k].bn / st->rnd[k].bsecs) : NAN;
		target_rounds(rv, st->nrnd);
		/*
		 * Load from elsewhere on a shared machine hits one side of a
		 * round now and then, and a daemon start can land in a slow
		 * mode for its whole slice: the median of the rounds' ratios
		 * shrugs off a few such rounds, the sums do not.
		 */
		target("audit_ratio_median", "the same, median of the "
		    "per-round ratios above", "x", median_of(rv, st->nrnd),
		    0.9, 0);
		/* The limit: what a 0.9 ratio allows if CPU were all. */
		for (k = 0; k < st->nrnd; k++)
			rv[k] = st->rnd[k].srv_cpu - st->rnd[k].bcpu;
		target("audit_cpu_us", "server CPU/req added by the audit "
		    "(median of rounds)", "us", median_of(rv, st->nrnd),
		    (double)(long)(st->base.cpu + 0.5) / 10, 1);
		target_rounds(rv, st->nrnd);
	}
	tokproc_targets(rv);
	if ((st = row_find("status_paced")) != NULL)
		target("idle_status_p99_us", "Status p99 idle, same pace "
		    "(reference for the two above)", "us", st->p99, 200, 1);
	/* Issue 15: a lone request against the floor under it. */
	e = row_find("v2_encrypt_c1");
	d = row_find("v2_decrypt_c1");
	if (echo_of(e) != NULL) {
		target("floor_encrypt_c1", "v2 Encrypt p50 c=1 / (echo + raw "
		    "seal)", "x", floor_ratio(e, echo_of(e), -1), 1.5, 1);
		for (k = 0; k < e->nrnd; k++)
			rv[k] = floor_ratio(e, echo_of(e), (int)k);
		target_rounds(rv, e->nrnd);
	}
	if (echo_of(d) != NULL) {
		target("floor_decrypt_c1", "v2 Decrypt p50 c=1 / (echo + raw "
		    "open)", "x", floor_ratio(d, echo_of(d), -1), 1.5, 1);
		for (k = 0; k < d->nrnd; k++)
			rv[k] = floor_ratio(d, echo_of(d), (int)k);
		target_rounds(rv, d->nrnd);
	}
	e = row_find("status2_idle");
	d = row_find("status2_encrypt_c1");
	if (e != NULL && d != NULL) {
		target("status_p99_encrypt_c1_vs_idle", "Status p99 beside "
		    "Encrypt c=1, 2nd conn / idle", "x", d->p99 / e->p99, 1.0,
		    1);
		for (k = 0; k < g_c1s_nrnd; k++)
			rv[k] = g_c1s_p99[k][1] / g_c1s_p99[k][0];
		target_rounds(rv, g_c1s_nrnd);
	}
}

void
print_targets(void)
{
	size_t i, k;

	printf("\nTargets (reported, not asserted):\n");
	for (i = 0; i < g_nt; i++) {
		struct target *t = &g_t[i];
		const char *v = isnan(t->value) ? "n/a" :
		    (t->le ? t->value <= t->limit : t->value >= t->limit) ?
		    "met" : "MISSED";

		if (isnan(t->value))
			printf("  %-58s %10s\n", t->what, "n/a");
		else
			printf("  %-58s %10.*f %-3s (%s %g) %s\n", t->what,
			    strcmp(t->unit, "x") == 0 ? 3 : 1, t->value,
			    t->unit, t->le ? "<=" : ">=", t->limit, v);
		if (t->nrounds > 0)
			print_rounds("      ", t->rounds, t->nrounds,
			    strcmp(t->unit, "x") == 0 ? 2 : 1);
	}
	for (i = 0, k = 0; i < g_nrows; i++) {
		const struct row *r = &g_rows[i];

		if (r->na || !r->has_tail)
			continue;
		if (k++ == 0)
			printf("  the slowest 1%% of paced Status calls, mean us: "
			    "bench before its write / write to read\n"
			    "  (daemon, socket, scheduler) / bench after "
			    "its read:\n");
		printf("      %-42s %6.0f / %6.0f / %6.0f\n", r->label,
		    r->tail[0], r->tail[1], r->tail[2]);
	}
	if (g_nslow > 0) {
		printf("  slow token (%u ms/call): Encrypt ops/s by workers:",
		    opt.slow_delay_ms);
		for (i = 0; i < g_nslow; i++) {
			char key[40];
			struct row *r;

			snprintf(key, sizeof(key), "slow_w%u_encrypt",
			    g_slow[i].workers);
			if ((r = row_find(key)) != NULL)
				printf(" w=%u:%.1f", g_slow[i].workers, r->ops);
		}
		printf("\n");
	}
}

struct steal g_run_steal;	/* the whole run */
double g_run_secs;

/* --only tokproc: the memory of both daemons, every process. */
void
print_tokproc_mem(void)
{
	const struct tokproc_mem *m = &g_tokproc_mem;

	if (!m->has)
		return;
	printf("\nmemory over every process of the daemon, largest of the "
	    "tokproc rounds:\n  token process on:  PSS %.1f MiB, peak RSS "
	    "summed %.1f MiB (shared pages counted\n  in each process)\n"
	    "  token process off: PSS %.1f MiB, peak RSS %.1f MiB\n",
	    (double)m->pss_on / 1024, (double)m->rss_on / 1024,
	    (double)m->pss_off / 1024, (double)m->rss_off / 1024);
}

/* The whole run's steal, and a plain warning when it is high. */
void
print_run_steal(void)
{
	double v = steal_pct(&g_run_steal);

	if (isnan(v)) {
		printf("\nsteal over the whole run: n/a (/proc/stat %s)\n",
		    g_run_steal.bad ? "unreadable" : "gave too few ticks");
		return;
	}
	printf("\nsteal over the whole run: %.1f %% of all CPU ticks "
	    "(%.1f s, %ld CPUs)\n", v, g_run_secs,
	    sysconf(_SC_NPROCESSORS_ONLN));
	if (v > 5.0)
		printf("note: the hypervisor took %.1f %% of this machine's CPU "
		    "during the run; absolute latencies are inflated, ratios "
		    "less so\n", v);
}

void
jprintf(struct jbuf *j, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(j->p ? j->p + j->len : NULL,
		    j->p ? j->cap - j->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			die("vsnprintf failed");
		if (j->p != NULL && (size_t)n < j->cap - j->len) {
			j->len += (size_t)n;
			return;
		}
		j->cap = 2 * (j->cap + (size_t)n + 64);
		if ((j->p = realloc(j->p, j->cap)) == NULL)
			die("out of memory");
	}
}

static void
jsep(struct jbuf *j)
{
	if (j->len > 0 && j->p[j->len - 1] != '{' && j->p[j->len - 1] != '[')
		jprintf(j, ",");
}

/* Keys and strings here are the bench's own: no escaping needed but '"'. */
static void
jstr(struct jbuf *j, const char *k, const char *v)
{
	const char *s;

	jsep(j);
	jprintf(j, "\"%s\":", k);
	if (v == NULL) {
		jprintf(j, "null");
		return;
	}
	jprintf(j, "\"");
	for (s = v; *s; s++)
		jprintf(j, *s == '"' || *s == '\\' ? "\\%c" :
		    (unsigned char)*s < 0x20 ? "?" : "%c", *s);
	jprintf(j, "\"");
}

static void
jnum(struct jbuf *j, const char *k, double v)
{
	jsep(j);
	if (isnan(v) || isinf(v))
		jprintf(j, "\"%s\":null", k);
	else
		jprintf(j, "\"%s\":%.3f", k, v);
}

static void
jint(struct jbuf *j, const char *k, long long v)
{
	jsep(j);
	jprintf(j, "\"%s\":%lld", k, v);
}

static void
jobj(struct jbuf *j, const char *k)
{
	jsep(j);
	if (k != NULL)
		jprintf(j, "\"%s\":{", k);
	else
		jprintf(j, "{");
}

/* "k":[v0,v1,...] */
static void
jarr(struct jbuf *j, const char *k, const double *v, unsigned n)
{
	unsigned i;

	jsep(j);
	jprintf(j, "\"%s\":[", k);
	for (i = 0; i < n; i++) {
		if (isnan(v[i]) || isinf(v[i]))
			jprintf(j, "%snull", i ? "," : "");
		else
			jprintf(j, "%s%.3f", i ? "," : "", v[i]);
	}
	jprintf(j, "]");
}

/* "served-raw", "raw-echo-served", ... */
static const char *
order_name(const struct round *rd)
{
	static char buf[32];
	size_t i;

	buf[0] = '\0';
	for (i = 0; rd->order[i] != '\0'; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s",
		    i ? "-" : "", rd->order[i] == 's' ? "served" :
		    rd->order[i] == 'r' ? "raw" : "echo");
	if (buf[0] == '\0')	/* audit: its own two sides */
		return rd->raw_first ? "raw-served" : "served-raw";
	return buf;
}

void
print_json(void)
{
	struct jbuf j = { NULL, 0, 0 };
	size_t i;

	jobj(&j, NULL);
	jint(&j, "bench_version", 1);
	jsep(&j);
	jprintf(&j, "\"ok\":%s", g_errors == 0 ? "true" : "false");
	jint(&j, "wrong_answers", (long long)g_errors);
	jobj(&j, "config");
	jint(&j, "cpus", sysconf(_SC_NPROCESSORS_ONLN));
	jint(&j, "workers", g_daemon_workers);
	jint(&j, "concurrency", opt.conc);
	jint(&j, "connections", opt.conns);
	jint(&j, "requests_c1", (long long)opt.n1);
	jint(&j, "requests", (long long)opt.n64);
	jint(&j, "storm", (long long)opt.storm);
	jint(&j, "rounds", opt.rounds);
	jint(&j, "plaintext_bytes", PT_LEN);
	jstr(&j, "module", opt.module);
	jstr(&j, "server_cpu_source", g_cpu_src);
	jprintf(&j, "}");

	jobj(&j, "cold_start_ms");
	jprintf(&j, "\"runs\":[");
	for (i = 0; i < g_ncold; i++)
		jprintf(&j, "%s%.3f", i ? "," : "", g_cold_ms[i]);
	jprintf(&j, "]");
	{
		double c[16];
		memcpy(c, g_cold_ms, sizeof(c));
		jnum(&j, "median", median(c, g_ncold));
	}
	jprintf(&j, "}");
	jobj(&j, "daemon");
	jint(&j, "rss_idle_kib", g_rss_idle);
	jint(&j, "rss_after_load_kib", g_rss_now);
	jint(&j, "rss_peak_kib", g_rss_peak);
	jint(&j, "pss_after_load_kib", g_pss_now);
	jint(&j, "rss_peak_token_kib", g_rss_peak_token);
	if (g_tokproc_mem.has) {
		jint(&j, "tokproc_on_pss_kib", g_tokproc_mem.pss_on);
		jint(&j, "tokproc_on_rss_peak_kib", g_tokproc_mem.rss_on);
		jint(&j, "tokproc_off_pss_kib", g_tokproc_mem.pss_off);
		jint(&j, "tokproc_off_rss_peak_kib", g_tokproc_mem.rss_off);
	}
	jstr(&j, "token_process", opt.token_process != NULL ?
	    opt.token_process : "default");
	jnum(&j, "cpu_total_ms_clock", (double)g_cpu_clock_total / 1e6);
	jnum(&j, "cpu_total_ms_proc_stat", (double)g_cpu_stat_total / 1e6);
	jint(&j, "exit_status_after_sigterm", g_exit_status);
	jprintf(&j, "}");
	jobj(&j, "machine");
	jnum(&j, "steal_pct", steal_pct(&g_run_steal));
	jint(&j, "steal_ticks", (long long)g_run_steal.steal);
	jint(&j, "total_ticks", (long long)g_run_steal.total);
	jnum(&j, "run_secs", g_run_secs);
	jprintf(&j, "}");

	jobj(&j, "scenarios");
	for (i = 0; i < g_nrows; i++) {
		struct row *r = &g_rows[i];

		jobj(&j, r->key);
		jstr(&j, "label", r->label);
		if (r->na) {
			jstr(&j, "na", r->why);
			jprintf(&j, "}");
			continue;
		}
		jint(&j, "n", (long long)r->n);
		jint(&j, "failed", (long long)r->failed);
		jnum(&j, "secs", r->secs);
		jnum(&j, "ops", r->ops);
		jnum(&j, "p50_us", r->p50);
		jnum(&j, "p99_us", r->p99);
		jnum(&j, "max_us", r->max);
		jnum(&j, "server_cpu_us_per_req", r->srv_cpu);
		jnum(&j, "client_cpu_us_per_req", r->cli_cpu);
		jnum(&j, "steal_pct", steal_pct(&r->steal));
		if (r->has_tail) {
			jobj(&j, "slowest_1pct_mean_us");
			jnum(&j, "before_write", r->tail[0]);
			jnum(&j, "write_to_read", r->tail[1]);
			jnum(&j, "after_read", r->tail[2]);
			jprintf(&j, "}");
		}
		if (r->base.has) {
			jobj(&j, "baseline");
			jint(&j, "threads", r->base.threads);
			jint(&j, "n", (long long)r->base.n);
			jint(&j, "failed", (long long)r->base.failed);
			jnum(&j, "secs", r->base.secs);
			jnum(&j, "ops", r->base.ops);
			jnum(&j, "p50_us", r->base.p50);
			jnum(&j, "p99_us", r->base.p99);
			jnum(&j, "max_us", r->base.max);
			jnum(&j, "cpu_us_per_op", r->base.cpu);
			jnum(&j, "steal_pct", steal_pct(&r->base.steal));
			jprintf(&j, "}");
			jnum(&j, "ratio_ops", r->ops / r->base.ops);
			jnum(&j, "overhead_cpu_us", r->srv_cpu - r->base.cpu);
		}
		if (r->nrnd > 0) {
			double rr[MAX_ROUNDS];
			unsigned k;

			for (k = 0; k < r->nrnd; k++)
				rr[k] = round_ratio(&r->rnd[k]);
			jarr(&j, "round_ratios", rr, r->nrnd);
			jsep(&j);
			jprintf(&j, "\"round_detail\":[");
			for (k = 0; k < r->nrnd; k++) {
				const struct round *rd = &r->rnd[k];

				jobj(&j, NULL);
				jstr(&j, "order", order_name(rd));
				jint(&j, "n", (long long)rd->n);
				jnum(&j, "secs", rd->secs);
				jnum(&j, "ops", rd->secs > 0 ?
				    (double)rd->n / rd->secs : NAN);
				jnum(&j, "server_cpu_us_per_req",
				    rd->srv_cpu);
				jnum(&j, "steal_pct", steal_pct(&rd->steal));
				jint(&j, "base_n", (long long)rd->bn);
				jnum(&j, "base_secs", rd->bsecs);
				jnum(&j, "base_ops", rd->bsecs > 0 ?
				    (double)rd->bn / rd->bsecs : NAN);
				jnum(&j, "base_cpu_us_per_op", rd->bcpu);
				jnum(&j, "base_steal_pct",
				    steal_pct(&rd->bsteal));
				jnum(&j, "ratio", round_ratio(rd));
				jnum(&j, "p50_us", rd->p50);
				jnum(&j, "base_p50_us", rd->bp50);
				if (rd->has_echo) {
					jint(&j, "echo_n", (long long)rd->en);
					jnum(&j, "echo_secs", rd->esecs);
					jnum(&j, "echo_p50_us", rd->ep50);
					jnum(&j, "echo_p99_us", rd->ep99);
					jnum(&j, "echo_cpu_us_per_req",
					    rd->ecpu);
					jnum(&j, "floor_ratio",
					    floor_ratio(r, echo_of(r), (int)k));
				}
				jprintf(&j, "}");
			}
			jprintf(&j, "]");
		}
		if (g_c1s_nrnd > 0 && strncmp(r->key, "status2_", 8) == 0) {
			double p[MAX_ROUNDS];
			unsigned k, side = strcmp(r->key, "status2_idle") != 0;

			for (k = 0; k < g_c1s_nrnd; k++)
				p[k] = g_c1s_p99[k][side];
			jarr(&j, "round_p99_us", p, g_c1s_nrnd);
		}
		if (echo_of(r) != NULL) {
			const struct row *er = echo_of(r);

			jobj(&j, "floor");
			jstr(&j, "echo_row", r->echo_key);
			jnum(&j, "echo_p50_us", er->p50);
			jnum(&j, "echo_p99_us", er->p99);
			jnum(&j, "raw_p50_us", r->base.p50);
			jnum(&j, "raw_p99_us", r->base.p99);
			jnum(&j, "floor_p50_us", er->p50 + r->base.p50);
			jnum(&j, "ratio_p50", floor_ratio(r, er, -1));
			jprintf(&j, "}");
		}
		if (!isnan(r->ideal)) {
			jnum(&j, "ideal_ops", r->ideal);
			jnum(&j, "ratio_ideal", r->ops / r->ideal);
		}
		jprintf(&j, "}");
	}
	jprintf(&j, "}");
	jstr(&j, "v1", g_v1_na ? "n/a" : "served");
	jstr(&j, "v1_na_reason", g_v1_na);
	jstr(&j, "storm_mode", g_storm_mode);
	jobj(&j, "slow_token");
	if (g_slow_na[0] != '\0')
		jstr(&j, "na", g_slow_na);
	else {
		jint(&j, "delay_ms", opt.slow_delay_ms);
		jprintf(&j, ",\"start_ms\":{");
		for (i = 0; i < g_nslow; i++)
			jprintf(&j, "%s\"%u\":%.3f", i ? "," : "",
			    g_slow[i].workers, g_slow[i].start_ms);
		jprintf(&j, "}");
	}
	jprintf(&j, "}");
	jobj(&j, "targets");
	for (i = 0; i < g_nt; i++) {
		struct target *t = &g_t[i];

		jobj(&j, t->key);
		jnum(&j, "value", t->value);
		jnum(&j, "limit", t->limit);
		jstr(&j, "cmp", t->le ? "<=" : ">=");
		if (t->nrounds > 0)
			jarr(&j, "rounds", t->rounds, t->nrounds);
		if (isnan(t->value))
			jprintf(&j, ",\"met\":null");
		else
			jprintf(&j, ",\"met\":%s", (t->le ? t->value <=
			    t->limit : t->value >= t->limit) ? "true" :
			    "false");
		jprintf(&j, "}");
	}
	jprintf(&j, "}}");
	printf("BENCH_JSON %s\n", j.p);
	free(j.p);
}
