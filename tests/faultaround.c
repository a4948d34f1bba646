/* faultaround.c - fault-back windows: sequential sweeps bring neighbours home, random access does not. */
#include "harness.h"

#define NPAGES 1024 /* 4 MiB: two 2 MiB windows' worth */

struct fx {
	struct uhmm *h;
	struct uhmm_sim *sim;
	char *buf;
};

static void fx_setup(struct fx *f)
{
	void *p;

	f->h = uhmm_test_open_migrating();
	f->sim = uhmm_test_sim(f->h, NPAGES);
	/* 2 MiB aligned, so the window arithmetic below is exact. */
	CHECK_EQ(uhmm_alloc(f->h, NPAGES * PAGE + 2 * MiB, &p), 0);
	f->buf = (char *)(((uintptr_t)p + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	for (size_t i = 0; i < NPAGES; i++)
		memset(f->buf + i * PAGE, (int)(i * 13 + 1), PAGE);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f->sim), f->buf, NPAGES * PAGE), NPAGES);
}

static void fx_teardown(struct fx *f)
{
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

static void check_page(struct fx *f, size_t i)
{
	char exp[PAGE];

	memset(exp, (int)(i * 13 + 1), PAGE);
	CHECK_MEM(f->buf + i * PAGE, exp, PAGE);
}

/* Check pages [from, to) from the CPU in order; what it took: the handle's counters' growth. */
static struct uhmm_stats sweep(struct fx *f, size_t from, size_t to)
{
	struct uhmm_stats s0 = hstats(f->h), s;

	for (size_t i = from; i < to; i++)
		check_page(f, i);
	s = hstats(f->h);
	s.faults -= s0.faults;
	s.faults_device -= s0.faults_device;
	s.pages_home -= s0.pages_home;
	s.pages_out -= s0.pages_out;
	s.zero_fills -= s0.zero_fills;
	s.poisoned -= s0.poisoned;
	s.events -= s0.events;
	return s;
}

TEST(sequential_sweep_doubles_the_window_up_to_2mib)
{
	struct fx f;
	struct uhmm_stats d;

	fx_setup(&f);
	d = sweep(&f, 0, NPAGES);
	/*
	 * Windows 1, 2, 4, ..., 256 cover 511 pages of the first 2 MiB, then
	 * one page to its boundary; the next 2 MiB: 512 (the stream continues).
	 */
	CHECK_EQ(d.pages_home, NPAGES);
	CHECK_EQ(d.faults_device, 11);
	CHECK_EQ(dmstats(uhmm_sim_devmem(f.sim)).in_use, 0);
	fx_teardown(&f);
}

TEST(random_touches_bring_one_page_each)
{
	struct fx f;
	struct uhmm_stats s0, s;
	struct prng rng;
	size_t *perm;

	fx_setup(&f);
	prng_init(&rng, 0xfa017, "random order");
	perm = prng_perm(&rng, NPAGES);
	s0 = hstats(f.h);
	for (size_t k = 0; k < NPAGES; k++) {
		/* One page home per fault, unless this touch followed the last one's page. */
		check_page(&f, perm[k]);
	}
	s = hstats(f.h);
	CHECK_EQ(s.pages_home - s0.pages_home, NPAGES);
	CHECK_GE(s.faults_device - s0.faults_device, NPAGES * 9 / 10);
	free(perm);
	fx_teardown(&f);
}

TEST(a_single_touch_brings_one_page)
{
	struct fx f;
	struct uhmm_stats s0, s;

	fx_setup(&f);
	s0 = hstats(f.h);
	check_page(&f, 300);
	s = hstats(f.h);
	CHECK_EQ(s.pages_home - s0.pages_home, 1);
	CHECK_EQ(dmstats(uhmm_sim_devmem(f.sim)).in_use, NPAGES - 1);
	CHECK_EQ(uhmm_page_state(f.h, f.buf + 301 * PAGE), UHMM_PAGE_DEVICE);
	fx_teardown(&f);
}

TEST(window_stops_at_pages_not_on_the_device)
{
	struct fx f;

	fx_setup(&f);
	/* Bring page 5 home, then sweep 0..9: the window skips what is home. */
	check_page(&f, 5);
	for (size_t i = 0; i < 10; i++)
		check_page(&f, i);
	for (size_t i = 0; i < 10; i++)
		CHECK_EQ(uhmm_page_state(f.h, f.buf + i * PAGE), UHMM_PAGE_SYSTEM);
	fx_teardown(&f);
}

TEST(fault_window_one_turns_fault_around_off)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_window = 1);
	UHMM_OPTS(uhmm_open_opts, bad, .fault_window = 513);
	struct uhmm *h = (struct uhmm *)1;
	struct uhmm_sim *sim;
	struct uhmm_stats s0, s;
	void *p;
	char *buf;

	CHECK_EQ(uhmm_open(&h, &bad), -EINVAL);
	uhmm_test_open_opts(&h, &o);
	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, 64);
	CHECK_EQ(uhmm_alloc(h, 64 * PAGE, &p), 0);
	buf = p;
	memset(buf, 3, 64 * PAGE);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, 64 * PAGE), 64);
	s0 = hstats(h);
	for (size_t i = 0; i < 64; i++)
		CHECK_EQ(buf[i * PAGE], 3);
	s = hstats(h);
	/* A sweep, and still one page per fault. */
	CHECK_EQ(s.faults_device - s0.faults_device, 64);
	CHECK_EQ(s.pages_home - s0.pages_home, 64);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

static unsigned long four_pages(const struct uhmm_fault *vmf, unsigned long max)
{
	(void)vmf;
	(void)max;
	return 4;
}

static const struct uhmm_prefetch_policy four = {
	.abi = UHMM_PREFETCH_POLICY_ABI, .name = "four", .window = four_pages,
};

/* The fault-around decision is a per-region ops table: none, a custom one, back to adaptive. */
TEST(prefetch_policy_is_chosen_per_region)
{
	struct fx f;
	struct uhmm_devmem *dm;
	struct uhmm_stats d;
	static const struct uhmm_prefetch_policy bad = { .abi = 99, .window = four_pages };
	static const struct uhmm_prefetch_policy nowin = { .abi = UHMM_PREFETCH_POLICY_ABI };

	fx_setup(&f);
	dm = uhmm_sim_devmem(f.sim);
	CHECK_EQ(uhmm_devmem_set_prefetch(NULL, &four), -EINVAL);
	CHECK_EQ(uhmm_devmem_set_prefetch(dm, &bad), -EINVAL);
	CHECK_EQ(uhmm_devmem_set_prefetch(dm, &nowin), -EINVAL);

	/* None: one fault per page of a sweep. */
	CHECK_EQ(uhmm_devmem_set_prefetch(dm, &uhmm_prefetch_none), 0);
	d = sweep(&f, 0, 64);
	CHECK_EQ(d.faults_device, 64);
	CHECK_EQ(d.pages_home, 64);

	/* A custom window of four pages: one fault per four. */
	CHECK_EQ(uhmm_devmem_set_prefetch(dm, &four), 0);
	d = sweep(&f, 64, 128);
	CHECK_EQ(d.faults_device, 16);
	CHECK_EQ(d.pages_home, 64);

	/* Back to the default (adaptive): the rest of the first 2 MiB in few faults. */
	CHECK_EQ(uhmm_devmem_set_prefetch(dm, NULL), 0);
	d = sweep(&f, 128, 512);
	CHECK_EQ(d.pages_home, 384);
	CHECK_LT(d.faults_device, 16);
	fx_teardown(&f);
}

/* A handle and 4 MiB of fresh managed memory on a 2 MiB boundary, touched in order. */
struct fresh {
	struct uhmm *h;
	struct uhmm_stats s0; /* the handle's counters before the touches */
	void *raw;	      /* what to free */
	char *buf;
	long long grew; /* RSS growth over the touches */
};

/*
 * Touch pages 0-255 of fresh memory in order (@write: a byte each, else a
 * read): windows 1, 2, ..., 256 pages cover pages 0-510 in 9 faults, the
 * window ahead filled as the touch that continued the stream asks.
 */
static void first_touches(struct fresh *f, bool write)
{
	struct uhmm_stats s;
	long long rss0;

	f->h = uhmm_test_open_migrating();
	f->s0 = hstats(f->h);
	CHECK_EQ(uhmm_alloc(f->h, NPAGES * PAGE + 2 * MiB, &f->raw), 0);
	f->buf = (char *)(((uintptr_t)f->raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	rss0 = harness_rss_bytes();
	for (size_t i = 0; i < 256; i++) {
		if (write)
			f->buf[i * PAGE] = (char)(i + 1);
		else
			CHECK_EQ(((volatile char *)f->buf)[i * PAGE], 0);
	}
	s = hstats(f->h);
	f->grew = harness_rss_bytes() - rss0;
	NOTE("RSS grew by %lld KiB for 256 pages %s", f->grew / 1024, write ? "written" : "read");
	CHECK_EQ(s.faults - f->s0.faults, 9);
	CHECK_EQ(s.zero_fills - f->s0.zero_fills, 511);
}

static void fresh_done(struct fresh *f)
{
	CHECK_EQ(uhmm_free(f->h, f->raw, NPAGES * PAGE + 2 * MiB), 0);
	uhmm_close(f->h);
}

/*
 * First writes in order: the fault that continues the stream fills its whole
 * window with private zeroed pages, so the writes that follow take no fault
 * at all (a zero page there would cost each a copy-on-write fault). After
 * pages 0-510, one more fault fills page 511 (the 2 MiB boundary), one the
 * next 2 MiB.
 */
TEST(first_writes_in_a_stream_fill_ahead_with_private_pages)
{
	struct fresh f;
	struct uhmm_stats s;
	size_t i;

	first_touches(&f, true);
	/* Pages 256-510, not written yet, are private pages already: counted in RSS. */
	CHECK_GE(f.grew, (long long)(511 * PAGE));
	for (i = 256; i < 511; i++) {
		CHECK_EQ(f.buf[i * PAGE + PAGE - 1], 0);
		f.buf[i * PAGE] = (char)(i + 1);
	}
	CHECK_EQ(hstats(f.h).faults - f.s0.faults, 9);
	for (i = 511; i < NPAGES; i++)
		f.buf[i * PAGE] = (char)(i + 1);
	s = hstats(f.h);
	CHECK_EQ(s.faults - f.s0.faults, 11);
	CHECK_EQ(s.zero_fills - f.s0.zero_fills, NPAGES);
	for (i = 0; i < NPAGES; i++) {
		CHECK_EQ(f.buf[i * PAGE], (char)(i + 1));
		CHECK_EQ(f.buf[i * PAGE + 1], 0);
	}
	fresh_done(&f);
}

/* First reads in order: the same windows, mapped with the zero page (no memory). */
TEST(first_reads_in_a_stream_map_the_zero_page)
{
	struct fresh f;

	first_touches(&f, false);
	CHECK_LT(f.grew, (long long)(128 * PAGE));
	/* A write there is the kernel's own copy-on-write: no userfaultfd fault. */
	f.buf[300 * PAGE] = 7;
	CHECK_EQ(hstats(f.h).faults - f.s0.faults, 9);
	CHECK_EQ(f.buf[300 * PAGE], 7);
	CHECK_EQ(f.buf[301 * PAGE], 0);
	fresh_done(&f);
}
