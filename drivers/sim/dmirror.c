/* SPDX-License-Identifier: MIT */
/*
 * dmirror.c - the command set of the kernel's HMM test driver (lib/test_hmm.c)
 * on the sim device, with its semantics and counters, so the kernel's HMM
 * selftests can run against uhmm. Each command runs in the caller's thread
 * with a context of its own; data moves through a bounce buffer, as the
 * kernel driver's does, and the caller's buffer is touched only at the end.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "sim_internal.h"

#define FAULT_ROUNDS_MAX 1000

struct result {
	uint64_t cpages;
	uint64_t faults;
};

/* A fresh mapping: memory nobody manages, so touching it never faults into uhmm. */
static char *bounce_alloc(unsigned long npages)
{
	void *p = mmap(NULL, npages * SIM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void bounce_free(char *p, unsigned long npages)
{
	if (p)
		munmap(p, npages * SIM_PAGE);
}

/*
 * A system page is copied with process_vm_readv/writev: a page unmapped (or
 * made read-only) meanwhile fails with EFAULT instead of killing the
 * process, which plain memcpy would. Where those calls are not permitted
 * (seccomp), memcpy it is.
 */
static atomic_int no_vm_rw;

static long vm_copy(uintptr_t va, char *buf, bool write)
{
	struct iovec local = { buf, SIM_PAGE }, remote = { (void *)va, SIM_PAGE };
	ssize_t got;

	if (!atomic_load_explicit(&no_vm_rw, memory_order_relaxed)) {
		got = write ? process_vm_writev(getpid(), &local, 1, &remote, 1, 0) :
			      process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
		if (got == SIM_PAGE)
			return 0;
		if (got >= 0 || (errno != ENOSYS && errno != EPERM))
			return -EFAULT;
		atomic_store(&no_vm_rw, 1);
	}
	if (write)
		memcpy((void *)va, buf, SIM_PAGE);
	else
		memcpy(buf, (void *)va, SIM_PAGE);
	return 0;
}

/*
 * Copy [s, e) between the device's view and @buf, page by page, as far as
 * translations exist (the kernel driver's dmirror_do_read/write): -ENOENT at
 * the first page without one (or, for a write, without a writable one), with
 * *done the pages copied before it. Translations from before this command
 * are checked against the CPU side's permissions first.
 */
static int do_copy(struct uhmm_sim_ctx *ctx, uintptr_t s, uintptr_t e, char *buf, bool write,
		   unsigned long *done)
{
	*done = 0;
	for (uintptr_t a = s; a < e; a += SIM_PAGE, buf += SIM_PAGE) {
		char *mem;
		int ret = sim_translate(ctx, a, write, false, &mem);

		if (ret < 0)
			return ret;
		if (ret == 0) {
			/* The slot is held: the device page cannot move while copied. */
			if (write)
				memcpy(mem, buf, SIM_PAGE);
			else
				memcpy(buf, mem, SIM_PAGE);
			sim_slot_exit(ctx);
		} else if (vm_copy(a, buf, write)) {
			/* Gone or read-only meanwhile: fault it again. */
			sim_drop_range(ctx->sim, a, a + SIM_PAGE);
			return -ENOENT;
		}
		++*done;
	}
	return 0;
}

/* READ and WRITE: copy, and fault in from the first missing page on, until done. */
static int dm_rw(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, void *ptr, bool write,
		 struct result *res)
{
	unsigned long npages = (e - s) >> SIM_PAGE_SHIFT, done;
	char *bounce = bounce_alloc(npages);
	struct uhmm_sim_ctx *ctx = sim_ctx_new(sim, true, 0);
	uintptr_t start = s;
	int ret = -ENOMEM;

	if (!bounce || !ctx)
		goto out;
	if (write)
		memcpy(bounce, ptr, npages * SIM_PAGE);
	sim_new_epoch(sim);
	for (;;) {
		ret = do_copy(ctx, start, e, bounce + (start - s), write, &done);
		if (ret != -ENOENT)
			break;
		start += done << SIM_PAGE_SHIFT;
		if (res->faults >= FAULT_ROUNDS_MAX) {
			ret = -EBUSY;
			break;
		}
		ret = sim_map_range(ctx, start, e, write);
		if (ret)
			break;
		res->faults++;
	}
	if (!ret) {
		if (!write)
			memcpy(ptr, bounce, npages * SIM_PAGE);
		res->cpages = npages;
	}
out:
	sim_ctx_free(ctx);
	bounce_free(bounce, npages);
	return ret;
}

/*
 * Snapshot [s, e) into @pfns, 512 pages at a time, each with the sequence
 * protocol (no fault is requested, nothing is installed).
 */
static int snapshot(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, uint64_t *pfns)
{
	struct uhmm_sim_ctx *ctx = sim_ctx_new(sim, true, 0);
	int ret = 0;

	if (!ctx)
		return -ENOMEM;
	while (s < e && !ret) {
		uintptr_t ce = (s | (SIM_CHUNK * SIM_PAGE - 1)) + 1;
		int64_t deadline = sim_now_ns() + SIM_TIMEOUT_NS;
		struct uhmm_range range = {
			.notifier = &sim->notifier,
			.start = s,
			.end = ce < e ? ce : e,
			.pfns = pfns,
			.dev_private_owner = sim,
		};

		for (;;) {
			bool stale;

			if (sim_now_ns() > deadline) {
				ret = -EBUSY;
				break;
			}
			sim_fill_begin(ctx, range.start, range.end);
			range.notifier_seq = uhmm_interval_read_begin(&sim->notifier);
			memset(pfns, 0, ((range.end - s) >> SIM_PAGE_SHIFT) * sizeof(*pfns));
			ret = uhmm_range_fault(&range);
			if (ret == -EBUSY)
				continue;
			if (ret)
				break;
			pthread_mutex_lock(&sim->lock);
			stale = sim_fill_stale_locked(ctx) ||
				uhmm_interval_read_retry(&sim->notifier, range.notifier_seq);
			pthread_mutex_unlock(&sim->lock);
			if (!stale)
				break;
		}
		sim_fill_end(ctx);
		pfns += (range.end - s) >> SIM_PAGE_SHIFT;
		s = range.end;
	}
	sim_ctx_free(ctx);
	return ret;
}

static unsigned char snapshot_byte(struct uhmm_sim *sim, uint64_t e)
{
	struct uhmm_page *page = uhmm_pfn_to_page(e);
	unsigned char b;

	if (e & UHMM_PFN_ERROR)
		return UHMM_DMIRROR_PROT_ERROR;
	if (!(e & UHMM_PFN_VALID))
		return UHMM_DMIRROR_PROT_NONE;
	if (page)
		b = page->devmem == sim->dm ? UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
					      UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (e & UHMM_PFN_ZERO)
		b = UHMM_DMIRROR_PROT_ZERO;
	else
		b = UHMM_DMIRROR_PROT_NONE;
	return b | (e & UHMM_PFN_WRITE ? UHMM_DMIRROR_PROT_WRITE : UHMM_DMIRROR_PROT_READ);
}

static int dm_snapshot(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, unsigned char *ptr,
		       struct result *res)
{
	unsigned long npages = (e - s) >> SIM_PAGE_SHIFT;
	uint64_t *pfns = malloc(npages * sizeof(*pfns));
	unsigned char *bytes = malloc(npages);
	int ret = -ENOMEM;

	if (pfns && bytes)
		ret = snapshot(sim, s, e, pfns);
	if (!ret) {
		for (unsigned long i = 0; i < npages; i++)
			bytes[i] = snapshot_byte(sim, pfns[i]);
		memcpy(ptr, bytes, npages);
		res->cpages = npages;
	}
	free(bytes);
	free(pfns);
	return ret;
}

/*
 * MIGRATE_*: the range must be mapped and readable (else -EINVAL, as the
 * kernel driver checks each VMA); returns the snapshot in *pfnsp.
 */
static int migrate_check(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, uint64_t **pfnsp)
{
	unsigned long npages = (e - s) >> SIM_PAGE_SHIFT;
	uint64_t *pfns;
	int ret;

	ret = uhmm_can_migrate(sim->h);
	if (ret)
		return ret;
	if (!sim->dm)
		return -ENODEV;
	pfns = malloc(npages * sizeof(*pfns));
	if (!pfns)
		return -ENOMEM;
	ret = snapshot(sim, s, e, pfns);
	for (unsigned long i = 0; !ret && i < npages; i++)
		if (pfns[i] & UHMM_PFN_ERROR)
			ret = -EINVAL;
	if (ret) {
		free(pfns);
		return ret;
	}
	*pfnsp = pfns;
	return 0;
}

/* Call @fn on each run of managed pages of the snapshot. */
static int for_managed_runs(struct uhmm_sim *sim, uintptr_t s, const uint64_t *pfns,
			    unsigned long npages, bool cmd,
			    int (*fn)(struct uhmm_sim *, uintptr_t, uintptr_t, bool, unsigned long *),
			    unsigned long *moved)
{
	unsigned long i = 0, j;

	while (i < npages) {
		int ret;

		if (!(pfns[i] & UHMM_PFN_MANAGED)) {
			i++;
			continue;
		}
		for (j = i + 1; j < npages && (pfns[j] & UHMM_PFN_MANAGED); j++)
			;
		ret = fn(sim, s + (i << SIM_PAGE_SHIFT), s + (j << SIM_PAGE_SHIFT), cmd, moved);
		if (ret)
			return ret;
		i = j;
	}
	return 0;
}

/*
 * MIGRATE_TO_DEV: migrate, enter the device pages in the page table, then
 * read the range back from the device's view into @ptr (the kernel driver
 * does the same, so a test sees what the device holds).
 */
static int dm_migrate_to_dev(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, void *ptr,
			     struct result *res)
{
	unsigned long npages = (e - s) >> SIM_PAGE_SHIFT, moved = 0, done;
	struct uhmm_sim_ctx *ctx = NULL;
	uint64_t *pfns = NULL;
	char *bounce = NULL;
	int ret;

	ret = migrate_check(sim, s, e, &pfns);
	if (ret)
		return ret;
	ret = for_managed_runs(sim, s, pfns, npages, true, sim_migrate_to_dev, &moved);
	if (ret)
		goto out;
	ret = -ENOMEM;
	ctx = sim_ctx_new(sim, true, 0);
	bounce = bounce_alloc(npages);
	if (!ctx || !bounce)
		goto out;
	sim_new_epoch(sim);
	ret = sim_install_snapshot(ctx, s, e, true);
	if (!ret)
		ret = do_copy(ctx, s, e, bounce, false, &done);
	if (!ret) {
		memcpy(ptr, bounce, npages * SIM_PAGE);
		res->cpages = npages;
	}
out:
	bounce_free(bounce, npages);
	sim_ctx_free(ctx);
	free(pfns);
	return ret;
}

static int dm_migrate_to_sys(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, struct result *res)
{
	unsigned long npages = (e - s) >> SIM_PAGE_SHIFT, moved = 0;
	uint64_t *pfns = NULL;
	int ret;

	ret = migrate_check(sim, s, e, &pfns);
	if (ret)
		return ret;
	ret = for_managed_runs(sim, s, pfns, npages, true, sim_migrate_to_sys, &moved);
	if (!ret)
		res->cpages = moved;
	free(pfns);
	return ret;
}

/*
 * The kernel's make_device_exclusive: the device takes the pages for atomics
 * and reads them back (cpages). uhmm_make_exclusive moves them into uhmm's
 * exclusive region and returns them locked; the device's entries point there
 * (PTE_X) before they are let go, so any CPU access, which revokes, finds the
 * entries in place to drop; the CPU then sees everything the device wrote.
 */
static int dm_exclusive(struct uhmm_sim *sim, uintptr_t s, uintptr_t e, void *ptr,
			struct result *res)
{
	unsigned long npages = (e - s) >> SIM_PAGE_SHIFT, done;
	struct uhmm_sim_ctx *ctx = NULL;
	void **pages = NULL;
	uint64_t *pfns = NULL;
	char *bounce = NULL;
	int ret;

	ret = migrate_check(sim, s, e, &pfns);
	if (ret)
		return ret;
	ret = -ENOMEM;
	ctx = sim_ctx_new(sim, true, 0);
	bounce = bounce_alloc(npages);
	pages = calloc(npages, sizeof(*pages));
	if (!ctx || !bounce || !pages)
		goto out;
	sim_new_epoch(sim);
	/*
	 * The driver loop: the sequence begins before the call (never while
	 * pages are held: an invalidation waiting for them would hold up
	 * read_begin), the entries go in only if nothing changed meanwhile.
	 */
	for (int64_t deadline = sim_now_ns() + SIM_TIMEOUT_NS;;) {
		uint64_t seq;
		bool in;

		sim_fill_begin(ctx, s, e);
		seq = uhmm_interval_read_begin(&sim->notifier);
		ret = uhmm_make_exclusive(sim->h, (void *)s, e - s, sim, pages);
		if (ret < 0)
			break;
		in = sim_pt_set_exclusive(ctx, s, npages, pages, seq);
		uhmm_exclusive_unlock(sim->h, (void *)s, e - s, pages);
		if (in)
			break;
		if (sim_now_ns() > deadline) {
			ret = -EBUSY;
			break;
		}
	}
	sim_fill_end(ctx);
	if (ret < 0)
		goto out;
	/* As the kernel's driver: a page that could not be taken fails the command. */
	if ((unsigned long)ret < npages) {
		ret = -EBUSY;
		goto out;
	}
	/* Read back through the entries just made, without faulting. */
	ret = do_copy(ctx, s, e, bounce, false, &done);
	if (!ret) {
		memcpy(ptr, bounce, npages * SIM_PAGE);
		res->cpages = npages;
	}
out:
	free(pages);
	bounce_free(bounce, npages);
	sim_ctx_free(ctx);
	free(pfns);
	return ret;
}

/* -EPERM while a page of the range is still the device's exclusively (not revoked). */
static int dm_check_exclusive(struct uhmm_sim *sim, uintptr_t s, uintptr_t e)
{
	return sim_pt_exclusive_in(sim, s, e) ? -EPERM : 0;
}

/* Device removal with pages resident: evict everything, unregister, register afresh. */
static int dm_release(struct uhmm_sim *sim)
{
	int ret;

	uhmm_sim_synchronize(sim);
	if (sim->dm)
		uhmm_devmem_remove(sim->dm);
	sim->dm = NULL;
	/* Every page came home through invalidations; nothing of the old memory stays mapped. */
	sim_pt_drop_all(sim);
	ret = sim_devmem_add(sim);
	if (ret) {
		sim->dm = NULL;
		return ret == -ENOMEM ? -ENOMEM : -ENODEV;
	}
	return 0;
}

int uhmm_sim_dmirror(struct uhmm_sim *sim, unsigned int op, struct uhmm_dmirror_cmd *cmd)
{
	struct result res = { 0, 0 };
	uintptr_t s, e;
	int ret;

	if (!sim || !cmd)
		return -EINVAL;
	if (sim_in_kernel())
		return -EDEADLK;
	s = cmd->addr;
	/* The kernel driver's checks, for every command. */
	if ((s & (SIM_PAGE - 1)) || !cmd->npages || cmd->npages > (UINTPTR_MAX - s) >> SIM_PAGE_SHIFT)
		return -EINVAL;
	e = s + (cmd->npages << SIM_PAGE_SHIFT);
	if (!cmd->ptr && (op == UHMM_DMIRROR_READ || op == UHMM_DMIRROR_WRITE ||
			  op == UHMM_DMIRROR_MIGRATE_TO_DEV || op == UHMM_DMIRROR_SNAPSHOT ||
			  op == UHMM_DMIRROR_EXCLUSIVE))
		return -EINVAL;

	/* As in the kernel, a command sees every munmap, discard and mremap before it. */
	uhmm_sync(sim->h);
	switch (op) {
	case UHMM_DMIRROR_READ:
	case UHMM_DMIRROR_WRITE:
		ret = dm_rw(sim, s, e, cmd->ptr, op == UHMM_DMIRROR_WRITE, &res);
		break;
	case UHMM_DMIRROR_MIGRATE_TO_DEV:
		ret = dm_migrate_to_dev(sim, s, e, cmd->ptr, &res);
		break;
	case UHMM_DMIRROR_MIGRATE_TO_SYS:
		ret = dm_migrate_to_sys(sim, s, e, &res);
		break;
	case UHMM_DMIRROR_SNAPSHOT:
		ret = dm_snapshot(sim, s, e, cmd->ptr, &res);
		break;
	case UHMM_DMIRROR_EXCLUSIVE:
		ret = dm_exclusive(sim, s, e, cmd->ptr, &res);
		break;
	case UHMM_DMIRROR_CHECK_EXCLUSIVE:
		ret = dm_check_exclusive(sim, s, e);
		break;
	case UHMM_DMIRROR_RELEASE:
		ret = dm_release(sim);
		break;
	case UHMM_DMIRROR_FLAGS:
		atomic_store(&sim->dflags, cmd->npages);
		ret = 0;
		break;
	default:
		ret = -EINVAL;
		break;
	}
	if (!ret) {
		cmd->cpages = res.cpages;
		cmd->faults = res.faults;
	}
	return ret;
}
