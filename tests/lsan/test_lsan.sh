#!/bin/sh
# Checks the LeakSanitizer set-up of the sanitizer test runs (run by
# tests/run-all.sh in SANITIZE builds, with its LSAN_OPTIONS, and in
# P11KMS_TEST_PRELOAD the preload it gives the unit tests):
#   1. a leak inside a foreign library that was dlclose()d is suppressed;
#   2. a leak in our own code still fails, and the report names it;
#   3. no leak: exit 0;
# and that both halves are needed: without the suppressions the foreign
# leak is reported, without the shim its frame no longer names the library.
# Prints "N passed, N failed".
set -u
b=${BUILD:-build-asan}/tests
pass=0
fail=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM

check() {	# check NAME WANT_EXIT_0(yes|no) GREP_PATTERN PRELOAD LSAN_OPTIONS ARGS...
	name=$1 want=$2 pat=$3 pre=$4 lsan=$5
	shift 5
	LD_PRELOAD=$pre LSAN_OPTIONS=$lsan "$b/leakcheck" "$@" >"$out" 2>&1
	rc=$?
	ok=1
	if [ "$want" = yes ] && [ $rc -ne 0 ]; then ok=0; fi
	if [ "$want" = no ] && [ $rc -eq 0 ]; then ok=0; fi
	case $pat in
	"") ;;
	!*) if grep -q "${pat#!}" "$out"; then ok=0; fi ;;	# must not appear
	*) if ! grep -q "$pat" "$out"; then ok=0; fi ;;
	esac
	if [ $ok -eq 1 ]; then
		echo "ok   $name (exit $rc)"
		pass=$((pass + 1))
	else
		echo "FAIL $name (exit $rc):"
		sed 's/^/     /' "$out" | head -n 30
		fail=$((fail + 1))
	fi
}

case ${LSAN_OPTIONS:-} in
*suppressions=*) ;;
*) echo "FAIL LSAN_OPTIONS names no suppressions file: ${LSAN_OPTIONS:-(unset)}"
   fail=$((fail + 1)) ;;
esac
if [ -z "${P11KMS_TEST_PRELOAD:-}" ]; then
	echo "FAIL P11KMS_TEST_PRELOAD is empty: run-all.sh found no dlclose shim"
	fail=$((fail + 1))
fi
pre=${P11KMS_TEST_PRELOAD:-}
opts=${LSAN_OPTIONS:-}
lib=$PWD/$b/libp11kms-foreignleak.so
check "no leak passes" yes "" "$pre" "$opts" none
check "foreign module's leak is suppressed" yes "" "$pre" "$opts" foreign "$lib"
check "our leak is caught" no "leakcheck.c" "$pre" "$opts" ours
# Without the suppressions the foreign leak is seen: the test above passes
# because of foreign.supp, not because nothing leaked.
check "foreign leak seen without suppressions" no "foreignleak_init" \
    "$pre" "" foreign "$lib"
# Without the dlclose shim the unloaded library has no name left, so its
# leak cannot be suppressed: why run-all.sh preloads the shim. The frame
# reads "<unknown module>", or, when something else was mapped where the
# library was, that mapping's name: never the library's.
check "without the shim the leak is not the library's" no \
    "!libp11kms-foreignleak" "" "$opts" foreign "$lib"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
