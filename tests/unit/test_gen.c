/* Unit tests for the worker count rule (plugin/gen.c). */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "plugin/gen.h"

struct wcase {
	unsigned requested;
	long ncpu;
	int hw;
	unsigned long max_sessions;
	unsigned want;
	int capped;
	const char *from;
};

static void
test_choose_workers(void **state)
{
	static const struct wcase cases[] = {
		/* A software slot: one per CPU. */
		{ 0, 2, 0, 0, 2, 0, "software slot: CPU count" },
		{ 0, 96, 0, 0, 96, 0, "software slot: CPU count" },
		{ 0, 0, 0, 0, 1, 0, "software slot: CPU count" },
		{ 0, -1, 0, 0, 1, 0, "software slot: CPU count" },
		/* A hardware slot: 4 per CPU, 8 to 64. */
		{ 0, 1, 1, 0, 8, 0, "hardware slot: 4 x 1 CPU, at least 8" },
		{ 0, 2, 1, 0, 8, 0, "hardware slot: 4 x 2 CPUs" },
		{ 0, 3, 1, 0, 12, 0, "hardware slot: 4 x 3 CPUs" },
		{ 0, 16, 1, 0, 64, 0, "hardware slot: 4 x 16 CPUs" },
		{ 0, 17, 1, 0, 64, 0, "hardware slot: 4 x 17 CPUs, at most "
		    "64" },
		{ 0, 4096, 1, 0, 64, 0, "hardware slot: 4 x 4096 CPUs, at most "
		    "64" },
		{ 0, LONG_MAX, 1, 0, 64, 0, NULL },
		{ 0, -1, 1, 0, 8, 0, "hardware slot: 4 x 1 CPU, at least 8" },
		/* --workers wins over both. */
		{ 3, 2, 0, 0, 3, 0, "--workers" },
		{ 3, 2, 1, 0, 3, 0, "--workers" },
		{ 200, 2, 1, 0, 200, 0, "--workers" },
		/* The session limit less the keyring's own session caps all. */
		{ 0, 2, 1, 6, 5, 1, "hardware slot: 4 x 2 CPUs; token allows "
		    "6 sessions" },
		{ 0, 1, 1, 6, 5, 1, "hardware slot: 4 x 1 CPU, at least 8; "
		    "token allows 6 sessions" },
		{ 0, 8, 0, 4, 3, 1, "software slot: CPU count; token allows 4 "
		    "sessions" },
		{ 10, 2, 1, 6, 5, 1, "--workers; token allows 6 sessions" },
		{ 3, 2, 1, 6, 3, 0, "--workers" },
		{ 0, 2, 1, 9, 8, 0, "hardware slot: 4 x 2 CPUs" },
		{ 0, 2, 1, 8, 7, 1, NULL },
		/* A limit of 1 (or none) leaves nothing to cap by. */
		{ 0, 2, 1, 1, 8, 0, NULL },
	};
	char from[GEN_WORKERS_FROM_MAX];
	unsigned w;
	size_t i;
	int capped;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(from, 'x', sizeof(from));
		capped = -1;
		w = gen_choose_workers(cases[i].requested, cases[i].ncpu,
		    cases[i].hw, cases[i].max_sessions, &capped, from,
		    sizeof(from));
		if (w != cases[i].want || capped != cases[i].capped)
			fail_msg("case %zu: %u workers, capped %d; want %u, %d",
			    i, w, capped, cases[i].want, cases[i].capped);
		if (memchr(from, '\0', sizeof(from)) == NULL)
			fail_msg("case %zu: from not terminated", i);
		if (cases[i].from != NULL &&
		    strcmp(from, cases[i].from) != 0)
			fail_msg("case %zu: from \"%s\", want \"%s\"", i, from,
			    cases[i].from);
	}
}

/* A short buffer is cut, never overrun; none at all is fine. */
static void
test_from_truncated(void **state)
{
	char buf[12];
	int capped;

	(void)state;
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(gen_choose_workers(0, 2, 1, 6, &capped, buf, 8), 5);
	assert_int_equal(capped, 1);
	assert_string_equal(buf, "hardwar");
	assert_int_equal(buf[8], 'x');
	assert_int_equal(gen_choose_workers(0, 2, 1, 0, &capped, NULL, 0), 8);
	assert_int_equal(capped, 0);
}

/* cgroup v2 cpu.max texts: a quota rounds up to whole CPUs. */
static void
test_cpus_from_cpu_max(void **state)
{
	(void)state;
	assert_int_equal(gen_cpus_from_cpu_max("max 100000\n"), 0);
	assert_int_equal(gen_cpus_from_cpu_max("100000 100000\n"), 1);
	assert_int_equal(gen_cpus_from_cpu_max("150000 100000\n"), 2);
	assert_int_equal(gen_cpus_from_cpu_max("50000 100000"), 1);
	assert_int_equal(gen_cpus_from_cpu_max("400000 100000\n"), 4);
	assert_int_equal(gen_cpus_from_cpu_max("0 100000\n"), 0);
	assert_int_equal(gen_cpus_from_cpu_max("100000 0\n"), 0);
	assert_int_equal(gen_cpus_from_cpu_max("100000\n"), 0);
	assert_int_equal(gen_cpus_from_cpu_max(""), 0);
	assert_int_equal(gen_cpus_from_cpu_max("-5 100000\n"), 0);
	assert_int_equal(gen_cpus_from_cpu_max("12x 100000\n"), 0);
	assert_int_equal(gen_cpus_from_cpu_max("200000 100000 junk"), 0);
	assert_int_equal(gen_cpus_from_cpu_max(
	    "99999999999999999999999 1\n"), 0);	/* overflow */
}

/* The usable count is at least 1 and at most the online CPUs. */
static void
test_usable_cpus(void **state)
{
	long n = gen_usable_cpus(), online = sysconf(_SC_NPROCESSORS_ONLN);

	(void)state;
	assert_true(n >= 1);
	assert_true(n <= online);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_choose_workers),
		cmocka_unit_test(test_cpus_from_cpu_max),
		cmocka_unit_test(test_usable_cpus),
		cmocka_unit_test(test_from_truncated),
	};

	return cmocka_run_group_tests_name("gen", tests, NULL, NULL);
}
