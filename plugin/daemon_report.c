/*
 * daemon_report: what the daemon tells its supervisor and operators
 * (daemon.h): readiness and the /status body from the health verdict,
 * gauges, the configuration and key lines at start, the pid file and
 * systemd's READY=1.
 */
#include "plugin/daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin/audit.h"
#include "plugin/grpc.h"
#include "plugin/health.h"
#include "plugin/kms.h"
#include "plugin/log.h"
#include "plugin/metrics.h"
#include "plugin/notify.h"
#include "plugin/ops.h"
#include "plugin/unixsock.h"
#include "plugin/version.h"

/* Serving, but the audit log cannot be written (--audit-failure continue). */
static void
audit_not_ready(struct daemon *d)
{
	char why[300], msg[400];

	audit_why(d->audit, why, sizeof(why));
	snprintf(msg, sizeof(msg), "audit log cannot be written: %s", why);
	ops_set_ready(0, msg);
}

/* Copies s into a /status value: one line, no control characters. */
static void
status_value(char *out, size_t cap, const char *s)
{
	size_t i;

	for (i = 0; s != NULL && s[i] != '\0' && i + 1 < cap; i++)
		out[i] = (unsigned char)s[i] < 0x20 ? ' ' : s[i];
	out[i] = '\0';
}

/*
 * The /status body: "name value" lines, the names a contract with
 * `p11kms status` and `p11kms reload` (plugin/ctl.c).
 */
void
daemon_publish_status(struct daemon *d)
{
	char b[OPS_STATUS_MAX], why[300], rwhy[300], det[400], rep[600];
	struct health *hl = d->kms != NULL ? kms_health(d->kms) : NULL;
	const char *h = d->kms != NULL ? kms_healthz(d->kms) : "starting";
	const char *tok;
	unsigned w = 0, n = 0, busy = 0;
	size_t i, o = 0;
	int k;

	if (d->cur != NULL) {
		w = gen_workers(d->cur);
		n = gen_inflight(d->cur);
		busy = gen_busy(d->cur);
	}
	status_value(why, sizeof(why), h);
	status_value(rwhy, sizeof(rwhy), d->reload_why);
	status_value(det, sizeof(det), hl != NULL ? health_detail(hl) :
	    "starting");
	if (d->cur == NULL)
		tok = "recovering";
	else if (hl == NULL || strcmp(h, "ok") != 0)
		tok = "down";
	else
		tok = health_verdict(hl) == HEALTH_V_DEGRADED ? "degraded" :
		    "up";
	/* One line per token holding the keys: "replica_1 NAME STATE". */
	rep[0] = '\0';
	for (i = 0; hl != NULL && i < health_ntokens(hl); i++) {
		k = snprintf(rep + o, sizeof(rep) - o, "replica_%zu %s %s\n",
		    i + 1, *health_token_name(hl, i) ? health_token_name(hl,
		    i) : "-", health_state_name(health_token_state(hl, i)));
		if (k < 0 || (size_t)k >= sizeof(rep) - o)
			break;
		o += (size_t)k;
	}
	snprintf(b, sizeof(b),
	    "version %s\npid %ld\nserving %d\nhealthz %s\ntoken %s\n"
	    "health %s\nreplicas %zu\n%s"
	    "key_id %s\nkeys %zu\nworkers %u\nbusy_workers %u\n"
	    "queued_jobs %u\nconnections %zu\nactive_calls %zu\n"
	    "reload_requested %lu\nreload_completed %lu\n"
	    "reload_result %s\nreload_time %lld\nreload_message %s\n",
	    P11KMS_VERSION, (long)getpid(), d->serving, why, tok, det,
	    hl != NULL ? health_ntokens(hl) : (size_t)0, rep,
	    d->cur != NULL ? gen_primary_key_id(d->cur) : "-",
	    d->cur != NULL ? gen_nkeys(d->cur) : (size_t)0, w, busy,
	    n > busy ? n - busy : 0,
	    d->srv != NULL ? grpc_server_connections(d->srv) : (size_t)0,
	    d->srv != NULL ? grpc_server_active_calls(d->srv) : (size_t)0,
	    d->reload_asked, d->reload_done,
	    d->reload_ok < 0 ? "none" : d->reload_ok ? "ok" : "failed",
	    (long long)d->reload_time, rwhy[0] != '\0' ? rwhy : "-");
	ops_set_status(b);
}

/* Readiness and the per-token metrics from the health verdict. */
static void
publish_health(struct daemon *d)
{
	struct health *hl = kms_health(d->kms);
	const char *names[HEALTH_MAX_TOKENS];
	const char *h = kms_healthz(d->kms);
	int serving = health_serving(hl) && strcmp(h, "ok") == 0;
	size_t i;

	if (serving && audit_failing(d->audit))
		audit_not_ready(d);
	else
		ops_set_ready(serving, serving ? health_detail(hl) : h);
	metrics_set_token_up(serving);
	for (i = 0; i < health_ntokens(hl); i++) {
		names[i] = health_token_name(hl, i);
		metrics_set_replica_up(i,
		    health_token_state(hl, i) == HEALTH_UP);
	}
	/* Named once a generation gave the names. */
	if (d->cur != NULL && *names[0] != '\0')
		metrics_set_tokens(names, health_ntokens(hl));
}

/*
 * Publishes what the ops thread serves: a heartbeat (the loop turns), the
 * health verdict and the gauges. Runs on the loop thread.
 */
void
daemon_publish(struct daemon *d)
{
	unsigned w, n, busy;

	ops_heartbeat();
	if (d->kms != NULL)
		publish_health(d);
	if (d->cur != NULL) {
		w = gen_workers(d->cur);
		n = gen_inflight(d->cur);
		busy = gen_busy(d->cur);
		metrics_set_pool(w, busy, n > busy ? n - busy : 0);
		metrics_set_key_id(gen_primary_key_id(d->cur));
	} else {
		metrics_set_pool(0, 0, 0);
	}
	if (d->srv != NULL)
		metrics_set_grpc((unsigned)grpc_server_connections(d->srv),
		    (unsigned)grpc_server_active_calls(d->srv));
	daemon_publish_status(d);
}

/* The start-up configuration, without secrets (no PIN, only its file). */
void
daemon_log_config(const struct config *c, const struct gen *g)
{
	char workers[16], inflight[16], probe[16], init_args[32], audit[96];

	/* Its length only: a module's string may hold what a log must not. */
	if (c->module_init_args != NULL)
		snprintf(init_args, sizeof(init_args), "(%zu bytes)",
		    strlen(c->module_init_args));
	else
		snprintf(init_args, sizeof(init_args), "(none)");
	snprintf(audit, sizeof(audit), "sync=%s failure=%s status=%s",
	    c->audit_sync, c->audit_failure, c->audit_status ? "on" : "off");
	snprintf(workers, sizeof(workers), "%u", g->workers);
	snprintf(inflight, sizeof(inflight), "%u", g->inflight);
	snprintf(probe, sizeof(probe), "%u", c->probe_interval_s);
	log_kv(LOG_INFO, "configuration", "config", c->config_file ?
	    c->config_file : "(flags only)", "socket", c->socket_path,
	    "module", c->module ? c->module : "(from URI or p11-kit)",
	    "module_init_args", init_args,
	    "pin_file", c->pin_file ? c->pin_file : "(URI pin-source)",
	    "mechanism", c->mechanism, "services", kms_services(),
	    "kms_version", c->kms_version,
	    "#workers", workers, "workers_from", g->workers_from,
	    "#max_inflight", inflight,
	    "#probe_interval_s", probe, "ops_listen", c->ops_listen ?
	    c->ops_listen : "(off)", "log_format", c->log_format,
	    "audit_log", c->audit_log ? c->audit_log : "(off)", "audit",
	    audit, "busy_poll", !c->busy_poll ? "off" :
	    gen_spin_ns(c, 1) ? "auto (on)" : "auto (off: one CPU)", NULL);
}

void
daemon_log_keys(const struct gen *g)
{
	size_t i;

	if (!gen_remote() && *keyring_module_warning(g->kr) != '\0')
		log_warn("%s", keyring_module_warning(g->kr));
	for (i = 0; i < gen_nkeys(g); i++)
		log_info("key %zu: %s key_id=%s mechanism=%s%s%s%s%s", i,
		    gen_key_desc(g, i), gen_key_id(g, i),
		    gen_key_mechanism(g, i),
		    *gen_key_seal_detail(g, i) ? " (" : "",
		    gen_key_seal_detail(g, i),
		    *gen_key_seal_detail(g, i) ? ")" : "",
		    i == 0 ? " (encrypts)" : " (decrypts only)");
	for (i = 0; gen_nreplicas(g) > 1 && i < gen_nreplicas(g); i++)
		log_info("replica %zu: token '%s' holds every key "
		    "(same key_id, cross-checked)", i + 1,
		    gen_replica_name(g, i));
}

/*
 * Writes the pid file: a temporary file renamed over PATH, so a reader sees
 * the old pid or the new one, never a partial line. 0, or -1 with err.
 */
static int
pid_file_write(const char *path, char *err, size_t errlen)
{
	char tmp[4096], line[32];
	FILE *f;
	int n;

	n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		snprintf(err, errlen, "--pid-file: path too long");
		return -1;
	}
	snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	if ((f = fopen(tmp, "we")) == NULL || fputs(line, f) == EOF ||
	    fclose(f) != 0 || rename(tmp, path) != 0) {
		snprintf(err, errlen, "--pid-file %.200s: %s", path,
		    strerror(errno));
		(void)unlink(tmp);
		return -1;
	}
	return 0;
}

/*
 * Serving: systemd hears READY=1 (Type=notify), the pid file appears, and
 * the ops loop ticks fast enough for the watchdog.
 */
void
daemon_announce_ready(struct daemon *d, const struct gen *g)
{
	char msg[400], err[300];
	uint64_t wd = notify_watchdog_usec();

	if (g->cfg.pid_file != NULL) {
		if (pid_file_write(g->cfg.pid_file, err, sizeof(err)) != 0)
			log_warn("%s; p11kms reload needs --pid instead", err);
		else {
			d->pid_file = strdup(g->cfg.pid_file);
			/* Removable at exit from inside the sandbox. */
			unixsock_keep_dir(g->cfg.pid_file);
		}
	}
	/* Twice per watchdog interval, at most once a second. */
	if (wd != 0 && wd / 2 * 1000 < d->ops_period_ns)
		d->ops_period_ns = wd / 2 * 1000 > 0 ? wd / 2 * 1000 : 1000;
	d->serving = 1;
	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=serving key_id=%s, "
	    "%zu key(s), %u workers", gen_primary_key_id(g),
	    gen_nkeys(g), g->workers);
	(void)notify_send(msg);
	if (wd != 0)
		(void)notify_send("WATCHDOG=1");
	daemon_publish(d);
}

