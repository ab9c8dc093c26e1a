/*
 * tokspawn: the spawner (contracts in tokproc.h). Forked by the front
 * before any thread starts; single-threaded; one-byte requests on its
 * socket: 'S' execs a token process and sends back its socket and pid,
 * 'A' opens the start-up audit log path and sends back the descriptor.
 * It exits on EOF (the front is gone) or on PR_SET_PDEATHSIG.
 */
#include "plugin/tokproc.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "plugin/audit.h"

static struct {
	pthread_mutex_t lock;
	int fd;				/* front's end; -1: none */
	pid_t pid;
} sp = { PTHREAD_MUTEX_INITIALIZER, -1, 0 };

/* In the spawner's child: becomes the token process. Never returns. */
static void
exec_token(int fd, int argc, char **argv, const char *user)
{
	char fdtext[16], **av;
	struct passwd *pw;
	int i;

	if (user != NULL) {
		if ((pw = getpwnam(user)) == NULL) {
			dprintf(2, "p11kms: token-user '%.64s' not found\n",
			    user);
			_exit(2);
		}
		if (initgroups(pw->pw_name, pw->pw_gid) != 0 ||
		    setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
			dprintf(2, "p11kms: cannot become token-user "
			    "'%.64s': %s\n", user, strerror(errno));
			_exit(2);
		}
	}
	if ((av = calloc((size_t)argc + 3, sizeof(*av))) == NULL)
		_exit(1);
	snprintf(fdtext, sizeof(fdtext), "%d", fd);
	av[0] = argv[0];
	av[1] = (char *)TOKPROC_ARG;
	av[2] = fdtext;
	for (i = 1; i < argc; i++)
		av[i + 2] = argv[i];
	av[argc + 2] = NULL;
	execv("/proc/self/exe", av);
	dprintf(2, "p11kms: cannot exec the token process: %s\n",
	    strerror(errno));
	_exit(1);
}

/* Sends fd and pid over s. */
static int
send_fd(int s, int fd, pid_t pid)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm;
	int32_t p = (int32_t)pid;
	struct iovec iov = { &p, sizeof(p) };
	struct msghdr mh;
	struct cmsghdr *c;

	memset(&mh, 0, sizeof(mh));
	memset(&cm, 0, sizeof(cm));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (fd >= 0) {
		mh.msg_control = cm.b;
		mh.msg_controllen = sizeof(cm.b);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return sendmsg(s, &mh, MSG_NOSIGNAL) == (ssize_t)sizeof(p) ? 0 : -1;
}

static void
spawner_main(int s, int argc, char **argv, const char *user,
    const char *audit_path, pid_t front)
{
	struct pollfd pf = { s, POLLIN, 0 };
	sigset_t set;
	pid_t pid;
	int pair[2], st;
	char c;

	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != front)
		_exit(0);
	(void)prctl(PR_SET_NAME, "p11kms-spawn");
	sigemptyset(&set);
	(void)sigprocmask(SIG_SETMASK, &set, NULL);
	signal(SIGTERM, SIG_IGN);	/* EOF from the front ends us */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGUSR1, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		while (waitpid(-1, &st, WNOHANG) > 0)
			;
		if (poll(&pf, 1, 1000) < 0 && errno != EINTR)
			_exit(1);
		if (!(pf.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		if (read(s, &c, 1) != 1)
			break;		/* the front is gone */
		if (c == 'A') {
			/* The one file the front may have opened anew. */
			int fd = audit_path == NULL ? -1 :
			    open(audit_path, AUDIT_OPEN_FLAGS, 0600);

			(void)send_fd(s, fd, fd == -1 ? (audit_path == NULL ?
			    EPERM : errno) : 0);
			if (fd != -1)
				close(fd);
			continue;
		}
		if (c != 'S')
			break;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
		    pair) != 0) {
			(void)send_fd(s, -1, 0);
			continue;
		}
		if ((pid = fork()) == 0) {
			close(s);
			close(pair[0]);
			/* The child's end survives exec. */
			(void)fcntl(pair[1], F_SETFD, 0);
			exec_token(pair[1], argc, argv, user);
		}
		close(pair[1]);
		(void)send_fd(s, pid > 0 ? pair[0] : -1, pid > 0 ? pid : 0);
		close(pair[0]);
	}
	/* Our token processes see EOF from the front and exit themselves. */
	_exit(0);
}

int
tokproc_spawner_start(int argc, char **argv, const char *token_user,
    const char *audit_path, char *err, size_t errlen)
{
	pid_t front = getpid(), pid;
	int pair[2];

	if (token_user != NULL && geteuid() != 0) {
		snprintf(err, errlen, "--token-user needs root (running as "
		    "uid %u)", (unsigned)geteuid());
		return -1;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		return -1;
	}
	if ((pid = fork()) < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		close(pair[0]);
		close(pair[1]);
		return -1;
	}
	if (pid == 0) {
		close(pair[0]);
		spawner_main(pair[1], argc, argv, token_user, audit_path,
		    front);
	}
	close(pair[1]);
	sp.fd = pair[0];
	sp.pid = pid;
	return 0;
}

void
tokproc_spawner_stop(void)
{
	if (sp.fd == -1)
		return;
	close(sp.fd);
	sp.fd = -1;
	(void)waitpid(sp.pid, NULL, 0);
}

/*
 * One request to the spawner (c: 'S' spawn, 'A' audit log): *fd gets the
 * descriptor it sent (-1: none), *val its number (a pid, or an errno).
 */
static int
ask(char c, int *fd, int32_t *val, char *err, size_t errlen)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm;
	int32_t p = 0;
	struct iovec iov = { &p, sizeof(p) };
	struct msghdr mh;
	struct cmsghdr *ch;
	ssize_t n;
	int r = -1;

	*fd = -1;
	*val = 0;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cm.b;
	mh.msg_controllen = sizeof(cm.b);
	pthread_mutex_lock(&sp.lock);
	if (sp.fd == -1) {
		snprintf(err, errlen, "no spawner for token processes");
		goto out;
	}
	if (write(sp.fd, &c, 1) != 1) {
		snprintf(err, errlen, "the token process spawner is gone: %s",
		    strerror(errno));
		goto out;
	}
	do
		n = recvmsg(sp.fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(p)) {
		snprintf(err, errlen, "the token process spawner is gone");
		goto out;
	}
	*val = p;
	ch = CMSG_FIRSTHDR(&mh);
	if (ch != NULL && ch->cmsg_level == SOL_SOCKET &&
	    ch->cmsg_type == SCM_RIGHTS &&
	    ch->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(fd, CMSG_DATA(ch), sizeof(int));
	r = 0;
 out:
	pthread_mutex_unlock(&sp.lock);
	return r;
}

int
tokproc_spawn(int *fd, pid_t *pid, char *err, size_t errlen)
{
	int32_t v;

	if (ask('S', fd, &v, err, errlen) != 0)
		return -1;
	if (*fd == -1) {
		snprintf(err, errlen, "the spawner could not start a token "
		    "process");
		return -1;
	}
	*pid = (pid_t)v;
	return 0;
}

int
tokproc_open_audit(const char *path)
{
	char err[128];
	int32_t v;
	int fd;

	(void)path;		/* the spawner knows it from the start */
	if (ask('A', &fd, &v, err, sizeof(err)) != 0) {
		errno = EIO;
		return -1;
	}
	if (fd == -1)
		errno = v > 0 ? v : EIO;
	return fd;
}

