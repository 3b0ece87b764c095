/* SPDX-License-Identifier: MIT */
/*
 * The fault-injection proxy (test/proxy.h): one thread polls every
 * connection; each direction reads from its sender, passes the bytes through
 * a frame tracker and the corruption rules into an output buffer, and writes
 * that buffer to its receiver, pausing at the positions where rules fire.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "proxy_int.h"

struct conn {
	unsigned index;
	int fd[2];		/* a side, b side */
	bool open, failed;
	int error;
	struct proxy_pipe p[2];
};

struct proxy {
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* a connection closed */
	pthread_t thread;
	bool started, stop;
	int wake;		/* eventfd: new connection or stop */
	uint64_t seed;
	FILE *log;
	struct proxy_rule rules[PROXY_RULES_MAX];
	unsigned nrules;
	struct conn *conns[PROXY_CONNS_MAX];
	unsigned nconns;
	int lfd;
	struct sockaddr_storage up;
	socklen_t uplen;
	uint8_t scratch[READ_CHUNK];
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static const char *dir_name(enum proxy_dir d)
{
	return d == PROXY_A2B ? "a2b" : "b2a";
}

static void conn_close(struct proxy *px, struct conn *c, int err)
{
	unsigned i;

	if (!c->open)
		return;
	for (i = 0; i < 2; i++) {
		close(c->fd[i]);
		c->fd[i] = -1;
		pipe_free(&c->p[i]);
	}
	c->open = false;
	if (err) {
		c->failed = true;
		c->error = err;
		fprintf(px->log, "proxy: conn %u failed: %s\n", c->index,
			strerror(-err));
	}
	pthread_cond_broadcast(&px->cond);
}

/*
 * Fire the rules sitting at the current input position, and finish a cut,
 * shutdown or EOF once everything before it has been written. Returns
 * false if the connection was closed.
 */
static bool pipe_progress(struct proxy *px, struct conn *c, struct proxy_pipe *p,
			  uint64_t now)
{
	unsigned k;

	if (p->done)
		return true;
	if (!p->dead && p->pending == PEND_NONE) {
		for (k = 0; k < p->nrules && p->pending == PEND_NONE; k++) {
			struct prule *r = &p->rules[k];

			if (r->done || r->at != p->in_pos)
				continue;
			switch (r->r.action) {
			case PROXY_STALL:
				r->done = true;
				p->stall_until = now + r->r.arg * 1000000ull;
				p->st.stalled = true;
				break;
			case PROXY_CUT:
			case PROXY_CUT_RANDOM:
				r->done = true;
				p->pending = PEND_CUT;
				break;
			case PROXY_SHUTDOWN:
				r->done = true;
				p->pending = PEND_SHUT;
				break;
			default:
				break;
			}
		}
		if (p->pending == PEND_NONE && p->in_pos >= p->limit)
			p->pending = PEND_CUT;
		if (p->pending == PEND_NONE && p->in_eof)
			p->pending = PEND_EOF;
		/* Bytes before the hold point must all arrive: a header the
		 * tracker is holding goes out now. */
		if ((p->pending != PEND_NONE || now < p->stall_until) &&
		    pipe_flush_header(p)) {
			conn_close(px, c, -ENOMEM);
			return false;
		}
	}
	if (p->dead && p->in_eof)
		p->done = true;
	if (p->pending == PEND_NONE || p->off != p->len)
		return true;
	switch (p->pending) {
	case PEND_CUT:
		p->st.cut = true;
		p->st.cut_at = p->in_pos < p->limit ? p->in_pos : p->limit;
		fprintf(px->log, "proxy: conn %u %s: cut at byte %" PRIu64
			" (seed %" PRIu64 ")\n", c->index, dir_name(p->dir),
			p->st.cut_at, px->seed);
		conn_close(px, c, 0);
		return false;
	case PEND_SHUT:
		shutdown(p->out, SHUT_WR);
		p->st.shut = true;
		p->dead = true;
		p->done = p->in_eof;
		break;
	case PEND_EOF:
		shutdown(p->out, SHUT_WR);
		p->done = true;
		break;
	default:
		break;
	}
	p->pending = PEND_NONE;
	return true;
}

/* ---- connections ---- */

static void set_nodelay(int fd)
{
	int one = 1;

	/* fails harmlessly on Unix sockets */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* Called with the lock held. Takes ownership of both fds. */
static int conn_add(struct proxy *px, int fd_a, int fd_b)
{
	struct conn *c;
	unsigned i, d;
	uint64_t rng;
	int ret;

	if (px->nconns >= PROXY_CONNS_MAX) {
		ret = -ENOSPC;
		goto fail;
	}
	if ((ret = set_nonblock(fd_a)) || (ret = set_nonblock(fd_b)))
		goto fail;
	c = calloc(1, sizeof(*c));
	if (!c) {
		ret = -ENOMEM;
		goto fail;
	}
	set_nodelay(fd_a);
	set_nodelay(fd_b);
	c->index = px->nconns + 1;
	c->fd[0] = fd_a;
	c->fd[1] = fd_b;
	c->open = true;
	for (d = 0; d < 2; d++) {
		c->p[d].dir = (enum proxy_dir)d;
		c->p[d].in = c->fd[d];
		c->p[d].out = c->fd[1 - d];
		c->p[d].limit = UINT64_MAX;
	}
	/* Each connection draws its random positions from its own stream of
	 * the seed, so connection k cuts at the same place on every replay. */
	rng = px->seed ^ ((uint64_t)c->index * 0xd1b54a32d192ed03ull);
	for (i = 0; i < px->nrules; i++) {
		const struct proxy_rule *r = &px->rules[i];
		struct proxy_pipe *p = &c->p[r->dir];
		struct prule *pr;

		if (r->conn && r->conn != c->index)
			continue;
		pr = &p->rules[p->nrules++];
		pr->r = *r;
		pr->at = r->at;
		if (r->action == PROXY_CUT_RANDOM) {
			pr->at = r->at + splitmix64(&rng) % (r->arg - r->at);
			fprintf(px->log, "proxy: conn %u %s: random cut at byte %"
				PRIu64 " (seed %" PRIu64 ")\n", c->index,
				dir_name(r->dir), pr->at, px->seed);
		}
		if (r->action == PROXY_DUP_FRAME ||
		    r->action == PROXY_DROP_FRAME ||
		    r->action == PROXY_CUT_FRAME)
			p->frame_rules = true;
		if (r->action == PROXY_SPLIT) {
			p->split = true;
			p->split_from = r->at;
		}
		if (r->action == PROXY_THROTTLE)
			p->bps = r->arg;
	}
	px->conns[px->nconns++] = c;
	return (int)c->index;
fail:
	close(fd_a);
	close(fd_b);
	return ret;
}

static void do_accept(struct proxy *px)
{
	int fd, up;

	fd = accept4(px->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	up = socket(px->up.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (up < 0 || connect(up, (struct sockaddr *)&px->up, px->uplen) < 0) {
		fprintf(px->log, "proxy: connecting upstream: %s\n",
			strerror(errno));
		if (up >= 0)
			close(up);
		close(fd);
		return;
	}
	conn_add(px, fd, up);
}

/* ---- the thread ---- */

#define POLL_MAX (2 + 2 * PROXY_CONNS_MAX)

static void *proxy_main(void *arg)
{
	struct proxy *px = arg;
	struct pollfd pfd[POLL_MAX];
	struct conn *pc[POLL_MAX];
	uint64_t now, wait_ns, v;
	unsigned i, d, n, npolled;
	struct timespec ts;
	int ret;

	pthread_mutex_lock(&px->lock);
	while (!px->stop) {
		now = now_ns();
		for (i = 0; i < px->nconns; i++) {
			struct conn *c = px->conns[i];

			for (d = 0; d < 2 && c->open; d++)
				if (!pipe_progress(px, c, &c->p[d], now))
					break;
			if (c->open && c->p[0].done && c->p[1].done)
				conn_close(px, c, 0);
		}

		/* Build the poll set: an fd is in it only for what its
		 * directions can do now, so POLLHUP cannot make us spin. */
		wait_ns = UINT64_MAX;
		pfd[0] = (struct pollfd){ .fd = px->wake, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = px->lfd, .events = POLLIN };
		n = 2;
		for (i = 0; i < px->nconns; i++) {
			struct conn *c = px->conns[i];

			if (!c->open)
				continue;
			for (d = 0; d < 2; d++) {
				struct proxy_pipe *p = &c->p[d];
				struct proxy_pipe *q = &c->p[1 - d];	/* writes to fd[d] */
				short ev = 0;

				if (pipe_want_input(p, now))
					ev |= POLLIN;
				else if (!p->done && now < p->stall_until &&
					 p->stall_until - now < wait_ns)
					wait_ns = p->stall_until - now;
				if (pipe_want_output(q, now, &wait_ns))
					ev |= POLLOUT;
				pfd[n] = (struct pollfd){
					.fd = ev ? c->fd[d] : -1, .events = ev };
				pc[n++] = c;
			}
		}
		npolled = n;
		pthread_mutex_unlock(&px->lock);
		if (wait_ns != UINT64_MAX) {
			ts.tv_sec = (time_t)(wait_ns / NS);
			ts.tv_nsec = (long)(wait_ns % NS);
		}
		ret = ppoll(pfd, npolled, wait_ns == UINT64_MAX ? NULL : &ts, NULL);
		pthread_mutex_lock(&px->lock);
		if (ret < 0)
			continue;	/* EINTR */
		if (pfd[0].revents)
			(void)!read(px->wake, &v, sizeof(v));
		if (px->lfd >= 0 && pfd[1].revents)
			do_accept(px);
		now = now_ns();
		for (i = 2; i < npolled; i++) {
			struct conn *c = pc[i];
			unsigned fdi = (i - 2) % 2;
			short re = pfd[i].revents;

			if (!re || !c->open)
				continue;
			/* fd[fdi] is the input of pipe fdi and the output of
			 * pipe 1 - fdi */
			if ((pfd[i].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR)))
				ret = pipe_read(&c->p[fdi], px->scratch, sizeof(px->scratch));
			else
				ret = 0;
			if (!ret && (pfd[i].events & POLLOUT) &&
			    (re & (POLLOUT | POLLHUP | POLLERR)))
				ret = pipe_write(&c->p[1 - fdi], now);
			if (ret)
				conn_close(px, c, ret);
		}
	}
	pthread_mutex_unlock(&px->lock);
	return NULL;
}

/* ---- API ---- */

/* See proxy.h. Returns 0 or -errno. Caller's thread. */
int proxy_create(struct proxy **pp, uint64_t seed, FILE *log)
{
	const char *env = getenv("PCOPY_PROXY_SEED");
	pthread_condattr_t ca;
	struct proxy *px;

	*pp = NULL;
	px = calloc(1, sizeof(*px));
	if (!px)
		return -ENOMEM;
	px->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (px->wake < 0) {
		free(px);
		return -errno;
	}
	pthread_mutex_init(&px->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&px->cond, &ca);
	pthread_condattr_destroy(&ca);
	px->lfd = -1;
	px->log = log ? log : stderr;
	if (env && *env)
		seed = strtoull(env, NULL, 0);
	while (!seed && getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		;
	if (!seed)
		seed = now_ns();
	px->seed = seed;
	fprintf(px->log, "proxy: seed %" PRIu64 " (replay with "
		"PCOPY_PROXY_SEED=%" PRIu64 ")\n", seed, seed);
	*pp = px;
	return 0;
}

/* The seed in use. Any thread. */
uint64_t proxy_seed(const struct proxy *p)
{
	return p->seed;
}

/* Returns 0, -EINVAL or -ENOSPC. Any thread; affects later connections. */
int proxy_add_rule(struct proxy *px, const struct proxy_rule *r)
{
	int ret = proxy_rule_check(r);

	if (ret)
		return ret;
	pthread_mutex_lock(&px->lock);
	if (px->nrules >= PROXY_RULES_MAX)
		ret = -ENOSPC;
	else
		px->rules[px->nrules++] = *r;
	pthread_mutex_unlock(&px->lock);
	return ret;
}

/* Returns 0, -EALREADY or -errno. Caller's thread, once. */
int proxy_start(struct proxy *px)
{
	int ret;

	if (px->started)
		return -EALREADY;
	ret = -pthread_create(&px->thread, NULL, proxy_main, px);
	if (!ret)
		px->started = true;
	return ret;
}

static void kick(struct proxy *px)
{
	uint64_t one = 1;

	(void)!write(px->wake, &one, sizeof(one));
}

/* Returns the connection number or -errno. Any thread. */
int proxy_attach(struct proxy *px, int fd_a, int fd_b)
{
	int ret;

	pthread_mutex_lock(&px->lock);
	ret = conn_add(px, fd_a, fd_b);
	pthread_mutex_unlock(&px->lock);
	kick(px);
	return ret;
}

/* Returns the connection number or -errno. Any thread. */
int proxy_pair(struct proxy *px, int *a_end, int *b_end)
{
	int sa[2], sb[2], ret;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sa))
		return -errno;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sb)) {
		ret = -errno;
		close(sa[0]);
		close(sa[1]);
		return ret;
	}
	ret = proxy_attach(px, sa[1], sb[1]);
	if (ret < 0) {
		close(sa[0]);
		close(sb[0]);
		return ret;
	}
	*a_end = sa[0];
	*b_end = sb[0];
	return ret;
}

/* Returns 0, -EBUSY (already listening) or -errno. Any thread. */
int proxy_listen(struct proxy *px, int listen_fd, const struct sockaddr *up,
		 socklen_t uplen)
{
	int ret;

	if (uplen > sizeof(px->up)) {
		close(listen_fd);
		return -EINVAL;
	}
	ret = set_nonblock(listen_fd);
	if (ret) {
		close(listen_fd);
		return ret;
	}
	pthread_mutex_lock(&px->lock);
	if (px->lfd >= 0) {
		pthread_mutex_unlock(&px->lock);
		close(listen_fd);
		return -EBUSY;
	}
	memcpy(&px->up, up, uplen);
	px->uplen = uplen;
	px->lfd = listen_fd;
	pthread_mutex_unlock(&px->lock);
	kick(px);
	return 0;
}

/* Returns 0, -ETIMEDOUT or -ENOENT. Any thread but the proxy's. */
int proxy_wait_closed(struct proxy *px, unsigned k, int timeout_ms)
{
	uint64_t deadline = now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
	struct timespec ts = { .tv_sec = (time_t)(deadline / NS),
			       .tv_nsec = (long)(deadline % NS) };
	int ret = 0;

	pthread_mutex_lock(&px->lock);
	while (k == 0 || k > px->nconns || px->conns[k - 1]->open) {
		if (timeout_ms < 0)
			pthread_cond_wait(&px->cond, &px->lock);
		else if (pthread_cond_timedwait(&px->cond, &px->lock, &ts) ==
			 ETIMEDOUT) {
			ret = (k == 0 || k > px->nconns) ? -ENOENT : -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&px->lock);
	return ret;
}

/* Connections so far. Any thread. */
unsigned proxy_conns(struct proxy *px)
{
	unsigned n;

	pthread_mutex_lock(&px->lock);
	n = px->nconns;
	pthread_mutex_unlock(&px->lock);
	return n;
}

/* Returns 0 or -ENOENT. Any thread. */
int proxy_stats(struct proxy *px, unsigned k, struct proxy_conn_stats *st)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&px->lock);
	if (k >= 1 && k <= px->nconns) {
		const struct conn *c = px->conns[k - 1];

		st->open = c->open;
		st->failed = c->failed;
		st->error = c->error;
		st->dir[0] = c->p[0].st;
		st->dir[1] = c->p[1].st;
		ret = 0;
	}
	pthread_mutex_unlock(&px->lock);
	return ret;
}

/* Joins the thread, closes every socket. The owner's thread. */
void proxy_destroy(struct proxy *px)
{
	unsigned i;

	if (!px)
		return;
	if (px->started) {
		pthread_mutex_lock(&px->lock);
		px->stop = true;
		pthread_mutex_unlock(&px->lock);
		kick(px);
		pthread_join(px->thread, NULL);
	}
	for (i = 0; i < px->nconns; i++) {
		conn_close(px, px->conns[i], 0);
		free(px->conns[i]);
	}
	if (px->lfd >= 0)
		close(px->lfd);
	close(px->wake);
	pthread_cond_destroy(&px->cond);
	pthread_mutex_destroy(&px->lock);
	free(px);
}
