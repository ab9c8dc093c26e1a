/* Unit tests for flag parsing (plugin/config.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "plugin/config.h"
#include "plugin/log.h"

#define ARGV(...) (char *[]){ "p11kms", __VA_ARGS__, NULL }
#define ARGC(v) ((int)(sizeof(v) / sizeof(v[0])) - 1)

static int
parse(struct config *cfg, char **argv, int argc, char *err, size_t errlen)
{
	config_defaults(cfg);
	err[0] = '\0';
	return config_parse_args(cfg, argc, argv, err, errlen);
}

static void
test_full(void **state)
{
	char *argv[] = { "p11kms", "--socket", "@kms", "-k",
	    "pkcs11:token=a;object=k2", "--key", "pkcs11:token=a;object=k1",
	    "-m", "/lib/x.so", "-p", "/pin", "--workers", "3",
	    "--max-inflight", "10", "--probe-interval", "5",
	    "--kms-version", "v2beta1", "--max-request-bytes", "2048",
	    "--log-level", "debug", "--grace", "0", NULL };
	struct config cfg;
	char err[256];

	(void)state;
	assert_int_equal(parse(&cfg, argv, ARGC(argv), err, sizeof(err)),
	    CONFIG_OK);
	assert_string_equal(cfg.socket_path, "@kms");
	assert_int_equal(cfg.nkeys, 2);
	assert_string_equal(cfg.keys[0], "pkcs11:token=a;object=k2");
	assert_string_equal(cfg.keys[1], "pkcs11:token=a;object=k1");
	assert_string_equal(cfg.module, "/lib/x.so");
	assert_string_equal(cfg.pin_file, "/pin");
	assert_int_equal(cfg.workers, 3);
	assert_int_equal(cfg.max_inflight, 10);
	assert_int_equal(cfg.probe_interval_s, 5);
	assert_string_equal(cfg.kms_version, "v2beta1");
	assert_int_equal(cfg.max_request, 2048);
	assert_int_equal(cfg.log_level, LOG_DEBUG);
	assert_int_equal(cfg.grace_s, 0);
}

static void
test_defaults(void **state)
{
	char *argv[] = { "p11kms", "--key", "pkcs11:object=k", NULL };
	struct config cfg;
	char err[256];

	(void)state;
	assert_int_equal(parse(&cfg, argv, ARGC(argv), err, sizeof(err)),
	    CONFIG_OK);
	assert_string_equal(cfg.socket_path, CONFIG_DEFAULT_SOCKET);
	assert_string_equal(cfg.kms_version, "v2");
	assert_int_equal(cfg.max_request, CONFIG_DEFAULT_MAX_REQUEST);
	assert_int_equal(cfg.probe_interval_s, CONFIG_DEFAULT_PROBE_S);
	assert_null(cfg.module);
	assert_null(cfg.module_init_args);
	assert_null(cfg.pin_file);
	assert_int_equal(cfg.workers, 0);
	assert_int_equal(cfg.busy_poll, 1);
}

/* --busy-poll: auto or off, on the command line and in the file. */
static void
test_busy_poll(void **state)
{
	char *off[] = { "p11kms", "-k", "u", "--busy-poll", "off", NULL };
	char *aut[] = { "p11kms", "-k", "u", "--busy-poll", "auto", NULL };
	char *bad[] = { "p11kms", "-k", "u", "--busy-poll", "on", NULL };
	struct config cfg;
	char err[256];

	(void)state;
	assert_int_equal(parse(&cfg, off, ARGC(off), err, sizeof(err)),
	    CONFIG_OK);
	assert_int_equal(cfg.busy_poll, 0);
	assert_int_equal(parse(&cfg, aut, ARGC(aut), err, sizeof(err)),
	    CONFIG_OK);
	assert_int_equal(cfg.busy_poll, 1);
	assert_int_equal(parse(&cfg, bad, ARGC(bad), err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "busy-poll must be auto or off"));
}

/* Each bad command line fails and the message names what is wrong. */
static void
test_errors(void **state)
{
	static const struct {
		char *argv[6];
		const char *want;
	} cases[] = {
		{ { "p11kms", NULL }, "no key given" },
		{ { "p11kms", "-k", "u", "--workers", "0", NULL }, "--workers" },
		{ { "p11kms", "-k", "u", "--workers", "x", NULL }, "--workers" },
		{ { "p11kms", "-k", "u", "--workers", "99999", NULL },
		  "from 1 to 256" },
		{ { "p11kms", "-k", "u", "--workers", "-1", NULL }, "--workers" },
		{ { "p11kms", "-k", "u", "--kms-version", "v3", NULL },
		  "v2beta1" },
		{ { "p11kms", "-k", "u", "--log-level", "loud", NULL },
		  "--log-level" },
		{ { "p11kms", "-k", "u", "--bogus", NULL }, "unknown option" },
		{ { "p11kms", "-k", "u", "extra", NULL }, "unexpected argument" },
		{ { "p11kms", "-k", NULL }, "needs a value" },
		{ { "p11kms", "-k", "u", "--socket", "", NULL }, "--socket" },
		{ { "p11kms", "-k", "u", "--mechanism", "des", NULL },
		  "aes-kwp" },
		{ { "p11kms", "-k", "u", "--log-format", "xml", NULL },
		  "--log-format" },
		{ { "p11kms", "-k", "u", "--max-request-bytes", "10", NULL },
		  "--max-request-bytes" },
		{ { "p11kms", "-k", "u", "--pin-value", "1234", NULL },
		  "unknown option" },
	};
	struct config cfg;
	char err[256];
	size_t i;
	int argc;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *argv[6];
		memcpy(argv, cases[i].argv, sizeof(argv));
		for (argc = 0; argv[argc] != NULL; argc++)
			;
		if (parse(&cfg, argv, argc, err, sizeof(err)) != CONFIG_ERROR)
			fail_msg("case %zu (%s) was accepted", i, argv[argc - 1]);
		if (strstr(err, cases[i].want) == NULL)
			fail_msg("case %zu: '%s' lacks '%s'", i, err,
			    cases[i].want);
	}
}

static void
test_too_many_keys(void **state)
{
	char *argv[2 + 2 * (KEYRING_MAX_KEYS + 1)];
	struct config cfg;
	char err[256];
	int argc = 1, i;

	(void)state;
	argv[0] = "p11kms";
	for (i = 0; i <= KEYRING_MAX_KEYS; i++) {
		argv[argc++] = "-k";
		argv[argc++] = "pkcs11:object=k";
	}
	argv[argc] = NULL;
	assert_int_equal(parse(&cfg, argv, argc, err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "too many keys"));
}

static void
test_help_lists_every_flag(void **state)
{
	static const char *flags[] = { "--socket", "--key", "--module",
	    "--pin-file", "--workers", "--max-inflight", "--probe-interval",
	    "--grace", "--kms-version", "--max-request-bytes", "--log-level",
	    "--help", "--version", "--config", "--mechanism", "--ops-listen",
	    "--log-format", "--module-init-args" };
	char buf[8192];
	size_t i, n;
	FILE *fp;

	(void)state;
	fp = fmemopen(buf, sizeof(buf) - 1, "w");
	assert_non_null(fp);
	config_usage(fp);
	n = (size_t)ftell(fp);
	fclose(fp);
	buf[n] = '\0';
	for (i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		if (strstr(buf, flags[i]) == NULL)
			fail_msg("--help lacks %s", flags[i]);
}

static char conf_dir[64];

static void
rm_conf_dir(void)
{
	(void)rmdir(conf_dir);
}

/*
 * Writes text to a temp file; returns its path (static buffer). The file
 * sits in a 0755 directory of its own: one in sticky, world-writable /tmp
 * itself is refused (pkcs11/filesafe.h).
 */
static const char *
write_conf(const char *text)
{
	static char path[96];
	FILE *fp;
	int fd;

	if (conf_dir[0] == '\0') {
		snprintf(conf_dir, sizeof(conf_dir), "/tmp/p11kms-conf-XXXXXX");
		assert_non_null(mkdtemp(conf_dir));
		assert_int_equal(chmod(conf_dir, 0755), 0);
		atexit(rm_conf_dir);
	}
	snprintf(path, sizeof(path), "%s/conf-XXXXXX", conf_dir);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	fp = fdopen(fd, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
	return path;
}

static void
test_file(void **state)
{
	const char *path = write_conf(
	    "# comment\n"
	    "\n"
	    "socket = /run/x.sock\n"
	    "  key =  pkcs11:token=a;object=k2  \n"
	    "key=pkcs11:token=a;object=k1\r\n"
	    "workers = 4\n"
	    "pin-file = /etc/p11kms/pin\n"
	    "mechanism = aes-kwp\n");
	char *argv[] = { "p11kms", "--config", (char *)path, "--workers",
	    "2", NULL };
	struct config cfg;
	char err[256];

	(void)state;
	assert_int_equal(parse(&cfg, argv, ARGC(argv), err, sizeof(err)),
	    CONFIG_OK);
	assert_string_equal(cfg.socket_path, "/run/x.sock");
	assert_int_equal(cfg.nkeys, 2);
	assert_string_equal(cfg.keys[0], "pkcs11:token=a;object=k2");
	assert_string_equal(cfg.keys[1], "pkcs11:token=a;object=k1");
	assert_string_equal(cfg.pin_file, "/etc/p11kms/pin");
	assert_string_equal(cfg.mechanism, "aes-kwp");
	assert_int_equal(cfg.workers, 2);	/* the flag wins */
	config_free(&cfg);
	unlink(path);
}

static void
test_file_keys_replaced_by_flags(void **state)
{
	const char *path = write_conf("key = pkcs11:object=old1\n"
	    "key = pkcs11:object=old2\n");
	char *argv[] = { "p11kms", "-k", "pkcs11:object=new", "-c",
	    (char *)path, NULL };
	struct config cfg;
	char err[256];

	(void)state;
	assert_int_equal(parse(&cfg, argv, ARGC(argv), err, sizeof(err)),
	    CONFIG_OK);
	assert_int_equal(cfg.nkeys, 1);
	assert_string_equal(cfg.keys[0], "pkcs11:object=new");
	config_free(&cfg);
	unlink(path);
}

/* A bad file names the file, the line and the problem. */
static void
test_file_errors(void **state)
{
	static const struct {
		const char *text;
		const char *want;
	} cases[] = {
		{ "key = pkcs11:object=k\nworkers 4\n", ":2: expected" },
		{ "key = pkcs11:object=k\nbogus = 1\n", ":2: unknown option" },
		{ "pin = 1234\n", ":1: unknown option" },
		{ "config = /etc/other\n", ":1: unknown option" },
		{ "help = yes\n", ":1: unknown option" },
		{ "key =\n", ":1: key has no value" },
		{ "key = u\nworkers = many\n", ":2: workers 'many'" },
		{ "key = u\nkms-version = v9\n", ":2: kms-version" },
		{ "# nothing\n", "no key given" },
	};
	char *argv[] = { "p11kms", "--config", NULL, NULL };
	struct config cfg;
	char err[256];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		argv[2] = (char *)write_conf(cases[i].text);
		if (parse(&cfg, argv, 3, err, sizeof(err)) != CONFIG_ERROR)
			fail_msg("case %zu was accepted", i);
		if (strstr(err, cases[i].want) == NULL)
			fail_msg("case %zu: '%s' lacks '%s'", i, err,
			    cases[i].want);
		config_free(&cfg);
		unlink(argv[2]);
	}
	argv[2] = "/nonexistent/p11kms.conf";
	assert_int_equal(parse(&cfg, argv, 3, err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "cannot read config file"));
	config_free(&cfg);
}

/* --module-init-args: a module by path only, from a flag or the file. */
static void
test_module_init_args(void **state)
{
	char *ok[] = { "p11kms", "-k", "pkcs11:object=k", "--module",
	    "/usr/lib/x/libvendor.so", "--module-init-args",
	    "configdir=/etc/vendor x", NULL };
	char *ok_uri[] = { "p11kms", "-k",
	    "pkcs11:object=k?module-path=/usr/lib/x/libvendor.so",
	    "--module-init-args", "d=/x", NULL };
	char *by_name[] = { "p11kms", "-k", "pkcs11:object=k", "-m",
	    "vendor", "--module-init-args", "d=/x", NULL };
	char *empty[] = { "p11kms", "-k", "pkcs11:object=k", "-m",
	    "/x.so", "--module-init-args", "", NULL };
	struct config cfg;
	char err[400], big[1100];
	const char *path;

	(void)state;
	assert_int_equal(parse(&cfg, ok, ARGC(ok), err, sizeof(err)),
	    CONFIG_OK);
	assert_string_equal(cfg.module_init_args, "configdir=/etc/vendor x");
	/* The module may come from the URI: token_open judges that. */
	assert_int_equal(parse(&cfg, ok_uri, ARGC(ok_uri), err, sizeof(err)),
	    CONFIG_OK);
	assert_string_equal(cfg.module_init_args, "d=/x");

	/* A p11-kit name: its module file's x-init-reserved is the way. */
	assert_int_equal(parse(&cfg, by_name, ARGC(by_name), err,
	    sizeof(err)), CONFIG_ERROR);
	assert_non_null(strstr(err, "module-init-args"));
	assert_non_null(strstr(err, "x-init-reserved"));
	assert_non_null(strstr(err, "/etc/pkcs11/modules/vendor.module"));
	assert_int_equal(parse(&cfg, empty, ARGC(empty), err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "--module-init-args must be 1 to"));
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	empty[6] = big;
	assert_int_equal(parse(&cfg, empty, ARGC(empty), err, sizeof(err)),
	    CONFIG_ERROR);

	/* The config-file key, spaces inside kept, a flag overriding it. */
	path = write_conf("key = pkcs11:object=k\n"
	    "module = /usr/lib/x/libvendor.so\n"
	    "module-init-args = dir=/etc/v  opts=1 \n");
	{
		char *argv[] = { "p11kms", "-c", (char *)path, NULL };
		char *over[] = { "p11kms", "-c", (char *)path,
		    "--module-init-args", "other", NULL };
		char *name[] = { "p11kms", "-c", (char *)path, "-m", "vendor",
		    NULL };

		assert_int_equal(parse(&cfg, argv, ARGC(argv), err,
		    sizeof(err)), CONFIG_OK);
		assert_string_equal(cfg.module_init_args, "dir=/etc/v  opts=1");
		config_free(&cfg);
		assert_int_equal(parse(&cfg, over, ARGC(over), err,
		    sizeof(err)), CONFIG_OK);
		assert_string_equal(cfg.module_init_args, "other");
		config_free(&cfg);
		assert_int_equal(parse(&cfg, name, ARGC(name), err,
		    sizeof(err)), CONFIG_ERROR);
		assert_non_null(strstr(err, "p11-kit module name"));
		config_free(&cfg);
	}
	unlink(path);
}

/* The audit options, from flags and from a file. */
static void
test_audit_options(void **state)
{
	const char *path = write_conf(
	    "key = pkcs11:token=a;object=k1\n"
	    "audit-log = /var/log/p11kms/audit.log\n"
	    "audit-sync = every\n"
	    "audit-failure = fail\n"
	    "audit-queue = 100\n"
	    "audit-status = true\n");
	char *argv[] = { "p11kms", "--config", (char *)path, NULL };
	char *flags[] = { "p11kms", "-k", "pkcs11:token=a;object=k1",
	    "--audit-status", NULL };
	char *bad1[] = { "p11kms", "-k", "x", "--audit-sync", "sometimes",
	    NULL };
	char *bad2[] = { "p11kms", "-k", "x", "--audit-failure", "ignore",
	    NULL };
	char *bad3[] = { "p11kms", "-k", "x", "--audit-log", "", NULL };
	struct config cfg;
	char err[256];

	(void)state;
	assert_int_equal(parse(&cfg, argv, ARGC(argv), err, sizeof(err)),
	    CONFIG_OK);
	assert_string_equal(cfg.audit_log, "/var/log/p11kms/audit.log");
	assert_string_equal(cfg.audit_sync, "every");
	assert_string_equal(cfg.audit_failure, "fail");
	assert_int_equal(cfg.audit_queue, 100);
	assert_int_equal(cfg.audit_status, 1);
	config_free(&cfg);
	unlink(path);
	assert_int_equal(parse(&cfg, flags, ARGC(flags), err, sizeof(err)),
	    CONFIG_OK);
	assert_null(cfg.audit_log);
	assert_string_equal(cfg.audit_sync, "batch");
	assert_string_equal(cfg.audit_failure, "continue");
	assert_int_equal(cfg.audit_status, 1);
	assert_int_equal(parse(&cfg, bad1, ARGC(bad1), err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "every or batch"));
	assert_int_equal(parse(&cfg, bad2, ARGC(bad2), err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "continue or fail"));
	assert_int_equal(parse(&cfg, bad3, ARGC(bad3), err, sizeof(err)),
	    CONFIG_ERROR);
	path = write_conf("key = x\naudit-status = maybe\n");
	argv[2] = (char *)path;
	assert_int_equal(parse(&cfg, argv, ARGC(argv), err, sizeof(err)),
	    CONFIG_ERROR);
	assert_non_null(strstr(err, "true or false"));
	config_free(&cfg);
	unlink(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_busy_poll),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_too_many_keys),
		cmocka_unit_test(test_help_lists_every_flag),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_file_keys_replaced_by_flags),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_module_init_args),
		cmocka_unit_test(test_audit_options),
	};

	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
