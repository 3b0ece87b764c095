/* SPDX-License-Identifier: MIT */
/*
 * Minimal userfaultfd helpers for the baselines (floor, raw round trip,
 * naive handler), which must not use the library.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

int bu_open(bool nonblock)
{
	int flags = O_CLOEXEC | (nonblock ? O_NONBLOCK : 0);
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	int fd = -1;

#ifdef __NR_userfaultfd
	fd = (int)syscall(__NR_userfaultfd, flags);
#endif
	if (fd < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev < 0)
			return -errno;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
		close(dev);
		if (fd < 0)
			return -errno;
	}
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

int bu_register(int uffd, void *addr, size_t len)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

int bu_copy(int uffd, void *dst, const void *src, size_t len, bool dontwake)
{
	size_t done = 0;

	while (done < len) {
		struct uffdio_copy c = {
			.dst = (uintptr_t)dst + done,
			.src = (uintptr_t)src + done,
			.len = len - done,
			.mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0,
		};

		if (ioctl(uffd, UFFDIO_COPY, &c) == 0) {
			done = len;
			break;
		}
		/* .copy is signed: bytes done, or -errno. */
		if (c.copy == -EEXIST || errno == EEXIST)
			return 0;
		if (c.copy > 0)
			done += (size_t)c.copy;
		else if (errno != EAGAIN && errno != EINTR)
			return -errno;
	}
	return 0;
}

int bu_zeropage(int uffd, void *dst, size_t len)
{
	struct uffdio_zeropage z = {
		.range = { .start = (uintptr_t)dst, .len = len },
		.mode = 0,
	};

	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}
