#!/bin/sh
# SPDX-License-Identifier: MIT
# The whole test suite: `make check` in a plain build and in an
# AddressSanitizer+UBSan build, then the suites again under valgrind memcheck.
# Counts every check test case (and every whole-program skip) and ends with
# one line: "N passed, N failed, N skipped".
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ -x configure ] || autoreconf -fi >/dev/null || exit 1

passed=0 failed=0 skipped=0 status=0

# count LOGFILE: add the check totals of one test program's log.
count() {
	log=$1
	rc_line=$(grep -h '^:test-result:' "${log%.log}.trs" 2>/dev/null | head -1)
	n_skip=$(grep -c '^SKIP ' "$log" 2>/dev/null)
	case "$rc_line" in *SKIP*) skipped=$((skipped + 1)); return ;; esac
	totals=$(grep -Eh '^[0-9]+%: Checks: [0-9]+' "$log" | tail -1)
	if [ -z "$totals" ]; then # a script test, or a crash before check printed
		case "$rc_line" in
		*PASS*) passed=$((passed + 1)) ;;
		*) failed=$((failed + 1)) ;;
		esac
		return
	fi
	n=$(echo "$totals" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
	f=$(echo "$totals" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
	e=$(echo "$totals" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
	passed=$((passed + n - f - e - n_skip))
	failed=$((failed + f + e))
	skipped=$((skipped + n_skip))
}

run_build() { # run_build NAME [configure args...]
	name=$1; shift
	dir="$top/$name"
	echo "== $name: configure $*"
	mkdir -p "$dir"
	if ! ( cd "$dir" && { [ -f Makefile ] || "$top/configure" -q "$@"; } &&
	       make -s -j2 >/dev/null && make -s check >/dev/null 2>&1; ); then
		status=1
	fi
	if [ ! -f "$dir/test/check_wire.log" ]; then
		echo "$name: build failed"; failed=$((failed + 1)); status=1; return
	fi
	for log in "$dir"/test/check_*.log; do
		[ -f "$log" ] || continue
		before_f=$failed
		count "$log"
		if [ $failed -ne $before_f ]; then
			echo "--- $log"; grep -E '^[^:]+:[0-9]+:[EF]:|SKIP|Early exit|ERROR|signal' "$log" | head -20
		fi
	done
	grep -h '^SKIP ' "$dir"/test/check_*.log 2>/dev/null | sort -u
}

run_build build
run_build build-asan --enable-sanitizers

# valgrind memcheck over the same suites, smaller images.
if command -v valgrind >/dev/null; then
	echo "== valgrind"
	vdir="$top/build"
	# Threads blocked in a userfaultfd fault hold valgrind's big lock, so
	# suites whose threads touch missing memory run only their cases that
	# don't (the check_dest* suites gate themselves; for check_e2e, the
	# no-touch restores; check_recovery cannot run). PROG or PROG:TCASE.
	for spec in check_wire check_sent_window check_source check_dest check_dest_failure check_dest_recovery \
		    check_dest_urgent check_proxy check_auth check_fuzz \
		    check_hostile check_adopt check_e2e:no-touch; do
		t=${spec%%:*}
		case "$spec" in *:*) tcase=${spec#*:} ;; *) tcase= ;; esac
		[ -x "$vdir/test/$t" ] || continue
		log="$vdir/test/valgrind-$t.log"
		( cd "$vdir" && env PCOPY_TEST_MB=4 CK_DEFAULT_TIMEOUT=600 ${tcase:+CK_RUN_CASE=$tcase} \
		  ./libtool --mode=execute valgrind -q --error-exitcode=99 \
		  --leak-check=full --errors-for-leak-kinds=definite,indirect \
		  --track-fds=no "./test/$t" ) >"$log" 2>&1
		rc=$?
		printf ':test-result: %s\n' "$([ $rc -eq 77 ] && echo SKIP || echo PASS)" >"${log%.log}.trs"
		before_f=$failed
		count "$log"
		if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ $failed -eq $before_f ]; then
			failed=$((failed + 1))	# valgrind found errors outside a test case
		fi
		[ $failed -ne $before_f ] && { echo "--- $log"; tail -30 "$log"; status=1; }
	done
fi

# libFuzzer: each harness (frame decoder, HELLO, REQ, whole handshake) for a
# bounded time from the checked-in corpus; a crash or a broken invariant fails.
fuzz_secs=${PCOPY_FUZZ_SECONDS:-30}
if [ "$fuzz_secs" -gt 0 ] && command -v clang >/dev/null; then
	echo "== fuzz ($fuzz_secs s per harness)"
	for h in frame hello req handshake; do
		log="$top/build/test/fuzz-$h.log"
		if FUZZ_OUT="$top/build/fuzz" sh "$top/test/fuzz.sh" "$fuzz_secs" "$h" >"$log" 2>&1; then
			passed=$((passed + 1))
			grep -h "executions" "$log" | tail -1
		else
			failed=$((failed + 1)); status=1
			echo "--- fuzz $h"; tail -20 "$log"
		fi
	done
fi

[ $failed -eq 0 ] || status=1
echo "$passed passed, $failed failed, $skipped skipped"
exit $status
