/*
 * keyid: the identity of a key, derived from the key itself so that every
 * p11kms on every host, whatever its slot numbers or key order, names the
 * same key the same way (DESIGN.md "Ciphertext and key_id"). Internal to
 * pkcs11/.
 *
 *   fingerprint = SHA-256("p11kms-key-v1" || lp(CKA_ID) || lp(CKA_LABEL)
 *                         || lp(check value))
 *   check value = AES: see keyid_check_value; RSA (CKA_ID and CKA_LABEL
 *                 of the private key): keyid_rsa_check_value
 *   lp(x)       = u32 big-endian length of x || x
 *   keyref      = fingerprint[0..16)   (carried in every envelope)
 *   key_id      = lowercase hex of keyref
 *
 * Changing any of this renames every key and orphans every stored
 * envelope: it is a wire format.
 */
#ifndef P11KMS_KEYID_H
#define P11KMS_KEYID_H

#include <stddef.h>
#include <stdint.h>

#include "pkcs11/token.h"

#define KEYID_DOMAIN		"p11kms-key-v1"
#define KEYID_FP_LEN		32
#define KEYID_KCV_MAX		64
/* Reserved GCM IV and AAD for the computed check value (see keyid.c). */
#define KEYID_KCV_IV		"p11kms-kcv\0\0"	/* 12 bytes */
#define KEYID_KCV_IV_LEN	12
#define KEYID_KCV_AAD		"p11kms key check value"
/* The constant an AES key wraps (RFC 5649) for its computed check value. */
#define KEYID_KCV_KWP_VALUE	"p11kms-kcv-kwp-1"	/* 16 bytes */

enum keyid_kcv_mode {
	KEYID_KCV_AUTO,		/* CKA_CHECK_VALUE if the token has one */
	KEYID_KCV_GCM,		/* always the computed GCM tag */
	KEYID_KCV_KWP,		/* always the computed key wrap */
};

/*
 * Writes the AES key's check value into kcv (KEYID_KCV_MAX bytes) and its
 * length into *kcvlen. AUTO uses CKA_CHECK_VALUE when the token returns a
 * non-empty one; else (and for GCM) the 16-byte AES-GCM tag of the empty
 * string under KEYID_KCV_IV and KEYID_KCV_AAD, computed in the token on
 * session s; if the token or key refuses GCM for good (mechanism invalid,
 * key function not permitted: a key made for key wrap only, a token
 * without GCM), the 24-byte CKM_AES_KEY_WRAP_PAD wrap of the constant
 * KEYID_KCV_KWP_VALUE (KWP is deterministic). Returns CKR_OK or the failing
 * CK_RV. The choice depends only on the key and token, never on a passing
 * fault, so a key keeps its key_id.
 */
CK_RV keyid_check_value(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    CK_OBJECT_HANDLE key, enum keyid_kcv_mode mode, uint8_t *kcv,
    size_t *kcvlen);

/*
 * Check value of an RSA key: SHA-256(modulus || public exponent), each
 * big-endian without leading zero bytes (tokens differ in how they pad
 * CKA_PUBLIC_EXPONENT). kcv receives KEYID_FP_LEN bytes. 0, or -1.
 */
int keyid_rsa_check_value(const uint8_t *n, size_t nlen, const uint8_t *e,
    size_t elen, uint8_t kcv[KEYID_FP_LEN]);

/* Computes the fingerprint above. Returns 0, or -1 if OpenSSL fails. */
int keyid_fingerprint(const uint8_t *id, size_t idlen, const uint8_t *label,
    size_t labellen, const uint8_t *kcv, size_t kcvlen,
    uint8_t fp[KEYID_FP_LEN]);

#endif
