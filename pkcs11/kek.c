/*
 * kek: judging one key on the token (contract in kek.h).
 *
 * Order matters: identity first (label, id, key_id: shown even for an unfit
 * key), then the attributes that make a key unfit whatever the mechanism
 * (class, type, size, sensitive, extractable), then each mechanism: the
 * token must list it, the key's attributes must allow it, and a real round
 * trip must pass. Only a lasting refusal (mech_rv_refusal) rules a
 * mechanism out; a passing fault fails the whole judgement, so a flaky
 * token never silently moves a key to another mechanism.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/kek.h"
#include "pkcs11/keyid.h"

#define ATTR_MAX	256	/* CKA_ID / CKA_LABEL bytes we accept */
#define KEK_AES_LEN	32	/* AES-256 */

void
kek_hex(const uint8_t *b, size_t n, char *out, size_t cap)
{
	size_t i, o = 0;

	if (cap == 0)
		return;
	out[0] = '\0';
	for (i = 0; i < n; i++) {
		if (cap - o < 3 || (i + 1 < n && cap - o < 6)) {
			snprintf(out + o, cap - o, "%s", cap - o >= 4 ?
			    "..." : "");
			return;
		}
		snprintf(out + o, cap - o, "%02x", b[i]);
		o += 2;
	}
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
 * A CK_BBOOL attribute; one the key does not have reads as its PKCS#11
 * default, false.
 */
static CK_RV
get_bool(struct token *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
    int *out)
{
	CK_BBOOL b = CK_FALSE;
	CK_RV rv;

	*out = 0;
	rv = get_fixed(t, h, type, &b, sizeof(b));
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID)
		return CKR_OK;
	if (rv == CKR_OK)
		*out = b != CK_FALSE;
	return rv;
}

/*
 * Reads a byte-string attribute (at most cap bytes). An attribute the key
 * does not have reads as empty, so it still hashes deterministically.
 */
static CK_RV
get_bytes(struct token *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
    uint8_t *buf, size_t cap, size_t *len)
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
	if (a.ulValueLen > cap)
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

void
kek_sess(struct token *t, struct mech_sess *ms)
{
	mech_sess_init(ms, t->fn, t->fn3, t->session, 0);
}

/* Label, id, desc: the names a key is shown by. */
static CK_RV
read_names(struct token *t, struct kek *k, uint8_t *id, size_t *idlen,
    uint8_t *label, size_t *labellen)
{
	char hex[2 * 8 + 4];
	CK_RV rv;

	if ((rv = get_bytes(t, k->token_obj, CKA_ID, id, ATTR_MAX,
	    idlen)) != CKR_OK ||
	    (rv = get_bytes(t, k->token_obj, CKA_LABEL, label, ATTR_MAX,
	    labellen)) != CKR_OK)
		return rv;
	token_printable(label, *labellen, k->label, sizeof(k->label));
	kek_hex(id, *idlen, k->id_hex, sizeof(k->id_hex));
	if (*labellen > 0) {
		snprintf(k->desc, sizeof(k->desc), "token '%s' object '%s'",
		    t->label, k->label);
	} else {
		kek_hex(id, *idlen, hex, sizeof(hex));
		snprintf(k->desc, sizeof(k->desc), "token '%s' id %s",
		    t->label, hex);
	}
	return CKR_OK;
}

static int
set_key_id(struct kek *k, const uint8_t *id, size_t idlen,
    const uint8_t *label, size_t labellen, const uint8_t *kcv, size_t kcvlen)
{
	uint8_t fp[KEYID_FP_LEN];

	if (keyid_fingerprint(id, idlen, label, labellen, kcv, kcvlen,
	    fp) != 0)
		return -1;
	memcpy(k->keyref, fp, sizeof(k->keyref));
	envelope_keyref_hex(k->keyref, k->key_id);
	return 0;
}

/*
 * Makes the AES session copy (see struct kek). Any refusal or doubt leaves
 * k->mk.obj = k->token_obj: the copy is an optimisation only.
 */
static void
copy_key(struct token *t, struct kek *k)
{
	CK_BBOOL no = CK_FALSE, sens = CK_FALSE, extr = CK_TRUE, tok = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = { { CKA_TOKEN, &no, sizeof(no) } };
	CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;

	k->mk.obj = k->token_obj;
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
	k->mk.obj = copy;
}


/*
 * One round trip of a random canary with row r, as seal/open will do it.
 * The envelope binds k->keyref, which need not be the key_id yet: the
 * round trip only has to be self-consistent. KEYRING_OK: it works.
 * KEYRING_E_CONFIG: the token or key refuses it for good (k->why[r] says
 * how). Anything else: a fault, in err.
 */
static int
selftest(struct token *t, struct kek *k, size_t r, char *err, size_t errlen)
{
	const struct mech_def *d = &mech_table[r];
	uint8_t pt[32], ct[KEYRING_MAX_CIPHERTEXT], back[KEYRING_MAX_PLAINTEXT];
	struct mech_sess ms;
	struct envelope e;
	size_t ctlen = 0, backlen = 0;
	struct mech_err me = mech_err_start();
	const char *step = "seal";
	int rr, ret = KEYRING_E_TOKEN;

	kek_sess(t, &ms);
	/*
	 * A token-IV row gets a fixed canary: should a token take the
	 * all-zero IV as given, sealing one constant again reveals nothing
	 * new (the row is refused for it anyway).
	 */
	if (d->env == ENVELOPE_MECH_AES_GCM_TIV)
		memset(pt, 0x5a, sizeof(pt));
	else if (RAND_bytes(pt, sizeof(pt)) != 1) {
		token_err(err, errlen, "RAND_bytes failed");
		goto out;
	}
	rr = mech_seal(&ms, d, &k->mk, k->keyref, pt, sizeof(pt), ct,
	    sizeof(ct), &ctlen, &me);
	if (rr == KEYRING_OK) {
		k->detail[r] = me.detail;
		step = "open";
		rr = envelope_decode(ct, ctlen, &e) != 0 ? KEYRING_E_INVALID :
		    mech_open(&ms, d, &k->mk, &e, back, sizeof(back), &backlen,
		    &me);
	}
	if (rr == KEYRING_OK && (backlen != sizeof(pt) ||
	    CRYPTO_memcmp(back, pt, sizeof(pt)) != 0))
		rr = KEYRING_E_AUTH;
	if (rr == KEYRING_OK) {
		ret = KEYRING_OK;
		goto out;
	}
	k->detail[r] = NULL;
	if (me.rv != CKR_OK && !mech_rv_refusal(me.rv)) {
		token_err(err, errlen, "key %s: %s self-test (%s) in token "
		    "'%s' failed: %s: %s", k->uri, d->title, step, t->label,
		    me.call, token_rv_name(me.rv));
		ret = KEYRING_E_TOKEN;	/* not a lasting refusal: no verdict */
		goto out;
	}
	if (me.rv != CKR_OK)
		snprintf(k->why[r], KEK_WHY_MAX, "the token refused its %s "
		    "self-test (%s: %s: %s)", d->title, step, me.call,
		    token_rv_name(me.rv));
	else
		snprintf(k->why[r], KEK_WHY_MAX, "its %s self-test did not "
		    "give the plaintext back", d->title);
	ret = KEYRING_E_CONFIG;
out:
	mech_sess_idle(&ms);
	OPENSSL_cleanse(pt, sizeof(pt));
	OPENSSL_cleanse(back, sizeof(back));
	return ret;
}

/* The key's CKA_ALLOWED_MECHANISMS; *n = 0 when it has none (all allowed). */
static CK_RV
allowed_list(struct token *t, CK_OBJECT_HANDLE h, CK_MECHANISM_TYPE *list,
    size_t cap, size_t *n)
{
	uint8_t buf[64 * sizeof(CK_MECHANISM_TYPE)];
	size_t len = 0;
	CK_RV rv;

	*n = 0;
	rv = get_bytes(t, h, CKA_ALLOWED_MECHANISMS, buf, sizeof(buf), &len);
	/*
	 * Unreadable (longer than we keep; or p11-kit 0.24's RPC, which
	 * cannot carry this array and says CKR_DEVICE_ERROR): judge by the
	 * flags and the round trips, which have the last word anyway.
	 */
	if (rv != CKR_OK)
		return CKR_OK;
	len /= sizeof(CK_MECHANISM_TYPE);
	if (len > cap)
		len = cap;
	memcpy(list, buf, len * sizeof(CK_MECHANISM_TYPE));
	*n = len;
	return CKR_OK;
}

/*
 * The rows the token offers and the key's attributes allow, as MECH_BIT
 * bits; k->why says why each other row of the key's family is out. pub:
 * the RSA public key (use[1] is read there), else the key itself.
 */
static CK_RV
rows_allowed(struct token *t, const struct kek_tokmechs *tm, struct kek *k,
    CK_OBJECT_HANDLE pub, unsigned *allowed)
{
	CK_MECHANISM_TYPE am[64];
	size_t nam, r, i;
	const struct mech_def *d;
	int rsa = k->cls == CKO_PRIVATE_KEY, va, vb, listed;
	char *why;
	CK_RV rv;

	*allowed = 0;
	if ((rv = allowed_list(t, k->token_obj, am, 64, &nam)) != CKR_OK)
		return rv;
	for (r = 0; r < MECH_NROWS; r++) {
		d = &mech_table[r];
		why = k->why[r];
		why[0] = '\0';
		if (!(d->flags & MECH_F_RSA) != !rsa)
			continue;
		if (!(tm->offered & MECH_BIT(r))) {
			if ((d->flags & MECH_F_V3) && !tm->v3)
				snprintf(why, KEK_WHY_MAX, "module of token "
				    "'%s' has no PKCS#11 3.0 interface",
				    t->label);
			else
				snprintf(why, KEK_WHY_MAX, "token '%s' does not "
				    "offer %s for %s", t->label, d->ckm_name,
				    d->need & CKF_WRAP ?
				    "wrap and unwrap" : "encrypt and decrypt");
			continue;
		}
		if ((rv = get_bool(t, k->token_obj, d->use[0], &va)) != CKR_OK ||
		    (rv = get_bool(t, rsa ? pub : k->token_obj, d->use[1],
		    &vb)) != CKR_OK)
			return rv;
		if (!(va && vb)) {
			snprintf(why, KEK_WHY_MAX, "%s%s%s %s false (%s needs "
			    "%s and %s)", !va ? d->use_name[0] : "",
			    !va && !vb ? " and " : "", !vb ? d->use_name[1] :
			    "", !va && !vb ? "are" : "is", d->title,
			    d->use_name[0], d->use_name[1]);
			continue;
		}
		for (i = 0, listed = nam == 0; i < nam && !listed; i++)
			listed = am[i] == d->ckm;
		if (!listed) {
			snprintf(why, KEK_WHY_MAX, "its CKA_ALLOWED_MECHANISMS "
			    "does not list %s (%s)", d->ckm_name, d->title);
			continue;
		}
		*allowed |= MECH_BIT(r);
	}
	return CKR_OK;
}

/*
 * Self-tests each row in *allowed, recording the outcome in k->caps and
 * k->why. The AES-GCM rows are alternatives: once one passes the later
 * ones are not tried (a token-IV probe on a token that takes our IVs would
 * only cost time) and leave *allowed. Returns KEYRING_OK unless the token
 * faulted.
 */
static int
try_rows(struct token *t, struct kek *k, unsigned *allowed, char *err,
    size_t errlen)
{
	size_t r;
	int rr;

	k->caps = 0;
	for (r = 0; r < MECH_NROWS; r++) {
		if (!(*allowed & MECH_BIT(r)))
			continue;
		if ((mech_table[r].opens & MECH_ENV_BIT(ENVELOPE_MECH_AES_GCM)) &&
		    (k->caps & (MECH_BIT(MECH_GCM) | MECH_BIT(MECH_GCM_MSG) |
		    MECH_BIT(MECH_GCM_TIV)))) {
			/* Not tried, so not "allowed but failed" either. */
			*allowed &= ~MECH_BIT(r);
			continue;
		}
		rr = selftest(t, k, r, err, errlen);
		if (rr == KEYRING_OK)
			k->caps |= MECH_BIT(r);
		else if (rr != KEYRING_E_CONFIG)
			return rr;
	}
	return KEYRING_OK;
}

/* Fitness attributes every KEK must have: sensitive, non-extractable. */
static CK_RV
check_locked(struct token *t, struct kek *k, int *ok)
{
	int sens, extr;
	CK_RV rv;

	*ok = 0;
	if ((rv = get_bool(t, k->token_obj, CKA_SENSITIVE, &sens)) != CKR_OK ||
	    (rv = get_bool(t, k->token_obj, CKA_EXTRACTABLE, &extr)) != CKR_OK)
		return rv;
	if (!sens) {
		snprintf(k->unfit, sizeof(k->unfit), "is not sensitive "
		    "(CKA_SENSITIVE=false): its value could be read out; "
		    "generate it with CKA_SENSITIVE=true (p11kms keygen)");
		return CKR_OK;
	}
	if (extr) {
		snprintf(k->unfit, sizeof(k->unfit), "is extractable "
		    "(CKA_EXTRACTABLE=true): a KEK must never leave the token; "
		    "generate it with CKA_EXTRACTABLE=false (p11kms keygen)");
		return CKR_OK;
	}
	*ok = 1;
	return CKR_OK;
}

/* "because X; because Y" of the rows of one family, for a verdict. */
static void
why_all(const struct kek *k, int rsa, char *out, size_t cap)
{
	size_t r, o = 0;

	out[0] = '\0';
	for (r = 0; r < MECH_NROWS && o + 1 < cap; r++) {
		if (!(mech_table[r].flags & MECH_F_RSA) != !rsa ||
		    k->why[r][0] == '\0')
			continue;
		snprintf(out + o, cap - o, "%s%s: %s", o > 0 ? "; " : "",
		    mech_table[r].name, k->why[r]);
		o = strlen(out);
	}
}

/* key_id of an AES key, after it was judged; CKR_OK or why not. */
static CK_RV
aes_key_id(struct token *t, struct kek *k, const uint8_t *id, size_t idlen,
    const uint8_t *label, size_t labellen, int *nomem)
{
	uint8_t kcv[KEYID_KCV_MAX];
	size_t kcvlen = 0;
	CK_RV rv;

	*nomem = 0;
	rv = keyid_check_value(t->fn, t->session, k->token_obj,
	    keyid_id_is_v2(id, idlen) ? KEYID_KCV_LONG : KEYID_KCV_AUTO, kcv,
	    &kcvlen, &k->kcv_from);
	if (rv != CKR_OK)
		return rv;
	if (set_key_id(k, id, idlen, label, labellen, kcv, kcvlen) != 0)
		*nomem = 1;
	return CKR_OK;
}

static int
eval_aes(struct token *t, const struct kek_tokmechs *tm, struct kek *k,
    const uint8_t *id, size_t idlen, const uint8_t *label, size_t labellen,
    int copy, char *err, size_t errlen)
{
	char whys[KEYRING_REASON_MAX];
	CK_KEY_TYPE type;
	CK_ULONG len = 0;
	CK_RV rv;
	unsigned allowed;
	int ok, r, nomem;
	const char *what = "CKA_KEY_TYPE";

	if ((rv = get_fixed(t, k->token_obj, CKA_KEY_TYPE, &type,
	    sizeof(type))) != CKR_OK)
		goto rv_fail;
	if (type == CKK_AES) {
		what = "CKA_VALUE_LEN";
		if ((rv = get_fixed(t, k->token_obj, CKA_VALUE_LEN, &len,
		    sizeof(len))) != CKR_OK)
			goto rv_fail;
		snprintf(k->type, sizeof(k->type), "aes-%lu",
		    8 * (unsigned long)len);
	} else {
		snprintf(k->type, sizeof(k->type), "secret-0x%lx",
		    (unsigned long)type);
	}
	if (type != CKK_AES) {
		snprintf(k->unfit, sizeof(k->unfit), "is not an AES key "
		    "(CKA_KEY_TYPE=0x%lx); p11kms needs an AES-256 key or an "
		    "RSA key pair", (unsigned long)type);
		goto unfit;
	}
	if (len != KEK_AES_LEN) {
		snprintf(k->unfit, sizeof(k->unfit), "is AES-%lu "
		    "(CKA_VALUE_LEN=%lu); p11kms requires AES-256 "
		    "(CKA_VALUE_LEN=32)", 8 * (unsigned long)len,
		    (unsigned long)len);
		goto unfit;
	}
	what = "CKA_SENSITIVE/CKA_EXTRACTABLE";
	if ((rv = check_locked(t, k, &ok)) != CKR_OK)
		goto rv_fail;
	if (!ok)
		goto unfit;

	what = "its usage attributes";
	if ((rv = rows_allowed(t, tm, k, CK_INVALID_HANDLE, &allowed)) !=
	    CKR_OK)
		goto rv_fail;
	k->mk.obj = k->token_obj;
	if (copy && allowed != 0)
		copy_key(t, k);
	if ((r = try_rows(t, k, &allowed, err, errlen)) != 0)
		return r;
	if (k->mk.obj != k->token_obj && k->caps != allowed) {
		/*
		 * The copy failed a round trip the attributes allow: drop it
		 * (only an optimisation) and judge the token key itself.
		 */
		(void)t->fn->C_DestroyObject(t->session, k->mk.obj);
		k->mk.obj = k->token_obj;
		if ((rv = rows_allowed(t, tm, k, CK_INVALID_HANDLE,
		    &allowed)) != CKR_OK)
			goto rv_fail;
		if ((r = try_rows(t, k, &allowed, err, errlen)) != 0)
			return r;
	}
	if (k->caps == 0) {
		why_all(k, 0, whys, sizeof(whys));
		snprintf(k->unfit, sizeof(k->unfit), "can use no AES "
		    "mechanism (%.500s)", whys);
		goto unfit;
	}

	/* Fit: now it must have a name. */
	what = "its check value (for the key_id)";
	if ((rv = aes_key_id(t, k, id, idlen, label, labellen,
	    &nomem)) != CKR_OK) {
		if (token_rv_is_fault(rv) && !mech_rv_refusal(rv))
			goto rv_fail;
		snprintf(k->unfit, sizeof(k->unfit), "has no check value the "
		    "token will compute (CKA_CHECK_VALUE, or AES-GCM, AES-KWP "
		    "or AES-ECB of a constant: %s), so it has no key_id",
		    token_rv_name(rv));
		return KEYRING_E_CONFIG;
	}
	if (nomem) {
		token_err(err, errlen, "SHA-256 failed");
		return KEYRING_E_NOMEM;
	}
	return KEYRING_OK;
unfit:
	/* Best effort for an unfit AES key: the listing shows its key_id. */
	if (type == CKK_AES)
		(void)aes_key_id(t, k, id, idlen, label, labellen, &nomem);
	return KEYRING_E_CONFIG;
rv_fail:
	token_err(err, errlen, "key %s: cannot read %s: %s", k->uri, what,
	    token_rv_name(rv));
	return rv_status(rv);
}

/*
 * The public half of the RSA key pair: a token public key with the same
 * CKA_ID and modulus (the modulus makes the pairing certain; the id is how
 * operators and keygen name a pair).
 */
static CK_RV
find_public(struct token *t, const uint8_t *id, size_t idlen,
    const uint8_t *n, size_t nlen, CK_OBJECT_HANDLE *pub)
{
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_KEY_TYPE kt = CKK_RSA;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_MODULUS, (void *)n, nlen },
		{ CKA_ID, (void *)id, idlen },
	};
	size_t found = 0;
	CK_RV rv;

	*pub = CK_INVALID_HANDLE;
	/* Equal public keys are interchangeable: take the first. */
	rv = token_find_all(t, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), pub, 1,
	    &found, NULL);
	if (rv == CKR_OK && found == 0)
		*pub = CK_INVALID_HANDLE;
	return rv;
}

static int
eval_rsa(struct token *t, const struct kek_tokmechs *tm, struct kek *k,
    const uint8_t *id, size_t idlen, const uint8_t *label, size_t labellen,
    char *err, size_t errlen)
{
	uint8_t n[MECH_RSA_MAX_BYTES * 2], e[ATTR_MAX], kcv[KEYID_FP_LEN];
	char whys[KEYRING_REASON_MAX];
	const uint8_t *np = n;
	size_t nlen, elen, bits;
	CK_KEY_TYPE type;
	CK_RV rv;
	unsigned allowed = 0;
	int ok, r;
	const char *what = "CKA_KEY_TYPE";

	if ((rv = get_fixed(t, k->token_obj, CKA_KEY_TYPE, &type,
	    sizeof(type))) != CKR_OK)
		goto rv_fail;
	if (type != CKK_RSA) {
		snprintf(k->type, sizeof(k->type), "private-0x%lx",
		    (unsigned long)type);
		snprintf(k->unfit, sizeof(k->unfit), "is not an RSA private "
		    "key (CKA_KEY_TYPE=0x%lx); p11kms needs an AES-256 key or "
		    "an RSA key pair", (unsigned long)type);
		return KEYRING_E_CONFIG;
	}
	what = "CKA_MODULUS";
	rv = get_bytes(t, k->token_obj, CKA_MODULUS, n, sizeof(n), &nlen);
	if (rv == CKR_ATTRIBUTE_VALUE_INVALID) {	/* over 8192 bits */
		snprintf(k->type, sizeof(k->type), "rsa");
		snprintf(k->unfit, sizeof(k->unfit), "is larger than RSA-%d: "
		    "its ciphertexts would pass the apiserver's 1024-byte "
		    "limit", KEK_RSA_MAX_BITS);
		return KEYRING_E_CONFIG;
	}
	if (rv != CKR_OK)
		goto rv_fail;
	while (nlen > 0 && *np == 0) {
		np++;
		nlen--;
	}
	bits = 8 * nlen;
	snprintf(k->type, sizeof(k->type), "rsa-%zu", bits);
	k->mk.rsa_len = nlen;
	k->mk.obj = k->token_obj;

	/* The public key gives the exponent and the key_id. */
	what = "its public key";
	if ((rv = find_public(t, id, idlen, np, nlen, &k->mk.pub)) != CKR_OK)
		goto rv_fail;
	if (k->mk.pub != CK_INVALID_HANDLE) {
		what = "CKA_PUBLIC_EXPONENT";
		rv = get_bytes(t, k->mk.pub, CKA_PUBLIC_EXPONENT, e, sizeof(e),
		    &elen);
		if (rv != CKR_OK)
			goto rv_fail;
		if (keyid_rsa_check_value(np, nlen, e, elen, kcv) == 0 &&
		    set_key_id(k, id, idlen, label, labellen, kcv,
		    sizeof(kcv)) != 0) {
			token_err(err, errlen, "SHA-256 failed");
			return KEYRING_E_NOMEM;
		}
		k->kcv_from = "modulus and exponent";
	}

	if (bits < KEK_RSA_MIN_BITS || bits > KEK_RSA_MAX_BITS) {
		snprintf(k->unfit, sizeof(k->unfit), "is RSA-%zu; p11kms "
		    "takes RSA-%d to RSA-%d (larger ciphertexts would pass the "
		    "apiserver's 1024-byte limit)", bits, KEK_RSA_MIN_BITS,
		    KEK_RSA_MAX_BITS);
		return KEYRING_E_CONFIG;
	}
	what = "CKA_SENSITIVE/CKA_EXTRACTABLE";
	if ((rv = check_locked(t, k, &ok)) != CKR_OK)
		goto rv_fail;
	if (!ok)
		return KEYRING_E_CONFIG;
	if (k->mk.pub == CK_INVALID_HANDLE) {
		snprintf(k->unfit, sizeof(k->unfit), "has no public key on "
		    "the token with the same CKA_ID and modulus; p11kms seals "
		    "with the public key inside the token");
		return KEYRING_E_CONFIG;
	}
	if (k->key_id[0] == '\0') {
		snprintf(k->unfit, sizeof(k->unfit), "has a public key with "
		    "an empty exponent");
		return KEYRING_E_CONFIG;
	}
	what = "its usage attributes";
	if ((rv = rows_allowed(t, tm, k, k->mk.pub, &allowed)) != CKR_OK)
		goto rv_fail;
	if ((r = try_rows(t, k, &allowed, err, errlen)) != 0)
		return r;
	if (k->caps == 0) {
		why_all(k, 1, whys, sizeof(whys));
		snprintf(k->unfit, sizeof(k->unfit), "cannot do RSA-OAEP "
		    "(%.500s)", whys);
		return KEYRING_E_CONFIG;
	}
	return KEYRING_OK;
rv_fail:
	token_err(err, errlen, "key %s: cannot read %s: %s", k->uri, what,
	    token_rv_name(rv));
	return rv_status(rv);
}

int
kek_eval(struct token *t, const struct kek_tokmechs *tm, CK_OBJECT_HANDLE h,
    CK_OBJECT_CLASS cls, struct kek *k, int copy, char *err, size_t errlen)
{
	uint8_t id[ATTR_MAX], label[ATTR_MAX];
	size_t idlen = 0, labellen = 0, o = 0, r;
	CK_RV rv;
	int ret;

	k->cls = cls;
	k->token_obj = h;
	k->mk.obj = h;
	k->mk.pub = CK_INVALID_HANDLE;
	k->mk.rsa_len = 0;
	k->caps = 0;
	k->seal_row = 0;
	k->kcv_from = "";
	memset(k->keyref, 0, sizeof(k->keyref));
	k->key_id[0] = k->type[0] = k->mechs[0] = k->unfit[0] = '\0';
	for (r = 0; r < MECH_NROWS; r++) {
		k->why[r][0] = '\0';
		k->detail[r] = NULL;
	}
	if ((rv = read_names(t, k, id, &idlen, label, &labellen)) != CKR_OK) {
		token_err(err, errlen, "key %s: cannot read CKA_ID/CKA_LABEL: "
		    "%s", k->uri, token_rv_name(rv));
		return rv_status(rv);
	}
	if (cls == CKO_SECRET_KEY)
		ret = eval_aes(t, tm, k, id, idlen, label, labellen, copy, err,
		    errlen);
	else if (cls == CKO_PRIVATE_KEY)
		ret = eval_rsa(t, tm, k, id, idlen, label, labellen, err,
		    errlen);
	else {
		snprintf(k->unfit, sizeof(k->unfit), "is not a key");
		ret = KEYRING_E_CONFIG;
	}
	for (r = 0; r < MECH_NROWS; r++) {
		if (!(k->caps & MECH_BIT(r)))
			continue;
		snprintf(k->mechs + o, sizeof(k->mechs) - o, "%s%s",
		    o > 0 ? "," : "", mech_table[r].name);
		o = strlen(k->mechs);
	}
	if (ret == KEYRING_E_CONFIG && k->unfit[0] == '\0')
		snprintf(k->unfit, sizeof(k->unfit), "is unfit for a reason "
		    "the token did not give");
	if (ret == KEYRING_E_CONFIG)
		token_err(err, errlen, "key %s %s", k->uri, k->unfit);
	return ret;
}
