/*
 * ctl: `p11kms status` and `p11kms reload` (ctl.h). They learn where the
 * daemon is from its config file, ask it over the KMS socket (Status, as the
 * apiserver does) and the ops endpoint (/healthz, /status: "name value"
 * lines that plugin/main.c publishes), and print for a person or, with
 * --json, for a program. Errors go to stderr as "p11kms: CMD: ...".
 */
#include "plugin/ctl.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "plugin/config.h"
#include "plugin/ctlclient.h"

#define EXIT_OK		0
#define EXIT_BAD	1
#define EXIT_UNREACH	2
#define VAL_MAX		512
#define STATUS_POLL_MS	100

enum { OPT_OPS = 256, OPT_JSON, OPT_PID, OPT_PID_FILE, OPT_TIMEOUT };

static const struct option ctl_opts[] = {
	{ "config",	required_argument, NULL, 'c' },
	{ "socket",	required_argument, NULL, 's' },
	{ "ops",	required_argument, NULL, OPT_OPS },
	{ "json",	no_argument,	   NULL, OPT_JSON },
	{ "pid",	required_argument, NULL, OPT_PID },
	{ "pid-file",	required_argument, NULL, OPT_PID_FILE },
	{ "timeout",	required_argument, NULL, OPT_TIMEOUT },
	{ "help",	no_argument,	   NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

struct ctl_args {
	const char *cmd;
	char config[VAL_MAX];		/* "" none */
	char socket[VAL_MAX];
	char ops[VAL_MAX];		/* "" none */
	char pid_file[VAL_MAX];		/* "" none */
	long pid;			/* 0: none */
	int json;
	int timeout_s;
};

static void
status_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms status [OPTIONS]\n"
"Asks a running p11kms how it is: KMS v2 Status over its socket (version,\n"
"healthz, key_id, as kube-apiserver sees them) and, when it has an ops\n"
"endpoint, /healthz and /status (token state, keys, workers, connections,\n"
"the last reload).\n"
"\n"
"  -c, --config FILE   the daemon's config file, for socket and ops-listen\n"
"                      (default " CTL_DEFAULT_CONFIG " if it exists)\n"
"  -s, --socket PATH   KMS socket (default: the config's, else\n"
"                      " CONFIG_DEFAULT_SOCKET ")\n"
"      --ops ADDR      ops endpoint, as --ops-listen (default: the config's)\n"
"      --json          one JSON object instead of text\n"
"      --timeout S     seconds to wait for each answer (default 5)\n"
"  -h, --help          this text\n"
"\n"
"Exit status: 0 healthy, 1 unhealthy (the reason is printed), 2 the daemon\n"
"cannot be reached or bad flags.\n");
}

static void
reload_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms reload [OPTIONS]\n"
"Sends SIGHUP to a running p11kms, waits until it has re-read its\n"
"configuration and keys, and says whether that worked. On failure the\n"
"daemon keeps serving the old configuration; the reason is printed.\n"
"The outcome is read from the ops endpoint (/status), so the daemon needs\n"
"ops-listen; without one the signal is sent and the outcome not known.\n"
"\n"
"  -c, --config FILE   the daemon's config file, for pid-file and ops-listen\n"
"                      (default " CTL_DEFAULT_CONFIG " if it exists)\n"
"      --pid N         the daemon's process id (systemd: $MAINPID)\n"
"      --pid-file FILE file holding it (default: the config's pid-file)\n"
"      --ops ADDR      ops endpoint, as --ops-listen (default: the config's)\n"
"      --timeout S     seconds to wait for the outcome (default 60)\n"
"  -h, --help          this text\n"
"\n"
"Exit status: 0 reloaded, 1 the reload failed or no outcome in time, 2 bad\n"
"flags, no such process, or not permitted to signal it.\n");
}

/* Trims blanks at both ends of s in place. */
static char *
trim(char *s)
{
	size_t n;

	while (*s == ' ' || *s == '\t')
		s++;
	n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' ||
	    s[n - 1] == '\r' || s[n - 1] == '\n'))
		s[--n] = '\0';
	return s;
}

/*
 * Takes socket, ops-listen and pid-file from the config file into the
 * fields still empty. A missing default file is fine; a named one must
 * be readable.
 */
static int
read_config(struct ctl_args *a, int named)
{
	char line[1024], *eq, *name, *val;
	FILE *f;

	if (a->config[0] == '\0')
		return 0;
	if ((f = fopen(a->config, "re")) == NULL) {
		if (!named && errno == ENOENT)
			return 0;
		fprintf(stderr, "p11kms: %s: --config %s: %s\n", a->cmd,
		    a->config, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		name = trim(line);
		if (*name == '#' || (eq = strchr(name, '=')) == NULL)
			continue;
		*eq = '\0';
		name = trim(name);
		val = trim(eq + 1);
		if (strcmp(name, "socket") == 0 && a->socket[0] == '\0')
			snprintf(a->socket, sizeof(a->socket), "%s", val);
		else if (strcmp(name, "ops-listen") == 0 && a->ops[0] == '\0')
			snprintf(a->ops, sizeof(a->ops), "%s", val);
		else if (strcmp(name, "pid-file") == 0 &&
		    a->pid_file[0] == '\0' && a->pid == 0)
			snprintf(a->pid_file, sizeof(a->pid_file), "%s", val);
	}
	fclose(f);
	return 0;
}

/* Parses flags; -1 to go on, else the exit status. */
static int
parse_args(struct ctl_args *a, const char *cmd, int argc, char **argv,
    int reload, void (*usage)(FILE *))
{
	int c, named = 0;
	char *end;
	long v;

	memset(a, 0, sizeof(*a));
	a->cmd = cmd;
	a->timeout_s = reload ? 60 : 5;
	snprintf(a->config, sizeof(a->config), "%s", CTL_DEFAULT_CONFIG);
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:s:h", ctl_opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			snprintf(a->config, sizeof(a->config), "%s", optarg);
			named = 1;
			break;
		case 's':
		case OPT_JSON:
			if (reload)
				goto unknown;
			if (c == 's')
				snprintf(a->socket, sizeof(a->socket), "%s",
				    optarg);
			else
				a->json = 1;
			break;
		case OPT_OPS:
			snprintf(a->ops, sizeof(a->ops), "%s", optarg);
			break;
		case OPT_PID:
		case OPT_PID_FILE:
			if (!reload)
				goto unknown;
			if (c == OPT_PID_FILE) {
				snprintf(a->pid_file, sizeof(a->pid_file),
				    "%s", optarg);
				break;
			}
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno != 0 || *optarg == '\0' || *end != '\0' ||
			    v < 2) {
				fprintf(stderr, "p11kms: %s: --pid '%.40s': "
				    "give the daemon's process id\n", cmd,
				    optarg);
				return EXIT_UNREACH;
			}
			a->pid = v;
			break;
		case OPT_TIMEOUT:
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno != 0 || *optarg == '\0' || *end != '\0' ||
			    v < 1 || v > 3600) {
				fprintf(stderr, "p11kms: %s: --timeout "
				    "'%.40s': give 1 to 3600 seconds\n", cmd,
				    optarg);
				return EXIT_UNREACH;
			}
			a->timeout_s = (int)v;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case ':':
			fprintf(stderr, "p11kms: %s: %.60s needs a value; see "
			    "p11kms %s --help\n", cmd, argv[optind - 1], cmd);
			return EXIT_UNREACH;
		default:
		unknown:
			fprintf(stderr, "p11kms: %s: unknown option '%.60s'; "
			    "see p11kms %s --help\n", cmd, argv[optind - 1],
			    cmd);
			return EXIT_UNREACH;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "p11kms: %s: unexpected argument '%.60s'; see "
		    "p11kms %s --help\n", cmd, argv[optind], cmd);
		return EXIT_UNREACH;
	}
	if (read_config(a, named) != 0)
		return EXIT_UNREACH;
	if (a->socket[0] == '\0')
		snprintf(a->socket, sizeof(a->socket), "%s",
		    CONFIG_DEFAULT_SOCKET);
	return -1;
}

/* The value of "name value" line name in a /status body, or NULL. */
static const char *
field(const char *body, const char *name, char *out, size_t cap)
{
	size_t n = strlen(name);
	const char *p = body, *e;

	while (p != NULL && *p != '\0') {
		if (strncmp(p, name, n) == 0 && p[n] == ' ') {
			p += n + 1;
			e = strchr(p, '\n');
			snprintf(out, cap, "%.*s", e != NULL ? (int)(e - p) :
			    (int)strlen(p), p);
			return out;
		}
		p = strchr(p, '\n');
		if (p != NULL)
			p++;
	}
	return NULL;
}

static unsigned long
field_ul(const char *body, const char *name)
{
	char v[64];

	return field(body, name, v, sizeof(v)) ? strtoul(v, NULL, 10) : 0;
}

/* Writes s as a JSON string. */
static void
json_str(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void
json_kv(const char *k, const char *v, int comma)
{
	json_str(k);
	putchar(':');
	json_str(v);
	if (comma)
		putchar(',');
}

/* A /status value that is a number, printed bare; else as a string. */
static void
json_num(const char *k, const char *v, int comma)
{
	const char *p = v;

	while (*p >= '0' && *p <= '9')
		p++;
	json_str(k);
	putchar(':');
	if (*v != '\0' && *p == '\0' && (v[0] != '0' || v[1] == '\0'))
		fputs(v, stdout);
	else
		json_str(v);
	if (comma)
		putchar(',');
}

static void
utc(time_t t, char *out, size_t cap)
{
	struct tm tm;

	if (t <= 0 || gmtime_r(&t, &tm) == NULL)
		snprintf(out, cap, "-");
	else
		strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int
ctl_status_main(int argc, char **argv)
{
	static const char *const nums[] = { "pid", "keys", "workers",
		"busy_workers", "queued_jobs", "connections", "active_calls",
		"reload_requested", "reload_completed", "reload_time", NULL };
	static const char *const strs[] = { "version", "healthz", "token",
		"key_id", "reload_result", "reload_message", NULL };
	struct ctl_args a;
	struct ctl_kms_status st;
	char kerr[600] = "", oerr[600] = "", v[VAL_MAX], w[VAL_MAX], t[40];
	char *hbody = NULL, *sbody = NULL, why[1200] = "";
	int r, tmo, kms_ok, ops_ok = 0, hcode = 0, scode = 0, healthy, ret;
	size_t i;

	if ((r = parse_args(&a, "status", argc, argv, 0, status_usage)) >= 0)
		return r;
	tmo = a.timeout_s * 1000;
	kms_ok = ctl_kms_status(a.socket, tmo, &st, kerr, sizeof(kerr)) == 0;
	if (a.ops[0] != '\0') {
		ops_ok = ctl_http_get(a.ops, "/healthz", tmo, &hcode, &hbody,
		    oerr, sizeof(oerr)) == 0 && ctl_http_get(a.ops, "/status",
		    tmo, &scode, &sbody, oerr, sizeof(oerr)) == 0 &&
		    scode == 200;
		if (!ops_ok && oerr[0] == '\0')
			snprintf(oerr, sizeof(oerr), "%s/status: HTTP %d (an "
			    "older p11kms?)", a.ops, scode);
	}
	if (hbody != NULL)
		hbody[strcspn(hbody, "\n")] = '\0';
	healthy = kms_ok && strcmp(st.healthz, "ok") == 0 &&
	    (a.ops[0] == '\0' || (ops_ok && hcode == 200));
	if (!kms_ok && (a.ops[0] == '\0' || !ops_ok))
		ret = EXIT_UNREACH;
	else
		ret = healthy ? EXIT_OK : EXIT_BAD;
	if (!kms_ok)
		snprintf(why, sizeof(why), "KMS Status: %s", kerr);
	else if (strcmp(st.healthz, "ok") != 0)
		snprintf(why, sizeof(why), "KMS Status healthz: %s",
		    st.healthz);
	else if (a.ops[0] != '\0' && !ops_ok)
		snprintf(why, sizeof(why), "ops endpoint: %s", oerr);
	else if (a.ops[0] != '\0' && hcode != 200)
		snprintf(why, sizeof(why), "ops /healthz %d: %s", hcode,
		    hbody != NULL ? hbody : "");

	if (a.json) {
		printf("{");
		json_kv("state", ret == EXIT_OK ? "healthy" : ret == EXIT_BAD ?
		    "unhealthy" : "unreachable", 1);
		json_kv("reason", why, 1);
		json_kv("socket", a.socket, 1);
		json_str("kms");
		if (kms_ok) {
			printf(":{");
			json_kv("version", st.version, 1);
			json_kv("healthz", st.healthz, 1);
			json_kv("key_id", st.key_id, 0);
			printf("},");
		} else {
			printf(":{");
			json_kv("error", kerr, 0);
			printf("},");
		}
		json_str("ops");
		if (a.ops[0] == '\0') {
			printf(":null");
		} else if (!ops_ok) {
			printf(":{");
			json_kv("address", a.ops, 1);
			json_kv("error", oerr, 0);
			printf("}");
		} else {
			printf(":{");
			json_kv("address", a.ops, 1);
			printf("\"healthz_code\":%d,", hcode);
			json_kv("healthz_body", hbody != NULL ? hbody : "", 1);
			for (i = 0; strs[i] != NULL; i++)
				json_kv(strs[i], field(sbody, strs[i], v,
				    sizeof(v)) ? v : "", 1);
			for (i = 0; nums[i] != NULL; i++)
				json_num(nums[i], field(sbody, nums[i], v,
				    sizeof(v)) ? v : "", nums[i + 1] != NULL);
			printf("}");
		}
		printf("}\n");
		goto out;
	}

	printf("%-10s %s%s%s\n", "state", ret == EXIT_OK ? "healthy" :
	    ret == EXIT_BAD ? "UNHEALTHY" : "UNREACHABLE", why[0] ? ": " : "",
	    why);
	printf("%-10s %s\n", "socket", a.socket);
	if (kms_ok)
		printf("%-10s version %s, healthz %s, key_id %s\n", "status",
		    st.version, st.healthz, st.key_id);
	if (a.ops[0] == '\0') {
		printf("%-10s (none: set ops-listen or give --ops for token, "
		    "workers and reload state)\n", "ops");
	} else if (!ops_ok) {
		printf("%-10s %s: %s\n", "ops", a.ops, oerr);
	} else {
		printf("%-10s %s: healthz %d %s\n", "ops", a.ops, hcode,
		    hbody != NULL ? hbody : "");
		printf("%-10s %s, pid %s\n", "daemon", field(sbody, "version",
		    v, sizeof(v)) ? v : "?", field(sbody, "pid", w,
		    sizeof(w)) ? w : "?");
		printf("%-10s %s\n", "token", field(sbody, "token", v,
		    sizeof(v)) ? v : "?");
		printf("%-10s %lu, key_id %s encrypts\n", "keys",
		    field_ul(sbody, "keys"), field(sbody, "key_id", v,
		    sizeof(v)) ? v : "?");
		printf("%-10s %lu (%lu busy, %lu jobs queued)\n", "workers",
		    field_ul(sbody, "workers"), field_ul(sbody,
		    "busy_workers"), field_ul(sbody, "queued_jobs"));
		printf("%-10s %lu open, %lu calls in flight\n", "clients",
		    field_ul(sbody, "connections"), field_ul(sbody,
		    "active_calls"));
		utc((time_t)field_ul(sbody, "reload_time"), t, sizeof(t));
		if (field(sbody, "reload_result", v, sizeof(v)) == NULL ||
		    strcmp(v, "none") == 0)
			printf("%-10s none since start\n", "reload");
		else
			printf("%-10s %s at %s: %s\n", "reload", v, t,
			    field(sbody, "reload_message", w, sizeof(w)) ? w :
			    "");
	}
 out:
	fflush(stdout);
	free(hbody);
	free(sbody);
	return ret;
}

/* The pid from --pid or the pid file; 0 with a message printed. */
static long
find_pid(const struct ctl_args *a)
{
	char line[64];
	FILE *f;
	long v;

	if (a->pid != 0)
		return a->pid;
	if (a->pid_file[0] == '\0') {
		fprintf(stderr, "p11kms: reload: no process to signal: give "
		    "--pid (systemd: $MAINPID) or --pid-file, or set pid-file "
		    "in %s\n", a->config[0] ? a->config : "the config file");
		return 0;
	}
	if ((f = fopen(a->pid_file, "re")) == NULL) {
		fprintf(stderr, "p11kms: reload: pid file %s: %s (is p11kms "
		    "running?)\n", a->pid_file, strerror(errno));
		return 0;
	}
	v = fgets(line, sizeof(line), f) != NULL ? strtol(line, NULL, 10) : 0;
	fclose(f);
	if (v < 2)
		fprintf(stderr, "p11kms: reload: pid file %s holds no process "
		    "id\n", a->pid_file);
	return v < 2 ? 0 : v;
}

/* Fetches /status; 0 with *body, or -1 (message printed). */
static int
get_status(const struct ctl_args *a, char **body, int quiet)
{
	char err[600];
	int code;

	if (ctl_http_get(a->ops, "/status", 5000, &code, body, err,
	    sizeof(err)) != 0) {
		if (!quiet)
			fprintf(stderr, "p11kms: reload: ops endpoint: %s\n",
			    err);
		return -1;
	}
	if (code != 200) {
		if (!quiet)
			fprintf(stderr, "p11kms: reload: ops endpoint %s/status"
			    ": HTTP %d\n", a->ops, code);
		free(*body);
		*body = NULL;
		return -1;
	}
	return 0;
}

int
ctl_reload_main(int argc, char **argv)
{
	struct ctl_args a;
	struct timespec pause = { 0, STATUS_POLL_MS * 1000000L };
	char *body = NULL, v[VAL_MAX], why[VAL_MAX];
	unsigned long asked;
	long pid, deadline_ms, waited = 0;
	int r;

	if ((r = parse_args(&a, "reload", argc, argv, 1, reload_usage)) >= 0)
		return r;
	if ((pid = find_pid(&a)) == 0)
		return EXIT_UNREACH;
	if (a.ops[0] == '\0') {
		if (kill((pid_t)pid, SIGHUP) != 0)
			goto kill_failed;
		fprintf(stderr, "p11kms: reload: sent SIGHUP to %ld; the "
		    "daemon has no ops endpoint (ops-listen), so whether the "
		    "reload worked is not known: see its log\n", pid);
		return EXIT_OK;
	}
	if (get_status(&a, &body, 0) != 0)
		return EXIT_UNREACH;
	if (field_ul(body, "pid") != (unsigned long)pid) {
		fprintf(stderr, "p11kms: reload: the ops endpoint %s belongs "
		    "to process %lu, not %ld: check --ops and --pid\n", a.ops,
		    field_ul(body, "pid"), pid);
		free(body);
		return EXIT_UNREACH;
	}
	asked = field_ul(body, "reload_requested");
	free(body);
	body = NULL;
	if (kill((pid_t)pid, SIGHUP) != 0)
		goto kill_failed;
	deadline_ms = (long)a.timeout_s * 1000;
	for (;;) {
		nanosleep(&pause, NULL);
		waited += STATUS_POLL_MS;
		if (get_status(&a, &body, 1) == 0 &&
		    field_ul(body, "reload_completed") > asked)
			break;
		free(body);
		body = NULL;
		if (waited >= deadline_ms) {
			fprintf(stderr, "p11kms: reload: no outcome within %d "
			    "s (a slow token? see the daemon's log)\n",
			    a.timeout_s);
			return EXIT_BAD;
		}
	}
	if (field(body, "reload_message", why, sizeof(why)) == NULL)
		snprintf(why, sizeof(why), "-");
	if (field(body, "reload_result", v, sizeof(v)) != NULL &&
	    strcmp(v, "ok") == 0) {
		printf("p11kms: reloaded: %s\n", why);
		free(body);
		return EXIT_OK;
	}
	fprintf(stderr, "p11kms: reload failed, still serving the old "
	    "configuration: %s\n", why);
	free(body);
	return EXIT_BAD;

 kill_failed:
	fprintf(stderr, "p11kms: reload: cannot signal process %ld: %s%s\n",
	    pid, strerror(errno), errno == EPERM ? " (run as the daemon's "
	    "user or root)" : errno == ESRCH ? " (stale pid file? is p11kms "
	    "running?)" : "");
	return EXIT_UNREACH;
}
