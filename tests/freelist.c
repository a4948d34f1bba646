/* freelist: device pages allocated and released by several threads at once are never handed out twice, the allocator is race-free (TSan), and it hands out pages in order. */
/* uhmm-test-label: concurrent */
/*
 * Under TSan this guards the allocator (src/devmem.c): a bitmap of pages in
 * use, claimed and released by compare-and-swap, and the word below which no
 * page is free, which claims move up and releases move down.
 */
#include "harness.h"

#include <stdatomic.h>

#define NTHREADS 4
#define NP 2
#define ROUNDS 20000

struct shared {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	pthread_barrier_t go;
};

struct worker {
	struct shared *sh;
	char *buf;
	uint64_t seed;
	pthread_t tid;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(&w->sh->go);
	for (int r = 0; r < ROUNDS; r++) {
		/* Pages out (allocations) and home (releases), racing the other threads. */
		CHECK_EQ(uhmm_migrate_to_device(w->sh->dm, w->buf, NP * PAGE), NP);
		CHECK_EQ(uhmm_migrate_to_ram(w->sh->h, w->buf, NP * PAGE), NP);
	}
	return NULL;
}

/*
 * NTHREADS threads running @fn, each over @np pattern-filled pages of its own;
 * returns how many of them returned non-NULL.
 */
static int run_workers(struct shared *sh, struct worker *wk, size_t np, uint64_t seed,
		       void *(*fn)(void *))
{
	int some = 0;

	CHECK_EQ(pthread_barrier_init(&sh->go, NULL, NTHREADS), 0);
	for (int t = 0; t < NTHREADS; t++) {
		void *p = NULL;

		CHECK_EQ(uhmm_alloc(sh->h, np * PAGE, &p), 0);
		wk[t] = (struct worker){ .sh = sh, .buf = p, .seed = seed + (uint64_t)t };
		pattern_fill(wk[t].buf, np * PAGE, wk[t].seed);
	}
	for (int t = 0; t < NTHREADS; t++)
		CHECK_EQ(pthread_create(&wk[t].tid, NULL, fn, &wk[t]), 0);
	for (int t = 0; t < NTHREADS; t++) {
		void *ret = NULL;

		CHECK_EQ(pthread_join(wk[t].tid, &ret), 0);
		some += ret != NULL;
	}
	pthread_barrier_destroy(&sh->go);
	/* Every page went out and came home with its own data: no device page served two. */
	for (int t = 0; t < NTHREADS; t++) {
		for (size_t i = 0; i < np; i++)
			CHECK_PATTERN_PAGE(wk[t].buf, i, wk[t].seed);
		CHECK_EQ(uhmm_free(sh->h, wk[t].buf, np * PAGE), 0);
	}
	return some;
}

TEST(alloc_and_put_from_several_threads)
{
	static struct worker wk[NTHREADS];
	struct shared sh;
	struct uhmm_sim *sim;

	sh.h = uhmm_test_open_migrating();
	sim = uhmm_test_sim(sh.h, NTHREADS * NP);
	sh.dm = uhmm_sim_devmem(sim);
	run_workers(&sh, wk, NP, 0xf1ee0000ULL, worker_main);
	CHECK_EQ(dmstats(sh.dm).in_use, 0);
	CHECK_EQ(dmstats(sh.dm).page_frees, (uint64_t)NTHREADS * NP * ROUNDS);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(sh.h);
}

/*
 * A region smaller than what the threads ask for: batches come off the list
 * short (uhmm__devmem_alloc_pages runs it dry while others push pages back),
 * and each migration says exactly how many of its pages went, none twice.
 */
#define SHORT_NP 3
#define SHORT_ROUNDS 5000

static void *short_main(void *arg)
{
	struct worker *w = arg;
	long long moved = 0;

	pthread_barrier_wait(&w->sh->go);
	for (int r = 0; r < SHORT_ROUNDS; r++) {
		int got = uhmm_migrate_to_device(w->sh->dm, w->buf, SHORT_NP * PAGE);
		size_t on = 0;

		if (got == -ENOMEM)
			got = 0; /* the region was full: nothing moved */
		CHECK_GE(got, 0);
		CHECK_LE(got, SHORT_NP);
		for (size_t i = 0; i < SHORT_NP; i++)
			on += uhmm_page_state(w->sh->h, w->buf + i * PAGE) == UHMM_PAGE_DEVICE;
		CHECK_EQ(on, (size_t)got);
		moved += got;
		CHECK_EQ(uhmm_migrate_to_ram(w->sh->h, w->buf, SHORT_NP * PAGE), got);
	}
	return (void *)(intptr_t)(moved > 0);
}

TEST(short_batches_when_the_region_runs_out)
{
	static struct worker wk[NTHREADS];
	struct shared sh;
	struct uhmm_sim *sim;

	sh.h = uhmm_test_open_migrating();
	/* Room for all of one thread's pages and part of another's. */
	sim = uhmm_test_sim(sh.h, SHORT_NP + 2);
	sh.dm = uhmm_sim_devmem(sim);
	/* Some thread got some pages to the device. */
	CHECK_GT(run_workers(&sh, wk, SHORT_NP, 0x5407000ULL, short_main), 0);
	CHECK_EQ(dmstats(sh.dm).in_use, 0);
	CHECK_EQ(dmstats(sh.dm).resident, 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(sh.h);
}

/* ---- device pages in order ---- */

/* A driver that remembers which device page each CPU page of its buffer got. */
#define RP 256
static char rpool[RP * PAGE] __attribute__((aligned(4096)));
static unsigned long got_pfn[RP];
static uintptr_t rbase;
static int rowner;

static int rcopy_to(struct uhmm_devmem *dm, struct uhmm_page *const *dst, const void *const *src,
		    unsigned long n)
{
	(void)dm;
	for (unsigned long i = 0; i < n; i++) {
		if (src[i])
			memcpy(rpool + dst[i]->pfn * PAGE, src[i], PAGE);
		else
			memset(rpool + dst[i]->pfn * PAGE, 0, PAGE);
		got_pfn[(uhmm_page_addr(dst[i]) - rbase) / PAGE] = dst[i]->pfn;
	}
	return 0;
}

static int rcopy_from(struct uhmm_devmem *dm, void *const *dst, struct uhmm_page *const *src,
		      unsigned long n)
{
	(void)dm;
	for (unsigned long i = 0; i < n; i++)
		memcpy(dst[i], rpool + src[i]->pfn * PAGE, PAGE);
	return 0;
}

static int rmigrate_to_ram(struct uhmm_fault *vmf)
{
	return uhmm_test_migrate_one_home(vmf, &rowner, rcopy_from);
}

static const struct uhmm_devmem_ops rops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = rcopy_to,
	.copy_from_device = rcopy_from,
	.migrate_to_ram = rmigrate_to_ram,
};

/*
 * After a range came home in random order, a migration of it must still get
 * adjoining device pages for adjoining CPU pages, in order (runs go home in
 * one ioctl, copies stream): the allocator hands out the lowest free pages.
 */
TEST(pages_come_out_in_order_after_a_random_return)
{
	UHMM_OPTS(uhmm_devmem_desc, d, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = RP,
		  .owner = &rowner, .ops = &rops, .name = "ordered");
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_devmem *dm;
	struct prng r;
	size_t *perm;
	void *p = NULL;

	CHECK_EQ(uhmm_devmem_add(h, &d, &dm), 0);
	CHECK_EQ(uhmm_alloc(h, RP * PAGE, &p), 0);
	rbase = (uintptr_t)p;
	pattern_fill(p, RP * PAGE, 0x0dde);
	prng_init(&r, 0x0dde, "home order");
	for (int round = 0; round < 3; round++) {
		CHECK_EQ(uhmm_migrate_to_device(dm, p, RP * PAGE), RP);
		for (size_t i = 1; i < RP; i++)
			CHECK_MSG(got_pfn[i] == got_pfn[0] + i,
				  "round %d: CPU page %zu got device page %lu, page 0 got %lu", round, i,
				  got_pfn[i], got_pfn[0]);
		/* Home one page at a time, in random order: freed in random order. */
		perm = prng_perm(&r, RP);
		for (size_t i = 0; i < RP; i++)
			CHECK_EQ(uhmm_migrate_to_ram(h, (char *)p + perm[i] * PAGE, PAGE), 1);
		free(perm);
		CHECK_PATTERN_PAGES(p, RP, 0x0dde);
		/* Half the range: the lowest half of the device pages, in order. */
		CHECK_EQ(uhmm_migrate_to_device(dm, p, RP / 2 * PAGE), RP / 2);
		CHECK_EQ(got_pfn[0], 0);
		for (size_t i = 1; i < RP / 2; i++)
			CHECK_MSG(got_pfn[i] == got_pfn[0] + i,
				  "round %d, half: CPU page %zu got device page %lu, page 0 got %lu",
				  round, i, got_pfn[i], got_pfn[0]);
		CHECK_EQ(uhmm_migrate_to_ram(h, p, RP / 2 * PAGE), RP / 2);
	}
	CHECK_EQ(uhmm_free(h, p, RP * PAGE), 0);
	CHECK_EQ(uhmm_devmem_remove(dm), 0);
	uhmm_close(h);
}

/*
 * Pages freed in any order, some of each 64-page word of the bitmap and
 * some words not at all: allocations take the lowest free page first, so
 * the freed pages come back in page order, and then the region is full.
 */
TEST(lowest_free_page_first)
{
	UHMM_OPTS(uhmm_devmem_desc, d, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = RP,
		  .owner = &rowner, .ops = &rops, .name = "lowest");
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_devmem *dm;
	struct uhmm_page *pg[RP];
	struct prng r;
	size_t *perm, nfree = 0;
	bool freed[RP] = { false };
	void *p = NULL;

	CHECK_EQ(uhmm_devmem_add(h, &d, &dm), 0);
	CHECK_EQ(uhmm_alloc(h, RP * PAGE, &p), 0);
	rbase = (uintptr_t)p;
	pattern_fill(p, RP * PAGE, 0x10e5);
	CHECK_EQ(uhmm_migrate_to_device(dm, p, RP * PAGE), RP);
	CHECK_PTR(uhmm_devmem_alloc_page(dm), NULL);
	/* Home in random order: CPU pages 3k in the first three words, none of the last. */
	prng_init(&r, 0x10e5, "lowest");
	perm = prng_perm(&r, RP);
	for (size_t i = 0; i < RP; i++) {
		size_t c = perm[i];

		if (c % 3 || c >= 192)
			continue;
		CHECK_EQ(uhmm_migrate_to_ram(h, (char *)p + c * PAGE, PAGE), 1);
		freed[got_pfn[c]] = true;
		nfree++;
	}
	free(perm);
	CHECK_EQ(dmstats(dm).in_use, RP - nfree);
	for (size_t i = 0, want = 0; i < nfree; i++, want++) {
		while (!freed[want])
			want++;
		pg[i] = uhmm_devmem_alloc_page(dm);
		CHECK_NONNULL(pg[i]);
		CHECK_EQ(pg[i]->pfn, want);
	}
	CHECK_PTR(uhmm_devmem_alloc_page(dm), NULL);
	for (size_t i = 0; i < nfree; i++)
		uhmm_page_put(pg[i]);
	CHECK_EQ(dmstats(dm).in_use, RP - nfree);
	CHECK_EQ(uhmm_migrate_to_ram(h, p, RP * PAGE), (int)(RP - nfree));
	CHECK_PATTERN_PAGES(p, RP, 0x10e5);
	CHECK_EQ(dmstats(dm).in_use, 0);
	CHECK_EQ(uhmm_free(h, p, RP * PAGE), 0);
	CHECK_EQ(uhmm_devmem_remove(dm), 0);
	uhmm_close(h);
}

/*
 * Pages taken and put back one at a time by several threads, in a region
 * whose last bitmap word is partial (200 pages: three words and 8 pages):
 * no page is held by two threads at once, and afterwards every page can be
 * taken again, lowest first, and none more.
 */
#define DP 200
#define DP_HOLD 64
#define DP_ROUNDS 20000

static atomic_int dp_owner[DP];

struct direct {
	struct uhmm_devmem *dm;
	pthread_barrier_t *go;
	int id;
	long taken;
};

static void *direct_main(void *arg)
{
	struct direct *d = arg;
	struct uhmm_page *held[DP_HOLD];

	pthread_barrier_wait(d->go);
	for (int r = 0; r < DP_ROUNDS; r++) {
		int n = 1 + (r + d->id) % DP_HOLD, got = 0;

		for (; got < n; got++) {
			int zero = 0;

			held[got] = uhmm_devmem_alloc_page(d->dm);
			if (!held[got])
				break; /* the others hold the rest */
			CHECK(held[got]->pfn < DP);
			CHECK_MSG(atomic_compare_exchange_strong(&dp_owner[held[got]->pfn], &zero,
								 d->id + 1),
				  "page %lu handed to thread %d while thread %d holds it",
				  held[got]->pfn, d->id + 1, zero);
		}
		d->taken += got;
		while (got-- > 0) {
			atomic_store(&dp_owner[held[got]->pfn], 0);
			uhmm_page_put(held[got]);
		}
	}
	return NULL;
}

TEST(pages_taken_and_put_back_by_several_threads)
{
	UHMM_OPTS(uhmm_devmem_desc, d, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = DP,
		  .owner = &rowner, .ops = &rops, .name = "direct");
	struct uhmm *h = uhmm_test_open_migrating();
	struct direct dd[NTHREADS];
	pthread_t tid[NTHREADS];
	pthread_barrier_t go;
	struct uhmm_page *all[DP];
	struct uhmm_devmem *dm;

	CHECK_EQ(uhmm_devmem_add(h, &d, &dm), 0);
	CHECK_EQ(pthread_barrier_init(&go, NULL, NTHREADS), 0);
	for (int t = 0; t < NTHREADS; t++) {
		dd[t] = (struct direct){ .dm = dm, .go = &go, .id = t };
		CHECK_EQ(pthread_create(&tid[t], NULL, direct_main, &dd[t]), 0);
	}
	for (int t = 0; t < NTHREADS; t++) {
		CHECK_EQ(pthread_join(tid[t], NULL), 0);
		CHECK_GT(dd[t].taken, DP_ROUNDS);
	}
	pthread_barrier_destroy(&go);
	CHECK_EQ(dmstats(dm).in_use, 0);
	for (size_t i = 0; i < DP; i++) {
		all[i] = uhmm_devmem_alloc_page(dm);
		CHECK_NONNULL(all[i]);
		CHECK_EQ(all[i]->pfn, i);
	}
	CHECK_PTR(uhmm_devmem_alloc_page(dm), NULL);
	CHECK_EQ(dmstats(dm).in_use, DP);
	for (size_t i = 0; i < DP; i++)
		uhmm_page_put(all[i]);
	CHECK_EQ(dmstats(dm).in_use, 0);
	CHECK_EQ(uhmm_devmem_remove(dm), 0);
	uhmm_close(h);
}
