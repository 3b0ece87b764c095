/* SPDX-License-Identifier: MIT */
/*
 * The hugetlb pool for tests: make sure enough free 2 MiB pages exist
 * (raising /proc/sys/vm/nr_hugepages as root) and put the pool back after.
 * Standalone (libc only) so tests that do not link testlib.c can use it.
 */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include "hugepool.h"

static const char nr_path[] = "/proc/sys/vm/nr_hugepages";
static long saved_nr = -1;	/* test-process state: one reservation at a time */

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static int write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	int rc;

	if (!f)
		return -errno;
	rc = fprintf(f, "%ld\n", v) < 0 ? -EIO : 0;
	if (fclose(f) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* Huge pages nobody has claimed: free minus those reserved by existing
 * mappings that have not faulted them in yet. */
static long huge_free(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long v = -1, rsvd = 0, x;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "HugePages_Free: %ld", &x) == 1)
			v = x;
		else if (sscanf(line, "HugePages_Rsvd: %ld", &x) == 1)
			rsvd = x;
	}
	fclose(f);
	return v < 0 ? -1 : v - rsvd;
}

int tl_hugetlb_reserve(unsigned long pages, char *why, size_t whylen)
{
	long cur = read_long(nr_path), freep = huge_free();

	if (cur < 0 || freep < 0) {
		snprintf(why, whylen, "cannot read %s or HugePages_Free", nr_path);
		return -ENOENT;
	}
	if ((unsigned long)freep >= pages)
		return 0;
	if (geteuid() != 0) {
		snprintf(why, whylen, "needs %lu free 2 MiB huge pages, %ld free, "
			 "and only root can reserve more", pages, freep);
		return -EPERM;
	}
	if (saved_nr < 0)
		saved_nr = cur;
	if (write_long(nr_path, cur + (long)(pages - (unsigned long)freep)) < 0 ||
	    huge_free() < (long)pages) {
		snprintf(why, whylen, "could not reserve %lu huge pages "
			 "(HugePages_Free %ld): memory too fragmented?",
			 pages, huge_free());
		tl_hugetlb_release();
		return -ENOMEM;
	}
	return 1;
}

void tl_hugetlb_release(void)
{
	if (saved_nr >= 0) {
		write_long(nr_path, saved_nr);
		saved_nr = -1;
	}
}

long tl_hugetlb_free(void)
{
	return huge_free();
}
