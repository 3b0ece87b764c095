#!/bin/sh
# SPDX-License-Identifier: MIT
# postcopy-serve and postcopy-restore against each other: a sparse snapshot
# file with two regions is served over a Unix socket and over loopback TCP,
# restored, written out and compared byte for byte; a wrong --crc32 fails;
# a non-loopback listen address is refused without --allow-remote; a server
# killed mid-restore and restarted with --adopt resumes the session.
set -eu
bin=${abs_top_builddir:-$(pwd)}/tools
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# 6 MiB snapshot: a header page, then region "ram" (4 MiB) and "rom" (1 MiB),
# with holes, data, and a tail past the end of the file.
snap=$tmp/snap
truncate -s 4096 "$snap"
for off in 1 2 3 100 101 700 1023; do
	dd if=/dev/urandom of="$snap" bs=4096 seek=$off count=1 conv=notrunc status=none
done
dd if=/dev/urandom of="$snap" bs=4096 seek=1030 count=3 conv=notrunc status=none
# expected contents of the two regions
dd if="$snap" of="$tmp/ram.want" bs=4096 skip=1 count=1024 status=none
dd if="$snap" of="$tmp/rom.want" bs=4096 skip=1025 count=256 status=none
truncate -s 4M "$tmp/ram.want"; truncate -s 1M "$tmp/rom.want"
cat "$tmp/ram.want" "$tmp/rom.want" > "$tmp/want"

run() { # run LISTEN CONNECT [serve options]; a --key-file goes to both sides
	listen=$1 connect=$2; shift 2
	rkey=""
	[ "${1:-}" = --key-file ] && rkey="--key-file $2"
	"$bin/postcopy-serve" -q -l "$listen" -r "ram:$snap:4096:4M" -r "rom:$snap:4198400:1M" "$@" &
	spid=$!
	"$bin/postcopy-restore" -q -c "$connect" -r ram:4M -r rom:1M -o "$tmp/got" -t 60 $rkey \
		|| fail "restore from $connect"
	wait $spid || fail "serve on $listen exited with $?"
	cmp "$tmp/want" "$tmp/got" || fail "restored image differs ($connect)"
	echo "ok: $connect $*"
}

run "unix:$tmp/s.sock" "unix:$tmp/s.sock"
port=$(( 20000 + $$ % 20000 ))
run "tcp:127.0.0.1:$port" "127.0.0.1:$port" --zlib

crc=$(python3 -c "import zlib,sys; print('%08x' % zlib.crc32(open(sys.argv[1],'rb').read()))" "$tmp/want")
"$bin/postcopy-serve" -q -l "$tmp/c.sock" -r "ram:$snap:4096:4M" -r "rom:$snap:4198400:1M" &
"$bin/postcopy-restore" -q -j -c "$tmp/c.sock" -r ram:4M -r rom:1M --crc32 "$crc" > "$tmp/json" \
	|| fail "restore with the right crc32"
grep -q '"ok":true' "$tmp/json" || fail "json summary: $(cat "$tmp/json")"
wait
"$bin/postcopy-serve" -q -l "$tmp/d.sock" -r "ram:$snap:4096:4M" -r "rom:$snap:4198400:1M" &
if "$bin/postcopy-restore" -q -c "$tmp/d.sock" -r ram:4M -r rom:1M --crc32 12345678 2>/dev/null; then
	fail "a wrong crc32 was accepted"
fi
wait || true
echo "ok: crc32 checked"

# pre-shared key: the right key restores, a wrong one gets nothing
printf 'correct horse battery staple\n' > "$tmp/key"
printf 'wrong key\n' > "$tmp/badkey"
run "unix:$tmp/k.sock" "unix:$tmp/k.sock" --key-file "$tmp/key"
"$bin/postcopy-serve" -q -l "$tmp/k2.sock" -r "ram:$snap:4096:4M" -r "rom:$snap:4198400:1M" \
	--key-file "$tmp/key" 2>/dev/null &
spid=$!
if "$bin/postcopy-restore" -q -c "$tmp/k2.sock" -r ram:4M -r rom:1M -t 20 \
	--key-file "$tmp/badkey" 2>"$tmp/err"; then
	fail "a wrong key was accepted"
fi
grep -qi "auth" "$tmp/err" || fail "wrong key refused without saying why: $(cat "$tmp/err")"
kill $spid 2>/dev/null || true; wait $spid 2>/dev/null || true
echo "ok: wrong key refused"

# a server killed mid-restore (SIGKILL) and restarted with --adopt: the
# restore reconnects on its own, resumes the session, and ends byte-exact.
# 8 MiB of random data at --max-rate 2M keeps the first server busy ~4 s;
# the adopting one (no limit) sends the rest at once.
dd if=/dev/urandom of="$tmp/dense" bs=1M count=8 status=none
"$bin/postcopy-serve" -q -l "$tmp/a.sock" -r "ram:$tmp/dense" --max-rate 2M &
spid=$!
"$bin/postcopy-restore" -q -c "$tmp/a.sock" -r ram:8M -o "$tmp/got" -t 60 -j \
	> "$tmp/adopt.json" &
rpid=$!
sleep 1
kill -9 $spid; wait $spid 2>/dev/null || true
"$bin/postcopy-serve" -q -l "$tmp/a.sock" -r "ram:$tmp/dense" --adopt &
spid=$!
wait $rpid || fail "restore across a restarted server (--adopt) exited with $?"
wait $spid || fail "adopting server exited with $?"
cmp "$tmp/dense" "$tmp/got" || fail "restored image differs after the server restart"
grep -q '"breaks":[1-9]' "$tmp/adopt.json" || fail "no break counted: $(cat "$tmp/adopt.json")"
echo "ok: server killed and restarted with --adopt"

if "$bin/postcopy-serve" -q -l 0.0.0.0:1 -r "ram:$snap" 2>"$tmp/err"; then
	fail "non-loopback listen accepted without --allow-remote"
fi
grep -q allow-remote "$tmp/err" || fail "refusal does not say how to allow it"
echo "ok: remote listen refused"
