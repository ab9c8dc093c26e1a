# p11kms: a Kubernetes KMS plugin backed by a PKCS#11 token.
#
#   make            build build/p11kms
#   make run        install missing packages, build, make a SoftHSM token
#                   under ./var if there is none, serve on ./var/kms.sock
#   make check      install missing packages, build, run every test, then
#                   the ASan+UBSan build of the tests, then (as root) the
#                   packaging checks: the .deb installed, tried and purged
#                   (deb-check), the alert rules' promtool tests
#                   (prom-check)
#   make deb        build/p11kms_VERSION_ARCH.deb
#   make SANITIZE=1 sanitizer build into build-asan/
#   make tsan       the unit tests built with ThreadSanitizer (build-tsan/)
#   V=1             show commands

.DEFAULT_GOAL := all

CC	?= cc
PKG_CONFIG ?= pkg-config
PKGS	= p11-kit-1 libprotobuf-c libnghttp2 libcrypto libmicrohttpd \
	  libseccomp

CFLAGS	?= -O2 -g
# Warnings and hardening stay when CFLAGS or LDFLAGS come from the command
# line (make CFLAGS=..., as packagers do): hence override.
override CFLAGS	+= -std=gnu11 -Wall -Wextra -Wshadow -Wformat=2 -Wno-unused-parameter \
	   -Wmissing-prototypes -Wstrict-prototypes -MMD -MP
override CFLAGS	+= -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE \
	   -fstack-clash-protection -fcf-protection
override CFLAGS	+= $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
override LDFLAGS += -pie -Wl,-z,relro,-z,now
LDLIBS	+= $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null) -lpthread
ifeq ($(CI),true)
override CFLAGS	+= -Werror
endif
ifneq ($(WERROR),)
override CFLAGS	+= -Werror
endif

# SANITIZE=1 (or address,undefined): ASan+UBSan into build-asan/;
# SANITIZE=thread: TSan into build-tsan/ (make tsan runs the unit tests).
ifneq ($(SANITIZE),)
ifeq ($(SANITIZE),thread)
BUILD	?= build-tsan
SAN_KIND = thread
else
BUILD	?= build-asan
SAN_KIND = address,undefined
endif
override CFLAGS	:= $(filter-out -O2 -D_FORTIFY_SOURCE=2,$(CFLAGS)) -O1 \
	   -fsanitize=$(SAN_KIND) -fno-omit-frame-pointer
ifneq ($(SAN_KIND),thread)
override CFLAGS	+= -fno-sanitize-recover=undefined
endif
override LDFLAGS += -fsanitize=$(SAN_KIND)
endif
BUILD	?= build

ifeq ($(V),)
Q	= @
E	= @printf '  %-7s %s\n'
else
Q	=
E	= @true
endif

PROTOS	= $(wildcard proto/*.proto)
GEN_C	= $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
GEN_H	= $(GEN_C:.c=.h)

LIB_SRC	= $(filter-out plugin/main.c,$(wildcard plugin/*.c pkcs11/*.c))
LIB_OBJ	= $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC)) $(GEN_C:.c=.o)
MAIN_OBJ = $(BUILD)/plugin/main.o
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

CPPFLAGS += -D_GNU_SOURCE -I. -I$(BUILD)/gen

# Test programs beyond tests/unit (fuzz corpus replay, fault module tests…)
# that `make test` runs; each prints cmocka's summary or a line
# "N passed, N failed". Test-only shared objects go in TEST_DEPS.
EXTRA_TEST_BIN =
TEST_DEPS =
# Each of these adds its own rules and appends to the lists above.
-include $(wildcard tests/*/*.mk mk/*.mk)

.PHONY: all run check test unit integration asan tsan tsan-unit deps clean distclean
.SECONDARY: $(GEN_C) $(GEN_H)

all: $(BUILD)/p11kms

$(BUILD)/p11kms: $(MAIN_OBJ) $(BUILD)/libp11kms.a
	$(E) LD $@
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libp11kms.a: $(LIB_OBJ)
	$(E) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	$(E) PROTOC $<
	$(Q)mkdir -p $(BUILD)/gen
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(E) CC $@
	$(Q)$(CC) $(CPPFLAGS) $(filter-out -Wmissing-prototypes,$(CFLAGS)) -c -o $@ $<

$(BUILD)/%.o: %.c | $(GEN_H)
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libp11kms.a | $(GEN_H)
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libp11kms.a $(LDLIBS) -lcmocka

# Installs the Debian packages the build and tests need (prints the apt-get
# line instead when not root).
deps:
	$(Q)sh scripts/deps.sh

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)sh scripts/run.sh $(BUILD)/p11kms

unit: $(UNIT_BIN)
	$(Q)set -e; for t in $(UNIT_BIN); do P11KMS_SRCDIR=$(CURDIR) $$t; done

integration: all
	$(Q)P11KMS=$(abspath $(BUILD)/p11kms) sh tests/run-integration.sh

test: all $(UNIT_BIN) $(EXTRA_TEST_BIN) $(TEST_DEPS)
	$(Q)BUILD=$(BUILD) SANITIZE=$(SANITIZE) CC="$(CC)" sh tests/run-all.sh $(abspath $(BUILD)/p11kms) \
	    $(UNIT_BIN) $(EXTRA_TEST_BIN)

check: deps
	$(Q)$(MAKE) --no-print-directory WERROR=1 test
	$(Q)$(MAKE) --no-print-directory WERROR=1 SANITIZE=1 test
	$(Q)$(MAKE) --no-print-directory WERROR=1 tsan
	$(Q)sh scripts/deps.sh --packaging
	$(Q)$(MAKE) --no-print-directory WERROR=1 prom-check deb-check

asan:
	$(Q)$(MAKE) --no-print-directory SANITIZE=1 test

# The unit tests only (the integration suite under TSan would mostly test
# SoftHSM and p11-kit, which are not instrumented).
tsan:
	$(Q)$(MAKE) --no-print-directory SANITIZE=thread tsan-unit

tsan-unit: $(UNIT_BIN)
	$(Q)BUILD=$(BUILD) SANITIZE=thread UNIT_ONLY=1 CC="$(CC)" sh tests/run-all.sh - \
	    $(UNIT_BIN)

clean:
	rm -rf build build-asan build-tsan

distclean: clean
	rm -rf var

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
