/* SPDX-License-Identifier: MIT */
/*
 * Measurement helpers: clocks, CPU time, peak RSS (VmHWM, reset per run via
 * /proc/self/clear_refs), and latency sample sets with quantiles.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Quantiles stored per run for the CDF plot. */
const double b_cdf_q[22] = {
	0.01, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90,
	0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99999, 1.0
};

uint64_t b_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t b_proc_cpu_ns(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) *
		       1000000000ull +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ull;
}

uint64_t b_thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int b_reset_hwm(void)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, "5", 1) != 1)
		rc = -errno;
	close(fd);
	return rc;
}

static uint64_t status_kib(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	size_t kl = strlen(key);
	unsigned long long v = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = strtoull(line + kl + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v * 1024ull;
}

uint64_t b_vm_rss(void)
{
	return status_kib("VmRSS");
}

uint64_t b_vm_hwm(void)
{
	return status_kib("VmHWM");
}

uint64_t b_region_rss(const void *addr, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	uintptr_t want = (uintptr_t)addr;
	bool in = false;
	uint64_t rss = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		unsigned long long kib;

		/* A VMA header line starts "lo-hi perms ..."; the region may have
		 * been split into several VMAs, so sum every VMA inside it. */
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
			in = lo >= want && lo < want + len;
			continue;
		}
		if (in && sscanf(line, "Rss: %llu kB", &kib) == 1)
			rss += kib * 1024ull;
	}
	fclose(f);
	return rss;
}

void b_warm_memory(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return;
	memset(p, 1, n);
	munmap(p, n);
}

int b_lat_init(struct b_lat *l, size_t cap)
{
	l->n = 0;
	l->cap = cap;
	l->v = NULL;
	if (cap == 0)
		return 0;
	l->v = malloc(cap * sizeof(*l->v));
	if (!l->v)
		return -ENOMEM;
	/* Touch it now, so its pages count before the run's RSS baseline. */
	memset(l->v, 0, cap * sizeof(*l->v));
	return 0;
}

void b_lat_free(struct b_lat *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

int b_lat_merge(struct b_lat *dst, const struct b_lat *src)
{
	if (dst->n + src->n > dst->cap) {
		size_t cap = dst->n + src->n;
		uint32_t *v = realloc(dst->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		dst->v = v;
		dst->cap = cap;
	}
	if (src->n)
		memcpy(dst->v + dst->n, src->v, src->n * sizeof(*src->v));
	dst->n += src->n;
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

void b_lat_sort(struct b_lat *l)
{
	if (l->n > 1)
		qsort(l->v, l->n, sizeof(*l->v), cmp_u32);
}

/* Nearest-rank quantile: the smallest sample with at least q of them <= it. */
uint64_t b_lat_q(const struct b_lat *l, double q)
{
	size_t i;

	if (l->n == 0)
		return 0;
	if (q >= 1.0)
		return l->v[l->n - 1];
	i = (size_t)(q * (double)l->n);
	if (i >= l->n)
		i = l->n - 1;
	return l->v[i];
}

void b_result_fill_lat(struct b_result *r, struct b_lat *lat)
{
	b_lat_sort(lat);
	r->faults = lat->n;
	r->p50_us = b_lat_q(lat, 0.50) / 1e3;
	r->p99_us = b_lat_q(lat, 0.99) / 1e3;
	r->p999_us = b_lat_q(lat, 0.999) / 1e3;
	r->max_us = b_lat_q(lat, 1.0) / 1e3;
	r->has_cdf = lat->n > 0;
	for (unsigned i = 0; i < sizeof(b_cdf_q) / sizeof(b_cdf_q[0]); i++)
		r->cdf_us[i] = b_lat_q(lat, b_cdf_q[i]) / 1e3;
}
