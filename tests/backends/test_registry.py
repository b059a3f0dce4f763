"""Repository URL parsing and option handling of open_backend (no servers: backends connect lazily)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from backupfs.backends.counting import innermost
from backupfs.backends.local import LocalBackend
from backupfs.backends.registry import open_backend, parse_s3, parse_sftp
from backupfs.backends.retry import RetryBackend
from backupfs.backends.s3 import S3Backend
from backupfs.backends.sftp.backend import SFTPBackend
from backupfs.errors import BackendError, UsageError


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ~/.ssh/config or ~/.aws of the developer leaks into these tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


def inner(url: str, **options: Any) -> Any:
    backend = open_backend(url, **options)
    assert isinstance(backend, RetryBackend)
    return innermost(backend)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/srv/repo", "/srv/repo"),
        ("local:/srv/repo", "/srv/repo"),
        ("local:relative/repo", os.path.abspath("relative/repo")),
        ("./repo", os.path.abspath("repo")),
        ("repo", os.path.abspath("repo")),
        ("/srv/with:colon", "/srv/with:colon"),
        ("local:/srv/with:colon", "/srv/with:colon"),
    ],
)
def test_local_paths(url: str, expected: str) -> None:
    backend = inner(url)
    assert isinstance(backend, LocalBackend)
    assert backend.location == expected


def test_local_home_is_expanded(isolated_home: Path) -> None:
    assert inner("~/repo").location == str(isolated_home / "repo")
    assert inner("local:~/repo").location == str(isolated_home / "repo")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sftp:user@host:/srv/repo", ("user", "host", None, "/srv/repo")),
        ("sftp:user@host:repo", ("user", "host", None, "repo")),
        ("sftp:host:/srv/repo", (None, "host", None, "/srv/repo")),
        ("sftp:user@host:", ("user", "host", None, "")),
        ("sftp:user@[::1]:/srv/repo", ("user", "::1", None, "/srv/repo")),
        ("sftp://user@host:2222//srv/repo", ("user", "host", 2222, "/srv/repo")),
        ("sftp://user@host:2222/relative/repo", ("user", "host", 2222, "relative/repo")),
        ("sftp://host//srv/repo", (None, "host", None, "/srv/repo")),
        ("sftp://user@[::1]:2222//srv/repo", ("user", "::1", 2222, "/srv/repo")),
        ("sftp://us%40er@host//srv/my%20repo", ("us@er", "host", None, "/srv/my repo")),
    ],
)
def test_parse_sftp(url: str, expected: tuple[Any, ...]) -> None:
    assert parse_sftp(url) == expected


@pytest.mark.parametrize("url", ["sftp:host", "sftp:", "sftp://", "sftp://user@host:notaport//x"])
def test_bad_sftp_urls(url: str) -> None:
    with pytest.raises(UsageError):
        open_backend(url)


def test_sftp_backend_and_options(tmp_path: Path) -> None:
    key = tmp_path / "id"
    for transport in ("openssh", "paramiko"):
        backend = inner(
            "sftp://alice@example.org//srv/repo",
            sftp_port="2200",
            sftp_key=str(key),
            sftp_known_hosts=str(tmp_path / "kh"),
            sftp_strict_host_keys="no",
            sftp_connections=4,
            sftp_timeout=5,
            sftp_transport=transport,
            retry_attempts=3,
        )
        assert isinstance(backend, SFTPBackend)
        assert backend.transport == transport
        assert (backend.user, backend.host, backend.port, backend.path) == ("alice", "example.org", 2200, "/srv/repo")
        assert (backend.key_filename, backend.known_hosts) == (str(key), str(tmp_path / "kh"))
        assert backend.strict_host_keys is False
        assert (backend.connections, backend.timeout) == (4, 5.0)
        assert backend.location == "sftp://alice@example.org:2200//srv/repo"
    # OpenSSH: what the URL does not say, ssh's configuration decides
    defaults = inner("sftp:bob@example.org:repo")
    assert defaults.transport == "openssh"
    assert (defaults.port, defaults.strict_host_keys, defaults.path) == (None, None, "repo")
    assert defaults.location == "sftp://bob@example.org/repo"
    plain = inner("sftp:bob@example.org:repo", sftp_transport="paramiko")
    assert (plain.port, plain.strict_host_keys) == (22, None)


def test_ssh_command_and_args_are_split_like_a_shell() -> None:
    backend = inner("sftp:h:/r", sftp_args="-F '/my dir/config' -o ProxyJump=gw")
    assert backend.ssh_args == ["-F", "/my dir/config", "-o", "ProxyJump=gw"]
    custom = inner("sftp:h:/r", sftp_command="ssh -p 2222 'me@h' -s sftp")
    assert custom.ssh_command == ["ssh", "-p", "2222", "me@h", "-s", "sftp"]
    # ssh does not expand ~ in `-F ~/config`; a shell would, and these strings are quoted past it
    home = os.environ["HOME"]
    assert inner("sftp:h:/r", sftp_args="-F ~/backup.conf").ssh_args == ["-F", f"{home}/backup.conf"]
    assert inner("sftp:h:/r", sftp_command="~/bin/ssh h -s sftp").ssh_command == [f"{home}/bin/ssh", "h", "-s", "sftp"]
    with pytest.raises(UsageError, match="sftp_args"):
        open_backend("sftp:h:/r", sftp_args="-F 'unclosed")
    with pytest.raises(UsageError, match="paramiko"):
        open_backend("sftp:h:/r", sftp_command="ssh h -s sftp", sftp_transport="paramiko")
    with pytest.raises(UsageError, match="unknown SFTP transport"):
        open_backend("sftp:h:/r", sftp_transport="putty")


def test_openssh_is_chosen_when_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert inner("sftp:h:/r").transport == "openssh"
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh here
    assert inner("sftp:h:/r").transport == "paramiko"
    with pytest.raises(UsageError, match="no ssh client found"):
        open_backend("sftp:h:/r", sftp_transport="openssh")
    # an explicit command is run as given
    assert inner("sftp:h:/r", sftp_command="/opt/ssh h -s sftp").transport == "openssh"


def test_sftp_port_in_url_and_option_must_agree() -> None:
    assert inner("sftp://a@h:2222//r", sftp_port=2222).port == 2222
    with pytest.raises(UsageError, match="contradicts"):
        open_backend("sftp://a@h:2222//r", sftp_port=22)


def test_ssh_config_is_honoured(isolated_home: Path) -> None:
    ssh = isolated_home / ".ssh"
    ssh.mkdir()
    (ssh / "id_backup").write_text("not really a key")
    (ssh / "config").write_text(
        "Host backup\n  HostName backup.example.org\n  User carol\n  Port 2022\n"
        "  IdentityFile ~/.ssh/id_backup\n  StrictHostKeyChecking accept-new\n"
    )
    # OpenSSH reads the file itself: the alias goes to ssh untouched
    openssh = inner("sftp:backup:/srv/repo")
    assert (openssh.host, openssh.user, openssh.port, openssh.key_filename) == ("backup", None, None, None)
    # paramiko does not: the settings are read for it
    backend = inner("sftp:backup:/srv/repo", sftp_transport="paramiko")
    assert (backend.host, backend.user, backend.port) == ("backup.example.org", "carol", 2022)
    assert backend.key_filename == str(ssh / "id_backup")
    assert backend.strict_host_keys is False
    explicit = inner("sftp://dave@backup:23//srv/repo", sftp_strict_host_keys=True, sftp_transport="paramiko")
    assert (explicit.user, explicit.port, explicit.strict_host_keys) == ("dave", 23, True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3:https://minio.example:9000/bucket/some/prefix", ("https://minio.example:9000", "bucket", "some/prefix")),
        ("s3:http://127.0.0.1:9000/bucket", ("http://127.0.0.1:9000", "bucket", "")),
        ("s3:http://127.0.0.1:9000/bucket/", ("http://127.0.0.1:9000", "bucket", "")),
        ("s3:s3.amazonaws.com/bucket/prefix", (None, "bucket", "prefix")),
        ("s3:https://s3.amazonaws.com/bucket", (None, "bucket", "")),
        ("s3:minio.example/bucket/p", ("https://minio.example", "bucket", "p")),
    ],
)
def test_parse_s3(url: str, expected: tuple[Any, ...]) -> None:
    assert parse_s3(url) == expected


@pytest.mark.parametrize("url", ["s3:", "s3:https://endpoint", "s3:https://endpoint/", "s3:ftp://x/b"])
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(UsageError):
        open_backend(url)


def test_s3_backend_and_options() -> None:
    backend = inner("s3:http://127.0.0.1:9000/bucket/pre", s3_region="eu-central-1", s3_connections=32)
    assert isinstance(backend, S3Backend)
    assert (backend.endpoint, backend.bucket, backend.prefix, backend.region) == (
        "http://127.0.0.1:9000",
        "bucket",
        "pre",
        "eu-central-1",
    )
    assert backend.location == "s3:http://127.0.0.1:9000/bucket/pre"
    assert backend._client.meta.config.max_pool_connections == 32
    assert inner("s3:http://127.0.0.1:9000/b", s3_connections=2)._client.meta.config.max_pool_connections == 16
    assert inner("s3:http://127.0.0.1:9000/b").region == "us-east-1"  # what MinIO expects by default
    assert inner("s3:https://s3.eu-west-3.amazonaws.com/b").region == "eu-west-3"
    assert inner("s3:https://s3.us-west-004.backblazeb2.com/b").region == "us-west-004"
    assert inner("s3:https://0123abcd.r2.cloudflarestorage.com/b").region == "auto"
    assert inner("s3:https://0123abcd.eu.r2.cloudflarestorage.com/b").region == "auto"
    assert inner("s3:https://s3.us-west-004.backblazeb2.com/b", s3_region="x").region == "x"
    with pytest.raises(UsageError, match="addressing"):
        open_backend("s3:http://127.0.0.1:9000/b", s3_addressing_style="sideways")


def test_s3_unknown_profile_is_reported() -> None:
    with pytest.raises(BackendError, match="profile 'nope' not found"):
        open_backend("s3:http://127.0.0.1:9000/b", s3_profile="nope")


def test_rest_urls() -> None:
    backend = open_backend("rest:http://alice:se%2Fcret@127.0.0.1:8000/alice/repo")
    assert backend.location == "rest:http://127.0.0.1:8000/alice/repo/"  # no password in messages
    backend.close()
    with pytest.raises(UsageError, match="does not apply to rest"):
        open_backend("rest:http://127.0.0.1:8000/repo", sftp_port=22)
    with pytest.raises(UsageError, match="invalid rest URL"):
        open_backend("rest:ftp://127.0.0.1/repo")


@pytest.mark.parametrize("url", ["ftp:host/repo", "b2:bucket/repo", "gs:bucket:/"])
def test_unknown_scheme_is_a_one_line_usage_error(url: str) -> None:
    with pytest.raises(UsageError) as info:
        open_backend(url)
    message = str(info.value)
    assert "\n" not in message and "unknown repository type" in message
    assert info.value.exit_code == 2


def test_option_errors() -> None:
    with pytest.raises(UsageError, match="unknown backend option 'sftp_prot'"):
        open_backend("/srv/repo", sftp_prot=22)
    with pytest.raises(UsageError, match="does not apply to s3"):
        open_backend("s3:http://h/b", sftp_port=22)
    with pytest.raises(UsageError, match="does not apply to local"):
        open_backend("/srv/repo", s3_region="x")
    with pytest.raises(UsageError, match="expected yes or no"):
        open_backend("sftp:h:/r", sftp_strict_host_keys="maybe")
    with pytest.raises(UsageError, match="invalid value"):
        open_backend("sftp:h:/r", sftp_port="twenty")
    with pytest.raises(UsageError, match="positive"):
        open_backend("/srv/repo", retry_attempts=0)
    with pytest.raises(UsageError, match="empty"):
        open_backend("")


def test_unset_options_are_ignored_and_retry_options_apply() -> None:
    backend = open_backend("/srv/repo", sftp_port=None, s3_region=None, retry_attempts=9, retry_max_delay=2)
    assert isinstance(backend, RetryBackend)
    assert (backend.attempts, backend.max_delay) == (9, 2.0)
