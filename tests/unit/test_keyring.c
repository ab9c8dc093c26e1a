/*
 * Unit tests for pkcs11/keyring.c, token.c and keyid.c against a real
 * SoftHSM token. Every token lives under one mkdtemp directory made by the
 * group setup (with tests/mktoken.sh) and removed by the group teardown.
 *
 * Environment: P11KMS_SRCDIR (repo root, default "."), P11KMS_TEST_MODULE
 * (default /usr/lib/softhsm/libsofthsm2.so), TMPDIR.
 *
 * SoftHSM reads SOFTHSM2_CONF when it is initialized, and p11-kit shares
 * one initialization among all keyrings of a process: a test that switches
 * token directory frees every keyring first.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE	/* nftw, mkdtemp */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/unit/tokentest.h"

#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "pkcs11/envelope.h"
#include "pkcs11/keyid.h"
#include "pkcs11/keyring.h"
#include "pkcs11/pool.h"
#include "pkcs11/token.h"

#define HDR_LEN	(ENVELOPE_FIXED_LEN + 12)
#define TAG_LEN	16

static char main_dir[PATH_MAX];		/* token "kms" with all test keys */
static char main_conf[PATH_MAX];
static char main_pin[PATH_MAX];

static const char *const URI_KEK1 =
    "pkcs11:token=kms;object=kek1;type=secret-key";
static const char *const URI_K2 =
    "pkcs11:token=kms;object=k2;type=secret-key";

/* ------------------------------------------------------------------ */


/* A new token directory under base: base/name. */
static void
make_dir_token(const char *name, const char *args, char *dir, size_t cap)
{
	assert_true(snprintf(dir, cap, "%s/%s", tt_base, name) < (int)cap);
	assert_int_equal(tt_mktoken(dir, args), 0);
}


static int
load(const char *const *uris, size_t n, const char *pin_file,
    struct keyring **kr, char *err, size_t errlen)
{
	struct keyring_config cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.module = tt_module;
	cfg.key_uris = uris;
	cfg.nkeys = n;
	cfg.pin_file = pin_file;
	return keyring_load(&cfg, kr, err, errlen);
}

static struct keyring *
load_ok(const char *const *uris, size_t n)
{
	struct keyring *kr = NULL;
	char err[512] = "";
	int r;

	r = load(uris, n, main_pin, &kr, err, sizeof(err));
	if (r != KEYRING_OK)
		fail_msg("keyring_load: %d %s", r, err);
	assert_non_null(kr);
	return kr;
}



static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(chmod(path, 0600), 0);	/* PIN files must be */
}

static void
assert_key_id_form(const char *id)
{
	size_t i;

	assert_int_equal(strlen(id), 32);
	for (i = 0; i < 32; i++)
		assert_true((id[i] >= '0' && id[i] <= '9') ||
		    (id[i] >= 'a' && id[i] <= 'f'));
}


static int
group_teardown(void **state)
{
	(void)state;
	tokentest_teardown();
	return 0;
}

static int
group_setup(void **state)
{
	(void)state;
	if (tokentest_setup("p11kms-test") != 0)
		return -1;
	PATHF(main_dir, "%s/main", tt_base);
	PATHF(main_conf, "%s/softhsm2.conf", main_dir);
	PATHF(main_pin, "%s/pin", main_dir);
	if (tt_mktoken(main_dir, "--label kek1 --id 01") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label k2 --id 02") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label kx --id 09 "
	    "--extractable") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label k128 --id 0a "
	    "--len 16") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label dup --id 0b") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label dup --id 0c") != 0 ||
	    setenv("SOFTHSM2_CONF", main_conf, 1) != 0) {
		/* cmocka skips the group teardown when the setup fails. */
		group_teardown(state);
		return -1;
	}
	return 0;
}

/* Each test starts on the main token, whatever the one before did. */
static int
setup(void **state)
{
	(void)state;
	return setenv("SOFTHSM2_CONF", main_conf, 1);
}

/* ------------------------------------------------------------------ */

static void
test_round_trip(void **state)
{
	static const size_t sizes[] = { 1, 32, 512 };
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[KEYRING_MAX_PLAINTEXT + 1], out[KEYRING_MAX_PLAINTEXT];
	uint8_t ct[KEYRING_MAX_CIPHERTEXT], ct2[KEYRING_MAX_CIPHERTEXT];
	char key_id[KEYRING_KEY_ID_MAX], seen[KEYRING_KEY_ID_MAX];
	size_t ctlen, ctlen2, outlen, i, j;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(keyring_nkeys(kr), 1);
	assert_string_equal(keyring_key_id(kr, 0), keyring_primary_key_id(kr));
	assert_null(keyring_key_id(kr, 1));
	assert_string_equal(keyring_key_desc(kr, 0),
	    "token 'kms' object 'kek1'");
	assert_int_equal(keyring_max_sessions(kr), 0);	/* SoftHSM: no limit */
	assert_int_equal(keyring_hw_slot(kr), 0);	/* a software slot */
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	for (i = 0; i < sizeof(pt); i++)
		pt[i] = (uint8_t)(i * 7 + 3);

	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		memset(key_id, 0, sizeof(key_id));
		assert_int_equal(keyring_seal(w, pt, sizes[i], ct, sizeof(ct),
		    &ctlen, key_id), KEYRING_OK);
		assert_int_equal(ctlen, HDR_LEN + sizes[i] + TAG_LEN);
		assert_true(ctlen <= KEYRING_MAX_CIPHERTEXT);
		assert_string_equal(key_id, keyring_primary_key_id(kr));
		/* The ciphertext does not carry the plaintext in clear. */
		if (sizes[i] >= 32)
			assert_memory_not_equal(ct + HDR_LEN, pt, sizes[i]);

		memset(out, 0, sizeof(out));
		assert_int_equal(keyring_open(w, NULL, ct, ctlen, out,
		    sizeof(out), &outlen, seen), KEYRING_OK);
		assert_int_equal(outlen, sizes[i]);
		assert_memory_equal(out, pt, sizes[i]);

		memset(out, 0, sizeof(out));
		assert_int_equal(keyring_open(w, key_id, ct, ctlen, out,
		    sizeof(out), &outlen, seen), KEYRING_OK);
		assert_int_equal(outlen, sizes[i]);
		assert_memory_equal(out, pt, sizes[i]);

		/* A fresh IV each time: same plaintext, other ciphertext. */
		assert_int_equal(keyring_seal(w, pt, sizes[i], ct2,
		    sizeof(ct2), &ctlen2, NULL), KEYRING_OK);
		assert_int_equal(ctlen2, ctlen);
		assert_memory_not_equal(ct2 + ENVELOPE_FIXED_LEN,
		    ct + ENVELOPE_FIXED_LEN, 12);
	}
	assert_int_equal(keyring_seal(w, pt, KEYRING_MAX_PLAINTEXT + 1, ct,
	    sizeof(ct), &ctlen, key_id), KEYRING_E_TOOBIG);
	assert_int_equal(ctlen, 0);
	assert_int_equal(keyring_seal(w, pt, 0, ct, sizeof(ct), &ctlen,
	    key_id), KEYRING_E_INVALID);
	/* Too small an output buffer is refused before the token runs. */
	assert_int_equal(keyring_seal(w, pt, 32, ct, HDR_LEN + 32 + TAG_LEN - 1,
	    &ctlen, key_id), KEYRING_E_TOOBIG);
	/* ... and the session is still usable afterwards. */
	assert_int_equal(keyring_seal(w, pt, 32, ct, sizeof(ct), &ctlen,
	    key_id), KEYRING_OK);
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, 31, &outlen,
	    NULL), KEYRING_E_TOOBIG);
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, 32, &outlen,
	    NULL), KEYRING_OK);
	for (j = 0; j < 32; j++)
		assert_int_equal(out[j], pt[j]);

	keyring_worker_free(w);
	keyring_free(kr);
	keyring_free(NULL);
	keyring_worker_free(NULL);
}

static void
test_wrong_key_id(void **state)
{
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32] = { 9 }, ct[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	char seen[KEYRING_KEY_ID_MAX];
	size_t ctlen, outlen = 77;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	assert_int_equal(keyring_seal(w, pt, sizeof(pt), ct, sizeof(ct),
	    &ctlen, NULL), KEYRING_OK);

	memset(seen, 'X', sizeof(seen));
	assert_int_equal(keyring_open(w, "00000000000000000000000000000000",
	    ct, ctlen, out, sizeof(out), &outlen, seen),
	    KEYRING_E_UNKNOWN_KEY);
	assert_string_equal(seen, keyring_primary_key_id(kr));
	assert_int_equal(outlen, 0);
	/* key_id_seen may be NULL. */
	assert_int_equal(keyring_open(w, "x", ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_UNKNOWN_KEY);

	/* An envelope naming an unconfigured key: seen = its keyref. */
	memset(ct + 2, 0xab, ENVELOPE_KEYREF_LEN);
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, seen), KEYRING_E_UNKNOWN_KEY);
	assert_string_equal(seen, "abababababababababababababababab");

	keyring_worker_free(w);
	keyring_free(kr);
}

static void
test_bit_flips(void **state)
{
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32], ct[KEYRING_MAX_CIPHERTEXT], bad[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	size_t ctlen, outlen, byte;
	int bit, r, nauth = 0, nunknown = 0, ninvalid = 0;

	(void)state;
	memset(pt, 0x5a, sizeof(pt));
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	assert_int_equal(keyring_seal(w, pt, sizeof(pt), ct, sizeof(ct),
	    &ctlen, NULL), KEYRING_OK);
	for (byte = 0; byte < ctlen; byte++) {
		for (bit = 0; bit < 8; bit++) {
			memcpy(bad, ct, ctlen);
			bad[byte] ^= (uint8_t)(1u << bit);
			outlen = 99;
			r = keyring_open(w, NULL, bad, ctlen, out, sizeof(out),
			    &outlen, NULL);
			if (r == KEYRING_OK)
				fail_msg("flip of byte %zu bit %d opened",
				    byte, bit);
			assert_int_equal(outlen, 0);
			/*
			 * Each part of the envelope fails its own way; the
			 * mechanism byte 0x01 flipped to 0x05 (AES-GCM with
			 * a token IV) is a GCM envelope whose AAD differs.
			 */
			if (byte == 1 && bad[1] == ENVELOPE_MECH_AES_GCM_TIV)
				assert_int_equal(r, KEYRING_E_AUTH);
			else if (byte < 2 || byte == 18)
				assert_int_equal(r, KEYRING_E_INVALID);
			else if (byte < 18)
				assert_int_equal(r, KEYRING_E_UNKNOWN_KEY);
			else
				assert_int_equal(r, KEYRING_E_AUTH);
			nauth += r == KEYRING_E_AUTH;
			nunknown += r == KEYRING_E_UNKNOWN_KEY;
			ninvalid += r == KEYRING_E_INVALID;
		}
	}
	assert_int_equal(nunknown, 16 * 8);
	assert_int_equal(ninvalid, 3 * 8 - 1);
	assert_int_equal(nauth, (int)(ctlen - 19) * 8 + 1);
	/* A failed tag leaves the session fine: the original still opens. */
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	assert_memory_equal(out, pt, sizeof(pt));
	keyring_worker_free(w);
	keyring_free(kr);
}

static void
test_truncated(void **state)
{
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32] = { 1, 2, 3 }, ct[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT], longer[KEYRING_MAX_CIPHERTEXT];
	size_t ctlen, outlen, n;
	int r;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	assert_int_equal(keyring_seal(w, pt, sizeof(pt), ct, sizeof(ct),
	    &ctlen, NULL), KEYRING_OK);
	for (n = 0; n < ctlen; n++) {
		r = keyring_open(w, NULL, ct, n, out, sizeof(out), &outlen,
		    NULL);
		if (r == KEYRING_OK)
			fail_msg("truncation to %zu bytes opened", n);
		/* Short of a full tag plus one byte: malformed, no token. */
		if (n < HDR_LEN + TAG_LEN + 1)
			assert_int_equal(r, KEYRING_E_INVALID);
		else
			assert_int_equal(r, KEYRING_E_AUTH);
	}
	/* Extended by a byte: the tag no longer matches. */
	memcpy(longer, ct, ctlen);
	longer[ctlen] = 0;
	assert_int_equal(keyring_open(w, NULL, longer, ctlen + 1, out,
	    sizeof(out), &outlen, NULL), KEYRING_E_AUTH);
	assert_int_equal(keyring_open(w, NULL, NULL, 0, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_INVALID);
	keyring_worker_free(w);
	keyring_free(kr);
}

static void
test_key_id_stable(void **state)
{
	struct keyring *a, *b;
	struct keyring_worker *w = NULL;
	char id1[KEYRING_KEY_ID_MAX];
	uint8_t pt[32] = { 4 }, ct[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	size_t ctlen, outlen;

	(void)state;
	a = load_ok(&URI_KEK1, 1);
	snprintf(id1, sizeof(id1), "%s", keyring_primary_key_id(a));
	assert_key_id_form(id1);
	keyring_free(a);

	/* A restart (everything finalized) gives the same key_id. */
	a = load_ok(&URI_KEK1, 1);
	assert_string_equal(keyring_primary_key_id(a), id1);
	/* So does a second keyring alive at the same time (reload)... */
	b = load_ok(&URI_KEK1, 1);
	assert_string_equal(keyring_primary_key_id(b), id1);
	/* ... and selecting the key by id rather than label. */
	{
		const char *by_id = "pkcs11:token=kms;id=%01;type=secret-key";
		struct keyring *c = load_ok(&by_id, 1);

		assert_string_equal(keyring_primary_key_id(c), id1);
		keyring_free(c);
	}

	/*
	 * Freeing the old keyring must not log the new one out: login is
	 * per application, shared by both.
	 */
	assert_int_equal(keyring_worker_new(a, &w), KEYRING_OK);
	assert_int_equal(keyring_seal(w, pt, sizeof(pt), ct, sizeof(ct),
	    &ctlen, NULL), KEYRING_OK);
	keyring_worker_free(w);
	keyring_free(a);
	assert_int_equal(keyring_worker_new(b, &w), KEYRING_OK);
	assert_int_equal(keyring_open(w, id1, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	assert_memory_equal(out, pt, sizeof(pt));
	keyring_worker_free(w);
	keyring_free(b);

	/* Another key on the same token gets another key_id. */
	a = load_ok(&URI_K2, 1);
	assert_key_id_form(keyring_primary_key_id(a));
	assert_string_not_equal(keyring_primary_key_id(a), id1);
	keyring_free(a);
}

static void
test_same_names_other_value(void **state)
{
	struct keyring *kr;
	char dir[PATH_MAX], pin[PATH_MAX], err[512];
	char id_main[KEYRING_KEY_ID_MAX];

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	snprintf(id_main, sizeof(id_main), "%s", keyring_primary_key_id(kr));
	keyring_free(kr);

	/* Same token label, key label and id; another key value. */
	make_dir_token("twin", "--label kek1 --id 01", dir, sizeof(dir));
	PATHF(pin, "%s/pin", dir);
	tt_use_conf(dir);
	kr = NULL;
	assert_int_equal(load(&URI_KEK1, 1, pin, &kr, err, sizeof(err)),
	    KEYRING_OK);
	assert_key_id_form(keyring_primary_key_id(kr));
	assert_string_not_equal(keyring_primary_key_id(kr), id_main);
	keyring_free(kr);
}

static void
test_extractable_refused(void **state)
{
	const char *uri = "pkcs11:token=kms;object=kx;type=secret-key";
	struct keyring *kr = (struct keyring *)&kr;
	char err[512] = "";

	(void)state;
	assert_int_equal(load(&uri, 1, main_pin, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "extractable");
	assert_has(err, "CKA_EXTRACTABLE=false");
	assert_has(err, "object=kx");
}

static void
test_aes128_refused(void **state)
{
	const char *uri = "pkcs11:token=kms;object=k128";
	struct keyring *kr = NULL;
	char err[512] = "";

	(void)state;
	assert_int_equal(load(&uri, 1, main_pin, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "AES-256");
	assert_has(err, "CKA_VALUE_LEN=16");
}

static void
test_pin_value_refused(void **state)
{
	static const char *const uris[] = {
		"pkcs11:token=kms;object=kek1?pin-value=24680",
		"pkcs11:token=kms;object=kek1;pin-value=24680",
	};
	struct keyring *kr = NULL;
	char err[512] = "";
	size_t i;

	(void)state;
	for (i = 0; i < 2; i++) {
		/* Refused even with a good pin file at hand. */
		assert_int_equal(load(&uris[i], 1, main_pin, &kr, err,
		    sizeof(err)), KEYRING_E_CONFIG);
		assert_null(kr);
		assert_has(err, "pin-value");
		assert_has(err, "--pin-file");
		assert_has(err, "pin-source");
		assert_has(err, "object=kek1");
		assert_lacks(err, "24680");
	}
}

static void
test_wrong_pin(void **state)
{
	struct keyring *kr = NULL;
	char dir[PATH_MAX], pin[PATH_MAX], err[512] = "";

	(void)state;
	/* Its own token: a refused PIN counts against the token. */
	make_dir_token("wrongpin", "", dir, sizeof(dir));
	tt_use_conf(dir);
	PATHF(pin, "%s/badpin", dir);
	write_file(pin, "97531\n");
	assert_int_equal(load(&URI_KEK1, 1, pin, &kr, err, sizeof(err)),
	    KEYRING_E_PIN);
	assert_null(kr);
	assert_has(err, "CKR_PIN_INCORRECT");
	assert_lacks(err, "97531");

	/* The right PIN still works (not locked by one try). */
	PATHF(pin, "%s/pin", dir);
	assert_int_equal(load(&URI_KEK1, 1, pin, &kr, err, sizeof(err)),
	    KEYRING_OK);
	keyring_free(kr);
}

/* A PIN file others can read or change is refused, whatever it holds. */
static void
test_pin_file_mode(void **state)
{
	static const struct {
		mode_t mode;
		int ok;
	} cases[] = {
		{ 0600, 1 }, { 0400, 1 }, { 0440, 1 }, { 0640, 1 },
		{ 0644, 0 }, { 0604, 0 }, { 0620, 0 }, { 0602, 0 }, { 0666, 0 },
	};
	struct keyring *kr = NULL;
	char pin[PATH_MAX], err[512];
	size_t i;

	(void)state;
	PATHF(pin, "%s/modepin", main_dir);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_file(pin, "1234\n");
		assert_int_equal(chmod(pin, cases[i].mode), 0);
		err[0] = '\0';
		if (cases[i].ok) {
			assert_int_equal(load(&URI_KEK1, 1, pin, &kr, err,
			    sizeof(err)), KEYRING_OK);
			keyring_free(kr);
			kr = NULL;
		} else {
			assert_int_equal(load(&URI_KEK1, 1, pin, &kr, err,
			    sizeof(err)), KEYRING_E_PIN);
			assert_null(kr);
			assert_has(err, "chmod 0400");
			assert_lacks(err, "1234\n");
		}
	}
	unlink(pin);
	/* Not a regular file. */
	assert_int_equal(load(&URI_KEK1, 1, "/dev/null", &kr, err,
	    sizeof(err)), KEYRING_E_PIN);
	assert_has(err, "not a regular file");
}

static void
test_pin_sources(void **state)
{
	struct keyring *kr = NULL;
	char uri[PATH_MAX + 128], path[PATH_MAX], err[512] = "";
	const char *u = uri;

	(void)state;
	/* pin-source as "file:" URI and as a plain path, no pin_file. */
	snprintf(uri, sizeof(uri), "pkcs11:token=kms;object=kek1"
	    "?pin-source=file:%s", main_pin);
	assert_int_equal(load(&u, 1, NULL, &kr, err, sizeof(err)), KEYRING_OK);
	keyring_free(kr);
	snprintf(uri, sizeof(uri), "pkcs11:token=kms;object=kek1"
	    "?pin-source=%s", main_pin);
	assert_int_equal(load(&u, 1, NULL, &kr, err, sizeof(err)), KEYRING_OK);
	keyring_free(kr);

	/* CRLF and no newline at all are both fine. */
	PATHF(path, "%s/pin-crlf", tt_base);
	write_file(path, "1234\r\n");
	assert_int_equal(load(&URI_KEK1, 1, path, &kr, err, sizeof(err)),
	    KEYRING_OK);
	keyring_free(kr);
	write_file(path, "1234");
	assert_int_equal(load(&URI_KEK1, 1, path, &kr, err, sizeof(err)),
	    KEYRING_OK);
	keyring_free(kr);

	/* No PIN anywhere: refused before any login attempt. */
	kr = NULL;
	assert_int_equal(load(&URI_KEK1, 1, NULL, &kr, err, sizeof(err)),
	    KEYRING_E_PIN);
	assert_null(kr);
	assert_has(err, "--pin-file");

	/* Unreadable, empty. */
	PATHF(path, "%s/no-such-pin", tt_base);
	assert_int_equal(load(&URI_KEK1, 1, path, &kr, err, sizeof(err)),
	    KEYRING_E_PIN);
	assert_has(err, "no-such-pin");
	PATHF(path, "%s/pin-empty", tt_base);
	write_file(path, "\n");
	assert_int_equal(load(&URI_KEK1, 1, path, &kr, err, sizeof(err)),
	    KEYRING_E_PIN);
	assert_has(err, "empty");

	/* Schemes other than file: are refused, not read as a path. */
	u = "pkcs11:token=kms;object=kek1?pin-source=https://x/pin";
	assert_int_equal(load(&u, 1, NULL, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
}

static void
test_missing_key(void **state)
{
	const char *uri = "pkcs11:token=kms;object=nosuchkey;type=secret-key";
	struct keyring *kr = NULL;
	char err[512] = "";

	(void)state;
	assert_int_equal(load(&uri, 1, main_pin, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "no secret key matching");
	assert_has(err, "object=nosuchkey");
	assert_has(err, "'kms'");
}

static void
test_bad_uris(void **state)
{
	static const struct {
		const char *uri;
		const char *msg;
	} cases[] = {
		{ "pkcs11:token=kms;object=kek1;colour=blue", "attribute" },
		{ "pkcs11:token=kms;object=kek1;slot-id=1", "slot-id" },
		{ "pkcs11:token=kms;object=kek1;type=public", "secret-key" },
		{ "pkcs11:token=kms;object=kek1;type=cert", "private" },
		{ "pkcs11:token=kms;object=kek1;type=private",
		    "no private key matching" },
		{ "pkcs11:token=kms", "names no key" },
		{ "http://kms/kek1", "pkcs11" },
		{ "pkcs11:token=k%zz;object=kek1", "encoding" },
		{ "pkcs11:token=nosuchtoken;object=kek1", "'kms'" },
		{ "pkcs11:token=kms;object=dup", "ambiguous" },
		{ "", "empty" },
	};
	struct keyring *kr = NULL;
	char err[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		if (load(&cases[i].uri, 1, main_pin, &kr, err, sizeof(err)) !=
		    KEYRING_E_CONFIG)
			fail_msg("%s: not a config error: %s", cases[i].uri,
			    err);
		assert_null(kr);
		assert_has(err, cases[i].msg);
	}
	/* An absurd key count. */
	assert_int_equal(load(&URI_KEK1, 0, main_pin, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_int_equal(load(&URI_KEK1, KEYRING_MAX_KEYS + 1, main_pin, &kr,
	    err, sizeof(err)), KEYRING_E_CONFIG);
}

static void
test_duplicate_keys(void **state)
{
	const char *uris[2] = { URI_KEK1,
	    "pkcs11:token=kms;id=%01;type=secret-key" };
	const char *other_token[2] = { URI_KEK1,
	    "pkcs11:token=elsewhere;object=k2" };
	struct keyring *kr = NULL;
	char err[512] = "";

	(void)state;
	/* One key named twice, by label and by id. */
	assert_int_equal(load(uris, 2, main_pin, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "same key");
	assert_int_equal(load(other_token, 2, main_pin, &kr, err,
	    sizeof(err)), KEYRING_E_CONFIG);
	assert_has(err, "one token");
}

static void
test_rotation(void **state)
{
	const char *both[2] = { URI_K2, URI_KEK1 };
	struct keyring *old, *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[3][32], ct[3][KEYRING_MAX_CIPHERTEXT];
	uint8_t nct[KEYRING_MAX_CIPHERTEXT], out[KEYRING_MAX_PLAINTEXT];
	char old_id[KEYRING_KEY_ID_MAX], key_id[KEYRING_KEY_ID_MAX];
	size_t ctlen[3], nctlen, outlen, i;

	(void)state;
	old = load_ok(&URI_KEK1, 1);
	snprintf(old_id, sizeof(old_id), "%s", keyring_primary_key_id(old));
	assert_int_equal(keyring_worker_new(old, &w), KEYRING_OK);
	for (i = 0; i < 3; i++) {
		memset(pt[i], (int)(0x30 + i), sizeof(pt[i]));
		assert_int_equal(keyring_seal(w, pt[i], sizeof(pt[i]), ct[i],
		    sizeof(ct[i]), &ctlen[i], NULL), KEYRING_OK);
	}
	keyring_worker_free(w);
	keyring_free(old);

	kr = load_ok(both, 2);
	assert_int_equal(keyring_nkeys(kr), 2);
	assert_string_equal(keyring_key_id(kr, 1), old_id);
	assert_string_not_equal(keyring_primary_key_id(kr), old_id);
	assert_string_equal(keyring_key_desc(kr, 0), "token 'kms' object 'k2'");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);

	/* New data is sealed with k2 ... */
	assert_int_equal(keyring_seal(w, pt[0], 32, nct, sizeof(nct), &nctlen,
	    key_id), KEYRING_OK);
	assert_string_equal(key_id, keyring_primary_key_id(kr));
	assert_int_equal(keyring_open(w, keyring_primary_key_id(kr), nct,
	    nctlen, out, sizeof(out), &outlen, NULL), KEYRING_OK);
	/* ... and k1's old ciphertexts still open, by envelope or key_id. */
	for (i = 0; i < 3; i++) {
		assert_int_equal(keyring_open(w, NULL, ct[i], ctlen[i], out,
		    sizeof(out), &outlen, NULL), KEYRING_OK);
		assert_memory_equal(out, pt[i], 32);
		assert_int_equal(keyring_open(w, old_id, ct[i], ctlen[i], out,
		    sizeof(out), &outlen, NULL), KEYRING_OK);
		assert_memory_equal(out, pt[i], 32);
	}
	/* The key_id must match the envelope's key, not any key. */
	assert_int_equal(keyring_open(w, keyring_primary_key_id(kr), ct[0],
	    ctlen[0], out, sizeof(out), &outlen, key_id),
	    KEYRING_E_UNKNOWN_KEY);
	assert_string_equal(key_id, old_id);
	keyring_worker_free(w);
	keyring_free(kr);
}

/* The KEK can be used inside the token but never read or wrapped out. */
static void
check_unreadable(struct token *t, CK_OBJECT_HANDLE kek,
    CK_OBJECT_HANDLE wrapping)
{
	uint8_t val[64], wrapped[128];
	CK_ATTRIBUTE a = { CKA_VALUE, val, sizeof(val) };
	CK_MECHANISM mechs[] = {
		{ CKM_AES_KEY_WRAP_PAD, NULL, 0 },
		{ CKM_AES_KEY_WRAP, NULL, 0 },
	};
	CK_ULONG len;
	CK_RV rv;
	size_t i;

	rv = t->fn->C_GetAttributeValue(t->session, kek, &a, 1);
	assert_int_equal(rv, CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
	for (i = 0; i < 2; i++) {
		len = sizeof(wrapped);
		rv = t->fn->C_WrapKey(t->session, &mechs[i], wrapping, kek,
		    wrapped, &len);
		if (rv == CKR_OK)
			fail_msg("C_WrapKey of the KEK succeeded");
		assert_int_equal(rv, CKR_KEY_UNEXTRACTABLE);
	}
}

static void
test_key_never_leaves(void **state)
{
	const char *label = "kek1";
	struct keyring *kr;
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, wrapping, copies[8];
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ULONG vlen = 32, n = 0, i;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE wtmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_VALUE_LEN, &vlen, sizeof(vlen) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_WRAP, &yes, sizeof(yes) },
	};
	CK_ATTRIBUTE ctmpl[] = {
		{ CKA_LABEL, (void *)label, 4 },
		{ CKA_TOKEN, &no, sizeof(no) },
	};
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
	char err[512] = "";

	(void)state;
	/* A live keyring, so its session copies of the KEK exist too. */
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(token_uri_parse(URI_KEK1, &uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, uri, "test", &t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(t, main_pin, NULL, err, sizeof(err)), 0);
	assert_int_equal(token_find_key(t, uri, "test", &kek, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(t->fn->C_GenerateKey(t->session, &gen, wtmpl,
	    sizeof(wtmpl) / sizeof(wtmpl[0]), &wrapping), CKR_OK);

	check_unreadable(t, kek, wrapping);

	/* The keyring's session copies are just as locked in. */
	assert_int_equal(t->fn->C_FindObjectsInit(t->session, ctmpl, 2),
	    CKR_OK);
	assert_int_equal(t->fn->C_FindObjects(t->session, copies, 8, &n),
	    CKR_OK);
	assert_int_equal(t->fn->C_FindObjectsFinal(t->session), CKR_OK);
	assert_true(n >= 1);
	for (i = 0; i < n; i++)
		check_unreadable(t, copies[i], wrapping);

	token_close(t);
	p11_kit_uri_free(uri);
	keyring_free(kr);
}

/*
 * A token without AES-GCM (SoftHSM with GCM switched off): a key that may
 * also wrap moves to AES-KWP by itself; asking for GCM is refused, naming
 * the missing mechanism.
 */
static void
test_no_gcm(void **state)
{
	struct keyring_config cfg;
	struct keyring *kr = NULL;
	char dir[PATH_MAX], pin[PATH_MAX], err[512] = "";

	(void)state;
	make_dir_token("nogcm", "--no-gcm", dir, sizeof(dir));
	tt_use_conf(dir);
	PATHF(pin, "%s/pin", dir);
	if (load(&URI_KEK1, 1, pin, &kr, err, sizeof(err)) != KEYRING_OK)
		fail_msg("no-GCM token: %s", err);
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-kwp");
	assert_string_equal(keyring_key_mechanisms(kr, 0), "aes-kwp,aes-kwp/ecb");
	keyring_free(kr);
	kr = NULL;

	memset(&cfg, 0, sizeof(cfg));
	cfg.module = tt_module;
	cfg.key_uris = &URI_KEK1;
	cfg.nkeys = 1;
	cfg.pin_file = pin;
	cfg.mechanism = "aes-gcm";
	assert_int_equal(keyring_load(&cfg, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "CKM_AES_GCM");
	assert_has(err, "object=kek1");
}

static void
test_two_tokens_same_label(void **state)
{
	struct keyring *kr = NULL;
	char dir[PATH_MAX], pin[PATH_MAX], err[512] = "";
	const char *uri = "pkcs11:token=kms;object=kek1";

	(void)state;
	make_dir_token("twotokens", "", dir, sizeof(dir));
	assert_int_equal(tt_mktoken(dir, ""), 0);	/* a second "kms" token */
	tt_use_conf(dir);
	PATHF(pin, "%s/pin", dir);
	assert_int_equal(load(&uri, 1, pin, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "ambiguous");
	assert_has(err, "2 tokens");
}

static void
test_module_lookup(void **state)
{
	struct keyring_config cfg;
	struct keyring *kr = NULL;
	char err[512] = "", uri[PATH_MAX + 64], id[KEYRING_KEY_ID_MAX];
	const char *u = uri;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	snprintf(id, sizeof(id), "%s", keyring_primary_key_id(kr));
	keyring_free(kr);

	memset(&cfg, 0, sizeof(cfg));
	cfg.key_uris = &u;
	cfg.nkeys = 1;
	cfg.pin_file = main_pin;

	/* module-path in the URI. */
	snprintf(uri, sizeof(uri), "%s?module-path=%s", URI_KEK1, tt_module);
	kr = NULL;
	if (keyring_load(&cfg, &kr, err, sizeof(err)) != KEYRING_OK)
		fail_msg("module-path: %s", err);
	assert_string_equal(keyring_primary_key_id(kr), id);
	keyring_free(kr);

	/* A bad tt_module path names the path. */
	cfg.module = "/nonexistent/libnothing.so";
	assert_int_equal(keyring_load(&cfg, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_has(err, "/nonexistent/libnothing.so");
	cfg.module = "no-such-p11-kit-module";
	assert_int_equal(keyring_load(&cfg, &kr, err, sizeof(err)),
	    KEYRING_E_CONFIG);
	assert_has(err, "no-such-p11-kit-module");
	cfg.module = NULL;

	/* By p11-kit tt_module name, then by searching every module. */
	if (access("/usr/share/p11-kit/modules/softhsm2.module", R_OK) != 0) {
		print_message("softhsm2 not registered with p11-kit: "
		    "name and search lookups skipped\n");
		return;
	}
	cfg.module = "softhsm2";
	u = URI_KEK1;
	if (keyring_load(&cfg, &kr, err, sizeof(err)) != KEYRING_OK)
		fail_msg("module name: %s", err);
	assert_string_equal(keyring_primary_key_id(kr), id);
	keyring_free(kr);
	cfg.module = NULL;
	if (keyring_load(&cfg, &kr, err, sizeof(err)) != KEYRING_OK)
		fail_msg("module search: %s", err);
	assert_string_equal(keyring_primary_key_id(kr), id);
	keyring_free(kr);
}

struct thr {
	struct keyring_worker *w;
	int id;
	int failures;
};

static void *
thread_main(void *arg)
{
	struct thr *th = arg;
	uint8_t pt[32], ct[KEYRING_MAX_CIPHERTEXT], out[KEYRING_MAX_PLAINTEXT];
	size_t ctlen, outlen;
	int i;

	for (i = 0; i < 1000; i++) {
		memset(pt, th->id * 31 + i, sizeof(pt));
		pt[0] = (uint8_t)th->id;
		if (keyring_seal(th->w, pt, sizeof(pt), ct, sizeof(ct), &ctlen,
		    NULL) != KEYRING_OK ||
		    keyring_open(th->w, NULL, ct, ctlen, out, sizeof(out),
		    &outlen, NULL) != KEYRING_OK ||
		    outlen != sizeof(pt) || memcmp(out, pt, sizeof(pt)) != 0)
			th->failures++;
	}
	return NULL;
}

static void
test_two_threads(void **state)
{
	struct keyring *kr;
	struct thr th[2];
	pthread_t tid[2];
	int i;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	for (i = 0; i < 2; i++) {
		memset(&th[i], 0, sizeof(th[i]));
		th[i].id = i + 1;
		assert_int_equal(keyring_worker_new(kr, &th[i].w), KEYRING_OK);
	}
	for (i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&tid[i], NULL, thread_main,
		    &th[i]), 0);
	for (i = 0; i < 2; i++) {
		assert_int_equal(pthread_join(tid[i], NULL), 0);
		assert_int_equal(th[i].failures, 0);
		keyring_worker_free(th[i].w);
	}
	keyring_free(kr);
}

/* ---- pool: bounded reaping ---- */

#define REAP_JOBS	40

static int reaped[REAP_JOBS];
static size_t nreaped;

static void
reap_cb(struct pool_job *job)
{
	assert_int_equal(job->status, KEYRING_OK);
	assert_true(nreaped < REAP_JOBS);
	reaped[nreaped++] = (int)(intptr_t)job->arg;
	pool_job_free(job);
}

static int
fd_readable(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, 0) == 1;
}

/*
 * pool_reap_some hands over at most max finished jobs, oldest first, and
 * keeps the pool's fd readable while some are left, so the loop comes back
 * for them (a lost wake-up would strand them).
 */
static void
test_pool_reap_some(void **state)
{
	struct pool_job *jobs[REAP_JOBS];
	struct keyring *kr;
	struct pool *p;
	char err[256];
	size_t i;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(pool_new(kr, 1, 1024, &p, err, sizeof(err)), 0);
	nreaped = 0;
	for (i = 0; i < REAP_JOBS; i++) {
		assert_non_null(jobs[i] = pool_job_new(POOL_SEAL));
		memset(jobs[i]->in, (int)i, 32);
		jobs[i]->in_len = 32;
		jobs[i]->done = reap_cb;
		jobs[i]->arg = (void *)(intptr_t)i;
		assert_int_equal(pool_submit(p, jobs[i]), 0);
	}
	/*
	 * Wait until every job is done, through the pool's lock (a job's
	 * own fields belong to the worker until pool_reap hands it back).
	 */
	for (i = 0; i < 10000; i++) {
		if (pool_finished(p) == REAP_JOBS)
			break;
		usleep(1000);
	}
	assert_true(i < 10000);
	assert_true(fd_readable(pool_fd(p)));
	assert_int_equal(pool_reap_some(p, 16), REAP_JOBS - 16);
	assert_int_equal(nreaped, 16);
	assert_true(fd_readable(pool_fd(p)));	/* 24 left */
	assert_int_equal(pool_inflight(p), REAP_JOBS - 16);
	assert_int_equal(pool_reap_some(p, 0), REAP_JOBS - 16);
	assert_int_equal(nreaped, 16);
	assert_int_equal(pool_reap_some(p, 16), REAP_JOBS - 32);
	assert_true(fd_readable(pool_fd(p)));
	assert_int_equal(pool_reap_some(p, 16), 0);
	assert_int_equal(nreaped, REAP_JOBS);
	assert_false(fd_readable(pool_fd(p)));
	assert_int_equal(pool_inflight(p), 0);
	for (i = 0; i < REAP_JOBS; i++)
		assert_int_equal(reaped[i], (int)i);	/* finishing order */
	pool_free(p);
	keyring_free(kr);
}

/* ---- pool: fed mode (the token process's workers read for themselves) ---- */

#define FED_JOBS	64

struct fed {
	int rfd;
	pthread_mutex_t lock;
	unsigned seen[FED_JOBS + 1];	/* finishes per id */
	unsigned finished, deadline, bad, last_more, fills;
	unsigned next_id;		/* the filler's */
};

static int
fed_fill(void *ctx, struct pool *p)
{
	struct fed *f = ctx;
	struct pool_job *head = NULL, **tail = &head, *job;
	uint8_t buf[FED_JOBS];
	ssize_t n, i;

	n = read(f->rfd, buf, sizeof(buf));
	if (n <= 0)
		return -1;		/* EOF: the feed has ended */
	pthread_mutex_lock(&f->lock);
	f->fills++;
	pthread_mutex_unlock(&f->lock);
	for (i = 0; i < n; i++) {
		assert_non_null(job = pool_job_new(POOL_SEAL));
		memset(job->in, buf[i], 32);
		job->in_len = 32;
		/* 'd': a deadline already passed; it must not run. */
		job->deadline = buf[i] == 'd' ? 1 : 0;
		job->arg = (void *)(uintptr_t)++f->next_id;
		*tail = job;
		tail = &job->next;
	}
	pool_feed_push(p, head, (unsigned)n);
	return 0;
}

static void
fed_finish(void *ctx, struct pool_job *job, int more)
{
	struct fed *f = ctx;
	uintptr_t id = (uintptr_t)job->arg;

	pthread_mutex_lock(&f->lock);
	if (id == 0 || id > FED_JOBS)
		f->bad++;
	else
		f->seen[id]++;
	if (job->status == POOL_E_DEADLINE)
		f->deadline++;
	else if (job->status != KEYRING_OK || job->out_len == 0)
		f->bad++;
	f->last_more = (unsigned)more;
	f->finished++;
	pthread_mutex_unlock(&f->lock);
	pool_job_free(job);
}

static unsigned
fed_wait(struct fed *f, unsigned want)
{
	unsigned i, n = 0;

	for (i = 0; i < 10000; i++) {
		pthread_mutex_lock(&f->lock);
		n = f->finished;
		pthread_mutex_unlock(&f->lock);
		if (n >= want)
			break;
		usleep(1000);
	}
	return n;
}

/*
 * Fed mode: idle workers read the input themselves, one at a time; every
 * job queued comes back once through finish, a passed deadline is not run,
 * a lone request after a burst is still read (the reader role passed on),
 * the last finish of a burst says no more are queued, and the end of the
 * input lets pool_free return.
 */
static void
pool_fed_run(int handoff)
{
	struct pool_feed feed;
	struct keyring *kr;
	struct pool *p;
	struct fed f;
	char err[256], burst[FED_JOBS - 2];
	int fds[2];
	unsigned i;

	memset(&f, 0, sizeof(f));
	pthread_mutex_init(&f.lock, NULL);
	assert_int_equal(pipe(fds), 0);
	f.rfd = fds[0];
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(pool_new(kr, 3, 8, &p, err, sizeof(err)), 0);
	feed.fill = fed_fill;
	feed.finish = fed_finish;
	feed.ctx = &f;
	feed.reader_handoff = handoff;
	pool_set_feed(p, &feed);
	/* A burst over the pool's own cap: the feed bounds its input. */
	memset(burst, 'a', sizeof(burst));
	burst[10] = 'd';
	assert_int_equal(write(fds[1], burst, sizeof(burst)),
	    (ssize_t)sizeof(burst));
	assert_int_equal(fed_wait(&f, sizeof(burst)), sizeof(burst));
	pthread_mutex_lock(&f.lock);
	assert_int_equal(f.last_more, 0);
	pthread_mutex_unlock(&f.lock);
	/* Then two lone ones, each after the pool went idle. */
	for (i = 0; i < 2; i++) {
		usleep(20000);
		assert_int_equal(write(fds[1], "b", 1), 1);
		assert_int_equal(fed_wait(&f, sizeof(burst) + i + 1),
		    sizeof(burst) + i + 1);
	}
	assert_int_equal(pool_inflight(p), 0);
	assert_int_equal(pool_busy(p), 0);
	close(fds[1]);			/* EOF: fill says -1 */
	pool_free(p);
	keyring_free(kr);
	close(fds[0]);
	assert_int_equal(f.bad, 0);
	assert_int_equal(f.deadline, 1);
	assert_int_equal(f.finished, FED_JOBS);
	for (i = 1; i <= FED_JOBS; i++)
		assert_int_equal(f.seen[i], 1);
	assert_true(f.fills >= 3);
	pthread_mutex_destroy(&f.lock);
}

static unsigned spin_done;

static void
spin_job_done(struct pool_job *job)
{
	assert_int_equal(job->status, KEYRING_OK);
	spin_done++;
	pool_job_free(job);
}

/*
 * pool_set_spin: a job submitted while an idle worker spins is taken by
 * it (a hit); an idle spell longer than the budget is a miss; 0 never
 * spins.
 */
static void
test_pool_spin(void **state)
{
	struct pool_job *job;
	struct keyring *kr;
	struct pool *p;
	uint64_t spins, misses;
	char err[256];
	unsigned i;

	(void)state;
	kr = load_ok(&URI_KEK1, 1);
	assert_int_equal(pool_new(kr, 2, 16, &p, err, sizeof(err)), 0);
	pool_spin_counts(p, &spins, &misses);
	assert_true(spins == 0 && misses == 0);
	/* A budget long enough for a loaded machine. */
	pool_set_spin(p, 300000000ull);
	usleep(20000);			/* a worker is spinning now */
	pool_spin_counts(p, &spins, &misses);
	assert_int_equal(spins, 1);
	assert_non_null(job = pool_job_new(POOL_SEAL));
	memset(job->in, 7, 32);
	job->in_len = 32;
	job->done = spin_job_done;
	spin_done = 0;
	assert_int_equal(pool_submit(p, job), 0);
	for (i = 0; i < 5000 && spin_done == 0; i++) {
		usleep(1000);
		pool_reap(p);
	}
	assert_int_equal(spin_done, 1);
	/* Then it spins once more for the next job, finds none, sleeps. */
	usleep(700000);
	pool_spin_counts(p, &spins, &misses);
	assert_int_equal(spins, 2);
	assert_int_equal(misses, 1);
	pool_set_spin(p, 0);
	pool_free(p);
	keyring_free(kr);
}

/* Both ways of waking workers (pool_feed.reader_handoff). */
static void
test_pool_fed(void **state)
{
	(void)state;
	pool_fed_run(0);
	pool_fed_run(1);
}

/* Check values and fingerprint against values computed outside p11kms. */
static void
test_key_identity(void **state)
{
	static const uint8_t kat_fp[KEYID_FP_LEN] = {
		0x6e, 0xa0, 0x77, 0x34, 0xb9, 0x35, 0x8e, 0x13,
		0x87, 0xc2, 0x4b, 0xb7, 0xde, 0x4a, 0xc8, 0x6c,
		0xc3, 0x05, 0x5d, 0xaf, 0x01, 0x17, 0xc6, 0x0d,
		0x94, 0xd2, 0x1e, 0x2d, 0x1d, 0x5d, 0x60, 0xf8,
	};
	uint8_t key[32], kcv[KEYID_KCV_MAX], want[32], fp[KEYID_FP_LEN];
	uint8_t zero[16] = { 0 }, fp2[KEYID_FP_LEN];
	size_t kcvlen, i;
	int outl;
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_ENCRYPT, &yes, sizeof(yes) },
		{ CKA_VALUE, key, sizeof(key) },
	};
	CK_OBJECT_HANDLE h;
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	EVP_CIPHER_CTX *ctx;
	char err[256];

	(void)state;
	/* Known answer, computed with Python's hashlib. */
	assert_int_equal(keyid_fingerprint((const uint8_t *)"\x01", 1,
	    (const uint8_t *)"kek1", 4, (const uint8_t *)"\xf5\x46\x77", 3,
	    fp), 0);
	assert_memory_equal(fp, kat_fp, sizeof(fp));
	/* Length prefixes keep field boundaries apart. */
	assert_int_equal(keyid_fingerprint((const uint8_t *)"\x01k", 2,
	    (const uint8_t *)"ek1", 3, (const uint8_t *)"\xf5\x46\x77", 3,
	    fp2), 0);
	assert_memory_not_equal(fp, fp2, sizeof(fp));

	/* A session key of known value, to recompute in OpenSSL. */
	for (i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)(0x80 + i);
	assert_int_equal(token_uri_parse(URI_KEK1, &uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, uri, "test", &t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(t, main_pin, NULL, err, sizeof(err)), 0);
	assert_int_equal(t->fn->C_CreateObject(t->session, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &h), CKR_OK);

	/* CKA_CHECK_VALUE: first 3 bytes of AES-ECB(key, 0^128). */
	ctx = EVP_CIPHER_CTX_new();
	assert_non_null(ctx);
	assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), NULL, key,
	    NULL), 1);
	EVP_CIPHER_CTX_set_padding(ctx, 0);
	assert_int_equal(EVP_EncryptUpdate(ctx, want, &outl, zero, 16), 1);
	EVP_CIPHER_CTX_free(ctx);
	assert_int_equal(keyid_check_value(t->fn, t->session, h,
	    KEYID_KCV_AUTO, kcv, &kcvlen, NULL), CKR_OK);
	assert_int_equal(kcvlen, 3);
	assert_memory_equal(kcv, want, 3);

	/* The computed fallback: GCM tag of "" under the reserved IV/AAD. */
	ctx = EVP_CIPHER_CTX_new();
	assert_non_null(ctx);
	assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL,
	    NULL, NULL), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN,
	    KEYID_KCV_IV_LEN, NULL), 1);
	assert_int_equal(EVP_EncryptInit_ex(ctx, NULL, NULL, key,
	    (const uint8_t *)KEYID_KCV_IV), 1);
	assert_int_equal(EVP_EncryptUpdate(ctx, NULL, &outl,
	    (const uint8_t *)KEYID_KCV_AAD, sizeof(KEYID_KCV_AAD) - 1), 1);
	assert_int_equal(EVP_EncryptFinal_ex(ctx, want, &outl), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16,
	    want), 1);
	EVP_CIPHER_CTX_free(ctx);
	assert_int_equal(keyid_check_value(t->fn, t->session, h,
	    KEYID_KCV_GCM, kcv, &kcvlen, NULL), CKR_OK);
	assert_int_equal(kcvlen, 16);
	assert_memory_equal(kcv, want, 16);

	/*
	 * The long rule (keys keygen marks): SoftHSM's 3-byte
	 * CKA_CHECK_VALUE is too short, so all 16 bytes of AES-ECB(key,
	 * 0^128), whose first 3 are that CKA_CHECK_VALUE.
	 */
	ctx = EVP_CIPHER_CTX_new();
	assert_non_null(ctx);
	assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), NULL, key,
	    NULL), 1);
	EVP_CIPHER_CTX_set_padding(ctx, 0);
	assert_int_equal(EVP_EncryptUpdate(ctx, want, &outl, zero, 16), 1);
	EVP_CIPHER_CTX_free(ctx);
	{
		const char *from = NULL;

		assert_int_equal(keyid_check_value(t->fn, t->session, h,
		    KEYID_KCV_LONG, kcv, &kcvlen, &from), CKR_OK);
		assert_int_equal(kcvlen, 16);
		assert_memory_equal(kcv, want, 16);
		assert_string_equal(from, "AES-ECB");
		assert_int_equal(keyid_check_value(t->fn, t->session, h,
		    KEYID_KCV_AUTO, kcv, &kcvlen, &from), CKR_OK);
		assert_int_equal(kcvlen, 3);
		assert_memory_equal(kcv, want, 3);
		assert_string_equal(from, "CKA_CHECK_VALUE");
		assert_int_equal(keyid_check_value(t->fn, t->session, h,
		    KEYID_KCV_ECB, kcv, &kcvlen, NULL), CKR_OK);
		assert_memory_equal(kcv, want, 16);
	}
	/* Which keys get the long rule: the marker, then something. */
	assert_true(keyid_id_is_v2((const uint8_t *)"p11kms/2xxxx", 12));
	assert_false(keyid_id_is_v2((const uint8_t *)"p11kms/2", 8));
	assert_false(keyid_id_is_v2((const uint8_t *)"p11kms/1xxxx", 12));
	assert_false(keyid_id_is_v2((const uint8_t *)"\x01", 1));

	assert_int_equal(t->fn->C_DestroyObject(t->session, h), CKR_OK);
	token_close(t);
	p11_kit_uri_free(uri);
}

static void
test_uri_redact(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "pkcs11:token=kms;object=k", "pkcs11:token=kms;object=k" },
		{ "pkcs11:token=kms;object=k?pin-value=12",
		    "pkcs11:token=kms;object=k" },
		{ "pkcs11:token=kms;pin-value=12;object=k",
		    "pkcs11:token=kms;object=k" },
		{ "pkcs11:token=kms?pin-source=/p&module-name=x",
		    "pkcs11:token=kms?module-name=x" },
		{ "pkcs11:token=kms?module-name=x&PIN-VALUE=1",
		    "pkcs11:token=kms?module-name=x" },
		{ "pkcs11:pin-value=9", "pkcs11:" },
		{ "pkcs11:object=a?pin-source=x", "pkcs11:object=a" },
		{ "not-a-uri;pin-value=9", "not-a-uri" },
		/* p11-kit ignores white space, so these are PINs too. */
		{ "pkcs11:token=kms;object=k; pin-value=1234",
		    "pkcs11:token=kms;object=k" },
		{ "pkcs11:token=kms;p\nin-value=1234;object=k",
		    "pkcs11:token=kms;object=k" },
		{ "pkcs11:token=kms?pin -value=1234", "pkcs11:token=kms" },
		{ "pkcs11:token=kms?pin%2Dvalue=1234", "pkcs11:token=kms" },
		{ "pkcs11:token=kms?pin%2dsource=/p", "pkcs11:token=kms" },
		/* Control bytes cannot break a log line. */
		{ "pkcs11:token=k\x01ms", "pkcs11:token=k?ms" },
		{ "pkcs11:pin-valuex=1", "pkcs11:pin-valuex=1" },
	};
	char out[TOKEN_URI_TEXT_MAX], tiny[8];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		token_uri_redact(cases[i].in, out, sizeof(out));
		assert_string_equal(out, cases[i].out);
	}
	token_uri_redact("pkcs11:token=kms;object=kek1", tiny, sizeof(tiny));
	assert_string_equal(tiny, "pkcs11:");
	assert_string_equal(token_rv_name(CKR_PIN_INCORRECT),
	    "CKR_PIN_INCORRECT");
	assert_string_equal(token_rv_name(0x7777), "CKR_0x00007777");
	assert_true(token_rv_is_fault(CKR_SESSION_HANDLE_INVALID));
	assert_false(token_rv_is_fault(CKR_GENERAL_ERROR));
	assert_false(token_rv_is_fault(CKR_ENCRYPTED_DATA_INVALID));
	for (i = 0; i <= 8; i++)
		assert_string_not_equal(keyring_strerror(-(int)i),
		    "unknown keyring status");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_round_trip, setup),
		cmocka_unit_test_setup(test_wrong_key_id, setup),
		cmocka_unit_test_setup(test_bit_flips, setup),
		cmocka_unit_test_setup(test_truncated, setup),
		cmocka_unit_test_setup(test_key_id_stable, setup),
		cmocka_unit_test_setup(test_same_names_other_value, setup),
		cmocka_unit_test_setup(test_extractable_refused, setup),
		cmocka_unit_test_setup(test_aes128_refused, setup),
		cmocka_unit_test_setup(test_pin_value_refused, setup),
		cmocka_unit_test_setup(test_wrong_pin, setup),
		cmocka_unit_test_setup(test_pin_sources, setup),
		cmocka_unit_test_setup(test_pin_file_mode, setup),
		cmocka_unit_test_setup(test_missing_key, setup),
		cmocka_unit_test_setup(test_bad_uris, setup),
		cmocka_unit_test_setup(test_duplicate_keys, setup),
		cmocka_unit_test_setup(test_rotation, setup),
		cmocka_unit_test_setup(test_key_never_leaves, setup),
		cmocka_unit_test_setup(test_no_gcm, setup),
		cmocka_unit_test_setup(test_two_tokens_same_label, setup),
		cmocka_unit_test_setup(test_module_lookup, setup),
		cmocka_unit_test_setup(test_two_threads, setup),
		cmocka_unit_test_setup(test_pool_reap_some, setup),
		cmocka_unit_test_setup(test_pool_fed, setup),
		cmocka_unit_test_setup(test_pool_spin, setup),
		cmocka_unit_test_setup(test_key_identity, setup),
		cmocka_unit_test(test_uri_redact),
	};
	const char *filter = getenv("P11KMS_TEST_FILTER");

	if (filter != NULL && *filter != '\0')
		cmocka_set_test_filter(filter);

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
