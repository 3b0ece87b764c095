/* SPDX-License-Identifier: MIT */
/*
 * Opening and arming the userfaultfd: find what backs each region, open the
 * uffd (syscall, else /dev/userfaultfd), negotiate the features those memory
 * types need, and register every region in MISSING mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "uffd_compat.h"

/* Static name of a memory type, for messages. */
const char *dest_mem_name(enum dest_mem m)
{
	switch (m) {
	case DEST_MEM_ANON:
		return "anonymous";
	case DEST_MEM_SHMEM:
		return "shmem/memfd";
	case DEST_MEM_HUGETLB:
		return "hugetlbfs";
	}
	return "?";
}

/*
 * What backs each region. hugetlb is decided by the declared page size (the
 * API says 2 MiB means hugetlbfs) and cross-checked after UFFDIO_REGISTER,
 * whose answer lacks ZEROPAGE exactly for hugetlb. anonymous vs shmem comes
 * from /proc/self/maps (cheap: no page-table walk, unlike smaps): a mapping
 * with inode 0 is anonymous private; anything else (memfd, MAP_SHARED
 * anonymous = /dev/zero, tmpfs files) is treated as shmem and the kernel
 * rejects the registration if it is some other file. The same pass checks
 * that every byte of each region is mapped, except for a caller-registered
 * uffd whose regions are not mapped here at all: that memory belongs to
 * another process (d->foreign). Returns 0, -EINVAL, or 1 if
 * /proc is unavailable (types then stay "anon" and we ask for MISSING_SHMEM
 * anyway when the kernel offers it).
 */
static int detect_mem(struct pcopy_dest *d)
{
	uint64_t covered[PCOPY_REGIONS_MAX];
	bool saw_anon[PCOPY_REGIONS_MAX] = { false };
	bool saw_file[PCOPY_REGIONS_MAX] = { false };
	char *line = NULL;
	size_t cap = 0;
	unsigned i;
	FILE *f;

	for (i = 0; i < d->nreg; i++) {
		covered[i] = (uintptr_t)d->reg[i].host;
		d->reg[i].mem = d->reg[i].page_size > 4096 ? DEST_MEM_HUGETLB
							   : DEST_MEM_ANON;
	}
	f = fopen("/proc/self/maps", "re");
	if (!f) {
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "cannot read /proc/self/maps (%s): assuming 4 KiB regions may be shmem",
			  strerror(errno));
		return 1;
	}
	while (getline(&line, &cap, f) > 0) {
		unsigned long lo, hi, ino;
		char perms[8];

		if (sscanf(line, "%lx-%lx %7s %*x %*x:%*x %lu", &lo, &hi,
			   perms, &ino) != 4)
			continue;
		for (i = 0; i < d->nreg; i++) {
			struct dest_region *r = &d->reg[i];
			uint64_t end = (uintptr_t)r->host + r->length;

			if (hi <= covered[i] || lo > covered[i] || covered[i] >= end)
				continue;
			covered[i] = hi;
			if (ino != 0) {
				saw_file[i] = true;
				if (r->mem == DEST_MEM_ANON)
					r->mem = DEST_MEM_SHMEM;
			} else {
				saw_anon[i] = true;
			}
			if (saw_anon[i] && saw_file[i]) {
				pcopy_log(&d->log, PCOPY_LOG_ERROR,
					  "region '%s' mixes anonymous and shared mappings",
					  r->name);
				goto bad;
			}
		}
	}
	for (i = 0; i < d->nreg && (d->flags & PCOPY_DEST_UFFD_REGISTERED); i++) {
		struct dest_region *r = &d->reg[i];

		if (covered[i] < (uintptr_t)r->host + r->length) {
			/* Firecracker style: the uffd came from the process that
			 * owns the memory; its addresses mean nothing here. */
			pcopy_log(&d->log, PCOPY_LOG_INFO,
				  "region '%s' is not mapped in this process: the memory belongs to the process that registered the userfaultfd",
				  r->name);
			d->foreign = true;
			for (i = 0; i < d->nreg; i++)
				d->reg[i].mem = d->reg[i].page_size > 4096
							? DEST_MEM_HUGETLB : DEST_MEM_ANON;
			goto out;
		}
	}
	for (i = 0; i < d->nreg; i++) {
		struct dest_region *r = &d->reg[i];

		if (covered[i] < (uintptr_t)r->host + r->length) {
			pcopy_log(&d->log, PCOPY_LOG_ERROR,
				  "region '%s': [%p, +%zu) is not fully mapped (hole at 0x%" PRIx64 ")",
				  r->name, (void *)r->host, r->length, covered[i]);
			goto bad;
		}
		pcopy_log(&d->log, PCOPY_LOG_DEBUG, "region '%s': %s, %zu-byte host pages",
			  r->name, dest_mem_name(r->mem), r->page_size);
	}
out:
	free(line);
	fclose(f);
	return 0;
bad:
	free(line);
	fclose(f);
	return -EINVAL;
}

static int dev_open(void)
{
	int dev, fd;

	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -errno;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	fd = fd < 0 ? -errno : fd;
	close(dev);
	return fd;
}

/*
 * A new userfaultfd: the syscall first; on ENOSYS/EPERM (seccomp, or
 * vm.unprivileged_userfaultfd=0) /dev/userfaultfd, whose access is a file
 * permission; as a last resort the syscall in user-mode-only mode, which
 * cannot catch faults taken inside syscalls (they get EFAULT): warned.
 */
static int uffd_open(struct pcopy_dest *d, bool quiet)
{
	int fd, e, e2;

#ifdef __NR_userfaultfd
	fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	e = errno;
#else
	e = ENOSYS;
#endif
	if (e != ENOSYS && e != EPERM)
		goto fail;
	fd = dev_open();
	if (fd >= 0)
		return fd;
	e2 = -fd;
#ifdef __NR_userfaultfd
	if (e == EPERM) {
		fd = (int)syscall(__NR_userfaultfd,
				  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
		if (fd >= 0) {
			if (!quiet)
				pcopy_log(&d->log, PCOPY_LOG_WARN,
					  "userfaultfd only in user-mode-only mode: syscalls touching missing pages will fail with EFAULT instead of waiting");
			return fd;
		}
	}
#endif
	if (!quiet)
		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "userfaultfd(2): %s; /dev/userfaultfd: %s", strerror(e),
			  strerror(e2));
	return -e;
fail:
	if (!quiet)
		pcopy_log(&d->log, PCOPY_LOG_ERROR, "userfaultfd(2): %s", strerror(e));
	return -e;
}

/*
 * Features the kernel offers, learnt on a throwaway uffd because UFFDIO_API
 * succeeds only once per descriptor. Returns 0 and *feat, or -errno.
 */
static int probe_features(struct pcopy_dest *d, uint64_t *feat)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	int fd = uffd_open(d, true);

	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	close(fd);
	*feat = api.features;
	return 0;
}

struct feat_need {
	uint64_t bit;
	const char *name;
	const char *why;
};

/* The features this restore needs; returns how many went into need[]. */
static unsigned needed_features(struct pcopy_dest *d, bool proc_ok,
				struct feat_need need[5])
{
	unsigned n = 0, i;
	bool shmem = !proc_ok, huge = false;

	for (i = 0; i < d->nreg; i++) {
		shmem |= d->reg[i].mem == DEST_MEM_SHMEM;
		huge |= d->reg[i].mem == DEST_MEM_HUGETLB;
	}
	if (shmem && proc_ok)
		need[n++] = (struct feat_need){ UFFD_FEATURE_MISSING_SHMEM,
			"MISSING_SHMEM", "shmem/memfd regions" };
	if (huge)
		need[n++] = (struct feat_need){ UFFD_FEATURE_MISSING_HUGETLBFS,
			"MISSING_HUGETLBFS", "hugetlbfs regions" };
	if (d->fail_mode == PCOPY_FAIL_SIGBUS)
		need[n++] = (struct feat_need){ UFFD_FEATURE_THREAD_ID,
			"THREAD_ID", "PCOPY_FAIL_SIGBUS" };
	if (d->flags & PCOPY_DEST_HANDLE_REMOVE)
		need[n++] = (struct feat_need){ UFFD_FEATURE_EVENT_REMOVE,
			"EVENT_REMOVE", "PCOPY_DEST_HANDLE_REMOVE" };
	return n;
}

static int do_api(struct pcopy_dest *d, bool proc_ok)
{
	struct feat_need need[5];
	struct uffdio_api api = { .api = UFFD_API };
	uint64_t offered = 0, want = 0;
	unsigned n = needed_features(d, proc_ok, need), i, missing = 0;
	int rc;

	rc = probe_features(d, &offered);
	if (rc < 0) {
		/* e.g. the caller's uffd came over a socket and we may not open
		 * our own: ask for what we need and let UFFDIO_API judge. */
		pcopy_log(&d->log, PCOPY_LOG_DEBUG,
			  "cannot probe userfaultfd features (%s)", strerror(-rc));
		offered = ~0ull;
	}
	for (i = 0; i < n; i++) {
		if (!(offered & need[i].bit)) {
			pcopy_log(&d->log, PCOPY_LOG_ERROR,
				  "userfaultfd feature %s (needed for %s) is not offered by this kernel (features 0x%" PRIx64 ")",
				  need[i].name, need[i].why, offered);
			missing++;
		}
		want |= need[i].bit;
	}
	if (missing)
		return -EOPNOTSUPP;
	/* Without /proc we cannot tell shmem from anonymous: ask for shmem
	 * support whenever it is there, it costs nothing. */
	if (!proc_ok && offered != ~0ull)
		want |= offered & UFFD_FEATURE_MISSING_SHMEM;
	api.features = want;
	if (ioctl(d->uffd, UFFDIO_API, &api) < 0) {
		rc = -errno;
		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "UFFDIO_API(features 0x%" PRIx64 "): %s", want,
			  strerror(-rc));
		return rc == -EINVAL ? -EOPNOTSUPP : rc;
	}
	if ((api.ioctls & ((1ull << _UFFDIO_REGISTER) | (1ull << _UFFDIO_UNREGISTER))) !=
	    ((1ull << _UFFDIO_REGISTER) | (1ull << _UFFDIO_UNREGISTER))) {
		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "UFFDIO_API: REGISTER/UNREGISTER not offered (ioctls 0x%llx)",
			  (unsigned long long)api.ioctls);
		return -EOPNOTSUPP;
	}
	d->uffd_features = want;
	pcopy_log(&d->log, PCOPY_LOG_DEBUG,
		  "userfaultfd: features 0x%" PRIx64 " enabled, 0x%" PRIx64 " offered",
		  want, offered);
	return 0;
}

static int do_register(struct pcopy_dest *d, struct dest_region *r)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)r->host, .len = r->length },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	uint64_t base = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_WAKE);
	uint64_t zp = 1ull << _UFFDIO_ZEROPAGE;
	bool has_zp;

	if (ioctl(d->uffd, UFFDIO_REGISTER, &reg) < 0) {
		int e = errno;

		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "UFFDIO_REGISTER region '%s' [%p, +%zu) (%s): %s%s",
			  r->name, (void *)r->host, r->length, dest_mem_name(r->mem),
			  strerror(e),
			  e == EINVAL ? " (memory must be anonymous, shmem/memfd or hugetlbfs, and not registered already)" : "");
		return e == EINVAL ? -EINVAL : -e;
	}
	if ((reg.ioctls & base) != base) {
		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "region '%s': UFFDIO_COPY/WAKE not available (ioctls 0x%llx)",
			  r->name, (unsigned long long)reg.ioctls);
		return -EOPNOTSUPP;
	}
	has_zp = (reg.ioctls & zp) != 0;
	/* hugetlb is the one type without ZEROPAGE: a mismatch means the
	 * declared page_size is not the mapping's. */
	if (has_zp == (r->mem == DEST_MEM_HUGETLB)) {
		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "region '%s': page_size %zu declared, but the mapping %s hugetlbfs",
			  r->name, r->page_size, has_zp ? "is not" : "is");
		return -EINVAL;
	}
	return 0;
}

/*
 * Returns 0 with d->uffd open and armed, or -errno with a log message; on
 * failure d->uffd is closed. Caller's thread (pcopy_dest_create).
 */
int dest_uffd_setup(struct pcopy_dest *d, int uffd_in)
{
	unsigned i, nreg = 0;
	int rc, fl;

	rc = detect_mem(d);
	if (rc < 0)
		goto fail_close_in;
	if (uffd_in >= 0) {
		d->uffd = uffd_in;
		/* The fault thread relies on non-blocking reads. */
		fl = fcntl(uffd_in, F_GETFL);
		if (fl < 0 || fcntl(uffd_in, F_SETFL, fl | O_NONBLOCK) < 0) {
			rc = -errno;
			pcopy_log(&d->log, PCOPY_LOG_ERROR, "uffd %d: fcntl: %s",
				  uffd_in, strerror(errno));
			goto fail;
		}
		if (d->flags & PCOPY_DEST_UFFD_REGISTERED) {
			/* A uffd without UFFDIO_API polls as POLLERR forever:
			 * refuse it now rather than spin in the fault thread. */
			struct pollfd p = { .fd = uffd_in, .events = POLLIN };

			if (poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLNVAL))) {
				pcopy_log(&d->log, PCOPY_LOG_ERROR,
					  "PCOPY_DEST_UFFD_REGISTERED: uffd %d has not been through UFFDIO_API",
					  uffd_in);
				rc = -EINVAL;
				goto fail;
			}
			return 0;
		}
	} else {
		d->uffd = uffd_open(d, false);
		if (d->uffd < 0) {
			rc = d->uffd;
			d->uffd = -1;
			return rc;
		}
	}
	rc = do_api(d, rc == 0);
	if (rc < 0)
		goto fail;
	for (i = 0; i < d->nreg; i++, nreg++) {
		rc = do_register(d, &d->reg[i]);
		if (rc < 0)
			goto fail_unreg;
	}
	return 0;
fail_unreg:
	/* i itself may be registered if only the ioctls check failed. */
	for (i = 0; i <= nreg && i < d->nreg; i++) {
		struct uffdio_range rg = { (uintptr_t)d->reg[i].host,
					   d->reg[i].length };

		ioctl(d->uffd, UFFDIO_UNREGISTER, &rg);
	}
fail:
	close(d->uffd);
	d->uffd = -1;
	return rc;
fail_close_in:
	if (uffd_in >= 0)
		close(uffd_in);
	return rc;
}

/* UFFDIO_UNREGISTER every region: only after every page was received, since
 * unregistered missing pages read as zeros. Receiver thread. */
void dest_uffd_unregister(struct pcopy_dest *d)
{
	unsigned i;

	for (i = 0; i < d->nreg; i++) {
		struct uffdio_range rg = { (uintptr_t)d->reg[i].host,
					   d->reg[i].length };

		/* Foreign memory: its owner may already have exited or
		 * unmapped it, which is fine once everything is in. */
		if (ioctl(d->uffd, UFFDIO_UNREGISTER, &rg) < 0)
			pcopy_log(&d->log, d->foreign ? PCOPY_LOG_DEBUG : PCOPY_LOG_WARN,
				  "UFFDIO_UNREGISTER region '%s': %s",
				  d->reg[i].name, strerror(errno));
	}
}
