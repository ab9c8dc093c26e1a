#!/bin/sh
# Entry point of the p11kms SoftHSM demo image (docker/Dockerfile.softhsm).
# First start: creates a SoftHSM token "kms" and the key "kek1" under
# $P11KMS_STATE with random PINs kept in 0600 files. Every start: serves on
# $P11KMS_SOCKET (/run/p11kms/kms.sock) with the ops endpoint on $P11KMS_OPS
# (all interfaces of the container, for `docker run -p 127.0.0.1:8787:8787`)
# and the keys of $P11KMS_CONFIG if mounted, else of $P11KMS_STATE/p11kms.conf.
# The image sets SOFTHSM2_CONF to the same file as here, so `podman exec`
# of p11kms keys/keygen/status/reload sees the token. Extra arguments go to
# p11kms.
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

# The keys come from a config file, never from --key, so a rotation is a
# config edit and `p11kms reload`. A file mounted at $P11KMS_CONFIG
# (/etc/p11kms/p11kms.conf) wins; else the first start writes one into the
# state volume, which the operator edits in place (podman exec ... vi).
conf=${P11KMS_CONFIG:-/etc/p11kms/p11kms.conf}
if [ ! -f "$conf" ]; then
	conf=$state/p11kms.conf
	if [ ! -f "$conf" ]; then
		cat >"$conf" <<CONF
# Written by the p11kms SoftHSM demo's first start. Rotate: p11kms keygen
# a kek2, put its key line first, keep kek1 second, then p11kms reload.
module = $module
pin-file = $state/pin
key = $uri;type=secret-key
# As the entry point's flags, so that p11kms status/reload --config finds
# the daemon.
socket = $socket
ops-listen = $ops
pid-file = ${socket%/*}/p11kms.pid
CONF
	fi
fi

exec p11kms --config "$conf" --socket "$socket" --ops-listen "$ops" \
    --pid-file "${socket%/*}/p11kms.pid" "$@"
