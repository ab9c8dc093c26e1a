/*
 * p11kms: wiring. Flags, signals, the token keyring and worker pool, the
 * health probe, the gRPC server, and the loop that runs them all.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "plugin/config.h"
#include "plugin/grpc.h"
#include "plugin/kms.h"
#include "plugin/log.h"
#include "plugin/loop.h"
#include "plugin/tool.h"
#include "plugin/version.h"

#define EXIT_RUNTIME	1
#define EXIT_CONFIG	2
#define START_PROBE_S	30	/* first round trip must finish by then */
#define DEFAULT_INFLIGHT 1024

struct daemon {
	struct loop *loop;
	struct pool *pool;
	struct loop_watch pool_watch;
	struct loop_watch sig_watch;
	int stopping;
};

static void
on_pool(void *arg, uint32_t events)
{
	struct daemon *d = arg;

	(void)events;
	pool_reap(d->pool);
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
			if (!d->stopping)
				log_info("signal %d: shutting down",
				    (int)si.ssi_signo);
			d->stopping = 1;
			break;
		case SIGHUP:
			log_info("SIGHUP: nothing to reload (no config file)");
			break;
		}
	}
}

static unsigned
default_workers(const struct config *cfg, const struct keyring *kr)
{
	unsigned long max = keyring_max_sessions(kr);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned w = cfg->workers;

	if (w == 0)
		w = ncpu > 0 ? (unsigned)ncpu : 1;
	/* One session is the keyring's own, holding the login. */
	if (max > 1 && w > max - 1) {
		log_warn("token allows %lu sessions: using %lu workers", max,
		    max - 1);
		w = (unsigned)(max - 1);
	}
	return w;
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

int
main(int argc, char **argv)
{
	struct daemon d;
	struct config cfg;
	struct keyring_config kcfg;
	struct kms_config mcfg;
	struct keyring *kr = NULL;
	struct kms *kms = NULL;
	struct grpc_server *srv = NULL;
	const struct grpc_method *methods;
	size_t nmethods;
	uint64_t until;
	char err[512];
	unsigned workers, inflight;
	int r, ok, ret = EXIT_RUNTIME;

	if (argc > 1 && tool_is_subcommand(argv[1]))
		return tool_main(argc - 1, argv + 1);
	memset(&d, 0, sizeof(d));
	d.sig_watch.fd = -1;
	config_defaults(&cfg);
	r = config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (r == CONFIG_EXIT)
		return 0;
	if (r != CONFIG_OK) {
		fprintf(stderr, "p11kms: %s\n", err);
		return EXIT_CONFIG;
	}
	log_level = cfg.log_level;
	if (setup_signals(&d) != 0) {
		fprintf(stderr, "p11kms: signals: %s\n", strerror(errno));
		return EXIT_RUNTIME;
	}

	memset(&kcfg, 0, sizeof(kcfg));
	kcfg.module = cfg.module;
	kcfg.key_uris = cfg.keys;
	kcfg.nkeys = cfg.nkeys;
	kcfg.pin_file = cfg.pin_file;
	err[0] = '\0';
	if ((r = keyring_load(&kcfg, &kr, err, sizeof(err))) != KEYRING_OK) {
		fprintf(stderr, "p11kms: %s\n", err[0] ? err :
		    keyring_strerror(r));
		ret = r == KEYRING_E_CONFIG || r == KEYRING_E_PIN ?
		    EXIT_CONFIG : EXIT_RUNTIME;
		goto out;
	}
	for (size_t i = 0; i < keyring_nkeys(kr); i++)
		log_info("key %zu: %s key_id=%s%s", i, keyring_key_desc(kr, i),
		    keyring_key_id(kr, i), i == 0 ? " (encrypts)" : "");

	workers = default_workers(&cfg, kr);
	inflight = cfg.max_inflight ? cfg.max_inflight :
	    DEFAULT_INFLIGHT;
	if ((r = pool_new(kr, workers, inflight, &d.pool, err,
	    sizeof(err))) != KEYRING_OK) {
		fprintf(stderr, "p11kms: %s\n", err);
		goto out;
	}
	if (loop_new(&d.loop) != 0) {
		fprintf(stderr, "p11kms: cannot create the event loop\n");
		goto out;
	}
	d.pool_watch.fd = pool_fd(d.pool);
	d.pool_watch.cb = on_pool;
	d.pool_watch.arg = &d;
	if (loop_watch(d.loop, &d.pool_watch, EPOLLIN) != 0 ||
	    loop_watch(d.loop, &d.sig_watch, EPOLLIN) != 0) {
		fprintf(stderr, "p11kms: epoll: %s\n", strerror(errno));
		goto out;
	}

	mcfg.version = cfg.kms_version;
	mcfg.probe_interval_s = cfg.probe_interval_s;
	if (kms_new(d.loop, kr, d.pool, &mcfg, &kms) != 0) {
		fprintf(stderr, "p11kms: out of memory\n");
		goto out;
	}
	/* Serve only once the token has done a real round trip, so the
	 * apiserver's first Status already says "ok". */
	kms_probe(kms);
	until = loop_now() + (uint64_t)START_PROBE_S * 1000000000u;
	while (!kms_probe_done(kms, &ok) && !d.stopping && loop_now() < until)
		(void)loop_once(d.loop, 100);
	if (d.stopping) {
		ret = 0;
		goto out;
	}
	if (!ok) {
		fprintf(stderr, "p11kms: the token failed a seal/open round "
		    "trip at start: %s\n", kms_healthz(kms));
		goto out;
	}

	methods = kms_methods(&nmethods);
	if (grpc_server_new(d.loop, methods, nmethods, kms, cfg.max_request,
	    &srv) != 0) {
		fprintf(stderr, "p11kms: out of memory\n");
		goto out;
	}
	if (grpc_server_listen(srv, cfg.socket_path, err, sizeof(err)) != 0) {
		fprintf(stderr, "p11kms: %s\n", err);
		ret = EXIT_CONFIG;
		goto out;
	}
	log_info("p11kms %s serving KMS %s on %s%s key_id=%s workers=%u "
	    "max_inflight=%u", P11KMS_VERSION, cfg.kms_version,
	    cfg.socket_path[0] == '@' ? "abstract socket " : "",
	    cfg.socket_path, keyring_primary_key_id(kr), workers, inflight);

	while (!d.stopping) {
		if (loop_once(d.loop, -1) != 0)
			break;
		grpc_server_tick(srv);
	}

	/* Stop accepting, tell clients, let in-flight calls finish. */
	grpc_server_shutdown(srv);
	grpc_server_tick(srv);
	until = loop_now() + (uint64_t)cfg.grace_s * 1000000000u;
	while (grpc_server_active_calls(srv) > 0 && loop_now() < until) {
		(void)loop_once(d.loop, 50);
		grpc_server_tick(srv);
	}
	if (grpc_server_active_calls(srv) > 0)
		log_warn("grace period over: abandoning %zu calls",
		    grpc_server_active_calls(srv));
	log_info("stopped");
	ret = 0;

 out:
	grpc_server_free(srv);
	kms_free(kms);
	pool_free(d.pool);	/* runs done callbacks of detached jobs */
	keyring_free(kr);
	loop_free(d.loop);
	if (d.sig_watch.fd != -1)
		close(d.sig_watch.fd);
	return ret;
}
