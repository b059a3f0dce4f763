#!/usr/bin/env bash
# Installs what the tests need (Debian and Python packages) and runs them all: lint, types,
# then pytest (real FUSE mounts, real sshd and S3 servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh --test
export PATH="$PWD/${BACKUPFS_VENV:-.venv}/bin:$PATH"
python -m ruff check backupfs tests tools
python -m mypy
python -m pytest -q -p no:cacheprovider "$@"
