/* SPDX-License-Identifier: MIT */
/* probe.c - the userfaultfd: opening it, its features, and the ioctls uhmm uses. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static int sys_userfaultfd(int flags)
{
	return (int)syscall(SYS_userfaultfd, flags);
}

/*
 * A privileged userfaultfd serves faults raised inside system calls too.
 * It comes from the system call where the process may have it, or from
 * /dev/userfaultfd (6.1+) where the file is accessible; otherwise uhmm falls
 * back to user-mode-only.
 */
static int open_uffd(bool user_only, bool *kernel_faults)
{
	int flags = O_CLOEXEC | O_NONBLOCK;
	int fd, err;

	if (!user_only) {
		fd = sys_userfaultfd(flags);
		if (fd >= 0) {
			*kernel_faults = true;
			return fd;
		}
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
			close(dev);
			if (fd >= 0) {
				*kernel_faults = true;
				return fd;
			}
		}
	}
	fd = sys_userfaultfd(flags | UFFD_USER_MODE_ONLY);
	if (fd >= 0) {
		*kernel_faults = false;
		return fd;
	}
	err = errno;
	return err == ENOSYS ? -ENOSYS : err == EINVAL ? -EPERM : -err;
}

static int uffd_api(int fd, uint64_t want, uint64_t *got, uint64_t *ioctls)
{
	struct uffdio_api api = { .api = UFFD_API, .features = want };

	if (ioctl(fd, UFFDIO_API, &api))
		return -errno;
	*got = api.features;
	*ioctls = api.ioctls;
	return 0;
}

static const struct {
	uint64_t uffd;
	uint64_t uhmm;
} feat_map[] = {
	{ UFFD_FEATURE_PAGEFAULT_FLAG_WP, UHMM_FEAT_WP },
	{ UFFD_FEATURE_POISON, UHMM_FEAT_POISON },
	{ UFFD_FEATURE_MOVE, UHMM_FEAT_MOVE },
	{ UFFD_FEATURE_EVENT_UNMAP, UHMM_FEAT_EVENT_UNMAP },
	{ UFFD_FEATURE_EVENT_REMOVE, UHMM_FEAT_EVENT_REMOVE },
	{ UFFD_FEATURE_EVENT_REMAP, UHMM_FEAT_EVENT_REMAP },
	{ UFFD_FEATURE_EVENT_FORK, UHMM_FEAT_EVENT_FORK },
	{ UFFD_FEATURE_THREAD_ID, UHMM_FEAT_THREAD_ID },
	{ UFFD_FEATURE_SIGBUS, UHMM_FEAT_SIGBUS },
};

/* Features requested on the service descriptor (FORK and SIGBUS change behaviour). */
#define WANTED                                                                             \
	(UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE | UFFD_FEATURE_EVENT_UNMAP |               \
	 UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_THREAD_ID |    \
	 UFFD_FEATURE_PAGEFAULT_FLAG_WP)

int uhmm__probe_open(struct uhmm *h, unsigned int flags, uint64_t mask, int mode)
{
	bool kf = false;
	uint64_t avail = 0, ioctls = 0, got = 0, want = 0, want_fork = 0;
	int fd, ret, i;

	/* UFFDIO_API may be called once per descriptor: probe on a throwaway one. */
	fd = open_uffd(flags & UHMM_OPEN_USER_MODE_ONLY, &kf);
	if (fd < 0)
		return fd;
	ret = uffd_api(fd, 0, &avail, &ioctls);
	close(fd);
	if (ret)
		return ret;

	if (mode == UHMM_FAULT_AUTO)
		mode = !kf && (avail & UFFD_FEATURE_SIGBUS) ? UHMM_FAULT_SIGNAL : UHMM_FAULT_THREAD;
	if (mode == UHMM_FAULT_SIGNAL && (!(avail & UFFD_FEATURE_SIGBUS) || (mask & UHMM_FEAT_SIGBUS)))
		return -EOPNOTSUPP;
	h->fault_mode = mode;

	/* Fork events only where the service thread can serve a child (thread mode). */
	if (mode == UHMM_FAULT_THREAD && !(mask & UHMM_FEAT_EVENT_FORK))
		want_fork = avail & UFFD_FEATURE_EVENT_FORK;
	for (;;) {
		fd = open_uffd(flags & UHMM_OPEN_USER_MODE_ONLY, &kf);
		if (fd < 0)
			return fd;
		want = (avail & WANTED) | want_fork |
		       (mode == UHMM_FAULT_SIGNAL ? UFFD_FEATURE_SIGBUS : 0);
		ret = uffd_api(fd, want, &got, &ioctls);
		if (!ret) {
			got &= want; /* the kernel reports all it has, not what is in force */
			break;
		}
		close(fd);
		/*
		 * Fork events need CAP_SYS_PTRACE. Without them device pages
		 * come home before fork (as in signal mode), so do without.
		 */
		if (ret != -EPERM || !want_fork)
			return ret;
		want_fork = 0;
	}

	h->uffd = fd;
	h->uffd_stg = -1;
	if (avail & UFFD_FEATURE_MOVE) {
		uint64_t g2, i2;

		h->uffd_stg = open_uffd(flags & UHMM_OPEN_USER_MODE_ONLY, &kf);
		if (h->uffd_stg >= 0 && uffd_api(h->uffd_stg, UFFD_FEATURE_MOVE, &g2, &i2)) {
			close(h->uffd_stg);
			h->uffd_stg = -1;
		}
		if (h->uffd_stg < 0)
			avail &= ~(uint64_t)UFFD_FEATURE_MOVE;
	}
	h->uffd_feats = got;
	atomic_store(&h->wp, (got & UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0 && !(mask & UHMM_FEAT_WP));
	h->uffd_ioctls = ioctls;
	h->features = UHMM_FEAT_MISSING | (kf ? UHMM_FEAT_KERNEL_FAULTS : 0);
	/* What the kernel has; fork events only where in force. */
	avail = (avail & ~(uint64_t)UFFD_FEATURE_EVENT_FORK) | (got & UFFD_FEATURE_EVENT_FORK);
	for (i = 0; i < (int)(sizeof(feat_map) / sizeof(feat_map[0])); i++)
		if (avail & feat_map[i].uffd)
			h->features |= feat_map[i].uhmm;
	h->features &= ~mask;
	return 0;
}

/*
 * Register [start, start + len) for missing faults, and for write-protect
 * faults where the kernel has them (h->wp: read duplication write-protects
 * the CPU's page). A kernel that refuses the second mode for some memory
 * turns read duplication off for the handle.
 */
int uhmm__uffd_register(struct uhmm *h, uintptr_t start, size_t len)
{
	bool wp = atomic_load(&h->wp);
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0),
	};
	int ret = ioctl(h->uffd, UFFDIO_REGISTER, &reg);

	if (ret && wp && errno == EINVAL) {
		atomic_store(&h->wp, false);
		reg.mode = UFFDIO_REGISTER_MODE_MISSING;
		ret = ioctl(h->uffd, UFFDIO_REGISTER, &reg);
	}
	if (ret)
		return errno == ENOMEM ? -EFAULT : -errno;
	return 0;
}

/*
 * A fill ioctl fails with EAGAIN while an unmap/remove/remap event is pending
 * on the userfaultfd. The service thread (the one that reads events) must not
 * wait for that: it gets -EAGAIN. Other threads wait for it to read.
 */
static int eagain(void)
{
	if (uhmm__in_svc || uhmm__nowait) {
		uhmm__svc_eagain = 1;
		return -EAGAIN;
	}
	sched_yield();
	return 0;
}

/* Install @len bytes from @src at @dst; a page already present is not an error. */
int uhmm__uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len, bool wake)
{
	size_t done;

	return uhmm__uffd_copy_n(uffd, dst, src, len, wake, &done);
}

static int copy_n_mode(int uffd, uintptr_t dst, const void *src, size_t len, uint64_t mode,
		       size_t *donep)
{
	size_t done = 0;

	*donep = 0;
	while (done < len) {
		struct uffdio_copy c = {
			.dst = dst + done,
			.src = (uintptr_t)src + done,
			.len = len - done,
			.mode = mode,
		};
		if (ioctl(uffd, UFFDIO_COPY, &c) == 0) {
			done = len;
			break;
		}
		if (c.copy > 0) {
			done += (size_t)c.copy;
			continue;
		}
		if (errno == EAGAIN) {
			if (eagain()) {
				*donep = done;
				return -EAGAIN;
			}
			continue;
		}
		if (errno == EEXIST) {
			/* Someone filled it first: skip the page, keep its data. */
			uhmm__fill_exists = 1;
			uhmm__uffd_wake(uffd, dst + done, PAGE_SIZE);
			done += PAGE_SIZE;
			continue;
		}
		*donep = done;
		return -errno;
	}
	*donep = done;
	return 0;
}

/* As uhmm__uffd_copy; *@donep: the bytes installed (or found present) from the start. */
int uhmm__uffd_copy_n(int uffd, uintptr_t dst, const void *src, size_t len, bool wake,
		      size_t *donep)
{
	return copy_n_mode(uffd, dst, src, len, wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE, donep);
}

/* The same, the pages installed write-protected (read duplication); never wakes. */
int uhmm__uffd_copy_wp_n(int uffd, uintptr_t dst, const void *src, size_t len, size_t *donep)
{
	return copy_n_mode(uffd, dst, src, len, UFFDIO_COPY_MODE_DONTWAKE | UFFDIO_COPY_MODE_WP,
			   donep);
}

/*
 * Lift write-protection from [dst, dst + len) (a range registered for it;
 * pages not protected are left as they are). Waits for events like the
 * fills (eagain()). Async-signal-safe.
 */
int uhmm__uffd_unprotect(int uffd, uintptr_t dst, size_t len, bool wake)
{
	for (;;) {
		struct uffdio_writeprotect p = {
			.range = { .start = dst, .len = len },
			.mode = wake ? 0 : UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
		};

		if (!ioctl(uffd, UFFDIO_WRITEPROTECT, &p))
			return 0;
		if (errno != EAGAIN)
			return -errno;
		if (eagain())
			return -EAGAIN;
	}
}

int uhmm__uffd_zeropage(int uffd, uintptr_t dst, size_t len, bool wake)
{
	for (;;) {
		struct uffdio_zeropage z = { .range = { .start = dst, .len = len },
					     .mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE };

		if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0 || z.zeropage > 0)
			return 0; /* a partial fill stopped at a present page: that is fine */
		if (errno == EEXIST) {
			uhmm__fill_exists = 1;
			uhmm__uffd_wake(uffd, dst, len);
			return 0;
		}
		if (errno != EAGAIN)
			return -errno;
		if (eagain())
			return -EAGAIN;
	}
}

int uhmm__uffd_poison(int uffd, uintptr_t dst, size_t len, bool wake)
{
	for (;;) {
		struct uffdio_poison p = { .range = { .start = dst, .len = len },
					   .mode = wake ? 0 : UFFDIO_POISON_MODE_DONTWAKE };

		if (ioctl(uffd, UFFDIO_POISON, &p) == 0)
			return 0;
		if (errno == EEXIST) {
			uhmm__uffd_wake(uffd, dst, len);
			return -EEXIST;
		}
		if (errno != EAGAIN)
			return -errno;
		if (eagain())
			return -EAGAIN;
	}
}

/*
 * Returns bytes moved, or -errno if none moved (-ENOENT: the first page is a
 * hole). Never with ALLOW_SRC_HOLES: on Linux 6.18 such a move, racing an
 * MADV_DONTNEED of its source, can spin in the kernel for ever
 * (tools/repro/move_vs_dontneed.c).
 */
long uhmm__uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len)
{
	struct uffdio_move m = {
		.dst = dst,
		.src = src,
		.len = len,
	};

	if (ioctl(uffd, UFFDIO_MOVE, &m) == 0)
		return (long)len;
	if (m.move > 0)
		return (long)m.move;
	return -errno;
}

void uhmm__uffd_wake(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	ioctl(uffd, UFFDIO_WAKE, &r);
}

/*
 * Which of @n pages at @addr hold data: present, or swapped out (mincore
 * says "not in memory" for both a hole and a swapped-out page, and a
 * swapped-out page must never be taken for a hole). From /proc/self/pagemap,
 * opened for the call (a descriptor kept across fork would show the parent).
 * vec[i] is 1 for data, 0 for a hole. Async-signal-safe. Returns 0, or -errno
 * when pagemap cannot be read: then the caller must assume data everywhere.
 */
int uhmm__pages_with_data(uintptr_t addr, size_t n, unsigned char *vec)
{
	uint64_t ent[64];
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return -errno;
	for (size_t i = 0; i < n && !ret;) {
		size_t k = n - i < 64 ? n - i : 64;
		ssize_t got = pread(fd, ent, k * sizeof(ent[0]),
				    (off_t)(((addr >> PAGE_SHIFT) + i) * sizeof(ent[0])));

		if (got != (ssize_t)(k * sizeof(ent[0]))) {
			ret = got < 0 ? -errno : -EIO;
			break;
		}
		for (size_t j = 0; j < k; j++)
			vec[i + j] = (ent[j] >> 62) & 3 ? 1 : 0; /* bit 63 present, 62 swapped */
		i += k;
	}
	close(fd);
	return ret;
}
