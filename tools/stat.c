/* SPDX-License-Identifier: MIT */
/*
 * stat.c - `uhmm stat`: the demo's stencil workload runs in a background thread
 * while the main thread shows the live counters of the handle (uhmm_stats), of
 * the device memory (uhmm_devmem_stats), of the sim device (uhmm_sim_stats) and
 * of the workload's two ranges (uhmm_range_stats), with rates per second. On a terminal the table is redrawn in place every
 * --interval ms; otherwise one final table is printed, so that it can be tested.
 * Uses only the public headers.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm_sim.h"

#define EXIT_SKIP 77

/* The entry point, called by tools/uhmm.c (which declares it too). */
int cmd_stat(int argc, char **argv);

/* The demo's workload, defined in tools/uhmm.c: keep these in step with it. */
void demo_fill(uint64_t *in, size_t n);
int demo_workload(struct uhmm *h, struct uhmm_sim *sim, uint64_t *in, uint64_t *out, size_t n,
		  bool prefetch, void (*phase)(const char *), double secs[3], int *prefetched,
		  size_t *bad, const char **what);

struct job {
	struct uhmm *h;
	struct uhmm_sim *sim;
	uint64_t *in, *out;
	size_t n;
	bool prefetch;
	/* Results, read after the join. */
	int ret;
	const char *what;
	size_t bad;
	int prefetched;
	double secs[3];
	atomic_bool done;
};

/* What the workload is doing now, for the table's title. */
static _Atomic(const char *) cur_phase = "the CPU fills the input";

static void set_phase(const char *what)
{
	atomic_store(&cur_phase, what);
}

static void *job_main(void *arg)
{
	struct job *j = arg;

	set_phase("the CPU fills the input");
	demo_fill(j->in, j->n);
	j->ret = demo_workload(j->h, j->sim, j->in, j->out, j->n, j->prefetch, set_phase, j->secs,
			       &j->prefetched, &j->bad, &j->what);
	set_phase("done");
	atomic_store(&j->done, true);
	return NULL;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* One sample of every counter shown, as doubles (bytes as MiB). */
enum {
	C_FAULTS,
	C_FAULTS_DEV,
	C_FAULTS_WORKER,
	C_ZERO,
	C_OUT,
	C_HOME,
	C_RECYCLED,
	C_EVENTS,
	C_DM_FAULTS,
	C_DM_TO,
	C_DM_FROM,
	C_DM_MIB_TO,
	C_DM_MIB_FROM,
	C_DM_PREFETCHED,
	C_DM_EVICTIONS,
	C_DM_THRASH,
	C_DM_DUPS,
	C_SIM_FAULTS,
	C_SIM_MIGRATED,
	C_SIM_MAPPED,
	C_SIM_DUPLICATED,
	/* Per range (uhmm_range_stats): the input, then the output, in this order. */
	C_R_FAULTS,
	C_R_TO,
	C_R_HOME,
	C_R_PREFETCHED,
	C_R_EVICTIONS,
	C_R_N = C_R_EVICTIONS - C_R_FAULTS + 1,
	C_OUT_FAULTS = C_R_FAULTS + C_R_N,
	C_N = C_OUT_FAULTS + C_R_N
};

static const struct {
	const char *group, *name;
	bool mib;
} counters[C_N] = {
	[C_FAULTS] = { "handle", "faults", false },
	[C_FAULTS_DEV] = { "handle", "faults on device pages", false },
	[C_FAULTS_WORKER] = { "handle", "device faults by workers", false },
	[C_ZERO] = { "handle", "zero fills", false },
	[C_OUT] = { "handle", "pages out (to devices)", false },
	[C_HOME] = { "handle", "pages home", false },
	[C_RECYCLED] = { "handle", "pages home, recycled", false },
	[C_EVENTS] = { "handle", "events", false },
	[C_DM_FAULTS] = { "device", "CPU faults on its pages", false },
	[C_DM_TO] = { "device", "pages to it", false },
	[C_DM_FROM] = { "device", "pages from it", false },
	[C_DM_MIB_TO] = { "device", "MiB to it", true },
	[C_DM_MIB_FROM] = { "device", "MiB from it", true },
	[C_DM_PREFETCHED] = { "device", "pages prefetched", false },
	[C_DM_EVICTIONS] = { "device", "evictions", false },
	[C_DM_THRASH] = { "device", "thrash events", false },
	[C_DM_DUPS] = { "device", "read-only copies made", false },
	[C_SIM_FAULTS] = { "sim", "device faults", false },
	[C_SIM_MIGRATED] = { "sim", "pages migrated by them", false },
	[C_SIM_MAPPED] = { "sim", "pages mapped in place", false },
	[C_SIM_DUPLICATED] = { "sim", "pages copied for reads", false },
	[C_R_FAULTS] = { "input", "CPU faults home", false },
	[C_R_TO] = { "input", "pages to devices", false },
	[C_R_HOME] = { "input", "pages home", false },
	[C_R_PREFETCHED] = { "input", "pages prefetched", false },
	[C_R_EVICTIONS] = { "input", "evictions", false },
	[C_OUT_FAULTS + 0] = { "output", "CPU faults home", false },
	[C_OUT_FAULTS + 1] = { "output", "pages to devices", false },
	[C_OUT_FAULTS + 2] = { "output", "pages home", false },
	[C_OUT_FAULTS + 3] = { "output", "pages prefetched", false },
	[C_OUT_FAULTS + 4] = { "output", "evictions", false },
};

/* The counters of the managed range at @addr (all zero if it cannot be read). */
static void sample_range(struct uhmm *h, const void *addr, double *v)
{
	struct uhmm_range_stats rs = { .sz = sizeof(rs) };

	if (uhmm_range_stats(h, addr, &rs))
		memset(&rs, 0, sizeof(rs));
	v[C_R_FAULTS - C_R_FAULTS] = (double)rs.faults;
	v[C_R_TO - C_R_FAULTS] = (double)rs.pages_to_device;
	v[C_R_HOME - C_R_FAULTS] = (double)rs.pages_to_system;
	v[C_R_PREFETCHED - C_R_FAULTS] = (double)rs.prefetched;
	v[C_R_EVICTIONS - C_R_FAULTS] = (double)rs.evictions;
}

static void sample(struct job *j, double v[C_N])
{
	struct uhmm_stats st = { .sz = sizeof(st) };
	struct uhmm_devmem_stats ds = { .sz = sizeof(ds) };
	struct uhmm_sim_stats ss = { .sz = sizeof(ss) };

	uhmm_stats(j->h, &st);
	uhmm_devmem_stats(uhmm_sim_devmem(j->sim), &ds);
	uhmm_sim_stats(j->sim, &ss);
	v[C_FAULTS] = (double)st.faults;
	v[C_FAULTS_DEV] = (double)st.faults_device;
	v[C_FAULTS_WORKER] = (double)st.faults_worker;
	v[C_ZERO] = (double)st.zero_fills;
	v[C_OUT] = (double)st.pages_out;
	v[C_HOME] = (double)st.pages_home;
	v[C_RECYCLED] = (double)st.pages_recycled;
	v[C_EVENTS] = (double)st.events;
	v[C_DM_FAULTS] = (double)ds.faults;
	v[C_DM_TO] = (double)ds.pages_to;
	v[C_DM_FROM] = (double)ds.pages_from;
	v[C_DM_MIB_TO] = (double)ds.bytes_to / (1 << 20);
	v[C_DM_MIB_FROM] = (double)ds.bytes_from / (1 << 20);
	v[C_DM_PREFETCHED] = (double)ds.prefetched;
	v[C_DM_EVICTIONS] = (double)ds.evictions;
	v[C_DM_THRASH] = (double)ds.thrash_events;
	v[C_DM_DUPS] = (double)ds.pages_duplicated;
	v[C_SIM_FAULTS] = (double)ss.device_faults;
	v[C_SIM_MIGRATED] = (double)ss.fault_migrated;
	v[C_SIM_MAPPED] = (double)ss.fault_mapped;
	v[C_SIM_DUPLICATED] = (double)ss.fault_duplicated;
	sample_range(j->h, j->in, v + C_R_FAULTS);
	sample_range(j->h, j->out, v + C_OUT_FAULTS);
}

/*
 * The table: totals, and rates per second over @dt seconds since @prev (the
 * last interval while running; the whole run in the final table).
 */
static void draw(const char *title, const char *status, const double v[C_N],
		 const double prev[C_N], double dt, const char *rate_head)
{
	printf("%s\n%s\n\n", title, status);
	printf("%-7s %-24s %14s %14s\n", "", "counter", "total", rate_head);
	for (int i = 0; i < C_N; i++) {
		double rate = dt > 0 ? (v[i] - prev[i]) / dt : 0;

		if (counters[i].mib)
			printf("%-7s %-24s %14.1f %14.1f\n", counters[i].group, counters[i].name,
			       v[i], rate);
		else
			printf("%-7s %-24s %14.0f %14.0f\n", counters[i].group, counters[i].name,
			       v[i], rate);
	}
	fflush(stdout);
}

static void stat_usage(FILE *f)
{
	fprintf(f, "usage: uhmm stat [--size MiB] [--device MiB] [--threads N] [--prefetch]\n"
		   "                 [--interval ms]\n"
		   "  Runs the demo's stencil workload (see uhmm demo --help; the same options)\n"
		   "  in a background thread and shows the counters of the handle, of the sim\n"
		   "  device's memory, of the sim device and of each of the workload's two\n"
		   "  ranges (input, output), with rates per second. On a\n"
		   "  terminal the table is redrawn every --interval ms (default 200); otherwise\n"
		   "  one final table is printed, its rates averaged over the whole run.\n"
		   "  Exits 1 on a wrong result, 77 where migration is not possible here.\n");
}

static bool parse_ulong(const char *s, unsigned long *v)
{
	char *end;

	errno = 0;
	*v = strtoul(s, &end, 0);
	return !errno && *s && !*end;
}

int cmd_stat(int argc, char **argv)
{
	static const struct option lo[] = { { "size", required_argument, 0, 's' },
					    { "device", required_argument, 0, 'd' },
					    { "threads", required_argument, 0, 't' },
					    { "prefetch", no_argument, 0, 'p' },
					    { "interval", required_argument, 0, 'i' },
					    { "help", no_argument, 0, 'h' },
					    { 0, 0, 0, 0 } };
	unsigned long mib = 256, dev_mib = 0, threads = 2, interval = 200;
	struct job j = { .ret = 0 };
	struct uhmm_sim *sim = NULL;
	struct uhmm *h = NULL;
	double v[C_N], prev[C_N], base[C_N], t_start, t_prev, t;
	char title[256], status_line[256];
	bool tty, ok = true;
	pthread_t thr;
	size_t len = 0;
	int c, ret, status = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "s:d:t:pi:h", lo, NULL)) != -1) {
		switch (c) {
		case 's': ok &= parse_ulong(optarg, &mib); break;
		case 'd': ok &= parse_ulong(optarg, &dev_mib); break;
		case 't': ok &= parse_ulong(optarg, &threads); break;
		case 'i': ok &= parse_ulong(optarg, &interval); break;
		case 'p': j.prefetch = true; break;
		case 'h': stat_usage(stdout); return 0;
		default: stat_usage(stderr); return 2;
		}
	}
	if (!ok || optind < argc || !mib || mib > (1UL << 20) || !threads ||
	    threads > UHMM_SIM_MAX_THREADS || !interval || interval > 3600000 ||
	    dev_mib > (1UL << 21)) {
		stat_usage(stderr);
		return 2;
	}
	if (!dev_mib)
		dev_mib = 2 * mib;
	tty = isatty(STDOUT_FILENO);

	ret = uhmm_open(&h, NULL);
	if (ret) {
		fprintf(stderr, "uhmm stat: skipped: %s\n", uhmm_strerror(ret));
		return EXIT_SKIP;
	}
	ret = uhmm_can_migrate(h);
	if (ret) {
		fprintf(stderr, "uhmm stat: skipped: %s\n", uhmm_strerror(ret));
		uhmm_close(h);
		return EXIT_SKIP;
	}
	len = mib << 20;
	UHMM_OPTS(uhmm_sim_opts, so, .npages = (dev_mib << 20) / UHMM_PAGE_SIZE,
		  .threads = (unsigned int)threads);
	ret = uhmm_sim_create(h, &so, &sim);
	if (!ret && dev_mib < 2 * mib)
		ret = uhmm_devmem_set_evict(uhmm_sim_devmem(sim), &uhmm_evict_lru);
	if (!ret)
		ret = uhmm_alloc(h, len, (void **)&j.in);
	if (!ret)
		ret = uhmm_alloc(h, len, (void **)&j.out);
	if (ret) {
		fprintf(stderr, "uhmm stat: %s\n", uhmm_strerror(ret));
		status = 1;
		goto out;
	}
	j.h = h;
	j.sim = sim;
	j.n = len / sizeof(uint64_t);
	snprintf(title, sizeof(title),
		 "uhmm stat: %lu MiB in, %lu MiB out, %lu MiB of sim device memory%s, %lu device "
		 "threads, %s mode%s",
		 mib, mib, dev_mib, dev_mib < 2 * mib ? " (oversubscribed: LRU eviction)" : "",
		 threads, uhmm_fault_mode(h) == UHMM_FAULT_SIGNAL ? "signal" : "thread",
		 j.prefetch ? ", input prefetched" : "");

	sample(&j, base);
	memcpy(prev, base, sizeof(base));
	t_start = t_prev = now_s();
	ret = pthread_create(&thr, NULL, job_main, &j);
	if (ret) {
		fprintf(stderr, "uhmm stat: pthread_create: %s\n", strerror(ret));
		status = 1;
		goto out;
	}
	/* Wake every 10 ms to notice the end; draw every interval on a terminal. */
	while (!atomic_load(&j.done)) {
		struct timespec ts = { 0, 10 * 1000000L };

		nanosleep(&ts, NULL);
		t = now_s();
		if (!tty || (t - t_prev) * 1e3 < (double)interval)
			continue;
		sample(&j, v);
		snprintf(status_line, sizeof(status_line), "%.2f s: %s ...", t - t_start,
			 atomic_load(&cur_phase));
		printf("\033[H\033[J");
		draw(title, status_line, v, prev, t - t_prev, "per second");
		memcpy(prev, v, sizeof(v));
		t_prev = t;
	}
	pthread_join(thr, NULL);
	t = now_s();
	sample(&j, v);
	if (j.ret)
		snprintf(status_line, sizeof(status_line), "%.2f s: failed: %s: %s", t - t_start,
			 j.what, uhmm_strerror(j.ret));
	else
		snprintf(status_line, sizeof(status_line),
			 "%.2f s: done; result: %s (%zu outputs checked against the CPU)",
			 t - t_start, j.bad ? "WRONG" : "correct", j.n);
	if (tty)
		printf("\033[H\033[J");
	/* The final rates are averages over the whole run. */
	draw(title, status_line, v, base, t - t_start, "per second avg");
	status = j.ret || j.bad ? 1 : 0;
out:
	if (j.in)
		uhmm_free(h, j.in, len);
	if (j.out)
		uhmm_free(h, j.out, len);
	uhmm_sim_destroy(sim);
	uhmm_close(h);
	return status;
}
