/* SPDX-License-Identifier: MIT */
/*
 * uhmm.h - Heterogeneous Memory Management in user space: the application API.
 *
 * A struct uhmm is one managed address space: one userfaultfd, its fault
 * service thread, and the managed ranges. Pages of a managed range may move
 * into device-private memory (memory the CPU cannot address); the first CPU
 * touch of such a page is caught and the page is brought home by its device's
 * driver. When a page cannot come home (the device failed), the toucher, and
 * only it, gets SIGBUS.
 *
 * Conventions: every function returns 0 (or a non-negative count) on success
 * and a negative errno on failure; the library never sets errno. Every
 * function that takes a handle returns -ESHUTDOWN once it is closed, which
 * includes a forked child's inherited handles (a child opens its own).
 * uhmm_strerror() gives words that say what to do about an error.
 * Drivers include uhmm_driver.h; the built-in software device is uhmm_sim.h.
 */
#ifndef UHMM_H
#define UHMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UHMM_API __attribute__((visibility("default")))
#else
#define UHMM_API
#endif

#define UHMM_VERSION_MAJOR 0
#define UHMM_VERSION_MINOR 1
#define UHMM_VERSION_PATCH 0

#define UHMM_PAGE_SIZE 4096UL

/*
 * UHMM_OPTS - declare an options struct with its size filled in.
 * Option structs start with `size_t sz`; the library reads fields past sz as
 * their defaults and refuses a larger struct whose unknown tail is not zero
 * (-E2BIG), so old binaries keep working against new libraries and back.
 */
#define UHMM_OPTS(type, name, ...) \
	struct type name = { .sz = sizeof(struct type), __VA_ARGS__ }

struct uhmm;
struct uhmm_devmem; /* device memory: see uhmm_driver.h; uhmm_sim_devmem() gives one */

/* Userfaultfd features uhmm uses, as reported by uhmm_features(). */
enum {
	UHMM_FEAT_MISSING = 1ULL << 0,     /* missing-page faults on anonymous memory */
	UHMM_FEAT_WP = 1ULL << 1,          /* write-protect faults */
	UHMM_FEAT_POISON = 1ULL << 2,      /* UFFDIO_POISON (6.6+): SIGBUS on a failed page */
	UHMM_FEAT_MOVE = 1ULL << 3,        /* UFFDIO_MOVE (6.8+): atomic, zero-copy take-away */
	UHMM_FEAT_EVENT_UNMAP = 1ULL << 4, /* munmap events */
	UHMM_FEAT_EVENT_REMOVE = 1ULL << 5, /* MADV_DONTNEED/REMOVE events */
	UHMM_FEAT_EVENT_REMAP = 1ULL << 6, /* mremap events */
	UHMM_FEAT_EVENT_FORK = 1ULL << 7,  /* fork events in force (thread mode, CAP_SYS_PTRACE) */
	UHMM_FEAT_THREAD_ID = 1ULL << 8,   /* the faulting thread's id */
	UHMM_FEAT_SIGBUS = 1ULL << 9,      /* faults as SIGBUS in the toucher */
	UHMM_FEAT_KERNEL_FAULTS = 1ULL << 10, /* privileged: faults from system calls served */
};

/*
 * The features without which migration to a device is refused: a page that
 * leaves the CPU must have a way home (MISSING, MOVE), a way to fail loudly
 * (POISON) and must follow munmap/madvise/mremap (the events).
 */
#define UHMM_FEAT_REQUIRED                                                          \
	(UHMM_FEAT_MISSING | UHMM_FEAT_POISON | UHMM_FEAT_MOVE | UHMM_FEAT_EVENT_UNMAP | \
	 UHMM_FEAT_EVENT_REMOVE | UHMM_FEAT_EVENT_REMAP)

/* Flags of struct uhmm_open_opts. */
enum {
	/* Use UFFD_USER_MODE_ONLY even where kernel-mode faults are permitted. */
	UHMM_OPEN_USER_MODE_ONLY = 1U << 0,
};

/*
 * How CPU faults on managed memory are served.
 * THREAD: a service thread reads fault messages and resolves them; a system
 *         call that touches device-resident memory is served transparently
 *         where the process may handle kernel-mode faults.
 * SIGNAL: the faulting thread gets SIGBUS (UFFD_FEATURE_SIGBUS) and serves its
 *         own fault in uhmm's handler, then the access restarts: no thread
 *         switch per fault, touchers serve themselves in parallel. A system
 *         call that touches device-resident memory fails with EFAULT.
 * AUTO:   THREAD where kernel-mode faults are permitted (full transparency),
 *         SIGNAL where they are not anyway (user-mode-only).
 */
enum uhmm_fault_mode {
	UHMM_FAULT_AUTO = 0,
	UHMM_FAULT_THREAD = 1,
	UHMM_FAULT_SIGNAL = 2,
};

/*
 * struct uhmm_open_opts - options of uhmm_open(); declare with UHMM_OPTS.
 * @sz:            sizeof(struct uhmm_open_opts), set by UHMM_OPTS.
 * @flags:         UHMM_OPEN_* flags.
 * @mask_features: for tests: UHMM_FEAT_* bits to treat as missing from the
 *                 kernel, to exercise the refusal paths on a complete kernel.
 * @fault_mode:    enum uhmm_fault_mode (default AUTO).
 * @fault_window:  the largest fault-around window in pages, for
 *                 uhmm_fault_window() (0: the default, 512 pages = 2 MiB;
 *                 1: fault-around off, one page per fault).
 * @nomem_wait_ms: how long a CPU fault on a device page waits, retrying with
 *                 backoff (1 ms doubling to 64 ms), while there is no memory
 *                 to bring the page home (UFFDIO_COPY, or the driver's
 *                 migrate_to_ram, fails with ENOMEM); then the page is
 *                 poisoned, its toucher gets SIGBUS and one line on stderr
 *                 says why (0: the default, 2000 ms).
 * @keep_mib:      how much of the system memory that migrations to devices
 *                 free is kept for pages coming home, in MiB, rounded down to
 *                 whole 2 MiB chunks (1: none; a chunk holds the pages of one
 *                 migration of 32 pages or more). Pages home, in runs of 32
 *                 or more, are copied into kept pages and moved into place,
 *                 about 1.5 times as fast as into pages the kernel allocates.
 *                 Pages kept for a second unused are freed (uhmm_stats:
 *                 @pages_kept). Keeping delays a free by up to that second;
 *                 it never adds to the memory the process had before the
 *                 migration (to make room at once, keep none: 1). 0: the
 *                 default, 1024 MiB, or a sixteenth of the machine's memory
 *                 or of this process's cgroup memory limit (a container's,
 *                 cgroup v1 or v2) where that is less; at most 2048.
 */
struct uhmm_open_opts {
	size_t sz;
	unsigned int flags;
	uint64_t mask_features;
	enum uhmm_fault_mode fault_mode;
	unsigned int fault_window;
	unsigned int nomem_wait_ms;
	unsigned int keep_mib;
};

/**
 * uhmm_open() - create a managed address space for this process.
 * @hp:   out: the new handle.
 * @opts: options, or NULL for the defaults.
 *
 * Opens a userfaultfd (O_CLOEXEC, O_NONBLOCK), privileged where the process
 * may handle kernel-mode faults, UFFD_USER_MODE_ONLY otherwise; probes the
 * kernel's features and starts the fault service thread. A handle whose
 * kernel lacks a feature in UHMM_FEAT_REQUIRED still opens: it can manage
 * memory, but uhmm_migrate_*() to a device returns -EOPNOTSUPP.
 *
 * In signal mode uhmm installs a SIGBUS handler (once per process) that
 * serves faults on managed memory and passes every other SIGBUS on to the
 * handler that was installed before it (or the default action). A program
 * that installs its own SIGBUS handler later must call uhmm_sigbus_handler()
 * from it first.
 *
 * Return: 0, or
 * -EINVAL  @hp is NULL or @opts has unknown flags, an unknown fault mode, a
 *          fault window above 512 or @keep_mib above 2048;
 * -EOPNOTSUPP signal mode was asked for and the kernel lacks UFFD_FEATURE_SIGBUS;
 * -E2BIG   @opts is larger than this library knows and its tail is not zero;
 * -EPERM   userfaultfd is not permitted at all (seccomp, or no user-mode-only support);
 * -ENOSYS  the kernel has no userfaultfd;
 * -EFAULT, -EINVAL  the kernel refused to register uhmm's staging area;
 * -ENOMEM, -EMFILE, -EAGAIN  out of memory, descriptors or threads.
 */
UHMM_API int uhmm_open(struct uhmm **hp, const struct uhmm_open_opts *opts);

/**
 * uhmm_close() - bring every device-resident page home and tear down.
 * @h: the handle, or NULL (then nothing happens).
 *
 * Every managed range is unmanaged (its pages come home first; pages whose
 * device fails stay poisoned: SIGBUS on touch), the fault service stops and
 * the userfaultfd is closed. Device memory still registered is evicted and
 * becomes inert; its driver must still call uhmm_devmem_remove(), which then
 * frees what is left. No thread may touch managed memory during uhmm_close().
 */
UHMM_API void uhmm_close(struct uhmm *h);

/**
 * uhmm_features() - the UHMM_FEAT_* bits available to this handle.
 * @h: the handle.
 *
 * The kernel's features minus those masked by uhmm_open_opts.mask_features.
 * UHMM_FEAT_KERNEL_FAULTS is set when the userfaultfd is privileged: then a
 * system call that reads or writes device-resident memory (read(2) into it)
 * is served transparently. Without it (user-mode-only mode) such a system call
 * fails with EFAULT, while every user-mode access is served.
 * Return: the bit set, or 0 for a NULL handle.
 */
UHMM_API uint64_t uhmm_features(const struct uhmm *h);

/**
 * uhmm_fault_mode() - the mode in force: UHMM_FAULT_THREAD or UHMM_FAULT_SIGNAL,
 * or -EINVAL for a NULL handle.
 */
UHMM_API int uhmm_fault_mode(const struct uhmm *h);

/**
 * uhmm_sigbus_handler() - serve a SIGBUS that is a fault on managed memory.
 * @sig, @info, @ucontext: as given to an SA_SIGINFO handler.
 *
 * For programs with their own SIGBUS handler in signal mode: call this first;
 * when it returns 1 the fault was served and the handler should return (the
 * access restarts). It returns 0 for every other SIGBUS: poisoned pages
 * (a failed device), truncated files, addresses uhmm does not manage.
 * Async-signal-safe.
 */
UHMM_API int uhmm_sigbus_handler(int sig, void *info, void *ucontext);

/**
 * uhmm_can_migrate() - whether pages of this handle may leave the CPU.
 * @h: the handle.
 *
 * Return: 0 when the fault path is complete, or
 * -EINVAL     @h is NULL;
 * -EOPNOTSUPP a feature in UHMM_FEAT_REQUIRED is missing (uhmm_strerror says
 *             which kernel is needed; `uhmm info` lists what is missing).
 */
UHMM_API int uhmm_can_migrate(const struct uhmm *h);

/**
 * uhmm_manage() - adopt a range of private anonymous memory.
 * @h:    the handle.
 * @addr: page-aligned start (from mmap, or page-aligned memory from malloc).
 * @len:  length in bytes, a non-zero multiple of UHMM_PAGE_SIZE.
 *
 * The range is registered with the userfaultfd; its pages keep their data and
 * stay on the CPU until migrated. Metadata is one 8-byte word per page,
 * reserved virtually and allocated only where used: a huge untouched range
 * costs address space, not memory.
 *
 * Return: 0, or
 * -EINVAL  NULL handle, unaligned or zero-length range, overflow, or memory
 *          that is not private anonymous (shared, file-backed, hugetlb);
 * -EFAULT  part of the range is not mapped;
 * -EEXIST  part of the range is already managed;
 * -EBUSY   part of the range is registered with another userfaultfd;
 * -ENOMEM  out of memory for the metadata.
 */
UHMM_API int uhmm_manage(struct uhmm *h, void *addr, size_t len);

/**
 * uhmm_unmanage() - release a managed range.
 * @h:    the handle.
 * @addr: page-aligned start.
 * @len:  page-multiple length; the range must lie inside managed memory.
 *
 * Device-resident pages come home first (their data is kept); pages that
 * cannot come home stay poisoned. Then the range is unregistered and is
 * ordinary memory again. A part of a larger managed range may be released.
 *
 * Return: number of pages brought home, or
 * -EINVAL  NULL handle, unaligned, zero-length or overflowing range;
 * -ENOENT  part of the range is not managed (e.g. a second unmanage).
 */
UHMM_API int uhmm_unmanage(struct uhmm *h, void *addr, size_t len);

/**
 * uhmm_alloc() - map and manage fresh anonymous memory.
 * @h:   the handle.
 * @len: bytes, rounded up to whole pages.
 * @out: out: the start of the memory.
 *
 * Return: 0, or -EINVAL (NULL argument, zero or overflowing length), -ENOMEM.
 */
UHMM_API int uhmm_alloc(struct uhmm *h, size_t len, void **out);

/**
 * uhmm_free() - release memory from uhmm_alloc(): unmanage and unmap it.
 * @h: the handle. @addr, @len: as given to and returned by uhmm_alloc().
 *
 * Device pages of the range are freed, not brought home.
 * Return: 0, or -EINVAL (bad arguments, or memory that uhmm_alloc did not
 * make: use uhmm_unmanage and munmap for that), -ENOENT (not managed).
 */
UHMM_API int uhmm_free(struct uhmm *h, void *addr, size_t len);

/**
 * uhmm_migrate_to_ram() - bring device-resident pages of a range home.
 * @h: the handle. @addr, @len: a page-aligned range inside managed memory.
 *
 * Every device page of the range, whatever its device, is copied home. A page
 * whose device fails to return it becomes poisoned (SIGBUS on touch) and is
 * not counted. Pages locked by a fault or a concurrent migration are retried
 * a few times, then skipped, as the kernel skips pages it cannot lock.
 *
 * Return: number of pages moved home, or
 * -EINVAL  NULL handle, unaligned, zero-length or overflowing range;
 * -ENOENT  part of the range is not managed.
 */
UHMM_API int uhmm_migrate_to_ram(struct uhmm *h, void *addr, size_t len);

/**
 * uhmm_sync() - wait until the fault service has handled every event the
 * kernel delivered before this call.
 * @h: the handle.
 *
 * munmap(2), madvise(MADV_DONTNEED) and mremap(2) on managed memory return
 * once the service thread has *read* their event; the device pages they free
 * (and page_free callbacks) follow right after. Call this to observe them,
 * e.g. before reading device memory counters. Must not be called from a
 * driver callback.
 * Return: 0, or -EINVAL (NULL handle).
 */
UHMM_API int uhmm_sync(struct uhmm *h);

/**
 * uhmm_prefetch() - move a range where it is about to be used (cudaMemPrefetchAsync's
 * synchronous form).
 * @h: the handle. @addr, @len: a page-aligned range inside managed memory.
 * @target: a device memory region, or NULL for system memory.
 *
 * To a device: uhmm_migrate_to_device() (with eviction if the region has a
 * policy); to system memory: uhmm_migrate_to_ram(). Counted as prefetches.
 * Return: pages moved, or the errors of those two functions (-EINVAL for a
 * region of another handle).
 */
UHMM_API int uhmm_prefetch(struct uhmm *h, void *addr, size_t len, struct uhmm_devmem *target);

/**
 * uhmm_prefetch_async() - queue a prefetch; a worker thread of the handle
 * runs queued prefetches in order.
 * @ticket: out: what uhmm_prefetch_wait() takes.
 * Return: 0, or -EINVAL (bad arguments, checked now), -ENOMEM, -EAGAIN (no thread).
 */
UHMM_API int uhmm_prefetch_async(struct uhmm *h, void *addr, size_t len,
				 struct uhmm_devmem *target, uint64_t *ticket);

/**
 * uhmm_prefetch_wait() - wait until the prefetch @ticket (and all before it) ran.
 * Return: that prefetch's result (pages moved or -errno), -EINVAL for a ticket
 * never issued, -ENOENT when its result is no longer kept (more than 4096
 * prefetches later).
 */
UHMM_API int uhmm_prefetch_wait(struct uhmm *h, uint64_t ticket);

/* Advice, CUDA's cudaMemAdvise vocabulary (uhmm_advise). */
enum uhmm_advice {
	UHMM_ADVISE_SET_PREFERRED_LOCATION = 1, /* @device, or NULL for system memory */
	UHMM_ADVISE_UNSET_PREFERRED_LOCATION,
	UHMM_ADVISE_SET_ACCESSED_BY,            /* @device keeps a mapping, no migration */
	UHMM_ADVISE_UNSET_ACCESSED_BY,
	UHMM_ADVISE_SET_READ_MOSTLY,            /* reads do not move pages */
	UHMM_ADVISE_UNSET_READ_MOSTLY,
};

/**
 * uhmm_advise() - tell uhmm and the devices how a range will be used.
 * @h: the handle. @addr, @len: a page-aligned range (need not be managed yet).
 * @advice: an enum uhmm_advice. @device: the device memory the advice names
 * (PREFERRED_LOCATION: NULL means system memory; ACCESSED_BY: required).
 *
 * The semantics CUDA documents, as far as a device that cannot be addressed
 * by the CPU allows:
 * PREFERRED_LOCATION: faults migrate pages toward it; other processors map
 *   rather than move where they can (a device maps system pages in place).
 *   The CPU cannot map device memory: its touch of a device page always
 *   brings it home.
 * ACCESSED_BY: the device's faults on the range map system pages in place
 *   instead of migrating them (its mapping stays established across CPU use).
 * READ_MOSTLY: a device read gets a read-only copy of its own while the CPU
 *   keeps its page, write-protected (uhmm_duplicate, read duplication); a
 *   CPU read of such a page that lives on a device brings it home as a copy
 *   while the device keeps its own. A write by anyone drops the copies
 *   before it lands, and a device write then migrates as usual. Where
 *   write-protect faults are missing the device maps the CPU's page in place
 *   and a CPU read brings the page home, as without advice.
 * Later advice for the same kind and range replaces earlier; UNSET removes it.
 * Drivers read it with uhmm_advice_get().
 * Return: 0, or -EINVAL (bad range, unknown advice, ACCESSED_BY without a
 * device, a device of another handle), -ENOMEM, -ESHUTDOWN.
 */
UHMM_API int uhmm_advise(struct uhmm *h, void *addr, size_t len, enum uhmm_advice advice,
			 struct uhmm_devmem *device);

/*
 * struct uhmm_advice_info - the advice in force at one address.
 * @preferred:    UHMM_PREFER_NONE, UHMM_PREFER_CPU or UHMM_PREFER_DEVICE.
 * @preferred_device: with UHMM_PREFER_DEVICE, which.
 * @accessed_by:  whether the device asked about (uhmm_advice_get's @device) has ACCESSED_BY.
 * @read_mostly:  READ_MOSTLY is set.
 */
enum { UHMM_PREFER_NONE = 0, UHMM_PREFER_CPU = 1, UHMM_PREFER_DEVICE = 2 };
struct uhmm_advice_info {
	int preferred;
	struct uhmm_devmem *preferred_device;
	int accessed_by;
	int read_mostly;
};

/**
 * uhmm_advice_get() - the advice at @addr, as @device sees it.
 * Return: 0, or -EINVAL (NULL argument).
 */
UHMM_API int uhmm_advice_get(struct uhmm *h, const void *addr, struct uhmm_devmem *device,
			     struct uhmm_advice_info *out);

/*
 * struct uhmm_thrash_opts - thrashing control (CUDA's throttle-then-pin);
 * declare with UHMM_OPTS. A page that comes home by a CPU fault less than
 * @window_ms after it went to a device has bounced; after @threshold bounces
 * in a row it is pinned in system memory for @pin_ms: migrations to devices
 * leave it there (devices reach it through its CPU address). @threshold 0
 * turns the control off (the default).
 */
struct uhmm_thrash_opts {
	size_t sz;
	unsigned int window_ms;
	unsigned int threshold;
	unsigned int pin_ms;
};

/** uhmm_set_thrash() - set the thrashing control. Return: 0, or -EINVAL, -E2BIG. */
UHMM_API int uhmm_set_thrash(struct uhmm *h, const struct uhmm_thrash_opts *opts);

/* Where a page is, as seen by uhmm_page_state(). */
enum uhmm_page_state {
	UHMM_PAGE_EMPTY = 1,  /* on the CPU, never written or discarded: reads zeros */
	UHMM_PAGE_SYSTEM = 2, /* in system memory */
	UHMM_PAGE_DEVICE = 3, /* in a device's private memory */
	UHMM_PAGE_POISON = 4, /* lost with a failed device: SIGBUS on touch */
	UHMM_PAGE_DUPLICATED = 5, /* in system memory, write-protected, with a
				     read-only copy on a device (uhmm_duplicate) */
};

/**
 * uhmm_page_state() - where the page containing @addr is.
 * @h: the handle. @addr: any address inside a managed page.
 * Return: an enum uhmm_page_state, or -EINVAL (NULL handle), -ENOENT (not managed).
 */
UHMM_API int uhmm_page_state(struct uhmm *h, const void *addr);

/*
 * struct uhmm_stats - counters of a handle, monotonic since uhmm_open.
 * @sz:            sizeof(struct uhmm_stats), set by UHMM_OPTS.
 * @faults:        CPU faults served on managed memory.
 * @faults_device: of those, faults on device-resident pages.
 * @pages_home:    pages brought home to system memory (faults and migrations).
 * @pages_out:     pages migrated to device memory.
 * @zero_fills:    pages filled with zeros on first touch or after discard,
 *                 including the holes after a touched one that a stream of
 *                 first touches fills in the same fault (fault-around, a
 *                 doubling window up to 2 MiB; an isolated touch fills one):
 *                 the zero page for reads, private zeroed pages for writes.
 * @poisoned:      pages poisoned because their device failed.
 * @events:        unmap, remove and remap events handled.
 * @dup_writes:    CPU writes to duplicated pages (uhmm_duplicate) that ended
 *                 the duplication: the device's copy was dropped first.
 * @pages_recycled: of @pages_home, pages that came home into system pages a
 *                 migration to a device had freed (copied into them, then
 *                 moved into place with UFFDIO_MOVE: no allocation).
 * @pages_kept:    system pages freed by migrations to devices and kept for
 *                 the way home now: at most uhmm_open_opts.keep_mib, given
 *                 back to the kernel after a second unused.
 * @faults_worker: of @faults_device, faults a fault worker served (thread
 *                 mode): those on a driver that may block, and, while
 *                 several threads fault at once, on one that never blocks
 *                 (UHMM_DEVMEM_NONBLOCKING), so that touchers are served in
 *                 parallel; the service thread serves the rest itself.
 */
struct uhmm_stats {
	size_t sz;
	uint64_t faults;
	uint64_t faults_device;
	uint64_t pages_home;
	uint64_t pages_out;
	uint64_t zero_fills;
	uint64_t poisoned;
	uint64_t events;
	uint64_t dup_writes;
	uint64_t pages_recycled;
	uint64_t pages_kept;
	uint64_t faults_worker;
};

/**
 * uhmm_stats() - read the handle's counters.
 * Return: 0, or -EINVAL (NULL argument, or @st->sz smaller than the first field set),
 * -E2BIG (@st->sz larger than known).
 */
UHMM_API int uhmm_stats(struct uhmm *h, struct uhmm_stats *st);

/*
 * struct uhmm_range_stats - the counters of one managed range: what one
 * uhmm_manage() or uhmm_alloc() adopted, carried along when mremap moves it
 * and shared by the pieces a partial munmap leaves. Declare with UHMM_OPTS.
 * @start, @end:        the bounds of the piece that holds the address.
 * @faults:             CPU faults that brought a device page home.
 * @pages_to_device:    pages migrated to devices (faults, prefetch, calls).
 * @pages_to_system:    pages brought home (faults, eviction, calls).
 * @bytes_to_device, @bytes_to_system: the same, in bytes.
 * @prefetched:         pages uhmm_prefetch() moved to a device (a call that
 *                      spans ranges counts to the range of its first page).
 * @evictions:          pages evicted home to make room on a full device.
 * @thrash_events:      pages pinned in system memory for bouncing.
 */
struct uhmm_range_stats {
	size_t sz;
	uintptr_t start, end;
	uint64_t faults;
	uint64_t pages_to_device;
	uint64_t pages_to_system;
	uint64_t bytes_to_device;
	uint64_t bytes_to_system;
	uint64_t prefetched;
	uint64_t evictions;
	uint64_t thrash_events;
};

/**
 * uhmm_range_stats() - read the counters of the managed range that holds @addr.
 * Return: 0, or -ENOENT (not managed), -EINVAL (NULL argument, or @st->sz not
 * a size the struct ever had), -E2BIG (@st->sz larger than known with a
 * non-zero tail), -ESHUTDOWN.
 */
UHMM_API int uhmm_range_stats(struct uhmm *h, const void *addr, struct uhmm_range_stats *st);

/**
 * uhmm_strerror() - words for a uhmm error code that say what to do.
 * @err: a negative errno returned by uhmm (a positive one is accepted too).
 * Return: a static string; never NULL.
 */
UHMM_API const char *uhmm_strerror(int err);

/**
 * uhmm_feature_name() - the name of one UHMM_FEAT_* bit ("MOVE"), or NULL.
 */
UHMM_API const char *uhmm_feature_name(uint64_t feat);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_H */
