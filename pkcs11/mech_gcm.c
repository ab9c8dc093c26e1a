/*
 * mech_gcm: the AES-GCM rows' seal and open (contracts in mech.h): our
 * own IV (aes-gcm), the token's through the PKCS#11 3.0 message API
 * (aes-gcm/message), and the token's in the 2.40 write-back or appended
 * forms (aes-gcm/token-iv). Every operation sizes its output up front and
 * makes one call, so no operation is left active on the session.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/keyring.h"
#include "pkcs11/mech.h"

/* Room for a token-IV seal's output: body plus an appended IV. */
#define TIV_OUT_MAX	(KEYRING_MAX_PLAINTEXT + MECH_GCM_TAG_LEN + \
			 ENVELOPE_IV_MAX)

static void
gcm_params(CK_GCM_PARAMS *gcm, CK_MECHANISM *m, uint8_t *iv, size_t ivlen,
    uint8_t *aad, size_t aadlen)
{
	memset(gcm, 0, sizeof(*gcm));
	gcm->pIv = iv;
	gcm->ulIvLen = ivlen;
	gcm->ulIvBits = 8 * ivlen;
	gcm->pAAD = aad;
	gcm->ulAADLen = aadlen;
	gcm->ulTagBits = 8 * MECH_GCM_TAG_LEN;
	m->mechanism = CKM_AES_GCM;
	m->pParameter = gcm;
	m->ulParameterLen = sizeof(*gcm);
}

static int
all_zero(const uint8_t *p, size_t n)
{
	uint8_t acc = 0;
	size_t i;

	for (i = 0; i < n; i++)
		acc |= p[i];
	return acc == 0;
}

/*
 * Random 96-bit IVs: under one key, 2^32 seals keep the collision chance
 * below 2^-32 (NIST SP 800-38D).
 */
int
mech_gcm_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t want, size_t *bodylen,
    struct mech_err *me)
{
	uint8_t iv[MECH_GCM_IV_LEN], aad[ENVELOPE_AAD_MAX];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM m;
	CK_ULONG outlen = want;
	size_t aadlen;

	(void)d;
	e->iv_len = MECH_GCM_IV_LEN;
	if (RAND_bytes(e->iv, MECH_GCM_IV_LEN) != 1) {
		me->call = "RAND_bytes";
		return KEYRING_E_TOKEN;
	}
	if ((aadlen = envelope_aad(e, aad, sizeof(aad))) == 0)
		return KEYRING_E_INVALID;
	memcpy(iv, e->iv, sizeof(iv));
	gcm_params(&gcm, &m, iv, sizeof(iv), aad, aadlen);
	if (mech_note(me, "C_EncryptInit", ms->fn->C_EncryptInit(ms->s, &m,
	    k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	(void)mech_note(me, "C_Encrypt", ms->fn->C_Encrypt(ms->s,
	    (CK_BYTE_PTR)pt, ptlen, body, &outlen));
	if (me->rv != CKR_OK)
		return KEYRING_E_TOKEN;
	if (outlen != want)
		return KEYRING_E_TOKEN;
	*bodylen = outlen;
	return KEYRING_OK;
}

/*
 * A token that keeps an all-zero IV as given would repeat it on every
 * seal: that is a refusal of this row (no envelope is ever made with it),
 * reported as the mechanism parameter it would not honour.
 */
static int
tiv_refused(struct mech_err *me, const char *why)
{
	me->rv = CKR_MECHANISM_PARAM_INVALID;
	me->call = why;
	return KEYRING_E_TOKEN;
}

/*
 * The 2.40 token-IV forms: an all-zero pIv the token fills in
 * (write-back, ProtectServer), or the IV appended after the tag (Luna,
 * older ProtectServer). The output buffer has room for an appended IV, so
 * the one C_Encrypt always ends the operation; the form is read from what
 * came back.
 */
int
mech_gcm_tiv_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t want, size_t *bodylen,
    struct mech_err *me)
{
	uint8_t iv[ENVELOPE_IV_MAX], aad[ENVELOPE_AAD_MAX], out[TIV_OUT_MAX];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM m;
	CK_ULONG outlen = sizeof(out);
	size_t aadlen, extra;
	int ret = KEYRING_E_TOKEN;

	(void)d;
	memset(iv, 0, sizeof(iv));
	e->iv_len = 0;
	if (want > sizeof(out) - ENVELOPE_IV_MAX ||
	    (aadlen = envelope_aad(e, aad, sizeof(aad))) == 0)
		return KEYRING_E_INVALID;
	gcm_params(&gcm, &m, iv, MECH_GCM_IV_LEN, aad, aadlen);
	if (mech_note(me, "C_EncryptInit", ms->fn->C_EncryptInit(ms->s, &m,
	    k->obj)) != CKR_OK)
		goto out;
	(void)mech_note(me, "C_Encrypt", ms->fn->C_Encrypt(ms->s,
	    (CK_BYTE_PTR)pt, ptlen, out, &outlen));
	if (me->rv != CKR_OK)
		goto out;
	if (outlen == want) {
		if (all_zero(iv, MECH_GCM_IV_LEN)) {
			ret = tiv_refused(me, "C_Encrypt (the token used the "
			    "all-zero IV as given)");
			goto out;
		}
		e->iv_len = MECH_GCM_IV_LEN;
		memcpy(e->iv, iv, MECH_GCM_IV_LEN);
		me->detail = "IV written back by the token";
	} else if (outlen > want && outlen - want <= ENVELOPE_IV_MAX &&
	    outlen - want >= MECH_GCM_IV_LEN) {
		extra = outlen - want;
		if (all_zero(out + want, extra)) {
			ret = tiv_refused(me, "C_Encrypt (the token appended an "
			    "all-zero IV)");
			goto out;
		}
		e->iv_len = (uint8_t)extra;
		memcpy(e->iv, out + want, extra);
		me->detail = extra == 16 ? "16-byte IV appended by the token" :
		    "12-byte IV appended by the token";
	} else
		goto out;	/* the token misbehaves: never pass it on */

	/* success */
	memcpy(body, out, want);
	*bodylen = want;
	ret = KEYRING_OK;
out:
	OPENSSL_cleanse(out, sizeof(out));
	return ret;
}

/* Opens (or reuses) the session's message operation for key obj. */
static CK_RV
msg_init(struct mech_sess *ms, int dec, CK_OBJECT_HANDLE obj,
    struct mech_err *me)
{
	CK_OBJECT_HANDLE *cur = dec ? &ms->msg_dec : &ms->msg_enc;
	P11V3_C_MessageFinal fin = dec ? ms->fn3->C_MessageDecryptFinal :
	    ms->fn3->C_MessageEncryptFinal;
	P11V3_C_MessageInit init = dec ? ms->fn3->C_MessageDecryptInit :
	    ms->fn3->C_MessageEncryptInit;
	CK_MECHANISM m = { CKM_AES_GCM, NULL, 0 };
	CK_RV rv;

	if (*cur == obj)
		return CKR_OK;
	if (*cur != CK_INVALID_HANDLE)
		(void)fin(ms->s);
	*cur = CK_INVALID_HANDLE;
	rv = mech_note(me, dec ? "C_MessageDecryptInit" :
	    "C_MessageEncryptInit", init(ms->s, &m, obj));
	if (rv == CKR_OK)
		*cur = obj;
	return rv;
}

/* After a message call: end it unless kept, or after a failure. */
static void
msg_done(struct mech_sess *ms, int dec, int failed)
{
	CK_OBJECT_HANDLE *cur = dec ? &ms->msg_dec : &ms->msg_enc;

	if (*cur == CK_INVALID_HANDLE || (ms->keep && !failed))
		return;
	if (dec)
		(void)ms->fn3->C_MessageDecryptFinal(ms->s);
	else
		(void)ms->fn3->C_MessageEncryptFinal(ms->s);
	*cur = CK_INVALID_HANDLE;
}

int
mech_gcm_msg_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t want, size_t *bodylen,
    struct mech_err *me)
{
	uint8_t iv[MECH_GCM_IV_LEN], aad[ENVELOPE_AAD_MAX];
	P11V3_GCM_MESSAGE_PARAMS p;
	CK_ULONG ctlen = ptlen;
	size_t aadlen;
	int ret = KEYRING_E_TOKEN;

	(void)d;
	if (ms->fn3 == NULL)
		return tiv_refused(me, "C_GetInterface (no PKCS#11 3.0)");
	memset(iv, 0, sizeof(iv));
	e->iv_len = 0;
	if (want != ptlen + MECH_GCM_TAG_LEN ||
	    (aadlen = envelope_aad(e, aad, sizeof(aad))) == 0)
		return KEYRING_E_INVALID;
	if (msg_init(ms, 0, k->obj, me) != CKR_OK)
		goto out;
	memset(&p, 0, sizeof(p));
	p.pIv = iv;
	p.ulIvLen = sizeof(iv);
	p.ulIvFixedBits = 0;
	p.ivGenerator = CKG_GENERATE_RANDOM;
	p.pTag = body + ptlen;
	p.ulTagBits = 8 * MECH_GCM_TAG_LEN;
	if (mech_note(me, "C_EncryptMessage", ms->fn3->C_EncryptMessage(ms->s,
	    &p, sizeof(p), aad, aadlen, (CK_BYTE_PTR)pt, ptlen, body,
	    &ctlen)) != CKR_OK)
		goto out;
	if (ctlen != ptlen)
		goto out;
	if (all_zero(iv, sizeof(iv))) {
		ret = tiv_refused(me, "C_EncryptMessage (no IV generated)");
		goto out;
	}

	/* success */
	e->iv_len = MECH_GCM_IV_LEN;
	memcpy(e->iv, iv, sizeof(iv));
	me->detail = "IV made by the token (PKCS#11 3.0 message API)";
	*bodylen = want;
	ret = KEYRING_OK;
out:
	msg_done(ms, 0, ret != KEYRING_OK);
	return ret;
}


/* The IV lengths an envelope of this GCM byte may carry. */
static int
gcm_iv_ok(const struct envelope *e)
{
	if (e->mech == ENVELOPE_MECH_AES_GCM)
		return e->iv_len == MECH_GCM_IV_LEN;
	return e->iv_len >= MECH_GCM_IV_LEN && e->iv_len <= ENVELOPE_IV_MAX;
}

/*
 * Checks that e can be a GCM body (IV length for its byte, tag, size) and
 * writes its AAD into aad (ENVELOPE_AAD_MAX); the AAD's length, or 0 when
 * the envelope cannot be this mechanism's output.
 */
static size_t
gcm_open_aad(const struct envelope *e, size_t cap, uint8_t *aad)
{
	if (!gcm_iv_ok(e) || e->body_len <= MECH_GCM_TAG_LEN ||
	    e->body_len - MECH_GCM_TAG_LEN > KEYRING_MAX_PLAINTEXT ||
	    e->body_len > cap)
		return 0;
	return envelope_aad(e, aad, ENVELOPE_AAD_MAX);
}

int
mech_gcm_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me)
{
	uint8_t iv[ENVELOPE_IV_MAX], aad[ENVELOPE_AAD_MAX];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM m;
	CK_ULONG outlen;
	size_t aadlen;

	(void)d;
	if ((aadlen = gcm_open_aad(e, cap, aad)) == 0)
		return KEYRING_E_INVALID;
	memcpy(iv, e->iv, e->iv_len);
	gcm_params(&gcm, &m, iv, e->iv_len, aad, aadlen);
	/* Nothing the request controls can fail DecryptInit: a fault. */
	if (mech_note(me, "C_DecryptInit", ms->fn->C_DecryptInit(ms->s, &m,
	    k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	/*
	 * Sized for the whole body (SoftHSM checks against the input size),
	 * so one call ends the operation. SoftHSM says CKR_GENERAL_ERROR for
	 * a bad tag.
	 */
	outlen = e->body_len;
	(void)mech_note(me, "C_Decrypt", ms->fn->C_Decrypt(ms->s,
	    (CK_BYTE_PTR)e->body, e->body_len, buf, &outlen));
	if (me->rv != CKR_OK)
		return mech_open_status(me->rv);
	/* The token misbehaves: never pass it on. */
	if (outlen != e->body_len - MECH_GCM_TAG_LEN)
		return KEYRING_E_TOKEN;
	*len = outlen;
	return KEYRING_OK;
}

int
mech_gcm_msg_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me)
{
	uint8_t iv[ENVELOPE_IV_MAX], tag[MECH_GCM_TAG_LEN];
	uint8_t aad[ENVELOPE_AAD_MAX];
	P11V3_GCM_MESSAGE_PARAMS p;
	CK_ULONG outlen;
	size_t aadlen, ctlen;
	int ret = KEYRING_E_TOKEN;

	(void)d;
	if ((aadlen = gcm_open_aad(e, cap, aad)) == 0)
		return KEYRING_E_INVALID;
	if (ms->fn3 == NULL)
		return KEYRING_E_TOKEN;
	ctlen = e->body_len - MECH_GCM_TAG_LEN;
	memcpy(iv, e->iv, e->iv_len);
	memcpy(tag, e->body + ctlen, sizeof(tag));
	if (msg_init(ms, 1, k->obj, me) != CKR_OK)
		goto out;
	memset(&p, 0, sizeof(p));
	p.pIv = iv;
	p.ulIvLen = e->iv_len;
	p.ivGenerator = CKG_NO_GENERATE;
	p.pTag = tag;
	p.ulTagBits = 8 * MECH_GCM_TAG_LEN;
	outlen = cap;
	(void)mech_note(me, "C_DecryptMessage", ms->fn3->C_DecryptMessage(
	    ms->s, &p, sizeof(p), aad, aadlen, (CK_BYTE_PTR)e->body, ctlen,
	    buf, &outlen));
	if (me->rv != CKR_OK) {
		ret = mech_open_status(me->rv);
		goto out;
	}
	if (outlen != ctlen)
		goto out;

	/* success */
	*len = outlen;
	ret = KEYRING_OK;
out:
	/* A refused tag leaves the message operation usable. */
	msg_done(ms, 1, ret == KEYRING_E_TOKEN);
	return ret;
}

