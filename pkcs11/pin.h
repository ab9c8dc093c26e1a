/*
 * pin: the user PIN, read from a file for each login and wiped after it.
 * Internal to pkcs11/ (token.h includes it).
 */
#ifndef P11KMS_PIN_H
#define P11KMS_PIN_H

#include <stddef.h>

struct token;

/*
 * Reads a PIN file into pin (cap bytes, not NUL-terminated), without one
 * trailing "\n" or "\r\n". Refused with KEYRING_E_PIN before a byte is
 * read: a symbolic link or a FIFO or other non-regular file (opened
 * O_NOFOLLOW | O_NONBLOCK, so never blocking), a file or directory failing
 * filesafe.h's rules (FILESAFE_SECRET: group read is allowed). Refused
 * after reading: empty, over cap - 2 bytes, or any line break left after
 * that one ("1234\n\n"), which the token would take as part of the PIN.
 * On failure pin is wiped. Caller wipes pin after use.
 */
int token_read_pin(const char *path, char *pin, size_t cap, size_t *len,
    char *err, size_t errlen);

/*
 * Logs the user in once, on t->session. The PIN comes from pin_file, else
 * from pin_source (a URI's pin-source: a path or a "file:" URI), else the
 * token must not need one. Every PIN buffer is wiped before returning. A
 * refused PIN is KEYRING_E_PIN and is never retried; already logged in (by
 * another struct token on the same module) is success.
 */
int token_login(struct token *t, const char *pin_file, const char *pin_source,
    char *err, size_t errlen);

#endif
