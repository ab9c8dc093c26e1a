/*
 * faultmod: a PKCS#11 module for tests that forwards every call to a real
 * module and injects faults on command. TEST-ONLY: nothing in p11kms links
 * or names it; a test loads it by passing its path as --module.
 *
 * Environment (read once, at the first call into the module):
 *   P11KMS_FAULT_TARGET   the real module (default SoftHSM's), dlopen()ed by
 *                         the first C_Initialize and never unloaded
 *   P11KMS_FAULT_CONTROL  control file, re-read whenever its inode, size,
 *                         mtime or ctime changes (one stat per call)
 *   P11KMS_FAULT_COUNTS   calls-per-function file, rewritten (temp file +
 *                         rename) on entry to every call, so a call that
 *                         hangs is already counted
 *
 * Control file, one rule per line, '#' starts a comment:
 *   FUNC CKR_NAME|0xHEX        every call of FUNC fails with that CK_RV
 *   FUNC CKR_NAME|0xHEX N      the next N calls fail (counted here; the
 *                              count restarts whenever the file changes)
 *   FUNC delay MS              sleep MS milliseconds, then go on
 *   FUNC hang                  block until no hang rule matches any more
 *                              (the file is polled every 50 ms), then go on
 *   C_GetSlotInfo hw-slot      report the slot as a hardware slot: a
 *                              successful call returns CKF_HW_SLOT in flags
 *   C_GetTokenInfo max-sessions N
 *                              a successful call returns N (0..LONG_MAX) as
 *                              ulMaxSessionCount (SoftHSM says "no limit")
 *   FUNC stderr TEXT           write TEXT and a newline to fd 2 (one
 *                              write) on every call of FUNC, as modules
 *                              that print diagnostics do; TEXT is the rest
 *                              of the line (spaces and control bytes kept,
 *                              no '#'), at most FAULT_TEXT_MAX - 1 bytes
 *   C_Initialize require-reserved TEXT
 *                              C_Initialize fails CKR_ARGUMENTS_BAD unless
 *                              its CK_C_INITIALIZE_ARGS.pReserved is the
 *                              NUL-terminated string TEXT (rest of the
 *                              line), as modules that need a config dir
 *                              do; a call that matches is forwarded with
 *                              pReserved NULL (SoftHSM refuses any other)
 * FUNC is a CK_FUNCTION_LIST member name (C_Encrypt) or '*', which matches
 * every function except C_GetFunctionList and C_Finalize (name those to
 * hit them). For one call, every matching delay adds up, then the first
 * matching fail rule with calls left decides; a call that hangs consumes no
 * count. The two report rules (hw-slot, max-sessions) name only their own
 * function, never '*', and change what a forwarded call that succeeded
 * returns; the first max-sessions rule wins. A failed call is not
 * forwarded, except that an injected failure of C_Encrypt, C_Decrypt,
 * C_Sign, ... or their Final also ends the real module's active operation
 * (into a scratch buffer), as a real failure does. Bad lines are reported
 * once per file version on stderr ("p11kms-fault: line N: ...") and
 * skipped; the other lines apply.
 * Write the file atomically (temp + rename) so that a reader never sees half
 * of it and two quick rewrites never share an inode and mtime.
 *
 * Threads: one mutex guards rules, counters and the real module pointer; it
 * is never held while forwarding, sleeping or hanging. The .so is linked
 * with -z nodelete so its counters (and the loaded target) survive the
 * dlclose/dlopen of a p11-kit module release and reload.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11/token.h"

#define FAULT_EXPORT	__attribute__((visibility("default")))
#define FAULT_DEFAULT_TARGET	"/usr/lib/softhsm/libsofthsm2.so"
#define FAULT_MAX_RULES	256
#define FAULT_HANG_POLL_MS	50
#define FAULT_MAX_DELAY_MS	3600000UL
#define FAULT_TEXT_MAX		256	/* stderr / require-reserved text */

/*
 * Every function of CK_FUNCTION_LIST (2.40) but the five handled by hand
 * (C_Initialize, C_Finalize, C_GetFunctionList, and C_GetSlotInfo and
 * C_GetTokenInfo, whose answers the report rules change), in struct order:
 * X(name, end, parameter list, argument list). end says how an injected
 * failure ends the real module's active operation, as a real failure would
 * (PKCS#11: an error other than CKR_BUFFER_TOO_SMALL terminates it), so
 * the session is not left with CKR_OPERATION_ACTIVE behind the caller's
 * back: END_ONE / END_FINAL run the call to its end into a scratch buffer,
 * END_FWD forwards it (it has no output), END_NONE does nothing (no
 * operation, an Init, or a multi-part Update: those stay active).
 */
#define FAULT_FORWARDED(X)						\
	X(C_GetInfo, END_NONE, (CK_INFO_PTR a), (a))			\
	X(C_GetSlotList, END_NONE, (CK_BBOOL a, CK_SLOT_ID_PTR b,	\
	    CK_ULONG_PTR c), (a, b, c))					\
	X(C_GetMechanismList, END_NONE, (CK_SLOT_ID a,			\
	    CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))	\
	X(C_GetMechanismInfo, END_NONE, (CK_SLOT_ID a,			\
	    CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))	\
	X(C_InitToken, END_NONE, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b,	\
	    CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))		\
	X(C_InitPIN, END_NONE, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b,	\
	    CK_ULONG c), (a, b, c))					\
	X(C_SetPIN, END_NONE, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b,	\
	    CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e), (a, b, c, d,	\
	    e))								\
	X(C_OpenSession, END_NONE, (CK_SLOT_ID a, CK_FLAGS b,		\
	    CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e), (a,	\
	    b, c, d, e))						\
	X(C_CloseSession, END_NONE, (CK_SESSION_HANDLE a), (a))		\
	X(C_CloseAllSessions, END_NONE, (CK_SLOT_ID a), (a))		\
	X(C_GetSessionInfo, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_SESSION_INFO_PTR b), (a, b))				\
	X(C_GetOperationState, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))			\
	X(C_SetOperationState, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d,		\
	    CK_OBJECT_HANDLE e), (a, b, c, d, e))			\
	X(C_Login, END_NONE, (CK_SESSION_HANDLE a, CK_USER_TYPE b,	\
	    CK_UTF8CHAR_PTR c, CK_ULONG d), (a, b, c, d))		\
	X(C_Logout, END_NONE, (CK_SESSION_HANDLE a), (a))		\
	X(C_CreateObject, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d),	\
	    (a, b, c, d))						\
	X(C_CopyObject, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d,		\
	    CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))			\
	X(C_DestroyObject, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_OBJECT_HANDLE b), (a, b))				\
	X(C_GetObjectSize, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_OBJECT_HANDLE b, CK_ULONG_PTR c), (a, b, c))		\
	X(C_GetAttributeValue, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b,	\
	    c, d))							\
	X(C_SetAttributeValue, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b,	\
	    c, d))							\
	X(C_FindObjectsInit, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))			\
	X(C_FindObjects, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d), (a, b,	\
	    c, d))							\
	X(C_FindObjectsFinal, END_NONE, (CK_SESSION_HANDLE a), (a))	\
	X(C_EncryptInit, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))		\
	X(C_Encrypt, END_ONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d,	\
	    e))								\
	X(C_EncryptUpdate, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_EncryptFinal, END_FINAL, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))			\
	X(C_DecryptInit, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))		\
	X(C_Decrypt, END_ONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d,	\
	    e))								\
	X(C_DecryptUpdate, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_DecryptFinal, END_FINAL, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))			\
	X(C_DigestInit, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_MECHANISM_PTR b), (a, b))				\
	X(C_Digest, END_ONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d,	\
	    e))								\
	X(C_DigestUpdate, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c), (a, b, c))			\
	X(C_DigestKey, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_OBJECT_HANDLE b), (a, b))				\
	X(C_DigestFinal, END_FINAL, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))			\
	X(C_SignInit, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))		\
	X(C_Sign, END_ONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,		\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d,	\
	    e))								\
	X(C_SignUpdate, END_NONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c), (a, b, c))					\
	X(C_SignFinal, END_FINAL, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG_PTR c), (a, b, c))					\
	X(C_SignRecoverInit, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))		\
	X(C_SignRecover, END_ONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d,	\
	    e))								\
	X(C_VerifyInit, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))		\
	X(C_Verify, END_FWD, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), (a, b, c, d, e))	\
	X(C_VerifyUpdate, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c), (a, b, c))			\
	X(C_VerifyFinal, END_FWD, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c), (a, b, c))					\
	X(C_VerifyRecoverInit, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))		\
	X(C_VerifyRecover, END_ONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_DigestEncryptUpdate, END_NONE, (CK_SESSION_HANDLE a,	\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_DecryptDigestUpdate, END_NONE, (CK_SESSION_HANDLE a,	\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_SignEncryptUpdate, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_DecryptVerifyUpdate, END_NONE, (CK_SESSION_HANDLE a,	\
	    CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),	\
	    (a, b, c, d, e))						\
	X(C_GenerateKey, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d,		\
	    CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))			\
	X(C_GenerateKeyPair, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d,		\
	    CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g,	\
	    CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))		\
	X(C_WrapKey, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d,	\
	    CK_BYTE_PTR e, CK_ULONG_PTR f), (a, b, c, d, e, f))		\
	X(C_UnwrapKey, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d,	\
	    CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g,			\
	    CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))		\
	X(C_DeriveKey, END_NONE, (CK_SESSION_HANDLE a,			\
	    CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d,	\
	    CK_ULONG e, CK_OBJECT_HANDLE_PTR f), (a, b, c, d, e, f))	\
	X(C_SeedRandom, END_NONE, (CK_SESSION_HANDLE a, CK_BYTE_PTR b,	\
	    CK_ULONG c), (a, b, c))					\
	X(C_GenerateRandom, END_NONE, (CK_SESSION_HANDLE a,		\
	    CK_BYTE_PTR b, CK_ULONG c), (a, b, c))			\
	X(C_GetFunctionStatus, END_NONE, (CK_SESSION_HANDLE a), (a))	\
	X(C_CancelFunction, END_NONE, (CK_SESSION_HANDLE a), (a))	\
	X(C_WaitForSlotEvent, END_NONE, (CK_FLAGS a, CK_SLOT_ID_PTR b,	\
	    CK_VOID_PTR c), (a, b, c))

#define FAULT_ENUM(name, end, params, args)	FN_##name,
#define FAULT_NAME(name, end, params, args)	#name,

enum fault_fn {
	FN_ANY = -1,		/* '*' in a rule */
	FN_C_Initialize,
	FN_C_Finalize,
	FN_C_GetFunctionList,
	FN_C_GetSlotInfo,
	FN_C_GetTokenInfo,
	FAULT_FORWARDED(FAULT_ENUM)
	FN_COUNT
};

static const char *const fault_names[FN_COUNT] = {
	"C_Initialize",
	"C_Finalize",
	"C_GetFunctionList",
	"C_GetSlotInfo",
	"C_GetTokenInfo",
	FAULT_FORWARDED(FAULT_NAME)
};

static const struct {
	const char *name;
	CK_RV rv;
} fault_rvs[] = {
#define RV(x) { #x, x }
	RV(CKR_CANCEL), RV(CKR_HOST_MEMORY), RV(CKR_SLOT_ID_INVALID),
	RV(CKR_GENERAL_ERROR), RV(CKR_FUNCTION_FAILED), RV(CKR_ARGUMENTS_BAD),
	RV(CKR_NO_EVENT), RV(CKR_NEED_TO_CREATE_THREADS), RV(CKR_CANT_LOCK),
	RV(CKR_ATTRIBUTE_READ_ONLY), RV(CKR_ATTRIBUTE_SENSITIVE),
	RV(CKR_ATTRIBUTE_TYPE_INVALID), RV(CKR_ATTRIBUTE_VALUE_INVALID),
	RV(CKR_ACTION_PROHIBITED), RV(CKR_DATA_INVALID),
	RV(CKR_DATA_LEN_RANGE), RV(CKR_DEVICE_ERROR), RV(CKR_DEVICE_MEMORY),
	RV(CKR_DEVICE_REMOVED), RV(CKR_ENCRYPTED_DATA_INVALID),
	RV(CKR_ENCRYPTED_DATA_LEN_RANGE), RV(CKR_FUNCTION_CANCELED),
	RV(CKR_FUNCTION_NOT_PARALLEL), RV(CKR_FUNCTION_NOT_SUPPORTED),
	RV(CKR_KEY_HANDLE_INVALID), RV(CKR_KEY_SIZE_RANGE),
	RV(CKR_KEY_TYPE_INCONSISTENT), RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
	RV(CKR_KEY_UNEXTRACTABLE), RV(CKR_MECHANISM_INVALID),
	RV(CKR_MECHANISM_PARAM_INVALID), RV(CKR_OBJECT_HANDLE_INVALID),
	RV(CKR_OPERATION_ACTIVE), RV(CKR_OPERATION_NOT_INITIALIZED),
	RV(CKR_PIN_INCORRECT), RV(CKR_PIN_INVALID), RV(CKR_PIN_LEN_RANGE),
	RV(CKR_PIN_EXPIRED), RV(CKR_PIN_LOCKED), RV(CKR_SESSION_CLOSED),
	RV(CKR_SESSION_COUNT), RV(CKR_SESSION_HANDLE_INVALID),
	RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED), RV(CKR_SESSION_READ_ONLY),
	RV(CKR_SESSION_EXISTS), RV(CKR_TEMPLATE_INCOMPLETE),
	RV(CKR_TEMPLATE_INCONSISTENT), RV(CKR_TOKEN_NOT_PRESENT),
	RV(CKR_TOKEN_NOT_RECOGNIZED), RV(CKR_TOKEN_WRITE_PROTECTED),
	RV(CKR_USER_ALREADY_LOGGED_IN), RV(CKR_USER_NOT_LOGGED_IN),
	RV(CKR_USER_PIN_NOT_INITIALIZED), RV(CKR_USER_TYPE_INVALID),
	RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN), RV(CKR_WRAPPED_KEY_INVALID),
	RV(CKR_RANDOM_NO_RNG), RV(CKR_BUFFER_TOO_SMALL),
	RV(CKR_CRYPTOKI_NOT_INITIALIZED), RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
	RV(CKR_MUTEX_BAD), RV(CKR_MUTEX_NOT_LOCKED),
	RV(CKR_FIPS_SELF_TEST_FAILED), RV(CKR_LIBRARY_LOAD_FAILED),
	RV(CKR_FUNCTION_REJECTED),
#undef RV
};

enum fault_kind {
	RULE_FAIL, RULE_DELAY, RULE_HANG, RULE_HW_SLOT, RULE_MAX_SESSIONS,
	RULE_STDERR, RULE_REQUIRE_RESERVED
};

struct fault_rule {
	int fn;			/* enum fault_fn or FN_ANY */
	enum fault_kind kind;
	CK_RV rv;		/* RULE_FAIL */
	long left;		/* RULE_FAIL: calls left to fail; -1 = all */
	unsigned long ms;	/* RULE_DELAY */
	unsigned long n;	/* RULE_MAX_SESSIONS */
	char text[FAULT_TEXT_MAX];	/* RULE_STDERR, RULE_REQUIRE_RESERVED */
};

/* What one call has to do, decided under the lock. */
struct fault_verdict {
	int hang;
	unsigned long delay_ms;
	CK_RV rv;		/* CKR_OK: forward */
	int hw_slot;		/* C_GetSlotInfo: add CKF_HW_SLOT */
	int set_max_sessions;	/* C_GetTokenInfo: report max_sessions */
	CK_ULONG max_sessions;
	int say;		/* write say_text + "\n" to fd 2 */
	char say_text[FAULT_TEXT_MAX];
	int require;		/* C_Initialize: pReserved must be require_text */
	char require_text[FAULT_TEXT_MAX];
};

/* Identity of the control file version the rules came from. */
struct fault_ctl_id {
	int exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

/* All guarded by fault_mu, except where noted. */
static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static int fault_env_done;
static char *fault_ctl_path;		/* NULL: no rules ever */
static char *fault_counts_path;		/* NULL: no counts file */
static struct fault_ctl_id fault_ctl;
static struct fault_rule fault_rules[FAULT_MAX_RULES];
static size_t fault_nrules;
static unsigned long long fault_calls[FN_COUNT];
static CK_FUNCTION_LIST *fault_real;	/* set once, by fault_load */

/* Serializes dlopen of the target and the counts file writers. */
static pthread_mutex_t fault_load_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t fault_counts_mu = PTHREAD_MUTEX_INITIALIZER;

static CK_FUNCTION_LIST fault_list;

/* ------------------------------------------------------------------ */

static void
fault_sleep_ms(unsigned long ms)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000;
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* Must hold fault_mu. */
static void
fault_env_locked(void)
{
	const char *s;

	if (fault_env_done)
		return;
	fault_env_done = 1;
	if ((s = getenv("P11KMS_FAULT_CONTROL")) != NULL && *s != '\0')
		fault_ctl_path = strdup(s);
	if ((s = getenv("P11KMS_FAULT_COUNTS")) != NULL && *s != '\0')
		fault_counts_path = strdup(s);
}

static int
fault_fn_lookup(const char *name)
{
	int i;

	if (strcmp(name, "*") == 0)
		return FN_ANY;
	for (i = 0; i < FN_COUNT; i++)
		if (strcmp(name, fault_names[i]) == 0)
			return i;
	return -2;
}

/* 0 and *rv set, or -1. */
static int
fault_rv_parse(const char *s, CK_RV *rv)
{
	unsigned long v;
	char *end;
	size_t i;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		if (s[2] == '\0')
			return -1;
		errno = 0;
		v = strtoul(s + 2, &end, 16);
		if (errno != 0 || *end != '\0')
			return -1;
		*rv = v;
		return 0;
	}
	for (i = 0; i < sizeof(fault_rvs) / sizeof(fault_rvs[0]); i++) {
		if (strcmp(s, fault_rvs[i].name) == 0) {
			*rv = fault_rvs[i].rv;
			return 0;
		}
	}
	return -1;
}

/* Decimal in [min, max]: 0 and *out, or -1. */
static int
fault_num(const char *s, unsigned long min, unsigned long max,
    unsigned long *out)
{
	unsigned long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/*
 * The rules whose last field is free text ("FUNC stderr TEXT", "C_Initialize
 * require-reserved TEXT"): 1 with r filled, -1 with why, 0 when line is
 * not one of them. line is not modified.
 */
static int
fault_parse_text(const char *line, struct fault_rule *r, char *why,
    size_t whylen)
{
	const char *ws = " \t\r\n", *p = line, *text;
	char fn[64];
	size_t n;

	p += strspn(p, ws);
	n = strcspn(p, ws);
	if (n == 0 || n >= sizeof(fn))
		return 0;
	memcpy(fn, p, n);
	fn[n] = '\0';
	p += n;
	p += strspn(p, " \t");
	n = strcspn(p, ws);
	if (!((n == 6 && strncmp(p, "stderr", 6) == 0) ||
	    (n == 16 && strncmp(p, "require-reserved", 16) == 0)))
		return 0;
	memset(r, 0, sizeof(*r));
	r->kind = n == 6 ? RULE_STDERR : RULE_REQUIRE_RESERVED;
	text = p + n;
	text += strspn(text, " \t");
	n = strcspn(text, "\r\n");
	if ((r->fn = fault_fn_lookup(fn)) == -2) {
		snprintf(why, whylen, "unknown function \"%.64s\"", fn);
		return -1;
	}
	if (r->kind == RULE_REQUIRE_RESERVED && r->fn != FN_C_Initialize) {
		snprintf(why, whylen, "require-reserved is for C_Initialize "
		    "only");
		return -1;
	}
	if (n == 0 || n >= sizeof(r->text)) {
		snprintf(why, whylen, "%s wants a text of 1 to %d bytes",
		    r->kind == RULE_STDERR ? "stderr" : "require-reserved",
		    FAULT_TEXT_MAX - 1);
		return -1;
	}
	memcpy(r->text, text, n);
	r->text[n] = '\0';
	return 1;
}

/*
 * Parses one line (comment already cut) into r. Returns 1 for a rule, 0 for
 * a blank line, -1 with a message in why for a bad line.
 */
static int
fault_parse_line(char *line, struct fault_rule *r, char *why, size_t whylen)
{
	char *tok[4], *save = NULL, *s;
	unsigned long n;
	int nt = 0, k;

	if ((k = fault_parse_text(line, r, why, whylen)) != 0)
		return k;

	for (s = strtok_r(line, " \t\r\n", &save); s != NULL;
	    s = strtok_r(NULL, " \t\r\n", &save)) {
		if (nt == 4) {
			snprintf(why, whylen, "too many fields");
			return -1;
		}
		tok[nt++] = s;
	}
	if (nt == 0)
		return 0;
	memset(r, 0, sizeof(*r));
	if ((r->fn = fault_fn_lookup(tok[0])) == -2) {
		snprintf(why, whylen, "unknown function \"%.64s\"", tok[0]);
		return -1;
	}
	if (nt < 2) {
		snprintf(why, whylen, "%.64s: missing CKR_... / delay / hang "
		    "/ ...", tok[0]);
		return -1;
	}
	if (strcmp(tok[1], "hang") == 0) {
		if (nt != 2) {
			snprintf(why, whylen, "hang takes no argument");
			return -1;
		}
		r->kind = RULE_HANG;
		return 1;
	}
	if (strcmp(tok[1], "delay") == 0) {
		if (nt != 3 || fault_num(tok[2], 0, FAULT_MAX_DELAY_MS,
		    &r->ms) != 0) {
			snprintf(why, whylen, "delay wants milliseconds "
			    "(0..%lu)", FAULT_MAX_DELAY_MS);
			return -1;
		}
		r->kind = RULE_DELAY;
		return 1;
	}
	if (strcmp(tok[1], "hw-slot") == 0) {
		if (r->fn != FN_C_GetSlotInfo || nt != 2) {
			snprintf(why, whylen, "hw-slot is for C_GetSlotInfo "
			    "only and takes no argument");
			return -1;
		}
		r->kind = RULE_HW_SLOT;
		return 1;
	}
	if (strcmp(tok[1], "max-sessions") == 0) {
		if (r->fn != FN_C_GetTokenInfo || nt != 3 ||
		    fault_num(tok[2], 0, LONG_MAX, &r->n) != 0) {
			snprintf(why, whylen, "max-sessions is for "
			    "C_GetTokenInfo only and wants a count");
			return -1;
		}
		r->kind = RULE_MAX_SESSIONS;
		return 1;
	}
	if (fault_rv_parse(tok[1], &r->rv) != 0) {
		snprintf(why, whylen, "unknown action or CK_RV \"%.64s\"",
		    tok[1]);
		return -1;
	}
	if (r->rv == CKR_OK) {
		snprintf(why, whylen, "CKR_OK is not a fault");
		return -1;
	}
	r->kind = RULE_FAIL;
	r->left = -1;
	if (nt == 3) {
		if (fault_num(tok[2], 1, LONG_MAX, &n) != 0) {
			snprintf(why, whylen, "count \"%.64s\" is not a "
			    "positive number", tok[2]);
			return -1;
		}
		r->left = (long)n;
	} else if (nt > 3) {
		snprintf(why, whylen, "too many fields");
		return -1;
	}
	return 1;
}

/* Replaces the rules with those of f. Must hold fault_mu. */
static void
fault_parse_locked(FILE *f)
{
	char *line = NULL, *hash, why[160];
	size_t cap = 0, lineno = 0;
	struct fault_rule r;
	int k;

	fault_nrules = 0;
	while (getline(&line, &cap, f) != -1) {
		lineno++;
		if ((hash = strchr(line, '#')) != NULL)
			*hash = '\0';
		if ((k = fault_parse_line(line, &r, why, sizeof(why))) == 0)
			continue;
		if (k > 0 && fault_nrules == FAULT_MAX_RULES) {
			snprintf(why, sizeof(why), "more than %d rules",
			    FAULT_MAX_RULES);
			k = -1;
		}
		if (k < 0) {
			fprintf(stderr, "p11kms-fault: line %zu: %s "
			    "(ignored)\n", lineno, why);
			continue;
		}
		fault_rules[fault_nrules++] = r;
	}
	free(line);
}

static int
fault_ctl_same(const struct fault_ctl_id *a, const struct stat *st)
{
	return a->exists && a->dev == st->st_dev && a->ino == st->st_ino &&
	    a->size == st->st_size &&
	    a->mtime.tv_sec == st->st_mtim.tv_sec &&
	    a->mtime.tv_nsec == st->st_mtim.tv_nsec &&
	    a->ctime.tv_sec == st->st_ctim.tv_sec &&
	    a->ctime.tv_nsec == st->st_ctim.tv_nsec;
}

/*
 * Re-reads the control file if it changed since the last look; a missing
 * file means no rules. Must hold fault_mu (file I/O only, no sleeping).
 */
static void
fault_refresh_locked(void)
{
	struct stat st;
	FILE *f;

	if (fault_ctl_path == NULL)
		return;
	if (stat(fault_ctl_path, &st) != 0) {
		fault_ctl.exists = 0;
		fault_nrules = 0;
		return;
	}
	if (fault_ctl_same(&fault_ctl, &st))
		return;
	/* Identity from the opened file, so rules and identity agree. */
	if ((f = fopen(fault_ctl_path, "re")) == NULL ||
	    fstat(fileno(f), &st) != 0) {
		if (f != NULL)
			fclose(f);
		fault_ctl.exists = 0;
		fault_nrules = 0;
		return;
	}
	fault_ctl.exists = 1;
	fault_ctl.dev = st.st_dev;
	fault_ctl.ino = st.st_ino;
	fault_ctl.size = st.st_size;
	fault_ctl.mtime = st.st_mtim;
	fault_ctl.ctime = st.st_ctim;
	fault_parse_locked(f);
	fclose(f);
}

static int
fault_matches(const struct fault_rule *r, int fn)
{
	if (r->fn == fn)
		return 1;
	return r->fn == FN_ANY && fn != FN_C_GetFunctionList &&
	    fn != FN_C_Finalize;
}

/* Must hold fault_mu. Consumes a count only when the call will not hang. */
static void
fault_decide_locked(int fn, struct fault_verdict *v)
{
	struct fault_rule *r;
	size_t i;

	memset(v, 0, sizeof(*v));
	for (i = 0; i < fault_nrules; i++) {
		r = &fault_rules[i];
		if (r->kind == RULE_HANG && fault_matches(r, fn)) {
			v->hang = 1;
			return;
		}
	}
	for (i = 0; i < fault_nrules; i++) {
		r = &fault_rules[i];
		if (!fault_matches(r, fn))
			continue;
		if (r->kind == RULE_DELAY) {
			v->delay_ms += r->ms;
		} else if (r->kind == RULE_HW_SLOT) {
			v->hw_slot = 1;
		} else if (r->kind == RULE_MAX_SESSIONS) {
			if (!v->set_max_sessions) {
				v->set_max_sessions = 1;
				v->max_sessions = r->n;
			}
		} else if (r->kind == RULE_STDERR) {
			if (!v->say) {
				v->say = 1;
				memcpy(v->say_text, r->text, sizeof(r->text));
			}
		} else if (r->kind == RULE_REQUIRE_RESERVED) {
			if (!v->require) {
				v->require = 1;
				memcpy(v->require_text, r->text,
				    sizeof(r->text));
			}
		} else if (r->kind == RULE_FAIL && v->rv == CKR_OK &&
		    r->left != 0) {
			v->rv = r->rv;
			if (r->left > 0)
				r->left--;
		}
	}
}

/*
 * Rewrites the counts file from a snapshot taken under fault_counts_mu, so
 * the last rename always carries the newest numbers.
 */
static void
fault_counts_write(void)
{
	unsigned long long snap[FN_COUNT];
	char tmp[PATH_MAX], buf[FN_COUNT * 48];
	size_t off = 0;
	ssize_t w;
	int i, fd, n;

	pthread_mutex_lock(&fault_counts_mu);
	pthread_mutex_lock(&fault_mu);
	memcpy(snap, fault_calls, sizeof(snap));
	pthread_mutex_unlock(&fault_mu);

	for (i = 0; i < FN_COUNT; i++) {
		n = snprintf(buf + off, sizeof(buf) - off, "%s %llu\n",
		    fault_names[i], snap[i]);
		if (n < 0 || (size_t)n >= sizeof(buf) - off)
			goto out;
		off += (size_t)n;
	}
	n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", fault_counts_path,
	    (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp))
		goto out;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		goto out;
	w = write(fd, buf, off);
	if (close(fd) != 0 || w != (ssize_t)off ||
	    rename(tmp, fault_counts_path) != 0)
		unlink(tmp);
out:
	pthread_mutex_unlock(&fault_counts_mu);
}

/* TEXT + "\n" to fd 2 in one write, as a module's diagnostics would go. */
static void
fault_say(const char *text)
{
	char buf[FAULT_TEXT_MAX + 1];
	size_t n = strlen(text);

	memcpy(buf, text, n);
	buf[n++] = '\n';
	while (write(2, buf, n) == -1 && errno == EINTR)
		;
}

/*
 * Runs the rules for one call of fn: counts it, hangs, sleeps. Returns the
 * CK_RV to fail with, or CKR_OK to forward; *v receives the whole verdict
 * (what to change in the answer). Never holds fault_mu while sleeping.
 */
static CK_RV
fault_enter_v(int fn, struct fault_verdict *vp)
{
	struct fault_verdict v;
	int counts;

	pthread_mutex_lock(&fault_mu);
	fault_env_locked();
	fault_calls[fn]++;
	counts = fault_counts_path != NULL;
	pthread_mutex_unlock(&fault_mu);
	if (counts)
		fault_counts_write();

	for (;;) {
		pthread_mutex_lock(&fault_mu);
		fault_refresh_locked();
		fault_decide_locked(fn, &v);
		pthread_mutex_unlock(&fault_mu);
		if (!v.hang)
			break;
		fault_sleep_ms(FAULT_HANG_POLL_MS);
	}
	if (v.say)
		fault_say(v.say_text);
	if (v.delay_ms > 0)
		fault_sleep_ms(v.delay_ms);
	*vp = v;
	return v.rv;
}

static CK_RV
fault_enter(int fn)
{
	struct fault_verdict v;

	return fault_enter_v(fn, &v);
}

/* The real module's list, or NULL before the first good C_Initialize. */
static CK_FUNCTION_LIST *
fault_target(void)
{
	CK_FUNCTION_LIST *r;

	pthread_mutex_lock(&fault_mu);
	r = fault_real;
	pthread_mutex_unlock(&fault_mu);
	return r;
}

/* Loads the target once; it stays loaded for the life of the process. */
static CK_RV
fault_load(CK_FUNCTION_LIST **out)
{
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_FUNCTION_LIST *r = NULL;
	const char *path;
	void *dl;
	CK_RV rv = CKR_GENERAL_ERROR;

	pthread_mutex_lock(&fault_load_mu);
	if ((r = fault_target()) != NULL) {
		rv = CKR_OK;
		goto out;
	}
	path = getenv("P11KMS_FAULT_TARGET");
	if (path == NULL || *path == '\0')
		path = FAULT_DEFAULT_TARGET;
	if ((dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "p11kms-fault: cannot load %s: %s\n", path,
		    dlerror());
		goto out;
	}
	*(void **)&get = dlsym(dl, "C_GetFunctionList");
	if (get == NULL || get(&r) != CKR_OK || r == NULL) {
		fprintf(stderr, "p11kms-fault: %s has no usable "
		    "C_GetFunctionList\n", path);
		r = NULL;
		dlclose(dl);
		goto out;
	}
	if (r == &fault_list) {
		fprintf(stderr, "p11kms-fault: P11KMS_FAULT_TARGET is the "
		    "fault module itself\n");
		r = NULL;
		goto out;
	}
	pthread_mutex_lock(&fault_mu);
	fault_real = r;
	pthread_mutex_unlock(&fault_mu);
	/* success */
	rv = CKR_OK;
out:
	pthread_mutex_unlock(&fault_load_mu);
	if (rv == CKR_OK)
		*out = r;
	return rv;
}

/* ------------------------------------------------------------------ */
/* The wrappers. */

static CK_RV
fault_C_Initialize(CK_VOID_PTR args)
{
	CK_C_INITIALIZE_ARGS *ia = args, copy;
	struct fault_verdict v;
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter_v(FN_C_Initialize, &v)) != CKR_OK)
		return rv;
	if (v.require) {
		/* The text is the module's own: SoftHSM wants NULL. */
		if (ia == NULL || ia->pReserved == NULL ||
		    strcmp(ia->pReserved, v.require_text) != 0)
			return CKR_ARGUMENTS_BAD;
		copy = *ia;
		copy.pReserved = NULL;
		args = &copy;
	}
	if ((rv = fault_load(&r)) != CKR_OK)
		return rv;
	/* p11-kit's managed wrapper passes CKF_OS_LOCKING_OK: keep it. */
	return r->C_Initialize(args);
}

static CK_RV
fault_C_Finalize(CK_VOID_PTR reserved)
{
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_Finalize)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	return r->C_Finalize(reserved);
}

static CK_RV
fault_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	CK_RV rv;

	if ((rv = fault_enter(FN_C_GetFunctionList)) != CKR_OK)
		return rv;
	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	*out = &fault_list;
	return CKR_OK;
}

static CK_RV
fault_C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info)
{
	struct fault_verdict v;
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter_v(FN_C_GetSlotInfo, &v)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if ((rv = r->C_GetSlotInfo(id, info)) == CKR_OK && v.hw_slot)
		info->flags |= CKF_HW_SLOT;
	return rv;
}

static CK_RV
fault_C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info)
{
	struct fault_verdict v;
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter_v(FN_C_GetTokenInfo, &v)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if ((rv = r->C_GetTokenInfo(id, info)) == CKR_OK &&
	    v.set_max_sessions)
		info->ulMaxSessionCount = v.max_sessions;
	return rv;
}

/*
 * Ending the real operation after an injected failure (see END_* above).
 * Output goes to a scratch buffer, wiped: the caller's buffers stay as a
 * failed call leaves them.
 */
#define FAULT_SCRATCH_MAX	(1UL << 20)

static void
fault_end_one(CK_C_Encrypt f, CK_SESSION_HANDLE s, CK_BYTE_PTR in,
    CK_ULONG in_len)
{
	CK_BYTE small[256], *buf = small;
	CK_ULONG n = 0, cap;

	if (f(s, in, in_len, NULL, &n) != CKR_OK || n > FAULT_SCRATCH_MAX)
		return;
	if (n > sizeof(small) && (buf = malloc(n)) == NULL)
		return;
	cap = n > sizeof(small) ? n : sizeof(small);
	n = cap;
	(void)f(s, in, in_len, buf, &n);
	explicit_bzero(buf, cap);
	if (buf != small)
		free(buf);
}

static void
fault_end_final(CK_C_EncryptFinal f, CK_SESSION_HANDLE s)
{
	CK_BYTE small[256], *buf = small;
	CK_ULONG n = 0, cap;

	if (f(s, NULL, &n) != CKR_OK || n > FAULT_SCRATCH_MAX)
		return;
	if (n > sizeof(small) && (buf = malloc(n)) == NULL)
		return;
	cap = n > sizeof(small) ? n : sizeof(small);
	n = cap;
	(void)f(s, buf, &n);
	explicit_bzero(buf, cap);
	if (buf != small)
		free(buf);
}

#define FAULT_ARGS1(a, ...)		a
#define FAULT_ARGS3(a, b, c, ...)	a, b, c
#define END_NONE(r, name, args)		(void)0
#define END_FWD(r, name, args)		(void)(r)->name args
#define END_ONE(r, name, args)		fault_end_one((r)->name, FAULT_ARGS3 args)
#define END_FINAL(r, name, args)	fault_end_final((r)->name, FAULT_ARGS1 args)

#define FAULT_WRAP(name, end, params, args)				\
	static CK_RV							\
	fault_##name params						\
	{								\
		CK_FUNCTION_LIST *r;					\
		CK_RV rv;						\
									\
		if ((rv = fault_enter(FN_##name)) != CKR_OK) {		\
			if ((r = fault_target()) != NULL)		\
				end(r, name, args);			\
			return rv;					\
		}							\
		if ((r = fault_target()) == NULL)			\
			return CKR_CRYPTOKI_NOT_INITIALIZED;		\
		return r->name args;					\
	}
FAULT_FORWARDED(FAULT_WRAP)

#define FAULT_MEMBER(name, end, params, args)	.name = fault_##name,

static CK_FUNCTION_LIST fault_list = {
	.version = { 2, 40 },	/* the 2.x list; no C_GetInterface */
	.C_Initialize = fault_C_Initialize,
	.C_Finalize = fault_C_Finalize,
	.C_GetFunctionList = fault_C_GetFunctionList,
	.C_GetSlotInfo = fault_C_GetSlotInfo,
	.C_GetTokenInfo = fault_C_GetTokenInfo,
	FAULT_FORWARDED(FAULT_MEMBER)
};

FAULT_EXPORT CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	return fault_C_GetFunctionList(out);
}
