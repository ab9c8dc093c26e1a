#!/bin/sh
# Runs every test suite: the C unit tests, then the integration tests
# against a real SoftHSM token with python3-grpcio as the client.
# Usage: tests/run-all.sh /abs/path/to/p11kms UNIT_TEST_BINARY...
# UNIT_ONLY=1: the unit tests only (the daemon path is then unused: "-").
# Prints one closing line "check: N passed, N failed" over all suites and
# exits non-zero when anything failed.
set -u
cd "$(dirname "$0")/.." || exit 1
bin=$1
shift
label=${BUILD:-build}
passed=0
failed=0
log=$(mktemp)
# A test that loads every module registered with p11-kit also loads
# tpm2_pkcs11 when it is installed, which creates its sqlite store in
# $HOME/.tpm2_pkcs11 unless TPM2_PKCS11_STORE names one: keep it here.
TPM2_PKCS11_STORE=$(mktemp -d)
export TPM2_PKCS11_STORE
trap 'rm -f "$log"; rm -rf "$TPM2_PKCS11_STORE"' EXIT INT TERM

count() {	# count PATTERN FILE: first number on the line matching PATTERN
	sed -n "s/$1/\\1/p" "$2" | tail -n 1
}

# Sanitizer builds: leaks inside foreign libraries (PKCS#11 modules other
# than ours that p11-kit registers on this machine, e.g. tpm2_pkcs11 or
# opensc) are suppressed by name (tests/lsan/foreign.supp), for the unit
# tests and the daemons of the integration tests alike. The unit tests also
# get a dlclose() that keeps modules mapped, so their frames still have a
# name when LeakSanitizer reports at exit; the ASan runtime must be first.
preload=
if [ "${SANITIZE:-}" = thread ]; then
	# ThreadSanitizer (make tsan, unit tests only): races inside
	# libraries that are not instrumented (SoftHSM, p11-kit, OpenSSL)
	# are suppressed by name (tests/tsan/foreign.supp); a race in our
	# code still fails the run (halt_on_error, exitcode 66).
	TSAN_OPTIONS="suppressions=$PWD/tests/tsan/foreign.supp:halt_on_error=1:exitcode=66:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
	export TSAN_OPTIONS
elif [ -n "${SANITIZE:-}" ]; then
	LSAN_OPTIONS="suppressions=$PWD/tests/lsan/foreign.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
	export LSAN_OPTIONS
	keep=$PWD/$label/tests/libp11kms-keepmods.so
	rt=$(${CC:-cc} -print-file-name=libasan.so)
	if [ -f "$keep" ] && [ -f "$rt" ]; then
		preload="$rt $keep"
	else
		echo "!! no dlclose shim ($keep) or ASan runtime ($rt):" \
		    "foreign modules' leaks may be reported as <unknown module>"
	fi
fi

for t in "$@"; do
	echo "== unit: $t"
	case $t in	# a script sets the preload for what it runs itself
	*.sh) pre= ;;
	*) pre=$preload ;;
	esac
	P11KMS_SRCDIR=$PWD LD_PRELOAD=$pre P11KMS_TEST_PRELOAD=$preload \
	    "$t" >"$log" 2>&1
	rc=$?
	cat "$log"
	p=$(count '^\[  PASSED  \] \([0-9]*\) test.*' "$log")
	f=$(count '^\[  FAILED  \] \([0-9]*\) test.*' "$log")
	if [ -z "$p$f" ]; then	# a plain "N passed, N failed" line
		p=$(count '^\([0-9][0-9]*\) passed, [0-9]* failed.*' "$log")
		f=$(count '^[0-9]* passed, \([0-9][0-9]*\) failed.*' "$log")
	fi
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0}))
	if [ $rc -ne 0 ] && [ "${f:-0}" -eq 0 ]; then
		echo "!! $t exited $rc (crash or sanitizer report)"
		failed=$((failed + 1))
	fi
done

# integration WHAT [pytest args]: one pytest run, its counts added up.
integration() {
	what=$1
	shift
	echo "== integration ($label$what)"
	P11KMS=$bin P11KMS_TEST_PRELOAD=$preload \
	    sh tests/run-integration.sh "$@" >"$log" 2>&1
	rc=$?
	cat "$log"
	p=$(count '.* \([0-9][0-9]*\) passed.*' "$log")
	[ -n "$p" ] || p=$(count '^\([0-9][0-9]*\) passed.*' "$log")
	f=$(count '^\([0-9][0-9]*\) failed.*' "$log")
	[ -n "$f" ] || f=$(count '.* \([0-9][0-9]*\) failed.*' "$log")
	e=$(count '.* \([0-9][0-9]*\) error.*' "$log")
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0} + ${e:-0}))
	if [ $rc -ne 0 ] && [ "${f:-0}" -eq 0 ] && [ "${e:-0}" -eq 0 ]; then
		echo "!! integration tests$what exited $rc"
		failed=$((failed + 1))
	fi
	if [ "${p:-0}" -eq 0 ]; then
		echo "!! integration tests$what ran nothing"
		failed=$((failed + 1))
	fi
}

if [ -n "${UNIT_ONLY:-}" ]; then
	echo "$label: $passed passed, $failed failed"
	[ "$failed" -eq 0 ]
	exit
fi

integration ""
# The API, rotation and fault tests again in front of each FIPS-mode way
# of making GCM IVs in the token (tests/faultmod emulates them; append12
# differs from append only in the IV length, covered in test_portability).
for form in writeback append message; do
	P11KMS_TEST_GCM_IV=$form integration ", GCM IV $form" \
	    tests/integration/test_api.py tests/integration/test_rotation.py \
	    tests/integration/test_faults.py
done

echo "$label: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
