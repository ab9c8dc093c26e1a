#include "plugin/config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/log.h"
#include "plugin/version.h"

enum {
	OPT_WORKERS = 256, OPT_MAX_INFLIGHT, OPT_PROBE, OPT_KMS_VERSION,
	OPT_MAX_REQUEST, OPT_LOG_LEVEL, OPT_GRACE,
};

static const struct option longopts[] = {
	{ "socket",		required_argument, NULL, 's' },
	{ "key",		required_argument, NULL, 'k' },
	{ "module",		required_argument, NULL, 'm' },
	{ "pin-file",		required_argument, NULL, 'p' },
	{ "workers",		required_argument, NULL, OPT_WORKERS },
	{ "max-inflight",	required_argument, NULL, OPT_MAX_INFLIGHT },
	{ "probe-interval",	required_argument, NULL, OPT_PROBE },
	{ "grace",		required_argument, NULL, OPT_GRACE },
	{ "kms-version",	required_argument, NULL, OPT_KMS_VERSION },
	{ "max-request-bytes",	required_argument, NULL, OPT_MAX_REQUEST },
	{ "log-level",		required_argument, NULL, OPT_LOG_LEVEL },
	{ "help",		no_argument,	   NULL, 'h' },
	{ "version",		no_argument,	   NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

void
config_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms [OPTIONS]\n"
"Kubernetes KMS plugin (KMS v2) that wraps keys with a non-extractable\n"
"key inside a PKCS#11 token.\n"
"\n"
"  -s, --socket PATH|@NAME   unix socket to serve on; @NAME is a Linux\n"
"                            abstract socket (default " CONFIG_DEFAULT_SOCKET ")\n"
"  -k, --key URI             key-encryption key as an RFC 7512 URI, e.g.\n"
"                            pkcs11:token=kms;object=kek1;type=secret-key\n"
"                            Repeat for older keys: the first encrypts,\n"
"                            every key decrypts. Required.\n"
"  -m, --module PATH|NAME    PKCS#11 module (.so path or p11-kit module\n"
"                            name); default: module-path/module-name of the\n"
"                            URI, else every module registered with p11-kit\n"
"  -p, --pin-file FILE       file holding the token user PIN; default: the\n"
"                            URI's pin-source. A PIN is never taken from\n"
"                            the command line.\n"
"      --workers N           token sessions/threads (default: CPU count,\n"
"                            capped by the token's session limit)\n"
"      --max-inflight N      requests queued or running at once before new\n"
"                            ones get RESOURCE_EXHAUSTED (default 1024)\n"
"      --probe-interval S    seconds between token health round trips\n"
"                            (default %d)\n"
"      --grace S             seconds to finish in-flight calls on SIGTERM\n"
"                            (default %d)\n"
"      --kms-version V       Status version: v2 (Kubernetes >= 1.29) or\n"
"                            v2beta1 (1.27, 1.28); default v2\n"
"      --max-request-bytes N largest gRPC request accepted (default %d)\n"
"      --log-level L         error, warn, info or debug (default info)\n"
"  -h, --help                this text\n"
"  -V, --version             version\n"
"\n"
"Exit status: 0 after SIGTERM/SIGINT, 1 runtime failure, 2 bad flags or\n"
"configuration.\n",
	    CONFIG_DEFAULT_PROBE_S, CONFIG_DEFAULT_GRACE_S,
	    CONFIG_DEFAULT_MAX_REQUEST);
}

void
config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->socket_path = CONFIG_DEFAULT_SOCKET;
	cfg->probe_interval_s = CONFIG_DEFAULT_PROBE_S;
	cfg->grace_s = CONFIG_DEFAULT_GRACE_S;
	cfg->max_request = CONFIG_DEFAULT_MAX_REQUEST;
	cfg->kms_version = "v2";
	cfg->log_level = LOG_INFO;
}

/* Parses a whole decimal number in [min, max]; -1 when it is not one. */
static int
parse_uint(const char *s, unsigned long min, unsigned long max,
    unsigned long *out)
{
	unsigned long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int
num_opt(const char *name, const char *arg, unsigned long min,
    unsigned long max, unsigned long *out, char *err, size_t errlen)
{
	if (parse_uint(arg, min, max, out) == 0)
		return 0;
	snprintf(err, errlen, "--%s '%.40s' is not a whole number from %lu "
	    "to %lu", name, arg, min, max);
	return -1;
}

int
config_parse_args(struct config *cfg, int argc, char **argv,
    char *err, size_t errlen)
{
	unsigned long v;
	int c, lvl;

	optind = 0;	/* glibc: full re-initialisation, so tests can reparse */
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":s:k:m:p:hV", longopts,
	    NULL)) != -1) {
		switch (c) {
		case 's':
			cfg->socket_path = optarg;
			break;
		case 'k':
			if (cfg->nkeys == KEYRING_MAX_KEYS) {
				snprintf(err, errlen, "too many --key flags "
				    "(at most %d)", KEYRING_MAX_KEYS);
				return CONFIG_ERROR;
			}
			cfg->keys[cfg->nkeys++] = optarg;
			break;
		case 'm':
			cfg->module = optarg;
			break;
		case 'p':
			cfg->pin_file = optarg;
			break;
		case OPT_WORKERS:
			if (num_opt("workers", optarg, 1, CONFIG_MAX_WORKERS,
			    &v, err, errlen) != 0)
				return CONFIG_ERROR;
			cfg->workers = (unsigned)v;
			break;
		case OPT_MAX_INFLIGHT:
			if (num_opt("max-inflight", optarg, 1, 1000000, &v,
			    err, errlen) != 0)
				return CONFIG_ERROR;
			cfg->max_inflight = (unsigned)v;
			break;
		case OPT_PROBE:
			if (num_opt("probe-interval", optarg, 1, 3600, &v,
			    err, errlen) != 0)
				return CONFIG_ERROR;
			cfg->probe_interval_s = (unsigned)v;
			break;
		case OPT_GRACE:
			if (num_opt("grace", optarg, 0, 600, &v, err,
			    errlen) != 0)
				return CONFIG_ERROR;
			cfg->grace_s = (unsigned)v;
			break;
		case OPT_MAX_REQUEST:
			if (num_opt("max-request-bytes", optarg, 1024,
			    16 * 1024 * 1024, &v, err, errlen) != 0)
				return CONFIG_ERROR;
			cfg->max_request = v;
			break;
		case OPT_KMS_VERSION:
			if (strcmp(optarg, "v2") != 0 &&
			    strcmp(optarg, "v2beta1") != 0) {
				snprintf(err, errlen, "--kms-version '%.40s': "
				    "use v2 (Kubernetes 1.29 and later) or "
				    "v2beta1 (1.27 and 1.28)", optarg);
				return CONFIG_ERROR;
			}
			cfg->kms_version = optarg;
			break;
		case OPT_LOG_LEVEL:
			if ((lvl = log_level_parse(optarg)) < 0) {
				snprintf(err, errlen, "--log-level '%.40s': use "
				    "error, warn, info or debug", optarg);
				return CONFIG_ERROR;
			}
			cfg->log_level = lvl;
			break;
		case 'h':
			config_usage(stdout);
			return CONFIG_EXIT;
		case 'V':
			printf("p11kms %s\n", P11KMS_VERSION);
			return CONFIG_EXIT;
		case ':':
			snprintf(err, errlen, "%.60s needs a value; see "
			    "p11kms --help", argv[optind - 1]);
			return CONFIG_ERROR;
		default:
			snprintf(err, errlen, "unknown option '%.60s'; see "
			    "p11kms --help", argv[optind - 1]);
			return CONFIG_ERROR;
		}
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument '%.60s'; see "
		    "p11kms --help", argv[optind]);
		return CONFIG_ERROR;
	}
	if (cfg->nkeys == 0) {
		snprintf(err, errlen, "no key given: pass --key with the "
		    "RFC 7512 URI of the key-encryption key, e.g. --key "
		    "'pkcs11:token=kms;object=kek1;type=secret-key'");
		return CONFIG_ERROR;
	}
	if (cfg->socket_path[0] == '\0' ||
	    (cfg->socket_path[0] == '@' && cfg->socket_path[1] == '\0')) {
		snprintf(err, errlen, "--socket is empty: give a path or "
		    "@name");
		return CONFIG_ERROR;
	}
	return CONFIG_OK;
}
