#!/bin/sh
# Entry point of the p11kms SoftHSM demo image (docker/Dockerfile.softhsm).
# First start: creates a SoftHSM token "kms" and the key "kek1" under
# $P11KMS_STATE with random PINs kept in 0600 files. Every start: serves on
# $P11KMS_SOCKET (/run/p11kms/kms.sock) with the ops endpoint on $P11KMS_OPS
# (all interfaces of the container, for `docker run -p 127.0.0.1:8787:8787`).
# Extra arguments go to p11kms.
set -eu

state=${P11KMS_STATE:-/var/lib/p11kms}
ops=${P11KMS_OPS:-0.0.0.0:8787}
socket=${P11KMS_SOCKET:-/run/p11kms/kms.sock}
module=/usr/lib/softhsm/libsofthsm2.so
uri='pkcs11:token=kms;object=kek1'
umask 077
export SOFTHSM2_CONF="$state/softhsm2.conf"

random_pin() {
	od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

if [ ! -f "$state/pin" ]; then
	echo "p11kms-softhsm: creating a SoftHSM token in $state" >&2
	# Leftovers of a first start that did not finish would make a second
	# token with the same label.
	rm -rf "$state/tokens" "$state/pin.new"
	mkdir -p "$state/tokens"
	cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $state/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
	random_pin >"$state/so-pin"
	random_pin >"$state/pin.new"
	# PINs from the files, never as arguments (softhsm2-util takes them
	# only there, where /proc/PID/cmdline shows them to everyone).
	p11kms init-token --module "$module" --label kms \
	    --so-pin-file "$state/so-pin" --pin-file "$state/pin.new" >/dev/null
	p11kms keygen --module "$module" --pin-file "$state/pin.new" "$uri" >&2
	mv "$state/pin.new" "$state/pin"
fi

exec p11kms --module "$module" --pin-file "$state/pin" \
    --key "$uri;type=secret-key" --socket "$socket" \
    --ops-listen "$ops" "$@"
