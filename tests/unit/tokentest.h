/*
 * tokentest: the SoftHSM fixture shared by the C tests that need a real
 * token (test_keyring, test_mechanisms). Header-only: each test program is
 * one translation unit and includes it once; include <cmocka.h> first.
 *
 * tokentest_setup() finds tests/mktoken.sh (run from the repo root, or set
 * P11KMS_SRCDIR), picks the module (P11KMS_TEST_MODULE, default SoftHSM)
 * and makes a temp dir tt_base; tokentest_teardown() removes it.
 */
#ifndef P11KMS_TOKENTEST_H
#define P11KMS_TOKENTEST_H

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TT_UNUSED	__attribute__((unused))

/* snprintf into an array, failing the test on truncation. */
#define PATHF(buf, ...) \
	assert_true(snprintf((buf), sizeof(buf), __VA_ARGS__) < \
	    (int)sizeof(buf))

static char tt_srcdir[1024];
static char tt_base[1024];	/* mkdtemp; every token of the test under it */
static const char *tt_module;

/* Runs tests/mktoken.sh DIR ARGS; returns its exit status. */
static TT_UNUSED int
tt_mktoken(const char *dir, const char *args)
{
	char cmd[3 * PATH_MAX];
	int r;

	snprintf(cmd, sizeof(cmd), "sh '%s/tests/mktoken.sh' '%s' %s",
	    tt_srcdir, dir, args);
	r = system(cmd);
	if (r != 0)
		fprintf(stderr, "mktoken failed (%d): %s\n", r, cmd);
	return r;
}

/* Points SoftHSM at the token made in dir. */
static TT_UNUSED void
tt_use_conf(const char *dir)
{
	char conf[PATH_MAX];

	PATHF(conf, "%s/softhsm2.conf", dir);
	assert_int_equal(setenv("SOFTHSM2_CONF", conf, 1), 0);
}

static TT_UNUSED void
assert_has(const char *msg, const char *needle)
{
	if (strstr(msg, needle) == NULL)
		fail_msg("message \"%s\" lacks \"%s\"", msg, needle);
}

static TT_UNUSED void
assert_lacks(const char *msg, const char *needle)
{
	if (strstr(msg, needle) != NULL)
		fail_msg("message \"%s\" contains \"%s\"", msg, needle);
}

static int
tt_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *f)
{
	(void)sb;
	(void)flag;
	(void)f;
	return remove(path);
}

static TT_UNUSED void
tokentest_teardown(void)
{
	if (tt_base[0] != '\0')
		nftw(tt_base, tt_rm_one, 16, FTW_DEPTH | FTW_PHYS);
	tt_base[0] = '\0';
}

/* Returns 0, or -1 with the reason on stderr. prefix names the temp dir. */
static TT_UNUSED int
tokentest_setup(const char *prefix)
{
	const char *s, *tmp;
	char script[1100];

	s = getenv("P11KMS_SRCDIR");
	snprintf(tt_srcdir, sizeof(tt_srcdir), "%s", s != NULL && *s ? s : ".");
	if (snprintf(script, sizeof(script), "%s/tests/mktoken.sh",
	    tt_srcdir) >= (int)sizeof(script) || access(script, R_OK) != 0) {
		fprintf(stderr, "%s not found: run from the repo root or set "
		    "P11KMS_SRCDIR\n", script);
		return -1;
	}
	tt_module = getenv("P11KMS_TEST_MODULE");
	if (tt_module == NULL || *tt_module == '\0')
		tt_module = "/usr/lib/softhsm/libsofthsm2.so";
	tmp = getenv("TMPDIR");
	snprintf(tt_base, sizeof(tt_base), "%s/%s-XXXXXX",
	    tmp != NULL && *tmp ? tmp : "/tmp", prefix);
	if (mkdtemp(tt_base) == NULL) {
		perror("mkdtemp");
		tt_base[0] = '\0';
		return -1;
	}
	return 0;
}

#endif
