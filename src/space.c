/* SPDX-License-Identifier: MIT */
/* space.c - the address space: handles, managed ranges, page state words, pools. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* --- option structs --- */

/*
 * A caller's struct may be older (smaller) or newer (larger, zero tail). Every
 * version starts with its size_t size, so its size is a multiple of that
 * alignment: any other size would cut a field (half a pointer) and is refused.
 */
static int opts_check(const void *opts, size_t given, size_t known)
{
	const unsigned char *p = opts;

	if (given < sizeof(size_t) || given % _Alignof(size_t))
		return -EINVAL;
	for (size_t i = known; i < given; i++)
		if (p[i])
			return -E2BIG;
	return 0;
}

/* --- read sections and retirement (see internal.h) --- */

/* Under h->lock. */
void uhmm__retire(struct uhmm *h, void (*fn)(struct uhmm *, void *), void *p)
{
	struct retired *r = malloc(sizeof(*r));

	if (!r)
		return; /* out of memory: leak it rather than free it under a reader */
	r->fn = fn;
	r->p = p;
	r->next = h->retired;
	h->retired = r;
}

/* Under h->lock. Frees what was retired if no reader can still see it. */
void uhmm__reclaim(struct uhmm *h)
{
	struct retired *r = h->retired, *next;

	if (!r || atomic_load(&h->readers))
		return;
	h->retired = NULL;
	for (; r; r = next) {
		next = r->next;
		r->fn(h, r->p);
		free(r);
	}
}

static void free_ptr(struct uhmm *h, void *p)
{
	(void)h;
	free(p);
}

static void tbl_put(struct state_tbl *t)
{
	uhmm__trace("*tbl-put", (uintptr_t)t->words, t->maplen, (uint64_t)t->refs);
	if (--t->refs)
		return;
	munmap((void *)t->words, t->maplen);
	free(t);
}

static void range_free(struct uhmm *h, void *p)
{
	struct range *r = p;

	(void)h;
	tbl_put(r->tbl);
	free(r);
}

/* --- page locks --- */

__thread int uhmm__in_svc __attribute__((tls_model("initial-exec")));
__thread int uhmm__svc_eagain __attribute__((tls_model("initial-exec")));
__thread int uhmm__nowait __attribute__((tls_model("initial-exec")));
__thread int uhmm__fill_err __attribute__((tls_model("initial-exec")));
__thread int uhmm__fill_exists __attribute__((tls_model("initial-exec")));
__thread int uhmm__fault_dup __attribute__((tls_model("initial-exec")));
int uhmm__kick_fd = -1;
static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void kick_create(void)
{
	uhmm__kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

void uhmm__kick_init(void)
{
	pthread_once(&kick_once, kick_create);
}

static long futex(_Atomic uint64_t *w, int op, uint32_t val)
{
	/* The kind and lock bits live in the low 32 bits (little endian). */
	return syscall(SYS_futex, (uint32_t *)w, op, val, NULL, NULL, 0);
}

bool uhmm__trylock(_Atomic uint64_t *w, uint64_t *old)
{
	uint64_t v = atomic_load(w);

	while (!(v & W_LOCKED)) {
		if (atomic_compare_exchange_weak(w, &v, v | W_LOCKED)) {
			*old = v;
			return true;
		}
	}
	return false;
}

/* Blocking: only while holding no other page lock. Async-signal-safe. */
uint64_t uhmm__lock(_Atomic uint64_t *w)
{
	uint64_t v = atomic_load(w);

	for (int spins = 0;; spins++) {
		if (!(v & W_LOCKED)) {
			if (atomic_compare_exchange_weak(w, &v, v | W_LOCKED))
				return v & ~W_WAITERS;
			continue;
		}
		if (spins < 100) {
			__builtin_ia32_pause();
			v = atomic_load(w);
			continue;
		}
		if (!(v & W_WAITERS) && !atomic_compare_exchange_weak(w, &v, v | W_WAITERS))
			continue;
		futex(w, FUTEX_WAIT_PRIVATE, (uint32_t)(v | W_WAITERS));
		v = atomic_load(w);
	}
}

void uhmm__unlock(_Atomic uint64_t *w, uint64_t nw)
{
	uint64_t old = atomic_exchange(w, nw & ~(W_LOCKED | W_WAITERS));
	uint64_t one = 1;

	if (old & W_WAITERS) {
		futex(w, FUTEX_WAKE_PRIVATE, INT_MAX);
		(void)!write(uhmm__kick_fd, &one, sizeof(one));
	}
}

/* --- ranges --- */

int uhmm__check_range(const void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;

	if (!len || (a & ~PAGE_MASK) || (len & ~PAGE_MASK) || a + len < a || !a)
		return -EINVAL;
	return 0;
}

/* In a read section. */
struct range *uhmm__lookup(struct uhmm *h, uintptr_t addr)
{
	struct rtab *t = atomic_load(&h->rtab);
	size_t lo = 0, hi = t ? t->n : 0;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct range *r = t->r[mid];

		if (addr < r->start)
			hi = mid;
		else if (addr >= r->end)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

_Atomic uint64_t *uhmm__word(struct range *r, uintptr_t addr)
{
	return r->words + ((addr - r->start) >> PAGE_SHIFT);
}

/* Whether [start, end) is entirely managed. In a read section. */
static bool covered(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	while (start < end) {
		struct range *r = uhmm__lookup(h, start);

		if (!r)
			return false;
		start = r->end;
	}
	return true;
}

/* Publish @t in place of the current table; under h->lock. */
static void publish(struct uhmm *h, struct rtab *t)
{
	struct rtab *old = atomic_exchange(&h->rtab, t);

	if (old)
		uhmm__retire(h, free_ptr, old);
}

/* Whether a range of @t overlaps [start, end). */
static bool rtab_overlaps(const struct rtab *t, uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; t && i < t->n; i++)
		if (t->r[i]->start < end && start < t->r[i]->end)
			return true;
	return false;
}

static struct rtab *rtab_alloc(size_t n)
{
	struct rtab *t = malloc(sizeof(*t) + (n ? n : 1) * sizeof(t->r[0]));

	if (t)
		t->n = 0;
	return t;
}

static struct state_tbl *tbl_new(size_t npages)
{
	struct state_tbl *t = calloc(1, sizeof(*t));
	size_t len = (npages * sizeof(uint64_t) + PAGE_SIZE - 1) & PAGE_MASK;
	void *p;

	if (!t)
		return NULL;
	/* Reserved, not committed: untouched words cost nothing. */
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (p == MAP_FAILED) {
		free(t);
		return NULL;
	}
	t->words = p;
	t->maplen = len;
	t->refs = 0;
	return t;
}

/*
 * Insert a range with its own new state table, its words copied from
 * @copy_from when given, before the range is published: a lock-free reader
 * that finds it (a device walk) must read words, not a copy in progress.
 * Under h->lock.
 */
static int insert_range(struct uhmm *h, uintptr_t start, uintptr_t end, bool alloced,
			_Atomic uint64_t *copy_from)
{
	struct rtab *cur = atomic_load(&h->rtab), *nt;
	size_t n = cur ? cur->n : 0, i, j = 0;
	struct range *r;

	if (rtab_overlaps(cur, start, end))
		return -EEXIST;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->tbl = tbl_new((end - start) >> PAGE_SHIFT);
	if (!r->tbl) {
		free(r);
		return -ENOMEM;
	}
	r->tbl->refs = 1;
	r->start = start;
	r->end = end;
	r->words = r->tbl->words;
	r->alloced = alloced;
	if (copy_from)
		memcpy((void *)r->words, (void *)copy_from, ((end - start) >> PAGE_SHIFT) * 8);
	nt = rtab_alloc(n + 1);
	if (!nt) {
		tbl_put(r->tbl);
		free(r);
		return -ENOMEM;
	}
	for (i = 0; i < n && cur->r[i]->start < start; i++)
		nt->r[j++] = cur->r[i];
	nt->r[j++] = r;
	for (; i < n; i++)
		nt->r[j++] = cur->r[i];
	nt->n = j;
	uhmm__trace("*range-add", start, end - start, (uintptr_t)r->words);
	publish(h, nt);
	return 0;
}

int uhmm__add_range(struct uhmm *h, uintptr_t start, uintptr_t end, bool alloced,
		    _Atomic uint64_t *copy_from)
{
	int ret;

	pthread_mutex_lock(&h->lock);
	ret = insert_range(h, start, end, alloced, copy_from);
	pthread_mutex_unlock(&h->lock);
	return ret;
}

/*
 * Drop [start, end) from the table, splitting ranges that straddle it.
 * The words of the dropped pages are the caller's to have released first.
 */
int uhmm__remove_ranges(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	struct rtab *cur, *nt;
	size_t i;
	int removed = 0;

	pthread_mutex_lock(&h->lock);
	cur = atomic_load(&h->rtab);
	nt = rtab_alloc((cur ? cur->n : 0) + 1);
	if (!nt) {
		pthread_mutex_unlock(&h->lock);
		return -ENOMEM;
	}
	for (i = 0; cur && i < cur->n; i++) {
		struct range *r = cur->r[i], *piece;
		uintptr_t cut[2][2] = { { r->start, start }, { end, r->end } };

		if (r->end <= start || end <= r->start) {
			nt->r[nt->n++] = r;
			continue;
		}
		removed = 1;
		uhmm__trace("*range-del", r->start, r->end - r->start, (uintptr_t)r->words);
		for (int k = 0; k < 2; k++) {
			uintptr_t s = cut[k][0] > r->start ? cut[k][0] : r->start;
			uintptr_t e = cut[k][1] < r->end ? cut[k][1] : r->end;

			if (s >= e)
				continue;
			piece = malloc(sizeof(*piece));
			if (!piece)
				continue; /* the pages lose management; never their data */
			*piece = *r;
			piece->start = s;
			piece->end = e;
			piece->words = uhmm__word(r, s);
			piece->tbl->refs++;
			uhmm__trace("*range-piece", s, e - s, (uintptr_t)piece->words);
			nt->r[nt->n++] = piece;
		}
		uhmm__retire(h, range_free, r);
	}
	publish(h, nt);
	uhmm__reclaim(h);
	pthread_mutex_unlock(&h->lock);
	return removed ? 0 : -ENOENT;
}

bool uhmm__leaving(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	bool hit = false;

	if (!atomic_load(&h->nleaving))
		return false;
	pthread_mutex_lock(&h->lock);
	for (int i = 0; i < MAX_LEAVING; i++)
		if (h->leaving[i][0] < end && start < h->leaving[i][1])
			hit = true;
	pthread_mutex_unlock(&h->lock);
	return hit;
}

static int leaving_set(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	for (;;) {
		pthread_mutex_lock(&h->lock);
		for (int i = 0; i < MAX_LEAVING; i++) {
			if (!h->leaving[i][1]) {
				h->leaving[i][0] = start;
				h->leaving[i][1] = end;
				atomic_fetch_add(&h->nleaving, 1);
				pthread_mutex_unlock(&h->lock);
				return i;
			}
		}
		pthread_mutex_unlock(&h->lock);
		sched_yield();
	}
}

static void leaving_clear(struct uhmm *h, int i)
{
	pthread_mutex_lock(&h->lock);
	h->leaving[i][0] = h->leaving[i][1] = 0;
	atomic_fetch_sub(&h->nleaving, 1);
	pthread_mutex_unlock(&h->lock);
}

/* --- pools of 2 MiB chunks --- */

int uhmm__pool_init(struct pool *p, unsigned int keep_max)
{
	size_t len;
	char *m;
	uintptr_t a, end;

	p->keep_max = keep_max < POOL_KEEP_MAX ? keep_max : POOL_KEEP_MAX;
	p->nchunks = (p->keep_max + POOL_SPARE + 63) / 64 * 64;
	len = (size_t)p->nchunks * CHUNK_SIZE;
	/* Address space only: pages come with use. */
	m = mmap(NULL, len + CHUNK_SIZE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return -ENOMEM;
	/* Align to 2 MiB so whole huge pages can move; trim the rest. */
	a = ((uintptr_t)m + CHUNK_SIZE - 1) & ~(CHUNK_SIZE - 1);
	end = (uintptr_t)m + len + CHUNK_SIZE;
	if (a > (uintptr_t)m)
		munmap(m, a - (uintptr_t)m);
	if (end > a + len)
		munmap((void *)(a + len), end - (a + len));
	p->base = (char *)a;
	/* A forked child must not share these pages: MOVE refuses shared pages. */
	madvise(p->base, len, MADV_DONTFORK);
	atomic_store(&p->nkept, 0);
	for (unsigned int w = 0; w < POOL_WORDS; w++) {
		atomic_store(&p->used[w], 0);
		atomic_store(&p->kept[w], 0);
	}
	for (unsigned int i = 0; i < POOL_WORDS * 64; i++) {
		atomic_store(&p->next[i], 0);
		atomic_store(&p->kept_ms[i], 0);
	}
	return 0;
}

void uhmm__pool_fini(struct pool *p)
{
	if (p->base)
		munmap(p->base, (size_t)p->nchunks * CHUNK_SIZE);
	p->base = NULL;
}

static uint64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static unsigned int chunk_index(struct pool *p, const char *chunk)
{
	return (unsigned int)((size_t)(chunk - p->base) / CHUNK_SIZE);
}

static char *chunk_at(struct pool *p, unsigned int i)
{
	return p->base + (size_t)i * CHUNK_SIZE;
}

/* Clear chunk @i's kept bit, and count it out if it was set. */
static void unkeep(struct pool *p, unsigned int i)
{
	uint64_t bit = 1ULL << (i % 64);

	if (atomic_fetch_and(&p->kept[i / 64], ~bit) & bit)
		atomic_fetch_sub(&p->nkept, 1);
}

static void release(struct pool *p, unsigned int i)
{
	atomic_fetch_and(&p->used[i / 64], ~(1ULL << (i % 64)));
}

/* Free what kept chunk @i holds and mark it empty; the caller has taken it. */
static void drop_kept(struct pool *p, unsigned int i)
{
	unsigned int next = atomic_load(&p->next[i]);

	madvise(chunk_at(p, i) + ((size_t)next << PAGE_SHIFT),
		(size_t)(CHUNK_PAGES - next) << PAGE_SHIFT, MADV_DONTNEED);
	unkeep(p, i);
}

/*
 * Take a chunk that is not in use: one of @want in word @w (a snapshot of
 * the free bits it may pick from). Returns its index, or -1 when @want ran
 * out before a claim stuck.
 */
static int claim(struct pool *p, unsigned int w, uint64_t want)
{
	uint64_t u = atomic_load(&p->used[w]);

	for (want &= ~u; want; want &= ~u) {
		unsigned int b = (unsigned int)__builtin_ctzll(want);

		if (atomic_compare_exchange_weak(&p->used[w], &u, u | (1ULL << b)))
			return (int)(w * 64 + b);
	}
	return -1;
}

/*
 * An empty chunk. Lock-free and async-signal-safe; waits while every chunk
 * is in use, and empties a kept one when no other is free.
 */
char *uhmm__pool_get(struct pool *p)
{
	for (;;) {
		for (int pass = 0; pass < 2; pass++) {
			for (unsigned int w = 0; w < p->nchunks / 64; w++) {
				uint64_t want = pass ? ~0ULL : ~atomic_load(&p->kept[w]);
				int i = claim(p, w, want);

				if (i < 0)
					continue;
				/* Kept (now, or since we looked: its taker let go after): emptied. */
				if (atomic_load(&p->kept[w]) & (1ULL << (i % 64)))
					drop_kept(p, (unsigned int)i);
				return chunk_at(p, (unsigned int)i);
			}
		}
		sched_yield();
	}
}

void uhmm__pool_put(struct pool *p, char *chunk)
{
	release(p, chunk_index(p, chunk));
}

/*
 * Let go of taken staging chunk @chunk and keep its pages, [@first,
 * CHUNK_PAGES), for the way home, if every one of them is there (a kept
 * chunk must hold no hole past its first page, as a copy into a hole of
 * staging would wait for ever on its userfaultfd) and fewer than keep_max
 * are kept. Else 0: the caller discards the pages and puts the chunk back.
 * 1: kept; 2: kept, and the first (wake the service thread, which frees
 * those left unused).
 */
int uhmm__pool_keep(struct pool *p, char *chunk, unsigned int first)
{
	unsigned int i = chunk_index(p, chunk), n = atomic_load(&p->nkept);
	uintptr_t s = (uintptr_t)chunk + ((size_t)first << PAGE_SHIFT);

	/* A hole, or cannot tell: not kept. */
	if (n >= p->keep_max || first >= CHUNK_PAGES ||
	    uhmm__has_hole(s, (uintptr_t)chunk + CHUNK_SIZE))
		return 0;
	/*
	 * Reserved only now, never backed out: whoever takes nkept from 0
	 * keeps its chunk and wakes the service thread, which sleeps without
	 * a timeout while nkept is 0.
	 */
	do {
		if (n >= p->keep_max)
			return 0;
	} while (!atomic_compare_exchange_weak(&p->nkept, &n, n + 1));
	atomic_store(&p->next[i], first);
	atomic_store(&p->kept_ms[i], now_ms());
	atomic_fetch_or(&p->kept[i / 64], 1ULL << (i % 64));
	release(p, i);
	return n == 0 ? 2 : 1;
}

/* Take a kept chunk: its pages are at [*@first, CHUNK_PAGES). NULL: none. */
char *uhmm__pool_take_kept(struct pool *p, unsigned int *first)
{
	if (!atomic_load(&p->nkept))
		return NULL;
	for (unsigned int w = 0; w < p->nchunks / 64; w++) {
		for (;;) {
			int i = claim(p, w, atomic_load(&p->kept[w]));

			if (i < 0)
				break;
			if (!(atomic_load(&p->kept[w]) & (1ULL << (i % 64)))) {
				release(p, (unsigned int)i); /* emptied meanwhile */
				continue;
			}
			*first = atomic_load(&p->next[i]);
			return chunk_at(p, (unsigned int)i);
		}
	}
	return NULL;
}

/*
 * Let go of a chunk from uhmm__pool_take_kept(), its pages now at [@next,
 * CHUNK_PAGES); with @drop, those are freed first.
 */
void uhmm__pool_give_back(struct pool *p, char *chunk, unsigned int next, bool drop)
{
	unsigned int i = chunk_index(p, chunk), was = atomic_load(&p->next[i]);

	atomic_store(&p->next[i], next);
	if (drop && next < CHUNK_PAGES)
		drop_kept(p, i);
	else if (next >= CHUNK_PAGES)
		unkeep(p, i);
	else if (next > was) /* in use: unused for a second counts from now */
		atomic_store(&p->kept_ms[i], now_ms());
	release(p, i);
}

/* Whether kept chunk @i went unused for POOL_KEEP_MS by @now (or @all: any). */
static bool unused(struct pool *p, unsigned int i, uint64_t now, bool all)
{
	return all || (int64_t)(now - atomic_load(&p->kept_ms[i])) >= POOL_KEEP_MS;
}

/* Free the kept chunks unused for POOL_KEEP_MS (@all: every one not in use). */
void uhmm__pool_trim(struct pool *p, bool all)
{
	uint64_t now = now_ms();

	for (unsigned int w = 0; w < p->nchunks / 64 && atomic_load(&p->nkept); w++) {
		uint64_t k = atomic_load(&p->kept[w]);

		for (; k; k &= k - 1) {
			unsigned int i = w * 64 + (unsigned int)__builtin_ctzll(k);

			if (!unused(p, i, now, all) || claim(p, w, k & -k) < 0)
				continue;
			/* Still kept, and not used since the look above. */
			if ((atomic_load(&p->kept[w]) & (k & -k)) && unused(p, i, now, all))
				drop_kept(p, i);
			release(p, i);
		}
	}
}

unsigned long uhmm__pool_kept_pages(struct pool *p)
{
	unsigned long n = 0;

	for (unsigned int w = 0; w < p->nchunks / 64; w++)
		for (uint64_t k = atomic_load(&p->kept[w]); k; k &= k - 1)
			n += CHUNK_PAGES - atomic_load(&p->next[w * 64 + __builtin_ctzll(k)]);
	return n;
}

/* --- handles --- */

/*
 * fork: without a service for the child's userfaultfd, the child's managed
 * memory is ordinary memory, and a page that lives on a device would read as
 * zeros there. So every device-resident page comes home before fork; the
 * child then sees all its data (copy-on-write, as usual). In the child the
 * inherited handles are closed: a child opens its own.
 */
static size_t snapshot(struct uhmm *h, uintptr_t (**out)[2]);
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm *open_list;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
	pthread_mutex_lock(&open_lock);
	for (struct uhmm *h = open_list; h; h = h->next_open) {
		uintptr_t(*rs)[2];
		unsigned long poisoned;
		size_t n;

		/* Thread mode: the child will be served (fork.c). Otherwise: pages come home. */
		if (!uhmm__fork_prepare(h))
			continue;
		/* And none may leave again before the fork: the child would read zeros. */
		uhmm__fork_hold(h);
		n = snapshot(h, &rs);
		for (size_t i = 0; i < n; i++)
			uhmm__home_range(h, rs[i][0], rs[i][1], NULL, &poisoned);
		free(rs);
	}
}

static void fork_parent(void)
{
	for (struct uhmm *h = open_list; h; h = h->next_open)
		uhmm__fork_parent(h);
	pthread_mutex_unlock(&open_lock);
}

static void fork_child(void)
{
	/*
	 * The child has none of the parent's threads: forget them, never join
	 * them. And none of its userfaultfds: a userfaultfd acts on the memory
	 * of the process that created it, so through an inherited one a child
	 * could fill or take the parent's pages, or read its faults. Closing
	 * them here drops only the child's references.
	 */
	for (struct uhmm *h = open_list; h; h = h->next_open) {
		atomic_store(&h->closed, 1);
		atomic_store(&h->in_child, 1);
		h->pf = NULL;
		uhmm__fork_child_fds(h);
	}
	open_list = NULL;
	/* Kicks are per process: the parent's eventfd would carry them across. */
	if (uhmm__kick_fd >= 0) {
		close(uhmm__kick_fd);
		uhmm__kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	}
	pthread_mutex_unlock(&open_lock);
}

static void atfork_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void open_list_add(struct uhmm *h)
{
	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&open_lock);
	h->next_open = open_list;
	open_list = h;
	pthread_mutex_unlock(&open_lock);
}

static void open_list_del(struct uhmm *h)
{
	pthread_mutex_lock(&open_lock);
	for (struct uhmm **p = &open_list; *p; p = &(*p)->next_open) {
		if (*p == h) {
			*p = h->next_open;
			break;
		}
	}
	pthread_mutex_unlock(&open_lock);
}

static char zero_page[ZERO_AROUND * PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

/* The number in file @path ("max": none), or UINT64_MAX. */
static uint64_t read_limit(const char *path)
{
	char buf[32];
	FILE *f = fopen(path, "re");
	uint64_t v = UINT64_MAX;

	if (!f)
		return v;
	if (fgets(buf, sizeof(buf), f) && buf[0] >= '0' && buf[0] <= '9')
		v = strtoull(buf, NULL, 10);
	fclose(f);
	return v;
}

/*
 * The memory limit of this process's cgroup and of its ancestors, in bytes
 * (UINT64_MAX: none found): cgroup v2 (memory.max, at /sys/fs/cgroup or
 * /sys/fs/cgroup/unified) and v1 (memory.limit_in_bytes). A container's
 * processes see their own cgroup there (cgroup namespace, path "/").
 */
static uint64_t cgroup_limit(void)
{
	static const struct {
		const char *root, *file;
	} at[] = { { "/sys/fs/cgroup", "memory.max" },
		   { "/sys/fs/cgroup/unified", "memory.max" },
		   { "/sys/fs/cgroup/memory", "memory.limit_in_bytes" } };
	char *line = NULL, path[PATH_MAX];
	size_t cap = 0;
	uint64_t min = UINT64_MAX;
	FILE *f = fopen("/proc/self/cgroup", "re");

	if (!f)
		return min;
	while (getline(&line, &cap, f) > 0) {
		/* "0::/path" (v2), "N:memory:/path" or "N:cpu,memory:/path" (v1). */
		char *ctl = strchr(line, ':'), *cg = ctl ? strchr(ctl + 1, ':') : NULL, *save;
		bool v2, v1 = false;

		if (!cg)
			continue;
		*cg++ = 0;
		cg[strcspn(cg, "\n")] = 0;
		v2 = !ctl[1];
		for (char *c = strtok_r(ctl + 1, ",", &save); c && !v2; c = strtok_r(NULL, ",", &save))
			v1 |= !strcmp(c, "memory");
		if (!v1 && !v2)
			continue;
		for (size_t i = v1 ? 2 : 0; i < (v1 ? 3 : 2); i++) {
			/* The cgroup, then each ancestor up to the root. */
			for (size_t len = strlen(cg);;) {
				uint64_t v;

				if ((size_t)snprintf(path, sizeof(path), "%s%.*s/%s", at[i].root,
						     (int)len, cg, at[i].file) < sizeof(path)) {
					v = read_limit(path);
					min = v < min ? v : min;
				}
				while (len && cg[len - 1] != '/')
					len--;
				if (!len)
					break;
				len--;
			}
		}
	}
	free(line);
	fclose(f);
	return min;
}

/*
 * Chunks staging may keep for the way home: @keep_mib rounded down to whole
 * chunks, or by default 1 GiB, or a sixteenth of the machine's memory, or of
 * the cgroup's memory limit, where that is less. Keeping delays the free of
 * memory a migration out released (for at most POOL_KEEP_MS unused); it
 * never adds to what the process had.
 */
static unsigned int keep_chunks(unsigned int keep_mib)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	uint64_t mem, mib = 1024;

	if (keep_mib)
		return keep_mib / (CHUNK_SIZE >> 20);
	mem = cgroup_limit();
	if (pages > 0 && psz > 0 && (uint64_t)pages * (uint64_t)psz < mem)
		mem = (uint64_t)pages * (uint64_t)psz;
	if (mem / 16 < (mib << 20))
		mib = mem / 16 >> 20;
	return (unsigned int)(mib / (CHUNK_SIZE >> 20));
}

int uhmm_open(struct uhmm **hp, const struct uhmm_open_opts *opts)
{
	struct uhmm_open_opts o = { .sz = sizeof(o) };
	struct uhmm *h;
	int ret;

	if (!hp)
		return -EINVAL;
	*hp = NULL;
	if (opts) {
		ret = opts_check(opts, opts->sz, sizeof(o));
		if (ret)
			return ret;
		memcpy(&o, opts, opts->sz < sizeof(o) ? opts->sz : sizeof(o));
		if ((o.flags & ~UHMM_OPEN_USER_MODE_ONLY) || (unsigned)o.fault_mode > UHMM_FAULT_SIGNAL ||
		    o.fault_window > CHUNK_PAGES || o.keep_mib > POOL_KEEP_MAX * (CHUNK_SIZE >> 20))
			return -EINVAL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->uffd = -1;
	h->uffd_stg = -1;
	h->wake_fd = -1;
	uhmm__kick_init();
	if (uhmm__kick_fd < 0) {
		free(h);
		return -EMFILE;
	}
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->excl_lock, NULL);
	pthread_mutex_init(&h->fork_lock, NULL);
	pthread_mutex_init(&h->advice_lock, NULL);
	pthread_mutex_init(&h->sync_lock, NULL);
	pthread_cond_init(&h->sync_cond, NULL);
	atomic_store(&h->refs, 1);
	h->zero_page = zero_page;
	h->fault_window = o.fault_window ? o.fault_window : CHUNK_PAGES;
	h->nomem_wait_ms = o.nomem_wait_ms ? o.nomem_wait_ms : 2000;

	/* AUTO may be overridden from the environment, e.g. to run a suite in both modes. */
	if (o.fault_mode == UHMM_FAULT_AUTO) {
		const char *m = getenv("UHMM_FAULT_MODE");

		if (m && !strcmp(m, "thread"))
			o.fault_mode = UHMM_FAULT_THREAD;
		else if (m && !strcmp(m, "signal"))
			o.fault_mode = UHMM_FAULT_SIGNAL;
	}
	ret = uhmm__probe_open(h, o.flags, o.mask_features, o.fault_mode);
	if (ret)
		goto err_free;
	ret = uhmm__pool_init(&h->staging, keep_chunks(o.keep_mib));
	if (ret)
		goto err_uffd;
	ret = uhmm__pool_init(&h->bounce, 0);
	if (ret)
		goto err_staging;
	h->svc_bounce = mmap(NULL, CHUNK_SIZE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (h->svc_bounce == MAP_FAILED) {
		ret = -ENOMEM;
		goto err_bounce;
	}
	/*
	 * MOVE's destination must be registered with the userfaultfd the move
	 * is issued on. The staging pool has its own, without events, so that
	 * freeing staging pages raises no event and never waits for the
	 * service thread.
	 */
	if (h->uffd_stg >= 0) {
		struct uffdio_register reg = {
			.range = { .start = (uintptr_t)h->staging.base,
				   .len = (size_t)h->staging.nchunks * CHUNK_SIZE },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(h->uffd_stg, UFFDIO_REGISTER, &reg)) {
			ret = -errno;
			goto err_svcb;
		}
	}
	ret = uhmm__svc_start(h);
	if (ret)
		goto err_svcb;
	if (h->fault_mode == UHMM_FAULT_SIGNAL) {
		ret = uhmm__signal_register(h);
		if (ret) {
			uhmm__svc_stop(h);
			goto err_svcb;
		}
	}
	open_list_add(h);
	*hp = h;
	return 0;

err_svcb:
	munmap(h->svc_bounce, CHUNK_SIZE);
err_bounce:
	uhmm__pool_fini(&h->bounce);
err_staging:
	uhmm__pool_fini(&h->staging);
err_uffd:
	close(h->uffd);
	if (h->uffd_stg >= 0)
		close(h->uffd_stg);
err_free:
	free(h);
	return ret;
}

/* Drop a reference; the last one frees the handle. */
void uhmm__put(struct uhmm *h)
{
	struct rtab *t;

	if (atomic_fetch_sub(&h->refs, 1) != 1)
		return;
	pthread_mutex_lock(&h->lock);
	/*
	 * Ranges an event added after close's last pass (a racing mremap):
	 * retired with the table, whose count stays as readers see it; freed
	 * once no reader is left.
	 */
	t = atomic_load(&h->rtab);
	for (size_t i = 0; t && i < t->n; i++)
		uhmm__retire(h, range_free, t->r[i]);
	publish(h, NULL);
	while (atomic_load(&h->readers))
		sched_yield();
	uhmm__reclaim(h);
	pthread_mutex_unlock(&h->lock);
	uhmm__mirror_fini(h);
	uhmm__pool_fini(&h->staging);
	uhmm__pool_fini(&h->bounce);
	munmap(h->svc_bounce, CHUNK_SIZE);
	pthread_mutex_destroy(&h->lock);
	pthread_mutex_destroy(&h->excl_lock);
	pthread_mutex_destroy(&h->fork_lock);
	uhmm__advice_fini(h);
	pthread_mutex_destroy(&h->advice_lock);
	pthread_mutex_destroy(&h->sync_lock);
	pthread_cond_destroy(&h->sync_cond);
	free(h);
}

/* A snapshot of the managed ranges' bounds; the caller frees it. */
static size_t snapshot(struct uhmm *h, uintptr_t (**out)[2])
{
	struct rtab *t;
	size_t n;

	pthread_mutex_lock(&h->lock);
	t = atomic_load(&h->rtab);
	n = t ? t->n : 0;
	*out = calloc(n ? n : 1, sizeof(**out));
	if (!*out)
		n = 0;
	for (size_t i = 0; i < n; i++) {
		(*out)[i][0] = t->r[i]->start;
		(*out)[i][1] = t->r[i]->end;
	}
	pthread_mutex_unlock(&h->lock);
	return n;
}

void uhmm_close(struct uhmm *h)
{
	uintptr_t(*rs)[2];
	size_t n, i;
	unsigned long poisoned;

	if (!h)
		return;
	open_list_del(h);
	uhmm__prefetch_stop(h); /* queued prefetches run first */
	if (atomic_exchange(&h->closed, 1))
		return;
	if (h->fault_mode == UHMM_FAULT_SIGNAL)
		uhmm__signal_unregister(h); /* no thread may touch managed memory now */
	/*
	 * Events already queued are handled before each pass: an mremap's new
	 * side becomes a range only when its event is, and one that appeared
	 * after the last pass would stay registered and leak.
	 */
	for (int pass = 0; pass < 4; pass++) {
		uhmm__sync(h);
		n = snapshot(h, &rs);
		for (i = 0; i < n; i++) {
			bool inv = uhmm__invalidate_start(h, rs[i][0], rs[i][1],
							  UHMM_NOTIFY_UNMANAGE, NULL);
			struct uffdio_range ur = { .start = rs[i][0],
						   .len = rs[i][1] - rs[i][0] };

			uhmm__home_range(h, rs[i][0], rs[i][1], NULL, &poisoned);
			uhmm__invalidate_end(h, inv);
			ioctl(h->uffd, UFFDIO_UNREGISTER, &ur);
			uhmm__remove_ranges(h, rs[i][0], rs[i][1]);
		}
		free(rs);
		if (!n)
			break;
	}
	uhmm__svc_stop(h);
	/* Nobody frees kept pages now: free them here, not at the last reference. */
	uhmm__pool_trim(&h->staging, true);
	uhmm__devmem_orphan_all(h);
	uhmm__exclusive_fini(h);
	close(h->uffd);
	h->uffd = -1;
	if (h->uffd_stg >= 0)
		close(h->uffd_stg);
	h->uffd_stg = -1;
	uhmm__put(h);
}

int uhmm_fault_mode(const struct uhmm *h)
{
	return h ? h->fault_mode : -EINVAL;
}

uint64_t uhmm_features(const struct uhmm *h)
{
	return h ? h->features : 0;
}

int uhmm_can_migrate(const struct uhmm *h)
{
	if (!h)
		return -EINVAL;
	if ((h->features & UHMM_FEAT_REQUIRED) != UHMM_FEAT_REQUIRED)
		return -EOPNOTSUPP;
	return 0;
}

/*
 * Private anonymous memory only: it is what UFFDIO_MOVE can take and what a
 * discard really empties (the kernel's rule for device-private memory too).
 */
static int check_anon_private(uintptr_t start, uintptr_t end)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	uintptr_t at = start;
	int ret = -EFAULT;

	if (!f)
		return 0; /* no procfs: let registration decide */
	while (at < end && fgets(line, sizeof(line), f)) {
		unsigned long s, e, ino;
		char perms[8], path[256] = "";
		unsigned long off;
		unsigned dmaj, dmin;

		if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu %255s", &s, &e, perms, &off, &dmaj,
			   &dmin, &ino, path) < 7)
			continue;
		if (e <= at)
			continue;
		if (s > at)
			break; /* a hole */
		if (perms[3] != 'p' || ino != 0 ||
		    (path[0] && strcmp(path, "[heap]") && strcmp(path, "[stack]") &&
		     strncmp(path, "[anon:", 6))) {
			ret = -EINVAL;
			goto out;
		}
		at = e;
	}
	if (at >= end)
		ret = 0;
out:
	fclose(f);
	return ret;
}

/*
 * Manage [s, s+len): its range, then its registration. In between, the range
 * is found by lock-free readers while the kernel does not yet send its
 * faults: a migration must not take a page there (a touch would then read a
 * fresh zero page, and a failed registration would drop the words of pages
 * on a device). Arriving memory is marked leaving, which migrations to a
 * device refuse (-ENOENT, as before the range existed), until it is
 * registered.
 */
static int add_registered(struct uhmm *h, uintptr_t s, size_t len, bool alloced)
{
	bool managed;
	int slot, ret;

	/* Managed already (a mistake): refused without holding up its migrations. */
	uhmm__rd_enter(h);
	managed = rtab_overlaps(atomic_load(&h->rtab), s, s + len);
	uhmm__rd_exit(h);
	if (managed)
		return -EEXIST;
	slot = leaving_set(h, s, s + len);
	ret = uhmm__add_range(h, s, s + len, alloced, NULL);
	if (!ret) {
		ret = uhmm__uffd_register(h, s, len);
		if (ret)
			uhmm__remove_ranges(h, s, s + len);
	}
	leaving_clear(h, slot);
	return ret;
}

int uhmm_manage(struct uhmm *h, void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	int ret;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	ret = check_anon_private(s, s + len);
	if (ret)
		return ret;
	/* An event about what was mapped here before may be in flight. */
	uhmm__events_drain(h, s);
	return add_registered(h, s, len, false);
}

int uhmm_unmanage(struct uhmm *h, void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	unsigned long poisoned = 0;
	int ret, slot;
	bool ok, inv;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	uhmm__rd_enter(h);
	ok = covered(h, s, e);
	uhmm__rd_exit(h);
	if (!ok)
		return -ENOENT;
	/* No migration may take these pages from now on; bring home what is out. */
	slot = leaving_set(h, s, e);
	inv = uhmm__invalidate_start(h, s, e, UHMM_NOTIFY_UNMANAGE, NULL);
	ret = uhmm__home_range(h, s, e, NULL, &poisoned);
	struct uffdio_range ur = { .start = s, .len = len };
	ioctl(h->uffd, UFFDIO_UNREGISTER, &ur);
	uhmm__remove_ranges(h, s, e);
	uhmm__invalidate_end(h, inv);
	leaving_clear(h, slot);
	return ret;
}

int uhmm_alloc(struct uhmm *h, size_t len, void **out)
{
	void *p;
	int ret;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	if (!out || !len || len > SIZE_MAX - PAGE_SIZE)
		return -EINVAL;
	*out = NULL;
	len = (len + PAGE_SIZE - 1) & PAGE_MASK;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	/* The kernel may reuse an address whose unmap event is not handled yet. */
	uhmm__events_drain(h, (uintptr_t)p);
	ret = add_registered(h, (uintptr_t)p, len, true);
	if (ret) {
		munmap(p, len);
		return ret == -EEXIST ? -ENOMEM : ret;
	}
	*out = p;
	return 0;
}

int uhmm_free(struct uhmm *h, void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	bool ok;
	int ret;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	len = (len + PAGE_SIZE - 1) & PAGE_MASK;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	uhmm__rd_enter(h);
	ok = covered(h, s, s + len);
	for (uintptr_t a = s; ok && a < s + len;) {
		struct range *r = uhmm__lookup(h, a);

		/* The table may have changed since covered() (an event handled). */
		if (!r) {
			ok = false;
			break;
		}
		if (!r->alloced) {
			uhmm__rd_exit(h);
			return -EINVAL;
		}
		a = r->end;
	}
	uhmm__rd_exit(h);
	if (!ok)
		return -ENOENT;
	/* The unmap event frees the device pages; wait until it has been handled. */
	if (munmap(addr, len))
		return -errno;
	uhmm__sync(h);
	return 0;
}

/* Count @n on the range that holds @addr (if any). */
void uhmm__range_count(struct uhmm *h, uintptr_t addr, int ctr, unsigned long n)
{
	struct range *r;

	uhmm__rd_enter(h);
	r = uhmm__lookup(h, addr);
	if (r)
		uhmm__ctr_add(r, ctr, n);
	uhmm__rd_exit(h);
}

/* The range now at @to carries on the counters of the one at @from (mremap). */
void uhmm__range_ctr_copy(struct uhmm *h, uintptr_t from, uintptr_t to)
{
	struct range *a, *b;

	uhmm__rd_enter(h);
	a = uhmm__lookup(h, from);
	b = uhmm__lookup(h, to);
	if (a && b && a->tbl != b->tbl)
		for (int i = 0; i < NCTR; i++)
			atomic_store(&b->tbl->ctr[i], atomic_load(&a->tbl->ctr[i]));
	uhmm__rd_exit(h);
}

int uhmm_range_stats(struct uhmm *h, const void *addr, struct uhmm_range_stats *st)
{
	struct uhmm_range_stats s = { .sz = sizeof(s) };
	struct range *r;
	size_t sz;
	int ret = uhmm__usable(h);

	if (ret)
		return ret;
	if (!st)
		return -EINVAL;
	sz = st->sz;
	ret = opts_check(st, sz, sizeof(s));
	if (ret)
		return ret;
	uhmm__events_settle(h, (uintptr_t)addr, (uintptr_t)addr + 1);
	uhmm__rd_enter(h);
	r = uhmm__lookup(h, (uintptr_t)addr);
	if (r) {
		s.start = r->start;
		s.end = r->end;
		s.faults = atomic_load(&r->tbl->ctr[CTR_FAULTS]);
		s.pages_to_device = atomic_load(&r->tbl->ctr[CTR_TO]);
		s.pages_to_system = atomic_load(&r->tbl->ctr[CTR_FROM]);
		s.prefetched = atomic_load(&r->tbl->ctr[CTR_PREFETCHED]);
		s.evictions = atomic_load(&r->tbl->ctr[CTR_EVICTIONS]);
		s.thrash_events = atomic_load(&r->tbl->ctr[CTR_THRASH]);
	}
	uhmm__rd_exit(h);
	if (!r)
		return -ENOENT;
	s.bytes_to_device = s.pages_to_device * PAGE_SIZE;
	s.bytes_to_system = s.pages_to_system * PAGE_SIZE;
	memcpy(st, &s, sz < sizeof(s) ? sz : sizeof(s));
	st->sz = sz;
	return 0;
}

int uhmm_range_of(struct uhmm *h, const void *addr, uintptr_t *start, uintptr_t *end)
{
	struct range *r;
	int ret = uhmm__usable(h);

	if (ret)
		return ret;
	if (!start || !end)
		return -EINVAL;
	uhmm__rd_enter(h);
	r = uhmm__lookup(h, (uintptr_t)addr);
	if (r) {
		*start = r->start;
		*end = r->end;
	}
	uhmm__rd_exit(h);
	return r ? 0 : -ENOENT;
}

int uhmm_page_state(struct uhmm *h, const void *addr)
{
	uintptr_t a = (uintptr_t)addr & PAGE_MASK;
	struct range *r;
	uint64_t w;
	unsigned char vec = 0;
	int ret = uhmm__usable(h);

	if (ret)
		return ret;
	uhmm__events_settle(h, a, a + PAGE_SIZE);
	uhmm__rd_enter(h);
	r = uhmm__lookup(h, a);
	if (!r) {
		uhmm__rd_exit(h);
		return -ENOENT;
	}
	w = atomic_load(uhmm__word(r, a));
	uhmm__rd_exit(h);
	if (w_kind(w) == W_DEVICE)
		return UHMM_PAGE_DEVICE;
	if (w_kind(w) == W_POISON)
		return UHMM_PAGE_POISON;
	if (w_kind(w) == W_DUP)
		return UHMM_PAGE_DUPLICATED;
	if (uhmm__pages_with_data(a, 1, &vec) || vec)
		return UHMM_PAGE_SYSTEM;
	return UHMM_PAGE_EMPTY;
}

int uhmm_stats(struct uhmm *h, struct uhmm_stats *st)
{
	struct uhmm_stats s = { .sz = sizeof(s) };
	size_t sz;
	int ret;

	if (!h || !st)
		return -EINVAL;
	sz = st->sz;
	ret = opts_check(st, sz, sizeof(s));
	if (ret)
		return ret;
	s.faults = atomic_load(&h->st.faults);
	s.faults_device = atomic_load(&h->st.faults_device);
	s.pages_home = atomic_load(&h->st.pages_home);
	s.pages_out = atomic_load(&h->st.pages_out);
	s.zero_fills = atomic_load(&h->st.zero_fills);
	s.poisoned = atomic_load(&h->st.poisoned);
	s.events = atomic_load(&h->st.events);
	s.dup_writes = atomic_load(&h->st.dup_writes);
	s.pages_recycled = atomic_load(&h->st.pages_recycled);
	s.pages_kept = uhmm__pool_kept_pages(&h->staging);
	s.faults_worker = atomic_load(&h->st.faults_worker);
	memcpy(st, &s, sz < sizeof(s) ? sz : sizeof(s));
	st->sz = sz;
	return 0;
}

int uhmm__opts_check(const void *opts, size_t given, size_t known)
{
	return opts_check(opts, given, known);
}

const char *uhmm_feature_name(uint64_t feat)
{
	switch (feat) {
	case UHMM_FEAT_MISSING: return "MISSING";
	case UHMM_FEAT_WP: return "WP";
	case UHMM_FEAT_POISON: return "POISON";
	case UHMM_FEAT_MOVE: return "MOVE";
	case UHMM_FEAT_EVENT_UNMAP: return "EVENT_UNMAP";
	case UHMM_FEAT_EVENT_REMOVE: return "EVENT_REMOVE";
	case UHMM_FEAT_EVENT_REMAP: return "EVENT_REMAP";
	case UHMM_FEAT_EVENT_FORK: return "EVENT_FORK";
	case UHMM_FEAT_THREAD_ID: return "THREAD_ID";
	case UHMM_FEAT_SIGBUS: return "SIGBUS";
	case UHMM_FEAT_KERNEL_FAULTS: return "KERNEL_FAULTS";
	default: return NULL;
	}
}

const char *uhmm_strerror(int err)
{
	switch (err == INT_MIN ? -1 : err < 0 ? -err : err) {
	case 0:
		return "success";
	case EPERM:
		return "userfaultfd is not permitted: run as root, grant access to "
		       "/dev/userfaultfd, or set vm.unprivileged_userfaultfd=1 (a seccomp "
		       "profile may also block the system call)";
	case ENOSYS:
		return "the kernel has no userfaultfd: build it with CONFIG_USERFAULTFD=y "
		       "(Linux 6.8 or newer for migration to devices)";
	case EOPNOTSUPP:
		return "the kernel lacks a userfaultfd feature the CPU fault path needs "
		       "(UFFDIO_POISON needs Linux 6.6, UFFDIO_MOVE Linux 6.8): pages may not "
		       "leave the CPU without a way home; run `uhmm info` to see what is missing";
	case EINVAL:
		return "invalid argument: addresses and lengths must be page aligned, non-zero "
		       "and not wrap; memory must be private anonymous; handles and tables must "
		       "not be NULL";
	case EFAULT:
		return "bad address: part of the range is not mapped (or, in user-mode-only "
		       "mode, a system call touched device-resident memory)";
	case EEXIST:
		return "part of the range is already managed: unmanage it first";
	case ENOENT:
		return "the address is not managed by this handle: call uhmm_manage or "
		       "uhmm_alloc first";
	case ENOMEM:
		return "out of memory: the device memory is full or the system is out of memory";
	case E2BIG:
		return "options struct is newer than this library and uses fields it does not "
		       "know: upgrade libuhmm or zero those fields";
	case ENODEV:
		return "the device memory is being removed or the device is dead";
	case ENOSPC:
		return "too many device memory regions or owners on this handle";
	case EBUSY:
		return "the pages are busy (locked by a concurrent migration): retry";
	case EIO:
		return "the device failed to copy the data: affected pages are poisoned "
		       "(SIGBUS on touch); discard them with MADV_DONTNEED to reuse them";
	case ESHUTDOWN:
		return "the handle is closed";
	default:
		return "unknown error (see errno(3))";
	}
}
