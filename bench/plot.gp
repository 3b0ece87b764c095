# SPDX-License-Identifier: MIT
# gnuplot script for bench/plot.sh: expects link, dir, files, out (-e).
set terminal pngcairo size 1000,640 noenhanced
set grid

if (strlen(files) > 0) {
	set output out.'/latency-cdf-'.link.'.png'
	set title 'pcopy-bench: fault latency seen by touching threads, link '.link
	set logscale x
	set xlabel 'latency (us, log)'
	set ylabel 'fraction of faults <= x'
	set yrange [0:1]
	set key bottom right
	plot for [f in files] dir.'/'.f using 2:1 with linespoints pt 7 ps 0.5 \
		title f[1:strlen(f)-4]
	unset logscale x
}

set output out.'/throughput-'.link.'.png'
set title 'pcopy-bench: effective throughput (image bytes / time), link '.link
set style fill solid 0.6
set boxwidth 0.7
set ylabel 'GB/s'
set xlabel ''
set yrange [0:*]
set xtics rotate by -35
set key off
plot dir.'/bars.dat' using 0:2:xtic(1) with boxes, \
	'' using 0:2:(sprintf('%.2f', $2)) with labels offset 0,0.7
