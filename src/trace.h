/* SPDX-License-Identifier: MIT */
/*
 * trace.h - a developer's flight recorder, compiled in only with -DUHMM_TRACE.
 *
 * uhmm__trace() records (tag, address, two values, thread) in a ring of the
 * last TRACE_N events; uhmm__trace_dump(addr) prints the last events that
 * name the page at @addr, and the events around its last staging slot. A tag
 * starting with '*' names a range of @a bytes from @addr. Off (the default)
 * every call compiles to nothing but its arguments. uhmm__trace_dump_all(n)
 * prints the last @n events (from a SIGSEGV handler, say). tests/stress.c dumps the
 * page of its first mismatch: build with
 *   cmake -S . -B build-trace -DCMAKE_C_FLAGS=-DUHMM_TRACE
 */
#ifndef UHMM_TRACE_H
#define UHMM_TRACE_H

#include <stdint.h>

#ifdef UHMM_TRACE
void uhmm__trace(const char *tag, uintptr_t addr, uint64_t a, uint64_t b);
void uhmm__trace_dump(uintptr_t addr);
void uhmm__trace_dump_all(unsigned long n); /* the last @n events, whatever they name */
#else
static inline void uhmm__trace(const char *tag, uintptr_t addr, uint64_t a, uint64_t b)
{
	(void)tag;
	(void)addr;
	(void)a;
	(void)b;
}
#endif

#endif /* UHMM_TRACE_H */
