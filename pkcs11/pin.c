/*
 * pin: reading the user PIN from a file or a URI's pin-source, and the
 * PIN part of login (see pin.h). A PIN lives in a stack buffer for one
 * C_Login only and is wiped on every path.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "pkcs11/filesafe.h"
#include "pkcs11/keyring.h"
#include "pkcs11/token.h"

int
token_read_pin(const char *path, char *pin, size_t cap, size_t *len,
    char *err, size_t errlen)
{
	struct stat st;
	size_t n = 0;
	ssize_t r;
	int fd = -1, ret = KEYRING_E_PIN;

	*len = 0;
	if (cap < 3) {
		token_err(err, errlen, "PIN buffer too small");
		goto out;
	}
	/*
	 * O_NOFOLLOW: a link is refused, not followed; O_NONBLOCK: a FIFO
	 * opens at once (and is refused below) instead of blocking start-up
	 * with SIGTERM unheard.
	 */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW |
	    O_NONBLOCK);
	if (fd < 0 && errno == ELOOP) {
		token_err(err, errlen, "PIN file %s is a symbolic link: give "
		    "the path of the file itself", path);
		goto out;
	}
	if (fd < 0) {
		token_err(err, errlen, "cannot open PIN file %s: %s", path,
		    strerror(errno));
		goto out;
	}
	/*
	 * Like ssh with a private key: a PIN others can read, or others or
	 * the group can change, is refused, as is one in a directory they
	 * can write or owned by another user (filesafe.h). Group read stays
	 * allowed, for the root:p11kms 0440 layout conf/README.md describes.
	 */
	if (fstat(fd, &st) != 0) {
		token_err(err, errlen, "cannot stat PIN file %s: %s", path,
		    strerror(errno));
		goto out;
	}
	if (filesafe_check_stat(&st, path, "PIN file", FILESAFE_SECRET, err,
	    errlen) != 0 || filesafe_check_dirs(path, "PIN file", err,
	    errlen) != 0)
		goto out;
	/* Read one byte more than a PIN plus CRLF may take, to see excess. */
	while (n < cap) {
		r = read(fd, pin + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			token_err(err, errlen, "cannot read PIN file %s: %s",
			    path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n == cap) {
		/* Full: one more byte means a PIN we would cut short. */
		char extra;

		do
			r = read(fd, &extra, 1);
		while (r < 0 && errno == EINTR);
		OPENSSL_cleanse(&extra, sizeof(extra));
		if (r != 0) {
			token_err(err, errlen, "PIN file %s is longer than "
			    "%zu bytes", path, cap - 2);
			goto out;
		}
	}
	if (n > 0 && pin[n - 1] == '\n') {
		n--;
		if (n > 0 && pin[n - 1] == '\r')
			n--;
	}
	/*
	 * Another line break left ("1234\n\n", or one inside): the token
	 * would get it as part of the PIN, and each wrong try may count
	 * towards a lockout.
	 */
	if (memchr(pin, '\n', n) != NULL || memchr(pin, '\r', n) != NULL) {
		token_err(err, errlen, "PIN file %s holds more than one line "
		    "(an extra line break after the PIN?): not sent to the "
		    "token; write the PIN followed by at most one newline, "
		    "e.g. printf '%%s\\n' PIN > %s", path, path);
		goto out;
	}
	if (n > cap - 2) {
		token_err(err, errlen, "PIN file %s is longer than %zu bytes",
		    path, cap - 2);
		goto out;
	}
	if (n == 0) {
		token_err(err, errlen, "PIN file %s is empty", path);
		goto out;
	}

	/* success */
	*len = n;
	ret = KEYRING_OK;
out:
	if (ret != KEYRING_OK)
		OPENSSL_cleanse(pin, cap);
	if (fd >= 0)
		close(fd);
	return ret;
}

/*
 * Maps an RFC 7512 pin-source to a file path: "file:/p", "file:///p" or a
 * plain path. Other schemes are refused rather than read as a file name.
 */
static int
pin_source_path(const char *src, const char **path, char *err, size_t errlen)
{
	const char *p;

	*path = NULL;
	if (strncmp(src, "file://", 7) == 0) {
		p = src + 7;
		if (*p != '/') {
			token_err(err, errlen, "pin-source %.100s: only local "
			    "file:///path URIs are supported", src);
			return KEYRING_E_CONFIG;
		}
	} else if (strncmp(src, "file:", 5) == 0) {
		p = src + 5;
	} else {
		for (p = src; isalnum((unsigned char)*p) || *p == '+' ||
		    *p == '-' || *p == '.'; p++)
			;
		if (*p == ':' && p != src && isalpha((unsigned char)*src)) {
			token_err(err, errlen, "pin-source %.100s: only file "
			    "paths and file: URIs are supported", src);
			return KEYRING_E_CONFIG;
		}
		p = src;
	}
	if (*p == '\0') {
		token_err(err, errlen, "pin-source is empty");
		return KEYRING_E_CONFIG;
	}
	*path = p;
	return KEYRING_OK;
}

int
token_login(struct token *t, const char *pin_file, const char *pin_source,
    char *err, size_t errlen)
{
	char pin[TOKEN_PIN_MAX + 2];
	const char *path = NULL;
	size_t pinlen = 0;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	int ret;

	memset(&ti, 0, sizeof(ti));
	rv = t->fn->C_GetTokenInfo(t->slot, &ti);
	if (rv != CKR_OK) {
		ret = KEYRING_E_TOKEN;
		token_err(err, errlen, "token '%s': C_GetTokenInfo: %s",
		    t->label, token_rv_name(rv));
		goto out;
	}
	/* Never spend a try on a locked PIN. */
	if (ti.flags & CKF_USER_PIN_LOCKED) {
		ret = KEYRING_E_PIN;
		token_err(err, errlen, "the user PIN of token '%s' is locked; "
		    "unlock it with the SO PIN", t->label);
		goto out;
	}
	if (pin_file != NULL)
		path = pin_file;
	else if (pin_source != NULL &&
	    (ret = pin_source_path(pin_source, &path, err, errlen)) != 0)
		goto out;

	if (path == NULL) {
		if (ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH) {
			rv = t->fn->C_Login(t->session, CKU_USER, NULL, 0);
		} else if (ti.flags & CKF_LOGIN_REQUIRED) {
			ret = KEYRING_E_PIN;
			token_err(err, errlen, "token '%s' needs a user PIN: "
			    "give --pin-file or a pin-source in the key URI",
			    t->label);
			goto out;
		} else {
			ret = KEYRING_OK;	/* a token without login */
			goto out;
		}
	} else {
		if ((ret = token_read_pin(path, pin, sizeof(pin), &pinlen,
		    err, errlen)) != 0)
			goto out;
		rv = t->fn->C_Login(t->session, CKU_USER, (CK_UTF8CHAR *)pin,
		    pinlen);
	}

	switch (rv) {
	case CKR_OK:
	case CKR_USER_ALREADY_LOGGED_IN:
		ret = KEYRING_OK;
		break;
	case CKR_PIN_INCORRECT:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
	case CKR_PIN_LOCKED:
	case CKR_PIN_EXPIRED:
		ret = KEYRING_E_PIN;
		token_err(err, errlen, "token '%s' refused the user PIN%s%s "
		    "(%s); not retried, as retries could lock the token",
		    t->label, path != NULL ? " from " : "",
		    path != NULL ? path : "",
		    token_rv_name(rv));
		break;
	default:
		ret = KEYRING_E_TOKEN;
		token_err(err, errlen, "login to token '%s' failed: %s",
		    t->label, token_rv_name(rv));
		break;
	}
out:
	OPENSSL_cleanse(pin, sizeof(pin));
	return ret;
}
