#include "plugin/kms.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_v1beta1.pb-c.h"
#include "kms_v2.pb-c.h"
#include "plugin/log.h"
#include "plugin/mem.h"
#include "plugin/pbscan.h"
#include "plugin/version.h"

#define NS_PER_S		1000000000ull
#define PROBE_RETRY_S		2	/* after a failure, probe this soon */
#define PROBE_SESSION_TRIES	3	/* lost sessions before "down" */
#define PROBE_SESSION_RETRY_NS	100000000ull	/* 100 ms */

struct kms {
	struct loop *loop;
	struct keyring *kr;
	struct pool *pool;
	const char *version;
	uint64_t interval;		/* ns */
	struct loop_timer timer;
	struct pool_job *probe_job;	/* running probe, or NULL */
	int probed;			/* a probe has finished */
	unsigned session_fails;		/* probes in a row that lost a session */
	int healthy;
	uint64_t last_ok;		/* loop_now() of the last good probe */
	time_t down_since;		/* wall clock, for the message */
	char key_id[KEYRING_KEY_ID_MAX];	/* primary; kept while recovering */
	char why[256];			/* the failure, while unhealthy */
	char healthz[400];
	void (*token_fault)(void *arg);
	void (*health_changed)(void *arg);
	void *fault_arg;
};

static void
health_notify(struct kms *k)
{
	if (k->health_changed != NULL)
		k->health_changed(k->fault_arg);
}

/* ---- health ---- */

static void
set_down(struct kms *k, const char *why)
{
	int was = k->healthy || k->why[0] == '\0';

	if (was) {
		k->down_since = time(NULL);
		log_warn("token unhealthy: %s", why);
	}
	k->healthy = 0;
	snprintf(k->why, sizeof(k->why), "%s", why);
	if (was)
		health_notify(k);
}

void
kms_set_down(struct kms *k, const char *why)
{
	k->probed = 1;
	set_down(k, why);
}

/* detail: the token's own words ("C_Encrypt: CKR_DEVICE_REMOVED"), or "". */
static void
health_fail(struct kms *k, const char *what, int status, const char *detail)
{
	char why[256];

	if (detail != NULL && detail[0] != '\0')
		snprintf(why, sizeof(why), "%s: %s", what, detail);
	else
		snprintf(why, sizeof(why), "%s: %s", what,
		    keyring_strerror(status));
	set_down(k, why);
	if (status == KEYRING_E_TOKEN && k->token_fault != NULL)
		k->token_fault(k->fault_arg);
}

static void
probe_done(struct pool_job *job)
{
	struct kms *k = job->arg;
	uint64_t next;

	if (k == NULL) {		/* kms_free detached us */
		pool_job_free(job);
		return;
	}
	k->probe_job = NULL;
	k->probed = 1;
	if (job->status == KEYRING_OK) {
		int was = k->healthy;

		if (!was)
			log_info("token healthy: seal/open round trip "
			    "succeeded in %.3f ms",
			    (double)(job->finished - job->started) / 1e6);
		k->healthy = 1;
		k->why[0] = '\0';
		k->last_ok = job->finished;
		k->session_fails = 0;
		if (!was)
			health_notify(k);
	} else if (job->status == KEYRING_E_SESSION &&
	    ++k->session_fails < PROBE_SESSION_TRIES) {
		/* The worker has a new session already: try again soon
		 * rather than call the token down for one lost session. */
		pool_job_free(job);
		(void)loop_timer_start(k->loop, &k->timer,
		    loop_now() + PROBE_SESSION_RETRY_NS);
		return;
	} else if (job->status == KEYRING_E_SESSION) {
		/* Sessions keep failing: treat it as the token's fault. */
		health_fail(k, "seal/open round trip failed on fresh sessions",
		    KEYRING_E_TOKEN, job->detail);
	} else if (job->status == POOL_E_DEADLINE) {
		health_fail(k, "health probe waited longer than the probe "
		    "interval for a token session", KEYRING_E_TOKEN, NULL);
	} else if (job->status != POOL_E_CANCELLED) {
		health_fail(k, "seal/open round trip failed", job->status,
		    job->detail);
	}
	pool_job_free(job);
	next = k->interval;
	if (!k->healthy && next > (uint64_t)PROBE_RETRY_S * NS_PER_S)
		next = (uint64_t)PROBE_RETRY_S * NS_PER_S;
	next += loop_now();
	(void)loop_timer_start(k->loop, &k->timer, next);
}

void
kms_probe(struct kms *k)
{
	struct pool_job *job;
	int r;

	if (k->probe_job != NULL)
		return;
	loop_timer_stop(k->loop, &k->timer);
	if (k->pool == NULL)		/* recovering: the daemon reports */
		return;
	if ((job = pool_job_new(POOL_PROBE)) == NULL) {
		(void)loop_timer_start(k->loop, &k->timer,
		    loop_now() + NS_PER_S);
		return;
	}
	job->deadline = loop_now() + k->interval;
	job->done = probe_done;
	job->arg = k;
	if ((r = pool_submit(k->pool, job)) != 0) {
		/* Every slot busy: the token is answering others, retry. */
		pool_job_free(job);
		(void)loop_timer_start(k->loop, &k->timer,
		    loop_now() + NS_PER_S);
		return;
	}
	k->probe_job = job;
}

static void
probe_timer(void *arg)
{
	kms_probe(arg);
}

int
kms_probe_done(const struct kms *k, int *ok)
{
	*ok = k->healthy;
	return k->probed;
}

const char *
kms_healthz(struct kms *k)
{
	uint64_t now = loop_now(), age;
	char since[32];
	struct tm tm;

	if (!k->probed)
		return "starting: first token round trip has not finished";
	if (k->healthy) {
		age = now - k->last_ok;
		/* Probes run every interval; allow one slow probe. */
		if (age <= 2 * k->interval + 5 * NS_PER_S)
			return "ok";
		snprintf(k->healthz, sizeof(k->healthz), "no token round trip "
		    "for %llu s: the token may be hung",
		    (unsigned long long)(age / NS_PER_S));
		return k->healthz;
	}
	gmtime_r(&k->down_since, &tm);
	strftime(since, sizeof(since), "%H:%M:%S UTC", &tm);
	snprintf(k->healthz, sizeof(k->healthz), "%s (since %s, retrying)",
	    k->why, since);
	return k->healthz;
}

int
kms_new(struct loop *l, struct keyring *kr, struct pool *pool,
    const struct kms_config *cfg, struct kms **out)
{
	struct kms *k;

	*out = NULL;
	if ((k = calloc(1, sizeof(*k))) == NULL)
		return -1;
	k->loop = l;
	k->kr = kr;
	k->pool = pool;
	snprintf(k->key_id, sizeof(k->key_id), "%s",
	    keyring_primary_key_id(kr));
	k->version = cfg->version;
	k->interval = (uint64_t)cfg->probe_interval_s * NS_PER_S;
	k->timer.cb = probe_timer;
	k->timer.arg = k;
	k->token_fault = cfg->token_fault;
	k->health_changed = cfg->health_changed;
	k->fault_arg = cfg->fault_arg;
	*out = k;
	return 0;
}

void
kms_set_keyring(struct kms *k, struct keyring *kr, struct pool *pool)
{
	if (k->probe_job != NULL) {	/* it belongs to the old pool */
		pool_job_cancel(k->probe_job);
		k->probe_job->arg = NULL;
		k->probe_job = NULL;
	}
	k->kr = kr;
	k->pool = pool;
	if (kr == NULL) {
		/* Recovering: no token until the daemon hands a new one. */
		loop_timer_stop(k->loop, &k->timer);
		if (k->healthy)
			set_down(k, "reopening the token after a fault");
		return;
	}
	snprintf(k->key_id, sizeof(k->key_id), "%s",
	    keyring_primary_key_id(kr));
	if (!k->healthy)
		log_info("token healthy: keyring reloaded");
	k->probed = 1;
	k->healthy = 1;
	k->why[0] = '\0';
	k->last_ok = loop_now();
	(void)loop_timer_start(k->loop, &k->timer, loop_now() + k->interval);
}

void
kms_free(struct kms *k)
{
	if (k == NULL)
		return;
	loop_timer_stop(k->loop, &k->timer);
	if (k->probe_job != NULL) {
		pool_job_cancel(k->probe_job);
		k->probe_job->arg = NULL;
	}
	free(k);
}

/* ---- requests ---- */

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

	for (i = 0; k->kr != NULL && i < keyring_nkeys(k->kr); i++)
		if (strcmp(keyring_key_id(k->kr, i), key_id) == 0)
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
		grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED, "too many "
		    "requests in flight; retry later");
		break;
	case POOL_E_DEADLINE:
		grpc_call_fail(call, GRPC_DEADLINE_EXCEEDED, "deadline passed "
		    "while the request waited for a token session");
		break;
	case KEYRING_E_UNKNOWN_KEY:
		if (!key_configured(k, job->key_id_out))
			grpc_call_fail(call, GRPC_NOT_FOUND, "ciphertext was "
			    "sealed by key_id %s, which is not configured in "
			    "this plugin", job->key_id_out);
		else
			grpc_call_fail(call, GRPC_NOT_FOUND, "key_id '%.100s' "
			    "does not match the ciphertext, which was sealed "
			    "by key_id %s", want_key != NULL ? want_key : "",
			    job->key_id_out);
		break;
	case KEYRING_E_AUTH:
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "ciphertext does "
		    "not authenticate under key_id %s: it was altered or "
		    "belongs to another key", want_key != NULL ? want_key :
		    k->key_id);
		break;
	case KEYRING_E_INVALID:
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "ciphertext is not "
		    "a p11kms envelope");
		break;
	case KEYRING_E_TOOBIG:
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "plaintext is "
		    "larger than %d bytes", KEYRING_MAX_PLAINTEXT);
		break;
	case KEYRING_E_SESSION:
		/* A new session is already open: only this request fails. */
		grpc_call_fail(call, GRPC_UNAVAILABLE, "token session lost "
		    "(%s); retry", job->detail[0] ? job->detail :
		    keyring_strerror(job->status));
		break;
	case KEYRING_E_TOKEN:
	case KEYRING_E_PIN:
		health_fail(k, "token operation failed", job->status,
		    job->detail);
		kms_probe(k);
		grpc_call_fail(call, GRPC_UNAVAILABLE, "token error: %s",
		    job->detail[0] ? job->detail :
		    keyring_strerror(job->status));
		break;
	default:
		grpc_call_fail(call, GRPC_INTERNAL, "%s",
		    keyring_strerror(job->status));
	}
}

/* Queues job for call; on a full pool the call fails at once. */
static void
submit(struct kms *k, struct grpc_call *call, struct pool_job *job,
    pool_done_cb done)
{
	if (k->pool == NULL || (k->probed && !k->healthy)) {
		/* Fail now rather than at the deadline; the probe and the
		 * daemon's recovery bring the token back. */
		grpc_call_fail(call, GRPC_UNAVAILABLE, "token unavailable: "
		    "%s", k->why);
		pool_job_free(job);
		return;
	}
	job->deadline = grpc_call_deadline(call);
	job->done = done;
	job->arg = call;
	job->ctx = k;
	if (pool_submit(k->pool, job) != 0) {
		job->status = POOL_E_BUSY;
		fail_job(k, call, job, NULL);
		pool_job_free(job);
		return;
	}
	grpc_call_on_cancel(call, job_cancelled, job);
}

/*
 * Unpacks a request through the wiping allocator, refusing what protobuf-c
 * would accept wrongly: string fields with a hidden NUL ("id\0junk" would
 * pass for "id"). Returns the message, or NULL with the call failed. Free
 * with release().
 */
static ProtobufCMessage *
unpack(struct grpc_call *call, const ProtobufCMessageDescriptor *d,
    const uint8_t *msg, size_t len)
{
	ProtobufCMessage *m = NULL;
	int f = pbscan_nul_in_strings(d, msg, len);

	if (f == 0)
		m = protobuf_c_message_unpack(d, &mem_protobuf_allocator, len,
		    msg);
	if (f > 0)
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "%s field %d "
		    "contains a NUL byte", d->short_name, f);
	else if (m == NULL)
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "%s is not valid "
		    "protobuf", d->short_name);
	return m;
}

static void
release(void *m)
{
	protobuf_c_message_free_unpacked(m, &mem_protobuf_allocator);
}

/* 1 when in holds 1..max bytes; else fails call naming the field. */
static int
size_ok(struct grpc_call *call, const ProtobufCBinaryData *in, size_t max,
    const char *what)
{
	if (in->len > 0 && in->len <= max)
		return 1;
	grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "%s must be 1 to %zu "
	    "bytes, got %zu", what, max, in->len);
	return 0;
}

/*
 * Queues a seal or open of in (1..max bytes, `what` names the field in
 * the error) for call; key_id: the key a v2 open must use, or NULL.
 */
static void
queue(struct kms *k, struct grpc_call *call, enum pool_op op,
    const ProtobufCBinaryData *in, size_t max, const char *what,
    const char *key_id, pool_done_cb done)
{
	struct pool_job *job;

	if (!size_ok(call, in, max, what))
		return;
	if ((job = pool_job_new(op)) == NULL) {
		grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	memcpy(job->in, in->data, in->len);
	job->in_len = in->len;
	if (key_id != NULL)
		memcpy(job->key_id, key_id, strlen(key_id) + 1);
	submit(k, call, job, done);
}

/*
 * The call a finished job should answer with its output, or NULL when the
 * call is gone or the job failed (the call then got its error status);
 * on NULL the job is freed.
 */
static struct grpc_call *
job_answer(struct pool_job *job)
{
	struct grpc_call *call = job->arg;

	if (call != NULL && job->status != KEYRING_OK) {
		fail_job(job->ctx, call, job, job->key_id[0] != '\0' ?
		    job->key_id : NULL);
		call = NULL;
	}
	if (call == NULL)
		pool_job_free(job);
	return call;
}

/* ---- KMS v2 ---- */

static void
status_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	struct kms *k = ctx;
	V2__StatusResponse resp = V2__STATUS_RESPONSE__INIT;
	ProtobufCMessage *req;

	if ((req = unpack(call, &v2__status_request__descriptor, msg,
	    len)) == NULL)
		return;
	release(req);
	resp.version = (char *)k->version;
	resp.healthz = (char *)kms_healthz(k);
	resp.key_id = k->key_id;
	grpc_call_reply(call, &resp.base);
}

static void
encrypt_done(struct pool_job *job)
{
	struct grpc_call *call = job_answer(job);
	V2__EncryptResponse resp = V2__ENCRYPT_RESPONSE__INIT;
	V2__EncryptResponse__AnnotationsEntry ann =
	    V2__ENCRYPT_RESPONSE__ANNOTATIONS_ENTRY__INIT;
	V2__EncryptResponse__AnnotationsEntry *anns[1] = { &ann };

	if (call == NULL)
		return;
	resp.ciphertext.data = job->out;
	resp.ciphertext.len = job->out_len;
	resp.key_id = job->key_id_out;
	ann.key = (char *)KMS_ANNOTATION_VERSION;
	ann.value.data = (uint8_t *)KMS_ENVELOPE_VERSION;
	ann.value.len = sizeof(KMS_ENVELOPE_VERSION) - 1;
	resp.n_annotations = 1;
	resp.annotations = anns;
	grpc_call_reply(call, &resp.base);
	pool_job_free(job);
}

static void
encrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V2__EncryptRequest *req;

	if ((req = (V2__EncryptRequest *)unpack(call,
	    &v2__encrypt_request__descriptor, msg, len)) == NULL)
		return;
	log_debug("Encrypt uid=%.100s bytes=%zu", req->uid,
	    req->plaintext.len);
	queue(ctx, call, POOL_SEAL, &req->plaintext, KEYRING_MAX_PLAINTEXT,
	    "plaintext", NULL, encrypt_done);
	release(req);
}

/* Answers Decrypt (v2) and v1beta1 Decrypt: both carry one bytes field. */
static void
open_done(struct pool_job *job, int v1)
{
	struct grpc_call *call = job_answer(job);
	V2__DecryptResponse r2 = V2__DECRYPT_RESPONSE__INIT;
	V1beta1__DecryptResponse r1 = V1BETA1__DECRYPT_RESPONSE__INIT;
	ProtobufCBinaryData *pt = v1 ? &r1.plain : &r2.plaintext;

	if (call == NULL)
		return;
	pt->data = job->out;
	pt->len = job->out_len;
	grpc_call_reply(call, v1 ? &r1.base : &r2.base);
	pool_job_free(job);		/* wipes the plaintext */
}

static void
decrypt_done(struct pool_job *job)
{
	open_done(job, 0);
}

/* A key_id that could be configured; else fails call with NOT_FOUND. */
static int
key_id_ok(struct grpc_call *call, const char *key_id)
{
	size_t n = strlen(key_id);

	if (n > 0 && n < KEYRING_KEY_ID_MAX)
		return 1;
	grpc_call_fail(call, GRPC_NOT_FOUND, "key_id '%.100s' is not "
	    "configured in this plugin", key_id);
	return 0;
}

/* The annotations must be exactly what Encrypt returned. */
static int
check_annotations(V2__DecryptRequest *req, struct grpc_call *call)
{
	size_t i;
	int seen = 0;

	for (i = 0; i < req->n_annotations; i++) {
		V2__DecryptRequest__AnnotationsEntry *a = req->annotations[i];
		if (a->key == NULL ||
		    strcmp(a->key, KMS_ANNOTATION_VERSION) != 0) {
			grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "unknown "
			    "annotation '%.100s'; p11kms sets only "
			    KMS_ANNOTATION_VERSION, a->key ? a->key : "");
			return -1;
		}
		if (a->value.len != sizeof(KMS_ENVELOPE_VERSION) - 1 ||
		    memcmp(a->value.data, KMS_ENVELOPE_VERSION,
		    a->value.len) != 0) {
			grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "annotation "
			    KMS_ANNOTATION_VERSION " has an unsupported "
			    "value; this plugin reads envelope version "
			    KMS_ENVELOPE_VERSION);
			return -1;
		}
		seen = 1;
	}
	if (!seen) {
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "annotation "
		    KMS_ANNOTATION_VERSION " is missing; pass back the "
		    "annotations Encrypt returned");
		return -1;
	}
	return 0;
}

static void
decrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V2__DecryptRequest *req;

	if ((req = (V2__DecryptRequest *)unpack(call,
	    &v2__decrypt_request__descriptor, msg, len)) == NULL)
		return;
	if (size_ok(call, &req->ciphertext, KEYRING_MAX_CIPHERTEXT,
	    "ciphertext") && key_id_ok(call, req->key_id) &&
	    check_annotations(req, call) == 0) {
		log_debug("Decrypt uid=%.100s bytes=%zu", req->uid,
		    req->ciphertext.len);
		queue(ctx, call, POOL_OPEN, &req->ciphertext,
		    KEYRING_MAX_CIPHERTEXT, "ciphertext", req->key_id,
		    decrypt_done);
	}
	release(req);
}

/* ---- KMS v1beta1 ---- */

#define V1_VERSION	"v1beta1"

/* v1 requests carry the API version; empty is taken as v1beta1. */
static int
v1_version_ok(const char *v, struct grpc_call *call)
{
	if (v == NULL || v[0] == '\0' || strcmp(v, V1_VERSION) == 0)
		return 1;
	grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "unsupported KMS API "
	    "version '%.40s': this service is " V1_VERSION, v);
	return 0;
}

static void
v1_version_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V1beta1__VersionRequest *req;
	V1beta1__VersionResponse resp = V1BETA1__VERSION_RESPONSE__INIT;

	(void)ctx;
	if ((req = (V1beta1__VersionRequest *)unpack(call,
	    &v1beta1__version_request__descriptor, msg, len)) == NULL)
		return;
	if (v1_version_ok(req->version, call)) {
		resp.version = (char *)V1_VERSION;
		resp.runtime_name = (char *)"p11kms";
		resp.runtime_version = (char *)P11KMS_VERSION;
		grpc_call_reply(call, &resp.base);
	}
	release(req);
}

static void
v1_encrypt_done(struct pool_job *job)
{
	struct grpc_call *call = job_answer(job);
	V1beta1__EncryptResponse resp = V1BETA1__ENCRYPT_RESPONSE__INIT;

	if (call == NULL)
		return;
	resp.cipher.data = job->out;
	resp.cipher.len = job->out_len;
	grpc_call_reply(call, &resp.base);
	pool_job_free(job);
}

static void
v1_encrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V1beta1__EncryptRequest *req;

	if ((req = (V1beta1__EncryptRequest *)unpack(call,
	    &v1beta1__encrypt_request__descriptor, msg, len)) == NULL)
		return;
	if (v1_version_ok(req->version, call))
		queue(ctx, call, POOL_SEAL, &req->plain,
		    KEYRING_MAX_PLAINTEXT, "plain", NULL, v1_encrypt_done);
	release(req);
}

static void
v1_decrypt_done(struct pool_job *job)
{
	open_done(job, 1);
}

static void
v1_decrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V1beta1__DecryptRequest *req;

	if ((req = (V1beta1__DecryptRequest *)unpack(call,
	    &v1beta1__decrypt_request__descriptor, msg, len)) == NULL)
		return;
	/* No key_id in v1: the envelope names its key. */
	if (v1_version_ok(req->version, call))
		queue(ctx, call, POOL_OPEN, &req->cipher,
		    KEYRING_MAX_CIPHERTEXT, "cipher", NULL, v1_decrypt_done);
	release(req);
}

static const struct grpc_method methods[] = {
	{ "/v2.KeyManagementService/Status", status_handler },
	{ "/v2.KeyManagementService/Encrypt", encrypt_handler },
	{ "/v2.KeyManagementService/Decrypt", decrypt_handler },
	{ "/v1beta1.KeyManagementService/Version", v1_version_handler },
	{ "/v1beta1.KeyManagementService/Encrypt", v1_encrypt_handler },
	{ "/v1beta1.KeyManagementService/Decrypt", v1_decrypt_handler },
};

const struct grpc_method *
kms_methods(size_t *n)
{
	*n = sizeof(methods) / sizeof(methods[0]);
	return methods;
}
