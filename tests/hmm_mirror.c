/* hmm_mirror: uhmm_range_fault, the kernel's hmm_range_fault: per-page codes, faults on the device's behalf, permissions, the sequence protocol. */
#include "hmm_common.h"

#define NP 8

struct mirror {
	struct uhmm_interval_notifier n;
	pthread_mutex_t lock;
	volatile int calls;
};

static bool mirror_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notify_range *r,
			      uint64_t cur_seq)
{
	struct mirror *m = (struct mirror *)n;

	(void)r;
	pthread_mutex_lock(&m->lock);
	m->calls++;
	uhmm_interval_set_seq(n, cur_seq);
	pthread_mutex_unlock(&m->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops mirror_ops = { .invalidate = mirror_invalidate };

static void mirror_init(struct mirror *m, struct uhmm *h)
{
	memset((void *)m, 0, sizeof(*m));
	pthread_mutex_init(&m->lock, NULL);
	CHECK_EQ(uhmm_interval_notifier_insert(&m->n, h, 0, UINTPTR_MAX, &mirror_ops), 0);
}

/* One call with the kernel's retry loop; @req for every page (default_flags). */
static int fault(struct mirror *m, void *p, size_t npages, uint64_t *pfns, uint64_t req,
		 void *owner)
{
	struct uhmm_range r = {
		.notifier = &m->n,
		.start = (uintptr_t)p,
		.end = (uintptr_t)p + npages * PAGE,
		.pfns = pfns,
		.default_flags = req,
		.dev_private_owner = owner,
	};
	int ret;

	for (int tries = 0; tries < 100; tries++) {
		r.notifier_seq = uhmm_interval_read_begin(&m->n);
		ret = uhmm_range_fault(&r);
		if (ret != -EBUSY)
			return ret;
	}
	return ret;
}

TEST(bad_arguments)
{
	struct uhmm *h;
	struct mirror m;
	struct uhmm_interval_notifier none = { 0 };
	uint64_t pfns[2];
	char *p = map_anon(2 * PAGE);
	struct uhmm_range r = { .notifier = NULL, .start = (uintptr_t)p, .end = (uintptr_t)p + PAGE,
				.pfns = pfns };

	uhmm_test_open(&h);
	mirror_init(&m, h);
	CHECK_EQ(uhmm_range_fault(NULL), -EINVAL);
	CHECK_EQ(uhmm_range_fault(&r), -EINVAL); /* no notifier */
	r.notifier = &none;
	CHECK_EQ(uhmm_range_fault(&r), -EINVAL); /* not inserted */
	r.notifier = &m.n;
	r.pfns = NULL;
	CHECK_EQ(uhmm_range_fault(&r), -EINVAL);
	r.pfns = pfns;
	r.start += 1;
	CHECK_EQ(uhmm_range_fault(&r), -EINVAL); /* unaligned */
	r.start = r.end;
	CHECK_EQ(uhmm_range_fault(&r), -EINVAL); /* empty */
	r.start = (uintptr_t)p;
	r.notifier_seq = uhmm_interval_read_begin(&m.n);
	CHECK_EQ(uhmm_range_fault(&r), 0);
	uhmm_interval_notifier_remove(&m.n);
	uhmm_close(h);
}

/* Every kind of page, as a snapshot (nothing faulted). */
TEST(snapshot_codes)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 64), *other = uhmm_test_sim(h, 64);
	struct mirror m;
	uint64_t pfns[NP];
	char *p = map_anon(NP * PAGE), *sh;
	volatile char c;

	mirror_init(&m, h);
	CHECK_EQ(uhmm_manage(h, p, NP * PAGE), 0);
	/* 0: hole. 1: written. 2: zero page. 3: read-only with data. 4: PROT_NONE.
	 * 5: this device's. 6: another device's. 7: unmapped. */
	p[PAGE] = 1;
	c = p[2 * PAGE];
	(void)c;
	p[3 * PAGE] = 3;
	CHECK_EQ(mprotect(p + 3 * PAGE, PAGE, PROT_READ), 0);
	CHECK_EQ(mprotect(p + 4 * PAGE, PAGE, PROT_NONE), 0);
	p[5 * PAGE] = 5;
	p[6 * PAGE] = 6;
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p + 5 * PAGE, PAGE), 1);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(other), p + 6 * PAGE, PAGE), 1);
	CHECK_EQ(munmap(p + 7 * PAGE, PAGE), 0);
	CHECK_EQ(uhmm_sync(h), 0);

	CHECK_EQ(fault(&m, p, NP, pfns, 0, sim), 0);
	/* A hole, or the zero page where the CPU's fault on page 2 filled around it. */
	CHECK(pfns[0] == UHMM_PFN_MANAGED ||
	      pfns[0] == (UHMM_PFN_VALID | UHMM_PFN_ZERO | UHMM_PFN_MANAGED | (uintptr_t)p));
	CHECK_EQ(pfns[1], UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_MANAGED | (uintptr_t)(p + PAGE));
	CHECK_EQ(uhmm_pfn_to_addr(pfns[1]), (uintptr_t)(p + PAGE));
	CHECK_EQ(pfns[2], UHMM_PFN_VALID | UHMM_PFN_ZERO | UHMM_PFN_MANAGED | (uintptr_t)(p + 2 * PAGE));
	CHECK_EQ(pfns[3], UHMM_PFN_VALID | UHMM_PFN_MANAGED | (uintptr_t)(p + 3 * PAGE));
	CHECK_EQ(pfns[4], UHMM_PFN_ERROR);
	CHECK(pfns[5] & UHMM_PFN_VALID);
	CHECK(pfns[5] & UHMM_PFN_DEVICE_PRIVATE);
	CHECK(pfns[5] & UHMM_PFN_WRITE);
	CHECK_NONNULL(uhmm_pfn_to_page(pfns[5]));
	CHECK_PTR(uhmm_pfn_to_page(pfns[5])->devmem, uhmm_sim_devmem(sim));
	CHECK_EQ(uhmm_page_addr(uhmm_pfn_to_page(pfns[5])), (uintptr_t)(p + 5 * PAGE));
	CHECK_EQ(pfns[6], UHMM_PFN_DEVICE_REMOTE | UHMM_PFN_MANAGED);
	CHECK_EQ(pfns[7], UHMM_PFN_ERROR);
	/* Nothing moved. */
	CHECK_STATE(h, p + 6 * PAGE, UHMM_PAGE_DEVICE);
	CHECK_STATE(h, p, UHMM_PAGE_EMPTY);

	/* Unmanaged memory is mirrored too: shared memory is writable in place. */
	sh = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh != MAP_FAILED);
	sh[0] = 1;
	CHECK_EQ(fault(&m, sh, 2, pfns, 0, sim), 0);
	CHECK_EQ(pfns[0], UHMM_PFN_VALID | UHMM_PFN_WRITE | (uintptr_t)sh);
	CHECK_EQ(pfns[1], 0);

	uhmm_interval_notifier_remove(&m.n);
	CHECK_EQ(uhmm_sim_destroy(other), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* REQ_FAULT makes pages present; REQ_WRITE makes them writable (copy-on-write broken). */
TEST(fault_read_and_write)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct mirror m;
	uint64_t pfns[NP];
	char *p = map_anon(NP * PAGE);
	volatile char c;

	mirror_init(&m, h);
	CHECK_EQ(uhmm_manage(h, p, NP * PAGE), 0);
	c = p[0]; /* a zero page */
	(void)c;
	CHECK_EQ(fault(&m, p, NP, pfns, UHMM_PFN_REQ_FAULT, NULL), 0);
	for (int i = 0; i < NP; i++)
		CHECK(pfns[i] & UHMM_PFN_VALID);
	CHECK(pfns[0] & UHMM_PFN_ZERO);
	CHECK(!(pfns[0] & UHMM_PFN_WRITE));

	CHECK_EQ(fault(&m, p, NP, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, NULL), 0);
	for (int i = 0; i < NP; i++) {
		CHECK_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
			 UHMM_PFN_VALID | UHMM_PFN_WRITE);
		CHECK_EQ(p[i * PAGE], 0); /* the data is unchanged */
	}
	uhmm_interval_notifier_remove(&m.n);
	uhmm_close(h);
}

/* Per-page requests: only the pages asked for are faulted. */
TEST(per_page_requests)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct mirror m;
	uint64_t pfns[NP];
	char *p = map_anon(NP * PAGE);
	struct uhmm_range r = {
		.notifier = NULL,
		.start = 0,
		.pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT,
		.pfn_flags_mask = UHMM_PFN_REQ_WRITE,
	};

	mirror_init(&m, h);
	CHECK_EQ(uhmm_manage(h, p, NP * PAGE), 0);
	r.notifier = &m.n;
	r.start = (uintptr_t)p;
	r.end = (uintptr_t)p + NP * PAGE;
	/* Read all, write page 3. */
	memset(pfns, 0, sizeof(pfns));
	pfns[3] = UHMM_PFN_REQ_WRITE;
	r.notifier_seq = uhmm_interval_read_begin(&m.n);
	CHECK_EQ(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NP; i++)
		CHECK(pfns[i] & UHMM_PFN_VALID);
	CHECK(pfns[3] & UHMM_PFN_WRITE);
	CHECK(!(pfns[2] & UHMM_PFN_WRITE)); /* the zero page */

	/* No default: only page 5 (WRITE alone asks nothing, as in the kernel). */
	r.default_flags = 0;
	r.pfn_flags_mask = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE;
	CHECK_EQ(madvise(p, NP * PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	memset(pfns, 0, sizeof(pfns));
	pfns[5] = UHMM_PFN_REQ_FAULT;
	pfns[6] = UHMM_PFN_REQ_WRITE;
	r.notifier_seq = uhmm_interval_read_begin(&m.n);
	CHECK_EQ(uhmm_range_fault(&r), 0);
	CHECK(pfns[5] & UHMM_PFN_VALID);
	/* Nothing else was asked for; neighbours may show the zero page uhmm filled around. */
	for (int i = 0; i < NP; i++)
		CHECK(!(pfns[i] & UHMM_PFN_WRITE));
	uhmm_interval_notifier_remove(&m.n);
	uhmm_close(h);
}

/* The kernel's error codes: -EFAULT for no mapping or PROT_NONE, -EPERM for a read-only write. */
TEST(permissions)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 16);
	struct mirror m;
	uint64_t pfns[NP];
	char *p = map_anon(NP * PAGE);

	mirror_init(&m, h);
	CHECK_EQ(uhmm_manage(h, p, NP * PAGE), 0);
	memset(p, 7, NP * PAGE);
	CHECK_EQ(mprotect(p, PAGE, PROT_NONE), 0);
	CHECK_EQ(mprotect(p + PAGE, PAGE, PROT_READ), 0);
	CHECK_EQ(munmap(p + 2 * PAGE, PAGE), 0);
	CHECK_EQ(uhmm_sync(h), 0);

	CHECK_EQ(fault(&m, p, 1, pfns, UHMM_PFN_REQ_FAULT, NULL), -EFAULT);
	CHECK_EQ(fault(&m, p + PAGE, 1, pfns, UHMM_PFN_REQ_FAULT, NULL), 0);
	CHECK_EQ(fault(&m, p + PAGE, 1, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, NULL), -EPERM);
	CHECK_EQ(fault(&m, p + 2 * PAGE, 1, pfns, UHMM_PFN_REQ_FAULT, NULL), -EFAULT);
	/* Snapshots do not fail. */
	CHECK_EQ(fault(&m, p, 3, pfns, 0, NULL), 0);
	CHECK_EQ(pfns[0], UHMM_PFN_ERROR);
	CHECK(pfns[1] & UHMM_PFN_VALID);
	CHECK_EQ(pfns[2], UHMM_PFN_ERROR);

	/* mprotect raises no event: the next call sees it all the same. */
	CHECK_EQ(mprotect(p + PAGE, PAGE, PROT_READ | PROT_WRITE), 0);
	CHECK_EQ(fault(&m, p + PAGE, 1, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, NULL), 0);
	CHECK(pfns[0] & UHMM_PFN_WRITE);

	/* A device page on a read-only mapping is reported without WRITE; writing it is -EPERM. */
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p + 3 * PAGE, PAGE), 1);
	CHECK_EQ(mprotect(p + 3 * PAGE, PAGE, PROT_READ), 0);
	CHECK_EQ(fault(&m, p + 3 * PAGE, 1, pfns, UHMM_PFN_REQ_FAULT, sim), 0);
	CHECK_EQ(pfns[0] & (UHMM_PFN_VALID | UHMM_PFN_DEVICE_PRIVATE | UHMM_PFN_WRITE),
		 UHMM_PFN_VALID | UHMM_PFN_DEVICE_PRIVATE);
	CHECK_EQ(fault(&m, p + 3 * PAGE, 1, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, sim),
		 -EPERM);
	CHECK_STATE(h, p + 3 * PAGE, UHMM_PAGE_DEVICE);

	/* A poisoned page: -EFAULT when faulted, nothing when snapshot. */
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p + 4 * PAGE, PAGE), 1);
	CHECK_EQ(uhmm_sim_fail_page(sim, p + 4 * PAGE), 0);
	CHECK_EQ(uhmm_migrate_to_ram(h, p + 4 * PAGE, PAGE), 0);
	CHECK_STATE(h, p + 4 * PAGE, UHMM_PAGE_POISON);
	CHECK_EQ(fault(&m, p + 4 * PAGE, 1, pfns, UHMM_PFN_REQ_FAULT, NULL), -EFAULT);
	CHECK_EQ(fault(&m, p + 4 * PAGE, 1, pfns, 0, NULL), 0);
	CHECK(!(pfns[0] & UHMM_PFN_VALID));
	uhmm_interval_notifier_remove(&m.n);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* A change since read_begin is -EBUSY; faulting another owner's page home is one. */
TEST(sequence_protocol)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 16);
	struct mirror m;
	uint64_t pfns[NP];
	char *p = map_anon(NP * PAGE);
	struct uhmm_range r = { .pfns = pfns, .default_flags = UHMM_PFN_REQ_FAULT };

	mirror_init(&m, h);
	CHECK_EQ(uhmm_manage(h, p, NP * PAGE), 0);
	memset(p, 9, NP * PAGE);
	r.notifier = &m.n;
	r.start = (uintptr_t)p;
	r.end = (uintptr_t)p + NP * PAGE;

	r.notifier_seq = uhmm_interval_read_begin(&m.n);
	CHECK_EQ(madvise(p, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(uhmm_range_fault(&r), -EBUSY);

	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p, NP * PAGE), NP);
	r.notifier_seq = uhmm_interval_read_begin(&m.n);
	/* The pages come home through the sim's migrate_to_ram: that invalidates. */
	CHECK_EQ(uhmm_range_fault(&r), -EBUSY);
	CHECK_EQ(count_state(h, p, NP, UHMM_PAGE_DEVICE), 0);
	r.notifier_seq = uhmm_interval_read_begin(&m.n);
	CHECK_EQ(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NP; i++)
		CHECK_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_DEVICE_PRIVATE), UHMM_PFN_VALID);
	CHECK_EQ(p[0], 0);
	CHECK_EQ(p[PAGE], 9);
	uhmm_interval_notifier_remove(&m.n);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* A read or write asked on the device's behalf from the caller thread, in either mode. */
TEST(fault_in_user_mode_only_mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .flags = UHMM_OPEN_USER_MODE_ONLY);
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct mirror m;
	uint64_t pfns[NP];
	char *p = map_anon(NP * PAGE);

	uhmm_test_open_opts(&h, &o);
	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, 16);
	mirror_init(&m, h);
	CHECK_EQ(uhmm_manage(h, p, NP * PAGE), 0);
	memset(p + 4 * PAGE, 4, 4 * PAGE);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p + 4 * PAGE, 4 * PAGE), 4);
	CHECK_EQ(fault(&m, p, NP, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, NULL), 0);
	for (int i = 0; i < NP; i++)
		CHECK_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE), UHMM_PFN_VALID | UHMM_PFN_WRITE);
	CHECK_EQ(count_state(h, p, NP, UHMM_PAGE_DEVICE), 0);
	CHECK_EQ(p[5 * PAGE], 4);
	uhmm_interval_notifier_remove(&m.n);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}
