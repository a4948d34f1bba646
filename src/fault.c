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
#include <sched.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"


/* Release what a state word holds (its device page or copy); the word is the caller's. */
void uhmm__release_word(struct uhmm *h, uint64_t w)
{
	struct uhmm_page *page;

	if (!w_has_page(w))
		return;
	page = uhmm__word_page(h, w);
	if (!page)
		return;
	if (w_kind(w) == W_DUP) {
		atomic_fetch_sub(&page->devmem->dups, 1);
		atomic_fetch_add(&page->devmem->st_dup_drops, 1);
	} else {
		atomic_fetch_sub(&page->devmem->resident, 1);
	}
	uhmm__page_set_addr(page, 0);
	uhmm_page_put(page);
}

/*
 * End read duplication of the page at @addr, whose word @w (holding @v,
 * W_DUP) the caller holds locked: devices drop their translations of the
 * copy, the word becomes W_CPU (the bounce history kept; still locked)
 * before the invalidation ends, so that no device fault can find the copy
 * again, the copy is freed, and the CPU's page may be written again.
 * @wake: wake a toucher waiting on its write-protect fault (else the caller
 * does, once the page is unlocked). Should lifting the protection fail (an
 * event under way, -EAGAIN for the service thread), the next write faults
 * and finds a W_CPU page still protected: uhmm__serve lifts it then.
 * Returns the new word. Async-signal-safe.
 */
uint64_t uhmm__dup_drop(struct uhmm *h, _Atomic uint64_t *w, uintptr_t addr, uint64_t v,
			bool wake)
{
	bool inv = uhmm__invalidate_start(h, addr, addr + PAGE_SIZE, UHMM_NOTIFY_UNDUPLICATE, NULL);
	uint64_t nv = W_CPU | (v & W_THRASH_MASK);

	uhmm__word_set_locked(w, nv);
	uhmm__release_word(h, v);
	uhmm__invalidate_end(h, inv);
	uhmm__uffd_unprotect(h->uffd, addr, PAGE_SIZE, wake);
	uhmm__trace("dup-drop", addr, v, 0);
	return nv;
}

/* Append @v in @base to @s at *n (async-signal-safe). */
static void put_num(char *s, size_t *n, unsigned long v, unsigned base)
{
	char d[24];
	int k = 0;

	do
		d[k++] = "0123456789abcdef"[v % base];
	while ((v /= base));
	while (k)
		s[(*n)++] = d[--k];
}

static void put_str(char *s, size_t *n, const char *t)
{
	while (*t)
		s[(*n)++] = *t++;
}

/* The one line uhmm writes to stderr: a page lost for want of memory. Async-signal-safe. */
static void log_nomem(struct uhmm *h, uintptr_t addr)
{
	char line[192];
	size_t n = 0;

	put_str(line, &n, "uhmm: page 0x");
	put_num(line, &n, addr, 16);
	put_str(line, &n, " poisoned: no memory to bring it home for ");
	put_num(line, &n, h->nomem_wait_ms, 10);
	put_str(line, &n, " ms (its device data is lost); its toucher gets SIGBUS\n");
	(void)!write(2, line, n);
}

static void poison_page(struct uhmm *h, uintptr_t addr)
{
	uhmm__uffd_poison(h->uffd, addr, PAGE_SIZE, false);
	UHMM_STAT_ADD(h, poisoned, 1);
}

static unsigned long stream_window(struct stream *st, atomic_uint *victim, uintptr_t addr,
				   unsigned long cap);

static bool pev_overlaps(struct uhmm *h, uintptr_t start, uintptr_t end);

static __thread bool in_worker; /* a fault worker (uhmm_stats: faults_worker) */

/*
 * First touches of fresh memory come in sweeps: while zero fills form a
 * stream (uhmm_fault_window's rule), fill the next holes of the window too:
 * after a read with the zero page, so their first read costs nothing; after
 * a write with private zeroed pages, so their first write costs nothing
 * either: over the zero page each was a fault of its own (the kernel's
 * copy-on-write), where one UFFDIO_COPY fills the window. Windows up to 2
 * MiB, as the kernel's huge pages: a round trip to the service thread on
 * the other CPU costs 60-70 us here. A 256 MiB first fill, memset, threads
 * unpinned: 1.1 GB/s with the zero page over 64 pages, 1.2-1.35 with private
 * pages, 2.2-2.5 with them over 2 MiB; the kernel's own first touch 2.3-2.5
 * (on one CPU: 1.8, 3.2-4.1, 3.3; the kernel 2.5-2.8). Not under a discard
 * read and pending, as for the page itself (uhmm__serve). An isolated first
 * touch fills its page alone, as the kernel does. Only pages this call can
 * lock, and that are holes, are touched.
 */
static void zero_around(struct uhmm *h, struct range *r, uintptr_t addr, bool write)
{
	unsigned long n = stream_window(h->zstreams, &h->zstream_victim, addr, ZERO_AROUND);
	uintptr_t s = addr + PAGE_SIZE, e = addr + (n << PAGE_SHIFT);
	unsigned char vec[ZERO_AROUND];
	bool held[ZERO_AROUND] = { false };
	unsigned long i, j;

	if (e > r->end)
		e = r->end;
	if (s >= e)
		return;
	n = (e - s) >> PAGE_SHIFT;
	if (mincore((void *)s, e - s, vec))
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
			uintptr_t rs = s + (i << PAGE_SHIFT), re = s + (j << PAGE_SHIFT);
			int zr = write && !pev_overlaps(h, rs, re) ?
					 uhmm__uffd_copy(h->uffd, rs, h->zero_page, re - rs, true) :
					 uhmm__uffd_zeropage(h->uffd, rs, re - rs, true);

			uhmm__trace("*zero-around", rs, re - rs, (uint64_t)zr);
			UHMM_STAT_ADD(h, zero_fills, j - i);
			for (unsigned long k = i; k < j; k++)
				uhmm__unlock(uhmm__word(r, s + (k << PAGE_SHIFT)), W_CPU);
		}
	}
}

/*
 * Streams of faults: a fault that lands where a previous window ended
 * continues that stream, and its window doubles up to @cap pages; any other
 * fault starts a stream of one page. Random access pays one page per fault;
 * a sweep pays one fault per window. Windows never cross a 2 MiB boundary.
 * Async-signal-safe (races only lose a hit).
 */
static unsigned long stream_window(struct stream *st, atomic_uint *victim, uintptr_t addr,
				   unsigned long cap)
{
	unsigned long room = (CHUNK_SIZE - (addr & (CHUNK_SIZE - 1))) >> PAGE_SHIFT, w;
	unsigned i;

	for (i = 0; i < NSTREAMS; i++) {
		uintptr_t next = addr;

		if (atomic_load(&st[i].next) != addr)
			continue;
		w = atomic_load(&st[i].window) * 2;
		if (w > cap)
			w = cap;
		atomic_store(&st[i].window, w);
		if (w > room)
			w = room;
		if (atomic_compare_exchange_strong(&st[i].next, &next, addr + (w << PAGE_SHIFT)))
			return w;
	}
	/* A new stream, maybe: remember where its next fault would be. */
	i = atomic_fetch_add(victim, 1) % NSTREAMS;
	atomic_store(&st[i].window, 1);
	atomic_store(&st[i].next, addr + PAGE_SIZE);
	return 1;
}

/* Discarded or unmapped memory starts afresh: no stream continues into it. */
static void streams_forget(struct stream *st, uintptr_t start, uintptr_t end)
{
	for (unsigned i = 0; i < NSTREAMS; i++) {
		uintptr_t next = atomic_load(&st[i].next);

		if (next >= start && next <= end)
			atomic_compare_exchange_strong(&st[i].next, &next, 0);
	}
}

static unsigned long adaptive_window(const struct uhmm_fault *vmf, unsigned long max)
{
	return stream_window(vmf->h->streams, &vmf->h->stream_victim, vmf->address & PAGE_MASK,
			     max);
}

static unsigned long no_window(const struct uhmm_fault *vmf, unsigned long max)
{
	(void)vmf;
	(void)max;
	return 1;
}

const struct uhmm_prefetch_policy uhmm_prefetch_adaptive = {
	.abi = UHMM_PREFETCH_POLICY_ABI, .name = "adaptive", .window = adaptive_window,
};

const struct uhmm_prefetch_policy uhmm_prefetch_none = {
	.abi = UHMM_PREFETCH_POLICY_ABI, .name = "none", .window = no_window,
};

int uhmm_devmem_set_prefetch(struct uhmm_devmem *dm, const struct uhmm_prefetch_policy *policy)
{
	if (!dm || (policy && (policy->abi != UHMM_PREFETCH_POLICY_ABI || !policy->window)))
		return -EINVAL;
	atomic_store(&dm->prefetch, policy);
	return 0;
}

unsigned long uhmm_fault_window(const struct uhmm_fault *vmf)
{
	const struct uhmm_prefetch_policy *pol = NULL;
	unsigned long n, max;

	if (!vmf || !vmf->h)
		return 1;
	if (vmf->page && vmf->page->devmem)
		pol = atomic_load(&vmf->page->devmem->prefetch);
	if (!pol)
		pol = &uhmm_prefetch_adaptive;
	n = pol->window(vmf, vmf->h->fault_window);
	/* Never past the handle's window nor the 2 MiB boundary (one migration's chunk). */
	max = (CHUNK_SIZE - (vmf->address & (CHUNK_SIZE - 1))) >> PAGE_SHIFT;
	if (max > vmf->h->fault_window)
		max = vmf->h->fault_window;
	return n < 1 ? 1 : n > max ? max : n;
}

/* Ask the holder of a locked page to kick the service threads when it unlocks. */
static bool set_waiters(_Atomic uint64_t *w)
{
	uint64_t v = atomic_load(w);

	while (v & W_LOCKED) {
		if ((v & W_WAITERS) || atomic_compare_exchange_weak(w, &v, v | W_WAITERS))
			return true;
	}
	return false; /* unlocked meanwhile: try again at once */
}

/*
 * Serve a CPU fault at @addr. The service thread (thread mode) never blocks:
 * it must always get back to reading the userfaultfd, because a pending event
 * makes every fill ioctl fail with EAGAIN until it is read; it gets -EAGAIN
 * when the page is locked or an ioctl must wait for an event, and retries
 * later. A faulting thread serving itself (signal mode, @block) holds no page
 * lock, so it may wait for one. Returns 0 when served, -EHWPOISON when the
 * page is poisoned and its marker is in place (the access gets SIGBUS),
 * -ENOENT when no range covers the address (yet), -EBUSY when the page is
 * locked (not @block), -EAGAIN when an event under way blocks the fill: it
 * may change what the fault should do, so retry once events are handled.
 */
static bool pev_overlaps(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	/* Counted before its slot is filled, uncounted once handled: none, nothing to scan. */
	if (!atomic_load(&h->events_pending))
		return false;
	if (atomic_load(&h->pev_overflow))
		return true;
	for (int i = 0; i < MAX_PEV; i++) {
		if (!atomic_load_explicit(&h->pev[i].used, memory_order_acquire))
			continue;
		int n = atomic_load_explicit(&h->pev[i].n, memory_order_relaxed);

		/*
		 * A slot reused under us may read torn: it then names an event
		 * read after we started, never the one this thread caused.
		 */
		for (int j = 0; j < n && j < 2; j++)
			if (atomic_load_explicit(&h->pev[i].r[j][0], memory_order_relaxed) < end &&
			    start < atomic_load_explicit(&h->pev[i].r[j][1], memory_order_relaxed))
				return true;
	}
	return false;
}

/*
 * Wait for the read under way, if any, to end: an event it takes from the
 * kernel is in a slot then (work_add runs before). Only that one: an event
 * read later was caused after this call began, so nothing this thread did
 * or saw depends on it, and a stream of reads (a thread that mremaps in a
 * loop) must not hold the caller up for as long as the stream lasts.
 */
static void read_wait(struct uhmm *h)
{
	unsigned int g = atomic_load(&h->read_gen);

	while ((g & 1) && atomic_load(&h->read_gen) == g)
		sched_yield();
}

void uhmm__read_wait(struct uhmm *h)
{
	if (!uhmm__in_svc)
		read_wait(h);
}

/*
 * Wait until every unmap/remove/remap event the kernel has delivered that
 * changes [start, end) is handled. The thread that caused one is released
 * when the service thread reads it, before the page states are updated; a
 * fault, migration or query by that thread right after must not see the
 * states from before (a discarded page's device data, a poison the discard
 * cleared). Events elsewhere (one that waits for pages a stuck migration
 * holds, say) hold up nobody here. Never in the service thread (it handles
 * them in order) and never while holding a page lock (an event may wait for
 * it). Async-signal-safe.
 */
int uhmm__pending_fate(struct uhmm *h, uintptr_t addr, uintptr_t *now)
{
	int fate = FATE_HERE;

	*now = addr;
	if (!uhmm__in_svc)
		read_wait(h);
	for (int hop = 0; hop < 4; hop++) {
		bool moved = false;

		for (int i = 0; i < MAX_PEV && !moved; i++) {
			if (!atomic_load_explicit(&h->pev[i].used, memory_order_acquire))
				continue;
			int n = atomic_load_explicit(&h->pev[i].n, memory_order_relaxed);
			uintptr_t s = atomic_load_explicit(&h->pev[i].r[0][0], memory_order_relaxed);
			uintptr_t e = atomic_load_explicit(&h->pev[i].r[0][1], memory_order_relaxed);

			if (*now < s || *now >= e)
				continue;
			if (n == 1)
				return FATE_GONE;
			*now = atomic_load_explicit(&h->pev[i].r[1][0], memory_order_relaxed) +
			       (*now - s);
			fate = FATE_MOVED;
			moved = true;
		}
		if (!moved)
			break;
	}
	return fate;
}

void uhmm__events_settle(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	if (uhmm__in_svc)
		return;
	read_wait(h);
	while (pev_overlaps(h, start, end))
		sched_yield();
}

/*
 * Putting pages home (UFFDIO_COPY) must not cross a discard. The kernel
 * zaps a discarded range only after the service thread has read the
 * event; a page installed between that read and the zap is zapped, but one
 * installed after the zap would bring back data the program threw away.
 * So: while a thread installs, the service thread reads no event (the
 * kernel refuses the fill with EAGAIN while one is unread), and the events
 * read before are seen here, pending until handled. Returns false when one
 * of them changes [start, end): leave the pages where they are and let the
 * event decide. Always pair with uhmm__install_end; never wait for an
 * event in between (uhmm__nowait). Async-signal-safe.
 */
bool uhmm__install_begin(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	/*
	 * The service thread goes first: it flags a read, waits for the
	 * installs under way (one UFFDIO_COPY each, at most 2 MiB), and new
	 * ones wait for its read to end. Short.
	 */
	for (;;) {
		atomic_fetch_add(&h->installing, 1);
		if (uhmm__in_svc || !uhmm__svc_reading(h))
			break;
		atomic_fetch_sub(&h->installing, 1);
		/*
		 * Yield, never spin: the read wakes the event's thread, which
		 * may be queued on this very CPU, and the kernel refuses every
		 * fill until that thread has run to end its event; spinning
		 * keeps it from running. Fills still line up behind reads:
		 * beside a thread that mremaps in a loop a signal-mode fault
		 * can take seconds (tests/slowdriver.c, mremap_flood_*).
		 */
		while (uhmm__svc_reading(h))
			sched_yield();
		sched_yield();
	}
	return !pev_overlaps(h, start, end);
}

void uhmm__install_end(struct uhmm *h)
{
	atomic_fetch_sub(&h->installing, 1);
}

/*
 * Wait until every unmap/remap event the kernel has begun for this
 * userfaultfd is read and handled. The kernel counts them from before the
 * address space changes until the event is read (its mmap_changing), and
 * refuses fills meanwhile: an ioctl that changes nothing (un-write-protect
 * @addr, not registered for it) answers EAGAIN while any is counted. For an
 * address the caller just got from mmap: an event about the mapping that was
 * there before (an mremap's UNMAP of its old place, say) may not even be
 * queued yet, and handled late it would take the new range.
 */
void uhmm__events_drain(struct uhmm *h, uintptr_t addr)
{
	struct uffdio_writeprotect p = { .range = { .start = addr, .len = PAGE_SIZE }, .mode = 0 };

	while (ioctl(h->uffd, UFFDIO_WRITEPROTECT, &p) && errno == EAGAIN)
		sched_yield();
	uhmm__sync(h);
}

int uhmm__serve(struct uhmm *h, uintptr_t addr, bool write, int how)
{
	bool block = how & SERVE_BLOCK;
	_Atomic uint64_t *w;
	struct range *r;
	uint64_t v, nv;
	int tries = 0, ret = 0, nowait;

	/* A toucher serving itself sees the events already read handled first. */
	if (block)
		uhmm__events_settle(h, addr, addr + PAGE_SIZE);
	uhmm__rd_enter(h);
	r = uhmm__lookup(h, addr);
	if (!r) {
		uhmm__rd_exit(h);
		return -ENOENT;
	}
	w = uhmm__word(r, addr);
again:
	if (block)
		v = uhmm__lock(w);
	while (!block && !uhmm__trylock(w, &v)) {
		if (set_waiters(w)) {
			uhmm__rd_exit(h);
			return -EBUSY;
		}
	}
	uhmm__svc_eagain = 0;
	if (!tries)
		nowait = uhmm__nowait;
	uhmm__nowait = 1;
	/*
	 * Every fill is DONTWAKE: the toucher is woken last, once the page and
	 * its neighbours are unlocked and every counter is up to date, so what
	 * it does next (read a counter, migrate the page) sees the fault done.
	 */
	nv = v;
	switch (w_kind(v)) {
	case W_CPU:
		/* A hole: its content is zeros. A write gets a private page at once. */
		uhmm__fill_exists = 0;
		/*
		 * Not under a discard read and pending (a fault queued before
		 * it): a page of zeros there would look like data to zapped(),
		 * which waits for the zap; the zero page does not.
		 */
		if (write && !pev_overlaps(h, addr, addr + PAGE_SIZE))
			ret = uhmm__uffd_copy(h->uffd, addr, h->zero_page, PAGE_SIZE, false);
		else
			ret = uhmm__uffd_zeropage(h->uffd, addr, PAGE_SIZE, false);
		uhmm__trace("zero-fill", addr, write, (uint64_t)ret);
		if (ret == -EAGAIN)
			break;
		if (uhmm__fill_exists) {
			/*
			 * Present: a write-protect fault on a page whose copy
			 * is gone and whose protection stayed (see
			 * uhmm__dup_drop), or a fill that raced ours. Lift it.
			 */
			if (atomic_load(&h->wp) &&
			    uhmm__uffd_unprotect(h->uffd, addr, PAGE_SIZE, false) == -EAGAIN)
				ret = -EAGAIN;
			break;
		}
		UHMM_STAT_ADD(h, zero_fills, 1);
		zero_around(h, r, addr, write);
		break;
	case W_DUP:
		/* A write to a duplicated page: the device's copy goes first. */
		nv = uhmm__dup_drop(h, w, addr, v, false);
		UHMM_STAT_ADD(h, dup_writes, 1);
		break;
	case W_POISON:
		/* Counted when poisoned. A marker already there: the toucher's SIGBUS is real. */
		ret = uhmm__uffd_poison(h->uffd, addr, PAGE_SIZE, false);
		if (ret == -EEXIST)
			ret = -EHWPOISON;
		break;
	case W_DEVICE: {
		struct uhmm_page *page = uhmm__word_page(h, v);
		struct uhmm_fault vmf = { .h = h, .address = addr, .page = page, .write = write };

		/*
		 * The page lock keeps the page ours for the call; no extra
		 * reference, so that its release (page_free) happens before
		 * the toucher is woken, as in the kernel's fault path.
		 */
		uhmm__fill_err = 0;
		/*
		 * A CPU read of read-mostly memory: the page comes home as a
		 * read-only duplicate, the device keeping its copy (CUDA's
		 * driver does the same), if the handle can write-protect.
		 */
		uhmm__fault_dup = !write && atomic_load(&h->wp) && page &&
				  !uhmm__is_exclusive(h, page->devmem) && uhmm__read_mostly(h, addr);
		ret = page ? page->devmem->ops->migrate_to_ram(&vmf) : -ENODEV;
		uhmm__fault_dup = 0;
		nv = atomic_load(w);
		uhmm__trace("serve-dev", addr, nv, (uint64_t)ret);
		if (w_kind(nv) == W_DUP) {
			atomic_fetch_add(&page->devmem->st_faults, 1);
			uhmm__ctr_add(r, CTR_FAULTS, 1);
		}
		if (w_kind(nv) == W_CPU) {
			atomic_fetch_add(&page->devmem->st_faults, 1);
			nv = uhmm__thrash_home(h, page->devmem, v, nv);
			uhmm__ctr_add(r, CTR_FAULTS, 1);
			if ((nv & W_PINNED) && !(v & W_PINNED))
				uhmm__ctr_add(r, CTR_THRASH, 1);
		}
		if (w_kind(nv) == W_DEVICE && (uhmm__svc_eagain || uhmm__fill_err == -EAGAIN)) {
			/* An event is pending: the data stays on the device; retried. */
			ret = -EAGAIN;
			break;
		}
		if (w_kind(nv) == W_DEVICE &&
		    (uhmm__fill_err == -ENOMEM || ret == -ENOMEM) && !(how & SERVE_NOMEM_POISON)) {
			/*
			 * No memory for the page (UFFDIO_COPY, or the driver's
			 * own): it stays on the device; the caller retries with
			 * backoff (uhmm__serve_wait), then gives up.
			 */
			ret = -ENOMEM;
			break;
		}
		if (w_kind(nv) == W_DEVICE && uhmm__fill_err == -ENOENT) {
			/* The mapping moved or went: its event carries or frees the page. */
			ret = 0;
			break;
		}
		if (w_kind(nv) == W_DEVICE) {
			/* Still on the device: retry a driver that declined, then give up. */
			if (!ret && ++tries < 3) {
				uhmm__unlock(w, nv);
				goto again;
			}
			if ((how & SERVE_NOMEM_POISON) &&
			    (uhmm__fill_err == -ENOMEM || ret == -ENOMEM))
				log_nomem(h, addr);
			uhmm__release_word(h, nv);
			nv = W_POISON;
			uhmm__word_set_locked(w, W_POISON);
			poison_page(h, addr);
		}
		UHMM_STAT_ADD(h, faults_device, 1);
		if (in_worker)
			UHMM_STAT_ADD(h, faults_worker, 1);
		ret = 0;
		break;
	}
	}
	if (ret != -EAGAIN && ret != -EHWPOISON && ret != -ENOMEM) {
		UHMM_STAT_ADD(h, faults, 1);
		ret = 0;
	}
	uhmm__unlock(w, nv);
	/*
	 * Thread mode: the toucher sleeps in the kernel until woken. Signal
	 * mode: the toucher is this thread, and any other thread that faulted
	 * on the page serves itself; nobody sleeps, nothing to wake.
	 */
	if (!ret && (how & SERVE_WAKE))
		uhmm__uffd_wake(h->uffd, addr, PAGE_SIZE);
	uhmm__nowait = nowait;
	uhmm__rd_exit(h);
	return ret;
}

/*
 * Serve, waiting as long as it takes for locks and events, and with backoff
 * (1 ms doubling to 64 ms) while there is no memory to bring the page home;
 * after h->nomem_wait_ms of that, the page is poisoned and its toucher gets
 * SIGBUS (logged). For threads that may block: fault workers, signal-mode
 * touchers. Async-signal-safe.
 */
int uhmm__serve_wait(struct uhmm *h, uintptr_t addr, bool write, int how)
{
	struct timespec t0, now;
	long backoff_us = 1000;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		ret = uhmm__serve(h, addr, write, how | SERVE_BLOCK);
		if (ret == -EAGAIN || ret == -EBUSY) {
			sched_yield();
			continue;
		}
		if (ret != -ENOMEM)
			return ret;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 >=
		    (long)h->nomem_wait_ms)
			how |= SERVE_NOMEM_POISON;
		else
			nanosleep(&(struct timespec){ 0, backoff_us * 1000 }, NULL);
		if (backoff_us < 64000)
			backoff_us *= 2;
	}
}

/*
 * Call @fn on every page of [*at, end) whose word may be non-zero, skipping
 * state-table pages the kernel never populated (never written: all zero).
 * @fn returns 0 to go on or -EAGAIN to stop there; *at then names that page,
 * so the walk can resume. In a read section.
 */
static int for_each_word(struct uhmm *h, uintptr_t *at, uintptr_t end,
			 int (*fn)(struct uhmm *, struct range *, uintptr_t, void *), void *arg);

int uhmm__for_each_word(struct uhmm *h, uintptr_t at, uintptr_t end,
			int (*fn)(struct uhmm *, struct range *, uintptr_t, void *), void *arg)
{
	return for_each_word(h, &at, end, fn, arg);
}

static int for_each_word(struct uhmm *h, uintptr_t *at, uintptr_t end,
			 int (*fn)(struct uhmm *, struct range *, uintptr_t, void *), void *arg)
{
	uintptr_t start = *at;

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

			/* Never written (a swapped-out page of words is not a hole). */
			if (uhmm__pages_with_data(wp, 1, &vec) == 0 && !vec) {
				start = until;
				continue;
			}
			for (; start < until; start += PAGE_SIZE) {
				if (atomic_load(uhmm__word(r, start)) && fn(h, r, start, arg)) {
					*at = start;
					return -EAGAIN;
				}
			}
		}
	}
	*at = end;
	return 0;
}

/* Lock a page for an event without blocking; -EAGAIN asks for a kick on unlock. */
static int event_trylock(_Atomic uint64_t *w, uint64_t *v)
{
	while (!uhmm__trylock(w, v))
		if (set_waiters(w))
			return -EAGAIN;
	return 0;
}

static int discard_one(struct uhmm *h, struct range *r, uintptr_t addr, void *arg)
{
	_Atomic uint64_t *w = uhmm__word(r, addr);
	uint64_t v;

	(void)arg;
	if (event_trylock(w, &v))
		return -EAGAIN;
	uhmm__trace("discard", addr, v, 0);
	uhmm__release_word(h, v);
	uhmm__unlock(w, W_CPU);
	return 0;
}

struct remap_arg {
	uintptr_t from, to;
	_Atomic uint64_t *nwords;
};

static int remap_one(struct uhmm *h, struct range *r, uintptr_t addr, void *arg)
{
	struct remap_arg *ra = arg;
	_Atomic uint64_t *w = uhmm__word(r, addr);
	uintptr_t naddr = ra->to + (addr - ra->from);
	uint64_t v;

	if (event_trylock(w, &v))
		return -EAGAIN;
	if (w_kind(v) == W_DEVICE) {
		struct uhmm_page *page = uhmm__word_page(h, v);

		if (page)
			uhmm__page_set_addr(page, naddr);
	}
	if (w_kind(v) == W_DUP) {
		/*
		 * The copy is not worth following: devices dropped the old
		 * side already. The page at the new address keeps its
		 * protection until its first write (uhmm__serve lifts it).
		 */
		uhmm__release_word(h, v);
		v = W_CPU | (v & W_THRASH_MASK);
	}
	atomic_store(&ra->nwords[(naddr - ra->to) >> PAGE_SHIFT], v);
	uhmm__unlock(w, W_CPU);
	return 0;
}

/* Work the service thread has read and not finished: faults and events, in order. */
enum { WK_FAULT = 1, WK_REMOVE, WK_UNMAP, WK_REMAP };

struct work {
	int type;
	bool write;
	uint32_t ptid;  /* fault: the faulting thread (UFFD_FEATURE_THREAD_ID), or 0 */
	uintptr_t a, b; /* fault: a; remove/unmap: [a, b); remap: from a to b */
	size_t len;     /* remap */
	uintptr_t at;   /* progress of an event's walk */
	bool inv;       /* an invalidation was started for it */
	bool after_events; /* a fault an event under way held up: retry after the events */
	bool alloced;      /* remap: the old side was made by uhmm_alloc */
	int pev;           /* an event's slot in h->pev, or -1 */
	_Atomic uint64_t *nwords; /* remap: the new range's words */
	size_t nlen;
	uintptr_t zap_at;  /* remove: how far the kernel's zap is seen done */
	int64_t zap_since; /* remove: since when it waits for the zap (ns) */
};

/*
 * Whether the kernel has zapped the discarded range [wk->zap_at, wk->b). It
 * zaps only after this thread has read the event, so for a moment the pages
 * are still there, and a migration that took one then would carry its data
 * past the zap (the page would come back with it). So a discard waits for
 * its zap before its pages' states change, and until then it is pending:
 * migrations do not begin there (uhmm__events_settle), pages go home only
 * past uhmm__install_begin, a fault there waits behind it. Nothing but the
 * zap changes the pages meanwhile. Bounded all the same: MADV_FREE sends
 * the same event and zaps nothing (its pages stay until reclaim, and either
 * content is right), and a zero page a fault installed just before the
 * event was filed stays too. So after ZAP_WAIT_NS in which no page of the
 * range went, the rest is taken as it is.
 */
#define ZAP_WAIT_NS (20 * 1000 * 1000LL)

static bool zapped(struct uhmm *h, struct work *wk)
{
	unsigned char *vec = h->zap_vec;
	struct timespec ts;
	int64_t now;

	if (!wk->zap_at)
		wk->zap_at = wk->a;
	for (int spin = 0; wk->zap_at < wk->b;) {
		unsigned long n = (wk->b - wk->zap_at) >> PAGE_SHIFT, i;
		uintptr_t first;

		if (n > ZAP_VEC)
			n = ZAP_VEC;
		if (!uhmm__first_data_page(wk->zap_at, wk->zap_at + (n << PAGE_SHIFT), &first)) {
			/* The zero page a fault-around mapped after the zap does not count. */
			i = (first - wk->zap_at) >> PAGE_SHIFT;
		} else {
			if (uhmm__pages_with_data(wk->zap_at, n, vec))
				return true; /* cannot tell: do not wait */
			for (i = 0; i < n && !(vec[i] & 1); i++)
				;
		}
		wk->zap_at += i << PAGE_SHIFT;
		if (i)
			wk->zap_since = 0; /* the zap is under way: wait on */
		if (i < n) {
			if (spin++ < 16) {
				sched_yield(); /* the zap comes a moment after the read */
				continue;
			}
			clock_gettime(CLOCK_MONOTONIC, &ts);
			now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
			if (!wk->zap_since)
				wk->zap_since = now;
			if (now - wk->zap_since < ZAP_WAIT_NS)
				return false;
			wk->zap_at = wk->b; /* no zap is coming: give up on the rest */
		}
	}
	return true;
}

#define MAX_WORK 1024

#define SVC_RETRY_US 200 /* how long the service thread retries refused faults at once */

/* Whether a queued fault was refused by a fill ioctl (an event under way). */
static bool refused(const struct work *q, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (q[i].type == WK_FAULT && q[i].after_events)
			return true;
	return false;
}

static long us_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t->tv_sec) * 1000000 + (now.tv_nsec - t->tv_nsec) / 1000;
}

static long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Unmap events to absorb (remap_try): the service thread's alone. */
static void absorb_add(struct uhmm *h, uintptr_t s, uintptr_t e)
{
	for (int i = 0; i < MAX_ABSORB; i++) {
		if (!h->absorb[i][1]) {
			h->absorb[i][0] = s;
			h->absorb[i][1] = e;
			return;
		}
	}
}

/* Whether an unmap of [s, e) is the late event of a range remap_try dropped (used up). */
static bool absorb_take(struct uhmm *h, uintptr_t s, uintptr_t e)
{
	for (int i = 0; i < MAX_ABSORB; i++) {
		if (h->absorb[i][1] && h->absorb[i][0] <= s && e <= h->absorb[i][1]) {
			h->absorb[i][0] = h->absorb[i][1] = 0;
			return true;
		}
	}
	return false;
}

/*
 * mremap moved [from, from+len) to [to, to+len): the page tables moved with
 * it; the state words (device pages) follow before any fault on the new
 * range is served (those faults wait in the queue until then).
 */
static int remap_try(struct uhmm *h, struct work *wk)
{
	struct remap_arg ra = { .from = wk->a, .to = wk->b };
	unsigned char vec;
	int ret;

	if (!wk->nwords) {
		bool managed;

		struct range *old;

		uhmm__rd_enter(h);
		old = uhmm__lookup(h, wk->a);
		managed = old != NULL;
		wk->alloced = old && old->alloced;
		uhmm__rd_exit(h);
		if (!managed)
			return 0;
		wk->nlen = ((wk->len >> PAGE_SHIFT) * 8 + PAGE_SIZE - 1) & PAGE_MASK;
		wk->nwords = mmap(NULL, wk->nlen, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (wk->nwords == MAP_FAILED) {
			wk->nwords = NULL;
			return -EAGAIN;
		}
		wk->at = wk->a;
	}
	ra.nwords = wk->nwords;
	uhmm__rd_enter(h);
	ret = for_each_word(h, &wk->at, wk->a + wk->len, remap_one, &ra);
	uhmm__rd_exit(h);
	if (ret)
		return ret;
	ret = uhmm__add_range(h, wk->b, wk->b + wk->len, wk->alloced, wk->nwords);
	if (ret == -EEXIST) {
		/*
		 * A range is still where the moved one now is: its mapping is
		 * gone (unmapped by another thread, whose event is behind this
		 * one), or the move would have failed. Its pages went with it:
		 * release them, drop it, and absorb that late unmap event, which
		 * would otherwise take the moved range.
		 */
		uhmm__rd_enter(h);
		ret = for_each_word(h, &(uintptr_t){ wk->b }, wk->b + wk->len, discard_one, NULL);
		uhmm__rd_exit(h);
		if (ret)
			return ret; /* a page is locked: try again later (wk->at is done) */
		uhmm__remove_ranges(h, wk->b, wk->b + wk->len);
		absorb_add(h, wk->b, wk->b + wk->len);
		uhmm__add_range(h, wk->b, wk->b + wk->len, wk->alloced, wk->nwords);
	}
	uhmm__range_ctr_copy(h, wk->a, wk->b);
	munmap((void *)wk->nwords, wk->nlen);
	wk->nwords = NULL;
	/* With MREMAP_DONTUNMAP the old range stays, empty; otherwise it is gone. */
	if (mincore((void *)wk->a, PAGE_SIZE, &vec) && errno == ENOMEM)
		uhmm__remove_ranges(h, wk->a, wk->a + wk->len);
	return 0;
}

/* --- fault workers --- */

/*
 * Whether faults from several threads arrive together: another thread
 * faulted less than SVC_SHARE_NS ago. Then a fault on a driver that never
 * blocks goes to a worker too, every toucher's alike, and touchers are
 * served in parallel (a worker wakes on the CPU its toucher left idle)
 * instead of one after the other. One toucher, or threads that fault now
 * and then, stay on the service thread: a thread switch fewer. Looks at
 * every such fault, whoever serves it: were only faults served here
 * counted, one toucher's faults would stay here, and while the service
 * thread copied a 2 MiB run home for it, the other's waited unread.
 */
#define SVC_SHARE_NS (1000 * 1000LL)

static __thread struct {
	uint32_t ptid[2]; /* the last two threads that faulted, the latest first */
	int64_t when[2];  /* ... and when each last did */
} svc_recent;

static bool svc_shared(uint32_t ptid)
{
	struct timespec t;
	int64_t now;

	if (!ptid)
		return false; /* no UFFD_FEATURE_THREAD_ID: faults look alike */
	clock_gettime(CLOCK_MONOTONIC, &t);
	now = (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
	if (svc_recent.ptid[0] != ptid) {
		svc_recent.ptid[1] = svc_recent.ptid[0];
		svc_recent.when[1] = svc_recent.when[0];
		svc_recent.ptid[0] = ptid;
	}
	svc_recent.when[0] = now;
	return svc_recent.ptid[1] && now - svc_recent.when[1] < SVC_SHARE_NS;
}

/*
 * Hand a fault on a device page to the workers; false: serve it here (not
 * on a device, no workers, or the queue is full).
 */
static bool fault_to_worker(struct uhmm *h, uintptr_t addr, bool write, uint32_t ptid)
{
	struct range *r;
	bool dev = false;

	if (!h->nworkers)
		return false;
	uhmm__rd_enter(h);
	r = uhmm__lookup(h, addr);
	if (r) {
		uint64_t v = atomic_load(uhmm__word(r, addr));
		struct uhmm_page *page = w_kind(v) == W_DEVICE ? uhmm__word_page(h, v) : NULL;

		/* A driver that never blocks is served here, unless touchers share us. */
		dev = page && (!(page->devmem->flags & UHMM_DEVMEM_NONBLOCKING) ||
			       svc_shared(ptid));
	}
	uhmm__rd_exit(h);
	if (!dev)
		return false;
	pthread_mutex_lock(&h->wq_lock);
	/* Full, or the workers are stopping (uhmm_close): nobody would take it. */
	if (h->wq_stop || h->wq_tail - h->wq_head == WQ_SIZE) {
		pthread_mutex_unlock(&h->wq_lock);
		return false;
	}
	h->wq[h->wq_tail % WQ_SIZE].addr = addr;
	h->wq[h->wq_tail % WQ_SIZE].write = write;
	h->wq_tail++;
	pthread_cond_signal(&h->wq_cond);
	pthread_mutex_unlock(&h->wq_lock);
	return true;
}

/*
 * A worker serves like a signal-mode toucher (it may wait for the page lock
 * and for events to be handled; it holds no lock meanwhile) and then wakes
 * the thread that faulted.
 */
static void *worker_main(void *arg)
{
	struct uhmm *h = arg;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	in_worker = true;
	pthread_mutex_lock(&h->wq_lock);
	for (;;) {
		uintptr_t addr;
		bool write;
		int ret;

		while (h->wq_head == h->wq_tail && !h->wq_stop)
			pthread_cond_wait(&h->wq_cond, &h->wq_lock);
		if (h->wq_head == h->wq_tail)
			break;
		addr = h->wq[h->wq_head % WQ_SIZE].addr;
		write = h->wq[h->wq_head % WQ_SIZE].write;
		h->wq_head++;
		pthread_mutex_unlock(&h->wq_lock);
		/* Nothing that may allocate while a fork is under way (see svc_main). */
		while (atomic_load(&h->fork_pending))
			sched_yield();
		ret = uhmm__serve_wait(h, addr, write, SERVE_WAKE);
		/* Unmanaged by now, or poisoned: the toucher tries again and learns which. */
		if (ret)
			uhmm__uffd_wake(h->uffd, addr, PAGE_SIZE);
		pthread_mutex_lock(&h->wq_lock);
	}
	pthread_mutex_unlock(&h->wq_lock);
	return NULL;
}

static void workers_start(struct uhmm *h)
{
	pthread_mutex_init(&h->wq_lock, NULL);
	pthread_cond_init(&h->wq_cond, NULL);
	if (h->fault_mode != UHMM_FAULT_THREAD)
		return;
	for (int i = 0; i < NWORKERS; i++)
		if (!pthread_create(&h->workers[h->nworkers], NULL, worker_main, h))
			h->nworkers++;
}

/*
 * Before the service thread stops: workers finish what they have (events
 * still run). The service thread may still look at the queue until it is
 * joined (fault_to_worker then serves faults itself): workers_free after.
 */
static void workers_stop(struct uhmm *h)
{
	pthread_mutex_lock(&h->wq_lock);
	h->wq_stop = true;
	pthread_cond_broadcast(&h->wq_cond);
	pthread_mutex_unlock(&h->wq_lock);
	for (int i = 0; i < h->nworkers; i++)
		pthread_join(h->workers[i], NULL);
}

static void workers_free(struct uhmm *h)
{
	h->nworkers = 0;
	pthread_cond_destroy(&h->wq_cond);
	pthread_mutex_destroy(&h->wq_lock);
}

static const int notify_event[] = {
	[WK_REMOVE] = UHMM_NOTIFY_DISCARD,
	[WK_UNMAP] = UHMM_NOTIFY_UNMAP,
	[WK_REMAP] = UHMM_NOTIFY_REMAP,
};

static int event_try(struct uhmm *h, struct work *wk)
{
	int ret;

	switch (wk->type) {
	case WK_REMOVE:
	case WK_UNMAP:
		if (wk->type == WK_UNMAP && wk->at == wk->a && absorb_take(h, wk->a, wk->b))
			return 0;
		if (wk->type == WK_REMOVE && !zapped(h, wk))
			return -EAGAIN; /* looked at again within a millisecond */
		streams_forget(h->streams, wk->a, wk->b);
		streams_forget(h->zstreams, wk->a, wk->b);
		uhmm__rd_enter(h);
		ret = for_each_word(h, &wk->at, wk->b, discard_one, NULL);
		uhmm__rd_exit(h);
		if (!ret && wk->type == WK_UNMAP)
			uhmm__remove_ranges(h, wk->a, wk->b);
		return ret;
	case WK_REMAP:
		return remap_try(h, wk);
	}
	return 0;
}

static int work_try(struct uhmm *h, struct work *wk, bool remap_pending)
{
	int ret;

	if (wk->type != WK_FAULT) {
		/* Devices stop using the old CPU side before its pages are released. */
		if (!wk->inv) {
			uintptr_t end = wk->type == WK_REMAP ? wk->a + wk->len : wk->b;

			wk->inv = uhmm__invalidate_start(h, wk->a, end, notify_event[wk->type], NULL);
		}
		ret = event_try(h, wk);
		if (!ret)
			uhmm__invalidate_end(h, wk->inv);
		return ret;
	}
	switch (wk->type) {
	case WK_FAULT:
		/*
		 * A page on a device goes to a fault worker: a slow or stuck
		 * driver then holds up that fault only, never the reading of
		 * the userfaultfd nor faults on other devices' pages.
		 */
		if (fault_to_worker(h, wk->a, wk->write, wk->ptid))
			return 0;
		ret = uhmm__serve(h, wk->a, wk->write, SERVE_WAKE);
		if (ret == -EHWPOISON)
			return 0; /* the marker answers the toucher */
		if (ret == -EBUSY || ret == -ENOMEM)
			return -EAGAIN; /* no worker to wait for memory: tried again later */
		if (ret == -EAGAIN) {
			wk->after_events = true;
			return -EAGAIN;
		}
		if (ret != -ENOENT)
			return ret;
		/*
		 * No range covers it: the new side of an mremap whose event is
		 * still to come, or registered memory uhmm does not track (the
		 * grown tail of an mremap). The kernel holds every fill back
		 * (EAGAIN) from before an mremap moves page tables until its
		 * event is read: a fill that succeeds, with no remap in hand,
		 * fills an ordinary hole.
		 */
		if (remap_pending) {
			wk->after_events = true;
			return -EAGAIN;
		}
		if (uhmm__uffd_zeropage(h->uffd, wk->a, PAGE_SIZE, true) == -EAGAIN) {
			wk->after_events = true;
			return -EAGAIN;
		}
		uhmm__uffd_wake(h->uffd, wk->a, PAGE_SIZE);
		return 0;
	}
	return 0;
}

/*
 * Run the queue in order. Events keep their order among themselves and with
 * the faults behind them; a fault waiting for a page lock holds up nobody.
 * Returns whether events remain.
 */
/* The ranges an event changes (a remap: the old side and the new). */
static int event_ranges(const struct work *wk, uintptr_t r[2][2])
{
	if (wk->type == WK_REMAP) {
		r[0][0] = wk->a;
		r[0][1] = wk->a + wk->len;
		r[1][0] = wk->b;
		r[1][1] = wk->b + wk->len;
		return 2;
	}
	r[0][0] = wk->a;
	r[0][1] = wk->b;
	return 1;
}

#define MAX_HELD 8

static bool work_run(struct uhmm *h, struct work *q, size_t *n, bool faults_only)
{
	size_t k = 0, remaps = 0, events = 0;
	bool blocked = false;
	/* Ranges of events that could not run: faults there wait behind them. */
	uintptr_t held[MAX_HELD][2];
	int nheld = 0;

	for (size_t i = 0; i < *n; i++) {
		remaps += q[i].type == WK_REMAP;
		events += q[i].type != WK_FAULT;
	}
	for (size_t i = 0; i < *n; i++) {
		struct work *wk = &q[i];

		/*
		 * While a fork is under way nothing runs but the reading: events
		 * allocate, and faults call drivers (notifiers) that may free; a
		 * thread inside an allocator that fork does not lock (a sanitizer's)
		 * at the instant of the fork would leave its lock held in the child.
		 */
		if (faults_only)
			blocked = true;
		/* A fault an event held up waits until that event (read since) is handled. */
		if (!blocked && wk->after_events && events) {
			q[k++] = *wk;
			continue;
		}
		wk->after_events = false;
		/*
		 * Behind an event that must wait (a page it needs is locked, by
		 * a stuck migration say), events wait in order; a fault waits
		 * only if that event changes its page, so that others are served.
		 */
		if (blocked && !faults_only && wk->type == WK_FAULT && nheld <= MAX_HELD) {
			bool hit = false;

			for (int j = 0; j < nheld; j++)
				hit |= wk->a >= held[j][0] && wk->a < held[j][1];
			if (!hit) {
				if (work_try(h, wk, remaps > 0))
					q[k++] = *wk;
				continue;
			}
		}
		if (!blocked) {
			int ret = work_try(h, wk, remaps > 0);

			if (!ret) {
				if (wk->type != WK_FAULT)
					UHMM_STAT_ADD(h, events, 1);
				if (wk->type == WK_REMAP) {
					remaps--;
					atomic_fetch_sub(&h->remaps_pending, 1);
				}
				if (wk->type != WK_FAULT) {
					atomic_fetch_sub(&h->events_pending, 1);
					if (wk->pev >= 0)
						atomic_store(&h->pev[wk->pev].used, 0);
					else
						atomic_fetch_sub(&h->pev_overflow, 1);
				}
				continue;
			}
			if (wk->type != WK_FAULT)
				blocked = true;
		}
		if (blocked && wk->type != WK_FAULT) {
			uintptr_t r[2][2];
			int m = event_ranges(wk, r);

			for (int j = 0; j < m; j++) {
				if (nheld < MAX_HELD) {
					held[nheld][0] = r[j][0];
					held[nheld][1] = r[j][1];
				}
				nheld++; /* past MAX_HELD: every fault waits */
			}
		}
		q[k++] = *wk;
	}
	*n = k;
	for (size_t i = 0; i < k; i++)
		if (q[i].type != WK_FAULT)
			return true;
	return false;
}

static void work_add(struct uhmm *h, struct work *q, size_t *n, const struct uffd_msg *m)
{
	struct work wk = { 0 };

	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		wk.type = WK_FAULT;
		wk.a = m->arg.pagefault.address & PAGE_MASK;
		wk.write = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
		wk.ptid = m->arg.pagefault.feat.ptid;
		break;
	case UFFD_EVENT_REMOVE:
	case UFFD_EVENT_UNMAP:
		wk.type = m->event == UFFD_EVENT_REMOVE ? WK_REMOVE : WK_UNMAP;
		wk.a = wk.at = m->arg.remove.start;
		wk.b = m->arg.remove.end;
		break;
	case UFFD_EVENT_FORK:
		/* At once: the forking thread's pthread_atfork handler waits for it. */
		uhmm__fork_event(h, (int)m->arg.fork.ufd);
		return;
	case UFFD_EVENT_REMAP:
		atomic_fetch_add(&h->remaps_pending, 1);
		wk.type = WK_REMAP;
		wk.a = m->arg.remap.from;
		wk.b = m->arg.remap.to;
		wk.len = m->arg.remap.len;
		break;
	default:
		return;
	}
	if (wk.type != WK_FAULT) {
		uintptr_t r[2][2];
		int nr = event_ranges(&wk, r);

		uhmm__trace("*event", wk.a, (wk.type == WK_REMAP ? wk.a + wk.len : wk.b) - wk.a,
			    (uint64_t)wk.type);
		atomic_fetch_add(&h->events_pending, 1);
		wk.pev = -1;
		for (int i = 0; i < MAX_PEV && wk.pev < 0; i++) {
			int free_slot = 0;

			if (atomic_load(&h->pev[i].used) ||
			    !atomic_compare_exchange_strong(&h->pev[i].used, &free_slot, 2))
				continue;
			for (int j = 0; j < 2; j++)
				for (int k = 0; k < 2; k++)
					atomic_store_explicit(&h->pev[i].r[j][k], r[j][k],
							      memory_order_relaxed);
			atomic_store_explicit(&h->pev[i].n, nr, memory_order_relaxed);
			atomic_store_explicit(&h->pev[i].used, 1, memory_order_release);
			wk.pev = i;
		}
		if (wk.pev < 0)
			atomic_fetch_add(&h->pev_overflow, 1);
	}
	q[(*n)++] = wk;
}

static void *svc_main(void *arg)
{
	struct uhmm *h = arg;
	struct work *q = calloc(MAX_WORK, sizeof(*q));
	size_t nq = 0;
	struct uffd_msg msgs[64];
	sigset_t all;
	bool events_left = false;
	struct timespec probed = { 0 }, t_spin = { 0 }, trimmed = { 0 };

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	uhmm__in_svc = 1;

	while (q && !atomic_load(&h->stop)) {
		struct pollfd pfd[3 + MAX_CHILDREN + 8] = {
			{ .fd = h->uffd, .events = POLLIN },
			{ .fd = h->wake_fd, .events = POLLIN },
			{ .fd = uhmm__kick_fd, .events = POLLIN },
		};
		int nfd = 3 + uhmm__children_pollfds(h, pfd + 3, MAX_CHILDREN + 8);
		uint64_t req, junk;
		struct timespec now;
		int ms = nq ? 1 : nfd > 3 ? 100 : -1;
		bool kept = atomic_load(&h->staging.nkept) != 0;

		/* Read only while the queue has room: the kernel holds the rest. */
		if (nq + 64 > MAX_WORK)
			pfd[0].fd = -1;
		/*
		 * With children, look every 100 ms whether they are still
		 * there; with pages kept for the way home, every POOL_KEEP_MS
		 * whether they went unused that long (then they are freed).
		 */
		if (kept && (ms < 0 || ms > POOL_KEEP_MS))
			ms = POOL_KEEP_MS;
		if (poll(pfd, (nfds_t)nfd, ms) < 0 && errno != EINTR)
			break;
		if (atomic_load(&h->stop))
			break;
		/* Not at every fault: the look at each kept chunk cost 0.3 us a fault. */
		if (kept && ms_since(&trimmed) >= POOL_KEEP_MS / 10) {
			uhmm__pool_trim(&h->staging, false);
			clock_gettime(CLOCK_MONOTONIC, &trimmed);
		}
		if (pfd[1].revents & POLLIN)
			(void)!read(h->wake_fd, &junk, sizeof(junk));
		if (pfd[2].revents & POLLIN)
			(void)!read(uhmm__kick_fd, &junk, sizeof(junk));
		/* Taken before the kick that woke us: no lock on every fault's way. */
		req = atomic_load(&h->sync_req);

		/*
		 * A fork is under way: glibc holds the malloc locks until the
		 * kernel has handed over the fork event, which this thread
		 * reads. Read (the fork event takes preallocated memory), and
		 * leave faults, events and children, which may allocate, until
		 * fork returns (a moment later).
		 */
		if (atomic_load(&h->fork_pending) && !atomic_load(&h->fork_quiet))
			atomic_store(&h->fork_quiet, 1);
		for (bool ready = pfd[0].revents & POLLIN; nq + 64 <= MAX_WORK; ready = false) {
			ssize_t got;

			/*
			 * Read only what is there: each read holds up pages
			 * going home for a moment (below), and one that finds
			 * nothing would hold them up for nothing.
			 */
			if (!ready) {
				struct pollfd one = { .fd = h->uffd, .events = POLLIN };

				if (poll(&one, 1, 0) != 1 || !(one.revents & POLLIN))
					break;
			}
			/* An event's thread runs again inside read(): flag it before. */
			atomic_fetch_add(&h->read_gen, 1);
			/*
			 * Pages going home look at the events read so far: the
			 * installs under way end first (new ones wait for this
			 * read), so none crosses an event read in between.
			 */
			for (int i = 0; atomic_load(&h->installing); i++) {
				if (i < 200)
					__builtin_ia32_pause();
				else
					sched_yield();
			}
			got = read(h->uffd, msgs, sizeof(msgs));
			for (size_t i = 0; got > 0 && i < (size_t)got / sizeof(msgs[0]); i++)
				work_add(h, q, &nq, &msgs[i]);
			atomic_fetch_add(&h->read_gen, 1);
			/*
			 * Events in hand: handle them before reading more. Each
			 * read releases the event's thread, which may cause the
			 * next at once (mremap in a loop); reading on would pile
			 * up events unhandled past their slots, and a fault waits
			 * behind every event whose range it cannot see. A read
			 * that did not fill the buffer took all there was: what
			 * comes next wakes the poll above (no second poll per
			 * fault to find nothing).
			 */
			if (got < (ssize_t)sizeof(msgs) || atomic_load(&h->events_pending))
				break;
		}
		events_left = work_run(h, q, &nq, atomic_load(&h->fork_pending));
		/*
		 * Faults refused (EAGAIN) because the thread of the event just
		 * read has not yet run to end it (the kernel's mmap_changing
		 * drops only then): let it run and try again for a moment. Else
		 * a thread that mremaps in a loop would start its next mremap
		 * before each retry, and faults would wait for its last one.
		 */
		if (!events_left && refused(q, nq))
			clock_gettime(CLOCK_MONOTONIC, &t_spin);
		while (!events_left && refused(q, nq) && !atomic_load(&h->fork_pending) &&
		       us_since(&t_spin) < SVC_RETRY_US) {
			sched_yield();
			events_left = work_run(h, q, &nq, false);
		}
		if (!atomic_load(&h->fork_pending) && (h->children || atomic_load(&h->child_flush))) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			uhmm__children_run(h, ms_since(&probed) >= 100);
			if (ms_since(&probed) >= 100)
				probed = now;
		}

		/* sync_done changes only here (this thread): read without the lock. */
		if (!events_left && h->sync_done < req) {
			pthread_mutex_lock(&h->sync_lock);
			h->sync_done = req;
			pthread_cond_broadcast(&h->sync_cond);
			pthread_mutex_unlock(&h->sync_lock);
		}
	}
	for (size_t i = 0; q && i < nq; i++)
		if (q[i].nwords)
			munmap((void *)q[i].nwords, q[i].nlen);
	free(q);
	uhmm__children_fini(h);
	/* Nobody waits for a sync any more. */
	pthread_mutex_lock(&h->sync_lock);
	h->sync_done = UINT64_MAX;
	pthread_cond_broadcast(&h->sync_cond);
	pthread_mutex_unlock(&h->sync_lock);
	return NULL;
}

int uhmm__svc_start(struct uhmm *h)
{
	int ret;

	h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->wake_fd < 0)
		return -errno;
	/* Workers first: the service thread reads h->nworkers. */
	workers_start(h);
	ret = pthread_create(&h->svc, NULL, svc_main, h);
	if (ret) {
		workers_stop(h);
		workers_free(h);
		close(h->wake_fd);
		h->wake_fd = -1;
		return -ret;
	}
	h->svc_started = 1;
	return 0;
}

void uhmm__svc_kick(struct uhmm *h)
{
	uint64_t one = 1;

	(void)!write(h->wake_fd, &one, sizeof(one));
}

void uhmm__svc_stop(struct uhmm *h)
{
	if (!h->svc_started)
		return;
	workers_stop(h);
	atomic_store(&h->stop, 1);
	uhmm__svc_kick(h);
	pthread_join(h->svc, NULL);
	workers_free(h);
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
	t = atomic_fetch_add(&h->sync_req, 1) + 1;
	uhmm__svc_kick(h);
	while (h->sync_done < t)
		pthread_cond_wait(&h->sync_cond, &h->sync_lock);
	pthread_mutex_unlock(&h->sync_lock);
	return 0;
}

int uhmm_sync(struct uhmm *h)
{
	int ret = uhmm__usable(h);

	if (ret)
		return ret;
	return uhmm__sync(h);
}
