"""`backupfs serve` under abuse: password guessing, oversized and stalled uploads, floods of
headers, bad start-up options and stop signals. Every test talks to a real server on 127.0.0.1.

The authentication tests run the server in this process (the same `serve()` the command runs,
on a real socket), so that they can watch its bcrypt queue instead of timing it: bcrypt is
wrapped to record each check and, where a test needs it, to hold the wrong passwords' checks
until the test lets them go. Linux routes all of 127.0.0.0/8 to loopback, so clients bind
127.0.x.y source addresses to play many attackers.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import blake3
import pytest
import trio
from support.rest_server import RestServer

from backupfs.backends.local import LocalBackend
from backupfs.errors import BackupfsError
from backupfs.server.app import MAX_UPLOAD, RestApp
from backupfs.server.auth import Htpasswd
from backupfs.server.ratelimit import LoginLimiter
from backupfs.server.run import Prepared, ServerOptions, bind, hypercorn_config, prepare, serve

GOOD = b"alices-pw"
HANG_GUARD = 30.0  # seconds; only ever reached when the behaviour under test is broken


def _htpasswd(path: Path, users: dict[str, bytes], cost: int = 5) -> Path:
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p, bcrypt.gensalt(rounds=cost)).decode()}\n" for u, p in users.items()))
    return path


def _cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


class Client:
    """One HTTP/1.1 connection from a chosen source address, with basic credentials."""

    def __init__(self, port: int, source: str = "127.0.0.1", user: str = "alice", password: bytes = GOOD) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD, source_address=(source, 0))
        token = base64.b64encode(user.encode() + b":" + password).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def request(self, method: str, path: str, body: bytes = b"") -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        if response.will_close:
            self.conn.close()
        return response

    def close(self) -> None:
        self.conn.close()


def ask(
    port: int,
    method: str,
    path: str,
    source: str = "127.0.0.1",
    user: str = "alice",
    password: bytes = GOOD,
    body: bytes = b"",
) -> int:
    """One request on a connection of its own: the status."""
    client = Client(port, source, user, password)
    try:
        return client.request(method, path, body).status
    finally:
        client.close()


@contextlib.asynccontextmanager
async def in_process(app: RestApp) -> AsyncIterator[int]:
    """The real server (run.serve, hypercorn, a real socket) in this trio loop; yields its port."""
    prepared = Prepared(app, hypercorn_config(ServerOptions(path=app.root)), bind("127.0.0.1:0"))
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, prepared, stop.wait, lambda _m: None)
            try:
                yield prepared.listener.getsockname()[1]
            finally:
                stop.set()
    finally:
        prepared.listener.close()


class Bcrypt:
    """bcrypt.checkpw, recording (password, cost) of every check; wrong passwords can be held."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold_wrong: bool = False) -> None:
        self.calls: list[tuple[bytes, int]] = []
        self.gate = threading.Event()
        if not hold_wrong:
            self.gate.set()
        real = bcrypt.checkpw

        def checkpw(password: bytes, hashed: bytes) -> bool:
            self.calls.append((password, _cost(hashed)))
            if password != GOOD:
                self.gate.wait(HANG_GUARD)
            return real(password, hashed)

        monkeypatch.setattr(bcrypt, "checkpw", checkpw)

    def count(self, password: bytes) -> int:
        return sum(1 for p, _ in self.calls if p == password)


# ---------------------------------------------------------------------------- logins


async def test_a_logged_in_client_never_waits_behind_bcrypt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 wrong-password clients (60 addresses) fill the bcrypt threads and their queue; the
    logged-in client's requests are answered meanwhile, without a single further bcrypt check."""
    app = RestApp(str(tmp_path), htpasswd=Htpasswd(str(_htpasswd(tmp_path / "htpasswd", {"alice": GOOD}))))
    checks = Bcrypt(monkeypatch, hold_wrong=True)
    threads = trio.CapacityLimiter(100)
    attackers = 60
    async with in_process(app) as port:
        good = Client(port)
        response = await trio.to_thread.run_sync(good.request, "POST", "/r/?create=true")
        assert response.status == 200
        assert checks.count(GOOD) == 1

        results: list[int] = []

        def attack(i: int) -> None:
            results.append(ask(port, "GET", "/r/keys/", f"127.0.1.{i + 1}", password=b"guess-%d" % i))

        async with trio.open_nursery() as nursery:
            for i in range(attackers):
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, attack, i, limiter=threads))
            with trio.fail_after(HANG_GUARD):  # both bcrypt threads held, every other guess queued
                while (app._auth.statistics().borrowed_tokens, app._auth.statistics().tasks_waiting) != (
                    2,
                    attackers - 2,
                ):
                    await trio.sleep(0.01)
            for _ in range(20):
                response = await trio.to_thread.run_sync(good.request, "GET", "/r/keys/", limiter=threads)
                assert response.status == 200
            assert app._auth.statistics().tasks_waiting == attackers - 2  # the queue never moved
            checks.gate.set()
        good.close()
    assert checks.count(GOOD) == 1
    assert results == [401] * attackers


async def test_failed_logins_are_rate_limited_per_address_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logins = LoginLimiter(burst=3, refill_seconds=60, max_addresses=8, clock=lambda: 0.0)  # the clock stands still
    htpasswd = Htpasswd(str(_htpasswd(tmp_path / "htpasswd", {"alice": GOOD})))
    app = RestApp(str(tmp_path), htpasswd=htpasswd, logins=logins)
    checks = Bcrypt(monkeypatch)
    async with in_process(app) as port:

        def run() -> None:
            guesser = Client(port, "127.0.0.2", password=b"guess")
            answers = [guesser.request("GET", "/r/keys/") for _ in range(6)]
            assert [a.status for a in answers] == [401, 401, 401, 429, 429, 429]
            assert all(int(a.headers["retry-after"]) >= 1 for a in answers[3:])
            assert checks.count(b"guess") == 3  # the refused guesses cost no bcrypt
            guesser.close()

            assert ask(port, "POST", "/r/?create=true", "127.0.0.3") == 200
            # a verified login is never rate-limited, even from an address out of tokens
            assert ask(port, "GET", "/r/keys/", "127.0.0.2") == 200
            assert checks.count(GOOD) == 1

            # 30 more addresses: 6 get buckets of their own (8 tracked), then all share one
            statuses = []
            for i in range(30):
                statuses.append(ask(port, "GET", "/r/keys/", f"127.0.2.{i + 1}", password=b"spray"))
                assert len(logins) <= 8 + 1
            assert statuses == [401] * (6 + 3) + [429] * 21
            assert checks.count(b"spray") == 6 + 3

        await trio.to_thread.run_sync(run)


def test_login_limiter_refills_forgets_and_groups_ipv6() -> None:
    now = [0.0]
    limiter = LoginLimiter(burst=2, refill_seconds=10, max_addresses=4, clock=lambda: now[0])
    assert [limiter.take("2001:db8::1"), limiter.take("2001:db8::2")] == [0, 0]
    assert limiter.take("2001:db8::ffff") == 10  # the same /64: one host
    assert limiter.take("2001:db8:0:1::1") == 0  # another /64
    assert limiter.take("::ffff:192.0.2.1") == 0 and limiter.take("192.0.2.1") == 0
    assert limiter.take("192.0.2.1") == 10  # an IPv4-mapped address is that IPv4 address
    limiter.give_back("192.0.2.1")
    assert limiter.take("192.0.2.1") == 0
    now[0] = 15
    assert limiter.take("2001:db8::7") == 0 and limiter.take("2001:db8::7") == 5
    assert len(limiter) == 3
    now[0] = 1000  # every bucket has refilled: they are forgotten as new addresses come
    assert [limiter.take(f"198.51.100.{i}") for i in range(4)] == [0] * 4
    assert len(limiter) == 4
    # the table is full of buckets in use: further addresses share one overflow bucket
    assert [limiter.take(f"203.0.113.{i}") for i in range(4)] == [0, 0, 10, 10]
    assert len(limiter) == 4 + 1


async def test_unknown_users_cost_what_the_files_entries_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check made for an unknown user uses the file's own kind of hash and bcrypt cost, so a
    failed login takes as long for an unknown user as for a known one."""
    checks = Bcrypt(monkeypatch)
    for cost, users in ((5, {"alice": GOOD, "bob": b"x"}), (7, {"alice": GOOD, "bob": b"x", "carol": b"y"})):
        path = _htpasswd(tmp_path / f"htpasswd{cost}", users, cost)
        async with in_process(RestApp(str(tmp_path), htpasswd=Htpasswd(str(path)))) as port:

            def probe(port: int = port) -> tuple[int, int]:
                return (
                    ask(port, "GET", "/r/keys/", user="mallory", password=b"m"),
                    ask(port, "GET", "/r/keys/", user="mallory", password=b"m" * 100),
                )

            checks.calls.clear()
            assert await trio.to_thread.run_sync(probe) == (401, 401)  # over 72 bytes: 401, not an error
            assert [c for _p, c in checks.calls] == [cost, cost]

    # a file of $apr1$ entries (htpasswd's default): an unknown user costs an apr1 hash, not bcrypt
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", "pw"], capture_output=True, check=True).stdout.decode()
    (tmp_path / "apr1").write_text(f"dave:{apr1.strip()}\n")
    async with in_process(RestApp(str(tmp_path), htpasswd=Htpasswd(str(tmp_path / "apr1")))) as port:
        checks.calls.clear()
        assert await trio.to_thread.run_sync(lambda: ask(port, "GET", "/r/keys/", user="mallory", password=b"m")) == 401
        assert checks.calls == []


async def test_long_passwords_are_cut_at_72_bytes_as_bcrypt_does(tmp_path: Path) -> None:
    """Apache's bcrypt (and the original) uses a password's first 72 bytes; the bcrypt module
    refuses longer ones, which made such users unable to log in."""
    long_pw = bytes(range(65, 65 + 50)) * 2  # 100 bytes
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{bcrypt.hashpw(long_pw[:72], bcrypt.gensalt(rounds=5)).decode()}\n")
    async with in_process(RestApp(str(tmp_path), htpasswd=Htpasswd(str(path)))) as port:

        def run() -> None:
            assert ask(port, "POST", "/r/?create=true", password=long_pw) == 200
            assert ask(port, "GET", "/r/keys/", password=long_pw[:72] + b"anything") == 200
            assert ask(port, "GET", "/r/keys/", password=long_pw[:71]) == 401

        await trio.to_thread.run_sync(run)


async def test_a_changed_htpasswd_file_ends_remembered_logins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _htpasswd(tmp_path / "htpasswd", {"alice": GOOD, "bob": b"bobs-pw"})
    checks = Bcrypt(monkeypatch)
    app = RestApp(str(tmp_path), htpasswd=Htpasswd(str(path), reload_seconds=0))
    async with in_process(app) as port:

        def run() -> None:
            alice, bob = Client(port), Client(port, user="bob", password=b"bobs-pw")
            assert alice.request("POST", "/r/?create=true").status == 200
            assert alice.request("GET", "/r/keys/").status == 200 and bob.request("GET", "/r/keys/").status == 200
            assert checks.count(GOOD) == 1  # remembered
            _htpasswd(path, {"alice": b"new-pw"})  # alice's password changed, bob revoked
            assert alice.request("GET", "/r/keys/").status == 401
            assert bob.request("GET", "/r/keys/").status == 401
            assert ask(port, "GET", "/r/keys/", password=b"new-pw") == 200
            alice.close()
            bob.close()

        await trio.to_thread.run_sync(run)


# ---------------------------------------------------------------------------- oversized and broken uploads


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    with RestServer(tmp_path_factory.mktemp("srv")) as srv:
        assert ask(srv.port, "POST", "/r/?create=true") == 200
        yield srv


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_an_oversized_declared_upload_is_refused_before_its_body(server: RestServer) -> None:
    """Headers only, declaring more than the limit: 413 arrives with no byte of body sent, and
    the server closes the connection (it will not read gigabytes to refuse them)."""
    name = "ab" * 32
    with _raw(server.port) as sock:
        sock.sendall(
            f"POST /r/data/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_UPLOAD + 1}\r\n\r\n".encode()
        )
        answer = _read_to_eof(sock)  # EOF: the server closed the connection
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413") and b"connection: close" in head


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".tmp-" in p.name]


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_a_client_gone_mid_upload_leaves_nothing(server: RestServer) -> None:
    data = os.urandom(1 << 20)
    name = hashlib.sha256(data).hexdigest()  # any 64-hex name: it is never committed
    with _raw(server.port) as sock:
        sock.sendall(f"POST /r/data/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        sock.sendall(data[: len(data) // 2])
        _wait_for(lambda: bool(_temporaries(server.path)))
    _wait_for(lambda: not _temporaries(server.path))
    assert not (server.path / "r" / "data" / name[:2] / name).exists()


def test_a_flood_of_headers_is_refused_and_the_server_goes_on(server: RestServer) -> None:
    with _raw(server.port) as sock:
        # headers that never end, past 16 KiB: 20 KB, small enough to be read in one go, so
        # the server's close after its answer is not a reset (which could discard the answer)
        sock.sendall(b"GET /r/keys/ HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 2_500)
        answer = _read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert ask(server.port, "GET", "/r/keys/") == 200


def test_repository_names_cannot_climb_out_of_the_served_folder(server: RestServer) -> None:
    """Request targets sent byte for byte (no client-side normalisation): each is refused with
    400 and nothing is created outside --path (nor a repository named by a dot segment)."""
    for target in (
        b"/../evil/?create=true",
        b"/r/../../evil/?create=true",
        b"/%2e%2e/evil/?create=true",
        b"/r/..%2f..%2fevil/?create=true",
        b"/r/..\\..\\evil/?create=true",
        b"/./evil/?create=true",
        b"/evil%00/?create=true",
        b"http://x/../evil/?create=true",
        b"/../../etc/passwd",
        b"/r/../../../etc/passwd/config",
    ):
        with _raw(server.port) as sock:
            sock.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            assert _read_to_eof(sock).startswith(b"HTTP/1.1 400"), target
    # beside --path: other tests' files live further up (pytest's shared base folder)
    assert not list(server.path.parent.glob("evil*")) and not list(server.path.rglob("evil*"))


def test_concurrent_uploads_of_one_name_store_it_once(server: RestServer) -> None:
    data = os.urandom(300_000)
    name = blake3.blake3(data).hexdigest()
    statuses: list[int] = []

    def upload() -> None:
        statuses.append(ask(server.port, "POST", f"/r/data/{name}", body=data))

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    assert (server.path / "r" / "data" / name[:2] / name).read_bytes() == data
    assert not _temporaries(server.path)


async def test_a_listing_is_streamed_in_pieces(tmp_path: Path) -> None:
    """A folder's listing is sent in pieces (chunked, no length), never built whole in memory: a
    huge folder (even lock files, which an append-only client may create at will) costs the
    server one piece at a time."""
    LocalBackend(str(tmp_path / "r")).create()
    names = sorted(f"{i:064x}" for i in range(10))
    for i, name in enumerate(names):
        (tmp_path / "r" / "locks" / name).write_bytes(b"x" * i)
    (tmp_path / "r" / "locks" / ("a" * 64 + ".tmp-1")).write_bytes(b"")  # never listed
    async with in_process(RestApp(str(tmp_path), list_batch=3)) as port:

        def run() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD)
            for method in ("GET", "HEAD"):
                conn.request(method, "/r/locks/")
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200 and response.headers["content-length"] is None
                if method == "GET":
                    assert response.headers["transfer-encoding"] == "chunked"
                    assert sorted((e["name"], e["size"]) for e in json.loads(body)) == [
                        (n, i) for i, n in enumerate(names)
                    ]
                else:
                    assert body == b""
            conn.close()

        await trio.to_thread.run_sync(run)


# ---------------------------------------------------------------------------- start-up errors


def _serve(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "backupfs", "serve", *args], stderr=subprocess.PIPE)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only filesystem: not writable even by root, as the tests run."""
    path = tmp_path / "ro"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=False).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_bad_start_up_options_are_one_line_and_a_documented_exit_code(tmp_path: Path, read_only_dir: Path) -> None:
    """Exit 2 for a value to fix, 1 for an address that cannot be listened on (it may free up)."""
    root = str(tmp_path / "srv")
    os.mkdir(root)
    (tmp_path / "file").write_text("")
    (tmp_path / "garbage").write_bytes(b"\x00\xff no entries here\nalice\n")
    missing, file = str(tmp_path / "missing"), str(tmp_path / "file")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    in_use = f"127.0.0.1:{busy.getsockname()[1]}"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"listen": "127.0.0.1:99999"}, 2, "port must be a number"),
        ({"listen": "127.0.0.1:http"}, 2, "port must be a number"),
        ({"listen": "8000"}, 2, "expected HOST:PORT"),
        ({"listen": "::1:8000"}, 2, "in brackets"),
        ({"listen": "nosuchhost.invalid:8000"}, 1, "cannot listen on nosuchhost.invalid:8000"),
        ({"listen": in_use}, 1, f"cannot listen on {in_use}: Address already in use"),
        ({"path": missing}, 2, "no such directory"),
        ({"path": file}, 2, "not a directory"),
        ({"path": str(read_only_dir)}, 2, "not writable"),
        ({"htpasswd": missing}, 2, "cannot read --htpasswd"),
        ({"htpasswd": str(tmp_path / "garbage")}, 2, "no usable entry"),
        ({"tls_cert": missing, "tls_key": missing}, 2, "cannot load --tls-cert"),
        ({"tls_cert": file}, 2, "go together"),
        ({"private_repos": True}, 2, "needs --htpasswd"),
    ]
    logged: list[str] = []
    try:
        for options, code, message in cases:
            with pytest.raises(BackupfsError) as info:
                prepare(ServerOptions(**{"path": root, "listen": "127.0.0.1:0", **options}), logged.append)
            assert (info.value.exit_code, message in str(info.value), logged) == (code, True, []), (options, info)
            assert "\n" not in str(info.value)
        # through the command: one line, that exit code (these four were tracebacks or exit 1)
        cli_cases = [("--listen", "127.0.0.1:99999"), ("--listen", "nosuchhost.invalid:8000"), ("--listen", in_use)]
        cli_cases.append(("--listen", "127.0.0.1:0", "--htpasswd", missing))
        started = [_serve("--path", root, *args) for args in cli_cases]
        for proc, args, code in zip(started, cli_cases, (2, 1, 1, 2), strict=True):
            _out, err = proc.communicate(timeout=HANG_GUARD)
            lines = err.decode().splitlines()
            assert (proc.returncode, len(lines)) == (code, 1), (args, proc.returncode, lines)
            assert lines[0].startswith("backupfs: ") and "internal error" not in lines[0], lines
    finally:
        busy.close()


# ---------------------------------------------------------------------------- stop signals


def _start_upload(port: int, data: bytes, name: str) -> socket.socket:
    sock = _raw(port)
    sock.sendall(f"POST /r/data/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode())
    sock.sendall(data[: len(data) // 2])
    return sock


def test_stop_signals_end_serve_cleanly(tmp_path: Path) -> None:
    """SIGTERM, SIGHUP and SIGINT, each landing mid-upload: an upload completed within the grace
    period is stored, one that stalls is cancelled and its temporary removed; exit 143/129/130."""
    servers = {sig: RestServer(tmp_path / sig.name) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        uploads = {}
        for sig, srv in servers.items():
            srv.start()
            assert ask(srv.port, "POST", "/r/?create=true") == 200
            finished, stalled = os.urandom(200_000), os.urandom(200_000)
            names = blake3.blake3(finished).hexdigest(), blake3.blake3(stalled).hexdigest()
            socks = _start_upload(srv.port, finished, names[0]), _start_upload(srv.port, stalled, names[1])
            uploads[sig] = (finished, names, socks)
            _wait_for(lambda srv=srv: len(_temporaries(srv.path)) == 2)  # both uploads under way
        for sig, srv in servers.items():
            assert srv.proc is not None
            srv.proc.send_signal(sig)
        for sig in servers:  # within the grace period: the rest of one upload, after the signal
            finished, _names, (done, _stalled) = uploads[sig]
            done.sendall(finished[len(finished) // 2 :])
            assert _read_to_eof(done).startswith(b"HTTP/1.1 200")
        for sig, srv in servers.items():
            finished, names, socks = uploads[sig]
            proc, srv.proc = srv.proc, None
            assert proc is not None
            code = proc.wait(HANG_GUARD)
            for sock in socks:
                sock.close()
            assert code == 128 + sig, (sig, code)
            expected = b"backupfs: interrupted" if sig == signal.SIGINT else f"terminated by {sig.name}".encode()
            _wait_for(lambda srv=srv, expected=expected: expected in srv.output)
            assert proc.stderr is not None
            proc.stderr.close()
            data_dir = srv.path / "r" / "data"
            assert (data_dir / names[0][:2] / names[0]).read_bytes() == finished
            assert not (data_dir / names[1][:2] / names[1]).exists()
            assert _temporaries(srv.path) == []
    finally:
        for srv in servers.values():
            srv.stop(signal.SIGKILL)
