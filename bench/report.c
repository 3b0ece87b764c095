/* SPDX-License-Identifier: MIT */
/*
 * Output: a human table, one JSON object per run (one per line) with ratios
 * to the baselines of the same invocation, and the targets checked
 * against those ratios (a report, never an assertion).
 */
#include "bench.h"

#include <math.h>
#include <string.h>

static const struct b_result *find(const struct b_result *all, unsigned n,
				   const char *run, const char *order)
{
	for (unsigned i = 0; i < n; i++)
		if (all[i].rc == 0 && strcmp(all[i].run, run) == 0 &&
		    (!order || strcmp(all[i].order, order) == 0))
			return &all[i];
	return NULL;
}

static double ratio(double a, double b)
{
	return b > 0 && a >= 0 ? a / b : NAN;
}

static void jnum(FILE *f, const char *key, double v)
{
	if (isnan(v) || isinf(v))
		fprintf(f, ",\"%s\":null", key);
	else
		fprintf(f, ",\"%s\":%.6g", key, v);
}

static void jstr(FILE *f, const char *key, const char *s)
{
	fprintf(f, ",\"%s\":\"", key);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if ((unsigned char)*s >= 0x20)
			fputc(*s, f);
	}
	fputc('"', f);
}

void report_json(FILE *f, const struct b_opts *o, const struct b_result *r,
		 const struct b_result *all, unsigned n)
{
	const struct b_result *f64 = find(all, n, "floor_uffd64k", NULL);
	const struct b_result *f4 = find(all, n, "floor_uffd4k", NULL);
	const struct b_result *fm = find(all, n, "floor_memcpy", NULL);
	const struct b_result *raw = find(all, n, "raw_rtt", NULL);
	const struct b_result *nv = find(all, n, "naive", r->order);
	const struct b_result *full = find(all, n, "lib", r->order);
	bool lib = strncmp(r->run, "lib", 3) == 0;
	bool ablation = lib && strcmp(r->run, "lib") != 0;

	fprintf(f, "{\"bench\":\"pcopy\"");
	jstr(f, "run", r->run);
	jstr(f, "order", r->order);
	jstr(f, "link", o->link_name);
	if (o->src_nodelay)
		jstr(f, "variant", "src-nodelay");
	jnum(f, "image_mib", (double)(o->image_bytes >> 20));
	jnum(f, "touchers", r->touchers);
	jnum(f, "rc", r->rc);
	jnum(f, "total_s", r->total_s);
	jnum(f, "first_touch_ms", r->first_touch_s >= 0 ? r->first_touch_s * 1e3 : NAN);
	jnum(f, "hot_s", r->hot_s >= 0 ? r->hot_s : NAN);
	jnum(f, "gbps", r->gbps);
	jnum(f, "faults", (double)r->faults);
	jnum(f, "p50_us", r->faults ? r->p50_us : NAN);
	jnum(f, "p99_us", r->faults ? r->p99_us : NAN);
	jnum(f, "p999_us", r->faults ? r->p999_us : NAN);
	jnum(f, "max_us", r->faults ? r->max_us : NAN);
	jnum(f, "src_cpu_s", r->src_cpu_s);
	jnum(f, "dst_cpu_s", r->dst_cpu_s);
	jnum(f, "dst_lib_cpu_s", r->dst_lib_cpu_s);
	jnum(f, "dst_cpu_s_per_gib", r->dst_lib_cpu_s / ((double)o->image_bytes / (1 << 30)));
	jnum(f, "mem_overhead_mib", r->mem_overhead_mib);
	jnum(f, "src_mem_overhead_mib", r->src_mem_overhead_mib);
	jnum(f, "bad_pages", (double)r->bad_pages);
	if (lib) {
		jnum(f, "start_ms", r->start_ms);
		jnum(f, "lib_faults", (double)r->lib_faults);
		jnum(f, "lib_requests", (double)r->lib_requests);
		jnum(f, "lib_duplicates", (double)r->lib_dups);
		jnum(f, "wire_bytes", (double)r->wire_bytes);
		jnum(f, "wire_gbps", r->wire_bytes / r->total_s / 1e9);
		jnum(f, "lib_internal_p99_us", r->lib_p99_us);
	}
	if (lib || strcmp(r->run, "naive") == 0) {
		jnum(f, "gbps_vs_uffd64k", f64 ? ratio(r->gbps, f64->gbps) : NAN);
		jnum(f, "gbps_vs_uffd4k", f4 ? ratio(r->gbps, f4->gbps) : NAN);
		jnum(f, "gbps_vs_memcpy", fm ? ratio(r->gbps, fm->gbps) : NAN);
		jnum(f, "time_vs_uffd64k", f64 ? ratio(r->total_s, f64->total_s) : NAN);
		if (r->faults && raw && raw->faults) {
			jnum(f, "p50_vs_raw", ratio(r->p50_us, raw->p50_us));
			jnum(f, "p99_vs_raw", ratio(r->p99_us, raw->p99_us));
			jnum(f, "p999_vs_raw", ratio(r->p999_us, raw->p999_us));
		}
		if (o->link_gbit > 0)
			jnum(f, "image_vs_link", r->gbps * 8 / o->link_gbit);
		if (o->link_gbit > 0 && r->wire_bytes)
			jnum(f, "link_util", r->wire_bytes * 8 / r->total_s / 1e9 /
					     o->link_gbit);
	}
	if (lib && nv) {
		jnum(f, "speedup_vs_naive", ratio(nv->total_s, r->total_s));
		if (r->hot_s >= 0 && nv->hot_s >= 0)
			jnum(f, "hot_speedup_vs_naive", ratio(nv->hot_s, r->hot_s));
	}
	if (ablation && full) {
		/* Baseline 4: this variant against the library as shipped,
		 * same order, same invocation (> 1: the switched-off part
		 * was buying that much). */
		jnum(f, "total_vs_lib", r->incomplete ? NAN : ratio(r->total_s, full->total_s));
		if (r->hot_s >= 0 && full->hot_s >= 0)
			jnum(f, "hot_vs_lib", ratio(r->hot_s, full->hot_s));
		if (r->faults && full->faults) {
			jnum(f, "p50_vs_lib", ratio(r->p50_us, full->p50_us));
			jnum(f, "p99_vs_lib", ratio(r->p99_us, full->p99_us));
			jnum(f, "p999_vs_lib", ratio(r->p999_us, full->p999_us));
		}
	}
	if (r->incomplete)
		jnum(f, "incomplete", 1);
	if (r->has_cdf) {
		fprintf(f, ",\"cdf\":[");
		for (unsigned i = 0; i < sizeof(b_cdf_q) / sizeof(b_cdf_q[0]); i++)
			fprintf(f, "%s[%g,%.6g]", i ? "," : "", b_cdf_q[i], r->cdf_us[i]);
		fputc(']', f);
	}
	if (r->dst_threads[0])
		jstr(f, "dst_threads", r->dst_threads);
	if (r->src_threads[0])
		jstr(f, "src_threads", r->src_threads);
	if (r->note[0])
		jstr(f, "note", r->note);
	fprintf(f, "}\n");
}

static void cell(FILE *f, double v, const char *fmt, int w)
{
	if (isnan(v) || v < 0)
		fprintf(f, "%s%*s", fmt[0] == ' ' ? " " : "", w, "-");
	else
		fprintf(f, fmt, w, v);
}

/* Baseline 4: each library variant against "lib" (urgent connection and
 * background stream on) with the same order. */
static void report_ablation(FILE *f, const struct b_result *all, unsigned n)
{
	bool head = false;

	for (unsigned i = 0; i < n; i++) {
		const struct b_result *r = &all[i], *full;

		if (r->rc < 0 || strncmp(r->run, "lib_", 4) != 0)
			continue;
		full = find(all, n, "lib", r->order);
		if (!full)
			continue;
		if (!head) {
			fprintf(f, "\nablation (issue 3 baseline 4): variant / lib, same order "
				"(> 1: what the switched-off part buys)\n");
			fprintf(f, "%-16s %-6s %8s %7s %8s %8s %8s %8s\n", "run", "order",
				"total", "hot", "p50", "p99", "p999", "srcCPU");
			head = true;
		}
		fprintf(f, "%-16s %-6s", r->run, r->order);
		cell(f, r->incomplete ? NAN : ratio(r->total_s, full->total_s), " %*.2f", 8);
		cell(f, r->hot_s >= 0 && full->hot_s >= 0 ? ratio(r->hot_s, full->hot_s) : NAN,
		     " %*.2f", 7);
		cell(f, r->faults && full->faults ? ratio(r->p50_us, full->p50_us) : NAN,
		     " %*.2f", 8);
		cell(f, r->faults && full->faults ? ratio(r->p99_us, full->p99_us) : NAN,
		     " %*.2f", 8);
		cell(f, r->faults && full->faults ? ratio(r->p999_us, full->p999_us) : NAN,
		     " %*.2f", 8);
		cell(f, ratio(r->src_cpu_s, full->src_cpu_s), " %*.2f", 8);
		fputc('\n', f);
	}
}

void report_table(FILE *f, const struct b_opts *o, const struct b_result *all,
		  unsigned n)
{
	fprintf(f, "\npcopy-bench: image %zu MiB, link %s, touchers %u\n",
		o->image_bytes >> 20, o->link_name, o->touchers);
	fprintf(f, "%-16s %-6s %2s %8s %8s %7s %6s %7s %8s %8s %8s %6s %6s %7s %4s  %s\n",
		"run", "order", "T", "total_s", "first_ms", "hot_s", "GB/s", "faults",
		"p50_us", "p99_us", "p999_us", "srcCPU", "dstCPU", "memMiB", "bad", "note");
	for (unsigned i = 0; i < n; i++) {
		const struct b_result *r = &all[i];

		fprintf(f, "%-16s %-6s %2u ", r->run, r->order, r->touchers);
		if (r->rc < 0) {
			fprintf(f, "FAILED rc=%d %s\n", r->rc, r->note);
			continue;
		}
		cell(f, r->total_s, "%*.3f", 8);
		cell(f, r->first_touch_s * 1e3, " %*.2f", 8);
		cell(f, r->hot_s, " %*.3f", 7);
		cell(f, r->gbps, " %*.2f", 6);
		fprintf(f, " %7llu", (unsigned long long)r->faults);
		cell(f, r->faults ? r->p50_us : NAN, " %*.1f", 8);
		cell(f, r->faults ? r->p99_us : NAN, " %*.1f", 8);
		cell(f, r->faults ? r->p999_us : NAN, " %*.1f", 8);
		cell(f, r->src_cpu_s, " %*.2f", 6);
		cell(f, r->dst_lib_cpu_s, " %*.2f", 6);
		fprintf(f, " %7.1f %4llu  %s\n", r->mem_overhead_mib,
			(unsigned long long)r->bad_pages, r->note);
	}
	fprintf(f, "(dstCPU: destination CPU seconds without the toucher threads; "
		"latencies: touches that blocked >= %u ns)\n", B_FAULT_THRESHOLD_NS);
	report_ablation(f, all, n);
}

static void target(FILE *f, const char *what, double v, double limit, bool at_most)
{
	const char *verdict = isnan(v) ? "n/a" :
		(at_most ? v <= limit : v >= limit) ? "MET" : "MISSED";

	fprintf(f, "  %-58s %8.3f  (%s %.2f)  %s\n", what, v, at_most ? "<=" : ">=",
		limit, verdict);
}

void report_targets(FILE *f, const struct b_opts *o, const struct b_result *all,
		    unsigned n)
{
	const struct b_result *f64 = find(all, n, "floor_uffd64k", NULL);
	const struct b_result *raw = find(all, n, "raw_rtt", NULL);
	const struct b_result *lr = find(all, n, "lib", "random");
	const struct b_result *li = find(all, n, "lib_nobg", "random");
	const struct b_result *ln = find(all, n, "lib", "none");
	const struct b_result *ls = find(all, n, "lib", "seq");
	const struct b_result *lh = find(all, n, "lib", "hot");
	const struct b_result *nh = find(all, n, "naive", "hot");
	bool veth = strncmp(o->link_name, "veth", 4) == 0;
	bool tcp = strcmp(o->link_name, "tcp") == 0;

	fprintf(f, "\nissue 3 targets on link %s (ratios from this invocation):\n",
		o->link_name);
	/* Idle: the library with no background stream (lib_nobg, same
	 * order); only if that run is missing does the raw round trip (idle
	 * by construction, no library) stand in for it. */
	if (tcp && li && raw && li->faults && raw->faults) {
		target(f, "lib idle (no bg) random p50 / raw round trip p50",
		       ratio(li->p50_us, raw->p50_us), 1.5, true);
		target(f, "lib idle (no bg) random p99 / raw round trip p99",
		       ratio(li->p99_us, raw->p99_us), 2.0, true);
	}
	if (tcp && lr && raw && lr->faults && raw->faults) {
		target(f, "lib loaded random p50 / raw round trip p50 (info)",
		       ratio(lr->p50_us, raw->p50_us), 1.5, true);
		target(f, "lib loaded random p99 / raw round trip p99 (info)",
		       ratio(lr->p99_us, raw->p99_us), 2.0, true);
	}
	if (veth && lr && lr->faults) {
		const struct b_result *idle = li && li->faults ? li : raw;
		const char *nm = idle == li ? "lib idle (no bg)" : "raw (idle)";
		char what[96];

		if (idle && idle->faults) {
			snprintf(what, sizeof(what), "lib random p99 (loaded) / %s p99", nm);
			target(f, what, ratio(lr->p99_us, idle->p99_us), 3.0, true);
			snprintf(what, sizeof(what), "lib random p999 (loaded) / %s p999", nm);
			target(f, what, ratio(lr->p999_us, idle->p999_us), 5.0, true);
		}
		/* The reference: QEMU's 0.57 ms with its separate
		 * channel on 10 Gbit/s (absolute, so only indicative here). */
		target(f, "lib random p99 loaded, ms (QEMU postcopy: 0.57)",
		       lr->p99_us / 1e3, 0.57, true);
	}
	if (ln && f64) {
		if (strcmp(o->link_name, "unix") == 0)
			target(f, "lib no-toucher GB/s / uffd64k floor GB/s",
			       ratio(ln->gbps, f64->gbps), 0.6, false);
		if (tcp)
			target(f, "lib no-toucher GB/s / uffd64k floor GB/s",
			       ratio(ln->gbps, f64->gbps), 0.5, false);
	}
	if (ln && veth && o->link_gbit > 0) {
		/* Zero pages cross the wire as 32-byte frames, so image GB/s can
		 * exceed the link; the target is about the link's use. */
		target(f, "lib no-toucher wire bytes/s / link rate",
		       ln->wire_bytes * 8 / ln->total_s / 1e9 / o->link_gbit, 0.9, false);
		target(f, "lib no-toucher image bytes/s / link rate (info)",
		       ln->gbps * 8 / o->link_gbit, 0.9, false);
	}
	if (ls && f64 && tcp)
		target(f, "lib seq total time / uffd64k floor time",
		       ratio(ls->total_s, f64->total_s), 2.0, true);
	if (lh && nh && lh->hot_s > 0)
		target(f, "naive hot-set time / lib hot-set time",
		       ratio(nh->hot_s, lh->hot_s), 3.0, false);
	for (unsigned i = 0; i < n; i++)
		if (all[i].bad_pages)
			fprintf(f, "  WRONG CONTENTS: %s/%s saw %llu bad pages\n",
				all[i].run, all[i].order,
				(unsigned long long)all[i].bad_pages);
}
