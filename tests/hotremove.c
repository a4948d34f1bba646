/* hotremove: removing a device brings its pages home; a dead device's pages are poisoned (SIGBUS on touch) and nothing else changes; a region being removed (or of a closed handle) refuses migration with -ENODEV. */
#include "harness.h"

#include <stdatomic.h>

#define NP 32
#define NDEV 16 /* pages [0, NDEV) go to the device */

struct fix {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	char *buf;
	uint64_t seed;
};

static void fix_setup(struct fix *f, uint64_t seed)
{
	void *p = NULL;

	f->h = uhmm_test_open_migrating();
	f->sim = uhmm_test_sim(f->h, 64);
	f->dm = uhmm_sim_devmem(f->sim);
	CHECK_EQ(uhmm_alloc(f->h, NP * PAGE, &p), 0);
	f->buf = p;
	f->seed = seed;
	NOTE("pattern seed=0x%llx", (unsigned long long)seed);
	pattern_fill(f->buf, NP * PAGE, seed);
	CHECK_EQ(uhmm_migrate_to_device(f->dm, f->buf, NDEV * PAGE), NDEV);
	CHECK_EQ(count_state(f->h, f->buf, NP, UHMM_PAGE_DEVICE), NDEV);
}

static char *pg(struct fix *f, size_t i)
{
	return f->buf + i * PAGE;
}

TEST(destroy_brings_resident_pages_home)
{
	struct fix f;
	struct uhmm_stats s0, s;

	fix_setup(&f, 0x401e0001);
	s0 = hstats(f.h);
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	s = hstats(f.h);
	CHECK_EQ(s.pages_home - s0.pages_home, NDEV);
	CHECK_EQ(s.poisoned, s0.poisoned);
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_SYSTEM), NP);

	/* The data is home: reading it faults nothing. */
	s0 = hstats(f.h);
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	CHECK_EQ(hstats(f.h).faults, s0.faults);

	/* A new device works as before. */
	f.sim = uhmm_test_sim(f.h, 64);
	f.dm = uhmm_sim_devmem(f.sim);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, NP * PAGE), NP);
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	CHECK_EQ(uhmm_free(f.h, f.buf, NP * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	uhmm_close(f.h);
}

TEST(kill_then_destroy_poisons_exactly_the_resident_pages)
{
	struct fix f;
	struct uhmm_stats s0, s;
	int r;

	fix_setup(&f, 0x401e0002);
	s0 = hstats(f.h);
	CHECK_EQ(uhmm_sim_kill(f.sim), 0);
	r = uhmm_sim_destroy(f.sim);
	CHECK_EQ(r, NDEV);
	s = hstats(f.h);
	CHECK_EQ(s.poisoned - s0.poisoned, NDEV);
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_POISON), NDEV);

	for (size_t i = 0; i < NDEV; i++) {
		CHECK_STATE(f.h, pg(&f, i), UHMM_PAGE_POISON);
		CHECK_EQ(touch_expect_sigbus(pg(&f, i) + 8 * i), 1);
	}
	/* Pages that never went to the device are untouched. */
	for (size_t i = NDEV; i < NP; i++) {
		CHECK_STATE(f.h, pg(&f, i), UHMM_PAGE_SYSTEM);
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	}
	CHECK_EQ(hstats(f.h).poisoned - s0.poisoned, NDEV);
	CHECK_EQ(uhmm_free(f.h, f.buf, NP * PAGE), 0);
	uhmm_close(f.h);
}

TEST(kill_without_destroy_touch_sigbus)
{
	struct fix f;
	struct uhmm_stats s0;
	int r;

	fix_setup(&f, 0x401e0003);
	s0 = hstats(f.h);
	CHECK_EQ(uhmm_sim_kill(f.sim), 0);
	CHECK_EQ(touch_expect_sigbus(pg(&f, 0)), 1);
	CHECK_STATE(f.h, pg(&f, 0), UHMM_PAGE_POISON);
	CHECK_EQ(hstats(f.h).poisoned - s0.poisoned, 1);
	/* The other device pages stay where they are until touched. */
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_DEVICE), NDEV - 1);
	CHECK_EQ(dm_in_use(f.dm), NDEV - 1);
	CHECK_EQ(touch_expect_sigbus_write(pg(&f, 5) + 100, 1), 1);
	CHECK_STATE(f.h, pg(&f, 5), UHMM_PAGE_POISON);
	for (size_t i = NDEV; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);

	/*
	 * A dead device takes nothing new: the pages stay on the CPU with their
	 * data. Its region is not being removed, so this is no -ENODEV: every
	 * copy fails, the failing pages stay on the CPU and the call reports
	 * the number of pages that moved, none.
	 */
	r = uhmm_migrate_to_device(f.dm, pg(&f, NDEV), (NP - NDEV) * PAGE);
	CHECK_EQ(r, 0);
	CHECK_EQ(dm_in_use(f.dm), NDEV - 2);
	CHECK_EQ(count_state(f.h, pg(&f, NDEV), NP - NDEV, UHMM_PAGE_SYSTEM), NP - NDEV);
	for (size_t i = NDEV; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);

	/* Removing it poisons the pages it still holds. */
	CHECK_EQ(uhmm_sim_destroy(f.sim), NDEV - 2);
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_POISON), NDEV);
	CHECK_EQ(hstats(f.h).poisoned - s0.poisoned, NDEV);
	CHECK_EQ(touch_expect_sigbus(pg(&f, NDEV - 1)), 1);
	for (size_t i = NDEV; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);

	/* Discarding poisoned pages makes them usable (zeros). */
	CHECK_EQ(madvise(f.buf, NDEV * PAGE, MADV_DONTNEED), 0);
	for (size_t i = 0; i < NDEV; i++) {
		CHECK_EQ(touch_expect_sigbus(pg(&f, i)), 0);
		CHECK_ZERO_PAGE(pg(&f, i));
	}
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_POISON), 0);
	CHECK_EQ(uhmm_free(f.h, f.buf, NP * PAGE), 0);
	uhmm_close(f.h);
}

TEST(unmanage_after_kill_keeps_poison)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 64);
	char *buf = map_anon(NP * PAGE);
	uint64_t seed = 0x401e0004;

	NOTE("pattern seed=0x%llx", (unsigned long long)seed);
	pattern_fill(buf, NP * PAGE, seed);
	CHECK_EQ(uhmm_manage(h, buf, NP * PAGE), 0);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NDEV * PAGE), NDEV);
	CHECK_EQ(uhmm_sim_kill(sim), 0);
	/* The pages cannot come home: unmanage brings none and leaves them poisoned. */
	CHECK_EQ(uhmm_unmanage(h, buf, NP * PAGE), 0);
	CHECK_EQ(uhmm_page_state(h, buf), -ENOENT);
	for (size_t i = 0; i < NDEV; i++)
		CHECK_EQ(touch_expect_sigbus(buf + i * PAGE), 1);
	for (size_t i = NDEV; i < NP; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
	unmap(buf, NP * PAGE);
}

/* ---- migration to a region that is being removed: -ENODEV ---- */

/*
 * A RAM-backed driver whose copy home can be held: the test arms the gate,
 * the next copy_from_device blocks inside the callback until the test opens
 * it. uhmm_devmem_remove() evicts through that callback, so with the gate
 * closed the region stays "being removed" (and still valid) as long as the
 * test needs.
 */
#define GATED_PAGES 64

struct gated {
	struct uhmm_devmem *dm;
	char *pool;
	atomic_int armed, entered, open;
	atomic_ulong copies_to, copies_from;
};

/* Async-signal-safe: atomics and nanosleep. */
static void gated_pass(struct gated *g)
{
	if (!atomic_exchange(&g->armed, 0))
		return;
	atomic_store(&g->entered, 1);
	while (!atomic_load(&g->open)) {
		struct timespec ts = { 0, 1000000 };

		nanosleep(&ts, NULL);
	}
}

static int gated_copy_to_device(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
				const void *const *src, unsigned long n)
{
	struct gated *g = uhmm_devmem_driver_data(dm);

	for (unsigned long i = 0; i < n; i++) {
		if (src[i])
			memcpy(g->pool + dst[i]->pfn * PAGE, src[i], PAGE);
		else
			memset(g->pool + dst[i]->pfn * PAGE, 0, PAGE);
	}
	atomic_fetch_add(&g->copies_to, n);
	return 0;
}

static int gated_copy_from_device(struct uhmm_devmem *dm, void *const *dst,
				  struct uhmm_page *const *src, unsigned long n)
{
	struct gated *g = uhmm_devmem_driver_data(dm);

	gated_pass(g);
	for (unsigned long i = 0; i < n; i++)
		memcpy(dst[i], g->pool + src[i]->pfn * PAGE, PAGE);
	atomic_fetch_add(&g->copies_from, n);
	return 0;
}

static int gated_migrate_to_ram(struct uhmm_fault *vmf)
{
	return uhmm_test_migrate_one_home(vmf, uhmm_devmem_driver_data(vmf->page->devmem),
					  gated_copy_from_device);
}

static const struct uhmm_devmem_ops gated_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = gated_copy_to_device,
	.copy_from_device = gated_copy_from_device,
	.migrate_to_ram = gated_migrate_to_ram,
};

struct remover {
	struct uhmm_devmem *dm;
	atomic_int done;
	int ret;
};

static void *remover_main(void *arg)
{
	struct remover *r = arg;

	r->ret = uhmm_devmem_remove(r->dm);
	atomic_store(&r->done, 1);
	return NULL;
}

TEST(migrate_to_region_being_removed_is_enodev)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *other = uhmm_test_sim(h, 64);
	struct gated g = { 0 };
	struct remover rm = { 0 };
	struct uhmm_stats s0, s;
	pthread_t tid;
	uint64_t seed = 0x401e0005;
	void *p = NULL;
	char *buf;
	double t0;

	g.pool = map_anon(GATED_PAGES * PAGE);
	{
		UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE,
			  .npages = GATED_PAGES, .owner = &g, .ops = &gated_ops, .driver_data = &g,
			  .name = "gated");
		CHECK_EQ(uhmm_devmem_add(h, &desc, &g.dm), 0);
	}
	CHECK_EQ(uhmm_alloc(h, NP * PAGE, &p), 0);
	buf = p;
	NOTE("pattern seed=0x%llx", (unsigned long long)seed);
	pattern_fill(buf, NP * PAGE, seed);
	CHECK_EQ(uhmm_migrate_to_device(g.dm, buf, NDEV * PAGE), NDEV);
	CHECK_EQ(count_state(h, buf, NP, UHMM_PAGE_DEVICE), NDEV);
	CHECK_EQ(atomic_load(&g.copies_to), NDEV);
	s0 = hstats(h);

	/* Remove the region; its first copy home holds, so the removal stays in progress. */
	atomic_store(&g.armed, 1);
	rm.dm = g.dm;
	CHECK_EQ(pthread_create(&tid, NULL, remover_main, &rm), 0);
	t0 = harness_now();
	while (!atomic_load(&g.entered) && harness_now() - t0 < 10)
		usleep(1000);
	CHECK_MSG(atomic_load(&g.entered), "uhmm_devmem_remove never copied a page home");
	CHECK_EQ(atomic_load(&rm.done), 0);

	/* Every migration into the region is refused with -ENODEV and moves nothing. */
	CHECK_EQ(uhmm_migrate_to_device(g.dm, buf + NDEV * PAGE, (NP - NDEV) * PAGE), -ENODEV);
	CHECK_EQ(uhmm_migrate_to_device(g.dm, buf + (NP - 1) * PAGE, PAGE), -ENODEV);
	CHECK_EQ(uhmm_migrate_to_device(g.dm, buf, NP * PAGE), -ENODEV);
	CHECK_MSG(strstr(uhmm_strerror(-ENODEV), "removed") != NULL,
		  "uhmm_strerror(-ENODEV) does not say the device is being removed: \"%s\"",
		  uhmm_strerror(-ENODEV));
	/* Nor can a driver take a page from it. */
	CHECK(uhmm_devmem_alloc_page(g.dm) == NULL);
	CHECK_EQ(atomic_load(&g.copies_to), NDEV);
	CHECK_EQ(hstats(h).pages_out, s0.pages_out);
	CHECK_EQ(dmstats(g.dm).in_use, NDEV);
	CHECK_EQ(dmstats(g.dm).pages_to, NDEV);
	CHECK_EQ(count_state(h, buf + NDEV * PAGE, NP - NDEV, UHMM_PAGE_SYSTEM), NP - NDEV);
	for (size_t i = NDEV; i < NP; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	/* Another device is not affected: it takes pages while this one goes. */
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(other), buf + (NP - 4) * PAGE, 4 * PAGE),
		 4);
	CHECK_EQ(count_state(h, buf + (NP - 4) * PAGE, 4, UHMM_PAGE_DEVICE), 4);

	/* Let the removal finish: every page it held comes home, nothing poisoned. */
	atomic_store(&g.open, 1);
	CHECK_EQ(pthread_join(tid, NULL), 0);
	CHECK_EQ(rm.ret, 0);
	s = hstats(h);
	CHECK_EQ(s.pages_home - s0.pages_home, NDEV);
	CHECK_EQ(s.poisoned, s0.poisoned);
	CHECK_EQ(atomic_load(&g.copies_from), NDEV);
	CHECK_EQ(count_state(h, buf, NDEV, UHMM_PAGE_SYSTEM), NDEV);
	CHECK_EQ(count_state(h, buf + NDEV * PAGE, NP - NDEV - 4, UHMM_PAGE_SYSTEM), NP - NDEV - 4);

	/* Every byte of the range, wherever it was. */
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(count_state(h, buf, NP, UHMM_PAGE_SYSTEM), NP);
	CHECK_EQ(hstats(h).poisoned, s0.poisoned);
	CHECK_EQ(uhmm_free(h, buf, NP * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(other), 0);
	uhmm_close(h);
	unmap(g.pool, GATED_PAGES * PAGE);
}

/*
 * uhmm_close() brings every page home and leaves a registered region inert
 * (its driver must still remove it): migration into it is refused with
 * -ENODEV and the range, plain memory now, keeps every byte.
 */
TEST(migrate_to_region_of_closed_handle_is_enodev)
{
	struct fix f;
	struct uhmm_sim_stats ss0;

	fix_setup(&f, 0x401e0006);
	uhmm_close(f.h);
	CHECK_EQ(dm_in_use(f.dm), 0);
	ss0 = simstats(f.sim);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, NP * PAGE), -ENODEV);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, pg(&f, NDEV), PAGE), -ENODEV);
	CHECK(uhmm_devmem_alloc_page(f.dm) == NULL);
	CHECK_EQ(simstats(f.sim).copies_to, ss0.copies_to);
	CHECK_EQ(dm_in_use(f.dm), 0);
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	unmap(f.buf, NP * PAGE);
}
