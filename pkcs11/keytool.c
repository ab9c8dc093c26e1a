/*
 * keytool: the token side of `p11kms keygen` and `p11kms keys`
 * (contracts in keyring.h). Each call opens its own connection to the
 * token, like a keyring load, and judges keys with kek_eval(), so what
 * `keys` calls fit is exactly what the daemon accepts.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/kek.h"
#include "pkcs11/keyid.h"
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
	size_t r;

	memset(info, 0, sizeof(*info));
	/* How auto would seal with it: the first row it passed. */
	for (r = 0; fit && r < MECH_NROWS; r++) {
		if (!(k->caps & MECH_BIT(r)))
			continue;
		snprintf(info->seal, sizeof(info->seal), "%s%s%s",
		    mech_table[r].name, k->detail[r] != NULL &&
		    k->detail[r][0] != '\0' ? ": " : "", k->detail[r] != NULL ?
		    k->detail[r] : "");
		break;
	}
	snprintf(info->key_id_from, sizeof(info->key_id_from), "%s",
	    k->kcv_from != NULL ? k->kcv_from : "");
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

	/* success: what err says now are notes, one a line */
	token_search_warning(t, err, errlen);
	if (!logged_in) {
		size_t o = strlen(err);

		token_err(err + o, errlen - o, "%snot logged in: private keys "
		    "are not shown", o > 0 ? "\n" : "");
	}
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

/* One attribute of a keygen template; optional ones may be dropped. */
struct gen_attr {
	CK_ATTRIBUTE a;
	const char *name;	/* "CKA_VERIFY=false", for the notes */
	int drop;		/* 0: required; else drop order, 1 first */
	int on;			/* still in the template */
};

/* Compacts the attributes still on into out; returns their number. */
static CK_ULONG
gen_pack(const struct gen_attr *g, size_t n, CK_ATTRIBUTE *out)
{
	CK_ULONG o = 0;
	size_t i;

	for (i = 0; i < n; i++)
		if (g[i].on)
			out[o++] = g[i].a;
	return o;
}

/* Turns off the next optional attribute; its name, or NULL if none left. */
static const char *
gen_drop(struct gen_attr *g, size_t n, struct gen_attr *g2, size_t n2)
{
	struct gen_attr *best = NULL;
	size_t i;

	for (i = 0; i < n + n2; i++) {
		struct gen_attr *x = i < n ? &g[i] : &g2[i - n];

		if (x->on && x->drop > 0 && (best == NULL ||
		    x->drop < best->drop))
			best = x;
	}
	if (best == NULL)
		return NULL;
	best->on = 0;
	return best->name;
}

/*
 * A template refusal worth retrying with fewer attributes: anything but a
 * fault of the session, login or device, or a refusal no template fixes.
 */
static int
gen_retry(CK_RV rv)
{
	switch (rv) {
	case CKR_MECHANISM_INVALID:
	case CKR_FUNCTION_NOT_SUPPORTED:
	case CKR_SESSION_READ_ONLY:
	case CKR_TOKEN_WRITE_PROTECTED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_DEVICE_MEMORY:
	case CKR_HOST_MEMORY:
		return 0;
	case CKR_ARGUMENTS_BAD:
		return 1;
	}
	return !token_rv_is_fault(rv);
}

static void
note_add(char *notes, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
note_add(char *notes, size_t cap, const char *fmt, ...)
{
	size_t o = strlen(notes);
	va_list ap;

	if (o > 0 && o + 1 < cap)
		notes[o++] = '\n';
	notes[o] = '\0';
	va_start(ap, fmt);
	(void)vsnprintf(notes + o, cap - o, fmt, ap);
	va_end(ap);
}

#define NATTR(x)	(sizeof(x) / sizeof((x)[0]))
#define B(t, v, nm, d)	{ { (t), (v), sizeof(CK_BBOOL) }, (nm), (d), 1 }

/*
 * Generates the key for row d on the read-write session rw. *h (and *pub
 * for RSA) receive the new objects. CKA_ALLOWED_MECHANISMS pins the key to
 * its one mechanism; every attribute beyond what makes a KEK (class, type,
 * size, token, sensitive, non-extractable, its two use flags, label, id) is
 * optional and dropped one at a time while the token refuses the
 * template, each drop noted. *pinned: the pin survived.
 */
static CK_RV
generate(struct token *t, CK_SESSION_HANDLE rw, const struct mech_def *d,
    const struct keyring_tool_config *cfg, unsigned bits,
    const uint8_t *label, size_t labellen, const uint8_t *id, size_t idlen,
    CK_OBJECT_HANDLE *h, CK_OBJECT_HANDLE *pub, int *pinned,
    const char **call, char *notes, size_t notescap)
{
	CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
	CK_KEY_TYPE aes = CKK_AES;
	CK_ULONG len = 32, mbits = bits;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	int enc = d->use[0] == CKA_ENCRYPT;
	CK_BYTE e65537[] = { 0x01, 0x00, 0x01 };
	CK_MECHANISM_TYPE allow = d->ckm;
	struct gen_attr akey[] = {
		{ { CKA_CLASS, &sk, sizeof(sk) }, "CKA_CLASS", 0, 1 },
		{ { CKA_KEY_TYPE, &aes, sizeof(aes) }, "CKA_KEY_TYPE", 0, 1 },
		{ { CKA_VALUE_LEN, &len, sizeof(len) }, "CKA_VALUE_LEN", 0, 1 },
		B(CKA_TOKEN, &yes, "CKA_TOKEN", 0),
		B(CKA_SENSITIVE, &yes, "CKA_SENSITIVE", 0),
		B(CKA_EXTRACTABLE, &no, "CKA_EXTRACTABLE", 0),
		B(d->use[0], &yes, d->use_name[0], 0),
		B(d->use[1], &yes, d->use_name[1], 0),
		{ { CKA_LABEL, (void *)label, labellen }, "CKA_LABEL", 0, 1 },
		{ { CKA_ID, (void *)id, idlen }, "CKA_ID", 0, 1 },
		B(CKA_PRIVATE, &yes, "CKA_PRIVATE=true", 9),
		/* The other use pair, off. */
		B(enc ? CKA_WRAP : CKA_ENCRYPT, &no,
		    enc ? "CKA_WRAP=false" : "CKA_ENCRYPT=false", 8),
		B(enc ? CKA_UNWRAP : CKA_DECRYPT, &no,
		    enc ? "CKA_UNWRAP=false" : "CKA_DECRYPT=false", 7),
		B(CKA_SIGN, &no, "CKA_SIGN=false", 4),
		B(CKA_VERIFY, &no, "CKA_VERIFY=false", 3),
		B(CKA_DERIVE, &no, "CKA_DERIVE=false", 2),
		{ { CKA_ALLOWED_MECHANISMS, &allow, sizeof(allow) },
		  "CKA_ALLOWED_MECHANISMS", 1, 1 },
	};
	struct gen_attr apub[] = {
		B(CKA_TOKEN, &yes, "CKA_TOKEN", 0),
		{ { CKA_MODULUS_BITS, &mbits, sizeof(mbits) },
		  "CKA_MODULUS_BITS", 0, 1 },
		{ { CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537) },
		  "CKA_PUBLIC_EXPONENT", 0, 1 },
		{ { CKA_LABEL, (void *)label, labellen }, "CKA_LABEL", 0, 1 },
		{ { CKA_ID, (void *)id, idlen }, "CKA_ID", 0, 1 },
		B(CKA_PRIVATE, &no, "CKA_PRIVATE=false (public key)", 20),
		B(CKA_ENCRYPT, &yes, "CKA_ENCRYPT=true (public key)", 18),
		B(CKA_WRAP, &no, "CKA_WRAP=false (public key)", 12),
		B(CKA_VERIFY_RECOVER, &no,
		    "CKA_VERIFY_RECOVER=false (public key)", 10),
		B(CKA_VERIFY, &no, "CKA_VERIFY=false (public key)", 8),
		B(CKA_DERIVE, &no, "CKA_DERIVE=false (public key)", 6),
		{ { CKA_ALLOWED_MECHANISMS, &allow, sizeof(allow) },
		  "CKA_ALLOWED_MECHANISMS (public key)", 2, 1 },
	};
	struct gen_attr apriv[] = {
		B(CKA_TOKEN, &yes, "CKA_TOKEN", 0),
		B(CKA_SENSITIVE, &yes, "CKA_SENSITIVE", 0),
		B(CKA_EXTRACTABLE, &no, "CKA_EXTRACTABLE", 0),
		{ { CKA_LABEL, (void *)label, labellen }, "CKA_LABEL", 0, 1 },
		{ { CKA_ID, (void *)id, idlen }, "CKA_ID", 0, 1 },
		B(CKA_PRIVATE, &yes, "CKA_PRIVATE=true (private key)", 21),
		B(CKA_DECRYPT, &yes, "CKA_DECRYPT=true (private key)", 19),
		B(CKA_UNWRAP, &no, "CKA_UNWRAP=false (private key)", 13),
		B(CKA_SIGN_RECOVER, &no,
		    "CKA_SIGN_RECOVER=false (private key)", 11),
		B(CKA_SIGN, &no, "CKA_SIGN=false (private key)", 9),
		B(CKA_DERIVE, &no, "CKA_DERIVE=false (private key)", 7),
		{ { CKA_ALLOWED_MECHANISMS, &allow, sizeof(allow) },
		  "CKA_ALLOWED_MECHANISMS (private key)", 1, 1 },
	};
	CK_ATTRIBUTE t1[NATTR(akey)], t2[NATTR(apriv)];
	CK_MECHANISM gen_aes = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_MECHANISM gen_rsa = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
	int rsa = (d->flags & MECH_F_RSA) != 0;
	const char *dropped;
	CK_ULONG n1, n2;
	CK_RV rv;

	*h = *pub = CK_INVALID_HANDLE;
	*call = rsa ? "C_GenerateKeyPair" : "C_GenerateKey";
	if (!rsa && cfg->import_value != NULL) {	/* a given value */
		akey[2].a.type = CKA_VALUE;
		akey[2].a.pValue = (void *)cfg->import_value;
		akey[2].a.ulValueLen = cfg->import_len;
		akey[2].name = "CKA_VALUE";
		*call = "C_CreateObject";
	}
	for (;;) {
		if (rsa) {
			n1 = gen_pack(apub, NATTR(apub), t1);
			n2 = gen_pack(apriv, NATTR(apriv), t2);
			rv = t->fn->C_GenerateKeyPair(rw, &gen_rsa, t1, n1, t2,
			    n2, pub, h);
		} else {
			n1 = gen_pack(akey, NATTR(akey), t1);
			rv = cfg->import_value != NULL ?
			    t->fn->C_CreateObject(rw, t1, n1, h) :
			    t->fn->C_GenerateKey(rw, &gen_aes, t1, n1, h);
		}
		if (rv == CKR_OK || !gen_retry(rv))
			break;
		dropped = rsa ? gen_drop(apub, NATTR(apub), apriv,
		    NATTR(apriv)) : gen_drop(akey, NATTR(akey), NULL, 0);
		if (dropped == NULL)
			break;
		note_add(notes, notescap, "the token refused the template "
		    "(%s: %s); retrying without %s", *call, token_rv_name(rv),
		    dropped);
	}
	*pinned = rsa ? apub[NATTR(apub) - 1].on && apriv[NATTR(apriv) - 1].on :
	    akey[NATTR(akey) - 1].on;
	if (rv != CKR_OK)
		*h = *pub = CK_INVALID_HANDLE;
	return rv;
}

/* MECH_BIT of every row with this --mechanism name. */
static unsigned
cfg_rows(const char *cfg)
{
	unsigned m = 0;
	size_t r;

	for (r = 0; r < MECH_NROWS; r++)
		if (strcmp(mech_table[r].cfg, cfg) == 0)
			m |= MECH_BIT(r);
	return m;
}

/*
 * The row keygen makes a key for: the mechanism asked (NULL/"aes": the
 * best AES row the token offers), among the rows the token offers. NULL,
 * with err, when there is none.
 */
static const struct mech_def *
gen_row(struct token *t, const struct kek_tokmechs *tm, const char *mname,
    char *err, size_t errlen)
{
	size_t r;
	int aes = mname == NULL || strcmp(mname, "aes") == 0;

	for (r = 0; r < MECH_NROWS; r++) {
		const struct mech_def *d = &mech_table[r];

		if (!(tm->offered & MECH_BIT(r)) ||
		    /* One key serves every GCM form: make the plain one. */
		    (d->env == ENVELOPE_MECH_AES_GCM_TIV))
			continue;
		if (aes ? !(d->flags & MECH_F_RSA) : strcmp(d->cfg, mname) == 0)
			return d;
	}
	if (aes)
		token_err(err, errlen, "token '%s' offers no AES mechanism "
		    "p11kms can use (CKM_AES_GCM, CKM_AES_KEY_WRAP_PAD or "
		    "CKM_AES_ECB for encrypt and decrypt); use --type rsa for "
		    "an RSA-OAEP key pair", t->label);
	else if (strcmp(mname, "aes-gcm") == 0)
		token_err(err, errlen, "token '%s' does not offer CKM_AES_GCM "
		    "for encrypt and decrypt; leave --mechanism out (an AES key "
		    "for what the token has) or use --type rsa", t->label);
	else if (strcmp(mname, "aes-kwp") == 0)
		token_err(err, errlen, "token '%s' offers neither "
		    "CKM_AES_KEY_WRAP_PAD nor CKM_AES_ECB; choose another "
		    "--mechanism (aes-gcm, rsa-oaep)", t->label);
	else
		token_err(err, errlen, "token '%s' does not offer "
		    "CKM_RSA_PKCS_OAEP for encrypt and decrypt; choose another "
		    "--mechanism (aes-gcm, aes-kwp)", t->label);
	return NULL;
}

int
keyring_keygen(const struct keyring_tool_config *cfg,
    struct keyring_key_info *out, char *err, size_t errlen)
{
	P11KitUri *uri = NULL;
	struct token *t = NULL;
	struct kek_tokmechs tm;
	struct kek *k = NULL;
	const struct mech_def *d;
	CK_SESSION_HANDLE rw = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
	CK_OBJECT_CLASS ucls, cls;
	CK_RV rv;
	uint8_t label[LABEL_MAX], id[LABEL_MAX];
	char uri_text[TOKEN_URI_TEXT_MAX], notes[KEYRING_REASON_MAX];
	const char *mname = cfg->mechanism, *call = "C_OpenSession";
	size_t labellen, idlen;
	unsigned bits;
	int logged_in, found, pinned = 0, rsa, r, ret = KEYRING_E_CONFIG;

	memset(out, 0, sizeof(*out));
	notes[0] = '\0';
	if (mname != NULL && strcmp(mname, "auto") == 0)
		mname = NULL;
	if (mname != NULL && strcmp(mname, "aes") != 0 &&
	    !mech_cfg_valid(mname)) {
		token_err(err, errlen, "unknown mechanism '%.40s': use "
		    "aes-gcm, aes-kwp or rsa-oaep (or leave it out)", mname);
		goto out;
	}
	rsa = mname != NULL && strcmp(mname, "rsa-oaep") == 0;
	bits = cfg->rsa_bits != 0 ? cfg->rsa_bits : RSA_DEFAULT_BITS;
	if (rsa && (bits < KEK_RSA_MIN_BITS || bits > KEK_RSA_MAX_BITS ||
	    bits % 8 != 0)) {
		token_err(err, errlen, "RSA key size %u: use %d to %d bits, a "
		    "multiple of 8 (3072 by default)", bits, KEK_RSA_MIN_BITS,
		    KEK_RSA_MAX_BITS);
		goto out;
	}
	cls = rsa ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
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
		    "type=%s or leave it out)", uri_text, rsa ? "rsa-oaep" :
		    "an AES key", cls == CKO_PRIVATE_KEY ? "private" :
		    "secret-key");
		goto out;
	}
	if ((ret = kek_token_mechs(t, &tm, err, errlen)) != 0)
		goto out;
	ret = KEYRING_E_CONFIG;
	if ((d = gen_row(t, &tm, mname, err, errlen)) == NULL)
		goto out;

	/* Never overwrite, never shadow: the label and id must be new. */
	call = "C_FindObjects";
	if ((rv = exists(t, CKA_LABEL, label, labellen, &found)) != CKR_OK)
		goto rv_fail;
	if (found) {
		token_printable(label, labellen, k->label, sizeof(k->label));
		token_err(err, errlen, "token '%s' already holds an object "
		    "labelled '%s'; keygen never overwrites a key: choose "
		    "another object= label", t->label, k->label);
		goto out;
	}
	if (idlen == 0 && cfg->import_value != NULL) {
		token_err(err, errlen, "--import needs id= in the URI, the "
		    "same on every token (the key_id covers it)");
		goto out;
	}
	if (idlen == 0) {
		/* The marker gives the new key a long check value (keyid.h). */
		memcpy(id, KEYID_V2_ID_PREFIX, KEYID_V2_ID_PREFIX_LEN);
		if (RAND_bytes(id + KEYID_V2_ID_PREFIX_LEN, NEW_ID_LEN) != 1) {
			ret = KEYRING_E_TOKEN;
			token_err(err, errlen, "RAND_bytes failed");
			goto out;
		}
		idlen = KEYID_V2_ID_PREFIX_LEN + NEW_ID_LEN;
	}
	if ((rv = exists(t, CKA_ID, id, idlen, &found)) != CKR_OK)
		goto rv_fail;
	if (found) {
		token_err(err, errlen, "token '%s' already holds an object "
		    "with that id=; leave id= out for a random one", t->label);
		goto out;
	}

	call = "C_OpenSession";
	rv = t->fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
	    NULL, NULL, &rw);
	if (rv != CKR_OK) {
		rw = CK_INVALID_HANDLE;
		goto rv_fail;
	}
	if ((rv = generate(t, rw, d, cfg, bits, label, labellen, id,
	    idlen, &h, &pub, &pinned, &call, notes, sizeof(notes))) != CKR_OK)
		goto gen_fail;

	/* Judge it as a load would; a key that fails is not left behind. */
	token_uri_redact(cfg->uri, k->uri, sizeof(k->uri));
	r = kek_eval(t, &tm, h, cls, k, 0, err, errlen);
	/* Any form of its mechanism will do (a FIPS token's GCM is its own). */
	if (r == KEYRING_OK && !(k->caps & cfg_rows(d->cfg))) {
		r = KEYRING_E_CONFIG;
		token_err(err, errlen, "the new key failed its %s self-test: "
		    "%s", d->title, k->why[d - mech_table]);
	}
	if (r != KEYRING_OK) {
		/* The token made it, but not as asked: the token's fault. */
		ret = r == KEYRING_E_CONFIG ? KEYRING_E_TOKEN : r;
		goto out;
	}

	/* success */
	info_from(t, k, label, labellen, 1, out);
	snprintf(out->notes, sizeof(out->notes), "%s", notes);
	if (!pinned)
		snprintf(out->reason, sizeof(out->reason), "the token does "
		    "not take CKA_ALLOWED_MECHANISMS: the key is not pinned "
		    "to %s", d->title);
	h = pub = CK_INVALID_HANDLE;	/* keep them */
	ret = KEYRING_OK;
	token_err(err, errlen, "%s", "");
	goto out;
gen_fail:
	/* The token refused to make it: a token error (exit 1), not usage. */
	ret = KEYRING_E_TOKEN;
	if (rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_MECHANISM_INVALID)
		token_err(err, errlen, "token '%s' does not generate %s keys "
		    "(%s: %s): create the key with the token's own tool "
		    "(sensitive, non-extractable) and check it with p11kms "
		    "keys%s", t->label, rsa ? "RSA" : "AES", call,
		    token_rv_name(rv), rsa ? "" : ", or use --type rsa");
	else
		token_err(err, errlen, "keygen on token '%s' failed: %s: "
		    "%s%s%s", t->label, call, token_rv_name(rv),
		    notes[0] != '\0' ? ", also after dropping every optional "
		    "attribute" : "", rv == CKR_SESSION_READ_ONLY ||
		    rv == CKR_TOKEN_WRITE_PROTECTED ? " (the token is "
		    "read-only)" : "");
	goto out;
rv_fail:
	ret = token_rv_is_fault(rv) ? KEYRING_E_TOKEN : KEYRING_E_CONFIG;
	token_err(err, errlen, "keygen on token '%s' failed: %s: %s%s",
	    t->label, call, token_rv_name(rv), rv == CKR_SESSION_READ_ONLY ||
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
	/* Notes of a failed keygen still tell what was tried. */
	if (ret != KEYRING_OK)
		snprintf(out->notes, sizeof(out->notes), "%s", notes);
	token_close(t);
	if (uri != NULL)
		p11_kit_uri_free(uri);
	return ret;
}
