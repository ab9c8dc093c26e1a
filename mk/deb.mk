# make deb        builds $(BUILD)/p11kms_VERSION_ARCH.deb (scripts/deb.sh)
# make deb-check  as root: builds it, runs lintian, installs it with
#                 dpkg -i, runs p11kms --version and a selftest as the
#                 p11kms user on a SoftHSM token, purges it
#                 (scripts/deb-check.sh; make check runs it as root)

.PHONY: deb deb-check

deb: $(BUILD)/p11kms
	$(E) DEB '$(BUILD)'
	$(Q)sh scripts/deb.sh $(BUILD) $(BUILD)

deb-check: $(BUILD)/p11kms
	$(Q)sh scripts/deb-check.sh $(BUILD)
