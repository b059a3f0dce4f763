#!/usr/bin/env bash
# Installs what the tests need (Debian and Python packages) and runs them all: lint, types,
# then pytest (real FUSE mounts, real sshd and S3 servers on 127.0.0.1).
#
# pytest runs in a temporary folder of its own (--basetemp), removed afterwards, so one run never
# walks another's leftovers (pytest's own clean-up of numbered folders fails on a mount point that
# a killed run left behind). The names of failed tests are printed again as the last lines, where
# a CI log that keeps only its tail still shows them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh --test
export PATH="$PWD/${BACKUPFS_VENV:-.venv}/bin:$PATH"
python -m ruff check backupfs tests tools
python -m mypy

base=$(mktemp -d /tmp/backupfs-tests.XXXXXX)
log="$base.log"
cleanup() {
    # a mount a test left behind would stop rm; each is named, then detached
    findmnt -rn -o TARGET | { grep -F "$base/" || true; } | while read -r mnt; do
        echo "left mounted by a test: $mnt" >&2
        fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" || true
    done
    rm -rf "$base" "$log"
}
trap cleanup EXIT
status=0
python -m pytest -q -p no:cacheprovider --basetemp "$base" "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
    echo "pytest exited $status; failed:"
    grep -E '^(FAILED|ERROR) ' "$log" || echo "(no FAILED lines: see above)"
fi
exit "$status"
