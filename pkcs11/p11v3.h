/*
 * p11v3: the few PKCS#11 3.0 definitions p11kms uses, which Debian 12's
 * p11-kit 0.24 pkcs11.h (Cryptoki 2.40) lacks: interfaces (C_GetInterface)
 * and the message-based AES-GCM encryption a FIPS-mode HSM offers so that
 * the token, not the caller, makes the IV. Layouts follow the PKCS#11 3.0
 * base specification; include after token.h (needs the 2.40 types). When
 * p11-kit ships 3.0 headers these come from there instead.
 */
#ifndef P11KMS_P11V3_H
#define P11KMS_P11V3_H

#include <p11-kit/pkcs11.h>

/* The interface name every PKCS#11 3.0 module offers. */
#define P11V3_INTERFACE_NAME	"PKCS 11"

#ifndef CKG_GENERATE_RANDOM
typedef CK_ULONG CK_GENERATOR_FUNCTION;
#define CKG_NO_GENERATE		0x00000000UL
#define CKG_GENERATE		0x00000001UL
#define CKG_GENERATE_COUNTER	0x00000002UL
#define CKG_GENERATE_RANDOM	0x00000003UL
#define CKG_GENERATE_COUNTER_XOR 0x00000004UL
#endif

/* C_EncryptMessage's parameter for CKM_AES_GCM. */
typedef struct p11v3_gcm_message_params {
	CK_BYTE_PTR pIv;		/* the token writes the IV here */
	CK_ULONG ulIvLen;
	CK_ULONG ulIvFixedBits;		/* 0: every bit is generated */
	CK_GENERATOR_FUNCTION ivGenerator;
	CK_BYTE_PTR pTag;		/* the tag, apart from the ciphertext */
	CK_ULONG ulTagBits;
} P11V3_GCM_MESSAGE_PARAMS;

typedef struct p11v3_interface {
	CK_UTF8CHAR *pInterfaceName;
	CK_VOID_PTR pFunctionList;
	CK_FLAGS flags;
} P11V3_INTERFACE;

typedef CK_RV (*P11V3_C_GetInterfaceList)(P11V3_INTERFACE *list,
    CK_ULONG *count);
typedef CK_RV (*P11V3_C_GetInterface)(CK_UTF8CHAR *name, CK_VERSION *version,
    P11V3_INTERFACE **iface, CK_FLAGS flags);
typedef CK_RV (*P11V3_C_LoginUser)(CK_SESSION_HANDLE s, CK_USER_TYPE user,
    CK_UTF8CHAR *pin, CK_ULONG pinlen, CK_UTF8CHAR *name, CK_ULONG namelen);
typedef CK_RV (*P11V3_C_SessionCancel)(CK_SESSION_HANDLE s, CK_FLAGS flags);
typedef CK_RV (*P11V3_C_MessageInit)(CK_SESSION_HANDLE s,
    CK_MECHANISM *mech, CK_OBJECT_HANDLE key);
/* C_EncryptMessage and C_DecryptMessage share this shape. */
typedef CK_RV (*P11V3_C_CryptMessage)(CK_SESSION_HANDLE s, CK_VOID_PTR param,
    CK_ULONG paramlen, CK_BYTE_PTR aad, CK_ULONG aadlen, CK_BYTE_PTR in,
    CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG *outlen);
typedef CK_RV (*P11V3_C_MessageBegin)(CK_SESSION_HANDLE s, CK_VOID_PTR param,
    CK_ULONG paramlen, CK_BYTE_PTR aad, CK_ULONG aadlen);
typedef CK_RV (*P11V3_C_MessageNext)(CK_SESSION_HANDLE s, CK_VOID_PTR param,
    CK_ULONG paramlen, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
    CK_ULONG *outlen, CK_FLAGS flags);
typedef CK_RV (*P11V3_C_MessageFinal)(CK_SESSION_HANDLE s);
typedef CK_RV (*P11V3_C_SignMessage)(CK_SESSION_HANDLE s, CK_VOID_PTR param,
    CK_ULONG paramlen, CK_BYTE_PTR data, CK_ULONG datalen, CK_BYTE_PTR sig,
    CK_ULONG *siglen);
typedef CK_RV (*P11V3_C_SignMessageBegin)(CK_SESSION_HANDLE s,
    CK_VOID_PTR param, CK_ULONG paramlen);
typedef CK_RV (*P11V3_C_VerifyMessage)(CK_SESSION_HANDLE s, CK_VOID_PTR param,
    CK_ULONG paramlen, CK_BYTE_PTR data, CK_ULONG datalen, CK_BYTE_PTR sig,
    CK_ULONG siglen);
typedef CK_RV (*P11V3_C_VerifyMessageNext)(CK_SESSION_HANDLE s,
    CK_VOID_PTR param, CK_ULONG paramlen, CK_BYTE_PTR data, CK_ULONG datalen,
    CK_BYTE_PTR sig, CK_ULONG siglen);

/*
 * CK_FUNCTION_LIST_3_0: the 2.40 list (version first, then its 68 entry
 * points, same layout) followed by the 3.0 entry points in this order.
 */
typedef struct p11v3_function_list {
	CK_FUNCTION_LIST v2;
	P11V3_C_GetInterfaceList C_GetInterfaceList;
	P11V3_C_GetInterface C_GetInterface;
	P11V3_C_LoginUser C_LoginUser;
	P11V3_C_SessionCancel C_SessionCancel;
	P11V3_C_MessageInit C_MessageEncryptInit;
	P11V3_C_CryptMessage C_EncryptMessage;
	P11V3_C_MessageBegin C_EncryptMessageBegin;
	P11V3_C_MessageNext C_EncryptMessageNext;
	P11V3_C_MessageFinal C_MessageEncryptFinal;
	P11V3_C_MessageInit C_MessageDecryptInit;
	P11V3_C_CryptMessage C_DecryptMessage;
	P11V3_C_MessageBegin C_DecryptMessageBegin;
	P11V3_C_MessageNext C_DecryptMessageNext;
	P11V3_C_MessageFinal C_MessageDecryptFinal;
	P11V3_C_MessageInit C_MessageSignInit;
	P11V3_C_SignMessage C_SignMessage;
	P11V3_C_SignMessageBegin C_SignMessageBegin;
	P11V3_C_SignMessage C_SignMessageNext;
	P11V3_C_MessageFinal C_MessageSignFinal;
	P11V3_C_MessageInit C_MessageVerifyInit;
	P11V3_C_VerifyMessage C_VerifyMessage;
	P11V3_C_SignMessageBegin C_VerifyMessageBegin;
	P11V3_C_VerifyMessageNext C_VerifyMessageNext;
	P11V3_C_MessageFinal C_MessageVerifyFinal;
} P11V3_FUNCTION_LIST;

#endif
