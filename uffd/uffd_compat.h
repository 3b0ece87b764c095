/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd definitions newer than the build host's <linux/userfaultfd.h>
 * (Debian 12 ships 6.1 headers). Values are the kernel's ABI; only what the
 * destination runtime uses is defined here, each behind #ifndef.
 */
#ifndef PCOPY_UFFD_COMPAT_H
#define PCOPY_UFFD_COMPAT_H

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#ifndef __NR_userfaultfd
#if defined(__x86_64__)
#define __NR_userfaultfd 323
#elif defined(__aarch64__)
#define __NR_userfaultfd 282
#endif
#endif

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* /dev/userfaultfd (Linux 6.1) */
#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

#ifndef UFFD_FEATURE_MISSING_HUGETLBFS
#define UFFD_FEATURE_MISSING_HUGETLBFS (1 << 4)
#endif
#ifndef UFFD_FEATURE_MISSING_SHMEM
#define UFFD_FEATURE_MISSING_SHMEM (1 << 5)
#endif
#ifndef UFFD_FEATURE_SIGBUS
#define UFFD_FEATURE_SIGBUS (1 << 7)
#endif
#ifndef UFFD_FEATURE_THREAD_ID
#define UFFD_FEATURE_THREAD_ID (1 << 8)
#endif
/* Newer than 6.1; named only so logs can say what the kernel offers. */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#endif

#endif
