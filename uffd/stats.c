/* SPDX-License-Identifier: MIT */
/*
 * Destination statistics: relaxed atomic counters bumped from the fault thread
 * and the receiver, and a log-linear fault-latency histogram (16 linear
 * sub-buckets per power of two: <= 6.25% relative error, 8 KiB, lock-free).
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static unsigned hist_index(uint64_t v)
{
	unsigned msb;

	if (v < (1u << DEST_HIST_SUB_BITS))
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return ((msb - DEST_HIST_SUB_BITS + 1) << DEST_HIST_SUB_BITS) +
	       (unsigned)((v >> (msb - DEST_HIST_SUB_BITS)) &
			  ((1u << DEST_HIST_SUB_BITS) - 1));
}

/* Largest value that falls into bucket i. */
static uint64_t hist_upper(unsigned i)
{
	unsigned msb, sub, sh;

	if (i < (1u << DEST_HIST_SUB_BITS))
		return i;
	msb = (i >> DEST_HIST_SUB_BITS) + DEST_HIST_SUB_BITS - 1;
	sub = i & ((1u << DEST_HIST_SUB_BITS) - 1);
	sh = msb - DEST_HIST_SUB_BITS;
	return ((((uint64_t)1 << DEST_HIST_SUB_BITS) + sub) << sh) +
	       (((uint64_t)1 << sh) - 1);
}

/* Add one sample. Receiver thread (any thread is safe). */
void dest_hist_add(struct dest_hist *h, uint64_t ns)
{
	uint64_t m = atomic_load_explicit(&h->max, memory_order_relaxed);

	atomic_fetch_add_explicit(&h->bucket[hist_index(ns)], 1,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&h->samples, 1, memory_order_relaxed);
	while (ns > m && !atomic_compare_exchange_weak_explicit(
				 &h->max, &m, ns, memory_order_relaxed,
				 memory_order_relaxed))
		;
}

/*
 * Returns the upper bound of the bucket holding quantile q (0 < q <= 1),
 * clamped to the exact maximum; 0 without samples. O(buckets). Any thread;
 * concurrent adds make it approximate, never out of range.
 */
uint64_t dest_hist_quantile(const struct dest_hist *h, double q)
{
	uint64_t n = 0, rank, seen = 0, max;
	unsigned i;

	for (i = 0; i < DEST_HIST_BUCKETS; i++)
		n += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
	if (!n)
		return 0;
	rank = (uint64_t)(q * (double)n);	/* ceil without libm */
	if ((double)rank < q * (double)n || rank < 1)
		rank++;
	max = atomic_load_explicit(&h->max, memory_order_relaxed);
	for (i = 0; i < DEST_HIST_BUCKETS; i++) {
		seen += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
		if (seen >= rank) {
			uint64_t u = hist_upper(i);

			return u < max ? u : max;
		}
	}
	return max;
}

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* Copy the current statistics into *st. Returns 0 or -EINVAL. Any thread. */
int pcopy_dest_stats(struct pcopy_dest *d, struct pcopy_stats *st)
{
	uint64_t start, end;

	if (!d || !st)
		return -EINVAL;
	memset(st, 0, sizeof(*st));
	st->host_pages_total = d->total_pages;
	st->host_pages_received = LD(d->received);
	st->pages_zero = LD(d->st.pages_zero);
	st->pages_raw = LD(d->st.pages_raw);
	st->pages_zlib = LD(d->st.pages_zlib);
	st->bytes_wire = LD(d->st.bytes_wire);
	st->bytes_payload = LD(d->st.bytes_payload);
	st->faults = LD(d->st.faults);
	st->requests = LD(d->st.requests);
	st->request_msgs = LD(d->st.request_msgs);
	st->duplicates = LD(d->st.duplicates);
	st->wakes = LD(d->st.wakes);
	st->copy_retries = LD(d->st.copy_retries);
	st->breaks = LD(d->st.breaks);
	st->resent_pages = LD(d->st.resent_pages);
	st->urgent_pages = LD(d->st.urgent_pages);
	st->lat_samples = LD(d->st.lat.samples);
	st->lat_p50_ns = dest_hist_quantile(&d->st.lat, 0.50);
	st->lat_p99_ns = dest_hist_quantile(&d->st.lat, 0.99);
	st->lat_p999_ns = dest_hist_quantile(&d->st.lat, 0.999);
	st->lat_max_ns = LD(d->st.lat.max);
	start = LD(d->start_ns);
	if (start) {
		end = LD(d->end_ns);
		st->elapsed_ns = (end ? end : pcopy_now_ns()) - start;
	}
	return 0;
}
