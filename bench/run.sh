#!/bin/bash
# SPDX-License-Identifier: MIT
# Run the pcopy-bench matrix: one invocation per link (unix, tcp loopback,
# veth pairs between two network namespaces rate-limited by tc tbf to 1 and
# 10 Gbit/s). Every invocation measures its own baselines; results go to
# OUT/results.jsonl (one JSON object per run) and OUT/<link>.txt (tables).
#
# usage: bench/run.sh [--bin PATH] [--out DIR] [--links "unix tcp veth-1g veth-10g"]
#                     [pcopy-bench options, e.g. -m 256 -t 2]
set -u

here=$(cd "$(dirname "$0")" && pwd)
bin=""
out="bench-results"
links="unix tcp veth-1g veth-10g"
args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--bin) bin=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--links) links=$2; shift 2 ;;
	-h|--help) sed -n '2,9p' "$0"; exit 0 ;;
	*) args+=("$1"); shift ;;
	esac
done
if [ -z "$bin" ]; then
	for c in ./bench/pcopy-bench "$here/pcopy-bench"; do
		[ -x "$c" ] && bin=$c && break
	done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
	echo "run.sh: pcopy-bench not found; build it (make) and pass --bin PATH" >&2
	exit 1
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
# libtool wrapper scripts re-exec the real binary; that works inside netns too.
mkdir -p "$out"
jsonl="$out/results.jsonl"
: >"$jsonl"

# veth setup: two namespaces, one veth pair, tbf on both ends.
ns_src="pcb-src-$$"
ns_dst="pcb-dst-$$"
server_pid=""
ip_src=10.231.$(( $$ % 200 + 10 )).1
ip_dst=10.231.$(( $$ % 200 + 10 )).2
port=7077
reporting_knob=/sys/module/page_reporting/parameters/min_free_ms
reporting_saved=""

cleanup() {
	if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
		kill "$server_pid" 2>/dev/null
		wait "$server_pid" 2>/dev/null
	fi
	server_pid=""
	ip netns del "$ns_src" 2>/dev/null
	ip netns del "$ns_dst" 2>/dev/null
}
restore_reporting() { # put back what the hold below changed
	[ -n "${reporting_saved:-}" ] && echo "$reporting_saved" >"$reporting_knob"
	reporting_saved=""
}

trap 'cleanup; restore_reporting' EXIT
trap 'exit 130' INT TERM

# Free page reporting (virtio-balloon): a guest page freed for min_free_ms
# goes back to the host, and the first write to it afterwards costs a host
# fault. With this VM's 0 ms, whether a run's pages had been handed back was
# luck: lib no-toucher over unix took 0.46-3.4 s for the same 1 GiB, the
# time all in the UFFDIO_COPY's copy (perf). Hold freed pages for a minute
# while the matrix runs (every run reuses what the one before freed), and
# put the setting back at exit. PCOPY_BENCH_KEEP_REPORTING=1 leaves it.
# Two run.sh at once interfere here (and in every figure): don't.
if [ -w "$reporting_knob" ] && [ -z "${PCOPY_BENCH_KEEP_REPORTING:-}" ]; then
	reporting_saved=$(cat "$reporting_knob")
	if [ "$reporting_saved" -lt 60000 ] 2>/dev/null; then
		if echo 60000 >"$reporting_knob"; then
			echo "run.sh: $reporting_knob $reporting_saved -> 60000 for this run"
		else
			reporting_saved=""
		fi
	else
		reporting_saved=""	# already held (another run.sh?): leave it
	fi
fi

veth_up() { # rate burst
	local rate=$1 burst=$2
	ip netns add "$ns_src" && ip netns add "$ns_dst" || return 1
	ip link add pcb-s type veth peer name pcb-d || return 1
	ip link set pcb-s netns "$ns_src" && ip link set pcb-d netns "$ns_dst" || return 1
	ip -n "$ns_src" addr add "$ip_src/24" dev pcb-s
	ip -n "$ns_dst" addr add "$ip_dst/24" dev pcb-d
	ip -n "$ns_src" link set lo up; ip -n "$ns_dst" link set lo up
	ip -n "$ns_src" link set pcb-s up; ip -n "$ns_dst" link set pcb-d up
	# Token bucket on both ends: the data direction and the request path.
	# latency bounds the tbf queue (rate * latency bytes); no netem here.
	ip netns exec "$ns_src" tc qdisc add dev pcb-s root tbf rate "$rate" \
		burst "$burst" latency 20ms || return 1
	ip netns exec "$ns_dst" tc qdisc add dev pcb-d root tbf rate "$rate" \
		burst "$burst" latency 20ms || return 1
}

run_local() { # link
	echo "== $1 =="
	"$bin" --link "$1" --json "$jsonl" "${args[@]}" | grep -v '^{' | tee "$out/$1.txt"
}

run_veth() { # link rate burst
	local link=$1
	if [ "$(id -u)" != 0 ]; then
		echo "SKIP $link: creating network namespaces needs root"
		return 0
	fi
	if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
		echo "SKIP $link: ip/tc (iproute2) not installed"
		return 0
	fi
	echo "== $link (veth between namespaces, tbf rate $2) =="
	if ! veth_up "$2" "$3"; then
		echo "SKIP $link: could not set up namespaces/veth/tbf"
		cleanup
		return 0
	fi
	ip netns exec "$ns_src" "$bin" --serve "tcp:$ip_src:$port" -q &
	server_pid=$!
	ip netns exec "$ns_dst" "$bin" --connect "tcp:$ip_src:$port" --link "$link" \
		--json "$jsonl" "${args[@]}" | grep -v '^{' | tee "$out/$link.txt"
	wait "$server_pid" 2>/dev/null
	server_pid=""
	cleanup
}

for link in $links; do
	case "$link" in
	unix|tcp) run_local "$link" ;;
	veth-1g) run_veth veth-1g 1gbit 256k ;;
	veth-10g) run_veth veth-10g 10gbit 1m ;;
	*) echo "run.sh: unknown link $link" >&2 ;;
	esac
done
echo "results: $jsonl (plot with bench/plot.sh $jsonl)"
