/* hmm: the kernel's HMM selftests (tools/testing/selftests/mm/hmm-tests.c, one device), ported to uhmm and the sim device's dmirror commands. */
/*
 * Written afresh from the tests' semantics (kernel-hmm.md, section 4.2): the
 * same buffers, steps and assertions (ret, cpages, faults, snapshot bytes,
 * data), with /dev/hmm_dmirror0 replaced by a sim device and every private
 * anonymous buffer given to uhmm (uhmm_manage) as the kernel manages all
 * memory. Tests of what uhmm cannot offer skip with the reason; README.md
 * ("Kernel HMM selftests") has the table. The two-device tests are hmm2.c,
 * anon_teardown (a race) is in hmm_concurrent.c.
 */
#include "hmm_common.h"


/* 1 */
TEST(open_close)
{
	struct hmm_fixture fx;

	hmm_setup(&fx, 1);
	hmm_teardown(&fx);
}

/* 2: the device reads memory the CPU wrote, a zero page and a hole. */
TEST(anon_read)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr, val;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	/* Written except the first two pages. */
	for (i = 2 * PAGE / sizeof(*ptr), ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(mprotect(b->ptr, size, PROT_READ), 0);
	/* Page 1 maps the zero page; page 0 stays a hole. */
	val = *(volatile int *)((char *)b->ptr + PAGE);
	CHECK_EQ(val, 0);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->mirror; i < 2 * PAGE / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	for (; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 3: no access, nothing copied out. */
TEST(anon_read_prot)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = -(int)i;
	CHECK_EQ(mprotect(b->ptr, size, PROT_NONE), 0);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), -EFAULT);

	CHECK_EQ(mprotect(b->ptr, size, PROT_READ), 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], -(int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 4: the device writes memory the CPU never touched. */
TEST(anon_write)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 5: a device write to read-only memory fails; after mprotect it succeeds. */
TEST(anon_write_prot)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);

	/* The device reads a zero page. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, 1), 0);
	CHECK_EQ(b->cpages, 1);
	CHECK_EQ(b->faults, 1);

	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, b, npages), -EPERM);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);

	CHECK_EQ(mprotect(b->ptr, size, PROT_WRITE | PROT_READ), 0);
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

struct child_arg {
	struct hmm_buffer *b;
	unsigned long npages;
	size_t size;
	int migrate;
};

/* In the child: its parent's data, then a device of its own writes its memory. */
static void write_child(void *p)
{
	struct child_arg *c = p;
	struct hmm_fixture fx;
	unsigned long i;
	int *ptr;

	for (i = 0, ptr = c->b->ptr; i < c->size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	if (!c->migrate)
		for (i = 0, ptr = c->b->mirror; i < c->size / sizeof(*ptr); ++i)
			CHECK_EQ(ptr[i], -(int)i);
	/* The parent's handles are closed here: the child opens its own device. */
	hmm_setup(&fx, 1);
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, c->b, c->npages), 0);
	CHECK_EQ(c->b->cpages, c->npages);
	CHECK_EQ(c->b->faults, 1);
	for (i = 0, ptr = c->b->ptr; i < c->size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], -(int)i);
	hmm_teardown(&fx);
}

/* ThreadSanitizer cannot follow a child of a multi-threaded fork that starts threads. */
static void skip_under_tsan(void)
{
#if defined(__SANITIZE_THREAD__)
	SKIP("ThreadSanitizer cannot run a forked child that starts threads (its own handle "
	     "and device); run this test without it");
#endif
}

/* 6: a forked child writes through its own device; the parent keeps its data. */
TEST(anon_write_child)
{
	struct hmm_fixture fx;

	skip_under_tsan();
	hmm_setup(&fx, 1);
	for (int migrate = 0; migrate < 2; ++migrate) {
		for (int thp = 0; thp < 2; ++thp) {
			size_t size = thp ? HMM_PMD : HMM_NPAGES << PAGE_SHIFT_;
			struct hmm_buffer *b = hmm_buffer_new(&fx, 2 * size, PROT_READ | PROT_WRITE,
							      MAP_PRIVATE | MAP_ANONYMOUS);
			struct child_arg c = { b, size >> PAGE_SHIFT_, size, migrate };
			void *old = b->ptr;
			unsigned long i;
			int *ptr, status;

			if (thp) {
				b->ptr = hmm_align(b->ptr, size);
				CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
			}
			for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
				ptr[i] = (int)i;
			for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
				ptr[i] = -(int)i;
			if (migrate) {
				CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, c.npages), 0);
				CHECK_EQ(b->cpages, c.npages);
				for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
					ptr[i] = -(int)i;
			}
			status = harness_run_child(write_child, &c);
			CHECK_EXITED(status, 0);
			/* Copy-on-write: the child's writes stayed the child's. */
			for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
				CHECK_EQ(ptr[i], (int)i);
			b->ptr = old;
			hmm_buffer_free(b);
		}
	}
	hmm_teardown(&fx);
}

/* 7: the same with shared memory: the parent sees the child's device writes. */
TEST(anon_write_child_shared)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	struct child_arg c;
	int *ptr, status;

	skip_under_tsan();
	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
	c = (struct child_arg){ b, npages, size, 0 };
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = -(int)i;
	status = harness_run_child(write_child, &c);
	CHECK_EXITED(status, 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], -(int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 8: the device writes a huge-page-advised range. */
TEST(anon_write_huge)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages, i;
	size_t size = HMM_PMD;
	int *ptr;
	void *old;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	npages = size >> PAGE_SHIFT_;
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 9 */
TEST(anon_write_hugetlbfs)
{
	SKIP("needs hugetlbfs: uhmm manages private anonymous memory with base pages only "
	     "(hugetlb memory is refused with -EINVAL)");
}

/* 10: the device reads a shared file mapping (mirrored, never migrated). */
TEST(file_read)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr, fd;

	hmm_setup(&fx, 1);
	fd = hmm_create_file(size);
	b = hmm_buffer_alloc(size);
	b->fd = fd;
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(pwrite(fd, b->mirror, size, 0), (ssize_t)size);
	memset(b->mirror, 0, size);
	b->ptr = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(b->ptr != MAP_FAILED);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 11: the device writes a shared file mapping; the file sees it. */
TEST(file_write)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr, fd;

	hmm_setup(&fx, 1);
	fd = hmm_create_file(size);
	b = hmm_buffer_alloc(size);
	b->fd = fd;
	b->ptr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(b->ptr != MAP_FAILED);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	CHECK_EQ(b->faults, 1);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	memset(b->mirror, 0, size);
	CHECK_EQ(pread(fd, b->mirror, size, 0), (ssize_t)size);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 12 */
TEST(migrate)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 13 */
TEST(migrate_file_private)
{
	struct hmm_fixture fx;
	size_t size = HMM_NPAGES << PAGE_SHIFT_;
	void *p;
	int fd;

	hmm_setup(&fx, 1);
	fd = hmm_create_file(size);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(p != MAP_FAILED);
	/* The pages written become anonymous in the kernel; uhmm cannot take them. */
	CHECK_EQ(uhmm_manage(fx.h, p, size), -EINVAL);
	SKIP("a private file mapping is not private anonymous memory: uhmm cannot register it "
	     "for missing-page faults nor move its pages (uhmm_manage gives -EINVAL)");
}

/* 14: migrate, the CPU faults half of it back, migrate again. */
TEST(migrate_fault)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	/* The CPU faults the first half back. */
	for (i = 0, ptr = b->ptr; i < size / (2 * sizeof(*ptr)); ++i)
		CHECK_EQ(ptr[i], (int)i);

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 15: the device is removed with pages resident: they come home intact. */
TEST(migrate_release)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_RELEASE, b, npages), 0);
	for (i = 0, ptr = b->ptr; i < size / (2 * sizeof(*ptr)); ++i)
		CHECK_EQ(ptr[i], (int)i);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 16: shared anonymous memory cannot become device-private. */
TEST(migrate_shared)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES;
	size_t size = npages << PAGE_SHIFT_;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), -ENOENT);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 18: ten fresh buffers, each migrated and read back by the CPU. */
TEST(migrate_multiple)
{
	struct hmm_fixture fx;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	for (int c = 0; c < HMM_NTIMES; c++) {
		struct hmm_buffer *b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE,
						      MAP_PRIVATE | MAP_ANONYMOUS);

		for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
			ptr[i] = (int)i;
		CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
		CHECK_EQ(b->cpages, npages);
		for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
			CHECK_EQ(ptr[i], (int)i);
		/* (The device-coherent variant migrates back with MIGRATE_TO_SYS here.) */
		for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
			CHECK_EQ(ptr[i], (int)i);
		hmm_buffer_free(b);
	}
	hmm_teardown(&fx);
}

/* 19 */
TEST(anon_read_multiple)
{
	struct hmm_fixture fx;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	int *ptr;

	hmm_setup(&fx, 1);
	for (int c = 0; c < HMM_NTIMES; c++) {
		struct hmm_buffer *b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE,
						      MAP_PRIVATE | MAP_ANONYMOUS);

		for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
			ptr[i] = (int)i + c;
		CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
		CHECK_EQ(b->cpages, npages);
		CHECK_EQ(b->faults, 1);
		for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
			CHECK_EQ(ptr[i], (int)i + c);
		hmm_buffer_free(b);
	}
	hmm_teardown(&fx);
}

/* 20: anon_teardown races an unmap: tests/hmm_concurrent.c. */

/* 21 */
TEST(mixedmap)
{
	SKIP("needs mmap(2) of the device file (a VM_MIXEDMAP mapping of driver pages): "
	     "the sim device has no file to map");
}

/* 23 */
TEST(compound)
{
	SKIP("needs hugetlbfs (snapshot of PMD/PUD-mapped hugetlb pages): uhmm manages "
	     "private anonymous memory with base pages only");
}

/* 25: the device takes the pages for atomics; CPU touches revoke it and see its data. */
static void exclusive_setup(struct hmm_fixture *fx, struct hmm_buffer **bp, unsigned long npages)
{
	struct hmm_buffer *b;
	size_t size = npages << PAGE_SHIFT_;

	hmm_setup(fx, 1);
	b = hmm_buffer_new(fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (size_t i = 0, n = size / sizeof(int); i < n; ++i)
		((int *)b->ptr)[i] = (int)i;
	CHECK_EQ(hmm_dmirror_cmd(fx->dev[0], UHMM_DMIRROR_EXCLUSIVE, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (size_t i = 0, n = size / sizeof(int); i < n; ++i)
		CHECK_EQ(((int *)b->mirror)[i], (int)i);
	*bp = b;
}

/* The CPU increments every int: old values i, new i + 1 (0 on a mismatch). */
static int cpu_increment(struct hmm_buffer *b, size_t size)
{
	int *ptr = b->ptr;

	for (size_t i = 0, n = size / sizeof(int); i < n; ++i)
		if (ptr[i]++ != (int)i)
			return 0;
	for (size_t i = 0, n = size / sizeof(int); i < n; ++i)
		if (ptr[i] != (int)i + 1)
			return 0;
	return 1;
}

TEST(exclusive)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES;

	exclusive_setup(&fx, &b, npages);
	/* Still the device's: a check says so. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_CHECK_EXCLUSIVE, b, npages), -EPERM);
	CHECK(cpu_increment(b, npages << PAGE_SHIFT_));
	/* Every CPU touch revoked it. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_CHECK_EXCLUSIVE, b, npages), 0);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 26 */
TEST(exclusive_mprotect)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES;

	exclusive_setup(&fx, &b, npages);
	CHECK_EQ(mprotect(b->ptr, npages << PAGE_SHIFT_, PROT_READ), 0);
	/* A device write to a read-only mapping: refused, as the kernel's. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_WRITE, b, npages), -EPERM);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 27 */
TEST(exclusive_cow)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = HMM_NPAGES;
	int st;
	pid_t pid;

	exclusive_setup(&fx, &b, npages);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid)
		_exit(cpu_increment(b, npages << PAGE_SHIFT_) ? 0 : 1);
	CHECK(cpu_increment(b, npages << PAGE_SHIFT_));
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 28 */
TEST(hmm_gup_test)
{
	SKIP("needs the kernel's gup_test (/sys/kernel/debug/gup_test, CONFIG_GUP_TEST): "
	     "get_user_pages of device-private pages is a kernel path user space cannot drive");
}

/* 29: device-resident pages shared with a child: the parent's write gets it private pages. */
TEST(hmm_cow_in_device)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 4, i;
	size_t size = npages << PAGE_SHIFT_;
	unsigned char *m;
	int *ptr, status;
	pid_t pid;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);

	harness_flush();
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		for (;;)
			pause();
	}
	/* The parent writes: copy-on-write breaks here. */
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(kill(pid, SIGKILL), 0);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK_SIGNALED(status, SIGKILL);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_SNAPSHOT, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, m = b->mirror; i < npages; ++i)
		CHECK_EQ(m[i], UHMM_DMIRROR_PROT_WRITE);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 30: a never-touched read-only huge range migrates as zeros. */
TEST(migrate_anon_huge_empty)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	int *ptr;
	void *old;

	hmm_setup(&fx, 1);
	hmm_check_readonly_migration(&fx);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	memset(b->mirror, 0xff, size);

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 31: a read-only huge range mapping the huge zero page migrates as zeros. */
TEST(migrate_anon_huge_zero)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	int *ptr, val;
	void *old;

	hmm_setup(&fx, 1);
	hmm_check_readonly_migration(&fx);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	memset(b->mirror, 0xff, size);
	/* The huge zero page, where the kernel gives one. */
	val = *(volatile int *)b->ptr;
	CHECK_EQ(val, 0);

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	/* The CPU faults it back. */
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 32: MADV_FREE of device-resident memory. */
TEST(migrate_anon_huge_free)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	int *ptr;
	void *old;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	CHECK_EQ(madvise(b->ptr, size, MADV_FREE), 0);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 33: a collapsed huge page migrates and faults back. */
TEST(migrate_anon_huge_fault)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	unsigned char *m;
	int *ptr;
	void *old;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_MSG(madvise(b->ptr, size, MADV_COLLAPSE) == 0, "MADV_COLLAPSE: %s", strerror(errno));

	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);

	/* What can be asserted of the device's view: every page is its own, writable. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_SNAPSHOT, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, m = b->mirror; i < npages; ++i)
		CHECK_EQ(m[i], UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);

	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
	SKIP("the rest needs kernel-only state: device pages are base pages in uhmm (no PMD "
	     "map level in the snapshot) and /proc/self/pagemap shows no PM_SWAP entry for "
	     "them (pagemap swap bits); migration and fault-back were checked");
}

/* 34: munmap of part of a device-resident range, the rest faults back intact. */
TEST(migrate_partial_unmap_fault)
{
	struct hmm_fixture fx;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	size_t offsets[] = { 0, HMM_PMD / 4, HMM_PMD / 2 };
	int *ptr;

	hmm_setup(&fx, 1);
	for (int thp = 0; thp < 2; thp++) {
		for (size_t k = 0; k < ARRAY_SIZE(offsets); k++) {
			struct hmm_buffer *b = hmm_buffer_new(&fx, 2 * size, PROT_READ | PROT_WRITE,
							      MAP_PRIVATE | MAP_ANONYMOUS);
			void *old = b->ptr;
			size_t offset = offsets[k];

			b->ptr = hmm_align(b->ptr, size);
			CHECK_EQ(madvise(b->ptr, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
			for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
				ptr[i] = (int)i;

			CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
			CHECK_EQ(b->cpages, npages);
			for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
				CHECK_EQ(ptr[i], (int)i);

			CHECK_EQ(munmap((char *)b->ptr + offset, size / 2), 0);
			for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i) {
				if (i * sizeof(int) >= offset && i * sizeof(int) < offset + size / 2)
					continue;
				CHECK_EQ(ptr[i], (int)i);
			}
			/* What is left of the mapping. */
			munmap(old, 2 * size);
			b->ptr = NULL;
			hmm_buffer_free(b);
		}
	}
	hmm_teardown(&fx);
}

/* 35: mremap of a range before or after it migrates; the data follows it. */
TEST(migrate_remap_fault)
{
	struct hmm_fixture fx;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	size_t offsets[] = { 0, HMM_PMD / 4, HMM_PMD / 2 };
	int *ptr;

	hmm_setup(&fx, 1);
	for (int before = 0; before < 2; before++)
	for (int dontunmap = 0; dontunmap < 2; dontunmap++)
	for (int thp = 0; thp < 2; thp++)
	for (size_t k = 0; k < ARRAY_SIZE(offsets); k++) {
		struct hmm_buffer *b = hmm_buffer_new(&fx, 8 * size, PROT_READ | PROT_WRITE,
						      MAP_PRIVATE | MAP_ANONYMOUS);
		int flags = MREMAP_MAYMOVE | MREMAP_FIXED | (dontunmap ? MREMAP_DONTUNMAP : 0);
		char *map = hmm_align(b->ptr, size), *dst = map + size + offsets[k];
		void *old = b->ptr, *moved;

		CHECK_EQ(madvise(map, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
		/* A hole to move into. */
		CHECK_EQ(munmap(map + size, 2 * size), 0);
		for (i = 0, ptr = (int *)map; i < size / sizeof(*ptr); ++i)
			ptr[i] = (int)i;

		if (before) {
			moved = mremap(map, size, size, flags, dst);
			CHECK(moved != MAP_FAILED);
			CHECK_PTR(moved, dst);
			b->ptr = moved;
			CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
		} else {
			b->ptr = map;
			CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
			moved = mremap(map, size, size, flags, dst);
			CHECK(moved != MAP_FAILED);
			CHECK_PTR(moved, dst);
		}
		CHECK_EQ(b->cpages, npages);
		for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
			CHECK_EQ(ptr[i], (int)i);
		/* The CPU reads the new location. */
		for (i = 0, ptr = moved; i < size / sizeof(*ptr); ++i)
			CHECK_EQ(ptr[i], (int)i);

		munmap(old, 8 * size);
		b->ptr = NULL;
		hmm_buffer_free(b);
	}
	hmm_teardown(&fx);
}

/* 36: an allocation failure on a 2 MiB migration falls back to base pages, both ways. */
TEST(migrate_anon_huge_err)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	int *ptr;
	void *old;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;

	/* Migrate, with the device's huge allocation failing. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_FLAGS, b,
				 UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);
	CHECK_EQ(simstats(fx.dev[0]).alloc_fallbacks, 1);
	/* One page faults back. */
	ptr = b->ptr;
	CHECK_EQ(ptr[2048], 2048);

	/* Start again on a fresh mapping. */
	b->ptr = old;
	hmm_buffer_unmap(b);
	hmm_buffer_map(&fx, b, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		ptr[i] = (int)i;
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], (int)i);

	/* Bring it home, with the system's huge allocation failing. */
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_FLAGS, b,
				 UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_MIGRATE_TO_SYS, b, npages), 0);
	CHECK_EQ(simstats(fx.dev[0]).alloc_fallbacks, 2);
	ptr = b->ptr;
	CHECK_EQ(ptr[2048], 2048);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* 37: the same with a read-only, never-written range. */
TEST(migrate_anon_huge_zero_err)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	size_t size = HMM_PMD;
	unsigned long npages = size >> PAGE_SHIFT_, i;
	int *ptr, val;
	void *old;

	hmm_setup(&fx, 1);
	hmm_check_readonly_migration(&fx);
	b = hmm_buffer_new(&fx, 2 * size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_FLAGS, b,
				 UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	ptr = b->ptr;
	CHECK_EQ(ptr[2048], 0);

	b->ptr = old;
	hmm_buffer_unmap(b);
	hmm_buffer_map(&fx, b, 2 * size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
	old = b->ptr;
	b->ptr = hmm_align(b->ptr, size);
	CHECK_EQ(madvise(b->ptr, size, MADV_HUGEPAGE), 0);
	/* The huge zero page, where the kernel gives one. */
	val = *(volatile int *)b->ptr;
	CHECK_EQ(val, 0);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_FLAGS, b,
				 UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
		CHECK_EQ(ptr[i], 0);
	b->ptr = old;
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/*
 * Under ThreadSanitizer every copy is instrumented, some twenty times slower:
 * there the sizes stop at 16 MiB and one round is timed.
 */
#if defined(__SANITIZE_THREAD__)
#define BENCH_SIZES 6
#define BENCH_ROUNDS 1
#else
#define BENCH_SIZES 7
#define BENCH_ROUNDS HMM_BENCH_ROUNDS
#endif

/* 38: migrations both ways at sizes from 512 KiB to 256 MiB; every one succeeds. */
TEST(benchmark_thp_migration)
{
	static const size_t mult4[] = { 1, 2, 4, 8, 16, 32, 512 }; /* PMD x 1/4 .. 128 */
	struct hmm_fixture fx;

	hmm_setup(&fx, 1);
	NOTE("%10s %6s %12s %12s", "size", "thp", "to dev ms", "to sys ms");
	for (size_t k = 0; k < BENCH_SIZES; k++) {
		size_t size = HMM_PMD / 4 * mult4[k];
		unsigned long npages = size >> PAGE_SHIFT_;

		for (int thp = 1; thp >= 0; thp--) {
			struct hmm_buffer *b = hmm_buffer_new(&fx, size + HMM_PMD,
							      PROT_READ | PROT_WRITE,
							      MAP_PRIVATE | MAP_ANONYMOUS);
			void *old = b->ptr;
			double to_dev = 0, to_sys = 0;

			b->ptr = hmm_align(b->ptr, HMM_PMD);
			CHECK_EQ(madvise(b->ptr, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
			memset(b->ptr, 0xa5, size);
			/* A warm-up round, then the timed ones. */
			for (int r = 0; r <= BENCH_ROUNDS; r++) {
				double t0 = harness_now(), t1;

				CHECK_EQ(hmm_migrate_to_dev(fx.dev[0], b, npages), 0);
				CHECK_EQ(b->cpages, npages);
				t1 = harness_now();
				CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_MIGRATE_TO_SYS, b,
							 npages), 0);
				CHECK_EQ(b->cpages, npages);
				if (r) {
					to_dev += t1 - t0;
					to_sys += harness_now() - t1;
				}
			}
			NOTE("%10zu %6d %12.2f %12.2f", size, thp, to_dev * 1e3 / BENCH_ROUNDS,
			     to_sys * 1e3 / BENCH_ROUNDS);
			b->ptr = old;
			hmm_buffer_free(b);
		}
	}
	hmm_teardown(&fx);
}

struct uffd_arg {
	int uffd;
	char *page;
	atomic_int stop;
};

static void *uffd_handler(void *p)
{
	struct uffd_arg *u = p;

	while (!atomic_load(&u->stop)) {
		struct pollfd pfd = { .fd = u->uffd, .events = POLLIN };
		struct uffd_msg msg;

		if (poll(&pfd, 1, 10) <= 0)
			continue;
		if (read(u->uffd, &msg, sizeof(msg)) != sizeof(msg) ||
		    msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = {
			.dst = msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1),
			.src = (uintptr_t)u->page,
			.len = PAGE,
		};
		ioctl(u->uffd, UFFDIO_COPY, &c);
	}
	return NULL;
}

/* 39 (pending upstream): the device reads memory another library serves with its own userfaultfd. */
TEST(userfaultfd_read)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	unsigned long npages = 4, i;
	size_t size = npages << PAGE_SHIFT_;
	struct uffd_arg u = { .uffd = -1 };
	struct uffdio_api api = { .api = UFFD_API };
	pthread_t thread;
	unsigned char *m;

	hmm_setup(&fx, 1);
	u.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (u.uffd < 0)
		SKIP("userfaultfd(2): %s", strerror(errno));
	CHECK_EQ(ioctl(u.uffd, UFFDIO_API, &api), 0);
	b = hmm_buffer_alloc(size);
	b->ptr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(b->ptr != MAP_FAILED);
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)b->ptr, .len = size },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	CHECK_EQ(ioctl(u.uffd, UFFDIO_REGISTER, &reg), 0);
	u.page = map_anon(PAGE);
	memset(u.page, 0xab, PAGE);
	CHECK_EQ(pthread_create(&thread, NULL, uffd_handler, &u), 0);

	CHECK_EQ(hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages), 0);
	CHECK_EQ(b->cpages, npages);
	for (i = 0, m = b->mirror; i < size; ++i)
		CHECK_EQ(m[i], 0xab);

	atomic_store(&u.stop, 1);
	CHECK_EQ(pthread_join(thread, NULL), 0);
	close(u.uffd);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}
