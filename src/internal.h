/* SPDX-License-Identifier: MIT */
/*
 * internal.h - shared between the core's files; never installed.
 *
 * Locking, in one place:
 * - h->lock (a mutex) serialises changes to the managed ranges, the device
 *   memory table and the retire list. Never taken on the fault path.
 * - Readers of the range table (the fault path, migrations, events) enter a
 *   read section (rd_enter/rd_exit: one atomic counter). Writers publish a new
 *   table and retire the old objects; retired objects are freed once the
 *   counter is seen at zero. Nobody ever waits for readers, so a reader may
 *   block (e.g. in madvise) without deadlock.
 * - Each page has a state word; its LOCKED bit is taken with compare-and-swap.
 *   Blocking lock waits happen only while holding no other page lock; multi-
 *   page lockers (migrations, fault-around) only try-lock. A page-lock holder
 *   never waits for the fault service thread (it causes no userfaultfd event
 *   and touches no managed memory), so the service thread may wait for a page
 *   lock.
 */
#ifndef UHMM_INTERNAL_H
#define UHMM_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "uhmm.h"
#include "uhmm_driver.h"
#include "uffd.h"
#include "trace.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE 4096UL
#define PAGE_MASK (~(PAGE_SIZE - 1))

#define CHUNK_PAGES UHMM_MIGRATE_MAX_PAGES
#define CHUNK_SIZE (CHUNK_PAGES * PAGE_SIZE)
#define POOL_SPARE 64	  /* chunks beside the kept ones, for migrations under way */
#define POOL_KEEP_MAX 1024 /* chunks staging may keep at most: 2 GiB (keep_mib) */
#define POOL_WORDS ((POOL_KEEP_MAX + POOL_SPARE) / 64)
#define ZERO_AROUND 512 /* pages: the largest window of zero fills (fault.c) */
#define POOL_KEEP_MS 1000 /* kept that long unused, freed */
#define MAX_DEVMEM 1024 /* slots 1..MAX_DEVMEM-1; 0 means none */
#define MAX_OWNERS 256
#define MAX_LEAVING 16
#define MAX_CHILDREN 250 /* forked children served per handle; beyond, pages come home at fork */

/*
 * The page state word. The low 32 bits hold the kind and the lock bits, so a
 * waiter can futex-wait on them; the high bits name the device page.
 */
#define W_KIND_MASK 0x3ULL
#define W_CPU 0ULL    /* on the CPU: present, or a hole (reads zeros) */
#define W_DEVICE 1ULL /* in device memory: slot and pfn below */
#define W_POISON 2ULL /* lost with a failed device: SIGBUS on touch */
/*
 * On the CPU, present and write-protected (uffd-wp), with a read-only copy
 * in device memory (slot and pfn below): read duplication (uhmm_duplicate).
 * A write by anyone drops the copy first (uhmm__dup_drop).
 */
#define W_DUP 3ULL
#define W_LOCKED 0x4ULL
#define W_WAITERS 0x8ULL
#define W_SLOT_SHIFT 16
#define W_SLOT_MASK 0xffffULL
#define W_PFN_SHIFT 32

/*
 * Thrashing control (policy.c), bits 4-15, kept across state changes: how
 * many bounces in a row, pinned on the CPU, and a time in 16 ms units (when
 * the page last went to a device, or when it was pinned).
 */
#define W_TCOUNT_SHIFT 4
#define W_TCOUNT_MASK (0x7ULL << W_TCOUNT_SHIFT)
#define W_PINNED 0x80ULL
#define W_TTIME_SHIFT 8
#define W_TTIME_MASK (0xffULL << W_TTIME_SHIFT)
#define W_THRASH_MASK (W_TCOUNT_MASK | W_PINNED | W_TTIME_MASK)

static inline uint64_t w_kind(uint64_t w)
{
	return w & W_KIND_MASK;
}

static inline unsigned w_slot(uint64_t w)
{
	return (unsigned)((w >> W_SLOT_SHIFT) & W_SLOT_MASK);
}

static inline unsigned long w_pfn(uint64_t w)
{
	return (unsigned long)(w >> W_PFN_SHIFT);
}

static inline uint64_t w_device(unsigned slot, unsigned long pfn)
{
	return W_DEVICE | ((uint64_t)slot << W_SLOT_SHIFT) | ((uint64_t)pfn << W_PFN_SHIFT);
}

/* Whether the word names a device page: its data (W_DEVICE) or a read-only copy (W_DUP). */
static inline bool w_has_page(uint64_t w)
{
	return w_kind(w) == W_DEVICE || w_kind(w) == W_DUP;
}

/* Counters of one managed range (uhmm_range_stats). */
enum { CTR_FAULTS, CTR_TO, CTR_FROM, CTR_PREFETCHED, CTR_EVICTIONS, CTR_THRASH, NCTR };

/* One reservation of state words, shared by the ranges split from it. */
struct state_tbl {
	_Atomic uint64_t *words;
	size_t maplen;
	int refs; /* ranges pointing into it; under h->lock */
	atomic_ulong ctr[NCTR];
};

/* A managed range [start, end). Immutable once published, except the words. */
struct range {
	uintptr_t start;
	uintptr_t end;
	_Atomic uint64_t *words; /* the word of start */
	struct state_tbl *tbl;
	bool alloced; /* made by uhmm_alloc */
};

/* The published, sorted table of ranges. */
struct rtab {
	size_t n;
	struct range *r[];
};

struct retired {
	struct retired *next;
	void (*fn)(struct uhmm *h, void *p);
	void *p;
};

/*
 * A pool of 2 MiB chunks taken with an atomic bitmap (async-signal-safe).
 * Staging keeps chunks whose pages a migration to a device moved in (kept,
 * at most keep_max): pages home are copied into them and moved into place,
 * which costs less than the allocation UFFDIO_COPY makes. A kept chunk
 * holds pages at [next, CHUNK_PAGES) and nothing below; the service thread
 * frees those kept for POOL_KEEP_MS unused.
 */
struct pool {
	char *base;
	unsigned int nchunks;  /* a multiple of 64: keep_max + POOL_SPARE, rounded up */
	unsigned int keep_max; /* chunks that may be kept at once */
	atomic_uint nkept;     /* bits set in kept[]; reserved before they are set */
	_Atomic uint64_t used[POOL_WORDS]; /* bit i: chunk i taken */
	_Atomic uint64_t kept[POOL_WORDS]; /* bit i: chunk i holds pages (changed by its taker) */
	atomic_uint next[POOL_WORDS * 64];
	_Atomic uint64_t kept_ms[POOL_WORDS * 64];
};

struct owner_acct {
	void *owner;
	atomic_long pages;
};

/* A page the built-in eviction policies may pick, and its key when looked at (policy.c). */
struct victim {
	struct uhmm_page *page;
	uint64_t key;
};

struct uhmm_devmem {
	struct uhmm *h;
	unsigned slot;
	enum uhmm_memory_type type;
	unsigned long npages;
	void *owner;
	const struct uhmm_devmem_ops *ops;
	void *driver_data;
	unsigned int flags; /* UHMM_DEVMEM_* */
	char name[32];
	struct uhmm_page *pages;
	size_t pages_len;
	_Atomic uint64_t *used; /* a bit per page: allocated */
	size_t used_len;
	_Atomic uint64_t low; /* (frees << 32) | the lowest bitmap word with a free page, or below */
	atomic_long in_use;
	atomic_long resident;
	atomic_long dups; /* pages holding read-only copies (W_DUP) */
	atomic_long page_frees;
	atomic_int dying;
	struct owner_acct *acct;
	_Atomic(const struct uhmm_evict_policy *) evict;
	/* The built-in policies' next victims, oldest first: [vnext, nvictims) of victims. */
	pthread_mutex_t vlock;
	struct victim *victims;
	unsigned long nvictims, vnext, vcap;
	bool victims_by_use;
	_Atomic(const struct uhmm_prefetch_policy *) prefetch;
	atomic_long st_faults, st_to, st_from, st_prefetched, st_evictions, st_thrash;
	atomic_long st_duplicated, st_dup_drops;
};

#define NSTREAMS 16
#define NWORKERS 2
#define MAX_PEV 64
#define WQ_SIZE 256
#define MAX_ABSORB 8

struct stream {
	_Atomic uintptr_t next; /* where the stream's next fault would land */
	atomic_ulong window;    /* its window, before clipping */
};

#define ZAP_VEC 512 /* pages of a discard looked at in one pagemap read */

struct uhmm {
	int uffd;
	int uffd_stg; /* a second userfaultfd, without events, for the staging pool */
	uint64_t features;   /* UHMM_FEAT_* in force */
	int fault_mode;      /* UHMM_FAULT_THREAD or UHMM_FAULT_SIGNAL */
	unsigned long fault_window; /* the largest uhmm_fault_window(), in pages */
	unsigned nomem_wait_ms; /* how long a fault waits for memory to bring a page home */
	uint64_t uffd_feats; /* the kernel features negotiated */
	uint64_t uffd_ioctls;
	atomic_bool wp; /* managed ranges are registered for write-protection too (read duplication) */
	/* Exclusive access (exclusive.c): its region and host memory, made on first use. */
	_Atomic(struct uhmm_devmem *) excl_dm;
	char *excl_mem;
	pthread_mutex_t excl_lock;

	pthread_mutex_t lock;
	_Atomic(struct rtab *) rtab;
	atomic_long readers;
	struct retired *retired;

	_Atomic(struct uhmm_devmem *) dm[MAX_DEVMEM];

	/* Interval notifiers (mirror.c). */
	_Atomic(struct ntab *) ntab;
	atomic_int inv_active;
	_Atomic uint64_t inv_seq;
	struct owner_acct owners[MAX_OWNERS];

	/* Intervals being unmanaged: migrations to a device must not take them. */
	atomic_int nleaving;
	uintptr_t leaving[MAX_LEAVING][2];

	struct pool staging; /* registered: UFFDIO_MOVE destinations */
	struct pool bounce;  /* unregistered: data on its way home */
	char *svc_bounce;    /* the service thread's own bounce chunk */
	unsigned char zap_vec[ZAP_VEC]; /* the service thread's look at pages a discard zaps */
	char *zero_page;

	/* Fault workers (thread mode): faults on device pages, served off the service thread. */
	pthread_t workers[NWORKERS];
	int nworkers;
	pthread_mutex_t wq_lock;
	pthread_cond_t wq_cond;
	struct { uintptr_t addr; bool write; } wq[WQ_SIZE];
	unsigned wq_head, wq_tail;
	bool wq_stop;

	/* The fault service thread. */
	pthread_t svc;
	int svc_started;
	int wake_fd; /* eventfd: stop, or a sync request */
	atomic_int stop;
	pthread_mutex_t sync_lock;
	pthread_cond_t sync_cond;
	_Atomic uint64_t sync_req; /* raised under sync_lock, read by the service thread without */
	uint64_t sync_done;	   /* written by the service thread under sync_lock */

	struct uhmm *next_open; /* the list of open handles, for fork */
	/* Fork (fork.c): snapshots waiting for their fork event, the children served. */
	atomic_int forking;      /* migrations to devices wait while set */
	atomic_int out_inflight; /* migrations to devices between setup and finalize */
	pthread_mutex_t fork_lock;
	struct snap *snaps;
	struct child *children;  /* the service thread's */
	atomic_int nchildren;
	atomic_int fork_pending; /* a fork is under way: the service thread must not malloc */
	atomic_int fork_quiet;   /* the service thread has seen fork_pending */
	_Atomic(struct uhmm_devmem *) child_flush;

	uintptr_t absorb[MAX_ABSORB][2]; /* late unmap events to ignore (fault.c, svc only) */
	atomic_int remaps_pending; /* remap events read and not yet handled */
	atomic_int events_pending; /* unmap/remove/remap events read and not yet handled */
	/*
	 * Their ranges, for uhmm__events_settle() of one range (fault.c). A slot
	 * may be freed and reused while a settling thread reads it, so its
	 * fields are atomics too (relaxed; @used orders them).
	 */
	struct {
		atomic_int used;
		_Atomic uintptr_t r[2][2];
		atomic_int n;
	} pev[MAX_PEV];
	atomic_int pev_overflow; /* events in hand without a slot: they hold up everyone */
	atomic_uint read_gen;      /* odd while the service thread reads the uffd, until its events are in slots */
	atomic_int installing;     /* threads putting pages home: the service thread reads no event */

	/* Recency for eviction, and the thrashing control (policy.c). */
	_Atomic uint64_t tick;
	struct {
		atomic_uint window16, threshold, pin16; /* 16 ms units; threshold 0: off */
	} thrash;
	/* The async prefetch worker, started on first use; read without a lock. */
	_Atomic(struct prefetcher *) pf;
	pthread_mutex_t advice_lock; /* writers of the table */
	/* Advice records, latest last: published whole, read lock-free (rd_enter). */
	_Atomic(struct advtab *) advtab;

	/* Fault streams (fault.c): device faults (uhmm_fault_window), zero fills. */
	struct stream streams[NSTREAMS], zstreams[NSTREAMS];
	atomic_uint stream_victim, zstream_victim;
	atomic_int refs; /* the user's + one per device memory region */
	atomic_int closed;
	atomic_int in_child; /* an inherited handle in a forked child: inert */

	struct {
		atomic_ulong faults, faults_device, pages_home, pages_out, zero_fills, poisoned,
			events, dup_writes, pages_recycled, faults_worker;
	} st;
};

/*
 * Whether a public entry point may use @h: -EINVAL for NULL, -ESHUTDOWN once
 * closed, and in a forked child (whose inherited handle would act on the
 * parent's userfaultfd: pthread_atfork marks it closed).
 */
static inline int uhmm__usable(const struct uhmm *h)
{
	if (!h)
		return -EINVAL;
	return atomic_load(&h->closed) ? -ESHUTDOWN : 0;
}

/* Whether the service thread is reading the userfaultfd now (read_gen odd). */
static inline bool uhmm__svc_reading(struct uhmm *h)
{
	return atomic_load(&h->read_gen) & 1;
}

/* space.c */
/* A read section (see the top of this file); inline: a fault enters several. */
static inline void uhmm__rd_enter(struct uhmm *h)
{
	atomic_fetch_add(&h->readers, 1);
}

static inline void uhmm__rd_exit(struct uhmm *h)
{
	atomic_fetch_sub(&h->readers, 1);
}
struct range *uhmm__lookup(struct uhmm *h, uintptr_t addr);

/* The range of @addr: @r again while it covers @addr (walks stay in one mostly). In a read section. */
static inline struct range *uhmm__lookup_near(struct uhmm *h, struct range *r, uintptr_t addr)
{
	return r && addr >= r->start && addr < r->end ? r : uhmm__lookup(h, addr);
}
_Atomic uint64_t *uhmm__word(struct range *r, uintptr_t addr);
void uhmm__retire(struct uhmm *h, void (*fn)(struct uhmm *, void *), void *p);
void uhmm__reclaim(struct uhmm *h);
int uhmm__check_range(const void *addr, size_t len);
int uhmm__remove_ranges(struct uhmm *h, uintptr_t start, uintptr_t end);
int uhmm__add_range(struct uhmm *h, uintptr_t start, uintptr_t end, bool alloced,
		    _Atomic uint64_t *copy_from);
void uhmm__range_count(struct uhmm *h, uintptr_t addr, int ctr, unsigned long n);
void uhmm__range_ctr_copy(struct uhmm *h, uintptr_t from, uintptr_t to);
static inline void uhmm__ctr_add(struct range *r, int ctr, unsigned long n)
{
	atomic_fetch_add_explicit(&r->tbl->ctr[ctr], n, memory_order_relaxed);
}
bool uhmm__leaving(struct uhmm *h, uintptr_t start, uintptr_t end);
void uhmm__put(struct uhmm *h);
int uhmm__opts_check(const void *opts, size_t given, size_t known);

/*
 * The service thread never blocks: it flags itself, and the fill helpers
 * return -EAGAIN there (setting svc_eagain) where other threads would wait for
 * an event to be read. A page unlocked with WAITERS set kicks the service
 * threads through kick_fd (one eventfd for the process).
 */
extern __thread int uhmm__in_svc __attribute__((tls_model("initial-exec")));
extern __thread int uhmm__svc_eagain __attribute__((tls_model("initial-exec")));
/*
 * Set while a signal-mode toucher serves its fault: like the service thread
 * it gets -EAGAIN instead of waiting inside a fill ioctl, because the event
 * that blocks the ioctl (an mremap or munmap under way) may change what the
 * fault should do; it drops its lock, lets the event be handled, and starts over.
 */
extern __thread int uhmm__nowait __attribute__((tls_model("initial-exec")));
/*
 * Why the last uhmm_migrate_pages() of this thread left pages on the device:
 * -EAGAIN/-ENOMEM (try again later), -ENOENT (the mapping is gone: an mremap
 * or munmap event will carry or free the page), 0 (no install failed).
 */
extern __thread int uhmm__fill_err __attribute__((tls_model("initial-exec")));
/* Set by a zero fill or copy that found the page already present (EEXIST). */
extern __thread int uhmm__fill_exists __attribute__((tls_model("initial-exec")));
extern int uhmm__kick_fd;
void uhmm__kick_init(void);

/* Page locks. */
bool uhmm__trylock(_Atomic uint64_t *w, uint64_t *old);
uint64_t uhmm__lock(_Atomic uint64_t *w);
void uhmm__unlock(_Atomic uint64_t *w, uint64_t nw);

/* probe.c */
int uhmm__probe_open(struct uhmm *h, unsigned int flags, uint64_t mask, int mode);
int uhmm__uffd_register(struct uhmm *h, uintptr_t start, size_t len);
int uhmm__uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len, bool wake);
int uhmm__uffd_copy_n(int uffd, uintptr_t dst, const void *src, size_t len, bool wake,
		      size_t *donep);
int uhmm__uffd_copy_wp_n(int uffd, uintptr_t dst, const void *src, size_t len, size_t *donep);
int uhmm__uffd_zeropage(int uffd, uintptr_t dst, size_t len, bool wake);
int uhmm__uffd_unprotect(int uffd, uintptr_t dst, size_t len, bool wake);
int uhmm__uffd_poison(int uffd, uintptr_t dst, size_t len, bool wake);
long uhmm__uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len);
void uhmm__uffd_wake(int uffd, uintptr_t start, size_t len);
int uhmm__pages_with_data(uintptr_t addr, size_t n, unsigned char *vec);

/* pools (space.c) */
int uhmm__pool_init(struct pool *p, unsigned int keep_max);
void uhmm__pool_fini(struct pool *p);
char *uhmm__pool_get(struct pool *p);
void uhmm__pool_put(struct pool *p, char *chunk);
int uhmm__pool_keep(struct pool *p, char *chunk, unsigned int first);
char *uhmm__pool_take_kept(struct pool *p, unsigned int *first);
void uhmm__pool_give_back(struct pool *p, char *chunk, unsigned int next, bool drop);
void uhmm__pool_trim(struct pool *p, bool all);
unsigned long uhmm__pool_kept_pages(struct pool *p);

/* fault.c */
/* How uhmm__serve serves: waiting for the page lock; waking the toucher after. */
#define SERVE_BLOCK 1
#define SERVE_WAKE 2
#define SERVE_NOMEM_POISON 4 /* no memory to bring the page home: poison it, log, SIGBUS */
int uhmm__serve(struct uhmm *h, uintptr_t addr, bool write, int how);
int uhmm__serve_wait(struct uhmm *h, uintptr_t addr, bool write, int how);
int uhmm__for_each_word(struct uhmm *h, uintptr_t at, uintptr_t end,
			int (*fn)(struct uhmm *, struct range *, uintptr_t, void *), void *arg);
void uhmm__svc_kick(struct uhmm *h);
void uhmm__read_wait(struct uhmm *h);
void uhmm__events_settle(struct uhmm *h, uintptr_t start, uintptr_t end);
bool uhmm__install_begin(struct uhmm *h, uintptr_t start, uintptr_t end);
void uhmm__install_end(struct uhmm *h);
void uhmm__events_drain(struct uhmm *h, uintptr_t addr);
/*
 * What the events read and not yet handled did to @addr (a migration putting
 * back a page it took asks): FATE_HERE, FATE_GONE (discarded or unmapped:
 * its data is gone, as the program asked), FATE_MOVED (by mremap: *now says
 * where it is). Waits while the service thread is reading.
 */
enum { FATE_HERE, FATE_GONE, FATE_MOVED };
int uhmm__pending_fate(struct uhmm *h, uintptr_t addr, uintptr_t *now);
int uhmm__svc_start(struct uhmm *h);
void uhmm__svc_stop(struct uhmm *h);
int uhmm__sync(struct uhmm *h);
void uhmm__release_word(struct uhmm *h, uint64_t w);
uint64_t uhmm__dup_drop(struct uhmm *h, _Atomic uint64_t *w, uintptr_t addr, uint64_t v,
			bool wake);

static inline void uhmm__page_set_addr(struct uhmm_page *page, uintptr_t addr)
{
	__atomic_store_n(&page->addr, addr, __ATOMIC_RELEASE);
}

/* fork.c */
struct pollfd;
int uhmm__fork_prepare(struct uhmm *h);
void uhmm__fork_hold(struct uhmm *h);
void uhmm__fork_child_fds(struct uhmm *h);
void uhmm__fork_parent(struct uhmm *h);
void uhmm__out_begin(struct uhmm *h);
void uhmm__out_end(struct uhmm *h);
void uhmm__fork_event(struct uhmm *h, int ufd);
int uhmm__children_pollfds(struct uhmm *h, struct pollfd *pfd, int max);
void uhmm__children_run(struct uhmm *h, bool probe);
void uhmm__children_fini(struct uhmm *h);
void uhmm__children_flush(struct uhmm *h, struct uhmm_devmem *dm);

/* signal.c */
int uhmm__signal_register(struct uhmm *h);
void uhmm__signal_unregister(struct uhmm *h);

/*
 * Change a word we hold locked: a waiter may set WAITERS at any moment, so
 * it is kept with compare-and-swap, never overwritten.
 */
static inline void uhmm__word_set_locked(_Atomic uint64_t *w, uint64_t nv)
{
	uint64_t old = atomic_load(w);

	while (!atomic_compare_exchange_weak(w, &old, nv | W_LOCKED | (old & W_WAITERS)))
		;
}

/* devmem.c */
struct uhmm_devmem *uhmm__devmem(struct uhmm *h, unsigned slot);
struct uhmm_page *uhmm__word_page(struct uhmm *h, uint64_t w);
void uhmm__devmem_orphan_all(struct uhmm *h);
/* Whether @dm's driver says where the CPU can read its pages (ops ABI 2). */
static inline bool uhmm__has_page_data(const struct uhmm_devmem *dm)
{
	return dm->ops->abi >= 2 && dm->ops->page_data;
}

unsigned long uhmm__devmem_alloc_pages(struct uhmm_devmem *dm, struct uhmm_page **pages,
				       unsigned long n);

/* exclusive.c */
int uhmm__to_device_exclusive(struct uhmm_devmem *dm, void *addr, size_t len, void *owner);
bool uhmm__is_exclusive(struct uhmm *h, const struct uhmm_devmem *dm);
void uhmm__exclusive_fini(struct uhmm *h);

/* mirror.c */
bool uhmm__invalidate_start(struct uhmm *h, uintptr_t start, uintptr_t end, int event,
			    void *owner);
void uhmm__invalidate_end(struct uhmm *h, bool started);
void uhmm__mirror_fini(struct uhmm *h);
int uhmm__vma_prot(uintptr_t addr, uintptr_t *end);
int uhmm__first_data_page(uintptr_t s, uintptr_t e, uintptr_t *first);
int uhmm__has_hole(uintptr_t s, uintptr_t e);

/* policy.c */
uint64_t uhmm__thrash_home(struct uhmm *h, struct uhmm_devmem *dm, uint64_t old, uint64_t nw);
uint64_t uhmm__thrash_stamp(void);
uint64_t uhmm__thrash_out(uint64_t old, uint64_t stamp);
bool uhmm__thrash_pinned(struct uhmm *h, uint64_t w);
long uhmm__evict(struct uhmm_devmem *dm, unsigned long need);
void uhmm__prefetch_stop(struct uhmm *h);
void uhmm__prefetch_drain(struct uhmm *h);
void uhmm__advice_fini(struct uhmm *h);
bool uhmm__read_mostly(struct uhmm *h, uintptr_t addr);
/* Set by the fault path around migrate_to_ram: a CPU read of read-mostly memory. */
extern __thread int uhmm__fault_dup __attribute__((tls_model("initial-exec")));

/* migrate.c */
int uhmm__home_range(struct uhmm *h, uintptr_t start, uintptr_t end, struct uhmm_devmem *only,
		     unsigned long *poisoned);

#define UHMM_STAT_ADD(h, field, n) atomic_fetch_add_explicit(&(h)->st.field, (n), memory_order_relaxed)

#endif /* UHMM_INTERNAL_H */
