#!/bin/sh
# SPDX-License-Identifier: MIT
# Build and run the libFuzzer harnesses (frame decoder incl. RECV_BITMAP,
# HELLO parser, request parser, the whole handshake) with clang's -fsanitize=fuzzer,address,undefined, straight from the
# stream/ sources (outside automake), each for a bounded time.
#
#   test/fuzz.sh [SECONDS] [HARNESS...]   run each harness SECONDS (default 60)
#   test/fuzz.sh gen                      regenerate test/corpus/{frame,hello,req,handshake}
#
# Work files go to $FUZZ_OUT (default ${TMPDIR:-/tmp}/pcopy-fuzz); the checked-in
# corpus under test/corpus/ is only read. Crashing inputs are saved in
# $FUZZ_OUT/crashes/; copy real ones to test/corpus/crashes/ for the record.
# Prints, per harness, the executions reached; exits 1 if any harness failed.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
out=${FUZZ_OUT:-${TMPDIR:-/tmp}/pcopy-fuzz}
cc=${FUZZ_CC:-}
if [ -z "$cc" ]; then
	for c in clang-14 clang; do
		command -v "$c" >/dev/null && { cc=$c; break; }
	done
fi
[ -n "$cc" ] || { echo "fuzz.sh: clang not found (apt-get install clang-14)" >&2; exit 2; }

cflags="-g -O1 -std=gnu11 -D_GNU_SOURCE -I$top/include -I$top/stream -I$top/test"
srcs="$top/stream/wire.c $top/stream/codec.c $top/stream/crc32c.c \
	$top/stream/conn.c $top/stream/log.c $top/stream/auth.c $top/stream/sha256.c"
mkdir -p "$out/crashes" || exit 2

if [ "${1:-}" = gen ]; then
	$cc $cflags -o "$out/gen_corpus" "$top/test/gen_corpus.c" $srcs -lz || exit 1
	"$out/gen_corpus" "$top/test/corpus" || exit 1
	echo "fuzz.sh: corpus regenerated in $top/test/corpus"
	exit 0
fi

secs=${1:-60}
case "$secs" in ''|*[!0-9]*) echo "usage: $0 [SECONDS] [frame|hello|req|handshake ...] | gen" >&2; exit 2 ;; esac
[ $# -gt 0 ] && shift
harnesses=${*:-frame hello req handshake}

status=0
for name in $harnesses; do
	bin="$out/fuzz_$name"
	case $name in
	frame) maxlen=65536 ;;
	hello) maxlen=8192 ;;
	req) maxlen=65600 ;;
	handshake) maxlen=8192 ;;
	*) echo "fuzz.sh: unknown harness $name" >&2; status=1; continue ;;
	esac
	if ! $cc $cflags -fsanitize=fuzzer,address,undefined \
	     -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
	     -o "$bin" "$top/test/fuzz_$name.c" $srcs -lz; then
		echo "fuzz_$name: BUILD FAILED"; status=1; continue
	fi
	# The first corpus directory receives new inputs: keep it out of srcdir.
	mkdir -p "$out/corpus_$name"
	log="$out/fuzz_$name.log"
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	"$bin" -max_total_time="$secs" -max_len=$maxlen -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$out/crashes/${name}-" \
		"$out/corpus_$name" "$top/test/corpus/$name" >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	[ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
	cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
	if [ $rc -eq 0 ]; then
		echo "fuzz_$name: ${runs:-?} executions in ${secs} s, ${cov:-cov: ?}, no crash"
	else
		status=1
		echo "fuzz_$name: FAILED (exit $rc) after ${runs:-?} executions; log $log"
		grep -E 'ERROR: |SUMMARY|^    #[0-9]+ ' "$log" | head -25
		ls "$out/crashes/${name}-"* 2>/dev/null
	fi
done
exit $status
