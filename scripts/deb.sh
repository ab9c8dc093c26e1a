#!/bin/sh
# `make deb`: builds p11kms_VERSION_ARCH.deb from a staged `make install`
# (PREFIX=/usr), with dpkg-deb only (no debhelper, no debian/ source tree).
#
#   sh scripts/deb.sh BUILD OUTDIR
#
# BUILD is the build folder holding the stripped, staged tree's binary;
# the package lands in OUTDIR. Layout: the binary and p11kms(8), the unit,
# sysusers.d and tmpfiles.d entries for the p11kms user and /run/p11kms,
# /etc/p11kms/p11kms.conf as a conffile, docs and examples, and the
# maintainer scripts of pkg/deb/. Depends comes from dpkg-shlibdeps.
set -eu

build=$1
out=$2
cd "$(dirname "$0")/.."
version=$(sed -n 's/^#define P11KMS_VERSION[[:space:]]*"\(.*\)"/\1/p' \
    plugin/version.h)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "deb.sh: no P11KMS_VERSION" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
umask 022

make --no-print-directory BUILD="$build" DESTDIR="$root" PREFIX=/usr \
    INSTALL_STRIP=-s install >/dev/null
# Debian's strip: also the compiler's .comment notes.
strip --remove-section=.comment --remove-section=.note \
    "$root/usr/sbin/p11kms"
doc=$root/usr/share/doc/p11kms
install -d -m 0755 "$root/etc/p11kms" "$root/usr/lib/sysusers.d" \
    "$root/usr/lib/tmpfiles.d" "$root/DEBIAN"
install -m 0644 conf/p11kms.conf "$root/etc/p11kms/p11kms.conf"
install -m 0644 pkg/deb/sysusers.conf "$root/usr/lib/sysusers.d/p11kms.conf"
install -m 0644 pkg/deb/tmpfiles.conf "$root/usr/lib/tmpfiles.d/p11kms.conf"
install -m 0644 pkg/deb/copyright "$doc/copyright"
# Debian's layout: compressed man page and long docs, a changelog.
gzip -9n "$root/usr/share/man/man8/p11kms.8"
for f in "$doc"/*.md "$doc"/examples/README.md; do
	[ "$(wc -c <"$f")" -gt 4096 ] && gzip -9n "$f"
done
{
	echo "p11kms ($version) unstable; urgency=medium"
	echo
	echo "  * Built from the source tree with make deb."
	echo
	echo " -- p11kms maintainers <maintainers@users.noreply.r-seed-9876b1c4.example>  $(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n >"$doc/changelog.gz"

for s in postinst prerm postrm; do
	install -m 0755 "pkg/deb/$s" "$root/DEBIAN/$s"
done
echo /etc/p11kms/p11kms.conf >"$root/DEBIAN/conffiles"

# Shared-library dependencies, as dpkg-shlibdeps computes them; it wants
# a debian/control beside it.
mkdir -p "$work/src/debian"
printf 'Source: p11kms\n\nPackage: p11kms\nArchitecture: any\n' \
    >"$work/src/debian/control"
deps=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/sbin/p11kms" \
    2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$deps" ] || { echo "deb.sh: dpkg-shlibdeps found nothing" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@DEPENDS@/$deps/" pkg/deb/control.in >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print |
    sed 's|^\./||' | sort | xargs md5sum) >"$root/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/p11kms_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
