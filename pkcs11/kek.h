/*
 * kek: what one key on the token is fit for. Reads its attributes, derives
 * its key_id, finds an RSA key's public half, and self-tests every
 * mechanism the token and the key's attributes allow, so that keyring_load
 * (what it may use), keyring_list (what an operator sees) and keygen (what
 * it just made) all judge a key the same way. Internal to pkcs11/.
 *
 * A fit key is an AES-256 secret key, or an RSA private key of 2048..4096
 * bits with a public key of the same CKA_ID and modulus on the token; it is
 * sensitive and non-extractable; and it passes at least one row of
 * mech_table[]: the token offers the row's mechanism with its flags, the
 * key's attributes allow it (the row's use[] flags, and its
 * CKA_ALLOWED_MECHANISMS when it has one), and a real round trip passes.
 * The key is judged before it is identified: a key no row can use is
 * refused with the reason, never with a check-value failure.
 */
#ifndef P11KMS_KEK_H
#define P11KMS_KEK_H

#include <stddef.h>
#include <stdint.h>

#include "pkcs11/envelope.h"
#include "pkcs11/keyring.h"
#include "pkcs11/mech.h"
#include "pkcs11/token.h"

#define KEK_MECHS_MAX	128

#define KEK_WHY_MAX	256
#define KEK_RSA_MIN_BITS 2048
#define KEK_RSA_MAX_BITS (8 * MECH_RSA_MAX_BYTES)

/* What the token offers (mechanism list and info), before any key. */
struct kek_tokmechs {
	unsigned offered;	/* MECH_BIT(row) the token lists with the flags */
	int v3;			/* the module has the PKCS#11 3.0 functions */
	int ecb;		/* CKM_AES_ECB encrypt (check values) */
};

struct kek {
	CK_OBJECT_CLASS cls;		/* CKO_SECRET_KEY or CKO_PRIVATE_KEY */
	CK_OBJECT_HANDLE token_obj;	/* the key (RSA: private key) */
	/*
	 * What seal/open use. AES: a session copy of the key on the login
	 * session (same value, still sensitive and non-extractable, inside
	 * the token; SoftHSM re-reads a token key's file on every use, a
	 * session copy is 2-3x faster), or token_obj when the token refuses
	 * copies. RSA: the token's private and public key. Valid in every
	 * session of ours.
	 */
	struct mech_key mk;
	unsigned caps;			/* MECH_BIT(row) of each that passed */
	uint8_t seal_row;		/* chosen by keyring_load */
	uint8_t keyref[ENVELOPE_KEYREF_LEN];
	char key_id[KEYRING_KEY_ID_MAX];	/* "" if it could not be made */
	char desc[128];			/* "token 'kms' object 'kek1'" */
	char uri[TOKEN_URI_TEXT_MAX];	/* redacted, for messages */
	char label[KEYRING_LABEL_MAX];	/* printable */
	char id_hex[KEYRING_ID_HEX_MAX];
	char type[32];			/* "aes-256", "rsa-3072", ... */
	char mechs[KEK_MECHS_MAX];	/* "aes-gcm,aes-kwp/ecb" */
	/* What each passed row's self-test found ("IV written back"). */
	const char *detail[MECH_NROWS];
	/* How the key_id was made: "CKA_CHECK_VALUE", "AES-ECB", ... */
	const char *kcv_from;
	/* Why each row cannot be used ("" when it can). */
	char why[MECH_NROWS][KEK_WHY_MAX];
	/* Why the key is unfit as a whole ("" when fit). */
	char unfit[KEYRING_REASON_MAX];
};

/* Fills tm from the token's mechanism list and info. Fault: KEYRING_E_*. */
int kek_token_mechs(struct token *t, struct kek_tokmechs *tm, char *err,
    size_t errlen);

/* The session context for one-shot operations on t->session. */
void kek_sess(struct token *t, struct mech_sess *ms);

/*
 * Judges the key h of class cls. k->uri must be set (it names the key in
 * messages). copy: make the AES session copy described above (keyring
 * load), else use the token object (listing). Returns KEYRING_OK when the
 * key is fit; KEYRING_E_CONFIG when it is not, with k->unfit and err
 * ("key URI " + k->unfit) saying why and how to make a fit key; another
 * status (err says it) when the token failed while judging. k->caps,
 * k->mechs and k->why are filled in every case, k->key_id when possible.
 */
int kek_eval(struct token *t, const struct kek_tokmechs *tm,
    CK_OBJECT_HANDLE h, CK_OBJECT_CLASS cls, struct kek *k, int copy,
    char *err, size_t errlen);

/* Lowercase hex of b into out (cap bytes), "..." when cut. */
void kek_hex(const uint8_t *b, size_t n, char *out, size_t cap);

#endif
