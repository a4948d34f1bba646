/* consumer.c - an application built against the installed uhmm, as C. */
#include <uhmm.h>
#include <uhmm_driver.h>
#include <uhmm_sim.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
	const char *msg = uhmm_strerror(-22);
	/* Taking the addresses makes the linker resolve them in libuhmm.so. */
	void *volatile syms[] = {
		(void *)uhmm_open,
		(void *)uhmm_sim_create,
		(void *)uhmm_migrate_to_device,
	};
	size_t i;

	if (!msg || !*msg) {
		fprintf(stderr, "consumer.c: uhmm_strerror(-22) gave no words\n");
		return 1;
	}
	for (i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		if (!syms[i]) {
			fprintf(stderr, "consumer.c: symbol %zu did not resolve\n", i);
			return 1;
		}
	}
	printf("consumer.c: uhmm %d.%d.%d: uhmm_strerror(-22) = \"%s\"\n", UHMM_VERSION_MAJOR,
	       UHMM_VERSION_MINOR, UHMM_VERSION_PATCH, msg);
	return strlen(msg) ? 0 : 1;
}
