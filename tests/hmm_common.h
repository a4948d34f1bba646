/* SPDX-License-Identifier: MIT */
/*
 * hmm_common.h - what the ports of the kernel's HMM selftests share (hmm.c,
 * hmm2.c): the fixture (one handle, one or two sim devices standing in for
 * /dev/hmm_dmirror0 and 1), the kernel tests' buffer, and its command wrapper.
 */
#ifndef UHMM_TEST_HMM_COMMON_H
#define UHMM_TEST_HMM_COMMON_H

#include "harness.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#define PAGE_SHIFT_ 12
#define HMM_NPAGES 1024UL /* the kernel tests' HMM_BUFFER_SIZE: 4 MiB */
#define HMM_NTIMES 10
#define HMM_BENCH_ROUNDS 5
#define HMM_PMD hmm_pmd_size()

struct hmm_fixture {
	struct uhmm *h;
	struct uhmm_sim *dev[2];
	int ndev;
};

/* The kernel tests' struct hmm_buffer. */
struct hmm_buffer {
	void *ptr;
	void *mirror;
	size_t size;
	int fd;
	uint64_t cpages;
	uint64_t faults;
};

static inline size_t hmm_pmd_size(void)
{
	static size_t pmd;

	if (!pmd) {
		long long v = harness_read_long_file(
			"/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", 2 << 20);

		pmd = v > 0 ? (size_t)v : (size_t)2 << 20;
	}
	return pmd;
}

static inline void *hmm_align(void *p, size_t a)
{
	return (void *)(((uintptr_t)p + a - 1) & ~(uintptr_t)(a - 1));
}

static inline void hmm_setup(struct hmm_fixture *fx, int ndev)
{
	memset(fx, 0, sizeof(*fx));
	fx->h = uhmm_test_open_migrating();
	fx->ndev = ndev;
	for (int i = 0; i < ndev; i++) {
		UHMM_OPTS(uhmm_sim_opts, o, .name = i ? "dmirror1" : "dmirror0");

		CHECK_EQ(uhmm_sim_create(fx->h, &o, &fx->dev[i]), 0);
	}
}

static inline void hmm_teardown(struct hmm_fixture *fx)
{
	for (int i = 0; i < fx->ndev; i++)
		CHECK_EQ(uhmm_sim_destroy(fx->dev[i]), 0);
	uhmm_close(fx->h);
}

static inline struct hmm_buffer *hmm_buffer_alloc(size_t size)
{
	struct hmm_buffer *b = calloc(1, sizeof(*b));

	CHECK_NONNULL(b);
	b->size = size;
	b->fd = -1;
	b->mirror = malloc(size);
	CHECK_NONNULL(b->mirror);
	return b;
}

/*
 * Map the buffer's memory. Private anonymous memory is given to uhmm, as the
 * kernel manages all memory; other kinds (shared, file) stay unmanaged: the
 * device mirrors them but cannot migrate them.
 */
static inline void hmm_buffer_map(struct hmm_fixture *fx, struct hmm_buffer *b, size_t size,
				  int prot, int flags)
{
	/*
	 * munmap(2) returns before uhmm has handled its event: a new mapping at
	 * the same address would still look managed. Wait for the events first.
	 */
	CHECK_EQ(uhmm_sync(fx->h), 0);
	b->size = size;
	b->ptr = mmap(NULL, size, prot, flags, -1, 0);
	CHECK_MSG(b->ptr != MAP_FAILED, "mmap(%zu): %s", size, strerror(errno));
	if ((flags & (MAP_PRIVATE | MAP_ANONYMOUS)) == (MAP_PRIVATE | MAP_ANONYMOUS))
		CHECK_EQ(uhmm_manage(fx->h, b->ptr, size), 0);
}

static inline struct hmm_buffer *hmm_buffer_new(struct hmm_fixture *fx, size_t size, int prot,
						int flags)
{
	struct hmm_buffer *b = hmm_buffer_alloc(size);

	hmm_buffer_map(fx, b, size, prot, flags);
	return b;
}

static inline void hmm_buffer_unmap(struct hmm_buffer *b)
{
	if (b->ptr)
		CHECK_EQ(munmap(b->ptr, b->size), 0);
	b->ptr = NULL;
}

static inline void hmm_buffer_free(struct hmm_buffer *b)
{
	if (!b)
		return;
	hmm_buffer_unmap(b);
	free(b->mirror);
	if (b->fd >= 0)
		close(b->fd);
	free(b);
}

/* The kernel tests' hmm_dmirror_cmd: the counters are copied back on success only. */
static inline int hmm_dmirror_cmd(struct uhmm_sim *dev, unsigned int op, struct hmm_buffer *b,
				  unsigned long npages)
{
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)b->ptr,
		.ptr = b->mirror,
		.npages = npages,
	};
	int ret = uhmm_sim_dmirror(dev, op, &cmd);

	if (ret)
		return ret;
	b->cpages = cmd.cpages;
	b->faults = cmd.faults;
	return 0;
}

static inline int hmm_migrate_to_dev(struct uhmm_sim *dev, struct hmm_buffer *b,
				     unsigned long npages)
{
	return hmm_dmirror_cmd(dev, UHMM_DMIRROR_MIGRATE_TO_DEV, b, npages);
}

/* A temporary file of @size bytes (O_TMPFILE in /tmp where the filesystem has it). */
static inline int hmm_create_file(size_t size)
{
	char path[] = "/tmp/uhmm-hmm-XXXXXX";
	int fd = open("/tmp", O_TMPFILE | O_EXCL | O_RDWR, 0600);

	if (fd < 0) {
		fd = mkstemp(path);
		CHECK_MSG(fd >= 0, "mkstemp: %s", strerror(errno));
		unlink(path);
	}
	CHECK_EQ(ftruncate(fd, (off_t)size), 0);
	return fd;
}

/*
 * Tests that migrate read-only memory first check that a page of a mapping
 * without write permission moves out and back (UFFDIO_MOVE moves only
 * between writable VMAs: the core makes the page writable for the instant
 * of its move, migrate.c move_readonly), so that a failure there names its
 * cause before the test's own checks.
 */
static inline void hmm_check_readonly_migration(struct hmm_fixture *fx)
{
	struct hmm_buffer *b = hmm_buffer_new(fx, PAGE, PROT_READ | PROT_WRITE,
					      MAP_PRIVATE | MAP_ANONYMOUS);

	*(volatile int *)b->ptr = 1;
	CHECK_EQ(mprotect(b->ptr, PAGE, PROT_READ), 0);
	CHECK_EQ(hmm_migrate_to_dev(fx->dev[0], b, 1), 0);
	CHECK_EQ(hmm_dmirror_cmd(fx->dev[0], UHMM_DMIRROR_MIGRATE_TO_SYS, b, 1), 0);
	CHECK_EQ(*(volatile int *)b->ptr, 1);
	hmm_buffer_free(b);
}

#endif /* UHMM_TEST_HMM_COMMON_H */
