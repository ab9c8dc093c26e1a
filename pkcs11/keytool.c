/*
 * keytool: the token side of `p11kms keygen` and `p11kms keys`
 * (contracts in keyring.h). Each call opens its own connection to the
 * token, like a keyring load, and judges keys with kek_eval(), so what
 * `keys` calls fit is exactly what the daemon accepts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/kek.h"
#include "pkcs11/keyring.h"
#include "pkcs11/token.h"

#define NEW_ID_LEN	16	/* random CKA_ID bytes for a new key */
#define RSA_DEFAULT_BITS 3072
#define LABEL_MAX	128	/* CKA_LABEL bytes keygen accepts */

/* Percent-encodes s (n bytes) as an RFC 7512 attribute value. */
static void
pct_append(char *out, size_t cap, const uint8_t *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = strlen(out), i;
	uint8_t c;

	for (i = 0; i < n && cap - o > 1; i++) {
		c = s[i];
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		    c == '_' || c == '~') {
			out[o++] = (char)c;
		} else {
			if (cap - o < 4)
				break;
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
}

/* "pkcs11:token=T;object=L;type=T", or id= when the label is empty. */
static void
key_uri(const struct token *t, const struct kek *k, const uint8_t *label,
    size_t labellen, char *out, size_t cap)
{
	size_t o;

	if (cap == 0)
		return;
	snprintf(out, cap, "pkcs11:token=");
	pct_append(out, cap, (const uint8_t *)t->label, strlen(t->label));
	o = strlen(out);
	if (labellen > 0) {
		snprintf(out + o, cap - o, ";object=");
		pct_append(out, cap, label, labellen);
	} else if (strstr(k->id_hex, "...") != NULL) {
		out[0] = '\0';		/* neither label nor a usable id */
		return;
	} else {
		snprintf(out + o, cap - o, ";id=");
		/* id_hex is already hex: encode each byte pair as %XX. */
		for (const char *p = k->id_hex; p[0] != '\0' && p[1] != '\0' &&
		    p[0] != '.'; p += 2) {
			o = strlen(out);
			snprintf(out + o, cap - o, "%%%c%c", p[0], p[1]);
		}
	}
	o = strlen(out);
	snprintf(out + o, cap - o, ";type=%s", k->cls == CKO_PRIVATE_KEY ?
	    "private" : "secret-key");
}

static void
info_from(const struct token *t, const struct kek *k, const uint8_t *label,
    size_t labellen, int fit, struct keyring_key_info *info)
{
	memset(info, 0, sizeof(*info));
	snprintf(info->label, sizeof(info->label), "%s", k->label);
	snprintf(info->id_hex, sizeof(info->id_hex), "%s", k->id_hex);
	snprintf(info->key_id, sizeof(info->key_id), "%s", k->key_id);
	snprintf(info->type, sizeof(info->type), "%s", k->type);
	snprintf(info->mechanisms, sizeof(info->mechanisms), "%s", k->mechs);
	info->fit = fit;
	if (!fit)
		snprintf(info->reason, sizeof(info->reason), "%s", k->unfit);
	key_uri(t, k, label, labellen, info->uri, sizeof(info->uri));
}

/* Raw CKA_LABEL (for the URI: the printable copy may have lost bytes). */
static void
raw_label(struct token *t, CK_OBJECT_HANDLE h, uint8_t *buf, size_t cap,
    size_t *len)
{
	CK_ATTRIBUTE a = { CKA_LABEL, buf, cap };

	*len = 0;
	if (t->fn->C_GetAttributeValue(t->session, h, &a, 1) == CKR_OK &&
	    a.ulValueLen != CK_UNAVAILABLE_INFORMATION && a.ulValueLen <= cap)
		*len = a.ulValueLen;
}

/*
 * Opens the token the URI names and logs in (when pin_file or the URI's
 * pin-source gives a PIN, or need_login). *uri and *t are the caller's to
 * free on every path.
 */
static int
tool_open(const struct keyring_tool_config *cfg, int need_login,
    P11KitUri **uri, struct token **t, char *uri_text, size_t uri_cap,
    int *logged_in, char *err, size_t errlen)
{
	const char *pin_source;
	int ret;

	*uri = NULL;
	*t = NULL;
	*logged_in = 0;
	token_uri_redact(cfg->uri, uri_text, uri_cap);
	if ((ret = token_uri_parse(cfg->uri, uri, err, errlen)) != 0)
		return ret;
	if ((ret = token_open(cfg->module, cfg->module_init_args, *uri,
	    uri_text, t, err, errlen)) != 0)
		return ret;
	pin_source = p11_kit_uri_get_pin_source(*uri);
	if (!need_login && cfg->pin_file == NULL && pin_source == NULL)
		return KEYRING_OK;
	if ((ret = token_login(*t, cfg->pin_file, pin_source, err,
	    errlen)) != 0)
		return ret;
	*logged_in = 1;
	return KEYRING_OK;
}

int
keyring_list(const struct keyring_tool_config *cfg,
    struct keyring_key_info **out, size_t *n, int *truncated, char *err,
    size_t errlen)
{
	static const CK_OBJECT_CLASS classes[] = {
		CKO_SECRET_KEY, CKO_PRIVATE_KEY,
	};
	P11KitUri *uri = NULL;
	struct token *t = NULL;
	struct kek_tokmechs tm;
	struct keyring_key_info *list = NULL;
	struct kek *k = NULL;
	CK_OBJECT_HANDLE *hs = NULL;
	CK_OBJECT_CLASS cls, want = 0;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[16], *a;
	CK_ULONG nattrs, i;
	CK_RV rv;
	uint8_t label[LABEL_MAX];
	char uri_text[TOKEN_URI_TEXT_MAX];
	size_t c, j, found, count = 0, nt, labellen;
	int more, any_more = 0, logged_in, r, ret;

	*out = NULL;
	*n = 0;
	if (truncated != NULL)
		*truncated = 0;
	if ((ret = tool_open(cfg, 0, &uri, &t, uri_text, sizeof(uri_text),
	    &logged_in, err, errlen)) != 0)
		goto out;
	if ((ret = kek_token_mechs(t, &tm, err, errlen)) != 0)
		goto out;
	ret = KEYRING_E_NOMEM;
	if ((list = calloc(KEYRING_LIST_MAX, sizeof(*list))) == NULL ||
	    (hs = calloc(KEYRING_LIST_MAX, sizeof(*hs))) == NULL ||
	    (k = calloc(1, sizeof(*k))) == NULL) {
		token_err(err, errlen, "out of memory");
		goto out;
	}

	/* The URI's object attributes filter; its type picks the class. */
	nt = 0;
	a = p11_kit_uri_get_attributes(uri, &nattrs);
	for (i = 0; i < nattrs && nt < sizeof(tmpl) / sizeof(tmpl[0]) - 2;
	    i++) {
		if (a[i].type == CKA_CLASS) {
			if (a[i].ulValueLen == sizeof(want))
				memcpy(&want, a[i].pValue, sizeof(want));
			continue;
		}
		tmpl[nt++] = a[i];
	}
	tmpl[nt].type = CKA_TOKEN;
	tmpl[nt].pValue = &yes;
	tmpl[nt++].ulValueLen = sizeof(yes);
	for (c = 0; c < sizeof(classes) / sizeof(classes[0]); c++) {
		cls = classes[c];
		if (want != 0 && want != cls)
			continue;
		tmpl[nt].type = CKA_CLASS;
		tmpl[nt].pValue = &cls;
		tmpl[nt].ulValueLen = sizeof(cls);
		rv = token_find_all(t, tmpl, nt + 1, hs,
		    KEYRING_LIST_MAX - count, &found, &more);
		if (rv != CKR_OK) {
			ret = token_rv_is_fault(rv) ? KEYRING_E_TOKEN :
			    KEYRING_E_CONFIG;
			token_err(err, errlen, "listing the keys of token "
			    "'%s' failed: %s", t->label, token_rv_name(rv));
			goto out;
		}
		any_more |= more;
		for (j = 0; j < found; j++) {
			memset(k, 0, sizeof(*k));
			raw_label(t, hs[j], label, sizeof(label), &labellen);
			/* Names the key in fault messages; no URI was given. */
			token_printable(label, labellen, k->label,
			    sizeof(k->label));
			snprintf(k->uri, sizeof(k->uri), "'%s' on token '%s'",
			    k->label, t->label);
			r = kek_eval(t, &tm, hs[j], cls, k, 0, err, errlen);
			if (r == KEYRING_E_NOMEM) {
				ret = r;
				goto out;
			}
			/* A fault judging one key is that key's verdict. */
			if (r != KEYRING_OK && r != KEYRING_E_CONFIG)
				snprintf(k->unfit, sizeof(k->unfit), "could "
				    "not be judged: %s", err);
			info_from(t, k, label, labellen, r == KEYRING_OK,
			    &list[count++]);
		}
	}

	/* success */
	token_err(err, errlen, "%s", logged_in ? "" : "not logged in: "
	    "private keys are not shown");
	*out = list;
	list = NULL;
	*n = count;
	if (truncated != NULL)
		*truncated = any_more;
	ret = KEYRING_OK;
out:
	free(list);
	free(hs);
	if (k != NULL) {
		OPENSSL_cleanse(k, sizeof(*k));
		free(k);
	}
	token_close(t);
	if (uri != NULL)
		p11_kit_uri_free(uri);
	return ret;
}

/* Copies a URI attribute of 1..LABEL_MAX bytes; name is "object" or "id". */
static int
copy_name(const CK_ATTRIBUTE *a, uint8_t *out, size_t *outlen,
    const char *name, const char *uri_text, char *err, size_t errlen)
{
	if (a->ulValueLen == 0 || a->ulValueLen > LABEL_MAX) {
		token_err(err, errlen, "URI %s: %s= must be 1 to %d bytes",
		    uri_text, name, LABEL_MAX);
		return KEYRING_E_CONFIG;
	}
	memcpy(out, a->pValue, a->ulValueLen);
	*outlen = a->ulValueLen;
	return KEYRING_OK;
}

/* Reads the label (required) and id (optional) keygen should use. */
static int
gen_names(P11KitUri *uri, const char *uri_text, uint8_t *label,
    size_t *labellen, uint8_t *id, size_t *idlen, CK_OBJECT_CLASS *cls,
    char *err, size_t errlen)
{
	CK_ATTRIBUTE *a;
	CK_ULONG n, i;

	*labellen = *idlen = 0;
	*cls = 0;
	a = p11_kit_uri_get_attributes(uri, &n);
	for (i = 0; i < n; i++) {
		switch (a[i].type) {
		case CKA_LABEL:
			if (copy_name(&a[i], label, labellen, "object",
			    uri_text, err, errlen) != KEYRING_OK)
				return KEYRING_E_CONFIG;
			break;
		case CKA_ID:
			if (copy_name(&a[i], id, idlen, "id", uri_text, err,
			    errlen) != KEYRING_OK)
				return KEYRING_E_CONFIG;
			break;
		case CKA_CLASS:
			if (a[i].ulValueLen == sizeof(*cls))
				memcpy(cls, a[i].pValue, sizeof(*cls));
			break;
		default:
			token_err(err, errlen, "URI %s: keygen takes token "
			    "attributes, object=, id= and type= only",
			    uri_text);
			return KEYRING_E_CONFIG;
		}
	}
	if (*labellen == 0) {
		token_err(err, errlen, "URI %s names no label for the new key: "
		    "add object=LABEL, e.g. pkcs11:token=kms;object=kek2",
		    uri_text);
		return KEYRING_E_CONFIG;
	}
	return KEYRING_OK;
}

/* Any token object with this attribute value (label or id) already? */
static CK_RV
exists(struct token *t, CK_ATTRIBUTE_TYPE type, const uint8_t *v, size_t n,
    int *yes_out)
{
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{ type, (void *)v, n },
		{ CKA_TOKEN, &yes, sizeof(yes) },
	};
	CK_OBJECT_HANDLE h;
	size_t found = 0;
	CK_RV rv;

	rv = token_find_all(t, tmpl, 2, &h, 1, &found, NULL);
	*yes_out = found > 0;
	return rv;
}

/*
 * Generates the key on the read-write session rw. *h (and *pub for RSA)
 * receive the new objects. CKA_ALLOWED_MECHANISMS pins the key to its one
 * mechanism; a token that does not know that attribute gets the template
 * without it (the other attributes already forbid every other use but
 * raw AES-ECB/CBC on a GCM key, which stays inside the token).
 */
static CK_RV
generate(struct token *t, CK_SESSION_HANDLE rw, uint8_t mech, unsigned bits,
    const uint8_t *label, size_t labellen, const uint8_t *id, size_t idlen,
    CK_OBJECT_HANDLE *h, CK_OBJECT_HANDLE *pub, int *pinned)
{
	CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
	CK_KEY_TYPE aes = CKK_AES;
	CK_ULONG len = 32, mbits = bits;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_BBOOL gcm = mech == ENVELOPE_MECH_AES_GCM ? CK_TRUE : CK_FALSE;
	CK_BBOOL kwp = mech == ENVELOPE_MECH_AES_KWP ? CK_TRUE : CK_FALSE;
	CK_BYTE e65537[] = { 0x01, 0x00, 0x01 };
	CK_MECHANISM_TYPE allow_aes = mech == ENVELOPE_MECH_AES_GCM ?
	    CKM_AES_GCM : CKM_AES_KEY_WRAP_PAD;
	CK_MECHANISM_TYPE allow_rsa = CKM_RSA_PKCS_OAEP;
	CK_ATTRIBUTE akey[] = {
		{ CKA_CLASS, &sk, sizeof(sk) },
		{ CKA_KEY_TYPE, &aes, sizeof(aes) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_ENCRYPT, &gcm, sizeof(gcm) },
		{ CKA_DECRYPT, &gcm, sizeof(gcm) },
		{ CKA_WRAP, &kwp, sizeof(kwp) },
		{ CKA_UNWRAP, &kwp, sizeof(kwp) },
		{ CKA_SIGN, &no, sizeof(no) },
		{ CKA_VERIFY, &no, sizeof(no) },
		{ CKA_DERIVE, &no, sizeof(no) },
		{ CKA_LABEL, (void *)label, labellen },
		{ CKA_ID, (void *)id, idlen },
		{ CKA_ALLOWED_MECHANISMS, &allow_aes, sizeof(allow_aes) },
	};
	CK_ATTRIBUTE apub[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &no, sizeof(no) },
		{ CKA_ENCRYPT, &yes, sizeof(yes) },
		{ CKA_VERIFY, &no, sizeof(no) },
		{ CKA_VERIFY_RECOVER, &no, sizeof(no) },
		{ CKA_WRAP, &no, sizeof(no) },
		{ CKA_DERIVE, &no, sizeof(no) },
		{ CKA_MODULUS_BITS, &mbits, sizeof(mbits) },
		{ CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537) },
		{ CKA_LABEL, (void *)label, labellen },
		{ CKA_ID, (void *)id, idlen },
		{ CKA_ALLOWED_MECHANISMS, &allow_rsa, sizeof(allow_rsa) },
	};
	CK_ATTRIBUTE apriv[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_DECRYPT, &yes, sizeof(yes) },
		{ CKA_SIGN, &no, sizeof(no) },
		{ CKA_SIGN_RECOVER, &no, sizeof(no) },
		{ CKA_UNWRAP, &no, sizeof(no) },
		{ CKA_DERIVE, &no, sizeof(no) },
		{ CKA_LABEL, (void *)label, labellen },
		{ CKA_ID, (void *)id, idlen },
		{ CKA_ALLOWED_MECHANISMS, &allow_rsa, sizeof(allow_rsa) },
	};
	CK_MECHANISM gen_aes = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_MECHANISM gen_rsa = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
	CK_ULONG na = sizeof(akey) / sizeof(akey[0]);
	CK_ULONG np = sizeof(apub) / sizeof(apub[0]);
	CK_ULONG nk = sizeof(apriv) / sizeof(apriv[0]);
	CK_RV rv;
	int tries;

	*h = *pub = CK_INVALID_HANDLE;
	*pinned = 1;
	for (tries = 0; tries < 2; tries++) {
		if (mech_is_rsa(mech))
			rv = t->fn->C_GenerateKeyPair(rw, &gen_rsa, apub, np,
			    apriv, nk, pub, h);
		else
			rv = t->fn->C_GenerateKey(rw, &gen_aes, akey, na, h);
		if (rv != CKR_ATTRIBUTE_TYPE_INVALID &&
		    rv != CKR_TEMPLATE_INCONSISTENT &&
		    rv != CKR_ATTRIBUTE_VALUE_INVALID)
			break;
		/* CKA_ALLOWED_MECHANISMS is last in each template. */
		na--;
		np--;
		nk--;
		*pinned = 0;
	}
	if (rv != CKR_OK)
		*h = *pub = CK_INVALID_HANDLE;
	return rv;
}

int
keyring_keygen(const struct keyring_tool_config *cfg,
    struct keyring_key_info *out, char *err, size_t errlen)
{
	P11KitUri *uri = NULL;
	struct token *t = NULL;
	struct kek_tokmechs tm;
	struct kek *k = NULL;
	CK_SESSION_HANDLE rw = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
	CK_OBJECT_CLASS ucls, cls;
	CK_RV rv;
	uint8_t label[LABEL_MAX], id[LABEL_MAX], mech;
	char uri_text[TOKEN_URI_TEXT_MAX];
	const char *mname;
	size_t labellen, idlen;
	unsigned bits;
	int logged_in, found, pinned = 0, r, ret = KEYRING_E_CONFIG;

	memset(out, 0, sizeof(*out));
	mname = cfg->mechanism != NULL ? cfg->mechanism : "aes-gcm";
	if (strcmp(mname, "aes-gcm") == 0)
		mech = ENVELOPE_MECH_AES_GCM;
	else if (strcmp(mname, "aes-kwp") == 0)
		mech = ENVELOPE_MECH_AES_KWP;
	else if (strcmp(mname, "rsa-oaep") == 0)
		mech = ENVELOPE_MECH_RSA_OAEP_SHA256;
	else {
		token_err(err, errlen, "unknown mechanism '%.40s': use "
		    "aes-gcm, aes-kwp or rsa-oaep", mname);
		goto out;
	}
	bits = cfg->rsa_bits != 0 ? cfg->rsa_bits : RSA_DEFAULT_BITS;
	if (mech_is_rsa(mech) && (bits < KEK_RSA_MIN_BITS ||
	    bits > KEK_RSA_MAX_BITS || bits % 8 != 0)) {
		token_err(err, errlen, "RSA key size %u: use %d to %d bits, a "
		    "multiple of 8 (3072 by default)", bits, KEK_RSA_MIN_BITS,
		    KEK_RSA_MAX_BITS);
		goto out;
	}
	cls = mech_is_rsa(mech) ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		ret = KEYRING_E_NOMEM;
		token_err(err, errlen, "out of memory");
		goto out;
	}
	if ((ret = tool_open(cfg, 1, &uri, &t, uri_text, sizeof(uri_text),
	    &logged_in, err, errlen)) != 0)
		goto out;
	ret = KEYRING_E_CONFIG;
	if ((r = gen_names(uri, uri_text, label, &labellen, id, &idlen,
	    &ucls, err, errlen)) != 0)
		goto out;
	if (ucls != 0 && ucls != cls) {
		token_err(err, errlen, "URI %s: type= does not fit %s (use "
		    "type=%s or leave it out)", uri_text, mname,
		    cls == CKO_PRIVATE_KEY ? "private" : "secret-key");
		goto out;
	}
	if ((ret = kek_token_mechs(t, &tm, err, errlen)) != 0)
		goto out;
	ret = KEYRING_E_CONFIG;
	if ((mech == ENVELOPE_MECH_AES_GCM && !tm.gcm) ||
	    (mech == ENVELOPE_MECH_AES_KWP && !tm.kwp) ||
	    (mech_is_rsa(mech) && !tm.oaep)) {
		token_err(err, errlen, "token '%s' does not offer %s; choose "
		    "another --mechanism (aes-gcm, aes-kwp, rsa-oaep)",
		    t->label, mech == ENVELOPE_MECH_AES_GCM ? "CKM_AES_GCM" :
		    mech == ENVELOPE_MECH_AES_KWP ? "CKM_AES_KEY_WRAP_PAD" :
		    "CKM_RSA_PKCS_OAEP");
		goto out;
	}

	/* Never overwrite, never shadow: the label and id must be new. */
	if ((rv = exists(t, CKA_LABEL, label, labellen, &found)) != CKR_OK)
		goto rv_fail;
	if (found) {
		token_printable(label, labellen, k->label, sizeof(k->label));
		token_err(err, errlen, "token '%s' already holds an object "
		    "labelled '%s'; keygen never overwrites a key: choose "
		    "another object= label", t->label, k->label);
		goto out;
	}
	if (idlen == 0) {
		if (RAND_bytes(id, NEW_ID_LEN) != 1) {
			ret = KEYRING_E_TOKEN;
			token_err(err, errlen, "RAND_bytes failed");
			goto out;
		}
		idlen = NEW_ID_LEN;
	}
	if ((rv = exists(t, CKA_ID, id, idlen, &found)) != CKR_OK)
		goto rv_fail;
	if (found) {
		token_err(err, errlen, "token '%s' already holds an object "
		    "with that id=; leave id= out for a random one", t->label);
		goto out;
	}

	rv = t->fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
	    NULL, NULL, &rw);
	if (rv != CKR_OK) {
		rw = CK_INVALID_HANDLE;
		goto rv_fail;
	}
	if ((rv = generate(t, rw, mech, bits, label, labellen, id, idlen, &h,
	    &pub, &pinned)) != CKR_OK)
		goto rv_fail;

	/* Judge it as a load would; a key that fails is not left behind. */
	token_uri_redact(cfg->uri, k->uri, sizeof(k->uri));
	r = kek_eval(t, &tm, h, cls, k, 0, err, errlen);
	if (r == KEYRING_OK && !(k->caps & KEK_CAP(mech)) &&
	    !(mech_is_rsa(mech) &&
	    (k->caps & KEK_CAP(ENVELOPE_MECH_RSA_OAEP_SHA1)))) {
		r = KEYRING_E_CONFIG;
		token_err(err, errlen, "the new key failed its %s self-test: "
		    "%s", mname, k->why[mech]);
	}
	if (r != KEYRING_OK) {
		ret = r;
		goto out;
	}

	/* success */
	info_from(t, k, label, labellen, 1, out);
	if (!pinned)
		snprintf(out->reason, sizeof(out->reason), "the token does "
		    "not take CKA_ALLOWED_MECHANISMS: the key is not pinned "
		    "to %s", mname);
	h = pub = CK_INVALID_HANDLE;	/* keep them */
	ret = KEYRING_OK;
	token_err(err, errlen, "%s", "");
	goto out;
rv_fail:
	ret = token_rv_is_fault(rv) ? KEYRING_E_TOKEN : KEYRING_E_CONFIG;
	token_err(err, errlen, "keygen on token '%s' failed: %s%s", t->label,
	    token_rv_name(rv), rv == CKR_SESSION_READ_ONLY ||
	    rv == CKR_TOKEN_WRITE_PROTECTED ? " (the token is read-only)" :
	    "");
out:
	if (rw != CK_INVALID_HANDLE) {
		if (h != CK_INVALID_HANDLE)
			(void)t->fn->C_DestroyObject(rw, h);
		if (pub != CK_INVALID_HANDLE)
			(void)t->fn->C_DestroyObject(rw, pub);
		(void)t->fn->C_CloseSession(rw);
	}
	if (k != NULL) {
		OPENSSL_cleanse(k, sizeof(*k));
		free(k);
	}
	token_close(t);
	if (uri != NULL)
		p11_kit_uri_free(uri);
	return ret;
}
