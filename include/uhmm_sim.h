/* SPDX-License-Identifier: MIT */
/*
 * uhmm_sim.h - the built-in software device.
 *
 * A device with its own memory: a pool of pages in a separate mapping, never
 * part of any managed range, registered as UHMM_MEMORY_DEVICE_PRIVATE device
 * memory with its own owner. Copies are memcpy. It can inject failures: fail
 * the next N copies, fail every copy of a given page, or die (every later
 * copy fails), so tests can check what a failing device does to the pages it
 * holds. Several sim devices may live in one process, each its own owner.
 */
#ifndef UHMM_SIM_H
#define UHMM_SIM_H

#include "uhmm_driver.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_sim;

/*
 * struct uhmm_sim_opts - options of uhmm_sim_create(); use UHMM_OPTS.
 * @npages: device memory in pages (default 65536, 256 MiB).
 * @name:   a name for diagnostics (default "sim").
 */
struct uhmm_sim_opts {
	size_t sz;
	unsigned long npages;
	const char *name;
};

/**
 * uhmm_sim_create() - create a software device with its own device memory.
 * @h: the handle. @opts: options or NULL. @out: out: the device.
 * Return: 0, or -EINVAL (NULL argument, npages too large), -E2BIG, -ENOMEM,
 * or an error of uhmm_devmem_add().
 */
UHMM_API int uhmm_sim_create(struct uhmm *h, const struct uhmm_sim_opts *opts,
			     struct uhmm_sim **out);

/**
 * uhmm_sim_destroy() - remove the device: its pages come home first (those a
 * dead device holds are poisoned), then its memory is freed.
 * Return: the number of pages poisoned, or 0; NULL is accepted.
 */
UHMM_API int uhmm_sim_destroy(struct uhmm_sim *sim);

/** uhmm_sim_devmem() - the device's memory region, for uhmm_migrate_to_device. */
UHMM_API struct uhmm_devmem *uhmm_sim_devmem(struct uhmm_sim *sim);

/** uhmm_sim_fail_copies() - make the next @n copies (either direction) fail with -EIO. */
UHMM_API int uhmm_sim_fail_copies(struct uhmm_sim *sim, unsigned int n);

/**
 * uhmm_sim_fail_page() - make every copy of the data of the managed page at
 * @addr fail with -EIO, in either direction, until uhmm_sim_clear_faults().
 * Return: 0, or -EINVAL (NULL), -ENOSPC (more than 64 pages marked).
 */
UHMM_API int uhmm_sim_fail_page(struct uhmm_sim *sim, const void *addr);

/** uhmm_sim_kill() - the device dies: every later copy fails with -ENODEV. */
UHMM_API int uhmm_sim_kill(struct uhmm_sim *sim);

/** uhmm_sim_clear_faults() - forget injected copy and page failures (not death). */
UHMM_API int uhmm_sim_clear_faults(struct uhmm_sim *sim);

/*
 * struct uhmm_sim_stats - the device's counters.
 * @copies_to:    pages copied into device memory.
 * @copies_from:  pages copied out of device memory.
 * @copy_errors:  copy calls that failed (injected or dead).
 * @page_frees:   page_free callbacks received.
 * @migrate_to_ram: migrate_to_ram callbacks (CPU faults on its pages).
 */
struct uhmm_sim_stats {
	size_t sz;
	uint64_t copies_to;
	uint64_t copies_from;
	uint64_t copy_errors;
	uint64_t page_frees;
	uint64_t migrate_to_ram;
};

/** uhmm_sim_stats() - read the device's counters. Return: 0, or -EINVAL, -E2BIG. */
UHMM_API int uhmm_sim_stats(struct uhmm_sim *sim, struct uhmm_sim_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_SIM_H */
