/* signal.c - signal mode: touchers serve their own faults; every other SIGBUS reaches the app. */
/* uhmm-test-label: concurrent */
#include <fcntl.h>
#include <sys/syscall.h>

#include "harness.h"

#define NPAGES 64

static struct uhmm *open_signal(void)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = UHMM_FAULT_SIGNAL);
	struct uhmm *h;
	int r = uhmm_open(&h, &o);

	if (r == -EOPNOTSUPP)
		SKIP("no UFFD_FEATURE_SIGBUS here: %s", uhmm_strerror(r));
	if (r == -EPERM || r == -ENOSYS)
		SKIP("userfaultfd unavailable: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(h);
	CHECK_EQ(uhmm_fault_mode(h), UHMM_FAULT_SIGNAL);
	return h;
}

TEST(auto_mode_follows_privilege)
{
	struct uhmm *h;

	uhmm_test_open(&h);
	if (getenv("UHMM_FAULT_MODE"))
		SKIP("UHMM_FAULT_MODE overrides AUTO in this run");
	/* Kernel-mode faults permitted: thread mode keeps system calls transparent. */
	if (uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS)
		CHECK_EQ(uhmm_fault_mode(h), UHMM_FAULT_THREAD);
	else if (uhmm_features(h) & UHMM_FEAT_SIGBUS)
		CHECK_EQ(uhmm_fault_mode(h), UHMM_FAULT_SIGNAL);
	uhmm_close(h);
	CHECK_EQ(uhmm_fault_mode(NULL), -EINVAL);
}

TEST(bad_mode_and_masked_sigbus_are_refused)
{
	UHMM_OPTS(uhmm_open_opts, bad, .fault_mode = (enum uhmm_fault_mode)7);
	UHMM_OPTS(uhmm_open_opts, masked, .fault_mode = UHMM_FAULT_SIGNAL,
		  .mask_features = UHMM_FEAT_SIGBUS);
	struct uhmm *h = (struct uhmm *)1;

	CHECK_EQ(uhmm_open(&h, &bad), -EINVAL);
	CHECK_PTR(h, NULL);
	CHECK_EQ(uhmm_open(&h, &masked), -EOPNOTSUPP);
}

TEST(data_comes_home_in_the_toucher)
{
	struct uhmm *h = open_signal();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	struct uhmm_stats s0, s;
	void *p;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, NPAGES * PAGE, 1);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	s0 = hstats(h);
	/* Reads in reverse, then writes land on pages that came home. */
	for (size_t i = NPAGES; i-- > 0;)
		CHECK_PATTERN_PAGE(buf, i, 1);
	s = hstats(h);
	CHECK_EQ(s.faults_device - s0.faults_device, NPAGES);
	CHECK_EQ(s.pages_home - s0.pages_home, NPAGES);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	for (size_t i = 0; i < NPAGES; i++)
		buf[i * PAGE + 5] = (char)i;
	for (size_t i = 0; i < NPAGES; i++) {
		CHECK_EQ(buf[i * PAGE + 5], (char)i);
		CHECK_EQ(uhmm_page_state(h, buf + i * PAGE), UHMM_PAGE_SYSTEM);
	}
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

static sigjmp_buf app_jmp;
static volatile uintptr_t app_addr;
static volatile int app_calls;

static void app_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	app_calls++;
	app_addr = (uintptr_t)si->si_addr;
	siglongjmp(app_jmp, 1);
}

static void install_app_handler(void (*fn)(int, siginfo_t *, void *))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO;
	CHECK_EQ(sigaction(SIGBUS, &sa, NULL), 0);
}

TEST(poison_reaches_the_handler_installed_before_open)
{
	struct uhmm *h;
	struct uhmm_sim *sim;
	void *p;
	char *buf;

	/* The app's handler first; uhmm's chains to it. */
	install_app_handler(app_handler);
	h = open_signal();
	sim = uhmm_test_sim(h, NPAGES);
	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, NPAGES * PAGE, 2);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	CHECK_EQ(uhmm_sim_fail_page(sim, buf + 7 * PAGE), 0);
	if (!sigsetjmp(app_jmp, 1)) {
		(void)*(volatile char *)(buf + 7 * PAGE + 100);
		CHECK(!"no SIGBUS for a page its device failed to return");
	}
	CHECK_EQ(app_calls, 1);
	CHECK_EQ(app_addr & ~(uintptr_t)(PAGE - 1), (uintptr_t)buf + 7 * PAGE);
	CHECK_EQ(uhmm_page_state(h, buf + 7 * PAGE), UHMM_PAGE_POISON);
	/* Every other page still comes home with its data, through uhmm's handler. */
	for (size_t i = 0; i < NPAGES; i++)
		if (i != 7)
			CHECK_PATTERN_PAGE(buf, i, 2);
	CHECK_EQ(app_calls, 1);
	/* Discarding the poisoned page makes it usable again. */
	CHECK_EQ(madvise(buf + 7 * PAGE, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(uhmm_sync(h), 0);
	CHECK_EQ(buf[7 * PAGE + 100], 0);
	CHECK_EQ(app_calls, 1);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

static void chaining_handler(int sig, siginfo_t *si, void *uc)
{
	if (uhmm_sigbus_handler(sig, si, uc))
		return;
	app_handler(sig, si, uc);
}

TEST(handler_installed_after_open_calls_uhmm_first)
{
	struct uhmm *h = open_signal();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	void *p;
	char *buf;

	install_app_handler(chaining_handler);
	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, NPAGES * PAGE, 3);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	CHECK_EQ(uhmm_sim_kill(sim), 0);
	if (!sigsetjmp(app_jmp, 1)) {
		(void)*(volatile char *)(buf + 3 * PAGE);
		CHECK(!"no SIGBUS from a dead device");
	}
	CHECK_EQ(app_calls, 1);
	CHECK_EQ(app_addr & ~(uintptr_t)(PAGE - 1), (uintptr_t)buf + 3 * PAGE);
	CHECK_EQ(uhmm_sim_destroy(sim), NPAGES - 1);
	uhmm_close(h);
}

TEST(poison_with_default_action_kills_the_process)
{
	int st;
	pid_t pid = fork();

	CHECK_GE(pid, 0);
	if (!pid) {
		struct uhmm *h = NULL;
		struct uhmm_sim *sim = NULL;
		UHMM_OPTS(uhmm_open_opts, o, .fault_mode = UHMM_FAULT_SIGNAL);
		void *p;

		signal(SIGBUS, SIG_DFL);
		if (uhmm_open(&h, &o) || uhmm_sim_create(h, NULL, &sim) ||
		    uhmm_alloc(h, NPAGES * PAGE, &p))
			_exit(3);
		memset(p, 1, NPAGES * PAGE);
		if (uhmm_migrate_to_device(uhmm_sim_devmem(sim), p, NPAGES * PAGE) != NPAGES)
			_exit(4);
		if (*(volatile char *)p != 1) /* served by uhmm's handler */
			_exit(5);
		uhmm_sim_kill(sim);
		(void)*(volatile char *)((char *)p + PAGE);
		_exit(6);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK(WIFSIGNALED(st));
	CHECK_EQ(WTERMSIG(st), SIGBUS);
}

TEST(sigbus_of_unmanaged_memory_reaches_the_app)
{
	struct uhmm *h;
	char *map;
	int fd;

	install_app_handler(app_handler);
	h = open_signal();
	/* A file mapping past the end of its file: a SIGBUS uhmm has nothing to do with. */
	fd = (int)syscall(SYS_memfd_create, "uhmm-test", 0);
	CHECK_GE(fd, 0);
	CHECK_EQ(ftruncate(fd, PAGE), 0);
	map = mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED);
	app_calls = 0;
	if (!sigsetjmp(app_jmp, 1)) {
		(void)*(volatile char *)(map + PAGE);
		CHECK(!"no SIGBUS past the end of a file");
	}
	CHECK_EQ(app_calls, 1);
	CHECK_EQ(app_addr, (uintptr_t)map + PAGE);
	munmap(map, 2 * PAGE);
	close(fd);
	uhmm_close(h);
}

TEST(system_call_into_device_memory_gets_efault)
{
	struct uhmm *h = open_signal();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	int fds[2];
	char msg[64];
	void *p;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, NPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, NPAGES * PAGE, 4);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	CHECK_EQ(pipe(fds), 0);
	memset(msg, 'x', sizeof(msg));
	CHECK_EQ(write(fds[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
	errno = 0;
	CHECK_EQ(read(fds[0], buf + PAGE, sizeof(msg)), -1);
	CHECK_EQ(errno, EFAULT);
	/* The data is intact and comes home on a user-mode touch. */
	CHECK_PATTERN_PAGES(buf, NPAGES, 4);
	close(fds[0]);
	close(fds[1]);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

struct toucher {
	char *buf;
	size_t first, n;
	unsigned seed;
	int rounds;
};

static void *touch_loop(void *arg)
{
	struct toucher *t = arg;

	for (int r = 0; r < t->rounds; r++)
		for (size_t i = t->first; i < t->first + t->n; i++)
			CHECK_PATTERN_PAGE(t->buf, i, t->seed);
	return NULL;
}

TEST(two_touchers_serve_themselves_while_migrations_run)
{
	struct uhmm *h = open_signal();
	struct uhmm_sim *sim = uhmm_test_sim(h, 4 * NPAGES);
	struct uhmm_devmem *dm = uhmm_sim_devmem(sim);
	struct toucher t[2];
	pthread_t tid[2];
	void *p;
	char *buf;

	CHECK_EQ(uhmm_alloc(h, 4 * NPAGES * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, 4 * NPAGES * PAGE, 5);
	for (int i = 0; i < 2; i++) {
		t[i] = (struct toucher){ buf, (size_t)i * 2 * NPAGES, 2 * NPAGES, 5, 50 };
		CHECK_EQ(pthread_create(&tid[i], NULL, touch_loop, &t[i]), 0);
	}
	for (int r = 0; r < 50; r++) {
		CHECK_GE(uhmm_migrate_to_device(dm, buf, 4 * NPAGES * PAGE), 0);
		CHECK_GE(uhmm_migrate_to_ram(h, buf, 2 * NPAGES * PAGE), 0);
	}
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_join(tid[i], NULL), 0);
	CHECK_PATTERN_PAGES(buf, 4 * NPAGES, 5);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(mremap_keeps_data_in_signal_mode)
{
	struct uhmm *h = open_signal();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	char *buf, *dst, *moved;

	buf = mmap(NULL, 2 * NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	CHECK(buf != MAP_FAILED);
	/* The destination stays reserved (PROT_NONE): a hole could be taken meanwhile. */
	dst = buf + NPAGES * PAGE;
	CHECK(mmap(dst, NPAGES * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
	      dst);
	pattern_fill(buf, NPAGES * PAGE, 6);
	CHECK_EQ(uhmm_manage(h, buf, NPAGES * PAGE), 0);
	CHECK_EQ(uhmm_migrate_to_device(uhmm_sim_devmem(sim), buf, NPAGES * PAGE), NPAGES);
	moved = mremap(buf, NPAGES * PAGE, NPAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst);
	/* Touched at once: the remap event may still be in the service thread's hands. */
	CHECK_PATTERN_PAGES(moved, NPAGES, 6);
	CHECK_EQ(uhmm_unmanage(h, moved, NPAGES * PAGE), 0);
	munmap(moved, NPAGES * PAGE);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}
