/* SPDX-License-Identifier: MIT */
/*
 * Which host pages of a sliding window one connection has sent: the
 * urgent thread's record of its readahead run, so it neither answers a
 * request twice on the same socket nor mistakes a page the background
 * claimed (which may sit behind the main socket's backlog) for its own.
 * Global host page numbers; a page that falls out of the window's back is
 * forgotten (answered again, a duplicate the destination drops).
 */
#ifndef PCOPY_SENT_WINDOW_H
#define PCOPY_SENT_WINDOW_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define SENT_WINDOW_PAGES 1024u
#define SENT_WINDOW_WORDS (SENT_WINDOW_PAGES / 64)

struct sent_window {
	uint64_t lo;			/* first page of the window, a multiple of 64 */
	uint64_t bits[SENT_WINDOW_WORDS];
};

/* Empty the window and place it at page g. */
static inline void sent_window_reset(struct sent_window *w, uint64_t g)
{
	w->lo = g & ~(uint64_t)63;
	memset(w->bits, 0, sizeof(w->bits));
}

/* Record page g as sent; the window slides forward when g is past it. */
static inline void sent_window_mark(struct sent_window *w, uint64_t g)
{
	if (g < w->lo)
		return;
	if (g - w->lo >= SENT_WINDOW_PAGES) {
		uint64_t drop = (g - w->lo - SENT_WINDOW_PAGES) / 64 + 1;

		if (drop >= SENT_WINDOW_WORDS) {
			memset(w->bits, 0, sizeof(w->bits));
		} else {
			memmove(w->bits, w->bits + drop,
				(SENT_WINDOW_WORDS - drop) * sizeof(w->bits[0]));
			memset(w->bits + SENT_WINDOW_WORDS - drop, 0,
			       drop * sizeof(w->bits[0]));
		}
		w->lo += drop * 64;
	}
	w->bits[(g - w->lo) / 64] |= UINT64_C(1) << ((g - w->lo) % 64);
}

/* Was page g recorded (and is it still in the window)? */
static inline bool sent_window_test(const struct sent_window *w, uint64_t g)
{
	return g >= w->lo && g - w->lo < SENT_WINDOW_PAGES &&
	       (w->bits[(g - w->lo) / 64] >> ((g - w->lo) % 64) & 1);
}

#endif
