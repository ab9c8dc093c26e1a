/* Unit tests for the event loop's timers (plugin/loop.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "plugin/loop.h"

#define NT 200

static uint64_t fired[NT];
static size_t nfired;

static void
on_timer(void *arg)
{
	struct loop_timer *t = arg;

	fired[nfired++] = t->when;
}

/* Timers fire in deadline order whatever the order they were armed and
 * however many were stopped or re-armed in between. */
static void
test_timer_order(void **state)
{
	struct loop_timer t[NT];
	struct loop *l;
	uint64_t base = loop_now();
	size_t i, expect = 0;

	(void)state;
	assert_int_equal(loop_new(&l), 0);
	srand(7);
	for (i = 0; i < NT; i++) {
		t[i].slot = 0;
		t[i].cb = on_timer;
		t[i].arg = &t[i];
		assert_int_equal(loop_timer_start(l, &t[i],
		    base + (uint64_t)(rand() % 20) * 1000000u), 0);
	}
	for (i = 0; i < NT; i += 3)	/* stop a third */
		loop_timer_stop(l, &t[i]);
	for (i = 1; i < NT; i += 5)	/* re-arm some */
		assert_int_equal(loop_timer_start(l, &t[i],
		    base + (uint64_t)(rand() % 20) * 1000000u), 0);
	for (i = 0; i < NT; i++)	/* armed: not stopped, or re-armed */
		if (i % 3 != 0 || i % 5 == 1)
			expect++;
	nfired = 0;
	while (nfired < expect && loop_now() < base + 2000000000u)
		assert_int_equal(loop_once(l, 50), 0);
	assert_int_equal(loop_once(l, 30), 0);	/* nothing more fires */
	assert_int_equal(nfired, expect);
	for (i = 1; i < nfired; i++)
		assert_true(fired[i - 1] <= fired[i]);
	for (i = 0; i < NT; i++)
		assert_int_equal(t[i].slot, 0);
	loop_free(l);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timer_order),
	};

	return cmocka_run_group_tests_name("loop", tests, NULL, NULL);
}
