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
 * is waste, so the gate shuts itself when misses pass a third of the spins:
 * a miss adds SPIN_MISS to a score, a hit takes one off, and at SPIN_SHUT
 * the next SPIN_BACKOFF waits sleep at once. After that a single miss
 * shuts it again, until hits bring the score down.
 *
 * Why a rate and not the last few spins: the first gate shut on three
 * misses in the last four, and on a VM whose host steals time a tenth of
 * the spins miss without the traffic having changed (a client's round trip
 * now and then outlasts the budget). Three in four then came often enough
 * that 13 % of waits slept at a 10 % miss rate and 48 % at 20 %, each
 * paying the wake-ups the spin is there to save (simulated in
 * tests/unit/test_loop.c, test_spin_gate_rates). This gate keeps spinning
 * through 20 % misses and backs off harder than the old one when nothing
 * comes (a slow token, sparse requests: one spin in SPIN_BACKOFF + 1
 * waits, against 3 in 67).
 *
 * One gate per spinning thread, or under the lock of whoever shares it.
 */
#ifndef P11KMS_SPIN_H
#define P11KMS_SPIN_H

#include <sched.h>
#include <stdint.h>

#define SPIN_BACKOFF	64	/* waits that sleep at once, once shut */
#define SPIN_MISS	2	/* a miss weighs two hits */
#define SPIN_SHUT	16	/* the score that shuts the gate */
#define SPIN_YIELD_NS	2000	/* a spinner yields its core this often */

struct spin_gate {
	uint64_t ns;		/* the spin's budget; 0: never spin */
	unsigned score;		/* SPIN_MISS a miss, -1 a hit; shut at SPIN_SHUT */
	unsigned skip;		/* waits left that sleep at once */
	uint64_t spins, misses;	/* counts, for tests and figures */
};

/*
 * In a spin's loop, each turn (now: the time the turn read): tells the
 * core a spin-wait runs, and every SPIN_YIELD_NS hands the core to any
 * thread queued on it, with *next the time of the next hand-off (0 at the
 * spin's start). The thread a spin waits for is often that thread: a
 * wake-up the scheduler places on the spinner's core preempts the spinner,
 * so that core then holds the woken thread and the preempted spinner,
 * runnable, while the other core idles. perf showed it for nearly every
 * lone request (the front, woken by the client, preempted the spinning
 * worker, then spun for the worker's answer with the worker queued behind
 * it until its budget ran out). sched_yield(2) runs the queued thread at
 * once; on a core with nobody else queued it returns at once. Yielding at
 * every turn instead cost 8 % of the in-process c=64 throughput, where
 * idle workers spin between bursts.
 */
static inline void
spin_relax(uint64_t now, uint64_t *next)
{
	if (now >= *next) {
		if (*next != 0)
			(void)sched_yield();
		*next = now + SPIN_YIELD_NS;
		return;
	}
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
	if (hit) {
		if (g->score > 0)
			g->score--;
		return;
	}
	g->misses++;
	g->score += SPIN_MISS;
	if (g->score >= SPIN_SHUT) {
		g->skip = SPIN_BACKOFF;
		/* On probation: the next miss shuts it again. */
		g->score = SPIN_SHUT - SPIN_MISS;
	}
}

#endif
