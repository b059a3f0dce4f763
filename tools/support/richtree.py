"""Test helper: a small directory tree holding every kind of thing a Linux filesystem can hold.

Built with plain os calls and the acl tools (never with backupfs code), so it can judge backupfs.
`rsync_diff` is the independent oracle for "restored exactly": rsync -aHAX compares contents,
types, modes, owners, times (ns), hardlinks, ACLs and xattrs.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB

# Times chosen to catch truncation: pre-epoch, ordinary past, far future, odd nanoseconds.
T_PRE_EPOCH = -123_456_789_987_654_321  # 1966
T_PAST = 631_152_000_123_456_789  # 1990-01-01 + .123456789
T_FUTURE = 4_102_444_800_000_000_001  # 2100-01-01 + 1 ns
T_NS = 1_700_000_000_987_654_321
T_ATIME = 1_600_000_000_111_111_111
T_DIR = 1_650_000_000_222_222_222

OTHER_UID, OTHER_GID = 1234, 5678


def _unused_uid() -> int:
    """A uid with no passwd entry (names must then be recorded as absent)."""
    uid = 3_000_017
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _setfacl(*args: str | bytes) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def make_rich_tree(root: Path, *, privileged: bool | None = None) -> dict[str, Any]:
    """Fill directory `root` (created if absent) and return a manifest of notable paths and values.

    `privileged` (default: running as root) adds devices, foreign owners and trusted.* xattrs.
    Directory mtimes are set last, bottom-up, so nothing created later disturbs them.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    root.mkdir(parents=True, exist_ok=True)
    rnd = os.urandom
    m: dict[str, Any] = {"root": root, "privileged": privileged}

    # Regular files.
    m["empty"] = _write(root / "empty", b"")
    m["small"] = _write(root / "small.txt", b"hello, backupfs\n")
    m["random"] = _write(root / "random.bin", rnd(300 * KiB + 17))
    m["big"] = _write(root / "big.bin", rnd(3 * MiB + 5))

    # Nested dirs, an empty dir, a deep path.
    (root / "dir" / "sub" / "subsub").mkdir(parents=True)
    _write(root / "dir" / "sub" / "subsub" / "leaf.txt", b"leaf\n")
    _write(root / "dir" / "a.txt", b"a\n" * 1000)
    m["empty_dir"] = root / "dir" / "emptydir"
    m["empty_dir"].mkdir()
    deep = root / "deep"
    for i in range(30):
        deep = deep / f"level{i:02d}"
    deep.mkdir(parents=True)
    m["deep_file"] = _write(deep / "bottom.txt", b"30 levels down\n")

    # Awkward names (bytes paths: not all are valid UTF-8).
    names = root / "names"
    names.mkdir()
    broot = os.fsencode(names)
    m["long_name"] = os.path.join(broot, b"L" * 255)
    m["latin1_name"] = os.path.join(broot, b"caf\xe9")
    m["newline_name"] = os.path.join(broot, b"new\nline")
    for raw in (m["long_name"], m["latin1_name"], m["newline_name"]):
        with open(raw, "wb") as f:
            f.write(os.path.basename(raw))
    _write(names / "with space", b"space\n")
    os.mkdir(os.path.join(broot, b"dir \xff\xfe"))
    with open(os.path.join(broot, b"dir \xff\xfe", b"inner"), "wb") as f:
        f.write(b"inner\n")

    # Symlinks: relative, absolute, dangling, to a dir, with a non-UTF-8 target.
    links = root / "links"
    links.mkdir()
    m["rel_link"] = links / "rel"
    os.symlink("../small.txt", m["rel_link"])
    m["abs_link"] = links / "abs"
    os.symlink(str(root / "small.txt"), m["abs_link"])
    m["dangling_link"] = links / "dangling"
    os.symlink("/nonexistent/backupfs/target", m["dangling_link"])
    os.symlink("../dir", links / "to_dir")
    os.symlink(b"caf\xe9-missing", os.path.join(os.fsencode(links), b"odd_target"))

    # Hardlinks: one inode, three names, two directories.
    (root / "hl1").mkdir()
    (root / "hl2").mkdir()
    m["hardlinks"] = [root / "hl1" / "a", root / "hl1" / "b", root / "hl2" / "c"]
    _write(m["hardlinks"][0], rnd(10 * KiB), 0o640)
    os.link(m["hardlinks"][0], m["hardlinks"][1])
    os.link(m["hardlinks"][0], m["hardlinks"][2])

    # Special files.
    special = root / "special"
    special.mkdir()
    m["fifo"] = special / "fifo"
    os.mkfifo(m["fifo"], 0o640)
    if privileged:
        m["chardev"] = special / "null"
        os.mknod(m["chardev"], 0o666 | 0o020000, os.makedev(1, 3))
        m["blockdev"] = special / "loop"
        os.mknod(m["blockdev"], 0o660 | 0o060000, os.makedev(7, 0))

    # Modes. chown (below) would clear setuid/setgid, so owners are set before modes.
    modes = root / "modes"
    modes.mkdir()
    m["setuid"] = _write(modes / "setuid", b"#!/bin/sh\n", 0o4755)
    m["setgid"] = _write(modes / "setgid", b"#!/bin/sh\n", 0o2711)
    m["zero_mode"] = _write(modes / "zero", b"secret\n", 0o000)
    m["sticky_dir"] = modes / "sticky"
    m["sticky_dir"].mkdir()
    m["setgid_dir"] = modes / "setgid_dir"
    m["setgid_dir"].mkdir()
    m["private_dir"] = modes / "private"
    m["private_dir"].mkdir()
    _write(m["private_dir"] / "inside", b"x")

    # Owners.
    owners = root / "owners"
    owners.mkdir()
    m["other_owner"] = _write(owners / "u1234", b"owned\n")
    m["no_passwd"] = _write(owners / "nopasswd", b"ghost\n")
    m["no_passwd_uid"] = _unused_uid()
    m["owned_link"] = owners / "link"
    os.symlink("u1234", m["owned_link"])
    if privileged:
        os.chown(m["other_owner"], OTHER_UID, OTHER_GID)
        os.chown(m["no_passwd"], m["no_passwd_uid"], m["no_passwd_uid"])
        os.chown(m["owned_link"], OTHER_UID, OTHER_GID, follow_symlinks=False)
        os.chown(owners, OTHER_UID, OTHER_GID)
        os.chown(m["setuid"], OTHER_UID, 0)
        os.chown(m["setgid_dir"], 0, OTHER_GID)
    os.chmod(m["setuid"], 0o4755)
    os.chmod(m["setgid"], 0o2711)
    os.chmod(m["sticky_dir"], 0o1777)
    os.chmod(m["setgid_dir"], 0o2775)
    os.chmod(m["private_dir"], 0o700)

    # Extended attributes and ACLs.
    xa = root / "xattrs"
    xa.mkdir()
    m["xattr_file"] = _write(xa / "file", b"has xattrs\n")
    m["xattrs"] = {b"user.text": b"hello", b"user.binary": bytes([0, 255, 1, 0, 10]), b"user.empty": b""}
    for k, v in m["xattrs"].items():
        os.setxattr(m["xattr_file"], k, v)
    os.setxattr(xa, b"user.on_dir", b"dir value")
    if privileged:
        os.setxattr(m["xattr_file"], b"trusted.backupfs", b"trusted value")
    m["acl_file"] = _write(xa / "acl_file", b"acl\n", 0o640)
    _setfacl("-m", f"u:{OTHER_UID}:rw,g:{OTHER_GID}:r", str(m["acl_file"]))
    m["acl_dir"] = xa / "acl_dir"
    m["acl_dir"].mkdir()
    _setfacl("-m", f"u:{OTHER_UID}:rwx", "-d", "-m", f"u:{OTHER_UID}:rwx,g:{OTHER_GID}:rx", str(m["acl_dir"]))
    # Created after the default ACL, so it inherits an access ACL.
    m["acl_inherited"] = _write(m["acl_dir"] / "inherited", b"inherits\n", 0o640)
    m["acl_dir_noacl"] = m["acl_dir"] / "noacl_child"  # child dir whose inherited ACLs were removed
    m["acl_dir_noacl"].mkdir()
    _setfacl("-b", "-k", str(m["acl_dir_noacl"]))

    # Sparse files: data at start, middle and an unaligned end; and pure holes.
    sparse = root / "sparse"
    sparse.mkdir()
    m["sparse"] = sparse / "sparse64"
    m["sparse_parts"] = [(0, rnd(64 * KiB)), (32 * MiB, rnd(64 * KiB)), (64 * MiB - 4096, rnd(4096 - 100))]
    with open(m["sparse"], "wb") as f:
        for off, data in m["sparse_parts"]:
            f.seek(off)
            f.write(data)
        f.truncate(64 * MiB - 100)
    m["all_hole"] = sparse / "all_hole"
    with open(m["all_hole"], "wb") as f:
        f.truncate(16 * MiB)
    m["tail_hole"] = sparse / "tail_hole"
    with open(m["tail_hole"], "wb") as f:
        f.write(rnd(8 * KiB))
        f.truncate(10 * MiB + 123)

    # File times (symlinks included); directories come last.
    times = root / "times"
    times.mkdir()
    m["times"] = {}
    for label, mtime in (("pre_epoch", T_PRE_EPOCH), ("past", T_PAST), ("future", T_FUTURE), ("ns", T_NS)):
        p = _write(times / label, label.encode())
        os.utime(p, ns=(T_ATIME, mtime))
        m["times"][label] = p
    os.utime(m["rel_link"], ns=(T_ATIME, T_PAST), follow_symlinks=False)
    os.utime(m["owned_link"], ns=(T_ATIME, T_FUTURE), follow_symlinks=False)
    os.utime(m["sparse"], ns=(T_ATIME, T_NS))

    dirs = [Path(d) for d, _, _ in os.walk(root)]
    for i, d in enumerate(sorted(dirs, key=lambda p: len(p.parts), reverse=True)):
        os.utime(d, ns=(T_ATIME + i, T_DIR + i * 1_000_003), follow_symlinks=False)
    return m


def rsync_diff(src: Path | str, dst: Path | str) -> str:
    """What rsync would change to make `dst` equal `src`; "" means an exact copy.

    --modify-window=-1 makes rsync compare mtimes to the nanosecond (its default is whole seconds).
    """
    proc = subprocess.run(
        [
            "rsync",
            "-aHAX",
            "--checksum",
            "--dry-run",
            "--itemize-changes",
            "--numeric-ids",
            "--modify-window=-1",
            f"{os.fspath(src)}/",
            f"{os.fspath(dst)}/",
        ],
        capture_output=True,
        check=True,
    )
    return proc.stdout.decode("utf-8", "backslashreplace")


def sparse_ok(src_file: Path | str, dst_file: Path | str) -> bool:
    """Whether `dst_file` is allocated about as sparsely as `src_file` (at most 25% + 64 KiB more)."""
    src_blocks = os.lstat(src_file).st_blocks
    dst_blocks = os.lstat(dst_file).st_blocks
    return dst_blocks * 512 <= src_blocks * 512 * 5 // 4 + 64 * KiB
