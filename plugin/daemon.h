/*
 * daemon: the state the daemon's wiring (main.c) keeps, and what it tells
 * the world about itself (daemon_report.c): the ops endpoint's readiness,
 * /status body and gauges, the start-up log lines, the pid file and the
 * systemd notifications once serving. Loop thread only.
 */
#ifndef P11KMS_DAEMON_H
#define P11KMS_DAEMON_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "plugin/config.h"
#include "plugin/gen.h"
#include "plugin/loop.h"

struct kms;
struct grpc_server;
struct ops;
struct audit;

/* What a running server cannot change; a reload keeps these. */
struct fixed {
	char *socket_path;
	char *kms_version;
	char *ops_listen;		/* NULL: none */
	size_t max_request;
	unsigned probe_interval_s;
};

struct daemon {
	struct loop *loop;
	struct fixed fixed;
	unsigned grace_s;
	struct gen *cur;		/* serving; NULL while recovering */
	struct gen *retired;		/* draining, freed when empty */
	struct kms *kms;
	struct grpc_server *srv;
	struct gen_loader loader;
	struct loop_watch sig_watch;
	struct loop_timer recover_timer;
	unsigned recover_s;		/* next backoff */
	int recovering;			/* the running load is a recovery */
	int reload_again;		/* SIGHUP arrived during a load */
	int pin_fault;			/* PIN refused: no logins until SIGHUP */
	int stopping;
	struct ops *ops;		/* --ops-listen, or NULL */
	struct audit *audit;		/* --audit-log, or NULL */
	char *audit_path;		/* fixed: a reload keeps it */
	struct loop_timer ops_timer;	/* 1 s: heartbeat, health, gauges */
	uint64_t ops_period_ns;		/* 1 s, or less for the watchdog */
	char *pid_file;			/* written once serving; NULL: none */
	int serving;			/* READY=1 sent */
	/* Reloads asked for (SIGHUP), the request the running or last load
	 * answers, and that load's outcome: for `p11kms reload`. */
	unsigned long reload_asked, reload_loading, reload_done;
	int reload_is_request;		/* the running load answers a SIGHUP */
	int reload_ok;			/* -1: none finished yet */
	time_t reload_time;
	char reload_why[512];
};

/*
 * Publishes what the ops thread serves: a heartbeat (the loop turns), the
 * health verdict (readiness, per-token metrics) and the gauges, and the
 * /status body.
 */
void daemon_publish(struct daemon *d);
/* Only the /status body (names are a contract with plugin/ctl.c). */
void daemon_publish_status(struct daemon *d);
/* The start-up configuration, without secrets (no PIN, only its file). */
void daemon_log_config(const struct config *c, const struct gen *g);
/* One line per key (and per replica token). */
void daemon_log_keys(const struct gen *g);
/*
 * Serving: systemd hears READY=1 (Type=notify), the pid file appears, and
 * the ops loop ticks fast enough for the watchdog.
 */
void daemon_announce_ready(struct daemon *d, const struct gen *g);

#endif
