/* SPDX-License-Identifier: MIT */
/*
 * postcopy-demo: the main job end to end. Generates an image (default 1 GiB,
 * ~25% zero pages), serves it from a source process over loopback TCP, and
 * lazily restores it here while toucher threads run on the memory, verifying
 * every page they touch. Prints progress and a summary; exit 0 only if every
 * byte of the restored image is right.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "postcopy.h"
#include "testlib.h"

struct demo_opts {
	size_t mib;
	unsigned touchers;
	double hot_fraction;	/* touched first, by the threads */
	bool zlib;
	bool urgent;
	enum tl_link link;
};

struct toucher {
	pthread_t tid;
	unsigned index, count;
	const struct pcopy_region *region;
	uint64_t pages;		/* pages this thread touches */
	unsigned long bad;
	uint64_t first_bad_page;
	uint64_t max_touch_ns;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Touch a random hot set, like a guest that starts running right away. */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	uint64_t npages = t->region->length / TL_PAGE;
	unsigned seed = 42 + t->index;

	for (uint64_t i = 0; i < t->pages; i++) {
		uint64_t pg = (((uint64_t)rand_r(&seed) << 31) ^ (uint64_t)rand_r(&seed)) % npages;
		uint64_t t0 = now_ns(), dt;

		if (tl_page_check(0, pg, (char *)t->region->host + pg * TL_PAGE) >= 0 &&
		    t->bad++ == 0)
			t->first_bad_page = pg;
		dt = now_ns() - t0;
		if (dt > t->max_touch_ns)
			t->max_touch_ns = dt;
	}
	return NULL;
}

static void usage(const char *argv0)
{
	printf("usage: %s [-m MiB] [-t touchers] [-H hot-fraction] [-z] [-u]\n"
	       "  -m  image size in MiB (default 1024)\n"
	       "  -t  toucher threads (default 2)\n"
	       "  -H  fraction of pages the touchers read at random (default 0.10)\n"
	       "  -z  offer zlib compression\n"
	       "  -u  Unix socket instead of loopback TCP\n"
	       "  -U  no urgent connection (requests share the background stream)\n", argv0);
}

static int parse(int argc, char **argv, struct demo_opts *o)
{
	int c;

	*o = (struct demo_opts){ .mib = 1024, .touchers = 2, .hot_fraction = 0.10,
				 .link = TL_LINK_TCP, .urgent = true };
	while ((c = getopt(argc, argv, "m:t:H:zuUh")) != -1) {
		switch (c) {
		case 'm': o->mib = strtoul(optarg, NULL, 0); break;
		case 't': o->touchers = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'H': o->hot_fraction = strtod(optarg, NULL); break;
		case 'z': o->zlib = true; break;
		case 'u': o->link = TL_LINK_UNIX; break;
		case 'U': o->urgent = false; break;
		case 'h': usage(argv[0]); exit(0);
		default: usage(argv[0]); return -1;
		}
	}
	if (o->mib == 0 || o->touchers > 64 || o->hot_fraction < 0 || o->hot_fraction > 1) {
		usage(argv[0]);
		return -1;
	}
	return 0;
}

static void print_progress(const struct pcopy_stats *st)
{
	double pct = st->host_pages_total ?
		100.0 * (double)st->host_pages_received / (double)st->host_pages_total : 0;
	double secs = (double)st->elapsed_ns / 1e9;

	printf("  %5.1f%%  %7.2f s  %8.1f MB/s  faults %llu  requests %llu\n", pct, secs,
	       secs > 0 ? (double)st->bytes_payload / secs / 1e6 : 0,
	       (unsigned long long)st->faults, (unsigned long long)st->requests);
	fflush(stdout);
}

static void print_summary(const struct demo_opts *o, const struct pcopy_stats *st,
			  const struct toucher *ts, unsigned long bad_total)
{
	double secs = (double)st->elapsed_ns / 1e9;
	uint64_t max_touch = 0;

	for (unsigned i = 0; i < o->touchers; i++)
		if (ts[i].max_touch_ns > max_touch)
			max_touch = ts[i].max_touch_ns;
	printf("\nsummary\n");
	printf("  image            %zu MiB over %s%s%s\n", o->mib,
	       o->link == TL_LINK_TCP ? "loopback TCP" : "a Unix socket",
	       o->urgent ? " + an urgent connection" : "", o->zlib ? " with zlib" : "");
	printf("  restore time     %.3f s (%.2f GB/s)\n", secs,
	       secs > 0 ? (double)(o->mib << 20) / secs / 1e9 : 0);
	printf("  pages            %llu zero, %llu raw, %llu zlib (4 KiB)\n",
	       (unsigned long long)st->pages_zero, (unsigned long long)st->pages_raw,
	       (unsigned long long)st->pages_zlib);
	printf("  wire bytes       %.1f MiB\n", (double)st->bytes_wire / (1 << 20));
	printf("  faults           %llu, %llu host pages requested in %llu messages\n",
	       (unsigned long long)st->faults, (unsigned long long)st->requests,
	       (unsigned long long)st->request_msgs);
	printf("  fault latency    p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us"
	       " (%llu samples)\n", st->lat_p50_ns / 1e3, st->lat_p99_ns / 1e3,
	       st->lat_p999_ns / 1e3, st->lat_max_ns / 1e3,
	       (unsigned long long)st->lat_samples);
	printf("  slowest touch    %.1f us\n", max_touch / 1e3);
	printf("  duplicates       %llu\n", (unsigned long long)st->duplicates);
	printf("  verification     %s\n", bad_total ? "FAILED" : "every byte matches the source");
}

int main(int argc, char **argv)
{
	struct demo_opts o;
	struct tl_source_cfg cfg = { 0 };
	struct tl_mapping map;
	struct pcopy_region region;
	struct tl_source_proc sp;
	struct pcopy_dest_opts dopts;
	struct pcopy_dest *d = NULL;
	struct pcopy_stats st;
	struct toucher *ts;
	unsigned long bad = 0;
	int rc;

	if (parse(argc, argv, &o) < 0)
		return 2;
	cfg.nregions = 1;
	cfg.names[0] = "ram";
	cfg.lengths[0] = o.mib << 20;
	cfg.page_sizes[0] = TL_PAGE;
	cfg.zlib = o.zlib;
	cfg.link = o.link;
	cfg.urgent = o.urgent;

	printf("postcopy-demo (libpostcopy %s): lazy restore of a %zu MiB image\n",
	       pcopy_version(), o.mib);
	rc = tl_map(TL_MEM_ANON, cfg.lengths[0], &map);
	if (rc < 0) {
		fprintf(stderr, "mmap %zu MiB: %s\n", o.mib, strerror(-rc));
		return 1;
	}
	tl_regions(&cfg, &map, &region);
	pcopy_dest_opts_init(&dopts);
	rc = pcopy_dest_create(&d, &region, 1, &dopts);
	if (rc < 0) {
		fprintf(stderr, "pcopy_dest_create: %s\n", pcopy_strerror(rc));
		return 1;
	}
	rc = tl_source_spawn(&cfg, &sp);
	if (rc < 0) {
		fprintf(stderr, "starting the source: %s\n", strerror(-rc));
		return 1;
	}
	rc = pcopy_dest_start(d, sp.fd);
	if (rc == 0 && sp.urgent_fd >= 0)
		rc = pcopy_dest_add_urgent(d, sp.urgent_fd);
	if (rc < 0) {
		fprintf(stderr, "starting the restore: %s: %s\n", pcopy_strerror(rc),
			pcopy_dest_error(d));
		return 1;
	}
	printf("source pid %d connected; %u toucher threads reading %.0f%% of the pages"
	       " at random while the image streams\n", (int)sp.pid, o.touchers,
	       o.hot_fraction * 100);

	ts = calloc(o.touchers ? o.touchers : 1, sizeof(*ts));
	for (unsigned i = 0; i < o.touchers; i++) {
		ts[i].index = i;
		ts[i].count = o.touchers;
		ts[i].region = &region;
		ts[i].pages = (uint64_t)((double)(cfg.lengths[0] / TL_PAGE) *
					 o.hot_fraction / o.touchers);
		pthread_create(&ts[i].tid, NULL, toucher_main, &ts[i]);
	}
	while ((rc = pcopy_dest_wait(d, 500)) == -ETIMEDOUT) {
		pcopy_dest_stats(d, &st);
		print_progress(&st);
	}
	for (unsigned i = 0; i < o.touchers; i++) {
		pthread_join(ts[i].tid, NULL);
		bad += ts[i].bad;
	}
	if (rc < 0) {
		fprintf(stderr, "restore failed: %s: %s\n", pcopy_strerror(rc),
			pcopy_dest_error(d));
		pcopy_dest_destroy(d);
		return 1;
	}
	pcopy_dest_stats(d, &st);
	print_progress(&st);
	/* Completion means every page was placed: check all of them. */
	for (uint64_t pg = 0; pg < cfg.lengths[0] / TL_PAGE; pg++)
		if (tl_page_check(0, pg, (char *)map.addr + pg * TL_PAGE) >= 0)
			bad++;
	print_summary(&o, &st, ts, bad);
	if (tl_source_wait(&sp) != 0) {
		fprintf(stderr, "the source process did not finish cleanly\n");
		bad++;
	}
	pcopy_dest_destroy(d);
	tl_unmap(&map);
	free(ts);
	return bad ? 1 : 0;
}
