/*
 * tool: the key-management subcommands of the p11kms binary.
 *
 *   p11kms keygen   [--module M [--module-init-args S]] [--pin-file F]
 *                   [--mechanism X] [--bits N] URI
 *   p11kms keys     [--module M [--module-init-args S]] [--pin-file F] URI
 *   p11kms selftest [daemon flags: --config F, --key URI..., --module M,
 *                    --pin-file F, --mechanism X, ...]
 *   p11kms init-token --module M --label L --so-pin-file F --pin-file F
 *   p11kms status|reload  (plugin/ctl.c: ask or reload a running daemon)
 *
 * Exit status: 0 done (selftest: every key passed), 1 not ready or a
 * runtime failure, 2 usage or configuration error. Errors go to stderr and
 * start with "p11kms: "; results go to stdout. Nothing printed ever holds
 * a PIN or a key value: the token work is behind keyring.h, which hands
 * out names, ids and key_ids only.
 */
#include "plugin/tool.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "pkcs11/filesafe.h"
#include "pkcs11/inittoken.h"
#include "pkcs11/keyring.h"
#include "plugin/audit.h"
#include "plugin/config.h"
#include "plugin/ctl.h"
#include "plugin/gen.h"
#include "plugin/harden.h"
#include "plugin/mem.h"

#define EXIT_OK		0
#define EXIT_NOT_READY	1
#define EXIT_USAGE	2
#define SELFTEST_PT	32	/* a KMS v2 seed / v1 DEK is 32 bytes */

enum { OPT_BITS = 256, OPT_TYPE, OPT_INIT_ARGS, OPT_IMPORT };
#define IMPORT_LEN	32	/* an AES-256 value, raw bytes */

static const struct option tool_opts[] = {
	{ "module",	required_argument, NULL, 'm' },
	{ "module-init-args", required_argument, NULL, OPT_INIT_ARGS },
	{ "pin-file",	required_argument, NULL, 'p' },
	{ "mechanism",	required_argument, NULL, 'M' },
	{ "type",	required_argument, NULL, OPT_TYPE },
	{ "bits",	required_argument, NULL, OPT_BITS },
	{ "import",	required_argument, NULL, OPT_IMPORT },
	{ "help",	no_argument,	   NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void
keygen_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms keygen [OPTIONS] URI\n"
"Creates a key-encryption key inside the token, e.g.\n"
"  p11kms keygen --pin-file /etc/p11kms/pin 'pkcs11:token=kms;object=kek2'\n"
"URI names the token and the new key's label (object=); id= is optional\n"
"(default: a random 16-byte CKA_ID). An existing label is never\n"
"overwritten. Every key is CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,\n"
"CKA_EXTRACTABLE=false, without sign/verify/derive.\n"
"\n"
"  -m, --module PATH|NAME   PKCS#11 module (.so path or p11-kit name)\n"
"      --module-init-args S C_Initialize pReserved string for a module\n"
"                           given by path\n"
"  -p, --pin-file FILE      file holding the token user PIN\n"
"      --type aes|rsa       aes (default): an AES-256 key for the best AES\n"
"                           mechanism the token offers (AES-GCM, else AES\n"
"                           key wrap, else key wrap computed with AES-ECB);\n"
"                           rsa: an RSA key pair for RSA-OAEP (private:\n"
"                           decrypt only; public: encrypt only); select it\n"
"                           with type=private\n"
"      --mechanism M        aes-gcm: AES-256 for AES-GCM; aes-kwp: AES-256\n"
"                           for AES key wrap (wrap/unwrap, or encrypt/\n"
"                           decrypt for the AES-ECB form); rsa-oaep: as\n"
"                           --type rsa\n"
"      --bits N             RSA modulus size, 2048 to 4096 (default 3072)\n"
"      --import FILE        create the AES key with the 32 raw bytes in FILE\n"
"                           (C_CreateObject, same attributes) instead of\n"
"                           generating it: the same KEK on another token, a\n"
"                           replica (give the same object= and id= on\n"
"                           every token). FILE must not be readable by\n"
"                           others; the value is wiped from memory after;\n"
"                           delete FILE once every token holds the key\n"
"  -h, --help               this text\n"
"\n"
"A token that refuses the template gets it again without one optional\n"
"attribute at a time (each said on stderr); the key made is judged as the\n"
"daemon would and destroyed again if unfit.\n"
"Prints the new key's label, id, key_id and the URI for --key.\n"
"Exit status: 0 created, 1 the token failed or refused (the message names\n"
"the PKCS#11 call), 2 bad flags, URI, PIN, a mechanism the token lacks, or\n"
"the label exists.\n");
}

static void
keys_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms keys [OPTIONS] URI\n"
"Lists the secret keys and RSA private keys of the token URI names\n"
"(object=, id= and type= filter), each with its label, id, key_id, type,\n"
"and whether p11kms accepts it as a KEK: with the mechanisms it passed a\n"
"round trip with, or why not.\n"
"\n"
"  -m, --module PATH|NAME   PKCS#11 module (.so path or p11-kit name)\n"
"      --module-init-args S C_Initialize pReserved string for a module\n"
"                           given by path\n"
"  -p, --pin-file FILE      file holding the token user PIN (without it,\n"
"                           keys needing login are not shown)\n"
"  -h, --help               this text\n"
"\n"
"Exit status: 0 listed, 1 token failure, 2 bad flags, URI or PIN.\n");
}

static void
selftest_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms selftest [DAEMON OPTIONS]\n"
"Loads the keys exactly as the daemon would (same flags, same --config\n"
"file), then seals and opens a random 32-byte value with EVERY configured\n"
"key inside the token. Prints one line per key (key_id, mechanism, OK or\n"
"FAIL with the reason). With --replica lines, every replica's keys too,\n"
"and the proof that the replicas hold one key (the same key_id, and what\n"
"each seals every other opens). The daemon's socket options are accepted\n"
"and ignored.\n"
"\n"
"Exit status: 0 every key passed (the deployment is ready), 1 a key or\n"
"the token failed, 2 bad flags or configuration (a key missing or unfit,\n"
"a PIN refused).\n"
"\n"
"The daemon's options:\n");
	config_usage(fp);
}

/*
 * The daemon's hardening (harden.h: no core dumps, not dumpable, memory
 * locked where permitted), before a subcommand reads a PIN or touches a
 * key. Its summary line is the daemon's log; a tool keeps stderr for
 * errors and says only what could not be applied.
 */
static void
tool_harden(const char *cmd)
{
	char msg[256];

	harden_process(msg, sizeof(msg));
	if (strstr(msg, "NOT disabled") != NULL ||
	    strstr(msg, "still dumpable") != NULL)
		fprintf(stderr, "p11kms: %s: %s\n", cmd, msg);
}

static int
status_exit(int status)
{
	return status == KEYRING_E_CONFIG || status == KEYRING_E_PIN ?
	    EXIT_USAGE : EXIT_NOT_READY;
}

/*
 * Parses keygen/keys flags into cfg; the one positional argument is the
 * URI. Returns -1 to go on, else the exit status.
 */
/* keygen --import FILE (parse_tool_args). */
static const char *import_file;

/*
 * Reads the IMPORT_LEN raw bytes of FILE into a secret buffer (caller
 * frees with mem_free_secret). The file is judged as a PIN file is.
 */
static uint8_t *
read_import(const char *path)
{
	char err[400];
	struct stat st;
	uint8_t *v;
	ssize_t n;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		fprintf(stderr, "p11kms: keygen: --import %.200s: %s\n", path,
		    strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0 || filesafe_check_stat(&st, path, "key file",
	    FILESAFE_SECRET, err, sizeof(err)) != 0 ||
	    filesafe_check_dirs(path, "key file", err, sizeof(err)) != 0) {
		fprintf(stderr, "p11kms: keygen: %s\n", err);
		close(fd);
		return NULL;
	}
	if ((v = mem_alloc_secret(IMPORT_LEN + 1)) == NULL) {
		close(fd);
		return NULL;
	}
	/* One byte more than a key: a longer file is refused. */
	n = read(fd, v, IMPORT_LEN + 1);
	close(fd);
	if (n != IMPORT_LEN) {
		fprintf(stderr, "p11kms: keygen: --import %.200s: want exactly "
		    "%d raw bytes (an AES-256 value), got %s\n", path,
		    IMPORT_LEN, n > IMPORT_LEN ? "more" : "fewer");
		mem_free_secret(v);
		return NULL;
	}
	return v;
}

static int
parse_tool_args(const char *cmd, int argc, char **argv, int with_gen,
    struct keyring_tool_config *cfg, void (*usage)(FILE *))
{
	unsigned long v;
	char *end;
	int c;

	memset(cfg, 0, sizeof(*cfg));
	import_file = NULL;
	optind = 0;	/* glibc: full re-initialisation */
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":m:p:h", tool_opts,
	    NULL)) != -1) {
		switch (c) {
		case 'm':
			cfg->module = optarg;
			break;
		case 'p':
			cfg->pin_file = optarg;
			break;
		case OPT_INIT_ARGS:
			if (optarg[0] == '\0') {
				fprintf(stderr, "p11kms: %s: --module-init-args "
				    "is empty\n", cmd);
				return EXIT_USAGE;
			}
			cfg->module_init_args = optarg;
			break;
		case OPT_IMPORT:
			if (!with_gen)
				goto unknown;
			import_file = optarg;
			break;
		case 'M':
		case OPT_TYPE:
		case OPT_BITS:
			if (!with_gen)
				goto unknown;
			if (c == 'M')
				cfg->mechanism = optarg;
			else if (c == OPT_TYPE && strcmp(optarg, "rsa") == 0)
				cfg->mechanism = "rsa-oaep";
			else if (c == OPT_TYPE && strcmp(optarg, "aes") == 0 &&
			    cfg->mechanism != NULL &&
			    strcmp(cfg->mechanism, "rsa-oaep") == 0)
				cfg->mechanism = NULL;
			else if (c == OPT_TYPE && strcmp(optarg, "aes") != 0) {
				fprintf(stderr, "p11kms: %s: --type '%.40s': "
				    "use aes or rsa\n", cmd, optarg);
				return EXIT_USAGE;
			} else if (c == OPT_BITS) {
				v = strtoul(optarg, &end, 10);
				if (*optarg < '0' || *optarg > '9' ||
				    *end != '\0' || v < 2048 || v > 4096) {
					fprintf(stderr, "p11kms: %s: --bits "
					    "'%.40s': use 2048 to 4096\n", cmd,
					    optarg);
					return EXIT_USAGE;
				}
				cfg->rsa_bits = (unsigned)v;
			}
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case ':':
			fprintf(stderr, "p11kms: %s: %.60s needs a value; see "
			    "p11kms %s --help\n", cmd, argv[optind - 1], cmd);
			return EXIT_USAGE;
		default:
		unknown:
			fprintf(stderr, "p11kms: %s: unknown option '%.60s'; "
			    "see p11kms %s --help\n", cmd, argv[optind - 1],
			    cmd);
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "p11kms: %s: %s; see p11kms %s --help\n", cmd,
		    optind >= argc ? "give the token URI, e.g. "
		    "'pkcs11:token=kms'" : "one URI only", cmd);
		return EXIT_USAGE;
	}
	cfg->uri = argv[optind];
	if (cfg->rsa_bits != 0 && (cfg->mechanism == NULL ||
	    strcmp(cfg->mechanism, "rsa-oaep") != 0)) {
		fprintf(stderr, "p11kms: %s: --bits is for RSA keys (--type "
		    "rsa or --mechanism rsa-oaep)\n", cmd);
		return EXIT_USAGE;
	}
	return -1;
}

/* Notes, one "p11kms: CMD: " line each, on stderr. */
static void
print_notes(const char *cmd, const char *notes)
{
	const char *p = notes, *nl;

	while (p != NULL && *p != '\0') {
		nl = strchr(p, '\n');
		fprintf(stderr, "p11kms: %s: %.*s\n", cmd, nl != NULL ?
		    (int)(nl - p) : (int)strlen(p), p);
		p = nl != NULL ? nl + 1 : NULL;
	}
}

static int
cmd_keygen(int argc, char **argv)
{
	struct keyring_tool_config cfg;
	struct keyring_key_info info;
	uint8_t *value = NULL;
	char err[768] = "";
	int r;

	if ((r = parse_tool_args("keygen", argc, argv, 1, &cfg,
	    keygen_usage)) >= 0)
		return r;
	tool_harden("keygen");
	if (import_file != NULL) {
		if (cfg.mechanism != NULL &&
		    strcmp(cfg.mechanism, "rsa-oaep") == 0) {
			fprintf(stderr, "p11kms: keygen: --import is for AES "
			    "keys: an RSA key pair is made in the token\n");
			return EXIT_USAGE;
		}
		if ((value = read_import(import_file)) == NULL)
			return EXIT_USAGE;
		cfg.import_value = value;
		cfg.import_len = IMPORT_LEN;
	}
	r = keyring_keygen(&cfg, &info, err, sizeof(err));
	mem_free_secret(value);		/* wipes */
	print_notes("keygen", info.notes);
	if (r != 0) {
		fprintf(stderr, "p11kms: keygen: %s\n", err[0] ? err :
		    keyring_strerror(r));
		return status_exit(r);
	}
	printf("%-10s %s key\n", import_file != NULL ? "imported" :
	    "created", info.type);
	printf("label      %s\n", info.label);
	printf("id         %s\n", info.id_hex);
	printf("key_id     %s\n", info.key_id);
	printf("key_id_of  %s\n", info.key_id_from);
	printf("mechanisms %s\n", info.mechanisms);
	printf("seal       %s\n", info.seal);
	printf("uri        %s\n", info.uri);
	if (info.reason[0] != '\0')
		fprintf(stderr, "p11kms: keygen: note: %s\n", info.reason);
	return EXIT_OK;
}

static int
width(const struct keyring_key_info *v, size_t n, size_t off, int min)
{
	size_t i, w = (size_t)min, l;

	for (i = 0; i < n; i++) {
		l = strlen((const char *)&v[i] + off);
		if (l > w)
			w = l;
	}
	return w > 64 ? 64 : (int)w;
}

static int
cmd_keys(int argc, char **argv)
{
	struct keyring_tool_config cfg;
	struct keyring_key_info *v = NULL;
	char err[768] = "";
	size_t n = 0, i;
	int r, truncated = 0, wl, wi, wt;

	if ((r = parse_tool_args("keys", argc, argv, 0, &cfg,
	    keys_usage)) >= 0)
		return r;
	tool_harden("keys");
	if ((r = keyring_list(&cfg, &v, &n, &truncated, err,
	    sizeof(err))) != 0) {
		fprintf(stderr, "p11kms: keys: %s\n", err[0] ? err :
		    keyring_strerror(r));
		return status_exit(r);
	}
	print_notes("keys", err);
	wl = width(v, n, offsetof(struct keyring_key_info, label), 5);
	wi = width(v, n, offsetof(struct keyring_key_info, id_hex), 2);
	wt = width(v, n, offsetof(struct keyring_key_info, type), 4);
	printf("%-*s  %-*s  %-32s  %-*s  %-3s  %s\n", wl, "LABEL", wi, "ID",
	    "KEY_ID", wt, "TYPE", "FIT", "MECHANISMS / WHY NOT");
	for (i = 0; i < n; i++)
		printf("%-*s  %-*s  %-32s  %-*s  %-3s  %s\n", wl, v[i].label,
		    wi, v[i].id_hex[0] ? v[i].id_hex : "-",
		    v[i].key_id[0] ? v[i].key_id : "-", wt, v[i].type,
		    v[i].fit ? "yes" : "no",
		    v[i].fit ? v[i].mechanisms : v[i].reason);
	for (i = 0; i < n; i++)
		if (v[i].fit && strchr(v[i].seal, ':') != NULL)
			printf("  %s seals with %s\n", v[i].label, v[i].seal);
	if (n == 0)
		printf("(no keys)\n");
	if (truncated)
		fprintf(stderr, "p11kms: keys: only the first %d keys are "
		    "shown\n", KEYRING_LIST_MAX);
	free(v);
	return EXIT_OK;
}

/* Seal + open of a random value with key i. KEYRING_OK or the failure. */
static int
round_trip(struct keyring_worker *w, const struct keyring *kr, size_t i,
    const char **step)
{
	uint8_t pt[SELFTEST_PT], ct[KEYRING_MAX_CIPHERTEXT];
	uint8_t back[KEYRING_MAX_PLAINTEXT];
	char key_id[KEYRING_KEY_ID_MAX];
	size_t ctlen = 0, backlen = 0;
	int r;

	*step = "seal";
	if (RAND_bytes(pt, sizeof(pt)) != 1)
		return KEYRING_E_TOKEN;
	r = keyring_seal_with(w, i, pt, sizeof(pt), ct, sizeof(ct), &ctlen,
	    key_id);
	if (r == KEYRING_OK && strcmp(key_id, keyring_key_id(kr, i)) != 0)
		r = KEYRING_E_UNKNOWN_KEY;
	if (r == KEYRING_OK) {
		*step = "open";
		r = keyring_open(w, key_id, ct, ctlen, back, sizeof(back),
		    &backlen, NULL);
	}
	if (r == KEYRING_OK && (backlen != sizeof(pt) ||
	    CRYPTO_memcmp(back, pt, sizeof(pt)) != 0)) {
		*step = "compare";
		r = KEYRING_E_AUTH;
	}
	if (r == KEYRING_OK && ctlen > KEYRING_MAX_CIPHERTEXT) {
		*step = "size";
		r = KEYRING_E_TOOBIG;
	}
	OPENSSL_cleanse(pt, sizeof(pt));
	OPENSSL_cleanse(back, sizeof(back));
	return r;
}

/*
 * Replicas 2..N (cfg->nreplicas > 1; replica 1 is kr0, already tested):
 * each loaded and round-tripped as the daemon would, then the proof that
 * they are one key (gen_check_replicas). 0 when all passed.
 */
static int
selftest_replicas(const struct config *cfg, struct keyring *kr0, int *ret)
{
	const char *uris[KEYRING_MAX_KEYS], *step;
	struct keyring_config kcfg;
	struct keyring_worker *w = NULL;
	struct gen *g;
	char err[768];
	size_t r, i, nok;
	int rc, bad = 0;

	if ((g = calloc(1, sizeof(*g))) == NULL)
		return -1;
	g->cfg = *cfg;			/* borrowed: not freed here */
	g->cfg.filebuf = NULL;
	g->nreplicas = cfg->nreplicas;
	g->krs[0] = kr0;
	for (r = 1; r < g->nreplicas && !bad; r++) {
		for (i = 0; i < cfg->nkeys; i++)
			uris[i] = config_key_uri(cfg, i, r);
		memset(&kcfg, 0, sizeof(kcfg));
		kcfg.module = config_replica_module(cfg, r);
		kcfg.module_init_args = cfg->replica_module[r] == NULL ?
		    cfg->module_init_args : NULL;
		kcfg.key_uris = uris;
		kcfg.nkeys = cfg->nkeys;
		kcfg.pin_file = config_replica_pin_file(cfg, r);
		kcfg.mechanism = cfg->mechanism;
		err[0] = '\0';
		if ((rc = keyring_load(&kcfg, &g->krs[r], err,
		    sizeof(err))) != KEYRING_OK) {
			fprintf(stderr, "p11kms: selftest: NOT READY: replica "
			    "%zu (%.120s): %s\n", r + 1, uris[0], err[0] ?
			    err : keyring_strerror(rc));
			*ret = status_exit(rc);
			bad = 1;
			break;
		}
		if (keyring_worker_new(g->krs[r], &w) != KEYRING_OK) {
			fprintf(stderr, "p11kms: selftest: NOT READY: replica "
			    "%zu: cannot open a token session\n", r + 1);
			bad = 1;
			break;
		}
		for (i = 0, nok = 0; i < keyring_nkeys(g->krs[r]); i++) {
			rc = round_trip(w, g->krs[r], i, &step);
			printf("replica %zu key %zu  %s  %-15s  %s  %s", r + 1,
			    i, keyring_key_id(g->krs[r], i),
			    keyring_key_mechanism(g->krs[r], i),
			    rc == KEYRING_OK ? "OK  " : "FAIL",
			    keyring_key_desc(g->krs[r], i));
			if (rc != KEYRING_OK)
				printf(": %s failed: %s", step,
				    keyring_strerror(rc));
			printf("\n");
			nok += rc == KEYRING_OK;
		}
		keyring_worker_free(w);
		w = NULL;
		if (nok != keyring_nkeys(g->krs[r])) {
			fprintf(stderr, "p11kms: selftest: NOT READY: replica "
			    "%zu: %zu key(s) failed the seal/open round trip\n",
			    r + 1, keyring_nkeys(g->krs[r]) - nok);
			bad = 1;
		}
	}
	if (!bad && (rc = gen_check_replicas(g, err, sizeof(err))) !=
	    KEYRING_OK) {
		fprintf(stderr, "p11kms: selftest: NOT READY: %s\n", err);
		*ret = status_exit(rc);
		bad = 1;
	}
	if (!bad)
		printf("p11kms: replicas: every key is one key on %zu tokens "
		    "(same key_id; what each seals, every other opens)\n",
		    g->nreplicas);
	for (r = 1; r < g->nreplicas; r++)
		keyring_free(g->krs[r]);
	free(g);
	return bad ? -1 : 0;
}

static int
cmd_selftest(int argc, char **argv)
{
	struct config cfg;
	struct keyring_config kcfg;
	struct keyring *kr = NULL;
	struct keyring_worker *w = NULL;
	const char *step;
	char err[768] = "";
	size_t i, nok = 0;
	int r, ret = EXIT_NOT_READY;

	for (i = 1; i < (size_t)argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "-h") == 0 ||
		    strcmp(argv[i], "--help") == 0) {
			selftest_usage(stdout);
			return EXIT_OK;
		}
	}
	config_defaults(&cfg);
	r = config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (r == CONFIG_EXIT) {
		ret = EXIT_OK;
		goto out;
	}
	if (r != CONFIG_OK) {
		fprintf(stderr, "p11kms: selftest: %s\n", err);
		ret = EXIT_USAGE;
		goto out;
	}
	tool_harden("selftest");
	memset(&kcfg, 0, sizeof(kcfg));
	kcfg.module = cfg.module;
	kcfg.module_init_args = cfg.module_init_args;
	kcfg.key_uris = cfg.keys;
	kcfg.nkeys = cfg.nkeys;
	kcfg.pin_file = cfg.pin_file;
	kcfg.mechanism = cfg.mechanism;
	err[0] = '\0';
	if ((r = keyring_load(&kcfg, &kr, err, sizeof(err))) != KEYRING_OK) {
		fprintf(stderr, "p11kms: selftest: NOT READY: %s\n", err[0] ?
		    err : keyring_strerror(r));
		ret = status_exit(r);
		goto out;
	}
	if ((r = keyring_worker_new(kr, &w)) != KEYRING_OK) {
		fprintf(stderr, "p11kms: selftest: NOT READY: cannot open a "
		    "token session: %s\n", keyring_strerror(r));
		goto out;
	}
	for (i = 0; i < keyring_nkeys(kr); i++) {
		r = round_trip(w, kr, i, &step);
		printf("key %zu  %s  %-15s  %s  %s%s", i, keyring_key_id(kr, i),
		    keyring_key_mechanism(kr, i), r == KEYRING_OK ? "OK  " :
		    "FAIL", keyring_key_desc(kr, i),
		    i == 0 ? " (encrypts)" : " (decrypts)");
		if (keyring_key_seal_detail(kr, i)[0] != '\0')
			printf(" [%s]", keyring_key_seal_detail(kr, i));
		if (r != KEYRING_OK)
			printf(": %s failed: %s", step, keyring_strerror(r));
		printf("\n");
		nok += r == KEYRING_OK;
	}
	if (nok != keyring_nkeys(kr)) {
		fprintf(stderr, "p11kms: selftest: NOT READY: %zu of %zu keys "
		    "failed the seal/open round trip\n",
		    keyring_nkeys(kr) - nok, keyring_nkeys(kr));
		goto out;
	}
	if (cfg.nreplicas > 1 && selftest_replicas(&cfg, kr, &ret) != 0)
		goto out;
	printf("p11kms: ready: %zu key%s passed a seal/open round trip in "
	    "the token\n", nok, nok == 1 ? "" : "s");
	ret = EXIT_OK;
out:
	fflush(stdout);
	keyring_worker_free(w);
	keyring_free(kr);
	config_free(&cfg);
	return ret;
}

static void
init_token_usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms init-token --module M --label L --so-pin-file F --pin-file F\n"
"Creates a token: C_InitToken on the first slot whose token is not\n"
"initialized yet (SoftHSM always offers one) with the SO PIN, then as SO\n"
"C_InitPIN with the user PIN. Both PINs come from files, never from the\n"
"command line, and follow the PIN file rules (p11kms(8), SECURITY.md).\n"
"A token with that label already there is never touched.\n"
"\n"
"  -m, --module PATH|NAME   PKCS#11 module (.so path or p11-kit name)\n"
"  -l, --label L            the new token's label, 1 to 32 bytes\n"
"      --so-pin-file FILE   file holding the new security officer PIN\n"
"  -p, --pin-file FILE      file holding the new user PIN\n"
"  -h, --help               this text\n"
"\n"
"Prints the token's label and serial.\n"
"Exit status: 0 created, 1 the token failed (the message names the\n"
"PKCS#11 call), 2 bad flags, a PIN file refused, the label exists or no\n"
"free slot.\n");
}

enum { OPT_SO_PIN_FILE = 300 };

static int
cmd_init_token(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "module",	 required_argument, NULL, 'm' },
		{ "label",	 required_argument, NULL, 'l' },
		{ "so-pin-file", required_argument, NULL, OPT_SO_PIN_FILE },
		{ "pin-file",	 required_argument, NULL, 'p' },
		{ "help",	 no_argument,	    NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct inittoken_config cfg;
	struct inittoken_result res;
	char err[768] = "";
	int c, r;

	memset(&cfg, 0, sizeof(cfg));
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":m:l:p:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			cfg.module = optarg;
			break;
		case 'l':
			cfg.label = optarg;
			break;
		case OPT_SO_PIN_FILE:
			cfg.so_pin_file = optarg;
			break;
		case 'p':
			cfg.pin_file = optarg;
			break;
		case 'h':
			init_token_usage(stdout);
			return EXIT_OK;
		case ':':
			fprintf(stderr, "p11kms: init-token: %.60s needs a "
			    "value; see p11kms init-token --help\n",
			    argv[optind - 1]);
			return EXIT_USAGE;
		default:
			fprintf(stderr, "p11kms: init-token: unknown option "
			    "'%.60s'; see p11kms init-token --help\n",
			    argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind != argc || cfg.module == NULL || cfg.label == NULL ||
	    cfg.so_pin_file == NULL || cfg.pin_file == NULL) {
		fprintf(stderr, "p11kms: init-token: %s; see p11kms init-token "
		    "--help\n", optind != argc ? "no arguments besides the "
		    "options" : "give --module, --label, --so-pin-file and "
		    "--pin-file");
		return EXIT_USAGE;
	}
	tool_harden("init-token");
	if ((r = inittoken_run(&cfg, &res, err, sizeof(err))) != KEYRING_OK) {
		fprintf(stderr, "p11kms: init-token: %s\n", err[0] ? err :
		    keyring_strerror(r));
		return status_exit(r);
	}
	printf("initialized token\n");
	printf("label      %s\n", res.label);
	printf("serial     %s\n", res.serial);
	return EXIT_OK;
}

/* Every subcommand, in the order usage lists them. */
static const struct {
	const char *name;
	int (*main)(int argc, char **argv);
	const char *what;
} subcommands[] = {
	{ "keygen",	  cmd_keygen,	     "create a key-encryption key" },
	{ "keys",	  cmd_keys,	     "list a token's keys" },
	{ "selftest",	  cmd_selftest,	     "check the configured keys" },
	{ "init-token",	  cmd_init_token,    "create a token (PINs from files)" },
	{ "status",	  ctl_status_main,   "ask a running daemon how it is" },
	{ "reload",	  ctl_reload_main,   "reload a running daemon" },
	{ "audit-verify", audit_verify_main, "check an audit log" },
};
#define NSUBCOMMANDS	(sizeof(subcommands) / sizeof(subcommands[0]))

int
tool_is_subcommand(const char *name)
{
	size_t i;

	for (i = 0; i < NSUBCOMMANDS; i++)
		if (strcmp(name, subcommands[i].name) == 0)
			return 1;
	return 0;
}

int
tool_looks_like_subcommand(const char *arg)
{
	return arg[0] != '-' && arg[0] != '\0';
}

void
tool_list_subcommands(FILE *fp)
{
	size_t i;

	for (i = 0; i < NSUBCOMMANDS; i++)
		fprintf(fp, "  p11kms %-13s %s\n", subcommands[i].name,
		    subcommands[i].what);
}

int
tool_main(int argc, char **argv)
{
	size_t i;

	for (i = 0; i < NSUBCOMMANDS; i++)
		if (strcmp(argv[0], subcommands[i].name) == 0)
			return subcommands[i].main(argc, argv);
	fprintf(stderr, "p11kms: unknown subcommand '%.40s'; the "
	    "subcommands are:\n", argv[0]);
	tool_list_subcommands(stderr);
	fprintf(stderr, "and the daemon itself: p11kms [OPTIONS] (see "
	    "p11kms --help)\n");
	return EXIT_USAGE;
}
