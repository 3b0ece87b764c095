/* SPDX-License-Identifier: MIT */
/*
 * restore-minimal: the smallest useful destination. It maps anonymous memory,
 * restores it lazily from the source listening on a Unix socket, reads every
 * byte from a second thread while the image arrives, and prints statistics.
 *
 *   cc restore-minimal.c $(pkg-config --cflags --libs postcopy) -pthread
 *   ./serve-minimal /tmp/pc.sock 64 &  ./restore-minimal /tmp/pc.sock 64
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <postcopy.h>

#define PAGE 4096

/*
 * The 64-bit word serve-minimal.c writes at byte offset `off` (keep the two
 * copies equal). Every fourth page is left zero, so that some pages travel
 * as ZERO frames.
 */
static uint64_t pattern(uint64_t off)
{
	if ((off / PAGE) % 4 == 3)
		return 0;
	return (off + 1) * 0x9e3779b97f4a7c15ull;
}

/* The library never prints; this callback shows its warnings and errors. */
static void log_stderr(void *opaque, enum pcopy_log_level level, const char *msg)
{
	(void)opaque;
	if (level <= PCOPY_LOG_WARN)
		fprintf(stderr, "restore-minimal: libpostcopy: %s\n", msg);
}

/*
 * Connect to the source. It may not be listening yet when both programs are
 * started together, so retry for a few seconds. Returns the fd or -errno.
 */
static int connect_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timespec pause = { 0, 50 * 1000 * 1000 };
	int fd, tries;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	for (tries = 0; tries < 200; tries++) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		close(fd);
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		nanosleep(&pause, NULL);
	}
	return -ETIMEDOUT;
}

struct reader {
	const uint64_t *mem;
	size_t len;
	size_t bad;	/* words that differ from the pattern */
};

/*
 * An application thread: touches pages far apart first (each touch faults and
 * waits for that page to be requested and placed), then checks every word.
 */
static void *reader_main(void *arg)
{
	struct reader *r = arg;
	size_t words = r->len / 8, i;
	long page;

	for (page = (long)(r->len / PAGE) - 1; page >= 0; page -= 97)
		if (r->mem[page * (PAGE / 8)] != pattern((uint64_t)page * PAGE))
			r->bad++;
	for (i = 0; i < words; i++)
		if (r->mem[i] != pattern(i * 8))
			r->bad++;
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: restore-minimal SOCKET [MIB]\n"
		   "Restore MIB MiB (default 16) of memory lazily from the source\n"
		   "listening on the Unix socket SOCKET, and check its contents.\n"
		   "libpostcopy %s (header %s)\n",
		pcopy_version(), PCOPY_VERSION_STRING);
}

int main(int argc, char **argv)
{
	struct pcopy_region region = { .name = "ram", .page_size = PAGE };
	struct reader rd = { 0 };
	struct pcopy_dest_opts opts;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	pthread_t thr;
	unsigned long mib = 16;
	void *mem;
	int fd, ret;

	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout);
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "--version")) {
		printf("%s\n", pcopy_version());
		return 0;
	}
	if (argc < 2 || argc > 3 || (argc == 3 && (mib = strtoul(argv[2], NULL, 0)) == 0)) {
		usage(stderr);
		return 2;
	}

	/* Fresh anonymous memory: no page is present until the library puts it. */
	region.length = mib << 20;
	mem = mmap(NULL, region.length, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("restore-minimal: mmap");
		return 1;
	}
	region.host = mem;

	pcopy_dest_opts_init(&opts);
	opts.log = log_stderr;
	ret = pcopy_dest_create(&d, &region, 1, &opts);
	if (ret < 0) {
		fprintf(stderr, "restore-minimal: pcopy_dest_create: %s\n",
			pcopy_strerror(ret));
		return 1;
	}

	/* From here on a touch of `mem` blocks until its page arrives. */
	fd = connect_unix(argv[1]);
	if (fd < 0) {
		fprintf(stderr, "restore-minimal: connect %s: %s\n", argv[1], strerror(-fd));
		pcopy_dest_destroy(d);
		return 1;
	}
	ret = pcopy_dest_start(d, fd);	/* takes ownership of fd */
	if (ret < 0) {
		fprintf(stderr, "restore-minimal: pcopy_dest_start: %s: %s\n",
			pcopy_strerror(ret), pcopy_dest_error(d));
		pcopy_dest_destroy(d);
		return 1;
	}

	/* The application runs on the memory while the rest streams in. */
	rd.mem = mem;
	rd.len = region.length;
	ret = pthread_create(&thr, NULL, reader_main, &rd);
	if (ret) {
		fprintf(stderr, "restore-minimal: pthread_create: %s\n", strerror(ret));
		pcopy_dest_destroy(d);
		return 1;
	}
	ret = pcopy_dest_wait(d, -1);
	if (ret < 0) {
		/* The reader may be blocked for good on a page that never came
		 * (it never sees zeros instead): report and exit without it. */
		fprintf(stderr, "restore-minimal: restore failed: %s: %s\n",
			pcopy_strerror(ret), pcopy_dest_error(d));
		return 1;
	}
	pthread_join(thr, NULL);

	pcopy_dest_stats(d, &st);
	printf("restored %llu MiB in %.3f s: %llu host pages, %llu zero, "
	       "%llu faults, %llu requested, fault latency p50 %.1f us p99 %.1f us\n",
	       (unsigned long long)mib, st.elapsed_ns / 1e9,
	       (unsigned long long)st.host_pages_received,
	       (unsigned long long)st.pages_zero, (unsigned long long)st.faults,
	       (unsigned long long)st.requests, st.lat_p50_ns / 1e3,
	       st.lat_p99_ns / 1e3);
	pcopy_dest_destroy(d);

	if (rd.bad) {
		fprintf(stderr, "restore-minimal: %zu words differ from the pattern\n",
			rd.bad);
		return 1;
	}
	printf("contents verified\n");
	munmap(mem, region.length);
	return 0;
}
