/* inject: failure injection through every driver callback (SQLite style: let N calls pass, fail the next, N upward): data intact or exactly the failed pages poisoned, the handle still usable, counters consistent, nothing leaked. */
/* uhmm-test-label: concurrent */
/*
 * The driver is this file's own: device memory in a private pool, written
 * against include/uhmm_driver.h only, as drivers/sim/sim.c is. Each callback
 * counts its calls; the injector lets @pass calls of one callback through and
 * fails the next (transient), or that one and every later one (persistent: the
 * device broke). migrate_to_ram fails in three ways a real driver may: at once,
 * after collecting the page (it stays on the device), or by declining (0 with
 * the page left on the device). Its copy goes through copy_from_device, so a
 * failed copy in the fault path is covered as well.
 *
 * One scenario per failure point: migrate out, fault pages home (reads and
 * writes), migrate out again, bring a part home explicitly, discard, then
 * remove the device with pages on it (or bring them home first). Afterwards
 * every page holds its data, or it is poisoned, was named in a failed call,
 * and raises SIGBUS; the handle works for a new device; the counters agree.
 * Leaks are LeakSanitizer's (the ASan build runs this file).
 */
#include "harness.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stddef.h>

#define DEV_PAGES 48
#define NP 32
#define NDATA 28 /* pages [0, NDATA) hold data; the rest are holes */
#define MAX_AFFECTED 1024

enum cb { CB_TO, CB_FROM, CB_M2R, NCB };
static const char *const cb_name[NCB] = { "copy_to_device", "copy_from_device",
					  "migrate_to_ram" };

enum m2r_style { M2R_EARLY, M2R_KEEP, M2R_DECLINE, NSTYLES };
static const char *const style_name[NSTYLES] = { "fails at once", "fails after collecting",
						 "declines" };

struct inj {
	struct uhmm_devmem *dm;
	char *pool;
	/*
	 * The injector. The callbacks run in the calling thread, the service
	 * thread, a fault worker or a signal handler, one at a time, handed
	 * over by the kernel (a fault, a wake), which ThreadSanitizer cannot
	 * see: every field they share with the test is atomic.
	 */
	atomic_int target; /* enum cb, or -1 */
	_Atomic long pass; /* calls of target that succeed before the failure */
	atomic_bool persistent;
	_Atomic long nfail; /* with !persistent: how many calls in a row fail (0 means 1) */
	atomic_int err;     /* what a failed migrate_to_ram returns (0 means -EIO) */
	_Atomic enum m2r_style style;
	_Atomic long calls[NCB];
	_Atomic long injected;
	/* Managed addresses named in a failed call: the only pages that may be lost. */
	_Atomic uintptr_t affected[MAX_AFFECTED];
	atomic_int naffected;
	_Atomic long page_frees;
	_Atomic long live; /* device pages holding data, by this driver's own count */
};

/* Async-signal-safe (the fault path calls it): lock-free atomics. */
static bool inject_now(struct inj *d, enum cb cb)
{
	long n = d->calls[cb]++;

	if (d->target != (int)cb)
		return false;
	if (n == d->pass || (n > d->pass && (d->persistent || n < d->pass + d->nfail))) {
		d->injected++;
		return true;
	}
	return false;
}

static void affect(struct inj *d, uintptr_t addr)
{
	int i = d->naffected;

	if (i < MAX_AFFECTED) {
		d->affected[i] = addr & ~(uintptr_t)(PAGE - 1);
		d->naffected = i + 1;
	}
}

static bool was_affected(const struct inj *d, const void *addr)
{
	for (int i = 0; i < d->naffected; i++)
		if (d->affected[i] == (uintptr_t)addr)
			return true;
	return false;
}

static char *inj_mem(struct inj *d, const struct uhmm_page *page)
{
	return d->pool + page->pfn * PAGE;
}

static int inj_copy_to_device(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			      const void *const *src, unsigned long n)
{
	struct inj *d = uhmm_devmem_driver_data(dm);

	if (inject_now(d, CB_TO))
		return -EIO; /* nothing copied: every page stays on the CPU */
	for (unsigned long i = 0; i < n; i++) {
		if (src[i])
			memcpy(inj_mem(d, dst[i]), src[i], PAGE);
		else
			memset(inj_mem(d, dst[i]), 0, PAGE);
	}
	return 0;
}

static int inj_copy_from_device(struct uhmm_devmem *dm, void *const *dst,
				struct uhmm_page *const *src, unsigned long n)
{
	struct inj *d = uhmm_devmem_driver_data(dm);

	if (inject_now(d, CB_FROM)) {
		for (unsigned long i = 0; i < n; i++)
			affect(d, uhmm_page_addr(src[i]));
		return -EIO;
	}
	for (unsigned long i = 0; i < n; i++)
		memcpy(dst[i], inj_mem(d, src[i]), PAGE);
	return 0;
}

/* The kernel drivers' pattern (and drivers/sim's), page by page over the fault window. */
static int inj_migrate_to_ram(struct uhmm_fault *vmf)
{
	struct uhmm_devmem *dm = vmf->page->devmem;
	struct inj *d = uhmm_devmem_driver_data(dm);
	uint64_t src[UHMM_MIGRATE_MAX_PAGES], dst[UHMM_MIGRATE_MAX_PAGES];
	unsigned long n = uhmm_fault_window(vmf);
	struct uhmm_migrate a = {
		.h = vmf->h,
		.start = vmf->address,
		.end = vmf->address + n * PAGE,
		.src = src,
		.dst = dst,
		.pgmap_owner = d,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	bool fail = inject_now(d, CB_M2R);
	int ret = 0;

	if (fail) {
		affect(d, vmf->address);
		if (d->style == M2R_EARLY)
			return d->err ? d->err : -EIO;
	}
	if (uhmm_migrate_setup(&a)) {
		a.end = vmf->address + PAGE;
		ret = uhmm_migrate_setup(&a);
		if (ret)
			return ret;
	}
	for (unsigned long i = 0; i < a.npages; i++) {
		struct uhmm_page *page = uhmm_migrate_entry_page(src[i]);
		void *buf = uhmm_migrate_sysbuf(&a, i);
		int err;

		if (!(src[i] & UHMM_MIGRATE_MIGRATE) || !page)
			continue;
		if (fail) {
			dst[i] = 0; /* left on the device */
			continue;
		}
		err = inj_copy_from_device(dm, &buf, &page, 1);
		dst[i] = err ? 0 : UHMM_MIGRATE_VALID;
		if (err && page == vmf->page)
			ret = err;
	}
	uhmm_migrate_pages(&a);
	uhmm_migrate_finalize(&a);
	if (fail && d->style == M2R_KEEP)
		return -EIO;
	return ret; /* M2R_DECLINE: 0 with the page still on the device */
}

static void inj_page_free(struct uhmm_page *page)
{
	struct inj *d = uhmm_devmem_driver_data(page->devmem);

	d->page_frees++;
}

static const struct uhmm_devmem_ops inj_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = inj_copy_to_device,
	.copy_from_device = inj_copy_from_device,
	.migrate_to_ram = inj_migrate_to_ram,
	.page_free = inj_page_free,
};

static struct inj *inj_add(struct uhmm *h)
{
	struct inj *d = calloc(1, sizeof(*d));

	CHECK_NONNULL(d);
	d->target = -1;
	d->pool = map_anon(DEV_PAGES * PAGE);
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = DEV_PAGES,
		  .owner = d, .ops = &inj_ops, .driver_data = d, .name = "inject");
	CHECK_EQ(uhmm_devmem_add(h, &desc, &d->dm), 0);
	return d;
}

/* Remove the region (the record stays for the checks); returns uhmm_devmem_remove's count. */
static int inj_remove(struct inj *d)
{
	int r = uhmm_devmem_remove(d->dm);

	d->dm = NULL;
	unmap(d->pool, DEV_PAGES * PAGE);
	d->pool = NULL;
	return r;
}

static int count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	CHECK_NONNULL(dir);
	while ((e = readdir(dir)))
		n += e->d_name[0] != '.';
	closedir(dir);
	return n;
}

/* ---- one run ---- */

struct run {
	struct uhmm *h;
	struct inj *d;
	char *buf;
	uint64_t model[NP][PAGE / 8];
	bool lost[NP];           /* poisoned by a failure: its data is gone */
	long poison_discarded;   /* poisoned pages a discard made usable again */
	unsigned long long poisoned0;
};

static char *pg(struct run *r, size_t i)
{
	return r->buf + i * PAGE;
}

/* Read page i through the CPU; a SIGBUS must be a page the injector failed. */
static void cpu_read(struct run *r, size_t i)
{
	int s = touch_expect_sigbus(pg(r, i) + 17);

	CHECK_LE(s, 1);
	if (s == 1) {
		CHECK_STATE(r->h, pg(r, i), UHMM_PAGE_POISON);
		CHECK_MSG(was_affected(r->d, pg(r, i)),
			  "page %zu is poisoned, but no failed call named it", i);
		r->lost[i] = true;
		return;
	}
	CHECK_MSG(!r->lost[i], "page %zu was poisoned and reads without SIGBUS", i);
	CHECK_MEM(pg(r, i), r->model[i], PAGE);
}

static void cpu_write(struct run *r, size_t i, uint64_t seed)
{
	int s = touch_expect_sigbus_write(pg(r, i) + 8, 0);

	CHECK_LE(s, 1);
	if (s == 1) {
		CHECK_STATE(r->h, pg(r, i), UHMM_PAGE_POISON);
		CHECK_MSG(was_affected(r->d, pg(r, i)),
			  "page %zu is poisoned, but no failed call named it", i);
		r->lost[i] = true;
		return;
	}
	pattern_page(r->model[i], i, seed);
	memcpy(pg(r, i), r->model[i], PAGE);
}

static void discard(struct run *r, size_t i, size_t n)
{
	for (size_t k = i; k < i + n; k++) {
		if (uhmm_page_state(r->h, pg(r, k)) == UHMM_PAGE_POISON)
			r->poison_discarded++;
		memset(r->model[k], 0, PAGE);
		r->lost[k] = false;
	}
	CHECK_EQ(madvise(pg(r, i), n * PAGE, MADV_DONTNEED), 0);
}

/* mremap the range elsewhere: states, device pages and poison follow it. */
static void move_range(struct run *r)
{
	char *dst = mmap(NULL, NP * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *moved;

	CHECK(dst != MAP_FAILED);
	moved = mremap(r->buf, NP * PAGE, NP * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst);
	CHECK_EQ(uhmm_sync(r->h), 0);
	for (int i = 0; i < r->d->naffected; i++)
		if (r->d->affected[i] - (uintptr_t)r->buf < NP * PAGE)
			r->d->affected[i] += (uintptr_t)moved - (uintptr_t)r->buf;
	r->buf = moved;
}

/* The devmem counters agree with the page states and with the driver's own count. */
static void check_counters(struct run *r)
{
	struct uhmm_devmem_stats ds;
	size_t ndev;

	CHECK_EQ(uhmm_sync(r->h), 0);
	ndev = count_state(r->h, r->buf, NP, UHMM_PAGE_DEVICE);
	ds = dmstats(r->d->dm);
	CHECK_EQ(ds.resident, ndev);
	CHECK_EQ(ds.in_use, ndev);
	CHECK_EQ(ds.owner_pages, ndev);
	CHECK_EQ(ds.page_frees, r->d->page_frees);
}

/* Every page: its data, or poisoned by a failed call and SIGBUS on touch. */
static size_t verify_all(struct run *r)
{
	size_t npoison = 0;

	for (size_t i = 0; i < NP; i++) {
		int st = uhmm_page_state(r->h, pg(r, i));

		CHECK_GT(st, 0);
		if (st == UHMM_PAGE_POISON) {
			CHECK_MSG(was_affected(r->d, pg(r, i)),
				  "page %zu is poisoned, but no failed call named it", i);
			CHECK_EQ(touch_expect_sigbus(pg(r, i)), 1);
			CHECK_EQ(touch_expect_sigbus_write(pg(r, i) + 100, 1), 1);
			r->lost[i] = true;
			npoison++;
			continue;
		}
		cpu_read(r, i);
	}
	return npoison;
}

struct outcome {
	long injected;
	size_t poisoned;
};

/* After a run: a fresh device on the same handle works, and poisoned pages are usable again. */
static void still_usable(struct run *r)
{
	struct inj *d = inj_add(r->h);

	for (size_t i = 0; i < NP; i++) {
		if (r->lost[i])
			CHECK_EQ(madvise(pg(r, i), PAGE, MADV_DONTNEED), 0);
		pattern_page(r->model[i], i, 0x3c3c);
		memcpy(pg(r, i), r->model[i], PAGE);
	}
	CHECK_EQ(uhmm_migrate_to_device(d->dm, r->buf, NP * PAGE), NP);
	for (size_t i = NP; i-- > 0;)
		CHECK_MEM(pg(r, i), r->model[i], PAGE);
	CHECK_EQ(uhmm_migrate_to_device(d->dm, r->buf, NP * PAGE), NP);
	CHECK_EQ(uhmm_free(r->h, r->buf, NP * PAGE), 0);
	CHECK_EQ(dmstats(d->dm).in_use, 0);
	CHECK_EQ(inj_remove(d), 0);
	free(d);
}

static struct outcome run_once(enum uhmm_fault_mode mode, int target, long pass, bool persistent,
			       enum m2r_style style, bool remove_resident)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	static struct run r;
	struct outcome out;
	size_t npoison;
	int fds0 = count_fds(), ret;
	void *p = NULL;

	memset(&r, 0, sizeof(r));
	uhmm_test_open_opts(&r.h, &o);
	r.poisoned0 = hstats(r.h).poisoned;
	r.d = inj_add(r.h);
	CHECK_EQ(uhmm_alloc(r.h, NP * PAGE, &p), 0);
	r.buf = p;
	for (size_t i = 0; i < NDATA; i++) {
		pattern_page(r.model[i], i, 0x1a1a);
		memcpy(pg(&r, i), r.model[i], PAGE);
	}
	r.d->target = target;
	r.d->pass = pass;
	r.d->persistent = persistent;
	r.d->style = style;

	/* Out: a failed copy leaves its pages on the CPU, with their data. */
	ret = uhmm_migrate_to_device(r.d->dm, r.buf, NP * PAGE);
	CHECK_GE(ret, 0);
	CHECK_EQ(count_state(r.h, r.buf, NP, UHMM_PAGE_DEVICE), ret);
	/* Faults: reads in reverse (a fault each), then writes (home first, then written). */
	for (size_t i = 8; i-- > 0;)
		cpu_read(&r, i);
	for (size_t i = 8; i < 12; i++)
		cpu_write(&r, i, 0x2b2b);
	check_counters(&r);
	/* Out again, in pieces, then part of it home explicitly. */
	for (size_t i = 0; i < 16; i += 4)
		CHECK_GE(uhmm_migrate_to_device(r.d->dm, pg(&r, i), 4 * PAGE), 0);
	CHECK_GE(uhmm_migrate_to_ram(r.h, pg(&r, 12), 12 * PAGE), 0);
	/* The range moves with pages on the device (and maybe poisoned ones). */
	move_range(&r);
	for (size_t i = 12; i < 16; i++)
		cpu_read(&r, i);
	/* Discard device pages (page_free), and whatever the failures left there. */
	discard(&r, 20, 2);
	CHECK_GE(uhmm_migrate_to_device(r.d->dm, r.buf, NP * PAGE), 0);
	check_counters(&r);

	if (remove_resident) {
		/* Hot-remove with pages on the device: each comes home or is poisoned. */
		size_t ndev = count_state(r.h, r.buf, NP, UHMM_PAGE_DEVICE);
		size_t npois = count_state(r.h, r.buf, NP, UHMM_PAGE_POISON);

		ret = inj_remove(r.d);
		CHECK_GE(ret, 0);
		CHECK_LE((size_t)ret, ndev);
		CHECK_EQ(count_state(r.h, r.buf, NP, UHMM_PAGE_POISON), npois + (size_t)ret);
		CHECK_EQ(count_state(r.h, r.buf, NP, UHMM_PAGE_DEVICE), 0);
	} else {
		/* Home first: then the region holds nothing and its counters are back to 0. */
		CHECK_GE(uhmm_migrate_to_ram(r.h, r.buf, NP * PAGE), 0);
		CHECK_EQ(count_state(r.h, r.buf, NP, UHMM_PAGE_DEVICE), 0);
		check_counters(&r);
		CHECK_EQ(dmstats(r.d->dm).in_use, 0);
		CHECK_EQ(dmstats(r.d->dm).resident, 0);
		CHECK_EQ(dmstats(r.d->dm).owner_pages, 0);
		CHECK_EQ(inj_remove(r.d), 0);
	}

	npoison = verify_all(&r);
	CHECK_EQ(hstats(r.h).poisoned - r.poisoned0, npoison + (size_t)r.poison_discarded);
	/* A failed copy to the device never costs data. */
	if (target == CB_TO)
		CHECK_EQ(npoison + (size_t)r.poison_discarded, 0);
	/* One failure, retried where the core can: at most the one page a fault could not bring home. */
	if (!persistent)
		CHECK_LE(npoison + (size_t)r.poison_discarded, 1);
	if (!r.d->injected)
		CHECK_EQ(npoison + (size_t)r.poison_discarded, 0);

	still_usable(&r);
	out.injected = r.d->injected;
	out.poisoned = npoison + (size_t)r.poison_discarded;
	free(r.d);
	uhmm_close(r.h);
	CHECK_EQ(count_fds(), fds0);
	return out;
}

static void inject_all(enum uhmm_fault_mode mode)
{
	long points = 0, lost = 0;

	if (mode == UHMM_FAULT_SIGNAL) {
		UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
		struct uhmm *h = NULL;
		int r = uhmm_open(&h, &o);

		if (r == -EOPNOTSUPP)
			SKIP("no signal mode here: %s", uhmm_strerror(r));
		uhmm_close(h);
	}
	{
		struct uhmm *h;

		uhmm_test_open(&h);
		uhmm_test_require_migrate(h);
		uhmm_close(h);
	}
	for (int cb = 0; cb < NCB; cb++) {
		for (int persistent = 0; persistent < 2; persistent++) {
			for (int style = 0; style < (cb == CB_M2R ? NSTYLES : 1); style++) {
				long pass, pts = 0;

				for (pass = 0;; pass++) {
					long inj = 0;

					/* Each point twice: hot-remove with pages on the device, or home first. */
					for (int rm = 0; rm < 2; rm++) {
						struct outcome o = run_once(mode, cb, pass, persistent,
									    (enum m2r_style)style, rm);

						inj += o.injected != 0;
						lost += (long)o.poisoned;
					}
					if (!inj)
						break;
					pts += inj;
					CHECK_LT(pass, 100000);
				}
				NOTE("%-16s %-10s%s%-22s: %ld failure points (no failure once %ld "
				     "calls pass)",
				     cb_name[cb], persistent ? "persistent" : "transient",
				     cb == CB_M2R ? ", " : "", cb == CB_M2R ? style_name[style] : "",
				     pts, pass);
				points += pts;
			}
		}
	}
	NOTE("%ld failure points injected in %s mode; %ld pages lost to them, each one raised SIGBUS",
	     points, mode == UHMM_FAULT_THREAD ? "thread" : "signal", lost);
	CHECK_GT(points, 0);
}

TEST(every_callback_fails_at_every_call_thread_mode)
{
	inject_all(UHMM_FAULT_THREAD);
}

TEST(every_callback_fails_at_every_call_signal_mode)
{
	inject_all(UHMM_FAULT_SIGNAL);
}

/*
 * Fails today (a library bug, found by fuzz/api_fuzz.c). Option structs may be
 * smaller than the library's (older callers); uhmm_devmem_add copies the first
 * desc->sz bytes and takes the rest as defaults. A size that ends inside a
 * field copies part of it: part of the ops pointer, then dereferenced by
 * check_ops (SEGV). A size that is not a whole number of fields should be
 * refused (-EINVAL), or the cut field taken as its default.
 */
/*
 * Four pages with pattern @seed on an injecting device whose migrate_to_ram
 * fails at once with -ENOMEM from its first call; the caller says how long.
 */
static struct inj *nomem_setup(struct uhmm **h, const struct uhmm_open_opts *o, char **buf,
			       uint64_t seed)
{
	struct inj *d;

	uhmm_test_open_opts(h, o);
	uhmm_test_require_migrate(*h);
	d = inj_add(*h);
	*buf = map_anon(4 * PAGE);
	CHECK_EQ(uhmm_manage(*h, *buf, 4 * PAGE), 0);
	pattern_fill(*buf, 4 * PAGE, seed);
	CHECK_EQ(uhmm_migrate_to_device(d->dm, *buf, 4 * PAGE), 4);
	d->target = CB_M2R;
	d->pass = 0;
	d->err = -ENOMEM;
	d->style = M2R_EARLY;
	return d;
}

static void nomem_teardown(struct uhmm *h, struct inj *d, char *buf)
{
	CHECK_EQ(uhmm_unmanage(h, buf, 4 * PAGE), 0);
	unmap(buf, 4 * PAGE);
	CHECK_EQ(inj_remove(d), 0);
	free(d);
	uhmm_close(h);
}

/*
 * A driver with no memory for the page's way home (migrate_to_ram returns
 * -ENOMEM, as UFFDIO_COPY may): the fault is retried with backoff; memory
 * that comes back in time brings the page home with its data.
 */
static void nomem_then_memory(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode, .nomem_wait_ms = 5000);
	struct inj *d;
	struct uhmm *h;
	char *buf;

	d = nomem_setup(&h, &o, &buf, 0x0e0e);
	d->nfail = 5;
	CHECK_PATTERN_PAGES(buf, 4, 0x0e0e);
	CHECK_EQ(d->injected, 5);
	CHECK_GE(d->calls[CB_M2R], 6);
	CHECK_EQ(hstats(h).poisoned, 0);
	nomem_teardown(h, d, buf);
}

TEST(no_memory_on_the_way_home_is_retried_thread_mode)
{
	nomem_then_memory(UHMM_FAULT_THREAD);
}

TEST(no_memory_on_the_way_home_is_retried_signal_mode)
{
	nomem_then_memory(UHMM_FAULT_SIGNAL);
}

/*
 * No memory for longer than nomem_wait_ms: that page is poisoned (its
 * toucher, and only it, gets SIGBUS), one line on stderr says why, and the
 * other pages keep their data.
 */
static void nomem_forever(void *arg)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = (enum uhmm_fault_mode)(uintptr_t)arg,
		  .nomem_wait_ms = 50);
	char line[256] = "";
	struct inj *d;
	struct uhmm *h;
	int pfd[2], saved;
	double t0, waited;
	ssize_t got;
	char *buf;

	d = nomem_setup(&h, &o, &buf, 0x0f0f);
	d->persistent = true;
	CHECK_EQ(pipe(pfd), 0);
	fflush(stderr);
	saved = dup(2);
	CHECK_EQ(dup2(pfd[1], 2), 2);
	t0 = harness_now();
	CHECK_EQ(touch_expect_sigbus(buf + PAGE + 5), 1);
	waited = harness_now() - t0;
	CHECK_EQ(dup2(saved, 2), 2);
	close(pfd[1]);
	got = read(pfd[0], line, sizeof(line) - 1);
	close(pfd[0]);
	CHECK_GT(got, 0);
	line[strcspn(line, "\n")] = 0;
	NOTE("after %.0f ms: %s", waited * 1000, line);
	CHECK(strstr(line, "no memory to bring it home") != NULL);
	CHECK_GE(waited, 0.045);
	CHECK_GE(d->calls[CB_M2R], 3); /* retried, not given up at once */
	CHECK_EQ(uhmm_page_state(h, buf + PAGE), UHMM_PAGE_POISON);
	CHECK_EQ(hstats(h).poisoned, 1);
	/* The others come home once there is memory again. */
	d->target = -1;
	CHECK_PATTERN_PAGE(buf, 0, 0x0f0f);
	CHECK_PATTERN_PAGE(buf, 2, 0x0f0f);
	CHECK_PATTERN_PAGE(buf, 3, 0x0f0f);
	nomem_teardown(h, d, buf);
}

static void run_nomem_forever(enum uhmm_fault_mode mode)
{
	int st = harness_run_child(nomem_forever, (void *)(uintptr_t)mode);

	if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
		SKIP("%s", harness_skip_buf[0] ? harness_skip_buf : "the child skipped");
	CHECK_EXITED(st, 0);
}

TEST(no_memory_for_too_long_poisons_that_page_thread_mode)
{
	run_nomem_forever(UHMM_FAULT_THREAD);
}

TEST(no_memory_for_too_long_poisons_that_page_signal_mode)
{
	run_nomem_forever(UHMM_FAULT_SIGNAL);
}

static void add_cut_desc(void *arg)
{
	struct inj d = { 0 };
	struct uhmm *h;
	struct uhmm_devmem *dm = NULL;
	size_t cut = (size_t)(uintptr_t)arg;
	int r;

	uhmm_test_open(&h);
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = 4,
		  .owner = &d, .ops = &inj_ops, .driver_data = &d, .name = "cut");
	desc.sz = cut;
	r = uhmm_devmem_add(h, &desc, &dm);
	/* No version of the struct ends inside a field. */
	CHECK_MSG(r == -EINVAL, "sz %zu: %d", cut, r);
	CHECK(dm == NULL);
	uhmm_close(h);
}

TEST(devmem_add_refuses_unknown_flags)
{
	struct inj d = { 0 };
	struct uhmm_devmem *dm = NULL;
	struct uhmm *h;

	uhmm_test_open(&h);
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = 4,
		  .owner = &d, .ops = &inj_ops, .driver_data = &d, .flags = 0x80);
	CHECK_EQ(uhmm_devmem_add(h, &desc, &dm), -EINVAL);
	CHECK(dm == NULL);
	desc.flags = UHMM_DEVMEM_NONBLOCKING;
	CHECK_EQ(uhmm_devmem_add(h, &desc, &dm), 0);
	CHECK_EQ(uhmm_devmem_remove(dm), 0);
	uhmm_close(h);
}

TEST(devmem_add_with_sz_ending_inside_a_pointer)
{
	static const size_t cuts[] = {
		offsetof(struct uhmm_devmem_desc, ops) + 1,
		offsetof(struct uhmm_devmem_desc, ops) + 4,
		offsetof(struct uhmm_devmem_desc, name) + 3,
	};
	int bad = 0;

	for (size_t i = 0; i < ARRAY_SIZE(cuts); i++) {
		int st = harness_run_child(add_cut_desc, (void *)(uintptr_t)cuts[i]);

		if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
			SKIP("%s", harness_skip_buf[0] ? harness_skip_buf : "the child skipped");
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			NOTE("uhmm_devmem_add with sz = %zu (inside a pointer field): %s", cuts[i],
			     harness_status_str(st));
			bad++;
		}
	}
	CHECK_EQ(bad, 0);
}
