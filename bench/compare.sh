#!/bin/bash
# SPDX-License-Identifier: MIT
# A/B two (or more) builds of pcopy-bench on this noisy 2-vCPU machine: run
# them alternately N times with the same options, then print per run/order
# the median of each figure for every build, and B/A (each build over the
# first). Alternating spreads slow phases of the machine over all builds.
#
# usage: bench/compare.sh [-n N] LABEL=PATH [LABEL=PATH...] -- [pcopy-bench options]
#   e.g. bench/compare.sh -n 5 old=/tmp/a/bench/pcopy-bench new=bench/pcopy-bench \
#            -- -m 1024 --link tcp -r lib -o hot,random
# Environment for one build only: LABEL=PATH@VAR=VALUE[,VAR=VALUE...].
set -eu
n=3
builds=()
while [ $# -gt 0 ]; do
	case "$1" in
	-n) n=$2; shift 2 ;;
	-h|--help) sed -n '2,11p' "$0"; exit 0 ;;
	--) shift; break ;;
	*=*) builds+=("$1"); shift ;;
	*) echo "compare.sh: expected LABEL=PATH or --, got '$1'" >&2; exit 2 ;;
	esac
done
[ ${#builds[@]} -ge 1 ] || { echo "compare.sh: no build given" >&2; exit 2; }
if ! command -v jq >/dev/null; then
	echo "compare.sh: installing jq" >&2
	apt-get install -y -q jq >/dev/null || { echo "compare.sh: no jq" >&2; exit 1; }
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for ((i = 1; i <= n; i++)); do
	for b in "${builds[@]}"; do
		label=${b%%=*}
		rest=${b#*=}
		path=${rest%%@*}
		envs=()
		[ "$rest" != "$path" ] && IFS=, read -r -a envs <<<"${rest#*@}"
		if ! env "${envs[@]}" "$path" -q "$@" --json "$tmp/$label.jsonl" >"$tmp/$label.out" 2>&1; then
			echo "compare.sh: $label, round $i failed:" >&2
			tail -5 "$tmp/$label.out" >&2
		fi
	done
	echo "round $i of $n done" >&2
done

first=${builds[0]%%=*}
for b in "${builds[@]}"; do
	label=${b%%=*}
	jq -c --arg b "$label" '. + {build: $b}' "$tmp/$label.jsonl"
done | jq -rs --arg first "$first" '
	def med: sort | if length == 0 then null
		else (if length % 2 == 1 then .[length / 2 | floor]
		      else (.[length / 2 - 1] + .[length / 2]) / 2 end) end;
	def f($k): [.[] | .[$k] | select(. != null and . >= 0)] | med;
	def show: if . == null then "-" elif . >= 100 then (. | round | tostring)
		else ((. * 1000 | round) / 1000 | tostring) end;
	def keys_: ["total_s", "hot_s", "gbps", "faults", "p50_us", "p99_us", "p999_us",
		    "src_cpu_s", "dst_lib_cpu_s"];
	group_by(.run + " " + .order)[] as $g
	| ($g | group_by(.build) | map({key: .[0].build,
		value: ((. as $r | reduce keys_[] as $k ({}; .[$k] = ($r | f($k))))
			+ {n: length})}) | from_entries) as $m
	| "\($g[0].run) \($g[0].order)",
	  "  build          n " + (keys_ | map(.[0:9] | . + (" " * (10 - length))) | join("")),
	  ($m | to_entries[] | "  \(.key)" + (" " * ([13 - (.key | length), 1] | max))
		+ "\(.value.n | tostring | " " * (2 - length) + .)"
		+ (.value as $v | keys_ | map(" " + ($v[.] | show) | . + (" " * ([10 - length, 1] | max))) | join(""))),
	  ($m | to_entries[] | select(.key != $first) as $e
		| "  \($e.key)/\($first)" + (" " * ([11 - ($e.key | length) - ($first | length), 1] | max)) + "  "
		+ (keys_ | map(. as $k | if ($m[$first][$k] // 0) > 0 and $e.value[$k] != null
			then " " + ((($e.value[$k] / $m[$first][$k]) * 100 | round) / 100 | tostring)
			else " -" end | . + (" " * ([10 - length, 1] | max))) | join("")))'
