/*
 * Unit tests for the front <-> token process protocol (plugin/tokwire.c)
 * and the front's client (plugin/tokproc.c) fed by hand: round trips,
 * oversized, truncated, wrong-version, wrong-direction and wrong-id
 * messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "pkcs11/pool.h"
#include "plugin/tokproc.h"
#include "plugin/tokwire.h"

static uint8_t buf[TOKWIRE_MAX_FRAME + 64];

static struct tokwire_msg *
msg_new(int type, uint64_t id)
{
	struct tokwire_msg *m = calloc(1, sizeof(*m));

	assert_non_null(m);
	m->type = (uint8_t)type;
	m->id = id;
	return m;
}

static void
fill_ready(struct tokwire_ready *r, unsigned nkeys)
{
	unsigned i;

	r->pid = 4242;
	strcpy(r->socket_path, "/run/p11kms/kms.sock");
	strcpy(r->kms_version, "v2");
	strcpy(r->audit_log, "/var/log/p11kms/audit.log");
	r->max_request = 65536;
	r->probe_interval_s = 10;
	r->grace_s = 5;
	r->log_level = 2;
	r->busy_poll = 1;
	r->workers = 2;
	r->inflight = 1024;
	strcpy(r->workers_from, "software slot: CPU count");
	strcpy(r->token_label, "kms");
	strcpy(r->token_serial, "0123456789abcdef");
	r->max_sessions = 0;
	r->nkeys = (uint8_t)nkeys;
	for (i = 0; i < nkeys; i++) {
		memset(r->keys[i].key_id, 'a' + (int)i, 32);
		strcpy(r->keys[i].desc, "token 'kms' object 'kek1'");
		strcpy(r->keys[i].mechanism, "aes-gcm");
		strcpy(r->keys[i].mechanisms, "aes-gcm,aes-kwp");
	}
}

static void
test_round_trip_each_type(void **state)
{
	static const int types[] = { TOKWIRE_REQ, TOKWIRE_READY,
	    TOKWIRE_FAILED, TOKWIRE_REPLY, TOKWIRE_STATS, TOKWIRE_CALLS };
	struct tokwire_msg *m, *back = msg_new(0, 0);
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		m = msg_new(types[i], 7 + i);
		switch (types[i]) {
		case TOKWIRE_REQ:
			m->u.req.op = POOL_OPEN;
			m->u.req.deadline = 123456789;
			strcpy(m->u.req.key_id, "abcd");
			m->u.req.in_len = KEYRING_MAX_CIPHERTEXT;
			memset(m->u.req.in, 0x5a, KEYRING_MAX_CIPHERTEXT);
			break;
		case TOKWIRE_READY:
			fill_ready(&m->u.ready, KEYRING_MAX_KEYS);
			break;
		case TOKWIRE_FAILED:
			m->u.failed.status = KEYRING_E_PIN;
			strcpy(m->u.failed.err, "PIN refused");
			break;
		case TOKWIRE_REPLY:
			m->u.reply.status = KEYRING_OK;
			m->u.reply.out_len = 40;
			memset(m->u.reply.out, 1, 40);
			strcpy(m->u.reply.key_id_out, "abcd");
			m->u.reply.started = 1;
			m->u.reply.finished = 2;
			break;
		case TOKWIRE_STATS:
			m->u.stats.workers = 2;
			m->u.stats.busy = 1;
			break;
		case TOKWIRE_CALLS:
			m->u.calls.n = TOKWIRE_CALLS_MAX;
			strcpy(m->u.calls.c[0].fn, "C_Encrypt");
			m->u.calls.c[0].ns = 40000;
			break;
		}
		n = tokwire_encode(m, buf, sizeof(buf));
		assert_true(n > TOKWIRE_HDR);
		assert_int_equal(tokwire_frame(buf, n), (long)n);
		/* Every shorter prefix asks for more. */
		assert_int_equal(tokwire_frame(buf, n - 1), 0);
		assert_int_equal(tokwire_decode(buf, n, types[i] ==
		    TOKWIRE_REQ ? TOKWIRE_TO_TOKEN : TOKWIRE_TO_FRONT, back), 0);
		assert_int_equal(back->type, types[i]);
		assert_int_equal(back->id, 7 + i);
		/* The other side never accepts it. */
		assert_int_equal(tokwire_decode(buf, n, types[i] ==
		    TOKWIRE_REQ ? TOKWIRE_TO_FRONT : TOKWIRE_TO_TOKEN, back),
		    TOKWIRE_E_TYPE);
		if (types[i] == TOKWIRE_REQ)
			assert_memory_equal(back->u.req.in, m->u.req.in,
			    KEYRING_MAX_CIPHERTEXT);
		if (types[i] == TOKWIRE_READY) {
			assert_int_equal(back->u.ready.nkeys, KEYRING_MAX_KEYS);
			assert_string_equal(back->u.ready.keys[15].key_id,
			    m->u.ready.keys[15].key_id);
			assert_string_equal(back->u.ready.audit_log,
			    "/var/log/p11kms/audit.log");
			assert_int_equal(back->u.ready.busy_poll, 1);
		}
		free(m);
	}
	free(back);
}

static void
test_oversized(void **state)
{
	struct tokwire_msg *m = msg_new(TOKWIRE_FAILED, 0);
	size_t n;

	(void)state;
	/* A length over the cap is refused from its first 4 bytes. */
	buf[0] = 0x00;
	buf[1] = 0x00;
	buf[2] = (TOKWIRE_MAX_BODY + 1) >> 8;
	buf[3] = (TOKWIRE_MAX_BODY + 1) & 0xff;
	assert_int_equal(tokwire_frame(buf, 4), TOKWIRE_E_BIG);
	buf[0] = 0xff;
	assert_int_equal(tokwire_frame(buf, 4), TOKWIRE_E_BIG);
	/* A string field over its cap: encode refuses, decode too. */
	memset(m->u.failed.err, 'x', sizeof(m->u.failed.err));
	assert_int_equal(tokwire_encode(m, buf, sizeof(buf)), 0);
	m->u.failed.err[sizeof(m->u.failed.err) - 1] = '\0';
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_true(n > 0);
	/* Lengthen the string's length field past the cap by one. */
	buf[TOKWIRE_HDR + 4] = (uint8_t)(TOKWIRE_ERR_MAX >> 8);
	buf[TOKWIRE_HDR + 5] = (uint8_t)(TOKWIRE_ERR_MAX & 0xff);
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_FRONT, m),
	    TOKWIRE_E_BIG);
	/* A REPLY whose out length is over KEYRING_MAX_CIPHERTEXT. */
	memset(m, 0, sizeof(*m));
	m->type = TOKWIRE_REPLY;
	m->id = 1;
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_true(n > 0);
	buf[TOKWIRE_HDR + 4] = 0x04;
	buf[TOKWIRE_HDR + 5] = 0x01;	/* 1025 */
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_FRONT, m),
	    TOKWIRE_E_BIG);
	/* READY with more keys than a keyring holds. */
	memset(m, 0, sizeof(*m));
	m->type = TOKWIRE_READY;
	fill_ready(&m->u.ready, KEYRING_MAX_KEYS);
	m->u.ready.nkeys = KEYRING_MAX_KEYS + 1;
	assert_int_equal(tokwire_encode(m, buf, sizeof(buf)), 0);
	free(m);
}

static void
test_truncated_and_trailing(void **state)
{
	struct tokwire_msg *m = msg_new(TOKWIRE_REPLY, 9);
	size_t n, cut;

	(void)state;
	m->u.reply.out_len = 60;
	strcpy(m->u.reply.detail, "C_Encrypt: CKR_DEVICE_REMOVED");
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_true(n > 0);
	/* A frame whose length says less than its fields need. */
	for (cut = 1; cut <= n - TOKWIRE_HDR; cut++) {
		uint32_t len = (uint32_t)(n - 4 - cut);

		buf[0] = (uint8_t)(len >> 24);
		buf[1] = (uint8_t)(len >> 16);
		buf[2] = (uint8_t)(len >> 8);
		buf[3] = (uint8_t)len;
		assert_int_equal(tokwire_decode(buf, n - cut, TOKWIRE_TO_FRONT,
		    m), TOKWIRE_E_SHORT);
	}
	/* Under the minimum body. */
	buf[0] = buf[1] = buf[2] = 0;
	buf[3] = TOKWIRE_MIN_BODY - 1;
	assert_int_equal(tokwire_frame(buf, 4), TOKWIRE_E_SHORT);
	/* One byte more than the fields: trailing. */
	m->type = TOKWIRE_STATS;
	n = tokwire_encode(m, buf, sizeof(buf));
	buf[3]++;
	buf[n] = 0;
	assert_int_equal(tokwire_decode(buf, n + 1, TOKWIRE_TO_FRONT, m),
	    TOKWIRE_E_TRAILING);
	/* A buffer longer than its frame is not one frame. */
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_int_equal(tokwire_decode(buf, n + 1, TOKWIRE_TO_FRONT, m),
	    TOKWIRE_E_TRAILING);
	free(m);
}

static void
test_version_type_fields(void **state)
{
	struct tokwire_msg *m = msg_new(TOKWIRE_REQ, 5);
	size_t n;

	(void)state;
	m->u.req.op = POOL_SEAL;
	n = tokwire_encode(m, buf, sizeof(buf));
	buf[4] = TOKWIRE_VERSION + 1;
	assert_int_equal(tokwire_frame(buf, 5), TOKWIRE_E_VERSION);
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_TOKEN, m),
	    TOKWIRE_E_VERSION);
	buf[4] = TOKWIRE_VERSION;
	buf[5] = 99;
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_TOKEN, m),
	    TOKWIRE_E_TYPE);
	/* An unknown op, a request with id 0, a NUL inside a string. */
	m->type = TOKWIRE_REQ;
	m->id = 5;
	m->u.req.op = 77;
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_TOKEN, m),
	    TOKWIRE_E_FIELD);
	m->u.req.op = POOL_SEAL;
	m->id = 0;
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_TOKEN, m),
	    TOKWIRE_E_FIELD);
	m->id = 5;
	strcpy(m->u.req.key_id, "ab");
	n = tokwire_encode(m, buf, sizeof(buf));
	buf[TOKWIRE_HDR + 1 + 8 + 2 + 1] = '\0';	/* "a\0" */
	assert_int_equal(tokwire_decode(buf, n, TOKWIRE_TO_TOKEN, m),
	    TOKWIRE_E_FIELD);
	free(m);
}

/* ---- the client, fed by hand ---- */

static int done_calls;
static int done_status;

static void
job_done(struct pool_job *job)
{
	done_calls++;
	done_status = job->status;
	pool_job_free(job);
}

static struct tokproc *
client(int *peer)
{
	struct tokwire_ready meta;
	struct tokproc *tp;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	memset(&meta, 0, sizeof(meta));
	fill_ready(&meta, 1);
	tp = tokproc_from_fd(sv[0], &meta, 4);
	assert_non_null(tp);
	*peer = sv[1];
	return tp;
}

/* Queues job; without a loop its request stays in the client's buffer. */
static void
submit_one(struct tokproc *tp, struct pool_job *job)
{
	done_calls = 0;
	assert_int_equal(tokproc_submit(tp, job), 0);
	assert_int_equal(tokproc_inflight(tp), 1);
}

static void
feed_reply(struct tokproc *tp, uint64_t id, int want)
{
	struct tokwire_msg *m = msg_new(TOKWIRE_REPLY, id);
	size_t n;

	m->u.reply.status = KEYRING_OK;
	m->u.reply.out_len = 3;
	memcpy(m->u.reply.out, "abc", 3);
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_int_equal(tokproc_feed(tp, buf, n), want);
	free(m);
}

static void
test_client_ids(void **state)
{
	struct pool_job *job;
	struct tokproc *tp;
	int peer;

	(void)state;
	tp = client(&peer);
	job = pool_job_new(POOL_SEAL);
	job->done = job_done;
	job->in_len = 4;
	submit_one(tp, job);
	/* Ids are (sequence << 16) | slot: the first is 1 << 16, slot 0. */
	feed_reply(tp, (1ull << 16) | 1, -1);		/* wrong slot */
	assert_int_equal(done_calls, 1);
	assert_int_equal(done_status, KEYRING_E_TOKEN);
	assert_true(tokproc_dead(tp));
	job = pool_job_new(POOL_SEAL);
	assert_int_equal(tokproc_submit(tp, job), KEYRING_E_TOKEN);
	pool_job_free(job);		/* refused: still the caller's */
	tokproc_free(tp);
	close(peer);

	/* The right id completes the job; the same id again is wrong. */
	tp = client(&peer);
	job = pool_job_new(POOL_SEAL);
	job->done = job_done;
	submit_one(tp, job);
	feed_reply(tp, 2ull << 16, -1);			/* wrong sequence */
	assert_int_equal(done_status, KEYRING_E_TOKEN);
	tokproc_free(tp);
	close(peer);

	tp = client(&peer);
	job = pool_job_new(POOL_SEAL);
	job->done = job_done;
	submit_one(tp, job);
	feed_reply(tp, 1ull << 16, 0);
	assert_int_equal(done_calls, 1);
	assert_int_equal(done_status, KEYRING_OK);
	assert_int_equal(tokproc_inflight(tp), 0);
	feed_reply(tp, 1ull << 16, -1);			/* not in flight */
	assert_true(tokproc_dead(tp));
	tokproc_free(tp);
	close(peer);
}

static void
test_client_bad_input(void **state)
{
	struct tokwire_msg *m = msg_new(TOKWIRE_REQ, 1);
	struct pool_job *job;
	struct tokproc *tp;
	size_t n;
	int peer;

	(void)state;
	/* A message type the front never gets. */
	tp = client(&peer);
	job = pool_job_new(POOL_OPEN);
	job->done = job_done;
	submit_one(tp, job);
	m->u.req.op = POOL_SEAL;
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_int_equal(tokproc_feed(tp, buf, n), -1);
	assert_int_equal(done_status, KEYRING_E_TOKEN);
	tokproc_free(tp);
	close(peer);

	/* A length over the cap, in pieces: dropped on the 4th byte. */
	tp = client(&peer);
	buf[0] = 0x7f;
	buf[1] = buf[2] = buf[3] = 0xff;
	assert_int_equal(tokproc_feed(tp, buf, 3), 0);
	assert_int_equal(tokproc_feed(tp, buf + 3, 1), -1);
	tokproc_free(tp);
	close(peer);

	/* A truncated frame waits; the rest completes it. */
	tp = client(&peer);
	job = pool_job_new(POOL_OPEN);
	job->done = job_done;
	submit_one(tp, job);
	m->type = TOKWIRE_REPLY;
	m->id = 1ull << 16;
	memset(&m->u.reply, 0, sizeof(m->u.reply));
	n = tokwire_encode(m, buf, sizeof(buf));
	assert_int_equal(tokproc_feed(tp, buf, n - 1), 0);
	assert_int_equal(done_calls, 0);
	assert_int_equal(tokproc_feed(tp, buf + n - 1, 1), 0);
	assert_int_equal(done_calls, 1);
	tokproc_free(tp);
	close(peer);
	free(m);
}

static void
test_client_full(void **state)
{
	struct pool_job *jobs[5];
	struct tokproc *tp;
	int peer, i;

	(void)state;
	tp = client(&peer);		/* 4 in flight at most */
	done_calls = 0;
	for (i = 0; i < 5; i++) {
		jobs[i] = pool_job_new(POOL_SEAL);
		jobs[i]->done = job_done;
	}
	for (i = 0; i < 4; i++)
		assert_int_equal(tokproc_submit(tp, jobs[i]), 0);
	assert_int_equal(tokproc_submit(tp, jobs[4]), POOL_E_BUSY);
	pool_job_free(jobs[4]);
	/* Freeing the client hands the four back, cancelled. */
	tokproc_free(tp);
	assert_int_equal(done_calls, 4);
	assert_int_equal(done_status, POOL_E_CANCELLED);
	close(peer);
}

/*
 * The fuzz corpus's READY seeds (tests/fuzz/mkcorpus_tokwire.py) are
 * well-formed frames of today's layout, so the fuzzer starts from messages
 * that reach the key fields instead of failing at the first setting.
 */
static void
test_corpus_ready_decodes(void **state)
{
	static const char *names[] = { "to-front-ready", "to-front-ready-16" };
	static const size_t nkeys[] = { 1, 16 };
	const char *src = getenv("P11KMS_SRCDIR");
	struct tokwire_msg *m;
	uint8_t fbuf[TOKWIRE_MAX_FRAME + 1];
	char path[512];
	size_t i, n;
	FILE *f;

	(void)state;
	assert_non_null(m = calloc(1, sizeof(*m)));
	for (i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/tokwire/%s",
		    src != NULL ? src : ".", names[i]);
		assert_non_null(f = fopen(path, "rb"));
		n = fread(fbuf, 1, sizeof(fbuf), f);
		fclose(f);
		/* The first byte is the fuzz target's direction. */
		assert_true(n > 1 && fbuf[0] == 1);
		assert_int_equal(tokwire_decode(fbuf + 1, n - 1,
		    TOKWIRE_TO_FRONT, m), 0);
		assert_int_equal(m->type, TOKWIRE_READY);
		assert_int_equal(m->u.ready.nkeys, nkeys[i]);
		assert_int_equal(m->u.ready.max_connections, 1024);
		assert_int_equal(m->u.ready.busy_poll, 1);
		assert_string_equal(m->u.ready.log_format, "logfmt");
	}
	free(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_each_type),
		cmocka_unit_test(test_oversized),
		cmocka_unit_test(test_corpus_ready_decodes),
		cmocka_unit_test(test_truncated_and_trailing),
		cmocka_unit_test(test_version_type_fields),
		cmocka_unit_test(test_client_ids),
		cmocka_unit_test(test_client_bad_input),
		cmocka_unit_test(test_client_full),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
