/* SPDX-License-Identifier: MIT */
/*
 * exec.c - the sim device's compute engine: K device threads taking the
 * launches of one in-order queue (a stream), and the memory accesses of
 * device kernels, every one of them through the device's page table.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sim_internal.h"

/* The device thread's context, for refusing launches from inside a kernel. */
static __thread struct uhmm_sim_ctx *cur_ctx;

bool sim_in_kernel(void)
{
	return cur_ctx != NULL;
}

/* Under qlock: the launch at the head is finished; wake who waits for it. */
static void launch_done(struct uhmm_sim *sim, struct sim_launch *l, bool async)
{
	int err = atomic_load(&l->err);

	sim->qhead = l->next;
	if (!sim->qhead)
		sim->qtail = NULL;
	sim->qseq_done++;
	if (async) {
		if (err && !sim->qerr)
			sim->qerr = err;
		free(l);
	} else {
		l->next = NULL;
		l->running = -1; /* done: the launcher reads err and frees it */
	}
	pthread_cond_broadcast(&sim->qdone);
	pthread_cond_broadcast(&sim->qcond);
}

struct launch_slot {
	struct sim_launch l;
	bool async;
	bool started;
};

static void run_share(struct uhmm_sim_ctx *ctx, struct sim_launch *l)
{
	for (;;) {
		unsigned long i = atomic_fetch_add(&l->next_i, l->step);

		if (i >= l->n)
			break;
		unsigned long end = l->n - i < l->step ? l->n : i + l->step;

		for (; i < end; i++)
			l->fn(ctx, i, l->arg);
	}
}

static void *dev_thread(void *arg)
{
	struct uhmm_sim_ctx *ctx = arg;
	struct uhmm_sim *sim = ctx->sim;

	cur_ctx = ctx;
	pthread_mutex_lock(&sim->qlock);
	for (;;) {
		struct launch_slot *ls = (struct launch_slot *)sim->qhead;

		if (!ls || atomic_load(&ls->l.next_i) >= ls->l.n) {
			if (!ls && sim->stopping)
				break;
			pthread_cond_wait(&sim->qcond, &sim->qlock);
			continue;
		}
		if (!ls->started) {
			/* A launch never trusts the permissions the previous one saw. */
			ls->started = true;
			sim_new_epoch(sim);
			atomic_fetch_add(&sim->launches, 1);
		}
		ls->l.running++;
		pthread_mutex_unlock(&sim->qlock);

		ctx->err = 0;
		run_share(ctx, &ls->l);
		if (ctx->err) {
			int z = 0;

			atomic_compare_exchange_strong(&ls->l.err, &z, ctx->err);
		}

		pthread_mutex_lock(&sim->qlock);
		if (--ls->l.running == 0 && atomic_load(&ls->l.next_i) >= ls->l.n)
			launch_done(sim, &ls->l, ls->async);
	}
	pthread_mutex_unlock(&sim->qlock);
	cur_ctx = NULL;
	return NULL;
}

int sim_exec_start(struct uhmm_sim *sim)
{
	int ret = 0;

	pthread_mutex_init(&sim->qlock, NULL);
	pthread_cond_init(&sim->qcond, NULL);
	pthread_cond_init(&sim->qdone, NULL);
	for (unsigned int t = 0; t < sim->nthreads; t++) {
		sim->ctxs[t] = sim_ctx_new(sim, false, t);
		if (!sim->ctxs[t]) {
			ret = -ENOMEM;
			break;
		}
		ret = -pthread_create(&sim->threads[t], NULL, dev_thread, sim->ctxs[t]);
		if (ret) {
			sim_ctx_free(sim->ctxs[t]);
			sim->ctxs[t] = NULL;
			break;
		}
		sim->nstarted++;
	}
	if (ret)
		sim_exec_stop(sim);
	return ret;
}

/* Let queued launches finish, then stop the threads. */
void sim_exec_stop(struct uhmm_sim *sim)
{
	pthread_mutex_lock(&sim->qlock);
	sim->stopping = true;
	pthread_cond_broadcast(&sim->qcond);
	pthread_mutex_unlock(&sim->qlock);
	for (unsigned int t = 0; t < sim->nstarted; t++) {
		pthread_join(sim->threads[t], NULL);
		sim_ctx_free(sim->ctxs[t]);
		sim->ctxs[t] = NULL;
	}
	sim->nstarted = 0;
	pthread_cond_destroy(&sim->qcond);
	pthread_cond_destroy(&sim->qdone);
	pthread_mutex_destroy(&sim->qlock);
}

static int launch(struct uhmm_sim *sim, uhmm_sim_kernel_fn fn, unsigned long n, void *arg,
		  bool async)
{
	struct launch_slot *ls;
	int ret = 0;

	if (!sim || !fn)
		return -EINVAL;
	if (sim_in_kernel())
		return -EDEADLK;
	if (!n)
		return 0;
	/* The launch sees every munmap, discard and mremap that returned before it. */
	uhmm_sync(sim->h);
	ls = calloc(1, sizeof(*ls));
	if (!ls)
		return -ENOMEM;
	ls->l.fn = fn;
	ls->l.n = n;
	ls->l.arg = arg;
	/* Chunks small enough to balance the threads, large enough to share cheaply. */
	ls->l.step = n / (sim->nthreads * 16) ?: 1;
	ls->async = async;

	pthread_mutex_lock(&sim->qlock);
	if (sim->stopping) {
		pthread_mutex_unlock(&sim->qlock);
		free(ls);
		return -ESHUTDOWN;
	}
	if (sim->qtail)
		sim->qtail->next = &ls->l;
	else
		sim->qhead = &ls->l;
	sim->qtail = &ls->l;
	sim->qseq_next++;
	pthread_cond_broadcast(&sim->qcond);
	if (!async) {
		while (ls->l.running != -1)
			pthread_cond_wait(&sim->qdone, &sim->qlock);
		ret = atomic_load(&ls->l.err);
	}
	pthread_mutex_unlock(&sim->qlock);
	if (!async)
		free(ls);
	return ret;
}

int uhmm_sim_launch(struct uhmm_sim *sim, uhmm_sim_kernel_fn fn, unsigned long n, void *arg)
{
	return launch(sim, fn, n, arg, false);
}

int uhmm_sim_launch_async(struct uhmm_sim *sim, uhmm_sim_kernel_fn fn, unsigned long n,
			  void *arg)
{
	return launch(sim, fn, n, arg, true);
}

int uhmm_sim_synchronize(struct uhmm_sim *sim)
{
	uint64_t want;
	int ret;

	if (!sim)
		return -EINVAL;
	if (sim_in_kernel())
		return -EDEADLK;
	pthread_mutex_lock(&sim->qlock);
	want = sim->qseq_next;
	while (sim->qseq_done < want)
		pthread_cond_wait(&sim->qdone, &sim->qlock);
	ret = sim->qerr;
	sim->qerr = 0;
	pthread_mutex_unlock(&sim->qlock);
	return ret;
}

/* --- memory accesses of device kernels --- */

static int set_err(struct uhmm_sim_ctx *ctx, int ret)
{
	if (ret < 0 && !ctx->err)
		ctx->err = ret;
	return ret;
}

static int check(struct uhmm_sim_ctx *ctx, const void *va, size_t len)
{
	if (!ctx)
		return -EINVAL;
	if ((uintptr_t)va + len < (uintptr_t)va)
		return set_err(ctx, -EINVAL);
	return 0;
}

static size_t in_page(uintptr_t a, size_t left)
{
	size_t room = SIM_PAGE - (a & (SIM_PAGE - 1));

	return left < room ? left : room;
}

/*
 * Device memory is copied through the bounce page when the other side may be
 * memory that faults (a fault must not wait for an invalidation while this
 * thread holds its slot, which the invalidation waits for). @safe: the other
 * side is this thread's own scratch, which never faults: copy directly.
 */
static int load_piece(struct uhmm_sim_ctx *ctx, void *dst, uintptr_t va, size_t n, bool safe)
{
	char *mem;
	int r = sim_translate(ctx, va, false, true, &mem);

	if (r < 0)
		return r;
	if (r == 0) {
		memcpy(safe ? dst : ctx->bounce, mem, n);
		sim_slot_exit(ctx);
		if (!safe)
			memcpy(dst, ctx->bounce, n);
	} else {
		memcpy(dst, mem, n);
	}
	return 0;
}

static int store_piece(struct uhmm_sim_ctx *ctx, uintptr_t va, const void *src, size_t n, bool safe)
{
	char *mem;
	int r;

	if (!safe) {
		memcpy(ctx->bounce, src, n);
		src = ctx->bounce;
	}
	r = sim_translate(ctx, va, true, true, &mem);
	if (r < 0)
		return r;
	memcpy(mem, src, n);
	if (r == 0)
		sim_slot_exit(ctx);
	return 0;
}

#define SIM_RUN 16 /* pages copied together under one slot */

/*
 * Device memory to device memory, both resident here: one copy under the
 * source's slot, of up to SIM_RUN whole pages when both sides are page
 * aligned (one slot, one fence, the pages streamed together: sim.c). Returns
 * the bytes done (or, with *err set, the piece that failed), 0 to take the
 * way through scratch.
 */
static size_t copy_local(struct uhmm_sim_ctx *ctx, uintptr_t d, uintptr_t s, size_t len, int *err)
{
	size_t n = in_page(d, in_page(s, len));
	void *to[SIM_RUN];
	const void *from[SIM_RUN];
	char *f, *t;
	unsigned int k;
	int r = sim_translate(ctx, s, false, true, &f);

	if (r < 0) {
		*err = r;
		return n;
	}
	if (r == 1)
		return 0;
	if (sim_translate_held(ctx, d, true, &t)) {
		sim_slot_exit(ctx);
		return 0;
	}
	*err = 0;
	if (n != SIM_PAGE) {
		memcpy(t, f, n);
		sim_slot_exit(ctx);
		return n;
	}
	to[0] = t;
	from[0] = f;
	/* The slot holds every page translated under it: more of the run, while local. */
	for (k = 1; k < SIM_RUN && len >= (k + 1) * SIM_PAGE; k++) {
		if (sim_translate_held(ctx, s + k * SIM_PAGE, false, &f) ||
		    sim_translate_held(ctx, d + k * SIM_PAGE, true, &t))
			break;
		from[k] = f;
		to[k] = t;
	}
	/* Streaming stores, fenced before the slot is let go. */
	sim_copy_pages(to, from, k, true);
	/*
	 * A copy that goes on from where this thread's last one ended is a
	 * stream: start reading the next source page now, as the CPU's own
	 * prefetchers do not across a page boundary (5.3 -> 5.7 GB/s for a
	 * kernel copying a page per index).
	 */
	if (s == ctx->copy_next && len == k * SIM_PAGE &&
	    !sim_translate_held(ctx, s + k * SIM_PAGE, false, &f))
		for (size_t off = 0; off < SIM_PAGE; off += 64)
			__builtin_prefetch(f + off);
	ctx->copy_next = s + k * SIM_PAGE;
	sim_copy_fence();
	sim_slot_exit(ctx);
	return k * SIM_PAGE;
}

int uhmm_sim_load(struct uhmm_sim_ctx *ctx, void *dst, const void *va, size_t len)
{
	uintptr_t a = (uintptr_t)va;
	int ret = check(ctx, va, len);

	while (!ret && len) {
		size_t n = in_page(a, len);

		ret = load_piece(ctx, dst, a, n, false);
		dst = (char *)dst + n;
		a += n;
		len -= n;
	}
	return ctx ? set_err(ctx, ret) : ret;
}

int uhmm_sim_store(struct uhmm_sim_ctx *ctx, void *va, const void *src, size_t len)
{
	uintptr_t a = (uintptr_t)va;
	int ret = check(ctx, va, len);

	while (!ret && len) {
		size_t n = in_page(a, len);

		ret = store_piece(ctx, a, src, n, false);
		src = (const char *)src + n;
		a += n;
		len -= n;
	}
	return ctx ? set_err(ctx, ret) : ret;
}

int uhmm_sim_memcpy(struct uhmm_sim_ctx *ctx, void *dst, const void *src, size_t len)
{
	uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
	int ret = check(ctx, dst, len) ?: check(ctx, src, len);
	char *tmp = ctx ? ctx->bounce + SIM_PAGE : NULL;

	while (!ret && len) {
		size_t n = copy_local(ctx, d, s, len, &ret);

		if (!n) {
			n = in_page(d, in_page(s, len));
			ret = load_piece(ctx, tmp, s, n, true);
			if (!ret)
				ret = store_piece(ctx, d, tmp, n, true);
		}
		d += n;
		s += n;
		len -= n;
	}
	return ctx ? set_err(ctx, ret) : ret;
}

int uhmm_sim_memset(struct uhmm_sim_ctx *ctx, void *va, int c, size_t len)
{
	uintptr_t a = (uintptr_t)va;
	int ret = check(ctx, va, len);

	while (!ret && len) {
		size_t n = in_page(a, len);
		char *mem;
		int r = sim_translate(ctx, a, true, true, &mem);

		if (r < 0) {
			ret = r;
			break;
		}
		memset(mem, c, n);
		if (r == 0)
			sim_slot_exit(ctx);
		a += n;
		len -= n;
	}
	return ctx ? set_err(ctx, ret) : ret;
}

/* A naturally aligned word: one translation, one atomic access. */
static void *word(struct uhmm_sim_ctx *ctx, const void *va, size_t size, bool write, int *local)
{
	char *mem;
	int r;

	if (!ctx)
		return NULL;
	if ((uintptr_t)va & (size - 1)) {
		set_err(ctx, -EINVAL);
		return NULL;
	}
	r = sim_translate(ctx, (uintptr_t)va, write, true, &mem);
	if (r < 0) {
		set_err(ctx, r);
		return NULL;
	}
	*local = r == 0;
	return mem;
}

static void word_done(struct uhmm_sim_ctx *ctx, int local)
{
	if (local)
		sim_slot_exit(ctx);
}

uint32_t uhmm_sim_load_u32(struct uhmm_sim_ctx *ctx, const void *va)
{
	int local = 0;
	uint32_t *p = word(ctx, va, sizeof(*p), false, &local), v;

	if (!p)
		return 0;
	v = __atomic_load_n(p, __ATOMIC_RELAXED);
	word_done(ctx, local);
	return v;
}

uint64_t uhmm_sim_load_u64(struct uhmm_sim_ctx *ctx, const void *va)
{
	int local = 0;
	uint64_t *p = word(ctx, va, sizeof(*p), false, &local), v;

	if (!p)
		return 0;
	v = __atomic_load_n(p, __ATOMIC_RELAXED);
	word_done(ctx, local);
	return v;
}

void uhmm_sim_store_u32(struct uhmm_sim_ctx *ctx, void *va, uint32_t v)
{
	int local = 0;
	uint32_t *p = word(ctx, va, sizeof(*p), true, &local);

	if (!p)
		return;
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
	word_done(ctx, local);
}

void uhmm_sim_store_u64(struct uhmm_sim_ctx *ctx, void *va, uint64_t v)
{
	int local = 0;
	uint64_t *p = word(ctx, va, sizeof(*p), true, &local);

	if (!p)
		return;
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
	word_done(ctx, local);
}

uint64_t uhmm_sim_atomic_add_u64(struct uhmm_sim_ctx *ctx, void *va, uint64_t v)
{
	int local = 0;
	uint64_t *p = word(ctx, va, sizeof(*p), true, &local), old;

	if (!p)
		return 0;
	old = __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
	word_done(ctx, local);
	return old;
}

int uhmm_sim_ctx_error(const struct uhmm_sim_ctx *ctx)
{
	return ctx ? ctx->err : -EINVAL;
}

unsigned int uhmm_sim_ctx_thread(const struct uhmm_sim_ctx *ctx)
{
	return ctx ? ctx->thread : 0;
}
