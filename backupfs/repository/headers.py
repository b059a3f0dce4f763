"""Local copies of pack headers read from the packs themselves, and the local damaged-blob list.

A pack that no readable index file lists (its index file is damaged, superseded by a forged one,
or a killed backup never wrote it) is found from its own header: one ranged read of the pack's
end. A pack never changes (its name is the hash of its bytes), so the header is kept locally and
the next command reads it from disk. The header stays the encrypted envelope it is in the pack,
authenticated each time it is used: the copy is verified, not trusted.

`check --read-data` writes the blobs it found damaged, each with its pack, to `damaged-blobs`;
readers then try other copies of those blobs first, and backup stores such a chunk again instead
of reusing it (architecture.md 4). The list is local, like the index cache: another machine learns of
the damage from its own check, or once `repair packs` has taken the blobs out of the index.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading

from backupfs.repository.localfile import write_atomic
from backupfs.repository.masterindex import ID_SIZE

_SIZE = struct.Struct("<Q")  # the pack's size, before the envelope in a cached header file
_HEX_ID = 2 * ID_SIZE


class HeaderCache:
    """pack id (hex) -> (pack size, header envelope); in memory always, on disk with a cache folder."""

    def __init__(self, root: str | None, repo_id: bytes) -> None:
        self.dir = os.path.join(root, repo_id.hex(), "headers") if root else None
        self._mem: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, pack: str) -> tuple[int, bytes] | None:
        with self._lock:
            found = self._mem.get(pack)
        if found is not None or self.dir is None:
            return found
        try:
            with open(os.path.join(self.dir, pack), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) <= _SIZE.size:
            return None
        return _SIZE.unpack_from(data)[0], data[_SIZE.size :]

    def put(self, pack: str, size: int, envelope: bytes) -> None:
        with self._lock:
            self._mem[pack] = (size, envelope)
        if self.dir is not None:
            write_atomic(os.path.join(self.dir, pack), _SIZE.pack(size) + envelope)

    def remove(self, pack: str) -> None:
        with self._lock:
            self._mem.pop(pack, None)
        if self.dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dir, pack))


class DamagedBlobs:
    """The local list of (blob id, pack id) that `check --read-data` found damaged."""

    def __init__(self, root: str | None, repo_id: bytes) -> None:
        self.path = os.path.join(root, repo_id.hex(), "damaged-blobs") if root else None

    def load(self) -> dict[bytes, set[bytes]]:
        """blob id -> the packs whose copy of it is damaged; a malformed line is ignored."""
        out: dict[bytes, set[bytes]] = {}
        if self.path is None:
            return out
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return out
        for line in lines:
            parts = line.split()
            if len(parts) != 2 or any(len(p) != _HEX_ID for p in parts):
                continue
            try:
                blob, pack = bytes.fromhex(parts[0]), bytes.fromhex(parts[1])
            except ValueError:
                continue
            out.setdefault(blob, set()).add(pack)
        return out

    def update(self, read: set[bytes], found: dict[bytes, set[bytes]]) -> None:
        """Replaces what is known about the packs in `read` (a check read them) by `found`:
        blob id -> the packs among them that hold it damaged."""
        if self.path is None:
            return
        known = self.load()
        for blob in list(known):
            known[blob] -= read
            if not known[blob]:
                del known[blob]
        for blob, packs in found.items():
            known.setdefault(blob, set()).update(packs)
        lines = sorted(f"{b.hex()} {p.hex()}\n" for b, packs in known.items() for p in packs)
        if lines or os.path.exists(self.path):
            write_atomic(self.path, "".join(lines).encode("ascii"))
