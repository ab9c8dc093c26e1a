/*
 * inittoken: creating a token (p11kms init-token) with both PINs read from
 * files, so neither ever sits on a command line (where any local user reads
 * it in /proc/PID/cmdline, as softhsm2-util --so-pin/--pin would).
 */
#ifndef P11KMS_INITTOKEN_H
#define P11KMS_INITTOKEN_H

#include <stddef.h>

struct inittoken_config {
	const char *module;		/* .so path or p11-kit name; required */
	const char *label;		/* 1 to 32 bytes */
	const char *so_pin_file;	/* the new SO PIN */
	const char *pin_file;		/* the new user PIN */
};

/* What init-token made, for the tool's output. */
struct inittoken_result {
	char label[33];
	char serial[17];
};

/*
 * Loads the module, refuses when a token labelled cfg->label exists, picks
 * the first slot whose token is not initialized yet (SoftHSM always offers
 * one), C_InitToken with the SO PIN, then as SO C_InitPIN with the user
 * PIN. Both PIN files follow token_read_pin's rules (pin.h) and are read
 * before the token is touched; both PINs are wiped on every path. Returns
 * KEYRING_OK, KEYRING_E_CONFIG (label exists or too long, no free slot,
 * module refused), KEYRING_E_PIN (a PIN file refused, or the token refused
 * a PIN) or KEYRING_E_TOKEN, with a message in err that holds no PIN.
 * *res is written on success only.
 */
int inittoken_run(const struct inittoken_config *cfg,
    struct inittoken_result *res, char *err, size_t errlen);

#endif
