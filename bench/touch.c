/* SPDX-License-Identifier: MIT */
/*
 * Toucher threads: the application on the destination. They walk one shared
 * page order (sequential, random, or hot-set clusters), time the first access
 * to each page (the fault latency the application sees) and verify every
 * page they touch.
 */
#include "bench.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Pages taken from the shared cursor at once: few enough that threads share
 * the order evenly, enough that the cursor's cache line does not bounce on
 * every page. */
#define GRAB 4

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void shuffle(uint32_t *a, uint64_t n, uint64_t seed)
{
	for (uint64_t i = n; i > 1; i--) {
		uint64_t j = splitmix(&seed) % i;
		uint32_t x = a[i - 1];

		a[i - 1] = a[j];
		a[j] = x;
	}
}

int b_plan_build(struct b_touch_plan *p, enum b_order o, const struct b_opts *opt)
{
	uint64_t n = p->npages;

	p->order = NULL;
	p->norder = 0;
	p->threads = o == ORDER_NONE ? 0 : opt->touchers;
	if (o == ORDER_NONE || p->threads == 0)
		return 0;
	p->order = malloc(n * sizeof(*p->order));
	if (!p->order)
		return -ENOMEM;
	if (o == ORDER_SEQ || o == ORDER_RANDOM) {
		for (uint64_t i = 0; i < n; i++)
			p->order[i] = (uint32_t)i;
		if (o == ORDER_RANDOM)
			shuffle(p->order, n, 0x1234);
		p->norder = n;
		return 0;
	}
	/* Hot set: hot_pct% of the image in clusters of hot_cluster pages at
	 * pseudo-random places, touched cluster by cluster in random order,
	 * sequentially inside a cluster (working sets are clustered). */
	{
		uint64_t cl = opt->hot_cluster ? opt->hot_cluster : 1;
		uint64_t ncl = n / cl, want;
		uint32_t *cls;

		if (ncl == 0) {
			ncl = 1;
			cl = n;
		}
		want = (ncl * opt->hot_pct + 99) / 100;
		if (want == 0)
			want = 1;
		cls = malloc(ncl * sizeof(*cls));
		if (!cls) {
			free(p->order);
			p->order = NULL;
			return -ENOMEM;
		}
		for (uint64_t i = 0; i < ncl; i++)
			cls[i] = (uint32_t)i;
		shuffle(cls, ncl, 0x4242);
		for (uint64_t c = 0; c < want; c++)
			for (uint64_t k = 0; k < cl; k++)
				p->order[p->norder++] = (uint32_t)(cls[c] * cl + k);
		free(cls);
	}
	return 0;
}

void b_plan_free(struct b_touch_plan *p)
{
	free(p->order);
	p->order = NULL;
	p->norder = 0;
}

struct toucher {
	pthread_t tid;
	struct b_touchers *all;
	uint64_t t_first, t_last, touched, bad, first_bad;
	uint64_t cpu_ns;
	struct b_lat lat;
};

struct b_touchers {
	const struct b_touch_plan *plan;
	_Atomic uint64_t cursor;
	unsigned n;
	struct toucher t[B_MAX_TOUCHERS];
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	const struct b_touch_plan *p = t->all->plan;

	pthread_setname_np(pthread_self(), "bench-touch");
	for (;;) {
		uint64_t i = atomic_fetch_add(&t->all->cursor, GRAB);

		if (i >= p->norder)
			break;
		for (uint64_t k = i; k < i + GRAB && k < p->norder; k++) {
			uint64_t pg = p->order[k];
			const uint8_t *addr = p->base + pg * B_PAGE;
			uint64_t t0 = b_now_ns(), t1;

			/* The first access: a read, which faults on a missing page
			 * of a MISSING-registered mapping. */
			(void)*(const volatile uint64_t *)addr;
			t1 = b_now_ns();
			if (t1 - t0 >= B_FAULT_THRESHOLD_NS)
				b_lat_add(&t->lat, t1 - t0);
			if (!t->t_first)
				t->t_first = t1;
			if (!img_page_ok(pg, addr) && t->bad++ == 0)
				t->first_bad = pg;
			t->touched++;
		}
	}
	t->t_last = b_now_ns();
	t->cpu_ns = b_thread_cpu_ns();
	return NULL;
}

int b_touch_start(struct b_touchers **tp, const struct b_touch_plan *plan)
{
	struct b_touchers *all = calloc(1, sizeof(*all));
	unsigned want = plan->threads > B_MAX_TOUCHERS ? B_MAX_TOUCHERS : plan->threads;
	int rc = 0;

	if (!all)
		return -ENOMEM;
	all->plan = plan;
	atomic_init(&all->cursor, 0);
	for (unsigned i = 0; rc == 0 && i < want; i++) {
		all->t[i].all = all;
		rc = b_lat_init(&all->t[i].lat, plan->norder);
	}
	/* all->n counts started threads only, so a failure joins just those. */
	for (unsigned i = 0; rc == 0 && i < want; i++) {
		rc = -pthread_create(&all->t[i].tid, NULL, toucher_main, &all->t[i]);
		if (rc == 0)
			all->n++;
	}
	if (rc < 0) {
		struct b_touch_result res;

		b_touch_join(all, &res);
		b_lat_free(&res.lat);
		return rc;
	}
	*tp = all;
	return 0;
}

void b_touch_join(struct b_touchers *all, struct b_touch_result *res)
{
	memset(res, 0, sizeof(*res));
	for (unsigned i = 0; i < all->n; i++) {
		struct toucher *t = &all->t[i];

		pthread_join(t->tid, NULL);
		if (t->t_first && (!res->t_first_ns || t->t_first < res->t_first_ns))
			res->t_first_ns = t->t_first;
		if (t->t_last > res->t_last_ns)
			res->t_last_ns = t->t_last;
		res->touched += t->touched;
		if (t->bad && !res->bad)
			res->first_bad_page = t->first_bad;
		res->bad += t->bad;
		res->cpu_ns += t->cpu_ns;
		b_lat_merge(&res->lat, &t->lat);
	}
	for (unsigned i = 0; i < B_MAX_TOUCHERS; i++)
		b_lat_free(&all->t[i].lat);
	free(all);
}
