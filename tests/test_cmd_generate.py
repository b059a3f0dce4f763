"""`backupfs generate`: completion scripts that real bash and fish run (snapshot ids included), a zsh
script zsh parses, and man pages groff renders without a warning, all from the one parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from everyday import fast_cli, one_line_error, snapshot_ids
from support.cli import CLI

from backupfs.cli.main import COMMANDS


@pytest.fixture
def generated(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path, list[str]]:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src)
    cli("backup", src)
    out = tmp_path / "gen"
    out.mkdir()
    doc = json.loads(
        cli(
            "generate",
            "--bash-completion",
            out / "backupfs.bash",
            "--zsh-completion",
            out / "_backupfs",
            "--fish-completion",
            out / "backupfs.fish",
            "--man",
            out / "man",
            "--json",
        ).stdout
    )
    assert len(doc["written"]) == 3 + 1 + len(COMMANDS)
    return cli, out, snapshot_ids(cli)


BASH_HARNESS = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()
_backupfs
printf '%s\\n' "${COMPREPLY[@]}"
"""


def _bash(script: Path, env: dict[str, str], *words: str) -> list[str]:
    proc = subprocess.run(
        ["bash", "-c", BASH_HARNESS, "harness", script, *words], capture_output=True, text=True, env=env, check=True
    )
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completes_commands_options_choices_and_snapshot_ids(
    generated: tuple[CLI, Path, list[str]],
) -> None:
    cli, out, ids = generated
    script, env = out / "backupfs.bash", cli.env
    assert subprocess.run(["bash", "-n", script], check=False).returncode == 0
    assert _bash(script, env, "backupfs", "sta") == ["stats"]
    assert _bash(script, env, "backupfs", "-r", str(cli.repo), "diff", "latest", "") == [
        "latest",
        *(i[:8] for i in ids),
    ]
    assert _bash(script, env, "backupfs", "stats", "--mode", "") == ["restore-size", "files-by-contents", "raw-data"]
    assert _bash(script, env, "backupfs", "key", "") == ["list", "add", "remove", "passwd", "export", "import"]
    assert _bash(script, env, "backupfs", "--retry-lock", "5m", "dum") == ["dump"]
    assert "--metadata" in _bash(script, env, "backupfs", "diff", "--m")
    # without a password in the environment the ids are not looked up, and nothing waits for one
    no_password = {k: v for k, v in env.items() if k != "BACKUPFS_PASSWORD"}
    assert _bash(script, no_password, "backupfs", "-r", str(cli.repo), "ls", "") == ["latest"]


def test_fish_completes_with_descriptions_and_snapshot_ids(generated: tuple[CLI, Path, list[str]]) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish missing (tools/install-deps.sh --test installs it)")
    cli, out, ids = generated
    script = out / "backupfs.fish"

    def complete(line: str) -> list[str]:
        proc = subprocess.run(
            ["fish", "--no-config", "-c", f"source {script}; complete -C {json.dumps(line)}"],
            capture_output=True,
            text=True,
            env=cli.env,
            check=True,
        )
        return proc.stdout.splitlines()

    assert complete("backupfs sta") == ["stats\tshow sizes, deduplication and compression of snapshots"]
    assert {line.split("\t")[0] for line in complete(f"backupfs -r {cli.repo} tag ")} >= {"latest", ids[0][:8]}
    assert [line.split("\t")[0] for line in complete("backupfs stats --mode ")] == [
        "files-by-contents",
        "raw-data",
        "restore-size",
    ]


ZSH_HARNESS = """
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "fpath=($1 \\$fpath); autoload -Uz compinit; compinit -u -D; PS1='%% '"
zpty -w -n z "$2"$'\\t'
out=""
for i in {1..600}; do  # until the completion shows $3: a loaded machine may take many seconds
  while zpty -rt z chunk; do out+=$chunk; done
  [[ $out == *"$3"* ]] && break
  sleep 0.1
done
while zpty -rt z chunk; do out+=$chunk; done
zpty -d z
print -r -- "$out"
"""


def test_zsh_completes_in_a_real_zsh(generated: tuple[CLI, Path, list[str]]) -> None:
    """An interactive zsh (in a pty, zsh/zpty) loads the script with compinit and completes."""
    if shutil.which("zsh") is None:
        pytest.skip("zsh missing (tools/install-deps.sh --test installs it)")
    cli, out, ids = generated
    assert subprocess.run(["zsh", "-n", out / "_backupfs"], check=False).returncode == 0

    def complete(line: str, shows: str) -> str:
        """What zsh shows once `shows` appears (or after 60 s, when the assertions then fail)."""
        proc = subprocess.run(
            ["zsh", "-f", "-c", ZSH_HARNESS, "harness", out, line, shows],
            capture_output=True,
            text=True,
            env=cli.env,
            timeout=90,
            check=True,
        )
        return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|[\x00-\x09\x0b-\x1f]", "", proc.stdout)

    assert "backupfs stats" in complete("backupfs sta", "stats")
    listed = complete(f"backupfs -r {cli.repo} diff latest ", ids[-1][:8])
    assert all(i[:8] in listed for i in ids) and "latest" in listed
    assert "files-by-contents" in complete("backupfs stats --mode ", "files-by-contents")
    assert "write the master key" in complete("backupfs key ", "write the master key")  # actions with their help


def test_man_pages_render_cleanly(generated: tuple[CLI, Path, list[str]]) -> None:
    _cli, out, _ids = generated
    pages = sorted((out / "man").iterdir())
    assert {p.name for p in pages} == {"backupfs.1", *(f"backupfs-{c}.1" for c in COMMANDS)}
    for page in pages:
        proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", (page.name, proc.stderr)
    text = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", out / "man" / "backupfs-stats.1"], capture_output=True, text=True
    ).stdout
    words = " ".join(text.split())
    assert "--mode MODE what total_size counts (default restore-size) (one of: restore-size," in words
    main = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", out / "man" / "backupfs.1"], capture_output=True, text=True
    ).stdout
    assert "BACKUPFS_PASSWORD_COMMAND" in main and "EXIT STATUS" in main and "backupfs-diff(1)" in main


def test_generate_bad_input(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = CLI(tmp_path / "no-repo-needed", cli_env)
    assert "nothing to generate" in one_line_error(cli("generate", check=False), 2)
    assert "only one script" in one_line_error(
        cli("generate", "--bash-completion", "-", "--zsh-completion", "-", check=False), 2
    )
    assert cli("generate", "--fish-completion", "-").stdout.startswith(b"# fish completion for backupfs")
    blocked = tmp_path / "file"
    blocked.write_text("")
    one_line_error(cli("generate", "--man", blocked, check=False), 1)  # not a folder
