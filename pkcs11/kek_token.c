/*
 * kek_token: what a token offers, before any key is judged: for each row
 * of mech_table[], whether its mechanism is listed with the flags the row
 * needs, and whether the module has the PKCS#11 3.0 functions (contract in
 * kek.h, kek_token_mechs).
 */
#include <stdlib.h>
#include <string.h>

#include "pkcs11/kek.h"

static int
has_mech(const CK_MECHANISM_TYPE *list, CK_ULONG n, CK_MECHANISM_TYPE m)
{
	CK_ULONG i;

	for (i = 0; list != NULL && i < n; i++)
		if (list[i] == m)
			return 1;
	return 0;
}

/*
 * Listed AND described with the flags we need: SoftHSM with
 * "slots.mechanisms" drops a mechanism from the list but still describes
 * it in C_GetMechanismInfo (the round trip has the last word anyway).
 */
static CK_RV
offers(struct token *t, const CK_MECHANISM_TYPE *list, CK_ULONG n,
    CK_MECHANISM_TYPE m, CK_FLAGS need, int *out)
{
	CK_MECHANISM_INFO mi;
	CK_RV rv;

	*out = 0;
	if (!has_mech(list, n, m))
		return CKR_OK;
	/* Zeroed first: SoftHSM ORs flags into what it is given. */
	memset(&mi, 0, sizeof(mi));
	rv = t->fn->C_GetMechanismInfo(t->slot, m, &mi);
	if (rv == CKR_MECHANISM_INVALID)
		return CKR_OK;
	if (rv != CKR_OK)
		return rv;
	*out = (mi.flags & need) == need;
	return CKR_OK;
}

int
kek_token_mechs(struct token *t, struct kek_tokmechs *tm, char *err,
    size_t errlen)
{
	CK_MECHANISM_TYPE *list = NULL, *tmp;
	CK_ULONG n = 0;
	CK_RV rv;
	const struct mech_def *d;
	size_t r;
	int tries, ok, ret = KEYRING_E_TOKEN;
	const char *what = "C_GetMechanismList";

	memset(tm, 0, sizeof(*tm));
	for (tries = 0; tries < 4; tries++) {
		if ((rv = t->fn->C_GetMechanismList(t->slot, NULL,
		    &n)) != CKR_OK || n == 0)
			break;
		if ((tmp = realloc(list, n * sizeof(*list))) == NULL) {
			token_err(err, errlen, "out of memory");
			ret = KEYRING_E_NOMEM;
			goto out;
		}
		list = tmp;
		rv = t->fn->C_GetMechanismList(t->slot, list, &n);
		if (rv != CKR_BUFFER_TOO_SMALL)
			break;
	}
	if (rv != CKR_OK)
		goto rv_fail;
	if (list == NULL)
		n = 0;
	what = "C_GetMechanismInfo";
	tm->v3 = t->fn3 != NULL;
	for (r = 0; r < MECH_NROWS; r++) {
		d = &mech_table[r];
		if ((rv = offers(t, list, n, d->ckm, d->need, &ok)) != CKR_OK)
			goto rv_fail;
		if (ok && (!(d->flags & MECH_F_V3) || tm->v3))
			tm->offered |= MECH_BIT(r);
	}
	if ((rv = offers(t, list, n, CKM_AES_ECB, CKF_ENCRYPT,
	    &tm->ecb)) != CKR_OK)
		goto rv_fail;

	/* success */
	ret = KEYRING_OK;
	goto out;
rv_fail:
	token_err(err, errlen, "token '%s': %s: %s", t->label, what,
	    token_rv_name(rv));
out:
	free(list);
	return ret;
}

