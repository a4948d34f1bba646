/* hmm_sim: the sim device computes: kernels over an index space reach memory only through its page table, device faults migrate or map, invalidations and mprotect are honoured. */
#include "hmm_common.h"

#define NPAGES 64
#define WORDS (PAGE / 8)

struct kargs {
	uint64_t *buf;
	uint64_t add;
};

/* Page i: every word += add, through the device. */
static void k_add(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;
	uint64_t *pg = a->buf + i * WORDS;

	for (size_t w = 0; w < WORDS; w++)
		uhmm_sim_store_u64(ctx, &pg[w], uhmm_sim_load_u64(ctx, &pg[w]) + a->add);
}

static void k_read(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;

	(void)uhmm_sim_load_u64(ctx, a->buf + i * WORDS);
}

static struct uhmm_sim *sim_new(struct uhmm *h, unsigned long npages, unsigned policy,
				unsigned threads)
{
	UHMM_OPTS(uhmm_sim_opts, o, .npages = npages, .policy = policy, .threads = threads);
	struct uhmm_sim *sim = NULL;

	CHECK_EQ(uhmm_sim_create(h, &o, &sim), 0);
	return sim;
}

static uint64_t *managed(struct uhmm *h, size_t npages)
{
	uint64_t *p = map_anon(npages * PAGE);

	CHECK_EQ(uhmm_manage(h, p, npages * PAGE), 0);
	for (size_t i = 0; i < npages * WORDS; i++)
		p[i] = i;
	return p;
}

static void check_added(const uint64_t *p, size_t npages, uint64_t add)
{
	for (size_t i = 0; i < npages * WORDS; i++)
		CHECK_MSG(p[i] == i + add, "word %zu: %llu, expected %llu", i,
			  (unsigned long long)p[i], (unsigned long long)(i + add));
}

TEST(options)
{
	struct uhmm *h;
	struct uhmm_sim *sim = NULL;

	uhmm_test_open(&h);
	{
		UHMM_OPTS(uhmm_sim_opts, o, .threads = UHMM_SIM_MAX_THREADS + 1);
		CHECK_EQ(uhmm_sim_create(h, &o, &sim), -EINVAL);
	}
	{
		UHMM_OPTS(uhmm_sim_opts, o, .policy = 3);
		CHECK_EQ(uhmm_sim_create(h, &o, &sim), -EINVAL);
	}
	{
		UHMM_OPTS(uhmm_sim_opts, o, .fault_window = 3);
		CHECK_EQ(uhmm_sim_create(h, &o, &sim), -EINVAL);
	}
	{
		UHMM_OPTS(uhmm_sim_opts, o, .fault_window = 1024);
		CHECK_EQ(uhmm_sim_create(h, &o, &sim), -EINVAL);
	}
	{
		/* An older caller's struct: the new fields read as defaults. */
		struct uhmm_sim_opts o = { .sz = offsetof(struct uhmm_sim_opts, threads),
					   .npages = 16 };
		CHECK_EQ(uhmm_sim_create(h, &o, &sim), 0);
		CHECK_EQ(uhmm_sim_destroy(sim), 0);
	}
	CHECK_EQ(uhmm_sim_launch(NULL, k_read, 1, NULL), -EINVAL);
	CHECK_EQ(uhmm_sim_synchronize(NULL), -EINVAL);
	CHECK_EQ(uhmm_sim_load(NULL, NULL, NULL, 0), -EINVAL);
	uhmm_close(h);
}

/*
 * The default policy: the device's first touch migrates the pages to it, as
 * CUDA's unified memory. One device thread, so that the counts are exact:
 * with two, one thread's fault-in of a page (a CPU touch on the device's
 * behalf) may meet the page the other just migrated, bring it home, and
 * the page migrates twice (seen once in CI, under ASan).
 */
TEST(kernel_migrates_on_first_touch)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 1);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 5 };
	struct uhmm_sim_stats st;

	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	st = simstats(sim);
	NOTE("device faults %llu, migrated %llu, mapped %llu, retries %llu, alloc failures %llu",
	     (unsigned long long)st.device_faults, (unsigned long long)st.fault_migrated,
	     (unsigned long long)st.fault_mapped, (unsigned long long)st.fault_retries,
	     (unsigned long long)st.alloc_failures);
	CHECK_EQ(st.launches, 1);
	CHECK_EQ(st.fault_migrated, NPAGES);
	CHECK_EQ(st.fault_mapped, 0);
	/*
	 * Windows of 16, then 32, then the rest (kernel_sweep_doubles_the_fault_window):
	 * 3 faults, or 4 where the buffer crosses a 2 MiB boundary, which no window
	 * crosses; never more than 16-page windows would take.
	 */
	CHECK_GE(st.device_faults, 2);
	CHECK_LE(st.device_faults, NPAGES / 16);
	CHECK_EQ(count_state(h, p, NPAGES, UHMM_PAGE_DEVICE), NPAGES);

	/* Resident: a second launch faults nothing. */
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(simstats(sim).device_faults, st.device_faults);
	CHECK_EQ(simstats(sim).launches, 2);

	/* The CPU reads it all back. */
	check_added(p, NPAGES, 10);
	CHECK_EQ(count_state(h, p, NPAGES, UHMM_PAGE_DEVICE), 0);

	/* The CPU's touches invalidated the device's view: it faults again, and sees the CPU's data. */
	p[0] = 1000;
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_GT(simstats(sim).device_faults, st.device_faults);
	CHECK_EQ(p[0], 1005);
	p[0] = 15;
	check_added(p, NPAGES, 15);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

struct permargs {
	uint64_t *buf;
	const size_t *perm;
};

/* Index i: page perm[i], its first word += 1, through the device. */
static void k_add_perm(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct permargs *a = arg;
	uint64_t *w = a->buf + a->perm[i] * WORDS;

	uhmm_sim_store_u64(ctx, w, uhmm_sim_load_u64(ctx, w) + 1);
}

/* 4 MiB of managed memory on a 2 MiB boundary, word i holding i. */
static uint64_t *managed_aligned(struct uhmm *h, size_t npages)
{
	char *raw = map_anon(npages * PAGE + 2 * MiB);
	uint64_t *p = (uint64_t *)(((uintptr_t)raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));

	CHECK_EQ(uhmm_manage(h, p, npages * PAGE), 0);
	for (size_t i = 0; i < npages * WORDS; i++)
		p[i] = i;
	return p;
}

/*
 * A kernel that sweeps its data faults once per doubling window, as CUDA's
 * driver prefetches more of a 2 MiB block the more of it a kernel touches:
 * 16, 32, 64, 128, 256 pages cover 496 of the first 2 MiB, one fault the 16
 * to its end (windows stop at 2 MiB boundaries), one the next 2 MiB whole.
 * Each migration takes two TLB shootdowns whatever its size: with 16 pages
 * a fault, the demo's device phase took twice the time.
 */
TEST(kernel_sweep_doubles_the_fault_window)
{
	const size_t n = 1024;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, n, 0, 1);
	uint64_t *p = managed_aligned(h, n);
	struct kargs a = { p, 2 };
	struct uhmm_sim_stats st;

	CHECK_EQ(uhmm_sim_launch(sim, k_add, n, &a), 0);
	st = simstats(sim);
	CHECK_EQ(st.device_faults, 7);
	CHECK_EQ(st.fault_migrated, n);
	CHECK_EQ(count_state(h, p, n, UHMM_PAGE_DEVICE), n);
	check_added(p, n, 2);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* Touches in random page order keep the first window: 16 pages a fault, no more. */
TEST(kernel_random_touches_keep_the_first_window)
{
	const size_t n = 1024;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, n, 0, 1);
	uint64_t *p = managed_aligned(h, n);
	struct prng rng;
	struct permargs a = { p, NULL };
	struct uhmm_sim_stats st;
	size_t *perm;

	prng_init(&rng, 0x5eed5, "device touch order");
	perm = prng_perm(&rng, n);
	a.perm = perm;
	CHECK_EQ(uhmm_sim_launch(sim, k_add_perm, n, &a), 0);
	st = simstats(sim);
	NOTE("%llu device faults for %zu pages in random order",
	     (unsigned long long)st.device_faults, n);
	/* 64 windows of 16; a fault that happens to continue a stream takes 32. */
	CHECK_GE(st.device_faults, 48);
	CHECK_LE(st.device_faults, n / 16);
	CHECK_EQ(st.fault_migrated, n);
	for (size_t i = 0; i < n; i++)
		CHECK_EQ(p[i * WORDS], i * WORDS + 1);
	free(perm);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* The map policy: the device works on system memory in place. */
TEST(kernel_maps_with_map_policy)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, UHMM_SIM_POLICY_MAP, 4);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 3 };
	struct uhmm_sim_stats st;

	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	st = simstats(sim);
	CHECK_EQ(st.fault_migrated, 0);
	CHECK_EQ(st.fault_mapped, NPAGES);
	CHECK_EQ(count_state(h, p, NPAGES, UHMM_PAGE_DEVICE), 0);
	check_added(p, NPAGES, 3);
	/* The CPU's writes are coherent with the device: nothing to invalidate. */
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(simstats(sim).device_faults, st.device_faults);
	check_added(p, NPAGES, 6);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* Memory uhmm does not manage cannot migrate: the device maps it. */
TEST(kernel_maps_unmanaged_memory)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 0);
	uint64_t *p = map_anon(NPAGES * PAGE);
	uint64_t *s = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			   -1, 0);
	struct kargs a = { p, 2 }, b;

	CHECK(s != MAP_FAILED);
	for (size_t i = 0; i < NPAGES * WORDS; i++)
		p[i] = s[i] = i;
	b = (struct kargs){ s, 7 };
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &b), 0);
	CHECK_EQ(simstats(sim).fault_migrated, 0);
	/* Every page mapped; a page invalidated meanwhile (launch revalidation) may count twice. */
	CHECK_GE(simstats(sim).fault_mapped, 2 * NPAGES);
	check_added(p, NPAGES, 2);
	check_added(s, NPAGES, 7);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * Device memory full: what does not fit is mapped. One device thread, for
 * an exact count (see kernel_migrates_on_first_touch: with two, a page can
 * come home under the other's fault-in and migrate again).
 */
TEST(kernel_full_device_maps_the_rest)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES / 4, 0, 1);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 1 };

	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(simstats(sim).fault_migrated, NPAGES / 4);
	/* At least once each (a page may be mapped again after a concurrent fault's attempt). */
	CHECK_GE(simstats(sim).fault_mapped, NPAGES - NPAGES / 4);
	check_added(p, NPAGES, 1);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

struct perm_args {
	char *buf;
	int write;
};

static void k_touch(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct perm_args *a = arg;
	char c = 1;

	if (a->write)
		uhmm_sim_store(ctx, a->buf + i * PAGE, &c, 1);
	else
		uhmm_sim_load(ctx, &c, a->buf + i * PAGE, 1);
}

/* mprotect raises no event; every launch checks the permissions again. */
TEST(kernel_honours_mprotect)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 0);
	char *p = (char *)managed(h, NPAGES);
	struct perm_args a = { p, 1 };

	CHECK_EQ(uhmm_sim_launch(sim, k_touch, NPAGES, &a), 0);
	CHECK_EQ(count_state(h, p, NPAGES, UHMM_PAGE_DEVICE), NPAGES);
	/* Device-resident, now read-only: reads work, writes do not. */
	CHECK_EQ(mprotect(p, NPAGES * PAGE, PROT_READ), 0);
	a.write = 0;
	CHECK_EQ(uhmm_sim_launch(sim, k_touch, NPAGES, &a), 0);
	a.write = 1;
	CHECK_EQ(uhmm_sim_launch(sim, k_touch, NPAGES, &a), -EPERM);
	CHECK_GE(simstats(sim).revalidations, 1);
	/* No access at all. */
	CHECK_EQ(mprotect(p, NPAGES * PAGE, PROT_NONE), 0);
	a.write = 0;
	CHECK_EQ(uhmm_sim_launch(sim, k_touch, NPAGES, &a), -EFAULT);
	/* Writable again. */
	CHECK_EQ(mprotect(p, NPAGES * PAGE, PROT_READ | PROT_WRITE), 0);
	a.write = 1;
	CHECK_EQ(uhmm_sim_launch(sim, k_touch, NPAGES, &a), 0);
	CHECK_EQ(p[0], 1);
	CHECK_EQ(p[PAGE], 1);
	CHECK_EQ(p[PAGE + 1], 2); /* untouched: the low bytes of word 512 */
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* A discard between launches: the device reads zeros, as the CPU would. */
TEST(kernel_sees_discard_and_unmap)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 0);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 1 };
	struct perm_args r = { (char *)p, 0 };

	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(madvise(p, NPAGES / 2 * PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	for (size_t i = 0; i < NPAGES / 2 * WORDS; i++)
		CHECK_EQ(p[i], 1);
	for (size_t i = NPAGES / 2 * WORDS; i < NPAGES * WORDS; i++)
		CHECK_EQ(p[i], i + 2);
	/* Gone: the device's access fails, it does not crash. */
	CHECK_EQ(munmap(p, NPAGES * PAGE), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(uhmm_sim_launch(sim, k_touch, NPAGES, &r), -EFAULT);
	CHECK_EQ(dm_in_use(uhmm_sim_devmem(sim)), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/*
 * Two devices: a kernel on one takes the pages the other holds. One device
 * thread each, so that where every page ends is certain: with several, a
 * thread may map a page that another thread's fault just brought home and
 * touch it through its CPU address while a third migrates it to the device,
 * and that touch brings it home again (correct, and counted, but not here).
 */
TEST(kernel_takes_pages_from_another_device)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *d0 = sim_new(h, NPAGES, 0, 1), *d1 = sim_new(h, NPAGES, 0, 1);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 1 };

	CHECK_EQ(uhmm_sim_launch(d0, k_add, NPAGES, &a), 0);
	CHECK_EQ(dmstats(uhmm_sim_devmem(d0)).resident, NPAGES);
	CHECK_EQ(uhmm_sim_launch(d1, k_add, NPAGES, &a), 0);
	CHECK_EQ(dmstats(uhmm_sim_devmem(d0)).resident, 0);
	CHECK_EQ(dmstats(uhmm_sim_devmem(d1)).resident, NPAGES);
	CHECK_EQ(uhmm_sim_launch(d0, k_add, NPAGES, &a), 0);
	CHECK_EQ(dmstats(uhmm_sim_devmem(d0)).resident, NPAGES);
	check_added(p, NPAGES, 3);
	CHECK_EQ(uhmm_sim_destroy(d1), 0);
	CHECK_EQ(uhmm_sim_destroy(d0), 0);
	uhmm_close(h);
}

struct bulk_args {
	char *src, *dst;
	size_t len;
};

/* Index 0 only: unaligned bulk accesses crossing pages, both directions. */
static void k_bulk(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct bulk_args *a = arg;
	char local[3 * PAGE];

	(void)i;
	CHECK_EQ(uhmm_sim_memcpy(ctx, a->dst + 100, a->src + 7, a->len), 0);
	CHECK_EQ(uhmm_sim_load(ctx, local, a->dst + 100, sizeof(local)), 0);
	CHECK_MEM(local, a->src + 7, sizeof(local));
	CHECK_EQ(uhmm_sim_memset(ctx, a->src + PAGE - 5, 0x5a, 10), 0);
	memset(local, 0x33, sizeof(local));
	CHECK_EQ(uhmm_sim_store(ctx, a->dst + 2 * PAGE + 1, local, 2 * PAGE), 0);
	CHECK_EQ(uhmm_sim_ctx_error(ctx), 0);
	CHECK_LT(uhmm_sim_ctx_thread(ctx), 2);
}

TEST(kernel_bulk_accesses)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 0);
	char *src = (char *)managed(h, 8), *dst = (char *)managed(h, 8);
	char *ref = malloc(8 * PAGE);
	struct bulk_args a = { src, dst, 5 * PAGE + 11 };

	CHECK_NONNULL(ref);
	memcpy(ref, src, 8 * PAGE);
	CHECK_EQ(uhmm_sim_launch(sim, k_bulk, 1, &a), 0);
	CHECK_MEM(dst + 100, ref + 7, 2 * PAGE - 99);
	for (int i = 0; i < 2 * (int)PAGE; i++)
		CHECK_EQ(dst[2 * PAGE + 1 + i], 0x33);
	for (int i = 0; i < 10; i++)
		CHECK_EQ(src[PAGE - 5 + i], 0x5a);
	CHECK_EQ(src[PAGE + 5], ref[PAGE + 5]);
	free(ref);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* Index 0 only: one page-aligned copy of a->len bytes. */
static void k_pages(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct bulk_args *a = arg;

	(void)i;
	CHECK_EQ(uhmm_sim_memcpy(ctx, a->dst, a->src, a->len), 0);
}

/*
 * Aligned copies between device pages go several pages at a time under one
 * slot: runs broken by pages that are not on the device (home on the CPU)
 * and by the end of the range still copy every byte, and nothing past it.
 */
TEST(kernel_copies_runs_of_pages)
{
	const size_t npages = 40, ncopy = 37;
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, 2 * npages, UHMM_SIM_POLICY_MAP, 1);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	uint64_t *src = managed(h, npages), *dst = managed(h, npages);
	struct bulk_args a = { (char *)src, (char *)dst, ncopy * PAGE };

	memset(dst, 0xee, npages * PAGE);
	CHECK_EQ(uhmm_migrate_to_device(dm, src, npages * PAGE), (long long)npages);
	CHECK_EQ(uhmm_migrate_to_device(dm, dst, npages * PAGE), (long long)npages);
	/* Holes in the runs: pages the device reaches at their CPU address. */
	CHECK_EQ(uhmm_migrate_to_ram(h, src + 5 * WORDS, PAGE), 1);
	CHECK_EQ(uhmm_migrate_to_ram(h, src + 22 * WORDS, PAGE), 1);
	CHECK_EQ(uhmm_migrate_to_ram(h, dst + 9 * WORDS, PAGE), 1);
	CHECK_EQ(uhmm_sim_launch(sim, k_pages, 1, &a), 0);
	for (size_t i = 0; i < ncopy * WORDS; i++)
		CHECK_EQ(dst[i], i);
	for (size_t i = ncopy * PAGE; i < npages * PAGE; i++)
		CHECK_EQ(((unsigned char *)dst)[i], 0xee);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

struct atomic_args {
	uint64_t *counter;
	struct uhmm_sim *sim;
	int nested;
};

static void k_inc(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct atomic_args *a = arg;

	(void)i;
	uhmm_sim_atomic_add_u64(ctx, a->counter, 1);
	if (a->nested)
		a->nested = uhmm_sim_launch(a->sim, k_inc, 1, a) == -EDEADLK ? 2 : 3;
}

/* Device atomics from every device thread; launches queue in order. */
TEST(kernel_atomics_and_streams)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 8);
	uint64_t *p = managed(h, 1);
	struct atomic_args a = { p, sim, 0 };
	struct kargs k = { p, 1 };

	p[0] = 0;
	CHECK_EQ(uhmm_sim_launch(sim, k_inc, 100000, &a), 0);
	CHECK_EQ(p[0], 100000);
	/* Queued launches run in order: a read-modify-write chain. */
	for (int i = 0; i < 50; i++)
		CHECK_EQ(uhmm_sim_launch_async(sim, k_add, 1, &k), 0);
	CHECK_EQ(uhmm_sim_synchronize(sim), 0);
	CHECK_EQ(p[0], 100050);
	CHECK_EQ(p[1], 51);
	CHECK_EQ(simstats(sim).launches, 51);
	/* A kernel cannot launch. */
	a.nested = 1;
	CHECK_EQ(uhmm_sim_launch(sim, k_inc, 1, &a), 0);
	CHECK_EQ(a.nested, 2);
	CHECK_EQ(uhmm_sim_launch(sim, k_inc, 0, &a), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* Errors of async launches are reported by the next synchronize, once. */
TEST(kernel_async_errors)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 0);
	char *p = (char *)managed(h, 2);
	struct perm_args a = { p, 0 };

	CHECK_EQ(mprotect(p, 2 * PAGE, PROT_NONE), 0);
	CHECK_EQ(uhmm_sim_launch_async(sim, k_touch, 2, &a), 0);
	CHECK_EQ(uhmm_sim_synchronize(sim), -EFAULT);
	CHECK_EQ(uhmm_sim_synchronize(sim), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* Device removal with kernels queued: they finish, then the pages come home. */
TEST(destroy_with_queued_launches)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, NPAGES, 0, 0);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 1 };

	for (int i = 0; i < 4; i++)
		CHECK_EQ(uhmm_sim_launch_async(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	CHECK_EQ(count_state(h, p, NPAGES, UHMM_PAGE_DEVICE), 0);
	check_added(p, NPAGES, 4);
	uhmm_close(h);
}

/* The dmirror commands and kernels share the device's view. */
TEST(commands_and_kernels_share_the_page_table)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	struct kargs a;
	uint64_t *mir;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (size_t i = 0; i < NPAGES * WORDS; i++)
		((uint64_t *)b->ptr)[i] = i;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, NPAGES), 0);
	/* Resident and entered: the kernel faults nothing. */
	a = (struct kargs){ b->ptr, 4 };
	CHECK_EQ(uhmm_sim_launch(fx.dev[0], k_add, NPAGES, &a), 0);
	CHECK_EQ(simstats(fx.dev[0]).device_faults, 0);
	/* The command reads what the kernel wrote, without faulting. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, NPAGES), 0);
	CHECK_EQ(b->faults, 0);
	mir = b->mirror;
	for (size_t i = 0; i < NPAGES * WORDS; i++)
		CHECK_EQ(mir[i], i + 4);
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_MIGRATE_TO_SYS, b, NPAGES), 0);
	CHECK_EQ(b->cpages, NPAGES);
	CHECK_EQ(simstats(fx.dev[0]).migrated_from, NPAGES);
	check_added(b->ptr, NPAGES, 4);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* The command set's argument checks (the kernel driver's, for every command). */
TEST(command_arguments)
{
	struct hmm_fixture fx;
	struct uhmm_dmirror_cmd c = { 0 };
	char buf[PAGE];
	char *p;

	hmm_setup(&fx, 1);
	p = map_anon(PAGE);
	c.ptr = buf;
	c.addr = (uintptr_t)p + 1;
	c.npages = 1;
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], UHMM_DMIRROR_READ, &c), -EINVAL);
	c.addr = (uintptr_t)p;
	c.npages = 0;
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], UHMM_DMIRROR_READ, &c), -EINVAL);
	c.npages = UINT64_MAX / PAGE;
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], UHMM_DMIRROR_READ, &c), -EINVAL);
	c.npages = 1;
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], 0, &c), -EINVAL);
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], 99, &c), -EINVAL);
	CHECK_EQ(uhmm_sim_dmirror(NULL, UHMM_DMIRROR_READ, &c), -EINVAL);
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], UHMM_DMIRROR_READ, NULL), -EINVAL);
	/* Counters are written on success only. */
	c.cpages = 77;
	c.faults = 78;
	CHECK_EQ(mprotect(p, PAGE, PROT_NONE), 0);
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], UHMM_DMIRROR_READ, &c), -EFAULT);
	CHECK_EQ(c.cpages, 77);
	CHECK_EQ(c.faults, 78);
	CHECK_EQ(mprotect(p, PAGE, PROT_READ), 0);
	CHECK_EQ(uhmm_sim_dmirror(fx.dev[0], UHMM_DMIRROR_READ, &c), 0);
	CHECK_EQ(c.cpages, 1);
	CHECK_EQ(c.faults, 1);
	hmm_teardown(&fx);
}

/*
 * After fork (thread mode) the child references the device pages it
 * inherited: the device's in-place writes must copy them first, or the child
 * would see its parent's later writes.
 */
TEST(kernel_writes_after_fork_stay_the_parents)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = sim_new(h, 2 * NPAGES, 0, 0);
	uint64_t *p = managed(h, NPAGES);
	struct kargs a = { p, 1 };
	int go[2], status;
	pid_t pid;
	char c = 0;

	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(count_state(h, p, NPAGES, UHMM_PAGE_DEVICE), NPAGES);
	CHECK_EQ(pipe(go), 0);
	harness_flush();
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* Wait until the parent's device wrote again, then look. */
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		check_added(p, NPAGES, 1);
		_exit(0);
	}
	CHECK_EQ(uhmm_sim_launch(sim, k_add, NPAGES, &a), 0);
	CHECK_EQ(write(go[1], &c, 1), 1);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK_EXITED(status, 0);
	check_added(p, NPAGES, 2);
	close(go[0]);
	close(go[1]);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}
