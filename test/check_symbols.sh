#!/bin/sh
# SPDX-License-Identifier: MIT
# Symbol visibility: the shared library must export exactly the functions
# include/postcopy.h marks PCOPY_API, nothing internal and nothing missing.
set -eu
top_src=$(cd "${srcdir:-.}" && pwd)
top_build=${abs_top_builddir:-$(pwd)}
lib=$top_build/.libs/libpostcopy.so
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -e "$lib" ]; then
	echo "SKIP: $lib not built (--disable-shared?)"
	exit 77
fi
command -v nm >/dev/null || { echo "SKIP: no nm"; exit 77; }

"$top_src/test/api-functions.sh" "$top_src/include/postcopy.h" > "$tmp/want"
[ -s "$tmp/want" ] || { echo "FAIL: no PCOPY_API function found in the header"; exit 1; }

# Defined dynamic symbols, without the markers the linker adds to every
# shared object (they are not ours to hide).
nm -D --defined-only "$lib" | awk '{ print $NF }' | sed 's/@.*//' |
	grep -Ev '^(_init|_fini|_edata|_end|__bss_start)$' | sort -u > "$tmp/got"

status=0
extra=$(comm -13 "$tmp/want" "$tmp/got")
missing=$(comm -23 "$tmp/want" "$tmp/got")
if [ -n "$extra" ]; then
	echo "FAIL: exported but not PCOPY_API in postcopy.h:"; echo "$extra" | sed 's/^/  /'
	status=1
fi
if [ -n "$missing" ]; then
	echo "FAIL: PCOPY_API in postcopy.h but not exported:"; echo "$missing" | sed 's/^/  /'
	status=1
fi
[ $status -eq 0 ] && echo "ok: $(wc -l < "$tmp/got") symbols exported, all in the API"
exit $status
