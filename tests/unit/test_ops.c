/*
 * Unit tests for the ops HTTP endpoint (plugin/ops.c): every route over a
 * plain-socket HTTP/1.1 client, on TCP (IPv4, IPv6), unix and abstract
 * sockets; health published by "the loop" (this test); /metrics checked
 * against the exposition grammar and known counts; bad --ops-listen values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <cmocka.h>

#include "plugin/log.h"
#include "plugin/kms.h"
#include "plugin/metrics.h"
#include "plugin/ops.h"
#include "tests/unit/prom_check.h"

struct resp {
	int status;
	char head[4096];
	char *body;
	size_t body_len;
};

/* Connects to an ops_address() string; -1 on failure (errno set). */
static int
dial(const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct timeval tv = { 5, 0 };
	char host[64];
	const char *colon;
	int fd, e;

	memset(&ss, 0, sizeof(ss));
	if (strncmp(addr, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)&ss;
		size_t n = strlen(addr + 5);

		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, addr + 5, n);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
		if (addr[5] == '@')
			un->sun_path[0] = '\0';
		else
			len++;
	} else if (addr[0] == '[') {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		colon = strstr(addr, "]:");
		snprintf(host, sizeof(host), "%.*s", (int)(colon - addr - 1),
		    addr + 1);
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)atoi(colon + 2));
		assert_int_equal(inet_pton(AF_INET6, host, &s6->sin6_addr), 1);
		len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		colon = strrchr(addr, ':');
		snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)atoi(colon + 1));
		assert_int_equal(inet_pton(AF_INET, host, &s4->sin_addr), 1);
		len = sizeof(*s4);
	}
	if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* One request on a fresh connection; fails the test on a broken reply. */
static void
http(const char *addr, const char *method, const char *path, struct resp *r)
{
	char req[512], *buf, *sep;
	size_t len = 0, cap = 1 << 20;
	ssize_t n;
	int fd;

	memset(r, 0, sizeof(*r));
	if ((fd = dial(addr)) == -1)
		fail_msg("connect %s: %s", addr, strerror(errno));
	snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: localhost\r\n"
	    "Connection: close\r\n\r\n", method, path);
	assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	buf = malloc(cap + 1);
	assert_non_null(buf);
	while ((n = read(fd, buf + len, cap - len)) > 0)
		len += (size_t)n;
	if (n < 0)
		fail_msg("read %s %s: %s", method, path, strerror(errno));
	close(fd);
	buf[len] = '\0';
	if (sscanf(buf, "HTTP/1.1 %d ", &r->status) != 1)
		fail_msg("no status line: %s", buf);
	if ((sep = strstr(buf, "\r\n\r\n")) == NULL)
		fail_msg("no end of headers: %s", buf);
	snprintf(r->head, sizeof(r->head), "%.*s", (int)(sep - buf), buf);
	r->body_len = len - (size_t)(sep + 4 - buf);
	r->body = malloc(r->body_len + 1);
	memcpy(r->body, sep + 4, r->body_len);
	r->body[r->body_len] = '\0';
	free(buf);
}

static void
expect(const char *addr, const char *method, const char *path, int status,
    const char *body)
{
	struct resp r;

	http(addr, method, path, &r);
	if (r.status != status || (body != NULL && strcmp(r.body, body) != 0))
		fail_msg("%s %s: got %d '%s', want %d '%s'", method, path,
		    r.status, r.body, status, body ? body : "*");
	free(r.body);
}

static struct ops *
start(const char *listen, unsigned stale_s)
{
	struct ops_config cfg = { listen, stale_s };
	struct ops *o = NULL;
	char err[256] = "";

	if (ops_start(&cfg, &o, err, sizeof(err)) != 0)
		fail_msg("ops_start %s: %s", listen, err);
	assert_non_null(o);
	return o;
}

static void
start_fails(const char *listen, const char *needle)
{
	struct ops_config cfg = { listen, 0 };
	struct ops *o = (struct ops *)&cfg;	/* must be reset to NULL */
	char err[256] = "";

	assert_int_equal(ops_start(&cfg, &o, err, sizeof(err)), -1);
	assert_null(o);
	if (strstr(err, needle) == NULL)
		fail_msg("ops_start %s: '%s' lacks '%s'", listen, err, needle);
}

/* ---- tests ---- */

static void
test_listen_check(void **state)
{
	static const char *const good[] = {
		"127.0.0.1:8787", "0.0.0.0:0", "localhost:8787", ":8787",
		"8787", "[::1]:8787", "[::]:1", "unix:/run/p11kms/ops.sock",
		"unix:ops.sock", "unix:@p11kms-ops", "10.1.2.3:65535",
	};
	static const struct { const char *in, *needle; } bad[] = {
		{ "", "empty" },
		{ "127.0.0.1", "port" },		/* a bare IP */
		{ "127.0.0.1:", "port" },
		{ "127.0.0.1:65536", "0 to 65535" },
		{ "127.0.0.1:-1", "0 to 65535" },
		{ "127.0.0.1:80x", "0 to 65535" },
		{ "127.0.0.1:000008787", "0 to 65535" },
		{ "example.com:8787", "not resolved" },
		{ "256.1.1.1:80", "not an IP address" },
		{ "::1:8787", "brackets" },
		{ "[::1]8787", "[ADDR]:PORT" },
		{ "[::1:8787", "[ADDR]:PORT" },
		{ "[127.0.0.1]:80", "not an IPv6 address" },
		{ "/run/p11kms/ops.sock", "unix:/run/p11kms/ops.sock" },
		{ "./ops.sock", "unix:" },
		{ "unix:", "needs a path" },
		{ "unix:@", "needs a path" },
		{ "unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
		  "longer than" },
	};
	char err[256];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		err[0] = '\0';
		if (ops_listen_check(good[i], err, sizeof(err)) != 0)
			fail_msg("'%s' refused: %s", good[i], err);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (ops_listen_check(bad[i].in, err, sizeof(err)) == 0)
			fail_msg("'%s' accepted", bad[i].in);
		/* Every message names the flag and says what to do. */
		if (strstr(err, "--ops-listen") == NULL ||
		    strstr(err, bad[i].needle) == NULL)
			fail_msg("'%s': message '%s' lacks '%s'", bad[i].in, err,
			    bad[i].needle);
	}
	assert_int_equal(ops_listen_check(NULL, err, sizeof(err)), -1);
}

/* Runs first: the state before the loop ever published anything. */
static void
test_health_routes(void **state)
{
	struct ops *o;
	const char *a;

	(void)state;
	o = start("127.0.0.1:0", 5);
	a = ops_address(o);
	assert_true(strncmp(a, "127.0.0.1:", 10) == 0);
	assert_true(atoi(a + 10) > 0);
	/* Nothing published yet: live (start counts), not ready. */
	expect(a, "GET", "/livez", 200, "ok\n");
	expect(a, "GET", "/readyz", 503, "not ready\n");
	expect(a, "GET", "/healthz", 503, "not ready: starting\n");

	ops_heartbeat();
	ops_set_ready(1, "ok");
	expect(a, "GET", "/livez", 200, "ok\n");
	expect(a, "GET", "/readyz", 200, "ok\n");
	expect(a, "GET", "/healthz", 200, "ok\n");

	/* The reason is in /healthz only. */
	ops_set_ready(0, "seal/open round trip failed: token error "
	    "(since 10:00:00 UTC, retrying)");
	expect(a, "GET", "/readyz", 503, "not ready\n");
	expect(a, "GET", "/healthz", 503, "not ready: seal/open round trip "
	    "failed: token error (since 10:00:00 UTC, retrying)\n");
	expect(a, "GET", "/livez", 200, "ok\n");
	ops_set_ready(0, NULL);
	expect(a, "GET", "/healthz", 503, "not ready: unknown\n");
	ops_set_ready(1, "");
	expect(a, "GET", "/healthz", 200, "ok\n");
	ops_stop(o);
}

/* Without a host the endpoint binds the loopback, never every interface. */
static void
test_default_host_is_loopback(void **state)
{
	static const char *const listens[] = { ":0", "0", "localhost:0" };
	struct ops *o;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(listens) / sizeof(listens[0]); i++) {
		o = start(listens[i], 5);
		if (strncmp(ops_address(o), "127.0.0.1:", 10) != 0)
			fail_msg("'%s' bound %s", listens[i], ops_address(o));
		ops_stop(o);
	}
}

static void
test_headers(void **state)
{
	struct ops *o;
	struct resp r;

	(void)state;
	o = start("127.0.0.1:0", 5);
	ops_heartbeat();
	http(ops_address(o), "GET", "/livez", &r);
	assert_int_equal(r.status, 200);
	assert_non_null(strcasestr(r.head, "\r\nContent-Type: text/plain; "
	    "charset=utf-8"));
	assert_non_null(strcasestr(r.head, "\r\nCache-Control: no-store"));
	assert_non_null(strcasestr(r.head, "\r\nX-Content-Type-Options: "
	    "nosniff"));
	free(r.body);
	ops_stop(o);
}

static void
test_livez_stale(void **state)
{
	struct timespec ts = { 1, 600000000 };
	struct ops *o;
	const char *a;
	struct resp r;

	(void)state;
	o = start("127.0.0.1:0", 1);
	a = ops_address(o);
	ops_heartbeat();
	ops_set_ready(1, "ok");
	expect(a, "GET", "/livez", 200, "ok\n");
	nanosleep(&ts, NULL);		/* the loop "hangs" */
	http(a, "GET", "/livez", &r);
	assert_int_equal(r.status, 503);
	assert_non_null(strstr(r.body, "event loop stalled: no heartbeat for "
	    "1 s"));
	free(r.body);
	/* Not live is not ready, whatever was published last. */
	expect(a, "GET", "/readyz", 503, NULL);
	http(a, "GET", "/healthz", &r);
	assert_int_equal(r.status, 503);
	assert_non_null(strstr(r.body, "event loop stalled"));
	free(r.body);
	ops_heartbeat();
	expect(a, "GET", "/livez", 200, "ok\n");
	expect(a, "GET", "/readyz", 200, "ok\n");
	ops_stop(o);
}

static void
test_metrics_route(void **state)
{
	struct ops *o;
	struct resp r;
	char why[256];
	int i;

	(void)state;
	metrics_reset();
	o = start("127.0.0.1:0", 5);
	for (i = 0; i < 5; i++)
		metrics_request_path("/v2.KeyManagementService/Encrypt", 0,
		    0.001);
	metrics_request_path("/v2.KeyManagementService/Decrypt", 3, 0.001);
	metrics_token_call("C_Encrypt", 0, 0.0005);
	metrics_set_token_up(1);
	metrics_set_pool(2, 1, 0);
	metrics_set_key_id("00112233445566778899aabbccddeeff");
	http(ops_address(o), "GET", "/metrics", &r);
	assert_int_equal(r.status, 200);
	assert_non_null(strcasestr(r.head, "\r\nContent-Type: text/plain; "
	    "version=0.0.4; charset=utf-8"));
	if (prom_check(r.body, r.body_len, why, sizeof(why)) != 0)
		fail_msg("%s\n%s", why, r.body);
	assert_true(prom_value(r.body, "p11kms_grpc_requests_total{service="
	    "\"v2.KeyManagementService\",method=\"Encrypt\",code=\"OK\"}") == 5);
	assert_true(prom_value(r.body, "p11kms_grpc_requests_total{service="
	    "\"v2.KeyManagementService\",method=\"Decrypt\","
	    "code=\"INVALID_ARGUMENT\"}") == 1);
	assert_true(prom_value(r.body, "p11kms_pkcs11_call_duration_seconds_"
	    "count{function=\"C_Encrypt\",rv=\"0x00000000\"}") == 1);
	assert_true(prom_value(r.body, "p11kms_token_up") == 1);
	assert_true(prom_value(r.body, "p11kms_pool_workers") == 2);
	assert_true(prom_value(r.body, "p11kms_active_key_info{key_id=\""
	    "00112233445566778899aabbccddeeff\"}") == 1);
	free(r.body);

	/* HEAD: same status and headers, no body. */
	http(ops_address(o), "HEAD", "/metrics", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, 0);
	free(r.body);
	/* A query string does not change the route. */
	expect(ops_address(o), "GET", "/metrics?name[]=x", 200, NULL);
	ops_stop(o);
}

/* /status serves what the loop published last, copied, cut to size. */
static void
test_status_route(void **state)
{
	struct ops *o;
	char big[OPS_STATUS_MAX + 100];
	struct resp r;

	(void)state;
	o = start("127.0.0.1:0", 5);
	ops_set_status("version 1\nhealthz ok\n");
	expect(ops_address(o), "GET", "/status", 200, "version 1\nhealthz ok\n");
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ops_set_status(big);
	http(ops_address(o), "GET", "/status", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, OPS_STATUS_MAX - 1);
	free(r.body);
	ops_set_status(NULL);
	expect(ops_address(o), "GET", "/status", 200, "");
	ops_stop(o);
}

static void
test_methods_and_unknown_paths(void **state)
{
	static const char *const methods[] = { "POST", "PUT", "DELETE",
	    "OPTIONS", "PATCH", "TRACE" };
	static const char *const paths[] = { "/", "/livez/", "/LIVEZ",
	    "/metrics/x", "/healthz.json", "/../livez", "//livez" };
	struct ops *o;
	struct resp r;
	size_t i;

	(void)state;
	o = start("127.0.0.1:0", 5);
	ops_heartbeat();
	for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		http(ops_address(o), methods[i], "/livez", &r);
		if (r.status != 405)
			fail_msg("%s: %d", methods[i], r.status);
		assert_non_null(strcasestr(r.head, "\r\nAllow: GET, HEAD"));
		free(r.body);
	}
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		http(ops_address(o), "GET", paths[i], &r);
		if (r.status != 404)
			fail_msg("%s: %d", paths[i], r.status);
		free(r.body);
	}
	ops_stop(o);
}

static void
test_unix_socket(void **state)
{
	char dir[] = "/tmp/p11kms-ops-XXXXXX", path[128], listen[160];
	struct ops *o;
	struct sockaddr_un un;
	struct stat st;
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ops.sock", dir);
	snprintf(listen, sizeof(listen), "unix:%s", path);

	o = start(listen, 5);
	assert_string_equal(ops_address(o), listen);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	ops_heartbeat();
	ops_set_ready(1, "ok");
	expect(listen, "GET", "/readyz", 200, "ok\n");
	expect(listen, "GET", "/nope", 404, NULL);
	/* A live socket is not taken over. */
	start_fails(listen, "another process is serving");
	ops_stop(o);
	assert_int_equal(lstat(path, &st), -1);
	assert_int_equal(errno, ENOENT);

	/* A stale socket (nobody listening) is replaced. */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	assert_true(strlen(path) < sizeof(un.sun_path));
	memcpy(un.sun_path, path, strlen(path) + 1);
	assert_int_equal(bind(fd, (struct sockaddr *)&un, sizeof(un)), 0);
	close(fd);
	o = start(listen, 5);
	expect(listen, "GET", "/livez", 200, "ok\n");
	ops_stop(o);

	/* Any other file is left alone. */
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	start_fails(listen, "not a socket");
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	unlink(path);

	snprintf(listen, sizeof(listen), "unix:%s/missing/ops.sock", dir);
	start_fails(listen, "directory does not exist");
	rmdir(dir);
}

static void
test_abstract_socket(void **state)
{
	char listen[64];
	struct ops *o;

	(void)state;
	snprintf(listen, sizeof(listen), "unix:@p11kms-test-ops-%d",
	    (int)getpid());
	o = start(listen, 5);
	ops_heartbeat();
	expect(listen, "GET", "/livez", 200, "ok\n");
	start_fails(listen, "in use by another process");
	ops_stop(o);
	/* Gone with the server. */
	assert_int_equal(dial(listen), -1);
}

static void
test_ipv6(void **state)
{
	struct ops_config cfg = { "[::1]:0", 5 };
	struct ops *o = NULL;
	char err[256];

	(void)state;
	if (ops_start(&cfg, &o, err, sizeof(err)) != 0) {
		/* A host without IPv6 (some containers): nothing to test. */
		if (strstr(err, "not an address of this host") != NULL ||
		    strstr(err, "not supported") != NULL) {
			skip();
		}
		fail_msg("%s", err);
	}
	assert_true(strncmp(ops_address(o), "[::1]:", 6) == 0);
	ops_heartbeat();
	expect(ops_address(o), "GET", "/livez", 200, "ok\n");
	ops_stop(o);
}

static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

static void
test_port_in_use_and_stop(void **state)
{
	struct ops *o;
	char addr[64];
	int fds = count_fds();

	(void)state;
	o = start("127.0.0.1:0", 5);
	snprintf(addr, sizeof(addr), "%s", ops_address(o));
	start_fails(addr, "address in use");
	ops_stop(o);
	/* Stopped: the port is closed, and free again. */
	assert_int_equal(dial(addr), -1);
	assert_int_equal(errno, ECONNREFUSED);
	o = start(addr, 5);
	ops_stop(o);
	ops_stop(NULL);
	start_fails("unix:/nonexistent-dir/ops.sock", "does not exist");
	/* Nothing leaked by starts, failed starts and stops. */
	assert_int_equal(count_fds(), fds);
}

/* A client that sends half a request holds no one else up. */
static void
test_slow_client(void **state)
{
	struct ops *o;
	int slow[8];
	size_t i;

	(void)state;
	o = start("127.0.0.1:0", 5);
	ops_heartbeat();
	for (i = 0; i < sizeof(slow) / sizeof(slow[0]); i++) {
		slow[i] = dial(ops_address(o));
		assert_true(slow[i] >= 0);
		assert_int_equal(write(slow[i], "GET /liv", 8), 8);
	}
	for (i = 0; i < 50; i++)
		expect(ops_address(o), "GET", "/livez", 200, "ok\n");
	for (i = 0; i < sizeof(slow) / sizeof(slow[0]); i++)
		close(slow[i]);
	ops_stop(o);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_health_routes),	/* first: fresh state */
		cmocka_unit_test(test_listen_check),
		cmocka_unit_test(test_default_host_is_loopback),
		cmocka_unit_test(test_headers),
		cmocka_unit_test(test_livez_stale),
		cmocka_unit_test(test_metrics_route),
		cmocka_unit_test(test_status_route),
		cmocka_unit_test(test_methods_and_unknown_paths),
		cmocka_unit_test(test_unix_socket),
		cmocka_unit_test(test_abstract_socket),
		cmocka_unit_test(test_ipv6),
		cmocka_unit_test(test_port_in_use_and_stop),
		cmocka_unit_test(test_slow_client),
	};

	log_level = LOG_WARN;
	/* The labels come from the KMS method tables, as in the daemon. */
	kms_metrics_register();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
