/* SPDX-License-Identifier: MIT */
/* The hugetlb pool for tests (test/hugepool.c). */
#ifndef PCOPY_TEST_HUGEPOOL_H
#define PCOPY_TEST_HUGEPOOL_H

#include <stddef.h>

/*
 * Make sure `pages` free 2 MiB huge pages exist, raising nr_hugepages if
 * needed (root only). Returns 0 if enough were free already, 1 if the pool
 * was raised (pair with tl_hugetlb_release(), which puts nr_hugepages back),
 * or -errno with a reason in why.
 */
int tl_hugetlb_reserve(unsigned long pages, char *why, size_t whylen);
void tl_hugetlb_release(void);

/* 2 MiB huge pages free and not reserved by any mapping now; -1 if
 * unreadable (no hugetlb support). Any thread. */
long tl_hugetlb_free(void);

#endif
