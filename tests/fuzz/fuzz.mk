# Fuzz targets (tests/fuzz/fuzz_NAME.c), their seed corpora
# (tests/fuzz/corpus/NAME/) and dictionaries (tests/fuzz/NAME.dict).
#
#   make test        also replays every corpus file through each target,
#                    built with CC/CFLAGS and a plain main (replay_main.c):
#                    $(BUILD)/fuzz-replay/fuzz_NAME
#   make fuzz        builds each target with clang and libFuzzer
#                    (-fsanitize=fuzzer,address,undefined) into $(BUILD)/fuzz/
#                    and runs each for FUZZ_SECONDS against a copy of its
#                    corpus (in $(BUILD)/fuzz/corpus-NAME). FUZZ_MERGE=1
#                    then merges the inputs that add coverage into
#                    tests/fuzz/corpus/NAME (libFuzzer -merge=1): that can
#                    be hundreds of files; keep the few that matter.
#                    FUZZ_TARGETS=request runs one; FUZZ_FLAGS adds flags
#                    (e.g. -jobs=2, -max_len=16384).
# Needs clang and libFuzzer (Debian: clang, libclang-rt-14-dev); make test
# needs neither. Crashes are left in $(BUILD)/fuzz/NAME-crash-*; add them
# to the corpus as crash-WHAT (once fixed, they guard against regressions).

FUZZ_NAMES	= $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_TARGETS	?= $(FUZZ_NAMES)
FUZZ_SECONDS	?= 60
FUZZ_CC		?= clang
FUZZ_FLAGS	?=
FUZZ_DIR	= $(BUILD)/fuzz
FUZZ_REPLAY	= $(patsubst %,$(BUILD)/fuzz-replay/fuzz_%,$(FUZZ_NAMES))

EXTRA_TEST_BIN	+= $(FUZZ_REPLAY)

FUZZ_REPLAY_MAIN = $(patsubst %,$(BUILD)/fuzz-replay/main_%.o,$(FUZZ_NAMES))
FUZZ_BIN	= $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_NAMES))

.PHONY: fuzz fuzz-toolchain
# Objects of chained pattern rules: keep them (no rebuild, no "rm").
.SECONDARY: $(patsubst %,$(BUILD)/tests/fuzz/fuzz_%.o,$(FUZZ_NAMES)) \
	    $(FUZZ_REPLAY_MAIN) \
	    $(patsubst %,$(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o,$(FUZZ_NAMES))

# ---- replay (make test), with the project's CC and CFLAGS ----

# Static pattern rules: a pattern with a fixed source would also match the
# .d files the Makefile includes (main_NAME.d).

$(FUZZ_REPLAY_MAIN): $(BUILD)/fuzz-replay/main_%.o: tests/fuzz/replay_main.c \
    | $(GEN_H)
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) \
	    -DFUZZ_CORPUS='"tests/fuzz/corpus/$*"' -c -o $@ $<

$(FUZZ_REPLAY): $(BUILD)/fuzz-replay/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o \
    $(BUILD)/fuzz-replay/main_%.o $(BUILD)/libp11kms.a
	$(E) LD $@
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ---- libFuzzer (make fuzz) ----

FUZZ_CFLAGS	= -std=gnu11 -g -O1 -fno-omit-frame-pointer \
		  -fsanitize=address,undefined -fno-sanitize-recover=undefined \
		  $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
FUZZ_LIB_OBJ	= $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(LIB_SRC)) \
		  $(patsubst $(BUILD)/gen/%.c,$(FUZZ_DIR)/obj/gen/%.o,$(GEN_C))

fuzz-toolchain:
	$(Q)d=$$($(FUZZ_CC) -print-runtime-dir 2>/dev/null); \
	ls "$$d"/libclang_rt.fuzzer-*.a >/dev/null 2>&1 || { \
	    echo "make fuzz: $(FUZZ_CC) has no libFuzzer runtime; install" \
	        "clang and libclang-rt-14-dev (or set FUZZ_CC)" >&2; exit 1; }

$(FUZZ_DIR)/obj/gen/%.o: $(BUILD)/gen/%.c $(GEN_H) | fuzz-toolchain
	$(E) FUZZCC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link \
	    -c -o $@ $<

$(FUZZ_DIR)/obj/%.o: %.c $(GEN_H) | fuzz-toolchain
	$(E) FUZZCC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link \
	    -MMD -MP -c -o $@ $<

$(FUZZ_DIR)/libp11kms.a: $(FUZZ_LIB_OBJ)
	$(E) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

$(FUZZ_BIN): $(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o \
    $(FUZZ_DIR)/libp11kms.a
	$(E) FUZZLD $@
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

# Each target runs alone (they share the machine), on a scratch copy of
# its corpus; a failure does not stop the others, but fails the run.
fuzz: $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_TARGETS))
	$(Q)fail=0; for t in $(FUZZ_TARGETS); do \
	    work=$(FUZZ_DIR)/corpus-$$t; \
	    rm -rf $$work && mkdir -p $$work && \
	    cp tests/fuzz/corpus/$$t/* $$work/ || exit 1; \
	    dict=; [ -f tests/fuzz/$$t.dict ] && \
	        dict=-dict=tests/fuzz/$$t.dict; \
	    echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	    if ! P11KMS_SRCDIR=$(CURDIR) $(FUZZ_DIR)/fuzz_$$t \
	        -max_total_time=$(FUZZ_SECONDS) -timeout=20 \
	        -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/$$t- \
	        $$dict $(FUZZ_FLAGS) $$work; then \
	        fail=1; \
	        echo "!! fuzz $$t failed: the input is in" \
	            "$(FUZZ_DIR)/$$t-crash-* (or -leak-, -timeout-, -oom-);"; \
	        echo "!! reproduce: $(FUZZ_DIR)/fuzz_$$t FILE; add it to" \
	            "tests/fuzz/corpus/$$t/ as crash-WHAT, so make check" \
	            "replays it"; \
	        continue; \
	    fi; \
	    if [ "$(FUZZ_MERGE)" = 1 ]; then \
	        echo "== merge new inputs into tests/fuzz/corpus/$$t"; \
	        P11KMS_SRCDIR=$(CURDIR) $(FUZZ_DIR)/fuzz_$$t -merge=1 \
	            tests/fuzz/corpus/$$t $$work || fail=1; \
	    fi; \
	done; exit $$fail
