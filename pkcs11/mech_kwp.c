/*
 * mech_kwp: AES key wrap with padding (RFC 5649, NIST SP 800-38F KWP) of an
 * envelope frame, two ways that give the same bytes (contracts in mech.h):
 *
 *   aes-kwp      the token's CKM_AES_KEY_WRAP_PAD: the frame goes into a
 *                short-lived session object that C_WrapKey wraps; open is
 *                C_UnwrapKey into a session object whose value is read and
 *                destroyed. Tokens offer KWP only through C_WrapKey.
 *   aes-kwp/ecb  RFC 5649 computed here on the token's CKM_AES_ECB: one
 *                C_EncryptInit (C_DecryptInit), one C_EncryptUpdate per
 *                AES block, C_EncryptFinal. The KEK never leaves the token;
 *                only the frame (which holds the DEK the apiserver already
 *                has) and the intermediate blocks pass through here, and
 *                they are wiped.
 *
 * Session objects made for aes-kwp are destroyed on every path; should
 * C_DestroyObject itself fail, the object still dies with the session, and
 * it lives inside the token, not in our memory.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "pkcs11/keyring.h"
#include "pkcs11/mech.h"

#define FRAME_MAX	(ENVELOPE_FRAME_HDR + KEYRING_MAX_PLAINTEXT)
#define KWP_MAX		((FRAME_MAX + 7) / 8 * 8 + MECH_KWP_ICV_LEN)
#define KWP_MAX_BLOCKS	(KWP_MAX / 8)

/* RFC 5649 section 3: the alternative initial value's constant half. */
static const uint8_t kwp_aiv[4] = { 0xa6, 0x59, 0x59, 0xa6 };

size_t
mech_kwp_len(size_t n)
{
	return (n + 7) / 8 * 8 + MECH_KWP_ICV_LEN;
}

static void
xor_t(uint8_t a[8], uint64_t t)
{
	int i;

	for (i = 7; i >= 0; i--) {
		a[i] ^= (uint8_t)t;
		t >>= 8;
	}
}

int
mech_kwp_wrap(mech_block_fn blk, void *ctx, const uint8_t *in, size_t n,
    uint8_t *out)
{
	uint8_t b[16], *r;
	size_t blocks, i, j;
	int ret = -1;

	if (n == 0 || n > KWP_MAX - MECH_KWP_ICV_LEN)
		return -1;
	blocks = (n + 7) / 8;
	/* out = A || R[1..blocks]; padding zeros fill the last R. */
	memset(out, 0, 8 + 8 * blocks);
	memcpy(out, kwp_aiv, 4);
	out[4] = (uint8_t)(n >> 24);
	out[5] = (uint8_t)(n >> 16);
	out[6] = (uint8_t)(n >> 8);
	out[7] = (uint8_t)n;
	memcpy(out + 8, in, n);
	if (blocks == 1) {
		/* One block: a single AES encryption of AIV || P. */
		memcpy(b, out, 16);
		if (blk(ctx, 0, b) != 0)
			goto out;
		memcpy(out, b, 16);
		ret = 0;
		goto out;
	}
	/* RFC 3394 W: 6 rounds over the blocks, A kept in out[0..8). */
	for (j = 0; j < 6; j++) {
		for (i = 1; i <= blocks; i++) {
			r = out + 8 * i;
			memcpy(b, out, 8);
			memcpy(b + 8, r, 8);
			if (blk(ctx, 0, b) != 0)
				goto out;
			memcpy(out, b, 8);
			xor_t(out, (uint64_t)(blocks * j + i));
			memcpy(r, b + 8, 8);
		}
	}
	ret = 0;
out:
	OPENSSL_cleanse(b, sizeof(b));
	if (ret != 0)
		OPENSSL_cleanse(out, 8 + 8 * blocks);
	return ret;
}

int
mech_kwp_unwrap(mech_block_fn blk, void *ctx, const uint8_t *in, size_t n,
    uint8_t *out, size_t *outlen)
{
	uint8_t a[8], b[16], bad;
	size_t blocks, i, j, mli, pad;
	int ret = -1;

	*outlen = 0;
	if (n % 8 != 0 || n < 16 || n > KWP_MAX)
		return -2;
	blocks = n / 8 - 1;
	if (blocks == 1) {
		memcpy(b, in, 16);
		if (blk(ctx, 1, b) != 0)
			goto out;
		memcpy(a, b, 8);
		memcpy(out, b + 8, 8);
	} else {
		memcpy(a, in, 8);
		memcpy(out, in + 8, 8 * blocks);
		for (j = 6; j-- > 0;) {
			for (i = blocks; i >= 1; i--) {
				memcpy(b, a, 8);
				xor_t(b, (uint64_t)(blocks * j + i));
				memcpy(b + 8, out + 8 * (i - 1), 8);
				if (blk(ctx, 1, b) != 0)
					goto out;
				memcpy(a, b, 8);
				memcpy(out + 8 * (i - 1), b + 8, 8);
			}
		}
	}
	/* RFC 5649 section 3: check the AIV, the length, the zero pad. */
	ret = -2;
	mli = (size_t)a[4] << 24 | (size_t)a[5] << 16 | (size_t)a[6] << 8 |
	    a[7];
	bad = (uint8_t)CRYPTO_memcmp(a, kwp_aiv, 4);
	if (bad != 0 || mli <= 8 * (blocks - 1) || mli > 8 * blocks)
		goto out;
	pad = 8 * blocks - mli;
	for (i = 0; i < pad; i++)
		bad |= out[mli + i];
	if (bad != 0)
		goto out;

	/* success */
	*outlen = mli;
	ret = 0;
out:
	OPENSSL_cleanse(a, sizeof(a));
	OPENSSL_cleanse(b, sizeof(b));
	if (ret != 0)
		OPENSSL_cleanse(out, 8 * blocks);
	return ret;
}

/* ---- aes-kwp: the token's own CKM_AES_KEY_WRAP_PAD ------------------- */

int
mech_kwp_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t want, size_t *bodylen,
    struct mech_err *me)
{
	uint8_t frame[FRAME_MAX];
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		/* Wrappable, so C_WrapKey takes it; it holds only the DEK
		 * the apiserver already has, for the length of this call. */
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
		{ CKA_VALUE, frame, 0 },
	};
	CK_MECHANISM m = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
	CK_ULONG outlen = want;
	size_t framelen;
	int ret = KEYRING_E_TOKEN;

	(void)d;
	e->iv_len = 0;
	if ((framelen = envelope_frame(e, pt, ptlen, frame,
	    sizeof(frame))) == 0)
		return KEYRING_E_INVALID;
	tmpl[6].ulValueLen = framelen;
	(void)mech_note(me, "C_CreateObject", ms->fn->C_CreateObject(ms->s,
	    tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &obj));
	if (me->rv != CKR_OK) {
		obj = CK_INVALID_HANDLE;
		goto out;
	}
	if (mech_note(me, "C_WrapKey", ms->fn->C_WrapKey(ms->s, &m, k->obj,
	    obj, body, &outlen)) != CKR_OK)
		goto out;
	if (outlen != want)
		goto out;

	/* success */
	*bodylen = want;
	ret = KEYRING_OK;
out:
	if (obj != CK_INVALID_HANDLE)
		(void)ms->fn->C_DestroyObject(ms->s, obj);
	OPENSSL_cleanse(frame, sizeof(frame));
	return ret;
}

/* RFC 5649 output: a multiple of 8, at least two blocks. */
static int
kwp_body_ok(const struct envelope *e, size_t cap)
{
	return e->iv_len == 0 && e->body_len % 8 == 0 && e->body_len >= 16 &&
	    e->body_len <= KWP_MAX && e->body_len <= cap;
}

int
mech_kwp_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		/* Readable, so its value (the frame) can come back to us. */
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
	};
	CK_ATTRIBUTE val = { CKA_VALUE, buf, cap };
	CK_MECHANISM m = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
	int ret = KEYRING_E_INVALID;

	(void)d;
	if (!kwp_body_ok(e, cap))
		goto out;
	(void)mech_note(me, "C_UnwrapKey", ms->fn->C_UnwrapKey(ms->s, &m,
	    k->obj, (CK_BYTE_PTR)e->body, e->body_len, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &obj));
	if (me->rv != CKR_OK) {
		obj = CK_INVALID_HANDLE;
		ret = mech_open_status(me->rv);
		goto out;
	}
	ret = KEYRING_E_TOKEN;
	if (mech_note(me, "C_GetAttributeValue", ms->fn->C_GetAttributeValue(
	    ms->s, obj, &val, 1)) != CKR_OK)
		goto out;
	/* The value cannot be longer than what was wrapped. */
	if (val.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
	    val.ulValueLen > e->body_len - MECH_KWP_ICV_LEN)
		goto out;

	/* success */
	*len = val.ulValueLen;
	ret = KEYRING_OK;
out:
	if (obj != CK_INVALID_HANDLE)
		(void)ms->fn->C_DestroyObject(ms->s, obj);
	return ret;
}

/* ---- aes-kwp/ecb: RFC 5649 on the token's AES-ECB --------------------- */

struct ecb_ctx {
	struct mech_sess *ms;
	struct mech_err *me;
};

/* One block through the ECB operation the caller initialized. */
static int
ecb_block(void *arg, int dec, uint8_t block[16])
{
	struct ecb_ctx *c = arg;
	uint8_t out[16];
	CK_ULONG outlen = sizeof(out);
	CK_RV rv;

	if (dec)
		rv = mech_note(c->me, "C_DecryptUpdate",
		    c->ms->fn->C_DecryptUpdate(c->ms->s, block, 16, out,
		    &outlen));
	else
		rv = mech_note(c->me, "C_EncryptUpdate",
		    c->ms->fn->C_EncryptUpdate(c->ms->s, block, 16, out,
		    &outlen));
	if (rv == CKR_OK && outlen != 16)
		rv = c->me->rv = CKR_GENERAL_ERROR;
	if (rv == CKR_OK)
		memcpy(block, out, 16);
	OPENSSL_cleanse(out, sizeof(out));
	return rv == CKR_OK ? 0 : -1;
}

/*
 * Ends the ECB operation. After a failed Update the token has already
 * ended it (PKCS#11: any error but CKR_BUFFER_TOO_SMALL does), and a Final
 * then only says CKR_OPERATION_NOT_INITIALIZED. Returns Final's CK_RV.
 */
static CK_RV
ecb_final(struct ecb_ctx *c, int dec, int noted)
{
	uint8_t scratch[16];
	CK_ULONG n = sizeof(scratch);
	CK_RV rv;

	if (dec)
		rv = c->ms->fn->C_DecryptFinal(c->ms->s, scratch, &n);
	else
		rv = c->ms->fn->C_EncryptFinal(c->ms->s, scratch, &n);
	if (noted)
		(void)mech_note(c->me, dec ? "C_DecryptFinal" :
		    "C_EncryptFinal", rv);
	OPENSSL_cleanse(scratch, sizeof(scratch));
	return rv;
}

static CK_RV
ecb_init(struct mech_sess *ms, const struct mech_key *k, int dec,
    struct mech_err *me)
{
	CK_MECHANISM m = { CKM_AES_ECB, NULL, 0 };

	if (dec)
		return mech_note(me, "C_DecryptInit",
		    ms->fn->C_DecryptInit(ms->s, &m, k->obj));
	return mech_note(me, "C_EncryptInit", ms->fn->C_EncryptInit(ms->s, &m,
	    k->obj));
}

int
mech_kwp_ecb_seal(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *body, size_t want, size_t *bodylen,
    struct mech_err *me)
{
	uint8_t frame[FRAME_MAX];
	struct ecb_ctx c = { ms, me };
	size_t framelen;
	int ret = KEYRING_E_TOKEN;

	(void)d;
	e->iv_len = 0;
	if ((framelen = envelope_frame(e, pt, ptlen, frame,
	    sizeof(frame))) == 0 || mech_kwp_len(framelen) != want)
		return KEYRING_E_INVALID;
	if (ecb_init(ms, k, 0, me) != CKR_OK)
		goto out;
	if (mech_kwp_wrap(ecb_block, &c, frame, framelen, body) != 0) {
		(void)ecb_final(&c, 0, 0);
		goto out;
	}
	if (ecb_final(&c, 0, 1) != CKR_OK)
		goto out;

	/* success */
	*bodylen = want;
	ret = KEYRING_OK;
out:
	if (ret != KEYRING_OK)
		OPENSSL_cleanse(body, want);
	OPENSSL_cleanse(frame, sizeof(frame));
	return ret;
}

int
mech_kwp_ecb_open(struct mech_sess *ms, const struct mech_def *d,
    const struct mech_key *k, const struct envelope *e, uint8_t *buf,
    size_t cap, size_t *len, struct mech_err *me)
{
	struct ecb_ctx c = { ms, me };
	size_t n = 0;
	int r;

	(void)d;
	if (!kwp_body_ok(e, cap))
		return KEYRING_E_INVALID;
	if (ecb_init(ms, k, 1, me) != CKR_OK)
		return KEYRING_E_TOKEN;
	r = mech_kwp_unwrap(ecb_block, &c, e->body, e->body_len, buf, &n);
	if (r == -1) {
		(void)ecb_final(&c, 1, 0);
		return mech_open_status(me->rv);
	}
	if (ecb_final(&c, 1, 1) != CKR_OK)
		return KEYRING_E_TOKEN;
	if (r != 0)
		return KEYRING_E_AUTH;	/* the integrity value disagrees */
	*len = n;
	return KEYRING_OK;
}
