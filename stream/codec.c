/* SPDX-License-Identifier: MIT */
/*
 * Page codecs: the zero-page test and zlib compress/decompress of one run of
 * target pages. Decompression trusts nothing: the output is bounded to the
 * caller's buffer and must come out at exactly the expected size.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "wire.h"

struct codec_zlib {
	z_stream s;
	bool compress;		/* deflate context, else inflate */
};

/*
 * True if the n bytes at p are all zero. Reads 64-bit words through memcpy
 * (one load each, no alignment assumption), eight words per step so the
 * common non-zero page exits within the first cache line. Any thread.
 */
bool codec_is_zero(const void *p, size_t n)
{
	const unsigned char *c = p;
	size_t i = 0;

	for (; i + 64 <= n; i += 64) {
		uint64_t w[8];

		memcpy(w, c + i, sizeof(w));
		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return false;
	}
	for (; i + 8 <= n; i += 8) {
		uint64_t w;

		memcpy(&w, c + i, sizeof(w));
		if (w)
			return false;
	}
	for (; i < n; i++)	/* n should be a multiple of 8; be safe anyway */
		if (c[i])
			return false;
	return true;
}

/*
 * Create a deflate (compress = true, level -1..9) or inflate context.
 * Returns 0, -EINVAL (bad level) or -ENOMEM. Caller's thread; a context is
 * then used by one thread at a time.
 */
int codec_zlib_new(struct codec_zlib **zp, bool compress, int level)
{
	struct codec_zlib *z;
	int ret;

	*zp = NULL;
	if (compress && (level < Z_DEFAULT_COMPRESSION || level > Z_BEST_COMPRESSION))
		return -EINVAL;
	z = calloc(1, sizeof(*z));
	if (!z)
		return -ENOMEM;
	z->compress = compress;
	if (compress)
		ret = deflateInit(&z->s, level);
	else
		ret = inflateInit(&z->s);
	if (ret != Z_OK) {
		free(z);
		return ret == Z_MEM_ERROR ? -ENOMEM : -EINVAL;
	}
	*zp = z;
	return 0;
}

/* Free a context; accepts NULL. */
void codec_zlib_free(struct codec_zlib *z)
{
	if (!z)
		return;
	if (z->compress)
		deflateEnd(&z->s);
	else
		inflateEnd(&z->s);
	free(z);
}

/*
 * Compress n bytes into dst (capacity cap). Output space is limited to
 * n - 1 bytes, so deflate stops as soon as the result cannot be shorter than
 * the input. Returns the compressed length, 0 if not shorter (send RAW), or
 * -errno. Sender thread.
 */
long codec_zlib_compress(struct codec_zlib *z, const void *src, size_t n,
			 void *dst, size_t cap)
{
	size_t room;
	int ret;

	if (!z || !z->compress)
		return -EINVAL;
	if (n < 2 || n > UINT_MAX)
		return n > UINT_MAX ? -EINVAL : 0;
	room = cap < n - 1 ? cap : n - 1;
	if (room > UINT_MAX)
		room = UINT_MAX;
	if (deflateReset(&z->s) != Z_OK)
		return -EINVAL;
	z->s.next_in = (Bytef *)(uintptr_t)src;	/* zlib does not write it */
	z->s.avail_in = (uInt)n;
	z->s.next_out = dst;
	z->s.avail_out = (uInt)room;
	ret = deflate(&z->s, Z_FINISH);
	if (ret == Z_STREAM_END)
		return (long)z->s.total_out;
	if (ret == Z_OK || ret == Z_BUF_ERROR)
		return 0;	/* ran out of room: not worth it */
	return -EINVAL;
}

__attribute__((format(printf, 4, 5)))
static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

/*
 * Inflate src into dst, exactly `want` bytes, the stream ending exactly at the
 * end of src. zlib only ever writes into [next_out, next_out + avail_out), so
 * giving it dst/want bounds every write; to tell "exactly want" from "more
 * than want" once dst is full, inflate continues into a one-byte scratch
 * buffer: a byte landing there means the stream is too long (a zlib bomb).
 * The zlib wrapper's adler32 is verified by inflate itself. Returns 0, -EPROTO
 * with a message, or -ENOMEM. Receiver thread.
 */
int codec_zlib_decompress(struct codec_zlib *z, const void *src, size_t len,
			  void *dst, size_t want, char *err, size_t errlen)
{
	unsigned char scratch[1];
	bool in_scratch = false;
	int ret;

	if (!z || z->compress)
		return fail(-EINVAL, err, errlen, "zlib: not an inflate context");
	if (len > UINT_MAX || want > UINT_MAX)
		return fail(-EPROTO, err, errlen,
			    "zlib: sizes %zu -> %zu too large", len, want);
	if (inflateReset(&z->s) != Z_OK)
		return fail(-EINVAL, err, errlen, "zlib: inflateReset failed");
	z->s.next_in = (Bytef *)(uintptr_t)src;	/* zlib does not write it */
	z->s.avail_in = (uInt)len;
	z->s.next_out = dst;
	z->s.avail_out = (uInt)want;

	for (;;) {
		ret = inflate(&z->s, Z_NO_FLUSH);
		if (ret == Z_STREAM_END)
			break;
		if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT)
			return fail(-EPROTO, err, errlen,
				    "zlib: corrupt stream (%s)",
				    ret == Z_NEED_DICT ? "needs a dictionary" :
				    z->s.msg ? z->s.msg : "data error");
		if (ret == Z_MEM_ERROR)
			return fail(-ENOMEM, err, errlen, "zlib: out of memory");
		if (ret != Z_OK && ret != Z_BUF_ERROR)
			return fail(-EPROTO, err, errlen,
				    "zlib: inflate failed (%d)", ret);
		if (z->s.avail_out == 0) {
			if (in_scratch)
				return fail(-EPROTO, err, errlen,
					    "zlib: output longer than %zu bytes",
					    want);
			/* dst is full: only the stream's end may follow. */
			in_scratch = true;
			z->s.next_out = scratch;
			z->s.avail_out = sizeof(scratch);
			continue;
		}
		if (z->s.avail_in == 0)
			return fail(-EPROTO, err, errlen,
				    "zlib: truncated stream (%lu of %zu bytes "
				    "produced)", in_scratch ? (unsigned long)want :
				    (unsigned long)z->s.total_out, want);
		/* Input and output room left but no progress: cannot happen
		 * with Z_NO_FLUSH; refuse rather than loop. */
		if (ret == Z_BUF_ERROR)
			return fail(-EPROTO, err, errlen, "zlib: stream stalled");
	}
	if (in_scratch && z->s.avail_out == 0)
		return fail(-EPROTO, err, errlen,
			    "zlib: output longer than %zu bytes", want);
	if (!in_scratch && z->s.avail_out != 0)
		return fail(-EPROTO, err, errlen,
			    "zlib: output %zu bytes, want %zu",
			    want - z->s.avail_out, want);
	if (z->s.avail_in != 0)
		return fail(-EPROTO, err, errlen,
			    "zlib: %u trailing bytes after the stream",
			    z->s.avail_in);
	return 0;
}
