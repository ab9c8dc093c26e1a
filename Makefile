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
#   V=1             show commands

.DEFAULT_GOAL := all

CC	?= cc
PKG_CONFIG ?= pkg-config
PKGS	= p11-kit-1 libprotobuf-c libnghttp2 libcrypto libmicrohttpd

CFLAGS	?= -O2 -g
CFLAGS	+= -std=gnu11 -Wall -Wextra -Wshadow -Wformat=2 -Wno-unused-parameter \
	   -Wmissing-prototypes -Wstrict-prototypes -MMD -MP
CFLAGS	+= -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
CFLAGS	+= $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
LDFLAGS	+= -pie -Wl,-z,relro,-z,now
LDLIBS	+= $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null) -lpthread
ifeq ($(CI),true)
CFLAGS	+= -Werror
endif
ifneq ($(WERROR),)
CFLAGS	+= -Werror
endif

ifneq ($(SANITIZE),)
BUILD	?= build-asan
CFLAGS	:= $(filter-out -O2 -D_FORTIFY_SOURCE=2,$(CFLAGS)) -O1 \
	   -fsanitize=address,undefined -fno-omit-frame-pointer \
	   -fno-sanitize-recover=undefined
LDFLAGS	+= -fsanitize=address,undefined
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

.PHONY: all run check test unit integration asan deps clean distclean
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
	$(Q)sh scripts/deps.sh --packaging
	$(Q)$(MAKE) --no-print-directory WERROR=1 prom-check deb-check

asan:
	$(Q)$(MAKE) --no-print-directory SANITIZE=1 test

clean:
	rm -rf build build-asan

distclean: clean
	rm -rf var

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
