/*
 * tool: the key-management subcommands of the p11kms binary
 * (`p11kms keygen|keys|selftest|status|reload|audit-verify …`), driven
 * from one table that also makes the list an unknown name gets.
 */
#ifndef P11KMS_TOOL_H
#define P11KMS_TOOL_H

#include <stdio.h>

/* 1 when name is a subcommand (argv[1] of the binary). */
int tool_is_subcommand(const char *name);
/* 1 when argv[1] is no flag, so it was meant as a subcommand. */
int tool_looks_like_subcommand(const char *arg);
/* One "  p11kms NAME  what it does" line per subcommand. */
void tool_list_subcommands(FILE *fp);
/* Runs a subcommand; argv[0] is its name. Returns the exit status. */
int tool_main(int argc, char **argv);

#endif
