"""`--json` everywhere: every command, every `key` action and a failure of each kind leave only
JSON on stdout, one document (or the documented JSON lines), with the conventions of docs/usage.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI, PASSWORD
from everyday import fast_cli, snapshot_ids

from backupfs.cli.main import COMMANDS

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$")
TIME_KEYS = {"time", "mtime", "atime", "ctime", "last_used", "created"}
UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
CAN_MOUNT = os.path.exists("/dev/fuse") and os.geteuid() == 0
# commands whose stdout is JSON lines (docs/usage.md): the rest print exactly one document
LINES = {"backup", "restore", "check", "prune", "copy", "verify", "ls", "diff", "mount", "serve"}


def conventions(doc: object, where: str) -> None:
    """snake_case keys, RFC 3339 times with a zone, sizes as integers, a snapshot always named by a
    key ending in `_id`: in every nested object."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                assert re.fullmatch(r"[a-z][a-z0-9_]*", key), (where, key)
                if key in TIME_KEYS:
                    assert isinstance(value, str) and RFC3339.match(value), (where, key, value)
                exact_name = key.endswith("_bytes") and isinstance(item.get(key[: -len("_bytes")]), str)  # json_name
                if key.endswith(("size", "bytes")) and value is not None and not exact_name:
                    assert isinstance(value, int), (where, key, value)
                if "snapshot" in key and isinstance(value, str):
                    assert key.endswith("_id"), (where, key)
                stack.append(value)


def documents(proc: subprocess.CompletedProcess[bytes], where: str) -> list[dict[str, object]]:
    """Every line of stdout, parsed; nothing else may be there."""
    text = proc.stdout.decode("utf-8")
    assert text.endswith("\n"), (where, text, proc.stderr)
    docs = [json.loads(line) for line in text.splitlines()]
    conventions(docs, where)
    return docs


def failed(proc: subprocess.CompletedProcess[bytes], where: str) -> dict[str, object]:
    """A failure: stdout holds its error document (after any output before it), stderr the line."""
    docs = documents(proc, where)
    error = docs[-1]
    assert error == {"message_type": "error", "code": proc.returncode, "message": error["message"]}, (where, error)
    assert proc.returncode != 0 and isinstance(error["message"], str) and error["message"], where
    stderr = proc.stderr.decode()
    last = stderr.splitlines()[-1]  # argparse's own form is `backupfs: error: MESSAGE`
    assert last.startswith("backupfs: ") and last.endswith(str(error["message"])), (where, stderr)
    assert "Traceback" not in stderr, (where, stderr)
    return error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def first_line_then_stop(cli: CLI, *args: str | os.PathLike[str], signalled: bool = False) -> dict[str, object]:
    """A command that runs until stopped (mount, serve): its first JSON line says it is ready.
    `signalled`: SIGTERM ends it as it ends any command (exit 143, an error document), not 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), *map(str, args), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else b""
        doc: dict[str, object] = json.loads(line)
        conventions(doc, str(args[0]))
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    if signalled:
        end = json.loads(rest)
        assert proc.returncode == 143, (proc.returncode, rest)
        assert end == {"message_type": "error", "code": 143, "message": "terminated by SIGTERM"}, rest
    else:
        assert proc.returncode == 0 and rest == b"", (proc.returncode, rest)
    return doc


def test_every_command_prints_json_and_json_errors(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    os.symlink("a.txt", src / "link")
    cli("backup", src)
    (src / "a.txt").write_text("two\n")
    seen: set[str] = set()

    def one(
        name: str, *args: str | os.PathLike[str], env: dict[str, str] | None = None, on: CLI = cli
    ) -> dict[str, object]:
        proc = on(*args, "--json", env=env)
        docs = documents(proc, name)
        if name.split()[0] not in LINES:
            assert len(docs) == 1, (name, docs)
        seen.add(name.split()[0])
        return docs[-1]

    doc = one("backup", "backup", src)
    assert doc["message_type"] == "summary" and doc["skipped_paths"] == [] and doc["files_changed"] == 1
    first, second = snapshot_ids(cli)
    one("snapshots", "snapshots")
    ls = documents(cli("ls", "latest", "--json"), "ls")
    seen.add("ls")
    assert ls[0]["struct_type"] == "snapshot" and ls[0]["id"] == second
    assert {d.get("link_target") for d in ls[1:] if d["type"] == "symlink"} == {"a.txt"}
    diff = documents(cli("diff", first, second, "--json"), "diff")
    seen.add("diff")
    assert [d["message_type"] for d in diff] == ["change"] * (len(diff) - 1) + ["statistics"]
    assert diff[-1]["source_snapshot_id"] == first and diff[-1]["target_snapshot_id"] == second
    assert one("find", "find", "*.txt")[0]["snapshot_id"] == second  # type: ignore[index]
    one("find", "find", "--tree", "abcd")
    one("stats", "stats")
    one("dump", "dump", "latest", src, "-t", tmp_path / "out.tar")
    assert one("restore", "restore", "latest", "--target", tmp_path / "r")["message_type"] == "summary"
    assert one("check", "check", "--read-data")["message_type"] == "summary"
    drill = one("verify", "verify", "--files", "1")
    assert drill["message_type"] == "summary" and drill["ok"] and drill["record_id"]
    status = one("verify --status", "verify", "--status")
    assert status["message_type"] == "verify_status" and status["last"]["hostname"]  # type: ignore[index]
    one("tag", "tag", "latest", "--add", "x")
    one("forget", "forget", "--keep-last", "5", "--dry-run")
    one("prune", "prune", "--dry-run")
    assert one("repair index", "repair", "index", "--dry-run")["message_type"] == "repair_index"
    one("repair snapshots", "repair", "snapshots", "--dry-run")
    other = fast_cli(tmp_path, cli_env, "other")
    from_env = {"BACKUPFS_FROM_PASSWORD": PASSWORD}
    assert one("copy", "copy", "--from-repo", cli.repo, env=from_env, on=other)["snapshots_copied"] == 2
    one("unlock", "unlock")
    one("cache", "cache")
    one("generate", "generate", "--man", tmp_path / "man")
    one("version", "version")
    assert one("help", "help", "diff")["text"] == cli("diff", "--help").stdout.decode()
    keys = {"BACKUPFS_NEW_PASSWORD": PASSWORD}
    added = one("key add", "key", "add", env=keys)["key_id"]
    listed = one("key list", "key", "list")
    assert [k["id"] for k in listed if not k["current"]] == [added]  # type: ignore[index]
    one("key remove", "key", "remove", str(added))
    one("key export", "key", "export", tmp_path / "key.txt")
    one("key import", "key", "import", tmp_path / "key.txt", env=keys)
    one("key passwd", "key", "passwd", env=keys)
    assert one("init", "-r", tmp_path / "new", "init")["message_type"] == "initialized"
    serving = first_line_then_stop(
        cli, "serve", "--path", cli.repo, "--listen", f"127.0.0.1:{free_port()}", signalled=True
    )
    assert serving["addresses"]
    seen.add("serve")
    if CAN_MOUNT:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        every = {"message_type": "mounted", "mountpoint": str(mnt), "snapshot_id": None, "path": None}
        assert first_line_then_stop(cli, "mount", mnt) == every
        latest = documents(cli("ls", "latest", "--json"), "ls")[0]["id"]  # `tag` has replaced `second`
        one_folder = first_line_then_stop(cli, "mount", mnt, f"latest:{src}")
        assert one_folder == {**every, "snapshot_id": latest, "path": str(src)}
    seen.add("mount")
    # failures: a usage error argparse finds, one the command finds, no repository, wrong password,
    # and an error after output was printed (the error document is the last line)
    failed(cli("cat", "latest", f"{src}/a.txt", "--json", check=False), "cat")
    seen.add("cat")
    assert failed(cli("snapshots", "--json", "--bogus", check=False), "argparse")["code"] == 2
    assert failed(cli("check", "--json", "--read-data-subset", "abc", check=False), "check subset")["code"] == 2
    assert failed(other("snapshots", "--json", env={"BACKUPFS_PASSWORD": "wrong"}, check=False), "pw")["code"] == 12
    missing = CLI(tmp_path / "nowhere", cli_env)
    assert failed(missing("snapshots", "--json", check=False), "missing")["code"] == 10
    (tmp_path / "r" / src.relative_to("/") / "a.txt").write_text("damaged\n")
    assert failed(cli("restore", "nope", "--target", tmp_path / "r", "--json", check=False), "restore")["code"] == 2
    assert seen >= set(COMMANDS) - {"init"} | {"backup"}, set(COMMANDS) - seen


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_backup_summary_lists_skipped_paths(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("fine\n")
    bad = src / os.fsdecode(b"b\xe9d")  # not UTF-8: exact in JSON as path_bytes
    bad.mkdir()
    (bad / "inner").write_text("x")
    bad.chmod(0)
    try:  # as root without capabilities: bound by file permissions like any user
        proc = subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-m", "backupfs", "-r", str(cli.repo), "backup", str(src), "--json"],
            env=cli.env,
            capture_output=True,
            check=False,
            timeout=120,
        )
    finally:
        bad.chmod(0o755)
    assert proc.returncode == 3, proc.stderr
    summary = documents(proc, "backup")[-1]
    assert summary["skipped"] == 1
    assert summary["skipped_paths"] == [
        {
            "path": os.fsencode(bad).decode("utf-8", "replace"),
            "path_bytes": base64.b64encode(os.fsencode(bad)).decode(),
            "error": "Permission denied",
        }
    ]
