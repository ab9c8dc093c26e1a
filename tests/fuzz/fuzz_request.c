/*
 * fuzz_request: the whole request path of the daemon, from bytes on a
 * connection to the reply: the loop, the HTTP/2 + gRPC server
 * (plugin/grpc.c), the KMS v2 and v1beta1 handlers (plugin/kms.c) with
 * their protobuf unpacking, the worker pool and the keyring on a real
 * SoftHSM token.
 *
 * LLVMFuzzerInitialize makes a throwaway token in a temp dir with
 * tests/mktoken.sh (P11KMS_SRCDIR: repo root, default "."), loads it, runs
 * one health probe (so Status answers "ok") and removes the dir at exit.
 *
 * Input: one flag byte, then the bytes a client sends.
 *   bit 0     the harness sends the HTTP/2 client preface first
 *   bits 1-3  size of the chunks the bytes are written in; the server runs
 *             between chunks
 * Placeholders in the bytes are replaced with this token's values, so a
 * committed seed can carry a key_id and a ciphertext that this run's
 * random key accepts: KEYID_PH (32 bytes) -> the key_id, KEYREF_PH (16) ->
 * the binary key reference, ENV_PH (ENV_PH_LEN) -> an envelope sealing
 * ENV_PLAINTEXT (only when the sealed envelope has that length).
 *
 * After the input, the harness waits for every call and pool job, closes
 * the client side and runs the loop until the server freed the
 * connection, so nothing carries over to the next input. A call that
 * never ends aborts (a hang is a bug). P11KMS_FUZZ_LOG=debug logs every
 * call's status, to check what a seed reaches.
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "pkcs11/envelope.h"
#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "plugin/gen.h"
#include "plugin/grpc.h"
#include "plugin/kms.h"
#include "plugin/log.h"
#include "plugin/loop.h"
#include "tests/fuzz/fuzz.h"

#define KEYID_PH	"@@p11kms-fuzz-key-id-32-chars@@@"
#define KEYREF_PH	"@@fuzz-keyref16@"
#define ENV_PH_MARK	"@@p11kms-fuzz-envelope@@"
#define ENV_PH_LEN	79	/* AES-GCM: 19 + 12 IV + 32 + 16 tag */
#define ENV_PLAINTEXT	"fuzz-dek-fuzz-dek-fuzz-dek-0032"	/* + NUL */
#define PREFACE		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define MAX_REQUEST	2048	/* small, so the limit is reachable */
#define MAX_QUEUED	16	/* small, so a full pool is reachable */
#define SETTLE_NS	5000000000ull	/* longer to settle: a hang */

_Static_assert(sizeof(KEYID_PH) - 1 == 32, "key_id placeholder");
_Static_assert(sizeof(KEYREF_PH) - 1 == ENVELOPE_KEYREF_LEN, "keyref");
_Static_assert(sizeof(ENV_PLAINTEXT) == 32, "plaintext");

static struct loop *loop;
static struct keyring *kr;
static struct pool *pool;
static struct gen gen;			/* kr and pool, as kms sees them */
static struct loop_watch pool_watch;
static struct kms *kms;
static struct grpc_server *srv;
static char tmpdir[PATH_MAX];
static uint8_t env_ph[ENV_PH_LEN], env_real[ENV_PH_LEN];
static uint8_t keyref[ENVELOPE_KEYREF_LEN];
static int have_env, have_keyid;

static void
die(const char *what)
{
	fprintf(stderr, "fuzz_request: %s\n", what);
	exit(1);
}

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void
remove_tmpdir(void)
{
	if (tmpdir[0] != '\0')
		nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	tmpdir[0] = '\0';
}

/*
 * A crash in replay mode still removes the token dir: ASan's death
 * callback, or a handler for the signals an abort() or a fault raises.
 * Under libFuzzer, which installs its own afterwards, a crash leaves it.
 */
static void
on_fatal(int sig)
{
	/* The heap may be what broke: no malloc here. posix_spawn runs no
	 * fork handlers and takes no malloc lock. */
	char *argv[] = { (char *)"rm", (char *)"-rf", tmpdir, NULL };
	pid_t pid;

	if (tmpdir[0] != '\0' && posix_spawn(&pid, "/bin/rm", NULL, NULL,
	    argv, environ) == 0)
		(void)waitpid(pid, NULL, 0);
	signal(sig, SIG_DFL);
	raise(sig);
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_ASAN 1
#endif
#ifdef FUZZ_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

static void
cleanup_on_crash(void)
{
	signal(SIGABRT, on_fatal);
	signal(SIGSEGV, on_fatal);
	signal(SIGBUS, on_fatal);
#ifdef FUZZ_ASAN
	__sanitizer_set_death_callback(remove_tmpdir);
#endif
}

/*
 * Registered once everything is up, so it runs before the atexit handler
 * OpenSSL registers when the keyring first uses it: the worker thread must
 * end (and free its OpenSSL thread state) before OpenSSL is torn down.
 */
static void
cleanup(void)
{
	grpc_server_free(srv);
	srv = NULL;
	kms_free(kms);
	kms = NULL;
	pool_free(pool);
	pool = NULL;
	keyring_free(kr);
	kr = NULL;
	loop_free(loop);
	loop = NULL;
}

static void
on_pool(void *arg, uint32_t events)
{
	(void)arg;
	(void)events;
	pool_reap(pool);
}

static int
unhex(const char *s, uint8_t *out, size_t n)
{
	size_t i;
	unsigned v;

	for (i = 0; i < n; i++) {
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	return 0;
}

/* The envelope placeholder and a real envelope of ENV_PLAINTEXT. */
static void
make_envelope(void)
{
	struct keyring_worker *w;
	uint8_t ct[KEYRING_MAX_CIPHERTEXT];
	char id[KEYRING_KEY_ID_MAX];
	size_t n = 0;

	memset(env_ph, '#', sizeof(env_ph));
	memcpy(env_ph, ENV_PH_MARK, sizeof(ENV_PH_MARK) - 1);
	if (keyring_worker_new(kr, &w) != KEYRING_OK)
		die("keyring_worker_new failed");
	if (keyring_seal(w, (const uint8_t *)ENV_PLAINTEXT,
	    sizeof(ENV_PLAINTEXT), ct, sizeof(ct), &n, id) != KEYRING_OK)
		die("keyring_seal failed");
	keyring_worker_free(w);
	if (n == ENV_PH_LEN) {
		memcpy(env_real, ct, n);
		have_env = 1;
	} else {
		fprintf(stderr, "fuzz_request: envelope is %zu bytes, not %d: "
		    "ENV_PH not substituted\n", n, ENV_PH_LEN);
	}
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const struct grpc_method *methods;
	struct keyring_config kcfg;
	struct kms_config mcfg;
	const char *src, *tmp, *module, *uris[1];
	char cmd[2 * PATH_MAX + 64], path[PATH_MAX], err[512];
	size_t nmethods;
	uint64_t until;
	int ok;

	(void)argc;
	(void)argv;
	if (loop != NULL)
		return 0;
	signal(SIGPIPE, SIG_IGN);
	/* P11KMS_FUZZ_LOG=debug shows each call's grpc-status. */
	log_level = LOG_ERROR;
	if ((tmp = getenv("P11KMS_FUZZ_LOG")) != NULL &&
	    log_level_parse(tmp) >= 0)
		log_level = log_level_parse(tmp);
	src = getenv("P11KMS_SRCDIR");
	if (src == NULL || *src == '\0')
		src = ".";
	tmp = getenv("TMPDIR");
	if (snprintf(tmpdir, sizeof(tmpdir), "%s/p11kms-fuzz-XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp") >=
	    (int)sizeof(tmpdir) - 32 || mkdtemp(tmpdir) == NULL) {
		tmpdir[0] = '\0';
		die("mkdtemp failed");
	}
	atexit(remove_tmpdir);
	cleanup_on_crash();
	if (snprintf(cmd, sizeof(cmd), "sh '%s/tests/mktoken.sh' '%s/tok'",
	    src, tmpdir) >= (int)sizeof(cmd) || system(cmd) != 0)
		die("tests/mktoken.sh failed (run from the repo root or set "
		    "P11KMS_SRCDIR)");
	/* tmpdir is short enough for these (checked above). */
	if (snprintf(path, sizeof(path), "%s/tok/softhsm2.conf", tmpdir) >=
	    (int)sizeof(path))
		die("path too long");
	setenv("SOFTHSM2_CONF", path, 1);
	if (snprintf(path, sizeof(path), "%s/tok/pin", tmpdir) >=
	    (int)sizeof(path))
		die("path too long");

	module = getenv("P11KMS_TEST_MODULE");
	memset(&kcfg, 0, sizeof(kcfg));
	kcfg.module = module != NULL && *module != '\0' ? module :
	    "/usr/lib/softhsm/libsofthsm2.so";
	uris[0] = "pkcs11:token=kms;object=kek1;type=secret-key";
	kcfg.key_uris = uris;
	kcfg.nkeys = 1;
	kcfg.pin_file = path;
	err[0] = '\0';
	if (keyring_load(&kcfg, &kr, err, sizeof(err)) != KEYRING_OK) {
		fprintf(stderr, "fuzz_request: %s\n", err);
		die("keyring_load failed");
	}
	if (strlen(keyring_primary_key_id(kr)) == 2 * ENVELOPE_KEYREF_LEN &&
	    unhex(keyring_primary_key_id(kr), keyref, sizeof(keyref)) == 0)
		have_keyid = 1;
	make_envelope();

	/* One worker: fewer threads on a shared machine, same code paths. */
	if (pool_new(kr, 1, MAX_QUEUED, &pool, err, sizeof(err)) !=
	    KEYRING_OK) {
		fprintf(stderr, "fuzz_request: %s\n", err);
		die("pool_new failed");
	}
	if (loop_new(&loop) != 0)
		die("loop_new failed");
	pool_watch.fd = pool_fd(pool);
	pool_watch.cb = on_pool;
	pool_watch.arg = NULL;
	if (loop_watch(loop, &pool_watch, EPOLLIN) != 0)
		die("loop_watch failed");
	memset(&mcfg, 0, sizeof(mcfg));
	mcfg.version = "v2";
	mcfg.probe_interval_s = 3600;	/* no probe during the run */
	gen.kr = kr;
	gen.pool = pool;
	gen.watch.fd = -1;
	if (kms_new(loop, &gen, &mcfg, &kms) != 0)
		die("kms_new failed");
	kms_probe(kms);
	until = loop_now() + 30 * 1000000000ull;
	while (!kms_probe_done(kms, &ok) && loop_now() < until)
		(void)loop_once(loop, 100);
	if (!kms_probe_done(kms, &ok) || !ok)
		die("the health probe failed");
	methods = kms_methods(&nmethods);
	if (grpc_server_new(loop, methods, nmethods, kms, MAX_REQUEST,
	    &srv) != 0)
		die("grpc_server_new failed");
	/* Every call ends in the daemon's completion point, as it serves. */
	kms_attach(kms, srv);
	atexit(cleanup);
	return 0;
}

static void
replace_all(uint8_t *buf, size_t len, const uint8_t *from,
    const uint8_t *to, size_t n)
{
	uint8_t *p = buf, *end = buf + len;

	while ((size_t)(end - p) >= n &&
	    (p = memmem(p, (size_t)(end - p), from, n)) != NULL) {
		memcpy(p, to, n);
		p += n;
	}
}

/* Reads and drops what the server sent; fd -1: nothing to read. */
static void
drain(int fd)
{
	uint8_t buf[16384];

	while (fd != -1 && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

/* One turn of the daemon's main loop, then read what it sent. */
static void
pump(int fd, int wait_ms)
{
	(void)loop_once(loop, wait_ms);
	grpc_server_tick(srv);
	drain(fd);
}

/* 0, or -1 when the server has gone (closed the connection). */
static int
write_all(int fd, const uint8_t *p, size_t n)
{
	uint64_t until = loop_now() + SETTLE_NS;
	ssize_t w;

	while (n > 0) {
		w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno != EAGAIN && errno != EINTR)
				return -1;
			if (loop_now() > until) {
				fprintf(stderr, "fuzz_request: the server "
				    "stopped reading\n");
				abort();
			}
			pump(fd, 1);
			continue;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void
settle(int fd, const char *what, int (*busy)(void))
{
	uint64_t until = loop_now() + SETTLE_NS;

	while (busy()) {
		if (loop_now() > until) {
			fprintf(stderr, "fuzz_request: %s\n", what);
			abort();
		}
		pump(fd, 10);
	}
}

static int
calls_busy(void)
{
	return grpc_server_active_calls(srv) > 0 || pool_inflight(pool) > 0;
}

static int
conns_busy(void)
{
	return grpc_server_connections(srv) > 0 || pool_inflight(pool) > 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t chunks[8] = {
		1, 3, 10, 64, 333, 1024, 4096, SIZE_MAX,
	};
	uint8_t *buf;
	size_t chunk, off, n;
	int sv[2], flags;

	if (loop == NULL)
		LLVMFuzzerInitialize(NULL, NULL);
	if (size == 0)
		return 0;
	flags = data[0];
	data++;
	size--;
	if ((buf = malloc(size > 0 ? size : 1)) == NULL)
		return 0;
	memcpy(buf, data, size);
	if (have_keyid) {
		replace_all(buf, size, (const uint8_t *)KEYID_PH,
		    (const uint8_t *)keyring_primary_key_id(kr), 32);
		replace_all(buf, size, (const uint8_t *)KEYREF_PH, keyref,
		    sizeof(keyref));
	}
	if (have_env)
		replace_all(buf, size, env_ph, env_real, ENV_PH_LEN);

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		free(buf);
		return 0;
	}
	if (grpc_server_adopt(srv, sv[0]) != 0) {
		close(sv[1]);
		free(buf);
		return 0;
	}
	pump(sv[1], 0);
	chunk = chunks[(flags >> 1) & 7];
	if ((flags & 1) == 0 ||
	    write_all(sv[1], (const uint8_t *)PREFACE,
	    sizeof(PREFACE) - 1) == 0) {
		for (off = 0; off < size; off += n) {
			n = size - off < chunk ? size - off : chunk;
			if (write_all(sv[1], buf + off, n) != 0)
				break;
			pump(sv[1], 0);
		}
	}
	/* Let every handler and token job finish, then hang up. */
	settle(sv[1], "a call never finished", calls_busy);
	close(sv[1]);
	settle(-1, "the connection was never freed", conns_busy);
	pool_reap(pool);
	FUZZ_CHECK(grpc_server_connections(srv) == 0);
	FUZZ_CHECK(grpc_server_active_calls(srv) == 0);
	FUZZ_CHECK(pool_inflight(pool) == 0);
	free(buf);
	return 0;
}
