# `make bench`: the load generator (tests/bench/bench*.c) run against the
# daemon on a throwaway SoftHSM token. Not part of `make check`: it is a
# benchmark, it asserts no targets. Included by the top Makefile.
#
#   make bench                          default run (about a minute)
#   make bench BENCH_ARGS=--quick       smoke run, a few seconds
#   make bench BENCH_ARGS='--requests 50000 --conns 4 --no-slow'
#
# The slow-token scenario needs the fault module (tests/faultmod), which
# `bench` builds when its fragment is present; without it the bench prints
# n/a for that scenario.

# Fragments are included before the top Makefile's `all`: keep `make` with
# no goal building `all`, not the first rule a fragment happens to define.

BENCH_BIN	= $(BUILD)/bench/p11kms-bench
BENCH_ARGS	?=
BENCH_FAULT_SO	= $(BUILD)/tests/libp11kms-fault.so

.PHONY: bench

# bench.c (options, state, main), bench_client.c, bench_scenarios.c,
# bench_tokproc.c, bench_echo.c and bench_report.c, sharing bench.h.
BENCH_SRC	= $(wildcard tests/bench/bench*.c)

$(BENCH_BIN): $(BENCH_SRC) tests/bench/bench.h $(BUILD)/libp11kms.a | $(GEN_H)
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -Werror $(LDFLAGS) -o $@ $(BENCH_SRC) \
	    $(BUILD)/libp11kms.a $(LDLIBS)

# The fault module's rule comes from its own fragment (read after this one).
# Two runs, --token-process=off (the in-process baseline) then on, and a
# side-by-side table of the two (tests/bench/compare.py).
bench: $(BUILD)/p11kms $(BENCH_BIN) \
    $(if $(wildcard tests/faultmod/faultmod.mk),$(BENCH_FAULT_SO))
	$(Q)set -e; for m in off on; do \
	    echo "== bench --token-process=$$m"; \
	    $(BENCH_BIN) --daemon $(BUILD)/p11kms \
	    --mktoken tests/mktoken.sh --fault-module $(BENCH_FAULT_SO) \
	    --token-process $$m $(BENCH_ARGS) | tee $(BUILD)/bench/$$m.out; \
	done
	$(Q)/usr/bin/python3 tests/bench/compare.py $(BUILD)/bench/off.out \
	    $(BUILD)/bench/on.out
