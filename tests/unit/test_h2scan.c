/*
 * Unit tests for the HTTP/2 frame-boundary filter (plugin/h2scan.c): what
 * passes to nghttp2 and what is dropped, whatever the read boundaries.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "plugin/h2scan.h"

#define HEADERS		0x1
#define RST_STREAM	0x3
#define DATA		0x0
#define PING		0x6

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* Appends a frame of type t on stream sid with len payload bytes of fill. */
static size_t
frame(uint8_t *out, uint8_t t, uint32_t sid, size_t len, uint8_t fill)
{
	out[0] = (uint8_t)(len >> 16);
	out[1] = (uint8_t)(len >> 8);
	out[2] = (uint8_t)len;
	out[3] = t;
	out[4] = 0;
	out[5] = (uint8_t)(sid >> 24);
	out[6] = (uint8_t)(sid >> 16);
	out[7] = (uint8_t)(sid >> 8);
	out[8] = (uint8_t)sid;
	memset(out + 9, fill, len);
	return 9 + len;
}

/*
 * The client stream: preface, HEADERS 1, RST 3 (never opened: dropped),
 * DATA 1 whose payload looks like an RST frame header, RST 1 (opened:
 * kept), PING (stream 0), RST 0 (kept: nghttp2 judges it), HEADERS 5,
 * RST 5 (kept), RST 7 (dropped). want gets what must reach nghttp2.
 */
static size_t
stream(uint8_t *in, uint8_t *want, size_t *wantlen)
{
	size_t n = 0, w = 0, k;
	uint8_t fake[9 + 4];

	memcpy(in, preface, 24);
	memcpy(want, preface, 24);
	n = w = 24;
	k = frame(in + n, HEADERS, 1, 10, 'h');
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	n += frame(in + n, RST_STREAM, 3, 4, 0);
	(void)frame(fake, RST_STREAM, 9, 4, 0);
	k = frame(in + n, DATA, 1, 9, 0);
	memcpy(in + n + 9, fake, 9);
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	k = frame(in + n, RST_STREAM, 1, 4, 0);
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	k = frame(in + n, PING, 0, 8, 'p');
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	k = frame(in + n, RST_STREAM, 0, 4, 0);
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	k = frame(in + n, HEADERS, 5, 3, 'H');
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	k = frame(in + n, RST_STREAM, 5, 4, 0);
	memcpy(want + w, in + n, k);
	n += k;
	w += k;
	n += frame(in + n, RST_STREAM, 7, 4, 0);
	*wantlen = w;
	return n;
}

static void
test_whole_stream(void **state)
{
	uint8_t in[512], want[512], out[512 + H2SCAN_FRAME_HDR];
	struct h2scan sc;
	size_t n, w, o;

	(void)state;
	n = stream(in, want, &w);
	h2scan_init(&sc);
	o = h2scan_filter(&sc, in, n, out);
	assert_int_equal(o, w);
	assert_memory_equal(out, want, w);
	/* Two RST_STREAMs of 13 bytes each were left out. */
	assert_int_equal(n - o, 2 * 13);
	assert_int_equal(sc.max_stream, 5);
}

/* Every split of the stream into two reads, and one byte at a time. */
static void
test_any_read_boundary(void **state)
{
	uint8_t in[512], want[512], out[1024 + H2SCAN_FRAME_HDR];
	struct h2scan sc;
	size_t n, w, o, cut, i;

	(void)state;
	n = stream(in, want, &w);
	for (cut = 0; cut <= n; cut++) {
		h2scan_init(&sc);
		o = h2scan_filter(&sc, in, cut, out);
		o += h2scan_filter(&sc, in + cut, n - cut, out + o);
		assert_int_equal(o, w);
		assert_memory_equal(out, want, w);
	}
	h2scan_init(&sc);
	for (i = 0, o = 0; i < n; i++)
		o += h2scan_filter(&sc, in + i, 1, out + o);
	assert_int_equal(o, w);
	assert_memory_equal(out, want, w);
}

/* A frame header split after the preface, and a large frame's payload. */
static void
test_large_payload(void **state)
{
	static uint8_t in[70000], out[70000 + H2SCAN_FRAME_HDR];
	struct h2scan sc;
	size_t n, o;

	(void)state;
	memcpy(in, preface, 24);
	n = 24 + frame(in + 24, DATA, 1, 65535, 0x03);
	h2scan_init(&sc);
	o = h2scan_filter(&sc, in, 30, out);
	o += h2scan_filter(&sc, in + 30, n - 30, out + o);
	assert_int_equal(o, n);
	assert_memory_equal(out, in, n);
	assert_int_equal(sc.payload_left, 0);
}

/*
 * An RST_STREAM on a stream never opened but with a length other than 4
 * is not dropped: nghttp2 must see it and close the connection (a random
 * header claiming 15 MB swallowed everything after it, and the connection
 * hung instead of closing: test_transport's random bytes, now and then).
 */
static void
test_malformed_rst_passes(void **state)
{
	static uint8_t in[24 + 9 + 40], out[sizeof(in) + H2SCAN_FRAME_HDR];
	struct h2scan sc;
	size_t n, o;

	(void)state;
	memcpy(in, preface, 24);
	n = 24 + frame(in + 24, RST_STREAM, 9, 40, 'x');
	h2scan_init(&sc);
	o = h2scan_filter(&sc, in, n, out);
	assert_int_equal(o, n);
	assert_memory_equal(out, in, n);
	/* A header claiming more than arrives passes as it comes. */
	n = 24 + frame(in + 24, RST_STREAM, 9, 0, 0);
	in[24] = 0xe4;			/* length 0xe40000 */
	h2scan_init(&sc);
	o = h2scan_filter(&sc, in, n, out);
	assert_int_equal(o, n);
	assert_int_equal(sc.payload_left, 0xe40000);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_whole_stream),
		cmocka_unit_test(test_any_read_boundary),
		cmocka_unit_test(test_large_payload),
		cmocka_unit_test(test_malformed_rst_passes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
