/* sigbus: a page whose device fails to return it is poisoned: SIGBUS for the thread that touches it, nothing else lost, and a discard makes it usable again. */
#include "harness.h"

#include <stdatomic.h>

struct fix {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	char *buf;
	size_t npages;
	uint64_t seed;
};

static void fix_setup(struct fix *f, size_t npages, uint64_t seed)
{
	void *p = NULL;

	f->h = uhmm_test_open_migrating();
	f->sim = uhmm_test_sim(f->h, npages);
	f->dm = uhmm_sim_devmem(f->sim);
	f->npages = npages;
	CHECK_EQ(uhmm_alloc(f->h, npages * PAGE, &p), 0);
	f->buf = p;
	f->seed = seed;
	NOTE("pattern seed=0x%llx", (unsigned long long)seed);
	pattern_fill(f->buf, npages * PAGE, seed);
}

static void fix_teardown(struct fix *f)
{
	CHECK_EQ(uhmm_free(f->h, f->buf, f->npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

static char *pg(struct fix *f, size_t i)
{
	return f->buf + i * PAGE;
}

/* Discarding a poisoned page makes it an ordinary, zero-filled page again. */
static void discard_and_reuse(struct fix *f, size_t k)
{
	uint64_t exp[PAGE / 8];

	CHECK_EQ(madvise(pg(f, k), PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(touch_expect_sigbus(pg(f, k) + 8), 0);
	CHECK_ZERO_PAGE(pg(f, k));
	CHECK_STATE_CPU(f->h, pg(f, k));
	pattern_page(exp, k, f->seed);
	memcpy(pg(f, k), exp, PAGE);
	CHECK_PATTERN_PAGE(f->buf, k, f->seed);
	CHECK_STATE(f->h, pg(f, k), UHMM_PAGE_SYSTEM);
	/* And it can go to the device and come back like any other. */
	CHECK_EQ(uhmm_migrate_to_device(f->dm, pg(f, k), PAGE), 1);
	CHECK_STATE(f->h, pg(f, k), UHMM_PAGE_DEVICE);
	CHECK_PATTERN_PAGE(f->buf, k, f->seed);
	CHECK_STATE(f->h, pg(f, k), UHMM_PAGE_SYSTEM);
}

TEST(failed_page_sigbus_only_that_page)
{
	const size_t k = 5;
	struct fix f;
	struct uhmm_stats s0, s;
	struct uhmm_sim_stats ss0;

	fix_setup(&f, 32, 0xb05b0001);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, 32 * PAGE), 32);
	CHECK_EQ(uhmm_sim_fail_page(f.sim, pg(&f, k)), 0);
	s0 = hstats(f.h);
	ss0 = simstats(f.sim);

	CHECK_EQ(touch_expect_sigbus(pg(&f, k) + 123), 1);
	CHECK_STATE(f.h, pg(&f, k), UHMM_PAGE_POISON);
	s = hstats(f.h);
	CHECK_EQ(s.poisoned - s0.poisoned, 1);
	CHECK_GE(simstats(f.sim).copy_errors - ss0.copy_errors, 1);
	/* Still poisoned: every touch, read or write, gets SIGBUS. */
	CHECK_EQ(touch_expect_sigbus(pg(&f, k)), 1);
	CHECK_EQ(touch_expect_sigbus_write(pg(&f, k) + PAGE - 1, 7), 1);
	CHECK_STATE(f.h, pg(&f, k), UHMM_PAGE_POISON);

	/* Every other page reads back. */
	for (size_t i = 0; i < f.npages; i++) {
		if (i == k)
			continue;
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
		CHECK_STATE(f.h, pg(&f, i), UHMM_PAGE_SYSTEM);
	}
	CHECK_EQ(count_state(f.h, f.buf, f.npages, UHMM_PAGE_POISON), 1);
	CHECK_EQ(dmstats(f.dm).in_use, 0);
	CHECK_EQ(hstats(f.h).poisoned - s0.poisoned, 1);

	CHECK_EQ(uhmm_sim_clear_faults(f.sim), 0);
	discard_and_reuse(&f, k);
	fix_teardown(&f);
}

TEST(failed_copy_before_fault_sigbus)
{
	const size_t k = 3;
	struct fix f;
	struct uhmm_stats s0;

	fix_setup(&f, 16, 0xb05b0002);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, pg(&f, k), PAGE), 1);
	s0 = hstats(f.h);
	CHECK_EQ(uhmm_sim_fail_copies(f.sim, 1), 0);
	CHECK_EQ(touch_expect_sigbus(pg(&f, k) + 1000), 1);
	CHECK_STATE(f.h, pg(&f, k), UHMM_PAGE_POISON);
	CHECK_EQ(hstats(f.h).poisoned - s0.poisoned, 1);
	CHECK_EQ(uhmm_sim_clear_faults(f.sim), 0);
	for (size_t i = 0; i < f.npages; i++)
		if (i != k)
			CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	CHECK_EQ(touch_expect_sigbus(pg(&f, k)), 1);
	discard_and_reuse(&f, k);
	fix_teardown(&f);
}

/* uhmm_migrate_to_ram with a failing copy: each page comes home intact or is
 * poisoned and counted; nothing is silently lost. */
TEST(failed_copy_in_migrate_to_ram_loses_nothing_silently)
{
	struct fix f;
	struct uhmm_stats s0;
	size_t npoison = 0;
	int r;

	fix_setup(&f, 8, 0xb05b0003);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, 8 * PAGE), 8);
	s0 = hstats(f.h);
	CHECK_EQ(uhmm_sim_fail_copies(f.sim, 1), 0);
	r = uhmm_migrate_to_ram(f.h, f.buf, 8 * PAGE);
	NOTE("uhmm_migrate_to_ram with one failing copy returned %d", r);
	CHECK_GE(r, 0);
	CHECK_LE(r, 8);
	CHECK_EQ(uhmm_sim_clear_faults(f.sim), 0);
	CHECK_EQ(hstats(f.h).poisoned - s0.poisoned, 8 - r);
	CHECK_EQ(count_state(f.h, f.buf, 8, UHMM_PAGE_DEVICE), 0);
	for (size_t i = 0; i < 8; i++) {
		if (uhmm_page_state(f.h, pg(&f, i)) == UHMM_PAGE_POISON) {
			npoison++;
			CHECK_EQ(touch_expect_sigbus(pg(&f, i)), 1);
			CHECK_EQ(madvise(pg(&f, i), PAGE, MADV_DONTNEED), 0);
		} else {
			CHECK_STATE(f.h, pg(&f, i), UHMM_PAGE_SYSTEM);
			CHECK_PATTERN_PAGE(f.buf, i, f.seed);
		}
	}
	CHECK_EQ(npoison, 8 - r);
	CHECK_EQ(dmstats(f.dm).in_use, 0);
	fix_teardown(&f);
}

/* uhmm_migrate_to_device with a failing copy: pages that could not be copied
 * stay on the CPU with their data. */
TEST(failed_copy_in_migrate_to_device_keeps_data)
{
	struct fix f;
	int r;

	fix_setup(&f, 8, 0xb05b0004);
	CHECK_EQ(uhmm_sim_fail_copies(f.sim, 1), 0);
	r = uhmm_migrate_to_device(f.dm, f.buf, 8 * PAGE);
	NOTE("uhmm_migrate_to_device with one failing copy returned %d", r);
	CHECK_GE(r, 0);
	CHECK_LE(r, 8);
	CHECK_EQ(uhmm_sim_clear_faults(f.sim), 0);
	CHECK_EQ(count_state(f.h, f.buf, 8, UHMM_PAGE_DEVICE), r);
	CHECK_EQ(count_state(f.h, f.buf, 8, UHMM_PAGE_SYSTEM), 8 - r);
	CHECK_EQ(dmstats(f.dm).in_use, r);
	CHECK_EQ(hstats(f.h).poisoned, 0);
	for (size_t i = 0; i < 8; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	fix_teardown(&f);
}

/* ---- SIGBUS goes to the toucher only ---- */

struct race {
	struct fix *f;
	size_t k;
	atomic_int stop;
	atomic_ulong passes;
	pthread_barrier_t go;
	int touch_result;
};

static void *reader_thread(void *arg)
{
	struct race *r = arg;
	struct fix *f = r->f;

	pthread_barrier_wait(&r->go);
	while (!atomic_load(&r->stop)) {
		for (size_t i = 0; i < f->npages; i++)
			if (i != r->k)
				CHECK_PATTERN_PAGE(f->buf, i, f->seed);
		atomic_fetch_add(&r->passes, 1);
	}
	return NULL;
}

static void *toucher_thread(void *arg)
{
	struct race *r = arg;

	pthread_barrier_wait(&r->go);
	r->touch_result = touch_expect_sigbus(pg(r->f, r->k) + 64);
	return NULL;
}

TEST(sigbus_goes_to_the_toucher_thread_only)
{
	static struct race r;
	struct fix f;
	pthread_t rd, to;
	unsigned long p0;

	fix_setup(&f, 64, 0xb05b0005);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, 64 * PAGE), 64);
	r.f = &f;
	r.k = 0;
	CHECK_EQ(uhmm_sim_fail_page(f.sim, pg(&f, r.k)), 0);
	CHECK_EQ(pthread_barrier_init(&r.go, NULL, 3), 0);
	CHECK_EQ(pthread_create(&rd, NULL, reader_thread, &r), 0);
	CHECK_EQ(pthread_create(&to, NULL, toucher_thread, &r), 0);
	pthread_barrier_wait(&r.go);
	CHECK_EQ(pthread_join(to, NULL), 0);
	CHECK_EQ(r.touch_result, 1);
	CHECK_STATE(f.h, pg(&f, r.k), UHMM_PAGE_POISON);

	/* The reader keeps working, also through new device faults. */
	p0 = atomic_load(&r.passes);
	CHECK_GE(uhmm_migrate_to_device(f.dm, pg(&f, 1), 63 * PAGE), 0);
	while (atomic_load(&r.passes) < p0 + 3)
		usleep(1000);
	atomic_store(&r.stop, 1);
	CHECK_EQ(pthread_join(rd, NULL), 0);
	pthread_barrier_destroy(&r.go);
	NOTE("reader passes: %lu", atomic_load(&r.passes));
	CHECK_EQ(count_state(f.h, f.buf, f.npages, UHMM_PAGE_POISON), 1);
	CHECK_EQ(uhmm_sim_clear_faults(f.sim), 0);
	CHECK_EQ(madvise(pg(&f, r.k), PAGE, MADV_DONTNEED), 0);
	fix_teardown(&f);
}

static void die_of_sigbus_child(void *arg)
{
	struct fix f;
	uint64_t v;

	(void)arg;
	/* No handler: the poisoned page must kill this process with SIGBUS. */
	signal(SIGBUS, SIG_DFL);
	fix_setup(&f, 4, 0xb05b0006);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, 4 * PAGE), 4);
	CHECK_EQ(uhmm_sim_fail_page(f.sim, pg(&f, 2)), 0);
	CHECK_PATTERN_PAGE(f.buf, 1, f.seed);
	v = *(volatile uint64_t *)pg(&f, 2);
	NOTE("child: read 0x%llx from a poisoned page and lives", (unsigned long long)v);
	harness_flush();
	_exit(3);
}

TEST(uncaught_sigbus_kills_the_toucher)
{
	int status = harness_run_child(die_of_sigbus_child, NULL);

	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		SKIP("%s", harness_skip_buf[0] ? harness_skip_buf : "the child skipped");
	/* Under a sanitizer this needs ASAN_OPTIONS/TSAN_OPTIONS=handle_sigbus=0. */
	CHECK_SIGNALED(status, SIGBUS);
}
