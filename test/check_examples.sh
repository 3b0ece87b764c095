#!/bin/sh
# SPDX-License-Identifier: MIT
# examples/serve-minimal and examples/restore-minimal against each other over
# a Unix socket: the destination reads every byte while the image arrives,
# checks the pattern and must exit 0; so must the source.
set -eu
ex=${abs_top_builddir:-$(pwd)}/examples
tmp=$(mktemp -d)
spid=
trap '[ -z "$spid" ] || kill "$spid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# Both must be usable without a peer.
"$ex/restore-minimal" --help > "$tmp/help" || fail "restore-minimal --help"
grep -q "libpostcopy [0-9]" "$tmp/help" || fail "--help lacks the version: $(cat "$tmp/help")"
if "$ex/restore-minimal" 2>/dev/null; then fail "restore-minimal without arguments succeeded"; fi

# The destination retries its connect, so start order does not matter; the
# timeouts turn a hang into a failure.
sock=$tmp/pc.sock
timeout 120 "$ex/serve-minimal" "$sock" 24 > "$tmp/serve.out" &
spid=$!
rc=0
timeout 120 "$ex/restore-minimal" "$sock" 24 > "$tmp/restore.out" || rc=$?
cat "$tmp/restore.out"
[ $rc -eq 0 ] || fail "restore-minimal exited with $rc"
grep -q "contents verified" "$tmp/restore.out" || fail "restore-minimal did not verify"
rc=0
wait "$spid" || rc=$?
spid=
cat "$tmp/serve.out"
[ $rc -eq 0 ] || fail "serve-minimal exited with $rc"
[ ! -e "$sock" ] || fail "serve-minimal left its socket behind"

# A destination whose source has a different region table must fail cleanly
# (exit 1 with a message), not hang or crash.
timeout 60 "$ex/serve-minimal" "$sock" 8 > /dev/null 2>&1 &
spid=$!
rc=0
timeout 60 "$ex/restore-minimal" "$sock" 16 > /dev/null 2> "$tmp/mismatch.err" || rc=$?
[ $rc -eq 1 ] || fail "mismatched sizes: restore-minimal exited with $rc, want 1: $(cat "$tmp/mismatch.err")"
grep -q "length" "$tmp/mismatch.err" ||
	fail "mismatched sizes: the message does not say what differs: $(cat "$tmp/mismatch.err")"
wait "$spid" 2>/dev/null || true
spid=
echo "ok: examples restore, verify, and refuse a different region table"
