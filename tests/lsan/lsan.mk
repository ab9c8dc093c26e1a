# LeakSanitizer set-up of the sanitizer test runs (make SANITIZE=1 test,
# the second half of make check): a dlclose() shim preloaded into the unit
# tests so foreign PKCS#11 modules keep their names in leak reports, the
# suppressions in tests/lsan/foreign.supp, and tests/lsan/test_lsan.sh
# proving that a leak in our code still fails. tests/run-all.sh applies
# them; nothing here is linked into p11kms.

ifneq ($(filter-out thread,$(SANITIZE)),)
LSAN_KEEPMODS = $(BUILD)/tests/libp11kms-keepmods.so
TEST_DEPS += $(LSAN_KEEPMODS) $(BUILD)/tests/libp11kms-foreignleak.so \
	     $(BUILD)/tests/leakcheck
EXTRA_TEST_BIN += tests/lsan/test_lsan.sh
endif

# The shim is not instrumented: it must load before nothing but the ASan
# runtime and calls nothing.
$(BUILD)/tests/libp11kms-keepmods.so: tests/lsan/keepmods.c
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) -O2 -Wall -Wextra -shared -fPIC -o $@ $<

$(BUILD)/tests/libp11kms-foreignleak.so: tests/lsan/foreignleak.c
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) -O0 -g -Wall -Wextra -shared -fPIC -o $@ $<

$(BUILD)/tests/leakcheck: tests/lsan/leakcheck.c
	$(E) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< -ldl
