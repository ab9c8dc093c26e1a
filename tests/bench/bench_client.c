/*
 * bench_client: the bench's client side (bench.h): latency samples and
 * their percentiles, distinct plaintexts and ciphertext sets, nghttp2
 * client connections fed from one poll loop, building and checking every
 * request and answer, and lanes (a kind of call kept C deep in flight).
 */
#include "tests/bench/bench.h"

/* ---- latency samples ---- */

static void
lat_add(struct lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 1024;
		if ((l->v = realloc(l->v, l->cap * sizeof(*l->v))) == NULL)
			die("out of memory");
	}
	l->v[l->n++] = ns;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (per mille) of sorted v, in µs. */
static double
pct_us(const uint64_t *v, size_t n, unsigned pm)
{
	size_t k;

	if (n == 0)
		return NAN;
	k = (pm * n + 999) / 1000;
	if (k == 0)
		k = 1;
	return (double)v[k - 1] / 1e3;
}

void
stats_of(uint64_t *v, size_t n, struct stats *s)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	s->n = n;
	s->p50 = pct_us(v, n, 500);
	s->p99 = pct_us(v, n, 990);
	s->max = n ? (double)v[n - 1] / 1e3 : NAN;
}

static void
parts_add(struct parts *p, const struct part *x)
{
	if (p->n == p->cap) {
		p->cap = p->cap ? p->cap * 2 : 256;
		if ((p->v = realloc(p->v, p->cap * sizeof(*p->v))) == NULL)
			die("out of memory");
	}
	p->v[p->n++] = *x;
}

static int
cmp_part(const void *a, const void *b)
{
	uint64_t x = ((const struct part *)a)->total;
	uint64_t y = ((const struct part *)b)->total;

	return x < y ? -1 : x > y;
}

/* Mean of each part (µs) over the slowest 1% of requests (at least one). */
void
parts_tail(struct parts *p, double out[3])
{
	size_t i, k;

	out[0] = out[1] = out[2] = NAN;
	if (p->n == 0)
		return;
	qsort(p->v, p->n, sizeof(*p->v), cmp_part);
	k = (p->n + 99) / 100;
	out[0] = out[1] = out[2] = 0;
	for (i = p->n - k; i < p->n; i++) {
		out[0] += (double)p->v[i].pre / 1e3;
		out[1] += (double)p->v[i].mid / 1e3;
		out[2] += (double)p->v[i].post / 1e3;
	}
	for (i = 0; i < 3; i++)
		out[i] /= (double)k;
}

/* ---- request data: distinct plaintexts, ciphertext sets ---- */

static uint64_t
splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Plaintext i of the set with this seed: the first 8 bytes make it
 * distinct from every other i, the rest look random. */
void
make_pt(uint64_t seed, size_t i, uint8_t pt[PT_LEN])
{
	uint64_t s = seed ^ ((uint64_t)i << 1), w = seed ^ (uint64_t)i;
	int k;

	memcpy(pt, &w, 8);
	for (k = 1; k < PT_LEN / 8; k++) {
		w = splitmix64(&s);
		memcpy(pt + 8 * k, &w, 8);
	}
}

struct ctset *
ctset_new(size_t n)
{
	struct ctset *s = xcalloc(1, sizeof(*s));
	uint64_t seed;

	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = now_ns() * 0x9e3779b97f4a7c15ull;
	s->seed = seed;
	s->n = n;
	s->b = xcalloc(n, sizeof(*s->b));
	return s;
}

void
ctset_free(struct ctset *s)
{
	size_t i, j;

	if (s == NULL)
		return;
	for (i = 0; i < s->n; i++) {
		free(s->b[i].ct);
		for (j = 0; j < s->b[i].nann; j++) {
			free(s->b[i].ann[j].key);
			free(s->b[i].ann[j].val);
		}
		free(s->b[i].ann);
	}
	free(s->b);
	free(s);
}

static uint8_t *
dup_bytes(const void *p, size_t n)
{
	uint8_t *d = xcalloc(1, n);

	memcpy(d, p, n);
	return d;
}

/* ---- HTTP/2 client ---- */

static const char *const kind_path[K_N] = {
	"/v2.KeyManagementService/Status",
	"/v2.KeyManagementService/Encrypt",
	"/v2.KeyManagementService/Decrypt",
	"/v1beta1.KeyManagementService/Version",
	"/v1beta1.KeyManagementService/Encrypt",
	"/v1beta1.KeyManagementService/Decrypt",
};

struct slot;

static nghttp2_session_callbacks *g_cbs;
static char g_timeout_hdr[16];

static int
parse_int(const uint8_t *v, size_t len)
{
	int n = 0;
	size_t i;

	if (len == 0 || len > 6)
		return -2;
	for (i = 0; i < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -2;
		n = n * 10 + (v[i] - '0');
	}
	return n;
}

static int
on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
    void *ud)
{
	struct slot *sl;

	if (f->hd.type != NGHTTP2_HEADERS ||
	    (sl = nghttp2_session_get_stream_user_data(s,
	    f->hd.stream_id)) == NULL)
		return 0;
	if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
		sl->http_status = parse_int(value, valuelen);
	} else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
		sl->grpc_status = parse_int(value, valuelen);
	} else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
		snprintf(sl->msg, sizeof(sl->msg), "%.*s",
		    (int)(valuelen < 120 ? valuelen : 120), (const char *)value);
	}
	return 0;
}

static int
on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
    size_t len, void *ud)
{
	struct slot *sl = nghttp2_session_get_stream_user_data(s, sid);

	if (sl == NULL)
		return 0;
	if (len > RESP_MAX - sl->rlen) {
		sl->too_big = 1;
		return 0;
	}
	if (sl->rlen + len > sl->rcap) {
		sl->rcap = sl->rlen + len < 256 ? 256 : 2 * (sl->rlen + len);
		if ((sl->resp = realloc(sl->resp, sl->rcap)) == NULL)
			die("out of memory");
	}
	memcpy(sl->resp + sl->rlen, data, len);
	sl->rlen += len;
	return 0;
}

static int
on_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud)
{
	struct conn *c = ud;
	struct slot *sl = nghttp2_session_get_stream_user_data(s, sid);

	if (sl == NULL)
		return 0;
	sl->t1 = now_ns();
	sl->t_read = c->t_recv;
	sl->rst = error_code;
	sl->next_done = NULL;
	if (c->done_tail != NULL)
		c->done_tail->next_done = sl;
	else
		c->done_head = sl;
	c->done_tail = sl;
	return 0;
}

static ssize_t
read_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	struct slot *sl = src->ptr;
	size_t n = sl->blen - sl->boff;

	if (n > len)
		n = len;
	memcpy(buf, sl->body + sl->boff, n);
	sl->boff += n;
	if (sl->boff == sl->blen) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		if (sl->lane->interval_ns > 0 &&
		    sl->conn->nunsent < MAX_PACED)
			sl->conn->unsent[sl->conn->nunsent++] = sl;
	}
	return (ssize_t)n;
}

void
callbacks_init(void)
{
	if (nghttp2_session_callbacks_new(&g_cbs) != 0)
		die("out of memory");
	nghttp2_session_callbacks_set_on_header_callback(g_cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_cbs,
	    on_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(g_cbs, on_close);
	snprintf(g_timeout_hdr, sizeof(g_timeout_hdr), "%uS",
	    opt.grpc_timeout_s);
}

/* One connect attempt. 0, or -1 with errno (ENOENT, ECONNREFUSED while the
 * daemon is still starting). */
int
conn_open(struct conn *c, const char *path)
{
	struct sockaddr_un sa;
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024 },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20 },
	};
	int fd, e;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	/* A unix connect does not wait for the server: blocking is fine. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == -1)
		die("fcntl: %s", strerror(errno));
	c->fd = fd;
	if (nghttp2_session_client_new(&c->h2, g_cbs, c) != 0)
		die("out of memory");
	if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv,
	    sizeof(iv) / sizeof(iv[0])) != 0 ||
	    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
	    1 << 24) != 0)
		die("nghttp2 settings failed");
	return 0;
}

static void
conn_close(struct conn *c)
{
	if (c->h2 != NULL)
		nghttp2_session_del(c->h2);
	c->h2 = NULL;
	if (c->fd != -1)
		close(c->fd);
	c->fd = -1;
	free(c->pend);
	c->pend = NULL;
	c->pend_off = c->pend_len = c->pend_cap = 0;
}

/* Everything produced is written: so are the paced requests in it. */
static void
conn_stamp_sent(struct conn *c)
{
	uint64_t now;
	size_t i;

	if (c->nunsent == 0)
		return;
	now = now_ns();
	for (i = 0; i < c->nunsent; i++)
		c->unsent[i]->t_sent = now;
	c->nunsent = 0;
}

/* Sends what nghttp2 has, batching it into one write. -1: connection lost. */
static int
conn_flush(struct conn *c)
{
	const uint8_t *data;
	ssize_t n, w;

	for (;;) {
		while (c->pend_len - c->pend_off < 65536) {
			if ((n = nghttp2_session_mem_send(c->h2, &data)) < 0) {
				snprintf(c->why, sizeof(c->why), "nghttp2: %s",
				    nghttp2_strerror((int)n));
				return -1;
			}
			if (n == 0)
				break;
			if (c->pend_off > 0) {
				memmove(c->pend, c->pend + c->pend_off,
				    c->pend_len - c->pend_off);
				c->pend_len -= c->pend_off;
				c->pend_off = 0;
			}
			if (c->pend_len + (size_t)n > c->pend_cap) {
				c->pend_cap = 2 * (c->pend_len + (size_t)n);
				if ((c->pend = realloc(c->pend,
				    c->pend_cap)) == NULL)
					die("out of memory");
			}
			memcpy(c->pend + c->pend_len, data, (size_t)n);
			c->pend_len += (size_t)n;
		}
		if (c->pend_off == c->pend_len) {
			conn_stamp_sent(c);
			return 0;
		}
		w = send(c->fd, c->pend + c->pend_off,
		    c->pend_len - c->pend_off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			snprintf(c->why, sizeof(c->why), "send: %s",
			    strerror(errno));
			return -1;
		}
		c->pend_off += (size_t)w;
		if (c->pend_off < c->pend_len)
			return 0;	/* socket full: wait for POLLOUT */
		c->pend_off = c->pend_len = 0;
	}
}

static int
conn_want_write(struct conn *c)
{
	return c->pend_len > c->pend_off || nghttp2_session_want_write(c->h2);
}

/* Feeds what the socket has to nghttp2. -1: connection lost. */
static int
conn_read(struct conn *c)
{
	uint8_t buf[65536];
	ssize_t r, n;
	int i;

	for (i = 0; i < 16; i++) {
		r = recv(c->fd, buf, sizeof(buf), 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			snprintf(c->why, sizeof(c->why), "recv: %s",
			    strerror(errno));
			return -1;
		}
		if (r == 0) {
			snprintf(c->why, sizeof(c->why), "the daemon closed "
			    "the connection");
			return -1;
		}
		c->t_recv = now_ns();
		if ((n = nghttp2_session_mem_recv(c->h2, buf,
		    (size_t)r)) < 0) {
			snprintf(c->why, sizeof(c->why), "nghttp2: %s",
			    nghttp2_strerror((int)n));
			return -1;
		}
		if ((size_t)r < sizeof(buf))
			return 0;
	}
	return 0;
}

/* n connections to the server on path (the daemon's socket, the echo's). */
void
client_open_path(struct client *cl, unsigned n, const char *path)
{
	unsigned i;

	memset(cl, 0, sizeof(*cl));
	for (i = 0; i < n; i++) {
		if (conn_open(&cl->c[i], path) != 0)
			die_run("cannot connect to %s: %s", path,
			    strerror(errno));
		cl->n++;
	}
}

/* n connections to the daemon. */
void
client_open(struct client *cl, unsigned n)
{
	client_open_path(cl, n, g_sock);
}

void
client_close(struct client *cl)
{
	unsigned i;

	for (i = 0; i < cl->n; i++)
		conn_close(&cl->c[i]);
	cl->n = 0;
}

/* ---- requests and answers ---- */

static void
make_uid(char *uid, size_t cap, size_t idx)
{
	/* The apiserver sends a UUID per request; same length here. */
	snprintf(uid, cap, "b3nc4000-0000-4000-8000-%012zx", idx);
}

/* Frames the packed message in sl->body. */
static void
pack_body(struct slot *sl, const ProtobufCMessage *m)
{
	size_t len = protobuf_c_message_get_packed_size(m);

	if (len > BODY_MAX - 5)
		die("request of %zu bytes does not fit the bench's buffer", len);
	protobuf_c_message_pack(m, sl->body + 5);
	sl->body[0] = 0;
	sl->body[1] = (uint8_t)(len >> 24);
	sl->body[2] = (uint8_t)(len >> 16);
	sl->body[3] = (uint8_t)(len >> 8);
	sl->body[4] = (uint8_t)len;
	sl->blen = len + 5;
	sl->boff = 0;
}

static void
build_request(struct slot *sl, size_t idx)
{
	struct lane *ln = sl->lane;
	uint8_t pt[PT_LEN];
	char uid[40];
	static char v1ver[] = "v1beta1";

	make_uid(uid, sizeof(uid), idx);
	switch (ln->kind) {
	case K_STATUS: {
		V2__StatusRequest r = V2__STATUS_REQUEST__INIT;
		pack_body(sl, &r.base);
		break;
	}
	case K_V2ENC: {
		V2__EncryptRequest r = V2__ENCRYPT_REQUEST__INIT;
		make_pt(ln->pt_seed, idx, pt);
		r.plaintext.data = pt;
		r.plaintext.len = PT_LEN;
		r.uid = uid;
		pack_body(sl, &r.base);
		break;
	}
	case K_V2DEC: {
		V2__DecryptRequest r = V2__DECRYPT_REQUEST__INIT;
		V2__DecryptRequest__AnnotationsEntry e[MAX_ANN], *ep[MAX_ANN];
		const struct blob *b = &ln->in->b[idx % ln->in->n];
		size_t i;

		for (i = 0; i < b->nann; i++) {
			V2__DecryptRequest__AnnotationsEntry z =
			    V2__DECRYPT_REQUEST__ANNOTATIONS_ENTRY__INIT;
			e[i] = z;
			e[i].key = b->ann[i].key;
			e[i].value.data = b->ann[i].val;
			e[i].value.len = b->ann[i].vlen;
			ep[i] = &e[i];
		}
		r.ciphertext.data = b->ct;
		r.ciphertext.len = b->len;
		r.uid = uid;
		r.key_id = g_key_id;
		r.n_annotations = b->nann;
		r.annotations = b->nann ? ep : NULL;
		pack_body(sl, &r.base);
		break;
	}
	case K_V1VER: {
		V1beta1__VersionRequest r = V1BETA1__VERSION_REQUEST__INIT;
		r.version = v1ver;
		pack_body(sl, &r.base);
		break;
	}
	case K_V1ENC: {
		V1beta1__EncryptRequest r = V1BETA1__ENCRYPT_REQUEST__INIT;
		make_pt(ln->pt_seed, idx, pt);
		r.version = v1ver;
		r.plain.data = pt;
		r.plain.len = PT_LEN;
		pack_body(sl, &r.base);
		break;
	}
	case K_V1DEC: {
		V1beta1__DecryptRequest r = V1BETA1__DECRYPT_REQUEST__INIT;
		const struct blob *b = &ln->in->b[idx % ln->in->n];
		r.version = v1ver;
		r.cipher.data = b->ct;
		r.cipher.len = b->len;
		pack_body(sl, &r.base);
		break;
	}
	default:
		die("bad lane kind");
	}
}

static int
slot_submit(struct slot *sl)
{
	struct lane *ln = sl->lane;
	nghttp2_nv nva[] = {
		NV(":method", "POST"),
		NV(":scheme", "http"),
		NV(":authority", "localhost"),
		NV(":path", kind_path[ln->kind]),
		NV("content-type", "application/grpc"),
		NV("te", "trailers"),
		NV("grpc-timeout", g_timeout_hdr),
		NV("user-agent", "p11kms-bench"),
	};
	nghttp2_data_provider dp;
	int32_t sid;

	sl->idx = ln->first + ln->issued++;
	build_request(sl, sl->idx);
	sl->rlen = 0;
	sl->http_status = sl->grpc_status = -1;
	sl->too_big = 0;
	sl->rst = 0;
	sl->msg[0] = '\0';
	dp.source.ptr = sl;
	dp.read_callback = read_body;
	sl->t_sent = sl->t_read = 0;
	sl->t0 = now_ns();
	if (ln->t_first == 0)
		ln->t_first = sl->t0;
	sid = nghttp2_submit_request(sl->conn->h2, NULL, nva,
	    sizeof(nva) / sizeof(nva[0]), &dp, sl);
	if (sid < 0) {
		snprintf(sl->conn->why, sizeof(sl->conn->why),
		    "nghttp2_submit_request: %s", nghttp2_strerror(sid));
		return -1;
	}
	sl->busy = 1;
	return 0;
}

static int
store_ann(struct blob *b, V2__EncryptResponse *r, size_t idx)
{
	size_t i;

	if (r->n_annotations > MAX_ANN) {
		wrong(idx, "%zu annotations; the bench keeps at most %d",
		    r->n_annotations, MAX_ANN);
		return -1;
	}
	b->ann = xcalloc(r->n_annotations, sizeof(*b->ann));
	for (i = 0; i < r->n_annotations; i++) {
		const V2__EncryptResponse__AnnotationsEntry *e =
		    r->annotations[i];
		if (e->key == NULL || e->key[0] == '\0' ||
		    strchr(e->key, '.') == NULL) {
			wrong(idx, "annotation key '%.60s' is not a domain "
			    "name", e->key ? e->key : "");
			return -1;
		}
		b->ann[i].key = strdup(e->key);
		b->ann[i].val = dup_bytes(e->value.data, e->value.len);
		b->ann[i].vlen = e->value.len;
		if (b->ann[i].key == NULL)
			die("out of memory");
		b->nann++;
	}
	return 0;
}

static int
check_plain(size_t idx, const struct ctset *in, const uint8_t *p, size_t len)
{
	uint8_t want[PT_LEN];

	make_pt(in->seed, idx % in->n, want);
	if (len != PT_LEN || memcmp(p, want, PT_LEN) != 0) {
		wrong(idx, "decrypted plaintext (%zu bytes) is not the one "
		    "sent to Encrypt", len);
		return -1;
	}
	return 0;
}

/* Checks one answer's message; stores ciphertexts. 0 or -1 (reported). */
static int
check_answer(struct slot *sl, const uint8_t *msg, size_t mlen)
{
	struct lane *ln = sl->lane;
	size_t idx = sl->idx;
	int ret = -1;

	switch (ln->kind) {
	case K_STATUS: {
		V2__StatusResponse *r = v2__status_response__unpack(NULL, mlen,
		    msg);
		if (r == NULL) {
			wrong(idx, "StatusResponse does not parse");
			break;
		}
		if (strcmp(r->version, "v2") != 0)
			wrong(idx, "version '%.40s', want v2", r->version);
		else if (strcmp(r->healthz, "ok") != 0)
			wrong(idx, "healthz '%.200s'", r->healthz);
		else if (r->key_id[0] == '\0' ||
		    strlen(r->key_id) >= sizeof(g_key_id))
			wrong(idx, "key_id empty or too long");
		else if (g_key_id[0] != '\0' &&
		    strcmp(r->key_id, g_key_id) != 0)
			wrong(idx, "key_id changed: %.80s, was %s", r->key_id,
			    g_key_id);
		else {
			if (g_key_id[0] == '\0')
				strcpy(g_key_id, r->key_id);
			ret = 0;
		}
		v2__status_response__free_unpacked(r, NULL);
		break;
	}
	case K_V2ENC: {
		V2__EncryptResponse *r = v2__encrypt_response__unpack(NULL,
		    mlen, msg);
		if (r == NULL) {
			wrong(idx, "EncryptResponse does not parse");
			break;
		}
		if (r->ciphertext.len == 0 || r->ciphertext.len > 1024)
			wrong(idx, "ciphertext of %zu bytes (1..1024)",
			    r->ciphertext.len);
		else if (strcmp(r->key_id, g_key_id) != 0)
			wrong(idx, "Encrypt key_id %.80s is not Status's %s",
			    r->key_id, g_key_id);
		else if (ln->out == NULL)
			ret = 0;
		else if (idx < ln->out->n) {
			struct blob *b = &ln->out->b[idx];
			b->ct = dup_bytes(r->ciphertext.data,
			    r->ciphertext.len);
			b->len = r->ciphertext.len;
			ret = store_ann(b, r, idx);
		}
		v2__encrypt_response__free_unpacked(r, NULL);
		break;
	}
	case K_V2DEC: {
		V2__DecryptResponse *r = v2__decrypt_response__unpack(NULL,
		    mlen, msg);
		if (r == NULL) {
			wrong(idx, "DecryptResponse does not parse");
			break;
		}
		ret = check_plain(idx, ln->in, r->plaintext.data,
		    r->plaintext.len);
		v2__decrypt_response__free_unpacked(r, NULL);
		break;
	}
	case K_V1VER: {
		V1beta1__VersionResponse *r =
		    v1beta1__version_response__unpack(NULL, mlen, msg);
		if (r == NULL) {
			wrong(idx, "VersionResponse does not parse");
			break;
		}
		if (strcmp(r->version, "v1beta1") != 0)
			wrong(idx, "version '%.40s', want v1beta1", r->version);
		else
			ret = 0;
		v1beta1__version_response__free_unpacked(r, NULL);
		break;
	}
	case K_V1ENC: {
		V1beta1__EncryptResponse *r =
		    v1beta1__encrypt_response__unpack(NULL, mlen, msg);
		if (r == NULL) {
			wrong(idx, "v1 EncryptResponse does not parse");
			break;
		}
		if (r->cipher.len == 0 || r->cipher.len > 1024)
			wrong(idx, "v1 cipher of %zu bytes (1..1024)",
			    r->cipher.len);
		else {
			if (ln->out != NULL && idx < ln->out->n) {
				ln->out->b[idx].ct = dup_bytes(r->cipher.data,
				    r->cipher.len);
				ln->out->b[idx].len = r->cipher.len;
			}
			ret = 0;
		}
		v1beta1__encrypt_response__free_unpacked(r, NULL);
		break;
	}
	case K_V1DEC: {
		V1beta1__DecryptResponse *r =
		    v1beta1__decrypt_response__unpack(NULL, mlen, msg);
		if (r == NULL) {
			wrong(idx, "v1 DecryptResponse does not parse");
			break;
		}
		ret = check_plain(idx, ln->in, r->plain.data, r->plain.len);
		v1beta1__decrypt_response__free_unpacked(r, NULL);
		break;
	}
	default:
		break;
	}
	return ret;
}

/* A stream closed: record its latency and check everything about it. */
static void
slot_finish(struct slot *sl)
{
	struct lane *ln = sl->lane;
	size_t mlen;

	sl->busy = 0;
	ln->done++;
	if (sl->t1 > ln->t_last)
		ln->t_last = sl->t1;
	lat_add(&ln->lat, sl->t1 - sl->t0);
	if (ln->interval_ns > 0 && sl->t_sent >= sl->t0 &&
	    sl->t_read >= sl->t_sent && sl->t1 >= sl->t_read) {
		struct part pt = { sl->t1 - sl->t0, sl->t_sent - sl->t0,
		    sl->t_read - sl->t_sent, sl->t1 - sl->t_read };

		parts_add(&ln->parts, &pt);
	}
	if (sl->rst != 0) {
		wrong(sl->idx, "stream reset (%s)",
		    nghttp2_http2_strerror(sl->rst));
		goto fail;
	}
	if (sl->http_status != 200) {
		wrong(sl->idx, "HTTP :status %d", sl->http_status);
		goto fail;
	}
	if (sl->grpc_status < 0) {
		wrong(sl->idx, "no grpc-status in the trailers");
		goto fail;
	}
	if (sl->grpc_status != 0) {
		if (ln->probe && sl->grpc_status == GRPC_UNIMPLEMENTED) {
			ln->unimplemented = 1;
			return;
		}
		wrong(sl->idx, "grpc-status %d: %s", sl->grpc_status, sl->msg);
		goto fail;
	}
	if (sl->too_big || sl->rlen < 5) {
		wrong(sl->idx, "response body of %zu bytes", sl->rlen);
		goto fail;
	}
	mlen = (size_t)sl->resp[1] << 24 | (size_t)sl->resp[2] << 16 |
	    (size_t)sl->resp[3] << 8 | sl->resp[4];
	if (sl->resp[0] != 0 || mlen != sl->rlen - 5) {
		wrong(sl->idx, "bad gRPC framing (flag %u, length %zu of %zu)",
		    sl->resp[0], mlen, sl->rlen - 5);
		goto fail;
	}
	if (check_answer(sl, sl->resp + 5, mlen) == 0)
		return;
 fail:
	ln->failed++;
}

static int
lane_counted_open(struct lane *const *lanes, size_t nl)
{
	size_t i;

	for (i = 0; i < nl; i++)
		if (lanes[i]->total > 0 && lanes[i]->done < lanes[i]->total)
			return 1;
	return 0;
}

static int
lane_wants_more(struct lane *ln, struct lane *const *lanes, size_t nl)
{
	if (g_stop)
		return 0;
	if (ln->total > 0)
		return ln->issued < ln->total;
	return lane_counted_open(lanes, nl);
}

/*
 * Runs lanes to completion over the client's connections: each lane keeps
 * conc requests in flight until it has sent total (background lanes until
 * every counted lane is done); a paced lane (interval_ns) sends each slot's
 * next request interval_ns after its previous one instead of at once.
 * Returns 0, or -1 when a connection was lost or requests got no answer
 * for STALL_NS (message on stderr).
 */
int
run_lanes(struct client *cl, struct lane *const *lanes, size_t nl)
{
	struct pollfd pfd[MAX_CONNS];
	struct timespec ts;
	uint64_t now, next, last = now_ns();
	size_t i, inflight, waiting;
	unsigned j, k;
	int r, ret = -1;

	for (i = 0; i < nl; i++) {
		struct lane *ln = lanes[i];
		ln->slots = xcalloc(ln->conc, sizeof(*ln->slots));
		for (j = 0; j < ln->conc; j++) {
			ln->slots[j].lane = ln;
			ln->slots[j].conn = &cl->c[ln->conn_fixed >= 0 ?
			    (unsigned)ln->conn_fixed % cl->n : j % cl->n];
			ln->slots[j].waiting = 1;	/* due at once */
		}
	}
	for (;;) {
		/* Send what is due; find when the next paced one is. */
		now = now_ns();
		next = now + NS_PER_S / 10;
		inflight = waiting = 0;
		for (i = 0; i < nl; i++)
			for (j = 0; j < lanes[i]->conc; j++) {
				struct slot *sl = &lanes[i]->slots[j];

				if (sl->waiting &&
				    !lane_wants_more(sl->lane, lanes, nl))
					sl->waiting = 0;
				if (sl->waiting && sl->due <= now) {
					sl->waiting = 0;
					if (slot_submit(sl) != 0)
						goto lost;
				}
				if (sl->waiting) {
					waiting++;
					if (sl->due < next)
						next = sl->due;
				}
				inflight += sl->busy;
			}
		for (k = 0; k < cl->n; k++)
			if (conn_flush(&cl->c[k]) != 0)
				goto lost;
		if (inflight + waiting == 0)
			break;
		if (g_stop) {
			fprintf(stderr, "p11kms-bench: interrupted\n");
			goto out;
		}
		for (k = 0; k < cl->n; k++) {
			pfd[k].fd = cl->c[k].fd;
			pfd[k].events = POLLIN |
			    (conn_want_write(&cl->c[k]) ? POLLOUT : 0);
			pfd[k].revents = 0;
		}
		next = next > now ? next - now : 0;
		ts.tv_sec = (time_t)(next / NS_PER_S);
		ts.tv_nsec = (long)(next % NS_PER_S);
		r = ppoll(pfd, cl->n, &ts, NULL);
		if (r < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (r <= 0) {
			if (inflight > 0 && now_ns() - last > STALL_NS) {
				fprintf(stderr, "p11kms-bench: %s: %zu requests "
				    "got no answer for %llu s\n", g_scen,
				    inflight, STALL_NS / NS_PER_S);
				goto out;
			}
			continue;
		}
		for (k = 0; k < cl->n; k++) {
			struct conn *c = &cl->c[k];
			struct slot *sl;

			if ((pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) &&
			    conn_read(c) != 0)
				goto lost;
			while ((sl = c->done_head) != NULL) {
				if ((c->done_head = sl->next_done) == NULL)
					c->done_tail = NULL;
				last = now_ns();
				slot_finish(sl);
				if (!lane_wants_more(sl->lane, lanes, nl))
					continue;
				if (sl->lane->interval_ns > 0) {
					sl->waiting = 1;
					sl->due = sl->t0 + sl->lane->interval_ns;
				} else if (slot_submit(sl) != 0) {
					goto lost;
				}
			}
		}
	}
	ret = 0;
	goto out;
 lost:
	for (k = 0; k < cl->n; k++)
		if (cl->c[k].why[0] != '\0')
			fprintf(stderr, "p11kms-bench: %s: connection %u: %s\n",
			    g_scen, k, cl->c[k].why);
 out:
	for (k = 0; k < cl->n; k++)
		cl->c[k].nunsent = 0;	/* those slots are freed below */
	for (i = 0; i < nl; i++) {
		for (j = 0; j < lanes[i]->conc; j++)
			free(lanes[i]->slots[j].resp);
		free(lanes[i]->slots);
		lanes[i]->slots = NULL;
	}
	return ret;
}

void
lane_init(struct lane *ln, enum kind k, unsigned conc, size_t total)
{
	memset(ln, 0, sizeof(*ln));
	ln->kind = k;
	ln->conc = conc;
	ln->total = total;
	ln->conn_fixed = -1;
	if (getrandom(&ln->pt_seed, sizeof(ln->pt_seed), 0) !=
	    sizeof(ln->pt_seed))
		ln->pt_seed = now_ns();
}

/* Status beside a load, on the load's connection (the first): one in
 * flight, one every --status-interval-us, as long as the load runs. */
void
status_lane_init(struct lane *ln)
{
	lane_init(ln, K_STATUS, 1, 0);
	ln->conn_fixed = 0;
	ln->interval_ns = (uint64_t)opt.status_interval_us * 1000;
}

/* "every 1ms" or "c=1", for labels. */
const char *
status_pace(void)
{
	static char buf[32];

	if (opt.status_interval_us == 0)
		return "c=1";
	snprintf(buf, sizeof(buf), "every %gms",
	    opt.status_interval_us / 1000.0);
	return buf;
}

void
lane_free(struct lane *ln)
{
	free(ln->lat.v);
	ln->lat.v = NULL;
	free(ln->parts.v);
	ln->parts.v = NULL;
}
