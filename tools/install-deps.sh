#!/usr/bin/env bash
# Installs everything backupfs needs on a fresh Debian machine (run as root), into a virtual
# environment at .venv (Debian's Python refuses system-wide pip installs, PEP 668).
# Usage: tools/install-deps.sh [--test]   (--test adds what the test suite and benchmarks need)
# Afterwards: `source .venv/bin/activate`, or call .venv/bin/backupfs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

apt_pkgs=(fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv)
pip_extra=""
if [[ "${1:-}" == "--test" ]]; then
    # ceph-*, radosgw: a single-node Ceph cluster with its S3 gateway (tools/ceph_rgw.py);
    # zbar-tools: zbarimg decodes the QR code of `key export --qr-html`; zsh, fish: completion tests
    # sqlite3: the verify --exec test checks a database with it
    apt_pkgs+=(rsync acl attr sqlite3 restic borgbackup python3-llfuse openssh-server openssh-client zbar-tools zsh fish
              ceph-mon ceph-mgr ceph-osd radosgw ceph-common)
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

venv="${BACKUPFS_VENV:-.venv}"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${pip_extra}"
# An editable install compiles nothing, and where bytecode is not written at run time
# (PYTHONDONTWRITEBYTECODE, a read-only checkout) every command would compile its modules
# again at start: ~60 ms of a mount's start-up.
"$venv/bin/python" -m compileall -q backupfs

# Shell completion and man pages, generated from the parser (~1 s). BACKUPFS_NO_SYSTEM_FILES=1
# skips them (CI, or a machine where root should not write under /usr).
if [[ -z "${BACKUPFS_NO_SYSTEM_FILES:-}" && -w /usr/share ]]; then
    mkdir -p /usr/share/bash-completion/completions /usr/local/share/zsh/site-functions \
             /usr/share/fish/vendor_completions.d /usr/local/share/man/man1
    "$venv/bin/backupfs" -q generate \
        --bash-completion /usr/share/bash-completion/completions/backupfs \
        --zsh-completion /usr/local/share/zsh/site-functions/_backupfs \
        --fish-completion /usr/share/fish/vendor_completions.d/backupfs.fish \
        --man /usr/local/share/man/man1
fi
