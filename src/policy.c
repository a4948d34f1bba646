/* SPDX-License-Identifier: MIT */
/*
 * policy.c - what CUDA unified-memory users expect on top of migration:
 * prefetch (synchronous and queued), eviction when device memory is full
 * (pluggable policies: LRU, FIFO), and thrashing control (throttle, then
 * pin a bouncing page in system memory for a while).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* --- time, in the 16 ms units the state word keeps (async-signal-safe) --- */

static unsigned now16(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
	return (unsigned)(((uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000) / 16) & 0xff;
}

static unsigned since16(uint64_t w)
{
	return (now16() - (unsigned)((w & W_TTIME_MASK) >> W_TTIME_SHIFT)) & 0xff;
}

/* --- thrashing control --- */

int uhmm_set_thrash(struct uhmm *h, const struct uhmm_thrash_opts *opts)
{
	struct uhmm_thrash_opts o = { .sz = sizeof(o) };
	int ret;

	if (!h || !opts)
		return -EINVAL;
	ret = uhmm__opts_check(opts, opts->sz, sizeof(o));
	if (ret)
		return ret;
	memcpy(&o, opts, opts->sz < sizeof(o) ? opts->sz : sizeof(o));
	/* The word keeps 8 bits of 16 ms: windows and pins up to 4 s. */
	if (o.window_ms > 4000 || o.pin_ms > 4000 || o.threshold > 7)
		return -EINVAL;
	atomic_store(&h->thrash.window16, (o.window_ms + 15) / 16);
	atomic_store(&h->thrash.pin16, (o.pin_ms + 15) / 16);
	atomic_store(&h->thrash.threshold, o.threshold);
	return 0;
}

/* The time for uhmm__thrash_out, read once for many pages; never 0. */
uint64_t uhmm__thrash_stamp(void)
{
	return ((uint64_t)now16() << W_TTIME_SHIFT) | 1;
}

/* The page goes to a device (at @stamp): keep its bounce count, stamp the time, unpin. */
uint64_t uhmm__thrash_out(uint64_t old, uint64_t stamp)
{
	return (old & W_TCOUNT_MASK) | (stamp & W_TTIME_MASK);
}

/*
 * A CPU fault brought the page home (@old: its word on the device; @nw: its
 * new word). A quick return is a bounce; enough bounces in a row pin it.
 */
uint64_t uhmm__thrash_home(struct uhmm *h, struct uhmm_devmem *dm, uint64_t old, uint64_t nw)
{
	unsigned thr = atomic_load(&h->thrash.threshold);
	uint64_t count = (old & W_TCOUNT_MASK) >> W_TCOUNT_SHIFT;

	nw &= ~W_THRASH_MASK;
	/* Revoking exclusive access is no bounce: the device asked, the CPU took back. */
	if (!thr || uhmm__is_exclusive(h, dm))
		return nw;
	if (since16(old) > atomic_load(&h->thrash.window16))
		return nw; /* it stayed long enough: the streak ends */
	if (++count < thr)
		return nw | (count << W_TCOUNT_SHIFT);
	if (dm)
		atomic_fetch_add(&dm->st_thrash, 1);
	return nw | W_PINNED | ((uint64_t)now16() << W_TTIME_SHIFT);
}

/* Whether a CPU page is pinned there now (migrations to devices leave it). */
bool uhmm__thrash_pinned(struct uhmm *h, uint64_t w)
{
	return (w & W_PINNED) && since16(w) < atomic_load(&h->thrash.pin16);
}

/* --- recency and eviction --- */

void uhmm_page_mark_accessed(struct uhmm_page *page)
{
	if (page && page->devmem)
		__atomic_store_n(&page->last_use, atomic_fetch_add(&page->devmem->h->tick, 1),
				 __ATOMIC_RELAXED);
}

/* A max-heap of the @n pages with the smallest keys seen so far. */
struct pick {
	struct victim *v;
	unsigned long n, cap;
};

static void pick_swap(struct pick *k, unsigned long a, unsigned long b)
{
	struct victim t = k->v[a];

	k->v[a] = k->v[b];
	k->v[b] = t;
}

static void pick_sift(struct pick *k, unsigned long i)
{
	for (;;) {
		unsigned long l = 2 * i + 1, r = l + 1, m = i;

		if (l < k->n && k->v[l].key > k->v[m].key)
			m = l;
		if (r < k->n && k->v[r].key > k->v[m].key)
			m = r;
		if (m == i)
			return;
		pick_swap(k, i, m);
		i = m;
	}
}

static void pick_add(struct pick *k, struct uhmm_page *page, uint64_t key)
{
	if (k->n < k->cap) {
		unsigned long i = k->n++;

		k->v[i] = (struct victim){ page, key };
		while (i && k->v[(i - 1) / 2].key < k->v[i].key) {
			pick_swap(k, i, (i - 1) / 2);
			i = (i - 1) / 2;
		}
		return;
	}
	if (key >= k->v[0].key)
		return;
	k->v[0] = (struct victim){ page, key };
	pick_sift(k, 0);
}

/* A page the policies may pick: it holds data and is not being freed. */
static bool evictable(struct uhmm_page *page)
{
	return uhmm_page_addr(page) && __atomic_load_n(&page->refcount, __ATOMIC_RELAXED) > 0;
}

static uint64_t victim_key(struct uhmm_page *page, bool by_use)
{
	return __atomic_load_n(by_use ? &page->last_use : &page->birth, __ATOMIC_RELAXED);
}

static int cmp_key(const void *a, const void *b)
{
	uint64_t x = ((const struct victim *)a)->key, y = ((const struct victim *)b)->key;

	return x < y ? -1 : x > y;
}

/*
 * Look at every resident page of @dm and keep the @cap with the smallest
 * keys, oldest first, as the next victims. Under dm->vlock.
 */
static void victims_scan(struct uhmm_devmem *dm, unsigned long cap, bool by_use)
{
	struct pick k = { .cap = cap };

	dm->nvictims = dm->vnext = 0;
	if (cap > dm->vcap) {
		struct victim *v = realloc(dm->victims, cap * sizeof(*v));

		if (!v)
			return;
		dm->victims = v;
		dm->vcap = cap;
	}
	k.v = dm->victims;
	for (unsigned long pfn = 0; pfn < dm->npages; pfn++) {
		struct uhmm_page *page = &dm->pages[pfn];

		if (evictable(page))
			pick_add(&k, page, victim_key(page, by_use));
	}
	qsort(dm->victims, k.n, sizeof(*dm->victims), cmp_key);
	dm->nvictims = k.n;
}

/*
 * The @n resident pages with the smallest birth (FIFO) or last use (LRU).
 * A look at every page of the device found them; for a device of 2 GiB
 * that was 17 % of the time of a migration that evicted as much (one look
 * per 512 pages evicted). So a look keeps the oldest 16 times as many as
 * asked, and the calls after take from them while they last. Keys only
 * grow (a use, a new birth), so every page not kept was younger than all
 * kept; a kept page whose key changed since (used again, or evicted and
 * reused) is passed over. The order is exactly the policy's. Kept pages
 * all used since: look again (skipping what this call chose already, which
 * the new look finds first).
 */
#define VICTIMS_AHEAD 16
#define VICTIMS_MIN 4096

static unsigned long select_oldest(struct uhmm_devmem *dm, struct uhmm_page **out, unsigned long n,
				   bool by_use)
{
	unsigned long cap = n * VICTIMS_AHEAD < VICTIMS_MIN ? VICTIMS_MIN : n * VICTIMS_AHEAD;
	unsigned long got = 0, before = 0;
	bool looked = false;

	if (cap > dm->npages)
		cap = dm->npages;
	pthread_mutex_lock(&dm->vlock);
	if (dm->victims_by_use != by_use || dm->nvictims - dm->vnext < n) {
		dm->victims_by_use = by_use;
		victims_scan(dm, cap, by_use);
		looked = true;
	}
	while (got < n) {
		struct victim *v;
		bool chosen = false;

		if (dm->vnext == dm->nvictims) {
			if (looked)
				break;
			victims_scan(dm, cap, by_use);
			looked = true;
			before = got;
			continue;
		}
		v = &dm->victims[dm->vnext++];
		for (unsigned long k = 0; k < before && !chosen; k++)
			chosen = out[k] == v->page;
		if (!chosen && evictable(v->page) && victim_key(v->page, by_use) == v->key)
			out[got++] = v->page;
	}
	pthread_mutex_unlock(&dm->vlock);
	return got;
}

static unsigned long lru_select(struct uhmm_devmem *dm, struct uhmm_page **out, unsigned long n)
{
	return select_oldest(dm, out, n, true);
}

static unsigned long fifo_select(struct uhmm_devmem *dm, struct uhmm_page **out, unsigned long n)
{
	return select_oldest(dm, out, n, false);
}

const struct uhmm_evict_policy uhmm_evict_lru = {
	.abi = UHMM_EVICT_POLICY_ABI,
	.name = "lru",
	.select = lru_select,
};

const struct uhmm_evict_policy uhmm_evict_fifo = {
	.abi = UHMM_EVICT_POLICY_ABI,
	.name = "fifo",
	.select = fifo_select,
};

int uhmm_devmem_set_evict(struct uhmm_devmem *dm, const struct uhmm_evict_policy *policy)
{
	if (!dm || (policy && (policy->abi != UHMM_EVICT_POLICY_ABI || !policy->select)))
		return -EINVAL;
	atomic_store(&dm->evict, policy);
	return 0;
}

const struct uhmm_evict_policy *uhmm_devmem_evict_policy(struct uhmm_devmem *dm)
{
	return dm ? atomic_load(&dm->evict) : NULL;
}

static int cmp_addr(const void *a, const void *b)
{
	uintptr_t x = uhmm_page_addr(*(struct uhmm_page *const *)a);
	uintptr_t y = uhmm_page_addr(*(struct uhmm_page *const *)b);

	return x < y ? -1 : x > y;
}

/*
 * Make room for @need pages in @dm by sending the policy's victims home.
 * From the migrating thread, holding no page lock. Returns the pages free
 * afterwards (without a policy: free now).
 */
long uhmm__evict(struct uhmm_devmem *dm, unsigned long need)
{
	const struct uhmm_evict_policy *pol = atomic_load(&dm->evict);
	struct uhmm_page *victims[CHUNK_PAGES];
	unsigned long free_pages, n, i, j, poisoned = 0;

	free_pages = dm->npages - (unsigned long)atomic_load(&dm->in_use);
	if (!pol || free_pages >= need)
		return (long)free_pages;
	n = need - free_pages;
	if (n > CHUNK_PAGES)
		n = CHUNK_PAGES;
	n = pol->select(dm, victims, n);
	/* Home in runs of neighbouring addresses: one migration per run. */
	qsort(victims, n, sizeof(victims[0]), cmp_addr);
	for (i = 0; i < n; i = j) {
		uintptr_t a = uhmm_page_addr(victims[i]);
		int moved;

		for (j = i + 1; j < n && a && uhmm_page_addr(victims[j]) ==
					       a + ((j - i) << PAGE_SHIFT);
		     j++)
			;
		if (!a)
			continue;
		moved = uhmm__home_range(dm->h, a, a + ((j - i) << PAGE_SHIFT), dm, &poisoned);
		if (moved > 0) {
			atomic_fetch_add(&dm->st_evictions, moved);
			uhmm__range_count(dm->h, a, CTR_EVICTIONS, (unsigned long)moved);
		}
	}
	return (long)(dm->npages - (unsigned long)atomic_load(&dm->in_use));
}

/* --- prefetch --- */

int uhmm_prefetch(struct uhmm *h, void *addr, size_t len, struct uhmm_devmem *target)
{
	int ret;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	if (target && target->h != h)
		return -EINVAL;
	if (!target)
		return uhmm_migrate_to_ram(h, addr, len);
	ret = uhmm_migrate_to_device(target, addr, len);
	if (ret > 0) {
		atomic_fetch_add(&target->st_prefetched, ret);
		uhmm__range_count(h, (uintptr_t)addr, CTR_PREFETCHED, (unsigned long)ret);
	}
	return ret;
}

#define PF_RESULTS 4096

struct pf_req {
	struct pf_req *next;
	uint64_t ticket;
	void *addr;
	size_t len;
	struct uhmm_devmem *target;
};

struct prefetcher {
	struct uhmm *h;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct pf_req *head, **tail;
	uint64_t issued, done;
	int results[PF_RESULTS];
	bool stop;
};

static void *pf_main(void *arg)
{
	struct prefetcher *pf = arg;
	struct uhmm *h = pf->h;

	pthread_mutex_lock(&pf->lock);
	for (;;) {
		struct pf_req *r;
		int ret;

		while (!pf->head && !pf->stop)
			pthread_cond_wait(&pf->cond, &pf->lock);
		r = pf->head;
		if (!r)
			break;
		pf->head = r->next;
		if (!pf->head)
			pf->tail = &pf->head;
		pthread_mutex_unlock(&pf->lock);
		ret = uhmm_prefetch(h, r->addr, r->len, r->target);
		pthread_mutex_lock(&pf->lock);
		pf->results[r->ticket % PF_RESULTS] = ret;
		pf->done = r->ticket;
		pthread_cond_broadcast(&pf->cond);
		free(r);
	}
	pthread_mutex_unlock(&pf->lock);
	return NULL;
}

static int pf_start(struct uhmm *h)
{
	struct prefetcher *pf;
	int ret = 0;

	pthread_mutex_lock(&h->lock);
	if (atomic_load(&h->pf))
		goto out;
	pf = calloc(1, sizeof(*pf));
	if (!pf) {
		ret = -ENOMEM;
		goto out;
	}
	pthread_mutex_init(&pf->lock, NULL);
	pthread_cond_init(&pf->cond, NULL);
	pf->tail = &pf->head;
	pf->h = h;
	ret = -pthread_create(&pf->thread, NULL, pf_main, pf);
	if (ret) {
		pthread_cond_destroy(&pf->cond);
		pthread_mutex_destroy(&pf->lock);
		free(pf);
		goto out;
	}
	/* Published whole: uhmm_prefetch_wait and the drain read it without h->lock. */
	atomic_store(&h->pf, pf);
out:
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int uhmm_prefetch_async(struct uhmm *h, void *addr, size_t len, struct uhmm_devmem *target,
			uint64_t *ticket)
{
	struct prefetcher *pf;
	struct pf_req *r;
	int ret;

	ret = uhmm__usable(h);
	if (ret)
		return ret;
	if (!ticket || (target && target->h != h))
		return -EINVAL;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	ret = pf_start(h);
	if (ret)
		return ret;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->addr = addr;
	r->len = len;
	r->target = target;
	pf = atomic_load(&h->pf);
	pthread_mutex_lock(&pf->lock);
	r->ticket = *ticket = ++pf->issued;
	*pf->tail = r;
	pf->tail = &r->next;
	pthread_cond_broadcast(&pf->cond);
	pthread_mutex_unlock(&pf->lock);
	return 0;
}

int uhmm_prefetch_wait(struct uhmm *h, uint64_t ticket)
{
	struct prefetcher *pf;
	int ret;

	if (!h || !ticket || !(pf = atomic_load(&h->pf)))
		return -EINVAL;
	pthread_mutex_lock(&pf->lock);
	if (ticket > pf->issued) {
		pthread_mutex_unlock(&pf->lock);
		return -EINVAL;
	}
	while (pf->done < ticket && !pf->stop)
		pthread_cond_wait(&pf->cond, &pf->lock);
	if (pf->done < ticket)
		ret = -ESHUTDOWN;
	else
		ret = pf->done - ticket >= PF_RESULTS ? -ENOENT : pf->results[ticket % PF_RESULTS];
	pthread_mutex_unlock(&pf->lock);
	return ret;
}

/* At close: run what is queued, then stop the worker. */
void uhmm__prefetch_stop(struct uhmm *h)
{
	struct prefetcher *pf = atomic_load(&h->pf);

	if (!pf)
		return;
	pthread_mutex_lock(&pf->lock);
	pf->stop = true;
	pthread_cond_broadcast(&pf->cond);
	pthread_mutex_unlock(&pf->lock);
	pthread_join(pf->thread, NULL);
	atomic_store(&h->pf, NULL);
	pthread_mutex_destroy(&pf->lock);
	pthread_cond_destroy(&pf->cond);
	free(pf);
}

/* Device memory goes away: every prefetch queued so far has run first. */
void uhmm__prefetch_drain(struct uhmm *h)
{
	struct prefetcher *pf = atomic_load(&h->pf);

	if (!pf)
		return;
	pthread_mutex_lock(&pf->lock);
	while (pf->done < pf->issued && !pf->stop)
		pthread_cond_wait(&pf->cond, &pf->lock);
	pthread_mutex_unlock(&pf->lock);
}

long uhmm_devmem_make_room(struct uhmm_devmem *dm, unsigned long npages)
{
	if (!dm)
		return -EINVAL;
	return uhmm__evict(dm, npages);
}

/* --- advice --- */

enum { ADV_PREFERRED = 1, ADV_ACCESSED_BY, ADV_READ_MOSTLY };

/*
 * One piece of advice over [s, e). Records are kept in the order given; a
 * query takes the latest one of each kind covering the address (an UNSET
 * is a record that clears). Advice is set rarely and read at device faults.
 */
struct advice {
	uintptr_t s, e;
	int kind;
	bool set;
	struct uhmm_devmem *dm; /* PREFERRED: NULL for the CPU; ACCESSED_BY: the device */
};

/*
 * The records, published whole: a writer copies, appends and swaps (under
 * advice_lock, the old table retired), so that readers, the fault path in
 * a signal handler among them, take no lock.
 */
struct advtab {
	size_t n;
	struct advice a[];
};

static void advtab_free(struct uhmm *h, void *p)
{
	(void)h;
	free(p);
}

int uhmm_advise(struct uhmm *h, void *addr, size_t len, enum uhmm_advice advice,
		struct uhmm_devmem *device)
{
	struct advice a = { .s = (uintptr_t)addr, .e = (uintptr_t)addr + len, .dm = device };
	int ret = uhmm__usable(h);

	if (ret)
		return ret;
	ret = uhmm__check_range(addr, len);
	if (ret)
		return ret;
	if (device && device->h != h)
		return -EINVAL;
	switch (advice) {
	case UHMM_ADVISE_SET_PREFERRED_LOCATION:
	case UHMM_ADVISE_UNSET_PREFERRED_LOCATION:
		a.kind = ADV_PREFERRED;
		a.set = advice == UHMM_ADVISE_SET_PREFERRED_LOCATION;
		break;
	case UHMM_ADVISE_SET_ACCESSED_BY:
	case UHMM_ADVISE_UNSET_ACCESSED_BY:
		if (!device)
			return -EINVAL;
		a.kind = ADV_ACCESSED_BY;
		a.set = advice == UHMM_ADVISE_SET_ACCESSED_BY;
		break;
	case UHMM_ADVISE_SET_READ_MOSTLY:
	case UHMM_ADVISE_UNSET_READ_MOSTLY:
		a.kind = ADV_READ_MOSTLY;
		a.set = advice == UHMM_ADVISE_SET_READ_MOSTLY;
		break;
	default:
		return -EINVAL;
	}
	pthread_mutex_lock(&h->advice_lock);
	{
		struct advtab *old = atomic_load(&h->advtab);
		size_t n = old ? old->n : 0;
		struct advtab *t = malloc(sizeof(*t) + (n + 1) * sizeof(t->a[0]));

		if (!t) {
			pthread_mutex_unlock(&h->advice_lock);
			return -ENOMEM;
		}
		if (n)
			memcpy(t->a, old->a, n * sizeof(t->a[0]));
		t->a[n] = a;
		t->n = n + 1;
		atomic_store(&h->advtab, t);
		if (old) {
			pthread_mutex_lock(&h->lock);
			uhmm__retire(h, advtab_free, old);
			uhmm__reclaim(h);
			pthread_mutex_unlock(&h->lock);
		}
	}
	pthread_mutex_unlock(&h->advice_lock);
	return 0;
}

int uhmm_advice_get(struct uhmm *h, const void *addr, struct uhmm_devmem *device,
		    struct uhmm_advice_info *out)
{
	uintptr_t x = (uintptr_t)addr;
	bool pref_seen = false, acc_seen = false, rm_seen = false;
	struct advtab *t;

	if (!h || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	uhmm__rd_enter(h);
	t = atomic_load(&h->advtab);
	/* Newest first: the first record of each kind that covers x decides it. */
	for (size_t i = t ? t->n : 0; i-- > 0;) {
		const struct advice *a = &t->a[i];

		if (x < a->s || x >= a->e)
			continue;
		if (a->kind == ADV_PREFERRED && !pref_seen) {
			pref_seen = true;
			if (a->set) {
				out->preferred = a->dm ? UHMM_PREFER_DEVICE : UHMM_PREFER_CPU;
				out->preferred_device = a->dm;
			}
		} else if (a->kind == ADV_ACCESSED_BY && a->dm == device && device && !acc_seen) {
			acc_seen = true;
			out->accessed_by = a->set;
		} else if (a->kind == ADV_READ_MOSTLY && !rm_seen) {
			rm_seen = true;
			out->read_mostly = a->set;
		}
	}
	uhmm__rd_exit(h);
	return 0;
}

/* Whether READ_MOSTLY is in force at @addr. Lock-free, async-signal-safe. */
bool uhmm__read_mostly(struct uhmm *h, uintptr_t addr)
{
	struct advtab *t;
	bool rm = false;

	/* No advice at all (the common case): nothing to look up on a fault's way. */
	if (!atomic_load(&h->advtab))
		return false;
	uhmm__rd_enter(h);
	t = atomic_load(&h->advtab);
	for (size_t i = t ? t->n : 0; i-- > 0;) {
		if (addr >= t->a[i].s && addr < t->a[i].e && t->a[i].kind == ADV_READ_MOSTLY) {
			rm = t->a[i].set;
			break;
		}
	}
	uhmm__rd_exit(h);
	return rm;
}

void uhmm__advice_fini(struct uhmm *h)
{
	free(atomic_exchange(&h->advtab, NULL));
}
