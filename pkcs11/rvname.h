/*
 * rvname: names of CK_RV codes, and the fault/request split of them.
 * Internal to pkcs11/ (token.h includes it).
 */
#ifndef P11KMS_RVNAME_H
#define P11KMS_RVNAME_H

#include <p11-kit/pkcs11.h>

/* "CKR_PIN_INCORRECT"; unknown codes as "CKR_0x…" (thread-local buffer). */
const char *token_rv_name(CK_RV rv);
/*
 * 1 when rv means the session, the login or the token itself failed (so a
 * new session may help), 0 when it concerns the data or the request.
 */
int token_rv_is_fault(CK_RV rv);

#endif
