/*
 * ctl: the subcommands that talk to a running daemon.
 *
 *   p11kms status [--config F] [--socket S] [--ops ADDR] [--json] [--timeout S]
 *   p11kms reload [--config F] [--pid N | --pid-file F] [--ops ADDR]
 *                 [--timeout S]
 *
 * Both read socket, ops-listen and pid-file from the daemon's config file
 * (default /etc/p11kms/p11kms.conf when it exists); flags override it.
 */
#ifndef P11KMS_CTL_H
#define P11KMS_CTL_H

#define CTL_DEFAULT_CONFIG	"/etc/p11kms/p11kms.conf"

/* Exit status 0 healthy, 1 unhealthy, 2 unreachable or bad flags. */
int ctl_status_main(int argc, char **argv);
/* Exit status 0 reloaded, 1 the reload failed or no outcome in time,
 * 2 bad flags, no such process, or not permitted. */
int ctl_reload_main(int argc, char **argv);

#endif
