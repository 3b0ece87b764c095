/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the recovery scenarios: seed, a source child that accepts any
 * number of connections, SIGBUS-tolerant toucher threads, log capture, and
 * a destination whose connections all pass through the fault-injection proxy.
 */
#include "recovery_lib.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "wire.h"

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- seed ---- */

uint64_t rl_seed(const char *what)
{
	const char *e = getenv("PCOPY_TEST_SEED");
	uint64_t s = 0;

	if (e && *e)
		s = strtoull(e, NULL, 0);
	else if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s))
		s = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
	fprintf(stderr, "%s: seed %llu (replay: PCOPY_TEST_SEED=%llu)\n", what,
		(unsigned long long)s, (unsigned long long)s);
	return s;
}

uint64_t rl_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

size_t rl_test_bytes(unsigned def_mb)
{
	const char *e = getenv("PCOPY_TEST_MB");
	long mb = e ? atol(e) : (long)def_mb;

	if (mb < 2)
		mb = 2;
	return (size_t)mb << 20;
}

/* ---- source child ---- */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* the directory's own fd */
}

struct src_logbuf {
	unsigned tag;
	char *buf;		/* the result's log field */
	size_t cap, len;
};

static void src_log(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	struct src_logbuf *lb = opaque;

	if (lvl > PCOPY_LOG_WARN)
		return;
	fprintf(stderr, "source[%u]: %s\n", lb->tag, msg);
	if (lb->len + 2 < lb->cap) {
		int n = snprintf(lb->buf + lb->len, lb->cap - lb->len, "%s\n", msg);

		if (n > 0)
			lb->len += (size_t)n < lb->cap - lb->len ? (size_t)n
								  : lb->cap - lb->len - 1;
	}
}

static void write_result(int fd, const struct rl_src_result *r)
{
	const char *p = (const char *)r;
	size_t left = sizeof(*r);

	while (left) {
		ssize_t n = write(fd, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		p += n;
		left -= (size_t)n;
	}
}

/* The child: serve until the session ends, report, exit. */
static int serve(const struct tl_source_cfg *img, const struct rl_src_opts *o,
		 int lfd, int res_fd)
{
	struct pcopy_source_region regs[4];
	struct pcopy_source_opts so;
	struct pcopy_source *s = NULL;
	struct rl_src_result res;
	void *mems[4] = { 0 };
	struct src_logbuf lb;
	uint64_t paused_at = 0;
	bool started = false, was_paused = false;
	int rc = -ETIMEDOUT;

	memset(&res, 0, sizeof(res));
	res.wait_ms = -1;
	lb.tag = o->tag;
	lb.buf = res.log;
	lb.cap = sizeof(res.log);
	lb.len = 0;
	memset(regs, 0, sizeof(regs));
	for (unsigned r = 0; r < img->nregions; r++) {
		mems[r] = mmap(NULL, img->lengths[r], PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mems[r] == MAP_FAILED)
			return 11;
		tl_fill(r, mems[r], img->lengths[r]);
		regs[r].name = img->names[r];
		regs[r].mem = mems[r];
		regs[r].fd = -1;
		regs[r].length = img->lengths[r];
		regs[r].page_size = img->page_sizes[r];
	}
	pcopy_source_opts_init(&so);
	so.log = src_log;
	so.log_opaque = &lb;
	so.resume_deadline_ms = o->resume_deadline_ms;
	so.keepalive_ms = o->keepalive_ms;
	if (o->zlib)
		so.flags |= PCOPY_SOURCE_ZLIB;
	if (o->no_resume)
		so.flags |= PCOPY_SOURCE_NO_RESUME;
	if (o->adopt)
		so.flags |= PCOPY_SOURCE_ADOPT;
	if (o->psk) {
		so.psk = o->psk;
		so.psk_len = strlen(o->psk);
	}
	res.fds_before = count_fds();
	rc = pcopy_source_create(&s, regs, img->nregions, &so);
	if (rc < 0) {
		res.rc = rc;
		snprintf(res.msg, sizeof(res.msg), "create: %s", pcopy_strerror(rc));
		write_result(res_fd, &res);
		return 12;
	}
	for (;;) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		int fd;

		if (poll(&p, 1, 20) == 1 && (fd = accept4(lfd, NULL, NULL,
							   SOCK_CLOEXEC)) >= 0) {
			res.conns++;
			if (!started) {
				started = true;
				rc = pcopy_source_start(s, fd);
				if (rc < 0)
					break;
			} else {
				int e = pcopy_source_add_conn(s, fd);

				if (e < 0 && res.add_errors++ == 0)
					snprintf(res.add_msg, sizeof(res.add_msg),
						 "%s (%s)", pcopy_strerror(e),
						 pcopy_source_error(s));
			}
		}
		if (!started)
			continue;
		/* remember when the last pause began (the state is FAILED,
		 * not paused, by the time the wait below returns) */
		if (pcopy_source_paused(s) == 1) {
			if (!was_paused)
				paused_at = mono_ms();
			was_paused = true;
		} else {
			was_paused = false;
		}
		rc = pcopy_source_wait(s, 0);
		/* -ETIMEDOUT only means "still running" (a session that ends at
		 * its resume deadline returns -ENOLINK) */
		if (rc != -ETIMEDOUT)
			break;
	}
	res.rc = rc;
	if (paused_at)
		res.wait_ms = (int)(mono_ms() - paused_at);
	snprintf(res.msg, sizeof(res.msg), "%s", pcopy_source_error(s));
	pcopy_source_stats(s, &res.st);
	pcopy_source_destroy(s);
	close(lfd);
	res.fds_after = count_fds() + 1;	/* lfd counted before */
	for (unsigned r = 0; r < img->nregions; r++)
		munmap(mems[r], img->lengths[r]);
	write_result(res_fd, &res);
	return rc == 0 ? 0 : 14;
}

int rl_src_spawn(const struct tl_source_cfg *img, const struct rl_src_opts *o,
		 struct rl_src *out)
{
	static const struct rl_src_opts none;
	int lfd, pfd[2];

	if (!o)
		o = &none;
	memset(out, 0, sizeof(*out));
	out->res_fd = -1;
	out->addr.sun_family = AF_UNIX;
	/* abstract namespace: nothing to clean up, unique per pid and tag */
	snprintf(out->addr.sun_path + 1, sizeof(out->addr.sun_path) - 1,
		 "pcopy-recov-%d-%u-%ld", (int)getpid(), o->tag, random());
	out->alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
				strlen(out->addr.sun_path + 1));
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return -errno;
	if (bind(lfd, (struct sockaddr *)&out->addr, out->alen) < 0 ||
	    listen(lfd, 16) < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
		int e = -errno;

		close(lfd);
		return e;
	}
	out->pid = fork();
	if (out->pid < 0) {
		int e = -errno;

		close(lfd);
		close(pfd[0]);
		close(pfd[1]);
		return e;
	}
	if (out->pid == 0) {
		close(pfd[0]);
		_exit(serve(img, o, lfd, pfd[1]));
	}
	close(lfd);
	close(pfd[1]);
	out->res_fd = pfd[0];
	return 0;
}

int rl_src_result(struct rl_src *s, int timeout_ms, struct rl_src_result *r)
{
	uint64_t end = mono_ms() + (uint64_t)timeout_ms;
	size_t got = 0;
	int ret = 0;

	memset(r, 0, sizeof(*r));
	while (got < sizeof(*r)) {
		struct pollfd p = { .fd = s->res_fd, .events = POLLIN };
		uint64_t now = mono_ms();
		ssize_t n;

		if (now >= end || poll(&p, 1, (int)(end - now)) == 0) {
			ret = -ETIMEDOUT;
			break;
		}
		n = read(s->res_fd, (char *)r + got, sizeof(*r) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = -EPIPE;
			break;
		}
		got += (size_t)n;
	}
	if (ret == -ETIMEDOUT)
		kill(s->pid, SIGKILL);
	if (s->pid > 0)
		waitpid(s->pid, NULL, 0);
	s->pid = 0;
	close(s->res_fd);
	s->res_fd = -1;
	return ret;
}

void rl_src_kill(struct rl_src *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
	}
	s->pid = 0;
	if (s->res_fd >= 0)
		close(s->res_fd);
	s->res_fd = -1;
}

int rl_src_connect(const struct rl_src *s)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)&s->addr, s->alen) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

/* ---- touchers ---- */

/* Signal handling needs process-wide state: the handler cannot be given an
 * argument. Tests run one restore per (forked) test process. */
static __thread sigjmp_buf *volatile tl_jmp;
static uintptr_t g_lo, g_hi;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (tl_jmp && (sig == SIGBUS ||
		       ((uintptr_t)si->si_addr >= g_lo && (uintptr_t)si->si_addr < g_hi)))
		siglongjmp(*tl_jmp, sig);
	signal(sig, SIG_DFL);
	raise(sig);
}

void rl_signals_install(uintptr_t lo, uintptr_t hi)
{
	struct sigaction sa;

	g_lo = lo;
	g_hi = hi;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

static void touch_page(struct rl_toucher *t, unsigned r, uint64_t pg)
{
	const volatile char *p = (const char *)t->regions[r].host + pg * TL_PAGE;
	long bad;

	(void)p[0];	/* the fault happens here, outside the check */
	bad = tl_page_check(r, pg, (const void *)p);
	t->touched++;
	if (bad >= 0 && t->bad++ == 0)
		snprintf(t->first_bad, sizeof(t->first_bad),
			 "region %u page %llu byte %ld: 0x%02x", r,
			 (unsigned long long)pg, bad,
			 (unsigned)(unsigned char)p[bad]);
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/* A stride coprime with n: i -> i * step % n visits every index once. */
static uint64_t coprime_step(uint64_t n, unsigned seed)
{
	uint64_t step = n / 2 + 1 + seed % 64;

	while (gcd64(step, n) != 1)
		step++;
	return step;
}

/* Each toucher owns the pages with index % nthreads == its index. */
static void *toucher_main(void *arg)
{
	struct rl_toucher *t = arg;
	sigjmp_buf jb;
	int sig;

	sig = sigsetjmp(jb, 1);
	if (sig) {
		tl_jmp = NULL;
		t->sig = sig;
		atomic_store(&t->finished, true);
		return NULL;
	}
	tl_jmp = &jb;
	for (unsigned r = 0; r < t->nregions; r++) {
		uint64_t npages = t->regions[r].length / TL_PAGE;
		uint64_t mine = (npages + t->nthreads - 1 - t->index) / t->nthreads;
		unsigned seed = 977 + t->index * 31 + r;
		uint64_t i, step = mine > 1 ? coprime_step(mine, seed) : 1;

		for (i = 0; i < mine; i++) {
			/* random order: a cheap full-period walk, no allocation
			 * (a longjmp out of the loop must not leak) */
			uint64_t k = i;

			if (t->random_order && mine > 1)
				k = (i * step + seed) % mine;
			touch_page(t, r, k * t->nthreads + t->index);
		}
	}
	tl_jmp = NULL;
	atomic_store(&t->finished, true);
	return NULL;
}

void rl_touchers_start(struct rl_toucher *t, unsigned n, unsigned nregions,
		       const struct pcopy_region *regions, bool random_order)
{
	for (unsigned i = 0; i < n; i++) {
		memset(&t[i], 0, sizeof(t[i]));
		t[i].index = i;
		t[i].nthreads = n;
		t[i].nregions = nregions;
		t[i].regions = regions;
		t[i].random_order = random_order;
		t[i].started = pthread_create(&t[i].tid, NULL, toucher_main, &t[i]) == 0;
	}
}

unsigned rl_touchers_join(struct rl_toucher *t, unsigned n, int timeout_ms)
{
	uint64_t end = mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
	unsigned left = 0;

	for (;;) {
		left = 0;
		for (unsigned i = 0; i < n; i++)
			if (t[i].started && !atomic_load(&t[i].finished))
				left++;
		if (!left || mono_ms() >= end)
			break;
		usleep(10000);
	}
	for (unsigned i = 0; i < n; i++)
		if (t[i].started && atomic_load(&t[i].finished)) {
			pthread_join(t[i].tid, NULL);
			t[i].started = false;
		}
	return left;
}

/* ---- log capture ---- */

void rl_log_init(struct rl_log *l, const char *prefix)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->lock, NULL);
	l->prefix = prefix;
	l->echo = true;
}

void rl_log_fini(struct rl_log *l)
{
	free(l->buf);
	l->buf = NULL;
	pthread_mutex_destroy(&l->lock);
}

void rl_log_fn(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	struct rl_log *l = opaque;
	size_t n = strlen(msg);

	if (lvl > PCOPY_LOG_INFO)
		return;
	if (l->echo && lvl <= PCOPY_LOG_WARN)
		fprintf(stderr, "%s: %s\n", l->prefix ? l->prefix : "dest", msg);
	pthread_mutex_lock(&l->lock);
	if (l->len + n + 2 > l->cap && l->cap < (4u << 20)) {
		size_t cap = (l->cap ? l->cap * 2 : 8192) + n + 2;
		char *b = realloc(l->buf, cap);

		if (b) {
			l->buf = b;
			l->cap = cap;
		}
	}
	if (l->len + n + 2 <= l->cap) {
		memcpy(l->buf + l->len, msg, n);
		l->len += n;
		l->buf[l->len++] = '\n';
		l->buf[l->len] = '\0';
	}
	pthread_mutex_unlock(&l->lock);
}

bool rl_log_has(struct rl_log *l, const char *s)
{
	bool found;

	pthread_mutex_lock(&l->lock);
	found = l->buf && strcasestr(l->buf, s) != NULL;
	pthread_mutex_unlock(&l->lock);
	return found;
}

/* ---- destination harness ---- */

int rl_dest_map(struct rl_dest *r, const struct tl_source_cfg *img,
		enum tl_mem mem, const char *name)
{
	char why[256];
	int rc;

	r->img = *img;
	r->mem = mem;
	for (unsigned i = 0; i < 4; i++) {
		r->maps[i].addr = NULL;
		r->maps[i].fd = -1;
	}
	if (mem == TL_MEM_HUGETLB) {
		unsigned long need = 0;

		for (unsigned i = 0; i < img->nregions; i++)
			need += img->lengths[i] / TL_HUGE;
		r->huge_reserved = tl_hugetlb_reserve(need, why, sizeof(why));
		if (r->huge_reserved < 0) {
			tl_skip(name, why);
			r->huge_reserved = 0;
			return 1;
		}
	}
	for (unsigned i = 0; i < img->nregions; i++) {
		rc = tl_map(mem, img->lengths[i], &r->maps[i]);
		if (rc < 0)
			return rc;
	}
	tl_regions(img, r->maps, r->regions);
	return 0;
}

void rl_dest_fini(struct rl_dest *r)
{
	pcopy_dest_destroy(r->d);
	r->d = NULL;
	proxy_destroy(r->px);
	r->px = NULL;
	for (unsigned i = 0; i < r->nsrc; i++)
		rl_src_kill(&r->src[i]);
	for (unsigned i = 0; i < r->img.nregions; i++)
		tl_unmap(&r->maps[i]);
	if (r->huge_reserved > 0)
		tl_hugetlb_release();
	r->huge_reserved = 0;
}

int rl_connect(void *opaque, int urgent)
{
	struct rl_dest *r = opaque;
	unsigned cur = atomic_load(&r->cur);
	int sv[2], up, k;

	(void)urgent;
	if (cur >= r->nsrc)
		return -ECONNREFUSED;
	up = rl_src_connect(&r->src[cur]);
	if (up < 0) {
		atomic_fetch_add(&r->connect_fails, 1);
		return up;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		int e = -errno;

		close(up);
		return e;
	}
	k = proxy_attach(r->px, sv[1], up);
	if (k < 0) {
		close(sv[0]);
		return k;
	}
	atomic_fetch_add(&r->connects, 1);
	return sv[0];
}

unsigned long rl_verify_all(const struct rl_dest *r, char *why, size_t whylen)
{
	unsigned long bad = 0;

	for (unsigned i = 0; i < r->img.nregions; i++)
		for (uint64_t pg = 0; pg < r->img.lengths[i] / TL_PAGE; pg++) {
			long b = tl_page_check(i, pg, (char *)r->maps[i].addr +
						       pg * TL_PAGE);

			if (b >= 0 && bad++ == 0)
				snprintf(why, whylen, "region %u page %llu byte %ld",
					 i, (unsigned long long)pg, b);
		}
	return bad;
}

unsigned long rl_verify_present(const struct rl_dest *r, uint64_t *present,
				char *why, size_t whylen)
{
	unsigned long bad = 0;

	*present = 0;
	for (unsigned i = 0; i < r->img.nregions; i++) {
		size_t ps = r->img.page_sizes[i];

		for (uint64_t off = 0; off < r->img.lengths[i]; off += ps) {
			unsigned char v = 0;
			char *hp = (char *)r->maps[i].addr + off;

			if (mincore(hp, ps, &v) < 0 || !(v & 1))
				continue;
			(*present)++;
			for (uint64_t t = 0; t < ps; t += TL_PAGE) {
				uint64_t pg = (off + t) / TL_PAGE;
				long b = tl_page_check(i, pg, hp + t);

				if (b >= 0 && bad++ == 0)
					snprintf(why, whylen,
						 "resident region %u page %llu byte %ld",
						 i, (unsigned long long)pg, b);
			}
		}
	}
	return bad;
}

size_t rl_hello_bytes(const struct tl_source_cfg *img)
{
	struct wire_hello h;
	uint8_t buf[8192];
	int n;

	memset(&h, 0, sizeof(h));
	h.version = PCOPY_WIRE_VERSION;
	h.target_page = PCOPY_TARGET_PAGE;
	h.nregions = img->nregions;
	for (unsigned i = 0; i < img->nregions; i++) {
		snprintf(h.regions[i].name, sizeof(h.regions[i].name), "%s",
			 img->names[i]);
		h.regions[i].length = img->lengths[i];
		h.regions[i].host_page = (uint32_t)img->page_sizes[i];
	}
	n = wire_hello_encode(&h, buf, sizeof(buf));
	return n > 0 ? PCOPY_WIRE_HDR_SIZE + (size_t)n : 0;
}
