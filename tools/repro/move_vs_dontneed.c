/* SPDX-License-Identifier: MIT */
/*
 * move_vs_dontneed.c - a kernel livelock, without uhmm: UFFDIO_MOVE of
 * anonymous pages while another thread discards (MADV_DONTNEED) the source.
 *
 * Thread 1 fills 4 pages of A (UFFDIO_COPY), moves them to S (UFFDIO_MOVE,
 * holes allowed) and discards S, in a loop; thread 2 discards A in a loop.
 * On Linux 6.18.44 thread 1 stops within a second or two inside one
 * UFFDIO_MOVE (perf: spinning in move_pages_ptes) and never returns, even
 * after thread 2 stops. Only moves with UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES do
 * this: the same loop without the mode ran 10 s (over 400,000 moves) three
 * times out of three. uhmm used the mode and hung the same way
 * (tests/events.c discard_beside_migrations_*); it now moves only pages that
 * hold data, without it.
 *
 *   cc -O1 -pthread -o move_vs_dontneed tools/repro/move_vs_dontneed.c
 *   ./move_vs_dontneed      # root, or vm.unprivileged_userfaultfd=1
 * Exit 0: no hang in 10 s; 3: the mover is stuck; 1: no userfaultfd/MOVE.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef UFFDIO_MOVE
struct uffdio_move {
	__u64 dst, src, len, mode;
	__s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#define UFFD_FEATURE_MOVE (1 << 16)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES (1ULL << 1)
#endif

#define PG 4096UL
#define N 4

static char *a, *s, src[PG];
static int uffd;
static atomic_long moves;
static atomic_int stop, stop_discards;

static void *mover(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		struct uffdio_copy c = { .dst = (unsigned long)a, .src = (unsigned long)src,
					 .len = N * PG };
		struct uffdio_move m = { .dst = (unsigned long)s, .src = (unsigned long)a,
					 .len = N * PG, .mode = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES };

		ioctl(uffd, UFFDIO_COPY, &c);
		ioctl(uffd, UFFDIO_MOVE, &m);
		madvise(s, N * PG, MADV_DONTNEED);
		atomic_fetch_add(&moves, 1);
	}
	return NULL;
}

static void *discarder(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop) && !atomic_load(&stop_discards))
		madvise(a, N * PG, MADV_DONTNEED);
	return NULL;
}

int main(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_MOVE };
	struct uffdio_register r = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	pthread_t t1, t2;
	long last = -1;

	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || !(api.features & UFFD_FEATURE_MOVE)) {
		perror("userfaultfd with UFFD_FEATURE_MOVE");
		return 1;
	}
	a = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	r.range.start = (unsigned long)a;
	r.range.len = N * PG;
	if (ioctl(uffd, UFFDIO_REGISTER, &r))
		return perror("register"), 1;
	r.range.start = (unsigned long)s;
	if (ioctl(uffd, UFFDIO_REGISTER, &r))
		return perror("register"), 1;
	memset(src, 0x5a, PG);
	pthread_create(&t1, NULL, mover, NULL);
	pthread_create(&t2, NULL, discarder, NULL);
	for (int sec = 1; sec <= 10; sec++) {
		long m;

		sleep(1);
		m = atomic_load(&moves);
		printf("%2d s: %ld moves\n", sec, m);
		if (m == last) {
			atomic_store(&stop_discards, 1);
			sleep(3);
			printf("the mover is stuck inside UFFDIO_MOVE%s\n",
			       atomic_load(&moves) == m ? ", and stays stuck with nobody discarding" :
							  " while discards run");
			return 3; /* the stuck thread cannot be joined */
		}
		last = m;
	}
	atomic_store(&stop, 1);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	printf("no hang in 10 s\n");
	return 0;
}
