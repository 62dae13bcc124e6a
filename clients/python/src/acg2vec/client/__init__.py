"""Typed sync and asyncio clients for the acg2vec.v1 gRPC services.

The clients only build request messages and return the generated response messages, so everything in
acg2vec.v1 stays the single source of truth; errors are plain grpc.RpcError with canonical status codes
(`retry_delay(error)` reads the server's google.rpc.RetryInfo).

    from acg2vec.client import Acg2vecClient

    with Acg2vecClient("localhost:50051", token="...") as client:
        tags = client.tag_image(open("illust.jpg", "rb").read(), top_k=20).result.tags
"""

from acg2vec.client._aio import AsyncAcg2vecClient
from acg2vec.client._config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    SERVICE_NAMES,
    RetryPolicy,
)
from acg2vec.client._requests import (
    IndexStreamItem,
    MetadataLike,
    RatingLike,
    SpaceLike,
    TagStreamItem,
    search_request,
    tag_options,
)
from acg2vec.client._retry import retry_delay
from acg2vec.client._sync import Acg2vecClient

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "SERVICE_NAMES",
    "Acg2vecClient",
    "AsyncAcg2vecClient",
    "IndexStreamItem",
    "MetadataLike",
    "RatingLike",
    "RetryPolicy",
    "SpaceLike",
    "TagStreamItem",
    "retry_delay",
    "search_request",
    "tag_options",
]
