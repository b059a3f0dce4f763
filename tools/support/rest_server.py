"""A real `backupfs serve` subprocess on 127.0.0.1 for tests and benchmark scripts."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType


class RestServer:
    """Starts `backupfs serve --listen 127.0.0.1:0 ...` and learns its port from the start-up line.

    Port 0 lets the kernel pick a free port, so parallel test runs never race for one.
    """

    def __init__(self, path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.path = path
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = bytearray()
        self.port = 0
        self.scheme = "https" if "--tls-cert" in args else "http"

    def start(self, port: int = 0) -> RestServer:
        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "backupfs", "serve", "--path", str(self.path)]
        cmd += ["--listen", f"127.0.0.1:{port or self.port}", *self.args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=self.env)
        assert self.proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        out = b""
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
                m = re.search(rb"serving .* on https?://127\.0\.0\.1:(\d+)", out)
                if m:
                    self.port = int(m[1])
                    self.output = bytearray(out)
                    threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
                    return self
        self.stop()
        raise RuntimeError(f"backupfs serve did not start: {out.decode(errors='replace')}")

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        """Keeps reading the server's stderr so it never blocks on a full pipe."""
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 65536):
            self.output += chunk

    def url(self, repo: str = "", user: str | None = None, password: str | None = None) -> str:
        cred = f"{user}:{password}@" if user else ""
        return f"rest:{self.scheme}://{cred}127.0.0.1:{self.port}/{repo}"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as on a power cut or OOM kill."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()

    def __enter__(self) -> RestServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
