/*
 * config: the daemon's settings, from an optional config file (--config)
 * and the command line; a flag overrides the file, and any --key on the
 * command line replaces the file's keys. Strings point into argv or into
 * the file buffer the config owns (config_free). Nothing here ever holds a
 * PIN.
 *
 * File format: one "name = value" per line, names are the long flag names
 * without "--", `key` may repeat (the first encrypts), '#' starts a comment
 * line, blank lines are ignored.
 */
#ifndef P11KMS_CONFIG_H
#define P11KMS_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "pkcs11/keyring.h"

#define CONFIG_DEFAULT_SOCKET		"/run/p11kms/kms.sock"
#define CONFIG_DEFAULT_MAX_REQUEST	65536
#define CONFIG_DEFAULT_MAX_CONNECTIONS	1024
#define CONFIG_DEFAULT_PROBE_S		10
#define CONFIG_DEFAULT_GRACE_S		5
#define CONFIG_MAX_WORKERS		256

struct config {
	const char *socket_path;	/* path, or "@name" for abstract */
	const char *keys[KEYRING_MAX_KEYS];
	size_t nkeys;
	const char *module;
	const char *module_init_args;	/* pReserved for a module by path */
	const char *pin_file;
	unsigned workers;		/* 0: choose from CPUs and token */
	unsigned max_inflight;		/* 0: choose from workers */
	unsigned probe_interval_s;
	unsigned grace_s;
	size_t max_request;
	unsigned max_connections;	/* KMS socket connections at once */
	const char *kms_version;	/* "v2" or "v2beta1" */
	const char *mechanism;		/* "auto", "aes-gcm", "aes-kwp", "rsa-oaep" */
	const char *ops_listen;		/* NULL: no ops endpoint */
	const char *pid_file;		/* NULL: none */
	const char *log_format;		/* "logfmt" or "json" */
	int log_level;
	const char *audit_log;		/* NULL: no audit log */
	const char *audit_sync;		/* "batch" or "every" */
	const char *audit_failure;	/* "continue" or "fail" */
	int audit_status;		/* audit Status/Version too */
	size_t audit_queue;		/* 0: AUDIT_QUEUE_MAX */
	int token_process;		/* 1: module in a token process */
	int busy_poll;			/* 1: auto (spin when cores allow) */
	const char *token_user;		/* NULL: the daemon's own uid */
	const char *config_file;	/* NULL: flags only */
	char *filebuf;			/* owned: the file's text */
};

enum config_result {
	CONFIG_OK = 0,		/* serve */
	CONFIG_EXIT = 1,	/* --help/--version printed: exit 0 */
	CONFIG_ERROR = -1,	/* err names the problem: exit 2 */
};

void config_defaults(struct config *cfg);
/* Frees what the config owns (not argv). */
void config_free(struct config *cfg);
/*
 * Parses argv, reading the --config file first if one is named; writes a
 * message naming the bad flag or file line and the fix into err. Call
 * again (on a fresh config) to re-read the file for a reload.
 */
int config_parse_args(struct config *cfg, int argc, char **argv,
    char *err, size_t errlen);
void config_usage(FILE *fp);

#endif
