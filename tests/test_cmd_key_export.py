"""`key export` / `key import`: with every key file gone, an export and its password bring the
repository back; paper typos are found by line; the QR code scans back to an importable export."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from everyday import fast_cli, one_line_error
from support.cli import CLI

from backupfs.format.keyexport import parse

NEW = {"BACKUPFS_NEW_PASSWORD": "a new password"}
NEW_PASSWORD = {"BACKUPFS_PASSWORD": "a new password"}


@pytest.fixture
def repo(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("kept safe\n")
    cli("backup", src)
    return cli


def _lose_keys(cli: CLI) -> None:
    shutil.rmtree(cli.repo / "keys")
    (cli.repo / "keys").mkdir()
    assert cli("snapshots", check=False).returncode != 0


def test_export_import_after_losing_every_key(repo: CLI, tmp_path: Path) -> None:
    plain, paper = tmp_path / "key.txt", tmp_path / "key.paper"
    repo("key", "export", plain)
    repo("key", "export", "--paper", paper)
    assert plain.stat().st_mode & 0o777 == 0o600
    assert repo("key", "export").stdout.decode() == plain.read_text()  # stdout by default
    _lose_keys(repo)
    doc = json.loads(repo("key", "import", plain, "--json", env=NEW).stdout)
    assert doc["message_type"] == "key_import" and (repo.repo / "keys" / doc["key_id"]).exists()
    snaps = json.loads(repo("snapshots", "--json", env=NEW_PASSWORD).stdout)
    assert len(snaps) == 1
    repo("check", "--read-data", env=NEW_PASSWORD)
    # the paper form from standard input works the same (and the old password keeps opening the export)
    _lose_keys(repo)
    repo("key", "import", "--paper", "-", input=paper.read_bytes(), env=NEW)
    assert json.loads(repo("snapshots", "--json", env=NEW_PASSWORD).stdout) == snaps


def test_paper_typos_are_found_by_line(repo: CLI, tmp_path: Path) -> None:
    paper = repo("key", "export", "--paper").stdout.decode()
    line5 = next(line for line in paper.splitlines() if line.startswith(" 5: "))
    digit = line5[4]
    typo = paper.replace(line5, line5[:4] + ("0" if digit != "0" else "1") + line5[5:])
    bad = tmp_path / "typo.paper"
    bad.write_text(typo)
    keys_before = sorted((repo.repo / "keys").iterdir())
    msg = one_line_error(repo("key", "import", bad, env=NEW, check=False), 2)
    assert "paper key line 5: checksum mismatch" in msg
    missing = tmp_path / "missing.paper"
    missing.write_text("\n".join(line for line in paper.splitlines() if not line.startswith(" 7: ")))
    assert "lacks line(s) 7 of" in one_line_error(repo("key", "import", missing, env=NEW, check=False), 2)
    swapped = tmp_path / "swapped.paper"
    lines = paper.splitlines()
    i, j = (
        next(k for k, line in enumerate(lines) if line.startswith(" 2: ")),
        next(k for k, line in enumerate(lines) if line.startswith(" 3: ")),
    )
    lines[i], lines[j] = lines[j].replace(" 3: ", " 2: "), lines[i].replace(" 2: ", " 3: ")
    swapped.write_text("\n".join(lines))
    assert "checksum mismatch" in one_line_error(repo("key", "import", swapped, env=NEW, check=False), 2)
    assert sorted((repo.repo / "keys").iterdir()) == keys_before  # nothing written on any error


def test_import_bad_input(repo: CLI, tmp_path: Path, cli_env: dict[str, str]) -> None:
    export = tmp_path / "key.txt"
    repo("key", "export", export)
    keys_before = sorted((repo.repo / "keys").iterdir())
    wrong = one_line_error(repo("key", "import", export, env={**NEW, "BACKUPFS_PASSWORD": "not it"}, check=False), 12)
    assert "wrong password" in wrong
    other = fast_cli(tmp_path, cli_env, "other")
    assert "not of this one" in one_line_error(other("key", "import", export, env=NEW, check=False), 2)
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    assert "not a key export" in one_line_error(repo("key", "import", junk, env=NEW, check=False), 2)
    damaged = tmp_path / "damaged.txt"
    text = export.read_text().splitlines()
    text[2] = text[2][:10] + ("A" if text[2][10] != "A" else "B") + text[2][11:]
    damaged.write_text("\n".join(text))
    assert "checksum does not match" in one_line_error(repo("key", "import", damaged, env=NEW, check=False), 2)
    missing = one_line_error(repo("key", "import", tmp_path / "nope", env=NEW, check=False), 1)
    assert "No such file" in missing
    assert "--json needs FILE" in one_line_error(repo("key", "export", "--json", check=False), 2)
    proc = repo("key", "export", "--paper", "--qr-html", check=False)
    assert proc.returncode == 2 and b"not allowed with" in proc.stderr
    assert sorted((repo.repo / "keys").iterdir()) == keys_before


def _png(matrix: list[list[bool]], scale: int = 4) -> bytes:
    """A grayscale PNG of a module matrix, written by hand (zlib), for zbarimg to scan."""
    rows = b"".join(
        b"\0" + bytes(0 if dark else 255 for dark in row for _ in range(scale)) for row in matrix for _ in range(scale)
    )
    width = height = len(matrix) * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_qr_html_scans_back_to_an_importable_export(repo: CLI, tmp_path: Path) -> None:
    if shutil.which("zbarimg") is None:
        pytest.skip("zbarimg missing (tools/install-deps.sh --test installs zbar-tools)")
    page = tmp_path / "key.html"
    repo("key", "export", "--qr-html", page)
    html = page.read_text()
    svg = re.search(r'<svg[^>]*viewBox="0 0 (\d+) \d+"', html)
    assert svg is not None
    size = int(svg[1])
    matrix = [[False] * size for _ in range(size)]
    for x, y, w in re.findall(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="1"/>', html):
        for dx in range(int(w)):
            matrix[int(y)][int(x) + dx] = True
    image = tmp_path / "qr.png"
    image.write_bytes(_png(matrix))
    scanned = subprocess.run(["zbarimg", "--raw", "-q", image], capture_output=True, check=True).stdout.decode()
    assert scanned.strip() == repo("key", "export").stdout.decode().strip()
    assert "BACKUPFS PAPER KEY v1" in html  # the paper lines too, for typing
    scanned_file = tmp_path / "scanned.txt"
    scanned_file.write_text(scanned)
    _lose_keys(repo)
    repo("key", "import", scanned_file, env=NEW)
    repo("snapshots", env=NEW_PASSWORD)


def test_export_forms_parse_to_the_same_key(repo: CLI) -> None:
    plain = parse(repo("key", "export").stdout.decode())
    paper = parse(repo("key", "export", "--paper").stdout.decode())
    assert plain == paper and len(plain.repo_id) == 32
