/*
 * fuzz_envelope: envelope_decode on arbitrary bytes. On success the parsed
 * fields must describe the input exactly: the header re-encodes to the same
 * bytes, the body is the rest, and the AAD is the label plus that header.
 * On failure the output must be zeroed (callers may print it).
 *
 * The body then goes through envelope_unframe (what a token hands back for
 * mechanisms without AAD), and through a frame/unframe round trip: a frame
 * of the body under this header, plus 0..8 zero bytes of padding, opens to
 * exactly the body when the padding is at most ENVELOPE_FRAME_PAD_MAX, and
 * not once a bit of its header binding is changed.
 */
#include <stdlib.h>
#include <string.h>

#include "pkcs11/envelope.h"
#include "pkcs11/mech.h"
#include "tests/fuzz/fuzz.h"

#define CHECK(c)	FUZZ_CHECK(c)

static void
check_frames(const struct envelope *e)
{
	uint8_t frame[ENVELOPE_FRAME_HDR + ENVELOPE_MAX_LEN + 8];
	const uint8_t *pt;
	size_t ptlen, n, pad, i;

	if (envelope_unframe(e, e->body, e->body_len, &pt, &ptlen) == 0) {
		CHECK(e->body_len >= ENVELOPE_FRAME_HDR);
		CHECK(pt == e->body + ENVELOPE_FRAME_HDR);
		CHECK(ptlen <= e->body_len - ENVELOPE_FRAME_HDR);
		CHECK(e->body_len - ENVELOPE_FRAME_HDR - ptlen <=
		    ENVELOPE_FRAME_PAD_MAX);
		for (i = ENVELOPE_FRAME_HDR + ptlen; i < e->body_len; i++)
			CHECK(e->body[i] == 0);
	} else {
		CHECK(pt == NULL && ptlen == 0);
	}

	/* Round trip; the padding length comes from the input. */
	n = envelope_frame(e, e->body, e->body_len, frame, sizeof(frame) - 8);
	CHECK(n == ENVELOPE_FRAME_HDR + e->body_len);
	CHECK(memcmp(frame + ENVELOPE_FRAME_HDR, e->body, e->body_len) == 0);
	CHECK(envelope_frame(e, e->body, e->body_len, frame, n - 1) == 0);
	pad = e->body[0] % 9;
	memset(frame + n, 0, pad);
	if (pad <= ENVELOPE_FRAME_PAD_MAX) {
		CHECK(envelope_unframe(e, frame, n + pad, &pt, &ptlen) == 0);
		CHECK(pt == frame + ENVELOPE_FRAME_HDR);
		CHECK(ptlen == e->body_len);
	} else {
		CHECK(envelope_unframe(e, frame, n + pad, &pt, &ptlen) != 0);
	}
	/*
	 * A change to the header binding is refused. (The length field is
	 * not bound: the token's integrity check covers the whole frame.)
	 */
	i = e->body[e->body_len - 1] % ENVELOPE_FRAME_BIND;
	frame[i] ^= 1u << (e->body[0] % 8);
	CHECK(envelope_unframe(e, frame, n + pad, &pt, &ptlen) != 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct envelope zero;
	uint8_t hdr[ENVELOPE_FIXED_LEN + ENVELOPE_IV_MAX];
	uint8_t aad[ENVELOPE_AAD_MAX];
	const size_t llen = sizeof(ENVELOPE_AAD_LABEL) - 1;
	char hex[2 * ENVELOPE_KEYREF_LEN + 1];
	struct envelope e;
	size_t hlen, n, i;

	if (envelope_decode(data, size, &e) != 0) {
		CHECK(memcmp(&e, &zero, sizeof(e)) == 0);
		return 0;
	}
	CHECK(size >= ENVELOPE_FIXED_LEN + 1 && size <= ENVELOPE_MAX_LEN);
	CHECK(e.format == ENVELOPE_FORMAT_V1);
	CHECK(e.iv_len <= ENVELOPE_IV_MAX);
	hlen = envelope_header_len(&e);
	CHECK(hlen == ENVELOPE_FIXED_LEN + (size_t)e.iv_len);
	CHECK(e.body == data + hlen);
	CHECK(e.body_len > 0 && e.body_len == size - hlen);

	/* The header re-encodes to the input's bytes, and only fits in hlen. */
	CHECK(envelope_encode_header(&e, hdr, sizeof(hdr)) == hlen);
	CHECK(memcmp(hdr, data, hlen) == 0);
	CHECK(envelope_encode_header(&e, hdr, hlen - 1) == 0);
	CHECK(envelope_encode_header(&e, NULL, sizeof(hdr)) == 0);

	/* AAD = label || header; refused when it cannot fit. */
	n = envelope_aad(&e, aad, sizeof(aad));
	CHECK(n == llen + hlen);
	CHECK(memcmp(aad, ENVELOPE_AAD_LABEL, llen) == 0);
	CHECK(memcmp(aad + llen, data, hlen) == 0);
	CHECK(envelope_aad(&e, aad, llen + hlen - 1) == 0);
	CHECK(envelope_aad(&e, aad, llen - 1) == 0);

	/* Decoding the re-encoded envelope gives the same fields. */
	{
		struct envelope e2;
		uint8_t *copy = malloc(size);

		CHECK(copy != NULL);
		memcpy(copy, hdr, hlen);
		memcpy(copy + hlen, e.body, e.body_len);
		CHECK(envelope_decode(copy, size, &e2) == 0);
		CHECK(e2.format == e.format && e2.mech == e.mech &&
		    e2.iv_len == e.iv_len && e2.body_len == e.body_len &&
		    memcmp(e2.keyref, e.keyref, sizeof(e.keyref)) == 0 &&
		    memcmp(e2.iv, e.iv, e.iv_len) == 0 &&
		    e2.body == copy + hlen);
		free(copy);
	}

	check_frames(&e);
	CHECK(mech_env_name(e.mech) != NULL);

	envelope_keyref_hex(e.keyref, hex);
	CHECK(strlen(hex) == 2 * ENVELOPE_KEYREF_LEN);
	for (i = 0; i < ENVELOPE_KEYREF_LEN; i++) {
		static const char digits[] = "0123456789abcdef";
		CHECK(hex[2 * i] == digits[e.keyref[i] >> 4]);
		CHECK(hex[2 * i + 1] == digits[e.keyref[i] & 15]);
	}
	return 0;
}
