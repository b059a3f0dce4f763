"""Hostile names and values in stored trees: one bad entry costs that entry only (issue 10).

One repository, forged with the real key (hostile.py), holds a folder /x in which every kind of
bad entry of format.md 9 sits next to good ones, an unsorted folder /y and a folder /t whose
references name blobs of the wrong type; a second snapshot has host and tag names no file name
can hold and an owner no uid can be. Each reader (ls, cat, restore, check, a real FUSE mount) must
list or restore everything good, name each bad entry once with its path, end with its documented
exit code, and never crash.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile import Forge, assert_clean
from mounting import CAN_MOUNT, SKIP_REASON, Cli, Mount
from test_mount import mount  # noqa: F401 - the fixture, shared with the other mount tests

GOOD = {b"fine.txt": b"fine\n", b"a": b"the real a\n"}
CONTROL_NAMES = [b"evil\nname", b"esc\x1b[31mred", b"\xff\xfe-not-utf8"]
CONTROL_SHOWN = ["evil\\nname", "esc\\x1b[31mred", "\\xff\\xfe-not-utf8"]
REPAIRED = [b"huge_uid", b"huge_mode", b"neg_mode", b"bad_ids", b"bad_field", b"xattrs"]
UNREADABLE_FILES = [b"huge_size", b"neg_size", b"bad\nsize\x1b[2J", b"unsorted_chunks", b"chunk_beyond", b"bad_content"]
UNREADABLE_LINKS = [b"nul_target", b"long_target"]
LISTED = {*GOOD, b"sub", *CONTROL_NAMES, *REPAIRED, *UNREADABLE_FILES, *UNREADABLE_LINKS, b"no_listing"}
NOT_A_MAP, NO_NAME = 14, 15  # positions in /x of two entries that cannot even be named

# What each reader says about /x, as `ls` prints it (after "warning: "), in the stored order.
LEFT_OUT = [
    "/x: entry '' left out: its name is empty",
    "/x: entry '.' left out: its name is '.'",
    "/x: entry '..' left out: its name is '..'",
    "/x: entry '..' left out: its name is '..'",
    "/x: entry 'a/b' left out: its name contains '/'",
    "/x: entry 'a\\x00evil' left out: its name contains a NUL byte",
    f"/x: entry '{'L' * 256}' left out: its name is longer than 255 bytes",
    "/x: entry 'weird' left out: its type 'z' is unknown",
    f"/x: entry #{NOT_A_MAP} left out: it is not a map",
    f"/x: entry #{NO_NAME} left out: it has no name",
    "/x: entry 'fine.txt' left out: another entry of the same name comes first",
]
SHOWN_REPAIRED = [
    "/x/bad_field: its field 'mt' is not an integer: left out",
    "/x/bad_ids: inode -1 is out of range: left out",
    "/x/bad_ids: nlink 1099511627776 is out of range: left out",
    "/x/bad_ids: rdev -1 is out of range: left out",
    "/x/huge_mode: mode 0o20000000000644 is out of range: shown as 0o644",
    "/x/huge_uid: uid 1099511627776 is out of range: shown as 65534",
    "/x/huge_uid: gid -1 is out of range: shown as 65534",
    "/x/neg_mode: mode -0o1 is out of range: shown as 0o0",
    "/x/xattrs: 3 extended attributes left out (a malformed name)",
]
CANNOT_BE_READ = [
    "/x/bad\\nsize\\x1b[2J: cannot be read: its size -1 is out of range",
    "/x/bad_content: cannot be read: its chunk list is malformed",
    "/x/chunk_beyond: cannot be read: its chunk offsets are not ascending, or lie beyond its size",
    "/x/huge_size: cannot be read: its size 18446744073709551615 is out of range",
    "/x/long_target: cannot be read: its symlink target is longer than 4095 bytes",
    "/x/neg_size: cannot be read: its size -5 is out of range",
    "/x/no_listing: cannot be read: it is a folder without a listing",
    "/x/nul_target: cannot be read: its symlink target contains a NUL byte",
    "/x/unsorted_chunks: cannot be read: its chunk offsets are not ascending, or lie beyond its size",
]
ABOUT_X = LEFT_OUT + SHOWN_REPAIRED + CANNOT_BE_READ
LONG_HOST, LONG_TAG = "h" * 300, "t" * 300
OVERLAP = (b"A" * 100, b"B" * 100)  # two chunks of /c, each 100 bytes
# A chunk gives the bytes up to the next chunk's offset: so every reader reads these.
C_CONTENT = {"overlap": b"A" * 50 + b"B" * 100, "short": b"A" * 100 + bytes(100) + b"B" * 100}


@dataclass
class Hostile:
    cli: Cli
    base: Path
    sid: str  # the snapshot of /x, /y and /t
    tree_blob: bytes
    data_blob: bytes


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    base = tmp_path_factory.mktemp("hostile")
    cli = Cli(base)
    f = Forge(cli.repo)
    try:
        one, two = f.data(b"1" * 100), f.data(b"2" * 100)
        x = [
            f.file(b"fine.txt", GOOD[b"fine.txt"]),
            f.file(b"a", GOOD[b"a"]),
            f.folder(b"sub", [f.file(b"inner.txt", b"inner\n")]),
            *(f.file(name, b"control\n") for name in CONTROL_NAMES),
            f.file(b"", b"empty name\n"),
            f.file(b".", b"dot\n"),
            f.file(b"..", b"dotdot\n"),
            f.folder(b"..", [f.file(b"escaped", b"escaped\n")]),
            f.file(b"a/b", b"slash\n"),
            f.file(b"a\0evil", b"EVIL\n"),  # would shadow "a" where names end at a NUL
            f.file(b"L" * 256, b"long\n"),
            f.file(b"weird", b"?", t="z"),
            42,  # position NOT_A_MAP
            {"t": "f", "s": 0},  # position NO_NAME
            f.file(b"fine.txt", b"impostor\n"),
            f.file(b"huge_uid", b"x", u=2**40, g=-1),
            f.file(b"huge_mode", b"x", m=2**40 + 0o644),
            f.file(b"neg_mode", b"x", m=-1),
            f.file(b"bad_ids", b"x", i=-1, dv=2**64 - 1, nl=2**40, rd=-1),
            f.file(b"bad_field", b"x", mt="yesterday"),
            f.file(
                b"xattrs", b"x", x=[[b"user.ok", b"v"], [b"", b"v"], [b"user.big", b"x" * 70_000], [b"user.ok", b"2"]]
            ),
            f.file(b"huge_size", b"x", s=2**64 - 1),
            f.file(b"neg_size", b"x", s=-5),
            f.file(b"bad\nsize\x1b[2J", b"x", s=-1),
            f.file(b"unsorted_chunks", b"", s=200, c=[[100, one], [0, two]]),
            f.file(b"chunk_beyond", b"", s=10, c=[[0, one], [1000, two]]),
            f.file(b"bad_content", b"", s=10, c="garbage"),
            {"n": b"nul_target", "t": "l", "m": 0o777, "lt": b"a\0b"},
            {"n": b"long_target", "t": "l", "m": 0o777, "lt": b"t" * 5000},
            {"n": b"no_listing", "t": "d", "m": 0o755},
        ]
        assert x[NOT_A_MAP] == 42 and "n" not in x[NO_NAME]
        y = [f.file(b"z", b"z\n"), f.file(b"a", b"a\n"), f.file(b"m", b"m\n")]  # unsorted, nothing else
        tree_blob = f.tree([f.file(b"inside", b"inside\n")])
        data_blob = f.data(b"plain file data, not a listing\n")
        t = [
            f.folder(b"data_as_listing", [], st=data_blob),
            f.file(b"fine", b"fine\n"),
            f.file(b"tree_as_chunk", b"", s=100, c=[[0, tree_blob]]),
        ]
        c = [  # chunks longer or shorter than the room their offsets give them
            f.file(b"overlap", b"", s=150, c=[[0, f.data(OVERLAP[0])], [50, f.data(OVERLAP[1])]]),
            f.file(b"short", b"", s=300, c=[[0, f.data(OVERLAP[0])], [200, f.data(OVERLAP[1])]]),
        ]
        sid = f.snapshot([f.folder(b"c", c), f.folder(b"t", t), f.folder(b"x", x), f.folder(b"y", y)])
        f.snapshot([f.file(b"hello", b"hi\n")], host=LONG_HOST, tags=[LONG_TAG, "ok"], uid=2**40, gid=-1)
    finally:
        f.close()
    return Hostile(cli, base, sid, tree_blob, data_blob)


def _lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


def _check_lines(out: bytes, sid: str) -> list[str]:
    """check's stderr lines; each error must end with the command that fixes it, cut off here."""
    fix = f" (fix: `backupfs repair snapshots {sid[:8]}`)"
    lines = _lines(out)
    for line in lines:
        assert not line.startswith("error: ") or line.endswith(fix), line
    return [line.removesuffix(fix) for line in lines]


def test_ls_lists_the_rest_and_names_each_bad_entry_once(hostile: Hostile) -> None:
    proc = hostile.cli("ls", hostile.sid, "/x", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    shown = {os.fsencode(p).decode() for p in ("/x/" + os.fsdecode(n) for n in LISTED if n not in CONTROL_NAMES)}
    shown |= {"/x/sub/inner.txt", *(f"/x/{n}" for n in CONTROL_SHOWN), "/x/bad\\nsize\\x1b[2J"}
    shown.discard("/x/bad\nsize\x1b[2J")
    assert sorted(_lines(proc.stdout)) == sorted(shown)
    assert not any(b < 0x20 and b != 0x0A for b in proc.stdout + proc.stderr)  # nothing reaches the terminal raw
    err = _lines(proc.stderr)
    assert Counter(err[:-1]) == Counter(f"warning: {m}" for m in ABOUT_X)
    assert err[-1] == f"backupfs: {len(ABOUT_X)} entries were left out or shown repaired (see the warnings above)"

    long = hostile.cli("ls", "-l", "--no-recursive", hostile.sid, "/x", check=False)
    assert long.returncode == 4
    assert_clean(long.stderr)
    rows = {line.rsplit(" ", 1)[-1]: line for line in _lines(long.stdout) if " -> " not in line}
    assert rows["/x/huge_uid"].split()[1] == "65534/65534"
    assert rows["/x/huge_mode"].startswith("-rw-r--r-- ") and rows["/x/neg_mode"].startswith("---------- ")
    assert sum(" -> " in line for line in _lines(long.stdout)) == 2  # the unreadable symlinks are listed
    assert Counter(_lines(long.stderr)[:-1]) == Counter(f"warning: {m}" for m in ABOUT_X)


def test_ls_json_keeps_names_exact(hostile: Hostile) -> None:
    proc = hostile.cli("ls", "--json", "--no-recursive", hostile.sid, "/x", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    docs = [json.loads(line) for line in _lines(proc.stdout)]  # strict JSON, one object a line
    assert docs[-1]["message_type"] == "error" and docs[-1]["code"] == 4  # --json: the failure last
    nodes = docs[1:-1]
    exact = {base64.b64decode(n["name_bytes"]) if "name_bytes" in n else n["name"].encode() for n in nodes}
    assert exact == LISTED
    odd = next(n for n in nodes if "name_bytes" in n)
    assert odd["name"] == "\ufffd\ufffd-not-utf8" and odd["path"] == "/x/\ufffd\ufffd-not-utf8"
    assert base64.b64decode(odd["path_bytes"]) == b"/x/\xff\xfe-not-utf8"
    assert {n["name"] for n in nodes} >= {"evil\nname", "esc\x1b[31mred"}
    assert next(n for n in nodes if n["name"] == "huge_uid")["uid"] == 65534


def test_unsorted_listing_is_sorted_by_readers(hostile: Hostile) -> None:
    proc = hostile.cli("ls", hostile.sid, "/y")
    assert _lines(proc.stdout) == ["/y/a", "/y/m", "/y/z"] and proc.stderr == b""
    for name in "amz":
        assert hostile.cli("cat", hostile.sid, f"/y/{name}").stdout == f"{name}\n".encode()


def test_cat_reads_the_real_file_and_refuses_unreadable_ones(hostile: Hostile) -> None:
    for name, content in GOOD.items():  # "a" is not shadowed by "a\0evil", nor fine.txt by its impostor
        assert hostile.cli("cat", hostile.sid, "/x/" + name.decode()).stdout == content
    for name, why in (
        ("huge_size", "its size 18446744073709551615 is out of range"),
        ("unsorted_chunks", "its chunk offsets are not ascending, or lie beyond its size"),
        ("chunk_beyond", "its chunk offsets are not ascending, or lie beyond its size"),
        ("bad_content", "its chunk list is malformed"),
    ):
        proc = hostile.cli("cat", hostile.sid, f"/x/{name}", check=False)
        assert (proc.returncode, proc.stdout) == (4, b"")
        assert proc.stderr.decode() == f"backupfs: /x/{name}: cannot be read: {why}\n"
    for path in ("/x/..", "/x/a/b", "/x/a\\x00evil", "/x/" + "L" * 256):
        proc = hostile.cli("cat", hostile.sid, path, check=False)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert_clean(proc.stderr)


def test_chunks_give_the_same_bytes_to_every_reader(hostile: Hostile) -> None:
    """A chunk running into the next one is cut there (cat wrote both whole: 200 bytes of a
    150-byte file); one falling short leaves a hole. check names the first."""
    target = hostile.base / "c-restored"
    hostile.cli("restore", f"{hostile.sid}:/c", "--target", target)
    for name, content in C_CONTENT.items():
        assert hostile.cli("cat", hostile.sid, f"/c/{name}").stdout == content
        assert (target / name).read_bytes() == content
    checked = hostile.cli("check", check=False)
    assert (
        f"error: snapshot {hostile.sid[:8]}: /c/overlap: the chunk at offset 0 runs into the next one"
        in _check_lines(checked.stderr, hostile.sid)
    )


def test_restore_refuses_each_bad_entry_and_restores_the_rest(hostile: Hostile) -> None:
    target = hostile.base / "work" / "target"
    target.mkdir(parents=True)
    before = sorted(p for p in hostile.base.rglob("*") if "repo" not in p.parts and "cache" not in p.parts)
    proc = hostile.cli("restore", f"{hostile.sid}:/x", "--target", target, check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    err = _lines(proc.stderr)
    left_out = [m.replace("/x: ", "/: ", 1) for m in LEFT_OUT]  # the restore starts at /x
    assert Counter(line for line in err if " left out: " in line) == Counter(f"error: {m}" for m in left_out)
    for name in REPAIRED + UNREADABLE_FILES + UNREADABLE_LINKS:
        shown = os.fsdecode(name).replace("\n", "\\n").replace("\x1b", "\\x1b")
        assert sum(line.startswith(f"error: /{shown}: not restored: ") for line in err) == 1, (name, err)
    assert "error: /no_listing: restored empty: it is a folder without a listing" in err
    assert not any(b < 0x20 and b != 0x0A for b in proc.stderr)
    # the rest is there, and nothing else
    restored = {os.fsencode(p.name) for p in target.iterdir()}
    assert restored == {*GOOD, b"sub", *CONTROL_NAMES, b"no_listing"}
    for name, content in GOOD.items():
        assert (target / os.fsdecode(name)).read_bytes() == content
    assert (target / "sub" / "inner.txt").read_bytes() == b"inner\n"
    assert list((target / "no_listing").iterdir()) == []
    after = sorted(
        p
        for p in hostile.base.rglob("*")
        if "repo" not in p.parts and "cache" not in p.parts and target not in p.parents
    )
    assert after == before


def test_check_names_each_bad_entry_and_blob_of_the_wrong_type(hostile: Hostile) -> None:
    proc = hostile.cli("check", "--read-data", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    err = _check_lines(proc.stderr, hostile.sid)
    short = hostile.sid[:8]
    errors = [line for line in err if line.startswith("error: ")]
    for message in ABOUT_X:
        assert errors.count(f"error: snapshot {short}: {message}") == ABOUT_X.count(message), message
    assert (
        f"error: snapshot {short}: /t/tree_as_chunk: chunk {hostile.tree_blob.hex()[:16]} is a folder listing, not a chunk"
        in errors
    )
    assert (
        f"error: snapshot {short}: /t/data_as_listing: listing {hostile.data_blob.hex()[:16]} is file data, not a listing"
        in errors
    )
    assert len(errors) == len(ABOUT_X) + 3  # /t's two, /c/overlap, and no pack is damaged
    for folder in ("/x", "/y"):
        assert f"warning: snapshot {short}: the entries of {folder} are not sorted by name (readers sort them)" in err


@pytest.mark.fuse
@pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)
def test_mount_shows_the_rest_and_logs_each_bad_entry_once(
    hostile: Hostile,
    mount: Callable[..., Mount],  # noqa: F811
) -> None:
    m = mount(hostile.cli)
    snap = m.path / "ids" / hostile.sid[:8]
    x = os.fsencode(snap / "x")
    for _ in range(2):  # listed and looked up twice: logged once
        assert set(os.listdir(x)) == LISTED
        for name in LISTED:
            os.lstat(os.path.join(x, name))
    for name, content in GOOD.items():
        with open(os.path.join(x, name), "rb") as fp:
            assert fp.read() == content
    assert (snap / "x" / "sub" / "inner.txt").read_bytes() == b"inner\n"
    st = os.stat(os.path.join(x, b"huge_uid"))
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert stat.S_IMODE(os.stat(os.path.join(x, b"huge_mode")).st_mode) == 0o644
    assert os.stat(os.path.join(x, b"bad_field")).st_mtime_ns == 0
    assert os.listxattr(os.path.join(x, b"xattrs")) == ["user.ok"]
    assert os.getxattr(os.path.join(x, b"xattrs"), "user.ok") == b"v"
    for name in UNREADABLE_FILES:
        with pytest.raises(OSError) as exc:
            open(os.path.join(x, name), "rb").close()  # the open itself fails
        assert exc.value.errno == errno.EIO
    for name in UNREADABLE_LINKS:
        with pytest.raises(OSError) as exc:
            os.readlink(os.path.join(x, name))
        assert exc.value.errno == errno.EIO
    assert os.listdir(os.path.join(x, b"no_listing")) == []
    for name, content in C_CONTENT.items():
        assert (snap / "c" / name).read_bytes() == content
        with open(snap / "c" / name, "rb") as fp:  # and read in pieces, from any offset
            assert b"".join(os.pread(fp.fileno(), 7, off) for off in range(0, len(content), 7)) == content
    assert os.listdir(snap / "y") == ["a", "m", "z"]
    assert [(snap / "y" / n).read_bytes() for n in "amz"] == [b"a\n", b"m\n", b"z\n"]

    # the layout: host and tag names longer than a file name get a bounded one that opens
    (host,) = [h for h in os.listdir(m.path / "hosts") if h != "host"]
    assert len(host.encode()) == 255 and host.startswith("h" * 200) and host[-17] == "~"
    assert "latest" in os.listdir(m.path / "hosts" / host)
    tags = sorted(os.listdir(m.path / "tags"))
    assert tags[0] == "ok" and len(tags[1].encode()) == 255
    assert (m.path / "tags" / tags[1] / "latest" / "hello").read_bytes() == b"hi\n"
    root = os.stat(m.path / "hosts" / host / "latest")
    assert (root.st_uid, root.st_gid) == (65534, 65534)

    assert m.proc.poll() is None
    log = m.stderr()
    assert_clean(log)
    prefix = f"/ids/{hostile.sid[:8]}"
    for message in ABOUT_X:
        assert log.count(f"backupfs: {prefix}{message}\n") == ABOUT_X.count(message), (message, log)
    assert not any(ord(c) < 0x20 and c != "\n" for c in log)


def test_verify_names_each_bad_entry_and_passes_the_rest(hostile: Hostile) -> None:
    """A drill of every file: what it cannot restore or restores differently is named once with
    its path and what is wrong; everything good passes (format.md 14)."""
    proc = hostile.cli("verify", hostile.sid, "--files", "1000", "--json", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    *_, out, error = map(json.loads, proc.stdout.splitlines())  # --json: the failure after the summary
    assert out["message_type"] == "summary" and error["code"] == 4
    said = Counter((f["path"], f["what"]) for f in out["failures"])
    assert +Counter(("/x", m.removeprefix("/x: ")) for m in LEFT_OUT) - said == Counter()
    by_path = Counter(f["path"] for f in out["failures"])
    drawn = [n for n in REPAIRED + UNREADABLE_FILES if n not in (b"huge_size", b"neg_size", b"bad\nsize\x1b[2J")]
    for name in drawn:  # (a file whose size is out of range is shown as empty: never drawn)
        assert by_path[f"/x/{os.fsdecode(name)}"] == 1, name
    what = {f["path"]: f["what"] for f in out["failures"]}
    assert all(what[f"/x/{os.fsdecode(n)}"].startswith("not restored: ") for n in drawn)
    assert what["/c/overlap"] == "its chunk at offset 0 runs into the next one"
    assert what["/t/tree_as_chunk"].startswith("not restored: ") and "authentication failed" in what["/t/tree_as_chunk"]
    assert what["/t/data_as_listing"].startswith("its folder listing cannot be read")
    assert len(out["failures"]) == len(LEFT_OUT) + len(drawn) + 3
    # fine.txt, a, sub/inner.txt, the three control names, /y's three, /c/short, /t/fine
    assert out["files_verified"] == 11
    human = hostile.cli("verify", hostile.sid, "--files", "1000", check=False).stderr
    assert b"error: snapshot " in human and not any(b < 0x20 and b != 0x0A for b in human)
