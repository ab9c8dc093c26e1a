/*
 * audit_format: the bytes of the audit log (audit.h describes the format):
 * JSON string escaping, the body of a request record and of the log's own
 * records (open, close, lost, truncated), the hash chain and the finished
 * line. No state but a per-thread cache of the time's seconds, so any
 * thread may call these; the writer (audit.c), audit-verify
 * (audit_verify.c), the fuzzer and the unit tests share them.
 */
#include "plugin/audit.h"
#include "plugin/audit_int.h"

#include <string.h>

#include <openssl/evp.h>

/* ---- encoding ---- */

/* Length of the UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t
utf8_len(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t k, i;
	uint32_t c;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		k = 2;
		c = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		k = 3;
		c = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		k = 4;
		c = s[0] & 0x07;
	} else {
		return 0;
	}
	if (k > n)
		return 0;
	for (i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	/* Overlong forms, surrogates and beyond U+10FFFF. */
	if ((k == 3 && c < 0x800) || (k == 4 && (c < 0x10000 ||
	    c > 0x10ffff)) || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return k;
}

/* Characters that must not reach a terminal or reorder text raw. */
static int
must_escape(uint32_t c)
{
	return c < 0x20 || c == '"' || c == '\\' || (c >= 0x7f && c <= 0x9f) ||
	    c == 0x061c || (c >= 0x200b && c <= 0x200f) ||
	    (c >= 0x2028 && c <= 0x202e) || (c >= 0x2060 && c <= 0x206f) ||
	    c == 0xfeff;
}

size_t
audit_json_string(const char *s, size_t max, char *out, size_t cap, int *cut)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
	size_t n = strlen((const char *)p), o = 0, k, i;
	uint32_t c;

	if (cut != NULL)
		*cut = 0;
	if (n > max) {
		n = max;
		/* Back off to a character boundary. */
		while (n > 0 && (p[n] & 0xc0) == 0x80)
			n--;
		if (cut != NULL)
			*cut = 1;
	}
	if (cap < 3)
		return 0;
	out[o++] = '"';
	for (i = 0; i < n; i += k) {
		/* Fast path: a run of plain printable ASCII. */
		for (k = 0; i + k < n && p[i + k] >= 0x20 && p[i + k] < 0x7f &&
		    p[i + k] != '"' && p[i + k] != '\\'; k++)
			;
		if (k > 0) {
			if (cap - o < k + 2)
				return 0;
			memcpy(out + o, p + i, k);
			o += k;
			continue;
		}
		if ((k = utf8_len(p + i, n - i, &c)) == 0) {
			k = 1;
			c = 0xfffd;
		}
		if (cap - o < 8)
			return 0;
		if (c == 0xfffd || must_escape(c)) {
			out[o++] = '\\';
			out[o++] = 'u';
			out[o++] = hex[(c >> 12) & 15];
			out[o++] = hex[(c >> 8) & 15];
			out[o++] = hex[(c >> 4) & 15];
			out[o++] = hex[c & 15];
		} else {
			memcpy(out + o, p + i, k);
			o += k;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
	return o;
}

struct jb {
	char *p;
	size_t len, cap;
	int full;
};

static void
jb_raw(struct jb *b, const char *s, size_t n)
{
	if (b->full || n >= b->cap - b->len) {
		b->full = 1;
		return;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

/*
 * `,"key":` made at compile time, so a field is one copy; the first field
 * of a body drops the comma.
 */
#define KEY(k)	",\"" k "\":", sizeof(",\"" k "\":") - 1

static void
jb_key(struct jb *b, const char *key, size_t n)
{
	if (b->len == 0) {
		key++;
		n--;
	}
	jb_raw(b, key, n);
}

static void
jb_str(struct jb *b, const char *key, size_t klen, const char *v, size_t max,
    int *cut)
{
	size_t n;

	jb_key(b, key, klen);
	if (b->full)
		return;
	n = audit_json_string(v, max, b->p + b->len, b->cap - b->len, cut);
	if (n == 0)
		b->full = 1;
	else
		b->len += n;
}

/* Decimal digits of v, written backwards from end; returns the start. */
static char *
digits(uint64_t v, char *end)
{
	do {
		*--end = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	return end;
}

static void
jb_u64(struct jb *b, const char *key, size_t klen, uint64_t v)
{
	char num[24], *d = digits(v, num + sizeof(num));

	jb_key(b, key, klen);
	jb_raw(b, d, (size_t)(num + sizeof(num) - d));
}

static void
jb_i64(struct jb *b, const char *key, size_t klen, int64_t v)
{
	char num[24], *d;

	if (v >= 0) {
		jb_u64(b, key, klen, (uint64_t)v);
		return;
	}
	d = digits(-(uint64_t)v, num + sizeof(num));
	*--d = '-';
	jb_key(b, key, klen);
	jb_raw(b, d, (size_t)(num + sizeof(num) - d));
}

/*
 * "ts":"2024-05-01T10:00:00.123456Z" (nothing in it needs escaping); the
 * seconds part is made once a second per thread.
 */
static void
jb_ts(struct jb *b, const struct timespec *ts)
{
	static __thread time_t last = -1;
	static __thread char head[32];
	static __thread size_t hlen;
	unsigned long us = (unsigned long)ts->tv_nsec / 1000 % 1000000;
	char z[48];
	struct tm tm;
	int i;

	if (ts->tv_sec != last) {
		gmtime_r(&ts->tv_sec, &tm);
		hlen = strftime(head, sizeof(head), "%Y-%m-%dT%H:%M:%S", &tm);
		last = ts->tv_sec;
	}
	z[0] = '"';
	memcpy(z + 1, head, hlen);
	z[hlen + 1] = '.';
	for (i = 7; i > 1; i--, us /= 10)
		z[hlen + (size_t)i] = (char)('0' + us % 10);
	memcpy(z + hlen + 8, "Z\"", 2);
	jb_key(b, KEY("ts"));
	jb_raw(b, z, hlen + 10);
}

size_t
audit_encode(const struct audit_event *ev, char *out, size_t cap)
{
	struct jb b = { out, 0, cap, 0 };
	int cut = 0;

	if (cap == 0)
		return 0;
	out[0] = '\0';
	jb_ts(&b, &ev->ts);
	jb_str(&b, KEY("type"), "request", 16, NULL);
	jb_str(&b, KEY("api"), ev->api, 16, NULL);
	jb_str(&b, KEY("op"), ev->op, 16, NULL);
	jb_str(&b, KEY("code"), ev->code_name, 32, NULL);
	jb_i64(&b, KEY("grpc_code"), ev->code);
	jb_str(&b, KEY("reason"), ev->reason, 32, NULL);
	jb_u64(&b, KEY("latency_us"), ev->latency_ns / 1000);
	jb_str(&b, KEY("key_id"), ev->key_id, 128, NULL);
	jb_str(&b, KEY("token_label"), ev->token_label, 64, NULL);
	jb_str(&b, KEY("token_serial"), ev->token_serial, 64, NULL);
	jb_str(&b, KEY("mechanism"), ev->mechanism, 32, NULL);
	if (ev->uid != NULL) {
		jb_str(&b, KEY("uid"), ev->uid, AUDIT_UID_MAX, &cut);
		if (cut)
			jb_raw(&b, ",\"uid_truncated\":true", 21);
	}
	if (ev->peer_known) {
		jb_u64(&b, KEY("peer_uid"), (uint64_t)ev->peer_uid);
		jb_u64(&b, KEY("peer_gid"), (uint64_t)ev->peer_gid);
		jb_i64(&b, KEY("peer_pid"), (int64_t)ev->peer_pid);
	}
	return b.full ? 0 : b.len;
}

/* SHA-256(prev || p) with a context (and digest) the caller keeps. */
static void
chain_with(EVP_MD_CTX *c, const EVP_MD *md, const uint8_t *prev,
    const char *p, size_t len, uint8_t out[AUDIT_CHAIN_LEN])
{
	unsigned n = 0;

	/* A failure leaves a chain value no verifier accepts. */
	if (c == NULL || EVP_DigestInit_ex(c, md, NULL) != 1 ||
	    EVP_DigestUpdate(c, prev, AUDIT_CHAIN_LEN) != 1 ||
	    EVP_DigestUpdate(c, p, len) != 1 ||
	    EVP_DigestFinal_ex(c, out, &n) != 1)
		memset(out, 0, AUDIT_CHAIN_LEN);
}

void
audit_chain(const uint8_t prev[AUDIT_CHAIN_LEN], const char *p, size_t len,
    uint8_t out[AUDIT_CHAIN_LEN])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();

	chain_with(c, EVP_sha256(), prev, p, len, out);
	EVP_MD_CTX_free(c);
}

void
audit_hex(const uint8_t v[AUDIT_CHAIN_LEN], char *out)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < AUDIT_CHAIN_LEN; i++) {
		out[2 * i] = hex[v[i] >> 4];
		out[2 * i + 1] = hex[v[i] & 15];
	}
	out[AUDIT_CHAIN_HEX] = '\0';
}

static int
unhex1(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int
audit_unhex(const char *s, size_t len, uint8_t out[AUDIT_CHAIN_LEN])
{
	size_t i;
	int hi, lo;

	if (len != AUDIT_CHAIN_HEX)
		return -1;
	for (i = 0; i < AUDIT_CHAIN_LEN; i++) {
		if ((hi = unhex1(s[2 * i])) < 0 ||
		    (lo = unhex1(s[2 * i + 1])) < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

size_t
audit_line_ctx(EVP_MD_CTX *c, const EVP_MD *md, uint64_t seq,
    const char *body, size_t len, uint8_t prev[AUDIT_CHAIN_LEN], char *out,
    size_t cap)
{
	char head[40], *d;
	uint8_t next[AUDIT_CHAIN_LEN];
	size_t h, n;

	/* {"seq":N, */
	head[sizeof(head) - 1] = ',';
	d = digits(seq, head + sizeof(head) - 1);
	d -= 7;
	memcpy(d, "{\"seq\":", 7);
	h = (size_t)(head + sizeof(head) - d);
	n = h + len + AUDIT_CHAIN_SUFFIX + 1;
	if (n >= cap)
		return 0;
	memcpy(out, d, h);
	memcpy(out + h, body, len);
	chain_with(c, md, prev, out, h + len, next);
	memcpy(out + h + len, ",\"chain\":\"", 10);
	/* audit_hex writes its NUL where the closing quote goes next. */
	audit_hex(next, out + h + len + 10);
	memcpy(out + h + len + 10 + AUDIT_CHAIN_HEX, "\"}\n", 3);
	out[n] = '\0';
	memcpy(prev, next, AUDIT_CHAIN_LEN);
	return n;
}

size_t
audit_line(uint64_t seq, const char *body, size_t len,
    uint8_t prev[AUDIT_CHAIN_LEN], char *out, size_t cap)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	size_t n = audit_line_ctx(c, EVP_sha256(), seq, body, len, prev, out,
	    cap);

	EVP_MD_CTX_free(c);
	return n;
}

/* ---- the log's own records ---- */

size_t
audit_encode_own(const struct timespec *ts, const char *type,
    const char *extra, const uint8_t prev[AUDIT_CHAIN_LEN], char *out,
    size_t cap)
{
	char hex[AUDIT_CHAIN_HEX + 1];
	struct jb b = { out, 0, cap, 0 };

	if (cap == 0)
		return 0;
	out[0] = '\0';
	jb_ts(&b, ts);
	jb_str(&b, KEY("type"), type, 16, NULL);
	if (extra[0] != '\0') {
		jb_raw(&b, ",", 1);
		jb_raw(&b, extra, strlen(extra));
	}
	audit_hex(prev, hex);
	jb_str(&b, KEY("prev_chain"), hex, sizeof(hex), NULL);
	return b.full ? 0 : b.len;
}

size_t
audit_open_fields(const char *reason, const char *path, pid_t pid, char *out,
    size_t cap)
{
	struct jb b = { out, 0, cap, 0 };

	if (cap == 0)
		return 0;
	out[0] = '\0';
	jb_str(&b, KEY("reason"), reason, 32, NULL);
	jb_str(&b, KEY("file"), path, 1024, NULL);
	jb_i64(&b, KEY("pid"), (int64_t)pid);
	if (b.full) {
		out[0] = '\0';
		return 0;
	}
	return b.len;
}

/* ---- a request record as queued ---- */

/*
 * The numbers of an event, copied whole; then its strings in the order of
 * audit_pack, each a length byte, the bytes and a NUL.
 */
struct packed {
	struct timespec ts;
	uint64_t latency_ns;
	int code;
	int peer_known;
	uid_t peer_uid;
	gid_t peer_gid;
	pid_t peer_pid;
	int has_uid;
};

/*
 * A string is cut at PACK_STR_MAX bytes: more than audit_encode reads of
 * any field (its bound, and one byte past it to tell that it was cut), so
 * the record comes out as it would from the event itself.
 */
#define PACK_STR_MAX	255
_Static_assert(AUDIT_UID_MAX < PACK_STR_MAX && 128 < PACK_STR_MAX,
    "a packed string must hold every byte audit_encode reads");
#define PACK_NSTR	9
_Static_assert(AUDIT_PACK_MAX >= sizeof(struct packed) +
    PACK_NSTR * (PACK_STR_MAX + 2), "AUDIT_PACK_MAX is too small");

/* One pass over a short string beats strnlen and memcpy here. */
static size_t
pack_str(char *out, const char *s)
{
	size_t n = 0;

	if (s != NULL)
		while (n < PACK_STR_MAX && s[n] != '\0') {
			out[n + 1] = s[n];
			n++;
		}
	out[0] = (char)(unsigned char)n;
	out[n + 1] = '\0';
	return n + 2;
}

size_t
audit_pack(const struct audit_event *ev, char out[AUDIT_PACK_MAX])
{
	struct packed h;
	size_t o = sizeof(h);

	memset(&h, 0, sizeof(h));	/* no stray padding bytes */
	h.ts = ev->ts;
	h.latency_ns = ev->latency_ns;
	h.code = ev->code;
	h.peer_known = ev->peer_known;
	h.peer_uid = ev->peer_uid;
	h.peer_gid = ev->peer_gid;
	h.peer_pid = ev->peer_pid;
	h.has_uid = ev->uid != NULL;
	memcpy(out, &h, sizeof(h));
	o += pack_str(out + o, ev->api);
	o += pack_str(out + o, ev->op);
	o += pack_str(out + o, ev->key_id);
	o += pack_str(out + o, ev->token_label);
	o += pack_str(out + o, ev->token_serial);
	o += pack_str(out + o, ev->mechanism);
	o += pack_str(out + o, ev->uid);
	o += pack_str(out + o, ev->code_name);
	o += pack_str(out + o, ev->reason);
	return o;
}

/* The next string of p (len bytes left at *off); NULL when malformed. */
static const char *
unpack_str(const char *p, size_t len, size_t *off)
{
	size_t n;
	const char *s;

	if (*off >= len)
		return NULL;
	n = (unsigned char)p[*off];
	if (n + 2 > len - *off || p[*off + 1 + n] != '\0')
		return NULL;
	s = p + *off + 1;
	*off += n + 2;
	return s;
}

int
audit_unpack(const char *p, size_t len, struct audit_event *ev)
{
	const char **str[PACK_NSTR] = { &ev->api, &ev->op, &ev->key_id,
	    &ev->token_label, &ev->token_serial, &ev->mechanism, &ev->uid,
	    &ev->code_name, &ev->reason };
	struct packed h;
	size_t off = sizeof(h), i;

	memset(ev, 0, sizeof(*ev));
	if (len < sizeof(h))
		return -1;
	memcpy(&h, p, sizeof(h));
	for (i = 0; i < PACK_NSTR; i++)
		if ((*str[i] = unpack_str(p, len, &off)) == NULL)
			return -1;
	if (off != len)
		return -1;
	if (!h.has_uid)
		ev->uid = NULL;
	ev->ts = h.ts;
	ev->latency_ns = h.latency_ns;
	ev->code = h.code;
	ev->peer_known = h.peer_known;
	ev->peer_uid = h.peer_uid;
	ev->peer_gid = h.peer_gid;
	ev->peer_pid = h.peer_pid;
	return 0;
}
