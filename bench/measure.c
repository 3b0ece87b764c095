/* SPDX-License-Identifier: MIT */
/*
 * Measurement helpers: clocks, CPU time, peak RSS (VmHWM, reset per run via
 * /proc/self/clear_refs), and latency sample sets with quantiles.
 */
#include "bench.h"

#include <dirent.h>
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

void *b_map_guarded(size_t len)
{
	uint8_t *p = mmap(NULL, len + 2 * B_PAGE, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	if (mprotect(p + B_PAGE, len, PROT_READ | PROT_WRITE) < 0) {
		munmap(p, len + 2 * B_PAGE);
		return NULL;
	}
	return p + B_PAGE;
}

void b_unmap_guarded(void *p, size_t len)
{
	if (p)
		munmap((uint8_t *)p - B_PAGE, len + 2 * B_PAGE);
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

/* One thread's comm and CPU ms from /proc/self/task/<tid>/stat. */
static int task_cpu(const char *tid, char *comm, size_t commlen, double *ms)
{
	char path[300], buf[512], *open_p, *close_p;
	unsigned long long ut = 0, st = 0;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%s/stat", tid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	/* comm may hold spaces and parentheses: take the last ')' */
	open_p = strchr(buf, '(');
	close_p = strrchr(buf, ')');
	if (!open_p || !close_p || close_p < open_p)
		return -EINVAL;
	snprintf(comm, commlen, "%.*s", (int)(close_p - open_p - 1), open_p + 1);
	/* after ") ": state(3) ... utime(14) stime(15) */
	if (sscanf(close_p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   &ut, &st) != 2)
		return -EINVAL;
	*ms = (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
	return 0;
}

struct task_seen {
	int tid;
	char comm[32];
	double ms;
};

struct b_task_sampler {
	pthread_t tid;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	unsigned n;
	struct task_seen t[64];
};

/* Record the CPU of every thread but main; a thread's last sample stays
 * after it exits. O(threads) file reads. */
static void sample_tasks(struct b_task_sampler *ts)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int self = (int)getpid();

	if (!d)
		return;
	while ((e = readdir(d))) {
		char comm[32];
		double ms = 0;
		int tid = atoi(e->d_name);
		unsigned i;

		if (tid <= 0 || tid == self ||
		    task_cpu(e->d_name, comm, sizeof(comm), &ms) < 0)
			continue;
		for (i = 0; i < ts->n && ts->t[i].tid != tid; i++)
			;
		if (i == ts->n) {
			if (ts->n == sizeof(ts->t) / sizeof(ts->t[0]))
				continue;
			ts->n++;
			ts->t[i].tid = tid;
		}
		snprintf(ts->t[i].comm, sizeof(ts->t[i].comm), "%s", comm);
		ts->t[i].ms = ms;
	}
	closedir(d);
}

static void *sampler_main(void *arg)
{
	struct b_task_sampler *ts = arg;

	pthread_setname_np(pthread_self(), "bench-sampler");
	pthread_mutex_lock(&ts->lock);
	while (!ts->stop) {
		struct timespec dl;

		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_nsec += 20 * 1000000L;	/* 50 Hz: cheap, and loses at
						   most 20 ms of an exiting thread */
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&ts->cond, &ts->lock, &dl);
		sample_tasks(ts);
	}
	pthread_mutex_unlock(&ts->lock);
	return NULL;
}

struct b_task_sampler *b_task_sampler_start(void)
{
	struct b_task_sampler *ts = calloc(1, sizeof(*ts));

	if (!ts)
		return NULL;
	pthread_mutex_init(&ts->lock, NULL);
	pthread_cond_init(&ts->cond, NULL);
	if (pthread_create(&ts->tid, NULL, sampler_main, ts) != 0) {
		free(ts);
		return NULL;
	}
	return ts;
}

void b_task_sampler_stop(struct b_task_sampler *ts, char *out, size_t len)
{
	size_t used = 0;

	if (!ts)
		return;		/* already stopped: keep what out holds */
	out[0] = 0;
	pthread_mutex_lock(&ts->lock);
	ts->stop = true;
	pthread_cond_signal(&ts->cond);
	pthread_mutex_unlock(&ts->lock);
	pthread_join(ts->tid, NULL);
	sample_tasks(ts);
	for (unsigned i = 0; i < ts->n; i++) {
		int w;

		if (ts->t[i].ms < 1 || strcmp(ts->t[i].comm, "bench-sampler") == 0)
			continue;
		w = snprintf(out + used, len - used, "%s%s/%d=%.0fms", used ? " " : "",
			     ts->t[i].comm, ts->t[i].tid, ts->t[i].ms);
		if (w < 0 || (size_t)w >= len - used)
			break;
		used += (size_t)w;
	}
	pthread_mutex_destroy(&ts->lock);
	pthread_cond_destroy(&ts->cond);
	free(ts);
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
