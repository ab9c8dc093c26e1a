/*
 * test_audit: the audit record encoder, the queued (packed) form of a
 * record, the hash chain, audit-verify on
 * intact and tampered files, and the writer (open, records, reopen, close)
 * on a real file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "plugin/audit.h"
#include "plugin/audit_int.h"

static char dir[] = "/tmp/p11kms-test-audit-XXXXXX";

static const char *
esc(const char *s, size_t max, int *cut)
{
	static char out[1024];

	assert_true(audit_json_string(s, max, out, sizeof(out), cut) > 0);
	return out;
}

static void
test_json_string_escapes(void **state)
{
	int cut;

	(void)state;
	assert_string_equal(esc("plain-uid", 128, &cut), "\"plain-uid\"");
	assert_int_equal(cut, 0);
	assert_string_equal(esc("a\"b\\c", 128, NULL), "\"a\\u0022b\\u005cc\"");
	assert_string_equal(esc("\n\r\t\x1b[31m", 128, NULL),
	    "\"\\u000a\\u000d\\u0009\\u001b[31m\"");
	assert_string_equal(esc("\x7f", 128, NULL), "\"\\u007f\"");
	/* C1 control U+0085, bidi override U+202E, isolate U+2066, BOM. */
	assert_string_equal(esc("\xc2\x85", 128, NULL), "\"\\u0085\"");
	assert_string_equal(esc("x\xe2\x80\xaey", 128, NULL),
	    "\"x\\u202ey\"");
	assert_string_equal(esc("\xe2\x81\xa6", 128, NULL), "\"\\u2066\"");
	assert_string_equal(esc("\xef\xbb\xbf", 128, NULL), "\"\\ufeff\"");
	assert_string_equal(esc("\xe2\x80\x8f", 128, NULL), "\"\\u200f\"");
	/* Printable non-ASCII stays as it is. */
	assert_string_equal(esc("caf\xc3\xa9", 128, NULL), "\"caf\xc3\xa9\"");
	/* Invalid UTF-8: stray byte, overlong, surrogate, cut sequence. */
	assert_string_equal(esc("\xff", 128, NULL), "\"\\ufffd\"");
	assert_string_equal(esc("\xc0\xaf", 128, NULL),
	    "\"\\ufffd\\ufffd\"");
	assert_string_equal(esc("\xed\xa0\x80", 128, NULL),
	    "\"\\ufffd\\ufffd\\ufffd\"");
	assert_string_equal(esc("\xe2\x80", 128, NULL),
	    "\"\\ufffd\\ufffd\"");
	assert_string_equal(esc(NULL, 128, NULL), "\"\"");
}

static void
test_json_string_bounds(void **state)
{
	char big[600], out[16];
	int cut;

	(void)state;
	memset(big, 'u', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(strlen(esc(big, AUDIT_UID_MAX, &cut)),
	    AUDIT_UID_MAX + 2);
	assert_int_equal(cut, 1);
	/* Cut at a character boundary, never inside "é". */
	assert_string_equal(esc("ab\xc3\xa9", 3, &cut), "\"ab\"");
	assert_int_equal(cut, 1);
	/* Too small an output: 0, never an overflow. */
	assert_int_equal(audit_json_string("0123456789abcdef", 100, out,
	    sizeof(out), NULL), 0);
}

static void
event(struct audit_event *ev, const char *uid)
{
	memset(ev, 0, sizeof(*ev));
	ev->ts.tv_sec = 1700000000;
	ev->ts.tv_nsec = 123456789;
	ev->api = "v2";
	ev->op = "Encrypt";
	ev->key_id = "78c12dd5b63eccf107b6486e536363a4";
	ev->token_label = "kms";
	ev->token_serial = "3dcb5d2e3e8983a1";
	ev->mechanism = "aes-gcm";
	ev->uid = uid;
	ev->peer_known = 1;
	ev->peer_uid = 1000;
	ev->peer_gid = 1001;
	ev->peer_pid = 4242;
	ev->code = 0;
	ev->code_name = "OK";
	ev->reason = "ok";
	ev->latency_ns = 1234567;
}

static void
test_encode_fields(void **state)
{
	struct audit_event ev;
	char body[AUDIT_RECORD_MAX], big[400];
	size_t n;

	(void)state;
	event(&ev, "6b1f6a2e-0d1c-4c3b-9f1e-3c1d2e3f4a5b");
	n = audit_encode(&ev, body, sizeof(body));
	assert_int_equal(n, strlen(body));
	assert_string_equal(body,
	    "\"ts\":\"2023-11-14T22:13:20.123456Z\",\"type\":\"request\","
	    "\"api\":\"v2\",\"op\":\"Encrypt\",\"code\":\"OK\","
	    "\"grpc_code\":0,\"reason\":\"ok\",\"latency_us\":1234,"
	    "\"key_id\":\"78c12dd5b63eccf107b6486e536363a4\","
	    "\"token_label\":\"kms\",\"token_serial\":\"3dcb5d2e3e8983a1\","
	    "\"mechanism\":\"aes-gcm\","
	    "\"uid\":\"6b1f6a2e-0d1c-4c3b-9f1e-3c1d2e3f4a5b\","
	    "\"peer_uid\":1000,\"peer_gid\":1001,\"peer_pid\":4242");
	/* v1: no uid field at all; unknown peer: no peer fields. */
	event(&ev, NULL);
	ev.peer_known = 0;
	ev.api = "v1beta1";
	assert_true(audit_encode(&ev, body, sizeof(body)) > 0);
	assert_null(strstr(body, "\"uid\""));
	assert_null(strstr(body, "peer_"));
	/* A hostile uid: bounded, escaped, marked. */
	memset(big, 0x1b, sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	event(&ev, big);
	assert_true(audit_encode(&ev, body, sizeof(body)) > 0);
	assert_non_null(strstr(body, "\"uid_truncated\":true"));
	assert_null(strchr(body, 0x1b));
	/* A buffer too small gives 0. */
	assert_int_equal(audit_encode(&ev, body, 64), 0);
}

/* The body made from a record through its queued form. */
static size_t
via_pack(const struct audit_event *ev, char *body, size_t cap)
{
	char packed[AUDIT_PACK_MAX];
	struct audit_event back;
	size_t n;

	n = audit_pack(ev, packed);
	assert_true(n > 0 && n <= AUDIT_PACK_MAX);
	assert_int_equal(audit_unpack(packed, n, &back), 0);
	/* Cut anywhere, it is refused, never read past. */
	assert_int_equal(audit_unpack(packed, n - 1, &back), -1);
	assert_int_equal(audit_unpack(packed, 3, &back), -1);
	assert_int_equal(audit_unpack(packed, n, &back), 0);
	return audit_encode(&back, body, cap);
}

/*
 * The writer makes the JSON from the copy the loop queued: it must be the
 * same bytes as from the event itself, for long, hostile, cut and absent
 * fields too.
 */
static void
test_pack_same_bytes(void **state)
{
	struct audit_event ev;
	char want[AUDIT_RECORD_MAX], got[AUDIT_RECORD_MAX];
	char big[600], uni[300];
	size_t i, n;

	(void)state;
	memset(big, 'k', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	/* A 2-byte character across the bound of the uid (128). */
	memset(uni, 'u', sizeof(uni) - 1);
	uni[sizeof(uni) - 1] = '\0';
	uni[127] = (char)0xc3;
	uni[128] = (char)0xa9;
	for (i = 0; i < 8; i++) {
		event(&ev, i == 1 ? NULL : i == 2 ? big : i == 3 ? uni :
		    i == 4 ? "a\"\x1b\xe2\x80\xae\xff" : "uid-1");
		if (i == 5) {
			ev.key_id = big;
			ev.token_label = big + 500;
			ev.mechanism = NULL;
			ev.code_name = NULL;
		}
		if (i == 6) {
			ev.peer_known = 0;
			ev.code = -7;
			ev.peer_pid = -1;
			ev.ts.tv_nsec = 999999999;
		}
		if (i == 7) {
			ev.uid = "";
			ev.api = "";
			ev.latency_ns = UINT64_MAX;
		}
		n = audit_encode(&ev, want, sizeof(want));
		assert_true(n > 0);
		assert_int_equal(via_pack(&ev, got, sizeof(got)), n);
		assert_memory_equal(got, want, n);
	}
}

static void
test_line_and_chain(void **state)
{
	uint8_t prev[AUDIT_CHAIN_LEN] = { 0 }, want[AUDIT_CHAIN_LEN], back[32];
	uint8_t before[AUDIT_CHAIN_LEN];
	char line[512], hex[AUDIT_CHAIN_HEX + 1];
	const char *body = "\"ts\":\"x\",\"type\":\"open\"";
	unsigned mdlen = 0;
	size_t n, plen;
	EVP_MD_CTX *c;

	(void)state;
	memcpy(before, prev, sizeof(prev));
	n = audit_line(7, body, strlen(body), prev, line, sizeof(line));
	assert_int_equal(n, strlen(line));
	assert_memory_equal(line, "{\"seq\":7,\"ts\":", 14);
	assert_int_equal(line[n - 1], '\n');
	/* chain = SHA-256(previous chain || the line before ,"chain":"). */
	plen = n - 1 - AUDIT_CHAIN_SUFFIX;
	assert_memory_equal(line + plen, ",\"chain\":\"", 10);
	c = EVP_MD_CTX_new();
	assert_non_null(c);
	assert_int_equal(EVP_DigestInit_ex(c, EVP_sha256(), NULL), 1);
	assert_int_equal(EVP_DigestUpdate(c, before, sizeof(before)), 1);
	assert_int_equal(EVP_DigestUpdate(c, line, plen), 1);
	assert_int_equal(EVP_DigestFinal_ex(c, want, &mdlen), 1);
	EVP_MD_CTX_free(c);
	assert_memory_equal(prev, want, sizeof(want));
	audit_hex(want, hex);
	assert_memory_equal(line + plen + 10, hex, AUDIT_CHAIN_HEX);
	assert_int_equal(audit_unhex(hex, AUDIT_CHAIN_HEX, back), 0);
	assert_memory_equal(back, want, 32);
	assert_int_equal(audit_unhex("zz", 2, back), -1);
	hex[5] = 'G';
	assert_int_equal(audit_unhex(hex, AUDIT_CHAIN_HEX, back), -1);
	/* Too small: 0 and the chain is left alone. */
	assert_int_equal(audit_line(8, body, strlen(body), prev, line, 40), 0);
	assert_memory_equal(prev, want, sizeof(want));
}

/* Writes lines (bodies, one per entry) as the writer would: seq from 1. */
static void
write_chain(const char *path, const char *const *bodies, size_t n)
{
	uint8_t prev[AUDIT_CHAIN_LEN] = { 0 };
	char line[AUDIT_RECORD_MAX + 200];
	size_t i, len;
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	for (i = 0; i < n; i++) {
		len = audit_line(i + 1, bodies[i], strlen(bodies[i]), prev,
		    line, sizeof(line));
		assert_true(len > 0);
		assert_int_equal(fwrite(line, 1, len, fp), len);
	}
	fclose(fp);
}

static char *
slurp(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "r");
	char *buf = malloc(1 << 16);

	assert_non_null(fp);
	assert_non_null(buf);
	*len = fread(buf, 1, (1 << 16) - 1, fp);
	buf[*len] = '\0';
	fclose(fp);
	return buf;
}

static void
spit(const char *path, const char *buf, size_t len)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	assert_int_equal(fwrite(buf, 1, len, fp), len);
	fclose(fp);
}

static int
verify(const char *a, const char *b, int live)
{
	char *argv[5];
	int argc = 0;

	argv[argc++] = (char *)"audit-verify";
	if (live)
		argv[argc++] = (char *)"--live";
	argv[argc++] = (char *)a;
	if (b != NULL)
		argv[argc++] = (char *)b;
	argv[argc] = NULL;
	return audit_verify_main(argc, argv);
}

static const char *const bodies[] = {
	"\"ts\":\"t\",\"type\":\"open\",\"reason\":\"start\"",
	"\"ts\":\"t\",\"type\":\"request\",\"api\":\"v2\",\"op\":\"Encrypt\","
	    "\"code\":\"OK\",\"uid\":\"a\"",
	"\"ts\":\"t\",\"type\":\"request\",\"api\":\"v2\",\"op\":\"Decrypt\","
	    "\"code\":\"OK\",\"uid\":\"b\"",
	"\"ts\":\"t\",\"type\":\"request\",\"api\":\"v2\",\"op\":\"Decrypt\","
	    "\"code\":\"NOT_FOUND\",\"uid\":\"c\"",
	"\"ts\":\"t\",\"type\":\"close\",\"reason\":\"stop\"",
};
#define NBODIES	(sizeof(bodies) / sizeof(bodies[0]))

static void
test_verify_tampering(void **state)
{
	char path[256], *buf, *p, *q, *swap;
	size_t len, l1, l2;

	(void)state;
	snprintf(path, sizeof(path), "%s/chain.log", dir);
	write_chain(path, bodies, NBODIES);
	assert_int_equal(verify(path, NULL, 0), 0);
	buf = slurp(path, &len);

	/* An edited field: "OK" of the Decrypt becomes "NO". */
	p = strstr(buf, "\"code\":\"OK\",\"uid\":\"b\"");
	assert_non_null(p);
	p[8] = 'N';
	spit(path, buf, len);
	assert_int_equal(verify(path, NULL, 0), 1);
	p[8] = 'O';

	/* A deleted line (the third). */
	p = strchr(buf, '\n') + 1;
	p = strchr(p, '\n') + 1;
	q = strchr(p, '\n') + 1;
	{
		char *cut = malloc(len);

		assert_non_null(cut);
		memcpy(cut, buf, (size_t)(p - buf));
		memcpy(cut + (p - buf), q, len - (size_t)(q - buf));
		spit(path, cut, len - (size_t)(q - p));
		free(cut);
	}
	assert_int_equal(verify(path, NULL, 0), 1);

	/* Two lines swapped (second and third). */
	p = strchr(buf, '\n') + 1;
	q = strchr(p, '\n') + 1;
	l1 = (size_t)(q - p);
	l2 = (size_t)(strchr(q, '\n') + 1 - q);
	swap = malloc(len);
	assert_non_null(swap);
	memcpy(swap, buf, (size_t)(p - buf));
	memcpy(swap + (p - buf), q, l2);
	memcpy(swap + (p - buf) + l2, p, l1);
	memcpy(swap + (p - buf) + l1 + l2, q + l2,
	    len - (size_t)(q - buf) - l2);
	spit(path, swap, len);
	free(swap);
	assert_int_equal(verify(path, NULL, 0), 1);

	/* A truncated tail: cut inside the last line, then whole lines. */
	spit(path, buf, len - 20);
	assert_int_equal(verify(path, NULL, 0), 1);
	assert_int_equal(verify(path, NULL, 1), 1);
	p = strrchr(buf, '\n');
	*p = '\0';
	p = strrchr(buf, '\n');
	*p = '\n';
	spit(path, buf, (size_t)(p - buf) + 1);
	assert_int_equal(verify(path, NULL, 0), 1);	/* no close line */
	assert_int_equal(verify(path, NULL, 1), 0);	/* live file: ok */

	/* The head removed: the chain no longer starts where it says. */
	p = strchr(buf, '\n') + 1;
	spit(path, p, (size_t)(strrchr(buf, '\n') - p) + 1);
	assert_int_equal(verify(path, NULL, 1), 1);

	/* Not JSON at all, empty, unreadable. */
	spit(path, "hello\n", 6);
	assert_int_equal(verify(path, NULL, 1), 1);
	spit(path, "", 0);
	assert_int_equal(verify(path, NULL, 1), 1);
	snprintf(path, sizeof(path), "%s/missing.log", dir);
	assert_int_equal(verify(path, NULL, 1), 2);
	free(buf);
}

static void
record_n(struct audit *a, unsigned n, const char *uid)
{
	struct audit_event ev;
	unsigned i;

	event(&ev, uid);
	for (i = 0; i < n; i++)
		audit_record(a, &ev);
}

static void
test_writer_file(void **state)
{
	struct audit_config cfg = { NULL, AUDIT_SYNC_BATCH, 0 };
	char path[256], old[300], err[256], *buf;
	uint64_t written, lost;
	struct audit *a;
	struct stat st;
	size_t len;

	(void)state;
	snprintf(path, sizeof(path), "%s/writer.log", dir);
	snprintf(old, sizeof(old), "%s.1", path);
	cfg.path = path;
	assert_int_equal(audit_open(&cfg, &a, err, sizeof(err)), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	record_n(a, 500, "uid-1");
	assert_int_equal(audit_failing(a), 0);
	/* Rotation: rename, reopen; the records go to the new file. */
	while (1) {
		audit_counts(a, &written, &lost);
		if (written == 500)
			break;
		usleep(10000);
	}
	assert_int_equal(rename(path, old), 0);
	audit_reopen(a);
	record_n(a, 10, "uid-2");
	audit_close(a);
	assert_int_equal(verify(old, path, 0), 0);
	assert_int_equal(verify(path, NULL, 0), 0);
	assert_int_equal(verify(old, NULL, 0), 0);	/* ends "close" too */
	assert_int_equal(verify(path, old, 0), 1);	/* out of order */

	/* A restart appends and continues the chain of the file. */
	cfg.sync = AUDIT_SYNC_EVERY;
	assert_int_equal(audit_open(&cfg, &a, err, sizeof(err)), 0);
	record_n(a, 3, "uid-3");
	audit_close(a);
	assert_int_equal(verify(old, path, 0), 0);
	buf = slurp(path, &len);
	assert_non_null(strstr(buf, "\"reason\":\"start\""));
	assert_non_null(strstr(buf, "\"uid\":\"uid-3\""));
	free(buf);

	/* A path that cannot be opened is refused at start. */
	snprintf(path, sizeof(path), "%s/no/such/dir/x.log", dir);
	assert_int_equal(audit_open(&cfg, &a, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "--audit-log"));
}

static void
test_writer_copytruncate(void **state)
{
	struct audit_config cfg = { NULL, AUDIT_SYNC_BATCH, 0 };
	char path[256], err[256], *buf;
	uint64_t written, lost;
	struct audit *a;
	size_t len;

	(void)state;
	snprintf(path, sizeof(path), "%s/ct.log", dir);
	cfg.path = path;
	assert_int_equal(audit_open(&cfg, &a, err, sizeof(err)), 0);
	record_n(a, 5, "before");
	do {
		usleep(10000);
		audit_counts(a, &written, &lost);
	} while (written < 5);
	assert_int_equal(truncate(path, 0), 0);
	record_n(a, 2, "after");
	audit_close(a);
	buf = slurp(path, &len);
	assert_memory_equal(buf, "{\"seq\":", 7);
	assert_non_null(strstr(buf, "\"type\":\"truncated\""));
	free(buf);
	/* What is left verifies alone (it names the chain before it). */
	assert_int_equal(verify(path, NULL, 0), 0);
}

static int
setup(void **state)
{
	(void)state;
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_string_escapes),
		cmocka_unit_test(test_json_string_bounds),
		cmocka_unit_test(test_encode_fields),
		cmocka_unit_test(test_pack_same_bytes),
		cmocka_unit_test(test_line_and_chain),
		cmocka_unit_test(test_verify_tampering),
		cmocka_unit_test(test_writer_file),
		cmocka_unit_test(test_writer_copytruncate),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
