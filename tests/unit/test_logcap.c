/* Unit tests for the module stderr capture (plugin/logcap.c): what other
 * threads write on fd 2 comes out as separate, escaped, rate-limited
 * records on log_fd, and fd 2 is the real stderr again after stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "plugin/log.h"
#include "plugin/logcap.h"

static FILE *cap_file;
static struct stat stderr_before;

static int
setup(void **state)
{
	(void)state;
	cap_file = tmpfile();
	assert_non_null(cap_file);
	log_fd = fileno(cap_file);
	log_level = LOG_DEBUG;
	log_format = LOG_FORMAT_LOGFMT;
	assert_int_equal(fstat(2, &stderr_before), 0);
	return 0;
}

static int
teardown(void **state)
{
	struct stat st;

	(void)state;
	logcap_stop();		/* a failed test may have left it running */
	/* The capture gave the real stderr back. */
	assert_int_equal(fstat(2, &st), 0);
	assert_true(st.st_dev == stderr_before.st_dev &&
	    st.st_ino == stderr_before.st_ino);
	log_fd = 2;
	log_level = LOG_INFO;
	log_format = LOG_FORMAT_LOGFMT;
	fclose(cap_file);
	return 0;
}

/* Everything logged so far; caller frees. */
static char *
captured(void)
{
	long end = lseek(log_fd, 0, SEEK_CUR);
	char *buf;

	assert_true(end >= 0);
	buf = malloc((size_t)end + 1);
	assert_non_null(buf);
	assert_int_equal(pread(log_fd, buf, (size_t)end, 0), end);
	buf[end] = '\0';
	return buf;
}

static size_t
count(const char *s, const char *needle)
{
	size_t n = 0;

	while ((s = strstr(s, needle)) != NULL) {
		n++;
		s += strlen(needle);
	}
	return n;
}

/* Every line is one whole record: "ts=... level=... msg=\"...\" ...\n". */
static void
assert_records(const char *s)
{
	const char *p = s, *nl;

	while (*p != '\0') {
		nl = strchr(p, '\n');
		assert_non_null(nl);
		assert_true(strncmp(p, "ts=", 3) == 0);
		assert_non_null(memmem(p, (size_t)(nl - p), " msg=\"", 6));
		p = nl + 1;
	}
	/* No raw escape or control byte reached the log. */
	for (p = s; *p != '\0'; p++)
		assert_false((unsigned char)*p < 0x20 && *p != '\n');
}

static void
say(const char *s)
{
	assert_int_equal(write(2, s, strlen(s)), (ssize_t)strlen(s));
}

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void *
module_thread(void *arg)
{
	(void)arg;
	say("ERROR:esys first line\n");
	/* One line in two writes, then two lines in one. */
	say("second ");
	say("line\nthird \x1b[31mred\x1b[0m line\n");
	say("bidi \xe2\x80\xae reversed\r\n");
	return NULL;
}

static void
test_lines_from_another_thread(void **state)
{
	pthread_t th;
	char err[256], *s;

	(void)state;
	assert_int_equal(logcap_start(NULL, err, sizeof(err)), 0);
	assert_int_equal(pthread_create(&th, NULL, module_thread, NULL), 0);
	pthread_join(th, NULL);
	log_info("our own line");
	logcap_stop();
	s = captured();
	assert_records(s);
	assert_int_equal(count(s, "msg=\"module stderr\""), 4);
	assert_non_null(strstr(s, "level=warn msg=\"module stderr\" "
	    "line=\"ERROR:esys first line\"\n"));
	assert_non_null(strstr(s, "msg=\"module stderr\" "
	    "line=\"second line\"\n"));
	assert_non_null(strstr(s, "line=\"third \\u001b[31mred\\u001b[0m "
	    "line\"\n"));
	/* Bidi control escaped; the \r of \r\n dropped. */
	assert_non_null(strstr(s, "line=\"bidi \\u202e reversed\"\n"));
	assert_null(strstr(s, "\xe2\x80\xae"));
	assert_non_null(strstr(s, "msg=\"our own line\""));
	free(s);
}

static void
test_flood_is_rate_limited(void **state)
{
	struct logcap_config c = { .lines_per_s = 5 };
	char err[256], line[32], *s;
	int i;

	(void)state;
	assert_int_equal(logcap_start(&c, err, sizeof(err)), 0);
	for (i = 0; i < 50; i++) {
		snprintf(line, sizeof(line), "flood %d\n", i);
		say(line);
	}
	logcap_stop();
	s = captured();
	assert_records(s);
	assert_int_equal(count(s, "msg=\"module stderr\""), 5);
	assert_non_null(strstr(s, "line=\"flood 0\""));
	assert_null(strstr(s, "line=\"flood 5\""));
	assert_int_equal(count(s, "msg=\"module stderr lines dropped\""), 1);
	assert_non_null(strstr(s, " dropped=45 limit_per_s=5\n"));
	free(s);
}

/* The count comes once the second is over, and lines flow again. */
static void
test_flood_count_after_window(void **state)
{
	struct logcap_config c = { .lines_per_s = 2 };
	char err[256], *s;

	(void)state;
	assert_int_equal(logcap_start(&c, err, sizeof(err)), 0);
	say("a\nb\nc\nd\n");
	sleep_ms(1300);
	s = captured();
	assert_non_null(strstr(s, " dropped=2 limit_per_s=2\n"));
	free(s);
	say("e\n");
	logcap_stop();
	s = captured();
	assert_int_equal(count(s, "msg=\"module stderr\""), 3);
	assert_non_null(strstr(s, "line=e\n"));
	assert_int_equal(count(s, "lines dropped"), 1);
	free(s);
}

static void
test_partial_line_flushed_on_timer(void **state)
{
	struct logcap_config c = { .flush_ms = 50 };
	char err[256], *s;

	(void)state;
	assert_int_equal(logcap_start(&c, err, sizeof(err)), 0);
	say("no newline yet");
	sleep_ms(400);
	s = captured();		/* still running: the timer flushed it */
	assert_non_null(strstr(s, "line=\"no newline yet\"\n"));
	free(s);
	logcap_stop();
}

static void
test_partial_line_flushed_at_stop(void **state)
{
	char err[256], *s;

	(void)state;
	assert_int_equal(logcap_start(NULL, err, sizeof(err)), 0);
	say("done\nlast words");
	logcap_stop();
	s = captured();
	assert_records(s);
	assert_non_null(strstr(s, "line=done\n"));
	assert_non_null(strstr(s, "line=\"last words\"\n"));
	free(s);
}

static void
test_long_line_is_cut(void **state)
{
	struct logcap_config c = { .line_max = 16 };
	char err[256], *s;

	(void)state;
	assert_int_equal(logcap_start(&c, err, sizeof(err)), 0);
	say("0123456789abcdefTHE-REST-IS-DROPPED\nnext\n");
	logcap_stop();
	s = captured();
	assert_records(s);
	assert_non_null(strstr(s, "line=0123456789abcdef line_cut=true\n"));
	assert_null(strstr(s, "REST"));
	assert_non_null(strstr(s, "line=next\n"));
	free(s);
}

/* With log_fd on fd 2 (the daemon), the log moves to a copy of it. */
static void
test_log_moves_off_fd2(void **state)
{
	char err[256];

	(void)state;
	log_fd = 2;
	assert_int_equal(logcap_start(NULL, err, sizeof(err)), 0);
	assert_int_not_equal(log_fd, 2);
	logcap_stop();
	assert_int_equal(log_fd, 2);
	log_fd = fileno(cap_file);
	/* Twice in a row is refused, stop without start is harmless. */
	assert_int_equal(logcap_start(NULL, err, sizeof(err)), 0);
	assert_int_equal(logcap_start(NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "already"));
	logcap_stop();
	logcap_stop();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_lines_from_another_thread,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_flood_is_rate_limited,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_flood_count_after_window,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_partial_line_flushed_on_timer, setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_partial_line_flushed_at_stop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_line_is_cut, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_log_moves_off_fd2, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
