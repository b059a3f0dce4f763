"""What a backup saves and says: patterns with `!`, case-insensitive excludes, tag files, size
limits, path lists, missing paths, dry runs and the verbose listing, through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CLI
from fastrepo import init_fast


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    assert result["message_type"] == "summary"
    return result


def saved(cli: CLI, src: Path, snap: str = "latest") -> set[str]:
    """The snapshot's paths below `src`, relative to it ("" for `src` itself)."""
    out = cli("ls", snap).stdout.decode(errors="surrogateescape").splitlines()
    return {p.removeprefix(str(src)) for p in out if p == str(src) or p.startswith(f"{src}/")}


def make(root: Path, *files: str, data: bytes = b"x") -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def repo_state(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in repo.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- patterns


def test_negated_pattern_takes_back_an_earlier_exclude(cli: CLI, tmp_path: Path) -> None:
    """restic's example: exclude every folder of a home, then bring some back with `!`."""
    src = tmp_path / "home"
    make(src, "Documents/cv.txt", "code/main.c", "code/main.o", "Music/song.mp3", "Videos/film.mkv", "!bang")
    patterns = tmp_path / "excludes"
    patterns.write_text(
        "# everything in the home ...\n$SRC/*\n# ... but these\n!$SRC/Documents\n!$SRC/code\n*.o\n"
        "# a name that starts with !\n\\!bang\n"
    )
    cli("backup", src, "--exclude-file", patterns, env={"SRC": str(src)})
    assert saved(cli, src) == {"", "/Documents", "/Documents/cv.txt", "/code", "/code/main.c"}


def test_iexclude_ignores_case(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, "a.TMP", "b.tmp", "c.Tmp", "keep.txt", "Cache/x", "cache/y")
    patterns = tmp_path / "ipatterns"
    patterns.write_text("CACHE\n")
    cli("backup", src, "--iexclude", "*.tmp", "--iexclude-file", patterns, "--exclude", "keep.TXT")
    assert saved(cli, src) == {"", "/keep.txt"}  # --exclude stays case-sensitive


def test_exclude_if_present_and_larger_than(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, "skip/.nobackup", "skip/data", "skip/deep/more", "other/.nobackup", "other/data")
    (src / "skip" / ".nobackup").write_bytes(b"NOBACKUP marker\n")
    (src / "other" / ".nobackup").write_bytes(b"something else\n")
    make(src, "plain/.ignoreme", "plain/data")
    make(src, "big.bin", data=b"b" * 2049)
    make(src, "small.bin", data=b"s" * 2048)
    cli(
        "backup", src,
        "--exclude-if-present", ".nobackup:NOBACKUP",  # only a tag starting with the content
        "--exclude-if-present", ".ignoreme",  # any file of that name
        "--exclude-larger-than", "2K",
    )  # fmt: skip
    assert saved(cli, src) == {
        "", "/skip", "/skip/.nobackup", "/other", "/other/.nobackup", "/other/data",
        "/plain", "/plain/.ignoreme", "/small.bin",
    }  # fmt: skip
    for bad in (["--exclude-if-present", ":x"], ["--exclude-larger-than", "lots"], ["--exclude", "[z-a]"]):
        proc = cli("backup", src, *bad, check=False)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr


# --------------------------------------------------------------------------- path lists


def test_files_from_patterns_verbatim_and_raw(cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    make(src, "a.txt", "b.txt", "c.log", ".hidden.txt", "#not a comment", "star*name", "new\nline", "other")
    monkeypatch.chdir(tmp_path)  # relative lines are relative to the working directory
    patterns = tmp_path / "patterns"
    patterns.write_text("# a comment\n\n  src/*.txt  \nsrc/nothing-*.zip\n")
    verbatim = tmp_path / "verbatim"
    verbatim.write_text(f"{src}/#not a comment\n{src}/star*name\n")
    raw = tmp_path / "raw"
    raw.write_bytes(f"{src}/new\nline\0".encode())
    proc = cli("backup", "--files-from", patterns, "--files-from-verbatim", verbatim, "--files-from-raw", raw)
    assert b"nothing-*.zip" in proc.stderr and b"matches no file" in proc.stderr
    assert saved(cli, src) == {
        "", "/a.txt", "/b.txt", "/.hidden.txt", "/#not a comment", "/star*name", "/new\\nline"
    }  # `ls` escapes the newline; `*` in the verbatim list matched only itself, not "other"

    # `-` reads standard input
    cli("backup", "--files-from-verbatim", "-", input=f"{src}/c.log\n".encode())
    assert saved(cli, src) == {"", "/c.log"}
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    proc = cli("backup", "--files-from", empty, check=False)
    assert proc.returncode == 2 and b"name no path" in proc.stderr
    proc = cli("backup", "--files-from", tmp_path / "absent", check=False)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1


def test_a_missing_path_is_skipped_and_the_rest_saved(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, "f")
    missing = tmp_path / "gone"
    proc = cli("backup", missing, src, "--json", check=False)
    assert proc.returncode == 3, proc.stderr
    result = summary(proc)
    assert result["snapshot_id"] and result["skipped"] == 1
    assert result["skipped_paths"] == [{"path": str(missing), "error": "No such file or directory"}]
    assert str(missing).encode() in proc.stderr
    assert saved(cli, src) == {"", "/f"}
    (snap,) = json.loads(cli("snapshots", "--json").stdout)
    assert snap["paths"] == [str(src)]
    proc = cli("backup", missing, check=False)
    assert proc.returncode == 1 and b"nothing to back up" in proc.stderr


def test_the_parent_snapshot_is_named(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, "f")
    first = summary(cli("backup", src, "--json"))
    assert first["parent_snapshot_id"] is None
    assert b"no parent snapshot" in cli("backup", src, "--force").stdout
    second = summary(cli("backup", src, "--json"))
    assert second["parent_snapshot_id"] not in (None, first["snapshot_id"])  # the --force one is the latest
    human = cli("backup", src).stdout.decode()
    assert f"using parent snapshot {str(second['snapshot_id'])[:8]}" in human


# --------------------------------------------------------------------------- dry run and verbose


def test_dry_run_writes_nothing(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, "old", data=b"stored already\n")
    cli("backup", src)
    make(src, "new", data=os.urandom(50_000))
    before = repo_state(cli.repo)
    result = summary(cli("backup", src, "--dry-run", "--json"))
    assert repo_state(cli.repo) == before
    assert result["dry_run"] is True and result["snapshot_id"] is None
    assert (result["files_new"], result["files_unchanged"]) == (1, 1)
    assert 50_000 <= int(result["data_added"]) < 60_000  # the new file and the changed listings, uncompressed
    human = cli("backup", src, "-n").stdout.decode()
    assert "Would add to the repository" in human and "nothing was saved" in human
    assert repo_state(cli.repo) == before
    assert len(json.loads(cli("snapshots", "--json").stdout)) == 1


def test_verbose_lists_new_modified_unchanged(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, "same", "changes", "sub/inner")
    cli("backup", src)
    (src / "changes").write_bytes(b"different content")
    make(src, "added")
    proc = cli("backup", src, "-v", "--json")
    items = [json.loads(line) for line in proc.stdout.splitlines()[:-1]]
    assert all(i["message_type"] == "verbose_status" for i in items)
    actions = {i["item"].removeprefix(str(src)): i["action"] for i in items}
    assert actions == {
        "/same": "unchanged", "/changes": "modified", "/added": "new",
        "/sub/inner": "unchanged", "/sub": "unchanged", "": "modified",
    }  # fmt: skip
    human = cli("backup", src, "--verbose").stdout.decode().splitlines()
    assert f"unchanged {src}/changes" in human and f"unchanged {src}/sub/" in human
