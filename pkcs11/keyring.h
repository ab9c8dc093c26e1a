/*
 * keyring: the configured key-encryption keys (KEKs) and the only door through
 * which the daemon reaches a PKCS#11 token. Nothing outside pkcs11/ sees a CK_*
 * type: callers hand in bytes and get bytes or a keyring status back.
 *
 * Life cycle:
 *   keyring_load()        loads the module, finds every key by RFC 7512 URI,
 *                         logs in once, checks each key is sensitive and
 *                         non-extractable, derives each key_id. Slow; start-up
 *                         and reload only.
 *   keyring_worker_new()  one logged-in session for one thread. A worker is
 *                         not thread-safe; the keyring itself is read-only
 *                         after load and may be shared by all workers.
 *   keyring_seal/open     one operation on a worker's session.
 *
 * The first key encrypts; every key decrypts.
 */
#ifndef P11KMS_KEYRING_H
#define P11KMS_KEYRING_H

#include <stddef.h>
#include <stdint.h>

/* Documented limits (README, SECURITY.md). */
#define KEYRING_MAX_PLAINTEXT	512	/* bytes accepted by seal */
#define KEYRING_MAX_CIPHERTEXT	1024	/* apiserver's limit on ciphertext */
#define KEYRING_KEY_ID_MAX	64	/* key_id string incl. NUL, with room */
#define KEYRING_MAX_KEYS	16

/*
 * Status codes. Every function returns one of these; 0 is success.
 * Operation outcomes (INVALID, UNKNOWN_KEY, AUTH, TOOBIG) concern one request
 * only; TOKEN means the token or session failed and may recover; CONFIG and
 * PIN are start-up/reload failures. A PIN failure must never be retried.
 */
enum keyring_status {
	KEYRING_OK = 0,
	KEYRING_E_INVALID = -1,		/* malformed ciphertext / envelope */
	KEYRING_E_UNKNOWN_KEY = -2,	/* names a key that is not configured */
	KEYRING_E_AUTH = -3,		/* token refused to open it (tag/AAD) */
	KEYRING_E_TOKEN = -4,		/* token or session fault */
	KEYRING_E_NOMEM = -5,
	KEYRING_E_TOOBIG = -6,		/* plaintext over KEYRING_MAX_PLAINTEXT */
	KEYRING_E_CONFIG = -7,		/* bad URI, key not found, unfit key */
	KEYRING_E_PIN = -8,		/* PIN wrong, locked or unreadable */
};

/* Short fixed English text for a status ("ciphertext is malformed"). */
const char *keyring_strerror(int status);

struct keyring_config {
	/*
	 * PKCS#11 module: a path to a .so or a p11-kit module name. NULL: take
	 * module-path / module-name from the first key URI, else search every
	 * module registered with p11-kit for the URI's token.
	 */
	const char *module;
	const char *const *key_uris;	/* RFC 7512 URIs; [0] encrypts */
	size_t nkeys;			/* 1..KEYRING_MAX_KEYS */
	/*
	 * File holding the user PIN (a trailing newline is ignored). NULL: the
	 * key URI's pin-source (file path or file: URI). A URI carrying
	 * pin-value is refused: a PIN must never be on a command line.
	 */
	const char *pin_file;
};

struct keyring;
struct keyring_worker;

/*
 * Loads every configured key. On failure returns a status and writes a
 * one-line message naming the problem and the fix into err (never a PIN).
 * *out is set only on success; caller frees with keyring_free().
 */
int keyring_load(const struct keyring_config *cfg, struct keyring **out,
    char *err, size_t errlen);
/* Closes sessions, logs out, finalizes the module, wipes the PIN. NULL ok. */
void keyring_free(struct keyring *kr);

/* key_id of the key that encrypts: lowercase hex, NUL-terminated. */
const char *keyring_primary_key_id(const struct keyring *kr);
size_t keyring_nkeys(const struct keyring *kr);
const char *keyring_key_id(const struct keyring *kr, size_t i);
/* Human label for logs: "token 'kms' object 'kek1'" (no PIN, no handle). */
const char *keyring_key_desc(const struct keyring *kr, size_t i);
/* Token's ulMaxSessionCount, 0 when the token says "no limit"/unknown. */
unsigned long keyring_max_sessions(const struct keyring *kr);

/* Opens one session for one thread (login is already held by the keyring). */
int keyring_worker_new(struct keyring *kr, struct keyring_worker **out);
void keyring_worker_free(struct keyring_worker *w);

/*
 * Seals pt with the primary key inside the token. Writes the envelope into
 * ct (capacity ctcap, KEYRING_MAX_CIPHERTEXT is always enough) and its
 * length to *ctlen. key_id receives the sealing key's id (caller buffer of
 * KEYRING_KEY_ID_MAX bytes).
 */
int keyring_seal(struct keyring_worker *w, const uint8_t *pt, size_t ptlen,
    uint8_t *ct, size_t ctcap, size_t *ctlen, char *key_id);

/*
 * Opens an envelope. key_id: NULL to take the key from the envelope itself
 * (KMS v1), else the key must match it (KMS v2), or KEYRING_E_UNKNOWN_KEY.
 * pt must hold KEYRING_MAX_PLAINTEXT bytes; the caller wipes it after use.
 * On KEYRING_E_UNKNOWN_KEY, key_id_seen (KEYRING_KEY_ID_MAX bytes, may be
 * NULL) receives the key_id the envelope names, for the error message.
 */
int keyring_open(struct keyring_worker *w, const char *key_id,
    const uint8_t *ct, size_t ctlen, uint8_t *pt, size_t ptcap, size_t *ptlen,
    char *key_id_seen);

#endif
