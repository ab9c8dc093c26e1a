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
#include "pkcs11/p11v3.h"

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

/* ------------------------------------------------------------------ */
/* gcm-iv: the ways FIPS-mode HSMs make AES-GCM IVs themselves. */

static const CK_BYTE PT[32] = "thirty-two bytes of a plaintext";
static const CK_BYTE AAD[] = "kms aad";

static const char *const GCM_RULES[] = {
	"C_EncryptInit gcm-iv writeback\n",
	"C_EncryptInit gcm-iv append\n",
	"C_EncryptInit gcm-iv append12\n",
	"C_EncryptInit gcm-iv message\n",
};

static int
all_zero(const CK_BYTE *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] != 0)
			return 0;
	return 1;
}

static void
login(CK_SESSION_HANDLE h)
{
	CK_RV rv;

	rv = fn->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
	if (rv != CKR_USER_ALREADY_LOGGED_IN)
		assert_int_equal(rv, CKR_OK);
}

/* A logged-in session and an AES session key on it. */
static CK_SESSION_HANDLE
gcm_session(CK_OBJECT_HANDLE *key)
{
	CK_SESSION_HANDLE h = open_session();

	login(h);
	*key = session_aes_key(h);
	return h;
}

static void
gcm_mech(CK_MECHANISM *m, CK_GCM_PARAMS *g, CK_BYTE *iv, CK_ULONG ivlen,
    const CK_BYTE *aad, CK_ULONG aadlen)
{
	memset(g, 0, sizeof(*g));
	g->pIv = iv;
	g->ulIvLen = ivlen;
	g->ulIvBits = 8 * ivlen;
	g->pAAD = (CK_BYTE_PTR)aad;
	g->ulAADLen = aadlen;
	g->ulTagBits = 128;
	m->mechanism = CKM_AES_GCM;
	m->pParameter = g;
	m->ulParameterLen = sizeof(*g);
}

/*
 * SoftHSM itself (not through faultmod or p11-kit): the instance faultmod
 * forwards to, so the session and key handles of the tests are its own.
 */
static CK_FUNCTION_LIST *
softhsm(void)
{
	static CK_FUNCTION_LIST *real;
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	const char *path;
	void *dl;

	if (real != NULL)
		return real;
	if ((path = getenv("P11KMS_TEST_MODULE")) == NULL || *path == '\0')
		path = "/usr/lib/softhsm/libsofthsm2.so";
	assert_non_null(dl = dlopen(path, RTLD_NOW | RTLD_NOLOAD));
	*(void **)&get = dlsym(dl, "C_GetFunctionList");
	assert_non_null(get);
	assert_int_equal(get(&real), CKR_OK);
	assert_true(real != fn);
	return real;	/* dl stays open: faultmod holds it anyway */
}

/* Decrypts ct||tag with plain SoftHSM on session h; the CK_RV. */
static CK_RV
softhsm_open(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k, const CK_BYTE *iv,
    CK_ULONG ivlen, const CK_BYTE *aad, CK_ULONG aadlen, const CK_BYTE *in,
    CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
	CK_BYTE ivc[64];
	CK_GCM_PARAMS g;
	CK_MECHANISM m;
	CK_RV rv;

	assert_true(ivlen <= sizeof(ivc));
	memcpy(ivc, iv, ivlen);
	gcm_mech(&m, &g, ivc, ivlen, aad, aadlen);
	if ((rv = softhsm()->C_DecryptInit(h, &m, k)) != CKR_OK)
		return rv;
	return softhsm()->C_Decrypt(h, (CK_BYTE_PTR)in, inlen, out, outlen);
}

/* Seals PT under a caller IV through faultmod: ct||tag (48 bytes). */
static CK_RV
seal_caller_iv(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k, CK_BYTE *iv,
    CK_ULONG ivlen, CK_BYTE out[48])
{
	CK_GCM_PARAMS g;
	CK_MECHANISM m;
	CK_ULONG n = 48;
	CK_RV rv;

	gcm_mech(&m, &g, iv, ivlen, AAD, sizeof(AAD));
	if ((rv = fn->C_EncryptInit(h, &m, k)) != CKR_OK)
		return rv;
	rv = fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), out, &n);
	if (rv == CKR_OK)
		assert_int_equal(n, 48);
	return rv;
}

/*
 * Every mode refuses a caller's IV at C_EncryptInit and still decrypts
 * with a given one (12 or 16 bytes); other mechanisms are untouched; with
 * the rule gone the caller's IV works again.
 */
static void
test_gcm_iv_caller_iv_refused(void **state)
{
	CK_BYTE iv12[12], iv16[16], ct12[48], ct16[48], ct[48], out[64];
	CK_BYTE cbc_iv[16] = { 7 }, cbc_out[64];
	CK_MECHANISM m, cbc = { CKM_AES_CBC_PAD, cbc_iv, sizeof(cbc_iv) };
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	CK_GCM_PARAMS g;
	CK_ULONG n;
	size_t i;

	(void)state;
	h = gcm_session(&k);
	memset(iv12, 0x5a, sizeof(iv12));
	memset(iv16, 0xa5, sizeof(iv16));
	assert_int_equal(seal_caller_iv(h, k, iv12, 12, ct12), CKR_OK);
	assert_int_equal(seal_caller_iv(h, k, iv16, 16, ct16), CKR_OK);

	for (i = 0; i < sizeof(GCM_RULES) / sizeof(GCM_RULES[0]); i++) {
		control(GCM_RULES[i]);
		assert_int_equal(seal_caller_iv(h, k, iv12, 12, ct),
		    CKR_MECHANISM_PARAM_INVALID);
		/* One non-zero byte, the last, is a caller's IV too. */
		memset(iv16, 0, sizeof(iv16));
		iv16[15] = 1;
		assert_int_equal(seal_caller_iv(h, k, iv16, 16, ct),
		    CKR_MECHANISM_PARAM_INVALID);
		memset(iv16, 0xa5, sizeof(iv16));

		/* Decrypting with a given IV is allowed, 12 or 16 bytes. */
		gcm_mech(&m, &g, iv12, 12, AAD, sizeof(AAD));
		assert_int_equal(fn->C_DecryptInit(h, &m, k), CKR_OK);
		n = sizeof(out);
		assert_int_equal(fn->C_Decrypt(h, ct12, 48, out, &n), CKR_OK);
		assert_int_equal(n, sizeof(PT));
		assert_memory_equal(out, PT, sizeof(PT));
		gcm_mech(&m, &g, iv16, 16, AAD, sizeof(AAD));
		assert_int_equal(fn->C_DecryptInit(h, &m, k), CKR_OK);
		n = sizeof(out);
		assert_int_equal(fn->C_Decrypt(h, ct16, 48, out, &n), CKR_OK);
		assert_memory_equal(out, PT, sizeof(PT));

		/* Not GCM: forwarded as it is. */
		assert_int_equal(fn->C_EncryptInit(h, &cbc, k), CKR_OK);
		n = sizeof(cbc_out);
		assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT),
		    cbc_out, &n), CKR_OK);
		assert_int_equal(n, 48);
	}

	/* Message mode refuses 2.40 GCM encryption whatever the IV. */
	memset(iv12, 0, sizeof(iv12));
	assert_int_equal(seal_caller_iv(h, k, iv12, 12, ct),
	    CKR_MECHANISM_PARAM_INVALID);
	assert_int_equal(seal_caller_iv(h, k, NULL, 0, ct),
	    CKR_MECHANISM_PARAM_INVALID);

	control("");
	memset(iv12, 0x5a, sizeof(iv12));
	assert_int_equal(seal_caller_iv(h, k, iv12, 12, ct), CKR_OK);
	assert_memory_equal(ct, ct12, sizeof(ct));	/* same key, IV, AAD */
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_gcm_iv_writeback(void **state)
{
	CK_BYTE iv[16], first[16], ct[64], out[64];
	CK_ULONG ivlen, n;
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	CK_GCM_PARAMS g;
	CK_MECHANISM m;

	(void)state;
	h = gcm_session(&k);
	control("C_EncryptInit gcm-iv writeback\n");
	for (ivlen = 12; ivlen <= 16; ivlen += 4) {
		memset(iv, 0, sizeof(iv));
		gcm_mech(&m, &g, iv, ivlen, AAD, sizeof(AAD));
		assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
		assert_false(all_zero(iv, ivlen));
		assert_true(all_zero(iv + ivlen, sizeof(iv) - ivlen));
		n = sizeof(ct);
		assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT),
		    ct, &n), CKR_OK);
		assert_int_equal(n, sizeof(PT) + 16);	/* nothing appended */

		/* Plain SoftHSM opens it with the written IV and the AAD. */
		n = sizeof(out);
		assert_int_equal(softhsm_open(h, k, iv, ivlen, AAD,
		    sizeof(AAD), ct, sizeof(PT) + 16, out, &n), CKR_OK);
		assert_int_equal(n, sizeof(PT));
		assert_memory_equal(out, PT, sizeof(PT));
		n = sizeof(out);
		assert_int_not_equal(softhsm_open(h, k, iv, ivlen, AAD,
		    sizeof(AAD) - 1, ct, sizeof(PT) + 16, out, &n), CKR_OK);
		if (ivlen == 12)
			memcpy(first, iv, 12);
	}
	/* A fresh IV each time. */
	memset(iv, 0, sizeof(iv));
	gcm_mech(&m, &g, iv, 12, AAD, sizeof(AAD));
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	assert_memory_not_equal(iv, first, 12);
	n = sizeof(ct);
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), ct, &n),
	    CKR_OK);

	/* No room for the IV, or none given: refused, pIv left alone. */
	memset(iv, 0, sizeof(iv));
	gcm_mech(&m, &g, iv, 8, AAD, sizeof(AAD));
	assert_int_equal(fn->C_EncryptInit(h, &m, k),
	    CKR_MECHANISM_PARAM_INVALID);
	assert_true(all_zero(iv, sizeof(iv)));
	gcm_mech(&m, &g, NULL, 0, AAD, sizeof(AAD));
	assert_int_equal(fn->C_EncryptInit(h, &m, k),
	    CKR_MECHANISM_PARAM_INVALID);
	/* SoftHSM refuses the init (no such key): pIv zero again. */
	gcm_mech(&m, &g, iv, 12, AAD, sizeof(AAD));
	assert_int_not_equal(fn->C_EncryptInit(h, &m, k + 1000), CKR_OK);
	assert_true(all_zero(iv, sizeof(iv)));
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

/* One append mode: rule text and the IV length it appends. */
static void
append_case(const char *rule, CK_ULONG ivlen)
{
	const CK_ULONG body = sizeof(PT) + 16, total = body + ivlen;
	CK_BYTE ct[96], ct2[96], out[96], zero_iv[12] = { 0 };
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	CK_GCM_PARAMS g;
	CK_MECHANISM m;
	CK_ULONG n;

	h = gcm_session(&k);
	control(rule);
	gcm_mech(&m, &g, NULL, 0, AAD, sizeof(AAD));
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = 0;
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), NULL,
	    &n), CKR_OK);
	assert_int_equal(n, total);
	/* Room for ct||tag only: too small, the operation stays active. */
	n = body;
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), ct, &n),
	    CKR_BUFFER_TOO_SMALL);
	assert_int_equal(n, total);
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OPERATION_ACTIVE);
	n = total;
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), ct, &n),
	    CKR_OK);
	assert_int_equal(n, total);
	assert_false(all_zero(ct + body, ivlen));
	/* ct||tag opens with plain SoftHSM under the appended IV. */
	n = sizeof(out);
	assert_int_equal(softhsm_open(h, k, ct + body, ivlen, AAD,
	    sizeof(AAD), ct, body, out, &n), CKR_OK);
	assert_int_equal(n, sizeof(PT));
	assert_memory_equal(out, PT, sizeof(PT));

	/* An all-zero pIv asks for a generated IV too; it is not written. */
	gcm_mech(&m, &g, zero_iv, sizeof(zero_iv), AAD, sizeof(AAD));
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct2);	/* bigger than needed: the length is set */
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), ct2,
	    &n), CKR_OK);
	assert_int_equal(n, total);
	assert_true(all_zero(zero_iv, sizeof(zero_iv)));
	assert_memory_not_equal(ct2 + body, ct + body, ivlen);
	n = sizeof(out);
	assert_int_equal(softhsm_open(h, k, ct2 + body, ivlen, AAD,
	    sizeof(AAD), ct2, body, out, &n), CKR_OK);
	assert_memory_equal(out, PT, sizeof(PT));

	/* Multi-part is not offered, and ends the operation. */
	gcm_mech(&m, &g, NULL, 0, AAD, sizeof(AAD));
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_EncryptUpdate(h, (CK_BYTE_PTR)PT, sizeof(PT),
	    ct, &n), CKR_FUNCTION_NOT_SUPPORTED);
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_EncryptFinal(h, ct, &n),
	    CKR_FUNCTION_NOT_SUPPORTED);
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	n = sizeof(ct);
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), ct, &n),
	    CKR_OK);
	assert_int_equal(n, total);

	/* An injected C_Encrypt failure ends it too (no IV left behind). */
	control(rule);
	assert_int_equal(fn->C_EncryptInit(h, &m, k), CKR_OK);
	control("C_Encrypt CKR_DEVICE_ERROR 1\n");
	n = sizeof(ct);
	assert_int_equal(fn->C_Encrypt(h, (CK_BYTE_PTR)PT, sizeof(PT), ct, &n),
	    CKR_DEVICE_ERROR);

	/* Rule gone: a caller's IV, nothing appended. */
	control("");
	assert_int_equal(seal_caller_iv(h, k, ct, 12, out), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
}

static void
test_gcm_iv_append(void **state)
{
	(void)state;
	append_case("C_EncryptInit gcm-iv append\n", 16);
}

static void
test_gcm_iv_append12(void **state)
{
	(void)state;
	append_case("# older ProtectServer\nC_EncryptInit gcm-iv append12\n",
	    12);
}

/* The 3.0 entry points, found the way p11kms finds them. */
struct v3 {
	void *dl;
	P11V3_C_GetInterface get;
	P11V3_C_GetInterfaceList list;
};

/*
 * p11kms holds only p11-kit's managed list: p11_kit_module_get_filename,
 * dlopen(RTLD_NOLOAD), dlsym.
 */
static void
v3_open(struct v3 *v)
{
	char *file;

	assert_non_null(file = p11_kit_module_get_filename(fn));
	assert_string_equal(file, so_path);
	v->dl = dlopen(file, RTLD_NOW | RTLD_NOLOAD);
	free(file);
	assert_non_null(v->dl);
	*(void **)&v->get = dlsym(v->dl, "C_GetInterface");
	*(void **)&v->list = dlsym(v->dl, "C_GetInterfaceList");
	assert_non_null(v->get);
	assert_non_null(v->list);
}

static void
v3_close(struct v3 *v)
{
	assert_int_equal(dlclose(v->dl), 0);
}

/* The 3.0 function list under a message rule. */
static P11V3_FUNCTION_LIST *
v3_list(struct v3 *v)
{
	CK_VERSION want = { 3, 0 };
	P11V3_INTERFACE *i = NULL;

	assert_int_equal(v->get((CK_UTF8CHAR *)"PKCS 11", &want, &i, 0),
	    CKR_OK);
	assert_non_null(i);
	return i->pFunctionList;
}

static void
msg_params(P11V3_GCM_MESSAGE_PARAMS *p, CK_BYTE *iv, CK_BYTE *tag)
{
	memset(p, 0, sizeof(*p));
	p->pIv = iv;
	p->ulIvLen = 12;
	p->ulIvFixedBits = 0;
	p->ivGenerator = CKG_GENERATE_RANDOM;
	p->pTag = tag;
	p->ulTagBits = 128;
}

static void
test_gcm_iv_message(void **state)
{
	CK_BYTE iv[12], iv2[12], tag[16], ct[32], ct2[32], out[64], in[48];
	CK_MECHANISM gcm = { CKM_AES_GCM, NULL, 0 };
	CK_MECHANISM cbc = { CKM_AES_CBC_PAD, NULL, 0 };
	CK_VERSION v240 = { 2, 40 }, v30 = { 3, 0 };
	P11V3_GCM_MESSAGE_PARAMS mp, dp;
	P11V3_INTERFACE ifs[4], *i1 = NULL, *i2 = NULL;
	P11V3_FUNCTION_LIST *f3;
	CK_FUNCTION_LIST *f2;
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	long long calls;
	struct v3 v;
	CK_ULONG n;

	(void)state;
	h = gcm_session(&k);
	v3_open(&v);
	control("C_EncryptInit gcm-iv message\n");

	/* On offer: 3.0 first, then 2.40. */
	assert_int_equal(v.list(NULL, &n), CKR_OK);
	assert_int_equal(n, 2);
	n = 1;
	assert_int_equal(v.list(ifs, &n), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(n, 2);
	n = 4;
	assert_int_equal(v.list(ifs, &n), CKR_OK);
	assert_int_equal(n, 2);
	assert_string_equal((char *)ifs[0].pInterfaceName, "PKCS 11");
	assert_int_equal(((CK_VERSION *)ifs[0].pFunctionList)->major, 3);
	assert_int_equal(((CK_VERSION *)ifs[1].pFunctionList)->major, 2);

	assert_int_equal(v.get(NULL, NULL, &i1, 0), CKR_OK);
	f3 = i1->pFunctionList;
	assert_int_equal(f3->v2.version.major, 3);
	assert_int_equal(f3->v2.version.minor, 0);
	assert_ptr_equal(v3_list(&v), f3);
	assert_int_equal(v.get(NULL, &v240, &i2, 0), CKR_OK);
	f2 = i2->pFunctionList;
	assert_int_equal(f2->version.major, 2);
	assert_int_equal(f2->version.minor, 40);
	assert_int_equal(v.get((CK_UTF8CHAR *)"Vendor X", &v30, &i2, 0),
	    CKR_ARGUMENTS_BAD);
	assert_int_equal(v.get(NULL, &v30, NULL, 0), CKR_ARGUMENTS_BAD);

	/* The 2.40 part is faultmod's own: counted. */
	calls = count_of("C_GenerateRandom");
	assert_int_equal(f3->v2.C_GenerateRandom(h, iv, sizeof(iv)), CKR_OK);
	assert_int_equal(count_of("C_GenerateRandom"), calls + 1);
	assert_ptr_equal(f3->v2.C_GenerateRandom, f2->C_GenerateRandom);

	/* Encryption. */
	memset(iv, 0, sizeof(iv));
	memset(tag, 0, sizeof(tag));
	msg_params(&mp, iv, tag);
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct,
	    &n), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(f3->C_MessageEncryptInit(h, &cbc, k),
	    CKR_MECHANISM_INVALID);
	assert_int_not_equal(f3->C_MessageEncryptInit(h, &gcm, k + 1000),
	    CKR_OK);
	assert_int_equal(f3->C_MessageEncryptInit(h, &gcm, k), CKR_OK);
	assert_int_equal(f3->C_MessageEncryptInit(h, &gcm, k),
	    CKR_OPERATION_ACTIVE);
	n = 0;
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), NULL,
	    &n), CKR_OK);
	assert_int_equal(n, sizeof(PT));
	n = sizeof(PT) - 1;
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct,
	    &n), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(n, sizeof(PT));
	assert_true(all_zero(iv, sizeof(iv)));
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct,
	    &n), CKR_OK);
	assert_int_equal(n, sizeof(PT));
	assert_false(all_zero(iv, sizeof(iv)));
	assert_false(all_zero(tag, sizeof(tag)));
	assert_memory_not_equal(ct, PT, sizeof(PT));

	/* A second message: its own IV. */
	memset(iv2, 0, sizeof(iv2));
	msg_params(&mp, iv2, in + 32);
	n = sizeof(ct2);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct2,
	    &n), CKR_OK);
	assert_memory_not_equal(iv, iv2, sizeof(iv));
	assert_memory_not_equal(ct, ct2, sizeof(ct));

	/* The caller may not choose the IV, not even part of it. */
	msg_params(&mp, iv2, in + 32);
	mp.ivGenerator = CKG_NO_GENERATE;
	n = sizeof(ct2);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct2,
	    &n), CKR_MECHANISM_PARAM_INVALID);
	msg_params(&mp, iv2, in + 32);
	mp.ulIvFixedBits = 32;
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct2,
	    &n), CKR_MECHANISM_PARAM_INVALID);
	assert_int_equal(f3->C_MessageEncryptFinal(h), CKR_OK);
	msg_params(&mp, iv2, in + 32);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct2,
	    &n), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(f3->C_MessageEncryptFinal(h),
	    CKR_OPERATION_NOT_INITIALIZED);

	/* Decryption, with the IV and tag the token gave. */
	msg_params(&dp, iv, tag);
	n = sizeof(out);
	assert_int_equal(f3->C_DecryptMessage(h, &dp, sizeof(dp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n),
	    CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(f3->C_MessageDecryptInit(h, &gcm, k), CKR_OK);
	n = sizeof(out);
	assert_int_equal(f3->C_DecryptMessage(h, &dp, sizeof(dp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n), CKR_OK);
	assert_int_equal(n, sizeof(PT));
	assert_memory_equal(out, PT, sizeof(PT));
	n = sizeof(PT) - 1;
	assert_int_equal(f3->C_DecryptMessage(h, &dp, sizeof(dp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n),
	    CKR_BUFFER_TOO_SMALL);
	assert_int_equal(n, sizeof(PT));
	/* A changed tag or AAD fails; the operation goes on. */
	tag[3] ^= 1;
	n = sizeof(out);
	assert_int_not_equal(f3->C_DecryptMessage(h, &dp, sizeof(dp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n), CKR_OK);
	tag[3] ^= 1;
	n = sizeof(out);
	assert_int_not_equal(f3->C_DecryptMessage(h, &dp, sizeof(dp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD) - 1, ct, sizeof(ct), out, &n),
	    CKR_OK);
	memset(out, 0, sizeof(out));
	n = sizeof(out);
	assert_int_equal(f3->C_DecryptMessage(h, &dp, sizeof(dp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n), CKR_OK);
	assert_memory_equal(out, PT, sizeof(PT));
	assert_int_equal(f3->C_MessageDecryptFinal(h), CKR_OK);
	assert_int_equal(f3->C_MessageDecryptFinal(h),
	    CKR_OPERATION_NOT_INITIALIZED);

	/* Plain SoftHSM opens ct||tag under the IV. */
	memcpy(in, ct, 32);
	memcpy(in + 32, tag, 16);
	n = sizeof(out);
	memset(out, 0, sizeof(out));
	assert_int_equal(softhsm_open(h, k, iv, sizeof(iv), AAD, sizeof(AAD),
	    in, sizeof(in), out, &n), CKR_OK);
	assert_int_equal(n, sizeof(PT));
	assert_memory_equal(out, PT, sizeof(PT));

	/* The rest of 3.0 is not offered. */
	assert_int_equal(f3->C_EncryptMessageBegin(h, &mp, sizeof(mp), NULL,
	    0), CKR_FUNCTION_NOT_SUPPORTED);
	assert_int_equal(f3->C_LoginUser(h, CKU_USER, (CK_UTF8CHAR *)PIN,
	    strlen(PIN), (CK_UTF8CHAR *)"u", 1), CKR_FUNCTION_NOT_SUPPORTED);
	assert_int_equal(f3->C_MessageSignInit(h, &gcm, k),
	    CKR_FUNCTION_NOT_SUPPORTED);

	/* The counts file has the 3.0 calls under their names. */
	assert_true(count_of("C_EncryptMessage") >= 7);
	assert_true(count_of("C_DecryptMessage") >= 6);
	assert_true(count_of("C_MessageEncryptInit") >= 4);
	assert_true(count_of("C_MessageDecryptFinal") >= 2);
	assert_true(count_of("C_GetInterface") >= 4);
	assert_true(count_of("C_GetInterfaceList") >= 3);
	assert_true(count_of("C_EncryptMessageBegin") >= 1);
	assert_true(count_of("C_MessageVerifyFinal") >= 0);

	control("");
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
	v3_close(&v);
}

/*
 * Without the message rule only 2.40 is on offer; a caller that holds the
 * 3.0 list keeps it working.
 */
static void
test_gcm_iv_message_rule_removed(void **state)
{
	CK_BYTE iv[12] = { 0 }, tag[16], ct[32], ct2[48];
	CK_MECHANISM gcm = { CKM_AES_GCM, NULL, 0 };
	CK_VERSION v30 = { 3, 0 };
	CK_FUNCTION_LIST *plain = NULL;
	P11V3_GCM_MESSAGE_PARAMS mp;
	P11V3_INTERFACE ifs[2], *i = NULL;
	P11V3_FUNCTION_LIST *f3;
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	struct v3 v;
	CK_ULONG n;

	(void)state;
	h = gcm_session(&k);
	v3_open(&v);
	*(void **)&get = dlsym(v.dl, "C_GetFunctionList");
	assert_non_null(get);
	assert_int_equal(get(&plain), CKR_OK);

	control("C_EncryptInit gcm-iv message\n");
	f3 = v3_list(&v);
	assert_int_equal(f3->C_MessageEncryptInit(h, &gcm, k), CKR_OK);

	control("");
	assert_int_equal(v.get(NULL, &v30, &i, 0), CKR_ARGUMENTS_BAD);
	assert_int_equal(v.get((CK_UTF8CHAR *)"PKCS 11", &v30, &i, 0),
	    CKR_ARGUMENTS_BAD);
	assert_int_equal(v.get(NULL, NULL, &i, 0), CKR_OK);
	assert_ptr_equal(i->pFunctionList, plain);
	assert_int_equal(plain->version.major, 2);
	assert_int_equal(plain->version.minor, 40);
	n = 2;
	assert_int_equal(v.list(ifs, &n), CKR_OK);
	assert_int_equal(n, 1);
	assert_ptr_equal(ifs[0].pFunctionList, plain);

	/* Caller IVs are accepted again. */
	memset(iv, 0x33, sizeof(iv));
	assert_int_equal(seal_caller_iv(h, k, iv, sizeof(iv), ct2), CKR_OK);

	/* The list already handed out still works. */
	memset(iv, 0, sizeof(iv));
	msg_params(&mp, iv, tag);
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp), NULL, 0,
	    (CK_BYTE_PTR)PT, sizeof(PT), ct, &n), CKR_OK);
	assert_false(all_zero(iv, sizeof(iv)));
	assert_int_equal(f3->C_MessageEncryptFinal(h), CKR_OK);
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
	v3_close(&v);
}

/* Fail rules name the 3.0 functions; '*' hits them, not C_GetInterface. */
static void
test_gcm_iv_message_faults(void **state)
{
	CK_BYTE iv[12], tag[16], ct[32];
	CK_MECHANISM gcm = { CKM_AES_GCM, NULL, 0 };
	P11V3_GCM_MESSAGE_PARAMS mp;
	P11V3_FUNCTION_LIST *f3;
	P11V3_INTERFACE *i = NULL;
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	long long before;
	struct v3 v;
	CK_ULONG n;

	(void)state;
	h = gcm_session(&k);
	v3_open(&v);
	control("C_EncryptInit gcm-iv message\n");
	f3 = v3_list(&v);
	assert_int_equal(f3->C_MessageEncryptInit(h, &gcm, k), CKR_OK);

	control("C_EncryptInit gcm-iv message\n"
	    "C_EncryptMessage CKR_DEVICE_REMOVED 1\n");
	before = count_of("C_EncryptMessage");
	memset(iv, 0, sizeof(iv));
	msg_params(&mp, iv, tag);
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp), NULL, 0,
	    (CK_BYTE_PTR)PT, sizeof(PT), ct, &n), CKR_DEVICE_REMOVED);
	assert_true(all_zero(iv, sizeof(iv)));
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp), NULL, 0,
	    (CK_BYTE_PTR)PT, sizeof(PT), ct, &n), CKR_OK);
	assert_false(all_zero(iv, sizeof(iv)));
	assert_int_equal(count_of("C_EncryptMessage"), before + 2);

	control("C_EncryptInit gcm-iv message\n* CKR_DEVICE_ERROR\n");
	assert_int_equal(v.get(NULL, NULL, &i, 0), CKR_OK);
	assert_ptr_equal(i->pFunctionList, f3);
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp), NULL, 0,
	    (CK_BYTE_PTR)PT, sizeof(PT), ct, &n), CKR_DEVICE_ERROR);
	assert_int_equal(f3->C_MessageEncryptFinal(h), CKR_DEVICE_ERROR);
	assert_int_equal(f3->C_LoginUser(h, CKU_USER, NULL, 0, NULL, 0),
	    CKR_DEVICE_ERROR);

	control("C_EncryptInit gcm-iv message\n"
	    "C_GetInterface CKR_GENERAL_ERROR 1\n");
	assert_int_equal(v.get(NULL, NULL, &i, 0), CKR_GENERAL_ERROR);
	assert_int_equal(v.get(NULL, NULL, &i, 0), CKR_OK);

	control("C_EncryptInit gcm-iv message\n");
	assert_int_equal(f3->C_MessageEncryptFinal(h), CKR_OK);
	control("");
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
	v3_close(&v);
}

/*
 * p11kms opens sessions and finds keys through p11-kit's managed wrapper
 * and uses the handles with the 3.0 list it got from the module itself:
 * the handles must pass through p11-kit unchanged. The token key (found by
 * label) seals and opens; the session closed through p11-kit is gone for
 * the 3.0 list too.
 */
static void
test_gcm_iv_managed_handles(void **state)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE find[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_LABEL, "kek1", 4 },
	};
	CK_BYTE iv[12] = { 0 }, tag[16], ct[32], out[32];
	CK_MECHANISM gcm = { CKM_AES_GCM, NULL, 0 };
	P11V3_GCM_MESSAGE_PARAMS mp;
	P11V3_FUNCTION_LIST *f3;
	CK_SESSION_HANDLE h;
	CK_SESSION_INFO si;
	CK_OBJECT_HANDLE kek;
	struct v3 v;
	CK_ULONG n;

	(void)state;
	h = open_session();
	login(h);
	assert_int_equal(fn->C_FindObjectsInit(h, find, 3), CKR_OK);
	assert_int_equal(fn->C_FindObjects(h, &kek, 1, &n), CKR_OK);
	assert_int_equal(n, 1);
	assert_int_equal(fn->C_FindObjectsFinal(h), CKR_OK);

	v3_open(&v);
	control("C_EncryptInit gcm-iv message\n");
	f3 = v3_list(&v);
	/* The same session, seen directly by faultmod and by SoftHSM. */
	assert_int_equal(f3->v2.C_GetSessionInfo(h, &si), CKR_OK);
	assert_int_equal(si.slotID, slot);
	assert_int_equal(softhsm()->C_GetSessionInfo(h, &si), CKR_OK);

	assert_int_equal(f3->C_MessageEncryptInit(h, &gcm, kek), CKR_OK);
	msg_params(&mp, iv, tag);
	n = sizeof(ct);
	assert_int_equal(f3->C_EncryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), (CK_BYTE_PTR)PT, sizeof(PT), ct,
	    &n), CKR_OK);
	assert_int_equal(f3->C_MessageEncryptFinal(h), CKR_OK);
	assert_int_equal(f3->C_MessageDecryptInit(h, &gcm, kek), CKR_OK);
	n = sizeof(out);
	assert_int_equal(f3->C_DecryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n), CKR_OK);
	assert_memory_equal(out, PT, sizeof(PT));

	/* Closed through p11-kit: gone for the 3.0 list and its state. */
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
	assert_int_equal(f3->v2.C_GetSessionInfo(h, &si),
	    CKR_SESSION_HANDLE_INVALID);
	n = sizeof(out);
	assert_int_equal(f3->C_DecryptMessage(h, &mp, sizeof(mp),
	    (CK_BYTE_PTR)AAD, sizeof(AAD), ct, sizeof(ct), out, &n),
	    CKR_OPERATION_NOT_INITIALIZED);
	control("");
	v3_close(&v);
}

#define MSG_THREADS	4
#define MSG_SESSIONS	5	/* per thread: more than the first table */
#define MSG_ROUNDS	40

struct msg_arg {
	P11V3_FUNCTION_LIST *f3;
	CK_SESSION_HANDLE h[MSG_SESSIONS];
	CK_OBJECT_HANDLE k;
	int bad;
};

static void *
msg_worker(void *p)
{
	CK_MECHANISM gcm = { CKM_AES_GCM, NULL, 0 };
	CK_BYTE iv[12], tag[16], ct[32], out[32];
	struct msg_arg *a = p;
	P11V3_GCM_MESSAGE_PARAMS mp;
	CK_ULONG n;
	int i, s;

	for (s = 0; s < MSG_SESSIONS; s++) {
		if (a->f3->C_MessageEncryptInit(a->h[s], &gcm, a->k) !=
		    CKR_OK || a->f3->C_MessageDecryptInit(a->h[s], &gcm,
		    a->k) != CKR_OK)
			a->bad++;
	}
	for (i = 0; i < MSG_ROUNDS; i++) {
		s = i % MSG_SESSIONS;
		memset(iv, 0, sizeof(iv));
		msg_params(&mp, iv, tag);
		n = sizeof(ct);
		if (a->f3->C_EncryptMessage(a->h[s], &mp, sizeof(mp), NULL, 0,
		    (CK_BYTE_PTR)PT, sizeof(PT), ct, &n) != CKR_OK) {
			a->bad++;
			continue;
		}
		n = sizeof(out);
		if (a->f3->C_DecryptMessage(a->h[s], &mp, sizeof(mp), NULL, 0,
		    ct, sizeof(ct), out, &n) != CKR_OK ||
		    memcmp(out, PT, sizeof(PT)) != 0)
			a->bad++;
	}
	for (s = 0; s < MSG_SESSIONS; s++) {
		if (a->f3->C_MessageEncryptFinal(a->h[s]) != CKR_OK ||
		    a->f3->C_MessageDecryptFinal(a->h[s]) != CKR_OK)
			a->bad++;
	}
	return NULL;
}

/* Message operations on many sessions at once keep to their session. */
static void
test_gcm_iv_message_threads(void **state)
{
	struct msg_arg a[MSG_THREADS];
	pthread_t th[MSG_THREADS];
	CK_SESSION_HANDLE h0;
	CK_OBJECT_HANDLE k;
	struct v3 v;
	int i, s;

	(void)state;
	h0 = gcm_session(&k);
	v3_open(&v);
	control("C_EncryptInit gcm-iv message\n");
	memset(a, 0, sizeof(a));
	for (i = 0; i < MSG_THREADS; i++) {
		a[i].f3 = v3_list(&v);
		a[i].k = k;
		for (s = 0; s < MSG_SESSIONS; s++)
			a[i].h[s] = open_session();
	}
	for (i = 0; i < MSG_THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, msg_worker,
		    &a[i]), 0);
	for (i = 0; i < MSG_THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(a[i].bad, 0);
		for (s = 0; s < MSG_SESSIONS; s++)
			assert_int_equal(fn->C_CloseSession(a[i].h[s]),
			    CKR_OK);
	}
	control("");
	assert_int_equal(fn->C_CloseSession(h0), CKR_OK);
	v3_close(&v);
}

/*
 * C_CloseAllSessions drops the message state of the slot's sessions: an
 * old handle is "not initialized", not handed to SoftHSM. (p11-kit's
 * managed C_CloseAllSessions closes its sessions one by one, so call the
 * module's own.)
 */
static void
test_gcm_iv_close_all_drops_state(void **state)
{
	CK_MECHANISM gcm = { CKM_AES_GCM, NULL, 0 };
	CK_BYTE iv[12] = { 0 }, tag[16], ct[32];
	P11V3_GCM_MESSAGE_PARAMS mp;
	P11V3_FUNCTION_LIST *f3;
	CK_SESSION_HANDLE h[3];
	CK_OBJECT_HANDLE k;
	struct v3 v;
	CK_ULONG n;
	int i;

	(void)state;
	h[0] = gcm_session(&k);
	h[1] = open_session();
	h[2] = open_session();
	v3_open(&v);
	control("C_EncryptInit gcm-iv message\n");
	f3 = v3_list(&v);
	for (i = 0; i < 3; i++)
		assert_int_equal(f3->C_MessageEncryptInit(h[i], &gcm, k),
		    CKR_OK);
	assert_int_equal(f3->v2.C_CloseAllSessions(slot), CKR_OK);
	msg_params(&mp, iv, tag);
	for (i = 0; i < 3; i++) {
		n = sizeof(ct);
		assert_int_equal(f3->C_EncryptMessage(h[i], &mp, sizeof(mp),
		    NULL, 0, (CK_BYTE_PTR)PT, sizeof(PT), ct, &n),
		    CKR_OPERATION_NOT_INITIALIZED);
		/* p11-kit still tracks them: let it forget them. */
		assert_int_not_equal(fn->C_CloseSession(h[i]), CKR_OK);
	}
	control("");
	v3_close(&v);
}

/* gcm-iv lines that name the wrong function or mode are refused. */
static void
test_gcm_iv_bad_lines(void **state)
{
	char errpath[PATH_MAX + 16], text[4096], want[32];
	CK_BYTE iv[12], ct[48];
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE k;
	int saved, i;

	(void)state;
	h = gcm_session(&k);
	PATHF(errpath, "%s/stderr-gcm.txt", base);
	saved = stderr_to(errpath);
	control("* gcm-iv append\n"
	    "C_Encrypt gcm-iv append\n"
	    "C_EncryptInit gcm-iv\n"
	    "C_EncryptInit gcm-iv sideways\n"
	    "C_EncryptInit gcm-iv append 16\n"
	    "C_EncryptMessage CKR_DEVICE_ERROR 1\n"
	    "C_EncryptMessageX CKR_DEVICE_ERROR\n");
	memset(iv, 0x44, sizeof(iv));
	assert_int_equal(seal_caller_iv(h, k, iv, sizeof(iv), ct), CKR_OK);
	stderr_restore(saved, errpath, text, sizeof(text));
	for (i = 1; i <= 7; i++) {
		PATHF(want, "p11kms-fault: line %d: ", i);
		if ((strstr(text, want) == NULL) != (i == 6))
			fail_msg("line %d: %s", i, text);
	}
	control("");
	assert_int_equal(fn->C_CloseSession(h), CKR_OK);
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
		cmocka_unit_test_setup(test_gcm_iv_caller_iv_refused, setup),
		cmocka_unit_test_setup(test_gcm_iv_writeback, setup),
		cmocka_unit_test_setup(test_gcm_iv_append, setup),
		cmocka_unit_test_setup(test_gcm_iv_append12, setup),
		cmocka_unit_test_setup(test_gcm_iv_message, setup),
		cmocka_unit_test_setup(test_gcm_iv_message_rule_removed, setup),
		cmocka_unit_test_setup(test_gcm_iv_message_faults, setup),
		cmocka_unit_test_setup(test_gcm_iv_managed_handles, setup),
		cmocka_unit_test_setup(test_gcm_iv_message_threads, setup),
		cmocka_unit_test_setup(test_gcm_iv_close_all_drops_state,
		    setup),
		cmocka_unit_test_setup(test_gcm_iv_bad_lines, setup),
		cmocka_unit_test_setup(test_stderr_rule, setup),
		cmocka_unit_test_setup(test_require_reserved, setup),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
