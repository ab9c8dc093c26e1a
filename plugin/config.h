/*
 * config: command-line flags of the daemon. Strings point into argv (not
 * copied); nothing here ever holds a PIN.
 */
#ifndef P11KMS_CONFIG_H
#define P11KMS_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "pkcs11/keyring.h"

#define CONFIG_DEFAULT_SOCKET		"/run/p11kms/kms.sock"
#define CONFIG_DEFAULT_MAX_REQUEST	65536
#define CONFIG_DEFAULT_PROBE_S		10
#define CONFIG_DEFAULT_GRACE_S		5
#define CONFIG_MAX_WORKERS		256

struct config {
	const char *socket_path;	/* path, or "@name" for abstract */
	const char *keys[KEYRING_MAX_KEYS];
	size_t nkeys;
	const char *module;
	const char *pin_file;
	unsigned workers;		/* 0: choose from CPUs and token */
	unsigned max_inflight;		/* 0: choose from workers */
	unsigned probe_interval_s;
	unsigned grace_s;
	size_t max_request;
	const char *kms_version;	/* "v2" or "v2beta1" */
	int log_level;
};

enum config_result {
	CONFIG_OK = 0,		/* serve */
	CONFIG_EXIT = 1,	/* --help/--version printed: exit 0 */
	CONFIG_ERROR = -1,	/* err names the problem: exit 2 */
};

void config_defaults(struct config *cfg);
/* Parses argv; writes a message naming the bad flag and the fix into err. */
int config_parse_args(struct config *cfg, int argc, char **argv,
    char *err, size_t errlen);
void config_usage(FILE *fp);

#endif
