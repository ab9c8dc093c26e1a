/*
 * Tests for the fault-injecting PKCS#11 module (tests/faultmod/faultmod.c)
 * over a real SoftHSM token, loaded the way p11kms loads a module: managed
 * by p11-kit (p11_kit_module_load + p11_kit_module_initialize).
 *
 * Everything lives under one mkdtemp directory (token, control file, counts
 * file), removed by the group teardown.
 *
 * Environment: P11KMS_SRCDIR (repo root, default "."), P11KMS_FAULT_MODULE
 * (default: libp11kms-fault.so next to this binary), P11KMS_TEST_MODULE
 * (the real module, default SoftHSM's), TMPDIR.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE	/* nftw, mkdtemp */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11/token.h"

/* snprintf into an array, failing the test on truncation. */
#define PATHF(buf, ...) \
	assert_true(snprintf((buf), sizeof(buf), __VA_ARGS__) < \
	    (int)sizeof(buf))

static char base[1024];		/* mkdtemp; everything under it */
static char tokdir[PATH_MAX];
static char ctl_path[PATH_MAX];
static char counts_path[PATH_MAX];
static char so_path[PATH_MAX];
static CK_FUNCTION_LIST *fn;		/* the fault module, via p11-kit */
static CK_SLOT_ID slot;

static const char PIN[] = "1234";

/* ------------------------------------------------------------------ */

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* Replaces the control file atomically (new inode: always seen as new). */
static void
control(const char *text)
{
	char tmp[PATH_MAX + 8];
	FILE *f;

	PATHF(tmp, "%s.tmp", ctl_path);
	assert_non_null(f = fopen(tmp, "w"));
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(rename(tmp, ctl_path), 0);
}

/* Calls of name in the counts file; -1 when the file or line is missing. */
static long long
count_of(const char *name)
{
	char line[256], fname[128];
	long long v = -1, n;
	FILE *f;

	if ((f = fopen(counts_path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "%127s %lld", fname, &n) == 2 &&
		    strcmp(fname, name) == 0)
			v = n;
	}
	fclose(f);
	return v;
}

/*
 * Sends this process's stderr to path until stderr_restore(saved); the
 * module reports bad control lines there.
 */
static int
stderr_to(const char *path)
{
	int saved, fd;

	fflush(stderr);
	assert_true((saved = dup(2)) >= 0);
	assert_true((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC,
	    0600)) >= 0);
	assert_true(dup2(fd, 2) == 2);
	close(fd);
	return saved;
}

/* Restores stderr and reads what went to path into text (cap bytes). */
static void
stderr_restore(int saved, const char *path, char *text, size_t cap)
{
	size_t len;
	FILE *f;

	fflush(stderr);
	assert_true(dup2(saved, 2) == 2);
	close(saved);
	assert_non_null(f = fopen(path, "r"));
	len = fread(text, 1, cap - 1, f);
	fclose(f);
	text[len] = '\0';
}

/* The slot holding token "kms" (slot ids are not stable: look it up). */
static int
find_slot(CK_SLOT_ID *out)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16, i;
	CK_TOKEN_INFO ti;

	if (fn->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		return -1;
	for (i = 0; i < n; i++) {
		if (fn->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
		    memcmp(ti.label, "kms ", 4) == 0) {
			*out = slots[i];
			return 0;
		}
	}
	return -1;
}

static CK_SESSION_HANDLE
open_session(void)
{
	CK_SESSION_HANDLE h = 0;

	assert_int_equal(fn->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL,
	    NULL, &h), CKR_OK);
	return h;
}

static CK_RV
random16(CK_SESSION_HANDLE h)
{
	CK_BYTE buf[16];

	return fn->C_GenerateRandom(h, buf, sizeof(buf));
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

static int
load_module(void)
{
	CK_RV rv;

	if ((fn = p11_kit_module_load(so_path, 0)) == NULL) {
		fprintf(stderr, "p11_kit_module_load(%s): %s\n", so_path,
		    p11_kit_message());
		return -1;
	}
	if ((rv = p11_kit_module_initialize(fn)) != CKR_OK) {
		fprintf(stderr, "p11_kit_module_initialize: %s\n",
		    p11_kit_strerror(rv));
		p11_kit_module_release(fn);
		fn = NULL;
		return -1;
	}
	return 0;
}

static int
group_setup(void **state)
{
	const char *src, *tmpdir, *real;
	char cmd[3 * PATH_MAX], self[PATH_MAX], conf[PATH_MAX + 32];
	ssize_t n;

	(void)state;
	if ((src = getenv("P11KMS_SRCDIR")) == NULL || *src == '\0')
		src = ".";
	if ((tmpdir = getenv("TMPDIR")) == NULL || *tmpdir == '\0')
		tmpdir = "/tmp";
	snprintf(base, sizeof(base), "%s/p11kms-faultmod-XXXXXX", tmpdir);
	if (mkdtemp(base) == NULL) {
		perror("mkdtemp");
		return -1;
	}
	snprintf(tokdir, sizeof(tokdir), "%s/tok", base);
	snprintf(ctl_path, sizeof(ctl_path), "%s/control", base);
	snprintf(counts_path, sizeof(counts_path), "%s/counts", base);
	snprintf(cmd, sizeof(cmd), "sh '%s/tests/mktoken.sh' '%s'", src,
	    tokdir);
	if (system(cmd) != 0) {
		fprintf(stderr, "mktoken failed: %s (set P11KMS_SRCDIR to the "
		    "repo root)\n", cmd);
		return -1;
	}
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tokdir);
	setenv("SOFTHSM2_CONF", conf, 1);
	setenv("P11KMS_FAULT_CONTROL", ctl_path, 1);
	setenv("P11KMS_FAULT_COUNTS", counts_path, 1);
	if ((real = getenv("P11KMS_TEST_MODULE")) != NULL && *real != '\0')
		setenv("P11KMS_FAULT_TARGET", real, 1);

	if ((src = getenv("P11KMS_FAULT_MODULE")) != NULL && *src != '\0') {
		snprintf(so_path, sizeof(so_path), "%s", src);
	} else {
		if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) <=
		    0)
			return -1;
		self[n] = '\0';
		snprintf(so_path, sizeof(so_path), "%s/libp11kms-fault.so",
		    dirname(self));
	}
	if (access(so_path, R_OK) != 0) {
		fprintf(stderr, "%s missing (build it: make TEST_DEPS)\n",
		    so_path);
		return -1;
	}
	if (load_module() != 0 || find_slot(&slot) != 0) {
		fprintf(stderr, "token kms not found through %s\n", so_path);
		return -1;
	}
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	unlink(ctl_path);
	if (fn != NULL) {
		p11_kit_module_finalize(fn);
		p11_kit_module_release(fn);
		fn = NULL;
	}
	if (base[0] != '\0')
		nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* Each test starts without rules. */
static int
setup(void **state)
{
	(void)state;
	control("");
	return 0;
}

/* ------------------------------------------------------------------ */

static void
test_forwards_without_rules(void **state)
{
	CK_SLOT_ID slots[16], s = 0;
	CK_ULONG n = 16;
	CK_SESSION_HANDLE h;
	CK_INFO info;

	(void)state;
	assert_int_equal(fn->C_GetInfo(&info), CKR_OK);
	assert_int_equal(fn->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	assert_true(n >= 1);
	assert_int_equal(find_slot(&s), 0);
	h = open_session();
	assert_int_equal(fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN,
	    strlen(PIN)), CKR_OK);
	assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(fn->C_Logout(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_rule_fails_until_removed(void **state)
{
	CK_SESSION_INFO si;
	CK_SESSION_HANDLE h;
	int i;

	(void)state;
	h = open_session();
	control("C_GenerateRandom CKR_DEVICE_REMOVED\n");
	for (i = 0; i < 5; i++)
		assert_int_equal(random16(h), CKR_DEVICE_REMOVED);
	/* Other functions are untouched. */
	assert_int_equal(fn->C_GetSessionInfo(h, &si), CKR_OK);
	control("");
	assert_int_equal(random16(h), CKR_OK);

	/* A wrong-PIN fault on the right PIN. */
	control("C_Login CKR_PIN_INCORRECT\n");
	assert_int_equal(fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN,
	    strlen(PIN)), CKR_PIN_INCORRECT);
	assert_int_equal(fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN,
	    strlen(PIN)), CKR_PIN_INCORRECT);
	unlink(ctl_path);	/* a missing file means no rules */
	assert_int_equal(fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN,
	    strlen(PIN)), CKR_OK);
	assert_int_equal(fn->C_Logout(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_count_expires_and_resets(void **state)
{
	CK_SESSION_HANDLE h;
	int i;

	(void)state;
	h = open_session();
	control("C_GenerateRandom CKR_SESSION_HANDLE_INVALID 3\n");
	for (i = 0; i < 3; i++)
		assert_int_equal(random16(h), CKR_SESSION_HANDLE_INVALID);
	for (i = 0; i < 3; i++)
		assert_int_equal(random16(h), CKR_OK);
	/* A new version of the file (same text) starts the count again. */
	control("C_GenerateRandom CKR_SESSION_HANDLE_INVALID 3\n");
	for (i = 0; i < 3; i++)
		assert_int_equal(random16(h), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_star_and_hex(void **state)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	CK_SESSION_HANDLE h;
	CK_INFO info;

	(void)state;
	h = open_session();
	control("* CKR_DEVICE_REMOVED\n");
	assert_int_equal(fn->C_GetSlotList(CK_TRUE, slots, &n),
	    CKR_DEVICE_REMOVED);
	assert_int_equal(fn->C_GetInfo(&info), CKR_DEVICE_REMOVED);
	assert_int_equal(random16(h), CKR_DEVICE_REMOVED);
	control("C_GetInfo 0x80000123\n");
	assert_int_equal(fn->C_GetInfo(&info), 0x80000123UL);
	assert_int_equal(random16(h), CKR_OK);
	control("");
	assert_int_equal(fn->C_GetInfo(&info), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

/* An AES session key for encrypt/decrypt on h (logged in). */
static CK_OBJECT_HANDLE
session_aes_key(CK_SESSION_HANDLE h)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ULONG len = 32;
	CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_ENCRYPT, &yes, sizeof(yes) },
		{ CKA_DECRYPT, &yes, sizeof(yes) },
	};
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_OBJECT_HANDLE k = 0;

	assert_int_equal(fn->C_GenerateKey(h, &gen, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &k), CKR_OK);
	return k;
}

/*
 * A real failure ends the active operation; an injected one must too, or
 * the caller's next Init meets CKR_OPERATION_ACTIVE (a fault of the test
 * module, not of the code under test).
 */
static void
test_injected_failure_ends_operation(void **state)
{
	CK_BYTE iv[16] = { 0 }, pt[32] = { 1 }, ct[64], out[64];
	CK_MECHANISM m = { CKM_AES_CBC_PAD, iv, sizeof(iv) };
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	CK_ULONG n, ctlen;

	(void)state;
	h = open_session();
	assert_int_equal(fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN,
	    strlen(PIN)), CKR_OK);
	k = session_aes_key(h);
	control("C_Encrypt CKR_DEVICE_ERROR 1\n"
	    "C_Decrypt CKR_SESSION_CLOSED 1\n"
	    "C_EncryptFinal CKR_DEVICE_ERROR 1\n");

	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_Encrypt(h, pt, sizeof(pt), ct, &n),
	    CKR_DEVICE_ERROR);
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	ctlen = sizeof(ct);
	assert_int_equal(fn->C_Encrypt(h, pt, sizeof(pt), ct, &ctlen), CKR_OK);

	assert_int_equal(fn->C_DecryptInit(h, &m, k), CKR_OK);
	n = sizeof(out);
	assert_int_equal(fn->C_Decrypt(h, ct, ctlen, out, &n),
	    CKR_SESSION_CLOSED);
	assert_int_equal(fn->C_DecryptInit(h, &m, k), CKR_OK);
	n = sizeof(out);
	assert_int_equal(fn->C_Decrypt(h, ct, ctlen, out, &n), CKR_OK);
	assert_int_equal(n, sizeof(pt));
	assert_memory_equal(out, pt, sizeof(pt));

	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_EncryptUpdate(h, pt, sizeof(pt), ct, &n),
	    CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_EncryptFinal(h, ct, &n), CKR_DEVICE_ERROR);
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_Encrypt(h, pt, sizeof(pt), ct, &n), CKR_OK);

	assert_int_equal(fn->C_Logout(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_delay(void **state)
{
	CK_SESSION_HANDLE h;
	uint64_t t0, dt;

	(void)state;
	h = open_session();
	control("C_GenerateRandom delay 120\n");
	t0 = now_ms();
	assert_int_equal(random16(h), CKR_OK);
	dt = now_ms() - t0;
	assert_true(dt >= 120);
	/* Delays add up and precede a fail rule. */
	control("C_GenerateRandom delay 60\n* delay 60\n"
	    "C_GenerateRandom CKR_DEVICE_ERROR\n");
	t0 = now_ms();
	assert_int_equal(random16(h), CKR_DEVICE_ERROR);
	dt = now_ms() - t0;
	assert_true(dt >= 120);
	control("");
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

struct hang_arg {
	CK_SESSION_HANDLE h;
	CK_RV rv;
	atomic_int done;
};

static void *
hang_thread(void *p)
{
	struct hang_arg *a = p;

	a->rv = random16(a->h);
	atomic_store(&a->done, 1);
	return NULL;
}

static void
test_hang_until_removed(void **state)
{
	struct hang_arg a = { 0 };
	CK_SESSION_HANDLE h2;
	pthread_t th;
	uint64_t t0, waited;
	long long before;
	int i;

	(void)state;
	a.h = open_session();
	h2 = open_session();
	before = count_of("C_GenerateRandom");
	control("C_GenerateRandom hang\n");
	t0 = now_ms();
	assert_int_equal(pthread_create(&th, NULL, hang_thread, &a), 0);
	sleep_ms(300);
	assert_int_equal(atomic_load(&a.done), 0);
	/* Counted on entry, so the hung call already shows. */
	assert_true(count_of("C_GenerateRandom") >= before + 1);
	/* Other functions go on meanwhile. */
	assert_int_equal(fn->C_CloseSession(h2), CKR_OK);

	control("");
	for (i = 0; i < 100 && !atomic_load(&a.done); i++)	/* <= 5 s */
		sleep_ms(50);
	waited = now_ms() - t0;
	assert_int_equal(atomic_load(&a.done), 1);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(a.rv, CKR_OK);
	assert_true(waited >= 300);
	assert_int_equal(fn->C_CloseSession(a.h), CKR_OK);
}

static void
test_counts_file(void **state)
{
	CK_SESSION_HANDLE h;
	long long n0, logins;
	int i;

	(void)state;
	h = open_session();
	n0 = count_of("C_GenerateRandom");
	assert_true(n0 >= 0);
	for (i = 0; i < 3; i++)
		assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(count_of("C_GenerateRandom"), n0 + 3);
	/* Failed calls count too: one line per function, zeros included. */
	logins = count_of("C_Login");
	control("C_Login CKR_PIN_INCORRECT 1\n");
	assert_int_equal(fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN,
	    strlen(PIN)), CKR_PIN_INCORRECT);
	assert_int_equal(count_of("C_Login"), logins + 1);
	assert_true(count_of("C_WaitForSlotEvent") >= 0);
	assert_true(count_of("C_GetFunctionList") >= 1);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_bad_lines_reported_once(void **state)
{
	char errpath[PATH_MAX + 16], text[4096];
	CK_SESSION_HANDLE h;
	int saved;

	(void)state;
	h = open_session();
	PATHF(errpath, "%s/stderr.txt", base);
	saved = stderr_to(errpath);

	control("C_Bogus CKR_DEVICE_ERROR\n"
	    "C_GenerateRandom CKR_NOPE\n"
	    "C_GenerateRandom delay\n"
	    "# a comment\n"
	    "\n"
	    "C_GenerateRandom CKR_DEVICE_ERROR 1 # the one good rule\n"
	    "C_GenerateRandom hang now\n");
	assert_int_equal(random16(h), CKR_DEVICE_ERROR);
	assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(random16(h), CKR_OK);
	stderr_restore(saved, errpath, text, sizeof(text));
	assert_non_null(strstr(text, "p11kms-fault: line 1: "));
	assert_non_null(strstr(text, "p11kms-fault: line 2: "));
	assert_non_null(strstr(text, "p11kms-fault: line 3: "));
	assert_non_null(strstr(text, "p11kms-fault: line 7: "));
	assert_null(strstr(text, "line 6"));
	/* Once per file version, not per call. */
	assert_null(strstr(strstr(text, "line 1: ") + 1, "line 1: "));
	control("");
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

/*
 * The report rules: hw-slot adds CKF_HW_SLOT to C_GetSlotInfo's flags,
 * max-sessions replaces C_GetTokenInfo's ulMaxSessionCount; the rest of
 * the answer is the real module's.
 */
static void
test_report_rules(void **state)
{
	CK_SLOT_INFO si0, si;
	CK_TOKEN_INFO ti0, ti;

	(void)state;
	assert_int_equal(fn->C_GetSlotInfo(slot, &si0), CKR_OK);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti0), CKR_OK);
	/* SoftHSM: a software slot; a limit the tests can tell apart. */
	assert_int_equal(si0.flags & CKF_HW_SLOT, 0);
	assert_true(ti0.ulMaxSessionCount != 6 &&
	    ti0.ulMaxSessionCount != 9);

	control("C_GetSlotInfo hw-slot\n");
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_OK);
	assert_int_equal(si.flags, si0.flags | CKF_HW_SLOT);
	assert_memory_equal(si.slotDescription, si0.slotDescription,
	    sizeof(si.slotDescription));
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(ti.ulMaxSessionCount, ti0.ulMaxSessionCount);

	control("C_GetTokenInfo max-sessions 6\n");
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(ti.ulMaxSessionCount, 6);
	assert_memory_equal(ti.label, ti0.label, sizeof(ti.label));
	assert_int_equal(ti.flags, ti0.flags);
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_OK);
	assert_int_equal(si.flags, si0.flags);

	/* Both at once; the first max-sessions wins; 0 is a value too. */
	control("C_GetTokenInfo max-sessions 6\nC_GetSlotInfo hw-slot\n"
	    "C_GetTokenInfo max-sessions 9\n");
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_OK);
	assert_int_equal(si.flags, si0.flags | CKF_HW_SLOT);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(ti.ulMaxSessionCount, 6);
	control("C_GetTokenInfo max-sessions 0\n");
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(ti.ulMaxSessionCount, 0);

	/* A fail rule still fails the call; the next one is reported. */
	control("C_GetSlotInfo hw-slot\nC_GetSlotInfo CKR_DEVICE_ERROR 1\n"
	    "C_GetTokenInfo max-sessions 9\nC_GetTokenInfo "
	    "CKR_DEVICE_REMOVED 1\n");
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_DEVICE_ERROR);
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_OK);
	assert_int_equal(si.flags, si0.flags | CKF_HW_SLOT);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_DEVICE_REMOVED);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(ti.ulMaxSessionCount, 9);

	/* Gone with the rule. */
	control("");
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_OK);
	assert_int_equal(si.flags, si0.flags);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(ti.ulMaxSessionCount, ti0.ulMaxSessionCount);
}

/* A report rule on the wrong function, or with a bad argument, is refused. */
static void
test_report_rules_bad_lines(void **state)
{
	char errpath[PATH_MAX + 16], text[4096], want[32];
	CK_SLOT_INFO si0, si;
	CK_TOKEN_INFO ti0, ti;
	int saved, i;

	(void)state;
	assert_int_equal(fn->C_GetSlotInfo(slot, &si0), CKR_OK);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti0), CKR_OK);
	PATHF(errpath, "%s/stderr-report.txt", base);
	saved = stderr_to(errpath);
	control("* hw-slot\n"
	    "C_GetTokenInfo hw-slot\n"
	    "C_GetSlotInfo hw-slot 1\n"
	    "* max-sessions 3\n"
	    "C_GetSlotInfo max-sessions 3\n"
	    "C_GetTokenInfo max-sessions\n"
	    "C_GetTokenInfo max-sessions x\n"
	    "C_GetTokenInfo max-sessions -1\n"
	    "C_GetTokenInfo max-sessions 3 4\n");
	assert_int_equal(fn->C_GetSlotInfo(slot, &si), CKR_OK);
	assert_int_equal(fn->C_GetTokenInfo(slot, &ti), CKR_OK);
	stderr_restore(saved, errpath, text, sizeof(text));
	assert_int_equal(si.flags, si0.flags);
	assert_int_equal(ti.ulMaxSessionCount, ti0.ulMaxSessionCount);
	for (i = 1; i <= 9; i++) {
		PATHF(want, "p11kms-fault: line %d: ", i);
		if (strstr(text, want) == NULL)
			fail_msg("line %d not reported: %s", i, text);
	}
	control("");
}

static void
test_reinitialize_and_reload(void **state)
{
	long long inits;
	CK_SESSION_HANDLE h;
	CK_RV rv;

	(void)state;
	/* A module that fails to come back once, like a rebooting HSM. */
	control("C_Initialize CKR_DEVICE_ERROR 1\n");
	assert_int_equal(p11_kit_module_finalize(fn), CKR_OK);
	rv = p11_kit_module_initialize(fn);
	assert_int_equal(rv, CKR_DEVICE_ERROR);
	assert_int_equal(p11_kit_module_initialize(fn), CKR_OK);
	assert_int_equal(find_slot(&slot), 0);
	h = open_session();
	assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);

	/* Released and loaded again: counters carry on (-z nodelete). */
	inits = count_of("C_Initialize");
	assert_true(inits >= 3);
	assert_int_equal(p11_kit_module_finalize(fn), CKR_OK);
	p11_kit_module_release(fn);
	fn = NULL;
	assert_int_equal(load_module(), 0);
	assert_int_equal(count_of("C_Initialize"), inits + 1);
	assert_int_equal(find_slot(&slot), 0);
	h = open_session();
	assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

/* "FUNC stderr TEXT": TEXT (spaces, escapes kept) and a newline on fd 2. */
static void
test_stderr_rule(void **state)
{
	char errpath[PATH_MAX + 16], text[4096];
	CK_SESSION_HANDLE h;
	int saved;

	(void)state;
	h = open_session();
	PATHF(errpath, "%s/stderr-say.txt", base);
	saved = stderr_to(errpath);
	control("C_GenerateRandom stderr ERROR:esys  two \x1b[31mred\n"
	    "C_Bogus stderr x\n"
	    "C_GenerateRandom stderr\n"
	    "C_Initialize require-reserved\n"
	    "C_Encrypt require-reserved x\n");
	assert_int_equal(random16(h), CKR_OK);
	assert_int_equal(random16(h), CKR_OK);
	stderr_restore(saved, errpath, text, sizeof(text));
	assert_non_null(strstr(text, "\nERROR:esys  two \x1b[31mred\n"
	    "ERROR:esys  two \x1b[31mred\n"));
	assert_non_null(strstr(text, "p11kms-fault: line 2: "));
	assert_non_null(strstr(text, "p11kms-fault: line 3: "));
	assert_non_null(strstr(text, "p11kms-fault: line 4: "));
	assert_non_null(strstr(text, "p11kms-fault: line 5: "));
	control("");
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

/*
 * "C_Initialize require-reserved TEXT": CKR_ARGUMENTS_BAD unless pReserved
 * is TEXT; p11-kit (managed) passes none. The raw list takes one.
 */
static void
test_require_reserved(void **state)
{
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_FUNCTION_LIST *raw = NULL;
	CK_C_INITIALIZE_ARGS ia;
	void *dl;

	(void)state;
	assert_non_null(dl = dlopen(so_path, RTLD_NOW | RTLD_NOLOAD));
	*(void **)&get = dlsym(dl, "C_GetFunctionList");
	assert_non_null(get);
	assert_int_equal(get(&raw), CKR_OK);
	control("C_Initialize require-reserved dir=/etc/x y\n");
	assert_int_equal(p11_kit_module_finalize(fn), CKR_OK);
	assert_int_equal(p11_kit_module_initialize(fn), CKR_ARGUMENTS_BAD);

	memset(&ia, 0, sizeof(ia));
	ia.flags = CKF_OS_LOCKING_OK;
	assert_int_equal(raw->C_Initialize(NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(raw->C_Initialize(&ia), CKR_ARGUMENTS_BAD);
	ia.pReserved = "dir=/etc/x";
	assert_int_equal(raw->C_Initialize(&ia), CKR_ARGUMENTS_BAD);
	/* The right one: SoftHSM (which refuses any pReserved) gets NULL. */
	ia.pReserved = "dir=/etc/x y";
	assert_int_equal(raw->C_Initialize(&ia), CKR_OK);
	assert_int_equal(raw->C_Finalize(NULL), CKR_OK);
	dlclose(dl);

	control("");
	assert_int_equal(p11_kit_module_initialize(fn), CKR_OK);
	assert_int_equal(find_slot(&slot), 0);
}

#define THREADS		4
#define PER_THREAD	100

struct worker_arg {
	CK_SESSION_HANDLE h;
	int failed, other;
};

static void *
worker(void *p)
{
	struct worker_arg *a = p;
	CK_RV rv;
	int i;

	for (i = 0; i < PER_THREAD; i++) {
		rv = random16(a->h);
		if (rv == CKR_DEVICE_ERROR)
			a->failed++;
		else if (rv != CKR_OK)
			a->other++;
	}
	return NULL;
}

static void
test_count_exact_under_threads(void **state)
{
	struct worker_arg a[THREADS];
	pthread_t th[THREADS];
	int i, failed = 0;

	(void)state;
	memset(a, 0, sizeof(a));
	for (i = 0; i < THREADS; i++)
		a[i].h = open_session();
	control("C_GenerateRandom CKR_DEVICE_ERROR 50\n");
	for (i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, worker, &a[i]),
		    0);
	for (i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(a[i].other, 0);
		failed += a[i].failed;
	}
	assert_int_equal(failed, 50);
	for (i = 0; i < THREADS; i++)
		assert_int_equal(fn->C_CloseSession(a[i].h), CKR_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_forwards_without_rules, setup),
		cmocka_unit_test_setup(test_rule_fails_until_removed, setup),
		cmocka_unit_test_setup(test_count_expires_and_resets, setup),
		cmocka_unit_test_setup(test_star_and_hex, setup),
		cmocka_unit_test_setup(test_injected_failure_ends_operation,
		    setup),
		cmocka_unit_test_setup(test_delay, setup),
		cmocka_unit_test_setup(test_hang_until_removed, setup),
		cmocka_unit_test_setup(test_counts_file, setup),
		cmocka_unit_test_setup(test_bad_lines_reported_once, setup),
		cmocka_unit_test_setup(test_report_rules, setup),
		cmocka_unit_test_setup(test_report_rules_bad_lines, setup),
		cmocka_unit_test_setup(test_reinitialize_and_reload, setup),
		cmocka_unit_test_setup(test_count_exact_under_threads, setup),
		cmocka_unit_test_setup(test_stderr_rule, setup),
		cmocka_unit_test_setup(test_require_reserved, setup),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
