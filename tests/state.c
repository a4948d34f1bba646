/* state: the page-state metadata is sparse: managing a huge range costs address space, not memory, and its far end works like any page. */
#include "harness.h"

#define HUGE_LEN (64 * GiB)

TEST(manage_64gib_costs_little_memory)
{
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	long long rss0, rss1, rss2;
	char *m, *far, *mid;
	uint64_t exp[PAGE / 8];
	uint64_t seed = 0x57a7e001;

	uhmm_test_open(&h);
	m = mmap(NULL, HUGE_LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		SKIP("cannot map 64 GiB of address space here: %s", strerror(errno));
	far = m + HUGE_LEN - PAGE;
	mid = m + HUGE_LEN / 2;

	rss0 = harness_rss_bytes();
	CHECK_EQ(uhmm_manage(h, m, HUGE_LEN), 0);
	rss1 = harness_rss_bytes();
	NOTE("RSS grew by %lld KiB managing 64 GiB", (rss1 - rss0) / 1024);
	CHECK_LT(rss1 - rss0, (long long)(4 * MiB));
	CHECK_STATE(h, m, UHMM_PAGE_EMPTY);
	CHECK_STATE(h, mid, UHMM_PAGE_EMPTY);
	CHECK_STATE(h, far, UHMM_PAGE_EMPTY);

	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, 16);
	dm = uhmm_sim_devmem(sim);

	/* The far end: touch, migrate, touch back. */
	NOTE("pattern seed=0x%llx", (unsigned long long)seed);
	pattern_page(exp, 0, seed);
	memcpy(far, exp, PAGE);
	memcpy(m, exp, PAGE);
	CHECK_STATE(h, far, UHMM_PAGE_SYSTEM);
	CHECK_EQ(uhmm_migrate_to_device(dm, far, PAGE), 1);
	CHECK_STATE(h, far, UHMM_PAGE_DEVICE);
	CHECK_MEM(far, exp, PAGE);
	CHECK_STATE(h, far, UHMM_PAGE_SYSTEM);

	/* An empty page in the middle goes and comes back as zeros. */
	CHECK_EQ(uhmm_migrate_to_device(dm, mid, PAGE), 1);
	CHECK_STATE(h, mid, UHMM_PAGE_DEVICE);
	CHECK_ZERO_PAGE(mid);
	CHECK_EQ(dmstats(dm).in_use, 0);

	rss2 = harness_rss_bytes();
	NOTE("RSS grew by %lld KiB after using three pages and a device", (rss2 - rss0) / 1024);
	CHECK_LT(rss2 - rss0, (long long)(4 * MiB));

	/* Unmanage with the far page on the device: it comes home first. */
	CHECK_EQ(uhmm_migrate_to_device(dm, far, PAGE), 1);
	CHECK_EQ(uhmm_unmanage(h, m, HUGE_LEN), 1);
	CHECK_EQ(uhmm_page_state(h, far), -ENOENT);
	CHECK_EQ(uhmm_page_state(h, m), -ENOENT);
	CHECK_MEM(far, exp, PAGE);
	CHECK_MEM(m, exp, PAGE);
	CHECK_EQ(dmstats(dm).in_use, 0);
	/* Plain memory again. */
	mid[5] = 5;
	CHECK_EQ(mid[5], 5);

	unmap(m, HUGE_LEN);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(many_small_ranges_and_a_huge_one)
{
	struct uhmm *h;
	char *m, *small[16];
	long long rss0, rss1;

	uhmm_test_open(&h);
	m = mmap(NULL, HUGE_LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		SKIP("cannot map 64 GiB of address space here: %s", strerror(errno));
	rss0 = harness_rss_bytes();
	for (size_t i = 0; i < ARRAY_SIZE(small); i++) {
		small[i] = map_anon(2 * PAGE);
		small[i][0] = (char)i;
		CHECK_EQ(uhmm_manage(h, small[i], 2 * PAGE), 0);
	}
	/* Manage the huge range in pieces, then release it in other pieces. */
	CHECK_EQ(uhmm_manage(h, m, HUGE_LEN / 2), 0);
	CHECK_EQ(uhmm_manage(h, m + HUGE_LEN / 2, HUGE_LEN / 2), 0);
	rss1 = harness_rss_bytes();
	NOTE("RSS grew by %lld KiB", (rss1 - rss0) / 1024);
	CHECK_LT(rss1 - rss0, (long long)(4 * MiB));
	CHECK_STATE(h, m + HUGE_LEN / 2 - PAGE, UHMM_PAGE_EMPTY);
	CHECK_STATE(h, m + HUGE_LEN / 2, UHMM_PAGE_EMPTY);
	CHECK_EQ(uhmm_unmanage(h, m + GiB, HUGE_LEN - 2 * GiB), 0);
	CHECK_EQ(uhmm_page_state(h, m + HUGE_LEN / 2), -ENOENT);
	CHECK_STATE(h, m, UHMM_PAGE_EMPTY);
	CHECK_STATE(h, m + HUGE_LEN - PAGE, UHMM_PAGE_EMPTY);
	CHECK_EQ(uhmm_unmanage(h, m, GiB), 0);
	CHECK_EQ(uhmm_unmanage(h, m + HUGE_LEN - GiB, GiB), 0);
	CHECK_EQ(uhmm_unmanage(h, m, PAGE), -ENOENT);
	for (size_t i = 0; i < ARRAY_SIZE(small); i++) {
		CHECK_STATE(h, small[i], UHMM_PAGE_SYSTEM);
		CHECK_EQ(small[i][0], (char)i);
		CHECK_EQ(uhmm_unmanage(h, small[i], 2 * PAGE), 0);
		unmap(small[i], 2 * PAGE);
	}
	unmap(m, HUGE_LEN);
	uhmm_close(h);
}
