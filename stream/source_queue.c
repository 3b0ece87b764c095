/* SPDX-License-Identifier: MIT */
/*
 * The source's request queue: host pages the destination asked for, served
 * before the background scan. Memory is bounded by the number of host pages
 * whatever a hostile destination sends, because duplicates are merged.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "source.h"

/*
 * Set up an empty queue for `total_pages` host pages (> 0). The ring starts
 * at min(SRC_QUEUE_INITIAL, total_pages) entries. Returns 0 or -ENOMEM.
 * Caller's thread (create).
 */
int src_queue_init(struct src_queue *q, uint64_t total_pages)
{
	memset(q, 0, sizeof(*q));
	if (total_pages == 0 || total_pages > SIZE_MAX / sizeof(uint64_t))
		return -EINVAL;
	q->limit = total_pages;
	q->cap = total_pages < SRC_QUEUE_INITIAL ? total_pages : SRC_QUEUE_INITIAL;
	q->ring = calloc(q->cap, sizeof(*q->ring));
	q->queued = calloc((total_pages + 63) / 64, sizeof(uint64_t));
	if (!q->ring || !q->queued) {
		free(q->ring);
		free(q->queued);
		return -ENOMEM;
	}
	pthread_mutex_init(&q->lock, NULL);
	{
		pthread_condattr_t ca;

		/* timed waits use CLOCK_MONOTONIC deadlines */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&q->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	atomic_init(&q->pending, 0);
	return 0;
}

/* Free the queue; no thread may use it any more. Caller's thread. */
void src_queue_fini(struct src_queue *q)
{
	if (!q->ring)
		return;
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->cond);
	free(q->ring);
	free(q->queued);
	q->ring = NULL;
	q->queued = NULL;
}

/* Double the ring (bounded by q->limit), unwrapping it. Called with the lock. */
static int queue_grow(struct src_queue *q)
{
	size_t ncap = q->cap * 2;
	uint64_t *nr;
	size_t first;

	if (ncap > q->limit)
		ncap = q->limit;
	assert(ncap > q->cap);	/* len < limit here, see src_queue_push */
	nr = malloc(ncap * sizeof(*nr));
	if (!nr)
		return -ENOMEM;
	first = q->cap - q->head;
	if (first > q->len)
		first = q->len;
	memcpy(nr, q->ring + q->head, first * sizeof(*nr));
	memcpy(nr + first, q->ring, (q->len - first) * sizeof(*nr));
	free(q->ring);
	q->ring = nr;
	q->cap = ncap;
	q->head = 0;
	return 0;
}

/*
 * Append n global host-page indices (each < limit), skipping those already
 * queued. Wakes a sender blocked in src_queue_wait_pop. Returns how many were
 * merged with an earlier entry, or -ENOMEM. Reader thread. O(n).
 */
long src_queue_push(struct src_queue *q, const uint64_t *pages, size_t n)
{
	long merged = 0;
	size_t i;
	int err = 0;

	pthread_mutex_lock(&q->lock);
	for (i = 0; i < n; i++) {
		uint64_t g = pages[i];
		uint64_t bit = UINT64_C(1) << (g % 64);

		assert(g < q->limit);
		if (q->queued[g / 64] & bit) {
			merged++;
			continue;
		}
		/* Every queued entry has its own `queued` bit, so len < limit
		 * here and growing is always possible up to the limit. */
		assert(q->len < q->limit);
		if (q->len == q->cap) {
			err = queue_grow(q);
			if (err)
				break;
		}
		q->ring[(q->head + q->len) % q->cap] = g;
		q->len++;
		q->queued[g / 64] |= bit;
	}
	atomic_store_explicit(&q->pending, q->len, memory_order_release);
	if (q->len)
		pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	return err ? err : merged;
}

/* Cheap check without the lock: may be stale by one push. Sender thread. */
bool src_queue_nonempty(struct src_queue *q)
{
	return atomic_load_explicit(&q->pending, memory_order_acquire) != 0;
}

/* Called with the lock and len > 0. */
static uint64_t queue_take(struct src_queue *q)
{
	uint64_t g = q->ring[q->head];

	q->head = (q->head + 1) % q->cap;
	q->len--;
	q->queued[g / 64] &= ~(UINT64_C(1) << (g % 64));
	atomic_store_explicit(&q->pending, q->len, memory_order_release);
	return g;
}

/*
 * Take the oldest entry without blocking. Returns true and sets *page, or
 * false when empty (the lock is not even taken then). Sender thread.
 */
bool src_queue_pop(struct src_queue *q, uint64_t *page)
{
	bool got = false;

	if (!src_queue_nonempty(q))
		return false;
	pthread_mutex_lock(&q->lock);
	if (q->len) {
		*page = queue_take(q);
		got = true;
	}
	pthread_mutex_unlock(&q->lock);
	return got;
}

/*
 * Block (on the condvar, never spinning) until an entry arrives, the queue
 * is closed, or deadline_ns passes (0: no deadline). Returns 1 with *page
 * set, 0 once closed, -ETIMEDOUT. Sender thread.
 */
int src_queue_wait_pop(struct src_queue *q, uint64_t *page,
		       uint64_t deadline_ns)
{
	struct timespec ts;
	int got = 0;

	if (deadline_ns) {
		ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
		ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
	}
	pthread_mutex_lock(&q->lock);
	while (!q->len && !q->closed) {
		if (!deadline_ns) {
			pthread_cond_wait(&q->cond, &q->lock);
		} else if (pthread_cond_timedwait(&q->cond, &q->lock, &ts) ==
			   ETIMEDOUT) {
			got = -ETIMEDOUT;
			break;
		}
	}
	if (q->len) {
		*page = queue_take(q);
		got = 1;
	}
	pthread_mutex_unlock(&q->lock);
	return got;
}

/*
 * Block until an entry is queued, the queue is closed, or deadline_ns passes
 * (the background throttle's sleep: a request cuts it short). Takes
 * nothing. Sender thread.
 */
void src_queue_wait(struct src_queue *q, uint64_t deadline_ns)
{
	struct timespec ts;
	unsigned kicks;

	ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
	ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
	pthread_mutex_lock(&q->lock);
	kicks = q->kicks;
	while (!q->len && !q->closed && q->kicks == kicks)
		if (pthread_cond_timedwait(&q->cond, &q->lock, &ts) ==
		    ETIMEDOUT)
			break;
	pthread_mutex_unlock(&q->lock);
}

/* End a sender's src_queue_wait early: something it waits for other than a
 * request happened (the urgent connection joined). Any thread. */
void src_queue_kick(struct src_queue *q)
{
	pthread_mutex_lock(&q->lock);
	q->kicks++;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

/* Wake the sender out of src_queue_wait_pop for good (the session ended)
 * or until src_queue_reset (a break). Any thread. */
void src_queue_close(struct src_queue *q)
{
	pthread_mutex_lock(&q->lock);
	q->closed = true;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

/*
 * Empty and reopen the queue for a resumed connection: requests of the old
 * one are re-sent by the destination. Caller's thread (resume), while no
 * library thread uses the queue. O(host pages / 64).
 */
void src_queue_reset(struct src_queue *q)
{
	pthread_mutex_lock(&q->lock);
	q->head = 0;
	q->len = 0;
	memset(q->queued, 0, (q->limit + 63) / 64 * sizeof(uint64_t));
	q->closed = false;
	atomic_store_explicit(&q->pending, 0, memory_order_release);
	pthread_mutex_unlock(&q->lock);
}

/* Current ring capacity in entries (never above the host-page count). */
size_t src_queue_capacity(struct src_queue *q)
{
	size_t c;

	pthread_mutex_lock(&q->lock);
	c = q->cap;
	pthread_mutex_unlock(&q->lock);
	return c;
}
