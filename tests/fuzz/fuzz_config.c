/*
 * fuzz_config: the daemon's flag and config-file parsing, and the key URI
 * checks of pkcs11/token.c that need no module.
 *
 * Input: argv words separated by NUL bytes (argv[0] is added); if a 0xff
 * byte occurs, what follows the first one is the text of a config file,
 * passed as "--config /proc/self/fd/N" (a memfd: no temporary file).
 *
 * Every word and every configured key also goes through token_uri_redact()
 * and token_uri_parse(). Invariants: a redaction is terminated within its
 * buffer and parses (if at all) without pin-value or pin-source; a URI
 * token_uri_parse() accepts has no pin-value, no slot-id and nothing
 * p11-kit does not know; a config accepted has its values in range.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "pkcs11/token.h"
#include "plugin/config.h"
#include "tests/fuzz/fuzz.h"

#define CHECK(c)	FUZZ_CHECK(c)
#define MAX_WORDS	64

static int memfd = -1;
static char memfd_path[64];
static FILE *devnull;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if ((memfd = memfd_create("fuzz-config", MFD_CLOEXEC)) == -1) {
		perror("memfd_create");
		exit(1);
	}
	snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
	/* --help and --version print to stdout: keep the run quiet. */
	if ((devnull = fopen("/dev/null", "we")) == NULL) {
		perror("/dev/null");
		exit(1);
	}
	return 0;
}

static void
check_uri(const char *s)
{
	char out[TOKEN_URI_TEXT_MAX], err[512];
	P11KitUri *uri = NULL, *back;
	size_t cap, len = strlen(s);
	int r;

	/* A short buffer too: truncation must still terminate. */
	cap = 1 + len % 23;
	memset(out, 'x', sizeof(out));
	token_uri_redact(s, out, cap);
	CHECK(memchr(out, '\0', cap) != NULL);

	token_uri_redact(s, out, sizeof(out));
	CHECK(memchr(out, '\0', sizeof(out)) != NULL);
	/* What is printed never carries a PIN attribute p11-kit would see. */
	if ((back = p11_kit_uri_new()) != NULL) {
		if (p11_kit_uri_parse(out, P11_KIT_URI_FOR_ANY, back) ==
		    P11_KIT_URI_OK) {
			CHECK(p11_kit_uri_get_pin_value(back) == NULL);
			CHECK(p11_kit_uri_get_pin_source(back) == NULL);
		}
		p11_kit_uri_free(back);
	}

	err[0] = '\0';
	r = token_uri_parse(s, &uri, err, sizeof(err));
	if (r == 0) {
		CHECK(uri != NULL);
		CHECK(p11_kit_uri_get_pin_value(uri) == NULL);
		CHECK(p11_kit_uri_get_slot_id(uri) == (CK_SLOT_ID)-1);
		CHECK(!p11_kit_uri_any_unrecognized(uri));
		p11_kit_uri_free(uri);
	} else {
		CHECK(uri == NULL);
		CHECK(err[0] != '\0');
	}
}

static void
check_config(const struct config *cfg)
{
	size_t i;

	CHECK(cfg->nkeys >= 1 && cfg->nkeys <= KEYRING_MAX_KEYS);
	for (i = 0; i < cfg->nkeys; i++)
		CHECK(cfg->keys[i] != NULL);
	CHECK(cfg->socket_path != NULL && cfg->socket_path[0] != '\0');
	CHECK(!(cfg->socket_path[0] == '@' && cfg->socket_path[1] == '\0'));
	CHECK(cfg->workers <= CONFIG_MAX_WORKERS);
	CHECK(cfg->probe_interval_s >= 1 && cfg->probe_interval_s <= 3600);
	CHECK(cfg->grace_s <= 600);
	CHECK(cfg->max_request >= 1024 &&
	    cfg->max_request <= 16 * 1024 * 1024);
	CHECK(strcmp(cfg->kms_version, "v2") == 0 ||
	    strcmp(cfg->kms_version, "v2beta1") == 0);
	CHECK(cfg->log_level >= 0 && cfg->log_level <= 3);
}

/* Words naming devices or kernel files could block a read: skip them. */
static int
harmless(const char *w)
{
	return strstr(w, "dev/") == NULL && strstr(w, "proc/") == NULL &&
	    strstr(w, "sys/") == NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *args, *argv[MAX_WORDS + 4], err[512], *p, *end;
	const uint8_t *sep;
	struct config cfg;
	size_t alen, i;
	FILE *saved;
	int argc = 0, r;

	if (memfd == -1)
		LLVMFuzzerInitialize(NULL, NULL);
	sep = memchr(data, 0xff, size);
	alen = sep != NULL ? (size_t)(sep - data) : size;
	if ((args = malloc(alen + 1)) == NULL)
		return 0;
	memcpy(args, data, alen);
	args[alen] = '\0';

	argv[argc++] = (char *)"p11kms";
	if (sep != NULL) {
		size_t flen = size - alen - 1;

		if (ftruncate(memfd, 0) != 0 ||
		    pwrite(memfd, sep + 1, flen, 0) != (ssize_t)flen) {
			free(args);
			return 0;
		}
		argv[argc++] = (char *)"--config";
		argv[argc++] = memfd_path;
	}
	for (p = args, end = args + alen; p < end && argc < MAX_WORDS;
	    p += strlen(p) + 1) {
		if (!harmless(p)) {
			free(args);
			return 0;
		}
		argv[argc++] = p;
	}
	argv[argc] = NULL;

	for (i = (sep != NULL ? 3 : 1); i < (size_t)argc; i++)
		check_uri(argv[i]);

	config_defaults(&cfg);
	err[0] = '\0';
	saved = stdout;
	stdout = devnull;
	r = config_parse_args(&cfg, argc, argv, err, sizeof(err));
	stdout = saved;
	switch (r) {
	case CONFIG_OK:
		check_config(&cfg);
		for (i = 0; i < cfg.nkeys; i++)
			check_uri(cfg.keys[i]);
		break;
	case CONFIG_EXIT:
		break;
	case CONFIG_ERROR:
		CHECK(err[0] != '\0');
		CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		break;
	default:
		abort();
	}
	config_free(&cfg);
	free(args);
	return 0;
}
