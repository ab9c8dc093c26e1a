/*
 * bench_tokproc.c: `--only tokproc`, what the token process costs, with
 * both sides in the same run. Rounds alternate two daemons on the same
 * token and key, one started with --token-process on and one with off
 * (which goes first alternates by round, as the served/raw rounds do), so
 * a ratio compares both under the same neighbours on a shared machine.
 * Each side of a round: start, warm up, a slice of v2 Encrypt at c=C with
 * a paced Status lane beside it on the same connection, then v2 Decrypt at
 * c=C of that slice's ciphertexts, the memory of every process of the
 * daemon, stop.
 *
 * Rows (on is the served side, off the "base" side, so the table's ratio
 * and the per-round ratios read on / off):
 *   tokproc_encrypt, tokproc_decrypt   ops/s, latency, server CPU per
 *                                      request over all processes
 *   tokproc_status                     the paced Status beside Encrypt
 *                                      (its p50/p99 on; base.p50/p99 off)
 * and g_tokproc_mem: peak RSS and PSS of every process, on and off.
 */
#include "tests/bench/bench.h"

struct tokproc_mem g_tokproc_mem;

struct side {
	const char *mode;		/* --token-process */
	size_t n[2];			/* answers: encrypt, decrypt */
	double secs[2], cpu_ns[2];
	struct lat lat[3];		/* encrypt, decrypt, status */
	size_t failed;
	long rss_peak, pss;		/* KiB, the largest of the rounds */
};

static void
lat_add(struct lat *l, const struct lat *from)
{
	if (l->n + from->n > l->cap) {
		size_t cap = (l->n + from->n) * 2;
		uint64_t *v = realloc(l->v, cap * sizeof(*v));

		if (v == NULL)
			die("out of memory");
		l->v = v;
		l->cap = cap;
	}
	memcpy(l->v + l->n, from->v, from->n * sizeof(*from->v));
	l->n += from->n;
}

/* One lane set on the running daemon; returns the daemon's CPU (ns). */
static uint64_t
run_measured(struct client *cl, struct lane *const *lanes, size_t nl)
{
	uint64_t c0 = daemon_cpu_ns(), c1;

	if (run_lanes(cl, lanes, nl) != 0)
		die_run("load failed");
	c1 = daemon_cpu_ns();
	return c1 - c0;
}

/* A round's slot for one side: n, secs and CPU per request. */
static void
round_side(struct round *rd, int is_on, size_t n, double secs, uint64_t cpu)
{
	double per = n ? (double)cpu / 1e3 / (double)n : NAN;

	if (is_on) {
		rd->n = n;
		rd->secs = secs;
		rd->srv_cpu = per;
	} else {
		rd->bn = n;
		rd->bsecs = secs;
		rd->bcpu = per;
	}
}

static void
one_side(struct side *sd, size_t slice, struct round *re, struct round *rdec,
    int is_on)
{
	const char *saved = opt.token_process;
	struct client cl;
	struct lane ln, enc, stat, *two[2] = { &enc, &stat }, *lp = &ln;
	struct ctset *cts;
	uint64_t t0, cpu;
	double secs;
	long v;
	int st;

	opt.token_process = sd->mode;
	(void)daemon_start(opt.module, opt.workers, NULL, &t0);
	(void)daemon_wait_ready(t0);
	opt.token_process = saved;
	client_open(&cl, opt.conns);
	lane_init(&ln, K_V2ENC, opt.conc, 4 * opt.conc);
	run_quiet(&cl, &ln, "token-process warm-up");
	lane_free(&ln);

	/* Encrypt with the paced Status beside it. */
	g_scen = is_on ? "tokproc: Encrypt, --token-process on" :
	    "tokproc: Encrypt, --token-process off";
	cts = ctset_new(slice);
	lane_init(&enc, K_V2ENC, opt.conc, slice);
	enc.first = 0;			/* cts holds this slice alone */
	enc.pt_seed = cts->seed;
	enc.out = cts;
	enc.conn_fixed = 0;
	status_lane_init(&stat);
	cpu = run_measured(&cl, two, 2);
	secs = (double)(enc.t_last - enc.t_first) / 1e9;
	sd->n[0] += enc.done;
	sd->secs[0] += secs;
	/* Status is paced and light: the CPU is the Encrypts'. */
	sd->cpu_ns[0] += (double)cpu;
	sd->failed += enc.failed + stat.failed;
	lat_add(&sd->lat[0], &enc.lat);
	lat_add(&sd->lat[2], &stat.lat);
	round_side(re, is_on, enc.done, secs, cpu);
	lane_free(&enc);
	lane_free(&stat);

	/* Decrypt what this side just sealed. */
	g_scen = is_on ? "tokproc: Decrypt, --token-process on" :
	    "tokproc: Decrypt, --token-process off";
	lane_init(&ln, K_V2DEC, opt.conc, slice);
	ln.in = cts;
	cpu = run_measured(&cl, &lp, 1);
	secs = (double)(ln.t_last - ln.t_first) / 1e9;
	sd->n[1] += ln.done;
	sd->secs[1] += secs;
	sd->cpu_ns[1] += (double)cpu;
	round_side(rdec, is_on, ln.done, secs, cpu);
	sd->failed += ln.failed;
	lat_add(&sd->lat[1], &ln.lat);
	lane_free(&ln);
	ctset_free(cts);

	if ((v = tree_status_kib("VmHWM", NULL)) > sd->rss_peak)
		sd->rss_peak = v;
	if ((v = tree_smaps_kib("Pss")) > sd->pss)
		sd->pss = v;
	client_close(&cl);
	if ((st = daemon_stop()) != 0)
		fprintf(stderr, "p11kms-bench: --token-process %s daemon "
		    "exited with status %d\n", sd->mode, st);
}

static void
fill_row(struct row *r, const struct side *on, const struct side *off,
    int i)
{
	struct stats s;

	stats_of(on->lat[i].v, on->lat[i].n, &s);
	r->n = i < 2 ? on->n[i] : on->lat[i].n;
	r->failed = on->failed;
	r->p50 = s.p50;
	r->p99 = s.p99;
	r->max = s.max;
	r->base.has = 1;
	r->base.threads = g_daemon_workers;
	stats_of(off->lat[i].v, off->lat[i].n, &s);
	r->base.p50 = s.p50;
	r->base.p99 = s.p99;
	r->base.max = s.max;
	if (i == 2) {			/* paced: latency is the figure */
		r->ops = r->base.ops = NAN;
		r->base.n = off->lat[i].n;
		return;
	}
	r->secs = on->secs[i];
	r->ops = on->secs[i] > 0 ? (double)on->n[i] / on->secs[i] : NAN;
	r->srv_cpu = on->n[i] ? on->cpu_ns[i] / 1e3 / (double)on->n[i] : NAN;
	r->base.n = off->n[i];
	r->base.secs = off->secs[i];
	r->base.ops = off->secs[i] > 0 ? (double)off->n[i] / off->secs[i] :
	    NAN;
	r->base.cpu = off->n[i] ? off->cpu_ns[i] / 1e3 / (double)off->n[i] :
	    NAN;
}

void
tokproc_scenario(void)
{
	struct side on, off;
	struct row *re, *rd, *rs;
	char label[64];
	size_t slice;
	unsigned k, K = opt.rounds, C = opt.conc, i;

	memset(&on, 0, sizeof(on));
	memset(&off, 0, sizeof(off));
	on.mode = "on";
	off.mode = "off";
	if (K > MAX_ROUNDS)
		K = MAX_ROUNDS;
	slice = opt.n64 / K > 0 ? opt.n64 / K : 1;
	snprintf(label, sizeof(label), "tokproc on/off v2 Encrypt c=%u", C);
	re = row_new("tokproc_encrypt", label);
	snprintf(label, sizeof(label), "tokproc on/off v2 Decrypt c=%u", C);
	rd = row_new("tokproc_decrypt", label);
	snprintf(label, sizeof(label), "tokproc on/off Status %s + Enc",
	    status_pace());
	rs = row_new("tokproc_status", label);
	for (k = 0; k < K; k++) {
		struct round *r = &re->rnd[k], *r2 = &rd->rnd[k];

		/* "raw" here is off; which side goes first alternates. */
		r->raw_first = r2->raw_first = k % 2 == 1;
		if (r->raw_first)
			one_side(&off, slice, r, r2, 0);
		one_side(&on, slice, r, r2, 1);
		if (!r->raw_first)
			one_side(&off, slice, r, r2, 0);
	}
	re->nrnd = rd->nrnd = K;
	fill_row(re, &on, &off, 0);
	fill_row(rd, &on, &off, 1);
	fill_row(rs, &on, &off, 2);
	g_tokproc_mem.has = 1;
	g_tokproc_mem.rss_on = on.rss_peak;
	g_tokproc_mem.pss_on = on.pss;
	g_tokproc_mem.rss_off = off.rss_peak;
	g_tokproc_mem.pss_off = off.pss;
	for (i = 0; i < 3; i++) {
		free(on.lat[i].v);
		free(off.lat[i].v);
	}
}
