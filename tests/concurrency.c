/* concurrency: CPU readers and writers racing migrations of the same pages, and migrations racing each other, lose nothing and count nothing twice. */
/* uhmm-test-label: concurrent */
#include "harness.h"

#include <stdatomic.h>

/* Built with ThreadSanitizer (gcc says so one way, clang another). */
#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#ifndef TSAN
#define TSAN 0
#endif

#define CC_LEN (4 * MiB)
#define CC_PAGES (CC_LEN / PAGE) /* 1024 */
#define WORDS (PAGE / 8)
#define NWORKERS 2
#define MIGRATIONS 100

struct shared {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	volatile uint64_t *buf;
	atomic_int stop;
	pthread_barrier_t start;
	long long total_out, total_home;
};

struct worker {
	struct shared *sh;
	int t;
	uint32_t cnt[CC_PAGES]; /* how often this thread wrote each page */
	unsigned long iters;
	pthread_t tid;
};

/* The value thread @t keeps in word @w of page @p after its @c-th write. */
static uint64_t val(int t, size_t p, size_t w, uint32_t c)
{
	return ((uint64_t)c << 32) | ((uint64_t)t << 31) | ((uint64_t)p << 9) | w;
}

/* Thread t owns the words w with w % NWORKERS == t, in every page. */
static void check_owned(const volatile uint64_t *pg, int t, size_t p, uint32_t c)
{
	for (size_t w = (size_t)t; w < WORDS; w += NWORKERS) {
		uint64_t v = pg[w];

		CHECK_MSG(v == val(t, p, w, c),
			  "thread %d: page %zu word %zu: read 0x%016llx, expected 0x%016llx", t, p, w,
			  (unsigned long long)v, (unsigned long long)val(t, p, w, c));
	}
}

static void *rw_thread(void *arg)
{
	struct worker *wk = arg;
	struct shared *sh = wk->sh;
	struct prng rng;
	int t = wk->t;

	rng.s = 0x1234567ULL + (uint64_t)t * 0x9e3779b97f4a7c15ULL;
	pthread_barrier_wait(&sh->start);
	/* At least a few passes, and keep going until the migrations are done. */
	while (wk->iters < 3 || !atomic_load(&sh->stop)) {
		size_t first = (size_t)prng_below(&rng, CC_PAGES);

		for (size_t k = 0; k < CC_PAGES; k++) {
			size_t p = (first + k) % CC_PAGES;
			volatile uint64_t *pg = sh->buf + p * WORDS;
			uint32_t c = wk->cnt[p];

			check_owned(pg, t, p, c);
			c++;
			for (size_t w = (size_t)t; w < WORDS; w += NWORKERS)
				pg[w] = val(t, p, w, c);
			wk->cnt[p] = c;
		}
		wk->iters++;
	}
	return NULL;
}

static void *migrator_thread(void *arg)
{
	struct shared *sh = arg;

	pthread_barrier_wait(&sh->start);
	for (int i = 0; i < MIGRATIONS; i++) {
		int r = uhmm_migrate_to_device(sh->dm, (void *)sh->buf, CC_LEN);

		CHECK_GE(r, 0);
		sh->total_out += r;
		r = uhmm_migrate_to_ram(sh->h, (void *)sh->buf, CC_LEN);
		CHECK_GE(r, 0);
		sh->total_home += r;
	}
	atomic_store(&sh->stop, 1);
	return NULL;
}

TEST(readers_writers_race_migrations)
{
	static struct worker wk[NWORKERS];
	struct shared sh;
	struct uhmm_devmem_stats ds;
	struct uhmm_stats st;
	struct uhmm_sim *sim;
	pthread_t mig;
	void *p = NULL;

	memset(&sh, 0, sizeof(sh));
	sh.h = uhmm_test_open_migrating();
	sim = uhmm_test_sim(sh.h, 2 * CC_PAGES);
	sh.dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_alloc(sh.h, CC_LEN, &p), 0);
	sh.buf = p;
	NOTE("%d writer threads, %d migrations of %zu pages to the device and back", NWORKERS,
	     MIGRATIONS, (size_t)CC_PAGES);
	for (size_t pg = 0; pg < CC_PAGES; pg++)
		for (size_t w = 0; w < WORDS; w++)
			sh.buf[pg * WORDS + w] = val((int)(w % NWORKERS), pg, w, 0);

	CHECK_EQ(pthread_barrier_init(&sh.start, NULL, NWORKERS + 1), 0);
	for (int t = 0; t < NWORKERS; t++) {
		memset(&wk[t], 0, sizeof(wk[t]));
		wk[t].sh = &sh;
		wk[t].t = t;
		CHECK_EQ(pthread_create(&wk[t].tid, NULL, rw_thread, &wk[t]), 0);
	}
	CHECK_EQ(pthread_create(&mig, NULL, migrator_thread, &sh), 0);
	CHECK_EQ(pthread_join(mig, NULL), 0);
	for (int t = 0; t < NWORKERS; t++)
		CHECK_EQ(pthread_join(wk[t].tid, NULL), 0);
	pthread_barrier_destroy(&sh.start);
	NOTE("moved %lld pages out and %lld home explicitly; passes: %lu, %lu", sh.total_out,
	     sh.total_home, wk[0].iters, wk[1].iters);
	CHECK_GT(sh.total_out, 0);

	/* Consistent accounting: what went out and did not come home is resident. */
	ds = dmstats(sh.dm);
	st = hstats(sh.h);
	CHECK_EQ(ds.in_use, count_state(sh.h, p, CC_PAGES, UHMM_PAGE_DEVICE));
	CHECK_EQ(ds.resident, ds.in_use);
	CHECK_EQ(st.pages_out, sh.total_out);
	CHECK_EQ(st.pages_out - st.pages_home, ds.resident);
	CHECK_EQ(st.poisoned, 0);

	/* Every word holds its owner's last value. */
	for (size_t pg = 0; pg < CC_PAGES; pg++)
		for (int t = 0; t < NWORKERS; t++)
			check_owned(sh.buf + pg * WORDS, t, pg, wk[t].cnt[pg]);
	CHECK_EQ(dmstats(sh.dm).in_use, 0);

	CHECK_EQ(uhmm_free(sh.h, p, CC_LEN), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(sh.h);
}

/* ---- two threads migrate the same range to the device at once ---- */

#define ROUNDS 50

struct dual {
	struct uhmm_devmem *dm;
	char *buf;
	pthread_barrier_t go, done;
	int ret[2][ROUNDS];
};

struct dual_arg {
	struct dual *d;
	int i;
};

static void *dual_migrator(void *arg)
{
	struct dual_arg *a = arg;
	struct dual *d = a->d;

	for (int r = 0; r < ROUNDS; r++) {
		pthread_barrier_wait(&d->go);
		d->ret[a->i][r] = uhmm_migrate_to_device(d->dm, d->buf, CC_LEN);
		pthread_barrier_wait(&d->done);
	}
	return NULL;
}

TEST(two_threads_migrate_same_range)
{
	static struct dual d;
	struct dual_arg arg[2];
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 2 * CC_PAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_devmem_stats ds;
	struct uhmm_stats st;
	pthread_t tid[2];
	struct prng rng;
	long long sum = 0;
	uint64_t seed;
	void *p = NULL;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, CC_LEN, &p), 0);
	buf = p;
	prng_init(&rng, 0xd0a1d0a1, "two migrators");
	seed = prng_next(&rng);
	pattern_fill(buf, CC_LEN, seed);

	d.dm = dm;
	d.buf = buf;
	CHECK_EQ(pthread_barrier_init(&d.go, NULL, 3), 0);
	CHECK_EQ(pthread_barrier_init(&d.done, NULL, 3), 0);
	for (int i = 0; i < 2; i++) {
		arg[i].d = &d;
		arg[i].i = i;
		CHECK_EQ(pthread_create(&tid[i], NULL, dual_migrator, &arg[i]), 0);
	}
	for (int r = 0; r < ROUNDS; r++) {
		int r0, r1;

		pthread_barrier_wait(&d.go);
		pthread_barrier_wait(&d.done);
		r0 = d.ret[0][r];
		r1 = d.ret[1][r];
		CHECK_GE(r0, 0);
		CHECK_GE(r1, 0);
		sum += r0 + r1;
		/* Each page moved once, by one of them: no double counting. */
		ds = dmstats(dm);
		CHECK_EQ(r0 + r1, CC_PAGES);
		CHECK_EQ(count_state(h, buf, CC_PAGES, UHMM_PAGE_DEVICE), CC_PAGES);
		CHECK_EQ(ds.in_use, CC_PAGES);
		CHECK_EQ(ds.resident, CC_PAGES);

		/* Home again: by CPU touches (checking every byte) or explicitly. */
		if (r % 2 == 0) {
			size_t *perm = prng_perm(&rng, CC_PAGES);

			for (size_t i = 0; i < CC_PAGES; i++)
				CHECK_PATTERN_PAGE(buf, perm[i], seed);
			free(perm);
		} else {
			CHECK_EQ(uhmm_migrate_to_ram(h, buf, CC_LEN), CC_PAGES);
		}
		CHECK_EQ(dmstats(dm).in_use, 0);
	}
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_join(tid[i], NULL), 0);
	pthread_barrier_destroy(&d.go);
	pthread_barrier_destroy(&d.done);
	NOTE("sum of counts returned over %d rounds: %lld (%d pages)", ROUNDS, sum, (int)CC_PAGES);
	CHECK_EQ(sum, (long long)ROUNDS * CC_PAGES);
	st = hstats(h);
	CHECK_EQ(st.pages_out, sum);
	CHECK_EQ(st.pages_home, sum);
	for (size_t i = 0; i < CC_PAGES; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);

	CHECK_EQ(uhmm_free(h, buf, CC_LEN), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* ---- one thread migrates to the device while another brings pages home ---- */

struct tug {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	char *buf;
	pthread_barrier_t *start;
	long long moved;
	int dir;
};

/* Random sub-ranges, so that the two threads meet on every kind of overlap. */
static void *tug_thread(void *arg)
{
	struct tug *g = arg;
	struct prng rng;

	rng.s = 0x7a6a7a6aULL + (uint64_t)g->dir;
	pthread_barrier_wait(g->start);
	for (int i = 0; i < 2000; i++) {
		size_t first = (size_t)prng_below(&rng, CC_PAGES);
		size_t n = 1 + (size_t)prng_below(&rng, CC_PAGES - first < 64 ? CC_PAGES - first : 64);
		char *a = g->buf + first * PAGE;
		int r = g->dir ? uhmm_migrate_to_device(g->dm, a, n * PAGE)
			       : uhmm_migrate_to_ram(g->h, a, n * PAGE);

		CHECK_GE(r, 0);
		CHECK_LE(r, (long long)n);
		g->moved += r;
	}
	return NULL;
}

TEST(migrations_to_device_and_to_ram_race)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 2 * CC_PAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_devmem_stats ds;
	struct uhmm_stats st;
	static struct tug g[2];
	pthread_barrier_t start;
	pthread_t tid[2];
	struct prng rng;
	uint64_t seed;
	void *p = NULL;
	char *buf;
	size_t ndev;

	CHECK_EQ(uhmm_alloc(h, CC_LEN, &p), 0);
	buf = p;
	prng_init(&rng, 0x7a6a7a6a, "tug of war");
	seed = prng_next(&rng);
	pattern_fill(buf, CC_LEN, seed);
	CHECK_EQ(pthread_barrier_init(&start, NULL, 2), 0);
	for (int i = 0; i < 2; i++) {
		g[i].h = h;
		g[i].dm = dm;
		g[i].buf = buf;
		g[i].dir = i;
		g[i].start = &start;
	}
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_create(&tid[i], NULL, tug_thread, &g[i]), 0);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_join(tid[i], NULL), 0);
	pthread_barrier_destroy(&start);
	NOTE("moved out %lld, home %lld", g[1].moved, g[0].moved);

	ndev = count_state(h, buf, CC_PAGES, UHMM_PAGE_DEVICE);
	ds = dmstats(dm);
	st = hstats(h);
	CHECK_EQ(ds.in_use, ndev);
	CHECK_EQ(ds.resident, ndev);
	CHECK_EQ(st.pages_out, g[1].moved);
	CHECK_EQ(st.pages_home, g[0].moved);
	CHECK_EQ(g[1].moved - g[0].moved, (long long)ndev);
	CHECK_EQ(count_state(h, buf, CC_PAGES, UHMM_PAGE_POISON), 0);
	for (size_t i = 0; i < CC_PAGES; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(dmstats(dm).in_use, 0);

	CHECK_EQ(uhmm_free(h, buf, CC_LEN), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

struct toucher {
	const char *buf;
	size_t first, n;
	uint64_t seed;
	pthread_barrier_t *go;
	size_t bad; /* pages whose words did not read back */
};

static void *toucher_thread(void *arg)
{
	struct toucher *t = arg;

	pthread_barrier_wait(t->go);
	for (size_t i = t->first; i < t->first + t->n; i++) {
		const uint64_t *w = (const uint64_t *)(t->buf + i * PAGE);

		if (w[0] != pattern_word(i * PAGE, t->seed) ||
		    w[WORDS - 1] != pattern_word(i * PAGE + PAGE - 8, t->seed))
			t->bad++;
	}
	return NULL;
}

/* Sweep [0, npages) of @buf with @n threads, each its share; returns the pages read wrong. */
static size_t sweep(const char *buf, size_t npages, int n, uint64_t seed)
{
	struct toucher t[2];
	pthread_t tid[2];
	pthread_barrier_t go;
	size_t bad = 0;

	pthread_barrier_init(&go, NULL, (unsigned int)n);
	for (int i = 0; i < n; i++) {
		t[i] = (struct toucher){ .buf = buf, .first = npages * (size_t)i / (size_t)n,
					 .n = npages / (size_t)n, .seed = seed, .go = &go };
		CHECK_EQ(pthread_create(&tid[i], NULL, toucher_thread, &t[i]), 0);
	}
	for (int i = 0; i < n; i++) {
		CHECK_EQ(pthread_join(tid[i], NULL), 0);
		bad += t[i].bad;
	}
	pthread_barrier_destroy(&go);
	return bad;
}

/*
 * Thread mode, a driver that never blocks (the sim): one toucher is served
 * on the service thread itself, every fault; two sweeping at once are
 * served in parallel, the fault workers taking some of their faults. Every
 * byte comes home either way.
 */
TEST(two_touchers_share_the_fault_service)
{
	const size_t npages = 64 * MiB / PAGE;
	struct uhmm *h = uhmm_test_open_mode(UHMM_FAULT_THREAD);
	struct uhmm_sim *sim;
	struct uhmm_stats s0, s1, base;
	const uint64_t seed = 0x70c4e5;
	char *buf;
	int round;

	uhmm_test_require_migrate(h);
	if (!(uhmm_features(h) & UHMM_FEAT_THREAD_ID))
		SKIP("no UFFD_FEATURE_THREAD_ID: faults of two threads look alike");
	sim = uhmm_test_sim(h, npages);
	CHECK_EQ(uhmm_alloc(h, npages * PAGE, (void **)&buf), 0);
	pattern_fill(buf, npages * PAGE, seed);

	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, npages * PAGE),
		 (long long)npages);
	s0 = hstats(h);
	CHECK_EQ(sweep(buf, npages, 1, seed), 0);
	s1 = hstats(h);
	CHECK(s1.faults_device > s0.faults_device);
	CHECK_EQ(s1.faults_worker, s0.faults_worker);

	/*
	 * Two at once: workers serve both touchers' faults, not only the
	 * second's (then about a third went to workers); rounds until they
	 * overlapped (a loaded machine). Under TSan a 2 MiB run takes
	 * milliseconds to come home, so the touchers' faults are rarely within
	 * SVC_SHARE_NS of each other (2-4 of 41 went to workers): there, only
	 * that workers served some.
	 */
	base = hstats(h);
	for (round = 0; round < 20; round++) {
		CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, npages * PAGE),
			 (long long)npages);
		s0 = hstats(h);
		CHECK_EQ(sweep(buf, npages, 2, seed), 0);
		s1 = hstats(h);
		CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_SYSTEM), npages);
		if (2 * (s1.faults_worker - s0.faults_worker) > s1.faults_device - s0.faults_device ||
		    (TSAN && s1.faults_worker > s0.faults_worker))
			break;
	}
	NOTE("%d rounds, %llu faults of %llu by workers in the last", round,
	     (unsigned long long)(s1.faults_worker - s0.faults_worker),
	     (unsigned long long)(s1.faults_device - s0.faults_device));
	if (TSAN)
		CHECK(hstats(h).faults_worker > base.faults_worker);
	else
		CHECK(2 * (s1.faults_worker - s0.faults_worker) >
		      s1.faults_device - s0.faults_device);
	CHECK_PATTERN_PAGES(buf, npages, seed);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * The first uhmm_prefetch_async starts the prefetch worker; another thread
 * may wait on its ticket at once (tickets are the handle's, not the
 * thread's). The waiter spins on uhmm_prefetch_wait(1) until the ticket
 * exists, reading the worker without a lock while the first call creates
 * it: it must find it whole, and get the prefetch's result.
 */
struct pf_wait {
	struct uhmm *h;
	int result; /* read after the join */
};

static void *wait_first_ticket(void *arg)
{
	struct pf_wait *w = arg;
	double t0 = harness_now();
	int ret;

	while ((ret = uhmm_prefetch_wait(w->h, 1)) == -EINVAL && harness_now() - t0 < 10)
		;
	w->result = ret;
	return NULL;
}

TEST(another_thread_waits_on_the_first_async_prefetch)
{
	const size_t n = 32;

	for (int round = 0; round < 50; round++) {
		struct pf_wait w = { .h = uhmm_test_open_migrating() };
		struct uhmm_sim *sim = uhmm_test_sim(w.h, n);
		uint64_t ticket = 0;
		pthread_t t;
		void *p = NULL;

		CHECK_EQ(uhmm_alloc(w.h, n * PAGE, &p), 0);
		pattern_fill(p, n * PAGE, 0xaf00 + (uint64_t)round);
		CHECK_EQ(pthread_create(&t, NULL, wait_first_ticket, &w), 0);
		CHECK_EQ(uhmm_prefetch_async(w.h, p, n * PAGE, uhmm_sim_devmem(sim), &ticket), 0);
		CHECK_EQ(ticket, 1);
		CHECK_EQ(pthread_join(t, NULL), 0);
		CHECK_EQ(w.result, (int)n);
		CHECK_EQ(count_state(w.h, p, n, UHMM_PAGE_DEVICE), n);
		CHECK_PATTERN_PAGES(p, n, 0xaf00 + (uint64_t)round);
		CHECK_EQ(uhmm_sim_destroy(sim), 0);
		uhmm_close(w.h);
	}
}
