// consumer.cpp - an application built against the installed uhmm, as C++.
#include <uhmm.h>
#include <uhmm_driver.h>
#include <uhmm_sim.h>

#include <cstdio>

int main()
{
	const char *msg = uhmm_strerror(-22);
	// Linking proves the declarations came through with C linkage (extern "C").
	auto open_fn = &uhmm_open;
	auto sim_create_fn = &uhmm_sim_create;
	auto to_device_fn = &uhmm_migrate_to_device;
	void *volatile syms[] = {
		reinterpret_cast<void *>(open_fn),
		reinterpret_cast<void *>(sim_create_fn),
		reinterpret_cast<void *>(to_device_fn),
	};

	if (!msg || !*msg) {
		std::fprintf(stderr, "consumer.cpp: uhmm_strerror(-22) gave no words\n");
		return 1;
	}
	for (void *sym : syms) {
		if (!sym) {
			std::fprintf(stderr, "consumer.cpp: a symbol did not resolve\n");
			return 1;
		}
	}
	std::printf("consumer.cpp: uhmm_strerror(-22) = \"%s\"\n", msg);
	return 0;
}
