/*
 * kms: the KeyManagementService handlers, one file per API version
 * (kms_v2.c, kms_v1beta1.c, each with its method table) over shared
 * plumbing (kms.c). They unpack requests, check them against the
 * apiserver's contract, hand seal/open jobs to the token pool and pack
 * replies. Status is answered from the health probe's last result and never
 * waits on the token. Every call ends in one place, which counts it in the
 * metrics, logs it when it failed (at most 50 lines a second) and writes
 * its audit record (every Encrypt and Decrypt; Status and Version with
 * audit_status).
 */
#ifndef P11KMS_KMS_H
#define P11KMS_KMS_H

#include <stddef.h>

#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "plugin/audit.h"
#include "plugin/grpc.h"
#include "plugin/loop.h"

/* Annotation p11kms returns with every ciphertext and requires back. */
#define KMS_ANNOTATION_VERSION	"version.p11kms.io"
#define KMS_ENVELOPE_VERSION	"1"

struct kms;
struct gen;

struct kms_config {
	const char *version;		/* StatusResponse.version */
	unsigned probe_interval_s;
	/* Called on the loop thread when the token fails (a probe or a
	 * request got a token-level error) and no replica is left; the
	 * daemon recovers. */
	void (*token_fault)(void *arg);
	/* Called when the health verdict changes (health.h). */
	void (*health_changed)(void *arg);
	void *fault_arg;		/* for both callbacks */
	struct audit *audit;		/* NULL: no audit log; outlives kms */
	int audit_status;		/* audit Status and Version calls too */
	/* While the audit log cannot be written: 1 refuses Encrypt and
	 * Decrypt with UNAVAILABLE and says so in healthz. */
	int audit_fail_closed;
};

/* g (its keyring and pool, or its token process) must outlive the kms. */
int kms_new(struct loop *l, struct gen *g, const struct kms_config *cfg,
    struct kms **out);
/* Detaches the probe still running, if any. */
void kms_free(struct kms *k);

/*
 * Switches to a new generation (a reload or a recovery). It was just
 * loaded, which includes a round trip with every key, so the token counts
 * as healthy now. Calls in flight finish on the old one. NULL while the
 * daemon recovers the token: requests get UNAVAILABLE, Status keeps the
 * last key_id and the reason given to kms_set_down().
 */
void kms_set_gen(struct kms *k, struct gen *g);
/* Marks the token down with a reason; new requests get UNAVAILABLE. */
void kms_set_down(struct kms *k, const char *why);

/* The method table to give grpc_server_new, with k as ctx. */
const struct grpc_method *kms_methods(size_t *n);
/* Makes k the end point of every call of s (s was made with k as ctx). */
void kms_attach(struct kms *k, struct grpc_server *s);
/* Declares every service and method to the metrics (once, at start). */
void kms_metrics_register(void);
/* "v2.KeyManagementService, v1beta1.KeyManagementService" */
const char *kms_services(void);

/* Starts a health round trip on every token now (health_probe). */
void kms_probe(struct kms *k);
/* 1 once every token finished a round trip; *ok: health_serving(). */
int kms_probe_done(const struct kms *k, int *ok);
/* Status healthz: "ok", or a sentence saying what is wrong (the audit log
 * with --audit-failure fail, or health_healthz()). Points into k. */
const char *kms_healthz(struct kms *k);
/* The tokens' states (health.h), for readiness, /status and metrics. */
struct health *kms_health(const struct kms *k);

#endif
