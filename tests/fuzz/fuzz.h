/*
 * The libFuzzer entry points, declared for -Wmissing-prototypes. Each
 * fuzz_*.c defines LLVMFuzzerTestOneInput and may define
 * LLVMFuzzerInitialize; the same object links either with libFuzzer
 * (make fuzz) or with replay_main.c (make test replays the corpus).
 */
#ifndef P11KMS_FUZZ_H
#define P11KMS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant of the code under test: a failure is a crash. */
#define FUZZ_CHECK(c) do {						\
	if (!(c)) {							\
		fprintf(stderr, "%s:%d: invariant failed: %s\n",	\
		    __FILE__, __LINE__, #c);				\
		abort();						\
	}								\
} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional: runs once before the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

#endif
