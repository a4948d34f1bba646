/* SPDX-License-Identifier: MIT */
/*
 * fork.c - children keep their data: fork with UFFD_FEATURE_EVENT_FORK.
 *
 * At fork the kernel gives the parent a userfaultfd for the child. Pages
 * present in the parent are copy-on-write in the child as usual; pages that
 * live on a device are holes in both. Just before fork (pthread_atfork),
 * migrations to devices are held back and every device page is referenced
 * in a snapshot; the service thread hands the snapshot to the child's
 * userfaultfd with the fork event and from then on serves the child's
 * faults from those device pages (a copy, then the reference is dropped),
 * its discards and remaps, and its own forks. The parent's later
 * migrations do not disturb it: the child holds references, not the
 * parent's state words. When the child is gone (its userfaultfd answers
 * ESRCH) the references go.
 *
 * Thread mode only: in signal mode the child would need a handler of its
 * own; there device pages come home before fork instead (space.c).
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

struct centry {
	uintptr_t addr;
	struct uhmm_page *page; /* referenced; NULL once served or dropped */
};

struct child;

struct snap {
	struct snap *next;
	size_t n, cap;
	struct centry *e;     /* sorted by addr */
	struct child *child;  /* allocated before fork: the fork event must not malloc */
};

struct child {
	struct child *next;
	int uffd;
	struct snap *s;
	uintptr_t pending[64]; /* faults waiting for an event to be read (EAGAIN) */
	bool pending_write[64];
	int npending;
};

static int snap_add(struct snap *s, uintptr_t addr, struct uhmm_page *page)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		struct centry *e = realloc(s->e, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		s->e = e;
		s->cap = cap;
	}
	s->e[s->n].addr = addr;
	s->e[s->n].page = page;
	s->n++;
	return 0;
}

static void snap_free(struct snap *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++)
		uhmm_page_put(s->e[i].page);
	free(s->child);
	free(s->e);
	free(s);
}

static int cmp_entry(const void *a, const void *b)
{
	uintptr_t x = ((const struct centry *)a)->addr, y = ((const struct centry *)b)->addr;

	return x < y ? -1 : x > y;
}

static struct centry *snap_find(struct snap *s, uintptr_t addr)
{
	size_t lo = 0, hi = s ? s->n : 0;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (s->e[mid].addr < addr)
			lo = mid + 1;
		else if (s->e[mid].addr > addr)
			hi = mid;
		else
			return &s->e[mid];
	}
	return NULL;
}

/* --- before and after fork, in the forking thread --- */

struct snap_arg {
	struct snap *s;
	int err;
};

static int snap_one(struct uhmm *h, struct range *r, uintptr_t addr, void *arg)
{
	struct snap_arg *sa = arg;
	_Atomic uint64_t *w = uhmm__word(r, addr);
	uint64_t v;

	if (w_kind(atomic_load(w)) != W_DEVICE)
		return 0;
	/* Locked, so that the page cannot be released between the look and the reference. */
	v = uhmm__lock(w);
	if (w_kind(v) == W_DEVICE) {
		struct uhmm_page *page = uhmm__word_page(h, v);

		if (page) {
			uhmm_page_get(page);
			if (snap_add(sa->s, addr, page)) {
				uhmm_page_put(page);
				sa->err = -ENOMEM;
			}
		}
	}
	uhmm__unlock(w, v);
	return 0;
}

/*
 * Called before fork. Returns 0 when the child will be served (a snapshot
 * is queued for the fork event), or -errno: then the caller brings device
 * pages home instead.
 */
int uhmm__fork_prepare(struct uhmm *h)
{
	struct snap_arg sa = { 0 };
	struct snap **tail;
	bool inv;

	if (h->fault_mode != UHMM_FAULT_THREAD || !(h->uffd_feats & UFFD_FEATURE_EVENT_FORK) ||
	    atomic_load(&h->nchildren) >= MAX_CHILDREN)
		return -EOPNOTSUPP;
	sa.s = calloc(1, sizeof(*sa.s));
	if (!sa.s)
		return -ENOMEM;
	sa.s->child = calloc(1, sizeof(*sa.s->child));
	if (!sa.s->child) {
		free(sa.s);
		return -ENOMEM;
	}
	uhmm__fork_hold(h);
	/*
	 * Devices mirroring managed memory hear of the fork first, as from the
	 * kernel: a device page a child will reference must not be written in
	 * place by a device that checked its sharing before (copy-on-write).
	 */
	inv = uhmm__invalidate_start(h, 0, UINTPTR_MAX, UHMM_NOTIFY_FORK, NULL);
	uhmm__rd_enter(h);
	uhmm__for_each_word(h, 0, UINTPTR_MAX, snap_one, &sa);
	uhmm__rd_exit(h);
	uhmm__invalidate_end(h, inv);
	if (sa.err) {
		snap_free(sa.s);
		atomic_store(&h->forking, 0);
		return sa.err;
	}
	if (sa.s->n)
		qsort(sa.s->e, sa.s->n, sizeof(sa.s->e[0]), cmp_entry);
	pthread_mutex_lock(&h->fork_lock);
	for (tail = &h->snaps; *tail; tail = &(*tail)->next)
		;
	*tail = sa.s;
	pthread_mutex_unlock(&h->fork_lock);
	/*
	 * glibc's fork takes the malloc locks after these handlers and holds
	 * them while the kernel waits for the service thread to read the fork
	 * event: until fork returns, the service thread must not malloc. It
	 * says when it has stopped at a safe point.
	 */
	atomic_store(&h->fork_pending, 1);
	uhmm__svc_kick(h);
	while (h->svc_started && !atomic_load(&h->fork_quiet))
		sched_yield();
	return 0;
}

/*
 * Called after fork in the parent. The forking thread ran again once the
 * service thread had read the fork event; once that read has ended, the
 * event has taken its snapshot. One still queued belongs to a fork that
 * failed. Only the read: waiting here for every event read meanwhile to
 * be handled (a discard by another thread, say) waited for ever, as the
 * service thread handles none until fork_pending is cleared below
 * (tests/stress.c kept_pages_under_forks_and_discards_thread_mode hung
 * every run).
 */
void uhmm__fork_parent(struct uhmm *h)
{
	struct snap *s;

	uhmm__read_wait(h);
	pthread_mutex_lock(&h->fork_lock);
	s = h->snaps;
	h->snaps = NULL;
	pthread_mutex_unlock(&h->fork_lock);
	while (s) {
		struct snap *next = s->next;

		snap_free(s);
		s = next;
	}
	atomic_store(&h->fork_quiet, 0);
	atomic_store(&h->fork_pending, 0);
	uhmm__svc_kick(h);
	atomic_store(&h->forking, 0);
}

/*
 * Hold back migrations to devices until fork returns (uhmm__fork_parent): a
 * page leaving now would be a hole in the child that nobody fills.
 */
void uhmm__fork_hold(struct uhmm *h)
{
	atomic_store(&h->forking, 1);
	while (atomic_load(&h->out_inflight))
		sched_yield();
}

/* Migrations to devices call this before taking pages: wait out a fork. */
void uhmm__out_begin(struct uhmm *h)
{
	for (;;) {
		atomic_fetch_add(&h->out_inflight, 1);
		if (!atomic_load(&h->forking))
			return;
		atomic_fetch_sub(&h->out_inflight, 1);
		while (atomic_load(&h->forking))
			sched_yield();
	}
}

void uhmm__out_end(struct uhmm *h)
{
	atomic_fetch_sub(&h->out_inflight, 1);
}

/* --- the service thread's side --- */

static struct child *child_new(struct uhmm *h, int ufd, struct snap *s)
{
	struct child *c = s->child ? s->child : calloc(1, sizeof(*c));

	if (!c) {
		/* Without a service the child would read zeros: better no userfaultfd at all. */
		close(ufd);
		snap_free(s);
		return NULL;
	}
	s->child = NULL;
	c->uffd = ufd;
	c->s = s;
	c->next = h->children;
	h->children = c;
	atomic_fetch_add(&h->nchildren, 1);
	return c;
}

/* A fork event on the parent's userfaultfd: the child takes the snapshot. */
void uhmm__fork_event(struct uhmm *h, int ufd)
{
	struct snap *s;

	pthread_mutex_lock(&h->fork_lock);
	s = h->snaps;
	if (s)
		h->snaps = s->next;
	pthread_mutex_unlock(&h->fork_lock);
	if (!s) {
		/*
		 * A fork uhmm did not prepare for (no pthread_atfork): nothing
		 * to serve it with, and no malloc allowed here. Without its
		 * userfaultfd the child's memory is ordinary memory.
		 */
		close(ufd);
		return;
	}
	s->next = NULL;
	child_new(h, ufd, s);
}

/* A child forked: the grandchild has what the child still has on devices. */
static void child_fork(struct uhmm *h, struct child *c, int ufd)
{
	struct snap *s = calloc(1, sizeof(*s));

	for (size_t i = 0; s && i < c->s->n; i++) {
		if (!c->s->e[i].page)
			continue;
		uhmm_page_get(c->s->e[i].page);
		if (snap_add(s, c->s->e[i].addr, c->s->e[i].page)) {
			uhmm_page_put(c->s->e[i].page);
			snap_free(s);
			s = NULL;
		}
	}
	if (!s) {
		close(ufd);
		return;
	}
	child_new(h, ufd, s);
}

static void drop(struct child *c, uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; i < c->s->n; i++) {
		if (c->s->e[i].addr >= start && c->s->e[i].addr < end && c->s->e[i].page) {
			uhmm_page_put(c->s->e[i].page);
			c->s->e[i].page = NULL;
		}
	}
}

static void remap(struct child *c, uintptr_t from, uintptr_t to, size_t len)
{
	for (size_t i = 0; i < c->s->n; i++)
		if (c->s->e[i].addr >= from && c->s->e[i].addr < from + len)
			c->s->e[i].addr = to + (c->s->e[i].addr - from);
	if (c->s->n)
		qsort(c->s->e, c->s->n, sizeof(c->s->e[0]), cmp_entry);
}

/* Copy a snapshot page into the child at its address; -EAGAIN: try later. */
static int child_fill(struct uhmm *h, struct child *c, struct centry *e)
{
	struct uhmm_page *pg = e->page;
	void *buf = h->svc_bounce;
	int ret;

	if (pg->devmem->ops->copy_from_device(pg->devmem, &buf, &pg, 1)) {
		/* The device failed: in the child too, the toucher gets SIGBUS. */
		ret = uhmm__uffd_poison(c->uffd, e->addr, PAGE_SIZE, true);
		if (ret == -EAGAIN)
			return ret;
		UHMM_STAT_ADD(h, poisoned, 1);
	} else {
		ret = uhmm__uffd_copy(c->uffd, e->addr, buf, PAGE_SIZE, true);
		if (ret == -EAGAIN)
			return ret;
		if (!ret)
			UHMM_STAT_ADD(h, pages_home, 1);
	}
	uhmm_page_put(pg);
	e->page = NULL;
	return 0;
}

static int child_serve(struct uhmm *h, struct child *c, uintptr_t addr)
{
	struct centry *e = snap_find(c->s, addr);
	int ret;

	UHMM_STAT_ADD(h, faults, 1);
	if (e && e->page) {
		UHMM_STAT_ADD(h, faults_device, 1);
		return child_fill(h, c, e);
	}
	/* A hole at fork (or discarded since): zeros, as in the parent. */
	uhmm__fill_exists = 0;
	ret = uhmm__uffd_zeropage(c->uffd, addr, PAGE_SIZE, true);
	if (ret == -EAGAIN)
		return ret;
	if (uhmm__fill_exists) {
		/*
		 * Present: a write to a page the parent had duplicated at
		 * fork (its write-protection came along). The child has no
		 * copy to drop; lift the protection.
		 */
		ret = uhmm__uffd_unprotect(c->uffd, addr, PAGE_SIZE, true);
		return ret == -EAGAIN ? ret : 0;
	}
	UHMM_STAT_ADD(h, zero_fills, 1);
	return 0;
}

static bool child_gone(struct child *c)
{
	struct uffdio_zeropage z = { .range = { .start = 0, .len = PAGE_SIZE } };

	/* Address 0 is never mapped: a live child answers ENOENT or EINVAL, a dead one ESRCH. */
	return ioctl(c->uffd, UFFDIO_ZEROPAGE, &z) && errno == ESRCH;
}

static void child_free(struct uhmm *h, struct child *c)
{
	close(c->uffd);
	snap_free(c->s);
	free(c);
	atomic_fetch_sub(&h->nchildren, 1);
}

/* Read and serve everything the child's userfaultfd has. */
static void child_run(struct uhmm *h, struct child *c)
{
	struct uffd_msg msgs[32];
	int k = 0;

	/* Faults that waited for an event: the events below are read first. */
	for (;;) {
		ssize_t got = read(c->uffd, msgs, sizeof(msgs));

		if (got <= 0)
			break;
		for (size_t i = 0; i < (size_t)got / sizeof(msgs[0]); i++) {
			struct uffd_msg *m = &msgs[i];

			switch (m->event) {
			case UFFD_EVENT_PAGEFAULT:
				if (c->npending < 64)
					c->pending[c->npending++] =
						m->arg.pagefault.address & PAGE_MASK;
				break;
			case UFFD_EVENT_REMOVE:
			case UFFD_EVENT_UNMAP:
				drop(c, m->arg.remove.start, m->arg.remove.end);
				break;
			case UFFD_EVENT_REMAP:
				remap(c, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
				break;
			case UFFD_EVENT_FORK:
				child_fork(h, c, (int)m->arg.fork.ufd);
				break;
			default:
				break;
			}
		}
	}
	for (int i = 0; i < c->npending; i++)
		if (child_serve(h, c, c->pending[i]) == -EAGAIN)
			c->pending[k++] = c->pending[i];
	c->npending = k;
}

/* The service thread's poll set: the children's descriptors after @base. */
int uhmm__children_pollfds(struct uhmm *h, struct pollfd *pfd, int max)
{
	int n = 0;

	for (struct child *c = h->children; c && n < max; c = c->next) {
		pfd[n].fd = c->uffd;
		pfd[n].events = POLLIN;
		pfd[n].revents = 0;
		n++;
	}
	return n;
}

/*
 * Serve the children; now and then (@probe) find those that are gone.
 * A devmem being removed (flush) gets its pages copied into the children.
 */
void uhmm__children_run(struct uhmm *h, bool probe)
{
	struct uhmm_devmem *flush = atomic_load(&h->child_flush);

	for (struct child **pc = &h->children; *pc;) {
		struct child *c = *pc;

		child_run(h, c);
		if (flush) {
			for (size_t i = 0; i < c->s->n; i++)
				if (c->s->e[i].page && c->s->e[i].page->devmem == flush)
					child_fill(h, c, &c->s->e[i]);
		}
		if ((probe || flush) && child_gone(c)) {
			*pc = c->next;
			child_free(h, c);
			continue;
		}
		pc = &c->next;
	}
	if (flush)
		atomic_store(&h->child_flush, NULL);
}

/* At close: the children get every page they still lack, then no service. */
void uhmm__children_fini(struct uhmm *h)
{
	while (h->children) {
		struct child *c = h->children;

		h->children = c->next;
		for (size_t i = 0; i < c->s->n; i++)
			if (c->s->e[i].page)
				while (child_fill(h, c, &c->s->e[i]) == -EAGAIN)
					child_run(h, c);
		child_free(h, c);
	}
}

/* devmem_remove: the children's references to @dm's pages must go too. */
void uhmm__children_flush(struct uhmm *h, struct uhmm_devmem *dm)
{
	if (!atomic_load(&h->nchildren) || !h->svc_started)
		return;
	atomic_store(&h->child_flush, dm);
	uhmm__svc_kick(h);
	while (atomic_load(&h->child_flush) == dm)
		sched_yield();
}

/* In a forked child (pthread_atfork): close what refers to the parent's memory. */
void uhmm__fork_child_fds(struct uhmm *h)
{
	int *fds[] = { &h->uffd, &h->uffd_stg, &h->wake_fd };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	for (struct child *c = h->children; c; c = c->next) {
		if (c->uffd >= 0)
			close(c->uffd);
		c->uffd = -1;
	}
	h->svc_started = 0;
}
