/*
 * mech: the one mechanism table, and one seal or one open inside the
 * token for each of its rows. Internal to pkcs11/. Everything that names,
 * chooses, generates for, judges or runs a mechanism reads mech_table[]:
 * config names (keyring_mechanism_valid), keygen templates (keytool.c),
 * key judging and the auto order (kek.c), envelope bytes and their names,
 * output sizes and the seal/open functions (here). Adding a mechanism is
 * one row, its seal and open functions, and their tests.
 *
 * A row is one way to seal: an envelope mechanism byte (ENVELOPE_MECH_*,
 * what opening follows) done one particular way on the token. Rows are in
 * the order "auto" prefers them:
 *
 *   aes-gcm          CKM_AES_GCM, IV chosen by us (random 96 bits)
 *   aes-gcm/message  PKCS#11 3.0 C_EncryptMessage, the token makes the IV
 *                    (CKG_GENERATE_RANDOM); for FIPS-mode HSMs
 *   aes-gcm/token-iv CKM_AES_GCM with an all-zero pIv that the token fills
 *                    (write-back) or an IV the token appends after the tag;
 *                    for FIPS-mode HSMs without the 3.0 API
 *   aes-kwp          CKM_AES_KEY_WRAP_PAD (RFC 5649) through C_WrapKey /
 *                    C_UnwrapKey of a short-lived session object
 *   aes-kwp/ecb      the same RFC 5649 bytes computed with the token's
 *                    CKM_AES_ECB, one block per C_EncryptUpdate: the key
 *                    never leaves the token (tokens with ECB only: TPMs,
 *                    YubiHSM, p11-kit remoting)
 *   rsa-oaep-sha256  CKM_RSA_PKCS_OAEP, SHA-256/MGF1-SHA-256, empty label
 *   rsa-oaep-sha1    the same with SHA-1
 *
 * Sealing never leaves an operation active on a session: output is sized
 * up front, and a failed multi-part operation is ended.
 */
#ifndef P11KMS_MECH_H
#define P11KMS_MECH_H

#include <stddef.h>
#include <stdint.h>

#include "pkcs11/envelope.h"
#include "pkcs11/token.h"
#include "pkcs11/p11v3.h"

#define MECH_GCM_IV_LEN		12
#define MECH_GCM_TAG_LEN	16
#define MECH_KWP_ICV_LEN	8	/* RFC 5649 integrity value */
#define MECH_RSA_MAX_BYTES	512	/* RSA-4096: 19 + 512 <= 1024 */
#define MECH_DETAIL_MAX		64

/* Row indexes of mech_table[], in auto order. */
enum mech_row {
	MECH_GCM = 0,
	MECH_GCM_MSG,
	MECH_GCM_TIV,
	MECH_KWP,
	MECH_KWP_ECB,
	MECH_OAEP_SHA256,
	MECH_OAEP_SHA1,
	MECH_NROWS
};
#define MECH_BIT(row)		(1u << (row))
#define MECH_ENV_BIT(env)	(1u << (env))

/* The failing token call of a seal or open ({ CKR_OK, NULL } if none). */
struct mech_err {
	CK_RV rv;
	const char *call;	/* "C_Encrypt", static */
	uint64_t t;		/* CLOCK_MONOTONIC ns when the call began */
	/* What a seal found out about the token ("IV written back"), or "". */
	const char *detail;
};

/* A fresh error and timing record for one operation. */
struct mech_err mech_err_start(void);

struct mech_key {
	CK_OBJECT_HANDLE obj;	/* AES key, or RSA private key (opens) */
	CK_OBJECT_HANDLE pub;	/* RSA public key (seals); AES: unused */
	size_t rsa_len;		/* RSA modulus bytes; 0 for AES */
};

/*
 * One session as the mechanisms use it. A PKCS#11 3.0 message operation
 * is initialized once per session and key and kept (keep = 1: a worker's
 * session) or ended after each call (keep = 0: one-shot judging). Any
 * 2.40 operation first ends a kept message operation, so the two never
 * overlap on a session. Not thread-safe: one thread per session.
 */
struct mech_sess {
	CK_FUNCTION_LIST *fn;
	P11V3_FUNCTION_LIST *fn3;	/* NULL: the module has no 3.0 API */
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE msg_enc;	/* key of the open message-encrypt op */
	CK_OBJECT_HANDLE msg_dec;	/* key of the open message-decrypt op */
	int keep;
};

/* A session context with no message operation open. */
void mech_sess_init(struct mech_sess *ms, CK_FUNCTION_LIST *fn,
    P11V3_FUNCTION_LIST *fn3, CK_SESSION_HANDLE s, int keep);
/* Ends any open message operation (before closing or reusing s). */
void mech_sess_idle(struct mech_sess *ms);

#define MECH_F_V3	0x1	/* needs the module's PKCS#11 3.0 functions */
#define MECH_F_OBJECTS	0x2	/* creates session objects: R/W session */
#define MECH_F_RSA	0x4	/* an RSA key pair, else an AES key */

struct mech_def {
	const char *name;	/* row name: "aes-gcm/message" */
	uint8_t env;		/* envelope mechanism byte it seals */
	const char *cfg;	/* --mechanism name: "aes-gcm" */
	const char *title;	/* for messages: "AES-GCM (token IV, 3.0 API)" */
	CK_MECHANISM_TYPE ckm;	/* what C_GetMechanismInfo must offer */
	const char *ckm_name;	/* "CKM_AES_GCM" */
	CK_FLAGS need;		/* with these flags */
	/*
	 * Key attributes it needs true (RSA: [0] on the private key, [1] on
	 * the public key); keygen sets them for this row.
	 */
	CK_ATTRIBUTE_TYPE use[2];
	const char *use_name[2];
	unsigned opens;		/* MECH_ENV_BIT of envelopes it can open */
	unsigned flags;		/* MECH_F_* */
	int (*seal)(struct mech_sess *ms, const struct mech_def *d,
	    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
	    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
	    struct mech_err *me);
	int (*open)(struct mech_sess *ms, const struct mech_def *d,
	    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
	    size_t cap, size_t *len, struct mech_err *me);
};

extern const struct mech_def mech_table[MECH_NROWS];

/* 1 for the envelope mechanism bytes this build opens. */
int mech_env_known(uint8_t env);
/* 1 when envelope byte env is sealed with an RSA key. */
int mech_env_is_rsa(uint8_t env);
/* "aes-gcm", "aes-gcm-token-iv", "aes-kwp", ..., or "unknown". */
const char *mech_env_name(uint8_t env);
/* 1 when name is a --mechanism value ("auto" included). */
int mech_cfg_valid(const char *name);
/* "auto, aes-gcm, aes-kwp or rsa-oaep", for messages. */
const char *mech_cfg_list(void);

/*
 * Largest plaintext row d can seal with k (bounded by KEYRING_MAX_PLAINTEXT
 * and the apiserver's ciphertext limit), and the body length sealing ptlen
 * bytes gives (0 when ptlen does not fit).
 */
size_t mech_max_plaintext(const struct mech_def *d, const struct mech_key *k);
size_t mech_body_len(const struct mech_def *d, const struct mech_key *k,
    size_t ptlen);

/*
 * Seals pt with row d and key k into a whole envelope in out (cap bytes):
 * the header of format ENVELOPE_FORMAT_V1, d->env and keyref, then the
 * body. The IV is ours (aes-gcm) or the token's (the token-IV rows).
 * Returns KEYRING_OK, KEYRING_E_TOOBIG (ptlen does not fit d or cap),
 * KEYRING_E_INVALID (empty plaintext) or KEYRING_E_TOKEN; *me (may be
 * NULL) receives the failing call and CK_RV, and what the seal found out.
 */
int mech_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const uint8_t keyref[ENVELOPE_KEYREF_LEN],
    const uint8_t *pt, size_t ptlen, uint8_t *out, size_t cap,
    size_t *outlen, struct mech_err *me);

/*
 * Opens the envelope e (decoded; its mech in d->opens) with row d into pt
 * (ptcap bytes). Returns KEYRING_OK; KEYRING_E_INVALID when the body cannot
 * be this mechanism's output; KEYRING_E_AUTH when the token or the frame
 * check refuses it; KEYRING_E_TOOBIG when ptcap is short; KEYRING_E_TOKEN
 * on a session or token fault (*me, may be NULL, says which call). Every
 * intermediate buffer is wiped.
 */
int mech_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *pt,
    size_t ptcap, size_t *ptlen, struct mech_err *me);

/*
 * 1 when rv, from a first use of a mechanism, means "this token or key
 * cannot do it" (mechanism or parameters refused, key not permitted,
 * read-only session) rather than a passing fault. SoftHSM answers
 * CKR_ARGUMENTS_BAD to OAEP parameters it does not support.
 */
int mech_rv_refusal(CK_RV rv);

/* Records a token call's outcome in me (and the call metrics); returns rv. */
CK_RV mech_note(struct mech_err *me, const char *call, CK_RV rv);

/* ---- RFC 5649 on a block cipher (mech_kwp.c) ------------------------- */

/*
 * One AES block (16 bytes) through the key, in place: encrypt, or decrypt
 * when dec is set. Returns 0, or -1 (the callback keeps its own error).
 */
typedef int (*mech_block_fn)(void *ctx, int dec, uint8_t block[16]);

/* Output length of RFC 5649 wrapping n bytes (1..KWP input max). */
size_t mech_kwp_len(size_t n);
/*
 * RFC 5649 key wrap with padding of in (n >= 1 bytes) into out
 * (mech_kwp_len(n) bytes), each AES operation through blk. 0, or -1.
 */
int mech_kwp_wrap(mech_block_fn blk, void *ctx, const uint8_t *in, size_t n,
    uint8_t *out);
/*
 * RFC 5649 unwrap of in (n bytes: a multiple of 8, at least 16) into out
 * (n - 8 bytes of room); *outlen receives the message length the
 * integrity value names. Returns 0; -1 when blk failed; -2 when the
 * integrity check fails (wrong key, or tampered). out is wiped on failure.
 */
int mech_kwp_unwrap(mech_block_fn blk, void *ctx, const uint8_t *in, size_t n,
    uint8_t *out, size_t *outlen);

/* A failed open's status: a session or token fault, else "does not open". */
int mech_open_status(CK_RV rv);

/* Seal/open functions of the AES-GCM rows (mech_gcm.c). */
int mech_gcm_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *me);
int mech_gcm_tiv_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *me);
int mech_gcm_msg_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *me);
int mech_gcm_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me);
int mech_gcm_msg_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me);

/* Seal/open functions of the KWP rows (mech_kwp.c). */
int mech_kwp_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *me);
int mech_kwp_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me);
int mech_kwp_ecb_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *me);
int mech_kwp_ecb_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me);

#endif
