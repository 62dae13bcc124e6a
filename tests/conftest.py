"""Fixtures: real Redis-protocol server (Tendis commands disabled), real Milvus Lite and a real Milvus server (the
standalone server of the PyPI package `milvus`, started once per session), real SavedModels, a real gRPC server on a
local port, called through the generated stubs; and a secured one (TLS with a CA made in the test, token auth with
scopes, a plaintext health-only port).

Tests where the vector engine matters take `engine_app` / `engine_stubs` (or `milvus_uri`): they run once on Milvus
Lite and once on the Milvus server; the others use `app` / `stubs` (Milvus Lite)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from acg2vec_server.app import Application
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.milvus_standalone import MilvusStandalone, StandaloneUnavailable
from acg2vec_server.transport.auth import hash_token, make_token
from acg2vec_testing.model_repository import dev_model_repository
from acg2vec_testing.paths import ROOT
from tests.support.pki import Pki
from tests.support.servers import SecureServer, Stubs, make_settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest_asyncio.fixture(scope="session", autouse=True)
async def _no_stray_tasks() -> AsyncIterator[None]:
    """Torn down last: cancels what tests left running (grpc.aio internals can ignore the loop's own
    cancel-and-wait at close, which would hang the run), with a bound on the wait."""
    yield
    current = asyncio.current_task()
    stray = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in stray:
        task.cancel()
    if stray:
        _, pending = await asyncio.wait(stray, timeout=5)
        for task in pending:
            print(f"task ignored cancellation: {task!r}", file=sys.stderr)


@pytest.fixture(scope="session")
def model_repo() -> Path:
    return dev_model_repository()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), tendis_compat=True)
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session")
async def app(
    tmp_path_factory: pytest.TempPathFactory, model_repo: Path, redis_server: EmbeddedRedis
) -> AsyncIterator[Application]:
    application = Application(make_settings(tmp_path_factory.mktemp("data"), model_repo, redis_server.url))
    await application.start()
    yield application
    await application.stop(grace_s=0)


@pytest_asyncio.fixture(scope="session")
async def stubs(app: Application) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{app.port}",
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        yield Stubs(channel)


#: The vector engines the engine-dependent tests run on.
ENGINES = ["lite", "standalone"]


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusStandalone]:
    """One Milvus 2.3 standalone server for the whole session (the binary is unpacked once under .cache/)."""
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone"), bin_dir=ROOT / ".cache" / "milvus-bin")
    try:
        server.start()
    except StandaloneUnavailable as e:
        pytest.skip(f"no Milvus server: {e} (scripts/setup.sh installs it)")
    yield server
    server.stop()


@pytest.fixture(scope="session", params=ENGINES)
def milvus_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Milvus Lite file (a fresh one per call site's session) or the session's Milvus server."""
    if request.param == "lite":
        return str(tmp_path_factory.mktemp("lite") / "milvus.db")
    return request.getfixturevalue("milvus_server").uri


@pytest_asyncio.fixture(scope="session")
async def standalone_app(
    tmp_path_factory: pytest.TempPathFactory, model_repo: Path, redis_server: EmbeddedRedis,
    milvus_server: MilvusStandalone,
) -> AsyncIterator[Application]:  # fmt: skip
    """The same server as `app`, on the Milvus server (its own metadata prefix and collections)."""
    settings = make_settings(
        tmp_path_factory.mktemp("data-standalone"), model_repo, redis_server.url, milvus_uri=milvus_server.uri,
        redis_key_prefix="acg2vec-standalone:v1", milvus_collection="acg2vec_standalone",
    )  # fmt: skip
    application = Application(settings)
    await application.start()
    yield application
    await application.stop(grace_s=0)


@pytest_asyncio.fixture(scope="session")
async def standalone_stubs(standalone_app: Application) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{standalone_app.port}") as channel:
        yield Stubs(channel)


@pytest.fixture(scope="session", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def engine_app(request: pytest.FixtureRequest, engine: str) -> Application:
    """`app` on Milvus Lite, then the same on the Milvus server."""
    return request.getfixturevalue("app" if engine == "lite" else "standalone_app")


@pytest.fixture
def engine_stubs(request: pytest.FixtureRequest, engine: str) -> Stubs:
    return request.getfixturevalue("stubs" if engine == "lite" else "standalone_stubs")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="session")
async def secure_server(
    tmp_path_factory: pytest.TempPathFactory, model_repo: Path, redis_server: EmbeddedRedis, pki: Pki
) -> AsyncIterator[SecureServer]:
    """Mutual TLS on the gRPC port (clients present pki.client_cert), token auth (reader: read, writer: write,
    admin: read,write as a plain token, ops: read from the env-style setting), access log on, and a plaintext
    health-only port."""
    data = tmp_path_factory.mktemp("secure-data")
    tokens = {name: make_token() for name in ("reader", "writer", "admin", "ops")}
    tokens_file = data / "tokens"
    tokens_file.write_text(
        "# name scopes token (sha256:<hex> or plain)\n"
        f"reader read {hash_token(tokens['reader'])}\n"
        f"writer write {hash_token(tokens['writer'])}\n"
        f"admin read,write {tokens['admin']}\n"
    )
    settings = make_settings(
        data, model_repo, redis_server.url,
        auth="token", auth_tokens_file=tokens_file, auth_tokens=f"ops read {hash_token(tokens['ops'])}",
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca,
        health_listen="127.0.0.1:0",
        access_log=True, redis_key_prefix="acg2vec-secure:v1", milvus_collection="acg2vec_secure",
        health_probe_interval_s=5,  # lives for the rest of the session: probe rarely, no outages tested here
    )  # fmt: skip
    application = Application(settings)
    await application.start()
    yield SecureServer(application, pki, tokens, tokens_file)
    await application.stop(grace_s=0)
