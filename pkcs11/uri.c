/*
 * uri: RFC 7512 key URIs: parsing with p11-kit's rules plus ours (no
 * pin-value, no slot-id, no unknown attribute), and redaction of PIN
 * attributes for messages (see uri.h).
 */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "pkcs11/keyring.h"
#include "pkcs11/token.h"

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/*
 * 1 when the segment's attribute name is pin-value or pin-source, however
 * it is spelled: any case, percent-encoded ("pin%2Dvalue"). White space is
 * already gone (token_uri_redact drops it, as p11-kit's parser does).
 */
static int
is_pin_attr(const char *seg, size_t n)
{
	static const char *const names[] = { "pin-value", "pin-source" };
	char name[16];
	size_t i, k = 0;
	int hi, lo;

	for (i = 0; i < n && seg[i] != '=' && k < sizeof(name) - 1; i++) {
		if (seg[i] == '%' && n - i > 2 &&
		    (hi = hexval((unsigned char)seg[i + 1])) >= 0 &&
		    (lo = hexval((unsigned char)seg[i + 2])) >= 0) {
			name[k++] = (char)tolower(hi << 4 | lo);
			i += 2;
		} else {
			name[k++] = (char)tolower((unsigned char)seg[i]);
		}
	}
	name[k] = '\0';
	if (i < n && seg[i] != '=')
		return 0;	/* longer than any PIN attribute name */
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i]) == 0)
			return 1;
	return 0;
}

static void
append(char *out, size_t cap, size_t *o, const char *p, size_t n)
{
	if (n > cap - 1 - *o)
		n = cap - 1 - *o;
	memcpy(out + *o, p, n);
	*o += n;
	out[*o] = '\0';
}

void
token_uri_redact(const char *in, char *out, size_t cap)
{
	char clean[TOKEN_URI_TEXT_MAX];
	const char *p, *end, *s = clean;
	size_t o = 0, n, scheme, c = 0;
	int in_query = 0, nseg = 0;

	if (cap == 0)
		return;
	out[0] = '\0';
	if (in == NULL)
		return;
	/*
	 * p11-kit ignores white space anywhere in a URI, so "; pin-value=…"
	 * is a PIN too: drop it first. Other control bytes become '?', so a
	 * URI cannot break a log line.
	 */
	for (; *in != '\0' && c < sizeof(clean) - 1; in++) {
		unsigned char ch = (unsigned char)*in;

		if (isspace(ch))
			continue;
		clean[c++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
	}
	clean[c] = '\0';
	scheme = strncasecmp(s, "pkcs11:", 7) == 0 ? 7 : 0;
	append(out, cap, &o, s, scheme);
	/*
	 * Walk the segments (";" in the path, "&" in the query, "?" between),
	 * dropping pin-value/pin-source wherever they stand: p11-kit accepts
	 * them in the path too.
	 */
	for (p = s + scheme;; p = end + 1) {
		end = p + strcspn(p, in_query ? "&" : ";?");
		n = (size_t)(end - p);
		if (n > 0 && !is_pin_attr(p, n)) {
			if (nseg > 0)
				append(out, cap, &o, in_query ? "&" : ";", 1);
			else if (in_query)
				append(out, cap, &o, "?", 1);
			append(out, cap, &o, p, n);
			nseg++;
		}
		if (*end == '\0')
			break;
		if (*end == '?' && !in_query) {
			in_query = 1;
			nseg = 0;
		}
	}
}

int
token_uri_parse(const char *s, P11KitUri **out, char *err, size_t errlen)
{
	P11KitUri *uri = NULL;
	char text[TOKEN_URI_TEXT_MAX];
	const char *msg;
	int r, ret = KEYRING_E_CONFIG;

	*out = NULL;
	token_uri_redact(s, text, sizeof(text));
	if (s == NULL || *s == '\0') {
		token_err(err, errlen, "empty key URI");
		goto out;
	}
	if ((uri = p11_kit_uri_new()) == NULL) {
		ret = KEYRING_E_NOMEM;
		token_err(err, errlen, "out of memory");
		goto out;
	}
	r = p11_kit_uri_parse(s, P11_KIT_URI_FOR_ANY, uri);
	if (r != P11_KIT_URI_OK) {
		msg = p11_kit_uri_message(r);
		token_err(err, errlen, "key URI %s: %s", text,
		    msg != NULL ? msg : "cannot parse");
		goto out;
	}
	if (p11_kit_uri_get_pin_value(uri) != NULL) {
		token_err(err, errlen, "key URI %s carries pin-value: a PIN "
		    "must never be on a command line or in a config file; "
		    "use --pin-file or a pin-source in the URI", text);
		goto out;
	}
	if (p11_kit_uri_any_unrecognized(uri)) {
		token_err(err, errlen, "key URI %s has an attribute p11-kit "
		    "does not know (RFC 7512 path attributes: token, serial, "
		    "manufacturer, model, object, id, type, ...)", text);
		goto out;
	}
	if (p11_kit_uri_get_slot_id(uri) != (CK_SLOT_ID)-1) {
		token_err(err, errlen, "key URI %s selects a slot-id: slot "
		    "numbers change between runs; select the token with "
		    "token= or serial=", text);
		goto out;
	}

	/* success */
	*out = uri;
	uri = NULL;
	ret = KEYRING_OK;
out:
	if (uri != NULL)
		p11_kit_uri_free(uri);
	return ret;
}
