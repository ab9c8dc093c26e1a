/*
 * tokwire: encoder and decoder of the front <-> token process protocol
 * (layout and rules in tokwire.h). Every read compares against what is
 * left (n > end - p), never p + n > end.
 */
#include "plugin/tokwire.h"

#include <string.h>

#include "pkcs11/pool.h"

/* ---- decoding ---- */

struct rd {
	const uint8_t *p, *end;
	int err;
};

static int
rd_need(struct rd *r, size_t n)
{
	if (r->err != 0)
		return -1;
	if (n > (size_t)(r->end - r->p)) {
		r->err = TOKWIRE_E_SHORT;
		return -1;
	}
	return 0;
}

static uint64_t
rd_uint(struct rd *r, size_t n)
{
	uint64_t v = 0;
	size_t i;

	if (rd_need(r, n) != 0)
		return 0;
	for (i = 0; i < n; i++)
		v = v << 8 | r->p[i];
	r->p += n;
	return v;
}

#define rd_u8(r)	((uint8_t)rd_uint(r, 1))
#define rd_u16(r)	((uint16_t)rd_uint(r, 2))
#define rd_u32(r)	((uint32_t)rd_uint(r, 4))
#define rd_u64(r)	rd_uint(r, 8)

/* Bytes into out (cap bytes); *len gets their count. */
static void
rd_bytes(struct rd *r, uint8_t *out, size_t cap, uint16_t *len)
{
	size_t n = rd_u16(r);

	*len = 0;
	if (r->err != 0)
		return;
	if (n > cap) {
		r->err = TOKWIRE_E_BIG;
		return;
	}
	if (rd_need(r, n) != 0)
		return;
	memcpy(out, r->p, n);
	r->p += n;
	*len = (uint16_t)n;
}

/* A string into out (cap bytes, NUL included); no NUL inside. */
static void
rd_str(struct rd *r, char *out, size_t cap)
{
	size_t n = rd_u16(r);

	out[0] = '\0';
	if (r->err != 0)
		return;
	if (n >= cap) {
		r->err = TOKWIRE_E_BIG;
		return;
	}
	if (rd_need(r, n) != 0)
		return;
	if (memchr(r->p, '\0', n) != NULL) {
		r->err = TOKWIRE_E_FIELD;
		return;
	}
	memcpy(out, r->p, n);
	out[n] = '\0';
	r->p += n;
}

long
tokwire_frame(const uint8_t *buf, size_t avail)
{
	uint32_t len;

	if (avail < 4)
		return 0;
	len = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
	    (uint32_t)buf[2] << 8 | buf[3];
	if (len > TOKWIRE_MAX_BODY)
		return TOKWIRE_E_BIG;
	if (len < TOKWIRE_MIN_BODY)
		return TOKWIRE_E_SHORT;
	if (avail >= 5 && buf[4] != TOKWIRE_VERSION)
		return TOKWIRE_E_VERSION;
	if (avail - 4 < len)
		return 0;
	return (long)len + 4;
}

static void
dec_ready(struct rd *r, struct tokwire_ready *m)
{
	size_t i;

	m->pid = rd_u32(r);
	rd_str(r, m->socket_path, sizeof(m->socket_path));
	rd_str(r, m->kms_version, sizeof(m->kms_version));
	rd_str(r, m->ops_listen, sizeof(m->ops_listen));
	rd_str(r, m->audit_log, sizeof(m->audit_log));
	m->max_request = rd_u64(r);
	m->probe_interval_s = rd_u32(r);
	m->grace_s = rd_u32(r);
	m->log_level = (int32_t)rd_u32(r);
	rd_str(r, m->log_format, sizeof(m->log_format));
	m->max_connections = rd_u32(r);
	m->busy_poll = rd_u8(r);
	rd_str(r, m->pid_file, sizeof(m->pid_file));
	m->workers = rd_u32(r);
	m->inflight = rd_u32(r);
	rd_str(r, m->workers_from, sizeof(m->workers_from));
	rd_str(r, m->token_label, sizeof(m->token_label));
	rd_str(r, m->token_serial, sizeof(m->token_serial));
	m->hw_slot = rd_u8(r);
	m->max_sessions = rd_u64(r);
	m->nkeys = rd_u8(r);
	if (r->err == 0 && (m->nkeys == 0 || m->nkeys > KEYRING_MAX_KEYS ||
	    m->hw_slot > 1 || m->busy_poll > 1))
		r->err = TOKWIRE_E_FIELD;
	for (i = 0; r->err == 0 && i < m->nkeys; i++) {
		struct tokwire_key *k = &m->keys[i];

		rd_str(r, k->key_id, sizeof(k->key_id));
		rd_str(r, k->desc, sizeof(k->desc));
		rd_str(r, k->mechanism, sizeof(k->mechanism));
		rd_str(r, k->seal_detail, sizeof(k->seal_detail));
		rd_str(r, k->mechanisms, sizeof(k->mechanisms));
		if (r->err == 0 && k->key_id[0] == '\0')
			r->err = TOKWIRE_E_FIELD;
	}
}

int
tokwire_decode(const uint8_t *frame, size_t len, enum tokwire_dir dir,
    struct tokwire_msg *out)
{
	struct rd r;
	long fl = tokwire_frame(frame, len);
	size_t i;

	if (fl < 0)
		return (int)fl;
	if (fl == 0 || (size_t)fl != len)
		return fl == 0 ? TOKWIRE_E_SHORT : TOKWIRE_E_TRAILING;
	r.p = frame + 5;
	r.end = frame + len;
	r.err = 0;
	out->type = rd_u8(&r);
	out->id = rd_u64(&r);
	if (r.err != 0)
		return r.err;
	switch (out->type) {
	case TOKWIRE_REQ:
	case TOKWIRE_CANCEL:
		if (dir != TOKWIRE_TO_TOKEN)
			return TOKWIRE_E_TYPE;
		break;
	case TOKWIRE_READY:
	case TOKWIRE_FAILED:
	case TOKWIRE_REPLY:
	case TOKWIRE_STATS:
	case TOKWIRE_CALLS:
		if (dir != TOKWIRE_TO_FRONT)
			return TOKWIRE_E_TYPE;
		break;
	default:
		return TOKWIRE_E_TYPE;
	}
	switch (out->type) {
	case TOKWIRE_REQ: {
		struct tokwire_req *q = &out->u.req;

		q->op = rd_u8(&r);
		q->deadline = rd_u64(&r);
		rd_str(&r, q->key_id, sizeof(q->key_id));
		rd_bytes(&r, q->in, sizeof(q->in), &q->in_len);
		if (r.err == 0 && q->op != POOL_SEAL && q->op != POOL_OPEN &&
		    q->op != POOL_PROBE)
			r.err = TOKWIRE_E_FIELD;
		if (out->id == 0 && r.err == 0)
			r.err = TOKWIRE_E_FIELD;
		break;
	}
	case TOKWIRE_CANCEL:
		break;
	case TOKWIRE_READY:
		dec_ready(&r, &out->u.ready);
		break;
	case TOKWIRE_FAILED:
		out->u.failed.status = (int32_t)rd_u32(&r);
		rd_str(&r, out->u.failed.err, sizeof(out->u.failed.err));
		break;
	case TOKWIRE_REPLY: {
		struct tokwire_reply *p = &out->u.reply;

		p->status = (int32_t)rd_u32(&r);
		rd_bytes(&r, p->out, sizeof(p->out), &p->out_len);
		rd_str(&r, p->key_id_out, sizeof(p->key_id_out));
		rd_str(&r, p->detail, sizeof(p->detail));
		p->started = rd_u64(&r);
		p->finished = rd_u64(&r);
		break;
	}
	case TOKWIRE_STATS:
		out->u.stats.workers = rd_u32(&r);
		out->u.stats.busy = rd_u32(&r);
		out->u.stats.inflight = rd_u32(&r);
		break;
	case TOKWIRE_CALLS:
		out->u.calls.n = rd_u8(&r);
		if (r.err == 0 && out->u.calls.n > TOKWIRE_CALLS_MAX)
			r.err = TOKWIRE_E_BIG;
		for (i = 0; r.err == 0 && i < out->u.calls.n; i++) {
			struct tokwire_call *c = &out->u.calls.c[i];

			rd_str(&r, c->fn, sizeof(c->fn));
			c->rv = rd_u64(&r);
			c->ns = rd_u64(&r);
		}
		break;
	}
	if (r.err != 0)
		return r.err;
	if (r.p != r.end)
		return TOKWIRE_E_TRAILING;
	return 0;
}

/* ---- encoding ---- */

struct wr {
	uint8_t *p, *end;
	int err;
};

static void
wr_uint(struct wr *w, uint64_t v, size_t n)
{
	size_t i;

	if (w->err != 0 || n > (size_t)(w->end - w->p)) {
		w->err = -1;
		return;
	}
	for (i = n; i > 0; i--) {
		w->p[i - 1] = (uint8_t)v;
		v >>= 8;
	}
	w->p += n;
}

static void
wr_bytes(struct wr *w, const void *b, size_t n, size_t cap)
{
	if (n > cap || n > 0xffff) {
		w->err = -1;
		return;
	}
	wr_uint(w, n, 2);
	if (w->err != 0 || n > (size_t)(w->end - w->p)) {
		w->err = -1;
		return;
	}
	memcpy(w->p, b, n);
	w->p += n;
}

/* s must be a NUL-terminated string shorter than cap. */
static void
wr_str(struct wr *w, const char *s, size_t cap)
{
	size_t n = strnlen(s, cap);

	if (n >= cap) {
		w->err = -1;
		return;
	}
	wr_bytes(w, s, n, cap - 1);
}

static void
enc_ready(struct wr *w, const struct tokwire_ready *m)
{
	size_t i;

	if (m->nkeys == 0 || m->nkeys > KEYRING_MAX_KEYS) {
		w->err = -1;
		return;
	}
	wr_uint(w, m->pid, 4);
	wr_str(w, m->socket_path, sizeof(m->socket_path));
	wr_str(w, m->kms_version, sizeof(m->kms_version));
	wr_str(w, m->ops_listen, sizeof(m->ops_listen));
	wr_str(w, m->audit_log, sizeof(m->audit_log));
	wr_uint(w, m->max_request, 8);
	wr_uint(w, m->probe_interval_s, 4);
	wr_uint(w, m->grace_s, 4);
	wr_uint(w, (uint32_t)m->log_level, 4);
	wr_str(w, m->log_format, sizeof(m->log_format));
	wr_uint(w, m->max_connections, 4);
	wr_uint(w, m->busy_poll ? 1 : 0, 1);
	wr_str(w, m->pid_file, sizeof(m->pid_file));
	wr_uint(w, m->workers, 4);
	wr_uint(w, m->inflight, 4);
	wr_str(w, m->workers_from, sizeof(m->workers_from));
	wr_str(w, m->token_label, sizeof(m->token_label));
	wr_str(w, m->token_serial, sizeof(m->token_serial));
	wr_uint(w, m->hw_slot ? 1 : 0, 1);
	wr_uint(w, m->max_sessions, 8);
	wr_uint(w, m->nkeys, 1);
	for (i = 0; i < m->nkeys; i++) {
		const struct tokwire_key *k = &m->keys[i];

		wr_str(w, k->key_id, sizeof(k->key_id));
		wr_str(w, k->desc, sizeof(k->desc));
		wr_str(w, k->mechanism, sizeof(k->mechanism));
		wr_str(w, k->seal_detail, sizeof(k->seal_detail));
		wr_str(w, k->mechanisms, sizeof(k->mechanisms));
	}
}

size_t
tokwire_encode(const struct tokwire_msg *m, uint8_t *buf, size_t cap)
{
	struct wr w = { buf, buf + cap, 0 };
	size_t len, i;

	wr_uint(&w, 0, 4);		/* length, filled in below */
	wr_uint(&w, TOKWIRE_VERSION, 1);
	wr_uint(&w, m->type, 1);
	wr_uint(&w, m->id, 8);
	switch (m->type) {
	case TOKWIRE_REQ:
		wr_uint(&w, m->u.req.op, 1);
		wr_uint(&w, m->u.req.deadline, 8);
		wr_str(&w, m->u.req.key_id, sizeof(m->u.req.key_id));
		wr_bytes(&w, m->u.req.in, m->u.req.in_len,
		    sizeof(m->u.req.in));
		break;
	case TOKWIRE_CANCEL:
		break;
	case TOKWIRE_READY:
		enc_ready(&w, &m->u.ready);
		break;
	case TOKWIRE_FAILED:
		wr_uint(&w, (uint32_t)m->u.failed.status, 4);
		wr_str(&w, m->u.failed.err, sizeof(m->u.failed.err));
		break;
	case TOKWIRE_REPLY:
		wr_uint(&w, (uint32_t)m->u.reply.status, 4);
		wr_bytes(&w, m->u.reply.out, m->u.reply.out_len,
		    sizeof(m->u.reply.out));
		wr_str(&w, m->u.reply.key_id_out,
		    sizeof(m->u.reply.key_id_out));
		wr_str(&w, m->u.reply.detail, sizeof(m->u.reply.detail));
		wr_uint(&w, m->u.reply.started, 8);
		wr_uint(&w, m->u.reply.finished, 8);
		break;
	case TOKWIRE_STATS:
		wr_uint(&w, m->u.stats.workers, 4);
		wr_uint(&w, m->u.stats.busy, 4);
		wr_uint(&w, m->u.stats.inflight, 4);
		break;
	case TOKWIRE_CALLS:
		if (m->u.calls.n > TOKWIRE_CALLS_MAX) {
			w.err = -1;
			break;
		}
		wr_uint(&w, m->u.calls.n, 1);
		for (i = 0; i < m->u.calls.n; i++) {
			wr_str(&w, m->u.calls.c[i].fn,
			    sizeof(m->u.calls.c[i].fn));
			wr_uint(&w, m->u.calls.c[i].rv, 8);
			wr_uint(&w, m->u.calls.c[i].ns, 8);
		}
		break;
	default:
		w.err = -1;
	}
	if (w.err != 0)
		return 0;
	len = (size_t)(w.p - buf);
	if (len - 4 > TOKWIRE_MAX_BODY)
		return 0;
	buf[0] = (uint8_t)((len - 4) >> 24);
	buf[1] = (uint8_t)((len - 4) >> 16);
	buf[2] = (uint8_t)((len - 4) >> 8);
	buf[3] = (uint8_t)(len - 4);
	return len;
}

const char *
tokwire_type_name(int type)
{
	switch (type) {
	case TOKWIRE_REQ:
		return "REQ";
	case TOKWIRE_CANCEL:
		return "CANCEL";
	case TOKWIRE_READY:
		return "READY";
	case TOKWIRE_FAILED:
		return "FAILED";
	case TOKWIRE_REPLY:
		return "REPLY";
	case TOKWIRE_STATS:
		return "STATS";
	case TOKWIRE_CALLS:
		return "CALLS";
	}
	return "unknown";
}

const char *
tokwire_strerror(int e)
{
	switch (e) {
	case 0:
		return "success";
	case TOKWIRE_E_SHORT:
		return "truncated message";
	case TOKWIRE_E_BIG:
		return "message or field over its limit";
	case TOKWIRE_E_VERSION:
		return "unknown protocol version";
	case TOKWIRE_E_TYPE:
		return "unexpected message type";
	case TOKWIRE_E_FIELD:
		return "bad field value";
	case TOKWIRE_E_TRAILING:
		return "bytes after the message";
	}
	return "unknown protocol error";
}
