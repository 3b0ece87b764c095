/* SPDX-License-Identifier: MIT */
/*
 * Atomic bitmaps, one bit per host page (`requested`, `received`). The fault
 * thread and the receiver touch the same words concurrently, so every access
 * is an atomic on a 64-bit word.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

/* Returns 0 or -ENOMEM. Caller's thread (create). */
int dbm_init(struct dest_bitmap *b, uint64_t nbits)
{
	size_t words = (nbits + 63) / 64;

	b->w = calloc(words ? words : 1, sizeof(*b->w));
	if (!b->w)
		return -ENOMEM;
	b->nbits = nbits;
	return 0;
}

/* Frees the words; accepts a zeroed bitmap. Destroy only. */
void dbm_free(struct dest_bitmap *b)
{
	free(b->w);
	b->w = NULL;
	b->nbits = 0;
}

/*
 * Sequentially consistent, not just acquire: besides "a reader that sees
 * `received` set sees the placed page", the fault thread (set `requested`,
 * read `received`) and the receiver (set `received`, read `requested`) form
 * a Dekker pair that lets the receiver place with DONTWAKE; on x86 a
 * seq_cst load is a plain load. Returns the bit. Any thread.
 */
bool dbm_test(const struct dest_bitmap *b, uint64_t i)
{
	uint64_t w = atomic_load_explicit(&b->w[i / 64], memory_order_seq_cst);

	return (w >> (i % 64)) & 1;
}

/* Returns the previous value of bit i. Any thread. */
bool dbm_test_and_set(struct dest_bitmap *b, uint64_t i)
{
	uint64_t m = 1ull << (i % 64);
	uint64_t old = atomic_fetch_or_explicit(&b->w[i / 64], m,
						memory_order_seq_cst);

	return (old & m) != 0;
}

/* First index >= from whose bit is `val`, else nbits. O(nbits/64). Any thread. */
uint64_t dbm_find(const struct dest_bitmap *b, uint64_t from, bool val)
{
	while (from < b->nbits) {
		uint64_t w = atomic_load_explicit(&b->w[from / 64],
						  memory_order_acquire);

		if (!val)
			w = ~w;
		w &= ~0ull << (from % 64);
		if (w) {
			uint64_t i = (from & ~63ull) + (uint64_t)__builtin_ctzll(w);

			return i < b->nbits ? i : b->nbits;
		}
		from = (from & ~63ull) + 64;
	}
	return b->nbits;
}
