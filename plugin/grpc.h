/*
 * grpc: gRPC over HTTP/2 cleartext (prior knowledge) on a unix socket, one
 * nghttp2 server session per connection, fed from the loop. Unary calls only.
 *
 * A call is one HTTP/2 stream. The server checks method, path, content-type
 * and framing, buffers the request message up to max_request bytes, then
 * calls the method's handler on the loop thread. The handler, now or later,
 * ends the call exactly once with grpc_call_reply() or grpc_call_fail().
 * Until then the call may vanish (client reset, disconnect, deadline): the
 * server first runs the cancel callback the handler registered, and the
 * handler must then forget the call pointer.
 */
#ifndef P11KMS_GRPC_H
#define P11KMS_GRPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <protobuf-c/protobuf-c.h>

#include "plugin/loop.h"

enum grpc_code {
	GRPC_OK = 0, GRPC_CANCELLED = 1, GRPC_UNKNOWN = 2,
	GRPC_INVALID_ARGUMENT = 3, GRPC_DEADLINE_EXCEEDED = 4,
	GRPC_NOT_FOUND = 5, GRPC_ALREADY_EXISTS = 6,
	GRPC_PERMISSION_DENIED = 7, GRPC_RESOURCE_EXHAUSTED = 8,
	GRPC_FAILED_PRECONDITION = 9, GRPC_ABORTED = 10,
	GRPC_OUT_OF_RANGE = 11, GRPC_UNIMPLEMENTED = 12, GRPC_INTERNAL = 13,
	GRPC_UNAVAILABLE = 14, GRPC_DATA_LOSS = 15, GRPC_UNAUTHENTICATED = 16,
};

#define GRPC_FRAME_HDR	5	/* compressed flag + 32-bit length */

struct grpc_server;
struct grpc_call;

/* msg/len: the request message without the 5-byte prefix; borrowed for the
 * duration of the handler call only (wiped afterwards). */
typedef void (*grpc_handler)(void *ctx, struct grpc_call *call,
    const uint8_t *msg, size_t len);
typedef void (*grpc_cancel_cb)(void *arg);

struct grpc_method {
	const char *path;	/* "/v2.KeyManagementService/Encrypt" */
	grpc_handler handler;
};

/* The process at the other end of a connection (SO_PEERCRED at accept). */
struct grpc_peer {
	int known;		/* 0: the kernel did not say (not AF_UNIX…) */
	uid_t uid;
	gid_t gid;
	pid_t pid;
};

/*
 * Runs once for every call that ends, on the loop thread: answered
 * (code GRPC_OK), refused by the server or the handler, or abandoned by
 * the client while its handler had it (GRPC_CANCELLED). message: the
 * grpc-message sent ("" for none). The call's tag is forgotten afterwards:
 * the callback frees what it points to.
 */
typedef void (*grpc_done_cb)(void *ctx, struct grpc_call *call,
    enum grpc_code code, const char *message);

int grpc_server_new(struct loop *l, const struct grpc_method *methods,
    size_t nmethods, void *ctx, size_t max_request,
    struct grpc_server **out);
/*
 * At most n connections at once (n >= 1). A connection beyond it closes the
 * oldest connection with no call open; with none idle the new one is
 * refused. Takes effect for the next accept.
 */
void grpc_server_set_max_conns(struct grpc_server *s, size_t n);

/*
 * Creates and listens on the unix socket (path, or "@name" for an abstract
 * one) with mode 0600 set by umask, so there is no window with wider
 * permissions. A path whose socket still accepts connections is refused
 * (another server is live); a stale socket is replaced; any other kind of
 * file is refused. Returns 0, or -1 with a message in err.
 */
int grpc_server_listen(struct grpc_server *s, const char *path, char *err,
    size_t errlen);
/*
 * Serves an already-connected stream socket as if it had been accepted
 * (fuzzing, socket activation). Takes ownership of fd, also on failure,
 * and makes it non-blocking. Returns 0, or -1 with fd closed.
 */
int grpc_server_adopt(struct grpc_server *s, int fd);
/* Sets the done callback (ctx as given to grpc_server_new); NULL: none. */
void grpc_server_on_done(struct grpc_server *s, grpc_done_cb cb);
/* Stops accepting, unlinks the socket, sends GOAWAY on every connection. */
void grpc_server_shutdown(struct grpc_server *s);
/* Calls accepted and not yet finished. */
size_t grpc_server_active_calls(const struct grpc_server *s);
size_t grpc_server_connections(const struct grpc_server *s);
/* Flushes pending output and frees closed connections. Call after every
 * loop_once(). */
void grpc_server_tick(struct grpc_server *s);
/* Closes every connection (cancelling their calls) and frees s. */
void grpc_server_free(struct grpc_server *s);

/* Deadline from grpc-timeout on the loop_now() clock; 0 when none. */
uint64_t grpc_call_deadline(const struct grpc_call *call);
void grpc_call_on_cancel(struct grpc_call *call, grpc_cancel_cb cb,
    void *arg);
/* One pointer the handler keeps with the call, for the done callback. */
void grpc_call_set_tag(struct grpc_call *call, void *tag);
void *grpc_call_tag(const struct grpc_call *call);
/* Its entry in the server's method table; NULL for an unknown path. */
const struct grpc_method *grpc_call_method(const struct grpc_call *call);
/* Who sent it; never NULL. */
const struct grpc_peer *grpc_call_peer(const struct grpc_call *call);
/* Nanoseconds since the request was complete and dispatched; 0 before. */
uint64_t grpc_call_elapsed(const struct grpc_call *call);
/* Packs msg as the response and ends the call with grpc-status 0. The
 * packed bytes are wiped when sent. */
void grpc_call_reply(struct grpc_call *call, const ProtobufCMessage *msg);
/* Ends the call with code and a message (printf-style, percent-encoded on
 * the wire). */
void grpc_call_fail(struct grpc_call *call, enum grpc_code code,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "INVALID_ARGUMENT" for GRPC_INVALID_ARGUMENT. */
const char *grpc_code_name(enum grpc_code code);

/* Helpers exposed for unit tests and fuzzing. */
/*
 * Parses a grpc-timeout value ("100m", "3S"); -1 when malformed. A value
 * over GRPC_TIMEOUT_MAX_NS (100 days) reads as that.
 */
#define GRPC_TIMEOUT_MAX_NS	(100ull * 86400ull * 1000000000ull)
int grpc_parse_timeout(const char *v, size_t len, uint64_t *ns);
/* Percent-encodes s for grpc-message into out (cap bytes, NUL-terminated,
 * truncated on a character boundary). Returns the length written. */
size_t grpc_percent_encode(const char *s, char *out, size_t cap);
/*
 * Checks a whole request body (prefix + message). Returns GRPC_OK and the
 * message bounds, or a code and a reason: compressed flag →
 * INVALID_ARGUMENT, length not matching the body → INVALID_ARGUMENT.
 */
enum grpc_code grpc_frame_check(const uint8_t *body, size_t len,
    const uint8_t **msg, size_t *msglen, const char **why);

#endif
