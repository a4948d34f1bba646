/* unpriv: without privilege (user-mode-only userfaultfd) migration and the 64 MiB data tests work and system calls into device pages fail with EFAULT; with privilege they are served. */
#include "harness.h"

/* read(2) from a pipe holding @n bytes of @src into @dst; returns read's result, errno in *err. */
static ssize_t read_from_pipe(void *dst, const void *src, size_t n, int *err)
{
	int fds[2];
	ssize_t r;

	CHECK_EQ(pipe(fds), 0);
	CHECK_EQ(write(fds[1], src, n), (long long)n);
	errno = 0;
	r = read(fds[0], dst, n);
	*err = errno;
	close(fds[0]);
	close(fds[1]);
	return r;
}

/*
 * The user-mode-only checks, on handle @h: every user-mode access is served
 * (a 4 MiB data test), a system call into a device page fails with EFAULT and
 * leaves the page and its data as they were.
 */
static void user_mode_only_checks(struct uhmm *h)
{
	const size_t npages = 4 * MiB / PAGE;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	unsigned char msg[512];
	struct prng rng;
	uint64_t seed;
	size_t *perm;
	void *p = NULL;
	char *buf;
	ssize_t r;
	int err;

	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, npages);
	dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_alloc(h, npages * PAGE, &p), 0);
	buf = p;
	prng_init(&rng, 0x0b0d0001, "user-mode-only data");
	seed = prng_next(&rng);
	pattern_fill(buf, npages * PAGE, seed);

	CHECK_EQ(uhmm_migrate_to_device(dm, buf, npages * PAGE), (long long)npages);
	CHECK_EQ(count_state(h, buf, npages, UHMM_PAGE_DEVICE), npages);
	CHECK_EQ(dmstats(dm).in_use, npages);
	perm = prng_perm(&rng, npages);
	for (size_t i = 0; i < npages; i++)
		CHECK_PATTERN_PAGE(buf, perm[i], seed);
	free(perm);
	CHECK_EQ(dmstats(dm).in_use, 0);

	/* A system call cannot fault a device page home here: EFAULT, nothing changes. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf + 5 * PAGE, PAGE), 1);
	memset(msg, 0x77, sizeof(msg));
	r = read_from_pipe(buf + 5 * PAGE + 256, msg, sizeof(msg), &err);
	CHECK_EQ(r, -1);
	CHECK_EQ(err, EFAULT);
	CHECK_STATE(h, buf + 5 * PAGE, UHMM_PAGE_DEVICE);
	/* A normal CPU read still gets the data. */
	CHECK_PATTERN_PAGE(buf, 5, seed);
	CHECK_STATE(h, buf + 5 * PAGE, UHMM_PAGE_SYSTEM);

	CHECK_EQ(uhmm_free(h, buf, npages * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
}

/*
 * Run @fn without privilege: as root in a forked child that becomes nobody
 * (its failure fails the test, its skip skips it), otherwise right here.
 */
static void run_unprivileged(void (*fn)(void *), void *arg)
{
	int status;

	if (geteuid() != 0) {
		NOTE("not root: the unprivileged part runs in this process");
		fn(arg);
		return;
	}
	status = harness_run_child(fn, arg);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		SKIP("unprivileged child: %s", harness_skip_buf[0] ? harness_skip_buf : "skipped");
	CHECK_EXITED(status, 0);
}

static void unprivileged_part(void *arg)
{
	long long sysctl = uhmm_test_unpriv_sysctl();
	struct uhmm *h;
	uint64_t feat;

	(void)arg;
	uhmm_test_become_nobody();
	NOTE("uid %d, vm.unprivileged_userfaultfd = %lld", (int)geteuid(), sysctl);

	uhmm_test_open(&h);
	feat = uhmm_features(h);
	NOTE("features 0x%llx", (unsigned long long)feat);
	if (sysctl == 0)
		CHECK_EQ(feat & UHMM_FEAT_KERNEL_FAULTS, 0);
	else if (sysctl == 1)
		CHECK_EQ(feat & UHMM_FEAT_KERNEL_FAULTS, UHMM_FEAT_KERNEL_FAULTS);
	if (feat & UHMM_FEAT_KERNEL_FAULTS) {
		NOTE("kernel-mode faults are permitted unprivileged here: only the data test runs");
		uhmm_close(h);
		{
			UHMM_OPTS(uhmm_open_opts, o, .flags = UHMM_OPEN_USER_MODE_ONLY);
			uhmm_test_open_opts(&h, &o);
		}
		CHECK_EQ(uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS, 0);
	}
	user_mode_only_checks(h);
	uhmm_close(h);
}

TEST(unprivileged_user_mode_only)
{
	run_unprivileged(unprivileged_part, NULL);
}

/* ---- the 64 MiB data tests, without privilege ---- */

#define DATA_PAGES (64 * MiB / PAGE)

struct data_fix {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	char *buf;
	struct prng rng;
	uint64_t seed;
};

/*
 * As the unprivileged user: open (user-mode-only where the sysctl says so,
 * and reported), fault-around off so that every CPU touch of a device page
 * is a fault of its own, fill 64 MiB with the pattern and migrate all of it
 * to the sim device.
 */
static void data_setup(struct data_fix *f, uint64_t seed, const char *what)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_window = 1);
	long long sysctl = uhmm_test_unpriv_sysctl();
	struct uhmm_stats s0;
	void *p = NULL;

	uhmm_test_become_nobody();
	NOTE("uid %d, vm.unprivileged_userfaultfd = %lld", (int)geteuid(), sysctl);
	uhmm_test_open_opts(&f->h, &o);
	NOTE("features 0x%llx, fault mode %d", (unsigned long long)uhmm_features(f->h),
	     uhmm_fault_mode(f->h));
	if (sysctl == 0)
		CHECK_EQ(uhmm_features(f->h) & UHMM_FEAT_KERNEL_FAULTS, 0);
	uhmm_test_require_migrate(f->h);
	f->sim = uhmm_test_sim(f->h, DATA_PAGES);
	f->dm = uhmm_sim_devmem(f->sim);
	CHECK_EQ(uhmm_alloc(f->h, DATA_PAGES * PAGE, &p), 0);
	f->buf = p;
	prng_init(&f->rng, seed, what);
	f->seed = prng_next(&f->rng);
	pattern_fill(f->buf, DATA_PAGES * PAGE, f->seed);

	s0 = hstats(f->h);
	CHECK_EQ(uhmm_migrate_to_device(f->dm, f->buf, DATA_PAGES * PAGE), (long long)DATA_PAGES);
	CHECK_EQ(count_state(f->h, f->buf, DATA_PAGES, UHMM_PAGE_DEVICE), DATA_PAGES);
	CHECK_EQ(dmstats(f->dm).in_use, DATA_PAGES);
	CHECK_EQ(hstats(f->h).pages_out - s0.pages_out, DATA_PAGES);
	CHECK_EQ(simstats(f->sim).copies_to, DATA_PAGES);
}

static void data_teardown(struct data_fix *f)
{
	CHECK_EQ(uhmm_free(f->h, f->buf, DATA_PAGES * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

/* Every page home, none poisoned, the device empty: the counters after DATA_PAGES faults. */
static void data_check_all_home(struct data_fix *f, const struct uhmm_stats *s0,
				const struct uhmm_sim_stats *ss0)
{
	struct uhmm_stats s = hstats(f->h);

	CHECK_EQ(count_state(f->h, f->buf, DATA_PAGES, UHMM_PAGE_SYSTEM), DATA_PAGES);
	CHECK_EQ(dmstats(f->dm).in_use, 0);
	CHECK_EQ(s.faults_device - s0->faults_device, DATA_PAGES);
	CHECK_EQ(s.pages_home - s0->pages_home, DATA_PAGES);
	CHECK_EQ(s.poisoned, s0->poisoned);
	CHECK_EQ(simstats(f->sim).copies_from - ss0->copies_from, DATA_PAGES);
}

static void data_read_part(void *arg)
{
	struct data_fix f;
	struct uhmm_stats s0;
	struct uhmm_sim_stats ss0;
	size_t *perm;
	double t0 = harness_now();

	(void)arg;
	data_setup(&f, 0x0b0d0003, "unprivileged 64 MiB read");
	s0 = hstats(f.h);
	ss0 = simstats(f.sim);
	/* Every byte, a page at a time in random order: each read is a fault that brings one page home. */
	perm = prng_perm(&f.rng, DATA_PAGES);
	for (size_t k = 0; k < DATA_PAGES; k++)
		CHECK_PATTERN_PAGE(f.buf, perm[k], f.seed);
	free(perm);
	data_check_all_home(&f, &s0, &ss0);
	/* Home for good: a second pass faults nothing and reads the same bytes. */
	CHECK_PATTERN_PAGES(f.buf, DATA_PAGES, f.seed);
	CHECK_EQ(hstats(f.h).faults_device - s0.faults_device, DATA_PAGES);
	data_teardown(&f);
	NOTE("%.2f s", harness_now() - t0);
}

TEST(unprivileged_64mib_migrate_all_read_every_byte_random_order)
{
	run_unprivileged(data_read_part, NULL);
}

static void data_write_part(void *arg)
{
	struct data_fix f;
	struct uhmm_stats s0;
	struct uhmm_sim_stats ss0;
	uint64_t exp[PAGE / 8];
	uint16_t *word;
	uint64_t *val;
	size_t *perm;
	double t0 = harness_now();

	(void)arg;
	data_setup(&f, 0x0b0d0004, "unprivileged 64 MiB write");
	word = calloc(DATA_PAGES, sizeof(*word));
	val = calloc(DATA_PAGES, sizeof(*val));
	CHECK_NONNULL(word);
	CHECK_NONNULL(val);
	s0 = hstats(f.h);
	ss0 = simstats(f.sim);

	/*
	 * In random page order, a CPU write of one word at a random offset into
	 * each device-resident page: the write faults the page home (one page,
	 * one device page freed) and lands there.
	 */
	perm = prng_perm(&f.rng, DATA_PAGES);
	for (size_t k = 0; k < DATA_PAGES; k++) {
		size_t i = perm[k];
		volatile uint64_t *pw = (volatile uint64_t *)(f.buf + i * PAGE);

		word[i] = (uint16_t)prng_below(&f.rng, PAGE / 8);
		val[i] = prng_next(&f.rng);
		if (val[i] == pattern_word(i * PAGE + word[i] * 8, f.seed))
			val[i] = ~val[i];
		CHECK_STATE(f.h, f.buf + i * PAGE, UHMM_PAGE_DEVICE);
		pw[word[i]] = val[i];
		CHECK_STATE(f.h, f.buf + i * PAGE, UHMM_PAGE_SYSTEM);
		CHECK_EQ(pw[word[i]], val[i]);
		CHECK_EQ(dmstats(f.dm).in_use, DATA_PAGES - k - 1);
	}
	free(perm);
	data_check_all_home(&f, &s0, &ss0);

	/* Every byte: the pattern, with each page's one written word. */
	for (size_t i = 0; i < DATA_PAGES; i++) {
		pattern_page(exp, i, f.seed);
		exp[word[i]] = val[i];
		CHECK_MEM(f.buf + i * PAGE, exp, PAGE);
	}
	free(word);
	free(val);
	data_teardown(&f);
	NOTE("%.2f s", harness_now() - t0);
}

TEST(unprivileged_64mib_cpu_writes_into_device_pages_land)
{
	run_unprivileged(data_write_part, NULL);
}

TEST(user_mode_only_flag)
{
	UHMM_OPTS(uhmm_open_opts, o, .flags = UHMM_OPEN_USER_MODE_ONLY);
	struct uhmm *h;

	uhmm_test_open_opts(&h, &o);
	CHECK_EQ(uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS, 0);
	user_mode_only_checks(h);
	uhmm_close(h);
}

TEST(privileged_syscalls_into_device_pages_are_served)
{
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	struct uhmm_stats s0;
	uint64_t exp[PAGE / 8];
	unsigned char msg[512], out[PAGE];
	int fds[2], err;
	void *p = NULL;
	char *buf;
	uint64_t seed = 0x0b0d0002;
	ssize_t r;

	if (geteuid() != 0)
		SKIP("needs root (CAP_SYS_PTRACE) for kernel-mode faults; running as uid %d",
		     (int)geteuid());
	{
		/* Thread mode: the mode that serves system calls (signal mode gives EFAULT). */
		UHMM_OPTS(uhmm_open_opts, o, .fault_mode = UHMM_FAULT_THREAD);

		uhmm_test_open_opts(&h, &o);
	}
	CHECK_EQ(uhmm_fault_mode(h), UHMM_FAULT_THREAD);
	if (!(uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS))
		SKIP("this handle does not serve kernel-mode faults (features 0x%llx)",
		     (unsigned long long)uhmm_features(h));
	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, 16);
	dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_alloc(h, 8 * PAGE, &p), 0);
	buf = p;
	NOTE("pattern seed=0x%llx", (unsigned long long)seed);
	pattern_fill(buf, 8 * PAGE, seed);
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, 8 * PAGE), 8);
	s0 = hstats(h);

	/* read(2) into a device page: the page comes home, then takes the pipe's data. */
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (unsigned char)(i * 7 + 1);
	r = read_from_pipe(buf + 3 * PAGE + 256, msg, sizeof(msg), &err);
	CHECK_MSG(r == (ssize_t)sizeof(msg), "read(2) into a device page: %zd, errno %d (%s)", r,
		  err, strerror(err));
	CHECK_STATE(h, buf + 3 * PAGE, UHMM_PAGE_SYSTEM);
	pattern_page(exp, 3, seed);
	memcpy((char *)exp + 256, msg, sizeof(msg));
	CHECK_MEM(buf + 3 * PAGE, exp, PAGE);
	CHECK_EQ(hstats(h).faults_device - s0.faults_device, 1);
	CHECK_EQ(dmstats(dm).in_use, 7);

	/*
	 * write(2) from a device page: the kernel reads it through a served
	 * fault. Page 5, not 4: a fault right where the last one ended would
	 * look sequential and bring a neighbour home too.
	 */
	CHECK_EQ(pipe(fds), 0);
	CHECK_EQ(write(fds[1], buf + 5 * PAGE, PAGE), (long long)PAGE);
	CHECK_EQ(read(fds[0], out, PAGE), (long long)PAGE);
	close(fds[0]);
	close(fds[1]);
	pattern_page(exp, 5, seed);
	CHECK_MEM(out, exp, PAGE);
	CHECK_STATE(h, buf + 5 * PAGE, UHMM_PAGE_SYSTEM);
	CHECK_EQ(dmstats(dm).in_use, 6);

	for (size_t i = 0; i < 8; i++)
		if (i != 3)
			CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(uhmm_free(h, buf, 8 * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}
