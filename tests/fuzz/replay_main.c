/*
 * replay_main: runs a fuzz target over its committed corpus without
 * libFuzzer, so `make test` (plain and ASan+UBSan builds) replays every
 * file. Usage: fuzz_NAME [FILE|DIR]...; with no argument the corpus
 * FUZZ_CORPUS (relative to P11KMS_SRCDIR, default the current directory).
 * Each file is named on stderr before it runs. A crash or sanitizer report
 * ends the run; otherwise it prints "N passed, 0 failed".
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

#ifndef FUZZ_CORPUS
#error "build with -DFUZZ_CORPUS='\"tests/fuzz/corpus/NAME\"'"
#endif

static size_t nrun;

/* Reads all of path; caller frees. NULL with errno on failure. */
static uint8_t *
slurp(const char *path, size_t *len)
{
	uint8_t *buf = NULL, *nb;
	size_t n = 0, cap = 0, r;
	FILE *fp;

	if ((fp = fopen(path, "rbe")) == NULL)
		return NULL;
	for (;;) {
		if (cap - n < 4096) {
			cap = cap ? 2 * cap : 8192;
			if ((nb = realloc(buf, cap)) == NULL) {
				free(buf);
				fclose(fp);
				errno = ENOMEM;
				return NULL;
			}
			buf = nb;
		}
		r = fread(buf + n, 1, cap - n, fp);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(fp)) {
		free(buf);
		fclose(fp);
		errno = EIO;
		return NULL;
	}
	fclose(fp);
	*len = n;
	return buf;
}

static int
run_file(const char *path)
{
	uint8_t *data;
	size_t len = 0;

	if ((data = slurp(path, &len)) == NULL) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	/* Exactly the bytes, in a block of exactly that size, as libFuzzer
	 * does, so ASan sees a read past the end. */
	if (len > 0) {
		uint8_t *exact = malloc(len);
		if (exact == NULL) {
			free(data);
			return -1;
		}
		memcpy(exact, data, len);
		free(data);
		data = exact;
	}
	/* Named first, so a crash report follows the input's name. */
	fprintf(stderr, "replay %s\n", path);
	LLVMFuzzerTestOneInput(data, len);
	free(data);
	nrun++;
	return 0;
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of dir, in name order (a stable replay order). */
static int
run_dir(const char *dir)
{
	struct dirent *de;
	char **names = NULL, **nn, path[4096];
	size_t n = 0, cap = 0, i;
	int ret = 0;
	DIR *d;

	if ((d = opendir(dir)) == NULL) {
		fprintf(stderr, "%s: %s\n", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			if ((nn = realloc(names, cap * sizeof(*names))) ==
			    NULL) {
				ret = -1;
				break;
			}
			names = nn;
		}
		if ((names[n] = strdup(de->d_name)) == NULL) {
			ret = -1;
			break;
		}
		n++;
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(*names), cmp_names);
	for (i = 0; i < n; i++) {
		if (ret == 0 && snprintf(path, sizeof(path), "%s/%s", dir,
		    names[i]) < (int)sizeof(path) && run_file(path) != 0)
			ret = -1;
		free(names[i]);
	}
	free(names);
	return ret;
}

static int
run_path(const char *path)
{
	struct stat st;

	if (stat(path, &st) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	return S_ISDIR(st.st_mode) ? run_dir(path) : run_file(path);
}

int
main(int argc, char **argv)
{
	const char *src = getenv("P11KMS_SRCDIR");
	char corpus[4096];
	int i, failed = 0;

	if (LLVMFuzzerInitialize != NULL)
		LLVMFuzzerInitialize(&argc, &argv);
	if (argc < 2) {
		snprintf(corpus, sizeof(corpus), "%s/%s",
		    src != NULL && *src != '\0' ? src : ".", FUZZ_CORPUS);
		failed = run_path(corpus) != 0;
	}
	for (i = 1; i < argc; i++)
		if (run_path(argv[i]) != 0)
			failed = 1;
	/* An unreadable or empty corpus is a failure, not a silent pass. */
	if (nrun == 0) {
		fprintf(stderr, "no corpus file was replayed\n");
		failed = 1;
	}
	printf("%zu passed, %d failed\n", nrun, failed);
	return failed;
}
