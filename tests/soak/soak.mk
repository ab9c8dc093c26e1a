# `make soak`: minutes of mixed gRPC load against the daemon on a throwaway
# SoftHSM token behind the fault-injecting module (tests/faultmod), with a
# fault schedule and SIGHUP reloads; reports requests served, failed by
# status, RSS at start and end. Not part of `make check`. See
# tests/soak/README.md. Included by the top Makefile.
#
#   make soak                       180 s on build/
#   make soak SOAK_SECONDS=30       a quick run
#   make soak SANITIZE=1            on the ASan+UBSan build (build-asan/)
#
# Fragments are read before the top Makefile's `all`; .DEFAULT_GOAL keeps
# `make` meaning `make all`. The fault module's rule is in
# tests/faultmod/faultmod.mk (named here by its path, not its variable, so
# the order in which fragments are read does not matter).

SOAK_SECONDS	?= 180
SOAK_PYTHON	?= /usr/bin/python3

.PHONY: soak

soak: all $(BUILD)/tests/libp11kms-fault.so
	$(Q)PYTHONDONTWRITEBYTECODE=1 P11KMS=$(abspath $(BUILD)/p11kms) \
	    SOAK_FAULT_MODULE=$(abspath $(BUILD)/tests/libp11kms-fault.so) \
	    SOAK_SECONDS=$(SOAK_SECONDS) $(SOAK_PYTHON) tests/soak/soak.py
