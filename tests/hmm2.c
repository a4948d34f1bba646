/* hmm2: the kernel's HMM selftests with two devices (hmm-tests.c, fixture hmm2), ported to two sim devices of one handle, each its own owner. */
#include "hmm_common.h"

/* 17: holes, PROT_NONE and another device's pages in a migration. */
TEST(migrate_mixed)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 6;
	size_t size = npages << PAGE_SHIFT_;
	char *p;
	int val;

	hmm_setup(&fx, 2);
	hmm_check_readonly_migration(&fx);
	/* A reserved range of addresses. */
	b = hmm_buffer_new(&fx, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	p = b->ptr;

	/* A mapping that cannot be read cannot migrate. */
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, npages), -EINVAL);

	/* A hole after the first page. */
	CHECK_EQ(munmap(p + PAGE, PAGE), 0);
	/* Not readable either: the first page is still PROT_NONE. */
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, 3), -EINVAL);

	/* Page 2: a read-only zero page. */
	CHECK_EQ(mprotect(p + 2 * PAGE, PAGE, PROT_READ), 0);
	val = *(volatile int *)(p + 2 * PAGE);
	CHECK_EQ(val, 0);
	/* Page 3: read-only, with data. */
	CHECK_EQ(mprotect(p + 3 * PAGE, PAGE, PROT_READ | PROT_WRITE), 0);
	*(volatile int *)(p + 3 * PAGE) = 3;
	CHECK_EQ(mprotect(p + 3 * PAGE, PAGE, PROT_READ), 0);
	/* Pages 4 and 5: read-write. */
	CHECK_EQ(mprotect(p + 4 * PAGE, 2 * PAGE, PROT_READ | PROT_WRITE), 0);
	*(volatile int *)(p + 4 * PAGE) = 4;
	*(volatile int *)(p + 5 * PAGE) = 5;

	/* Pages 2-5 to device 1. */
	b->ptr = p + 2 * PAGE;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, 4), 0);
	CHECK_EQ(b->cpages, 4);

	/* Page 5 is device 1's: device 0 cannot migrate it. */
	b->ptr = p + 5 * PAGE;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, 1), -ENOENT);

	CHECK_EQ(munmap(p, PAGE), 0);
	CHECK_EQ(munmap(p + 2 * PAGE, 4 * PAGE), 0);
	b->ptr = NULL;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 22: what a device sees of every kind of page, without faulting any. */
TEST(snapshot)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 7;
	size_t size = npages << PAGE_SHIFT_;
	unsigned char *m;
	char *p;
	int val;

	hmm_setup(&fx, 2);
	b = hmm_buffer_new(&fx, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	p = b->ptr;

	/* A hole after the first page. */
	CHECK_EQ(munmap(p + PAGE, PAGE), 0);
	/* Page 2: a read-only zero page. */
	CHECK_EQ(mprotect(p + 2 * PAGE, PAGE, PROT_READ), 0);
	val = *(volatile int *)(p + 2 * PAGE);
	CHECK_EQ(val, 0);
	/* Page 3: read-only, with data. */
	CHECK_EQ(mprotect(p + 3 * PAGE, PAGE, PROT_READ | PROT_WRITE), 0);
	*(volatile int *)(p + 3 * PAGE) = 3;
	CHECK_EQ(mprotect(p + 3 * PAGE, PAGE, PROT_READ), 0);
	/* Pages 4-6: read-write; page 4 written. */
	CHECK_EQ(mprotect(p + 4 * PAGE, 3 * PAGE, PROT_READ | PROT_WRITE), 0);
	*(volatile int *)(p + 4 * PAGE) = 4;

	/* Page 5 to device 0, page 6 to device 1. */
	b->ptr = p + 5 * PAGE;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, 1), 0);
	CHECK_EQ(b->cpages, 1);
	b->ptr = p + 6 * PAGE;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, 1), 0);
	CHECK_EQ(b->cpages, 1);

	/* Device 0 snapshots the CPU's page table. */
	b->ptr = p;
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_SNAPSHOT, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	m = b->mirror;
	CHECK_EQ(m[0], UHMM_DMIRROR_PROT_ERROR);
	CHECK_EQ(m[1], UHMM_DMIRROR_PROT_ERROR);
	CHECK_EQ(m[2], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	CHECK_EQ(m[3], UHMM_DMIRROR_PROT_READ);
	CHECK_EQ(m[4], UHMM_DMIRROR_PROT_WRITE);
	CHECK_EQ(m[5], UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	/* Another device's private page, not faulted: nothing the device may map. */
	CHECK_EQ(m[6], UHMM_DMIRROR_PROT_NONE);

	CHECK_EQ(munmap(p, PAGE), 0);
	CHECK_EQ(munmap(p + 2 * PAGE, 5 * PAGE), 0);
	b->ptr = NULL;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 24: two devices read the same pages; one migrates them; the other's read brings them home. */
TEST(double_map)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 6, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 2);
	hmm_check_readonly_migration(&fx);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(mprotect(b->ptr, size, PROT_READ), 0);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[1], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);

	/* Device 1 takes the pages. */
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);

	/* Device 0 reads them again: they come home from device 1. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/*
 * double_map's last step, on memory the core can migrate today (read-write):
 * device 0's read of pages device 1 holds brings them home in one fault round.
 */
TEST(double_map_rw)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 6, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 2);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->faults, 1);
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[1], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->faults, 1);
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(count_state(fx.h, b->ptr, npages, UHMM_PAGE_DEVICE), npages);

	memset(b->mirror, 0, size);
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	CHECK_EQ(count_state(fx.h, b->ptr, npages, UHMM_PAGE_DEVICE), 0);
	CHECK_GE(simstats(fx.dev[1]).migrate_to_ram, 1);
	CHECK_EQ(simstats(fx.dev[1]).copies_from, npages);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/*
 * migrate_mixed's steps on read-write pages: PROT_NONE and holes refuse with
 * -EINVAL, another device's page with -ENOENT.
 */
TEST(migrate_mixed_rw)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 6;
	size_t size = npages << PAGE_SHIFT_;
	char *p;

	hmm_setup(&fx, 2);
	b = hmm_buffer_new(&fx, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	p = b->ptr;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, npages), -EINVAL);
	CHECK_EQ(munmap(p + PAGE, PAGE), 0);
	CHECK_EQ(mprotect(p, PAGE, PROT_READ | PROT_WRITE), 0);
	/* Readable now, but with a hole. */
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, 3), -EINVAL);
	CHECK_EQ(mprotect(p + 2 * PAGE, 4 * PAGE, PROT_READ | PROT_WRITE), 0);
	*(volatile int *)(p + 2 * PAGE) = 2;
	*(volatile int *)(p + 4 * PAGE) = 4;
	b->ptr = p + 2 * PAGE;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[1], b, 4), 0);
	CHECK_EQ(b->cpages, 4);
	CHECK_EQ(((int *)b->mirror)[0], 2);
	CHECK_EQ(((int *)b->mirror)[2 * PAGE / sizeof(int)], 4);
	b->ptr = p + 5 * PAGE;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, 1), -ENOENT);
	/* Device 1 still holds it, and the CPU reads it back. */
	CHECK_STATE(fx.h, p + 5 * PAGE, UHMM_PAGE_DEVICE);
	CHECK_EQ(*(volatile int *)(p + 4 * PAGE), 4);
	CHECK_EQ(munmap(p, PAGE), 0);
	CHECK_EQ(munmap(p + 2 * PAGE, 4 * PAGE), 0);
	b->ptr = NULL;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}
