/* exclusive.c - exclusive access for device atomics (uhmm_make_exclusive): pages move to uhmm's exclusive region, not to device memory; the device reaches them there; the first CPU access revokes, with every byte the device wrote. */
/* uhmm-test-label: concurrent */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define NP 16

/* A device of our own: records what it is told, ignores what it caused. */
struct dev {
	struct uhmm_interval_notifier n; /* first */
	pthread_mutex_t lock;
	int excl_own, excl_other, migrate_other, discard, unmap;
	void *self;
};

static bool dev_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notify_range *r,
			   uint64_t cur_seq)
{
	struct dev *d = (struct dev *)n;

	pthread_mutex_lock(&d->lock);
	if (r->event == UHMM_NOTIFY_EXCLUSIVE && r->owner == d->self)
		d->excl_own++;
	else if (r->event == UHMM_NOTIFY_EXCLUSIVE)
		d->excl_other++;
	else if (r->event == UHMM_NOTIFY_MIGRATE && r->owner != d->self)
		d->migrate_other++;
	else if (r->event == UHMM_NOTIFY_DISCARD)
		d->discard++;
	else if (r->event == UHMM_NOTIFY_UNMAP)
		d->unmap++;
	uhmm_interval_set_seq(n, cur_seq);
	pthread_mutex_unlock(&d->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops dev_ops = { .invalidate = dev_invalidate };

struct fx {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct dev d;
	char *p;
	void *pages[NP];
};

static void fx_setup(struct fx *f, enum uhmm_fault_mode mode)
{
	void *p = NULL;

	memset(f, 0, sizeof(*f));
	f->h = uhmm_test_open_mode(mode);
	uhmm_test_require_migrate(f->h);
	f->sim = uhmm_test_sim(f->h, NP);
	CHECK_EQ(uhmm_alloc(f->h, NP * PAGE, &p), 0);
	f->p = p;
	pattern_fill(f->p, NP * PAGE, 0xe8c1);
	pthread_mutex_init(&f->d.lock, NULL);
	f->d.self = &f->d;
	CHECK_EQ(uhmm_interval_notifier_insert(&f->d.n, f->h, (uintptr_t)f->p, NP * PAGE, &dev_ops),
		 0);
}

static void fx_teardown(struct fx *f)
{
	uhmm_interval_notifier_remove(&f->d.n);
	CHECK_EQ(uhmm_free(f->h, f->p, NP * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

/* Make every page exclusive, the device's way: make, map (nothing here), unlock. */
static void make_all(struct fx *f)
{
	CHECK_EQ(uhmm_make_exclusive(f->h, f->p, NP * PAGE, &f->d, f->pages), NP);
	for (size_t i = 0; i < NP; i++)
		CHECK(f->pages[i] != NULL);
	uhmm_exclusive_unlock(f->h, f->p, NP * PAGE, f->pages);
}

/*
 * The device gets the pages (their data where it reaches them), the CPU loses
 * them, and no device memory is spent; the device's writes are what the CPU
 * reads after it takes each page back, one page per touch.
 */
static void device_writes_come_back(enum uhmm_fault_mode mode)
{
	struct fx f;
	uint64_t exp[PAGE / 8];

	fx_setup(&f, mode);
	make_all(&f);
	/* One notification per 2 MiB chunk the buffer spans (it may straddle one). */
	CHECK_EQ(f.d.excl_own, (int)((((uintptr_t)f.p + NP * PAGE - 1) >> 21) -
				     ((uintptr_t)f.p >> 21) + 1));
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), NP);
	CHECK_EQ(dm_in_use(uhmm_sim_devmem(f.sim)), 0);
	for (size_t i = 0; i < NP; i++) {
		CHECK(f.pages[i] != f.p + i * PAGE);
		pattern_page(exp, i, 0xe8c1);
		CHECK_MEM(f.pages[i], exp, PAGE);
		/* Device atomics: every word + i + 1, through the page it holds. */
		for (size_t w = 0; w < PAGE / 8; w++)
			__atomic_fetch_add((uint64_t *)f.pages[i] + w, i + 1, __ATOMIC_RELAXED);
	}
	/* Each touch revokes one page: the device is told, the CPU sees its writes. */
	for (size_t i = 0; i < NP; i++) {
		uint64_t *cpu = (uint64_t *)(f.p + i * PAGE);

		pattern_page(exp, i, 0xe8c1);
		for (size_t w = 0; w < PAGE / 8; w++)
			exp[w] += i + 1;
		CHECK_MEM(cpu, exp, PAGE);
		CHECK_STATE(f.h, cpu, UHMM_PAGE_SYSTEM);
		if (i + 1 < NP)
			CHECK_STATE(f.h, f.p + (i + 1) * PAGE, UHMM_PAGE_DEVICE);
	}
	CHECK_EQ(f.d.migrate_other, NP);
	CHECK_EQ(f.d.excl_other, 0);
	CHECK_EQ(dm_in_use(uhmm_sim_devmem(f.sim)), 0);
	fx_teardown(&f);
}

TEST(device_writes_come_back_at_the_first_touch_thread_mode)
{
	device_writes_come_back(UHMM_FAULT_THREAD);
}

TEST(device_writes_come_back_at_the_first_touch_signal_mode)
{
	device_writes_come_back(UHMM_FAULT_SIGNAL);
}

struct toucher {
	char *p;
	atomic_int done;
	char seen;
	pthread_t tid;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	t->seen = *(volatile char *)t->p;
	atomic_store(&t->done, 1);
	return NULL;
}

/* Start a thread that reads @p; give it 0.1 s. Whether it is done by then. */
static bool toucher_started_and_done(struct toucher *t, char *p)
{
	double t0;

	t->p = p;
	atomic_store(&t->done, 0);
	CHECK_EQ(pthread_create(&t->tid, NULL, toucher_main, t), 0);
	t0 = harness_now();
	while (harness_now() - t0 < 0.1 && !atomic_load(&t->done))
		usleep(1000);
	return atomic_load(&t->done);
}

/*
 * Returned locked, as the kernel returns the folio locked: a CPU access
 * waits until the device's mapping is in place (uhmm_exclusive_unlock), and
 * then sees what the device wrote before.
 */
static void cpu_waits_for_unlock(enum uhmm_fault_mode mode)
{
	static struct toucher t;
	struct fx f;

	fx_setup(&f, mode);
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p, NP * PAGE, &f.d, f.pages), NP);
	CHECK_MSG(!toucher_started_and_done(&t, f.p),
		  "a CPU access went through before the unlock");
	*(volatile char *)f.pages[0] = 0x3c;
	uhmm_exclusive_unlock(f.h, f.p, NP * PAGE, f.pages);
	CHECK_EQ(pthread_join(t.tid, NULL), 0);
	CHECK_EQ(t.seen, 0x3c);
	CHECK_EQ(f.p[0], 0x3c);
	fx_teardown(&f);
}

TEST(cpu_access_waits_for_the_unlock_thread_mode)
{
	cpu_waits_for_unlock(UHMM_FAULT_THREAD);
}

TEST(cpu_access_waits_for_the_unlock_signal_mode)
{
	cpu_waits_for_unlock(UHMM_FAULT_SIGNAL);
}

/* Holes become pages of zeros; pages on a device come home first. */
static void holes_and_device_pages(enum uhmm_fault_mode mode)
{
	struct fx f;

	fx_setup(&f, mode);
	CHECK_EQ(madvise(f.p, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.sim), f.p + PAGE, 2 * PAGE), 2);
	make_all(&f);
	CHECK(page_is_zero(f.pages[0]));
	CHECK_EQ(dm_in_use(uhmm_sim_devmem(f.sim)), 0);
	CHECK_ZERO_PAGE(f.p);
	for (size_t i = 1; i < NP; i++)
		CHECK_PATTERN_PAGE(f.p, i, 0xe8c1);
	fx_teardown(&f);
}

TEST(holes_become_zeros_device_pages_come_home_first_thread_mode)
{
	holes_and_device_pages(UHMM_FAULT_THREAD);
}

TEST(holes_become_zeros_device_pages_come_home_first_signal_mode)
{
	holes_and_device_pages(UHMM_FAULT_SIGNAL);
}

/* A discard drops the device's copy with the page; an unmap, the whole range. */
static void discard_and_unmap(enum uhmm_fault_mode mode)
{
	struct fx f;

	fx_setup(&f, mode);
	make_all(&f);
	CHECK_EQ(madvise(f.p + 3 * PAGE, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sync(f.h), 0);
	CHECK_STATE(f.h, f.p + 3 * PAGE, UHMM_PAGE_EMPTY);
	CHECK_ZERO_PAGE(f.p + 3 * PAGE);
	CHECK_GE(f.d.discard, 1);
	CHECK_PATTERN_PAGE(f.p, 4, 0xe8c1);
	/* Made exclusive again, then unmapped: nothing comes back, nothing leaks. */
	make_all(&f);
	CHECK_EQ(munmap(f.p, NP * PAGE), 0);
	CHECK_EQ(uhmm_sync(f.h), 0);
	CHECK_GE(f.d.unmap, 1);
	CHECK_EQ(uhmm_page_state(f.h, f.p), -ENOENT);
	/* The range is gone: map it again for the teardown's uhmm_free. */
	{
		void *p = NULL;

		CHECK_EQ(uhmm_alloc(f.h, NP * PAGE, &p), 0);
		f.p = p;
	}
	fx_teardown(&f);
}

TEST(discard_and_unmap_drop_exclusive_pages_thread_mode)
{
	discard_and_unmap(UHMM_FAULT_THREAD);
}

TEST(discard_and_unmap_drop_exclusive_pages_signal_mode)
{
	discard_and_unmap(UHMM_FAULT_SIGNAL);
}

/* mremap carries the pages: the new address revokes, with the data. */
static void remap_keeps_data(enum uhmm_fault_mode mode)
{
	struct fx f;
	char *dst, *moved;

	fx_setup(&f, mode);
	make_all(&f);
	dst = mmap(NULL, NP * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	moved = mremap(f.p, NP * PAGE, NP * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst);
	CHECK_EQ(uhmm_sync(f.h), 0);
	CHECK_STATE(f.h, moved, UHMM_PAGE_DEVICE);
	CHECK_PATTERN_PAGES(moved, NP, 0xe8c1);
	f.p = moved;
	fx_teardown(&f);
}

TEST(mremap_carries_exclusive_pages_thread_mode)
{
	remap_keeps_data(UHMM_FAULT_THREAD);
}

TEST(mremap_carries_exclusive_pages_signal_mode)
{
	remap_keeps_data(UHMM_FAULT_SIGNAL);
}

static void child_writes(void *arg)
{
	char *p = arg;

	/* The child sees the device's writes, and its own stay its own. */
	CHECK_EQ(p[0], 0x11);
	CHECK_EQ(p[PAGE], 0x22);
	p[0] = 0x77;
	CHECK_EQ(p[0], 0x77);
}

/* Fork: the child reads what the device wrote; neither side sees the other's later writes. */
static void fork_keeps_data(enum uhmm_fault_mode mode)
{
	struct fx f;
	int status;

	fx_setup(&f, mode);
	make_all(&f);
	*(char *)f.pages[0] = 0x11;
	*(char *)f.pages[1] = 0x22;
	status = harness_run_child(child_writes, f.p);
	CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %s",
		  harness_status_str(status));
	CHECK_EQ(f.p[0], 0x11);
	CHECK_EQ(f.p[PAGE], 0x22);
	for (size_t i = 2; i < NP; i++)
		CHECK_PATTERN_PAGE(f.p, i, 0xe8c1);
	fx_teardown(&f);
}

TEST(fork_child_sees_device_writes_and_keeps_its_own_thread_mode)
{
	fork_keeps_data(UHMM_FAULT_THREAD);
}

TEST(fork_child_sees_device_writes_and_keeps_its_own_signal_mode)
{
	fork_keeps_data(UHMM_FAULT_SIGNAL);
}

/* Unmanage and close bring exclusive pages home, with the device's writes. */
TEST(unmanage_and_close_bring_exclusive_pages_home)
{
	struct fx f;
	char *m;

	fx_setup(&f, UHMM_FAULT_AUTO);
	m = map_anon(NP * PAGE);
	pattern_fill(m, NP * PAGE, 0x4a11);
	CHECK_EQ(uhmm_manage(f.h, m, NP * PAGE), 0);
	make_all(&f);
	*(char *)f.pages[5] = 0x5f;
	CHECK_EQ(uhmm_make_exclusive(f.h, m, NP * PAGE, &f.d, f.pages), NP);
	uhmm_exclusive_unlock(f.h, m, NP * PAGE, f.pages);
	*(char *)f.pages[2] = 0x2f;
	CHECK_GE(uhmm_unmanage(f.h, m, NP * PAGE), 0);
	CHECK_EQ(m[2 * PAGE], 0x2f);
	m[2 * PAGE] = pattern_word(2 * PAGE, 0x4a11) & 0xff;
	CHECK_PATTERN_PAGES(m, NP, 0x4a11);
	unmap(m, NP * PAGE);
	/* Close with exclusive pages of a managed range: they come home first. */
	uhmm_interval_notifier_remove(&f.d.n);
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	uhmm_close(f.h);
	CHECK_EQ(f.p[5 * PAGE], 0x5f);
	unmap(f.p, NP * PAGE);
}

TEST(make_exclusive_refuses_bad_input)
{
	struct fx f;
	char *plain = map_anon(PAGE);

	fx_setup(&f, UHMM_FAULT_AUTO);
	CHECK_EQ(uhmm_make_exclusive(NULL, f.p, PAGE, &f.d, f.pages), -EINVAL);
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p, PAGE, NULL, f.pages), -EINVAL);
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p, PAGE, &f.d, NULL), -EINVAL);
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p + 1, PAGE, &f.d, f.pages), -EINVAL);
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p, 0, &f.d, f.pages), -EINVAL);
	CHECK_EQ(uhmm_make_exclusive(f.h, plain, PAGE, &f.d, f.pages), -ENOENT);
	CHECK_EQ(munmap(plain, PAGE), 0); /* nothing mapped there now */
	CHECK_EQ(uhmm_make_exclusive(f.h, plain, PAGE, &f.d, f.pages), -EFAULT);
	plain = map_anon(PAGE);
	/* Atomics write: a read-only mapping is refused, as the kernel does. */
	CHECK_EQ(mprotect(f.p, PAGE, PROT_READ), 0);
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p, 2 * PAGE, &f.d, f.pages), -EPERM);
	CHECK_EQ(mprotect(f.p, PAGE, PROT_READ | PROT_WRITE), 0);
	/* Nothing was taken: the pages are where they were. */
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_SYSTEM), NP);
	uhmm_exclusive_unlock(NULL, f.p, PAGE, f.pages);
	uhmm_exclusive_unlock(f.h, f.p, PAGE, NULL);
	unmap(plain, PAGE);
	fx_teardown(&f);
}

/* Device atomics and CPU increments of the same counters race: none is lost. */
struct racer {
	struct fx *f;
	atomic_int stop;
	unsigned long rounds;
	pthread_t tid;
};

static void *device_main(void *arg)
{
	struct racer *r = arg;
	void *pages[NP];

	while (!atomic_load(&r->stop)) {
		int n = uhmm_make_exclusive(r->f->h, r->f->p, NP * PAGE, &r->f->d, pages);

		CHECK_GE(n, 0);
		for (size_t i = 0; i < NP; i++)
			if (pages[i])
				__atomic_fetch_add((uint64_t *)pages[i], 1, __ATOMIC_RELAXED);
		uhmm_exclusive_unlock(r->f->h, r->f->p, NP * PAGE, pages);
		r->rounds += (unsigned long)n;
	}
	return NULL;
}

static void atomics_race_cpu(enum uhmm_fault_mode mode)
{
	static struct racer r;
	struct fx f;
	unsigned long cpu = 0, total = 0;
	double t0;

	fx_setup(&f, mode);
	memset(f.p, 0, NP * PAGE);
	r.f = &f;
	r.rounds = 0;
	atomic_store(&r.stop, 0);
	CHECK_EQ(pthread_create(&r.tid, NULL, device_main, &r), 0);
	t0 = harness_now();
	while (harness_now() - t0 < 0.3) {
		for (size_t i = 0; i < NP; i++)
			__atomic_fetch_add((uint64_t *)(f.p + i * PAGE), 1, __ATOMIC_RELAXED);
		cpu += NP;
	}
	atomic_store(&r.stop, 1);
	CHECK_EQ(pthread_join(r.tid, NULL), 0);
	for (size_t i = 0; i < NP; i++)
		total += *(uint64_t *)(f.p + i * PAGE);
	NOTE("%lu CPU increments, %lu device increments", cpu, r.rounds);
	CHECK_GT(r.rounds, 0);
	CHECK_EQ(total, cpu + r.rounds);
	fx_teardown(&f);
}

TEST(device_atomics_race_cpu_increments_thread_mode)
{
	atomics_race_cpu(UHMM_FAULT_THREAD);
}

TEST(device_atomics_race_cpu_increments_signal_mode)
{
	atomics_race_cpu(UHMM_FAULT_SIGNAL);
}

/*
 * uhmm_exclusive_unlock lets go only of the locks its make_exclusive took:
 * a second call, or one with a stale array, must not unlock a page someone
 * else holds (here: the pages made exclusive again, still held).
 */
static void unlock_twice(enum uhmm_fault_mode mode)
{
	static struct toucher t;
	struct fx f;
	void *old[NP];
	bool done;

	fx_setup(&f, mode);
	make_all(&f);
	memcpy(old, f.pages, sizeof(old));
	uhmm_exclusive_unlock(f.h, f.p, NP * PAGE, f.pages); /* again: nothing held */
	CHECK_PATTERN_PAGE(f.p, 0, 0xe8c1); /* revokes page 0 */
	CHECK_EQ(uhmm_make_exclusive(f.h, f.p, NP * PAGE, &f.d, f.pages), NP);
	/* Page 0 came back elsewhere in the region; the others stayed where they were. */
	uhmm_exclusive_unlock(f.h, f.p, NP * PAGE, old);
	done = toucher_started_and_done(&t, f.p + PAGE);
	if (f.pages[1] == old[1])
		NOTE("page 1 is at the same place in the region: the stale unlock let it go");
	else
		CHECK_MSG(!done, "a stale unlock let go of a page another call holds");
	uhmm_exclusive_unlock(f.h, f.p, NP * PAGE, f.pages);
	CHECK_EQ(pthread_join(t.tid, NULL), 0);
	CHECK_PATTERN_PAGES(f.p, NP, 0xe8c1);
	fx_teardown(&f);
}

TEST(unlock_twice_or_with_a_stale_array_is_harmless_thread_mode)
{
	unlock_twice(UHMM_FAULT_THREAD);
}

TEST(unlock_twice_or_with_a_stale_array_is_harmless_signal_mode)
{
	unlock_twice(UHMM_FAULT_SIGNAL);
}
