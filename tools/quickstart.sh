#!/bin/sh
# SPDX-License-Identifier: MIT
# One entry point for a fresh Debian 12 machine (run as root):
#   tools/quickstart.sh demo   install what is missing, build, run the main job
#   tools/quickstart.sh test   install what is missing, run the whole test suite
#                              (plain build, ASan+UBSan build, valgrind) and
#                              end with one line "N passed, N failed, N skipped"
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
what=${1:-}
case "$what" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac

packages="build-essential autoconf automake libtool pkg-config liburing-dev zlib1g-dev check valgrind clang libclang-rt-14-dev libjson-c-dev python3"
missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "quickstart: installing$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

[ -x configure ] || autoreconf -fi >/dev/null

build() { # build DIR [configure args...]
	dir=$1; shift
	mkdir -p "$dir"
	( cd "$dir" && { [ -f Makefile ] || "$top/configure" -q "$@"; } && make -s -j2 >/dev/null )
}

if [ "$what" = demo ]; then
	build build
	exec ./build/tools/postcopy-demo
fi
exec "$top/tools/run-tests.sh"
