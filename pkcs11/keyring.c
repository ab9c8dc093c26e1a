/*
 * keyring: the configured KEKs, their key_ids, and seal/open inside the
 * token (contracts in keyring.h; envelope layout in envelope.h).
 *
 * Limit: every key lives on the token of the first key, in one module. The
 * keyring holds one login session on that token for its whole life; worker
 * sessions ride on that login. Several tokens or modules per keyring would
 * need one login session per token and are not needed yet.
 *
 * Thread model: after keyring_load() the keyring is read-only and shared by
 * all workers; each worker owns one session and is used by one thread at a
 * time. Workers must be freed before their keyring.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/envelope.h"
#include "pkcs11/keyid.h"
#include "pkcs11/keyring.h"
#include "pkcs11/token.h"

#define GCM_IV_LEN	12
#define GCM_TAG_LEN	16
#define KEK_LEN		32	/* AES-256 */
#define ATTR_MAX	256	/* CKA_ID / CKA_LABEL bytes we accept */

_Static_assert(2 * ENVELOPE_KEYREF_LEN + 1 <= KEYRING_KEY_ID_MAX, "key_id");
_Static_assert(ENVELOPE_FIXED_LEN + GCM_IV_LEN + KEYRING_MAX_PLAINTEXT +
    GCM_TAG_LEN <= KEYRING_MAX_CIPHERTEXT, "envelope fits the apiserver");
_Static_assert(KEYRING_MAX_CIPHERTEXT <= ENVELOPE_MAX_LEN, "envelope max");

struct kr_key {
	CK_OBJECT_HANDLE token_obj;	/* the key on the token */
	/*
	 * What seal/open use: a session copy of the key made on the login
	 * session (same value, still sensitive and non-extractable, inside
	 * the token; SoftHSM re-reads a token key's file on every use, a
	 * session copy is 2-3x faster), or token_obj when the token refuses
	 * copies (CKA_COPYABLE=false). Valid in every session of ours.
	 */
	CK_OBJECT_HANDLE obj;
	uint8_t keyref[ENVELOPE_KEYREF_LEN];
	char key_id[KEYRING_KEY_ID_MAX];
	char desc[128];			/* "token 'kms' object 'kek1'" */
	char uri[TOKEN_URI_TEXT_MAX];	/* redacted, for messages */
};

struct keyring {
	struct token *tok;		/* owns module, login session */
	size_t nkeys;
	struct kr_key keys[KEYRING_MAX_KEYS];	/* [0] seals */
};

struct keyring_worker {
	struct keyring *kr;		/* borrowed; outlives the worker */
	CK_SESSION_HANDLE s;
};

const char *
keyring_strerror(int status)
{
	switch (status) {
	case KEYRING_OK:
		return "success";
	case KEYRING_E_INVALID:
		return "ciphertext is malformed";
	case KEYRING_E_UNKNOWN_KEY:
		return "ciphertext names a key that is not configured";
	case KEYRING_E_AUTH:
		return "token refused to open the ciphertext";
	case KEYRING_E_TOKEN:
		return "token or session failure";
	case KEYRING_E_NOMEM:
		return "out of memory";
	case KEYRING_E_TOOBIG:
		return "plaintext too large";
	case KEYRING_E_CONFIG:
		return "configuration error";
	case KEYRING_E_PIN:
		return "PIN refused or unreadable";
	}
	return "unknown keyring status";
}

static void
gcm_mech(CK_GCM_PARAMS *gcm, CK_MECHANISM *mech, uint8_t *iv, uint8_t *aad,
    size_t aadlen)
{
	memset(gcm, 0, sizeof(*gcm));
	gcm->pIv = iv;
	gcm->ulIvLen = GCM_IV_LEN;
	gcm->ulIvBits = 8 * GCM_IV_LEN;
	gcm->pAAD = aad;
	gcm->ulAADLen = aadlen;
	gcm->ulTagBits = 8 * GCM_TAG_LEN;
	mech->mechanism = CKM_AES_GCM;
	mech->pParameter = gcm;
	mech->ulParameterLen = sizeof(*gcm);
}

/* Reads a CK_BBOOL or CK_ULONG-sized attribute. */
static CK_RV
get_fixed(struct token *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
    void *val, CK_ULONG len)
{
	CK_ATTRIBUTE a = { type, val, len };
	CK_RV rv;

	rv = t->fn->C_GetAttributeValue(t->session, h, &a, 1);
	if (rv == CKR_OK && a.ulValueLen != len)
		rv = CKR_ATTRIBUTE_VALUE_INVALID;
	return rv;
}

/*
 * Reads a byte-string attribute (at most ATTR_MAX bytes). An attribute the
 * key does not have reads as empty, so it still hashes deterministically.
 */
static CK_RV
get_bytes(struct token *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
    uint8_t *buf, size_t *len)
{
	CK_ATTRIBUTE a = { type, NULL, 0 };
	CK_RV rv;

	*len = 0;
	rv = t->fn->C_GetAttributeValue(t->session, h, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID)
		return CKR_OK;
	if (rv != CKR_OK)
		return rv;
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return CKR_OK;
	if (a.ulValueLen > ATTR_MAX)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if (a.ulValueLen == 0)
		return CKR_OK;
	a.pValue = buf;
	rv = t->fn->C_GetAttributeValue(t->session, h, &a, 1);
	if (rv != CKR_OK)
		return rv;
	*len = a.ulValueLen;
	return CKR_OK;
}

static int
rv_status(CK_RV rv)
{
	return token_rv_is_fault(rv) ? KEYRING_E_TOKEN : KEYRING_E_CONFIG;
}

/*
 * The token must do AES-GCM encrypt and decrypt itself. Both the mechanism
 * list and the mechanism info are asked: SoftHSM with "slots.mechanisms"
 * drops GCM from the list but still describes it in C_GetMechanismInfo.
 * The load self-test (selftest_key) has the last word.
 */
static int
check_mechanism(struct token *t, char *err, size_t errlen)
{
	CK_MECHANISM_TYPE *list = NULL, *tmp;
	CK_MECHANISM_INFO mi;
	CK_ULONG n = 0, i;
	CK_RV rv;
	int tries, found = 0, ret = KEYRING_E_TOKEN;
	const char *what = "C_GetMechanismList";

	for (tries = 0; tries < 4; tries++) {
		if ((rv = t->fn->C_GetMechanismList(t->slot, NULL,
		    &n)) != CKR_OK || n == 0)
			break;
		if ((tmp = realloc(list, n * sizeof(*list))) == NULL) {
			token_err(err, errlen, "out of memory");
			ret = KEYRING_E_NOMEM;
			goto out;
		}
		list = tmp;
		rv = t->fn->C_GetMechanismList(t->slot, list, &n);
		if (rv != CKR_BUFFER_TOO_SMALL)
			break;
	}
	if (rv != CKR_OK)
		goto rv_fail;
	for (i = 0; list != NULL && i < n; i++)
		if (list[i] == CKM_AES_GCM)
			found = 1;

	/* Zeroed first: SoftHSM ORs flags into what it is given. */
	memset(&mi, 0, sizeof(mi));
	what = "C_GetMechanismInfo(CKM_AES_GCM)";
	rv = t->fn->C_GetMechanismInfo(t->slot, CKM_AES_GCM, &mi);
	if (rv == CKR_MECHANISM_INVALID)
		found = 0;
	else if (rv != CKR_OK)
		goto rv_fail;
	if (!found || (mi.flags & (CKF_ENCRYPT | CKF_DECRYPT)) !=
	    (CKF_ENCRYPT | CKF_DECRYPT)) {
		ret = KEYRING_E_CONFIG;
		token_err(err, errlen, "token '%s' does not offer CKM_AES_GCM "
		    "for encrypt and decrypt; p11kms needs AES-GCM inside the "
		    "token", t->label);
		goto out;
	}

	/* success */
	ret = KEYRING_OK;
	goto out;
rv_fail:
	token_err(err, errlen, "token '%s': %s: %s", t->label, what,
	    token_rv_name(rv));
out:
	free(list);
	return ret;
}

/*
 * Refuses a key that is not an AES-256 secret key kept inside the token
 * for encrypt and decrypt. The messages say how to make a fit key.
 */
static int
check_key(struct token *t, const struct kr_key *k, char *err, size_t errlen)
{
	static const struct {
		CK_ATTRIBUTE_TYPE type;
		const char *name;
		CK_BBOOL want;
		const char *msg;
	} flags[] = {
		{ CKA_SENSITIVE, "CKA_SENSITIVE", CK_TRUE,
		    "is not sensitive (CKA_SENSITIVE=false): its value could "
		    "be read out; generate it with CKA_SENSITIVE=true" },
		{ CKA_EXTRACTABLE, "CKA_EXTRACTABLE", CK_FALSE,
		    "is extractable (CKA_EXTRACTABLE=true): a KEK must never "
		    "leave the token; generate it with CKA_EXTRACTABLE=false" },
		{ CKA_ENCRYPT, "CKA_ENCRYPT", CK_TRUE,
		    "cannot encrypt (CKA_ENCRYPT=false); generate it with "
		    "CKA_ENCRYPT=true" },
		{ CKA_DECRYPT, "CKA_DECRYPT", CK_TRUE,
		    "cannot decrypt (CKA_DECRYPT=false); generate it with "
		    "CKA_DECRYPT=true" },
	};
	CK_OBJECT_CLASS cls;
	CK_KEY_TYPE type;
	CK_ULONG len;
	CK_BBOOL b;
	CK_RV rv;
	size_t i;
	const char *what = "CKA_CLASS";

	if ((rv = get_fixed(t, k->token_obj, CKA_CLASS, &cls,
	    sizeof(cls))) != CKR_OK)
		goto rv_fail;
	if (cls != CKO_SECRET_KEY) {
		token_err(err, errlen, "key %s is not a secret key", k->uri);
		return KEYRING_E_CONFIG;
	}
	what = "CKA_KEY_TYPE";
	if ((rv = get_fixed(t, k->token_obj, CKA_KEY_TYPE, &type,
	    sizeof(type))) != CKR_OK)
		goto rv_fail;
	if (type != CKK_AES) {
		token_err(err, errlen, "key %s is not an AES key (CKA_KEY_TYPE="
		    "0x%lx); p11kms needs an AES-256 key", k->uri,
		    (unsigned long)type);
		return KEYRING_E_CONFIG;
	}
	what = "CKA_VALUE_LEN";
	if ((rv = get_fixed(t, k->token_obj, CKA_VALUE_LEN, &len,
	    sizeof(len))) != CKR_OK)
		goto rv_fail;
	if (len != KEK_LEN) {
		token_err(err, errlen, "key %s is AES-%lu (CKA_VALUE_LEN=%lu); "
		    "p11kms requires AES-256 (CKA_VALUE_LEN=32)", k->uri,
		    8 * (unsigned long)len, (unsigned long)len);
		return KEYRING_E_CONFIG;
	}
	for (i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		if ((rv = get_fixed(t, k->token_obj, flags[i].type, &b,
		    sizeof(b))) != CKR_OK) {
			what = flags[i].name;
			goto rv_fail;
		}
		if ((b != CK_FALSE) != (flags[i].want != CK_FALSE)) {
			token_err(err, errlen, "key %s %s", k->uri,
			    flags[i].msg);
			return KEYRING_E_CONFIG;
		}
	}
	return KEYRING_OK;
rv_fail:
	token_err(err, errlen, "key %s: cannot read %s: %s", k->uri, what,
	    token_rv_name(rv));
	return rv_status(rv);
}

/* Derives keyref and key_id from the key's CKA_ID, CKA_LABEL and KCV. */
static int
derive_key_id(struct token *t, struct kr_key *k, char *err, size_t errlen)
{
	uint8_t id[ATTR_MAX], label[ATTR_MAX], kcv[KEYID_KCV_MAX];
	uint8_t fp[KEYID_FP_LEN];
	char plabel[64], hex[2 * 8 + 1];
	size_t idlen, labellen, kcvlen, i;
	CK_RV rv;
	const char *what = "CKA_ID";

	if ((rv = get_bytes(t, k->token_obj, CKA_ID, id, &idlen)) != CKR_OK)
		goto rv_fail;
	what = "CKA_LABEL";
	if ((rv = get_bytes(t, k->token_obj, CKA_LABEL, label,
	    &labellen)) != CKR_OK)
		goto rv_fail;
	what = "its check value";
	if ((rv = keyid_check_value(t->fn, t->session, k->token_obj,
	    KEYID_KCV_AUTO, kcv, &kcvlen)) != CKR_OK)
		goto rv_fail;
	if (keyid_fingerprint(id, idlen, label, labellen, kcv, kcvlen,
	    fp) != 0) {
		token_err(err, errlen, "SHA-256 failed");
		return KEYRING_E_NOMEM;
	}
	memcpy(k->keyref, fp, sizeof(k->keyref));
	envelope_keyref_hex(k->keyref, k->key_id);

	if (labellen > 0) {
		token_printable(label, labellen, plabel, sizeof(plabel));
		snprintf(k->desc, sizeof(k->desc), "token '%s' object '%s'",
		    t->label, plabel);
	} else {
		for (i = 0; i < idlen && i < 8; i++)
			snprintf(hex + 2 * i, 3, "%02x", id[i]);
		hex[2 * i] = '\0';
		snprintf(k->desc, sizeof(k->desc), "token '%s' id %s%s",
		    t->label, hex, idlen > 8 ? "..." : "");
	}
	return KEYRING_OK;
rv_fail:
	token_err(err, errlen, "key %s: cannot read %s: %s", k->uri, what,
	    token_rv_name(rv));
	return rv_status(rv);
}

/*
 * Makes the session copy described at struct kr_key. Any refusal or doubt
 * leaves k->obj = k->token_obj: the copy is an optimisation only.
 */
static void
copy_key(struct token *t, struct kr_key *k)
{
	CK_BBOOL no = CK_FALSE, sens = CK_FALSE, extr = CK_TRUE, tok = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = { { CKA_TOKEN, &no, sizeof(no) } };
	CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;

	k->obj = k->token_obj;
	if (t->fn->C_CopyObject(t->session, k->token_obj, tmpl, 1,
	    &copy) != CKR_OK || copy == CK_INVALID_HANDLE)
		return;
	/* Trust but verify: the copy must be exactly as locked in. */
	if (get_fixed(t, copy, CKA_SENSITIVE, &sens, sizeof(sens)) ||
	    get_fixed(t, copy, CKA_EXTRACTABLE, &extr, sizeof(extr)) ||
	    get_fixed(t, copy, CKA_TOKEN, &tok, sizeof(tok)) ||
	    sens != CK_TRUE || extr != CK_FALSE || tok != CK_FALSE) {
		(void)t->fn->C_DestroyObject(t->session, copy);
		return;
	}
	k->obj = copy;
}

/*
 * Seals and opens a random canary with k->obj, as seal/open will. Catches
 * what attributes cannot show: a token that lists GCM but refuses it, a key
 * whose CKA_ALLOWED_MECHANISMS leaves GCM out, a session copy that
 * misbehaves.
 */
static int
selftest_key(struct token *t, const struct kr_key *k, char *err,
    size_t errlen)
{
	static const char label[] = "p11kms load self-test";
	CK_FUNCTION_LIST *fn = t->fn;
	uint8_t iv[GCM_IV_LEN], aad[sizeof(label) - 1], pt[32];
	uint8_t ct[sizeof(pt) + GCM_TAG_LEN], back[sizeof(ct)];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM mech;
	CK_ULONG len;
	CK_RV rv;
	const char *what = "C_EncryptInit";
	int ret = KEYRING_E_TOKEN;

	memcpy(aad, label, sizeof(aad));
	if (RAND_bytes(iv, sizeof(iv)) != 1 ||
	    RAND_bytes(pt, sizeof(pt)) != 1) {
		token_err(err, errlen, "RAND_bytes failed");
		goto out;
	}
	gcm_mech(&gcm, &mech, iv, aad, sizeof(aad));
	if ((rv = fn->C_EncryptInit(t->session, &mech, k->obj)) != CKR_OK)
		goto rv_fail;
	what = "C_Encrypt";
	len = sizeof(ct);
	if ((rv = fn->C_Encrypt(t->session, pt, sizeof(pt), ct,
	    &len)) != CKR_OK)
		goto rv_fail;
	what = "C_DecryptInit";
	if ((rv = fn->C_DecryptInit(t->session, &mech, k->obj)) != CKR_OK)
		goto rv_fail;
	what = "C_Decrypt";
	len = sizeof(back);
	if ((rv = fn->C_Decrypt(t->session, ct, sizeof(ct), back,
	    &len)) != CKR_OK)
		goto rv_fail;
	if (len != sizeof(pt) || CRYPTO_memcmp(back, pt, sizeof(pt)) != 0) {
		token_err(err, errlen, "key %s: AES-GCM self-test gave wrong "
		    "plaintext back", k->uri);
		goto out;
	}

	/* success */
	ret = KEYRING_OK;
	goto out;
rv_fail:
	switch (rv) {
	case CKR_MECHANISM_INVALID:
	case CKR_MECHANISM_PARAM_INVALID:
	case CKR_KEY_FUNCTION_NOT_PERMITTED:
	case CKR_KEY_TYPE_INCONSISTENT:
		ret = KEYRING_E_CONFIG;
		break;
	}
	token_err(err, errlen, "key %s: AES-GCM self-test in token '%s' "
	    "failed: %s: %s", k->uri, t->label, what, token_rv_name(rv));
out:
	OPENSSL_cleanse(pt, sizeof(pt));
	OPENSSL_cleanse(back, sizeof(back));
	return ret;
}

int
keyring_load(const struct keyring_config *cfg, struct keyring **out,
    char *err, size_t errlen)
{
	struct keyring *kr = NULL;
	P11KitUri *uris[KEYRING_MAX_KEYS] = { NULL };
	const char *pin_source = NULL, *m0, *mi;
	struct kr_key *k;
	size_t i, j, n;
	int ret = KEYRING_E_CONFIG;

	*out = NULL;
	token_err(err, errlen, "%s", "");
	if (cfg == NULL || cfg->key_uris == NULL || cfg->nkeys == 0 ||
	    cfg->nkeys > KEYRING_MAX_KEYS) {
		token_err(err, errlen, "between 1 and %d key URIs are needed",
		    KEYRING_MAX_KEYS);
		goto out;
	}
	n = cfg->nkeys;
	if ((kr = calloc(1, sizeof(*kr))) == NULL) {
		ret = KEYRING_E_NOMEM;
		token_err(err, errlen, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		k = &kr->keys[i];
		k->token_obj = k->obj = CK_INVALID_HANDLE;
		token_uri_redact(cfg->key_uris[i], k->uri, sizeof(k->uri));
		if ((ret = token_uri_parse(cfg->key_uris[i], &uris[i], err,
		    errlen)) != 0)
			goto out;
		if (pin_source == NULL)
			pin_source = p11_kit_uri_get_pin_source(uris[i]);
	}
	ret = KEYRING_E_CONFIG;
	/* Without cfg->module the first URI picks it; the rest must agree. */
	for (i = 1; cfg->module == NULL && i < n; i++) {
		m0 = p11_kit_uri_get_module_path(uris[0]);
		mi = p11_kit_uri_get_module_path(uris[i]);
		if (mi != NULL && (m0 == NULL || strcmp(m0, mi) != 0))
			goto other_module;
		m0 = p11_kit_uri_get_module_name(uris[0]);
		mi = p11_kit_uri_get_module_name(uris[i]);
		if (mi != NULL && (m0 == NULL || strcmp(m0, mi) != 0))
			goto other_module;
	}

	if ((ret = token_open(cfg->module, uris[0], kr->keys[0].uri, &kr->tok,
	    err, errlen)) != 0)
		goto out;
	for (i = 1; i < n; i++) {
		if (!p11_kit_uri_match_token_info(uris[i], &kr->tok->info)) {
			ret = KEYRING_E_CONFIG;
			token_err(err, errlen, "key %s is not on token '%s' of "
			    "the first key %s; all keys must be on one token",
			    kr->keys[i].uri, kr->tok->label, kr->keys[0].uri);
			goto out;
		}
	}
	if ((ret = check_mechanism(kr->tok, err, errlen)) != 0)
		goto out;
	if ((ret = token_login(kr->tok, cfg->pin_file, pin_source, err,
	    errlen)) != 0)
		goto out;

	for (i = 0; i < n; i++) {
		k = &kr->keys[i];
		if ((ret = token_find_key(kr->tok, uris[i], k->uri,
		    &k->token_obj, err, errlen)) != 0 ||
		    (ret = check_key(kr->tok, k, err, errlen)) != 0 ||
		    (ret = derive_key_id(kr->tok, k, err, errlen)) != 0)
			goto out;
		for (j = 0; j < i; j++) {
			if (memcmp(kr->keys[j].keyref, k->keyref,
			    sizeof(k->keyref)) == 0) {
				ret = KEYRING_E_CONFIG;
				token_err(err, errlen, "keys %s and %s are the "
				    "same key (key_id %s); list each key once",
				    kr->keys[j].uri, k->uri, k->key_id);
				goto out;
			}
		}
	}
	for (i = 0; i < n; i++) {
		k = &kr->keys[i];
		copy_key(kr->tok, k);
		if (k->obj != k->token_obj &&
		    selftest_key(kr->tok, k, err, errlen) != 0) {
			/* The copy is only an optimisation: drop it. */
			(void)kr->tok->fn->C_DestroyObject(kr->tok->session,
			    k->obj);
			k->obj = k->token_obj;
		}
		if (k->obj == k->token_obj &&
		    (ret = selftest_key(kr->tok, k, err, errlen)) != 0)
			goto out;
	}
	kr->nkeys = n;

	/* success */
	*out = kr;
	kr = NULL;
	ret = KEYRING_OK;
	token_err(err, errlen, "%s", "");
	goto out;
other_module:
	token_err(err, errlen, "key %s names another module than the first "
	    "key %s; all keys must be in one module", kr->keys[i].uri,
	    kr->keys[0].uri);
out:
	for (i = 0; i < KEYRING_MAX_KEYS; i++)
		if (uris[i] != NULL)
			p11_kit_uri_free(uris[i]);
	keyring_free(kr);
	return ret;
}

void
keyring_free(struct keyring *kr)
{
	if (kr == NULL)
		return;
	/*
	 * Closing the login session destroys the session copies of the
	 * keys; the module logs out when our process's last session on the
	 * token closes (see token_close() for why there is no C_Logout).
	 */
	token_close(kr->tok);
	OPENSSL_cleanse(kr, sizeof(*kr));
	free(kr);
}

const char *
keyring_primary_key_id(const struct keyring *kr)
{
	return kr->keys[0].key_id;
}

size_t
keyring_nkeys(const struct keyring *kr)
{
	return kr->nkeys;
}

const char *
keyring_key_id(const struct keyring *kr, size_t i)
{
	return i < kr->nkeys ? kr->keys[i].key_id : NULL;
}

const char *
keyring_key_desc(const struct keyring *kr, size_t i)
{
	return i < kr->nkeys ? kr->keys[i].desc : NULL;
}

/*
 * The token-wide session limit as the token reports it. The keyring itself
 * holds one session, and other applications may hold more: callers sizing a
 * pool should leave room.
 */
unsigned long
keyring_max_sessions(const struct keyring *kr)
{
	CK_ULONG m = kr->tok->info.ulMaxSessionCount;

	if (m == CK_EFFECTIVELY_INFINITE || m == CK_UNAVAILABLE_INFORMATION)
		return 0;
	return m;
}

int
keyring_worker_new(struct keyring *kr, struct keyring_worker **out)
{
	struct keyring_worker *w;
	CK_RV rv;

	*out = NULL;
	if ((w = calloc(1, sizeof(*w))) == NULL)
		return KEYRING_E_NOMEM;
	w->kr = kr;
	/* Read-only is enough for encrypt/decrypt; login is app-wide. */
	rv = kr->tok->fn->C_OpenSession(kr->tok->slot, CKF_SERIAL_SESSION,
	    NULL, NULL, &w->s);
	if (rv != CKR_OK) {
		free(w);
		return rv == CKR_HOST_MEMORY ? KEYRING_E_NOMEM :
		    KEYRING_E_TOKEN;
	}

	/* success */
	*out = w;
	return KEYRING_OK;
}

void
keyring_worker_free(struct keyring_worker *w)
{
	if (w == NULL)
		return;
	(void)w->kr->tok->fn->C_CloseSession(w->s);
	free(w);
}

int
keyring_seal(struct keyring_worker *w, const uint8_t *pt, size_t ptlen,
    uint8_t *ct, size_t ctcap, size_t *ctlen, char *key_id)
{
	CK_FUNCTION_LIST *fn = w->kr->tok->fn;
	const struct kr_key *k = &w->kr->keys[0];
	struct envelope e;
	uint8_t aad[ENVELOPE_AAD_MAX];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM mech;
	CK_ULONG outlen;
	size_t hlen, aadlen;
	CK_RV rv;

	*ctlen = 0;
	if (pt == NULL || ptlen == 0)
		return KEYRING_E_INVALID;
	if (ptlen > KEYRING_MAX_PLAINTEXT)
		return KEYRING_E_TOOBIG;

	memset(&e, 0, sizeof(e));
	e.format = ENVELOPE_FORMAT_V1;
	e.mech = ENVELOPE_MECH_AES_GCM;
	memcpy(e.keyref, k->keyref, sizeof(e.keyref));
	e.iv_len = GCM_IV_LEN;
	/*
	 * Random 96-bit IVs: under one key, 2^32 seals keep the collision
	 * chance below 2^-32 (NIST SP 800-38D). A RAND failure is not the
	 * request's fault: report it as a fault that may pass.
	 */
	if (RAND_bytes(e.iv, GCM_IV_LEN) != 1)
		return KEYRING_E_TOKEN;
	hlen = envelope_encode_header(&e, ct, ctcap);
	if (hlen == 0 || ctcap - hlen < ptlen + GCM_TAG_LEN)
		return KEYRING_E_TOOBIG;
	if ((aadlen = envelope_aad(&e, aad, sizeof(aad))) == 0)
		return KEYRING_E_INVALID;
	gcm_mech(&gcm, &mech, e.iv, aad, aadlen);

	if ((rv = fn->C_EncryptInit(w->s, &mech, k->obj)) != CKR_OK)
		return KEYRING_E_TOKEN;
	/*
	 * One C_Encrypt with room for all of it: a too-small buffer would
	 * leave the operation active and the session stuck.
	 */
	outlen = ptlen + GCM_TAG_LEN;
	rv = fn->C_Encrypt(w->s, (CK_BYTE_PTR)pt, ptlen, ct + hlen, &outlen);
	if (rv != CKR_OK || outlen != ptlen + GCM_TAG_LEN)
		return KEYRING_E_TOKEN;

	/* success */
	*ctlen = hlen + outlen;
	if (key_id != NULL)
		memcpy(key_id, k->key_id, KEYRING_KEY_ID_MAX);
	return KEYRING_OK;
}

int
keyring_open(struct keyring_worker *w, const char *key_id,
    const uint8_t *ct, size_t ctlen, uint8_t *pt, size_t ptcap, size_t *ptlen,
    char *key_id_seen)
{
	CK_FUNCTION_LIST *fn = w->kr->tok->fn;
	const struct keyring *kr = w->kr;
	const struct kr_key *k = NULL;
	struct envelope e;
	uint8_t aad[ENVELOPE_AAD_MAX], buf[ENVELOPE_MAX_LEN];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM mech;
	CK_ULONG outlen;
	size_t i, aadlen, want;
	CK_RV rv;
	int ret = KEYRING_E_INVALID;

	*ptlen = 0;
	if (key_id_seen != NULL)
		key_id_seen[0] = '\0';
	if (envelope_decode(ct, ctlen, &e) != 0 ||
	    e.format != ENVELOPE_FORMAT_V1 ||
	    e.mech != ENVELOPE_MECH_AES_GCM || e.iv_len != GCM_IV_LEN ||
	    e.body_len <= GCM_TAG_LEN ||
	    e.body_len - GCM_TAG_LEN > KEYRING_MAX_PLAINTEXT)
		goto out;
	want = e.body_len - GCM_TAG_LEN;

	for (i = 0; i < kr->nkeys; i++) {
		if (memcmp(kr->keys[i].keyref, e.keyref,
		    sizeof(e.keyref)) == 0) {
			k = &kr->keys[i];
			break;
		}
	}
	if (k == NULL || (key_id != NULL && strcmp(key_id, k->key_id) != 0)) {
		ret = KEYRING_E_UNKNOWN_KEY;
		if (key_id_seen != NULL)
			envelope_keyref_hex(e.keyref, key_id_seen);
		goto out;
	}
	if (pt == NULL || ptcap < want) {
		ret = KEYRING_E_TOOBIG;
		goto out;
	}
	if ((aadlen = envelope_aad(&e, aad, sizeof(aad))) == 0)
		goto out;
	gcm_mech(&gcm, &mech, e.iv, aad, aadlen);

	/* Nothing the request controls can fail DecryptInit: a fault. */
	if ((rv = fn->C_DecryptInit(w->s, &mech, k->obj)) != CKR_OK) {
		ret = KEYRING_E_TOKEN;
		goto out;
	}
	/*
	 * Sized for the whole body (SoftHSM checks against the input size),
	 * so one call ends the operation. Any refusal that is not a session
	 * or token fault is "this ciphertext does not open": SoftHSM says
	 * CKR_GENERAL_ERROR for a bad tag.
	 */
	outlen = e.body_len;
	rv = fn->C_Decrypt(w->s, (CK_BYTE_PTR)e.body, e.body_len, buf,
	    &outlen);
	if (rv != CKR_OK) {
		ret = token_rv_is_fault(rv) ? KEYRING_E_TOKEN : KEYRING_E_AUTH;
		goto out;
	}
	if (outlen != want) {
		ret = KEYRING_E_TOKEN;	/* token misbehaves: never pass it on */
		goto out;
	}

	/* success */
	memcpy(pt, buf, want);
	*ptlen = want;
	ret = KEYRING_OK;
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	return ret;
}
