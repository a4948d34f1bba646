/* SPDX-License-Identifier: MIT */
/*
 * devmem.c - device memory regions, their page descriptors, the shared
 * allocator of free pages (a bitmap), reference counts, per-owner
 * accounting, hot-remove.
 */
#include <errno.h>
#include <limits.h>
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
	pthread_mutex_init(&dm->vlock, NULL);
	/* Descriptors: reserved like the state words, touched as pages are used. */
	dm->pages_len = (d.npages * sizeof(struct uhmm_page) + PAGE_SIZE - 1) & PAGE_MASK;
	dm->pages = mmap(NULL, dm->pages_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (dm->pages == MAP_FAILED) {
		ret = -ENOMEM;
		goto err_free;
	}
	/* Every page starts free: a bitmap of pages in use, untouched until used. */
	dm->used_len = ((d.npages + 63) / 64 * sizeof(uint64_t) + PAGE_SIZE - 1) & PAGE_MASK;
	dm->used = mmap(NULL, dm->used_len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (dm->used == MAP_FAILED) {
		ret = -ENOMEM;
		goto err_unmap;
	}
	for (unsigned long i = 0; i < d.npages; i++) {
		dm->pages[i].devmem = dm;
		dm->pages[i].owner = d.owner;
		dm->pages[i].pfn = i;
	}
	atomic_store(&dm->low, 0);

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
	munmap(dm->used, dm->used_len);
err_unmap:
	munmap(dm->pages, dm->pages_len);
err_free:
	pthread_mutex_destroy(&dm->vlock);
	free(dm);
	return ret;
}

/* The pages of bitmap word @w that exist: all 64 but in the last word. */
static uint64_t word_mask(const struct uhmm_devmem *dm, unsigned long w)
{
	unsigned long n = dm->npages - w * 64;

	return n >= 64 ? ~0ULL : (1ULL << n) - 1;
}

/* The lowest @n set bits of @bits (all of them if fewer). */
static uint64_t lowest_bits(uint64_t bits, unsigned long n)
{
	uint64_t t = 0;

	if ((unsigned long)__builtin_popcountll(bits) <= n)
		return bits;
	while (n--) {
		t |= bits & -bits;
		bits &= bits - 1;
	}
	return t;
}

/*
 * Up to @n free pages into @pages, lowest page first, so in page order:
 * adjoining CPU pages get adjoining device pages (copies stream, pages
 * come home a run per ioctl), whatever order pages were freed in. One CAS
 * per 64 pages. dm->low says below which bitmap word no page is free, and
 * counts frees in its high half: a claimer moves it up only if no page was
 * freed since it looked (a free lowers it). Returns how many it took, fewer
 * than @n only when the region runs out.
 */
static unsigned long claim(struct uhmm_devmem *dm, struct uhmm_page **pages, unsigned long n)
{
	uint64_t low = atomic_load(&dm->low);
	unsigned long nwords = (dm->npages + 63) / 64, w = (uint32_t)low, got = 0;
	unsigned long first_free = ULONG_MAX;

	while (w < nwords && got < n) {
		uint64_t v = atomic_load(&dm->used[w]), mask = word_mask(dm, w);
		uint64_t take = lowest_bits(~v & mask, n - got);

		if (!take) {
			w++;
			continue;
		}
		if (!atomic_compare_exchange_weak(&dm->used[w], &v, v | take))
			continue;
		if ((v | take) != mask && first_free == ULONG_MAX)
			first_free = w;
		for (; take; take &= take - 1)
			pages[got++] = &dm->pages[w * 64 + (unsigned long)__builtin_ctzll(take)];
	}
	if (first_free == ULONG_MAX)
		first_free = w;
	if (first_free > (uint32_t)low)
		atomic_compare_exchange_strong(&dm->low, &low,
					       (low >> 32) << 32 | (uint32_t)first_free);
	return got;
}

/* Page @pfn is free again: its bit cleared, dm->low lowered to it and counted. */
static void release(struct uhmm_devmem *dm, unsigned long pfn)
{
	unsigned long w = pfn / 64;
	uint64_t low, nl;

	atomic_fetch_and(&dm->used[w], ~(1ULL << (pfn % 64)));
	low = atomic_load(&dm->low);
	do {
		uint32_t lw = (uint32_t)low < w ? (uint32_t)low : (uint32_t)w;

		nl = ((low >> 32) + 1) << 32 | lw;
	} while (!atomic_compare_exchange_weak(&dm->low, &low, nl));
}

struct uhmm_page *uhmm_devmem_alloc_page(struct uhmm_devmem *dm)
{
	struct uhmm_page *page;

	return uhmm__devmem_alloc_pages(dm, &page, 1) ? page : NULL;
}

/*
 * Up to @n free pages into @pages, in page order, each with one reference;
 * fewer only when the region runs out (or is going). One count for the lot:
 * a migration of 1 GiB took 10 ms allocating one page at a time.
 */
unsigned long uhmm__devmem_alloc_pages(struct uhmm_devmem *dm, struct uhmm_page **pages,
				       unsigned long n)
{
	unsigned long got;

	if (!dm || atomic_load(&dm->dying))
		return 0;
	got = claim(dm, pages, n);
	for (unsigned long j = 0; j < got; j++) {
		__atomic_store_n(&pages[j]->refcount, 1, __ATOMIC_RELEASE);
		uhmm__page_set_addr(pages[j], 0);
	}
	if (got) {
		atomic_fetch_add(&dm->in_use, (long)got);
		atomic_fetch_add(&dm->acct->pages, (long)got);
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

	if (!page || __atomic_sub_fetch(&page->refcount, 1, __ATOMIC_ACQ_REL))
		return;
	dm = page->devmem;
	if (has_page_free(dm))
		dm->ops->page_free(page);
	uhmm__page_set_addr(page, 0);
	atomic_fetch_add(&dm->page_frees, 1);
	atomic_fetch_sub(&dm->acct->pages, 1);
	release(dm, page->pfn);
	atomic_fetch_sub(&dm->in_use, 1);
}

static void devmem_free(struct uhmm *h, void *p)
{
	struct uhmm_devmem *dm = p;

	(void)h;
	munmap(dm->used, dm->used_len);
	munmap(dm->pages, dm->pages_len);
	pthread_mutex_destroy(&dm->vlock);
	free(dm->victims);
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
