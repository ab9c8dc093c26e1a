/* Unit tests for the metrics registry and its rendering (plugin/metrics.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <cmocka.h>

#include "plugin/kms.h"
#include "plugin/metrics.h"
#include "plugin/version.h"
#include "tests/unit/prom_check.h"

#define REQ	"p11kms_grpc_requests_total"
#define DUR	"p11kms_grpc_request_duration_seconds"
#define TOK	"p11kms_pkcs11_call_duration_seconds"
#define V2	"service=\"v2.KeyManagementService\""

static char *
render_checked(void)
{
	char *buf, why[512];
	size_t len;

	assert_int_equal(metrics_render(&buf, &len), 0);
	assert_non_null(buf);
	assert_int_equal(strlen(buf), len);
	if (prom_check(buf, len, why, sizeof(why)) != 0)
		fail_msg("exposition format: %s\n---\n%s", why, buf);
	return buf;
}

static int
reset(void **state)
{
	(void)state;
	metrics_reset();
	return 0;
}

static void
test_empty_registry(void **state)
{
	char *t;

	(void)state;
	t = render_checked();
	assert_non_null(strstr(t, "p11kms_build_info{version=\""
	    P11KMS_VERSION "\"} 1\n"));
	assert_non_null(strstr(t, "# TYPE " REQ " counter\n"));
	assert_non_null(strstr(t, "# TYPE " DUR " histogram\n"));
	assert_non_null(strstr(t, "# TYPE " TOK " histogram\n"));
	assert_true(prom_value(t, "p11kms_token_up") == 0);
	assert_true(prom_value(t, "p11kms_pool_workers") == 0);
	assert_true(prom_value(t, "p11kms_start_time_seconds") > 1.5e9);
	/* No key set: no info series. */
	assert_null(strstr(t, "p11kms_active_key_info{"));
	free(t);
}

static void
test_request_counts(void **state)
{
	char *t;
	int i;

	(void)state;
	for (i = 0; i < 3; i++)
		metrics_request("v2.KeyManagementService", "Encrypt", 0, 0.001);
	metrics_request_path("/v2.KeyManagementService/Decrypt", 3, 0.002);
	metrics_request_path("/v2.KeyManagementService/Decrypt", 0, 0.002);
	metrics_request_path("/v2.KeyManagementService/Status", 0, 0.00001);
	metrics_request_path("/v1beta1.KeyManagementService/Version", 0, 0);
	/* A peer's path never makes a series of its own. */
	metrics_request_path("/v2.KeyManagementService/Nope", 12, 0);
	metrics_request_path("/evil\"\n{x}/Encrypt", 12, 0);
	metrics_request_path("no-slash", 12, 0);
	metrics_request_path(NULL, 12, 0);
	metrics_request("x", "Status", 12, 0);
	/* Codes out of range count as UNKNOWN. */
	metrics_request("v2.KeyManagementService", "Status", 99, 0);
	metrics_request("v2.KeyManagementService", "Status", -1, 0);
	t = render_checked();
	assert_true(prom_value(t, REQ "{" V2 ",method=\"Encrypt\","
	    "code=\"OK\"}") == 3);
	assert_true(prom_value(t, REQ "{" V2 ",method=\"Decrypt\","
	    "code=\"INVALID_ARGUMENT\"}") == 1);
	assert_true(prom_value(t, REQ "{" V2 ",method=\"Decrypt\","
	    "code=\"OK\"}") == 1);
	assert_true(prom_value(t, REQ "{" V2 ",method=\"Status\","
	    "code=\"OK\"}") == 1);
	assert_true(prom_value(t, REQ "{" V2 ",method=\"Status\","
	    "code=\"UNKNOWN\"}") == 2);
	assert_true(prom_value(t, REQ "{service=\"v1beta1.KeyManagementService"
	    "\",method=\"Version\",code=\"OK\"}") == 1);
	assert_true(prom_value(t, REQ "{service=\"other\",method=\"other\","
	    "code=\"UNIMPLEMENTED\"}") == 5);
	assert_null(strstr(t, "evil"));
	assert_null(strstr(t, "Nope"));
	/* Durations by service and method. */
	assert_true(prom_value(t, DUR "_count{" V2 ",method=\"Encrypt\"}") == 3);
	assert_true(prom_value(t, DUR "_count{" V2 ",method=\"Decrypt\"}") == 2);
	assert_true(prom_value(t, DUR "_bucket{" V2 ",method=\"Encrypt\","
	    "le=\"0.001\"}") == 3);
	assert_true(prom_value(t, DUR "_bucket{" V2 ",method=\"Encrypt\","
	    "le=\"0.0005\"}") == 0);
	assert_true(prom_value(t, DUR "_bucket{" V2 ",method=\"Status\","
	    "le=\"0.0001\"}") == 3);
	free(t);
}

static void
test_histogram_buckets(void **state)
{
	char *t;

	(void)state;
	metrics_request("v2.KeyManagementService", "Encrypt", 0, 0.0002);
	metrics_request("v2.KeyManagementService", "Encrypt", 0, 0.003);
	metrics_request("v2.KeyManagementService", "Encrypt", 0, 20.0);
	metrics_request("v2.KeyManagementService", "Encrypt", 0, -1.0);
	metrics_request("v2.KeyManagementService", "Encrypt", 0, NAN);
	t = render_checked();
#define B(le) prom_value(t, DUR "_bucket{" V2 ",method=\"Encrypt\",le=\"" \
	    le "\"}")
	assert_true(B("0.0001") == 2);		/* -1 and NaN count as 0 */
	assert_true(B("0.00025") == 3);
	assert_true(B("0.0025") == 3);
	assert_true(B("0.005") == 4);
	assert_true(B("10") == 4);
	assert_true(B("+Inf") == 5);
#undef B
	assert_non_null(strstr(t, DUR "_sum{" V2 ",method=\"Encrypt\"} "
	    "20.003200000\n"));
	assert_true(prom_value(t, DUR "_count{" V2 ",method=\"Encrypt\"}") == 5);
	free(t);
}

static const char *
namer(unsigned long rv)
{
	switch (rv) {
	case 0: return "CKR_OK";
	case 0xb3: return "CKR_SESSION_HANDLE_INVALID";
	case 0x99: return NULL;		/* unknown to the namer */
	default: return "CKR_\"odd\"\\name";
	}
}

static void
test_token_calls(void **state)
{
	char *t;
	unsigned long rv;

	(void)state;
	metrics_token_call("C_Encrypt", 0, 0.0004);
	metrics_token_call("C_Encrypt", 0, 0.0004);
	metrics_token_call("C_Decrypt", 0xb3, 0.02);
	metrics_token_call("C_Bogus", 0, 0.001);
	metrics_token_call(NULL, 0, 0.001);
	t = render_checked();
	/* Without a namer rv is hex. */
	assert_true(prom_value(t, TOK "_count{function=\"C_Encrypt\","
	    "rv=\"0x00000000\"}") == 2);
	assert_true(prom_value(t, TOK "_count{function=\"other\","
	    "rv=\"0x00000000\"}") == 2);
	free(t);

	metrics_set_rv_namer(namer);
	metrics_token_call("C_Decrypt", 0x99, 0.5);
	/* Only METRICS_RV_SLOTS distinct codes get a label of their own. */
	for (rv = 0x1000; rv < 0x1000 + METRICS_RV_SLOTS + 3; rv++)
		metrics_token_call("C_Sign", rv, 0.001);
	metrics_token_call("C_Sign", (unsigned long)-1, 0.001);
	t = render_checked();
	assert_true(prom_value(t, TOK "_count{function=\"C_Encrypt\","
	    "rv=\"CKR_OK\"}") == 2);
	assert_true(prom_value(t, TOK "_count{function=\"C_Decrypt\","
	    "rv=\"CKR_SESSION_HANDLE_INVALID\"}") == 1);
	assert_true(prom_value(t, TOK "_bucket{function=\"C_Decrypt\","
	    "rv=\"CKR_SESSION_HANDLE_INVALID\",le=\"0.01\"}") == 0);
	assert_true(prom_value(t, TOK "_bucket{function=\"C_Decrypt\","
	    "rv=\"CKR_SESSION_HANDLE_INVALID\",le=\"0.025\"}") == 1);
	assert_true(prom_value(t, TOK "_count{function=\"C_Decrypt\","
	    "rv=\"0x00000099\"}") == 1);
	/* Slots: 0, 0xb3, 0x99, then 5 of the C_Sign codes; the other 6
	 * C_Sign codes and ULONG_MAX share "other". */
	assert_true(prom_value(t, TOK "_count{function=\"C_Sign\","
	    "rv=\"other\"}") == METRICS_RV_SLOTS + 3 - (METRICS_RV_SLOTS - 3)
	    + 1);
	/* Label values are escaped. */
	assert_non_null(strstr(t, "rv=\"CKR_\\\"odd\\\"\\\\name\""));
	free(t);
}

static void
test_gauges(void **state)
{
	char *t;

	(void)state;
	metrics_set_pool(4, 3, 7);
	metrics_set_grpc(2, 9);
	metrics_set_token_up(1);
	metrics_set_token_up(1);
	metrics_set_token_up(0);
	metrics_set_token_up(1);
	metrics_set_key_id("0123456789abcdef0123456789abcdef");
	t = render_checked();
	assert_true(prom_value(t, "p11kms_pool_workers") == 4);
	assert_true(prom_value(t, "p11kms_pool_busy_workers") == 3);
	assert_true(prom_value(t, "p11kms_pool_queued_jobs") == 7);
	assert_true(prom_value(t, "p11kms_grpc_connections") == 2);
	assert_true(prom_value(t, "p11kms_grpc_requests_in_flight") == 9);
	assert_true(prom_value(t, "p11kms_token_up") == 1);
	assert_true(prom_value(t, "p11kms_token_state_changes_total") == 3);
	assert_true(prom_value(t, "p11kms_active_key_info{key_id=\""
	    "0123456789abcdef0123456789abcdef\"}") == 1);
	free(t);

	/* A key_id is escaped; an empty one removes the series. */
	metrics_set_key_id("a\"b\\c\nd");
	t = render_checked();
	assert_non_null(strstr(t, "{key_id=\"a\\\"b\\\\c\\nd\"} 1\n"));
	free(t);
	metrics_set_key_id("");
	t = render_checked();
	assert_null(strstr(t, "p11kms_active_key_info{"));
	free(t);
}

#define THREADS		4
#define PER_THREAD	20000

static void *
hammer(void *arg)
{
	int i;

	(void)arg;
	for (i = 0; i < PER_THREAD; i++) {
		metrics_request_path("/v2.KeyManagementService/Encrypt", 0,
		    0.0001 * (i % 50));
		metrics_token_call("C_Encrypt", (unsigned long)(i % 3), 0.001);
	}
	return NULL;
}

/* Recording from many threads while rendering loses nothing. */
static void
test_concurrent(void **state)
{
	pthread_t th[THREADS];
	char *t, *buf;
	size_t len;
	int i;

	(void)state;
	for (i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hammer, NULL), 0);
	for (i = 0; i < 20; i++) {
		assert_int_equal(metrics_render(&buf, &len), 0);
		free(buf);
	}
	for (i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	t = render_checked();
	assert_true(prom_value(t, REQ "{" V2 ",method=\"Encrypt\","
	    "code=\"OK\"}") == THREADS * PER_THREAD);
	assert_true(prom_value(t, DUR "_count{" V2 ",method=\"Encrypt\"}") ==
	    THREADS * PER_THREAD);
	assert_true(prom_value(t, TOK "_count{function=\"C_Encrypt\","
	    "rv=\"0x00000000\"}") + prom_value(t, TOK "_count{function="
	    "\"C_Encrypt\",rv=\"0x00000001\"}") + prom_value(t, TOK
	    "_count{function=\"C_Encrypt\",rv=\"0x00000002\"}") ==
	    THREADS * PER_THREAD);
	free(t);
}

/* The checker itself rejects what it should. */
/* Reload outcomes: counted by result; the success time kept, the start
 * time until a reload succeeds; the last outcome as a 0/1 gauge. */
static void
test_reloads(void **state)
{
	char *t;
	double start;

	(void)state;
	t = render_checked();
	assert_non_null(strstr(t, "# TYPE p11kms_reloads_total counter\n"));
	assert_true(prom_value(t, "p11kms_reloads_total{result=\"ok\"}") == 0);
	assert_true(prom_value(t, "p11kms_last_reload_successful") == 1);
	start = prom_value(t, "p11kms_start_time_seconds");
	assert_true(prom_value(t,
	    "p11kms_last_reload_success_timestamp_seconds") == start);
	free(t);

	metrics_reload(1, 2000000000.0);
	metrics_reload(0, 2000000100.0);
	t = render_checked();
	assert_true(prom_value(t, "p11kms_reloads_total{result=\"ok\"}") == 1);
	assert_true(prom_value(t,
	    "p11kms_reloads_total{result=\"failed\"}") == 1);
	assert_true(prom_value(t, "p11kms_last_reload_successful") == 0);
	assert_true(prom_value(t,
	    "p11kms_last_reload_success_timestamp_seconds") == 2000000000.0);
	free(t);
}

static void
test_checker(void **state)
{
	static const char *const bad[] = {
		"x 1\n",				/* no HELP/TYPE */
		"# HELP a_total h\n# TYPE a_total counter\na_total{l=\"\n\"} 1\n",
		"# HELP a h\n# TYPE a counter\na 1\n",	/* no _total */
		"# HELP a h\n# TYPE a gauge\na 1",	/* no newline */
		"# HELP a h\n# TYPE a gauge\na one\n",
		"# HELP a h\n# TYPE a gauge\nb 1\n",
		"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
		    "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
		"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\n"
		    "h_sum 1\nh_count 1\n",
	};
	const char *good = "# HELP h h\n# TYPE h histogram\n"
	    "h_bucket{a=\"x\\\"\",le=\"1\"} 1\nh_bucket{a=\"x\\\"\",le=\"+Inf\"} 2\n"
	    "h_sum{a=\"x\\\"\"} 1.5\nh_count{a=\"x\\\"\"} 2\n";
	char why[256];
	size_t i;

	(void)state;
	assert_int_equal(prom_check(good, strlen(good), why, sizeof(why)), 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (prom_check(bad[i], strlen(bad[i]), why, sizeof(why)) == 0)
			fail_msg("checker accepted bad input %zu", i);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_checker),
		cmocka_unit_test_setup(test_empty_registry, reset),
		cmocka_unit_test_setup(test_request_counts, reset),
		cmocka_unit_test_setup(test_histogram_buckets, reset),
		cmocka_unit_test_setup(test_token_calls, reset),
		cmocka_unit_test_setup(test_gauges, reset),
		cmocka_unit_test_setup(test_concurrent, reset),
		cmocka_unit_test_setup(test_reloads, reset),
	};

	/* The labels come from the KMS method tables, as in the daemon. */
	kms_metrics_register();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
