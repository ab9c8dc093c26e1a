/* Unit tests for plugin/pbscan.c: NULs hidden in protobuf string fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "kms_v2.pb-c.h"
#include "plugin/pbscan.h"

static void
test_clean_and_dirty(void **state)
{
	/* DecryptRequest: 1 ciphertext (bytes), 2 uid, 3 key_id. */
	const uint8_t clean[] = { 0x0a, 2, 0, 0, 0x12, 1, 'u', 0x1a, 2, 'a',
	    'b' };
	const uint8_t nul_in_bytes[] = { 0x0a, 3, 0, 'x', 0 };
	const uint8_t nul_in_key_id[] = { 0x1a, 3, 'a', 0, 'b' };
	const uint8_t nul_in_uid[] = { 0x12, 2, 'u', 0 };
	const ProtobufCMessageDescriptor *d = &v2__decrypt_request__descriptor;

	(void)state;
	assert_int_equal(pbscan_nul_in_strings(d, clean, sizeof(clean)), 0);
	assert_int_equal(pbscan_nul_in_strings(d, nul_in_bytes,
	    sizeof(nul_in_bytes)), 0);
	assert_int_equal(pbscan_nul_in_strings(d, nul_in_key_id,
	    sizeof(nul_in_key_id)), 3);
	/* uid is only logged (escaped), so it may hold anything. */
	assert_int_equal(pbscan_nul_in_strings(d, nul_in_uid,
	    sizeof(nul_in_uid)), 0);
	assert_int_equal(pbscan_nul_in_strings(d, clean, 0), 0);
}

static void
test_map_entry(void **state)
{
	/* Field 4: map entry { 1: key "a\0", 2: value "v" } */
	const uint8_t bad[] = { 0x22, 7, 0x0a, 2, 'a', 0, 0x12, 1, 'v' };
	const uint8_t good[] = { 0x22, 7, 0x0a, 2, 'a', 'b', 0x12, 1, 0 };
	const ProtobufCMessageDescriptor *d = &v2__decrypt_request__descriptor;

	(void)state;
	assert_int_equal(pbscan_nul_in_strings(d, bad, sizeof(bad)), 4);
	assert_int_equal(pbscan_nul_in_strings(d, good, sizeof(good)), 0);
}

static void
test_malformed(void **state)
{
	static const struct {
		uint8_t b[12];
		size_t n;
	} cases[] = {
		{ { 0x1a, 5, 'a' }, 3 },		/* length past the end */
		{ { 0x1a }, 1 },			/* no length */
		{ { 0x08 }, 1 },			/* varint missing */
		{ { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		    0xff, 0xff, 0x01 }, 12 },		/* varint too long */
		{ { 0x09, 1, 2, 3 }, 4 },		/* short fixed64 */
		{ { 0x0d, 1, 2 }, 3 },			/* short fixed32 */
		{ { 0x0b }, 1 },			/* group */
		{ { 0x22, 2, 0x0a, 5 }, 4 },		/* bad inner message */
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (pbscan_nul_in_strings(&v2__decrypt_request__descriptor,
		    cases[i].b, cases[i].n) != -1)
			fail_msg("case %zu accepted", i);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_clean_and_dirty),
		cmocka_unit_test(test_map_entry),
		cmocka_unit_test(test_malformed),
	};

	return cmocka_run_group_tests_name("pbscan", tests, NULL, NULL);
}
