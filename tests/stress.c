/* stress: randomized, model-checked: threads run random CPU reads and writes, device kernel reads and writes, migrations to two devices, back and device to device, discards, free and re-alloc, mremap and fork over several ranges; every word is checked against a reference model. */
/* uhmm-test-label: concurrent */
/*
 * The model: each range has a shadow copy of every word. Word w of every page
 * belongs to thread w % NTHREADS, which alone writes it (in memory and in the
 * shadow), so the model stays exact while threads run concurrently. Operations
 * that change every word of a range (discard, free and re-alloc, mremap, fork)
 * take that range's lock exclusively and then check and update the whole
 * shadow; everything else takes it shared. Migrations never change data, so
 * they run under the shared lock beside the CPU accesses they race with.
 *
 * Bounds: UHMM_STRESS_SECONDS (default 4 per fault mode) and UHMM_STRESS_OPS
 * (default 100000 per fault mode), whichever comes first; setting only one of
 * them lifts the other. HARNESS_SEED replays a run. UHMM_STRESS_WITHOUT=fork,mremap
 * (operation names as printed) narrows a failure down. Built with -DUHMM_TRACE
 * (src/trace.h), the first mismatch prints the library's recent events on its page.
 */
#include "harness.h"

#include <stdatomic.h>
#include <sys/syscall.h>
#ifdef UHMM_TRACE
void uhmm__trace_dump(uintptr_t addr);
#endif

#define NTHREADS 4
#define NRANGES 4
#define RPAGES 64 /* pages per range: 256 KiB */
#define WPP (PAGE / 8)
#define RWORDS (RPAGES * WPP)
#define MAXRUN 8 /* pages one CPU access or migration covers, at most */
#define LOGN 16  /* recent operations kept per thread, printed on a mismatch */
#define WATCHDOG_S 30 /* seconds without progress that make a thread stuck */

enum op {
	OP_WRITE,
	OP_READ,
	OP_TO_DEV,
	OP_TO_RAM,
	OP_DEV_TO_DEV,
	OP_TOUCH_TO_DEV,
	OP_DISCARD,
	OP_REALLOC,
	OP_MREMAP,
	OP_FORK,
	OP_STATES,
	OP_DEV_READ,
	OP_DEV_WRITE,
	NOPS
};

static const char *const op_name[NOPS] = {
	"cpu-write", "cpu-read", "to-device", "to-ram", "device-to-device", "touch-then-device",
	"discard", "free+alloc", "mremap", "fork", "states", "device-read", "device-write",
};

/* Out of 10000; UHMM_STRESS_WITHOUT (names, comma-separated) turns some off. */
static unsigned op_weight[NOPS] = {
	[OP_WRITE] = 3000,     [OP_READ] = 3000,       [OP_TO_DEV] = 1300,
	[OP_TO_RAM] = 800,     [OP_DEV_TO_DEV] = 500,  [OP_TOUCH_TO_DEV] = 400,
	[OP_DISCARD] = 200,    [OP_REALLOC] = 60,      [OP_MREMAP] = 60,
	[OP_FORK] = 5,         [OP_STATES] = 75,       [OP_DEV_READ] = 300,
	[OP_DEV_WRITE] = 300,
};

struct srange {
	pthread_rwlock_t lock;
	uint64_t *volatile base; /* changes under the exclusive lock */
	uint64_t shadow[RWORDS];
	unsigned gen; /* how often it was re-allocated or moved */
};

struct logent {
	enum op op;
	int range;
	size_t p0, n;
	int dev;
	long ret;
};

struct stress {
	struct uhmm *h;
	struct uhmm_sim *sim[2];
	struct uhmm_devmem *dm[2];
	struct srange r[NRANGES];
	/*
	 * mremap (with its sync) and free+alloc, one at a time: a library bug
	 * otherwise lets uhmm_alloc take the address another thread's mremap just
	 * left before its unmap event is read (alloc_racing_mremap_* below).
	 */
	pthread_mutex_t structural;
	atomic_ulong ops;
	unsigned long max_ops;
	double deadline;
	atomic_int stop;
	atomic_ulong mismatches, words_checked, forks;
	atomic_ulong count[NOPS];
	pthread_barrier_t go;
};

struct worker {
	struct stress *s;
	int t;
	struct prng rng;
	pthread_t tid;
	atomic_int lwp;          /* its kernel thread id, for the watchdog */
	atomic_ulong progress;   /* operations it finished */
	atomic_int done;
	struct logent log[LOGN];
	unsigned nlog;
	enum op cur; /* the operation under way */
};

static void log_op(struct worker *wk, enum op op, int range, size_t p0, size_t n, int dev,
		   long ret)
{
	wk->log[wk->nlog++ % LOGN] = (struct logent){ op, range, p0, n, dev, ret };
}

static void dump_log(struct worker *wk)
{
	flockfile(stdout);
	printf("    thread %d, its last operations (oldest first):\n", wk->t);
	for (unsigned i = wk->nlog > LOGN ? wk->nlog - LOGN : 0; i < wk->nlog; i++) {
		const struct logent *e = &wk->log[i % LOGN];

		printf("      %-18s range %d pages [%zu, %zu) dev %d -> %ld\n", op_name[e->op],
		       e->range, e->p0, e->p0 + e->n, e->dev, e->ret);
	}
	funlockfile(stdout);
}

/* A word differs from the model: count it, tell the first few, and adopt it. */
static void mismatch(struct worker *wk, int ri, size_t word, uint64_t got, uint64_t *exp)
{
	struct stress *s = wk->s;
	unsigned long n = atomic_fetch_add(&s->mismatches, 1);

	if (n < 8) {
		NOTE("MISMATCH: thread %d in %s, range %d (gen %u) page %zu word %zu (owner %zu): "
		     "read 0x%016llx, model 0x%016llx; page state %s",
		     wk->t, op_name[wk->cur], ri, s->r[ri].gen, word / WPP, word % WPP, (word % WPP) % NTHREADS,
		     (unsigned long long)got, (unsigned long long)*exp,
		     page_state_name(uhmm_page_state(s->h, s->r[ri].base + word / WPP * WPP)));
		dump_log(wk);
#ifdef UHMM_TRACE
		if (n == 0)
			uhmm__trace_dump((uintptr_t)(s->r[ri].base + word / WPP * WPP));
#endif
	}
	*exp = got; /* one corruption is counted once */
}

/* Check the words of pages [p0, p0+n) of range @ri that @owner owns (-1: all). */
static void check_pages(struct worker *wk, int ri, size_t p0, size_t n, int owner)
{
	struct srange *rg = &wk->s->r[ri];
	const volatile uint64_t *m = rg->base;
	unsigned long k = 0;
	size_t first = owner < 0 ? 0 : (size_t)owner, step = owner < 0 ? 1 : NTHREADS;

	for (size_t p = p0; p < p0 + n; p++) {
		for (size_t w = first; w < WPP; w += step, k++) {
			size_t i = p * WPP + w;
			uint64_t v = m[i];

			if (v != rg->shadow[i])
				mismatch(wk, ri, i, v, &rg->shadow[i]);
		}
	}
	atomic_fetch_add_explicit(&wk->s->words_checked, k, memory_order_relaxed);
}

static void write_pages(struct worker *wk, int ri, size_t p0, size_t n, int owner)
{
	struct srange *rg = &wk->s->r[ri];
	volatile uint64_t *m = rg->base;
	size_t first = owner < 0 ? 0 : (size_t)owner, step = owner < 0 ? 1 : NTHREADS;

	for (size_t p = p0; p < p0 + n; p++) {
		for (size_t w = first; w < WPP; w += step) {
			uint64_t v = prng_next(&wk->rng);

			m[p * WPP + w] = v;
			rg->shadow[p * WPP + w] = v;
		}
	}
}

static void pick_run(struct worker *wk, size_t *p0, size_t *n)
{
	*p0 = (size_t)prng_below(&wk->rng, RPAGES);
	*n = 1 + (size_t)prng_below(&wk->rng, MAXRUN);
	if (*p0 + *n > RPAGES)
		*n = RPAGES - *p0;
}

/* Whether the comma-separated list @list names @name. */
static bool listed(const char *list, const char *name)
{
	size_t len = strlen(name);

	for (const char *at = list; (at = strstr(at, name)); at++)
		if ((at == list || at[-1] == ',') && (!at[len] || at[len] == ','))
			return true;
	return false;
}

/* UHMM_STRESS_WITHOUT: a bisecting aid; what is turned off becomes CPU reads. */
static void drop_ops(void)
{
	const char *v = getenv("UHMM_STRESS_WITHOUT");

	for (int i = 0; v && i < NOPS; i++) {
		if (i == OP_READ || !op_weight[i] || !listed(v, op_name[i]))
			continue;
		NOTE("without %s", op_name[i]);
		op_weight[OP_READ] += op_weight[i];
		op_weight[i] = 0;
	}
}

static enum op pick_op(struct worker *wk)
{
	unsigned x = (unsigned)prng_below(&wk->rng, 10000);

	for (int i = 0; i < NOPS; i++) {
		if (x < op_weight[i])
			return (enum op)i;
		x -= op_weight[i];
	}
	return OP_READ;
}

static void *addr_of(struct srange *rg, size_t p)
{
	return (char *)rg->base + p * PAGE;
}

/* ---- device kernels: the words of one thread, through a device's page table ---- */

#define OWN_WPP (WPP / NTHREADS) /* words of one owner per page */

struct dev_args {
	uint64_t *base;     /* the range, as the CPU sees it */
	uint64_t *shadow;   /* its model (stable: only the launching thread writes it) */
	size_t p0;
	int owner;
	uint64_t seed;      /* device-write: word k gets dev_value(seed, k) */
	atomic_ulong bad;   /* device-read: words that differ */
	atomic_ulong first; /* the first of them, + 1 */
	uint64_t got;       /* and what the device read there */
};

static uint64_t dev_value(uint64_t seed, unsigned long k)
{
	uint64_t z = seed + (k + 1) * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static size_t dev_word(const struct dev_args *a, unsigned long k)
{
	return (a->p0 + k / OWN_WPP) * WPP + (size_t)a->owner + (k % OWN_WPP) * NTHREADS;
}

static void dev_read_kernel(struct uhmm_sim_ctx *ctx, unsigned long k, void *arg)
{
	struct dev_args *a = arg;
	size_t w = dev_word(a, k);
	uint64_t v = uhmm_sim_load_u64(ctx, &a->base[w]);
	unsigned long none = 0;

	if (v == a->shadow[w])
		return;
	atomic_fetch_add(&a->bad, 1);
	if (atomic_compare_exchange_strong(&a->first, &none, w + 1))
		a->got = v;
}

static void dev_write_kernel(struct uhmm_sim_ctx *ctx, unsigned long k, void *arg)
{
	struct dev_args *a = arg;

	uhmm_sim_store_u64(ctx, &a->base[dev_word(a, k)], dev_value(a->seed, k));
}

/* The device reads (or writes) the words @wk owns in pages [p0, p0+n) of range @ri. */
static long dev_access(struct worker *wk, int ri, int dev, size_t p0, size_t n, bool write)
{
	struct srange *rg = &wk->s->r[ri];
	struct dev_args a = { .base = rg->base, .shadow = rg->shadow, .p0 = p0, .owner = wk->t,
			      .seed = prng_next(&wk->rng) };
	int ret = uhmm_sim_launch(wk->s->sim[dev], write ? dev_write_kernel : dev_read_kernel,
				  n * OWN_WPP, &a);

	CHECK_MSG(ret == 0, "device %s of range %d pages [%zu, %zu): %d%s",
		  write ? "write" : "read", ri, p0, p0 + n, ret, harness_errname(ret));
	if (write) {
		for (unsigned long k = 0; k < n * OWN_WPP; k++)
			rg->shadow[dev_word(&a, k)] = dev_value(a.seed, k);
		return 0;
	}
	if (atomic_load(&a.bad)) {
		size_t w = atomic_load(&a.first) - 1;

		NOTE("device %d read %lu words that differ from the model in range %d pages "
		     "[%zu, %zu); the first:", dev, atomic_load(&a.bad), ri, p0, p0 + n);
		mismatch(wk, ri, w, a.got, &rg->shadow[w]);
		atomic_fetch_add(&wk->s->mismatches, atomic_load(&a.bad) - 1);
	}
	atomic_fetch_add_explicit(&wk->s->words_checked, n * OWN_WPP, memory_order_relaxed);
	return (long)atomic_load(&a.bad);
}

/* ---- operations under the shared lock ---- */

static void op_shared(struct worker *wk, enum op op, int ri)
{
	struct stress *s = wk->s;
	struct srange *rg = &s->r[ri];
	size_t p0, n;
	int dev = (int)prng_below(&wk->rng, 2);
	long ret = 0;

	pick_run(wk, &p0, &n);
	pthread_rwlock_rdlock(&rg->lock);
	switch (op) {
	case OP_WRITE:
		write_pages(wk, ri, p0, n, wk->t);
		break;
	case OP_READ:
		check_pages(wk, ri, p0, n, wk->t);
		break;
	case OP_TO_DEV:
		ret = uhmm_migrate_to_device(s->dm[dev], addr_of(rg, p0), n * PAGE);
		CHECK_GE(ret, 0);
		break;
	case OP_TO_RAM:
		ret = uhmm_migrate_to_ram(s->h, addr_of(rg, p0), n * PAGE);
		CHECK_GE(ret, 0);
		break;
	case OP_DEV_TO_DEV:
		/* Device to device is home first, then out (migration moves CPU pages only). */
		CHECK_GE(uhmm_migrate_to_device(s->dm[dev], addr_of(rg, p0), n * PAGE), 0);
		CHECK_GE(uhmm_migrate_to_ram(s->h, addr_of(rg, p0), n * PAGE), 0);
		ret = uhmm_migrate_to_device(s->dm[!dev], addr_of(rg, p0), n * PAGE);
		CHECK_GE(ret, 0);
		break;
	case OP_TOUCH_TO_DEV:
		/* A page on one device, touched (it comes home), then sent to the other. */
		CHECK_GE(uhmm_migrate_to_device(s->dm[dev], addr_of(rg, p0), n * PAGE), 0);
		check_pages(wk, ri, p0, 1, wk->t);
		ret = uhmm_migrate_to_device(s->dm[!dev], addr_of(rg, p0), n * PAGE);
		CHECK_GE(ret, 0);
		break;
	case OP_DEV_READ:
	case OP_DEV_WRITE:
		/* Pages migrate to the device on its touch (the sim's default policy). */
		ret = dev_access(wk, ri, dev, p0, n, op == OP_DEV_WRITE);
		break;
	case OP_STATES:
		/* Every page is somewhere legal; none is poisoned (no device fails here). */
		for (size_t p = 0; p < RPAGES; p++) {
			int st = uhmm_page_state(s->h, addr_of(rg, p));

			CHECK_MSG(st >= UHMM_PAGE_EMPTY && st <= UHMM_PAGE_DEVICE,
				  "range %d page %zu: state %d %s", ri, p, st, page_state_name(st));
		}
		p0 = 0;
		n = RPAGES;
		break;
	default:
		CHECK(!"not a shared operation");
	}
	pthread_rwlock_unlock(&rg->lock);
	log_op(wk, op, ri, p0, n, dev, ret);
}

/* ---- operations that change every word: under the exclusive lock ---- */

static void zero_shadow(struct srange *rg, size_t p0, size_t n)
{
	memset(&rg->shadow[p0 * WPP], 0, n * PAGE);
}

static void op_discard(struct worker *wk, int ri)
{
	struct srange *rg = &wk->s->r[ri];
	size_t p0, n;

	pick_run(wk, &p0, &n);
	pthread_rwlock_wrlock(&rg->lock);
	check_pages(wk, ri, 0, RPAGES, -1);
	CHECK_EQ(madvise(addr_of(rg, p0), n * PAGE, MADV_DONTNEED), 0);
	zero_shadow(rg, p0, n);
	/* Read at once: the event may still be in the service thread's hands. */
	check_pages(wk, ri, p0, n, -1);
	pthread_rwlock_unlock(&rg->lock);
	log_op(wk, OP_DISCARD, ri, p0, n, -1, 0);
}

static void op_realloc(struct worker *wk, int ri)
{
	struct stress *s = wk->s;
	struct srange *rg = &s->r[ri];
	void *p = NULL;

	pthread_rwlock_wrlock(&rg->lock);
	check_pages(wk, ri, 0, RPAGES, -1);
	pthread_mutex_lock(&s->structural);
	CHECK_EQ(uhmm_free(s->h, rg->base, RPAGES * PAGE), 0);
	/* Often the address just freed, or one another range left. */
	CHECK_EQ(uhmm_alloc(s->h, RPAGES * PAGE, &p), 0);
	pthread_mutex_unlock(&s->structural);
	rg->base = p;
	rg->gen++;
	zero_shadow(rg, 0, RPAGES);
	/* Fresh memory reads zeros; then give it data again (holes stay holes). */
	check_pages(wk, ri, 0, RPAGES, -1);
	write_pages(wk, ri, 0, RPAGES / 2 + (size_t)prng_below(&wk->rng, RPAGES / 2), -1);
	pthread_rwlock_unlock(&rg->lock);
	log_op(wk, OP_REALLOC, ri, 0, RPAGES, -1, 0);
}

static void op_mremap(struct worker *wk, int ri)
{
	struct stress *s = wk->s;
	struct srange *rg = &s->r[ri];
	void *dst, *moved;

	pthread_rwlock_wrlock(&rg->lock);
	check_pages(wk, ri, 0, RPAGES, -1);
	pthread_mutex_lock(&s->structural);
	/* A reserved destination, so that nobody else can take it meanwhile. */
	dst = mmap(NULL, RPAGES * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	moved = mremap(rg->base, RPAGES * PAGE, RPAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK_MSG(moved == dst, "mremap: %s", strerror(errno));
	rg->base = moved;
	rg->gen++;
	/*
	 * Touched at once: the remap event may still be in the service thread's
	 * hands, and another thread's uhmm_alloc may be given the old address.
	 */
	check_pages(wk, ri, 0, RPAGES, -1);
	/*
	 * A library bug makes this sync necessary: a migration of the new address
	 * right after mremap may fail with -ENOENT (the entry points look the
	 * range up before waiting for pending events; see
	 * migration_right_after_mremap_* below, which fails until it is fixed).
	 */
	CHECK_EQ(uhmm_sync(s->h), 0);
	pthread_mutex_unlock(&s->structural);
	pthread_rwlock_unlock(&rg->lock);
	log_op(wk, OP_MREMAP, ri, 0, RPAGES, -1, 0);
}

/*
 * Fork with every range held exclusively: the child must see the whole model
 * (pages on devices included), then writes its own copy, which must not show
 * in the parent.
 */
static void op_fork(struct worker *wk)
{
	struct stress *s = wk->s;
	pid_t pid, r;
	int st;

	for (int i = 0; i < NRANGES; i++)
		pthread_rwlock_wrlock(&s->r[i].lock);
	harness_flush();
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0) {
		unsigned long bad = 0;

		for (int i = 0; i < NRANGES; i++) {
			volatile uint64_t *m = s->r[i].base;

			for (size_t k = 0; k < RWORDS; k++) {
				if (m[k] != s->r[i].shadow[k] && bad++ < 4)
					printf("  child: range %d page %zu word %zu: 0x%016llx, model "
					       "0x%016llx\n",
					       i, k / WPP, k % WPP, (unsigned long long)m[k],
					       (unsigned long long)s->r[i].shadow[k]);
				m[k] = ~s->r[i].shadow[k];
			}
			for (size_t k = 0; k < RWORDS; k++)
				bad += m[k] != ~s->r[i].shadow[k];
		}
		fflush(stdout);
		_exit(bad ? 1 : 0);
	}
	do
		r = waitpid(pid, &st, 0);
	while (r < 0 && errno == EINTR);
	CHECK_EQ(r, pid);
	if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
		atomic_fetch_add(&s->mismatches, 1);
		NOTE("MISMATCH: the forked child did not see the model: %s", harness_status_str(st));
		dump_log(wk);
	}
	for (int i = 0; i < NRANGES; i++)
		check_pages(wk, i, 0, RPAGES, -1);
	for (int i = NRANGES; i-- > 0;)
		pthread_rwlock_unlock(&s->r[i].lock);
	atomic_fetch_add(&s->forks, 1);
	log_op(wk, OP_FORK, -1, 0, 0, -1, st);
}

static bool out_of_budget(struct stress *s, unsigned long done)
{
	if (atomic_load(&s->stop))
		return true;
	if (done >= s->max_ops || harness_now() >= s->deadline) {
		atomic_store(&s->stop, 1);
		return true;
	}
	return false;
}

static void *stress_thread(void *arg)
{
	struct worker *wk = arg;
	struct stress *s = wk->s;

	atomic_store(&wk->lwp, (int)syscall(SYS_gettid));
	pthread_barrier_wait(&s->go);
	while (!out_of_budget(s, atomic_fetch_add(&s->ops, 1))) {
		enum op op = pick_op(wk);
		int ri = (int)prng_below(&wk->rng, NRANGES);

		atomic_fetch_add_explicit(&s->count[op], 1, memory_order_relaxed);
		wk->cur = op;
		switch (op) {
		case OP_DISCARD:
			op_discard(wk, ri);
			break;
		case OP_REALLOC:
			op_realloc(wk, ri);
			break;
		case OP_MREMAP:
			op_mremap(wk, ri);
			break;
		case OP_FORK:
			op_fork(wk);
			break;
		default:
			op_shared(wk, op, ri);
		}
		atomic_fetch_add_explicit(&wk->progress, 1, memory_order_relaxed);
	}
	atomic_store(&wk->done, 1);
	return NULL;
}

/*
 * A thread that makes no progress for a long time is stuck, and the harness's
 * alarm would only say "deadlock?". Say where: a thread asleep in a futex wait
 * on a page state word that is no longer locked lost its wake-up.
 */
static void watchdog_report(struct worker *wk)
{
	char path[64], line[256] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", atomic_load(&wk->lwp));
	f = fopen(path, "r");
	if (f) {
		if (!fgets(line, sizeof(line), f))
			line[0] = 0;
		fclose(f);
	}
	NOTE("STUCK: thread %d made no progress for %d s; /proc/.../syscall: %s", wk->t,
	     WATCHDOG_S, line);
	if (!strncmp(line, "202 ", 4)) {
		unsigned long long addr = 0, op = 0, val = 0;

		if (sscanf(line + 4, "%llx %llx %llx", &addr, &op, &val) == 3)
			NOTE("futex wait at %#llx expecting %#llx; the word holds %#llx now%s", addr, val,
			     (unsigned long long)*(volatile uint32_t *)(uintptr_t)addr,
			     (val & 0x4) && !(*(volatile uint32_t *)(uintptr_t)addr & 0x4) ?
				     ": a page lock released without waking its waiter (lost "
				     "wake-up: a state change under the lock dropped W_WAITERS)" :
				     "");
	}
	dump_log(wk);
}

static void join_with_watchdog(struct worker *wk, int n)
{
	unsigned long last[NTHREADS] = { 0 };
	double since[NTHREADS];

	for (int t = 0; t < n; t++)
		since[t] = harness_now();
	for (;;) {
		int running = 0;

		for (int t = 0; t < n; t++) {
			unsigned long p = atomic_load(&wk[t].progress);

			if (atomic_load(&wk[t].done))
				continue;
			running++;
			if (p != last[t]) {
				last[t] = p;
				since[t] = harness_now();
			} else if (harness_now() - since[t] > WATCHDOG_S) {
				watchdog_report(&wk[t]);
				CHECK_MSG(0, "thread %d is stuck", t);
			}
		}
		if (!running)
			break;
		usleep(20000);
	}
	for (int t = 0; t < n; t++)
		CHECK_EQ(pthread_join(wk[t].tid, NULL), 0);
}

static double env_num(const char *name, double dflt, bool *set)
{
	const char *v = getenv(name);

	*set = v && *v;
	return *set ? strtod(v, NULL) : dflt;
}

static void run_stress(enum uhmm_fault_mode mode, uint64_t seed)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	static struct stress s; /* 2 MiB of shadow: not on the stack */
	static struct worker wk[NTHREADS];
	struct uhmm_devmem_stats d0, d1;
	struct uhmm_stats st;
	struct prng rng;
	bool ops_set, secs_set;
	double secs, t0;
	size_t ndev = 0;
	int r;

	memset(&s, 0, sizeof(s));
	r = uhmm_open(&s.h, &o);
	if (r == -EPERM || r == -ENOSYS)
		SKIP("userfaultfd unavailable: %s", uhmm_strerror(r));
	if (r == -EOPNOTSUPP)
		SKIP("this fault mode is not available here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(s.h);
	CHECK_EQ(uhmm_fault_mode(s.h), mode);

	s.max_ops = (unsigned long)env_num("UHMM_STRESS_OPS", 100000, &ops_set);
	secs = env_num("UHMM_STRESS_SECONDS", 4, &secs_set);
	if (ops_set && !secs_set)
		secs = 1e9;
	if (secs_set && !ops_set)
		s.max_ops = ~0UL;
	/* The harness's per-test alarm would end a long run: re-arm it. */
	alarm(secs < 1e8 ? (unsigned)secs + 120 : 0);

	pthread_mutex_init(&s.structural, NULL);
	drop_ops();
	prng_init(&rng, seed, mode == UHMM_FAULT_THREAD ? "stress, thread mode" :
							  "stress, signal mode");
	NOTE("%d threads, %d ranges of %d pages, 2 devices; at most %lu operations or %.0f s",
	     NTHREADS, NRANGES, RPAGES, s.max_ops, secs);
	for (int i = 0; i < 2; i++) {
		s.sim[i] = uhmm_test_sim(s.h, NRANGES * RPAGES);
		s.dm[i] = uhmm_sim_devmem(s.sim[i]);
	}
	for (int i = 0; i < NRANGES; i++) {
		void *p = NULL;

		pthread_rwlockattr_t ra;

		/* Writers first: exclusive operations must not starve behind shared ones. */
		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&s.r[i].lock, &ra);
		pthread_rwlockattr_destroy(&ra);
		CHECK_EQ(uhmm_alloc(s.h, RPAGES * PAGE, &p), 0);
		s.r[i].base = p;
	}
	CHECK_EQ(pthread_barrier_init(&s.go, NULL, NTHREADS + 1), 0);
	for (int t = 0; t < NTHREADS; t++) {
		memset(&wk[t], 0, sizeof(wk[t]));
		wk[t].s = &s;
		wk[t].t = t;
		wk[t].rng.s = prng_next(&rng) | 1;
		/* Start with data everywhere except a few holes. */
		for (int i = 0; i < NRANGES; i++)
			write_pages(&wk[t], i, 0, RPAGES - 4, t);
	}
	t0 = harness_now();
	s.deadline = t0 + secs;
	for (int t = 0; t < NTHREADS; t++)
		CHECK_EQ(pthread_create(&wk[t].tid, NULL, stress_thread, &wk[t]), 0);
	pthread_barrier_wait(&s.go);
	join_with_watchdog(wk, NTHREADS);
	pthread_barrier_destroy(&s.go);

	/* Accounting agrees with the page states: every device page is one page of data. */
	CHECK_EQ(uhmm_sync(s.h), 0);
	for (int i = 0; i < NRANGES; i++)
		ndev += count_state(s.h, s.r[i].base, RPAGES, UHMM_PAGE_DEVICE);
	d0 = dmstats(s.dm[0]);
	d1 = dmstats(s.dm[1]);
	CHECK_EQ(d0.resident + d1.resident, ndev);
	CHECK_EQ(d0.in_use, d0.resident);
	CHECK_EQ(d1.in_use, d1.resident);
	st = hstats(s.h);
	CHECK_EQ(st.poisoned, 0);

	/* The whole model, a last time, by CPU touches (pages come home as they are read). */
	for (int i = 0; i < NRANGES; i++)
		check_pages(&wk[0], i, 0, RPAGES, -1);
	CHECK_EQ(dmstats(s.dm[0]).in_use + dmstats(s.dm[1]).in_use, 0);

	NOTE("%lu operations in %.1f s (%.0f/s), %lu words checked, %lu forks, %lu mismatches",
	     atomic_load(&s.ops) - NTHREADS, harness_now() - t0,
	     (double)(atomic_load(&s.ops) - NTHREADS) / (harness_now() - t0),
	     atomic_load(&s.words_checked), atomic_load(&s.forks), atomic_load(&s.mismatches));
	for (int i = 0; i < NOPS; i++)
		NOTE("  %-18s %lu", op_name[i], atomic_load(&s.count[i]));
	NOTE("faults %llu (on device pages %llu), pages out %llu, home %llu, events %llu; "
	     "%llu device pages at the end",
	     (unsigned long long)st.faults, (unsigned long long)st.faults_device,
	     (unsigned long long)st.pages_out, (unsigned long long)st.pages_home,
	     (unsigned long long)st.events, (unsigned long long)ndev);
	CHECK_EQ(atomic_load(&s.mismatches), 0);

	for (int i = 0; i < NRANGES; i++) {
		CHECK_EQ(uhmm_free(s.h, s.r[i].base, RPAGES * PAGE), 0);
		pthread_rwlock_destroy(&s.r[i].lock);
	}
	for (int i = 0; i < 2; i++)
		CHECK_EQ(uhmm_sim_destroy(s.sim[i]), 0);
	pthread_mutex_destroy(&s.structural);
	uhmm_close(s.h);
}

TEST(stress_thread_mode)
{
	run_stress(UHMM_FAULT_THREAD, 0x57e55001);
}

TEST(stress_signal_mode)
{
	run_stress(UHMM_FAULT_SIGNAL, 0x57e55002);
}

/*
 * Regression test: fork while another thread migrates. The atfork handler
 * brought every device page home, but a migration running in another thread
 * took pages away again before the fork itself, so the child read zeros where
 * its data was (fixed in 51430f5: fork holds migrations back). The stress
 * above forks with every range held, so it does not meet this.
 */
#define FR_PAGES 256

struct fork_race {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	char *buf, *pinned;
	atomic_int stop;
};

static void *fork_race_migrator(void *arg)
{
	struct fork_race *fr = arg;

	while (!atomic_load(&fr->stop)) {
		int r = uhmm_migrate_to_device(fr->dm, fr->buf, FR_PAGES * PAGE);

		CHECK_MSG(r >= 0 || r == -ENOMEM, "uhmm_migrate_to_device: %d%s", r, harness_errname(r));
		CHECK_GE(uhmm_migrate_to_ram(fr->h, fr->buf, FR_PAGES * PAGE), 0);
	}
	return NULL;
}

static void fork_while_migrating(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	struct fork_race fr = { 0 };
	struct uhmm_sim *sim;
	pthread_t tid;
	int nforks = 0, nbad = 0, r;
	double t0 = harness_now();
	void *p = NULL;

	r = uhmm_open(&fr.h, &o);
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("cannot open in this mode here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(fr.h);
	/* Room for the device pages children still reference (thread mode serves them). */
	sim = uhmm_test_sim(fr.h, 4 * FR_PAGES + 1);
	fr.dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_alloc(fr.h, FR_PAGES * PAGE, &p), 0);
	fr.buf = p;
	pattern_fill(fr.buf, FR_PAGES * PAGE, 0xf0f0);
	/* One page stays on the device throughout, beside those that come and go. */
	CHECK_EQ(uhmm_alloc(fr.h, PAGE, &p), 0);
	fr.pinned = p;
	memset(fr.pinned, 0x77, PAGE);
	CHECK_EQ(uhmm_migrate_to_device(fr.dm, fr.pinned, PAGE), 1);
	CHECK_EQ(pthread_create(&tid, NULL, fork_race_migrator, &fr), 0);
	while (nforks < 200 && harness_now() - t0 < 5) {
		pid_t pid;
		int st;

		harness_flush();
		pid = fork();
		CHECK_GE(pid, 0);
		if (pid == 0) {
			uint64_t exp[PAGE / 8];

			for (size_t i = 0; i < FR_PAGES; i++) {
				pattern_page(exp, i, 0xf0f0);
				if (!memcmp(fr.buf + i * PAGE, exp, PAGE))
					continue;
				if (!nbad)
					printf("  child: page %zu differs: first word 0x%llx, expected "
					       "0x%llx\n", i,
					       (unsigned long long)*(uint64_t *)(fr.buf + i * PAGE),
					       (unsigned long long)exp[0]);
				fflush(stdout);
				_exit(1);
			}
			_exit(0);
		}
		CHECK_EQ(waitpid(pid, &st, 0), pid);
		nforks++;
		if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && nbad++ == 0)
			NOTE("fork %d: the child did not see its data: %s", nforks,
			     harness_status_str(st));
	}
	atomic_store(&fr.stop, 1);
	CHECK_EQ(pthread_join(tid, NULL), 0);
	NOTE("%d forks while another thread migrated, %d children saw wrong data", nforks, nbad);
	for (size_t i = 0; i < FR_PAGES; i++)
		CHECK_PATTERN_PAGE(fr.buf, i, 0xf0f0);
	CHECK_EQ(nbad, 0);
	CHECK_EQ(fr.pinned[0], 0x77);
	CHECK_EQ(uhmm_free(fr.h, fr.pinned, PAGE), 0);
	CHECK_EQ(uhmm_free(fr.h, fr.buf, FR_PAGES * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(fr.h);
}

TEST(fork_while_another_thread_migrates_thread_mode)
{
	fork_while_migrating(UHMM_FAULT_THREAD);
}

TEST(fork_while_another_thread_migrates_signal_mode)
{
	fork_while_migrating(UHMM_FAULT_SIGNAL);
}

/*
 * Fails today (a library bug). README: "The thread that caused an event sees
 * it handled before its next fault, migration or state query". After mremap
 * returns, a migration of the range at its new address sometimes fails with
 * -ENOENT: uhmm_migrate_to_device/_to_ram look the range up (range_managed)
 * before they wait for pending events (uhmm_migrate_setup waits, too late).
 */
static void migrate_after_mremap(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	const size_t len = 16 * PAGE;
	struct uhmm *h;
	struct uhmm_sim *sim;
	int i, r = 0, nbad = 0, first = -1;
	void *p = NULL;

	r = uhmm_open(&h, &o);
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("cannot open in this mode here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, 16);
	CHECK_EQ(uhmm_alloc(h, len, &p), 0);
	pattern_fill(p, len, 0xe1e1);
	for (i = 0; i < 1000; i++) {
		void *d = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		void *m;

		CHECK(d != MAP_FAILED);
		m = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, d);
		CHECK(m == d);
		p = m;
		r = (i & 1) ? uhmm_migrate_to_device(uhmm_sim_devmem(sim), p, len) :
			      uhmm_migrate_to_ram(h, p, len);
		if (r < 0 && nbad++ == 0) {
			first = i;
			NOTE("round %d: %s right after mremap: %d %s", i,
			     (i & 1) ? "uhmm_migrate_to_device" : "uhmm_migrate_to_ram", r,
			     harness_errname(r));
		}
	}
	NOTE("%d of %d migrations right after mremap failed (the first in round %d)", nbad, i,
	     first);
	for (size_t k = 0; k < len / PAGE; k++)
		CHECK_PATTERN_PAGE(p, k, 0xe1e1);
	CHECK_EQ(nbad, 0);
	CHECK_EQ(uhmm_free(h, p, len), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(migration_right_after_mremap_sees_the_moved_range_thread_mode)
{
	migrate_after_mremap(UHMM_FAULT_THREAD);
}

TEST(migration_right_after_mremap_sees_the_moved_range_signal_mode)
{
	migrate_after_mremap(UHMM_FAULT_SIGNAL);
}

/*
 * Regression test (UBSan): in thread mode, a fork with no page on any device
 * built an empty snapshot and sorted it with qsort(NULL, 0, ...) (src/fork.c),
 * undefined behaviour that UBSan reports ("null pointer passed as argument 1,
 * which is declared to never be null"); fixed in 23386b2.
 */
TEST(fork_with_no_page_on_a_device_thread_mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = UHMM_FAULT_THREAD);
	struct uhmm *h;
	void *p = NULL;
	pid_t pid;
	int st;

	uhmm_test_open_opts(&h, &o);
	CHECK_EQ(uhmm_alloc(h, PAGE, &p), 0);
	memset(p, 0x3c, PAGE);
	harness_flush();
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0)
		_exit(*(volatile char *)p == 0x3c ? 0 : 1);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK_EXITED(st, 0);
	CHECK_EQ(uhmm_free(h, p, PAGE), 0);
	uhmm_close(h);
}

/*
 * After fork, pages the parent shared with its child must be made exclusive
 * again before UFFDIO_MOVE takes them (it answers EBUSY); two threads then
 * race to migrate them. Linux 6.18 sometimes moves such a page and still
 * answers EEXIST: believed, the page was unlocked as present while its data
 * sat in a staging slot that was then discarded, and the CPU read zeros (the
 * stress run found it, about one run in three in signal mode).
 */
#define AF_PAGES 16

struct after_fork {
	struct uhmm *h;
	struct uhmm_devmem *dm[2];
	char *buf;
	pthread_barrier_t go, done;
	atomic_int stop;
};

/* Fork a child that exits at once, and reap it. */
static void fork_and_reap(void)
{
	pid_t pid;

	harness_flush();
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0)
		_exit(0);
	CHECK_EQ(waitpid(pid, NULL, 0), pid);
}

static void *after_fork_migrator(void *arg)
{
	struct after_fork *af = arg;
	static atomic_int next;
	int me = atomic_fetch_add(&next, 1) & 1;

	for (;;) {
		pthread_barrier_wait(&af->go);
		if (atomic_load(&af->stop))
			return NULL;
		for (int k = 0; k < 4; k++) {
			int r = uhmm_migrate_to_device(af->dm[me], af->buf, AF_PAGES * PAGE);

			CHECK_MSG(r >= 0, "uhmm_migrate_to_device: %d%s", r, harness_errname(r));
			CHECK_GE(uhmm_migrate_to_ram(af->h, af->buf, AF_PAGES * PAGE), 0);
		}
		pthread_barrier_wait(&af->done);
	}
}

static void migrations_racing_after_fork(enum uhmm_fault_mode mode)
{
	struct after_fork af = { 0 };
	struct uhmm_sim *sim[2];
	pthread_t tid[2];
	double t0 = harness_now();
	void *p = NULL;
	int rounds = 0;

	af.h = uhmm_test_open_mode(mode);
	uhmm_test_require_migrate(af.h);
	for (int i = 0; i < 2; i++) {
		sim[i] = uhmm_test_sim(af.h, 2 * AF_PAGES);
		af.dm[i] = uhmm_sim_devmem(sim[i]);
	}
	CHECK_EQ(uhmm_alloc(af.h, AF_PAGES * PAGE, &p), 0);
	af.buf = p;
	CHECK_EQ(pthread_barrier_init(&af.go, NULL, 3), 0);
	CHECK_EQ(pthread_barrier_init(&af.done, NULL, 3), 0);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_create(&tid[i], NULL, after_fork_migrator, &af), 0);
	for (; rounds < 400 && harness_now() - t0 < 3; rounds++) {
		pattern_fill(af.buf, AF_PAGES * PAGE, 0xaf00 + (uint64_t)rounds);
		fork_and_reap();
		pthread_barrier_wait(&af.go);
		pthread_barrier_wait(&af.done);
		for (size_t i = 0; i < AF_PAGES; i++)
			CHECK_PATTERN_PAGE(af.buf, i, 0xaf00 + (uint64_t)rounds);
	}
	atomic_store(&af.stop, 1);
	pthread_barrier_wait(&af.go);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_join(tid[i], NULL), 0);
	NOTE("%d rounds of fork, then two threads migrating the same pages: every byte kept",
	     rounds);
	pthread_barrier_destroy(&af.go);
	pthread_barrier_destroy(&af.done);
	CHECK_EQ(uhmm_free(af.h, af.buf, AF_PAGES * PAGE), 0);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(uhmm_sim_destroy(sim[i]), 0);
	uhmm_close(af.h);
}

TEST(migrations_racing_after_fork_keep_data_thread_mode)
{
	migrations_racing_after_fork(UHMM_FAULT_THREAD);
}

TEST(migrations_racing_after_fork_keep_data_signal_mode)
{
	migrations_racing_after_fork(UHMM_FAULT_SIGNAL);
}

/*
 * Fails today (a library bug). Thread A moves a managed range away with
 * mremap while thread B frees and allocates one of the same size. The kernel
 * unmaps A's old address, then (after dropping mmap_lock) queues the unmap
 * event for it; B's mmap can be given that address in between, before the
 * event is read, so uhmm_alloc's wait for pending events does not see it. Then
 * either the old range is still in uhmm's table (uhmm_alloc fails: -ENOMEM),
 * or the late event removes B's new range (migrations of it fail with
 * -ENOENT, and device pages it had by then are discarded).
 */
struct alloc_race {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	atomic_int stop;
	int alloc_fail, migrate_fail, lost, rounds;
};

static void *alloc_race_mover(void *arg)
{
	struct alloc_race *ar = arg;
	void *p = NULL;

	CHECK_EQ(uhmm_alloc(ar->h, 16 * PAGE, &p), 0);
	while (!atomic_load(&ar->stop)) {
		void *d = mmap(NULL, 16 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		void *m;

		CHECK(d != MAP_FAILED);
		m = mremap(p, 16 * PAGE, 16 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, d);
		CHECK(m == d);
		p = m;
		usleep(100); /* not a flood: a flood starves the others (see tests/slowdriver.c) */
	}
	CHECK_EQ(uhmm_sync(ar->h), 0);
	CHECK_EQ(uhmm_free(ar->h, p, 16 * PAGE), 0);
	return NULL;
}

static void alloc_racing_mremap(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	static struct alloc_race ar;
	struct uhmm_sim *sim;
	pthread_t tid;
	double t0;
	int r;

	memset(&ar, 0, sizeof(ar));
	r = uhmm_open(&ar.h, &o);
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("cannot open in this mode here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(ar.h);
	sim = uhmm_test_sim(ar.h, 64);
	ar.dm = uhmm_sim_devmem(sim);
	CHECK_EQ(pthread_create(&tid, NULL, alloc_race_mover, &ar), 0);
	t0 = harness_now();
	while (harness_now() - t0 < 3 && ar.rounds < 20000) {
		void *p = NULL;

		ar.rounds++;
		r = uhmm_alloc(ar.h, 16 * PAGE, &p);
		if (r) {
			if (!ar.alloc_fail++)
				NOTE("round %d: uhmm_alloc: %d %s", ar.rounds, r, harness_errname(r));
			continue;
		}
		memset(p, 0x42, 16 * PAGE);
		r = uhmm_migrate_to_device(ar.dm, p, 16 * PAGE);
		if (r != 16 && !ar.migrate_fail++)
			NOTE("round %d: uhmm_migrate_to_device of fresh memory: %d %s", ar.rounds, r,
			     harness_errname(r));
		CHECK_EQ(uhmm_sync(ar.h), 0);
		for (size_t i = 0; i < 16; i++)
			ar.lost += ((volatile char *)p)[i * PAGE] != 0x42;
		r = uhmm_free(ar.h, p, 16 * PAGE);
		if (r)
			munmap(p, 16 * PAGE); /* no longer managed: the late event took it */
	}
	atomic_store(&ar.stop, 1);
	CHECK_EQ(pthread_join(tid, NULL), 0);
	NOTE("%d allocations beside a thread moving ranges: %d failed, %d migrations failed, %d "
	     "pages lost",
	     ar.rounds, ar.alloc_fail, ar.migrate_fail, ar.lost);
	CHECK_EQ(ar.alloc_fail, 0);
	CHECK_EQ(ar.migrate_fail, 0);
	CHECK_EQ(ar.lost, 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(ar.h);
}

TEST(alloc_racing_mremap_thread_mode)
{
	alloc_racing_mremap(UHMM_FAULT_THREAD);
}

TEST(alloc_racing_mremap_signal_mode)
{
	alloc_racing_mremap(UHMM_FAULT_SIGNAL);
}

/*
 * Pages kept by migrations out and reused by migrations home (struct pool),
 * under three threads that each fill a buffer, sometimes discard a page of
 * it, move it to the device and bring it home one of three ways (a whole
 * migration, faults, part then faults), now and then idle past the second
 * after which kept pages are given back; while the main thread forks every
 * 20 ms. Every byte checked each round, the discarded page as zeros.
 * Regression (thread mode): with discards and forks together, the fork's
 * parent handler waited for every event read during the fork to be handled,
 * which the service thread does only after that handler: a deadlock every
 * run (uhmm__fork_parent).
 */
#define KX_THREADS 3
#define KX_PAGES (2 * 512)

struct kx {
	struct uhmm *h;
	struct uhmm_devmem *dm;
	atomic_int stop;
};

struct kx_worker {
	struct kx *k;
	int id;
	long rounds;
};

static void *kx_main(void *arg)
{
	struct kx_worker *w = arg;
	struct kx *k = w->k;
	struct prng rng;
	void *p = NULL;
	char *b;

	prng_init(&rng, 0x6b780000 + (uint64_t)w->id, "kept pages worker");
	CHECK_EQ(uhmm_alloc(k->h, KX_PAGES * PAGE, &p), 0);
	b = p;
	while (!atomic_load(&k->stop)) {
		uint64_t seed = prng_next(&rng);
		long hole = -1;

		pattern_fill(b, KX_PAGES * PAGE, seed);
		if (prng_below(&rng, 4) == 0) {
			hole = (long)prng_below(&rng, KX_PAGES);
			CHECK_EQ(madvise(b + hole * PAGE, PAGE, MADV_DONTNEED), 0);
		}
		/* A fork under way leaves some pages where they are (busy): fewer may move. */
		CHECK_GE(uhmm_migrate_to_device(k->dm, b, KX_PAGES * PAGE), 0);
		switch (prng_below(&rng, 3)) {
		case 0:
			CHECK_GE(uhmm_migrate_to_ram(k->h, b, KX_PAGES * PAGE), 0);
			break;
		case 1:
			break; /* the checks below fault them home */
		default:
			CHECK_GE(uhmm_migrate_to_ram(k->h, b + 300 * PAGE, 333 * PAGE), 0);
			break;
		}
		for (long i = 0; i < KX_PAGES; i++) {
			if (i == hole)
				CHECK(page_is_zero(b + i * PAGE));
			else
				CHECK_PATTERN_PAGE(b, (size_t)i, seed);
		}
		if (prng_below(&rng, 40) == 0)
			usleep(1100 * 1000); /* past the second: kept pages given back */
		w->rounds++;
	}
	CHECK_EQ(uhmm_free(k->h, b, KX_PAGES * PAGE), 0);
	return NULL;
}

static void kept_pages_under_forks(enum uhmm_fault_mode mode)
{
	UHMM_OPTS(uhmm_open_opts, o, .fault_mode = mode);
	struct kx k = { 0 };
	struct kx_worker w[KX_THREADS];
	pthread_t tid[KX_THREADS];
	struct uhmm_stats s;
	struct uhmm_sim *sim;
	double t0 = harness_now();
	long rounds = 0;
	int forks = 0, r;

	r = uhmm_open(&k.h, &o);
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("cannot open in this mode here: %s", uhmm_strerror(r));
	CHECK_EQ(r, 0);
	uhmm_test_require_migrate(k.h);
	/*
	 * Room for the device pages children still reference (thread mode
	 * serves them until it sees them gone, up to 100 ms): a fork every
	 * 20 ms may hold several rounds of every thread's pages.
	 */
	sim = uhmm_test_sim(k.h, 16 * KX_THREADS * KX_PAGES);
	k.dm = uhmm_sim_devmem(sim);
	for (int i = 0; i < KX_THREADS; i++) {
		w[i] = (struct kx_worker){ .k = &k, .id = i };
		CHECK_EQ(pthread_create(&tid[i], NULL, kx_main, &w[i]), 0);
	}
	while (harness_now() - t0 < 4) {
		fork_and_reap();
		forks++;
		usleep(20000);
	}
	atomic_store(&k.stop, 1);
	for (int i = 0; i < KX_THREADS; i++) {
		CHECK_EQ(pthread_join(tid[i], NULL), 0);
		rounds += w[i].rounds;
	}
	s = hstats(k.h);
	NOTE("%ld rounds, %d forks, %llu of %llu pages home through kept pages", rounds, forks,
	     (unsigned long long)s.pages_recycled, (unsigned long long)s.pages_home);
	CHECK(s.pages_recycled > 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(k.h);
}

TEST(kept_pages_under_forks_and_discards_thread_mode)
{
	kept_pages_under_forks(UHMM_FAULT_THREAD);
}

TEST(kept_pages_under_forks_and_discards_signal_mode)
{
	kept_pages_under_forks(UHMM_FAULT_SIGNAL);
}
