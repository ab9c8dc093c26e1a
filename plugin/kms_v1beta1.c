/*
 * kms_v1beta1: KMS v1beta1 (package v1beta1, service
 * KeyManagementService): Version, Encrypt, Decrypt. There is no key_id in
 * v1: the envelope names its key, and the audit record takes the key_id
 * from there.
 */
#include <string.h>

#include "kms_v1beta1.pb-c.h"
#include "plugin/kms_api.h"
#include "plugin/version.h"

#define V1_VERSION	"v1beta1"

/* v1 requests carry the API version; empty is taken as v1beta1. */
static int
version_ok(const char *v, struct grpc_call *call)
{
	if (v == NULL || v[0] == '\0' || strcmp(v, V1_VERSION) == 0)
		return 1;
	kms_fail(call, KMS_R_BAD_REQUEST, GRPC_INVALID_ARGUMENT, "unsupported "
	    "KMS API version '%.40s': this service is " V1_VERSION, v);
	return 0;
}

static void
version_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V1beta1__VersionRequest *req;
	V1beta1__VersionResponse resp = V1BETA1__VERSION_RESPONSE__INIT;

	(void)ctx;
	if ((req = (V1beta1__VersionRequest *)kms_unpack(call,
	    &v1beta1__version_request__descriptor, msg, len)) == NULL)
		return;
	if (version_ok(req->version, call)) {
		resp.version = (char *)V1_VERSION;
		resp.runtime_name = (char *)"p11kms";
		resp.runtime_version = (char *)P11KMS_VERSION;
		grpc_call_reply(call, &resp.base);
	}
	kms_release(req);
}

static void
encrypt_done(struct pool_job *job)
{
	struct grpc_call *call = kms_job_answer(job);
	V1beta1__EncryptResponse resp = V1BETA1__ENCRYPT_RESPONSE__INIT;

	if (call == NULL)
		return;
	resp.cipher.data = job->out;
	resp.cipher.len = job->out_len;
	grpc_call_reply(call, &resp.base);
	pool_job_free(job);
}

static void
encrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V1beta1__EncryptRequest *req;

	if ((req = (V1beta1__EncryptRequest *)kms_unpack(call,
	    &v1beta1__encrypt_request__descriptor, msg, len)) == NULL)
		return;
	if (version_ok(req->version, call))
		kms_queue(ctx, call, POOL_SEAL, &req->plain,
		    KEYRING_MAX_PLAINTEXT, "plain", NULL, encrypt_done);
	kms_release(req);
}

static void
decrypt_done(struct pool_job *job)
{
	struct grpc_call *call = kms_job_answer(job);
	V1beta1__DecryptResponse resp = V1BETA1__DECRYPT_RESPONSE__INIT;

	if (call == NULL)
		return;
	resp.plain.data = job->out;
	resp.plain.len = job->out_len;
	grpc_call_reply(call, &resp.base);
	pool_job_free(job);		/* wipes the plaintext */
}

static void
decrypt_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V1beta1__DecryptRequest *req;

	if ((req = (V1beta1__DecryptRequest *)kms_unpack(call,
	    &v1beta1__decrypt_request__descriptor, msg, len)) == NULL)
		return;
	/* No key_id in v1: the envelope names its key. */
	if (version_ok(req->version, call))
		kms_queue(ctx, call, POOL_OPEN, &req->cipher,
		    KEYRING_MAX_CIPHERTEXT, "cipher", NULL, decrypt_done);
	kms_release(req);
}

static const struct kms_method methods[] = {
	{ "Version", KMS_OP_STATUS, version_handler },
	{ "Encrypt", KMS_OP_ENCRYPT, encrypt_handler },
	{ "Decrypt", KMS_OP_DECRYPT, decrypt_handler },
};

const struct kms_api kms_api_v1beta1 = {
	"v1beta1", "v1beta1.KeyManagementService", methods,
	sizeof(methods) / sizeof(methods[0]),
};
