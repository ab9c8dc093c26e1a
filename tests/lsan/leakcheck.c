/*
 * The program tests/lsan/test_lsan.sh runs under LeakSanitizer:
 *
 *   leakcheck foreign LIB   dlopen LIB, call its foreignleak_init() (which
 *                           leaks), dlclose it: the leak is the foreign
 *                           library's, and foreign.supp must hide it
 *   leakcheck ours          leak an allocation made here: it must be
 *                           reported and fail the run, suppressions or not
 *   leakcheck none          no leak at all: exit 0
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;

static int
foreign(const char *lib)
{
	void *h;
	void *(*init)(void);

	h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		fprintf(stderr, "leakcheck: %s\n", dlerror());
		return 2;
	}
	*(void **)&init = dlsym(h, "foreignleak_init");
	if (init == NULL) {
		fprintf(stderr, "leakcheck: no foreignleak_init in %s\n", lib);
		dlclose(h);
		return 2;
	}
	init();
	dlclose(h);
	return 0;
}

static int
ours(void)
{
	char *p = malloc(24);

	if (p == NULL)
		return 2;
	memcpy(p, "leaked by leakcheck.c", 22);
	sink = p;
	sink = NULL;
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "foreign") == 0)
		return foreign(argv[2]);
	if (argc == 2 && strcmp(argv[1], "ours") == 0)
		return ours();
	if (argc == 2 && strcmp(argv[1], "none") == 0)
		return 0;
	fprintf(stderr, "usage: leakcheck foreign LIB | ours | none\n");
	return 2;
}
