#!/bin/sh
# `make deb-check` (run by `make check` as root): the .deb as an operator
# meets it. Builds it, runs lintian (any error fails), installs it with
# dpkg -i, checks the layout, runs `p11kms --version`, makes a SoftHSM
# token owned by the p11kms user, runs keygen and a selftest as that user,
# serves the installed daemon as that user and asks it with `p11kms status`
# and `p11kms reload`, then purges the package. Whatever happens, the EXIT
# trap stops the daemon, purges the package, removes the temp folder and
# the p11kms user if this script created it: nothing is left installed.
#
#   sh scripts/deb-check.sh BUILD
set -u

build=$1
cd "$(dirname "$0")/.." || exit 1

if [ "$(id -u)" -ne 0 ]; then
	echo "deb-check: skipped: installing a package needs root"
	exit 0
fi
if dpkg-query -W -f='${Status}\n' p11kms 2>/dev/null | grep -q 'installed'
then
	echo "deb-check: p11kms is already installed on this machine; not" \
	    "replacing it (dpkg --purge p11kms first)" >&2
	exit 1
fi

made_user=0
getent passwd p11kms >/dev/null || made_user=1
tmp=$(mktemp -d)
pid=
fail=0

cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	if dpkg-query -W -f='${Status}\n' p11kms 2>/dev/null |
	    grep -qv 'not-installed'; then
		dpkg --purge p11kms >/dev/null 2>&1 ||
			echo "deb-check: !! could not purge p11kms" >&2
	fi
	if [ $made_user -eq 1 ] && getent passwd p11kms >/dev/null; then
		userdel p11kms 2>/dev/null
		getent group p11kms >/dev/null && groupdel p11kms 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ok() { echo "deb-check: ok    $*"; }
bad() { echo "deb-check: FAIL  $*" >&2; fail=1; }
must() {	# must WHAT CMD...: run CMD, its output in the log on failure
	what=$1
	shift
	if "$@" >"$tmp/out" 2>&1; then
		ok "$what"
	else
		bad "$what (exit $?):"
		sed 's/^/    /' "$tmp/out" >&2
	fi
}
# setpriv execs (runuser forks and would leave a daemon behind on kill).
as_user() {
	setpriv --reuid p11kms --regid p11kms --init-groups \
	    env SOFTHSM2_CONF="$tmp/softhsm2.conf" "$@"
}

deb=$(sh scripts/deb.sh "$build" "$build") || { bad "make deb"; exit 1; }
ok "built $(basename "$deb")"
dpkg -c "$deb" >"$tmp/listing"
for f in ./usr/sbin/p11kms ./usr/share/man/man8/p11kms.8.gz \
    ./usr/lib/systemd/system/p11kms.service ./etc/p11kms/p11kms.conf \
    ./usr/lib/sysusers.d/p11kms.conf ./usr/lib/tmpfiles.d/p11kms.conf \
    ./usr/share/doc/p11kms/copyright; do
	grep -q " $f\$" "$tmp/listing" || bad "the package lacks $f"
done
dpkg-deb -f "$deb" Depends | grep -q libp11-kit0 ||
	bad "Depends lacks the shared libraries: $(dpkg-deb -f "$deb" Depends)"
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = \
    /etc/p11kms/p11kms.conf ] || bad "conffiles is not /etc/p11kms/p11kms.conf"

if command -v lintian >/dev/null; then
	lintian --tag-display-limit 0 "$deb" >"$tmp/lintian" 2>&1
	if grep -q '^E: ' "$tmp/lintian"; then
		bad "lintian reports errors:"
		sed 's/^/    /' "$tmp/lintian" >&2
	else
		ok "lintian: no errors$(grep -c '^W: ' "$tmp/lintian" |
		    sed 's/^0$//; s/^[1-9].*/ (& warnings)/')"
		grep '^W: ' "$tmp/lintian"
	fi
else
	bad "lintian is not installed (sh scripts/deps.sh --packaging)"
fi

must "dpkg -i" dpkg -i "$deb"
must "p11kms --version" /usr/sbin/p11kms --version
getent passwd p11kms >/dev/null && ok "user p11kms exists" ||
	bad "no p11kms user after install"
[ "$(stat -c '%a %U %G' /etc/p11kms)" = "750 root p11kms" ] &&
	ok "/etc/p11kms 0750 root:p11kms" ||
	bad "/etc/p11kms is $(stat -c '%a %U %G' /etc/p11kms)"
if command -v systemd-analyze >/dev/null; then
	must "systemd-analyze verify" sh -c 'systemd-analyze verify \
	    /usr/lib/systemd/system/p11kms.service 2>&1 | grep p11kms && \
	    exit 1; exit 0'
fi

# A SoftHSM token of the p11kms user's own, a key, a selftest.
chown p11kms:p11kms "$tmp"
chmod 0700 "$tmp"
mkdir "$tmp/tokens"
cat >"$tmp/softhsm2.conf" <<CONF
directories.tokendir = $tmp/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
openssl rand -hex 16 >"$tmp/pin"
chown -R p11kms:p11kms "$tmp"
chmod 0400 "$tmp/pin"
must "SoftHSM token as p11kms" as_user softhsm2-util --init-token --free \
    --label kms --so-pin "$(openssl rand -hex 16)" --pin "$(cat "$tmp/pin")"
must "keygen as p11kms" as_user /usr/sbin/p11kms keygen \
    --module /usr/lib/softhsm/libsofthsm2.so --pin-file "$tmp/pin" \
    'pkcs11:token=kms;object=kek1'
cat >"$tmp/p11kms.conf" <<CONF
socket = $tmp/kms.sock
module = /usr/lib/softhsm/libsofthsm2.so
key = pkcs11:token=kms;object=kek1;type=secret-key
pin-file = $tmp/pin
ops-listen = unix:$tmp/ops.sock
pid-file = $tmp/p11kms.pid
CONF
chown p11kms:p11kms "$tmp/p11kms.conf"
must "selftest as p11kms" as_user /usr/sbin/p11kms selftest \
    --config "$tmp/p11kms.conf"
grep -q '^p11kms: ready: 1 key passed' "$tmp/out" ||
	bad "selftest did not say ready: $(cat "$tmp/out")"

# The installed daemon, as p11kms; status and reload against it.
# Not through the function: $! must be the daemon itself (setpriv and env
# exec it), not a subshell.
setpriv --reuid p11kms --regid p11kms --init-groups \
    env SOFTHSM2_CONF="$tmp/softhsm2.conf" \
    /usr/sbin/p11kms --config "$tmp/p11kms.conf" >"$tmp/daemon.log" 2>&1 \
    </dev/null &
pid=$!
n=0
until as_user /usr/sbin/p11kms status --config "$tmp/p11kms.conf" \
    >"$tmp/status" 2>&1; do
	n=$((n + 1))
	if [ $n -ge 100 ] || ! kill -0 $pid 2>/dev/null; then
		bad "the installed daemon did not serve:"
		sed 's/^/    /' "$tmp/status" "$tmp/daemon.log" >&2
		break
	fi
	sleep 0.2
done
[ $n -lt 100 ] && kill -0 $pid 2>/dev/null && ok "p11kms status: healthy"
must "p11kms reload" as_user /usr/sbin/p11kms reload --config \
    "$tmp/p11kms.conf"
kill $pid 2>/dev/null
wait $pid 2>/dev/null
pid=
# The daemon's token processes end on their own once it is gone (socket
# EOF, PR_SET_PDEATHSIG): a moment for them, then any left is a bug.
n=0
while pgrep -u p11kms >/dev/null && [ $n -lt 50 ]; do
	n=$((n + 1))
	sleep 0.1
done
pgrep -u p11kms >/dev/null && bad "a p11kms process outlived the test"

must "dpkg --purge" dpkg --purge p11kms
dpkg-query -W -f='${Status}\n' p11kms 2>/dev/null | grep -q 'installed' &&
	! dpkg-query -W -f='${Status}\n' p11kms | grep -q 'not-installed' &&
	bad "p11kms is still installed after purge"
[ -e /etc/p11kms ] && bad "/etc/p11kms is left after purge"
[ -e /usr/sbin/p11kms ] && bad "/usr/sbin/p11kms is left after purge"

if [ $fail -eq 0 ]; then
	echo "deb-check: passed"
else
	echo "deb-check: FAILED" >&2
fi
exit $fail
