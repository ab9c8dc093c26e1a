/*
 * health: the per-token state machine, its probes and the verdict
 * (health.h). Each token has a timer and at most one probe job; a probe
 * aimed at replica r runs on r's workers whatever its state, and one that
 * gets through there also puts r back into the pool's rotation.
 */
#include "plugin/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/gen.h"
#include "plugin/log.h"

#define NS_PER_S		1000000000ull
#define BACKOFF_MIN_NS		NS_PER_S	/* first probe after a fault */
#define PROBE_SESSION_TRIES	3	/* lost sessions before "down" */
#define PROBE_SESSION_RETRY_NS	100000000ull	/* 100 ms */

struct htoken {
	struct health *h;
	size_t idx;
	enum health_state state;
	char name[GEN_REPLICA_NAME_MAX];
	char why[256];			/* the failure, while down */
	time_t down_since;		/* wall clock, for the message */
	uint64_t last_ok;		/* loop_now() of the last round trip */
	uint64_t backoff;		/* ns to the next probe while down */
	unsigned session_fails;		/* probes in a row that lost one */
	struct pool_job *probe;		/* running, or NULL */
	struct loop_timer timer;
};

struct health {
	struct loop *loop;
	struct gen *g;			/* serving; NULL while recovering */
	uint64_t interval;		/* ns */
	size_t n;
	struct htoken tok[HEALTH_MAX_TOKENS];
	int down;			/* health_set_down / no generation */
	int ever_probed;		/* a verdict other than STARTING */
	char down_why[300];
	enum health_verdict last;	/* for changed() */
	void (*token_fault)(void *);
	void (*changed)(void *);
	void *arg;
	char text[HEALTH_TEXT_MAX];
	char detail[HEALTH_TEXT_MAX];
};

static void probe_one(struct htoken *t);

const char *
health_state_name(enum health_state s)
{
	switch (s) {
	case HEALTH_STARTING:
		return "starting";
	case HEALTH_UP:
		return "up";
	case HEALTH_STALE:
		return "stale";
	case HEALTH_DOWN:
		return "down";
	}
	return "unknown";
}

const char *
health_verdict_name(enum health_verdict v)
{
	switch (v) {
	case HEALTH_V_STARTING:
		return "starting";
	case HEALTH_V_OK:
		return "ok";
	case HEALTH_V_DEGRADED:
		return "degraded";
	case HEALTH_V_DOWN:
		return "down";
	}
	return "unknown";
}

/* "replica 'kms-a'" with replicas, "token" alone. */
static void
who(const struct htoken *t, char *out, size_t cap)
{
	if (t->h->n > 1)
		snprintf(out, cap, "replica '%s'", t->name);
	else
		snprintf(out, cap, "token");
}

static void
notify_if_changed(struct health *h)
{
	enum health_verdict v = health_verdict(h);

	if (v == h->last)
		return;
	h->last = v;
	if (h->changed != NULL)
		h->changed(h->arg);
}

static uint64_t
backoff_cap(const struct health *h)
{
	return h->interval < 30 * NS_PER_S ? h->interval : 30 * NS_PER_S;
}

static void
schedule(struct htoken *t, uint64_t after)
{
	(void)loop_timer_start(t->h->loop, &t->timer, loop_now() + after);
}

static int
any_up(struct health *h)
{
	size_t i;

	for (i = 0; i < h->n; i++)
		if (h->tok[i].state == HEALTH_UP)
			return 1;
	return 0;
}

/*
 * Token t failed. detail: the token's own words ("C_Encrypt:
 * CKR_DEVICE_REMOVED"), or "" for keyring_strerror(status).
 */
static void
token_down(struct htoken *t, const char *what, int status, const char *detail)
{
	struct health *h = t->h;
	char w[80];
	int was = t->state != HEALTH_DOWN;

	if (detail != NULL && detail[0] != '\0')
		snprintf(t->why, sizeof(t->why), "%s: %s", what, detail);
	else
		snprintf(t->why, sizeof(t->why), "%s: %s", what,
		    keyring_strerror(status));
	if (was) {
		t->down_since = time(NULL);
		t->backoff = BACKOFF_MIN_NS;
		who(t, w, sizeof(w));
		if (h->n > 1)
			log_warn("%s unhealthy: %s", w, t->why);
		else
			log_warn("token unhealthy: %s", t->why);
		if (t->probe == NULL)
			schedule(t, t->backoff);
	}
	t->state = HEALTH_DOWN;
	notify_if_changed(h);
	/* One token: as before, the daemon reopens it. Replicas: only once
	 * none is left; each comes back by its own probes otherwise. */
	if (status == KEYRING_E_TOKEN && h->token_fault != NULL &&
	    (h->n == 1 || !any_up(h)))
		h->token_fault(h->arg);
}

static void
token_up(struct htoken *t, uint64_t at, double ms)
{
	char w[80];

	if (t->state == HEALTH_DOWN) {
		who(t, w, sizeof(w));
		log_info("%s healthy: seal/open round trip succeeded in "
		    "%.3f ms", w, ms);
	}
	t->state = HEALTH_UP;
	t->why[0] = '\0';
	t->last_ok = at;
	t->session_fails = 0;
	t->backoff = BACKOFF_MIN_NS;
}

static void
probe_done(struct pool_job *job)
{
	struct htoken *t = job->arg;
	struct health *h;
	uint64_t next;

	if (t == NULL) {		/* detached */
		pool_job_free(job);
		return;
	}
	h = t->h;
	t->probe = NULL;
	if (job->status == KEYRING_OK) {
		token_up(t, job->finished, (double)(job->finished -
		    job->started) / 1e6);
	} else if (job->status == KEYRING_E_SESSION &&
	    ++t->session_fails < PROBE_SESSION_TRIES) {
		/* The worker has a new session already: try again soon
		 * rather than call the token down for one lost session. */
		pool_job_free(job);
		schedule(t, PROBE_SESSION_RETRY_NS);
		return;
	} else if (job->status == KEYRING_E_SESSION) {
		/* Sessions keep failing: treat it as the token's fault. */
		token_down(t, "seal/open round trip failed on fresh sessions",
		    KEYRING_E_TOKEN, job->detail);
	} else if (job->status == POOL_E_DEADLINE) {
		token_down(t, "health probe waited longer than the probe "
		    "interval for a token session", KEYRING_E_TOKEN, NULL);
	} else if (job->status != POOL_E_CANCELLED) {
		token_down(t, "seal/open round trip failed", job->status,
		    job->detail);
	}
	pool_job_free(job);
	if (!h->ever_probed && health_probed(h))
		h->ever_probed = 1;
	if (t->state == HEALTH_DOWN) {
		next = t->backoff;
		t->backoff = t->backoff * 2 > backoff_cap(h) ?
		    backoff_cap(h) : t->backoff * 2;
	} else {
		next = h->interval;
	}
	schedule(t, next);
	notify_if_changed(h);
}

static void
probe_one(struct htoken *t)
{
	struct health *h = t->h;
	struct pool_job *job;

	if (t->probe != NULL)
		return;
	loop_timer_stop(h->loop, &t->timer);
	if (h->g == NULL)		/* recovering: the daemon reports */
		return;
	if ((job = pool_job_new(POOL_PROBE)) == NULL) {
		schedule(t, NS_PER_S);
		return;
	}
	job->deadline = loop_now() + h->interval;
	job->done = probe_done;
	job->arg = t;
	/* A lone token: any worker, as before. Replicas: this one. */
	job->replica = h->n > 1 ? (int)t->idx : -1;
	if (gen_submit(h->g, job) != 0) {
		/* Every slot busy (or the token process is gone, which
		 * the daemon hears about itself): retry. */
		pool_job_free(job);
		schedule(t, NS_PER_S);
		return;
	}
	t->probe = job;
}

static void
probe_timer(void *arg)
{
	probe_one(arg);
}

int
health_new(struct loop *l, const struct health_config *cfg,
    struct health **out)
{
	struct health *h;
	size_t i;

	*out = NULL;
	if ((h = calloc(1, sizeof(*h))) == NULL)
		return -1;
	h->loop = l;
	h->interval = (uint64_t)cfg->probe_interval_s * NS_PER_S;
	h->token_fault = cfg->token_fault;
	h->changed = cfg->changed;
	h->arg = cfg->arg;
	h->n = 1;
	h->last = HEALTH_V_STARTING;
	for (i = 0; i < HEALTH_MAX_TOKENS; i++) {
		h->tok[i].h = h;
		h->tok[i].idx = i;
		h->tok[i].timer.cb = probe_timer;
		h->tok[i].timer.arg = &h->tok[i];
	}
	*out = h;
	return 0;
}

static void
detach_probes(struct health *h)
{
	size_t i;

	for (i = 0; i < HEALTH_MAX_TOKENS; i++) {
		loop_timer_stop(h->loop, &h->tok[i].timer);
		if (h->tok[i].probe != NULL) {	/* of the old pool */
			pool_job_cancel(h->tok[i].probe);
			h->tok[i].probe->arg = NULL;
			h->tok[i].probe = NULL;
		}
	}
}

void
health_free(struct health *h)
{
	if (h == NULL)
		return;
	detach_probes(h);
	free(h);
}

void
health_set_gen(struct health *h, struct gen *g)
{
	size_t i, n;
	int first = h->g == NULL && !h->down && !h->ever_probed;

	detach_probes(h);
	h->g = g;
	if (g == NULL) {
		if (!h->down)
			health_set_down(h, "reopening the token after a "
			    "fault");
		return;
	}
	n = gen_nreplicas(g);
	h->n = n < 1 ? 1 : n > HEALTH_MAX_TOKENS ? HEALTH_MAX_TOKENS : n;
	if (h->down && !first)
		log_info("token healthy: keyring reloaded");
	h->down = 0;
	h->down_why[0] = '\0';
	for (i = 0; i < HEALTH_MAX_TOKENS; i++) {
		struct htoken *t = &h->tok[i];

		snprintf(t->name, sizeof(t->name), "%s",
		    i < h->n ? gen_replica_name(g, i) : "");
		/* The first generation: its probes decide (the start-up
		 * round trip); a later one was just loaded, which includes a
		 * round trip with every key on every replica. */
		t->state = first ? HEALTH_STARTING : HEALTH_UP;
		t->why[0] = '\0';
		t->last_ok = loop_now();
		t->session_fails = 0;
		t->backoff = BACKOFF_MIN_NS;
		if (i < h->n && !first)
			schedule(t, h->interval);
	}
	if (!first)
		h->ever_probed = 1;
	notify_if_changed(h);
}

void
health_set_down(struct health *h, const char *why)
{
	int was = !h->down;

	h->ever_probed = 1;
	h->down = 1;
	snprintf(h->down_why, sizeof(h->down_why), "%s", why);
	if (was)
		log_warn("token unhealthy: %s", why);
	notify_if_changed(h);
}

void
health_probe(struct health *h)
{
	size_t i;

	for (i = 0; i < h->n; i++)
		probe_one(&h->tok[i]);
}

void
health_job(struct health *h, const struct pool_job *job)
{
	struct htoken *t;
	int r;

	if (h->g == NULL)
		return;
	if (job->failed_on >= 0 && (size_t)job->failed_on < h->n) {
		/* It ran again elsewhere; the replica it left is down. */
		t = &h->tok[job->failed_on];
		if (t->state != HEALTH_DOWN)
			token_down(t, "token operation failed",
			    KEYRING_E_TOKEN, job->detail);
	}
	if (job->status != KEYRING_E_TOKEN && job->status != KEYRING_E_PIN)
		return;
	r = job->ran_on >= 0 && (size_t)job->ran_on < h->n ? job->ran_on : 0;
	t = &h->tok[r];
	token_down(t, "token operation failed", job->status, job->detail);
	probe_one(t);
}

int
health_probed(const struct health *h)
{
	size_t i;

	if (h->down || h->ever_probed)
		return 1;
	for (i = 0; i < h->n; i++)
		if (h->tok[i].state == HEALTH_STARTING)
			return 0;
	return 1;
}

enum health_state
health_token_state(struct health *h, size_t i)
{
	struct htoken *t;

	if (i >= h->n)
		return HEALTH_DOWN;
	t = &h->tok[i];
	/* Probes run every interval; allow one slow probe. */
	if (t->state == HEALTH_UP &&
	    loop_now() - t->last_ok > 2 * h->interval + 5 * NS_PER_S)
		return HEALTH_STALE;
	return t->state;
}

enum health_verdict
health_verdict(struct health *h)
{
	size_t i, up = 0, starting = 0;

	if (h->down || h->g == NULL)
		return h->ever_probed || h->down ? HEALTH_V_DOWN :
		    HEALTH_V_STARTING;
	for (i = 0; i < h->n; i++) {
		switch (health_token_state(h, i)) {
		case HEALTH_UP:
			up++;
			break;
		case HEALTH_STARTING:
			starting++;
			break;
		default:
			break;
		}
	}
	if (up == h->n)
		return HEALTH_V_OK;
	if (up > 0)
		return HEALTH_V_DEGRADED;
	if (starting > 0)
		return HEALTH_V_STARTING;
	return HEALTH_V_DOWN;
}

int
health_serving(struct health *h)
{
	enum health_verdict v = health_verdict(h);

	return v == HEALTH_V_OK || v == HEALTH_V_DEGRADED;
}

/* One token's trouble: "WHY (since HH:MM:SS UTC, retrying)". */
static size_t
token_text(struct health *h, size_t i, char *out, size_t cap)
{
	struct htoken *t = &h->tok[i];
	char since[32];
	struct tm tm;
	uint64_t age;
	int n;

	if (health_token_state(h, i) == HEALTH_STALE) {
		age = loop_now() - t->last_ok;
		n = snprintf(out, cap, "no token round trip for %llu s: the "
		    "token may be hung", (unsigned long long)(age / NS_PER_S));
	} else if (t->state == HEALTH_STARTING) {
		n = snprintf(out, cap, "first token round trip has not "
		    "finished");
	} else {
		gmtime_r(&t->down_since, &tm);
		strftime(since, sizeof(since), "%H:%M:%S UTC", &tm);
		n = snprintf(out, cap, "%s (since %s, retrying)", t->why,
		    since);
	}
	return n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* Every token not up: "replica 'a': WHY; replica 'b': WHY". */
static void
tokens_text(struct health *h, char *out, size_t cap)
{
	size_t i, o = 0;
	int n;

	out[0] = '\0';
	for (i = 0; i < h->n && o + 1 < cap; i++) {
		if (health_token_state(h, i) == HEALTH_UP)
			continue;
		if (h->n > 1) {
			n = snprintf(out + o, cap - o, "%sreplica '%s' %s: ",
			    o > 0 ? "; " : "", h->tok[i].name,
			    health_state_name(health_token_state(h, i)));
			if (n < 0 || (size_t)n >= cap - o)
				return;
			o += (size_t)n;
		}
		o += token_text(h, i, out + o, cap - o);
	}
}

const char *
health_healthz(struct health *h)
{
	char t[HEALTH_TEXT_MAX - 40];

	switch (health_verdict(h)) {
	case HEALTH_V_OK:
	case HEALTH_V_DEGRADED:
		return "ok";
	case HEALTH_V_STARTING:
		return "starting: first token round trip has not finished";
	case HEALTH_V_DOWN:
		break;
	}
	if (h->down || h->g == NULL) {
		snprintf(h->text, sizeof(h->text), "%s", h->down_why[0] ?
		    h->down_why : "reopening the token after a fault");
		return h->text;
	}
	tokens_text(h, t, sizeof(t));
	if (h->n > 1)
		snprintf(h->text, sizeof(h->text), "every replica is down: "
		    "%s", t);
	else
		snprintf(h->text, sizeof(h->text), "%s", t);
	return h->text;
}

const char *
health_detail(struct health *h)
{
	char t[HEALTH_TEXT_MAX - 40];

	if (health_verdict(h) != HEALTH_V_DEGRADED)
		return health_healthz(h);
	tokens_text(h, t, sizeof(t));
	snprintf(h->detail, sizeof(h->detail), "degraded: %s", t);
	return h->detail;
}

const char *
health_why(struct health *h)
{
	return health_healthz(h);
}

size_t
health_ntokens(const struct health *h)
{
	return h->n;
}

const char *
health_token_name(const struct health *h, size_t i)
{
	return i < h->n ? h->tok[i].name : "";
}

const char *
health_token_why(const struct health *h, size_t i)
{
	return i < h->n ? h->tok[i].why : "";
}
