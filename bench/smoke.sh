#!/bin/sh
# SPDX-License-Identifier: MIT
# `make check` smoke run of pcopy-bench: a 16 MiB image over a Unix socket,
# every baseline and every library order. Fails only on an error or a wrong
# byte, never on timing. Exit 77 (skipped) without userfaultfd.
bin=./bench/pcopy-bench
if [ ! -x "$bin" ]; then
	echo "SKIP bench-smoke: $bin not built"
	exit 77
fi
out=$("$bin" -m 16 -q --raw-faults 2000 --link unix --tmpdir "${TMPDIR:-/tmp}" 2>&1)
rc=$?
[ $rc -ne 0 ] && printf '%s\n' "$out"
exit $rc
