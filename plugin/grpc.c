/*
 * grpc: the gRPC server (grpc.h). Per connection an nghttp2 server session
 * fed with mem_recv/mem_send from the loop; per stream a call whose path,
 * content-type, framing and size are checked before the method's handler
 * runs; replies and errors (trailers-only) with grpc-status; deadlines from
 * grpc-timeout on loop timers; a per-connection limiter against stream and
 * reset floods. A bad request costs its stream only.
 */
#include "plugin/grpc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <nghttp2/nghttp2.h>

#include "plugin/log.h"
#include "plugin/mem.h"
#include "plugin/unixsock.h"

#define READ_CHUNK		16384
#define READS_PER_WAKEUP	4
#define RECV_SLICE		512	/* input fed to nghttp2 at a time */
#define MAX_CONCURRENT_STREAMS	1024
#define MAX_HEADER_LIST		16384
#define OUT_GATHER		(64 * 1024)	/* output gathered per send;
					 * unsent, it stops reading */
#define GRPC_MESSAGE_MAX	512		/* grpc-message, encoded */
#define MAX_BUFFERED		(32u * 1024 * 1024)	/* all request bodies */
#define MAX_CONN_BUFFERED	(4u * 1024 * 1024)	/* one connection's */
#define REQUEST_READ_S		10	/* to send a whole request */
#define ACCEPT_PAUSE_MS		100	/* after EMFILE/ENFILE/ENOMEM */
#define RST_BURST		8192		/* RST_STREAMs at once */
#define RST_RATE		2048		/* RST_STREAMs per second */

enum call_state {
	CALL_HEADERS,	/* receiving */
	CALL_RUNNING,	/* handler has it */
	CALL_DONE,	/* response submitted */
};

struct grpc_call {
	struct conn *conn;
	int32_t id;
	enum call_state state;
	const struct grpc_method *method;
	int path_known, path_seen, post, ct_ok, ct_seen, timeout_bad;
	uint64_t deadline;
	uint64_t started;		/* loop_now() at dispatch; 0 before */
	size_t hdr_bytes;		/* header list size, RFC 9113 6.5.2 */
	struct loop_timer timer;
	uint8_t *body;			/* secret: may hold a DEK */
	size_t len, cap;
	grpc_cancel_cb cancel;
	void *cancel_arg;
	void *tag;			/* the handler's, see grpc_call_set_tag */
	uint8_t *resp;			/* framed response, secret */
	size_t resp_len, resp_off;
	struct grpc_call *prev, *next;	/* conn->calls */
};

/*
 * Splits the client's byte stream into HTTP/2 frames just far enough to
 * drop one thing nghttp2 would kill the connection for: RST_STREAM on a
 * stream the client never opened. grpc-core sends that when a call's
 * deadline expires before its HEADERS went out; RFC 9113 makes it a
 * connection error, which would fail every other call on the connection.
 */
struct h2scan {
	size_t preface_left;		/* client preface bytes still to pass */
	uint8_t hdr[9];			/* frame header being collected */
	size_t hdr_have;
	size_t payload_left;		/* of the current frame */
	int dropping;			/* current frame is discarded */
	uint32_t max_stream;		/* highest stream id with HEADERS */
};

#define H2_PREFACE_LEN	24
#define H2_HEADERS	0x1
#define H2_RST_STREAM	0x3

struct conn {
	struct grpc_server *srv;
	struct loop_watch watch;
	nghttp2_session *h2;
	struct h2scan scan;
	uint8_t *out;			/* bytes nghttp2 produced, unsent */
	size_t out_len, out_cap;
	uint32_t events;
	size_t buffered;		/* bytes of this conn's request buffers */
	int dead, dirty;
	int replied;			/* a call ended since the last flush */
	struct grpc_peer peer;		/* SO_PEERCRED, read at accept */
	struct grpc_call *calls;
	struct conn *prev, *next;	/* srv->conns */
	struct conn *dirty_next;
};

struct grpc_server {
	struct loop *loop;
	const struct grpc_method *methods;
	size_t nmethods;
	void *ctx;
	grpc_done_cb done;		/* every call's end, or NULL */
	size_t max_request;
	struct loop_watch lwatch;
	struct loop_timer accept_timer;	/* resumes accepts after EMFILE */
	char *sock_path;		/* NULL for abstract; unlinked at end */
	struct conn *conns;
	struct conn *dirty;
	size_t nconns, ncalls;
	size_t buffered;		/* bytes of request buffers, all calls */
	nghttp2_session_callbacks *cbs;
	nghttp2_option *opt;
};

static void conn_close(struct conn *c);

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
	*ns = n * mul;	/* 99999999 H fits in 64 bits */
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

static void
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

static void
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
	if (n > len)
		n = len;
	memcpy(buf, call->resp + call->resp_off, n);
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

/* ---- connections ---- */

/*
 * Copies in to out (cap >= n + 9) without the frames to drop; returns the
 * bytes written. Only frame boundaries are parsed; nghttp2 checks the rest.
 */
static size_t
h2scan_filter(struct h2scan *sc, const uint8_t *in, size_t n, uint8_t *out)
{
	size_t o = 0, k;
	uint32_t sid;

	while (n > 0) {
		if (sc->preface_left > 0 || sc->payload_left > 0) {
			k = sc->preface_left > 0 ? sc->preface_left :
			    sc->payload_left;
			if (k > n)
				k = n;
			if (!sc->dropping || sc->preface_left > 0) {
				memcpy(out + o, in, k);
				o += k;
			}
			if (sc->preface_left > 0)
				sc->preface_left -= k;
			else
				sc->payload_left -= k;
			in += k;
			n -= k;
			continue;
		}
		sc->hdr[sc->hdr_have++] = *in++;
		n--;
		if (sc->hdr_have < sizeof(sc->hdr))
			continue;
		sc->hdr_have = 0;
		sc->payload_left = (size_t)sc->hdr[0] << 16 |
		    (size_t)sc->hdr[1] << 8 | sc->hdr[2];
		sid = ((uint32_t)sc->hdr[5] << 24 | (uint32_t)sc->hdr[6] << 16 |
		    (uint32_t)sc->hdr[7] << 8 | sc->hdr[8]) & 0x7fffffffu;
		if (sc->hdr[3] == H2_HEADERS && sid > sc->max_stream)
			sc->max_stream = sid;
		sc->dropping = sc->hdr[3] == H2_RST_STREAM && sid != 0 &&
		    sid > sc->max_stream;
		if (!sc->dropping) {
			memcpy(out + o, sc->hdr, sizeof(sc->hdr));
			o += sizeof(sc->hdr);
		}
	}
	return o;
}

static int
out_append(struct conn *c, const uint8_t *data, size_t len)
{
	uint8_t *nb;
	size_t ncap;

	if (len > c->out_cap - c->out_len) {
		ncap = c->out_cap ? c->out_cap : 16384;
		while (ncap - c->out_len < len)
			ncap *= 2;
		if ((nb = realloc(c->out, ncap)) == NULL)
			return -1;
		c->out = nb;
		c->out_cap = ncap;
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	return 0;
}

static void
conn_set_events(struct conn *c, uint32_t ev)
{
	if (ev == c->events)
		return;
	c->events = ev;
	(void)loop_rewatch(c->srv->loop, &c->watch, ev);
}

/*
 * Gathers what nghttp2 has behind what is already buffered (up to
 * OUT_GATHER), then writes it with one send: a reply's HEADERS, DATA and
 * trailers, and every reply of one loop tick, go out together instead of as
 * one send (and one peer wake-up) per frame. Sent bytes are wiped: they may
 * hold Decrypt plaintexts.
 */
static void
conn_flush(struct conn *c)
{
	const uint8_t *data;
	ssize_t n, w;
	size_t off;

	if (c->dead)
		return;
	c->replied = 0;
	do {
		while (c->out_len < OUT_GATHER) {
			n = nghttp2_session_mem_send(c->h2, &data);
			if (n < 0) {
				log_debug("connection: nghttp2 send: %s",
				    nghttp2_strerror((int)n));
				conn_close(c);
				return;
			}
			if (n == 0)
				break;
			if (out_append(c, data, (size_t)n) != 0) {
				conn_close(c);
				return;
			}
		}
		if (c->out_len == 0)
			break;
		w = send(c->watch.fd, c->out, c->out_len, MSG_NOSIGNAL);
		if (w < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(c);
			return;
		}
		off = w > 0 ? (size_t)w : 0;
		memmove(c->out, c->out + off, c->out_len - off);
		mem_wipe(c->out + c->out_len - off, off);
		c->out_len -= off;
		/* All sent: nghttp2 may have more than one gather. */
	} while (c->out_len == 0 && off > 0);
	if (c->dead)
		return;
	if (c->out_len == 0 && !nghttp2_session_want_read(c->h2) &&
	    !nghttp2_session_want_write(c->h2)) {
		conn_close(c);
		return;
	}
	/* Stop reading while the peer does not read what we send. */
	conn_set_events(c, (c->out_len > 0 ? EPOLLOUT : 0) |
	    (c->out_len < OUT_GATHER ? EPOLLIN : 0));
}

/*
 * Feeds nghttp2 in slices, and sends at once what a slice answered (Status
 * is answered as it is read; so are refusals): a reply does not wait for
 * the rest of a 16 KiB read, which can hold a hundred other requests.
 * Returns -1 when the connection was closed.
 */
static int
conn_recv(struct conn *c, const uint8_t *in, size_t len)
{
	ssize_t rv;
	size_t off, m;

	for (off = 0; off < len; off += m) {
		m = len - off < RECV_SLICE ? len - off : RECV_SLICE;
		rv = nghttp2_session_mem_recv(c->h2, in + off, m);
		if (rv < 0) {
			/* Bad preface, protocol error: nghttp2 has queued a
			 * GOAWAY; send it, then close. */
			log_warn("closing a connection: %s",
			    nghttp2_strerror((int)rv));
			(void)nghttp2_session_terminate_session(c->h2,
			    NGHTTP2_PROTOCOL_ERROR);
			conn_flush(c);
			conn_close(c);
			return -1;
		}
		if (c->replied && off + m < len) {
			conn_flush(c);
			if (c->dead)
				return -1;
		}
	}
	return 0;
}

static void
conn_io(void *arg, uint32_t events)
{
	struct conn *c = arg;
	uint8_t buf[READ_CHUNK], fbuf[READ_CHUNK + 9];
	ssize_t n;
	size_t k;
	int i;

	if (c->dead)
		return;
	if (events & EPOLLIN) {
		for (i = 0; i < READS_PER_WAKEUP; i++) {
			n = recv(c->watch.fd, buf, sizeof(buf), 0);
			if (n == 0) {
				conn_close(c);
				return;
			}
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				conn_close(c);
				return;
			}
			k = h2scan_filter(&c->scan, buf, (size_t)n, fbuf);
			if (conn_recv(c, fbuf, k) != 0)
				return;
			if ((size_t)n < sizeof(buf))
				break;
		}
	} else if (events & (EPOLLHUP | EPOLLERR)) {
		conn_close(c);
		return;
	}
	conn_flush(c);
}

static void
conn_close(struct conn *c)
{
	if (c->dead)
		return;
	c->dead = 1;
	loop_unwatch(c->srv->loop, &c->watch);
	/* Freed in grpc_server_tick, after the current batch of events. */
}

static void
conn_free(struct conn *c)
{
	struct grpc_server *s = c->srv;
	struct grpc_call *call;

	c->dead = 1;
	nghttp2_session_del(c->h2);
	while ((call = c->calls) != NULL)
		call_free(call);
	close(c->watch.fd);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	s->nconns--;
	if (c->out != NULL)
		mem_wipe(c->out, c->out_cap);
	free(c->out);
	free(c);
}

/* The peer's credentials as the kernel saw them at connect. */
static void
peer_read(int fd, struct grpc_peer *p)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);

	memset(p, 0, sizeof(*p));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0 &&
	    len == sizeof(uc) && uc.pid != 0) {
		p->known = 1;
		p->uid = uc.uid;
		p->gid = uc.gid;
		p->pid = uc.pid;
	}
}

/* Takes ownership of fd: on failure it is closed. Returns 0 or -1. */
static int
conn_add(struct grpc_server *s, int fd)
{
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
		    MAX_CONCURRENT_STREAMS },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST },
	};
	struct conn *c;

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return -1;
	}
	c->srv = s;
	c->scan.preface_left = H2_PREFACE_LEN;
	peer_read(fd, &c->peer);
	c->watch.fd = fd;
	c->watch.cb = conn_io;
	c->watch.arg = c;
	if (nghttp2_session_server_new2(&c->h2, s->cbs, c, s->opt) != 0) {
		close(fd);
		free(c);
		return -1;
	}
	c->events = EPOLLIN;
	if (loop_watch(s->loop, &c->watch, EPOLLIN) != 0) {
		nghttp2_session_del(c->h2);
		close(fd);
		free(c);
		return -1;
	}
	c->next = s->conns;
	if (s->conns != NULL)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	(void)nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv,
	    sizeof(iv) / sizeof(iv[0]));
	conn_flush(c);
	return 0;
}

static void
on_accept(void *arg, uint32_t events)
{
	struct grpc_server *s = arg;
	int fd, i;

	(void)events;
	for (i = 0; i < 16; i++) {
		fd = accept4(s->lwatch.fd, NULL, NULL,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EAGAIN || errno == EINTR ||
			    errno == ECONNABORTED)
				return;
			/*
			 * Out of fds or memory: the socket stays readable, so
			 * stop watching it for a while instead of spinning;
			 * clients wait in the backlog meanwhile.
			 */
			log_warn("accept: %s (%zu connections open); pausing "
			    "accepts for %d ms", strerror(errno), s->nconns,
			    ACCEPT_PAUSE_MS);
			loop_unwatch(s->loop, &s->lwatch);
			(void)loop_timer_start(s->loop, &s->accept_timer,
			    loop_now() + ACCEPT_PAUSE_MS * 1000000ull);
			return;
		}
		(void)conn_add(s, fd);
	}
}

static void
accept_resume(void *arg)
{
	struct grpc_server *s = arg;

	if (s->lwatch.fd != -1)
		(void)loop_watch(s->loop, &s->lwatch, EPOLLIN);
}

int
grpc_server_adopt(struct grpc_server *s, int fd)
{
	int fl;

	if ((fl = fcntl(fd, F_GETFL)) == -1 ||
	    fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
		close(fd);
		return -1;
	}
	return conn_add(s, fd);
}

/* ---- server ---- */

int
grpc_server_new(struct loop *l, const struct grpc_method *methods,
    size_t nmethods, void *ctx, size_t max_request,
    struct grpc_server **out)
{
	struct grpc_server *s;

	*out = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return -1;
	s->loop = l;
	s->methods = methods;
	s->nmethods = nmethods;
	s->ctx = ctx;
	s->max_request = max_request;
	s->lwatch.fd = -1;
	s->accept_timer.cb = accept_resume;
	s->accept_timer.arg = s;
	if (nghttp2_session_callbacks_new(&s->cbs) != 0 ||
	    nghttp2_option_new(&s->opt) != 0) {
		grpc_server_free(s);
		return -1;
	}
	nghttp2_session_callbacks_set_on_begin_headers_callback(s->cbs,
	    on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(s->cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s->cbs,
	    on_data_chunk);
	nghttp2_session_callbacks_set_on_frame_recv_callback(s->cbs,
	    on_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(s->cbs,
	    on_stream_close);
	nghttp2_option_set_max_settings(s->opt, 32);
	/*
	 * Rapid-reset protection (CVE-2023-44487) stays on, but with room for
	 * a client whose deadlines expire in bulk: every expired call is one
	 * RST_STREAM from grpc-go or grpc-core, and nghttp2's default (a burst
	 * of 1000, 33/s) would drop the apiserver's connection during a slow
	 * token. Reset streams cost no token work: queued jobs are skipped.
	 */
	nghttp2_option_set_stream_reset_rate_limit(s->opt, RST_BURST,
	    RST_RATE);
	*out = s;
	return 0;
}

int
grpc_server_listen(struct grpc_server *s, const char *path, char *err,
    size_t errlen)
{
	int fd;

	if ((fd = unixsock_listen(path, "--socket", 128, err, errlen)) == -1)
		return -1;
	if (path[0] != '@' && (s->sock_path = strdup(path)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	s->lwatch.fd = fd;
	s->lwatch.cb = on_accept;
	s->lwatch.arg = s;
	if (loop_watch(s->loop, &s->lwatch, EPOLLIN) != 0) {
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		s->lwatch.fd = -1;
		goto fail;
	}
	return 0;

 fail:
	close(fd);
	if (path[0] != '@')
		(void)unlink(path);
	free(s->sock_path);
	s->sock_path = NULL;
	return -1;
}

void
grpc_server_shutdown(struct grpc_server *s)
{
	struct conn *c;

	loop_timer_stop(s->loop, &s->accept_timer);
	if (s->lwatch.fd != -1) {
		loop_unwatch(s->loop, &s->lwatch);
		close(s->lwatch.fd);
		s->lwatch.fd = -1;
	}
	if (s->sock_path != NULL) {
		(void)unlink(s->sock_path);
		free(s->sock_path);
		s->sock_path = NULL;
	}
	for (c = s->conns; c != NULL; c = c->next) {
		if (c->dead)
			continue;
		/* Graceful: streams already open may finish. */
		(void)nghttp2_submit_shutdown_notice(c->h2);
		(void)nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
		    nghttp2_session_get_last_proc_stream_id(c->h2),
		    NGHTTP2_NO_ERROR, NULL, 0);
		conn_mark_dirty(c);
	}
}

size_t
grpc_server_active_calls(const struct grpc_server *s)
{
	return s->ncalls;
}

size_t
grpc_server_connections(const struct grpc_server *s)
{
	return s->nconns;
}

void
grpc_server_tick(struct grpc_server *s)
{
	struct conn *c, *next;

	while ((c = s->dirty) != NULL) {
		s->dirty = c->dirty_next;
		c->dirty = 0;
		conn_flush(c);
	}
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (c->dead)
			conn_free(c);
	}
}

void
grpc_server_free(struct grpc_server *s)
{
	if (s == NULL)
		return;
	grpc_server_shutdown(s);
	s->dirty = NULL;
	while (s->conns != NULL) {
		if (!s->conns->dead)
			loop_unwatch(s->loop, &s->conns->watch);
		conn_free(s->conns);
	}
	if (s->cbs != NULL)
		nghttp2_session_callbacks_del(s->cbs);
	if (s->opt != NULL)
		nghttp2_option_del(s->opt);
	free(s);
}
