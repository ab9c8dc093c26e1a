#!/bin/sh
# Makes a throwaway SoftHSM token holding one AES key, for tests.
#
#   sh tests/mktoken.sh DIR [--label kek1] [--id 01] [--len 32]
#       [--extractable] [--no-gcm] [--no-kwp] [--token kms] [--add-key-only] [--pin 1234]
#
# Writes DIR/softhsm2.conf, DIR/tokens/, DIR/pin (mode 0600, "1234\n"), a
# token (SO PIN 5678, user PIN 1234 or --pin) and an AES key generated in it
# (sensitive, private; non-extractable unless --extractable). --add-key-only
# adds a key to the existing token in DIR. --len is the key length in bytes.
# --no-gcm (SoftHSM without CKM_AES_GCM) and --no-kwp (without
# CKM_AES_KEY_WRAP_PAD: with both, AES-ECB is the only AES path, as on a
# TPM) apply when DIR is new. Called
# again on the same DIR without --add-key-only, it adds another token.
# Touches nothing outside DIR: SoftHSM only ever sees DIR/softhsm2.conf.
# Use the token with SOFTHSM2_CONF=DIR/softhsm2.conf.
set -eu

die() {
	echo "mktoken.sh: $*" >&2
	exit 1
}

# Runs a command quietly (pkcs11-tool and softhsm2-util chat on stdout);
# shows what it said only when it fails.
quiet() {
	if ! out=$("$@" 2>&1); then
		printf '%s\n' "$out" >&2
		die "failed: $1"
	fi
}

[ $# -ge 1 ] || die "usage: mktoken.sh DIR [--label L] [--id HEX] \
[--len 16|24|32] [--extractable] [--no-gcm] [--no-kwp] [--token T] [--add-key-only] \
[--pin PIN]"
dir=$1
shift
label=kek1
id=01
len=32
extractable=
nogcm=
nokwp=
token=kms
addonly=
pin=1234
while [ $# -gt 0 ]; do
	case $1 in
	--label) [ $# -ge 2 ] || die "--label needs a value"; label=$2; shift ;;
	--id) [ $# -ge 2 ] || die "--id needs a value"; id=$2; shift ;;
	--len) [ $# -ge 2 ] || die "--len needs a value"; len=$2; shift ;;
	--token) [ $# -ge 2 ] || die "--token needs a value"; token=$2; shift ;;
	--pin) [ $# -ge 2 ] || die "--pin needs a value"; pin=$2; shift ;;
	--extractable) extractable=--extractable ;;
	--no-gcm) nogcm=1 ;;
	--no-kwp) nokwp=1 ;;
	--add-key-only) addonly=1 ;;
	*) die "unknown option $1" ;;
	esac
	shift
done

module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -e "$module" ] || module=/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so
[ -e "$module" ] || die "SoftHSM module not found (set SOFTHSM2_MODULE)"
command -v softhsm2-util >/dev/null ||
	die "softhsm2-util not found (apt-get install softhsm2)"
command -v pkcs11-tool >/dev/null ||
	die "pkcs11-tool not found (apt-get install opensc)"

mkdir -p "$dir" || die "cannot create $dir"
dir=$(cd "$dir" && pwd) || die "cannot enter $dir"
conf=$dir/softhsm2.conf

if [ -n "$addonly" ]; then
	[ -f "$conf" ] ||
		die "$conf missing: make the token first (no --add-key-only)"
else
	if [ ! -f "$conf" ]; then
		{
			echo "directories.tokendir = $dir/tokens"
			echo "objectstore.backend = file"
			echo "log.level = ERROR"
			echo "slots.removable = false"
			# SoftHSM 2.6.1 reads the first name of a "-" list
			# with its "-" and ignores it as unknown: name GCM
			# twice so it is off with or without that bug.
			off=
			[ -n "$nogcm" ] && off="CKM_AES_GCM"
			[ -n "$nokwp" ] && off="${off:+$off,}CKM_AES_KEY_WRAP_PAD"
			if [ -n "$off" ]; then
				echo "slots.mechanisms = -$off,$off"
			fi
		} >"$conf" || die "cannot write $conf"
	fi
	mkdir -p "$dir/tokens" || die "cannot create $dir/tokens"
fi

SOFTHSM2_CONF=$conf
export SOFTHSM2_CONF

if [ -z "$addonly" ]; then
	quiet softhsm2-util --init-token --free --label "$token" \
	    --so-pin 5678 --pin "$pin"
	(umask 077 && printf '%s\n' "$pin" >"$dir/pin" &&
	    chmod 600 "$dir/pin") ||
		die "cannot write $dir/pin"
fi

quiet pkcs11-tool --module "$module" --token-label "$token" --login \
    --pin "$pin" --keygen --key-type "AES:$len" --label "$label" --id "$id" \
    --sensitive --private $extractable
