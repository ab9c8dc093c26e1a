/*
 * mech: one seal or one open inside the token, for each envelope mechanism
 * (ENVELOPE_MECH_* in envelope.h). Internal to pkcs11/. No policy here:
 * which key may use which mechanism is kek.c's business.
 *
 *   AES-GCM   C_Encrypt/C_Decrypt, AAD = the envelope's AAD.
 *   AES-KWP   the frame goes into a short-lived session object that
 *             C_WrapKey wraps (RFC 5649); open is C_UnwrapKey into a
 *             session object whose value is read and destroyed. Tokens
 *             only offer CKM_AES_KEY_WRAP_PAD through C_WrapKey.
 *   RSA-OAEP  C_Encrypt with the public key, C_Decrypt with the private
 *             key, of the frame.
 */
#ifndef P11KMS_MECH_H
#define P11KMS_MECH_H

#include <stddef.h>
#include <stdint.h>

#include "pkcs11/envelope.h"
#include "pkcs11/token.h"

#define MECH_GCM_IV_LEN		12
#define MECH_GCM_TAG_LEN	16
#define MECH_KWP_ICV_LEN	8	/* RFC 5649 integrity value */
#define MECH_RSA_MAX_BYTES	512	/* RSA-4096: 19 + 512 <= 1024 */

/* The failing token call of a seal or open ({ CKR_OK, NULL } if none). */
struct mech_err {
	CK_RV rv;
	const char *call;	/* "C_Encrypt", static */
	uint64_t t;		/* CLOCK_MONOTONIC ns when the call began */
};

/* A fresh error and timing record for one operation. */
struct mech_err mech_err_start(void);

struct mech_key {
	CK_OBJECT_HANDLE obj;	/* AES key, or RSA private key (opens) */
	CK_OBJECT_HANDLE pub;	/* RSA public key (seals); AES: unused */
	size_t rsa_len;		/* RSA modulus bytes; 0 for AES */
};

/* 1 for the mechanism bytes this build knows. */
int mech_known(uint8_t mech);
/* 1 when mech needs an RSA key, 0 for an AES key. */
int mech_is_rsa(uint8_t mech);

/*
 * Largest plaintext mech can seal with k (bounded by KEYRING_MAX_PLAINTEXT
 * and the apiserver's ciphertext limit), and the body length sealing ptlen
 * bytes gives. mech_body_len returns 0 when ptlen does not fit.
 */
size_t mech_max_plaintext(uint8_t mech, const struct mech_key *k);
size_t mech_body_len(uint8_t mech, const struct mech_key *k, size_t ptlen);

/*
 * Fills e->iv_len and e->iv for e->mech (a random 96-bit IV for GCM, none
 * for the others). Returns 0, or -1 when the RNG fails.
 */
int mech_set_iv(struct envelope *e);

/*
 * Seals pt for the envelope header e (complete: the AAD and the frame are
 * made from it) on session s, writing the body into body (cap bytes).
 * Returns KEYRING_OK, KEYRING_E_TOOBIG (ptlen does not fit mech or cap) or
 * KEYRING_E_TOKEN; *me (may be NULL) receives the failing call and CK_RV.
 */
int mech_seal(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    const struct mech_key *k, const struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *me);

/*
 * Opens the envelope e (decoded; e->body set) on session s into pt (ptcap
 * bytes). Returns KEYRING_OK; KEYRING_E_INVALID when the body cannot be
 * this mechanism's output; KEYRING_E_AUTH when the token or the frame
 * check refuses it; KEYRING_E_TOOBIG when ptcap is short; KEYRING_E_TOKEN
 * on a session or token fault (*me, may be NULL, says which call). Every
 * intermediate buffer is wiped.
 */
int mech_open(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    const struct mech_key *k, const struct envelope *e, uint8_t *pt,
    size_t ptcap, size_t *ptlen, struct mech_err *me);

/*
 * 1 when rv, from a first use of a mechanism, means "this token or key
 * cannot do it" (mechanism or parameters refused, key not permitted)
 * rather than a passing fault. SoftHSM answers CKR_ARGUMENTS_BAD to OAEP
 * parameters it does not support.
 */
int mech_rv_refusal(CK_RV rv);

#endif
