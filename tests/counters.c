/* counters: device memory accounting (in_use, resident, page_frees), page references, the handle's fault and migration counters, and per-range counters. */
#include "harness.h"

struct fix {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	char *buf;
	size_t npages;
	uint64_t seed;
};

static void fix_setup(struct fix *f, size_t npages, unsigned long dev_pages, uint64_t seed)
{
	void *p = NULL;

	f->h = uhmm_test_open_migrating();
	f->sim = uhmm_test_sim(f->h, dev_pages);
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

static void touch_read(const char *p)
{
	(void)*(const volatile char *)p;
}

TEST(in_use_and_resident_follow_pages)
{
	const size_t N = 16;
	struct fix f;
	struct uhmm_devmem_stats d0, d;
	struct uhmm_sim_stats s0, s;

	fix_setup(&f, 32, 64, 0xc0c0a001);
	d0 = dmstats(f.dm);
	s0 = simstats(f.sim);
	CHECK_EQ(d0.npages, 64);
	CHECK_EQ(d0.in_use, 0);
	CHECK_EQ(d0.resident, 0);

	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, N * PAGE), (long long)N);
	d = dmstats(f.dm);
	s = simstats(f.sim);
	CHECK_EQ(d.in_use, N);
	CHECK_EQ(d.resident, N);
	CHECK_EQ(d.owner_pages, N);
	CHECK_EQ(d.page_frees, d0.page_frees);
	CHECK_EQ(s.copies_to - s0.copies_to, N);
	CHECK_EQ(s.page_frees, s0.page_frees);

	/* One CPU touch: one page comes home, its device page is freed exactly once. */
	touch_read(f.buf + 3 * PAGE);
	d = dmstats(f.dm);
	s = simstats(f.sim);
	CHECK_EQ(d.in_use, N - 1);
	CHECK_EQ(d.resident, N - 1);
	CHECK_EQ(d.owner_pages, N - 1);
	CHECK_EQ(d.page_frees - d0.page_frees, 1);
	CHECK_EQ(s.page_frees - s0.page_frees, 1);
	CHECK_EQ(s.migrate_to_ram - s0.migrate_to_ram, 1);
	CHECK_EQ(s.copies_from - s0.copies_from, 1);
	CHECK_STATE(f.h, f.buf + 3 * PAGE, UHMM_PAGE_SYSTEM);
	CHECK_STATE(f.h, f.buf + 2 * PAGE, UHMM_PAGE_DEVICE);
	CHECK_STATE(f.h, f.buf + 4 * PAGE, UHMM_PAGE_DEVICE);
	CHECK_PATTERN_PAGE(f.buf, 3, f.seed);

	/* A write touch does the same. */
	uint64_t exp7[PAGE / 8];
	pattern_page(exp7, 7, f.seed);
	((volatile char *)f.buf)[7 * PAGE + 100] = (char)~((char *)exp7)[100];
	d = dmstats(f.dm);
	s = simstats(f.sim);
	CHECK_EQ(d.in_use, N - 2);
	CHECK_EQ(d.resident, N - 2);
	CHECK_EQ(d.page_frees - d0.page_frees, 2);
	CHECK_EQ(s.page_frees - s0.page_frees, 2);
	CHECK_EQ(f.buf[7 * PAGE + 100], (char)~((char *)exp7)[100]);
	CHECK_MEM(f.buf + 7 * PAGE, exp7, 100);
	f.buf[7 * PAGE + 100] = ((char *)exp7)[100];

	/* The rest explicitly. */
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.buf, N * PAGE), (long long)(N - 2));
	d = dmstats(f.dm);
	s = simstats(f.sim);
	CHECK_EQ(d.in_use, 0);
	CHECK_EQ(d.resident, 0);
	CHECK_EQ(d.owner_pages, 0);
	CHECK_EQ(d.page_frees - d0.page_frees, N);
	CHECK_EQ(s.page_frees - s0.page_frees, N);
	for (size_t i = 0; i < f.npages; i++)
		CHECK_PATTERN_PAGE(f.buf, i, f.seed);
	fix_teardown(&f);
}

TEST(free_of_range_frees_device_pages)
{
	struct fix f;
	struct uhmm_devmem_stats d0, d;
	struct uhmm_sim_stats s0;
	struct uhmm_stats h0, h1;

	fix_setup(&f, 32, 64, 0xc0c0a002);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, 20 * PAGE), 20);
	d0 = dmstats(f.dm);
	s0 = simstats(f.sim);
	h0 = hstats(f.h);
	/* uhmm_free frees device pages without bringing them home. */
	CHECK_EQ(uhmm_free(f.h, f.buf, f.npages * PAGE), 0);
	d = dmstats(f.dm);
	h1 = hstats(f.h);
	CHECK_EQ(d.in_use, 0);
	CHECK_EQ(d.resident, 0);
	CHECK_EQ(d.page_frees - d0.page_frees, 20);
	CHECK_EQ(simstats(f.sim).page_frees - s0.page_frees, 20);
	CHECK_EQ(simstats(f.sim).copies_from, s0.copies_from);
	CHECK_EQ(h1.pages_home, h0.pages_home);
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	uhmm_close(f.h);
}

/* The device page holding the data of @addr: scan the region for it. */
static struct uhmm_page *find_device_page(struct uhmm_devmem *dm, const void *addr)
{
	struct uhmm_page *found = NULL;
	unsigned long pfn, n = (unsigned long)dmstats(dm).npages;
	int nfound = 0;

	for (pfn = 0; pfn < n; pfn++) {
		struct uhmm_page *pg = uhmm_devmem_page(dm, pfn);

		CHECK_NONNULL(pg);
		CHECK_EQ(pg->pfn, pfn);
		CHECK_PTR(pg->devmem, dm);
		if (__atomic_load_n(&pg->refcount, __ATOMIC_ACQUIRE) > 0 &&
		    uhmm_page_addr(pg) == (uintptr_t)addr) {
			found = pg;
			nfound++;
		}
	}
	CHECK_EQ(nfound, 1);
	CHECK(uhmm_devmem_page(dm, n) == NULL);
	return found;
}

TEST(page_get_delays_page_free_until_put)
{
	struct fix f;
	struct uhmm_devmem_stats d0, d;
	struct uhmm_sim_stats s0, s;
	struct uhmm_page *pg;

	fix_setup(&f, 4, 8, 0xc0c0a003);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, PAGE), 1);
	pg = find_device_page(f.dm, f.buf);
	CHECK_EQ(__atomic_load_n(&pg->refcount, __ATOMIC_ACQUIRE), 1);
	CHECK_PTR(pg->owner, uhmm_devmem_owner(f.dm));

	uhmm_page_get(pg);
	CHECK_EQ(__atomic_load_n(&pg->refcount, __ATOMIC_ACQUIRE), 2);
	d0 = dmstats(f.dm);
	s0 = simstats(f.sim);
	CHECK_EQ(d0.in_use, 1);

	/* The CPU touch brings the data home; the extra reference keeps the page. */
	CHECK_PATTERN_PAGE(f.buf, 0, f.seed);
	CHECK_STATE(f.h, f.buf, UHMM_PAGE_SYSTEM);
	d = dmstats(f.dm);
	s = simstats(f.sim);
	CHECK_EQ(d.page_frees, d0.page_frees);
	CHECK_EQ(s.page_frees, s0.page_frees);
	CHECK_EQ(d.in_use, 1);
	CHECK_EQ(d.resident, 0);
	CHECK_EQ(__atomic_load_n(&pg->refcount, __ATOMIC_ACQUIRE), 1);

	/* The last reference goes: page_free runs once, the page is free again. */
	uhmm_page_put(pg);
	d = dmstats(f.dm);
	s = simstats(f.sim);
	CHECK_EQ(d.page_frees - d0.page_frees, 1);
	CHECK_EQ(s.page_frees - s0.page_frees, 1);
	CHECK_EQ(d.in_use, 0);
	CHECK_EQ(d.owner_pages, 0);
	CHECK_EQ(__atomic_load_n(&pg->refcount, __ATOMIC_ACQUIRE), 0);
	CHECK_PATTERN_PAGE(f.buf, 0, f.seed);
	fix_teardown(&f);
}

TEST(handle_stats_count_faults_and_migrations)
{
	const size_t npages = 64;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_stats s0, s;
	void *p = NULL;
	char *buf;
	size_t i;

	CHECK_EQ(uhmm_alloc(h, npages * PAGE, &p), 0);
	buf = p;
	s0 = hstats(h);

	/*
	 * A read of an empty page: one fault, no device. The core may zero-fill
	 * empty neighbours in the same go (fault-around), so zero_fills counts
	 * at least this page and at most the whole range.
	 */
	touch_read(buf);
	s = hstats(h);
	CHECK_EQ(s.faults - s0.faults, 1);
	CHECK_EQ(s.faults_device - s0.faults_device, 0);
	CHECK_GE(s.zero_fills - s0.zero_fills, 1);
	CHECK_LE(s.zero_fills - s0.zero_fills, npages);
	CHECK_EQ(s.pages_home - s0.pages_home, 0);
	CHECK_EQ(s.pages_out - s0.pages_out, 0);

	/* First writes of pages 1..31: at most one fault each; each page zero-filled once. */
	for (i = 1; i < 32; i++)
		memset(buf + i * PAGE, (int)i, PAGE);
	s = hstats(h);
	CHECK_GE(s.faults - s0.faults, 1);
	CHECK_LE(s.faults - s0.faults, 32);
	CHECK_GE(s.zero_fills - s0.zero_fills, 32);
	CHECK_LE(s.zero_fills - s0.zero_fills, npages);
	CHECK_LE(s.faults - s0.faults, s.zero_fills - s0.zero_fills);
	CHECK_EQ(s.faults_device - s0.faults_device, 0);
	CHECK_EQ(s.pages_home - s0.pages_home, 0);

	/* Migrating counts pages out and faults nothing (pages 32..63 are empty). */
	s0 = hstats(h);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	s = hstats(h);
	CHECK_EQ(s.pages_out - s0.pages_out, npages);
	CHECK_EQ(s.faults - s0.faults, 0);
	CHECK_EQ(s.pages_home - s0.pages_home, 0);

	/*
	 * Ten CPU touches of device pages, and one of an empty page now on the
	 * device. In reverse order: a forward sweep would bring neighbours home
	 * with each fault (uhmm_fault_window; tests/faultaround.c).
	 */
	s0 = hstats(h);
	for (i = 10; i-- > 0;)
		touch_read(buf + i * PAGE);
	touch_read(buf + 40 * PAGE);
	s = hstats(h);
	CHECK_EQ(s.faults - s0.faults, 11);
	CHECK_EQ(s.faults_device - s0.faults_device, 11);
	CHECK_EQ(s.pages_home - s0.pages_home, 11);
	CHECK_EQ(s.pages_out - s0.pages_out, 0);

	/* An explicit migration home counts pages, not faults. */
	s0 = hstats(h);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)(npages - 11));
	s = hstats(h);
	CHECK_EQ(s.pages_home - s0.pages_home, npages - 11);
	CHECK_EQ(s.faults - s0.faults, 0);
	CHECK_EQ(s.faults_device - s0.faults_device, 0);
	CHECK_EQ(s.poisoned, 0);

	for (i = 1; i < 32; i++)
		CHECK_EQ(buf[i * PAGE + i], (char)i);
	for (i = 32; i < npages; i++)
		CHECK_ZERO_PAGE(buf + i * PAGE);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * @events counts what the application did to managed memory (unmap, discard,
 * remap), not the core's own bookkeeping: migrations alone add nothing.
 */
TEST(events_counter_ignores_migrations)
{
	struct fix f;
	struct uhmm_stats s0, s;

	fix_setup(&f, 64, 64, 0xc0c0a004);
	s0 = hstats(f.h);
	for (int round = 0; round < 3; round++) {
		CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, f.npages * PAGE), (long long)f.npages);
		CHECK_PATTERN_PAGE(f.buf, 1, f.seed);
		CHECK_EQ(uhmm_migrate_to_ram(f.h, f.buf, f.npages * PAGE), (long long)f.npages - 1);
	}
	s = hstats(f.h);
	CHECK_EQ(s.pages_out - s0.pages_out, 3 * f.npages);
	CHECK_EQ(s.events - s0.events, 0);
	/* One discard of managed memory is one event. */
	CHECK_EQ(madvise(f.buf, PAGE, MADV_DONTNEED), 0);
	WAIT_FOR(hstats(f.h).events - s0.events >= 1);
	CHECK_EQ(hstats(f.h).events - s0.events, 1);
	fix_teardown(&f);
}

static struct uhmm_range_stats rstats(struct uhmm *h, const void *addr)
{
	UHMM_OPTS(uhmm_range_stats, st);

	CHECK_EQ(uhmm_range_stats(h, addr, &st), 0);
	return st;
}

/*
 * Per-range counters: each allocation counts its own faults, pages each way
 * and prefetches; the neighbour's stay at zero; mremap carries them along.
 */
TEST(range_stats_count_each_allocation_alone)
{
	struct fix f;
	struct uhmm_range_stats a, b;
	void *q = NULL;
	char *other, *dst, *moved;

	fix_setup(&f, 16, 64, 0x4a4e);
	/* A second allocation beside it, which nothing here migrates. */
	CHECK_EQ(uhmm_alloc(f.h, 16 * PAGE, &q), 0);
	other = q;
	memset(other, 7, 16 * PAGE);

	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, 8 * PAGE), 8);
	CHECK_EQ(uhmm_prefetch(f.h, f.buf + 8 * PAGE, 4 * PAGE, f.dm), 4);
	a = rstats(f.h, f.buf + 3 * PAGE);
	CHECK_EQ(a.start, (uintptr_t)f.buf);
	CHECK_EQ(a.end, (uintptr_t)f.buf + 16 * PAGE);
	CHECK_EQ(a.pages_to_device, 12);
	CHECK_EQ(a.bytes_to_device, 12 * PAGE);
	CHECK_EQ(a.prefetched, 4);
	CHECK_EQ(a.faults, 0);
	CHECK_EQ(a.pages_to_system, 0);

	/* Home: three by CPU faults (or more with fault-around), the rest by a call. */
	touch_read(f.buf);
	touch_read(f.buf + 5 * PAGE);
	touch_read(f.buf + 9 * PAGE);
	a = rstats(f.h, f.buf);
	CHECK_GE(a.faults, 1);
	CHECK_LE(a.faults, 3);
	CHECK_GE(a.pages_to_system, 3);
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.buf, 16 * PAGE), (long)(12 - a.pages_to_system));
	a = rstats(f.h, f.buf);
	CHECK_EQ(a.pages_to_system, 12);
	CHECK_EQ(a.bytes_to_system, 12 * PAGE);
	CHECK_PATTERN_PAGES(f.buf, 16, f.seed);

	b = rstats(f.h, other);
	CHECK_EQ(b.start, (uintptr_t)other);
	CHECK_EQ(b.faults + b.pages_to_device + b.pages_to_system + b.prefetched, 0);

	/* mremap: the range keeps its counters at its new address. */
	dst = mmap(NULL, 16 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	moved = mremap(f.buf, 16 * PAGE, 16 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK_PTR(moved, dst);
	CHECK_EQ(uhmm_sync(f.h), 0);
	b = rstats(f.h, moved);
	CHECK_EQ(b.start, (uintptr_t)moved);
	CHECK_EQ(b.pages_to_device, 12);
	CHECK_EQ(b.pages_to_system, 12);
	CHECK_EQ(b.prefetched, 4);
	CHECK_EQ(b.faults, a.faults);
	f.buf = moved;

	/* Bad input. */
	{
		UHMM_OPTS(uhmm_range_stats, st);

		CHECK_EQ(uhmm_range_stats(f.h, dst + 64 * PAGE * 1024, &st), -ENOENT);
		CHECK_EQ(uhmm_range_stats(f.h, moved, NULL), -EINVAL);
		CHECK_EQ(uhmm_range_stats(NULL, moved, &st), -EINVAL);
		st.sz = 3;
		CHECK_EQ(uhmm_range_stats(f.h, moved, &st), -EINVAL);
	}
	CHECK_EQ(uhmm_free(f.h, other, 16 * PAGE), 0);
	fix_teardown(&f);
}
