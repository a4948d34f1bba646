/* fork.c - forked children keep their data, isolated from the parent, and are served. */
/* uhmm-test-label: concurrent */
#include "harness.h"

#define NP 64

struct fx {
	struct uhmm *h;
	struct uhmm_sim *sim;
	char *buf;
};

static void fx_setup(struct fx *f, enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	void *p;

	uhmm_test_open_opts(&f->h, &o);
	uhmm_test_require_migrate(f->h);
	f->sim = uhmm_test_sim(f->h, 2 * NP);
	CHECK_EQ(uhmm_alloc(f->h, NP * PAGE, &p), 0);
	f->buf = p;
	pattern_fill(f->buf, (NP) * PAGE, 1);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f->sim), f->buf, NP * PAGE), NP);
}

static void fx_teardown(struct fx *f)
{
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}


/* Child: check fork-time data, then exit 0, or with the bad page number. */
static void child_checks(struct fx *f)
{
	size_t bad = pattern_bad_page(f->buf, NP, 1);

	_exit(bad ? (int)(bad > 250 ? 250 : bad) : 0);
}

TEST(child_reads_device_pages_the_parent_keeps_on_the_device)
{
	struct fx f;
	int st;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_THREAD);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid)
		child_checks(&f);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	/* Served from the device pages: the parent's stay where they were. */
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_DEVICE), NP);
	CHECK_EQ(pattern_bad_page(f.buf, NP, 1), 0);
	fx_teardown(&f);
}

TEST(parent_and_child_do_not_see_each_others_writes)
{
	struct fx f;
	int go[2], done[2], st;
	char c = 0;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_THREAD);
	CHECK_EQ(pipe(go), 0);
	CHECK_EQ(pipe(done), 0);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid) {
		/* Wait until the parent has written its copy, then check ours, then write. */
		if (read(go[0], &c, 1) != 1)
			_exit(100);
		if (pattern_bad_page(f.buf, NP, 1))
			_exit(101);
		pattern_fill(f.buf, (NP) * PAGE, 3);
		if (write(done[1], &c, 1) != 1)
			_exit(102);
		if (read(go[0], &c, 1) != 1)
			_exit(103);
		_exit(pattern_bad_page(f.buf, NP, 3) ? 104 : 0);
	}
	/* The parent writes (its pages come home), migrates them away again. */
	pattern_fill(f.buf, (NP) * PAGE, 2);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.sim), f.buf, NP * PAGE), NP);
	CHECK_EQ(write(go[1], &c, 1), 1);
	CHECK_EQ(read(done[0], &c, 1), 1);
	/* The child's writes are its own. */
	CHECK_EQ(pattern_bad_page(f.buf, NP, 2), 0);
	CHECK_EQ(write(go[1], &c, 1), 1);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	fx_teardown(&f);
}

TEST(a_childs_exit_releases_what_it_held)
{
	struct fx f;
	struct uhmm_devmem_stats d;
	int st;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_THREAD);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid)
		_exit(0); /* touches nothing: holds all 64 pages until it is gone */
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	/* The parent brings its pages home: the child's references are gone soon after. */
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.buf, NP * PAGE), NP);
	WAIT_FOR(dmstats(uhmm_sim_devmem(f.sim)).in_use == 0);
	d = dmstats(uhmm_sim_devmem(f.sim));
	CHECK_EQ(d.resident, 0);
	CHECK_EQ(pattern_bad_page(f.buf, NP, 1), 0);
	fx_teardown(&f);
}

TEST(grandchildren_are_served_too)
{
	struct fx f;
	int st;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_THREAD);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid) {
		int gst;
		pid_t g;

		/* Half the pages in the child first, the rest only in the grandchild. */
		if (pattern_bad_page(f.buf, NP / 2, 1))
			_exit(110);
		g = fork();
		if (g < 0)
			_exit(111);
		if (!g)
			_exit(pattern_bad_page(f.buf, NP, 1) ? 112 : 0);
		if (waitpid(g, &gst, 0) != g || !WIFEXITED(gst))
			_exit(113);
		_exit(WEXITSTATUS(gst) ? WEXITSTATUS(gst) : pattern_bad_page(f.buf, NP, 1) ? 114 : 0);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	fx_teardown(&f);
}

TEST(removing_the_device_hands_children_their_pages)
{
	struct fx f;
	int go[2], st;
	char c = 0;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_THREAD);
	CHECK_EQ(pipe(go), 0);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid) {
		if (read(go[0], &c, 1) != 1)
			_exit(120);
		_exit(pattern_bad_page(f.buf, NP, 1) ? 121 : 0);
	}
	/* Hot-remove while the child still holds device pages it never touched. */
	CHECK_EQ(uhmm_sim_destroy(f.sim), 0);
	CHECK_EQ(write(go[1], &c, 1), 1);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	CHECK_EQ(pattern_bad_page(f.buf, NP, 1), 0);
	uhmm_close(f.h);
}

TEST(a_dead_device_poisons_the_childs_pages_too)
{
	struct fx f;
	int st;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_THREAD);
	CHECK_EQ(uhmm_sim_kill(f.sim), 0);
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid) {
		signal(SIGBUS, SIG_DFL);
		(void)*(volatile char *)(f.buf + 5 * PAGE);
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_SIGNALED(st, SIGBUS);
	CHECK_EQ(uhmm_sim_destroy(f.sim), NP);
	uhmm_close(f.h);
}

TEST(signal_mode_brings_pages_home_before_fork)
{
	struct fx f;
	int st;
	pid_t pid;

	fx_setup(&f, UHMM_FAULT_SIGNAL);
	if (uhmm_fault_mode(f.h) != UHMM_FAULT_SIGNAL)
		SKIP("no signal mode here");
	pid = fork();
	CHECK_GE(pid, 0);
	if (!pid)
		child_checks(&f);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	CHECK_EQ(count_state(f.h, f.buf, NP, UHMM_PAGE_DEVICE), 0);
	/* And they may leave again: shared pages are made exclusive first. */
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(f.sim), f.buf, NP * PAGE), NP);
	CHECK_EQ(pattern_bad_page(f.buf, NP, 1), 0);
	fx_teardown(&f);
}
