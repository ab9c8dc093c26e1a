/* Unit tests for the gRPC framing helpers in plugin/grpc.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <errno.h>
#include <unistd.h>
#include <sys/socket.h>

#include <nghttp2/nghttp2.h>

#include "kms_v2.pb-c.h"
#include "plugin/grpc.h"
#include "plugin/loop.h"

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
	/* Past 64 bits when multiplied: capped, not wrapped. */
	assert_int_equal(grpc_parse_timeout("99999999H", 9, &ns), 0);
	assert_true(ns == GRPC_TIMEOUT_MAX_NS);
	assert_int_equal(grpc_parse_timeout("99999999M", 9, &ns), 0);
	assert_true(ns == GRPC_TIMEOUT_MAX_NS);
	assert_int_equal(grpc_parse_timeout("2400H", 5, &ns), 0);
	assert_true(ns == GRPC_TIMEOUT_MAX_NS);
	assert_int_equal(grpc_parse_timeout("2399H", 5, &ns), 0);
	assert_true(ns == 2399ull * 3600ull * 1000000000ull);
	assert_int_equal(grpc_parse_timeout("99999999n", 9, &ns), 0);
	assert_true(ns == 99999999ull);
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

/* ---- a reply leaves in one send ---- */

static void
status_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	V2__StatusResponse r = V2__STATUS_RESPONSE__INIT;

	(void)ctx;
	(void)msg;
	(void)len;
	r.version = (char *)"v2";
	r.healthz = (char *)"ok";
	r.key_id = (char *)"k1";
	grpc_call_reply(call, &r.base);
}

static ssize_t
empty_message(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *arg)
{
	(void)h2;
	(void)sid;
	(void)src;
	(void)arg;
	assert_true(len >= GRPC_FRAME_HDR);
	memset(buf, 0, GRPC_FRAME_HDR);	/* uncompressed, length 0 */
	*flags |= NGHTTP2_DATA_FLAG_EOF;
	return GRPC_FRAME_HDR;
}

/* Everything the client session has to send, as one record. */
static void
client_send(nghttp2_session *cl, int fd)
{
	static uint8_t out[65536];
	const uint8_t *data;
	size_t have = 0;
	ssize_t n;

	while ((n = nghttp2_session_mem_send(cl, &data)) > 0) {
		assert_true((size_t)n <= sizeof(out) - have);
		memcpy(out + have, data, (size_t)n);
		have += (size_t)n;
	}
	assert_true(n == 0);
	if (have > 0)
		assert_int_equal(send(fd, out, have, 0), (ssize_t)have);
}

/* Submits a unary call of path with an empty message; returns its id. */
static int32_t
submit_call(nghttp2_session *cl, const char *path)
{
	nghttp2_data_provider dp = { .read_callback = empty_message };
	nghttp2_nv hdrs[] = {
#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, \
	strlen(v), NGHTTP2_NV_FLAG_NONE }
		NV(":method", "POST"), NV(":scheme", "http"),
		NV(":path", path), NV(":authority", "localhost"),
		NV("content-type", "application/grpc"), NV("te", "trailers"),
#undef NV
	};
	int32_t sid;

	sid = nghttp2_submit_request(cl, NULL, hdrs,
	    sizeof(hdrs) / sizeof(hdrs[0]), &dp, NULL);
	assert_true(sid > 0);
	return sid;
}

/*
 * On a SOCK_SEQPACKET pair every send() is one record, so the records the
 * client reads count the server's sends: a reply's HEADERS, DATA and
 * trailers must all be in one (one peer wake-up per reply, not three).
 */
static void
test_reply_is_one_send(void **state)
{
	static const struct grpc_method methods[] = {
		{ "/v2.KeyManagementService/Status", status_handler },
	};
	nghttp2_session_callbacks *cbs;
	nghttp2_session *cl;
	struct grpc_server *srv;
	struct loop *l;
	uint8_t rec[8192];
	int sv[2], round, i, sid, first, nrec, types[3], flags[3], ntypes;
	uint32_t fsid;
	size_t off, flen;
	ssize_t n;

	(void)state;
	assert_int_equal(loop_new(&l), 0);
	assert_int_equal(grpc_server_new(l, methods, 1, NULL, 65536, &srv),
	    0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC,
	    0, sv), 0);
	assert_int_equal(grpc_server_adopt(srv, sv[0]), 0);
	assert_int_equal(nghttp2_session_callbacks_new(&cbs), 0);
	assert_int_equal(nghttp2_session_client_new(&cl, cbs, NULL), 0);
	assert_int_equal(nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, NULL,
	    0), 0);

	for (round = 0; round < 3; round++) {
		sid = submit_call(cl, "/v2.KeyManagementService/Status");
		client_send(cl, sv[1]);
		/* Serve until the reply's trailers are read; note which
		 * record held each of the reply's frames. */
		first = -1;
		ntypes = 0;
		for (i = 0, nrec = 0; i < 200 && ntypes < 3; i++) {
			assert_int_equal(loop_once(l, 10), 0);
			grpc_server_tick(srv);
			while ((n = recv(sv[1], rec, sizeof(rec),
			    MSG_DONTWAIT)) > 0) {
				for (off = 0; off + 9 <= (size_t)n;
				    off += 9 + flen) {
					flen = (size_t)rec[off] << 16 |
					    (size_t)rec[off + 1] << 8 |
					    rec[off + 2];
					fsid = ((uint32_t)rec[off + 5] << 24 |
					    (uint32_t)rec[off + 6] << 16 |
					    (uint32_t)rec[off + 7] << 8 |
					    rec[off + 8]) & 0x7fffffffu;
					if (fsid != (uint32_t)sid)
						continue;
					if (first == -1)
						first = nrec;
					assert_int_equal(first, nrec);
					assert_true(ntypes < 3);
					types[ntypes] = rec[off + 3];
					flags[ntypes++] = rec[off + 4];
				}
				nrec++;
				assert_int_equal(nghttp2_session_mem_recv(cl,
				    rec, (size_t)n), n);
			}
			assert_true(n == -1 && (errno == EAGAIN ||
			    errno == EWOULDBLOCK));
			client_send(cl, sv[1]);	/* acks */
		}
		assert_int_equal(ntypes, 3);
		assert_int_equal(types[0], NGHTTP2_HEADERS);
		assert_int_equal(types[1], NGHTTP2_DATA);
		assert_int_equal(types[2], NGHTTP2_HEADERS);	/* trailers */
		assert_true(flags[2] & NGHTTP2_FLAG_END_STREAM);
	}
	nghttp2_session_del(cl);
	nghttp2_session_callbacks_del(cbs);
	close(sv[1]);
	grpc_server_free(srv);
	loop_free(l);
}

/* ---- a reply does not wait for the rest of the read ---- */

static int peek_fd = -1;
static int others, others_before_reply = -1;

/* Notes how many "other" calls ran before the client could see bytes. */
static void
other_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	uint8_t b;

	(void)ctx;
	(void)msg;
	(void)len;
	if (others_before_reply < 0 && recv(peek_fd, &b, 1,
	    MSG_PEEK | MSG_DONTWAIT) == 1)
		others_before_reply = others;
	others++;
	status_handler(ctx, call, msg, len);
}

/*
 * One read holding a Status request and then 100 other requests: the
 * Status reply is sent before the server has gone through the 100 (it is
 * on the wire after at most one input slice more).
 */
static void
test_reply_before_rest_of_read(void **state)
{
	static const struct grpc_method methods[] = {
		{ "/v2.KeyManagementService/Status", status_handler },
		{ "/v2.KeyManagementService/Other", other_handler },
	};
	nghttp2_session_callbacks *cbs;
	nghttp2_session *cl;
	struct grpc_server *srv;
	struct loop *l;
	uint8_t rec[16384];
	ssize_t n;
	int sv[2], i;

	(void)state;
	assert_int_equal(loop_new(&l), 0);
	assert_int_equal(grpc_server_new(l, methods, 2, NULL, 65536, &srv),
	    0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
	    sv), 0);
	assert_int_equal(grpc_server_adopt(srv, sv[0]), 0);
	assert_int_equal(nghttp2_session_callbacks_new(&cbs), 0);
	assert_int_equal(nghttp2_session_client_new(&cl, cbs, NULL), 0);
	assert_int_equal(nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, NULL,
	    0), 0);
	/* Settle the connection first: settings both ways, acks. */
	client_send(cl, sv[1]);
	for (i = 0; i < 5; i++) {
		assert_int_equal(loop_once(l, 10), 0);
		grpc_server_tick(srv);
	}
	while ((n = recv(sv[1], rec, sizeof(rec), MSG_DONTWAIT)) > 0)
		assert_int_equal(nghttp2_session_mem_recv(cl, rec, (size_t)n),
		    n);
	client_send(cl, sv[1]);	/* acks the server's settings */
	for (i = 0; i < 5; i++) {
		assert_int_equal(loop_once(l, 10), 0);
		grpc_server_tick(srv);
	}
	while (recv(sv[1], rec, sizeof(rec), MSG_DONTWAIT) > 0)
		;
	/* Status first, then 100 others, in one write. */
	(void)submit_call(cl, "/v2.KeyManagementService/Status");
	for (i = 0; i < 100; i++)
		(void)submit_call(cl, "/v2.KeyManagementService/Other");
	peek_fd = sv[1];
	others = 0;
	others_before_reply = -1;
	client_send(cl, sv[1]);
	for (i = 0; i < 50 && others < 100; i++) {
		assert_int_equal(loop_once(l, 10), 0);
		grpc_server_tick(srv);
	}
	assert_int_equal(others, 100);
	assert_true(others_before_reply >= 0);
	assert_true(others_before_reply < 100);
	nghttp2_session_del(cl);
	nghttp2_session_callbacks_del(cbs);
	close(sv[1]);
	grpc_server_free(srv);
	loop_free(l);
}

/* ---- the done callback: once per call, with the peer ---- */

static int done_calls, done_code, done_codes, done_tag_seen;
static struct grpc_peer done_peer;
static int tag_value = 42;

static void
on_done(void *ctx, struct grpc_call *call, enum grpc_code code,
    const char *message)
{
	(void)ctx;
	(void)message;
	done_calls++;
	done_code = (int)code;
	done_codes |= 1 << code;
	done_tag_seen = grpc_call_tag(call) == &tag_value;
	done_peer = *grpc_call_peer(call);
}

static void
tagging_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	grpc_call_set_tag(call, &tag_value);
	assert_non_null(grpc_call_method(call));
	status_handler(ctx, call, msg, len);
}

static void
fail_handler(void *ctx, struct grpc_call *call, const uint8_t *msg,
    size_t len)
{
	(void)ctx;
	(void)msg;
	(void)len;
	grpc_call_fail(call, GRPC_NOT_FOUND, "no such key");
}

/* Runs the server until the client has n done calls or 50 turns. */
static void
serve_until(struct loop *l, struct grpc_server *srv, int n)
{
	int i;

	for (i = 0; i < 50 && done_calls < n; i++) {
		assert_int_equal(loop_once(l, 10), 0);
		grpc_server_tick(srv);
	}
}

static void
test_done_once_per_call(void **state)
{
	static const struct grpc_method methods[] = {
		{ "/v2.KeyManagementService/Status", tagging_handler },
		{ "/v2.KeyManagementService/Fail", fail_handler },
	};
	nghttp2_session_callbacks *cbs;
	nghttp2_session *cl;
	struct grpc_server *srv;
	struct loop *l;
	int sv[2];

	(void)state;
	assert_int_equal(loop_new(&l), 0);
	assert_int_equal(grpc_server_new(l, methods, 2, NULL, 65536, &srv),
	    0);
	grpc_server_on_done(srv, on_done);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
	    sv), 0);
	assert_int_equal(grpc_server_adopt(srv, sv[0]), 0);
	assert_int_equal(nghttp2_session_callbacks_new(&cbs), 0);
	assert_int_equal(nghttp2_session_client_new(&cl, cbs, NULL), 0);
	assert_int_equal(nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, NULL,
	    0), 0);
	done_calls = done_codes = 0;
	(void)submit_call(cl, "/v2.KeyManagementService/Status");
	client_send(cl, sv[1]);
	serve_until(l, srv, 1);
	assert_int_equal(done_calls, 1);
	assert_int_equal(done_code, GRPC_OK);
	assert_true(done_tag_seen);
	/* SO_PEERCRED of the socketpair: this process. */
	assert_true(done_peer.known);
	assert_int_equal(done_peer.pid, getpid());
	assert_int_equal(done_peer.uid, getuid());
	assert_int_equal(done_peer.gid, getgid());
	(void)submit_call(cl, "/v2.KeyManagementService/Fail");
	(void)submit_call(cl, "/v2.KeyManagementService/Unknown");
	client_send(cl, sv[1]);
	serve_until(l, srv, 3);
	assert_int_equal(done_calls, 3);
	/* The unknown path is refused at its headers, before the other. */
	assert_int_equal(done_codes, 1 << GRPC_OK | 1 << GRPC_NOT_FOUND |
	    1 << GRPC_UNIMPLEMENTED);
	assert_false(done_tag_seen);
	nghttp2_session_del(cl);
	nghttp2_session_callbacks_del(cbs);
	close(sv[1]);
	grpc_server_free(srv);
	loop_free(l);
	assert_int_equal(done_calls, 3);	/* no second end at free */
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
		cmocka_unit_test(test_reply_is_one_send),
		cmocka_unit_test(test_reply_before_rest_of_read),
		cmocka_unit_test(test_done_once_per_call),
	};

	return cmocka_run_group_tests_name("grpc", tests, NULL, NULL);
}
