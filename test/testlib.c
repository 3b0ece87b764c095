/* SPDX-License-Identifier: MIT */
/*
 * Test helpers: deterministic image pattern, memory backends, hugetlb pool
 * reservation, and a source process for end-to-end tests.
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

/* ---- pattern ---- */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static uint64_t page_key(unsigned region, uint64_t page)
{
	return mix64(((uint64_t)region << 52) ^ page ^ 0x5eed5eedULL);
}

bool tl_page_is_zero(unsigned region, uint64_t page)
{
	return (page_key(region, page) & 3) == 0;
}

/* One page in eight is compressible (a repeated short record), so zlib has
 * something to win; the rest is pseudo-random. */
static bool page_is_compressible(unsigned region, uint64_t page)
{
	return ((page_key(region, page) >> 2) & 7) == 0;
}

static uint64_t word_at(unsigned region, uint64_t page, unsigned i)
{
	uint64_t k = page_key(region, page);

	if (page_is_compressible(region, page))
		return k ^ (i & 3);
	return mix64(k + i);
}

void tl_page_fill(unsigned region, uint64_t page, void *dst)
{
	uint64_t *w = dst;

	if (tl_page_is_zero(region, page)) {
		memset(dst, 0, TL_PAGE);
		return;
	}
	for (unsigned i = 0; i < TL_PAGE / 8; i++)
		w[i] = word_at(region, page, i);
}

long tl_page_check(unsigned region, uint64_t page, const void *p)
{
	const uint64_t *w = p;
	bool zero = tl_page_is_zero(region, page);

	for (unsigned i = 0; i < TL_PAGE / 8; i++) {
		uint64_t want = zero ? 0 : word_at(region, page, i);

		if (w[i] != want) {
			const uint8_t *a = (const uint8_t *)&w[i];
			const uint8_t *b = (const uint8_t *)&want;
			for (unsigned j = 0; j < 8; j++)
				if (a[j] != b[j])
					return (long)(i * 8 + j);
		}
	}
	return -1;
}

void tl_fill(unsigned region, void *dst, size_t len)
{
	for (size_t off = 0; off < len; off += TL_PAGE)
		tl_page_fill(region, off / TL_PAGE, (char *)dst + off);
}

/* ---- memory backends ---- */

const char *tl_mem_name(enum tl_mem m)
{
	static const char *const names[] = { "anon", "memfd", "hugetlb" };

	return m < TL_MEM_COUNT ? names[m] : "?";
}

size_t tl_mem_page_size(enum tl_mem m)
{
	return m == TL_MEM_HUGETLB ? TL_HUGE : TL_PAGE;
}

int tl_map(enum tl_mem m, size_t len, struct tl_mapping *out)
{
	void *p;
	int fd = -1;

	if (m == TL_MEM_ANON) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	} else {
		unsigned flags = MFD_CLOEXEC;

		if (m == TL_MEM_HUGETLB)
			flags |= MFD_HUGETLB | MFD_HUGE_2MB;
		fd = memfd_create(tl_mem_name(m), flags);
		if (fd < 0)
			return -errno;
		if (ftruncate(fd, (off_t)len) < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	}
	if (p == MAP_FAILED) {
		int e = -errno;
		if (fd >= 0)
			close(fd);
		return e;
	}
	out->addr = p;
	out->length = len;
	out->fd = fd;
	return 0;
}

void tl_unmap(struct tl_mapping *mp)
{
	if (mp->addr)
		munmap(mp->addr, mp->length);
	if (mp->fd >= 0)
		close(mp->fd);
	mp->addr = NULL;
	mp->fd = -1;
}

void tl_skip(const char *name, const char *why)
{
	printf("SKIP %s: %s\n", name, why);
	fflush(stdout);
}

/* ---- source process ---- */

static int make_sparse_file(const struct tl_source_cfg *cfg, off_t *offsets)
{
	char path[] = "/tmp/pcopy-snap-XXXXXX";
	int fd = mkstemp(path);
	off_t pos = 8192;	/* regions start past a header, as in real snapshots */
	char page[TL_PAGE];

	if (fd < 0)
		return -errno;
	unlink(path);
	for (unsigned r = 0; r < cfg->nregions; r++) {
		offsets[r] = pos;
		for (size_t off = 0; off < cfg->lengths[r]; off += TL_PAGE) {
			uint64_t pg = off / TL_PAGE;

			if (tl_page_is_zero(r, pg))
				continue;	/* leave a hole */
			tl_page_fill(r, pg, page);
			if (pwrite(fd, page, TL_PAGE, pos + (off_t)off) != TL_PAGE) {
				close(fd);
				return -EIO;
			}
		}
		pos += (off_t)cfg->lengths[r];
	}
	/* The last region's trailing zero pages lie past EOF: they must read as
	 * zeros too. */
	return fd;
}

static int serve_child(const struct tl_source_cfg *cfg, int lfd)
{
	struct pcopy_source_region regs[4];
	struct pcopy_source_opts o;
	struct pcopy_source *s = NULL;
	void *mems[4] = { 0 };
	off_t offsets[4] = { 0 };
	int file_fd = -1, fd, rc;

	memset(regs, 0, sizeof(regs));
	if (cfg->from_file) {
		file_fd = make_sparse_file(cfg, offsets);
		if (file_fd < 0)
			return 10;
	}
	for (unsigned r = 0; r < cfg->nregions; r++) {
		regs[r].name = cfg->names[r];
		regs[r].length = cfg->lengths[r];
		regs[r].page_size = cfg->page_sizes[r];
		regs[r].fd = -1;
		if (cfg->from_file) {
			regs[r].fd = file_fd;
			regs[r].file_offset = offsets[r];
		} else {
			mems[r] = mmap(NULL, cfg->lengths[r], PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (mems[r] == MAP_FAILED)
				return 11;
			tl_fill(r, mems[r], cfg->lengths[r]);
			regs[r].mem = mems[r];
		}
	}
	pcopy_source_opts_init(&o);
	if (cfg->zlib)
		o.flags |= PCOPY_SOURCE_ZLIB;
	o.flags |= cfg->source_flags;
	rc = pcopy_source_create(&s, regs, cfg->nregions, &o);
	if (rc < 0) {
		fprintf(stderr, "source: create: %s\n", pcopy_strerror(rc));
		return 12;
	}
	fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		return 13;
	rc = pcopy_source_start(s, fd);
	/* Keep accepting: the urgent connection and resumed ones join the
	 * session. */
	for (int waited = 0; rc == 0 && waited < 120000; waited += 50) {
		struct pollfd pfd = { .fd = lfd, .events = POLLIN };

		rc = pcopy_source_wait(s, 0);
		if (rc != -ETIMEDOUT)
			break;
		rc = 0;
		if (poll(&pfd, 1, 50) == 1) {
			int extra = accept(lfd, NULL, NULL);

			if (extra >= 0 && pcopy_source_add_conn(s, extra) < 0)
				fprintf(stderr, "source: add_conn: %s\n", pcopy_source_error(s));
		}
	}
	close(lfd);
	if (rc == 0)
		rc = pcopy_source_wait(s, 1000);
	if (rc < 0)
		fprintf(stderr, "source: %s (%s)\n", pcopy_source_error(s),
			pcopy_strerror(rc));
	pcopy_source_destroy(s);
	for (unsigned r = 0; r < cfg->nregions; r++)
		if (mems[r])
			munmap(mems[r], cfg->lengths[r]);
	if (file_fd >= 0)
		close(file_fd);
	return rc == 0 ? 0 : 14;
}

static int listen_socket(const struct tl_source_cfg *cfg, struct tl_source_proc *sp,
			 struct sockaddr_storage *addr, socklen_t *alen)
{
	int lfd;

	memset(addr, 0, sizeof(*addr));
	if (cfg->link == TL_LINK_UNIX) {
		struct sockaddr_un *un = (struct sockaddr_un *)addr;

		snprintf(sp->path, sizeof(sp->path), "/tmp/pcopy-test-%d-%ld.sock",
			 (int)getpid(), (long)random());
		unlink(sp->path);
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, sp->path, strlen(sp->path) + 1);
		*alen = sizeof(*un);
		lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)addr;

		in->sin_family = AF_INET;
		in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*alen = sizeof(*in);
		lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	}
	if (lfd < 0)
		return -errno;
	if (bind(lfd, (struct sockaddr *)addr, *alen) < 0 || listen(lfd, 4) < 0 ||
	    getsockname(lfd, (struct sockaddr *)addr, alen) < 0) {
		int e = -errno;
		close(lfd);
		return e;
	}
	return lfd;
}

int tl_source_spawn(const struct tl_source_cfg *cfg, struct tl_source_proc *sp)
{
	struct sockaddr_storage addr;
	socklen_t alen;
	int lfd, fd;

	memset(sp, 0, sizeof(*sp));
	sp->fd = sp->urgent_fd = -1;
	lfd = listen_socket(cfg, sp, &addr, &alen);
	if (lfd < 0)
		return lfd;
	sp->pid = fork();
	if (sp->pid < 0) {
		int e = -errno;
		close(lfd);
		return e;
	}
	if (sp->pid == 0)
		_exit(serve_child(cfg, lfd));
	close(lfd);
	fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, alen) < 0) {
		int e = -errno;
		if (fd >= 0)
			close(fd);
		kill(sp->pid, SIGKILL);
		waitpid(sp->pid, NULL, 0);
		return e;
	}
	if (addr.ss_family == AF_INET) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	sp->fd = fd;
	if (cfg->urgent) {
		int ufd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (ufd < 0 || connect(ufd, (struct sockaddr *)&addr, alen) < 0) {
			int e = -errno;
			if (ufd >= 0)
				close(ufd);
			close(fd);
			kill(sp->pid, SIGKILL);
			waitpid(sp->pid, NULL, 0);
			return e;
		}
		sp->urgent_fd = ufd;
	}
	return 0;
}

int tl_source_wait(struct tl_source_proc *sp)
{
	int status = 0;

	if (sp->pid > 0 && waitpid(sp->pid, &status, 0) < 0)
		status = -1;
	if (sp->path[0])
		unlink(sp->path);
	sp->pid = 0;
	if (status < 0 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

void tl_regions(const struct tl_source_cfg *cfg, struct tl_mapping *maps,
		struct pcopy_region *out)
{
	for (unsigned r = 0; r < cfg->nregions; r++) {
		out[r].name = cfg->names[r];
		out[r].host = maps[r].addr;
		out[r].length = cfg->lengths[r];
		out[r].page_size = cfg->page_sizes[r];
	}
}
