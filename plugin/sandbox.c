/* sandbox: the front's seccomp allowlist (contract in sandbox.h). */
#include "plugin/sandbox.h"

#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>

#include <seccomp.h>

#include "plugin/unixsock.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_SANITIZER	1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_SANITIZER	1
#endif
#endif

/* Allowed with any arguments. */
static const char *const allowed[] = {
	/* I/O on descriptors the front already holds */
	"read", "write", "readv", "writev", "pread64", "pwrite64", "close",
	"fstat", "newfstatat", "statx", "lseek", "fcntl", "dup", "fsync",
	"fdatasync", "ftruncate",
	"fadvise64", "fadvise64_64",	/* the audit log's synced pages */
	/* the loop and libmicrohttpd's thread */
	"epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
	"epoll_create1", "poll", "ppoll", "select", "pselect6",
	"accept", "accept4", "recvfrom", "recvmsg", "sendto", "sendmsg",
	"shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername",
	/* memory (malloc, thread stacks) */
	"mmap", "munmap", "mremap", "brk", "madvise", "mprotect",
	/* threads, time, signals, exit */
	"futex", "set_robust_list", "rseq", "sched_yield", "gettid",
	"getpid", "getppid", "getuid", "geteuid", "getgid", "getegid",
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
	"gettimeofday", "time", "getrandom", "rt_sigprocmask",
	"rt_sigreturn", "rt_sigaction", "sigaltstack", "restart_syscall", "exit",
	"exit_group", "tgkill", "eventfd2", "pipe2", "sched_getaffinity",
	"wait4",			/* the spawner, at shutdown */
};

static const char summary[] =
    "seccomp: read/write/readv/writev/pread/pwrite, close, fstat, lseek, "
    "fcntl, dup, fsync/fdatasync, fadvise, ftruncate; epoll/poll/select; "
    "accept4, "
    "recv/send(msg), shutdown, get/setsockopt, getsock/peername; "
    "mmap/munmap/mremap/brk/madvise/mprotect; futex, clone (threads only), "
    "set_robust_list, rseq, sched_yield, clocks and sleeps, getrandom, "
    "signal masks and actions, prctl PR_SET_NAME, sched_setscheduler (SCHED_BATCH only), tgkill, eventfd2, pipe2, wait4, exit; ioctl FIONREAD/FIONBIO; "
    "unlinkat only in the sockets' directories; no open at all (the "
    "spawner opens the audit log for a reopen); all else kills the process";

const char *
sandbox_summary(void)
{
	return summary;
}

void
sandbox_prepare(void)
{
	/*
	 * glibc reads /proc/sys/vm/overcommit_memory the first time a
	 * thread's own malloc arena shrinks: with one arena for all (the
	 * front has a handful of threads) that never happens.
	 */
	(void)mallopt(M_ARENA_MAX, 1);
}

int
sandbox_enter(char *err, size_t errlen)
{
	scmp_filter_ctx ctx;
	int r;
#ifndef UNDER_SANITIZER
	size_t i, nd;
	int nr, dirs[4];
#endif

	/* Before the filter: what libc would open later (the time zone). */
	tzset();
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		snprintf(err, errlen, "PR_SET_NO_NEW_PRIVS: %s",
		    strerror(errno));
		return -1;
	}
#ifdef UNDER_SANITIZER
	ctx = seccomp_init(SCMP_ACT_ALLOW);
	if (ctx == NULL)
		goto nomem;
	r = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(execve), 0);
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS,
		    SCMP_SYS(execveat), 0);
	(void)allowed;
#else
	ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	if (ctx == NULL)
		goto nomem;
	r = 0;
	for (i = 0; r == 0 && i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		/* A name this architecture lacks resolves negative. */
		if ((nr = seccomp_syscall_resolve_name(allowed[i])) < 0)
			continue;
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
	}
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
		    SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
	if (r == 0 && (nr = seccomp_syscall_resolve_name("clone3")) >= 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0);
	/* libmicrohttpd's thread names itself as it starts. */
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
		    SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME));
	/* The audit writer lowers its own priority as it starts. */
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW,
		    SCMP_SYS(sched_setscheduler), 1,
		    SCMP_A1(SCMP_CMP_EQ, SCHED_BATCH));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
		    SCMP_A1(SCMP_CMP_EQ, FIONREAD));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
		    SCMP_A1(SCMP_CMP_EQ, FIONBIO));
	nd = unixsock_dirfds(dirs, sizeof(dirs) / sizeof(dirs[0]));
	for (i = 0; r == 0 && i < nd; i++)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(unlinkat), 1,
		    SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)dirs[i]));
#endif
	if (r == 0)
		r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (r == 0)
		r = seccomp_load(ctx);
	seccomp_release(ctx);
	if (r != 0) {
		snprintf(err, errlen, "seccomp: %s", strerror(-r));
		return -1;
	}
	return 0;
 nomem:
	snprintf(err, errlen, "seccomp_init failed");
	return -1;
}
