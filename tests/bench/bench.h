/*
 * bench.h: what the files of p11kms-bench share (tests/bench/bench.c says
 * what the bench does and how it is split): limits, the option and result
 * types, the process-wide state and the functions one file calls in
 * another. Single-threaded but for the raw baseline's threads, which touch
 * only their own struct bctx.
 */
#ifndef P11KMS_BENCH_H
#define P11KMS_BENCH_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <nghttp2/nghttp2.h>
#include "kms_v1beta1.pb-c.h"
#include "kms_v2.pb-c.h"
#include "pkcs11/keyring.h"

#define NS_PER_S	1000000000ull
#define PT_LEN		32		/* the apiserver's DEK / DEK seed */
#define BODY_MAX	2048		/* framed request */
#define RESP_MAX	65536		/* framed response we accept */
#define MAX_ANN		8		/* annotations kept per ciphertext */
#define MAX_CONNS	64
#define MAX_ROWS	48
#define MAX_SLOW	8
#define MAX_SHOWN	10		/* wrong answers printed */
#define MAX_WRAP	16		/* words in --wrap */
#define MAX_PACED	8		/* paced requests per connection */
#define MAX_ROUNDS	32		/* --rounds */
#define STEAL_MIN_TICKS	20		/* fewer /proc/stat ticks: steal n/a */
#define STALL_NS	(30 * NS_PER_S)	/* no answer for this long: give up */
#define READY_NS	(30 * NS_PER_S)	/* daemon must serve by then */
#define STOP_NS		(10 * NS_PER_S)	/* SIGTERM, then SIGKILL */
#define SOFTHSM		"/usr/lib/softhsm/libsofthsm2.so"
#define KEY_URI		"pkcs11:token=kms;object=kek1;type=secret-key"
#define GRPC_UNIMPLEMENTED 12
struct bench_opt {
	const char *daemon, *mktoken, *module, *fault_module;
	unsigned workers, conc, conns, cold_starts, status_interval_us;
	unsigned rounds;	/* served/raw rounds per paired scenario */
	size_t n1, n64, storm;
	unsigned slow_delay_ms, slow_secs, grpc_timeout_s;
	unsigned slow_workers[MAX_SLOW];
	size_t nslow;
	int no_slow, keep, quick;
	unsigned only;		/* S_* bits of the scenarios to run */
	const char *wrap[MAX_WRAP];	/* --wrap: runs the daemon under it */
	size_t nwrap;
	const char *audit_log, *audit_sync;	/* audit scenario */
	const char *token_process;	/* daemon --token-process, or NULL */
};
/* Scenario groups for --only. */
enum {
	S_STATUS = 1, S_ENCRYPT = 2, S_DECRYPT = 4, S_MIXED = 8, S_V1 = 16,
	S_STORM = 32, S_SLOW = 64, S_CALLS = 128, S_AUDIT = 256,
	S_TOKPROC = 512, S_ECHO = 1024, S_ALL = 2047,
	S_REPLICAS = 2048,	/* only when named: --only replicas */
};
struct lat {
	uint64_t *v;		/* ns */
	size_t n, cap;
};
struct stats {
	size_t n;
	double p50, p99, max;	/* µs */
};
/*
 * Where a paced request's time went: from submit to the write that carried
 * its last byte (the bench's own queueing), from that write to the read that
 * carried its answer's last byte (the daemon, the socket and the scheduler),
 * and from that read to the stream's close (the bench parsing the answers
 * read with it).
 */
struct part {
	uint64_t total, pre, mid, post;		/* ns */
};
struct parts {
	struct part *v;
	size_t n, cap;
};
struct ann {
	char *key;
	uint8_t *val;
	size_t vlen;
};
struct blob {
	uint8_t *ct;
	size_t len;
	struct ann *ann;	/* v2: what Encrypt returned, passed back */
	size_t nann;
};
/* Ciphertexts made by the daemon: blob i seals make_pt(seed, i). */
struct ctset {
	uint64_t seed;
	size_t n;
	struct blob *b;
};
enum kind { K_STATUS, K_V2ENC, K_V2DEC, K_V1VER, K_V1ENC, K_V1DEC, K_N };
struct conn {
	int fd;
	nghttp2_session *h2;
	uint8_t *pend;			/* produced by nghttp2, not yet sent */
	size_t pend_off, pend_len, pend_cap;
	struct slot *done_head, *done_tail; /* closed streams to finish */
	uint64_t t_recv;		/* when the bytes being parsed were read */
	struct slot *unsent[MAX_PACED];	/* paced requests not yet written */
	size_t nunsent;
	char why[160];
};
struct client {
	struct conn c[MAX_CONNS];
	unsigned n;
};
struct lane {
	enum kind kind;
	unsigned conc;
	size_t total;		/* requests to send; 0: background lane that
				   runs until every counted lane is done */
	size_t first;		/* index of its first request (a round's
				   slice of a scenario starts there) */
	int conn_fixed;		/* -1: slots spread over connections */
	uint64_t pt_seed;	/* encrypt: plaintext i = make_pt(seed, i) */
	struct ctset *in;	/* decrypt: ciphertext i % in->n */
	struct ctset *out;	/* encrypt: keeps ciphertext i (may be NULL) */
	int probe;		/* UNIMPLEMENTED is an answer, not an error */
	uint64_t interval_ns;	/* paced: a slot's requests this far apart */
	/* results */
	size_t issued, done, failed;
	int unimplemented;
	struct lat lat;
	struct parts parts;	/* paced lanes: where the time went */
	uint64_t t_first, t_last;
	struct slot *slots;
};
struct slot {
	struct lane *lane;
	struct conn *conn;
	int busy;		/* request in flight */
	int waiting;		/* next request due at `due` */
	uint64_t due;
	size_t idx;
	uint64_t t0, t1;
	uint64_t t_sent, t_read;	/* paced lanes: request written, answer read */
	uint8_t body[BODY_MAX];
	size_t blen, boff;
	uint8_t *resp;
	size_t rlen, rcap;
	int http_status, grpc_status, too_big;
	uint32_t rst;
	char msg[128];
	struct slot *next_done;
};
#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, \
	strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE }
/* One reading of the aggregate "cpu" line, in ticks (all CPUs). */
struct cpustat {
	int ok;
	uint64_t steal, total;
};
/* Steal and all ticks summed over one or more intervals. */
struct steal {
	int bad;		/* a reading failed: n/a */
	uint64_t steal, total;
};
struct base {
	int has;
	unsigned threads;
	size_t n, failed;
	double secs, ops, p50, p99, max, cpu;	/* µs; cpu per op */
	struct steal steal;
};
/*
 * One round of a paired scenario: a slice served, the same slice raw, and
 * at c=1 with the echo baseline the same slice on the echo server.
 */
struct round {
	int raw_first;		/* raw side ran before the served one */
	char order[4];		/* sides in the order run: 's', 'r', 'e' */
	size_t n, bn;		/* answers / raw operations */
	double secs, bsecs;	/* served / raw time */
	double srv_cpu, bcpu;	/* µs per request / per raw operation */
	double p50, bp50;	/* µs, this round's requests / operations */
	struct steal steal, bsteal;
	int has_echo;
	size_t en;		/* echo answers */
	double esecs, ecpu, ep50, ep99;	/* echo time, CPU/req, µs */
};
struct row {
	char key[40], label[64];
	int na;
	char why[120];
	size_t n, failed;
	double secs, ops, p50, p99, max;	/* µs */
	double srv_cpu, cli_cpu;		/* µs per request */
	struct steal steal;			/* served side */
	struct base base;
	double ideal;		/* slow token: workers / delay */
	struct round rnd[MAX_ROUNDS];
	unsigned nrnd;		/* 0: not a paired scenario */
	double tail[3];		/* paced: parts of the slowest 1%, µs */
	int has_tail;
	char echo_key[40];	/* its echo baseline's row, or "" */
};
enum bop { B_SEAL, B_OPEN_V2, B_OPEN_V1 };
/*
 * The raw side of one scenario. Operation i seals make_pt(seed, i) or opens
 * in->b[i % in->n]; base_slice runs operations [lo, hi) on `threads`
 * sessions, and the sums over every slice make the row's baseline.
 */
struct bctx {
	struct keyring *kr;
	enum bop op;
	unsigned threads;
	size_t total;		/* operations over every slice */
	const struct ctset *in;
	uint64_t seed;
	atomic_size_t next, failed;
	size_t end;		/* this slice: next .. end - 1 */
	uint64_t *lat;		/* [total], ns */
	pthread_barrier_t bar;
	/* sums over the slices run so far */
	size_t done;
	uint64_t ns, cpu;
	struct steal steal;
};
struct bthread {
	struct bctx *b;
	pthread_t t;
	int err;
	uint64_t cpu, t_start, t_end;
};
struct bench_slow {
	unsigned workers;
	double start_ms;
};
/*
 * PKCS#11 calls per request, counted by the fault module in front of the
 * same token (its counts file: every call, by function), for each way of
 * making a GCM IV: ours (the token as it is), and the FIPS-mode forms the
 * module emulates. A 3.0 message-API seal is one C_EncryptMessage, as the
 * operation stays initialized per session.
 */
#define CALLS_FN_MAX	128
#define CALLS_FORMS	3
struct calls {
	char fn[CALLS_FN_MAX][64];
	unsigned long n[CALLS_FN_MAX];
	size_t nfn;
};
/* A figure against its target, for the summary and the JSON. */
struct target {
	const char *key, *what, *unit;
	double value, limit;
	int le;			/* value must be <= limit (else >=) */
	double rounds[MAX_ROUNDS];	/* the figure per round, if paired */
	unsigned nrounds;
};
struct jbuf {
	char *p;
	size_t len, cap;
};

extern struct bench_opt opt;
int want(unsigned s);
extern volatile sig_atomic_t g_stop;
extern volatile pid_t g_daemon;
extern char g_dir[64];
extern char g_sock[100], g_pin[128], g_conf[128], g_log[128];
extern char g_counts[128];
extern char g_key_id[KEYRING_KEY_ID_MAX];
extern const char *g_scen;
extern unsigned long g_errors;
extern unsigned g_daemon_workers;
extern clockid_t g_dclk;
extern int g_dclk_ok;
extern const char *g_cpu_src;
extern long g_clk_tck;
extern unsigned g_nstarts;
#define BENCH_DEXTRA_MAX	8
extern const char *g_dextra[BENCH_DEXTRA_MAX];
extern size_t g_ndextra;
uint64_t now_ns(void);
uint64_t clock_ns(clockid_t clk);
void sleep_ns(uint64_t ns);
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2),
    noreturn));
void die_run(const char *fmt, ...) __attribute__((format(printf, 1, 2),
    noreturn));
void wrong(size_t idx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void daemon_log_tail(void);
void * xcalloc(size_t n, size_t sz);
void stats_of(uint64_t *v, size_t n, struct stats *s);
void parts_tail(struct parts *p, double out[3]);
void make_pt(uint64_t seed, size_t i, uint8_t pt[PT_LEN]);
struct ctset * ctset_new(size_t n);
void ctset_free(struct ctset *s);
void callbacks_init(void);
int conn_open(struct conn *c, const char *path);
void client_open(struct client *cl, unsigned n);
void client_open_path(struct client *cl, unsigned n, const char *path);
void client_close(struct client *cl);
int run_lanes(struct client *cl, struct lane *const *lanes, size_t nl);
void lane_init(struct lane *ln, enum kind k, unsigned conc, size_t total);
void status_lane_init(struct lane *ln);
const char * status_pace(void);
void lane_free(struct lane *ln);
long proc_status_kib(pid_t pid, const char *name);
/*
 * proc_status_kib summed over the daemon's processes (itself, and with a
 * token process its spawner and token processes); *token (may be NULL)
 * gets the part of those below the front.
 */
long tree_status_kib(const char *name, long *token);
pid_t daemon_start(const char *module, unsigned workers, const char *fault_ctl,
    uint64_t *t0);
int daemon_stop(void);
unsigned daemon_logged_workers(void);
double daemon_wait_ready(uint64_t t0);
void cpustat_read(struct cpustat *c);
void steal_add(struct steal *s, const struct cpustat *a, const struct cpustat *b);
double steal_pct(const struct steal *s);
extern struct row g_rows[MAX_ROWS];
extern size_t g_nrows;
struct row * row_find(const char *key);
void paired(struct client *cl, struct keyring *kr, struct lane *ln,
    const char *key, const char *label, enum bop op, unsigned threads,
    const struct ctset *bin);
void write_ctl(const char *path, const char *text);
/*
 * The socket echo baseline (bench_echo.c): a child of the bench answering
 * v2 Encrypt and Decrypt at once with a fixed valid reply, on g_echo_sock.
 * echo_start asks the daemon for one Encrypt (the replies' shape) and
 * forks; call it while the bench has no thread. g_echo_in holds the one
 * ciphertext the echo's Decrypt lanes send (its plaintext is the reply).
 */
extern char g_echo_sock[100];
extern volatile pid_t g_echo;
extern struct ctset *g_echo_in;
void echo_start(void);
int echo_running(void);
uint64_t echo_cpu_ns(void);
void echo_stop(void);
/* Status on a second connection, idle and beside Encrypt c=1: p99 per
 * round, [k][0] idle, [k][1] under load. */
extern double g_c1s_p99[MAX_ROUNDS][2];
extern unsigned g_c1s_nrnd;
extern double g_cold_ms[16];
extern unsigned g_ncold;
extern long g_rss_idle, g_rss_peak, g_rss_now, g_pss_now;
extern long g_rss_peak_token;	/* of it below the front */
extern uint64_t g_cpu_clock_total, g_cpu_stat_total;
extern int g_exit_status;
extern const char *g_v1_na;
extern const char *g_storm_mode;
extern char g_slow_na[160];
extern struct bench_slow g_slow[MAX_SLOW];
extern size_t g_nslow;
void slow_scenario(void);
void run_quiet(struct client *cl, struct lane *ln, const char *what);
extern char g_calls_na[160];
void calls_scenario(void);
void print_calls(void);
void audit_scenario(void);
void replicas_scenario(void);
/* --only tokproc (bench_tokproc.c): --token-process on and off, rounds
 * alternating between the two daemons. */
struct tokproc_mem {
	int has;
	long rss_on, pss_on, rss_off, pss_off;	/* KiB over the processes */
};
extern struct tokproc_mem g_tokproc_mem;
void tokproc_scenario(void);
void print_tokproc_mem(void);
struct row *row_new(const char *key, const char *label);
uint64_t daemon_cpu_ns(void);
/* A "Name: N kB" line of /proc/PID/smaps_rollup summed over the daemon's
 * processes, in KiB; -1 if none could be read. */
long tree_smaps_kib(const char *name);
void server_scenarios(struct keyring *kr);
void print_table(void);
void target(const char *key, const char *what, const char *unit, double value,
    double limit, int le);
double median(double *v, size_t n);
void compute_targets(void);
void print_targets(void);
extern struct steal g_run_steal;
extern double g_run_secs;
void print_run_steal(void);
void jprintf(struct jbuf *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void print_json(void);

#endif
