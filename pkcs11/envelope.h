/*
 * envelope: the versioned binary ciphertext p11kms hands to kube-apiserver.
 * Pure byte handling, no token access; the wire layout is documented in
 * SECURITY.md ("Envelope format").
 *
 *   off  len  field
 *   0    1    format      ENVELOPE_FORMAT_V1
 *   1    1    mechanism   ENVELOPE_MECH_*
 *   2    16   key ref     first 16 bytes of the key fingerprint (= key_id)
 *   18   1    iv length   n (0..ENVELOPE_IV_MAX)
 *   19   n    iv
 *   19+n rest body        token output (ciphertext || tag), 1.. bytes
 *
 * AAD for AEAD mechanisms = ENVELOPE_AAD_LABEL || bytes [0, 19+n), except
 * for ENVELOPE_MECH_AES_GCM_TIV, whose IV the token makes during the seal,
 * after the AAD is given: there AAD = ENVELOPE_AAD_LABEL || bytes [0, 18)
 * (format, mechanism, key ref). GCM authenticates the IV and its length
 * itself (they determine the counter block and so the tag).
 *
 * Mechanisms without AAD (AES key wrap, RSA-OAEP) have iv length 0 and seal
 * a frame instead of the bare plaintext (envelope_frame below):
 *
 *   frame = SHA-256(AAD)[0..8) || u16 big-endian plaintext length
 *           || plaintext
 *
 * The token's integrity check (KWP's integrity value, OAEP's decoding)
 * covers the frame, so the digest binds the header there as AAD does for
 * GCM, and the length survives tokens whose C_UnwrapKey hands back the
 * RFC 5649 zero padding with the value (SoftHSM 2.6.1 does).
 */
#ifndef P11KMS_ENVELOPE_H
#define P11KMS_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#define ENVELOPE_FORMAT_V1	0x01
/*
 * Mechanism bytes. A value is never reused or reinterpreted: envelopes
 * already stored in etcd say how they open.
 */
/* CKM_AES_GCM, 96-bit IV, 128-bit tag */
#define ENVELOPE_MECH_AES_GCM		0x01
/* CKM_AES_KEY_WRAP_PAD (RFC 5649) of the frame */
#define ENVELOPE_MECH_AES_KWP		0x02
/* CKM_RSA_PKCS_OAEP of the frame, SHA-256 and MGF1-SHA-256, empty label */
#define ENVELOPE_MECH_RSA_OAEP_SHA256	0x03
/* the same with SHA-1 and MGF1-SHA-1 */
#define ENVELOPE_MECH_RSA_OAEP_SHA1	0x04
/* CKM_AES_GCM, 128-bit tag, IV (12 or 16 bytes) made by the token */
#define ENVELOPE_MECH_AES_GCM_TIV	0x05
#define ENVELOPE_KEYREF_LEN	16
#define ENVELOPE_IV_MAX		16
#define ENVELOPE_FIXED_LEN	19	/* header without the IV */
#define ENVELOPE_MAX_LEN	1024
#define ENVELOPE_AAD_LABEL	"p11kms-envelope"	/* without NUL */
#define ENVELOPE_AAD_MAX	(sizeof(ENVELOPE_AAD_LABEL) - 1 + \
				 ENVELOPE_FIXED_LEN + ENVELOPE_IV_MAX)
#define ENVELOPE_FRAME_BIND	8	/* header digest bytes in a frame */
#define ENVELOPE_FRAME_HDR	(ENVELOPE_FRAME_BIND + 2)
/* Zero bytes a frame may carry after the plaintext (KWP padding). */
#define ENVELOPE_FRAME_PAD_MAX	7

struct envelope {
	uint8_t format;
	uint8_t mech;
	uint8_t keyref[ENVELOPE_KEYREF_LEN];
	uint8_t iv_len;
	uint8_t iv[ENVELOPE_IV_MAX];
	const uint8_t *body;	/* borrowed: points into the decoded buffer */
	size_t body_len;
};

/*
 * Parses buf. Returns 0, or -1 when the bytes are not a well-formed envelope
 * of a known format (unknown format byte, short, iv too long, empty or
 * oversized body). Does not check the mechanism against the token.
 */
int envelope_decode(const uint8_t *buf, size_t len, struct envelope *out);
/* Length of the header (everything before body) for e. */
size_t envelope_header_len(const struct envelope *e);
/*
 * Writes the header of e into buf (cap bytes). Returns the header length or
 * 0 when cap is too small. The caller appends the body.
 */
size_t envelope_encode_header(const struct envelope *e, uint8_t *buf,
    size_t cap);
/* Writes the AAD for e into aad (cap >= ENVELOPE_AAD_MAX). Returns length. */
size_t envelope_aad(const struct envelope *e, uint8_t *aad, size_t cap);
/*
 * Writes the frame of pt (ptlen <= 0xffff) for header e into out (cap
 * bytes). Returns its length (ENVELOPE_FRAME_HDR + ptlen), or 0 when cap is
 * too small or hashing fails.
 */
size_t envelope_frame(const struct envelope *e, const uint8_t *pt,
    size_t ptlen, uint8_t *out, size_t cap);
/*
 * Checks a frame the token gave back for header e: the header digest, the
 * length, and that at most ENVELOPE_FRAME_PAD_MAX zero bytes follow. On
 * success points *pt into in and sets *ptlen; returns 0, else -1.
 */
int envelope_unframe(const struct envelope *e, const uint8_t *in, size_t len,
    const uint8_t **pt, size_t *ptlen);
/* Lowercase hex of the key ref into out (>= 2*ENVELOPE_KEYREF_LEN+1). */
void envelope_keyref_hex(const uint8_t keyref[ENVELOPE_KEYREF_LEN], char *out);

#endif
