"""backupfs.ops.fsmeta against a real filesystem: read every kind of entry, recreate it, compare with rsync."""

from __future__ import annotations

import dataclasses
import errno
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import richtree

from backupfs.cli._quote import escape
from backupfs.errors import IntegrityError
from backupfs.format.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node, decode_tree, encode_tree
from backupfs.ops import fsmeta

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root (mknod, chown, trusted xattrs)")
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return richtree.make_rich_tree(tmp_path_factory.mktemp("rich") / "src")


def node_of(path: Any) -> Node:
    raw = os.fsencode(path)
    node = fsmeta.node_from_path(os.path.dirname(raw), os.path.basename(raw))
    assert node is not None
    return node


def roundtrip(node: Node) -> Node:
    """What restore will see: the node after the tree blob encoding."""
    (out,) = decode_tree(encode_tree([node]))
    return out


# --------------------------------------------------------------------------- reading


@needs_root
def test_modes_owners_and_names(rich: dict[str, Any]) -> None:
    setuid = node_of(rich["setuid"])
    assert (setuid.type, setuid.mode, setuid.uid, setuid.gid) == (FILE, 0o4755, richtree.OTHER_UID, 0)
    assert setuid.group == "root"
    try:
        assert setuid.user == pwd.getpwuid(richtree.OTHER_UID).pw_name
    except KeyError:
        assert setuid.user is None
    assert node_of(rich["setgid"]).mode == 0o2711
    assert node_of(rich["zero_mode"]).mode == 0o000
    sticky = node_of(rich["sticky_dir"])
    assert (sticky.type, sticky.mode) == (DIR, 0o1777)
    setgid_dir = node_of(rich["setgid_dir"])
    assert (setgid_dir.mode, setgid_dir.gid) == (0o2775, richtree.OTHER_GID)
    try:
        assert setgid_dir.group == grp.getgrgid(richtree.OTHER_GID).gr_name
    except KeyError:
        assert setgid_dir.group is None
    assert node_of(rich["private_dir"]).mode == 0o700

    ghost = node_of(rich["no_passwd"])
    assert (ghost.uid, ghost.user) == (rich["no_passwd_uid"], None)
    link = node_of(rich["owned_link"])
    assert (link.type, link.uid, link.gid, link.link_target) == (SYMLINK, 1234, 5678, b"u1234")

    assert node_of(rich["long_name"]).name == b"L" * 255
    assert node_of(rich["latin1_name"]).name == b"caf\xe9"
    assert node_of(rich["newline_name"]).name == b"new\nline"


def test_file_fields_and_times(rich: dict[str, Any]) -> None:
    big = node_of(rich["big"])
    st = os.lstat(rich["big"])
    assert (big.size, big.inode, big.device, big.nlink) == (3 * richtree.MiB + 5, st.st_ino, st.st_dev, 1)
    assert big.ctime_ns == st.st_ctime_ns and big.content is None and big.subtree is None
    assert fsmeta.hardlink_key(big) is None
    times: dict[str, Path] = rich["times"]
    expected = {
        "pre_epoch": richtree.T_PRE_EPOCH,
        "past": richtree.T_PAST,
        "future": richtree.T_FUTURE,
        "ns": richtree.T_NS,
    }
    for label, mtime in expected.items():
        node = roundtrip(node_of(times[label]))
        assert (node.mtime_ns, node.atime_ns) == (mtime, richtree.T_ATIME)
    assert node_of(rich["empty_dir"]).type == DIR


def test_special_files_and_symlinks(rich: dict[str, Any]) -> None:
    fifo = node_of(rich["fifo"])
    assert (fifo.type, fifo.mode, fifo.rdev) == (FIFO, 0o640, None)
    if rich["privileged"]:
        null = node_of(rich["chardev"])
        assert (null.type, null.rdev) == (CHARDEV, os.makedev(1, 3))
        loop = node_of(rich["blockdev"])
        assert (loop.type, loop.rdev) == (BLOCKDEV, os.makedev(7, 0))
    assert node_of(rich["rel_link"]).link_target == b"../small.txt"
    assert node_of(rich["abs_link"]).link_target == os.fsencode(Path(rich["root"]) / "small.txt")
    dangling = node_of(rich["dangling_link"])
    assert (dangling.type, dangling.link_target) == (SYMLINK, b"/nonexistent/backupfs/target")
    assert dangling.mtime_ns == os.lstat(rich["dangling_link"]).st_mtime_ns
    odd = node_of(os.path.join(os.fsencode(Path(rich["root"]) / "links"), b"odd_target"))
    assert odd.link_target == b"caf\xe9-missing"


def test_hardlinks(rich: dict[str, Any]) -> None:
    nodes = [node_of(p) for p in rich["hardlinks"]]
    assert {n.nlink for n in nodes} == {3}
    keys = {fsmeta.hardlink_key(n) for n in nodes}
    assert len(keys) == 1 and None not in keys


def test_xattrs_and_acls(rich: dict[str, Any]) -> None:
    node = roundtrip(node_of(rich["xattr_file"]))
    assert node.xattrs is not None
    got = dict(node.xattrs)
    assert node.xattrs == sorted(node.xattrs)
    for k, v in rich["xattrs"].items():
        assert got[k] == v
    if rich["privileged"]:
        assert got[b"trusted.backupfs"] == b"trusted value"
    assert ACL_ACCESS in dict(node_of(rich["acl_file"]).xattrs or [])
    acl_dir = dict(node_of(rich["acl_dir"]).xattrs or [])
    assert ACL_ACCESS in acl_dir and ACL_DEFAULT in acl_dir
    assert ACL_ACCESS in dict(node_of(rich["acl_inherited"]).xattrs or [])
    assert node_of(rich["small"]).xattrs is None


def test_socket_is_skipped(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        assert fsmeta.node_from_path(tmp_path, b"sock") is None


def test_node_from_dir_fd_matches_path(rich: dict[str, Any]) -> None:
    xa = Path(rich["xattr_file"]).parent
    fd = os.open(xa, os.O_RDONLY | os.O_DIRECTORY)
    try:
        by_fd = fsmeta.node_from_path(fd, b"file")
    finally:
        os.close(fd)
    assert by_fd == node_of(rich["xattr_file"])


def test_data_extents(rich: dict[str, Any]) -> None:
    def extents(path: Any) -> tuple[int, list[tuple[int, int]]]:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            return size, fsmeta.data_extents(fd, size)
        finally:
            os.close(fd)

    size, ext = extents(rich["sparse"])
    assert sum(length for _, length in ext) < 4 * richtree.MiB
    for off, data in rich["sparse_parts"]:
        assert any(o <= off and off + len(data) <= o + n for o, n in ext), (off, ext)
    assert all(o + n <= size for o, n in ext)
    assert extents(rich["all_hole"]) == (16 * richtree.MiB, [])
    size, ext = extents(rich["tail_hole"])
    assert len(ext) == 1 and ext[0][0] == 0 and 8 * 1024 <= ext[0][1] < size
    assert extents(rich["big"]) == (3 * richtree.MiB + 5, [(0, 3 * richtree.MiB + 5)])
    assert extents(rich["empty"]) == (0, [])


# --------------------------------------------------------------------------- restoring


def copy_tree(src: Path, dst_parent: Path, dst_name: bytes) -> list[str]:
    """Recreate `src` as dst_parent/dst_name using only fsmeta plus plain content copying."""
    owner = os.geteuid() == 0
    links: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    warnings: list[str] = []

    def copy_file(src_fd: int, dst_fd: int, node: Node) -> None:
        rfd = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=src_fd)
        wfd = fsmeta.create_file(dst_fd, node)
        try:
            for off, length in fsmeta.data_extents(rfd, node.size):
                end = off + length
                while off < end:
                    buf = os.pread(rfd, min(1 << 20, end - off), off)
                    assert buf
                    off += os.pwrite(wfd, buf, off)
            os.ftruncate(wfd, node.size)  # ranges never written, trailing ones too, stay holes
        finally:
            os.close(rfd)
            os.close(wfd)

    def copy_dir(src_fd: int, dst_fd: int, dst_path: bytes) -> None:
        with os.scandir(src_fd) as it:
            names = sorted(os.fsencode(e.name) for e in it)
        for name in names:
            st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            found = fsmeta.node_from_path(src_fd, name, st)
            assert found is not None
            node = roundtrip(found)
            if node.type == DIR:
                fsmeta.create_node(dst_fd, node)
                sub_src = fsmeta.open_dir(src_fd, name)
                sub_dst = fsmeta.open_dir(dst_fd, name)
                try:
                    copy_dir(sub_src, sub_dst, os.path.join(dst_path, name))
                finally:
                    os.close(sub_src)
                    os.close(sub_dst)
            elif node.type == FILE:
                key = fsmeta.hardlink_key(node)
                if key is not None and key in links:
                    first_dir, first_name = links[key]
                    os.link(os.path.join(first_dir, first_name), node.name, dst_dir_fd=dst_fd, follow_symlinks=False)
                    continue
                copy_file(src_fd, dst_fd, node)
                if key is not None:
                    links[key] = (dst_path, name)
            else:
                fsmeta.create_node(dst_fd, node)
            # Post-order: a directory's metadata after everything inside it.
            warnings.extend(fsmeta.apply_metadata(dst_fd, node, owner=owner))

    root_node = fsmeta.node_from_path(src.parent, os.fsencode(src.name))
    assert root_node is not None
    root_node.name = dst_name
    fsmeta.create_node(dst_parent, root_node)
    src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    dst_fd = fsmeta.open_dir(dst_parent, dst_name)
    try:
        copy_dir(src_fd, dst_fd, os.path.join(os.fsencode(dst_parent), dst_name))
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    warnings.extend(fsmeta.apply_metadata(dst_parent, root_node, owner=owner))
    return warnings


@needs_root
@needs_rsync
def test_recreated_tree_is_identical(tmp_path: Path) -> None:
    manifest = richtree.make_rich_tree(tmp_path / "src")
    src, copy = tmp_path / "src", tmp_path / "copy"
    assert copy_tree(src, tmp_path, b"copy") == []
    assert richtree.rsync_diff(src, copy) == ""
    for key in ("sparse", "all_hole", "tail_hole"):
        sub = Path(manifest[key]).relative_to(src)
        assert richtree.sparse_ok(src / sub, copy / sub), key
        assert os.lstat(copy / sub).st_size == os.lstat(src / sub).st_size
    assert os.lstat(copy / "sparse" / "all_hole").st_blocks == 0
    # Second oracle: every recorded field except identity, ctime and atimes the copy itself disturbed.
    src_nodes, copy_nodes = all_nodes(src), all_nodes(copy)
    assert src_nodes.keys() == copy_nodes.keys()
    for rel, node in src_nodes.items():
        assert comparable(node) == comparable(copy_nodes[rel]), rel

    # The rsync oracle notices each kind of difference.
    os.utime(copy / "times" / "ns", ns=(richtree.T_ATIME, richtree.T_NS + 1))
    os.setxattr(copy / "xattrs" / "file", b"user.binary", b"\0")
    os.removexattr(copy / "xattrs" / "acl_file", ACL_ACCESS)
    os.chown(copy / "owners" / "nopasswd", 1, 1)
    os.utime(copy / "links" / "rel", ns=(1, 1), follow_symlinks=False)
    os.chmod(copy / "modes" / "setuid", 0o755)
    os.unlink(copy / "hl2" / "c")
    shutil.copy2(copy / "hl1" / "a", copy / "hl2" / "c")
    diff = richtree.rsync_diff(src, copy)
    for changed in (
        "times/ns",
        "xattrs/file",
        "xattrs/acl_file",
        "owners/nopasswd",
        "links/rel",
        "modes/setuid",
        "hl2/c",
    ):
        assert changed in diff


def all_nodes(root: Path) -> dict[bytes, Node]:
    out: dict[bytes, Node] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            node = fsmeta.node_from_path(dirpath, name)
            assert node is not None
            out[os.path.relpath(os.path.join(dirpath, name), broot)] = node
    return out


def comparable(node: Node) -> Node:
    """`node` without the fields a faithful copy cannot or need not reproduce."""
    keep_atime = node.type not in (FILE, DIR, SYMLINK)  # reading (incl. readlink) moves atimes
    hardlinked = fsmeta.hardlink_key(node) is not None
    return dataclasses.replace(
        node,
        inode=None,
        device=None,
        ctime_ns=0,
        atime_ns=node.atime_ns if keep_atime else 0,
        nlink=node.nlink if node.type != DIR else None,
        content=None,
        name=node.name if not hardlinked else b"",
    )


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/etc", b"a\0b"])
def test_unsafe_names_are_refused(tmp_path: Path, name: bytes) -> None:
    for kind in (DIR, FIFO, SYMLINK):
        with pytest.raises(IntegrityError):
            fsmeta.create_node(tmp_path, Node(name=name, type=kind, link_target=b"x"))
    with pytest.raises(IntegrityError):
        fsmeta.create_file(tmp_path, Node(name=name, type=FILE))
    with pytest.raises(IntegrityError):
        fsmeta.apply_metadata(tmp_path, Node(name=name, type=DIR, mode=0o777), owner=False)
    with pytest.raises(IntegrityError):
        fsmeta.open_dir(tmp_path, name)
    assert os.listdir(tmp_path) == []


def test_planted_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    os.chmod(victim, 0o644)
    os.utime(victim, ns=(richtree.T_ATIME, richtree.T_PAST))
    before = os.lstat(victim)
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(victim, target / "x")
    os.symlink(outside, target / "d")
    fd = fsmeta.open_dir(tmp_path, b"target")
    try:
        for parent in (fd, target):
            evil = Node(
                name=b"x",
                type=FILE,
                mode=0o4777,
                uid=4321,
                gid=4321,
                mtime_ns=5,
                atime_ns=5,
                xattrs=[(b"user.evil", b"1")],
            )
            with pytest.raises(OSError) as exc:
                fsmeta.apply_metadata(parent, evil, owner=is_root)
            assert exc.value.errno == errno.ELOOP
            with pytest.raises(FileExistsError):
                fsmeta.create_file(parent, Node(name=b"x", type=FILE))
            for kind in (DIR, FIFO):
                with pytest.raises(FileExistsError):
                    fsmeta.create_node(parent, Node(name=b"x", type=kind), exist_ok=True)
            with pytest.raises(FileExistsError):
                fsmeta.create_node(parent, Node(name=b"d", type=DIR), exist_ok=True)
            with pytest.raises(OSError) as exc:
                fsmeta.apply_metadata(parent, Node(name=b"d", type=DIR, mode=0o777), owner=is_root)
            assert exc.value.errno == errno.ELOOP
            with pytest.raises(OSError):
                fsmeta.open_dir(parent, b"d")
            # A symlink node applies to the link itself.
            link = Node(name=b"x", type=SYMLINK, uid=4321, gid=4321, mtime_ns=7, atime_ns=8)
            assert fsmeta.apply_metadata(parent, link, owner=is_root) == []
            lst = os.lstat(target / "x")
            assert lst.st_mtime_ns == 7 and (not is_root or lst.st_uid == 4321)
    finally:
        os.close(fd)
    after = os.lstat(victim)
    assert (after.st_mode, after.st_uid, after.st_mtime_ns, after.st_ino) == (
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert victim.read_bytes() == b"precious"
    assert os.listxattr(victim) == [] and os.listdir(outside) == ["victim"]


def test_create_node_existing_entries(tmp_path: Path) -> None:
    fsmeta.create_node(tmp_path, Node(name=b"d", type=DIR))
    fsmeta.create_node(tmp_path, Node(name=b"d", type=DIR), exist_ok=True)
    with pytest.raises(FileExistsError):
        fsmeta.create_node(tmp_path, Node(name=b"d", type=DIR))
    fsmeta.create_node(tmp_path, Node(name=b"p", type=FIFO))
    with pytest.raises(FileExistsError):
        fsmeta.apply_metadata(tmp_path, Node(name=b"p", type=DIR), owner=False)
    with pytest.raises(ValueError):
        fsmeta.create_node(tmp_path, Node(name=b"f", type=FILE))
    with pytest.raises(IntegrityError):
        fsmeta.create_node(tmp_path, Node(name=b"l", type=SYMLINK))
    with pytest.raises(IntegrityError):
        fsmeta.create_node(tmp_path, Node(name=b"c", type=CHARDEV))


def test_inherited_acl_is_removed_and_xattr_failures_are_warnings(tmp_path: Path) -> None:
    parent = tmp_path / "acl_parent"
    parent.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(parent)], check=True)
    wfd = fsmeta.create_file(parent, Node(name=b"f", type=FILE))
    os.close(wfd)
    fsmeta.create_node(parent, Node(name=b"d", type=DIR))
    assert ACL_ACCESS.decode() in os.listxattr(parent / "f")
    fsmeta.apply_metadata(parent, Node(name=b"f", type=FILE, mode=0o640), owner=False)
    fsmeta.apply_metadata(parent, Node(name=b"d", type=DIR, mode=0o750), owner=False)
    assert os.listxattr(parent / "f") == [] and os.listxattr(parent / "d") == []
    assert stat.S_IMODE(os.lstat(parent / "d").st_mode) == 0o750

    fsmeta.create_node(tmp_path, Node(name=b"l", type=SYMLINK, link_target=b"f"))
    warnings = fsmeta.apply_metadata(
        tmp_path, Node(name=b"l", type=SYMLINK, xattrs=[(b"user.no", b"symlinks refuse user xattrs")]), owner=False
    )
    assert len(warnings) == 1 and "user.no" in warnings[0]




def test_warnings_and_errors_show_a_stored_name_escaped_once(tmp_path: Path) -> None:
    """A name with a control character shows as `\\x01` on the terminal (the CLI escapes each
    message once), not `\\\\x01` (it was repr()'d first)."""
    target = tmp_path / "f"
    target.write_bytes(b"")
    node = Node(name=b"f", type=FILE, mode=0o644, xattrs=[(b"nonamespace.a\x01", b"v")])
    fd = os.open(target, os.O_RDONLY)
    try:
        (warning,) = fsmeta.apply_metadata_fd(fd, node, owner=False)
    finally:
        os.close(fd)
    assert escape(f"/f: {warning}") == "/f: cannot set xattr 'nonamespace.a\\x01': Operation not supported"
    with pytest.raises(IntegrityError) as exc:
        fsmeta.create_file(str(tmp_path).encode(), Node(name=b"a/\x01", type=FILE))
    assert escape(str(exc.value)) == "refusing unsafe entry name 'a/\\x01'"
