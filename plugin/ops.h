/*
 * ops: the operations HTTP endpoint (--ops-listen). GET or HEAD of
 *
 *   /livez    200 "ok" while the event loop turns (ops_heartbeat() seen in
 *             the last stale_s seconds); else 503 saying for how long not.
 *   /readyz   200 "ok" while live and the daemon last published ready
 *             (keys loaded, the token answered recently); else 503.
 *   /healthz  as /readyz, with the reason in the body when failing.
 *   /metrics  Prometheus text format 0.0.4 (plugin/metrics.h).
 *   /status   what the loop last published with ops_set_status: one
 *             "name value" line each (healthz, key_id, workers, reload
 *             outcome...), read by `p11kms status` and `p11kms reload`.
 *
 * anything else is 404, any other method 405.
 *
 * libmicrohttpd serves these on its own thread. That thread never calls
 * into the loop, the kms or the pool: it reads only what the loop thread
 * publishes here (ops_heartbeat, ops_set_ready: an atomic timestamp and a
 * small snapshot under a short mutex) and the metrics registry. A stuck
 * loop therefore shows as a failing /livez instead of a hung probe, and a
 * flood of probes costs the KMS loop nothing.
 */
#ifndef P11KMS_OPS_H
#define P11KMS_OPS_H

#include <stddef.h>

#define OPS_STALE_S_DEFAULT	10	/* /livez grace without a heartbeat */
#define OPS_WHY_MAX		256	/* reason kept by ops_set_ready */
#define OPS_STATUS_MAX		2048	/* /status body kept by ops_set_status */

struct ops;

struct ops_config {
	/*
	 * Where to listen:
	 *   HOST:PORT      HOST an IPv4 literal or "localhost" (127.0.0.1)
	 *   [IPV6]:PORT    IPv6 literal in brackets, e.g. [::1]:8787
	 *   :PORT, PORT    127.0.0.1:PORT (never all interfaces by default)
	 *   unix:PATH      unix socket, mode 0600; unix:@NAME is abstract
	 * PORT 0 picks a free port (see ops_address()).
	 */
	const char *listen;
	unsigned stale_s;	/* 0: OPS_STALE_S_DEFAULT */
};

/*
 * Checks an --ops-listen value without binding anything. Returns 0, or -1
 * with a message naming the problem and the fix in err ("--ops-listen
 * '…': …; use …"). For the flag parser.
 */
int ops_listen_check(const char *addr, char *err, size_t errlen);

/*
 * Binds cfg->listen and starts the HTTP thread. A unix socket path on which
 * another server still answers is refused, a stale one is replaced, any
 * other file there is refused. Returns 0, or -1 with a message in err
 * (address in use, bad address, permission…). *out is set only on success.
 * Call from the main thread after signals are blocked, so the HTTP thread
 * inherits the mask.
 */
int ops_start(const struct ops_config *cfg, struct ops **out, char *err,
    size_t errlen);
/* Stops the thread (waits for it), closes the socket, unlinks a unix
 * socket path. NULL is fine. */
void ops_stop(struct ops *o);
/* Bound address: "127.0.0.1:8787", "[::1]:8787", "unix:/run/x.sock". */
const char *ops_address(const struct ops *o);

/*
 * Published by the event loop thread, read by the HTTP thread. Both are
 * safe from any thread, before ops_start and without an ops server, and
 * never block on anything but a few-instruction mutex.
 *
 * ops_heartbeat: the loop turned; call at least every second (a 1 s loop
 * timer), since an idle loop otherwise sleeps in epoll_wait.
 * ops_set_ready: ready = keys loaded and the token's last health round trip
 * is recent and good; why says what is wrong when not ready (copied,
 * truncated to OPS_WHY_MAX - 1 bytes). Until the first call: not ready,
 * "starting".
 */
void ops_heartbeat(void);
void ops_set_ready(int ready, const char *why);
/* The /status body (copied, cut to OPS_STATUS_MAX - 1 bytes). */
void ops_set_status(const char *text);

#endif
