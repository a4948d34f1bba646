/* SPDX-License-Identifier: MIT */
/* uhmm - the command line: info, demo, bench. Uses only the public headers. */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm_sim.h"

#define EXIT_SKIP 77

/* tools/bench.c */
int cmd_bench(int argc, char **argv);

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const struct {
	uint64_t bit;
	const char *what;
} feats[] = {
	{ UHMM_FEAT_MISSING, "missing-page faults: the CPU fault path" },
	{ UHMM_FEAT_MOVE, "UFFDIO_MOVE (6.8+): atomic, zero-copy take-away from the CPU" },
	{ UHMM_FEAT_POISON, "UFFDIO_POISON (6.6+): SIGBUS for pages a failed device held" },
	{ UHMM_FEAT_EVENT_UNMAP, "munmap events: device pages of unmapped memory are freed" },
	{ UHMM_FEAT_EVENT_REMOVE, "MADV_DONTNEED events: discarded pages read zeros" },
	{ UHMM_FEAT_EVENT_REMAP, "mremap events: device pages follow moved memory" },
	{ UHMM_FEAT_EVENT_FORK, "fork events: children's faults on device pages" },
	{ UHMM_FEAT_WP, "write-protect faults" },
	{ UHMM_FEAT_THREAD_ID, "the faulting thread's id" },
	{ UHMM_FEAT_SIGBUS, "faults as SIGBUS in the faulting thread (signal mode)" },
};

static int cmd_info(int argc, char **argv)
{
	struct uhmm *h = NULL;
	struct utsname u;
	bool json = argc > 1 && !strcmp(argv[1], "--json");
	uint64_t f;
	int ret, can;

	if (argc > 1 && !json) {
		printf("usage: uhmm info [--json]\n"
		       "  Kernel, userfaultfd features, privilege mode, and what to fix.\n"
		       "  Exits 1 when pages could not leave the CPU safely.\n");
		return strcmp(argv[1], "--help") ? 2 : 0;
	}
	uname(&u);
	ret = uhmm_open(&h, NULL);
	if (ret) {
		if (json)
			printf("{\"kernel\":\"%s\",\"error\":\"%s\"}\n", u.release, uhmm_strerror(ret));
		else
			printf("kernel      %s\nuserfaultfd unavailable: %s\n", u.release,
			       uhmm_strerror(ret));
		return 1;
	}
	f = uhmm_features(h);
	can = uhmm_can_migrate(h);
	if (json) {
		printf("{\"kernel\":\"%s\",\"mode\":\"%s\",\"can_migrate\":%s,\"features\":{", u.release,
		       f & UHMM_FEAT_KERNEL_FAULTS ? "full" : "user-mode-only", can ? "false" : "true");
		for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
			printf("%s\"%s\":%s", i ? "," : "", uhmm_feature_name(feats[i].bit),
			       f & feats[i].bit ? "true" : "false");
		printf("},\"drivers\":[\"sim\"]}\n");
	} else {
		printf("kernel      %s\n", u.release);
		printf("mode        %s\n", f & UHMM_FEAT_KERNEL_FAULTS ?
			"full: system calls on device-resident memory are served too" :
			"user-mode-only: a system call that reads or writes device-resident memory "
			"gets EFAULT\n            (run as root, grant /dev/userfaultfd, or set "
			"vm.unprivileged_userfaultfd=1)");
		printf("features\n");
		for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
			printf("  %-13s %-8s %s\n", uhmm_feature_name(feats[i].bit),
			       f & feats[i].bit ? "yes" : "MISSING", feats[i].what);
		printf("drivers     sim (built in)\n");
		printf("migration   %s\n", can ? uhmm_strerror(can) : "ready");
	}
	uhmm_close(h);
	return can ? 1 : 0;
}

static void demo_usage(void)
{
	printf("usage: uhmm demo [--size MiB] [--device MiB]\n"
	       "  Fills --size MiB (default 256) on the CPU, migrates it to the sim device\n"
	       "  (--device MiB of device memory, default: the size), computes a histogram on\n"
	       "  the CPU (pages come home on touch), checks it against the expected result.\n");
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

static int cmd_demo(int argc, char **argv)
{
	static const struct option lo[] = { { "size", required_argument, 0, 's' },
					    { "device", required_argument, 0, 'd' },
					    { "help", no_argument, 0, 'h' },
					    { 0, 0, 0, 0 } };
	unsigned long mib = 256, dev_mib = 0;
	struct uhmm *h = NULL;
	struct uhmm_sim *sim = NULL;
	struct uhmm_stats st = { .sz = sizeof(st) };
	uint64_t *data, hist[256] = { 0 }, want[256] = { 0 };
	size_t len, nwords, i;
	double t0, t_fill, t_out, t_cpu;
	int c, ret, moved, bad = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "s:d:h", lo, NULL)) != -1) {
		switch (c) {
		case 's': mib = strtoul(optarg, NULL, 0); break;
		case 'd': dev_mib = strtoul(optarg, NULL, 0); break;
		case 'h': demo_usage(); return 0;
		default: demo_usage(); return 2;
		}
	}
	if (!mib) {
		demo_usage();
		return 2;
	}
	if (!dev_mib)
		dev_mib = mib;
	ret = uhmm_open(&h, NULL);
	if (ret) {
		fprintf(stderr, "uhmm demo: skipped: %s\n", uhmm_strerror(ret));
		return EXIT_SKIP;
	}
	ret = uhmm_can_migrate(h);
	if (ret) {
		fprintf(stderr, "uhmm demo: skipped: %s\n", uhmm_strerror(ret));
		uhmm_close(h);
		return EXIT_SKIP;
	}
	len = mib << 20;
	nwords = len / sizeof(uint64_t);
	UHMM_OPTS(uhmm_sim_opts, so, .npages = (dev_mib << 20) / UHMM_PAGE_SIZE);
	ret = uhmm_sim_create(h, &so, &sim);
	if (!ret)
		ret = uhmm_alloc(h, len, (void **)&data);
	if (ret) {
		fprintf(stderr, "uhmm demo: %s\n", uhmm_strerror(ret));
		uhmm_sim_destroy(sim);
		uhmm_close(h);
		return 1;
	}

	printf("uhmm demo: %lu MiB on the CPU, %lu MiB of sim device memory\n", mib, dev_mib);
	t0 = now_s();
	for (i = 0; i < nwords; i++) {
		data[i] = mix(i);
		want[data[i] & 255]++;
	}
	t_fill = now_s() - t0;

	t0 = now_s();
	moved = uhmm_migrate_to_device(uhmm_sim_devmem(sim), data, len);
	t_out = now_s() - t0;
	if (moved < 0) {
		fprintf(stderr, "uhmm demo: migration failed: %s\n", uhmm_strerror(moved));
		bad = 1;
		goto out;
	}

	/* The CPU computes over device-resident data: each page comes home on touch. */
	t0 = now_s();
	for (i = 0; i < nwords; i++) {
		hist[data[i] & 255]++;
		if (data[i] != mix(i))
			bad++;
	}
	t_cpu = now_s() - t0;
	for (i = 0; i < 256; i++)
		if (hist[i] != want[i])
			bad++;
	uhmm_stats(h, &st);

	printf("\n%-28s %12s %12s %10s\n", "phase", "pages", "MiB", "seconds");
	printf("%-28s %12zu %12lu %10.3f\n", "CPU fills (first touch)", len / UHMM_PAGE_SIZE, mib,
	       t_fill);
	printf("%-28s %12d %12.1f %10.3f\n", "migrate to sim device", moved,
	       (double)moved * UHMM_PAGE_SIZE / (1 << 20), t_out);
	printf("%-28s %12llu %12.1f %10.3f\n", "CPU histogram (fault-back)",
	       (unsigned long long)st.pages_home, (double)st.pages_home * UHMM_PAGE_SIZE / (1 << 20),
	       t_cpu);
	printf("\nfaults %llu (on device pages %llu, zero fills %llu), pages out %llu, home %llu\n",
	       (unsigned long long)st.faults, (unsigned long long)st.faults_device,
	       (unsigned long long)st.zero_fills, (unsigned long long)st.pages_out,
	       (unsigned long long)st.pages_home);
	printf("result: %s (%zu words and 256 histogram bins checked)\n", bad ? "WRONG" : "correct",
	       nwords);
out:
	uhmm_free(h, data, len);
	uhmm_sim_destroy(sim);
	uhmm_close(h);
	return bad ? 1 : 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: uhmm <command> [options]\n\n"
		   "commands:\n"
		   "  info   kernel features, privilege mode, and what to fix\n"
		   "  demo   migrate memory to the sim device, compute on the CPU, verify\n"
		   "  bench  measure each operation beside its floor, as a ratio\n\n"
		   "uhmm <command> --help for its options.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "info"))
		return cmd_info(argc - 1, argv + 1);
	if (!strcmp(argv[1], "demo"))
		return cmd_demo(argc - 1, argv + 1);
	if (!strcmp(argv[1], "bench"))
		return cmd_bench(argc - 1, argv + 1);
	fprintf(stderr, "uhmm: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
