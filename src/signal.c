/* SPDX-License-Identifier: MIT */
/*
 * signal.c - signal mode: the faulting thread serves its own fault.
 *
 * With UFFD_FEATURE_SIGBUS a missing-page fault in a managed range raises
 * SIGBUS in the toucher instead of queueing a message. uhmm's handler serves
 * it with the same dispatch as the service thread (uhmm__serve), blocking on
 * the page lock if it must (a toucher holds no page lock), and returns: the
 * access restarts. Every other SIGBUS goes on to the handler installed before
 * uhmm's, or to the default action. Events still arrive as messages and the
 * service thread still reads them.
 *
 * Everything here is async-signal-safe: atomics, system calls, no allocation.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>

#include "internal.h"

#define MAX_SIG_HANDLES 64

static _Atomic(struct uhmm *) handles[MAX_SIG_HANDLES];
static atomic_int inflight; /* handlers inside a handle's tables */
static struct sigaction previous;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_err;

static bool is_write(void *ucontext)
{
#if defined(__x86_64__)
	const ucontext_t *uc = ucontext;

	/* The page-fault error code: bit 1 is set for a write. */
	return uc && (uc->uc_mcontext.gregs[REG_ERR] & 2);
#else
	(void)ucontext;
	return false;
#endif
}

/* Serve @addr if one of the signal-mode handles manages it. */
static int serve_any(uintptr_t addr, bool write)
{
	for (int i = 0; i < MAX_SIG_HANDLES; i++) {
		struct uhmm *h = atomic_load(&handles[i]);
		int ret;

		if (!h)
			continue;
		/* Retried here, in the toucher: an event under way, or no memory for now. */
		ret = uhmm__serve_wait(h, addr, write, 0);
		if (ret != -ENOENT)
			return ret;
	}
	return -ENOENT;
}

/*
 * No range covers the address. It may be the new side of an mremap whose
 * event is read but not handled, or not read yet: wait while any handle has
 * such an event in hand or unread, then look again.
 */
static bool event_may_explain(void)
{
	for (int i = 0; i < MAX_SIG_HANDLES; i++) {
		struct uhmm *h = atomic_load(&handles[i]);
		struct pollfd pfd;

		if (!h)
			continue;
		if (atomic_load(&h->remaps_pending))
			return true;
		if (uhmm__svc_reading(h) || atomic_load(&h->events_pending))
			return true;
		pfd.fd = h->uffd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 0) == 1)
			return true;
	}
	return false;
}

/*
 * A fault at an address no range covers, with no event in hand. The kernel
 * holds userfaultfd operations back (EAGAIN) from before an mremap moves
 * page tables until its event is read: EAGAIN means an event is on its way,
 * so wait for it to be handled and look again. The probe changes nothing
 * (un-write-protecting a range not registered for write-protection), so
 * memory another userfaultfd serves is left alone: its SIGBUS goes on.
 */
static int unknown_fill(uintptr_t addr, bool write)
{
	for (int i = 0; i < MAX_SIG_HANDLES; i++) {
		struct uhmm *h = atomic_load(&handles[i]);

		for (int spins = 0; h && spins < 100000; spins++) {
			struct uffdio_writeprotect p = {
				.range = { .start = addr, .len = PAGE_SIZE },
				.mode = 0,
			};
			int ret;

			if (!ioctl(h->uffd, UFFDIO_WRITEPROTECT, &p) || errno != EAGAIN)
				break;
			uhmm__events_settle(h, addr, addr + PAGE_SIZE);
			sched_yield();
			ret = serve_any(addr, write);
			if (ret != -ENOENT)
				return ret;
		}
	}
	return -ENOENT;
}

int uhmm_sigbus_handler(int sig, void *info, void *ucontext)
{
	const siginfo_t *si = info;
	uintptr_t addr;
	bool write;
	int ret;

	/* Only faults: a SIGBUS sent by kill(2) or sigqueue(3) is never ours. */
	if (sig != SIGBUS || !si || si->si_code <= 0)
		return 0;
	addr = (uintptr_t)si->si_addr & PAGE_MASK;
	write = is_write(ucontext);
	atomic_fetch_add(&inflight, 1);
	ret = serve_any(addr, write);
	/*
	 * No range covers it: maybe the new side of an mremap whose event is
	 * not handled, or not even queued yet. Look again while an event may
	 * explain it; then ask the kernel (unknown_fill).
	 */
	for (int spins = 0; ret == -ENOENT && spins < 100000 && event_may_explain(); spins++) {
		sched_yield();
		ret = serve_any(addr, write);
	}
	if (ret == -ENOENT)
		ret = unknown_fill(addr, write);
	atomic_fetch_sub(&inflight, 1);
	return ret == 0;
}

/* Not ours: what would have happened without uhmm. */
static void pass_on(int sig, siginfo_t *si, void *uc)
{
	if (previous.sa_flags & SA_SIGINFO) {
		if (previous.sa_sigaction) {
			previous.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
		previous.sa_handler(sig);
		return;
	}
	/* A SIGBUS sent by another process to one that ignores it: ignored. */
	if (si->si_code <= 0 && previous.sa_handler == SIG_IGN)
		return;
	/*
	 * Default (or ignored, which a fault cannot be): restore the default
	 * action. A fault happens again and the process dies of SIGBUS, as it
	 * would have without uhmm; a sent signal is sent again.
	 */
	signal(sig, SIG_DFL);
	if (si->si_code <= 0)
		raise(sig);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;

	if (!uhmm_sigbus_handler(sig, si, uc))
		pass_on(sig, si, uc);
	errno = saved;
}

static void install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	/* Not SA_ONSTACK: serving a fault needs more stack than small alternate stacks have. */
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &previous))
		install_err = -errno;
}

int uhmm__signal_register(struct uhmm *h)
{
	pthread_once(&install_once, install);
	if (install_err)
		return install_err;
	for (int i = 0; i < MAX_SIG_HANDLES; i++) {
		struct uhmm *none = NULL;

		if (atomic_compare_exchange_strong(&handles[i], &none, h))
			return 0;
	}
	return -EMFILE;
}

/* After this, no handler is inside @h. */
void uhmm__signal_unregister(struct uhmm *h)
{
	for (int i = 0; i < MAX_SIG_HANDLES; i++) {
		struct uhmm *me = h;

		atomic_compare_exchange_strong(&handles[i], &me, NULL);
	}
	while (atomic_load(&inflight))
		sched_yield();
}
