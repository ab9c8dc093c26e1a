/*
 * envelope: encode and decode the ciphertext envelope (layout in envelope.h).
 * Pure byte handling on caller-owned memory; never allocates (the frame's
 * SHA-256 goes through OpenSSL, which may).
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "pkcs11/envelope.h"

#define OFF_FORMAT	0
#define OFF_MECH	1
#define OFF_KEYREF	2
#define OFF_IVLEN	(OFF_KEYREF + ENVELOPE_KEYREF_LEN)
#define OFF_IV		ENVELOPE_FIXED_LEN

_Static_assert(OFF_IVLEN + 1 == ENVELOPE_FIXED_LEN, "envelope layout");

int
envelope_decode(const uint8_t *buf, size_t len, struct envelope *out)
{
	struct envelope e;
	size_t hlen;

	memset(out, 0, sizeof(*out));
	if (buf == NULL || len < ENVELOPE_FIXED_LEN || len > ENVELOPE_MAX_LEN)
		return -1;
	memset(&e, 0, sizeof(e));
	e.format = buf[OFF_FORMAT];
	if (e.format != ENVELOPE_FORMAT_V1)
		return -1;
	e.mech = buf[OFF_MECH];
	memcpy(e.keyref, buf + OFF_KEYREF, ENVELOPE_KEYREF_LEN);
	e.iv_len = buf[OFF_IVLEN];
	if (e.iv_len > ENVELOPE_IV_MAX)
		return -1;
	/* Compare against what remains: len >= ENVELOPE_FIXED_LEN here. */
	if (e.iv_len > len - ENVELOPE_FIXED_LEN)
		return -1;
	memcpy(e.iv, buf + OFF_IV, e.iv_len);
	hlen = ENVELOPE_FIXED_LEN + e.iv_len;
	if (len - hlen == 0)
		return -1;	/* a body of zero bytes is never token output */
	e.body = buf + hlen;
	e.body_len = len - hlen;

	/* success */
	*out = e;
	return 0;
}

size_t
envelope_header_len(const struct envelope *e)
{
	return ENVELOPE_FIXED_LEN + (size_t)e->iv_len;
}

size_t
envelope_encode_header(const struct envelope *e, uint8_t *buf, size_t cap)
{
	size_t hlen;

	if (e->iv_len > ENVELOPE_IV_MAX)
		return 0;
	hlen = envelope_header_len(e);
	if (buf == NULL || cap < hlen)
		return 0;
	buf[OFF_FORMAT] = e->format;
	buf[OFF_MECH] = e->mech;
	memcpy(buf + OFF_KEYREF, e->keyref, ENVELOPE_KEYREF_LEN);
	buf[OFF_IVLEN] = e->iv_len;
	memcpy(buf + OFF_IV, e->iv, e->iv_len);
	return hlen;
}

/*
 * The AAD is rebuilt from the parsed fields rather than copied from the
 * input, so what the token authenticates is exactly what we act on.
 * Returns 0 when cap is too small or e is not encodable.
 */
size_t
envelope_aad(const struct envelope *e, uint8_t *aad, size_t cap)
{
	const size_t llen = sizeof(ENVELOPE_AAD_LABEL) - 1;
	uint8_t hdr[ENVELOPE_FIXED_LEN + ENVELOPE_IV_MAX];
	size_t hlen;

	if (e->iv_len > ENVELOPE_IV_MAX || aad == NULL)
		return 0;
	hlen = envelope_header_len(e);
	if (envelope_encode_header(e, hdr, sizeof(hdr)) != hlen)
		return 0;
	/* The token makes this one's IV after the AAD is given. */
	if (e->mech == ENVELOPE_MECH_AES_GCM_TIV)
		hlen = OFF_IVLEN;
	if (cap < llen || cap - llen < hlen)
		return 0;
	memcpy(aad, ENVELOPE_AAD_LABEL, llen);
	memcpy(aad + llen, hdr, hlen);
	return llen + hlen;
}

/* First ENVELOPE_FRAME_BIND bytes of SHA-256(AAD of e). */
static int
frame_bind(const struct envelope *e, uint8_t bind[ENVELOPE_FRAME_BIND])
{
	uint8_t aad[ENVELOPE_AAD_MAX], md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	size_t aadlen;

	if ((aadlen = envelope_aad(e, aad, sizeof(aad))) == 0)
		return -1;
	if (EVP_Digest(aad, aadlen, md, &mdlen, EVP_sha256(), NULL) != 1 ||
	    mdlen < ENVELOPE_FRAME_BIND)
		return -1;
	memcpy(bind, md, ENVELOPE_FRAME_BIND);
	return 0;
}

size_t
envelope_frame(const struct envelope *e, const uint8_t *pt, size_t ptlen,
    uint8_t *out, size_t cap)
{
	if (out == NULL || ptlen > 0xffff || cap < ENVELOPE_FRAME_HDR ||
	    cap - ENVELOPE_FRAME_HDR < ptlen || (ptlen > 0 && pt == NULL))
		return 0;
	if (frame_bind(e, out) != 0)
		return 0;
	out[ENVELOPE_FRAME_BIND] = (uint8_t)(ptlen >> 8);
	out[ENVELOPE_FRAME_BIND + 1] = (uint8_t)ptlen;
	if (ptlen > 0)
		memcpy(out + ENVELOPE_FRAME_HDR, pt, ptlen);
	return ENVELOPE_FRAME_HDR + ptlen;
}

int
envelope_unframe(const struct envelope *e, const uint8_t *in, size_t len,
    const uint8_t **pt, size_t *ptlen)
{
	uint8_t bind[ENVELOPE_FRAME_BIND], extra = 0;
	size_t n, rest, i;

	*pt = NULL;
	*ptlen = 0;
	if (in == NULL || len < ENVELOPE_FRAME_HDR || frame_bind(e, bind) != 0)
		return -1;
	if (CRYPTO_memcmp(in, bind, sizeof(bind)) != 0)
		return -1;
	n = (size_t)in[ENVELOPE_FRAME_BIND] << 8 | in[ENVELOPE_FRAME_BIND + 1];
	/* Compare against what remains. */
	if (n > len - ENVELOPE_FRAME_HDR)
		return -1;
	rest = len - ENVELOPE_FRAME_HDR - n;
	if (rest > ENVELOPE_FRAME_PAD_MAX)
		return -1;
	for (i = 0; i < rest; i++)
		extra |= in[ENVELOPE_FRAME_HDR + n + i];
	if (extra != 0)
		return -1;

	/* success */
	*pt = in + ENVELOPE_FRAME_HDR;
	*ptlen = n;
	return 0;
}

void
envelope_keyref_hex(const uint8_t keyref[ENVELOPE_KEYREF_LEN], char *out)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < ENVELOPE_KEYREF_LEN; i++) {
		out[2 * i] = hex[keyref[i] >> 4];
		out[2 * i + 1] = hex[keyref[i] & 0x0f];
	}
	out[2 * ENVELOPE_KEYREF_LEN] = '\0';
}
