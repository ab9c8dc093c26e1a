/*
 * mech: the mechanism table, the dispatch of a seal or an open to a row,
 * and the RSA-OAEP rows (contracts in mech.h, layouts in envelope.h; the
 * AES-GCM rows are in mech_gcm.c, the key-wrap rows in mech_kwp.c).
 *
 * Every operation sizes its output up front and makes one call, so no
 * operation is left active on the session (a CKR_BUFFER_TOO_SMALL would
 * leave it so).
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
_Static_assert(ENVELOPE_FIXED_LEN + ENVELOPE_IV_MAX + KEYRING_MAX_PLAINTEXT +
    MECH_GCM_TAG_LEN <= KEYRING_MAX_CIPHERTEXT, "GCM envelope fits");
_Static_assert(MECH_NROWS <= 8 * sizeof(unsigned), "row bits");

static int seal_rsa(struct mech_sess *, const struct mech_def *,
    const struct mech_key *, struct envelope *, const uint8_t *, size_t,
    uint8_t *, size_t, size_t *, struct mech_err *);
static int open_rsa(struct mech_sess *, const struct mech_def *,
    const struct mech_key *, const struct envelope *, uint8_t *, size_t,
    size_t *, struct mech_err *);

#define GCM_OPENS (MECH_ENV_BIT(ENVELOPE_MECH_AES_GCM) | \
		   MECH_ENV_BIT(ENVELOPE_MECH_AES_GCM_TIV))

const struct mech_def mech_table[MECH_NROWS] = {
	[MECH_GCM] = {
		"aes-gcm", ENVELOPE_MECH_AES_GCM, "aes-gcm", "AES-GCM",
		CKM_AES_GCM, "CKM_AES_GCM",
		CKF_ENCRYPT | CKF_DECRYPT,
		{ CKA_ENCRYPT, CKA_DECRYPT }, { "CKA_ENCRYPT", "CKA_DECRYPT" },
		GCM_OPENS, 0, mech_gcm_seal, mech_gcm_open,
	},
	[MECH_GCM_MSG] = {
		"aes-gcm/message", ENVELOPE_MECH_AES_GCM_TIV, "aes-gcm",
		"AES-GCM (token IV, PKCS#11 3.0 message API)",
		CKM_AES_GCM, "CKM_AES_GCM",
		CKF_ENCRYPT | CKF_DECRYPT,
		{ CKA_ENCRYPT, CKA_DECRYPT }, { "CKA_ENCRYPT", "CKA_DECRYPT" },
		GCM_OPENS, MECH_F_V3, mech_gcm_msg_seal, mech_gcm_msg_open,
	},
	[MECH_GCM_TIV] = {
		"aes-gcm/token-iv", ENVELOPE_MECH_AES_GCM_TIV, "aes-gcm",
		"AES-GCM (token IV)",
		CKM_AES_GCM, "CKM_AES_GCM",
		CKF_ENCRYPT | CKF_DECRYPT,
		{ CKA_ENCRYPT, CKA_DECRYPT }, { "CKA_ENCRYPT", "CKA_DECRYPT" },
		GCM_OPENS, 0, mech_gcm_tiv_seal, mech_gcm_open,
	},
	[MECH_KWP] = {
		"aes-kwp", ENVELOPE_MECH_AES_KWP, "aes-kwp", "AES-KWP",
		CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD",
		CKF_WRAP | CKF_UNWRAP,
		{ CKA_WRAP, CKA_UNWRAP }, { "CKA_WRAP", "CKA_UNWRAP" },
		MECH_ENV_BIT(ENVELOPE_MECH_AES_KWP), MECH_F_OBJECTS,
		mech_kwp_seal, mech_kwp_open,
	},
	[MECH_KWP_ECB] = {
		"aes-kwp/ecb", ENVELOPE_MECH_AES_KWP, "aes-kwp",
		"AES-KWP (computed with AES-ECB)",
		CKM_AES_ECB, "CKM_AES_ECB",
		CKF_ENCRYPT | CKF_DECRYPT,
		{ CKA_ENCRYPT, CKA_DECRYPT }, { "CKA_ENCRYPT", "CKA_DECRYPT" },
		MECH_ENV_BIT(ENVELOPE_MECH_AES_KWP), 0,
		mech_kwp_ecb_seal, mech_kwp_ecb_open,
	},
	[MECH_OAEP_SHA256] = {
		"rsa-oaep-sha256", ENVELOPE_MECH_RSA_OAEP_SHA256, "rsa-oaep",
		"RSA-OAEP-SHA256",
		CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP",
		CKF_ENCRYPT | CKF_DECRYPT,
		{ CKA_DECRYPT, CKA_ENCRYPT },
		{ "CKA_DECRYPT of the private key",
		  "CKA_ENCRYPT of the public key" },
		MECH_ENV_BIT(ENVELOPE_MECH_RSA_OAEP_SHA256), MECH_F_RSA,
		seal_rsa, open_rsa,
	},
	[MECH_OAEP_SHA1] = {
		"rsa-oaep-sha1", ENVELOPE_MECH_RSA_OAEP_SHA1, "rsa-oaep",
		"RSA-OAEP-SHA1",
		CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP",
		CKF_ENCRYPT | CKF_DECRYPT,
		{ CKA_DECRYPT, CKA_ENCRYPT },
		{ "CKA_DECRYPT of the private key",
		  "CKA_ENCRYPT of the public key" },
		MECH_ENV_BIT(ENVELOPE_MECH_RSA_OAEP_SHA1), MECH_F_RSA,
		seal_rsa, open_rsa,
	},
};

/* Envelope bytes: names never change (they are logged and documented). */
static const struct {
	uint8_t env;
	const char *name;
	int rsa;
} env_names[] = {
	{ ENVELOPE_MECH_AES_GCM, "aes-gcm", 0 },
	{ ENVELOPE_MECH_AES_KWP, "aes-kwp", 0 },
	{ ENVELOPE_MECH_RSA_OAEP_SHA256, "rsa-oaep-sha256", 1 },
	{ ENVELOPE_MECH_RSA_OAEP_SHA1, "rsa-oaep-sha1", 1 },
	{ ENVELOPE_MECH_AES_GCM_TIV, "aes-gcm-token-iv", 0 },
};

int
mech_env_known(uint8_t env)
{
	size_t i;

	for (i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
		if (env_names[i].env == env)
			return 1;
	return 0;
}

int
mech_env_is_rsa(uint8_t env)
{
	size_t i;

	for (i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
		if (env_names[i].env == env)
			return env_names[i].rsa;
	return 0;
}

const char *
mech_env_name(uint8_t env)
{
	size_t i;

	for (i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
		if (env_names[i].env == env)
			return env_names[i].name;
	return "unknown";
}

int
mech_cfg_valid(const char *name)
{
	size_t i;

	if (name == NULL || strcmp(name, "auto") == 0)
		return 1;
	for (i = 0; i < MECH_NROWS; i++)
		if (strcmp(name, mech_table[i].cfg) == 0)
			return 1;
	return 0;
}

const char *
mech_cfg_list(void)
{
	return "auto, aes-gcm, aes-kwp or rsa-oaep";
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
	case CKR_SESSION_READ_ONLY:
	case CKR_DATA_LEN_RANGE:
		return 1;
	}
	return 0;
}

CK_RV
mech_note(struct mech_err *me, const char *call, CK_RV rv)
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
	struct mech_err me = { CKR_OK, NULL, 0, "" };

	me.t = token_now_ns();
	return me;
}

void
mech_sess_init(struct mech_sess *ms, CK_FUNCTION_LIST *fn,
    P11V3_FUNCTION_LIST *fn3, CK_SESSION_HANDLE s, int keep)
{
	ms->fn = fn;
	ms->fn3 = fn3;
	ms->s = s;
	ms->msg_enc = ms->msg_dec = CK_INVALID_HANDLE;
	ms->keep = keep;
}

void
mech_sess_idle(struct mech_sess *ms)
{
	if (ms->fn3 == NULL)
		return;
	if (ms->msg_enc != CK_INVALID_HANDLE)
		(void)ms->fn3->C_MessageEncryptFinal(ms->s);
	if (ms->msg_dec != CK_INVALID_HANDLE)
		(void)ms->fn3->C_MessageDecryptFinal(ms->s);
	ms->msg_enc = ms->msg_dec = CK_INVALID_HANDLE;
}

static size_t
oaep_hash_len(uint8_t env)
{
	return env == ENVELOPE_MECH_RSA_OAEP_SHA256 ? SHA256_LEN : SHA1_LEN;
}

size_t
mech_max_plaintext(const struct mech_def *d, const struct mech_key *k)
{
	size_t h, cap;

	if (!(d->flags & MECH_F_RSA))
		return KEYRING_MAX_PLAINTEXT;
	/* RFC 8017 7.1.1: mLen <= k - 2 hLen - 2. */
	h = oaep_hash_len(d->env);
	if (k->rsa_len > MECH_RSA_MAX_BYTES ||
	    k->rsa_len < 2 * h + 2 + ENVELOPE_FRAME_HDR)
		return 0;
	cap = k->rsa_len - 2 * h - 2 - ENVELOPE_FRAME_HDR;
	return cap < KEYRING_MAX_PLAINTEXT ? cap : KEYRING_MAX_PLAINTEXT;
}

size_t
mech_body_len(const struct mech_def *d, const struct mech_key *k,
    size_t ptlen)
{
	if (ptlen == 0 || ptlen > mech_max_plaintext(d, k))
		return 0;
	switch (d->env) {
	case ENVELOPE_MECH_AES_GCM:
	case ENVELOPE_MECH_AES_GCM_TIV:
		return ptlen + MECH_GCM_TAG_LEN;
	case ENVELOPE_MECH_AES_KWP:
		return mech_kwp_len(ENVELOPE_FRAME_HDR + ptlen);
	default:
		return k->rsa_len;
	}
}

/* OAEP with the mechanism's hash for both OAEP and MGF1, empty label. */
static void
oaep_params(CK_RSA_PKCS_OAEP_PARAMS *p, CK_MECHANISM *m, uint8_t env)
{
	memset(p, 0, sizeof(*p));
	if (env == ENVELOPE_MECH_RSA_OAEP_SHA256) {
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
seal_rsa(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t want, size_t *bodylen,
    struct mech_err *me)
{
	uint8_t frame[FRAME_MAX];
	CK_RSA_PKCS_OAEP_PARAMS p;
	CK_MECHANISM m;
	CK_ULONG outlen = want;
	size_t framelen;
	int ret = KEYRING_E_TOKEN;

	e->iv_len = 0;
	if ((framelen = envelope_frame(e, pt, ptlen, frame,
	    sizeof(frame))) == 0)
		return KEYRING_E_INVALID;
	oaep_params(&p, &m, d->env);
	if (mech_note(me, "C_EncryptInit", ms->fn->C_EncryptInit(ms->s, &m,
	    k->pub)) != CKR_OK)
		goto out;
	(void)mech_note(me, "C_Encrypt", ms->fn->C_Encrypt(ms->s, frame,
	    framelen, body, &outlen));
	if (me->rv != CKR_OK || outlen != want)
		goto out;

	/* success */
	*bodylen = want;
	ret = KEYRING_OK;
out:
	OPENSSL_cleanse(frame, sizeof(frame));
	return ret;
}

int
mech_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const uint8_t keyref[ENVELOPE_KEYREF_LEN],
    const uint8_t *pt, size_t ptlen, uint8_t *out, size_t cap,
    size_t *outlen, struct mech_err *mep)
{
	uint8_t body[KEYRING_MAX_CIPHERTEXT];
	struct envelope e;
	struct mech_err me = mech_err_start();
	size_t want, blen = 0, hlen;
	int ret = KEYRING_E_TOOBIG;

	*outlen = 0;
	if (pt == NULL || ptlen == 0) {
		ret = KEYRING_E_INVALID;
		goto out;
	}
	if ((want = mech_body_len(d, k, ptlen)) == 0 ||
	    want > sizeof(body) || cap < ENVELOPE_FIXED_LEN ||
	    cap - ENVELOPE_FIXED_LEN < want)
		goto out;
	memset(&e, 0, sizeof(e));
	e.format = ENVELOPE_FORMAT_V1;
	e.mech = d->env;
	memcpy(e.keyref, keyref, sizeof(e.keyref));
	if (!(d->flags & MECH_F_V3))
		mech_sess_idle(ms);
	if ((ret = d->seal(ms, d, k, &e, pt, ptlen, body, want, &blen,
	    &me)) != KEYRING_OK)
		goto out;
	ret = KEYRING_E_TOOBIG;
	if ((hlen = envelope_encode_header(&e, out, cap)) == 0 ||
	    cap - hlen < blen)
		goto out;
	memcpy(out + hlen, body, blen);

	/* success */
	*outlen = hlen + blen;
	ret = KEYRING_OK;
out:
	OPENSSL_cleanse(body, sizeof(body));
	if (mep != NULL)
		*mep = me;
	return ret;
}

int
mech_open_status(CK_RV rv)
{
	return token_rv_is_fault(rv) ? KEYRING_E_TOKEN : KEYRING_E_AUTH;
}

static int
open_rsa(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me)
{
	CK_RSA_PKCS_OAEP_PARAMS p;
	CK_MECHANISM m;
	CK_ULONG outlen = cap;

	if (e->iv_len != 0 || k->rsa_len == 0 || e->body_len != k->rsa_len ||
	    cap < k->rsa_len)
		return KEYRING_E_INVALID;
	oaep_params(&p, &m, d->env);
	if (mech_note(me, "C_DecryptInit", ms->fn->C_DecryptInit(ms->s, &m,
	    k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	(void)mech_note(me, "C_Decrypt", ms->fn->C_Decrypt(ms->s,
	    (CK_BYTE_PTR)e->body, e->body_len, buf, &outlen));
	if (me->rv != CKR_OK)
		return mech_open_status(me->rv);
	if (outlen > k->rsa_len)
		return KEYRING_E_TOKEN;
	*len = outlen;
	return KEYRING_OK;
}

int
mech_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *pt,
    size_t ptcap, size_t *ptlen, struct mech_err *mep)
{
	uint8_t buf[ENVELOPE_MAX_LEN];
	const uint8_t *p = buf;
	size_t len = 0;
	struct mech_err me = mech_err_start();
	int ret;

	*ptlen = 0;
	if (!(d->opens & MECH_ENV_BIT(e->mech))) {
		ret = KEYRING_E_INVALID;
		goto out;
	}
	if (!(d->flags & MECH_F_V3))
		mech_sess_idle(ms);
	if ((ret = d->open(ms, d, k, e, buf, sizeof(buf), &len,
	    &me)) != KEYRING_OK)
		goto out;
	/*
	 * The frame's digest binds the header; a frame that fails the check
	 * opened under the right key but for another header (or is forged):
	 * "does not open", like a bad GCM tag.
	 */
	if (!(d->opens & GCM_OPENS) &&
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
