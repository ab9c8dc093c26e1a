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
 *
 * Mechanisms (chosen per key from what the token offers and the key's
 * attributes allow, each checked by a round trip at load):
 *   "aes-gcm"   AES-256 key, CKM_AES_GCM (the default where it works)
 *   "aes-kwp"   AES-256 key, CKM_AES_KEY_WRAP_PAD (RFC 5649) through
 *               C_WrapKey/C_UnwrapKey, for tokens without GCM
 *   "rsa-oaep"  RSA key pair (URI type=private), CKM_RSA_PKCS_OAEP with
 *               SHA-256 where the token takes it, else SHA-1
 * Seal uses the key's preferred mechanism; open follows the envelope.
 *
 * Key tools (p11kms keygen/keys): keyring_keygen() and keyring_list(),
 * each on its own token connection, independent of any loaded keyring.
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
#define KEYRING_LABEL_MAX	65	/* printable CKA_LABEL incl. NUL */
#define KEYRING_ID_HEX_MAX	67	/* CKA_ID hex + NUL, "..." if cut */
#define KEYRING_REASON_MAX	640
#define KEYRING_URI_MAX		256
#define KEYRING_LIST_MAX	256	/* keys keyring_list reports */

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
	KEYRING_E_SESSION = -9,		/* this worker's session is gone */
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
	/*
	 * NULL, or the CK_C_INITIALIZE_ARGS pReserved string for a module
	 * loaded by path (modules that want a config dir or such). Refused
	 * with a p11-kit module name or no module: p11-kit passes them from
	 * x-init-reserved: in the module's file. See token_open().
	 */
	const char *module_init_args;
	const char *const *key_uris;	/* RFC 7512 URIs; [0] encrypts */
	size_t nkeys;			/* 1..KEYRING_MAX_KEYS */
	/*
	 * File holding the user PIN (a trailing newline is ignored). NULL: the
	 * key URI's pin-source (file path or file: URI). A URI carrying
	 * pin-value is refused: a PIN must never be on a command line.
	 */
	const char *pin_file;
	/*
	 * How the first key seals: NULL or "auto" (per key: aes-gcm, else
	 * aes-kwp; rsa-oaep for an RSA key), or "aes-gcm", "aes-kwp",
	 * "rsa-oaep", which the first key must be able to do. Older keys
	 * seal (self-tests only) with it when they can, else their own
	 * best. Opening always follows the envelope, whatever this says.
	 */
	const char *mechanism;
};

/* 1 when name is a value keyring_config.mechanism accepts. */
int keyring_mechanism_valid(const char *name);

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
/* Mechanism key i seals with, a mech_table row name: "aes-gcm",
 * "aes-gcm/message", "aes-gcm/token-iv", "aes-kwp", "aes-kwp/ecb",
 * "rsa-oaep-sha256", "rsa-oaep-sha1". */
const char *keyring_key_mechanism(const struct keyring *kr, size_t i);
/*
 * What key i's seal mechanism found out about the token at load ("16-byte
 * IV appended by the token"), or "".
 */
const char *keyring_key_seal_detail(const struct keyring *kr, size_t i);
/* Every mechanism key i can open with, comma-separated ("aes-gcm,aes-kwp"). */
const char *keyring_key_mechanisms(const struct keyring *kr, size_t i);
/*
 * The token key i lives on, for audit records: its label and serial
 * number, printable and trimmed (at most KEYRING_TOKEN_TEXT_MAX bytes with
 * the NUL each). Returns 0, or -1 when there is no key i.
 */
#define KEYRING_TOKEN_TEXT_MAX	33
int keyring_key_token(const struct keyring *kr, size_t i, char *label,
    char *serial);
/*
 * What an envelope's header says, without a token call (loop thread):
 * *mech gets its mechanism's name ("aes-gcm", …; "unknown" for a byte no
 * mechanism has), key_id (KEYRING_KEY_ID_MAX bytes) the key_id of the
 * configured key it names, "" when none. Returns 0, or -1 (both left
 * empty: *mech NULL) when ct is not an envelope. kr may be NULL.
 */
int keyring_envelope_info(const struct keyring *kr, const uint8_t *ct,
    size_t ctlen, const char **mech, char *key_id);

/* Token's ulMaxSessionCount, 0 when the token says "no limit"/unknown. */
unsigned long keyring_max_sessions(const struct keyring *kr);
/*
 * 1 when the token's slot says it is a hardware slot (CKF_HW_SLOT: a
 * device such as a network or USB HSM, where a call mostly waits), 0 for a
 * software slot (SoftHSM: the token computes on our CPUs).
 */
int keyring_hw_slot(const struct keyring *kr);

/*
 * "" when the configuration named the module; else a warning that no
 * module was named, so every module registered with p11-kit was loaded
 * into this process to find the token, naming the one that has it.
 */
const char *keyring_module_warning(const struct keyring *kr);

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
 * Same with configured key i (0 = primary), with that key's mechanism:
 * for `p11kms selftest`, which proves every key works. The daemon never
 * seals with an older key. An RSA key seals at most (modulus bytes - 2 hash
 * - 12) bytes (RSA-2048: 204 with SHA-1, 180 with SHA-256): KEYRING_E_TOOBIG
 * beyond.
 */
int keyring_seal_with(struct keyring_worker *w, size_t i, const uint8_t *pt,
    size_t ptlen, uint8_t *ct, size_t ctcap, size_t *ctlen, char *key_id);

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

/* ---- key tools -------------------------------------------------------- */

struct keyring_tool_config {
	const char *module;	/* as in keyring_config */
	const char *module_init_args;	/* as in keyring_config */
	/*
	 * RFC 7512 URI. keyring_list: selects the token (and, with object=,
	 * id= or type=, filters the keys). keyring_keygen: the token and
	 * the new key's object= label (required), optional id= (else a
	 * random 16-byte CKA_ID) and type= (secret-key, or private for
	 * rsa-oaep).
	 */
	const char *uri;
	const char *pin_file;	/* as in keyring_config */
	/*
	 * keygen: NULL or "aes" (default): an AES-256 key for the best AES
	 * row the token offers (aes-gcm, else aes-kwp, else aes-kwp/ecb);
	 * "aes-gcm": AES-256 with CKA_ENCRYPT/CKA_DECRYPT; "aes-kwp":
	 * AES-256 with CKA_WRAP/CKA_UNWRAP where the token has
	 * CKM_AES_KEY_WRAP_PAD, else CKA_ENCRYPT/CKA_DECRYPT for the AES-ECB
	 * form; "rsa-oaep": an RSA key pair, private CKA_DECRYPT, public
	 * CKA_ENCRYPT. Every key: CKA_TOKEN, CKA_SENSITIVE,
	 * CKA_EXTRACTABLE=false, and where the token takes them CKA_PRIVATE,
	 * no other use (sign/verify/derive, the other pair), and
	 * CKA_ALLOWED_MECHANISMS set to its one mechanism. A token that
	 * refuses the template gets it again without one optional attribute
	 * at a time (each noted in keyring_key_info.notes); the key made is
	 * judged as keyring_load would.
	 */
	const char *mechanism;
	unsigned rsa_bits;	/* rsa-oaep: 2048..4096, 0 = 3072 */
	/*
	 * keygen: NULL, or the AES-256 value (import_len 32 bytes, the
	 * caller's, wiped by the caller) to create the key with
	 * (C_CreateObject, same template) instead of generating one: the
	 * same KEK on another token, a replica. Not for rsa-oaep.
	 */
	const uint8_t *import_value;
	size_t import_len;
};

/* One key as keyring_list and keyring_keygen report it (no secrets). */
struct keyring_key_info {
	char label[KEYRING_LABEL_MAX];	/* printable CKA_LABEL */
	char id_hex[KEYRING_ID_HEX_MAX];	/* CKA_ID, lowercase hex */
	char key_id[KEYRING_KEY_ID_MAX];	/* "" when it cannot be made */
	char type[32];			/* "aes-256", "rsa-3072", ... */
	char mechanisms[128];	/* what it passed: "aes-gcm,aes-kwp/ecb" */
	int fit;			/* 1: usable as a p11kms KEK */
	char reason[KEYRING_REASON_MAX];	/* why not fit; "" when fit */
	char uri[KEYRING_URI_MAX];	/* RFC 7512 URI selecting it */
	/* How it seals under auto, with what the self-test found
	 * ("aes-gcm/token-iv: 16-byte IV appended by the token"); "" unfit. */
	char seal[160];
	char key_id_from[32];		/* "CKA_CHECK_VALUE", "AES-ECB", ... */
	/*
	 * keygen: what it had to do to please the token, one line each
	 * ("the token refused the template (C_GenerateKey:
	 * CKR_GENERAL_ERROR); dropped CKA_ALLOWED_MECHANISMS"), or "".
	 */
	char notes[KEYRING_REASON_MAX];
};

/*
 * Creates a key in the token (see keyring_tool_config.mechanism), refusing
 * a label (or id=) the token already holds, then judges it as
 * keyring_load would (a key that fails its round trip is destroyed again).
 * On success fills *out. Statuses as keyring_load; err says why.
 */
int keyring_keygen(const struct keyring_tool_config *cfg,
    struct keyring_key_info *out, char *err, size_t errlen);

/*
 * Lists the secret keys and private keys of the token cfg->uri names
 * (at most KEYRING_LIST_MAX), each judged as keyring_load would, in the
 * token's order. Logs in when a PIN is given, else lists only what the
 * token shows without login. *out (caller frees with free()) and *n are
 * set only on success; *truncated (may be NULL) is 1 when keys were left
 * out.
 */
int keyring_list(const struct keyring_tool_config *cfg,
    struct keyring_key_info **out, size_t *n, int *truncated, char *err,
    size_t errlen);

/* Room for keyring_worker_error() text. */
#define KEYRING_ERROR_MAX	96

/*
 * The token's own words for the last failed call on this worker, e.g.
 * "C_Encrypt: CKR_DEVICE_REMOVED", or "" when there is none.
 */
const char *keyring_worker_error(const struct keyring_worker *w);
/*
 * Closes the worker's session and opens a new one (after
 * KEYRING_E_SESSION). Returns KEYRING_OK or KEYRING_E_TOKEN.
 */
int keyring_worker_reopen(struct keyring_worker *w);

/* "CKR_DEVICE_REMOVED" for a CK_RV value; for metrics and logs. */
const char *keyring_rv_name(unsigned long rv);

/*
 * Reports every token call on the seal/open path (function name, CK_RV,
 * seconds) to cb, for metrics. Set once, before any keyring is loaded; cb
 * runs on worker threads and must be thread-safe.
 */
void keyring_set_call_observer(void (*cb)(const char *function,
    unsigned long rv, double seconds));

#endif
