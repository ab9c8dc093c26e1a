/*
 * p11kms-bench: the load generator behind `make bench`.
 *
 * Makes a throwaway SoftHSM token, starts the daemon on it, drives it with
 * gRPC over HTTP/2 on its unix socket (nghttp2 client sessions fed from one
 * poll loop, C requests kept in flight), checks every answer, and in the
 * same run measures the raw baseline: the same seal/open through the
 * keyring API in this process, on the same token and key, with as many
 * threads as the daemon has workers. The two sides run in interleaved
 * rounds (a slice served, the same slice raw, the order alternating), and
 * /proc/stat's steal time is read around each, so that a ratio compares
 * both under the same conditions. See tests/bench/README.md.
 *
 * A benchmark, not a test: targets are printed, never asserted. Exit status
 * 0 when every request succeeded and every plaintext matched, 1 on any wrong
 * answer (or a daemon that died under load), 2 when the bench itself could
 * not run (bad flags, no token, daemon did not start).
 *
 * The program is six files sharing bench.h: this one (options, process
 * state, errors, the temp dir and token, main), bench_client.c (latency
 * samples, request data, the HTTP/2 client, requests, answers and lanes),
 * bench_scenarios.c (the daemon, steal time, result rows, the raw baseline
 * and every scenario), bench_tokproc.c (--token-process on against off),
 * bench_echo.c (the socket echo server, the floor under a c=1 request) and
 * bench_report.c (the table, targets, BENCH_JSON).
 */
#include "tests/bench/bench.h"

/* ---- options ---- */

struct bench_opt opt;

static const char *const group_names[] = {
	"status", "encrypt", "decrypt", "mixed", "v1", "storm", "slow",
	"calls", "audit", "tokproc", "echo", "replicas",
};

int
want(unsigned s)
{
	return (opt.only & s) != 0;
}

/* ---- process-wide state ---- */

volatile sig_atomic_t g_stop;
volatile pid_t g_daemon = -1;	/* running daemon, for cleanup */
char g_dir[64];			/* temp dir, "" until made */
char g_sock[100], g_pin[128], g_conf[128], g_log[128];
char g_counts[128];		/* fault module's counts file, or "" */
char g_key_id[KEYRING_KEY_ID_MAX]; /* from the first Status */
const char *g_scen = "setup";	/* for messages */
unsigned long g_errors;		/* wrong answers */
unsigned g_daemon_workers;	/* as the daemon logged it */
clockid_t g_dclk;		/* the daemon's CPU clock */
int g_dclk_ok;
const char *g_cpu_src = "none";
long g_clk_tck;
unsigned g_nstarts;		/* daemon starts, for log names */
const char *g_dextra[BENCH_DEXTRA_MAX];	/* more daemon flags */
size_t g_ndextra;

uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

uint64_t
clock_ns(clockid_t clk)
{
	struct timespec ts;

	if (clock_gettime(clk, &ts) != 0)
		return 0;
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

void
sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / NS_PER_S), (long)(ns % NS_PER_S) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !g_stop)
		;
}

/* The bench could not run: exit 2. */
void
die(const char *fmt, ...)
{
	va_list ap;

	fputs("p11kms-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* The daemon failed under load (died, dropped the connection): exit 1. */
void
die_run(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "p11kms-bench: %s: ", g_scen);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	daemon_log_tail();
	exit(g_stop ? 2 : 1);
}

void
wrong(size_t idx, const char *fmt, ...)
{
	va_list ap;

	if (++g_errors > MAX_SHOWN) {
		if (g_errors == MAX_SHOWN + 1)
			fprintf(stderr, "p11kms-bench: more wrong answers not "
			    "shown\n");
		return;
	}
	fprintf(stderr, "p11kms-bench: WRONG ANSWER in %s, request %zu: ",
	    g_scen, idx);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void *
xcalloc(size_t n, size_t sz)
{
	void *p;

	if ((p = calloc(n ? n : 1, sz ? sz : 1)) == NULL)
		die("out of memory");
	return p;
}

/* ---- temp dir, token, signals ---- */

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)remove(path);
	return 0;
}

static void
cleanup(void)
{
	echo_stop();
	if (g_daemon > 0)
		(void)daemon_stop();
	if (g_dir[0] != '\0') {
		if (opt.keep)
			fprintf(stderr, "p11kms-bench: kept %s\n", g_dir);
		else
			(void)nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		g_dir[0] = '\0';
	}
}

static void
on_signal(int sig)
{
	pid_t d = g_daemon;

	g_stop = 1;
	if (d > 0)
		(void)kill(d, SIGTERM);
}

static void
make_token(void)
{
	pid_t pid;
	int st, fd;

	if (mkdtemp(strcpy(g_dir, "/tmp/p11kms-bench-XXXXXX")) == NULL) {
		g_dir[0] = '\0';
		die("mkdtemp: %s", strerror(errno));
	}
	snprintf(g_sock, sizeof(g_sock), "%s/kms.sock", g_dir);
	snprintf(g_pin, sizeof(g_pin), "%s/pin", g_dir);
	snprintf(g_conf, sizeof(g_conf), "%s/softhsm2.conf", g_dir);
	if (setenv("SOFTHSM2_CONF", g_conf, 1) != 0)
		die("setenv failed");
	fflush(NULL);
	if ((pid = fork()) == -1)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		if ((fd = open("/dev/null", O_WRONLY)) != -1) {
			dup2(fd, 1);	/* errors still reach stderr */
			close(fd);
		}
		execlp("sh", "sh", opt.mktoken, g_dir, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
	    WEXITSTATUS(st) != 0)
		die("%s %s failed", opt.mktoken, g_dir);
}

/* Writes the fault module's control file atomically (temp + rename). */
void
write_ctl(const char *path, const char *text)
{
	char tmp[160];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((f = fopen(tmp, "w")) == NULL || fputs(text, f) == EOF ||
	    fclose(f) != 0 || rename(tmp, path) != 0)
		die("cannot write %s", path);
}

/* ---- main ---- */

static void
usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms-bench [OPTIONS]\n"
"Load generator for p11kms: starts the daemon on a temporary SoftHSM token,\n"
"measures it over gRPC on its unix socket and the raw token in-process,\n"
"prints a table and a BENCH_JSON line. Exit 0: every answer right;\n"
"1: a wrong answer; 2: the bench could not run.\n"
"\n"
"  --daemon PATH        p11kms binary (default build/p11kms)\n"
"  --mktoken PATH       tests/mktoken.sh (default tests/mktoken.sh)\n"
"  --module PATH        PKCS#11 module (default " SOFTHSM ")\n"
"  --fault-module PATH  fault-injecting module for the slow-token scenario\n"
"                       (build/tests/libp11kms-fault.so; n/a if absent)\n"
"  --workers N          daemon --workers and baseline threads (default: CPUs)\n"
"  --concurrency C      requests in flight in the loaded scenarios (64)\n"
"  --conns N            HTTP/2 connections the load is spread over (1)\n"
"  --requests N         requests per loaded scenario (50000)\n"
"  --requests-c1 N      requests per c=1 scenario (5000)\n"
"  --storm N            distinct Decrypts in the restart storm (10000)\n"
"  --cold-starts N      daemon starts timed, median reported (3)\n"
"  --rounds K           split each scenario that has a raw baseline into K\n"
"                       slices, each run served then raw (alternating\n"
"                       which goes first), so both sides share the\n"
"                       machine's conditions (5; 1: one served run, then\n"
"                       one raw run; at most %d)\n"
"  --status-interval-us U  under load, one Status every U us, one in\n"
"                       flight (1000; 0: back to back)\n"
"  --grpc-timeout S     grpc-timeout sent with every request (30)\n"
"  --slow-workers LIST  worker counts for the slow token (1,2,4,8)\n"
"  --slow-delay MS      delay per C_Encrypt/C_Decrypt (50)\n"
"  --slow-seconds S     target length of each slow-token run (2)\n"
"  --no-slow            skip the slow-token scenario\n"
"  --quick              small counts for a smoke run (2000/200/1000, 1 start)\n"
"  --only LIST          scenario groups to run, of status,encrypt,decrypt,\n"
"                       mixed,v1,storm,slow,calls,audit,tokproc,echo\n"
"                       (default all); decrypt and storm bring in encrypt,\n"
"                       storm brings in v1 (their inputs); tokproc\n"
"                       alternates --token-process on and off daemons,\n"
"                       round by round; echo (the socket echo floor in the\n"
"                       c=1 rounds) brings in encrypt and decrypt\n"
"                       replicas (only when named: two tokens holding one\n"
"                       KEK, one failing and coming back under load)\n"
"  --keep               keep the temp dir (token, daemon logs)\n"
"  --audit-log FILE     audit scenario: the audited daemon's log (default\n"
"                       audit.log in the temp dir; it is removed first)\n"
"  --audit-sync S       audit scenario: batch (default) or every\n"
"  --token-process M    daemon --token-process on or off (default: its own);\n"
"                       CPU and RSS count the token process too\n"
"  --wrap 'CMD ARGS'    start the daemon under CMD (profiling, e.g.\n"
"                       'valgrind --tool=callgrind'); figures then measure\n"
"                       the wrapper too\n"
"  -h, --help           this text\n", MAX_ROUNDS);
}

static unsigned long
num_arg(const char *name, const char *s, unsigned long min, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (*s < '0' || *s > '9' || errno != 0 || *end != '\0' || v < min ||
	    v > max)
		die("--%s '%.40s': want a whole number from %lu to %lu", name,
		    s, min, max);
	return v;
}

/* Absolute form of a path (kept as given when it does not exist). */
static const char *
abs_path(const char *p)
{
	char *r;

	if (p[0] == '/' || (r = realpath(p, NULL)) == NULL)
		return p;
	return r;
}

static void
parse_args(int argc, char **argv)
{
	enum {
		O_DAEMON = 256, O_MKTOKEN, O_MODULE, O_FAULT, O_WORKERS,
		O_CONC, O_CONNS, O_REQ, O_REQ1, O_STORM, O_COLD, O_MIXED,
		O_TIMEOUT, O_SLOWW, O_SLOWD, O_SLOWS, O_NOSLOW, O_QUICK,
		O_KEEP, O_ONLY, O_WRAP, O_ROUNDS, O_AUDIT_LOG, O_AUDIT_SYNC,
		O_TOKPROC,
	};
	static const struct option lo[] = {
		{ "daemon", required_argument, NULL, O_DAEMON },
		{ "mktoken", required_argument, NULL, O_MKTOKEN },
		{ "module", required_argument, NULL, O_MODULE },
		{ "fault-module", required_argument, NULL, O_FAULT },
		{ "workers", required_argument, NULL, O_WORKERS },
		{ "concurrency", required_argument, NULL, O_CONC },
		{ "conns", required_argument, NULL, O_CONNS },
		{ "requests", required_argument, NULL, O_REQ },
		{ "requests-c1", required_argument, NULL, O_REQ1 },
		{ "storm", required_argument, NULL, O_STORM },
		{ "cold-starts", required_argument, NULL, O_COLD },
		{ "rounds", required_argument, NULL, O_ROUNDS },
		{ "status-interval-us", required_argument, NULL, O_MIXED },
		{ "grpc-timeout", required_argument, NULL, O_TIMEOUT },
		{ "slow-workers", required_argument, NULL, O_SLOWW },
		{ "slow-delay", required_argument, NULL, O_SLOWD },
		{ "slow-seconds", required_argument, NULL, O_SLOWS },
		{ "no-slow", no_argument, NULL, O_NOSLOW },
		{ "quick", no_argument, NULL, O_QUICK },
		{ "keep", no_argument, NULL, O_KEEP },
		{ "audit-log", required_argument, NULL, O_AUDIT_LOG },
		{ "audit-sync", required_argument, NULL, O_AUDIT_SYNC },
		{ "token-process", required_argument, NULL, O_TOKPROC },
		{ "only", required_argument, NULL, O_ONLY },
		{ "wrap", required_argument, NULL, O_WRAP },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *list, *tok, *save;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int c;

	opt.daemon = "build/p11kms";
	opt.mktoken = "tests/mktoken.sh";
	opt.module = SOFTHSM;
	opt.fault_module = "build/tests/libp11kms-fault.so";
	opt.conc = 64;
	opt.conns = 1;
	opt.status_interval_us = 1000;
	opt.grpc_timeout_s = 30;
	opt.slow_delay_ms = 50;
	opt.rounds = 5;
	opt.workers = ncpu > 0 ? (unsigned)ncpu : 1;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case O_DAEMON: opt.daemon = optarg; break;
		case O_MKTOKEN: opt.mktoken = optarg; break;
		case O_MODULE: opt.module = optarg; break;
		case O_FAULT: opt.fault_module = optarg; break;
		case O_WORKERS:
			opt.workers = (unsigned)num_arg("workers", optarg, 1,
			    256);
			break;
		case O_CONC:
			opt.conc = (unsigned)num_arg("concurrency", optarg, 1,
			    1000);
			break;
		case O_CONNS:
			opt.conns = (unsigned)num_arg("conns", optarg, 1,
			    MAX_CONNS);
			break;
		case O_REQ:
			opt.n64 = num_arg("requests", optarg, 1, 100000000);
			break;
		case O_REQ1:
			opt.n1 = num_arg("requests-c1", optarg, 1, 100000000);
			break;
		case O_STORM:
			opt.storm = num_arg("storm", optarg, 1, 100000000);
			break;
		case O_COLD:
			opt.cold_starts = (unsigned)num_arg("cold-starts",
			    optarg, 1, 16);
			break;
		case O_ROUNDS:
			opt.rounds = (unsigned)num_arg("rounds", optarg, 1,
			    MAX_ROUNDS);
			break;
		case O_MIXED:
			opt.status_interval_us = (unsigned)num_arg(
			    "status-interval-us", optarg, 0, 10000000);
			break;
		case O_TIMEOUT:
			opt.grpc_timeout_s = (unsigned)num_arg("grpc-timeout",
			    optarg, 1, 3600);
			break;
		case O_SLOWW:
			opt.nslow = 0;
			if ((list = strdup(optarg)) == NULL)
				die("out of memory");
			for (tok = strtok_r(list, ",", &save); tok != NULL;
			    tok = strtok_r(NULL, ",", &save)) {
				if (opt.nslow == MAX_SLOW)
					die("--slow-workers: at most %d counts",
					    MAX_SLOW);
				opt.slow_workers[opt.nslow++] = (unsigned)
				    num_arg("slow-workers", tok, 1, 256);
			}
			free(list);
			break;
		case O_SLOWD:
			opt.slow_delay_ms = (unsigned)num_arg("slow-delay",
			    optarg, 1, 10000);
			break;
		case O_SLOWS:
			opt.slow_secs = (unsigned)num_arg("slow-seconds",
			    optarg, 1, 600);
			break;
		case O_NOSLOW: opt.no_slow = 1; break;
		case O_QUICK: opt.quick = 1; break;
		case O_KEEP: opt.keep = 1; break;
		case O_AUDIT_LOG: opt.audit_log = optarg; break;
		case O_TOKPROC:
			if (strcmp(optarg, "on") != 0 &&
			    strcmp(optarg, "off") != 0)
				die("--token-process: on or off");
			opt.token_process = optarg;
			break;
		case O_AUDIT_SYNC:
			if (strcmp(optarg, "batch") != 0 &&
			    strcmp(optarg, "every") != 0)
				die("--audit-sync: batch or every");
			opt.audit_sync = optarg;
			break;
		case O_WRAP:
			if ((list = strdup(optarg)) == NULL)
				die("out of memory");
			opt.nwrap = 0;
			for (tok = strtok_r(list, " ", &save); tok != NULL;
			    tok = strtok_r(NULL, " ", &save)) {
				if (opt.nwrap == MAX_WRAP)
					die("--wrap: at most %d words",
					    MAX_WRAP);
				opt.wrap[opt.nwrap++] = tok;
			}
			break;	/* list stays: opt.wrap points into it */
		case O_ONLY:
			if ((list = strdup(optarg)) == NULL)
				die("out of memory");
			opt.only = 0;
			for (tok = strtok_r(list, ",", &save); tok != NULL;
			    tok = strtok_r(NULL, ",", &save)) {
				size_t g;

				for (g = 0; g < sizeof(group_names) /
				    sizeof(group_names[0]); g++)
					if (strcmp(tok, group_names[g]) == 0)
						break;
				if (g == sizeof(group_names) /
				    sizeof(group_names[0]))
					die("--only: unknown group '%.40s'", tok);
				opt.only |= 1u << g;
			}
			free(list);
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%.60s'", argv[optind]);
	/* --quick sets the defaults that were not given explicitly. */
	if (opt.n64 == 0)
		opt.n64 = opt.quick ? 2000 : 50000;
	if (opt.n1 == 0)
		opt.n1 = opt.quick ? 200 : 5000;
	if (opt.storm == 0)
		opt.storm = opt.quick ? 1000 : 10000;
	if (opt.cold_starts == 0)
		opt.cold_starts = opt.quick ? 1 : 3;
	if (opt.slow_secs == 0)
		opt.slow_secs = opt.quick ? 1 : 2;
	if (opt.only == 0) {
		opt.only = S_ALL;
		/*
		 * tokproc starts its own on and off daemons: `make bench` runs
		 * the bench once per mode and needs it once.
		 */
		if (opt.token_process != NULL &&
		    strcmp(opt.token_process, "off") == 0)
			opt.only &= ~(unsigned)S_TOKPROC;
	}
	if (opt.only & S_STORM)		/* needs v1's and v2's ciphertexts */
		opt.only |= S_V1 | S_ENCRYPT;
	if (opt.only & S_ECHO)		/* its floor is under their c=1 rows */
		opt.only |= S_ENCRYPT | S_DECRYPT;
	if (opt.only & S_DECRYPT)
		opt.only |= S_ENCRYPT;
	if (opt.nslow == 0) {
		static const unsigned def[] = { 1, 2, 4, 8 };
		memcpy(opt.slow_workers, def, sizeof(def));
		opt.nslow = 4;
	}
	/* p11-kit takes a relative module path as relative to its own
	 * module directory: hand the daemon absolute paths. */
	opt.daemon = abs_path(opt.daemon);
	opt.module = abs_path(opt.module);
	opt.fault_module = abs_path(opt.fault_module);
	if (access(opt.daemon, X_OK) != 0)
		die("daemon %s: %s (build it, or pass --daemon)", opt.daemon,
		    strerror(errno));
	if (access(opt.mktoken, R_OK) != 0)
		die("%s: %s (pass --mktoken)", opt.mktoken, strerror(errno));
}

int
main(int argc, char **argv)
{
	struct sigaction sa;
	struct keyring_config kcfg;
	struct keyring *kr = NULL;
	const char *uris[1] = { KEY_URI };
	char err[512];
	struct cpustat run_start, run_end;
	uint64_t t0, run_t0;
	unsigned k;
	int r;

	parse_args(argc, argv);
	cpustat_read(&run_start);
	run_t0 = now_ns();
	g_clk_tck = sysconf(_SC_CLK_TCK);
	if (g_clk_tck <= 0)
		g_clk_tck = 100;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: poll returns */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	atexit(cleanup);
	callbacks_init();
	setvbuf(stdout, NULL, _IOLBF, 0);

	make_token();
	printf("p11kms-bench: daemon %s, token %s, %u workers, c=%u, "
	    "%u connection(s), %zu requests (c=1: %zu), storm %zu, "
	    "%u round(s)\n", opt.daemon, g_dir, opt.workers, opt.conc,
	    opt.conns, opt.n64, opt.n1, opt.storm, opt.rounds);

	/* Cold starts: the last daemon stays up for the load. */
	for (k = 0; k < opt.cold_starts; k++) {
		if (k > 0 && (r = daemon_stop()) != 0)
			fprintf(stderr, "p11kms-bench: daemon exited with "
			    "status %d after SIGTERM\n", r);
		(void)daemon_start(opt.module, opt.workers, NULL, &t0);
		g_cold_ms[g_ncold++] = daemon_wait_ready(t0);
	}
	g_rss_idle = tree_status_kib("VmRSS", NULL);
	g_daemon_workers = daemon_logged_workers();
	if (g_daemon_workers == 0)
		g_daemon_workers = opt.workers;
	else if (g_daemon_workers != opt.workers)
		fprintf(stderr, "p11kms-bench: daemon runs %u workers, not "
		    "%u; the baseline uses %u threads\n", g_daemon_workers,
		    opt.workers, g_daemon_workers);

	/* The echo server forks now, while the bench has no thread. */
	if (want(S_ECHO))
		echo_start();

	/* The raw baseline's keyring: same module, key URI and PIN. */
	memset(&kcfg, 0, sizeof(kcfg));
	kcfg.module = opt.module;
	kcfg.key_uris = uris;
	kcfg.nkeys = 1;
	kcfg.pin_file = g_pin;
	if ((r = keyring_load(&kcfg, &kr, err, sizeof(err))) != KEYRING_OK)
		die("baseline keyring_load: %s", err[0] ? err :
		    keyring_strerror(r));
	if (strcmp(keyring_primary_key_id(kr), g_key_id) != 0)
		die("in-process key_id %s differs from the daemon's %s",
		    keyring_primary_key_id(kr), g_key_id);

	server_scenarios(kr);
	echo_stop();
	g_scen = "shutdown";
	if ((g_exit_status = daemon_stop()) != 0)
		fprintf(stderr, "p11kms-bench: daemon exited with status %d "
		    "after SIGTERM\n", g_exit_status);
	keyring_free(kr);

	if (want(S_AUDIT))
		audit_scenario();
	if (want(S_TOKPROC))
		tokproc_scenario();

	if (want(S_SLOW))
		slow_scenario();
	else if (g_slow_na[0] == '\0')
		snprintf(g_slow_na, sizeof(g_slow_na), "not selected (--only)");
	if (want(S_CALLS))
		calls_scenario();
	else
		snprintf(g_calls_na, sizeof(g_calls_na), "not selected "
		    "(--only)");
	if (want(S_REPLICAS))
		replicas_scenario();

	cpustat_read(&run_end);
	steal_add(&g_run_steal, &run_start, &run_end);
	g_run_secs = (double)(now_ns() - run_t0) / 1e9;
	compute_targets();
	print_table();
	print_calls();
	print_targets();
	print_tokproc_mem();
	print_run_steal();
	print_json();
	if (g_errors != 0)
		fprintf(stderr, "p11kms-bench: %lu wrong answers\n", g_errors);
	return g_errors != 0 ? 1 : 0;
}
