/* slowdriver: a driver stuck in a copy stalls nothing but its own pages: faults on another device's pages go on, events go on, and uhmm_close with a fault in flight ends cleanly. */
/* uhmm-test-label: concurrent */
/*
 * The slow device is this file's own RAM-backed driver; each copy callback has
 * a gate the test arms: the next call blocks, inside the callback, until the
 * test opens it. The assertions are about order and progress, never time:
 * "the fast toucher finished its N faults while the slow copy was still
 * blocked". A bound of some seconds only keeps a stalled library from hanging
 * the test, as WAIT_FOR does.
 */
#include "harness.h"

#include <stdatomic.h>

#define SLOW_PAGES 64
#define FAST_PAGES 64
#define LIVENESS_S 3.0

struct gate {
	atomic_int armed, entered, open;
	atomic_int fail; /* while set, the callback fails (-EIO) */
};

struct slow {
	struct uhmm_devmem *dm;
	char *pool;
	struct gate to, from;
};

/* Async-signal-safe (it may run in a SIGBUS handler): atomics and nanosleep. */
static bool gate_pass(struct gate *g)
{
	if (atomic_exchange(&g->armed, 0)) {
		atomic_store(&g->entered, 1);
		while (!atomic_load(&g->open)) {
			struct timespec ts = { 0, 1000000 };

			nanosleep(&ts, NULL);
		}
	}
	return !atomic_load(&g->fail);
}

static void gate_arm(struct gate *g)
{
	atomic_store(&g->open, 0);
	atomic_store(&g->entered, 0);
	atomic_store(&g->armed, 1);
}

/* Wait (bounded) until a call is blocked in the gate. */
static void gate_wait_entered(struct gate *g)
{
	double t0 = harness_now();

	while (!atomic_load(&g->entered) && harness_now() - t0 < 10)
		usleep(1000);
	CHECK_MSG(atomic_load(&g->entered), "the slow callback was never called");
}

static char *slow_mem(struct slow *s, const struct uhmm_page *page)
{
	return s->pool + page->pfn * PAGE;
}

static int slow_copy_to_device(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			       const void *const *src, unsigned long n)
{
	struct slow *s = uhmm_devmem_driver_data(dm);

	if (!gate_pass(&s->to))
		return -EIO; /* nothing copied: the pages go back to the CPU */
	for (unsigned long i = 0; i < n; i++) {
		if (src[i])
			memcpy(slow_mem(s, dst[i]), src[i], PAGE);
		else
			memset(slow_mem(s, dst[i]), 0, PAGE);
	}
	return 0;
}

static int slow_copy_from_device(struct uhmm_devmem *dm, void *const *dst,
				 struct uhmm_page *const *src, unsigned long n)
{
	struct slow *s = uhmm_devmem_driver_data(dm);

	gate_pass(&s->from);
	for (unsigned long i = 0; i < n; i++)
		memcpy(dst[i], slow_mem(s, src[i]), PAGE);
	return 0;
}

static int slow_migrate_to_ram(struct uhmm_fault *vmf)
{
	return uhmm_test_migrate_one_home(vmf, uhmm_devmem_driver_data(vmf->page->devmem),
					  slow_copy_from_device);
}

static const struct uhmm_devmem_ops slow_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = slow_copy_to_device,
	.copy_from_device = slow_copy_from_device,
	.migrate_to_ram = slow_migrate_to_ram,
};

static struct slow *slow_add(struct uhmm *h)
{
	struct slow *s = calloc(1, sizeof(*s));

	CHECK_NONNULL(s);
	s->pool = map_anon(SLOW_PAGES * PAGE);
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = SLOW_PAGES,
		  .owner = s, .ops = &slow_ops, .driver_data = s, .name = "slow");
	CHECK_EQ(uhmm_devmem_add(h, &desc, &s->dm), 0);
	return s;
}

static void slow_remove(struct slow *s)
{
	CHECK_EQ(uhmm_devmem_remove(s->dm), 0);
	unmap(s->pool, SLOW_PAGES * PAGE);
	free(s);
}

static struct uhmm *open_mode(enum uhmm_fault_mode mode)
{
	struct uhmm *h = uhmm_test_open_mode(mode);

	uhmm_test_require_migrate(h);
	return h;
}

/* ---- a toucher thread ---- */

struct toucher {
	volatile char *buf;
	size_t npages;
	uint64_t seed;
	atomic_ulong done; /* pages checked */
	atomic_int finished;
	pthread_t tid;
};

/* Reads every page, last to first (a fault each), checking the pattern. */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	for (size_t i = t->npages; i-- > 0;) {
		CHECK_PATTERN_PAGE((const char *)t->buf, i, t->seed);
		atomic_fetch_add(&t->done, 1);
	}
	atomic_store(&t->finished, 1);
	return NULL;
}

static void toucher_start(struct toucher *t, void *buf, size_t npages, uint64_t seed)
{
	t->buf = buf;
	t->npages = npages;
	t->seed = seed;
	atomic_store(&t->done, 0);
	atomic_store(&t->finished, 0);
	CHECK_EQ(pthread_create(&t->tid, NULL, toucher_main, t), 0);
}

/* Bounded wait for a toucher to finish; returns whether it did. */
static bool toucher_wait(struct toucher *t, double secs)
{
	double t0 = harness_now();

	while (!atomic_load(&t->finished) && harness_now() - t0 < secs)
		usleep(1000);
	return atomic_load(&t->finished);
}

struct fixture {
	struct uhmm *h;
	struct slow *slow;
	struct uhmm_sim *fast;
	char *sbuf, *fbuf;
};

static void fixture_setup(struct fixture *f, enum uhmm_fault_mode mode)
{
	void *p = NULL;

	f->h = open_mode(mode);
	f->slow = slow_add(f->h);
	f->fast = uhmm_test_sim(f->h, FAST_PAGES);
	CHECK_EQ(uhmm_alloc(f->h, SLOW_PAGES * PAGE, &p), 0);
	f->sbuf = p;
	CHECK_EQ(uhmm_alloc(f->h, FAST_PAGES * PAGE, &p), 0);
	f->fbuf = p;
	pattern_fill(f->sbuf, SLOW_PAGES * PAGE, 0x5105);
	pattern_fill(f->fbuf, FAST_PAGES * PAGE, 0xfa57);
}

static void fixture_teardown(struct fixture *f)
{
	CHECK_EQ(uhmm_free(f->h, f->sbuf, SLOW_PAGES * PAGE), 0);
	CHECK_EQ(uhmm_free(f->h, f->fbuf, FAST_PAGES * PAGE), 0);
	slow_remove(f->slow);
	CHECK_EQ(uhmm_sim_destroy(f->fast), 0);
	uhmm_close(f->h);
}

/*
 * A fault on the slow device's page is stuck in its copy; faults on the fast
 * device's pages must all be served meanwhile. (Regression test: with one
 * service thread serving every fault in thread mode, they all waited behind
 * the stuck one until 7d51819.)
 */
static void slow_fault_does_not_stall(enum uhmm_fault_mode mode)
{
	static struct toucher slow_t, fast_t;
	struct fixture f;
	bool fast_done, slow_still_blocked;
	unsigned long served;

	fixture_setup(&f, mode);
	CHECK_EQ(uhmm_migrate_to_device(f.slow->dm, f.sbuf, SLOW_PAGES * PAGE), SLOW_PAGES);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.fast), f.fbuf, FAST_PAGES * PAGE),
		 FAST_PAGES);
	gate_arm(&f.slow->from);
	toucher_start(&slow_t, f.sbuf, 1, 0x5105);
	gate_wait_entered(&f.slow->from);

	toucher_start(&fast_t, f.fbuf, FAST_PAGES, 0xfa57);
	fast_done = toucher_wait(&fast_t, LIVENESS_S);
	served = atomic_load(&fast_t.done);
	slow_still_blocked = !atomic_load(&slow_t.finished) && !atomic_load(&f.slow->from.open);
	NOTE("while the slow copy was blocked, the fast toucher checked %lu of %d pages", served,
	     FAST_PAGES);
	/* Release first, so that a failure below leaves nothing stuck. */
	atomic_store(&f.slow->from.open, 1);
	CHECK_EQ(pthread_join(slow_t.tid, NULL), 0);
	CHECK_EQ(pthread_join(fast_t.tid, NULL), 0);
	CHECK(slow_still_blocked);
	CHECK_MSG(fast_done,
		  "faults on the fast device's pages waited for the slow device's copy (%lu of %d "
		  "served in %.0f s)%s",
		  served, FAST_PAGES, LIVENESS_S,
		  mode == UHMM_FAULT_THREAD ? ": thread mode serves every fault in one service "
					      "thread, so a stuck driver stalls all of them" :
					      "");
	for (size_t i = 0; i < SLOW_PAGES; i++)
		CHECK_PATTERN_PAGE(f.sbuf, i, 0x5105);
	fixture_teardown(&f);
}

TEST(slow_fault_does_not_stall_other_devices_signal_mode)
{
	slow_fault_does_not_stall(UHMM_FAULT_SIGNAL);
}

TEST(slow_fault_does_not_stall_other_devices_thread_mode)
{
	slow_fault_does_not_stall(UHMM_FAULT_THREAD);
}

/* ---- a migration stuck in copy_to_device ---- */

struct migrator {
	struct uhmm_devmem *dm;
	void *addr;
	size_t len;
	int ret;
	atomic_int finished;
	pthread_t tid;
};

static void *migrator_main(void *arg)
{
	struct migrator *m = arg;

	m->ret = uhmm_migrate_to_device(m->dm, m->addr, m->len);
	atomic_store(&m->finished, 1);
	return NULL;
}

/*
 * @npages pages of @buf that lie in one 2 MiB-aligned chunk. uhmm migrates a
 * range chunk by chunk; a test that moves the range while the first chunk is
 * stuck would otherwise see the rest of a straddling migration find its
 * range gone (fewer pages moved, or -ENOENT). Where mmap puts a buffer is
 * not ours to choose, and forked tests inherit one placement: on a CI
 * machine all four remap tests straddled at once.
 */
static char *one_chunk(char *buf, size_t npages)
{
	uintptr_t b = (uintptr_t)buf, boundary = (b | ((2UL << 20) - 1)) + 1;

	return b + npages * PAGE > boundary ? (char *)boundary : buf;
}

static void migrator_start(struct migrator *m, struct uhmm_devmem *dm, void *addr, size_t len)
{
	m->dm = dm;
	m->addr = addr;
	m->len = len;
	atomic_store(&m->finished, 0);
	CHECK_EQ(pthread_create(&m->tid, NULL, migrator_main, m), 0);
}

/*
 * A migration to the slow device is stuck copying; faults elsewhere go on.
 * With @discard (1: beside the stuck pages, 2: over them) an event on the same
 * range comes too. Over them, it has to wait for their locks; faults on
 * another device's pages must not wait behind it (they did, in both modes,
 * until 7d51819).
 */
static void slow_migration_does_not_stall(enum uhmm_fault_mode mode, int discard)
{
	static struct toucher fast_t;
	static struct migrator m;
	struct fixture f;
	bool fast_done;
	unsigned long served;
	size_t gone = discard == 1 ? SLOW_PAGES - 1 : discard == 2 ? 0 : SLOW_PAGES;

	fixture_setup(&f, mode);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.fast), f.fbuf, FAST_PAGES * PAGE),
		 FAST_PAGES);
	gate_arm(&f.slow->to);
	migrator_start(&m, f.slow->dm, f.sbuf, SLOW_PAGES / 2 * PAGE);
	gate_wait_entered(&f.slow->to);
	/* An event on other pages of the same range while the migration holds its pages. */
	if (discard)
		CHECK_EQ(madvise(f.sbuf + (discard == 1 ? SLOW_PAGES - 1 : 0) * PAGE, PAGE,
				 MADV_DONTNEED),
			 0);

	toucher_start(&fast_t, f.fbuf, FAST_PAGES, 0xfa57);
	fast_done = toucher_wait(&fast_t, LIVENESS_S);
	served = atomic_load(&fast_t.done);
	CHECK(!atomic_load(&m.finished));
	atomic_store(&f.slow->to.open, 1);
	CHECK_EQ(pthread_join(m.tid, NULL), 0);
	CHECK_EQ(pthread_join(fast_t.tid, NULL), 0);
	CHECK_GE(m.ret, SLOW_PAGES / 2 - (discard == 2));
	CHECK_MSG(fast_done, "faults on the fast device's pages waited for the slow device's "
			     "copy_to_device (%lu of %d served)%s",
		  served, FAST_PAGES,
		  discard == 2 ? ": a discard of pages the stuck migration holds waits for them, "
				 "and faults on every device queue behind that event" :
				 "");
	NOTE("while the slow copy was blocked, the fast toucher checked %lu of %d pages", served,
	     FAST_PAGES);
	for (size_t i = 0; i < SLOW_PAGES; i++) {
		if (i == gone)
			CHECK_ZERO_PAGE(f.sbuf + i * PAGE);
		else
			CHECK_PATTERN_PAGE(f.sbuf, i, 0x5105);
	}
	fixture_teardown(&f);
}

TEST(slow_migration_does_not_stall_faults_elsewhere_thread_mode)
{
	slow_migration_does_not_stall(UHMM_FAULT_THREAD, 0);
}

TEST(slow_migration_does_not_stall_faults_elsewhere_signal_mode)
{
	slow_migration_does_not_stall(UHMM_FAULT_SIGNAL, 0);
}

TEST(slow_migration_and_a_discard_beside_it_do_not_stall_faults_thread_mode)
{
	slow_migration_does_not_stall(UHMM_FAULT_THREAD, 1);
}

TEST(slow_migration_and_a_discard_beside_it_do_not_stall_faults_signal_mode)
{
	slow_migration_does_not_stall(UHMM_FAULT_SIGNAL, 1);
}

TEST(slow_migration_and_a_discard_of_its_pages_do_not_stall_faults_thread_mode)
{
	slow_migration_does_not_stall(UHMM_FAULT_THREAD, 2);
}

TEST(slow_migration_and_a_discard_of_its_pages_do_not_stall_faults_signal_mode)
{
	slow_migration_does_not_stall(UHMM_FAULT_SIGNAL, 2);
}

/* ---- a flood of events ---- */

struct flooder {
	struct uhmm *h;
	char *buf;
	bool remap;
	atomic_int stop;
	atomic_ulong events;
	pthread_t tid;
};

static void *flooder_main(void *arg)
{
	struct flooder *fl = arg;

	while (!atomic_load(&fl->stop)) {
		if (fl->remap) {
			/*
			 * Back and forth between two pages of its own. DONTUNMAP
			 * keeps the page it leaves mapped: a hole would be free
			 * address space, uhmm's own memory could be mapped there,
			 * and the next MREMAP_FIXED would clobber it (it did).
			 */
			char *other = (uintptr_t)fl->buf & PAGE ? fl->buf - PAGE : fl->buf + PAGE;
			void *m = mremap(fl->buf, PAGE, PAGE,
					 MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, other);

			CHECK(m == other);
			fl->buf = m;
		} else {
			fl->buf[0] = 1;
			CHECK_EQ(madvise(fl->buf, PAGE, MADV_DONTNEED), 0);
		}
		atomic_fetch_add(&fl->events, 1);
	}
	return NULL;
}

/*
 * One thread discards (or moves) a page of its own managed memory in a loop,
 * as allocators that purge or move freed memory do. Faults of other threads,
 * on other memory, must still make progress. (This test used to fail with
 * mremap: its own MREMAP_FIXED back onto the page it had left clobbered
 * whatever uhmm had mapped into that hole meanwhile, uhmm's state words for
 * the move included. It keeps both pages mapped now.)
 */
static void event_flood_does_not_starve(enum uhmm_fault_mode mode, bool remap)
{
	static struct toucher t;
	static struct flooder fl;
	struct fixture f;
	/*
	 * While any mremap of managed memory is under way (until its event is
	 * read and its thread has run again) the kernel refuses every fill of
	 * this userfaultfd (EAGAIN, its mmap_changing): a fault gets through
	 * only between two mremaps. They must still finish; the bound is
	 * generous for sanitizer builds and loaded machines. Twenty runs of
	 * the two tests here: thread mode 0.02-0.08 s, signal mode 0.00-1.7 s
	 * (median 0.01 s). Before the service thread handled events as it read
	 * them, it read on while the loop fed it, the unhandled events
	 * overflowed their slots, and every fault waited for all of them: signal
	 * mode took up to 12 s here and more than 24 s on a CI machine. With
	 * both CPUs kept busy by two other processes, thread mode still takes
	 * up to ~20 s: a fill lands only when the mremap thread is between two
	 * calls, and such moments are rare when it shares a CPU. Under ASan,
	 * signal mode takes 0.0-11 s in eight runs here and once took longer
	 * than 24 s on CI (58 of 64): each retry of a refused fill is a whole
	 * serve there, and retries keep missing the moment. The bound says
	 * "finishes", not "fast"; the README states the cost.
	 */
#if defined(__SANITIZE_ADDRESS__)
	const double slow = 20;
#else
	const double slow = 8;
#endif
	double liveness = remap ? slow * LIVENESS_S : LIVENESS_S, t0;
	bool done;
	unsigned long served;
	void *p = NULL;

	alarm((unsigned)(liveness + 45)); /* a stuck flood can hang teardown too */
	fixture_setup(&f, mode);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.fast), f.fbuf, FAST_PAGES * PAGE),
		 FAST_PAGES);
	if (remap) {
		/* Two pages, 2-page aligned: the page moves between them. */
		char *r = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);

		CHECK(r != MAP_FAILED);
		p = (void *)(((uintptr_t)r + 2 * PAGE - 1) & ~(2 * PAGE - 1));
		CHECK_EQ(uhmm_manage(f.h, p, 2 * PAGE), 0);
	} else {
		CHECK_EQ(uhmm_alloc(f.h, PAGE, &p), 0);
	}
	fl.h = f.h;
	fl.buf = p;
	fl.remap = remap;
	atomic_store(&fl.events, 0);
	atomic_store(&fl.stop, 0);
	CHECK_EQ(pthread_create(&fl.tid, NULL, flooder_main, &fl), 0);
	while (atomic_load(&fl.events) < 100)
		usleep(1000);
	toucher_start(&t, f.fbuf, FAST_PAGES, 0xfa57);
	t0 = harness_now();
	done = toucher_wait(&t, liveness);
	served = atomic_load(&t.done);
	NOTE("beside %lu %s, the toucher checked %lu of %d device-resident pages in %.2f s",
	     atomic_load(&fl.events), remap ? "mremaps" : "discards", served, FAST_PAGES,
	     harness_now() - t0);
	/* Fail now if stuck: joining stuck threads would hang the test instead. */
	CHECK_MSG(done, "faults waited for a stream of another thread's events to end");
	atomic_store(&fl.stop, 1);
	{
		unsigned long e = atomic_load(&fl.events);

		t0 = harness_now();
		while (pthread_tryjoin_np(fl.tid, NULL) && harness_now() - t0 < LIVENESS_S)
			usleep(1000);
		CHECK_MSG(harness_now() - t0 < LIVENESS_S,
			  "the flooding thread is stuck in its %s (%lu done): its event is never handled",
			  remap ? "mremap" : "madvise", e);
	}
	CHECK_EQ(pthread_join(t.tid, NULL), 0);
	CHECK_EQ(uhmm_sync(f.h), 0);
	if (remap)
		CHECK_GE(uhmm_unmanage(f.h, (void *)((uintptr_t)fl.buf & ~(2 * PAGE - 1)), 2 * PAGE), 0);
	else
		CHECK_EQ(uhmm_free(f.h, fl.buf, PAGE), 0);
	fixture_teardown(&f);
}

TEST(discard_flood_does_not_starve_faults_thread_mode)
{
	event_flood_does_not_starve(UHMM_FAULT_THREAD, false);
}

TEST(discard_flood_does_not_starve_faults_signal_mode)
{
	event_flood_does_not_starve(UHMM_FAULT_SIGNAL, false);
}

/*
 * Beside an mremap loop a fault gets through only between two mremaps (the
 * kernel refuses fills meanwhile). Under ThreadSanitizer thread mode's 64
 * faults take 2-3 s, but signal mode's take 0.3-24 s: TSan delivers a
 * signal only at its own next safe point, which lines the toucher's tries
 * up badly with the gaps. The other CI stages run signal mode.
 */
TEST(mremap_flood_does_not_starve_faults_thread_mode)
{
	event_flood_does_not_starve(UHMM_FAULT_THREAD, true);
}

TEST(mremap_flood_does_not_starve_faults_signal_mode)
{
#if defined(__SANITIZE_THREAD__)
	SKIP("under ThreadSanitizer signal-mode faults beside an mremap loop can take longer "
	     "than the bound (TSan defers signals); the plain and ASan stages run it");
#endif
	event_flood_does_not_starve(UHMM_FAULT_SIGNAL, true);
}

/* ---- uhmm_close while a fault is in flight ---- */

struct closer {
	struct uhmm *h;
	atomic_int finished;
	pthread_t tid;
};

static void *closer_main(void *arg)
{
	struct closer *c = arg;

	uhmm_close(c->h);
	atomic_store(&c->finished, 1);
	return NULL;
}

/*
 * The fault began before uhmm_close (which forbids touches *during* it):
 * close must wait for it, the toucher must get its data, and the driver's
 * region is removed afterwards as the contract says.
 */
static void close_with_fault_in_flight(enum uhmm_fault_mode mode)
{
	static struct toucher t;
	static struct closer c;
	struct fixture f;
	double t0;

	fixture_setup(&f, mode);
	CHECK_EQ(uhmm_migrate_to_device(f.slow->dm, f.sbuf, SLOW_PAGES * PAGE), SLOW_PAGES);
	gate_arm(&f.slow->from);
	toucher_start(&t, f.sbuf, 1, 0x5105);
	gate_wait_entered(&f.slow->from);

	c.h = f.h;
	atomic_store(&c.finished, 0);
	CHECK_EQ(pthread_create(&c.tid, NULL, closer_main, &c), 0);
	/* Give close every chance to go wrong while the fault is stuck. */
	t0 = harness_now();
	while (harness_now() - t0 < 0.3 && !atomic_load(&c.finished))
		usleep(1000);
	CHECK_MSG(!atomic_load(&t.finished), "the stuck fault finished before its copy did");
	NOTE("uhmm_close %s while the fault was stuck",
	     atomic_load(&c.finished) ? "returned" : "waited");
	atomic_store(&f.slow->from.open, 1);
	CHECK(toucher_wait(&t, 10));
	CHECK_EQ(pthread_join(t.tid, NULL), 0);
	CHECK_EQ(pthread_join(c.tid, NULL), 0);
	/* Closed: every page came home first, with its data; the memory is plain memory now. */
	{
		uint64_t exp[PAGE / 8];
		size_t bad = 0, first = 0;

		for (size_t i = 0; i < SLOW_PAGES; i++) {
			pattern_page(exp, i, 0x5105);
			if (memcmp(f.sbuf + i * PAGE, exp, PAGE) && !bad++)
				first = i;
		}
		if (bad)
			NOTE("after uhmm_close, %zu of %d pages of the slow device's range lost their "
			     "data (the first: page %zu, %s)",
			     bad, SLOW_PAGES, first,
			     page_is_zero(f.sbuf + first * PAGE) ? "zeros" : "other data");
	}
	for (size_t i = 0; i < SLOW_PAGES; i++)
		CHECK_PATTERN_PAGE(f.sbuf, i, 0x5105);
	for (size_t i = 0; i < FAST_PAGES; i++)
		CHECK_PATTERN_PAGE(f.fbuf, i, 0xfa57);
	/* The drivers still remove their regions (the last reference frees the handle). */
	slow_remove(f.slow);
	CHECK_EQ(uhmm_sim_destroy(f.fast), 0);
	unmap(f.sbuf, SLOW_PAGES * PAGE);
	unmap(f.fbuf, FAST_PAGES * PAGE);
}

TEST(close_with_a_fault_in_flight_thread_mode)
{
	close_with_fault_in_flight(UHMM_FAULT_THREAD);
}

TEST(close_with_a_fault_in_flight_signal_mode)
{
	close_with_fault_in_flight(UHMM_FAULT_SIGNAL);
}

/*
 * uhmm_close brings every device-resident page home (its contract). Regression
 * test: from 51430f5 to d33dae5 it did not (it marked the handle closed, then
 * its own migrations home were refused with -ESHUTDOWN), so every page still
 * on a device read zeros after close.
 */
static void close_brings_pages_home(enum uhmm_fault_mode mode)
{
	struct fixture f;
	size_t lost = 0;

	fixture_setup(&f, mode);
	CHECK_EQ(uhmm_migrate_to_device(f.slow->dm, f.sbuf, SLOW_PAGES * PAGE), SLOW_PAGES);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.fast), f.fbuf, FAST_PAGES * PAGE),
		 FAST_PAGES);
	uhmm_close(f.h);
	for (size_t i = 0; i < SLOW_PAGES; i++) {
		uint64_t exp[PAGE / 8];

		pattern_page(exp, i, 0x5105);
		lost += memcmp(f.sbuf + i * PAGE, exp, PAGE) != 0;
	}
	for (size_t i = 0; i < FAST_PAGES; i++) {
		uint64_t exp[PAGE / 8];

		pattern_page(exp, i, 0xfa57);
		lost += memcmp(f.fbuf + i * PAGE, exp, PAGE) != 0;
	}
	NOTE("after uhmm_close: %zu of %d device-resident pages lost", lost,
	     SLOW_PAGES + FAST_PAGES);
	CHECK_EQ(lost, 0);
	slow_remove(f.slow);
	CHECK_EQ(uhmm_sim_destroy(f.fast), 0);
	unmap(f.sbuf, SLOW_PAGES * PAGE);
	unmap(f.fbuf, FAST_PAGES * PAGE);
}

TEST(close_brings_every_device_page_home_thread_mode)
{
	close_brings_pages_home(UHMM_FAULT_THREAD);
}

TEST(close_brings_every_device_page_home_signal_mode)
{
	close_brings_pages_home(UHMM_FAULT_SIGNAL);
}

/* ---- the old address of a moved range, reused while the remap event waits ---- */

struct manager {
	struct uhmm *h;
	void *addr;
	size_t len;
	int ret;
	atomic_int finished;
	pthread_t tid;
};

static void *manager_main(void *arg)
{
	struct manager *m = arg;

	m->ret = uhmm_manage(m->h, m->addr, m->len);
	atomic_store(&m->finished, 1);
	return NULL;
}

/*
 * Regression test. mremap moves a range while a migration holds some of its
 * pages (here: stuck in copy_to_device), so the events of the move wait for
 * their locks. Meanwhile the program maps fresh memory at the old address, as
 * any allocator may, and gives it to uhmm: uhmm_manage must see the move (wait
 * for its events, as faults and migrations do), not refuse the fresh memory
 * with -EEXIST because the old range is still in its table (it did before
 * 51430f5; uhmm_alloc, whose mmap may return the old address, failed with
 * -ENOMEM the same way).
 */
static void remap_then_reuse(enum uhmm_fault_mode mode)
{
	static struct migrator m;
	static struct manager mg;
	struct fixture f;
	char *dst, *moved, *fresh;
	const size_t len = SLOW_PAGES * PAGE;
	double t0;

	fixture_setup(&f, mode);
	dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	gate_arm(&f.slow->to);
	migrator_start(&m, f.slow->dm, one_chunk(f.sbuf, 4), 4 * PAGE);
	gate_wait_entered(&f.slow->to);

	moved = mremap(f.sbuf, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst);
	fresh = mmap(f.sbuf, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		     -1, 0);
	CHECK(fresh == f.sbuf);
	memset(fresh, 0x6b, len);
	mg.h = f.h;
	mg.addr = fresh;
	mg.len = len;
	CHECK_EQ(pthread_create(&mg.tid, NULL, manager_main, &mg), 0);
	t0 = harness_now();
	while (!atomic_load(&mg.finished) && harness_now() - t0 < 0.3)
		usleep(1000);
	NOTE("uhmm_manage of fresh memory at the old address, with the move's events held up: %s",
	     atomic_load(&mg.finished) ? "returned at once" : "waits");
	atomic_store(&f.slow->to.open, 1);
	CHECK_EQ(pthread_join(m.tid, NULL), 0);
	CHECK_EQ(pthread_join(mg.tid, NULL), 0);
	CHECK_EQ(m.ret, 4);
	CHECK_EQ(uhmm_sync(f.h), 0);

	/* The moved range kept every byte, wherever its pages are. */
	for (size_t i = 0; i < SLOW_PAGES; i++)
		CHECK_PATTERN_PAGE(moved, i, 0x5105);
	CHECK_EQ(mg.ret, 0);
	CHECK_EQ(uhmm_page_state(f.h, fresh), UHMM_PAGE_SYSTEM);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.fast), fresh, 4 * PAGE), 4);
	CHECK_EQ(fresh[0], 0x6b);
	CHECK_GE(uhmm_unmanage(f.h, fresh, len), 0);

	CHECK_EQ(uhmm_free(f.h, moved, len), 0);
	unmap(fresh, len);
	CHECK_EQ(uhmm_free(f.h, f.fbuf, FAST_PAGES * PAGE), 0);
	slow_remove(f.slow);
	CHECK_EQ(uhmm_sim_destroy(f.fast), 0);
	uhmm_close(f.h);
}

/*
 * A migration to a device has taken pages from the CPU and is stuck in its
 * copy; the program moves the range with mremap; then the copy fails, so the
 * migration puts the pages back: at their new address, with every byte
 * (before, it put them back at the old address, which was gone, and they
 * were lost).
 */
static void remap_while_migration_fails(enum uhmm_fault_mode mode)
{
	static struct migrator m;
	struct fixture f;
	char *dst, *moved;
	const size_t len = SLOW_PAGES * PAGE;

	fixture_setup(&f, mode);
	dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	gate_arm(&f.slow->to);
	atomic_store(&f.slow->to.fail, 1);
	migrator_start(&m, f.slow->dm, one_chunk(f.sbuf, 4), 4 * PAGE);
	gate_wait_entered(&f.slow->to);
	moved = mremap(f.sbuf, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst);
	atomic_store(&f.slow->to.open, 1);
	CHECK_EQ(pthread_join(m.tid, NULL), 0);
	atomic_store(&f.slow->to.fail, 0);
	CHECK_EQ(m.ret, 0); /* nothing migrated */
	CHECK_EQ(uhmm_sync(f.h), 0);
	for (size_t i = 0; i < SLOW_PAGES; i++)
		CHECK_PATTERN_PAGE(moved, i, 0x5105);
	f.sbuf = moved;
	fixture_teardown(&f);
}

TEST(remap_while_a_migration_fails_keeps_the_pages_thread_mode)
{
	remap_while_migration_fails(UHMM_FAULT_THREAD);
}

TEST(remap_while_a_migration_fails_keeps_the_pages_signal_mode)
{
	remap_while_migration_fails(UHMM_FAULT_SIGNAL);
}

TEST(mremap_then_manage_at_the_old_address_thread_mode)
{
	remap_then_reuse(UHMM_FAULT_THREAD);
}

TEST(mremap_then_manage_at_the_old_address_signal_mode)
{
	remap_then_reuse(UHMM_FAULT_SIGNAL);
}
