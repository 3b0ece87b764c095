/* SPDX-License-Identifier: MIT */
/*
 * pcopy_version() and pcopy_strerror(): static strings, safe from any thread.
 * Errors with a library-specific meaning get their own text; the rest fall
 * back to the C library's description.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "postcopy.h"

/* The library's version string. Any thread. */
const char *pcopy_version(void)
{
	return PCOPY_VERSION_STRING;
}

/* What each errno means when this library returns it. */
static const struct {
	int err;
	const char *msg;
} err_table[] = {
	{ EPROTO,     "protocol error: invalid message from peer" },
	{ EBADMSG,    "integrity check failed (crc mismatch)" },
	{ ECONNRESET, "connection closed by peer" },
	{ EPIPE,      "connection closed by peer while sending" },
	{ ETIMEDOUT,  "timed out waiting for peer" },
	{ ECANCELED,  "operation cancelled (handle stopping)" },
	{ EMSGSIZE,   "message too large for the wire format" },
	{ EOPNOTSUPP, "feature not supported by this kernel or memory type" },
	{ ENOSYS,     "userfaultfd not available" },
	{ EINVAL,     "invalid argument" },
	{ ENOMEM,     "out of memory" },
};

/*
 * A static description of err (negative or positive errno). Never NULL.
 * Any thread: strerrordesc_np() returns static strings, unlike strerror().
 */
const char *pcopy_strerror(int err)
{
	const char *s;
	size_t i;

	if (err == 0)
		return "success";
	if (err == INT_MIN)
		return "unknown error";
	if (err < 0)
		err = -err;
	for (i = 0; i < sizeof(err_table) / sizeof(err_table[0]); i++)
		if (err_table[i].err == err)
			return err_table[i].msg;
	s = strerrordesc_np(err);
	return s ? s : "unknown error";
}
