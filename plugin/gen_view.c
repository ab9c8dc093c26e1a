/*
 * gen_view: the generation seen the same way whether its keyring and pool
 * live in this process (--token-process=off) or in a token process (on),
 * where every answer about keys comes from the metadata it sent at load.
 */
#include "plugin/gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pkcs11/envelope.h"
#include "plugin/log.h"
#include "plugin/metrics.h"
#include <sys/epoll.h>

static int remote;

void
gen_set_remote(int on)
{
	remote = on;
}

int
gen_remote(void)
{
	return remote;
}

/* Appends s to the buffer at *o (room checked by the caller's sizing). */
static const char *
keep(char *buf, size_t *o, const char *s)
{
	char *p = buf + *o;
	size_t n = strlen(s) + 1;

	memcpy(p, s, n);
	*o += n;
	return p;
}

int
gen_open_tokproc(struct gen *g, char *err, size_t errlen)
{
	const struct tokwire_ready *m;
	struct config *c = &g->cfg;
	size_t o = 0;
	int r;

	if ((r = tokproc_open(&g->tp, err, errlen)) != KEYRING_OK)
		return r;
	m = tokproc_meta(g->tp);
	g->workers = m->workers;
	g->inflight = m->inflight;
	snprintf(g->workers_from, sizeof(g->workers_from), "%s",
	    m->workers_from);
	if (c->nkeys > 0)
		return KEYRING_OK;
	/* A reload: the settings the token process read, in one buffer. */
	free(c->filebuf);
	if ((c->filebuf = malloc(sizeof(m->socket_path) +
	    sizeof(m->kms_version) + sizeof(m->ops_listen) +
	    sizeof(m->audit_log) + sizeof(m->log_format) +
	    sizeof(m->pid_file))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return KEYRING_E_NOMEM;
	}
	c->socket_path = keep(c->filebuf, &o, m->socket_path);
	c->kms_version = keep(c->filebuf, &o, m->kms_version);
	c->ops_listen = m->ops_listen[0] != '\0' ?
	    keep(c->filebuf, &o, m->ops_listen) : NULL;
	c->audit_log = m->audit_log[0] != '\0' ?
	    keep(c->filebuf, &o, m->audit_log) : NULL;
	c->max_request = (size_t)m->max_request;
	c->probe_interval_s = m->probe_interval_s;
	c->grace_s = m->grace_s;
	c->log_level = m->log_level;
	c->log_format = keep(c->filebuf, &o, m->log_format[0] != '\0' ?
	    m->log_format : "logfmt");
	c->max_connections = m->max_connections;
	c->busy_poll = m->busy_poll;
	c->pid_file = m->pid_file[0] != '\0' ?
	    keep(c->filebuf, &o, m->pid_file) : NULL;
	c->nkeys = m->nkeys;
	return KEYRING_OK;
}

size_t
gen_nkeys(const struct gen *g)
{
	if (g == NULL)
		return 0;
	return g->tp != NULL ? tokproc_meta(g->tp)->nkeys :
	    keyring_nkeys(g->kr);
}

const char *
gen_key_id(const struct gen *g, size_t i)
{
	if (i >= gen_nkeys(g))
		return NULL;
	return g->tp != NULL ? tokproc_meta(g->tp)->keys[i].key_id :
	    keyring_key_id(g->kr, i);
}

const char *
gen_primary_key_id(const struct gen *g)
{
	const char *k = gen_key_id(g, 0);

	return k != NULL ? k : "";
}

const char *
gen_key_desc(const struct gen *g, size_t i)
{
	if (i >= gen_nkeys(g))
		return NULL;
	return g->tp != NULL ? tokproc_meta(g->tp)->keys[i].desc :
	    keyring_key_desc(g->kr, i);
}

const char *
gen_key_mechanism(const struct gen *g, size_t i)
{
	if (i >= gen_nkeys(g))
		return NULL;
	return g->tp != NULL ? tokproc_meta(g->tp)->keys[i].mechanism :
	    keyring_key_mechanism(g->kr, i);
}

const char *
gen_key_seal_detail(const struct gen *g, size_t i)
{
	if (i >= gen_nkeys(g))
		return "";
	return g->tp != NULL ? tokproc_meta(g->tp)->keys[i].seal_detail :
	    keyring_key_seal_detail(g->kr, i);
}

int
gen_key_token(const struct gen *g, size_t i, char *label, char *serial)
{
	const struct tokwire_ready *m;

	if (g == NULL || g->tp == NULL)
		return keyring_key_token(g != NULL ? g->kr : NULL, i, label,
		    serial);
	m = tokproc_meta(g->tp);
	label[0] = serial[0] = '\0';
	if (i >= m->nkeys)
		return -1;
	memcpy(label, m->token_label, KEYRING_TOKEN_TEXT_MAX);
	memcpy(serial, m->token_serial, KEYRING_TOKEN_TEXT_MAX);
	return 0;
}

int
gen_envelope_info(const struct gen *g, const uint8_t *ct, size_t ctlen,
    const char **mech, char *key_id)
{
	char hex[2 * ENVELOPE_KEYREF_LEN + 1];
	struct envelope e;
	size_t i;
	int r;

	if (g == NULL || g->tp == NULL)
		return keyring_envelope_info(g != NULL ? g->kr : NULL, ct,
		    ctlen, mech, key_id);
	/* The mechanism's name from the header; the key from our list. */
	if ((r = keyring_envelope_info(NULL, ct, ctlen, mech, key_id)) != 0 ||
	    envelope_decode(ct, ctlen, &e) != 0)
		return r != 0 ? r : -1;
	envelope_keyref_hex(e.keyref, hex);
	for (i = 0; i < gen_nkeys(g); i++)
		if (strcmp(gen_key_id(g, i), hex) == 0) {
			snprintf(key_id, KEYRING_KEY_ID_MAX, "%s", hex);
			break;
		}
	return 0;
}

int
gen_submit(struct gen *g, struct pool_job *job)
{
	return g->tp != NULL ? tokproc_submit(g->tp, job) :
	    pool_submit(g->pool, job);
}

unsigned
gen_workers(const struct gen *g)
{
	return g->tp != NULL ? g->workers : pool_workers(g->pool);
}

unsigned
gen_inflight(const struct gen *g)
{
	return g->tp != NULL ? tokproc_inflight(g->tp) :
	    pool_inflight(g->pool);
}

unsigned
gen_busy(const struct gen *g)
{
	return g->tp != NULL ? tokproc_busy(g->tp) : pool_busy(g->pool);
}

int
gen_watch(struct gen *g, struct loop *l, loop_io_cb done,
    tokproc_dead_cb dead, void *arg)
{
	if (g->tp != NULL)
		return tokproc_attach(g->tp, l, dead, arg, metrics_token_call);
	g->watch.cb = done;
	g->watch.arg = g;
	/*
	 * Finished jobs are taken after the connections' input of the same
	 * wake-up ("late"): a Status read then is answered and sent before
	 * the loop builds a burst of Encrypt/Decrypt replies.
	 */
	g->watch.late = 1;
	return loop_watch(l, &g->watch, EPOLLIN);
}

void
gen_unwatch(struct gen *g, struct loop *l)
{
	if (g->tp != NULL)
		tokproc_detach(g->tp);
	else if (g->watch.fd != -1)
		loop_unwatch(l, &g->watch);
}
