/* SPDX-License-Identifier: MIT */
/*
 * The hostile-destination tests of test/check_hostile (recovery_hdst.c).
 */
#ifndef PCOPY_TEST_RECOVERY_HDST_H
#define PCOPY_TEST_RECOVERY_HDST_H

#include <check.h>

/* A TCase running every hostile-destination case against a real source. */
TCase *hostile_dest_tcase(void);

#endif
