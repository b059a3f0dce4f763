"""The mount's naming rules (backupfs.mount.model), pure: no trio, no repository."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, SYMLINK, Node
from backupfs.mount.keys import content_key
from backupfs.mount.model import Model, VersionSet, safe_name, time_name

T = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20 UTC
SECOND = 1_000_000_000


def snap(time_ns: int = T, host: str = "h", tags: list[str] | None = None) -> Snapshot:
    return Snapshot(time_ns=time_ns, host=host, user="u", paths=["/"], tree=bytes(32), tags=tags or [])


def sid(prefix: str) -> str:
    return prefix + "0" * (64 - len(prefix))


def names(model: Model) -> dict[str, bytes]:
    return {s.sid: s.name for s in model.snaps}


@pytest.fixture
def utc_plus_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "BFS-2")  # POSIX: a zone named BFS, two hours east of UTC
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_time_names_are_local_seconds(utc_plus_2: None) -> None:
    assert time_name(T) == b"2023-11-15T00:13:20"
    assert time_name(T + SECOND - 1) == b"2023-11-15T00:13:20"


def test_snapshots_in_one_second_get_numbered_in_time_then_id_order() -> None:
    base = time_name(T)
    model = Model.build({sid("c"): snap(T), sid("a"): snap(T + 5), sid("b"): snap(T + 5), sid("d"): snap(T + SECOND)})
    assert [s.sid for s in model.snaps] == [sid("c"), sid("a"), sid("b"), sid("d")]
    assert names(model) == {
        sid("c"): base,
        sid("a"): base + b"-1",
        sid("b"): base + b"-2",
        sid("d"): time_name(T + SECOND),
    }
    assert model.by_name[base + b"-2"].sid == sid("b")


def test_a_name_stays_with_its_snapshot_while_it_exists() -> None:
    base = time_name(T)
    first = Model.build({sid("b"): snap(T), sid("c"): snap(T)})
    assert names(first) == {sid("b"): base, sid("c"): base + b"-1"}
    # a newer backup of the same second sorts first by id, yet takes the next free number
    second = Model.build({sid("a"): snap(T), sid("b"): snap(T), sid("c"): snap(T)}, first)
    assert names(second) == {sid("b"): base, sid("c"): base + b"-1", sid("a"): base + b"-2"}
    # a forgotten snapshot's name is free again for the next new one
    third = Model.build({sid("a"): snap(T), sid("c"): snap(T), sid("d"): snap(T)}, second)
    assert names(third) == {sid("c"): base + b"-1", sid("a"): base + b"-2", sid("d"): base}
    # without a previous model the names start over
    assert names(Model.build({sid("a"): snap(T), sid("c"): snap(T)})) == {sid("a"): base, sid("c"): base + b"-1"}


def test_short_ids_lengthen_only_where_ids_share_a_prefix() -> None:
    ids = [sid("12345678a"), sid("12345678b"), sid("1234567800ff1"), sid("1234567800ff2"), sid("9")]
    model = Model.build({i: snap(T + n) for n, i in enumerate(ids)})
    by_sid = {s.sid: short for short, s in model.by_short.items()}
    assert by_sid == {
        ids[0]: b"12345678a",
        ids[1]: b"12345678b",
        ids[2]: b"1234567800ff1",
        ids[3]: b"1234567800ff2",
        ids[4]: b"90000000",
    }
    assert len(Model.build({ids[0]: snap()}).by_short) == 1
    assert next(iter(Model.build({ids[0]: snap()}).by_short)) == b"12345678"


def test_hosts_and_tags_group_snapshots_under_safe_names() -> None:
    model = Model.build(
        {
            sid("a"): snap(T, host="laptop", tags=["nightly", "a/b", "nightly"]),
            sid("b"): snap(T + SECOND, host="srv/1", tags=["nightly"]),
            sid("c"): snap(T + 2 * SECOND, host="laptop"),
        }
    )
    assert {g: [s.sid for s in m] for g, m in model.hosts.items()} == {
        b"laptop": [sid("a"), sid("c")],
        b"srv_1": [sid("b")],
    }
    assert {g: [s.sid for s in m] for g, m in model.tags.items()} == {
        b"nightly": [sid("a"), sid("b")],  # a tag given twice lists the snapshot once
        b"a_b": [sid("a")],
    }
    assert [s.sid for s in model.group(True, b"nightly")] == [sid("a"), sid("b")]
    assert [s.sid for s in model.group(False, b"laptop")] == [sid("a"), sid("c")]
    assert model.group(False, b"nightly") == [] and model.group(True, b"laptop") == []
    assert model.newest_ns == T + 2 * SECOND
    assert Model.build({}).newest_ns == 0


def test_safe_names() -> None:
    assert safe_name("a/b\0c") == b"a_b_c"
    assert [safe_name(s) for s in ("", ".", "..")] == [b"_", b"_.", b"_.."]
    assert safe_name("...") == b"..."
    assert safe_name("caf\udce9") == b"caf\xe9"  # a host name that was not UTF-8 keeps its bytes


def test_host_and_tag_names_longer_than_a_file_name_are_cut_and_stay_distinct() -> None:
    """The kernel refuses to look up a name over 255 bytes: it would be listed, but not open."""
    assert safe_name("h" * 255) == b"h" * 255
    long = [safe_name("h" * 300), safe_name("h" * 301), safe_name("\u00e9" * 200)]
    assert [len(n) for n in long] == [255, 255, 255]
    assert long[0] != long[1] and long[0].startswith(b"h" * 200) and long[0][-17:-16] == b"~"
    long[2].decode()  # not cut inside a UTF-8 character
    assert long[2][:-17].decode() == "\u00e9" * 119


def file(chunks: list[bytes], size: int, **meta: int) -> Node:
    offsets = [i * 10 for i in range(len(chunks))]
    return Node(name=b"f", type=FILE, size=size, content=list(zip(offsets, chunks, strict=True)), **meta)  # type: ignore[arg-type]


def test_content_identity_ignores_metadata() -> None:
    one = file([b"a" * 32, b"b" * 32], 20, mode=0o644, mtime_ns=1)
    assert content_key(one) == content_key(file([b"a" * 32, b"b" * 32], 20, mode=0o600, mtime_ns=2, uid=5))
    assert content_key(one) != content_key(file([b"a" * 32, b"c" * 32], 20))  # other chunks
    assert content_key(one) != content_key(file([b"a" * 32, b"b" * 32], 21))  # other size
    link = Node(name=b"f", type=SYMLINK, link_target=b"a")
    assert content_key(link) != content_key(Node(name=b"f", type=SYMLINK, link_target=b"b"))
    assert content_key(Node(name=b"f", type="c", rdev=1)) != content_key(Node(name=b"f", type="c", rdev=2))


def test_a_version_set_keeps_each_distinct_content_under_its_first_snapshot() -> None:
    versions = VersionSet()
    versions.add(b"s1", file([b"a" * 32], 5, mtime_ns=1))
    versions.add(b"s2", file([b"a" * 32], 5, mtime_ns=2))  # touched only: not a new version
    versions.add(b"s3", file([b"b" * 32], 5))
    versions.add(b"s4", file([b"a" * 32], 5))  # back to the first content: still named s1
    versions.add(b"s5", Node(name=b"f", type=DIR, mode=0o700, subtree=b"t" * 32))
    versions.add(b"s6", Node(name=b"f", type=DIR, mode=0o750, subtree=b"t" * 32))
    versions.add(b"s7", Node(name=b"f", type=DIR, mode=0o755, subtree=b"u" * 32))
    assert [name for name, _ in versions.leaves] == [b"s1", b"s3"]
    assert versions.trees == [(b"s5", b"t" * 32), (b"s7", b"u" * 32)]
    assert versions.meta is not None and versions.meta.mode == 0o755  # the newest folder guards it
    assert not versions.empty() and VersionSet().empty()


def test_the_model_needs_neither_trio_nor_pyfuse3() -> None:
    code = "import sys, backupfs.mount.model; print(sorted(m for m in sys.modules if m in ('trio', 'pyfuse3')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout
    assert out.strip() == "[]"
