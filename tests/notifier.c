/* notifier.c - interval notifiers: who is told what, when, and the read_begin/retry protocol. */
/* uhmm-test-label: concurrent */
#include "harness.h"

#define NPAGES 16

/*
 * What the callback saw. It runs in other threads (the service thread, a
 * fault worker), which hand the result back through the kernel (a wake) that
 * ThreadSanitizer cannot see: the test reads under the callback's lock, as a
 * driver would.
 */
struct seen {
	int calls;
	int by_event[UHMM_NOTIFY_EXCLUSIVE + 1];
	struct uhmm_notify_range last;
	int ignored;
};

struct rec {
	struct uhmm_interval_notifier n;
	pthread_mutex_t lock;
	struct seen seen;
	void *self; /* owner whose migrations this device ignores */
};

static bool rec_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notify_range *r,
			   uint64_t cur_seq)
{
	struct rec *x = (struct rec *)n;

	pthread_mutex_lock(&x->lock);
	if (r->event == UHMM_NOTIFY_MIGRATE && x->self && r->owner == x->self) {
		x->seen.ignored++;
	} else {
		x->seen.calls++;
		x->seen.by_event[r->event]++;
		x->seen.last = *r;
		uhmm_interval_set_seq(n, cur_seq);
	}
	pthread_mutex_unlock(&x->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops rec_ops = { .invalidate = rec_invalidate };

static void rec_init(struct rec *x)
{
	memset(x, 0, sizeof(*x));
	pthread_mutex_init(&x->lock, NULL);
}

static struct seen seen(struct rec *x)
{
	struct seen s;

	pthread_mutex_lock(&x->lock);
	s = x->seen;
	pthread_mutex_unlock(&x->lock);
	return s;
}

static void forget_calls(struct rec *x)
{
	pthread_mutex_lock(&x->lock);
	x->seen.calls = 0;
	pthread_mutex_unlock(&x->lock);
}

TEST(insert_refuses_bad_arguments)
{
	struct uhmm *h;
	struct rec x;
	static const struct uhmm_interval_notifier_ops none = { 0 };

	uhmm_test_open(&h);
	rec_init(&x);
	CHECK_EQ(uhmm_interval_notifier_insert(NULL, h, 4096, PAGE, &rec_ops), -EINVAL);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, NULL, 4096, PAGE, &rec_ops), -EINVAL);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, 4096, 0, &rec_ops), -EINVAL);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, UINTPTR_MAX - PAGE, 4 * PAGE, &rec_ops),
		 -EINVAL);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, 4096, PAGE, &none), -EINVAL);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, 4096, PAGE, NULL), -EINVAL);
	uhmm_close(h);
}

TEST(migration_discard_unmap_notify_with_event_and_range)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct rec x;
	void *p;
	char *buf;

	rec_init(&x);
	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	buf = p;
	memset(buf, 1, NPAGES * PAGE);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, (uintptr_t)buf, NPAGES * PAGE, &rec_ops), 0);

	/* A migration by the core's helper: MIGRATE, owner = the target device. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, NPAGES * PAGE), NPAGES);
	CHECK_GE(seen(&x).by_event[UHMM_NOTIFY_MIGRATE], 1);
	CHECK_PTR(seen(&x).last.owner, uhmm_devmem_owner(dm));
	/* In chunks of up to 2 MiB: the last one ends where the range does. */
	CHECK_GE(seen(&x).last.start, (uintptr_t)buf);
	CHECK_EQ(seen(&x).last.end, (uintptr_t)buf + NPAGES * PAGE);

	/* Discard of two pages: DISCARD over exactly them, once the event is handled. */
	forget_calls(&x);
	CHECK_EQ(madvise(buf + 2 * PAGE, 2 * PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(seen(&x).by_event[UHMM_NOTIFY_DISCARD], 1);
	CHECK_EQ(seen(&x).last.event, UHMM_NOTIFY_DISCARD);
	CHECK_EQ(seen(&x).last.start, (uintptr_t)buf + 2 * PAGE);
	CHECK_EQ(seen(&x).last.end, (uintptr_t)buf + 4 * PAGE);

	/* A CPU touch brings a page home: a MIGRATE the sim device caused (its owner). */
	forget_calls(&x);
	CHECK_EQ(buf[8 * PAGE], 1);
	CHECK_GE(seen(&x).calls, 1);
	CHECK_EQ(seen(&x).last.event, UHMM_NOTIFY_MIGRATE);
	CHECK_EQ(seen(&x).last.start, (uintptr_t)buf + 8 * PAGE);

	/* munmap of the tail: UNMAP. */
	CHECK_EQ(munmap(buf + 12 * PAGE, 4 * PAGE), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(seen(&x).by_event[UHMM_NOTIFY_UNMAP], 1);
	CHECK_EQ(seen(&x).last.start, (uintptr_t)buf + 12 * PAGE);

	/* Removed: no more calls, even for changes in its interval. */
	uhmm_interval_notifier_remove(&x.n);
	forget_calls(&x);
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, 12 * PAGE), 12 - 2 - 1);
	CHECK_EQ(seen(&x).calls, 0);
	CHECK_EQ(uhmm_free(h, buf, 12 * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(a_device_can_ignore_its_own_migrations)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct rec x;
	uint64_t seq;
	void *p;

	rec_init(&x);
	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	memset(p, 3, NPAGES * PAGE);
	x.self = uhmm_devmem_owner(dm);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, (uintptr_t)p, NPAGES * PAGE, &rec_ops), 0);
	seq = uhmm_interval_read_begin(&x.n);
	CHECK_EQ(uhmm_migrate_to_device(dm, p, NPAGES * PAGE), NPAGES);
	CHECK_GE(seen(&x).ignored, 1);
	CHECK_EQ(seen(&x).calls, 0);
	/* Its own migration does not force a retry... */
	CHECK(!uhmm_interval_read_retry(&x.n, seq));
	/* ...anyone else's does. */
	CHECK_EQ(uhmm_migrate_to_ram(h, p, NPAGES * PAGE), NPAGES);
	CHECK_GE(seen(&x).calls, 1);
	CHECK(uhmm_interval_read_retry(&x.n, seq));
	seq = uhmm_interval_read_begin(&x.n);
	CHECK(!uhmm_interval_read_retry(&x.n, seq));
	uhmm_interval_notifier_remove(&x.n);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(only_overlapping_notifiers_are_told)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	struct rec lo, hi;
	void *p;
	char *buf;

	rec_init(&lo);
	rec_init(&hi);
	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	buf = p;
	memset(buf, 5, NPAGES * PAGE);
	CHECK_EQ(uhmm_interval_notifier_insert(&lo.n, h, (uintptr_t)buf, 8 * PAGE, &rec_ops), 0);
	CHECK_EQ(uhmm_interval_notifier_insert(&hi.n, h, (uintptr_t)buf + 8 * PAGE, 8 * PAGE,
					       &rec_ops), 0);
	CHECK_EQ(madvise(buf + 9 * PAGE, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(seen(&lo).calls, 0);
	CHECK_EQ(seen(&hi).calls, 1);
	CHECK_EQ(seen(&hi).last.event, UHMM_NOTIFY_DISCARD);
	uhmm_interval_notifier_remove(&lo.n);
	uhmm_interval_notifier_remove(&hi.n);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(mremap_notifies_the_old_side_and_unmanage_notifies)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	struct rec x;
	char *buf, *dst, *moved;

	rec_init(&x);
	buf = mmap(NULL, 2 * NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	CHECK(buf != MAP_FAILED);
	/* The destination stays reserved (PROT_NONE): a hole could be taken meanwhile. */
	dst = buf + NPAGES * PAGE;
	CHECK(mmap(dst, NPAGES * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
	      dst);
	memset(buf, 9, NPAGES * PAGE);
	CHECK_EQ(uhmm_manage(h, buf, NPAGES * PAGE), 0);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	CHECK_EQ(uhmm_interval_notifier_insert(&x.n, h, (uintptr_t)buf, 2 * NPAGES * PAGE, &rec_ops),
		 0);
	moved = mremap(buf, NPAGES * PAGE, NPAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(seen(&x).by_event[UHMM_NOTIFY_REMAP], 1);
	CHECK_EQ(seen(&x).last.start, (uintptr_t)buf);
	for (size_t i = 0; i < NPAGES * PAGE; i += PAGE)
		CHECK_EQ(moved[i], 9);
	CHECK_EQ(uhmm_unmanage(h, moved, NPAGES * PAGE), 0);
	CHECK_EQ(seen(&x).by_event[UHMM_NOTIFY_UNMANAGE], 1);
	uhmm_interval_notifier_remove(&x.n);
	munmap(moved, NPAGES * PAGE);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}
