/* SPDX-License-Identifier: MIT */
/*
 * exclusive.c - exclusive access for device atomics: the kernel's
 * make_device_exclusive, in user space.
 *
 * The kernel replaces the CPU's PTE with a device-exclusive entry; the page
 * stays in system memory, the device maps it for atomics, and the first CPU
 * access restores the PTE (revocation) after telling the device. Here the
 * pages migrate into host memory uhmm keeps for the purpose: a device-private
 * region of its own ("exclusive", owner: this module), registered like any
 * driver's, whose pages are ordinary memory the device reaches by CPU
 * address. The CPU's accesses fault (the pages are gone from its page
 * table); the fault brings the page back, and the invalidation that goes
 * before it tells every device mirroring the page to drop its mapping.
 * Being a device region, the pages follow discards, unmaps, mremap, fork and
 * unmanage as device pages do, and no device's own memory is spent.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

/* Pages the exclusive region holds at once: 64 MiB of atomics. */
#define EXCL_PAGES 16384UL

static char *excl_mem(struct uhmm_devmem *dm, const struct uhmm_page *page)
{
	return (char *)uhmm_devmem_driver_data(dm) + (page->pfn << PAGE_SHIFT);
}

static int excl_copy_to(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			const void *const *src, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++) {
		if (src[i])
			memcpy(excl_mem(dm, dst[i]), src[i], PAGE_SIZE);
		else
			memset(excl_mem(dm, dst[i]), 0, PAGE_SIZE);
	}
	return 0;
}

static int excl_copy_from(struct uhmm_devmem *dm, void *const *dst, struct uhmm_page *const *src,
			  unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		memcpy(dst[i], excl_mem(dm, src[i]), PAGE_SIZE);
	return 0;
}

/*
 * The revocation: the CPU touched the page. Only that page comes back (the
 * kernel revokes page by page), installed straight from the host memory.
 */
static int excl_migrate_to_ram(struct uhmm_fault *vmf)
{
	struct uhmm_devmem *dm = vmf->page->devmem;
	uint64_t src[1], dst[1];
	struct uhmm_migrate a = {
		.h = vmf->h,
		.start = vmf->address,
		.end = vmf->address + PAGE_SIZE,
		.src = src,
		.dst = dst,
		.pgmap_owner = uhmm_devmem_owner(dm),
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	int ret = uhmm_migrate_setup(&a);

	if (ret)
		return ret;
	dst[0] = 0;
	if ((src[0] & UHMM_MIGRATE_MIGRATE) && uhmm_migrate_entry_page(src[0]))
		dst[0] = UHMM_MIGRATE_VALID |
			 (uintptr_t)excl_mem(dm, uhmm_migrate_entry_page(src[0]));
	uhmm_migrate_pages(&a);
	uhmm_migrate_finalize(&a);
	return 0;
}

/* Freed pages give their memory back: atomics leave no resident trace. */
static void excl_page_free(struct uhmm_page *page)
{
	madvise(excl_mem(page->devmem, page), PAGE_SIZE, MADV_DONTNEED);
}

static int excl_page_data(struct uhmm_page *page, const void **data)
{
	*data = excl_mem(page->devmem, page);
	return 0;
}

static const struct uhmm_devmem_ops excl_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = excl_copy_to,
	.copy_from_device = excl_copy_from,
	.migrate_to_ram = excl_migrate_to_ram,
	.page_free = excl_page_free,
	.page_data = excl_page_data,
};

/* The handle's exclusive region, made on first use. Returns it, or NULL with *err. */
static struct uhmm_devmem *excl_region(struct uhmm *h, int *err)
{
	struct uhmm_devmem *dm = atomic_load(&h->excl_dm);
	static const char owner_tag = 0;
	void *mem;

	if (dm)
		return dm;
	pthread_mutex_lock(&h->excl_lock);
	dm = atomic_load(&h->excl_dm);
	if (dm)
		goto out;
	if (atomic_load(&h->closed)) {
		*err = -ESHUTDOWN;
		goto out;
	}
	mem = mmap(NULL, EXCL_PAGES << PAGE_SHIFT, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED) {
		*err = -ENOMEM;
		goto out;
	}
	/* A forked child reaches these pages through the parent, as any device page. */
	madvise(mem, EXCL_PAGES << PAGE_SHIFT, MADV_DONTFORK);
	{
		UHMM_OPTS(uhmm_devmem_desc, d, .type = UHMM_MEMORY_DEVICE_PRIVATE,
			  .npages = EXCL_PAGES, .owner = (void *)&owner_tag, .ops = &excl_ops,
			  .driver_data = mem, .name = "exclusive",
			  .flags = UHMM_DEVMEM_NONBLOCKING);

		*err = uhmm_devmem_add(h, &d, &dm);
	}
	if (*err) {
		munmap(mem, EXCL_PAGES << PAGE_SHIFT);
		dm = NULL;
		goto out;
	}
	h->excl_mem = mem;
	atomic_store(&h->excl_dm, dm);
out:
	pthread_mutex_unlock(&h->excl_lock);
	return dm;
}

bool uhmm__is_exclusive(struct uhmm *h, const struct uhmm_devmem *dm)
{
	return dm && dm == atomic_load(&h->excl_dm);
}

/*
 * Lock the word of @a if it names a page of the exclusive region backing @a:
 * returns the page (word locked), or NULL (nothing held). Try-locks only, as
 * every multi-page locker must (this call holds the pages before @a): a page
 * someone holds for long (a slow migration) is left out.
 */
#define EXCL_LOCK_TRIES 1000

static struct uhmm_page *lock_exclusive(struct uhmm *h, struct uhmm_devmem *dm, uintptr_t a)
{
	struct uhmm_page *page = NULL;
	struct range *r;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, a);
	if (r) {
		_Atomic uint64_t *w = uhmm__word(r, a);
		uint64_t v;
		int tries = 0;

		while (!uhmm__trylock(w, &v) && ++tries < EXCL_LOCK_TRIES)
			sched_yield();
		if (tries < EXCL_LOCK_TRIES) {
			if (w_kind(v) == W_DEVICE)
				page = uhmm__word_page(h, v);
			if (!page || page->devmem != dm || uhmm_page_addr(page) != a) {
				uhmm__unlock(w, v);
				page = NULL;
			}
		}
	}
	uhmm__rd_exit(h);
	return page;
}

/* Whether a page of [s, e) is in a device's memory (or duplicated there). */
static bool any_on_devices(struct uhmm *h, uintptr_t s, uintptr_t e)
{
	struct range *r = NULL;
	bool any = false;

	uhmm__rd_enter(h);
	for (uintptr_t a = s; a < e && !any; a += PAGE_SIZE) {
		r = uhmm__lookup_near(h, r, a);
		any = !r || w_has_page(atomic_load(uhmm__word(r, a)));
	}
	uhmm__rd_exit(h);
	return any;
}

static long make_locked(struct uhmm *h, struct uhmm_devmem *dm, uintptr_t s, size_t len,
			void *owner, void **pages)
{
	void *addr = (void *)s;
	long n = 0;
	int ret;

	/*
	 * As the kernel faults the pages in writable first: pages in any
	 * device's memory (exclusive ones included) come home, then all move
	 * to the exclusive region, holes as pages of zeros.
	 */
	if (any_on_devices(h, s, s + len)) {
		ret = uhmm_migrate_to_ram(h, addr, len);
		if (ret < 0)
			return ret;
	}
	ret = uhmm__to_device_exclusive(dm, addr, len, owner);
	if (ret < 0)
		return ret;
	/* Locked until uhmm_exclusive_unlock, as the kernel returns the folio locked. */
	for (size_t i = 0; i < len >> PAGE_SHIFT; i++) {
		struct uhmm_page *page = lock_exclusive(h, dm, s + (i << PAGE_SHIFT));

		pages[i] = page ? excl_mem(dm, page) : NULL;
		n += !!page;
	}
	return n;
}

int uhmm_make_exclusive(struct uhmm *h, void *addr, size_t len, void *owner, void **pages)
{
	uintptr_t s = (uintptr_t)addr;
	struct uhmm_devmem *dm;
	int ret, err = 0;
	long n;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	if (!owner || !pages)
		return -EINVAL;
	memset(pages, 0, (len >> PAGE_SHIFT) * sizeof(*pages));
	ret = uhmm_can_migrate(h);
	if (ret)
		return ret;
	/* As the kernel: only pages the CPU may write (a device's atomics write). */
	for (uintptr_t a = s, end; a < s + len; a = end) {
		int prot = uhmm__vma_prot(a, &end);

		if (prot < 0)
			return prot == -ENOENT ? -EFAULT : prot;
		if (!(prot & PROT_WRITE))
			return -EPERM;
	}
	dm = excl_region(h, &err);
	if (!dm)
		return err;
	/*
	 * One caller at a time: pages another caller made exclusive between
	 * our migrations would otherwise be handed to two devices at once.
	 */
	pthread_mutex_lock(&h->excl_lock);
	n = make_locked(h, dm, s, len, owner, pages);
	pthread_mutex_unlock(&h->excl_lock);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}

void uhmm_exclusive_unlock(struct uhmm *h, void *addr, size_t len, void *const *pages)
{
	uintptr_t s = (uintptr_t)addr;

	if (!h || !pages || uhmm__check_range(addr, len))
		return;
	uhmm__rd_enter(h);
	for (size_t i = 0; i < len >> PAGE_SHIFT; i++) {
		uintptr_t a = s + (i << PAGE_SHIFT);
		struct range *r = pages[i] ? uhmm__lookup(h, a) : NULL;

		if (r) {
			_Atomic uint64_t *w = uhmm__word(r, a);
			uint64_t v = atomic_load(w);
			struct uhmm_page *page = w_kind(v) == W_DEVICE ? uhmm__word_page(h, v) : NULL;

			/* Only a lock this page's make_exclusive took: never twice, never another's. */
			if ((v & W_LOCKED) && page && uhmm__is_exclusive(h, page->devmem) &&
			    excl_mem(page->devmem, page) == pages[i] && uhmm_page_addr(page) == a)
				uhmm__unlock(w, v);
		}
	}
	uhmm__rd_exit(h);
}

/* At close: the region's pages are home (uhmm_close brought everything back). */
void uhmm__exclusive_fini(struct uhmm *h)
{
	struct uhmm_devmem *dm;

	pthread_mutex_lock(&h->excl_lock); /* after a first use under way, if any */
	dm = atomic_exchange(&h->excl_dm, NULL);
	pthread_mutex_unlock(&h->excl_lock);

	if (!dm)
		return;
	uhmm_devmem_remove(dm);
	munmap(h->excl_mem, EXCL_PAGES << PAGE_SHIFT);
	h->excl_mem = NULL;
}
