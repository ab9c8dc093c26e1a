/*
 * prom_check: a strict checker of the Prometheus text exposition format
 * 0.0.4, shared by test_metrics.c and test_ops.c (static functions only;
 * include once per test program).
 *
 * prom_check() verifies that every line is "# HELP name text", "# TYPE name
 * counter|gauge|histogram|summary|untyped" or a sample
 * "name{label="value",...} number" matching the grammar; that HELP and TYPE
 * come once per family and before its samples; that every sample belongs
 * to the family declared last (histograms: name_bucket/_sum/_count, and
 * every _bucket has le); that counters end in _total; and that each
 * histogram series has non-decreasing buckets ending in le="+Inf" equal to
 * its _count.
 */
#ifndef P11KMS_PROM_CHECK_H
#define P11KMS_PROM_CHECK_H

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROM_NAME	"[a-zA-Z_:][a-zA-Z0-9_:]*"
#define PROM_LNAME	"[a-zA-Z_][a-zA-Z0-9_]*"
#define PROM_LVALUE	"\"([^\"\\\\\n]|\\\\[\\\\\"n])*\""
#define PROM_LABEL	PROM_LNAME "=" PROM_LVALUE
#define PROM_NUMBER	"(-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?|\\+Inf|-Inf|NaN)"
#define PROM_SAMPLE	"^(" PROM_NAME ")(\\{" PROM_LABEL "(," PROM_LABEL ")*\\})? " \
			PROM_NUMBER "$"

/* Writes what is wrong into why (cap bytes); returns 0 when all is well. */
static int
prom_check(const char *text, size_t len, char *why, size_t cap)
{
	regex_t sample, help, type;
	regmatch_t m[2];
	char family[128] = "", ftype[16] = "", seen[8192] = " ";
	char series[512] = "", line[1024], name[128], pat[132];
	double last_bucket = -1, v;
	size_t off = 0, n, lineno = 0;
	int ret = -1, in_hist_series = 0;

	if (len == 0 || text[len - 1] != '\n') {
		snprintf(why, cap, "empty, or no newline at the end");
		return -1;
	}
	if (regcomp(&sample, PROM_SAMPLE, REG_EXTENDED) != 0 ||
	    regcomp(&help, "^# HELP (" PROM_NAME ") [^\n]*$",
	    REG_EXTENDED) != 0 ||
	    regcomp(&type, "^# TYPE (" PROM_NAME ") (counter|gauge|histogram|"
	    "summary|untyped)$", REG_EXTENDED) != 0) {
		snprintf(why, cap, "regcomp failed");
		return -1;
	}
	while (off < len) {
		const char *nl = memchr(text + off, '\n', len - off);

		n = (size_t)(nl - (text + off));
		lineno++;
		if (n >= sizeof(line)) {
			snprintf(why, cap, "line %zu too long", lineno);
			goto out;
		}
		memcpy(line, text + off, n);
		line[n] = '\0';
		off += n + 1;
		if (regexec(&help, line, 2, m, 0) == 0) {
			snprintf(name, sizeof(name), "%.*s",
			    (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
			snprintf(pat, sizeof(pat), " %s ", name);
			if (strcmp(name, family) == 0 || strstr(seen, pat)) {
				snprintf(why, cap, "line %zu: family %.60s "
				    "declared twice", lineno, name);
				goto out;
			}
			snprintf(family, sizeof(family), "%s", name);
			ftype[0] = '\0';
			continue;
		}
		if (regexec(&type, line, 2, m, 0) == 0) {
			snprintf(name, sizeof(name), "%.*s",
			    (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
			if (strcmp(name, family) != 0 || ftype[0] != '\0') {
				snprintf(why, cap, "line %zu: TYPE without its "
				    "HELP just before", lineno);
				goto out;
			}
			snprintf(ftype, sizeof(ftype), "%s",
			    strrchr(line, ' ') + 1);
			if (strcmp(ftype, "counter") == 0 &&
			    (strlen(name) < 6 ||
			    strcmp(name + strlen(name) - 6, "_total") != 0)) {
				snprintf(why, cap, "line %zu: counter %.60s does "
				    "not end in _total", lineno, name);
				goto out;
			}
			if (strlen(seen) + strlen(name) + 2 < sizeof(seen)) {
				strcat(seen, name);
				strcat(seen, " ");
			}
			continue;
		}
		if (line[0] == '#') {
			snprintf(why, cap, "line %zu: bad comment: %.60s", lineno,
			    line);
			goto out;
		}
		if (regexec(&sample, line, 2, m, 0) != 0) {
			snprintf(why, cap, "line %zu does not match the "
			    "grammar: %.60s", lineno, line);
			goto out;
		}
		if (ftype[0] == '\0') {
			snprintf(why, cap, "line %zu: sample before HELP/TYPE: "
			    "%.60s", lineno, line);
			goto out;
		}
		snprintf(name, sizeof(name), "%.*s",
		    (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
		v = strtod(strrchr(line, ' ') + 1, NULL);
		if (strcmp(ftype, "histogram") != 0) {
			if (strcmp(name, family) != 0) {
				snprintf(why, cap, "line %zu: sample %.60s in "
				    "family %.60s", lineno, name, family);
				goto out;
			}
			continue;
		}
		/* Histogram: _bucket lines (with le, cumulative), then _sum,
		 * then _count equal to the +Inf bucket. */
		if (strncmp(name, family, strlen(family)) != 0) {
			snprintf(why, cap, "line %zu: %.60s not in %.60s", lineno,
			    name, family);
			goto out;
		}
		if (strcmp(name + strlen(family), "_bucket") == 0) {
			char *le = strstr(line, "le=\"");
			char key[512];

			if (le == NULL) {
				snprintf(why, cap, "line %zu: bucket without le",
				    lineno);
				goto out;
			}
			/* The series is the line up to le. */
			snprintf(key, sizeof(key), "%.*s", (int)(le - line),
			    line);
			if (!in_hist_series || strcmp(key, series) != 0) {
				snprintf(series, sizeof(series), "%s", key);
				last_bucket = -1;
				in_hist_series = 1;
			}
			if (v < last_bucket) {
				snprintf(why, cap, "line %zu: bucket count goes "
				    "down", lineno);
				goto out;
			}
			last_bucket = v;
			if (strncmp(le, "le=\"+Inf\"", 9) == 0)
				in_hist_series = 2;
		} else if (strcmp(name + strlen(family), "_sum") == 0) {
			if (in_hist_series != 2) {
				snprintf(why, cap, "line %zu: _sum before the "
				    "+Inf bucket", lineno);
				goto out;
			}
		} else if (strcmp(name + strlen(family), "_count") == 0) {
			if (in_hist_series != 2 || v != last_bucket) {
				snprintf(why, cap, "line %zu: _count is not "
				    "the +Inf bucket", lineno);
				goto out;
			}
			in_hist_series = 0;
		} else {
			snprintf(why, cap, "line %zu: %.60s in histogram %.60s",
			    lineno, name, family);
			goto out;
		}
	}
	ret = 0;
 out:
	regfree(&sample);
	regfree(&help);
	regfree(&type);
	return ret;
}

/* Value of the sample line starting with `series ` (name plus labels);
 * -1 when absent. */
static double
prom_value(const char *text, const char *series)
{
	size_t n = strlen(series);
	const char *p = text;

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
	return -1;
}

#endif
