/*
 * keyid: check value and fingerprint of a key (contract in keyid.h).
 *
 * Why a token check value: CKA_ID and CKA_LABEL are names an operator
 * chooses and reuses; a key regenerated under the same names must get a new
 * key_id, so something computed from the key value itself must go in.
 *
 * The computed fallback encrypts the empty string with AES-GCM under an IV
 * reserved for this one constant input. Reusing a GCM IV is harmful only
 * for two different inputs; here IV, AAD and plaintext never change, so the
 * token always produces the same 16-byte tag, and it reveals nothing but
 * "same key or not". Data IVs are 96 random bits, so one colliding with the
 * reserved IV has probability 2^-96 per seal.
 */
#include <string.h>

#include <openssl/evp.h>

#include "pkcs11/keyid.h"
#include "pkcs11/mech.h"

_Static_assert(sizeof(KEYID_KCV_IV) - 1 == KEYID_KCV_IV_LEN, "kcv iv");
_Static_assert(sizeof(KEYID_KCV_KWP_VALUE) - 1 == 16, "kcv kwp value");

#define GCM_TAG_LEN	16

static CK_RV
kcv_gcm(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
    uint8_t *kcv, size_t *kcvlen)
{
	CK_BYTE iv[KEYID_KCV_IV_LEN], aad[sizeof(KEYID_KCV_AAD) - 1];
	CK_BYTE empty[1] = { 0 };
	CK_GCM_PARAMS gcm;
	CK_MECHANISM mech;
	CK_ULONG outlen = KEYID_KCV_MAX;
	CK_RV rv;

	memcpy(iv, KEYID_KCV_IV, sizeof(iv));
	memcpy(aad, KEYID_KCV_AAD, sizeof(aad));
	memset(&gcm, 0, sizeof(gcm));
	gcm.pIv = iv;
	gcm.ulIvLen = sizeof(iv);
	gcm.ulIvBits = 8 * sizeof(iv);
	gcm.pAAD = aad;
	gcm.ulAADLen = sizeof(aad);
	gcm.ulTagBits = 8 * GCM_TAG_LEN;
	mech.mechanism = CKM_AES_GCM;
	mech.pParameter = &gcm;
	mech.ulParameterLen = sizeof(gcm);

	if ((rv = fn->C_EncryptInit(s, &mech, key)) != CKR_OK)
		return rv;
	/* Output sized up front: one C_Encrypt ends the operation. */
	rv = fn->C_Encrypt(s, empty, 0, kcv, &outlen);
	if (rv != CKR_OK)
		return rv;
	if (outlen != GCM_TAG_LEN)
		return CKR_GENERAL_ERROR;
	*kcvlen = outlen;
	return CKR_OK;
}

/*
 * The wrap of a known constant, as a check value for keys that can only
 * wrap. Like the GCM tag, it is the same for every call and reveals only
 * "same key or not".
 */
static CK_RV
kcv_kwp(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
    uint8_t *kcv, size_t *kcvlen)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_BYTE value[sizeof(KEYID_KCV_KWP_VALUE) - 1];
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
		{ CKA_VALUE, value, sizeof(value) },
	};
	CK_MECHANISM mech = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_OBJECT_HANDLE obj;
	CK_ULONG outlen = KEYID_KCV_MAX;
	CK_RV rv;

	memcpy(value, KEYID_KCV_KWP_VALUE, sizeof(value));
	rv = fn->C_CreateObject(s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &obj);
	if (rv != CKR_OK)
		return rv;
	rv = fn->C_WrapKey(s, &mech, key, obj, kcv, &outlen);
	(void)fn->C_DestroyObject(s, obj);
	if (rv != CKR_OK)
		return rv;
	if (outlen != sizeof(value) + 8)
		return CKR_GENERAL_ERROR;
	*kcvlen = outlen;
	return CKR_OK;
}

/* AES-ECB of one zero block: PKCS#11's check value, all 16 bytes. */
static CK_RV
kcv_ecb(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
    uint8_t *kcv, size_t *kcvlen)
{
	CK_BYTE zero[16];
	CK_MECHANISM mech = { CKM_AES_ECB, NULL, 0 };
	CK_ULONG outlen = KEYID_KCV_MAX;
	CK_RV rv;

	memset(zero, 0, sizeof(zero));
	if ((rv = fn->C_EncryptInit(s, &mech, key)) != CKR_OK)
		return rv;
	rv = fn->C_Encrypt(s, zero, sizeof(zero), kcv, &outlen);
	if (rv != CKR_OK)
		return rv;
	if (outlen != sizeof(zero))
		return CKR_GENERAL_ERROR;
	*kcvlen = outlen;
	return CKR_OK;
}

/* The token's CKA_CHECK_VALUE: CKR_OK with *kcvlen 0 when it has none. */
static CK_RV
kcv_stored(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
    uint8_t *kcv, size_t *kcvlen)
{
	CK_ATTRIBUTE a = { CKA_CHECK_VALUE, NULL, 0 };
	CK_RV rv;

	*kcvlen = 0;
	rv = fn->C_GetAttributeValue(s, key, &a, 1);
	if (rv == CKR_OK && a.ulValueLen > 0 && a.ulValueLen <= KEYID_KCV_MAX) {
		a.pValue = kcv;
		rv = fn->C_GetAttributeValue(s, key, &a, 1);
		if (rv == CKR_OK && a.ulValueLen > 0 &&
		    a.ulValueLen <= KEYID_KCV_MAX) {
			*kcvlen = a.ulValueLen;
			return CKR_OK;
		}
	}
	/*
	 * "No check value" only when the token says so. Any other failure
	 * is returned: falling back on a passing fault would give the same
	 * key another key_id.
	 */
	if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
	    rv != CKR_ATTRIBUTE_SENSITIVE)
		return rv;
	return CKR_OK;
}

typedef CK_RV (*kcv_fn)(CK_FUNCTION_LIST *, CK_SESSION_HANDLE,
    CK_OBJECT_HANDLE, uint8_t *, size_t *);

/*
 * Runs the computed check values in order, moving on only past a lasting
 * refusal. CKR_OK with the value; else the last refusal or the fault.
 */
static CK_RV
kcv_chain(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
    const kcv_fn *chain, const char *const *names, size_t n, uint8_t *kcv,
    size_t *kcvlen, const char **from)
{
	CK_RV rv = CKR_MECHANISM_INVALID;
	size_t i;

	for (i = 0; i < n; i++) {
		rv = chain[i](fn, s, key, kcv, kcvlen);
		if (rv == CKR_OK) {
			*from = names[i];
			return CKR_OK;
		}
		if (!mech_rv_refusal(rv))
			return rv;
	}
	return rv;
}

int
keyid_id_is_v2(const uint8_t *id, size_t idlen)
{
	return idlen > KEYID_V2_ID_PREFIX_LEN &&
	    memcmp(id, KEYID_V2_ID_PREFIX, KEYID_V2_ID_PREFIX_LEN) == 0;
}

CK_RV
keyid_check_value(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    CK_OBJECT_HANDLE key, enum keyid_kcv_mode mode, uint8_t *kcv,
    size_t *kcvlen, const char **fromp)
{
	static const kcv_fn v1[] = { kcv_gcm, kcv_kwp, kcv_ecb };
	static const char *const v1n[] = { "AES-GCM tag", "AES-KWP",
	    "AES-ECB" };
	static const kcv_fn v2[] = { kcv_ecb, kcv_gcm, kcv_kwp };
	static const char *const v2n[] = { "AES-ECB", "AES-GCM tag",
	    "AES-KWP" };
	uint8_t stored[KEYID_KCV_MAX];
	size_t storedlen = 0;
	const char *from = "";
	CK_RV rv;

	*kcvlen = 0;
	switch (mode) {
	case KEYID_KCV_GCM:
		from = v1n[0];
		rv = kcv_gcm(fn, s, key, kcv, kcvlen);
		break;
	case KEYID_KCV_KWP:
		from = v1n[1];
		rv = kcv_kwp(fn, s, key, kcv, kcvlen);
		break;
	case KEYID_KCV_ECB:
		from = v1n[2];
		rv = kcv_ecb(fn, s, key, kcv, kcvlen);
		break;
	case KEYID_KCV_AUTO:
		if ((rv = kcv_stored(fn, s, key, kcv, kcvlen)) != CKR_OK ||
		    *kcvlen > 0) {
			from = "CKA_CHECK_VALUE";
			break;
		}
		rv = kcv_chain(fn, s, key, v1, v1n, 3, kcv, kcvlen, &from);
		break;
	default:	/* KEYID_KCV_LONG */
		if ((rv = kcv_stored(fn, s, key, stored, &storedlen)) !=
		    CKR_OK)
			break;
		if (storedlen >= KEYID_LONG_MIN) {
			memcpy(kcv, stored, storedlen);
			*kcvlen = storedlen;
			from = "CKA_CHECK_VALUE";
			break;
		}
		rv = kcv_chain(fn, s, key, v2, v2n, 3, kcv, kcvlen, &from);
		if (rv != CKR_OK && mech_rv_refusal(rv) && storedlen > 0) {
			memcpy(kcv, stored, storedlen);
			*kcvlen = storedlen;
			from = "CKA_CHECK_VALUE";
			rv = CKR_OK;
		}
		break;
	}
	if (rv != CKR_OK)
		*kcvlen = 0;
	if (fromp != NULL)
		*fromp = rv == CKR_OK ? from : "";
	return rv;
}

static size_t
skip_zeros(const uint8_t **p, size_t n)
{
	while (n > 0 && **p == 0) {
		(*p)++;
		n--;
	}
	return n;
}

int
keyid_rsa_check_value(const uint8_t *n, size_t nlen, const uint8_t *e,
    size_t elen, uint8_t kcv[KEYID_FP_LEN])
{
	EVP_MD_CTX *ctx;
	unsigned int mdlen = 0;
	int ret = -1;

	nlen = skip_zeros(&n, nlen);
	elen = skip_zeros(&e, elen);
	if (nlen == 0 || elen == 0)
		return -1;
	if ((ctx = EVP_MD_CTX_new()) == NULL)
		return -1;
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, n, nlen) != 1 ||
	    EVP_DigestUpdate(ctx, e, elen) != 1 ||
	    EVP_DigestFinal_ex(ctx, kcv, &mdlen) != 1 || mdlen != KEYID_FP_LEN)
		goto out;

	/* success */
	ret = 0;
out:
	EVP_MD_CTX_free(ctx);
	return ret;
}

static int
put_lp(EVP_MD_CTX *ctx, const uint8_t *p, size_t n)
{
	uint8_t be[4];

	if (n > 0xffffffffu)
		return -1;
	be[0] = (uint8_t)(n >> 24);
	be[1] = (uint8_t)(n >> 16);
	be[2] = (uint8_t)(n >> 8);
	be[3] = (uint8_t)n;
	if (EVP_DigestUpdate(ctx, be, sizeof(be)) != 1)
		return -1;
	if (n > 0 && EVP_DigestUpdate(ctx, p, n) != 1)
		return -1;
	return 0;
}

int
keyid_fingerprint(const uint8_t *id, size_t idlen, const uint8_t *label,
    size_t labellen, const uint8_t *kcv, size_t kcvlen,
    uint8_t fp[KEYID_FP_LEN])
{
	EVP_MD_CTX *ctx;
	unsigned int n = 0;
	int ret = -1;

	if ((ctx = EVP_MD_CTX_new()) == NULL)
		return -1;
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, KEYID_DOMAIN,
	    sizeof(KEYID_DOMAIN) - 1) != 1 ||
	    put_lp(ctx, id, idlen) != 0 ||
	    put_lp(ctx, label, labellen) != 0 ||
	    put_lp(ctx, kcv, kcvlen) != 0 ||
	    EVP_DigestFinal_ex(ctx, fp, &n) != 1 || n != KEYID_FP_LEN)
		goto out;

	/* success */
	ret = 0;
out:
	EVP_MD_CTX_free(ctx);
	return ret;
}
