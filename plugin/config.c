/*
 * config: flags and the --config file into struct config (config.h). One
 * getopt table drives both: a file line "name = value" is handled as the
 * flag --name, so a new option is one table row, one case and one usage
 * line. Messages name the bad flag or file:line and the fix.
 */
#include "plugin/config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pkcs11/filesafe.h"
#include "plugin/log.h"
#include "plugin/version.h"

enum {
	OPT_WORKERS = 256, OPT_MAX_INFLIGHT, OPT_PROBE, OPT_KMS_VERSION,
	OPT_MAX_REQUEST, OPT_LOG_LEVEL, OPT_GRACE, OPT_MECHANISM,
	OPT_OPS_LISTEN, OPT_LOG_FORMAT, OPT_MODULE_INIT_ARGS,
	OPT_AUDIT_LOG = 300, OPT_AUDIT_SYNC, OPT_AUDIT_FAILURE, OPT_AUDIT_STATUS,
	OPT_AUDIT_QUEUE, OPT_PID_FILE = 320,
	OPT_MAX_CONNECTIONS = 340,
	OPT_TOKEN_PROCESS = 360, OPT_TOKEN_USER,
	OPT_BUSY_POLL = 380,
};

#define CONFIG_FILE_MAX	(64 * 1024)
#define INIT_ARGS_MAX	1024	/* bytes of --module-init-args */

static const struct option longopts[] = {
	{ "config",		required_argument, NULL, 'c' },
	{ "socket",		required_argument, NULL, 's' },
	{ "key",		required_argument, NULL, 'k' },
	{ "module",		required_argument, NULL, 'm' },
	{ "module-init-args",	required_argument, NULL, OPT_MODULE_INIT_ARGS },
	{ "pin-file",		required_argument, NULL, 'p' },
	{ "mechanism",		required_argument, NULL, OPT_MECHANISM },
	{ "workers",		required_argument, NULL, OPT_WORKERS },
	{ "max-inflight",	required_argument, NULL, OPT_MAX_INFLIGHT },
	{ "probe-interval",	required_argument, NULL, OPT_PROBE },
	{ "grace",		required_argument, NULL, OPT_GRACE },
	{ "kms-version",	required_argument, NULL, OPT_KMS_VERSION },
	{ "max-request-bytes",	required_argument, NULL, OPT_MAX_REQUEST },
	{ "max-connections",	required_argument, NULL, OPT_MAX_CONNECTIONS },
	{ "ops-listen",		required_argument, NULL, OPT_OPS_LISTEN },
	{ "pid-file",		required_argument, NULL, OPT_PID_FILE },
	{ "log-level",		required_argument, NULL, OPT_LOG_LEVEL },
	{ "log-format",		required_argument, NULL, OPT_LOG_FORMAT },
	{ "audit-log",		required_argument, NULL, OPT_AUDIT_LOG },
	{ "audit-sync",		required_argument, NULL, OPT_AUDIT_SYNC },
	{ "audit-failure",	required_argument, NULL, OPT_AUDIT_FAILURE },
	{ "audit-status",	no_argument,	   NULL, OPT_AUDIT_STATUS },
	{ "audit-queue",	required_argument, NULL, OPT_AUDIT_QUEUE },
	{ "token-process",	required_argument, NULL, OPT_TOKEN_PROCESS },
	{ "token-user",		required_argument, NULL, OPT_TOKEN_USER },
	{ "busy-poll",		required_argument, NULL, OPT_BUSY_POLL },
	{ "help",		no_argument,	   NULL, 'h' },
	{ "version",		no_argument,	   NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

void
config_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms [OPTIONS]\n"
"       p11kms keygen|keys|selftest|init-token [OPTIONS]\n"
"                                            (see p11kms CMD --help)\n"
"       p11kms audit-verify [--live] FILE...\n"
"       p11kms reload|status [OPTIONS]   (a running daemon)\n"
"Kubernetes KMS plugin (KMS v2 and v1beta1 on one socket) that wraps\n"
"keys with a non-extractable key inside a PKCS#11 token.\n"
"\n"
"  -c, --config FILE         read options from FILE: one \"name = value\"\n"
"                            per line, names as the long flags below;\n"
"                            flags override it; SIGHUP re-reads it\n"
"  -s, --socket PATH|@NAME   unix socket to serve on; @NAME is a Linux\n"
"                            abstract socket, which has no file mode: any\n"
"                            process in the network namespace can connect\n"
"                            (default " CONFIG_DEFAULT_SOCKET ")\n"
"  -k, --key URI             key-encryption key as an RFC 7512 URI, e.g.\n"
"                            pkcs11:token=kms;object=kek1;type=secret-key\n"
"                            Repeat for older keys: the first encrypts,\n"
"                            every key decrypts. Required.\n"
"  -m, --module PATH|NAME    PKCS#11 module (.so path or p11-kit module\n"
"                            name); default: module-path/module-name of the\n"
"                            URI, else every module registered with p11-kit\n"
"      --module-init-args S  pass S as C_Initialize's pReserved argument\n"
"                            (a config dir or such) to a module given by\n"
"                            path; a p11-kit module name gets it from\n"
"                            x-init-reserved: in its module file instead\n"
"  -p, --pin-file FILE       file holding the token user PIN; default: the\n"
"                            URI's pin-source. A PIN is never taken from\n"
"                            the command line.\n"
"      --mechanism M         auto (AES-GCM, else AES key wrap, else RSA\n"
"                            OAEP, as the token and key allow), aes-gcm,\n"
"                            aes-kwp or rsa-oaep (default auto)\n"
"      --workers N           token sessions/threads (default: the CPUs it\n"
"                            may use; on a hardware slot 4 x that, 8 to\n"
"                            64; capped by the token's session limit)\n"
"      --max-inflight N      requests queued or running at once before new\n"
"                            ones get RESOURCE_EXHAUSTED (default 1024)\n"
"      --probe-interval S    seconds between token health round trips\n"
"                            (default %d)\n"
"      --grace S             seconds to finish in-flight calls on SIGTERM\n"
"                            (default %d)\n"
"      --kms-version V       Status version: v2 (Kubernetes >= 1.29) or\n"
"                            v2beta1 (1.27, 1.28); default v2\n"
"      --max-request-bytes N largest gRPC request accepted (default %d)\n"
"      --max-connections N   KMS socket connections at once; when reached,\n"
"                            the oldest with no call open is closed for a\n"
"                            new one (default %d)\n"
"      --ops-listen ADDR     serve /livez /readyz /healthz /metrics over\n"
"                            HTTP on HOST:PORT or unix:/path (default off)\n"
"      --pid-file FILE       write the daemon's pid to FILE once it serves\n"
"                            (for p11kms reload); removed at exit\n"
"      --log-level L         error, warn, info or debug (default info)\n"
"      --log-format F        logfmt or json (default logfmt)\n"
"      --audit-log FILE      append a tamper-evident record of every\n"
"                            Encrypt and Decrypt to FILE (JSON Lines, hash\n"
"                            chained; check with p11kms audit-verify);\n"
"                            SIGHUP or SIGUSR1 reopens it (default off)\n"
"      --audit-sync S        every (fsync each write) or batch (fsync at\n"
"                            least once a second; default batch)\n"
"      --audit-failure F     while FILE cannot be written: continue (serve,\n"
"                            not ready, count lost records) or fail (refuse\n"
"                            Encrypt/Decrypt with UNAVAILABLE); default\n"
"                            continue\n"
"      --audit-status        audit Status and Version calls too (in the\n"
"                            file: audit-status = true)\n"
"      --audit-queue N       records held in memory while FILE cannot be\n"
"                            written, before they count as lost (default\n"
"                            16384)\n"
"      --token-process on|off  on (default): the module, PIN and sessions\n"
"                            live in a separate token process and the\n"
"                            network side runs sandboxed (seccomp); off:\n"
"                            all in one process (debugging, baseline)\n"
"      --token-user USER     run the token process as USER (needs root)\n"
"      --busy-poll auto|off  auto (default): with 2 or more CPUs, a thread\n"
"                            about to sleep for the token's answers or the\n"
"                            next request polls for up to 50-100 us first\n"
"                            (a lone Encrypt answers about 3x sooner; polls\n"
"                            that find nothing stop for a while);\n"
"                            off: always sleep\n"
"  -h, --help                this text\n"
"  -V, --version             version\n"
"\n"
"Exit status: 0 after SIGTERM/SIGINT, 1 runtime failure, 2 bad flags or\n"
"configuration.\n",
	    CONFIG_DEFAULT_PROBE_S, CONFIG_DEFAULT_GRACE_S,
	    CONFIG_DEFAULT_MAX_REQUEST, CONFIG_DEFAULT_MAX_CONNECTIONS);
}

void
config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));	/* not an owner yet: no filebuf */
	cfg->socket_path = CONFIG_DEFAULT_SOCKET;
	cfg->probe_interval_s = CONFIG_DEFAULT_PROBE_S;
	cfg->grace_s = CONFIG_DEFAULT_GRACE_S;
	cfg->max_request = CONFIG_DEFAULT_MAX_REQUEST;
	cfg->max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS;
	cfg->kms_version = "v2";
	cfg->mechanism = "auto";
	cfg->log_format = "logfmt";
	cfg->log_level = LOG_INFO;
	cfg->audit_sync = "batch";
	cfg->audit_failure = "continue";
	cfg->token_process = 1;
	cfg->busy_poll = 1;
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
	snprintf(err, errlen, "%s '%.40s' is not a whole number from %lu "
	    "to %lu", name, arg, min, max);
	return -1;
}

/* 1 when s is one of the NULL-terminated words. */
static int
one_of(const char *s, const char *const *words)
{
	for (; *words != NULL; words++)
		if (strcmp(s, *words) == 0)
			return 1;
	return 0;
}

/*
 * Applies one option (from a flag or a file line) to cfg. `name` is the
 * long name, for messages. Returns CONFIG_OK, CONFIG_EXIT or CONFIG_ERROR.
 */
static int
apply(struct config *cfg, int opt, const char *name, const char *arg,
    char *err, size_t errlen)
{
	static const char *const mechanisms[] = { "auto", "aes-gcm",
	    "aes-kwp", "rsa-oaep", NULL };
	static const char *const formats[] = { "logfmt", "json", NULL };
	unsigned long v;
	int lvl;

	switch (opt) {
	case 'c':
		cfg->config_file = arg;
		break;
	case 's':
		if (arg[0] == '\0' || (arg[0] == '@' && arg[1] == '\0')) {
			snprintf(err, errlen, "%s is empty: give a path or "
			    "@name", name);
			return CONFIG_ERROR;
		}
		cfg->socket_path = arg;
		break;
	case 'k':
		if (cfg->nkeys == KEYRING_MAX_KEYS) {
			snprintf(err, errlen, "too many keys (at most %d)",
			    KEYRING_MAX_KEYS);
			return CONFIG_ERROR;
		}
		cfg->keys[cfg->nkeys++] = arg;
		break;
	case 'm':
		cfg->module = arg;
		break;
	case 'p':
		cfg->pin_file = arg;
		break;
	case OPT_MODULE_INIT_ARGS:
		if (arg[0] == '\0' || strlen(arg) > INIT_ARGS_MAX) {
			snprintf(err, errlen, "%s must be 1 to %d bytes: the "
			    "string the module expects as C_Initialize "
			    "pReserved", name, INIT_ARGS_MAX);
			return CONFIG_ERROR;
		}
		cfg->module_init_args = arg;
		break;
	case OPT_MECHANISM:
		if (!one_of(arg, mechanisms)) {
			snprintf(err, errlen, "%s '%.40s': use auto, aes-gcm, "
			    "aes-kwp or rsa-oaep", name, arg);
			return CONFIG_ERROR;
		}
		cfg->mechanism = arg;
		break;
	case OPT_WORKERS:
		if (num_opt(name, arg, 1, CONFIG_MAX_WORKERS, &v, err,
		    errlen) != 0)
			return CONFIG_ERROR;
		cfg->workers = (unsigned)v;
		break;
	case OPT_MAX_INFLIGHT:
		if (num_opt(name, arg, 1, 1000000, &v, err, errlen) != 0)
			return CONFIG_ERROR;
		cfg->max_inflight = (unsigned)v;
		break;
	case OPT_PROBE:
		if (num_opt(name, arg, 1, 3600, &v, err, errlen) != 0)
			return CONFIG_ERROR;
		cfg->probe_interval_s = (unsigned)v;
		break;
	case OPT_TOKEN_PROCESS:
		if (strcmp(arg, "on") != 0 && strcmp(arg, "off") != 0) {
			snprintf(err, errlen, "%s: token-process must be on or "
			    "off, got '%.100s'", name, arg);
			return CONFIG_ERROR;
		}
		cfg->token_process = strcmp(arg, "on") == 0;
		break;
	case OPT_BUSY_POLL:
		if (strcmp(arg, "auto") != 0 && strcmp(arg, "off") != 0) {
			snprintf(err, errlen, "%s: busy-poll must be auto or "
			    "off, got '%.100s'", name, arg);
			return CONFIG_ERROR;
		}
		cfg->busy_poll = strcmp(arg, "auto") == 0;
		break;
	case OPT_TOKEN_USER:
		if (arg[0] == '\0') {
			snprintf(err, errlen, "%s: token-user needs a user "
			    "name", name);
			return CONFIG_ERROR;
		}
		cfg->token_user = arg;
		break;
	case OPT_GRACE:
		if (num_opt(name, arg, 0, 600, &v, err, errlen) != 0)
			return CONFIG_ERROR;
		cfg->grace_s = (unsigned)v;
		break;
	case OPT_MAX_CONNECTIONS:
		if (num_opt(name, arg, 1, 1000000, &v, err, errlen) != 0)
			return CONFIG_ERROR;
		cfg->max_connections = (unsigned)v;
		break;
	case OPT_MAX_REQUEST:
		if (num_opt(name, arg, 1024, 16 * 1024 * 1024, &v, err,
		    errlen) != 0)
			return CONFIG_ERROR;
		cfg->max_request = v;
		break;
	case OPT_KMS_VERSION:
		if (strcmp(arg, "v2") != 0 && strcmp(arg, "v2beta1") != 0) {
			snprintf(err, errlen, "%s '%.40s': use v2 (Kubernetes "
			    "1.29 and later) or v2beta1 (1.27 and 1.28)", name,
			    arg);
			return CONFIG_ERROR;
		}
		cfg->kms_version = arg;
		break;
	case OPT_OPS_LISTEN:
		if (arg[0] == '\0') {
			snprintf(err, errlen, "%s is empty: give HOST:PORT "
			    "or unix:/path", name);
			return CONFIG_ERROR;
		}
		cfg->ops_listen = arg;
		break;
	case OPT_PID_FILE:
		if (arg[0] != '/') {
			snprintf(err, errlen, "%s '%.100s': give an absolute "
			    "path, e.g. /run/p11kms/p11kms.pid", name, arg);
			return CONFIG_ERROR;
		}
		cfg->pid_file = arg;
		break;
	case OPT_LOG_LEVEL:
		if ((lvl = log_level_parse(arg)) < 0) {
			snprintf(err, errlen, "%s '%.40s': use error, warn, "
			    "info or debug", name, arg);
			return CONFIG_ERROR;
		}
		cfg->log_level = lvl;
		break;
	case OPT_LOG_FORMAT:
		if (!one_of(arg, formats)) {
			snprintf(err, errlen, "%s '%.40s': use logfmt or json",
			    name, arg);
			return CONFIG_ERROR;
		}
		cfg->log_format = arg;
		break;
	case OPT_AUDIT_LOG:
		if (arg[0] == '\0') {
			snprintf(err, errlen, "%s is empty: give a file path",
			    name);
			return CONFIG_ERROR;
		}
		cfg->audit_log = arg;
		break;
	case OPT_AUDIT_SYNC:
		if (strcmp(arg, "every") != 0 && strcmp(arg, "batch") != 0) {
			snprintf(err, errlen, "%s '%.40s': use every or batch",
			    name, arg);
			return CONFIG_ERROR;
		}
		cfg->audit_sync = arg;
		break;
	case OPT_AUDIT_FAILURE:
		if (strcmp(arg, "continue") != 0 && strcmp(arg, "fail") != 0) {
			snprintf(err, errlen, "%s '%.40s': use continue or fail",
			    name, arg);
			return CONFIG_ERROR;
		}
		cfg->audit_failure = arg;
		break;
	case OPT_AUDIT_QUEUE:
		if (num_opt(name, arg, 1, 1000000, &v, err, errlen) != 0)
			return CONFIG_ERROR;
		cfg->audit_queue = v;
		break;
	case OPT_AUDIT_STATUS:
		/* From a file line: "true" or "false". */
		if (arg != NULL && strcmp(arg, "true") != 0 &&
		    strcmp(arg, "false") != 0) {
			snprintf(err, errlen, "%s '%.40s': use true or false",
			    name, arg);
			return CONFIG_ERROR;
		}
		cfg->audit_status = arg == NULL || strcmp(arg, "true") == 0;
		break;
	case 'h':
		config_usage(stdout);
		return CONFIG_EXIT;
	case 'V':
		printf("p11kms %s\n", P11KMS_VERSION);
		return CONFIG_EXIT;
	default:
		snprintf(err, errlen, "unknown option '%.60s'; see p11kms "
		    "--help", name);
		return CONFIG_ERROR;
	}
	return CONFIG_OK;
}

/*
 * 1 when m names a module file rather than a p11-kit module name: the
 * rule pkcs11/token.c applies (a '/', or a .so / .so.N name).
 */
static int
module_is_path(const char *m)
{
	size_t n = strlen(m);

	return strchr(m, '/') != NULL ||
	    (n > 3 && strcmp(m + n - 3, ".so") == 0) ||
	    strstr(m, ".so.") != NULL;
}

static char *
trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

/* Reads the whole file into a NUL-terminated buffer the caller frees. */
static char *
slurp(const char *path, char *err, size_t errlen)
{
	char *buf = NULL;
	struct stat st;
	size_t n = 0;
	FILE *fp;

	if ((fp = fopen(path, "re")) == NULL) {
		snprintf(err, errlen, "cannot read config file '%.200s': %s",
		    path, strerror(errno));
		return NULL;
	}
	/* It names the module, whose code runs as us: filesafe.h's rules. */
	if (fstat(fileno(fp), &st) != 0 || filesafe_check_stat(&st, path,
	    "config file", 0, err, errlen) != 0 ||
	    filesafe_check_dirs(path, "config file", err, errlen) != 0)
		goto out;
	if ((buf = malloc(CONFIG_FILE_MAX + 1)) == NULL) {
		snprintf(err, errlen, "out of memory reading '%.200s'", path);
		goto out;
	}
	n = fread(buf, 1, CONFIG_FILE_MAX + 1, fp);
	if (ferror(fp) || n > CONFIG_FILE_MAX) {
		snprintf(err, errlen, "config file '%.200s' %s", path,
		    ferror(fp) ? "cannot be read" : "is larger than 64 KiB");
		free(buf);
		buf = NULL;
		goto out;
	}
	buf[n] = '\0';
	if (memchr(buf, '\0', n) != NULL) {
		snprintf(err, errlen, "config file '%.200s' is not text",
		    path);
		free(buf);
		buf = NULL;
	}
 out:
	fclose(fp);
	return buf;
}

/* Applies every line of the file to cfg; cfg->filebuf keeps the text. */
static int
load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	const struct option *o;
	char *line, *next, *eq, *name, *val, msg[400];
	unsigned lineno = 0;
	int r;

	if ((cfg->filebuf = slurp(path, err, errlen)) == NULL)
		return CONFIG_ERROR;
	for (line = cfg->filebuf; line != NULL; line = next) {
		lineno++;
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		name = trim(line);
		if (*name == '\0' || *name == '#')
			continue;
		if ((eq = strchr(name, '=')) == NULL) {
			snprintf(err, errlen, "%.200s:%u: expected "
			    "\"name = value\"", path, lineno);
			return CONFIG_ERROR;
		}
		*eq = '\0';
		name = trim(name);
		val = trim(eq + 1);
		for (o = longopts; o->name != NULL; o++)
			if (strcmp(o->name, name) == 0)
				break;
		if (o->name == NULL || (o->has_arg != required_argument &&
		    o->val != OPT_AUDIT_STATUS) || o->val == 'c') {
			snprintf(err, errlen, "%.200s:%u: unknown option "
			    "'%.60s'; names are the long flags of p11kms "
			    "--help without \"--\"", path, lineno, name);
			return CONFIG_ERROR;
		}
		if (*val == '\0') {
			snprintf(err, errlen, "%.200s:%u: %s has no value",
			    path, lineno, name);
			return CONFIG_ERROR;
		}
		msg[0] = '\0';
		if ((r = apply(cfg, o->val, name, val, msg,
		    sizeof(msg))) != CONFIG_OK) {
			snprintf(err, errlen, "%.200s:%u: %s", path, lineno,
			    msg);
			return r;
		}
	}
	return CONFIG_OK;
}

int
config_parse_args(struct config *cfg, int argc, char **argv,
    char *err, size_t errlen)
{
	const struct option *o;
	const char *name;
	char lname[64];
	int c, idx, r, cmdline_keys = 0;

	/* Pass 1: find --config, so flags can override the file. */
	optind = 0;	/* glibc: full re-initialisation, so we can reparse */
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:s:k:m:p:hV", longopts,
	    NULL)) != -1)
		if (c == 'c')
			cfg->config_file = optarg;
	if (cfg->config_file != NULL &&
	    (r = load_file(cfg, cfg->config_file, err, errlen)) != CONFIG_OK)
		return r;

	/* Pass 2: the flags. */
	optind = 0;
	while ((c = getopt_long(argc, argv, ":c:s:k:m:p:hV", longopts,
	    &idx)) != -1) {
		if (c == ':') {
			snprintf(err, errlen, "%.60s needs a value; see "
			    "p11kms --help", argv[optind - 1]);
			return CONFIG_ERROR;
		}
		if (c == '?') {
			snprintf(err, errlen, "unknown option '%.60s'; see "
			    "p11kms --help", argv[optind - 1]);
			return CONFIG_ERROR;
		}
		if (c == 'k' && !cmdline_keys) {
			/* Command-line keys replace the file's. */
			cmdline_keys = 1;
			cfg->nkeys = 0;
		}
		name = NULL;
		for (o = longopts; o->name != NULL; o++)
			if (o->val == c)
				name = o->name;
		snprintf(lname, sizeof(lname), "--%s", name ? name : "?");
		r = apply(cfg, c, lname, optarg, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument '%.60s'; see "
		    "p11kms --help", argv[optind]);
		return CONFIG_ERROR;
	}
	if (cfg->module_init_args != NULL && cfg->module != NULL &&
	    !module_is_path(cfg->module)) {
		snprintf(err, errlen, "module-init-args is only for a module "
		    "given by path, and '%.60s' is a p11-kit module name: put "
		    "\"x-init-reserved: ...\" in its p11-kit module file "
		    "instead (/etc/pkcs11/modules/%.60s.module), or give "
		    "--module the .so path", cfg->module, cfg->module);
		return CONFIG_ERROR;
	}
	if (cfg->nkeys == 0) {
		snprintf(err, errlen, "no key given: pass --key (or key = in "
		    "the --config file) with the RFC 7512 URI of the "
		    "key-encryption key, e.g. --key "
		    "'pkcs11:token=kms;object=kek1;type=secret-key'");
		return CONFIG_ERROR;
	}
	return CONFIG_OK;
}

void
config_free(struct config *cfg)
{
	free(cfg->filebuf);
	cfg->filebuf = NULL;
}
