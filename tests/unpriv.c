/* unpriv: without privilege (user-mode-only userfaultfd) migration still works and system calls into device pages fail with EFAULT; with privilege they are served. */
#include "harness.h"

#include <grp.h>

#define NOBODY 65534

static long long unpriv_sysctl(void)
{
	return harness_read_long_file("/proc/sys/vm/unprivileged_userfaultfd", -1);
}

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

static void unprivileged_part(void *arg)
{
	long long sysctl = unpriv_sysctl();
	struct uhmm *h;
	uint64_t feat;

	(void)arg;
	if (geteuid() == 0) {
		CHECK_EQ(setgroups(0, NULL), 0);
		CHECK_EQ(setresgid(NOBODY, NOBODY, NOBODY), 0);
		CHECK_EQ(setresuid(NOBODY, NOBODY, NOBODY), 0);
	}
	CHECK_NE(geteuid(), 0);
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
	int status;

	if (geteuid() != 0) {
		NOTE("not root: the unprivileged part runs in this process");
		unprivileged_part(NULL);
		return;
	}
	status = harness_run_child(unprivileged_part, NULL);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		SKIP("unprivileged child: %s", harness_skip_buf[0] ? harness_skip_buf : "skipped");
	CHECK_EXITED(status, 0);
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
