"""Repository URLs -> backends, in restic's syntax.

    /srv/repo, ./repo, local:/srv/repo             a local directory
    sftp:user@host:/srv/repo, sftp:host:repo        SFTP (relative paths start at the login dir)
    sftp://user@host:2222//srv/repo                 SFTP with a port (note the // before an
                                                    absolute path; one / means a relative one)
    s3:https://endpoint/bucket/prefix               S3 or an S3-compatible server
    s3:s3.amazonaws.com/bucket/prefix               the same, https implied
    rest:https://user:password@host:8000/path       a `backupfs serve` server (docs/server.md)

Every backend comes wrapped in RetryBackend, so callers never retry by themselves, and under it in
CountingBackend, which counts the requests and bytes a command's `--json` summary reports.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any
from urllib.parse import unquote, urlsplit

from backupfs.backends.base import Backend
from backupfs.backends.counting import CountingBackend
from backupfs.backends.retry import RetryBackend
from backupfs.errors import BackupfsError, UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

_RETRY_OPTIONS = {
    "retry_attempts": ("attempts", int),
    "retry_base_delay": ("base_delay", float),
    "retry_max_delay": ("max_delay", float),
}
_SFTP_OPTIONS = {
    "sftp_port": ("port", int),
    "sftp_key": ("key_filename", str),
    "sftp_known_hosts": ("known_hosts", str),
    "sftp_strict_host_keys": ("strict_host_keys", "bool"),
    "sftp_connections": ("connections", int),
    "sftp_timeout": ("timeout", float),
    "sftp_transport": ("transport", str),
    "sftp_command": ("ssh_command", "words"),
    "sftp_args": ("ssh_args", "words"),
}
_S3_OPTIONS = {
    "s3_region": ("region", str),
    "s3_profile": ("profile", str),
    "s3_addressing_style": ("addressing_style", str),
    "s3_connections": ("connections", int),
    "s3_timeout": ("timeout", float),
}
_ALL_OPTIONS = {**_RETRY_OPTIONS, **_SFTP_OPTIONS, **_S3_OPTIONS}


def open_backend(url: str, **options: Any) -> Backend:
    """The backend for a repository URL, wrapped in retries of transient failures.

    Options are keyword arguments named `<scheme>_<setting>` (sftp_port, s3_region, ...) plus
    retry_attempts / retry_base_delay / retry_max_delay; None means "not given", so a CLI can
    pass all of its flags through. Raises UsageError for a malformed URL or option.
    """
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(_ALL_OPTIONS))
    if unknown:
        raise UsageError(f"unknown backend option {unknown[0]!r}")
    scheme, rest = _split_scheme(url)
    if scheme == "local":
        _only(given, scheme, {})
        inner: Backend = _local(rest)
    elif scheme == "sftp":
        inner = _sftp(url, rest, _only(given, scheme, _SFTP_OPTIONS))
    elif scheme == "s3":
        inner = _s3(url, rest, _only(given, scheme, _S3_OPTIONS))
    elif scheme == "rest":
        _only(given, scheme, {})
        inner = _rest(url)
    else:
        raise UsageError(
            f"unknown repository type {scheme!r} in {url!r} (use local:, sftp:, s3: or rest:, "
            "or local:PATH for a directory whose name has a colon)"
        )
    retry = {
        _RETRY_OPTIONS[k][0]: _convert(k, v, _RETRY_OPTIONS[k][1]) for k, v in given.items() if k in _RETRY_OPTIONS
    }
    # counted under the retries: every attempt the storage saw is a request (backends/counting.py)
    return RetryBackend(CountingBackend(inner), **retry)


def _split_scheme(url: str) -> tuple[str, str]:
    if not url:
        raise UsageError("empty repository location")
    m = _SCHEME.match(url)
    if m is None or url.startswith(("/", ".", "~")):
        return "local", url
    return m.group(1).lower(), url[m.end() :]


def _only(given: dict[str, Any], scheme: str, table: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Keyword arguments for the backend; an option of another backend is a usage error."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key in _RETRY_OPTIONS:
            continue
        if key not in table:
            raise UsageError(f"option {key} does not apply to {scheme} repositories")
        name, kind = table[key]
        out[name] = _convert(key, value, kind)
    return out


def _convert(key: str, value: Any, kind: Any) -> Any:
    if kind == "words":  # a command line, split as a POSIX shell would, ~ expanded as it would
        if not isinstance(value, str):
            return [str(v) for v in value]
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise UsageError(f"option {key}: {exc}") from None
        return [os.path.expanduser(w) if w.startswith("~") else w for w in words]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("yes", "true", "1", "on"):
            return True
        if text in ("no", "false", "0", "off"):
            return False
        raise UsageError(f"option {key}: expected yes or no, got {value!r}")
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"option {key}: invalid value {value!r}") from None
    if kind in (int, float) and converted <= 0:
        raise UsageError(f"option {key}: must be positive, got {value!r}")
    return converted


def _local(path: str) -> Backend:
    from backupfs.backends.local import LocalBackend

    if not path:
        raise UsageError("local: needs a path")
    return LocalBackend(os.path.expanduser(path))


def _sftp(url: str, rest: str, kwargs: dict[str, Any]) -> Backend:
    from backupfs.backends.sftp.backend import SFTPBackend, choose_transport

    user, host, port, path = parse_sftp(url, rest)
    if port is not None and "port" in kwargs and kwargs["port"] != port:
        raise UsageError(f"{url}: port {port} in the URL contradicts sftp_port={kwargs['port']}")
    if port is not None:
        kwargs["port"] = port
    try:
        transport = choose_transport(kwargs.pop("transport", "auto"), kwargs.get("ssh_command"))
    except BackupfsError as exc:
        raise UsageError(f"{url}: {exc}") from None
    if transport == "openssh":  # ssh reads its configuration itself
        return SFTPBackend(host, path, user=user, transport=transport, **kwargs)
    from backupfs.backends.sftp.connect import ssh_config_for  # paramiko: ~0.4 s, this transport only

    config = ssh_config_for(host)
    kwargs.setdefault("port", int(config.get("port", 22)))
    identity = config.get("identityfile")
    if "key_filename" not in kwargs and identity:
        keys = [os.path.expanduser(k) for k in identity if os.path.exists(os.path.expanduser(k))]
        if keys:
            kwargs["key_filename"] = keys[0]
    if "known_hosts" not in kwargs and config.get("userknownhostsfile"):
        kwargs["known_hosts"] = os.path.expanduser(config["userknownhostsfile"].split()[0])
    checking = str(config.get("stricthostkeychecking", "")).lower()
    if "strict_host_keys" not in kwargs and checking in ("no", "off", "accept-new"):
        kwargs["strict_host_keys"] = False
    host = config.get("hostname", host)
    return SFTPBackend(host, path, user=user or config.get("user"), transport=transport, **kwargs)


def parse_sftp(url: str, rest: str | None = None) -> tuple[str | None, str, int | None, str]:
    """(user, host, port, path) of an sftp URL; path is absolute or relative to the login dir."""
    rest = url[len("sftp:") :] if rest is None else rest
    if rest.startswith("//"):
        parts = urlsplit("sftp:" + rest)
        if not parts.hostname:
            raise UsageError(f"{url}: no host name (expected sftp://user@host:port//absolute/path)")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{url}: invalid port") from None
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path  # "//abs" -> "/abs", "/rel" -> "rel"
        user = unquote(parts.username) if parts.username else None
        return user, parts.hostname, port, path
    m = re.fullmatch(r"(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<path>.*)", rest)
    if m is None:
        raise UsageError(f"{url}: expected sftp:user@host:/path or sftp://user@host:port//path")
    host = m.group("host").strip("[]")
    return m.group("user"), host, None, m.group("path")


def _rest(url: str) -> Backend:
    from backupfs.backends.rest import RestBackend

    return RestBackend(url)


def _s3(url: str, rest: str, kwargs: dict[str, Any]) -> Backend:
    from backupfs.backends.s3 import S3Backend

    endpoint, bucket, prefix = parse_s3(url, rest)
    if kwargs.get("addressing_style") not in (None, "auto", "path", "virtual"):
        raise UsageError("option s3_addressing_style: expected auto, path or virtual")
    return S3Backend(endpoint, bucket, prefix, **kwargs)


def parse_s3(url: str, rest: str | None = None) -> tuple[str | None, str, str]:
    """(endpoint URL or None for AWS, bucket, prefix) of an s3 URL."""
    rest = url[len("s3:") :] if rest is None else rest
    if "://" not in rest:
        rest = "https://" + rest
    parts = urlsplit(rest)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{url}: expected s3:https://endpoint/bucket/prefix")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        raise UsageError(f"{url}: no bucket name (expected s3:https://endpoint/bucket/prefix)")
    bucket, prefix = segments[0], "/".join(segments[1:])
    host = (parts.hostname or "").lower()
    endpoint = None if host in ("s3.amazonaws.com", "amazonaws.com") else f"{parts.scheme}://{parts.netloc}"
    return endpoint, bucket, prefix
