/* SPDX-License-Identifier: MIT */
/*
 * check_dest: the destination's API and whole restores against the scripted
 * fake source (test/fake_source.c), over every memory type (anonymous, memfd,
 * hugetlb): argument validation, handshake failures, destroy before start,
 * restores with toucher threads, a uffd opened by the caller (also in another
 * process).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "fake_source.h"

/* ------------------------------------------------------------------ */
/* tests: validation, handshake, destroy before start                  */
/* ------------------------------------------------------------------ */

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

static Suite *make_suite(bool vg)
{
	Suite *s = suite_create("dest");
	TCase *tc;

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
	return s;
}

int main(void)
{
	return dest_suite_main("check_dest", make_suite);
}
