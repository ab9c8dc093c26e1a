/*
 * filesafe: the rules for the files that decide what code runs and who
 * logs in: the --config file, a PKCS#11 module given by path, and the PIN
 * file. Each must be a regular file owned by root or by the effective uid,
 * that neither the group nor others can change; the directory holding it
 * likewise (owned by root or the euid, not writable by group or others:
 * a sticky world-writable directory such as /tmp is refused too, since
 * anyone may create the name there first). A path that is a symbolic link
 * is judged by what it points to (stat), and both the link's directory and
 * the target's are checked. A world-writable config naming an attacker's
 * module would otherwise run that module's code as root.
 *
 * Functions return 0 when the file may be used, -1 with a one-line
 * message in err naming the file, what is wrong and the fix.
 */
#ifndef P11KMS_FILESAFE_H
#define P11KMS_FILESAFE_H

#include <stddef.h>
#include <sys/stat.h>

/* A secret (the PIN): others must not read it either; group read is fine. */
#define FILESAFE_SECRET	0x1

/*
 * Judges an opened file by its fstat: regular, owner root or euid, mode.
 * what: "config file", "PIN file", "PKCS#11 module" (for the message).
 */
int filesafe_check_stat(const struct stat *st, const char *path,
    const char *what, int flags, char *err, size_t errlen);
/*
 * Judges the directory holding path, and when path is a symbolic link
 * also the directory holding its target.
 */
int filesafe_check_dirs(const char *path, const char *what, char *err,
    size_t errlen);
/* stat(path) + filesafe_check_stat + filesafe_check_dirs. */
int filesafe_check_path(const char *path, const char *what, int flags,
    char *err, size_t errlen);

#endif
