/* SPDX-License-Identifier: MIT */
/*
 * pcopy-bench: shared declarations of the benchmark program (options, the
 * image pattern, measurement helpers, links, toucher threads, the runs).
 */
#ifndef PCOPY_BENCH_H
#define PCOPY_BENCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define B_PAGE 4096u
#define B_MAX_TOUCHERS 64
#define B_RESULTS_MAX 64

/* ---- options ---- */

enum b_order {
	ORDER_NONE = 0,		/* no toucher: the background stream alone */
	ORDER_SEQ,
	ORDER_RANDOM,
	ORDER_HOT,		/* hot set first, then nothing */
	ORDER_COUNT
};

enum b_run {
	RUN_FLOOR = 1u << 0,
	RUN_RAW   = 1u << 1,
	RUN_NAIVE = 1u << 2,
	RUN_LIB   = 1u << 3,
	RUN_LIB_NOURG = 1u << 4,	/* ablation: no urgent connection */
	RUN_LIB_NOBG  = 1u << 5,	/* ablation: no background stream */
	RUN_LIB_NOPACE = 1u << 6,	/* ablation: PCOPY_SOURCE_NO_PACING */
	RUN_ALL   = 0x7fu,
};

/* The library runs: as shipped (urgent connection + background stream), and
 * issue 3's baseline 4, each of the two switched off. */
enum b_lib_variant {
	LIBV_FULL = 0,			/* "lib" */
	LIBV_NOURG,			/* "lib_nourg": one connection only */
	LIBV_NOBG,			/* "lib_nobg": PCOPY_SOURCE_NO_BACKGROUND */
	LIBV_NOPACE,			/* "lib_nopace": PCOPY_SOURCE_NO_PACING */
	LIBV_COUNT
};

struct b_opts {
	size_t image_bytes;
	unsigned touchers;
	unsigned orders;		/* bit (1 << enum b_order) */
	unsigned runs;			/* RUN_* */
	const char *link_name;		/* label: unix, tcp, veth-1g, ... */
	double link_gbit;		/* rate limit of the link, 0: none */
	const char *serve_addr;		/* --serve: be the server only */
	const char *connect_addr;	/* --connect: server elsewhere */
	unsigned raw_faults;		/* faults in the raw round-trip run */
	unsigned hot_pct;		/* hot set, percent of pages */
	unsigned hot_cluster;		/* pages per hot cluster */
	bool source_file;		/* library source serves a snapshot file */
	bool src_nodelay;		/* experiment: TCP_NODELAY on the source side */
	bool quiet;
	const char *json_path;		/* also append JSON lines here */
	const char *tmpdir;		/* snapshot file for the naive run */
};

const char *b_order_name(enum b_order o);

/* ---- image pattern (image.c) ---- */

/* True if page `pg` of the image is a zero page (~25% of pages). */
bool img_page_is_zero(uint64_t pg);
/* Write the contents of page pg into dst (4 KiB). */
void img_page_fill(uint64_t pg, void *dst);
/* True if the 4 KiB at p hold page pg's contents. */
bool img_page_ok(uint64_t pg, const void *p);
/* Fill len bytes (multiple of 4 KiB) with pages first_page, ... */
void img_fill_from(void *dst, uint64_t first_page, size_t len);
/* Write the image to a new file in dir (zero pages as holes); returns the
 * fd (path unlinked already) or -errno. */
int img_write_file(const char *dir, size_t len);

/* ---- measurement (measure.c) ---- */

uint64_t b_now_ns(void);
/* Process CPU time (user + system) in ns, from getrusage(RUSAGE_SELF). */
uint64_t b_proc_cpu_ns(void);
uint64_t b_thread_cpu_ns(void);
/* Reset VmHWM to the current RSS (clear_refs 5); returns 0 or -errno. */
int b_reset_hwm(void);
/* VmRSS / VmHWM of this process in bytes (0 if unreadable). */
uint64_t b_vm_rss(void);
uint64_t b_vm_hwm(void);
/* Resident bytes of the mapping(s) in [addr, addr + len), from smaps: the
 * part of the image actually in memory (zero pages map the shared zero page
 * and cost nothing). */
uint64_t b_region_rss(const void *addr, size_t len);
/* Anonymous memory between two PROT_NONE guard pages, so its VMA never
 * merges with a neighbour (smaps figures stay per image); NULL on failure. */
void *b_map_guarded(size_t len);
void b_unmap_guarded(void *p, size_t len);
/* Touch and free n bytes, so guest memory is backed by the host before
 * anything is timed (first touches of guest RAM are slow on a VM). */
void b_warm_memory(size_t n);

/* Where the CPU went, per thread: a sampler thread reads
 * /proc/self/task/<tid>/stat every 20 ms (threads that exit keep their last
 * figure); stop() writes "comm/tid=ms ..." for every thread but main with at
 * least 1 ms (clock-tick resolution) and frees the sampler. */
struct b_task_sampler;
struct b_task_sampler *b_task_sampler_start(void);
void b_task_sampler_stop(struct b_task_sampler *ts, char *out, size_t len);

/* Latency samples (ns). */
struct b_lat {
	uint32_t *v;
	size_t n, cap;
};
int b_lat_init(struct b_lat *l, size_t cap);
void b_lat_free(struct b_lat *l);
static inline void b_lat_add(struct b_lat *l, uint64_t ns)
{
	if (l->n < l->cap)
		l->v[l->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}
/* Merge src into dst (dst grows); returns 0 or -ENOMEM. */
int b_lat_merge(struct b_lat *dst, const struct b_lat *src);
/* Sort; afterwards b_lat_q(l, q) is the q-quantile in ns (0 if empty). */
void b_lat_sort(struct b_lat *l);
uint64_t b_lat_q(const struct b_lat *l, double q);

/* ---- links (link.c) ---- */

struct b_addr {
	int family;			/* AF_UNIX or AF_INET */
	char text[128];			/* "unix:/path" or "tcp:a.b.c.d:port" */
	unsigned char sa[128];
	unsigned salen;
};

/* Parse "unix:/path" or "tcp:HOST:PORT" (HOST numeric IPv4). */
int b_addr_parse(const char *s, struct b_addr *a);
/* Listen on a (port 0 / empty unix path: pick one, a is updated). */
int b_listen(struct b_addr *a);
/* Connect to a, TCP_NODELAY on TCP; returns fd or -errno. */
int b_connect(const struct b_addr *a);
int b_write_all(int fd, const void *buf, size_t n);
int b_read_all(int fd, void *buf, size_t n);

/* The control protocol between the benchmark's two sides. */
#define CTL_MAGIC 0x48434e42u		/* "BNCH" */
enum ctl_kind { CTL_RAW = 1, CTL_LIB = 2, CTL_QUIT = 3 };

struct ctl_req {
	uint32_t magic, kind;
	uint64_t image_bytes;
	uint32_t flags;			/* CTL_F_* */
	uint32_t pad;
};

struct ctl_done {
	uint32_t magic;
	int32_t rc;
	uint64_t cpu_ns;		/* server CPU during the session */
	uint64_t mem_overhead;		/* server VmHWM - RSS before session */
	uint64_t served;		/* requests served (raw) */
	char err[200];
	char threads[256];		/* b_task_cpu_summary() of the source */
};

#define CTL_F_SOURCE_FILE 1u
#define CTL_F_SRC_NODELAY 2u	/* TCP_NODELAY on the server's data socket */
#define CTL_F_NO_URGENT   4u	/* source: PCOPY_SOURCE_NO_URGENT */
#define CTL_F_NO_BG       8u	/* source: PCOPY_SOURCE_NO_BACKGROUND */
#define CTL_F_NO_PACING  16u	/* source: PCOPY_SOURCE_NO_PACING */

/* Serve sessions on listening socket lfd until QUIT or EOF. Returns exit
 * status for the process. */
int b_serve(int lfd, const struct b_opts *o);
/* Client: open a session of `kind` on the server (control connection, then
 * the data connection, once the server has its image ready); in between,
 * touch warm_bytes of fresh memory (b_warm_memory; 0: none). */
int ctl_open(const struct b_addr *srv, enum ctl_kind kind, const struct b_opts *o,
	     uint32_t flags, size_t warm_bytes, int *ctl_fd, int *data_fd);
/* Client: after the data connection is done with, read the server's figures. */
int ctl_finish(int ctl_fd, struct ctl_done *done);
/* Client: tell the server to exit. */
void ctl_quit(const struct b_addr *srv);

/* ---- toucher threads (touch.c) ---- */

struct b_touch_plan {
	uint8_t *base;			/* the image's destination memory */
	uint64_t npages;
	uint32_t *order;		/* page indexes, touched in this order */
	uint64_t norder;
	unsigned threads;
};

struct b_touch_result {
	uint64_t t_first_ns;		/* first touch returned (absolute) */
	uint64_t t_last_ns;		/* last toucher finished (absolute) */
	uint64_t touched, bad;
	uint64_t first_bad_page;
	uint64_t cpu_ns;		/* CPU time of the toucher threads */
	struct b_lat lat;		/* touches that blocked (>= threshold) */
};

/* Threshold below which a touch did not fault (a uffd fault sleeps). */
#define B_FAULT_THRESHOLD_NS 1000u

/* Build the order of pages to touch; returns 0 or -ENOMEM. */
int b_plan_build(struct b_touch_plan *p, enum b_order o, const struct b_opts *opt);
void b_plan_free(struct b_touch_plan *p);

struct b_touchers;
/* Start plan->threads threads that touch (and verify) the plan's pages. */
int b_touch_start(struct b_touchers **tp, const struct b_touch_plan *plan);
/* Join them and collect the results (res->lat owned by the caller). */
void b_touch_join(struct b_touchers *t, struct b_touch_result *res);

/* ---- results ---- */

struct b_result {
	char run[32];			/* floor_memcpy, raw_rtt, naive, lib, ... */
	char order[12];
	unsigned touchers;
	int rc;
	double total_s;			/* whole run / restore */
	double first_touch_s;		/* -1: no toucher */
	double start_ms;		/* lib: pcopy_dest_start (handshake) */
	double hot_s;			/* hot set touched (hot order), else -1 */
	double gbps;			/* image bytes / total_s, GB/s (1e9) */
	uint64_t faults;		/* latency samples */
	double p50_us, p99_us, p999_us, max_us;
	double src_cpu_s, dst_cpu_s, dst_lib_cpu_s;
	double mem_overhead_mib, src_mem_overhead_mib;
	uint64_t bad_pages;
	/* library internal stats */
	uint64_t lib_faults, lib_requests, lib_dups;
	uint64_t wire_bytes;		/* bytes the destination read */
	double lib_p99_us;
	double cdf_us[22];		/* latency at b_cdf_q[] */
	bool has_cdf;
	bool incomplete;		/* lib_nobg hot: never completes by design */
	char note[160];
	char dst_threads[256], src_threads[256];
};

extern const double b_cdf_q[22];

void b_result_fill_lat(struct b_result *r, struct b_lat *lat);

/* ---- runs (floor.c, rawrtt.c, naive.c, librun.c) ---- */

/* image: the pattern in local memory. Appends the floor results. */
int run_floor(const struct b_opts *o, const uint8_t *image,
	      struct b_result *res, unsigned *nres);
int run_naive(const struct b_opts *o, int file_fd, enum b_order ord,
	      struct b_result *r);
int run_raw(const struct b_opts *o, const struct b_addr *srv, struct b_result *r);
int run_lib(const struct b_opts *o, const struct b_addr *srv, enum b_order ord,
	    enum b_lib_variant v, struct b_result *r);

/* server sides */
int serve_raw(int fd, const uint8_t *image, size_t len, uint64_t *served);
/* lfd: the listening socket, kept accepting during the session (the
 * destination's urgent connection joins there); flags: CTL_F_*. */
int serve_lib(int lfd, int fd, const uint8_t *image, size_t len, int file_fd,
	      uint32_t flags, struct ctl_done *done);

/* ---- small userfaultfd helpers (buffd.c) ---- */

/* Open a userfaultfd (syscall, else /dev/userfaultfd), UFFDIO_API done. */
int bu_open(bool nonblock);
int bu_register(int uffd, void *addr, size_t len);
/* UFFDIO_COPY len bytes, retrying partial copies; -EEXIST counts as done. */
int bu_copy(int uffd, void *dst, const void *src, size_t len, bool dontwake);
int bu_zeropage(int uffd, void *dst, size_t len);

/* ---- output (report.c) ---- */

void report_json(FILE *f, const struct b_opts *o, const struct b_result *r,
		 const struct b_result *all, unsigned n);
void report_table(FILE *f, const struct b_opts *o, const struct b_result *all,
		  unsigned n);
void report_targets(FILE *f, const struct b_opts *o, const struct b_result *all,
		    unsigned n);

#endif
