/*
 * tokwire: the binary protocol between the front process (network side)
 * and the token process (module, PIN, sessions, worker pool), over a
 * socketpair. Pure byte handling: no I/O, no allocation, no token types.
 *
 * Frame:
 *   off len  field
 *   0   4    length L of what follows, big-endian, TOKWIRE_MIN_BODY..
 *            TOKWIRE_MAX_BODY (checked before anything is read or kept)
 *   4   1    version     TOKWIRE_VERSION; any other value is refused
 *   5   1    type        enum tokwire_type
 *   6   8    request id  big-endian; 0 for messages that answer no request
 *   14  L-10 payload, per type (below); it must be used up exactly
 *
 * Payload fields are fixed-width big-endian integers, and strings/bytes as
 * u16 length + bytes. Every string has a cap (the size of its field in
 * struct tokwire_msg, NUL included) and may not hold a NUL; every byte
 * field has a cap too. A field over its cap, a short frame, bytes left
 * over, an unknown type or a type the receiving side never gets is a
 * protocol error: the receiver drops the peer (the front then fails every
 * call in flight on it with UNAVAILABLE and respawns the token process).
 *
 * Front -> token: REQ (a seal/open/probe job), CANCEL (its id).
 * Token -> front: READY (the generation is loaded: its settings and key
 * metadata), FAILED (it could not load: status and message), REPLY (a
 * job's result, id of its REQ), STATS (pool gauges, on change), CALLS
 * (token calls made, for the metrics).
 *
 * Secrets: REQ.in and REPLY.out carry plaintext DEKs. Whoever holds a
 * buffer these were encoded into or decoded from wipes it after use.
 */
#ifndef P11KMS_TOKWIRE_H
#define P11KMS_TOKWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "pkcs11/keyring.h"

#define TOKWIRE_VERSION		1
#define TOKWIRE_HDR		14	/* length + version + type + id */
#define TOKWIRE_MIN_BODY	10	/* version + type + id */
#define TOKWIRE_MAX_BODY	32768	/* a READY with 16 keys fits */
#define TOKWIRE_MAX_FRAME	(4 + TOKWIRE_MAX_BODY)
#define TOKWIRE_STR_MAX		512	/* settings strings, NUL included */
#define TOKWIRE_ERR_MAX		512
#define TOKWIRE_DESC_MAX	128
#define TOKWIRE_MECH_MAX	32
#define TOKWIRE_DETAIL_MAX	160
#define TOKWIRE_MECHS_MAX	128
#define TOKWIRE_FROM_MAX	96
#define TOKWIRE_CALLS_MAX	64	/* token calls per CALLS message */
#define TOKWIRE_FN_MAX		32

enum tokwire_type {
	TOKWIRE_REQ = 1,
	TOKWIRE_CANCEL = 2,
	TOKWIRE_READY = 16,
	TOKWIRE_FAILED = 17,
	TOKWIRE_REPLY = 18,
	TOKWIRE_STATS = 19,
	TOKWIRE_CALLS = 20,
};

/* Which side decodes: each accepts only what the other side sends. */
enum tokwire_dir {
	TOKWIRE_TO_TOKEN = 0,	/* front -> token: REQ, CANCEL */
	TOKWIRE_TO_FRONT = 1,	/* token -> front: READY ... CALLS */
};

/* Errors of tokwire_frame and tokwire_decode. */
#define TOKWIRE_E_SHORT		-1	/* truncated frame or field */
#define TOKWIRE_E_BIG		-2	/* length or field over its cap */
#define TOKWIRE_E_VERSION	-3
#define TOKWIRE_E_TYPE		-4	/* unknown, or not for this side */
#define TOKWIRE_E_FIELD		-5	/* bad value (NUL in a string, op) */
#define TOKWIRE_E_TRAILING	-6	/* bytes after the last field */

struct tokwire_req {
	uint8_t op;			/* enum pool_op */
	uint64_t deadline;		/* CLOCK_MONOTONIC ns; 0 = none */
	char key_id[KEYRING_KEY_ID_MAX];
	uint16_t in_len;
	uint8_t in[KEYRING_MAX_CIPHERTEXT];
};

struct tokwire_reply {
	int32_t status;
	uint16_t out_len;
	uint8_t out[KEYRING_MAX_CIPHERTEXT];
	char key_id_out[KEYRING_KEY_ID_MAX];
	char detail[KEYRING_ERROR_MAX];
	uint64_t started, finished;	/* CLOCK_MONOTONIC ns */
};

struct tokwire_key {
	char key_id[KEYRING_KEY_ID_MAX];
	char desc[TOKWIRE_DESC_MAX];
	char mechanism[TOKWIRE_MECH_MAX];
	char seal_detail[TOKWIRE_DETAIL_MAX];
	char mechanisms[TOKWIRE_MECHS_MAX];
};

/* What a loaded generation tells the front: everything plugin/ asks. */
struct tokwire_ready {
	uint32_t pid;
	/* The settings it was loaded from (the front never re-reads the
	 * config file once sandboxed). "" for an unset optional string. */
	char socket_path[TOKWIRE_STR_MAX];
	char kms_version[TOKWIRE_MECH_MAX];
	char ops_listen[TOKWIRE_STR_MAX];
	char audit_log[TOKWIRE_STR_MAX];
	uint64_t max_request;
	uint32_t probe_interval_s, grace_s;
	int32_t log_level;
	char log_format[TOKWIRE_MECH_MAX];	/* "logfmt", "json" */
	uint32_t max_connections;
	uint8_t busy_poll;			/* 0 off, 1 auto */
	char pid_file[TOKWIRE_STR_MAX];
	uint32_t workers, inflight;
	char workers_from[TOKWIRE_FROM_MAX];
	/* The token. */
	char token_label[KEYRING_TOKEN_TEXT_MAX];
	char token_serial[KEYRING_TOKEN_TEXT_MAX];
	uint8_t hw_slot;
	uint64_t max_sessions;
	uint8_t nkeys;			/* 1..KEYRING_MAX_KEYS */
	struct tokwire_key keys[KEYRING_MAX_KEYS];
};

struct tokwire_failed {
	int32_t status;			/* enum keyring_status */
	char err[TOKWIRE_ERR_MAX];
};

struct tokwire_stats {
	uint32_t workers, busy, inflight;
};

struct tokwire_call {
	char fn[TOKWIRE_FN_MAX];
	uint64_t rv;
	uint64_t ns;
};

struct tokwire_calls {
	uint8_t n;
	struct tokwire_call c[TOKWIRE_CALLS_MAX];
};

struct tokwire_msg {
	uint8_t type;			/* enum tokwire_type */
	uint64_t id;
	union {
		struct tokwire_req req;
		struct tokwire_reply reply;
		struct tokwire_ready ready;
		struct tokwire_failed failed;
		struct tokwire_stats stats;
		struct tokwire_calls calls;
	} u;
};

/*
 * Looks at the start of a receive buffer (avail bytes). Returns the length
 * of the complete first frame (header included), 0 when more bytes are
 * needed, or TOKWIRE_E_BIG / TOKWIRE_E_SHORT (length under the minimum) /
 * TOKWIRE_E_VERSION as soon as the first 5 bytes show it.
 */
long tokwire_frame(const uint8_t *buf, size_t avail);

/*
 * Decodes one complete frame (as tokwire_frame measured it) for the side
 * dir. Returns 0, or a TOKWIRE_E_* code; *out is then unspecified (wipe
 * it: a REQ may have been half copied).
 */
int tokwire_decode(const uint8_t *frame, size_t len, enum tokwire_dir dir,
    struct tokwire_msg *out);

/*
 * Encodes m as one frame into buf (cap bytes). Returns its length, or 0
 * when cap is too small or a field of m is over its cap.
 */
size_t tokwire_encode(const struct tokwire_msg *m, uint8_t *buf, size_t cap);

/* "REQ", "REPLY", ... or "unknown". */
const char *tokwire_type_name(int type);
/* Fixed English text for a TOKWIRE_E_* code. */
const char *tokwire_strerror(int e);

#endif
