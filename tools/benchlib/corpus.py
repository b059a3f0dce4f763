"""Benchmark corpora for tools/bench.py: reproducible synthetic trees and a copy of a real one.

Four synthetic trees, all derived from one integer seed so two runs (or two machines) back up the
same bytes:

- ``mixed``: about 2 GiB x scale of compressible text-like data, incompressible random data, zero
  runs, files duplicated whole, files sharing shifted regions, one large file of 1 GiB x scale (the
  mount benchmark copies it out), a few tiny/empty files and symlinks.
- ``small``: 100,000 x scale files of 1-16 KiB in a three-level tree of folders (~830 MiB x scale).
- ``tiny``: 400,000 x scale files of ~90 bytes (40-140), 100 per folder in 4,000 x scale folders
  (the shape of mail folders, source trees, package caches; issue 11).
- ``evolve``: about 300 MiB x scale of medium files plus 10,000 x scale small files; the prune
  benchmark changes ~5 % of it between each of its twenty snapshots.

Random bytes come from the BLAKE3 extendable output keyed by the seed (~0.5-1 GB/s per core,
reproducible, unlike ``os.urandom``); text comes from slices of a Zipf-distributed word pool built
once, so it compresses like prose or logs (lz4 ~2x) without repeating at chunk scale. Nothing loops
per byte in Python.

And ``real``, a copy of parts of this machine's /usr (see realtree.py): not derived from the seed,
but as deterministic as the installed packages are.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import stat
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from benchlib.realtree import REAL_VERSION, RealTreeSpec, copy_real_tree

_blake3: Any
try:
    import blake3 as _blake3
except ImportError:  # pragma: no cover - blake3 is a backupfs dependency
    _blake3 = None

GEN_VERSION = 1
MiB = 1 << 20
KiB = 1 << 10
_BLOCK = 8 * MiB


class ByteSource:
    """Deterministic random and text-like bytes, derived from one seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._key = (seed.to_bytes(8, "little") * 4)[:32]
        rng = random.Random(f"{seed}:words")
        letters = string.ascii_lowercase
        words = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(8000)]
        weights = [1.0 / (i + 1) for i in range(len(words))]
        toks = rng.choices(words, weights=weights, k=700_000)
        lines: list[str] = []
        i = 0
        while i < len(toks):
            n = rng.randint(4, 18)
            lines.append(" ".join(toks[i : i + n]).capitalize() + rng.choice(".,;:!?."))
            i += n
        self._pool = ("\n".join(lines) + "\n").encode()  # ~4.5 MiB

    def random(self, label: str, n: int) -> bytes:
        """`n` incompressible bytes determined by (seed, label)."""
        if n <= 0:
            return b""
        if _blake3 is not None:
            data: bytes = _blake3.blake3(label.encode(), key=self._key).digest(length=n)
            return data
        rng = random.Random(f"{self.seed}:{label}")  # slower fallback
        return b"".join(rng.randbytes(min(MiB, n - o)) for o in range(0, n, MiB))

    def text(self, rng: Random, n: int) -> bytes:
        """`n` bytes of text: random slices of the word pool with unique numbered lines between them."""
        parts: list[bytes] = []
        total = 0
        pool = self._pool
        hi = len(pool) - 8192
        while total < n:
            off = rng.randrange(hi)
            piece = pool[off : off + rng.randint(256, 6144)]
            stamp = b"%d %016x %s\n" % (total, rng.getrandbits(64), b"INFO" if total & 1 else b"WARN")
            parts.append(stamp)
            parts.append(piece)
            total += len(piece) + len(stamp)
        return b"".join(parts)[:n]

    def zeros(self, n: int) -> bytes:
        return bytes(n)


@dataclass
class TreeInfo:
    root: Path
    files: int
    bytes: int
    gen_s: float
    folders: int = 0
    symlinks: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # the tree's stamp: how it was made


@dataclass
class TreeCounts:
    files: int  # regular files
    folders: int  # below the root
    symlinks: int
    bytes: int  # of the regular files


def tree_counts(root: Path) -> TreeCounts:
    """What is under `root`, symlinks not followed."""
    c = TreeCounts(0, 0, 0, 0)
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    c.folders += 1
                    stack.append(e.path)
                elif stat.S_ISLNK(st.st_mode):
                    c.symlinks += 1
                elif stat.S_ISREG(st.st_mode):
                    c.files += 1
                    c.bytes += st.st_size
    return c


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, total bytes) under `root` (symlinks not followed)."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
    return files, total


def _write(path: Path, chunks: Iterator[bytes] | bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "wb") as f:
        if isinstance(chunks, bytes):
            f.write(chunks)
            return len(chunks)
        for c in chunks:
            f.write(c)
            n += len(c)
    return n


def _log_uniform(rng: Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _mixed_content(src: ByteSource, rng: Random, label: str, size: int, text_share: float) -> bytes:
    if rng.random() < text_share:
        return src.text(rng, size)
    return src.random(label, size)


def gen_mixed(root: Path, scale: float, src: ByteSource) -> None:
    """The ~2 GiB x scale mixed tree (see module docstring)."""
    rng = random.Random(f"{src.seed}:mixed")
    # 1. the large file: 4 MiB segments of random (60 %), text (25 %), a repeat of an earlier
    #    segment (10 %, dedup inside one file) and written zeros (5 %).
    big = max(4 * MiB, int(1024 * MiB * scale))
    seg = min(4 * MiB, big)
    done: list[bytes] = []

    def large() -> Iterator[bytes]:
        written = 0
        i = 0
        while written < big:
            n = min(seg, big - written)
            r = rng.random()
            if r < 0.10 and done:
                data = rng.choice(done)[:n]
            elif r < 0.15:
                data = src.zeros(n)
            elif r < 0.40:
                data = src.text(rng, n)
            else:
                data = src.random(f"large:{i}", n)
            if len(done) < 16 and len(data) == seg:
                done.append(data)
            yield data
            written += len(data)
            i += 1

    _write(root / "big" / "large-1g.bin", large())

    # 2. a 128 MiB x scale log file (compressible)
    log_size = max(MiB, int(128 * MiB * scale))
    _write(root / "big" / "server.log", (src.text(rng, min(_BLOCK, log_size - o)) for o in range(0, log_size, _BLOCK)))

    # 3. a 192 MiB x scale disk-image-like file: 1 MiB blocks drawn from a pool of 48 x scale blocks
    img_blocks = max(2, int(192 * scale))
    pool = [src.random(f"img:{i}", MiB) for i in range(max(1, img_blocks // 4))]
    _write(root / "big" / "disk.img", (rng.choice(pool) for _ in range(img_blocks)))

    # 4. medium files: 400 MiB x scale, 4 KiB - 8 MiB log-uniform, 60 % text, in 20 x 2 folders
    medium_total = int(400 * MiB * scale)
    medium: list[Path] = []
    total = 0
    k = 0
    while total < medium_total:
        size = min(_log_uniform(rng, 4 * KiB, 8 * MiB), max(4 * KiB, medium_total - total))
        p = root / "medium" / f"proj{k % 20:02d}" / ("src" if k % 3 else "assets") / f"file{k:05d}.dat"
        total += _write(p, _mixed_content(src, rng, f"medium:{k}", size, 0.6))
        medium.append(p)
        k += 1

    # 5. duplicates: whole-file copies of medium files (100 MiB x scale), and for some larger medium
    #    files a variant with bytes inserted at the front and an A+B+A concatenation (150 MiB x scale)
    dup_total = int(100 * MiB * scale)
    order = medium[:]
    rng.shuffle(order)
    total = 0
    for i, p in enumerate(order):
        if total >= dup_total:
            break
        q = root / "dup" / "copies" / f"{i:04d}-{p.name}"
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, q)
        total += q.stat().st_size
    var_total = int(150 * MiB * scale)
    total = 0
    bigger = sorted((p for p in medium if p.stat().st_size >= 256 * KiB), key=lambda p: p.name)
    rng.shuffle(bigger)
    for i, p in enumerate(bigger):
        if total >= var_total or i + 1 >= len(bigger):
            break
        a = p.read_bytes()
        b = bigger[i + 1].read_bytes()
        total += _write(root / "dup" / "variants" / f"shifted-{i:04d}.dat", src.random(f"ins:{i}", 100 + i) + a)
        total += _write(root / "dup" / "variants" / f"aba-{i:04d}.dat", a + b + a)

    # 6. tiny and empty files, symlinks
    for i in range(200):
        size = 0 if i % 10 == 0 else rng.randint(1, 512)
        _write(root / "misc" / f"tiny{i:03d}.txt", src.text(rng, size) if size else b"")
    for i in range(20):
        (root / "misc" / f"link{i:02d}").symlink_to(f"tiny{i * 3:03d}.txt")


SMALL_PER_DIR = 100


def _small_path(root: Path, k: int) -> Path:
    leaf, idx = divmod(k, SMALL_PER_DIR)
    ext = (".txt", ".json", ".py", ".bin", ".md")[idx % 5]
    return root / f"d{leaf // 100:02d}" / f"d{(leaf // 10) % 10:02d}" / f"d{leaf % 10:02d}" / f"f{idx:03d}{ext}"


def gen_small(root: Path, scale: float, src: ByteSource) -> None:
    """100,000 x scale files of 1-16 KiB, 65 % text, 100 per leaf folder, three levels deep."""
    n = max(SMALL_PER_DIR, round(100_000 * scale))
    rng = random.Random(f"{src.seed}:small")
    for start in range(0, n, SMALL_PER_DIR):
        count = min(SMALL_PER_DIR, n - start)
        sizes = [rng.randint(KiB, 16 * KiB) for _ in range(count)]
        rnd = src.random(f"small:{start}", sum(sizes))
        off = 0
        _small_path(root, start).parent.mkdir(parents=True, exist_ok=True)
        for j, size in enumerate(sizes):
            p = _small_path(root, start + j)
            data = src.text(rng, size) if rng.random() < 0.65 else rnd[off : off + size]
            off += size
            with open(p, "wb") as f:
                f.write(data)


TINY_PER_DIR = 100
# The part of the tiny tree the mount benchmark reads (10,000 x scale files): reading all 400,000
# through three tools' mounts would take most of an hour and add nothing.
TINY_MOUNT_SUBSET = "t00"


def gen_tiny(root: Path, scale: float, src: ByteSource) -> None:
    """400,000 x scale files of 40-140 bytes of text, 100 per folder, in t<NN>/f<NN>/m<NNN>."""
    n = max(TINY_PER_DIR, round(400_000 * scale))
    rng = random.Random(f"{src.seed}:tiny")
    for start in range(0, n, TINY_PER_DIR):
        leaf = start // TINY_PER_DIR
        folder = root / f"t{leaf // 100:02d}" / f"f{leaf % 100:02d}"
        folder.mkdir(parents=True)
        for j in range(min(TINY_PER_DIR, n - start)):
            with open(folder / f"m{j:03d}", "wb") as f:
                f.write(src.text(rng, rng.randint(40, 140)))


def gen_evolve(root: Path, scale: float, src: ByteSource) -> None:
    """The prune benchmark's tree: 300 MiB x scale of 4 KiB-4 MiB files plus 10,000 x scale small files."""
    rng = random.Random(f"{src.seed}:evolve")
    total_target = int(300 * MiB * scale)
    total = 0
    k = 0
    while total < total_target:
        size = _log_uniform(rng, 4 * KiB, 4 * MiB)
        total += _write(
            root / "files" / f"g{k % 16:02d}" / f"m{k:05d}.dat", _mixed_content(src, rng, f"ev:{k}", size, 0.5)
        )
        k += 1
    for j in range(max(50, round(10_000 * scale))):
        size = rng.randint(KiB, 16 * KiB)
        _write(root / "small" / f"s{j // 100:03d}" / f"s{j:05d}.txt", _mixed_content(src, rng, f"evs:{j}", size, 0.65))


def _files(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
    out.sort()
    return out


@dataclass
class Undo:
    """The bytes, times and modes `change_files` overwrote, to put the tree back as it was."""

    patches: list[tuple[Path, int, bytes]] = field(default_factory=list)
    stats: dict[Path, os.stat_result] = field(default_factory=dict)

    def remember(self, path: Path, offset: int, length: int) -> None:
        if path not in self.stats:
            st = path.stat()
            self.stats[path] = st
            if not os.access(path, os.W_OK):  # the real tree has read-only files
                path.chmod(stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
        with open(path, "rb") as f:
            f.seek(offset)
            self.patches.append((path, offset, f.read(length)))

    def apply(self) -> None:
        """Write back the original bytes (last change first), then the original modes and times."""
        for path, offset, data in reversed(self.patches):
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(data)
        for path, st in self.stats.items():
            path.chmod(stat.S_IMODE(st.st_mode))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.patches.clear()
        self.stats.clear()


def change_files(root: Path, fraction: float, src: ByteSource, label: str, undo: Undo | None = None) -> dict[str, int]:
    """Modify about `fraction` of the files and of the bytes under `root`, deterministically.

    - `fraction` of the files (at least one) get 4 KiB overwritten in place at a random offset
      (files under 8 KiB are rewritten whole with new content of the same size);
    - files of 4 MiB or more additionally get `fraction` of their bytes overwritten in 64 KiB
      patches spread over the file (like a database or VM image changing).
    Returns counters of what was changed; `undo`, when given, records how to change it back.
    """
    remember = undo.remember if undo is not None else (lambda path, offset, length: None)
    rng = random.Random(f"{src.seed}:{label}")
    files = _files(root)
    picked = rng.sample(files, max(1, round(len(files) * fraction))) if files else []
    changed_bytes = 0
    for i, p in enumerate(picked):
        size = p.stat().st_size
        if size < 8 * KiB:
            data = src.random(f"{label}:rw:{i}", size) if rng.random() < 0.5 else src.text(rng, size)
            remember(p, 0, size)
            p.write_bytes(data)
            changed_bytes += size
        else:
            off = rng.randrange(size - 4 * KiB)
            remember(p, off, 4 * KiB)
            with open(p, "r+b") as f:
                f.seek(off)
                f.write(src.random(f"{label}:ow:{i}", 4 * KiB))
            changed_bytes += 4 * KiB
    large = [p for p in files if p.stat().st_size >= 4 * MiB]
    for j, p in enumerate(large):
        size = p.stat().st_size
        patches = max(1, int(size * fraction) // (64 * KiB))
        with open(p, "r+b") as f:
            for k in range(patches):
                off = rng.randrange(size - 64 * KiB)
                remember(p, off, 64 * KiB)
                f.seek(off)
                f.write(src.random(f"{label}:big:{j}:{k}", 64 * KiB))
        changed_bytes += patches * 64 * KiB
    return {"files_changed": len(picked) + len(large), "bytes_changed": changed_bytes}


def evolve_step(root: Path, step: int, fraction: float, src: ByteSource) -> dict[str, int]:
    """One step of the prune corpus: of `fraction` of its files, 60 % are rewritten whole, 20 % are
    deleted and 20 % are replaced by new files of similar size under new names."""
    rng = random.Random(f"{src.seed}:evolve-step:{step}")
    files = _files(root)
    picked = rng.sample(files, max(1, round(len(files) * fraction)))
    rewritten = deleted = added = 0
    changed_bytes = 0
    for i, p in enumerate(picked):
        size = p.stat().st_size
        r = rng.random()
        data = _mixed_content(src, rng, f"evstep:{step}:{i}", size, 0.5)
        if r < 0.6:
            p.write_bytes(data)
            rewritten += 1
        elif r < 0.8:
            p.unlink()
            deleted += 1
            continue
        else:
            p.unlink()
            _write(p.with_name(f"n{step:02d}-{i:05d}-{p.name}"), data)
            added += 1
        changed_bytes += size
    return {"rewritten": rewritten, "deleted": deleted, "added": added, "bytes_changed": changed_bytes}


GENERATORS: dict[str, Callable[[Path, float, ByteSource], None]] = {
    "mixed": gen_mixed,
    "small": gen_small,
    "tiny": gen_tiny,
    "evolve": gen_evolve,
}
REAL = "real"


class Corpus:
    """The trees under ``WORK/corpus``, regenerated only when missing, changed, or made with other
    parameters (a stamp file records how each was made, what it holds, and whether it was modified)."""

    def __init__(self, work: Path, seed: int, scale: float, real: RealTreeSpec | None = None) -> None:
        self.dir = work / "corpus"
        self.seed = seed
        self.scale = scale
        self.real = real or RealTreeSpec(fraction=min(1.0, scale))
        self.src = ByteSource(seed)
        self._stamp_path = self.dir / "stamp.json"

    def path(self, name: str) -> Path:
        return self.dir / name

    def _stamp(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._stamp_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _set_stamp(self, name: str, value: dict[str, Any] | None) -> None:
        stamp = self._stamp()
        if value is None:
            stamp.pop(name, None)
        else:
            stamp[name] = value
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stamp_path.write_text(json.dumps(stamp, indent=1))

    def stamp(self, name: str) -> dict[str, Any] | None:
        """How tree `name` on disk was made and what it holds (None: not made completely)."""
        return self._stamp().get(name)

    def _want(self, name: str) -> dict[str, Any]:
        if name == REAL:
            return {"version": REAL_VERSION, **self.real.stamp(), "state": "pristine"}
        return {"version": GEN_VERSION, "seed": self.seed, "scale": self.scale, "state": "pristine"}

    def ensure(self, name: str, log: Callable[[str], None]) -> TreeInfo:
        """Make tree `name` pristine (generate it unless an identical pristine copy exists)."""
        root = self.path(name)
        want = self._want(name)
        have = self._stamp().get(name)
        if root.is_dir() and have is not None and {k: have.get(k) for k in want} == want:
            if "folders" not in have:  # stamped before folders and symlinks were counted
                have = {**have, **asdict(tree_counts(root))}
                self._set_stamp(name, have)
            return self._info(name, have, 0.0)
        self._set_stamp(name, None)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        t0 = time.perf_counter()
        details: dict[str, Any] = {}
        if name == REAL:
            details = copy_real_tree(root, self.real, log)
        else:
            GENERATORS[name](root, self.scale, self.src)
        os.sync()
        gen_s = time.perf_counter() - t0
        counts = tree_counts(root)
        stamp = {**want, **asdict(counts), **details}
        self._set_stamp(name, stamp)
        log(
            f"{'copied' if name == REAL else 'generated'} {name}: {counts.files} files, {counts.folders} folders, "
            f"{counts.symlinks} symlinks, {counts.bytes / MiB:.1f} MiB in {gen_s:.1f} s"
        )
        return self._info(name, stamp, gen_s)

    def info(self, name: str) -> TreeInfo:
        """Tree `name` as it is on disk now (counted again if it was changed since it was made)."""
        have = self._stamp().get(name)
        if have is None or have.get("state") != "pristine" or "folders" not in have:
            have = {**(have or {}), **asdict(tree_counts(self.path(name)))}
        return self._info(name, have, 0.0)

    def _info(self, name: str, stamp: dict[str, Any], gen_s: float) -> TreeInfo:
        return TreeInfo(
            self.path(name),
            int(stamp["files"]),
            int(stamp["bytes"]),
            gen_s,
            int(stamp["folders"]),
            int(stamp["symlinks"]),
            {k: v for k, v in stamp.items() if k != "state"},
        )

    def exists(self, name: str) -> bool:
        """Whether tree `name` was generated completely (pristine or changed since)."""
        return self.path(name).is_dir() and name in self._stamp()

    def mark_changed(self, name: str) -> None:
        stamp = self._stamp().get(name)
        if stamp is not None:
            self._set_stamp(name, {**stamp, "state": "changed"})

    def mark_pristine(self, name: str) -> None:
        """After an `Undo` put the tree back: it holds the bytes it was made with again."""
        stamp = self._stamp().get(name)
        if stamp is not None:
            self._set_stamp(name, {**stamp, "state": "pristine"})
