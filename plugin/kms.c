/*
 * kms: the plumbing the KMS services share: queueing jobs on the pool
 * and mapping their failures to statuses (token health is health.c's),
 * and the one completion point of every call (call_done). The services
 * themselves are kms_v2.c and kms_v1beta1.c.
 */
#include "plugin/kms.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plugin/gen.h"
#include "plugin/health.h"
#include "plugin/kms_api.h"
#include "plugin/log.h"
#include "plugin/mem.h"
#include "plugin/metrics.h"
#include "plugin/pbscan.h"

#define LOG_FAILURES_PER_S	50	/* "request failed" lines a second */
#define KMS_MAX_METHODS		16

struct kms {
	struct loop *loop;
	struct gen *g;			/* serving; NULL while recovering */
	const char *version;
	struct health *health;		/* the tokens' states and probes */
	char key_id[KEYRING_KEY_ID_MAX];	/* primary; kept while recovering */
	struct audit *audit;		/* NULL: no audit log */
	int audit_status;		/* audit Status and Version too */
	int audit_fail_closed;		/* refuse key operations meanwhile */
	char tok_label[KEYRING_TOKEN_TEXT_MAX];	/* of the primary key */
	char tok_serial[KEYRING_TOKEN_TEXT_MAX];
	struct log_ratelim fail_rl;	/* "request failed" lines */
	char audit_healthz[400];
};

void
kms_set_down(struct kms *k, const char *why)
{
	health_set_down(k->health, why);
}

void
kms_probe(struct kms *k)
{
	health_probe(k->health);
}

int
kms_probe_done(const struct kms *k, int *ok)
{
	*ok = health_serving(k->health);
	return health_probed(k->health);
}

struct health *
kms_health(const struct kms *k)
{
	return k->health;
}

const char *
kms_healthz(struct kms *k)
{
	if (health_serving(k->health) && k->audit_fail_closed &&
	    audit_failing(k->audit)) {
		char why[300];

		audit_why(k->audit, why, sizeof(why));
		snprintf(k->audit_healthz, sizeof(k->audit_healthz), "audit "
		    "log cannot be written (%s): refusing Encrypt and Decrypt "
		    "until it can (--audit-failure fail)", why);
		return k->audit_healthz;
	}
	return health_healthz(k->health);
}

int
kms_new(struct loop *l, struct gen *g, const struct kms_config *cfg,
    struct kms **out)
{
	struct health_config hc;
	struct kms *k;

	*out = NULL;
	if ((k = calloc(1, sizeof(*k))) == NULL)
		return -1;
	memset(&hc, 0, sizeof(hc));
	hc.probe_interval_s = cfg->probe_interval_s;
	hc.token_fault = cfg->token_fault;
	hc.changed = cfg->health_changed;
	hc.arg = cfg->fault_arg;
	if (health_new(l, &hc, &k->health) != 0) {
		free(k);
		return -1;
	}
	k->loop = l;
	k->g = g;
	health_set_gen(k->health, g);
	snprintf(k->key_id, sizeof(k->key_id), "%s", gen_primary_key_id(g));
	k->version = cfg->version;
	k->audit = cfg->audit;
	k->audit_status = cfg->audit_status;
	k->audit_fail_closed = cfg->audit_fail_closed;
	(void)gen_key_token(g, 0, k->tok_label, k->tok_serial);
	log_ratelim_init(&k->fail_rl, LOG_FAILURES_PER_S);
	*out = k;
	return 0;
}

void
kms_set_gen(struct kms *k, struct gen *g)
{
	k->g = g;
	health_set_gen(k->health, g);
	if (g == NULL)
		return;
	snprintf(k->key_id, sizeof(k->key_id), "%s", gen_primary_key_id(g));
	(void)gen_key_token(g, 0, k->tok_label, k->tok_serial);
}

void
kms_free(struct kms *k)
{
	if (k == NULL)
		return;
	health_free(k->health);
	free(k);
}

/* ---- requests ---- */

struct kms_req *
kms_req(struct grpc_call *call)
{
	struct kms_req *r = grpc_call_tag(call);

	if (r == NULL && (r = calloc(1, sizeof(*r))) != NULL)
		grpc_call_set_tag(call, r);
	return r;
}

void
kms_req_uid(struct grpc_call *call, const char *uid)
{
	struct kms_req *r = kms_req(call);

	if (r == NULL)
		return;
	/* One byte more than kept, so the record can say it was cut. */
	snprintf(r->uid, sizeof(r->uid), "%s", uid != NULL ? uid : "");
	r->has_uid = 1;
}

void
kms_fail(struct grpc_call *call, const char *reason, enum grpc_code code,
    const char *fmt, ...)
{
	struct kms_req *r = kms_req(call);
	char text[512];
	va_list ap;

	if (r != NULL)
		r->reason = reason;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	grpc_call_fail(call, code, "%s", text);
}

static void
job_cancelled(void *arg)
{
	struct pool_job *job = arg;

	/* The call is gone; the job comes back to its done callback, which
	 * then only frees it. */
	pool_job_cancel(job);
	job->arg = NULL;
}

static int
key_configured(const struct kms *k, const char *key_id)
{
	size_t i;

	for (i = 0; i < gen_nkeys(k->g); i++)
		if (strcmp(gen_key_id(k->g, i), key_id) == 0)
			return 1;
	return 0;
}

/* Maps a failed job to a status for its call. */
static void
fail_job(struct kms *k, struct grpc_call *call, struct pool_job *job,
    const char *want_key)
{
	switch (job->status) {
	case POOL_E_BUSY:
		kms_fail(call, KMS_R_BUSY, GRPC_RESOURCE_EXHAUSTED, "too many "
		    "requests in flight; retry later");
		break;
	case POOL_E_DEADLINE:
		kms_fail(call, KMS_R_DEADLINE, GRPC_DEADLINE_EXCEEDED,
		    "deadline passed while the request waited for a token "
		    "session");
		break;
	case KEYRING_E_UNKNOWN_KEY:
		if (!key_configured(k, job->key_id_out))
			kms_fail(call, KMS_R_UNKNOWN_KEY, GRPC_NOT_FOUND,
			    "ciphertext was sealed by key_id %s, which is not "
			    "configured in this plugin", job->key_id_out);
		else
			kms_fail(call, KMS_R_UNKNOWN_KEY, GRPC_NOT_FOUND,
			    "key_id '%.100s' does not match the ciphertext, "
			    "which was sealed by key_id %s", want_key != NULL ?
			    want_key : "", job->key_id_out);
		break;
	case KEYRING_E_AUTH:
		kms_fail(call, KMS_R_AUTH, GRPC_INVALID_ARGUMENT, "ciphertext "
		    "does not authenticate under key_id %s: it was altered or "
		    "belongs to another key", want_key != NULL ? want_key :
		    k->key_id);
		break;
	case KEYRING_E_INVALID:
		kms_fail(call, KMS_R_INVALID_CT, GRPC_INVALID_ARGUMENT,
		    "ciphertext is not a p11kms envelope");
		break;
	case KEYRING_E_TOOBIG:
		kms_fail(call, KMS_R_TOO_BIG, GRPC_INVALID_ARGUMENT, "plaintext "
		    "is larger than %d bytes", KEYRING_MAX_PLAINTEXT);
		break;
	case KEYRING_E_SESSION:
		/* A new session is already open: only this request fails. */
		kms_fail(call, KMS_R_SESSION, GRPC_UNAVAILABLE, "token session "
		    "lost (%s); retry", job->detail[0] ? job->detail :
		    keyring_strerror(job->status));
		break;
	case KEYRING_E_TOKEN:
	case KEYRING_E_PIN:
		/* health_job() has heard of it (kms_job_answer). */
		kms_fail(call, KMS_R_TOKEN, GRPC_UNAVAILABLE, "token error: %s",
		    job->detail[0] ? job->detail :
		    keyring_strerror(job->status));
		break;
	default:
		kms_fail(call, KMS_R_INTERNAL, GRPC_INTERNAL, "%s",
		    keyring_strerror(job->status));
	}
}

/* Queues job for call; on a full pool the call fails at once. */
static void
submit(struct kms *k, struct grpc_call *call, struct pool_job *job,
    pool_done_cb done)
{
	char why[300];
	int r;

	if (k->g == NULL || (health_probed(k->health) &&
	    !health_serving(k->health))) {
		/* Fail now rather than at the deadline; the probes and the
		 * daemon's recovery bring the token back. */
		kms_fail(call, KMS_R_TOKEN_DOWN, GRPC_UNAVAILABLE, "token "
		    "unavailable: %s", health_why(k->health));
		pool_job_free(job);
		return;
	}
	if (k->audit_fail_closed && audit_failing(k->audit)) {
		/* No key operation without its record (--audit-failure fail);
		 * the writer retries and this clears by itself. */
		audit_why(k->audit, why, sizeof(why));
		kms_fail(call, KMS_R_AUDIT, GRPC_UNAVAILABLE, "audit log "
		    "cannot be written (%s); key operations are refused until "
		    "it can", why);
		pool_job_free(job);
		return;
	}
	job->deadline = grpc_call_deadline(call);
	job->done = done;
	job->arg = call;
	job->ctx = k;
	if ((r = gen_submit(k->g, job)) != 0) {
		job->status = r;
		fail_job(k, call, job, NULL);
		pool_job_free(job);
		return;
	}
	grpc_call_on_cancel(call, job_cancelled, job);
}

ProtobufCMessage *
kms_unpack(struct grpc_call *call, const ProtobufCMessageDescriptor *d,
    const uint8_t *msg, size_t len)
{
	ProtobufCMessage *m = NULL;
	int f = pbscan_nul_in_strings(d, msg, len);

	if (f == 0)
		m = protobuf_c_message_unpack(d, &mem_protobuf_allocator, len,
		    msg);
	if (f > 0)
		kms_fail(call, KMS_R_BAD_REQUEST, GRPC_INVALID_ARGUMENT,
		    "%s field %d contains a NUL byte", d->short_name, f);
	else if (m == NULL)
		kms_fail(call, KMS_R_BAD_REQUEST, GRPC_INVALID_ARGUMENT,
		    "%s is not valid protobuf", d->short_name);
	return m;
}

void
kms_release(void *m)
{
	protobuf_c_message_free_unpacked(m, &mem_protobuf_allocator);
}

int
kms_size_ok(struct grpc_call *call, const ProtobufCBinaryData *in,
    size_t max, const char *what)
{
	if (in->len > 0 && in->len <= max)
		return 1;
	kms_fail(call, KMS_R_BAD_REQUEST, GRPC_INVALID_ARGUMENT, "%s must be "
	    "1 to %zu bytes, got %zu", what, max, in->len);
	return 0;
}

int
kms_key_id_ok(struct grpc_call *call, const char *key_id)
{
	size_t n = strlen(key_id);

	if (n > 0 && n < KEYRING_KEY_ID_MAX)
		return 1;
	kms_fail(call, KMS_R_UNKNOWN_KEY, GRPC_NOT_FOUND, "key_id '%.100s' is "
	    "not configured in this plugin", key_id);
	return 0;
}

void
kms_queue(struct kms *k, struct grpc_call *call, enum pool_op op,
    const ProtobufCBinaryData *in, size_t max, const char *what,
    const char *key_id, pool_done_cb done)
{
	struct kms_req *r = kms_req(call);
	struct pool_job *job;
	char seen[KEYRING_KEY_ID_MAX];

	if (!kms_size_ok(call, in, max, what))
		return;
	if (op == POOL_OPEN && r != NULL) {
		/* For the record: what the envelope says, read on the loop
		 * (its header only, no token call). */
		(void)gen_envelope_info(k->g, in->data, in->len, &r->mech,
		    seen);
		if (key_id == NULL)
			memcpy(r->key_id, seen, sizeof(r->key_id));
	}
	if ((job = pool_job_new(op)) == NULL) {
		kms_fail(call, KMS_R_BUSY, GRPC_RESOURCE_EXHAUSTED,
		    "out of memory");
		return;
	}
	memcpy(job->in, in->data, in->len);
	job->in_len = in->len;
	if (key_id != NULL)
		memcpy(job->key_id, key_id, strlen(key_id) + 1);
	submit(k, call, job, done);
}

struct grpc_call *
kms_job_answer(struct pool_job *job)
{
	struct grpc_call *call = job->arg;
	struct kms_req *r;
	char seen[KEYRING_KEY_ID_MAX];
	struct kms *k = job->ctx;

	/*
	 * An answered call's faults move the token states. An abandoned
	 * job (call NULL) may come back after kms_free (a generation freed
	 * at exit hands its jobs back): it touches nothing but itself; the
	 * probes see what it saw.
	 */
	if (call != NULL && k != NULL && k->g != NULL)
		health_job(k->health, job);
	if (call != NULL && job->status != KEYRING_OK) {
		fail_job(job->ctx, call, job, job->key_id[0] != '\0' ?
		    job->key_id : NULL);
		call = NULL;
	}
	if (call == NULL) {
		pool_job_free(job);
		return NULL;
	}
	if (job->op == POOL_SEAL && (r = kms_req(call)) != NULL) {
		snprintf(r->key_id, sizeof(r->key_id), "%s", job->key_id_out);
		(void)keyring_envelope_info(NULL, job->out, job->out_len,
		    &r->mech, seen);
	}
	return call;
}

const char *
kms_status_version(const struct kms *k)
{
	return k->version;
}

const char *
kms_status_key_id(const struct kms *k)
{
	return k->key_id;
}

/* ---- the method tables and the completion point ---- */

static const struct kms_api *const apis[] = {
	&kms_api_v2,
	&kms_api_v1beta1,
};
#define NAPI	(sizeof(apis) / sizeof(apis[0]))

/* Built once from apis[]: entry i of gm is (gm_api[i], gm_m[i]). */
static struct grpc_method gm[KMS_MAX_METHODS];
static const struct kms_api *gm_api[KMS_MAX_METHODS];
static const struct kms_method *gm_m[KMS_MAX_METHODS];
static char gm_path[KMS_MAX_METHODS][96];
static size_t ngm;

static void
tables_build(void)
{
	size_t a, i;

	if (ngm > 0)
		return;
	for (a = 0; a < NAPI; a++)
		for (i = 0; i < apis[a]->nmethods && ngm < KMS_MAX_METHODS;
		    i++) {
			snprintf(gm_path[ngm], sizeof(gm_path[ngm]), "/%s/%s",
			    apis[a]->service, apis[a]->methods[i].name);
			gm[ngm].path = gm_path[ngm];
			gm[ngm].handler = apis[a]->methods[i].handler;
			gm_api[ngm] = apis[a];
			gm_m[ngm] = &apis[a]->methods[i];
			ngm++;
		}
}

const struct grpc_method *
kms_methods(size_t *n)
{
	tables_build();
	*n = ngm;
	return gm;
}

void
kms_metrics_register(void)
{
	size_t i;

	tables_build();
	for (i = 0; i < ngm; i++)
		(void)metrics_add_method(gm_api[i]->service, gm_m[i]->name);
}

const char *
kms_services(void)
{
	static char buf[256];
	size_t a, o = 0;

	if (buf[0] != '\0')
		return buf;
	for (a = 0; a < NAPI && o < sizeof(buf); a++)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s",
		    a > 0 ? ", " : "", apis[a]->service);
	return buf;
}

/* The reason class of a call the handler did not classify. */
static const char *
reason_of(enum grpc_code code)
{
	switch (code) {
	case GRPC_OK:
		return KMS_R_OK;
	case GRPC_CANCELLED:
		return "cancelled";
	case GRPC_DEADLINE_EXCEEDED:
		return KMS_R_DEADLINE;
	case GRPC_RESOURCE_EXHAUSTED:
		return KMS_R_BUSY;
	case GRPC_UNIMPLEMENTED:
		return "unimplemented";
	case GRPC_INVALID_ARGUMENT:
	case GRPC_UNKNOWN:
		return KMS_R_BAD_REQUEST;
	default:
		return KMS_R_INTERNAL;
	}
}

static void
failure_log(struct kms *k, const char *path, enum grpc_code code,
    const char *text, const char *reason)
{
	uint64_t now = loop_now();
	unsigned n;

	/* At most LOG_FAILURES_PER_S lines a second: while the token is down
	 * every request fails at once. The audit log never goes through this:
	 * it keeps every record. */
	if ((n = log_ratelim_take_dropped(&k->fail_rl, now)) > 0)
		log_warn("%u failed requests were not logged (at most %d lines "
		    "a second)", n, LOG_FAILURES_PER_S);
	if (log_ratelim_allow(&k->fail_rl, now))
		log_kv(LOG_WARN, "request failed", "method", path, "code",
		    grpc_code_name(code), "reason", reason, "error", text,
		    NULL);
}

static void
audit_call(struct kms *k, struct grpc_call *call, const struct kms_api *api,
    const struct kms_method *m, const struct kms_req *r, enum grpc_code code,
    const char *reason, uint64_t elapsed)
{
	const struct grpc_peer *p = grpc_call_peer(call);
	struct audit_event ev;

	memset(&ev, 0, sizeof(ev));
	clock_gettime(CLOCK_REALTIME, &ev.ts);
	ev.api = api->version;
	ev.op = m->name;
	ev.key_id = r != NULL && r->key_id[0] != '\0' ? r->key_id :
	    m->op == KMS_OP_ENCRYPT ? k->key_id : "";
	ev.token_label = k->tok_label;
	ev.token_serial = k->tok_serial;
	ev.mechanism = r != NULL && r->mech != NULL ? r->mech : "";
	ev.uid = r != NULL && r->has_uid ? r->uid : NULL;
	ev.peer_known = p->known;
	ev.peer_uid = p->uid;
	ev.peer_gid = p->gid;
	ev.peer_pid = p->pid;
	ev.code = (int)code;
	ev.code_name = grpc_code_name(code);
	ev.reason = reason;
	ev.latency_ns = elapsed;
	audit_record(k->audit, &ev);
}

/*
 * Every call ends here, once: answered, refused by the handler or the
 * server, or abandoned by the client. Metrics, the failure log and the
 * audit log all take it from here.
 */
static void
call_done(void *ctx, struct grpc_call *call, enum grpc_code code,
    const char *text)
{
	struct kms *k = ctx;
	struct kms_req *r = grpc_call_tag(call);
	const struct grpc_method *g = grpc_call_method(call);
	const struct kms_api *api = NULL;
	const struct kms_method *m = NULL;
	uint64_t elapsed = grpc_call_elapsed(call);
	const char *reason;

	if (g != NULL && g >= gm && g < gm + ngm) {
		api = gm_api[g - gm];
		m = gm_m[g - gm];
	}
	reason = r != NULL && r->reason != NULL ? r->reason : reason_of(code);
	metrics_request(api != NULL ? api->service : NULL,
	    m != NULL ? m->name : NULL, (int)code, (double)elapsed / 1e9);
	if (code != GRPC_OK && k != NULL)
		failure_log(k, g != NULL ? g->path : "(unknown)", code, text,
		    reason);
	if (k != NULL && k->audit != NULL && m != NULL &&
	    (m->op != KMS_OP_STATUS || k->audit_status))
		audit_call(k, call, api, m, r, code, reason, elapsed);
	free(r);
}

void
kms_attach(struct kms *k, struct grpc_server *s)
{
	(void)k;		/* it is the server's ctx */
	grpc_server_on_done(s, call_done);
}
