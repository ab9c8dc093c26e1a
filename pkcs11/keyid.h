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

/*
 * Keys made by p11kms keygen from this version on carry a CKA_ID that
 * starts with these bytes (then 16 random ones): their check value is
 * the long one (KEYID_KCV_LONG), so their key_id has at least 64
 * key-dependent bits even where CKA_CHECK_VALUE is the 3 bytes PKCS#11
 * defines. Every other key keeps the rule it always had (KEYID_KCV_AUTO),
 * so no existing key_id changes. SECURITY.md "key_id" documents both.
 */
#define KEYID_V2_ID_PREFIX	"p11kms/2"	/* 8 bytes */
#define KEYID_V2_ID_PREFIX_LEN	8
#define KEYID_LONG_MIN		8	/* bytes a check value must have */

enum keyid_kcv_mode {
	/*
	 * CKA_CHECK_VALUE if the token has one; else the computed GCM tag;
	 * else (GCM refused for good) the key wrap; else AES-ECB of a zero
	 * block. The first three are the rule key_ids were always made by.
	 */
	KEYID_KCV_AUTO,
	/*
	 * A CKA_CHECK_VALUE of KEYID_LONG_MIN bytes or more; else AES-ECB of
	 * a zero block (16 bytes; its first 3 are PKCS#11's CKA_CHECK_VALUE),
	 * else the GCM tag, else the key wrap; if the token refuses all
	 * three for good, a short CKA_CHECK_VALUE after all.
	 */
	KEYID_KCV_LONG,
	KEYID_KCV_GCM,		/* always the computed GCM tag */
	KEYID_KCV_KWP,		/* always the computed key wrap */
	KEYID_KCV_ECB,		/* always AES-ECB of a zero block */
};

/* 1 when a key with this CKA_ID gets the KEYID_KCV_LONG rule. */
int keyid_id_is_v2(const uint8_t *id, size_t idlen);

/*
 * Writes the AES key's check value into kcv (KEYID_KCV_MAX bytes) and its
 * length into *kcvlen, by mode (above). The computed values: the 16-byte
 * AES-GCM tag of the empty string under KEYID_KCV_IV and KEYID_KCV_AAD;
 * the 24-byte CKM_AES_KEY_WRAP_PAD wrap of the constant
 * KEYID_KCV_KWP_VALUE (KWP is deterministic; needs a session that may
 * hold objects); the 16-byte AES-ECB encryption of a zero block. Each is
 * computed in the token on session s and is the same on every call. Only
 * a lasting refusal (mech_rv_refusal: mechanism or parameters refused,
 * key not permitted, read-only session) moves on to the next, so a key
 * keeps its key_id through passing faults. *from (may be NULL) receives
 * what was used ("CKA_CHECK_VALUE", "AES-GCM tag", "AES-KWP",
 * "AES-ECB"). Returns CKR_OK or the failing CK_RV.
 */
CK_RV keyid_check_value(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    CK_OBJECT_HANDLE key, enum keyid_kcv_mode mode, uint8_t *kcv,
    size_t *kcvlen, const char **from);

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
