/* SPDX-License-Identifier: MIT */
/*
 * Where the source's pages come from: caller memory (a pointer, no copy), or
 * a snapshot file read ahead in windows, its holes found with SEEK_DATA /
 * SEEK_HOLE one extent at a time and never read.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "source.h"

/*
 * Allocate a window of `cap` bytes (a multiple of 4096; 0 for none: memory
 * regions only); file bytes read are added to *bytes_read. Returns 0 or
 * -ENOMEM. The thread that owns the window (or create).
 */
int src_window_init(struct src_window *w, size_t cap,
		    _Atomic uint64_t *bytes_read)
{
	memset(w, 0, sizeof(*w));
	w->region = -1;
	w->ext_region = -1;
	w->bytes_read = bytes_read;
	if (!cap)
		return 0;
	/* Page-aligned: cheap, and keeps the door open for O_DIRECT. */
	if (posix_memalign((void **)&w->buf, 4096, cap))
		return -ENOMEM;
	w->hole = calloc((cap / PCOPY_TARGET_PAGE + 63) / 64, sizeof(uint64_t));
	if (!w->hole) {
		free(w->buf);
		w->buf = NULL;
		return -ENOMEM;
	}
	w->cap = cap;
	return 0;
}

/* Free the window buffers. Its owner, or destroy. */
void src_window_fini(struct src_window *w)
{
	free(w->buf);
	free(w->hole);
	w->buf = NULL;
	w->hole = NULL;
}

/*
 * The data/hole extent containing file offset pos, cached per region so a
 * run of pages costs two lseeks per extent, not per page. A filesystem
 * without SEEK_DATA support reports the whole file as data, which is still
 * correct (just slower); past EOF everything is a hole.
 */
static int file_extent(struct src_window *w, unsigned ri,
		       const struct src_region *r, off_t pos)
{
	off_t d, h;

	if (w->ext_region == (int)ri && pos >= w->ext_lo && pos < w->ext_hi)
		return 0;
	w->ext_region = -1;
	d = lseek(r->fd, pos, SEEK_DATA);
	if (d < 0 && errno == ENXIO) {
		/* no data at or after pos: a hole up to EOF and beyond */
		w->ext_data = false;
		w->ext_lo = pos;
		w->ext_hi = INT64_MAX;
	} else if (d < 0 && errno != EINVAL && errno != EOPNOTSUPP) {
		return -errno;
	} else if (d < 0) {
		w->ext_data = true;	/* no SEEK_DATA here: treat as data */
		w->ext_lo = pos;
		w->ext_hi = INT64_MAX;
	} else if (d > pos) {
		w->ext_data = false;
		w->ext_lo = pos;
		w->ext_hi = d;
	} else {
		h = lseek(r->fd, pos, SEEK_HOLE);
		if (h < 0 && errno != ENXIO && errno != EINVAL)
			return -errno;
		w->ext_data = true;
		w->ext_lo = pos;
		/* ENXIO here means the file shrank under us: read, get EOF */
		w->ext_hi = (h < 0 || h <= pos) ? INT64_MAX : h;
	}
	w->ext_region = (int)ri;
	return 0;
}

/* Read exactly n bytes at off, zero-filling past EOF. Returns 0 or -errno. */
static int read_full(int fd, uint8_t *dst, size_t n, off_t off,
		     _Atomic uint64_t *count)
{
	while (n) {
		ssize_t k = pread(fd, dst, n, off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0) {		/* EOF: a short file reads as zeros */
			memset(dst, 0, n);
			return 0;
		}
		atomic_fetch_add_explicit(count, (uint64_t)k,
					  memory_order_relaxed);
		dst += k;
		n -= (size_t)k;
		off += k;
	}
	return 0;
}

/*
 * Fill the window with [lo, lo + len) of region ri: holes are zero-filled
 * and marked per target page, data extents are read with one pread each.
 */
static int window_fill(struct pcopy_source *s, struct src_window *w,
		       unsigned ri, size_t lo, size_t len)
{
	struct src_region *r = &s->reg[ri];
	off_t start = r->file_offset + (off_t)lo;
	off_t end = start + (off_t)len;
	off_t pos = start;
	int err;

	w->region = -1;
	memset(w->hole, 0, (w->cap / PCOPY_TARGET_PAGE + 63) / 64 * 8);
	while (pos < end) {
		off_t stop;
		size_t boff = (size_t)(pos - start), blen;

		err = file_extent(w, ri, r, pos);
		if (err) {
			src_end(s, err, true,
				"region '%s': SEEK_DATA/SEEK_HOLE at file offset %lld failed: %s",
				r->name, (long long)pos, strerror(-err));
			return err;
		}
		stop = w->ext_hi < end ? w->ext_hi : end;
		blen = (size_t)(stop - pos);
		if (w->ext_data) {
			err = read_full(r->fd, w->buf + boff, blen, pos,
					w->bytes_read);
			if (err) {
				src_end(s, err, true,
					"region '%s': reading %zu bytes at file offset %lld failed: %s",
					r->name, blen, (long long)pos,
					strerror(-err));
				return err;
			}
		} else {
			/* Only target pages lying wholly in the hole are
			 * known zero (file_offset need not be aligned). */
			size_t a = (boff + PCOPY_TARGET_PAGE - 1) / PCOPY_TARGET_PAGE;
			size_t b = (boff + blen) / PCOPY_TARGET_PAGE;

			memset(w->buf + boff, 0, blen);
			for (; a < b; a++)
				w->hole[a / 64] |= UINT64_C(1) << (a % 64);
		}
		pos = stop;
	}
	w->region = (int)ri;
	w->lo = lo;
	w->len = len;
	return 0;
}

/*
 * Make [off, off + len) of region ri readable (off and len multiples of
 * 4096, len <= the window size for file regions) and describe it in *v.
 * Memory regions cost nothing; file regions are served from the window,
 * refilled with up to a batch read ahead from off when it misses; frames
 * gathered in tx may point into the window, so they are sent first. Returns
 * 0, or -errno (a read error has ended the session with a message; a send
 * error is the caller's to report). The thread that owns tx.
 */
int src_backend_view(struct pcopy_source *s, struct src_tx *tx, unsigned ri,
		     size_t off, size_t len, struct src_view *v)
{
	struct src_region *r = &s->reg[ri];
	struct src_window *w = &tx->win;
	int err;

	if (r->mem) {
		v->data = r->mem + off;
		v->hole = NULL;
		v->hole_base = 0;
		return 0;
	}
	if (w->region != (int)ri || off < w->lo || off + len > w->lo + w->len) {
		size_t n = r->length - off;

		if (n > w->cap)
			n = w->cap;
		if (tx->niov && (err = src_tx_flush(tx)))
			return err;
		err = window_fill(s, w, ri, off, n);
		if (err)
			return err;
	}
	v->data = w->buf + (off - w->lo);
	v->hole = w->hole;
	v->hole_base = (off - w->lo) / PCOPY_TARGET_PAGE;
	return 0;
}
