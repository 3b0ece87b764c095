#!/bin/sh
# SPDX-License-Identifier: MIT
# Packaging as a user sees it: `make install DESTDIR=<tmp>`, then build
# examples/restore-minimal.c with nothing but the installed postcopy.pc,
# check it runs against the installed library (not the build tree's), and
# that the header, library, pkg-config file and man pages are installed.
set -eu
top_src=$(cd "${srcdir:-.}" && pwd)
top_build=${abs_top_builddir:-$(pwd)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

command -v pkg-config >/dev/null || { echo "SKIP: no pkg-config"; exit 77; }
cc=${CC:-cc}
command -v "${cc%% *}" >/dev/null || cc=cc

dest=$tmp/root
# The parent make's flags (jobserver, -k, ...) do not apply to this one.
( cd "$top_build" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	${MAKE:-make} install DESTDIR="$dest" ) > "$tmp/install.log" 2>&1 ||
	{ tail -20 "$tmp/install.log"; fail "make install DESTDIR=$dest"; }

pc=$(find "$dest" -name postcopy.pc | head -1)
[ -n "$pc" ] || fail "postcopy.pc not installed"
# A DESTDIR install: the .pc file names the final paths; the sysroot makes
# pkg-config prefix them with $dest, as it does for cross builds.
PKG_CONFIG_PATH=$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
PKG_CONFIG_SYSROOT_DIR=$dest
export PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
cflags=$(pkg-config --cflags postcopy) || fail "pkg-config --cflags postcopy"
libs=$(pkg-config --libs postcopy) || fail "pkg-config --libs postcopy"
# pkgconf applies the sysroot to --variable output, pkg-config does not.
in_dest() { case "$1" in "$dest"/*) echo "$1" ;; *) echo "$dest$1" ;; esac; }
libdir=$(in_dest "$(pkg-config --variable=libdir postcopy)")
incdir=$(in_dest "$(pkg-config --variable=includedir postcopy)")
mandir=$(dirname "$(find "$dest" -name postcopy.7 | head -1)")/..

[ -f "$incdir/postcopy.h" ] || fail "postcopy.h not in $incdir"
[ -e "$libdir/libpostcopy.so" ] || fail "libpostcopy.so not in $libdir"
[ -f "$mandir/man7/postcopy.7" ] || fail "postcopy.7 not installed"
for fn in $("$top_src/test/api-functions.sh" "$incdir/postcopy.h"); do
	[ -f "$mandir/man3/$fn.3" ] || fail "man page $fn.3 not installed"
done

# Build out of the source tree, as a user would: no -I into it. A library
# built with --enable-sanitizers needs the program built the same way (the
# ASan runtime must be loaded first).
cp "$top_src/examples/restore-minimal.c" "$tmp/"
if command -v readelf >/dev/null &&
   readelf -d "$libdir/libpostcopy.so" | grep -q 'NEEDED.*libasan'; then
	cc="$cc -fsanitize=address,undefined"
fi
# shellcheck disable=SC2086 # word splitting of the flags is intended
$cc $cflags -o "$tmp/restore-minimal" "$tmp/restore-minimal.c" $libs -pthread \
	> "$tmp/cc.log" 2>&1 || { cat "$tmp/cc.log"; fail "compile against installed postcopy.pc ($cflags $libs)"; }

# Run it against the installed library and make sure that is the one loaded.
LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
loaded=$(LD_TRACE_LOADED_OBJECTS=1 "$tmp/restore-minimal" | awk '$1 ~ /^libpostcopy/ { print $3 }')
case "$loaded" in
"$libdir"/*) ;;
*) fail "libpostcopy resolved to '$loaded', not under $libdir" ;;
esac
"$tmp/restore-minimal" --help > "$tmp/help" || fail "installed restore-minimal --help"
want=$(sed -n 's/^#define PCOPY_VERSION_STRING "\(.*\)"/\1/p' "$incdir/postcopy.h")
grep -q "libpostcopy $want " "$tmp/help" || fail "--help does not report version $want: $(cat "$tmp/help")"

# And a real restore through the installed library, served by the build tree.
if [ -x "$top_build/examples/serve-minimal" ]; then
	timeout 120 "$top_build/examples/serve-minimal" "$tmp/s.sock" 4 > /dev/null &
	spid=$!
	timeout 120 "$tmp/restore-minimal" "$tmp/s.sock" 4 > "$tmp/out" ||
		{ kill $spid 2>/dev/null; cat "$tmp/out"; fail "installed restore-minimal could not restore"; }
	wait $spid || fail "serve-minimal exited with $?"
fi
echo "ok: installed into $dest; example built with pkg-config, version $want, restores"
