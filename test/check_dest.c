/* SPDX-License-Identifier: MIT */
/*
 * check_dest: the destination runtime (uffd/) against a scripted fake source
 * running in a thread over a socketpair, over every memory type (anonymous,
 * memfd, hugetlb): restores with toucher threads, malformed input, failure
 * modes (BLOCK then destroy, SIGBUS), pool exhaustion, destroy at any stage.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <valgrind/valgrind.h>

#include "common.h"
#include "postcopy.h"
#include "wire.h"

#define TP 4096u
#define HUGE_PS (2u << 20)
#define NREG 2

enum mt { MT_ANON, MT_MEMFD, MT_HUGE, MT_N };
static const char *const mt_name[MT_N] = { "anon", "memfd", "hugetlb" };

/* Host pages per region, per memory type (region 0, region 1). */
static const size_t mt_pages[MT_N][NREG] = { { 384, 128 }, { 384, 128 }, { 4, 2 } };

static bool g_huge_ok;		/* enough free huge pages (checked in main) */
static const char *g_huge_why = "";

/* ------------------------------------------------------------------ */
/* memory and content                                                  */
/* ------------------------------------------------------------------ */

struct mem {
	uint8_t *p;
	size_t len, ps;
	int fd;
};

static size_t mt_ps(enum mt m)
{
	return m == MT_HUGE ? HUGE_PS : TP;
}

static bool mem_alloc(struct mem *m, enum mt t, size_t pages, bool noreserve)
{
	int flags = MAP_SHARED | (noreserve ? MAP_NORESERVE : 0);

	m->ps = mt_ps(t);
	m->len = pages * m->ps;
	m->fd = -1;
	if (t == MT_ANON) {
		m->p = mmap(NULL, m->len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	} else {
		m->fd = memfd_create("check_dest",
				    MFD_CLOEXEC | (t == MT_HUGE ? MFD_HUGETLB : 0));
		ck_assert_int_ge(m->fd, 0);
		ck_assert_int_eq(ftruncate(m->fd, (off_t)m->len), 0);
		m->p = mmap(NULL, m->len, PROT_READ | PROT_WRITE, flags, m->fd, 0);
	}
	if (m->p == MAP_FAILED) {
		m->p = NULL;
		return false;
	}
	return true;
}

static void mem_free(struct mem *m)
{
	if (m->p)
		munmap(m->p, m->len);
	if (m->fd >= 0)
		close(m->fd);
	m->p = NULL;
	m->fd = -1;
}

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* ~25% of host pages are all zero; in huge pages, 25% of the target pages
 * of the others too (mixed host pages). */
static bool tp_zero(unsigned r, uint64_t t, unsigned ntp)
{
	if (mix(((uint64_t)r << 48) ^ (t / ntp) ^ 0x5a5a) % 4 == 0)
		return true;
	return ntp > 1 && mix(((uint64_t)r << 48) ^ t ^ 0xa5a5) % 4 == 0;
}

/* Target page t of region r: zeros, a compressible repeated block, or noise. */
static void fill_tp(unsigned r, uint64_t t, unsigned ntp, uint8_t *out)
{
	uint64_t s = mix(((uint64_t)r << 48) ^ t), *w = (uint64_t *)out;
	unsigned i;

	if (tp_zero(r, t, ntp)) {
		memset(out, 0, TP);
		return;
	}
	for (i = 0; i < TP / 8; i++)
		w[i] = mix(s + (s % 3 == 0 ? i % 8 : i));
	w[0] |= 1;	/* never all zero */
}

/* /proc/self/pagemap "present": a page nobody placed cannot be mapped
 * (touching it would block in the fault), so this shows what was written. */
static bool page_present(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, &e, 8, (off_t)((uintptr_t)addr / TP) * 8), 8);
	close(fd);
	return (e >> 63) & 1;
}

/* Permissions of the mapping holding addr, e.g. "rw-s", from /proc/self/maps. */
static void addr_perms(const void *addr, char perms[8])
{
	FILE *f = fopen("/proc/self/maps", "re");
	unsigned long lo, hi;
	char line[512], p[8];

	strcpy(perms, "????");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, p) == 3 &&
		    (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
			strcpy(perms, p);
			break;
		}
	}
	fclose(f);
}

/* A counter of the 2 MiB pool, e.g. "free_hugepages"; -1 if unreadable. */
static long hp_read(const char *name)
{
	char path[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-2048kB/%s", name);
	f = fopen(path, "re");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* Free huge pages nobody has reserved. */
static long hp_avail(void)
{
	return hp_read("free_hugepages") - hp_read("resv_hugepages");
}

static bool huge_skip(enum mt t)
{
	long avail;

	if (t != MT_HUGE)
		return false;
	if (!g_huge_ok) {
		fprintf(stderr, "SKIP hugetlb case: %s\n", g_huge_why);
		return true;
	}
	/* the pool is global: concurrent test programs may hold it */
	avail = hp_avail();
	if (avail < 8) {
		fprintf(stderr, "SKIP hugetlb case: only %ld unreserved 2 MiB pages free (pool in use elsewhere)\n",
			avail);
		return true;
	}
	return false;
}

/* ------------------------------------------------------------------ */
/* fake source                                                         */
/* ------------------------------------------------------------------ */

enum script {
	SC_NORMAL,	/* requests first, background otherwise, END, wait DONE */
	SC_DUP,		/* NORMAL, but host page 0 of region 0 is sent twice */
	SC_STALL,	/* `before` host pages, then only read */
	SC_WAIT_REQ_BAD,/* wait for a REQ, `before` pages, then the bad thing */
	/* `before` host pages of region 0, then one bad thing: */
	SC_BAD_CRC, SC_BAD_REGION, SC_BAD_OFFSET_END, SC_BAD_MISALIGNED,
	SC_BAD_RAWLEN, SC_OUT_OF_ORDER, SC_OTHER_HP_MIDPAGE, SC_END_MISSING,
	SC_UNKNOWN_TYPE, SC_UNEXPECTED_REQ, SC_SRC_ERROR, SC_EOF, SC_BAD_ZLIB,
	SC_ZLIB_NOT_NEGOTIATED, SC_BAD_MAGIC, SC_UNEXPECTED_HELLO, SC_UNEXPECTED_DONE,
	SC_RESUME,	/* serve with the cuts in `cuts`, accept resumes */
	SC_HOLD,	/* `before` host pages, then only read until `release`,
			   then everything not sent on this connection */
	SC_URGENT_SRV,	/* an urgent connection: answer REQs until `release` */
	SC_URGENT_FLOOD,/* urgent: after the first REQ, send region 1 again and
			   again without reading until `flood_end`, then as
			   SC_URGENT_SRV */
};

/* How the fake source breaks a connection (SC_RESUME). */
enum cut_kind {
	CUT_EOF,	/* after whole host pages: shutdown(SHUT_WR) */
	CUT_MIDFRAME,	/* a header and part of its payload, then EOF */
	CUT_MIDHP,	/* the first target pages of a host page, then EOF */
	CUT_CORRUPT,	/* a frame with a bad crc; the destination hangs up */
	CUT_SILENT,	/* stop sending, keep reading: keepalive must notice */
};

struct cut {
	enum cut_kind kind;
	unsigned after;		/* host pages sent on this connection first */
	bool refuse_next;	/* close the next connection unanswered */
};

struct fake {
	int fd;
	unsigned nreg;
	size_t len[NREG], ps[NREG];
	uint32_t offer;		/* features offered */
	size_t len0_override;	/* != 0: lie about region 0's length */
	enum script sc;
	unsigned before;	/* host pages sent before the bad thing */
	enum script bad;	/* for SC_WAIT_REQ_BAD */
	bool wait_first_req;	/* no background until a REQ came */
	bool reverse;		/* background from the end */
	const void *psk;	/* handshake key, or NULL */
	size_t psk_len;
	struct cut cuts[6];	/* SC_RESUME */
	unsigned ncuts;
	atomic_bool release;	/* SC_HOLD: go on */
	atomic_bool flood_end;	/* SC_URGENT_FLOOD: serve requests now */
	/* the next connection (resume / urgent), handed in by the test */
	pthread_mutex_t hand_lock;
	pthread_cond_t hand_cond;
	int next_fd;
	/* results */
	int hs_rc;
	char hs_err[PCOPY_ERRMSG_MAX];
	uint64_t req_entries, req_msgs;
	uint64_t pings, resumes, refused, bitmap_checks, post_resume_reqs;
	bool got_done, got_error;
	int fail_line;		/* != 0: the fake itself hit a problem here */
	/* state */
	uint32_t features;
	uint64_t session;
	uint8_t *sent[NREG];
	uint8_t *reqd[NREG];	/* every host page ever requested */
	uint8_t *page;		/* one host page */
	uint8_t *zbuf;
	struct codec_zlib *z;
	uint64_t *q;
	size_t qh, qt, qcap;
	uint8_t *rbuf;		/* PCOPY_WIRE_PAYLOAD_MAX */
	pthread_t thr;
};

#define FAKE_FAIL(f) do { if (!(f)->fail_line) (f)->fail_line = __LINE__; } while (0)

static int fake_frame(struct fake *f, uint8_t type, uint8_t kind, uint32_t region,
		      uint32_t count, uint64_t offset, const void *p, uint32_t len,
		      bool corrupt)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = type, .kind = kind,
			      .region = region, .count = count, .offset = offset,
			      .length = len };
	uint8_t hb[PCOPY_WIRE_HDR_SIZE];
	struct iovec iov[2] = { { hb, sizeof(hb) }, { (void *)(uintptr_t)p, len } };

	wire_hdr_seal(hb, &h, p, len);
	if (corrupt)
		hb[28] ^= 0x40;	/* crc */
	return conn_writev_all(f->fd, iov, len ? 2 : 1);
}

/* Send host page hp of region r as frames: zero runs, raw or zlib runs. */
static int fake_send_hp(struct fake *f, unsigned r, uint64_t hp)
{
	unsigned ntp = (unsigned)(f->ps[r] / TP), t = 0, n, i;
	uint64_t t0 = hp * ntp;
	int rc = 0;

	for (i = 0; i < ntp; i++)
		fill_tp(r, t0 + i, ntp, f->page + (size_t)i * TP);
	while (t < ntp && !rc) {
		bool z = tp_zero(r, t0 + t, ntp);
		unsigned maxrun = 1 + (unsigned)(mix(t0 + t) % 48);

		for (n = 1; t + n < ntp && n < maxrun &&
			    tp_zero(r, t0 + t + n, ntp) == z; n++)
			;
		if (z) {
			rc = fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, r, n,
					(t0 + t) * TP, NULL, 0, false);
		} else {
			long c = 0;

			if (f->z && (f->features & PCOPY_FEAT_ZLIB) && mix(t0 + t) % 2)
				c = codec_zlib_compress(f->z, f->page + (size_t)t * TP,
							(size_t)n * TP, f->zbuf,
							PCOPY_WIRE_PAYLOAD_MAX);
			if (c > 0)
				rc = fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, r, n,
						(t0 + t) * TP, f->zbuf, (uint32_t)c, false);
			else
				rc = fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, r, n,
						(t0 + t) * TP, f->page + (size_t)t * TP,
						n * TP, false);
		}
		t += n;
	}
	if (!rc)
		f->sent[r][hp] = 1;
	return rc;
}

/* Read one message if one is readable within timeout_ms. 1 = got one,
 * 0 = none, -1 = EOF/error. REQs go to the queue. */
static int fake_poll_msg(struct fake *f, int timeout_ms)
{
	struct pollfd p = { .fd = f->fd, .events = POLLIN };
	struct wire_req req[PCOPY_REQ_MAX_ENTRIES];
	struct wire_region tab[NREG];
	struct wire_hdr h;
	char err[PCOPY_ERRMSG_MAX];
	unsigned i;
	int rc;

	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	rc = conn_recv_msg(f->fd, &h, f->rbuf, PCOPY_WIRE_PAYLOAD_MAX,
			   pcopy_now_ns() + 10000000000ull, -1, err, sizeof(err));
	if (rc)
		return -1;
	switch (h.type) {
	case PCOPY_MSG_REQ:
		memset(tab, 0, sizeof(tab));
		for (i = 0; i < f->nreg; i++) {
			tab[i].length = f->len[i];
			tab[i].host_page = (uint32_t)f->ps[i];
		}
		if (wire_req_decode(f->rbuf, h.count, req, tab, f->nreg, err,
				    sizeof(err))) {
			FAKE_FAIL(f);
			return -1;
		}
		f->req_msgs++;
		for (i = 0; i < h.count; i++) {
			f->req_entries++;
			/* atomic: test_remove watches it from its thread */
			__atomic_store_n(&f->reqd[req[i].region][req[i].offset / f->ps[req[i].region]],
					 1, __ATOMIC_RELAXED);
			if (req[i].count * TP != f->ps[req[i].region] ||
			    req[i].offset % f->ps[req[i].region])
				FAKE_FAIL(f);	/* one whole host page per entry */
			if (f->qt - f->qh < f->qcap)
				f->q[f->qt++ % f->qcap] =
					((uint64_t)req[i].region << 48) |
					(req[i].offset / f->ps[req[i].region]);
		}
		return 1;
	case PCOPY_MSG_DONE:
		f->got_done = true;
		return 1;
	case PCOPY_MSG_PING:
		f->pings++;
		return 1;
	case PCOPY_MSG_ERROR:
		f->got_error = true;
		return -1;
	default:
		FAKE_FAIL(f);
		return -1;
	}
}

/* Read until EOF, DONE or 10 s. */
static void fake_drain(struct fake *f)
{
	uint64_t end = pcopy_now_ns() + 10000000000ull;

	while (!f->got_done && pcopy_now_ns() < end) {
		int rc = fake_poll_msg(f, 100);

		if (rc < 0)
			break;
	}
}

static uint64_t fake_total(struct fake *f)
{
	uint64_t n = 0;
	unsigned i;

	for (i = 0; i < f->nreg; i++)
		n += f->len[i] / f->ps[i];
	return n;
}

/* Next host page to send: a queued request not yet sent, else background. */
static bool fake_next(struct fake *f, uint64_t *bg, unsigned *r, uint64_t *hp)
{
	uint64_t total = fake_total(f);

	while (f->qh < f->qt) {
		uint64_t e = f->q[f->qh++ % f->qcap];

		*r = (unsigned)(e >> 48);
		*hp = e & ((1ull << 48) - 1);
		if (!f->sent[*r][*hp])
			return true;
	}
	if (f->wait_first_req && !f->req_msgs)
		return false;
	while (*bg < total) {
		uint64_t k = f->reverse ? total - 1 - *bg : *bg;
		unsigned i;

		(*bg)++;
		for (i = 0; i < f->nreg; i++) {
			uint64_t np = f->len[i] / f->ps[i];

			if (k < np) {
				if (!f->sent[i][k]) {
					*r = i;
					*hp = k;
					return true;
				}
				break;
			}
			k -= np;
		}
	}
	return false;
}

static void fake_serve(struct fake *f)
{
	uint64_t bg = 0, total = fake_total(f), sent = 0;
	unsigned r;
	uint64_t hp;

	while (sent < total) {
		int rc;

		do
			rc = fake_poll_msg(f, 0);
		while (rc > 0);
		if (rc < 0)
			return;
		if (!fake_next(f, &bg, &r, &hp)) {
			if (fake_poll_msg(f, 50) < 0)
				return;
			continue;
		}
		if (fake_send_hp(f, r, hp))
			break;	/* the destination went away: read what it said */
		sent++;
		if (f->sc == SC_DUP && sent == 1 && fake_send_hp(f, r, hp))
			break;
	}
	if (sent == total)
		fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
	fake_drain(f);
}

static void fake_bad(struct fake *f, enum script sc)
{
	uint64_t hp = f->before, ntp = f->ps[0] / TP;
	uint64_t off = hp * f->ps[0];
	uint8_t buf[64];
	size_t n;
	unsigned i;

	memset(f->page, 0x77, TP);
	for (i = 0; i < f->before; i++)
		if (fake_send_hp(f, 0, i))
			return;
	switch (sc) {
	case SC_BAD_CRC:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off, f->page, TP, true);
		break;
	case SC_BAD_REGION:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, f->nreg, 1, 0, f->page, TP, false);
		break;
	case SC_BAD_OFFSET_END:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, f->len[0], f->page, TP, false);
		break;
	case SC_BAD_MISALIGNED:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off + 8, f->page, TP, false);
		break;
	case SC_BAD_RAWLEN:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off, f->page, TP - 1, false);
		break;
	case SC_OUT_OF_ORDER:
		/* target page 1 of host page hp first; with 4 KiB host pages
		 * the only way to disorder is a frame spanning two of them */
		if (ntp > 1)
			fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off + TP, f->page, TP, false);
		else
			fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 0, 2, off, NULL, 0, false);
		break;
	case SC_OTHER_HP_MIDPAGE:
		/* half of host page hp, then host page hp + 1 */
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off, f->page, TP, false);
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off + f->ps[0], f->page, TP, false);
		break;
	case SC_END_MISSING:
		fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
		break;
	case SC_UNKNOWN_TYPE:
		fake_frame(f, 99, 0, 0, 0, 0, NULL, 0, false);
		break;
	case SC_UNEXPECTED_REQ: {
		struct wire_req rq = { 0, 1, 0 };

		wire_req_encode(&rq, 1, buf);
		fake_frame(f, PCOPY_MSG_REQ, 0, 0, 1, 0, buf, PCOPY_REQ_ENTRY_SIZE, false);
		break;
	}
	case SC_UNEXPECTED_DONE:
		fake_frame(f, PCOPY_MSG_DONE, 0, 0, 0, 0, NULL, 0, false);
		break;
	case SC_UNEXPECTED_HELLO: {
		/* a second HELLO mid-stream, well formed */
		struct wire_hello hl;
		uint8_t hb[2048];
		int len;

		memset(&hl, 0, sizeof(hl));
		hl.version = PCOPY_WIRE_VERSION;
		hl.role = PCOPY_ROLE_SOURCE;
		hl.target_page = TP;
		hl.nregions = 1;
		strcpy(hl.regions[0].name, "ram0");
		hl.regions[0].length = f->len[0];
		hl.regions[0].host_page = (uint32_t)f->ps[0];
		len = wire_hello_encode(&hl, hb, sizeof(hb));
		if (len <= 0)
			FAKE_FAIL(f);
		else
			fake_frame(f, PCOPY_MSG_HELLO, 0, 0, 0, 0, hb, (uint32_t)len, false);
		break;
	}
	case SC_SRC_ERROR:
		n = wire_error_encode(EIO, "disk on fire", buf, sizeof(buf));
		fake_frame(f, PCOPY_MSG_ERROR, 0, 0, 0, 0, buf, (uint32_t)n, false);
		break;
	case SC_EOF: {
		/* a whole header and part of the payload, then the end */
		struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
				      .kind = PCOPY_KIND_RAW, .count = 1, .offset = off,
				      .length = TP };
		uint8_t hb[PCOPY_WIRE_HDR_SIZE];
		struct iovec iov[2] = { { hb, sizeof(hb) }, { f->page, 100 } };

		wire_hdr_seal(hb, &h, f->page, TP);
		conn_writev_all(f->fd, iov, 2);
		shutdown(f->fd, SHUT_WR);
		break;
	}
	case SC_BAD_ZLIB:
		memset(buf, 0x5a, sizeof(buf));
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 1, off, buf, sizeof(buf), false);
		break;
	case SC_ZLIB_NOT_NEGOTIATED:
		n = (size_t)codec_zlib_compress(f->z, f->page, TP, f->zbuf, PCOPY_WIRE_PAYLOAD_MAX);
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 1, off, f->zbuf, (uint32_t)n, false);
		break;
	case SC_BAD_MAGIC: {
		struct wire_hdr h = { .magic = 0x11223344, .type = PCOPY_MSG_END };
		uint8_t hb[PCOPY_WIRE_HDR_SIZE];
		struct iovec iov = { hb, sizeof(hb) };

		wire_hdr_seal(hb, &h, NULL, 0);
		conn_writev_all(f->fd, &iov, 1);
		break;
	}
	default:
		FAKE_FAIL(f);
	}
	fake_drain(f);
}


/* ---- resume / hold / urgent scripts ---- */

static void fake_urgent(struct fake *f)
{
	unsigned r;
	uint64_t hp, bg;

	f->wait_first_req = true;
	while (!atomic_load(&f->release)) {
		if (fake_poll_msg(f, 20) < 0)
			return;
		bg = fake_total(f);	/* requests only */
		while (fake_next(f, &bg, &r, &hp))
			if (fake_send_hp(f, r, hp))
				return;
	}
}

/* The test hands the fake its next connection (resume or urgent). */
static void fake_hand(struct fake *f, int fd)
{
	pthread_mutex_lock(&f->hand_lock);
	if (f->next_fd >= 0)
		close(f->next_fd);
	f->next_fd = fd;
	pthread_cond_broadcast(&f->hand_cond);
	pthread_mutex_unlock(&f->hand_lock);
}

/* Wait up to 10 s for the next connection; -1 if none came. */
static int fake_take(struct fake *f)
{
	struct timespec ts;
	int fd;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&f->hand_lock);
	while (f->next_fd < 0 &&
	       pthread_cond_timedwait(&f->hand_cond, &f->hand_lock, &ts) == 0)
		;
	fd = f->next_fd;
	f->next_fd = -1;
	pthread_mutex_unlock(&f->hand_lock);
	return fd;
}

/* Send the first `ntp_max` target pages of host page hp of r (raw), not
 * marking it sent. */
static void fake_send_partial(struct fake *f, unsigned r, uint64_t hp, unsigned ntp_max)
{
	unsigned ntp = (unsigned)(f->ps[r] / TP), i;

	for (i = 0; i < ntp_max && i < ntp; i++) {
		fill_tp(r, hp * ntp + i, ntp, f->page);
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, r, 1,
			   (hp * ntp + i) * TP, f->page, TP, false);
	}
}

/* Break the current connection as `c` says, read what the destination
 * still sends (its REQs count) until it hangs up, close. */
static void fake_cut(struct fake *f, const struct cut *c)
{
	unsigned r = 0;
	uint64_t hp = 0, bg = 0;
	bool have = fake_next(f, &bg, &r, &hp);

	switch (c->kind) {
	case CUT_EOF:
		break;
	case CUT_MIDFRAME:
		if (have) {
			struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
					      .kind = PCOPY_KIND_RAW, .region = r, .count = 1,
					      .offset = hp * f->ps[r], .length = TP };
			uint8_t hb[PCOPY_WIRE_HDR_SIZE];
			struct iovec iov[2] = { { hb, sizeof(hb) }, { f->page, 1000 } };

			fill_tp(r, hp * (f->ps[r] / TP), (unsigned)(f->ps[r] / TP), f->page);
			wire_hdr_seal(hb, &h, f->page, TP);
			conn_writev_all(f->fd, iov, 2);
		}
		break;
	case CUT_MIDHP:
		if (have)
			fake_send_partial(f, r, hp, (unsigned)(f->ps[r] / TP / 2));
		break;
	case CUT_CORRUPT:
		if (have) {
			unsigned ntp = (unsigned)(f->ps[r] / TP);

			fill_tp(r, hp * ntp, ntp, f->page);
			f->page[100] ^= 1;	/* payload no longer matches... */
			fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, r, 1, hp * f->ps[r],
				   f->page, TP, true);	/* ...nor the crc */
		}
		break;
	case CUT_SILENT:
		break;
	}
	if (have) {
		/* put it back: it was taken from the queue, not sent */
		f->q[f->qt++ % f->qcap] = ((uint64_t)r << 48) | hp;
	}
	if (c->kind != CUT_SILENT && c->kind != CUT_CORRUPT)
		shutdown(f->fd, SHUT_WR);
	/* the destination closes its end when it pauses */
	while (fake_poll_msg(f, 100) >= 0)
		if (f->got_done)
			break;
	close(f->fd);
	f->fd = -1;
}

/* Accept a resume: handshake, the bitmap must say exactly which host pages
 * were sent whole, then the first REQ must hold every requested page not
 * received. Returns 0, or -1 if this connection failed (the test retries). */
static int fake_accept_resume(struct fake *f, const struct wire_hello *ours, bool refuse)
{
	struct conn_hs_params hp = { f->psk, f->psk_len, f->session, 5000 };
	struct wire_region tab[NREG];
	struct wire_hello peer;
	struct wire_hdr h;
	uint64_t *bits[NREG], np, next_page = 0, i;
	uint32_t next_region = 0, feat;
	char err[PCOPY_ERRMSG_MAX];
	unsigned r;
	int rc = 0, fd = fake_take(f);

	if (fd < 0) {
		FAKE_FAIL(f);
		return -1;
	}
	if (refuse) {
		f->refused++;
		close(fd);
		return -1;
	}
	f->fd = fd;
	if (conn_handshake2(fd, ours, &peer, &feat, &hp, err, sizeof(err)) ||
	    peer.conn_kind != PCOPY_CONN_RESUME || peer.session_id != f->session) {
		FAKE_FAIL(f);
		return -1;
	}
	memset(tab, 0, sizeof(tab));
	for (r = 0; r < f->nreg; r++) {
		tab[r].length = f->len[r];
		tab[r].host_page = (uint32_t)f->ps[r];
		bits[r] = calloc((f->len[r] / f->ps[r] + 63) / 64, 8);
	}
	do {
		rc = conn_recv_msg(fd, &h, f->rbuf, PCOPY_WIRE_PAYLOAD_MAX,
				   pcopy_now_ns() + 5000000000ull, -1, err, sizeof(err));
		if (!rc && h.type != PCOPY_MSG_RECV_BITMAP)
			rc = -EPROTO;
		if (!rc)
			rc = wire_bitmap_apply(&h, f->rbuf, tab, f->nreg, &next_region,
					       &next_page, bits, err, sizeof(err));
	} while (rc == 0);
	if (rc != 1) {
		fprintf(stderr, "fake: bitmap: %d %s\n", rc, err);
		FAKE_FAIL(f);
	}
	/* exactly what was sent whole; and that is what we resend from */
	for (r = 0; r < f->nreg && rc == 1; r++) {
		np = f->len[r] / f->ps[r];
		for (i = 0; i < np; i++) {
			bool b = (bits[r][i / 64] >> (i % 64)) & 1;

			if (b != (f->sent[r][i] != 0)) {
				fprintf(stderr, "fake: bitmap region %u host page %" PRIu64
					": dest says %d, sent %d\n", r, i, b, f->sent[r][i]);
				FAKE_FAIL(f);
			}
		}
	}
	f->bitmap_checks++;
	for (r = 0; r < f->nreg; r++)
		free(bits[r]);
	/* The first REQ (if anything requested is missing) re-sends all of it. */
	{
		uint64_t want = 0, got = 0;
		struct wire_req req[PCOPY_REQ_MAX_ENTRIES];

		for (r = 0; r < f->nreg; r++)
			for (i = 0; i < f->len[r] / f->ps[r]; i++)
				want += f->reqd[r][i] && !f->sent[r][i];
		if (want) {
			rc = conn_recv_msg(fd, &h, f->rbuf, PCOPY_WIRE_PAYLOAD_MAX,
					   pcopy_now_ns() + 5000000000ull, -1, err, sizeof(err));
			if (rc || h.type != PCOPY_MSG_REQ ||
			    wire_req_decode(f->rbuf, h.count, req, tab, f->nreg, err,
					    sizeof(err))) {
				FAKE_FAIL(f);
				return -1;
			}
			for (i = 0; i < h.count; i++) {
				r = req[i].region;
				np = req[i].offset / f->ps[r];
				if (f->sent[r][np])
					FAKE_FAIL(f);	/* requested what it has */
				got += f->reqd[r][np];
				f->reqd[r][np] = 1;
				f->q[f->qt++ % f->qcap] = ((uint64_t)r << 48) | np;
			}
			f->post_resume_reqs += h.count;
			if (got != want) {
				fprintf(stderr, "fake: first REQ after resume covers %" PRIu64
					" of %" PRIu64 " pending pages\n", got, want);
				FAKE_FAIL(f);
			}
		}
	}
	f->resumes++;
	return 0;
}

static uint64_t fake_count_sent(struct fake *f)
{
	uint64_t n = 0, i;
	unsigned r;

	for (r = 0; r < f->nreg; r++)
		for (i = 0; i < f->len[r] / f->ps[r]; i++)
			n += f->sent[r][i] != 0;
	return n;
}

/* Serve, breaking the connection at each cut and accepting the resume. */
static void fake_serve_resume(struct fake *f, const struct wire_hello *ours)
{
	uint64_t bg = 0, total = fake_total(f), on_conn = 0;
	unsigned ci = 0, r;
	uint64_t hp;

	while (fake_count_sent(f) < total || ci < f->ncuts) {
		int rc;

		if (ci < f->ncuts && on_conn >= f->cuts[ci].after) {
			bool refuse = f->cuts[ci].refuse_next;

			fake_cut(f, &f->cuts[ci++]);
			while (fake_accept_resume(f, ours, refuse) < 0) {
				if (f->fail_line || f->refused > 5)
					return;
				refuse = false;
			}
			on_conn = 0;
			bg = 0;
			continue;
		}
		do
			rc = fake_poll_msg(f, 0);
		while (rc > 0);
		if (rc < 0)
			return;
		if (!fake_next(f, &bg, &r, &hp)) {
			if (fake_count_sent(f) == total && ci < f->ncuts) {
				on_conn = f->cuts[ci].after;	/* cut now */
				continue;
			}
			if (fake_poll_msg(f, 20) < 0)
				return;
			continue;
		}
		if (fake_send_hp(f, r, hp))
			return;
		on_conn++;
	}
	fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
	fake_drain(f);
}

/* `before` host pages, read only until `release`, then every page not sent
 * on this connection (the urgent one may have sent some: duplicates). */
static void fake_hold(struct fake *f)
{
	uint64_t bg = 0, total = fake_total(f);
	unsigned r;
	uint64_t hp;

	while (fake_count_sent(f) < f->before && fake_next(f, &bg, &r, &hp))
		if (fake_send_hp(f, r, hp))
			return;
	while (!atomic_load(&f->release))
		if (fake_poll_msg(f, 20) < 0)
			return;
	while (fake_count_sent(f) < total) {
		int rc;

		do
			rc = fake_poll_msg(f, 0);
		while (rc > 0);
		if (rc < 0 || !fake_next(f, &bg, &r, &hp) || fake_send_hp(f, r, hp))
			return;
	}
	fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
	fake_drain(f);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	struct wire_hello ours, peer;
	unsigned i;

	struct conn_hs_params hp = { f->psk, f->psk_len, f->session, 5000 };

	memset(&ours, 0, sizeof(ours));
	ours.version = PCOPY_WIRE_VERSION;
	ours.role = PCOPY_ROLE_SOURCE;
	ours.conn_kind = PCOPY_CONN_MAIN;
	ours.session_id = f->session;
	ours.features = f->offer;
	ours.target_page = TP;
	ours.nregions = f->nreg;
	for (i = 0; i < f->nreg; i++) {
		snprintf(ours.regions[i].name, sizeof(ours.regions[i].name), "ram%u", i);
		ours.regions[i].length = i == 0 && f->len0_override ? f->len0_override
								   : f->len[i];
		ours.regions[i].host_page = (uint32_t)f->ps[i];
	}
	f->hs_rc = conn_handshake2(f->fd, &ours, &peer, &f->features, &hp,
				   f->hs_err, sizeof(f->hs_err));
	if (f->hs_rc)
		return NULL;
	if ((f->features & PCOPY_FEAT_ZLIB) || f->sc == SC_ZLIB_NOT_NEGOTIATED)
		codec_zlib_new(&f->z, true, 1);
	switch (f->sc) {
	case SC_NORMAL:
	case SC_DUP:
		fake_serve(f);
		break;
	case SC_STALL:
		for (i = 0; i < f->before; i++)
			if (fake_send_hp(f, 0, i))
				return NULL;
		fake_drain(f);
		break;
	case SC_WAIT_REQ_BAD:
		while (!f->req_msgs)
			if (fake_poll_msg(f, 100) < 0)
				return NULL;
		fake_bad(f, f->bad);
		break;
	case SC_RESUME:
		fake_serve_resume(f, &ours);
		break;
	case SC_HOLD:
		fake_hold(f);
		break;
	case SC_URGENT_FLOOD:
		while (!f->req_msgs)
			if (fake_poll_msg(f, 100) < 0)
				return NULL;
		for (i = 0; !atomic_load(&f->flood_end); i++)
			if (fake_send_hp(f, 1, i % (f->len[1] / f->ps[1])))
				return NULL;
		/* fall through */
	case SC_URGENT_SRV:
		fake_urgent(f);
		break;
	default:
		fake_bad(f, f->sc);
	}
	return NULL;
}

/* Set up a fake for the regions of m[], start it on a socketpair; returns
 * the destination's end. */
static int fake_start(struct fake *f, struct mem *m, unsigned nreg, enum script sc)
{
	int sv[2];
	unsigned i;

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->fd = sv[1];
	f->nreg = nreg;
	f->sc = sc;
	f->offer = PCOPY_FEAT_ZLIB;
	for (i = 0; i < nreg; i++) {
		f->len[i] = m[i].len;
		f->ps[i] = m[i].ps;
		f->sent[i] = calloc(m[i].len / m[i].ps, 1);
	}
	f->session = 0x5e5510a0c0ffee01ull;
	f->next_fd = -1;
	pthread_mutex_init(&f->hand_lock, NULL);
	pthread_cond_init(&f->hand_cond, NULL);
	for (i = 0; i < nreg; i++)
		f->reqd[i] = calloc(m[i].len / m[i].ps, 1);
	f->qcap = 1 << 16;
	f->q = calloc(f->qcap, sizeof(*f->q));
	f->page = aligned_alloc(TP, HUGE_PS);
	f->zbuf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	f->rbuf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	return sv[0];
}

static void fake_run(struct fake *f)
{
	ck_assert_int_eq(pthread_create(&f->thr, NULL, fake_main, f), 0);
}

static void fake_end(struct fake *f)
{
	unsigned i;

	pthread_join(f->thr, NULL);
	if (f->fd >= 0)
		close(f->fd);
	if (f->next_fd >= 0)
		close(f->next_fd);
	pthread_mutex_destroy(&f->hand_lock);
	pthread_cond_destroy(&f->hand_cond);
	for (i = 0; i < f->nreg; i++) {
		free(f->sent[i]);
		free(f->reqd[i]);
	}
	free(f->q);
	free(f->page);
	free(f->zbuf);
	free(f->rbuf);
	codec_zlib_free(f->z);
}

/* ------------------------------------------------------------------ */
/* destination helpers                                                 */
/* ------------------------------------------------------------------ */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_cb(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	(void)opaque;
	if (lvl > PCOPY_LOG_WARN && !getenv("CHECK_DEST_VERBOSE"))
		return;
	pthread_mutex_lock(&g_log_lock);
	fprintf(stderr, "  [dest %d] %s\n", (int)lvl, msg);
	pthread_mutex_unlock(&g_log_lock);
}

static atomic_int g_events, g_event_err;

static void event_cb(void *opaque, int err)
{
	(void)opaque;
	atomic_fetch_add(&g_events, 1);
	atomic_store(&g_event_err, err);
}

static void regions_of(struct mem *m, unsigned n, struct pcopy_region *rg, char names[][16])
{
	unsigned i;

	for (i = 0; i < n; i++) {
		snprintf(names[i], 16, "ram%u", i);
		rg[i] = (struct pcopy_region){ names[i], m[i].p, m[i].len, m[i].ps };
	}
}

static void opts_default(struct pcopy_dest_opts *o)
{
	pcopy_dest_opts_init(o);
	o->log = log_cb;
	o->on_event = event_cb;
	o->handshake_timeout_ms = 5000;
}

static bool alloc_regions(struct mem *m, enum mt t, bool noreserve)
{
	unsigned i;

	for (i = 0; i < NREG; i++)
		if (!mem_alloc(&m[i], t, mt_pages[t][i], noreserve)) {
			fprintf(stderr, "SKIP %s: cannot map region %u: %s\n",
				mt_name[t], i, strerror(errno));
			while (i--)
				mem_free(&m[i]);
			return false;
		}
	return true;
}

static struct pcopy_dest *dest_new(struct mem *m, unsigned n, struct pcopy_dest_opts *o)
{
	struct pcopy_region rg[NREG];
	char names[NREG][16];
	struct pcopy_dest *d = NULL;

	regions_of(m, n, rg, names);
	ck_assert_int_eq(pcopy_dest_create(&d, rg, n, o), 0);
	ck_assert_ptr_nonnull(d);
	return d;
}

/* Every byte of every target page of region r as expected. */
static void verify_region(struct mem *m, unsigned r)
{
	uint8_t want[TP];
	unsigned ntp = (unsigned)(m->ps / TP);
	uint64_t t;

	for (t = 0; t < m->len / TP; t++) {
		fill_tp(r, t, ntp, want);
		if (memcmp(m->p + t * TP, want, TP))
			ck_abort_msg("region %u target page %" PRIu64 " differs", r, t);
	}
}

/* ------------------------------------------------------------------ */
/* touchers                                                            */
/* ------------------------------------------------------------------ */

struct toucher {
	struct mem *m;
	unsigned nreg;
	unsigned order;		/* 0 sequential, 1 reverse, 2+ random */
	atomic_uint_fast64_t bad, touched;
	pthread_t thr;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	uint64_t n = 0, i, *idx;
	uint8_t want[TP];
	unsigned r;

	for (r = 0; r < t->nreg; r++)
		n += t->m[r].len / TP;
	idx = malloc(n * sizeof(*idx));
	for (i = 0; i < n; i++)
		idx[i] = t->order == 1 ? n - 1 - i : i;
	if (t->order >= 2) {
		uint64_t s = t->order;

		for (i = n - 1; i > 0; i--) {
			uint64_t j = mix(s++) % (i + 1), x = idx[i];

			idx[i] = idx[j];
			idx[j] = x;
		}
	}
	for (i = 0; i < n; i++) {
		uint64_t k = idx[i];

		for (r = 0; k >= t->m[r].len / TP; r++)
			k -= t->m[r].len / TP;
		fill_tp(r, k, (unsigned)(t->m[r].ps / TP), want);
		if (memcmp(t->m[r].p + k * TP, want, TP))
			atomic_fetch_add(&t->bad, 1);
		atomic_fetch_add(&t->touched, 1);
	}
	free(idx);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* tests: validation                                                   */
/* ------------------------------------------------------------------ */

/* A fresh userfaultfd: the syscall, else /dev/userfaultfd (valgrind 3.19
 * does not know the syscall). */
static int raw_uffd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), dev;

	if (fd >= 0)
		return fd;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -1;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(dev);
	return fd;
}

START_TEST(test_create_invalid)
{
	struct pcopy_dest_opts o;
	struct pcopy_region rg[2];
	struct pcopy_dest *d = (void *)1;
	uint8_t *p = mmap(NULL, 16 * TP, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char longname[80];

	opts_default(&o);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	rg[0] = (struct pcopy_region){ "a", p, 8 * TP, TP };
	rg[1] = (struct pcopy_region){ "b", p + 8 * TP, 8 * TP, TP };
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 0, &o), -EINVAL);
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 65, &o), -EINVAL);
	ck_assert_int_eq(pcopy_dest_create(&d, NULL, 1, &o), -EINVAL);
	ck_assert_int_eq(pcopy_dest_create(NULL, rg, 1, &o), -EINVAL);
	rg[0].host = NULL;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].host = p + 8;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].host = p;
	rg[0].length = TP + 1;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].length = 0;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].length = 8 * TP;
	rg[0].page_size = 8192;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].page_size = HUGE_PS;	/* p is not 2 MiB aligned (or the length is not) */
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].page_size = TP;
	rg[0].name = longname;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].name = "";
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), -EINVAL);
	rg[0].name = "a";
	rg[1].host = p + 4 * TP;	/* overlaps a */
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 2, &o), -EINVAL);
	rg[1].host = p + 8 * TP;
	o.flags = PCOPY_DEST_UFFD_REGISTERED;	/* without a uffd */
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 2, &o), -EINVAL);
	/* a uffd that never went through UFFDIO_API; closed even on failure */
	o.uffd = raw_uffd();
	ck_assert_int_ge(o.uffd, 0);
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 2, &o), -EINVAL);
	ck_assert_int_eq(fcntl(o.uffd, F_GETFD), -1);
	o.uffd = -1;
	o.flags = 0;
	o.fail_mode = 7;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 2, &o), -EINVAL);
	o.fail_mode = PCOPY_FAIL_BLOCK;
	munmap(p + 12 * TP, 4 * TP);	/* region b has a hole now */
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 2, &o), -EINVAL);
	/* and the good case */
	ck_assert_int_eq(pcopy_dest_create(&d, rg, 1, &o), 0);
	ck_assert_int_ge(pcopy_dest_uffd(d), 0);
	ck_assert_str_eq(pcopy_dest_error(d), "");
	pcopy_dest_destroy(d);
	pcopy_dest_destroy(NULL);
	munmap(p, 12 * TP);
}
END_TEST

/* 2 MiB declared on a 4 KiB mapping that happens to be 2 MiB aligned: the
 * registration cross-check must catch it. */
START_TEST(test_create_wrong_page_size)
{
	struct pcopy_dest_opts o;
	struct pcopy_region rg;
	struct pcopy_dest *d = NULL;
	uint8_t *raw = mmap(NULL, 3 * HUGE_PS, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *p = (uint8_t *)(((uintptr_t)raw + HUGE_PS - 1) & ~(uintptr_t)(HUGE_PS - 1));

	opts_default(&o);
	rg = (struct pcopy_region){ "a", p, HUGE_PS, HUGE_PS };
	ck_assert_int_eq(pcopy_dest_create(&d, &rg, 1, &o), -EINVAL);
	munmap(raw, 3 * HUGE_PS);
}
END_TEST

/* ------------------------------------------------------------------ */
/* tests: restores                                                     */
/* ------------------------------------------------------------------ */

/* Checks the stats of a completed restore; *out gets them, to be compared
 * with what the fake saw once its thread has ended. */
static void check_stats_complete(struct pcopy_dest *d, struct mem *m,
				 bool touched, uint64_t dups, struct pcopy_stats *out)
{
	struct pcopy_stats st;
	uint64_t tps = 0, hps = 0;
	unsigned i;

	for (i = 0; i < NREG; i++) {
		tps += m[i].len / TP;
		hps += m[i].len / m[i].ps;
	}
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	if (getenv("CHECK_DEST_VERBOSE"))
		fprintf(stderr, "stats: pages %" PRIu64 "/%" PRIu64 " zero %" PRIu64 " raw %" PRIu64
			" zlib %" PRIu64 " faults %" PRIu64 " requests %" PRIu64 " msgs %" PRIu64
			" dups %" PRIu64 " wakes %" PRIu64 " lat n=%" PRIu64 " p50 %" PRIu64
			" p99 %" PRIu64 " max %" PRIu64 " ns, elapsed %" PRIu64 " us\n",
			st.host_pages_received, st.host_pages_total, st.pages_zero, st.pages_raw,
			st.pages_zlib, st.faults, st.requests, st.request_msgs, st.duplicates,
			st.wakes, st.lat_samples, st.lat_p50_ns, st.lat_p99_ns, st.lat_max_ns,
			st.elapsed_ns / 1000);
	ck_assert_uint_eq(st.host_pages_total, hps);
	ck_assert_uint_eq(st.host_pages_received, hps);
	/* every target page exactly once, plus the duplicates */
	ck_assert_uint_eq(st.pages_zero + st.pages_raw + st.pages_zlib,
			  tps + dups * (m[0].ps / TP));
	ck_assert_uint_eq(st.bytes_payload, (tps + dups * (m[0].ps / TP)) * TP);
	ck_assert_uint_gt(st.pages_zero, 0);
	ck_assert_uint_gt(st.pages_raw + st.pages_zlib, 0);
	ck_assert_uint_gt(st.bytes_wire, st.pages_raw * TP);
	ck_assert_uint_eq(st.duplicates, dups);
	ck_assert_uint_gt(st.elapsed_ns, 0);
	if (touched) {
		ck_assert_uint_gt(st.faults, 0);
		ck_assert_uint_gt(st.requests, 0);
		ck_assert_uint_gt(st.request_msgs, 0);
		ck_assert_uint_le(st.request_msgs, st.requests);
		ck_assert_uint_le(st.requests, hps);
		/* a sample needs a fault read first; `requests` may still lag:
		 * the fault thread counts a batch after the receiver may have
		 * placed one of its pages from the background stream */
		ck_assert_uint_le(st.lat_samples, st.faults);
		ck_assert_uint_gt(st.lat_samples, 0);
		ck_assert_uint_le(st.lat_p50_ns, st.lat_p99_ns);
		ck_assert_uint_le(st.lat_p99_ns, st.lat_p999_ns);
		ck_assert_uint_le(st.lat_p999_ns, st.lat_max_ns);
		ck_assert_uint_gt(st.lat_max_ns, 0);
	} else {
		ck_assert_uint_eq(st.faults, 0);
		ck_assert_uint_eq(st.requests, 0);
	}
	*out = st;
}

/* What the fake saw against the destination's stats (after fake_end). */
static void check_fake_vs_stats(const struct fake *f, const struct pcopy_stats *st)
{
	ck_assert_int_eq(f->hs_rc, 0);
	ck_assert_int_eq(f->fail_line, 0);
	ck_assert(f->got_done);
	/* REQs reached the source intact (one may still be in flight behind
	 * DONE, when the last page landed while its fault was being read) */
	ck_assert_uint_le(f->req_entries, st->requests);
	ck_assert_uint_le(f->req_msgs, st->request_msgs);
	if (st->requests)
		ck_assert_uint_gt(f->req_entries, 0);
	else
		ck_assert_uint_eq(f->req_entries, 0);
}

static void run_restore(enum mt t, enum script sc, unsigned ntouch, bool zlib)
{
	struct mem m[NREG];
	struct toucher tt[4];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct fake f;
	struct pcopy_stats st;
	unsigned i;
	char perms[8];
	int fd;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	if (!zlib)
		o.flags |= PCOPY_DEST_NO_ZLIB;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, sc);
	f.wait_first_req = ntouch > 0;	/* makes "faults > 0" deterministic */
	f.reverse = true;		/* background from the end, touchers from the start */
	/* Touchers first: their faults wait in the uffd until start. */
	for (i = 0; i < ntouch; i++) {
		tt[i] = (struct toucher){ .m = m, .nreg = NREG, .order = i };
		ck_assert_int_eq(pthread_create(&tt[i].thr, NULL, toucher_main, &tt[i]), 0);
	}
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), 0);
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	for (i = 0; i < ntouch; i++) {
		pthread_join(tt[i].thr, NULL);
		ck_assert_uint_eq(atomic_load(&tt[i].bad), 0);
		ck_assert_uint_eq(atomic_load(&tt[i].touched), (m[0].len + m[1].len) / TP);
	}
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	check_stats_complete(d, m, ntouch > 0, sc == SC_DUP ? 1 : 0, &st);
	ck_assert_str_eq(pcopy_dest_error(d), "");
	pcopy_dest_destroy(d);
	fake_end(&f);
	check_fake_vs_stats(&f, &st);
	/* After completion the memory is plain memory again. */
	for (i = 0; i < NREG; i++) {
		addr_perms(m[i].p, perms);
		ck_assert_msg(perms[0] == 'r' && perms[1] == 'w', "perms %s", perms);
		verify_region(&m[i], i);
		m[i].p[0] ^= 1;	/* writable, no fault handler involved */
	}
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}

START_TEST(test_restore_touchers)
{
	run_restore((enum mt)_i, SC_NORMAL, 4, true);
}
END_TEST

START_TEST(test_restore_touchers_nozlib)
{
	run_restore((enum mt)_i, SC_NORMAL, 2, false);
}
END_TEST

START_TEST(test_restore_no_toucher)
{
	run_restore((enum mt)_i, SC_NORMAL, 0, true);
}
END_TEST

START_TEST(test_restore_duplicate)
{
	run_restore((enum mt)_i, SC_DUP, 0, true);
}
END_TEST

/* The caller opens and (optionally) registers the uffd, Firecracker style. */
static void run_caller_uffd(enum mt t, bool registered)
{
	struct mem m[NREG];
	struct toucher tt;
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct pcopy_stats st;
	struct fake f;
	unsigned i;
	int fd, uffd;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	uffd = raw_uffd();
	ck_assert_int_ge(uffd, 0);
	/* blocking: the library must cope */
	ck_assert_int_eq(fcntl(uffd, F_SETFL, 0), 0);
	if (registered) {
		struct uffdio_api api = { .api = UFFD_API };

		if (t == MT_MEMFD)
			api.features = UFFD_FEATURE_MISSING_SHMEM;
		if (t == MT_HUGE)
			api.features = UFFD_FEATURE_MISSING_HUGETLBFS;
		ck_assert_int_eq(ioctl(uffd, UFFDIO_API, &api), 0);
		for (i = 0; i < NREG; i++) {
			struct uffdio_register reg = {
				.range = { (uintptr_t)m[i].p, m[i].len },
				.mode = UFFDIO_REGISTER_MODE_MISSING,
			};

			ck_assert_int_eq(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
		}
	}
	opts_default(&o);
	o.uffd = uffd;
	o.flags = registered ? PCOPY_DEST_UFFD_REGISTERED : 0;
	d = dest_new(m, NREG, &o);
	ck_assert_int_eq(pcopy_dest_uffd(d), uffd);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	f.wait_first_req = true;
	tt = (struct toucher){ .m = m, .nreg = NREG, .order = 3 };
	ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	pthread_join(tt.thr, NULL);
	ck_assert_uint_eq(atomic_load(&tt.bad), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	check_stats_complete(d, m, true, 0, &st);
	pcopy_dest_destroy(d);
	fake_end(&f);
	check_fake_vs_stats(&f, &st);
	/* the library owned the uffd and closed it */
	ck_assert_int_eq(fcntl(uffd, F_GETFD), -1);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}

/*
 * Firecracker style across processes: a child owns the memory, registers it
 * on its own uffd and passes the uffd over a Unix socket; this process runs
 * the destination on memory it cannot see, and the child's toucher verifies
 * every byte.
 */
struct foreign_msg {
	uintptr_t host[NREG];
	size_t len[NREG];
};

static void foreign_child(enum mt t, int sock)
{
	struct foreign_msg fm;
	struct mem m[NREG];
	struct toucher tt;
	struct uffdio_api api = { .api = UFFD_API };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &fm, sizeof(fm) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;
	/* The parent shares our layout up to the fork and maps downwards from
	 * the same place: put the regions at the bottom of a large reserved
	 * hole so that its next mappings cannot land on them. */
	const size_t hole = 64ull << 30;
	uint8_t *res = mmap(NULL, hole, PROT_NONE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t hint;
	unsigned i;
	int uffd;

	if (res == MAP_FAILED)
		_exit(2);
	hint = ((uintptr_t)res + HUGE_PS - 1) & ~(uintptr_t)(HUGE_PS - 1);

	for (i = 0; i < NREG; i++) {
		m[i].ps = mt_ps(t);
		m[i].len = mt_pages[t][i] * m[i].ps;
		m[i].fd = -1;
		if (t != MT_ANON) {
			m[i].fd = memfd_create("fc", MFD_CLOEXEC | (t == MT_HUGE ? MFD_HUGETLB : 0));
			if (m[i].fd < 0 || ftruncate(m[i].fd, (off_t)m[i].len))
				_exit(3);
		}
		m[i].p = mmap((void *)hint, m[i].len, PROT_READ | PROT_WRITE,
			      MAP_FIXED | (t == MT_ANON ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_SHARED),
			      m[i].fd, 0);
		if (m[i].p == MAP_FAILED)
			_exit(3);
		hint += m[i].len + HUGE_PS;
		fm.host[i] = (uintptr_t)m[i].p;
		fm.len[i] = m[i].len;
	}
	uffd = raw_uffd();
	api.features = t == MT_MEMFD ? UFFD_FEATURE_MISSING_SHMEM :
		       t == MT_HUGE ? UFFD_FEATURE_MISSING_HUGETLBFS : 0;
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
		_exit(4);
	for (i = 0; i < NREG; i++) {
		struct uffdio_register reg = {
			.range = { (uintptr_t)m[i].p, m[i].len },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (ioctl(uffd, UFFDIO_REGISTER, &reg))
			_exit(5);
	}
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &uffd, sizeof(int));
	if (sendmsg(sock, &mh, 0) != (ssize_t)sizeof(fm))
		_exit(6);
	close(uffd);	/* the handler owns it now, as in Firecracker */
	tt = (struct toucher){ .m = m, .nreg = NREG, .order = 2 };
	toucher_main(&tt);
	if (atomic_load(&tt.bad) || atomic_load(&tt.touched) != (m[0].len + m[1].len) / TP)
		_exit(7);
	_exit(0);
}

START_TEST(test_caller_uffd_other_process)
{
	enum mt t = (enum mt)_i;
	struct foreign_msg fm;
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &fm, sizeof(fm) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct mem m[NREG];
	struct fake f;
	struct cmsghdr *cm;
	int sv[2], fd, uffd = -1, status;
	unsigned i;
	pid_t pid;

	if (huge_skip(t))
		return;
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(sv[0]);
		foreign_child(t, sv[1]);
	}
	close(sv[1]);
	ck_assert_int_eq(recvmsg(sv[0], &mh, 0), (ssize_t)sizeof(fm));
	close(sv[0]);
	cm = CMSG_FIRSTHDR(&mh);
	ck_assert_ptr_nonnull(cm);
	memcpy(&uffd, CMSG_DATA(cm), sizeof(int));
	for (i = 0; i < NREG; i++)
		m[i] = (struct mem){ .p = (uint8_t *)fm.host[i], .len = fm.len[i],
				     .ps = mt_ps(t), .fd = -1 };
	opts_default(&o);
	o.uffd = uffd;
	o.flags = PCOPY_DEST_UFFD_REGISTERED;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	f.wait_first_req = true;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ck_assert_msg(pcopy_dest_wait(d, 20000) == 0, "%s", pcopy_dest_error(d));
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x", status);
	check_stats_complete(d, m, true, 0, &st);
	pcopy_dest_destroy(d);
	fake_end(&f);
	check_fake_vs_stats(&f, &st);
}
END_TEST

START_TEST(test_caller_uffd_registered)
{
	run_caller_uffd((enum mt)_i, true);
}
END_TEST

START_TEST(test_caller_uffd_plain)
{
	run_caller_uffd((enum mt)_i, false);
}
END_TEST

/* ------------------------------------------------------------------ */
/* tests: malformed input                                              */
/* ------------------------------------------------------------------ */

struct bad_case {
	enum script sc;
	int err;
	const char *msg;	/* substring of pcopy_dest_error */
	bool no_zlib;
};

static const struct bad_case bad_cases[] = {
	{ SC_BAD_CRC, -EBADMSG, "crc", false },
	{ SC_BAD_REGION, -EPROTO, "region 2 out of range", false },
	{ SC_BAD_OFFSET_END, -EPROTO, "past end of region", false },
	{ SC_BAD_MISALIGNED, -EPROTO, "not aligned", false },
	{ SC_BAD_RAWLEN, -EPROTO, "raw length", false },
	{ SC_OUT_OF_ORDER, -EPROTO, NULL, false },	/* message depends on the page size */
	{ SC_OTHER_HP_MIDPAGE, -EPROTO, "is incomplete", false },
	{ SC_END_MISSING, -EPROTO, "host pages never sent", false },
	{ SC_UNKNOWN_TYPE, -EPROTO, "bad message header", false },
	{ SC_UNEXPECTED_REQ, -EPROTO, "unexpected REQ", false },
	{ SC_UNEXPECTED_DONE, -EPROTO, "unexpected DONE", false },
	{ SC_UNEXPECTED_HELLO, -EPROTO, "unexpected HELLO", false },
	{ SC_SRC_ERROR, -EIO, "source reported: disk on fire", false },
	{ SC_EOF, -ECONNRESET, "connection closed by source", false },
	{ SC_BAD_ZLIB, -EPROTO, "PAGE region 'ram0'", false },
	{ SC_ZLIB_NOT_NEGOTIATED, -EPROTO, "not negotiated", true },
	{ SC_BAD_MAGIC, -EPROTO, "bad message header", false },
};
#define NBAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

START_TEST(test_bad_input)
{
	const struct bad_case *bc = &bad_cases[_i % NBAD];
	enum mt t = (enum mt)(_i / NBAD);
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	unsigned i, before = 2;
	uint64_t a;
	int fd, rc;

	if (bc->sc == SC_OTHER_HP_MIDPAGE && t != MT_HUGE) {
		/* with 4 KiB host pages every frame completes its host page */
		return;
	}
	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	if (bc->no_zlib)
		o.flags |= PCOPY_DEST_NO_ZLIB;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, bc->sc);
	f.before = before;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	rc = pcopy_dest_wait(d, 10000);
	ck_assert_msg(rc == bc->err, "case %u on %s: got %d (%s), want %d", _i % (unsigned)NBAD,
		      mt_name[t], rc, pcopy_dest_error(d), bc->err);
	if (bc->msg)
		ck_assert_msg(strstr(pcopy_dest_error(d), bc->msg),
			      "message '%s' lacks '%s'", pcopy_dest_error(d), bc->msg);
	else
		ck_assert_str_ne(pcopy_dest_error(d), "");
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), bc->err);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.host_pages_received, before);
	/* Exactly the valid host pages sent before are in memory; not one
	 * byte of the bad frame or of a half-assembled host page. */
	for (i = 0; i < NREG; i++)
		for (a = 0; a < m[i].len; a += TP) {
			bool want = i == 0 && a < before * m[i].ps;

			ck_assert_msg(page_present(m[i].p + a) == want,
				      "region %u offset 0x%" PRIx64 " present=%d", i, a, !want);
		}
	for (a = 0; a < before * m[0].ps; a += TP) {
		uint8_t want[TP];

		fill_tp(0, a / TP, (unsigned)(m[0].ps / TP), want);
		ck_assert(!memcmp(m[0].p + a, want, TP));
	}
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(f.hs_rc, 0);
	ck_assert_int_eq(f.fail_line, 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* ------------------------------------------------------------------ */
/* tests: failure modes                                                */
/* ------------------------------------------------------------------ */

struct blocked {
	volatile uint8_t *addr;
	atomic_int state;	/* 0 started, 1 returned from the access */
	uint8_t seen;
	pthread_t thr;
};

static void *blocked_main(void *arg)
{
	struct blocked *b = arg;

	b->seen = *b->addr;
	atomic_store(&b->state, 1);
	return NULL;
}

/*
 * BLOCK mode: after the failure a faulting thread stays blocked; destroy
 * turns it into SIGSEGV, never a zero page. In a child process, which
 * reports each stage over a pipe before it dies.
 */
static int g_segv_fd = -1;
static volatile uintptr_t g_segv_addr;

/* The expected end of block_child: SIGSEGV (SEGV_ACCERR: PROT_NONE) on the
 * page the thread was blocked on. Own handler, so ASan builds agree. */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
	bool ok = si->si_code == SEGV_ACCERR &&
		  ((uintptr_t)si->si_addr & ~(uintptr_t)(TP - 1)) ==
			  (g_segv_addr & ~(uintptr_t)(TP - 1));

	(void)sig;
	(void)uc;
	if (write(g_segv_fd, ok ? "S" : "s", 1) != 1)
		_exit(50);
	_exit(ok ? 0 : 51);
}

static void block_child(enum mt t, int wfd)
{
	struct sigaction sa;

	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct blocked b;
	struct fake f;
	int fd, rc;

	if (!alloc_regions(m, t, false))
		_exit(3);
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_WAIT_REQ_BAD);
	f.bad = SC_BAD_CRC;
	f.before = 1;
	b = (struct blocked){ .addr = m[1].p + m[1].len - 1 };
	g_segv_fd = wfd;
	g_segv_addr = (uintptr_t)b.addr;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = segv_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	pthread_create(&b.thr, NULL, blocked_main, &b);
	fake_run(&f);
	pthread_detach(f.thr);	/* this process ends in the SIGSEGV handler */
	if (pcopy_dest_start(d, fd))
		_exit(4);
	rc = pcopy_dest_wait(d, 10000);
	if (rc != -EBADMSG)
		_exit(5);
	usleep(200000);
	if (atomic_load(&b.state) != 0)
		_exit(6);
	if (write(wfd, "B", 1) != 1)	/* blocked after the failure */
		_exit(7);
	pcopy_dest_destroy(d);
	/* The blocked thread must now die of SIGSEGV, taking us along. */
	usleep(2000000);
	if (write(wfd, b.seen == 0 ? "Z" : "V", 1) != 1)
		_exit(8);
	_exit(9);
}

START_TEST(test_block_then_destroy)
{
	enum mt t = (enum mt)_i;
	int p[2], st;
	char buf[8] = { 0 };
	pid_t pid;
	ssize_t n;

	if (huge_skip(t))
		return;
	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(p[0]);
		block_child(t, p[1]);
	}
	close(p[1]);
	n = 0;
	while (n < (ssize_t)sizeof(buf) - 1) {
		ssize_t k = read(p[0], buf + n, sizeof(buf) - 1 - (size_t)n);

		if (k <= 0)
			break;
		n += k;
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	close(p[0]);
	/* B: still blocked after the failure; S: then SIGSEGV on that page */
	ck_assert_msg(!strcmp(buf, "BS") && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child stages '%s' status 0x%x (exit %d)", buf, st,
		      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}
END_TEST

/* volatile: the stores around the faulting access must not be merged away */
static __thread sigjmp_buf *volatile tl_jmp;
static atomic_int g_sigbus_count;

static void sigbus_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	atomic_fetch_add(&g_sigbus_count, 1);
	if (tl_jmp)
		siglongjmp(*tl_jmp, 1);
	{
		char m[96];
		int n = snprintf(m, sizeof(m), "SIGBUS in tid %d code %d pid %d\n",
				 (int)syscall(SYS_gettid), si->si_code, (int)si->si_pid);
		if (write(2, m, (size_t)n) < 0)
			_exit(41);
	}
	_exit(40);
}

struct sb_toucher {
	volatile uint8_t *addr;
	atomic_int result;	/* 1 SIGBUS, 2 returned with data */
	pthread_t thr;
};

static void *sb_main(void *arg)
{
	struct sb_toucher *s = arg;
	sigjmp_buf jb;

	if (sigsetjmp(jb, 1) == 0) {
		tl_jmp = &jb;
		(void)*s->addr;
		tl_jmp = NULL;
		atomic_store(&s->result, 2);
	} else {
		tl_jmp = NULL;
		atomic_store(&s->result, 1);
	}
	return NULL;
}

/* SIGBUS mode, in a child: exit 0 if a thread blocked at the failure and a
 * thread touching afterwards both get SIGBUS, received pages stay readable. */
static void sigbus_child(enum mt t)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct sb_toucher a, b;
	struct sigaction sa;
	uint8_t want[TP];
	struct fake f;
	int fd, i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigbus_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
	if (!alloc_regions(m, t, false))
		_exit(3);
	opts_default(&o);
	o.fail_mode = PCOPY_FAIL_SIGBUS;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_WAIT_REQ_BAD);
	f.bad = SC_BAD_REGION;
	f.before = 1;
	a = (struct sb_toucher){ .addr = m[1].p + TP };
	pthread_create(&a.thr, NULL, sb_main, &a);
	fake_run(&f);
	if (pcopy_dest_start(d, fd))
		_exit(4);
	if (pcopy_dest_wait(d, 10000) != -EPROTO)
		_exit(5);
	for (i = 0; i < 5000 && !atomic_load(&a.result); i++)
		usleep(1000);
	if (atomic_load(&a.result) != 1)
		_exit(10 + atomic_load(&a.result));	/* 10: still blocked */
	/* a new touch after the failure */
	b = (struct sb_toucher){ .addr = m[0].p + m[0].len - 1 };
	pthread_create(&b.thr, NULL, sb_main, &b);
	pthread_join(b.thr, NULL);
	if (atomic_load(&b.result) != 1)
		_exit(20 + atomic_load(&b.result));
	pthread_join(a.thr, NULL);
	/* received before the failure: still there, intact */
	fill_tp(0, 0, (unsigned)(m[0].ps / TP), want);
	if (memcmp(m[0].p, want, TP))
		_exit(30);
	if (atomic_load(&g_sigbus_count) < 2)
		_exit(31);
	pcopy_dest_destroy(d);
	fake_end(&f);
	_exit(0);
}

START_TEST(test_sigbus_mode)
{
	enum mt t = (enum mt)_i;
	pid_t pid;
	int st;

	if (huge_skip(t))
		return;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		sigbus_child(t);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child status 0x%x exit %d", st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}
END_TEST

/* hugetlb with an empty pool: a clean -ENOMEM, no retry loop. */
START_TEST(test_hugetlb_pool_empty)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	long freep = 0, over = 0;
	void *eat = NULL;
	size_t eatlen;
	FILE *fp;
	int fd, rc;
	unsigned i;

	freep = hp_avail();
	if (hp_read("free_hugepages") < 0) {
		fprintf(stderr, "SKIP hugetlb pool test: no 2 MiB hugetlb sysfs\n");
		return;
	}
	if (freep < 0)
		freep = 0;
	fp = fopen("/proc/sys/vm/nr_overcommit_hugepages", "re");
	if (fp) {
		if (fscanf(fp, "%ld", &over) != 1)
			over = 0;
		fclose(fp);
	}
	if (over > 0) {
		fprintf(stderr, "SKIP hugetlb pool test: nr_overcommit_hugepages=%ld refills the pool\n", over);
		return;
	}
	/* Eat every free huge page, then map the regions without reserving. */
	eatlen = (size_t)freep * HUGE_PS;
	if (freep > 0) {
		eat = mmap(NULL, eatlen, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
		ck_assert_ptr_ne(eat, MAP_FAILED);
	}
	if (!alloc_regions(m, MT_HUGE, true)) {
		if (eat)
			munmap(eat, eatlen);
		return;
	}
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	rc = pcopy_dest_wait(d, 10000);
	ck_assert_msg(rc == -ENOMEM, "got %d: %s", rc, pcopy_dest_error(d));
	ck_assert_msg(strstr(pcopy_dest_error(d), "hugetlb pool exhausted"), "%s",
		      pcopy_dest_error(d));
	pcopy_dest_stats(d, &st);
	ck_assert_uint_eq(st.host_pages_received, 0);
	ck_assert_uint_eq(st.copy_retries, 0);
	pcopy_dest_destroy(d);
	fake_end(&f);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
	if (eat)
		munmap(eat, eatlen);
}
END_TEST

/* ------------------------------------------------------------------ */
/* tests: destroy at every stage, handshake                            */
/* ------------------------------------------------------------------ */

START_TEST(test_destroy_before_start)
{
	enum mt t = (enum mt)_i;
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	unsigned i;
	char perms[8];

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	/* right after create: nothing received, all made inaccessible */
	d = dest_new(m, NREG, &o);
	ck_assert_int_eq(pcopy_dest_wait(d, 10), -ETIMEDOUT);
	pcopy_dest_destroy(d);
	for (i = 0; i < NREG; i++) {
		addr_perms(m[i].p, perms);
		ck_assert_msg(!strcmp(perms, "---p") || !strcmp(perms, "---s"), "%s", perms);
		ck_assert_int_eq(mprotect(m[i].p, m[i].len, PROT_READ | PROT_WRITE), 0);
	}
	ck_assert_int_eq(atomic_load(&g_events), 0);
	/* the memory can be registered again by a new destination */
	d = dest_new(m, NREG, &o);
	pcopy_dest_destroy(d);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

START_TEST(test_destroy_mid_restore)
{
	enum mt t = (enum mt)_i;
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	unsigned i;
	char perms[8];
	int fd, k;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	/* the source stalls after 2 host pages */
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_STALL);
	f.before = 2;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	for (k = 0; k < 5000; k++) {
		pcopy_dest_stats(d, &st);
		if (st.host_pages_received == 2)
			break;
		usleep(1000);
	}
	ck_assert_uint_eq(st.host_pages_received, 2);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -ETIMEDOUT);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(atomic_load(&g_events), 0);	/* destroy is no failure */
	/* received pages intact and accessible, the rest PROT_NONE */
	addr_perms(m[0].p, perms);
	ck_assert_msg(perms[0] == 'r', "%s", perms);
	for (k = 0; k < 2; k++) {
		uint8_t want[TP];
		uint64_t a;

		for (a = (uint64_t)k * m[0].ps; a < (uint64_t)(k + 1) * m[0].ps; a += TP) {
			fill_tp(0, a / TP, (unsigned)(m[0].ps / TP), want);
			ck_assert(!memcmp(m[0].p + a, want, TP));
		}
	}
	addr_perms(m[0].p + 2 * m[0].ps, perms);
	ck_assert_msg(perms[0] == '-' && perms[1] == '-', "%s", perms);
	addr_perms(m[1].p, perms);
	ck_assert_msg(perms[0] == '-' && perms[1] == '-', "%s", perms);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* Region tables differ: start fails with -EPROTO naming the region, no
 * thread is started, destroy is clean. */
START_TEST(test_handshake_mismatch)
{
	enum mt t = (enum mt)_i;
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct fake f;
	unsigned i;
	int fd, sv[2];

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	f.len0_override = m[0].len * 2;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), -EPROTO);
	ck_assert_msg(strstr(pcopy_dest_error(d), "ram0") &&
		      strstr(pcopy_dest_error(d), "length"), "%s", pcopy_dest_error(d));
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -EPROTO);
	/* a second start is refused, and the fd is taken anyway */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(pcopy_dest_start(d, sv[0]), -EALREADY);
	ck_assert_int_eq(fcntl(sv[0], F_GETFD), -1);
	close(sv[1]);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_ne(f.hs_rc, 0);
	ck_assert_int_eq(atomic_load(&g_events), 0);	/* start reported it */
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* start against a peer that is not a source, or speaks garbage */
START_TEST(test_handshake_garbage)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	uint8_t junk[64];
	int sv[2];
	unsigned i;

	ck_assert(alloc_regions(m, MT_ANON, false));
	opts_default(&o);
	o.handshake_timeout_ms = 300;
	/* silent peer: times out */
	d = dest_new(m, NREG, &o);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(pcopy_dest_start(d, sv[0]), -ETIMEDOUT);
	pcopy_dest_destroy(d);
	close(sv[1]);
	/* garbage peer */
	d = dest_new(m, NREG, &o);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	memset(junk, 0xee, sizeof(junk));
	ck_assert_int_eq(write(sv[1], junk, sizeof(junk)), (ssize_t)sizeof(junk));
	ck_assert_int_eq(pcopy_dest_start(d, sv[0]), -EPROTO);
	ck_assert_str_ne(pcopy_dest_error(d), "");
	pcopy_dest_destroy(d);
	close(sv[1]);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* tests: resume, keepalive, urgent connection, PSK, REMOVE           */
/* ------------------------------------------------------------------ */

#define FEAT_ALL (PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT | PCOPY_FEAT_RESUME)

static atomic_int g_connects;

/* opts.connect: a new socketpair, one end to the fake. */
static int connect_cb(void *opaque, int urgent)
{
	struct fake *f = opaque;
	int sv[2];

	if (urgent)
		return -EINVAL;
	atomic_fetch_add(&g_connects, 1);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	fake_hand(f, sv[1]);
	return sv[0];
}

/* Every break: wait until paused, hand in a new connection (unless the
 * connect callback does). Returns the restore's result. */
static int drive_resumes(struct pcopy_dest *d, struct fake *f, bool by_callback,
			 unsigned *failed_resumes)
{
	uint64_t end = pcopy_now_ns() + 40000000000ull;
	int rc;

	while ((rc = pcopy_dest_wait(d, 10)) == -ETIMEDOUT && pcopy_now_ns() < end) {
		int sv[2];

		if (by_callback || !pcopy_dest_paused(d))
			continue;
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		fake_hand(f, sv[1]);
		rc = pcopy_dest_resume(d, sv[0]);
		if (rc < 0) {
			(*failed_resumes)++;
			ck_assert_int_eq(pcopy_dest_paused(d), 1);	/* still paused */
		}
	}
	return rc;
}

/* Breaks at several points of one restore: after whole host pages (then a
 * resume connection closed unanswered), mid-frame, corrupted frame, mid host
 * page, right after a resume, silence (keepalive). The fake checks the
 * bitmap is exactly what it sent whole and the first REQ after each resume
 * holds every pending request; the toucher and a full check see every byte;
 * nothing is received twice. */
static void run_resume(enum mt t, bool by_callback)
{
	static const struct cut cuts[] = {
		{ CUT_EOF, 3, true }, { CUT_MIDFRAME, 5, false },
		{ CUT_CORRUPT, 4, false }, { CUT_MIDHP, 2, false },
		{ CUT_EOF, 0, false }, { CUT_SILENT, 3, false },
	};
	unsigned i, failed = 0;
	struct mem m[NREG];
	struct toucher tt;
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	int fd;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	o.keepalive_ms = 300;
	if (by_callback) {
		o.connect = connect_cb;
		o.connect_opaque = &f;
	}
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_RESUME);
	f.offer = FEAT_ALL;
	f.wait_first_req = true;
	f.ncuts = sizeof(cuts) / sizeof(cuts[0]);
	for (i = 0; i < f.ncuts; i++) {
		f.cuts[i] = cuts[i];
		/* hugetlb: 6 host pages in all, one between cuts */
		f.cuts[i].after = t == MT_HUGE ? cuts[i].after != 0 : cuts[i].after * 20;
	}
	tt = (struct toucher){ .m = m, .nreg = NREG, .order = 5 };
	ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ck_assert_int_eq(drive_resumes(d, &f, by_callback, &failed), 0);
	pthread_join(tt.thr, NULL);
	ck_assert_uint_eq(atomic_load(&tt.bad), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_int_eq(pcopy_dest_paused(d), 0);
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	/* complete: a resume now only re-sends DONE (issue 4), which needs a
	 * stream socket */
	ck_assert_int_eq(pcopy_dest_resume(d, dup(2)), -ENOTSOCK);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(f.fail_line, 0);
	ck_assert_uint_eq(f.resumes, f.ncuts);
	ck_assert_uint_eq(f.bitmap_checks, f.ncuts);
	ck_assert_uint_eq(f.refused, 1);
	ck_assert_uint_gt(f.pings, 0);	/* the silent cut: the destination pinged */
	ck_assert_uint_eq(st.breaks, f.ncuts);
	ck_assert_uint_eq(st.duplicates, 0);	/* the bitmap was exact */
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	ck_assert_uint_ge(st.resent_pages, f.post_resume_reqs ? 1 : 0);
	if (by_callback)
		ck_assert_int_ge(atomic_load(&g_connects), (int)f.ncuts + 1);
	else
		ck_assert_uint_eq(failed, 1);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}

START_TEST(test_resume_breaks)
{
	run_resume((enum mt)_i, false);
}
END_TEST

START_TEST(test_resume_callback)
{
	run_resume((enum mt)_i, true);
}
END_TEST

/* Nobody hands in a new connection: the deadline fails the restore. */
START_TEST(test_resume_deadline)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t t0, dt;
	int fd, rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.resume_deadline_ms = 300;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_EOF);
	f.offer = FEAT_ALL;
	f.before = 2;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	t0 = pcopy_now_ns();
	while (!pcopy_dest_paused(d) && pcopy_now_ns() - t0 < 5000000000ull)
		usleep(1000);
	ck_assert_int_eq(pcopy_dest_paused(d), 1);
	t0 = pcopy_now_ns();
	rc = pcopy_dest_wait(d, 10000);
	dt = pcopy_now_ns() - t0;
	/* failed at the deadline: not -ETIMEDOUT, which means "still running" */
	ck_assert_int_eq(rc, -ENOLINK);
	ck_assert_msg(dt > 200000000ull && dt < 3000000000ull, "failed after %" PRIu64 " ns", dt);
	ck_assert_msg(strstr(pcopy_dest_error(d), "no new connection"), "%s", pcopy_dest_error(d));
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), -ENOLINK);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, 1);
	ck_assert_uint_eq(st.host_pages_received, 2);
	ck_assert_int_lt(pcopy_dest_resume(d, dup(2)), 0);	/* over */
	pcopy_dest_destroy(d);
	fake_end(&f);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

/* A source that goes silent (no close): the keepalive (300 ms) notices, and
 * the destination pinged meanwhile. Without resume that is fatal. */
START_TEST(test_keepalive)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t t0, dt;
	int fd, rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.keepalive_ms = 300;
	o.flags |= PCOPY_DEST_NO_RESUME;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_STALL);
	f.offer = FEAT_ALL;
	f.before = 2;
	fake_run(&f);
	t0 = pcopy_now_ns();
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	rc = pcopy_dest_wait(d, 10000);
	dt = pcopy_now_ns() - t0;
	ck_assert_int_eq(rc, -ENOLINK);
	ck_assert_msg(dt > 250000000ull && dt < 3000000000ull, "after %" PRIu64 " ns", dt);
	ck_assert_msg(strstr(pcopy_dest_error(d), "keepalive"), "%s", pcopy_dest_error(d));
	ck_assert_int_eq(pcopy_dest_paused(d), 0);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_uint_gt(f.pings, 0);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

/* The main connection holds still; page requests go on the urgent one and
 * are answered there; then the main one sends everything again:
 * duplicates, never errors. */
START_TEST(test_urgent)
{
	enum mt t = (enum mt)_i;
	struct mem m[NREG];
	struct toucher tt;
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f, u;
	struct timespec ts;
	unsigned i;
	int fd, ufd;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_HOLD);
	f.offer = FEAT_ALL;
	f.before = 2;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ufd = fake_start(&u, m, NREG, SC_URGENT_SRV);
	u.offer = FEAT_ALL;
	fake_run(&u);
	ck_assert_int_eq(pcopy_dest_add_urgent(d, ufd), 0);
	/* region 0 only: region 1 needs the main connection to complete */
	tt = (struct toucher){ .m = m, .nreg = 1, .order = 7 };
	ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	/* all of region 0 touched while the main connection sends nothing */
	ck_assert_int_eq(pthread_timedjoin_np(tt.thr, NULL, &ts), 0);
	ck_assert_uint_eq(atomic_load(&tt.bad), 0);
	ck_assert_uint_eq(atomic_load(&tt.touched), m[0].len / TP);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -ETIMEDOUT);
	atomic_store(&f.release, true);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	atomic_store(&u.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	ck_assert_int_eq(f.fail_line, 0);
	ck_assert_int_eq(u.fail_line, 0);
	ck_assert_int_eq(u.hs_rc, 0);
	ck_assert_uint_eq(f.req_entries, 0);	/* every REQ went urgent */
	ck_assert_uint_gt(u.req_entries, 0);
	/* region 0 came urgently (its first 2 host pages maybe too, if
	 * touched before they arrived on the main connection) ... */
	ck_assert_uint_ge(st.urgent_pages, m[0].len / m[0].ps - 2);
	ck_assert_uint_le(st.urgent_pages, m[0].len / m[0].ps);
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	/* ... and again on the main one after the release: all dropped */
	ck_assert_uint_eq(st.duplicates, st.urgent_pages);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/*
 * A bad frame on the urgent connection, which the fault thread reads: the
 * whole host pages before it are placed (from that thread), the bad one is
 * not; _i 0: without resume the restore fails with the frame's error (the
 * receiver, told by the fault thread, ends); _i 1: with resume it pauses
 * with the urgent connection's reason and fails at the deadline.
 */
START_TEST(test_urgent_bad)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f, u;
	uint64_t a, t0;
	unsigned i;
	int fd, ufd, rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	if (_i == 0)
		o.flags |= PCOPY_DEST_NO_RESUME;
	o.resume_deadline_ms = 300;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_HOLD);
	f.offer = FEAT_ALL;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ufd = fake_start(&u, m, NREG, SC_BAD_CRC);
	u.offer = FEAT_ALL;
	u.before = 3;
	fake_run(&u);
	ck_assert_int_eq(pcopy_dest_add_urgent(d, ufd), 0);
	if (_i == 1) {
		t0 = pcopy_now_ns();
		while (!pcopy_dest_paused(d) && pcopy_now_ns() - t0 < 5000000000ull &&
		       pcopy_dest_wait(d, 0) == -ETIMEDOUT)
			usleep(1000);
		ck_assert_int_eq(pcopy_dest_paused(d), 1);
	}
	rc = pcopy_dest_wait(d, 10000);
	ck_assert_msg(rc == (_i == 0 ? -EBADMSG : -ENOLINK), "got %d (%s)", rc,
		      pcopy_dest_error(d));
	/* the urgent connection's reason, also after the pause */
	ck_assert_msg(strstr(pcopy_dest_error(d), "crc"), "%s", pcopy_dest_error(d));
	if (_i == 1)
		ck_assert_msg(strstr(pcopy_dest_error(d), "no new connection"), "%s",
			      pcopy_dest_error(d));
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, _i == 1 ? 1u : 0u);
	ck_assert_uint_eq(st.host_pages_received, 3);
	ck_assert_uint_eq(st.urgent_pages, 3);
	for (a = 0; a < m[0].len; a += TP)
		ck_assert_msg(page_present(m[0].p + a) == (a < 3 * m[0].ps),
			      "offset 0x%" PRIx64, a);
	for (a = 0; a < 3 * m[0].ps; a += TP) {
		uint8_t want[TP];

		fill_tp(0, a / TP, (unsigned)(m[0].ps / TP), want);
		ck_assert(!memcmp(m[0].p + a, want, TP));
	}
	atomic_store(&f.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	ck_assert_int_eq(u.hs_rc, 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* Without an urgent offer from the source: -EOPNOTSUPP. */
START_TEST(test_urgent_not_offered)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct fake f;
	int fd, sv[2];

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	close(sv[1]);
	ck_assert_int_eq(pcopy_dest_add_urgent(d, sv[0]), -EOPNOTSUPP);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	pcopy_dest_destroy(d);
	fake_end(&f);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

/* PSK: the right key restores; a wrong or missing one is refused before
 * any page moves. */
START_TEST(test_psk)
{
	static const char *const keys[][2] = {	/* dest, source */
		{ "correct horse battery", "correct horse battery" },
		{ "correct horse battery", "wrong key" },
		{ "correct horse battery", NULL },
		{ NULL, "correct horse battery" },
	};
	const char *dk = keys[_i][0], *sk = keys[_i][1];
	bool ok = dk && sk && !strcmp(dk, sk);
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t a;
	int fd, rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.psk = dk;
	o.psk_len = dk ? strlen(dk) : 0;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	f.psk = sk;
	f.psk_len = sk ? strlen(sk) : 0;
	fake_run(&f);
	rc = pcopy_dest_start(d, fd);
	if (ok) {
		ck_assert_int_eq(rc, 0);
		ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
		verify_region(&m[0], 0);
		verify_region(&m[1], 1);
	} else {
		ck_assert_msg(rc == -EACCES, "start: %d (%s)", rc, pcopy_dest_error(d));
		ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
		ck_assert_uint_eq(st.host_pages_received, 0);
		for (a = 0; a < m[0].len; a += TP)
			ck_assert(!page_present(m[0].p + a));
	}
	pcopy_dest_destroy(d);
	fake_end(&f);
	if (!ok)
		ck_assert_int_ne(f.hs_rc, 0);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

struct reader {
	uint8_t *p;
	size_t len;
	atomic_int done;
	uint64_t nonzero;
	pthread_t thr;
};

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	size_t i;

	for (i = 0; i < rd->len; i++)
		rd->nonzero += rd->p[i] != 0;
	atomic_store(&rd->done, 1);
	return NULL;
}

/*
 * PCOPY_DEST_HANDLE_REMOVE: while the source holds still, the application
 * removes a range (MADV_DONTNEED, or MADV_REMOVE on shared memory) of which
 * some host pages were received and some not, with a thread already blocked
 * on one of the latter. The range reads zeros afterwards (that thread too),
 * nothing in it is requested again, pages of it that arrive later are
 * dropped, everything else is the source's, and the restore completes.
 */
START_TEST(test_remove)
{
	enum mt t = (enum mt)_i;
	bool huge = t == MT_HUGE;
	/* host pages: sent before holding, removed range [r0, r1), blocked one */
	uint64_t before = huge ? 2 : 64, r0 = huge ? 1 : 32, r1 = huge ? 3 : 96;
	uint64_t blk = huge ? 2 : 80, hp, a, k;
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct reader blocked, after;
	struct fake f;
	size_t ps;
	uint8_t want[TP];
	int fd;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	ps = m[0].ps;
	opts_default(&o);
	o.flags |= PCOPY_DEST_HANDLE_REMOVE;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_HOLD);
	f.offer = FEAT_ALL;
	f.before = (unsigned)before;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	for (k = 0; k < 5000 && (pcopy_dest_stats(d, &st), st.host_pages_received < before); k++)
		usleep(1000);
	ck_assert_uint_eq(st.host_pages_received, before);
	/* a thread blocks on a page not received, inside the range-to-be */
	blocked = (struct reader){ .p = m[0].p + blk * ps, .len = ps };
	ck_assert_int_eq(pthread_create(&blocked.thr, NULL, reader_main, &blocked), 0);
	for (k = 0; k < 5000 && !__atomic_load_n(&f.reqd[0][blk], __ATOMIC_RELAXED); k++)
		usleep(1000);
	ck_assert(__atomic_load_n(&f.reqd[0][blk], __ATOMIC_RELAXED));
	ck_assert_int_eq(atomic_load(&blocked.done), 0);
	/* the balloon */
	ck_assert_int_eq(madvise(m[0].p + r0 * ps, (r1 - r0) * ps,
				 t == MT_ANON ? MADV_DONTNEED : MADV_REMOVE), 0);
	pthread_join(blocked.thr, NULL);
	ck_assert_uint_eq(blocked.nonzero, 0);
	after = (struct reader){ .p = m[0].p + r0 * ps, .len = (r1 - r0) * ps };
	reader_main(&after);
	ck_assert_uint_eq(after.nonzero, 0);
	for (hp = r0; hp < r1; hp++)
		ck_assert_msg(hp == blk || !__atomic_load_n(&f.reqd[0][hp], __ATOMIC_RELAXED), "removed host page %" PRIu64 " requested", hp);
	atomic_store(&f.release, true);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	/* zeros stay zeros; the rest is the source's */
	after.nonzero = 0;
	reader_main(&after);
	ck_assert_uint_eq(after.nonzero, 0);
	for (a = 0; a < m[0].len; a += TP) {
		if (a >= r0 * ps && a < r1 * ps)
			continue;
		fill_tp(0, a / TP, (unsigned)(ps / TP), want);
		ck_assert_msg(!memcmp(m[0].p + a, want, TP), "offset 0x%" PRIx64, a);
	}
	verify_region(&m[1], 1);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	/* the unreceived removed pages came later and were dropped */
	ck_assert_uint_ge(st.duplicates, r1 - before);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(f.fail_line, 0);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

static void reset_events(void);

/*
 * The restore completes during a pause with no deadline, on the fault
 * thread: the application removed every missing page (REMOVE events). The
 * receiver, asleep in the pause, must notice (it has completion work: the
 * DONE for the source) and leave it; it used to sleep there until destroy.
 */
START_TEST(test_remove_completes_pause)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t t0;
	unsigned i;
	int fd;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.flags |= PCOPY_DEST_HANDLE_REMOVE;
	o.resume_deadline_ms = -1;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_EOF);
	f.offer = FEAT_ALL;
	f.before = 2;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	t0 = pcopy_now_ns();
	while (!pcopy_dest_paused(d) && pcopy_now_ns() - t0 < 5000000000ull)
		usleep(1000);
	ck_assert_int_eq(pcopy_dest_paused(d), 1);
	/* the balloon takes everything that is missing */
	ck_assert_int_eq(madvise(m[0].p + 2 * m[0].ps, m[0].len - 2 * m[0].ps,
				 MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(m[1].p, m[1].len, MADV_DONTNEED), 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 10000), 0);
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	/* the receiver left the pause (nothing to resume for) */
	t0 = pcopy_now_ns();
	while (pcopy_dest_paused(d) && pcopy_now_ns() - t0 < 3000000000ull)
		usleep(1000);
	ck_assert_int_eq(pcopy_dest_paused(d), 0);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	ck_assert_uint_eq(st.breaks, 1);
	pcopy_dest_destroy(d);
	fake_end(&f);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/*
 * Both threads place pages: the receiver (main connection, everything) and
 * the fault thread (urgent answers). When one places the last page, the
 * memory is unregistered and the other's copy of the same page meets
 * ENOENT: a duplicate, not a failure (it used to end the linger for the
 * DONE echo with an ERROR to the source and a "after the restore ended"
 * warning). A race, not forced: many small restores whose faults hit the
 * pages the main connection sends last.
 */
static atomic_int g_warn_after;

static void log_count_cb(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	if (lvl <= PCOPY_LOG_WARN && strstr(msg, "after the restore ended"))
		atomic_fetch_add(&g_warn_after, 1);
	if (!strstr(msg, "no DONE from the source"))	/* expected here */
		log_cb(opaque, lvl, msg);
}

START_TEST(test_urgent_last_page_race)
{
	unsigned round, i, rounds = 30, raced = 0;
	int warned;

	atomic_store(&g_warn_after, 0);
	for (round = 0; round < rounds; round++) {
		struct mem m[NREG];
		struct pcopy_dest_opts o;
		struct pcopy_dest *d;
		struct toucher tt;
		struct fake f, u;
		int fd, ufd, rc;

		reset_events();
		if (!alloc_regions(m, MT_ANON, false))
			return;
		opts_default(&o);
		o.log = log_count_cb;
		o.handshake_timeout_ms = 200;	/* the fake never echoes DONE */
		d = dest_new(m, NREG, &o);
		fd = fake_start(&f, m, NREG, SC_NORMAL);
		f.offer = FEAT_ALL;
		fake_run(&f);
		ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
		ufd = fake_start(&u, m, NREG, SC_URGENT_SRV);
		u.offer = FEAT_ALL;
		fake_run(&u);
		rc = pcopy_dest_add_urgent(d, ufd);
		/* the main connection may have been quicker: then no race */
		ck_assert_msg(rc == 0 || (rc == -EALREADY && pcopy_dest_wait(d, 0) == 0),
			      "add_urgent: %d", rc);
		/* from the end: the pages the main connection sends last */
		tt = (struct toucher){ .m = m, .nreg = NREG, .order = 1 };
		ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
		ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
		pthread_join(tt.thr, NULL);
		ck_assert_uint_eq(atomic_load(&tt.bad), 0);
		for (i = 0; i < NREG; i++)
			verify_region(&m[i], i);
		/* the linger got the echo: the source saw DONE, no ERROR */
		pcopy_dest_destroy(d);
		atomic_store(&u.release, true);
		fake_end(&f);
		fake_end(&u);
		ck_assert_int_eq(f.fail_line, 0);
		ck_assert_int_eq(u.fail_line, 0);
		ck_assert(f.got_done);
		ck_assert(!f.got_error);
		ck_assert(!u.got_error);
		raced += rc == 0;
		ck_assert_int_eq(atomic_load(&g_events), 1);
		ck_assert_int_eq(atomic_load(&g_event_err), 0);
		warned = atomic_load(&g_warn_after);
		ck_assert_msg(warned == 0, "round %u: a failure recorded after completion", round);
		for (i = 0; i < NREG; i++)
			mem_free(&m[i]);
	}
	ck_assert_uint_gt(raced, rounds / 2);	/* the urgent one came in time */
}
END_TEST

/*
 * SIGBUS mode, a failure found by the fault thread (a bad frame on the
 * urgent connection), and an on_event callback that takes a lock held by an
 * application thread blocked on a missing page. Only the fault thread can
 * send that thread its SIGBUS: the callback must not run there, or neither
 * ever goes on. In a child: exit 0 if the thread got SIGBUS and the
 * callback ran (on another thread) and the wait returned the error.
 */
static pthread_mutex_t g_app_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_locked_event_err, g_locked_event_tid;

static void locked_event_cb(void *opaque, int err)
{
	(void)opaque;
	pthread_mutex_lock(&g_app_lock);
	atomic_store(&g_locked_event_err, err);
	atomic_store(&g_locked_event_tid, (int)syscall(SYS_gettid));
	pthread_mutex_unlock(&g_app_lock);
}

static void *locked_toucher(void *arg)
{
	struct sb_toucher *s = arg;
	sigjmp_buf jb;

	pthread_mutex_lock(&g_app_lock);
	if (sigsetjmp(jb, 1) == 0) {
		tl_jmp = &jb;
		(void)*s->addr;
		tl_jmp = NULL;
		atomic_store(&s->result, 2);
	} else {
		tl_jmp = NULL;
		atomic_store(&s->result, 1);
	}
	pthread_mutex_unlock(&g_app_lock);
	return NULL;
}

static void sigbus_lock_child(void)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct sb_toucher a;
	struct sigaction sa;
	struct fake f, u;
	int fd, ufd, i, rc;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigbus_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
	if (!alloc_regions(m, MT_ANON, false))
		_exit(3);
	opts_default(&o);
	o.fail_mode = PCOPY_FAIL_SIGBUS;
	o.flags |= PCOPY_DEST_NO_RESUME;
	o.on_event = locked_event_cb;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_HOLD);
	f.offer = FEAT_ALL;
	fake_run(&f);
	if (pcopy_dest_start(d, fd))
		_exit(4);
	/* the urgent source answers the first request with a bad frame */
	ufd = fake_start(&u, m, NREG, SC_WAIT_REQ_BAD);
	u.offer = FEAT_ALL;
	u.bad = SC_BAD_CRC;
	fake_run(&u);
	if (pcopy_dest_add_urgent(d, ufd))
		_exit(6);
	a = (struct sb_toucher){ .addr = m[1].p + TP };
	pthread_create(&a.thr, NULL, locked_toucher, &a);
	rc = pcopy_dest_wait(d, 10000);
	if (rc != -EBADMSG)
		_exit(rc == -ETIMEDOUT ? 7 : 8);	/* 7: the callback is stuck */
	for (i = 0; i < 5000 && !atomic_load(&a.result); i++)
		usleep(1000);
	if (atomic_load(&a.result) != 1)
		_exit(10 + atomic_load(&a.result));
	pthread_join(a.thr, NULL);
	if (atomic_load(&g_locked_event_err) != -EBADMSG)
		_exit(20);
	atomic_store(&f.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	_exit(0);
}

START_TEST(test_sigbus_event_lock)
{
	pid_t pid;
	int st;

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		sigbus_lock_child();
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child status 0x%x exit %d", st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}
END_TEST

/*
 * The fault thread is the urgent connection's only writer of REQs and its
 * only reader. A source that answers (here: floods) without reading while
 * REQs pile up must not get both sides stuck in a write until the send
 * timeout (1 s here), which breaks the connection: the fault thread keeps
 * reading while it waits for room. Many threads fault at once so the REQs
 * overflow a small send buffer.
 */
#define FLOOD_THREADS 256

START_TEST(test_urgent_req_backlog)
{
	struct mem m[NREG];
	struct reader rd[FLOOD_THREADS];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f, u;
	int fd, ufd, sndbuf = 1;
	uint64_t t0;
	unsigned i, k;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	ck_assert_uint_ge(m[0].len / m[0].ps, FLOOD_THREADS);
	opts_default(&o);
	o.handshake_timeout_ms = 1000;	/* also the send timeout */
	o.resume_deadline_ms = 300;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_HOLD);
	f.offer = FEAT_ALL;
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ufd = fake_start(&u, m, NREG, SC_URGENT_FLOOD);
	u.offer = FEAT_ALL;
	/* the smallest send buffer: a few REQ messages fill it */
	ck_assert_int_eq(setsockopt(ufd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	fake_run(&u);
	ck_assert_int_eq(pcopy_dest_add_urgent(d, ufd), 0);
	for (i = 0; i < FLOOD_THREADS; i++) {
		rd[i] = (struct reader){ .p = m[0].p + i * m[0].ps, .len = 1 };
		ck_assert_int_eq(pthread_create(&rd[i].thr, NULL, reader_main, &rd[i]), 0);
	}
	/* well past the send timeout */
	usleep(2500000);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -ETIMEDOUT);
	atomic_store(&u.flood_end, true);
	t0 = pcopy_now_ns();
	for (i = k = 0; i < FLOOD_THREADS; i++) {
		while (!atomic_load(&rd[i].done) && pcopy_now_ns() - t0 < 10000000000ull)
			usleep(1000);
		k += atomic_load(&rd[i].done) != 0;
	}
	ck_assert_uint_eq(k, FLOOD_THREADS);
	for (i = 0; i < FLOOD_THREADS; i++)
		pthread_join(rd[i].thr, NULL);
	atomic_store(&f.release, true);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, 0);
	atomic_store(&u.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	ck_assert_int_eq(f.fail_line, 0);
	ck_assert_int_eq(u.fail_line, 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

static void reset_events(void)
{
	atomic_store(&g_events, 0);
	atomic_store(&g_event_err, 0);
	atomic_store(&g_connects, 0);
}

static Suite *make_dest_suite(void)
{
	Suite *s = suite_create("dest");
	TCase *tc;
	/*
	 * Valgrind 3.19 holds its big lock across a blocking io_uring_enter;
	 * the receiver never makes one (it submits without waiting and sleeps
	 * in poll()), so the runtime runs under valgrind. A thread blocked in
	 * a userfaultfd page fault holds that lock too, though, so under
	 * valgrind only the tests where no thread touches missing memory run.
	 */
	bool vg = RUNNING_ON_VALGRIND;

	if (vg)
		fprintf(stderr, "valgrind: running only the tests where no thread blocks in a "
			"userfaultfd fault (it would hold valgrind's big lock)\n");

	tc = tcase_create("create");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, vg ? 300 : 30);
	tcase_add_test(tc, test_create_invalid);
	tcase_add_test(tc, test_create_wrong_page_size);
	tcase_add_loop_test(tc, test_destroy_before_start, 0, MT_N);
	tcase_add_loop_test(tc, test_handshake_mismatch, 0, MT_N);
	tcase_add_test(tc, test_handshake_garbage);
	suite_add_tcase(s, tc);
	if (vg) {
		tc = tcase_create("valgrind_runtime");
		tcase_add_checked_fixture(tc, reset_events, NULL);
		tcase_set_timeout(tc, 600);
		tcase_add_loop_test(tc, test_restore_no_toucher, 0, MT_N);
		tcase_add_loop_test(tc, test_restore_duplicate, 0, MT_N);
		tcase_add_loop_test(tc, test_bad_input, 0, (int)(MT_N * NBAD));
		tcase_add_loop_test(tc, test_destroy_mid_restore, 0, MT_N);
		tcase_add_test(tc, test_resume_deadline);
		tcase_add_test(tc, test_keepalive);
		tcase_add_loop_test(tc, test_psk, 0, 4);
		tcase_add_test(tc, test_urgent_not_offered);
		tcase_add_test(tc, test_remove_completes_pause);
		suite_add_tcase(s, tc);
		return s;
	}

	tc = tcase_create("restore");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_restore_touchers, 0, MT_N);
	tcase_add_loop_test(tc, test_restore_touchers_nozlib, 0, MT_N);
	tcase_add_loop_test(tc, test_caller_uffd_registered, 0, MT_N);
	tcase_add_loop_test(tc, test_caller_uffd_plain, 0, MT_N);
	tcase_add_loop_test(tc, test_caller_uffd_other_process, 0, MT_N);
	tcase_add_loop_test(tc, test_restore_no_toucher, 0, MT_N);
	tcase_add_loop_test(tc, test_restore_duplicate, 0, MT_N);
	suite_add_tcase(s, tc);

	tc = tcase_create("bad_input");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_bad_input, 0, (int)(MT_N * NBAD));
	suite_add_tcase(s, tc);

	tc = tcase_create("failure");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_block_then_destroy, 0, MT_N);
	tcase_add_loop_test(tc, test_sigbus_mode, 0, MT_N);
	tcase_add_test(tc, test_sigbus_event_lock);
	tcase_add_test(tc, test_hugetlb_pool_empty);
	tcase_add_loop_test(tc, test_destroy_mid_restore, 0, MT_N);
	suite_add_tcase(s, tc);

	tc = tcase_create("recovery");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_resume_breaks, 0, MT_N);
	tcase_add_loop_test(tc, test_resume_callback, 0, MT_N);
	tcase_add_test(tc, test_resume_deadline);
	tcase_add_test(tc, test_keepalive);
	tcase_add_loop_test(tc, test_psk, 0, 4);
	suite_add_tcase(s, tc);

	tc = tcase_create("urgent_remove");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_urgent, 0, MT_N);
	tcase_add_loop_test(tc, test_urgent_bad, 0, 2);
	tcase_add_test(tc, test_urgent_not_offered);
	tcase_add_loop_test(tc, test_remove, 0, MT_N);
	tcase_add_test(tc, test_remove_completes_pause);
	tcase_add_test(tc, test_urgent_last_page_race);
	tcase_add_test(tc, test_urgent_req_backlog);
	suite_add_tcase(s, tc);
	return s;
}

/* Make sure some 2 MiB huge pages are free for the hugetlb cases: raise
 * nr_hugepages when root (undone at exit), else skip those cases. */
static long huge_setup(void)
{
	const long want = 16;
	long avail = hp_avail(), nr = -1;
	FILE *f;

	if (hp_read("free_hugepages") < 0) {
		g_huge_why = "no 2 MiB hugetlb support";
		return 0;
	}
	if (avail >= want) {
		g_huge_ok = true;
		return 0;
	}
	f = fopen("/proc/sys/vm/nr_hugepages", "r+e");
	if (!f || fscanf(f, "%ld", &nr) != 1) {
		g_huge_why = "fewer than 16 free 2 MiB huge pages and /proc/sys/vm/nr_hugepages not writable (not root?)";
		if (f)
			fclose(f);
		return 0;
	}
	rewind(f);
	fprintf(f, "%ld\n", nr + want - avail);
	if (fclose(f) != 0) {
		g_huge_why = "cannot raise /proc/sys/vm/nr_hugepages";
		return 0;
	}
	if (hp_avail() >= want)
		g_huge_ok = true;
	else
		g_huge_why = "the kernel could not allocate 16 huge pages";
	return want - avail;
}

/* Give back what huge_setup added (relative: other programs may have
 * changed the pool meanwhile). */
static void huge_restore(long added)
{
	long nr = -1;
	FILE *f;

	if (added <= 0)
		return;
	f = fopen("/proc/sys/vm/nr_hugepages", "r+e");
	if (!f)
		return;
	if (fscanf(f, "%ld", &nr) == 1) {
		rewind(f);
		fprintf(f, "%ld\n", nr > added ? nr - added : 0);
	}
	fclose(f);
}

int main(void)
{
	SRunner *sr;
	long added;
	int failed, probe;

	probe = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (probe < 0)
		probe = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (probe < 0) {
		fprintf(stderr, "SKIP check_dest: no userfaultfd (%s)\n", strerror(errno));
		return 77;
	}
	close(probe);
	added = huge_setup();
	if (!g_huge_ok)
		fprintf(stderr, "hugetlb cases will be skipped: %s\n", g_huge_why);
	sr = srunner_create(make_dest_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	huge_restore(added);
	return failed ? 1 : 0;
}
