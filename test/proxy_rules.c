/* SPDX-License-Identifier: MIT */
/*
 * Rules of the fault-injection proxy (test/proxy.h): their validation, and
 * the text form the standalone program and tests use.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

/* Returns 0 or -EINVAL. Any thread. */
int proxy_rule_check(const struct proxy_rule *r)
{
	if (r->dir != PROXY_A2B && r->dir != PROXY_B2A)
		return -EINVAL;
	switch (r->action) {
	case PROXY_CUT:
	case PROXY_SPLIT:
	case PROXY_SHUTDOWN:
		return 0;
	case PROXY_CUT_RANDOM:
		return r->arg > r->at ? 0 : -EINVAL;
	case PROXY_STALL:
		return r->arg >= 1 && r->arg <= 3600000 ? 0 : -EINVAL;
	case PROXY_THROTTLE:
		return r->arg >= 1 ? 0 : -EINVAL;
	case PROXY_FLIP:
		return r->arg >= 1 && r->arg <= 255 ? 0 : -EINVAL;
	case PROXY_REPLACE:
		return r->len >= 1 && r->len <= PROXY_DATA_MAX ? 0 : -EINVAL;
	case PROXY_DUP_FRAME:
	case PROXY_DROP_FRAME:
	case PROXY_CUT_FRAME:
		return r->type <= 255 ? 0 : -EINVAL;
	}
	return -EINVAL;
}

static int parse_num(const char *s, const char **end, uint64_t *v)
{
	char *e;

	errno = 0;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	*v = strtoull(s, &e, 0);
	if (errno)
		return -EINVAL;
	switch (*e) {
	case 'k': case 'K': *v <<= 10; e++; break;
	case 'm': case 'M': *v <<= 20; e++; break;
	case 'g': case 'G': *v <<= 30; e++; break;
	}
	*end = e;
	return 0;
}

static int parse_hex(const char *s, const char **end, struct proxy_rule *r)
{
	unsigned hi, lo;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	r->len = 0;
	while (s[0] && s[0] != ',') {
		if (r->len >= PROXY_DATA_MAX || !s[1] ||
		    sscanf(s, "%1x%1x", &hi, &lo) != 2)
			return -EINVAL;
		r->data[r->len++] = (uint8_t)(hi << 4 | lo);
		s += 2;
	}
	*end = s;
	return r->len ? 0 : -EINVAL;
}

__attribute__((format(printf, 3, 4)))
static int bad(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Returns 0 or -EINVAL with a message. Any thread. */
int proxy_parse_rule(const char *spec, struct proxy_rule *r, char *err,
		     size_t errlen)
{
	static const struct { const char *name; enum proxy_action a; } acts[] = {
		{ "cut-random", PROXY_CUT_RANDOM }, { "cut-frame", PROXY_CUT_FRAME },
		{ "cut", PROXY_CUT },
		{ "stall", PROXY_STALL }, { "throttle", PROXY_THROTTLE },
		{ "split", PROXY_SPLIT }, { "flip", PROXY_FLIP },
		{ "replace", PROXY_REPLACE }, { "dup-frame", PROXY_DUP_FRAME },
		{ "drop-frame", PROXY_DROP_FRAME }, { "shutdown", PROXY_SHUTDOWN },
	};
	const char *s = spec;
	bool has_arg = false;
	unsigned i;
	uint64_t v;

	memset(r, 0, sizeof(*r));
	if (!strncmp(s, "a2b:", 4))
		r->dir = PROXY_A2B;
	else if (!strncmp(s, "b2a:", 4))
		r->dir = PROXY_B2A;
	else
		return bad(err, errlen, "rule '%s': want a2b: or b2a:", spec);
	s += 4;
	for (i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
		size_t n = strlen(acts[i].name);

		if (!strncmp(s, acts[i].name, n) &&
		    (s[n] == '\0' || s[n] == '@' || s[n] == '=' || s[n] == ',')) {
			r->action = acts[i].a;
			s += n;
			break;
		}
	}
	if (!r->action)
		return bad(err, errlen, "rule '%s': unknown action", spec);
	if (*s == '@' && parse_num(s + 1, &s, &r->at))
		return bad(err, errlen, "rule '%s': bad position", spec);
	if (*s == '=') {
		has_arg = true;
		if (r->action == PROXY_REPLACE ? parse_hex(s + 1, &s, r) :
		    parse_num(s + 1, &s, &r->arg))
			return bad(err, errlen, "rule '%s': bad value", spec);
	}
	while (*s == ',') {
		if (!strncmp(s, ",conn=", 6) && !parse_num(s + 6, &s, &v) &&
		    v <= PROXY_CONNS_MAX)
			r->conn = (unsigned)v;
		else if (!strncmp(s, ",type=", 6) && !parse_num(s + 6, &s, &v) &&
			 v <= 255)
			r->type = (unsigned)v;
		else
			return bad(err, errlen, "rule '%s': bad option at '%s'",
				   spec, s);
	}
	if (*s)
		return bad(err, errlen, "rule '%s': trailing '%s'", spec, s);
	if (r->action == PROXY_FLIP && !has_arg)
		r->arg = 0x01;
	if (proxy_rule_check(r))
		return bad(err, errlen, "rule '%s': value out of range", spec);
	return 0;
}
