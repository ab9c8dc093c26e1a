/*
 * notify: sd_notify(3) over NOTIFY_SOCKET, written out here because the
 * protocol is one datagram and libsystemd would be a dependency for it.
 * See notify.h for the messages the daemon sends and when.
 */
#include "plugin/notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_len;
static uint64_t watchdog_usec;

int
notify_init(char *err, size_t errlen)
{
	const char *path = getenv("NOTIFY_SOCKET");
	const char *wd = getenv("WATCHDOG_USEC");
	const char *wpid = getenv("WATCHDOG_PID");
	size_t n;
	char *end;
	unsigned long long v;
	int ret = -1;

	err[0] = '\0';
	if (wd != NULL && (wpid == NULL ||
	    strtol(wpid, NULL, 10) == (long)getpid())) {
		errno = 0;
		v = strtoull(wd, &end, 10);
		if (errno == 0 && *wd != '\0' && *end == '\0' && v > 0)
			watchdog_usec = v;
	}
	if (path == NULL || path[0] == '\0') {
		ret = 0;
		goto out;
	}
	n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') ||
	    n >= sizeof(notify_addr.sun_path)) {
		snprintf(err, errlen, "NOTIFY_SOCKET '%.100s' is not an "
		    "absolute path or @abstract name; not notifying systemd",
		    path);
		goto out;
	}
	memset(&notify_addr, 0, sizeof(notify_addr));
	notify_addr.sun_family = AF_UNIX;
	memcpy(notify_addr.sun_path, path, n);
	if (path[0] == '@')
		notify_addr.sun_path[0] = '\0';
	notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
	    (path[0] == '@' ? 0 : 1));
	notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify_fd == -1) {
		snprintf(err, errlen, "NOTIFY_SOCKET: socket: %s; not "
		    "notifying systemd", strerror(errno));
		goto out;
	}
	ret = 0;
 out:
	if (ret != 0)
		watchdog_usec = 0;	/* nobody to tell */
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	return ret;
}

int
notify_send(const char *msg)
{
	ssize_t w;

	if (notify_fd == -1)
		return 0;
	do
		w = sendto(notify_fd, msg, strlen(msg), MSG_NOSIGNAL,
		    (struct sockaddr *)&notify_addr, notify_len);
	while (w < 0 && errno == EINTR);
	return w < 0 ? -1 : 0;
}

uint64_t
notify_watchdog_usec(void)
{
	return notify_fd == -1 ? 0 : watchdog_usec;
}

void
notify_fini(void)
{
	if (notify_fd != -1)
		close(notify_fd);
	notify_fd = -1;
}
