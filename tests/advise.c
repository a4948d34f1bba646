/* advise.c - uhmm_advise: preferred location, accessed-by and read-mostly change what device faults do. */
#include "hmm_common.h"

#define NP 32
#define WORDS (PAGE / 8)

struct kargs {
	uint64_t *buf;
	uint64_t add;
};

static void k_add(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;
	uint64_t *pg = a->buf + i * WORDS;

	for (size_t w = 0; w < WORDS; w++)
		uhmm_sim_store_u64(ctx, &pg[w], uhmm_sim_load_u64(ctx, &pg[w]) + a->add);
}

static void k_sum(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;

	for (size_t w = 0; w < WORDS; w++)
		(void)uhmm_sim_load_u64(ctx, &a->buf[i * WORDS + w]);
}

struct fx {
	struct uhmm *h;
	struct uhmm_sim *sim;
	uint64_t *p;
};

static void fx_setup(struct fx *f)
{
	UHMM_OPTS(uhmm_sim_opts, o, .npages = 2 * NP);

	f->h = uhmm_test_open_migrating();
	CHECK_EQ(uhmm_sim_create(f->h, &o, &f->sim), 0);
	f->p = map_anon(NP * PAGE);
	CHECK_EQ(uhmm_manage(f->h, f->p, NP * PAGE), 0);
	for (size_t i = 0; i < NP * WORDS; i++)
		f->p[i] = i;
}

static void fx_teardown(struct fx *f)
{
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

static struct uhmm_sim_stats sstats(struct uhmm_sim *sim)
{
	UHMM_OPTS(uhmm_sim_stats, st);

	CHECK_EQ(uhmm_sim_stats(sim, &st), 0);
	return st;
}

static void check_added(const uint64_t *p, uint64_t add)
{
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(p[i], i + add);
}

TEST(bad_advice_is_refused)
{
	struct fx f;
	struct uhmm_advice_info ai;

	fx_setup(&f);
	CHECK_EQ(uhmm_advise(NULL, f.p, PAGE, UHMM_ADVISE_SET_READ_MOSTLY, NULL), -EINVAL);
	CHECK_EQ(uhmm_advise(f.h, (char *)f.p + 1, PAGE, UHMM_ADVISE_SET_READ_MOSTLY, NULL), -EINVAL);
	CHECK_EQ(uhmm_advise(f.h, f.p, 0, UHMM_ADVISE_SET_READ_MOSTLY, NULL), -EINVAL);
	CHECK_EQ(uhmm_advise(f.h, f.p, PAGE, (enum uhmm_advice)99, NULL), -EINVAL);
	CHECK_EQ(uhmm_advise(f.h, f.p, PAGE, UHMM_ADVISE_SET_ACCESSED_BY, NULL), -EINVAL);
	CHECK_EQ(uhmm_advice_get(f.h, f.p, NULL, NULL), -EINVAL);
	CHECK_EQ(uhmm_advice_get(f.h, f.p, NULL, &ai), 0);
	CHECK_EQ(ai.preferred, UHMM_PREFER_NONE);
	CHECK_EQ(ai.read_mostly, 0);
	fx_teardown(&f);
}

TEST(advice_is_recorded_per_range_and_unset)
{
	struct fx f;
	struct uhmm_devmem *dm;
	struct uhmm_advice_info ai;

	fx_setup(&f);
	dm = uhmm_sim_devmem(f.sim);
	CHECK_EQ(uhmm_advise(f.h, f.p, 8 * PAGE, UHMM_ADVISE_SET_PREFERRED_LOCATION, dm), 0);
	CHECK_EQ(uhmm_advise(f.h, f.p + 4 * WORDS, 4 * PAGE, UHMM_ADVISE_SET_PREFERRED_LOCATION, NULL), 0);
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_SET_ACCESSED_BY, dm), 0);
	CHECK_EQ(uhmm_advice_get(f.h, f.p, dm, &ai), 0);
	CHECK_EQ(ai.preferred, UHMM_PREFER_DEVICE);
	CHECK_PTR(ai.preferred_device, dm);
	CHECK_EQ(ai.accessed_by, 1);
	CHECK_EQ(uhmm_advice_get(f.h, f.p + 5 * WORDS, dm, &ai), 0);
	CHECK_EQ(ai.preferred, UHMM_PREFER_CPU);
	CHECK_EQ(uhmm_advice_get(f.h, f.p + 5 * WORDS, NULL, &ai), 0);
	CHECK_EQ(ai.accessed_by, 0); /* asked for no device */
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_UNSET_PREFERRED_LOCATION, NULL), 0);
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_UNSET_ACCESSED_BY, dm), 0);
	CHECK_EQ(uhmm_advice_get(f.h, f.p + 5 * WORDS, dm, &ai), 0);
	CHECK_EQ(ai.preferred, UHMM_PREFER_NONE);
	CHECK_EQ(ai.accessed_by, 0);
	fx_teardown(&f);
}

TEST(without_advice_device_touches_migrate)
{
	struct fx f;
	struct kargs a;

	fx_setup(&f);
	a = (struct kargs){ f.p, 1 };
	CHECK_EQ(uhmm_sim_launch(f.sim, k_add, NP, &a), 0);
	CHECK_EQ(sstats(f.sim).fault_migrated, NP);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), NP);
	check_added(f.p, 1);
	fx_teardown(&f);
}

TEST(preferred_cpu_maps_instead_of_moving)
{
	struct fx f;
	struct kargs a;

	fx_setup(&f);
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_SET_PREFERRED_LOCATION, NULL), 0);
	a = (struct kargs){ f.p, 2 };
	CHECK_EQ(uhmm_sim_launch(f.sim, k_add, NP, &a), 0);
	CHECK_EQ(sstats(f.sim).fault_migrated, 0);
	CHECK_GE(sstats(f.sim).fault_mapped, NP);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), 0);
	check_added(f.p, 2);
	fx_teardown(&f);
}

TEST(accessed_by_keeps_pages_where_they_are)
{
	struct fx f;
	struct kargs a;

	fx_setup(&f);
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_SET_ACCESSED_BY,
			     uhmm_sim_devmem(f.sim)), 0);
	a = (struct kargs){ f.p, 3 };
	CHECK_EQ(uhmm_sim_launch(f.sim, k_add, NP, &a), 0);
	CHECK_EQ(sstats(f.sim).fault_migrated, 0);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), 0);
	/* The CPU uses them meanwhile; the device's next launch still sees its writes. */
	check_added(f.p, 3);
	CHECK_EQ(uhmm_sim_launch(f.sim, k_add, NP, &a), 0);
	check_added(f.p, 6);
	fx_teardown(&f);
}

TEST(read_mostly_reads_leave_the_cpu_its_pages_writes_migrate)
{
	struct fx f;
	struct kargs a;

	fx_setup(&f);
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_SET_READ_MOSTLY, NULL), 0);
	a = (struct kargs){ f.p, 0 };
	CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &a), 0);
	CHECK_EQ(sstats(f.sim).fault_migrated, 0);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), 0);
	check_added(f.p, 0);
	/* Unset: the next device read migrates as usual. */
	CHECK_EQ(uhmm_advise(f.h, f.p, NP * PAGE, UHMM_ADVISE_UNSET_READ_MOSTLY, NULL), 0);
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.p, NP * PAGE), 0);
	a.add = 4;
	CHECK_EQ(uhmm_sim_launch(f.sim, k_add, NP, &a), 0);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), NP);
	check_added(f.p, 4);
	fx_teardown(&f);
}
