/* SPDX-License-Identifier: MIT */
/*
 * migrate.c - the three-step migration (the kernel's migrate_vma_*) and the
 * helpers built on it.
 *
 * Taking a page from the CPU is UFFDIO_MOVE of its page-table entry into a
 * staging chunk registered with the same userfaultfd: atomic with respect to
 * CPU access (a touch now faults and waits for the page lock), and zero-copy.
 * Only pages that hold data move (never ALLOW_SRC_HOLES, see take_system):
 * every page is tried, and pagemap is read only once a move fails; what
 * moved is known from the moves, so empty pages reach the device without a
 * CPU copy. Pages come home with UFFDIO_COPY from a bounce chunk, or are
 * copied into staging pages a migration out left (kept, see struct pool) and
 * moved into place; a waiting toucher is woken after. Both ways are batched
 * over contiguous runs.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* src[] bits private to the core (within UHMM_MIGRATE_FLAGS_MASK). */
#define S_HELD 0x10ULL /* this migration holds the page lock */
#define S_AUX 0x20ULL  /* held: the page moved (done); not held: shared after fork */
#define S_DONE S_AUX
#define S_SHARED S_AUX

/* Internal selection flags: any owner (the core's own helpers). */
#define SELECT_ANY_OWNER (1U << 30)
/* Leave duplicated pages of this device (or owner) duplicated (uhmm_duplicate). */
#define SELECT_KEEP_DUP (1U << 29)
/*
 * Exclusive access (uhmm_make_exclusive): the invalidation says EXCLUSIVE
 * with pgmap_owner, the caller's owner; pages pinned by the thrashing control
 * are taken too (the device asked for them, not a fault).
 */
#define SELECT_EXCLUSIVE (1U << 28)

enum { P_STAGING, P_BOUNCE, P_RANGE, P_STATE, P_ONLY, P_FAULT };

#define KEEP_MIN_PAGES 32 /* the fewest staged pages a chunk is kept for (see finalize) */
/* priv[P_STATE] bits */
#define ST_SETUP 1UL /* between setup and finalize */
#define ST_INV 2UL   /* an invalidation was started: finalize ends it */
#define ST_OUT 4UL   /* counted as a migration to a device (a fork waits for it) */
#define ST_DUP 8UL   /* device to system keeps the device page as a read-only copy */

static uintptr_t page_addr(const struct uhmm_migrate *a, unsigned long i)
{
	return a->start + (i << PAGE_SHIFT);
}

static _Atomic uint64_t *mig_word(const struct uhmm_migrate *a, unsigned long i)
{
	return uhmm__word((struct range *)a->priv[P_RANGE], page_addr(a, i));
}

static bool is_fault_page(const struct uhmm_migrate *a, unsigned long i)
{
	/* Not fault_page->addr: committing the page home clears it. */
	return a->fault_page && a->priv[P_FAULT] == page_addr(a, i);
}

const void *uhmm_migrate_src_data(const struct uhmm_migrate *a, unsigned long i)
{
	uint64_t s;

	if (!a || i >= a->npages)
		return NULL;
	s = a->src[i];
	if ((s & UHMM_MIGRATE_VALID) && !(s & UHMM_MIGRATE_DEVICE))
		return (const void *)(uintptr_t)(s & ~UHMM_MIGRATE_FLAGS_MASK);
	return NULL;
}

void *uhmm_migrate_sysbuf(const struct uhmm_migrate *a, unsigned long i)
{
	if (!a || i >= a->npages || !a->priv[P_BOUNCE])
		return NULL;
	return (char *)a->priv[P_BOUNCE] + (i << PAGE_SHIFT);
}

/*
 * UFFDIO_MOVE moves only between writable mappings. A run of read-only
 * private memory (mprotect) is made writable for the move and read-only
 * again at once; the pages are locked and, on the CPU side, holes during
 * it, so nothing can write them meanwhile except a racing CPU store to a
 * page still present, which the kernel would have refused. Returns the
 * bytes moved, or -errno as uhmm__uffd_move.
 */
static long move_readonly(int uffd, uintptr_t dst, uintptr_t src, size_t len, uintptr_t managed)
{
	uintptr_t vend;
	long got;
	int prot = uhmm__vma_prot(managed, &vend);

	if (prot != PROT_READ)
		return -EINVAL; /* writable (then not the reason), PROT_NONE, or gone */
	if (len > vend - managed)
		len = vend - managed;
	if (mprotect((void *)managed, len, PROT_READ | PROT_WRITE))
		return -EINVAL;
	got = uhmm__uffd_move(uffd, dst, src, len);
	mprotect((void *)managed, len, PROT_READ);
	return got;
}

/*
 * Whether the locked page at @src went to its (empty) staging slot although
 * UFFDIO_MOVE answered EEXIST. Linux 6.18 does this now and then to a page
 * that was just made exclusive again after fork (MADV_POPULATE_WRITE): it
 * moves the page, retries its own finished move and reports the slot as
 * taken. Nobody else moves a page we hold locked, so a hole where the page
 * was means it moved, and its data (if any) is in the slot. Taking the
 * answer at its word would unlock the page as present while its data sits
 * in staging, to be discarded: the stress test read such pages as zeros.
 */
static bool moved_anyway(uintptr_t src)
{
	unsigned char v;

	return !uhmm__pages_with_data(src, 1, &v) && !v;
}

/*
 * Move the CPU pages collected in src[] (HELD|MIGRATE, no address yet) into
 * the staging chunk, run by run.
 */
static void take_system(struct uhmm_migrate *a)
{
	struct uhmm *h = a->h;
	unsigned long n = a->npages, i = 0, j;
	/* At the chunk's end: a chunk holds kept pages from some page to its end. */
	char *stg = uhmm__pool_get(&h->staging) + ((CHUNK_PAGES - n) << PAGE_SHIFT);
	unsigned char vec[UHMM_MIGRATE_MAX_PAGES], have[UHMM_MIGRATE_MAX_PAGES] = { 0 };
	bool looked = false;

	a->priv[P_STAGING] = (uintptr_t)stg;
	/*
	 * Move only the pages that hold data, never with ALLOW_SRC_HOLES: on
	 * Linux 6.18 a MOVE that allows holes, racing an MADV_DONTNEED of its
	 * source, can spin in the kernel for ever (tools/repro/move_vs_dontneed.c;
	 * without holes it does not). A hole stays a hole (a touch of it faults
	 * and waits for our lock) and reaches the device as an empty page; a
	 * page discarded since pagemap looked is a hole by the time MOVE finds
	 * it (ENOENT). Every page is tried first: a chunk without holes moves
	 * in one ioctl and pagemap is never read (two reads a chunk were more
	 * than the moves: 12 ms a GiB). At the first failure but EAGAIN (a
	 * hole; or EBUSY, EEXIST, EINVAL, which then cost one look and one
	 * ioctl more), one look at the whole chunk: pages held apart from each
	 * other (every other one on the device already, say) would otherwise
	 * cost an ioctl each.
	 */
	memset(vec, 1, n);
	while (i < n) {
		if (a->src[i] != (S_HELD | UHMM_MIGRATE_MIGRATE)) {
			i++;
			continue;
		}
		for (j = i; j < n && a->src[j] == (S_HELD | UHMM_MIGRATE_MIGRATE); j++)
			;
		while (i < j) {
			unsigned long k;
			long got;

			if (!(vec[i] & 1)) {
				i++;
				continue;
			}
			for (k = i; k < j && (vec[k] & 1); k++)
				;
			got = uhmm__uffd_move(h->uffd_stg, (uintptr_t)stg + (i << PAGE_SHIFT),
					      page_addr(a, i), (k - i) << PAGE_SHIFT);
			uhmm__trace("*take", page_addr(a, i), got > 0 ? (uint64_t)got : PAGE_SIZE,
				    (uint64_t)got);
			if (got == -EEXIST && moved_anyway(page_addr(a, i)))
				got = PAGE_SIZE;
			if (got > 0) {
				memset(have + i, 1, (unsigned long)got >> PAGE_SHIFT);
				i += (unsigned long)got >> PAGE_SHIFT;
				continue;
			}
			if (got != -EAGAIN && !looked) {
				/*
				 * A hole (ENOENT; EINVAL where the source was never
				 * touched): see where the others are, and go on
				 * from here as if we had looked first.
				 */
				looked = true;
				if (uhmm__pages_with_data(page_addr(a, 0), n, vec))
					memset(vec, 1, n); /* cannot tell: try every page */
				continue;
			}
			if (got == -ENOENT) {
				i++; /* a hole now: discarded meanwhile */
				continue;
			}
			if (got == -EAGAIN) {
				sched_yield();
				continue;
			}
			if (got == -EINVAL)
				got = move_readonly(h->uffd_stg, (uintptr_t)stg + (i << PAGE_SHIFT),
						    page_addr(a, i), (k - i) << PAGE_SHIFT, page_addr(a, i));
			if (got > 0) {
				memset(have + i, 1, (unsigned long)got >> PAGE_SHIFT);
				i += (unsigned long)got >> PAGE_SHIFT;
				continue;
			}
			/*
			 * EBUSY: the page is shared (a forked child holds it):
			 * leave it, the helpers make it exclusive and retry.
			 * Anything else (the mapping vanished or changed):
			 * leave the page where it is.
			 */
			uhmm__trace("take-fail", page_addr(a, i), atomic_load(mig_word(a, i)), (uint64_t)got);
			uhmm__unlock(mig_word(a, i), atomic_load(mig_word(a, i)));
			a->src[i] = got == -EBUSY ? UHMM_MIGRATE_BUSY | S_SHARED : 0;
			i++;
		}
	}
	/* What moved is in staging, nothing else: staging is ours alone. */
	for (i = 0; i < n; i++) {
		if (a->src[i] != (S_HELD | UHMM_MIGRATE_MIGRATE))
			continue;
		uhmm__trace("staged", page_addr(a, i), have[i], (uintptr_t)stg + (i << PAGE_SHIFT));
		if (have[i])
			a->src[i] |= UHMM_MIGRATE_VALID | ((uintptr_t)stg + (i << PAGE_SHIFT));
		a->cpages++;
	}
}

/* Whether [start, end) is still managed (an unmanage may have finished meanwhile). */
static bool still_managed(const struct uhmm_migrate *a)
{
	struct range *r = uhmm__lookup(a->h, a->start);

	return r && a->end <= r->end;
}

int uhmm_migrate_setup(struct uhmm_migrate *a)
{
	struct uhmm *h;
	struct range *r;
	unsigned long n, i;
	bool sys, dev, any_sys = false, any_dev = false;
	struct uhmm_devmem *only;

	if (!a || !a->h || !a->src || !a->dst)
		return -EINVAL;
	h = a->h;
	/*
	 * Not `closed`: uhmm_close itself, and a fault it waits for, still
	 * migrate pages home. A forked child's inherited handle may not.
	 */
	if (atomic_load(&h->in_child))
		return -ESHUTDOWN;
	sys = a->flags & UHMM_MIGRATE_SELECT_SYSTEM;
	dev = a->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
	if (((a->start | a->end) & ~PAGE_MASK) || a->start >= a->end || (!sys && !dev) ||
	    (a->flags & ~(UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_SELECT_DEVICE_PRIVATE |
			  SELECT_ANY_OWNER | SELECT_KEEP_DUP | SELECT_EXCLUSIVE)))
		return -EINVAL;
	n = (a->end - a->start) >> PAGE_SHIFT;
	if (n > UHMM_MIGRATE_MAX_PAGES)
		return -EINVAL;
	if (sys && a->fault_page)
		return -EINVAL; /* the fault path only brings pages home */
	if (sys && uhmm_can_migrate(h))
		return -EOPNOTSUPP;
	/* See the events that already happened (a discard) before choosing pages. */
	if (!a->fault_page)
		uhmm__events_settle(h, a->start, a->end);
	/* Taking pages from the CPU waits out a fork in progress (fork.c). */
	if (sys)
		uhmm__out_begin(h);
	only = (struct uhmm_devmem *)a->priv[P_ONLY];
	for (i = 0; i < P_ONLY; i++)
		a->priv[i] = 0;
	a->npages = n;
	a->cpages = 0;
	for (i = 0; i < n; i++)
		a->src[i] = a->dst[i] = 0;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, a->start);
	if (!r || a->end > r->end || (sys && uhmm__leaving(h, a->start, a->end))) {
		uhmm__rd_exit(h);
		if (sys)
			uhmm__out_end(h);
		return -ENOENT;
	}
	a->priv[P_RANGE] = (uintptr_t)r;
	/* Devices mirroring the range drop their view before pages move. */
	a->priv[P_STATE] = ST_SETUP | (sys ? ST_OUT : 0) |
			   (uhmm__invalidate_start(h, a->start, a->end,
						   a->flags & SELECT_EXCLUSIVE ? UHMM_NOTIFY_EXCLUSIVE :
										 UHMM_NOTIFY_MIGRATE,
						   a->pgmap_owner) ?
				    ST_INV :
				    0);
	a->priv[P_FAULT] = a->fault_page ? uhmm_page_addr(a->fault_page) : 0;
	/* The fault path asked for a read-only duplicate (a read of read-mostly memory). */
	if (a->fault_page && uhmm__fault_dup)
		a->priv[P_STATE] |= ST_DUP;

	for (i = 0; i < n; i++) {
		_Atomic uint64_t *w = mig_word(a, i);
		uint64_t v = atomic_load(w);
		struct uhmm_page *page;

		if (is_fault_page(a, i)) {
			/* Locked by the fault path that called the driver. */
			if (w_kind(v) == W_DEVICE && uhmm__word_page(h, v) == a->fault_page) {
				a->src[i] = uhmm_migrate_dst_device(a->fault_page) |
					    UHMM_MIGRATE_MIGRATE | S_HELD;
				a->cpages++;
				any_dev = true;
			}
			continue;
		}
		/* Look before locking: untouched words stay untouched. */
		if (!(sys && w_kind(v) == W_CPU) && !(dev && w_kind(v) == W_DEVICE) &&
		    w_kind(v) != W_DUP)
			continue;
		if (!uhmm__trylock(w, &v)) {
			a->src[i] = UHMM_MIGRATE_BUSY;
			continue;
		}
		if (w_kind(v) == W_DUP) {
			/*
			 * A duplicated page: its data is home already. Taking
			 * it away, or the core bringing its copy's region home
			 * (eviction, removal, unmanage, uhmm_migrate_to_ram),
			 * ends the duplication; otherwise it stays.
			 */
			page = uhmm__word_page(h, v);
			if ((a->flags & SELECT_KEEP_DUP) && page &&
			    (only ? page->devmem == only : page->owner == a->pgmap_owner)) {
				uhmm__unlock(w, v);
				continue;
			}
			/* Drivers' own migrations home (a fault's window) leave copies be. */
			if (sys || (page && (!only || page->devmem == only) &&
				    (a->flags & SELECT_ANY_OWNER) && !a->fault_page)) {
				v = uhmm__dup_drop(h, w, page_addr(a, i), v, true);
			}
			if (!sys || w_kind(v) != W_CPU) {
				uhmm__unlock(w, v);
				continue;
			}
		}
		if (sys && w_kind(v) == W_CPU) {
			/* A page pinned for thrashing stays; devices reach it where it is. */
			if (!(a->flags & SELECT_EXCLUSIVE) && uhmm__thrash_pinned(h, v)) {
				uhmm__unlock(w, v);
				continue;
			}
			a->src[i] = S_HELD | UHMM_MIGRATE_MIGRATE;
			uhmm__trace("lock-cpu", page_addr(a, i), v, 0);
			any_sys = true;
			continue;
		}
		page = w_kind(v) == W_DEVICE ? uhmm__word_page(h, v) : NULL;
		if (dev && page && (!only || page->devmem == only) &&
		    ((a->flags & SELECT_ANY_OWNER) || page->owner == a->pgmap_owner)) {
			a->src[i] = uhmm_migrate_dst_device(page) | UHMM_MIGRATE_MIGRATE | S_HELD;
			a->cpages++;
			any_dev = true;
			continue;
		}
		uhmm__unlock(w, v);
	}
	/*
	 * Checked again now that the pages are locked: an uhmm_unmanage that
	 * began meanwhile has either seen our locks (and waits for them) or
	 * is seen here; either way no page leaves memory that is leaving.
	 */
	if (any_sys && (uhmm__leaving(h, a->start, a->end) || !still_managed(a))) {
		uhmm_migrate_finalize(a);
		return -ENOENT;
	}
	if (any_sys)
		take_system(a);
	if (any_dev)
		a->priv[P_BOUNCE] = (uintptr_t)(uhmm__in_svc ? h->svc_bounce :
							      uhmm__pool_get(&h->bounce));
	return 0;
}

/*
 * Counts of the pages committed to devices by one uhmm_migrate_pages call,
 * added once at its end (before anything is unlocked): a handful of atomic
 * adds and a clock read per page were most of the commit (9 ms a GiB).
 */
struct commit_acc {
	struct uhmm_devmem *dm; /* whose counts these are */
	unsigned long to, out;
	uint64_t tick, tick_end; /* ages taken for the call */
	uint64_t stamp;		 /* the time for the thrashing control; 0: not read */
};

static void acc_flush(struct uhmm_migrate *a, struct commit_acc *c)
{
	if (c->to) {
		atomic_fetch_add(&c->dm->resident, c->to);
		atomic_fetch_add(&c->dm->st_to, c->to);
		uhmm__ctr_add((struct range *)a->priv[P_RANGE], CTR_TO, c->to);
	}
	if (c->out)
		UHMM_STAT_ADD(a->h, pages_out, c->out);
	c->to = c->out = 0;
}

/* Commit page i into the device page named by dst[i]. */
static void commit_device(struct uhmm_migrate *a, unsigned long i, struct commit_acc *c)
{
	struct uhmm *h = a->h;
	struct uhmm_page *np = uhmm_migrate_entry_page(a->dst[i]);
	_Atomic uint64_t *w = mig_word(a, i);
	uint64_t old = atomic_load(w);

	if (!np || np->devmem->h != h || __atomic_load_n(&np->refcount, __ATOMIC_RELAXED) <= 0) {
		a->src[i] &= ~UHMM_MIGRATE_MIGRATE;
		return;
	}
	if (np->devmem != c->dm) {
		acc_flush(a, c);
		c->dm = np->devmem;
	}
	if (c->tick == c->tick_end) {
		/* Ages for the rest of the call at once: page order within it. */
		c->tick = atomic_fetch_add(&h->tick, a->npages - i);
		c->tick_end = c->tick + (a->npages - i);
	}
	if (!c->stamp)
		c->stamp = uhmm__thrash_stamp();
	/*
	 * The policies read the ages without a lock (policy.c, victim_key):
	 * set them before the address, which publishes the page to them.
	 */
	__atomic_store_n(&np->birth, c->tick, __ATOMIC_RELAXED);
	__atomic_store_n(&np->last_use, c->tick++, __ATOMIC_RELAXED);
	uhmm__page_set_addr(np, page_addr(a, i));
	c->to++;
	uhmm__word_set_locked(w, w_device(np->devmem->slot, np->pfn) |
					 uhmm__thrash_out(old, c->stamp));
	if (a->src[i] & UHMM_MIGRATE_DEVICE)
		uhmm__release_word(h, old);
	else
		c->out++;
	a->src[i] |= S_DONE;
	uhmm__trace("commit-dev", page_addr(a, i), old, a->src[i]);
}

static bool to_system(const struct uhmm_migrate *a, unsigned long i)
{
	uint64_t s = a->src[i], d = a->dst[i];

	return (s & S_HELD) && (s & UHMM_MIGRATE_MIGRATE) && (s & UHMM_MIGRATE_DEVICE) &&
	       !(s & S_DONE) && (d & UHMM_MIGRATE_VALID) && !(d & UHMM_MIGRATE_DEVICE);
}

/*
 * Where page i's data comes home from: the address the driver gave in dst[i]
 * (device memory the CPU can read), or the system buffer it copied into.
 */
static uintptr_t home_src(const struct uhmm_migrate *a, unsigned long i)
{
	uintptr_t d = (uintptr_t)(a->dst[i] & ~UHMM_MIGRATE_FLAGS_MASK);

	return d ? d : (uintptr_t)uhmm_migrate_sysbuf(a, i);
}

/* The device page of page i is dead and its data is home (or gone with its mapping). */
static void commit_system(struct uhmm_migrate *a, unsigned long i)
{
	_Atomic uint64_t *w = mig_word(a, i);
	uint64_t old = atomic_load(w);
	struct uhmm_page *page = uhmm__word_page(a->h, old);

	if (page)
		atomic_fetch_add(&page->devmem->st_from, 1);
	uhmm__ctr_add((struct range *)a->priv[P_RANGE], CTR_FROM, 1);
	/* The bounce history stays with the page (a fault updates it, serve()). */
	uhmm__word_set_locked(w, W_CPU | (old & (W_TCOUNT_MASK | W_TTIME_MASK)));
	uhmm__release_word(a->h, old);
	UHMM_STAT_ADD(a->h, pages_home, 1);
	a->src[i] |= S_DONE;
	uhmm__trace("commit-sys", page_addr(a, i), old, 0);
}

/*
 * Page i is home, write-protected, and its device page stays as a read-only
 * copy (uhmm_duplicate): W_DUP, the same device page.
 */
static void commit_dup(struct uhmm_migrate *a, unsigned long i)
{
	_Atomic uint64_t *w = mig_word(a, i);
	uint64_t old = atomic_load(w);
	struct uhmm_page *page = uhmm__word_page(a->h, old);

	atomic_fetch_sub(&page->devmem->resident, 1);
	atomic_fetch_add(&page->devmem->dups, 1);
	atomic_fetch_add(&page->devmem->st_duplicated, 1);
	/* The data did come home (a copy stayed): counted as any page home. */
	atomic_fetch_add(&page->devmem->st_from, 1);
	uhmm__ctr_add((struct range *)a->priv[P_RANGE], CTR_FROM, 1);
	UHMM_STAT_ADD(a->h, pages_home, 1);
	uhmm__word_set_locked(w, (old & ~W_KIND_MASK) | W_DUP);
	a->src[i] |= S_DONE;
	uhmm__trace("commit-dup", page_addr(a, i), old, 0);
}

/* Wake touchers of [s, e); the fault path wakes its own toucher once its page is unlocked. */
static void wake_run(struct uhmm_migrate *a, uintptr_t s, uintptr_t e)
{
	uintptr_t f = a->priv[P_FAULT];

	if (a->fault_page && f >= s && f < e) {
		if (f > s)
			uhmm__uffd_wake(a->h->uffd, s, f - s);
		if (e > f + PAGE_SIZE)
			uhmm__uffd_wake(a->h->uffd, f + PAGE_SIZE, e - f - PAGE_SIZE);
	} else {
		uhmm__uffd_wake(a->h->uffd, s, e - s);
	}
}

/*
 * UFFDIO_COPY of @len bytes from @from to @dst, never across a discard
 * (uhmm__install_begin): an event read and not yet handled over a chunk
 * stops it with -EAGAIN, the pages staying where they are. With @wp the
 * pages are installed write-protected (read duplication). *@done: bytes
 * installed from @dst on.
 */
#define INSTALL_CHUNK (2UL << 20)

/*
 * Install @len bytes from @from at @dst through pages staging kept (see
 * struct pool): copied into them, then moved into place, not waking. As
 * uhmm__uffd_copy_n (a page found present is skipped, its data kept;
 * -EAGAIN for an event unread), and 1 when no kept page is at hand or a
 * move fails otherwise: *@done bytes are installed, the rest is the
 * caller's to copy; 2 when an event read and not yet handled changes the
 * range (uhmm__install_begin): the event first. Only the moves pass the
 * install gate, not the copies before them: the service thread waits at
 * the gate before each read, and a second toucher's fault with it. A kept
 * chunk has no hole at or past its next page, so the copies into it never
 * fault on staging's userfaultfd: after a failed move the page it stopped
 * at is looked at (pagemap), as Linux 6.18 may move a page and still fail
 * (see moved_anyway). The first move of a call is one page: a destination
 * that cannot take moves (EINVAL: read-only, mlocked) then costs one page's
 * copy, not 2 MiB.
 */
static int install_kept(struct uhmm *h, uintptr_t dst, uintptr_t from, size_t len, size_t *done)
{
	bool probed = false;

	*done = 0;
	while (*done < len) {
		unsigned int first, moved;
		char *c = uhmm__pool_take_kept(&h->staging, &first), *pg;
		size_t n;
		struct uffdio_move m;
		int err = 0, hole = 0;

		if (!c)
			return 1;
		pg = c + ((size_t)first << PAGE_SHIFT);
		n = probed ? (size_t)(CHUNK_PAGES - first) << PAGE_SHIFT : PAGE_SIZE;
		if (n > len - *done)
			n = len - *done;
		probed = true;
		memcpy(pg, (const void *)(from + *done), n);
		m = (struct uffdio_move){ .dst = dst + *done, .src = (uintptr_t)pg, .len = n,
					  .mode = UFFDIO_MOVE_MODE_DONTWAKE };
		if (!uhmm__install_begin(h, m.dst, m.dst + n)) {
			uhmm__install_end(h);
			uhmm__pool_give_back(&h->staging, c, first, false);
			return 2;
		}
		if (ioctl(h->uffd, UFFDIO_MOVE, &m)) {
			err = errno;
			m.move = m.move > 0 ? m.move : 0;
		} else {
			m.move = (__s64)n;
		}
		uhmm__install_end(h);
		moved = (unsigned int)((size_t)m.move >> PAGE_SHIFT);
		/*
		 * Moved although the move failed: installed (it went nowhere
		 * else); look again from the next page. Cannot tell: free
		 * the chunk rather than risk a hole in it.
		 */
		if (err)
			hole = uhmm__has_hole((uintptr_t)pg + m.move, (uintptr_t)pg + m.move + PAGE_SIZE);
		if (hole < 0) {
			err = EIO;
		} else if (hole) {
			moved++;
			err = EAGAIN;
		}
		*done += (size_t)moved << PAGE_SHIFT;
		UHMM_STAT_ADD(h, pages_recycled, moved);
		if (err == EEXIST) {
			/* Filled meanwhile: keep its data; our page stays first in the chunk. */
			uhmm__fill_exists = 1;
			uhmm__uffd_wake(h->uffd, dst + *done, PAGE_SIZE);
			*done += PAGE_SIZE;
		} else if (err && err != EAGAIN) {
			/*
			 * EINVAL: the destination's protection or mlock differs
			 * from staging's; keep the chunk. Else not ours to move
			 * (shared, split...): free it. Copy the rest either way.
			 */
			uhmm__pool_give_back(&h->staging, c, first + moved, err != EINVAL);
			return 1;
		}
		uhmm__pool_give_back(&h->staging, c, first + moved, false);
		/* A move that got somewhere stopped at a page, not at an event: go on. */
		if (err != EAGAIN || moved)
			continue;
		if (uhmm__in_svc || uhmm__nowait) {
			uhmm__svc_eagain = 1;
			return -EAGAIN;
		}
		sched_yield();
	}
	return 0;
}

static int install_home(struct uhmm *h, uintptr_t dst, uintptr_t from, size_t len, size_t *done,
			bool wp)
{
	int ret = 0;

	*done = 0;
	while (*done < len) {
		int nowait = uhmm__nowait, svc_eagain = uhmm__svc_eagain;
		size_t chunk = len - *done < INSTALL_CHUNK ? len - *done : INSTALL_CHUNK;
		size_t kept = 0, got = 0;
		bool clear = true;

		/* An unread event refuses the fill: we must not wait for it here. */
		uhmm__nowait = 1;
		/*
		 * Through kept pages only a run of KEEP_MIN_PAGES or more: a move
		 * flushes staging's translation from every CPU that runs this
		 * process, once a call, and for a page or a few that costs more
		 * than the allocation it saves (random 4 KiB touches of device-
		 * resident memory: 7.4-7.6 us a touch through kept pages, 5.3-5.5
		 * by UFFDIO_COPY).
		 */
		ret = wp || chunk < (KEEP_MIN_PAGES << PAGE_SHIFT) ?
			      1 :
			      install_kept(h, dst + *done, from + *done, chunk, &kept);
		if (ret == 2) {
			clear = false;
		} else if (ret == 1) {
			/* The service thread waits for the gate: one 2 MiB copy at most. */
			clear = uhmm__install_begin(h, dst + *done + kept, dst + *done + chunk);
			if (clear)
				ret = wp ? uhmm__uffd_copy_wp_n(h->uffd, dst + *done + kept,
								(const void *)(from + *done + kept),
								chunk - kept, &got) :
					   uhmm__uffd_copy_n(h->uffd, dst + *done + kept,
							     (const void *)(from + *done + kept),
							     chunk - kept, false, &got);
			uhmm__install_end(h);
		}
		uhmm__nowait = nowait;
		if (clear)
			uhmm__svc_eagain = svc_eagain || (ret == -EAGAIN && uhmm__in_svc);
		*done += kept + got;
		if (!clear)
			return -EAGAIN; /* the event first */
		if (!ret)
			continue;
		if (ret != -EAGAIN || uhmm__in_svc || nowait)
			return ret;
		/*
		 * Refused: an event is unread, or read and its thread not yet
		 * back to end it (the kernel's mmap_changing drops only then).
		 * Out of the gate, the service thread reads (it goes first);
		 * let the event's thread run, and try again at once, as any
		 * fill does. Waiting here for the next read instead held
		 * faults up for thousands of yields when the event was read
		 * already: device faults in the stress test ran out of their
		 * second under load.
		 */
		sched_yield();
	}
	return ret;
}

void uhmm_migrate_pages(struct uhmm_migrate *a)
{
	struct commit_acc acc = { 0 };
	unsigned long n, i, j;

	if (!a || !(a->priv[P_STATE] & ST_SETUP))
		return;
	uhmm__fill_err = 0;
	n = a->npages;
	for (i = 0; i < n;) {
		uint64_t s = a->src[i], d = a->dst[i];

		if (!(s & S_HELD) || !(s & UHMM_MIGRATE_MIGRATE) || (s & S_DONE)) {
			i++;
			continue;
		}
		if (!(d & UHMM_MIGRATE_VALID)) {
			a->src[i] &= ~UHMM_MIGRATE_MIGRATE;
			i++;
			continue;
		}
		if (d & UHMM_MIGRATE_DEVICE) {
			commit_device(a, i++, &acc);
			continue;
		}
		if (!(s & UHMM_MIGRATE_DEVICE)) {
			a->src[i] &= ~UHMM_MIGRATE_MIGRATE; /* system to system: nothing to do */
			i++;
			continue;
		}
		/*
		 * Device to system: install the run in one ioctl, commit, then
		 * wake the touchers, so that a woken toucher finds the page's
		 * state and its device page's release already done.
		 */
		uintptr_t from = home_src(a, i);

		for (j = i + 1; j < n && to_system(a, j) &&
				home_src(a, j) == from + ((j - i) << PAGE_SHIFT);
		     j++)
			;
		uintptr_t s0 = page_addr(a, i);
		size_t done = 0;
		bool dup = a->priv[P_STATE] & ST_DUP;
		int ret;

		uhmm__fill_exists = 0;
		ret = install_home(a->h, s0, from, (j - i) << PAGE_SHIFT, &done, dup);
		/* A page found present is not the copy's twin: no duplication of this run. */
		dup = dup && !uhmm__fill_exists;

		uhmm__trace("*copy-home", s0, done, (uint64_t)(int64_t)ret);

		/*
		 * What was installed is home. The rest stays on the device: on
		 * EAGAIN/ENOMEM to be tried again, on ENOENT/EINVAL because the
		 * mapping moved or went (its mremap or munmap event carries or
		 * frees the device page; freeing it here would lose the data).
		 */
		if (ret)
			uhmm__fill_err = ret == -EINVAL ? -ENOENT : ret;
		for (; i < j; i++) {
			if (page_addr(a, i) < s0 + done && dup)
				commit_dup(a, i);
			else if (page_addr(a, i) < s0 + done)
				commit_system(a, i);
			else
				a->src[i] &= ~UHMM_MIGRATE_MIGRATE;
		}
		if (done)
			wake_run(a, s0, s0 + done);
	}
	acc_flush(a, &acc);
}

static bool to_restore(const struct uhmm_migrate *a, unsigned long i)
{
	uint64_t s = a->src[i];

	return (s & S_HELD) && !(s & S_DONE) && (s & UHMM_MIGRATE_VALID) &&
	       !(s & UHMM_MIGRATE_DEVICE);
}

/*
 * Put page i back from staging. The program may have discarded, unmapped or
 * moved its address meanwhile: those events wait for the page's lock, which
 * we hold, so ask them (uhmm__pending_fate). A discarded page stays out (its
 * data goes with the staging chunk): putting it back after the kernel's zap
 * would bring back data the program threw away. A moved page goes to its new
 * address (the old one is gone). Every fill waits (EAGAIN) until a pending
 * event is read, so the answer is looked at again after each refusal, and
 * once more after the move, for a discard read meanwhile.
 */
static void restore_one(struct uhmm_migrate *a, unsigned long i)
{
	struct uhmm *h = a->h;
	uintptr_t stg = a->priv[P_STAGING] + (i << PAGE_SHIFT), to;
	long got;

	for (;;) {
		if (uhmm__pending_fate(h, page_addr(a, i), &to) == FATE_GONE)
			return;
		got = uhmm__uffd_move(h->uffd, to, stg, PAGE_SIZE);
		if (got == -EINVAL) /* back into read-only memory */
			got = move_readonly(h->uffd, to, stg, PAGE_SIZE, to);
		uhmm__trace("restore", page_addr(a, i), to, (uint64_t)got);
		if (got != -EAGAIN)
			break;
		sched_yield(); /* an event is pending: the service thread reads it */
	}
	/* Otherwise the mapping vanished without an event: its data went with it. */
	if (got > 0 && uhmm__pending_fate(h, to, &to) == FATE_GONE)
		uhmm__uffd_move(h->uffd_stg, stg, to, PAGE_SIZE);
}

/*
 * Put back pages [i, j) (all to_restore), as restore_one does, with one move
 * for the run of them that no event concerns: put back one by one, each
 * cost a move and a TLB shootdown (a device fault over a full device took a
 * 2 MiB window from the CPU and put back what did not fit: half the ioctls
 * of `uhmm demo --device 256`). Returns the pages done (at least one).
 */
static unsigned long restore_run(struct uhmm_migrate *a, unsigned long i, unsigned long j)
{
	struct uhmm *h = a->h;
	uintptr_t stg = a->priv[P_STAGING] + (i << PAGE_SHIFT), to;
	unsigned long k;
	long got;

	for (k = i; k < j; k++)
		if (uhmm__pending_fate(h, page_addr(a, k), &to) != FATE_HERE)
			break;
	got = k - i > 1 ? uhmm__uffd_move(h->uffd, page_addr(a, i), stg, (k - i) << PAGE_SHIFT) :
			  0;
	uhmm__trace("restore-run", page_addr(a, i), (k - i) << PAGE_SHIFT, (uint64_t)got);
	if (got < (long)PAGE_SIZE) {
		/* A hole, read-only memory, an event: the page alone decides. */
		restore_one(a, i);
		return 1;
	}
	got >>= PAGE_SHIFT;
	/* A discard read meanwhile: that page's data goes with the staging chunk. */
	for (k = i; k < i + (unsigned long)got; k++)
		if (uhmm__pending_fate(h, page_addr(a, k), &to) == FATE_GONE)
			uhmm__uffd_move(h->uffd_stg, stg + ((k - i) << PAGE_SHIFT), to, PAGE_SIZE);
	return (unsigned long)got;
}

void uhmm_migrate_finalize(struct uhmm_migrate *a)
{
	struct uhmm *h;
	unsigned long n, i;

	if (!a || !(a->priv[P_STATE] & ST_SETUP))
		return;
	h = a->h;
	n = a->npages;
	/* Pages taken from the CPU that did not move go back where they are now. */
	for (i = 0; i < n;) {
		unsigned long j = i + 1;

		if (!to_restore(a, i)) {
			i++;
			continue;
		}
		while (j < n && to_restore(a, j))
			j++;
		while (i < j)
			i += restore_run(a, i, j);
	}
	for (i = 0; i < n; i++) {
		uint64_t d = a->dst[i];

		if ((d & UHMM_MIGRATE_VALID) && (d & UHMM_MIGRATE_DEVICE) &&
		    !((a->src[i] & S_HELD) && (a->src[i] & S_DONE)))
			uhmm_page_put(uhmm_migrate_entry_page(d));
		if ((a->src[i] & S_HELD) && !is_fault_page(a, i)) {
			_Atomic uint64_t *w = mig_word(a, i);

			uhmm__trace("unlock", page_addr(a, i), atomic_load(w), a->src[i]);
			uhmm__unlock(w, atomic_load(w));
		}
	}
	/*
	 * Staged pages are kept for the way home, a chunk's worth or a fault
	 * window's; else discarded. Not fewer than KEEP_MIN_PAGES: the check
	 * and the move cost more than they save there (N pages out and home,
	 * not kept -> kept: 8 pages 7.4 -> 8.6 and 6.9 -> 7.7 us; 32 pages
	 * out 19.8 -> 16.4, home the same; 64 pages home 28.2 -> 19.3; 256
	 * pages out 173 -> 150, home 151 -> 104).
	 */
	if (a->priv[P_STAGING]) {
		char *chunk = (char *)(a->priv[P_STAGING] & ~(CHUNK_SIZE - 1));
		int kept = n >= KEEP_MIN_PAGES ? uhmm__pool_keep(&h->staging, chunk,
								 (unsigned int)(CHUNK_PAGES - n)) :
						 0;

		if (!kept) {
			uhmm__trace("*stg-discard", a->priv[P_STAGING], n << PAGE_SHIFT,
				    a->start);
			madvise((void *)a->priv[P_STAGING], n << PAGE_SHIFT, MADV_DONTNEED);
			uhmm__pool_put(&h->staging, chunk);
		} else if (kept == 2 && !uhmm__in_svc) {
			uhmm__svc_kick(h); /* to free them if unused */
		}
	}
	if (a->priv[P_BOUNCE] && (char *)a->priv[P_BOUNCE] != h->svc_bounce)
		uhmm__pool_put(&h->bounce, (char *)a->priv[P_BOUNCE]);
	uhmm__invalidate_end(h, a->priv[P_STATE] & ST_INV);
	if (a->priv[P_STATE] & ST_OUT)
		uhmm__out_end(h);
	a->priv[P_STATE] = 0;
	uhmm__rd_exit(h);
}

/* --- helpers --- */

/* Where the chunk starting at @s ends: 2 MiB aligned, inside its range and @e. */
static uintptr_t chunk_end(struct uhmm *h, uintptr_t s, uintptr_t e, bool *managed)
{
	uintptr_t ce = (s | (CHUNK_SIZE - 1)) + 1;
	struct range *r;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, s);
	*managed = r != NULL;
	if (r && r->end < ce)
		ce = r->end;
	uhmm__rd_exit(h);
	return ce < e ? ce : e;
}

/*
 * Whether [s, e) is managed, once the events that change it are handled: an
 * mremap the caller just made moves management to the new address only when
 * its event is handled (-ENOENT until then would be a lie).
 */
static bool range_managed(struct uhmm *h, uintptr_t s, uintptr_t e)
{
	bool ok = true;

	uhmm__events_settle(h, s, e);

	while (ok && s < e)
		s = chunk_end(h, s, e, &ok);
	return ok;
}

static unsigned long count_done(const struct uhmm_migrate *a)
{
	unsigned long k = 0;

	for (unsigned long i = 0; i < a->npages; i++)
		if ((a->src[i] & S_HELD) && (a->src[i] & S_DONE))
			k++;
	return k;
}

/*
 * The helpers retry pages that were busy (a fault being served, another
 * migration) a few times before leaving them, so that a thread that touched
 * a page and then migrates it does not find it still locked by its own
 * fault. A retry covers only the pages that were busy: a page moves at most
 * once per call, whatever other threads do meanwhile.
 */
#define BUSY_PASSES 8

enum { R_SKIP, R_TRY, R_BUSY, R_SHARED };

/* After one pass over [s, s + npages): which pages to try again. */
static void note_busy(const struct uhmm_migrate *a, unsigned long off, unsigned char *rt)
{
	for (unsigned long i = 0; i < a->npages; i++) {
		uint64_t v = a->src[i];

		if ((v & (S_HELD | S_SHARED)) == S_SHARED)
			rt[off + i] = R_SHARED;
		else if (v == UHMM_MIGRATE_BUSY)
			rt[off + i] = R_BUSY;
		else
			rt[off + i] = R_SKIP;
	}
}

typedef int (*pass_fn)(void *ctx, uintptr_t s, uintptr_t e, unsigned long off, unsigned char *rt);

/* Run @fn over the chunk, then over runs of its busy pages, up to BUSY_PASSES times. */
static int with_retries(void *ctx, uintptr_t s, uintptr_t e, int passes, pass_fn fn)
{
	unsigned char rt[CHUNK_PAGES];
	unsigned long n = (e - s) >> PAGE_SHIFT, i, j;
	int total = 0;

	for (i = 0; i < n; i++)
		rt[i] = R_TRY;
	for (int pass = 0; pass < passes; pass++) {
		bool again = false;

		for (i = 0; i < n; i = j) {
			int ret;

			for (; i < n && rt[i] != R_TRY; i++)
				;
			for (j = i; j < n && rt[j] == R_TRY; j++)
				;
			if (i == j)
				break;
			ret = fn(ctx, s + (i << PAGE_SHIFT), s + (j << PAGE_SHIFT), i, rt);
			if (ret < 0)
				return total ? total : ret;
			total += ret;
		}
		for (i = 0; i < n; i++) {
			if (rt[i] == R_SHARED) {
				/* Break copy-on-write sharing with a forked child; no lock is held. */
				int pr = madvise((void *)(s + (i << PAGE_SHIFT)), PAGE_SIZE,
						 MADV_POPULATE_WRITE);

				uhmm__trace("populate", s + (i << PAGE_SHIFT), (uint64_t)pr, 0);
			}
			if (rt[i] == R_SHARED || rt[i] == R_BUSY) {
				rt[i] = R_TRY;
				again = true;
			}
		}
		if (!again)
			break;
		sched_yield();
	}
	return total;
}

struct to_device {
	struct uhmm_devmem *dm;
	bool full;
	bool keep_dups; /* uhmm_duplicate: pages already copied to it stay so */
	void *excl_owner; /* uhmm_make_exclusive: the caller's owner, or NULL */
};

/*
 * Pages of [s, e) not on @dm already: the most a migration of it to @dm can
 * allocate. Read fresh, so that a region filled to the brim by migrations
 * of these very pages (another thread's) does not evict for them again.
 */
static unsigned long room_wanted(struct uhmm_devmem *dm, uintptr_t s, uintptr_t e)
{
	struct uhmm *h = dm->h;
	struct range *r = NULL;
	unsigned long n = 0;

	uhmm__rd_enter(h);
	for (uintptr_t a = s; a < e; a += PAGE_SIZE) {
		uint64_t v;

		r = uhmm__lookup_near(h, r, a);
		if (!r) {
			n++;
			continue;
		}
		v = atomic_load(uhmm__word(r, a));
		if (!w_has_page(v) || uhmm__word_page(h, v)->devmem != dm)
			n++;
	}
	uhmm__rd_exit(h);
	return n;
}

/* One pass of [s, e) to the device; returns pages moved or -errno. */
static int pass_to_device(void *ctx, uintptr_t s, uintptr_t e, unsigned long off, unsigned char *rt)
{
	struct to_device *td = ctx;
	struct uhmm_devmem *dm = td->dm;
	uint64_t src[CHUNK_PAGES], dst[CHUNK_PAGES];
	struct uhmm_page *pages[CHUNK_PAGES];
	const void *data[CHUNK_PAGES];
	unsigned long idx[CHUNK_PAGES];
	struct uhmm_migrate a = { .h = dm->h, .start = s, .end = e, .src = src, .dst = dst,
				  .pgmap_owner = dm->owner, .flags = UHMM_MIGRATE_SELECT_SYSTEM };
	unsigned long m = 0, want = 0, got, i, short_at;
	int ret;

	if (td->full)
		return 0;
	if (td->keep_dups)
		a.flags |= SELECT_KEEP_DUP;
	if (td->excl_owner) {
		a.flags |= SELECT_EXCLUSIVE;
		a.pgmap_owner = td->excl_owner;
	}
	/* Full region with an eviction policy: make room first, holding no lock. */
	uhmm__evict(dm, room_wanted(dm, s, e));
	ret = uhmm_migrate_setup(&a);
	if (ret)
		return ret;
	for (i = 0; i < a.npages; i++)
		want += !!(src[i] & UHMM_MIGRATE_MIGRATE);
	got = uhmm__devmem_alloc_pages(dm, pages, want);
	for (i = 0; i < a.npages; i++) {
		if (!(src[i] & UHMM_MIGRATE_MIGRATE))
			continue;
		if (m == got)
			break;
		data[m] = uhmm_migrate_src_data(&a, i);
		idx[m++] = i;
	}
	short_at = i;
	/*
	 * The allocator hands out the lowest free pages, in page order: the
	 * device pages are in the order of the CPU pages they take.
	 */
	for (i = 0; i < m; i++) {
		uhmm__page_set_addr(pages[i], page_addr(&a, idx[i]));
		dst[idx[i]] = uhmm_migrate_dst_device(pages[i]);
	}
	if (m && dm->ops->copy_to_device(dm, pages, data, m)) {
		/* Find the pages that fail; they stay on the CPU. */
		for (i = 0; i < m; i++)
			if (dm->ops->copy_to_device(dm, &pages[i], &data[i], 1))
				dst[idx[i]] = 0;
	}
	for (i = 0; i < m; i++)
		if (!dst[idx[i]])
			uhmm_page_put(pages[i]);
	uhmm_migrate_pages(&a);
	ret = (int)count_done(&a);
	note_busy(&a, off, rt);
	uhmm_migrate_finalize(&a);
	if (short_at < a.npages) {
		/*
		 * The region filled up meanwhile (other migrations to it). With
		 * an eviction policy, make room for exactly the pages that did
		 * not fit, now that no lock is held, and try them again.
		 */
		if (uhmm__evict(dm, want - m) > 0) {
			for (i = short_at; i < a.npages; i++)
				if (src[i] & UHMM_MIGRATE_MIGRATE)
					rt[off + i] = R_BUSY;
		} else {
			td->full = true;
		}
	}
	return ret;
}

static int to_device(struct uhmm_devmem *dm, void *addr, size_t len, bool keep_dups,
		     void *excl_owner);

int uhmm_migrate_to_device(struct uhmm_devmem *dm, void *addr, size_t len)
{
	return to_device(dm, addr, len, false, NULL);
}

int uhmm__to_device_exclusive(struct uhmm_devmem *dm, void *addr, size_t len, void *owner)
{
	return to_device(dm, addr, len, false, owner);
}

static int to_device(struct uhmm_devmem *dm, void *addr, size_t len, bool keep_dups,
		     void *excl_owner)
{
	uintptr_t s = (uintptr_t)addr, e = s + len, ce;
	struct uhmm *h;
	bool full = false, managed;
	long total = 0;
	int ret;

	if (!dm)
		return -EINVAL;
	h = dm->h;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	ret = uhmm_can_migrate(h);
	if (ret)
		return ret;
	if (atomic_load(&dm->dying) || atomic_load(&h->closed))
		return -ENODEV;
	if (!range_managed(h, s, e))
		return -ENOENT;
	for (; s < e && !full; s = ce) {
		ce = chunk_end(h, s, e, &managed);
		if (!managed)
			break;
		struct to_device td = { .dm = dm, .keep_dups = keep_dups, .excl_owner = excl_owner };

		ret = with_retries(&td, s, ce, BUSY_PASSES, pass_to_device);
		full = td.full;
		if (ret < 0)
			break;
		total += ret;
	}
	if (!total && full)
		return -ENOMEM;
	if (!total && ret < 0)
		return ret;
	return total > INT32_MAX ? INT32_MAX : (int)total;
}

static void mig_poison(struct uhmm_migrate *a, unsigned long i)
{
	_Atomic uint64_t *w = mig_word(a, i);
	uint64_t old = atomic_load(w);

	uhmm__word_set_locked(w, W_POISON);
	uhmm__release_word(a->h, old);
	uhmm__uffd_poison(a->h->uffd, page_addr(a, i), PAGE_SIZE, true);
	UHMM_STAT_ADD(a->h, poisoned, 1);
	a->src[i] |= S_DONE;
}

/* Copy device pages home, run by run of one region; failures are poisoned. */
struct to_ram {
	struct uhmm *h;
	struct uhmm_devmem *only;
	bool dup; /* keep read-only copies (uhmm_duplicate) */
	bool busy;
	unsigned long poisoned;
};

static int pass_home(void *ctx, uintptr_t s, uintptr_t e, unsigned long off, unsigned char *rt)
{
	struct to_ram *tr = ctx;
	struct uhmm *h = tr->h;
	uint64_t src[CHUNK_PAGES], dst[CHUNK_PAGES];
	struct uhmm_page *pages[CHUNK_PAGES];
	void *bufs[CHUNK_PAGES];
	bool failed[CHUNK_PAGES] = { false };
	struct uhmm_migrate a = { .h = h, .start = s, .end = e, .src = src, .dst = dst,
				  .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE | SELECT_ANY_OWNER |
					   (tr->dup ? SELECT_KEEP_DUP : 0) };
	unsigned long i, j, k, m;
	int ret;

	a.priv[P_ONLY] = (uintptr_t)tr->only;
	ret = uhmm_migrate_setup(&a);
	if (ret)
		return ret;
	if (tr->dup)
		a.priv[P_STATE] |= ST_DUP;
	for (i = 0; i < a.npages;) {
		struct uhmm_devmem *dm;

		if (src[i] & UHMM_MIGRATE_BUSY)
			tr->busy = true;
		if (!(src[i] & UHMM_MIGRATE_MIGRATE)) {
			i++;
			continue;
		}
		dm = uhmm_migrate_entry_page(src[i])->devmem;
		if (uhmm__has_page_data(dm)) {
			/* Memory the CPU reads: installed straight from it, no copy in between. */
			for (j = i; j < a.npages && (src[j] & UHMM_MIGRATE_MIGRATE) &&
				    uhmm_migrate_entry_page(src[j])->devmem == dm;
			     j++) {
				const void *data = NULL;

				if (dm->ops->page_data(uhmm_migrate_entry_page(src[j]), &data) ||
				    !data) {
					dst[j] = 0;
					failed[j] = true;
				} else {
					dst[j] = UHMM_MIGRATE_VALID | (uintptr_t)data;
				}
			}
			i = j;
			continue;
		}
		for (j = i, m = 0; j < a.npages && (src[j] & UHMM_MIGRATE_MIGRATE) &&
				   uhmm_migrate_entry_page(src[j])->devmem == dm;
		     j++, m++) {
			pages[m] = uhmm_migrate_entry_page(src[j]);
			bufs[m] = uhmm_migrate_sysbuf(&a, j);
			dst[j] = UHMM_MIGRATE_VALID;
		}
		if (dm->ops->copy_from_device(dm, bufs, pages, m)) {
			for (k = 0; k < m; k++) {
				if (dm->ops->copy_from_device(dm, &bufs[k], &pages[k], 1)) {
					dst[i + k] = 0;
					failed[i + k] = true;
				}
			}
		}
		i = j;
	}
	uhmm_migrate_pages(&a);
	for (i = 0; i < a.npages; i++) {
		if (failed[i]) {
			mig_poison(&a, i);
			tr->poisoned++;
		}
	}
	ret = (int)count_done(&a);
	for (i = 0; i < a.npages; i++)
		ret -= failed[i]; /* poisoned, not moved home */
	note_busy(&a, off, rt);
	uhmm_migrate_finalize(&a);
	return ret;
}

/* Whether the state words of [s, e) were ever written (else: all CPU, nothing to do). */
static bool words_touched(struct uhmm *h, uintptr_t s, uintptr_t e)
{
	struct range *r;
	uintptr_t w0, w1;
	unsigned char vec[8];
	bool touched = true;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, s);
	if (r) {
		w0 = (uintptr_t)uhmm__word(r, s) & PAGE_MASK;
		w1 = ((uintptr_t)uhmm__word(r, e - PAGE_SIZE) & PAGE_MASK) + PAGE_SIZE;
		if (w1 - w0 <= sizeof(vec) * PAGE_SIZE &&
		    !uhmm__pages_with_data(w0, (w1 - w0) / PAGE_SIZE, vec)) {
			touched = false;
			for (size_t i = 0; i < (w1 - w0) / PAGE_SIZE; i++)
				touched |= vec[i] & 1;
		}
	}
	uhmm__rd_exit(h);
	return touched;
}

static long home_pass(struct uhmm *h, uintptr_t s, uintptr_t e, struct uhmm_devmem *only,
		      bool dup, bool *busy, unsigned long *poisoned, int passes)
{
	struct to_ram tr = { .h = h, .only = only, .dup = dup };
	uintptr_t ce;
	bool managed;
	long total = 0;

	for (; s < e; s = ce) {
		ce = chunk_end(h, s, e, &managed);
		if (!managed || !words_touched(h, s, ce))
			continue;
		int ret;

		tr.busy = false;
		tr.poisoned = 0;
		ret = with_retries(&tr, s, ce, passes, pass_home);
		*busy |= tr.busy;
		*poisoned += tr.poisoned;
		if (ret > 0)
			total += ret;
	}
	return total;
}

/* Bring home every device page of [start, end), waiting out busy pages. */
int uhmm__home_range(struct uhmm *h, uintptr_t start, uintptr_t end, struct uhmm_devmem *only,
		     unsigned long *poisoned)
{
	long total = 0;
	bool busy;

	do {
		busy = false;
		total += home_pass(h, start, end, only, false, &busy, poisoned, 1);
		if (busy)
			sched_yield();
	} while (busy);
	return total > INT32_MAX ? INT32_MAX : (int)total;
}

/* What the helpers over a managed range check first: 0, or their -errno. */
static int managed_args(struct uhmm *h, void *addr, size_t len)
{
	int ret = uhmm__usable(h);

	if (ret)
		return ret;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	return range_managed(h, (uintptr_t)addr, (uintptr_t)addr + len) ? 0 : -ENOENT;
}

/* Bring [addr, addr + len) home, waiting out busy pages; copies kept with @dup. */
static int home_all(struct uhmm *h, void *addr, size_t len, struct uhmm_devmem *only, bool dup)
{
	uintptr_t s = (uintptr_t)addr;
	unsigned long poisoned = 0;
	bool busy = false;
	long total = home_pass(h, s, s + len, only, dup, &busy, &poisoned, BUSY_PASSES);

	return total > INT32_MAX ? INT32_MAX : (int)total;
}

int uhmm_migrate_to_ram(struct uhmm *h, void *addr, size_t len)
{
	int ret = managed_args(h, addr, len);

	return ret ? ret : home_all(h, addr, len, NULL, false);
}

int uhmm_duplicate(struct uhmm_devmem *dm, void *addr, size_t len)
{
	struct uhmm *h;
	int ret;

	if (!dm || dm->type != UHMM_MEMORY_DEVICE_PRIVATE)
		return -EINVAL;
	h = dm->h;
	ret = managed_args(h, addr, len);
	if (ret)
		return ret;
	if (!atomic_load(&h->wp) || !(h->features & UHMM_FEAT_WP))
		return -EOPNOTSUPP;
	/*
	 * The copy is made the safe way: the pages move to the device (taken
	 * atomically, as any migration), then come home write-protected
	 * (UFFDIO_COPY_MODE_WP) while their device pages stay as the copies.
	 */
	ret = to_device(dm, addr, len, true, NULL);
	if (ret < 0 && ret != -ENOMEM)
		return ret;
	return home_all(h, addr, len, dm, true);
}
