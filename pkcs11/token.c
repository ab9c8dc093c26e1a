/*
 * token: PKCS#11 module loading through p11-kit, token selection and the
 * login session (see token.h for the contracts).
 *
 * The vendor module is foreign code: every CK_RV is checked, and every path
 * out of token_open() that does not hand a token to the caller finalizes and
 * releases what it loaded.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <p11-kit/p11-kit.h>

#include "pkcs11/filesafe.h"
#include "pkcs11/keyring.h"
#include "pkcs11/token.h"

#define SEEN_MAX	4	/* tokens listed in a "no match" message */

void
token_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void
token_printable(const unsigned char *s, size_t n, char *out, size_t cap)
{
	size_t i, len;

	if (cap == 0)
		return;
	len = n;
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\0'))
		len--;
	if (len > cap - 1)
		len = cap - 1;
	for (i = 0; i < len; i++)
		out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
	out[len] = '\0';
}

/* A path (contains '/' or names a .so) rather than a p11-kit module name. */
static int
module_is_path(const char *m)
{
	size_t n = strlen(m);

	return strchr(m, '/') != NULL ||
	    (n > 3 && strcmp(m + n - 3, ".so") == 0) ||
	    strstr(m, ".so.") != NULL;
}

/* Slots with a token present. *out is malloc'd (caller frees), maybe NULL. */
static CK_RV
get_slots(CK_FUNCTION_LIST *fn, CK_SLOT_ID **out, CK_ULONG *n)
{
	CK_SLOT_ID *slots = NULL, *tmp;
	CK_ULONG count = 0;
	CK_RV rv;
	int tries;

	*out = NULL;
	*n = 0;
	/* The slot count can change between the two calls (hot plug). */
	for (tries = 0; tries < 4; tries++) {
		rv = fn->C_GetSlotList(CK_TRUE, NULL, &count);
		if (rv != CKR_OK)
			goto out;
		if (count == 0)
			goto out;
		tmp = realloc(slots, count * sizeof(*slots));
		if (tmp == NULL) {
			rv = CKR_HOST_MEMORY;
			goto out;
		}
		slots = tmp;
		rv = fn->C_GetSlotList(CK_TRUE, slots, &count);
		if (rv != CKR_BUFFER_TOO_SMALL)
			break;
	}
	if (rv != CKR_OK)
		goto out;

	/* success */
	*out = slots;
	*n = count;
	slots = NULL;
out:
	free(slots);
	return rv;
}

static void
seen_add(char *seen, size_t cap, int *nseen, const CK_TOKEN_INFO *ti)
{
	char label[TOKEN_LABEL_MAX], serial[17];
	size_t o = strlen(seen);

	if (*nseen == SEEN_MAX)
		snprintf(seen + o, cap - o, ", ...");
	if (*nseen >= SEEN_MAX) {
		(*nseen)++;
		return;
	}
	token_printable(ti->label, sizeof(ti->label), label, sizeof(label));
	token_printable(ti->serialNumber, sizeof(ti->serialNumber), serial,
	    sizeof(serial));
	snprintf(seen + o, cap - o, "%s'%s' (serial %s)",
	    *nseen > 0 ? ", " : "", label, serial);
	(*nseen)++;
}

/*
 * Finds the one initialized token among the modules in cand (NULL
 * terminated, all initialized) that matches uri. Never selects by slot id.
 */
static int
select_token(struct token *t, CK_FUNCTION_LIST **cand, P11KitUri *uri,
    const char *uri_text, char *err, size_t errlen)
{
	CK_FUNCTION_LIST *fn, *found_fn = NULL;
	CK_SLOT_ID *slots = NULL, found_slot = 0;
	CK_FLAGS found_flags = 0;
	CK_TOKEN_INFO ti, found_ti;
	CK_SLOT_INFO si;
	CK_INFO mi;
	CK_ULONG nslots, j;
	CK_RV rv;
	char seen[256] = "", matched[256] = "";
	int nseen = 0, nlisted = 0, nmatch = 0, ret = KEYRING_E_CONFIG;
	size_t i;

	for (i = 0; cand[i] != NULL; i++) {
		fn = cand[i];
		memset(&mi, 0, sizeof(mi));
		if (fn->C_GetInfo(&mi) != CKR_OK ||
		    !p11_kit_uri_match_module_info(uri, &mi))
			continue;
		free(slots);
		rv = get_slots(fn, &slots, &nslots);
		if (rv == CKR_HOST_MEMORY) {
			ret = KEYRING_E_NOMEM;
			token_err(err, errlen, "out of memory");
			goto out;
		}
		if (rv != CKR_OK)
			continue;	/* a bad module must not hide others */
		for (j = 0; j < nslots; j++) {
			memset(&si, 0, sizeof(si));
			if (fn->C_GetSlotInfo(slots[j], &si) != CKR_OK ||
			    !p11_kit_uri_match_slot_info(uri, &si))
				continue;
			memset(&ti, 0, sizeof(ti));
			if (fn->C_GetTokenInfo(slots[j], &ti) != CKR_OK ||
			    !(ti.flags & CKF_TOKEN_INITIALIZED))
				continue;
			seen_add(seen, sizeof(seen), &nseen, &ti);
			if (!p11_kit_uri_match_token_info(uri, &ti))
				continue;
			seen_add(matched, sizeof(matched), &nlisted, &ti);
			if (nmatch++ == 0) {
				found_fn = fn;
				found_slot = slots[j];
				found_flags = si.flags;
				found_ti = ti;
			}
		}
	}
	if (nmatch == 0) {
		token_err(err, errlen, "no token matching %s in %s (tokens "
		    "seen: %s)", uri_text, t->module,
		    nseen > 0 ? seen : "none initialized");
		goto out;
	}
	if (nmatch > 1) {
		token_err(err, errlen, "key URI %s is ambiguous: it matches "
		    "%d tokens, %s; add token= or serial= to the URI",
		    uri_text, nmatch, matched);
		goto out;
	}

	/* success */
	t->fn = found_fn;
	t->slot = found_slot;
	t->slot_flags = found_flags;
	t->info = found_ti;
	token_printable(found_ti.label, sizeof(found_ti.label), t->label,
	    sizeof(t->label));
	ret = KEYRING_OK;
out:
	free(slots);
	return ret;
}

static void
finalize_except(CK_FUNCTION_LIST **mods, CK_FUNCTION_LIST *keep)
{
	size_t i;

	for (i = 0; mods != NULL && mods[i] != NULL; i++)
		if (mods[i] != keep)
			p11_kit_module_finalize(mods[i]);
}

/*
 * Modules we initialize ourselves (--module-init-args): loaded unmanaged,
 * so the module is one process-wide instance. It is initialized by the
 * first struct token that needs it and finalized when the last one lets go;
 * a reload that keeps the same string shares it. Guarded by own_mu.
 */
struct own_module {
	CK_FUNCTION_LIST *fn;
	char *args;		/* the pReserved string it got */
	unsigned refs;
	struct own_module *next;
};

static pthread_mutex_t own_mu = PTHREAD_MUTEX_INITIALIZER;
static struct own_module *own_list;

/*
 * C_Initialize(fn) with OS locking and pReserved = args, or one more
 * reference when an earlier token did it with the same args. Returns
 * KEYRING_OK, or a status with err written (what names the module).
 */
static int
own_init(CK_FUNCTION_LIST *fn, const char *args, const char *what,
    char *err, size_t errlen)
{
	CK_C_INITIALIZE_ARGS ia;
	struct own_module *m;
	int ret = KEYRING_E_TOKEN;
	CK_RV rv;

	pthread_mutex_lock(&own_mu);
	for (m = own_list; m != NULL && m->fn != fn; m = m->next)
		;
	if (m != NULL) {
		if (strcmp(m->args, args) != 0) {
			ret = KEYRING_E_CONFIG;
			token_err(err, errlen, "%s is still initialized with "
			    "other --module-init-args by the configuration "
			    "in use, and a module is initialized once per "
			    "process: restart p11kms to change them", what);
			goto out;
		}
		m->refs++;
		ret = KEYRING_OK;
		goto out;
	}
	if ((m = calloc(1, sizeof(*m))) == NULL ||
	    (m->args = strdup(args)) == NULL) {
		ret = KEYRING_E_NOMEM;
		token_err(err, errlen, "out of memory");
		goto out;
	}
	memset(&ia, 0, sizeof(ia));
	/* Without OS locking SoftHSM and others assume a single thread. */
	ia.flags = CKF_OS_LOCKING_OK;
	ia.pReserved = m->args;
	rv = fn->C_Initialize(&ia);
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ret = KEYRING_E_CONFIG;
		token_err(err, errlen, "%s is already initialized in this "
		    "process without --module-init-args (by the "
		    "configuration in use): restart p11kms to add them", what);
		goto out;
	}
	if (rv != CKR_OK) {
		token_err(err, errlen, "cannot initialize %s with "
		    "--module-init-args: %s%s", what, token_rv_name(rv),
		    rv == CKR_ARGUMENTS_BAD ? " (the module refused the "
		    "string: check it against the module's documentation)" :
		    "");
		goto out;
	}
	m->fn = fn;
	m->refs = 1;
	m->next = own_list;
	own_list = m;
	m = NULL;
	ret = KEYRING_OK;
out:
	if (m != NULL && m->fn == NULL) {
		free(m->args);
		free(m);
	}
	pthread_mutex_unlock(&own_mu);
	return ret;
}

/* Drops one reference; the last one finalizes the module. */
static void
own_fini(CK_FUNCTION_LIST *fn)
{
	struct own_module **mp, *m;

	pthread_mutex_lock(&own_mu);
	for (mp = &own_list; (m = *mp) != NULL && m->fn != fn; mp = &m->next)
		;
	if (m != NULL && --m->refs == 0) {
		*mp = m->next;
		(void)fn->C_Finalize(NULL);
		free(m->args);
		free(m);
	}
	pthread_mutex_unlock(&own_mu);
}

/*
 * The message for a module loaded by path that refused C_Initialize with
 * CKR_ARGUMENTS_BAD: most often it wants C_Initialize arguments.
 */
static void
args_hint(const char *path, char *err, size_t errlen)
{
	token_err(err, errlen, "cannot initialize module %.120s: "
	    "CKR_ARGUMENTS_BAD; the module probably needs C_Initialize "
	    "arguments (CK_C_INITIALIZE_ARGS pReserved, such as a config "
	    "dir): register it with p11-kit in a file "
	    "/etc/pkcs11/modules/NAME.module holding the two lines "
	    "\"module: %.120s\" and \"x-init-reserved: ARGS\", then use "
	    "--module NAME; or pass --module-init-args ARGS", path, path);
}

static const char *
p11_kit_text(void)
{
	const char *m = p11_kit_message();

	return m != NULL ? m : "no reason given";
}

/*
 * The module's PKCS#11 3.0 interface, if it has one. p11-kit 0.24 offers
 * only the 2.40 list, so ask the library p11-kit loaded (the same loaded
 * instance: RTLD_NOLOAD) for C_GetInterface. Best effort: without it the
 * token-IV rows that need 3.0 are simply not offered.
 */
static void
token_find_v3(struct token *t)
{
	CK_VERSION v3 = { 3, 0 };
	P11V3_INTERFACE *iface = NULL;
	P11V3_C_GetInterface get;
	P11V3_FUNCTION_LIST *l;
	char *path;
	void *dl;

	t->fn3 = NULL;
	if ((path = p11_kit_module_get_filename(t->fn)) == NULL)
		return;
	dl = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	free(path);
	if (dl == NULL)
		return;
	*(void **)&get = dlsym(dl, "C_GetInterface");
	if (get != NULL && get((CK_UTF8CHAR *)P11V3_INTERFACE_NAME, &v3,
	    &iface, 0) == CKR_OK && iface != NULL &&
	    (l = iface->pFunctionList) != NULL && l->v2.version.major >= 3)
		t->fn3 = l;
	/* The module stays loaded: p11-kit holds its own reference. */
	dlclose(dl);
}

CK_RV
token_open_session(struct token *t, int rw, CK_SESSION_HANDLE *out)
{
	CK_RV rv = CKR_TOKEN_WRITE_PROTECTED;

	*out = CK_INVALID_HANDLE;
	if (rw && !(t->info.flags & CKF_WRITE_PROTECTED))
		rv = t->fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION |
		    CKF_RW_SESSION, NULL, NULL, out);
	/* A token that takes no R/W session may still serve R/O ones. */
	if (rv != CKR_OK)
		rv = t->fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL,
		    NULL, out);
	if (rv != CKR_OK)
		*out = CK_INVALID_HANDLE;
	return rv;
}

int
token_open(const char *module, const char *init_args, P11KitUri *uri,
    const char *uri_text, struct token **out, char *err, size_t errlen)
{
	struct token *t = NULL;
	CK_FUNCTION_LIST *one[2] = { NULL, NULL }, **cand;
	const char *path = NULL, *name = NULL;
	int all_init = 0, r, ret = KEYRING_E_CONFIG;
	char *mname;
	CK_RV rv;

	*out = NULL;
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		token_err(err, errlen, "out of memory");
		return KEYRING_E_NOMEM;
	}
	t->session = CK_INVALID_HANDLE;

	if (module != NULL && *module != '\0') {
		if (module_is_path(module))
			path = module;
		else
			name = module;
	} else if ((path = p11_kit_uri_get_module_path(uri)) == NULL)
		name = p11_kit_uri_get_module_name(uri);

	if (init_args != NULL && name != NULL) {
		token_err(err, errlen, "--module-init-args is only for a "
		    "module loaded by path; p11-kit module '%.100s' gets its "
		    "C_Initialize arguments from x-init-reserved: in its "
		    "p11-kit module file", name);
		goto out;
	}
	if (init_args != NULL && path == NULL) {
		token_err(err, errlen, "--module-init-args needs the module "
		    "given by path (--module /path/to/module.so, or the key "
		    "URI's module-path); a module registered with p11-kit "
		    "gets them from x-init-reserved: in its module file");
		goto out;
	}

	if (name != NULL) {
		snprintf(t->module, sizeof(t->module), "p11-kit module '%s'",
		    name);
		/* Loaded managed (flags 0); only ours gets initialized. */
		t->mods = p11_kit_modules_load(NULL, 0);
		if (t->mods == NULL) {
			token_err(err, errlen, "cannot load the p11-kit module "
			    "list: %s", p11_kit_text());
			goto out;
		}
		t->fn = p11_kit_module_for_name(t->mods, name);
		if (t->fn == NULL) {
			token_err(err, errlen, "no p11-kit module named '%s' "
			    "(see p11-kit list-modules; or give the .so path)",
			    name);
			goto out;
		}
	} else if (path != NULL) {
		snprintf(t->module, sizeof(t->module), "module %s", path);
		/*
		 * Its code runs as us: filesafe.h's rules, for --module, the
		 * config's module and a URI's module-path alike. A bare
		 * "lib.so" is found by p11-kit in its own module directory;
		 * a missing file gets p11-kit's message below.
		 */
		if (strchr(path, '/') != NULL && access(path, F_OK) == 0 &&
		    filesafe_check_path(path, "PKCS#11 module", 0, err,
		    errlen) != 0)
			goto out;
		/*
		 * Managed load: p11-kit initializes the module with OS
		 * locking; C_Initialize(NULL) would tell SoftHSM there is
		 * only one thread.
		 */
		/*
		 * With init_args: unmanaged, and C_Initialize is ours
		 * (own_init), since p11-kit passes pReserved only from a
		 * module file.
		 */
		t->fn = p11_kit_module_load(path, init_args != NULL ?
		    P11_KIT_MODULE_UNMANAGED : 0);
		if (t->fn == NULL) {
			token_err(err, errlen, "cannot load PKCS#11 module %s: "
			    "%s", path, p11_kit_text());
			goto out;
		}
	}

	if (t->fn != NULL && init_args != NULL) {
		if ((r = own_init(t->fn, init_args, t->module, err,
		    errlen)) != KEYRING_OK) {
			ret = r;
			goto out;
		}
		t->own_init = 1;
		one[0] = t->fn;
		cand = one;
	} else if (t->fn != NULL) {
		rv = p11_kit_module_initialize(t->fn);
		if (rv != CKR_OK) {
			ret = KEYRING_E_TOKEN;
			if (rv == CKR_ARGUMENTS_BAD && path != NULL)
				args_hint(path, err, errlen);
			else
				token_err(err, errlen, "cannot initialize %s: "
				    "%s", t->module, token_rv_name(rv));
			goto out;
		}
		t->fn_init = 1;
		one[0] = t->fn;
		cand = one;
	} else {
		snprintf(t->module, sizeof(t->module),
		    "any p11-kit registered module");
		t->mods = p11_kit_modules_load_and_initialize(0);
		if (t->mods == NULL) {
			ret = KEYRING_E_TOKEN;
			token_err(err, errlen, "cannot load the p11-kit "
			    "registered modules: %s", p11_kit_text());
			goto out;
		}
		all_init = 1;
		cand = t->mods;
	}

	if ((ret = select_token(t, cand, uri, uri_text, err, errlen)) != 0)
		goto out;
	if (all_init) {
		/* Keep only the module holding our token initialized. */
		finalize_except(t->mods, t->fn);
		all_init = 0;
		t->fn_init = 1;
		t->searched = 1;
		if ((mname = p11_kit_module_get_name(t->fn)) != NULL) {
			snprintf(t->module, sizeof(t->module),
			    "p11-kit module '%s'", mname);
			free(mname);
		}
	}

	token_find_v3(t);
	rv = token_open_session(t, 1, &t->session);
	if (rv != CKR_OK) {
		t->session = CK_INVALID_HANDLE;
		ret = KEYRING_E_TOKEN;
		token_err(err, errlen, "cannot open a session on token '%s': "
		    "%s", t->label, token_rv_name(rv));
		goto out;
	}

	/* success */
	*out = t;
	t = NULL;
	ret = KEYRING_OK;
out:
	if (t != NULL) {
		if (all_init)
			finalize_except(t->mods, NULL);
		token_close(t);
	}
	return ret;
}

void
token_close(struct token *t)
{
	if (t == NULL)
		return;
	/*
	 * No C_Logout: login is per application, and another struct token
	 * on the same module (the keyring being loaded by a reload) shares
	 * it. p11-kit's managed finalize closes only our sessions; the token
	 * logs out when the application's last session closes.
	 */
	if (t->session != CK_INVALID_HANDLE && t->fn != NULL)
		(void)t->fn->C_CloseSession(t->session);
	if (t->fn_init)
		(void)p11_kit_module_finalize(t->fn);
	if (t->own_init)
		own_fini(t->fn);
	if (t->mods != NULL)
		p11_kit_modules_release(t->mods);
	else if (t->fn != NULL)
		p11_kit_module_release(t->fn);
	free(t);
}

CK_RV
token_find_all(struct token *t, CK_ATTRIBUTE *tmpl, CK_ULONG ntmpl,
    CK_OBJECT_HANDLE *out, size_t max, size_t *n, int *more)
{
	CK_OBJECT_HANDLE h;
	CK_ULONG got;
	CK_RV rv, rv2;
	size_t total = 0;

	*n = 0;
	if (more != NULL)
		*more = 0;
	if ((rv = t->fn->C_FindObjectsInit(t->session, tmpl, ntmpl)) != CKR_OK)
		return rv;
	/* A module may return fewer than asked per call: loop until 0. */
	for (;;) {
		got = 0;
		if ((rv = t->fn->C_FindObjects(t->session, &h, 1,
		    &got)) != CKR_OK)
			break;
		if (got == 0)
			break;
		if (total == max) {
			if (more != NULL)
				*more = 1;
			break;
		}
		out[total++] = h;
	}
	rv2 = t->fn->C_FindObjectsFinal(t->session);
	if (rv == CKR_OK)
		rv = rv2;
	*n = total;
	return rv;
}

int
token_find_key(struct token *t, P11KitUri *uri, const char *uri_text,
    CK_OBJECT_HANDLE *out, CK_OBJECT_CLASS *clsp, char *err, size_t errlen)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY, ucls;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[16], *a;
	CK_OBJECT_HANDLE found[2];
	CK_ULONG nattrs, i;
	CK_RV rv;
	size_t k = 0, total = 0;
	int named = 0, more = 0, ret = KEYRING_E_CONFIG;
	const char *what;

	*out = CK_INVALID_HANDLE;
	a = p11_kit_uri_get_attributes(uri, &nattrs);
	for (i = 0; i < nattrs; i++) {
		switch (a[i].type) {
		case CKA_CLASS:
			if (a[i].ulValueLen != sizeof(ucls))
				break;
			memcpy(&ucls, a[i].pValue, sizeof(ucls));
			if (ucls != CKO_SECRET_KEY && ucls != CKO_PRIVATE_KEY) {
				token_err(err, errlen, "key URI %s names an "
				    "object type other than secret-key (an AES "
				    "key) or private (an RSA key pair)",
				    uri_text);
				goto out;
			}
			cls = ucls;
			continue;	/* added below in any case */
		case CKA_LABEL:
		case CKA_ID:
			named = 1;
			break;
		}
		if (k < sizeof(tmpl) / sizeof(tmpl[0]) - 2)
			tmpl[k++] = a[i];
	}
	if (!named) {
		token_err(err, errlen, "key URI %s names no key: add object= "
		    "(CKA_LABEL) or id= (CKA_ID)", uri_text);
		goto out;
	}
	tmpl[k].type = CKA_CLASS;
	tmpl[k].pValue = &cls;
	tmpl[k++].ulValueLen = sizeof(cls);
	/* Session objects (our own copies among them) must never match. */
	tmpl[k].type = CKA_TOKEN;
	tmpl[k].pValue = &yes;
	tmpl[k++].ulValueLen = sizeof(yes);

	rv = token_find_all(t, tmpl, k, found, 1, &total, &more);
	if (rv != CKR_OK) {
		ret = token_rv_is_fault(rv) ? KEYRING_E_TOKEN :
		    KEYRING_E_CONFIG;
		token_err(err, errlen, "searching token '%s' for %s failed: "
		    "%s", t->label, uri_text, token_rv_name(rv));
		goto out;
	}
	what = cls == CKO_PRIVATE_KEY ? "private key" : "secret key";
	if (total == 0) {
		token_err(err, errlen, "no %s matching %s on token '%s' "
		    "(searched after login; check object= and id=%s)", what,
		    uri_text, t->label, cls == CKO_SECRET_KEY ? "; an RSA key "
		    "pair needs type=private" : "");
		goto out;
	}
	if (more) {
		token_err(err, errlen, "key URI %s is ambiguous: several "
		    "%ss on token '%s' match; add id= or a unique object=",
		    uri_text, what, t->label);
		goto out;
	}

	/* success */
	*out = found[0];
	if (clsp != NULL)
		*clsp = cls;
	ret = KEYRING_OK;
out:
	return ret;
}

static void (*observer)(const char *, unsigned long, double);

uint64_t
token_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void
token_observe(const char *function, CK_RV rv, uint64_t ns)
{
	if (observer != NULL)
		observer(function, (unsigned long)rv, (double)ns / 1e9);
}

void
token_set_observer(void (*cb)(const char *, unsigned long, double))
{
	observer = cb;
}

/* The warning for a token found by loading every registered module. */
void
token_search_warning(const struct token *t, char *out, size_t cap)
{
	if (!t->searched) {
		token_err(out, cap, "%s", "");
		return;
	}
	token_err(out, cap, "no PKCS#11 module named: every module registered "
	    "with p11-kit was loaded into this process to find token '%s' "
	    "(their code ran here); it is in %s: name it with --module (or "
	    "module-name= in the key URI)", t->label, t->module);
}
