/*
 * tool: the key-management subcommands of the p11kms binary
 * (`p11kms keygen|keys|selftest …`).
 */
#ifndef P11KMS_TOOL_H
#define P11KMS_TOOL_H

/* 1 when name is a subcommand (argv[1] of the binary). */
int tool_is_subcommand(const char *name);
/* Runs a subcommand; argv[0] is its name. Returns the exit status. */
int tool_main(int argc, char **argv);

#endif
