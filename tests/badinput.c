/* badinput: every invalid argument gets its documented -errno and changes nothing; migration is refused (-EOPNOTSUPP) where the fault path is incomplete, also without privilege, and uhmm_open is refused (-EPERM, -ENOSYS) where userfaultfd is unavailable, with words that say how to fix it. */
#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* ---- a driver whose callbacks must never run ---- */

static int stub_copy_to(struct uhmm_devmem *dm, struct uhmm_page *const *dst,
			const void *const *src, unsigned long n)
{
	(void)dm, (void)dst, (void)src, (void)n;
	return -EIO;
}

static int stub_copy_from(struct uhmm_devmem *dm, void *const *dst, struct uhmm_page *const *src,
			  unsigned long n)
{
	(void)dm, (void)dst, (void)src, (void)n;
	return -EIO;
}

static int stub_migrate_to_ram(struct uhmm_fault *vmf)
{
	(void)vmf;
	return -EIO;
}

static const struct uhmm_devmem_ops good_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = stub_copy_to,
	.copy_from_device = stub_copy_from,
	.migrate_to_ram = stub_migrate_to_ram,
};

static const struct uhmm_devmem_ops no_migrate_to_ram_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = stub_copy_to,
	.copy_from_device = stub_copy_from,
};

static const struct uhmm_devmem_ops no_copy_to_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_from_device = stub_copy_from,
	.migrate_to_ram = stub_migrate_to_ram,
};

static const struct uhmm_devmem_ops no_copy_from_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI,
	.copy_to_device = stub_copy_to,
	.migrate_to_ram = stub_migrate_to_ram,
};

/* A table from before page_data (ABI 1): still welcome. */
static const struct uhmm_devmem_ops abi1_ops = {
	.abi = 1,
	.copy_to_device = stub_copy_to,
	.copy_from_device = stub_copy_from,
	.migrate_to_ram = stub_migrate_to_ram,
};

static const struct uhmm_devmem_ops abi0_ops = {
	.abi = 0,
	.copy_to_device = stub_copy_to,
	.copy_from_device = stub_copy_from,
	.migrate_to_ram = stub_migrate_to_ram,
};

static const struct uhmm_devmem_ops bad_abi_ops = {
	.abi = UHMM_DEVMEM_OPS_ABI + 1,
	.copy_to_device = stub_copy_to,
	.copy_from_device = stub_copy_from,
	.migrate_to_ram = stub_migrate_to_ram,
};

static int owner_cookie;

static struct uhmm_devmem_desc good_desc(void)
{
	UHMM_OPTS(uhmm_devmem_desc, d, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = 4,
		  .owner = &owner_cookie, .ops = &good_ops);
	return d;
}

/* ---- a fixture whose state must not change ---- */

#define NP 16
#define NDEV 8

struct fix {
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	char *buf;   /* NP managed pages (uhmm_alloc), [0, NDEV) on the device */
	char *other; /* NP mapped pages, not managed */
	uint64_t seed;
	struct uhmm_stats hs;
	struct uhmm_devmem_stats ds;
	struct uhmm_sim_stats ss;
	int state[NP];
};

static void fix_setup(struct fix *f, uint64_t seed)
{
	void *p = NULL;

	f->h = uhmm_test_open_migrating();
	f->sim = uhmm_test_sim(f->h, 64);
	f->dm = uhmm_sim_devmem(f->sim);
	CHECK_EQ(uhmm_alloc(f->h, NP * PAGE, &p), 0);
	f->buf = p;
	f->other = map_anon(NP * PAGE);
	f->seed = seed;
	pattern_fill(f->buf, NP * PAGE, seed);
	pattern_fill(f->other, NP * PAGE, ~seed);
	CHECK_EQ(uhmm_migrate_to_device(f->dm, f->buf, NDEV * PAGE), NDEV);
}

static void snapshot(struct fix *f)
{
	f->hs = hstats(f->h);
	f->ds = dmstats(f->dm);
	f->ss = simstats(f->sim);
	for (size_t i = 0; i < NP; i++)
		f->state[i] = uhmm_page_state(f->h, f->buf + i * PAGE);
}

/* Nothing moved, nothing was counted, every byte is where it was. */
static void check_unchanged(struct fix *f)
{
	struct uhmm_stats hs = hstats(f->h);
	struct uhmm_devmem_stats ds = dmstats(f->dm);
	struct uhmm_sim_stats ss = simstats(f->sim);

	CHECK_EQ(hs.faults, f->hs.faults);
	CHECK_EQ(hs.faults_device, f->hs.faults_device);
	CHECK_EQ(hs.pages_home, f->hs.pages_home);
	CHECK_EQ(hs.pages_out, f->hs.pages_out);
	CHECK_EQ(hs.zero_fills, f->hs.zero_fills);
	CHECK_EQ(hs.poisoned, f->hs.poisoned);
	CHECK_EQ(hs.events, f->hs.events);
	CHECK_EQ(ds.in_use, f->ds.in_use);
	CHECK_EQ(ds.resident, f->ds.resident);
	CHECK_EQ(ds.page_frees, f->ds.page_frees);
	CHECK_EQ(ss.copies_to, f->ss.copies_to);
	CHECK_EQ(ss.copies_from, f->ss.copies_from);
	CHECK_EQ(ss.copy_errors, f->ss.copy_errors);
	for (size_t i = 0; i < NP; i++)
		CHECK_STATE(f->h, f->buf + i * PAGE, f->state[i]);
	CHECK_EQ(uhmm_page_state(f->h, f->other), -ENOENT);
	CHECK_EQ(uhmm_page_state(f->h, f->other + (NP - 1) * PAGE), -ENOENT);
}

static void fix_teardown(struct fix *f)
{
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(f->buf, i, f->seed);
	for (size_t i = 0; i < NP; i++)
		CHECK_PATTERN_PAGE(f->other, i, ~f->seed);
	CHECK_EQ(uhmm_free(f->h, f->buf, NP * PAGE), 0);
	unmap(f->other, NP * PAGE);
	CHECK_EQ(uhmm_sim_destroy(f->sim), 0);
	uhmm_close(f->h);
}

/* Each range function on (addr, len) must return @err. */
static void check_bad_range(struct fix *f, void *addr, size_t len, int err, int check_free)
{
	CHECK_EQ(uhmm_manage(f->h, addr, len), err);
	CHECK_EQ(uhmm_unmanage(f->h, addr, len), err);
	CHECK_EQ(uhmm_migrate_to_ram(f->h, addr, len), err);
	CHECK_EQ(uhmm_migrate_to_device(f->dm, addr, len), err);
	if (check_free)
		CHECK_EQ(uhmm_free(f->h, addr, len), err);
}

TEST(bad_ranges)
{
	struct fix f;
	void *p = (void *)1;

	fix_setup(&f, 0xbad00001);
	snapshot(&f);

	/* Unaligned start, zero length, a length that is not whole pages, overflow. */
	check_bad_range(&f, f.buf + 1, PAGE, -EINVAL, 1);
	check_bad_range(&f, f.buf + 100, 2 * PAGE, -EINVAL, 1);
	check_bad_range(&f, f.buf, 0, -EINVAL, 1);
	check_bad_range(&f, f.buf, 100, -EINVAL, 0);
	check_bad_range(&f, f.buf, PAGE + 1, -EINVAL, 0);
	check_bad_range(&f, (void *)-4096, 8192, -EINVAL, 1);
	check_bad_range(&f, (void *)-4096, SIZE_MAX & ~(PAGE - 1), -EINVAL, 1);
	check_bad_range(&f, f.buf, SIZE_MAX & ~(PAGE - 1), -EINVAL, 1);

	CHECK_EQ(uhmm_alloc(f.h, 0, &p), -EINVAL);
	CHECK_EQ(uhmm_alloc(f.h, SIZE_MAX, &p), -EINVAL);
	CHECK_EQ(uhmm_alloc(f.h, SIZE_MAX - 100, &p), -EINVAL);
	CHECK_EQ(uhmm_alloc(f.h, PAGE, NULL), -EINVAL);
	CHECK_PTR(p, (void *)1);
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(unmanaged_addresses)
{
	struct fix f;
	int local = 0;

	fix_setup(&f, 0xbad00002);
	snapshot(&f);

	CHECK_EQ(uhmm_page_state(f.h, &local), -ENOENT);
	CHECK_EQ(uhmm_page_state(f.h, f.other), -ENOENT);
	CHECK_EQ(uhmm_page_state(f.h, (void *)PAGE), -ENOENT);
	CHECK_EQ(uhmm_unmanage(f.h, f.other, PAGE), -ENOENT);
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.other, NP * PAGE), -ENOENT);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.other, NP * PAGE), -ENOENT);
	CHECK_EQ(uhmm_free(f.h, f.other, NP * PAGE), -ENOENT);
	/* A range only partly managed is refused as a whole. */
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf, (NP + 1) * PAGE), -ENOENT);
	CHECK_EQ(uhmm_migrate_to_device(f.dm, f.buf - PAGE, 2 * PAGE), -ENOENT);
	CHECK_EQ(uhmm_migrate_to_ram(f.h, f.buf, (NP + 1) * PAGE), -ENOENT);
	CHECK_EQ(uhmm_unmanage(f.h, f.buf + (NP - 1) * PAGE, 2 * PAGE), -ENOENT);
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(manage_overlap_and_double_unmanage)
{
	struct fix f;
	char *m;

	fix_setup(&f, 0xbad00003);
	snapshot(&f);
	/* The same range again, and overlaps from either side. */
	CHECK_EQ(uhmm_manage(f.h, f.buf, NP * PAGE), -EEXIST);
	CHECK_EQ(uhmm_manage(f.h, f.buf + PAGE, PAGE), -EEXIST);
	check_unchanged(&f);

	/* Our own mapping: manage part, then overlap it partly. */
	m = map_anon(4 * PAGE);
	memset(m, 0x3c, 4 * PAGE);
	CHECK_EQ(uhmm_manage(f.h, m + PAGE, 2 * PAGE), 0);
	CHECK_EQ(uhmm_manage(f.h, m, 2 * PAGE), -EEXIST);
	CHECK_EQ(uhmm_page_state(f.h, m), -ENOENT);
	CHECK_EQ(uhmm_manage(f.h, m + 2 * PAGE, 2 * PAGE), -EEXIST);
	CHECK_EQ(uhmm_page_state(f.h, m + 3 * PAGE), -ENOENT);
	CHECK_EQ(uhmm_manage(f.h, m, 4 * PAGE), -EEXIST);
	CHECK_EQ(uhmm_page_state(f.h, m), -ENOENT);
	CHECK_STATE(f.h, m + PAGE, UHMM_PAGE_SYSTEM);

	CHECK_EQ(uhmm_unmanage(f.h, m + PAGE, 2 * PAGE), 0);
	CHECK_EQ(uhmm_unmanage(f.h, m + PAGE, 2 * PAGE), -ENOENT);
	CHECK_EQ(uhmm_page_state(f.h, m + PAGE), -ENOENT);
	for (size_t i = 0; i < 4 * PAGE; i++)
		CHECK_EQ((unsigned char)m[i], 0x3c);
	unmap(m, 4 * PAGE);
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(manage_refuses_what_is_not_private_anonymous)
{
	struct fix f;
	char *m;
	int fd;

	fix_setup(&f, 0xbad00004);
	snapshot(&f);

	/* MAP_SHARED anonymous memory. */
	m = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	memset(m, 0x11, 4 * PAGE);
	CHECK_EQ(uhmm_manage(f.h, m, 4 * PAGE), -EINVAL);
	CHECK_EQ(uhmm_page_state(f.h, m), -ENOENT);
	CHECK_EQ(m[3 * PAGE], 0x11);
	unmap(m, 4 * PAGE);

	/* A private mapping of a file. */
	fd = memfd_create("uhmm-badinput", MFD_CLOEXEC);
	CHECK_GE(fd, 0);
	CHECK_EQ(ftruncate(fd, 4 * PAGE), 0);
	m = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(m != MAP_FAILED);
	CHECK_EQ(uhmm_manage(f.h, m, 4 * PAGE), -EINVAL);
	CHECK_EQ(uhmm_page_state(f.h, m), -ENOENT);
	unmap(m, 4 * PAGE);
	close(fd);

	/* A hole: the middle page is not mapped. Nothing gets managed. */
	m = map_anon(3 * PAGE);
	unmap(m + PAGE, PAGE);
	CHECK_EQ(uhmm_manage(f.h, m, 3 * PAGE), -EFAULT);
	CHECK_EQ(uhmm_page_state(f.h, m), -ENOENT);
	CHECK_EQ(uhmm_page_state(f.h, m + 2 * PAGE), -ENOENT);
	/* The mapped parts are still fine to manage on their own. */
	CHECK_EQ(uhmm_manage(f.h, m, PAGE), 0);
	CHECK_EQ(uhmm_unmanage(f.h, m, PAGE), 0);
	unmap(m, PAGE);
	unmap(m + 2 * PAGE, PAGE);
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(null_handles)
{
	struct fix f;
	UHMM_OPTS(uhmm_stats, st);
	UHMM_OPTS(uhmm_devmem_stats, dst);
	UHMM_OPTS(uhmm_sim_stats, sst);
	UHMM_OPTS(uhmm_devmem_desc, desc, .type = UHMM_MEMORY_DEVICE_PRIVATE, .npages = 4,
		  .owner = &owner_cookie, .ops = &good_ops);
	struct uhmm_devmem *dm = NULL;
	struct uhmm_sim *sim = NULL;
	void *p = NULL;

	fix_setup(&f, 0xbad00005);
	snapshot(&f);

	CHECK_EQ(uhmm_open(NULL, NULL), -EINVAL);
	uhmm_close(NULL);
	CHECK_EQ(uhmm_features(NULL), 0);
	CHECK_EQ(uhmm_can_migrate(NULL), -EINVAL);
	CHECK_EQ(uhmm_manage(NULL, f.other, PAGE), -EINVAL);
	CHECK_EQ(uhmm_unmanage(NULL, f.buf, PAGE), -EINVAL);
	CHECK_EQ(uhmm_alloc(NULL, PAGE, &p), -EINVAL);
	CHECK_EQ(uhmm_free(NULL, f.buf, NP * PAGE), -EINVAL);
	CHECK_EQ(uhmm_migrate_to_ram(NULL, f.buf, NP * PAGE), -EINVAL);
	CHECK_EQ(uhmm_page_state(NULL, f.buf), -EINVAL);
	CHECK_EQ(uhmm_stats(NULL, &st), -EINVAL);
	CHECK_EQ(uhmm_stats(f.h, NULL), -EINVAL);
	CHECK_EQ(uhmm_migrate_to_device(NULL, f.buf + NDEV * PAGE, PAGE), -EINVAL);
	CHECK_EQ(uhmm_migrate_setup(NULL), -EINVAL);

	CHECK_EQ(uhmm_devmem_add(NULL, &desc, &dm), -EINVAL);
	CHECK_EQ(uhmm_devmem_add(f.h, NULL, &dm), -EINVAL);
	CHECK_EQ(uhmm_devmem_add(f.h, &desc, NULL), -EINVAL);
	CHECK_EQ(uhmm_devmem_remove(NULL), 0);
	CHECK_EQ(uhmm_devmem_stats(NULL, &dst), -EINVAL);
	CHECK_EQ(uhmm_devmem_stats(f.dm, NULL), -EINVAL);

	CHECK_EQ(uhmm_sim_create(NULL, NULL, &sim), -EINVAL);
	CHECK_EQ(uhmm_sim_create(f.h, NULL, NULL), -EINVAL);
	CHECK_EQ(uhmm_sim_destroy(NULL), 0);
	CHECK_EQ(uhmm_sim_stats(NULL, &sst), -EINVAL);
	CHECK_EQ(uhmm_sim_stats(f.sim, NULL), -EINVAL);
	CHECK_EQ(uhmm_sim_fail_page(NULL, f.buf), -EINVAL);
	CHECK(sim == NULL);
	CHECK(dm == NULL);
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(devmem_add_refuses_bad_descriptions)
{
	struct fix f;
	struct uhmm_devmem *dm = NULL;
	struct {
		struct uhmm_devmem_desc d;
		uint64_t tail[2];
	} big;
	int drv_data;

	fix_setup(&f, 0xbad00006);
	snapshot(&f);

	{
		/* The control: a good description registers. */
		struct uhmm_devmem_desc d = good_desc();

		d.driver_data = &drv_data;
		d.name = "stub";
		CHECK_EQ(uhmm_devmem_add(f.h, &d, &dm), 0);
		CHECK_NONNULL(dm);
		CHECK_PTR(uhmm_devmem_owner(dm), &owner_cookie);
		CHECK_PTR(uhmm_devmem_driver_data(dm), &drv_data);
		CHECK_PTR(uhmm_devmem_handle(dm), f.h);
		CHECK_EQ(dmstats(dm).npages, 4);
		CHECK_EQ(dmstats(dm).in_use, 0);
		CHECK_EQ(uhmm_devmem_remove(dm), 0);
		dm = NULL;
	}
#define CHECK_DESC_REFUSED(assignment)                                                      \
	do {                                                                                \
		struct uhmm_devmem_desc d_ = good_desc();                                   \
		int r_;                                                                     \
		d_.assignment;                                                              \
		r_ = uhmm_devmem_add(f.h, &d_, &dm);                                        \
		CHECK_MSG(r_ == -EINVAL, "uhmm_devmem_add with " #assignment ": %d%s, expected -EINVAL", \
			  r_, harness_errname(r_));                                         \
	} while (0)
	/* The rule: private memory without a way home is refused. */
	CHECK_DESC_REFUSED(ops = &no_migrate_to_ram_ops);
	CHECK_DESC_REFUSED(ops = &no_copy_to_ops);
	CHECK_DESC_REFUSED(ops = &no_copy_from_ops);
	CHECK_DESC_REFUSED(ops = &bad_abi_ops);
	CHECK_DESC_REFUSED(ops = &abi0_ops);
	CHECK_DESC_REFUSED(ops = NULL);
	CHECK_DESC_REFUSED(owner = NULL);
	CHECK_DESC_REFUSED(npages = 0);
	CHECK_DESC_REFUSED(npages = (1UL << 31) + 1);
	CHECK_DESC_REFUSED(type = (enum uhmm_memory_type)0);
	CHECK_DESC_REFUSED(type = (enum uhmm_memory_type)99);
#undef CHECK_DESC_REFUSED
	CHECK(dm == NULL);
	{
		struct uhmm_devmem_desc d = good_desc();

		d.ops = &abi1_ops;
		CHECK_EQ(uhmm_devmem_add(f.h, &d, &dm), 0);
		CHECK_EQ(uhmm_devmem_remove(dm), 0);
		dm = NULL;
	}

	/* A larger description from a newer header: a non-zero tail is refused. */
	memset(&big, 0, sizeof(big));
	big.d.sz = sizeof(big);
	big.d.type = UHMM_MEMORY_DEVICE_PRIVATE;
	big.d.npages = 4;
	big.d.owner = &owner_cookie;
	big.d.ops = &good_ops;
	big.tail[1] = 1;
	CHECK_EQ(uhmm_devmem_add(f.h, &big.d, &dm), -E2BIG);
	CHECK(dm == NULL);
	big.tail[1] = 0;
	CHECK_EQ(uhmm_devmem_add(f.h, &big.d, &dm), 0);
	CHECK_EQ(uhmm_devmem_remove(dm), 0);

	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(migrate_setup_refuses_bad_arguments)
{
	struct fix f;
	uint64_t src[UHMM_MIGRATE_MAX_PAGES + 1], dst[UHMM_MIGRATE_MAX_PAGES + 1];
	struct uhmm_migrate m;

	fix_setup(&f, 0xbad00007);
	snapshot(&f);
#define RESET(s, e, fl)                                   \
	do {                                              \
		memset(&m, 0, sizeof(m));                 \
		m.h = f.h;                                \
		m.start = (uintptr_t)(s);                 \
		m.end = (uintptr_t)(e);                   \
		m.src = src;                              \
		m.dst = dst;                              \
		m.flags = (fl);                           \
		m.pgmap_owner = uhmm_devmem_owner(f.dm);  \
	} while (0)

	RESET(f.buf + 1, f.buf + PAGE, UHMM_MIGRATE_SELECT_SYSTEM);
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.buf, f.buf, UHMM_MIGRATE_SELECT_SYSTEM);
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.buf + PAGE, f.buf, UHMM_MIGRATE_SELECT_SYSTEM);
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.buf, f.buf + PAGE, 0);
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.buf, f.buf + PAGE, UHMM_MIGRATE_SELECT_SYSTEM);
	m.src = NULL;
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.buf, f.buf + PAGE, UHMM_MIGRATE_SELECT_SYSTEM);
	m.h = NULL;
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.buf, f.buf + (UHMM_MIGRATE_MAX_PAGES + 1) * PAGE, UHMM_MIGRATE_SELECT_SYSTEM);
	CHECK_EQ(uhmm_migrate_setup(&m), -EINVAL);
	RESET(f.other, f.other + PAGE, UHMM_MIGRATE_SELECT_SYSTEM);
	CHECK_EQ(uhmm_migrate_setup(&m), -ENOENT);
	RESET(f.buf + (NP - 1) * PAGE, f.buf + (NP + 1) * PAGE, UHMM_MIGRATE_SELECT_SYSTEM);
	CHECK_EQ(uhmm_migrate_setup(&m), -ENOENT);
#undef RESET
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(open_options)
{
	struct uhmm *h = NULL;
	struct {
		struct uhmm_open_opts o;
		uint64_t tail[2];
	} big;

	/* Unknown flags. */
	{
		UHMM_OPTS(uhmm_open_opts, o, .flags = 1U << 31);
		CHECK_EQ(uhmm_open(&h, &o), -EINVAL);
	}
	/* More kept memory than staging can hold. */
	{
		UHMM_OPTS(uhmm_open_opts, o, .keep_mib = 2049);
		CHECK_EQ(uhmm_open(&h, &o), -EINVAL);
		CHECK(h == NULL);
	}
	/* A larger struct from a newer header: a non-zero tail is refused... */
	memset(&big, 0, sizeof(big));
	big.o.sz = sizeof(big);
	big.tail[1] = 1;
	CHECK_EQ(uhmm_open(&h, &big.o), -E2BIG);
	/* ...a zero tail is fine. */
	big.tail[1] = 0;
	uhmm_test_open_opts(&h, &big.o);
	uhmm_close(h);
	h = NULL;
	/* A smaller struct from an older header: the fields past sz are defaults. */
	{
		UHMM_OPTS(uhmm_open_opts, o, .flags = ~0U, .mask_features = ~0ULL);
		o.sz = sizeof(size_t);
		uhmm_test_open_opts(&h, &o);
		CHECK_NE(uhmm_features(h), 0);
		CHECK_EQ(uhmm_features(h) & UHMM_FEAT_MISSING, UHMM_FEAT_MISSING);
		uhmm_close(h);
	}
}

TEST(stats_struct_sizes)
{
	struct fix f;
	struct {
		struct uhmm_stats s;
		uint64_t tail[2];
	} hb;
	struct {
		struct uhmm_devmem_stats s;
		uint64_t tail[2];
	} db;
	struct {
		struct uhmm_sim_stats s;
		uint64_t tail[2];
	} sb;

	fix_setup(&f, 0xbad00008);
	snapshot(&f);
	memset(&hb, 0xff, sizeof(hb));
	hb.s.sz = 0;
	CHECK_EQ(uhmm_stats(f.h, &hb.s), -EINVAL);
	hb.s.sz = sizeof(hb);
	CHECK_EQ(uhmm_stats(f.h, &hb.s), -E2BIG);
	memset(&db, 0xff, sizeof(db));
	db.s.sz = sizeof(db);
	CHECK_EQ(uhmm_devmem_stats(f.dm, &db.s), -E2BIG);
	memset(&sb, 0xff, sizeof(sb));
	sb.s.sz = sizeof(sb);
	CHECK_EQ(uhmm_sim_stats(f.sim, &sb.s), -E2BIG);
	check_unchanged(&f);
	fix_teardown(&f);
}

TEST(sim_create_refuses_bad_options)
{
	struct uhmm *h;
	struct uhmm_sim *sim = NULL;
	struct {
		struct uhmm_sim_opts o;
		uint64_t tail[2];
	} big;

	uhmm_test_open(&h);
	{
		UHMM_OPTS(uhmm_sim_opts, o, .npages = 1UL << 40);
		CHECK_EQ(uhmm_sim_create(h, &o, &sim), -EINVAL);
	}
	memset(&big, 0, sizeof(big));
	big.o.sz = sizeof(big);
	big.o.npages = 8;
	big.tail[0] = 1;
	CHECK_EQ(uhmm_sim_create(h, &big.o, &sim), -E2BIG);
	CHECK(sim == NULL);
	uhmm_close(h);
}

TEST(strerror_has_words_for_every_code)
{
	static const int codes[] = { EINVAL, ENOENT, EEXIST, EFAULT, E2BIG, EOPNOTSUPP,
				     EPERM, ENOSYS, ENOMEM, ENODEV, ENOSPC, ESHUTDOWN,
				     EMFILE, EAGAIN, EIO, EBUSY };
	static const int unknown[] = { 0, 4095, -4095, 12345, -12345, INT_MAX, INT_MIN };

	for (size_t i = 0; i < ARRAY_SIZE(codes); i++) {
		const char *neg = uhmm_strerror(-codes[i]), *pos = uhmm_strerror(codes[i]);

		CHECK_NONNULL(neg);
		CHECK_NONNULL(pos);
		CHECK_MSG(strlen(neg) > 0, "uhmm_strerror(-%d) is empty", codes[i]);
		CHECK_MSG(strlen(pos) > 0, "uhmm_strerror(%d) is empty", codes[i]);
	}
	for (size_t i = 0; i < ARRAY_SIZE(unknown); i++) {
		const char *s = uhmm_strerror(unknown[i]);

		CHECK_NONNULL(s);
		CHECK_MSG(strlen(s) > 0, "uhmm_strerror(%d) is empty", unknown[i]);
	}
	NOTE("uhmm_strerror(-EPERM): %s", uhmm_strerror(-EPERM));
	NOTE("uhmm_strerror(-EOPNOTSUPP): %s", uhmm_strerror(-EOPNOTSUPP));
	CHECK_MSG(strcasestr(uhmm_strerror(-EOPNOTSUPP), "kernel") != NULL,
		  "uhmm_strerror(-EOPNOTSUPP) does not mention the kernel: \"%s\"",
		  uhmm_strerror(-EOPNOTSUPP));

	CHECK(uhmm_feature_name(0) == NULL);
	CHECK(uhmm_feature_name(1ULL << 63) == NULL);
	CHECK(uhmm_feature_name(UHMM_FEAT_MOVE | UHMM_FEAT_POISON) == NULL);
	CHECK_NONNULL(uhmm_feature_name(UHMM_FEAT_MOVE));
	CHECK_EQ(strcmp(uhmm_feature_name(UHMM_FEAT_MOVE), "MOVE"), 0);
	for (int b = 0; b <= 10; b++)
		CHECK_NONNULL(uhmm_feature_name(1ULL << b));
}

/* ---- the rule: nothing leaves the CPU without a way home ---- */


/* uhmm_strerror(@err) is non-empty and contains each of the (up to three) words of the fix. */
static void check_names_fix(int err, const char *w1, const char *w2, const char *w3)
{
	const char *words[] = { w1, w2, w3 };
	const char *s = uhmm_strerror(err);

	CHECK_NONNULL(s);
	CHECK_MSG(strlen(s) > 0, "uhmm_strerror(%d) is empty", err);
	for (size_t i = 0; i < ARRAY_SIZE(words); i++)
		CHECK_MSG(!words[i] || strcasestr(s, words[i]),
			  "uhmm_strerror(%d) does not name the fix (\"%s\"): \"%s\"", err, words[i],
			  s);
}

/* uhmm_test_become_nobody, and say where we stand. */
static void become_unprivileged(void)
{
	uhmm_test_become_nobody();
	NOTE("uid %d, vm.unprivileged_userfaultfd = %lld", (int)geteuid(), uhmm_test_unpriv_sysctl());
}

/* Run @fn(@arg) in a forked child (which drops privilege itself): its failure fails the test, its skip skips it. */
static void run_in_child(void (*fn)(void *), void *arg)
{
	int status = harness_run_child(fn, arg);

	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		SKIP("child: %s", harness_skip_buf[0] ? harness_skip_buf : "skipped");
	CHECK_EXITED(status, 0);
}

static void check_refused_without(uint64_t mask)
{
	UHMM_OPTS(uhmm_open_opts, o, .mask_features = mask);
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	struct uhmm_migrate m;
	uint64_t src[4], dst[4];
	uint64_t seed = 0xbad0f00d ^ mask;
	void *p = NULL;
	char *buf;

	NOTE("masking %s", uhmm_feature_name(mask));
	uhmm_test_open_opts(&h, &o);
	CHECK_EQ(uhmm_features(h) & mask, 0);
	/* Without privilege and with the sysctl off, the handle is user-mode-only and says so. */
	if (geteuid() != 0 && uhmm_test_unpriv_sysctl() == 0)
		CHECK_EQ(uhmm_features(h) & UHMM_FEAT_KERNEL_FAULTS, 0);
	CHECK_EQ(uhmm_can_migrate(h), -EOPNOTSUPP);
	check_names_fix(-EOPNOTSUPP, "kernel", "Linux 6.8", "uhmm info");

	/* Memory can still be managed and a device registered... */
	sim = uhmm_test_sim(h, 16);
	dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_alloc(h, 4 * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, 4 * PAGE, seed);

	/* ...but nothing leaves the CPU. */
	CHECK_EQ(uhmm_migrate_to_device(dm, buf, 4 * PAGE), -EOPNOTSUPP);
	memset(&m, 0, sizeof(m));
	m.h = h;
	m.start = (uintptr_t)buf;
	m.end = (uintptr_t)buf + 4 * PAGE;
	m.src = src;
	m.dst = dst;
	m.flags = UHMM_MIGRATE_SELECT_SYSTEM;
	CHECK_EQ(uhmm_migrate_setup(&m), -EOPNOTSUPP);

	CHECK_EQ(count_state(h, buf, 4, UHMM_PAGE_SYSTEM), 4);
	CHECK_EQ(dmstats(dm).in_use, 0);
	CHECK_EQ(hstats(h).pages_out, 0);
	CHECK_EQ(simstats(sim).copies_to, 0);
	for (size_t i = 0; i < 4; i++)
		CHECK_PATTERN_PAGE(buf, i, seed);
	/* Bringing nothing home is still allowed. */
	CHECK_EQ(uhmm_migrate_to_ram(h, buf, 4 * PAGE), 0);
	CHECK_EQ(uhmm_free(h, buf, 4 * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(rule_no_move_no_migration)
{
	check_refused_without(UHMM_FEAT_MOVE);
}

TEST(rule_no_poison_no_migration)
{
	check_refused_without(UHMM_FEAT_POISON);
}

TEST(rule_any_required_feature_missing_no_migration)
{
	for (int b = 0; b < 64; b++)
		if (UHMM_FEAT_REQUIRED & (1ULL << b))
			check_refused_without(1ULL << b);
}

/* The same refusal without privilege: the mask applies to a user-mode-only handle too. */
static void refused_unprivileged_part(void *arg)
{
	(void)arg;
	become_unprivileged();
	for (int b = 0; b < 64; b++)
		if (UHMM_FEAT_REQUIRED & (1ULL << b))
			check_refused_without(1ULL << b);
}

TEST(rule_any_required_feature_missing_no_migration_unprivileged)
{
	run_in_child(refused_unprivileged_part, NULL);
}

/*
 * Without privilege and without masking: the handle is user-mode-only where
 * the sysctl says so, reports it, never has fork events (they need
 * CAP_SYS_PTRACE), runs in the mode AUTO documents, and migrates exactly
 * where the kernel has every required feature.
 */
static void unprivileged_unmasked_part(void *arg)
{
	const char *env = getenv("UHMM_FAULT_MODE");
	struct uhmm *h;
	struct uhmm_sim *sim;
	struct uhmm_devmem *dm;
	uint64_t feat, seed = 0xbad0a0b0;
	int want_mode;
	void *p = NULL;
	char *buf;

	(void)arg;
	become_unprivileged();
	uhmm_test_open(&h);
	feat = uhmm_features(h);
	NOTE("features 0x%llx, fault mode %d", (unsigned long long)feat, uhmm_fault_mode(h));
	if (uhmm_test_unpriv_sysctl() == 0)
		CHECK_EQ(feat & UHMM_FEAT_KERNEL_FAULTS, 0);
	CHECK_EQ(feat & UHMM_FEAT_EVENT_FORK, 0);
	if (env && !strcmp(env, "thread"))
		want_mode = UHMM_FAULT_THREAD;
	else if (env && !strcmp(env, "signal"))
		want_mode = UHMM_FAULT_SIGNAL;
	else if (!(feat & UHMM_FEAT_KERNEL_FAULTS) && (feat & UHMM_FEAT_SIGBUS))
		want_mode = UHMM_FAULT_SIGNAL;
	else
		want_mode = UHMM_FAULT_THREAD;
	CHECK_EQ(uhmm_fault_mode(h), want_mode);

	sim = uhmm_test_sim(h, 16);
	dm = uhmm_sim_devmem(sim);
	CHECK_EQ(uhmm_alloc(h, 8 * PAGE, &p), 0);
	buf = p;
	pattern_fill(buf, 8 * PAGE, seed);
	if ((feat & UHMM_FEAT_REQUIRED) != UHMM_FEAT_REQUIRED) {
		NOTE("this kernel lacks a required feature: migration must be refused");
		CHECK_EQ(uhmm_can_migrate(h), -EOPNOTSUPP);
		CHECK_EQ(uhmm_migrate_to_device(dm, buf, 8 * PAGE), -EOPNOTSUPP);
		CHECK_EQ(count_state(h, buf, 8, UHMM_PAGE_SYSTEM), 8);
	} else {
		CHECK_EQ(uhmm_can_migrate(h), 0);
		CHECK_EQ(uhmm_migrate_to_device(dm, buf, 8 * PAGE), 8);
		CHECK_EQ(count_state(h, buf, 8, UHMM_PAGE_DEVICE), 8);
		CHECK_EQ(dmstats(dm).in_use, 8);
		CHECK_EQ(simstats(sim).copies_to, 8);
	}
	for (size_t i = 8; i-- > 0;)
		CHECK_PATTERN_PAGE(buf, i, seed);
	CHECK_EQ(count_state(h, buf, 8, UHMM_PAGE_SYSTEM), 8);
	CHECK_EQ(dmstats(dm).in_use, 0);
	CHECK_EQ(hstats(h).poisoned, 0);
	CHECK_EQ(uhmm_free(h, buf, 8 * PAGE), 0);
	CHECK_EQ(uhmm_sim_destroy(sim), 0);
	uhmm_close(h);
}

TEST(unprivileged_unmasked_user_mode_only_migrates)
{
	run_in_child(unprivileged_unmasked_part, NULL);
}

/* ---- no userfaultfd at all: uhmm_open is refused with words that say what to do ---- */

#if defined(__x86_64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* From now on userfaultfd(2) fails with @err in this process (a seccomp filter). */
static void block_userfaultfd(int err)
{
#ifdef NATIVE_AUDIT_ARCH
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = (unsigned short)ARRAY_SIZE(f), .filter = f };
	long r;

	CHECK_EQ(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		SKIP("no seccomp filter here to take userfaultfd away: %s", strerror(errno));
	errno = 0;
	r = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	CHECK_EQ(r, -1);
	CHECK_EQ(errno, err);
#else
	(void)err;
	SKIP("no seccomp filter for this architecture in this test");
#endif
}

static void no_userfaultfd_part(void *arg)
{
	int err = *(const int *)arg;
	struct uhmm *h = (struct uhmm *)&err; /* must come back NULL */

	become_unprivileged();
	if (access("/dev/userfaultfd", R_OK | W_OK) == 0)
		SKIP("this user may open /dev/userfaultfd: userfaultfd cannot be taken away");
	block_userfaultfd(err);

	CHECK_EQ(uhmm_open(&h, NULL), -err);
	CHECK(h == NULL);
	{
		UHMM_OPTS(uhmm_open_opts, o, .flags = UHMM_OPEN_USER_MODE_ONLY);

		h = (struct uhmm *)&err;
		CHECK_EQ(uhmm_open(&h, &o), -err);
		CHECK(h == NULL);
	}
	{
		UHMM_OPTS(uhmm_open_opts, o, .fault_mode = UHMM_FAULT_SIGNAL);

		CHECK_EQ(uhmm_open(&h, &o), -err);
		CHECK(h == NULL);
	}
	NOTE("uhmm_strerror(%d): %s", -err, uhmm_strerror(-err));
	if (err == EPERM)
		check_names_fix(-EPERM, "vm.unprivileged_userfaultfd=1", "/dev/userfaultfd",
				"seccomp");
	else
		check_names_fix(-ENOSYS, "CONFIG_USERFAULTFD", "Linux 6.8", NULL);
}

TEST(userfaultfd_not_permitted_unprivileged_open_refused_eperm)
{
	int err = EPERM;

	run_in_child(no_userfaultfd_part, &err);
}

TEST(userfaultfd_missing_unprivileged_open_refused_enosys)
{
	int err = ENOSYS;

	run_in_child(no_userfaultfd_part, &err);
}
