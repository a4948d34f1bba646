/* dup.c - read duplication: a device read of READ_MOSTLY memory gets its own copy, the CPU keeps its page write-protected, and a write by anyone drops the copy first. */
/* uhmm-test-label: concurrent */
#include "hmm_common.h"

#include <sys/wait.h>

#define NP 32
#define WORDS (PAGE / 8)

struct kargs {
	uint64_t *buf;
	uint64_t *out; /* unmanaged: one word per page */
	uint64_t add;
};

/* The device reads each page: every word summed into out[i]. */
static void k_sum(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;
	uint64_t s = 0;

	for (size_t w = 0; w < WORDS; w++)
		s += uhmm_sim_load_u64(ctx, &a->buf[i * WORDS + w]);
	uhmm_sim_store_u64(ctx, &a->out[i], s);
}

static void k_add(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;
	uint64_t *pg = a->buf + i * WORDS;

	for (size_t w = 0; w < WORDS; w++)
		uhmm_sim_store_u64(ctx, &pg[w], uhmm_sim_load_u64(ctx, &pg[w]) + a->add);
}

struct fx {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	uint64_t *p;
	uint64_t out[NP];
	struct kargs ka;
};

static uint64_t page_sum(const uint64_t *p, size_t i)
{
	uint64_t s = 0;

	for (size_t w = 0; w < WORDS; w++)
		s += p[i * WORDS + w];
	return s;
}

/* NP pages, word k holding k, READ_MOSTLY, and a device read that duplicates them all. */
static void fx_setup(struct fx *f, enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_sim_opts, o, .npages = 2 * NP);

	f->h = uhmm_test_open_mode(mode);
	uhmm_test_require_migrate(f->h);
	if (!(uhmm_features(f->h) & UHMM_FEAT_WP))
		SKIP("no write-protect faults here: no read duplication");
	CHECK_EQ(uhmm_sim_create(f->h, &o, &f->sim), 0);
	f->dm = uhmm_sim_devmem(f->sim);
	f->p = map_anon(NP * PAGE);
	CHECK_EQ(uhmm_manage(f->h, f->p, NP * PAGE), 0);
	for (size_t i = 0; i < NP * WORDS; i++)
		f->p[i] = i;
	CHECK_EQ(uhmm_advise(f->h, f->p, NP * PAGE, UHMM_ADVISE_SET_READ_MOSTLY, NULL), 0);
	f->ka = (struct kargs){ .buf = f->p, .out = f->out };
	CHECK_EQ(uhmm_sim_launch(f->sim, k_sum, NP, &f->ka), 0);
	for (size_t i = 0; i < NP; i++)
		CHECK_EQ(f->out[i], page_sum(f->p, i));
	CHECK_EQ(simstats(f->sim).fault_duplicated, NP);
	CHECK_EQ(count_state(f->h, f->p, NP, UHMM_PAGE_DUPLICATED), NP);
	CHECK_EQ(dmstats(f->dm).duplicates, NP);
	CHECK_EQ(dmstats(f->dm).resident, 0);
	CHECK_EQ(dm_in_use(f->dm), NP);
}

static void fx_teardown(struct fx *f)
{
	struct uhmm_devmem_stats d = dmstats(f->dm);

	/* Every copy made is either held or was dropped. */
	CHECK_EQ(d.pages_duplicated - d.dup_drops, d.duplicates);
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

static void reads_cost_nothing(enum uhmm_fault_mode mode)
{
	struct fx f;
	struct uhmm_stats h0;
	struct uhmm_sim_stats s0;

	fx_setup(&f, mode);
	h0 = hstats(f.h);
	s0 = simstats(f.sim);
	/* The CPU reads its own pages: no fault. */
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i);
	CHECK_EQ(hstats(f.h).faults, h0.faults);
	/* The device reads its copies: no fault, no copy. */
	memset(f.out, 0, sizeof(f.out));
	CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
	for (size_t i = 0; i < NP; i++)
		CHECK_EQ(f.out[i], page_sum(f.p, i));
	CHECK_EQ(simstats(f.sim).device_faults, s0.device_faults);
	CHECK_EQ(simstats(f.sim).copies_to, s0.copies_to);
	CHECK_EQ(dmstats(f.dm).duplicates, NP);
	fx_teardown(&f);
}

TEST(duplicated_pages_read_on_both_sides_without_faults_thread_mode)
{
	reads_cost_nothing(UHMM_FAULT_THREAD);
}

TEST(duplicated_pages_read_on_both_sides_without_faults_signal_mode)
{
	reads_cost_nothing(UHMM_FAULT_SIGNAL);
}

/*
 * A CPU write drops the device's copy before it lands: the next device read
 * sees the write (and duplicates the page again). Many rounds, one page at
 * a time, so that a copy the write failed to drop would show.
 */
static void cpu_write_drops_copy(enum uhmm_fault_mode mode)
{
	struct fx f;
	uint64_t writes0, drops0, dup0;

	fx_setup(&f, mode);
	writes0 = hstats(f.h).dup_writes;
	drops0 = dmstats(f.dm).dup_drops;
	dup0 = simstats(f.sim).fault_duplicated;
	for (unsigned round = 0; round < 200; round++) {
		size_t i = (round * 7) % NP;

		f.p[i * WORDS + round % WORDS] += 1000 + round;
		CHECK_EQ(uhmm_page_state(f.h, f.p + i * WORDS), UHMM_PAGE_SYSTEM);
		CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED), NP - 1);
		CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
		for (size_t k = 0; k < NP; k++)
			CHECK_EQ(f.out[k], page_sum(f.p, k));
		CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED), NP);
	}
	CHECK_EQ(hstats(f.h).dup_writes - writes0, 200);
	CHECK_EQ(dmstats(f.dm).dup_drops - drops0, 200);
	CHECK_EQ(simstats(f.sim).fault_duplicated - dup0, 200);
	CHECK_EQ(dmstats(f.dm).duplicates, NP);
	CHECK_EQ(dm_in_use(f.dm), NP);
	fx_teardown(&f);
}

TEST(cpu_write_drops_the_copy_before_it_lands_thread_mode)
{
	cpu_write_drops_copy(UHMM_FAULT_THREAD);
}

TEST(cpu_write_drops_the_copy_before_it_lands_signal_mode)
{
	cpu_write_drops_copy(UHMM_FAULT_SIGNAL);
}

/* A device write drops the copy too; the page then migrates (a write), and the CPU sees it. */
static void device_write_drops_copy(enum uhmm_fault_mode mode)
{
	struct fx f;
	size_t dup_after;

	fx_setup(&f, mode);
	f.ka.add = 5;
	CHECK_EQ(uhmm_sim_launch(f.sim, k_add, NP, &f.ka), 0);
	/*
	 * At least one drop each. A read fault of the other device thread may
	 * copy a page again, its window covering pages beside the one it reads:
	 * before that page's write (which drops the copy once more), or after
	 * it, from a snapshot taken before it (uhmm_duplicate brings a page on
	 * the device home, keeping its copy: read-mostly memory read again).
	 * Either way every page holds its write, on the device or duplicated.
	 */
	CHECK(dmstats(f.dm).dup_drops >= NP);
	dup_after = count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED);
	CHECK_EQ(dmstats(f.dm).duplicates, dup_after);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), NP - dup_after);
	CHECK_LE(dup_after, NP / 4);
	/* The CPU reads them (still read-mostly: each comes home as a duplicate). */
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i + 5);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED), NP);
	CHECK_EQ(dm_in_use(f.dm), NP);
	fx_teardown(&f);
}

TEST(device_write_drops_the_copy_and_the_cpu_sees_it_thread_mode)
{
	device_write_drops_copy(UHMM_FAULT_THREAD);
}

TEST(device_write_drops_the_copy_and_the_cpu_sees_it_signal_mode)
{
	device_write_drops_copy(UHMM_FAULT_SIGNAL);
}

/* Discard and unmap free the copies; discarded pages read zeros. */
TEST(discard_and_unmap_free_the_copies)
{
	struct fx f;

	fx_setup(&f, UHMM_FAULT_AUTO);
	CHECK_EQ(madvise(f.p, NP / 2 * PAGE, MADV_DONTNEED), 0);
	WAIT_FOR(dmstats(f.dm).duplicates == NP / 2);
	for (size_t i = 0; i < NP / 2 * WORDS; i++)
		CHECK_EQ(f.p[i], 0);
	for (size_t i = NP / 2 * WORDS; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i);
	/* The discarded half writes as any memory does. */
	f.p[0] = 42;
	CHECK_EQ(f.p[0], 42);
	unmap(f.p + NP / 2 * WORDS, NP / 2 * PAGE);
	WAIT_FOR(dmstats(f.dm).duplicates == 0);
	CHECK_EQ(dm_in_use(f.dm), 0);
	CHECK_EQ(dmstats(f.dm).dup_drops, NP);
	fx_teardown(&f);
}

/* Migrating duplicated pages takes them (the copies go); they come home with their data. */
TEST(migrating_duplicated_pages_moves_them)
{
	struct fx f;

	fx_setup(&f, UHMM_FAULT_AUTO);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.p, NP * PAGE), NP);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), NP);
	CHECK_EQ(dmstats(f.dm).duplicates, 0);
	CHECK_EQ(dm_in_use(f.dm), NP);
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED), NP); /* read-mostly reads */
	/* Bringing the range home moves nothing and drops the copies. */
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.p, NP * PAGE), 0);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_SYSTEM), NP);
	CHECK_EQ(dm_in_use(f.dm), 0);
	/* uhmm_duplicate again, directly: pages already copied are left alone. */
	CHECK_EQ(uhmm_duplicate(f.dm, f.p, NP * PAGE), NP);
	CHECK_EQ(uhmm_duplicate(f.dm, f.p, NP * PAGE), 0);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED), NP);
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i);
	fx_teardown(&f);
}

/* Removing the device drops its copies; nothing is lost, and writes work. */
TEST(device_removal_drops_copies_and_keeps_data)
{
	struct fx f;
	struct uhmm_stats h0;

	fx_setup(&f, UHMM_FAULT_AUTO);
	h0 = hstats(f.h);
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	CHECK_EQ(hstats(f.h).poisoned, h0.poisoned);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_SYSTEM), NP);
	for (size_t i = 0; i < NP * WORDS; i++) {
		CHECK_EQ(f.p[i], i);
		f.p[i] = ~i;
	}
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], ~i);
	uhmm_close(f.h);
}

/* mremap carries the pages (the copies go); at the new place they read and write. */
TEST(mremap_of_duplicated_pages_keeps_data_and_writes_work)
{
	struct fx f;
	uint64_t *q;

	fx_setup(&f, UHMM_FAULT_AUTO);
	q = mremap(f.p, NP * PAGE, NP * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED,
		   (char *)map_anon(NP * PAGE));
	CHECK(q != MAP_FAILED);
	WAIT_FOR(dmstats(f.dm).duplicates == 0);
	for (size_t i = 0; i < NP * WORDS; i++) {
		CHECK_EQ(q[i], i);
		q[i] = 2 * i;
	}
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(q[i], 2 * i);
	CHECK_EQ(count_state(f.h, q, NP, UHMM_PAGE_SYSTEM), NP);
	fx_teardown(&f);
}

/* A forked child reads and writes its copy of duplicated pages; the parent keeps its own. */
static void child_writes(void *arg)
{
	uint64_t *p = arg;

	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(p[i], i);
	for (size_t i = 0; i < NP * WORDS; i++)
		p[i] = 3 * i;
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(p[i], 3 * i);
}

static void fork_keeps_both(enum uhmm_fault_mode mode)
{
	struct fx f;
	int status;

	fx_setup(&f, mode);
	status = harness_run_child(child_writes, f.p);
	CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %s",
		  harness_status_str(status));
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i);
	/* The parent's copies are still right (or were dropped): the device reads its data. */
	CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
	for (size_t i = 0; i < NP; i++)
		CHECK_EQ(f.out[i], page_sum(f.p, i));
	f.p[0] = 7;
	CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
	CHECK_EQ(f.out[0], page_sum(f.p, 0));
	fx_teardown(&f);
}

TEST(fork_child_writes_its_pages_parent_keeps_its_own_thread_mode)
{
	fork_keeps_both(UHMM_FAULT_THREAD);
}

TEST(fork_child_writes_its_pages_parent_keeps_its_own_signal_mode)
{
	fork_keeps_both(UHMM_FAULT_SIGNAL);
}

/*
 * CPU writers race device readers: whatever a device kernel launched after
 * a write returns must show that write (a copy never outlives a write).
 */
struct racer {
	uint64_t *p;
	atomic_int stop;
	_Atomic uint64_t done[NP]; /* last value written into word 0 of page i, completed */
};

static void *cpu_writer(void *arg)
{
	struct racer *r = arg;

	/* Above every value the pages start with: each page's word 0 only grows. */
	for (uint64_t v = 1 << 20; !atomic_load(&r->stop); v++) {
		size_t i = v % NP;

		__atomic_store_n(&r->p[i * WORDS], v, __ATOMIC_RELEASE);
		atomic_store(&r->done[i], v);
	}
	return NULL;
}

static void k_first(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;

	uhmm_sim_store_u64(ctx, &a->out[i], uhmm_sim_load_u64(ctx, &a->buf[i * WORDS]));
}

static void writers_race_readers(enum uhmm_fault_mode mode)
{
	static struct racer r;
	struct fx f;
	pthread_t t;
	double t0 = harness_now();
	int rounds = 0;

	fx_setup(&f, mode);
	memset(&r, 0, sizeof(r));
	r.p = f.p;
	for (size_t i = 0; i < NP; i++)
		atomic_store(&r.done[i], f.p[i * WORDS]);
	CHECK_EQ(pthread_create(&t, NULL, cpu_writer, &r), 0);
	for (; rounds < 2000 && harness_now() - t0 < 2; rounds++) {
		uint64_t before[NP];

		for (size_t i = 0; i < NP; i++)
			before[i] = atomic_load(&r.done[i]);
		CHECK_EQ(uhmm_sim_launch(f.sim, k_first, NP, &f.ka), 0);
		for (size_t i = 0; i < NP; i++)
			CHECK_MSG(f.out[i] >= before[i], "round %d page %zu: device read %llu, "
				  "CPU had written %llu before the launch", rounds, i,
				  (unsigned long long)f.out[i], (unsigned long long)before[i]);
	}
	atomic_store(&r.stop, 1);
	CHECK_EQ(pthread_join(t, NULL), 0);
	NOTE("%d launches beside a CPU writer; %llu copies made, %llu dropped", rounds,
	     (unsigned long long)simstats(f.sim).fault_duplicated,
	     (unsigned long long)dmstats(f.dm).dup_drops);
	for (size_t i = 0; i < NP; i++)
		CHECK_EQ(f.p[i * WORDS], atomic_load(&r.done[i]));
	fx_teardown(&f);
}

TEST(cpu_writers_race_device_readers_thread_mode)
{
	writers_race_readers(UHMM_FAULT_THREAD);
}

TEST(cpu_writers_race_device_readers_signal_mode)
{
	writers_race_readers(UHMM_FAULT_SIGNAL);
}

/*
 * Within one launch: the device spins reading its copy of page 0 while the
 * CPU writes the page. Once the write has landed the device must see it:
 * the copy was dropped, and the device's translation with it, before the
 * write went on (a device still reading a stale copy would spin until the
 * kernel gives up, 10 s on).
 */
#define MAGIC 0x5eedf00dULL

static void k_wait_magic(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct kargs *a = arg;
	double t0 = harness_now();
	uint64_t reads = 0;

	(void)i;
	while (uhmm_sim_load_u64(ctx, &a->buf[0]) != MAGIC) {
		if (++reads % 1024 == 0 && harness_now() - t0 > 10) {
			uhmm_sim_store_u64(ctx, &a->out[0], 0);
			return;
		}
	}
	uhmm_sim_store_u64(ctx, &a->out[0], reads + 1);
}

static void device_sees_write_in_flight(enum uhmm_fault_mode mode)
{
	struct fx f;

	fx_setup(&f, mode);
	f.out[0] = 0;
	CHECK_EQ(uhmm_sim_launch_async(f.sim, k_wait_magic, 1, &f.ka), 0);
	usleep(20000); /* the device reads its copy meanwhile */
	CHECK_EQ(uhmm_page_state(f.h, f.p), UHMM_PAGE_DUPLICATED);
	/*
	 * Atomic, as a flag a device polls is written: once the copy is
	 * dropped the device may read the CPU's page itself, at the same
	 * moment (TSan saw a plain store race with the device's load).
	 */
	__atomic_store_n(&f.p[0], MAGIC, __ATOMIC_RELAXED);
	CHECK_EQ(uhmm_sim_synchronize(f.sim), 0);
	CHECK_MSG(f.out[0] != 0, "the device kept reading its copy after the CPU's write");
	NOTE("the device read page 0 %llu times before it saw the write",
	     (unsigned long long)f.out[0]);
	CHECK(dmstats(f.dm).dup_drops >= 1);
	fx_teardown(&f);
}

TEST(device_sees_a_cpu_write_made_during_its_launch_thread_mode)
{
	device_sees_write_in_flight(UHMM_FAULT_THREAD);
}

TEST(device_sees_a_cpu_write_made_during_its_launch_signal_mode)
{
	device_sees_write_in_flight(UHMM_FAULT_SIGNAL);
}

/*
 * A CPU read of a read-mostly page that lives on the device brings it home
 * as a duplicate: the device keeps its copy (and reads it without copying
 * again); without the advice the page comes home and leaves the device.
 */
static void cpu_read_duplicates(enum uhmm_fault_mode mode)
{
	struct fx f;
	struct uhmm_sim_stats s0;
	uint64_t *q;

	fx_setup(&f, mode);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.p, NP * PAGE), NP);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DEVICE), NP);
	CHECK_EQ(dmstats(f.dm).duplicates, 0);
	/* Read page 5 only: it (and whatever the fault brings along) comes home duplicated. */
	CHECK_EQ(f.p[5 * WORDS + 7], 5 * WORDS + 7);
	CHECK_EQ(uhmm_page_state(f.h, f.p + 5 * WORDS), UHMM_PAGE_DUPLICATED);
	CHECK(dmstats(f.dm).duplicates >= 1);
	CHECK_EQ(dm_in_use(f.dm), NP); /* no device page freed, none added */
	for (size_t i = 0; i < NP * WORDS; i++)
		CHECK_EQ(f.p[i], i);
	CHECK_EQ(count_state(f.h, f.p, NP, UHMM_PAGE_DUPLICATED), NP);
	/* The device reads its copies: nothing is copied to it again. */
	s0 = simstats(f.sim);
	CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
	for (size_t i = 0; i < NP; i++)
		CHECK_EQ(f.out[i], page_sum(f.p, i));
	CHECK_EQ(simstats(f.sim).copies_to, s0.copies_to);
	/* A write still drops the copy first. */
	f.p[5 * WORDS] = 99;
	CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
	CHECK_EQ(f.out[5], page_sum(f.p, 5));

	/* Without the advice: a read brings the page home, off the device. */
	q = map_anon(NP * PAGE);
	CHECK_EQ(uhmm_manage(f.h, q, NP * PAGE), 0);
	for (size_t i = 0; i < NP * WORDS; i++)
		q[i] = i;
	CHECK_EQ(uhmm_migrate_to_device(f.dm, q, 4 * PAGE), 4);
	CHECK_EQ(q[1], 1);
	CHECK_EQ(uhmm_page_state(f.h, q), UHMM_PAGE_SYSTEM);
	fx_teardown(&f);
}

TEST(cpu_read_of_a_read_mostly_device_page_duplicates_it_thread_mode)
{
	cpu_read_duplicates(UHMM_FAULT_THREAD);
}

TEST(cpu_read_of_a_read_mostly_device_page_duplicates_it_signal_mode)
{
	cpu_read_duplicates(UHMM_FAULT_SIGNAL);
}

/*
 * A system call writing into a duplicated page (read(2) from a pipe): in
 * thread mode the kernel's write-protect fault is served like the CPU's,
 * and the copy is dropped first; in signal mode it fails with EFAULT, as
 * for a device-resident page, and nothing changes.
 */
TEST(syscall_write_into_a_duplicated_page)
{
	struct fx f;
	int fds[2];
	char msg[] = "written by the kernel";
	ssize_t got;

	fx_setup(&f, UHMM_FAULT_AUTO);
	CHECK_EQ(pipe(fds), 0);
	CHECK_EQ(write(fds[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
	got = read(fds[0], (char *)(f.p + 2 * WORDS), sizeof(msg));
	if (uhmm_fault_mode(f.h) == UHMM_FAULT_THREAD) {
		CHECK_EQ(got, (ssize_t)sizeof(msg));
		CHECK_EQ(memcmp(f.p + 2 * WORDS, msg, sizeof(msg)), 0);
		CHECK_EQ(uhmm_page_state(f.h, f.p + 2 * WORDS), UHMM_PAGE_SYSTEM);
		CHECK_EQ(dmstats(f.dm).duplicates, NP - 1);
		CHECK_EQ(uhmm_sim_launch(f.sim, k_sum, NP, &f.ka), 0);
		CHECK_EQ(f.out[2], page_sum(f.p, 2));
	} else {
		CHECK_EQ(got, -1);
		CHECK_EQ(errno, EFAULT);
		CHECK_EQ(uhmm_page_state(f.h, f.p + 2 * WORDS), UHMM_PAGE_DUPLICATED);
		for (size_t i = 2 * WORDS; i < 3 * WORDS; i++)
			CHECK_EQ(f.p[i], i);
	}
	close(fds[0]);
	close(fds[1]);
	fx_teardown(&f);
}

TEST(duplicate_refuses_bad_input)
{
	struct fx f;
	struct uhmm *h2;
	struct uhmm_sim *sim2;
	void *p2;
	UHMM_OPTS(uhmm_open_opts, o, .mask_features = UHMM_FEAT_WP);
	UHMM_OPTS(uhmm_sim_opts, so, .npages = 4);

	fx_setup(&f, UHMM_FAULT_AUTO);
	CHECK_EQ(uhmm_duplicate(NULL, f.p, PAGE), -EINVAL);
	CHECK_EQ(uhmm_duplicate(f.dm, (char *)f.p + 1, PAGE), -EINVAL);
	CHECK_EQ(uhmm_duplicate(f.dm, f.p, 0), -EINVAL);
	CHECK_EQ(uhmm_duplicate(f.dm, map_anon(PAGE), PAGE), -ENOENT);
	fx_teardown(&f);

	/* Without write-protect faults: refused, and READ_MOSTLY reads map in place. */
	uhmm_test_open_opts(&h2, &o);
	CHECK_EQ(uhmm_sim_create(h2, &so, &sim2), 0);
	CHECK_EQ(uhmm_alloc(h2, PAGE, &p2), 0);
	CHECK_EQ(uhmm_duplicate(uhmm_sim_devmem(sim2), p2, PAGE), -EOPNOTSUPP);
	CHECK_EQ(uhmm_sim_destroy(sim2), 0);
	uhmm_close(h2);
}
