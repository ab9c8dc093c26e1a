/*
 * spin: the gate every busy-poll in p11kms goes through (--busy-poll).
 *
 * A thread that is about to sleep for its next event (the front's loop for
 * the token's answers, the token side for the next request) may first
 * poll for it for a moment. On a machine with cores to spare this keeps the
 * hand-off on a core that is awake: measured with `make bench` on a 2-core
 * VM, a lone Encrypt's p50 went from about 120 us to about 35 us, with less
 * CPU per request, because a sleeping core costs tens of microseconds to
 * wake and a request crosses three threads. A spin that ends with nothing
 * is waste, so the gate shuts itself: three misses in the last four spins
 * and the next SPIN_BACKOFF waits sleep at once (a slow token or sparse
 * requests then pay one spin in SPIN_BACKOFF + 4 waits).
 *
 * One gate per spinning thread, or under the lock of whoever shares it.
 */
#ifndef P11KMS_SPIN_H
#define P11KMS_SPIN_H

#include <stdint.h>

#define SPIN_BACKOFF	64

struct spin_gate {
	uint64_t ns;		/* the spin's budget; 0: never spin */
	unsigned last;		/* outcomes of the last four spins, 1 = miss */
	unsigned skip;		/* waits left that sleep at once */
	uint64_t spins, misses;	/* counts, for tests and figures */
};

/* In a spin's loop: tells the core a spin-wait runs. */
static inline void
spin_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Whether this wait may spin (and for how long: g->ns). */
static inline int
spin_gate_open(struct spin_gate *g)
{
	if (g->ns == 0)
		return 0;
	if (g->skip > 0) {
		g->skip--;
		return 0;
	}
	g->spins++;
	return 1;
}

/* After a spin: hit says whether what it waited for came. */
static inline void
spin_gate_done(struct spin_gate *g, int hit)
{
	unsigned v;

	g->last = (g->last << 1) & 0xf;
	if (hit)
		return;
	g->misses++;
	g->last |= 1;
	v = g->last;
	if ((v & 1) + ((v >> 1) & 1) + ((v >> 2) & 1) + ((v >> 3) & 1) >= 3) {
		g->skip = SPIN_BACKOFF;
		g->last = 0;
	}
}

#endif
