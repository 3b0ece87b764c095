#!/bin/sh
# SPDX-License-Identifier: MIT
# Man pages in step with the API: every PCOPY_API function of
# include/postcopy.h has a section 3 page (possibly a .so link to the page
# that documents its family) naming it, and every page renders with groff
# without a warning.
set -eu
top_src=$(cd "${srcdir:-.}" && pwd)
man=$top_src/doc/man
status=0
fail() { echo "FAIL: $*"; status=1; }

for fn in $("$top_src/test/api-functions.sh" "$top_src/include/postcopy.h"); do
	page=$man/man3/$fn.3
	[ -f "$page" ] || { fail "$fn has no man page"; continue; }
	target=$(sed -n 's/^\.so[[:space:]]\{1,\}//p' "$page")
	if [ -n "$target" ]; then
		[ -f "$man/$target" ] || { fail "$fn.3 links to missing $target"; continue; }
		page=$man/$target
	fi
	# Named in the NAME section and shown in the SYNOPSIS.
	sed -n '/^\.SH NAME/,/^\.SH/p' "$page" | grep -qw "$fn" || fail "$fn not in NAME of $page"
	grep -q "$fn(" "$page" || fail "$fn not in SYNOPSIS of $page"
done
[ -f "$man/man7/postcopy.7" ] || fail "postcopy.7 missing"

if command -v groff >/dev/null; then
	for page in "$man"/man3/*.3 "$man"/man7/*.7; do
		# .so paths are relative to the top of the man tree.
		out=$(cd "$man" && groff -man -Tutf8 -ww -z "$page" 2>&1) ||
			fail "groff failed on $page"
		[ -z "$out" ] || fail "groff warnings on $page: $out"
	done
else
	echo "note: groff not installed, rendering not checked"
fi
[ $status -eq 0 ] && echo "ok: man pages cover the API and render cleanly"
exit $status
