/*
 * sandbox: the front's seccomp filter (--token-process=on), after the
 * model of OpenSSH's sandbox-seccomp-filter.c. Installed once set-up is
 * done (listening sockets, ops thread, audit log open, token process
 * spawner forked): PR_SET_NO_NEW_PRIVS, then an allowlist of the syscalls
 * the loop, nghttp2, protobuf-c, libmicrohttpd's thread, logging, the
 * audit writer and a reload's loader thread make. Anything else kills the
 * whole process (SECCOMP_RET_KILL_PROCESS): no open() of a path, no
 * execve, no fork, no socket(), no connect(), no ptrace.
 *
 *   open/openat  never: a reopen of the audit log (SIGUSR1, SIGHUP)
 *                gets the fd from the spawner (tokproc_open_audit), which
 *                opens that one path only
 *   unlinkat     only in the directories of the listening sockets
 *                (unixsock_dirfds: removing them at shutdown)
 *   clone        only with CLONE_THREAD (threads, never a fork); clone3
 *                fails with ENOSYS so glibc falls back to clone
 *
 * Sanitizer builds (SANITIZE=1) allow everything but execve/execveat:
 * LeakSanitizer's exit check opens /proc files and clones a tracer.
 */
#ifndef P11KMS_SANDBOX_H
#define P11KMS_SANDBOX_H

#include <stddef.h>

/* Call before any thread starts in a process that will be sandboxed. */
void sandbox_prepare(void);
/*
 * Installs the filter on the calling process (every thread: TSYNC).
 * Returns 0, or -1 with err.
 */
int sandbox_enter(char *err, size_t errlen);
/* What the filter allows, one line, for the start-up log. */
const char *sandbox_summary(void);

#endif
