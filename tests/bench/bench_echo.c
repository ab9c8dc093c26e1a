/*
 * bench_echo: the socket echo baseline (bench.h), the floor under a served
 * request. A child of the bench, forked while the bench has no thread,
 * serves HTTP/2 on a unix socket in the temp dir: one nghttp2 server
 * session per connection, fed from one poll loop with mem_recv/mem_send as
 * the daemon's loop does. Each v2 Encrypt or Decrypt request is read,
 * parsed (frames, HPACK, the gRPC frame, the protobuf request unpacked and
 * checked) and answered in the same loop turn with a fixed, valid reply:
 * HEADERS (:status 200, content-type), one DATA message, trailers
 * grpc-status 0, written with one send. No token, no thread hand-off.
 *
 * The replies have the daemon's sizes: the Encrypt reply is an Encrypt
 * answer the daemon gave (its ciphertext, key_id and annotations), the
 * Decrypt reply that ciphertext's plaintext, and the bench's echo Decrypt
 * lanes send that ciphertext (g_echo_in, one blob), so the client checks
 * the echo's answers as strictly as the daemon's. Anything else gets
 * grpc-status 12 (UNIMPLEMENTED), a request that does not parse 3
 * (INVALID_ARGUMENT): the bench then counts a wrong answer.
 *
 * The child never returns into the bench's code: it must not run the
 * bench's atexit cleanup (which stops the daemon and removes the temp
 * dir), so it leaves with _exit and reports errors itself.
 */
#include "tests/bench/bench.h"

#define ECHO_CONNS	8
#define ECHO_RESP_MAX	2048

char g_echo_sock[100];
volatile pid_t g_echo = -1;
struct ctset *g_echo_in;
static clockid_t g_eclk;
static int g_eclk_ok;

/* ---- the child ---- */

struct estream {
	int kind;		/* K_V2ENC, K_V2DEC, or -1: not served */
	int bad_type;		/* content-type is not application/grpc */
	uint8_t body[BODY_MAX];
	size_t blen;
	int too_big;
	uint8_t resp[ECHO_RESP_MAX];
	size_t rlen, roff;
};

struct econn {
	int fd;
	nghttp2_session *h2;
	uint8_t *out;
	size_t out_off, out_len, out_cap;
};

static uint8_t e_enc[ECHO_RESP_MAX], e_dec[ECHO_RESP_MAX];
static size_t e_enc_len, e_dec_len;	/* packed messages, no gRPC frame */

static void __attribute__((noreturn))
echo_fail(const char *what)
{
	char buf[200];
	int n;

	n = snprintf(buf, sizeof(buf), "p11kms-bench: echo server: %s\n",
	    what);
	if (n > 0)
		(void)!write(2, buf, (size_t)n < sizeof(buf) ? (size_t)n :
		    sizeof(buf) - 1);
	_exit(2);
}

static int
e_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct estream *st;

	if (f->hd.type != NGHTTP2_HEADERS ||
	    f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	if ((st = calloc(1, sizeof(*st))) == NULL)
		echo_fail("out of memory");
	st->kind = -1;
	if (nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st) != 0)
		free(st);
	return 0;
}

static int
e_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
    void *ud)
{
	static const char enc[] = "/v2.KeyManagementService/Encrypt";
	static const char dec[] = "/v2.KeyManagementService/Decrypt";
	static const char ct[] = "application/grpc";
	struct estream *st;

	if (f->hd.type != NGHTTP2_HEADERS || (st =
	    nghttp2_session_get_stream_user_data(s, f->hd.stream_id)) == NULL)
		return 0;
	if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
		if (valuelen == sizeof(enc) - 1 &&
		    memcmp(value, enc, valuelen) == 0)
			st->kind = K_V2ENC;
		else if (valuelen == sizeof(dec) - 1 &&
		    memcmp(value, dec, valuelen) == 0)
			st->kind = K_V2DEC;
	} else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
		st->bad_type = valuelen < sizeof(ct) - 1 ||
		    memcmp(value, ct, sizeof(ct) - 1) != 0;
	}
	return 0;
}

static int
e_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
    size_t len, void *ud)
{
	struct estream *st = nghttp2_session_get_stream_user_data(s, sid);

	if (st == NULL)
		return 0;
	if (len > sizeof(st->body) - st->blen) {
		st->too_big = 1;
		return 0;
	}
	memcpy(st->body + st->blen, data, len);
	st->blen += len;
	return 0;
}

static ssize_t
e_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	nghttp2_nv trailer[] = { NV("grpc-status", "0") };
	struct estream *st = src->ptr;
	size_t n = st->rlen - st->roff;

	if (n > len)
		n = len;
	memcpy(buf, st->resp + st->roff, n);
	st->roff += n;
	if (st->roff == st->rlen) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		/* The trailers carry END_STREAM, as the daemon sends them. */
		if (nghttp2_submit_trailer(s, sid, trailer, 1) == 0)
			*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
	}
	return (ssize_t)n;
}

/* Trailers-only answer with a gRPC error code (a one-digit or two-digit
 * string): the bench reports it as a wrong answer. */
static void
e_refuse(nghttp2_session *s, int32_t sid, const char *code)
{
	nghttp2_nv hdr[] = {
		NV(":status", "200"),
		NV("content-type", "application/grpc"),
		NV("grpc-status", code),
	};

	(void)nghttp2_submit_response(s, sid, hdr, sizeof(hdr) /
	    sizeof(hdr[0]), NULL);
}

/* The request is complete: parse it as the daemon would, answer at once. */
static void
e_answer(nghttp2_session *s, int32_t sid, struct estream *st)
{
	nghttp2_nv hdr[] = {
		NV(":status", "200"),
		NV("content-type", "application/grpc"),
	};
	nghttp2_data_provider prd;
	const uint8_t *msg = st->body + 5;
	size_t mlen, n;
	int ok = 0;

	if (st->kind < 0 || st->bad_type) {
		e_refuse(s, sid, "12");
		return;
	}
	mlen = st->blen >= 5 ? (size_t)st->body[1] << 24 |
	    (size_t)st->body[2] << 16 | (size_t)st->body[3] << 8 |
	    st->body[4] : 0;
	if (st->too_big || st->blen < 5 || st->body[0] != 0 ||
	    mlen != st->blen - 5) {
		e_refuse(s, sid, "3");
		return;
	}
	if (st->kind == K_V2ENC) {
		V2__EncryptRequest *r = v2__encrypt_request__unpack(NULL, mlen,
		    msg);

		ok = r != NULL && r->plaintext.len > 0;
		if (r != NULL)
			v2__encrypt_request__free_unpacked(r, NULL);
	} else {
		V2__DecryptRequest *r = v2__decrypt_request__unpack(NULL, mlen,
		    msg);

		ok = r != NULL && r->ciphertext.len > 0 &&
		    r->key_id != NULL && r->key_id[0] != '\0';
		if (r != NULL)
			v2__decrypt_request__free_unpacked(r, NULL);
	}
	if (!ok) {
		e_refuse(s, sid, "3");
		return;
	}
	n = st->kind == K_V2ENC ? e_enc_len : e_dec_len;
	st->resp[0] = 0;
	st->resp[1] = (uint8_t)(n >> 24);
	st->resp[2] = (uint8_t)(n >> 16);
	st->resp[3] = (uint8_t)(n >> 8);
	st->resp[4] = (uint8_t)n;
	memcpy(st->resp + 5, st->kind == K_V2ENC ? e_enc : e_dec, n);
	st->rlen = n + 5;
	st->roff = 0;
	prd.source.ptr = st;
	prd.read_callback = e_read;
	if (nghttp2_submit_response(s, sid, hdr, sizeof(hdr) / sizeof(hdr[0]),
	    &prd) != 0)
		e_refuse(s, sid, "13");
}

static int
e_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct estream *st;

	if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
	    !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	if ((st = nghttp2_session_get_stream_user_data(s,
	    f->hd.stream_id)) != NULL)
		e_answer(s, f->hd.stream_id, st);
	return 0;
}

static int
e_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud)
{
	struct estream *st = nghttp2_session_get_stream_user_data(s, sid);

	if (st != NULL) {
		(void)nghttp2_session_set_stream_user_data(s, sid, NULL);
		free(st);
	}
	return 0;
}

static void
e_conn_close(struct econn *c)
{
	if (c->h2 != NULL)
		nghttp2_session_del(c->h2);
	if (c->fd != -1)
		close(c->fd);
	free(c->out);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

/* What nghttp2 has, in one send while the socket takes it. -1: close. */
static int
e_flush(struct econn *c)
{
	const uint8_t *data;
	ssize_t n, w;

	for (;;) {
		if ((n = nghttp2_session_mem_send(c->h2, &data)) < 0)
			return -1;
		if (n == 0)
			break;
		if (c->out_off > 0) {
			memmove(c->out, c->out + c->out_off,
			    c->out_len - c->out_off);
			c->out_len -= c->out_off;
			c->out_off = 0;
		}
		if (c->out_len + (size_t)n > c->out_cap) {
			c->out_cap = 2 * (c->out_len + (size_t)n);
			if ((c->out = realloc(c->out, c->out_cap)) == NULL)
				echo_fail("out of memory");
		}
		memcpy(c->out + c->out_len, data, (size_t)n);
		c->out_len += (size_t)n;
	}
	while (c->out_off < c->out_len) {
		w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
		    MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		c->out_off += (size_t)w;
	}
	c->out_off = c->out_len = 0;
	return 0;
}

/* Reads what the socket has into nghttp2. -1: close. */
static int
e_read_conn(struct econn *c)
{
	uint8_t buf[65536];
	ssize_t r;

	for (;;) {
		r = recv(c->fd, buf, sizeof(buf), 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
		}
		if (r == 0)
			return -1;
		if (nghttp2_session_mem_recv(c->h2, buf, (size_t)r) < 0)
			return -1;
		if ((size_t)r < sizeof(buf))
			return 0;
	}
}

static void
e_accept(int lfd, struct econn *cs, nghttp2_session_callbacks *cbs)
{
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024 },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 16384 },
	};
	struct econn *c = NULL;
	size_t i;
	int fd;

	if ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) == -1)
		return;
	for (i = 0; i < ECHO_CONNS && c == NULL; i++)
		if (cs[i].fd == -1)
			c = &cs[i];
	if (c == NULL) {
		close(fd);
		return;
	}
	c->fd = fd;
	if (nghttp2_session_server_new(&c->h2, cbs, c) != 0 ||
	    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv,
	    sizeof(iv) / sizeof(iv[0])) != 0)
		echo_fail("nghttp2 server session failed");
	if (e_flush(c) != 0)
		e_conn_close(c);
}

static void __attribute__((noreturn))
echo_main(int lfd, pid_t parent)
{
	struct econn cs[ECHO_CONNS];
	struct pollfd pfd[ECHO_CONNS + 1];
	size_t map[ECHO_CONNS + 1];
	nghttp2_session_callbacks *cbs;
	sigset_t none;
	size_t i, n;

	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	/* The bench's handlers would stop its daemon: not ours to do. */
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (nghttp2_session_callbacks_new(&cbs) != 0)
		echo_fail("out of memory");
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs,
	    e_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, e_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, e_data);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, e_frame);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, e_close);
	for (i = 0; i < ECHO_CONNS; i++) {
		memset(&cs[i], 0, sizeof(cs[i]));
		cs[i].fd = -1;
	}
	for (;;) {
		pfd[0].fd = lfd;
		pfd[0].events = POLLIN;
		n = 1;
		for (i = 0; i < ECHO_CONNS; i++) {
			if (cs[i].fd == -1)
				continue;
			pfd[n].fd = cs[i].fd;
			pfd[n].events = POLLIN | (cs[i].out_off <
			    cs[i].out_len ? POLLOUT : 0);
			map[n++] = i;
		}
		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			echo_fail("poll failed");
		}
		for (i = 1; i < n; i++) {
			struct econn *c = &cs[map[i]];

			if (pfd[i].revents == 0)
				continue;
			if (((pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
			    e_read_conn(c) != 0) || e_flush(c) != 0 ||
			    (!nghttp2_session_want_read(c->h2) &&
			    !nghttp2_session_want_write(c->h2)))
				e_conn_close(c);
		}
		if (pfd[0].revents & POLLIN)
			e_accept(lfd, cs, cbs);
	}
}

/* ---- the bench's side ---- */

/* The two replies, packed once: what the daemon answered, at its size. */
static void
pack_replies(const struct blob *b)
{
	V2__EncryptResponse er = V2__ENCRYPT_RESPONSE__INIT;
	V2__EncryptResponse__AnnotationsEntry e[MAX_ANN], *ep[MAX_ANN];
	V2__DecryptResponse dr = V2__DECRYPT_RESPONSE__INIT;
	uint8_t pt[PT_LEN];
	size_t i;

	for (i = 0; i < b->nann; i++) {
		V2__EncryptResponse__AnnotationsEntry z =
		    V2__ENCRYPT_RESPONSE__ANNOTATIONS_ENTRY__INIT;

		e[i] = z;
		e[i].key = b->ann[i].key;
		e[i].value.data = b->ann[i].val;
		e[i].value.len = b->ann[i].vlen;
		ep[i] = &e[i];
	}
	er.ciphertext.data = b->ct;
	er.ciphertext.len = b->len;
	er.key_id = g_key_id;
	er.n_annotations = b->nann;
	er.annotations = b->nann ? ep : NULL;
	make_pt(g_echo_in->seed, 0, pt);
	dr.plaintext.data = pt;
	dr.plaintext.len = PT_LEN;
	if (protobuf_c_message_get_packed_size(&er.base) > sizeof(e_enc) - 5 ||
	    protobuf_c_message_get_packed_size(&dr.base) > sizeof(e_dec) - 5)
		die("echo: the daemon's Encrypt answer is too big to echo");
	e_enc_len = protobuf_c_message_pack(&er.base, e_enc);
	e_dec_len = protobuf_c_message_pack(&dr.base, e_dec);
}

/*
 * Asks the daemon for one Encrypt (the shape of the echo's replies), then
 * forks the echo server on g_echo_sock. Call while the bench has no other
 * thread (the child uses malloc and nghttp2) and after g_key_id is known.
 */
void
echo_start(void)
{
	struct sockaddr_un sa;
	struct client cl;
	struct lane ln;
	pid_t parent = getpid(), pid;
	int lfd;

	g_echo_in = ctset_new(1);
	client_open(&cl, 1);
	lane_init(&ln, K_V2ENC, 1, 1);
	ln.pt_seed = g_echo_in->seed;
	ln.out = g_echo_in;
	run_quiet(&cl, &ln, "echo: the reply's shape");
	lane_free(&ln);
	client_close(&cl);
	if (g_echo_in->b[0].ct == NULL)
		die_run("echo: no ciphertext from the daemon");
	pack_replies(&g_echo_in->b[0]);

	snprintf(g_echo_sock, sizeof(g_echo_sock), "%s/echo.sock", g_dir);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_echo_sock);
	(void)unlink(g_echo_sock);
	/* Listening before the fork: the bench may connect at once. */
	if ((lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(lfd, 16) != 0)
		die("echo: cannot listen on %s: %s", g_echo_sock,
		    strerror(errno));
	if (fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK) == -1)
		die("fcntl: %s", strerror(errno));
	fflush(NULL);
	if ((pid = fork()) == -1)
		die("fork: %s", strerror(errno));
	if (pid == 0)
		echo_main(lfd, parent);
	close(lfd);
	g_echo = pid;
	g_eclk_ok = clock_getcpuclockid(pid, &g_eclk) == 0 &&
	    clock_gettime(g_eclk, &(struct timespec){ 0, 0 }) == 0;
}

/* The echo server's CPU (user + system), ns; 0 if unknown. */
uint64_t
echo_cpu_ns(void)
{
	return g_echo > 0 && g_eclk_ok ? clock_ns(g_eclk) : 0;
}

int
echo_running(void)
{
	return g_echo > 0;
}

void
echo_stop(void)
{
	pid_t pid = g_echo;
	int st;

	if (pid <= 0)
		return;
	g_echo = -1;
	g_eclk_ok = 0;
	(void)kill(pid, SIGKILL);
	(void)waitpid(pid, &st, 0);
}
