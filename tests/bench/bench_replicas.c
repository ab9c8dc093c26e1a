/*
 * bench_replicas: `--only replicas`, one KEK on two tokens (issue 14).
 * Two SoftHSM tokens in a directory of their own hold one AES-256 KEK
 * (imported into both, sensitive and non-extractable); the daemon serves
 * them as replicas, replica A ("kms") behind the fault module on a copy of
 * SoftHSM's .so, replica B ("hsm-b") on SoftHSM itself. Under load
 * (Encrypt and Decrypt at c = --concurrency, split in two lanes, Status
 * beside them; slices of --replica-slice requests, timed one by one) it
 * runs three phases: both up, replica A failing every call with
 * CKR_DEVICE_REMOVED, and A back. It prints throughput per phase and the
 * ratios, how long after the fault ended A was back in rotation (the
 * daemon's "replica 'kms' healthy" log line) and when the throughput was
 * back to 0.9 x both-up, and any failed request or Status that was not
 * "ok" (those make the run fail, as a wrong answer does). The fault
 * module counts no calls here: its counts file, rewritten on every call,
 * would make A the slower token.
 */
#include "tests/bench/bench.h"

#include <limits.h>

#define REP_PROBE_S	2		/* the daemon's --probe-interval */
#define REP_UP_S	5.0		/* phase lengths, seconds */
#define REP_DOWN_S	7.0
#define REP_BACK_S	8.0
#define REP_MAX_SLICES	4096
#define REP_TOKEN_B	"hsm-b"	/* no prefix of "kms": pkcs11-tool matches prefixes */
#define REP_PIN_B	"4321"

struct rslice {
	double t;		/* end, seconds since the load started */
	double secs;
	size_t n;
	int phase;		/* 0 up, 1 A down, 2 A back */
};

static struct rslice rs[REP_MAX_SLICES];
static size_t nrs;

/*
 * Wall-clock seconds (since the epoch) of the first daemon log line at or
 * after `after` that holds `what`; NAN when there is none.
 */
static double
log_time(const char *log, const char *what, double after)
{
	char line[2048], *ts;
	struct tm tm;
	double t, ms;
	FILE *f;

	if ((f = fopen(log, "r")) == NULL)
		return NAN;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strstr(line, what) == NULL ||
		    (ts = strstr(line, "ts=")) == NULL)
			continue;
		memset(&tm, 0, sizeof(tm));
		if (strptime(ts + 3, "%Y-%m-%dT%H:%M:%S", &tm) == NULL ||
		    sscanf(ts + 3 + 19, ".%lfZ", &ms) != 1)
			continue;
		t = (double)timegm(&tm) + ms / 1000.0;
		if (t >= after) {
			fclose(f);
			return t;
		}
	}
	fclose(f);
	return NAN;
}

static double
wall_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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
	char dir[80], conf[100], pinb[100], copy[100], ctl[100];
	char probe[8], key_id_main[KEYRING_KEY_ID_MAX], *old_conf;
	const char *old_module = opt.module;
	struct client cl;
	struct lane ln;
	struct ctset *cts;
	uint64_t t0, start, t_fault = 0, t_clear = 0;
	size_t failed = 0, per, i;
	unsigned long errors0 = g_errors;
	double now, up, down, back, t_a_back = NAN, t_full = NAN, ratio;
	double w_clear = 0, w_back;
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
	g_counts[0] = '\0';		/* no counts: see the top */
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
			w_clear = wall_now();
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
		rs[nrs].t = (double)(now_ns() - start) / 1e9;
		rs[nrs].secs = (double)(now_ns() - t0) / 1e9;
		rs[nrs].n = 2 * per;
		rs[nrs].phase = phase;
		nrs++;
	}
	client_close(&cl);
	if ((st = daemon_stop()) != 0)
		fprintf(stderr, "p11kms-bench: replicas daemon exited with "
		    "status %d\n", st);
	g_ndextra = 0;
	w_back = log_time(g_log, "replica 'kms' healthy", w_clear);
	t_a_back = w_back - w_clear;
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

		if (rs[i].phase != 2 || since < t_a_back)
			continue;
		if (isnan(t_full) && (double)rs[i].n / rs[i].secs >= 0.9 * up)
			t_full = since;
	}
	printf("\nreplicas: two tokens holding one KEK, c=%u (Encrypt and "
	    "Decrypt, %u each), Status beside, --workers %u per token, "
	    "--probe-interval %d, --token-process %s\n", opt.conc,
	    opt.conc / 2, opt.workers, REP_PROBE_S, opt.token_process ?
	    opt.token_process : "on");
	printf("  %-36s %10.0f req/s\n", "both up", up);
	printf("  %-36s %10.0f req/s\n", "replica A: CKR_DEVICE_REMOVED", down);
	printf("  %-36s %10.0f req/s\n", "replica A back (from 1 probe int on)",
	    back);
	printf("  outage / both up          %6.2f   (target >= 0.45)\n", ratio);
	printf("  back / both up            %6.2f\n", back / up);
	printf("  A in rotation again       %6.2f s after the fault ended "
	    "(its \"healthy\" log line; target <= %d, one probe interval)\n",
	    t_a_back, REP_PROBE_S);
	printf("  throughput >= 0.9 x up    %6.2f s after the fault ended "
	    "(first slice from then on)\n", t_full);
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
