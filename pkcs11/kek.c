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

static const char *const mech_title[KEK_NMECH] = {
	NULL, "AES-GCM", "AES-KWP", "RSA-OAEP-SHA256", "RSA-OAEP-SHA1",
};

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

static int
has_mech(const CK_MECHANISM_TYPE *list, CK_ULONG n, CK_MECHANISM_TYPE m)
{
	CK_ULONG i;

	for (i = 0; list != NULL && i < n; i++)
		if (list[i] == m)
			return 1;
	return 0;
}

/*
 * Listed AND described with the flags we need: SoftHSM with
 * "slots.mechanisms" drops a mechanism from the list but still describes
 * it in C_GetMechanismInfo (the round trip has the last word anyway).
 */
static CK_RV
offers(struct token *t, const CK_MECHANISM_TYPE *list, CK_ULONG n,
    CK_MECHANISM_TYPE m, CK_FLAGS need, int *out)
{
	CK_MECHANISM_INFO mi;
	CK_RV rv;

	*out = 0;
	if (!has_mech(list, n, m))
		return CKR_OK;
	/* Zeroed first: SoftHSM ORs flags into what it is given. */
	memset(&mi, 0, sizeof(mi));
	rv = t->fn->C_GetMechanismInfo(t->slot, m, &mi);
	if (rv == CKR_MECHANISM_INVALID)
		return CKR_OK;
	if (rv != CKR_OK)
		return rv;
	*out = (mi.flags & need) == need;
	return CKR_OK;
}

int
kek_token_mechs(struct token *t, struct kek_tokmechs *tm, char *err,
    size_t errlen)
{
	CK_MECHANISM_TYPE *list = NULL, *tmp;
	CK_ULONG n = 0;
	CK_RV rv;
	int tries, ret = KEYRING_E_TOKEN;
	const char *what = "C_GetMechanismList";

	memset(tm, 0, sizeof(*tm));
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
	if (list == NULL)
		n = 0;
	what = "C_GetMechanismInfo";
	if ((rv = offers(t, list, n, CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT,
	    &tm->gcm)) != CKR_OK ||
	    (rv = offers(t, list, n, CKM_AES_KEY_WRAP_PAD, CKF_WRAP |
	    CKF_UNWRAP, &tm->kwp)) != CKR_OK ||
	    (rv = offers(t, list, n, CKM_RSA_PKCS_OAEP, CKF_ENCRYPT |
	    CKF_DECRYPT, &tm->oaep)) != CKR_OK)
		goto rv_fail;

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
 * One round trip of a random canary with mech, as seal/open will do it.
 * KEYRING_OK: it works. KEYRING_E_CONFIG: the token or key refuses it for
 * good (k->why[mech] says how). Anything else: a fault, in err.
 */
static int
selftest(struct token *t, struct kek *k, uint8_t mech, char *err,
    size_t errlen)
{
	uint8_t pt[32], ct[KEYRING_MAX_CIPHERTEXT], back[KEYRING_MAX_PLAINTEXT];
	struct envelope e, d;
	size_t hlen, blen = 0, backlen = 0;
	struct mech_err me = mech_err_start();
	const char *step = "seal";
	int r, ret = KEYRING_E_TOKEN;

	memset(&e, 0, sizeof(e));
	e.format = ENVELOPE_FORMAT_V1;
	e.mech = mech;
	memcpy(e.keyref, k->keyref, sizeof(e.keyref));
	if (RAND_bytes(pt, sizeof(pt)) != 1 || mech_set_iv(&e) != 0) {
		token_err(err, errlen, "RAND_bytes failed");
		goto out;
	}
	hlen = envelope_encode_header(&e, ct, sizeof(ct));
	r = mech_seal(t->fn, t->session, &k->mk, &e, pt, sizeof(pt),
	    ct + hlen, sizeof(ct) - hlen, &blen, &me);
	if (r == KEYRING_OK) {
		step = "open";
		r = envelope_decode(ct, hlen + blen, &d) != 0 ?
		    KEYRING_E_INVALID : mech_open(t->fn, t->session, &k->mk,
		    &d, back, sizeof(back), &backlen, &me);
	}
	if (r == KEYRING_OK && (backlen != sizeof(pt) ||
	    CRYPTO_memcmp(back, pt, sizeof(pt)) != 0))
		r = KEYRING_E_AUTH;
	if (r == KEYRING_OK) {
		ret = KEYRING_OK;
		goto out;
	}
	if (me.rv != CKR_OK && !mech_rv_refusal(me.rv)) {
		token_err(err, errlen, "key %s: %s self-test (%s) in token "
		    "'%s' failed: %s: %s", k->uri, mech_title[mech], step,
		    t->label, me.call, token_rv_name(me.rv));
		ret = KEYRING_E_TOKEN;	/* not a lasting refusal: no verdict */
		goto out;
	}
	if (me.rv != CKR_OK)
		snprintf(k->why[mech], KEK_WHY_MAX, "the token refused its "
		    "%s self-test (%s: %s: %s)", mech_title[mech], step,
		    me.call, token_rv_name(me.rv));
	else
		snprintf(k->why[mech], KEK_WHY_MAX, "its %s self-test did "
		    "not give the plaintext back", mech_title[mech]);
	ret = KEYRING_E_CONFIG;
out:
	OPENSSL_cleanse(pt, sizeof(pt));
	OPENSSL_cleanse(back, sizeof(back));
	return ret;
}

/*
 * Self-tests each mechanism in allowed, recording the outcome in k->caps
 * and k->why. Returns KEYRING_OK unless the token faulted.
 */
static int
try_all(struct token *t, struct kek *k, unsigned allowed, char *err,
    size_t errlen)
{
	uint8_t m;
	int r;

	k->caps = 0;
	for (m = 1; m < KEK_NMECH; m++) {
		if (!(allowed & KEK_CAP(m)))
			continue;
		r = selftest(t, k, m, err, errlen);
		if (r == KEYRING_OK)
			k->caps |= KEK_CAP(m);
		else if (r != KEYRING_E_CONFIG)
			return r;
	}
	return KEYRING_OK;
}

/* Both flags set, else a reason naming them into why. */
static CK_RV
need_pair(struct token *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE a,
    const char *an, CK_ATTRIBUTE_TYPE b, const char *bn, char *why,
    const char *which)
{
	int va, vb;
	CK_RV rv;

	if ((rv = get_bool(t, h, a, &va)) != CKR_OK ||
	    (rv = get_bool(t, h, b, &vb)) != CKR_OK)
		return rv;
	if (why[0] == '\0' && !(va && vb))
		snprintf(why, KEK_WHY_MAX, "%s%s%s %s false (%s needs both "
		    "%s and %s)", !va ? an : "", !va && !vb ? " and " : "",
		    !vb ? bn : "", !va && !vb ? "are" : "is", which, an, bn);
	return CKR_OK;
}

/*
 * The AES mechanisms the token offers and the key's attributes allow, as
 * KEK_CAP bits; k->why says why each other one is out.
 */
static CK_RV
aes_allowed(struct token *t, const struct kek_tokmechs *tm, struct kek *k,
    unsigned *allowed)
{
	char *gcm = k->why[ENVELOPE_MECH_AES_GCM];
	char *kwp = k->why[ENVELOPE_MECH_AES_KWP];
	CK_RV rv;

	*allowed = 0;
	gcm[0] = kwp[0] = '\0';
	if (!tm->gcm)
		snprintf(gcm, KEK_WHY_MAX, "token '%s' does not offer "
		    "CKM_AES_GCM for encrypt and decrypt", t->label);
	if (!tm->kwp)
		snprintf(kwp, KEK_WHY_MAX, "token '%s' does not offer "
		    "CKM_AES_KEY_WRAP_PAD for wrap and unwrap", t->label);
	if ((rv = need_pair(t, k->token_obj, CKA_ENCRYPT, "CKA_ENCRYPT",
	    CKA_DECRYPT, "CKA_DECRYPT", gcm, "AES-GCM")) != CKR_OK ||
	    (rv = need_pair(t, k->token_obj, CKA_WRAP, "CKA_WRAP", CKA_UNWRAP,
	    "CKA_UNWRAP", kwp, "AES-KWP")) != CKR_OK)
		return rv;
	if (gcm[0] == '\0')
		*allowed |= KEK_CAP(ENVELOPE_MECH_AES_GCM);
	if (kwp[0] == '\0')
		*allowed |= KEK_CAP(ENVELOPE_MECH_AES_KWP);
	return CKR_OK;
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

static int
eval_aes(struct token *t, const struct kek_tokmechs *tm, struct kek *k,
    const uint8_t *id, size_t idlen, const uint8_t *label, size_t labellen,
    int copy, char *err, size_t errlen)
{
	uint8_t kcv[KEYID_KCV_MAX];
	CK_KEY_TYPE type;
	CK_ULONG len = 0;
	size_t kcvlen;
	CK_RV rv;
	unsigned allowed;
	int ok, r, have_id = 0;
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
	/* Best effort for an unfit key: the listing shows it if it can. */
	if (type == CKK_AES &&
	    keyid_check_value(t->fn, t->session, k->token_obj, KEYID_KCV_AUTO,
	    kcv, &kcvlen) == CKR_OK &&
	    set_key_id(k, id, idlen, label, labellen, kcv, kcvlen) == 0)
		have_id = 1;

	if (type != CKK_AES) {
		snprintf(k->unfit, sizeof(k->unfit), "is not an AES key "
		    "(CKA_KEY_TYPE=0x%lx); p11kms needs an AES-256 key or an "
		    "RSA key pair", (unsigned long)type);
		return KEYRING_E_CONFIG;
	}
	if (len != KEK_AES_LEN) {
		snprintf(k->unfit, sizeof(k->unfit), "is AES-%lu "
		    "(CKA_VALUE_LEN=%lu); p11kms requires AES-256 "
		    "(CKA_VALUE_LEN=32)", 8 * (unsigned long)len,
		    (unsigned long)len);
		return KEYRING_E_CONFIG;
	}
	what = "CKA_SENSITIVE/CKA_EXTRACTABLE";
	if ((rv = check_locked(t, k, &ok)) != CKR_OK)
		goto rv_fail;
	if (!ok)
		return KEYRING_E_CONFIG;
	if (!have_id) {
		/* Again, for the reason: the key is fit, so this must work. */
		what = "its check value";
		if ((rv = keyid_check_value(t->fn, t->session, k->token_obj,
		    KEYID_KCV_AUTO, kcv, &kcvlen)) != CKR_OK)
			goto rv_fail;
		if (set_key_id(k, id, idlen, label, labellen, kcv,
		    kcvlen) != 0) {
			token_err(err, errlen, "SHA-256 failed");
			return KEYRING_E_NOMEM;
		}
	}

	what = "CKA_ENCRYPT/CKA_DECRYPT/CKA_WRAP/CKA_UNWRAP";
	if ((rv = aes_allowed(t, tm, k, &allowed)) != CKR_OK)
		goto rv_fail;
	k->mk.obj = k->token_obj;
	if (copy && allowed != 0)
		copy_key(t, k);
	if ((r = try_all(t, k, allowed, err, errlen)) != 0)
		return r;
	if (k->mk.obj != k->token_obj && k->caps != allowed) {
		/*
		 * The copy failed a round trip the attributes allow: drop it
		 * (only an optimisation) and judge the token key itself.
		 */
		(void)t->fn->C_DestroyObject(t->session, k->mk.obj);
		k->mk.obj = k->token_obj;
		if ((rv = aes_allowed(t, tm, k, &allowed)) != CKR_OK)
			goto rv_fail;
		if ((r = try_all(t, k, allowed, err, errlen)) != 0)
			return r;
	}
	if (k->caps == 0) {
		snprintf(k->unfit, sizeof(k->unfit), "can do neither AES-GCM "
		    "(%s) nor AES-KWP (%s); generate it with p11kms keygen",
		    k->why[ENVELOPE_MECH_AES_GCM],
		    k->why[ENVELOPE_MECH_AES_KWP]);
		return KEYRING_E_CONFIG;
	}
	return KEYRING_OK;
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
	const uint8_t *np = n;
	size_t nlen, elen, bits;
	CK_KEY_TYPE type;
	CK_RV rv;
	unsigned allowed = 0;
	int ok, dec, enc, r;
	const char *what = "CKA_KEY_TYPE";
	uint8_t m;

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
	what = "CKA_DECRYPT";
	if ((rv = get_bool(t, k->token_obj, CKA_DECRYPT, &dec)) != CKR_OK)
		goto rv_fail;
	what = "CKA_ENCRYPT of the public key";
	if ((rv = get_bool(t, k->mk.pub, CKA_ENCRYPT, &enc)) != CKR_OK)
		goto rv_fail;
	for (m = ENVELOPE_MECH_RSA_OAEP_SHA256;
	    m <= ENVELOPE_MECH_RSA_OAEP_SHA1; m++) {
		if (!tm->oaep)
			snprintf(k->why[m], KEK_WHY_MAX, "token '%s' does not "
			    "offer CKM_RSA_PKCS_OAEP for encrypt and decrypt",
			    t->label);
		else if (!dec || !enc)
			snprintf(k->why[m], KEK_WHY_MAX, "%s is false",
			    !dec ? "CKA_DECRYPT of the private key" :
			    "CKA_ENCRYPT of the public key");
		else
			allowed |= KEK_CAP(m);
	}
	if ((r = try_all(t, k, allowed, err, errlen)) != 0)
		return r;
	if (k->caps == 0) {
		snprintf(k->unfit, sizeof(k->unfit), "cannot do RSA-OAEP "
		    "(SHA-256: %s; SHA-1: %s)",
		    k->why[ENVELOPE_MECH_RSA_OAEP_SHA256],
		    k->why[ENVELOPE_MECH_RSA_OAEP_SHA1]);
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
	size_t idlen = 0, labellen = 0, o = 0;
	CK_RV rv;
	uint8_t m;
	int r;

	k->cls = cls;
	k->token_obj = h;
	k->mk.obj = h;
	k->mk.pub = CK_INVALID_HANDLE;
	k->mk.rsa_len = 0;
	k->caps = 0;
	k->seal_mech = 0;
	k->key_id[0] = k->type[0] = k->mechs[0] = k->unfit[0] = '\0';
	for (m = 0; m < KEK_NMECH; m++)
		k->why[m][0] = '\0';
	if ((rv = read_names(t, k, id, &idlen, label, &labellen)) != CKR_OK) {
		token_err(err, errlen, "key %s: cannot read CKA_ID/CKA_LABEL: "
		    "%s", k->uri, token_rv_name(rv));
		return rv_status(rv);
	}
	if (cls == CKO_SECRET_KEY)
		r = eval_aes(t, tm, k, id, idlen, label, labellen, copy, err,
		    errlen);
	else if (cls == CKO_PRIVATE_KEY)
		r = eval_rsa(t, tm, k, id, idlen, label, labellen, err,
		    errlen);
	else {
		snprintf(k->unfit, sizeof(k->unfit), "is not a key");
		r = KEYRING_E_CONFIG;
	}
	for (m = 1; m < KEK_NMECH; m++) {
		if (!(k->caps & KEK_CAP(m)))
			continue;
		snprintf(k->mechs + o, sizeof(k->mechs) - o, "%s%s",
		    o > 0 ? "," : "", envelope_mech_name(m));
		o = strlen(k->mechs);
	}
	if (r == KEYRING_E_CONFIG && k->unfit[0] != '\0')
		token_err(err, errlen, "key %s %s", k->uri, k->unfit);
	return r;
}
