/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: a page-fault handler for Firecracker-style snapshot
 * restores. It listens on a Unix socket; a VMM connects and sends a JSON
 * region table with its userfaultfd; the guest memory is then restored
 * lazily, from a local memory file or a remote postcopy-serve.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/pidfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cli.h"
#include "fc_conn.h"
#include "fc_json.h"
#include "fc_restore.h"
#include "postcopy.h"

#define FC_NAME "postcopy-fc-handler"
#define FC_CONNS_MAX 64		/* VMMs connected at once */
#define FC_RESTORES_PER_CONN 8	/* restores running per connection */
#define FC_HELD_MAX 16		/* userfaultfds held per connection */

struct handler;

/* One VMM connection and the restores it started. */
struct fc_conn {
	struct handler *h;
	unsigned id;
	int sock;		/* -1 once the stream ended or broke */
	pid_t pid;		/* SO_PEERCRED; 0 if unknown */
	int pidfd;		/* readable when the VMM exits; -1 if unknown */
	bool peer_gone;		/* ... and it did */
	struct fc_reader rd;
	unsigned msgs;		/* handshake messages received */
	uint64_t deadline_ns;	/* for the first message */
	struct fc_restore *rs[FC_RESTORES_PER_CONN];
	int rs_uffd[FC_RESTORES_PER_CONN];	/* the VMM's uffd, held while running */
	/* Userfaultfds of handshakes that were refused or restores that
	 * failed: kept open so the VMM's threads that touch unrestored memory
	 * stay blocked instead of reading zeros, until the VMM exits. */
	int held[FC_HELD_MAX];
	unsigned nheld;
};

struct handler {
	struct fc_source_cfg src;
	struct tool_addr listen;
	int lfd, sfd, efd;
	struct fc_conn *conns[FC_CONNS_MAX];
	unsigned nconns;
	unsigned next_conn, next_restore;
	unsigned complete, failed;
	int handshake_timeout_ms;
	bool once, kill_on_failure, quiet;
	bool stop;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s -l PATH (-m FILE | -c ADDR) [options]\n"
		"Page-fault handler for Firecracker snapshot restores: receives the guest\n"
		"memory layout and the userfaultfd on a Unix socket and restores the memory\n"
		"lazily (faulted pages first, the rest in the background).\n\n"
		"  -l, --listen PATH          Unix socket to listen on (unix:PATH accepted)\n"
		"  -m, --mem-file FILE        serve pages from this snapshot memory file\n"
		"  -c, --connect ADDR         fetch pages from a postcopy-serve at ADDR; it must\n"
		"                             serve regions r0, r1, ... with the VMM's sizes\n"
		"      --max-rate BYTES       cap the memory file source at BYTES per second (K/M/G)\n"
		"      --no-background        memory file: send requested pages only (the restore\n"
		"                             completes only once every page was touched or removed)\n"
		"      --handshake-timeout MS drop a connection that sends no handshake in MS\n"
		"                             milliseconds (default 10000; 0: wait forever)\n"
		"      --once                 exit after the first restore completes or fails\n"
		"      --kill-on-failure      SIGKILL the VMM when its restore fails or is refused,\n"
		"                             or when the handler stops before it completes\n"
		"  -v, --verbose              more library messages (twice: debug)\n"
		"  -q, --quiet                no start-up line\n"
		"  -V, --version              print the library version\n", argv0);
}

static int parse_args(int argc, char **argv, struct handler *h, const char **mem,
		      const char **remote, const char **listen)
{
	enum { O_RATE = 256, O_NOBG, O_HTO, O_ONCE, O_KILL };
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "mem-file", required_argument, NULL, 'm' },
		{ "connect", required_argument, NULL, 'c' },
		{ "max-rate", required_argument, NULL, O_RATE },
		{ "no-background", no_argument, NULL, O_NOBG },
		{ "handshake-timeout", required_argument, NULL, O_HTO },
		{ "once", no_argument, NULL, O_ONCE },
		{ "kill-on-failure", no_argument, NULL, O_KILL },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	unsigned long long v;
	int c;

	while ((c = getopt_long(argc, argv, "l:m:c:vqVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'l': *listen = optarg; break;
		case 'm': *mem = optarg; break;
		case 'c': *remote = optarg; break;
		case O_RATE:
			if (tool_parse_size(optarg, &v) < 0) {
				fprintf(stderr, FC_NAME ": bad --max-rate '%s'\n", optarg);
				return -1;
			}
			h->src.max_rate = v;
			break;
		case O_NOBG: h->src.no_background = true; break;
		case O_HTO:
			if (tool_parse_size(optarg, &v) < 0 || v > 86400000) {
				fprintf(stderr, FC_NAME ": bad --handshake-timeout '%s'\n", optarg);
				return -1;
			}
			h->handshake_timeout_ms = (int)v;
			break;
		case O_ONCE: h->once = true; break;
		case O_KILL: h->kill_on_failure = true; break;
		case 'v': h->src.verbose++; break;
		case 'q': h->quiet = true; break;
		case 'V': printf("libpostcopy %s\n", pcopy_version()); exit(0);
		case 'h': usage(stdout, argv[0]); exit(0);
		default: usage(stderr, argv[0]); return -1;
		}
	}
	if (!*listen || !*mem == !*remote || optind != argc) {
		if (*mem && *remote)
			fprintf(stderr, FC_NAME ": --mem-file and --connect exclude each other\n");
		usage(stderr, argv[0]);
		return -1;
	}
	if (*remote && (h->src.max_rate || h->src.no_background)) {
		fprintf(stderr, FC_NAME ": --max-rate and --no-background apply to --mem-file only\n");
		return -1;
	}
	return 0;
}

/* ---- connections ---- */

static void conn_hold(struct fc_conn *c, int fd)
{
	if (fd < 0)
		return;
	if (c->nheld == FC_HELD_MAX) {
		fprintf(stderr, FC_NAME ": connection %u: more than %d refused userfaultfds: closing one (its unrestored pages read as zeros)\n",
			c->id, FC_HELD_MAX);
		close(fd);
		return;
	}
	c->held[c->nheld++] = fd;
}

/* The VMM's restore cannot go on: stop it from running on memory that was
 * never restored, if asked to. */
static void conn_kill_peer(struct fc_conn *c, const char *why)
{
	int rc = -ESRCH;

	if (!c->h->kill_on_failure)
		return;
	if (c->pidfd >= 0)
		rc = pidfd_send_signal(c->pidfd, SIGKILL, NULL, 0) < 0 ? -errno : 0;
	else if (c->pid > 0)
		rc = kill(c->pid, SIGKILL) < 0 ? -errno : 0;
	if (rc == 0)
		fprintf(stderr, FC_NAME ": connection %u: killed the VMM (pid %d): %s\n",
			c->id, (int)c->pid, why);
	else
		fprintf(stderr, FC_NAME ": connection %u: cannot kill the VMM (pid %d): %s\n",
			c->id, (int)c->pid, strerror(-rc));
}

static void conn_close_sock(struct fc_conn *c)
{
	int fd;

	if (c->sock < 0)
		return;
	close(c->sock);
	c->sock = -1;
	/* Descriptors whose payload never completed: still the VMM's. */
	while ((fd = fc_reader_take_fd(&c->rd)) >= 0)
		conn_hold(c, fd);
}

static bool conn_running(const struct fc_conn *c)
{
	for (unsigned i = 0; i < FC_RESTORES_PER_CONN; i++)
		if (c->rs[i])
			return true;
	return false;
}

static void refuse(struct fc_conn *c, unsigned msg, int fd, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void refuse(struct fc_conn *c, unsigned msg, int fd, const char *fmt, ...)
{
	char why[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	fprintf(stderr, FC_NAME ": connection %u (pid %d): handshake %u refused: %s\n",
		c->id, (int)c->pid, msg, why);
	conn_hold(c, fd);
	if (fd >= 0)
		conn_kill_peer(c, "its handshake was refused");
}

/* One complete handshake message: start a restore for it. Main loop. */
static void on_msg(void *opaque, struct json_object *payload, int fd)
{
	struct fc_conn *c = opaque;
	struct handler *h = c->h;
	struct fc_region rg[FC_REGIONS_MAX];
	struct fc_restore *r;
	char err[600], what[160];
	unsigned msg = ++c->msgs, slot, i;
	uint64_t total = 0;
	int n, rc;

	n = fc_json_regions(payload, rg, FC_REGIONS_MAX, err, sizeof(err));
	json_object_put(payload);
	if (fd < 0) {
		refuse(c, msg, -1, "no file descriptor came with it (the userfaultfd must be sent by SCM_RIGHTS in the same message)");
		return;
	}
	if (!fc_fd_is_uffd(fd, what, sizeof(what))) {
		/* Not a userfaultfd: nothing depends on it staying open. */
		refuse(c, msg, -1, "the descriptor sent is not a userfaultfd (it is %s)", what);
		close(fd);
		return;
	}
	if (n < 0) {
		refuse(c, msg, fd, "%s", err);
		return;
	}
	for (slot = 0; slot < FC_RESTORES_PER_CONN && c->rs[slot]; slot++)
		;
	if (slot == FC_RESTORES_PER_CONN) {
		refuse(c, msg, fd, "%d restores already running on this connection",
		       FC_RESTORES_PER_CONN);
		return;
	}
	for (i = 0; i < (unsigned)n; i++)
		total += rg[i].size;
	h->next_restore++;
	fprintf(stderr, FC_NAME ": restore %u (pid %d, connection %u, handshake %u): %d region(s), %.1f MiB, %s pages\n",
		h->next_restore, (int)c->pid, c->id, msg, n, (double)total / 1048576.0,
		rg[0].page_size == FC_PAGE_2M ? "2 MiB" : "4 KiB");
	rc = fc_restore_start(&r, h->next_restore, c->pid, rg, (unsigned)n, fd, &h->src,
			      h->efd, err, sizeof(err));
	if (rc < 0) {
		h->failed++;
		fprintf(stderr, FC_NAME ": restore %u (pid %d): cannot start: %s\n",
			h->next_restore, (int)c->pid, err);
		conn_hold(c, fd);
		conn_kill_peer(c, "its restore could not start");
		if (h->once)
			h->stop = true;
		return;
	}
	c->rs[slot] = r;
	c->rs_uffd[slot] = fd;
}

/* Collect finished restores. Main loop. */
static void conn_reap(struct fc_conn *c)
{
	struct handler *h = c->h;

	for (unsigned i = 0; i < FC_RESTORES_PER_CONN; i++) {
		int rc;

		if (!c->rs[i] || (rc = fc_restore_poll(c->rs[i])) == -EINPROGRESS)
			continue;
		fc_restore_summary(c->rs[i], stderr);
		fc_restore_destroy(c->rs[i]);
		c->rs[i] = NULL;
		if (rc == 0) {
			h->complete++;
			close(c->rs_uffd[i]);
		} else {
			h->failed++;
			conn_hold(c, c->rs_uffd[i]);
			conn_kill_peer(c, "its restore failed");
		}
		c->rs_uffd[i] = -1;
		if (h->once)
			h->stop = true;
	}
}

/* End every restore of c (the VMM is gone, or we are stopping); free it. */
static void conn_free(struct fc_conn *c, bool stopping)
{
	struct handler *h = c->h;

	conn_reap(c);
	for (unsigned i = 0; i < FC_RESTORES_PER_CONN; i++) {
		if (!c->rs[i])
			continue;
		if (c->peer_gone)
			fprintf(stderr, FC_NAME ": connection %u: the VMM (pid %d) exited during a restore\n",
				c->id, (int)c->pid);
		fc_restore_summary(c->rs[i], stderr);
		h->failed++;
		if (stopping)
			conn_kill_peer(c, "the handler stopped before its restore completed");
		fc_restore_destroy(c->rs[i]);
		close(c->rs_uffd[i]);
	}
	conn_close_sock(c);	/* moves unpaired descriptors to held[] */
	if (stopping && c->nheld && !c->peer_gone)
		fprintf(stderr, FC_NAME ": connection %u: closing %u userfaultfd(s) of refused or failed restores\n",
			c->id, c->nheld);
	for (unsigned i = 0; i < c->nheld; i++)
		close(c->held[i]);
	fc_reader_fini(&c->rd);
	if (c->pidfd >= 0)
		close(c->pidfd);
	free(c);
}

static void accept_one(struct handler *h)
{
	struct ucred cred = { 0 };
	socklen_t clen = sizeof(cred);
	struct fc_conn *c;
	int fd;

	fd = accept4(h->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			fprintf(stderr, FC_NAME ": accept: %s\n", strerror(errno));
		return;
	}
	if (h->nconns == FC_CONNS_MAX) {
		fprintf(stderr, FC_NAME ": %d connections already: refusing another\n",
			FC_CONNS_MAX);
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c || fc_reader_init(&c->rd) < 0) {
		fprintf(stderr, FC_NAME ": out of memory: refusing a connection\n");
		free(c);
		close(fd);
		return;
	}
	c->h = h;
	c->id = ++h->next_conn;
	c->sock = fd;
	c->pidfd = -1;
	for (unsigned i = 0; i < FC_RESTORES_PER_CONN; i++)
		c->rs_uffd[i] = -1;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && cred.pid > 0) {
		c->pid = cred.pid;
		/* Taken while the VMM is connected, so the pid is its own. */
		c->pidfd = pidfd_open(cred.pid, 0);
	}
	c->deadline_ns = h->handshake_timeout_ms
				 ? now_ns() + (uint64_t)h->handshake_timeout_ms * 1000000ull
				 : 0;
	h->conns[h->nconns++] = c;
	if (h->src.verbose)
		fprintf(stderr, FC_NAME ": connection %u from pid %d\n", c->id, (int)c->pid);
}

static void conn_read(struct fc_conn *c)
{
	char err[600];
	int rc;

	while (c->sock >= 0) {
		rc = fc_reader_recv(&c->rd, c->sock, on_msg, c, err, sizeof(err));
		if (rc > 0)
			continue;
		if (rc == -EAGAIN)
			return;
		if (rc == 0) {
			if (c->h->src.verbose)
				fprintf(stderr, FC_NAME ": connection %u: the VMM closed the socket\n",
					c->id);
		} else {
			fprintf(stderr, FC_NAME ": connection %u (pid %d): %s; ignoring the rest of this stream\n",
				c->id, (int)c->pid, err);
		}
		conn_close_sock(c);
	}
}

/* Can c go? Its socket is closed and nothing of it runs; refused
 * userfaultfds wait for the VMM to exit (unless we cannot tell when). */
static bool conn_done(const struct fc_conn *c, bool peer_gone)
{
	if (c->sock >= 0 || conn_running(c))
		return peer_gone;
	return peer_gone || c->nheld == 0 || c->pidfd < 0;
}

/* ---- main loop ---- */

static int setup(struct handler *h, const char *mem, const char *remote,
		 const char *listen, struct tool_addr *raddr)
{
	char err[300];
	sigset_t set;
	off_t end;

	if (tool_addr_parse(listen, &h->listen, err, sizeof(err)) < 0 || !h->listen.is_unix) {
		fprintf(stderr, FC_NAME ": --listen: %s\n",
			h->listen.is_unix ? err : "a Unix socket path is needed (the userfaultfd travels by SCM_RIGHTS)");
		return -1;
	}
	if (mem) {
		h->src.mem_fd = open(mem, O_RDONLY | O_CLOEXEC);
		if (h->src.mem_fd < 0 ||
		    (end = lseek(h->src.mem_fd, 0, SEEK_END)) < 0) {
			fprintf(stderr, FC_NAME ": %s: %s\n", mem, strerror(errno));
			return -1;
		}
		h->src.mem_path = mem;
		h->src.mem_size = (uint64_t)end;
	} else {
		if (tool_addr_parse(remote, raddr, err, sizeof(err)) < 0) {
			fprintf(stderr, FC_NAME ": --connect: %s\n", err);
			return -1;
		}
		h->src.remote = raddr;
	}
	/* Signals arrive through signalfd; every thread (the library's too,
	 * which block everything anyway) inherits this mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	h->sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	h->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->sfd < 0 || h->efd < 0) {
		fprintf(stderr, FC_NAME ": signalfd/eventfd: %s\n", strerror(errno));
		return -1;
	}
	h->lfd = tool_listen(&h->listen);
	if (h->lfd < 0) {
		fprintf(stderr, FC_NAME ": listen on %s: %s\n", listen, strerror(-h->lfd));
		return -1;
	}
	fcntl(h->lfd, F_SETFL, fcntl(h->lfd, F_GETFL) | O_NONBLOCK);
	if (!h->quiet) {
		if (mem)
			fprintf(stderr, FC_NAME ": listening on %s; pages from %s (%.1f MiB)\n",
				listen, mem, (double)h->src.mem_size / 1048576.0);
		else
			fprintf(stderr, FC_NAME ": listening on %s; pages from postcopy-serve at %s\n",
				listen, remote);
	}
	return 0;
}

static void on_signal(struct handler *h)
{
	struct signalfd_siginfo si;

	while (read(h->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (!h->quiet)
			fprintf(stderr, FC_NAME ": %s: stopping\n", strsignal((int)si.ssi_signo));
		h->stop = true;
	}
}

static void loop(struct handler *h)
{
	struct pollfd p[3 + 2 * FC_CONNS_MAX];
	struct fc_conn *who[3 + 2 * FC_CONNS_MAX];

	while (!h->stop) {
		uint64_t now = now_ns(), next = 0, v;
		unsigned np = 3, i;
		int timeout = -1, rc;

		p[0] = (struct pollfd){ .fd = h->sfd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = h->lfd, .events = POLLIN };
		p[2] = (struct pollfd){ .fd = h->efd, .events = POLLIN };
		for (i = 0; i < h->nconns; i++) {
			struct fc_conn *c = h->conns[i];

			if (c->sock >= 0) {
				who[np] = c;
				p[np++] = (struct pollfd){ .fd = c->sock, .events = POLLIN };
				if (c->msgs == 0 && c->deadline_ns &&
				    (next == 0 || c->deadline_ns < next))
					next = c->deadline_ns;
			}
			if (c->pidfd >= 0 && !c->peer_gone) {
				who[np] = c;
				p[np++] = (struct pollfd){ .fd = c->pidfd, .events = POLLIN };
			}
		}
		if (next)
			timeout = next <= now ? 0 : (int)((next - now) / 1000000 + 1);
		rc = poll(p, np, timeout);
		if (rc < 0 && errno != EINTR) {
			fprintf(stderr, FC_NAME ": poll: %s\n", strerror(errno));
			break;
		}
		if (rc > 0 && p[0].revents)
			on_signal(h);
		if (rc > 0 && p[2].revents && read(h->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			fprintf(stderr, FC_NAME ": eventfd: %s\n", strerror(errno));
		for (i = 3; rc > 0 && i < np; i++) {
			if (!p[i].revents)
				continue;
			if (p[i].fd == who[i]->sock)
				conn_read(who[i]);
			else if (p[i].fd == who[i]->pidfd)
				who[i]->peer_gone = true;
		}
		now = now_ns();
		for (i = 0; i < h->nconns;) {
			struct fc_conn *c = h->conns[i];
			bool gone = c->peer_gone;

			if (c->sock >= 0 && c->msgs == 0 && c->deadline_ns && now >= c->deadline_ns) {
				fprintf(stderr, FC_NAME ": connection %u (pid %d): no handshake within %d ms: closed\n",
					c->id, (int)c->pid, h->handshake_timeout_ms);
				conn_close_sock(c);
			}
			conn_reap(c);
			if (conn_done(c, gone)) {
				if (gone && h->src.verbose)
					fprintf(stderr, FC_NAME ": connection %u: the VMM (pid %d) exited\n",
						c->id, (int)c->pid);
				conn_free(c, false);
				h->conns[i] = h->conns[--h->nconns];
				continue;
			}
			i++;
		}
		if (rc > 0 && p[1].revents && !h->stop)
			accept_one(h);
	}
}

int main(int argc, char **argv)
{
	struct handler h = { .lfd = -1, .sfd = -1, .efd = -1, .handshake_timeout_ms = 10000 };
	const char *mem = NULL, *remote = NULL, *listen = NULL;
	struct tool_addr raddr;
	int status;

	h.src.mem_fd = -1;
	h.src.connect_timeout_ms = 5000;
	if (parse_args(argc, argv, &h, &mem, &remote, &listen) < 0)
		return 2;
	if (setup(&h, mem, remote, listen, &raddr) < 0)
		return 1;
	loop(&h);
	close(h.lfd);
	unlink(((struct sockaddr_un *)&h.listen.ss)->sun_path);
	while (h.nconns)
		conn_free(h.conns[--h.nconns], true);
	status = h.failed ? 1 : 0;
	if (!h.quiet)
		fprintf(stderr, FC_NAME ": exiting: %u restore(s) complete, %u failed or incomplete\n",
			h.complete, h.failed);
	close(h.sfd);
	close(h.efd);
	if (h.src.mem_fd >= 0)
		close(h.src.mem_fd);
	return status;
}
