/*
 * uri: RFC 7512 key URIs as p11kms takes them. Internal to pkcs11/
 * (token.h includes it). No message ever holds a PIN.
 */
#ifndef P11KMS_URI_H
#define P11KMS_URI_H

#include <stddef.h>

#include <p11-kit/uri.h>

/*
 * Copies the URI s into out (cap bytes) without pin-value / pin-source
 * attributes, truncated if need be. Safe to print.
 */
void token_uri_redact(const char *s, char *out, size_t cap);

/*
 * Parses a key URI. Refuses a URI that p11-kit cannot parse, one with an
 * attribute p11-kit does not know (it would silently match nothing), one
 * carrying pin-value, and one selecting a slot by slot-id (slot ids are not
 * stable). *out is set only on success; caller frees with p11_kit_uri_free.
 */
int token_uri_parse(const char *s, P11KitUri **out, char *err, size_t errlen);

#endif
