/*
 * loop: the one epoll loop. It owns every file descriptor watch and timer of
 * the daemon; callbacks run on the loop thread only. Deadlines use
 * CLOCK_MONOTONIC nanoseconds (loop_now()).
 */
#ifndef P11KMS_LOOP_H
#define P11KMS_LOOP_H

#include <stddef.h>
#include <stdint.h>

struct loop;

typedef void (*loop_io_cb)(void *arg, uint32_t events);
typedef void (*loop_timer_cb)(void *arg);

/*
 * A watch or timer is embedded in its owner; the loop holds pointers to it
 * and never frees it. Remove it (loop_unwatch / loop_timer_stop) before the
 * owner is freed.
 */
struct loop_watch {
	int fd;
	loop_io_cb cb;
	void *arg;
	int late;	/* run after the other watches ready at the same time */
};

struct loop_timer {
	uint64_t when;		/* loop_now() value it fires at */
	size_t slot;		/* heap index + 1; 0 when not armed */
	loop_timer_cb cb;
	void *arg;
};

uint64_t loop_now(void);

int loop_new(struct loop **out);
void loop_free(struct loop *l);

/* Registers w->fd for events (EPOLLIN/EPOLLOUT…). Returns 0 or -errno. */
int loop_watch(struct loop *l, struct loop_watch *w, uint32_t events);
int loop_rewatch(struct loop *l, struct loop_watch *w, uint32_t events);
void loop_unwatch(struct loop *l, struct loop_watch *w);

/* Arms (or re-arms) t to fire once at `when`. Returns 0 or -ENOMEM. */
int loop_timer_start(struct loop *l, struct loop_timer *t, uint64_t when);
void loop_timer_stop(struct loop *l, struct loop_timer *t);

/*
 * Runs one iteration of at most max_wait_ms (-1: until an event or timer).
 * Returns 0 or -errno (EINTR is not an error).
 */
int loop_once(struct loop *l, int max_wait_ms);

/*
 * Busy polling (pkcs11/spin.h). Before loop_once would sleep, it asks
 * want(arg); on yes it polls (epoll_wait with no timeout) for up to ns, or
 * less when a timer is due sooner, and handles whatever comes at once, so
 * nothing waits behind a spin. Spins that mostly end with nothing turn
 * themselves off for a while. want NULL or ns 0: never spin.
 */
struct spin_gate;
void loop_set_spin(struct loop *l, int (*want)(void *arg), void *arg,
    uint64_t ns);
/* The spin's gate, with its counts. */
const struct spin_gate *loop_spin_gate(const struct loop *l);

#endif
