/* data: every byte survives migration to the device and the CPU touches (reads, writes) that bring it home. */
#include "harness.h"

#include <sys/stat.h>

#define BIG_LEN (64 * MiB)
#define BIG_PAGES (BIG_LEN / PAGE) /* 16384 */

struct big {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	char *buf;
	uint64_t seed;
	struct prng rng;
};

/* 64 MiB from uhmm_alloc, pattern-filled, all of it migrated to a sim device. */
static void big_setup(struct big *b, uint64_t seed)
{
	struct uhmm_devmem_stats ds;
	void *p = NULL;
	size_t i;

	b->h = uhmm_test_open_migrating();
	b->sim = uhmm_test_sim(b->h, BIG_PAGES);
	b->dm = uhmm_sim_devmem(b->sim);
	CHECK_EQ(uhmm_alloc(b->h, BIG_LEN, &p), 0);
	CHECK_NONNULL(p);
	b->buf = p;
	prng_init(&b->rng, seed, "page order");
	b->seed = prng_next(&b->rng);
	pattern_fill(b->buf, BIG_LEN, b->seed);

	CHECK_EQ(uhmm_migrate_to_device(b->dm, b->buf, BIG_LEN), (long long)BIG_PAGES);

	/* Sampled pages, the first and the last included, are on the device. */
	CHECK_STATE(b->h, b->buf, UHMM_PAGE_DEVICE);
	CHECK_STATE(b->h, b->buf + BIG_LEN - PAGE, UHMM_PAGE_DEVICE);
	for (i = 0; i < 256; i++)
		CHECK_STATE(b->h, b->buf + prng_below(&b->rng, BIG_PAGES) * PAGE,
			    UHMM_PAGE_DEVICE);

	ds = dmstats(b->dm);
	CHECK_EQ(ds.in_use, BIG_PAGES);
	CHECK_EQ(ds.resident, BIG_PAGES);
}

static void big_teardown(struct big *b)
{
	CHECK_EQ(uhmm_free(b->h, b->buf, BIG_LEN), 0);
	CHECK_EQ(uhmm_sim_destroy(b->sim), 0);
	uhmm_close(b->h);
}

TEST(read_64mib_random_order)
{
	struct big b;
	struct uhmm_devmem_stats ds;
	size_t *perm, i;

	big_setup(&b, 0x5eed0001);
	perm = prng_perm(&b.rng, BIG_PAGES);
	for (i = 0; i < BIG_PAGES; i++)
		CHECK_PATTERN_PAGE(b.buf, perm[i], b.seed);
	free(perm);

	ds = dmstats(b.dm);
	CHECK_EQ(ds.in_use, 0);
	CHECK_EQ(ds.resident, 0);
	CHECK_EQ(count_state(b.h, b.buf, BIG_PAGES, UHMM_PAGE_DEVICE), 0);
	CHECK_STATE(b.h, b.buf + (BIG_PAGES / 2) * PAGE, UHMM_PAGE_SYSTEM);
	big_teardown(&b);
}

TEST(write_64mib_random_order)
{
	struct big b;
	struct uhmm_devmem_stats ds;
	size_t *perm, i, k;

	big_setup(&b, 0x5eed0002);
	perm = prng_perm(&b.rng, BIG_PAGES);
	for (i = 0; i < BIG_PAGES; i++) {
		size_t idx = perm[i];
		char *pg = b.buf + idx * PAGE;
		uint64_t expw[PAGE / 8];
		unsigned char *exp = (unsigned char *)expw;
		size_t off[3];

		/* Three writes at random offsets; the first touch of the page is a write. */
		pattern_page(expw, idx, b.seed);
		for (k = 0; k < ARRAY_SIZE(off); k++) {
			unsigned char v;

			off[k] = (size_t)prng_below(&b.rng, PAGE);
			v = (unsigned char)(exp[off[k]] ^ (0x5a + k));
			((volatile char *)pg)[off[k]] = (char)v;
			exp[off[k]] = v;
		}
		CHECK_MEM(pg, exp, PAGE);
	}
	free(perm);

	ds = dmstats(b.dm);
	CHECK_EQ(ds.in_use, 0);
	CHECK_EQ(ds.resident, 0);
	CHECK_EQ(count_state(b.h, b.buf, BIG_PAGES, UHMM_PAGE_DEVICE), 0);
	big_teardown(&b);
}

/* Migrate @npages of pattern-filled memory at @buf, touch them back in random order. */
static void migrate_touch_check(struct uhmm *h, struct uhmm_devmem *dm, char *buf, size_t npages,
				uint64_t seed, struct prng *rng)
{
	size_t *perm, i;

	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_DEVICE), npages);
	CHECK_EQ(dmstats(dm).resident, npages);
	perm = prng_perm(rng, npages);
	for (i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, perm[i], seed);
	free(perm);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_SYSTEM), npages);
	CHECK_EQ(dmstats(dm).in_use, 0);
}

TEST(manage_mmap_keeps_data)
{
	const size_t npages = 256;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	char *buf = map_anon(npages * PAGE);
	struct prng rng;
	uint64_t seed;

	prng_init(&rng, 0x5eed0003, "mmap data");
	seed = prng_next(&rng);
	pattern_fill(buf, npages * PAGE, seed);
	CHECK_EQ(uhmm_manage(h, buf, npages * PAGE), 0);
	/* Adopted memory keeps its data and stays on the CPU. */
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_SYSTEM), npages);
	CHECK_PATTERN_PAGE(buf, 0, seed);
	CHECK_PATTERN_PAGE(buf, npages - 1, seed);

	migrate_touch_check(h, uhmm_sim_devmem(sim), buf, npages, seed, &rng);
	CHECK_EQ(uhmm_unmanage(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_page_state(h, buf), -ENOENT);
	CHECK_PATTERN_PAGE(buf, 17, seed);
	unmap(buf, npages * PAGE);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(manage_posix_memalign_keeps_data)
{
	const size_t npages = 300; /* > the malloc mmap threshold: private anonymous */
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	void *p = NULL;
	char *buf;
	struct prng rng;
	uint64_t seed;

	CHECK_EQ(posix_memalign(&p, PAGE, npages * PAGE), 0);
	buf = p;
	prng_init(&rng, 0x5eed0004, "posix_memalign data");
	seed = prng_next(&rng);
	pattern_fill(buf, npages * PAGE, seed);
	CHECK_EQ(uhmm_manage(h, buf, npages * PAGE), 0);
	migrate_touch_check(h, uhmm_sim_devmem(sim), buf, npages, seed, &rng);
	/* Once more, then unmanage with the pages still on the device: they come home. */
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, npages * PAGE),
		 (long long)npages);
	CHECK_EQ(uhmm_unmanage(h, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(dmstats(uhmm_sim_devmem(sim)).in_use, 0);
	for (size_t i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	free(p);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(manage_malloc_aligned_part_keeps_data)
{
	const size_t len = 2 * MiB + 1234;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, len / PAGE);
	char *raw = malloc(len), *buf;
	uintptr_t start, end;
	size_t npages;
	struct prng rng;
	uint64_t seed;

	CHECK_NONNULL(raw);
	start = ((uintptr_t)raw + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
	end = ((uintptr_t)raw + len) & ~(uintptr_t)(PAGE - 1);
	buf = (char *)start;
	npages = (end - start) / PAGE;
	CHECK_GT(npages, 500);
	prng_init(&rng, 0x5eed0005, "malloc data");
	seed = prng_next(&rng);
	/* The bytes around the managed part stay untouched, and are checked. */
	memset(raw, 0xa5, len);
	pattern_fill(buf, npages * PAGE, seed);
	CHECK_EQ(uhmm_manage(h, buf, npages * PAGE), 0);
	migrate_touch_check(h, uhmm_sim_devmem(sim), buf, npages, seed, &rng);
	CHECK_EQ(uhmm_unmanage(h, buf, npages * PAGE), 0);
	for (char *q = raw; q < buf; q++)
		CHECK_EQ((unsigned char)*q, 0xa5);
	for (char *q = (char *)end; q < raw + len; q++)
		CHECK_EQ((unsigned char)*q, 0xa5);
	free(raw);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(empty_pages_come_back_as_zeros)
{
	const size_t npages = 64;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_devmem_stats ds;
	void *p = NULL;
	char *buf;
	size_t i;

	CHECK_EQ(uhmm_alloc(h, npages * PAGE, &p), 0);
	buf = p;
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_EMPTY), npages);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_DEVICE), npages);
	ds = dmstats(dm);
	CHECK_EQ(ds.in_use, npages);
	CHECK_EQ(ds.resident, npages);
	for (i = 0; i < npages; i++)
		CHECK_ZERO_PAGE(buf + i * PAGE);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_DEVICE), 0);
	CHECK_EQ(dmstats(dm).in_use, 0);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* @npages of managed memory, pattern-filled from a seed drawn as @what (HARNESS_SEED replays it). */
static char *patterned(struct uhmm *h, size_t npages, uint64_t seed0, const char *what,
		       uint64_t *seed)
{
	struct prng rng;
	void *p = NULL;

	CHECK_EQ(uhmm_alloc(h, npages * PAGE, &p), 0);
	prng_init(&rng, seed0, what);
	*seed = prng_next(&rng);
	pattern_fill(p, npages * PAGE, *seed);
	return p;
}

TEST(migrate_to_ram_brings_pages_home)
{
	const size_t npages = 256;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_devmem_stats ds;
	struct uhmm_stats before, after;
	uint64_t seed;
	char *buf = patterned(h, npages, 0x5eed0006, "migrate_to_ram data", &seed);
	size_t i;

	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(dmstats(dm).in_use, npages);

	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_SYSTEM), npages);
	ds = dmstats(dm);
	CHECK_EQ(ds.in_use, 0);
	CHECK_EQ(ds.resident, 0);
	/* The pages are really home: reading them faults nothing. */
	before = hstats(h);
	for (i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	after = hstats(h);
	CHECK_EQ(after.faults, before.faults);
	/* Nothing left to bring home. */
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), 0);

	/* A part of the range: only those pages come home. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf + 16 * PAGE, 32 * PAGE), 32);
	CHECK_EQ(count_state(h, buf + 16 * PAGE, 32, UHMM_PAGE_SYSTEM), 32);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_DEVICE), npages - 32);
	CHECK_EQ(dmstats(dm).in_use, npages - 32);
	for (i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * Past 8 MiB in one go the sim's copy engine streams, four pages at a time:
 * every byte still arrives, holes among them (zeros, no copy) and a count of
 * pages no multiple of four included.
 */
TEST(streamed_migration_keeps_every_byte)
{
	const size_t npages = 40 * MiB / PAGE + 3, streamed = 8 * MiB / PAGE;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct prng rng;
	uint64_t seed;
	void *p = NULL;
	char *buf;
	size_t i, holes = 0;

	CHECK_EQ(uhmm_alloc(h, npages * PAGE, &p), 0);
	buf = p;
	prng_init(&rng, 0x5eed0011, "streamed migration");
	seed = prng_next(&rng);
	pattern_fill(buf, npages * PAGE, seed);
	/* Holes past the first 8 MiB, where the copies stream. */
	for (i = streamed; i < npages; i += 7 + prng_below(&rng, 5), holes++)
		CHECK_EQ(madvise(buf + i * PAGE, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(simstats(sim).copies_to, npages);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)npages);
	for (i = 0; i < npages; i++) {
		if (page_is_zero(buf + i * PAGE) && i >= streamed)
			continue; /* a hole: checked below by count */
		CHECK_PATTERN_PAGE(buf, i, seed);
	}
	for (i = 0; i < npages; i++)
		holes -= page_is_zero(buf + i * PAGE);
	CHECK_EQ(holes, 0);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * A migration to the device keeps the system pages it frees, 2 MiB chunks
 * of them (struct uhmm_stats: pages_kept), and pages coming home are
 * copied into those and moved into place (pages_recycled): every byte
 * arrives, a chunk with a hole is not kept, a chunk used in part keeps the
 * rest, and what is kept comes to zero once all is home.
 */
TEST(pages_home_reuse_what_migration_out_freed)
{
	const size_t npages = 4 * 512; /* four chunks */
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_stats s0, s1;
	uint64_t seed;
	char *buf = patterned(h, npages, 0x5eed0012, "recycled pages", &seed);
	size_t i;

	s0 = hstats(h);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	s1 = hstats(h);
	CHECK_EQ(s1.pages_kept, npages);

	/* 259 pages from inside the second chunk on, then the rest. */
	CHECK_EQ(uhmm_migrate_to_ram(h, buf + 700 * PAGE, 259 * PAGE), 259);
	s1 = hstats(h);
	CHECK_EQ(s1.pages_recycled - s0.pages_recycled, 259);
	CHECK_EQ(s1.pages_kept, npages - 259);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)(npages - 259));
	s1 = hstats(h);
	CHECK_EQ(s1.pages_recycled - s0.pages_recycled, npages);
	CHECK_EQ(s1.pages_kept, 0);
	for (i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);

	/*
	 * CPU touches bring them home through kept pages as well, but for
	 * runs under 32 pages (a stream's first windows, 1 + 2 + 4 + 8 + 16
	 * pages, and the last page before a 2 MiB boundary): those by copy.
	 * What they did not use stays kept.
	 */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	s0 = hstats(h);
	CHECK_EQ(s0.pages_kept, npages);
	for (i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	s1 = hstats(h);
	CHECK_GE(s1.pages_recycled - s0.pages_recycled, npages - 32);
	CHECK_EQ(s1.pages_kept, npages - (s1.pages_recycled - s0.pages_recycled));
	WAIT_FOR(hstats(h).pages_kept == 0);

	/* A hole in the third chunk: that chunk's pages are discarded, not kept. */
	CHECK_EQ(madvise(buf + 1100 * PAGE, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(hstats(h).pages_kept, npages - 512);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(hstats(h).pages_kept, 0);
	for (i = 0; i < npages; i++) {
		if (i == 1100)
			CHECK(page_is_zero(buf + i * PAGE));
		else
			CHECK_PATTERN_PAGE(buf, i, seed);
	}
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * Part of a chunk is kept too: a migration of 100 pages from the middle of
 * a chunk keeps its 100, and they come home through those; so do those a
 * fault brings home in runs of 32 pages or more (the first 31 of a stream
 * come by copy). A migration of fewer than 32 pages keeps nothing (the
 * look costs more than it saves there). Every byte.
 */
TEST(part_chunks_are_kept_too)
{
	const size_t npages = 1024, at = 300, part = 100, few = 31;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, npages);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct uhmm_stats s0, s1;
	uint64_t seed;
	char *buf = patterned(h, npages, 0x5eed0016, "part chunks", &seed);
	size_t i;

	s0 = hstats(h);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf + at * PAGE, part * PAGE), (long long)part);
	CHECK_EQ(hstats(h).pages_kept, part);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf + at * PAGE, part * PAGE), (long long)part);
	s1 = hstats(h);
	CHECK_EQ(s1.pages_recycled - s0.pages_recycled, part);
	CHECK_EQ(s1.pages_kept, 0);

	CHECK_EQ(uhmm_migrate_to_device(dm, buf + at * PAGE, part * PAGE), (long long)part);
	for (i = at; i < at + part; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	s0 = s1;
	s1 = hstats(h);
	CHECK_EQ(s1.pages_home - s0.pages_home, part);
	CHECK_EQ(s1.pages_recycled - s0.pages_recycled, part - 31);
	CHECK_EQ(s1.pages_kept, 31);
	WAIT_FOR(hstats(h).pages_kept == 0);
	s1 = hstats(h);

	CHECK_EQ(uhmm_migrate_to_device(dm, buf + 700 * PAGE, few * PAGE), (long long)few);
	CHECK_EQ(hstats(h).pages_kept, 0);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf + 700 * PAGE, few * PAGE), (long long)few);
	CHECK_EQ(hstats(h).pages_recycled, s1.pages_recycled);
	CHECK_PATTERN_PAGES(buf, npages, seed);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * Kept pages are memory the program no longer has in use: at most keep_mib
 * of them, and those left unused for a second are given back to the
 * kernel. Pages home then come by UFFDIO_COPY, every byte as well; so do
 * pages whose destination staging cannot move into (read-only memory).
 */
TEST(kept_pages_are_bounded_and_given_back)
{
	const size_t npages = 128 * MiB / PAGE, small = 3 * 512;
	UHMM_OPTS(uhmm_open_opts, o, .keep_mib = 97); /* 48 chunks: rounded down */
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	struct uhmm_stats s0;
	uint64_t seed;
	char *buf;
	size_t i;

	uhmm_test_open_opts(&h, &o);
	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, npages);
	dm = uhmm_sim_devmem(sim);
	buf = patterned(h, npages, 0x5eed0013, "kept pages", &seed);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	/* All 96 MiB, unless the migration took over a second (then the first went). */
	s0 = hstats(h);
	CHECK(s0.pages_kept <= 96 * MiB / PAGE);
	CHECK(s0.pages_kept > 0);
	WAIT_FOR(hstats(h).pages_kept == 0);
	s0 = hstats(h);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(hstats(h).pages_recycled, s0.pages_recycled);
	CHECK_PATTERN_PAGES(buf, npages, seed);

	/* Read-only: the pages come home by copy, and staging keeps its own. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, small * PAGE), (long long)small);
	CHECK_EQ(hstats(h).pages_kept, small);
	CHECK_EQ(mprotect(buf, small * PAGE, PROT_READ), 0);
	s0 = hstats(h);
	for (i = 0; i < small; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(hstats(h).pages_recycled, s0.pages_recycled);
	CHECK_EQ(hstats(h).pages_kept, small);
	CHECK_EQ(count_state(h, buf, small, UHMM_PAGE_SYSTEM), small);
	CHECK_EQ(mprotect(buf, small * PAGE, PROT_READ | PROT_WRITE), 0);
	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * The bound is the handle's: 1 MiB keeps no chunk (every page home is
 * allocated by the kernel), the default keeps the whole of a 300 MiB
 * migration where the machine has 4.7 GiB or more (a sixteenth), and every
 * page comes home through the kept ones.
 */
TEST(keep_bound_is_an_option)
{
	const size_t npages = 300 * MiB / PAGE;
	long phys = sysconf(_SC_PHYS_PAGES);

	for (int pass = 0; pass < 2; pass++) {
		UHMM_OPTS(uhmm_open_opts, o, .keep_mib = pass ? 0 : 1);
		struct uhmm *h;
		struct uhmm_sim *sim;
		struct uhmm_stats s0, s1;
		uint64_t seed;
		char *buf;
		long long got;

		uhmm_test_open_opts(&h, &o);
		uhmm_test_require_migrate(h);
		sim = uhmm_test_sim(h, npages);
		buf = patterned(h, npages, 0x5eed0014 + (unsigned)pass, "keep option", &seed);
		s0 = hstats(h);
		got = uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, npages * PAGE);
		CHECK_EQ(got, (long long)npages);
		got = uhmm_migrate_to_ram(h, buf, npages * PAGE);
		s1 = hstats(h);
		CHECK_EQ(got, (long long)npages);
		CHECK_PATTERN_PAGES(buf, npages, seed);
		if (!pass) {
			CHECK_EQ(s1.pages_kept, 0);
			CHECK_EQ(s1.pages_recycled, s0.pages_recycled);
		} else if (phys > 0 && (uint64_t)phys * PAGE / 16 >= npages * PAGE) {
			/* Unless a chunk went unused for a second between the two. */
			CHECK(s1.pages_recycled - s0.pages_recycled >= npages / 2);
			/* 150 chunks, three words of the pool's bitmap: all given back. */
			got = uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, npages * PAGE);
			CHECK_EQ(got, (long long)npages);
			CHECK(hstats(h).pages_kept > 128 * 512);
			WAIT_FOR(hstats(h).pages_kept == 0);
			CHECK_EQ(uhmm_migrate_to_ram(h, buf, npages * PAGE), (long long)npages);
			CHECK_PATTERN_PAGES(buf, npages, seed);
		}
		CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
		CHECK_EQ(uhmm_sim_destroy(sim), 0);
		uhmm_close(h);
	}
}

/*
 * A memory cgroup of our own, limited to @limit bytes: v1 (the memory
 * controller's hierarchy) or v2 (where the root delegates "memory"). Its
 * directory in @dir; NULL, or why there is none.
 */
static const char *memcg_create(char *dir, size_t n, uint64_t limit)
{
	static const struct {
		const char *root, *check, *file;
	} at[] = { { "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.limit_in_bytes" },
		   { "/sys/fs/cgroup", "cgroup.subtree_control", "memory.max" } };
	char path[512], buf[256];

	for (size_t i = 0; i < 2; i++) {
		FILE *f;

		snprintf(path, sizeof(path), "%s/%s", at[i].root, at[i].check);
		f = fopen(path, "re");
		if (!f)
			continue;
		buf[0] = 0;
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
		if (i == 1 && !strstr(buf, "memory"))
			continue;
		snprintf(dir, n, "%s/uhmm-test-%d", at[i].root, (int)getpid());
		if (mkdir(dir, 0755) && errno != EEXIST)
			return "cannot create a memory cgroup (not root, or no delegation)";
		snprintf(path, sizeof(path), "%s/%s", dir, at[i].file);
		f = fopen(path, "we");
		if (f) {
			bool ok = fprintf(f, "%llu\n", (unsigned long long)limit) > 0;

			if (!fclose(f) && ok)
				return NULL;
		}
		rmdir(dir);
		return "cannot set a memory cgroup's limit";
	}
	return "no memory cgroup hierarchy that this process may extend";
}

#define CG_PAGES (64 * MiB / PAGE)

static void keep_in_memcg(void *arg)
{
	FILE *f;
	struct uhmm *h;
	struct uhmm_sim *sim;
	uint64_t seed;
	char path[600], *buf;

	snprintf(path, sizeof(path), "%s/cgroup.procs", (const char *)arg);
	f = fopen(path, "we");
	CHECK_NONNULL(f);
	CHECK(fprintf(f, "0\n") > 0);
	CHECK_EQ(fclose(f), 0);
	h = uhmm_test_open_migrating();
	sim = uhmm_test_sim(h, CG_PAGES);
	buf = patterned(h, CG_PAGES, 0x5eed0c96, "keep in a cgroup", &seed);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, CG_PAGES * PAGE),
		 (long long)CG_PAGES);
	/* A 512 MiB limit keeps 32 MiB of the 64 that went out, at most. */
	CHECK_GT(hstats(h).pages_kept, 0);
	CHECK_LE(hstats(h).pages_kept, 32 * MiB / PAGE);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, CG_PAGES * PAGE), (long long)CG_PAGES);
	CHECK_PATTERN_PAGES(buf, CG_PAGES, seed);
	uhmm_close(h);
}

/*
 * In a container (a cgroup with a memory limit), the default keep bound is a
 * sixteenth of the limit, not of the machine: a runtime that migrates pages
 * out to make room must not find them still held.
 */
TEST(keep_bound_follows_the_cgroup_limit)
{
	long phys = sysconf(_SC_PHYS_PAGES);
	char dir[256];
	const char *why;
	int status;

	if (phys <= 0 || (uint64_t)phys * PAGE / 16 < CG_PAGES * PAGE)
		SKIP("a sixteenth of this machine's memory is under 64 MiB: it bounds keeping anyway");
	why = memcg_create(dir, sizeof(dir), 512 * MiB);
	if (why)
		SKIP("%s", why);
	status = harness_run_child(keep_in_memcg, dir);
	CHECK_EQ(rmdir(dir), 0);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		SKIP("skipped in the cgroup (see its output)");
	CHECK_EXITED(status, 0);
}

/* Regression: uhmm_close once refused its own migrations home (closed too early): zeros. */
TEST(close_brings_device_pages_home)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 64);
	char *p = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		       0);

	CHECK(p != MAP_FAILED);
	pattern_fill(p, 64 * PAGE, 0xc105e);
	CHECK_EQ(uhmm_manage(h, p, 64 * PAGE), 0);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p, 64 * PAGE), 64);
	uhmm_close(h);
	/* Plain memory now, every byte home. */
	CHECK_PATTERN_PAGES(p, 64, 0xc105e);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	munmap(p, 64 * PAGE);
}
