/* SPDX-License-Identifier: MIT */
/*
 * uhmm_driver.h - the driver API: device memory, device pages, migration.
 *
 * The kernel's words, in user space: a driver registers a region of device
 * memory (struct uhmm_devmem, the kernel's dev_pagemap) with an ops table;
 * each device page has a descriptor (struct uhmm_page, the kernel's
 * ZONE_DEVICE struct page). Pages move with the three-step migration
 * uhmm_migrate_setup / _pages / _finalize (the kernel's migrate_vma_*), or
 * with the helpers uhmm_migrate_to_device / uhmm_migrate_to_ram. When the CPU
 * touches a device page, the core calls ops->migrate_to_ram.
 *
 * The rule uhmm is built around: nothing leaves the CPU without a way home.
 * Private device memory without migrate_to_ram is refused, and migration to
 * a device is refused where the kernel lacks a feature the fault path needs.
 */
#ifndef UHMM_DRIVER_H
#define UHMM_DRIVER_H

#include <stdbool.h>

#include "uhmm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_devmem;

/* The ABI number drivers put in uhmm_devmem_ops.abi. */
#define UHMM_DEVMEM_OPS_ABI 2

enum uhmm_memory_type {
	/* The CPU cannot address it; a CPU touch faults into migrate_to_ram. */
	UHMM_MEMORY_DEVICE_PRIVATE = 1,
};

/*
 * struct uhmm_page - one page of device memory (the kernel's ZONE_DEVICE page).
 * Fields are read-only to drivers except zone_device_data.
 * @devmem:  the region it belongs to.
 * @owner:   the region's owner cookie.
 * @addr:    the managed (CPU) address whose data it holds; 0 while free. The
 *           core changes it concurrently (mremap): read it with uhmm_page_addr().
 * @pfn:     its index in the region, 0..npages-1: where the driver keeps its data.
 * @zone_device_data: the driver's, never touched by the core.
 * @refcount: 0 while free; 1 while it holds a page's data; drivers may take
 *           more with uhmm_page_get(). page_free runs when it drops to 0.
 *           After fork (thread mode) a child holds references to the device
 *           pages it inherited, until it faults them in or goes away: a
 *           driver that writes a device page in place while its refcount is
 *           above what it took itself must first move the data to a fresh
 *           page (copy-on-write), or the child would see the write.
 */
struct uhmm_page {
	struct uhmm_devmem *devmem;
	void *owner;
	uintptr_t addr;
	unsigned long pfn;
	void *zone_device_data;
	int refcount;
	uint64_t birth;     /* when it last received a page's data (a core tick) */
	uint64_t last_use;  /* when it was last used (uhmm_page_mark_accessed, or birth) */
} __attribute__((aligned(64)));

/*
 * struct uhmm_fault - a CPU fault on a device page, given to migrate_to_ram.
 * @h:       the handle.
 * @address: the faulting page's address (page aligned).
 * @page:    the device page the CPU touched; locked for the call, which keeps it
 *           alive until uhmm_migrate_pages() releases it.
 * @write:   1 for a write access, 0 for a read or unknown.
 */
struct uhmm_fault {
	struct uhmm *h;
	uintptr_t address;
	struct uhmm_page *page;
	int write;
};

/**
 * uhmm_fault_window() - how many pages a driver's migrate_to_ram should try to
 * bring home, starting at vmf->address (the faulting page first).
 * @vmf: the fault.
 *
 * 1 while faults look random; while they follow one another (a stream: each
 * fault lands where the previous window ended) the window doubles, up to
 * UHMM_MIGRATE_MAX_PAGES (2 MiB), so that a sweep pays one fault per window
 * and random access pays nothing for the detection. Never crosses a 2 MiB
 * boundary. Pages of the window that are not on the device are simply not
 * collected by uhmm_migrate_setup(). Async-signal-safe.
 * Return: the window in pages, at least 1.
 */
UHMM_API unsigned long uhmm_fault_window(const struct uhmm_fault *vmf);

/*
 * struct uhmm_devmem_ops - what a driver tells the core about its memory.
 * One static const table per driver, with .abi = UHMM_DEVMEM_OPS_ABI. Tables
 * of ABI 1 (before page_data) are still accepted.
 */
struct uhmm_devmem_ops {
	unsigned int abi;

	/*
	 * copy_to_device - copy @n pages of CPU memory into device pages.
	 * @src[i] is readable CPU memory, or NULL: fill @dst[i] with zeros.
	 * Called by the core's helpers (uhmm_migrate_to_device) in the calling
	 * thread, never from the fault path. Return 0, or -errno: the core then
	 * retries page by page to find the failing pages, which stay on the CPU.
	 * Required.
	 */
	int (*copy_to_device)(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			      const void *const *src, unsigned long n);

	/*
	 * copy_from_device - copy @n device pages into CPU memory @dst[i].
	 * Called by the core's helpers (uhmm_migrate_to_ram, uhmm_devmem_remove,
	 * uhmm_unmanage) and by drivers' migrate_to_ram, so it may run in the
	 * fault path: async-signal-safe, no allocation, no lock that a migrating
	 * thread can hold. Return 0, or -errno: the core retries page by page and
	 * the pages that still fail are poisoned (SIGBUS on touch). Required.
	 */
	int (*copy_from_device)(struct uhmm_devmem *dm, void *const *dst,
				struct uhmm_page *const *src, unsigned long n);

	/*
	 * migrate_to_ram - the CPU touched @vmf->page: bring it home.
	 * Do as the kernel's drivers do: uhmm_migrate_setup() with
	 * SELECT_DEVICE_PRIVATE, your owner and fault_page = vmf->page over the
	 * page (and any neighbours worth bringing), copy each collected page into
	 * uhmm_migrate_sysbuf(), set dst[], then uhmm_migrate_pages() and
	 * uhmm_migrate_finalize(). Called from the fault path (the service thread,
	 * or the faulting thread's signal handler): async-signal-safe, no
	 * allocation. Return 0 (the access restarts, also when a concurrent
	 * migration already moved the page), or -errno: the page is poisoned and
	 * the toucher gets SIGBUS. Required for UHMM_MEMORY_DEVICE_PRIVATE.
	 */
	int (*migrate_to_ram)(struct uhmm_fault *vmf);

	/*
	 * page_free - the last reference to @page is gone; its data is dead.
	 * The page is free for allocation again after the call. May run in
	 * the fault path (same rules as copy_from_device). Optional.
	 */
	void (*page_free)(struct uhmm_page *page);

	/*
	 * page_data - where the CPU can read @page's data (ABI 2): device
	 * memory mapped into the process (host-visible memory, a BAR, the sim
	 * device's pool). The core's migrations home then install pages
	 * straight from it, one UFFDIO_COPY per run of adjoining pages,
	 * instead of copy_from_device into a buffer and a copy from there.
	 * Return 0 with *@data, or -errno: the page cannot come home (as a
	 * failed copy). Same rules as copy_from_device. Optional.
	 */
	int (*page_data)(struct uhmm_page *page, const void **data);
};

/*
 * struct uhmm_devmem_desc - what uhmm_devmem_add() registers; use UHMM_OPTS.
 * @sz:          sizeof(struct uhmm_devmem_desc).
 * @type:        UHMM_MEMORY_DEVICE_PRIVATE.
 * @npages:      number of device pages, 1 .. 2^31.
 * @owner:       non-NULL cookie shared by all memory one device treats as its own.
 * @ops:         the driver's ops table.
 * @driver_data: returned by uhmm_devmem_driver_data().
 * @name:        a short name for diagnostics (copied), or NULL.
 * @flags:       UHMM_DEVMEM_* flags.
 */
struct uhmm_devmem_desc {
	size_t sz;
	enum uhmm_memory_type type;
	unsigned long npages;
	void *owner;
	const struct uhmm_devmem_ops *ops;
	void *driver_data;
	const char *name;
	unsigned int flags;
};

/*
 * UHMM_DEVMEM_NONBLOCKING: the driver's migrate_to_ram and copy_from_device
 * never wait for long (no I/O, no waiting on the device: a memcpy from memory
 * the CPU can read). In thread mode uhmm then serves CPU faults on this
 * memory on its service thread itself, without handing them to a fault
 * worker: a thread switch fewer per fault; but while several threads fault
 * at once (another thread faulted less than a millisecond before),
 * workers take every toucher's faults, so that touchers are served in
 * parallel (uhmm_stats: faults_worker). Without the flag a driver that stalls holds
 * up only the faults on its own pages.
 */
#define UHMM_DEVMEM_NONBLOCKING 0x1u

/**
 * uhmm_devmem_add() - register a region of device memory.
 * @h: the handle. @desc: the region. @out: out: the region.
 *
 * Creates @desc->npages page descriptors, all free, that every driver
 * allocates from (uhmm_devmem_alloc_page), charged to @desc->owner while in use.
 * Return: 0, or
 * -EINVAL  NULL argument, @desc->sz that no version of the struct has (one
 *          that ends inside a field), unknown type or flags, npages 0 or too large,
 *          NULL owner, ops ABI mismatch, or an ops table without copy_to_device,
 *          copy_from_device or (for private memory) migrate_to_ram;
 * -E2BIG   @desc larger than known with a non-zero tail;
 * -ENOSPC  too many regions on this handle (1023) or owners (256);
 * -ESHUTDOWN the handle is closed;
 * -ENOMEM.
 */
UHMM_API int uhmm_devmem_add(struct uhmm *h, const struct uhmm_devmem_desc *desc,
			     struct uhmm_devmem **out);

/**
 * uhmm_devmem_remove() - hot-remove a region: evict it, then free it.
 * @dm: the region, or NULL (then 0).
 *
 * Every page still holding data is migrated home first; a page the device
 * cannot return is poisoned (SIGBUS on touch); every other page keeps its
 * data. Then the region is freed; @dm is invalid afterwards. The driver must
 * not be in any of its callbacks for @dm when it calls this.
 * Return: the number of pages poisoned (0 when all came home).
 */
UHMM_API int uhmm_devmem_remove(struct uhmm_devmem *dm);

/* Accessors. */
UHMM_API void *uhmm_devmem_driver_data(const struct uhmm_devmem *dm);
UHMM_API void *uhmm_devmem_owner(const struct uhmm_devmem *dm);
UHMM_API struct uhmm *uhmm_devmem_handle(const struct uhmm_devmem *dm);
/* The device page with index @pfn (0 .. npages-1), or NULL. */
UHMM_API struct uhmm_page *uhmm_devmem_page(struct uhmm_devmem *dm, unsigned long pfn);

/*
 * struct uhmm_devmem_stats - a region's counters.
 * @npages:     pages in the region.
 * @in_use:     pages allocated (refcount > 0).
 * @resident:   pages holding the data of a managed page.
 * @page_frees: times a page's last reference dropped (page_free calls).
 * @owner_pages: pages charged to this region's owner, over all its regions.
 * @faults:     CPU faults on its pages (each brought at least one page home).
 * @pages_to:   pages migrated into it (migrations, prefetches).
 * @pages_from: pages that left it for system memory (faults, migrations, evictions).
 * @bytes_to, @bytes_from: the same in bytes.
 * @prefetched: pages moved into it by uhmm_prefetch*().
 * @evictions:  pages evicted home to make room.
 * @thrash_events: pages pinned on the CPU because they bounced (uhmm_set_thrash).
 * @duplicates: pages now holding read-only copies of system pages (uhmm_duplicate).
 * @pages_duplicated: copies made, over time.
 * @dup_drops:  copies dropped because someone wrote the page (or it moved, was
 *              discarded, forked, or the region left).
 */
struct uhmm_devmem_stats {
	size_t sz;
	uint64_t npages;
	uint64_t in_use;
	uint64_t resident;
	uint64_t page_frees;
	uint64_t owner_pages;
	uint64_t faults;
	uint64_t pages_to;
	uint64_t pages_from;
	uint64_t bytes_to;
	uint64_t bytes_from;
	uint64_t prefetched;
	uint64_t evictions;
	uint64_t thrash_events;
	uint64_t duplicates;
	uint64_t pages_duplicated;
	uint64_t dup_drops;
};

/** uhmm_devmem_stats() - read a region's counters. Return: 0, or -EINVAL, -E2BIG. */
UHMM_API int uhmm_devmem_stats(struct uhmm_devmem *dm, struct uhmm_devmem_stats *st);

/**
 * uhmm_devmem_alloc_page() - take the region's lowest free page.
 * Lock-free and async-signal-safe. The page has refcount 1, addr 0.
 * Return: the page, or NULL when the region is full or being removed.
 */
UHMM_API struct uhmm_page *uhmm_devmem_alloc_page(struct uhmm_devmem *dm);

/** uhmm_page_addr() - the managed address whose data @page holds, or 0 (atomic read). */
static inline uintptr_t uhmm_page_addr(const struct uhmm_page *page)
{
	return __atomic_load_n(&page->addr, __ATOMIC_ACQUIRE);
}

/**
 * uhmm_page_mark_accessed() - the device used @page: recency for eviction
 * (drivers call it on device accesses; cheap, async-signal-safe).
 */
UHMM_API void uhmm_page_mark_accessed(struct uhmm_page *page);

/* --- Eviction: oversubscribing device memory --- */

#define UHMM_EVICT_POLICY_ABI 1

/*
 * struct uhmm_evict_policy - which device pages to send home when a
 * migration to a full region needs room. One const table per policy.
 */
struct uhmm_evict_policy {
	unsigned int abi; /* UHMM_EVICT_POLICY_ABI */
	const char *name;
	/*
	 * select - choose up to @n pages of @dm that hold data (uhmm_page_addr()
	 * non-zero) to evict; write them to @out, return how many. Called from
	 * the migrating thread with no page lock held, maybe by several threads
	 * at once: other threads' migrations write the pages' birth, last_use
	 * and refcount meanwhile, so read them with __atomic_load_n. Required.
	 */
	unsigned long (*select)(struct uhmm_devmem *dm, struct uhmm_page **out, unsigned long n);
};

/*
 * Built in: least recently used (by last_use) and first in, first out (by
 * birth), exactly. One look over the device's descriptors finds the oldest
 * pages for this eviction and the next ones (16 times as many as asked, at
 * least 4096); pages used since are passed over. So choosing costs about 16
 * descriptor looks per page evicted, whatever the device's size.
 */
UHMM_API extern const struct uhmm_evict_policy uhmm_evict_lru;
UHMM_API extern const struct uhmm_evict_policy uhmm_evict_fifo;

/*
 * struct uhmm_prefetch_policy - how much a CPU fault brings home with the
 * faulting page (what uhmm_fault_window() answers drivers), per region.
 */
#define UHMM_PREFETCH_POLICY_ABI 1
struct uhmm_prefetch_policy {
	unsigned int abi; /* UHMM_PREFETCH_POLICY_ABI */
	const char *name;
	/*
	 * window - pages from @vmf->address on (the faulting page included) to
	 * bring home, 1 .. @max (the handle's fault_window; an answer past the
	 * 2 MiB boundary or @max is cut there, 0 means 1).
	 * Called in the fault path, maybe in a signal handler: async-signal-
	 * safe, no allocation, no blocking. Required.
	 */
	unsigned long (*window)(const struct uhmm_fault *vmf, unsigned long max);
};

/*
 * Built in: adaptive (the default: a fault where the previous window of a
 * stream ended doubles it, up to @max and the 2 MiB boundary; any other
 * fault brings one page, so random access pays nothing) and none (one page
 * per fault, always).
 */
UHMM_API extern const struct uhmm_prefetch_policy uhmm_prefetch_adaptive;
UHMM_API extern const struct uhmm_prefetch_policy uhmm_prefetch_none;

/**
 * uhmm_devmem_set_prefetch() - choose how CPU faults on @dm's pages fault around.
 * @dm: the region. @policy: a policy, or NULL for the default (adaptive).
 * Return: 0, or -EINVAL (NULL region, policy without window or wrong ABI).
 */
UHMM_API int uhmm_devmem_set_prefetch(struct uhmm_devmem *dm,
				      const struct uhmm_prefetch_policy *policy);

/**
 * uhmm_devmem_set_evict() - let migrations to a full region evict pages home.
 * @dm: the region. @policy: a policy, or NULL for none (the default: a
 * migration to a full region stops and returns what moved, or -ENOMEM).
 * Evicted pages come home with their data, like uhmm_migrate_to_ram().
 * Return: 0, or -EINVAL (NULL region, policy without select or wrong ABI).
 */
UHMM_API int uhmm_devmem_set_evict(struct uhmm_devmem *dm, const struct uhmm_evict_policy *policy);

/** uhmm_devmem_evict_policy() - @dm's eviction policy, or NULL (none, or a NULL region). */
UHMM_API const struct uhmm_evict_policy *uhmm_devmem_evict_policy(struct uhmm_devmem *dm);

/**
 * uhmm_devmem_make_room() - with an eviction policy (uhmm_devmem_set_evict),
 * send the policy's victims home until @npages pages are free, as a
 * migration to a full region does; for drivers that migrate with
 * uhmm_migrate_setup() themselves (device faults). Best effort; holding no
 * page lock and not in a notifier callback.
 * Return: the pages free afterwards, or -EINVAL (NULL region).
 */
UHMM_API long uhmm_devmem_make_room(struct uhmm_devmem *dm, unsigned long npages);

/** uhmm_page_get() - take a reference on an in-use page. */
UHMM_API void uhmm_page_get(struct uhmm_page *page);

/**
 * uhmm_page_put() - drop a reference; at zero the driver's page_free runs,
 * the owner is uncharged and the page is free again.
 */
UHMM_API void uhmm_page_put(struct uhmm_page *page);

/* --- Migration (the kernel's migrate_vma_*) --- */

/* Entries of src[] and dst[]: flags in the low 6 bits, an address above. */
#define UHMM_MIGRATE_VALID 0x1ULL   /* an address is present */
#define UHMM_MIGRATE_MIGRATE 0x2ULL /* src: collected, will migrate */
#define UHMM_MIGRATE_DEVICE 0x4ULL  /* the address is a struct uhmm_page * */
#define UHMM_MIGRATE_BUSY 0x8ULL    /* src: could not be taken now (locked, or shared after fork) */
#define UHMM_MIGRATE_FLAGS_MASK 0x3fULL

/* What uhmm_migrate_setup() selects. */
enum {
	UHMM_MIGRATE_SELECT_SYSTEM = 1U << 0,         /* pages in system memory, and empty pages */
	UHMM_MIGRATE_SELECT_DEVICE_PRIVATE = 1U << 1, /* device pages of pgmap_owner */
};

/* The most pages one uhmm_migrate_setup() call may cover (2 MiB). */
#define UHMM_MIGRATE_MAX_PAGES 512UL

/*
 * struct uhmm_migrate - one migration, filled by the caller, then by setup.
 * @h:           the handle.
 * @start, @end: page-aligned, inside one managed range, at most
 *               UHMM_MIGRATE_MAX_PAGES pages.
 * @src, @dst:   caller arrays of (end - start) / UHMM_PAGE_SIZE entries.
 * @npages:      out: the number of pages in the range.
 * @cpages:      out: the number collected (src has UHMM_MIGRATE_MIGRATE).
 * @pgmap_owner: with SELECT_DEVICE_PRIVATE, only pages of this owner.
 * @flags:       UHMM_MIGRATE_SELECT_*.
 * @fault_page:  in migrate_to_ram: vmf->page (already locked by the core).
 * @priv:        the core's; zero it before setup (it holds staging buffers).
 */
struct uhmm_migrate {
	struct uhmm *h;
	uintptr_t start;
	uintptr_t end;
	uint64_t *src;
	uint64_t *dst;
	unsigned long npages;
	unsigned long cpages;
	void *pgmap_owner;
	unsigned int flags;
	struct uhmm_page *fault_page;
	uintptr_t priv[6];
};

/**
 * uhmm_migrate_setup() - collect the pages of a range and take them away.
 * @args: the migration.
 *
 * For each page: with SELECT_SYSTEM, a page on the CPU is locked and taken
 * from the CPU atomically (UFFDIO_MOVE into a staging page; a CPU touch now
 * waits until finalize); src[i] = VALID|MIGRATE with the address of its data
 * (read it with uhmm_migrate_src_data), or MIGRATE alone for an empty page (no
 * data: give the device zeros, no copy). With SELECT_DEVICE_PRIVATE, a device
 * page of pgmap_owner is locked: src[i] = VALID|MIGRATE|DEVICE|page. Pages not
 * selected, of another owner, poisoned, or locked by someone else get src[i] = 0
 * (BUSY added when they may be taken later: locked, or shared with a forked
 * child). Setup returns 0 also when nothing was collected.
 *
 * Then, for each collected page, the driver sets dst[i]: a device page it
 * allocated and filled (uhmm_migrate_dst_device(page)), or, to bring a device
 * page home, UHMM_MIGRATE_VALID after copying into uhmm_migrate_sysbuf(args, i)
 * (or UHMM_MIGRATE_VALID | addr, where addr is page-aligned memory the CPU can
 * read that holds the page's data, such as device memory mapped into the
 * process: it is installed from there, one copy fewer), or 0 to leave the
 * page where it was.
 *
 * Return: 0, or
 * -EINVAL     NULL args/arrays/handle, unaligned or empty range, more than
 *             UHMM_MIGRATE_MAX_PAGES, no SELECT flag;
 * -ENOENT     the range is not (entirely) inside one managed range;
 * -EOPNOTSUPP SELECT_SYSTEM on a handle whose fault path is incomplete
 *             (uhmm_can_migrate); nothing is taken from the CPU.
 */
UHMM_API int uhmm_migrate_setup(struct uhmm_migrate *args);

/**
 * uhmm_migrate_pages() - commit: install each page in its destination.
 * Device destinations take over the page (the source device page, if any, is
 * released); system destinations are installed in the CPU page table. src[i]
 * loses MIGRATE where the page did not move (dst[i] was 0, or installing failed).
 */
UHMM_API void uhmm_migrate_pages(struct uhmm_migrate *args);

/**
 * uhmm_migrate_finalize() - restore pages that did not move, unlock every
 * page (waking CPU touches that waited) and free staging buffers. Destination
 * device pages that were not used are released (uhmm_page_put).
 */
UHMM_API void uhmm_migrate_finalize(struct uhmm_migrate *args);

/* The source page's CPU-readable data during a migration, or NULL (empty page). */
UHMM_API const void *uhmm_migrate_src_data(const struct uhmm_migrate *args, unsigned long i);
/* A CPU buffer for page i's data on its way home (device to system). */
UHMM_API void *uhmm_migrate_sysbuf(const struct uhmm_migrate *args, unsigned long i);

static inline struct uhmm_page *uhmm_migrate_entry_page(uint64_t e)
{
	return (e & UHMM_MIGRATE_VALID) && (e & UHMM_MIGRATE_DEVICE) ?
		       (struct uhmm_page *)(uintptr_t)(e & ~UHMM_MIGRATE_FLAGS_MASK) :
		       NULL;
}

static inline uint64_t uhmm_migrate_dst_device(struct uhmm_page *page)
{
	return (uint64_t)(uintptr_t)page | UHMM_MIGRATE_VALID | UHMM_MIGRATE_DEVICE;
}

/**
 * uhmm_migrate_to_device() - migrate a range's CPU pages into a region.
 * @dm: the region. @addr, @len: a page-aligned range inside managed memory.
 *
 * The whole three-step migration, in chunks, with the driver's copy_to_device.
 * Empty pages get a zeroed device page without a CPU copy. Pages that are busy
 * (locked by a fault or a concurrent migration) are retried a few times, then
 * skipped; pages shared with a forked
 * child are made exclusive and retried; pages already on a device stay there.
 * Stops early, keeping what moved, when the region is full.
 *
 * Return: the number of pages now in @dm that moved in this call, or
 * -EINVAL     NULL region, unaligned, zero-length or overflowing range;
 * -ENOENT     part of the range is not managed;
 * -EOPNOTSUPP the fault path is incomplete (see uhmm_can_migrate);
 * -ENODEV     the region is being removed;
 * -ENOMEM     the region is full and nothing moved.
 */
UHMM_API int uhmm_migrate_to_device(struct uhmm_devmem *dm, void *addr, size_t len);

/**
 * uhmm_duplicate() - read duplication: give @dm read-only copies of the
 * system pages of [addr, addr + len) while the CPU keeps its own.
 * @dm: device-private memory. @addr, @len: a page-aligned managed range.
 *
 * Each page that can be copied ends in state UHMM_PAGE_DUPLICATED: its data
 * in system memory, write-protected (UFFDIO_WRITEPROTECT), and a copy in a
 * device page of @dm, which uhmm_range_fault() reports to @dm's owner as a
 * device-private page without UHMM_PFN_WRITE (other devices see the system
 * page, read-only). CPU reads cost nothing. A write by anyone ends the
 * duplication before it lands: a CPU write faults, every device is told
 * (UHMM_NOTIFY_UNDUPLICATE) and drops its translation, the copy is freed,
 * the write goes on; a device asks for write access through
 * uhmm_range_fault(), which does the same. Discard, unmap, mremap, fork,
 * migration of the page and uhmm_devmem_remove() drop the copy too.
 * Pages on @dm are duplicated where they are (they come home too); pages
 * on other devices, and pages already duplicated on @dm, are left alone.
 * The fault path does the same for a CPU read of a device page advised
 * UHMM_ADVISE_SET_READ_MOSTLY. A driver's own migrations home leave copies
 * alone; the core's (uhmm_migrate_to_ram, eviction, removal) drop them.
 * Read duplication needs write-protect faults on anonymous memory
 * (UHMM_FEAT_WP). In signal mode a kernel-mode write to a duplicated page
 * (read(2) into it, say) fails with EFAULT, as for a device-resident page.
 *
 * Return: pages newly duplicated (0 when none could be), or -EINVAL (NULL,
 * not device-private, unaligned), -ENOENT (not managed), -EOPNOTSUPP (no
 * write-protection for this handle's memory), -ENODEV (region removed).
 */
UHMM_API int uhmm_duplicate(struct uhmm_devmem *dm, void *addr, size_t len);

/**
 * uhmm_make_exclusive() - give a device exclusive access to pages, for atomics.
 * @h: the handle. @addr, @len: page-aligned, managed.
 * @owner: the calling device's owner cookie (non-NULL).
 * @pages: out: one entry per page; where the device reaches the page (a CPU
 *         address of its memory), or NULL for a page that could not be taken.
 *
 * The kernel's make_device_exclusive(). Pages in any device's memory come
 * home first and holes become pages of zeros, as the kernel faults the pages
 * in writable; then every page moves into host memory uhmm keeps for this (a
 * device-private region of its own, "exclusive" in uhmm stat: no device's
 * memory is spent). The CPU's accesses fault from then on: devices mirroring
 * the range are told first (UHMM_NOTIFY_EXCLUSIVE with @owner: the caller
 * ignores its own), and a CPU access revokes the page: it comes back with
 * everything the device wrote, after an invalidation (UHMM_NOTIFY_MIGRATE,
 * owner: the region's) that tells the device to stop using @pages[i].
 * Each page with a non-NULL @pages[i] is returned locked, as the kernel
 * returns the folio locked: program the device's mapping, then call
 * uhmm_exclusive_unlock(); until then a CPU access to the page, or an event
 * that changes it, waits, so no revocation can come before the mapping is
 * in place. Discard, unmap, mremap, fork, unmanage and migration treat the
 * pages as device pages of that region. Up to 64 MiB may be exclusive at
 * once per handle.
 *
 * Return: pages made exclusive, or -EINVAL (NULL, unaligned), -EFAULT
 * (nothing mapped there), -EPERM (a read-only mapping: atomics write, as in
 * the kernel), -ENOENT (not managed), -ENOMEM (the exclusive region is full
 * and nothing could be taken), or the error of bringing pages home.
 */
UHMM_API int uhmm_make_exclusive(struct uhmm *h, void *addr, size_t len, void *owner,
				 void **pages);

/**
 * uhmm_exclusive_unlock() - let go of the pages uhmm_make_exclusive() locked.
 * @h, @addr, @len, @pages: as given to and filled by uhmm_make_exclusive().
 * Call once the device's mapping of every page is in place. Until then the
 * calling thread must not touch the pages from the CPU, fork, migrate or
 * unmanage them, make them exclusive again or close the handle: each waits
 * for the locks it holds. A page whose lock is no longer the one that call
 * took (unlocked already, revoked since) is left alone, so a second call is
 * harmless; pass the array that call filled, not an older one.
 */
UHMM_API void uhmm_exclusive_unlock(struct uhmm *h, void *addr, size_t len, void *const *pages);

/* --- Interval notifiers (the kernel's mmu_interval_notifier) --- */

/* Why the CPU side of a range changes. */
enum uhmm_notify_event {
	UHMM_NOTIFY_UNMAP = 1, /* munmap: the range is gone */
	UHMM_NOTIFY_DISCARD,   /* MADV_DONTNEED/MADV_REMOVE: pages read zeros from now on */
	UHMM_NOTIFY_REMAP,     /* mremap moved the range away (this is the old side) */
	UHMM_NOTIFY_MIGRATE,   /* pages migrate, either way; owner says whose migration */
	UHMM_NOTIFY_UNMANAGE,  /* uhmm_unmanage/uhmm_close: the range leaves uhmm */
	UHMM_NOTIFY_FORK,      /* fork: pages come home and become copy-on-write */
	UHMM_NOTIFY_EXCLUSIVE, /* uhmm_make_exclusive: the CPU loses access; owner: whose */
	UHMM_NOTIFY_UNDUPLICATE, /* read-only copies of the range (uhmm_duplicate) are dropped */
};

/*
 * struct uhmm_notify_range - what changes.
 * @start, @end: the page-aligned range, clipped to nothing; may be larger
 *               than the notifier's interval.
 * @event:       why.
 * @owner:       for MIGRATE and EXCLUSIVE, the owner cookie of the migration
 *               (its pgmap_owner; NULL for the core's own helpers). A device
 *               ignores invalidations caused by its own migrations.
 */
struct uhmm_notify_range {
	uintptr_t start;
	uintptr_t end;
	enum uhmm_notify_event event;
	void *owner;
};

struct uhmm_interval_notifier;

struct uhmm_interval_notifier_ops {
	/*
	 * invalidate - the CPU side of [range->start, range->end) is about to
	 * change (or, for unmap, discard and remap events, has just changed and
	 * the device must stop using it now). Drop the device's translations
	 * of the overlap with the notifier's interval, under the driver's own
	 * lock, and call uhmm_interval_set_seq(n, cur_seq) under that lock as
	 * the kernel's drivers do. Called from migrations, the event thread,
	 * and the fault path (async-signal-safe there). The return value is
	 * reserved: return true.
	 */
	bool (*invalidate)(struct uhmm_interval_notifier *n, const struct uhmm_notify_range *range,
			   uint64_t cur_seq);
};

/*
 * struct uhmm_interval_notifier - caller-allocated; fields are the core's
 * while inserted (read start/end, never write them).
 */
struct uhmm_interval_notifier {
	struct uhmm *h;
	uintptr_t start;
	uintptr_t end;
	const struct uhmm_interval_notifier_ops *ops;
	uint64_t seq;
	void *slot;
};

/**
 * uhmm_interval_notifier_insert() - watch [start, start+len) of @h.
 * The range need not be managed (yet). Return: 0, or -EINVAL (NULL
 * argument, no invalidate, zero or overflowing length), -ENOMEM.
 */
UHMM_API int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *n, struct uhmm *h,
					   uintptr_t start, size_t len,
					   const struct uhmm_interval_notifier_ops *ops);

/**
 * uhmm_interval_notifier_remove() - stop watching; waits until no call of
 * @n's invalidate is running, so @n may be freed afterwards. Must not be
 * called from an invalidate callback.
 */
UHMM_API void uhmm_interval_notifier_remove(struct uhmm_interval_notifier *n);

/**
 * uhmm_interval_read_begin() - start a device page-table update: waits while
 * an invalidation is in progress on the handle, and returns a sequence
 * number for uhmm_interval_read_retry(). The driver then snapshots the CPU
 * side (uhmm_range_fault), takes its lock, and programs its page table only
 * if read_retry says nothing changed meanwhile.
 */
UHMM_API uint64_t uhmm_interval_read_begin(struct uhmm_interval_notifier *n);

/** uhmm_interval_read_retry() - true if an invalidation hit @n since read_begin gave @seq. */
UHMM_API bool uhmm_interval_read_retry(struct uhmm_interval_notifier *n, uint64_t seq);

/** uhmm_interval_set_seq() - from invalidate, under the driver lock: publish @cur_seq. */
UHMM_API void uhmm_interval_set_seq(struct uhmm_interval_notifier *n, uint64_t cur_seq);

/* --- Mirroring the CPU side (the kernel's hmm_range_fault) --- */

/*
 * Entries of uhmm_range.pfns[]: flags in the top byte, an address below.
 *
 * Input: what the device needs of the page. The request of page i is
 * (pfns[i] & pfn_flags_mask) | default_flags: 0 only snapshots the page;
 * UHMM_PFN_REQ_FAULT makes it present (the result must be VALID or the call
 * fails); with UHMM_PFN_REQ_WRITE as well it must be VALID|WRITE.
 *
 * Output: what the page is. VALID and WRITE as the device may use it without
 * a fault; for a VALID entry the bits below the flags hold the page's CPU
 * address (uhmm_pfn_to_addr) or, with DEVICE_PRIVATE, its struct uhmm_page
 * (uhmm_pfn_to_page). An entry without VALID means "nothing the device may
 * map": test VALID rather than comparing with 0, because the informational
 * bits (MANAGED, DEVICE_REMOTE) may be set on it.
 */
#define UHMM_PFN_VALID (1ULL << 63) /* present, at least readable */
#define UHMM_PFN_WRITE (1ULL << 62) /* writable without a fault (not the zero page, not COW) */
#define UHMM_PFN_ERROR (1ULL << 61) /* no mapping or PROT_NONE: no access is possible */
#define UHMM_PFN_ZERO (1ULL << 60)  /* with VALID: the shared zero page (never WRITE) */
/* With VALID: a device page of dev_private_owner, never faulted; WRITE follows the mapping. */
#define UHMM_PFN_DEVICE_PRIVATE (1ULL << 59)
/* Without VALID: a device page of another owner that was not faulted (snapshot only). */
#define UHMM_PFN_DEVICE_REMOTE (1ULL << 58)
/* The page is managed memory: uhmm reports its changes and may migrate it. */
#define UHMM_PFN_MANAGED (1ULL << 57)
#define UHMM_PFN_FLAGS (0xffULL << 56)
#define UHMM_PFN_REQ_FAULT UHMM_PFN_VALID
#define UHMM_PFN_REQ_WRITE UHMM_PFN_WRITE

/*
 * struct uhmm_range - one call of uhmm_range_fault() (the kernel's hmm_range).
 * @notifier:          an inserted interval notifier covering the range; its
 *                     handle is the address space walked.
 * @notifier_seq:      from uhmm_interval_read_begin(@notifier).
 * @start, @end:       page-aligned CPU addresses, @end exclusive. The range
 *                     need not be managed: unmanaged memory (shared, file,
 *                     another library's) is mirrored too, it only cannot
 *                     migrate and uhmm sees no events for it.
 * @pfns:              (end - start) / UHMM_PAGE_SIZE entries, input and output.
 * @default_flags:     UHMM_PFN_REQ_* asked of every page.
 * @pfn_flags_mask:    which bits of each pfns[i] add to the request.
 * @dev_private_owner: the caller's owner cookie: its own device pages are
 *                     reported (DEVICE_PRIVATE), never faulted.
 */
struct uhmm_range {
	struct uhmm_interval_notifier *notifier;
	uint64_t notifier_seq;
	uintptr_t start;
	uintptr_t end;
	uint64_t *pfns;
	uint64_t default_flags;
	uint64_t pfn_flags_mask;
	void *dev_private_owner;
};

/**
 * uhmm_range_fault() - snapshot, and fault in where asked, the CPU side of a range.
 * @range: the range; pfns[] is overwritten with the result.
 *
 * For each page reports whether it is present (VALID), writable by the device
 * without a fault (WRITE), the shared zero page (ZERO), a device page of
 * dev_private_owner (DEVICE_PRIVATE: reported, never faulted), a device page of
 * another owner (faulted home when a fault is requested; otherwise
 * DEVICE_REMOTE without VALID), or not accessible at all (ERROR: no mapping or
 * PROT_NONE). Pages whose request asks for a fault are made present (and
 * writable) on the device's behalf by the calling thread: a read or a
 * copy-on-write breaking write, through madvise(MADV_POPULATE_*) where the
 * kernel serves it and a user-mode touch otherwise, so a device page of another
 * owner comes home through its driver's migrate_to_ram. Permissions are read
 * from the kernel on every call (PROCMAP_QUERY on /proc/self/maps, or the file
 * itself on kernels before 6.11): mprotect(2) raises no event, and a device
 * must not write where the CPU may not.
 *
 * The result is trustworthy only under the driver's lock after
 * uhmm_interval_read_retry(@notifier, @notifier_seq) said false; this is the
 * kernel's loop: read_begin, range_fault (retry on -EBUSY), lock, read_retry
 * (retry when true), program the device, unlock. Not async-signal-safe; must
 * not be called from the fault path (migrate_to_ram, page_free, invalidate).
 *
 * Return: 0, or
 * -EINVAL  NULL @range, @pfns or notifier, a notifier not inserted, an
 *          unaligned, empty or overflowing range;
 * -EFAULT  a fault was asked for a page with no mapping, a PROT_NONE mapping,
 *          a poisoned page (its device failed), or one the kernel refused to
 *          fault in (SIGBUS: e.g. beyond the end of a file);
 * -EPERM   a write was asked for a page of a read-only mapping;
 * -EBUSY   @notifier was invalidated since @notifier_seq (also when faulting
 *          brought a device page home), or a fault was asked of a page a
 *          migration holds (the kernel's migration entry; a snapshot reports
 *          such a page not present): start again from read_begin;
 * -EDEADLK called from the fault service thread, which would wait for itself;
 * -ENOMEM, -EMFILE, -EACCES  /proc/self/maps or /proc/self/pagemap cannot be
 *          opened (procfs is needed to read permissions).
 */
UHMM_API int uhmm_range_fault(struct uhmm_range *range);

/**
 * uhmm_range_of() - the managed range (one uhmm_manage or uhmm_alloc, or what
 * is left of one after munmap and mremap) that holds @addr.
 * @h: the handle. @addr: any address. @start, @end: out: its bounds.
 *
 * For drivers that fault around or prefetch: two allocations may lie side by
 * side with nothing between them, and what the program does to one (discard
 * it, say) must not race with a device taking the other's pages for it.
 * Return: 0, -ENOENT (not managed), -EINVAL (NULL argument), -ESHUTDOWN.
 */
UHMM_API int uhmm_range_of(struct uhmm *h, const void *addr, uintptr_t *start, uintptr_t *end);

/* The device page of a VALID|DEVICE_PRIVATE entry, or NULL. */
static inline struct uhmm_page *uhmm_pfn_to_page(uint64_t e)
{
	return (e & UHMM_PFN_VALID) && (e & UHMM_PFN_DEVICE_PRIVATE) ?
		       (struct uhmm_page *)(uintptr_t)(e & ~UHMM_PFN_FLAGS) :
		       NULL;
}

/* The CPU address of a VALID entry that is not DEVICE_PRIVATE, or 0. */
static inline uintptr_t uhmm_pfn_to_addr(uint64_t e)
{
	return (e & UHMM_PFN_VALID) && !(e & UHMM_PFN_DEVICE_PRIVATE) ?
		       (uintptr_t)(e & ~UHMM_PFN_FLAGS) :
		       0;
}

#ifdef __cplusplus
}
#endif
#endif /* UHMM_DRIVER_H */
