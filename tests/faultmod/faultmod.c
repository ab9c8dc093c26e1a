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
 *   C_EncryptInit gcm-iv MODE  the token makes AES-GCM IVs itself, as a
 *                              FIPS-mode HSM does; MODE is one of
 *        writeback             into the caller's all-zero pIv (ProtectServer)
 *        append                16 bytes after the tag (Luna)
 *        append12              12 bytes after the tag (older ProtectServer)
 *        message               PKCS#11 3.0 C_EncryptMessage only
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
 * FUNC is a function name of CK_FUNCTION_LIST (C_Encrypt) or of the 3.0
 * list (C_EncryptMessage, C_GetInterface, ...), or '*', which matches every
 * function except C_GetFunctionList, C_GetInterface, C_GetInterfaceList
 * and C_Finalize (name those to hit them). For one call, every matching
 * delay adds up, then the first matching fail rule with calls left
 * decides; a call that hangs consumes no count. The two report rules
 * (hw-slot, max-sessions) name only their own function, never '*', and
 * change what a forwarded call that succeeded returns; the first
 * max-sessions rule wins. A failed call is not forwarded, except that an
 * injected failure of C_Encrypt, C_Decrypt, C_Sign, ... or their Final also
 * ends the real module's active operation (into a scratch buffer), as a
 * real failure does. Bad lines are reported once per file version on
 * stderr ("p11kms-fault: line N: ...") and skipped; the other lines apply.
 * Write the file atomically (temp + rename) so that a reader never sees half
 * of it and two quick rewrites never share an inode and mtime.
 *
 * gcm-iv names C_EncryptInit only, never '*'; the first gcm-iv rule wins and
 * governs the whole module (fail, delay and hang rules still apply first,
 * to every function). While it is in the file:
 * - Every mode: a 2.40 C_EncryptInit of CKM_AES_GCM whose pIv holds a
 *   non-zero byte (a caller's IV; also one over 256 bytes) fails with
 *   CKR_MECHANISM_PARAM_INVALID, unforwarded. C_DecryptInit takes any IV
 *   (SoftHSM decrypts with 12- or 16-byte IVs). Other mechanisms, and GCM
 *   parameters of the wrong size (SoftHSM refuses those), are forwarded.
 * - writeback: an all-zero pIv of 12..16 bytes gets that many random bytes
 *   written into it at C_EncryptInit, and SoftHSM encrypts with them
 *   (zeroed again if SoftHSM refuses the init); a NULL or other-length pIv
 *   is refused (CKR_MECHANISM_PARAM_INVALID). C_Encrypt is forwarded.
 * - append, append12: pIv NULL, ulIvLen 0, or all zero of any length: a
 *   16- (12-) byte random IV is made, SoftHSM's init gets it, the session
 *   remembers it. C_Encrypt returns SoftHSM's ciphertext||tag then the IV
 *   (plaintext + 16 + 16, resp. + 12); a length query (pEncryptedData
 *   NULL) answers that length, so does CKR_BUFFER_TOO_SMALL, after which
 *   the operation stays active. Append mode is single-part: C_EncryptUpdate
 *   and C_EncryptFinal end the operation with CKR_FUNCTION_NOT_SUPPORTED.
 * - message: 2.40 AES-GCM encryption is refused whatever the IV
 *   (CKR_MECHANISM_PARAM_INVALID); the 3.0 message API does it instead.
 *
 * PKCS#11 3.0: the .so exports C_GetInterfaceList and C_GetInterface
 * (p11-kit 0.24 never calls them; a caller dlsym()s them). Name NULL or
 * "PKCS 11"; flags 0. Offered: the 2.40 interface (version 2.40, the
 * C_GetFunctionList list) and, only while a message rule is in the file,
 * first a 3.0 one; a version NULL picks the newest on offer, an absent
 * one is CKR_ARGUMENTS_BAD. The 3.0 list (version 3.0) carries this
 * module's own 2.40 functions (counted, rules apply) and:
 *   C_MessageEncryptInit / C_MessageDecryptInit (session, {CKM_AES_GCM,
 *     NULL, 0}, key): session and key are checked by one real GCM
 *     operation run to its end; CKR_OPERATION_ACTIVE if one is active
 *   C_EncryptMessage (CK_GCM_MESSAGE_PARAMS: pIv of 12..16 bytes,
 *     ulIvFixedBits 0, ivGenerator CKG_GENERATE_RANDOM, pTag, ulTagBits
 *     96..128 in bytes, else CKR_MECHANISM_PARAM_INVALID): a random IV into
 *     pIv, the tag into pTag, ciphertext as long as the plaintext; built on
 *     SoftHSM's C_EncryptInit + C_Encrypt with that IV and the AAD
 *   C_DecryptMessage (the caller's pIv, pTag, AAD): SoftHSM's
 *     C_DecryptInit + C_Decrypt of ciphertext||tag; a wrong tag or AAD
 *     gives SoftHSM's CKR_GENERAL_ERROR
 *   Both: no Init, CKR_OPERATION_NOT_INITIALIZED; output NULL, the length;
 *     output short, CKR_BUFFER_TOO_SMALL; an error leaves the message
 *     operation active. C_MessageEncryptFinal / C_MessageDecryptFinal end it.
 *   Every other 3.0 function: CKR_FUNCTION_NOT_SUPPORTED.
 * The message functions keep working after the rule goes (a caller that
 * holds the 3.0 list keeps it); only C_GetInterface stops offering it.
 * They take session and object handles as the real module made them:
 * p11-kit's managed layer passes those through unchanged.
 *
 * Threads: one mutex guards rules, counters, the real module pointer and
 * the per-session gcm-iv state (an append IV, a message operation's key,
 * dropped at C_CloseSession, C_CloseAllSessions and C_Finalize); it is
 * never held while forwarding, sleeping or hanging. The .so is linked
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
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11/token.h"
#include "pkcs11/p11v3.h"

#define FAULT_EXPORT	__attribute__((visibility("default")))
#define FAULT_DEFAULT_TARGET	"/usr/lib/softhsm/libsofthsm2.so"
#define FAULT_MAX_RULES	256
#define FAULT_HANG_POLL_MS	50
#define FAULT_MAX_DELAY_MS	3600000UL
#define FAULT_IV_MAX	16	/* the longest IV faultmod generates */
#define FAULT_IV_SCAN_MAX	256	/* longer caller IVs are refused unread */
#define FAULT_MSG_MAX	(64UL << 20)	/* C_EncryptMessage/C_DecryptMessage */
#define FAULT_TEXT_MAX		256	/* stderr / require-reserved text */

/*
 * Functions of CK_FUNCTION_LIST (2.40) written by hand: the five whose
 * calls or answers are special (C_Initialize, C_Finalize,
 * C_GetFunctionList, and C_GetSlotInfo and C_GetTokenInfo, whose answers
 * the report rules change), and those the gcm-iv rule changes or that
 * drop per-session state (FAULT_OWN). Their order is that of the counts
 * file.
 */
#define FAULT_HAND(X)							\
	X(C_Initialize) X(C_Finalize) X(C_GetFunctionList)		\
	X(C_GetSlotInfo) X(C_GetTokenInfo)
#define FAULT_OWN(X)							\
	X(C_CloseSession) X(C_CloseAllSessions) X(C_EncryptInit)	\
	X(C_Encrypt) X(C_EncryptUpdate) X(C_EncryptFinal)

/*
 * Every other function of CK_FUNCTION_LIST (2.40), in struct order:
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

/*
 * The functions CK_FUNCTION_LIST_3_0 adds, in struct order: X(name, impl,
 * parameter list). impl OWN: written below (the interface calls and the
 * AES-GCM message functions the gcm-iv message rule needs); STUB: counted
 * and subject to fail rules like any other, then CKR_FUNCTION_NOT_SUPPORTED.
 * (Parameters are a, b, ...: the 2.40 header's compatibility macros rename
 * words such as count and params.)
 */
#define FAULT_V3(X)							\
	X(C_GetInterfaceList, OWN, (P11V3_INTERFACE *a, CK_ULONG *b))	\
	X(C_GetInterface, OWN, (CK_UTF8CHAR *a, CK_VERSION *b,		\
	    P11V3_INTERFACE **c, CK_FLAGS d))				\
	X(C_LoginUser, STUB, (CK_SESSION_HANDLE a, CK_USER_TYPE b,	\
	    CK_UTF8CHAR *c, CK_ULONG d, CK_UTF8CHAR *e, CK_ULONG f))	\
	X(C_SessionCancel, STUB, (CK_SESSION_HANDLE a, CK_FLAGS b))	\
	X(C_MessageEncryptInit, OWN, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM *b, CK_OBJECT_HANDLE c))			\
	X(C_EncryptMessage, OWN, (CK_SESSION_HANDLE a, CK_VOID_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,	\
	    CK_ULONG g, CK_BYTE_PTR h, CK_ULONG *i))			\
	X(C_EncryptMessageBegin, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e))	\
	X(C_EncryptMessageNext, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e,	\
	    CK_BYTE_PTR f, CK_ULONG *g, CK_FLAGS h))			\
	X(C_MessageEncryptFinal, OWN, (CK_SESSION_HANDLE a))		\
	X(C_MessageDecryptInit, OWN, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM *b, CK_OBJECT_HANDLE c))			\
	X(C_DecryptMessage, OWN, (CK_SESSION_HANDLE a, CK_VOID_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,	\
	    CK_ULONG g, CK_BYTE_PTR h, CK_ULONG *i))			\
	X(C_DecryptMessageBegin, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e))	\
	X(C_DecryptMessageNext, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e,	\
	    CK_BYTE_PTR f, CK_ULONG *g, CK_FLAGS h))			\
	X(C_MessageDecryptFinal, OWN, (CK_SESSION_HANDLE a))		\
	X(C_MessageSignInit, STUB, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM *b, CK_OBJECT_HANDLE c))			\
	X(C_SignMessage, STUB, (CK_SESSION_HANDLE a, CK_VOID_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,	\
	    CK_ULONG *g))						\
	X(C_SignMessageBegin, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c))					\
	X(C_SignMessageNext, STUB, (CK_SESSION_HANDLE a, CK_VOID_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,	\
	    CK_ULONG *g))						\
	X(C_MessageSignFinal, STUB, (CK_SESSION_HANDLE a))		\
	X(C_MessageVerifyInit, STUB, (CK_SESSION_HANDLE a,		\
	    CK_MECHANISM *b, CK_OBJECT_HANDLE c))			\
	X(C_VerifyMessage, STUB, (CK_SESSION_HANDLE a, CK_VOID_PTR b,	\
	    CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,	\
	    CK_ULONG g))						\
	X(C_VerifyMessageBegin, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c))					\
	X(C_VerifyMessageNext, STUB, (CK_SESSION_HANDLE a,		\
	    CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e,	\
	    CK_BYTE_PTR f, CK_ULONG g))					\
	X(C_MessageVerifyFinal, STUB, (CK_SESSION_HANDLE a))

#define FAULT_ENUM1(name)			FN_##name,
#define FAULT_NAME1(name)			#name,
#define FAULT_ENUM(name, end, params, args)	FN_##name,
#define FAULT_NAME(name, end, params, args)	#name,
#define FAULT_ENUM3(name, impl, params)		FN_##name,
#define FAULT_NAME3(name, impl, params)		#name,

enum fault_fn {
	FN_ANY = -1,		/* '*' in a rule */
	FAULT_HAND(FAULT_ENUM1)
	FAULT_OWN(FAULT_ENUM1)
	FAULT_FORWARDED(FAULT_ENUM)
	FAULT_V3(FAULT_ENUM3)
	FN_COUNT
};

static const char *const fault_names[FN_COUNT] = {
	FAULT_HAND(FAULT_NAME1)
	FAULT_OWN(FAULT_NAME1)
	FAULT_FORWARDED(FAULT_NAME)
	FAULT_V3(FAULT_NAME3)
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
	RULE_GCM_IV, RULE_STDERR, RULE_REQUIRE_RESERVED
};

/* How the emulated token makes AES-GCM IVs (the gcm-iv rule). */
enum fault_gcm {
	GCM_CALLER = 0,		/* no rule: the caller's IV (SoftHSM) */
	GCM_WRITEBACK,		/* into the caller's all-zero pIv */
	GCM_APPEND16,		/* after the tag, 16 bytes (Luna) */
	GCM_APPEND12,		/* after the tag, 12 bytes (older PTK) */
	GCM_MESSAGE		/* PKCS#11 3.0 C_EncryptMessage only */
};

static const struct {
	const char *name;
	enum fault_gcm mode;
} fault_gcm_modes[] = {
	{ "writeback", GCM_WRITEBACK }, { "append", GCM_APPEND16 },
	{ "append12", GCM_APPEND12 }, { "message", GCM_MESSAGE },
};

struct fault_rule {
	int fn;			/* enum fault_fn or FN_ANY */
	enum fault_kind kind;
	CK_RV rv;		/* RULE_FAIL */
	long left;		/* RULE_FAIL: calls left to fail; -1 = all */
	unsigned long ms;	/* RULE_DELAY */
	unsigned long n;	/* RULE_MAX_SESSIONS */
	enum fault_gcm gcm;	/* RULE_GCM_IV */
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
	enum fault_gcm gcm;	/* the first gcm-iv rule, whatever fn is */
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
	if (strcmp(tok[1], "gcm-iv") == 0) {
		size_t i;

		for (i = 0; nt == 3 && i < sizeof(fault_gcm_modes) /
		    sizeof(fault_gcm_modes[0]); i++)
			if (strcmp(tok[2], fault_gcm_modes[i].name) == 0)
				break;
		if (r->fn != FN_C_EncryptInit || nt != 3 ||
		    i == sizeof(fault_gcm_modes) / sizeof(fault_gcm_modes[0])) {
			snprintf(why, whylen, "gcm-iv is for C_EncryptInit "
			    "only and wants writeback, append, append12 or "
			    "message");
			return -1;
		}
		r->kind = RULE_GCM_IV;
		r->gcm = fault_gcm_modes[i].mode;
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
	    fn != FN_C_Finalize && fn != FN_C_GetInterface &&
	    fn != FN_C_GetInterfaceList;
}

/* Must hold fault_mu. Consumes a count only when the call will not hang. */
static void
fault_decide_locked(int fn, struct fault_verdict *v)
{
	struct fault_rule *r;
	size_t i;

	memset(v, 0, sizeof(*v));
	for (i = 0; i < fault_nrules; i++) {
		if (fault_rules[i].kind == RULE_GCM_IV) {
			v->gcm = fault_rules[i].gcm;
			break;
		}
	}
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
	/*
	 * The same numbers in PATH.pidPID too: with the daemon's token
	 * process, each generation is a process of its own, and a reader
	 * adds their files up (tests/integration/faultctl.py).
	 */
	n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", fault_counts_path,
	    (long)getpid());
	if (n > 0 && (size_t)n < sizeof(tmp) &&
	    (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0644)) != -1) {
		char per[PATH_MAX];

		w = write(fd, buf, off);
		n = snprintf(per, sizeof(per), "%s.pid%ld", fault_counts_path,
		    (long)getpid());
		if (close(fd) != 0 || w != (ssize_t)off || n < 0 ||
		    (size_t)n >= sizeof(per) || rename(tmp, per) != 0)
			unlink(tmp);
	}
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
/*
 * Per-session state of the gcm-iv emulation, guarded by fault_mu like the
 * rest: the IV an append-mode C_EncryptInit made, for the C_Encrypt that
 * appends it; the key of an active message-based encryption or decryption
 * (C_MessageEncryptInit ... C_MessageEncryptFinal). An entry goes when it
 * holds nothing, when its session closes, and at C_Finalize.
 */
struct fault_sess {
	CK_SESSION_HANDLE h;
	CK_ULONG append_len;		/* 0: no append-mode C_Encrypt due */
	CK_BYTE append_iv[FAULT_IV_MAX];
	int enc, dec;			/* message operation active */
	CK_OBJECT_HANDLE enc_key, dec_key;
};

static struct fault_sess *fault_sess;	/* guarded by fault_mu */
static size_t fault_nsess, fault_sess_cap;

/* Must hold fault_mu. NULL when h has no entry. */
static struct fault_sess *
fault_sess_find_locked(CK_SESSION_HANDLE h)
{
	size_t i;

	for (i = 0; i < fault_nsess; i++)
		if (fault_sess[i].h == h)
			return &fault_sess[i];
	return NULL;
}

/*
 * Must hold fault_mu. h's entry, made if missing; NULL when out of memory.
 * Valid until the next add or drop.
 */
static struct fault_sess *
fault_sess_add_locked(CK_SESSION_HANDLE h)
{
	struct fault_sess *e, *n;
	size_t cap;

	if ((e = fault_sess_find_locked(h)) != NULL)
		return e;
	if (fault_nsess == fault_sess_cap) {
		cap = fault_sess_cap == 0 ? 16 : 2 * fault_sess_cap;
		if ((n = realloc(fault_sess, cap * sizeof(*n))) == NULL)
			return NULL;
		fault_sess = n;
		fault_sess_cap = cap;
	}
	e = &fault_sess[fault_nsess++];
	memset(e, 0, sizeof(*e));
	e->h = h;
	return e;
}

/* Must hold fault_mu. Removes e (from fault_sess_*_locked). */
static void
fault_sess_remove_locked(struct fault_sess *e)
{
	*e = fault_sess[--fault_nsess];
}

/* Must hold fault_mu. Removes e if it holds nothing any more. */
static void
fault_sess_tidy_locked(struct fault_sess *e)
{
	if (e->append_len == 0 && !e->enc && !e->dec)
		fault_sess_remove_locked(e);
}

static void
fault_sess_drop(CK_SESSION_HANDLE h)
{
	struct fault_sess *e;

	pthread_mutex_lock(&fault_mu);
	if ((e = fault_sess_find_locked(h)) != NULL)
		fault_sess_remove_locked(e);
	pthread_mutex_unlock(&fault_mu);
}

static void
fault_sess_clear(void)
{
	pthread_mutex_lock(&fault_mu);
	free(fault_sess);
	fault_sess = NULL;
	fault_nsess = fault_sess_cap = 0;
	pthread_mutex_unlock(&fault_mu);
}

/*
 * Records the IV the C_Encrypt of h must append (len 0: none). Returns
 * CKR_OK or CKR_HOST_MEMORY.
 */
static CK_RV
fault_append_set(CK_SESSION_HANDLE h, const CK_BYTE *iv, CK_ULONG len)
{
	struct fault_sess *e;
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&fault_mu);
	if (len == 0) {
		if ((e = fault_sess_find_locked(h)) != NULL) {
			e->append_len = 0;
			fault_sess_tidy_locked(e);
		}
	} else if ((e = fault_sess_add_locked(h)) == NULL) {
		rv = CKR_HOST_MEMORY;
	} else {
		memcpy(e->append_iv, iv, len);
		e->append_len = len;
	}
	pthread_mutex_unlock(&fault_mu);
	return rv;
}

/* The IV h's C_Encrypt must append into iv: its length, 0 for none. */
static CK_ULONG
fault_append_get(CK_SESSION_HANDLE h, CK_BYTE iv[FAULT_IV_MAX])
{
	struct fault_sess *e;
	CK_ULONG len = 0;

	pthread_mutex_lock(&fault_mu);
	if ((e = fault_sess_find_locked(h)) != NULL &&
	    (len = e->append_len) > 0)
		memcpy(iv, e->append_iv, len);
	pthread_mutex_unlock(&fault_mu);
	return len;
}

static int
fault_all_zero(const CK_BYTE *p, CK_ULONG len)
{
	CK_ULONG i;

	for (i = 0; i < len; i++)
		if (p[i] != 0)
			return 0;
	return 1;
}

/*
 * len random bytes from getrandom(2), never all zero (an all-zero IV
 * would read as "not written back"). CKR_OK or CKR_FUNCTION_FAILED.
 */
static CK_RV
fault_random(CK_BYTE *buf, CK_ULONG len)
{
	CK_ULONG off;
	ssize_t n;

	do {
		for (off = 0; off < len; off += (CK_ULONG)n) {
			n = getrandom(buf + off, len - off, 0);
			if (n < 0 && errno == EINTR)
				n = 0;
			else if (n < 0)
				return CKR_FUNCTION_FAILED;
		}
	} while (len > 0 && fault_all_zero(buf, len));
	return CKR_OK;
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
	if ((rv = r->C_Finalize(reserved)) == CKR_OK)
		fault_sess_clear();	/* every session is gone */
	return rv;
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

/* ------------------------------------------------------------------ */
/* 2.40 functions the gcm-iv rule changes, and session state upkeep. */

static CK_RV
fault_C_CloseSession(CK_SESSION_HANDLE h)
{
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_CloseSession)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if ((rv = r->C_CloseSession(h)) == CKR_OK)
		fault_sess_drop(h);
	return rv;
}

static CK_RV
fault_C_CloseAllSessions(CK_SLOT_ID slot)
{
	CK_SESSION_HANDLE *hs;
	CK_FUNCTION_LIST *r;
	CK_SESSION_INFO si;
	size_t i, n;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_CloseAllSessions)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if ((rv = r->C_CloseAllSessions(slot)) != CKR_OK)
		return rv;
	/*
	 * The slot's sessions are those the real module no longer knows
	 * (asked without the lock; only this module's state is dropped).
	 */
	pthread_mutex_lock(&fault_mu);
	n = fault_nsess;
	hs = n > 0 ? malloc(n * sizeof(*hs)) : NULL;
	for (i = 0; hs != NULL && i < n; i++)
		hs[i] = fault_sess[i].h;
	pthread_mutex_unlock(&fault_mu);
	if (n > 0 && hs == NULL) {
		fault_sess_clear();
		return CKR_OK;
	}
	for (i = 0; i < n; i++)
		if (r->C_GetSessionInfo(hs[i], &si) != CKR_OK)
			fault_sess_drop(hs[i]);
	free(hs);
	return CKR_OK;
}

/*
 * C_EncryptInit of AES-GCM under a gcm-iv rule. A caller's IV (any
 * non-zero byte) is refused, as a FIPS-mode HSM refuses it; otherwise the
 * IV is made here as mode says and SoftHSM encrypts with it.
 */
static CK_RV
fault_gcm_encrypt_init(CK_FUNCTION_LIST *r, enum fault_gcm mode,
    CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
	CK_GCM_PARAMS *gp = m->pParameter, g;
	CK_BYTE iv[FAULT_IV_MAX];
	CK_MECHANISM m2;
	CK_ULONG ivlen;
	int none, zero;
	CK_RV rv;

	none = gp->pIv == NULL || gp->ulIvLen == 0;
	zero = !none && gp->ulIvLen <= FAULT_IV_SCAN_MAX &&
	    fault_all_zero(gp->pIv, gp->ulIvLen);
	if (!none && !zero)
		return CKR_MECHANISM_PARAM_INVALID;
	switch (mode) {
	case GCM_WRITEBACK:
		if (none || gp->ulIvLen < 12 || gp->ulIvLen > FAULT_IV_MAX)
			return CKR_MECHANISM_PARAM_INVALID;
		if ((rv = fault_random(gp->pIv, gp->ulIvLen)) != CKR_OK)
			return rv;
		if ((rv = r->C_EncryptInit(h, m, key)) != CKR_OK) {
			/* A failed call leaves the caller's IV as it was. */
			memset(gp->pIv, 0, gp->ulIvLen);
			return rv;
		}
		(void)fault_append_set(h, NULL, 0);
		return CKR_OK;
	case GCM_APPEND16:
	case GCM_APPEND12:
		ivlen = mode == GCM_APPEND16 ? 16 : 12;
		if ((rv = fault_random(iv, ivlen)) != CKR_OK)
			return rv;
		g = *gp;
		g.pIv = iv;
		g.ulIvLen = ivlen;
		g.ulIvBits = 8 * ivlen;
		m2 = *m;
		m2.pParameter = &g;
		m2.ulParameterLen = sizeof(g);
		if ((rv = r->C_EncryptInit(h, &m2, key)) != CKR_OK)
			return rv;
		if ((rv = fault_append_set(h, iv, ivlen)) != CKR_OK)
			fault_end_one(r->C_Encrypt, h, iv, 1);
		return rv;
	default:
		/* GCM_MESSAGE: AES-GCM encrypts through C_EncryptMessage only. */
		return CKR_MECHANISM_PARAM_INVALID;
	}
}

static CK_RV
fault_C_EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m,
    CK_OBJECT_HANDLE key)
{
	struct fault_verdict v;
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter_v(FN_C_EncryptInit, &v)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	/* Malformed GCM parameters go to SoftHSM, which refuses them. */
	if (v.gcm != GCM_CALLER && m != NULL &&
	    m->mechanism == CKM_AES_GCM && m->pParameter != NULL &&
	    m->ulParameterLen == sizeof(CK_GCM_PARAMS))
		return fault_gcm_encrypt_init(r, v.gcm, h, m, key);
	if ((rv = r->C_EncryptInit(h, m, key)) == CKR_OK)
		(void)fault_append_set(h, NULL, 0);
	return rv;
}

/*
 * In append mode the output is SoftHSM's ciphertext||tag and then the IV;
 * a length query or too small a buffer answers that length, and the
 * operation stays active after CKR_BUFFER_TOO_SMALL.
 */
static CK_RV
fault_C_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG inlen,
    CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	CK_BYTE iv[FAULT_IV_MAX];
	CK_FUNCTION_LIST *r;
	CK_ULONG ivlen, n, need;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_Encrypt)) != CKR_OK) {
		if ((r = fault_target()) != NULL) {
			fault_end_one(r->C_Encrypt, h, in, inlen);
			(void)fault_append_set(h, NULL, 0);
		}
		return rv;
	}
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if ((ivlen = fault_append_get(h, iv)) == 0)
		return r->C_Encrypt(h, in, inlen, out, outlen);
	if (outlen == NULL)
		return CKR_ARGUMENTS_BAD;	/* SoftHSM keeps it active too */
	n = 0;
	if ((rv = r->C_Encrypt(h, in, inlen, NULL, &n)) != CKR_OK)
		goto out;
	need = n + ivlen;
	if (out == NULL) {
		*outlen = need;
		return CKR_OK;
	}
	if (*outlen < need) {
		*outlen = need;
		return CKR_BUFFER_TOO_SMALL;
	}
	n = *outlen - ivlen;
	if ((rv = r->C_Encrypt(h, in, inlen, out, &n)) == CKR_OK) {
		memcpy(out + n, iv, ivlen);
		*outlen = n + ivlen;
	} else if (rv == CKR_BUFFER_TOO_SMALL) {
		*outlen = n + ivlen;
	}
out:
	/* Over, unless SoftHSM keeps the operation active. */
	if (rv != CKR_BUFFER_TOO_SMALL && rv != CKR_ARGUMENTS_BAD)
		(void)fault_append_set(h, NULL, 0);
	return rv;
}

/*
 * Append mode is single-part only: C_EncryptUpdate or C_EncryptFinal ends
 * the operation with CKR_FUNCTION_NOT_SUPPORTED.
 */
static CK_RV
fault_append_refuse(CK_FUNCTION_LIST *r, CK_SESSION_HANDLE h)
{
	CK_BYTE one[1] = { 0 };

	fault_end_one(r->C_Encrypt, h, one, sizeof(one));
	(void)fault_append_set(h, NULL, 0);
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV
fault_C_EncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG inlen,
    CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	CK_BYTE iv[FAULT_IV_MAX];
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_EncryptUpdate)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (fault_append_get(h, iv) > 0)
		return fault_append_refuse(r, h);
	return r->C_EncryptUpdate(h, in, inlen, out, outlen);
}

static CK_RV
fault_C_EncryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out,
    CK_ULONG_PTR outlen)
{
	CK_BYTE iv[FAULT_IV_MAX];
	CK_FUNCTION_LIST *r;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_EncryptFinal)) != CKR_OK) {
		if ((r = fault_target()) != NULL) {
			fault_end_final(r->C_EncryptFinal, h);
			(void)fault_append_set(h, NULL, 0);
		}
		return rv;
	}
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (fault_append_get(h, iv) > 0)
		return fault_append_refuse(r, h);
	return r->C_EncryptFinal(h, out, outlen);
}

/* ------------------------------------------------------------------ */
/*
 * PKCS#11 3.0: the interfaces, and AES-GCM message-based encryption built
 * on SoftHSM's single-part C_EncryptInit+C_Encrypt and
 * C_DecryptInit+C_Decrypt, one real operation per message.
 */

static CK_UTF8CHAR fault_if_name[] = P11V3_INTERFACE_NAME;
static P11V3_FUNCTION_LIST fault_list3;
static P11V3_INTERFACE fault_if2 = { fault_if_name, &fault_list, 0 };
static P11V3_INTERFACE fault_if3 = { fault_if_name, &fault_list3, 0 };

/* Current rules' gcm-iv mode, for a call counted as fn. */
static CK_RV
fault_enter_gcm(int fn, enum fault_gcm *mode)
{
	struct fault_verdict v;
	CK_RV rv;

	rv = fault_enter_v(fn, &v);
	*mode = v.gcm;
	return rv;
}

/*
 * Offered: the 2.40 interface (fault_list), and while a gcm-iv message
 * rule is in force first a 3.0 one (fault_list3) as well.
 */
static CK_RV
fault_C_GetInterfaceList(P11V3_INTERFACE *list, CK_ULONG *n)
{
	enum fault_gcm mode;
	CK_ULONG have;
	CK_RV rv;

	if ((rv = fault_enter_gcm(FN_C_GetInterfaceList, &mode)) != CKR_OK)
		return rv;
	if (n == NULL)
		return CKR_ARGUMENTS_BAD;
	have = mode == GCM_MESSAGE ? 2 : 1;
	if (list == NULL) {
		*n = have;
		return CKR_OK;
	}
	if (*n < have) {
		*n = have;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (mode == GCM_MESSAGE)
		list[0] = fault_if3;
	list[have - 1] = fault_if2;
	*n = have;
	return CKR_OK;
}

/*
 * name NULL or "PKCS 11"; version NULL (the newest on offer), 3.0 (only
 * under a message rule) or 2.40; no interface has flags, so flags must be 0.
 * Anything else: CKR_ARGUMENTS_BAD.
 */
static CK_RV
fault_C_GetInterface(CK_UTF8CHAR *name, CK_VERSION *ver,
    P11V3_INTERFACE **out, CK_FLAGS flags)
{
	P11V3_INTERFACE *pick = NULL;
	enum fault_gcm mode;
	CK_RV rv;

	if ((rv = fault_enter_gcm(FN_C_GetInterface, &mode)) != CKR_OK)
		return rv;
	if (out == NULL || flags != 0 || (name != NULL &&
	    strcmp((const char *)name, P11V3_INTERFACE_NAME) != 0))
		return CKR_ARGUMENTS_BAD;
	if (ver == NULL)
		pick = mode == GCM_MESSAGE ? &fault_if3 : &fault_if2;
	else if (ver->major == 3 && ver->minor == 0 && mode == GCM_MESSAGE)
		pick = &fault_if3;
	else if (ver->major == 2 && ver->minor == 40)
		pick = &fault_if2;
	if (pick == NULL)
		return CKR_ARGUMENTS_BAD;
	*out = pick;
	return CKR_OK;
}

/* The key of h's active message operation: 0 and *key, or -1 for none. */
static int
fault_msg_key(CK_SESSION_HANDLE h, int dec, CK_OBJECT_HANDLE *key)
{
	struct fault_sess *e;
	int ret = -1;

	pthread_mutex_lock(&fault_mu);
	if ((e = fault_sess_find_locked(h)) != NULL && (dec ? e->dec :
	    e->enc)) {
		*key = dec ? e->dec_key : e->enc_key;
		ret = 0;
	}
	pthread_mutex_unlock(&fault_mu);
	return ret;
}

/*
 * C_MessageEncryptInit / C_MessageDecryptInit: CKM_AES_GCM without a
 * parameter (each message brings its own). Session and key are vetted as
 * a token would at init, by one real GCM operation with a random IV run
 * to its end into a scratch buffer: encryption of one byte; decryption of
 * a wrong tag, which fails and so ends it.
 */
static CK_RV
fault_msg_init(int fn, int dec, CK_SESSION_HANDLE h, CK_MECHANISM *m,
    CK_OBJECT_HANDLE key)
{
	CK_BYTE iv[12], in[16] = { 0 }, scratch[48];
	CK_OBJECT_HANDLE k;
	CK_FUNCTION_LIST *r;
	struct fault_sess *e;
	CK_MECHANISM probe;
	CK_GCM_PARAMS g;
	CK_ULONG n;
	CK_RV rv;

	if ((rv = fault_enter(fn)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (m == NULL)
		return CKR_ARGUMENTS_BAD;
	if (m->mechanism != CKM_AES_GCM)
		return CKR_MECHANISM_INVALID;
	if (m->pParameter != NULL || m->ulParameterLen != 0)
		return CKR_MECHANISM_PARAM_INVALID;
	if (fault_msg_key(h, dec, &k) == 0)
		return CKR_OPERATION_ACTIVE;
	if ((rv = fault_random(iv, sizeof(iv))) != CKR_OK)
		return rv;
	memset(&g, 0, sizeof(g));
	g.pIv = iv;
	g.ulIvLen = sizeof(iv);
	g.ulIvBits = 8 * sizeof(iv);
	g.ulTagBits = 128;
	probe.mechanism = CKM_AES_GCM;
	probe.pParameter = &g;
	probe.ulParameterLen = sizeof(g);
	n = sizeof(scratch);
	if (dec) {
		if ((rv = r->C_DecryptInit(h, &probe, key)) != CKR_OK)
			return rv;
		(void)r->C_Decrypt(h, in, sizeof(in), scratch, &n);
	} else {
		if ((rv = r->C_EncryptInit(h, &probe, key)) != CKR_OK)
			return rv;
		(void)r->C_Encrypt(h, in, 1, scratch, &n);
	}
	explicit_bzero(scratch, sizeof(scratch));

	pthread_mutex_lock(&fault_mu);
	if ((e = fault_sess_add_locked(h)) == NULL) {
		rv = CKR_HOST_MEMORY;
	} else if (dec ? e->dec : e->enc) {
		rv = CKR_OPERATION_ACTIVE;	/* another thread won */
	} else if (dec) {
		e->dec = 1;
		e->dec_key = key;
	} else {
		e->enc = 1;
		e->enc_key = key;
	}
	pthread_mutex_unlock(&fault_mu);
	return rv;
}

static CK_RV
fault_msg_final(int fn, int dec, CK_SESSION_HANDLE h)
{
	struct fault_sess *e;
	CK_RV rv;

	if ((rv = fault_enter(fn)) != CKR_OK)
		return rv;
	pthread_mutex_lock(&fault_mu);
	if ((e = fault_sess_find_locked(h)) == NULL || !(dec ? e->dec :
	    e->enc)) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else {
		if (dec)
			e->dec = 0;
		else
			e->enc = 0;
		fault_sess_tidy_locked(e);
	}
	pthread_mutex_unlock(&fault_mu);
	return rv;
}

/*
 * Checks a CK_GCM_MESSAGE_PARAMS and returns the tag length in *taglen.
 * Encryption: the token makes every IV bit (ulIvFixedBits 0,
 * CKG_GENERATE_RANDOM), 12..16 bytes. Decryption: the caller's IV, 1..256
 * bytes (the generator fields are ignored). Both: a tag buffer, 96..128
 * bits in whole bytes.
 */
static CK_RV
fault_msg_params(const P11V3_GCM_MESSAGE_PARAMS *p, CK_ULONG plen, int dec,
    CK_ULONG *taglen)
{
	if (p == NULL || plen != sizeof(*p) || p->pIv == NULL ||
	    p->pTag == NULL || p->ulTagBits < 96 || p->ulTagBits > 128 ||
	    p->ulTagBits % 8 != 0)
		return CKR_MECHANISM_PARAM_INVALID;
	if (dec) {
		if (p->ulIvLen == 0 || p->ulIvLen > FAULT_IV_SCAN_MAX)
			return CKR_MECHANISM_PARAM_INVALID;
	} else if (p->ivGenerator != CKG_GENERATE_RANDOM ||
	    p->ulIvFixedBits != 0 || p->ulIvLen < 12 ||
	    p->ulIvLen > FAULT_IV_MAX) {
		return CKR_MECHANISM_PARAM_INVALID;
	}
	*taglen = p->ulTagBits / 8;
	return CKR_OK;
}

static CK_RV
fault_C_MessageEncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM *m,
    CK_OBJECT_HANDLE key)
{
	return fault_msg_init(FN_C_MessageEncryptInit, 0, h, m, key);
}

/*
 * Makes the IV, encrypts with SoftHSM into ciphertext||tag, and hands out
 * the ciphertext in ct, the tag in pTag and the IV in pIv. ct NULL asks
 * for the length (no IV is made); a short ct gives CKR_BUFFER_TOO_SMALL.
 */
static CK_RV
fault_C_EncryptMessage(CK_SESSION_HANDLE h, CK_VOID_PTR param,
    CK_ULONG plen, CK_BYTE_PTR aad, CK_ULONG aadlen, CK_BYTE_PTR pt,
    CK_ULONG ptlen, CK_BYTE_PTR ct, CK_ULONG *ctlen)
{
	P11V3_GCM_MESSAGE_PARAMS *p = param;
	CK_BYTE iv[FAULT_IV_MAX], one[1] = { 0 }, *buf = NULL;
	CK_ULONG taglen = 0, n = 0, cap = 0;
	CK_FUNCTION_LIST *r;
	CK_OBJECT_HANDLE key;
	CK_MECHANISM m;
	CK_GCM_PARAMS g;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_EncryptMessage)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (fault_msg_key(h, 0, &key) != 0)
		return CKR_OPERATION_NOT_INITIALIZED;
	if ((rv = fault_msg_params(p, plen, 0, &taglen)) != CKR_OK)
		return rv;
	if (ctlen == NULL || (pt == NULL && ptlen > 0) ||
	    (aad == NULL && aadlen > 0))
		return CKR_ARGUMENTS_BAD;
	if (ptlen > FAULT_MSG_MAX)
		return CKR_DATA_LEN_RANGE;
	if (ct == NULL) {
		*ctlen = ptlen;
		return CKR_OK;
	}
	if (*ctlen < ptlen) {
		*ctlen = ptlen;
		return CKR_BUFFER_TOO_SMALL;
	}
	if ((rv = fault_random(iv, p->ulIvLen)) != CKR_OK)
		return rv;
	cap = ptlen + taglen;
	if ((buf = malloc(cap)) == NULL)
		return CKR_HOST_MEMORY;
	memset(&g, 0, sizeof(g));
	g.pIv = iv;
	g.ulIvLen = p->ulIvLen;
	g.ulIvBits = 8 * p->ulIvLen;
	g.pAAD = aad;
	g.ulAADLen = aadlen;
	g.ulTagBits = p->ulTagBits;
	m.mechanism = CKM_AES_GCM;
	m.pParameter = &g;
	m.ulParameterLen = sizeof(g);
	if ((rv = r->C_EncryptInit(h, &m, key)) != CKR_OK)
		goto out;
	n = cap;
	/* SoftHSM wants a data pointer even for no data. */
	rv = r->C_Encrypt(h, ptlen > 0 ? pt : one, ptlen, buf, &n);
	if (rv == CKR_BUFFER_TOO_SMALL)
		fault_end_one(r->C_Encrypt, h, ptlen > 0 ? pt : one, ptlen);
	if (rv == CKR_OK && n != cap)
		rv = CKR_GENERAL_ERROR;
	if (rv != CKR_OK)
		goto out;
	memcpy(ct, buf, ptlen);
	memcpy(p->pTag, buf + ptlen, taglen);
	memcpy(p->pIv, iv, p->ulIvLen);
	*ctlen = ptlen;
	/* success */
	rv = CKR_OK;
out:
	explicit_bzero(buf, cap);
	free(buf);
	return rv;
}

static CK_RV
fault_C_MessageEncryptFinal(CK_SESSION_HANDLE h)
{
	return fault_msg_final(FN_C_MessageEncryptFinal, 0, h);
}

static CK_RV
fault_C_MessageDecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM *m,
    CK_OBJECT_HANDLE key)
{
	return fault_msg_init(FN_C_MessageDecryptInit, 1, h, m, key);
}

/*
 * Decrypts ct under the caller's pIv, pTag and aad with SoftHSM (which
 * gets ct||tag). A wrong tag, IV or AAD gives SoftHSM's answer
 * (CKR_GENERAL_ERROR) and leaves pt untouched.
 */
static CK_RV
fault_C_DecryptMessage(CK_SESSION_HANDLE h, CK_VOID_PTR param,
    CK_ULONG plen, CK_BYTE_PTR aad, CK_ULONG aadlen, CK_BYTE_PTR ct,
    CK_ULONG ctlen, CK_BYTE_PTR pt, CK_ULONG *ptlen)
{
	P11V3_GCM_MESSAGE_PARAMS *p = param;
	CK_BYTE *in = NULL, *buf = NULL;
	CK_ULONG taglen = 0, n = 0, cap = 0;
	CK_FUNCTION_LIST *r;
	CK_OBJECT_HANDLE key;
	CK_MECHANISM m;
	CK_GCM_PARAMS g;
	CK_RV rv;

	if ((rv = fault_enter(FN_C_DecryptMessage)) != CKR_OK)
		return rv;
	if ((r = fault_target()) == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (fault_msg_key(h, 1, &key) != 0)
		return CKR_OPERATION_NOT_INITIALIZED;
	if ((rv = fault_msg_params(p, plen, 1, &taglen)) != CKR_OK)
		return rv;
	if (ptlen == NULL || (ct == NULL && ctlen > 0) ||
	    (aad == NULL && aadlen > 0))
		return CKR_ARGUMENTS_BAD;
	if (ctlen > FAULT_MSG_MAX)
		return CKR_ENCRYPTED_DATA_LEN_RANGE;
	if (pt == NULL) {
		*ptlen = ctlen;
		return CKR_OK;
	}
	if (*ptlen < ctlen) {
		*ptlen = ctlen;
		return CKR_BUFFER_TOO_SMALL;
	}
	cap = ctlen + taglen;
	if ((in = malloc(cap)) == NULL || (buf = malloc(cap)) == NULL) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	if (ctlen > 0)
		memcpy(in, ct, ctlen);
	memcpy(in + ctlen, p->pTag, taglen);
	memset(&g, 0, sizeof(g));
	g.pIv = p->pIv;
	g.ulIvLen = p->ulIvLen;
	g.ulIvBits = 8 * p->ulIvLen;
	g.pAAD = aad;
	g.ulAADLen = aadlen;
	g.ulTagBits = p->ulTagBits;
	m.mechanism = CKM_AES_GCM;
	m.pParameter = &g;
	m.ulParameterLen = sizeof(g);
	if ((rv = r->C_DecryptInit(h, &m, key)) != CKR_OK)
		goto out;
	n = cap;
	rv = r->C_Decrypt(h, in, cap, buf, &n);
	if (rv == CKR_BUFFER_TOO_SMALL)
		fault_end_one(r->C_Decrypt, h, in, cap);
	if (rv == CKR_OK && n != ctlen)
		rv = CKR_GENERAL_ERROR;
	if (rv != CKR_OK)
		goto out;
	if (ctlen > 0)
		memcpy(pt, buf, ctlen);
	*ptlen = ctlen;
	/* success */
	rv = CKR_OK;
out:
	if (buf != NULL)
		explicit_bzero(buf, cap);
	free(buf);
	free(in);
	return rv;
}

static CK_RV
fault_C_MessageDecryptFinal(CK_SESSION_HANDLE h)
{
	return fault_msg_final(FN_C_MessageDecryptFinal, 1, h);
}

/* The other 3.0 functions: counted, fail rules apply, else unsupported. */
#define FAULT_V3_STUB(name, params)					\
	static CK_RV							\
	fault_##name params						\
	{								\
		CK_RV rv;						\
									\
		if ((rv = fault_enter(FN_##name)) != CKR_OK)		\
			return rv;					\
		return CKR_FUNCTION_NOT_SUPPORTED;			\
	}
#define FAULT_V3_OWN(name, params)
#define FAULT_V3_DEF(name, impl, params)	FAULT_V3_##impl(name, params)
FAULT_V3(FAULT_V3_DEF)

/* ------------------------------------------------------------------ */

#define FAULT_MEMBER1(name)			.name = fault_##name,
#define FAULT_MEMBER(name, end, params, args)	.name = fault_##name,
#define FAULT_MEMBER3(name, impl, params)	.name = fault_##name,
#define FAULT_V2_MEMBERS						\
	FAULT_HAND(FAULT_MEMBER1)					\
	FAULT_OWN(FAULT_MEMBER1)					\
	FAULT_FORWARDED(FAULT_MEMBER)

/* What C_GetFunctionList gives and the 2.40 interface. */
static CK_FUNCTION_LIST fault_list = {
	.version = { 2, 40 },
	FAULT_V2_MEMBERS
};

/* The 3.0 interface: the same 2.40 functions, then the 3.0 ones. */
static P11V3_FUNCTION_LIST fault_list3 = {
	.v2 = {
		.version = { 3, 0 },
		FAULT_V2_MEMBERS
	},
	FAULT_V3(FAULT_MEMBER3)
};

FAULT_EXPORT CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	return fault_C_GetFunctionList(out);
}

FAULT_EXPORT CK_RV C_GetInterfaceList(P11V3_INTERFACE *list, CK_ULONG *n);
FAULT_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR *name, CK_VERSION *ver,
    P11V3_INTERFACE **out, CK_FLAGS flags);

FAULT_EXPORT CK_RV
C_GetInterfaceList(P11V3_INTERFACE *list, CK_ULONG *n)
{
	return fault_C_GetInterfaceList(list, n);
}

FAULT_EXPORT CK_RV
C_GetInterface(CK_UTF8CHAR *name, CK_VERSION *ver, P11V3_INTERFACE **out,
    CK_FLAGS flags)
{
	return fault_C_GetInterface(name, ver, out, flags);
}
