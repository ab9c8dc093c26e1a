/* Unit tests for structured logging (plugin/log.c): both formats, escaping,
 * truncation, and that nothing in a message can forge a second record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <regex.h>
#include <unistd.h>
#include <cmocka.h>

#include "plugin/log.h"

static FILE *cap_file;

/* Every test logs into a fresh temporary file. */
static int
setup(void **state)
{
	(void)state;
	cap_file = tmpfile();
	assert_non_null(cap_file);
	log_fd = fileno(cap_file);
	log_level = LOG_DEBUG;
	log_format = LOG_FORMAT_LOGFMT;
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	log_fd = 2;
	log_level = LOG_INFO;
	log_format = LOG_FORMAT_LOGFMT;
	fclose(cap_file);
	return 0;
}

/* What was logged since setup (or the last call); caller frees. */
static char *
captured(size_t *len)
{
	long end = lseek(log_fd, 0, SEEK_CUR);
	char *buf;

	assert_true(end >= 0);
	buf = malloc((size_t)end + 1);
	assert_non_null(buf);
	assert_int_equal(pread(log_fd, buf, (size_t)end, 0), end);
	buf[end] = '\0';
	assert_int_equal(ftruncate(log_fd, 0), 0);
	assert_int_equal(lseek(log_fd, 0, SEEK_SET), 0);
	if (len != NULL)
		*len = (size_t)end;
	return buf;
}

static size_t
count_char(const char *s, size_t len, char c)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++)
		n += s[i] == c;
	return n;
}

static void
assert_matches(const char *s, const char *re)
{
	regex_t r;

	assert_int_equal(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
	if (regexec(&r, s, 0, NULL, 0) != 0)
		fail_msg("%s\ndoes not match\n%s", s, re);
	regfree(&r);
}

/* No raw control byte but the final newline; one line. */
static void
assert_one_clean_line(const char *s, size_t len)
{
	size_t i;

	assert_true(len > 0 && len <= LOG_LINE_MAX);
	assert_int_equal(s[len - 1], '\n');
	for (i = 0; i + 1 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f)
			fail_msg("raw control byte 0x%02x at %zu in %s", c, i, s);
		/* No C1 control as UTF-8 either (U+0080..U+009F). */
		if (c == 0xc2 && (unsigned char)s[i + 1] >= 0x80 &&
		    (unsigned char)s[i + 1] <= 0x9f)
			fail_msg("C1 control at %zu in %s", i, s);
	}
}

/* ---- a small JSON reader: an object of string / true members ---- */

struct json {
	const char *p;
	char keys[40][64];
	char vals[40][LOG_LINE_MAX];
	int n;
};

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes a JSON string at j->p into out (UTF-8); -1 when invalid. */
static int
json_string(struct json *j, char *out, size_t cap)
{
	size_t o = 0;
	unsigned cp;
	int i, h;

	if (*j->p++ != '"')
		return -1;
	while (*j->p != '"') {
		unsigned char c = (unsigned char)*j->p++;

		if (c == '\0' || c < 0x20)
			return -1;	/* raw control: invalid JSON */
		if (o + 4 >= cap)
			return -1;
		if (c != '\\') {
			out[o++] = (char)c;
			continue;
		}
		c = (unsigned char)*j->p++;
		switch (c) {
		case '"': case '\\': case '/': out[o++] = (char)c; break;
		case 'n': out[o++] = '\n'; break;
		case 'r': out[o++] = '\r'; break;
		case 't': out[o++] = '\t'; break;
		case 'b': out[o++] = '\b'; break;
		case 'f': out[o++] = '\f'; break;
		case 'u':
			for (cp = 0, i = 0; i < 4; i++) {
				if ((h = hexval(*j->p++)) < 0)
					return -1;
				cp = cp * 16 + (unsigned)h;
			}
			if (cp >= 0xd800 && cp <= 0xdfff)
				return -1;	/* we never emit surrogates */
			if (cp < 0x80) {
				out[o++] = (char)cp;
			} else if (cp < 0x800) {
				out[o++] = (char)(0xc0 | cp >> 6);
				out[o++] = (char)(0x80 | (cp & 0x3f));
			} else {
				out[o++] = (char)(0xe0 | cp >> 12);
				out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
				out[o++] = (char)(0x80 | (cp & 0x3f));
			}
			break;
		default:
			return -1;
		}
	}
	j->p++;
	out[o] = '\0';
	return 0;
}

/* Parses one line `{"k":"v",...}\n`; fails the test when invalid. */
static void
json_parse(struct json *j, const char *line)
{
	j->p = line;
	j->n = 0;
	if (*j->p++ != '{')
		fail_msg("not a JSON object: %s", line);
	for (;;) {
		if (j->n == 40)
			fail_msg("too many members: %s", line);
		if (json_string(j, j->keys[j->n], sizeof(j->keys[0])) != 0 ||
		    *j->p++ != ':')
			fail_msg("bad member name in %s", line);
		if (strncmp(j->p, "true", 4) == 0) {
			strcpy(j->vals[j->n], "true");
			j->p += 4;
		} else if (json_string(j, j->vals[j->n],
		    sizeof(j->vals[0])) != 0) {
			fail_msg("bad string value in %s", line);
		}
		j->n++;
		if (*j->p == ',') {
			j->p++;
			continue;
		}
		if (*j->p++ != '}' || *j->p++ != '\n' || *j->p != '\0')
			fail_msg("bad end of object in %s", line);
		return;
	}
}

static const char *
json_get(const struct json *j, const char *key)
{
	int i;

	for (i = 0; i < j->n; i++)
		if (strcmp(j->keys[i], key) == 0)
			return j->vals[i];
	return NULL;
}

/* ---- tests ---- */

static void
test_parse_names(void **state)
{
	(void)state;
	assert_int_equal(log_level_parse("error"), LOG_ERROR);
	assert_int_equal(log_level_parse("warn"), LOG_WARN);
	assert_int_equal(log_level_parse("info"), LOG_INFO);
	assert_int_equal(log_level_parse("debug"), LOG_DEBUG);
	assert_int_equal(log_level_parse("INFO"), -1);
	assert_int_equal(log_level_parse(""), -1);
	assert_int_equal(log_level_parse(NULL), -1);
	assert_int_equal(log_format_parse("logfmt"), LOG_FORMAT_LOGFMT);
	assert_int_equal(log_format_parse("json"), LOG_FORMAT_JSON);
	assert_int_equal(log_format_parse("text"), -1);
	assert_int_equal(log_format_parse(NULL), -1);
}

static void
test_logfmt_line(void **state)
{
	char *s;
	size_t len;

	(void)state;
	log_info("serving %d keys on %s", 2, "/run/p11kms/kms.sock");
	s = captured(&len);
	assert_one_clean_line(s, len);
	assert_matches(s, "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:"
	    "[0-9]{2}\\.[0-9]{3}Z level=info msg=\"serving 2 keys on "
	    "/run/p11kms/kms.sock\"\n$");
	free(s);
}

static void
test_json_line(void **state)
{
	struct json *j = malloc(sizeof(*j));
	char *s;
	size_t len;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	log_warn("token unhealthy: %s", "C_Encrypt: CKR_DEVICE_REMOVED");
	s = captured(&len);
	assert_one_clean_line(s, len);
	assert_matches(s, "^\\{\"ts\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T"
	    "[0-9:]{8}\\.[0-9]{3}Z\",\"level\":\"warn\",\"msg\":");
	json_parse(j, s);
	assert_string_equal(json_get(j, "level"), "warn");
	assert_string_equal(json_get(j, "msg"),
	    "token unhealthy: C_Encrypt: CKR_DEVICE_REMOVED");
	free(s);
	free(j);
}

static void
test_levels(void **state)
{
	char *s;
	size_t len;

	(void)state;
	log_level = LOG_WARN;
	log_debug("d");
	log_info("i");
	log_kv(LOG_INFO, "i", "k", "v", NULL);
	log_msg(99, "bogus level");
	log_msg(-1, "bogus level");
	s = captured(&len);
	assert_int_equal(len, 0);
	free(s);
	log_warn("w");
	log_error("e");
	s = captured(&len);
	assert_int_equal(count_char(s, len, '\n'), 2);
	assert_non_null(strstr(s, "level=warn msg=\"w\""));
	assert_non_null(strstr(s, "level=error msg=\"e\""));
	free(s);
}

/* What a hostile peer string could carry, and how it must come out. */
static const struct {
	const char *in;
	const char *escaped;		/* inside the quotes, both formats */
} escapes[] = {
	{ "a\"b", "a\\\"b" },
	{ "back\\slash", "back\\\\slash" },
	{ "nl\nts=2001-01-01T00:00:00Z level=error msg=\"FORGED",
	  "nl\\nts=2001-01-01T00:00:00Z level=error msg=\\\"FORGED" },
	{ "cr\r\nx", "cr\\r\\nx" },
	{ "tab\tx", "tab\\tx" },
	{ "esc\x1b[2Jx", "esc\\u001b[2Jx" },
	{ "bell\a del\x7f", "bell\\u0007 del\\u007f" },
	{ "c1 csi \xc2\x9b" "31m", "c1 csi \\u009b31m" },
	{ "utf8 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
	  "utf8 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" },
	{ "bad \xff\xfe", "bad \\ufffd\\ufffd" },
	{ "overlong \xc0\xaf", "overlong \\ufffd\\ufffd" },
	{ "surrogate \xed\xa0\x80", "surrogate \\ufffd\\ufffd\\ufffd" },
	{ "cut \xe2\x82", "cut \\ufffd\\ufffd" },
	{ "json }{\"level\":\"error\"", "json }{\\\"level\\\":\\\"error\\\"" },
	/* Bidi controls and separators: "Trojan Source" display tricks. */
	{ "rlo \xe2\x80\xae lri \xe2\x81\xa6 pdi \xe2\x81\xa9",
	  "rlo \\u202e lri \\u2066 pdi \\u2069" },
	{ "alm \xd8\x9c lrm \xe2\x80\x8e ls \xe2\x80\xa8 ps \xe2\x80\xa9",
	  "alm \\u061c lrm \\u200e ls \\u2028 ps \\u2029" },
	/* Neighbours of those ranges are ordinary text. */
	{ "zwj \xe2\x80\x8d nnbsp \xe2\x80\xaf wj \xe2\x81\xa0",
	  "zwj \xe2\x80\x8d nnbsp \xe2\x80\xaf wj \xe2\x81\xa0" },
};

static void
test_escaping_logfmt(void **state)
{
	char *s, want[512];
	size_t i, len;

	(void)state;
	for (i = 0; i < sizeof(escapes) / sizeof(escapes[0]); i++) {
		log_info("%s", escapes[i].in);
		s = captured(&len);
		assert_one_clean_line(s, len);
		snprintf(want, sizeof(want), " msg=\"%s\"\n",
		    escapes[i].escaped);
		if (strstr(s, want) == NULL)
			fail_msg("case %zu: %s lacks %s", i, s, want);
		/* Never a second record. */
		assert_int_equal(count_char(s, len, '\n'), 1);
		assert_null(strstr(s, "\nts="));
		free(s);
	}
}

static void
test_escaping_json(void **state)
{
	struct json *j = malloc(sizeof(*j));
	char *s, want[512];
	size_t i, len;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	for (i = 0; i < sizeof(escapes) / sizeof(escapes[0]); i++) {
		log_kv(LOG_ERROR, escapes[i].in, "uid", escapes[i].in, NULL);
		s = captured(&len);
		assert_one_clean_line(s, len);
		snprintf(want, sizeof(want), "\"msg\":\"%s\",\"uid\":\"%s\"}\n",
		    escapes[i].escaped, escapes[i].escaped);
		if (strstr(s, want) == NULL)
			fail_msg("case %zu: %s lacks %s", i, s, want);
		json_parse(j, s);
		assert_int_equal(j->n, 4);
		/* Valid UTF-8 comes back exactly. */
		if (strstr(escapes[i].escaped, "fffd") == NULL) {
			assert_string_equal(json_get(j, "msg"), escapes[i].in);
			assert_string_equal(json_get(j, "uid"), escapes[i].in);
		}
		free(s);
	}
	free(j);
}

static void
test_kv_logfmt(void **state)
{
	char *s;
	size_t len;

	(void)state;
	log_kv(LOG_WARN, "request failed", "method", "Encrypt", "code",
	    "INVALID_ARGUMENT", "path", "/v2.KeyManagementService/Encrypt",
	    "why", "plaintext must be 1 to 512 bytes", "empty", "", "null",
	    NULL, "bad key=\"x\"\n", "v", "eq", "a=b", NULL);
	s = captured(&len);
	assert_one_clean_line(s, len);
	assert_non_null(strstr(s, " level=warn msg=\"request failed\" "
	    "method=Encrypt code=INVALID_ARGUMENT "
	    "path=/v2.KeyManagementService/Encrypt "
	    "why=\"plaintext must be 1 to 512 bytes\" empty=\"\" null=\"\" "
	    "bad_key__x__=v eq=\"a=b\"\n"));
	free(s);
}

static void
test_kv_json(void **state)
{
	struct json *j = malloc(sizeof(*j));
	char *s;
	size_t len;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	log_kv(LOG_INFO, "start", "socket", "/run/p11kms/kms.sock", "workers",
	    "4", "", "empty key", NULL);
	s = captured(&len);
	json_parse(j, s);
	assert_int_equal(j->n, 6);
	assert_string_equal(json_get(j, "msg"), "start");
	assert_string_equal(json_get(j, "socket"), "/run/p11kms/kms.sock");
	assert_string_equal(json_get(j, "workers"), "4");
	assert_string_equal(json_get(j, "_"), "empty key");
	assert_null(json_get(j, "truncated"));
	free(s);
	free(j);
}

/* Too many pairs: the first LOG_KV_MAX are kept, the line says so. */
static void
test_kv_too_many(void **state)
{
	struct json *j = malloc(sizeof(*j));
	char *s;
	size_t len;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	log_kv(LOG_INFO, "m", "k1", "1", "k2", "2", "k3", "3", "k4", "4", "k5",
	    "5", "k6", "6", "k7", "7", "k8", "8", "k9", "9", "k10", "10", "k11",
	    "11", "k12", "12", "k13", "13", "k14", "14", "k15", "15", "k16",
	    "16", "k17", "17", "k18", "18", "k19", "19", "k20", "20", "k21",
	    "21", "k22", "22", "k23", "23", "k24", "24", "k25", "25", "k26",
	    "26", NULL);
	s = captured(&len);
	json_parse(j, s);
	/* LOG_KV_MAX (24) pairs kept, the rest dropped. */
	assert_string_equal(json_get(j, "k24"), "24");
	assert_null(json_get(j, "k25"));
	assert_string_equal(json_get(j, "truncated"), "true");
	free(s);
	free(j);
}

/* Over-long input is cut at an escape boundary; the line stays valid. */
static void
test_truncation(void **state)
{
	struct json *j = malloc(sizeof(*j));
	char *big = malloc(8000), *s;
	size_t len;
	int fmt;

	(void)state;
	for (fmt = LOG_FORMAT_LOGFMT; fmt <= LOG_FORMAT_JSON; fmt++) {
		log_format = fmt;
		/* Message: 1023 control bytes escape to 6 bytes each. */
		memset(big, '\x01', 2000);
		big[2000] = '\0';
		log_info("%s", big);
		s = captured(&len);
		assert_one_clean_line(s, len);
		assert_non_null(strstr(s, "truncated"));
		if (fmt == LOG_FORMAT_JSON) {
			json_parse(j, s);
			assert_true(strlen(json_get(j, "msg")) > 100);
		} else {
			assert_non_null(strstr(s, "\" truncated=true\n"));
		}
		free(s);

		/* A field too big to fit is dropped whole. */
		memset(big, '"', 7000);
		big[7000] = '\0';
		log_kv(LOG_INFO, "m", "small", "1", "big", big, "after", "2",
		    NULL);
		s = captured(&len);
		assert_one_clean_line(s, len);
		assert_null(strstr(s, "big"));
		assert_null(strstr(s, "after"));
		if (fmt == LOG_FORMAT_JSON) {
			json_parse(j, s);
			assert_string_equal(json_get(j, "small"), "1");
			assert_string_equal(json_get(j, "truncated"), "true");
		} else {
			assert_non_null(strstr(s, " small=1 truncated=true\n"));
		}
		free(s);
	}
	free(big);
	free(j);
}

#define THREADS		4
#define LINES		500

static void *
writer(void *arg)
{
	int i;

	for (i = 0; i < LINES; i++)
		log_kv(LOG_INFO, "concurrent line with some length to it",
		    "thread", (const char *)arg, "pad",
		    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
		    NULL);
	return NULL;
}

/* One write per line: lines from many threads never interleave. */
static void
test_threads_do_not_interleave(void **state)
{
	static const char *const names[THREADS] = { "a", "b", "c", "d" };
	pthread_t th[THREADS];
	struct json *j = malloc(sizeof(*j));
	char *s, *line, *save = NULL;
	size_t len, n = 0;
	int i;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	for (i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, writer,
		    (void *)names[i]), 0);
	for (i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	s = captured(&len);
	for (line = strtok_r(s, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save)) {
		char one[LOG_LINE_MAX + 2];

		snprintf(one, sizeof(one), "%s\n", line);
		json_parse(j, one);
		n++;
	}
	assert_int_equal(n, THREADS * LINES);
	free(s);
	free(j);
}

/* per_s lines a second; the refused ones are reported once, later. */
static void
test_ratelim(void **state)
{
	struct log_ratelim rl;
	uint64_t t = 5000000000ull;
	unsigned i, ok = 0;

	(void)state;
	log_ratelim_init(&rl, 3);
	for (i = 0; i < 10; i++)
		ok += (unsigned)log_ratelim_allow(&rl, t + i);
	assert_int_equal(ok, 3);
	/* The window is not over: nothing to report yet. */
	assert_int_equal(log_ratelim_take_dropped(&rl, t + 999999999ull), 0);
	t += 1000000000ull;
	assert_int_equal(log_ratelim_take_dropped(&rl, t), 7);
	assert_int_equal(log_ratelim_take_dropped(&rl, t), 0);
	assert_int_equal(log_ratelim_allow(&rl, t + 1), 1);
	/* A window with no refusal reports nothing. */
	assert_int_equal(log_ratelim_take_dropped(&rl, t + 2000000000ull), 0);
}

/* A uid with NUL bytes is logged whole, each NUL as \u0000, both formats. */
static void
test_nul_in_uid(void **state)
{
	static const char uid[] = "ab\0cd\0\n";	/* 7 bytes */
	char *s;
	size_t len;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	log_kv_bytes(LOG_ERROR, "Encrypt", "uid", uid, sizeof(uid) - 1,
	    "method", "Encrypt", NULL);
	s = captured(&len);
	assert_one_clean_line(s, len);
	if (strstr(s, "\"uid\":\"ab\\u0000cd\\u0000\\n\",\"method\":"
	    "\"Encrypt\"}") == NULL)
		fail_msg("NUL not escaped or uid cut: %s", s);
	free(s);
	log_format = LOG_FORMAT_LOGFMT;
	log_kv_bytes(LOG_ERROR, "Encrypt", "uid", uid, sizeof(uid) - 1, NULL);
	s = captured(&len);
	assert_one_clean_line(s, len);
	if (strstr(s, " uid=\"ab\\u0000cd\\u0000\\n\"") == NULL)
		fail_msg("NUL not escaped or uid cut: %s", s);
	free(s);
	/* A value without NUL and needing no quotes stays bare in logfmt. */
	log_kv_bytes(LOG_ERROR, "m", "uid", "abc", 3, NULL);
	s = captured(&len);
	assert_non_null(strstr(s, " uid=abc\n"));
	free(s);
}

static atomic_int level_stop;

static void *
level_reader(void *arg)
{
	(void)arg;
	while (!atomic_load(&level_stop))
		log_debug("debug while the level changes");
	return NULL;
}

/*
 * A reload sets log_level on the loop thread while other threads log:
 * under make tsan a plain int here is a reported data race.
 */
static void
test_level_changes_while_threads_log(void **state)
{
	pthread_t t[2];
	int i;

	(void)state;
	atomic_store(&level_stop, 0);
	for (i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, level_reader,
		    NULL), 0);
	for (i = 0; i < 2000; i++)
		log_level = i % 2 ? LOG_DEBUG : LOG_ERROR;
	atomic_store(&level_stop, 1);
	for (i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	log_level = LOG_ERROR;
	free(captured(NULL));
	log_debug("after");
	{
		size_t len;
		char *s = captured(&len);

		assert_int_equal(len, 0);	/* the last level holds */
		free(s);
	}
}

/* '#' keys hold numbers: bare in JSON when they are JSON numbers, quoted
 * when not (never invalid JSON), and the '#' never shows. */
static void
test_kv_numbers(void **state)
{
	char *s;

	(void)state;
	log_format = LOG_FORMAT_JSON;
	log_kv(LOG_INFO, "serving", "#workers", "4", "#ratio", "-0.25e3",
	    "#bad", "4x", "#lead0", "012", "key_id", "1234", NULL);
	s = captured(NULL);
	assert_non_null(strstr(s, ",\"workers\":4,"));
	assert_non_null(strstr(s, ",\"ratio\":-0.25e3,"));
	assert_non_null(strstr(s, ",\"bad\":\"4x\","));
	assert_non_null(strstr(s, ",\"lead0\":\"012\","));
	/* A string of digits without '#' stays a string. */
	assert_non_null(strstr(s, ",\"key_id\":\"1234\"}"));
	assert_null(strchr(s, '#'));
	free(s);

	log_format = LOG_FORMAT_LOGFMT;
	log_kv(LOG_INFO, "serving", "#workers", "4", NULL);
	s = captured(NULL);
	assert_non_null(strstr(s, "msg=\"serving\" workers=4\n"));
	free(s);
}

static void
test_level_names(void **state)
{
	(void)state;
	assert_string_equal(log_level_name(LOG_ERROR), "error");
	assert_string_equal(log_level_name(LOG_DEBUG), "debug");
	assert_string_equal(log_level_name(7), "?");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_names),
		cmocka_unit_test_setup_teardown(test_logfmt_line, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_json_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_levels, setup, teardown),
		cmocka_unit_test_setup_teardown(test_escaping_logfmt, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_escaping_json, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_kv_logfmt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kv_json, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kv_too_many, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_truncation, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_threads_do_not_interleave,
		    setup, teardown),
		cmocka_unit_test(test_ratelim),
		cmocka_unit_test_setup_teardown(test_nul_in_uid, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_level_changes_while_threads_log,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_kv_numbers, setup,
		    teardown),
		cmocka_unit_test(test_level_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
