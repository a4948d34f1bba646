/* SPDX-License-Identifier: MIT */
/*
 * harness.h - the header-only test harness of uhmm's tests.
 *
 * One test executable per area includes this file once; it provides main().
 *
 *   TEST(name) { ... }        defines and registers a test (static void fn).
 *   CHECK(cond)               fails the test when cond is false.
 *   CHECK_EQ/NE/LT/LE/GT/GE(a, b)  integer comparisons, both values printed
 *                             as long long (and as -EXXX plus uhmm_strerror()
 *                             where a value looks like a negative errno).
 *   CHECK_PTR(a, b)           pointer equality; CHECK_NONNULL(p).
 *   CHECK_MEM(a, b, n)        memcmp; prints the first differing offset and bytes.
 *   SKIP("fmt", ...)          ends the test as skipped, with its reason.
 *   WAIT_FOR(cond)            polls cond (up to 10 s) for state that another
 *                             thread publishes after a call returns, then CHECKs it.
 *
 * Every test runs in its own forked child (so a crash, an unexpected SIGBUS or
 * a deadlock fails that test only; a per-test alarm catches deadlocks; set
 * HARNESS_TIMEOUT=seconds to change it, 0 for none). A failed CHECK, in any
 * thread, prints file, line and values and ends the test's process with 1.
 * main() prints "ok NAME", "FAIL NAME" or "skip NAME: reason" per test and
 * exits 1 when a test failed, 77 when every test was skipped, 0 otherwise.
 * Arguments name the tests to run (substring match); none runs all.
 *
 * Also: harness_run_child() (run a function in a forked child, get its wait
 * status), touch_expect_sigbus() (sigsetjmp-based SIGBUS catcher), a seeded
 * xorshift64* PRNG (HARNESS_SEED overrides the fixed seeds), and uhmm helpers
 * (uhmm_test_open skips where userfaultfd is unavailable,
 * uhmm_test_require_migrate skips where migration is refused).
 */
#ifndef UHMM_TEST_HARNESS_H
#define UHMM_TEST_HARNESS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm_driver.h"
#include "uhmm_sim.h"

#define PAGE ((size_t)UHMM_PAGE_SIZE)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define HARNESS_UNUSED __attribute__((unused))

/* ------------------------------------------------------------------------ */
/* Reporting                                                                 */
/* ------------------------------------------------------------------------ */

static char *harness_skip_buf HARNESS_UNUSED; /* MAP_SHARED: survives the child */
#define HARNESS_SKIP_LEN 1024

static inline void harness_flush(void)
{
	fflush(stdout);
	fflush(stderr);
}

/* A failed check ends the test's process, whichever thread it runs in. */
__attribute__((noreturn)) static inline void harness_fail(void)
{
	harness_flush();
	_exit(1);
}

__attribute__((format(printf, 3, 4))) static inline void
harness_report(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	flockfile(stdout);
	printf("  FAILED %s:%d: ", file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	funlockfile(stdout);
	harness_flush();
}

/* "-EINVAL" for -22, "" where the value does not look like a negative errno. */
static inline const char *harness_errname(long long v)
{
	static __thread char buf[32];
	const char *n;

	if (v >= 0 || v <= -4096)
		return "";
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
	n = strerrorname_np((int)-v);
#else
	n = NULL;
#endif
	if (n)
		snprintf(buf, sizeof(buf), " (-%s)", n);
	else
		snprintf(buf, sizeof(buf), " (errno %lld)", -v);
	return buf;
}

static inline void harness_print_val(const char *expr, long long v)
{
	printf("    %s = %lld (0x%llx)%s", expr, v, (unsigned long long)v, harness_errname(v));
	if (v < 0 && v > -4096)
		printf(": %s", uhmm_strerror((int)v));
	putchar('\n');
}

__attribute__((noreturn)) static inline void harness_fail_cmp(const char *file, int line,
							      const char *ea, const char *op,
							      const char *eb, long long a,
							      long long b)
{
	flockfile(stdout);
	printf("  FAILED %s:%d: CHECK(%s %s %s)\n", file, line, ea, op, eb);
	harness_print_val(ea, a);
	harness_print_val(eb, b);
	funlockfile(stdout);
	harness_fail();
}

#define CHECK(cond)                                                             \
	do {                                                                    \
		if (!(cond)) {                                                  \
			harness_report(__FILE__, __LINE__, "CHECK(%s)", #cond); \
			harness_fail();                                         \
		}                                                               \
	} while (0)

#define CHECK_MSG(cond, ...)                                        \
	do {                                                        \
		if (!(cond)) {                                      \
			harness_report(__FILE__, __LINE__, __VA_ARGS__); \
			harness_fail();                             \
		}                                                   \
	} while (0)

/* The expressions are stringified here, before macro expansion (-EINVAL stays -EINVAL). */
#define HARNESS_CMP(a, op, b, sa, sb)                                                \
	do {                                                                         \
		long long harness_a_ = (long long)(a);                               \
		long long harness_b_ = (long long)(b);                               \
		if (!(harness_a_ op harness_b_))                                     \
			harness_fail_cmp(__FILE__, __LINE__, sa, #op, sb, harness_a_, \
					 harness_b_);                                \
	} while (0)

#define CHECK_EQ(a, b) HARNESS_CMP(a, ==, b, #a, #b)
#define CHECK_NE(a, b) HARNESS_CMP(a, !=, b, #a, #b)
#define CHECK_LT(a, b) HARNESS_CMP(a, <, b, #a, #b)
#define CHECK_LE(a, b) HARNESS_CMP(a, <=, b, #a, #b)
#define CHECK_GT(a, b) HARNESS_CMP(a, >, b, #a, #b)
#define CHECK_GE(a, b) HARNESS_CMP(a, >=, b, #a, #b)

#define CHECK_PTR(a, b)                                                              \
	do {                                                                         \
		const volatile void *harness_pa_ = (a);                              \
		const volatile void *harness_pb_ = (b);                              \
		if (harness_pa_ != harness_pb_) {                                    \
			harness_report(__FILE__, __LINE__, "CHECK_PTR(%s, %s): %p != %p", \
				       #a, #b, (const void *)harness_pa_,            \
				       (const void *)harness_pb_);                   \
			harness_fail();                                              \
		}                                                                    \
	} while (0)

#define CHECK_NONNULL(p)                                                              \
	do {                                                                          \
		if ((p) == NULL) {                                                    \
			harness_report(__FILE__, __LINE__, "CHECK_NONNULL(%s): NULL", #p); \
			harness_fail();                                               \
		}                                                                     \
	} while (0)

static inline void harness_check_mem(const char *file, int line, const char *ea, const char *eb,
				     const void *a, const void *b, size_t n)
{
	const volatile unsigned char *x = a;
	const unsigned char *y = b;
	size_t i, j;

	if (memcmp(a, b, n) == 0)
		return;
	for (i = 0; i < n && x[i] == y[i]; i++)
		;
	flockfile(stdout);
	printf("  FAILED %s:%d: CHECK_MEM(%s, %s, %zu): first difference at offset %zu (0x%zx)\n",
	       file, line, ea, eb, n, i, i);
	if (i == n) {
		/* memcmp saw a difference that is gone now: someone is writing. */
		printf("    (the bytes changed while being compared)\n");
	} else {
		printf("    %s @%p:", ea, (const void *)(x + i));
		for (j = i; j < n && j < i + 16; j++)
			printf(" %02x", x[j]);
		printf("\n    %s @%p:", eb, (const void *)(y + i));
		for (j = i; j < n && j < i + 16; j++)
			printf(" %02x", y[j]);
		putchar('\n');
	}
	funlockfile(stdout);
	harness_fail();
}

#define CHECK_MEM(a, b, n) harness_check_mem(__FILE__, __LINE__, #a, #b, (a), (b), (n))

/* Informational output from a test (seeds, notes); never asserted on. */
#define NOTE(...)                          \
	do {                               \
		flockfile(stdout);         \
		printf("  ");              \
		printf(__VA_ARGS__);       \
		putchar('\n');             \
		funlockfile(stdout);       \
		fflush(stdout);            \
	} while (0)

__attribute__((noreturn, format(printf, 1, 2))) static inline void harness_skip(const char *fmt,
										 ...)
{
	char tmp[HARNESS_SKIP_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (harness_skip_buf) {
		memcpy(harness_skip_buf, tmp, sizeof(tmp));
		harness_skip_buf[HARNESS_SKIP_LEN - 1] = 0;
	}
	harness_flush();
	_exit(77);
}

#define SKIP(...) harness_skip(__VA_ARGS__)

/*
 * A test that reproduces a library bug not fixed yet: it skips, naming the
 * bug, so that main stays green; UHMM_KNOWN_BUGS=1 runs it (and it fails
 * until the bug is fixed). Remove the call with the fix.
 */
#define KNOWN_BUG(...)                                                                   \
	do {                                                                             \
		if (!getenv("UHMM_KNOWN_BUGS"))                                          \
			SKIP("known library bug, not fixed yet (UHMM_KNOWN_BUGS=1 runs it): " \
			     __VA_ARGS__);                                               \
	} while (0)

/* Poll for state that another thread publishes after the call that caused it
 * returned (e.g. the event thread after munmap). Not a timing assertion: the
 * bound only keeps a broken library from hanging the test. */
#define WAIT_FOR(cond)                                                                   \
	do {                                                                             \
		int harness_ms_ = 0;                                                     \
		while (!(cond) && harness_ms_ < 10000) {                                 \
			usleep(1000);                                                    \
			harness_ms_++;                                                   \
		}                                                                        \
		if (harness_ms_ > 0 && (cond))                                           \
			NOTE("note: %s:%d: '%s' became true only after ~%d ms", __FILE__, \
			     __LINE__, #cond, harness_ms_);                              \
		CHECK(cond);                                                             \
	} while (0)

/* ------------------------------------------------------------------------ */
/* The test table and main()                                                 */
/* ------------------------------------------------------------------------ */

struct harness_test {
	const char *name;
	void (*fn)(void);
	int line;
};

#define HARNESS_MAX_TESTS 128
static struct harness_test harness_tests[HARNESS_MAX_TESTS] HARNESS_UNUSED;
static int harness_ntests HARNESS_UNUSED;

static inline void harness_register(const char *name, void (*fn)(void), int line)
{
	if (harness_ntests >= HARNESS_MAX_TESTS) {
		fprintf(stderr, "harness: too many tests\n");
		abort();
	}
	harness_tests[harness_ntests].name = name;
	harness_tests[harness_ntests].fn = fn;
	harness_tests[harness_ntests].line = line;
	harness_ntests++;
}

#define TEST(name)                                                                  \
	static void test_##name(void);                                              \
	__attribute__((constructor)) static void harness_register_##name(void)      \
	{                                                                           \
		harness_register(#name, test_##name, __LINE__);                     \
	}                                                                           \
	static void test_##name(void)

/* ------------------------------------------------------------------------ */
/* SIGBUS catching                                                           */
/* ------------------------------------------------------------------------ */

static __thread sigjmp_buf *volatile harness_bus_jmp HARNESS_UNUSED;
static __thread void *volatile harness_bus_addr HARNESS_UNUSED;
static __thread volatile int harness_bus_code HARNESS_UNUSED;

static inline void harness_write_hex(uintptr_t v)
{
	char buf[2 + 16 + 1];
	int i;

	buf[0] = '0';
	buf[1] = 'x';
	for (i = 0; i < 16; i++)
		buf[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xf];
	buf[18] = '\n';
	if (write(STDOUT_FILENO, buf, sizeof(buf)) < 0)
		return;
}

static void harness_bus_handler(int sig, siginfo_t *si, void *uc)
{
	sigjmp_buf *j = harness_bus_jmp;
	static const char msg[] = "harness: unexpected SIGBUS (no touch_expect_sigbus armed in "
				  "this thread) at ";

	/*
	 * A program with its own SIGBUS handler calls uhmm's first: in signal
	 * mode, faults on device-resident pages arrive as SIGBUS too.
	 */
	if (uhmm_sigbus_handler(sig, si, uc))
		return;
	if (j) {
		harness_bus_jmp = NULL;
		harness_bus_addr = si->si_addr;
		harness_bus_code = si->si_code;
		siglongjmp(*j, 1);
	}
	if (write(STDOUT_FILENO, msg, sizeof(msg) - 1) < 0)
		_exit(1);
	harness_write_hex((uintptr_t)si->si_addr);
	/* Die of it, so the wait status tells what happened. */
	signal(sig, SIG_DFL);
	raise(sig);
}

static inline void harness_install_bus_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = harness_bus_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) != 0) {
		perror("harness: sigaction(SIGBUS)");
		abort();
	}
}

/*
 * Install our SIGBUS handler unless someone else (uhmm in signal mode, which
 * passes real SIGBUS on to the handler it found at uhmm_open) handles SIGBUS.
 * main() installs it before any test runs, so that is the usual case.
 */
static inline void harness_ensure_bus_handler(void)
{
	struct sigaction old;

	if (sigaction(SIGBUS, NULL, &old) != 0)
		return;
	if (!(old.sa_flags & SA_SIGINFO) &&
	    (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN))
		harness_install_bus_handler();
}

/*
 * Touch *p (read, or write @v) and report: 0 no SIGBUS, 1 SIGBUS with si_addr
 * inside p's page, 2 SIGBUS at another address (printed). The catch is per
 * thread: a SIGBUS in a thread that did not arm it kills the test.
 */
static inline int harness_touch_sigbus(volatile char *p, int do_write, char v)
{
	sigjmp_buf jb;
	volatile uintptr_t page = (uintptr_t)p & ~(uintptr_t)(PAGE - 1);
	volatile uintptr_t at = (uintptr_t)p;

	harness_ensure_bus_handler();
	harness_bus_addr = NULL;
	if (sigsetjmp(jb, 1) == 0) {
		harness_bus_jmp = &jb;
		if (do_write)
			*(volatile char *)at = v;
		else
			(void)*(volatile char *)at;
		harness_bus_jmp = NULL;
		return 0;
	}
	if ((uintptr_t)harness_bus_addr - page < PAGE)
		return 1;
	NOTE("SIGBUS at %p (si_code %d) while touching %p: not in that page",
	     (void *)harness_bus_addr, harness_bus_code, (void *)at);
	return 2;
}

static inline int touch_expect_sigbus(volatile char *p)
{
	return harness_touch_sigbus(p, 0, 0);
}

static inline int touch_expect_sigbus_write(volatile char *p, char v)
{
	return harness_touch_sigbus(p, 1, v);
}

/* ------------------------------------------------------------------------ */
/* Forked children                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Run fn(arg) in a forked child and return its wait status. A failed CHECK
 * or SKIP in the child ends the child (status 1 or 77); fn returning gives 0.
 * Don't fork while a uhmm handle of this process is open unless fork is what
 * the test is about.
 */
static inline int harness_run_child(void (*fn)(void *), void *arg)
{
	pid_t pid, r;
	int status;

	harness_flush();
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		alarm(120); /* alarms are not inherited: a hung child must not outlive the test */
		fn(arg);
		harness_flush();
		_exit(0);
	}
	do
		r = waitpid(pid, &status, 0);
	while (r < 0 && errno == EINTR);
	CHECK_EQ(r, pid);
	return status;
}

static inline const char *harness_status_str(int status)
{
	static __thread char buf[96];

	if (WIFEXITED(status))
		snprintf(buf, sizeof(buf), "exited with %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, sizeof(buf), "killed by signal %d (%s)%s", WTERMSIG(status),
			 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
	else
		snprintf(buf, sizeof(buf), "wait status 0x%x", status);
	return buf;
}

#define CHECK_EXITED(status, code)                                                   \
	CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == (code),                \
		  "child: expected exit %d, got: %s", (code), harness_status_str(status))

#define CHECK_SIGNALED(status, sig)                                                  \
	CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == (sig),                  \
		  "child: expected death by signal %d (%s), got: %s", (sig), strsignal(sig), \
		  harness_status_str(status))

/* ------------------------------------------------------------------------ */
/* Deterministic PRNG: xorshift64*                                           */
/* ------------------------------------------------------------------------ */

struct prng {
	uint64_t s;
};

/* Seed @r with @seed (or $HARNESS_SEED) and print it, so a failure can be replayed. */
static inline void prng_init(struct prng *r, uint64_t seed, const char *what)
{
	const char *env = getenv("HARNESS_SEED");

	if (env && *env)
		seed = strtoull(env, NULL, 0);
	NOTE("%s: seed=0x%llx (HARNESS_SEED=0x%llx replays it)", what,
	     (unsigned long long)seed, (unsigned long long)seed);
	r->s = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

static inline uint64_t prng_next(struct prng *r)
{
	uint64_t x = r->s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

/* Uniform-enough in [0, n), n > 0. */
static inline uint64_t prng_below(struct prng *r, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)prng_next(r) * n) >> 64);
}

/* A random permutation of 0..n-1 (malloc'd; free it). */
static inline size_t *prng_perm(struct prng *r, size_t n)
{
	size_t *a = malloc((n ? n : 1) * sizeof(*a));
	size_t i;

	CHECK_NONNULL(a);
	for (i = 0; i < n; i++)
		a[i] = i;
	for (i = n; i > 1; i--) {
		size_t j = (size_t)prng_below(r, i), t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
	return a;
}

/* ------------------------------------------------------------------------ */
/* Memory helpers                                                            */
/* ------------------------------------------------------------------------ */

static inline void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK_MSG(p != MAP_FAILED, "mmap(%zu): %s", len, strerror(errno));
	return p;
}

static inline void unmap(void *p, size_t len)
{
	CHECK_MSG(munmap(p, len) == 0, "munmap(%p, %zu): %s", p, len, strerror(errno));
}

/* The pattern: each 8-byte word is its offset from @base ^ @seed. */
static inline uint64_t pattern_word(size_t off, uint64_t seed)
{
	return (uint64_t)off ^ seed;
}

static inline void pattern_fill(void *base, size_t len, uint64_t seed)
{
	uint64_t *w = base;
	size_t i;

	for (i = 0; i < len / 8; i++)
		w[i] = pattern_word(i * 8, seed);
}

/* The expected contents of page @idx of a pattern-filled area, into @out. */
static inline void pattern_page(void *out, size_t idx, uint64_t seed)
{
	uint64_t *w = out;
	size_t i;

	for (i = 0; i < PAGE / 8; i++)
		w[i] = pattern_word(idx * PAGE + i * 8, seed);
}

/* Check page @idx of a pattern-filled area at @base. */
#define CHECK_PATTERN_PAGE(base, idx, seed)                                           \
	do {                                                                          \
		uint64_t harness_exp_[PAGE / 8];                                      \
		size_t harness_idx_ = (idx);                                          \
		pattern_page(harness_exp_, harness_idx_, (seed));                     \
		harness_check_mem(__FILE__, __LINE__, "page of " #base, "pattern",     \
				  (const char *)(base) + harness_idx_ * PAGE, harness_exp_, \
				  PAGE);                                              \
	} while (0)

/* Check pages [0, npages) of base against pattern_fill(base, ..., seed). */
#define CHECK_PATTERN_PAGES(base, npages, seed)                                       \
	do {                                                                          \
		for (size_t harness_p_ = 0; harness_p_ < (size_t)(npages); harness_p_++) \
			CHECK_PATTERN_PAGE(base, harness_p_, seed);                   \
	} while (0)

/* For forked children that report by exit status: the first page of [0, npages) not
 * holding the pattern, plus one; 0 when all do. */
static inline size_t pattern_bad_page(const void *base, size_t npages, uint64_t seed)
{
	const uint64_t *w = base;

	for (size_t i = 0; i < npages * PAGE / 8; i++)
		if (w[i] != pattern_word(i * 8, seed))
			return i * 8 / PAGE + 1;
	return 0;
}

static inline int page_is_zero(const void *p)
{
	const uint64_t *w = p;
	size_t i;

	for (i = 0; i < PAGE / 8; i++)
		if (w[i])
			return 0;
	return 1;
}

#define CHECK_ZERO_PAGE(p)                                                   \
	do {                                                                 \
		static const char harness_zero_[PAGE];                       \
		harness_check_mem(__FILE__, __LINE__, #p, "zeros", (p),      \
				  harness_zero_, PAGE);                      \
	} while (0)

/* Resident set size of this process, in bytes, from /proc/self/statm. */
static inline long long harness_rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long long size = 0, rss = -1;

	CHECK_NONNULL(f);
	if (fscanf(f, "%lld %lld", &size, &rss) != 2)
		rss = -1;
	fclose(f);
	CHECK_GE(rss, 0);
	return rss * sysconf(_SC_PAGESIZE);
}

static inline long long harness_read_long_file(const char *path, long long dflt)
{
	FILE *f = fopen(path, "r");
	long long v = dflt;

	if (!f)
		return dflt;
	if (fscanf(f, "%lld", &v) != 1)
		v = dflt;
	fclose(f);
	return v;
}

/* ------------------------------------------------------------------------ */
/* uhmm helpers                                                              */
/* ------------------------------------------------------------------------ */

/* uhmm_open, skipping the test where userfaultfd is unavailable here. */
static inline void uhmm_test_open_opts(struct uhmm **h, const struct uhmm_open_opts *opts)
{
	int r;

	*h = NULL;
	r = uhmm_open(h, opts);
	if (r == -EPERM || r == -ENOSYS)
		SKIP("userfaultfd unavailable: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	CHECK_NONNULL(*h);
}

static inline void uhmm_test_open(struct uhmm **h)
{
	uhmm_test_open_opts(h, NULL);
}

/* Skip the test where this handle may not migrate pages to a device. */
static inline void uhmm_test_require_migrate(struct uhmm *h)
{
	int r = uhmm_can_migrate(h);

	if (r != 0)
		SKIP("migration to a device is refused here: %s", uhmm_strerror(r));
}

/* uhmm_test_open + uhmm_test_require_migrate. */
/* uhmm_open in @mode, skipping where userfaultfd or that mode is unavailable here. */
static inline struct uhmm *uhmm_test_open_mode(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	struct uhmm *h = NULL;
	int r = uhmm_open(&h, &o);

	if (r == -EPERM || r == -ENOSYS)
		SKIP("userfaultfd unavailable: %s", uhmm_strerror(r));
	if (r == -EOPNOTSUPP)
		SKIP("this fault mode is not available here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	return h;
}

static inline struct uhmm *uhmm_test_open_migrating(void)
{
	struct uhmm *h;

	uhmm_test_open(&h);
	uhmm_test_require_migrate(h);
	return h;
}

/* The uid and gid the unprivileged tests take: nobody. */
#define UHMM_TEST_NOBODY 65534

static inline long long uhmm_test_unpriv_sysctl(void)
{
	return harness_read_long_file("/proc/sys/vm/unprivileged_userfaultfd", -1);
}

/* Root drops every privilege and becomes nobody; anyone else stays as they are. */
static inline void uhmm_test_become_nobody(void)
{
	if (geteuid() == 0) {
		CHECK_EQ(setgroups(0, NULL), 0);
		CHECK_EQ(setresgid(UHMM_TEST_NOBODY, UHMM_TEST_NOBODY, UHMM_TEST_NOBODY), 0);
		CHECK_EQ(setresuid(UHMM_TEST_NOBODY, UHMM_TEST_NOBODY, UHMM_TEST_NOBODY), 0);
	}
	CHECK_NE(geteuid(), 0);
	CHECK_NE(getegid(), 0);
}

/*
 * A test driver's migrate_to_ram: the faulting page alone comes home
 * through @copy, the driver's own copy_from_device (the kernel drivers'
 * pattern, without fault-around). @owner: the region's pgmap owner.
 */
static inline int uhmm_test_migrate_one_home(struct uhmm_fault *vmf, void *owner,
					     int (*copy)(struct uhmm_devmem *, void *const *,
							 struct uhmm_page *const *, unsigned long))
{
	uint64_t src[1], dst[1];
	struct uhmm_migrate a = {
		.h = vmf->h,
		.start = vmf->address,
		.end = vmf->address + PAGE,
		.src = src,
		.dst = dst,
		.pgmap_owner = owner,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	struct uhmm_page *page;
	void *buf;
	int ret = uhmm_migrate_setup(&a);

	if (ret)
		return ret;
	page = uhmm_migrate_entry_page(src[0]);
	if ((src[0] & UHMM_MIGRATE_MIGRATE) && page) {
		buf = uhmm_migrate_sysbuf(&a, 0);
		ret = copy(vmf->page->devmem, &buf, &page, 1);
		dst[0] = ret ? 0 : UHMM_MIGRATE_VALID;
	}
	uhmm_migrate_pages(&a);
	uhmm_migrate_finalize(&a);
	return ret;
}

static inline struct uhmm_sim *uhmm_test_sim(struct uhmm *h, unsigned long npages)
{
	UHMM_OPTS(uhmm_sim_opts, o, .npages = npages, .name = "test-sim");
	struct uhmm_sim *sim = NULL;

	CHECK_EQ(uhmm_sim_create(h, &o, &sim), 0);
	CHECK_NONNULL(sim);
	CHECK_NONNULL(uhmm_sim_devmem(sim));
	return sim;
}

static inline struct uhmm_stats hstats(struct uhmm *h)
{
	UHMM_OPTS(uhmm_stats, st);

	CHECK_EQ(uhmm_stats(h, &st), 0);
	return st;
}

static inline struct uhmm_devmem_stats dmstats(struct uhmm_devmem *dm)
{
	UHMM_OPTS(uhmm_devmem_stats, st);

	CHECK_EQ(uhmm_devmem_stats(dm, &st), 0);
	return st;
}

static inline struct uhmm_sim_stats simstats(struct uhmm_sim *sim)
{
	UHMM_OPTS(uhmm_sim_stats, st);

	CHECK_EQ(uhmm_sim_stats(sim, &st), 0);
	return st;
}

static inline long long dm_in_use(struct uhmm_devmem *dm)
{
	return (long long)dmstats(dm).in_use;
}

/* How many of the @npages pages from @addr are in @state. */
static inline size_t count_state(struct uhmm *h, const void *addr, size_t npages, int state)
{
	size_t i, n = 0;

	for (i = 0; i < npages; i++) {
		int s = uhmm_page_state(h, (const char *)addr + i * PAGE);

		CHECK_GT(s, 0);
		n += s == state;
	}
	return n;
}

static inline const char *page_state_name(int s)
{
	switch (s) {
	case UHMM_PAGE_EMPTY:
		return "EMPTY";
	case UHMM_PAGE_SYSTEM:
		return "SYSTEM";
	case UHMM_PAGE_DEVICE:
		return "DEVICE";
	case UHMM_PAGE_POISON:
		return "POISON";
	default:
		return "?";
	}
}

#define CHECK_STATE(h, addr, state)                                                       \
	do {                                                                              \
		int harness_s_ = uhmm_page_state((h), (addr));                            \
		CHECK_MSG(harness_s_ == (state),                                          \
			  "uhmm_page_state(%s) = %d %s%s, expected %s", #addr, harness_s_, \
			  page_state_name(harness_s_), harness_errname(harness_s_),        \
			  page_state_name(state));                                        \
	} while (0)

/* EMPTY or SYSTEM: on the CPU. */
#define CHECK_STATE_CPU(h, addr)                                                          \
	do {                                                                              \
		int harness_s_ = uhmm_page_state((h), (addr));                            \
		CHECK_MSG(harness_s_ == UHMM_PAGE_EMPTY || harness_s_ == UHMM_PAGE_SYSTEM, \
			  "uhmm_page_state(%s) = %d %s%s, expected EMPTY or SYSTEM", #addr, \
			  harness_s_, page_state_name(harness_s_),                        \
			  harness_errname(harness_s_));                                   \
	} while (0)

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

static inline int harness_selected(const char *name, int argc, char **argv)
{
	int i;

	if (argc <= 1)
		return 1;
	for (i = 1; i < argc; i++)
		if (strstr(name, argv[i]))
			return 1;
	return 0;
}

static inline int harness_cmp_line(const void *a, const void *b)
{
	const struct harness_test *x = a, *y = b;

	return (x->line > y->line) - (x->line < y->line);
}

static inline double harness_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#ifndef HARNESS_NO_MAIN
int main(int argc, char **argv)
{
	int i, nrun = 0, nfail = 0, nskip = 0, npass = 0;
	const char *env = getenv("HARNESS_TIMEOUT");
	unsigned timeout = env && *env ? (unsigned)strtoul(env, NULL, 0) : 120;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (sysconf(_SC_PAGESIZE) != (long)PAGE) {
		printf("skip: the page size is %ld, these tests assume %zu\n",
		       sysconf(_SC_PAGESIZE), PAGE);
		return 77;
	}
	/* Before any uhmm_open, so that uhmm in signal mode chains to it. */
	harness_install_bus_handler();
	harness_skip_buf = mmap(NULL, HARNESS_SKIP_LEN, PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (harness_skip_buf == MAP_FAILED) {
		perror("harness: mmap");
		return 1;
	}
	qsort(harness_tests, (size_t)harness_ntests, sizeof(harness_tests[0]), harness_cmp_line);

	for (i = 0; i < harness_ntests; i++) {
		const struct harness_test *t = &harness_tests[i];
		double t0;
		pid_t pid, r;
		int status;

		if (!harness_selected(t->name, argc, argv))
			continue;
		nrun++;
		harness_skip_buf[0] = 0;
		printf("-- %s\n", t->name);
		harness_flush();
		t0 = harness_now();
		pid = fork();
		if (pid < 0) {
			perror("harness: fork");
			return 1;
		}
		if (pid == 0) {
			alarm(timeout);
			t->fn();
			harness_flush();
			exit(0);
		}
		do
			r = waitpid(pid, &status, 0);
		while (r < 0 && errno == EINTR);
		if (r != pid) {
			perror("harness: waitpid");
			return 1;
		}
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			npass++;
			printf("ok   %s (%.2f s)\n", t->name, harness_now() - t0);
		} else if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
			nskip++;
			printf("skip %s: %s\n", t->name,
			       harness_skip_buf[0] ? harness_skip_buf : "(no reason given)");
		} else {
			nfail++;
			if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
				printf("FAIL %s: no result after %u s (deadlock?)\n", t->name,
				       timeout);
			else
				printf("FAIL %s: %s\n", t->name, harness_status_str(status));
		}
	}
	printf("%d tests: %d passed, %d failed, %d skipped\n", nrun, npass, nfail, nskip);
	harness_flush();
	if (nfail)
		return 1;
	if (nrun > 0 && nskip == nrun)
		return 77;
	return 0;
}
#endif /* HARNESS_NO_MAIN */

#endif /* UHMM_TEST_HARNESS_H */
