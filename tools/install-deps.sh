#!/usr/bin/env bash
# Installs everything backupfs and its tests need on a fresh Debian machine (run as root).
# Usage: tools/install-deps.sh [--test]   (--test adds what the test suite and benchmarks need)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

apt_pkgs=(fuse3 libfuse3-dev pkg-config gcc python3-dev)
pip_extra=""
if [[ "${1:-}" == "--test" ]]; then
    apt_pkgs+=(rsync acl attr restic borgbackup openssh-server openssh-client)
    pip_extra="[test]"
fi

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".${pip_extra}"
