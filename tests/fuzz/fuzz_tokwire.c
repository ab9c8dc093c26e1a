/*
 * Fuzz target for the front <-> token process protocol (plugin/tokwire.c)
 * in both directions, and the front's client (plugin/tokproc.c) reading a
 * hostile token process.
 *
 * Input: one byte picking the side (even: the token process decodes what
 * the front sent; odd: the front decodes what a token process sent), then
 * the bytes off the socket. Invariants: a frame that decodes re-encodes to
 * the very same bytes; the client never completes a job twice or one it
 * does not hold, and either survives the input or counts the process as
 * lost with every job handed back.
 */
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "pkcs11/pool.h"
#include "plugin/tokproc.h"
#include "plugin/tokwire.h"
#include "tests/fuzz/fuzz.h"

static struct tokwire_msg msg;
static uint8_t re[TOKWIRE_MAX_FRAME];
static int done_calls;

static void
job_done(struct pool_job *job)
{
	done_calls++;
	pool_job_free(job);
}

/* Every frame of the input through the decoder, and back. */
static void
frames(const uint8_t *p, size_t n, enum tokwire_dir dir)
{
	size_t len;
	long fl;

	while ((fl = tokwire_frame(p, n)) > 0) {
		FUZZ_CHECK((size_t)fl <= n && (size_t)fl <= TOKWIRE_MAX_FRAME);
		if (tokwire_decode(p, (size_t)fl, dir, &msg) == 0) {
			len = tokwire_encode(&msg, re, sizeof(re));
			FUZZ_CHECK(len == (size_t)fl);
			FUZZ_CHECK(memcmp(re, p, len) == 0);
		}
		p += fl;
		n -= (size_t)fl;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tokwire_ready meta;
	struct tokproc *tp;
	struct pool_job *job;
	int sv[2], i;

	if (size < 1)
		return 0;
	frames(data + 1, size - 1, (data[0] & 1) ? TOKWIRE_TO_FRONT :
	    TOKWIRE_TO_TOKEN);
	if ((data[0] & 1) == 0)
		return 0;
	/* The client with two jobs in flight (ids 1<<16 and 2<<16|1). */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		return 0;
	memset(&meta, 0, sizeof(meta));
	meta.nkeys = 1;
	if ((tp = tokproc_from_fd(sv[0], &meta, 4)) == NULL) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	done_calls = 0;
	for (i = 0; i < 2; i++) {
		if ((job = pool_job_new(POOL_OPEN)) == NULL)
			break;
		job->done = job_done;
		if (tokproc_submit(tp, job) != 0)
			pool_job_free(job);
	}
	if (tokproc_feed(tp, data + 1, size - 1) != 0)
		FUZZ_CHECK(tokproc_dead(tp) && tokproc_inflight(tp) == 0 &&
		    done_calls == 2);
	FUZZ_CHECK(done_calls + (int)tokproc_inflight(tp) == 2);
	tokproc_free(tp);
	FUZZ_CHECK(done_calls == 2);
	close(sv[1]);
	return 0;
}
