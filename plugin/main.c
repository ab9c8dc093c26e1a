/*
 * p11kms: wiring. Flags, signals, the token generation (keyring + worker
 * pool), reloads and token recovery, the health probe, the gRPC server, and
 * the loop that runs them all. What the daemon tells its supervisor lives
 * here too: systemd notifications (notify.h), the pid file, and the status
 * and reload outcome the ops endpoint serves (`p11kms status|reload`).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "plugin/audit.h"
#include "plugin/config.h"
#include "plugin/gen.h"
#include "plugin/grpc.h"
#include "plugin/harden.h"
#include "plugin/kms.h"
#include "plugin/log.h"
#include "plugin/logcap.h"
#include "plugin/loop.h"
#include "plugin/metrics.h"
#include "plugin/notify.h"
#include "plugin/ops.h"
#include "plugin/sandbox.h"
#include "plugin/tokproc.h"
#include "plugin/tool.h"
#include "plugin/unixsock.h"
#include "plugin/version.h"

#define EXIT_RUNTIME	1
#define EXIT_CONFIG	2
#define START_PROBE_S	30	/* first round trip must finish by then */
#define NS_PER_S	1000000000ull
#define RECOVER_MIN_S	1	/* first retry after a token fault */
#define RECOVER_MAX_S	30	/* cap of the exponential backoff */

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

static void fatal(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/*
 * A fatal error as a plain "p11kms: ..." line on the log's fd: the real
 * stderr, also while logcap holds fd 2 (there it would pass for module
 * output).
 */
static void
fatal(const char *fmt, ...)
{
	char b[1024];
	va_list ap;
	int n;

	/* Under --log-format json every line on stderr is a JSON record. */
	if (log_format == LOG_FORMAT_JSON) {
		va_start(ap, fmt);
		(void)vsnprintf(b, sizeof(b), fmt, ap);
		va_end(ap);
		log_error("%s", b);
		return;
	}
	memcpy(b, "p11kms: ", 8);
	va_start(ap, fmt);
	n = vsnprintf(b + 8, sizeof(b) - 9, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	n = n + 8 > (int)sizeof(b) - 2 ? (int)sizeof(b) - 2 : n + 8;
	b[n++] = '\n';
	(void)!write(log_fd, b, (size_t)n);
}

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
static void
publish_status(struct daemon *d)
{
	char b[OPS_STATUS_MAX], why[300], rwhy[300];
	const char *h = d->kms != NULL ? kms_healthz(d->kms) : "starting";
	unsigned w = 0, n = 0, busy = 0;

	if (d->cur != NULL) {
		w = gen_workers(d->cur);
		n = gen_inflight(d->cur);
		busy = gen_busy(d->cur);
	}
	status_value(why, sizeof(why), h);
	status_value(rwhy, sizeof(rwhy), d->reload_why);
	snprintf(b, sizeof(b),
	    "version %s\npid %ld\nserving %d\nhealthz %s\ntoken %s\n"
	    "key_id %s\nkeys %zu\nworkers %u\nbusy_workers %u\n"
	    "queued_jobs %u\nconnections %zu\nactive_calls %zu\n"
	    "reload_requested %lu\nreload_completed %lu\n"
	    "reload_result %s\nreload_time %lld\nreload_message %s\n",
	    P11KMS_VERSION, (long)getpid(), d->serving, why,
	    d->cur == NULL ? "recovering" : strcmp(h, "ok") == 0 ? "up" :
	    "down", d->cur != NULL ? gen_primary_key_id(d->cur) : "-",
	    d->cur != NULL ? gen_nkeys(d->cur) : (size_t)0, w, busy,
	    n > busy ? n - busy : 0,
	    d->srv != NULL ? grpc_server_connections(d->srv) : (size_t)0,
	    d->srv != NULL ? grpc_server_active_calls(d->srv) : (size_t)0,
	    d->reload_asked, d->reload_done,
	    d->reload_ok < 0 ? "none" : d->reload_ok ? "ok" : "failed",
	    (long long)d->reload_time, rwhy[0] != '\0' ? rwhy : "-");
	ops_set_status(b);
}

/*
 * Publishes what the ops thread serves: a heartbeat (the loop turns), the
 * health verdict and the gauges. Runs on the loop thread.
 */
static void
publish(struct daemon *d)
{
	const char *h;
	unsigned w, n, busy;

	ops_heartbeat();
	if (d->kms != NULL) {
		h = kms_healthz(d->kms);
		if (strcmp(h, "ok") == 0 && audit_failing(d->audit))
			audit_not_ready(d);
		else
			ops_set_ready(strcmp(h, "ok") == 0, h);
		metrics_set_token_up(strcmp(h, "ok") == 0);
	}
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
	publish_status(d);
}

static void
on_ops_timer(void *arg)
{
	struct daemon *d = arg;

	publish(d);
	/* The loop turned: tell systemd's watchdog (WatchdogSec=). */
	if (d->serving && notify_watchdog_usec() != 0)
		(void)notify_send("WATCHDOG=1");
	(void)loop_timer_start(d->loop, &d->ops_timer, loop_now() +
	    d->ops_period_ns);
}

/*
 * kms: the token's health changed; readyz follows at once. Healthy again
 * (a probe got through): a recovery still pending is not needed.
 */
static void
on_health(void *arg)
{
	struct daemon *d = arg;
	int ok;

	if (kms_probe_done(d->kms, &ok) && ok && d->cur != NULL) {
		loop_timer_stop(d->loop, &d->recover_timer);
		d->recover_s = RECOVER_MIN_S;
	}
	publish(d);
}

/*
 * Finished jobs answered per wake-up: each costs the loop a few µs, and a
 * Status that arrives meanwhile waits for the batch, so a burst of 64 is
 * answered in slices with the connections read in between.
 */
#define REAP_BATCH	16

static void
on_pool(void *arg, uint32_t events)
{
	struct gen *g = arg;

	(void)events;
	(void)pool_reap_some(g->pool, REAP_BATCH);
}

static void on_tokproc_dead(void *arg, const char *why);

/* Frees retired generations whose last call has finished. */
static void
reap_retired(struct daemon *d)
{
	struct gen **gp = &d->retired, *g;

	while ((g = *gp) != NULL) {
		if (gen_inflight(g) > 0) {
			gp = &g->next;
			continue;
		}
		*gp = g->next;
		gen_unwatch(g, d->loop);
		gen_free(g);
	}
}

/* The start-up configuration, without secrets (no PIN, only its file). */
static void
log_config(const struct config *c, const struct gen *g)
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
	    audit, NULL);
}

/*
 * Connections are file descriptors: the soft RLIMIT_NOFILE (often 1024)
 * goes up to the hard one, so --max-connections, not the limit, decides.
 */
static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		log_warn("cannot raise the open-file limit to %llu: %s",
		    (unsigned long long)rl.rlim_max, strerror(errno));
}

static void
log_keys(const struct gen *g)
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
}

static int
fixed_init(struct fixed *f, const struct config *c)
{
	f->socket_path = strdup(c->socket_path);
	f->kms_version = strdup(c->kms_version);
	f->ops_listen = c->ops_listen ? strdup(c->ops_listen) : NULL;
	f->max_request = c->max_request;
	f->probe_interval_s = c->probe_interval_s;
	return f->socket_path == NULL || f->kms_version == NULL ||
	    (c->ops_listen != NULL && f->ops_listen == NULL) ? -1 : 0;
}

static void
fixed_free(struct fixed *f)
{
	free(f->socket_path);
	free(f->kms_version);
	free(f->ops_listen);
}

/* Settings a running server cannot change; a reload keeps the old ones. */
static void
keep_fixed(struct daemon *d, struct config *n)
{
	const struct fixed *o = &d->fixed;

	if (strcmp(o->socket_path, n->socket_path) != 0)
		log_warn("reload: socket changes need a restart; still "
		    "serving on %s", o->socket_path);
	if (strcmp(o->kms_version, n->kms_version) != 0)
		log_warn("reload: kms-version must not change while "
		    "running; still answering %s", o->kms_version);
	if (n->max_request != o->max_request)
		log_warn("reload: max-request-bytes changes need a restart");
	if ((o->ops_listen == NULL) != (n->ops_listen == NULL) ||
	    (o->ops_listen != NULL && strcmp(o->ops_listen,
	    n->ops_listen) != 0))
		log_warn("reload: ops-listen changes need a restart");
	if (n->probe_interval_s != o->probe_interval_s)
		log_warn("reload: probe-interval changes need a restart");
}

/* The audit settings are fixed too; a reload only reopens the file. */
static void
keep_audit(const struct daemon *d, const struct config *n)
{
	if ((d->audit_path == NULL) != (n->audit_log == NULL) ||
	    (d->audit_path != NULL && strcmp(d->audit_path,
	    n->audit_log) != 0))
		log_warn("reload: audit-log changes need a restart");
}

/*
 * Backoff between recovery attempts: doubling from RECOVER_MIN_S, capped
 * at RECOVER_MAX_S and at the probe interval, so a token that comes back
 * is found again within one probe interval.
 */
static void
backoff_grow(struct daemon *d)
{
	unsigned cap = RECOVER_MAX_S;

	if (d->fixed.probe_interval_s < cap)
		cap = d->fixed.probe_interval_s;
	d->recover_s = d->recover_s * 2 > cap ? cap : d->recover_s * 2;
	if (d->recover_s < RECOVER_MIN_S)
		d->recover_s = RECOVER_MIN_S;
}

static void
start_load(struct daemon *d, int recovery)
{
	if (gen_loader_start(&d->loader) != 0) {
		if (!recovery)
			d->reload_again = 1;
		return;
	}
	d->recovering = recovery;
	d->reload_is_request = !recovery;
	if (!recovery)
		d->reload_loading = d->reload_asked;
}

/*
 * The loop's spin policy (pkcs11/spin.h). In one process: spin while
 * exactly one request is at the token (a lone Encrypt or Decrypt), whose
 * answer a fast token sends back sooner than a sleep and a wake-up would
 * take; with more in flight the workers, in this process, need the cores.
 * With the token process: spin while any request is at it. Its answers
 * come over the socket in batches, and each wake-up of a sleeping loop put
 * a VM's wake-up latency into the pipeline: measured with `make bench
 * BENCH_ARGS='--only tokproc'`, spinning at any depth gave 1.3x the c=64
 * throughput of spinning at depth 1 with the token process, and 0.6x in
 * one process, where the spinning loop takes the core a worker needs.
 */
static int
spin_want(void *arg)
{
	struct daemon *d = arg;
	unsigned n;

	if (d->cur == NULL || (n = gen_inflight(d->cur)) == 0)
		return 0;
	return n == 1 || gen_remote();
}

/*
 * A load that answers a SIGHUP finished: kept for /status, counted in the
 * metrics, and told to systemd (READY=1 ends the RELOADING=1 of SIGHUP).
 */
static void
reload_finished(struct daemon *d, int ok, const char *why)
{
	char msg[700];

	if (!d->reload_is_request)
		return;
	d->reload_is_request = 0;
	d->reload_done = d->reload_loading;
	d->reload_ok = ok;
	d->reload_time = time(NULL);
	snprintf(d->reload_why, sizeof(d->reload_why), "%s", why);
	metrics_reload(ok, (double)d->reload_time);
	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s: %s",
	    ok ? "reloaded" : "reload failed, serving the old configuration",
	    why);
	/* One line: STATUS= ends at the newline. */
	for (char *p = msg + 8; *p != '\0'; p++)
		if (*p == '\n')
			*p = ' ';
	(void)notify_send(msg);
	publish_status(d);
}

static void
on_loaded(void *arg, struct gen *g, int status, const char *err)
{
	struct daemon *d = arg;
	char why[600];

	/* With no generation serving, any failed load is a recovery's. */
	if (d->cur == NULL)
		d->recovering = 1;
	if (g == NULL) {
		reload_finished(d, 0, err);
		if (!d->recovering) {
			log_error("reload failed, still serving the old "
			    "configuration: %s", err);
		} else if (status == KEYRING_E_PIN) {
			/* Retrying a wrong PIN would lock the token. */
			d->pin_fault = 1;
			snprintf(why, sizeof(why), "the token refused the PIN "
			    "(%s); not logging in again until the PIN file "
			    "is fixed and p11kms gets SIGHUP", err);
			log_error("%s", why);
			kms_set_down(d->kms, why);
		} else {
			snprintf(why, sizeof(why), "token recovery failed: %s",
			    err);
			log_warn("%s; retrying in %u s", why, d->recover_s);
			kms_set_down(d->kms, why);
			(void)loop_timer_start(d->loop, &d->recover_timer,
			    loop_now() + d->recover_s * NS_PER_S);
			backoff_grow(d);
		}
		goto again;
	}
	keep_fixed(d, &g->cfg);
	keep_audit(d, &g->cfg);
	if (gen_watch(g, d->loop, on_pool, on_tokproc_dead, d) != 0) {
		log_error("%s failed: epoll: %s", d->recovering ? "recovery" :
		    "reload", strerror(errno));
		reload_finished(d, 0, "epoll_ctl failed");
		gen_free(g);
		if (d->cur == NULL)
			(void)loop_timer_start(d->loop, &d->recover_timer,
			    loop_now() + d->recover_s * NS_PER_S);
		goto again;
	}
	/* In-flight calls finish on the generation they started with. */
	if (d->cur != NULL) {
		d->cur->next = d->retired;
		d->retired = d->cur;
	}
	d->cur = g;
	d->grace_s = g->cfg.grace_s;
	loop_set_spin(d->loop, spin_want, d,
	    gen_spin_ns(&g->cfg, GEN_SPIN_ANSWER_NS));
	if (d->srv != NULL)
		grpc_server_set_max_conns(d->srv, g->cfg.max_connections);
	/* The logger reads these from every thread (log.h). */
	__atomic_store_n(&log_level, g->cfg.log_level, __ATOMIC_RELAXED);
	__atomic_store_n(&log_format, log_format_parse(g->cfg.log_format),
	    __ATOMIC_RELAXED);
	kms_set_gen(d->kms, g);
	d->pin_fault = 0;
	publish(d);
	if (d->recovering) {
		log_info("token recovered: keyring reopened, key_id=%s",
		    gen_primary_key_id(g));
		reload_finished(d, 1, "token recovered, keyring reopened");
	} else {
		char nk[24], nw[16];

		snprintf(nk, sizeof(nk), "%zu", gen_nkeys(g));
		snprintf(nw, sizeof(nw), "%u", g->workers);
		log_kv(LOG_INFO, "reloaded: new configuration serving",
		    "#keys", nk, "key_id", gen_primary_key_id(g),
		    "#workers", nw, "workers_from", g->workers_from,
		    "log_level", log_level_name(g->cfg.log_level),
		    "log_format", g->cfg.log_format, NULL);
		log_keys(g);
		snprintf(why, sizeof(why), "%zu key(s), key_id=%s",
		    gen_nkeys(g), gen_primary_key_id(g));
		reload_finished(d, 1, why);
	}
	reap_retired(d);
 again:
	d->recovering = 0;
	if (d->reload_again && !d->stopping) {
		d->reload_again = 0;
		start_load(d, 0);
	}
}

/* kms saw a token-level failure: reopen the keyring, with backoff. */
static void
on_token_fault(void *arg)
{
	struct daemon *d = arg;

	if (d->pin_fault || d->stopping || d->loader.running ||
	    d->recover_timer.slot != 0)
		return;
	log_warn("token fault: reopening the keyring in %u s", d->recover_s);
	(void)loop_timer_start(d->loop, &d->recover_timer,
	    loop_now() + d->recover_s * NS_PER_S);
	backoff_grow(d);
}

/*
 * A token process was lost (its jobs in flight already failed with
 * UNAVAILABLE). The serving one: Status says why, readiness goes off and
 * the recovery starts a new process, with backoff. A retired one that
 * dies only loses its own calls.
 */
static void
on_tokproc_dead(void *arg, const char *why)
{
	struct daemon *d = arg;

	if (d->cur == NULL || d->cur->tp == NULL || !tokproc_dead(d->cur->tp))
		return;
	kms_set_down(d->kms, why);
	publish(d);
	on_token_fault(d);
}

/*
 * The front's seccomp sandbox, once everything is set up. A test-only
 * trigger (P11KMS_TEST_SANDBOX_PROBE=open|execve in the environment, which
 * only whoever starts the daemon sets, never a peer) then tries what the
 * filter forbids, to show it kills the process.
 */
static int
enter_sandbox(struct daemon *d)
{
	const char *probe = getenv("P11KMS_TEST_SANDBOX_PROBE");
	char err[256];

	if (sandbox_enter(err, sizeof(err)) != 0) {
		fatal("%s", err);
		return -1;
	}
	log_info("front sandboxed (%s)", sandbox_summary());
	if (probe != NULL && strcmp(probe, "open") == 0) {
		log_info("sandbox probe: open");
		(void)!open("/etc/hostname", O_RDONLY | O_CLOEXEC);
	} else if (probe != NULL && strcmp(probe, "execve") == 0) {
		char *const av[] = { (char *)"/bin/true", NULL };

		log_info("sandbox probe: execve");
		(void)execv(av[0], av);
	}
	return 0;
}

/*
 * Recovery closes the failed generation before loading the next one, so
 * its module is finalized and initialized afresh (a module loaded twice is
 * only finalized when both let go). Calls still inside the old pool, such
 * as one hung in the token, keep it alive; then the new load shares it.
 */
static void
on_recover_timer(void *arg)
{
	struct daemon *d = arg;

	if (d->pin_fault || d->stopping || d->loader.running)
		return;
	if (d->cur != NULL) {
		kms_set_gen(d->kms, NULL);
		d->cur->next = d->retired;
		d->retired = d->cur;
		d->cur = NULL;
		reap_retired(d);
	}
	start_load(d, 1);
}

static void
on_signal(void *arg, uint32_t events)
{
	struct daemon *d = arg;
	struct signalfd_siginfo si;

	(void)events;
	while (read(d->sig_watch.fd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			if (!d->stopping) {
				log_info("signal %d: shutting down",
				    (int)si.ssi_signo);
				(void)notify_send("STOPPING=1\nSTATUS="
				    "shutting down");
			}
			d->stopping = 1;
			break;
		case SIGUSR1:
			log_info("SIGUSR1: reopening the audit log");
			audit_reopen(d->audit);
			break;
		case SIGHUP:
			log_info("SIGHUP: reloading the configuration");
			d->reload_asked++;
			if (d->serving)
				(void)notify_send("RELOADING=1\nSTATUS="
				    "reloading the configuration");
			audit_reopen(d->audit);
			d->recover_s = RECOVER_MIN_S;
			loop_timer_stop(d->loop, &d->recover_timer);
			start_load(d, 0);
			break;
		}
	}
}

static int
setup_signals(struct daemon *d)
{
	sigset_t set;
	int fd;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	/* Before any thread starts, so workers inherit the mask. */
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return -1;
	if ((fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) == -1)
		return -1;
	d->sig_watch.fd = fd;
	d->sig_watch.cb = on_signal;
	d->sig_watch.arg = d;
	return 0;
}

/* Serves until SIGTERM/SIGINT, then drains within the grace period. */
static void
serve(struct daemon *d)
{
	uint64_t until;

	while (!d->stopping) {
		if (loop_once(d->loop, -1) != 0)
			break;
		grpc_server_tick(d->srv);
		if (d->retired != NULL)
			reap_retired(d);
	}
	/* Stop accepting, tell clients, let in-flight calls finish. */
	grpc_server_shutdown(d->srv);
	grpc_server_tick(d->srv);
	until = loop_now() + (uint64_t)d->grace_s * NS_PER_S;
	while (grpc_server_active_calls(d->srv) > 0 && loop_now() < until) {
		(void)loop_once(d->loop, 50);
		grpc_server_tick(d->srv);
	}
	if (grpc_server_active_calls(d->srv) > 0)
		log_warn("grace period over: abandoning %zu calls",
		    grpc_server_active_calls(d->srv));
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
static void
announce_ready(struct daemon *d, const struct gen *g)
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
	publish(d);
}

int
main(int argc, char **argv)
{
	struct daemon d;
	struct config cfg;
	struct kms_config mcfg;
	const struct grpc_method *methods;
	struct gen *g;
	size_t nmethods;
	uint64_t until;
	char err[512];
	int r, ok, ret = EXIT_RUNTIME;

	/* The token process first: its name is no subcommand a user types. */
	if (argc > 1 && strcmp(argv[1], TOKPROC_ARG) == 0)
		return tokserve_main(argc, argv);
	/* A first argument that is no flag names a subcommand; an unknown
	 * one gets the list. */
	if (argc > 1 && (tool_is_subcommand(argv[1]) ||
	    tool_looks_like_subcommand(argv[1])))
		return tool_main(argc - 1, argv + 1);
	memset(&d, 0, sizeof(d));
	d.sig_watch.fd = -1;
	d.loader.watch.fd = -1;
	d.recover_s = RECOVER_MIN_S;
	d.recover_timer.cb = on_recover_timer;
	d.recover_timer.arg = &d;
	d.ops_period_ns = NS_PER_S;
	d.reload_ok = -1;
	config_defaults(&cfg);
	r = config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (r != CONFIG_OK) {
		/* --log-format json seen before the error: a JSON record. */
		if (r != CONFIG_EXIT && cfg.log_format != NULL &&
		    log_format_parse(cfg.log_format) == LOG_FORMAT_JSON)
			log_format = LOG_FORMAT_JSON;
		config_free(&cfg);
		if (r == CONFIG_EXIT)
			return 0;
		fatal("%s", err);
		return EXIT_CONFIG;
	}
	log_level = cfg.log_level;
	log_format = log_format_parse(cfg.log_format);
	if (notify_init(err, sizeof(err)) != 0)
		log_warn("%s", err);
	metrics_set_rv_namer(keyring_rv_name);
	kms_metrics_register();
	keyring_set_call_observer(metrics_token_call);
	/* Before the PIN is read or a key is touched. */
	harden_process(err, sizeof(err));
	log_info("%s", err);
	raise_nofile();
	/* Before any thread: the spawner is a fork of this process. */
	if (cfg.token_process) {
		if (tokproc_spawner_start(argc, argv, cfg.token_user,
		    cfg.audit_log, err, sizeof(err)) != 0) {
			fprintf(stderr, "p11kms: %s\n", err);
			config_free(&cfg);
			return EXIT_CONFIG;
		}
		gen_set_remote(1);
		audit_set_opener(tokproc_open_audit);
		sandbox_prepare();
	}
	if (setup_signals(&d) != 0) {
		fprintf(stderr, "p11kms: signals: %s\n", strerror(errno));
		config_free(&cfg);
		return EXIT_RUNTIME;
	}
	/* Before the module is loaded: its stderr output becomes records.
	 * With a token process that one captures its own. */
	if (!cfg.token_process && logcap_start(NULL, err, sizeof(err)) != 0)
		log_warn("%s; module output stays on stderr as is", err);
	if ((r = gen_open_or_signal(&cfg, d.sig_watch.fd, &g, err,
	    sizeof(err))) != KEYRING_OK) {
		fatal("%s", err);
		ret = r == KEYRING_E_CONFIG || r == KEYRING_E_PIN ?
		    EXIT_CONFIG : EXIT_RUNTIME;
		goto out;
	}
	d.cur = g;
	d.grace_s = g->cfg.grace_s;
	log_config(&g->cfg, g);
	if (fixed_init(&d.fixed, &g->cfg) != 0) {
		fatal("out of memory");
		goto out;
	}
	log_keys(g);
	if (loop_new(&d.loop) != 0) {
		fatal("cannot create the event loop");
		goto out;
	}
	loop_set_spin(d.loop, spin_want, &d,
	    gen_spin_ns(&g->cfg, GEN_SPIN_ANSWER_NS));
	if (gen_watch(g, d.loop, on_pool, on_tokproc_dead, &d) != 0 ||
	    loop_watch(d.loop, &d.sig_watch, EPOLLIN) != 0 ||
	    gen_loader_init(&d.loader, d.loop, argc, argv, on_loaded,
	    &d) != 0) {
		fatal("epoll: %s", strerror(errno));
		goto out;
	}

	if (g->cfg.audit_log != NULL) {
		struct audit_config ac = { g->cfg.audit_log,
		    strcmp(g->cfg.audit_sync, "every") == 0 ?
		    AUDIT_SYNC_EVERY : AUDIT_SYNC_BATCH, g->cfg.audit_queue };

		if ((d.audit_path = strdup(g->cfg.audit_log)) == NULL ||
		    audit_open(&ac, &d.audit, err, sizeof(err)) != 0) {
			fprintf(stderr, "p11kms: %s\n", d.audit_path ? err :
			    "out of memory");
			ret = EXIT_CONFIG;
			goto out;
		}
	}
	memset(&mcfg, 0, sizeof(mcfg));
	mcfg.version = d.fixed.kms_version;	/* outlives any config */
	mcfg.probe_interval_s = g->cfg.probe_interval_s;
	mcfg.token_fault = on_token_fault;
	mcfg.health_changed = on_health;
	mcfg.fault_arg = &d;
	mcfg.audit = d.audit;
	mcfg.audit_status = g->cfg.audit_status;
	mcfg.audit_fail_closed = strcmp(g->cfg.audit_failure, "fail") == 0;
	if (kms_new(d.loop, g, &mcfg, &d.kms) != 0) {
		fatal("out of memory");
		goto out;
	}
	if (g->cfg.ops_listen != NULL) {
		struct ops_config oc = { g->cfg.ops_listen, 0 };

		if (ops_start(&oc, &d.ops, err, sizeof(err)) != 0) {
			fatal("%s", err);
			ret = EXIT_CONFIG;
			goto out;
		}
	}
	d.ops_timer.cb = on_ops_timer;
	d.ops_timer.arg = &d;
	on_ops_timer(&d);
	/* Serve only once the token has done a real round trip, so the
	 * apiserver's first Status already says "ok". */
	kms_probe(d.kms);
	until = loop_now() + (uint64_t)START_PROBE_S * NS_PER_S;
	while (!kms_probe_done(d.kms, &ok) && !d.stopping &&
	    loop_now() < until)
		(void)loop_once(d.loop, 100);
	if (d.stopping) {
		ret = 0;
		goto out;
	}
	if (!ok) {
		fatal("the token failed a seal/open round "
		    "trip at start: %s", kms_healthz(d.kms));
		goto out;
	}

	methods = kms_methods(&nmethods);
	if (grpc_server_new(d.loop, methods, nmethods, d.kms,
	    g->cfg.max_request, &d.srv) != 0) {
		fatal("out of memory");
		goto out;
	}
	kms_attach(d.kms, d.srv);
	grpc_server_set_max_conns(d.srv, g->cfg.max_connections);
	if (grpc_server_listen(d.srv, g->cfg.socket_path, err,
	    sizeof(err)) != 0) {
		fatal("%s", err);
		ret = EXIT_CONFIG;
		goto out;
	}
	{
		char nw[16], ni[16];

		snprintf(nw, sizeof(nw), "%u", g->workers);
		snprintf(ni, sizeof(ni), "%u", g->inflight);
		log_kv(LOG_INFO, "serving", "version", P11KMS_VERSION,
		    "services", kms_services(), "kms_version",
		    g->cfg.kms_version, "socket", g->cfg.socket_path,
		    "abstract", g->cfg.socket_path[0] == '@' ? "true" :
		    "false", "key_id", gen_primary_key_id(g),
		    "#workers", nw, "#max_inflight", ni, "audit_log",
		    d.audit != NULL ? d.audit_path : "(off)", NULL);
	}
	announce_ready(&d, g);

	if (gen_remote() && enter_sandbox(&d) != 0)
		goto out;
	serve(&d);
	/* Token processes finalize and log their last lines before we go. */
	tokproc_set_exit_wait(5000);
	log_info("stopped");
	ret = 0;

 out:
	if (d.pid_file != NULL)
		unixsock_unlink(d.pid_file);
	free(d.pid_file);
	notify_fini();
	ops_stop(d.ops);
	loop_timer_stop(d.loop, &d.ops_timer);
	/* A reload hung in the token delays the exit by --grace at most. */
	if (gen_loader_wait(&d.loader, d.grace_s) != 0) {
		log_error("a reload is still inside the token after the %u s "
		    "grace period: exiting without finalizing the module",
		    d.grace_s);
		_exit(ret);
	}
	gen_loader_fini(&d.loader);
	loop_timer_stop(d.loop, &d.recover_timer);
	grpc_server_free(d.srv);
	kms_free(d.kms);
	/* After the server: calls it ends as it closes are recorded too. */
	audit_close(d.audit);
	free(d.audit_path);
	/* Pools run the done callbacks of detached jobs as they stop. */
	while ((g = d.retired) != NULL) {
		d.retired = g->next;
		gen_free(g);
	}
	gen_free(d.cur);
	tokproc_spawner_stop();
	loop_free(d.loop);
	fixed_free(&d.fixed);
	if (d.sig_watch.fd != -1)
		close(d.sig_watch.fd);
	/* Modules are finalized: log what they still wrote, then stop. */
	logcap_stop();
	return ret;
}
