/*
 * mech: seal and open inside the token, per envelope mechanism (contracts
 * in mech.h, layouts in envelope.h).
 *
 * Every operation sizes its output up front and makes one call, so no
 * operation is left active on the session (a CKR_BUFFER_TOO_SMALL would
 * leave it so). Session objects made for AES-KWP are destroyed on every
 * path; should C_DestroyObject itself fail, the object still dies with the
 * session, and it lives inside the token, not in our memory.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/keyring.h"
#include "pkcs11/mech.h"

#define SHA1_LEN	20
#define SHA256_LEN	32
/* Largest frame: header plus the largest plaintext. */
#define FRAME_MAX	(ENVELOPE_FRAME_HDR + KEYRING_MAX_PLAINTEXT)
/* Largest KWP output (frame rounded up to 8, plus the ICV). */
#define KWP_MAX		((FRAME_MAX + 7) / 8 * 8 + MECH_KWP_ICV_LEN)

_Static_assert(ENVELOPE_FIXED_LEN + MECH_RSA_MAX_BYTES <=
    KEYRING_MAX_CIPHERTEXT, "RSA-4096 envelope fits the apiserver");
_Static_assert(ENVELOPE_FIXED_LEN + KWP_MAX <= KEYRING_MAX_CIPHERTEXT,
    "largest KWP envelope fits the apiserver");

int
mech_known(uint8_t mech)
{
	switch (mech) {
	case ENVELOPE_MECH_AES_GCM:
	case ENVELOPE_MECH_AES_KWP:
	case ENVELOPE_MECH_RSA_OAEP_SHA256:
	case ENVELOPE_MECH_RSA_OAEP_SHA1:
		return 1;
	}
	return 0;
}

int
mech_is_rsa(uint8_t mech)
{
	return mech == ENVELOPE_MECH_RSA_OAEP_SHA256 ||
	    mech == ENVELOPE_MECH_RSA_OAEP_SHA1;
}

int
mech_rv_refusal(CK_RV rv)
{
	switch (rv) {
	case CKR_MECHANISM_INVALID:
	case CKR_MECHANISM_PARAM_INVALID:
	case CKR_KEY_FUNCTION_NOT_PERMITTED:
	case CKR_KEY_TYPE_INCONSISTENT:
	case CKR_KEY_NOT_WRAPPABLE:
	case CKR_KEY_UNEXTRACTABLE:
	case CKR_WRAPPING_KEY_TYPE_INCONSISTENT:
	case CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT:
	case CKR_TEMPLATE_INCONSISTENT:
	case CKR_TEMPLATE_INCOMPLETE:
	case CKR_ATTRIBUTE_VALUE_INVALID:
	case CKR_ATTRIBUTE_TYPE_INVALID:
	case CKR_ARGUMENTS_BAD:
	case CKR_FUNCTION_NOT_SUPPORTED:
		return 1;
	}
	return 0;
}

/* Records a token call's outcome in me; returns rv. */
static CK_RV
note(struct mech_err *me, const char *call, CK_RV rv)
{
	uint64_t now = token_now_ns();

	/* Calls of one operation follow each other: each one began when the
	 * previous one was noted (or when the operation started). */
	token_observe(call, rv, me->t != 0 ? now - me->t : 0);
	me->t = now;
	me->call = call;
	me->rv = rv;
	return rv;
}

struct mech_err
mech_err_start(void)
{
	struct mech_err me = { CKR_OK, NULL, 0 };

	me.t = token_now_ns();
	return me;
}

static size_t
oaep_hash_len(uint8_t mech)
{
	return mech == ENVELOPE_MECH_RSA_OAEP_SHA256 ? SHA256_LEN : SHA1_LEN;
}

size_t
mech_max_plaintext(uint8_t mech, const struct mech_key *k)
{
	size_t h, cap;

	switch (mech) {
	case ENVELOPE_MECH_AES_GCM:
	case ENVELOPE_MECH_AES_KWP:
		return KEYRING_MAX_PLAINTEXT;
	case ENVELOPE_MECH_RSA_OAEP_SHA256:
	case ENVELOPE_MECH_RSA_OAEP_SHA1:
		/* RFC 8017 7.1.1: mLen <= k - 2 hLen - 2. */
		h = oaep_hash_len(mech);
		if (k->rsa_len > MECH_RSA_MAX_BYTES ||
		    k->rsa_len < 2 * h + 2 + ENVELOPE_FRAME_HDR)
			return 0;
		cap = k->rsa_len - 2 * h - 2 - ENVELOPE_FRAME_HDR;
		return cap < KEYRING_MAX_PLAINTEXT ? cap :
		    KEYRING_MAX_PLAINTEXT;
	}
	return 0;
}

size_t
mech_body_len(uint8_t mech, const struct mech_key *k, size_t ptlen)
{
	if (ptlen == 0 || ptlen > mech_max_plaintext(mech, k))
		return 0;
	switch (mech) {
	case ENVELOPE_MECH_AES_GCM:
		return ptlen + MECH_GCM_TAG_LEN;
	case ENVELOPE_MECH_AES_KWP:
		return (ENVELOPE_FRAME_HDR + ptlen + 7) / 8 * 8 +
		    MECH_KWP_ICV_LEN;
	default:
		return k->rsa_len;
	}
}

int
mech_set_iv(struct envelope *e)
{
	memset(e->iv, 0, sizeof(e->iv));
	e->iv_len = 0;
	if (e->mech != ENVELOPE_MECH_AES_GCM)
		return 0;
	/*
	 * Random 96-bit IVs: under one key, 2^32 seals keep the collision
	 * chance below 2^-32 (NIST SP 800-38D).
	 */
	e->iv_len = MECH_GCM_IV_LEN;
	return RAND_bytes(e->iv, MECH_GCM_IV_LEN) == 1 ? 0 : -1;
}

static void
gcm_params(CK_GCM_PARAMS *gcm, CK_MECHANISM *m, const struct envelope *e,
    uint8_t *iv, uint8_t *aad, size_t aadlen)
{
	memcpy(iv, e->iv, MECH_GCM_IV_LEN);
	memset(gcm, 0, sizeof(*gcm));
	gcm->pIv = iv;
	gcm->ulIvLen = MECH_GCM_IV_LEN;
	gcm->ulIvBits = 8 * MECH_GCM_IV_LEN;
	gcm->pAAD = aad;
	gcm->ulAADLen = aadlen;
	gcm->ulTagBits = 8 * MECH_GCM_TAG_LEN;
	m->mechanism = CKM_AES_GCM;
	m->pParameter = gcm;
	m->ulParameterLen = sizeof(*gcm);
}

/* OAEP with the mechanism's hash for both OAEP and MGF1, empty label. */
static void
oaep_params(CK_RSA_PKCS_OAEP_PARAMS *p, CK_MECHANISM *m, uint8_t mech)
{
	memset(p, 0, sizeof(*p));
	if (mech == ENVELOPE_MECH_RSA_OAEP_SHA256) {
		p->hashAlg = CKM_SHA256;
		p->mgf = CKG_MGF1_SHA256;
	} else {
		p->hashAlg = CKM_SHA_1;
		p->mgf = CKG_MGF1_SHA1;
	}
	p->source = CKZ_DATA_SPECIFIED;
	p->pSourceData = NULL;
	p->ulSourceDataLen = 0;
	m->mechanism = CKM_RSA_PKCS_OAEP;
	m->pParameter = p;
	m->ulParameterLen = sizeof(*p);
}

static int
seal_gcm(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, const struct mech_key *k,
    const struct envelope *e, const uint8_t *pt, size_t ptlen, uint8_t *body,
    size_t want, struct mech_err *me)
{
	uint8_t iv[MECH_GCM_IV_LEN], aad[ENVELOPE_AAD_MAX];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM m;
	CK_ULONG outlen = want;
	size_t aadlen;

	if (e->iv_len != MECH_GCM_IV_LEN ||
	    (aadlen = envelope_aad(e, aad, sizeof(aad))) == 0)
		return KEYRING_E_INVALID;
	gcm_params(&gcm, &m, e, iv, aad, aadlen);
	if (note(me, "C_EncryptInit", fn->C_EncryptInit(s, &m,
	    k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	(void)note(me, "C_Encrypt", fn->C_Encrypt(s, (CK_BYTE_PTR)pt, ptlen,
	    body, &outlen));
	if (me->rv != CKR_OK)
		return KEYRING_E_TOKEN;
	return outlen == want ? KEYRING_OK : KEYRING_E_TOKEN;
}

/* The session object a KWP seal wraps: the frame as a generic secret. */
static int
seal_kwp(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, const struct mech_key *k,
    const uint8_t *frame, size_t framelen, uint8_t *body, size_t want,
    struct mech_err *me)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		/* Wrappable, so C_WrapKey takes it; it holds only the DEK
		 * the apiserver already has, for the length of this call. */
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
		{ CKA_VALUE, (void *)frame, framelen },
	};
	CK_MECHANISM m = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
	CK_ULONG outlen = want;
	int ret = KEYRING_E_TOKEN;

	(void)note(me, "C_CreateObject", fn->C_CreateObject(s, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &obj));
	if (me->rv != CKR_OK) {
		obj = CK_INVALID_HANDLE;
		goto out;
	}
	if (note(me, "C_WrapKey", fn->C_WrapKey(s, &m, k->obj, obj, body,
	    &outlen)) != CKR_OK)
		goto out;
	if (outlen != want)
		goto out;

	/* success */
	ret = KEYRING_OK;
out:
	if (obj != CK_INVALID_HANDLE)
		(void)fn->C_DestroyObject(s, obj);
	return ret;
}

static int
seal_rsa(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, const struct mech_key *k,
    uint8_t mech, const uint8_t *frame, size_t framelen, uint8_t *body,
    size_t want, struct mech_err *me)
{
	CK_RSA_PKCS_OAEP_PARAMS p;
	CK_MECHANISM m;
	CK_ULONG outlen = want;

	oaep_params(&p, &m, mech);
	if (note(me, "C_EncryptInit", fn->C_EncryptInit(s, &m,
	    k->pub)) != CKR_OK)
		return KEYRING_E_TOKEN;
	(void)note(me, "C_Encrypt", fn->C_Encrypt(s, (CK_BYTE_PTR)frame,
	    framelen, body, &outlen));
	if (me->rv != CKR_OK)
		return KEYRING_E_TOKEN;
	return outlen == want ? KEYRING_OK : KEYRING_E_TOKEN;
}

int
mech_seal(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    const struct mech_key *k, const struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t cap, size_t *bodylen,
    struct mech_err *mep)
{
	uint8_t frame[FRAME_MAX];
	size_t want, framelen = 0;
	struct mech_err me = mech_err_start();
	int ret = KEYRING_E_TOOBIG;

	*bodylen = 0;
	if (pt == NULL || ptlen == 0) {
		ret = KEYRING_E_INVALID;
		goto out;
	}
	if ((want = mech_body_len(e->mech, k, ptlen)) == 0 || cap < want)
		goto out;
	if (e->mech != ENVELOPE_MECH_AES_GCM) {
		ret = KEYRING_E_INVALID;
		if (e->iv_len != 0 || (framelen = envelope_frame(e, pt, ptlen,
		    frame, sizeof(frame))) == 0)
			goto out;
	}
	switch (e->mech) {
	case ENVELOPE_MECH_AES_GCM:
		ret = seal_gcm(fn, s, k, e, pt, ptlen, body, want, &me);
		break;
	case ENVELOPE_MECH_AES_KWP:
		ret = seal_kwp(fn, s, k, frame, framelen, body, want, &me);
		break;
	case ENVELOPE_MECH_RSA_OAEP_SHA256:
	case ENVELOPE_MECH_RSA_OAEP_SHA1:
		ret = seal_rsa(fn, s, k, e->mech, frame, framelen, body, want,
		    &me);
		break;
	default:
		ret = KEYRING_E_INVALID;
		break;
	}
	if (ret == KEYRING_OK)
		*bodylen = want;
out:
	OPENSSL_cleanse(frame, sizeof(frame));
	if (mep != NULL)
		*mep = me;
	return ret;
}

/* A refusal that is not a session or token fault: "does not open". */
static int
open_status(CK_RV rv)
{
	return token_rv_is_fault(rv) ? KEYRING_E_TOKEN : KEYRING_E_AUTH;
}

static int
open_gcm(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, const struct mech_key *k,
    const struct envelope *e, uint8_t *buf, size_t *len, struct mech_err *me)
{
	uint8_t iv[MECH_GCM_IV_LEN], aad[ENVELOPE_AAD_MAX];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM m;
	CK_ULONG outlen;
	size_t aadlen;

	if (e->iv_len != MECH_GCM_IV_LEN || e->body_len <= MECH_GCM_TAG_LEN ||
	    e->body_len - MECH_GCM_TAG_LEN > KEYRING_MAX_PLAINTEXT ||
	    (aadlen = envelope_aad(e, aad, sizeof(aad))) == 0)
		return KEYRING_E_INVALID;
	gcm_params(&gcm, &m, e, iv, aad, aadlen);
	/* Nothing the request controls can fail DecryptInit: a fault. */
	if (note(me, "C_DecryptInit", fn->C_DecryptInit(s, &m,
	    k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	/*
	 * Sized for the whole body (SoftHSM checks against the input size),
	 * so one call ends the operation. SoftHSM says CKR_GENERAL_ERROR for
	 * a bad tag.
	 */
	outlen = e->body_len;
	(void)note(me, "C_Decrypt", fn->C_Decrypt(s, (CK_BYTE_PTR)e->body,
	    e->body_len, buf, &outlen));
	if (me->rv != CKR_OK)
		return open_status(me->rv);
	/* The token misbehaves: never pass it on. */
	if (outlen != e->body_len - MECH_GCM_TAG_LEN)
		return KEYRING_E_TOKEN;
	*len = outlen;
	return KEYRING_OK;
}

static int
open_kwp(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, const struct mech_key *k,
    const struct envelope *e, uint8_t *buf, size_t cap, size_t *len,
    struct mech_err *me)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		/* Readable, so its value (the frame) can come back to us. */
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
	};
	CK_ATTRIBUTE val = { CKA_VALUE, buf, cap };
	CK_MECHANISM m = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
	int ret = KEYRING_E_INVALID;

	/* RFC 5649 output: a multiple of 8, at least two blocks. */
	if (e->iv_len != 0 || e->body_len % 8 != 0 || e->body_len < 16 ||
	    e->body_len > KWP_MAX || e->body_len > cap)
		goto out;
	(void)note(me, "C_UnwrapKey", fn->C_UnwrapKey(s, &m, k->obj,
	    (CK_BYTE_PTR)e->body, e->body_len, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &obj));
	if (me->rv != CKR_OK) {
		obj = CK_INVALID_HANDLE;
		ret = open_status(me->rv);
		goto out;
	}
	ret = KEYRING_E_TOKEN;
	if (note(me, "C_GetAttributeValue", fn->C_GetAttributeValue(s, obj,
	    &val, 1)) != CKR_OK)
		goto out;
	/* The value cannot be longer than what was wrapped. */
	if (val.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
	    val.ulValueLen > e->body_len - MECH_KWP_ICV_LEN)
		goto out;

	/* success */
	*len = val.ulValueLen;
	ret = KEYRING_OK;
out:
	if (obj != CK_INVALID_HANDLE)
		(void)fn->C_DestroyObject(s, obj);
	return ret;
}

static int
open_rsa(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s, const struct mech_key *k,
    const struct envelope *e, uint8_t *buf, size_t cap, size_t *len,
    struct mech_err *me)
{
	CK_RSA_PKCS_OAEP_PARAMS p;
	CK_MECHANISM m;
	CK_ULONG outlen = cap;

	if (e->iv_len != 0 || k->rsa_len == 0 || e->body_len != k->rsa_len ||
	    cap < k->rsa_len)
		return KEYRING_E_INVALID;
	oaep_params(&p, &m, e->mech);
	if (note(me, "C_DecryptInit", fn->C_DecryptInit(s, &m,
	    k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	(void)note(me, "C_Decrypt", fn->C_Decrypt(s, (CK_BYTE_PTR)e->body,
	    e->body_len, buf, &outlen));
	if (me->rv != CKR_OK)
		return open_status(me->rv);
	if (outlen > k->rsa_len)
		return KEYRING_E_TOKEN;
	*len = outlen;
	return KEYRING_OK;
}

int
mech_open(CK_FUNCTION_LIST *fn, CK_SESSION_HANDLE s,
    const struct mech_key *k, const struct envelope *e, uint8_t *pt,
    size_t ptcap, size_t *ptlen, struct mech_err *mep)
{
	uint8_t buf[ENVELOPE_MAX_LEN];
	const uint8_t *p = buf;
	size_t len = 0;
	struct mech_err me = mech_err_start();
	int ret;

	*ptlen = 0;
	switch (e->mech) {
	case ENVELOPE_MECH_AES_GCM:
		ret = open_gcm(fn, s, k, e, buf, &len, &me);
		break;
	case ENVELOPE_MECH_AES_KWP:
		ret = open_kwp(fn, s, k, e, buf, sizeof(buf), &len, &me);
		break;
	case ENVELOPE_MECH_RSA_OAEP_SHA256:
	case ENVELOPE_MECH_RSA_OAEP_SHA1:
		ret = open_rsa(fn, s, k, e, buf, sizeof(buf), &len, &me);
		break;
	default:
		ret = KEYRING_E_INVALID;
		break;
	}
	if (ret != KEYRING_OK)
		goto out;
	/*
	 * The frame's digest binds the header; a frame that fails the check
	 * opened under the right key but for another header (or is forged):
	 * "does not open", like a bad GCM tag.
	 */
	if (e->mech != ENVELOPE_MECH_AES_GCM &&
	    envelope_unframe(e, buf, len, &p, &len) != 0) {
		ret = KEYRING_E_AUTH;
		goto out;
	}
	if (len == 0 || len > KEYRING_MAX_PLAINTEXT) {
		ret = KEYRING_E_AUTH;
		goto out;
	}
	if (pt == NULL || ptcap < len) {
		ret = KEYRING_E_TOOBIG;
		goto out;
	}

	/* success */
	memcpy(pt, p, len);
	*ptlen = len;
	ret = KEYRING_OK;
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	if (mep != NULL)
		*mep = me;
	return ret;
}
