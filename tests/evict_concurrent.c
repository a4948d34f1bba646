/* evict_concurrent: threads migrating into a full device with LRU or FIFO eviction, their CPU reads and writes between, keep every byte; the counters add up. */
/* uhmm-test-label: concurrent */
#include "harness.h"

#include <stdatomic.h>

#define DEVPAGES 96
#define NTHREADS 3
#define NP 96 /* each thread's pages: together three times the device */
#define ROUNDS 4000
#define WORDS (PAGE / 8)

/*
 * Each thread owns NP pages; page i holds words derived from (its seed, i,
 * gen[i]), and gen[i] grows with each CPU write of the page. The threads
 * migrate runs of their pages into one device that holds a third of them,
 * so every migration evicts what the others (and they themselves) put there,
 * while the pages it evicts may be locked, faulting home or being migrated.
 */
struct toucher {
	struct uhmm_devmem *dm;
	uint64_t *buf;
	uint64_t seed;
	struct prng rng;
	unsigned int gen[NP];
	long moved;      /* pages the migrations said they moved */
	long full;       /* migrations that found the device full (-ENOMEM) */
	long none;       /* migrations that moved nothing (all there, or all busy) */
	int err;         /* any other error */
	long bad;        /* pages read back wrong */
};

static uint64_t word_of(const struct toucher *t, size_t page, size_t w)
{
	return (t->seed ^ (page << 40) ^ ((uint64_t)t->gen[page] << 20) ^ w) * 0x9e3779b97f4a7c15ull;
}

static void write_page(struct toucher *t, size_t i)
{
	t->gen[i]++;
	for (size_t w = 0; w < WORDS; w++)
		t->buf[i * WORDS + w] = word_of(t, i, w);
}

static bool page_ok(const struct toucher *t, size_t i)
{
	for (size_t w = 0; w < WORDS; w++)
		if (t->buf[i * WORDS + w] != word_of(t, i, w))
			return false;
	return true;
}

static void *touch_and_migrate(void *arg)
{
	struct toucher *t = arg;

	for (int round = 0; round < ROUNDS; round++) {
		uint64_t r = prng_next(&t->rng);
		size_t i = r % NP, n = 1 + (r >> 16) % 24;
		int ret;

		if (i + n > NP)
			n = NP - i;
		switch ((r >> 32) % 8) {
		case 0:
		case 1:
		case 2:
		case 3: /* a run to the device: it evicts */
			ret = uhmm_migrate_to_device(t->dm, t->buf + i * WORDS, n * PAGE);
			if (ret > 0)
				t->moved += ret;
			else if (ret == 0)
				t->none++;
			else if (ret == -ENOMEM)
				t->full++;
			else if (!t->err)
				t->err = ret;
			break;
		case 4:
		case 5: /* a CPU write: the page comes home first if it is out */
			write_page(t, i);
			break;
		default: /* a CPU read */
			t->bad += !page_ok(t, i);
			break;
		}
	}
	return NULL;
}

static void evict_concurrently(const struct uhmm_evict_policy *policy, enum uhmm_fault_mode mode,
			       uint64_t seed)
{
	static struct toucher t[NTHREADS];
	struct uhmm *h = uhmm_test_open_mode(mode);
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	struct uhmm_devmem_stats d;
	pthread_t th[NTHREADS];
	struct prng base;
	long moved = 0, full = 0, none = 0, bad = 0;

	uhmm_test_require_migrate(h);
	sim = uhmm_test_sim(h, DEVPAGES);
	dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_devmem_set_evict(dm, policy), 0);
	prng_init(&base, seed, "touchers (thread k adds k)");
	for (int k = 0; k < NTHREADS; k++) {
		void *p = NULL;

		memset(&t[k], 0, sizeof(t[k]));
		t[k].dm = dm;
		t[k].rng.s = t[k].seed = base.s + (uint64_t)k;
		CHECK_EQ(uhmm_alloc(h, NP * PAGE, &p), 0);
		t[k].buf = p;
		for (size_t i = 0; i < NP; i++)
			write_page(&t[k], i);
	}
	for (int k = 0; k < NTHREADS; k++)
		CHECK_EQ(pthread_create(&th[k], NULL, touch_and_migrate, &t[k]), 0);
	for (int k = 0; k < NTHREADS; k++)
		CHECK_EQ(pthread_join(th[k], NULL), 0);

	for (int k = 0; k < NTHREADS; k++) {
		CHECK_MSG(t[k].err == 0, "thread %d: %s", k, strerror(-t[k].err));
		moved += t[k].moved;
		full += t[k].full;
		none += t[k].none;
		bad += t[k].bad;
		for (size_t i = 0; i < NP; i++)
			bad += !page_ok(&t[k], i);
	}
	d = dmstats(dm);
	NOTE("%d threads x %d rounds: %ld pages moved in, %llu evicted; migrations that moved "
	     "nothing %ld, that found the device full %ld; %ld pages read wrong",
	     NTHREADS, ROUNDS, moved, (unsigned long long)d.evictions, none, full, bad);
	CHECK_EQ(bad, 0);
	/* Every page was read at the end: all came home, through evictions among others. */
	CHECK_EQ(d.in_use, 0);
	CHECK_EQ(d.resident, 0);
	CHECK_EQ(d.pages_to, (uint64_t)moved);
	CHECK_EQ(d.pages_from, d.pages_to);
	CHECK_EQ(d.page_frees, d.pages_to);
	/* The device held a third of the pages: migrations had to evict. */
	CHECK_GT(d.evictions, DEVPAGES);
	CHECK_LE(d.evictions, d.pages_from);
	CHECK_GT(moved, 4L * DEVPAGES);
	for (int k = 0; k < NTHREADS; k++)
		CHECK_EQ(uhmm_free(h, t[k].buf, NP * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(lru_eviction_under_three_threads_keeps_data_thread_mode)
{
	evict_concurrently(&uhmm_evict_lru, UHMM_FAULT_THREAD, 0xe71c0100);
}

TEST(lru_eviction_under_three_threads_keeps_data_signal_mode)
{
	evict_concurrently(&uhmm_evict_lru, UHMM_FAULT_SIGNAL, 0xe71c0200);
}

TEST(fifo_eviction_under_three_threads_keeps_data_thread_mode)
{
	evict_concurrently(&uhmm_evict_fifo, UHMM_FAULT_THREAD, 0xe71c0300);
}

TEST(fifo_eviction_under_three_threads_keeps_data_signal_mode)
{
	evict_concurrently(&uhmm_evict_fifo, UHMM_FAULT_SIGNAL, 0xe71c0400);
}
