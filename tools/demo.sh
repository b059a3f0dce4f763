#!/usr/bin/env bash
# The main job, end to end: install, back up a folder into a local repository, mount the
# repository, and copy a file back out of the mount with cp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
export PATH="$PWD/${BACKUPFS_VENV:-.venv}/bin:$PATH"
work=$(mktemp -d /tmp/backupfs-demo.XXXXXX)
export BACKUPFS_REPOSITORY="$work/repo" BACKUPFS_PASSWORD="demo password"
mkdir -p "$work/src/docs"
echo "the quick brown fox" > "$work/src/docs/note.txt"
head -c 3000000 /dev/urandom > "$work/src/docs/data.bin"

backupfs init
backupfs backup "$work/src"
backupfs snapshots
backupfs ls latest
mkdir -p "$work/mnt"
backupfs mount "$work/mnt" & pid=$!
for _ in $(seq 100); do [ -e "$work/mnt/latest" ] && break; sleep 0.1; done
ls -l "$work/mnt/latest$work/src/docs/"
cp "$work/mnt/latest$work/src/docs/note.txt" "$work/note-from-mount.txt"
cmp "$work/src/docs/data.bin" "$work/mnt/latest$work/src/docs/data.bin"
kill -INT "$pid"; wait "$pid"
echo "copied back out of the mount: $(cat "$work/note-from-mount.txt")"
echo "demo files are in $work"
