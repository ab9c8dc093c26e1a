/*
 * harden: process hardening at start-up, before any secret is read: no core
 * dumps, no ptrace by other processes of the same user, memory locked so
 * plaintexts and the PIN never reach swap (where permitted).
 */
#ifndef P11KMS_HARDEN_H
#define P11KMS_HARDEN_H

#include <stddef.h>

/*
 * Applies what it can and writes a one-line summary of what was and was
 * not applied into msg. Never fails the start: each step that cannot be
 * applied is reported instead.
 */
void harden_process(char *msg, size_t len);

#endif
