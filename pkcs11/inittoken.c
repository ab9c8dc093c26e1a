/*
 * inittoken: C_InitToken + C_InitPIN with PINs from files (see
 * inittoken.h). The module is loaded managed by p11-kit, as token.c does.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <p11-kit/p11-kit.h>

#include "pkcs11/filesafe.h"
#include "pkcs11/inittoken.h"
#include "pkcs11/keyring.h"
#include "pkcs11/token.h"

#define LABEL_LEN	32

/* The slots of fn (all, with or without a token); *out malloc'd. */
static CK_RV
slots_of(CK_FUNCTION_LIST *fn, CK_SLOT_ID **out, CK_ULONG *n)
{
	CK_SLOT_ID *v = NULL;
	CK_RV rv;

	*out = NULL;
	*n = 0;
	if ((rv = fn->C_GetSlotList(CK_TRUE, NULL, n)) != CKR_OK)
		return rv;
	if (*n == 0)
		return CKR_OK;
	if ((v = calloc(*n, sizeof(*v))) == NULL)
		return CKR_HOST_MEMORY;
	if ((rv = fn->C_GetSlotList(CK_TRUE, v, n)) != CKR_OK) {
		free(v);
		*n = 0;
		return rv;
	}
	*out = v;
	return CKR_OK;
}

/*
 * Finds the initialized token labelled label (*found = 1, its slot) and
 * the first slot whose token is not initialized (*free_slot, *has_free).
 */
static CK_RV
scan(CK_FUNCTION_LIST *fn, const char *label, int *found, CK_SLOT_ID *slot,
    int *has_free, CK_SLOT_ID *free_slot, CK_TOKEN_INFO *info)
{
	CK_SLOT_ID *v;
	CK_ULONG n, i;
	CK_TOKEN_INFO ti;
	char l[TOKEN_LABEL_MAX];
	CK_RV rv;

	*found = *has_free = 0;
	if ((rv = slots_of(fn, &v, &n)) != CKR_OK)
		return rv;
	for (i = 0; i < n; i++) {
		memset(&ti, 0, sizeof(ti));
		if (fn->C_GetTokenInfo(v[i], &ti) != CKR_OK)
			continue;
		if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
			if (!*has_free) {
				*has_free = 1;
				*free_slot = v[i];
			}
			continue;
		}
		token_printable(ti.label, sizeof(ti.label), l, sizeof(l));
		if (strcmp(l, label) == 0 && !*found) {
			*found = 1;
			*slot = v[i];
			if (info != NULL)
				*info = ti;
		}
	}
	free(v);
	return CKR_OK;
}

int
inittoken_run(const struct inittoken_config *cfg,
    struct inittoken_result *res, char *err, size_t errlen)
{
	char so_pin[TOKEN_PIN_MAX + 2], pin[TOKEN_PIN_MAX + 2];
	unsigned char label32[LABEL_LEN];
	CK_FUNCTION_LIST *fn = NULL, **mods = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_SLOT_ID slot = 0, free_slot = 0;
	CK_TOKEN_INFO ti;
	size_t so_len = 0, len = 0, ll;
	int found, has_free, inited = 0, ret = KEYRING_E_CONFIG;
	const char *step = "";
	CK_RV rv = CKR_OK;

	memset(so_pin, 0, sizeof(so_pin));
	memset(pin, 0, sizeof(pin));
	ll = strlen(cfg->label);
	if (ll == 0 || ll > LABEL_LEN) {
		token_err(err, errlen, "token label '%.40s' must be 1 to %d "
		    "bytes", cfg->label, LABEL_LEN);
		goto out;
	}
	if (strchr(cfg->label, '/') != NULL || strspn(cfg->label, " ") == ll) {
		token_err(err, errlen, "token label '%.40s': no '/' and not "
		    "only blanks", cfg->label);
		goto out;
	}
	/* Both PINs first: a refused file must not leave half a token. */
	if ((ret = token_read_pin(cfg->so_pin_file, so_pin, sizeof(so_pin),
	    &so_len, err, errlen)) != KEYRING_OK)
		goto out;
	if ((ret = token_read_pin(cfg->pin_file, pin, sizeof(pin), &len, err,
	    errlen)) != KEYRING_OK)
		goto out;
	ret = KEYRING_E_CONFIG;

	if (strchr(cfg->module, '/') != NULL || strstr(cfg->module, ".so")) {
		if (strchr(cfg->module, '/') != NULL &&
		    access(cfg->module, F_OK) == 0 &&
		    filesafe_check_path(cfg->module, "PKCS#11 module", 0, err,
		    errlen) != 0)
			goto out;
		if ((fn = p11_kit_module_load(cfg->module, 0)) == NULL) {
			token_err(err, errlen, "cannot load PKCS#11 module "
			    "%.200s: %s", cfg->module, p11_kit_message() ?
			    p11_kit_message() : "unknown error");
			goto out;
		}
	} else {
		if ((mods = p11_kit_modules_load(NULL, 0)) == NULL ||
		    (fn = p11_kit_module_for_name(mods, cfg->module)) == NULL) {
			token_err(err, errlen, "no p11-kit module named "
			    "'%.60s' (see p11-kit list-modules; or give the .so "
			    "path)", cfg->module);
			goto out;
		}
	}
	if ((rv = p11_kit_module_initialize(fn)) != CKR_OK) {
		ret = KEYRING_E_TOKEN;
		step = "C_Initialize";
		goto fail;
	}
	inited = 1;

	if ((rv = scan(fn, cfg->label, &found, &slot, &has_free, &free_slot,
	    NULL)) != CKR_OK) {
		ret = KEYRING_E_TOKEN;
		step = "C_GetSlotList";
		goto fail;
	}
	if (found) {
		token_err(err, errlen, "a token labelled '%s' exists already: "
		    "not touched; choose another --label", cfg->label);
		goto out;
	}
	if (!has_free) {
		token_err(err, errlen, "no slot of %.200s holds a token that is "
		    "not initialized yet", cfg->module);
		goto out;
	}
	memset(label32, ' ', sizeof(label32));
	memcpy(label32, cfg->label, ll);
	rv = fn->C_InitToken(free_slot, (CK_UTF8CHAR *)so_pin, so_len,
	    label32);
	if (rv != CKR_OK) {
		ret = rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID ||
		    rv == CKR_PIN_LEN_RANGE ? KEYRING_E_PIN : KEYRING_E_TOKEN;
		step = "C_InitToken";
		goto fail;
	}
	/* Some tokens (SoftHSM) move the new token to another slot id. */
	if ((rv = scan(fn, cfg->label, &found, &slot, &has_free, &free_slot,
	    &ti)) != CKR_OK || !found) {
		ret = KEYRING_E_TOKEN;
		step = "C_GetSlotList after C_InitToken";
		if (rv == CKR_OK)
			rv = CKR_TOKEN_NOT_PRESENT;
		goto fail;
	}
	if ((rv = fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
	    NULL, NULL, &s)) != CKR_OK) {
		ret = KEYRING_E_TOKEN;
		step = "C_OpenSession";
		goto fail;
	}
	if ((rv = fn->C_Login(s, CKU_SO, (CK_UTF8CHAR *)so_pin,
	    so_len)) != CKR_OK) {
		ret = KEYRING_E_TOKEN;
		step = "C_Login as SO";
		goto fail;
	}
	rv = fn->C_InitPIN(s, (CK_UTF8CHAR *)pin, len);
	(void)fn->C_Logout(s);
	if (rv != CKR_OK) {
		ret = rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE ?
		    KEYRING_E_PIN : KEYRING_E_TOKEN;
		step = "C_InitPIN (the token is initialized, without a user "
		    "PIN)";
		goto fail;
	}

	/* success */
	snprintf(res->label, sizeof(res->label), "%s", cfg->label);
	token_printable(ti.serialNumber, sizeof(ti.serialNumber), res->serial,
	    sizeof(res->serial));
	ret = KEYRING_OK;
	goto out;
fail:
	token_err(err, errlen, "%s: %s failed: %s", cfg->module, step,
	    token_rv_name(rv));
out:
	OPENSSL_cleanse(so_pin, sizeof(so_pin));
	OPENSSL_cleanse(pin, sizeof(pin));
	if (s != CK_INVALID_HANDLE)
		(void)fn->C_CloseSession(s);
	if (inited)
		(void)p11_kit_module_finalize(fn);
	if (mods != NULL)
		p11_kit_modules_release(mods);
	else if (fn != NULL)
		p11_kit_module_release(fn);
	return ret;
}
