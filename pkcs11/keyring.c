/*
 * keyring: the configured KEKs, their key_ids and mechanisms, and
 * seal/open inside the token (contracts in keyring.h; envelope layout in
 * envelope.h; judging a key in kek.c; the token operations in mech.c).
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

#include "pkcs11/envelope.h"
#include "pkcs11/kek.h"
#include "pkcs11/keyring.h"
#include "pkcs11/mech.h"
#include "pkcs11/token.h"

_Static_assert(2 * ENVELOPE_KEYREF_LEN + 1 <= KEYRING_KEY_ID_MAX, "key_id");
_Static_assert(ENVELOPE_FIXED_LEN + MECH_GCM_IV_LEN + KEYRING_MAX_PLAINTEXT +
    MECH_GCM_TAG_LEN <= KEYRING_MAX_CIPHERTEXT, "envelope fits the apiserver");
_Static_assert(KEYRING_MAX_CIPHERTEXT <= ENVELOPE_MAX_LEN, "envelope max");

struct keyring {
	struct token *tok;		/* owns module, login session */
	size_t nkeys;
	struct kek keys[KEYRING_MAX_KEYS];	/* [0] seals */
};

struct keyring_worker {
	struct keyring *kr;		/* borrowed; outlives the worker */
	CK_SESSION_HANDLE s;
	char err[KEYRING_ERROR_MAX];	/* last failed call, "" if none */
};

/* keyring_config.mechanism names; 0 = auto. */
static const struct {
	const char *name;
	uint8_t mech;		/* AES: the mechanism; RSA: any OAEP */
} mech_names[] = {
	{ "auto", 0 },
	{ "aes-gcm", ENVELOPE_MECH_AES_GCM },
	{ "aes-kwp", ENVELOPE_MECH_AES_KWP },
	{ "rsa-oaep", ENVELOPE_MECH_RSA_OAEP_SHA256 },
};

/* Preference order under "auto": for AES keys, and for RSA keys. */
static const uint8_t auto_order[] = {
	ENVELOPE_MECH_AES_GCM, ENVELOPE_MECH_AES_KWP,
	ENVELOPE_MECH_RSA_OAEP_SHA256, ENVELOPE_MECH_RSA_OAEP_SHA1,
};

/*
 * The status of a token failure on a worker, with its words in w->err.
 * Only a session the token forgot, or one left with an operation active,
 * is the session's fault (KEYRING_E_SESSION: a new session cures it);
 * anything else concerns the token or the keyring's own login session
 * (the KEK copies live there), which only a keyring reload cures.
 */
static int
worker_fault(struct keyring_worker *w, int r, const struct mech_err *me)
{
	if (r != KEYRING_E_TOKEN)
		return r;
	if (me->call == NULL) {
		snprintf(w->err, sizeof(w->err), "the token gave an answer "
		    "of the wrong size");
		return r;
	}
	snprintf(w->err, sizeof(w->err), "%s: %s", me->call,
	    token_rv_name(me->rv));
	switch (me->rv) {
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_OPERATION_ACTIVE:
	case CKR_BUFFER_TOO_SMALL:
		return KEYRING_E_SESSION;
	}
	return r;
}

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
	case KEYRING_E_SESSION:
		return "token session lost";
	}
	return "unknown keyring status";
}

int
keyring_mechanism_valid(const char *name)
{
	size_t i;

	if (name == NULL)
		return 1;
	for (i = 0; i < sizeof(mech_names) / sizeof(mech_names[0]); i++)
		if (strcmp(name, mech_names[i].name) == 0)
			return 1;
	return 0;
}

static uint8_t
mech_pref(const char *name)
{
	size_t i;

	for (i = 0; name != NULL &&
	    i < sizeof(mech_names) / sizeof(mech_names[0]); i++)
		if (strcmp(name, mech_names[i].name) == 0)
			return mech_names[i].mech;
	return 0;
}

/*
 * The mechanism key k seals with: the preference when k can do it (for
 * "rsa-oaep", the best OAEP variant k passed), else the first of auto_order
 * it passed. 0 when the preference cannot be met and strict is set.
 */
static uint8_t
choose_mech(const struct kek *k, uint8_t pref, int strict)
{
	size_t i;

	if (pref == ENVELOPE_MECH_RSA_OAEP_SHA256) {
		if (k->caps & KEK_CAP(ENVELOPE_MECH_RSA_OAEP_SHA256))
			return ENVELOPE_MECH_RSA_OAEP_SHA256;
		if (k->caps & KEK_CAP(ENVELOPE_MECH_RSA_OAEP_SHA1))
			return ENVELOPE_MECH_RSA_OAEP_SHA1;
	} else if (pref != 0 && (k->caps & KEK_CAP(pref)))
		return pref;
	if (pref != 0 && strict)
		return 0;
	for (i = 0; i < sizeof(auto_order); i++)
		if (k->caps & KEK_CAP(auto_order[i]))
			return auto_order[i];
	return 0;
}

/* Config error for a first key that cannot do the asked mechanism. */
static void
pref_err(const struct kek *k, uint8_t pref, const char *name, char *err,
    size_t errlen)
{
	const char *why;

	if (pref == ENVELOPE_MECH_RSA_OAEP_SHA256 && k->cls != CKO_PRIVATE_KEY)
		why = "it is an AES key; rsa-oaep needs an RSA key pair "
		    "selected with type=private";
	else if (pref != ENVELOPE_MECH_RSA_OAEP_SHA256 &&
	    k->cls == CKO_PRIVATE_KEY)
		why = "it is an RSA key; it seals with rsa-oaep only";
	else if (pref == ENVELOPE_MECH_RSA_OAEP_SHA256)
		why = k->why[ENVELOPE_MECH_RSA_OAEP_SHA1];
	else
		why = k->why[pref];
	token_err(err, errlen, "key %s cannot seal with %s as the mechanism "
	    "setting asks: %s (it can do: %s)", k->uri, name, why,
	    k->mechs[0] != '\0' ? k->mechs : "nothing");
}

int
keyring_load(const struct keyring_config *cfg, struct keyring **out,
    char *err, size_t errlen)
{
	struct keyring *kr = NULL;
	P11KitUri *uris[KEYRING_MAX_KEYS] = { NULL };
	const char *pin_source = NULL, *m0, *mi;
	struct kek_tokmechs tm;
	struct kek *k;
	CK_OBJECT_HANDLE h;
	CK_OBJECT_CLASS cls;
	size_t i, j, n;
	uint8_t pref;
	int ret = KEYRING_E_CONFIG;

	*out = NULL;
	token_err(err, errlen, "%s", "");
	if (cfg == NULL || cfg->key_uris == NULL || cfg->nkeys == 0 ||
	    cfg->nkeys > KEYRING_MAX_KEYS) {
		token_err(err, errlen, "between 1 and %d key URIs are needed",
		    KEYRING_MAX_KEYS);
		goto out;
	}
	if (!keyring_mechanism_valid(cfg->mechanism)) {
		token_err(err, errlen, "unknown mechanism '%.40s': use auto, "
		    "aes-gcm, aes-kwp or rsa-oaep", cfg->mechanism);
		goto out;
	}
	pref = mech_pref(cfg->mechanism);
	n = cfg->nkeys;
	if ((kr = calloc(1, sizeof(*kr))) == NULL) {
		ret = KEYRING_E_NOMEM;
		token_err(err, errlen, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		k = &kr->keys[i];
		k->token_obj = k->mk.obj = k->mk.pub = CK_INVALID_HANDLE;
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
	if ((ret = kek_token_mechs(kr->tok, &tm, err, errlen)) != 0)
		goto out;
	if ((ret = token_login(kr->tok, cfg->pin_file, pin_source, err,
	    errlen)) != 0)
		goto out;

	for (i = 0; i < n; i++) {
		k = &kr->keys[i];
		if ((ret = token_find_key(kr->tok, uris[i], k->uri, &h, &cls,
		    err, errlen)) != 0)
			goto out;
		/* Same key twice: caught by key_id below, before the copy. */
		for (j = 0; j < i; j++) {
			if (kr->keys[j].token_obj == h) {
				ret = KEYRING_E_CONFIG;
				token_err(err, errlen, "keys %s and %s are the "
				    "same key (key_id %s); list each key once",
				    kr->keys[j].uri, k->uri,
				    kr->keys[j].key_id);
				goto out;
			}
		}
		if ((ret = kek_eval(kr->tok, &tm, h, cls, k, 1, err,
		    errlen)) != 0)
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
		k->seal_mech = choose_mech(k, pref, i == 0);
		if (k->seal_mech == 0) {
			ret = KEYRING_E_CONFIG;
			pref_err(k, pref, cfg->mechanism, err, errlen);
			goto out;
		}
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

const char *
keyring_key_mechanism(const struct keyring *kr, size_t i)
{
	return i < kr->nkeys ? envelope_mech_name(kr->keys[i].seal_mech) :
	    NULL;
}

const char *
keyring_key_mechanisms(const struct keyring *kr, size_t i)
{
	return i < kr->nkeys ? kr->keys[i].mechs : NULL;
}

int
keyring_key_token(const struct keyring *kr, size_t i, char *label,
    char *serial)
{
	label[0] = serial[0] = '\0';
	if (kr == NULL || i >= kr->nkeys)
		return -1;
	token_printable(kr->tok->info.label, sizeof(kr->tok->info.label),
	    label, KEYRING_TOKEN_TEXT_MAX);
	token_printable(kr->tok->info.serialNumber,
	    sizeof(kr->tok->info.serialNumber), serial,
	    KEYRING_TOKEN_TEXT_MAX);
	return 0;
}

int
keyring_envelope_info(const struct keyring *kr, const uint8_t *ct,
    size_t ctlen, const char **mech, char *key_id)
{
	struct envelope e;
	size_t i;

	*mech = NULL;
	key_id[0] = '\0';
	if (envelope_decode(ct, ctlen, &e) != 0)
		return -1;
	*mech = envelope_mech_name(e.mech);
	for (i = 0; kr != NULL && i < kr->nkeys; i++)
		if (memcmp(kr->keys[i].keyref, e.keyref,
		    sizeof(e.keyref)) == 0) {
			memcpy(key_id, kr->keys[i].key_id, KEYRING_KEY_ID_MAX);
			break;
		}
	return 0;
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
keyring_hw_slot(const struct keyring *kr)
{
	return (kr->tok->slot_flags & CKF_HW_SLOT) != 0;
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
	return keyring_seal_with(w, 0, pt, ptlen, ct, ctcap, ctlen, key_id);
}

int
keyring_seal_with(struct keyring_worker *w, size_t i, const uint8_t *pt,
    size_t ptlen, uint8_t *ct, size_t ctcap, size_t *ctlen, char *key_id)
{
	const struct kek *k;
	struct envelope e;
	size_t hlen, blen = 0;
	struct mech_err me = mech_err_start();
	int r;

	*ctlen = 0;
	w->err[0] = '\0';
	if (i >= w->kr->nkeys)
		return KEYRING_E_UNKNOWN_KEY;
	k = &w->kr->keys[i];
	if (pt == NULL || ptlen == 0)
		return KEYRING_E_INVALID;
	if (ptlen > KEYRING_MAX_PLAINTEXT)
		return KEYRING_E_TOOBIG;

	memset(&e, 0, sizeof(e));
	e.format = ENVELOPE_FORMAT_V1;
	e.mech = k->seal_mech;
	memcpy(e.keyref, k->keyref, sizeof(e.keyref));
	/* A RAND failure is not the request's fault: a fault that may pass. */
	if (mech_set_iv(&e) != 0) {
		snprintf(w->err, sizeof(w->err), "RAND_bytes failed");
		return KEYRING_E_TOKEN;
	}
	hlen = envelope_encode_header(&e, ct, ctcap);
	if (hlen == 0)
		return KEYRING_E_TOOBIG;
	/* Checked up front, so the token never runs for a request too big. */
	if (mech_body_len(e.mech, &k->mk, ptlen) == 0 ||
	    ctcap - hlen < mech_body_len(e.mech, &k->mk, ptlen))
		return KEYRING_E_TOOBIG;
	r = mech_seal(w->kr->tok->fn, w->s, &k->mk, &e, pt, ptlen, ct + hlen,
	    ctcap - hlen, &blen, &me);
	if (r != KEYRING_OK)
		return worker_fault(w, r, &me);

	/* success */
	*ctlen = hlen + blen;
	if (key_id != NULL)
		memcpy(key_id, k->key_id, KEYRING_KEY_ID_MAX);
	return KEYRING_OK;
}

int
keyring_open(struct keyring_worker *w, const char *key_id,
    const uint8_t *ct, size_t ctlen, uint8_t *pt, size_t ptcap, size_t *ptlen,
    char *key_id_seen)
{
	const struct keyring *kr = w->kr;
	const struct kek *k = NULL;
	struct envelope e;
	struct mech_err me = mech_err_start();
	size_t i;
	int r;

	*ptlen = 0;
	w->err[0] = '\0';
	if (key_id_seen != NULL)
		key_id_seen[0] = '\0';
	if (envelope_decode(ct, ctlen, &e) != 0 ||
	    e.format != ENVELOPE_FORMAT_V1 || !mech_known(e.mech))
		return KEYRING_E_INVALID;

	for (i = 0; i < kr->nkeys; i++) {
		if (memcmp(kr->keys[i].keyref, e.keyref,
		    sizeof(e.keyref)) == 0) {
			k = &kr->keys[i];
			break;
		}
	}
	if (k == NULL || (key_id != NULL && strcmp(key_id, k->key_id) != 0)) {
		if (key_id_seen != NULL)
			envelope_keyref_hex(e.keyref, key_id_seen);
		return KEYRING_E_UNKNOWN_KEY;
	}
	/*
	 * A mechanism of the other key family can never have been made
	 * with this key: malformed. One of its own family that this key or
	 * token cannot do (an AES-KWP envelope for a key without CKA_UNWRAP)
	 * does not open, like a bad tag.
	 */
	if (mech_is_rsa(e.mech) != (k->cls == CKO_PRIVATE_KEY))
		return KEYRING_E_INVALID;
	if (!(k->caps & KEK_CAP(e.mech)))
		return KEYRING_E_AUTH;
	r = mech_open(kr->tok->fn, w->s, &k->mk, &e, pt, ptcap, ptlen, &me);
	return worker_fault(w, r, &me);
}

const char *
keyring_worker_error(const struct keyring_worker *w)
{
	return w->err;
}

int
keyring_worker_reopen(struct keyring_worker *w)
{
	CK_SESSION_HANDLE s;
	CK_RV rv;

	(void)w->kr->tok->fn->C_CloseSession(w->s);
	rv = w->kr->tok->fn->C_OpenSession(w->kr->tok->slot,
	    CKF_SERIAL_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		/* The next use fails as a lost session and tries again. */
		w->s = CK_INVALID_HANDLE;
		snprintf(w->err, sizeof(w->err), "C_OpenSession: %s",
		    token_rv_name(rv));
		return KEYRING_E_TOKEN;
	}
	w->s = s;
	return KEYRING_OK;
}

const char *
keyring_rv_name(unsigned long rv)
{
	return token_rv_name((CK_RV)rv);
}

void
keyring_set_call_observer(void (*cb)(const char *, unsigned long, double))
{
	token_set_observer(cb);
}
