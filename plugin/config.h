/*
 * config: the daemon's settings, from an optional config file (--config)
 * and the command line; a flag overrides the file, and any --key on the
 * command line replaces the file's keys. Strings point into argv or into
 * the file buffer the config owns (config_free). Nothing here ever holds a
 * PIN.
 *
 * File format: one "name = value" per line, names are the long flag names
 * without "--", `key` may repeat (the first encrypts), '#' starts a comment
 * line, blank lines are ignored. Order matters for `replica` (it belongs
 * to the `key` above it) and replica-pin-file / replica-module (to the
 * `replica` above them), on the command line as in the file.
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
#define CONFIG_MAX_REPLICAS		4	/* tokens per key, incl. key's */
#define CONFIG_DEFAULT_REPLICA_TIMEOUT_MS	2000

struct config {
	const char *socket_path;	/* path, or "@name" for abstract */
	const char *keys[KEYRING_MAX_KEYS];
	size_t nkeys;
	/*
	 * Replicas: replica r (1..nreplicas-1) of key i is
	 * replicas[i][r - 1], the URI of a `replica` line after that key's
	 * `key` line; the key line itself is replica 0. Replica r of every
	 * key is on one token, so every key has nreplicas - 1 replica lines
	 * (checked at the end of parsing). That token's PIN file and module
	 * (replica-pin-file, replica-module, after the first key's replica
	 * line) default to pin_file and module.
	 */
	const char *replicas[KEYRING_MAX_KEYS][CONFIG_MAX_REPLICAS - 1];
	size_t key_replicas[KEYRING_MAX_KEYS];	/* replica lines per key */
	size_t nreplicas;			/* tokens: 1 + replica lines */
	const char *replica_pin_file[CONFIG_MAX_REPLICAS];	/* [0] unused */
	const char *replica_module[CONFIG_MAX_REPLICAS];	/* [0] unused */
	const char *replica_policy;	/* "least-busy" or "primary-first" */
	unsigned replica_timeout_ms;	/* a call slower counts as hung */
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

/* PIN file and module of replica r (0 = the key lines' token). */
const char *config_replica_pin_file(const struct config *cfg, size_t r);
const char *config_replica_module(const struct config *cfg, size_t r);
/* URI of key i on replica r. */
const char *config_key_uri(const struct config *cfg, size_t i, size_t r);

#endif
