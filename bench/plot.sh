#!/bin/bash
# SPDX-License-Identifier: MIT
# Draw pcopy-bench results with gnuplot: per link, the fault-latency CDFs of
# every run that has latency samples, and a throughput bar chart.
# usage: bench/plot.sh [results.jsonl] [outdir]     (defaults: bench-results/)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
in=${1:-bench-results/results.jsonl}
outdir=${2:-$(dirname "$in")}
if ! command -v gnuplot >/dev/null; then
	echo "plot.sh: installing gnuplot-nox" >&2
	apt-get install -y -q gnuplot-nox >/dev/null || { echo "plot.sh: no gnuplot" >&2; exit 1; }
fi
if ! command -v jq >/dev/null; then
	echo "plot.sh: installing jq" >&2
	apt-get install -y -q jq >/dev/null || { echo "plot.sh: no jq" >&2; exit 1; }
fi
[ -s "$in" ] || { echo "plot.sh: $in is empty or missing" >&2; exit 1; }
mkdir -p "$outdir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for link in $(jq -r 'select(.bench=="pcopy") | .link' "$in" | sort -u); do
	d="$tmp/$link"
	mkdir -p "$d"
	# One file per run with a CDF: "quantile latency_us" lines.
	jq -r --arg l "$link" 'select(.bench=="pcopy" and .link==$l and .cdf != null)
		| "\(.run)-\(.order)"' "$in" | sort -u | while read -r series; do
		jq -r --arg l "$link" --arg s "$series" 'select(.bench=="pcopy" and .link==$l
			and "\(.run)-\(.order)"==$s and .cdf != null) | .cdf[] | "\(.[0]) \(.[1])"' \
			"$in" >"$d/$series.cdf"
	done
	# Bars: label and GB/s of every successful run (last one wins per label).
	jq -r --arg l "$link" 'select(.bench=="pcopy" and .link==$l and .rc==0 and .gbps != null)
		| "\"\(.run)/\(.order)\" \(.gbps)"' "$in" | awk '!seen[$1]++' >"$d/bars.dat"
	files=$(cd "$d" && ls *.cdf 2>/dev/null | tr '\n' ' ')
	gnuplot -e "link='$link'; dir='$d'; files='$files'; out='$outdir'" "$here/plot.gp"
	echo "plot.sh: $outdir/latency-cdf-$link.png $outdir/throughput-$link.png"
done
