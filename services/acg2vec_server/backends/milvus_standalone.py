"""The embedded Milvus 2.3 standalone server of the PyPI package `milvus` as a child process (one machine at scale).

Milvus Lite is a scan (fine up to ~100k illustrations); past that a real engine with HNSW answers in milliseconds.
The `milvus` package ships the `milvus run standalone` binary (etcd, rocksmq and local storage inside) and a config
template; this module writes the config into a data dir of our own (free ports for every listener, all data, logs
and the binary under that dir), starts the binary in its own process group with its own pid file (`--alias`, so
several servers run side by side on one machine), waits until it answers, and stops it (the whole group: no stray
processes). Used by `acg2vec serve --milvus standalone` (data under var/), the tests (one server per session) and
the benchmarks.

Install with the project's extra: `pip install -e '.[standalone]'` (scripts/setup.sh does it for development).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL_HINT = "install the embedded Milvus server with `pip install 'acg2vec[standalone]'` (the PyPI package milvus)"
#: Seconds a killed server's node sessions stay in its etcd (Milvus' default is 30): a restarted server waits for
#: them to expire before its first search, so a short TTL makes a restart after a crash usable within seconds.
SESSION_TTL_S = 10
PID_FILE = "acg2vec-milvus.pid"


class StandaloneUnavailable(RuntimeError):
    """The standalone server cannot start (package missing, binary exits, not ready in time)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_ours(pid: int, exe: Path) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace") == str(exe)
    return False


class MilvusStandalone:
    """One `milvus run standalone` in `base_dir`, reached at `uri` (http://127.0.0.1:<port>)."""

    def __init__(self, base_dir: Path, port: int = 0, ready_timeout_s: float = 180.0, bin_dir: Path | None = None):
        self.base_dir = Path(base_dir).resolve()
        #: Where the binary is unpacked (~250 MB, a few seconds): shared by several data dirs when given (tests).
        self.bin_dir = Path(bin_dir).resolve() if bin_dir is not None else None
        self.port = port or _free_port()
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.alias = f"acg2vec-{uuid.uuid4().hex[:12]}"
        self._health_port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def exe(self) -> Path:
        return self.base_dir / "bin" / "milvus"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "run" / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.base_dir / "logs" / "milvus-standalone.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- start
    def _configure(self) -> dict[str, str]:
        """Writes configs/milvus.yaml (free ports, data under base_dir) and unpacks the binary; returns the env."""
        try:
            import milvus
        except ImportError:
            raise StandaloneUnavailable(f"the Milvus standalone server is not installed: {INSTALL_HINT}") from None
        config = milvus.MilvusServerConfig(data_dir=str(self.base_dir))
        config.resolve_storage()
        # Every listener on a port the kernel hands out, not the package's search upwards from Milvus' defaults:
        # two servers starting together would both find a default free before either binds it. The proxy (what
        # clients reach) on ours.
        for key in config.configurable_items:
            if key.endswith("_port"):
                config.configurable_items[key][1] = _free_port()
        config.configurable_items["proxy_port"][1] = self.port
        config.write_config()
        path = self.base_dir / "configs" / "milvus.yaml"
        text = path.read_text()
        default_ttl = "    ttl: 30 # ttl value when session granting a lease"
        if default_ttl not in text:
            raise StandaloneUnavailable(f"unexpected Milvus config template in {milvus.__file__}: no session ttl")
        text = text.replace(default_ttl, default_ttl.replace("30", str(SESSION_TTL_S)))
        embed = "    embed: true # Whether to enable embedded Etcd (an in-process EtcdServer)."
        if embed not in text:
            raise StandaloneUnavailable(f"unexpected Milvus config template in {milvus.__file__}: no embedded etcd")
        # the nodes find each other on loopback (not on the machine's first address, which may change)
        text = text.replace("  ip: # if not specify address", "  ip: 127.0.0.1 # if not specify address")
        etcd_config = self._etcd_config()
        path.write_text(text.replace(embed, f"{embed}\n  config:\n    path: {etcd_config}"))
        link = self.base_dir / "bin"
        if self.bin_dir is not None and not link.exists() and not link.is_symlink():
            self.bin_dir.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.bin_dir, target_is_directory=True)
        link.mkdir(exist_ok=True)
        with open(link / ".unpack.lock", "w") as lock:  # another process may unpack into a shared bin_dir now
            fcntl.flock(lock, fcntl.LOCK_EX)
            milvus._initialize_data_files(str(self.base_dir))  # unpacks the binary unless the same one is there
        self._health_port = _free_port()
        env = {
            **os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(self._health_port),
            "MILVUS_RUN_DIR": str(self.base_dir / "run"),
            "LD_LIBRARY_PATH": ":".join(p for p in (str(self.exe.parent), os.environ.get("LD_LIBRARY_PATH", "")) if p),
        }  # fmt: skip
        return env

    def _etcd_config(self) -> Path:
        """The embedded etcd's own config: its client and peer listeners on ports of this data dir (etcd's defaults,
        2379 and 2380, would let only one server run per machine). Chosen once and kept, so that a restart finds
        the member it recorded."""
        ports_file = self.base_dir / "configs" / "acg2vec-etcd-ports.json"
        try:
            client, peer = json.loads(ports_file.read_text())
        except (OSError, ValueError):
            client, peer = _free_port(), _free_port()
            ports_file.write_text(json.dumps([client, peer]))
        config = self.base_dir / "configs" / "embed-etcd.yaml"
        config.write_text(
            "name: acg2vec-milvus\n"
            f"listen-client-urls: http://127.0.0.1:{client}\n"
            f"advertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: acg2vec-milvus=http://127.0.0.1:{peer}\n"
        )
        return config

    def stop_stale(self) -> None:
        """Stops a server of this data dir left by a process that died without stopping it (its pid file; such a
        server was handed to init). One whose owner still runs is in use: refused, with its URI."""
        try:
            pid, port = (int(v) for v in self.pid_file.read_text().split()[:2])
        except (OSError, ValueError):
            pid = port = 0
        if pid and _alive(pid) and _is_ours(pid, self.exe):
            owner = _parent(pid)
            if owner not in (0, 1):
                raise StandaloneUnavailable(
                    f"a Milvus standalone server of {self.base_dir} is running (pid {pid}, owned by pid {owner}); "
                    f"use it (ACG2VEC_MILVUS_URI=http://127.0.0.1:{port}) or stop its owner first"
                )
            log.warning("stopping a stale Milvus standalone server of %s (pid %d)", self.base_dir, pid)
            self._kill_group(pid, grace_s=5)
        self.pid_file.unlink(missing_ok=True)

    def start(self) -> None:
        """Starts the server and waits until it answers; raises StandaloneUnavailable with its log on failure."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "run").mkdir(exist_ok=True)
        self.stop_stale()
        env = self._configure()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [str(self.exe), "run", "standalone", f"--alias={self.alias}"],
                cwd=self.base_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{self.process.pid} {self.port}\n")
        log.info("Milvus standalone server starting (pid %d, %s, data %s)", self.process.pid, self.uri, self.base_dir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://127.0.0.1:{self._health_port}/healthz"
        while time.monotonic() < deadline:
            if not self.alive():
                raise StandaloneUnavailable(f"the Milvus standalone server exited: {self.tail_log()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if b"OK" in response.read() and self._accepts():
                    return
            time.sleep(0.2)
        raise StandaloneUnavailable(
            f"the Milvus standalone server did not answer within {self.ready_timeout_s:.0f} s: {self.tail_log()}"
        )

    def _accepts(self) -> bool:
        """The proxy (the gRPC port clients use) accepts connections."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=2):
            return True
        return False

    def tail_log(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-chars:]
        return ""

    # -- stop
    def _kill_group(self, pid: int, grace_s: float) -> None:
        """SIGTERM to the process group, SIGKILL after grace_s (a graceful 2.3 stop waits ~30 s for coordinators
        that are already gone; flushed data and etcd survive the kill)."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.process is not None and self.process.pid == pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(0.1)
                if not _alive(pid):
                    return
                time.sleep(0.1)

    def _forget(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # any child the binary left in its group
        self.pid_file.unlink(missing_ok=True)
        # what the binary writes outside the data dir
        Path(f"/tmp/milvus/server_id_{pid}").unlink(missing_ok=True)
        Path(f"/run/milvus/standalone-{self.alias}.pid").unlink(missing_ok=True)

    def stop(self, grace_s: float = 3.0) -> None:
        if self.process is None:
            return
        pid = self.process.pid
        self._kill_group(pid, grace_s)
        self._forget(pid)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests); start() brings it back on the same port and data."""
        self.stop(grace_s=0)

    def signal(self, sig: int) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, sig)

    def __enter__(self) -> MilvusStandalone:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
