/* Unit tests for pkcs11/envelope.c: the ciphertext envelope parser. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "pkcs11/envelope.h"

#define LABEL_LEN (sizeof(ENVELOPE_AAD_LABEL) - 1)

static void
sample(struct envelope *e, uint8_t iv_len)
{
	size_t i;

	memset(e, 0, sizeof(*e));
	e->format = ENVELOPE_FORMAT_V1;
	e->mech = ENVELOPE_MECH_AES_GCM;
	for (i = 0; i < ENVELOPE_KEYREF_LEN; i++)
		e->keyref[i] = (uint8_t)(0xa0 + i);
	e->iv_len = iv_len;
	for (i = 0; i < iv_len; i++)
		e->iv[i] = (uint8_t)(0x10 + i);
}

/* Header || body into buf; returns the total length. */
static size_t
build(const struct envelope *e, const uint8_t *body, size_t body_len,
    uint8_t *buf, size_t cap)
{
	size_t h = envelope_encode_header(e, buf, cap);

	assert_int_not_equal(h, 0);
	assert_true(cap - h >= body_len);
	memcpy(buf + h, body, body_len);
	return h + body_len;
}

static void
test_round_trip(void **state)
{
	struct envelope e, d;
	uint8_t buf[ENVELOPE_MAX_LEN], body[48];
	size_t len, i;

	(void)state;
	for (i = 0; i < sizeof(body); i++)
		body[i] = (uint8_t)i;
	sample(&e, 12);
	assert_int_equal(envelope_header_len(&e), ENVELOPE_FIXED_LEN + 12);
	len = build(&e, body, sizeof(body), buf, sizeof(buf));
	assert_int_equal(len, ENVELOPE_FIXED_LEN + 12 + sizeof(body));
	/* The documented layout, byte by byte. */
	assert_int_equal(buf[0], ENVELOPE_FORMAT_V1);
	assert_int_equal(buf[1], ENVELOPE_MECH_AES_GCM);
	assert_memory_equal(buf + 2, e.keyref, ENVELOPE_KEYREF_LEN);
	assert_int_equal(buf[18], 12);
	assert_memory_equal(buf + 19, e.iv, 12);

	assert_int_equal(envelope_decode(buf, len, &d), 0);
	assert_int_equal(d.format, e.format);
	assert_int_equal(d.mech, e.mech);
	assert_memory_equal(d.keyref, e.keyref, ENVELOPE_KEYREF_LEN);
	assert_int_equal(d.iv_len, 12);
	assert_memory_equal(d.iv, e.iv, 12);
	assert_ptr_equal(d.body, buf + ENVELOPE_FIXED_LEN + 12);
	assert_int_equal(d.body_len, sizeof(body));
	assert_memory_equal(d.body, body, sizeof(body));

	/* iv_len 0 and ENVELOPE_IV_MAX are legal too. */
	sample(&e, 0);
	len = build(&e, body, 1, buf, sizeof(buf));
	assert_int_equal(envelope_decode(buf, len, &d), 0);
	assert_int_equal(d.iv_len, 0);
	assert_int_equal(d.body_len, 1);
	sample(&e, ENVELOPE_IV_MAX);
	len = build(&e, body, 1, buf, sizeof(buf));
	assert_int_equal(envelope_decode(buf, len, &d), 0);
	assert_int_equal(d.iv_len, ENVELOPE_IV_MAX);
}

static void
test_every_truncation_fails(void **state)
{
	struct envelope e, d;
	uint8_t buf[ENVELOPE_MAX_LEN], body[33] = { 1 };
	uint8_t *copy;
	size_t len, n, hlen;

	(void)state;
	sample(&e, 12);
	len = build(&e, body, sizeof(body), buf, sizeof(buf));
	hlen = envelope_header_len(&e);
	for (n = 0; n < len; n++) {
		/* Exact-size heap copy: ASan catches any read past n. */
		copy = malloc(n > 0 ? n : 1);
		assert_non_null(copy);
		memcpy(copy, buf, n);
		memset(&d, 0x55, sizeof(d));
		if (n <= hlen) {
			assert_int_equal(envelope_decode(copy, n, &d), -1);
			/* Out-param cleared on failure. */
			assert_null(d.body);
			assert_int_equal(d.body_len, 0);
		} else {
			/* Shorter body, still well-formed at this layer. */
			assert_int_equal(envelope_decode(copy, n, &d), 0);
			assert_int_equal(d.body_len, n - hlen);
		}
		free(copy);
	}
	assert_int_equal(envelope_decode(NULL, 0, &d), -1);
}

static void
test_bad_format_byte(void **state)
{
	struct envelope e, d;
	uint8_t buf[ENVELOPE_MAX_LEN], body[17] = { 0 };
	size_t len;
	int f;

	(void)state;
	sample(&e, 12);
	len = build(&e, body, sizeof(body), buf, sizeof(buf));
	for (f = 0; f < 256; f++) {
		buf[0] = (uint8_t)f;
		assert_int_equal(envelope_decode(buf, len, &d),
		    f == ENVELOPE_FORMAT_V1 ? 0 : -1);
	}
	/* The mechanism byte is not judged here (the keyring does). */
	buf[0] = ENVELOPE_FORMAT_V1;
	buf[1] = 0x7f;
	assert_int_equal(envelope_decode(buf, len, &d), 0);
	assert_int_equal(d.mech, 0x7f);
}

static void
test_iv_len(void **state)
{
	struct envelope e, d;
	uint8_t buf[ENVELOPE_MAX_LEN];
	size_t len;
	int v;

	(void)state;
	sample(&e, 12);
	memset(buf, 0x42, sizeof(buf));
	len = envelope_encode_header(&e, buf, sizeof(buf)) + 40;
	for (v = ENVELOPE_IV_MAX + 1; v < 256; v++) {
		buf[18] = (uint8_t)v;
		assert_int_equal(envelope_decode(buf, len, &d), -1);
	}
	/* An iv that runs past the end: iv_len 16 with 10 bytes left. */
	buf[18] = 16;
	assert_int_equal(envelope_decode(buf, ENVELOPE_FIXED_LEN + 10, &d), -1);
	/* Exactly the iv and nothing after it: empty body. */
	assert_int_equal(envelope_decode(buf, ENVELOPE_FIXED_LEN + 16, &d), -1);

	/* The encoder refuses what the decoder would refuse. */
	e.iv_len = ENVELOPE_IV_MAX + 1;
	assert_int_equal(envelope_encode_header(&e, buf, sizeof(buf)), 0);
	assert_int_equal(envelope_aad(&e, buf, sizeof(buf)), 0);
}

static void
test_empty_body(void **state)
{
	struct envelope e, d;
	uint8_t buf[ENVELOPE_MAX_LEN];
	size_t h;

	(void)state;
	sample(&e, 12);
	h = envelope_encode_header(&e, buf, sizeof(buf));
	assert_int_equal(envelope_decode(buf, h, &d), -1);
	assert_int_equal(envelope_decode(buf, h + 1, &d), 0);
}

static void
test_oversize(void **state)
{
	struct envelope e, d;
	uint8_t *buf;
	size_t h;

	(void)state;
	buf = calloc(1, ENVELOPE_MAX_LEN + 1);
	assert_non_null(buf);
	sample(&e, 12);
	h = envelope_encode_header(&e, buf, ENVELOPE_MAX_LEN + 1);
	assert_true(h > 0);
	assert_int_equal(envelope_decode(buf, ENVELOPE_MAX_LEN, &d), 0);
	assert_int_equal(d.body_len, ENVELOPE_MAX_LEN - h);
	assert_int_equal(envelope_decode(buf, ENVELOPE_MAX_LEN + 1, &d), -1);
	assert_int_equal(envelope_decode(buf, SIZE_MAX, &d), -1);
	free(buf);
}

static void
test_encode_cap(void **state)
{
	struct envelope e;
	uint8_t buf[ENVELOPE_MAX_LEN];
	size_t h;

	(void)state;
	sample(&e, 12);
	h = envelope_header_len(&e);
	assert_int_equal(envelope_encode_header(&e, buf, h - 1), 0);
	assert_int_equal(envelope_encode_header(&e, buf, h), h);
	assert_int_equal(envelope_encode_header(&e, buf, 0), 0);
}

static void
test_aad(void **state)
{
	struct envelope e, e2;
	uint8_t aad[ENVELOPE_AAD_MAX], aad2[ENVELOPE_AAD_MAX];
	uint8_t hdr[ENVELOPE_MAX_LEN];
	size_t n, n2, h, byte;
	int bit;

	(void)state;
	sample(&e, 12);
	h = envelope_encode_header(&e, hdr, sizeof(hdr));
	n = envelope_aad(&e, aad, sizeof(aad));
	/* AAD = label || header, exactly. */
	assert_int_equal(n, LABEL_LEN + h);
	assert_memory_equal(aad, ENVELOPE_AAD_LABEL, LABEL_LEN);
	assert_memory_equal(aad + LABEL_LEN, hdr, h);
	/* Too small a buffer is refused, not overrun. */
	assert_int_equal(envelope_aad(&e, aad2, n - 1), 0);
	assert_int_equal(envelope_aad(&e, aad2, n), n);
	/* The largest header fits ENVELOPE_AAD_MAX. */
	sample(&e2, ENVELOPE_IV_MAX);
	assert_int_equal(envelope_aad(&e2, aad2, sizeof(aad2)),
	    ENVELOPE_AAD_MAX);

	/* Changing any single bit of any header byte changes the AAD. */
	for (byte = 0; byte < h; byte++) {
		for (bit = 0; bit < 8; bit++) {
			struct envelope d;
			uint8_t flipped[ENVELOPE_MAX_LEN];

			memcpy(flipped, hdr, h);
			flipped[h] = 0xee;	/* a one-byte body */
			flipped[byte] ^= (uint8_t)(1u << bit);
			if (envelope_decode(flipped, h + 1, &d) != 0)
				continue;	/* rejected outright: fine */
			n2 = envelope_aad(&d, aad2, sizeof(aad2));
			assert_true(n2 > 0);
			assert_true(n2 != n || memcmp(aad, aad2, n) != 0);
		}
	}
}

static void
test_keyref_hex(void **state)
{
	uint8_t ref[ENVELOPE_KEYREF_LEN];
	char hex[2 * ENVELOPE_KEYREF_LEN + 2];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(ref); i++)
		ref[i] = (uint8_t)(i * 17);
	memset(hex, 'X', sizeof(hex));
	envelope_keyref_hex(ref, hex);
	assert_string_equal(hex, "00112233445566778899aabbccddeeff");
	assert_int_equal(hex[2 * ENVELOPE_KEYREF_LEN + 1], 'X');
	memset(ref, 0xff, sizeof(ref));
	envelope_keyref_hex(ref, hex);
	assert_string_equal(hex, "ffffffffffffffffffffffffffffffff");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_every_truncation_fails),
		cmocka_unit_test(test_bad_format_byte),
		cmocka_unit_test(test_iv_len),
		cmocka_unit_test(test_empty_body),
		cmocka_unit_test(test_oversize),
		cmocka_unit_test(test_encode_cap),
		cmocka_unit_test(test_aad),
		cmocka_unit_test(test_keyref_hex),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
