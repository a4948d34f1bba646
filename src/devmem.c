/* SPDX-License-Identifier: MIT */
/*
 * devmem.c - device memory regions, their page descriptors, the shared
 * free-list allocator, reference counts, per-owner accounting, hot-remove.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

/* In a read section (or with the region known alive). */
struct uhmm_devmem *uhmm__devmem(struct uhmm *h, unsigned slot)
{
	return slot && slot < MAX_DEVMEM ? atomic_load(&h->dm[slot]) : NULL;
}

struct uhmm_page *uhmm__word_page(struct uhmm *h, uint64_t w)
{
	struct uhmm_devmem *dm = uhmm__devmem(h, w_slot(w));

	if (!dm || w_pfn(w) >= dm->npages)
		return NULL;
	return &dm->pages[w_pfn(w)];
}

static bool has_page_free(const struct uhmm_devmem *dm)
{
	return dm->ops->page_free != NULL;
}

/* Under h->lock. Owners are compared by cookie; a handle holds MAX_OWNERS. */
static struct owner_acct *owner_find(struct uhmm *h, void *owner)
{
	struct owner_acct *freeslot = NULL;

	for (int i = 0; i < MAX_OWNERS; i++) {
		if (h->owners[i].owner == owner)
			return &h->owners[i];
		if (!h->owners[i].owner && !freeslot)
			freeslot = &h->owners[i];
	}
	if (freeslot)
		freeslot->owner = owner;
	return freeslot;
}

static int check_ops(const struct uhmm_devmem_desc *d)
{
	const struct uhmm_devmem_ops *ops = d->ops;

	/* ABI 1 tables (without page_data) stay welcome. */
	if (!ops || ops->abi < 1 || ops->abi > UHMM_DEVMEM_OPS_ABI)
		return -EINVAL;
	if (!ops->copy_to_device || !ops->copy_from_device)
		return -EINVAL;
	/* Nothing may leave the CPU without a way home. */
	if (d->type == UHMM_MEMORY_DEVICE_PRIVATE && !ops->migrate_to_ram)
		return -EINVAL;
	return 0;
}

int uhmm_devmem_add(struct uhmm *h, const struct uhmm_devmem_desc *desc,
		    struct uhmm_devmem **out)
{
	struct uhmm_devmem_desc d = { .sz = sizeof(d) };
	struct uhmm_devmem *dm;
	unsigned slot;
	int ret;

	if (!h || !desc || !out)
		return -EINVAL;
	*out = NULL;
	ret = uhmm__opts_check(desc, desc->sz, sizeof(d));
	if (ret)
		return ret;
	memcpy(&d, desc, desc->sz < sizeof(d) ? desc->sz : sizeof(d));
	if (d.type != UHMM_MEMORY_DEVICE_PRIVATE || !d.npages || d.npages > (1UL << 31) ||
	    !d.owner || (d.flags & ~UHMM_DEVMEM_NONBLOCKING))
		return -EINVAL;
	ret = check_ops(&d);
	if (ret)
		return ret;
	if (atomic_load(&h->closed))
		return -ESHUTDOWN;

	dm = calloc(1, sizeof(*dm));
	if (!dm)
		return -ENOMEM;
	dm->h = h;
	dm->type = d.type;
	dm->npages = d.npages;
	dm->owner = d.owner;
	dm->ops = d.ops;
	dm->driver_data = d.driver_data;
	dm->flags = d.flags;
	strncpy(dm->name, d.name ? d.name : "devmem", sizeof(dm->name) - 1);
	/* Descriptors: reserved like the state words, touched as pages are used. */
	dm->pages_len = (d.npages * sizeof(struct uhmm_page) + PAGE_SIZE - 1) & PAGE_MASK;
	dm->pages = mmap(NULL, dm->pages_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (dm->pages == MAP_FAILED) {
		ret = -ENOMEM;
		goto err_free;
	}
	/* Every page starts on the free list, lowest index first. */
	for (unsigned long i = d.npages; i-- > 0;) {
		dm->pages[i].devmem = dm;
		dm->pages[i].owner = d.owner;
		dm->pages[i].pfn = i;
		dm->pages[i].next_free = i + 1 < d.npages ? (uint32_t)(i + 2) : 0;
	}
	atomic_store(&dm->free_head, 1);

	pthread_mutex_lock(&h->lock);
	ret = -ENOSPC;
	dm->acct = owner_find(h, d.owner);
	if (!dm->acct)
		goto err_unlock;
	for (slot = 1; slot < MAX_DEVMEM; slot++)
		if (!atomic_load(&h->dm[slot]))
			break;
	if (slot == MAX_DEVMEM)
		goto err_unlock;
	dm->slot = slot;
	atomic_fetch_add(&h->refs, 1);
	atomic_store(&h->dm[slot], dm);
	pthread_mutex_unlock(&h->lock);
	*out = dm;
	return 0;

err_unlock:
	pthread_mutex_unlock(&h->lock);
	munmap(dm->pages, dm->pages_len);
err_free:
	free(dm);
	return ret;
}

struct uhmm_page *uhmm_devmem_alloc_page(struct uhmm_devmem *dm)
{
	uint64_t head, next;
	struct uhmm_page *page;

	if (!dm || atomic_load(&dm->dying))
		return NULL;
	head = atomic_load(&dm->free_head);
	for (;;) {
		uint32_t idx = (uint32_t)head;

		if (!idx) {
			uint64_t again;

			if (atomic_load(&dm->reordering)) {
				/* The list is being put in order: back in a moment. */
				sched_yield();
				head = atomic_load(&dm->free_head);
				continue;
			}
			/*
			 * Empty only if still empty with nobody reordering
			 * after: a reorder that ended between our two loads
			 * gave the list back before saying so.
			 */
			again = atomic_load(&dm->free_head);
			if ((uint32_t)again || atomic_load(&dm->reordering)) {
				head = again;
				continue;
			}
			return NULL;
		}
		page = &dm->pages[idx - 1];
		/* The tag in the high half defeats ABA. */
		next = ((head >> 32) + 1) << 32 |
		       __atomic_load_n(&page->next_free, __ATOMIC_RELAXED);
		if (atomic_compare_exchange_weak(&dm->free_head, &head, next))
			break;
	}

	__atomic_store_n(&page->refcount, 1, __ATOMIC_RELEASE);
	uhmm__page_set_addr(page, 0);
	atomic_fetch_add(&dm->in_use, 1);
	atomic_fetch_add(&dm->acct->pages, 1);
	return page;
}

/*
 * Up to @n pages off the free list into @pages, a run of it per CAS: one
 * CAS and one count for the lot instead of one per page (a migration of
 * 1 GiB took 10 ms allocating one page at a time). The walk follows links
 * that a racing pop or push may change under it; the tag in the head then
 * fails the CAS, and the walk starts over. Returns how many it took, fewer
 * than @n only when the region runs out.
 */
unsigned long uhmm__devmem_alloc_pages(struct uhmm_devmem *dm, struct uhmm_page **pages,
				       unsigned long n)
{
	unsigned long got = 0;

	while (got < n) {
		uint64_t head = atomic_load(&dm->free_head);
		uint32_t idx = (uint32_t)head, next = 0;
		unsigned long k = 0;

		if (!idx || atomic_load(&dm->dying)) {
			/* Empty, or being reordered: the one-page path knows which. */
			struct uhmm_page *p = uhmm_devmem_alloc_page(dm);

			if (!p)
				break;
			pages[got++] = p;
			continue;
		}
		for (uint32_t i = idx; i && k < n - got; k++) {
			pages[got + k] = &dm->pages[i - 1];
			next = __atomic_load_n(&dm->pages[i - 1].next_free, __ATOMIC_RELAXED);
			i = next;
		}
		if (!atomic_compare_exchange_weak(&dm->free_head, &head,
						  ((head >> 32) + 1) << 32 | next))
			continue;
		for (unsigned long j = got; j < got + k; j++) {
			__atomic_store_n(&pages[j]->refcount, 1, __ATOMIC_RELEASE);
			uhmm__page_set_addr(pages[j], 0);
		}
		atomic_fetch_add(&dm->in_use, k);
		atomic_fetch_add(&dm->acct->pages, k);
		got += k;
	}
	return got;
}

void uhmm_page_get(struct uhmm_page *page)
{
	if (page)
		__atomic_fetch_add(&page->refcount, 1, __ATOMIC_RELAXED);
}

void uhmm_page_put(struct uhmm_page *page)
{
	struct uhmm_devmem *dm;
	uint64_t head, nh;

	if (!page || __atomic_sub_fetch(&page->refcount, 1, __ATOMIC_ACQ_REL))
		return;
	dm = page->devmem;
	if (has_page_free(dm))
		dm->ops->page_free(page);
	uhmm__page_set_addr(page, 0);
	if (!atomic_load_explicit(&dm->unordered, memory_order_relaxed))
		atomic_store_explicit(&dm->unordered, 1, memory_order_relaxed);
	atomic_fetch_add(&dm->page_frees, 1);
	atomic_fetch_sub(&dm->acct->pages, 1);
	head = atomic_load(&dm->free_head);
	do {
		/* Relaxed: a racing pop may read it; the CAS orders the rest. */
		__atomic_store_n(&page->next_free, (uint32_t)head, __ATOMIC_RELAXED);
		nh = ((head >> 32) + 1) << 32 | (page->pfn + 1);
	} while (!atomic_compare_exchange_weak(&dm->free_head, &head, nh));
	atomic_fetch_sub(&dm->in_use, 1);
}

/*
 * Put the free list back in page order once every page is free. It hands
 * pages out last freed first, so after pages came home in random order
 * (random CPU touches) a migration took scattered device pages, and each
 * went home by an ioctl of its own: a sequential sweep after a random one
 * ran at 2.0 GB/s against 3.1 in order. Called before a migration to the
 * device allocates; O(pages), only when the region is empty and a page was
 * freed since. Allocations meanwhile wait for it (reordering).
 */
void uhmm__devmem_reorder(struct uhmm_devmem *dm)
{
	uint64_t head, cur, nh;
	uint32_t first = 0, last = 0;
	unsigned char *mine;

	if (atomic_load(&dm->in_use) || !atomic_load(&dm->unordered) ||
	    atomic_exchange(&dm->reordering, 1))
		return;
	mine = calloc(dm->npages, 1);
	if (!mine)
		goto out;
	/* Take the whole list: nobody else can follow it now. */
	head = atomic_load(&dm->free_head);
	do {
		if (atomic_load(&dm->in_use) || !(uint32_t)head)
			goto out_free;
		nh = ((head >> 32) + 1) << 32;
	} while (!atomic_compare_exchange_weak(&dm->free_head, &head, nh));
	atomic_store(&dm->unordered, 0);
	for (uint32_t i = (uint32_t)head; i;
	     i = __atomic_load_n(&dm->pages[i - 1].next_free, __ATOMIC_RELAXED))
		mine[i - 1] = 1;
	/* Relink what we hold, lowest page first. */
	for (unsigned long i = dm->npages; i-- > 0;) {
		if (!mine[i])
			continue;
		/* Relaxed atomics: a pop that lost the race may still read it. */
		__atomic_store_n(&dm->pages[i].next_free, first, __ATOMIC_RELAXED);
		first = (uint32_t)(i + 1);
		if (!last)
			last = first;
	}
	/* Give it back ahead of whatever was freed meanwhile. */
	cur = atomic_load(&dm->free_head);
	do {
		__atomic_store_n(&dm->pages[last - 1].next_free, (uint32_t)cur, __ATOMIC_RELAXED);
		nh = ((cur >> 32) + 1) << 32 | first;
	} while (!atomic_compare_exchange_weak(&dm->free_head, &cur, nh));
out_free:
	free(mine);
out:
	atomic_store(&dm->reordering, 0);
}

static void devmem_free(struct uhmm *h, void *p)
{
	struct uhmm_devmem *dm = p;

	(void)h;
	munmap(dm->pages, dm->pages_len);
	free(dm);
}

int uhmm_devmem_remove(struct uhmm_devmem *dm)
{
	struct uhmm *h;
	unsigned long poisoned = 0;

	if (!dm)
		return 0;
	h = dm->h;
	/* Queued prefetches name the region: they run (or fail) before it goes. */
	uhmm__prefetch_drain(h);
	atomic_store(&dm->dying, 1);
	/*
	 * Evict: every page holding data comes home, or is poisoned. Pages
	 * locked by a concurrent fault or migration are retried until none is
	 * left; the state words are the truth, the descriptors say where to look.
	 */
	while (!atomic_load(&h->closed) && atomic_load(&dm->in_use)) {
		for (unsigned long i = 0;
		     i < dm->npages && (atomic_load(&dm->resident) || atomic_load(&dm->dups)); i++) {
			uintptr_t a = uhmm_page_addr(&dm->pages[i]);
			unsigned long p = 0;

			if (!a || !__atomic_load_n(&dm->pages[i].refcount, __ATOMIC_ACQUIRE))
				continue;
			uhmm__home_range(h, a, a + PAGE_SIZE, dm, &p);
			poisoned += p;
		}
		/*
		 * Transient references (faults in flight, driver references) drain;
		 * forked children that still hold pages of the region get them now;
		 * a migration that allocated before `dying` may still commit a page:
		 * then the loop evicts it too.
		 */
		if (atomic_load(&dm->in_use)) {
			uhmm__children_flush(h, dm);
			sched_yield();
		}
	}

	pthread_mutex_lock(&h->lock);
	atomic_store(&h->dm[dm->slot], NULL);
	uhmm__retire(h, devmem_free, dm);
	uhmm__reclaim(h);
	pthread_mutex_unlock(&h->lock);
	uhmm__put(h);
	return (int)poisoned;
}

/* At close: nothing is resident any more; stop allocations. */
void uhmm__devmem_orphan_all(struct uhmm *h)
{
	for (unsigned s = 1; s < MAX_DEVMEM; s++) {
		struct uhmm_devmem *dm = atomic_load(&h->dm[s]);

		if (dm)
			atomic_store(&dm->dying, 1);
	}
}

void *uhmm_devmem_driver_data(const struct uhmm_devmem *dm)
{
	return dm ? dm->driver_data : NULL;
}

void *uhmm_devmem_owner(const struct uhmm_devmem *dm)
{
	return dm ? dm->owner : NULL;
}

struct uhmm *uhmm_devmem_handle(const struct uhmm_devmem *dm)
{
	return dm ? dm->h : NULL;
}

struct uhmm_page *uhmm_devmem_page(struct uhmm_devmem *dm, unsigned long pfn)
{
	return dm && pfn < dm->npages ? &dm->pages[pfn] : NULL;
}

int uhmm_devmem_stats(struct uhmm_devmem *dm, struct uhmm_devmem_stats *st)
{
	struct uhmm_devmem_stats s = { .sz = sizeof(s) };
	size_t sz;
	int ret;

	if (!dm || !st)
		return -EINVAL;
	sz = st->sz;
	ret = uhmm__opts_check(st, sz, sizeof(s));
	if (ret)
		return ret;
	s.npages = dm->npages;
	s.in_use = (uint64_t)atomic_load(&dm->in_use);
	s.resident = (uint64_t)atomic_load(&dm->resident);
	s.page_frees = (uint64_t)atomic_load(&dm->page_frees);
	s.owner_pages = (uint64_t)atomic_load(&dm->acct->pages);
	s.faults = (uint64_t)atomic_load(&dm->st_faults);
	s.pages_to = (uint64_t)atomic_load(&dm->st_to);
	s.pages_from = (uint64_t)atomic_load(&dm->st_from);
	s.bytes_to = s.pages_to * PAGE_SIZE;
	s.bytes_from = s.pages_from * PAGE_SIZE;
	s.prefetched = (uint64_t)atomic_load(&dm->st_prefetched);
	s.evictions = (uint64_t)atomic_load(&dm->st_evictions);
	s.thrash_events = (uint64_t)atomic_load(&dm->st_thrash);
	s.duplicates = (uint64_t)atomic_load(&dm->dups);
	s.pages_duplicated = (uint64_t)atomic_load(&dm->st_duplicated);
	s.dup_drops = (uint64_t)atomic_load(&dm->st_dup_drops);
	memcpy(st, &s, sz < sizeof(s) ? sz : sizeof(s));
	st->sz = sz;
	return 0;
}
