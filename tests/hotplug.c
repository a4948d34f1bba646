/* hotplug: a device is removed, or dies, while toucher threads and a migrator keep running: nothing is lost but the pages the dead device held, and exactly those raise SIGBUS. */
/* uhmm-test-label: concurrent */
/*
 * Toucher threads own disjoint words of every page (word w: thread w % NT)
 * and check and rewrite them pass after pass, each access guarded by a
 * per-thread sigsetjmp (harness_bus_jmp: the harness's SIGBUS handler calls
 * uhmm_sigbus_handler first, then jumps). A migrator sends random runs to the
 * devices and home. Rounds alternate:
 *  - removal: the migrator is moved off device X, then X is destroyed while
 *    the touchers run: every page comes home, none is poisoned;
 *  - death: the migrator is moved off X, X's pages are listed (from its page
 *    descriptors, uhmm_page_addr), X dies while the touchers run, then it is
 *    destroyed: only listed pages may be poisoned, each poisoned page raises
 *    SIGBUS, every other word holds its owner's last value.
 */
#include "harness.h"

#include <stdatomic.h>

#define NP 256
#define NT 3
#define WPP (PAGE / 8)
#define DEV_PAGES NP
#define ROUNDS 16

struct hp {
	struct uhmm *h;
	struct uhmm_sim *sim[2];
	volatile uint64_t *buf;
	uint64_t shadow[NP * WPP];
	atomic_int lost[NP]; /* a toucher got SIGBUS on it */
	pthread_rwlock_t world; /* shared: touchers; exclusive: the checks */
	/* The migrator: which devices it may use (bit i: sim[i]), with a handshake. */
	atomic_int mig_mask;
	atomic_ulong mig_gen, mig_ack;
	atomic_int stop;
	atomic_ulong touches, sigbus, migrations;
};

struct toucher {
	struct hp *hp;
	int t;
	pthread_t tid;
};

/* Check and rewrite thread t's words of page p; 1 when the page raised SIGBUS. */
static int touch_page(struct hp *hp, int t, size_t p, uint64_t salt)
{
	sigjmp_buf jb;
	volatile uint64_t *pg = hp->buf + p * WPP;

	harness_bus_addr = NULL;
	if (sigsetjmp(jb, 1) == 0) {
		harness_bus_jmp = &jb;
		for (size_t w = (size_t)t; w < WPP; w += NT) {
			uint64_t v = pg[w];

			CHECK_MSG(v == hp->shadow[p * WPP + w],
				  "thread %d page %zu word %zu: read 0x%016llx, expected 0x%016llx "
				  "(state %s)",
				  t, p, w, (unsigned long long)v,
				  (unsigned long long)hp->shadow[p * WPP + w],
				  page_state_name(uhmm_page_state(hp->h, (const void *)pg)));
			v = salt ^ (p << 20) ^ w;
			pg[w] = v;
			hp->shadow[p * WPP + w] = v;
		}
		harness_bus_jmp = NULL;
		return 0;
	}
	/* The page was lost with its device: on the first access, nothing was written. */
	CHECK_MSG((uintptr_t)harness_bus_addr - (uintptr_t)pg < PAGE,
		  "SIGBUS at %p while touching page %zu at %p", harness_bus_addr, p,
		  (const void *)pg);
	return 1;
}

static void *toucher_main(void *arg)
{
	struct toucher *tc = arg;
	struct hp *hp = tc->hp;
	struct prng rng = { 0x70c4e7ULL * (uint64_t)(tc->t + 1) };

	while (!atomic_load(&hp->stop)) {
		size_t first = (size_t)prng_below(&rng, NP);

		for (size_t k = 0; k < NP && !atomic_load(&hp->stop); k++) {
			size_t p = (first + k) % NP;

			pthread_rwlock_rdlock(&hp->world);
			if (!atomic_load(&hp->lost[p])) {
				if (touch_page(hp, tc->t, p, prng_next(&rng))) {
					atomic_store(&hp->lost[p], 1);
					atomic_fetch_add(&hp->sigbus, 1);
				}
				atomic_fetch_add_explicit(&hp->touches, 1, memory_order_relaxed);
			}
			pthread_rwlock_unlock(&hp->world);
		}
	}
	return NULL;
}

static void *migrator_main(void *arg)
{
	struct hp *hp = arg;
	struct prng rng = { 0x3161ULL };

	while (!atomic_load(&hp->stop)) {
		unsigned long gen = atomic_load(&hp->mig_gen);
		int mask = atomic_load(&hp->mig_mask);
		size_t p0 = (size_t)prng_below(&rng, NP), n = 1 + (size_t)prng_below(&rng, 32);
		int d = (int)prng_below(&rng, 2);

		if (p0 + n > NP)
			n = NP - p0;
		if (!(mask & (1 << d)))
			d = !d;
		if (mask & (1 << d)) {
			int r = uhmm_migrate_to_device(uhmm_sim_devmem(hp->sim[d]),
						       (void *)(hp->buf + p0 * WPP), n * PAGE);

			CHECK_GE(r, 0);
			if (prng_below(&rng, 3) == 0)
				CHECK_GE(uhmm_migrate_to_ram(hp->h, (void *)(hp->buf + p0 * WPP),
							     n * PAGE),
					 0);
			atomic_fetch_add_explicit(&hp->migrations, 1, memory_order_relaxed);
		} else {
			usleep(1000);
		}
		atomic_store(&hp->mig_ack, gen);
	}
	return NULL;
}

/* Change the devices the migrator uses; returns once no call uses the old set. */
static void migrate_only(struct hp *hp, int mask)
{
	unsigned long g;

	atomic_store(&hp->mig_mask, mask);
	g = atomic_fetch_add(&hp->mig_gen, 1) + 1;
	while (atomic_load(&hp->mig_ack) < g)
		usleep(200);
}

/* The pages device d holds now, from its page descriptors. */
static void device_pages(struct hp *hp, int d, bool *on)
{
	struct uhmm_devmem *dm = uhmm_sim_devmem(hp->sim[d]);

	memset(on, 0, NP * sizeof(*on));
	for (unsigned long pfn = 0; pfn < DEV_PAGES; pfn++) {
		uintptr_t a = uhmm_page_addr(uhmm_devmem_page(dm, pfn));

		if (a - (uintptr_t)hp->buf < NP * PAGE)
			on[(a - (uintptr_t)hp->buf) / PAGE] = true;
	}
}

/*
 * With the touchers held: every page holds its model, or is poisoned and was
 * on the dead device (@maybe, NULL: none may be). Poisoned pages are then
 * discarded, so their words read zeros from now on. Returns how many.
 */
static size_t check_and_heal(struct hp *hp, const bool *maybe)
{
	size_t npoison = 0;

	pthread_rwlock_wrlock(&hp->world);
	CHECK_EQ(uhmm_sync(hp->h), 0);
	for (size_t p = 0; p < NP; p++) {
		int st = uhmm_page_state(hp->h, (const void *)(hp->buf + p * WPP));

		if (st == UHMM_PAGE_POISON) {
			CHECK_MSG(maybe && maybe[p], "page %zu is poisoned but was not on the dead device", p);
			CHECK_EQ(touch_expect_sigbus((volatile char *)(hp->buf + p * WPP) + 8), 1);
			CHECK_EQ(madvise((void *)(hp->buf + p * WPP), PAGE, MADV_DONTNEED), 0);
			memset(&hp->shadow[p * WPP], 0, PAGE);
			atomic_store(&hp->lost[p], 0);
			npoison++;
			continue;
		}
		CHECK_MSG(!atomic_load(&hp->lost[p]), "page %zu raised SIGBUS but is %s now", p,
			  page_state_name(st));
		CHECK_MEM((const void *)(hp->buf + p * WPP), &hp->shadow[p * WPP], PAGE);
	}
	pthread_rwlock_unlock(&hp->world);
	return npoison;
}

static struct uhmm_sim *new_sim(struct uhmm *h)
{
	return uhmm_test_sim(h, DEV_PAGES);
}

static void run_hotplug(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	static struct hp hp;
	static struct toucher tc[NT];
	static bool was_on[NP];
	pthread_t mig;
	struct prng rng;
	unsigned long long poisoned_total = 0;
	size_t lost_total = 0;
	void *p = NULL;
	int r;

	memset(&hp, 0, sizeof(hp));
	r = uhmm_open(&hp.h, &o);
	if (r == -EPERM || r == -ENOSYS)
		SKIP("userfaultfd unavailable: %s", uhmm_strerror(r));
	if (r == -EOPNOTSUPP)
		SKIP("this fault mode is not available here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(hp.h);
	prng_init(&rng, mode == UHMM_FAULT_THREAD ? 0x4019001 : 0x4019002, "hotplug");
	hp.sim[0] = new_sim(hp.h);
	hp.sim[1] = new_sim(hp.h);
	CHECK_EQ(uhmm_alloc(hp.h, NP * PAGE, &p), 0);
	hp.buf = p;
	{
		pthread_rwlockattr_t ra;

		/* Writers first: the checks must not starve behind the touchers. */
		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&hp.world, &ra);
		pthread_rwlockattr_destroy(&ra);
	}
	atomic_store(&hp.mig_mask, 3);
	for (int t = 0; t < NT; t++) {
		tc[t].hp = &hp;
		tc[t].t = t;
		CHECK_EQ(pthread_create(&tc[t].tid, NULL, toucher_main, &tc[t]), 0);
	}
	CHECK_EQ(pthread_create(&mig, NULL, migrator_main, &hp), 0);

	for (int round = 0; round < ROUNDS; round++) {
		int x = (int)prng_below(&rng, 2);
		unsigned long long p0 = hstats(hp.h).poisoned;
		size_t npoison;

		usleep(100000); /* load: both devices, touchers pulling pages home */
		/* From here on nothing new reaches device x. */
		migrate_only(&hp, 1 << !x);
		if (round % 2 == 0) {
			/* Hot-removal under load: everything comes home. */
			r = uhmm_sim_destroy(hp.sim[x]);
			CHECK_EQ(r, 0);
			hp.sim[x] = new_sim(hp.h);
			npoison = check_and_heal(&hp, NULL);
			CHECK_EQ(npoison, 0);
			CHECK_EQ(hstats(hp.h).poisoned, p0);
			NOTE("round %d: device %d removed under load, nothing lost", round, x);
		} else {
			/* Death under load: only what x held may be lost. */
			size_t q0 = (size_t)prng_below(&rng, NP - 64);

			CHECK_GE(uhmm_migrate_to_device(uhmm_sim_devmem(hp.sim[x]),
							(void *)(hp.buf + q0 * WPP), 64 * PAGE),
				 0);
			device_pages(&hp, x, was_on);
			size_t held = 0;

			for (size_t i = 0; i < NP; i++)
				held += was_on[i];
			CHECK_EQ(uhmm_sim_kill(hp.sim[x]), 0);
			/* Touchers meet the dead device's pages; or removal does, first. */
			if (prng_below(&rng, 2))
				usleep(50000);
			r = uhmm_sim_destroy(hp.sim[x]);
			CHECK_GE(r, 0);
			hp.sim[x] = new_sim(hp.h);
			npoison = check_and_heal(&hp, was_on);
			CHECK_LE(npoison, held);
			CHECK_EQ(hstats(hp.h).poisoned - p0, npoison);
			NOTE("round %d: device %d died holding %zu pages: %zu lost (%d of them poisoned "
			     "by its removal), every other page intact",
			     round, x, held, npoison, r);
			lost_total += npoison;
			poisoned_total += hstats(hp.h).poisoned - p0;
		}
		migrate_only(&hp, 3);
	}
	atomic_store(&hp.stop, 1);
	for (int t = 0; t < NT; t++)
		CHECK_EQ(pthread_join(tc[t].tid, NULL), 0);
	CHECK_EQ(pthread_join(mig, NULL), 0);
	CHECK_EQ(check_and_heal(&hp, NULL), 0);
	NOTE("%lu touches, %lu migrations, %lu SIGBUS caught by touchers, %zu pages lost with dead "
	     "devices (%llu poisoned)",
	     atomic_load(&hp.touches), atomic_load(&hp.migrations), atomic_load(&hp.sigbus),
	     lost_total, poisoned_total);
	CHECK_GT(atomic_load(&hp.migrations), 0);

	CHECK_EQ(uhmm_free(hp.h, (void *)hp.buf, NP * PAGE), 0);
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(dmstats(uhmm_sim_devmem(hp.sim[i])).in_use, 0);
		CHECK_EQ(uhmm_sim_destroy(hp.sim[i]), 0);
	}
	pthread_rwlock_destroy(&hp.world);
	uhmm_close(hp.h);
}

TEST(remove_and_kill_devices_under_load_thread_mode)
{
	run_hotplug(UHMM_FAULT_THREAD);
}

TEST(remove_and_kill_devices_under_load_signal_mode)
{
	run_hotplug(UHMM_FAULT_SIGNAL);
}
