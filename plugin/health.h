/*
 * health: what the daemon knows about its tokens, as a typed state
 * machine per token (one per replica; a lone token is replica 0), and the
 * verdict Status, /readyz, /status and the metrics take from it. Status
 * never touches a token: a background probe (a real seal+open round trip
 * on a canary, aimed at each token in turn) keeps the states fresh, every
 * interval while a token is up and with backoff while it is down, and the
 * outcome of every request feeds them too.
 *
 * Per token:
 *
 *   STARTING --probe ok--> UP --fault (probe or request)--> DOWN
 *       |                   ^                                 |
 *       +--probe failed-----|---------------------------------+
 *                           +-------probe ok------------------+
 *
 * UP turns STALE (reported, not stored) when no round trip got through for
 * two intervals and 5 s: the token may be hung. The verdict: OK while
 * every token is up, DEGRADED while at least one is (every key has a
 * healthy replica: each replica holds every key), DOWN while none is or
 * the daemon has no generation (recovering, PIN refused, token process
 * lost: health_set_down), STARTING before the first probes finished.
 * OK and DEGRADED both serve and both answer Status "ok".
 *
 * Loop thread only.
 */
#ifndef P11KMS_HEALTH_H
#define P11KMS_HEALTH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "pkcs11/pool.h"
#include "plugin/loop.h"

#define HEALTH_MAX_TOKENS	4
#define HEALTH_TEXT_MAX		600

enum health_state {
	HEALTH_STARTING = 0,	/* no round trip finished yet */
	HEALTH_UP,		/* the last round trip got through */
	HEALTH_STALE,		/* up, but no round trip for too long */
	HEALTH_DOWN,		/* a token fault; probed with backoff */
};

enum health_verdict {
	HEALTH_V_STARTING = 0,
	HEALTH_V_OK,		/* every token up */
	HEALTH_V_DEGRADED,	/* some token down, every key still served */
	HEALTH_V_DOWN,		/* no token serves */
};

struct gen;
struct health;

struct health_config {
	unsigned probe_interval_s;
	/* A token-level failure left no token up (the daemon reopens the
	 * whole generation, with backoff of its own). */
	void (*token_fault)(void *arg);
	/* The verdict changed (readyz follows at once). */
	void (*changed)(void *arg);
	void *arg;			/* for both */
};

int health_new(struct loop *l, const struct health_config *cfg,
    struct health **out);
/* Detaches running probes (their jobs come back and are only freed). */
void health_free(struct health *h);

/*
 * A new generation serves (its load proved every token with a round trip
 * per key, so all are UP); g NULL: the daemon is reopening the token, and
 * the verdict is DOWN until the next one. Probes of the old one are
 * detached.
 */
void health_set_gen(struct health *h, struct gen *g);
/* The daemon as a whole cannot serve (why: a sentence). */
void health_set_down(struct health *h, const char *why);
/* Probes every token now (those with no probe running). */
void health_probe(struct health *h);
/* A request's job came back (any status): its faults move the states. */
void health_job(struct health *h, const struct pool_job *job);

enum health_verdict health_verdict(struct health *h);
/* 1 for OK and DEGRADED: serve, be ready, answer Status "ok". */
int health_serving(struct health *h);
/* 1 once every token has finished a round trip (or failed one). */
int health_probed(const struct health *h);
/*
 * For Status: "ok" while serving, else a sentence saying what is wrong.
 * Points into h until the next call.
 */
const char *health_healthz(struct health *h);
/*
 * For /readyz and /status: "ok", "degraded: replica 'kms-a' down: ...",
 * or what health_healthz says. Points into h until the next call.
 */
const char *health_detail(struct health *h);
/* A request that finds no token up fails with this (into h). */
const char *health_why(struct health *h);

/* Per token, 0..health_ntokens()-1: name, state, its failure or "". */
size_t health_ntokens(const struct health *h);
const char *health_token_name(const struct health *h, size_t i);
enum health_state health_token_state(struct health *h, size_t i);
const char *health_token_why(const struct health *h, size_t i);
/* "starting", "up", "stale", "down". */
const char *health_state_name(enum health_state s);
const char *health_verdict_name(enum health_verdict v);

#endif
