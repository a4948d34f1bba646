/* SPDX-License-Identifier: MIT */
/*
 * bench.c - `uhmm bench`: each figure measured beside its floor in the same run,
 * printed with the ratio of the figure's time to the floor's time. Uses only the
 * public headers; the floors (a raw userfaultfd, the kernel's own first-touch
 * fault, memcpy) are set up here, not borrowed from the library.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm_sim.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define EXIT_SKIP 77
#define PAGE UHMM_PAGE_SIZE
#define COPY_CHUNK (2UL << 20) /* UFFDIO_COPY call size of the "least work home" floor */
#define WARMUP 16
#define MAX_ROWS 44

/* The entry point, called by tools/uhmm.c (which declares it too). */
int cmd_bench(int argc, char **argv);

struct row {
	const char *id;
	char figure[112]; /* with the fault mode it ran in, where one matters */
	const char *unit;
	double value;
	const char *floor;
	double floor_value;
	double ratio; /* time of the figure / time of the floor: 1 = at the floor */
	double vmin, vmax, fmin, fmax; /* ranges over the repetitions, when has_range */
	bool has_range;
	const char *na; /* not measured, and why */
	char err[128];	/* measuring failed, and why */
	char note[160]; /* counted beside the figure (evictions, device faults), or empty */
	double evictions; /* for the JSON rows, when has_evictions */
	bool has_evictions;
};

/*
 * The raw userfaultfd of the floors: no library, one handler thread doing
 * poll + read + UFFDIO_COPY of 4 KiB, the least a thread-mode fault can cost.
 */
struct raw {
	int uffd;
	int stopfd;
	char *src; /* COPY_CHUNK bytes of pattern: the source of every UFFDIO_COPY */
	pthread_t thr;
	bool started;
	bool move; /* UFFDIO_MOVE works on this descriptor */
	atomic_bool wake_after; /* COPY without waking, then UFFDIO_WAKE: the kernel's order */
	atomic_bool three_fds;  /* poll a third descriptor (idlefd), as uhmm's service thread */
	int idlefd;             /* never written */
	atomic_int err;
};

#ifndef UFFD_FEATURE_MOVE /* Debian 12's headers predate it */
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#endif

/*
 * The raw signal-mode floor: a userfaultfd of its own with UFFD_FEATURE_SIGBUS on
 * one private page; the faulting thread's SIGBUS handler resolves the fault with
 * one UFFDIO_COPY of 4 KiB and returns, the least a signal-mode fault can cost.
 */
struct rawsig {
	int uffd;
	char *page; /* the registered page */
	char *src;  /* PAGE bytes of pattern */
	struct sigaction prev; /* the action before ours: uhmm's handler, or none */
	volatile sig_atomic_t err;
};

/* A handle and its own sim device: the run's, or one opened for a row. */
struct target {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	const char *mode; /* the fault mode in force: "thread" or "signal" */
};

struct bench {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	struct raw raw;
	struct target run; /* b->h, b->sim, b->dm with their mode */
	size_t len, npages;
	unsigned long mib;
	size_t bulk_len; /* the bulk migration figure's own size (--bulk) */
	unsigned long bulk_mib;
	int reps, samples;
	bool json, progress, kernel_faults;
	const char *mode; /* the fault mode in force: "thread" or "signal" */
	bool pinned;	    /* every thread on one CPU, but for the 2-thread figure */
	cpu_set_t all, one; /* the CPUs we were given; the first of them */
	int step, nsteps;
	struct row rows[MAX_ROWS];
	int nrows;
};

static volatile uint64_t sink;

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The q-quantile (0..1) of @n values, sorting them in place. */
static double quantile(double *v, size_t n, double q)
{
	size_t i;

	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	i = (size_t)(q * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

static void progress(struct bench *b, const char *what)
{
	if (!b->progress)
		return;
	b->step++;
	fprintf(stderr, "\r\033[Kuhmm bench: [%d/%d] %s", b->step, b->nsteps, what);
	fflush(stderr);
}

static struct row *row_add(struct bench *b, const char *id, const char *figure, const char *unit,
			   const char *floor)
{
	struct row *r;

	if (b->nrows == MAX_ROWS) { /* a row added without raising MAX_ROWS */
		fprintf(stderr, "uhmm bench: more than %d rows: raise MAX_ROWS\n", MAX_ROWS);
		exit(1);
	}
	r = &b->rows[b->nrows++];
	memset(r, 0, sizeof(*r));
	r->id = id;
	snprintf(r->figure, sizeof(r->figure), "%s", figure);
	r->unit = unit;
	r->floor = floor;
	return r;
}

/* A row whose figure ran in fault mode @mode ("thread", "signal"): the figure says which. */
static struct row *row_addm(struct bench *b, const char *id, const char *figure, const char *mode,
			    const char *unit, const char *floor)
{
	struct row *r = row_add(b, id, figure, unit, floor);

	snprintf(r->figure, sizeof(r->figure), "%s, %s mode", figure, mode);
	return r;
}

/* The first failure of a row, and why (NULL: @what says it all). */
static void row_fail(struct row *r, const char *what, const char *why)
{
	if (!r->err[0])
		snprintf(r->err, sizeof(r->err), "%s%s%s", what, why ? ": " : "", why ? why : "");
}

/* A migration that did not move every page: the library's error, or the shortfall. */
static void row_fail_moved(struct row *r, const char *what, int ret)
{
	row_fail(r, what, ret < 0 ? uhmm_strerror(ret) : "not every page moved");
}

/*
 * Fill a row from @n per-repetition times (seconds) of the figure and of its
 * floor: medians, the figure's range, the ratio of the median times. With
 * @rate the values are @work per second (bytes * 1e-9 for GB/s, pages for
 * pages/s); without, times in seconds * @work (1e3 for ms).
 */
static void row_times(struct row *r, double *fig, double *flo, int n, double work, bool rate)
{
	double tf = quantile(fig, (size_t)n, 0.5), tl = quantile(flo, (size_t)n, 0.5);

	r->ratio = tf / tl;
	r->has_range = true;
	if (rate) {
		r->value = work / tf;
		r->floor_value = work / tl;
		r->vmin = work / fig[n - 1];
		r->vmax = work / fig[0];
		r->fmin = work / flo[n - 1];
		r->fmax = work / flo[0];
	} else {
		r->value = tf * work;
		r->floor_value = tl * work;
		r->vmin = fig[0] * work;
		r->vmax = fig[n - 1] * work;
		r->fmin = flo[0] * work;
		r->fmax = flo[n - 1] * work;
	}
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	/* 4 KiB pages, as managed memory: no THP makes a floor look cheaper. */
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

static void fill(void *p, size_t len, unsigned char seed)
{
	unsigned char *c = p;

	for (size_t i = 0; i < len; i += PAGE)
		memset(c + i, (unsigned char)(seed + i / PAGE), PAGE);
}

/*
 * Set the CPUs of every thread of the process: the library's fault service
 * and the floors' handler as well as ours (as `taskset -a` does).
 */
static void affinity_all(const cpu_set_t *set)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			sched_setaffinity(atoi(e->d_name), sizeof(*set), set);
	closedir(d);
}

/* ---------------------------------------------------------------------------
 * Touch loops. One byte per page; volatile so that every touch happens.
 */
static uint64_t read_pages(const char *p, size_t first, size_t n)
{
	const volatile char *v = p;
	uint64_t s = 0;

	for (size_t i = first; i < first + n; i++)
		s += (unsigned char)v[i * PAGE];
	return s;
}

static uint64_t read_pages_perm(const char *p, const uint32_t *perm, size_t n)
{
	const volatile char *v = p;
	uint64_t s = 0;

	for (size_t i = 0; i < n; i++)
		s += (unsigned char)v[(size_t)perm[i] * PAGE];
	return s;
}

static void write_pages(char *p, size_t n)
{
	volatile char *v = p;

	for (size_t i = 0; i < n; i++)
		v[i * PAGE] = 1;
}

static void write_pages_perm(char *p, const uint32_t *perm, size_t n)
{
	volatile char *v = p;

	for (size_t i = 0; i < n; i++)
		v[(size_t)perm[i] * PAGE] = 1;
}

/* A random page order, the same in every run (fixed seed). */
static uint32_t *permutation(size_t n)
{
	uint32_t *p = malloc(n * sizeof(*p));
	uint64_t x = 0x9e3779b97f4a7c15ULL;

	if (!p)
		return NULL;
	for (size_t i = 0; i < n; i++)
		p[i] = (uint32_t)i;
	for (size_t i = n - 1; i > 0; i--) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		size_t j = x % (i + 1);
		uint32_t t = p[i];

		p[i] = p[j];
		p[j] = t;
	}
	return p;
}

/* ---------------------------------------------------------------------------
 * The raw userfaultfd.
 */
static void *raw_handler(void *arg)
{
	struct raw *r = arg;
	struct pollfd pfd[3] = { { .fd = r->uffd, .events = POLLIN },
				 { .fd = r->stopfd, .events = POLLIN },
				 { .fd = r->idlefd, .events = POLLIN } };
	struct uffd_msg msg;

	for (;;) {
		if (poll(pfd, atomic_load_explicit(&r->three_fds, memory_order_relaxed) ? 3 : 2,
			 -1) < 0) {
			if (errno == EINTR)
				continue;
			atomic_store(&r->err, errno);
			return NULL;
		}
		if (pfd[1].revents)
			return NULL;
		if (read(r->uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue; /* EAGAIN: poll woke for nothing */
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		bool wake_after = atomic_load_explicit(&r->wake_after, memory_order_relaxed);
		struct uffdio_copy c = {
			.dst = msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1),
			.src = (uintptr_t)r->src,
			.len = PAGE,
			.mode = wake_after ? UFFDIO_COPY_MODE_DONTWAKE : 0,
		};
		struct uffdio_range range = { c.dst, PAGE };

		if (!ioctl(r->uffd, UFFDIO_COPY, &c) || errno == EEXIST) {
			if (wake_after)
				ioctl(r->uffd, UFFDIO_WAKE, &range);
		} else {
			atomic_store(&r->err, errno);
			/* Never leave the toucher blocked: give it zeros, the check fails. */
			struct uffdio_zeropage z = { .range = { c.dst, PAGE } };

			ioctl(r->uffd, UFFDIO_ZEROPAGE, &z);
		}
	}
}

static int raw_uffd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && errno == EPERM) /* user-mode touches are all the floors need */
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	return fd;
}

/* Return 0, or an errno with @why filled. */
static int raw_open(struct raw *r, char *why, size_t whylen)
{
	struct uffdio_api api = { .api = UFFD_API };
	int err;

	r->uffd = r->stopfd = r->idlefd = -1;
	/* Features are asked for once: first see whether the move floor's is there. */
	r->uffd = raw_uffd();
	if (r->uffd >= 0 && !ioctl(r->uffd, UFFDIO_API, &api) &&
	    (api.features & UFFD_FEATURE_MOVE)) {
		r->move = true;
		api.features = UFFD_FEATURE_MOVE;
	} else {
		api.features = 0;
	}
	if (r->uffd >= 0) {
		close(r->uffd);
		r->uffd = raw_uffd();
	}
	if (r->uffd < 0) {
		err = errno;
		snprintf(why, whylen, "userfaultfd(2) for the floors: %s", strerror(err));
		return err;
	}
	if (ioctl(r->uffd, UFFDIO_API, &api)) {
		err = errno;
		snprintf(why, whylen, "UFFDIO_API: %s", strerror(err));
		return err;
	}
	r->stopfd = eventfd(0, EFD_CLOEXEC);
	r->idlefd = eventfd(0, EFD_CLOEXEC);
	r->src = map_anon(COPY_CHUNK);
	if (r->stopfd < 0 || r->idlefd < 0 || !r->src) {
		snprintf(why, whylen, "out of descriptors or memory");
		return ENOMEM;
	}
	memset(r->src, 0x5a, COPY_CHUNK);
	err = pthread_create(&r->thr, NULL, raw_handler, r);
	if (err) {
		snprintf(why, whylen, "pthread_create: %s", strerror(err));
		return err;
	}
	r->started = true;
	return 0;
}

static void raw_close(struct raw *r)
{
	uint64_t one = 1;

	if (r->started) {
		if (write(r->stopfd, &one, sizeof(one)) == sizeof(one))
			pthread_join(r->thr, NULL);
	}
	if (r->src)
		munmap(r->src, COPY_CHUNK);
	if (r->stopfd >= 0)
		close(r->stopfd);
	if (r->idlefd >= 0)
		close(r->idlefd);
	if (r->uffd >= 0)
		close(r->uffd);
}

static int raw_register(struct raw *r, void *addr, size_t len)
{
	struct uffdio_register reg = {
		.range = { (uintptr_t)addr, len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (ioctl(r->uffd, UFFDIO_REGISTER, &reg))
		return -errno;
	if (!(reg.ioctls & (1ULL << _UFFDIO_COPY)))
		return -EOPNOTSUPP;
	return 0;
}

static void raw_unregister(struct raw *r, void *addr, size_t len)
{
	struct uffdio_range range = { (uintptr_t)addr, len };

	ioctl(r->uffd, UFFDIO_UNREGISTER, &range);
}

/*
 * UFFDIO_COPY (or, with @move, UFFDIO_MOVE) @len bytes of @src into @dst, a
 * registered empty range, in COPY_CHUNK calls; nobody waits: the least work.
 */
static int raw_fill(struct raw *r, bool move, char *dst, char *src, size_t len)
{
	size_t off = 0;

	while (off < len) {
		size_t n = len - off < COPY_CHUNK ? len - off : COPY_CHUNK;
		struct uffdio_copy c = { .dst = (uintptr_t)dst + off, .src = (uintptr_t)src + off,
					 .len = n, .mode = UFFDIO_COPY_MODE_DONTWAKE };
		struct uffdio_move m = { .dst = c.dst, .src = c.src, .len = n,
					 .mode = UFFDIO_MOVE_MODE_DONTWAKE };
		int err = move ? ioctl(r->uffd, UFFDIO_MOVE, &m) : ioctl(r->uffd, UFFDIO_COPY, &c);
		long long done = move ? m.move : c.copy;

		if (err) {
			if (errno != EAGAIN || done <= 0)
				return -errno;
			n = (size_t)done;
		}
		off += n;
	}
	return 0;
}

/* ---------------------------------------------------------------------------
 * The raw signal-mode floor and the handles opened for single rows.
 */
static struct rawsig *rawsig_cur; /* whose page the installed handler serves */
/*
 * Set when uhmm_sigbus_handler() was seen to take the floor's own fault (it
 * zero-fills a missing page of a range registered with another userfaultfd):
 * the handler then checks its own page before asking uhmm.
 */
static volatile sig_atomic_t rawsig_own_first;

static void rawsig_handler(int sig, siginfo_t *si, void *uc)
{
	struct rawsig *r = rawsig_cur;
	uintptr_t a = (uintptr_t)si->si_addr;
	bool ours = r && a - (uintptr_t)r->page < PAGE;
	int saved = errno;

	/* uhmm's faults first, as a program with its own SIGBUS handler must. */
	if (!(ours && rawsig_own_first) && uhmm_sigbus_handler(sig, si, uc))
		return;
	if (ours) {
		struct uffdio_copy c = {
			.dst = (uintptr_t)r->page,
			.src = (uintptr_t)r->src,
			.len = PAGE,
			.mode = UFFDIO_COPY_MODE_DONTWAKE, /* nobody sleeps on it */
		};

		if (ioctl(r->uffd, UFFDIO_COPY, &c) && errno != EEXIST) {
			struct uffdio_zeropage z = { .range = { c.dst, PAGE } };

			r->err = errno;
			/* Never fault forever: zeros, and the check fails. */
			ioctl(r->uffd, UFFDIO_ZEROPAGE, &z);
		}
		errno = saved;
		return;
	}
	/* Not ours: the previous action takes it when the access faults again. */
	sigaction(SIGBUS, &r->prev, NULL);
	errno = saved;
}

/* Return 0, or an errno with @why filled. */
static int rawsig_open(struct rawsig *r, char *why, size_t whylen)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_SIGBUS };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	int err;

	memset(r, 0, sizeof(*r));
	r->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (r->uffd < 0 && errno == EPERM)
		r->uffd =
			(int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (r->uffd < 0) {
		err = errno;
		snprintf(why, whylen, "userfaultfd(2) for the signal floor: %s", strerror(err));
		return err;
	}
	if (ioctl(r->uffd, UFFDIO_API, &api)) {
		err = errno;
		snprintf(why, whylen, "UFFDIO_API with UFFD_FEATURE_SIGBUS: %s", strerror(err));
		return err;
	}
	r->page = map_anon(PAGE);
	r->src = map_anon(PAGE);
	if (!r->page || !r->src) {
		snprintf(why, whylen, "out of memory");
		return ENOMEM;
	}
	memset(r->src, 0x5a, PAGE);
	reg.range.start = (uintptr_t)r->page;
	reg.range.len = PAGE;
	if (ioctl(r->uffd, UFFDIO_REGISTER, &reg)) {
		err = errno;
		snprintf(why, whylen, "UFFDIO_REGISTER of the signal floor's page: %s",
			 strerror(err));
		return err;
	}
	return 0;
}

static void rawsig_close(struct rawsig *r)
{
	if (r->page)
		munmap(r->page, PAGE);
	if (r->src)
		munmap(r->src, PAGE);
	if (r->uffd >= 0)
		close(r->uffd);
}

/* Put our handler in place for the floor's block only; rawsig_remove restores the previous. */
static int rawsig_install(struct rawsig *r)
{
	struct sigaction sa = { .sa_sigaction = rawsig_handler, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	rawsig_cur = r;
	return sigaction(SIGBUS, &sa, &r->prev) ? -errno : 0;
}

static void rawsig_remove(struct rawsig *r)
{
	sigaction(SIGBUS, &r->prev, NULL);
	rawsig_cur = NULL;
}

/*
 * Open a handle in fault mode @mode (UHMM_FAULT_*, or AUTO: the run's) with fault
 * window @window (0: the default) and a sim device of @npages. Return 0, or a
 * negative errno with @why filled.
 */
static int target_open(struct bench *b, struct target *t, int mode, unsigned int window,
		       unsigned long npages, char *why, size_t whylen)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode ? mode : uhmm_fault_mode(b->h),
		  .fault_window = window);
	int ret;

	memset(t, 0, sizeof(*t));
	ret = uhmm_open(&t->h, &o);
	if (ret) {
		snprintf(why, whylen, "uhmm_open: %s", uhmm_strerror(ret));
		return ret;
	}
	t->mode = uhmm_fault_mode(t->h) == UHMM_FAULT_SIGNAL ? "signal" : "thread";
	UHMM_OPTS(uhmm_sim_opts, so, .npages = npages, .name = "bench-row");
	ret = uhmm_sim_create(t->h, &so, &t->sim);
	if (ret) {
		snprintf(why, whylen, "uhmm_sim_create: %s", uhmm_strerror(ret));
		uhmm_close(t->h);
		t->h = NULL;
		return ret;
	}
	t->dm = uhmm_sim_devmem(t->sim);
	return 0;
}

static void target_close(struct target *t)
{
	if (t->sim)
		uhmm_sim_destroy(t->sim);
	if (t->h)
		uhmm_close(t->h);
	memset(t, 0, sizeof(*t));
}

/* ---------------------------------------------------------------------------
 * a. Fault-back latency of one 4 KiB page vs the raw round trip of the same
 * mode: the raw userfaultfd's handler thread, or (@sig) the raw SIGBUS handler.
 * With @id_ord, the thread-mode median also against the raw round trip in the
 * kernel's order, which uhmm keeps: the page copied without waking the
 * toucher, then UFFDIO_WAKE once the fault is finished (the toucher, woken by
 * the copy, would run before the service thread has counted the page and let
 * go of it and of the device page). With @id_mech, also against the raw
 * round trip with every choice of mechanism uhmm makes: the page taken away
 * by UFFDIO_MOVE (as a migration out does, not by MADV_DONTNEED), the kernel's
 * order, and a third descriptor polled (uhmm's wake and kick eventfds): what
 * is left is uhmm's own code.
 */
static void bench_latency(struct bench *b, const struct target *t, bool sig, const char *id_med,
			  const char *id_p99, const char *id_ord, const char *id_mech)
{
	struct row *med = row_addm(b, id_med, "fault-back latency 4 KiB, median", t->mode, "us",
				   sig ? "raw SIGBUS handler + UFFDIO_COPY, median" :
					 "raw userfaultfd round trip, median");
	struct row *p99 = row_addm(b, id_p99, "fault-back latency 4 KiB, p99", t->mode, "us",
				   sig ? "raw SIGBUS handler + UFFDIO_COPY, p99" :
					 "raw userfaultfd round trip, p99");
	struct row *ord = id_ord ? row_addm(b, id_ord, "fault-back latency 4 KiB, median", t->mode,
					    "us", "raw round trip, COPY then WAKE (kernel's order)") :
				   NULL;
	struct row *mech = id_mech ? row_addm(b, id_mech, "fault-back latency 4 KiB, median",
					      t->mode, "us",
					      "raw, uhmm's mechanism: MOVE out, COPY+WAKE, 3 fds") :
				     NULL;
	int per = b->samples / b->reps, n = per * b->reps, nf = 0, nr = 0, no = 0, nm = 0, ret;
	double *fig = calloc((size_t)n, sizeof(double)), *flo = calloc((size_t)n, sizeof(double));
	double *flo_ord = calloc((size_t)n, sizeof(double)), *flo_mech = calloc((size_t)n, sizeof(double));
	char *mp = NULL, *rp = NULL, *stg = NULL, why[100];
	bool stg_registered = false;
	struct rawsig rs = { .uffd = -1 };
	bool registered = false;

	progress(b, sig ? "fault-back latency vs raw SIGBUS" :
			  "fault-back latency vs raw userfaultfd");
	if (!fig || !flo || !flo_ord || !flo_mech) {
		row_fail(med, "out of memory", NULL);
		goto out;
	}
	if (sig) {
		ret = rawsig_open(&rs, why, sizeof(why));
		if (ret) {
			row_fail(med, why, NULL);
			goto out;
		}
		rp = rs.page;
	} else {
		rp = map_anon(PAGE);
		if (!rp) {
			row_fail(med, "out of memory", NULL);
			goto out;
		}
		ret = raw_register(&b->raw, rp, PAGE);
		if (ret) {
			row_fail(med, "UFFDIO_REGISTER of the floor's page", strerror(-ret));
			goto out;
		}
		registered = true;
	}
	/* The mechanism's floor moves the page out into a page of its own, then frees it. */
	if (mech && !b->raw.move) {
		row_fail(mech, "this kernel has no UFFDIO_MOVE", NULL);
		mech = NULL;
	} else if (mech) {
		stg = map_anon(PAGE);
		ret = stg ? raw_register(&b->raw, stg, PAGE) : -ENOMEM;
		if (ret) {
			row_fail(mech, "UFFDIO_REGISTER of the floor's staging page", strerror(-ret));
			mech = NULL;
		} else {
			stg_registered = true;
		}
	}
	ret = uhmm_alloc(t->h, PAGE, (void **)&mp);
	if (ret) {
		row_fail(med, "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	memset(mp, 0x5a, PAGE);
	if (sig) {
		/* Does uhmm_sigbus_handler() leave a foreign userfaultfd's fault alone? */
		rawsig_own_first = 0;
		if ((ret = rawsig_install(&rs))) {
			row_fail(med, "sigaction", strerror(-ret));
			goto out;
		}
		madvise(rp, PAGE, MADV_DONTNEED);
		if (*(volatile char *)rp != 0x5a && !rs.err) {
			rawsig_own_first = 1;
			snprintf(med->note, sizeof(med->note),
				 "uhmm_sigbus_handler zero-filled the floor's page: "
				 "floor serves its own first");
			memcpy(p99->note, med->note, sizeof(p99->note));
		}
		rawsig_remove(&rs);
	}

	/* Blocks of floor and figure alternate, so that drift hits both alike. */
	for (int rep = 0; rep < b->reps; rep++) {
		/* The raw handler only around its block: uhmm's serves the figure. */
		if (sig && (ret = rawsig_install(&rs))) {
			row_fail(med, "sigaction", strerror(-ret));
			goto out;
		}
		/*
		 * The raw floor, then (@ord) the same with the handler in the
		 * kernel's order, then (@mech) with all of uhmm's mechanism.
		 */
		for (int pass = 0; pass < 3; pass++) {
			if ((pass == 1 && !ord) || (pass == 2 && !mech))
				continue;
			atomic_store(&b->raw.wake_after, pass >= 1);
			atomic_store(&b->raw.three_fds, pass == 2);
			for (int i = -WARMUP * !rep; i < per; i++) {
				/* Missing again: discarded, or (@mech) moved out and freed there. */
				if (pass < 2) {
					madvise(rp, PAGE, MADV_DONTNEED);
				} else if ((ret = raw_fill(&b->raw, true, stg, rp, PAGE)) &&
					   ret != -ENOENT) {
					row_fail(mech, "UFFDIO_MOVE", strerror(-ret));
					mech = NULL;
					break;
				} else {
					madvise(stg, PAGE, MADV_DONTNEED);
				}
				uint64_t t0 = now_ns();
				char c = *(volatile char *)rp;
				uint64_t t1 = now_ns();
				int err = sig ? rs.err : atomic_load(&b->raw.err);

				if (c != 0x5a || err) {
					if (sig)
						rawsig_remove(&rs);
					atomic_store(&b->raw.wake_after, false);
					atomic_store(&b->raw.three_fds, false);
					row_fail(med,
						 sig ? "the raw SIGBUS handler failed" :
						       "the raw userfaultfd handler failed",
						 err ? strerror(err) : "wrong data");
					goto out;
				}
				if (i >= 0 && pass == 2)
					flo_mech[nm++] = (double)(t1 - t0) * 1e-3;
				else if (i >= 0 && pass)
					flo_ord[no++] = (double)(t1 - t0) * 1e-3;
				else if (i >= 0)
					flo[nr++] = (double)(t1 - t0) * 1e-3;
			}
		}
		atomic_store(&b->raw.wake_after, false);
		atomic_store(&b->raw.three_fds, false);
		if (sig)
			rawsig_remove(&rs);
		for (int i = -WARMUP * !rep; i < per; i++) {
			ret = uhmm_migrate_to_device(t->dm, mp, PAGE);
			if (ret != 1) {
				row_fail_moved(med, "uhmm_migrate_to_device", ret);
				goto out;
			}
			uint64_t t0 = now_ns();
			char c = *(volatile char *)mp;
			uint64_t t1 = now_ns();

			if (c != 0x5a) {
				row_fail(med, "a page came home with wrong data", NULL);
				goto out;
			}
			if (i >= 0)
				fig[nf++] = (double)(t1 - t0) * 1e-3;
		}
	}
	med->value = quantile(fig, (size_t)nf, 0.5);
	med->floor_value = quantile(flo, (size_t)nr, 0.5);
	med->ratio = med->value / med->floor_value;
	p99->value = quantile(fig, (size_t)nf, 0.99);
	p99->floor_value = quantile(flo, (size_t)nr, 0.99);
	p99->ratio = p99->value / p99->floor_value;
	if (ord) {
		ord->value = med->value;
		ord->floor_value = quantile(flo_ord, (size_t)no, 0.5);
		ord->ratio = ord->value / ord->floor_value;
	}
	if (mech) {
		mech->value = med->value;
		mech->floor_value = quantile(flo_mech, (size_t)nm, 0.5);
		mech->ratio = mech->value / mech->floor_value;
	}
out:
	if (mp)
		uhmm_free(t->h, mp, PAGE);
	if (med->err[0])
		memcpy(p99->err, med->err, sizeof(p99->err));
	if (ord && med->err[0])
		memcpy(ord->err, med->err, sizeof(ord->err));
	if (mech && med->err[0])
		memcpy(mech->err, med->err, sizeof(mech->err));
	if (stg) {
		if (stg_registered)
			raw_unregister(&b->raw, stg, PAGE);
		munmap(stg, PAGE);
	}
	if (sig) {
		rawsig_close(&rs);
	} else if (rp) {
		if (registered)
			raw_unregister(&b->raw, rp, PAGE);
		munmap(rp, PAGE);
	}
	free(fig);
	free(flo);
	free(flo_ord);
	free(flo_mech);
}

/* ---------------------------------------------------------------------------
 * b. CPU sweeps over device-resident memory vs the kernel's first-touch fault,
 * and the sequential sweep vs the same sweep served by the raw userfaultfd (what
 * thread mode costs before uhmm adds anything) and vs UFFDIO_COPY of the same
 * bytes in 2 MiB calls (what bringing them home with 2 MiB moves cannot beat).
 * Also the first writes of fresh managed memory (zero fills) vs the kernel's
 * first touch of fresh memory.
 */
enum {
	SW_KSEQ,
	SW_FRESH,
	SW_SEQ,
	SW_RAW,
	SW_UC,
	SW_KRND,
	SW_RND,
	SW_N
};

static void bench_sweeps(struct bench *b)
{
	struct row *seq = row_addm(b, "sweep_sequential", "sequential sweep, device-resident",
				   b->mode, "GB/s", "kernel first-touch fault, sequential");
	struct row *raw = row_addm(b, "sweep_sequential_vs_raw",
				   "sequential sweep, device-resident", b->mode, "GB/s",
				   "raw userfaultfd sweep, 4 KiB COPY/fault");
	struct row *ucr = row_addm(b, "sweep_sequential_vs_uffdio_copy",
				   "sequential sweep, device-resident", b->mode, "GB/s",
				   "UFFDIO_COPY, 2 MiB calls, empty range");
	struct row *rnd = row_addm(b, "sweep_random", "random 4 KiB touches, device-resident",
				   b->mode, "GB/s", "kernel first-touch fault, random");
	struct row *fresh = row_addm(b, "first_writes_sequential", "first writes, fresh managed memory",
				     b->mode, "GB/s", "kernel first-touch fault, sequential");
	double *t = calloc(SW_N * (size_t)b->reps, sizeof(double));
	uint32_t *perm = permutation(b->npages);
	char *mp = NULL, *rp = map_anon(b->len), *usrc = map_anon(b->len);
	bool registered = false;
	int ret;

	progress(b, "CPU sweeps over device-resident memory");
	if (!t || !perm || !rp || !usrc) {
		row_fail(seq, "out of memory", NULL);
		goto out;
	}
	ret = raw_register(&b->raw, rp, b->len);
	if (ret) {
		row_fail(seq, "UFFDIO_REGISTER of the floor's range", strerror(-ret));
		goto out;
	}
	registered = true;
	ret = uhmm_alloc(b->h, b->len, (void **)&mp);
	if (ret) {
		row_fail(seq, "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	fill(mp, b->len, 1);
	fill(usrc, b->len, 1);

	for (int rep = 0; rep < b->reps; rep++) {
		for (int k = 0; k < SW_N; k++) {
			bool random = k >= SW_KRND;
			uint64_t t0, t1;
			char *p;

			switch (k) {
			case SW_KSEQ:
			case SW_KRND:
				p = map_anon(b->len);
				if (!p) {
					row_fail(seq, "mmap", strerror(errno));
					goto out;
				}
				t0 = now_ns();
				if (random)
					write_pages_perm(p, perm, b->npages);
				else
					write_pages(p, b->npages);
				t1 = now_ns();
				munmap(p, b->len);
				break;
			case SW_FRESH:
				ret = uhmm_alloc(b->h, b->len, (void **)&p);
				if (ret) {
					row_fail(seq, "uhmm_alloc", uhmm_strerror(ret));
					goto out;
				}
				t0 = now_ns();
				write_pages(p, b->npages);
				t1 = now_ns();
				uhmm_free(b->h, p, b->len);
				break;
			case SW_RAW:
				madvise(rp, b->len, MADV_DONTNEED); /* every page missing again */
				t0 = now_ns();
				sink += read_pages(rp, 0, b->npages);
				t1 = now_ns();
				if (atomic_load(&b->raw.err)) {
					row_fail(seq, "the raw userfaultfd handler failed",
						 strerror(atomic_load(&b->raw.err)));
					goto out;
				}
				break;
			case SW_UC:
				madvise(rp, b->len, MADV_DONTNEED);
				t0 = now_ns();
				ret = raw_fill(&b->raw, false, rp, usrc, b->len);
				t1 = now_ns();
				if (ret) {
					row_fail(seq, "UFFDIO_COPY", strerror(-ret));
					goto out;
				}
				break;
			default:
				ret = uhmm_migrate_to_device(b->dm, mp, b->len);
				if (ret != (int)b->npages) {
					row_fail_moved(seq, "uhmm_migrate_to_device", ret);
					goto out;
				}
				t0 = now_ns();
				sink += random ? read_pages_perm(mp, perm, b->npages) :
						 read_pages(mp, 0, b->npages);
				t1 = now_ns();
				break;
			}
			t[k * b->reps + rep] = (double)(t1 - t0) * 1e-9;
		}
	}
#define SW(k) (t + (k)*b->reps)
	row_times(seq, SW(SW_SEQ), SW(SW_KSEQ), b->reps, (double)b->len * 1e-9, true);
	row_times(raw, SW(SW_SEQ), SW(SW_RAW), b->reps, (double)b->len * 1e-9, true);
	row_times(ucr, SW(SW_SEQ), SW(SW_UC), b->reps, (double)b->len * 1e-9, true);
	row_times(rnd, SW(SW_RND), SW(SW_KRND), b->reps, (double)b->len * 1e-9, true);
	row_times(fresh, SW(SW_FRESH), SW(SW_KSEQ), b->reps, (double)b->len * 1e-9, true);
#undef SW
out:
	if (seq->err[0]) {
		memcpy(raw->err, seq->err, sizeof(seq->err));
		memcpy(ucr->err, seq->err, sizeof(seq->err));
		memcpy(rnd->err, seq->err, sizeof(seq->err));
		memcpy(fresh->err, seq->err, sizeof(seq->err));
	}
	if (mp)
		uhmm_free(b->h, mp, b->len);
	if (registered)
		raw_unregister(&b->raw, rp, b->len);
	if (rp)
		munmap(rp, b->len);
	if (usrc)
		munmap(usrc, b->len);
	free(perm);
	free(t);
}

/* ---------------------------------------------------------------------------
 * c. Bulk migration, both ways, vs memcpy and the least work each way needs.
 */
static void bench_bulk(struct bench *b)
{
	struct row *out_cp =
		row_add(b, "migrate_to_device_vs_memcpy", "migrate to device", "GB/s", "memcpy");
	struct row *out_dn = row_add(b, "migrate_to_device_vs_memcpy_dontneed", "migrate to device",
				     "GB/s", "memcpy + one MADV_DONTNEED of the source");
	struct row *out_mv =
		row_add(b, "migrate_to_device_vs_move_memcpy_dontneed", "migrate to device", "GB/s",
			"UFFDIO_MOVE out + memcpy + one MADV_DONTNEED");
	struct row *home_cp =
		row_add(b, "migrate_to_ram_vs_memcpy", "migrate home (to RAM)", "GB/s", "memcpy");
	struct row *home_uc = row_add(b, "migrate_to_ram_vs_uffdio_copy", "migrate home (to RAM)",
				      "GB/s", "UFFDIO_COPY, 2 MiB calls, empty range");
	UHMM_OPTS(uhmm_sim_opts, so, .npages = b->bulk_len / PAGE, .name = "bench-bulk");
	struct uhmm_sim *sim = NULL;
	struct uhmm_devmem *dm;
	size_t len = b->bulk_len, npages = len / PAGE;
	int reps = b->reps, ret;
	double *t = calloc(6 * (size_t)reps, sizeof(double));
	double *t_out = t, *t_home = t + reps, *t_cp = t + 2 * reps, *t_cpdn = t + 3 * reps,
	       *t_uc = t + 4 * reps, *t_mv = t + 5 * reps;
	char *mp = NULL, *src = map_anon(len), *dst = map_anon(len), *reg = map_anon(len);
	bool registered = false;

	progress(b, "bulk migration vs memcpy");
	if (!t || !src || !dst || !reg) {
		row_fail(out_cp, "out of memory", NULL);
		goto out;
	}
	/* A device of its own, as large as what moves (1 GiB by default). */
	ret = uhmm_sim_create(b->h, &so, &sim);
	if (ret) {
		row_fail(out_cp, "uhmm_sim_create", uhmm_strerror(ret));
		goto out;
	}
	dm = uhmm_sim_devmem(sim);
	ret = raw_register(&b->raw, reg, len);
	if (ret) {
		row_fail(out_cp, "UFFDIO_REGISTER of the floor's range", strerror(-ret));
		goto out;
	}
	registered = true;
	ret = uhmm_alloc(b->h, len, (void **)&mp);
	if (ret) {
		row_fail(out_cp, "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	fill(mp, len, 2);
	fill(src, len, 2);
	memset(dst, 0, len); /* the destination of every memcpy exists already */
	/* So does the device's memory: its first use faults the sim's pool in. */
	ret = uhmm_migrate_to_device(dm, mp, len);
	if (ret == (int)npages)
		ret = uhmm_migrate_to_ram(b->h, mp, len);
	if (ret != (int)npages) {
		row_fail_moved(out_cp, "uhmm_migrate_to_device", ret);
		goto out;
	}

	for (int rep = 0; rep < reps; rep++) {
		uint64_t t0, t1, t2;

		/*
		 * Each figure and floor runs twice and is timed the second
		 * time, so that each starts from memory it touched a moment
		 * before. On this machine memory left alone for a second
		 * reads and writes at half the speed (a 1 GiB memcpy after a
		 * pause of 0 ms: 9.1 GB/s; 1 s: 5.7; 3 s: 3.9; its reads 11.3,
		 * 6.3, 4.3): run once, uhmm's copy into the device's memory,
		 * last written a rep ago, paid that, while each floor wrote
		 * into what the floor before it had just written.
		 */
		for (int pass = 0; pass < 2; pass++) {
			t0 = now_ns();
			memcpy(dst, src, len);
			t1 = now_ns();
			t_cp[rep] = (double)(t1 - t0) * 1e-9;
		}

		for (int pass = 0; pass < 2; pass++) {
			t0 = now_ns();
			memcpy(dst, src, len);
			madvise(src, len, MADV_DONTNEED);
			t1 = now_ns();
			t_cpdn[rep] = (double)(t1 - t0) * 1e-9;
			fill(src, len, 2);
		}

		/*
		 * What a migration that takes the pages from the CPU by moving
		 * them (as uhmm does: a toucher then waits, none writes into a
		 * page being copied) cannot avoid: the move, the copy out of
		 * the moved pages, freeing them.
		 */
		for (int pass = 0; pass < 2 && b->raw.move; pass++) {
			madvise(reg, len, MADV_DONTNEED); /* empty: the UFFDIO_COPY floor filled it */
			t0 = now_ns();
			ret = raw_fill(&b->raw, true, reg, src, len);
			memcpy(dst, reg, len);
			madvise(reg, len, MADV_DONTNEED);
			t1 = now_ns();
			if (ret) {
				row_fail(out_mv, "UFFDIO_MOVE", strerror(-ret));
				b->raw.move = false;
			}
			t_mv[rep] = (double)(t1 - t0) * 1e-9;
			fill(src, len, 2);
		}

		for (int pass = 0; pass < 2; pass++) {
			t0 = now_ns();
			ret = uhmm_migrate_to_device(dm, mp, len);
			t1 = now_ns();
			if (ret != (int)npages) {
				row_fail_moved(out_cp, "uhmm_migrate_to_device", ret);
				goto out;
			}
			ret = uhmm_migrate_to_ram(b->h, mp, len);
			t2 = now_ns();
			if (ret != (int)npages) {
				row_fail_moved(out_cp, "uhmm_migrate_to_ram", ret);
				goto out;
			}
			t_out[rep] = (double)(t1 - t0) * 1e-9;
			t_home[rep] = (double)(t2 - t1) * 1e-9;
		}

		/*
		 * Empty again, and filled once untimed first: this guest hands
		 * freed memory back to its host (free page reporting), and a
		 * floor that allocates memory freed a while ago pays the host's
		 * faults (0.8-1.2 GB/s here once uhmm's way home stopped
		 * allocating). Memory just freed is the floor's steady state.
		 */
		madvise(reg, len, MADV_DONTNEED);
		ret = raw_fill(&b->raw, false, reg, src, len);
		madvise(reg, len, MADV_DONTNEED);
		if (ret) {
			row_fail(out_cp, "UFFDIO_COPY", strerror(-ret));
			goto out;
		}
		t0 = now_ns();
		ret = raw_fill(&b->raw, false, reg, src, len);
		t1 = now_ns();
		if (ret) {
			row_fail(out_cp, "UFFDIO_COPY", strerror(-ret));
			goto out;
		}
		t_uc[rep] = (double)(t1 - t0) * 1e-9;
	}
	if (memcmp(mp, src, len) || memcmp(reg, src, len)) {
		row_fail(out_cp, "data changed on the way", NULL);
		goto out;
	}
	row_times(out_cp, t_out, t_cp, reps, (double)len * 1e-9, true);
	row_times(out_dn, t_out, t_cpdn, reps, (double)len * 1e-9, true);
	if (b->raw.move)
		row_times(out_mv, t_out, t_mv, reps, (double)len * 1e-9, true);
	else if (!out_mv->err[0])
		row_fail(out_mv, "this kernel has no UFFDIO_MOVE", NULL);
	row_times(home_cp, t_home, t_cp, reps, (double)len * 1e-9, true);
	row_times(home_uc, t_home, t_uc, reps, (double)len * 1e-9, true);
out:
	if (out_cp->err[0]) {
		memcpy(out_dn->err, out_cp->err, sizeof(out_cp->err));
		memcpy(out_mv->err, out_cp->err, sizeof(out_cp->err));
		memcpy(home_cp->err, out_cp->err, sizeof(out_cp->err));
		memcpy(home_uc->err, out_cp->err, sizeof(out_cp->err));
	}
	if (mp)
		uhmm_free(b->h, mp, len);
	if (sim)
		uhmm_sim_destroy(sim);
	if (registered)
		raw_unregister(&b->raw, reg, len);
	if (reg)
		munmap(reg, len);
	if (dst)
		munmap(dst, len);
	if (src)
		munmap(src, len);
	free(t);
}

/* ---------------------------------------------------------------------------
 * d. Fault-back throughput: 2 toucher threads each sweeping half vs 1 sweeping all.
 */
struct toucher {
	const char *p;
	size_t first, n;
	pthread_barrier_t *go;
	uint64_t sum;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	pthread_barrier_wait(t->go);
	t->sum = read_pages(t->p, t->first, t->n);
	return NULL;
}

/* Sweep @npages of @p with @n (1 or 2) threads, each its share; return the seconds. */
static double sweep_threads(const char *p, size_t npages, int n)
{
	struct toucher t[2];
	pthread_t thr[2];
	pthread_barrier_t go;
	uint64_t t0, t1;
	int i, err = 0;

	pthread_barrier_init(&go, NULL, (unsigned int)n + 1);
	for (i = 0; i < n; i++) {
		t[i] = (struct toucher){ .p = p,
					 .first = npages * (size_t)i / (size_t)n,
					 .n = npages / (size_t)n,
					 .go = &go };
		if (i == n - 1)
			t[i].n = npages - t[i].first;
		err = pthread_create(&thr[i], NULL, toucher_main, &t[i]);
		if (err)
			break;
	}
	if (err) {
		/* The started threads wait at the barrier forever: nothing safe to do. */
		fprintf(stderr, "uhmm bench: pthread_create: %s\n", strerror(err));
		exit(1);
	}
	pthread_barrier_wait(&go);
	t0 = now_ns();
	for (i = 0; i < n; i++) {
		pthread_join(thr[i], NULL);
		sink += t[i].sum;
	}
	t1 = now_ns();
	pthread_barrier_destroy(&go);
	return (double)(t1 - t0) * 1e-9;
}

static void bench_threads(struct bench *b, const struct target *tg, const char *id)
{
	struct row *r = row_addm(b, id,
				 b->pinned ? "fault-back, 2 threads x half, all CPUs" :
					     "fault-back, 2 threads x half",
				 tg->mode, "pages/s",
				 b->pinned ? "fault-back, 1 thread x all, one CPU" :
					     "fault-back, 1 thread x all");
	double *t = calloc(2 * (size_t)b->reps, sizeof(double));
	char *mp = NULL;
	int ret;

	progress(b, "fault-back with 1 and 2 toucher threads");
	if (!t) {
		row_fail(r, "out of memory", NULL);
		return;
	}
	ret = uhmm_alloc(tg->h, b->len, (void **)&mp);
	if (ret) {
		row_fail(r, "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	fill(mp, b->len, 3);
	for (int rep = 0; rep < b->reps; rep++) {
		for (int k = 0; k < 2; k++) {
			int nthr = (k ^ rep) & 1 ? 2 : 1; /* alternate which goes first */

			ret = uhmm_migrate_to_device(tg->dm, mp, b->len);
			if (ret != (int)b->npages) {
				row_fail_moved(r, "uhmm_migrate_to_device", ret);
				goto out_free;
			}
			/* Two touchers get every CPU; the service thread may follow them. */
			if (b->pinned && nthr == 2)
				affinity_all(&b->all);
			t[(nthr - 1) * b->reps + rep] = sweep_threads(mp, b->npages, nthr);
			if (b->pinned && nthr == 2)
				affinity_all(&b->one);
		}
	}
	row_times(r, t + b->reps, t, b->reps, (double)b->npages, true);
out_free:
	uhmm_free(tg->h, mp, b->len);
out:
	free(t);
}

/* A histogram of the low bytes: what the stencil figures read of their output. */
static void histogram(const uint64_t *w, size_t n, uint64_t hist[256])
{
	memset(hist, 0, 256 * sizeof(hist[0]));
	for (size_t i = 0; i < n; i++)
		hist[w[i] & 255]++;
}

/* ---------------------------------------------------------------------------
 * Signal mode beside thread mode: the fault-back latency of a signal-mode handle
 * vs the raw SIGBUS floor, and its 2-toucher figure; in a signal-mode run, also
 * a thread-mode handle vs the raw userfaultfd round trip and its 2-toucher figure.
 */
static void bench_other_mode(struct bench *b)
{
	bool run_sig = !strcmp(b->mode, "signal");
	struct target o = { 0 };
	const struct target *sig = &b->run;
	char why[100];
	int ret = 0;

	/* The other mode's handle: where it cannot open, its rows say why. */
	ret = target_open(b, &o, run_sig ? UHMM_FAULT_THREAD : UHMM_FAULT_SIGNAL, 0,
			  b->npages + 64, why, sizeof(why));
	if (!run_sig)
		sig = &o;
	if (ret) {
		struct row *r[3];
		const char *m = run_sig ? "thread" : "signal";

		progress(b, "the other fault mode");
		progress(b, "the other fault mode");
		if (run_sig) {
			bench_latency(b, &b->run, true, "fault_latency_signal_median",
				      "fault_latency_signal_p99", NULL, NULL);
			r[0] = row_addm(b, "fault_latency_thread_median",
					"fault-back latency 4 KiB, median", m, "us",
					"raw userfaultfd round trip, median");
			r[1] = row_addm(b, "fault_latency_thread_p99", "fault-back latency 4 KiB, p99",
					m, "us", "raw userfaultfd round trip, p99");
			r[2] = row_addm(b, "fault_back_2_threads_thread",
					"fault-back, 2 threads x half", m, "pages/s",
					"fault-back, 1 thread x all");
		} else {
			progress(b, "the other fault mode");
			r[0] = row_addm(b, "fault_latency_signal_median",
					"fault-back latency 4 KiB, median", m, "us",
					"raw SIGBUS handler + UFFDIO_COPY, median");
			r[1] = row_addm(b, "fault_latency_signal_p99", "fault-back latency 4 KiB, p99",
					m, "us", "raw SIGBUS handler + UFFDIO_COPY, p99");
			r[2] = row_addm(b, "fault_back_2_threads_signal",
					"fault-back, 2 threads x half", m, "pages/s",
					"fault-back, 1 thread x all");
		}
		/* A kernel without SIGBUS faults is not a failed measurement. */
		for (int i = 0; i < 3; i++) {
			if (ret == -EOPNOTSUPP)
				r[i]->na = "the kernel lacks UFFD_FEATURE_SIGBUS";
			else
				row_fail(r[i], why, NULL);
		}
		return;
	}
	bench_latency(b, sig, true, "fault_latency_signal_median", "fault_latency_signal_p99",
		      NULL, NULL);
	bench_threads(b, sig, "fault_back_2_threads_signal");
	if (run_sig) {
		bench_latency(b, &o, false, "fault_latency_thread_median",
			      "fault_latency_thread_p99", "fault_latency_thread_median_vs_ordered",
			      "fault_latency_thread_median_vs_mechanism");
		bench_threads(b, &o, "fault_back_2_threads_thread");
	} else {
		progress(b, "the other fault mode");
		progress(b, "the other fault mode");
	}
	target_close(&o);
}

/* ---------------------------------------------------------------------------
 * h. Metadata: fault-back latency with 16 GiB managed vs 16 MiB managed (the
 * state words of a large range must not make a fault slower), and the memory
 * that managing 1 TiB adds while it is untouched.
 */
#define META_BIG (16ULL << 30)
#define META_SMALL (16ULL << 20)
#define META_HUGE (1ULL << 40)

/* Resident and mapped bytes of this process (/proc/self/statm), or -1s. */
static void statm_bytes(long long *resident, long long *size)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long long sz = -1, rs = -1;

	if (f) {
		if (fscanf(f, "%lld %lld", &sz, &rs) != 2)
			sz = rs = -1;
		fclose(f);
	}
	*size = sz < 0 ? -1 : sz * (long long)PAGE;
	*resident = rs < 0 ? -1 : rs * (long long)PAGE;
}

/* Sample @i's page: spread over the whole range, a different page of state words each time. */
static volatile char *meta_page(char *base, size_t npages, unsigned long i)
{
	return base + ((i * 2654435761UL) % npages) * PAGE;
}

/* One timed fault-back of page @i of @base (@npages): write, migrate, touch. */
static int meta_sample(struct bench *b, char *base, size_t npages, unsigned long i, double *us)
{
	volatile char *p = meta_page(base, npages, i);
	char want = (char)(i | 1);
	uint64_t t0, t1;
	int ret;

	*p = want;
	ret = uhmm_migrate_to_device(b->dm, (void *)p, PAGE);
	if (ret != 1)
		return ret < 0 ? ret : -EAGAIN;
	t0 = now_ns();
	char c = *p;
	t1 = now_ns();
	*us = (double)(t1 - t0) * 1e-3;
	return c == want ? 0 : -EIO;
}

static void bench_metadata(struct bench *b)
{
	struct row *lat = row_addm(b, "fault_latency_16gib_vs_16mib",
				   "fault-back latency 4 KiB, median, 16 GiB managed", b->mode, "us",
				   "the same, 16 MiB managed");
	struct row *res = row_add(b, "metadata_1tib_untouched",
				  "resident memory added by managing 1 TiB, untouched", "KiB",
				  "the target's limit, 4 MiB (ratio: the share of it)");
	int per = b->samples / b->reps, n = per * b->reps, nb = 0, ns = 0, ret = 0;
	double *big_t = calloc((size_t)n, sizeof(double)), *small_t = calloc((size_t)n, sizeof(double));
	char *big = mmap(NULL, META_BIG, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *small = map_anon(META_SMALL), *huge = NULL;
	bool big_in = false, small_in = false, huge_in = false;
	long long rss0, rss1, vsz0, vsz1;

	progress(b, "metadata: 16 GiB vs 16 MiB managed, 1 TiB untouched");
	if (!big_t || !small_t || !small) {
		row_fail(lat, "out of memory", NULL);
		goto resident;
	}
	if (big == MAP_FAILED) {
		/* Address space is the machine's to give (overcommit rules): not a failure. */
		lat->na = "cannot map 16 GiB of address space here";
		goto resident;
	}
	madvise(big, META_BIG, MADV_NOHUGEPAGE);
	ret = uhmm_manage(b->h, big, META_BIG);
	big_in = !ret;
	if (!ret)
		ret = uhmm_manage(b->h, small, META_SMALL);
	small_in = big_in && !ret;
	if (ret) {
		row_fail(lat, "uhmm_manage", uhmm_strerror(ret));
		goto resident;
	}
	/*
	 * Every page the samples use, present first, with its page table:
	 * sampled fresh, each page of the 16 GiB took a page and a page table
	 * from the kernel that the 16 MiB (4096 pages, reused) did not, and
	 * the allocator's slow path made a signal-mode fault 1.27-1.32 times
	 * as long (20000 samples; 1.01 with the pages present).
	 */
	for (unsigned long k = 0; k < (unsigned long)(n + WARMUP); k++) {
		meta_page(small, META_SMALL / PAGE, k)[0] = 1;
		meta_page(big, META_BIG / PAGE, k)[0] = 1;
	}
	/* Blocks of floor and figure alternate, so that drift hits both alike. */
	for (int rep = 0; rep < b->reps && !ret; rep++) {
		for (int i = -WARMUP * !rep; i < per && !ret; i++) {
			unsigned long k = (unsigned long)(rep * per + i + WARMUP);
			double us;

			ret = meta_sample(b, small, META_SMALL / PAGE, k, &us);
			if (!ret && i >= 0)
				small_t[ns++] = us;
			if (!ret)
				ret = meta_sample(b, big, META_BIG / PAGE, k, &us);
			if (!ret && i >= 0)
				big_t[nb++] = us;
		}
	}
	if (ret) {
		row_fail(lat, ret == -EIO ? "a page came home with wrong data" : "uhmm_migrate_to_device",
			 ret == -EIO ? NULL : uhmm_strerror(ret));
		goto resident;
	}
	lat->value = quantile(big_t, (size_t)nb, 0.5);
	lat->floor_value = quantile(small_t, (size_t)ns, 0.5);
	lat->ratio = lat->value / lat->floor_value;

resident:
	/* Managing 1 TiB of untouched memory: the state words are reserved, not resident. */
	huge = mmap(NULL, META_HUGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (huge == MAP_FAILED) {
		huge = NULL;
		res->na = "cannot map 1 TiB of address space here";
		goto out;
	}
	statm_bytes(&rss0, &vsz0);
	ret = uhmm_manage(b->h, huge, META_HUGE);
	statm_bytes(&rss1, &vsz1);
	huge_in = !ret;
	if (ret) {
		row_fail(res, "uhmm_manage of 1 TiB", uhmm_strerror(ret));
		goto out;
	}
	if (rss0 < 0 || rss1 < 0) {
		res->na = "/proc/self/statm cannot be read";
		goto out;
	}
	res->value = (double)(rss1 - rss0) / 1024;
	res->floor_value = 4096;
	res->ratio = res->value / res->floor_value;
	snprintf(res->note, sizeof(res->note),
		 "address space reserved for metadata: %.1f bytes per managed 4 KiB page",
		 (double)(vsz1 - vsz0) / (double)(META_HUGE / PAGE));
out:
	if (huge_in)
		uhmm_unmanage(b->h, huge, META_HUGE);
	if (huge)
		munmap(huge, META_HUGE);
	if (big_in)
		uhmm_unmanage(b->h, big, META_BIG);
	if (small_in)
		uhmm_unmanage(b->h, small, META_SMALL);
	if (big != MAP_FAILED)
		munmap(big, META_BIG);
	if (small)
		munmap(small, META_SMALL);
	free(big_t);
	free(small_t);
}

/* ---------------------------------------------------------------------------
 * f. Prefetch must not hurt random access: random 4 KiB touches over
 * device-resident memory with the default fault window vs the same with the
 * fault window at 1 page (fault-around off), per touch.
 */
#define WINDOW_BLOCK 1024 /* touches per turn */

static void bench_window(struct bench *b)
{
	struct row *r = row_addm(b, "random_touch_fault_window", "random 4 KiB touch, default window",
				 b->mode, "us", "the same, fault window 1 (fault-around off)");
	double *t = calloc(2 * (size_t)b->reps, sizeof(double));
	uint32_t *perm = permutation(b->npages);
	struct target def = { 0 }, one = { 0 };
	char *mp = NULL, *op = NULL, why[100];
	int ret;

	progress(b, "random touches: default fault window vs 1 page");
	if (!t || !perm) {
		row_fail(r, "out of memory", NULL);
		goto out;
	}
	/* Two fresh handles in the run's mode, alike but for the window. */
	ret = target_open(b, &def, UHMM_FAULT_AUTO, 0, b->npages + 64, why, sizeof(why));
	if (!ret)
		ret = target_open(b, &one, UHMM_FAULT_AUTO, 1, b->npages + 64, why, sizeof(why));
	if (ret) {
		row_fail(r, why, NULL);
		goto out;
	}
	ret = uhmm_alloc(def.h, b->len, (void **)&mp);
	if (!ret)
		ret = uhmm_alloc(one.h, b->len, (void **)&op);
	if (ret) {
		row_fail(r, "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	fill(mp, b->len, 4);
	fill(op, b->len, 4);
	for (int rep = 0; rep < b->reps; rep++) {
		ret = uhmm_migrate_to_device(def.dm, mp, b->len);
		if (ret == (int)b->npages)
			ret = uhmm_migrate_to_device(one.dm, op, b->len);
		if (ret != (int)b->npages) {
			row_fail_moved(r, "uhmm_migrate_to_device", ret);
			goto out;
		}
		/*
		 * The two take turns every WINDOW_BLOCK touches, so that a slow
		 * moment of this machine (seconds, at times) falls on both:
		 * taking turns a whole run at a time, the ratio of medians of 5
		 * runs spread over 0.89-1.49 in ten runs here.
		 */
		t[rep] = t[b->reps + rep] = 0;
		for (size_t off = 0; off < b->npages; off += WINDOW_BLOCK) {
			size_t n = b->npages - off < WINDOW_BLOCK ? b->npages - off : WINDOW_BLOCK;

			for (int k = 0; k < 2; k++) {
				bool win1 = (k ^ (off / WINDOW_BLOCK)) & 1; /* alternate which goes first */
				uint64_t t0 = now_ns();

				sink += read_pages_perm(win1 ? op : mp, perm + off, n);
				t[win1 * b->reps + rep] += (double)(now_ns() - t0) * 1e-9;
			}
		}
	}
	if (memcmp(mp, op, b->len)) {
		row_fail(r, "data changed on the way", NULL);
		goto out;
	}
	row_times(r, t, t + b->reps, b->reps, 1e6 / (double)b->npages, false);
out:
	if (op)
		uhmm_free(one.h, op, b->len);
	if (mp)
		uhmm_free(def.h, mp, b->len);
	target_close(&one);
	target_close(&def);
	free(perm);
	free(t);
}

/* ---------------------------------------------------------------------------
 * g. A device kernel streaming over device-resident data vs memcpy on the CPU.
 */
struct kcopy {
	char *dst;
	const char *src;
	size_t block; /* bytes per index */
};

/* A block per index, from one device-resident buffer to the other. */
static void k_copy(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kcopy *k = arg;

	uhmm_sim_memcpy(ctx, k->dst + i * k->block, k->src + i * k->block, k->block);
}

/* The kernel's body on the CPU, without translation: through a pointer, so no compiler fuses the pieces. */
static void *(*volatile cpu_piece)(void *, const void *, size_t) = memcpy;

/*
 * @block bytes per index: a page (each call translates, holds and fences
 * once for one page), or 64 KiB, as a kernel streaming by blocks copies
 * (the sim translates and copies several pages per slot and fence). Two
 * floors: one memcpy of the whole, the least any copy costs, and memcpy in
 * @block pieces, the same kernel with nothing to translate: what the
 * translation costs (a kernel copying a page per index cannot stream as
 * one large memcpy does, translated or not).
 */
static void bench_kernel(struct bench *b, size_t block)
{
	struct row *r = block == PAGE ?
		row_add(b, "device_kernel_stream", "device kernel copy, 4 KiB per index",
			"GB/s", "memcpy on the CPU") :
		row_add(b, "device_kernel_stream_64k", "device kernel copy, 64 KiB per index",
			"GB/s", "memcpy on the CPU");
	struct row *rp = block == PAGE ?
		row_add(b, "device_kernel_stream_vs_pieces", "device kernel copy, 4 KiB per index",
			"GB/s", "memcpy in 4 KiB pieces on the CPU") :
		row_add(b, "device_kernel_stream_64k_vs_pieces",
			"device kernel copy, 64 KiB per index", "GB/s",
			"memcpy in 64 KiB pieces on the CPU");
	struct uhmm_sim_stats s0 = { .sz = sizeof(s0) }, s1 = { .sz = sizeof(s1) };
	double *t = calloc(3 * (size_t)b->reps, sizeof(double));
	char *src = NULL, *dst = NULL, *csrc = map_anon(b->len), *cdst = map_anon(b->len);
	int ret;

	progress(b, "device kernel streaming vs memcpy");
	if (!t || !csrc || !cdst) {
		row_fail(r, "out of memory", NULL);
		goto out;
	}
	ret = uhmm_alloc(b->h, b->len, (void **)&src);
	if (!ret)
		ret = uhmm_alloc(b->h, b->len, (void **)&dst);
	if (ret) {
		row_fail(r, "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	fill(src, b->len, 5);
	fill(csrc, b->len, 5);
	memset(dst, 0, b->len);
	memset(cdst, 0, b->len); /* the destination of every memcpy exists already */
	ret = uhmm_migrate_to_device(b->dm, src, b->len);
	if (ret == (int)b->npages)
		ret = uhmm_migrate_to_device(b->dm, dst, b->len);
	if (ret != (int)b->npages) {
		row_fail_moved(r, "uhmm_migrate_to_device", ret);
		goto out;
	}
	uhmm_sim_stats(b->sim, &s0);
	for (int rep = 0; rep < b->reps; rep++) {
		struct kcopy k = { .dst = dst, .src = src, .block = block };
		uint64_t t0, t1, t2, t3;

		t0 = now_ns();
		ret = uhmm_sim_launch(b->sim, k_copy, b->len / block, &k);
		t1 = now_ns();
		if (ret) {
			row_fail(r, "uhmm_sim_launch", uhmm_strerror(ret));
			goto out;
		}
		memcpy(cdst, csrc, b->len);
		t2 = now_ns();
		for (size_t off = 0; off < b->len; off += block)
			cpu_piece(cdst + off, csrc + off, block);
		t3 = now_ns();
		t[rep] = (double)(t1 - t0) * 1e-9;
		t[b->reps + rep] = (double)(t2 - t1) * 1e-9;
		t[2 * b->reps + rep] = (double)(t3 - t2) * 1e-9;
	}
	uhmm_sim_stats(b->sim, &s1);
	/* Read back last (every page comes home): the kernel copied the right bytes. */
	if (memcmp(dst, csrc, b->len)) {
		row_fail(r, "the kernel's copy differs", NULL);
		goto out;
	}
	row_times(r, t, t + b->reps, b->reps, (double)b->len * 1e-9, true);
	row_times(rp, t, t + 2 * b->reps, b->reps, (double)b->len * 1e-9, true);
	snprintf(r->note, sizeof(r->note), "%llu device faults in %d launches, 2 device threads",
		 (unsigned long long)(s1.device_faults - s0.device_faults), b->reps);
out:
	if (r->err[0])
		memcpy(rp->err, r->err, sizeof(r->err));
	if (dst)
		uhmm_free(b->h, dst, b->len);
	if (src)
		uhmm_free(b->h, src, b->len);
	if (cdst)
		munmap(cdst, b->len);
	if (csrc)
		munmap(csrc, b->len);
	free(t);
}

/* ---------------------------------------------------------------------------
 * e, h. The demo's workload (the CPU fills the input, device kernels compute a
 * stencil, the CPU reads the output): with device memory for input and output,
 * on demand and with the input prefetched; then oversubscribed, device memory
 * the size of one array (half the working set), evicting LRU, evicting FIFO,
 * LRU with the input prefetched, and LRU with the input READ_MOSTLY. Each vs
 * the same computation with explicit copies (memcpy in, the kernel on the CPU,
 * memcpy out).
 */

/* The demo's workload, defined in tools/uhmm.c: keep these in step with it. */
void demo_fill(uint64_t *in, size_t n);
int demo_launch(struct uhmm_sim *sim, const uint64_t *in, uint64_t *out, size_t n);
void demo_stencil_cpu(const uint64_t *in, uint64_t *out, size_t n);
size_t demo_check(const uint64_t *in, const uint64_t *out, size_t n);

enum { ST_FIT, ST_FIT_PREFETCH, OV_LRU, OV_FIFO, OV_PREFETCH, OV_ADVICE, OV_N };

static void bench_oversub(struct bench *b)
{
	static const char *const id[OV_N] = { "demo_stencil", "demo_stencil_prefetch",
					      "oversub_stencil_lru", "oversub_stencil_fifo",
					      "oversub_stencil_lru_prefetch",
					      "oversub_stencil_lru_read_mostly" };
	static const char *const fig[OV_N] = {
		"demo: stencil on device kernels, on demand",
		"demo: stencil on device kernels, input prefetched",
		"stencil, device = 1/2 working set, LRU",
		"stencil, device = 1/2 working set, FIFO",
		"stencil, device = 1/2 working set, LRU + prefetch",
		"stencil, device = 1/2 working set, LRU + input READ_MOSTLY",
	};
	size_t n = b->len / sizeof(uint64_t);
	struct row *r[OV_N];
	double *t = calloc(2 * (size_t)b->reps, sizeof(double));
	uint64_t *in = NULL, *out = NULL, hist[256], want[256];
	uint64_t *h_in = map_anon(b->len), *h_out = map_anon(b->len), *d_in = map_anon(b->len),
		 *d_out = map_anon(b->len);
	int ret, v;

	for (v = 0; v < OV_N; v++)
		r[v] = row_addm(b, id[v], fig[v], b->mode, "ms",
				"explicit copies: memcpy in, CPU stencil, memcpy out");
	progress(b, "the demo's stencil vs explicit copies");
	if (!t || !h_in || !h_out || !d_in || !d_out) {
		row_fail(r[0], "out of memory", NULL);
		goto out;
	}
	ret = uhmm_alloc(b->h, b->len, (void **)&in);
	if (!ret)
		ret = uhmm_alloc(b->h, b->len, (void **)&out);
	if (ret) {
		row_fail(r[0], "uhmm_alloc", uhmm_strerror(ret));
		goto out;
	}
	demo_fill(in, n);
	memcpy(h_in, in, b->len);
	memset(h_out, 0, b->len); /* every plain buffer exists before it is timed */
	memset(d_in, 0, b->len);
	memset(d_out, 0, b->len);
	demo_stencil_cpu(h_in, d_out, n);
	histogram(d_out, n, want);

	for (v = 0; v < OV_N; v++) {
		/* The demo's own case: the device holds input and output. */
		bool fit = v == ST_FIT || v == ST_FIT_PREFETCH;
		UHMM_OPTS(uhmm_sim_opts, so, .npages = fit ? 2 * b->npages : b->npages,
			  .name = "bench-stencil");
		struct uhmm_devmem_stats d0 = { .sz = sizeof(d0) }, d1 = { .sz = sizeof(d1) };
		struct uhmm_sim_stats s0 = { .sz = sizeof(s0) }, s1 = { .sz = sizeof(s1) };
		/* Per range (uhmm_range_stats): the input's and the output's pages each way. */
		struct uhmm_range_stats ri0 = { .sz = sizeof(ri0) }, ri1 = { .sz = sizeof(ri1) },
					ro0 = { .sz = sizeof(ro0) }, ro1 = { .sz = sizeof(ro1) };
		struct uhmm_sim *sim = NULL;
		struct uhmm_devmem *dm;

		ret = uhmm_sim_create(b->h, &so, &sim);
		if (ret) {
			row_fail(r[v], "uhmm_sim_create", uhmm_strerror(ret));
			continue;
		}
		dm = uhmm_sim_devmem(sim);
		ret = fit ? 0 : uhmm_devmem_set_evict(dm, v == OV_FIFO ? &uhmm_evict_fifo : &uhmm_evict_lru);
		if (ret) {
			row_fail(r[v], "uhmm_devmem_set_evict", uhmm_strerror(ret));
			uhmm_sim_destroy(sim);
			continue;
		}
		/* Advice: the device reads the input where it is; only the output moves. */
		if (v == OV_ADVICE)
			uhmm_advise(b->h, in, b->len, UHMM_ADVISE_SET_READ_MOSTLY, NULL);
		uhmm_range_stats(b->h, in, &ri0);
		uhmm_range_stats(b->h, out, &ro0);
		uhmm_devmem_stats(dm, &d0);
		uhmm_sim_stats(sim, &s0);
		for (int rep = 0; rep < b->reps; rep++) {
			uint64_t t0, t1, t2;

			/* Every page home again, untimed: each run starts from the CPU. */
			uhmm_migrate_to_ram(b->h, in, b->len);
			uhmm_migrate_to_ram(b->h, out, b->len);
			t0 = now_ns();
			if (v == OV_PREFETCH || v == ST_FIT_PREFETCH) {
				ret = uhmm_prefetch(b->h, in, b->len, dm);
				if (ret < 0) {
					row_fail(r[v], "uhmm_prefetch", uhmm_strerror(ret));
					break;
				}
			}
			ret = demo_launch(sim, in, out, n);
			if (ret) {
				row_fail(r[v], "uhmm_sim_launch", uhmm_strerror(ret));
				break;
			}
			histogram(out, n, hist); /* the CPU reads the output: it comes home */
			t1 = now_ns();
			memcpy(d_in, h_in, b->len);
			demo_stencil_cpu(d_in, d_out, n);
			memcpy(h_out, d_out, b->len);
			histogram(h_out, n, want);
			t2 = now_ns();
			if (memcmp(hist, want, sizeof(hist)) ||
			    ((!rep || rep == b->reps - 1) && demo_check(in, out, n))) {
				row_fail(r[v], "wrong stencil result", NULL);
				break;
			}
			t[rep] = (double)(t1 - t0) * 1e-9;
			t[b->reps + rep] = (double)(t2 - t1) * 1e-9;
		}
		uhmm_range_stats(b->h, in, &ri1);
		uhmm_range_stats(b->h, out, &ro1);
		uhmm_devmem_stats(dm, &d1);
		uhmm_sim_stats(sim, &s1);
		if (v == OV_ADVICE)
			uhmm_advise(b->h, in, b->len, UHMM_ADVISE_UNSET_READ_MOSTLY, NULL);
		uhmm_sim_destroy(sim);
		if (r[v]->err[0])
			continue;
		if (memcmp(h_out, out, b->len)) {
			row_fail(r[v], "explicit copies and migration disagree", NULL);
			continue;
		}
		row_times(r[v], t, t + b->reps, b->reps, 1e3, false);
		r[v]->evictions = (double)(d1.evictions - d0.evictions) / b->reps;
		r[v]->has_evictions = true;
		snprintf(r[v]->note, sizeof(r[v]->note),
			 "per run: %.0f evictions, %.0f mapped in place; pages out/home: input "
			 "%.0f/%.0f, output %.0f/%.0f",
			 r[v]->evictions, (double)(s1.fault_mapped - s0.fault_mapped) / b->reps,
			 (double)(ri1.pages_to_device - ri0.pages_to_device) / b->reps,
			 (double)(ri1.pages_to_system - ri0.pages_to_system) / b->reps,
			 (double)(ro1.pages_to_device - ro0.pages_to_device) / b->reps,
			 (double)(ro1.pages_to_system - ro0.pages_to_system) / b->reps);
	}
out:
	if (r[0]->err[0] && !r[0]->has_range)
		for (v = 1; v < OV_N; v++)
			if (!r[v]->err[0] && !r[v]->has_range)
				memcpy(r[v]->err, r[0]->err, sizeof(r[0]->err));
	if (out)
		uhmm_free(b->h, out, b->len);
	if (in)
		uhmm_free(b->h, in, b->len);
	if (d_out)
		munmap(d_out, b->len);
	if (d_in)
		munmap(d_in, b->len);
	if (h_out)
		munmap(h_out, b->len);
	if (h_in)
		munmap(h_in, b->len);
	free(t);
}

/* ---------------------------------------------------------------------------
 * Output.
 */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_num(double v, bool ok)
{
	if (ok && v == v)
		printf("%.6g", v);
	else
		printf("null");
}

static void cpu_model(char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256];

	snprintf(buf, len, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *v = strchr(line, ':');

		if (strncmp(line, "model name", 10) || !v)
			continue;
		v += 1 + (v[1] == ' ');
		v[strcspn(v, "\n")] = 0;
		snprintf(buf, len, "%s", v);
		break;
	}
	fclose(f);
}

/* The CPUs this run was given (as nproc counts them), whatever it pinned since. */
static int ncpus(const struct bench *b)
{
	int n = CPU_COUNT(&b->all);

	return n ? n : (int)sysconf(_SC_NPROCESSORS_ONLN);
}

static int first_cpu(const cpu_set_t *set)
{
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, set))
			return c;
	return 0;
}

/* The commit measured: given by the build (CMake), else asked of git at run time. */
static void commit_id(char *buf, size_t len)
{
#ifdef UHMM_COMMIT
	snprintf(buf, len, "%s", UHMM_COMMIT);
#else
	FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");

	snprintf(buf, len, "unknown");
	if (p) {
		if (fgets(buf, (int)len, p))
			buf[strcspn(buf, "\n")] = 0;
		if (pclose(p) || !buf[0])
			snprintf(buf, len, "unknown");
	}
#endif
}

/* A number as the table prints it: pages/s whole, GB/s to 2 places, times to 1. */
static int fmt_num(char *buf, size_t len, double v, const char *unit)
{
	int prec = !strcmp(unit, "pages/s") ? 0 : !strcmp(unit, "GB/s") ? 2 : 1;

	return snprintf(buf, len, "%.*f", prec, v);
}

static void fmt_value(char *buf, size_t len, double v, const char *unit)
{
	int n = fmt_num(buf, len, v, unit);

	if (n > 0 && (size_t)n < len)
		snprintf(buf + n, len - (size_t)n, " %s", unit);
}

static void print_header(struct bench *b)
{
	struct utsname u;
	char model[128], commit[64];

	uname(&u);
	cpu_model(model, sizeof(model));
	commit_id(commit, sizeof(commit));
	if (b->json) {
		printf("{\"type\":\"header\",\"tool\":\"uhmm bench\",\"machine\":");
		json_str(u.machine);
		printf(",\"nproc\":%d,\"cpu\":", ncpus(b));
		json_str(model);
		printf(",\"kernel\":");
		json_str(u.release);
		printf(",\"commit\":");
		json_str(commit);
		printf(",\"fault_mode\":\"%s\",\"pinned_cpu\":", b->mode);
		if (b->pinned)
			printf("%d", first_cpu(&b->one));
		else
			printf("null");
		printf(",\"kernel_faults\":%s,\"size_mib\":%lu,\"bulk_mib\":%lu,"
		       "\"repetitions\":%d,\"fault_samples\":%d,"
		       "\"ratio\":\"time of the figure / time of its floor\"}\n",
		       b->kernel_faults ? "true" : "false", b->mib, b->bulk_mib, b->reps,
		       b->samples / b->reps * b->reps);
		return;
	}
	printf("uhmm bench: %lu MiB per figure (bulk migration %lu MiB), medians of %d repetitions,\n"
	       "            %d single-page faults\n",
	       b->mib, b->bulk_mib, b->reps, b->samples / b->reps * b->reps);
	printf("machine     %s, %d CPUs, %s\n", u.machine, ncpus(b), model);
	printf("kernel      %s\n", u.release);
	printf("commit      %s\n", commit);
	printf("fault mode  %s (%s; UHMM_FAULT_MODE=thread|signal chooses)\n", b->mode,
	       b->kernel_faults ? "kernel-mode faults permitted" : "user-mode-only");
	if (b->pinned)
		printf("placement   every thread on CPU %d, but the 2-thread figure's (all CPUs)\n",
		       first_cpu(&b->one));
	else
		printf("placement   the scheduler's (--unpinned)\n");
	printf("ratio       time of the figure / time of its floor (1.00 = at the floor)\n\n");
}

static void print_rows(struct bench *b)
{
	static const char *const head[7] = { "figure", "value", "floor", "floor value",
					     "ratio",  "value min-max", "counted beside" };
	static char cell[MAX_ROWS][7][160];
	size_t w[7];
	int i, k;

	if (b->json) {
		for (i = 0; i < b->nrows; i++) {
			struct row *r = &b->rows[i];
			bool ok = !r->na && !r->err[0];

			printf("{\"type\":\"row\",\"id\":\"%s\",\"figure\":", r->id);
			json_str(r->figure);
			printf(",\"value\":");
			json_num(r->value, ok);
			printf(",\"unit\":\"%s\",\"floor\":", r->unit);
			if (r->floor)
				json_str(r->floor);
			else
				printf("null");
			printf(",\"floor_value\":");
			json_num(r->floor_value, ok);
			printf(",\"ratio\":");
			json_num(r->ratio, ok);
			if (ok && r->has_range) {
				printf(",\"value_min\":");
				json_num(r->vmin, true);
				printf(",\"value_max\":");
				json_num(r->vmax, true);
				printf(",\"floor_min\":");
				json_num(r->fmin, true);
				printf(",\"floor_max\":");
				json_num(r->fmax, true);
			}
			if (ok && r->has_evictions) {
				printf(",\"evictions_per_run\":");
				json_num(r->evictions, true);
			}
			if (r->note[0]) {
				printf(",\"note\":");
				json_str(r->note);
			}
			printf(",\"status\":\"%s\"", r->na ? "n/a" : r->err[0] ? "error" : "ok");
			if (!ok) {
				printf(",\"reason\":");
				json_str(r->na ? r->na : r->err);
			}
			printf("}\n");
		}
		return;
	}
	for (k = 0; k < 7; k++)
		w[k] = strlen(head[k]);
	for (i = 0; i < b->nrows; i++) {
		struct row *r = &b->rows[i];

		snprintf(cell[i][0], sizeof(cell[i][0]), "%s", r->figure);
		snprintf(cell[i][2], sizeof(cell[i][2]), "%s", r->floor ? r->floor : "-");
		if (r->na || r->err[0]) {
			if (r->na)
				snprintf(cell[i][1], sizeof(cell[i][1]), "n/a (%s)", r->na);
			else
				snprintf(cell[i][1], sizeof(cell[i][1]), "error: %s", r->err);
			snprintf(cell[i][3], sizeof(cell[i][3]), "-");
			snprintf(cell[i][4], sizeof(cell[i][4]), "-");
			snprintf(cell[i][5], sizeof(cell[i][5]), "-");
		} else {
			char lo[32], hi[32];

			fmt_value(cell[i][1], sizeof(cell[i][1]), r->value, r->unit);
			fmt_value(cell[i][3], sizeof(cell[i][3]), r->floor_value, r->unit);
			snprintf(cell[i][4], sizeof(cell[i][4]), "%.2f", r->ratio);
			fmt_num(lo, sizeof(lo), r->vmin, r->unit);
			fmt_num(hi, sizeof(hi), r->vmax, r->unit);
			snprintf(cell[i][5], sizeof(cell[i][5]), r->has_range ? "%s-%s" : "-", lo,
				 hi);
		}
		snprintf(cell[i][6], sizeof(cell[i][6]), "%s", r->note[0] ? r->note : "-");
		for (k = 0; k < 7; k++)
			if (strlen(cell[i][k]) > w[k])
				w[k] = strlen(cell[i][k]);
	}
	printf("%-*s  %*s  %-*s  %*s  %*s  %-*s  %s\n", (int)w[0], head[0], (int)w[1], head[1],
	       (int)w[2], head[2], (int)w[3], head[3], (int)w[4], head[4], (int)w[5], head[5],
	       head[6]);
	for (i = 0; i < b->nrows; i++)
		printf("%-*s  %*s  %-*s  %*s  %*s  %-*s  %s\n", (int)w[0], cell[i][0], (int)w[1],
		       cell[i][1], (int)w[2], cell[i][2], (int)w[3], cell[i][3], (int)w[4],
		       cell[i][4], (int)w[5], cell[i][5], cell[i][6]);
}

/* ---------------------------------------------------------------------------
 * The command.
 */
static void bench_usage(FILE *f)
{
	fprintf(f, "usage: uhmm bench [--size MiB] [--bulk MiB] [--quick] [--json] [--unpinned]\n"
		   "  Measures each figure beside its floor in the same run and prints the ratio\n"
		   "  of their times: CPU fault-back vs a raw userfaultfd round trip, sweeps over\n"
		   "  device-resident memory and first writes of fresh managed memory vs the\n"
		   "  kernel's first-touch fault, bulk migration vs\n"
		   "  memcpy, 2 toucher threads vs 1, a device kernel copy vs memcpy (whole and in\n"
		   "  the kernel's pieces); signal-mode fault-back vs a raw SIGBUS handler (and\n"
		   "  thread mode vs the raw round trip in a signal-mode run), random touches with\n"
		   "  the default fault window vs a window of 1 page, fault-back with 16 GiB\n"
		   "  managed vs 16 MiB managed, the memory that managing 1 TiB adds while\n"
		   "  untouched (vs the 4 MiB limit), and the demo's workload (device kernels\n"
		   "  compute a stencil) on demand, prefetched, and with device memory half the\n"
		   "  working set (LRU, FIFO, LRU + prefetch, LRU + input READ_MOSTLY) vs\n"
		   "  explicit copies. Rows name the fault mode they ran in.\n"
		   "  --size MiB  memory per figure (default 256; 32 with --quick)\n"
		   "  --bulk MiB  memory the bulk migration figure moves (default 1024; with\n"
		   "              --quick or --size, the same as --size)\n"
		   "  --quick     small sizes, fewer repetitions and samples: a few seconds\n"
		   "  --json      one JSON object per row, after a header object\n"
		   "  --unpinned  let the scheduler place every thread (default: all on one\n"
		   "              CPU, but the touchers of the 2-thread figure)\n"
		   "  Exits 77 when userfaultfd or migration to a device is unavailable.\n");
}

int cmd_bench(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "size", required_argument, 0, 's' }, { "bulk", required_argument, 0, 'b' },
		{ "quick", no_argument, 0, 'q' },
		{ "json", no_argument, 0, 'j' },       { "unpinned", no_argument, 0, 'u' },
		{ "help", no_argument, 0, 'h' },       { 0, 0, 0, 0 }
	};
	struct bench b = { .raw = { .uffd = -1, .stopfd = -1, .idlefd = -1 }, .pinned = true };
	unsigned long mib = 0, bulk = 0;
	bool quick = false;
	char why[160], *end;
	int c, ret, status = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "s:b:qjuh", lo, NULL)) != -1) {
		unsigned long *to = c == 'b' ? &bulk : &mib;

		switch (c) {
		case 's':
		case 'b':
			errno = 0;
			*to = strtoul(optarg, &end, 0);
			if (errno || *end || !*to || *to > (1UL << 20)) {
				fprintf(stderr, "uhmm bench: --%s wants MiB, 1 or more: '%s'\n",
					c == 'b' ? "bulk" : "size", optarg);
				bench_usage(stderr);
				return 2;
			}
			break;
		case 'q':
			quick = true;
			break;
		case 'j':
			b.json = true;
			break;
		case 'u':
			b.pinned = false;
			break;
		case 'h':
			bench_usage(stdout);
			return 0;
		default:
			bench_usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "uhmm bench: unexpected argument '%s'\n", argv[optind]);
		bench_usage(stderr);
		return 2;
	}
	b.mib = mib ? mib : quick ? 32 : 256;
	b.len = b.mib << 20;
	b.bulk_mib = bulk ? bulk : mib || quick ? b.mib : 1024;
	b.bulk_len = b.bulk_mib << 20;
	b.npages = b.len / PAGE;
	b.reps = quick ? 3 : 5;
	b.samples = quick ? 900 : 5000;
	b.progress = isatty(STDERR_FILENO);
	b.nsteps = 13;

	/*
	 * On a VM, a wake-up that crosses to a halted vCPU costs tens of
	 * microseconds, and whether the scheduler puts the fault service beside
	 * the toucher changes from one second to the next: unpinned figures and
	 * floors each land in either mode, and their ratio means little. Pinned
	 * before uhmm_open, so that every thread created from now on inherits it.
	 */
	if (sched_getaffinity(0, sizeof(b.all), &b.all)) {
		CPU_ZERO(&b.all);
		b.pinned = false;
	}
	if (b.pinned) {
		CPU_ZERO(&b.one);
		CPU_SET(first_cpu(&b.all), &b.one);
		if (sched_setaffinity(0, sizeof(b.one), &b.one))
			b.pinned = false;
	}
	ret = uhmm_open(&b.h, NULL);
	if (ret) {
		fprintf(stderr, "uhmm bench: skipped: %s\n", uhmm_strerror(ret));
		return EXIT_SKIP;
	}
	ret = uhmm_can_migrate(b.h);
	if (ret) {
		fprintf(stderr, "uhmm bench: skipped: %s\n", uhmm_strerror(ret));
		uhmm_close(b.h);
		return EXIT_SKIP;
	}
	ret = raw_open(&b.raw, why, sizeof(why));
	if (ret) {
		fprintf(stderr, "uhmm bench: skipped: %s\n", why);
		raw_close(&b.raw);
		uhmm_close(b.h);
		return EXIT_SKIP;
	}
	b.kernel_faults = uhmm_features(b.h) & UHMM_FEAT_KERNEL_FAULTS;
	b.mode = uhmm_fault_mode(b.h) == UHMM_FAULT_SIGNAL ? "signal" : "thread";
	/* Room for the two buffers of the device kernel figure, and the latency figure's page. */
	UHMM_OPTS(uhmm_sim_opts, so, .npages = 2 * b.npages + 64, .name = "bench");
	ret = uhmm_sim_create(b.h, &so, &b.sim);
	if (ret) {
		fprintf(stderr, "uhmm bench: sim device of %lu MiB: %s\n", b.mib,
			uhmm_strerror(ret));
		raw_close(&b.raw);
		uhmm_close(b.h);
		return 1;
	}
	b.dm = uhmm_sim_devmem(b.sim);

	b.run = (struct target){ .h = b.h, .sim = b.sim, .dm = b.dm, .mode = b.mode };

	print_header(&b);
	fflush(stdout);
	bench_latency(&b, &b.run, false, "fault_latency_median", "fault_latency_p99",
		      strcmp(b.mode, "thread") ? NULL : "fault_latency_median_vs_ordered",
		      strcmp(b.mode, "thread") ? NULL : "fault_latency_median_vs_mechanism");
	bench_sweeps(&b);
	bench_bulk(&b);
	bench_threads(&b, &b.run, "fault_back_2_threads");
	bench_kernel(&b, PAGE);
	bench_kernel(&b, 64 << 10);
	bench_other_mode(&b);
	bench_window(&b);
	bench_metadata(&b);
	bench_oversub(&b);
	if (b.progress)
		fprintf(stderr, "\r\033[K");
	print_rows(&b);
	for (int i = 0; i < b.nrows; i++)
		if (b.rows[i].err[0])
			status = 1;

	uhmm_sim_destroy(b.sim);
	raw_close(&b.raw);
	uhmm_close(b.h);
	return status;
}
