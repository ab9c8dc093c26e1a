/*
 * grpc_int: what the two halves of the gRPC server share, internal to
 * plugin/grpc.c (connections, the server) and plugin/grpc_call.c (calls,
 * their headers and bodies, replies, the nghttp2 callbacks). Loop thread
 * only, like everything of the server.
 */
#ifndef P11KMS_GRPC_INT_H
#define P11KMS_GRPC_INT_H

#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>

#include "plugin/grpc.h"
#include "plugin/h2scan.h"
#include "plugin/log.h"
#include "plugin/loop.h"

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
#define ACCEPTS_PER_WAKEUP	256	/* a burst is drained quickly */
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
	size_t max_conns;		/* 0: no limit */
	struct log_ratelim refuse_rl;	/* "connection refused" lines */
	size_t buffered;		/* bytes of request buffers, all calls */
	nghttp2_session_callbacks *cbs;
	nghttp2_option *opt;
};

/* grpc.c: connections. */
void conn_close(struct conn *c);
int out_append(struct conn *c, const uint8_t *data, size_t len);

/* grpc_call.c: calls and the nghttp2 callbacks. */
void conn_mark_dirty(struct conn *c);
void call_free(struct grpc_call *call);
/* Registers the callbacks of a server's sessions on cbs. */
void call_set_callbacks(nghttp2_session_callbacks *cbs);

#endif
