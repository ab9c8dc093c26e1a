#include "plugin/tool.h"

#include <stdio.h>
#include <string.h>

/* Placeholder until the key tools land. */
int
tool_is_subcommand(const char *name)
{
	return strcmp(name, "keygen") == 0 || strcmp(name, "keys") == 0 ||
	    strcmp(name, "selftest") == 0;
}

int
tool_main(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "p11kms: '%s' is not implemented yet\n", argv[0]);
	return 2;
}
