/* SPDX-License-Identifier: MIT */
/*
 * sim_internal.h - shared between the sim device's files; never installed.
 *
 * The device page table, and its locking, in one place:
 * - sim->lock is the driver's update lock (the kernel driver's mutex): the
 *   radix table, the notifier's sequence and the generation counters change
 *   under it. It is never held while touching CPU memory that may fault
 *   (managed memory can raise a userfaultfd fault whose service calls our
 *   invalidate, which takes the lock), never while waiting for anything, and
 *   nothing is allocated under it (allocation may touch managed heap memory).
 * - Translations are cached per thread (ctx->tlb), tagged with sim->gen: any
 *   change that drops or downgrades an entry bumps gen under the lock, so a
 *   cache hit with the current gen is the table's truth. A cache miss reads
 *   the table without the lock (sim_pt_lookup): entries and node pointers
 *   are stored atomically, nodes are freed only when the device goes.
 * - A device page's memory may be touched only while the toucher's slot
 *   announces the gen it saw (slot_enter); an invalidation that drops a device
 *   page's translation waits, after unlocking, for every slot older than its
 *   new gen before the page moves or is freed. Slot holders touch only the pool
 *   and the thread's bounce page, never managed memory, so the wait is short
 *   and never waits for the fault service.
 * - System pages are touched at their CPU address, holding nothing: that is
 *   exactly a CPU access, coherent with migrations by the fault path.
 * - Filling the table follows the kernel driver's loop, with one change: the
 *   window being filled is registered (sim_fill_begin) before read_begin, and
 *   the invalidate callback marks overlapping windows stale. The install
 *   checks that mark (our own migrations move no sequence, as the owner rule
 *   says, yet must stop a stale install) as well as read_retry. An
 *   invalidation that starts after the registration is seen; one that started
 *   before it is waited out by read_begin. So the sequence needs to move only
 *   for invalidations overlapping a registered window, and device faults in
 *   one place do not retry for changes elsewhere.
 */
#ifndef UHMM_SIM_INTERNAL_H
#define UHMM_SIM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "uhmm_sim.h"

#define SIM_PAGE UHMM_PAGE_SIZE
#define SIM_PAGE_SHIFT 12
#define SIM_PAGE_MASK (~(uintptr_t)(SIM_PAGE - 1))
#define SIM_FAIL_PAGES 64
#define SIM_EXT_SLOTS 32
#define SIM_NSLOTS (UHMM_SIM_MAX_THREADS + SIM_EXT_SLOTS)
#define SIM_TLB 64
#define SIM_SPARES 10 /* radix nodes one install may need: two paths of 5 levels */
#define SIM_CHUNK 512UL /* pages: one migration, 2 MiB */
#define SIM_STREAMS 8	 /* device fault streams followed at once (device_fault) */
#define SIM_REVAL 512UL /* pages checked again at a time */
#define SIM_TIMEOUT_NS 1000000000LL /* the kernel's HMM_RANGE_DEFAULT_TIMEOUT */

/*
 * Device page-table entries: present, writable, local (a page of this device,
 * its pool index above), and the validation epoch (a launch or command) in
 * which the entry was last checked against the CPU side's permissions.
 */
#define PTE_P 0x1ULL
#define PTE_W 0x2ULL
#define PTE_L 0x4ULL
/*
 * Exclusive (uhmm_make_exclusive): the page lives in uhmm's exclusive region,
 * and the frame field holds its host address; reached there like a local page.
 */
#define PTE_X 0x8ULL
#define PTE_PFN_SHIFT 12
#define PTE_PFN_MASK (((1ULL << 36) - 1) << PTE_PFN_SHIFT)
#define PTE_EPOCH_SHIFT 48

static inline uint64_t pte_epoch(uint64_t pte)
{
	return pte >> PTE_EPOCH_SHIFT;
}

static inline unsigned long pte_pfn(uint64_t pte)
{
	return (unsigned long)((pte & PTE_PFN_MASK) >> PTE_PFN_SHIFT);
}

struct sim_tlb {
	uint64_t vpn;
	uint64_t pte;
	uint64_t gen;
};

struct uhmm_sim_ctx {
	struct uhmm_sim *sim;
	unsigned int slot;
	unsigned int thread;
	int err;            /* the launch's first error in this thread */
	bool external;      /* a command's context, not a device thread's */
	char *bounce;       /* two pages: data between the pool and memory that may fault */
	void *spare[SIM_SPARES]; /* radix nodes, allocated before taking the lock */
	uintptr_t copy_next; /* where this thread's last device-to-device copy read up to */
	struct sim_tlb tlb[SIM_TLB];
};

struct sim_launch {
	struct sim_launch *next;
	uhmm_sim_kernel_fn fn;
	unsigned long n;
	void *arg;
	_Atomic unsigned long next_i;
	unsigned long step;
	int running;        /* device threads inside this launch; under qlock */
	atomic_int err;
};

struct uhmm_sim {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	char *pool; /* npages * SIM_PAGE, never part of a managed range */
	size_t pool_len;
	unsigned long npages;
	char name[32];
	unsigned int nthreads, policy, window;
	/* Streams of device faults (device_fault): where the next would land, its window. */
	_Atomic uintptr_t fstream_next[SIM_STREAMS];
	atomic_uint fstream_window[SIM_STREAMS];
	atomic_uint fstream_victim;
	atomic_int dead;
	atomic_uint fail_next;
	_Atomic uintptr_t fail_addr[SIM_FAIL_PAGES];
	atomic_int fail_used; /* fail_addr[] slots set since the last clear: checks look no further */
	_Atomic uint64_t dflags; /* UHMM_DMIRROR_FLAG_* */
	atomic_ulong copies_to, copies_from, copy_errors, page_frees, faults;
	_Atomic uintptr_t stream_next; /* where the last copy to the device ended (CPU address) */
	atomic_ulong stream_bytes;     /* bytes copied in a run of adjoining batches (sim_streaming) */
	atomic_ulong launches, device_faults, fault_migrated, fault_mapped, fault_retries,
		invalidations, revalidations, migrated_to, migrated_from, alloc_fallbacks,
		alloc_failures, fault_duplicated;

	/* The device page table (pt.c). */
	struct uhmm_interval_notifier notifier;
	bool notifier_in;
	pthread_mutex_t lock;
	void *root;
	_Atomic uint64_t gen;     /* see above; starts at 1 */
	_Atomic uint64_t vepoch;  /* bumped at each launch and command */
	/*
	 * Windows being filled, one per slot, under sim->lock: an invalidation
	 * overlapping one marks it stale (our own migrations included, which do
	 * not move the notifier's sequence) and moves the sequence only then.
	 */
	uintptr_t fill_s[SIM_NSLOTS], fill_e[SIM_NSLOTS];
	bool fill_stale[SIM_NSLOTS];
	_Atomic uint64_t slots[SIM_NSLOTS];
	atomic_int ext_used[SIM_EXT_SLOTS];
	atomic_uint ext_hi; /* external slots handed out so far: [0, ext_hi) may be in use */

	/* The device threads and the launch queue (exec.c). */
	pthread_t threads[UHMM_SIM_MAX_THREADS];
	struct uhmm_sim_ctx *ctxs[UHMM_SIM_MAX_THREADS];
	unsigned int nstarted;
	pthread_mutex_t qlock;
	pthread_cond_t qcond;  /* device threads: work or stop */
	pthread_cond_t qdone;  /* launchers: a launch ended */
	struct sim_launch *qhead, *qtail;
	uint64_t qseq_done, qseq_next; /* launches ended / queued, under qlock */
	int qerr;                      /* first error since the last synchronize */
	bool stopping;
};

/* sim.c */
int sim_devmem_add(struct uhmm_sim *sim);
int sim_copy_one_to(struct uhmm_sim *sim, struct uhmm_page *page, const void *src, uintptr_t va);
int sim_copy_one_from(struct uhmm_sim *sim, void *dst, struct uhmm_page *page, uintptr_t va);
int sim_migrate_to_dev(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
		       unsigned long *moved);
int sim_migrate_to_sys(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, bool cmd,
		       unsigned long *moved);
int sim_cow(struct uhmm_sim *sim, uintptr_t va);
int64_t sim_now_ns(void);

static inline char *sim_pool_page(const struct uhmm_sim *sim, unsigned long pfn)
{
	return sim->pool + pfn * SIM_PAGE;
}

/* pt.c */
int sim_pt_init(struct uhmm_sim *sim);
void sim_pt_fini(struct uhmm_sim *sim);
void sim_pt_drop_all(struct uhmm_sim *sim);
uint64_t sim_pt_lookup(struct uhmm_sim *sim, uint64_t vpn, uint64_t *gen);
struct uhmm_sim_ctx *sim_ctx_new(struct uhmm_sim *sim, bool external, unsigned int thread);
void sim_ctx_free(struct uhmm_sim_ctx *ctx);
int sim_translate(struct uhmm_sim_ctx *ctx, uintptr_t va, bool write, bool fault, char **mem);
/* One device page's worth (SIM_PAGE), streaming into device memory with @stream; then sim_copy_fence(). */
void sim_copy_page(void *dst, const void *src, bool stream);
/* @n pages the same way, streamed four at a time with @stream. */
void sim_copy_pages(void *const *dst, const void *const *src, unsigned long n, bool stream);
void sim_copy_fence(void);
bool sim_pt_set_exclusive(struct uhmm_sim_ctx *ctx, uintptr_t s, unsigned long n,
			  void *const *pages, uint64_t seq);
bool sim_pt_exclusive_in(struct uhmm_sim *sim, uintptr_t s, uintptr_t e);
int sim_translate_held(struct uhmm_sim_ctx *ctx, uintptr_t va, bool write, char **mem);
void sim_slot_exit(struct uhmm_sim_ctx *ctx);
void sim_tlb_forget(struct uhmm_sim_ctx *ctx, uintptr_t va);
int sim_revalidate(struct uhmm_sim_ctx *ctx, uintptr_t va);
int sim_map_range(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e, bool write);
int sim_install_snapshot(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e, bool local_only);
void sim_drop_range(struct uhmm_sim *sim, uintptr_t s, uintptr_t e);
void sim_new_epoch(struct uhmm_sim *sim);
void sim_fill_begin(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e);
bool sim_fill_stale_locked(struct uhmm_sim_ctx *ctx);
void sim_fill_end(struct uhmm_sim_ctx *ctx);

/* exec.c */
int sim_exec_start(struct uhmm_sim *sim);
void sim_exec_stop(struct uhmm_sim *sim);
bool sim_in_kernel(void);

/* dmirror.c: uhmm_sim_dmirror is public. */

#endif /* UHMM_SIM_INTERNAL_H */
