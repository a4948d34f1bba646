/* hmm_concurrent: device kernels racing CPU threads, other devices and migrations over the same pages lose no write and never touch a page that moved. */
/* uhmm-test-label: concurrent */
#include "hmm_common.h"

#define NPAGES 64
#define WORDS (PAGE / 8)
#define ROUNDS 20

/*
 * Every word has one writer: word w of each page belongs to the device when
 * w % 2 == 0, to the CPU thread otherwise. Each round both add 1 to all their
 * words, while the pages bounce between the device (its kernels migrate them)
 * and the CPU (its touches bring them home).
 */
struct race {
	uint64_t *buf;
	struct uhmm_sim *sim;
	pthread_barrier_t start;
	atomic_int stop;
};

static void k_even(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct race *r = arg;
	uint64_t *pg = r->buf + i * WORDS;

	for (size_t w = 0; w < WORDS; w += 2)
		uhmm_sim_store_u64(ctx, &pg[w], uhmm_sim_load_u64(ctx, &pg[w]) + 1);
}

static void *cpu_odd(void *arg)
{
	struct race *r = arg;

	pthread_barrier_wait(&r->start);
	for (int round = 0; round < ROUNDS; round++)
		for (size_t i = 0; i < NPAGES; i++)
			for (size_t w = 1; w < WORDS; w += 2)
				__atomic_fetch_add(&r->buf[i * WORDS + w], 1, __ATOMIC_RELAXED);
	return NULL;
}

TEST(device_and_cpu_writers_share_pages)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, NPAGES);
	struct race r = { .sim = sim };
	pthread_t t;

	r.buf = map_anon(NPAGES * PAGE);
	CHECK_EQ(uhmm_manage(h, r.buf, NPAGES * PAGE), 0);
	pthread_barrier_init(&r.start, NULL, 2);
	CHECK_EQ(pthread_create(&t, NULL, cpu_odd, &r), 0);
	pthread_barrier_wait(&r.start);
	for (int round = 0; round < ROUNDS; round++)
		CHECK_EQ(uhmm_sim_launch(sim, k_even, NPAGES, &r), 0);
	CHECK_EQ(pthread_join(t, NULL), 0);
	for (size_t i = 0; i < NPAGES * WORDS; i++)
		CHECK_MSG(r.buf[i] == ROUNDS, "word %zu: %llu", i, (unsigned long long)r.buf[i]);
	NOTE("device faults %llu, migrated %llu, migrate_to_ram %llu, invalidations %llu",
	     (unsigned long long)simstats(sim).device_faults,
	     (unsigned long long)simstats(sim).fault_migrated,
	     (unsigned long long)simstats(sim).migrate_to_ram,
	     (unsigned long long)simstats(sim).invalidations);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* Two devices' kernels run at once over the same counters, pulling the pages back and forth. */
struct pingpong {
	uint64_t *buf;
};

static void k_count(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct pingpong *p = arg;

	uhmm_sim_atomic_add_u64(ctx, &p->buf[(i % NPAGES) * WORDS], 1);
}

TEST(two_devices_pull_the_same_pages)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *d0 = uhmm_test_sim(h, NPAGES), *d1 = uhmm_test_sim(h, NPAGES);
	struct pingpong p;
	unsigned long n = NPAGES * 200;

	p.buf = map_anon(NPAGES * PAGE);
	CHECK_EQ(uhmm_manage(h, p.buf, NPAGES * PAGE), 0);
	for (int round = 0; round < 5; round++) {
		CHECK_EQ(uhmm_sim_launch_async(d0, k_count, n, &p), 0);
		CHECK_EQ(uhmm_sim_launch_async(d1, k_count, n, &p), 0);
		CHECK_EQ(uhmm_sim_synchronize(d0), 0);
		CHECK_EQ(uhmm_sim_synchronize(d1), 0);
	}
	for (size_t i = 0; i < NPAGES; i++)
		CHECK_EQ(p.buf[i * WORDS], 2 * 5 * 200);
	CHECK_EQ(uhmm_sim_destroy(d1), 0);
	CHECK_EQ(uhmm_sim_destroy(d0), 0);
	uhmm_close(h);
}

/*
 * Kernels copy a constant pattern while another thread migrates the same
 * pages home and to the device over and over: a device page never moves or
 * is reused under a device access, so every copy is exact.
 */
struct stream {
	uint64_t *src, *dst;
	struct uhmm *h;
	struct uhmm_devmem *dm;
	atomic_int stop;
};

static void k_copy(struct uhmm_sim_ctx *ctx, unsigned long i, void *arg)
{
	struct stream *s = arg;
	int r = uhmm_sim_memcpy(ctx, s->dst + i * WORDS, s->src + i * WORDS, PAGE);

	/*
	 * -EBUSY: the device fault gave up after a second of the migrator
	 * moving its window (the kernel's HMM timeout; a loaded sanitizer
	 * build gets there). The launch fails and is launched again.
	 */
	CHECK_MSG(r == 0 || r == -EBUSY, "uhmm_sim_memcpy: %d%s", r, harness_errname(r));
}

static void *migrator(void *arg)
{
	struct stream *s = arg;
	struct prng rng;

	rng.s = 0x5151;
	while (!atomic_load(&s->stop)) {
		size_t first = (size_t)prng_below(&rng, NPAGES), n = 1 + prng_below(&rng, 8);

		if (first + n > NPAGES)
			n = NPAGES - first;
		if (prng_below(&rng, 2))
			uhmm_migrate_to_ram(s->h, s->src + first * WORDS, n * PAGE);
		else
			uhmm_migrate_to_device(s->dm, s->src + first * WORDS, n * PAGE);
	}
	return NULL;
}

TEST(migrations_race_device_accesses)
{
	struct uhmm *h = uhmm_test_open_migrating();
	struct uhmm_sim *sim = uhmm_test_sim(h, 4 * NPAGES);
	struct uhmm_sim *other = uhmm_test_sim(h, 4 * NPAGES);
	struct stream s = { .h = h, .dm = uhmm_sim_devmem(other) };
	pthread_t t;

	s.src = map_anon(NPAGES * PAGE);
	s.dst = map_anon(NPAGES * PAGE);
	CHECK_EQ(uhmm_manage(h, s.src, NPAGES * PAGE), 0);
	CHECK_EQ(uhmm_manage(h, s.dst, NPAGES * PAGE), 0);
	for (size_t i = 0; i < NPAGES * WORDS; i++)
		s.src[i] = i * 0x9e3779b97f4a7c15ULL;
	CHECK_EQ(pthread_create(&t, NULL, migrator, &s), 0);
	for (int round = 0, busy = 0; round < ROUNDS; round++) {
		int r = uhmm_sim_launch(sim, k_copy, NPAGES, &s);

		CHECK_MSG(r == 0 || r == -EBUSY, "uhmm_sim_launch: %d%s", r, harness_errname(r));
		if (r == -EBUSY) {
			/* Launched again until it runs whole; the last round must. */
			CHECK_LT(++busy, 50);
			round--;
			continue;
		}
		/* Also migrate the copies to the second device and back now and then. */
		if (round % 4 == 3)
			uhmm_migrate_to_device(uhmm_sim_devmem(other), s.dst, NPAGES * PAGE);
	}
	atomic_store(&s.stop, 1);
	CHECK_EQ(pthread_join(t, NULL), 0);
	for (size_t i = 0; i < NPAGES * WORDS; i++) {
		CHECK_EQ(s.src[i], i * 0x9e3779b97f4a7c15ULL);
		CHECK_EQ(s.dst[i], i * 0x9e3779b97f4a7c15ULL);
	}
	CHECK_EQ(uhmm_sim_destroy(other), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

/* dmirror commands from several threads at once, while the CPU faults pages back. */
struct cmd_race {
	struct hmm_fixture *fx;
	struct hmm_buffer *b;
	int t;
};

static void *reader(void *arg)
{
	struct cmd_race *c = arg;
	struct hmm_buffer mine = *c->b;
	size_t size = NPAGES * PAGE;

	mine.mirror = malloc(size);
	CHECK_NONNULL(mine.mirror);
	for (int i = 0; i < ROUNDS; i++) {
		int ret = (i + c->t) % 3 ?
				  hmm_dmirror_cmd(c->fx->dev[0], UHMM_DMIRROR_READ, &mine, NPAGES) :
				  hmm_migrate_to_dev(c->fx->dev[0], &mine, NPAGES);

		/* A migration may lose a page to a CPU touch before it reads it back. */
		CHECK(ret == 0 || ret == -ENOENT);
		if (ret == 0)
			for (size_t k = 0; k < size / 8; k++)
				CHECK_EQ(((uint64_t *)mine.mirror)[k], k);
	}
	free(mine.mirror);
	return NULL;
}

TEST(commands_race_cpu_and_each_other)
{
	struct hmm_fixture fx;
	struct hmm_buffer *b;
	struct cmd_race c[2];
	pthread_t t[2];
	uint64_t *p;

	hmm_setup(&fx, 1);
	b = hmm_buffer_new(&fx, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	p = b->ptr;
	for (size_t k = 0; k < NPAGES * WORDS; k++)
		p[k] = k;
	for (int i = 0; i < 2; i++) {
		c[i] = (struct cmd_race){ &fx, b, i };
		CHECK_EQ(pthread_create(&t[i], NULL, reader, &c[i]), 0);
	}
	for (int round = 0; round < ROUNDS * 10; round++)
		for (size_t k = 0; k < NPAGES * WORDS; k += WORDS)
			CHECK_EQ(__atomic_load_n(&p[k], __ATOMIC_RELAXED), k);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_join(t[i], NULL), 0);
	hmm_buffer_free(b);
	hmm_teardown(&fx);
}

/* The kernel's anon_teardown (test 20 of hmm-tests.c, see hmm.c). */
struct teardown_arg {
	struct hmm_buffer *b;
	struct prng *rng;
};

static void *unmap_buffer(void *p)
{
	struct teardown_arg *t = p;
	struct timespec ts = { 0, (long)prng_below(t->rng, 32000) };

	/* A little later, unmap the second half while the device reads it. */
	nanosleep(&ts, NULL);
	munmap((char *)t->b->ptr + t->b->size / 2, t->b->size / 2);
	return NULL;
}

/* 20: the device reads while another thread unmaps: any error, no crash, no hang. */
TEST(anon_teardown)
{
	struct hmm_fixture fx;
	unsigned long npages = HMM_NPAGES, i;
	size_t size = npages << PAGE_SHIFT_;
	struct prng rng;
	int *ptr;

	hmm_setup(&fx, 1);
	prng_init(&rng, 0x7ea4d0, "unmap delay");
	for (int c = 0; c < HMM_NTIMES; c++) {
		struct hmm_buffer *b = hmm_buffer_new(&fx, size, PROT_READ | PROT_WRITE,
						      MAP_PRIVATE | MAP_ANONYMOUS);
		struct teardown_arg t = { b, &rng };
		pthread_t thread;
		int rc;

		for (i = 0, ptr = b->ptr; i < size / sizeof(*ptr); ++i)
			ptr[i] = (int)i + c;
		CHECK_EQ(pthread_create(&thread, NULL, unmap_buffer, &t), 0);
		rc = hmm_dmirror_cmd(fx.dev[0], UHMM_DMIRROR_READ, b, npages);
		if (rc == 0) {
			CHECK_EQ(b->cpages, npages);
			CHECK_EQ(b->faults, 1);
			for (i = 0, ptr = b->mirror; i < size / sizeof(*ptr); ++i)
				CHECK_EQ(ptr[i], (int)i + c);
		}
		CHECK_EQ(pthread_join(thread, NULL), 0);
		/* The second half is gone; free the first. */
		b->size /= 2;
		hmm_buffer_free(b);
	}
	hmm_teardown(&fx);
}
