/*
 * log: the logger (log.h). Each line is built in a stack buffer, escaped
 * (control, bidi and invalid UTF-8 never pass through) and written with one
 * write(2), so threads never interleave; '#' keys are JSON numbers. Level
 * and format are read atomically: a reload changes them while workers log.
 */
#include "plugin/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX		1024	/* formatted message before escaping */
#define KEY_MAX		64
/* Kept free for what closes a line: quote, truncation mark, "}\n". */
#define RESERVE		32

_Atomic int log_level = LOG_INFO;
int log_format = LOG_FORMAT_LOGFMT;
int log_fd = 2;

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const char *const format_names[] = { "logfmt", "json" };

static int
find(const char *const *names, int n, const char *s)
{
	int i;

	if (s == NULL)
		return -1;
	for (i = 0; i < n; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

int
log_level_parse(const char *s)
{
	return find(level_names, 4, s);
}

const char *
log_level_name(int level)
{
	return level >= LOG_ERROR && level <= LOG_DEBUG ? level_names[level] :
	    "?";
}

int
log_format_parse(const char *s)
{
	return find(format_names, 2, s);
}

/* ---- line building ---- */

struct line {
	char b[LOG_LINE_MAX];
	size_t len;
	int trunc;
};

/* Appends n bytes if they fit before the reserve; else marks truncation. */
static int
put(struct line *l, const char *s, size_t n)
{
	if (n > sizeof(l->b) - RESERVE - l->len) {
		l->trunc = 1;
		return -1;
	}
	memcpy(l->b + l->len, s, n);
	l->len += n;
	return 0;
}

static int
put_str(struct line *l, const char *s)
{
	return put(l, s, strlen(s));
}

/* Appends into the reserve: only for the fixed closing bytes of a line. */
static void
put_close(struct line *l, const char *s)
{
	size_t n = strlen(s);

	if (n <= sizeof(l->b) - l->len) {
		memcpy(l->b + l->len, s, n);
		l->len += n;
	}
}

/*
 * Length of the valid UTF-8 sequence at s (n bytes available) that is not
 * a C1 control; 0 when invalid (overlong, surrogate, > U+10FFFF, cut).
 */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len, i;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

/* The code point of the valid sequence s of k bytes (utf8_seq). */
static unsigned
utf8_cp(const unsigned char *s, size_t k)
{
	unsigned cp = k == 2 ? s[0] & 0x1f : k == 3 ? s[0] & 0x0f : s[0] & 0x07;
	size_t i;

	for (i = 1; i < k; i++)
		cp = cp << 6 | (s[i] & 0x3f);
	return cp;
}

/*
 * 1 for the bidirectional controls (ALM, LRM, RLM, LRE..RLO, LRI..PDI) and
 * the line/paragraph separators: text that displays other than it reads
 * ("Trojan Source") or breaks a line in some viewers.
 */
static int
is_bidi(const unsigned char *s, size_t k)
{
	unsigned cp = utf8_cp(s, k);

	return cp == 0x061c || cp == 0x200e || cp == 0x200f ||
	    (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/*
 * Appends s escaped as the inside of a JSON string (also valid in a quoted
 * logfmt value). Stops at an escape boundary when the line is full.
 */
static int
put_escaped_n(struct line *l, const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0, k, m;
	char esc[8];

	while (i < n) {
		unsigned char c = s[i];

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			k = 2;
		} else if (c == '\n' || c == '\r' || c == '\t') {
			esc[0] = '\\';
			esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
			k = 2;
		} else if (c < 0x20 || c == 0x7f) {
			k = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", c);
		} else if (c < 0x80) {
			esc[0] = (char)c;
			k = 1;
		} else if (c == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 &&
		    s[i + 1] <= 0x9f) {
			/* C1 control (U+0080..U+009F): CSI and friends. */
			k = (size_t)snprintf(esc, sizeof(esc), "\\u%04x",
			    s[i + 1]);
			if (put(l, esc, k) != 0)
				return -1;
			i += 2;
			continue;
		} else if ((k = utf8_seq(s + i, n - i)) != 0) {
			if (is_bidi(s + i, k)) {
				/* Would reorder what a terminal shows. */
				m = (size_t)snprintf(esc, sizeof(esc),
				    "\\u%04x", utf8_cp(s + i, k));
				if (put(l, esc, m) != 0)
					return -1;
			} else if (put(l, str + i, k) != 0)
				return -1;
			i += k;
			continue;
		} else {
			memcpy(esc, "\\ufffd", 6);
			k = 6;
		}
		if (put(l, esc, k) != 0)
			return -1;
		i++;
	}
	return 0;
}

static int
put_escaped(struct line *l, const char *str)
{
	return put_escaped_n(l, str, strlen(str));
}

/* logfmt values that need no quotes: non-empty, only these bytes. */
static int
logfmt_bare(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || strchr("-._:/@+,%", *s)))
			return 0;
	return 1;
}

static void
clean_key(const char *key, char *out)
{
	size_t i;

	for (i = 0; key[i] != '\0' && i < KEY_MAX - 1; i++) {
		char c = key[i];
		out[i] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '_' || c == '.' ||
		    c == '-' ? c : '_';
	}
	if (i == 0)
		out[i++] = '_';
	out[i] = '\0';
}

/*
 * 1 when s is a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
 */
static int
json_number(const char *s)
{
	if (*s == '-')
		s++;
	if (*s == '0')
		s++;
	else if (*s >= '1' && *s <= '9')
		while (*s >= '0' && *s <= '9')
			s++;
	else
		return 0;
	if (*s == '.') {
		s++;
		if (*s < '0' || *s > '9')
			return 0;
		while (*s >= '0' && *s <= '9')
			s++;
	}
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (*s < '0' || *s > '9')
			return 0;
		while (*s >= '0' && *s <= '9')
			s++;
	}
	return *s == '\0';
}

/*
 * Appends one whole key/value field, or nothing (line marked truncated).
 * vlen: the value's length, or SIZE_MAX for a NUL-terminated one.
 */
static void
put_field(struct line *l, const char *key, const char *val, size_t vlen,
    int json)
{
	size_t save = l->len;
	char k[KEY_MAX];
	int r, num = key[0] == '#';

	clean_key(num ? key + 1 : key, k);
	if (val == NULL)
		val = "";
	if (vlen == SIZE_MAX)
		vlen = strlen(val);
	if (json && num && vlen == strlen(val) && json_number(val)) {
		r = put_str(l, ",\"") || put_str(l, k) || put_str(l, "\":") ||
		    put_str(l, val);
	} else if (json) {
		r = put_str(l, ",\"") || put_str(l, k) || put_str(l, "\":\"") ||
		    put_escaped_n(l, val, vlen) || put_str(l, "\"");
	} else if (vlen == strlen(val) && logfmt_bare(val)) {
		r = put_str(l, " ") || put_str(l, k) || put_str(l, "=") ||
		    put_str(l, val);
	} else {
		r = put_str(l, " ") || put_str(l, k) || put_str(l, "=\"") ||
		    put_escaped_n(l, val, vlen) || put_str(l, "\"");
	}
	if (r != 0) {
		l->len = save;
		l->trunc = 1;
	}
}

/* A value with a length (may hold NUL bytes), logged before the pairs. */
struct bytes_field {
	const char *key;
	const char *val;
	size_t len;
};

static void
emit(int level, const char *msg, const struct bytes_field *bf,
    const char *const *kv, size_t nkv, int dropped)
{
	struct line l;
	struct timespec now;
	struct tm tm;
	char ts[48];
	size_t i, off;
	ssize_t w;
	int json = __atomic_load_n(&log_format, __ATOMIC_RELAXED) ==
	    LOG_FORMAT_JSON;

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	off = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + off, sizeof(ts) - off, ".%03ldZ",
	    now.tv_nsec / 1000000);

	l.len = 0;
	l.trunc = 0;
	if (json) {
		put_str(&l, "{\"ts\":\"");
		put_str(&l, ts);
		put_str(&l, "\",\"level\":\"");
		put_str(&l, level_names[level]);
		put_str(&l, "\",\"msg\":\"");
	} else {
		put_str(&l, "ts=");
		put_str(&l, ts);
		put_str(&l, " level=");
		put_str(&l, level_names[level]);
		put_str(&l, " msg=\"");
	}
	/* A message cut short still gets its closing quote (reserve). */
	(void)put_escaped(&l, msg);
	put_close(&l, "\"");
	if (bf != NULL)
		put_field(&l, bf->key, bf->val, bf->len, json);
	for (i = 0; i + 1 < nkv && !l.trunc; i += 2)
		put_field(&l, kv[i], kv[i + 1], SIZE_MAX, json);
	if (l.trunc || dropped)
		put_close(&l, json ? ",\"truncated\":true" :
		    " truncated=true");
	put_close(&l, json ? "}\n" : "\n");

	/* One write per line; retried only if a signal interrupts it. */
	for (off = 0; off < l.len; off += (size_t)w) {
		w = write(log_fd, l.b + off, l.len - off);
		if (w < 0 && errno == EINTR) {
			w = 0;
			continue;
		}
		if (w <= 0)
			break;
	}
}

void
log_msg(int level, const char *fmt, ...)
{
	char msg[MSG_MAX];
	va_list ap;

	if (level < LOG_ERROR ||
	    level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	va_start(ap, fmt);
	if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
		msg[0] = '\0';
	va_end(ap);
	emit(level, msg, NULL, NULL, 0, 0);
}

/* The NULL-terminated key/value list of ap into kv; 1 when some did not fit. */
static int
collect(va_list ap, const char **kv, size_t *n)
{
	const char *key;
	int dropped = 0;

	*n = 0;
	while ((key = va_arg(ap, const char *)) != NULL) {
		const char *val = va_arg(ap, const char *);

		if (*n == 2 * LOG_KV_MAX) {
			dropped = 1;
			continue;
		}
		kv[(*n)++] = key;
		kv[(*n)++] = val;
	}
	return dropped;
}

void
log_kv(int level, const char *msg, ...)
{
	const char *kv[2 * LOG_KV_MAX];
	size_t n;
	int dropped;
	va_list ap;

	if (level < LOG_ERROR ||
	    level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	va_start(ap, msg);
	dropped = collect(ap, kv, &n);
	va_end(ap);
	emit(level, msg != NULL ? msg : "", NULL, kv, n, dropped);
}

void
log_kv_bytes(int level, const char *msg, const char *key, const void *val,
    size_t len, ...)
{
	const char *kv[2 * LOG_KV_MAX];
	struct bytes_field bf = { key, val, len };
	size_t n;
	int dropped;
	va_list ap;

	if (level < LOG_ERROR || level > log_level)
		return;
	if (bf.val == NULL)
		bf.len = 0;
	va_start(ap, len);
	dropped = collect(ap, kv, &n);
	va_end(ap);
	emit(level, msg != NULL ? msg : "", &bf, kv, n, dropped);
}

#define RATELIM_WINDOW_NS	1000000000ull

void
log_ratelim_init(struct log_ratelim *rl, unsigned per_s)
{
	memset(rl, 0, sizeof(*rl));
	rl->per_s = per_s;
}

/* Starts a new window when the current one is over. */
static void
ratelim_roll(struct log_ratelim *rl, uint64_t now)
{
	if (now - rl->window < RATELIM_WINDOW_NS && rl->window != 0)
		return;
	rl->report += rl->dropped;
	rl->window = now != 0 ? now : 1;
	rl->taken = rl->dropped = 0;
}

int
log_ratelim_allow(struct log_ratelim *rl, uint64_t now)
{
	ratelim_roll(rl, now);
	if (rl->taken < rl->per_s) {
		rl->taken++;
		return 1;
	}
	rl->dropped++;
	return 0;
}

unsigned
log_ratelim_take_dropped(struct log_ratelim *rl, uint64_t now)
{
	unsigned n;

	ratelim_roll(rl, now);
	n = rl->report;
	rl->report = 0;
	return n;
}
