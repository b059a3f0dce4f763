"""Server fixtures for backend tests: a real OpenSSH sshd, a real moto S3 server and a real Ceph
cluster with its S3 gateway (RGW).

`sshd_server`, `s3_server` (moto) and `rgw_server` (Ceph) are session-scoped and shared; each
test takes a fresh repository on them with `server.url(name)` and passes `**server.options` to
`open_backend`. Tests that stop or break a server start a private one (`private_sshd`,
`private_s3`) so they never disturb the shared ones; a Ceph cluster is too slow to start for
that, so the RGW kill test restarts the shared gateway on its port, the cluster untouched. The
classes live in tools/support/servers.py for reuse outside pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ceph_rgw import ensure_packages as ensure_ceph
from support.rest_server import RestServer
from support.servers import MotoServer, RGWServer, SSHDServer, ensure_sshd, env_vars

from backupfs.backends.base import Backend

from .factory import BackendFactory


def _sshd(workdir: Path) -> SSHDServer:
    reason = ensure_sshd()
    if reason:
        pytest.skip(reason)
    return SSHDServer(workdir)


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
    with _sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def jump_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
    """A second sshd, for ProxyJump hops to `sshd_server`."""
    with _sshd(tmp_path_factory.mktemp("jump-sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    # boto3 reads credentials from the environment, as it would for a user.
    with env_vars(MotoServer.env, MotoServer.unset_env), MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RGWServer]:
    """One Ceph cluster for the whole run (it takes ~10-15 s to start): one monitor, manager and
    memstore OSD, and radosgw on 127.0.0.1. Installs Ceph with apt-get when missing (as root);
    skips only if that is impossible. A cluster that is installed but fails to start is an error."""
    reason = ensure_ceph()
    if reason:
        pytest.skip(reason)
    with env_vars(RGWServer.env, RGWServer.unset_env), RGWServer(tmp_path_factory.mktemp("ceph")) as server:
        yield server


@pytest.fixture(params=["s3", "rgw"])
def any_s3_server(request: pytest.FixtureRequest) -> MotoServer | RGWServer:
    """Each S3 server in turn: moto, then Ceph RGW."""
    server: MotoServer | RGWServer = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    """`backupfs serve` in a subprocess (tests/rest_server.py)."""
    with RestServer(tmp_path_factory.mktemp("rest")) as server:
        yield server


@pytest.fixture
def private_sshd(tmp_path: Path) -> Iterator[SSHDServer]:
    with _sshd(tmp_path) as server:
        yield server


@pytest.fixture
def private_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    for key, value in MotoServer.env.items():
        monkeypatch.setenv(key, value)
    for key in MotoServer.unset_env:
        monkeypatch.delenv(key, raising=False)
    with MotoServer(tmp_path) as server:
        yield server


BACKENDS = ["memory", "local", "sftp", "sftp-paramiko", "s3", "rgw", "rest"]


@pytest.fixture(params=BACKENDS)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    factory = BackendFactory(request.param, request, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def backend(make_backend: Callable[..., Backend]) -> Backend:
    """A created, empty repository on each kind of backend, as open_backend returns it."""
    return make_backend()
