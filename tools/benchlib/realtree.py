"""The real-tree corpus: a copy of parts of this machine's own /usr (issue 11).

The synthetic trees are uniform (100 files of 1-16 KiB per folder). Real trees are not: a copy of
/usr/include, /usr/share and /usr/lib has ~7 files per folder, many under 1 KiB, thousands of
symlinks and deep paths, and per-folder costs that the synthetic trees hide decide the result.

The copy is as deterministic as the machine allows: the same installed packages give the same
tree. Folders are visited in sorted path order; files over `max_file` and anything that is not a
regular file, folder or symlink are left out (and counted). A `fraction` below 1 keeps that share
of the folders in runs of consecutive ones spread evenly over the sorted order, so a smaller tree
keeps the shape of the whole one (files per folder, sizes, depth) rather than only its first part.
Within a kept folder every file and symlink is copied; the folders on the way to it are created
(with their metadata) but not filled. Metadata is copied like `cp -a`: mode, owner (as root),
times, extended attributes, symlink targets and hard links among the copied files. A digest of
the sorted manifest (path, kind, size, mode, link target) is recorded, so two runs can tell
whether they used the same tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REAL_VERSION = 1
DEFAULT_SOURCES = ("/usr/include", "/usr/share", "/usr/lib")
# Issue 11's tree: files over 1 MiB removed, so the corpus measures per-file and per-folder costs
# (the mixed tree already measures large files).
MAX_FILE = 1 << 20


@dataclass(frozen=True)
class RealTreeSpec:
    """What to copy: source folders (absolute), the share of their folders kept, the file size limit."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    fraction: float = 1.0
    max_file: int = MAX_FILE

    def stamp(self) -> dict[str, Any]:
        return {"sources": sorted(self.sources), "fraction": self.fraction, "max_file": self.max_file}


@dataclass
class _Folder:
    path: str  # absolute source path
    st: os.stat_result
    entries: list[tuple[str, os.stat_result]] = field(default_factory=list)  # files and symlinks


@dataclass
class _Plan:
    max_file: int
    folders: list[_Folder] = field(default_factory=list)  # every source folder, sorted pre-order
    left_out_large: int = 0
    left_out_other: int = 0
    unreadable: int = 0


def _walk(top: str, plan: _Plan) -> Iterator[_Folder]:
    """Pre-order walk of `top` with names sorted (bytewise, as `sort` in the C locale)."""
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
            with os.scandir(path) as it:
                items = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError:
            plan.unreadable += 1
            continue
        folder = _Folder(path, st)
        subdirs = []
        for e in items:
            try:
                est = e.stat(follow_symlinks=False)
            except OSError:
                plan.unreadable += 1
                continue
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(e.path)
            elif stat.S_ISLNK(est.st_mode):
                folder.entries.append((e.name, est))
            elif stat.S_ISREG(est.st_mode):
                if est.st_size > plan.max_file:
                    plan.left_out_large += 1
                else:
                    folder.entries.append((e.name, est))
            else:
                plan.left_out_other += 1
        yield folder
        stack.extend(reversed(subdirs))


# Folders are kept in runs of this many consecutive ones (in sorted pre-order, mostly a subtree
# and its neighbours), so that a subset does not consist mostly of the folders on the way to it.
RUN_LENGTH = 50


def kept_indices(n: int, fraction: float) -> list[int]:
    """Which of `n` folders (0-based, in sorted order) a `fraction` keeps: round(n x fraction) of
    them (at least one run), in runs of RUN_LENGTH spread evenly over the whole order."""
    if fraction >= 1:
        return list(range(n))
    runs = -(-n // RUN_LENGTH)
    want = max(1, round(runs * fraction))
    picked = sorted({int((j + 0.5) * runs / want) for j in range(want)})
    return [i for r in picked for i in range(r * RUN_LENGTH, min(n, (r + 1) * RUN_LENGTH))]


def _plan(spec: RealTreeSpec) -> tuple[_Plan, list[_Folder]]:
    plan = _Plan(spec.max_file)
    for top in sorted(spec.sources):
        plan.folders.extend(_walk(os.path.abspath(top), plan))
    keep = [plan.folders[i] for i in kept_indices(len(plan.folders), spec.fraction)]
    return plan, keep


def copy_real_tree(root: Path, spec: RealTreeSpec, log: Callable[[str], None]) -> dict[str, Any]:
    """Copy the selected part of `spec.sources` under `root` (at root/usr/include/... for /usr/include)
    and return what was left out, the number of copy errors and the manifest digest."""
    plan, keep = _plan(spec)
    log(
        f"real tree: copying {len(keep)} of {len(plan.folders)} folders of {', '.join(sorted(spec.sources))} "
        f"(files over {spec.max_file} bytes left out)"
    )
    is_root = os.geteuid() == 0
    dirs: dict[str, os.stat_result] = {}  # every folder created: absolute source path -> its stat
    by_path = {f.path: f.st for f in plan.folders}
    for folder in keep:
        p = folder.path
        while p not in dirs and p != "/":
            dirs[p] = by_path[p] if p in by_path else os.lstat(p)
            p = os.path.dirname(p)
    for p in sorted(dirs):
        (root / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
    manifest = hashlib.sha256()
    for p in sorted(dirs, key=os.fsencode):
        manifest.update(b"d %s %o\n" % (os.fsencode(p), dirs[p].st_mode))
    links: dict[tuple[int, int], Path] = {}
    errors = 0
    for folder in keep:
        for name, st in folder.entries:
            src = os.path.join(folder.path, name)
            dst = root / src.lstrip("/")
            try:
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(src)
                    os.symlink(target, dst)
                    if is_root:
                        os.lchown(dst, st.st_uid, st.st_gid)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                    manifest.update(b"l %s %s\n" % (os.fsencode(src), os.fsencode(target)))
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    os.link(links[key], dst)
                else:
                    shutil.copyfile(src, dst, follow_symlinks=False)
                    if is_root:
                        os.chown(dst, st.st_uid, st.st_gid)
                    shutil.copystat(src, dst, follow_symlinks=False)  # mode, times, xattrs
                    if st.st_nlink > 1:
                        links[key] = dst
                manifest.update(b"f %s %d %o\n" % (os.fsencode(src), st.st_size, st.st_mode))
            except OSError:
                errors += 1
                with contextlib.suppress(OSError):
                    dst.unlink()
    # folder metadata last and deepest first, so filling a folder does not change its times
    for p in sorted(dirs, key=lambda q: q.count("/"), reverse=True):
        st = dirs[p]
        dst = root / p.lstrip("/")
        try:
            if is_root:
                os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode) | (0 if is_root else stat.S_IWUSR | stat.S_IXUSR))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            errors += 1
    return {
        "source_folders": len(plan.folders),
        "kept_folders": len(keep),
        "left_out_large_files": plan.left_out_large,
        "left_out_other": plan.left_out_other,
        "unreadable": plan.unreadable,
        "copy_errors": errors,
        "manifest_sha256": manifest.hexdigest(),
    }
