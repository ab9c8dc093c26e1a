/*
 * unixsock: creating a listening unix socket (unixsock.h): mode 0600 set on
 * the unbound socket before bind, a live server on the path refused (a
 * connect probe), a stale socket replaced, any other file left alone.
 */
#include "plugin/unixsock.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

#include "plugin/log.h"

socklen_t
unixsock_addr(const char *path, struct sockaddr_un *addr)
{
	size_t n = strlen(path);

	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	if (path[0] == '@') {
		/* Abstract: a leading NUL, then the name, not terminated. */
		if (n > sizeof(addr->sun_path))
			return 0;
		memcpy(addr->sun_path + 1, path + 1, n - 1);
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	}
	if (n == 0 || n >= sizeof(addr->sun_path))
		return 0;
	memcpy(addr->sun_path, path, n);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

/* 1: something answers at addr; 0: nobody (stale); -1: cannot tell. */
static int
is_live(const struct sockaddr_un *addr, socklen_t alen)
{
	int fd, r;

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	r = connect(fd, (const struct sockaddr *)addr, alen);
	if (r == 0)
		r = 1;
	else if (errno == ECONNREFUSED)
		r = 0;
	else
		r = -1;
	close(fd);
	return r;
}

/* A socket file already at path: refuse it if live or not a socket. */
static int
clear_path(const char *path, const struct sockaddr_un *addr, socklen_t alen,
    const char *flag, char *err, size_t errlen)
{
	struct stat st;

	if (lstat(path, &st) != 0)
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "%s: '%.200s' exists and is not a "
		    "socket; remove it or choose another path", flag, path);
		return -1;
	}
	switch (is_live(addr, alen)) {
	case 1:
		snprintf(err, errlen, "%s: another process is serving on "
		    "'%.200s'; stop it or choose another path", flag, path);
		return -1;
	case 0:
		log_info("removing stale socket %s", path);
		(void)unlink(path);
		break;
	default:
		break;		/* bind will say what is wrong */
	}
	return 0;
}

/*
 * The directory of each socket file made (and of the pid file), held open:
 * the sandboxed front removes them at shutdown with unlinkat() there (the only
 * directories its filter lets it unlink in). Loop thread; a few entries.
 */
#define KEPT_MAX	4
static struct {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int dirfd;
	size_t base;			/* offset of the last component */
} kept[KEPT_MAX];
static size_t nkept;

void
unixsock_keep_dir(const char *path)
{
	const char *slash = strrchr(path, '/');
	char dir[sizeof(kept[0].path)];
	size_t n;

	if (nkept == KEPT_MAX || strlen(path) >= sizeof(kept[0].path))
		return;
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else {
		n = (size_t)(slash - path);
		memcpy(dir, path, n);
		dir[n] = '\0';
	}
	kept[nkept].dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (kept[nkept].dirfd == -1)
		return;
	snprintf(kept[nkept].path, sizeof(kept[nkept].path), "%s", path);
	kept[nkept].base = slash != NULL ? (size_t)(slash - path) + 1 : 0;
	nkept++;
}

void
unixsock_unlink(const char *path)
{
	size_t i;

	for (i = 0; i < nkept; i++)
		if (kept[i].dirfd != -1 && strcmp(kept[i].path, path) == 0) {
			(void)unlinkat(kept[i].dirfd, kept[i].path +
			    kept[i].base, 0);
			return;
		}
	(void)unlink(path);
}

size_t
unixsock_dirfds(int *fds, size_t max)
{
	size_t i, n = 0;

	for (i = 0; i < nkept && n < max; i++)
		if (kept[i].dirfd != -1)
			fds[n++] = kept[i].dirfd;
	return n;
}

int
unixsock_listen(const char *path, const char *flag, int backlog,
    char *err, size_t errlen)
{
	struct sockaddr_un addr;
	socklen_t alen;
	int fd, e;

	if ((alen = unixsock_addr(path, &addr)) == 0) {
		snprintf(err, errlen, "%s: socket path '%.200s' is empty or "
		    "longer than %zu bytes; choose a shorter one", flag, path,
		    sizeof(addr.sun_path) - 1);
		return -1;
	}
	if (path[0] != '@' &&
	    clear_path(path, &addr, alen, flag, err, errlen) != 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "%s: socket: %s", flag, strerror(errno));
		return -1;
	}
	/*
	 * Linux creates the socket file with the mode of the unbound socket's
	 * inode (less the umask): 0600 from the first instant.
	 */
	if (fchmod(fd, 0600) != 0) {
		e = errno;
		snprintf(err, errlen, "%s: fchmod: %s", flag, strerror(e));
		goto fail;
	}
	if (bind(fd, (struct sockaddr *)&addr, alen) != 0) {
		e = errno;
		if (e == EADDRINUSE && path[0] == '@')
			snprintf(err, errlen, "%s: abstract socket '%.200s' is "
			    "in use by another process; choose another name",
			    flag, path);
		else if (e == ENOENT)
			snprintf(err, errlen, "%s: cannot bind '%.200s': the "
			    "directory does not exist; create it first", flag,
			    path);
		else
			snprintf(err, errlen, "%s: cannot bind '%.200s': %s",
			    flag, path, strerror(e));
		goto fail;
	}
	if (listen(fd, backlog) != 0) {
		e = errno;
		snprintf(err, errlen, "%s: listen: %s", flag, strerror(e));
		if (path[0] != '@')
			(void)unlink(path);
		goto fail;
	}
	if (path[0] != '@')
		unixsock_keep_dir(path);
	return fd;

 fail:
	close(fd);
	return -1;
}
