/* SPDX-License-Identifier: MIT */
/*
 * fault.c - the fault service: one thread reads the userfaultfd and serves
 * CPU faults on managed memory and the unmap / remove / remap events.
 *
 * serve() is the one dispatch for a CPU fault; it is async-signal-safe (no
 * allocation, no mutex, no stdio) so that a signal-mode handler can share it.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MAX_PENDING 256
#define PENDING_MS 10

/* Release what a state word holds (its device page); the word is the caller's. */
void uhmm__release_word(struct uhmm *h, uint64_t w)
{
	struct uhmm_page *page;

	if (w_kind(w) != W_DEVICE)
		return;
	page = uhmm__word_page(h, w);
	if (!page)
		return;
	atomic_fetch_sub(&page->devmem->resident, 1);
	page->addr = 0;
	uhmm_page_put(page);
}

static void poison_page(struct uhmm *h, uintptr_t addr)
{
	uhmm__uffd_poison(h->uffd, addr, PAGE_SIZE);
	UHMM_STAT_ADD(h, poisoned, 1);
}

#define ZERO_AROUND 64 /* pages: first touches of fresh memory come in streams */

/*
 * The neighbours of a zero-filled hole are likely holes about to be touched:
 * map the zero page over those that are holes on the CPU side, so their first
 * read costs nothing and their first write is the kernel's own fault, not a
 * userfaultfd round trip. Only pages this call can lock are touched.
 */
static void zero_around(struct uhmm *h, struct range *r, uintptr_t addr)
{
	uintptr_t s = addr & ~(ZERO_AROUND * PAGE_SIZE - 1), e = s + ZERO_AROUND * PAGE_SIZE;
	unsigned char vec[ZERO_AROUND];
	bool held[ZERO_AROUND] = { false };
	unsigned long i, j, n;

	if (s < r->start)
		s = r->start;
	if (e > r->end)
		e = r->end;
	n = (e - s) >> PAGE_SHIFT;
	if (n <= 1 || mincore((void *)s, e - s, vec))
		return;
	for (i = 0; i < n; i++) {
		_Atomic uint64_t *w = uhmm__word(r, s + (i << PAGE_SHIFT));
		uint64_t v;

		if (vec[i] & 1 || atomic_load(w) || !uhmm__trylock(w, &v))
			continue;
		if (v) {
			uhmm__unlock(w, v);
			continue;
		}
		held[i] = true;
	}
	for (i = 0; i < n; i = j) {
		for (; i < n && !held[i]; i++)
			;
		for (j = i; j < n && held[j]; j++)
			;
		if (j > i) {
			uhmm__uffd_zeropage(h->uffd, s + (i << PAGE_SHIFT), (j - i) << PAGE_SHIFT);
			UHMM_STAT_ADD(h, zero_fills, j - i);
			for (unsigned long k = i; k < j; k++)
				uhmm__unlock(uhmm__word(r, s + (k << PAGE_SHIFT)), W_CPU);
		}
	}
}

/*
 * Serve a CPU fault at @addr. Returns 0 when served, -ENOENT when the address
 * is not (yet) managed. The toucher is woken by the ioctl that fills the page.
 */
static int serve(struct uhmm *h, uintptr_t addr, bool write)
{
	_Atomic uint64_t *w;
	struct range *r;
	uint64_t v, nv;
	int tries = 0, ret;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, addr);
	if (!r) {
		uhmm__rd_exit(h);
		return -ENOENT;
	}
	UHMM_STAT_ADD(h, faults, 1);
	w = uhmm__word(r, addr);
again:
	v = uhmm__lock(w);
	switch (w_kind(v)) {
	case W_CPU:
		/* A hole: its content is zeros. A write gets a private page at once. */
		if (write)
			uhmm__uffd_copy(h->uffd, addr, h->zero_page, PAGE_SIZE, true);
		else
			uhmm__uffd_zeropage(h->uffd, addr, PAGE_SIZE);
		UHMM_STAT_ADD(h, zero_fills, 1);
		uhmm__unlock(w, v);
		zero_around(h, r, addr);
		break;
	case W_POISON:
		uhmm__uffd_poison(h->uffd, addr, PAGE_SIZE); /* counted when it was poisoned */
		uhmm__unlock(w, v);
		break;
	case W_DEVICE: {
		struct uhmm_page *page = uhmm__word_page(h, v);
		struct uhmm_fault vmf = { .h = h, .address = addr, .page = page, .write = write };

		if (!page) {
			uhmm__unlock(w, W_POISON);
			poison_page(h, addr);
			break;
		}
		if (!tries)
			UHMM_STAT_ADD(h, faults_device, 1);
		uhmm_page_get(page);
		ret = page->devmem->ops->migrate_to_ram(&vmf);
		nv = atomic_load(w);
		if (w_kind(nv) == W_DEVICE) {
			/* Still on the device: retry a driver that declined, then give up. */
			if (!ret && ++tries < 3) {
				uhmm__unlock(w, nv);
				uhmm_page_put(page);
				goto again;
			}
			poison_page(h, addr);
			uhmm__release_word(h, nv);
			nv = W_POISON;
		}
		uhmm__unlock(w, nv);
		uhmm_page_put(page);
		break;
	}
	}
	uhmm__rd_exit(h);
	return 0;
}

/*
 * Call @fn on every page of [start, end) whose word may be non-zero, skipping
 * state-table pages the kernel never populated (never written: all zero).
 * In a read section.
 */
static void for_each_word(struct uhmm *h, uintptr_t start, uintptr_t end,
			  void (*fn)(struct uhmm *, struct range *, uintptr_t, void *), void *arg)
{
	while (start < end) {
		struct range *r = uhmm__lookup(h, start);
		uintptr_t stop;

		if (!r) {
			/* Skip to the next managed range, if any. */
			struct rtab *t = atomic_load(&h->rtab);
			uintptr_t next = end;

			for (size_t i = 0; t && i < t->n; i++)
				if (t->r[i]->start > start && t->r[i]->start < next)
					next = t->r[i]->start;
			start = next;
			continue;
		}
		stop = r->end < end ? r->end : end;
		while (start < stop) {
			_Atomic uint64_t *w = uhmm__word(r, start);
			uintptr_t wp = (uintptr_t)w & PAGE_MASK;
			unsigned char vec = 0;
			/* Pages of [start, stop) whose words share w's table page. */
			uintptr_t span = ((wp + PAGE_SIZE - (uintptr_t)w) / sizeof(*w)) << PAGE_SHIFT;
			uintptr_t until = stop - start < span ? stop : start + span;

			if (mincore((void *)wp, PAGE_SIZE, &vec) == 0 && !(vec & 1)) {
				start = until;
				continue;
			}
			for (; start < until; start += PAGE_SIZE)
				if (atomic_load(uhmm__word(r, start)))
					fn(h, r, start, arg);
		}
	}
}

static void discard_one(struct uhmm *h, struct range *r, uintptr_t addr, void *arg)
{
	_Atomic uint64_t *w = uhmm__word(r, addr);
	uint64_t v = uhmm__lock(w);

	(void)arg;
	uhmm__release_word(h, v);
	uhmm__unlock(w, W_CPU);
}

/* The CPU side of [start, end) was discarded or unmapped: its device pages die. */
static void discard(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	uhmm__rd_enter(h);
	for_each_word(h, start, end, discard_one, NULL);
	uhmm__rd_exit(h);
}

struct remap_arg {
	uintptr_t from, to;
	_Atomic uint64_t *nwords;
};

static void remap_one(struct uhmm *h, struct range *r, uintptr_t addr, void *arg)
{
	struct remap_arg *ra = arg;
	_Atomic uint64_t *w = uhmm__word(r, addr);
	uint64_t v = uhmm__lock(w);
	uintptr_t naddr = ra->to + (addr - ra->from);

	if (w_kind(v) == W_DEVICE) {
		struct uhmm_page *page = uhmm__word_page(h, v);

		if (page)
			page->addr = naddr;
	}
	atomic_store(&ra->nwords[(naddr - ra->to) >> PAGE_SHIFT], v);
	uhmm__unlock(w, W_CPU);
}

/*
 * mremap moved [from, from+len) to [to, to+len): the page tables moved with
 * it; the state words (device pages) must follow before a fault on the new
 * range is served (such faults wait as pending until then).
 */
static void remap(struct uhmm *h, uintptr_t from, uintptr_t to, size_t len)
{
	struct remap_arg ra = { .from = from, .to = to };
	size_t n = len >> PAGE_SHIFT, mlen = (n * 8 + PAGE_SIZE - 1) & PAGE_MASK;
	unsigned char vec;
	bool managed;

	uhmm__rd_enter(h);
	managed = uhmm__lookup(h, from) != NULL;
	uhmm__rd_exit(h);
	if (!managed)
		return;
	ra.nwords = mmap(NULL, mlen, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ra.nwords == MAP_FAILED)
		return;
	uhmm__rd_enter(h);
	for_each_word(h, from, from + len, remap_one, &ra);
	uhmm__rd_exit(h);
	uhmm__add_range(h, to, to + len, false, ra.nwords);
	munmap((void *)ra.nwords, mlen);
	/* With MREMAP_DONTUNMAP the old range stays, empty; otherwise it is gone. */
	if (mincore((void *)from, PAGE_SIZE, &vec) && errno == ENOMEM)
		uhmm__remove_ranges(h, from, from + len);
}

struct pending {
	uintptr_t addr;
	bool write;
	struct timespec since;
};

static long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/*
 * A fault on an address no range covers: the new side of an mremap whose
 * event has not arrived yet, or registered memory uhmm does not track (the
 * grown tail of an mremap). Retry it; after a while it is an ordinary hole.
 */
static size_t retry_pending(struct uhmm *h, struct pending *p, size_t n, bool flush)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		if (!serve(h, p[i].addr, p[i].write))
			continue;
		if (flush || ms_since(&p[i].since) >= PENDING_MS) {
			if (uhmm__uffd_zeropage(h->uffd, p[i].addr, PAGE_SIZE))
				uhmm__uffd_wake(h->uffd, p[i].addr, PAGE_SIZE);
			continue;
		}
		p[k++] = p[i];
	}
	return k;
}

static void *svc_main(void *arg)
{
	struct uhmm *h = arg;
	struct pending pend[MAX_PENDING];
	size_t npend = 0;
	struct uffd_msg msgs[64];
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);

	while (!atomic_load(&h->stop)) {
		struct pollfd pfd[2] = { { .fd = h->uffd, .events = POLLIN },
					 { .fd = h->wake_fd, .events = POLLIN } };
		uint64_t req, junk;
		bool remapped = false;

		if (poll(pfd, 2, npend ? 1 : -1) < 0 && errno != EINTR)
			break;
		if (atomic_load(&h->stop))
			break;
		if (pfd[1].revents & POLLIN)
			(void)!read(h->wake_fd, &junk, sizeof(junk));
		pthread_mutex_lock(&h->sync_lock);
		req = h->sync_req;
		pthread_mutex_unlock(&h->sync_lock);

		for (;;) {
			ssize_t got = read(h->uffd, msgs, sizeof(msgs));

			if (got <= 0)
				break;
			for (size_t i = 0; i < (size_t)got / sizeof(msgs[0]); i++) {
				struct uffd_msg *m = &msgs[i];

				switch (m->event) {
				case UFFD_EVENT_PAGEFAULT: {
					uintptr_t a = m->arg.pagefault.address & PAGE_MASK;
					bool wr = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;

					if (!serve(h, a, wr))
						break;
					if (npend == MAX_PENDING)
						npend = retry_pending(h, pend, npend, true);
					pend[npend].addr = a;
					pend[npend].write = wr;
					clock_gettime(CLOCK_MONOTONIC, &pend[npend].since);
					npend++;
					break;
				}
				case UFFD_EVENT_REMOVE:
					UHMM_STAT_ADD(h, events, 1);
					discard(h, m->arg.remove.start, m->arg.remove.end);
					break;
				case UFFD_EVENT_UNMAP:
					UHMM_STAT_ADD(h, events, 1);
					discard(h, m->arg.remove.start, m->arg.remove.end);
					uhmm__remove_ranges(h, m->arg.remove.start, m->arg.remove.end);
					break;
				case UFFD_EVENT_REMAP:
					UHMM_STAT_ADD(h, events, 1);
					remap(h, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
					remapped = true;
					break;
				default:
					break;
				}
			}
		}
		if (npend)
			npend = retry_pending(h, pend, npend, false);
		(void)remapped;

		pthread_mutex_lock(&h->sync_lock);
		if (h->sync_done < req) {
			h->sync_done = req;
			pthread_cond_broadcast(&h->sync_cond);
		}
		pthread_mutex_unlock(&h->sync_lock);
	}
	retry_pending(h, pend, npend, true);
	return NULL;
}

int uhmm__svc_start(struct uhmm *h)
{
	int ret;

	h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->wake_fd < 0)
		return -errno;
	ret = pthread_create(&h->svc, NULL, svc_main, h);
	if (ret) {
		close(h->wake_fd);
		h->wake_fd = -1;
		return -ret;
	}
	h->svc_started = 1;
	return 0;
}

static void kick(struct uhmm *h)
{
	uint64_t one = 1;

	(void)!write(h->wake_fd, &one, sizeof(one));
}

void uhmm__svc_stop(struct uhmm *h)
{
	if (!h->svc_started)
		return;
	atomic_store(&h->stop, 1);
	kick(h);
	pthread_join(h->svc, NULL);
	h->svc_started = 0;
	close(h->wake_fd);
	h->wake_fd = -1;
}

/*
 * Wait until every message the kernel delivered before this call has been
 * handled (e.g. the unmap event of a munmap that has returned).
 */
int uhmm__sync(struct uhmm *h)
{
	uint64_t t;

	if (!h->svc_started || pthread_equal(pthread_self(), h->svc))
		return 0;
	pthread_mutex_lock(&h->sync_lock);
	t = ++h->sync_req;
	kick(h);
	while (h->sync_done < t)
		pthread_cond_wait(&h->sync_cond, &h->sync_lock);
	pthread_mutex_unlock(&h->sync_lock);
	return 0;
}

int uhmm_sync(struct uhmm *h)
{
	if (!h)
		return -EINVAL;
	return uhmm__sync(h);
}
