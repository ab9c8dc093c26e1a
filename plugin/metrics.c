/*
 * metrics: the Prometheus registry (metrics.h). Static arrays of relaxed
 * atomics indexed by fixed tables (service, method, code, PKCS#11 function,
 * a few CK_RV slots), so recording from any thread never locks, allocates
 * or creates a series a peer chose; metrics_render formats it on the ops
 * thread.
 */
#include "plugin/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plugin/version.h"

#define N(a)		(sizeof(a) / sizeof((a)[0]))
#define RELAXED		memory_order_relaxed

/* ---- label tables (fixed: they bound the number of series) ---- */

/*
 * Services and methods come from the KMS method tables (metrics_add_method
 * at start-up); the last slot of each is "other". Written before threads
 * record or render, read-only afterwards.
 */
static const char *services[METRICS_MAX_SERVICES + 1] = { "other" };
static const char *methods[METRICS_MAX_METHODS + 1] = { "other" };
static size_t nsvc = 1, nmeth = 1;	/* in use, "other" included */
static const char *const codes[] = {
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
	"RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
};
#define CODE_UNKNOWN	2

static const char *const functions[] = {
	"C_Initialize", "C_Finalize", "C_GetInfo", "C_GetSlotList",
	"C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList",
	"C_GetMechanismInfo", "C_OpenSession", "C_CloseSession", "C_Login",
	"C_Logout", "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal",
	"C_GetAttributeValue", "C_CopyObject", "C_DestroyObject",
	"C_GenerateKey", "C_GenerateRandom", "C_EncryptInit", "C_Encrypt",
	"C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit", "C_Decrypt",
	"C_DecryptUpdate", "C_DecryptFinal", "C_SignInit", "C_Sign",
	"C_VerifyInit", "C_Verify", "C_WrapKey", "C_UnwrapKey",
	"C_CreateObject", "C_MessageEncryptInit", "C_EncryptMessage",
	"C_MessageEncryptFinal", "C_MessageDecryptInit", "C_DecryptMessage",
	"C_MessageDecryptFinal", "other",
};

#define NSVC	nsvc
#define NMETH	nmeth
#define SVC_DIM	(METRICS_MAX_SERVICES + 1)
#define METH_DIM (METRICS_MAX_METHODS + 1)
#define NCODE	N(codes)
#define NFUNC	N(functions)
#define NRV	(METRICS_RV_SLOTS + 1)	/* last: "other" */

/* ---- histograms ---- */

/* Upper bounds: from a fast local token (~100 µs) to a hung one (10 s). */
static const uint64_t bucket_ns[] = {
	100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
	25000000, 50000000, 100000000, 250000000, 500000000, 1000000000,
	2500000000u, 5000000000u, 10000000000u,
};
static const char *const bucket_le[] = {
	"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
	"0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
};
#define NBUCKET	N(bucket_ns)

_Static_assert(N(bucket_ns) == N(bucket_le), "one le label per bound");

struct hist {
	/* Not cumulative: [i] counts values in (bound[i-1], bound[i]];
	 * [NBUCKET] those above the last bound. */
	_Atomic uint64_t bucket[NBUCKET + 1];
	_Atomic uint64_t sum_ns;
};

/* ---- the registry (static: recording never allocates) ---- */

static struct {
	_Atomic uint64_t requests[SVC_DIM][METH_DIM][NCODE];
	struct hist req_hist[SVC_DIM][METH_DIM];
	struct hist tok_hist[NFUNC][NRV];
	/* rv + 1 of each claimed slot; 0 = free. Claimed once, never freed. */
	_Atomic uint64_t rv_slot[METRICS_RV_SLOTS];
	_Atomic int token_up;
	_Atomic uint64_t token_changes;
	_Atomic int replica_up[METRICS_MAX_TOKENS];
	_Atomic unsigned pool_workers, pool_busy, pool_queued;
	_Atomic unsigned grpc_conns, grpc_calls;
	_Atomic int audit_on;
	_Atomic uint64_t audit_written, audit_lost, audit_errors,
	    audit_truncated;
	_Atomic unsigned audit_queue;
	_Atomic uint64_t reloads_ok, reloads_failed;
	_Atomic uint64_t reload_ok_time_ms;	/* 0: never */
	_Atomic int reload_last_ok;		/* -1: none yet */
} reg = { .reload_last_ok = -1 };

static _Atomic(const char *(*)(unsigned long)) rv_namer;

static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;
static char key_id[128];		/* under key_lock */

static double start_time;

__attribute__((constructor)) static void
metrics_init(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t
to_ns(double seconds)
{
	/* NaN and negatives (a clock hiccup) count as 0. */
	if (!(seconds > 0))
		return 0;
	if (seconds >= 1e9)
		return UINT64_C(1000000000) * UINT64_C(1000000000);
	return (uint64_t)(seconds * 1e9);
}

static void
hist_observe(struct hist *h, double seconds)
{
	uint64_t ns = to_ns(seconds);
	size_t i;

	for (i = 0; i < NBUCKET && ns > bucket_ns[i]; i++)
		;
	atomic_fetch_add_explicit(&h->bucket[i], 1, RELAXED);
	atomic_fetch_add_explicit(&h->sum_ns, ns, RELAXED);
}

/* Adds name before "other" in table (n entries); 0, or -1 when full. */
static int
table_add(const char **table, size_t *n, size_t max, const char *name)
{
	size_t i;

	for (i = 0; i + 1 < *n; i++)
		if (strcmp(table[i], name) == 0)
			return 0;
	if (*n == max + 1)
		return -1;
	table[*n - 1] = name;
	table[*n] = "other";
	(*n)++;
	return 0;
}

int
metrics_add_method(const char *service, const char *method)
{
	if (table_add(services, &nsvc, METRICS_MAX_SERVICES, service) != 0 ||
	    table_add(methods, &nmeth, METRICS_MAX_METHODS, method) != 0)
		return -1;
	return 0;
}

/* Index of s in table (last entry "other" on no match or NULL). */
static size_t
lookup(const char *const *table, size_t n, const char *s, size_t len)
{
	size_t i;

	if (s != NULL)
		for (i = 0; i + 1 < n; i++)
			if (strlen(table[i]) == len &&
			    memcmp(table[i], s, len) == 0)
				return i;
	return n - 1;
}

static size_t
code_index(int code)
{
	return code >= 0 && (size_t)code < NCODE ? (size_t)code : CODE_UNKNOWN;
}

static void
record_request(size_t svc, size_t meth, int grpc_code, double seconds)
{
	/* "other" is one bucket: a known method of an unknown service (or the
	 * reverse) must not create a series of its own. */
	if (svc == NSVC - 1 || meth == NMETH - 1) {
		svc = NSVC - 1;
		meth = NMETH - 1;
	}
	atomic_fetch_add_explicit(&reg.requests[svc][meth][code_index(
	    grpc_code)], 1, RELAXED);
	hist_observe(&reg.req_hist[svc][meth], seconds);
}

void
metrics_request(const char *service, const char *method, int grpc_code,
    double seconds)
{
	record_request(lookup(services, NSVC, service,
	    service ? strlen(service) : 0), lookup(methods, NMETH, method,
	    method ? strlen(method) : 0), grpc_code, seconds);
}

void
metrics_request_path(const char *path, int grpc_code, double seconds)
{
	const char *slash;
	size_t svc = NSVC - 1, meth = NMETH - 1;

	if (path != NULL && path[0] == '/' &&
	    (slash = strchr(path + 1, '/')) != NULL) {
		svc = lookup(services, NSVC, path + 1,
		    (size_t)(slash - path - 1));
		meth = lookup(methods, NMETH, slash + 1, strlen(slash + 1));
	}
	record_request(svc, meth, grpc_code, seconds);
}

/* Slot of rv, claiming a free one on first sight; NRV - 1 when full. */
static size_t
rv_index(unsigned long rv)
{
	uint64_t want = (uint64_t)rv + 1, cur;
	size_t i;

	if (want == 0)			/* rv == ULONG_MAX */
		return NRV - 1;
	for (i = 0; i < METRICS_RV_SLOTS; i++) {
		cur = atomic_load_explicit(&reg.rv_slot[i], memory_order_acquire);
		if (cur == want)
			return i;
		if (cur != 0)
			continue;
		if (atomic_compare_exchange_strong(&reg.rv_slot[i], &cur, want))
			return i;
		if (cur == want)	/* another thread claimed it for rv */
			return i;
	}
	return NRV - 1;
}

void
metrics_token_call(const char *function, unsigned long rv, double seconds)
{
	size_t f = lookup(functions, NFUNC, function,
	    function ? strlen(function) : 0);

	hist_observe(&reg.tok_hist[f][rv_index(rv)], seconds);
}

void
metrics_set_rv_namer(const char *(*namer)(unsigned long rv))
{
	atomic_store(&rv_namer, namer);
}

/* Token names for the token label: set on reloads, read by the renderer. */
static pthread_mutex_t names_mu = PTHREAD_MUTEX_INITIALIZER;
static char token_names[METRICS_MAX_TOKENS][METRICS_TOKEN_NAME_MAX];
static size_t ntoken_names;

void
metrics_set_tokens(const char *const *names, size_t n)
{
	size_t i, j;
	char *d;

	if (n > METRICS_MAX_TOKENS)
		n = METRICS_MAX_TOKENS;
	pthread_mutex_lock(&names_mu);
	for (i = 0; i < n; i++) {
		d = token_names[i];
		/* A label value: no quote, backslash or control byte. */
		for (j = 0; names[i][j] != '\0' &&
		    j + 1 < METRICS_TOKEN_NAME_MAX; j++)
			d[j] = names[i][j] == '"' || names[i][j] == '\\' ||
			    (unsigned char)names[i][j] < 0x20 ? '_' :
			    names[i][j];
		d[j] = '\0';
	}
	ntoken_names = n;
	pthread_mutex_unlock(&names_mu);
}

void
metrics_set_replica_up(size_t i, int up)
{
	if (i < METRICS_MAX_TOKENS)
		atomic_store_explicit(&reg.replica_up[i], up ? 1 : 0, RELAXED);
}

void
metrics_set_token_up(int up)
{
	int old = atomic_exchange(&reg.token_up, up ? 1 : 0);

	if (old != (up ? 1 : 0))
		atomic_fetch_add_explicit(&reg.token_changes, 1, RELAXED);
}

void
metrics_set_pool(unsigned workers, unsigned busy, unsigned queued)
{
	atomic_store_explicit(&reg.pool_workers, workers, RELAXED);
	atomic_store_explicit(&reg.pool_busy, busy, RELAXED);
	atomic_store_explicit(&reg.pool_queued, queued, RELAXED);
}

void
metrics_set_grpc(unsigned connections, unsigned active_calls)
{
	atomic_store_explicit(&reg.grpc_conns, connections, RELAXED);
	atomic_store_explicit(&reg.grpc_calls, active_calls, RELAXED);
}

void
metrics_set_key_id(const char *id)
{
	pthread_mutex_lock(&key_lock);
	snprintf(key_id, sizeof(key_id), "%s", id != NULL ? id : "");
	pthread_mutex_unlock(&key_lock);
}

void
metrics_reload(int ok, double when)
{
	atomic_fetch_add_explicit(ok ? &reg.reloads_ok : &reg.reloads_failed,
	    1, RELAXED);
	if (ok)
		atomic_store_explicit(&reg.reload_ok_time_ms,
		    (uint64_t)(when * 1000.0), RELAXED);
	atomic_store_explicit(&reg.reload_last_ok, ok ? 1 : 0, RELAXED);
}

void
metrics_audit_enable(void)
{
	atomic_store(&reg.audit_on, 1);
}

void
metrics_audit_written(unsigned long n)
{
	atomic_fetch_add_explicit(&reg.audit_written, n, RELAXED);
}

void
metrics_audit_lost(unsigned long n)
{
	atomic_fetch_add_explicit(&reg.audit_lost, n, RELAXED);
}

void
metrics_audit_write_error(void)
{
	atomic_fetch_add_explicit(&reg.audit_errors, 1, RELAXED);
}

void
metrics_audit_truncated(void)
{
	atomic_fetch_add_explicit(&reg.audit_truncated, 1, RELAXED);
}

void
metrics_audit_queue(unsigned depth)
{
	atomic_store_explicit(&reg.audit_queue, depth, RELAXED);
}

void
metrics_reset(void)
{
	memset(&reg, 0, sizeof(reg));
	pthread_mutex_lock(&names_mu);
	ntoken_names = 0;
	pthread_mutex_unlock(&names_mu);
	atomic_store(&reg.reload_last_ok, -1);
	atomic_store(&rv_namer, NULL);
	metrics_set_key_id(NULL);
}

/* ---- rendering ---- */

struct sb {
	char *p;
	size_t len, cap;
	int oom;
};

static void sb_printf(struct sb *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
sb_printf(struct sb *b, const char *fmt, ...)
{
	va_list ap;
	size_t ncap;
	char *np;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		ncap = b->cap * 2 + (size_t)n;
		if ((np = realloc(b->p, ncap)) == NULL) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = ncap;
	}
}

static void
sb_header(struct sb *b, const char *name, const char *type, const char *help)
{
	sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label value escaping of the text format: \\, \" and \n. */
static void
escape_label(const char *s, char *out, size_t cap)
{
	size_t o = 0;

	for (; *s != '\0' && o + 3 < cap; s++) {
		if (*s == '\\' || *s == '"') {
			out[o++] = '\\';
			out[o++] = *s;
		} else if (*s == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else {
			out[o++] = *s;
		}
	}
	out[o] = '\0';
}

static uint64_t
load64(_Atomic uint64_t *v)
{
	return atomic_load_explicit(v, RELAXED);
}

static void
render_hist(struct sb *b, const char *name, const char *labels,
    struct hist *h)
{
	uint64_t cum = 0, sum = load64(&h->sum_ns);
	size_t i;

	for (i = 0; i < NBUCKET; i++) {
		cum += load64(&h->bucket[i]);
		sb_printf(b, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels,
		    bucket_le[i], (unsigned long long)cum);
	}
	cum += load64(&h->bucket[NBUCKET]);
	sb_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
	    (unsigned long long)cum);
	sb_printf(b, "%s_sum{%s} %llu.%09llu\n", name, labels,
	    (unsigned long long)(sum / 1000000000u),
	    (unsigned long long)(sum % 1000000000u));
	sb_printf(b, "%s_count{%s} %llu\n", name, labels,
	    (unsigned long long)cum);
}

static uint64_t
hist_count(struct hist *h)
{
	uint64_t n = 0;
	size_t i;

	for (i = 0; i <= NBUCKET; i++)
		n += load64(&h->bucket[i]);
	return n;
}

static void
rv_label(size_t slot, char *out, size_t cap)
{
	const char *(*namer)(unsigned long) = atomic_load(&rv_namer);
	const char *name = NULL;
	unsigned long rv;
	char tmp[64];

	if (slot == NRV - 1) {
		snprintf(out, cap, "other");
		return;
	}
	rv = (unsigned long)(load64(&reg.rv_slot[slot]) - 1);
	if (namer != NULL)
		name = namer(rv);
	if (name == NULL) {
		snprintf(tmp, sizeof(tmp), "0x%08lx", rv);
		name = tmp;
	}
	escape_label(name, out, cap);
}

static void
render_requests(struct sb *b)
{
	char labels[256];
	size_t s, m, c;
	uint64_t n;

	sb_header(b, "p11kms_grpc_requests_total", "counter",
	    "gRPC calls finished, by service, method and status code.");
	for (s = 0; s < NSVC; s++)
		for (m = 0; m < NMETH; m++)
			for (c = 0; c < NCODE; c++) {
				n = load64(&reg.requests[s][m][c]);
				if (n == 0)
					continue;
				sb_printf(b, "p11kms_grpc_requests_total{"
				    "service=\"%s\",method=\"%s\",code=\"%s\"} "
				    "%llu\n", services[s], methods[m], codes[c],
				    (unsigned long long)n);
			}
	sb_header(b, "p11kms_grpc_request_duration_seconds", "histogram",
	    "Time from a complete gRPC request to its reply being queued.");
	for (s = 0; s < NSVC; s++)
		for (m = 0; m < NMETH; m++) {
			if (hist_count(&reg.req_hist[s][m]) == 0)
				continue;
			snprintf(labels, sizeof(labels), "service=\"%s\","
			    "method=\"%s\"", services[s], methods[m]);
			render_hist(b, "p11kms_grpc_request_duration_seconds",
			    labels, &reg.req_hist[s][m]);
		}
}

static void
render_token(struct sb *b)
{
	char labels[256], rv[96];
	size_t f, r, i;

	sb_header(b, "p11kms_pkcs11_call_duration_seconds", "histogram",
	    "PKCS#11 call latency, by function and CK_RV returned.");
	for (f = 0; f < NFUNC; f++)
		for (r = 0; r < NRV; r++) {
			if (hist_count(&reg.tok_hist[f][r]) == 0)
				continue;
			rv_label(r, rv, sizeof(rv));
			snprintf(labels, sizeof(labels), "function=\"%s\","
			    "rv=\"%s\"", functions[f], rv);
			render_hist(b, "p11kms_pkcs11_call_duration_seconds",
			    labels, &reg.tok_hist[f][r]);
		}
	sb_header(b, "p11kms_token_up", "gauge",
	    "1 when the last health round trip on the token succeeded, else "
	    "0; one series per token holding the keys.");
	pthread_mutex_lock(&names_mu);
	if (ntoken_names == 0)
		sb_printf(b, "p11kms_token_up %d\n",
		    atomic_load(&reg.token_up));
	for (i = 0; i < ntoken_names; i++)
		sb_printf(b, "p11kms_token_up{token=\"%s\"} %d\n",
		    token_names[i], atomic_load(&reg.replica_up[i]));
	pthread_mutex_unlock(&names_mu);
	sb_header(b, "p11kms_token_state_changes_total", "counter",
	    "Times the token went up or down.");
	sb_printf(b, "p11kms_token_state_changes_total %llu\n",
	    (unsigned long long)load64(&reg.token_changes));
}

/* One unlabelled gauge: its HELP/TYPE header and its value. */
static void
gauge(struct sb *b, const char *name, const char *help, atomic_uint *v)
{
	sb_header(b, name, "gauge", help);
	sb_printf(b, "%s %u\n", name, atomic_load_explicit(v, RELAXED));
}

static void
render_gauges(struct sb *b)
{
	char id[sizeof(key_id) * 2];

	gauge(b, "p11kms_grpc_requests_in_flight",
	    "gRPC calls accepted and not yet answered.", &reg.grpc_calls);
	gauge(b, "p11kms_grpc_connections",
	    "Open client connections on the KMS socket.", &reg.grpc_conns);
	gauge(b, "p11kms_pool_workers",
	    "Token worker threads, each with its own session.",
	    &reg.pool_workers);
	gauge(b, "p11kms_pool_busy_workers",
	    "Token worker threads running a job.", &reg.pool_busy);
	gauge(b, "p11kms_pool_queued_jobs",
	    "Token jobs waiting for a free worker.", &reg.pool_queued);

	pthread_mutex_lock(&key_lock);
	escape_label(key_id, id, sizeof(id));
	pthread_mutex_unlock(&key_lock);
	sb_header(b, "p11kms_active_key_info", "gauge",
	    "The key_id of the key that encrypts; the value is always 1.");
	if (id[0] != '\0')
		sb_printf(b, "p11kms_active_key_info{key_id=\"%s\"} 1\n", id);
}

static void
counter(struct sb *b, const char *name, const char *help, _Atomic uint64_t *v)
{
	sb_header(b, name, "counter", help);
	sb_printf(b, "%s %llu\n", name, (unsigned long long)load64(v));
}

static void
render_reloads(struct sb *b)
{
	uint64_t t = load64(&reg.reload_ok_time_ms);
	int last = atomic_load_explicit(&reg.reload_last_ok, RELAXED);

	sb_header(b, "p11kms_reloads_total", "counter",
	    "Configuration reloads (SIGHUP) by result: ok or failed.");
	sb_printf(b, "p11kms_reloads_total{result=\"ok\"} %llu\n",
	    (unsigned long long)load64(&reg.reloads_ok));
	sb_printf(b, "p11kms_reloads_total{result=\"failed\"} %llu\n",
	    (unsigned long long)load64(&reg.reloads_failed));
	sb_header(b, "p11kms_last_reload_success_timestamp_seconds", "gauge",
	    "Time of the last successful reload, seconds since the Unix "
	    "epoch; the start time until one succeeds.");
	sb_printf(b, "p11kms_last_reload_success_timestamp_seconds %.3f\n",
	    t != 0 ? (double)t / 1000.0 : start_time);
	sb_header(b, "p11kms_last_reload_successful", "gauge",
	    "1 when the last reload succeeded (or none was tried), 0 when it "
	    "failed.");
	sb_printf(b, "p11kms_last_reload_successful %d\n", last != 0);
}

static void
render_audit(struct sb *b)
{
	if (!atomic_load(&reg.audit_on))
		return;
	counter(b, "p11kms_audit_records_written_total",
	    "Audit records written to the audit log.", &reg.audit_written);
	counter(b, "p11kms_audit_records_lost_total",
	    "Audit records dropped: the audit log could not be written and "
	    "the in-memory queue was full.", &reg.audit_lost);
	counter(b, "p11kms_audit_write_errors_total",
	    "Failed writes, syncs or opens of the audit log.",
	    &reg.audit_errors);
	counter(b, "p11kms_audit_truncations_total",
	    "Times the audit log was found shorter than written "
	    "(copytruncate or tampering).", &reg.audit_truncated);
	gauge(b, "p11kms_audit_queue_depth",
	    "Audit records waiting to be written.", &reg.audit_queue);
}

int
metrics_render(char **buf, size_t *len)
{
	struct sb b = { NULL, 0, 0, 0 };

	*buf = NULL;
	*len = 0;
	if ((b.p = malloc(16384)) == NULL)
		return -1;
	b.cap = 16384;
	sb_header(&b, "p11kms_build_info", "gauge",
	    "Build information; the value is always 1.");
	sb_printf(&b, "p11kms_build_info{version=\"%s\"} 1\n", P11KMS_VERSION);
	sb_header(&b, "p11kms_start_time_seconds", "gauge",
	    "Start time of the process, seconds since the Unix epoch.");
	sb_printf(&b, "p11kms_start_time_seconds %.3f\n", start_time);
	render_requests(&b);
	render_token(&b);
	render_gauges(&b);
	render_reloads(&b);
	render_audit(&b);
	if (b.oom) {
		free(b.p);
		return -1;
	}
	/* success */
	*buf = b.p;
	*len = b.len;
	return 0;
}
