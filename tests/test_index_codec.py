"""One index codec (format.md 8): the repository's decoder (`IndexFile.decode`) and prune's
streaming one (`BlobTable.add_index_file`) accept the same bytes and reject the same bytes with
the same message, and an authenticated but out-of-range value is a damaged index file named as
such, never an "internal error" later (issue 10).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fastrepo import FAST_KDF, init_fast
from support.cli import CLI, PASSWORD

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.backends.memory import MemoryBackend
from backupfs.errors import IntegrityError
from backupfs.format import index as index_fmt
from backupfs.format.index import IndexFile, encode_index
from backupfs.format.pack import DATA, PackEntry, check_entries, decode_header, encode_header, entry_problem
from backupfs.prune.plan import PruneRefused, plan_prune
from backupfs.prune.table import REC_SIZE, BlobTable, entries_of
from backupfs.repository.repo import Repository

P = b"p" * 32
Q = b"q" * 32
ID = b"i" * 32
GOOD = [DATA, ID, 0, 100, 80]
U32 = 1 << 32
WHERE = f"index file malformed: pack {P.hex()[:16]}"


def _file(packs: object = ((P, [GOOD]),), supersedes: object = (), **extra: object) -> bytes:
    return msgpack.packb({"supersedes": supersedes, "packs": packs, **extra}, use_bin_type=True)  # type: ignore[no-any-return]


def _entry(**change: object) -> list[object]:
    fields = ["type", "id", "offset", "length", "raw"]
    return [change.get(f, v) for f, v in zip(fields, GOOD, strict=True)]


GOOD_FILE = _file()
# every way an index file's plaintext can break a rule of format.md 8 -> what the message says
MALFORMED: dict[str, tuple[bytes, str]] = {
    "offset 2^32": (_file([[P, [_entry(offset=U32)]]]), f"{WHERE}: entry 0: offset 4294967296 is out of range"),
    "length 2^32": (_file([[P, [GOOD, _entry(length=U32)]]]), f"{WHERE}: entry 1: length 4294967296 is out of range"),
    "raw length 2^32": (_file([[P, [_entry(raw=U32)]]]), f"{WHERE}: entry 0: raw length 4294967296 is out of range"),
    "offset 2^64-1": (_file([[P, [_entry(offset=2**64 - 1)]]]), f"{WHERE}: entry 0: offset 18446744073709551615 is"),
    "negative offset": (_file([[P, [_entry(offset=-1)]]]), f"{WHERE}: entry 0: offset -1 is out of range"),
    "bool offset": (_file([[P, [_entry(offset=False)]]]), f"{WHERE}: entry 0: offset False is out of range"),
    "float length": (_file([[P, [_entry(length=5.0)]]]), f"{WHERE}: entry 0: length 5.0 is out of range"),
    "type 2": (_file([[P, [_entry(type=2)]]]), f"{WHERE}: entry 0: blob type 2 is not 0 (data) or 1 (tree)"),
    "bool type": (_file([[P, [_entry(type=True)]]]), f"{WHERE}: entry 0: blob type True is not 0 (data) or 1"),
    "negative type": (_file([[P, [_entry(type=-1)]]]), f"{WHERE}: entry 0: blob type -1 is not"),
    "31-byte blob id": (_file([[P, [_entry(id=ID[:31])]]]), f"{WHERE}: entry 0: blob id is not 32 bytes"),
    "33-byte blob id": (_file([[P, [_entry(id=ID + b"x")]]]), f"{WHERE}: entry 0: blob id is not 32 bytes"),
    "str blob id": (_file([[P, [_entry(id="i" * 32)]]]), f"{WHERE}: entry 0: blob id is not 32 bytes"),
    "4 fields": (_file([[P, [GOOD[:4]]]]), f"{WHERE}: entry 0: 4 fields instead of 5"),
    "6 fields": (_file([[P, [[*GOOD, 0]]]]), f"{WHERE}: entry 0: 6 fields instead of 5"),
    "entry not an array": (_file([[P, [5]]]), f"{WHERE}: entry 0: not an array"),
    "blobs not an array": (_file([[P, 5]]), f"{WHERE}: the blob list is not an array"),
    "pack with no blobs": (_file([[P, []]]), f"{WHERE} lists no blobs"),
    "pack listed twice": (_file([[P, [GOOD]], [Q, [GOOD]], [P, [GOOD]]]), f"{WHERE} is listed twice"),
    "31-byte pack id": (_file([[P[:31], [GOOD]]]), "index file malformed: pack 0: the pack id is not 32 bytes"),
    "pack not a pair": (_file([[P, [GOOD]], [Q]]), "index file malformed: pack 1 is not a [pack id, blobs] pair"),
    "31-byte superseded id": (_file(supersedes=[b"s" * 32, b"s" * 31]), "'supersedes' entry 1 is not a 32-byte id"),
    "supersedes not an array": (_file(supersedes=b"s" * 32), "index file malformed: 'supersedes' is not an array"),
    "packs not an array": (_file(packs={"a": 1}), "index file malformed: 'packs' is not an array"),
    "packs missing": (msgpack.packb({"supersedes": []}), "index file malformed: key 'packs' is missing"),
    "unknown key": (_file(extra=1), "index file malformed: unknown key 'extra'"),
    "huge unknown key": (_file(**{"k" * 10**6: 1}), "index file malformed: unknown key 'kkkkkkkk"),
    "repeated key": (b"\x82\xa5packs\x90\xa5packs\x90", "index file malformed: key 'packs' appears twice"),
    "not a map": (msgpack.packb([[P, [GOOD]]], use_bin_type=True), "index file malformed: the file is not a map"),
    "trailing data": (GOOD_FILE + b"\xc0", "index file malformed: trailing data after the map"),
    "truncated": (GOOD_FILE[:-1], "index file is not valid msgpack"),
    "empty": (b"", "index file is not valid msgpack"),
    "bad utf-8 key": (b"\x81\xa2\xff\xfe\x90", "index file is not valid msgpack"),
}


def _table_decode(data: bytes) -> tuple[list[bytes], list[tuple[bytes, list[PackEntry]]]]:
    """Prune's streaming decode, with its records turned back into entries to compare."""
    table = BlobTable()
    supersedes, packs = table.add_index_file(data)
    return supersedes, [(pid, [table.entry(g) for g in range(start, start + n)]) for pid, start, n in packs]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_both_decoders_reject_the_same_bytes_with_the_same_message(case: str) -> None:
    data, expected = MALFORMED[case]
    with pytest.raises(IntegrityError) as repo_side:
        IndexFile.decode(data)
    with pytest.raises(IntegrityError) as prune_side:
        _table_decode(data)
    assert str(repo_side.value) == str(prune_side.value)
    assert expected in str(repo_side.value) and len(str(repo_side.value)) < 200


@pytest.mark.parametrize(
    "data",
    [
        GOOD_FILE,
        msgpack.packb({"packs": [[P, [GOOD]]]}, use_bin_type=True),  # "supersedes" may be left out
        msgpack.packb({"packs": [[P, [GOOD]]], "supersedes": [b"s" * 32]}, use_bin_type=True),  # any key order
        _file(packs=[]),  # an index naming no pack (prune writes one when nothing is left)
        _file([[P, [_entry(offset=U32 - 1, length=U32 - 1, raw=U32 - 1, type=1)]], [Q, [GOOD, GOOD]]]),
    ],
)
def test_both_decoders_accept_the_same_bytes_with_the_same_result(data: bytes) -> None:
    index = IndexFile.decode(data)
    supersedes, packs = _table_decode(data)
    assert supersedes == index.supersedes
    assert packs == list(index.packs.items())


def test_both_decoders_agree_on_damaged_and_random_bytes() -> None:
    """Every truncation, every flipped byte and random garbage: the same outcome from both."""
    rng = random.Random(11)
    valid = _file([[P, [GOOD, _entry(offset=7, type=1)]], [Q, [GOOD]]], supersedes=[b"s" * 32])
    candidates = [valid[:n] for n in range(len(valid))]
    for i in range(len(valid)):
        for bit in (0x01, 0x80):
            flipped = bytearray(valid)
            flipped[i] ^= bit
            candidates.append(bytes(flipped))
    candidates += [rng.randbytes(rng.randrange(1, 100)) for _ in range(300)]
    for data in candidates:
        outcomes = []
        for decode in (IndexFile.decode, _table_decode):
            try:
                decoded = decode(data)
            except IntegrityError as exc:
                outcomes.append(str(exc))
            else:
                index = decoded if isinstance(decoded, IndexFile) else IndexFile(dict(decoded[1]), decoded[0])
                outcomes.append(repr(index))
        assert outcomes[0] == outcomes[1], data


def test_one_encoder_for_entries_and_for_records() -> None:
    """Prune writes from its records exactly what IndexFile.encode writes, and both decode back."""
    rng = random.Random(3)
    packs = {rng.randbytes(32): [PackEntry(rng.randrange(2), rng.randbytes(32), i, 9, 7) for i in range(n)] for n in (1, 30)}
    plain = IndexFile(packs, [b"s" * 32]).encode()
    table = BlobTable()
    _sup, spans = table.add_index_file(plain)
    from_records = [(pid, entries_of(table.recs[s * REC_SIZE : (s + n) * REC_SIZE])) for pid, s, n in spans]
    assert encode_index(from_records, [b"s" * 32]) == plain
    assert IndexFile.decode(plain) == IndexFile(packs, [b"s" * 32])


def test_pack_header_applies_the_same_entry_rules() -> None:
    good = PackEntry(DATA, ID, 0, 100, 80)
    assert decode_header(encode_header([good])) == [good]
    cases: list[tuple[dict[str, object], str]] = [
        ({"offset": U32}, "offset 4294967296 is out of range"),
        ({"length": U32}, "length 4294967296 is out of range"),
        ({"type": True}, "blob type True is not 0 (data) or 1 (tree)"),
        ({"id": ID[:31]}, "blob id is not 32 bytes"),
    ]
    for change, message in cases:
        data = msgpack.packb([GOOD, _entry(**change)], use_bin_type=True)
        with pytest.raises(IntegrityError) as exc:
            decode_header(data)
        assert str(exc.value).startswith(f"pack header malformed: entry 1: {message}")
    with pytest.raises(IntegrityError) as exc:
        decode_header(msgpack.packb({"a": 1}))
    assert str(exc.value) == "pack header malformed: the blob list is not an array"


def test_the_fast_entry_check_accepts_only_what_the_rule_accepts() -> None:
    """check_entries tests the common case inline; it must agree with entry_problem on every value."""
    values: list[Any] = [None, True, False, -1, 0, 1, 2, U32 - 1, U32, 2**63, 1.0, "s", b"", ID, ID[:31], (), [1]]
    rng = random.Random(5)
    for _ in range(3000):
        item = [rng.choice(values) for _ in range(5)]
        if rng.random() < 0.5:  # mostly good, so single bad fields get tested too
            item = list(GOOD)
            item[rng.randrange(5)] = rng.choice(values)
        entry = tuple(item) if rng.random() < 0.8 else item
        ok = entry_problem(entry) == ""
        try:
            check_entries((entry,), "x")
        except IntegrityError:
            assert not ok, entry
        else:
            assert ok, entry


# ---------------------------------------------------------------- through the repository and the CLI


def _forge_index(repo: Repository, offset: int) -> str:
    """An index file sealed with the repository's real key (an attacker with the password, or a bug)
    that places a blob at `offset`."""
    plain = encode_index([(os.urandom(32), [(DATA, os.urandom(32), offset, 100, 80)])], [])
    return repo.save_file(FileType.INDEX, plain, index_fmt.AAD)


def test_repository_and_prune_name_the_index_file_with_an_offset_beyond_u32() -> None:
    backend = MemoryBackend()
    repo = Repository.init(backend, PASSWORD.encode(), kdf=FAST_KDF)
    repo.save_blob(DATA, b"some data")
    repo.flush()
    name = _forge_index(repo, U32)
    repo.close()
    warnings: list[str] = []
    repo = Repository.open(backend, PASSWORD.encode(), warn=warnings.append)
    try:
        repo.load_index()  # a damaged index file is skipped, named once (architecture.md 4), never a crash
        assert "offset 4294967296 is out of range" in repo.damaged_index_files[name]
        (line,) = [w for w in warnings if name[:8] in w]
        assert "is damaged and was skipped" in line and "offset 4294967296 is out of range" in line
        with pytest.raises(PruneRefused, match=rf"index file {name[:8]} is damaged \(index/{name}: .*offset 4294967296 is out of range"):
            plan_prune(repo)
    finally:
        repo.close()


def test_cli_names_the_damaged_index_file_instead_of_an_internal_error(tmp_path: Path, make_cli: Any) -> None:
    cli: CLI = make_cli(tmp_path / "repo")
    init_fast(cli.repo)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"content")
    cli("backup", tmp_path / "src")
    repo = Repository.open(LocalBackend(str(cli.repo)), PASSWORD.encode())
    try:
        name = _forge_index(repo, U32)
    finally:
        repo.close()
    proc = cli("ls", "latest", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err  # skipped: the other index file still lists everything
    assert "internal error" not in err and "Traceback" not in err, err
    (line,) = err.splitlines()
    assert line.startswith(f"warning: index file {name[:8]} is damaged and was skipped (index file malformed: pack ")
    assert "offset 4294967296" in line and "backupfs repair index" in line
    prune = cli("prune", check=False)
    assert prune.returncode == 4 and f"damaged (index/{name}: " in prune.stderr.decode(), prune.stderr.decode()
