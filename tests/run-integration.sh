#!/bin/sh
# Runs the p11kms integration suite (pytest, Debian's python3 with grpc).
#
#   P11KMS=/abs/path/to/p11kms sh tests/run-integration.sh [pytest args...]
#
# Without a tests/... path among the arguments it runs all of
# tests/integration.
# Exits with pytest's status.
set -u

cd "$(dirname "$0")/.." || exit 2

if [ -z "${P11KMS:-}" ]; then
	echo "run-integration.sh: set P11KMS to the absolute path of the p11kms binary" >&2
	exit 2
fi
case $P11KMS in
/*) ;;
*) echo "run-integration.sh: P11KMS must be an absolute path: $P11KMS" >&2; exit 2 ;;
esac
if [ ! -x "$P11KMS" ]; then
	echo "run-integration.sh: $P11KMS is not an executable file" >&2
	exit 2
fi
export P11KMS

# No .pyc files or pytest cache written into the source tree.
export PYTHONDONTWRITEBYTECODE=1
where=tests/integration
for a in "$@"; do
	case $a in
	tests/*) where= ;;
	esac
done
/usr/bin/python3 -m pytest -q -p no:cacheprovider $where "$@"
exit $?
