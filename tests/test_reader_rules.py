"""The reader rules for stored trees (format.md 9).

`read_listing` is what every reader (ls, cat, restore, check, the mount) sees of a tree blob: it
must hold its promises for any bytes at all, which the fuzzing below checks with the same
type-confused variants the other decoders face (test_units.py).
"""

from __future__ import annotations

import random

import msgpack
import pytest
from test_units import _mutations

from backupfs.errors import IntegrityError
from backupfs.format import tree as tree_fmt


def test_any_bytes_read_as_a_listing_keep_the_reader_rules() -> None:
    bid = b"b" * 32
    valid = tree_fmt.encode_tree(
        [
            tree_fmt.Node(name=b"f", type="f", size=100, content=[(0, bid)], xattrs=[(b"user.a", b"v")]),
            tree_fmt.Node(name=b"d", type="d", subtree=b"y" * 32),
            tree_fmt.Node(name=b"l", type="l", link_target=b"/t"),
        ]
    )
    _assert_reader_rules(tree_fmt.read_listing(valid))
    rng = random.Random("tree listing")
    candidates = [valid[:n] for n in range(len(valid))] + [rng.randbytes(rng.randrange(1, 200)) for _ in range(300)]
    base = msgpack.unpackb(valid, raw=False, strict_map_key=False)
    candidates += [msgpack.packb(m, use_bin_type=True) for m in _mutations(base)]
    extremes = [-(2**63), -1, 2**32, 2**63, 2**64 - 1]
    for key in ("m", "u", "g", "s", "i", "dv", "nl", "rd", "mt"):
        for value in extremes:
            entries = [{**e, key: value} for e in base["entries"]]
            candidates.append(msgpack.packb({"v": 1, "entries": entries}, use_bin_type=True))
    for data in candidates:
        try:
            listing = tree_fmt.read_listing(data)
        except IntegrityError:
            continue  # the blob as a whole is unreadable: that folder fails, nothing else
        _assert_reader_rules(listing)


def _assert_reader_rules(listing: object) -> None:
    """What `read_listing` promises every reader (format.md 9), whatever the bytes were."""
    assert isinstance(listing, tree_fmt.Listing)
    names = [n.name for n in listing]
    assert names == sorted(set(names))
    for n in listing:
        assert n.is_safe_name() and len(n.name) <= tree_fmt.NAME_MAX
        assert 0 <= n.mode <= 0o7777 and 0 <= n.uid < 2**32 and 0 <= n.gid < 2**32 and 0 <= n.size < 2**63
        for v in (n.inode, n.device, n.rdev):
            assert v is None or 0 <= v < 2**64
        assert n.nlink is None or 0 <= n.nlink < 2**32
        assert all(k and b"\0" not in k and len(k) <= 255 and len(v) <= 65536 for k, v in n.xattrs or ())
        if n.defect is None and n.type == tree_fmt.FILE:
            offsets = [off for off, _bid in n.content or ()]
            assert offsets == sorted(set(offsets)) and all(off < n.size for off in offsets)
        if n.defect is None and n.type == tree_fmt.SYMLINK:
            assert n.link_target and b"\0" not in n.link_target and len(n.link_target) < 4096
        if n.defect is None and n.type == tree_fmt.DIR:
            assert n.subtree is not None
    assert all(isinstance(p, tree_fmt.EntryProblem) and p.message for p in listing.problems)


def test_read_listing_leaves_out_repairs_or_marks_each_bad_entry() -> None:
    """One entry per rule of format.md 9, next to a good one that must come through untouched."""
    bid = b"b" * 32

    def f(name: bytes, **fields: object) -> dict[str, object]:
        return {"n": name, "t": "f", "m": 0o644, "u": 1, "g": 2, "s": 10, "c": [[0, bid]], **fields}

    entries = [
        f(b"z-good"), f(b".."), f(b"z-good", s=1), f(b"nul\0"), {"n": b"t", "t": "?"},
        f(b"uid", u=-1), f(b"mode", m=0o100644), f(b"holes", c=[[5, bid], [5, bid]]), f(b"size", s=-1),
        {"n": b"l", "t": "l", "lt": b""}, {"n": b"d", "t": "d"}, f(b"mt", mt=1.5), f(b"fh", fh=b"short"),
    ]  # fmt: skip
    listing = tree_fmt.read_listing(msgpack.packb({"v": 1, "entries": entries}, use_bin_type=True))
    _assert_reader_rules(listing)
    assert [n.name for n in listing] == [b"d", b"fh", b"holes", b"l", b"mode", b"mt", b"size", b"uid", b"z-good"]
    assert listing.unsorted
    good = listing[-1]
    assert (good.size, good.uid, good.gid, good.mode, good.defect) == (10, 1, 2, 0o644, None)
    kinds = {(p.name, p.kind) for p in listing.problems}
    skipped, repaired, unreadable = tree_fmt.SKIPPED, tree_fmt.REPAIRED, tree_fmt.UNREADABLE
    assert kinds == {
        (b"..", skipped), (b"z-good", skipped), (b"nul\0", skipped), (b"t", skipped), (b"uid", repaired),
        (b"mode", repaired), (b"mt", repaired), (b"fh", repaired), (b"holes", unreadable), (b"size", unreadable), (b"l", unreadable),
        (b"d", unreadable),
    }  # fmt: skip
    by_name = {n.name: n for n in listing}
    assert by_name[b"uid"].uid == tree_fmt.NOBODY and by_name[b"mode"].mode == 0o644 and by_name[b"mt"].mtime_ns == 0
    assert by_name[b"fh"].file_hash is None
    assert listing.repairs_of(b"uid") == ["uid -1 is out of range: shown as 65534"] and listing.repairs_of(b"d") == []
    # prune's decoder keeps every entry as stored, and refuses the malformed ones
    with pytest.raises(IntegrityError):
        tree_fmt.decode_tree(msgpack.packb({"v": 1, "entries": entries}, use_bin_type=True))
