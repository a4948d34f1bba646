/* policy.c - prefetch, eviction policies (oversubscription), thrashing control, device counters. */
#include "harness.h"

#define DEVPAGES 64

static size_t count_device(struct uhmm *h, const char *buf, size_t npages)
{
	size_t n = 0;

	for (size_t i = 0; i < npages; i++)
		n += uhmm_page_state(h, buf + i * PAGE) == UHMM_PAGE_DEVICE;
	return n;
}

TEST(prefetch_to_device_and_back_counts)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_devmem_stats d;
	void *p;

	CHECK_EQ(uhmm_alloc(h, 32 * PAGE, &p), 0);
	pattern_fill(p, (32) * PAGE, 1);
	CHECK_EQ(uhmm_prefetch(h, p, 32 * PAGE, dm), 32);
	CHECK_EQ(count_device(h, p, 32), 32);
	d = dmstats(dm);
	CHECK_EQ(d.prefetched, 32);
	CHECK_EQ(d.pages_to, 32);
	CHECK_EQ(d.bytes_to, 32 * PAGE);
	CHECK_EQ(uhmm_prefetch(h, p, 32 * PAGE, NULL), 32);
	CHECK_EQ(count_device(h, p, 32), 0);
	d = dmstats(dm);
	CHECK_EQ(d.pages_from, 32);
	CHECK_EQ(d.faults, 0);
	CHECK_PATTERN_PAGES(p, 32, 1);
	CHECK_EQ(uhmm_prefetch(NULL, p, 32 * PAGE, dm), -EINVAL);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(async_prefetches_run_in_order_and_report)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	uint64_t t1, t2, t3;
	void *p;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, 16 * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, (16) * PAGE, 2);
	CHECK_EQ(uhmm_prefetch_wait(h, 1), -EINVAL); /* nothing issued yet */
	CHECK_EQ(uhmm_prefetch_async(h, buf, 16 * PAGE, dm, &t1), 0);
	CHECK_EQ(uhmm_prefetch_async(h, buf, 8 * PAGE, NULL, &t2), 0);
	CHECK_EQ(uhmm_prefetch_async(h, buf + 1, PAGE, NULL, &t3), -EINVAL);
	CHECK_LT(t1, t2);
	CHECK_EQ(uhmm_prefetch_wait(h, t2), 8);
	CHECK_EQ(uhmm_prefetch_wait(h, t1), 16);
	CHECK_EQ(uhmm_prefetch_wait(h, t2 + 1), -EINVAL);
	CHECK_EQ(count_device(h, buf, 16), 8);
	CHECK_PATTERN_PAGES(buf, 16, 2);
	/* Close with prefetches queued: they run, nothing is lost. */
	CHECK_EQ(uhmm_prefetch_async(h, buf, 16 * PAGE, dm, &t3), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	CHECK_PATTERN_PAGES(buf, 16, 2);
	uhmm_close(h);
}

TEST(full_device_without_policy_stops_with_enomem)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	void *p;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, 2 * DEVPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, (2 * DEVPAGES) * PAGE, 3);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, 2 * DEVPAGES * PAGE), DEVPAGES);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf + DEVPAGES * PAGE, DEVPAGES * PAGE), -ENOMEM);
	CHECK_EQ(dmstats(dm).evictions, 0);
	CHECK_PATTERN_PAGES(buf, 2 * DEVPAGES, 3);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

static void evict_order(const struct uhmm_evict_policy *pol, bool lru)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_page *pg;
	void *p;
	char *buf;
	size_t half = DEVPAGES / 2;

	CHECK_EQ(uhmm_devmem_set_evict(dm, pol), 0);
	CHECK_EQ(uhmm_alloc(h, (DEVPAGES + half) * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, (DEVPAGES + half) * PAGE, 4);
	/* Two batches fill the device: first A = [0, half), then B = [half, DEVPAGES). */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, half * PAGE), (long long)half);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf + half * PAGE, half * PAGE), (long long)half);
	/* The device uses A again: A is now the most recently used. */
	for (unsigned long pfn = 0; pfn < DEVPAGES; pfn++) {
		pg = uhmm_devmem_page(dm, pfn);
		if (uhmm_page_addr(pg) && uhmm_page_addr(pg) < (uintptr_t)buf + half * PAGE)
			uhmm_page_mark_accessed(pg);
	}
	/* C = [DEVPAGES, DEVPAGES + half) needs room for half pages. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf + DEVPAGES * PAGE, half * PAGE), (long long)half);
	CHECK_EQ(dmstats(dm).evictions, half);
	CHECK_EQ(count_device(h, buf + DEVPAGES * PAGE, half), half);
	if (lru) {
		/* LRU sent B home, the least recently used. */
		CHECK_EQ(count_device(h, buf, half), half);
		CHECK_EQ(count_device(h, buf + half * PAGE, half), 0);
	} else {
		/* FIFO sent A home, the first in, whatever its use. */
		CHECK_EQ(count_device(h, buf, half), 0);
		CHECK_EQ(count_device(h, buf + half * PAGE, half), half);
	}
	CHECK_PATTERN_PAGES(buf, DEVPAGES + half, 4);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(lru_evicts_the_least_recently_used)
{
	evict_order(&uhmm_evict_lru, true);
}

TEST(fifo_evicts_the_first_in)
{
	evict_order(&uhmm_evict_fifo, false);
}

/* The device uses the pages of @buf from @hi down to @lo again, in that order. */
static void use_again(struct uhmm_devmem *dm, const char *buf, unsigned long hi, unsigned long lo)
{
	for (unsigned long k = hi + 1; k-- > lo;) {
		for (unsigned long pfn = 0; pfn < DEVPAGES; pfn++) {
			struct uhmm_page *pg = uhmm_devmem_page(dm, pfn);

			if (uhmm_page_addr(pg) == (uintptr_t)buf + k * PAGE)
				uhmm_page_mark_accessed(pg);
		}
	}
}

/*
 * The built-in policies pick from a list of the oldest pages made at one
 * look over the device and kept for the next evictions: a page on it used
 * since is passed over, so the order stays exactly least recently used.
 */
TEST(lru_passes_over_pages_used_since_it_looked)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	void *p;
	char *buf;

	CHECK_EQ(uhmm_devmem_set_evict(dm, &uhmm_evict_lru), 0);
	CHECK_EQ(uhmm_alloc(h, DEVPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, DEVPAGES * PAGE, 6);
	/* Full, used in address order: page 0 is the least recently used. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, DEVPAGES * PAGE), DEVPAGES);
	CHECK_EQ(uhmm_devmem_make_room(dm, 8), 8);
	CHECK_EQ(count_device(h, buf, 8), 0);
	CHECK_EQ(count_device(h, buf + 8 * PAGE, DEVPAGES - 8), DEVPAGES - 8);
	/* Pages 8-15, next in line, are used again. */
	use_again(dm, buf, 15, 8);
	CHECK_EQ(uhmm_devmem_make_room(dm, 16), 16);
	CHECK_EQ(count_device(h, buf + 8 * PAGE, 8), 8);
	CHECK_EQ(count_device(h, buf + 16 * PAGE, 8), 0);
	CHECK_EQ(count_device(h, buf + 24 * PAGE, DEVPAGES - 24), DEVPAGES - 24);
	CHECK_EQ(dmstats(dm).evictions, 16);
	/*
	 * Every page left used again, the highest address first: all it kept
	 * is stale, and it looks again. The oldest now are the highest.
	 */
	use_again(dm, buf, DEVPAGES - 1, 0);
	CHECK_EQ(uhmm_devmem_make_room(dm, 24), 24);
	CHECK_EQ(count_device(h, buf + (DEVPAGES - 8) * PAGE, 8), 0);
	CHECK_EQ(count_device(h, buf + 24 * PAGE, DEVPAGES - 32), DEVPAGES - 32);
	CHECK_EQ(count_device(h, buf + 8 * PAGE, 8), 8);
	CHECK_EQ(dmstats(dm).evictions, 24);
	/*
	 * Left, oldest first: 55-24, then 15-8. Pages 55-27 used again, 55
	 * first: 11 of what it kept still hold, 16 are asked for, so it looks
	 * again in the same call, and must not choose those 11 twice.
	 */
	use_again(dm, buf, 55, 27);
	CHECK_EQ(uhmm_devmem_make_room(dm, 40), 40);
	CHECK_EQ(count_device(h, buf, DEVPAGES), DEVPAGES - 40);
	CHECK_EQ(count_device(h, buf + 8 * PAGE, 8), 0);
	CHECK_EQ(count_device(h, buf + 24 * PAGE, 3), 0);
	CHECK_EQ(count_device(h, buf + 27 * PAGE, 24), 24);
	CHECK_EQ(count_device(h, buf + 51 * PAGE, 5), 0);
	CHECK_EQ(dmstats(dm).evictions, 40);
	CHECK_PATTERN_PAGES(buf, DEVPAGES, 6);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(working_set_twice_the_device_runs_with_correct_data)
{
	static const struct uhmm_evict_policy *const pols[] = { &uhmm_evict_lru, &uhmm_evict_fifo };

	for (size_t k = 0; k < ARRAY_SIZE(pols); k++) {
		struct uhmm *h = uhmm_test_open_migrating();
		struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
		struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
		size_t n = 2 * DEVPAGES;
		void *p;
		char *buf;

		CHECK_EQ(uhmm_devmem_set_evict(dm, pols[k]), 0);
		CHECK_EQ(uhmm_alloc(h, n * PAGE, &p), 0);
		buf = p;
		pattern_fill(buf, (n) * PAGE, 5);
		/* Rounds over the whole set, 16 pages at a time to the device, then a CPU pass. */
		for (int r = 0; r < 4; r++) {
			for (size_t i = 0; i < n; i += 16)
				CHECK_EQ(uhmm_migrate_to_device(dm, buf + i * PAGE, 16 * PAGE), 16);
			CHECK_EQ(count_device(h, buf, n), DEVPAGES);
			CHECK_PATTERN_PAGES(buf, n, 5);
			for (size_t i = 0; i < n; i++)
				buf[i * PAGE + 100] ^= 0; /* a write per page, data unchanged */
		}
		/* Each round: everything past the device's size evicted something. */
		CHECK_EQ(dmstats(dm).evictions, 4 * (n - DEVPAGES));
		CHECK_EQ(uhmm_devmem_set_evict(dm, NULL), 0);
		CHECK_EQ(uhmm_sim_destroy(sim), 0);
		uhmm_close(h);
	}
}

struct add_args {
	uint64_t *buf;
	uint64_t add;
};

static void k_add(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct add_args *a = arg;
	uint64_t *w = a->buf + i * (PAGE / sizeof(uint64_t));

	uhmm_sim_store_u64(ctx, w, uhmm_sim_load_u64(ctx, w) + a->add);
}

/*
 * A full device makes room only for pages that are not on it already: a
 * migration of its own resident pages, or device kernels (several threads)
 * over exactly as many pages as it holds, evict nothing.
 */
TEST(full_device_evicts_only_for_pages_not_on_it)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct add_args a;
	void *p, *q;
	char *buf;

	CHECK_EQ(uhmm_devmem_set_evict(dm, &uhmm_evict_lru), 0);
	CHECK_EQ(uhmm_alloc(h, DEVPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, DEVPAGES * PAGE, 6);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, DEVPAGES * PAGE), DEVPAGES);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, DEVPAGES * PAGE), 0);
	CHECK_EQ(uhmm_prefetch(h, buf, DEVPAGES * PAGE, dm), 0);
	CHECK_EQ(dmstats(dm).evictions, 0);
	CHECK_EQ(count_device(h, buf, DEVPAGES), DEVPAGES);
	CHECK_PATTERN_PAGES(buf, DEVPAGES, 6);
	/* The check brought them home; kernels fault as many in, the device exactly full. */
	CHECK_EQ(count_device(h, buf, DEVPAGES), 0);
	CHECK_EQ(uhmm_alloc(h, DEVPAGES * PAGE, &q), 0);
	memset(q, 0, DEVPAGES * PAGE);
	a = (struct add_args){ q, 7 };
	for (int r = 0; r < 4; r++)
		CHECK_EQ(uhmm_sim_launch(sim, k_add, DEVPAGES, &a), 0);
	CHECK_EQ(dmstats(dm).evictions, 0);
	for (size_t i = 0; i < DEVPAGES; i++)
		CHECK_EQ(((uint64_t *)q)[i * (PAGE / sizeof(uint64_t))], 28);
	CHECK_PATTERN_PAGES(buf, DEVPAGES, 6);
	CHECK_EQ(uhmm_devmem_set_evict(dm, NULL), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(set_evict_refuses_bad_policies)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	static const struct uhmm_evict_policy noselect = { .abi = UHMM_EVICT_POLICY_ABI };
	static const struct uhmm_evict_policy badabi = { .abi = 99, .select = NULL };

	CHECK_EQ(uhmm_devmem_set_evict(NULL, &uhmm_evict_lru), -EINVAL);
	CHECK_EQ(uhmm_devmem_set_evict(uhmm_sim_devmem(sim), &noselect), -EINVAL);
	CHECK_EQ(uhmm_devmem_set_evict(uhmm_sim_devmem(sim), &badabi), -EINVAL);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(bouncing_pages_get_pinned_then_released)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	UHMM_OPTS(uhmm_thrash_opts, t, .window_ms = 2000, .threshold = 3, .pin_ms = 300);
	UHMM_OPTS(uhmm_thrash_opts, bad, .window_ms = 5000, .threshold = 3, .pin_ms = 300);
	void *p;
	char *buf;

	CHECK_EQ(uhmm_set_thrash(h, &bad), -EINVAL);
	CHECK_EQ(uhmm_set_thrash(h, &t), 0);
	CHECK_EQ(uhmm_alloc(h, 4 * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, (4) * PAGE, 6);
	/* Three quick round trips (to the device, a CPU touch brings it home). */
	for (int r = 0; r < 3; r++) {
		CHECK_EQ(uhmm_migrate_to_device(dm, buf, PAGE), 1);
		CHECK_EQ(*(uint64_t *)buf, pattern_word(0, 6)); /* a CPU fault brings it home */
	}
	CHECK_EQ(dmstats(dm).thrash_events, 1);
	/* Pinned: a migration leaves it on the CPU; its neighbour still moves. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, 2 * PAGE), 1);
	CHECK_EQ(uhmm_page_state(h, buf), UHMM_PAGE_SYSTEM);
	CHECK_EQ(uhmm_page_state(h, buf + PAGE), UHMM_PAGE_DEVICE);
	/* After the pin time it may move again. */
	usleep(400 * 1000);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, PAGE), 1);
	CHECK_PATTERN_PAGES(buf, 4, 6);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(thrash_control_is_off_by_default)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, DEVPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	void *p;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, PAGE, &p), 0);
	buf = p;
	memset(buf, 7, PAGE);
	for (int r = 0; r < 8; r++) {
		CHECK_EQ(uhmm_migrate_to_device(dm, buf, PAGE), 1);
		CHECK_EQ(buf[0], 7);
	}
	CHECK_EQ(dmstats(dm).thrash_events, 0);
	CHECK_EQ(dmstats(dm).faults, 8);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}
