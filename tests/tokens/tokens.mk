# make check-tokens: p11kms against real PKCS#11 implementations (SoftHSM,
# opencryptoki's soft token, tpm2-pkcs11 on swtpm, p11-kit remoting), one
# table of cells compared with tests/tokens/expected.tsv. Installs the
# matrix's own packages first (scripts/deps.sh --tokens; `make run` and
# `make check` never need them). The table is also written to
# $(BUILD)/tokens-matrix.txt. Needs root for opencryptoki's mount namespace.

.PHONY: check-tokens deps-tokens

deps-tokens: deps
	$(Q)sh scripts/deps.sh --tokens

check-tokens: deps-tokens
	$(Q)$(MAKE) --no-print-directory all
	$(Q)/usr/bin/python3 tests/tokens/matrix.py --p11kms $(BUILD)/p11kms \
	    --expected tests/tokens/expected.tsv --out $(BUILD)/tokens-matrix.txt
