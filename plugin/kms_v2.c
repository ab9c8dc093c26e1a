/*
 * kms_v2: KMS v2 (package v2, service KeyManagementService): Status,
 * Encrypt, Decrypt. Status answers from the health probe; Encrypt and
 * Decrypt carry the apiserver's request uid, which goes into the audit
 * record (bounded and escaped there: it comes from the peer).
 */
#include <stdio.h>
#include <string.h>

#include "kms_v2.pb-c.h"
#include "plugin/kms_api.h"
#include "plugin/log.h"

static void
status_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	struct kms *k = ctx;
	V2__StatusResponse resp = V2__STATUS_RESPONSE__INIT;
	ProtobufCMessage *req;

	if ((req = kms_unpack(call, &v2__status_request__descriptor, msg,
	    len)) == NULL)
		return;
	kms_release(req);
	resp.version = (char *)kms_status_version(k);
	resp.healthz = (char *)kms_healthz(k);
	resp.key_id = (char *)kms_status_key_id(k);
	grpc_call_reply(call, &resp.base);
}

static void
encrypt_done(struct pool_job *job)
{
	struct grpc_call *call = kms_job_answer(job);
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

	if ((req = (V2__EncryptRequest *)kms_unpack(call,
	    &v2__encrypt_request__descriptor, msg, len)) == NULL)
		return;
	kms_req_uid(call, req->uid);
	log_debug("Encrypt uid=%.100s bytes=%zu", req->uid,
	    req->plaintext.len);
	kms_queue(ctx, call, POOL_SEAL, &req->plaintext, KEYRING_MAX_PLAINTEXT,
	    "plaintext", NULL, encrypt_done);
	kms_release(req);
}

static void
decrypt_done(struct pool_job *job)
{
	struct grpc_call *call = kms_job_answer(job);
	V2__DecryptResponse resp = V2__DECRYPT_RESPONSE__INIT;

	if (call == NULL)
		return;
	resp.plaintext.data = job->out;
	resp.plaintext.len = job->out_len;
	grpc_call_reply(call, &resp.base);
	pool_job_free(job);		/* wipes the plaintext */
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
			kms_fail(call, KMS_R_BAD_REQUEST,
			    GRPC_INVALID_ARGUMENT, "unknown annotation "
			    "'%.100s'; p11kms sets only "
			    KMS_ANNOTATION_VERSION, a->key ? a->key : "");
			return -1;
		}
		if (a->value.len != sizeof(KMS_ENVELOPE_VERSION) - 1 ||
		    memcmp(a->value.data, KMS_ENVELOPE_VERSION,
		    a->value.len) != 0) {
			kms_fail(call, KMS_R_BAD_REQUEST,
			    GRPC_INVALID_ARGUMENT, "annotation "
			    KMS_ANNOTATION_VERSION " has an unsupported "
			    "value; this plugin reads envelope version "
			    KMS_ENVELOPE_VERSION);
			return -1;
		}
		seen = 1;
	}
	if (!seen) {
		kms_fail(call, KMS_R_BAD_REQUEST, GRPC_INVALID_ARGUMENT,
		    "annotation " KMS_ANNOTATION_VERSION " is missing; pass "
		    "back the annotations Encrypt returned");
		return -1;
	}
	return 0;
}

static void
decrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V2__DecryptRequest *req;
	struct kms_req *r;

	if ((req = (V2__DecryptRequest *)kms_unpack(call,
	    &v2__decrypt_request__descriptor, msg, len)) == NULL)
		return;
	kms_req_uid(call, req->uid);
	/* The key the apiserver asks for, as it asked (cut to size). */
	if ((r = kms_req(call)) != NULL)
		snprintf(r->key_id, sizeof(r->key_id), "%s", req->key_id);
	if (kms_size_ok(call, &req->ciphertext, KEYRING_MAX_CIPHERTEXT,
	    "ciphertext") && kms_key_id_ok(call, req->key_id) &&
	    check_annotations(req, call) == 0) {
		log_debug("Decrypt uid=%.100s bytes=%zu", req->uid,
		    req->ciphertext.len);
		kms_queue(ctx, call, POOL_OPEN, &req->ciphertext,
		    KEYRING_MAX_CIPHERTEXT, "ciphertext", req->key_id,
		    decrypt_done);
	}
	kms_release(req);
}

static const struct kms_method methods[] = {
	{ "Status", KMS_OP_STATUS, status_handler },
	{ "Encrypt", KMS_OP_ENCRYPT, encrypt_handler },
	{ "Decrypt", KMS_OP_DECRYPT, decrypt_handler },
};

const struct kms_api kms_api_v2 = {
	"v2", "v2.KeyManagementService", methods,
	sizeof(methods) / sizeof(methods[0]),
};
