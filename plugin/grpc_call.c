/*
 * grpc_call: one gRPC call on an HTTP/2 stream: its headers (path,
 * content-type, grpc-timeout) and body as nghttp2 hands them over, the
 * handler's dispatch, the reply (HEADERS, DATA without a copy into
 * nghttp2, trailers) or a failure status, deadlines and cancellation, and
 * the one place a call ends. The connections and the server are grpc.c's;
 * what both share is in grpc_int.h.
 */
#include "plugin/grpc_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/mem.h"


/* The one place a call ends, answered or not: tells the server's owner. */
static void
call_complete(struct grpc_call *call, enum grpc_code code, const char *text)
{
	struct grpc_server *s = call->conn->srv;

	if (s->done != NULL)
		s->done(s->ctx, call, code, text != NULL ? text : "");
	call->tag = NULL;
}

/* ---- small parsers (also unit-tested) ---- */

const char *
grpc_code_name(enum grpc_code code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
		"DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
		"PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
		"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
		"UNAUTHENTICATED",
	};

	if ((unsigned)code < sizeof(names) / sizeof(names[0]))
		return names[code];
	return "UNKNOWN";
}

int
grpc_parse_timeout(const char *v, size_t len, uint64_t *ns)
{
	uint64_t n = 0, mul;
	size_t i;

	/* TimeoutValue is 1 to 8 ASCII digits, then one unit letter. */
	if (len < 2 || len > 9)
		return -1;
	for (i = 0; i < len - 1; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -1;
		n = n * 10 + (uint64_t)(v[i] - '0');
	}
	switch (v[len - 1]) {
	case 'H': mul = 3600ull * 1000000000ull; break;
	case 'M': mul = 60ull * 1000000000ull; break;
	case 'S': mul = 1000000000ull; break;
	case 'm': mul = 1000000ull; break;
	case 'u': mul = 1000ull; break;
	case 'n': mul = 1ull; break;
	default: return -1;
	}
	/*
	 * Capped before multiplying: 99999999 H is 3.6e20 ns, past 64 bits
	 * (it used to wrap into a short deadline), and a deadline past the
	 * cap means no more than "not soon" to a daemon.
	 */
	*ns = n > GRPC_TIMEOUT_MAX_NS / mul ? GRPC_TIMEOUT_MAX_NS : n * mul;
	return 0;
}

size_t
grpc_percent_encode(const char *s, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	unsigned char ch;
	size_t o = 0;

	if (cap == 0)
		return 0;
	for (; *s != '\0'; s++) {
		ch = (unsigned char)*s;
		if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
			if (cap - o < 2)
				break;
			out[o++] = (char)ch;
		} else {
			if (cap - o < 4)
				break;
			out[o++] = '%';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		}
	}
	out[o] = '\0';
	return o;
}

enum grpc_code
grpc_frame_check(const uint8_t *body, size_t len, const uint8_t **msg,
    size_t *msglen, const char **why)
{
	uint32_t n;

	if (len < GRPC_FRAME_HDR) {
		*why = "request has no complete gRPC message prefix";
		return GRPC_INVALID_ARGUMENT;
	}
	if (body[0] != 0) {
		*why = body[0] == 1 ?
		    "compressed messages are not accepted; send uncompressed" :
		    "bad gRPC message flags";
		return GRPC_INVALID_ARGUMENT;
	}
	n = (uint32_t)body[1] << 24 | (uint32_t)body[2] << 16 |
	    (uint32_t)body[3] << 8 | body[4];
	if (n != len - GRPC_FRAME_HDR) {
		*why = n > len - GRPC_FRAME_HDR ?
		    "gRPC message is shorter than its length prefix" :
		    "unary request carries more than one message";
		return GRPC_INVALID_ARGUMENT;
	}
	*msg = body + GRPC_FRAME_HDR;
	*msglen = n;
	return GRPC_OK;
}

/*
 * Makes s valid UTF-8 in place: a message may quote peer bytes, cut short
 * by a %.100s, and grpc-message must decode to UTF-8. Invalid or truncated
 * sequences become '?'.
 */
static void
utf8_sanitize(char *s)
{
	unsigned char *p = (unsigned char *)s;
	size_t n, i;

	while (*p != '\0') {
		if (*p < 0x80) {
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf)
			n = 1;
		else if (*p >= 0xe0 && *p <= 0xef)
			n = 2;
		else if (*p >= 0xf0 && *p <= 0xf4)
			n = 3;
		else
			n = 0;
		for (i = 1; n != 0 && i <= n; i++)
			if ((p[i] & 0xc0) != 0x80)
				n = 0;
		if (n == 0) {
			*p++ = '?';
			continue;
		}
		p += n + 1;
	}
}

/* ---- calls ---- */

void
conn_mark_dirty(struct conn *c)
{
	if (c->dirty || c->dead)
		return;
	c->dirty = 1;
	c->dirty_next = c->srv->dirty;
	c->srv->dirty = c;
}

/* Lets the handler forget the call before the server ends it. */
static void
call_cancel(struct grpc_call *call)
{
	grpc_cancel_cb cb = call->cancel;

	call->cancel = NULL;
	if (cb != NULL)
		cb(call->cancel_arg);
}

static void
call_timeout(void *arg)
{
	struct grpc_call *call = arg;

	if (call->state == CALL_DONE)
		return;
	if (call->state == CALL_HEADERS) {
		/* The client did not finish its request in time: free its
		 * share of the request budget for others. */
		if (call->deadline != 0 && loop_now() >= call->deadline)
			grpc_call_fail(call, GRPC_DEADLINE_EXCEEDED, "deadline "
			    "passed before the request was read");
		else
			grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED, "request "
			    "not completed within %d s", REQUEST_READ_S);
		return;
	}
	call_cancel(call);
	grpc_call_fail(call, GRPC_DEADLINE_EXCEEDED,
	    "deadline passed before the token answered");
}

/* Frees the request buffer and gives its bytes back to the budget. */
static void
call_drop_body(struct grpc_call *call)
{
	call->conn->srv->buffered -= call->cap;
	call->conn->buffered -= call->cap;
	mem_free_secret(call->body);
	call->body = NULL;
	call->len = call->cap = 0;
}

void
call_free(struct grpc_call *call)
{
	struct conn *c = call->conn;

	if (call->state == CALL_RUNNING) {
		call_cancel(call);
		/* The client reset the stream or went away: the handler had
		 * the call, so it is accounted for like an answered one. */
		call_complete(call, GRPC_CANCELLED, "the client cancelled the "
		    "call or closed its connection before the answer");
	}
	if (call->prev != NULL)
		call->prev->next = call->next;
	else
		c->calls = call->next;
	if (call->next != NULL)
		call->next->prev = call->prev;
	if (call->state == CALL_RUNNING)
		c->srv->ncalls--;
	loop_timer_stop(c->srv->loop, &call->timer);
	call_drop_body(call);
	mem_free_secret(call->resp);
	free(call);
}

uint64_t
grpc_call_deadline(const struct grpc_call *call)
{
	return call->deadline;
}

void
grpc_call_on_cancel(struct grpc_call *call, grpc_cancel_cb cb, void *arg)
{
	call->cancel = cb;
	call->cancel_arg = arg;
}

void
grpc_call_set_tag(struct grpc_call *call, void *tag)
{
	call->tag = tag;
}

void *
grpc_call_tag(const struct grpc_call *call)
{
	return call->tag;
}

const struct grpc_method *
grpc_call_method(const struct grpc_call *call)
{
	return call->method;
}

const struct grpc_peer *
grpc_call_peer(const struct grpc_call *call)
{
	return &call->conn->peer;
}

uint64_t
grpc_call_elapsed(const struct grpc_call *call)
{
	return call->started != 0 ? loop_now() - call->started : 0;
}

void
grpc_server_on_done(struct grpc_server *s, grpc_done_cb cb)
{
	s->done = cb;
}

/* Ends the handler's ownership; the stream stays until nghttp2 closes it. */
static void
call_finish(struct grpc_call *call)
{
	if (call->state == CALL_RUNNING)
		call->conn->srv->ncalls--;
	call->state = CALL_DONE;
	call->cancel = NULL;
	loop_timer_stop(call->conn->srv->loop, &call->timer);
	call_drop_body(call);
	call->conn->replied = 1;
	conn_mark_dirty(call->conn);
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, \
	strlen(v), NGHTTP2_NV_FLAG_NONE }

static void
respond_status(struct grpc_call *call, const char *http_status,
    enum grpc_code code, const char *text)
{
	char codestr[8], enc[GRPC_MESSAGE_MAX];
	struct conn *c = call->conn;
	nghttp2_nv hdr[5] = {
		NV(":status", http_status),
		NV("content-type", "application/grpc"),
		NV("grpc-status", ""),
		NV("grpc-message", ""),
	};
	size_t n = 3;
	int rv;

	snprintf(codestr, sizeof(codestr), "%d", (int)code);
	hdr[2].value = (uint8_t *)codestr;
	hdr[2].valuelen = strlen(codestr);
	if (text != NULL && *text != '\0') {
		grpc_percent_encode(text, enc, sizeof(enc));
		hdr[3].value = (uint8_t *)enc;
		hdr[3].valuelen = strlen(enc);
		n = 4;
	}
	call_complete(call, code, text);
	/* Trailers-only response: one HEADERS frame with END_STREAM. */
	rv = nghttp2_submit_response(c->h2, call->id, hdr, n, NULL);
	if (rv != 0)
		log_debug("stream %d: cannot submit response: %s", call->id,
		    nghttp2_strerror(rv));
	call_finish(call);
}

void
grpc_call_fail(struct grpc_call *call, enum grpc_code code, const char *fmt,
    ...)
{
	char text[GRPC_MESSAGE_MAX];
	va_list ap;

	if (call->state == CALL_DONE)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	utf8_sanitize(text);
	/* The text holds no secret (key_ids and bounded, escaped peer strings
	 * at most): the done callback may log it. */
	respond_status(call, "200", code, text);
}

static ssize_t
resp_read(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *user)
{
	struct grpc_call *call = src->ptr;
	nghttp2_nv trailer[] = { NV("grpc-status", "0") };
	size_t n = call->resp_len - call->resp_off;
	int rv;

	(void)user;
	(void)buf;
	if (n > len)
		n = len;
	/*
	 * No copy into nghttp2's frame buffer, which outlives the call and
	 * would keep the last reply (a Decrypt plaintext) until the next
	 * frame overwrote it: resp_send puts the bytes into the connection's
	 * wiped output buffer itself.
	 */
	*flags |= NGHTTP2_DATA_FLAG_NO_COPY;
	call->resp_off += n;
	if (call->resp_off == call->resp_len) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		/* The trailers carry END_STREAM. */
		rv = nghttp2_submit_trailer(h2, id, trailer, 1);
		if (rv == 0)
			*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
	}
	return (ssize_t)n;
}

/*
 * The DATA frame resp_read sized: its 9-byte header, then the bytes just
 * before resp_off (nghttp2 sends one frame's read and send back to back).
 * We never pad, so there is no pad length byte or padding.
 */
static int
resp_send(nghttp2_session *h2, nghttp2_frame *frame, const uint8_t *framehd,
    size_t length, nghttp2_data_source *src, void *user)
{
	struct grpc_call *call = src->ptr;
	struct conn *c = user;

	(void)h2;
	if (frame->data.padlen != 0 || length > call->resp_off ||
	    out_append(c, framehd, 9) != 0 ||
	    out_append(c, call->resp + call->resp_off - length, length) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	return 0;
}

void
grpc_call_reply(struct grpc_call *call, const ProtobufCMessage *msg)
{
	nghttp2_nv hdr[] = {
		NV(":status", "200"),
		NV("content-type", "application/grpc"),
	};
	nghttp2_data_provider prd;
	size_t n;
	int rv;

	if (call->state == CALL_DONE)
		return;
	n = protobuf_c_message_get_packed_size(msg);
	if (n > UINT32_MAX ||
	    (call->resp = mem_alloc_secret(GRPC_FRAME_HDR + n)) == NULL) {
		grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED,
		    "out of memory building the response");
		return;
	}
	call->resp[0] = 0;
	call->resp[1] = (uint8_t)(n >> 24);
	call->resp[2] = (uint8_t)(n >> 16);
	call->resp[3] = (uint8_t)(n >> 8);
	call->resp[4] = (uint8_t)n;
	protobuf_c_message_pack(msg, call->resp + GRPC_FRAME_HDR);
	call->resp_len = GRPC_FRAME_HDR + n;
	call->resp_off = 0;
	call_complete(call, GRPC_OK, NULL);
	prd.source.ptr = call;
	prd.read_callback = resp_read;
	rv = nghttp2_submit_response(call->conn->h2, call->id, hdr,
	    sizeof(hdr) / sizeof(hdr[0]), &prd);
	if (rv != 0)
		log_debug("stream %d: cannot submit response: %s", call->id,
		    nghttp2_strerror(rv));
	call_finish(call);
}

/* The request is complete: check it and hand it to its handler. */
static void
call_dispatch(struct grpc_call *call)
{
	struct grpc_server *s = call->conn->srv;
	const uint8_t *msg;
	const char *why;
	enum grpc_code code;
	size_t msglen;

	code = grpc_frame_check(call->body != NULL ? call->body :
	    (const uint8_t *)"", call->len, &msg, &msglen, &why);
	if (code != GRPC_OK) {
		grpc_call_fail(call, code, "%s", why);
		return;
	}
	if (call->deadline != 0 && loop_now() >= call->deadline) {
		grpc_call_fail(call, GRPC_DEADLINE_EXCEEDED,
		    "deadline passed before the request was read");
		return;
	}
	call->state = CALL_RUNNING;
	call->started = loop_now();
	s->ncalls++;
	loop_timer_stop(s->loop, &call->timer);	/* the read timeout */
	if (call->deadline != 0) {
		if (loop_timer_start(s->loop, &call->timer,
		    call->deadline) != 0) {
			grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED,
			    "out of memory arming the deadline");
			return;
		}
	}
	call->method->handler(s->ctx, call, msg, msglen);
	/* The handler copied what it needs; the request may hold a DEK. */
	if (call->body != NULL)
		mem_wipe(call->body, call->len);
}

/* Headers are complete: refuse early what can never succeed. */
static int
call_check_headers(struct grpc_call *call)
{
	if (!call->post) {
		respond_status(call, "405", GRPC_UNIMPLEMENTED,
		    "gRPC requires method POST");
		return -1;
	}
	if (!call->ct_ok) {
		/* gRPC over HTTP/2: a non-gRPC content-type gets HTTP 415. */
		respond_status(call, "415", GRPC_UNKNOWN,
		    "content-type must be application/grpc");
		return -1;
	}
	if (call->method == NULL) {
		grpc_call_fail(call, GRPC_UNIMPLEMENTED,
		    call->path_seen ? "unknown method; this plugin serves "
		    "KeyManagementService" : "request has no :path");
		return -1;
	}
	if (call->timeout_bad) {
		grpc_call_fail(call, GRPC_INVALID_ARGUMENT,
		    "malformed grpc-timeout header");
		return -1;
	}
	return 0;
}

/* ---- nghttp2 callbacks ---- */

static int
on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct conn *c = user;
	struct grpc_call *call;

	if (frame->hd.type != NGHTTP2_HEADERS ||
	    frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	if ((call = calloc(1, sizeof(*call))) == NULL) {
		nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE,
		    frame->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
		return 0;
	}
	call->conn = c;
	call->id = frame->hd.stream_id;
	call->next = c->calls;
	if (c->calls != NULL)
		c->calls->prev = call;
	c->calls = call;
	nghttp2_session_set_stream_user_data(h2, call->id, call);
	/* Until dispatch the timer bounds how long the request may take to
	 * arrive (a slow or stalled client holds buffer budget); then it is
	 * the call's deadline. */
	call->timer.cb = call_timeout;
	call->timer.arg = call;
	(void)loop_timer_start(c->srv->loop, &call->timer,
	    loop_now() + REQUEST_READ_S * 1000000000ull);
	return 0;
}

static int
on_header(nghttp2_session *h2, const nghttp2_frame *frame,
    const uint8_t *name, size_t namelen, const uint8_t *value,
    size_t valuelen, uint8_t flags, void *user)
{
	struct conn *c = user;
	struct grpc_call *call;
	size_t i;

	(void)flags;
	if (frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	call = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
	if (call == NULL)
		return 0;
	/*
	 * Enforce the SETTINGS_MAX_HEADER_LIST_SIZE we advertise (nghttp2
	 * does not): a few KB of HPACK can name a dynamic-table entry
	 * thousands of times. Past the limit nghttp2 resets the stream and
	 * stops handing us its fields.
	 */
	call->hdr_bytes += namelen + valuelen + 32;
	if (call->hdr_bytes > MAX_HEADER_LIST)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
#define IS(s) (namelen == sizeof(s) - 1 && memcmp(name, s, namelen) == 0)
	if (IS(":path")) {
		call->path_seen = 1;
		for (i = 0; i < c->srv->nmethods; i++) {
			const char *p = c->srv->methods[i].path;
			if (strlen(p) == valuelen &&
			    memcmp(p, value, valuelen) == 0) {
				call->method = &c->srv->methods[i];
				break;
			}
		}
	} else if (IS(":method")) {
		call->post = valuelen == 4 && memcmp(value, "POST", 4) == 0;
	} else if (IS("content-type")) {
		/* "application/grpc", "application/grpc+proto", "…;…" */
		call->ct_ok = valuelen >= 16 &&
		    memcmp(value, "application/grpc", 16) == 0 &&
		    (valuelen == 16 || value[16] == '+' || value[16] == ';');
	} else if (IS("grpc-timeout")) {
		uint64_t ns;
		if (grpc_parse_timeout((const char *)value, valuelen,
		    &ns) != 0)
			call->timeout_bad = 1;
		else
			call->deadline = loop_now() + ns;
	}
#undef IS
	return 0;
}

static int
on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t id,
    const uint8_t *data, size_t len, void *user)
{
	struct conn *c = user;
	struct grpc_call *call;
	size_t limit = c->srv->max_request + GRPC_FRAME_HDR, ncap;
	uint8_t *nb;

	(void)flags;
	call = nghttp2_session_get_stream_user_data(h2, id);
	if (call == NULL || call->state != CALL_HEADERS)
		return 0;	/* already answered: drop the rest */
	if (len > limit - call->len) {
		grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED,
		    "request message is larger than %zu bytes",
		    c->srv->max_request);
		return 0;
	}
	if (call->len + len > call->cap) {
		ncap = call->cap ? call->cap : 256;
		while (ncap < call->len + len)
			ncap *= 2;
		if (ncap > limit)
			ncap = limit;
		/* Unfinished requests on all connections share one budget:
		 * many half-sent ones must not pin unbounded memory. */
		if (ncap - call->cap > MAX_BUFFERED - c->srv->buffered ||
		    ncap - call->cap > MAX_CONN_BUFFERED - c->buffered) {
			grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED,
			    "too many unfinished requests are buffered; "
			    "retry later");
			return 0;
		}
		if ((nb = mem_alloc_secret(ncap)) == NULL) {
			grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED,
			    "out of memory reading the request");
			return 0;
		}
		if (call->len > 0)
			memcpy(nb, call->body, call->len);
		mem_free_secret(call->body);
		c->srv->buffered += ncap - call->cap;
		c->buffered += ncap - call->cap;
		call->body = nb;
		call->cap = ncap;
	}
	memcpy(call->body + call->len, data, len);
	call->len += len;
	return 0;
}

static int
on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct grpc_call *call;

	(void)user;
	if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
		return 0;
	call = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
	if (call == NULL || call->state != CALL_HEADERS)
		return 0;
	if (frame->hd.type == NGHTTP2_HEADERS &&
	    frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
	    call_check_headers(call) != 0)
		return 0;
	if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
		call_dispatch(call);
	return 0;
}

static int
on_stream_close(nghttp2_session *h2, int32_t id, uint32_t error_code,
    void *user)
{
	struct conn *c = user;
	struct grpc_call *call;

	(void)error_code;
	if (c->dead)
		return 0;	/* conn_free frees the calls itself */
	call = nghttp2_session_get_stream_user_data(h2, id);
	if (call != NULL)
		call_free(call);
	return 0;
}


void
call_set_callbacks(nghttp2_session_callbacks *cbs)
{
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs,
	    on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs,
	    on_data_chunk);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs,
	    on_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs,
	    on_stream_close);
	nghttp2_session_callbacks_set_send_data_callback(cbs, resp_send);
}
