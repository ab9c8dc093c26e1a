/*
 * bench_replicas: `--only replicas`, one KEK on two tokens (issue 14).
 * Two SoftHSM tokens in a directory of their own hold one AES-256 KEK
 * (imported into both, sensitive and non-extractable); the daemon serves
 * them as replicas, replica A ("kms") behind the fault module on a copy of
 * SoftHSM's .so, replica B ("kms-b") on SoftHSM itself. Under load
 * (Encrypt and Decrypt at c = --concurrency, split in two lanes, Status
 * beside them; slices of --replica-slice requests, timed one by one) it
 * runs three phases: both up, replica A failing every call with
 * CKR_DEVICE_REMOVED, and A back. It prints throughput per phase and the
 * ratios, how long after the fault ended A took load again and when the
 * throughput was back to 0.9 x both-up, A's share of the token calls per
 * phase (the fault module counts A's), and any failed request or Status
 * that was not "ok" (those make the run fail, as a wrong answer does).
 */
#include "tests/bench/bench.h"

#include <limits.h>

#define REP_PROBE_S	2		/* the daemon's --probe-interval */
#define REP_UP_S	5.0		/* phase lengths, seconds */
#define REP_DOWN_S	7.0
#define REP_BACK_S	8.0
#define REP_MAX_SLICES	4096
#define REP_TOKEN_B	"kms-b"
#define REP_PIN_B	"4321"

struct rslice {
	double t;		/* end, seconds since the load started */
	double secs;
	size_t n;
	unsigned long a_calls;	/* replica A's C_Encrypt + C_Decrypt */
	int phase;		/* 0 up, 1 A down, 2 A back */
};

static struct rslice rs[REP_MAX_SLICES];
static size_t nrs;

/* Replica A's seal and open calls so far (every process's counts). */
static unsigned long
a_calls(const char *counts)
{
	char path[PATH_MAX + 300], name[64];
	unsigned long v, n = 0;
	struct dirent *de;
	const char *base;
	size_t blen;
	int per_pid = 0;
	DIR *d;
	FILE *f;

	base = strrchr(counts, '/') + 1;
	blen = strlen(base);
	snprintf(path, sizeof(path), "%.*s", (int)(base - counts - 1),
	    counts);
	if ((d = opendir(path)) == NULL)
		return 0;
	/* A process of its own per token process (COUNTS.pidPID): those,
	 * else the one file. */
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, base, blen) == 0 &&
		    strncmp(de->d_name + blen, ".pid", 4) == 0)
			per_pid = 1;
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, base, blen) != 0 ||
		    (per_pid && strncmp(de->d_name + blen, ".pid", 4) != 0))
			continue;
		snprintf(path, sizeof(path), "%.*s%.255s",
		    (int)(base - counts), counts, de->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		while (fscanf(f, "%63s %lu", name, &v) == 2)
			if (strcmp(name, "C_Encrypt") == 0 ||
			    strcmp(name, "C_Decrypt") == 0)
				n += v;
		fclose(f);
	}
	closedir(d);
	return n;
}

/* Runs sh -c cmd quietly; dies with its output when it fails. */
static void
sh(const char *what, const char *cmd)
{
	char full[2048];

	snprintf(full, sizeof(full), "( %s ) >%s/replicas-setup.log 2>&1",
	    cmd, g_dir);
	if (system(full) != 0)
		die("replicas: %s failed (see %s/replicas-setup.log, "
		    "--keep keeps it)", what, g_dir);
}

/*
 * Tokens "kms" (PIN 1234, as the bench's own PIN file says) and "kms-b"
 * (PIN 4321) under dir, one random KEK imported into both; the key file is
 * overwritten and removed.
 */
static void
make_tokens(const char *dir, const char *conf)
{
	char cmd[1800];
	FILE *f;

	snprintf(cmd, sizeof(cmd), "mkdir -p %s/tokens", dir);
	sh("mkdir", cmd);
	if ((f = fopen(conf, "w")) == NULL)
		die("replicas: %s: %s", conf, strerror(errno));
	fprintf(f, "directories.tokendir = %s/tokens\nobjectstore.backend = "
	    "file\nlog.level = ERROR\nslots.removable = false\n", dir);
	fclose(f);
	snprintf(cmd, sizeof(cmd),
	    "set -e; export SOFTHSM2_CONF=%s; umask 077; "
	    "softhsm2-util --init-token --free --label kms --so-pin 5678 "
	    "--pin 1234; "
	    "softhsm2-util --init-token --free --label " REP_TOKEN_B
	    " --so-pin 5678 --pin " REP_PIN_B "; "
	    "head -c 32 /dev/urandom > %s/kek.bin; "
	    "for t in kms:1234 " REP_TOKEN_B ":" REP_PIN_B "; do "
	    "pkcs11-tool --module " SOFTHSM " --token-label ${t%%%%:*} "
	    "--login --pin ${t#*:} --write-object %s/kek.bin --type secrkey "
	    "--key-type AES:32 --label kek1 --id 01 --sensitive --private; "
	    "done; "
	    "dd if=/dev/zero of=%s/kek.bin bs=32 count=1 conv=notrunc; "
	    "rm -f %s/kek.bin; "
	    "printf '" REP_PIN_B "\\n' > %s/pin-b; "
	    "cp " SOFTHSM " %s/softhsm-a.so",
	    conf, dir, dir, dir, dir, dir, dir);
	sh("token set-up", cmd);
}

/* One slice of the load: n Encrypts and n Decrypts at c/2 each. */
static void
slice(struct client *cl, struct ctset *cts, unsigned c, size_t n,
    size_t *failed)
{
	struct lane enc, dec, st;
	struct lane *lanes[3] = { &enc, &dec, &st };

	lane_init(&enc, K_V2ENC, c / 2 > 0 ? c / 2 : 1, n);
	lane_init(&dec, K_V2DEC, c / 2 > 0 ? c / 2 : 1, n);
	dec.in = cts;
	dec.pt_seed = cts->seed;
	status_lane_init(&st);
	if (run_lanes(cl, lanes, 3) != 0)
		die_run("load failed");
	*failed += enc.failed + dec.failed + st.failed;
	lane_free(&enc);
	lane_free(&dec);
	lane_free(&st);
}

static double
phase_rate(int phase, double skip_s, double from)
{
	double secs = 0;
	size_t i, n = 0;

	for (i = 0; i < nrs; i++) {
		if (rs[i].phase != phase || rs[i].t - rs[i].secs < from + skip_s)
			continue;
		n += rs[i].n;
		secs += rs[i].secs;
	}
	return secs > 0 ? (double)n / secs : NAN;
}

void
replicas_scenario(void)
{
	char dir[80], conf[100], pinb[100], copy[100], ctl[100], counts[100];
	char probe[8], key_id_main[KEYRING_KEY_ID_MAX], *old_conf;
	const char *old_module = opt.module;
	struct client cl;
	struct lane ln;
	struct ctset *cts;
	uint64_t t0, start, t_fault = 0, t_clear = 0;
	unsigned long a0, a1, a_phase[3] = { 0, 0, 0 };
	size_t n_phase[3] = { 0, 0, 0 }, failed = 0, per, i;
	unsigned long errors0 = g_errors;
	double now, up, down, back, t_a_back = NAN, t_full = NAN, ratio;
	int phase = 0, st;

	if (opt.fault_module == NULL || access(opt.fault_module, R_OK) != 0) {
		printf("replicas: n/a (no fault module: --fault-module)\n");
		return;
	}
	g_scen = "replicas: set-up";
	snprintf(dir, sizeof(dir), "%s/replicas", g_dir);
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", dir);
	snprintf(pinb, sizeof(pinb), "%s/pin-b", dir);
	snprintf(copy, sizeof(copy), "%s/softhsm-a.so", dir);
	snprintf(ctl, sizeof(ctl), "%s/fault.control", dir);
	snprintf(counts, sizeof(counts), "%s/fault.counts", dir);
	snprintf(probe, sizeof(probe), "%d", REP_PROBE_S);
	make_tokens(dir, conf);
	write_ctl(ctl, "");

	old_conf = getenv("SOFTHSM2_CONF") != NULL ?
	    strdup(getenv("SOFTHSM2_CONF")) : NULL;
	setenv("SOFTHSM2_CONF", conf, 1);
	memcpy(key_id_main, g_key_id, sizeof(key_id_main));
	g_key_id[0] = '\0';		/* the replicas' key: from Status */
	g_ndextra = 0;
	g_dextra[g_ndextra++] = "--replica";
	g_dextra[g_ndextra++] = "pkcs11:token=" REP_TOKEN_B
	    ";object=kek1;type=secret-key";
	g_dextra[g_ndextra++] = "--replica-pin-file";
	g_dextra[g_ndextra++] = pinb;
	g_dextra[g_ndextra++] = "--replica-module";
	g_dextra[g_ndextra++] = SOFTHSM;
	g_dextra[g_ndextra++] = "--probe-interval";
	g_dextra[g_ndextra++] = probe;
	snprintf(g_counts, sizeof(g_counts), "%s", counts);
	/* The fault module's target: the copy, a module instance of its own
	 * beside SoftHSM itself (replica B) in one process. */
	opt.module = copy;
	(void)daemon_start(opt.fault_module, opt.workers, ctl, &t0);
	opt.module = old_module;
	(void)daemon_wait_ready(t0);
	client_open(&cl, opt.conns);

	g_scen = "replicas: warm-up";
	cts = ctset_new(4096);
	lane_init(&ln, K_V2ENC, opt.conc, cts->n);
	ln.pt_seed = cts->seed;
	ln.out = cts;
	run_quiet(&cl, &ln, "replicas: warm-up");
	lane_free(&ln);

	per = opt.quick ? 500 : 1500;	/* per lane and slice */
	start = now_ns();
	a0 = a_calls(counts);
	for (;;) {
		now = (double)(now_ns() - start) / 1e9;
		if (phase == 0 && now >= REP_UP_S) {
			g_scen = "replicas: replica A failing";
			write_ctl(ctl, "* CKR_DEVICE_REMOVED\n");
			t_fault = now_ns();
			phase = 1;
		} else if (phase == 1 && now >= REP_UP_S + REP_DOWN_S) {
			g_scen = "replicas: replica A back";
			write_ctl(ctl, "");
			t_clear = now_ns();
			phase = 2;
		} else if (phase == 2 && now >= REP_UP_S + REP_DOWN_S +
		    REP_BACK_S) {
			break;
		}
		if (phase == 0)
			g_scen = "replicas: both up";
		if (nrs == REP_MAX_SLICES)
			break;
		t0 = now_ns();
		slice(&cl, cts, opt.conc, per, &failed);
		a1 = a_calls(counts);
		rs[nrs].t = (double)(now_ns() - start) / 1e9;
		rs[nrs].secs = (double)(now_ns() - t0) / 1e9;
		rs[nrs].n = 2 * per;
		rs[nrs].a_calls = a1 - a0;
		rs[nrs].phase = phase;
		a_phase[phase] += a1 - a0;
		n_phase[phase] += 2 * per;
		a0 = a1;
		nrs++;
	}
	client_close(&cl);
	if ((st = daemon_stop()) != 0)
		fprintf(stderr, "p11kms-bench: replicas daemon exited with "
		    "status %d\n", st);
	g_ndextra = 0;
	g_counts[0] = '\0';
	if (old_conf != NULL) {
		setenv("SOFTHSM2_CONF", old_conf, 1);
		free(old_conf);
	}
	memcpy(g_key_id, key_id_main, sizeof(g_key_id));
	ctset_free(cts);

	/* Both up: all of it. Outage: from 0.5 s in (the first failures
	 * find A down). */
	up = phase_rate(0, 1.0, 0);
	down = phase_rate(1, 0.5, REP_UP_S);
	back = phase_rate(2, REP_PROBE_S + 1.0, REP_UP_S + REP_DOWN_S);
	ratio = down / up;
	for (i = 0; i < nrs; i++) {
		double since = rs[i].t - (double)(t_clear - start) / 1e9;

		if (rs[i].phase != 2)
			continue;
		/* A slice that ran A's calls again: A is back in rotation
		 * (a probe alone is two calls). */
		if (isnan(t_a_back) && rs[i].a_calls > 16)
			t_a_back = since;
		if (isnan(t_full) && !isnan(t_a_back) &&
		    (double)rs[i].n / rs[i].secs >= 0.9 * up)
			t_full = since;
	}
	printf("\nreplicas: two tokens holding one KEK, c=%u (Encrypt and "
	    "Decrypt, %u each), Status beside, --workers %u per token, "
	    "--probe-interval %d, --token-process %s\n", opt.conc,
	    opt.conc / 2, opt.workers, REP_PROBE_S, opt.token_process ?
	    opt.token_process : "on");
	printf("  %-34s %10.0f req/s   A's share of token calls %4.0f%%\n",
	    "both up", up, n_phase[0] ? 100.0 * (double)a_phase[0] /
	    (double)n_phase[0] : NAN);
	printf("  %-34s %10.0f req/s   A's share of token calls %4.0f%%\n",
	    "replica A: CKR_DEVICE_REMOVED", down, n_phase[1] ? 100.0 *
	    (double)a_phase[1] / (double)n_phase[1] : NAN);
	printf("  %-34s %10.0f req/s   A's share of token calls %4.0f%%\n",
	    "replica A back (after 1 probe int)", back, n_phase[2] ? 100.0 *
	    (double)a_phase[2] / (double)n_phase[2] : NAN);
	printf("  outage / both up          %6.2f   (target >= 0.45)\n", ratio);
	printf("  back / both up            %6.2f\n", back / up);
	printf("  A in rotation again       %6.2f s after the fault ended "
	    "(target <= %d, one probe interval)\n", t_a_back, REP_PROBE_S);
	printf("  throughput >= 0.9 x up    %6.2f s after the fault ended\n",
	    t_full);
	printf("  failed requests           %6zu   (target 0)\n", failed);
	printf("  wrong answers or Status not \"ok\" %zu (target 0)\n",
	    (size_t)(g_errors - errors0));
	printf("  fault at %.2f s, cleared at %.2f s; %zu slices of %zu "
	    "requests\n", (double)(t_fault - start) / 1e9,
	    (double)(t_clear - start) / 1e9, nrs, 2 * per);
	printf("REPLICAS_JSON {\"both_up_rps\":%.0f,\"outage_rps\":%.0f,"
	    "\"back_rps\":%.0f,\"outage_ratio\":%.3f,\"back_ratio\":%.3f,"
	    "\"a_back_s\":%.3f,\"full_s\":%.3f,\"failed\":%zu,"
	    "\"wrong\":%lu}\n", up, down, back, ratio, back / up, t_a_back,
	    t_full, failed, g_errors - errors0);
}
