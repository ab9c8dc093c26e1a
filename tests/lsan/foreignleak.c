/*
 * A stand-in for a leaky foreign PKCS#11 module, for tests/lsan/test_lsan.sh:
 * foreignleak_init() leaks one allocation, as some registered modules do in
 * C_Initialize. Built as libp11kms-foreignleak.so, a name foreign.supp lists.
 */
#include <stdlib.h>
#include <string.h>

void *foreignleak_init(void);
static void *volatile sink;

void *
foreignleak_init(void)
{
	char *p = malloc(40);

	if (p != NULL)
		memset(p, 0x5a, 40);
	sink = p;
	sink = NULL;		/* unreachable now: a leak */
	return NULL;
}
