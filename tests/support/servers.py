"""acg2vec servers in the test process: the settings every test server starts from, generated stubs on a channel,
the secured server the fixtures start (tests/conftest.py), and a server over a given model repository, for tests
that serve models they imported or trained."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from acg2vec.v1 import image_feature_pb2_grpc, search_pb2_grpc, tagging_pb2_grpc, text_feature_pb2_grpc
from acg2vec_server.app import Application
from acg2vec_server.settings import Settings
from tests.support.pki import Pki


def make_settings(data_dir: Path, model_repo: Path, redis_url: str, **overrides: object) -> Settings:
    defaults: dict[str, object] = dict(
        listen="127.0.0.1:0",
        auth="none",  # local mode, explicitly (loopback only); the secured fixtures turn tokens on
        metrics_port=0,
        data_dir=data_dir,
        model_repository=model_repo,
        redis_url=redis_url,
        milvus_index_type="FLAT",
        access_log=False,
        health_probe_interval_s=0.3,
        grace_period_s=2,
        max_image_pixels=4_000_000,
        max_image_bytes=2_000_000,
        max_batch_size=8,
        max_top_k=100,
        max_text_chars=500,
    )
    return Settings(**(defaults | overrides))


class Stubs:
    def __init__(self, channel: grpc.aio.Channel):
        self.channel = channel
        self.tagging = tagging_pb2_grpc.TaggingServiceStub(channel)
        self.image = image_feature_pb2_grpc.ImageFeatureServiceStub(channel)
        self.text = text_feature_pb2_grpc.TextFeatureServiceStub(channel)
        self.search = search_pb2_grpc.SearchServiceStub(channel)


@dataclass(frozen=True)
class SecureServer:
    app: Application
    pki: Pki
    tokens: dict[str, str]  # token name -> the token a client sends
    tokens_file: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def health_target(self) -> str:
        return f"127.0.0.1:{self.app.health_port}"


@contextlib.asynccontextmanager
async def serving(
    repository: Path, data_dir: Path, redis_url: str, prefix: str, **overrides: object
) -> AsyncIterator[Stubs]:
    """The server on a free port with the in-process backend over `repository` (and any other settings); yields
    stubs on a channel to it."""
    settings = make_settings(
        data_dir, repository, redis_url, **{"redis_key_prefix": prefix, "inference_timeout_s": 60, **overrides}
    )
    app = Application(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield Stubs(channel)
    finally:
        await app.stop(grace_s=0)
