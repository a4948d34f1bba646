/* SPDX-License-Identifier: MIT */
/*
 * mirror.c - interval notifiers: telling devices that mirror the address
 * space when its CPU side changes, with the read_begin / read_retry sequence
 * protocol of the kernel's mmu_interval_notifier.
 *
 * The table of notifiers is published like the range table: invalidations
 * walk it in a read section, lock-free and allocation-free (they run in the
 * fault path). Each notifier has a core-owned slot; remove() waits until no
 * walker is inside the notifier's callback, and the slot itself is retired.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/types.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

struct nslot {
	struct uhmm_interval_notifier *n;
	atomic_int active;  /* walkers inside (or about to enter) the callback */
	atomic_int removed;
};

struct ntab {
	size_t n;
	struct nslot *s[];
};

static void free_ptr(struct uhmm *h, void *p)
{
	(void)h;
	free(p);
}

int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *n, struct uhmm *h,
				  uintptr_t start, size_t len,
				  const struct uhmm_interval_notifier_ops *ops)
{
	struct ntab *cur, *nt;
	struct nslot *slot;

	if (!n || !h || !ops || !ops->invalidate || !len || start + len < start)
		return -EINVAL;
	slot = calloc(1, sizeof(*slot));
	if (!slot)
		return -ENOMEM;
	n->h = h;
	n->start = start & PAGE_MASK;
	n->end = start + len;
	n->ops = ops;
	n->seq = 0;
	n->slot = slot;
	slot->n = n;

	pthread_mutex_lock(&h->lock);
	cur = atomic_load(&h->ntab);
	nt = malloc(sizeof(*nt) + ((cur ? cur->n : 0) + 1) * sizeof(nt->s[0]));
	if (!nt) {
		pthread_mutex_unlock(&h->lock);
		free(slot);
		return -ENOMEM;
	}
	nt->n = 0;
	for (size_t i = 0; cur && i < cur->n; i++)
		nt->s[nt->n++] = cur->s[i];
	nt->s[nt->n++] = slot;
	atomic_store(&h->ntab, nt);
	if (cur)
		uhmm__retire(h, free_ptr, cur);
	pthread_mutex_unlock(&h->lock);
	return 0;
}

void uhmm_interval_notifier_remove(struct uhmm_interval_notifier *n)
{
	struct uhmm *h;
	struct nslot *slot;
	struct ntab *cur, *nt;

	if (!n || !n->slot)
		return;
	h = n->h;
	slot = n->slot;
	/* Walkers check `removed` after announcing themselves in `active`. */
	atomic_store(&slot->removed, 1);
	while (atomic_load(&slot->active))
		sched_yield();

	pthread_mutex_lock(&h->lock);
	cur = atomic_load(&h->ntab);
	nt = malloc(sizeof(*nt) + (cur ? cur->n : 1) * sizeof(nt->s[0]));
	if (nt) {
		nt->n = 0;
		for (size_t i = 0; cur && i < cur->n; i++)
			if (cur->s[i] != slot)
				nt->s[nt->n++] = cur->s[i];
		atomic_store(&h->ntab, nt);
		if (cur)
			uhmm__retire(h, free_ptr, cur);
		uhmm__retire(h, free_ptr, slot);
	}
	/* Out of memory: the slot stays in the table, marked removed, never called. */
	uhmm__reclaim(h);
	pthread_mutex_unlock(&h->lock);
	n->slot = NULL;
}

/*
 * Tell every notifier overlapping [start, end) that it changes. Returns
 * whether an invalidation was started; pair it with uhmm__invalidate_end().
 * Async-signal-safe.
 */
bool uhmm__invalidate_start(struct uhmm *h, uintptr_t start, uintptr_t end, int event,
			    void *owner)
{
	struct uhmm_notify_range r = { start, end, (enum uhmm_notify_event)event, owner };
	struct ntab *t;
	uint64_t seq;

	if (!atomic_load(&h->ntab) || start >= end)
		return false;
	atomic_fetch_add(&h->inv_active, 1);
	seq = atomic_fetch_add(&h->inv_seq, 1) + 1;
	uhmm__rd_enter(h);
	t = atomic_load(&h->ntab);
	for (size_t i = 0; t && i < t->n; i++) {
		struct nslot *s = t->s[i];
		struct uhmm_interval_notifier *n;

		atomic_fetch_add(&s->active, 1);
		n = s->n;
		/* The driver publishes seq with uhmm_interval_set_seq, or ignores its own. */
		if (!atomic_load(&s->removed) && n->start < end && start < n->end)
			n->ops->invalidate(n, &r, seq);
		atomic_fetch_sub(&s->active, 1);
	}
	uhmm__rd_exit(h);
	return true;
}

void uhmm__invalidate_end(struct uhmm *h, bool started)
{
	if (started)
		atomic_fetch_sub(&h->inv_active, 1);
}

uint64_t uhmm_interval_read_begin(struct uhmm_interval_notifier *n)
{
	if (!n || !n->h)
		return 0;
	uint64_t seq;

	/* An invalidation starting between the wait and the load shows in inv_active. */
	do {
		while (atomic_load(&n->h->inv_active))
			sched_yield();
		seq = __atomic_load_n(&n->seq, __ATOMIC_ACQUIRE);
	} while (atomic_load(&n->h->inv_active));
	return seq;
}

bool uhmm_interval_read_retry(struct uhmm_interval_notifier *n, uint64_t seq)
{
	if (!n || !n->h)
		return true;
	return __atomic_load_n(&n->seq, __ATOMIC_ACQUIRE) != seq;
}

void uhmm_interval_set_seq(struct uhmm_interval_notifier *n, uint64_t cur_seq)
{
	if (n)
		__atomic_store_n(&n->seq, cur_seq, __ATOMIC_RELEASE);
}

/* At the handle's end: notifiers never removed lose their slots. */
void uhmm__mirror_fini(struct uhmm *h)
{
	struct ntab *t = atomic_exchange(&h->ntab, NULL);

	for (size_t i = 0; t && i < t->n; i++) {
		t->s[i]->n->slot = NULL;
		free(t->s[i]);
	}
	free(t);
}

/* --- uhmm_range_fault --- */

/*
 * What the kernel tells about a mapping and its pages. Distribution headers
 * may predate PROCMAP_QUERY (6.11) and PAGEMAP_SCAN (6.7): the running kernel
 * answers ENOTTY then, and the slower fallbacks are used.
 */
struct procmap_query_v1 {
	__u64 size;
	__u64 query_flags;
	__u64 query_addr;
	__u64 vma_start;
	__u64 vma_end;
	__u64 vma_flags;
	__u64 vma_page_size;
	__u64 vma_offset;
	__u64 inode;
	__u32 dev_major;
	__u32 dev_minor;
	__u32 vma_name_size;
	__u32 build_id_size;
	__u64 vma_name_addr;
	__u64 build_id_addr;
};
#define Q_PROCMAP_QUERY _IOWR('f', 17, struct procmap_query_v1)
#define Q_VMA_READABLE 0x01
#define Q_VMA_WRITABLE 0x02
#define Q_VMA_SHARED 0x08
#define Q_COVERING_OR_NEXT 0x10

struct page_region_v1 {
	__u64 start;
	__u64 end;
	__u64 categories;
};
struct pm_scan_arg_v1 {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};
#define Q_PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg_v1)
#define Q_PAGE_IS_PRESENT (1 << 3)
#define Q_PAGE_IS_SWAPPED (1 << 4)
#define Q_PAGE_IS_PFNZERO (1 << 5)

/* /proc/self/pagemap entries */
#define PM_PRESENT (1ULL << 63)
#define PM_FILE (1ULL << 61)
#define PM_EXCLUSIVE (1ULL << 56)

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * Descriptors of this process's /proc/self files, opened once. A forked
 * child inherits descriptors that still describe its parent: it reopens.
 */
static pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;
static int proc_maps = -1, proc_pagemap = -1;
static pid_t proc_pid;
static atomic_int no_query, no_scan;

static int proc_fds(int *maps, int *pagemap)
{
	pid_t pid = getpid();
	int ret = 0;

	pthread_mutex_lock(&proc_lock);
	if (proc_pid != pid) {
		if (proc_maps >= 0)
			close(proc_maps);
		if (proc_pagemap >= 0)
			close(proc_pagemap);
		proc_maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
		proc_pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		if (proc_maps < 0) {
			ret = -errno;
			if (proc_pagemap >= 0)
				close(proc_pagemap);
			proc_pagemap = -1;
		} else {
			proc_pid = pid;
		}
	}
	*maps = proc_maps;
	*pagemap = proc_pagemap; /* may be -1: then mincore tells presence */
	pthread_mutex_unlock(&proc_lock);
	return ret;
}

/*
 * The first page of [s, e) of the categories asked for (PAGEMAP_SCAN, Linux
 * 6.7+): *@first, or @e when none; -EOPNOTSUPP without the ioctl. Pagemap
 * is opened for the call: the handle keeps no descriptor (one kept across
 * fork would show the parent). Async-signal-safe.
 */
static int scan_first(uintptr_t s, uintptr_t e, uint64_t inverted, uint64_t mask,
		      uint64_t anyof, uintptr_t *first)
{
	struct page_region_v1 reg;
	struct pm_scan_arg_v1 a = {
		.size = sizeof(a),
		.start = s,
		.end = e,
		.vec = (uintptr_t)&reg,
		.vec_len = 1,
		.max_pages = 1,
		.category_inverted = inverted,
		.category_mask = mask,
		.category_anyof_mask = anyof,
	};
	int pagemap;
	long got;

	if (atomic_load_explicit(&no_scan, memory_order_relaxed))
		return -EOPNOTSUPP;
	pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap < 0)
		return -EOPNOTSUPP;
	got = ioctl(pagemap, Q_PAGEMAP_SCAN, &a);
	close(pagemap);
	if (got < 0) {
		if (errno == ENOTTY || errno == EINVAL)
			atomic_store(&no_scan, 1);
		return -EOPNOTSUPP;
	}
	*first = got > 0 ? (uintptr_t)reg.start : e;
	return 0;
}

/*
 * Where the first page of [s, e) holding data other than the shared zero
 * page is (present or swapped out): *@first, or @e when none; -EOPNOTSUPP
 * without PAGEMAP_SCAN. A discard's zap looks here: a zero page a fault
 * mapped after the zap is as good as the hole it filled.
 */
int uhmm__first_data_page(uintptr_t s, uintptr_t e, uintptr_t *first)
{
	return scan_first(s, e, Q_PAGE_IS_PFNZERO, Q_PAGE_IS_PFNZERO,
			  Q_PAGE_IS_PRESENT | Q_PAGE_IS_SWAPPED, first);
}

/*
 * Whether [s, e) holds a page that is neither present nor swapped out (a
 * hole): 1, or 0 when every page is there; -errno when pagemap cannot be
 * read. One PAGEMAP_SCAN, against a read per 64 pages (22 us a 2 MiB
 * chunk, 7% of a migration to the sim, where staging looks at each chunk
 * it would keep); the reads where the ioctl is missing. Async-signal-safe.
 */
int uhmm__has_hole(uintptr_t s, uintptr_t e)
{
	uintptr_t first;
	unsigned char vec[64];
	int ret = scan_first(s, e, Q_PAGE_IS_PRESENT | Q_PAGE_IS_SWAPPED,
			     Q_PAGE_IS_PRESENT | Q_PAGE_IS_SWAPPED, 0, &first);

	if (ret != -EOPNOTSUPP)
		return ret ? ret : first < e;
	for (; s < e; s += sizeof(vec) << PAGE_SHIFT) {
		size_t n = (e - s) >> PAGE_SHIFT < sizeof(vec) ? (e - s) >> PAGE_SHIFT : sizeof(vec);

		ret = uhmm__pages_with_data(s, n, vec);
		if (ret)
			return ret;
		if (memchr(vec, 0, n))
			return 1;
	}
	return 0;
}

struct vma {
	uintptr_t start, end;
	bool read, write, shared;
};

/* The maps file, for kernels without PROCMAP_QUERY: the mapping at or after @addr. */
static int vma_find_slow(int fd, uintptr_t addr, struct vma *v)
{
	char buf[8192], *line, *nl;
	size_t have = 0;
	off_t off = 0;
	int ret = -ENOENT;

	for (;;) {
		ssize_t got = pread(fd, buf + have, sizeof(buf) - 1 - have, off);

		if (got < 0)
			return -errno;
		off += got;
		have += (size_t)got;
		buf[have] = 0;
		line = buf;
		while ((nl = strchr(line, '\n'))) {
			unsigned long s, e;
			char perms[8];

			*nl = 0;
			if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3 && e > addr) {
				v->start = s;
				v->end = e;
				v->read = perms[0] == 'r';
				v->write = perms[1] == 'w';
				v->shared = perms[3] == 's';
				return 0;
			}
			line = nl + 1;
		}
		if (!got)
			return ret;
		/* Keep the partial last line. */
		have = strlen(line);
		memmove(buf, line, have);
		if (have >= sizeof(buf) - 1)
			have = 0; /* a line longer than the buffer: its range was parsed already */
	}
}

/* The mapping containing @addr, or the next one (v->start > addr); -ENOENT: none. */
static int vma_find(int fd, uintptr_t addr, struct vma *v)
{
	struct procmap_query_v1 q = {
		.size = sizeof(q),
		.query_flags = Q_COVERING_OR_NEXT,
		.query_addr = addr,
	};

	if (!atomic_load_explicit(&no_query, memory_order_relaxed)) {
		if (ioctl(fd, Q_PROCMAP_QUERY, &q) == 0) {
			v->start = q.vma_start;
			v->end = q.vma_end;
			v->read = q.vma_flags & Q_VMA_READABLE;
			v->write = q.vma_flags & Q_VMA_WRITABLE;
			v->shared = q.vma_flags & Q_VMA_SHARED;
			return 0;
		}
		if (errno == ENOENT)
			return -ENOENT;
		if (errno != ENOTTY && errno != EINVAL && errno != E2BIG)
			return -errno;
		atomic_store(&no_query, 1);
	}
	return vma_find_slow(fd, addr, v);
}

#define WALK_BATCH 64
#define WALK_TRIES 16

enum { NEED_NONE, NEED_READ, NEED_WRITE };

/* Bits of each page of [s, s + n pages): pagemap entries, or presence from mincore. */
static void page_bits(int pagemap, uintptr_t s, unsigned long n, uint64_t *pm)
{
	unsigned char vec[WALK_BATCH];

	if (pagemap >= 0 &&
	    pread(pagemap, pm, n * sizeof(*pm), (off_t)((s >> PAGE_SHIFT) * sizeof(*pm))) ==
		    (ssize_t)(n * sizeof(*pm)))
		return;
	if (mincore((void *)s, n << PAGE_SHIFT, vec))
		memset(vec, 0, sizeof(vec));
	for (unsigned long i = 0; i < n; i++)
		pm[i] = vec[i] & 1 ? PM_PRESENT | PM_EXCLUSIVE : 0;
}

/* Which pages of [s, s + n pages) map the shared zero page (PAGEMAP_SCAN, 6.7+). */
static void zero_bits(int pagemap, uintptr_t s, unsigned long n, bool *zero)
{
	struct page_region_v1 reg[WALK_BATCH];
	struct pm_scan_arg_v1 a = {
		.size = sizeof(a),
		.start = s,
		.end = s + (n << PAGE_SHIFT),
		.vec = (uintptr_t)reg,
		.vec_len = WALK_BATCH,
		.category_anyof_mask = Q_PAGE_IS_PRESENT,
		.return_mask = Q_PAGE_IS_PFNZERO,
	};
	long got;

	if (pagemap < 0 || atomic_load_explicit(&no_scan, memory_order_relaxed))
		return;
	got = ioctl(pagemap, Q_PAGEMAP_SCAN, &a);
	if (got < 0) {
		if (errno == ENOTTY || errno == EINVAL)
			atomic_store(&no_scan, 1);
		return;
	}
	for (long k = 0; k < got; k++) {
		if (!(reg[k].categories & Q_PAGE_IS_PFNZERO))
			continue;
		for (uintptr_t a2 = reg[k].start; a2 < reg[k].end; a2 += PAGE_SIZE)
			zero[(a2 - s) >> PAGE_SHIFT] = true;
	}
}

/*
 * A user-mode touch, for when the kernel's populate cannot serve the fault.
 * The write is an atomic OR of zero: the program may be writing the same
 * word this moment, and keeps what it wrote. That is a race ThreadSanitizer
 * would report against the program's plain writes, and a benign one (the
 * kernel's fault-in does the same): not instrumented.
 */
__attribute__((no_sanitize_thread)) static void touch(uintptr_t a, bool write)
{
	if (write)
		__atomic_fetch_or((uint64_t *)a, 0, __ATOMIC_RELAXED);
	else
		(void)*(volatile char *)a;
}

static bool poisoned(struct uhmm *h, uintptr_t a)
{
	struct range *r;
	bool p = false;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, a);
	if (r)
		p = w_kind(atomic_load(uhmm__word(r, a))) == W_POISON;
	uhmm__rd_exit(h);
	return p;
}

/*
 * Make [s, e) present (and writable) on the device's behalf. MADV_POPULATE is
 * a kernel-mode fault: it fails cleanly on memory unmapped meanwhile, where a
 * touch would crash. A user-mode-only (or SIGBUS-mode) userfaultfd refuses
 * kernel-mode faults on missing managed pages with EFAULT: touch those.
 */
static int fault_run(struct uhmm *h, uintptr_t s, uintptr_t e, bool write, bool managed)
{
	int tries = 0;

	while (madvise((void *)s, e - s, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ)) {
		if ((errno == EINTR || errno == EAGAIN) && ++tries < 100)
			continue;
		if (errno == ENOMEM)
			return -EFAULT; /* unmapped meanwhile */
		/* EINVAL: a kernel without MADV_POPULATE (5.14), or a VM_PFNMAP mapping. */
		if (errno != EINVAL && (!managed || errno != EFAULT))
			return errno == EPERM ? -EPERM : -EFAULT;
		for (uintptr_t a = s; a < e; a += PAGE_SIZE) {
			if (poisoned(h, a))
				return -EFAULT;
			touch(a, write);
		}
		return 0;
	}
	return 0;
}

/* Snapshot one batch of pages of the readable mapping @v, faulting where asked. */
static int walk_batch(struct uhmm_range *range, struct uhmm *h, int pagemap, const struct vma *v,
		      uintptr_t s, unsigned long n)
{
	uint64_t *pfns = range->pfns + ((s - range->start) >> PAGE_SHIFT);
	uint64_t pm[WALK_BATCH], out[WALK_BATCH];
	unsigned char need[WALK_BATCH];
	bool managed[WALK_BATCH];
	/*
	 * First as if every page were on a device and unlocked: then none is
	 * mapped on the CPU (the migration took its entry) and the batch needs
	 * no pagemap read. A device revalidating its table each launch walks
	 * ranges that are all its own pages; the read was most of the walk.
	 * The first page found otherwise sends the batch round again with it.
	 */
	bool device_only = true;

	for (int tries = 0;; tries++) {
		bool zero[WALK_BATCH] = { false }, scan = false, faults = false, busy = false;
		bool moved = false;
		struct range *r = NULL; /* the last page's: uhmm__lookup_near() */
		unsigned long i, j;

		if (device_only)
			memset(pm, 0, n * sizeof(*pm));
		else
			page_bits(pagemap, s, n, pm);
		for (i = 0; i < n; i++)
			if ((pm[i] & (PM_PRESENT | PM_FILE | PM_EXCLUSIVE)) == PM_PRESENT && !v->shared)
				scan = true; /* the zero page, or shared with a forked child */
		if (scan)
			zero_bits(pagemap, s, n, zero);

		uhmm__rd_enter(h);
		for (i = 0; i < n; i++) {
			uintptr_t a = s + (i << PAGE_SHIFT);
			uint64_t req = ((pfns[i] & range->pfn_flags_mask) | range->default_flags);
			uint64_t w, m;

			r = uhmm__lookup_near(h, r, a);
			w = r ? atomic_load(uhmm__word(r, a)) : 0;
			m = r ? UHMM_PFN_MANAGED : 0;

			if (!(req & UHMM_PFN_REQ_FAULT))
				req = 0; /* the kernel's rule: WRITE means nothing without FAULT */
			managed[i] = r != NULL;
			need[i] = NEED_NONE;
			if (device_only && (!r || (w & W_LOCKED) || w_kind(w) != W_DEVICE)) {
				moved = true; /* not all on devices now: read pagemap after all */
				break;
			}
			if ((req & UHMM_PFN_REQ_WRITE) && !v->write) {
				uhmm__rd_exit(h);
				return -EPERM;
			}
			if (r && (w & W_LOCKED) &&
			    (!(pm[i] & PM_PRESENT) || (w_kind(w) == W_DUP && req))) {
				/*
				 * A migration (or a CPU fault) holds a page that is
				 * not on the CPU: the kernel's migration entry. Not
				 * present; a fault waits for it and asks the caller
				 * to start again (faulting it would undo the
				 * migration).
				 */
				out[i] = m;
				busy |= req != 0;
			} else if (r && w_kind(w) == W_DEVICE) {
				struct uhmm_page *page = uhmm__word_page(h, w);

				if (page && range->dev_private_owner &&
				    page->owner == range->dev_private_owner) {
					out[i] = UHMM_PFN_VALID | UHMM_PFN_DEVICE_PRIVATE | m |
						 (v->write ? UHMM_PFN_WRITE : 0) | (uintptr_t)page;
					continue;
				}
				out[i] = UHMM_PFN_DEVICE_REMOTE | m;
				if (req)
					need[i] = req & UHMM_PFN_REQ_WRITE ? NEED_WRITE : NEED_READ;
			} else if (r && w_kind(w) == W_DUP && (pm[i] & PM_PRESENT) &&
				   !(req & UHMM_PFN_REQ_WRITE)) {
				/*
				 * Duplicated (uhmm_duplicate): the copy's owner
				 * reads its copy; everyone else the system page.
				 * Neither is writable: a write asks for the fault
				 * that ends the duplication (below).
				 */
				struct uhmm_page *page = uhmm__word_page(h, w);

				if (page && range->dev_private_owner &&
				    page->owner == range->dev_private_owner)
					out[i] = UHMM_PFN_VALID | UHMM_PFN_DEVICE_PRIVATE | m |
						 (uintptr_t)page;
				else
					out[i] = UHMM_PFN_VALID | m | a;
			} else if (r && w_kind(w) == W_POISON) {
				if (req) {
					uhmm__rd_exit(h);
					return -EFAULT;
				}
				out[i] = m;
			} else if (pm[i] & PM_PRESENT) {
				/* Writable as the kernel's PTE would be: not zero, not COW. */
				bool wr = v->write && !zero[i] && !(r && w_kind(w) == W_DUP) &&
					  (v->shared || (!(pm[i] & PM_FILE) && (pm[i] & PM_EXCLUSIVE)));

				out[i] = UHMM_PFN_VALID | m | (wr ? UHMM_PFN_WRITE : 0) |
					 (zero[i] ? UHMM_PFN_ZERO : 0) | a;
				if ((req & UHMM_PFN_REQ_WRITE) && !wr)
					need[i] = NEED_WRITE;
			} else {
				out[i] = m;
				if (req)
					need[i] = req & UHMM_PFN_REQ_WRITE ? NEED_WRITE : NEED_READ;
			}
			faults |= need[i] != NEED_NONE;
		}
		uhmm__rd_exit(h);

		if (moved) {
			device_only = false;
			tries--;
			continue;
		}
		if (busy) {
			sched_yield();
			return -EBUSY;
		}
		if (!faults) {
			memcpy(pfns, out, n * sizeof(*out));
			return 0;
		}
		if (tries >= WALK_TRIES)
			return -EBUSY; /* the pages keep changing under us */
		for (i = 0; i < n; i = j) {
			int ret;

			for (j = i + 1; j < n && need[j] == need[i] && managed[j] == managed[i]; j++)
				;
			if (need[i] == NEED_NONE)
				continue;
			ret = fault_run(h, s + (i << PAGE_SHIFT), s + (j << PAGE_SHIFT),
					need[i] == NEED_WRITE, managed[i]);
			if (ret)
				return ret;
		}
		/* Bringing a foreign device page home invalidates: the caller retries. */
		if (uhmm_interval_read_retry(range->notifier, range->notifier_seq))
			return -EBUSY;
	}
}

static int walk_none(struct uhmm_range *range, uintptr_t s, uintptr_t e)
{
	for (uintptr_t a = s; a < e; a += PAGE_SIZE) {
		uint64_t *p = &range->pfns[(a - range->start) >> PAGE_SHIFT];

		if (((*p & range->pfn_flags_mask) | range->default_flags) & UHMM_PFN_REQ_FAULT)
			return -EFAULT;
	}
	for (uintptr_t a = s; a < e; a += PAGE_SIZE)
		range->pfns[(a - range->start) >> PAGE_SHIFT] = UHMM_PFN_ERROR;
	return 0;
}

int uhmm_range_fault(struct uhmm_range *range)
{
	struct uhmm_interval_notifier *n;
	struct uhmm *h;
	uintptr_t a;
	int maps, pagemap, ret;

	if (!range || !range->pfns || !range->notifier || !range->notifier->slot ||
	    !range->notifier->h || ((range->start | range->end) & ~PAGE_MASK) ||
	    range->start >= range->end)
		return -EINVAL;
	if (uhmm__in_svc)
		return -EDEADLK;
	n = range->notifier;
	h = n->h;
	ret = proc_fds(&maps, &pagemap);
	if (ret)
		return ret;
	if (uhmm_interval_read_retry(n, range->notifier_seq))
		return -EBUSY;
	for (a = range->start; a < range->end;) {
		struct vma v = { 0 };
		uintptr_t e;

		ret = vma_find(maps, a, &v);
		if (ret && ret != -ENOENT)
			return ret;
		if (ret == -ENOENT || v.start >= range->end) {
			/* No mapping up to the end. */
			ret = walk_none(range, a, range->end);
			if (ret)
				return ret;
			break;
		}
		if (v.start > a) {
			ret = walk_none(range, a, v.start);
			if (ret)
				return ret;
			a = v.start;
			continue;
		}
		e = v.end < range->end ? v.end : range->end;
		if (!v.read) {
			/* PROT_NONE: nothing can be read, as the kernel's !VM_READ. */
			ret = walk_none(range, a, e);
			if (ret)
				return ret;
			a = e;
			continue;
		}
		while (a < e) {
			unsigned long cnt = (e - a) >> PAGE_SHIFT;

			if (cnt > WALK_BATCH)
				cnt = WALK_BATCH;
			ret = walk_batch(range, h, pagemap, &v, a, cnt);
			if (ret)
				return ret;
			a += cnt << PAGE_SHIFT;
		}
	}
	return uhmm_interval_read_retry(n, range->notifier_seq) ? -EBUSY : 0;
}

/*
 * The protection of the mapping at @addr: PROT_* bits, -ENOENT where nothing
 * is mapped; *@end: where that mapping ends. Cheap with PROCMAP_QUERY.
 */
int uhmm__vma_prot(uintptr_t addr, uintptr_t *end)
{
	struct vma v;
	int maps, pagemap, ret;

	ret = proc_fds(&maps, &pagemap);
	if (ret)
		return ret;
	ret = vma_find(maps, addr, &v);
	if (ret)
		return ret;
	if (v.start > addr)
		return -ENOENT;
	*end = v.end;
	return (v.read ? PROT_READ : 0) | (v.write ? PROT_WRITE : 0);
}
