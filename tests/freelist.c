/* freelist: device pages allocated and released by several threads at once are never handed out twice, and the free list is race-free (TSan). */
/* uhmm-test-label: concurrent */
/*
 * Under TSan this guards the free list's links: page->next_free is read by a
 * pop in one thread while a push writes it in another, so both use relaxed
 * atomics (src/devmem.c); the tagged compare-and-swap orders the rest.
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

TEST(alloc_and_put_from_several_threads)
{
	static struct worker wk[NTHREADS];
	struct shared sh;
	struct uhmm_sim *sim;

	sh.h = uhmm_test_open_migrating();
	sim = uhmm_test_sim(sh.h, NTHREADS * NP);
	sh.dm = uhmm_sim_devmem(sim);
	CHECK_EQ(pthread_barrier_init(&sh.go, NULL, NTHREADS), 0);
	for (int t = 0; t < NTHREADS; t++) {
		void *p = NULL;

		CHECK_EQ(uhmm_alloc(sh.h, NP * PAGE, &p), 0);
		wk[t] = (struct worker){ .sh = &sh, .buf = p, .seed = 0xf1ee0000ULL + (uint64_t)t };
		pattern_fill(wk[t].buf, NP * PAGE, wk[t].seed);
	}
	for (int t = 0; t < NTHREADS; t++)
		CHECK_EQ(pthread_create(&wk[t].tid, NULL, worker_main, &wk[t]), 0);
	for (int t = 0; t < NTHREADS; t++)
		CHECK_EQ(pthread_join(wk[t].tid, NULL), 0);
	pthread_barrier_destroy(&sh.go);
	/* Every page went out and came home with its own data: no device page served two. */
	for (int t = 0; t < NTHREADS; t++) {
		for (size_t i = 0; i < NP; i++)
			CHECK_PATTERN_PAGE(wk[t].buf, i, wk[t].seed);
		CHECK_EQ(uhmm_free(sh.h, wk[t].buf, NP * PAGE), 0);
	}
	CHECK_EQ(dmstats(sh.dm).in_use, 0);
	CHECK_EQ(dmstats(sh.dm).page_frees, (uint64_t)NTHREADS * NP * ROUNDS);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(sh.h);
}
