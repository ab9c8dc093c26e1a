/*
 * audit_verify: `p11kms audit-verify [--live] FILE…`, the checker of the
 * audit log's chain (format in audit.h and docs/audit.md).
 *
 * Each line must be one flat JSON object: {"seq":N, …, "chain":"hex"}.
 * seq goes up by one from line to line, across files; chain must be
 * SHA-256(previous chain || the line without its chain suffix). The first
 * line of the first file starts from its "prev_chain" when it has one
 * (a file that begins with an "open" line), else from 32 zero bytes. The
 * last line of the last file must be a "close" line unless --live says
 * the file is still being written. Any difference is reported as the first
 * bad record (file:line) and exit 1; a file that cannot be read is exit 2.
 */
#include "plugin/audit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_INTACT	0
#define EXIT_BROKEN	1
#define EXIT_UNREADABLE	2
#define LINE_MAX_BYTES	(4 * AUDIT_RECORD_MAX)
#define MAX_FIELDS	32
#define MAX_TALLY	64

struct span {
	const char *p;
	size_t n;
};

struct field {
	struct span key, val;	/* val of a string: without the quotes */
	int is_str;
};

/* Skips one JSON string at *p (opening quote); -1 when malformed. */
static int
skip_string(const char **p, const char *end, struct span *out)
{
	const char *s = *p + 1;

	while (s < end && *s != '"') {
		if ((unsigned char)*s < 0x20)
			return -1;
		if (*s == '\\') {
			if (++s >= end)
				return -1;
			if (*s == 'u') {
				if (end - s < 5)
					return -1;
				s += 4;
			} else if (strchr("\"\\/bfnrt", *s) == NULL) {
				return -1;
			}
		}
		s++;
	}
	if (s >= end)
		return -1;
	out->p = *p + 1;
	out->n = (size_t)(s - *p - 1);
	*p = s + 1;
	return 0;
}

/* Parses a flat object of strings, numbers and literals. Returns the
 * number of fields, or -1 when the line is not one. */
static int
parse_flat(const char *p, size_t len, struct field *f, int max)
{
	const char *end = p + len, *v;
	int n = 0;

	if (len < 2 || *p != '{' || end[-1] != '}')
		return -1;
	p++;
	end--;
	while (p < end) {
		if (n == max || *p != '"' || skip_string(&p, end, &f[n].key) != 0)
			return -1;
		if (p >= end || *p++ != ':' || p >= end)
			return -1;
		if (*p == '"') {
			if (skip_string(&p, end, &f[n].val) != 0)
				return -1;
			f[n].is_str = 1;
		} else {
			v = p;
			while (p < end && *p != ',' && *p != '"')
				p++;
			if (p == v)
				return -1;
			f[n].val.p = v;
			f[n].val.n = (size_t)(p - v);
			f[n].is_str = 0;
		}
		n++;
		if (p < end && *p++ != ',')
			return -1;
		if (p == end && end[-1] == ',')
			return -1;
	}
	return n;
}

static const struct field *
get(const struct field *f, int n, const char *key)
{
	int i;

	for (i = 0; i < n; i++)
		if (f[i].key.n == strlen(key) &&
		    memcmp(f[i].key.p, key, f[i].key.n) == 0)
			return &f[i];
	return NULL;
}

static int
is(const struct field *f, const char *s)
{
	return f != NULL && f->val.n == strlen(s) &&
	    memcmp(f->val.p, s, f->val.n) == 0;
}

struct tally {
	char what[96];
	uint64_t n;
};

struct verify {
	uint8_t chain[AUDIT_CHAIN_LEN];
	uint64_t seq;
	uint64_t records;
	int started;
	int last_close;
	struct tally t[MAX_TALLY];
	size_t nt;
	uint64_t lost;
	int quiet;		/* print nothing (fuzzing) */
};

static void
tally(struct verify *v, const char *what)
{
	size_t i;

	for (i = 0; i < v->nt; i++)
		if (strcmp(v->t[i].what, what) == 0) {
			v->t[i].n++;
			return;
		}
	/* The last row absorbs what does not fit. */
	i = v->nt < MAX_TALLY ? v->nt++ : MAX_TALLY - 1;
	snprintf(v->t[i].what, sizeof(v->t[i].what), "%s",
	    i == MAX_TALLY - 1 ? "other" : what);
	v->t[i].n++;
}

static void
span_copy(const struct field *f, char *out, size_t cap)
{
	size_t n = f != NULL ? f->val.n : 0, i;

	if (n >= cap)
		n = cap - 1;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)f->val.p[i];
		out[i] = c >= 0x20 && c < 0x7f && c != '\\' ? (char)c : '?';
	}
	out[n] = '\0';
}

static int
bad_at(const struct verify *v, const char *file, unsigned long line,
    const char *why)
{
	if (!v->quiet)
		printf("audit-verify: BROKEN at %s:%lu: %s\n", file, line,
		    why);
	return EXIT_BROKEN;
}

#define bad(file, line, why)	bad_at(v, file, line, why)

/* Checks one line; 0 when it follows, else the exit status. */
static int
check_line(struct verify *v, const char *file, unsigned long lineno,
    const char *line, size_t len)
{
	struct field f[MAX_FIELDS];
	const struct field *fs, *ft, *fc, *fp;
	uint8_t want[AUDIT_CHAIN_LEN], got[AUDIT_CHAIN_LEN];
	char why[200], a[24], b[24], c[40];
	uint64_t seq;
	int n;

	if ((n = parse_flat(line, len, f, MAX_FIELDS)) < 2)
		return bad(file, lineno, "not an audit record (not a flat JSON "
		    "object: edited, or cut short)");
	fs = &f[0];
	fc = &f[n - 1];
	if (fs->key.n != 3 || memcmp(fs->key.p, "seq", 3) != 0)
		return bad(file, lineno, "first field is not \"seq\"");
	if (fc->key.n != 5 || memcmp(fc->key.p, "chain", 5) != 0 ||
	    !fc->is_str || len < AUDIT_CHAIN_SUFFIX ||
	    audit_unhex(fc->val.p, fc->val.n, got) != 0 ||
	    memcmp(line + len - AUDIT_CHAIN_SUFFIX, ",\"chain\":\"", 10) != 0)
		return bad(file, lineno, "last field is not a \"chain\" value");
	span_copy(fs, a, sizeof(a));
	if (fs->is_str || a[0] < '0' || a[0] > '9')
		return bad(file, lineno, "\"seq\" is not a number");
	seq = strtoull(a, NULL, 10);
	if (!v->started) {
		fp = get(f, n, "prev_chain");
		memset(v->chain, 0, sizeof(v->chain));
		if (fp != NULL && audit_unhex(fp->val.p, fp->val.n,
		    v->chain) != 0)
			return bad(file, lineno, "\"prev_chain\" is not a "
			    "chain value");
		v->seq = seq - 1;
		v->started = 1;
	}
	if (seq != v->seq + 1) {
		snprintf(why, sizeof(why), "seq %" PRIu64 " where %" PRIu64
		    " was due: records were removed, added or moved", seq,
		    v->seq + 1);
		return bad(file, lineno, why);
	}
	audit_chain(v->chain, line, len - AUDIT_CHAIN_SUFFIX, want);
	if (memcmp(want, got, sizeof(want)) != 0)
		return bad(file, lineno, "chain value does not match: this "
		    "record or the one before it was changed, or a record "
		    "was removed");
	memcpy(v->chain, got, sizeof(got));
	v->seq = seq;
	v->records++;
	ft = get(f, n, "type");
	v->last_close = is(ft, "close");
	if (is(ft, "request")) {
		span_copy(get(f, n, "api"), a, sizeof(a));
		span_copy(get(f, n, "op"), b, sizeof(b));
		span_copy(get(f, n, "code"), c, sizeof(c));
		snprintf(why, sizeof(why), "%s %s %s", a, b, c);
		tally(v, why);
	} else {
		span_copy(ft, a, sizeof(a));
		snprintf(why, sizeof(why), "(%s)", a);
		tally(v, why);
		if (is(ft, "lost")) {
			span_copy(get(f, n, "count"), a, sizeof(a));
			v->lost += strtoull(a, NULL, 10);
		}
	}
	return 0;
}

/* Checks the lines of fp (named path in messages) after what v saw. */
static int
verify_stream(struct verify *v, const char *path, FILE *fp)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned long lineno = 0;
	int r = 0;

	while ((n = getline(&line, &cap, fp)) > 0) {
		lineno++;
		if (line[n - 1] != '\n') {
			r = bad(path, lineno, "last line is cut short (no "
			    "newline): the tail was truncated");
			break;
		}
		if ((size_t)n > LINE_MAX_BYTES) {
			r = bad(path, lineno, "line longer than any record");
			break;
		}
		if ((r = check_line(v, path, lineno, line,
		    (size_t)n - 1)) != 0)
			break;
	}
	if (r == 0 && ferror(fp)) {
		if (!v->quiet)
			fprintf(stderr, "p11kms: audit-verify: cannot read "
			    "%s: %s\n", path, strerror(errno));
		r = EXIT_UNREADABLE;
	}
	if (r == 0 && lineno == 0)
		r = bad(path, 1, "file is empty");
	free(line);
	return r;
}

static int
verify_file(struct verify *v, const char *path)
{
	FILE *fp;
	int r;

	if ((fp = fopen(path, "re")) == NULL) {
		fprintf(stderr, "p11kms: audit-verify: cannot read %s: %s\n",
		    path, strerror(errno));
		return EXIT_UNREADABLE;
	}
	r = verify_stream(v, path, fp);
	fclose(fp);
	return r;
}

int
audit_verify_stream(FILE *fp, int live)
{
	struct verify v;
	int r;

	memset(&v, 0, sizeof(v));
	v.quiet = 1;
	if ((r = verify_stream(&v, "-", fp)) != 0)
		return r;
	return live || v.last_close ? EXIT_INTACT : EXIT_BROKEN;
}

static void
usage(FILE *fp)
{
	fprintf(fp,
"Usage: p11kms audit-verify [--live] FILE...\n"
"Checks the hash chain of p11kms audit logs, oldest file first, and\n"
"prints record counts by API, operation and outcome.\n"
"\n"
"      --live   the last file is still being written: do not require it\n"
"               to end with the daemon's \"close\" record\n"
"  -h, --help   this text\n"
"\n"
"Exit status: 0 intact, 1 broken (the first bad record is named by file\n"
"and line), 2 a file cannot be read or bad usage.\n");
}

int
audit_verify_main(int argc, char **argv)
{
	struct verify v;
	char hex[AUDIT_CHAIN_HEX + 1];
	int i, first, live = 0, r;
	size_t k;

	for (first = 1; first < argc && argv[first][0] == '-'; first++) {
		if (strcmp(argv[first], "--live") == 0) {
			live = 1;
		} else if (strcmp(argv[first], "-h") == 0 ||
		    strcmp(argv[first], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[first], "--") == 0) {
			first++;
			break;
		} else {
			fprintf(stderr, "p11kms: audit-verify: unknown option "
			    "'%.40s'\n", argv[first]);
			usage(stderr);
			return EXIT_UNREADABLE;
		}
	}
	if (first == argc) {
		usage(stderr);
		return EXIT_UNREADABLE;
	}
	memset(&v, 0, sizeof(v));
	for (i = first; i < argc; i++)
		if ((r = verify_file(&v, argv[i])) != 0)
			return r;
	if (!live && !v.last_close) {
		printf("audit-verify: BROKEN at %s: ends without the daemon's "
		    "\"close\" record: its tail was cut, the daemon died, or "
		    "it is still writing (then use --live)\n", argv[argc - 1]);
		return EXIT_BROKEN;
	}
	audit_hex(v.chain, hex);
	printf("audit-verify: intact: %d file(s), %" PRIu64 " records, seq "
	    "to %" PRIu64 ", last chain %s\n", argc - first, v.records, v.seq,
	    hex);
	for (k = 0; k < v.nt; k++)
		printf("  %-40s %" PRIu64 "\n", v.t[k].what, v.t[k].n);
	if (v.lost > 0)
		printf("  records the daemon reported lost: %" PRIu64 "\n",
		    v.lost);
	return EXIT_INTACT;
}
