/* SPDX-License-Identifier: MIT */
/*
 * sim.c - the software device: device-private memory in its own pool, copies
 * by memcpy, failure injection. Written against the public driver API only,
 * as an out-of-tree driver would be.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "uhmm_sim.h"

#define SIM_PAGE UHMM_PAGE_SIZE
#define SIM_FAIL_PAGES 64

struct uhmm_sim {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	char *pool; /* npages * SIM_PAGE, never part of a managed range */
	size_t pool_len;
	unsigned long npages;
	atomic_int dead;
	atomic_uint fail_next;
	_Atomic uintptr_t fail_addr[SIM_FAIL_PAGES];
	atomic_ulong copies_to, copies_from, copy_errors, page_frees, faults;
};

static char *sim_mem(struct uhmm_sim *sim, const struct uhmm_page *page)
{
	return sim->pool + page->pfn * SIM_PAGE;
}

/* Async-signal-safe: atomics only. */
static int sim_check(struct uhmm_sim *sim, const struct uhmm_page *page)
{
	unsigned int n;

	if (atomic_load(&sim->dead))
		return -ENODEV;
	n = atomic_load(&sim->fail_next);
	while (n && !atomic_compare_exchange_weak(&sim->fail_next, &n, n - 1))
		;
	if (n)
		return -EIO;
	uintptr_t addr = uhmm_page_addr(page);

	for (int i = 0; i < SIM_FAIL_PAGES; i++)
		if (addr && atomic_load(&sim->fail_addr[i]) == addr)
			return -EIO;
	return 0;
}

static int sim_copy_to_device(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			      const void *const *src, unsigned long n)
{
	struct uhmm_sim *sim = uhmm_devmem_driver_data(dm);
	int ret = 0;

	for (unsigned long i = 0; i < n; i++) {
		int err = sim_check(sim, dst[i]);

		if (err) {
			ret = err;
			continue;
		}
		if (src[i])
			memcpy(sim_mem(sim, dst[i]), src[i], SIM_PAGE);
		else
			memset(sim_mem(sim, dst[i]), 0, SIM_PAGE);
		atomic_fetch_add_explicit(&sim->copies_to, 1, memory_order_relaxed);
	}
	if (ret)
		atomic_fetch_add(&sim->copy_errors, 1);
	return ret;
}

static int sim_copy_from_device(struct uhmm_devmem *dm, void *const *dst,
				struct uhmm_page *const *src, unsigned long n)
{
	struct uhmm_sim *sim = uhmm_devmem_driver_data(dm);
	int ret = 0;

	for (unsigned long i = 0; i < n; i++) {
		int err = sim_check(sim, src[i]);

		if (err) {
			ret = err;
			continue;
		}
		memcpy(dst[i], sim_mem(sim, src[i]), SIM_PAGE);
		atomic_fetch_add_explicit(&sim->copies_from, 1, memory_order_relaxed);
	}
	if (ret)
		atomic_fetch_add(&sim->copy_errors, 1);
	return ret;
}

/*
 * The CPU touched one of our pages: the kernel driver's pattern, in user
 * space. Collect the page (the core holds its lock) and, while faults look
 * sequential, the pages after it (uhmm_fault_window); copy them into the
 * system buffers; commit. If another migration moved the page first, nothing
 * is collected and the access simply restarts.
 */
static int sim_migrate_to_ram(struct uhmm_fault *vmf)
{
	struct uhmm_devmem *dm = vmf->page->devmem;
	struct uhmm_sim *sim = uhmm_devmem_driver_data(dm);
	uint64_t src[UHMM_MIGRATE_MAX_PAGES], dst[UHMM_MIGRATE_MAX_PAGES];
	unsigned long n = uhmm_fault_window(vmf);
	struct uhmm_migrate a = {
		.h = vmf->h,
		.start = vmf->address,
		.end = vmf->address + n * SIM_PAGE,
		.src = src,
		.dst = dst,
		.pgmap_owner = sim,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	int ret = 0;

	atomic_fetch_add_explicit(&sim->faults, 1, memory_order_relaxed);
	/* The window may run past the managed range: then the page alone. */
	if (uhmm_migrate_setup(&a)) {
		a.end = vmf->address + SIM_PAGE;
		ret = uhmm_migrate_setup(&a);
		if (ret)
			return ret;
	}
	for (unsigned long i = 0; i < a.npages; i++) {
		struct uhmm_page *page = uhmm_migrate_entry_page(src[i]);
		void *buf = uhmm_migrate_sysbuf(&a, i);
		int err;

		if (!(src[i] & UHMM_MIGRATE_MIGRATE) || !page)
			continue;
		err = sim_copy_from_device(dm, &buf, &page, 1);
		dst[i] = err ? 0 : UHMM_MIGRATE_VALID;
		/* Only the touched page's failure is the fault's; neighbours stay put. */
		if (err && page == vmf->page)
			ret = err;
	}
	uhmm_migrate_pages(&a);
	uhmm_migrate_finalize(&a);
	return ret;
}

static void sim_page_free(struct uhmm_page *page)
{
	struct uhmm_sim *sim = uhmm_devmem_driver_data(page->devmem);

	atomic_fetch_add_explicit(&sim->page_frees, 1, memory_order_relaxed);
}

static const struct uhmm_devmem_ops sim_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = sim_copy_to_device,
	.copy_from_device = sim_copy_from_device,
	.migrate_to_ram = sim_migrate_to_ram,
	.page_free = sim_page_free,
};

int uhmm_sim_create(struct uhmm *h, const struct uhmm_sim_opts *opts, struct uhmm_sim **out)
{
	struct uhmm_sim_opts o = { .sz = sizeof(o), .npages = 65536, .name = "sim" };
	struct uhmm_sim *sim;
	int ret;

	if (!h || !out)
		return -EINVAL;
	*out = NULL;
	if (opts) {
		const unsigned char *p = (const void *)opts;

		if (opts->sz < sizeof(size_t))
			return -EINVAL;
		for (size_t i = sizeof(o); i < opts->sz; i++)
			if (p[i])
				return -E2BIG;
		if (opts->sz > offsetof(struct uhmm_sim_opts, npages) && opts->npages)
			o.npages = opts->npages;
		if (opts->sz > offsetof(struct uhmm_sim_opts, name) && opts->name)
			o.name = opts->name;
	}
	if (o.npages > (1UL << 31))
		return -EINVAL;
	sim = calloc(1, sizeof(*sim));
	if (!sim)
		return -ENOMEM;
	sim->h = h;
	sim->npages = o.npages;
	sim->pool_len = o.npages * SIM_PAGE;
	sim->pool = mmap(NULL, sim->pool_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (sim->pool == MAP_FAILED) {
		free(sim);
		return -ENOMEM;
	}
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE,
		  .npages = o.npages, .owner = sim, .ops = &sim_ops, .driver_data = sim,
		  .name = o.name);
	ret = uhmm_devmem_add(h, &desc, &sim->dm);
	if (ret) {
		munmap(sim->pool, sim->pool_len);
		free(sim);
		return ret;
	}
	*out = sim;
	return 0;
}

int uhmm_sim_destroy(struct uhmm_sim *sim)
{
	int ret;

	if (!sim)
		return 0;
	ret = uhmm_devmem_remove(sim->dm);
	munmap(sim->pool, sim->pool_len);
	free(sim);
	return ret;
}

struct uhmm_devmem *uhmm_sim_devmem(struct uhmm_sim *sim)
{
	return sim ? sim->dm : NULL;
}

int uhmm_sim_fail_copies(struct uhmm_sim *sim, unsigned int n)
{
	if (!sim)
		return -EINVAL;
	atomic_store(&sim->fail_next, n);
	return 0;
}

int uhmm_sim_fail_page(struct uhmm_sim *sim, const void *addr)
{
	uintptr_t a = (uintptr_t)addr & ~(SIM_PAGE - 1);

	if (!sim || !a)
		return -EINVAL;
	for (int i = 0; i < SIM_FAIL_PAGES; i++) {
		uintptr_t z = 0;

		if (atomic_load(&sim->fail_addr[i]) == a ||
		    atomic_compare_exchange_strong(&sim->fail_addr[i], &z, a))
			return 0;
	}
	return -ENOSPC;
}

int uhmm_sim_kill(struct uhmm_sim *sim)
{
	if (!sim)
		return -EINVAL;
	atomic_store(&sim->dead, 1);
	return 0;
}

int uhmm_sim_clear_faults(struct uhmm_sim *sim)
{
	if (!sim)
		return -EINVAL;
	atomic_store(&sim->fail_next, 0);
	for (int i = 0; i < SIM_FAIL_PAGES; i++)
		atomic_store(&sim->fail_addr[i], 0);
	return 0;
}

int uhmm_sim_stats(struct uhmm_sim *sim, struct uhmm_sim_stats *st)
{
	struct uhmm_sim_stats s = { .sz = sizeof(s) };
	size_t sz;

	if (!sim || !st || st->sz < sizeof(size_t))
		return -EINVAL;
	sz = st->sz;
	for (size_t i = sizeof(s); i < sz; i++)
		if (((const unsigned char *)st)[i])
			return -E2BIG;
	s.copies_to = atomic_load(&sim->copies_to);
	s.copies_from = atomic_load(&sim->copies_from);
	s.copy_errors = atomic_load(&sim->copy_errors);
	s.page_frees = atomic_load(&sim->page_frees);
	s.migrate_to_ram = atomic_load(&sim->faults);
	memcpy(st, &s, sz < sizeof(s) ? sz : sizeof(s));
	st->sz = sz;
	return 0;
}
