/*
 * loop: the epoll loop (loop.h). Watches are epoll registrations whose
 * callbacks run on the loop thread; "late" watches run after the others of
 * the same wake-up. Timers sit in a binary heap keyed by CLOCK_MONOTONIC
 * deadlines and bound each epoll_wait. With a spin policy set, a wait that
 * would sleep first polls for a moment (loop_set_spin).
 */
#include "plugin/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "pkcs11/spin.h"

#define LOOP_EVENTS	64

struct loop {
	int epfd;
	struct loop_timer **heap;	/* min-heap on ->when */
	size_t nheap, capheap;
	/* Busy polling (loop_set_spin). */
	int (*spin_want)(void *arg);
	void *spin_arg;
	struct spin_gate spin;
};

uint64_t
loop_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int
loop_new(struct loop **out)
{
	struct loop *l;

	*out = NULL;
	if ((l = calloc(1, sizeof(*l))) == NULL)
		return -ENOMEM;
	if ((l->epfd = epoll_create1(EPOLL_CLOEXEC)) == -1) {
		int e = errno;
		free(l);
		return -e;
	}
	*out = l;
	return 0;
}

void
loop_free(struct loop *l)
{
	if (l == NULL)
		return;
	close(l->epfd);
	free(l->heap);
	free(l);
}

static int
watch_ctl(struct loop *l, int op, struct loop_watch *w, uint32_t events)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.events = events;
	ev.data.ptr = w;
	if (epoll_ctl(l->epfd, op, w->fd, &ev) == -1)
		return -errno;
	return 0;
}

int
loop_watch(struct loop *l, struct loop_watch *w, uint32_t events)
{
	return watch_ctl(l, EPOLL_CTL_ADD, w, events);
}

int
loop_rewatch(struct loop *l, struct loop_watch *w, uint32_t events)
{
	return watch_ctl(l, EPOLL_CTL_MOD, w, events);
}

void
loop_unwatch(struct loop *l, struct loop_watch *w)
{
	(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
}

/* Heap helpers: slot is the 1-based index so 0 can mean "not armed". */
static void
heap_set(struct loop *l, size_t i, struct loop_timer *t)
{
	l->heap[i] = t;
	t->slot = i + 1;
}

static void
heap_up(struct loop *l, size_t i)
{
	struct loop_timer *t = l->heap[i];

	while (i > 0 && l->heap[(i - 1) / 2]->when > t->when) {
		heap_set(l, i, l->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(l, i, t);
}

static void
heap_down(struct loop *l, size_t i)
{
	struct loop_timer *t = l->heap[i];
	size_t c;

	for (;;) {
		c = 2 * i + 1;
		if (c >= l->nheap)
			break;
		if (c + 1 < l->nheap && l->heap[c + 1]->when < l->heap[c]->when)
			c++;
		if (l->heap[c]->when >= t->when)
			break;
		heap_set(l, i, l->heap[c]);
		i = c;
	}
	heap_set(l, i, t);
}

void
loop_timer_stop(struct loop *l, struct loop_timer *t)
{
	size_t i;

	if (t->slot == 0)
		return;
	i = t->slot - 1;
	t->slot = 0;
	l->nheap--;
	if (i == l->nheap)
		return;
	heap_set(l, i, l->heap[l->nheap]);
	/* The moved element may belong above or below slot i. */
	heap_up(l, i);
	heap_down(l, i);
}

int
loop_timer_start(struct loop *l, struct loop_timer *t, uint64_t when)
{
	struct loop_timer **h;
	size_t cap;

	loop_timer_stop(l, t);
	if (l->nheap == l->capheap) {
		cap = l->capheap ? l->capheap * 2 : 16;
		if ((h = realloc(l->heap, cap * sizeof(*h))) == NULL)
			return -ENOMEM;
		l->heap = h;
		l->capheap = cap;
	}
	t->when = when;
	l->heap[l->nheap++] = t;
	heap_up(l, l->nheap - 1);
	return 0;
}

static void
run_timers(struct loop *l)
{
	struct loop_timer *t;
	uint64_t now = loop_now();

	while (l->nheap > 0 && l->heap[0]->when <= now) {
		t = l->heap[0];
		loop_timer_stop(l, t);
		t->cb(t->arg);	/* may re-arm t or free its owner */
	}
}

void
loop_set_spin(struct loop *l, int (*want)(void *arg), void *arg,
    uint64_t ns)
{
	l->spin_want = want;
	l->spin_arg = arg;
	l->spin.ns = want != NULL ? ns : 0;
}

const struct spin_gate *
loop_spin_gate(const struct loop *l)
{
	return &l->spin;
}

/*
 * Polls for at most the spin's budget (less when a timer or timeout_ms
 * comes first) and returns what epoll_wait returned (0: nothing came,
 * sleep now).
 */
static int
spin(struct loop *l, struct epoll_event *ev, int timeout_ms)
{
	uint64_t start, end, now, next = 0;
	int n;

	if (!spin_gate_open(&l->spin))
		return 0;
	start = loop_now();
	end = start + l->spin.ns;
	if (timeout_ms > 0 && start + (uint64_t)timeout_ms * 1000000u < end)
		end = start + (uint64_t)timeout_ms * 1000000u;
	if (l->nheap > 0 && l->heap[0]->when < end)
		end = l->heap[0]->when;
	while ((n = epoll_wait(l->epfd, ev, LOOP_EVENTS, 0)) == 0 &&
	    (now = loop_now()) < end)
		spin_relax(now, &next);
	spin_gate_done(&l->spin, n != 0);
	return n;
}

int
loop_once(struct loop *l, int max_wait_ms)
{
	struct epoll_event ev[LOOP_EVENTS];
	struct loop_watch *w;
	uint64_t now, wait_ns;
	int n, i, pass, timeout = max_wait_ms;

	if (l->nheap > 0) {
		now = loop_now();
		wait_ns = l->heap[0]->when > now ? l->heap[0]->when - now : 0;
		/* Round up so a timer never fires a little early and spins. */
		if (wait_ns / 1000000 + 1 < (uint64_t)timeout || timeout < 0)
			timeout = (int)(wait_ns / 1000000 +
			    (wait_ns % 1000000 ? 1 : 0));
	}
	n = 0;
	if (timeout != 0 && l->spin_want != NULL && l->spin_want(l->spin_arg))
		n = spin(l, ev, timeout);
	if (n == 0)
		n = epoll_wait(l->epfd, ev, LOOP_EVENTS, timeout);
	if (n == -1)
		return errno == EINTR ? 0 : -errno;
	/* Two passes: the "late" watches see what the others did first. */
	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < n; i++) {
			w = ev[i].data.ptr;
			if ((w->late != 0) == pass)
				w->cb(w->arg, ev[i].events);
		}
	}
	run_timers(l);
	return 0;
}
