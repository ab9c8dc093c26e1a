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
 * AAD for AEAD mechanisms = ENVELOPE_AAD_LABEL || bytes [0, 19+n).
 */
#ifndef P11KMS_ENVELOPE_H
#define P11KMS_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#define ENVELOPE_FORMAT_V1	0x01
#define ENVELOPE_MECH_AES_GCM	0x01	/* CKM_AES_GCM, 96-bit IV, 128-bit tag */
#define ENVELOPE_KEYREF_LEN	16
#define ENVELOPE_IV_MAX		16
#define ENVELOPE_FIXED_LEN	19	/* header without the IV */
#define ENVELOPE_MAX_LEN	1024
#define ENVELOPE_AAD_LABEL	"p11kms-envelope"	/* without NUL */
#define ENVELOPE_AAD_MAX	(sizeof(ENVELOPE_AAD_LABEL) - 1 + \
				 ENVELOPE_FIXED_LEN + ENVELOPE_IV_MAX)

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
/* Lowercase hex of the key ref into out (>= 2*ENVELOPE_KEYREF_LEN+1). */
void envelope_keyref_hex(const uint8_t keyref[ENVELOPE_KEYREF_LEN], char *out);

#endif
