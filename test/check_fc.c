/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler against a driver that behaves as Firecracker does on a
 * snapshot restore: userfaultfd with O_CLOEXEC|O_NONBLOCK and EVENT_REMOVE,
 * anonymous regions registered MISSING, the JSON region table and the uffd in
 * one sendmsg, the socket never closed; threads touch and verify the memory
 * (contents derived from the page index), a balloon MADV_DONTNEED lands in
 * the middle. Plus the JSON table parser, table-driven.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "fc_json.h"
#include "hugepool.h"

#ifndef FC_HANDLER_PATH
#define FC_HANDLER_PATH "tools/postcopy-fc-handler"
#endif
#ifndef FC_SERVE_PATH
#define FC_SERVE_PATH "tools/postcopy-serve"
#endif

#define PG 4096ul
#define MIB (1ul << 20)
#define TOUCHERS 2	/* the machine has 2 CPUs */

/* ---- page contents: a function of the page's index in the memory file ---- */

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* One file page in 5 is all zeros (a hole in the file). */
static bool page_is_zero(uint64_t fpage)
{
	return fpage % 5 == 2;
}

static void page_fill(uint64_t fpage, void *dst)
{
	uint64_t *w = dst;

	for (unsigned i = 0; i < PG / 8; i++)
		w[i] = page_is_zero(fpage) ? 0 : mix(fpage * 512 + i) | 1;
}

/* -1 if the page holds what it should (zeros if `zero`), else the bad byte. */
static long page_check(uint64_t fpage, bool zero, const void *p)
{
	const uint64_t *w = p;

	for (unsigned i = 0; i < PG / 8; i++) {
		uint64_t want = zero || page_is_zero(fpage) ? 0 : mix(fpage * 512 + i) | 1;

		if (w[i] != want)
			return (long)i * 8;
	}
	return -1;
}

/* ---- scratch directory, memory file ---- */

struct env {
	char dir[80];
	char sock[100];
	char mem[128];
	char log[128];
	char serve_sock[120];	/* a postcopy-serve's socket, for --connect */
	pid_t handler;
};

static void env_init(struct env *e, uint64_t mem_bytes)
{
	const char *tmp = getenv("TMPDIR");
	uint8_t page[PG];
	int fd;

	snprintf(e->dir, sizeof(e->dir), "%s/check_fc.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(e->dir));
	snprintf(e->sock, sizeof(e->sock), "%s/uffd.sock", e->dir);
	snprintf(e->mem, sizeof(e->mem), "%s/memory", e->dir);
	snprintf(e->log, sizeof(e->log), "%s/handler.log", e->dir);
	e->handler = -1;
	e->serve_sock[0] = '\0';
	fd = open(e->mem, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	/* Zero pages stay holes: the source finds them without reading. */
	ck_assert_int_eq(ftruncate(fd, (off_t)mem_bytes), 0);
	for (uint64_t p = 0; p < mem_bytes / PG; p++) {
		if (page_is_zero(p))
			continue;
		page_fill(p, page);
		ck_assert_int_eq(pwrite(fd, page, PG, (off_t)(p * PG)), (ssize_t)PG);
	}
	close(fd);
}

static void env_fini(struct env *e)
{
	unlink(e->mem);
	unlink(e->log);
	unlink(e->sock);
	rmdir(e->dir);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf;
	size_t n;

	if (!f)
		return strdup("");
	buf = calloc(1, 1 << 20);
	n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static unsigned count_in(const char *hay, const char *needle)
{
	unsigned n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* Wait until the handler's log holds `needle` `count` times. */
static bool wait_log(const struct env *e, const char *needle, unsigned count,
		     unsigned timeout_ms)
{
	for (unsigned waited = 0;; waited += 20) {
		char *s = slurp(e->log);
		bool ok = count_in(s, needle) >= count;

		free(s);
		if (ok)
			return true;
		if (waited >= timeout_ms)
			return false;
		sleep_ms(20);
	}
}

static void dump_log(const struct env *e)
{
	char *s = slurp(e->log);

	fprintf(stderr, "---- handler log ----\n%s---------------------\n", s);
	free(s);
}

/* ---- the handler process ---- */

static void handler_spawn(struct env *e, const char *const *extra)
{
	const char *path = getenv("FC_HANDLER") ? getenv("FC_HANDLER") : FC_HANDLER_PATH;
	const char *argv[24];
	unsigned n = 0;
	pid_t pid;

	argv[n++] = path;
	argv[n++] = "--listen";
	argv[n++] = e->sock;
	if (e->serve_sock[0]) {
		argv[n++] = "--connect";
		argv[n++] = e->serve_sock;
	} else {
		argv[n++] = "--mem-file";
		argv[n++] = e->mem;
	}
	for (; extra && *extra && n < 20; extra++)
		argv[n++] = *extra;
	if (getenv("FC_HANDLER_DEBUG")) {	/* library debug messages in the log */
		argv[n++] = "-v";
		argv[n++] = "-v";
	}
	argv[n] = NULL;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(e->log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);

		/* A failed assertion ends the test process: take the handler
		 * with it. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
			_exit(126);
		execv(path, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	e->handler = pid;
}

/* Connect to the handler's socket, waiting for it to listen. */
static int vmm_connect(const struct env *e)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };

	snprintf(un.sun_path, sizeof(un.sun_path), "%s", e->sock);
	for (unsigned waited = 0; waited < 10000; waited += 20) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

		ck_assert_int_ge(fd, 0);
		if (connect(fd, (struct sockaddr *)&un, sizeof(un)) == 0)
			return fd;
		close(fd);
		if (waitpid(e->handler, NULL, WNOHANG) == e->handler) {
			dump_log(e);
			ck_abort_msg("the handler exited before listening");
		}
		sleep_ms(20);
	}
	dump_log(e);
	ck_abort_msg("the handler does not listen on %s", e->sock);
	return -1;
}

/* Signal the handler and return its exit status (-1 if it had to be killed). */
static int handler_stop(struct env *e, int sig)
{
	int st;

	kill(e->handler, sig);
	for (unsigned waited = 0; waited < 15000; waited += 10) {
		if (waitpid(e->handler, &st, WNOHANG) == e->handler) {
			e->handler = -1;
			if (!WIFEXITED(st)) {
				dump_log(e);
				ck_abort_msg("the handler did not exit cleanly: %s",
					     WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "?");
			}
			return WEXITSTATUS(st);
		}
		sleep_ms(10);
	}
	kill(e->handler, SIGKILL);
	waitpid(e->handler, &st, 0);
	e->handler = -1;
	dump_log(e);
	ck_abort_msg("the handler ignored signal %d", sig);
	return -1;
}

static bool handler_alive(const struct env *e)
{
	return waitpid(e->handler, NULL, WNOHANG) == 0;
}

/* ---- the VMM side, as Firecracker does it ---- */

struct vregion {
	uint8_t *host;
	uint64_t size;
	uint64_t offset;	/* in the memory file */
};

struct vmm {
	int uffd;
	uint8_t *resv;		/* address-space reservation holding the regions */
	size_t resv_len;
	struct vregion r[4];
	unsigned n;
	/* balloon: [zlo, zhi) was removed and must read as zeros */
	uint8_t *zlo, *zhi;
};

static int open_uffd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && (errno == EPERM || errno == ENOSYS)) {
		/* Firecracker on 6.1+: the device, access by file mode. */
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
		}
	}
	return fd;
}

/*
 * Map regions of the given sizes inside one reservation, `gap` bytes apart,
 * in reverse order of their file offsets when `reverse` (so the table is not
 * sorted by address), and register them on a new userfaultfd.
 */
static int vmm_setup_mem(struct vmm *v, unsigned n, const uint64_t *sizes,
			 const uint64_t *offsets, bool reverse, bool huge);

static void vmm_setup(struct vmm *v, unsigned n, const uint64_t *sizes,
		      const uint64_t *offsets, bool reverse)
{
	ck_assert_int_eq(vmm_setup_mem(v, n, sizes, offsets, reverse, false), 0);
}

/* As vmm_setup; `huge`: 2 MiB hugetlb pages (-ENOMEM if the pool is short). */
static int vmm_setup_mem(struct vmm *v, unsigned n, const uint64_t *sizes,
			 const uint64_t *offsets, bool reverse, bool huge)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE };
	const uint64_t gap = 2 * MIB;
	uint64_t at;

	memset(v, 0, sizeof(*v));
	v->n = n;
	v->resv_len = 2 * gap;
	for (unsigned i = 0; i < n; i++)
		v->resv_len += sizes[i] + gap;
	v->resv = mmap(NULL, v->resv_len, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(v->resv, MAP_FAILED);
	/* 2 MiB aligned, as hugetlb mappings must be. */
	at = (gap - (uintptr_t)v->resv % gap) % gap + gap;
	for (unsigned k = 0; k < n; k++) {
		unsigned i = reverse ? n - 1 - k : k;
		void *p = mmap(v->resv + at, sizes[i], PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
			       (huge ? MAP_HUGETLB : MAP_NORESERVE), -1, 0);

		if (p == MAP_FAILED && huge) {
			munmap(v->resv, v->resv_len);
			return -errno;
		}
		ck_assert_ptr_eq(p, v->resv + at);
		v->r[i] = (struct vregion){ p, sizes[i], offsets[i] };
		at += sizes[i] + gap;
	}
	v->uffd = open_uffd();
	ck_assert_msg(v->uffd >= 0, "userfaultfd: %s", strerror(errno));
	ck_assert_msg(ioctl(v->uffd, UFFDIO_API, &api) == 0, "UFFDIO_API: %s", strerror(errno));
	for (unsigned i = 0; i < n; i++) {
		struct uffdio_register reg = {
			.range = { (uintptr_t)v->r[i].host, v->r[i].size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_WAKE) |
				(huge ? 0 : 1ull << _UFFDIO_ZEROPAGE);

		ck_assert_msg(ioctl(v->uffd, UFFDIO_REGISTER, &reg) == 0,
			      "UFFDIO_REGISTER: %s", strerror(errno));
		ck_assert((reg.ioctls & need) == need);
	}
	return 0;
}

static void vmm_fini(struct vmm *v)
{
	/* Firecracker's memory goes away with its process; here, with the
	 * mapping. The handler is gone or done by now. */
	munmap(v->resv, v->resv_len);
	close(v->uffd);
}

enum psz { PSZ_BOTH = 0, PSZ_KIB_AS_BYTES, PSZ_KIB_AS_KIB, PSZ_BYTES_ONLY, PSZ_COUNT };

/* 2 MiB pages, both fields in bytes, as Firecracker sends them for hugetlbfs. */
static void vmm_json_huge(const struct vmm *v, char *buf, size_t len)
{
	size_t o = 0;

	o += (size_t)snprintf(buf + o, len - o, "[");
	for (unsigned i = 0; i < v->n; i++)
		o += (size_t)snprintf(buf + o, len - o,
				      "%s{\"base_host_virt_addr\": %" PRIuPTR ", \"size\": %" PRIu64
				      ", \"offset\": %" PRIu64 ", \"page_size\": 2097152, \"page_size_kib\": 2097152}",
				      i ? ", " : "", (uintptr_t)v->r[i].host, v->r[i].size, v->r[i].offset);
	snprintf(buf + o, len - o, "]");
}

static void vmm_json(const struct vmm *v, enum psz mode, char *buf, size_t len)
{
	static const char *const psz[] = {
		"\"page_size\": 4096, \"page_size_kib\": 4096",	/* Firecracker today */
		"\"page_size_kib\": 4096",
		"\"page_size_kib\": 4",
		"\"page_size\": 4096",
	};
	size_t o = 0;

	o += (size_t)snprintf(buf + o, len - o, "[");
	for (unsigned i = 0; i < v->n; i++)
		o += (size_t)snprintf(buf + o, len - o,
				      "%s{\"base_host_virt_addr\": %" PRIuPTR ", \"size\": %" PRIu64
				      ", \"offset\": %" PRIu64 ", %s}",
				      i ? ", " : "", (uintptr_t)v->r[i].host, v->r[i].size,
				      v->r[i].offset, psz[mode]);
	snprintf(buf + o, len - o, "]");
}

/* The payload and up to two descriptors in ONE sendmsg, as Firecracker does. */
static void send_handshake(int sock, const void *payload, size_t len, int fd1, int fd2)
{
	union {
		char b[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { (void *)payload, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fds[2] = { fd1, fd2 }, nfd = (fd1 >= 0) + (fd2 >= 0);

	if (nfd) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE((size_t)nfd * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)nfd * sizeof(int));
		memcpy(CMSG_DATA(c), fds, (size_t)nfd * sizeof(int));
	}
	ck_assert_int_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

/* ---- touching the memory from several threads ---- */

struct toucher {
	pthread_t tid;
	const struct vmm *v;
	unsigned index;
	unsigned region;
	uint64_t first, count;	/* pages of the region to touch */
	unsigned long bad;
	char first_bad[200];
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	const struct vregion *r = &t->v->r[t->region];

	/* Interleaved: every thread faults across the whole range at once. */
	for (uint64_t i = t->index; i < t->count; i += TOUCHERS) {
		uint64_t pg = t->first + i;
		const uint8_t *p = r->host + pg * PG;
		bool zero = p >= t->v->zlo && p < t->v->zhi;
		long bad = page_check(r->offset / PG + pg, zero, p);

		if (bad >= 0 && t->bad++ == 0)
			snprintf(t->first_bad, sizeof(t->first_bad),
				 "region %u page %" PRIu64 " byte %ld: 0x%02x (expected %s)",
				 t->region, pg, bad, p[bad], zero ? "zeros after MADV_DONTNEED" : "file contents");
	}
	return NULL;
}

/* Touch pages [first, first + count) of region `region` and verify them. */
static void touch(const struct vmm *v, unsigned region, uint64_t first, uint64_t count)
{
	struct toucher t[TOUCHERS];

	for (unsigned i = 0; i < TOUCHERS; i++) {
		t[i] = (struct toucher){ .v = v, .index = i, .region = region,
					 .first = first, .count = count };
		ck_assert_int_eq(pthread_create(&t[i].tid, NULL, toucher_main, &t[i]), 0);
	}
	for (unsigned i = 0; i < TOUCHERS; i++) {
		pthread_join(t[i].tid, NULL);
		ck_assert_msg(t[i].bad == 0, "%lu bad pages; first: %s", t[i].bad, t[i].first_bad);
	}
}

static void touch_all(const struct vmm *v)
{
	for (unsigned i = 0; i < v->n; i++)
		touch(v, i, 0, v->r[i].size / PG);
}

static void expect_complete(const struct env *e, unsigned count)
{
	if (!wait_log(e, ": complete:", count, 20000)) {
		dump_log(e);
		ck_abort_msg("%u restore(s) did not complete", count);
	}
}

/* ---- cases ---- */

START_TEST(test_single_region)
{
	struct env e;
	struct vmm v;
	char json[1024], *log;
	uint64_t size = 24 * MIB, off = 0;
	int sock;

	env_init(&e, size);
	handler_spawn(&e, NULL);
	vmm_setup(&v, 1, &size, &off, false);
	sock = vmm_connect(&e);
	vmm_json(&v, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock, json, strlen(json), v.uffd, -1);
	touch_all(&v);
	expect_complete(&e, 1);
	touch_all(&v);	/* unregistered now: plain memory, still right */
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 0);
	log = slurp(e.log);
	ck_assert_msg(strstr(log, "exiting: 1 restore(s) complete, 0 failed"), "log: %s", log);
	free(log);
	ck_assert_msg(access(e.sock, F_OK) < 0, "the socket file was left behind");
	close(sock);
	vmm_fini(&v);
	env_fini(&e);
}
END_TEST

/* Two regions, not contiguous in the file, listed out of address order. */
START_TEST(test_two_regions)
{
	struct env e;
	struct vmm v;
	char json[1024];
	uint64_t sizes[2] = { 6 * MIB, 4 * MIB }, offs[2] = { 8 * MIB, 1 * MIB };
	int sock;

	env_init(&e, 16 * MIB);
	handler_spawn(&e, NULL);
	vmm_setup(&v, 2, sizes, offs, true);
	ck_assert((uintptr_t)v.r[1].host < (uintptr_t)v.r[0].host);
	sock = vmm_connect(&e);
	vmm_json(&v, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock, json, strlen(json), v.uffd, -1);
	touch_all(&v);
	expect_complete(&e, 1);
	touch_all(&v);
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 0);
	close(sock);
	vmm_fini(&v);
	env_fini(&e);
}
END_TEST

/* page_size only, page_size_kib only (bytes, as Firecracker fills it; or
 * KiB, as its name says), both. */
START_TEST(test_page_size_fields)
{
	struct env e;
	struct vmm v;
	char json[1024];
	uint64_t size = 8 * MIB, off = 4 * MIB;
	int sock;

	env_init(&e, 12 * MIB);
	handler_spawn(&e, NULL);
	vmm_setup(&v, 1, &size, &off, false);
	sock = vmm_connect(&e);
	vmm_json(&v, (enum psz)_i, json, sizeof(json));
	send_handshake(sock, json, strlen(json), v.uffd, -1);
	touch_all(&v);
	expect_complete(&e, 1);
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 0);
	close(sock);
	vmm_fini(&v);
	env_fini(&e);
}
END_TEST

/*
 * Pages from a remote postcopy-serve instead of the file: the handler
 * connects to it per restore; its region r0 is the VMM's region.
 */
START_TEST(test_remote_source)
{
	struct env e;
	struct vmm v;
	char json[1024], spec[300], *log;
	uint64_t size = 8 * MIB, off = 4 * MIB;
	pid_t serve;
	int sock, st;

	env_init(&e, 16 * MIB);
	snprintf(e.serve_sock, sizeof(e.serve_sock), "unix:%s/serve.sock", e.dir);
	snprintf(spec, sizeof(spec), "r0:%s:4M:8M", e.mem);
	serve = fork();
	ck_assert_int_ge(serve, 0);
	if (serve == 0) {
		const char *path = getenv("FC_SERVE") ? getenv("FC_SERVE") : FC_SERVE_PATH;

		prctl(PR_SET_PDEATHSIG, SIGTERM);
		execl(path, path, "-q", "-l", e.serve_sock, "-r", spec, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	handler_spawn(&e, NULL);
	vmm_setup(&v, 1, &size, &off, false);
	sock = vmm_connect(&e);
	vmm_json(&v, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock, json, strlen(json), v.uffd, -1);
	touch_all(&v);
	expect_complete(&e, 1);
	ck_assert_int_eq(waitpid(serve, &st, 0), serve);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "postcopy-serve status 0x%x", st);
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 0);
	log = slurp(e.log);
	ck_assert_msg(strstr(log, "pages from postcopy-serve at"), "log: %s", log);
	free(log);
	close(sock);
	vmm_fini(&v);
	unlink(e.serve_sock + 5);
	env_fini(&e);
}
END_TEST

/* Guest memory on 2 MiB hugetlb pages (Firecracker's huge_pages "2M"). */
START_TEST(test_hugetlb)
{
	struct env e;
	struct vmm v;
	char json[1024];
	uint64_t size = 8 * MIB, off = 2 * MIB;
	char why[200];
	int sock, rc;

	env_init(&e, 10 * MIB);
	/* 8 MiB of guest memory: 4 huge pages; raise the pool if we may */
	rc = tl_hugetlb_reserve(4, why, sizeof(why));
	if (rc < 0) {
		printf("SKIP test_hugetlb: %s\n", why);
		env_fini(&e);
		return;
	}
	rc = vmm_setup_mem(&v, 1, &size, &off, false, true);
	if (rc < 0) {
		tl_hugetlb_release();
		printf("SKIP test_hugetlb: no 4 free 2 MiB huge pages (%s)\n", strerror(-rc));
		env_fini(&e);
		return;
	}
	handler_spawn(&e, NULL);
	sock = vmm_connect(&e);
	vmm_json_huge(&v, json, sizeof(json));
	send_handshake(sock, json, strlen(json), v.uffd, -1);
	touch_all(&v);
	expect_complete(&e, 1);
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 0);
	close(sock);
	vmm_fini(&v);
	tl_hugetlb_release();
	env_fini(&e);
}
END_TEST

/* Pages of [from, from + n) not yet in memory. */
static uint64_t missing_pages(const uint8_t *from, uint64_t n)
{
	unsigned char *vec = malloc(n);
	uint64_t miss = 0;

	ck_assert_ptr_nonnull(vec);
	ck_assert_int_eq(mincore((void *)from, n * PG, vec), 0);
	for (uint64_t i = 0; i < n; i++)
		miss += !(vec[i] & 1);
	free(vec);
	return miss;
}

/*
 * A balloon inflates mid-restore: MADV_DONTNEED on the middle fifth of the
 * memory, part of it already restored, part not. The kernel reports
 * UFFD_EVENT_REMOVE; the range must read back as zeros (never the file's
 * contents), before and after the restore completes, and everything else
 * must be right. --no-background keeps the restore from finishing before
 * the balloon: only touched pages move.
 */
START_TEST(test_balloon_remove)
{
	static const char *const extra[] = { "--no-background", NULL };
	struct env e;
	struct vmm v;
	char json[1024];
	uint64_t size = 16 * MIB, off = 0, np = size / PG;
	uint64_t lo = np * 2 / 5, hi = np * 3 / 5;
	int sock;

	env_init(&e, size);
	handler_spawn(&e, extra);
	vmm_setup(&v, 1, &size, &off, false);
	sock = vmm_connect(&e);
	vmm_json(&v, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock, json, strlen(json), v.uffd, -1);

	touch(&v, 0, 0, np / 4);		/* restored before the balloon */
	touch(&v, 0, lo, 64);			/* ... inside the range too */
	ck_assert_uint_eq(missing_pages(v.r[0].host + lo * PG, 64), 0);
	ck_assert_uint_eq(missing_pages(v.r[0].host + (hi + 1) * PG, np - hi - 1),
			  np - hi - 1);		/* truly mid-restore */

	/* Blocks until the handler has read the REMOVE event. */
	ck_assert_int_eq(madvise(v.r[0].host + lo * PG, (hi - lo) * PG, MADV_DONTNEED), 0);
	v.zlo = v.r[0].host + lo * PG;
	v.zhi = v.r[0].host + hi * PG;

	touch(&v, 0, lo + 64, hi - lo - 64);	/* removed before ever restored */
	touch(&v, 0, lo, 64);			/* removed after being restored */
	touch(&v, 0, np / 4, lo - np / 4);
	touch(&v, 0, hi, np - hi);
	expect_complete(&e, 1);
	touch_all(&v);				/* and it stays that way */
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 0);
	close(sock);
	vmm_fini(&v);
	env_fini(&e);
}
END_TEST

/*
 * Firecracker may hand over a new userfaultfd on the same stream (a new
 * restore): each message starts its own restore. Sequential, or both
 * messages sent back to back before any memory is touched.
 */
START_TEST(test_second_handshake)
{
	struct env e;
	struct vmm a, b;
	char json[1024], *log;
	uint64_t size = 8 * MIB, off_a = 0, off_b = 8 * MIB;
	bool back_to_back = _i == 1;
	int sock;

	env_init(&e, 16 * MIB);
	handler_spawn(&e, NULL);
	vmm_setup(&a, 1, &size, &off_a, false);
	vmm_setup(&b, 1, &size, &off_b, false);
	sock = vmm_connect(&e);
	vmm_json(&a, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock, json, strlen(json), a.uffd, -1);
	if (!back_to_back) {
		touch_all(&a);
		expect_complete(&e, 1);
	}
	vmm_json(&b, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock, json, strlen(json), b.uffd, -1);
	if (back_to_back)
		touch_all(&a);
	touch_all(&b);
	expect_complete(&e, 2);
	ck_assert_int_eq(handler_stop(&e, SIGINT), 0);
	log = slurp(e.log);
	ck_assert_msg(strstr(log, "handshake 2)"), "log: %s", log);
	ck_assert_msg(strstr(log, "exiting: 2 restore(s) complete, 0 failed"), "log: %s", log);
	free(log);
	close(sock);
	vmm_fini(&a);
	vmm_fini(&b);
	env_fini(&e);
}
END_TEST

enum bad_fd { FD_UFFD = 0, FD_NONE, FD_PIPE, FD_TWO, FD_UFFD_NUL /* + a NUL byte */ };

struct bad_case {
	const char *payload;	/* "%A": the region's address, "%S": its size */
	enum bad_fd fd;
	bool close_after;	/* shut the stream down after sending */
	int exit_status;
	const char *expect;	/* in the handler's log */
};

static const struct bad_case bad_cases[] = {
	{ "[{\"base_host_virt_addr\": %A, \"size\": }]", FD_UFFD, false, 0, "JSON syntax error" },
	{ "{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 0, \"page_size\": 4096}",
	  FD_UFFD, false, 0, "expected a JSON array of regions, got object" },
	{ "[]", FD_UFFD, false, 0, "0 regions in the array" },
	{ "[{\"base_host_virt_addr\": %A, \"offset\": 0, \"page_size\": 4096}]",
	  FD_UFFD, false, 0, "region 0: \"size\" is missing" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": \"%S\", \"offset\": 0, \"page_size\": 4096}]",
	  FD_UFFD, false, 0, "region 0: \"size\" must be a non-negative integer" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": -4096, \"page_size\": 4096}]",
	  FD_UFFD, false, 0, "\"offset\" must be a non-negative integer" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 0, \"page_size_kib\": 12}]",
	  FD_UFFD, false, 0, "\"page_size_kib\" 12 is not a supported page size" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 1073741824, \"page_size\": 4096}]",
	  FD_UFFD, false, 1, "runs past the end of the memory file" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 0, \"page_size\": 4096}]",
	  FD_NONE, false, 0, "no file descriptor came with it" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 0, \"page_size\": 4096}]",
	  FD_PIPE, false, 0, "is not a userfaultfd (it is pipe:" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 0, \"page_size\": 4096}]",
	  FD_TWO, false, 0, "2 file descriptors in one message" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S, \"offset\": 0, \"page_size\": 4096}]",
	  FD_UFFD_NUL, false, 0, "a NUL byte in the JSON payload" },
	{ "[{\"base_host_virt_addr\": %A, \"size\": %S,", FD_UFFD, true, 0,
	  "the stream ended in the middle of a JSON payload" },
	{ "[{\"base_host_virt_addr\": 4097, \"size\": %S, \"offset\": 0, \"page_size\": 4096}]",
	  FD_UFFD, false, 0, "\"base_host_virt_addr\" 0x1001 is not aligned" },
};

/* Expand %A and %S in a case's payload; returns its length (NULs kept). */
static size_t bad_payload(const struct bad_case *c, const struct vmm *v, char *out, size_t cap)
{
	size_t o = 0, len = strlen(c->payload);

	for (size_t i = 0; i < len && o + 32 < cap; i++) {
		if (c->payload[i] == '%' && c->payload[i + 1] == 'A') {
			o += (size_t)snprintf(out + o, cap - o, "%" PRIuPTR, (uintptr_t)v->r[0].host);
			i++;
		} else if (c->payload[i] == '%' && c->payload[i + 1] == 'S') {
			o += (size_t)snprintf(out + o, cap - o, "%" PRIu64, v->r[0].size);
			i++;
		} else {
			out[o++] = c->payload[i];
		}
	}
	if (c->fd == FD_UFFD_NUL)
		out[o++] = '\0';
	return o;
}

/* A bad handshake is refused with a message saying what was wrong; the
 * handler lives on and serves the next VMM; it exits cleanly. */
START_TEST(test_malformed)
{
	const struct bad_case *c = &bad_cases[_i];
	struct env e;
	struct vmm bad, good;
	char json[1024], *log;
	uint64_t size = 1 * MIB, off = 0;
	int sock, sock2, pfd[2] = { -1, -1 }, fd1 = -1, fd2 = -1;
	size_t len;

	env_init(&e, 4 * MIB);
	handler_spawn(&e, NULL);
	vmm_setup(&bad, 1, &size, &off, false);
	sock = vmm_connect(&e);
	len = bad_payload(c, &bad, json, sizeof(json));
	switch (c->fd) {
	case FD_UFFD:
	case FD_UFFD_NUL: fd1 = bad.uffd; break;
	case FD_NONE: break;
	case FD_PIPE:
		ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
		fd1 = pfd[0];
		break;
	case FD_TWO: fd1 = bad.uffd; fd2 = bad.uffd; break;
	}
	send_handshake(sock, json, len, fd1, fd2);
	if (c->close_after)
		shutdown(sock, SHUT_WR);
	if (!wait_log(&e, c->expect, 1, 10000)) {
		dump_log(&e);
		ck_abort_msg("case %d: no \"%s\" in the handler's log", _i, c->expect);
	}
	ck_assert_msg(handler_alive(&e), "case %d: the handler died", _i);

	/* Still serving. */
	vmm_setup(&good, 1, &size, &off, false);
	sock2 = vmm_connect(&e);
	vmm_json(&good, PSZ_BOTH, json, sizeof(json));
	send_handshake(sock2, json, strlen(json), good.uffd, -1);
	touch_all(&good);
	expect_complete(&e, 1);
	ck_assert_int_eq(handler_stop(&e, SIGTERM), c->exit_status);
	log = slurp(e.log);
	ck_assert_msg(!strstr(log, "AddressSanitizer") && !strstr(log, "runtime error"),
		      "case %d: %s", _i, log);
	free(log);
	close(sock);
	close(sock2);
	if (pfd[0] >= 0) {
		close(pfd[0]);
		close(pfd[1]);
	}
	vmm_fini(&bad);
	vmm_fini(&good);
	env_fini(&e);
}
END_TEST

/*
 * With --kill-on-failure, a handler told to stop while a restore is still
 * incomplete kills the VMM rather than let it run on memory that was never
 * restored (closing the uffd would make those pages read as zeros).
 */
START_TEST(test_kill_on_stop)
{
	static const char *const extra[] = { "--no-background", "--kill-on-failure", NULL };
	struct env e;
	char *log;
	pid_t vmm;
	int st, ready[2];

	env_init(&e, 4 * MIB);
	handler_spawn(&e, extra);
	ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
	vmm = fork();
	ck_assert_int_ge(vmm, 0);
	if (vmm == 0) {
		struct vmm v;
		char json[1024];
		uint64_t size = 2 * MIB, off = 0;
		int sock;

		vmm_setup(&v, 1, &size, &off, false);
		sock = vmm_connect(&e);
		vmm_json(&v, PSZ_BOTH, json, sizeof(json));
		send_handshake(sock, json, strlen(json), v.uffd, -1);
		touch(&v, 0, 0, 16);
		if (write(ready[1], "x", 1) != 1)
			_exit(3);
		pause();
		_exit(0);
	}
	close(ready[1]);
	{
		char x;
		ck_assert_int_eq(read(ready[0], &x, 1), 1);
	}
	close(ready[0]);
	ck_assert_int_eq(handler_stop(&e, SIGTERM), 1);
	ck_assert_int_eq(waitpid(vmm, &st, 0), vmm);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "VMM status 0x%x", st);
	log = slurp(e.log);
	ck_assert_msg(strstr(log, "INCOMPLETE") && strstr(log, "killed the VMM"), "log: %s", log);
	free(log);
	env_fini(&e);
}
END_TEST

/* ---- the parser alone ---- */

struct parse_case {
	const char *text;
	int want;		/* regions, or -EINVAL */
	uint64_t page_size;	/* of region 0 when want > 0 */
	const char *msg;	/* in the error message */
};

static const struct parse_case parse_cases[] = {
	{ "[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0,\"page_size\":4096}]", 1, 4096, NULL },
	{ " [{\"base_host_virt_addr\":2097152,\"size\":4194304,\"offset\":0,\"page_size_kib\":2097152}] \n", 1, 2097152, NULL },
	{ "[{\"base_host_virt_addr\":2097152,\"size\":4194304,\"offset\":0,\"page_size_kib\":2048}]", 1, 2097152, NULL },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096,\"gpa_start\":0}]", 1, 4096, NULL },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096,\"page_size_kib\":4}]", 1, 4096, NULL },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096,\"page_size_kib\":2048}]", -EINVAL, 0, "disagree" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}]", -EINVAL, 0, "neither \"page_size\" nor \"page_size_kib\"" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096.0}]", -EINVAL, 0, "must be a non-negative integer" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":true}]", -EINVAL, 0, "must be a non-negative integer" },
	{ "[{\"base_host_virt_addr\":18446744073709551615,\"size\":4096,\"offset\":0,\"page_size\":4096}]", -EINVAL, 0, "not aligned" },
	{ "[{\"base_host_virt_addr\":18446744073709547520,\"size\":4096,\"offset\":0,\"page_size\":4096}]", -EINVAL, 0, "not a user-space address range" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":0,\"offset\":0,\"page_size\":4096}]", -EINVAL, 0, "\"size\" 0" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":6144,\"offset\":0,\"page_size\":4096}]", -EINVAL, 0, "not a non-zero multiple" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":100,\"page_size\":4096}]", -EINVAL, 0, "\"offset\" 100 is not a multiple of 4096" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0,\"page_size\":4096},"
	  "{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":8192,\"page_size\":4096}]", -EINVAL, 0, "regions 0 and 1 overlap" },
	{ "[1]", -EINVAL, 0, "region 0: expected a JSON object, got int" },
	{ "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}] x", -EINVAL, 0, "JSON syntax error at byte 71" },
	{ "[{base_host_virt_addr:4096}]", -EINVAL, 0, "JSON syntax error" },
	{ "[{\"base_host_virt_addr\":4096,", -EINVAL, 0, "JSON syntax error" },
	{ "null", -EINVAL, 0, "expected a JSON array of regions, got null" },
};

START_TEST(test_parse_table)
{
	const struct parse_case *c = &parse_cases[_i];
	struct fc_region r[FC_REGIONS_MAX];
	char err[600] = "";
	int rc = fc_json_parse_text(c->text, strlen(c->text), r, FC_REGIONS_MAX, err, sizeof(err));

	ck_assert_msg(rc == c->want, "case %d: got %d (%s), want %d", _i, rc, err, c->want);
	if (rc > 0)
		ck_assert_uint_eq(r[0].page_size, c->page_size);
	else
		ck_assert_msg(strstr(err, c->msg), "case %d: message \"%s\" lacks \"%s\"", _i, err, c->msg);
}
END_TEST

START_TEST(test_parse_limits)
{
	struct fc_region r[FC_REGIONS_MAX];
	size_t cap = 200 * (FC_REGIONS_MAX + 2), o = 0;
	char *text = malloc(cap), err[600];

	ck_assert_ptr_nonnull(text);
	for (unsigned n = FC_REGIONS_MAX; n <= FC_REGIONS_MAX + 1; n++) {
		o = (size_t)snprintf(text, cap, "[");
		for (unsigned i = 0; i < n; i++)
			o += (size_t)snprintf(text + o, cap - o,
					      "%s{\"base_host_virt_addr\":%u,\"size\":4096,\"offset\":%u,\"page_size\":4096}",
					      i ? "," : "", (i + 1) * 8192, i * 4096);
		o += (size_t)snprintf(text + o, cap - o, "]");
		ck_assert_int_eq(fc_json_parse_text(text, o, r, FC_REGIONS_MAX, err, sizeof(err)),
				 n == FC_REGIONS_MAX ? (int)n : -EINVAL);
	}
	ck_assert_ptr_nonnull(strstr(err, "65 regions in the array"));
	/* A NUL inside the text is refused, not read as its end. */
	ck_assert_int_eq(fc_json_parse_text("[]\0[]", 5, r, FC_REGIONS_MAX, err, sizeof(err)), -EINVAL);
	free(text);
}
END_TEST

static bool uffd_available(void)
{
	int fd = open_uffd();

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static Suite *make_fc_suite(void)
{
	Suite *s = suite_create("fc-handler");
	TCase *tp = tcase_create("parser");
	TCase *td = tcase_create("driver");

	tcase_add_loop_test(tp, test_parse_table, 0, (int)(sizeof(parse_cases) / sizeof(parse_cases[0])));
	tcase_add_test(tp, test_parse_limits);
	suite_add_tcase(s, tp);

	if (!uffd_available()) {
		printf("SKIP fc-handler driver: no userfaultfd (%s)\n", strerror(errno));
		return s;
	}
	tcase_set_timeout(td, 30);
	tcase_add_test(td, test_single_region);
	tcase_add_test(td, test_two_regions);
	tcase_add_test(td, test_remote_source);
	tcase_add_test(td, test_hugetlb);
	tcase_add_loop_test(td, test_page_size_fields, 0, PSZ_COUNT);
	tcase_add_test(td, test_balloon_remove);
	tcase_add_loop_test(td, test_second_handshake, 0, 2);
	tcase_add_loop_test(td, test_malformed, 0, (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	tcase_add_test(td, test_kill_on_stop);
	suite_add_tcase(s, td);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_fc_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
