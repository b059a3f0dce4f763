#!/usr/bin/env python3
"""A throwaway single-node Ceph cluster with its S3 gateway (RGW) on 127.0.0.1: a real
distributed object store for the tests and benchmarks (issue 16).

One monitor, one manager, one OSD keeping its objects in memory (`memstore`), authentication
off (`auth ... = none`), pools of one replica, and radosgw's beast frontend on a free loopback
port. Everything lives in one private directory: its own ceph.conf (passed with -c, so
/etc/ceph is never read), its own cluster name, data, run (admin sockets) and log directories.
Nothing under /etc/ceph or /var/lib/ceph is touched, and no systemd unit is started. An S3 user
is created with radosgw-admin; `start` prints the endpoint and the keys.

    python3 tools/ceph_rgw.py start [--dir DIR] [--port PORT] [--access-key K --secret-key S]
    python3 tools/ceph_rgw.py stop DIR

`start` prints `export` lines (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the endpoint and the
directory); with --json, one JSON object instead. The daemons keep running after it exits;
`stop DIR` ends them (only the processes it started: their ids and command lines are in
DIR/state.json) and removes DIR. The packages (ceph-mon ceph-mgr ceph-osd radosgw ceph-common,
about 30 s) are installed with apt-get when missing and running as root, unless --no-install.

From Python (tools/support/servers.py, benchmarks): `with CephRGW(workdir) as rgw:`
then `rgw.endpoint`, `rgw.access_key`, `rgw.secret_key`; `kill_gateway()` / `start_gateway()`
kill radosgw and start it again on the same port (the objects stay in the OSD).

On a 2-core machine the cluster answers S3 requests about 10-15 s after start; every readiness
wait polls with a deadline, and a failure names the daemon and shows the end of its log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGES = ("ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "ceph-common")
PROGRAMS = ("ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
CLUSTER = "backupfs-test"  # never "ceph": a path this file forgot to set cannot hit a real cluster
MON_ID, MGR_ID, RGW_NAME = "a", "x", "client.rgw.a"
# short name -> (program, Ceph entity naming its log file)
DAEMONS = {
    "mon": ("ceph-mon", f"mon.{MON_ID}"),
    "mgr": ("ceph-mgr", f"mgr.{MGR_ID}"),
    "osd": ("ceph-osd", "osd.0"),
    "rgw": ("radosgw", RGW_NAME),
}
MEMSTORE_BYTES = 4 << 30  # the OSD's capacity; memory is used only for what is stored
PG_NUM = 8  # per pool: enough for one OSD, few enough to peer in a moment

MON_TIMEOUT = 30.0  # seconds until the monitor answers
COMMAND_TIMEOUT = 60.0  # one ceph / radosgw-admin command
GATEWAY_TIMEOUT = 120.0  # until RGW answers S3 (it creates its pools first, which needs the OSD)
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
POLL = 0.1
LOG_TAIL = 1500  # characters of a daemon's log quoted in an error


class CephError(RuntimeError):
    """The cluster could not be set up; the message says which step and shows the log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def ensure_packages(install: bool = True) -> str | None:
    """None when the Ceph programs are there, else why not: installs them with apt-get first
    when allowed and possible (root, Debian)."""
    if not missing_programs():
        return None
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        ):
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    missing = missing_programs()
    if missing:
        if not install:
            how = "not installing them here"
        elif os.geteuid() == 0 and shutil.which("apt-get"):
            how = "apt-get install failed"
        else:
            how = "installing them needs root and apt-get"
        return (
            f"Ceph is not installed ({', '.join(missing)} missing; {how}): "
            f"apt-get install {' '.join(PACKAGES)}, or run tools/install-deps.sh --test"
        )
    return None


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    text = text[-LOG_TAIL:].strip()
    return text or f"({path} is empty)"


class CephRGW:
    """The cluster in `workdir` (created if missing; removed by stop() unless keep=True)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        access_key: str = "backupfs",
        secret_key: str | None = None,
        keep: bool = False,
    ) -> None:
        self.dir = Path(workdir).resolve()
        self.port = port or free_port()
        self.mon_port = free_port()
        self.access_key = access_key
        self.secret_key = secret_key or uuid.uuid4().hex
        self.keep = keep
        self.conf = self.dir / "ceph.conf"
        self.log_dir = self.dir / "log"
        self.startup_seconds: float | None = None
        # name -> pid; Popen objects too when this process started them (reaped in stop)
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What an S3 client needs in its environment to talk to this gateway."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",  # RGW's default zonegroup accepts any v4 region
        }

    # --- start ---

    def start(self) -> None:
        started = time.monotonic()
        try:
            self._setup()
            self._start_monitor()
            osd_uuid = str(uuid.uuid4())
            osd_id = self._ceph("osd", "new", osd_uuid).strip()
            if osd_id != "0":
                raise CephError(f"`ceph osd new` gave OSD id {osd_id!r}, expected 0")
            self._run(
                "ceph-osd mkfs",
                ["ceph-osd", *self._common(), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
            )
            # The manager and the gateway need not wait for the OSD: radosgw's start-up blocks
            # until its pools are writable, and that is what the readiness poll waits for.
            self._spawn("osd", ["ceph-osd", *self._common(), "-i", "0", "-f"])
            self._spawn("mgr", ["ceph-mgr", *self._common(), "-i", MGR_ID, "-f"])
            self.start_gateway()
            self._create_user()
        except BaseException:
            self._kill_all()
            self._save_state()
            raise
        self.startup_seconds = time.monotonic() - started
        self._save_state()

    def _common(self) -> list[str]:
        return ["--cluster", CLUSTER, "-c", str(self.conf)]

    def _setup(self) -> None:
        for sub in ("mon", "osd/0", "mgr", "rgw", "run", "log", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if any((self.dir / "mon").iterdir()):
            raise CephError(f"{self.dir} already holds a cluster: stop it first, or use another directory")
        fsid = str(uuid.uuid4())
        d = self.dir
        settings = {
            "fsid": fsid,
            "mon host": f"v2:127.0.0.1:{self.mon_port}",
            "mon initial members": MON_ID,
            "public addr": "127.0.0.1",
            "ms bind msgr1": "false",
            "auth cluster required": "none",
            "auth service required": "none",
            "auth client required": "none",
            # Daemons ask for an encrypted monitor session by default, which needs cephx: without
            # this radosgw retries "get_initial_auth_request returned -13" for ever.
            "ms mon client mode": "crc",
            "keyring": f"{d}/keyring",  # does not exist: nothing reads /etc/ceph's keyrings
            "run dir": f"{d}/run",
            "admin socket": f"{d}/run/$name.asok",
            "pid file": f"{d}/run/$name.pid",
            "log file": f"{d}/log/$name.log",
            "log to stderr": "false",
            "err to stderr": "true",
            "mon cluster log file": f"{d}/log/cluster.log",
            "crash dir": f"{d}/tmp",
            "tmp dir": f"{d}/tmp",
            "mon data": f"{d}/mon/$id",
            "mgr data": f"{d}/mgr/$id",
            "osd data": f"{d}/osd/$id",
            "rgw data": f"{d}/rgw/$id",
            # The monitor's store is tiny, but it watches the free space of the disk it is on:
            # below 5 % it would shut itself down.
            "mon data avail warn": "1",
            "mon data avail crit": "0",
            "osd objectstore": "memstore",
            "memstore device bytes": str(MEMSTORE_BYTES),
            "osd pool default size": "1",
            "osd pool default min size": "1",
            "osd pool default pg num": str(PG_NUM),
            "osd pool default pgp num": str(PG_NUM),
            "osd pool default pg autoscale mode": "off",  # no re-peering in the middle of a test
            "osd crush chooseleaf type": "0",  # one host: place replicas across OSDs, not hosts
            "mon allow pool size one": "true",
            "mon warn on pool no redundancy": "false",
            "mgr initial modules": "",
            # Without tcp_nodelay a small GET waits ~40 ms for a delayed ACK (Nagle's algorithm).
            "rgw frontends": f"beast endpoint=127.0.0.1:{self.port} tcp_nodelay=1",
            "rgw enable usage log": "false",
            "rgw enable ops log": "false",
            "debug rgw": "1",
            "debug ms": "0",
        }
        self.conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        monmap = d / "monmap"
        self._run(
            "monmaptool",
            [
                "monmaptool",
                "--create",
                "--fsid",
                fsid,
                "--addv",
                MON_ID,
                f"[v2:127.0.0.1:{self.mon_port}]",
                str(monmap),
            ],
        )
        self._run("ceph-mon mkfs", ["ceph-mon", *self._common(), "--mkfs", "-i", MON_ID, "--monmap", str(monmap)])

    def _start_monitor(self) -> None:
        self._spawn("mon", ["ceph-mon", *self._common(), "-i", MON_ID, "-f"])
        deadline = time.monotonic() + MON_TIMEOUT
        while True:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.mon_port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CephError(self._why("mon", f"did not listen on port {self.mon_port} within {MON_TIMEOUT:.0f} s"))
            time.sleep(POLL)

    def start_gateway(self) -> None:
        """Start radosgw (again) on self.port and wait until it answers S3 requests."""
        self._spawn("rgw", ["radosgw", *self._common(), "-n", RGW_NAME, "-f"])
        deadline = time.monotonic() + GATEWAY_TIMEOUT
        while not self._gateway_answers():
            self._check_alive()
            if time.monotonic() > deadline:
                raise CephError(self._why("rgw", f"did not answer on {self.endpoint} within {GATEWAY_TIMEOUT:.0f} s"))
            time.sleep(POLL)

    def _gateway_answers(self) -> bool:
        # An anonymous ListBuckets: 200 with an empty list once RGW has its pools and zone.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:
                return int(resp.status) == 200
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def kill_gateway(self) -> None:
        """SIGKILL radosgw, as a crash would; the cluster and its objects stay."""
        self._stop_one("rgw", signal.SIGKILL)

    def _create_user(self) -> None:
        out = self._admin(
            "user", "create", "--uid=backupfs", "--display-name=backupfs",
            f"--access-key={self.access_key}", f"--secret-key={self.secret_key}",
        )  # fmt: skip
        try:
            keys = json.loads(out)["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CephError(f"radosgw-admin user create printed no keys: {out[-LOG_TAIL:]}") from exc
        if not any(k.get("access_key") == self.access_key and k.get("secret_key") == self.secret_key for k in keys):
            raise CephError(f"radosgw-admin did not set the requested keys: {out[-LOG_TAIL:]}")

    # --- commands and processes ---

    def _ceph(self, *args: str) -> str:
        return self._run("ceph " + " ".join(args), ["ceph", *self._common(), "--connect-timeout", "20", *args])

    def _admin(self, *args: str) -> str:
        return self._run("radosgw-admin " + " ".join(args[:2]), ["radosgw-admin", *self._common(), *args])

    def _run(self, what: str, argv: Sequence[str]) -> str:
        try:
            proc = subprocess.run(
                argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise CephError(f"{what} did not finish within {COMMAND_TIMEOUT:.0f} s ({shlex.join(argv)})") from exc
        except OSError as exc:
            raise CephError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-LOG_TAIL:]
            raise CephError(f"{what} failed with exit code {proc.returncode}: {err}")
        return proc.stdout.decode(errors="replace")

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # survives `start` returning; no terminal signals
            )
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self._save_state()

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            code = proc.poll()
            if code is not None:
                raise CephError(self._why(name, f"exited with code {code}"))

    def _why(self, name: str, what: str) -> str:
        """An error naming the daemon (mon, mgr, osd, rgw), with the end of its logs."""
        parts = [f"Ceph start-up in {self.dir}: {DAEMONS[name][0]} {what}."]
        for path in (self.log_dir / f"{name}.out", self.log_dir / f"{DAEMONS[name][1]}.log"):
            if path.exists() and path.stat().st_size:
                parts.append(f"--- end of {path} ---\n{_tail(path)}")
        return "\n".join(parts)

    def _stop_one(self, name: str, sig: signal.Signals) -> None:
        pid = self.pids.pop(name, None)
        proc = self._procs.pop(name, None)
        if pid is None or not _is_ours(pid, self.conf):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        _wait_gone(pid, proc, STOP_GRACE)
        if _is_ours(pid, self.conf):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, proc, STOP_GRACE)
        self._save_state()

    def _kill_all(self) -> None:
        # Gateway first, monitor last: each still finds the daemons it talks to while it exits.
        for name in ("rgw", "mgr", "osd", "mon"):
            self._stop_one(name, signal.SIGKILL)

    def stop(self) -> None:
        """End the daemons and remove the directory. SIGKILL at once: the objects are in memory
        and about to be thrown away (a SIGTERMed memstore OSD first writes them all to disk)."""
        self._kill_all()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- state for `stop` from another process ---

    def _save_state(self) -> None:
        if not self.dir.is_dir():
            return
        state = {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "conf": str(self.conf),
            "pids": self.pids,
            "startup_seconds": self.startup_seconds,
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.dir / "state.json")

    @classmethod
    def attach(cls, workdir: Path) -> CephRGW:
        """The cluster a `start` in another process left in `workdir`."""
        try:
            state: dict[str, Any] = json.loads((Path(workdir) / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise CephError(f"{workdir} holds no cluster started by this script (state.json: {exc})") from exc
        rgw = cls(Path(workdir), port=int(state["endpoint"].rsplit(":", 1)[1]), access_key=state["access_key"])
        rgw.secret_key = state["secret_key"]
        rgw.pids = {str(k): int(v) for k, v in state["pids"].items()}
        return rgw

    def __enter__(self) -> CephRGW:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_ours(pid: int, conf: Path) -> bool:
    """Whether `pid` is still a process of this cluster (and not a recycled pid): its command
    line names our ceph.conf."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    return not zombie and os.fsencode(str(conf)) in argv


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # dead; its parent (init) reaps it
        except OSError:
            return
        time.sleep(POLL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a cluster and print its endpoint and keys")
    start.add_argument("--dir", type=Path, help="private directory (default: a new one under $TMPDIR)")
    start.add_argument("--port", type=int, help="RGW port on 127.0.0.1 (default: a free one)")
    start.add_argument("--access-key", default="backupfs")
    start.add_argument("--secret-key", help="default: random")
    start.add_argument("--json", action="store_true", help="print one JSON object instead of export lines")
    start.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    stop = sub.add_parser("stop", help="stop the cluster in DIR and remove DIR")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "stop":
        try:
            CephRGW.attach(args.dir).stop()
        except CephError as exc:
            print(f"ceph_rgw: {exc}", file=sys.stderr)
            return 1
        return 0
    reason = ensure_packages(install=not args.no_install)
    if reason:
        print(f"ceph_rgw: {reason}", file=sys.stderr)
        return 1
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="backupfs-ceph-"))
    rgw = CephRGW(workdir, port=args.port, access_key=args.access_key, secret_key=args.secret_key)
    try:
        rgw.start()
    except CephError as exc:
        print(f"ceph_rgw: {exc}", file=sys.stderr)
        print(f"ceph_rgw: daemons stopped; logs kept in {rgw.log_dir} (remove {rgw.dir} when done)", file=sys.stderr)
        return 1
    found = {**rgw.env(), "AWS_ENDPOINT_URL_S3": rgw.endpoint, "CEPH_RGW_DIR": str(rgw.dir)}
    if args.json:
        print(json.dumps({**found, "startup_seconds": rgw.startup_seconds}))
    else:
        for key, value in found.items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# up in {rgw.startup_seconds:.1f} s; repository URL s3:{rgw.endpoint}/BUCKET/PREFIX")
        print(f"# stop with: python3 {sys.argv[0]} stop {rgw.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
