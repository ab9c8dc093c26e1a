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
	char module_warning[2 * TOKEN_URI_TEXT_MAX];
	size_t nkeys;
	struct kek keys[KEYRING_MAX_KEYS];	/* [0] seals */
};

struct keyring_worker {
	struct keyring *kr;		/* borrowed; outlives the worker */
	struct mech_sess ms;		/* its session, kept message ops */
	char err[KEYRING_ERROR_MAX];	/* last failed call, "" if none */
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
	return mech_cfg_valid(name);
}

/*
 * The row key k seals with: the first row (auto order) it passed whose
 * --mechanism name is pref, else (pref NULL/"auto", or not strict) the
 * first row it passed. MECH_NROWS when pref cannot be met and strict.
 */
static size_t
choose_row(const struct kek *k, const char *pref, int strict)
{
	size_t r;
	int any = pref == NULL || strcmp(pref, "auto") == 0;

	for (r = 0; !any && r < MECH_NROWS; r++)
		if ((k->caps & MECH_BIT(r)) &&
		    strcmp(mech_table[r].cfg, pref) == 0)
			return r;
	if (!any && strict)
		return MECH_NROWS;
	for (r = 0; r < MECH_NROWS; r++)
		if (k->caps & MECH_BIT(r))
			return r;
	return MECH_NROWS;
}

/* Config error for a first key that cannot do the asked mechanism. */
static void
pref_err(const struct kek *k, const char *name, char *err, size_t errlen)
{
	char why[KEYRING_REASON_MAX];
	size_t r, o = 0;
	int rsa_pref = strcmp(name, "rsa-oaep") == 0;

	why[0] = '\0';
	if (rsa_pref && k->cls != CKO_PRIVATE_KEY)
		snprintf(why, sizeof(why), "it is an AES key; rsa-oaep needs "
		    "an RSA key pair selected with type=private");
	else if (!rsa_pref && k->cls == CKO_PRIVATE_KEY)
		snprintf(why, sizeof(why), "it is an RSA key; it seals with "
		    "rsa-oaep only");
	for (r = 0; (o > 0 || why[0] == '\0') && r < MECH_NROWS; r++) {
		if (strcmp(mech_table[r].cfg, name) != 0 ||
		    k->why[r][0] == '\0' || o + 1 >= sizeof(why))
			continue;
		snprintf(why + o, sizeof(why) - o, "%s%s: %s", o > 0 ? "; " :
		    "", mech_table[r].name, k->why[r]);
		o = strlen(why);
	}
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
	size_t i, j, n, row;
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
		token_err(err, errlen, "unknown mechanism '%.40s': use %s",
		    cfg->mechanism, mech_cfg_list());
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

	if ((ret = token_open(cfg->module, cfg->module_init_args, uris[0],
	    kr->keys[0].uri, &kr->tok, err, errlen)) != 0)
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
		row = choose_row(k, cfg->mechanism, i == 0);
		if (row == MECH_NROWS) {
			ret = KEYRING_E_CONFIG;
			pref_err(k, cfg->mechanism, err, errlen);
			goto out;
		}
		k->seal_row = (uint8_t)row;
	}
	kr->nkeys = n;
	token_search_warning(kr->tok, kr->module_warning,
	    sizeof(kr->module_warning));

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
	return i < kr->nkeys ? mech_table[kr->keys[i].seal_row].name : NULL;
}

const char *
keyring_module_warning(const struct keyring *kr)
{
	return kr->module_warning;
}

const char *
keyring_key_seal_detail(const struct keyring *kr, size_t i)
{
	const char *d;

	if (i >= kr->nkeys)
		return "";
	d = kr->keys[i].detail[kr->keys[i].seal_row];
	return d != NULL ? d : "";
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
	*mech = mech_env_name(e.mech);
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

/* 1 when some key's rows create session objects (an R/W session). */
static int
needs_rw(const struct keyring *kr)
{
	size_t i, r;

	for (i = 0; i < kr->nkeys; i++)
		for (r = 0; r < MECH_NROWS; r++)
			if ((kr->keys[i].caps & MECH_BIT(r)) &&
			    (mech_table[r].flags & MECH_F_OBJECTS))
				return 1;
	return 0;
}

int
keyring_worker_new(struct keyring *kr, struct keyring_worker **out)
{
	struct keyring_worker *w;
	CK_SESSION_HANDLE s;
	CK_RV rv;

	*out = NULL;
	if ((w = calloc(1, sizeof(*w))) == NULL)
		return KEYRING_E_NOMEM;
	w->kr = kr;
	/*
	 * Read-only is enough for encrypt/decrypt (login is app-wide); R/W
	 * where a mechanism makes session objects (some tokens refuse them
	 * in a R/O session).
	 */
	rv = token_open_session(kr->tok, needs_rw(kr), &s);
	if (rv != CKR_OK) {
		free(w);
		return rv == CKR_HOST_MEMORY ? KEYRING_E_NOMEM :
		    KEYRING_E_TOKEN;
	}
	mech_sess_init(&w->ms, kr->tok->fn, kr->tok->fn3, s, 1);

	/* success */
	*out = w;
	return KEYRING_OK;
}

void
keyring_worker_free(struct keyring_worker *w)
{
	if (w == NULL)
		return;
	mech_sess_idle(&w->ms);
	(void)w->kr->tok->fn->C_CloseSession(w->ms.s);
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
	const struct mech_def *d;
	struct mech_err me = mech_err_start();
	size_t want, iv;
	int r;

	*ctlen = 0;
	w->err[0] = '\0';
	if (i >= w->kr->nkeys)
		return KEYRING_E_UNKNOWN_KEY;
	k = &w->kr->keys[i];
	d = &mech_table[k->seal_row];
	if (pt == NULL || ptlen == 0)
		return KEYRING_E_INVALID;
	if (ptlen > KEYRING_MAX_PLAINTEXT)
		return KEYRING_E_TOOBIG;
	/* Checked up front, so the token never runs for a request too big. */
	iv = d->env == ENVELOPE_MECH_AES_GCM ? MECH_GCM_IV_LEN :
	    d->env == ENVELOPE_MECH_AES_GCM_TIV ? ENVELOPE_IV_MAX : 0;
	if ((want = mech_body_len(d, &k->mk, ptlen)) == 0 ||
	    ctcap < ENVELOPE_FIXED_LEN + iv ||
	    ctcap - ENVELOPE_FIXED_LEN - iv < want)
		return KEYRING_E_TOOBIG;
	r = mech_seal(&w->ms, d, &k->mk, k->keyref, pt, ptlen, ct, ctcap,
	    ctlen, &me);
	if (r != KEYRING_OK)
		return worker_fault(w, r, &me);

	/* success */
	if (key_id != NULL)
		memcpy(key_id, k->key_id, KEYRING_KEY_ID_MAX);
	return KEYRING_OK;
}

/* The first row key k passed that opens envelopes of byte env. */
static const struct mech_def *
open_row(const struct kek *k, uint8_t env)
{
	size_t r;

	for (r = 0; r < MECH_NROWS; r++)
		if ((k->caps & MECH_BIT(r)) &&
		    (mech_table[r].opens & MECH_ENV_BIT(env)))
			return &mech_table[r];
	return NULL;
}

int
keyring_open(struct keyring_worker *w, const char *key_id,
    const uint8_t *ct, size_t ctlen, uint8_t *pt, size_t ptcap, size_t *ptlen,
    char *key_id_seen)
{
	const struct keyring *kr = w->kr;
	const struct kek *k = NULL;
	const struct mech_def *d;
	struct envelope e;
	struct mech_err me = mech_err_start();
	size_t i;
	int r;

	*ptlen = 0;
	w->err[0] = '\0';
	if (key_id_seen != NULL)
		key_id_seen[0] = '\0';
	if (envelope_decode(ct, ctlen, &e) != 0 ||
	    e.format != ENVELOPE_FORMAT_V1 || !mech_env_known(e.mech))
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
	if (mech_env_is_rsa(e.mech) != (k->cls == CKO_PRIVATE_KEY))
		return KEYRING_E_INVALID;
	if ((d = open_row(k, e.mech)) == NULL)
		return KEYRING_E_AUTH;
	r = mech_open(&w->ms, d, &k->mk, &e, pt, ptcap, ptlen, &me);
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

	/* The session is gone or suspect: its message ops went with it. */
	(void)w->kr->tok->fn->C_CloseSession(w->ms.s);
	rv = token_open_session(w->kr->tok, needs_rw(w->kr), &s);
	mech_sess_init(&w->ms, w->kr->tok->fn, w->kr->tok->fn3,
	    CK_INVALID_HANDLE, 1);
	if (rv != CKR_OK) {
		/* The next use fails as a lost session and tries again. */
		snprintf(w->err, sizeof(w->err), "C_OpenSession: %s",
		    token_rv_name(rv));
		return KEYRING_E_TOKEN;
	}
	w->ms.s = s;
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
