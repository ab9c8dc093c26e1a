/*
 * token: PKCS#11 module loading through p11-kit, token selection and the
 * login session (URIs in uri.h, PINs in pin.h, CK_RV names in rvname.h,
 * all included here). Internal to pkcs11/: this is the one
 * header that hands CK_* types to the rest of pkcs11/ (keyring, keyid, pool).
 *
 * Every function that can fail returns a keyring status (keyring.h) and
 * writes a one-line message into err (may be NULL). No message ever holds a
 * PIN: URIs are printed through token_uri_redact().
 */
#ifndef P11KMS_TOKEN_H
#define P11KMS_TOKEN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include "pkcs11/p11v3.h"

/*
 * p11-kit 0.24's pkcs11.h maps its GNU field names to the standard ones
 * with macros and forgets to #undef these at its end, so plain words such
 * as iv_len or aad_len would be renamed in every file including us (it
 * broke struct envelope's iv_len). The standard names (pIv, ulIvLen, ...)
 * are unaffected.
 */
#undef ck_rsa_pkcs_mgf_type_t
#undef ck_rsa_pkcs_oaep_source_type_t
#undef hash_alg
#undef s_len
#undef source_data
#undef source_data_len
#undef counter_bits
#undef iv_ptr
#undef iv_len
#undef iv_bits
#undef aad_ptr
#undef aad_len
#undef tag_bits
#undef shared_data_len
#undef shared_data
#undef public_data_len
#undef public_data
#undef string_data
#undef string_data_len
#undef data_params

#define TOKEN_PIN_MAX		256	/* bytes; tokens cap PINs far lower */
#define TOKEN_LABEL_MAX		33	/* 32 padded chars + NUL */
#define TOKEN_URI_TEXT_MAX	256	/* redacted URI kept for messages */

struct token;

#include "pkcs11/pin.h"
#include "pkcs11/rvname.h"
#include "pkcs11/uri.h"

/*
 * One token in one module. The module is loaded "managed" by p11-kit, so it
 * was initialized with OS locking (multi-thread safe) and its sessions are
 * private to this struct: closing it never touches another struct token on
 * the same module, which is what makes a reload (new token opened, old one
 * closed) safe. With init args (token_open) it is unmanaged, initialized by
 * us with OS locking and reference-counted, so a reload is safe too.
 */
struct token {
	CK_FUNCTION_LIST *fn;	/* module holding the token; initialized */
	CK_FUNCTION_LIST **mods; /* p11-kit list fn belongs to, or NULL */
	/*
	 * The module's own PKCS#11 3.0 function list (C_GetInterface), or
	 * NULL. Its functions take the session and object handles of fn:
	 * p11-kit's managed layer passes handles through unchanged.
	 */
	P11V3_FUNCTION_LIST *fn3;
	CK_SLOT_ID slot;	/* process-local: never stored or printed */
	CK_FLAGS slot_flags;	/* C_GetSlotInfo's, read at token_open */
	CK_TOKEN_INFO info;
	/*
	 * Opened by token_open() and kept until token_close(): PKCS#11 login
	 * state belongs to the application and ends when its last session
	 * closes, so this session holds the login for all worker sessions.
	 * Read-write where the token allows it: session copies of keys and
	 * the objects some check values need are created in it.
	 */
	CK_SESSION_HANDLE session;
	char label[TOKEN_LABEL_MAX];	/* printable, blanks trimmed */
	char module[TOKEN_URI_TEXT_MAX]; /* how the module was found */
	int fn_init;		/* private: fn needs p11_kit_module_finalize */
	/*
	 * No module was named: every module registered with p11-kit was
	 * loaded and initialized in this process to find the token (their
	 * code ran here; the others were finalized again).
	 */
	int searched;
	int own_init;		/* private: fn was initialized by us (init args) */
};

/* snprintf into err (NULL or errlen 0: nothing). */
void token_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies a blank-padded PKCS#11 string, trimmed, non-printables as '?'. */
void token_printable(const unsigned char *s, size_t n, char *out, size_t cap);

/*
 * Loads the module and opens the one initialized token matching uri
 * (token, slot and library attributes). module: a .so path, or a p11-kit
 * module name; NULL: the URI's module-path or module-name; if neither, every
 * module registered with p11-kit is searched. Zero or several matching
 * tokens is a config error. Opens t->session (not logged in yet).
 *
 * init_args (NULL: none): the CK_C_INITIALIZE_ARGS pReserved string for a
 * module loaded by path. Such a module is loaded unmanaged and initialized
 * here with CKF_OS_LOCKING_OK, once per process: further tokens with the
 * same string share it (the last token_close finalizes it); another string
 * while it is in use is a config error. With a p11-kit module name or no
 * module at all, init_args is a config error (p11-kit's x-init-reserved
 * is the way there). A module loaded by path that refuses C_Initialize
 * with CKR_ARGUMENTS_BAD gets a message saying how to pass arguments.
 * *out is set only on success; caller frees with token_close().
 */
int token_open(const char *module, const char *init_args, P11KitUri *uri,
    const char *uri_text, struct token **out, char *err, size_t errlen);

/*
 * Finds the one key on t's token that uri names (its object/id/type
 * attributes, always with CKA_TOKEN=true so session copies never match):
 * a secret key, or with type=private an (RSA) private key; other types are
 * refused. *cls (may be NULL) receives the class searched. Zero or several
 * matches are config errors naming uri_text.
 */
int token_find_key(struct token *t, P11KitUri *uri, const char *uri_text,
    CK_OBJECT_HANDLE *out, CK_OBJECT_CLASS *cls, char *err, size_t errlen);

/*
 * Runs one search on t->session: up to max handles into out, their number
 * into *n; *more (may be NULL) is 1 when the token holds further matches.
 * Returns CKR_OK or the failing CK_RV; the search is always finalized.
 */
CK_RV token_find_all(struct token *t, CK_ATTRIBUTE *tmpl, CK_ULONG ntmpl,
    CK_OBJECT_HANDLE *out, size_t max, size_t *n, int *more);

/*
 * Opens a session on t's token: read-write when rw and the token allows it
 * (some, tpm2-pkcs11 among them, refuse even session objects in a R/O
 * session), else read-only. Returns CKR_OK or the failing CK_RV.
 */
CK_RV token_open_session(struct token *t, int rw, CK_SESSION_HANDLE *out);

/*
 * The warning keyring_module_warning() gives for a token found by loading
 * every registered module, into out; "" when the module was named.
 */
void token_search_warning(const struct token *t, char *out, size_t cap);

/* Closes t->session and finalizes/releases the module. NULL ok. */
void token_close(struct token *t);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t token_now_ns(void);
/*
 * Reports one token call to the observer set with token_set_observer (the
 * daemon's metrics); does nothing without one. ns: how long it took.
 */
void token_observe(const char *function, CK_RV rv, uint64_t ns);
/* Set once, before any worker thread starts. */
void token_set_observer(void (*cb)(const char *function, unsigned long rv,
    double seconds));

#endif
