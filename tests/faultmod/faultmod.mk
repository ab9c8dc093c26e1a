# Fault-injecting PKCS#11 module (test-only: p11kms never links it) and its
# cmocka test. Included by the top Makefile.
#
# The .so gets the project's warning flags but -fPIC instead of -fPIE and
# no -pie. In a SANITIZE build it is instrumented too: GCC links it against
# the shared libasan/libubsan that the ASan daemon (or test) has already
# loaded, so dlopen works there. Loaded into an uninstrumented process it
# would abort ("ASan runtime does not come first"), which never happens:
# build-asan/ binaries load build-asan/ modules. (An uninstrumented .so
# works in both.) -z nodelete keeps its counters and the loaded target
# across p11-kit's dlclose on module release.

# The Makefile includes fragments before its `all:` rule, so the first rule
# here would become the default goal: keep `make` meaning `make all`.

FAULTMOD_SO	= $(BUILD)/tests/libp11kms-fault.so
FAULTMOD_TEST	= $(BUILD)/tests/test_faultmod
FAULTMOD_CFLAGS	= $(filter-out -fPIE,$(CFLAGS)) -fPIC -fvisibility=hidden
FAULTMOD_LDFLAGS = $(filter-out -pie,$(LDFLAGS)) -shared -Wl,-z,nodelete \
		   -Wl,--no-undefined

TEST_DEPS	+= $(FAULTMOD_SO)
EXTRA_TEST_BIN	+= $(FAULTMOD_TEST)

$(FAULTMOD_SO): tests/faultmod/faultmod.c
	$(E) CCLD $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(FAULTMOD_CFLAGS) $(FAULTMOD_LDFLAGS) -o $@ $< \
	    -ldl -lpthread

$(FAULTMOD_TEST): tests/faultmod/test_faultmod.c | $(FAULTMOD_SO)
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LDLIBS) -lcmocka
