/* hotremove: removing a device brings its pages home; a dead device's pages are poisoned (SIGBUS on touch) and nothing else changes. */
#include "harness.h"

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

	/* A dead device takes nothing new: the pages stay on the CPU with their data. */
	r = uhmm_migrate_to_device(f.dm, pg(&f, NDEV), (NP - NDEV) * PAGE);
	NOTE("uhmm_migrate_to_device to a dead device returned %d%s", r, harness_errname(r));
	CHECK_LE(r, 0);
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
