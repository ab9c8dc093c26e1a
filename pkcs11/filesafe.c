/*
 * filesafe: ownership and mode rules for config, module and PIN files
 * (see filesafe.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "pkcs11/filesafe.h"

static void
say(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
say(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int
owner_ok(uid_t uid)
{
	return uid == 0 || uid == geteuid();
}

int
filesafe_check_stat(const struct stat *st, const char *path,
    const char *what, int flags, char *err, size_t errlen)
{
	char who[96] = "";
	mode_t m = st->st_mode;

	if (!S_ISREG(m)) {
		say(err, errlen, "%s %.200s is not a regular file (%s): give "
		    "the path of a plain file", what, path, S_ISFIFO(m) ?
		    "a FIFO" : S_ISDIR(m) ? "a directory" : S_ISSOCK(m) ?
		    "a socket" : S_ISCHR(m) || S_ISBLK(m) ? "a device" :
		    "not a file");
		return -1;
	}
	if (!owner_ok(st->st_uid)) {
		say(err, errlen, "%s %.200s is owned by uid %u, neither root "
		    "nor the uid p11kms runs as (%u), so that user can change "
		    "it: chown root %.200s", what, path, (unsigned)st->st_uid,
		    (unsigned)geteuid(), path);
		return -1;
	}
	if ((flags & FILESAFE_SECRET) && (m & S_IROTH))
		snprintf(who, sizeof(who), "others can read it");
	if (m & (S_IWGRP | S_IWOTH))
		snprintf(who + strlen(who), sizeof(who) - strlen(who),
		    "%s%s can change it", who[0] ? ", " : "",
		    (m & S_IWGRP) && (m & S_IWOTH) ? "the group and others" :
		    (m & S_IWGRP) ? "the group" : "others");
	if (who[0] == '\0')
		return 0;
	if (flags & FILESAFE_SECRET)
		say(err, errlen, "%s %.200s has mode %04o: %s; chmod 0400 "
		    "%.200s (or 0440 with the p11kms group)%s", what, path,
		    (unsigned)(m & 07777), who, path, (m & (S_IROTH |
		    S_IWOTH)) ? " and change the PIN" : "");
	else
		say(err, errlen, "%s %.200s has mode %04o: %s; chmod go-w "
		    "%.200s", what, path, (unsigned)(m & 07777), who, path);
	return -1;
}

/* The directory part of path into out ("." for a bare name). */
static void
dir_of(const char *path, char *out, size_t cap)
{
	const char *slash = strrchr(path, '/');
	size_t n;

	if (slash == NULL) {
		snprintf(out, cap, ".");
		return;
	}
	n = slash == path ? 1 : (size_t)(slash - path);
	if (n > cap - 1)
		n = cap - 1;
	memcpy(out, path, n);
	out[n] = '\0';
}

static int
check_dir(const char *dir, const char *path, const char *what, char *err,
    size_t errlen)
{
	struct stat st;
	mode_t m;

	if (stat(dir, &st) != 0) {
		say(err, errlen, "%s %.200s: cannot stat its directory "
		    "%.200s: %s", what, path, dir, strerror(errno));
		return -1;
	}
	m = st.st_mode;
	if (!owner_ok(st.st_uid)) {
		say(err, errlen, "%s %.200s is in directory %.200s owned by "
		    "uid %u, neither root nor the uid p11kms runs as (%u), "
		    "so that user can replace the file: chown root %.200s",
		    what, path, dir, (unsigned)st.st_uid, (unsigned)geteuid(),
		    dir);
		return -1;
	}
	if (m & (S_IWGRP | S_IWOTH)) {
		say(err, errlen, "%s %.200s is in directory %.200s of mode "
		    "%04o: %s can %s the file there%s; chmod go-w %.200s or "
		    "move the file to a directory only root can change", what,
		    path, dir, (unsigned)(m & 07777),
		    (m & S_IWGRP) && (m & S_IWOTH) ? "the group and others" :
		    (m & S_IWGRP) ? "the group" : "others",
		    (m & S_ISVTX) ? "create or link" : "replace",
		    (m & S_ISVTX) ? " (the sticky bit does not stop that)" : "",
		    dir);
		return -1;
	}
	return 0;
}

int
filesafe_check_dirs(const char *path, const char *what, char *err,
    size_t errlen)
{
	char dir[PATH_MAX], tdir[PATH_MAX], *real;
	struct stat lst;
	int r;

	dir_of(path, dir, sizeof(dir));
	if ((r = check_dir(dir, path, what, err, errlen)) != 0)
		return r;
	if (lstat(path, &lst) != 0 || !S_ISLNK(lst.st_mode))
		return 0;
	/* A link: what it points to must sit in a safe directory too. */
	if ((real = realpath(path, NULL)) == NULL) {
		say(err, errlen, "%s %.200s: cannot resolve the symbolic "
		    "link: %s", what, path, strerror(errno));
		return -1;
	}
	dir_of(real, tdir, sizeof(tdir));
	r = check_dir(tdir, real, what, err, errlen);
	free(real);
	return r;
}

int
filesafe_check_path(const char *path, const char *what, int flags,
    char *err, size_t errlen)
{
	struct stat st;

	if (stat(path, &st) != 0) {
		say(err, errlen, "%s %.200s: %s", what, path, strerror(errno));
		return -1;
	}
	if (filesafe_check_stat(&st, path, what, flags, err, errlen) != 0)
		return -1;
	return filesafe_check_dirs(path, what, err, errlen);
}
