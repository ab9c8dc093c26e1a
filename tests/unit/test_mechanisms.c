/*
 * Unit tests for the mechanisms beyond AES-GCM (pkcs11/mech.c, kek.c),
 * the key tools (pkcs11/keytool.c: keyring_keygen, keyring_list) and the
 * frame codec (envelope.c), against a real SoftHSM token. Every token lives
 * under one mkdtemp directory made by the group setup (tests/mktoken.sh for
 * the tokens, keyring_keygen for most keys) and removed by the teardown.
 *
 * Environment: P11KMS_SRCDIR (repo root, default "."), P11KMS_TEST_MODULE
 * (default /usr/lib/softhsm/libsofthsm2.so), TMPDIR, P11KMS_TEST_FILTER.
 *
 * SoftHSM reads SOFTHSM2_CONF when it is initialized, and p11-kit shares
 * one initialization among all token users of a process: a test that
 * switches token directory frees every keyring first.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "pkcs11/envelope.h"
#include "pkcs11/keyid.h"
#include "pkcs11/keyring.h"
#include "pkcs11/mech.h"
#include "pkcs11/token.h"

#define HDR	ENVELOPE_FIXED_LEN	/* KWP and RSA carry no IV */

static char main_dir[PATH_MAX], main_conf[PATH_MAX], main_pin[PATH_MAX];

static const char *const URI_KEK1 =	/* enc/dec/wrap/unwrap (mktoken) */
    "pkcs11:token=kms;object=kek1;type=secret-key";
static const char *const URI_GCM =	/* keygen aes-gcm */
    "pkcs11:token=kms;object=gcm1;type=secret-key";
static const char *const URI_KWP =	/* keygen aes-kwp */
    "pkcs11:token=kms;object=kwp1;type=secret-key";
static const char *const URI_RSA =	/* keygen rsa-oaep 2048 */
    "pkcs11:token=kms;object=rsa1;type=private";
static const char *const URI_RSA4K =	/* keygen rsa-oaep 4096 */
    "pkcs11:token=kms;object=rsa4k;type=private";

/* ------------------------------------------------------------------ */




static int
load_mech(const char *const *uris, size_t n, const char *pin,
    const char *mechanism, struct keyring **kr, char *err, size_t errlen)
{
	struct keyring_config cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.module = tt_module;
	cfg.key_uris = uris;
	cfg.nkeys = n;
	cfg.pin_file = pin;
	cfg.mechanism = mechanism;
	return keyring_load(&cfg, kr, err, errlen);
}

static struct keyring *
load_ok(const char *const *uris, size_t n, const char *mechanism)
{
	struct keyring *kr = NULL;
	char err[768] = "";
	int r;

	r = load_mech(uris, n, main_pin, mechanism, &kr, err, sizeof(err));
	if (r != KEYRING_OK)
		fail_msg("keyring_load: %d %s", r, err);
	return kr;
}

static int
keygen(const char *uri, const char *pin, const char *mechanism,
    unsigned bits, struct keyring_key_info *info, char *err, size_t errlen)
{
	struct keyring_tool_config cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.module = tt_module;
	cfg.uri = uri;
	cfg.pin_file = pin;
	cfg.mechanism = mechanism;
	cfg.rsa_bits = bits;
	return keyring_keygen(&cfg, info, err, errlen);
}

/* Seals pt with key i, opens it, checks it; returns the envelope length. */
static size_t
round_trip(struct keyring_worker *w, size_t i, const uint8_t *pt,
    size_t ptlen, uint8_t *ct)
{
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	char key_id[KEYRING_KEY_ID_MAX];
	size_t ctlen = 0, outlen = 0;
	int r;

	r = keyring_seal_with(w, i, pt, ptlen, ct, KEYRING_MAX_CIPHERTEXT,
	    &ctlen, key_id);
	if (r != KEYRING_OK)
		fail_msg("seal of %zu bytes with key %zu: %s", ptlen, i,
		    keyring_strerror(r));
	assert_true(ctlen <= KEYRING_MAX_CIPHERTEXT);
	r = keyring_open(w, key_id, ct, ctlen, out, sizeof(out), &outlen,
	    NULL);
	if (r != KEYRING_OK)
		fail_msg("open of %zu bytes with key %zu: %s", ptlen, i,
		    keyring_strerror(r));
	assert_int_equal(outlen, ptlen);
	assert_memory_equal(out, pt, ptlen);
	/* Also by the envelope's own key reference (KMS v1). */
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	assert_memory_equal(out, pt, ptlen);
	return ctlen;
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
	struct keyring_key_info info;
	char err[768] = "";

	if (tokentest_setup("p11kms-mech") != 0)
		return -1;
	if (snprintf(main_dir, sizeof(main_dir), "%s/main", tt_base) >=
	    (int)sizeof(main_dir))
		goto fail;
	if (snprintf(main_conf, sizeof(main_conf), "%s/softhsm2.conf",
	    main_dir) >= (int)sizeof(main_conf) ||
	    snprintf(main_pin, sizeof(main_pin), "%s/pin", main_dir) >=
	    (int)sizeof(main_pin))
		goto fail;
	if (tt_mktoken(main_dir, "--label kek1 --id 01") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label kx --id 09 "
	    "--extractable") != 0 ||
	    tt_mktoken(main_dir, "--add-key-only --label k128 --id 0a "
	    "--len 16") != 0 ||
	    setenv("SOFTHSM2_CONF", main_conf, 1) != 0)
		goto fail;
	if (keygen("pkcs11:token=kms;object=gcm1", main_pin, NULL, 0, &info,
	    err, sizeof(err)) != 0 ||
	    keygen("pkcs11:token=kms;object=kwp1", main_pin, "aes-kwp", 0,
	    &info, err, sizeof(err)) != 0 ||
	    keygen("pkcs11:token=kms;object=rsa1", main_pin, "rsa-oaep", 2048,
	    &info, err, sizeof(err)) != 0 ||
	    keygen("pkcs11:token=kms;object=rsa4k", main_pin, "rsa-oaep",
	    4096, &info, err, sizeof(err)) != 0) {
		fprintf(stderr, "keygen in setup failed: %s\n", err);
		goto fail;
	}
	(void)state;
	return 0;
fail:
	/* cmocka skips the group teardown when the setup fails. */
	group_teardown(state);
	return -1;
}

static int
setup(void **state)
{
	(void)state;
	return setenv("SOFTHSM2_CONF", main_conf, 1);
}

/* ------------------------------------------------------------------ */

/* The frame codec alone: what binds the header and the length. */
static void
test_frame(void **state)
{
	struct envelope e, other;
	uint8_t pt[40], fr[ENVELOPE_FRAME_HDR + 64];
	const uint8_t *p;
	size_t n, len, i;

	(void)state;
	memset(&e, 0, sizeof(e));
	e.format = ENVELOPE_FORMAT_V1;
	e.mech = ENVELOPE_MECH_AES_KWP;
	memset(e.keyref, 0x42, sizeof(e.keyref));
	for (i = 0; i < sizeof(pt); i++)
		pt[i] = (uint8_t)(i + 1);
	n = envelope_frame(&e, pt, 33, fr, sizeof(fr));
	assert_int_equal(n, ENVELOPE_FRAME_HDR + 33);
	assert_int_equal(fr[ENVELOPE_FRAME_BIND], 0);
	assert_int_equal(fr[ENVELOPE_FRAME_BIND + 1], 33);
	assert_int_equal(envelope_unframe(&e, fr, n, &p, &len), 0);
	assert_int_equal(len, 33);
	assert_memory_equal(p, pt, 33);

	/* Up to 7 zero bytes of padding are the token's, not data. */
	memset(fr + n, 0, 8);
	assert_int_equal(envelope_unframe(&e, fr, n + 7, &p, &len), 0);
	assert_int_equal(len, 33);
	assert_int_equal(envelope_unframe(&e, fr, n + 8, &p, &len), -1);
	fr[n + 2] = 1;
	assert_int_equal(envelope_unframe(&e, fr, n + 3, &p, &len), -1);
	/* Shorter than it says, or than a frame. */
	assert_int_equal(envelope_unframe(&e, fr, n - 1, &p, &len), -1);
	assert_int_equal(envelope_unframe(&e, fr, ENVELOPE_FRAME_HDR - 1, &p,
	    &len), -1);
	/* Another header: every header byte is bound. */
	for (i = 0; i < ENVELOPE_FIXED_LEN; i++) {
		other = e;
		if (i == 0)
			other.format ^= 1;
		else if (i == 1)
			other.mech = ENVELOPE_MECH_RSA_OAEP_SHA1;
		else if (i < 18)
			other.keyref[i - 2] ^= 0x80;
		else
			continue;	/* iv length: 0 in both */
		assert_int_equal(envelope_unframe(&other, fr, n, &p, &len), -1);
		assert_null(p);
	}
	/* Too small a buffer, too long a plaintext. */
	assert_int_equal(envelope_frame(&e, pt, 33, fr, 42), 0);
	assert_int_equal(envelope_frame(&e, pt, 0x10000, fr, sizeof(fr)), 0);
	assert_string_equal(mech_env_name(ENVELOPE_MECH_AES_KWP),
	    "aes-kwp");
	assert_string_equal(mech_env_name(0x77), "unknown");
}

static void
test_kwp_round_trip(void **state)
{
	static const size_t sizes[] = { 1, 5, 6, 7, 8, 9, 16, 31, 32, 33, 255,
	    511, 512 };
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[KEYRING_MAX_PLAINTEXT], ct[KEYRING_MAX_CIPHERTEXT];
	size_t i, len, max = 0;

	(void)state;
	kr = load_ok(&URI_KWP, 1, NULL);
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-kwp");
	assert_string_equal(keyring_key_mechanisms(kr, 0), "aes-kwp");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	for (i = 0; i < sizeof(pt); i++)
		pt[i] = (uint8_t)(i * 13 + 1);
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		len = round_trip(w, 0, pt, sizes[i], ct);
		/* RFC 5649: the frame rounded up to 8, plus 8. */
		assert_int_equal(len, HDR + (ENVELOPE_FRAME_HDR + sizes[i] +
		    7) / 8 * 8 + 8);
		assert_int_equal(ct[0], ENVELOPE_FORMAT_V1);
		assert_int_equal(ct[1], ENVELOPE_MECH_AES_KWP);
		assert_int_equal(ct[18], 0);	/* no IV */
		if (len > max)
			max = len;
	}
	/* 32-byte seed: 75 bytes; the largest plaintext stays far inside. */
	assert_int_equal(HDR + (ENVELOPE_FRAME_HDR + 32 + 7) / 8 * 8 + 8, 75);
	assert_true(max <= KEYRING_MAX_CIPHERTEXT);
	assert_int_equal(max, 19 + 528 + 8);
	/* KWP is deterministic: the same plaintext seals the same way. */
	{
		uint8_t ct2[KEYRING_MAX_CIPHERTEXT];
		size_t l1, l2;

		assert_int_equal(keyring_seal(w, pt, 32, ct, sizeof(ct), &l1,
		    NULL), KEYRING_OK);
		assert_int_equal(keyring_seal(w, pt, 32, ct2, sizeof(ct2), &l2,
		    NULL), KEYRING_OK);
		assert_int_equal(l1, l2);
		assert_memory_equal(ct, ct2, l1);
	}
	assert_int_equal(keyring_seal(w, pt, KEYRING_MAX_PLAINTEXT + 1, ct,
	    sizeof(ct), &len, NULL), KEYRING_E_TOOBIG);
	assert_int_equal(keyring_seal(w, pt, 32, ct, HDR + 40, &len, NULL),
	    KEYRING_E_TOOBIG);
	keyring_worker_free(w);
	keyring_free(kr);
}

/* Every single-bit change of a KWP envelope fails, each part its way. */
static void
test_kwp_tamper(void **state)
{
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32], ct[KEYRING_MAX_CIPHERTEXT], bad[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	size_t ctlen, outlen, byte, n;
	int bit, r;

	(void)state;
	memset(pt, 0x3c, sizeof(pt));
	kr = load_ok(&URI_KWP, 1, NULL);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	ctlen = round_trip(w, 0, pt, sizeof(pt), ct);
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
			if (byte >= 2 && byte < 18)
				assert_int_equal(r, KEYRING_E_UNKNOWN_KEY);
			else if (byte >= HDR)
				assert_int_equal(r, KEYRING_E_AUTH);
			else if (byte == 1 && r != KEYRING_E_INVALID)
				/* 0x02 -> 0x03/0x06: RSA on an AES key, or
				 * unknown; never another AES mechanism. */
				fail_msg("mech flip bit %d: %d", bit, r);
		}
	}
	/* Truncated and extended bodies. */
	for (n = HDR; n < ctlen; n++)
		assert_int_not_equal(keyring_open(w, NULL, ct, n, out,
		    sizeof(out), &outlen, NULL), KEYRING_OK);
	memcpy(bad, ct, ctlen);
	memset(bad + ctlen, 0, 8);
	assert_int_not_equal(keyring_open(w, NULL, bad, ctlen + 8, out,
	    sizeof(out), &outlen, NULL), KEYRING_OK);
	/* The header is bound: a GCM byte on a KWP body does not open. */
	memcpy(bad, ct, ctlen);
	bad[1] = ENVELOPE_MECH_AES_GCM;
	assert_int_not_equal(keyring_open(w, NULL, bad, ctlen, out,
	    sizeof(out), &outlen, NULL), KEYRING_OK);
	/* The session is fine after all that. */
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	assert_memory_equal(out, pt, sizeof(pt));
	keyring_worker_free(w);
	keyring_free(kr);
}

/*
 * A KWP body sealed by one key does not open under another key's
 * reference (the header digest and the key both differ), and the token
 * keeps no session objects from seal/open.
 */
static void
test_kwp_wrong_key_and_no_leftovers(void **state)
{
	const char *both[2] = { URI_KWP, URI_KEK1 };
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	uint8_t pt[32] = { 7 }, ct[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &gen, sizeof(gen) },
	};
	CK_OBJECT_HANDLE hs[4];
	size_t ctlen, outlen, n = 9;
	char err[256];
	int i;

	(void)state;
	kr = load_ok(both, 2, "aes-kwp");
	assert_string_equal(keyring_key_mechanism(kr, 1), "aes-kwp");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	ctlen = round_trip(w, 0, pt, sizeof(pt), ct);
	/* Point the envelope at kek1: kek1 unwraps garbage or refuses. */
	assert_true(keyring_key_id(kr, 1) != NULL);
	for (i = 0; i < ENVELOPE_KEYREF_LEN; i++) {
		char hex[3] = { keyring_key_id(kr, 1)[2 * i],
		    keyring_key_id(kr, 1)[2 * i + 1], 0 };

		ct[2 + i] = (uint8_t)strtoul(hex, NULL, 16);
	}
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_AUTH);
	for (i = 0; i < 20; i++)
		(void)round_trip(w, 1, pt, sizeof(pt), ct);

	/* No generic secrets left behind, in the worker's session or any. */
	assert_int_equal(token_uri_parse(URI_KEK1, &uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, uri, "test", &t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(t, main_pin, NULL, err, sizeof(err)), 0);
	assert_int_equal(token_find_all(t, tmpl, 2, hs, 4, &n, NULL), CKR_OK);
	assert_int_equal(n, 0);
	token_close(t);
	p11_kit_uri_free(uri);
	keyring_worker_free(w);
	keyring_free(kr);
}

static void
test_rsa_round_trip(void **state)
{
	static const size_t sizes[] = { 1, 32, 100, 204 };
	const char *uris[2] = { URI_RSA, URI_RSA4K };
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[KEYRING_MAX_PLAINTEXT], ct[KEYRING_MAX_CIPHERTEXT];
	size_t i, len;

	(void)state;
	kr = load_ok(uris, 2, NULL);
	/* SoftHSM 2.6.1 takes OAEP with SHA-1 only. */
	assert_string_equal(keyring_key_mechanism(kr, 0), "rsa-oaep-sha1");
	assert_string_equal(keyring_key_mechanisms(kr, 0), "rsa-oaep-sha1");
	assert_string_equal(keyring_key_desc(kr, 0),
	    "token 'kms' object 'rsa1'");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	for (i = 0; i < sizeof(pt); i++)
		pt[i] = (uint8_t)(i * 5 + 2);
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		len = round_trip(w, 0, pt, sizes[i], ct);
		assert_int_equal(len, HDR + 256);
		assert_int_equal(ct[1], ENVELOPE_MECH_RSA_OAEP_SHA1);
		assert_int_equal(ct[18], 0);
	}
	/* RSA-2048, SHA-1: 256 - 2*20 - 2 - 10 = 204 bytes at most. */
	assert_int_equal(keyring_seal(w, pt, 205, ct, sizeof(ct), &len, NULL),
	    KEYRING_E_TOOBIG);
	assert_int_equal(len, 0);
	/* RSA-4096, the largest key taken: 531 bytes, under 1024. */
	len = round_trip(w, 1, pt, 32, ct);
	assert_int_equal(len, HDR + 512);
	assert_true(len <= KEYRING_MAX_CIPHERTEXT);
	len = round_trip(w, 1, pt, 460, ct);
	assert_int_equal(len, HDR + 512);
	assert_int_equal(keyring_seal_with(w, 1, pt, 461, ct, sizeof(ct), &len,
	    NULL), KEYRING_E_TOOBIG);
	/* Out of range index. */
	assert_int_equal(keyring_seal_with(w, 2, pt, 32, ct, sizeof(ct), &len,
	    NULL), KEYRING_E_UNKNOWN_KEY);
	keyring_worker_free(w);
	keyring_free(kr);
}

static void
test_rsa_tamper(void **state)
{
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32], ct[KEYRING_MAX_CIPHERTEXT], bad[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	size_t ctlen, outlen, byte;
	int bit, r;

	(void)state;
	memset(pt, 0x71, sizeof(pt));
	kr = load_ok(&URI_RSA, 1, NULL);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	ctlen = round_trip(w, 0, pt, sizeof(pt), ct);
	/* Every header bit, and one bit of every body byte (RSA is slow). */
	for (byte = 0; byte < ctlen; byte++) {
		for (bit = 0; bit < 8; bit++) {
			if (byte >= HDR && bit != (int)(byte % 8))
				continue;
			memcpy(bad, ct, ctlen);
			bad[byte] ^= (uint8_t)(1u << bit);
			outlen = 99;
			r = keyring_open(w, NULL, bad, ctlen, out, sizeof(out),
			    &outlen, NULL);
			if (r == KEYRING_OK)
				fail_msg("flip of byte %zu bit %d opened",
				    byte, bit);
			assert_int_equal(outlen, 0);
			if (byte >= 2 && byte < 18)
				assert_int_equal(r, KEYRING_E_UNKNOWN_KEY);
			else if (byte >= HDR)
				assert_int_equal(r, KEYRING_E_AUTH);
		}
	}
	/* 0x04 -> 0x03 (SHA-256, not passed on SoftHSM) does not open. */
	memcpy(bad, ct, ctlen);
	bad[1] = ENVELOPE_MECH_RSA_OAEP_SHA256;
	assert_int_equal(keyring_open(w, NULL, bad, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_AUTH);
	/* An AES mechanism byte on an RSA key is malformed. */
	bad[1] = ENVELOPE_MECH_AES_KWP;
	assert_int_equal(keyring_open(w, NULL, bad, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_INVALID);
	/* Wrong body length. */
	assert_int_equal(keyring_open(w, NULL, ct, ctlen - 1, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_INVALID);
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	keyring_worker_free(w);
	keyring_free(kr);
}

/*
 * key_id of an RSA key: SHA-256 fingerprint over CKA_ID, CKA_LABEL and
 * SHA-256(modulus || exponent), recomputed here from the public key.
 */
static void
test_rsa_key_id(void **state)
{
	static const char *const by_id_fmt =
	    "pkcs11:token=kms;id=%s;type=private";
	struct keyring *kr;
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	CK_OBJECT_HANDLE priv, pub;
	CK_OBJECT_CLASS pcls = CKO_PUBLIC_KEY;
	uint8_t n[600], e[16], id[64], label[64], kcv[KEYID_FP_LEN];
	uint8_t fp[KEYID_FP_LEN], val[600];
	CK_ATTRIBUTE a[] = {
		{ CKA_MODULUS, n, sizeof(n) },
		{ CKA_PUBLIC_EXPONENT, e, sizeof(e) },
		{ CKA_ID, id, sizeof(id) },
		{ CKA_LABEL, label, sizeof(label) },
	};
	CK_ATTRIBUTE sec = { CKA_PRIVATE_EXPONENT, val, sizeof(val) };
	char want[KEYRING_KEY_ID_MAX], err[256], by_id[256], pct[200];
	const char *u;
	size_t found = 0, i;

	(void)state;
	assert_int_equal(token_uri_parse(URI_RSA, &uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, uri, "test", &t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(t, main_pin, NULL, err, sizeof(err)), 0);
	assert_int_equal(token_find_key(t, uri, "test", &priv, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, priv, a, 4),
	    CKR_OK);
	{
		CK_ATTRIBUTE pt[] = {
			{ CKA_CLASS, &pcls, sizeof(pcls) },
			{ CKA_ID, id, a[2].ulValueLen },
		};

		assert_int_equal(token_find_all(t, pt, 2, &pub, 1, &found,
		    NULL), CKR_OK);
		assert_int_equal(found, 1);
	}
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, pub, &a[1], 1),
	    CKR_OK);
	/* The private key never leaves. */
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, priv, &sec, 1),
	    CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(keyid_rsa_check_value(n, a[0].ulValueLen, e,
	    a[1].ulValueLen, kcv), 0);
	/* Leading zeros do not change it. */
	{
		uint8_t e0[17] = { 0 }, kcv2[KEYID_FP_LEN];

		memcpy(e0 + 1, e, a[1].ulValueLen);
		assert_int_equal(keyid_rsa_check_value(n, a[0].ulValueLen, e0,
		    a[1].ulValueLen + 1, kcv2), 0);
		assert_memory_equal(kcv, kcv2, sizeof(kcv));
	}
	{
		uint8_t cat[600 + 16];
		unsigned int l = 0;

		memcpy(cat, n, a[0].ulValueLen);
		memcpy(cat + a[0].ulValueLen, e, a[1].ulValueLen);
		assert_int_equal(EVP_Digest(cat, a[0].ulValueLen +
		    a[1].ulValueLen, fp, &l, EVP_sha256(), NULL), 1);
		assert_memory_equal(fp, kcv, sizeof(kcv));
	}
	assert_int_equal(keyid_fingerprint(id, a[2].ulValueLen, label,
	    a[3].ulValueLen, kcv, sizeof(kcv), fp), 0);
	envelope_keyref_hex(fp, want);

	kr = load_ok(&URI_RSA, 1, NULL);
	assert_string_equal(keyring_primary_key_id(kr), want);
	keyring_free(kr);
	/* Selected by CKA_ID rather than label: the same key_id. */
	pct[0] = '\0';
	for (i = 0; i < a[2].ulValueLen; i++)
		snprintf(pct + 3 * i, 4, "%%%02x", id[i]);
	snprintf(by_id, sizeof(by_id), by_id_fmt, pct);
	u = by_id;
	kr = load_ok(&u, 1, "rsa-oaep");
	assert_string_equal(keyring_primary_key_id(kr), want);
	keyring_free(kr);

	token_close(t);
	p11_kit_uri_free(uri);
}

/*
 * The preference changes, old ciphertexts still open: decrypt follows the
 * envelope's mechanism byte, not the current choice.
 */
static void
test_preference_change(void **state)
{
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32], gcm[KEYRING_MAX_CIPHERTEXT];
	uint8_t kwp[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	char id_auto[KEYRING_KEY_ID_MAX];
	size_t gcmlen, kwplen, outlen;

	(void)state;
	memset(pt, 0x5e, sizeof(pt));
	kr = load_ok(&URI_KEK1, 1, NULL);
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-gcm");
	assert_string_equal(keyring_key_mechanisms(kr, 0),
	    "aes-gcm,aes-kwp,aes-kwp/ecb");
	snprintf(id_auto, sizeof(id_auto), "%s", keyring_primary_key_id(kr));
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	gcmlen = round_trip(w, 0, pt, sizeof(pt), gcm);
	assert_int_equal(gcm[1], ENVELOPE_MECH_AES_GCM);
	assert_int_equal(gcmlen, 79);
	keyring_worker_free(w);
	keyring_free(kr);

	/* GCM is no longer the preference: seal with KWP ... */
	kr = load_ok(&URI_KEK1, 1, "aes-kwp");
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-kwp");
	/* ... the key keeps its key_id ... */
	assert_string_equal(keyring_primary_key_id(kr), id_auto);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	kwplen = round_trip(w, 0, pt, sizeof(pt), kwp);
	assert_int_equal(kwp[1], ENVELOPE_MECH_AES_KWP);
	assert_int_equal(kwplen, 75);
	/* ... and the GCM ciphertext made before still opens. */
	memset(out, 0, sizeof(out));
	assert_int_equal(keyring_open(w, id_auto, gcm, gcmlen, out,
	    sizeof(out), &outlen, NULL), KEYRING_OK);
	assert_int_equal(outlen, sizeof(pt));
	assert_memory_equal(out, pt, sizeof(pt));
	keyring_worker_free(w);
	keyring_free(kr);

	/* And back: GCM preferred again, the KWP ciphertext opens. */
	kr = load_ok(&URI_KEK1, 1, "aes-gcm");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	assert_int_equal(keyring_open(w, NULL, kwp, kwplen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	assert_memory_equal(out, pt, sizeof(pt));
	assert_int_equal(keyring_open(w, NULL, gcm, gcmlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_OK);
	keyring_worker_free(w);
	keyring_free(kr);

	/* A GCM-only key cannot open a KWP envelope made for its name. */
	kr = load_ok(&URI_GCM, 1, NULL);
	assert_string_equal(keyring_key_mechanisms(kr, 0), "aes-gcm");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	{
		uint8_t ct[KEYRING_MAX_CIPHERTEXT];
		size_t ctlen = round_trip(w, 0, pt, sizeof(pt), ct);

		ct[1] = ENVELOPE_MECH_AES_KWP;
		ct[18] = 0;	/* no IV: now a well-formed KWP envelope */
		assert_int_equal(keyring_open(w, NULL, ct, ctlen - 12, out,
		    sizeof(out), &outlen, NULL), KEYRING_E_AUTH);
	}
	keyring_worker_free(w);
	keyring_free(kr);
}

/* Mixed keyring: every key seals with its own mechanism, all open. */
static void
test_mixed_keyring(void **state)
{
	const char *uris[4] = { URI_GCM, URI_KWP, URI_RSA, URI_KEK1 };
	static const char *const want[4] = { "aes-gcm", "aes-kwp",
	    "rsa-oaep-sha1", "aes-gcm" };
	struct keyring *kr;
	struct keyring_worker *w = NULL;
	uint8_t pt[32], ct[4][KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	size_t len[4], outlen, i;

	(void)state;
	memset(pt, 0x11, sizeof(pt));
	kr = load_ok(uris, 4, NULL);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	for (i = 0; i < 4; i++) {
		assert_string_equal(keyring_key_mechanism(kr, i), want[i]);
		len[i] = round_trip(w, i, pt, sizeof(pt), ct[i]);
	}
	/* Rotated: kek1 first now; every older envelope still opens. */
	keyring_worker_free(w);
	keyring_free(kr);
	{
		const char *rot[4] = { URI_KEK1, URI_RSA, URI_KWP, URI_GCM };

		kr = load_ok(rot, 4, "aes-kwp");
	}
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-kwp");
	/* Older keys that cannot do the preference keep their own. */
	assert_string_equal(keyring_key_mechanism(kr, 1), "rsa-oaep-sha1");
	assert_string_equal(keyring_key_mechanism(kr, 3), "aes-gcm");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	for (i = 0; i < 4; i++) {
		assert_int_equal(keyring_open(w, NULL, ct[i], len[i], out,
		    sizeof(out), &outlen, NULL), KEYRING_OK);
		assert_memory_equal(out, pt, sizeof(pt));
	}
	keyring_worker_free(w);
	keyring_free(kr);
}

static void
test_forced_mechanism_refused(void **state)
{
	static const struct {
		const char *uri;
		const char *mech;
		const char *msg;
	} cases[] = {
		{ "pkcs11:token=kms;object=gcm1", "aes-kwp", "CKA_WRAP" },
		{ "pkcs11:token=kms;object=kwp1", "aes-gcm", "CKA_ENCRYPT" },
		{ "pkcs11:token=kms;object=kek1", "rsa-oaep", "type=private" },
		{ "pkcs11:token=kms;object=rsa1;type=private", "aes-gcm",
		    "RSA key" },
		{ "pkcs11:token=kms;object=kek1", "des3", "unknown mechanism" },
	};
	struct keyring *kr = NULL;
	char err[768];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		if (load_mech(&cases[i].uri, 1, main_pin, cases[i].mech, &kr,
		    err, sizeof(err)) != KEYRING_E_CONFIG)
			fail_msg("%s with %s: not a config error: %s",
			    cases[i].uri, cases[i].mech, err);
		assert_null(kr);
		assert_has(err, cases[i].msg);
	}
	assert_true(keyring_mechanism_valid(NULL));
	assert_true(keyring_mechanism_valid("auto"));
	assert_true(keyring_mechanism_valid("rsa-oaep"));
	assert_false(keyring_mechanism_valid("aes"));
}

/* What keygen writes into the token, attribute by attribute. */
static void
check_bools(struct token *t, CK_OBJECT_HANDLE h, const CK_ATTRIBUTE_TYPE *ty,
    const CK_BBOOL *want, size_t n, const char *what)
{
	CK_BBOOL v;
	CK_ATTRIBUTE a;
	size_t i;

	for (i = 0; i < n; i++) {
		v = 2;
		a.type = ty[i];
		a.pValue = &v;
		a.ulValueLen = sizeof(v);
		assert_int_equal(t->fn->C_GetAttributeValue(t->session, h, &a,
		    1), CKR_OK);
		if ((v != CK_FALSE) != (want[i] != CK_FALSE))
			fail_msg("%s: attribute 0x%lx is %d, want %d", what,
			    (unsigned long)ty[i], v, want[i]);
	}
}

static CK_OBJECT_HANDLE
find_one(struct token *t, const char *label, CK_OBJECT_CLASS cls)
{
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_CLASS, &cls, sizeof(cls) },
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	size_t n = 0;
	int more = 0;

	assert_int_equal(token_find_all(t, tmpl, 2, &h, 1, &n, &more), CKR_OK);
	assert_int_equal(n, 1);
	assert_int_equal(more, 0);
	return h;
}

static void
test_keygen_attributes(void **state)
{
	static const CK_ATTRIBUTE_TYPE aes_ty[] = {
		CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE,
		CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN,
		CKA_VERIFY, CKA_DERIVE, CKA_ALWAYS_SENSITIVE,
		CKA_NEVER_EXTRACTABLE,
	};
	static const CK_BBOOL gcm_want[] = { 1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0,
	    1, 1 };
	static const CK_BBOOL kwp_want[] = { 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0,
	    1, 1 };
	static const CK_ATTRIBUTE_TYPE priv_ty[] = {
		CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE,
		CKA_DECRYPT, CKA_SIGN, CKA_UNWRAP, CKA_DERIVE,
	};
	static const CK_BBOOL priv_want[] = { 1, 1, 1, 0, 1, 0, 0, 0 };
	static const CK_ATTRIBUTE_TYPE pub_ty[] = {
		CKA_TOKEN, CKA_ENCRYPT, CKA_VERIFY, CKA_WRAP,
	};
	static const CK_BBOOL pub_want[] = { 1, 1, 0, 0 };
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	CK_OBJECT_HANDLE h;
	CK_MECHANISM_TYPE allowed[4];
	CK_ATTRIBUTE am = { CKA_ALLOWED_MECHANISMS, allowed, sizeof(allowed) };
	uint8_t id1[64], id2[64];
	CK_ATTRIBUTE ida = { CKA_ID, id1, sizeof(id1) };
	CK_ULONG len;
	char err[256];

	(void)state;
	assert_int_equal(token_uri_parse(URI_GCM, &uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, uri, "test", &t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(t, main_pin, NULL, err, sizeof(err)), 0);

	h = find_one(t, "gcm1", CKO_SECRET_KEY);
	check_bools(t, h, aes_ty, gcm_want, 13, "gcm1");
	am.ulValueLen = sizeof(allowed);
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, h, &am, 1),
	    CKR_OK);
	assert_int_equal(am.ulValueLen, sizeof(CK_MECHANISM_TYPE));
	assert_int_equal(allowed[0], CKM_AES_GCM);
	len = 0;
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, h,
	    &(CK_ATTRIBUTE){ CKA_VALUE_LEN, &len, sizeof(len) }, 1), CKR_OK);
	assert_int_equal(len, 32);
	ida.pValue = id1;
	ida.ulValueLen = sizeof(id1);
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, h, &ida, 1),
	    CKR_OK);
	/* keygen's CKA_ID: the long-check-value marker, 16 random bytes. */
	assert_int_equal(ida.ulValueLen, KEYID_V2_ID_PREFIX_LEN + 16);
	assert_memory_equal(id1, KEYID_V2_ID_PREFIX, KEYID_V2_ID_PREFIX_LEN);

	h = find_one(t, "kwp1", CKO_SECRET_KEY);
	check_bools(t, h, aes_ty, kwp_want, 13, "kwp1");
	am.ulValueLen = sizeof(allowed);
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, h, &am, 1),
	    CKR_OK);
	assert_int_equal(allowed[0], CKM_AES_KEY_WRAP_PAD);
	ida.pValue = id2;
	ida.ulValueLen = sizeof(id2);
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, h, &ida, 1),
	    CKR_OK);
	assert_int_equal(ida.ulValueLen, KEYID_V2_ID_PREFIX_LEN + 16);
	/* Fresh random ids. */
	assert_memory_not_equal(id1, id2, KEYID_V2_ID_PREFIX_LEN + 16);

	h = find_one(t, "rsa1", CKO_PRIVATE_KEY);
	check_bools(t, h, priv_ty, priv_want, 8, "rsa1 private");
	h = find_one(t, "rsa1", CKO_PUBLIC_KEY);
	check_bools(t, h, pub_ty, pub_want, 4, "rsa1 public");
	len = 0;
	assert_int_equal(t->fn->C_GetAttributeValue(t->session, h,
	    &(CK_ATTRIBUTE){ CKA_MODULUS_BITS, &len, sizeof(len) }, 1),
	    CKR_OK);
	assert_int_equal(len, 2048);

	token_close(t);
	p11_kit_uri_free(uri);
}

static void
test_keygen_refusals(void **state)
{
	static const struct {
		const char *uri;
		const char *mech;
		unsigned bits;
		const char *msg;
	} cases[] = {
		{ "pkcs11:token=kms;object=kek1", NULL, 0, "already holds" },
		{ "pkcs11:token=kms;object=rsa1", "aes-kwp", 0,
		    "already holds" },
		{ "pkcs11:token=kms;object=fresh;id=%01", NULL, 0, "id=" },
		{ "pkcs11:token=kms", NULL, 0, "object=" },
		{ "pkcs11:token=kms;object=x", "des3", 0, "unknown mechanism" },
		{ "pkcs11:token=kms;object=x", "rsa-oaep", 1024, "2048" },
		{ "pkcs11:token=kms;object=x", "rsa-oaep", 8192, "4096" },
		{ "pkcs11:token=kms;object=x;type=private", NULL, 0,
		    "type=secret-key" },
		{ "pkcs11:token=kms;object=x;type=secret-key", "rsa-oaep", 0,
		    "type=private" },
		{ "pkcs11:token=kms;object=x;pin-value=1234", NULL, 0,
		    "pin-value" },
		{ "pkcs11:token=nosuch;object=x", NULL, 0, "no token" },
	};
	struct keyring_key_info info;
	struct keyring *kr = NULL;
	const char *u = "pkcs11:token=kms;object=x";
	char err[768];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		if (keygen(cases[i].uri, main_pin, cases[i].mech,
		    cases[i].bits, &info, err, sizeof(err)) !=
		    KEYRING_E_CONFIG)
			fail_msg("%s: not a config error: %s", cases[i].uri,
			    err);
		assert_has(err, cases[i].msg);
	}
	/* Nothing was made by any of them. */
	assert_int_equal(load_mech(&u, 1, main_pin, NULL, &kr, err,
	    sizeof(err)), KEYRING_E_CONFIG);
	assert_has(err, "no secret key matching");
	/* The existing key is untouched (its key_id did not change). */
	kr = load_ok(&URI_KEK1, 1, NULL);
	keyring_free(kr);
}

/* keygen's report matches what a load of the URI it prints finds. */
static void
test_keygen_report(void **state)
{
	struct keyring_key_info info;
	struct keyring *kr;
	const char *u;
	char err[768] = "";

	(void)state;
	if (keygen("pkcs11:token=kms;object=new%20key;id=%42%43", main_pin,
	    "aes-kwp", 0, &info, err, sizeof(err)) != KEYRING_OK)
		fail_msg("keygen: %s", err);
	assert_string_equal(info.label, "new key");
	assert_string_equal(info.id_hex, "4243");
	assert_string_equal(info.type, "aes-256");
	assert_string_equal(info.mechanisms, "aes-kwp");
	assert_int_equal(info.fit, 1);
	assert_string_equal(info.uri,
	    "pkcs11:token=kms;object=new%20key;type=secret-key");
	u = info.uri;
	kr = load_ok(&u, 1, NULL);
	assert_string_equal(keyring_primary_key_id(kr), info.key_id);
	keyring_free(kr);
}

static const struct keyring_key_info *
find_info(const struct keyring_key_info *v, size_t n, const char *label)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(v[i].label, label) == 0)
			return &v[i];
	fail_msg("key '%s' not listed", label);
	return NULL;
}

static void
test_list(void **state)
{
	struct keyring_tool_config cfg;
	struct keyring_key_info *v = NULL;
	const struct keyring_key_info *k;
	struct keyring *kr;
	char err[768] = "";
	size_t n = 0;
	int truncated = -1;

	(void)state;
	memset(&cfg, 0, sizeof(cfg));
	cfg.module = tt_module;
	cfg.uri = "pkcs11:token=kms";
	cfg.pin_file = main_pin;
	if (keyring_list(&cfg, &v, &n, &truncated, err, sizeof(err)) != 0)
		fail_msg("keyring_list: %s", err);
	assert_int_equal(truncated, 0);
	assert_true(n >= 7);

	k = find_info(v, n, "kek1");
	assert_int_equal(k->fit, 1);
	assert_string_equal(k->mechanisms, "aes-gcm,aes-kwp,aes-kwp/ecb");
	assert_string_equal(k->id_hex, "01");
	assert_string_equal(k->type, "aes-256");
	assert_string_equal(k->reason, "");
	kr = load_ok(&URI_KEK1, 1, NULL);
	assert_string_equal(k->key_id, keyring_primary_key_id(kr));
	keyring_free(kr);

	k = find_info(v, n, "kx");
	assert_int_equal(k->fit, 0);
	assert_has(k->reason, "extractable");
	assert_has(k->reason, "CKA_EXTRACTABLE=true");
	assert_int_equal(strlen(k->key_id), 32);	/* still named */

	k = find_info(v, n, "k128");
	assert_int_equal(k->fit, 0);
	assert_has(k->reason, "AES-256");
	assert_string_equal(k->type, "aes-128");

	k = find_info(v, n, "rsa1");
	assert_int_equal(k->fit, 1);
	assert_string_equal(k->type, "rsa-2048");
	assert_string_equal(k->mechanisms, "rsa-oaep-sha1");
	assert_has(k->uri, "type=private");
	k = find_info(v, n, "kwp1");
	assert_string_equal(k->mechanisms, "aes-kwp");
	free(v);

	/* A URI with object= filters. */
	cfg.uri = "pkcs11:token=kms;object=kx";
	v = NULL;
	assert_int_equal(keyring_list(&cfg, &v, &n, NULL, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_string_equal(v[0].label, "kx");
	free(v);
	cfg.uri = "pkcs11:token=kms;type=private";
	v = NULL;
	assert_int_equal(keyring_list(&cfg, &v, &n, NULL, err, sizeof(err)), 0);
	assert_int_equal(n, 2);		/* rsa1, rsa4k */
	free(v);

	/* Without a PIN the private keys stay hidden, and it says so. */
	cfg.uri = "pkcs11:token=kms";
	cfg.pin_file = NULL;
	v = NULL;
	assert_int_equal(keyring_list(&cfg, &v, &n, NULL, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_has(err, "not logged in");
	free(v);
}

/* A token without AES-GCM: keygen makes KWP keys, refuses GCM ones. */
static void
test_no_gcm_token(void **state)
{
	struct keyring_key_info info;
	struct keyring *kr = NULL;
	struct keyring_worker *w = NULL;
	char dir[PATH_MAX], pin[PATH_MAX], err[768] = "";
	const char *u = "pkcs11:token=kms;object=w1";
	uint8_t pt[32] = { 3 }, ct[KEYRING_MAX_CIPHERTEXT];
	uint8_t out[KEYRING_MAX_PLAINTEXT];
	size_t ctlen, outlen;

	(void)state;
	PATHF(dir, "%s/nogcm", tt_base);
	assert_int_equal(tt_mktoken(dir, "--no-gcm"), 0);
	PATHF(pin, "%s/pin", dir);
	tt_use_conf(dir);
	assert_int_equal(keygen("pkcs11:token=kms;object=g1", pin, "aes-gcm",
	    0, &info, err, sizeof(err)), KEYRING_E_CONFIG);
	assert_has(err, "CKM_AES_GCM");
	if (keygen(u, pin, "aes-kwp", 0, &info, err, sizeof(err)) != 0)
		fail_msg("keygen aes-kwp: %s", err);
	assert_int_equal(load_mech(&u, 1, pin, NULL, &kr, err, sizeof(err)),
	    KEYRING_OK);
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-kwp");
	assert_string_equal(keyring_primary_key_id(kr), info.key_id);
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	ctlen = round_trip(w, 0, pt, sizeof(pt), ct);
	assert_int_equal(ctlen, 75);
	/* A GCM-shaped envelope for this key: the key cannot do GCM. */
	ct[1] = ENVELOPE_MECH_AES_GCM;
	ct[18] = 12;
	assert_int_equal(keyring_open(w, NULL, ct, ctlen, out, sizeof(out),
	    &outlen, NULL), KEYRING_E_AUTH);
	keyring_worker_free(w);
	keyring_free(kr);
}

/*
 * The computed check value of a wrap-only key: the RFC 5649 wrap of a
 * constant, recomputed with OpenSSL from a session key of known value.
 */
static void
test_kcv_kwp(void **state)
{
	uint8_t key[32], kcv[KEYID_KCV_MAX], want[64];
	size_t kcvlen, i;
	int outl = 0, fl = 0;
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_WRAP, &yes, sizeof(yes) },
		{ CKA_ENCRYPT, &no, sizeof(no) },
		{ CKA_VALUE, key, sizeof(key) },
	};
	CK_OBJECT_HANDLE h;
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	EVP_CIPHER_CTX *ctx;
	char err[256];

	(void)state;
	for (i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)(0x40 + i);
	assert_int_equal(token_uri_parse(URI_KEK1, &uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, uri, "test", &t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(t, main_pin, NULL, err, sizeof(err)), 0);
	assert_int_equal(t->fn->C_CreateObject(t->session, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &h), CKR_OK);

	ctx = EVP_CIPHER_CTX_new();
	assert_non_null(ctx);
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_wrap_pad(), NULL,
	    key, NULL), 1);
	assert_int_equal(EVP_EncryptUpdate(ctx, want, &outl,
	    (const uint8_t *)KEYID_KCV_KWP_VALUE, 16), 1);
	assert_int_equal(EVP_EncryptFinal_ex(ctx, want + outl, &fl), 1);
	EVP_CIPHER_CTX_free(ctx);
	assert_int_equal(outl + fl, 24);

	assert_int_equal(keyid_check_value(t->fn, t->session, h,
	    KEYID_KCV_KWP, kcv, &kcvlen, NULL), CKR_OK);
	assert_int_equal(kcvlen, 24);
	assert_memory_equal(kcv, want, 24);
	/* GCM on a key that may not encrypt: refused for good, which is
	 * what sends AUTO (without CKA_CHECK_VALUE) to the wrap. */
	assert_int_equal(keyid_check_value(t->fn, t->session, h,
	    KEYID_KCV_GCM, kcv, &kcvlen, NULL), CKR_KEY_FUNCTION_NOT_PERMITTED);

	assert_int_equal(t->fn->C_DestroyObject(t->session, h), CKR_OK);
	token_close(t);
	p11_kit_uri_free(uri);
}

/* One AES block through the token's ECB operation the test opened. */
struct tok_blk {
	struct token *t;
	CK_SESSION_HANDLE s;
	int calls;
};

static int
tok_block(void *arg, int dec, uint8_t b[16])
{
	struct tok_blk *c = arg;
	uint8_t out[16];
	CK_ULONG n = sizeof(out);
	CK_RV rv;

	rv = dec ? c->t->fn->C_DecryptUpdate(c->s, b, 16, out, &n) :
	    c->t->fn->C_EncryptUpdate(c->s, b, 16, out, &n);
	c->calls++;
	if (rv != CKR_OK || n != 16)
		return -1;
	memcpy(b, out, 16);
	return 0;
}

static void
tok_ecb(struct tok_blk *c, CK_OBJECT_HANDLE h, int dec)
{
	CK_MECHANISM m = { CKM_AES_ECB, NULL, 0 };

	assert_int_equal(dec ? c->t->fn->C_DecryptInit(c->s, &m, h) :
	    c->t->fn->C_EncryptInit(c->s, &m, h), CKR_OK);
}

static void
tok_ecb_end(struct tok_blk *c, int dec)
{
	uint8_t x[16];
	CK_ULONG n = sizeof(x);

	assert_int_equal(dec ? c->t->fn->C_DecryptFinal(c->s, x, &n) :
	    c->t->fn->C_EncryptFinal(c->s, x, &n), CKR_OK);
	assert_int_equal(n, 0);
}

/* A session AES key of a known value that may encrypt and wrap. */
static CK_OBJECT_HANDLE
known_key(struct token *t, const uint8_t *v, size_t len)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_ENCRYPT, &yes, sizeof(yes) },
		{ CKA_DECRYPT, &yes, sizeof(yes) },
		{ CKA_WRAP, &yes, sizeof(yes) },
		{ CKA_UNWRAP, &yes, sizeof(yes) },
		{ CKA_VALUE, (void *)v, len },
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

	assert_int_equal(t->fn->C_CreateObject(t->session, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &h), CKR_OK);
	return h;
}

/* The token's own CKM_AES_KEY_WRAP_PAD of a generic secret of value v. */
static size_t
native_wrap(struct token *t, CK_OBJECT_HANDLE kek, const uint8_t *v,
    size_t n, uint8_t *out, size_t cap)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
		{ CKA_VALUE, (void *)v, n },
	};
	CK_MECHANISM m = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_OBJECT_HANDLE obj;
	CK_ULONG len = cap;

	assert_int_equal(t->fn->C_CreateObject(t->session, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &obj), CKR_OK);
	assert_int_equal(t->fn->C_WrapKey(t->session, &m, kek, obj, out, &len),
	    CKR_OK);
	assert_int_equal(t->fn->C_DestroyObject(t->session, obj), CKR_OK);
	return len;
}

static void
open_main_token(struct token **t, P11KitUri **uri)
{
	char err[256];

	assert_int_equal(token_uri_parse(URI_KEK1, uri, err, sizeof(err)), 0);
	assert_int_equal(token_open(tt_module, NULL, *uri, "test", t, err,
	    sizeof(err)), 0);
	assert_int_equal(token_login(*t, main_pin, NULL, err, sizeof(err)), 0);
}

/*
 * RFC 5649 section 6's two test vectors, computed on the token's AES-ECB
 * (mech_kwp_wrap, one C_EncryptUpdate per block); unwrapped again, and
 * refused once tampered. SoftHSM's own CKM_AES_KEY_WRAP_PAD is checked
 * against the same code on its zero-padded input (see below).
 */
static void
test_kwp_rfc5649_vectors(void **state)
{
	static const uint8_t kek[24] = {
		0x58, 0x40, 0xdf, 0x6e, 0x29, 0xb0, 0x2a, 0xf1,
		0xab, 0x49, 0x3b, 0x70, 0x5b, 0xf1, 0x6e, 0xa1,
		0xae, 0x83, 0x38, 0xf4, 0xdc, 0xc1, 0x76, 0xa8,
	};
	static const uint8_t k20[20] = {
		0xc3, 0x7b, 0x7e, 0x64, 0x92, 0x58, 0x43, 0x40,
		0xbe, 0xd1, 0x22, 0x07, 0x80, 0x89, 0x41, 0x15,
		0x50, 0x68, 0xf7, 0x38,
	};
	static const uint8_t w20[32] = {
		0x13, 0x8b, 0xde, 0xaa, 0x9b, 0x8f, 0xa7, 0xfc,
		0x61, 0xf9, 0x77, 0x42, 0xe7, 0x22, 0x48, 0xee,
		0x5a, 0xe6, 0xae, 0x53, 0x60, 0xd1, 0xae, 0x6a,
		0x5f, 0x54, 0xf3, 0x73, 0xfa, 0x54, 0x3b, 0x6a,
	};
	static const uint8_t k7[7] = {
		0x46, 0x6f, 0x72, 0x50, 0x61, 0x73, 0x69,
	};
	static const uint8_t w7[16] = {
		0xaf, 0xbe, 0xb0, 0xf0, 0x7d, 0xfb, 0xf5, 0x41,
		0x92, 0x00, 0xf2, 0xcc, 0xb5, 0x0b, 0xb2, 0x4f,
	};
	static const struct {
		const uint8_t *in;
		size_t n;
		const uint8_t *want;
		size_t wlen;
	} v[] = { { k20, 20, w20, 32 }, { k7, 7, w7, 16 } };
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	struct tok_blk c;
	CK_OBJECT_HANDLE h;
	uint8_t out[64], back[64], nat[64];
	size_t i, n;

	(void)state;
	open_main_token(&t, &uri);
	h = known_key(t, kek, sizeof(kek));
	c.t = t;
	c.s = t->session;
	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		assert_int_equal(mech_kwp_len(v[i].n), v[i].wlen);
		c.calls = 0;
		tok_ecb(&c, h, 0);
		assert_int_equal(mech_kwp_wrap(tok_block, &c, v[i].in, v[i].n,
		    out), 0);
		tok_ecb_end(&c, 0);
		assert_memory_equal(out, v[i].want, v[i].wlen);
		/* One block: one AES operation; else 6 per 64-bit block. */
		assert_int_equal(c.calls, v[i].n <= 8 ? 1 :
		    6 * (int)((v[i].n + 7) / 8));
		/*
		 * SoftHSM 2.6.1's own CKM_AES_KEY_WRAP_PAD zero-pads the input
		 * to 8 bytes before wrapping (its length indicator says 24,
		 * not 20): not RFC 5649's bytes. It is RFC 5649 of the padded
		 * input, which the ECB form reproduces.
		 */
		assert_int_equal(native_wrap(t, h, v[i].in, v[i].n, nat,
		    sizeof(nat)), v[i].wlen);
		memset(back, 0, sizeof(back));
		memcpy(back, v[i].in, v[i].n);
		tok_ecb(&c, h, 0);
		assert_int_equal(mech_kwp_wrap(tok_block, &c, back,
		    (v[i].n + 7) / 8 * 8, out), 0);
		tok_ecb_end(&c, 0);
		assert_memory_equal(nat, out, v[i].wlen);

		tok_ecb(&c, h, 1);
		assert_int_equal(mech_kwp_unwrap(tok_block, &c, v[i].want,
		    v[i].wlen, back, &n), 0);
		tok_ecb_end(&c, 1);
		assert_int_equal(n, v[i].n);
		assert_memory_equal(back, v[i].in, n);

		memcpy(out, v[i].want, v[i].wlen);
		out[v[i].wlen - 1] ^= 0x01;
		tok_ecb(&c, h, 1);
		assert_int_equal(mech_kwp_unwrap(tok_block, &c, out,
		    v[i].wlen, back, &n), -2);
		tok_ecb_end(&c, 1);
		assert_int_equal(n, 0);
	}
	assert_int_equal(t->fn->C_DestroyObject(t->session, h), CKR_OK);
	token_close(t);
	p11_kit_uri_free(uri);
}

/*
 * Native AES-KWP and KWP computed with AES-ECB open each other's
 * envelopes, both ways, at every size that changes the block count; where
 * the frame is a whole number of 8-byte blocks they are the same bytes
 * (elsewhere SoftHSM 2.6.1's own KWP pads before wrapping, see above, and
 * a token that follows RFC 5649 gives the ECB form's bytes).
 */
static void
test_kwp_native_ecb_cross(void **state)
{
	static const size_t sizes[] = { 1, 6, 7, 14, 32, 100, 512 };
	const struct mech_def *nat = &mech_table[MECH_KWP];
	const struct mech_def *ecb = &mech_table[MECH_KWP_ECB];
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	struct mech_sess ms;
	struct mech_key k;
	struct envelope e;
	uint8_t keyref[ENVELOPE_KEYREF_LEN], pt[KEYRING_MAX_PLAINTEXT];
	uint8_t c1[KEYRING_MAX_CIPHERTEXT], c2[KEYRING_MAX_CIPHERTEXT];
	uint8_t back[KEYRING_MAX_PLAINTEXT];
	size_t i, l1, l2, n;
	char err[256];

	(void)state;
	open_main_token(&t, &uri);
	memset(&k, 0, sizeof(k));
	assert_int_equal(token_find_key(t, uri, "test", &k.obj, NULL, err,
	    sizeof(err)), 0);
	mech_sess_init(&ms, t->fn, t->fn3, t->session, 0);
	memset(keyref, 0xab, sizeof(keyref));
	for (i = 0; i < sizeof(pt); i++)
		pt[i] = (uint8_t)(7 * i + 3);
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		assert_int_equal(mech_seal(&ms, nat, &k, keyref, pt, sizes[i],
		    c1, sizeof(c1), &l1, NULL), KEYRING_OK);
		assert_int_equal(mech_seal(&ms, ecb, &k, keyref, pt, sizes[i],
		    c2, sizeof(c2), &l2, NULL), KEYRING_OK);
		assert_int_equal(l1, l2);
		if ((ENVELOPE_FRAME_HDR + sizes[i]) % 8 == 0)
			assert_memory_equal(c1, c2, l1);
		else
			assert_memory_not_equal(c1, c2, l1);
		assert_int_equal(envelope_decode(c1, l1, &e), 0);
		assert_int_equal(mech_open(&ms, ecb, &k, &e, back, sizeof(back),
		    &n, NULL), KEYRING_OK);
		assert_int_equal(n, sizes[i]);
		assert_memory_equal(back, pt, n);
		assert_int_equal(envelope_decode(c2, l2, &e), 0);
		assert_int_equal(mech_open(&ms, nat, &k, &e, back, sizeof(back),
		    &n, NULL), KEYRING_OK);
		assert_int_equal(n, sizes[i]);
		assert_memory_equal(back, pt, n);
		/* A flipped body byte fails the integrity value either way. */
		c2[l2 - 3] ^= 0x10;
		assert_int_equal(envelope_decode(c2, l2, &e), 0);
		assert_int_equal(mech_open(&ms, ecb, &k, &e, back, sizeof(back),
		    &n, NULL), KEYRING_E_AUTH);
		assert_int_equal(mech_open(&ms, nat, &k, &e, back, sizeof(back),
		    &n, NULL), KEYRING_E_AUTH);
	}
	/* The session is clean after the refusals: another seal works. */
	assert_int_equal(mech_seal(&ms, ecb, &k, keyref, pt, 32, c1,
	    sizeof(c1), &l1, NULL), KEYRING_OK);
	token_close(t);
	p11_kit_uri_free(uri);
}

/*
 * A key the token may only use with AES-ECB (like a TPM's or YubiHSM's):
 * judged fit for aes-kwp/ecb alone, sealing 0x02 envelopes that the
 * native KWP of a both-ways key of the same value opens.
 */
static void
test_ecb_only_key(void **state)
{
	struct keyring *kr = NULL;
	struct keyring_worker *w = NULL;
	char dir[PATH_MAX], pin[PATH_MAX], err[768] = "";
	const char *u = "pkcs11:token=kms;object=e1";
	struct keyring_key_info info;
	uint8_t pt[32] = { 9 }, ct[KEYRING_MAX_CIPHERTEXT];
	size_t ctlen;

	(void)state;
	PATHF(dir, "%s/ecbonly", tt_base);
	assert_int_equal(tt_mktoken(dir, "--no-gcm --no-kwp"), 0);
	PATHF(pin, "%s/pin", dir);
	tt_use_conf(dir);
	/* keygen with no mechanism: the best AES row the token offers. */
	if (keygen(u, pin, NULL, 0, &info, err, sizeof(err)) != 0)
		fail_msg("keygen on an ECB-only token: %s", err);
	assert_string_equal(info.mechanisms, "aes-kwp/ecb");
	assert_string_equal(info.seal, "aes-kwp/ecb");
	/* Its long check value: SoftHSM's is 3 bytes, the key may do ECB. */
	assert_string_equal(info.key_id_from, "AES-ECB");
	assert_int_equal(load_mech(&u, 1, pin, NULL, &kr, err, sizeof(err)),
	    KEYRING_OK);
	assert_string_equal(keyring_key_mechanism(kr, 0), "aes-kwp/ecb");
	assert_int_equal(keyring_worker_new(kr, &w), KEYRING_OK);
	ctlen = round_trip(w, 0, pt, sizeof(pt), ct);
	assert_int_equal(ctlen, 75);
	assert_int_equal(ct[1], ENVELOPE_MECH_AES_KWP);
	/* Asking for GCM names what the token lacks. */
	keyring_worker_free(w);
	keyring_free(kr);
	kr = NULL;
	assert_int_equal(load_mech(&u, 1, pin, "aes-gcm", &kr, err,
	    sizeof(err)), KEYRING_E_CONFIG);
	assert_has(err, "CKM_AES_GCM");
	assert_int_equal(keygen("pkcs11:token=kms;object=g2", pin, "aes-gcm",
	    0, &info, err, sizeof(err)), KEYRING_E_CONFIG);
	assert_has(err, "CKM_AES_GCM");
}

/*
 * A key no mechanism may use (sign/verify only) is judged before it is
 * named: keys says why, in words naming every row, and still shows the
 * key_id; the daemon refuses it with the same words, never with a
 * check-value failure.
 */
static void
test_unusable_key_has_a_reason(void **state)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ULONG len = 32;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_ENCRYPT, &no, sizeof(no) },
		{ CKA_DECRYPT, &no, sizeof(no) },
		{ CKA_WRAP, &no, sizeof(no) },
		{ CKA_UNWRAP, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_LABEL, "signonly", 8 },
		{ CKA_ID, "\x0b", 1 },
	};
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
	struct keyring_tool_config cfg;
	struct keyring_key_info *v = NULL;
	struct keyring *kr = NULL;
	const struct keyring_key_info *k;
	const char *u = "pkcs11:token=kms;object=signonly";
	struct token *t = NULL;
	P11KitUri *uri = NULL;
	CK_OBJECT_HANDLE h;
	char err[768] = "";
	size_t n = 0;

	(void)state;
	open_main_token(&t, &uri);
	assert_int_equal(t->fn->C_GenerateKey(t->session, &gen, tmpl,
	    sizeof(tmpl) / sizeof(tmpl[0]), &h), CKR_OK);
	token_close(t);
	p11_kit_uri_free(uri);

	memset(&cfg, 0, sizeof(cfg));
	cfg.module = tt_module;
	cfg.uri = u;
	cfg.pin_file = main_pin;
	assert_int_equal(keyring_list(&cfg, &v, &n, NULL, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	k = &v[0];
	assert_int_equal(k->fit, 0);
	assert_has(k->reason, "can use no AES mechanism");
	assert_has(k->reason, "aes-gcm: CKA_ENCRYPT and CKA_DECRYPT are false");
	assert_has(k->reason, "aes-kwp: CKA_WRAP and CKA_UNWRAP are false");
	assert_lacks(k->reason, "check value");
	assert_int_equal(strlen(k->key_id), 32);
	free(v);

	assert_int_equal(load_mech(&u, 1, main_pin, NULL, &kr, err,
	    sizeof(err)), KEYRING_E_CONFIG);
	assert_null(kr);
	assert_has(err, "can use no AES mechanism");
	assert_has(err, "object=signonly");
}

/* Sizes the mechanisms promise, without a token. */
static void
test_sizes(void **state)
{
	const struct mech_def *gcm = &mech_table[MECH_GCM];
	const struct mech_def *kwp = &mech_table[MECH_KWP];
	struct mech_key k;
	size_t r;

	(void)state;
	memset(&k, 0, sizeof(k));
	assert_int_equal(mech_body_len(gcm, &k, 32), 48);
	assert_int_equal(mech_body_len(&mech_table[MECH_GCM_TIV], &k, 32), 48);
	assert_int_equal(mech_body_len(kwp, &k, 32), 56);
	/* The two KWP rows make the same bytes, so the same size. */
	assert_int_equal(mech_body_len(&mech_table[MECH_KWP_ECB], &k, 32), 56);
	assert_int_equal(mech_body_len(kwp, &k, 0), 0);
	assert_int_equal(mech_body_len(kwp, &k, KEYRING_MAX_PLAINTEXT + 1), 0);
	for (k.rsa_len = 256; k.rsa_len <= 512; k.rsa_len += 128) {
		for (r = MECH_OAEP_SHA256; r <= MECH_OAEP_SHA1; r++) {
			assert_true(mech_max_plaintext(&mech_table[r], &k) >=
			    32);
			assert_int_equal(mech_body_len(&mech_table[r], &k, 32),
			    k.rsa_len);
			assert_true(ENVELOPE_FIXED_LEN + k.rsa_len <=
			    KEYRING_MAX_CIPHERTEXT);
		}
	}
	k.rsa_len = 256;
	assert_int_equal(mech_max_plaintext(&mech_table[MECH_OAEP_SHA256], &k),
	    180);
	assert_int_equal(mech_max_plaintext(&mech_table[MECH_OAEP_SHA1], &k),
	    204);
	/* Over 4096 bits would pass the apiserver's limit: refused. */
	k.rsa_len = 513;
	assert_int_equal(mech_max_plaintext(&mech_table[MECH_OAEP_SHA1], &k),
	    0);
	assert_int_equal(mech_body_len(&mech_table[MECH_OAEP_SHA1], &k, 32),
	    0);
	assert_false(mech_env_known(0));
	assert_false(mech_env_known(6));
	assert_true(mech_env_known(ENVELOPE_MECH_AES_GCM_TIV));
	assert_true(mech_env_known(ENVELOPE_MECH_RSA_OAEP_SHA256));
}

/*
 * The mechanism table is the one place the rest reads: every row is
 * consistent with itself and the envelope bytes, in the auto order the
 * documentation promises (GCM in any form > native KWP > KWP via ECB >
 * RSA-OAEP), and every config name it uses is accepted.
 */
static void
test_table(void **state)
{
	static const char *const order[MECH_NROWS] = {
		"aes-gcm", "aes-gcm/message", "aes-gcm/token-iv", "aes-kwp",
		"aes-kwp/ecb", "rsa-oaep-sha256", "rsa-oaep-sha1",
	};
	size_t r, q;

	(void)state;
	for (r = 0; r < MECH_NROWS; r++) {
		const struct mech_def *d = &mech_table[r];

		assert_string_equal(d->name, order[r]);
		assert_true(mech_env_known(d->env));
		/* A row opens what it seals. */
		assert_true(d->opens & MECH_ENV_BIT(d->env));
		assert_int_equal(mech_env_is_rsa(d->env),
		    (d->flags & MECH_F_RSA) != 0);
		assert_true(mech_cfg_valid(d->cfg));
		assert_non_null(d->seal);
		assert_non_null(d->open);
		assert_non_null(d->ckm_name);
		assert_true(strncmp(d->ckm_name, "CKM_", 4) == 0);
		assert_true(d->use[0] != d->use[1] || (d->flags & MECH_F_RSA));
		for (q = 0; q < r; q++)
			assert_string_not_equal(d->name, mech_table[q].name);
	}
	assert_true(mech_cfg_valid("auto"));
	assert_true(mech_cfg_valid(NULL));
	assert_false(mech_cfg_valid("aes-gcm/message"));
	assert_false(mech_cfg_valid("des"));
	assert_string_equal(mech_env_name(ENVELOPE_MECH_AES_GCM_TIV),
	    "aes-gcm-token-iv");
	assert_string_equal(mech_env_name(0x77), "unknown");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_table),
		cmocka_unit_test_setup(test_kwp_rfc5649_vectors, setup),
		cmocka_unit_test_setup(test_kwp_native_ecb_cross, setup),
		cmocka_unit_test_setup(test_ecb_only_key, setup),
		cmocka_unit_test_setup(test_unusable_key_has_a_reason, setup),
		cmocka_unit_test_setup(test_kwp_round_trip, setup),
		cmocka_unit_test_setup(test_kwp_tamper, setup),
		cmocka_unit_test_setup(test_kwp_wrong_key_and_no_leftovers,
		    setup),
		cmocka_unit_test_setup(test_rsa_round_trip, setup),
		cmocka_unit_test_setup(test_rsa_tamper, setup),
		cmocka_unit_test_setup(test_rsa_key_id, setup),
		cmocka_unit_test_setup(test_preference_change, setup),
		cmocka_unit_test_setup(test_mixed_keyring, setup),
		cmocka_unit_test_setup(test_forced_mechanism_refused, setup),
		cmocka_unit_test_setup(test_keygen_attributes, setup),
		cmocka_unit_test_setup(test_keygen_refusals, setup),
		cmocka_unit_test_setup(test_keygen_report, setup),
		cmocka_unit_test_setup(test_list, setup),
		cmocka_unit_test_setup(test_kcv_kwp, setup),
		cmocka_unit_test_setup(test_no_gcm_token, setup),
	};
	const char *filter = getenv("P11KMS_TEST_FILTER");

	if (filter != NULL && *filter != '\0')
		cmocka_set_test_filter(filter);

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
