/* SPDX-License-Identifier: MIT */
/*
 * pt.c - the sim device's page table (its MMU): a radix tree keyed by CPU
 * page number, per-thread translation caches, the interval notifier that
 * keeps it true to the CPU side, and the device fault that fills it.
 * Locking: see sim_internal.h.
 */
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim_internal.h"

/* 5 levels of 512: 45 bits of page number, the whole 57-bit address space. */
#define PT_BITS 9
#define PT_FAN (1UL << PT_BITS)
#define PT_LEVELS 5
#define PT_SPARES SIM_SPARES

struct pt_node {
	void *e[PT_FAN];
};

struct pt_leaf {
	uint64_t e[PT_FAN];
};

static unsigned pt_index(uint64_t vpn, int level)
{
	return (unsigned)((vpn >> (PT_BITS * (PT_LEVELS - 1 - level))) & (PT_FAN - 1));
}

static void *ctx_spare(struct uhmm_sim_ctx *ctx)
{
	for (int i = 0; i < PT_SPARES; i++) {
		if (ctx->spare[i]) {
			void *p = ctx->spare[i];

			ctx->spare[i] = NULL;
			return p;
		}
	}
	return NULL;
}

/* Before taking the lock: nodes an install may need, allocated here, not under it. */
static int ctx_topup(struct uhmm_sim_ctx *ctx)
{
	for (int i = 0; i < PT_SPARES; i++) {
		if (!ctx->spare[i]) {
			ctx->spare[i] = calloc(1, sizeof(struct pt_node));
			if (!ctx->spare[i])
				return -ENOMEM;
		}
	}
	return 0;
}

/*
 * Entries change under sim->lock, but sim_pt_lookup reads without it: every
 * store to an entry or a node pointer is atomic, and a release: an entry is
 * published after the data copied into its page, a node after its zeroed
 * contents (the lookup acquires both). Nodes are freed only when the device
 * goes (sim_pt_fini), so a reader never follows a freed one.
 */
static void pte_set(uint64_t *pte, uint64_t v)
{
	__atomic_store_n(pte, v, __ATOMIC_RELEASE);
}

/* The leaf of @vpn if there is one; needs no lock. */
static struct pt_leaf *leaf_find(struct uhmm_sim *sim, uint64_t vpn)
{
	void *node = __atomic_load_n(&sim->root, __ATOMIC_ACQUIRE);

	if (vpn >> (PT_BITS * PT_LEVELS))
		return NULL; /* beyond 57 bits: no such address */
	for (int level = 0; node && level < PT_LEVELS - 1; level++)
		node = __atomic_load_n(&((struct pt_node *)node)->e[pt_index(vpn, level)],
				       __ATOMIC_ACQUIRE);
	return node;
}

/* The leaf of @vpn; with @ctx, created from its spares where missing (under sim->lock). */
static struct pt_leaf *leaf_get(struct uhmm_sim *sim, uint64_t vpn, struct uhmm_sim_ctx *ctx)
{
	void **slot = &sim->root;

	if (!ctx || (vpn >> (PT_BITS * PT_LEVELS)))
		return leaf_find(sim, vpn);
	for (int level = 0; level < PT_LEVELS; level++) {
		if (!*slot) {
			void *node = ctx_spare(ctx);

			if (!node)
				return NULL;
			__atomic_store_n(slot, node, __ATOMIC_RELEASE);
		}
		if (level == PT_LEVELS - 1)
			break;
		slot = &((struct pt_node *)*slot)->e[pt_index(vpn, level)];
	}
	return *slot;
}

/* @vpn's entry and the gen it goes with, for the translation cache. Lock-free. */
uint64_t sim_pt_lookup(struct uhmm_sim *sim, uint64_t vpn, uint64_t *gen)
{
	struct pt_leaf *l;

	/*
	 * The gen first: a change stores its entries, then bumps the gen. An
	 * entry read after an old gen is dropped from the cache at the next
	 * look (the gen moved); one read after the new gen is the new entry.
	 */
	*gen = atomic_load(&sim->gen);
	l = leaf_find(sim, vpn);
	return l ? __atomic_load_n(&l->e[vpn & (PT_FAN - 1)], __ATOMIC_ACQUIRE) : 0;
}

struct drop_count {
	unsigned long any;
};

/* Clear the entries of [s, e) (page numbers) below @node at @level. Under sim->lock. */
static void drop_walk(void *node, int level, uint64_t base, uint64_t s, uint64_t e,
		      struct drop_count *c)
{
	unsigned shift = PT_BITS * (PT_LEVELS - 1 - level);
	uint64_t span = 1ULL << shift;
	/* Only the children overlapping [s, e): a one-page drop visits one per level. */
	uint64_t i0 = s > base ? (s - base) >> shift : 0;
	uint64_t i1 = e > base ? ((e - base - 1) >> shift) + 1 : 0;

	if (i1 > PT_FAN)
		i1 = PT_FAN;
	for (unsigned i = (unsigned)i0; i < i1; i++) {
		uint64_t lo = base + i * span;

		if (level == PT_LEVELS - 1) {
			uint64_t *pte = &((struct pt_leaf *)node)->e[i];

			if (*pte & PTE_P)
				c->any++;
			pte_set(pte, 0);
			continue;
		}
		if (((struct pt_node *)node)->e[i])
			drop_walk(((struct pt_node *)node)->e[i], level + 1, lo, s, e, c);
	}
}

static void drop_locked(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, struct drop_count *c)
{
	uint64_t vs = s >> SIM_PAGE_SHIFT, ve = (e + SIM_PAGE - 1) >> SIM_PAGE_SHIFT;

	if (e == UINTPTR_MAX)
		ve = UINT64_MAX;
	if (sim->root && vs < ve)
		drop_walk(sim->root, 0, 0, vs, ve, c);
}

/*
 * The slots that may be in use: the device threads' and the external ones
 * handed out so far (ext_hi only grows), not all SIM_NSLOTS: every
 * invalidation looked at 96 slots twice, 0.2-0.3 us of a 5.4 us fault-back.
 * A slot taken after an invalidation read ext_hi needs no look: its taker
 * raised ext_hi before reading the gen in slot_enter, and the invalidation
 * moved the gen before reading ext_hi (all sequentially consistent), so
 * the taker saw the new gen. Its fill window is registered under the lock
 * the invalidation holds while it reads ext_hi.
 */
static int slots_end(struct uhmm_sim *sim)
{
	return UHMM_SIM_MAX_THREADS + (int)atomic_load(&sim->ext_hi);
}

/* The slot after @i (-1 to start) that may be in use, or -1 past @end. */
static int slot_next(const struct uhmm_sim *sim, int i, int end)
{
	if (++i == (int)sim->nthreads)
		i = UHMM_SIM_MAX_THREADS;
	return i < end ? i : -1;
}

/* Wait until no thread touches device memory through a translation older than @gen. */
static void wait_slots(struct uhmm_sim *sim, uint64_t gen)
{
	int end = slots_end(sim);

	for (int i = slot_next(sim, -1, end); i >= 0; i = slot_next(sim, i, end)) {
		uint64_t v;

		while ((v = atomic_load(&sim->slots[i])) && v < gen)
			sched_yield();
	}
}

/*
 * Drop [s, e) under sim->lock; returns the gen that accesses through the
 * dropped translations announced less than. Every caller waits for them,
 * including one that dropped nothing: another invalidation of the same pages
 * may have dropped them a moment before and still be waiting for an access
 * through them, and this caller must not move the pages meanwhile either.
 */
static uint64_t drop_and_gen(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, struct drop_count *c)
{
	drop_locked(sim, s, e, c);
	return c->any ? atomic_fetch_add(&sim->gen, 1) + 1 : atomic_load(&sim->gen);
}

void sim_drop_range(struct uhmm_sim *sim, uintptr_t s, uintptr_t e)
{
	struct drop_count c = { 0 };
	uint64_t gen;

	pthread_mutex_lock(&sim->lock);
	gen = drop_and_gen(sim, s, e, &c);
	pthread_mutex_unlock(&sim->lock);
	wait_slots(sim, gen);
}

void sim_pt_drop_all(struct uhmm_sim *sim)
{
	sim_drop_range(sim, 0, UINTPTR_MAX);
}

/*
 * The CPU side of [r->start, r->end) changes: drop our translations of it,
 * mark the windows being filled over it stale, and wait until nobody touches
 * a dropped device page any more. The sequence moves only where a window is
 * being filled (see sim_internal.h), and never for our own migrations (the
 * kernel's owner rule: the device fault runs migrations of its own between
 * read_begin and read_retry). May run in the fault path: no allocation.
 */
static bool sim_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notify_range *r,
			   uint64_t cur_seq)
{
	struct uhmm_sim *sim = (struct uhmm_sim *)((char *)n - offsetof(struct uhmm_sim, notifier));
	bool own = (r->event == UHMM_NOTIFY_MIGRATE || r->event == UHMM_NOTIFY_EXCLUSIVE) &&
		   r->owner == sim,
	     hit = false;
	struct drop_count c = { 0 };
	uint64_t gen;
	int end;

	pthread_mutex_lock(&sim->lock);
	end = slots_end(sim);
	/* Its own exclusive access is what its fill is waiting for: not a change. */
	for (int i = slot_next(sim, -1, end); i >= 0 && !(own && r->event == UHMM_NOTIFY_EXCLUSIVE);
	     i = slot_next(sim, i, end)) {
		if (sim->fill_s[i] < r->end && r->start < sim->fill_e[i]) {
			sim->fill_stale[i] = true;
			hit = true;
		}
	}
	if (hit && !own)
		uhmm_interval_set_seq(n, cur_seq);
	gen = drop_and_gen(sim, r->start, r->end, &c);
	pthread_mutex_unlock(&sim->lock);
	wait_slots(sim, gen);
	if (c.any)
		atomic_fetch_add_explicit(&sim->invalidations, 1, memory_order_relaxed);
	return true;
}

/* Register the window [s, e) this context fills; before uhmm_interval_read_begin. */
void sim_fill_begin(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e)
{
	struct uhmm_sim *sim = ctx->sim;

	pthread_mutex_lock(&sim->lock);
	sim->fill_s[ctx->slot] = s;
	sim->fill_e[ctx->slot] = e;
	sim->fill_stale[ctx->slot] = false;
	pthread_mutex_unlock(&sim->lock);
}

/* Under sim->lock: whether the window changed since sim_fill_begin. */
bool sim_fill_stale_locked(struct uhmm_sim_ctx *ctx)
{
	return ctx->sim->fill_stale[ctx->slot];
}

void sim_fill_end(struct uhmm_sim_ctx *ctx)
{
	struct uhmm_sim *sim = ctx->sim;

	pthread_mutex_lock(&sim->lock);
	sim->fill_s[ctx->slot] = sim->fill_e[ctx->slot] = 0;
	pthread_mutex_unlock(&sim->lock);
}

static const struct uhmm_interval_notifier_ops sim_notifier_ops = {
	.invalidate = sim_invalidate,
};

int sim_pt_init(struct uhmm_sim *sim)
{
	int ret;

	pthread_mutex_init(&sim->lock, NULL);
	atomic_store(&sim->gen, 1);
	atomic_store(&sim->vepoch, 1);
	/* The whole address space, as the kernel's test driver does. */
	ret = uhmm_interval_notifier_insert(&sim->notifier, sim->h, 0, UINTPTR_MAX,
					    &sim_notifier_ops);
	if (ret) {
		pthread_mutex_destroy(&sim->lock);
		return ret;
	}
	sim->notifier_in = true;
	return 0;
}

static void free_walk(void *node, int level)
{
	if (level < PT_LEVELS - 1)
		for (unsigned i = 0; i < PT_FAN; i++)
			if (((struct pt_node *)node)->e[i])
				free_walk(((struct pt_node *)node)->e[i], level + 1);
	free(node);
}

void sim_pt_fini(struct uhmm_sim *sim)
{
	if (sim->notifier_in)
		uhmm_interval_notifier_remove(&sim->notifier);
	sim->notifier_in = false;
	if (sim->root)
		free_walk(sim->root, 0);
	sim->root = NULL;
	pthread_mutex_destroy(&sim->lock);
}

/* --- contexts and slots --- */

struct uhmm_sim_ctx *sim_ctx_new(struct uhmm_sim *sim, bool external, unsigned int thread)
{
	struct uhmm_sim_ctx *ctx = calloc(1, sizeof(*ctx));

	if (!ctx)
		return NULL;
	ctx->bounce = aligned_alloc(SIM_PAGE, 2 * SIM_PAGE);
	if (!ctx->bounce) {
		free(ctx);
		return NULL;
	}
	ctx->sim = sim;
	ctx->thread = thread;
	ctx->external = external;
	if (!external) {
		ctx->slot = thread;
		return ctx;
	}
	/* Commands take one of the external slots, waiting while all are busy. */
	for (;;) {
		for (unsigned i = 0; i < SIM_EXT_SLOTS; i++) {
			int z = 0;

			if (atomic_compare_exchange_strong(&sim->ext_used[i], &z, 1)) {
				unsigned hi = atomic_load(&sim->ext_hi);

				/* Before the slot is first entered: see slots_end. */
				while (hi < i + 1 &&
				       !atomic_compare_exchange_weak(&sim->ext_hi, &hi, i + 1))
					;
				ctx->slot = UHMM_SIM_MAX_THREADS + i;
				return ctx;
			}
		}
		sched_yield();
	}
}

void sim_ctx_free(struct uhmm_sim_ctx *ctx)
{
	if (!ctx)
		return;
	if (ctx->external)
		atomic_store(&ctx->sim->ext_used[ctx->slot - UHMM_SIM_MAX_THREADS], 0);
	for (int i = 0; i < PT_SPARES; i++)
		free(ctx->spare[i]);
	free(ctx->bounce);
	free(ctx);
}

/* Announce the gen this thread's device-memory access relies on. */
static uint64_t slot_enter(struct uhmm_sim_ctx *ctx)
{
	struct uhmm_sim *sim = ctx->sim;

	for (;;) {
		uint64_t g = atomic_load(&sim->gen);

		atomic_store(&sim->slots[ctx->slot], g);
		if (atomic_load(&sim->gen) == g)
			return g;
	}
}

void sim_slot_exit(struct uhmm_sim_ctx *ctx)
{
	atomic_store(&ctx->sim->slots[ctx->slot], 0);
}

void sim_tlb_forget(struct uhmm_sim_ctx *ctx, uintptr_t va)
{
	ctx->tlb[(va >> SIM_PAGE_SHIFT) % SIM_TLB].vpn = UINT64_MAX;
}

void sim_new_epoch(struct uhmm_sim *sim)
{
	atomic_fetch_add(&sim->vepoch, 1);
}

static uint64_t epoch_bits(uint64_t epoch)
{
	return (epoch & 0xffff) << PTE_EPOCH_SHIFT;
}

int64_t sim_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* --- filling the table --- */

/*
 * Enter the VALID entries of a uhmm_range_fault result for [s, s + n pages)
 * (within one leaf). Under sim->lock. Returns whether a present entry
 * changed (then the caller bumps gen: caches may hold the old one).
 */
static bool install_locked(struct uhmm_sim_ctx *ctx, uintptr_t s, const uint64_t *pfns,
			   unsigned long n, uint64_t epoch, bool local_only, unsigned long *mapped)
{
	struct uhmm_sim *sim = ctx->sim;
	uint64_t vpn = s >> SIM_PAGE_SHIFT;
	struct pt_leaf *l = leaf_get(sim, vpn, ctx);
	bool changed = false;

	if (!l)
		return false; /* out of memory: the entries stay missing */
	for (unsigned long i = 0; i < n; i++) {
		uint64_t o = pfns[i], *pte = &l->e[(vpn + i) & (PT_FAN - 1)], nv;
		struct uhmm_page *page = uhmm_pfn_to_page(o);

		if (!(o & UHMM_PFN_VALID))
			continue;
		if (page && page->devmem == sim->dm) {
			/* The device uses the page now: recency for LRU eviction. */
			uhmm_page_mark_accessed(page);
			nv = PTE_P | PTE_L | ((uint64_t)page->pfn << PTE_PFN_SHIFT);
		}
		else if (!page && !local_only)
			nv = PTE_P;
		else
			continue;
		nv |= (o & UHMM_PFN_WRITE ? PTE_W : 0) | epoch_bits(epoch);
		if ((*pte & PTE_P) && *pte != nv)
			changed = true;
		if (!(nv & PTE_L) && *pte != nv)
			++*mapped;
		pte_set(pte, nv);
	}
	return changed;
}

/*
 * One round of the kernel's driver loop over [s, s + n pages) (within one
 * leaf): read_begin, uhmm_range_fault with @req on @req_page (or every page
 * when @req_page is -1), lock, read_retry, install. With @migrate, managed
 * pages of the window that are not ours move to the device first.
 */
struct fill {
	uintptr_t s;
	unsigned long n;
	uint64_t req;
	long req_page;
	bool migrate;
	bool duplicate; /* READ_MOSTLY read: copy system pages here (uhmm_duplicate) */
	bool local_only;
	bool install;
	unsigned long migrated, mapped, duplicated;
};

static void set_requests(const struct fill *f, uint64_t *pfns)
{
	for (unsigned long i = 0; i < f->n; i++)
		pfns[i] = f->req_page < 0 || (long)i == f->req_page ? f->req : 0;
}

/*
 * A device fault resolves the faulting page's neighbours too, but only those
 * like it: managed memory with managed memory (one allocation, as far as the
 * device can tell), unmanaged with unmanaged, never across a hole or a
 * PROT_NONE page. [*lo, *hi) is that run of the window.
 */
static void window_run(const struct fill *f, const uint64_t *pfns, unsigned long *lo,
		       unsigned long *hi)
{
	unsigned long i = (unsigned long)f->req_page;
	uint64_t kind = pfns[i] & UHMM_PFN_MANAGED;

	*lo = i;
	*hi = i + 1;
	while (*lo > 0 && !(pfns[*lo - 1] & UHMM_PFN_ERROR) &&
	       (pfns[*lo - 1] & UHMM_PFN_MANAGED) == kind)
		--*lo;
	while (*hi < f->n && !(pfns[*hi] & UHMM_PFN_ERROR) &&
	       (pfns[*hi] & UHMM_PFN_MANAGED) == kind)
		++*hi;
}

/*
 * Runs of managed pages that are on the CPU (present or holes): they may
 * migrate to us. Returns how many were tried (our own migration marks our
 * window stale even when nothing moved), *moved how many moved.
 */
static unsigned long migrate_window(struct uhmm_sim *sim, const struct fill *f, const uint64_t *pfns,
				    unsigned long *moved_total)
{
	unsigned long i = 0, j, total = 0, lo = 0, hi = f->n;
	UHMM_OPTS(uhmm_devmem_stats, st);

	if (f->req_page >= 0)
		window_run(f, pfns, &lo, &hi);
	/*
	 * A full device without an eviction policy: trying would take the
	 * pages and put them back, for nothing. With one, the migration makes
	 * room for exactly the pages it took (chunk_to_dev_retry): not here,
	 * from this snapshot, which another thread's migration of the same
	 * pages may have made stale.
	 */
	if (!sim->dm || uhmm_devmem_stats(sim->dm, &st) ||
	    (st.in_use >= st.npages && !uhmm_devmem_evict_policy(sim->dm)))
		return 0;
	i = lo;
	while (i < hi) {
		uint64_t o = pfns[i];
		bool cand = (o & UHMM_PFN_MANAGED) &&
			    !(o & (UHMM_PFN_ERROR | UHMM_PFN_DEVICE_PRIVATE | UHMM_PFN_DEVICE_REMOTE));

		if (!cand) {
			i++;
			continue;
		}
		for (j = i + 1; j < hi; j++) {
			uint64_t p = pfns[j];

			if (!(p & UHMM_PFN_MANAGED) ||
			    (p & (UHMM_PFN_ERROR | UHMM_PFN_DEVICE_PRIVATE | UHMM_PFN_DEVICE_REMOTE)))
				break;
		}
		unsigned long moved = 0;

		sim_migrate_to_dev(sim, f->s + (i << SIM_PAGE_SHIFT), f->s + (j << SIM_PAGE_SHIFT),
				   false, &moved);
		*moved_total += moved;
		total += j - i;
		i = j;
	}
	return total;
}

/*
 * Read duplication: runs of the window's system pages that hold data get a
 * read-only copy here (uhmm_duplicate); the CPU keeps its pages. Holes and
 * the zero page are mapped as they are. Returns the pages copied.
 */
static unsigned long duplicate_window(struct uhmm_sim *sim, const struct fill *f,
				      const uint64_t *pfns)
{
	unsigned long i, j, total = 0, lo = 0, hi = f->n;

	if (f->req_page >= 0)
		window_run(f, pfns, &lo, &hi);
	for (i = lo; i < hi; i = j) {
		int ret;

		for (j = i; j < hi && (pfns[j] & UHMM_PFN_MANAGED) && (pfns[j] & UHMM_PFN_VALID) &&
			    !(pfns[j] & (UHMM_PFN_ERROR | UHMM_PFN_ZERO | UHMM_PFN_DEVICE_PRIVATE |
					 UHMM_PFN_DEVICE_REMOTE));
		     j++)
			;
		if (j == i) {
			j++;
			continue;
		}
		ret = uhmm_duplicate(sim->dm, (void *)(f->s + (i << SIM_PAGE_SHIFT)),
				     (j - i) << SIM_PAGE_SHIFT);
		if (ret > 0)
			total += (unsigned long)ret;
	}
	return total;
}

static int fill_round(struct uhmm_sim_ctx *ctx, struct fill *f)
{
	struct uhmm_sim *sim = ctx->sim;
	uint64_t pfns[SIM_CHUNK];
	int64_t deadline = sim_now_ns() + SIM_TIMEOUT_NS;
	struct uhmm_range range = {
		.notifier = &sim->notifier,
		.start = f->s,
		.end = f->s + (f->n << SIM_PAGE_SHIFT),
		.pfns = pfns,
		.pfn_flags_mask = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE,
		.dev_private_owner = sim,
	};
	bool fresh = true, migrated = false, duplicated = false;
	int ret;

	for (;;) {
		uint64_t epoch;
		bool changed;

		if (!fresh) {
			atomic_fetch_add_explicit(&sim->fault_retries, 1, memory_order_relaxed);
			if (sim_now_ns() > deadline) {
				ret = -EBUSY;
				break;
			}
		}
		fresh = false;
		epoch = atomic_load(&sim->vepoch);
		sim_fill_begin(ctx, range.start, range.end);
		range.notifier_seq = uhmm_interval_read_begin(&sim->notifier);
		set_requests(f, pfns);
		ret = uhmm_range_fault(&range);
		if (ret == -EBUSY)
			continue;
		if (ret)
			break;
		if (f->migrate && !migrated) {
			/* Once: pages that could not move (device full, read-only) are mapped. */
			migrated = true;
			if (migrate_window(sim, f, pfns, &f->migrated)) {
				/* What is the window now? Look again, from the start. */
				fresh = true;
				continue;
			}
		}
		if (f->duplicate && !duplicated) {
			unsigned long got;

			/* Once: pages that could not be copied (device full) are mapped. */
			duplicated = true;
			got = duplicate_window(sim, f, pfns);
			if (got) {
				f->duplicated += got;
				fresh = true;
				continue;
			}
		}
		if (!f->install)
			break;
		ret = ctx_topup(ctx);
		if (ret)
			break;
		pthread_mutex_lock(&sim->lock);
		if (sim_fill_stale_locked(ctx) ||
		    uhmm_interval_read_retry(&sim->notifier, range.notifier_seq)) {
			pthread_mutex_unlock(&sim->lock);
			continue;
		}
		if (f->req_page >= 0) {
			/* Only the faulting page's run (see window_run). */
			unsigned long lo, hi;

			window_run(f, pfns, &lo, &hi);
			for (unsigned long i = 0; i < f->n; i++)
				if (i < lo || i >= hi)
					pfns[i] = 0;
		}
		changed = install_locked(ctx, f->s, pfns, f->n, epoch, f->local_only, &f->mapped);
		if (changed)
			atomic_fetch_add(&sim->gen, 1);
		pthread_mutex_unlock(&sim->lock);
		break;
	}
	sim_fill_end(ctx);
	return ret;
}

/* The kernel driver's dmirror_fault: fault [s, e) in and map it, 64 pages a round. */
int sim_map_range(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e, bool write)
{
	while (s < e) {
		uintptr_t ce = (s | (64 * SIM_PAGE - 1)) + 1;
		struct fill f = {
			.s = s,
			.n = ((ce < e ? ce : e) - s) >> SIM_PAGE_SHIFT,
			.req = UHMM_PFN_REQ_FAULT | (write ? UHMM_PFN_REQ_WRITE : 0),
			.req_page = -1,
			.install = true,
		};
		int ret = fill_round(ctx, &f);

		if (ret)
			return ret;
		s += f.n << SIM_PAGE_SHIFT;
	}
	return 0;
}

/* Snapshot [s, e) and enter what is present (only our device pages with @local_only). */
int sim_install_snapshot(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e, bool local_only)
{
	while (s < e) {
		uintptr_t ce = (s | (SIM_CHUNK * SIM_PAGE - 1)) + 1;
		struct fill f = {
			.s = s,
			.n = ((ce < e ? ce : e) - s) >> SIM_PAGE_SHIFT,
			.req_page = -1,
			.local_only = local_only,
			.install = true,
		};
		int ret = fill_round(ctx, &f);

		if (ret)
			return ret;
		s += f.n << SIM_PAGE_SHIFT;
	}
	return 0;
}

/*
 * The pages a device fault at @ws (window-aligned) resolves: sim->window,
 * doubled at each fault that lands where the last of its stream's window
 * ended, up to SIM_CHUNK (2 MiB), never past a chunk boundary. A kernel that
 * sweeps its data then faults once per 2 MiB, not once per 64 KiB: each
 * migration costs two TLB shootdowns (the move out, the staging's discard)
 * whatever its size. Random faults keep the first window.
 */
static unsigned long stream_window(struct uhmm_sim *sim, uintptr_t ws)
{
	unsigned long room = SIM_CHUNK - ((ws >> SIM_PAGE_SHIFT) & (SIM_CHUNK - 1)), w;
	unsigned int i;

	for (i = 0; i < SIM_STREAMS; i++) {
		uintptr_t next = ws;

		if (atomic_load(&sim->fstream_next[i]) != ws)
			continue;
		w = atomic_load(&sim->fstream_window[i]) * 2UL;
		if (w > SIM_CHUNK)
			w = SIM_CHUNK;
		/* The stream keeps its window across a chunk boundary; this fault stops there. */
		if (atomic_compare_exchange_strong(&sim->fstream_next[i], &next,
						   ws + ((w < room ? w : room) << SIM_PAGE_SHIFT))) {
			atomic_store(&sim->fstream_window[i], (unsigned int)w);
			return w < room ? w : room;
		}
	}
	i = atomic_fetch_add(&sim->fstream_victim, 1) % SIM_STREAMS;
	w = sim->window < room ? sim->window : room;
	atomic_store(&sim->fstream_window[i], sim->window);
	atomic_store(&sim->fstream_next[i], ws + (w << SIM_PAGE_SHIFT));
	return w;
}

/* A device kernel met a missing or read-only translation at @va. */
static int device_fault(struct uhmm_sim_ctx *ctx, uintptr_t va, bool write)
{
	struct uhmm_sim *sim = ctx->sim;
	uintptr_t page = va & SIM_PAGE_MASK;
	uintptr_t ws = page & ~((uintptr_t)sim->window * SIM_PAGE - 1);
	struct fill f = {
		.s = ws,
		.n = stream_window(sim, ws),
		.req = UHMM_PFN_REQ_FAULT | (write ? UHMM_PFN_REQ_WRITE : 0),
		.req_page = (long)((page - ws) >> SIM_PAGE_SHIFT),
		.migrate = sim->policy == UHMM_SIM_POLICY_MIGRATE,
		.install = true,
	};
	struct uhmm_advice_info adv;
	uintptr_t rs, re;
	int ret;

	/*
	 * The window stays inside the faulting page's own allocation: a
	 * neighbour lying right beside it is another object, which its owner
	 * may be discarding or moving this very moment.
	 */
	if (!uhmm_range_of(sim->h, (void *)page, &rs, &re)) {
		uintptr_t we = ws + f.n * SIM_PAGE;

		f.s = rs > ws ? rs : ws;
		f.n = ((re < we ? re : we) - f.s) >> SIM_PAGE_SHIFT;
		f.req_page = (long)((page - f.s) >> SIM_PAGE_SHIFT);
	}
	/*
	 * Advice (uhmm_advise): preferred elsewhere, accessed-by this device,
	 * or a read of read-mostly memory: map the system page where it is.
	 */
	if (f.migrate && !uhmm_advice_get(sim->h, (void *)page, sim->dm, &adv) &&
	    ((adv.preferred == UHMM_PREFER_CPU) ||
	     (adv.preferred == UHMM_PREFER_DEVICE && adv.preferred_device != sim->dm) ||
	     adv.accessed_by || (adv.read_mostly && !write))) {
		f.migrate = false;
		/* A read of read-mostly memory: a copy of its own, as CUDA's driver does. */
		f.duplicate = adv.read_mostly && !write && sim->dm;
	}
	ret = fill_round(ctx, &f);

	if (ret)
		return ret;
	atomic_fetch_add_explicit(&sim->device_faults, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&sim->fault_migrated, f.migrated, memory_order_relaxed);
	atomic_fetch_add_explicit(&sim->fault_mapped, f.mapped, memory_order_relaxed);
	atomic_fetch_add_explicit(&sim->fault_duplicated, f.duplicated, memory_order_relaxed);
	return 0;
}

/*
 * Check the translations of the 2 MiB around @va against the CPU side again
 * (a new launch or command: mprotect raised no event meanwhile), keeping what
 * is still true, stamped with the current epoch, and dropping the rest.
 */
int sim_revalidate(struct uhmm_sim_ctx *ctx, uintptr_t va)
{
	struct uhmm_sim *sim = ctx->sim;
	uintptr_t ws = va & ~(SIM_REVAL * SIM_PAGE - 1);
	uint64_t pfns[SIM_REVAL];
	int64_t deadline = sim_now_ns() + SIM_TIMEOUT_NS;
	struct uhmm_range range = {
		.notifier = &sim->notifier,
		.start = ws,
		.end = ws + SIM_REVAL * SIM_PAGE,
		.pfns = pfns,
		.dev_private_owner = sim,
	};

	for (;;) {
		uint64_t epoch = atomic_load(&sim->vepoch), vpn = ws >> SIM_PAGE_SHIFT;
		struct pt_leaf *l;
		int ret;

		if (sim_now_ns() > deadline) {
			sim_fill_end(ctx);
			return -EBUSY;
		}
		sim_fill_begin(ctx, range.start, range.end);
		range.notifier_seq = uhmm_interval_read_begin(&sim->notifier);
		memset(pfns, 0, sizeof(pfns));
		ret = uhmm_range_fault(&range);
		if (ret == -EBUSY)
			continue;
		if (ret) {
			sim_fill_end(ctx);
			return ret;
		}
		pthread_mutex_lock(&sim->lock);
		if (sim_fill_stale_locked(ctx) ||
		    uhmm_interval_read_retry(&sim->notifier, range.notifier_seq)) {
			pthread_mutex_unlock(&sim->lock);
			continue;
		}
		l = leaf_get(sim, vpn, NULL);
		for (unsigned long i = 0; l && i < SIM_REVAL; i++) {
			uint64_t *pte = &l->e[i], o = pfns[i];
			struct uhmm_page *pg = uhmm_pfn_to_page(o);
			bool keep;

			if (!(*pte & PTE_P))
				continue;
			if (*pte & PTE_L)
				keep = pg && pg->devmem == sim->dm && pg->pfn == pte_pfn(*pte);
			else
				keep = (o & UHMM_PFN_VALID) && !pg;
			if (keep)
				pte_set(pte, (*pte & (PTE_P | PTE_L | PTE_PFN_MASK)) |
						     (o & UHMM_PFN_WRITE ? PTE_W : 0) |
						     epoch_bits(epoch));
			else
				pte_set(pte, 0);
		}
		atomic_fetch_add(&sim->gen, 1);
		pthread_mutex_unlock(&sim->lock);
		sim_fill_end(ctx);
		atomic_fetch_add_explicit(&sim->revalidations, 1, memory_order_relaxed);
		return 0;
	}
}

/*
 * After fork a child references the device pages it inherited (thread mode):
 * one referenced by more than its state word must not be written in place.
 */
static bool page_shared(struct uhmm_sim *sim, uint64_t pte)
{
	struct uhmm_page *page = uhmm_devmem_page(sim->dm, pte_pfn(pte));

	return page && __atomic_load_n(&page->refcount, __ATOMIC_ACQUIRE) > 1;
}

/*
 * Enter exclusive entries for the pages of [s, s + n pages) that have a host
 * address in @pages (uhmm_make_exclusive, which holds them locked), unless
 * the window changed since sim_fill_begin/@seq: an event's invalidation may
 * have come between the call and now, and found no entry to drop (its page
 * walk then waits for the locks). Returns false then, with nothing entered.
 * A table that cannot grow, or an address beyond the frame field, leaves an
 * entry missing: a device access then faults, which revokes.
 */
bool sim_pt_set_exclusive(struct uhmm_sim_ctx *ctx, uintptr_t s, unsigned long n,
			  void *const *pages, uint64_t seq)
{
	struct uhmm_sim *sim = ctx->sim;
	uint64_t epoch = atomic_load(&sim->vepoch);

	for (unsigned long i = 0; i < n;) {
		uint64_t vpn = (s >> SIM_PAGE_SHIFT) + i;
		unsigned long k = PT_FAN - (unsigned long)(vpn & (PT_FAN - 1));
		struct pt_leaf *l;

		if (k > n - i)
			k = n - i;
		ctx_topup(ctx);
		pthread_mutex_lock(&sim->lock);
		if (sim_fill_stale_locked(ctx) || uhmm_interval_read_retry(&sim->notifier, seq)) {
			/* Take back what went in: no device thread may still use it. */
			uint64_t gen = drop_and_gen(sim, s, s + i * SIM_PAGE, &(struct drop_count){ 0 });

			pthread_mutex_unlock(&sim->lock);
			wait_slots(sim, gen);
			return false;
		}
		l = leaf_get(sim, vpn, ctx);
		for (unsigned long j = 0; l && j < k; j++) {
			uintptr_t a = (uintptr_t)pages[i + j];

			if (a && !(a & ~PTE_PFN_MASK))
				pte_set(&l->e[(vpn + j) & (PT_FAN - 1)],
					PTE_P | PTE_W | PTE_X | a | epoch_bits(epoch));
		}
		atomic_fetch_add(&sim->gen, 1); /* a cached entry may be the old one */
		pthread_mutex_unlock(&sim->lock);
		i += k;
	}
	return true;
}

/* Whether an exclusive entry is left in [s, e): not yet revoked. */
bool sim_pt_exclusive_in(struct uhmm_sim *sim, uintptr_t s, uintptr_t e)
{
	bool any = false;

	pthread_mutex_lock(&sim->lock);
	for (uintptr_t a = s; a < e && !any; a += SIM_PAGE) {
		uint64_t vpn = a >> SIM_PAGE_SHIFT;
		struct pt_leaf *l = leaf_get(sim, vpn, NULL);

		any = l && (l->e[vpn & (PT_FAN - 1)] & (PTE_P | PTE_X)) == (PTE_P | PTE_X);
	}
	pthread_mutex_unlock(&sim->lock);
	return any;
}

/* The entry of @va: from the device TLB while its gen is @g, else from the table. */
static uint64_t tlb_pte(struct uhmm_sim_ctx *ctx, uintptr_t va, uint64_t g)
{
	uint64_t vpn = va >> SIM_PAGE_SHIFT;
	struct sim_tlb *t = &ctx->tlb[vpn % SIM_TLB];

	/* Only present entries are cached: a new entry bumps no gen. */
	if (t->vpn == vpn && t->gen == g && (t->pte & PTE_P))
		return t->pte;
	t->pte = sim_pt_lookup(ctx->sim, vpn, &t->gen);
	t->vpn = vpn;
	return t->pte;
}

/* Where the device reaches @va through its local (pool) or exclusive entry @pte. */
static char *pte_mem(struct uhmm_sim *sim, uint64_t pte, uintptr_t va)
{
	char *page = (pte & PTE_X) ? (char *)(uintptr_t)(pte & PTE_PFN_MASK) :
				     sim_pool_page(sim, pte_pfn(pte));

	return page + (va & (SIM_PAGE - 1));
}

/*
 * Translate @va under the slot a sim_translate() that returned 0 holds: only
 * an entry that is present, current and in this device's memory (writable
 * and not shared, for @write) counts. An invalidation begun meanwhile waits
 * for the slot, so the page stays while it is held. 0 with *mem, or -ENOENT:
 * release the slot and take the general way.
 */
int sim_translate_held(struct uhmm_sim_ctx *ctx, uintptr_t va, bool write, char **mem)
{
	struct uhmm_sim *sim = ctx->sim;
	uint64_t epoch = atomic_load(&sim->vepoch) & 0xffff;
	uint64_t pte = tlb_pte(ctx, va, atomic_load(&sim->slots[ctx->slot]));

	if (!(pte & PTE_P) || !(pte & (PTE_L | PTE_X)) || pte_epoch(pte) != epoch ||
	    (write && (!(pte & PTE_W) || ((pte & PTE_L) && page_shared(sim, pte)))))
		return -ENOENT;
	*mem = pte_mem(sim, pte, va);
	return 0;
}

/*
 * Translate @va for an access. Returns 0 with *mem in the device's memory and
 * the slot held (finish touching it, without touching anything else that may
 * fault, then sim_slot_exit), 1 with *mem == va for a system page (nothing
 * held), or -errno from the device fault. Without @fault, a missing (or
 * read-only, for @write) translation gives -ENOENT instead of a device fault.
 */
int sim_translate(struct uhmm_sim_ctx *ctx, uintptr_t va, bool write, bool fault, char **mem)
{
	struct uhmm_sim *sim = ctx->sim;
	int64_t deadline = 0;

	for (;;) {
		uint64_t epoch = atomic_load(&sim->vepoch) & 0xffff;
		uint64_t pte = tlb_pte(ctx, va, slot_enter(ctx));
		bool cow = false;
		int ret;

		if ((pte & PTE_P) && pte_epoch(pte) == epoch && (!write || (pte & PTE_W))) {
			if (pte & PTE_X) {
				/* Held like a local page: revocation waits for the slot. */
				*mem = pte_mem(sim, pte, va);
				return 0;
			}
			if (!(pte & PTE_L)) {
				sim_slot_exit(ctx);
				*mem = (char *)va;
				return 1;
			}
			if (!write || !page_shared(sim, pte)) {
				*mem = pte_mem(sim, pte, va);
				return 0;
			}
			cow = true;
		}
		sim_slot_exit(ctx);
		if (!deadline)
			deadline = sim_now_ns() + SIM_TIMEOUT_NS;
		else if (sim_now_ns() > deadline)
			return -EBUSY; /* translations keep vanishing under us */
		if (cow)
			ret = sim_cow(sim, va);
		else if ((pte & PTE_P) && pte_epoch(pte) != epoch)
			ret = sim_revalidate(ctx, va);
		else if (!fault)
			return -ENOENT;
		else
			ret = device_fault(ctx, va, write);
		if (ret)
			return ret;
	}
}
