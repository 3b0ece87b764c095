/* SPDX-License-Identifier: MIT */
/* Tests: find this process's threads by name. */
#ifndef PCOPY_TEST_THREADNAME_H
#define PCOPY_TEST_THREADNAME_H

#include <stdbool.h>

/* Is one of this process's threads named `name` (/proc/self/task/N/comm)? */
bool tl_thread_named(const char *name);

#endif
