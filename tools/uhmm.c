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

/*
 * Each userfaultfd feature uhmm uses: what it is for, what is lost without it,
 * and the kernel that brings it (the fix; EVENT_FORK's depends on the mode).
 */
static const struct {
	uint64_t bit;
	const char *what;
	const char *lost;
	const char *kernel;
} feats[] = {
	{ UHMM_FEAT_MISSING, "missing-page faults: the CPU fault path",
	  "migration to a device is refused", "Linux 4.3 or newer with CONFIG_USERFAULTFD=y" },
	{ UHMM_FEAT_MOVE, "UFFDIO_MOVE (6.8+): atomic, zero-copy take-away from the CPU",
	  "migration to a device is refused", "Linux 6.8 or newer (UFFDIO_MOVE)" },
	{ UHMM_FEAT_POISON, "UFFDIO_POISON (6.6+): SIGBUS for pages a failed device held",
	  "migration to a device is refused", "Linux 6.6 or newer (UFFDIO_POISON)" },
	{ UHMM_FEAT_EVENT_UNMAP, "munmap events: device pages of unmapped memory are freed",
	  "migration to a device is refused", "Linux 4.11 or newer (UFFD_FEATURE_EVENT_UNMAP)" },
	{ UHMM_FEAT_EVENT_REMOVE, "MADV_DONTNEED events: discarded pages read zeros",
	  "migration to a device is refused", "Linux 4.11 or newer (UFFD_FEATURE_EVENT_REMOVE)" },
	{ UHMM_FEAT_EVENT_REMAP, "mremap events: device pages follow moved memory",
	  "migration to a device is refused", "Linux 4.11 or newer (UFFD_FEATURE_EVENT_REMAP)" },
	{ UHMM_FEAT_EVENT_FORK, "fork events: device pages stay put at fork",
	  "device pages come home before every fork", NULL },
	{ UHMM_FEAT_WP, "write-protect faults: read duplication (uhmm_duplicate, READ_MOSTLY)",
	  "no read duplication: read-mostly memory is mapped in place",
	  "Linux 5.7 or newer (WP on anonymous memory)" },
	{ UHMM_FEAT_THREAD_ID, "the faulting thread's id", "faults do not name their thread",
	  "Linux 4.14 or newer (UFFD_FEATURE_THREAD_ID)" },
	{ UHMM_FEAT_SIGBUS, "faults as SIGBUS in the faulting thread (signal mode)",
	  "no signal mode", "Linux 4.14 or newer (UFFD_FEATURE_SIGBUS)" },
};

#define NFEATS (sizeof(feats) / sizeof(feats[0]))

#define FIX_PRIVILEGE                                                                  \
	"sysctl vm.unprivileged_userfaultfd=1, or run as root / with CAP_SYS_PTRACE, " \
	"or give access to /dev/userfaultfd (6.1+)"

struct problem {
	char problem[128];
	const char *fix;
};

/* The word in brackets of a THP sysfs file ("always [madvise] never"), or NULL. */
static const char *thp_mode(const char *file, char *buf, size_t sz)
{
	FILE *f = fopen(file, "r");
	char line[256], *a, *b;

	if (!f)
		return NULL;
	a = fgets(line, sizeof(line), f);
	fclose(f);
	if (!a || !(a = strchr(line, '[')) || !(b = strchr(a, ']')))
		return NULL;
	*b = 0;
	snprintf(buf, sz, "%s", a + 1);
	return buf;
}

static const char *thp_meaning(const char *enabled)
{
	if (!enabled)
		return "not available (a kernel without CONFIG_TRANSPARENT_HUGEPAGE)";
	if (!strcmp(enabled, "always"))
		return "fresh memory gets 2 MiB pages on first touch";
	if (!strcmp(enabled, "madvise"))
		return "2 MiB pages only where MADV_HUGEPAGE asks";
	if (!strcmp(enabled, "never"))
		return "off: 4 KiB pages everywhere";
	return "";
}

static void print_thp(const char *enabled, const char *defrag)
{
	if (enabled)
		printf("thp         %s (defrag %s): %s\n", enabled, defrag ? defrag : "?",
		       thp_meaning(enabled));
	else
		printf("thp         %s\n", thp_meaning(enabled));
	printf("            the kernel's own first touch of fresh memory is faster with THP;\n"
	       "            uhmm's managed ranges are served in 4 KiB pages by userfaultfd\n");
}

/* A JSON string: @s quoted, or null; the texts here need only " and \ escaped. */
static void json_str(const char *s)
{
	if (!s) {
		fputs("null", stdout);
		return;
	}
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		putchar(*s);
	}
	putchar('"');
}

static void json_problems(const struct problem *p, int n)
{
	printf("\"problems\":[");
	for (int i = 0; i < n; i++) {
		printf("%s{\"problem\":", i ? "," : "");
		json_str(p[i].problem);
		printf(",\"fix\":");
		json_str(p[i].fix);
		putchar('}');
	}
	putchar(']');
}

static void print_problems(const struct problem *p, int n)
{
	if (!n) {
		printf("problems    none\n");
		return;
	}
	printf("problems    %d\n", n);
	for (int i = 0; i < n; i++)
		printf("  %s\n    fix: %s\n", p[i].problem, p[i].fix);
}

/* Why userfaultfd could not be opened (@err from uhmm_open), and its fix. */
static void open_problem(struct problem *p, int err)
{
	switch (-err) {
	case EPERM:
		snprintf(p->problem, sizeof(p->problem), "userfaultfd is not permitted");
		p->fix = FIX_PRIVILEGE "; a seccomp profile may block it too";
		break;
	case ENOSYS:
		snprintf(p->problem, sizeof(p->problem), "the kernel has no userfaultfd");
		p->fix = "a kernel built with CONFIG_USERFAULTFD=y, Linux 6.8 or newer";
		break;
	default:
		snprintf(p->problem, sizeof(p->problem), "userfaultfd cannot be opened (%s)",
			 strerror(-err));
		p->fix = uhmm_strerror(err);
		break;
	}
}

static int cmd_info(int argc, char **argv)
{
	struct uhmm *h = NULL;
	struct utsname u;
	struct problem pr[NFEATS + 2];
	char en_buf[32], df_buf[32];
	const char *thp_en, *thp_df;
	bool json = argc > 1 && !strcmp(argv[1], "--json");
	uint64_t f;
	int ret, can, np = 0;

	if (argc > 1 && !json) {
		printf("usage: uhmm info [--json]\n"
		       "  Kernel, userfaultfd features, privilege mode, transparent huge pages,\n"
		       "  and for each problem found, its fix. Exits 1 when pages could not leave\n"
		       "  the CPU safely.\n");
		return strcmp(argv[1], "--help") ? 2 : 0;
	}
	uname(&u);
	thp_en = thp_mode("/sys/kernel/mm/transparent_hugepage/enabled", en_buf, sizeof(en_buf));
	thp_df = thp_mode("/sys/kernel/mm/transparent_hugepage/defrag", df_buf, sizeof(df_buf));
	ret = uhmm_open(&h, NULL);
	if (ret) {
		open_problem(&pr[0], ret);
		if (json) {
			printf("{\"kernel\":");
			json_str(u.release);
			printf(",\"error\":");
			json_str(uhmm_strerror(ret));
			printf(",\"thp\":{\"enabled\":");
			json_str(thp_en);
			printf(",\"defrag\":");
			json_str(thp_df);
			printf("},");
			json_problems(pr, 1);
			printf("}\n");
		} else {
			printf("kernel      %s\nmode        userfaultfd unavailable\n", u.release);
			print_thp(thp_en, thp_df);
			print_problems(pr, 1);
		}
		return 1;
	}
	f = uhmm_features(h);
	can = uhmm_can_migrate(h);

	if (!(f & UHMM_FEAT_KERNEL_FAULTS)) {
		snprintf(pr[np].problem, sizeof(pr[np].problem),
			 "user-mode-only: system calls on device-resident memory get EFAULT");
		pr[np++].fix = FIX_PRIVILEGE;
	}
	for (size_t i = 0; i < NFEATS; i++) {
		if (f & feats[i].bit)
			continue;
		snprintf(pr[np].problem, sizeof(pr[np].problem), "%s missing: %s",
			 uhmm_feature_name(feats[i].bit), feats[i].lost);
		pr[np].fix = feats[i].kernel;
		/* Fork events are in force in thread mode only, and need CAP_SYS_PTRACE. */
		if (feats[i].bit == UHMM_FEAT_EVENT_FORK)
			pr[np].fix = uhmm_fault_mode(h) == UHMM_FAULT_SIGNAL ?
				"run as root or with CAP_SYS_PTRACE, in thread mode (the default "
				"then, or UHMM_FAULT_MODE=thread): fork events need both" :
				"run as root or with CAP_SYS_PTRACE: fork events need it";
		np++;
	}

	if (json) {
		printf("{\"kernel\":");
		json_str(u.release);
		printf(",\"mode\":\"%s\",\"can_migrate\":%s,\"features\":{",
		       f & UHMM_FEAT_KERNEL_FAULTS ? "full" : "user-mode-only", can ? "false" : "true");
		for (size_t i = 0; i < NFEATS; i++)
			printf("%s\"%s\":%s", i ? "," : "", uhmm_feature_name(feats[i].bit),
			       f & feats[i].bit ? "true" : "false");
		printf("},\"drivers\":[\"sim\"],\"thp\":{\"enabled\":");
		json_str(thp_en);
		printf(",\"defrag\":");
		json_str(thp_df);
		printf("},");
		json_problems(pr, np);
		printf("}\n");
	} else {
		printf("kernel      %s\n", u.release);
		printf("mode        %s\n", f & UHMM_FEAT_KERNEL_FAULTS ?
			"full: system calls on device-resident memory are served too" :
			"user-mode-only: a system call that reads or writes device-resident memory "
			"gets EFAULT");
		printf("features\n");
		for (size_t i = 0; i < NFEATS; i++)
			printf("  %-13s %-8s %s\n", uhmm_feature_name(feats[i].bit),
			       f & feats[i].bit ? "yes" : "MISSING", feats[i].what);
		print_thp(thp_en, thp_df);
		printf("drivers     sim (built in)\n");
		printf("migration   %s\n",
		       can ? "refused: no page may leave the CPU without a way home (see the problems)" :
			     "ready");
		print_problems(pr, np);
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
		   "  info   kernel features, privilege mode, huge pages, and what to fix\n"
		   "  demo   kernels on the sim device compute a stencil (pages migrate to the\n"
		   "         device on touch), the CPU reads the result (pages come home on\n"
		   "         touch) and checks it against a CPU-only computation\n"
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
