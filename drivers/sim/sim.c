/* SPDX-License-Identifier: MIT */
/*
 * sim.c - the software device: device-private memory in its own pool, copies
 * by memcpy, failure injection, and its own migrations (as a kernel driver
 * drives migrate_vma_*). Written against the public driver API only, as an
 * out-of-tree driver would be. The page table is pt.c, the compute engine
 * exec.c, the test driver's command set dmirror.c.
 */
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "sim_internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static char *sim_mem(struct uhmm_sim *sim, const struct uhmm_page *page)
{
	return sim_pool_page(sim, page->pfn);
}

/*
 * The device's copy engine. Into device memory with streaming stores, as a
 * DMA engine writes: no read-for-ownership of lines about to be overwritten,
 * and the program's cache is left alone. 8.0-8.4 GB/s per 4 KiB page here,
 * against 4.5-6.1 GB/s for the memcpy GCC inlines for a constant 4 KiB (rep
 * movsq) and 6.3 GB/s for glibc's. But streamed data leaves the cache, and a
 * fault that brings a page back soon reads it from DRAM: streaming every copy
 * made fault-back 15% slower (1.15x the raw round trip against 1.00x). So,
 * as glibc's memcpy streams only past a size, only a stream is streamed
 * (sim_streaming). Streaming stores are weakly ordered: sim_copy_fence()
 * before anyone may read the page. Out of device memory (into a bounce
 * buffer the kernel copies from next) with ordinary stores, which leave the
 * data in cache for that copy: 9.8 GB/s against 9.0 inlined.
 */
#if defined(__SSE2__)
/* One cache line (64 bytes); @stream: streaming stores (@d 16-byte aligned). */
static inline void sim_copy_line(__m128i *d, const __m128i *s, bool stream)
{
	__m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1), c = _mm_loadu_si128(s + 2),
		e = _mm_loadu_si128(s + 3);

	if (stream) {
		_mm_stream_si128(d, a);
		_mm_stream_si128(d + 1, b);
		_mm_stream_si128(d + 2, c);
		_mm_stream_si128(d + 3, e);
	} else {
		_mm_storeu_si128(d, a);
		_mm_storeu_si128(d + 1, b);
		_mm_storeu_si128(d + 2, c);
		_mm_storeu_si128(d + 3, e);
	}
}
#endif

void sim_copy_page(void *dst, const void *src, bool stream)
{
#if defined(__SSE2__)
	__m128i *d = dst;
	const __m128i *s = src;

	stream = stream && !((uintptr_t)dst & 15);
	for (size_t i = 0; i < SIM_PAGE / sizeof(*d); i += 4)
		sim_copy_line(d + i, s + i, stream);
#else
	(void)stream;
	memcpy(dst, src, SIM_PAGE);
#endif
}

/*
 * Four pages streamed at once, a cache line of each in turn, reading ahead
 * in each: 10.3-11.1 GB/s here against 8.5-9.2 for one page after another
 * with the same stores (glibc's memcpy of a large buffer interleaves pages
 * the same way: it keeps more DRAM pages open and prefetch streams busy).
 */
static void sim_stream4(void *const *dst, const void *const *src)
{
#if defined(__SSE2__)
	for (size_t off = 0; off < SIM_PAGE; off += 64) {
		for (int k = 0; k < 4; k++) {
			const __m128i *s = (const __m128i *)((const char *)src[k] + off);

			_mm_prefetch((const char *)s + 256, _MM_HINT_T0);
			sim_copy_line((__m128i *)((char *)dst[k] + off), s, true);
		}
	}
#else
	for (int k = 0; k < 4; k++)
		memcpy(dst[k], src[k], SIM_PAGE);
#endif
}

void sim_copy_pages(void *const *dst, const void *const *src, unsigned long n, bool stream)
{
	unsigned long i = 0;

#if defined(__SSE2__)
	for (; stream && i + 4 <= n; i += 4) {
		bool aligned = true;

		for (int k = 0; k < 4; k++)
			aligned = aligned && !((uintptr_t)dst[i + k] & 15);
		if (!aligned)
			break;
		sim_stream4(dst + i, src + i);
	}
#endif
	for (; i < n; i++)
		sim_copy_page(dst[i], src[i], stream);
}

void sim_copy_fence(void)
{
#if defined(__SSE2__)
	_mm_sfence();
#endif
}

/*
 * Whether a copy of the CPU range [first, end) to the device is part of a
 * stream: batches that each begin where the last ended (a migration of a
 * large range goes 2 MiB at a time), past SIM_STREAM_BYTES in all. A
 * heuristic: batches of two migrations at once just restart the count.
 * What is copied with ordinary stores costs a read for ownership now and a
 * write-back later: the first 64 MiB of a 512 MiB migration so made it
 * 5-8% slower than the first 8 MiB (mig3: 5.96-6.17 against 6.40-6.66
 * GB/s), and a page or a few (fault-back soon after) stay in cache still.
 */
#define SIM_STREAM_BYTES (8UL << 20)

static bool sim_streaming(struct uhmm_sim *sim, uintptr_t first, uintptr_t end)
{
	uintptr_t last = atomic_exchange_explicit(&sim->stream_next, end, memory_order_relaxed);
	unsigned long n = end - first;

	if (first == last)
		n += atomic_fetch_add_explicit(&sim->stream_bytes, n, memory_order_relaxed);
	else
		atomic_store_explicit(&sim->stream_bytes, n, memory_order_relaxed);
	return n > SIM_STREAM_BYTES;
}

/* Whether a copy of the data of CPU page @addr fails now. Async-signal-safe: atomics only. */
static int sim_check(struct uhmm_sim *sim, uintptr_t addr)
{
	unsigned int n;

	if (atomic_load(&sim->dead))
		return -ENODEV;
	n = atomic_load(&sim->fail_next);
	while (n && !atomic_compare_exchange_weak(&sim->fail_next, &n, n - 1))
		;
	if (n)
		return -EIO;
	for (int i = 0, used = atomic_load(&sim->fail_used); i < used; i++)
		if (addr && atomic_load(&sim->fail_addr[i]) == addr)
			return -EIO;
	return 0;
}

/* One page into device page @page, for CPU page @va (NULL @src: zeros). */
int sim_copy_one_to(struct uhmm_sim *sim, struct uhmm_page *page, const void *src, uintptr_t va)
{
	int err = sim_check(sim, va);

	if (err) {
		atomic_fetch_add(&sim->copy_errors, 1);
		return err;
	}
	if (src) {
		sim_copy_page(sim_mem(sim, page), src, false);
	} else {
		memset(sim_mem(sim, page), 0, SIM_PAGE);
	}
	atomic_fetch_add_explicit(&sim->copies_to, 1, memory_order_relaxed);
	return 0;
}

int sim_copy_one_from(struct uhmm_sim *sim, void *dst, struct uhmm_page *page, uintptr_t va)
{
	int err = sim_check(sim, va);

	if (err) {
		atomic_fetch_add(&sim->copy_errors, 1);
		return err;
	}
	sim_copy_page(dst, sim_mem(sim, page), false);
	atomic_fetch_add_explicit(&sim->copies_from, 1, memory_order_relaxed);
	return 0;
}

static int sim_copy_to_device(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			      const void *const *src, unsigned long n)
{
	struct uhmm_sim *sim = uhmm_devmem_driver_data(dm);
	unsigned long copied = 0;
	bool stream = n && sim_streaming(sim, uhmm_page_addr(dst[0]),
					 uhmm_page_addr(dst[n - 1]) + SIM_PAGE);
	void *to[4] = { 0 };
	const void *from[4] = { 0 };
	unsigned int k = 0;
	int ret = 0;

	for (unsigned long i = 0; i < n; i++) {
		int err = sim_check(sim, uhmm_page_addr(dst[i]));

		if (err) {
			ret = err;
			continue;
		}
		if (src[i]) {
			/* Four at a time: sim_copy_pages() streams them together. */
			to[k] = sim_mem(sim, dst[i]);
			from[k++] = src[i];
			if (k == 4) {
				sim_copy_pages(to, from, k, stream);
				k = 0;
			}
		} else {
			memset(sim_mem(sim, dst[i]), 0, SIM_PAGE);
		}
		copied++;
	}
	sim_copy_pages(to, from, k, stream);
	sim_copy_fence();
	atomic_fetch_add_explicit(&sim->copies_to, copied, memory_order_relaxed);
	if (ret)
		atomic_fetch_add(&sim->copy_errors, 1);
	return ret;
}

static int sim_copy_from_device(struct uhmm_devmem *dm, void *const *dst,
				struct uhmm_page *const *src, unsigned long n)
{
	struct uhmm_sim *sim = uhmm_devmem_driver_data(dm);
	unsigned long copied = 0;
	int ret = 0;

	for (unsigned long i = 0; i < n; i++) {
		int err = sim_check(sim, uhmm_page_addr(src[i]));

		if (err) {
			ret = err;
			continue;
		}
		sim_copy_page(dst[i], sim_mem(sim, src[i]), false);
		copied++;
	}
	atomic_fetch_add_explicit(&sim->copies_from, copied, memory_order_relaxed);
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
		int err;

		if (!(src[i] & UHMM_MIGRATE_MIGRATE) || !page)
			continue;
		/*
		 * The sim's memory is mapped in the process: the page is
		 * installed straight from it (dst = VALID | address), with no
		 * copy through the system buffer; failures are injected as for
		 * a copy.
		 */
		err = sim_check(sim, uhmm_page_addr(page));
		if (err) {
			atomic_fetch_add(&sim->copy_errors, 1);
			dst[i] = 0;
		} else {
			atomic_fetch_add_explicit(&sim->copies_from, 1, memory_order_relaxed);
			dst[i] = UHMM_MIGRATE_VALID | (uintptr_t)sim_mem(sim, page);
		}
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

/* The pool is in the process: the core installs pages home straight from it. */
static int sim_page_data(struct uhmm_page *page, const void **data)
{
	struct uhmm_sim *sim = uhmm_devmem_driver_data(page->devmem);
	int err = sim_check(sim, uhmm_page_addr(page));

	if (err) {
		atomic_fetch_add(&sim->copy_errors, 1);
		return err;
	}
	atomic_fetch_add_explicit(&sim->copies_from, 1, memory_order_relaxed);
	*data = sim_mem(sim, page);
	return 0;
}

static const struct uhmm_devmem_ops sim_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = sim_copy_to_device,
	.copy_from_device = sim_copy_from_device,
	.migrate_to_ram = sim_migrate_to_ram,
	.page_free = sim_page_free,
	.page_data = sim_page_data,
};

/* Register the pool as device memory (again, after a RELEASE). */
int sim_devmem_add(struct uhmm_sim *sim)
{
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE,
		  .npages = sim->npages, .owner = sim, .ops = &sim_ops, .driver_data = sim,
		  .name = sim->name, .flags = UHMM_DEVMEM_NONBLOCKING);

	return uhmm_devmem_add(sim->h, &desc, &sim->dm);
}

static bool opt_set(const struct uhmm_sim_opts *opts, size_t off)
{
	return opts && opts->sz > off;
}

int uhmm_sim_create(struct uhmm *h, const struct uhmm_sim_opts *opts, struct uhmm_sim **out)
{
	struct uhmm_sim_opts o = { .sz = sizeof(o), .npages = 65536, .name = "sim", .threads = 2,
				   .policy = UHMM_SIM_POLICY_MIGRATE, .fault_window = 16 };
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
		if (opt_set(opts, offsetof(struct uhmm_sim_opts, npages)) && opts->npages)
			o.npages = opts->npages;
		if (opt_set(opts, offsetof(struct uhmm_sim_opts, name)) && opts->name)
			o.name = opts->name;
		if (opt_set(opts, offsetof(struct uhmm_sim_opts, threads)) && opts->threads)
			o.threads = opts->threads;
		if (opt_set(opts, offsetof(struct uhmm_sim_opts, policy)) && opts->policy)
			o.policy = opts->policy;
		if (opt_set(opts, offsetof(struct uhmm_sim_opts, fault_window)) &&
		    opts->fault_window)
			o.fault_window = opts->fault_window;
	}
	if (o.npages > (1UL << 31) || o.threads > UHMM_SIM_MAX_THREADS ||
	    (o.policy != UHMM_SIM_POLICY_MIGRATE && o.policy != UHMM_SIM_POLICY_MAP) ||
	    o.fault_window > SIM_CHUNK || (o.fault_window & (o.fault_window - 1)))
		return -EINVAL;
	sim = calloc(1, sizeof(*sim));
	if (!sim)
		return -ENOMEM;
	sim->h = h;
	sim->npages = o.npages;
	sim->nthreads = o.threads;
	sim->policy = o.policy;
	sim->window = o.fault_window;
	snprintf(sim->name, sizeof(sim->name), "%s", o.name);
	sim->pool_len = o.npages * SIM_PAGE;
	sim->pool = mmap(NULL, sim->pool_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (sim->pool == MAP_FAILED) {
		ret = -ENOMEM;
		goto err_free;
	}
	ret = sim_devmem_add(sim);
	if (ret)
		goto err_unmap;
	ret = sim_pt_init(sim);
	if (ret)
		goto err_devmem;
	ret = sim_exec_start(sim);
	if (ret)
		goto err_pt;
	*out = sim;
	return 0;

err_pt:
	sim_pt_fini(sim);
err_devmem:
	uhmm_devmem_remove(sim->dm);
err_unmap:
	munmap(sim->pool, sim->pool_len);
err_free:
	free(sim);
	return ret;
}

int uhmm_sim_destroy(struct uhmm_sim *sim)
{
	int ret = 0;

	if (!sim)
		return 0;
	sim_exec_stop(sim);
	/* No device access any more: its view of the address space goes first. */
	sim_pt_fini(sim);
	if (sim->dm)
		ret = uhmm_devmem_remove(sim->dm);
	munmap(sim->pool, sim->pool_len);
	free(sim);
	return ret;
}

/* --- the device's own migrations --- */

#define SIM_HUGE (SIM_CHUNK * SIM_PAGE)

/*
 * The dmirror FLAGS FAIL_ALLOC: the next allocation of a migrate command
 * fails, once. A whole 2 MiB chunk then falls back to base pages, as the
 * kernel's driver does when a THP allocation fails; a base page fails.
 * Returns whether a base page allocation must fail now.
 */
static bool fail_alloc(struct uhmm_sim *sim, bool cmd, bool huge)
{
	if (!cmd || !(atomic_load(&sim->dflags) & UHMM_DMIRROR_FLAG_FAIL_ALLOC) ||
	    !(atomic_fetch_and(&sim->dflags, ~UHMM_DMIRROR_FLAG_FAIL_ALLOC) &
	      UHMM_DMIRROR_FLAG_FAIL_ALLOC))
		return false;
	if (huge) {
		atomic_fetch_add(&sim->alloc_fallbacks, 1);
		return false;
	}
	return true;
}

/*
 * One migration of [s, e) (inside one 2 MiB chunk) to the device. *busy:
 * pages could not be taken now; *unfit: pages taken that found no room.
 */
static int chunk_to_dev(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
			unsigned long *moved, bool *busy, unsigned long *unfit)
{
	uint64_t src[SIM_CHUNK], dst[SIM_CHUNK];
	struct uhmm_migrate a = {
		.h = sim->h,
		.start = s,
		.end = e,
		.src = src,
		.dst = dst,
		.pgmap_owner = sim,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	bool fail, full = false;
	int ret;

	if (!sim->dm)
		return -ENODEV;
	ret = uhmm_migrate_setup(&a);
	if (ret)
		return ret;
	fail = fail_alloc(sim, cmd, a.npages == SIM_CHUNK && !(s & (SIM_HUGE - 1)));
	for (unsigned long i = 0; i < a.npages; i++) {
		uintptr_t va = s + i * SIM_PAGE;
		struct uhmm_page *p;

		if (src[i] & UHMM_MIGRATE_BUSY)
			*busy = true;
		if (!(src[i] & UHMM_MIGRATE_MIGRATE))
			continue;
		if (full) {
			++*unfit;
			continue;
		}
		if (fail) {
			fail = false;
			atomic_fetch_add(&sim->alloc_failures, 1);
			continue;
		}
		p = uhmm_devmem_alloc_page(sim->dm);
		if (!p) {
			/* Full: what is collected and not copied stays on the CPU. */
			atomic_fetch_add(&sim->alloc_failures, 1);
			full = true;
			++*unfit;
			continue;
		}
		if (sim_copy_one_to(sim, p, uhmm_migrate_src_data(&a, i), va)) {
			uhmm_page_put(p);
			continue;
		}
		dst[i] = uhmm_migrate_dst_device(p);
	}
	uhmm_migrate_pages(&a);
	for (unsigned long i = 0; i < a.npages; i++)
		if ((src[i] & UHMM_MIGRATE_MIGRATE) && dst[i])
			++*moved;
	uhmm_migrate_finalize(&a);
	return 0;
}

/*
 * Pages another thread holds (its migration, or a fault bringing them home)
 * are busy for as long as that takes, which under a slow copy or a loaded
 * machine is far longer than a yield: try again, with a growing pause, for
 * up to SIM_BUSY_WAIT_NS; a shared page on the CPU (after fork) is made
 * exclusive first, as the core's helper does. Pages that found the device
 * full are tried again once the eviction policy, if any, made room for
 * exactly them: room made before the migration, from a count that another
 * thread's migration of the same pages makes stale, would evict for nothing.
 */
#define SIM_BUSY_WAIT_NS (50 * 1000 * 1000LL)

static int chunk_to_dev_retry(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
			      unsigned long *moved)
{
	int64_t deadline = sim_now_ns() + SIM_BUSY_WAIT_NS;

	for (int attempt = 0;; attempt++) {
		bool busy = false;
		unsigned long unfit = 0;
		int ret = chunk_to_dev(sim, s, e, cmd && !attempt, moved, &busy, &unfit);

		if (unfit && uhmm_devmem_make_room(sim->dm, unfit) > 0)
			busy = true;
		if (ret || !busy || sim_now_ns() > deadline)
			return ret;
		if (attempt == 1)
			for (uintptr_t a = s; a < e; a += SIM_PAGE)
				if (uhmm_page_state(sim->h, (void *)a) == UHMM_PAGE_SYSTEM)
					madvise((void *)a, SIM_PAGE, MADV_POPULATE_WRITE);
		if (attempt < 4) {
			sched_yield();
		} else {
			struct timespec ts = { 0, (attempt < 12 ? 1L << attempt : 4096) * 1000L };

			nanosleep(&ts, NULL);
		}
	}
}

/*
 * Copy-on-write of a device page a forked child still references: its data
 * moves to a fresh page of ours (a migration from the device to itself), or
 * home where the device is full; the child keeps the old page. Our own
 * migration drops our translation of it first.
 */
int sim_cow(struct uhmm_sim *sim, uintptr_t va)
{
	uint64_t src[1], dst[1];
	struct uhmm_migrate a = {
		.h = sim->h,
		.start = va & SIM_PAGE_MASK,
		.end = (va & SIM_PAGE_MASK) + SIM_PAGE,
		.src = src,
		.dst = dst,
		.pgmap_owner = sim,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
	};
	struct uhmm_page *old, *np;
	int ret = uhmm_migrate_setup(&a);

	if (ret)
		return ret;
	old = uhmm_migrate_entry_page(src[0]);
	if ((src[0] & UHMM_MIGRATE_MIGRATE) && old &&
	    __atomic_load_n(&old->refcount, __ATOMIC_ACQUIRE) > 1) {
		np = sim->dm ? uhmm_devmem_alloc_page(sim->dm) : NULL;
		if (np) {
			memcpy(sim_mem(sim, np), sim_mem(sim, old), SIM_PAGE);
			dst[0] = uhmm_migrate_dst_device(np);
		} else if (!sim_copy_one_from(sim, uhmm_migrate_sysbuf(&a, 0), old, a.start)) {
			dst[0] = UHMM_MIGRATE_VALID;
		}
	}
	uhmm_migrate_pages(&a);
	uhmm_migrate_finalize(&a);
	return 0;
}

typedef int (*sim_chunk_fn)(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
			   unsigned long *moved);

/*
 * Run @fn over [s, e) in 2 MiB chunks; a chunk that is not one managed range
 * goes page by page, skipping what is not managed. Returns what @fn last did.
 */
static int sim_chunks(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
		      unsigned long *moved, sim_chunk_fn fn)
{
	int ret = 0;

	while (s < e && !ret) {
		uintptr_t ce = (s | (SIM_HUGE - 1)) + 1;

		if (ce > e)
			ce = e;
		ret = fn(sim, s, ce, cmd, moved);
		if (ret == -ENOENT) {
			ret = 0;
			for (uintptr_t a = s; a < ce && !ret; a += SIM_PAGE) {
				ret = fn(sim, a, a + SIM_PAGE, cmd, moved);
				if (ret == -ENOENT)
					ret = 0;
			}
		}
		s = ce;
	}
	return ret;
}

/* Migrate the managed pages of [s, e) to the device, in 2 MiB chunks. */
int sim_migrate_to_dev(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
		       unsigned long *moved)
{
	unsigned long before = *moved;
	int ret = sim_chunks(sim, s, e, cmd, moved, chunk_to_dev_retry);

	atomic_fetch_add(&sim->migrated_to, *moved - before);
	return ret;
}

static int chunk_to_sys(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
			unsigned long *moved)
{
	uint64_t src[SIM_CHUNK], dst[SIM_CHUNK];
	struct uhmm_migrate a = {
		.h = sim->h,
		.start = s,
		.end = e,
		.src = src,
		.dst = dst,
		.pgmap_owner = sim,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
	};
	int ret = uhmm_migrate_setup(&a);

	if (ret)
		return ret;
	if (a.cpages && fail_alloc(sim, cmd, a.npages == SIM_CHUNK && !(s & (SIM_HUGE - 1)))) {
		/* A base system page could not be allocated: nothing moves. */
		atomic_fetch_add(&sim->alloc_failures, 1);
		ret = -ENOMEM;
	}
	for (unsigned long i = 0; i < a.npages && !ret; i++) {
		struct uhmm_page *page = uhmm_migrate_entry_page(src[i]);

		if (!(src[i] & UHMM_MIGRATE_MIGRATE) || !page)
			continue;
		if (!sim_copy_one_from(sim, uhmm_migrate_sysbuf(&a, i), page, s + i * SIM_PAGE))
			dst[i] = UHMM_MIGRATE_VALID;
	}
	uhmm_migrate_pages(&a);
	for (unsigned long i = 0; i < a.npages; i++)
		if ((src[i] & UHMM_MIGRATE_MIGRATE) && dst[i])
			++*moved;
	uhmm_migrate_finalize(&a);
	return ret;
}

/* Bring the device's pages of the managed range [s, e) home, in 2 MiB chunks. */
int sim_migrate_to_sys(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
		       unsigned long *moved)
{
	unsigned long before = *moved;
	int ret = sim_chunks(sim, s, e, cmd, moved, chunk_to_sys);

	atomic_fetch_add(&sim->migrated_from, *moved - before);
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
		int used = atomic_load(&sim->fail_used);

		/*
		 * After the address, and by whoever finds it there too (its
		 * setter may not have got this far): a check that sees the
		 * count sees the address.
		 */
		if (atomic_load(&sim->fail_addr[i]) == a ||
		    atomic_compare_exchange_strong(&sim->fail_addr[i], &z, a)) {
			while (used <= i &&
			       !atomic_compare_exchange_weak(&sim->fail_used, &used, i + 1))
				;
			return 0;
		}
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
	atomic_store(&sim->fail_used, 0);
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
	s.launches = atomic_load(&sim->launches);
	s.device_faults = atomic_load(&sim->device_faults);
	s.fault_migrated = atomic_load(&sim->fault_migrated);
	s.fault_mapped = atomic_load(&sim->fault_mapped);
	s.fault_retries = atomic_load(&sim->fault_retries);
	s.invalidations = atomic_load(&sim->invalidations);
	s.revalidations = atomic_load(&sim->revalidations);
	s.migrated_to = atomic_load(&sim->migrated_to);
	s.migrated_from = atomic_load(&sim->migrated_from);
	s.alloc_fallbacks = atomic_load(&sim->alloc_fallbacks);
	s.alloc_failures = atomic_load(&sim->alloc_failures);
	s.fault_duplicated = atomic_load(&sim->fault_duplicated);
	memcpy(st, &s, sz < sizeof(s) ? sz : sizeof(s));
	st->sz = sz;
	return 0;
}
