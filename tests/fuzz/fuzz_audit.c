/*
 * fuzz_audit: the audit log's format on arbitrary bytes.
 *
 * - audit_json_string: the output is a quoted JSON string with no raw
 *   control byte, quote or backslash inside that is not an escape, no raw
 *   bidi/format character, and within its documented size bound.
 * - audit_encode + audit_line with the input as a hostile uid: the line the
 *   daemon would write always verifies, and flipping any one of its bytes
 *   never does; the record through its queued form (audit_pack,
 *   audit_unpack) encodes to the same bytes.
 * - audit-verify on the input as a file: never crashes, answers 0 or 1.
 */
#include <stdlib.h>
#include <string.h>

#include "plugin/audit.h"
#include "plugin/audit_int.h"
#include "tests/fuzz/fuzz.h"

#define CHECK(c)	FUZZ_CHECK(c)

static int
verify_buf(const char *buf, size_t len)
{
	FILE *fp = fmemopen((void *)buf, len, "r");
	int r;

	CHECK(fp != NULL);
	r = audit_verify_stream(fp, 1);
	fclose(fp);
	return r;
}

static void
check_string(const char *s, size_t n)
{
	char out[6 * 256 + 8];
	size_t max = n < 256 ? n : 256, len, i;
	int cut;

	len = audit_json_string(s, max, out, sizeof(out), &cut);
	CHECK(len >= 2 && out[0] == '"' && out[len - 1] == '"');
	CHECK(len <= 6 * max + 2);
	CHECK(out[len] == '\0');
	for (i = 1; i + 1 < len; i++) {
		unsigned char c = (unsigned char)out[i];

		CHECK(c >= 0x20 && c != 0x7f && c != '"');
		/* No raw C1 control (U+0080-U+009F is C2 80-9F in UTF-8). */
		CHECK(!(c == 0xc2 && (unsigned char)out[i + 1] >= 0x80 &&
		    (unsigned char)out[i + 1] <= 0x9f));
		/* No raw U+202A-U+202E, U+2066-U+2069 (E2 80 AA-AE, E2 81 A6-A9). */
		CHECK(!(c == 0xe2 && (unsigned char)out[i + 1] == 0x80 &&
		    (unsigned char)out[i + 2] >= 0xaa &&
		    (unsigned char)out[i + 2] <= 0xae));
		CHECK(!(c == 0xe2 && (unsigned char)out[i + 1] == 0x81 &&
		    (unsigned char)out[i + 2] >= 0xa6 &&
		    (unsigned char)out[i + 2] <= 0xa9));
		if (c == '\\') {
			CHECK(out[i + 1] == 'u');
			i += 5;
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1), body[AUDIT_RECORD_MAX];
	char packed[AUDIT_PACK_MAX], again[AUDIT_RECORD_MAX];
	struct audit_event back;
	char line[AUDIT_RECORD_MAX + 200];
	uint8_t prev[AUDIT_CHAIN_LEN] = { 0 };
	struct audit_event ev;
	size_t n, len, i;

	CHECK(s != NULL);
	memcpy(s, data, size);
	s[size] = '\0';
	check_string(s, strlen(s));

	memset(&ev, 0, sizeof(ev));
	ev.api = "v2";
	ev.op = "Decrypt";
	ev.key_id = s;
	ev.uid = s;
	ev.code_name = "OK";
	ev.reason = "ok";
	n = audit_encode(&ev, body, sizeof(body));
	CHECK(n > 0);
	len = audit_pack(&ev, packed);
	CHECK(len > 0 && len <= AUDIT_PACK_MAX);
	CHECK(audit_unpack(packed, len, &back) == 0);
	CHECK(audit_encode(&back, again, sizeof(again)) == n);
	CHECK(memcmp(again, body, n) == 0);
	len = audit_line(1, body, n, prev, line, sizeof(line));
	CHECK(len > 0 && line[len - 1] == '\n');
	CHECK(memchr(line, '\n', len - 1) == NULL);
	CHECK(verify_buf(line, len) == 0);
	i = size > 0 ? data[0] % (len - 1) : 0;
	line[i] ^= (char)(1u << (size > 1 ? data[1] % 8 : 0));
	CHECK(verify_buf(line, len) == 1);

	CHECK(verify_buf((const char *)data, size) <= 1);
	free(s);
	return 0;
}
