/* SPDX-License-Identifier: MIT */
/* trace.c - the flight recorder of trace.h; empty unless -DUHMM_TRACE. */
#ifdef UHMM_TRACE
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "trace.h"

#define TRACE_N (1u << 20)
#define TRACE_SHOWN 60 /* events shown per page */
#define TRACE_AROUND 300 /* events looked at either side of the last staging */

struct tr_ent {
	const char *tag;
	uintptr_t addr;
	uint64_t a, b;
	int tid;
	unsigned long seq;
};

static struct tr_ent ring[TRACE_N];
static atomic_ulong next_seq;

void uhmm__trace(const char *tag, uintptr_t addr, uint64_t a, uint64_t b)
{
	unsigned long s = atomic_fetch_add(&next_seq, 1);
	struct tr_ent *t = &ring[s % TRACE_N];

	t->tag = tag;
	t->addr = addr;
	t->a = a;
	t->b = b;
	t->tid = (int)syscall(SYS_gettid);
	t->seq = s;
}

static int covers(const struct tr_ent *t, uintptr_t addr)
{
	return t->tag && t->addr <= addr && addr < t->addr + (t->tag[0] == '*' ? t->a : 4096);
}

static void show(const struct tr_ent *t)
{
	printf("   trace %lu tid %d %-14s %#lx a=%#llx b=%#llx\n", t->seq, t->tid, t->tag,
	       (unsigned long)t->addr, (unsigned long long)t->a, (unsigned long long)t->b);
}

void uhmm__trace_dump_all(unsigned long n)
{
	unsigned long end = atomic_load(&next_seq);

	for (unsigned long s = end > n ? end - n : 0; s < end; s++)
		show(&ring[s % TRACE_N]);
	fflush(stdout);
}

void uhmm__trace_dump(uintptr_t addr)
{
	unsigned long end = atomic_load(&next_seq), first = end > TRACE_N ? end - TRACE_N : 0;
	unsigned long k = 0, stg_seq = 0;
	uintptr_t stg = 0;

	for (unsigned long s = first; s < end; s++)
		k += covers(&ring[s % TRACE_N], addr);
	printf("   trace of page %#lx (%lu events, the last %d):\n", (unsigned long)addr, k,
	       TRACE_SHOWN);
	for (unsigned long s = first; s < end; s++) {
		const struct tr_ent *t = &ring[s % TRACE_N];

		if (!covers(t, addr))
			continue;
		if (k-- <= TRACE_SHOWN)
			show(t);
		if (!strcmp(t->tag, "staged")) {
			stg = (uintptr_t)t->b;
			stg_seq = s;
		}
	}
	if (!stg)
		return;
	printf("   its last staging slot %#lx, around then:\n", (unsigned long)stg);
	for (unsigned long s = stg_seq > first + TRACE_AROUND ? stg_seq - TRACE_AROUND : first;
	     s < stg_seq + TRACE_AROUND && s < end; s++)
		if (covers(&ring[s % TRACE_N], stg))
			show(&ring[s % TRACE_N]);
}
#else
typedef int uhmm_trace_off; /* ISO C: a translation unit is not empty */
#endif
