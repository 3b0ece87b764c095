/* SPDX-License-Identifier: MIT */
/*
 * serve-minimal: the smallest useful source. It fills memory with a pattern,
 * listens on a Unix socket, serves the memory to the one destination that
 * connects (restore-minimal.c), waits until it has everything, and exits.
 *
 *   cc serve-minimal.c $(pkg-config --cflags --libs postcopy)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <postcopy.h>

#define PAGE 4096

/* The 64-bit word at byte offset `off` (same function in restore-minimal.c).
 * Every fourth page is zero. */
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
		fprintf(stderr, "serve-minimal: libpostcopy: %s\n", msg);
}

/* Listen on `path`, accept one connection, stop listening. Returns the
 * connected fd or -errno. */
static int accept_one(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat sb;
	int lfd, fd, err;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	/* A socket left over by an earlier run would make bind() fail; remove
	 * it, but never anything that is not a socket. */
	if (lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode))
		unlink(path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return -errno;
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1) < 0) {
		err = -errno;
		close(lfd);
		return err;
	}
	fd = accept(lfd, NULL, NULL);
	err = fd < 0 ? -errno : fd;
	close(lfd);
	unlink(path);
	return err;
}

int main(int argc, char **argv)
{
	struct pcopy_source_region region = { .name = "ram", .fd = -1,
					      .page_size = PAGE };
	struct pcopy_source_opts opts;
	struct pcopy_source *s;
	struct pcopy_stats st;
	unsigned long mib = 16;
	uint64_t *mem;
	size_t i;
	int fd, ret;

	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: serve-minimal SOCKET [MIB]\n"
		       "Serve MIB MiB (default 16) of patterned memory to one\n"
		       "destination connecting to the Unix socket SOCKET.\n"
		       "libpostcopy %s\n", pcopy_version());
		return 0;
	}
	if (argc < 2 || argc > 3 || (argc == 3 && (mib = strtoul(argv[2], NULL, 0)) == 0)) {
		fprintf(stderr, "usage: serve-minimal SOCKET [MIB]\n");
		return 2;
	}

	region.length = mib << 20;
	mem = mmap(NULL, region.length, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("serve-minimal: mmap");
		return 1;
	}
	for (i = 0; i < region.length / 8; i++)
		mem[i] = pattern(i * 8);
	region.mem = mem;

	pcopy_source_opts_init(&opts);
	opts.log = log_stderr;
	ret = pcopy_source_create(&s, &region, 1, &opts);
	if (ret < 0) {
		fprintf(stderr, "serve-minimal: pcopy_source_create: %s\n",
			pcopy_strerror(ret));
		return 1;
	}

	fd = accept_one(argv[1]);
	if (fd < 0) {
		fprintf(stderr, "serve-minimal: %s: %s\n", argv[1], strerror(-fd));
		pcopy_source_destroy(s);
		return 1;
	}
	ret = pcopy_source_start(s, fd);	/* takes ownership of fd */
	if (ret == 0)
		ret = pcopy_source_wait(s, -1);	/* until the destination is done */
	if (ret < 0) {
		fprintf(stderr, "serve-minimal: %s: %s\n", pcopy_strerror(ret),
			pcopy_source_error(s));
		pcopy_source_destroy(s);
		return 1;
	}

	pcopy_source_stats(s, &st);
	printf("served %lu MiB: %llu bytes on the wire, %llu zero pages, "
	       "%llu request messages, %llu pages sent ahead of the scan\n",
	       mib, (unsigned long long)st.bytes_wire,
	       (unsigned long long)st.pages_zero,
	       (unsigned long long)st.request_msgs,
	       (unsigned long long)st.requests);
	pcopy_source_destroy(s);
	munmap(mem, region.length);
	return 0;
}
