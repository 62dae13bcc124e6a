"""A real acg2vec server over a given model repository, for tests that serve models they imported or trained."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from acg2vec_server.app import Application
from tests.conftest import Stubs, make_settings


@contextlib.asynccontextmanager
async def serving(repository: Path, data_dir: Path, redis_url: str, prefix: str) -> AsyncIterator[Stubs]:
    """The server on a free port with the in-process backend over `repository`; yields stubs on a channel to it."""
    settings = make_settings(data_dir, repository, redis_url, redis_key_prefix=prefix, inference_timeout_s=60)
    app = Application(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield Stubs(channel)
    finally:
        await app.stop(grace_s=0)
