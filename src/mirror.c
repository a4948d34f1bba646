/* SPDX-License-Identifier: MIT */
/*
 * mirror.c - interval notifiers: telling devices that mirror the address
 * space when its CPU side changes, with the read_begin / read_retry sequence
 * protocol of the kernel's mmu_interval_notifier.
 *
 * The table of notifiers is published like the range table: invalidations
 * walk it in a read section, lock-free and allocation-free (they run in the
 * fault path). Each notifier has a core-owned slot; remove() waits until no
 * walker is inside the notifier's callback, and the slot itself is retired.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>

#include "internal.h"

struct nslot {
	struct uhmm_interval_notifier *n;
	atomic_int active;  /* walkers inside (or about to enter) the callback */
	atomic_int removed;
};

struct ntab {
	size_t n;
	struct nslot *s[];
};

static void free_ptr(struct uhmm *h, void *p)
{
	(void)h;
	free(p);
}

int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *n, struct uhmm *h,
				  uintptr_t start, size_t len,
				  const struct uhmm_interval_notifier_ops *ops)
{
	struct ntab *cur, *nt;
	struct nslot *slot;

	if (!n || !h || !ops || !ops->invalidate || !len || start + len < start)
		return -EINVAL;
	slot = calloc(1, sizeof(*slot));
	if (!slot)
		return -ENOMEM;
	n->h = h;
	n->start = start & PAGE_MASK;
	n->end = start + len;
	n->ops = ops;
	n->seq = 0;
	n->slot = slot;
	slot->n = n;

	pthread_mutex_lock(&h->lock);
	cur = atomic_load(&h->ntab);
	nt = malloc(sizeof(*nt) + ((cur ? cur->n : 0) + 1) * sizeof(nt->s[0]));
	if (!nt) {
		pthread_mutex_unlock(&h->lock);
		free(slot);
		return -ENOMEM;
	}
	nt->n = 0;
	for (size_t i = 0; cur && i < cur->n; i++)
		nt->s[nt->n++] = cur->s[i];
	nt->s[nt->n++] = slot;
	atomic_store(&h->ntab, nt);
	if (cur)
		uhmm__retire(h, free_ptr, cur);
	pthread_mutex_unlock(&h->lock);
	return 0;
}

void uhmm_interval_notifier_remove(struct uhmm_interval_notifier *n)
{
	struct uhmm *h;
	struct nslot *slot;
	struct ntab *cur, *nt;

	if (!n || !n->slot)
		return;
	h = n->h;
	slot = n->slot;
	/* Walkers check `removed` after announcing themselves in `active`. */
	atomic_store(&slot->removed, 1);
	while (atomic_load(&slot->active))
		sched_yield();

	pthread_mutex_lock(&h->lock);
	cur = atomic_load(&h->ntab);
	nt = malloc(sizeof(*nt) + (cur ? cur->n : 1) * sizeof(nt->s[0]));
	if (nt) {
		nt->n = 0;
		for (size_t i = 0; cur && i < cur->n; i++)
			if (cur->s[i] != slot)
				nt->s[nt->n++] = cur->s[i];
		atomic_store(&h->ntab, nt);
		if (cur)
			uhmm__retire(h, free_ptr, cur);
		uhmm__retire(h, free_ptr, slot);
	}
	/* Out of memory: the slot stays in the table, marked removed, never called. */
	uhmm__reclaim(h);
	pthread_mutex_unlock(&h->lock);
	n->slot = NULL;
}

/*
 * Tell every notifier overlapping [start, end) that it changes. Returns
 * whether an invalidation was started; pair it with uhmm__invalidate_end().
 * Async-signal-safe.
 */
bool uhmm__invalidate_start(struct uhmm *h, uintptr_t start, uintptr_t end, int event,
			    void *owner)
{
	struct uhmm_notify_range r = { start, end, (enum uhmm_notify_event)event, owner };
	struct ntab *t;
	uint64_t seq;

	if (!atomic_load(&h->ntab) || start >= end)
		return false;
	atomic_fetch_add(&h->inv_active, 1);
	seq = atomic_fetch_add(&h->inv_seq, 1) + 1;
	uhmm__rd_enter(h);
	t = atomic_load(&h->ntab);
	for (size_t i = 0; t && i < t->n; i++) {
		struct nslot *s = t->s[i];
		struct uhmm_interval_notifier *n;

		atomic_fetch_add(&s->active, 1);
		n = s->n;
		/* The driver publishes seq with uhmm_interval_set_seq, or ignores its own. */
		if (!atomic_load(&s->removed) && n->start < end && start < n->end)
			n->ops->invalidate(n, &r, seq);
		atomic_fetch_sub(&s->active, 1);
	}
	uhmm__rd_exit(h);
	return true;
}

void uhmm__invalidate_end(struct uhmm *h, bool started)
{
	if (started)
		atomic_fetch_sub(&h->inv_active, 1);
}

uint64_t uhmm_interval_read_begin(struct uhmm_interval_notifier *n)
{
	if (!n || !n->h)
		return 0;
	while (atomic_load(&n->h->inv_active))
		sched_yield();
	return __atomic_load_n(&n->seq, __ATOMIC_ACQUIRE);
}

bool uhmm_interval_read_retry(struct uhmm_interval_notifier *n, uint64_t seq)
{
	if (!n || !n->h)
		return true;
	return __atomic_load_n(&n->seq, __ATOMIC_ACQUIRE) != seq;
}

void uhmm_interval_set_seq(struct uhmm_interval_notifier *n, uint64_t cur_seq)
{
	if (n)
		__atomic_store_n(&n->seq, cur_seq, __ATOMIC_RELEASE);
}

/* At the handle's end: notifiers never removed lose their slots. */
void uhmm__mirror_fini(struct uhmm *h)
{
	struct ntab *t = atomic_exchange(&h->ntab, NULL);

	for (size_t i = 0; t && i < t->n; i++) {
		t->s[i]->n->slot = NULL;
		free(t->s[i]);
	}
	free(t);
}
