/* Unit tests for the gRPC framing helpers in plugin/grpc.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "plugin/grpc.h"

static void
test_timeout_units(void **state)
{
	uint64_t ns;

	(void)state;
	assert_int_equal(grpc_parse_timeout("3S", 2, &ns), 0);
	assert_true(ns == 3000000000ull);
	assert_int_equal(grpc_parse_timeout("100m", 4, &ns), 0);
	assert_true(ns == 100000000ull);
	assert_int_equal(grpc_parse_timeout("7u", 2, &ns), 0);
	assert_true(ns == 7000ull);
	assert_int_equal(grpc_parse_timeout("5n", 2, &ns), 0);
	assert_true(ns == 5ull);
	assert_int_equal(grpc_parse_timeout("2M", 2, &ns), 0);
	assert_true(ns == 120000000000ull);
	assert_int_equal(grpc_parse_timeout("99999999H", 9, &ns), 0);
	assert_true(ns == 99999999ull * 3600ull * 1000000000ull);
}

static void
test_timeout_malformed(void **state)
{
	static const char *bad[] = {
		"", "S", "10", "10x", "-1S", "1.5S", "123456789S", " 1S",
		"1S ", "1s", "0x1S",
	};
	uint64_t ns = 42;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(grpc_parse_timeout(bad[i], strlen(bad[i]),
		    &ns), -1);
		assert_true(ns == 42);	/* untouched on failure */
	}
}

static void
test_percent_encode(void **state)
{
	char out[64];

	(void)state;
	assert_int_equal(grpc_percent_encode("plain text", out, sizeof(out)),
	    10);
	assert_string_equal(out, "plain text");
	grpc_percent_encode("50% off\n", out, sizeof(out));
	assert_string_equal(out, "50%25 off%0A");
	grpc_percent_encode("\xc3\xa9", out, sizeof(out));
	assert_string_equal(out, "%C3%A9");
	/* Truncation never splits an escape and always terminates. */
	grpc_percent_encode("ab%", out, 4);
	assert_string_equal(out, "ab");
	grpc_percent_encode("abcdef", out, 4);
	assert_string_equal(out, "abc");
	assert_int_equal(grpc_percent_encode("x", out, 0), 0);
}

static void
test_frame_ok(void **state)
{
	const uint8_t body[] = { 0, 0, 0, 0, 3, 'a', 'b', 'c' };
	const uint8_t empty[] = { 0, 0, 0, 0, 0 };
	const uint8_t *msg;
	const char *why;
	size_t len;

	(void)state;
	assert_int_equal(grpc_frame_check(body, sizeof(body), &msg, &len,
	    &why), GRPC_OK);
	assert_int_equal(len, 3);
	assert_ptr_equal(msg, body + 5);
	assert_int_equal(grpc_frame_check(empty, sizeof(empty), &msg, &len,
	    &why), GRPC_OK);
	assert_int_equal(len, 0);
}

static void
test_frame_bad(void **state)
{
	const uint8_t compressed[] = { 1, 0, 0, 0, 1, 'a' };
	const uint8_t flags[] = { 0x80, 0, 0, 0, 1, 'a' };
	const uint8_t shortmsg[] = { 0, 0, 0, 0, 9, 'a' };
	const uint8_t two[] = { 0, 0, 0, 0, 1, 'a', 0, 0, 0, 0, 0 };
	const uint8_t huge[] = { 0, 0xff, 0xff, 0xff, 0xff, 'a' };
	const uint8_t *msg = NULL;
	const char *why = NULL;
	size_t len, i;

	(void)state;
	assert_int_equal(grpc_frame_check(compressed, sizeof(compressed), &msg,
	    &len, &why), GRPC_INVALID_ARGUMENT);
	assert_non_null(strstr(why, "compressed"));
	assert_int_equal(grpc_frame_check(flags, sizeof(flags), &msg, &len,
	    &why), GRPC_INVALID_ARGUMENT);
	assert_int_equal(grpc_frame_check(shortmsg, sizeof(shortmsg), &msg,
	    &len, &why), GRPC_INVALID_ARGUMENT);
	assert_non_null(strstr(why, "shorter"));
	assert_int_equal(grpc_frame_check(two, sizeof(two), &msg, &len,
	    &why), GRPC_INVALID_ARGUMENT);
	assert_int_equal(grpc_frame_check(huge, sizeof(huge), &msg, &len,
	    &why), GRPC_INVALID_ARGUMENT);
	/* Every prefix shorter than the header is refused. */
	for (i = 0; i < GRPC_FRAME_HDR; i++)
		assert_int_equal(grpc_frame_check(compressed, i, &msg, &len,
		    &why), GRPC_INVALID_ARGUMENT);
	assert_null(msg);	/* never set on failure */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timeout_units),
		cmocka_unit_test(test_timeout_malformed),
		cmocka_unit_test(test_percent_encode),
		cmocka_unit_test(test_frame_ok),
		cmocka_unit_test(test_frame_bad),
	};

	return cmocka_run_group_tests_name("grpc", tests, NULL, NULL);
}
