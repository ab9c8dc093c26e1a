/*
 * kms_api: what the per-version service files (kms_v2.c, kms_v1beta1.c)
 * share with the plumbing in kms.c. Internal to those three files.
 *
 * Each version file exports one struct kms_api: its service name and its
 * method table. kms.c builds the gRPC method table, the metrics labels and
 * the start-up line from the list of them (kms_apis[]), and ends every call
 * in one place (kms.c: call_done), which feeds the metrics, the failure log
 * and the audit log. A handler's work is to unpack, check, queue a job or
 * answer; for the record it fills the call's kms_req (uid, key_id,
 * mechanism) and says why it refused (kms_fail's reason class).
 */
#ifndef P11KMS_KMS_API_H
#define P11KMS_KMS_API_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "plugin/audit.h"
#include "plugin/grpc.h"
#include "plugin/kms.h"

enum kms_op {
	KMS_OP_STATUS,		/* health questions: audited with --audit-status */
	KMS_OP_ENCRYPT,		/* key operations: always audited */
	KMS_OP_DECRYPT,
};

struct kms_method {
	const char *name;	/* "Encrypt": the path's last part */
	enum kms_op op;
	grpc_handler handler;	/* ctx is the struct kms */
};

struct kms_api {
	const char *version;	/* "v2": the audit record's "api" */
	const char *service;	/* "v2.KeyManagementService" */
	const struct kms_method *methods;
	size_t nmethods;
};

extern const struct kms_api kms_api_v2;
extern const struct kms_api kms_api_v1beta1;

/* Reason classes of the audit record and the failure log. */
#define KMS_R_OK		"ok"
#define KMS_R_BAD_REQUEST	"bad-request"
#define KMS_R_UNKNOWN_KEY	"unknown-key"
#define KMS_R_AUTH		"auth-failed"
#define KMS_R_INVALID_CT	"invalid-ciphertext"
#define KMS_R_TOO_BIG		"too-big"
#define KMS_R_BUSY		"busy"
#define KMS_R_DEADLINE		"deadline"
#define KMS_R_SESSION		"session-lost"
#define KMS_R_TOKEN		"token-error"
#define KMS_R_TOKEN_DOWN	"token-unavailable"
#define KMS_R_AUDIT		"audit-unavailable"
#define KMS_R_INTERNAL		"internal"

/*
 * What a call's record says beyond what the server knows. Owned by the
 * call (its tag) from the handler's start to call_done, which frees it.
 */
struct kms_req {
	char uid[AUDIT_UID_MAX + 2];	/* request uid; one byte over: cut */
	int has_uid;
	char key_id[KEYRING_KEY_ID_MAX];
	const char *mech;		/* static name, or NULL */
	const char *reason;		/* KMS_R_*, or NULL: from the code */
};

/* The call's kms_req (made on first use); NULL when out of memory. */
struct kms_req *kms_req(struct grpc_call *call);
/* Copies the request's uid (bounded) into the call's record. */
void kms_req_uid(struct grpc_call *call, const char *uid);
/* Ends call with code, remembering the reason class for the record. */
void kms_fail(struct grpc_call *call, const char *reason, enum grpc_code code,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/*
 * Unpacks a request through the wiping allocator, refusing string fields
 * with a hidden NUL. Returns the message, or NULL with the call failed.
 * Free with kms_release().
 */
ProtobufCMessage *kms_unpack(struct grpc_call *call,
    const ProtobufCMessageDescriptor *d, const uint8_t *msg, size_t len);
void kms_release(void *m);
/* 1 when in holds 1..max bytes; else fails call naming the field. */
int kms_size_ok(struct grpc_call *call, const ProtobufCBinaryData *in,
    size_t max, const char *what);
/* A key_id that could be configured; else fails call with NOT_FOUND. */
int kms_key_id_ok(struct grpc_call *call, const char *key_id);
/*
 * Queues a seal or open of in (1..max bytes, `what` names the field in
 * the error) for call; key_id: the key a v2 open must use, or NULL. done
 * gets the job back; kms_job_answer() tells it whether to reply.
 */
void kms_queue(struct kms *k, struct grpc_call *call, enum pool_op op,
    const ProtobufCBinaryData *in, size_t max, const char *what,
    const char *key_id, pool_done_cb done);
/*
 * The call a finished job should answer with its output, or NULL when the
 * call is gone or the job failed (the call then got its error status); on
 * NULL the job is freed. Fills the call's record from the job.
 */
struct grpc_call *kms_job_answer(struct pool_job *job);

/* StatusResponse.version, healthz and key_id (point into k). */
const char *kms_status_version(const struct kms *k);
const char *kms_status_key_id(const struct kms *k);

#endif
