/* SPDX-License-Identifier: MIT */
/* uhmm - the command line: info, demo, bench, stat. Uses only the public headers. */
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

/* tools/bench.c, tools/stat.c */
int cmd_bench(int argc, char **argv);
int cmd_stat(int argc, char **argv);

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
	{ UHMM_FEAT_EVENT_FORK,
	  "fork events: device pages stay put at fork (else they come home first; thread "
	  "mode, CAP_SYS_PTRACE)" },
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
	printf("usage: uhmm demo [--size MiB] [--device MiB] [--threads N] [--prefetch]\n"
	       "  The CPU fills an input array of --size MiB (default 256); kernels on the sim\n"
	       "  device compute a 3-point stencil into an output array of the same size (their\n"
	       "  first touches migrate the pages to the device); the CPU then reads the output\n"
	       "  (pages come home on touch), builds a histogram and checks every value against\n"
	       "  a CPU-only computation. --device MiB of device memory (default: twice the\n"
	       "  size; less oversubscribes it, and the least recently used pages are evicted),\n"
	       "  --threads device threads (default 2), --prefetch moves the input to the device\n"
	       "  before the kernel runs. Exits 1 on a wrong result, 77 where migration is not\n"
	       "  possible here.\n");
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

#define BLOCK 512 /* u64 per kernel index: one page */

struct stencil {
	const uint64_t *in;
	uint64_t *out;
	size_t n;
};

static uint64_t stencil_at(uint64_t l, uint64_t c, uint64_t r)
{
	return (l >> 2) + (c >> 1) + (r >> 2);
}

/* A device kernel: one page of output from a page of input and its two neighbours. */
static void k_stencil(struct uhmm_sim_ctx *ctx, unsigned long b, void *arg)
{
	struct stencil *s = arg;
	uint64_t in[BLOCK + 2], out[BLOCK];
	size_t first = b * BLOCK, n = BLOCK;

	if (first + n > s->n)
		n = s->n - first;
	in[0] = first ? uhmm_sim_load_u64(ctx, &s->in[first - 1]) : 0;
	in[n + 1] = first + n < s->n ? uhmm_sim_load_u64(ctx, &s->in[first + n]) : 0;
	if (uhmm_sim_load(ctx, &in[1], &s->in[first], n * sizeof(uint64_t)))
		return;
	for (size_t i = 0; i < n; i++)
		out[i] = stencil_at(in[i], in[i + 1], in[i + 2]);
	uhmm_sim_store(ctx, &s->out[first], out, n * sizeof(uint64_t));
}

/*
 * The demo's workload, shared with `uhmm stat` (tools/stat.c) and `uhmm bench`
 * (tools/bench.c), which declare these functions again: keep them in step.
 */
void demo_fill(uint64_t *in, size_t n);
int demo_launch(struct uhmm_sim *sim, const uint64_t *in, uint64_t *out, size_t n);
void demo_stencil_cpu(const uint64_t *in, uint64_t *out, size_t n);
size_t demo_check(const uint64_t *in, const uint64_t *out, size_t n);
int demo_workload(struct uhmm *h, struct uhmm_sim *sim, uint64_t *in, uint64_t *out, size_t n,
		  bool prefetch, void (*phase)(const char *), double secs[3], int *prefetched,
		  size_t *bad, const char **what);

/* The CPU fills the input (on managed memory: first touches). */
void demo_fill(uint64_t *in, size_t n)
{
	for (size_t i = 0; i < n; i++)
		in[i] = mix(i);
}

/* Device kernels compute the stencil of @in into @out; 0 or the launch's error. */
int demo_launch(struct uhmm_sim *sim, const uint64_t *in, uint64_t *out, size_t n)
{
	struct stencil s = { .in = in, .out = out, .n = n };

	return uhmm_sim_launch(sim, k_stencil, (n + BLOCK - 1) / BLOCK, &s);
}

/* The same stencil on the CPU, over plain memory (the explicit-copy floor of bench). */
void demo_stencil_cpu(const uint64_t *in, uint64_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = stencil_at(i ? in[i - 1] : 0, in[i], i + 1 < n ? in[i + 1] : 0);
}

/*
 * The CPU reads the output, builds its histogram and checks every value against
 * a CPU-only computation, then checks the input: the number of wrong values.
 */
size_t demo_check(const uint64_t *in, const uint64_t *out, size_t n)
{
	uint64_t hist[256] = { 0 }, total = 0;
	size_t bad = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t want = stencil_at(i ? mix(i - 1) : 0, mix(i), i + 1 < n ? mix(i + 1) : 0);

		hist[out[i] & 255]++;
		if (out[i] != want)
			bad++;
	}
	for (size_t i = 0; i < n; i++)
		if (in[i] != mix(i))
			bad++;
	for (int i = 0; i < 256; i++)
		total += hist[i];
	return bad + (total != n);
}

/*
 * The workload after the fill: [prefetch the input to the device,] device kernels
 * compute the stencil, the CPU reads and checks the output (pages come home on
 * touch). @secs: the seconds of each of those three phases. Return 0 (then *@bad
 * says whether the result is right), or a negative errno with *@what naming the step.
 */
int demo_workload(struct uhmm *h, struct uhmm_sim *sim, uint64_t *in, uint64_t *out, size_t n,
		  bool prefetch, void (*phase)(const char *), double secs[3], int *prefetched,
		  size_t *bad, const char **what)
{
	size_t len = n * sizeof(uint64_t);
	double t0;
	int ret;

	secs[0] = secs[1] = secs[2] = 0;
	*prefetched = 0;
	*bad = 0;
	if (prefetch) {
		if (phase)
			phase("prefetching the input to the device");
		t0 = now_s();
		ret = uhmm_prefetch(h, in, len, uhmm_sim_devmem(sim));
		secs[0] = now_s() - t0;
		if (ret < 0) {
			*what = "prefetch";
			return ret;
		}
		*prefetched = ret;
	}
	if (phase)
		phase("device kernels compute the stencil");
	t0 = now_s();
	ret = demo_launch(sim, in, out, n);
	secs[1] = now_s() - t0;
	if (ret) {
		*what = "device kernel";
		return ret;
	}
	if (phase)
		phase("the CPU reads the output and checks it");
	t0 = now_s();
	*bad = demo_check(in, out, n);
	secs[2] = now_s() - t0;
	return 0;
}

static bool progress;

static void phase(const char *what)
{
	if (progress)
		fprintf(stderr, "\r\033[K  %s ...", what);
}

static int cmd_demo(int argc, char **argv)
{
	static const struct option lo[] = { { "size", required_argument, 0, 's' },
					    { "device", required_argument, 0, 'd' },
					    { "threads", required_argument, 0, 't' },
					    { "prefetch", no_argument, 0, 'p' },
					    { "help", no_argument, 0, 'h' },
					    { 0, 0, 0, 0 } };
	unsigned long mib = 256, dev_mib = 0, threads = 2;
	bool prefetch = false;
	struct uhmm *h = NULL;
	struct uhmm_sim *sim = NULL;
	struct uhmm_stats st = { .sz = sizeof(st) }, st0;
	struct uhmm_sim_stats ss = { .sz = sizeof(ss) };
	struct uhmm_devmem_stats ds = { .sz = sizeof(ds) };
	uint64_t *in = NULL, *out = NULL;
	size_t len, n, bad = 0;
	double t0, t_fill, secs[3];
	const char *what = "";
	int c, ret, pf = 0, status = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "s:d:t:ph", lo, NULL)) != -1) {
		switch (c) {
		case 's': mib = strtoul(optarg, NULL, 0); break;
		case 'd': dev_mib = strtoul(optarg, NULL, 0); break;
		case 't': threads = strtoul(optarg, NULL, 0); break;
		case 'p': prefetch = true; break;
		case 'h': demo_usage(); return 0;
		default: demo_usage(); return 2;
		}
	}
	if (!mib || mib > (1UL << 20) || !threads || threads > 64) {
		demo_usage();
		return 2;
	}
	if (!dev_mib)
		dev_mib = 2 * mib;
	progress = isatty(STDERR_FILENO);
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
	n = len / sizeof(uint64_t);
	UHMM_OPTS(uhmm_sim_opts, so, .npages = (dev_mib << 20) / UHMM_PAGE_SIZE,
		  .threads = (unsigned int)threads);
	ret = uhmm_sim_create(h, &so, &sim);
	if (!ret && dev_mib < 2 * mib)
		ret = uhmm_devmem_set_evict(uhmm_sim_devmem(sim), &uhmm_evict_lru);
	if (!ret)
		ret = uhmm_alloc(h, len, (void **)&in);
	if (!ret)
		ret = uhmm_alloc(h, len, (void **)&out);
	if (ret) {
		fprintf(stderr, "uhmm demo: %s\n", uhmm_strerror(ret));
		status = 1;
		goto out;
	}

	printf("uhmm demo: %lu MiB in, %lu MiB out, %lu MiB of sim device memory%s, %lu device "
	       "threads, %s mode\n",
	       mib, mib, dev_mib, dev_mib < 2 * mib ? " (oversubscribed: LRU eviction)" : "",
	       threads, uhmm_fault_mode(h) == UHMM_FAULT_SIGNAL ? "signal" : "thread");
	phase("the CPU fills the input");
	t0 = now_s();
	demo_fill(in, n);
	t_fill = now_s() - t0;

	uhmm_stats(h, &st0);
	ret = demo_workload(h, sim, in, out, n, prefetch, phase, secs, &pf, &bad, &what);
	if (ret) {
		fprintf(stderr, "\nuhmm demo: %s: %s\n", what, uhmm_strerror(ret));
		status = 1;
		goto out;
	}
	uhmm_sim_stats(sim, &ss);
	uhmm_stats(h, &st);
	uhmm_devmem_stats(uhmm_sim_devmem(sim), &ds);
	if (progress)
		fprintf(stderr, "\r\033[K");

	printf("\n%-34s %10s %10s %9s %9s\n", "phase", "pages", "MiB", "seconds", "GB/s");
	printf("%-34s %10zu %10lu %9.3f %9.2f\n", "CPU fills the input (first touch)",
	       len / UHMM_PAGE_SIZE, mib, t_fill, len / t_fill / 1e9);
	if (prefetch)
		printf("%-34s %10d %10.1f %9.3f %9.2f\n", "prefetch input to the device", pf,
		       pf * 4096.0 / (1 << 20), secs[0], pf * 4096.0 / secs[0] / 1e9);
	printf("%-34s %10llu %10.1f %9.3f %9.2f\n", "device kernels (migrate on touch)",
	       (unsigned long long)ss.fault_migrated, ss.fault_migrated * 4096.0 / (1 << 20),
	       secs[1], 2.0 * len / secs[1] / 1e9);
	printf("%-34s %10llu %10.1f %9.3f %9.2f\n", "CPU reads the output (fault-back)",
	       (unsigned long long)(st.pages_home - st0.pages_home),
	       (st.pages_home - st0.pages_home) * 4096.0 / (1 << 20), secs[2],
	       2.0 * len / secs[2] / 1e9);
	printf("\ndevice: %llu device faults, %llu pages migrated by them, %llu mapped in place, "
	       "%llu evicted\n",
	       (unsigned long long)ss.device_faults, (unsigned long long)ss.fault_migrated,
	       (unsigned long long)ss.fault_mapped, (unsigned long long)ds.evictions);
	printf("cpu:    %llu faults (%llu on device pages, %llu zero fills), %llu pages home\n",
	       (unsigned long long)(st.faults - st0.faults),
	       (unsigned long long)(st.faults_device - st0.faults_device),
	       (unsigned long long)(st.zero_fills - st0.zero_fills),
	       (unsigned long long)(st.pages_home - st0.pages_home));
	printf("result: %s (%zu outputs checked against the CPU, histogram of %zu values)\n",
	       bad ? "WRONG" : "correct", n, n);
	status = bad ? 1 : 0;
out:
	if (in)
		uhmm_free(h, in, len);
	if (out)
		uhmm_free(h, out, len);
	uhmm_sim_destroy(sim);
	uhmm_close(h);
	return status;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: uhmm <command> [options]\n\n"
		   "commands:\n"
		   "  info   kernel features, privilege mode, and what to fix\n"
		   "  demo   migrate memory to the sim device, compute on the CPU, verify\n"
		   "  bench  measure each operation beside its floor, as a ratio\n"
		   "  stat   run the demo workload and watch the live counters\n\n"
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
	if (!strcmp(argv[1], "stat"))
		return cmd_stat(argc - 1, argv + 1);
	fprintf(stderr, "uhmm: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
