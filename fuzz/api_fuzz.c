/* SPDX-License-Identifier: MIT */
/*
 * api_fuzz.c - libFuzzer entry point: sequences of public API calls with
 * hostile arguments decoded from the input, on one handle with small devices.
 *
 * Each input opens a handle (thread, signal or automatic mode; sometimes with
 * features masked), creates a small sim device and maybe a device of this
 * file's own driver, then runs up to MAX_OPS operations: map, manage,
 * unmanage, alloc, free, migrate both ways, discard, mremap, touch, the raw
 * three-step migration, range_fault, stats, failure injection, device
 * removal... with addresses unaligned, overlapping, unmanaged, freed, NULL or
 * impossible, lengths zero, odd, huge or wrapping, and option structs too
 * small, too large or with a non-zero tail. At the end the handle must close,
 * the devices must go, and no descriptor may be left behind; the sanitizers
 * watch everything else.
 *
 * What the fuzzer itself must not do (the API's contract, not hostility):
 * pass freed handles or devices, use memory it does not own (hostile
 * addresses stay inside its own reservation, or are addresses no mapping can
 * have), touch memory during uhmm_close, or leave a migration unfinalized.
 *
 * Build and run: fuzz/run.sh [seconds].
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm_driver.h"
#include "uhmm_sim.h"

#define PG 4096UL
#define RES_PAGES 96    /* the reservation hostile addresses live in */
#define MAX_OPS 48
#define NALLOC 3        /* regions from uhmm_alloc */
#define ALLOC_MAX 8     /* pages */
#define NSIM 2
#define NFDEV 2         /* devices of this file's driver */
#define FDEV_PAGES 32
#define MAX_RUN 16      /* pages of one map, mremap or raw migration */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- the input ---- */

struct in {
	const uint8_t *p;
	size_t n;
};

static uint8_t u8(struct in *in)
{
	uint8_t v;

	if (!in->n)
		return 0;
	v = *in->p++;
	in->n--;
	return v;
}

static uint16_t u16(struct in *in)
{
	return (uint16_t)(u8(in) | (uint16_t)u8(in) << 8);
}

static uint64_t u64(struct in *in)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)u8(in) << (8 * i);
	return v;
}

/* ---- a failed invariant is a crash libFuzzer records ---- */

#define ENSURE(cond)                                                                  \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "api_fuzz: %s:%d: invariant failed: %s\n", __FILE__, \
				__LINE__, #cond);                                     \
			abort();                                                      \
		}                                                                     \
	} while (0)

/* 0, a count, or a negative errno: never anything else. */
#define ENSURE_RET(r) ENSURE((long long)(r) >= -4095 && (long long)(r) <= (1LL << 31))

static const struct uhmm_interval_notifier_ops notifier_ops;
static bool trace;      /* UHMM_FUZZ_TRACE: print each call, to turn a crash into a reproducer */

/* Addresses in the trace: relative to the reservation where they are in it. */
#define TRACE(...)                                        \
	do {                                              \
		if (trace)                                \
			fprintf(stderr, "api_fuzz: " __VA_ARGS__); \
	} while (0)
#define RES_OFF(a) ((long long)((uintptr_t)(a) - (uintptr_t)W.res))

/* ---- SIGBUS: poisoned pages are a legal outcome of a touch ---- */

static __thread sigjmp_buf *volatile bus_jmp;

static void on_bus(int sig, siginfo_t *si, void *uc)
{
	sigjmp_buf *j = bus_jmp;

	if (uhmm_sigbus_handler(sig, si, uc))
		return;
	if (j) {
		bus_jmp = NULL;
		siglongjmp(*j, 1);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct sigaction sa;

	struct uhmm *h;

	(void)argc;
	(void)argv;
	trace = getenv("UHMM_FUZZ_TRACE") != NULL;
	/* Before any uhmm_open, so that signal mode passes foreign SIGBUS on to us. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_bus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	/*
	 * The process-wide descriptors uhmm opens once (an eventfd; /proc/self/maps
	 * and pagemap, on the first migration of read-only memory or range_fault):
	 * not a per-input leak.
	 */
	if (uhmm_open(&h, NULL) == 0) {
		UHMM_OPTS(uhmm_sim_opts, so, .npages = 1, .name = "warm-up");
		struct uhmm_sim *sim = NULL;
		struct uhmm_interval_notifier n;
		uint64_t pfn = 0;
		char *m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		void *p = NULL;

		if (uhmm_alloc(h, PG, &p) == 0 && uhmm_sim_create(h, &so, &sim) == 0) {
			*(volatile char *)p = 1;
			mprotect(p, PG, PROT_READ);
			(void)uhmm_migrate_to_device(uhmm_sim_devmem(sim), p, PG);
			(void)uhmm_sim_destroy(sim);
		}
		if (p)
			(void)uhmm_free(h, p, PG);

		if (m != MAP_FAILED &&
		    !uhmm_interval_notifier_insert(&n, h, (uintptr_t)m, PG, &notifier_ops)) {
			struct uhmm_range r = { .notifier = &n, .start = (uintptr_t)m,
						.end = (uintptr_t)m + PG, .pfns = &pfn };

			r.notifier_seq = uhmm_interval_read_begin(&n);
			(void)uhmm_range_fault(&r);
			uhmm_interval_notifier_remove(&n);
		}
		if (m != MAP_FAILED)
			munmap(m, PG);
		uhmm_close(h);
	}
	return 0;
}

/* ---- this file's driver: RAM-backed, optionally failing ---- */

struct fdev {
	struct uhmm_devmem *dm;
	char *pool;
	unsigned long npages;
	unsigned fail_every; /* 0: never; n: every n-th copy fails */
	unsigned calls;
};

static bool fdev_fail(struct fdev *d)
{
	return d->fail_every && ++d->calls % d->fail_every == 0;
}

static int fdev_to(struct uhmm_devmem *dm, struct uhmm_page *const *dst, const void *const *src,
		   unsigned long n)
{
	struct fdev *d = uhmm_devmem_owner(dm); /* driver_data may be cut off by sz */

	if (fdev_fail(d))
		return -EIO;
	for (unsigned long i = 0; i < n; i++) {
		ENSURE(dst[i] && dst[i]->pfn < d->npages);
		if (src[i])
			memcpy(d->pool + dst[i]->pfn * PG, src[i], PG);
		else
			memset(d->pool + dst[i]->pfn * PG, 0, PG);
	}
	return 0;
}

static int fdev_from(struct uhmm_devmem *dm, void *const *dst, struct uhmm_page *const *src,
		     unsigned long n)
{
	struct fdev *d = uhmm_devmem_owner(dm); /* driver_data may be cut off by sz */

	if (fdev_fail(d))
		return -EIO;
	for (unsigned long i = 0; i < n; i++) {
		ENSURE(src[i] && src[i]->pfn < d->npages);
		memcpy(dst[i], d->pool + src[i]->pfn * PG, PG);
	}
	return 0;
}

static int fdev_m2r(struct uhmm_fault *vmf)
{
	struct uhmm_devmem *dm = vmf->page->devmem;
	uint64_t src[1], dst[1];
	struct uhmm_migrate a = {
		.h = vmf->h,
		.start = vmf->address,
		.end = vmf->address + PG,
		.src = src,
		.dst = dst,
		.pgmap_owner = uhmm_devmem_owner(dm),
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
		ENSURE(buf);
		ret = fdev_from(dm, &buf, &page, 1);
		dst[0] = ret ? 0 : UHMM_MIGRATE_VALID;
	}
	uhmm_migrate_pages(&a);
	uhmm_migrate_finalize(&a);
	return ret;
}

static void fdev_free(struct uhmm_page *page)
{
	ENSURE(page && page->refcount == 0);
}

static const struct uhmm_devmem_ops fdev_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = fdev_to,
	.copy_from_device = fdev_from,
	.migrate_to_ram = fdev_m2r,
	.page_free = fdev_free,
};

/* Tables the core must refuse. */
static const struct uhmm_devmem_ops bad_ops[] = {
	{ .abi = UHMM_DEVMEM_OPS_ABI + 1, .copy_to_device = fdev_to, .copy_from_device = fdev_from,
	  .migrate_to_ram = fdev_m2r },
	{ .abi = UHMM_DEVMEM_OPS_ABI, .copy_from_device = fdev_from, .migrate_to_ram = fdev_m2r },
	{ .abi = UHMM_DEVMEM_OPS_ABI, .copy_to_device = fdev_to, .migrate_to_ram = fdev_m2r },
	{ .abi = UHMM_DEVMEM_OPS_ABI, .copy_to_device = fdev_to, .copy_from_device = fdev_from },
	{ .abi = 0 },
};

/* ---- the world of one input ---- */

enum pk { P_NONE, P_RW, P_RO, P_SHARED, P_FILE }; /* what a reservation page is */

struct alloc_slot {
	char *addr;
	size_t npages;
	bool live;     /* wholly mapped: may be targeted */
	bool mapped[ALLOC_MAX];
};

struct world {
	struct uhmm *h;
	bool closed;
	struct uhmm_sim *sim[NSIM];
	struct fdev *fdev[NFDEV];
	char *res; /* RES_PAGES pages, ours */
	uint8_t kind[RES_PAGES];
	struct alloc_slot al[NALLOC];
	int memfd;
	struct uhmm_interval_notifier notifier;
	bool notifier_in;
	uint64_t pfns[UHMM_MIGRATE_MAX_PAGES];
	uint64_t msrc[UHMM_MIGRATE_MAX_PAGES], mdst[UHMM_MIGRATE_MAX_PAGES];
};

static struct world W; /* static: a run's arrays are large */

/* Addresses no mapping can have, and edge values. */
static const uint64_t wild_addrs[] = {
	0,
	1,
	PG - 1,
	PG,
	0x0000800000000000ULL, /* not canonical */
	0xffff800000000000ULL, /* kernel */
	0xfffffffffffff000ULL,
	UINT64_MAX,
};

static const uint64_t wild_lens[] = {
	0,
	1,
	PG - 1,
	PG + 1,
	UINT64_MAX,
	UINT64_MAX - PG + 1,
	1ULL << 63,
	1ULL << 48,
};

/* An address: in the reservation (any page, maybe unaligned), an alloc slot, or wild. */
static char *pick_addr(struct in *in)
{
	uint8_t sel = u8(in);
	uint8_t pg = u8(in);
	uint16_t off = (sel & 0x80) ? u16(in) & (PG - 1) : 0;

	switch (sel & 3) {
	case 0:
	case 1:
		return W.res + (pg % RES_PAGES) * PG + off;
	case 2: {
		struct alloc_slot *a = &W.al[pg % NALLOC];

		if (a->live)
			return a->addr + ((pg >> 2) % a->npages) * PG + off;
		return W.res + (pg % RES_PAGES) * PG + off;
	}
	default:
		return (char *)(uintptr_t)wild_addrs[pg % (sizeof(wild_addrs) / sizeof(wild_addrs[0]))];
	}
}

/*
 * A length for @addr: pages up to the end of the region it lies in (a
 * reservation or a live alloc slot), maybe odd, or a wild one. Lengths never
 * reach memory the fuzzer does not own, except wild ones no mapping can cover.
 */
static size_t pick_len(struct in *in, const char *addr)
{
	uint8_t sel = u8(in), v = u8(in);
	uintptr_t a = (uintptr_t)addr, end = 0;

	if (a >= (uintptr_t)W.res && a < (uintptr_t)W.res + RES_PAGES * PG)
		end = (uintptr_t)W.res + RES_PAGES * PG;
	for (int i = 0; i < NALLOC; i++)
		if (W.al[i].live && a >= (uintptr_t)W.al[i].addr &&
		    a < (uintptr_t)W.al[i].addr + W.al[i].npages * PG)
			end = (uintptr_t)W.al[i].addr + W.al[i].npages * PG;
	if ((sel & 7) == 7 || !end) {
		uint64_t l = wild_lens[v % (sizeof(wild_lens) / sizeof(wild_lens[0]))];

		/* A huge length from a real address must still cover no foreign mapping. */
		if (end && l > 1 && l < (1ULL << 47))
			l = PG;
		return (size_t)l;
	}
	size_t len = (size_t)(1 + v % MAX_RUN) * PG;

	if (len > end - a)
		len = (end - a) & ~(PG - 1);
	if (sel & 8)
		len -= (len > 1) ? (sel >> 4) + 1 : 0; /* odd */
	return len;
}

/* Reservation pages [p, p+n) are plain reserved memory again. */
static void re_reserve(size_t p, size_t n)
{
	void *r = mmap(W.res + p * PG, n * PG, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);

	ENSURE(r != MAP_FAILED);
	memset(&W.kind[p], P_NONE, n);
}

/* After a successful uhmm_free: what it unmapped must stay ours (or be forgotten). */
static void after_free(const char *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr & ~(PG - 1);
	uintptr_t e = ((uintptr_t)addr + len + PG - 1) & ~(PG - 1);

	for (uintptr_t a = s; a < e; a += PG) {
		if (a >= (uintptr_t)W.res && a < (uintptr_t)W.res + RES_PAGES * PG) {
			re_reserve((a - (uintptr_t)W.res) / PG, 1);
			continue;
		}
		for (int i = 0; i < NALLOC; i++) {
			struct alloc_slot *sl = &W.al[i];

			if (sl->npages && a >= (uintptr_t)sl->addr &&
			    a < (uintptr_t)sl->addr + sl->npages * PG) {
				sl->mapped[(a - (uintptr_t)sl->addr) / PG] = false;
				sl->live = false;
			}
		}
	}
}

static void *map_kind(char *at, size_t n, enum pk k)
{
	int prot = k == P_RO ? PROT_READ : k == P_NONE ? PROT_NONE : PROT_READ | PROT_WRITE;
	int flags = MAP_FIXED | (k == P_SHARED ? MAP_SHARED : MAP_PRIVATE);
	int fd = -1;

	if (k == P_FILE) {
		fd = W.memfd;
	} else {
		flags |= MAP_ANONYMOUS;
	}
	return mmap(at, n * PG, prot, flags, fd, 0);
}

/* ---- touching memory ---- */

/* Read or write one byte; a SIGBUS (a poisoned page) is a legal outcome. */
static void touch(char *p, bool write, uint8_t v)
{
	sigjmp_buf jb;

	if (sigsetjmp(jb, 1) == 0) {
		bus_jmp = &jb;
		if (write)
			*(volatile char *)p = (char)v;
		else
			(void)*(volatile char *)p;
		bus_jmp = NULL;
	}
	bus_jmp = NULL;
}

static void op_touch(struct in *in)
{
	uint8_t sel = u8(in), pg = u8(in);
	uint16_t off = u16(in) & (PG - 1);
	bool write = sel & 1;

	if (sel & 2) {
		struct alloc_slot *a = &W.al[pg % NALLOC];
		size_t i = (pg >> 2) % (a->npages ? a->npages : 1);

		if (a->npages && a->mapped[i])
			touch(a->addr + i * PG + off, write, sel);
		return;
	}
	size_t p = pg % RES_PAGES;

	if (W.kind[p] == P_NONE)
		return;
	touch(W.res + p * PG + off, write && W.kind[p] != P_RO, sel);
}

/* ---- devices ---- */

static struct uhmm_devmem *pick_dm(struct in *in)
{
	uint8_t v = u8(in) % (NSIM + NFDEV + 1);

	if (v < NSIM)
		return W.sim[v] ? uhmm_sim_devmem(W.sim[v]) : NULL;
	v -= NSIM;
	if (v < NFDEV)
		return W.fdev[v] ? W.fdev[v]->dm : NULL;
	return NULL;
}

static void sim_create(struct in *in, int slot)
{
	struct {
		struct uhmm_sim_opts o;
		uint8_t tail[16];
	} buf;
	static const char long_name[] = "a-name-much-longer-than-the-thirty-one-bytes-kept";
	uint8_t sel = u8(in);
	struct uhmm_sim *s = NULL;
	int r;

	memset(&buf, 0, sizeof(buf));
	buf.o.npages = 1 + u8(in) % 64;
	if (sel & 0x40)
		buf.o.npages = (sel & 0x80) ? (1UL << 31) + 1 : 0; /* refused / the default */
	buf.o.name = (sel & 4) ? NULL : (sel & 8) ? long_name : "";
	switch (sel & 3) {
	case 0:
		buf.o.sz = sizeof(buf.o);
		break;
	case 1:
		buf.o.sz = u8(in) % sizeof(buf); /* too small, or a zero tail */
		break;
	case 2:
		buf.o.sz = sizeof(buf);
		buf.tail[u8(in) % sizeof(buf.tail)] = 1; /* an unknown non-zero field */
		break;
	default:
		buf.o.sz = sizeof(buf.o);
		r = uhmm_sim_create(W.closed ? NULL : W.h, &buf.o, NULL);
		ENSURE(r == -EINVAL);
		return;
	}
	if (W.closed)
		return;
	r = uhmm_sim_create(W.h, (sel & 0x30) == 0x30 ? NULL : &buf.o, &s);
	TRACE("uhmm_sim_create(npages %lu) = %d: %p\n", buf.o.npages, r, (void *)s);
	ENSURE_RET(r);
	ENSURE(!r == !!s);
	if (!r) {
		if (W.sim[slot])
			ENSURE(uhmm_sim_destroy(W.sim[slot]) >= 0);
		W.sim[slot] = s;
	}
}

static void fdev_add(struct in *in, int slot)
{
	struct {
		struct uhmm_devmem_desc d;
		uint8_t tail[16];
	} buf;
	uint8_t sel = u8(in);
	struct uhmm_devmem *dm = NULL;
	struct fdev *f = calloc(1, sizeof(*f));
	int r;

	ENSURE(f);
	memset(&buf, 0, sizeof(buf));
	f->npages = 1 + u8(in) % FDEV_PAGES;
	f->fail_every = u8(in) % 8;
	f->pool = mmap(NULL, FDEV_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	ENSURE(f->pool != MAP_FAILED);
	buf.d.sz = sizeof(buf.d);
	buf.d.type = UHMM_MEMORY_DEVICE_PRIVATE;
	buf.d.npages = f->npages;
	buf.d.owner = f;
	buf.d.ops = &fdev_ops;
	buf.d.driver_data = f;
	buf.d.name = (sel & 0x80) ? NULL : "fuzz-device-with-a-rather-long-name";
	switch (sel & 7) {
	case 1:
		buf.d.ops = (sel & 8) ? NULL : &bad_ops[u8(in) % (sizeof(bad_ops) / sizeof(bad_ops[0]))];
		break;
	case 2:
		buf.d.type = (enum uhmm_memory_type)u8(in);
		break;
	case 3:
		buf.d.npages = (sel & 8) ? 0 : (1UL << 31) + 1 + u8(in);
		break;
	case 4:
		buf.d.owner = NULL;
		break;
	case 5:
		/* Any size, one ending inside a pointer field too: -EINVAL. */
		buf.d.sz = u8(in) % sizeof(buf);
		break;
	case 6:
		buf.d.sz = sizeof(buf);
		buf.tail[u8(in) % sizeof(buf.tail)] = 0x5a;
		break;
	default:
		break;
	}
	r = uhmm_devmem_add(W.closed ? NULL : W.h, &buf.d, &dm);
	TRACE("uhmm_devmem_add(sz %zu, npages %lu, case %d) = %d: %p\n", buf.d.sz, buf.d.npages,
	      sel & 7, r, (void *)dm);
	ENSURE_RET(r);
	if (r) {
		ENSURE(dm == NULL);
		munmap(f->pool, FDEV_PAGES * PG);
		free(f);
		return;
	}
	/* Accepted: then it was a table and a description that make sense. */
	ENSURE(buf.d.ops == &fdev_ops && buf.d.owner && buf.d.npages == f->npages);
	f->dm = dm;
	if (W.fdev[slot]) {
		ENSURE(uhmm_devmem_remove(W.fdev[slot]->dm) >= 0);
		munmap(W.fdev[slot]->pool, FDEV_PAGES * PG);
		free(W.fdev[slot]);
	}
	W.fdev[slot] = f;
}

static void fdev_remove_all(void)
{
	for (int i = 0; i < NFDEV; i++) {
		if (!W.fdev[i])
			continue;
		ENSURE(uhmm_devmem_remove(W.fdev[i]->dm) >= 0);
		munmap(W.fdev[i]->pool, FDEV_PAGES * PG);
		free(W.fdev[i]);
		W.fdev[i] = NULL;
	}
}

/* ---- options structs, read back by the library ---- */

static void op_stats(struct in *in)
{
	uint8_t buf[512], sel = u8(in);
	size_t sz = (size_t)u16(in) % 128;
	int r;

	memset(buf, 0, sizeof(buf));
	if (sel & 1)
		buf[sz ? sz - 1 : 0] = 0xee; /* a non-zero tail, maybe */
	memcpy(buf, &sz, sizeof(sz));
	buf[sizeof(buf) - 1] = 0xc5; /* a canary far past any sz */
	switch (sel % 4) {
	case 0:
		r = uhmm_stats(W.closed ? NULL : W.h, (struct uhmm_stats *)buf);
		break;
	case 1: {
		struct uhmm_devmem *dm = pick_dm(in);

		r = dm ? uhmm_devmem_stats(dm, (struct uhmm_devmem_stats *)buf) : -EINVAL;
		break;
	}
	case 2:
		r = uhmm_sim_stats(W.sim[sel / 4 % NSIM], (struct uhmm_sim_stats *)buf);
		break;
	default:
		r = uhmm_stats(NULL, (struct uhmm_stats *)buf);
		ENSURE(r == -EINVAL);
		break;
	}
	ENSURE_RET(r);
	ENSURE(buf[sizeof(buf) - 1] == 0xc5);
	/* Nothing written past sz. */
	for (size_t i = sz > 8 ? sz : 8; i < sizeof(buf) - 1; i++)
		ENSURE(buf[i] == 0 || (i == (sz ? sz - 1 : 0) && buf[i] == 0xee));
}

static void op_open_close(struct in *in)
{
	struct {
		struct uhmm_open_opts o;
		uint8_t tail[16];
	} buf;
	uint8_t sel = u8(in);
	struct uhmm *h = (struct uhmm *)&buf; /* must be overwritten or cleared */
	int r;

	memset(&buf, 0, sizeof(buf));
	buf.o.sz = sizeof(buf.o);
	buf.o.flags = (sel & 1) ? (unsigned)u8(in) : (sel & 2) ? UHMM_OPEN_USER_MODE_ONLY : 0;
	buf.o.mask_features = (sel & 4) ? u64(in) : 0;
	buf.o.fault_mode = (enum uhmm_fault_mode)((sel & 8) ? u8(in) : (sel >> 4) % 3);
	if ((sel & 0x30) == 0x30) {
		buf.o.sz = u8(in) % sizeof(buf);
		if (buf.o.sz > sizeof(buf.o))
			buf.tail[(buf.o.sz - sizeof(buf.o) - 1) % sizeof(buf.tail)] = sel;
	}
	r = uhmm_open(&h, &buf.o);
	ENSURE_RET(r);
	ENSURE(!r == !!h);
	if (!r)
		uhmm_close(h);
	ENSURE(uhmm_open(NULL, &buf.o) == -EINVAL);
}

/* ---- the raw migration: the fuzzer plays a (strange but legal) driver ---- */

static void op_raw_migrate(struct in *in)
{
	uint8_t sel = u8(in);
	char *addr = pick_addr(in);
	size_t n = (size_t)u16(in) % (UHMM_MIGRATE_MAX_PAGES + 2);
	struct uhmm_devmem *dm = pick_dm(in);
	struct uhmm_migrate a;
	int r;

	memset(&a, 0, sizeof(a));
	a.h = W.h;
	a.start = (uintptr_t)addr;
	a.end = (sel & 0x80) ? (uintptr_t)addr - n * PG : (uintptr_t)addr + n * PG;
	/* end must stay in memory we own (or be rejected for its size first). */
	if (n > UHMM_MIGRATE_MAX_PAGES || a.end < a.start ||
	    !(a.start >= (uintptr_t)W.res && a.end <= (uintptr_t)W.res + RES_PAGES * PG))
		n = 0, a.end = a.start + ((sel & 0x40) ? PG : 0);
	a.src = (sel & 0x20) && !(sel & 0x10) ? NULL : W.msrc;
	a.dst = W.mdst;
	a.flags = (sel & 3) | ((sel & 4) ? (uint32_t)u8(in) << 8 : 0);
	a.pgmap_owner = dm ? uhmm_devmem_owner(dm) : (void *)(uintptr_t)u64(in);
	r = uhmm_migrate_setup(&a);
	TRACE("uhmm_migrate_setup([res%+lld, res%+lld), flags %#x) = %d\n", RES_OFF(a.start),
	      RES_OFF(a.end), a.flags, r);
	ENSURE_RET(r);
	if (r) {
		/* Not set up: pages and finalize must do nothing. */
		uhmm_migrate_pages(&a);
		uhmm_migrate_finalize(&a);
		return;
	}
	ENSURE(a.npages == (a.end - a.start) / PG && a.cpages <= a.npages);
	for (unsigned long i = 0; i < a.npages; i++) {
		uint64_t s = a.src[i];
		uint8_t how = u8(in);

		ENSURE(!(s & ~(uint64_t)UHMM_MIGRATE_FLAGS_MASK) || (s & UHMM_MIGRATE_VALID));
		a.dst[i] = 0;
		if (!(s & UHMM_MIGRATE_MIGRATE) || how % 4 == 0)
			continue; /* leave it where it is */
		if (s & UHMM_MIGRATE_DEVICE) {
			/* Home, with whatever this "driver" copies. */
			void *buf = uhmm_migrate_sysbuf(&a, i);

			ENSURE(buf);
			memset(buf, how, PG);
			a.dst[i] = UHMM_MIGRATE_VALID;
		} else if (dm) {
			/* To a device page, filled from the source (or zeros). */
			struct uhmm_page *p = uhmm_devmem_alloc_page(dm);
			const void *data = uhmm_migrate_src_data(&a, i);

			if (!p)
				continue;
			/* The copy is the driver's business; this one keeps what the page held. */
			(void)data;
			a.dst[i] = uhmm_migrate_dst_device(p);
		}
	}
	uhmm_migrate_pages(&a);
	if (sel & 8)
		uhmm_migrate_pages(&a); /* twice: nothing more happens */
	uhmm_migrate_finalize(&a);
	uhmm_migrate_finalize(&a); /* after finalize: a no-op */
}

/* ---- mirror ---- */

static bool notifier_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notify_range *r,
				uint64_t cur_seq)
{
	ENSURE(r && r->start <= r->end);
	uhmm_interval_set_seq(n, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops notifier_ops = { .invalidate = notifier_invalidate };

static void op_range_fault(struct in *in)
{
	uint8_t sel = u8(in);
	char *addr = pick_addr(in);
	size_t n = 1 + u8(in) % MAX_RUN;
	struct uhmm_range range;
	struct uhmm_devmem *dm = pick_dm(in);
	int r;

	if (!W.notifier_in) {
		uint64_t len = (sel & 1) ? u64(in) : RES_PAGES * PG;

		r = uhmm_interval_notifier_insert(&W.notifier, W.h, (uintptr_t)W.res, len, &notifier_ops);
		ENSURE_RET(r);
		W.notifier_in = r == 0;
		if (!W.notifier_in)
			return;
	}
	if ((uintptr_t)addr < (uintptr_t)W.res ||
	    (uintptr_t)addr + n * PG > (uintptr_t)W.res + RES_PAGES * PG)
		addr = W.res;
	memset(&range, 0, sizeof(range));
	range.notifier = &W.notifier;
	range.notifier_seq = uhmm_interval_read_begin(&W.notifier);
	range.start = (uintptr_t)addr;
	range.end = (sel & 2) ? range.start : range.start + n * PG;
	range.pfns = (sel & 4) && (sel & 8) ? NULL : W.pfns;
	range.default_flags = 0;
	if (sel & 0x10)
		range.default_flags = UHMM_PFN_REQ_FAULT | ((sel & 0x20) ? UHMM_PFN_REQ_WRITE : 0);
	range.pfn_flags_mask = (sel & 0x40) ? u64(in) : 0;
	range.dev_private_owner = dm ? uhmm_devmem_owner(dm) : NULL;
	for (size_t i = 0; i < n; i++)
		W.pfns[i] = u8(in) & 1 ? UHMM_PFN_REQ_FAULT : 0;
	r = uhmm_range_fault(&range);
	ENSURE_RET(r);
	(void)uhmm_interval_read_retry(&W.notifier, range.notifier_seq);
	if (sel & 0x80) {
		uhmm_interval_notifier_remove(&W.notifier);
		W.notifier_in = false;
	}
}

/* ---- one input ---- */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void world_open(struct in *in)
{
	UHMM_OPTS(uhmm_open_opts, o);
	uint8_t sel = u8(in);
	int r;

	memset(&W, 0, sizeof(W));
	W.memfd = -1;
	o.fault_mode = (enum uhmm_fault_mode)(sel % 3);
	if ((sel & 0x1c) == 0x1c)
		o.mask_features = 1ULL << (u8(in) % 11); /* one feature missing: refusals */
	if (sel & 0x20)
		o.flags = UHMM_OPEN_USER_MODE_ONLY;
	r = uhmm_open(&W.h, &o);
	ENSURE_RET(r);
	if (r) {
		W.h = NULL;
		return;
	}
	W.res = mmap(NULL, RES_PAGES * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		     -1, 0);
	ENSURE(W.res != MAP_FAILED);
	W.memfd = (int)syscall(SYS_memfd_create, "api_fuzz", 0);
	ENSURE(W.memfd >= 0);
	ENSURE(ftruncate(W.memfd, MAX_RUN * PG) == 0);
	/* A first device, and some memory with data, so that most inputs get going. */
	{
		UHMM_OPTS(uhmm_sim_opts, so, .npages = 1 + u8(in) % 64, .name = "fuzz");

		if (uhmm_sim_create(W.h, &so, &W.sim[0]))
			W.sim[0] = NULL;
		TRACE("open: mode %d, flags %#x, mask %#llx; sim %p\n", (int)o.fault_mode, o.flags,
		      (unsigned long long)o.mask_features, (void *)W.sim[0]);
	}
	ENSURE(map_kind(W.res + 8 * PG, 32, P_RW) != MAP_FAILED);
	memset(&W.kind[8], P_RW, 32);
	memset(W.res + 8 * PG, 0x11, 32 * PG);
	r = uhmm_manage(W.h, W.res + 8 * PG, 16 * PG);
	ENSURE(r == 0);
}

static void world_close(struct in *in)
{
	uint8_t order = u8(in);

	if (W.notifier_in && !W.closed) {
		uhmm_interval_notifier_remove(&W.notifier);
		W.notifier_in = false;
	}
	/* Devices before or after the handle: both are allowed. */
	if (order & 1) {
		if (!W.closed)
			uhmm_close(W.h);
		W.closed = true;
	}
	for (int i = 0; i < NSIM; i++) {
		ENSURE(uhmm_sim_destroy(W.sim[i]) >= 0);
		W.sim[i] = NULL;
	}
	fdev_remove_all();
	if (W.notifier_in) {
		uhmm_interval_notifier_remove(&W.notifier);
		W.notifier_in = false;
	}
	if (!W.closed)
		uhmm_close(W.h);
	W.closed = true;
	/* Closed: the memory is plain memory; give it back. */
	munmap(W.res, RES_PAGES * PG);
	for (int i = 0; i < NALLOC; i++)
		for (size_t p = 0; p < W.al[i].npages; p++)
			if (W.al[i].mapped[p])
				munmap(W.al[i].addr + p * PG, PG);
	if (W.memfd >= 0)
		close(W.memfd);
}

static void null_calls(struct in *in)
{
	void *p = (void *)&p;
	char *a = pick_addr(in);
	size_t l = pick_len(in, a);

	ENSURE(uhmm_manage(NULL, a, l) == -EINVAL);
	ENSURE(uhmm_unmanage(NULL, a, l) == -EINVAL);
	ENSURE(uhmm_alloc(NULL, l, &p) == -EINVAL);
	ENSURE(uhmm_free(NULL, a, l) == -EINVAL);
	ENSURE(uhmm_migrate_to_ram(NULL, a, l) == -EINVAL);
	ENSURE(uhmm_migrate_to_device(NULL, a, l) == -EINVAL);
	ENSURE(uhmm_page_state(NULL, a) == -EINVAL);
	ENSURE(uhmm_sync(NULL) == -EINVAL);
	ENSURE(uhmm_can_migrate(NULL) == -EINVAL);
	ENSURE(uhmm_fault_mode(NULL) == -EINVAL);
	ENSURE(uhmm_features(NULL) == 0);
	ENSURE(uhmm_sim_fail_copies(NULL, 1) == -EINVAL);
	ENSURE(uhmm_sim_kill(NULL) == -EINVAL);
	ENSURE(uhmm_sim_devmem(NULL) == NULL);
	ENSURE(uhmm_sim_destroy(NULL) == 0);
	ENSURE(uhmm_devmem_remove(NULL) == 0);
	ENSURE(uhmm_devmem_alloc_page(NULL) == NULL);
	ENSURE(uhmm_devmem_page(NULL, 0) == NULL);
	ENSURE(uhmm_migrate_setup(NULL) == -EINVAL);
	ENSURE(uhmm_range_fault(NULL) == -EINVAL);
	ENSURE(uhmm_fault_window(NULL) == 1);
	uhmm_migrate_pages(NULL);
	uhmm_migrate_finalize(NULL);
	uhmm_close(NULL);
	uhmm_page_get(NULL);
	uhmm_page_put(NULL);
	ENSURE(uhmm_strerror((int)u64(in)) != NULL);
	(void)uhmm_feature_name(u64(in));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	int fds0 = count_fds();

	world_open(&in);
	if (!W.h)
		return 0;
	for (int op = 0; op < MAX_OPS && in.n; op++) {
		uint8_t code = u8(&in);
		char *a;
		size_t l;
		int r;

		if (W.closed)
			break;
		switch (code % 24) {
		case 0: /* map a run of the reservation as some kind of memory */ {
			size_t p = u8(&in) % RES_PAGES, n = 1 + u8(&in) % MAX_RUN;
			enum pk k = (enum pk)(u8(&in) % 5);

			if (p + n > RES_PAGES)
				n = RES_PAGES - p;
			TRACE("map res+%zu pages, %zu pages of kind %d\n", p, n, (int)k);
			ENSURE(map_kind(W.res + p * PG, n, k) != MAP_FAILED);
			memset(&W.kind[p], k, n);
			if (k == P_RW)
				memset(W.res + p * PG, (int)code, n * PG);
			break;
		}
		case 1:
		case 2:
			a = pick_addr(&in);
			l = pick_len(&in, a);
			r = uhmm_manage(W.h, a, l);
			TRACE("uhmm_manage(res%+lld, %#zx) = %d\n", RES_OFF(a), l, r);
			ENSURE_RET(r);
			break;
		case 3:
			a = pick_addr(&in);
			l = pick_len(&in, a);
			r = uhmm_unmanage(W.h, a, l);
			TRACE("uhmm_unmanage(res%+lld, %#zx) = %d\n", RES_OFF(a), l, r);
			ENSURE_RET(r);
			break;
		case 4: /* uhmm_alloc */ {
			int i = u8(&in) % NALLOC;
			uint8_t v = u8(&in);
			size_t len = (size_t)(1 + v % ALLOC_MAX) * PG - (v & 0x40 ? 7 : 0);
			void *p = NULL;

			if (v & 0x80)
				len = (size_t)wild_lens[v % 8];
			if (W.al[i].npages)
				break; /* one region per slot */
			r = uhmm_alloc(W.h, len, (v & 0x20) && (v & 0x10) ? NULL : &p);
			TRACE("uhmm_alloc(%#zx) = %d: res%+lld\n", len, r, RES_OFF(p));
			ENSURE_RET(r);
			if (r)
				break;
			ENSURE(p && len <= ALLOC_MAX * PG);
			W.al[i].addr = p;
			W.al[i].npages = (len + PG - 1) / PG;
			W.al[i].live = true;
			for (size_t k = 0; k < W.al[i].npages; k++)
				W.al[i].mapped[k] = true;
			break;
		}
		case 5:
			a = pick_addr(&in);
			l = pick_len(&in, a);
			r = uhmm_free(W.h, a, l);
			TRACE("uhmm_free(res%+lld, %#zx) = %d\n", RES_OFF(a), l, r);
			ENSURE_RET(r);
			if (!r)
				after_free(a, l);
			break;
		case 6:
			a = pick_addr(&in);
			l = pick_len(&in, a);
			{
				struct uhmm_devmem *dm = pick_dm(&in);

				TRACE("uhmm_migrate_to_device(%p, res%+lld, %#zx)...\n", (void *)dm, RES_OFF(a), l);
				r = uhmm_migrate_to_device(dm, a, l);
			}
			TRACE("  = %d\n", r);
			ENSURE_RET(r);
			break;
		case 7: /* read duplication: the data stays where the program sees it */
			a = pick_addr(&in);
			l = pick_len(&in, a);
			{
				struct uhmm_devmem *dm = pick_dm(&in);

				TRACE("uhmm_duplicate(%p, res%+lld, %#zx)...\n", (void *)dm, RES_OFF(a), l);
				r = uhmm_duplicate(dm, a, l);
			}
			TRACE("  = %d\n", r);
			ENSURE_RET(r);
			break;
		case 8:
			a = pick_addr(&in);
			l = pick_len(&in, a);
			r = uhmm_migrate_to_ram(W.h, a, l);
			TRACE("uhmm_migrate_to_ram(res%+lld, %#zx) = %d\n", RES_OFF(a), l, r);
			ENSURE_RET(r);
			break;
		case 9:
		case 10:
			op_touch(&in);
			break;
		case 11: /* discard */ {
			size_t p = u8(&in) % RES_PAGES, n = 1 + u8(&in) % MAX_RUN;

			if (p + n > RES_PAGES)
				n = RES_PAGES - p;
			r = madvise(W.res + p * PG, n * PG, MADV_DONTNEED);
			TRACE("madvise(res+%zu pages, %zu pages, DONTNEED) = %d\n", p, n, r);
			(void)r; /* fails on some kinds: not our business */
			break;
		}
		case 12: /* mremap a mapped run elsewhere in the reservation */ {
			size_t s = u8(&in) % RES_PAGES, d = u8(&in) % RES_PAGES, n = 1 + u8(&in) % 8;
			void *m;

			if (s + n > RES_PAGES || d + n > RES_PAGES || (s < d + n && d < s + n))
				break;
			for (size_t k = 0; k < n; k++)
				if (W.kind[s + k] == P_NONE)
					n = 0;
			if (!n)
				break;
			/*
			 * MREMAP_DONTUNMAP: the old place stays mapped (empty), so the
			 * reservation never has a hole. A hole is free address space:
			 * uhmm (or malloc) may map its own memory there, and the next
			 * MAP_FIXED of the fuzzer would clobber it (it did: uhmm's state
			 * words for the moved range landed in the hole, and re-reserving
			 * the hole crashed uhmm_migrate_setup). Private anonymous only.
			 */
			m = mremap(W.res + s * PG, n * PG, n * PG,
				   MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, W.res + d * PG);
			TRACE("mremap(res+%zu pages -> res+%zu pages, %zu pages, DONTUNMAP): %s\n", s,
			      d, n, m == MAP_FAILED ? "failed" : "ok");
			if (m == MAP_FAILED)
				break;
			memcpy(&W.kind[d], &W.kind[s], n);
			break;
		}
		case 13:
			a = pick_addr(&in);
			r = uhmm_page_state(W.h, a);
			ENSURE(r == -EINVAL || r == -ENOENT || (r >= UHMM_PAGE_EMPTY && r <= UHMM_PAGE_DUPLICATED));
			break;
		case 14:
			ENSURE(uhmm_sync(W.h) == 0);
			break;
		case 15:
			op_stats(&in);
			break;
		case 16: /* the sim's failure injection */ {
			struct uhmm_sim *s = W.sim[u8(&in) % NSIM];
			uint8_t v = u8(&in);

			switch (v % 8) {
			case 0:
				ENSURE_RET(uhmm_sim_fail_copies(s, v / 8));
				break;
			case 1:
				ENSURE_RET(uhmm_sim_fail_page(s, pick_addr(&in)));
				break;
			case 2:
				if (v > 0xf0)
					ENSURE_RET(uhmm_sim_kill(s));
				break;
			default:
				ENSURE_RET(uhmm_sim_clear_faults(s));
				break;
			}
			break;
		}
		case 17:
			sim_create(&in, u8(&in) % NSIM);
			break;
		case 18: /* remove a device, with pages on it or not */ {
			uint8_t v = u8(&in);

			TRACE("remove device %s %d\n", v & 1 ? "sim" : "fdev", v / 2 % 2);
			if (v & 1) {
				r = uhmm_sim_destroy(W.sim[v / 2 % NSIM]);
				ENSURE(r >= 0);
				W.sim[v / 2 % NSIM] = NULL;
			} else if (W.fdev[v / 2 % NFDEV]) {
				struct fdev *f = W.fdev[v / 2 % NFDEV];

				ENSURE(uhmm_devmem_remove(f->dm) >= 0);
				munmap(f->pool, FDEV_PAGES * PG);
				free(f);
				W.fdev[v / 2 % NFDEV] = NULL;
			}
			break;
		}
		case 19:
			fdev_add(&in, u8(&in) % NFDEV);
			break;
		case 20:
			op_raw_migrate(&in);
			break;
		case 21:
			op_range_fault(&in);
			break;
		case 22:
			op_open_close(&in);
			break;
		default:
			null_calls(&in);
			break;
		}
	}
	world_close(&in);
	/* Every descriptor uhmm opened is closed again. */
	ENSURE(count_fds() == fds0);
	return 0;
}
