/* security: the userfaultfd never leaks across exec or into a forked child, an inherited handle is inert, uhmm never raises privileges, and it works unprivileged. */
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/userfaultfd.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define NP 16

/* A handle in use: a device, a range with pages on it. */
struct busy {
	struct uhmm *h;
	struct uhmm_sim *sim;
	char *buf;
};

static void busy_setup(struct busy *b, enum uhmm_fault_mode mode)
{
	void *p = NULL;

	b->h = uhmm_test_open_mode(mode);
	uhmm_test_require_migrate(b->h);
	b->sim = uhmm_test_sim(b->h, 2 * NP);
	CHECK_EQ(uhmm_alloc(b->h, 2 * NP * PAGE, &p), 0);
	b->buf = p;
	pattern_fill(b->buf, NP * PAGE, 0x5ec);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(b->sim), b->buf, NP * PAGE), NP);
}

static void busy_teardown(struct busy *b)
{
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(b->buf, i, 0x5ec);
	CHECK_EQ(uhmm_free(b->h, b->buf, 2 * NP * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(b->sim), 0);
	uhmm_close(b->h);
}

/* ---- exec ---- */

/* Run a shell that lists its own descriptors; returns what it printed. */
static void exec_and_list_fds(char *out, size_t len)
{
	int fds[2], st;
	size_t got = 0;
	ssize_t r;
	pid_t pid;

	CHECK_EQ(pipe(fds), 0);
	harness_flush();
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0) {
		dup2(fds[1], 1);
		execl("/bin/sh", "sh", "-c", "for f in /proc/$$/fd/*; do readlink \"$f\"; done; exit 0",
		      (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	while (got + 1 < len && (r = read(fds[0], out + got, len - 1 - got)) > 0)
		got += (size_t)r;
	out[got] = 0;
	close(fds[0]);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
}

struct churn {
	enum uhmm_fault_mode mode;
	atomic_int stop;
	atomic_ulong opens;
};

/* Handles opened and closed without pause, so that an exec meets every moment of uhmm_open. */
static void *churn_main(void *arg)
{
	struct churn *c = arg;

	while (!atomic_load(&c->stop)) {
		UHMM_OPTS(uhmm_open_opts, o, .fault_mode = c->mode);
		struct uhmm *h = NULL;

		if (uhmm_open(&h, &o) == 0) {
			uhmm_close(h);
			atomic_fetch_add(&c->opens, 1);
		}
	}
	return NULL;
}

static void no_leak_across_exec(enum uhmm_fault_mode mode)
{
	static struct churn c;
	static char out[16384];
	struct busy b;
	pthread_t tid;
	int leaks = 0;

	busy_setup(&b, mode);
	exec_and_list_fds(out, sizeof(out));
	CHECK_MSG(!strstr(out, "userfaultfd") && !strstr(out, "eventfd"),
		  "descriptors leaked into an exec'd program:\n%s", out);

	/* Again, 50 times, while another thread opens and closes handles. */
	c.mode = mode;
	CHECK_EQ(pthread_create(&tid, NULL, churn_main, &c), 0);
	for (int i = 0; i < 50; i++) {
		exec_and_list_fds(out, sizeof(out));
		if (strstr(out, "userfaultfd") || strstr(out, "eventfd")) {
			if (!leaks++)
				NOTE("exec %d inherited:\n%s", i, out);
		}
	}
	atomic_store(&c.stop, 1);
	CHECK_EQ(pthread_join(tid, NULL), 0);
	NOTE("50 execs while %lu handles were opened and closed: %d inherited a descriptor", 
	     atomic_load(&c.opens), leaks);
	CHECK_EQ(leaks, 0);
	busy_teardown(&b);
}

TEST(userfaultfd_never_crosses_exec_thread_mode)
{
	no_leak_across_exec(UHMM_FAULT_THREAD);
}

TEST(userfaultfd_never_crosses_exec_signal_mode)
{
	no_leak_across_exec(UHMM_FAULT_SIGNAL);
}

/* ---- fork without exec ---- */

/* The descriptors of this process that are userfaultfds. */
static int uffd_fds(int *fds, int max)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char path[300], link[128];
		ssize_t l;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		l = readlink(path, link, sizeof(link) - 1);
		if (l <= 0)
			continue;
		link[l] = 0;
		if (strstr(link, "userfaultfd") && n < max)
			fds[n++] = atoi(e->d_name);
	}
	closedir(d);
	return n;
}

/*
 * The child of a fork that does not use uhmm holds none of the parent's
 * userfaultfds. A userfaultfd acts on the mm that created it: through an
 * inherited one the child could write into the parent's managed memory
 * (UFFDIO_COPY into a page the parent never touched), take its pages
 * (UFFDIO_MOVE), or read its fault messages so that the parent's touchers hang,
 * even after dropping privileges. The child tries the first; the parent must
 * not see it. (Regression test: children kept them until 080d37f.)
 */
static void child_has_no_uffd(enum uhmm_fault_mode mode)
{
	struct busy b;
	char *victim;
	void *p = NULL;
	int st;
	pid_t pid;

	busy_setup(&b, mode);
	/* Managed and never touched (no fault-around near it either): a hole. */
	CHECK_EQ(uhmm_alloc(b.h, PAGE, &p), 0);
	victim = p;
	harness_flush();
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0) {
		static char evil[PAGE] __attribute__((aligned(4096)));
		int fds[8], n = uffd_fds(fds, 8), wrote = 0;

		memset(evil, 'E', sizeof(evil));
		for (int i = 0; i < n; i++) {
			struct uffdio_copy c = { .dst = (uintptr_t)victim, .src = (uintptr_t)evil,
						 .len = PAGE };

			wrote += ioctl(fds[i], UFFDIO_COPY, &c) == 0;
		}
		printf("  child: %d userfaultfd descriptors inherited; UFFDIO_COPY into the "
		       "parent's memory through them succeeded %d times\n",
		       n, wrote);
		fflush(stdout);
		_exit(n > 0 ? 10 + n : 0);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_MSG(victim[0] == 0, "the child wrote into the parent's managed memory: reads '%c'",
		  victim[0]);
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "the forked child inherited the parent's userfaultfd: %s",
		  harness_status_str(st));
	CHECK_EQ(uhmm_free(b.h, victim, PAGE), 0);
	busy_teardown(&b);
}

TEST(forked_child_holds_no_userfaultfd_thread_mode)
{
	child_has_no_uffd(UHMM_FAULT_THREAD);
}

TEST(forked_child_holds_no_userfaultfd_signal_mode)
{
	child_has_no_uffd(UHMM_FAULT_SIGNAL);
}

/*
 * The inherited handle in a forked child is inert: every call returns an
 * error (or does nothing) and none hangs, and the parent is untouched. Each
 * call runs in a child of its own, under an alarm: a hang is reported as one.
 */
enum child_call {
	CALL_ALLOC,
	CALL_MANAGE,
	CALL_MIGRATE_TO_DEVICE,
	CALL_MIGRATE_TO_RAM,
	CALL_SIM_CREATE,
	CALL_PAGE_STATE,
	CALL_SYNC,
	CALL_CLOSE,
	CALL_OWN_HANDLE,
	NCALLS
};

static const char *const cc_name[NCALLS] = {
	"uhmm_alloc",	 "uhmm_manage",	    "uhmm_migrate_to_device", "uhmm_migrate_to_ram",
	"uhmm_sim_create", "uhmm_page_state", "uhmm_sync",		"uhmm_close",
	"a handle of its own",
};

static struct busy *cc_busy;

/* Exit 0: inert (an error, or nothing done); 1: it acted; 2: its own handle failed. */
static void child_call(void *arg)
{
	enum child_call c = (enum child_call)(uintptr_t)arg;
	struct uhmm *h = cc_busy->h;
	void *p = NULL;
	int r = 0;

	alarm(5);
	switch (c) {
	case CALL_ALLOC:
		r = uhmm_alloc(h, PAGE, &p);
		break;
	case CALL_MANAGE:
		p = map_anon(PAGE);
		r = uhmm_manage(h, p, PAGE);
		break;
	case CALL_MIGRATE_TO_DEVICE:
		r = uhmm_migrate_to_device(uhmm_sim_devmem(cc_busy->sim), cc_busy->buf, NP * PAGE);
		break;
	case CALL_MIGRATE_TO_RAM:
		r = uhmm_migrate_to_ram(h, cc_busy->buf, NP * PAGE);
		r = r > 0 ? r : -1;
		break;
	case CALL_SIM_CREATE: {
		struct uhmm_sim *s = NULL;

		r = uhmm_sim_create(h, NULL, &s);
		break;
	}
	case CALL_PAGE_STATE:
		r = uhmm_page_state(h, cc_busy->buf);
		r = r == UHMM_PAGE_DEVICE ? 1 : -1;
		break;
	case CALL_SYNC:
		r = uhmm_sync(h);
		r = -1; /* returning at all is what counts */
		break;
	case CALL_CLOSE:
		uhmm_close(h);
		r = -1;
		break;
	case CALL_OWN_HANDLE: {
		struct busy own;

		busy_setup(&own, uhmm_fault_mode(h));
		busy_teardown(&own);
		r = -1;
		break;
	}
	default:
		break;
	}
	/* The memory it inherited is plain memory with the parent's data. */
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(cc_busy->buf, i, 0x5ec);
	if (r >= 0) {
		printf("  child: %s on the inherited handle returned %d\n", cc_name[c], r);
		_exit(1);
	}
}

static void inherited_handle_is_inert(enum uhmm_fault_mode mode)
{
	struct busy b;
	int bad = 0;

	busy_setup(&b, mode);
	cc_busy = &b;
	for (int c = 0; c < NCALLS; c++) {
		int st = harness_run_child(child_call, (void *)(uintptr_t)c);

		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
			NOTE("%s on the handle inherited by a forked child hangs", cc_name[c]);
			bad++;
		} else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			NOTE("%s in a forked child: %s", cc_name[c], harness_status_str(st));
			bad++;
		}
	}
	busy_teardown(&b);
	CHECK_EQ(bad, 0);
}

TEST(inherited_handle_is_inert_in_a_forked_child_thread_mode)
{
	inherited_handle_is_inert(UHMM_FAULT_THREAD);
}

TEST(inherited_handle_is_inert_in_a_forked_child_signal_mode)
{
	inherited_handle_is_inert(UHMM_FAULT_SIGNAL);
}

/* ---- privileges ---- */

struct creds {
	uid_t r, e, s;
	gid_t rg, eg, sg;
	char cap[5][40]; /* CapInh, CapPrm, CapEff, CapBnd, CapAmb lines */
	int nnp;
};

static void creds_of(const char *status_path, struct creds *c)
{
	FILE *f = fopen(status_path, "r");
	char line[256];
	int k = 0;

	CHECK_NONNULL(f);
	memset(c->cap, 0, sizeof(c->cap));
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "Cap", 3) && k < 5) {
			size_t n = strcspn(line, "\n");

			memcpy(c->cap[k], line, n < sizeof(c->cap[0]) - 1 ? n : sizeof(c->cap[0]) - 1);
			k++;
		}
		if (!strncmp(line, "Uid:", 4))
			CHECK_EQ(sscanf(line + 4, "%u %u %u", &c->r, &c->e, &c->s), 3);
		if (!strncmp(line, "Gid:", 4))
			CHECK_EQ(sscanf(line + 4, "%u %u %u", &c->rg, &c->eg, &c->sg), 3);
	}
	fclose(f);
	c->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
}

static void check_same_creds(const struct creds *a, const struct creds *b, const char *who)
{
	CHECK_MSG(a->r == b->r && a->e == b->e && a->s == b->s, "%s: uids %u/%u/%u became %u/%u/%u",
		  who, a->r, a->e, a->s, b->r, b->e, b->s);
	CHECK_MSG(a->rg == b->rg && a->eg == b->eg && a->sg == b->sg, "%s: gids changed", who);
	for (int i = 0; i < 5; i++)
		CHECK_MSG(!strcmp(a->cap[i], b->cap[i]), "%s: %s became %s", who, a->cap[i],
			  b->cap[i]);
}

/* Every thread of this process (uhmm's service thread too) has @want's credentials. */
static void check_all_threads(const struct creds *want)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	CHECK_NONNULL(d);
	while ((e = readdir(d))) {
		char path[300];
		struct creds c;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", e->d_name);
		creds_of(path, &c);
		check_same_creds(want, &c, path);
		n++;
	}
	closedir(d);
	CHECK_GE(n, 2); /* at least this thread and the service thread */
}

static void use_everything(enum uhmm_fault_mode mode, const struct creds *want)
{
	struct busy b;

	busy_setup(&b, mode);
	check_all_threads(want);
	busy_teardown(&b);
}

TEST(uhmm_never_raises_privileges)
{
	struct creds before, after;

	creds_of("/proc/self/status", &before);
	use_everything(UHMM_FAULT_THREAD, &before);
	use_everything(UHMM_FAULT_SIGNAL, &before);
	creds_of("/proc/self/status", &after);
	check_same_creds(&before, &after, "this process");
	CHECK_EQ(before.nnp, after.nnp);
	CHECK_EQ(geteuid(), before.e);
}

/* Pages on a device at fork: the child and the parent both read them. */
static void fork_keeps_device_pages(struct uhmm *h)
{
	struct uhmm_sim *sim;
	void *p = NULL;
	pid_t pid;
	int st;

	if (uhmm_can_migrate(h))
		return;
	sim = uhmm_test_sim(h, 8);
	CHECK_EQ(uhmm_alloc(h, 4 * PAGE, &p), 0);
	pattern_fill(p, 4 * PAGE, 0xf0c);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), p, 4 * PAGE), 4);
	harness_flush();
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0) {
		for (size_t i = 0; i < 4; i++) {
			uint64_t exp[PAGE / 8];

			pattern_page(exp, i, 0xf0c);
			if (memcmp((char *)p + i * PAGE, exp, PAGE))
				_exit(1);
		}
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	CHECK_PATTERN_PAGES(p, 4, 0xf0c);
	CHECK_EQ(uhmm_free(h, p, 4 * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
}

/*
 * In a child that dropped to nobody: open (user-mode-only) in every mode,
 * migrate, touch; still nobody afterwards. Where the kernel lets nobody have
 * a user-mode-only userfaultfd (Linux 5.11+, whatever the sysctl says), every
 * mode must open: a mode that asks the kernel for more than nobody may have
 * (UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE) must do without it.
 */
static void unprivileged_child(void *arg)
{
	static const enum uhmm_fault_mode modes[] = { UHMM_FAULT_AUTO, UHMM_FAULT_SIGNAL,
						      UHMM_FAULT_THREAD };
	static const char *const names[] = { "auto", "signal", "thread" };
	struct creds before, after;
	int fd, bad = 0;

	(void)arg;
	if (getuid() != 0 && geteuid() != 0)
		SKIP("not root: cannot switch to uid %d", UHMM_TEST_NOBODY);
	CHECK_EQ(setgroups(0, NULL), 0);
	CHECK_EQ(setresgid(UHMM_TEST_NOBODY, UHMM_TEST_NOBODY, UHMM_TEST_NOBODY), 0);
	CHECK_EQ(setresuid(UHMM_TEST_NOBODY, UHMM_TEST_NOBODY, UHMM_TEST_NOBODY), 0);
	CHECK_EQ(geteuid(), UHMM_TEST_NOBODY);
	creds_of("/proc/self/status", &before);
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		SKIP("the kernel gives uid %d no userfaultfd at all: %s", UHMM_TEST_NOBODY, strerror(errno));
	close(fd);

	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		UHMM_OPTS(uhmm_open_opts, o, .fault_mode = modes[i]);
		struct uhmm *h = NULL;
		int r = uhmm_open(&h, &o);

		if (r == -EOPNOTSUPP && modes[i] == UHMM_FAULT_SIGNAL)
			continue; /* no UFFD_FEATURE_SIGBUS: not a question of privilege */
		if (r) {
			NOTE("as uid %d, uhmm_open in %s mode: %d (%s)", UHMM_TEST_NOBODY, names[i], r,
			     uhmm_strerror(r));
			bad++;
			continue;
		}
		NOTE("as uid %d, %s mode: %s mode in force, kernel-mode faults %s", UHMM_TEST_NOBODY, names[i],
		     uhmm_fault_mode(h) == UHMM_FAULT_SIGNAL ? "signal" : "thread",
		     uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS ? "served" :
								  "not served (user-mode-only)");
		if (harness_read_long_file("/proc/sys/vm/unprivileged_userfaultfd", 0) != 1 &&
		    access("/dev/userfaultfd", R_OK | W_OK) != 0)
			CHECK_EQ(uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS, 0);
		/* No CAP_SYS_PTRACE, so no fork events: device pages come home at fork. */
		CHECK_EQ(uhmm_features(h) & UHMM_FEAT_EVENT_FORK, 0);
		fork_keeps_device_pages(h);
		uhmm_close(h);
		use_everything(modes[i], &before);
	}
	creds_of("/proc/self/status", &after);
	check_same_creds(&before, &after, "the unprivileged child");
	CHECK_EQ(geteuid(), UHMM_TEST_NOBODY);
	CHECK_EQ(bad, 0);
}

TEST(unprivileged_mode_works_and_stays_unprivileged)
{
	int st = harness_run_child(unprivileged_child, NULL);

	if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
		SKIP("%s", harness_skip_buf[0] ? harness_skip_buf : "the child skipped");
	CHECK_EXITED(st, 0);
}
