/*
 * unixsock: the daemon's listening unix sockets (the KMS socket and a
 * unix: ops endpoint). A path socket is created with mode 0600 fixed before
 * bind (fchmod of the unbound socket: no window in which others can
 * connect, no process-wide umask to race); a path on which a server still
 * answers is refused, a stale socket replaced, any other file refused.
 * "@name" is a Linux abstract socket.
 */
#ifndef P11KMS_UNIXSOCK_H
#define P11KMS_UNIXSOCK_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Fills addr for "/path" or "@name"; returns its length, 0 if too long. */
socklen_t unixsock_addr(const char *path, struct sockaddr_un *addr);

/*
 * Creates a non-blocking, close-on-exec listening socket at path. flag
 * ("--socket", "--ops-listen") starts every message written to err, which
 * names the problem and the fix. Returns the fd, or -1.
 */
int unixsock_listen(const char *path, const char *flag, int backlog,
    char *err, size_t errlen);
/*
 * Removes a socket file unixsock_listen made: unlinkat() in its directory,
 * held open since (what the sandboxed front may do), else unlink().
 */
/*
 * Holds path's directory open so that unixsock_unlink(path) still works
 * once the front is sandboxed (the sockets do this themselves; the pid
 * file asks for it). At most a few paths, loop thread.
 */
void unixsock_keep_dir(const char *path);
void unixsock_unlink(const char *path);
/* Those directories' fds (at most max) into fds; returns how many. */
size_t unixsock_dirfds(int *fds, size_t max);

#endif
