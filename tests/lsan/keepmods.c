/*
 * LD_PRELOAD shim for the sanitizer runs of the tests: dlclose() keeps the
 * library mapped. p11-kit unloads a PKCS#11 module when it is released, and
 * LeakSanitizer reports at exit; by then a foreign module's frames would be
 * "<unknown module>" and no suppression could name it. Kept mapped, they
 * carry the library's name, so tests/lsan/foreign.supp can suppress leaks
 * inside foreign modules while leaks in our code still fail.
 *
 * Test-only: never linked into p11kms. Preloaded after the ASan runtime
 * (see tests/run-all.sh), which must come first. The constructor drops
 * LD_PRELOAD from the environment: the tests' child processes
 * (pkcs11-tool, softhsm2-util) are not instrumented and must not get the
 * ASan runtime or the shim.
 */
#include <stdlib.h>

int dlclose(void *handle);

__attribute__((constructor)) static void
keepmods_init(void)
{
	unsetenv("LD_PRELOAD");
}

int
dlclose(void *handle)
{
	(void)handle;
	return 0;
}
