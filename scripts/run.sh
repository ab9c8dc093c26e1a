#!/bin/sh
# `make run`: serve p11kms on ./var/kms.sock from a local SoftHSM token,
# creating the token and a non-extractable AES-256 KEK on first use.
# Usage: scripts/run.sh BUILD/p11kms
#
# Environment:
#   P11KMS_VAR  state folder: token, PINs, socket (default ./var)
#   P11KMS_OPS  ops endpoint, --ops-listen form (default 127.0.0.1:8787)
#
# The EncryptionConfiguration to paste is printed once the daemon answers
# Status ("p11kms status"), never before.
set -eu

bin=$1
var=${P11KMS_VAR:-$PWD/var}
module=/usr/lib/softhsm/libsofthsm2.so
label=kms
key=kek1

# Before var/ exists: it holds the PINs and the token (0700, files 0600).
umask 077
mkdir -p "$var"
chmod 700 "$var"
var=$(cd "$var" && pwd)
export SOFTHSM2_CONF="$var/softhsm2.conf"

if [ ! -f "$var/pin" ]; then
	echo "p11kms: creating a SoftHSM token in $var"
	mkdir -p "$var/tokens"
	cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $var/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
	# Random PINs, kept in files only readable by this user.
	openssl rand -hex 16 >"$var/so-pin"
	openssl rand -hex 16 >"$var/pin.new"
	# PINs from the files, never as arguments (any local user reads
	# those in /proc/PID/cmdline).
	"$bin" init-token --module "$module" --label "$label" \
	    --so-pin-file "$var/so-pin" --pin-file "$var/pin.new" >/dev/null
	# AES-256 KEK made by p11kms itself: sensitive, private,
	# non-extractable, encrypt/decrypt only (AES-GCM).
	"$bin" keygen --module "$module" --pin-file "$var/pin.new" \
	    "pkcs11:token=$label;object=$key" >/dev/null
	mv "$var/pin.new" "$var/pin"
fi

sock="$var/kms.sock"
ops=${P11KMS_OPS:-127.0.0.1:8787}
"$bin" --socket "$sock" --module "$module" \
    --key "pkcs11:token=$label;object=$key;type=secret-key" \
    --pin-file "$var/pin" --ops-listen "$ops" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' INT TERM

# Serving means Status answers over the socket (the daemon binds it only
# after a seal/open round trip in the token). Up to 60 s: a first start
# on a slow machine.
tries=0
until "$bin" status --config /dev/null --socket "$sock" --ops "$ops" \
    --timeout 2 >/dev/null 2>&1; do
	if ! kill -0 $pid 2>/dev/null; then
		wait $pid
		rc=$?
		echo "p11kms: the daemon exited with status $rc before serving" \
		    "(see its messages above)" >&2
		exit $rc
	fi
	tries=$((tries + 1))
	if [ $tries -ge 300 ]; then
		echo "p11kms: not serving after 60 s; stopping it" >&2
		kill -TERM $pid 2>/dev/null
		wait $pid
		exit 1
	fi
	sleep 0.2
done

cat <<EOF_CONF

Paste into the kube-apiserver --encryption-provider-config file:

apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: p11kms
          endpoint: unix://$sock
          timeout: 3s
      - identity: {}

Health and metrics: http://$ops/healthz and /metrics
State: $bin status --socket $sock --ops $ops
Serving in the foreground (pid $pid); stop with Ctrl-C.
EOF_CONF
wait $pid
rc=$?
# A first Ctrl-C interrupts wait; the daemon is still draining.
if kill -0 $pid 2>/dev/null; then
	wait $pid
	rc=$?
fi
exit $rc
