/* Unit tests for the file rules of pkcs11/filesafe.c: owner, mode, the
 * directory (sticky or not), symbolic links, non-regular files. The tests
 * run as root, so "another owner" is made with chown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "pkcs11/filesafe.h"

static char base[64];
static char err[512];

static int
setup(void **state)
{
	(void)state;
	snprintf(base, sizeof(base), "/tmp/p11kms-filesafe-XXXXXX");
	assert_non_null(mkdtemp(base));
	assert_int_equal(chmod(base, 0755), 0);
	err[0] = '\0';
	return 0;
}

static int
rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st; (void)flag; (void)f;
	return remove(p);
}

static int
teardown(void **state)
{
	(void)state;
	return nftw(base, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* base/name with mode, returned in a static buffer. */
static const char *
file(const char *name, mode_t mode)
{
	static char p[128];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", base, name);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "x\n", 2), 2);
	close(fd);
	assert_int_equal(chmod(p, mode), 0);
	return p;
}

static const char *
subdir(const char *name, mode_t mode)
{
	static char p[128];

	snprintf(p, sizeof(p), "%s/%s", base, name);
	assert_int_equal(mkdir(p, 0700), 0);
	assert_int_equal(chmod(p, mode), 0);
	return p;
}

static void
test_plain_file_ok(void **state)
{
	(void)state;
	assert_int_equal(filesafe_check_path(file("c", 0644), "config file",
	    0, err, sizeof(err)), 0);
	assert_int_equal(filesafe_check_path(file("p", 0400), "PIN file",
	    FILESAFE_SECRET, err, sizeof(err)), 0);
	/* root:p11kms 0440: group read stays allowed. */
	assert_int_equal(filesafe_check_path(file("g", 0440), "PIN file",
	    FILESAFE_SECRET, err, sizeof(err)), 0);
}

static void
test_writable_file_refused(void **state)
{
	const char *p;

	(void)state;
	p = file("c", 0666);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, p));
	assert_non_null(strstr(err, "mode 0666"));
	assert_non_null(strstr(err, "the group and others can change it"));
	assert_non_null(strstr(err, "chmod go-w"));
	assert_int_equal(filesafe_check_path(file("m", 0775), "PKCS#11 module",
	    0, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "the group can change it"));
}

/* The PIN's message says which of read and write is wrong. */
static void
test_secret_modes_named(void **state)
{
	(void)state;
	assert_int_equal(filesafe_check_path(file("p", 0660), "PIN file",
	    FILESAFE_SECRET, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "the group can change it"));
	assert_null(strstr(err, "others"));
	assert_int_equal(filesafe_check_path(file("q", 0604), "PIN file",
	    FILESAFE_SECRET, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "others can read it"));
	assert_non_null(strstr(err, "change the PIN"));
	/* Not a secret: others may read a config file. */
	assert_int_equal(filesafe_check_path(file("c", 0604), "config file",
	    0, err, sizeof(err)), 0);
}

static void
test_owner_refused(void **state)
{
	const char *p;

	(void)state;
	p = file("c", 0644);
	assert_int_equal(chown(p, 12345, 0), 0);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "owned by uid 12345"));
	assert_non_null(strstr(err, "chown root"));
}

static void
test_directory_rules(void **state)
{
	char p[160];
	const char *d;
	int fd;

	(void)state;
	d = subdir("ww", 0777);
	snprintf(p, sizeof(p), "%s/c", d);
	assert_true((fd = open(p, O_WRONLY | O_CREAT, 0644)) >= 0);
	close(fd);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "directory"));
	assert_non_null(strstr(err, "mode 0777"));
	/* Sticky (as /tmp) does not make it safe. */
	assert_int_equal(chmod(d, 01777), 0);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "sticky"));
	assert_int_equal(chmod(d, 0775), 0);
	assert_int_equal(filesafe_check_path(p, "PKCS#11 module", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "the group can replace"));
	assert_int_equal(chmod(d, 0755), 0);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), 0);
	assert_int_equal(chown(d, 12345, 0), 0);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "owned by uid 12345"));
}

/* A link is judged by its target, and the target's directory counts. */
static void
test_symlinks(void **state)
{
	char target[160], link[160];
	const char *d;
	int fd;

	(void)state;
	d = subdir("ww", 0777);
	snprintf(target, sizeof(target), "%s/real", d);
	assert_true((fd = open(target, O_WRONLY | O_CREAT, 0644)) >= 0);
	close(fd);
	snprintf(link, sizeof(link), "%s/link", base);
	assert_int_equal(symlink(target, link), 0);
	assert_int_equal(filesafe_check_path(link, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "/ww"));
	assert_int_equal(chmod(d, 0755), 0);
	assert_int_equal(filesafe_check_path(link, "config file", 0, err,
	    sizeof(err)), 0);
	assert_int_equal(chmod(target, 0666), 0);	/* the target's mode */
	assert_int_equal(filesafe_check_path(link, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "mode 0666"));
}

static void
test_not_regular(void **state)
{
	char p[160];

	(void)state;
	snprintf(p, sizeof(p), "%s/fifo", base);
	assert_int_equal(mkfifo(p, 0600), 0);
	assert_int_equal(filesafe_check_path(p, "PIN file", FILESAFE_SECRET,
	    err, sizeof(err)), -1);
	assert_non_null(strstr(err, "a FIFO"));
	assert_int_equal(filesafe_check_path(base, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "a directory"));
	snprintf(p, sizeof(p), "%s/missing", base);
	assert_int_equal(filesafe_check_path(p, "config file", 0, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "No such file"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_plain_file_ok, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_writable_file_refused,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_secret_modes_named, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_owner_refused, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_directory_rules, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_symlinks, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_not_regular, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
