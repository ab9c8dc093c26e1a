#!/bin/sh
# Installs the Debian 12 packages p11kms needs to build, run and test.
# As root it runs apt-get; otherwise it prints the line to run.
#
#   sh scripts/deps.sh            what make, make run and make check need
#   sh scripts/deps.sh --tokens   only the extra PKCS#11 implementations of
#                                 the token matrix (make check-tokens)
#   sh scripts/deps.sh --packaging  only what the packaging checks of make
#                                 check need (make deb-check, prom-check)
set -eu

PKGS="build-essential pkg-config p11-kit libp11-kit-dev softhsm2 opensc
libprotobuf-c-dev protobuf-c-compiler libnghttp2-dev libssl-dev libcmocka-dev libmicrohttpd-dev
libseccomp-dev
python3-grpcio python3-grpc-tools python3-protobuf python3-pytest python3-h2 python3-yaml nghttp2-client
systemd groff-base devscripts"

# devscripts: hardening-check, for the packaging test of the binary's
# compiler hardening.
# opencryptoki: its soft token (pkcsslotd, pkcsconf); util-linux: unshare,
# mount. tpm2-pkcs11 on swtpm behind tpm2-abrmd on a private dbus-daemon;
# libtss2-tcti-tabrmd0 is the TCTI that reaches abrmd (tpm2_ptool and the
# module need it), tpm2-tools holds the tpm2_* commands tpm2_ptool runs.
# p11-kit-modules: p11-kit-client.so, for p11-kit's RPC remoting.
TOKEN_PKGS="opencryptoki util-linux libtpm2-pkcs11-1 libtpm2-pkcs11-tools
tpm2-tools libtss2-tcti-tabrmd0 swtpm tpm2-abrmd dbus p11-kit-modules"

# lintian: checks the .deb; dpkg-dev: dpkg-shlibdeps for its Depends;
# util-linux: setpriv (the selftest as the p11kms user); passwd: useradd
# and userdel; prometheus: promtool, for the alert rules' tests.
PACKAGING_PKGS="lintian dpkg-dev util-linux passwd prometheus"

case ${1:-} in
--tokens) PKGS=$TOKEN_PKGS ;;
--packaging) PKGS=$PACKAGING_PKGS ;;
"") ;;
*) echo "usage: deps.sh [--tokens|--packaging]" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "p11kms: missing packages:$missing" >&2
	echo "p11kms: install them with:" >&2
	echo "  sudo apt-get install -y$missing" >&2
	exit 1
fi
echo "p11kms: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
