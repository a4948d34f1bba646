/* SPDX-License-Identifier: MIT */
/*
 * uhmm_sim.h - the built-in software device.
 *
 * A device with its own memory: a pool of pages in a separate mapping, never
 * part of any managed range, registered as UHMM_MEMORY_DEVICE_PRIVATE device
 * memory with its own owner. Copies are CPU copies, into device memory with
 * streaming stores as a DMA engine writes (no cache pollution, no read for
 * ownership), out of it with ordinary ones. It can inject failures: fail
 * the next N copies, fail every copy of a given page, or die (every later
 * copy fails), so tests can check what a failing device does to the pages it
 * holds. Several sim devices may live in one process, each its own owner.
 *
 * It computes: K device threads run device kernels (a C function over an
 * index space, uhmm_sim_launch) that reach memory only through the device's
 * own page table, as a GPU's MMU does: device pages directly, system pages
 * through their CPU address, and a missing translation through a device fault
 * (uhmm_range_fault, then per policy migrate the pages to the device or map
 * them). The table follows the CPU side through an interval notifier over the
 * whole address space, with the kernel's sequence protocol.
 *
 * It carries the command set of the kernel's HMM test driver (lib/test_hmm.c,
 * "dmirror"): read, write, migrate either way, snapshot, release, flags, with
 * the same per-page codes and counters, so the kernel's HMM selftests run
 * against it (tests/hmm.c).
 */
#ifndef UHMM_SIM_H
#define UHMM_SIM_H

#include "uhmm_driver.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_sim;

/* How a device fault resolves a missing translation (uhmm_sim_opts.policy). */
enum uhmm_sim_policy {
	/* Migrate the faulting page and its window to the device, as CUDA's
	 * unified memory does; pages that cannot move (unmanaged, read-only,
	 * device memory full) are mapped instead. The default. */
	UHMM_SIM_POLICY_MIGRATE = 1,
	/* Map the system page: the device reads and writes it in place. */
	UHMM_SIM_POLICY_MAP = 2,
};

/*
 * struct uhmm_sim_opts - options of uhmm_sim_create(); use UHMM_OPTS.
 * @npages:       device memory in pages (default 65536, 256 MiB).
 * @name:         a name for diagnostics (default "sim").
 * @threads:      device threads running kernels, 1..UHMM_SIM_MAX_THREADS (default 2).
 * @policy:       an enum uhmm_sim_policy (default UHMM_SIM_POLICY_MIGRATE).
 * @fault_window: pages one device fault resolves around the faulting page (the
 *                aligned block of this size that holds it), a power of two,
 *                1..512 (default 16: 64 KiB). While a kernel's faults form a
 *                sequential stream (each lands where the last window ended),
 *                each fault doubles the window, up to 512 pages (2 MiB),
 *                never across a 2 MiB boundary, as CUDA's driver prefetches
 *                the rest of a 2 MiB block a kernel is sweeping.
 */
struct uhmm_sim_opts {
	size_t sz;
	unsigned long npages;
	const char *name;
	unsigned int threads;
	unsigned int policy;
	unsigned int fault_window;
};

#define UHMM_SIM_MAX_THREADS 64

/**
 * uhmm_sim_create() - create a software device with its own device memory.
 * @h: the handle. @opts: options or NULL. @out: out: the device.
 *
 * Starts its device threads and inserts its interval notifier.
 * Return: 0, or -EINVAL (NULL argument, npages too large, threads, policy or
 * fault_window out of range), -E2BIG, -ENOMEM, -EAGAIN (no thread), or an
 * error of uhmm_devmem_add().
 */
UHMM_API int uhmm_sim_create(struct uhmm *h, const struct uhmm_sim_opts *opts,
			     struct uhmm_sim **out);

/**
 * uhmm_sim_destroy() - remove the device: launches still queued run to their
 * end, its threads stop, its pages come home (those a dead device holds are
 * poisoned), then its memory is freed. Not from a device kernel.
 * Return: the number of pages poisoned, or 0; NULL is accepted.
 */
UHMM_API int uhmm_sim_destroy(struct uhmm_sim *sim);

/** uhmm_sim_devmem() - the device's memory region, for uhmm_migrate_to_device. */
UHMM_API struct uhmm_devmem *uhmm_sim_devmem(struct uhmm_sim *sim);

/** uhmm_sim_fail_copies() - make the next @n copies (either direction) fail with -EIO. */
UHMM_API int uhmm_sim_fail_copies(struct uhmm_sim *sim, unsigned int n);

/**
 * uhmm_sim_fail_page() - make every copy of the data of the managed page at
 * @addr fail with -EIO, in either direction, until uhmm_sim_clear_faults().
 * Return: 0, or -EINVAL (NULL), -ENOSPC (more than 64 pages marked).
 */
UHMM_API int uhmm_sim_fail_page(struct uhmm_sim *sim, const void *addr);

/** uhmm_sim_kill() - the device dies: every later copy fails with -ENODEV. */
UHMM_API int uhmm_sim_kill(struct uhmm_sim *sim);

/** uhmm_sim_clear_faults() - forget injected copy and page failures (not death). */
UHMM_API int uhmm_sim_clear_faults(struct uhmm_sim *sim);

/*
 * struct uhmm_sim_stats - the device's counters.
 * @copies_to:    pages copied into device memory.
 * @copies_from:  pages copied out of device memory.
 * @copy_errors:  copy calls that failed (injected or dead).
 * @page_frees:   page_free callbacks received.
 * @migrate_to_ram: migrate_to_ram callbacks (CPU faults on its pages).
 * @launches:     kernels launched (uhmm_sim_launch, uhmm_sim_launch_async).
 * @device_faults: device faults served: rounds of uhmm_range_fault for a
 *                missing (or read-only) translation met by a device kernel.
 * @fault_migrated: pages migrated to the device by device faults.
 * @fault_mapped: system pages entered into the device page table by device faults.
 * @fault_retries: device-fault rounds started again because the range changed
 *                meanwhile (-EBUSY, or read_retry said so).
 * @invalidations: invalidate callbacks that dropped translations.
 * @revalidations: windows of translations checked again against the CPU
 *                side's permissions at a launch or command (mprotect raises
 *                no event, so a launch never trusts the previous one's).
 * @migrated_to:  pages moved to the device by its own migrations (commands,
 *                device faults), @migrated_from: moved home by MIGRATE_TO_SYS.
 * @alloc_fallbacks: dmirror FLAGS FAIL_ALLOC consumed by a 2 MiB chunk, which
 *                fell back to base pages (the kernel's THP fallback).
 * @alloc_failures: device pages that could not be allocated (memory full, or
 *                FAIL_ALLOC consumed by a base page).
 * @fault_duplicated: system pages a device read of READ_MOSTLY memory copied
 *                to the device (uhmm_duplicate) instead of mapping them.
 */
struct uhmm_sim_stats {
	size_t sz;
	uint64_t copies_to;
	uint64_t copies_from;
	uint64_t copy_errors;
	uint64_t page_frees;
	uint64_t migrate_to_ram;
	uint64_t launches;
	uint64_t device_faults;
	uint64_t fault_migrated;
	uint64_t fault_mapped;
	uint64_t fault_retries;
	uint64_t invalidations;
	uint64_t revalidations;
	uint64_t migrated_to;
	uint64_t migrated_from;
	uint64_t alloc_fallbacks;
	uint64_t alloc_failures;
	uint64_t fault_duplicated;
};

/** uhmm_sim_stats() - read the device's counters. Return: 0, or -EINVAL, -E2BIG. */
UHMM_API int uhmm_sim_stats(struct uhmm_sim *sim, struct uhmm_sim_stats *st);

/* --- Device kernels --- */

/*
 * struct uhmm_sim_ctx - a device thread's context, given to each kernel call:
 * its page-table cache and the launch's sticky error. Only valid inside the
 * call; never shared between threads.
 */
struct uhmm_sim_ctx;

/*
 * A device kernel: called once for each index i in [0, n), spread over the
 * device threads in any order and concurrently. It reaches memory through the
 * uhmm_sim_load/store family only (CPU addresses translated by the device's
 * page table); plain pointers are fine for memory that is not shared with the
 * device's view (the kernel's own locals, @arg).
 */
typedef void (*uhmm_sim_kernel_fn)(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg);

/**
 * uhmm_sim_launch() - run @fn over [0, @n) on the device threads and wait.
 * @sim: the device. @fn: the kernel. @n: the index space (0: nothing runs).
 * @arg: passed to every call.
 *
 * Launches of one device run one after the other, in order (a stream). A
 * launch sees every munmap, discard and mremap that returned before the call
 * (uhmm's pending events are handled first), and checks its translations
 * against the CPU side's permissions again (mprotect raises no event).
 * Return: 0, or the first error a memory access of this launch met (see
 * uhmm_sim_load), or -EINVAL (NULL @sim or @fn), -EDEADLK (called from a
 * device kernel), -ESHUTDOWN (the device is being destroyed), -ENOMEM.
 */
UHMM_API int uhmm_sim_launch(struct uhmm_sim *sim, uhmm_sim_kernel_fn fn, unsigned long n,
			     void *arg);

/**
 * uhmm_sim_launch_async() - queue a launch and return at once.
 * The queued launches run in order; uhmm_sim_synchronize() waits for them.
 * Return: 0, or -EINVAL, -EDEADLK, -ESHUTDOWN, -ENOMEM as uhmm_sim_launch.
 */
UHMM_API int uhmm_sim_launch_async(struct uhmm_sim *sim, uhmm_sim_kernel_fn fn, unsigned long n,
				   void *arg);

/**
 * uhmm_sim_synchronize() - wait until every queued launch has run.
 * Return: 0, or the first error of a launch that ended since the last
 * synchronize (then cleared), or -EINVAL (NULL), -EDEADLK (from a kernel).
 */
UHMM_API int uhmm_sim_synchronize(struct uhmm_sim *sim);

/**
 * uhmm_sim_load() - the device reads @len bytes at CPU address @va into @dst.
 * @ctx: the kernel's context. @dst: a buffer of the kernel's (not translated).
 *
 * Each page is translated by the device's page table; a missing translation
 * is a device fault. A device page of this device is read from its memory; a
 * system page through its CPU address, like a CPU access (a concurrent
 * munmap(2) of it kills the process, as it would a CPU thread).
 * Return: 0, or (also kept as the launch's error)
 * -EFAULT no mapping, PROT_NONE, a poisoned page, or a fault the kernel refused;
 * -EBUSY  the range kept changing for a second (device fault timeout);
 * -ENOMEM no memory for the device's page table;
 * -EINVAL NULL @ctx, or a range that wraps.
 */
UHMM_API int uhmm_sim_load(struct uhmm_sim_ctx *ctx, void *dst, const void *va, size_t len);

/**
 * uhmm_sim_store() - the device writes @len bytes of @src at CPU address @va.
 * A device page still shared with a forked child is copied first (copy-on-write).
 * Return: 0, or as uhmm_sim_load, and -EPERM (a read-only mapping).
 */
UHMM_API int uhmm_sim_store(struct uhmm_sim_ctx *ctx, void *va, const void *src, size_t len);

/**
 * uhmm_sim_memcpy() - copy @len bytes between two CPU addresses, both
 * translated by the device (the ranges must not overlap).
 * Return: 0, or as uhmm_sim_store (for @dst) and uhmm_sim_load (for @src).
 */
UHMM_API int uhmm_sim_memcpy(struct uhmm_sim_ctx *ctx, void *dst, const void *src, size_t len);

/**
 * uhmm_sim_memset() - fill @len bytes at @va with @c through the device.
 * Return: 0, or as uhmm_sim_store.
 */
UHMM_API int uhmm_sim_memset(struct uhmm_sim_ctx *ctx, void *va, int c, size_t len);

/*
 * Naturally aligned 32- and 64-bit accesses through the device; an error
 * reads as 0 and stays in the context (uhmm_sim_ctx_error). Misaligned: -EINVAL.
 */
UHMM_API uint32_t uhmm_sim_load_u32(struct uhmm_sim_ctx *ctx, const void *va);
UHMM_API uint64_t uhmm_sim_load_u64(struct uhmm_sim_ctx *ctx, const void *va);
UHMM_API void uhmm_sim_store_u32(struct uhmm_sim_ctx *ctx, void *va, uint32_t v);
UHMM_API void uhmm_sim_store_u64(struct uhmm_sim_ctx *ctx, void *va, uint64_t v);
/* A device atomic, coherent with the CPU's atomics on the same word; returns the old value. */
UHMM_API uint64_t uhmm_sim_atomic_add_u64(struct uhmm_sim_ctx *ctx, void *va, uint64_t v);

/** uhmm_sim_ctx_error() - the first error this thread met in the current launch, or 0. */
UHMM_API int uhmm_sim_ctx_error(const struct uhmm_sim_ctx *ctx);

/** uhmm_sim_ctx_thread() - which device thread runs the call, 0..threads-1. */
UHMM_API unsigned int uhmm_sim_ctx_thread(const struct uhmm_sim_ctx *ctx);

/* --- The dmirror command set (the kernel's lib/test_hmm.c) --- */

/*
 * struct uhmm_dmirror_cmd - one command (the kernel's struct hmm_dmirror_cmd).
 * @addr:   in: a page-aligned CPU address.
 * @ptr:    in: the caller's buffer the device copies to or from (npages pages;
 *          SNAPSHOT: npages bytes).
 * @npages: in: pages (FLAGS: the flags).
 * @cpages: out: pages copied or processed (written only on success).
 * @faults: out: device fault rounds (written only on success).
 */
struct uhmm_dmirror_cmd {
	uintptr_t addr;
	void *ptr;
	uint64_t npages;
	uint64_t cpages;
	uint64_t faults;
};

enum uhmm_dmirror_op {
	/*
	 * READ: copy the range into @ptr from the device's page table; the
	 * first missing translation faults [it, end) in (uhmm_range_fault,
	 * REQ_FAULT, 64 pages a round; a round is one @faults) and the copy
	 * goes on. Device pages of other devices come home; pages are mapped,
	 * never migrated (the policy applies to kernels only).
	 */
	UHMM_DMIRROR_READ = 1,
	/* WRITE: as READ, from @ptr into the range; a translation must be writable. */
	UHMM_DMIRROR_WRITE,
	/*
	 * MIGRATE_TO_DEV: migrate the range's pages to the device (a missing
	 * mapping or a PROT_NONE one: -EINVAL), then read it back into @ptr from
	 * the device's memory: a page not on this device (unmanaged, shared,
	 * another device's, or one that could not move) gives -ENOENT.
	 */
	UHMM_DMIRROR_MIGRATE_TO_DEV,
	/* MIGRATE_TO_SYS: bring this device's pages of the range home; @cpages: pages moved. */
	UHMM_DMIRROR_MIGRATE_TO_SYS,
	/* SNAPSHOT: one UHMM_DMIRROR_PROT_* byte per page into @ptr, faulting nothing. */
	UHMM_DMIRROR_SNAPSHOT,
	/*
	 * EXCLUSIVE: the device takes the range for atomics (the kernel's
	 * make_device_exclusive) and reads it into @ptr; @cpages: pages read.
	 * The pages move to uhmm's exclusive region (uhmm_make_exclusive), not
	 * to the device's memory, and the device maps them there; the CPU fault
	 * that brings one back revokes it (the CPU sees the device's writes).
	 * CHECK_EXCLUSIVE: -EPERM while a page of the range is still held
	 * exclusively, 0 once every one was revoked.
	 */
	UHMM_DMIRROR_EXCLUSIVE,
	UHMM_DMIRROR_CHECK_EXCLUSIVE,
	/* RELEASE: device removal with pages resident: every page comes home
	 * (a dead device's are poisoned), the memory is unregistered and
	 * registered afresh. Waits for queued launches first. */
	UHMM_DMIRROR_RELEASE,
	/* FLAGS: set the device's UHMM_DMIRROR_FLAG_* to @npages. */
	UHMM_DMIRROR_FLAGS,
};

/*
 * The next allocation of a migrate command fails, once: a whole 2 MiB chunk
 * falls back to base pages (no error, as the kernel's THP fallback); a base
 * page is not migrated (MIGRATE_TO_DEV: -ENOENT; MIGRATE_TO_SYS: -ENOMEM).
 */
#define UHMM_DMIRROR_FLAG_FAIL_ALLOC (1ULL << 0)

/* SNAPSHOT bytes: a base class, ORed with READ or WRITE (and PMD/PUD, never set here). */
enum {
	UHMM_DMIRROR_PROT_ERROR = 0xFF,
	UHMM_DMIRROR_PROT_NONE = 0x00,
	UHMM_DMIRROR_PROT_READ = 0x01,
	UHMM_DMIRROR_PROT_WRITE = 0x02,
	UHMM_DMIRROR_PROT_PMD = 0x04,
	UHMM_DMIRROR_PROT_PUD = 0x08,
	UHMM_DMIRROR_PROT_ZERO = 0x10,
	UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = 0x20,
	UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = 0x30,
	UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = 0x40,
	UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = 0x50,
};

/**
 * uhmm_sim_dmirror() - run one dmirror command on the device.
 * @sim: the device. @op: an enum uhmm_dmirror_op. @cmd: the command.
 *
 * Runs in the calling thread, concurrently with kernels and other commands
 * (RELEASE excepted). Not from a device kernel or a driver callback.
 * Return: 0, or
 * -EINVAL     NULL argument, unknown @op, @addr not page aligned, @npages 0
 *             or the range wraps; MIGRATE_*: a hole or PROT_NONE in the range;
 * -EFAULT     READ/WRITE: a page with no mapping, PROT_NONE or poisoned;
 * -EPERM      WRITE: a read-only mapping;
 * -ENOENT     MIGRATE_TO_DEV: a page did not end up on this device;
 * -ENOMEM     out of memory (or FAIL_ALLOC on MIGRATE_TO_SYS of a base page);
 * -EBUSY      the range kept changing for a second;
 * -EPERM      CHECK_EXCLUSIVE: a page is still held exclusively;
 * -EOPNOTSUPP migration is refused on this kernel (uhmm_can_migrate);
 * -ENODEV     the device's memory is gone (a RELEASE that could not register it again).
 */
UHMM_API int uhmm_sim_dmirror(struct uhmm_sim *sim, unsigned int op, struct uhmm_dmirror_cmd *cmd);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_SIM_H */
