"""Identity keys, from which the mount's inode numbers are derived (docs/architecture.md, section 6).

Pure. One function per kind of key, so that the table of keys in the design is this file.
"""

from __future__ import annotations

import xxhash

from backupfs.format.tree import FILE, Node

FIRST_HASHED_INO = 1 << 16  # derived numbers stay clear of the fixed ones
_INO_MASK = (1 << 63) - 1
_CONTENT_KEY_TAG = b"\x01"  # a domain separator: these keys hash nothing else


def hash_ino(key: bytes, salt: int = 0) -> tuple[int, int]:
    """(inode number, check value) for an identity key; `salt` probes past a collision."""
    h: int = xxhash.xxh3_128_intdigest(key, seed=salt)
    ino = h & _INO_MASK
    if ino < FIRST_HASHED_INO:
        ino += FIRST_HASHED_INO
    return ino, h >> 64


def u64(n: int) -> bytes:
    return (n & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")


def child_key(parent: int, name: bytes) -> bytes:
    """An entry of a snapshot tree, a host or tag folder, a folder under versions/."""
    return u64(parent) + name


def hardlink_key(root: int, device: int, inode: int) -> bytes:
    """A hardlinked file: all its names in one snapshot folder share the number."""
    return b"\0hl" + u64(root) + u64(device) + u64(inode)


def snapshot_key(parent: int, name: bytes, sid: str) -> bytes:
    """A snapshot folder: a name reused by another snapshot is another folder."""
    return u64(parent) + name + b"\0" + sid.encode()


def latest_key(parent: int, target: bytes) -> bytes:
    """A `latest` symlink: a new target is a new inode."""
    return u64(parent) + b"latest\0" + target


def version_key(parent: int, name: bytes, node: Node) -> bytes:
    """A file version under versions/."""
    return u64(parent) + name + b"\0" + content_key(node)


def content_key(node: Node) -> bytes:
    """Equal for two versions of a path with the same content (metadata aside): type, size,
    chunk ids, link target and device number."""
    parts = [_CONTENT_KEY_TAG, node.type.encode(), u64(node.size if node.type == FILE else 0), u64(node.rdev or 0)]
    parts += [bid for _, bid in node.content or ()]
    parts.append(node.link_target or b"")
    return xxhash.xxh3_128_digest(b"".join(parts))
