"""Vector store: illustration vectors in Milvus through pymilvus' MilvusClient.

A file path as URI means Milvus Lite (embedded, one process holds it); http://host:19530 a Milvus
server or cluster. One collection holds, per illustration, the illust2vec image vector, the text vector
of its tags, and the filterable fields (rating, tags, custom fields) so that filters apply inside the
ANN search rather than after it. Cosine metric on L2-normalised vectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from acg2vec_server.domain.errors import BackendUnavailable, FailedPrecondition
from acg2vec_server.domain.ports import VectorStore
from acg2vec_server.domain.types import RATINGS, SearchFilter, Space, VectorHit, VectorRow
from acg2vec_server.telemetry.backend_calls import instrumented

log = logging.getLogger(__name__)

MAX_TAGS = 256
MAX_TAG_CHARS = 256
#: Retry a lost connection within a second, not after gRPC's exponential backoff (up to minutes): a restarted
#: Milvus is used again as soon as it answers.
RECONNECT = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 1000}


def _literal(value: str) -> str:
    """A Milvus string literal (Milvus Lite has no filter templating, so values are escaped here)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def filter_expression(flt: SearchFilter, exclude_id: str = "") -> str:
    """Milvus boolean expression for a SearchFilter; every user value goes through _literal."""
    parts: list[str] = []
    if flt.ratings:
        parts.append(f"rating in [{', '.join(str(RATINGS.index(r) + 1) for r in flt.ratings)}]")
    if flt.required_tags:
        parts.append(f"array_contains_all(tags, [{', '.join(_literal(t) for t in flt.required_tags)}])")
    if flt.excluded_tags:
        parts.append(f"not array_contains_any(tags, [{', '.join(_literal(t) for t in flt.excluded_tags)}])")
    for key, value in sorted(flt.fields.items()):
        parts.append(f"fields[{_literal(key)}] == {_literal(value)}")
    if exclude_id:
        parts.append(f"id != {_literal(exclude_id)}")
    return " and ".join(parts)


@instrumented("milvus", VectorStore)
class MilvusVectorStore:
    name = "vectors"

    def __init__(
        self,
        uri: str,
        collection: str,
        token: str = "",
        index_type: str = "HNSW",
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        hnsw_ef_search: int = 128,
        timeout_s: float = 10.0,
        ivf_nlist: int = 1024,
        ivf_nprobe: int = 32,
    ):
        self.uri = uri
        self.collection = collection
        self.token = token
        self.index_type = index_type
        self.hnsw = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
        self.ef_search = hnsw_ef_search
        self.ivf_nlist, self.ivf_nprobe = ivf_nlist, ivf_nprobe
        self.timeout_s = timeout_s
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        # One thread: Milvus Lite is one embedded engine; a server client is cheap to serialise too.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        self._client: Any = None
        self.dims: tuple[int, int] | None = None
        self.active_index_type = index_type
        self._upserts: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    # -- plumbing
    def _connect(self) -> Any:
        if self._client is None:
            from pymilvus import MilvusClient

            if self.is_lite:
                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            self._client = MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout_s, grpc_options=RECONNECT)
        return self._client

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            try:
                return fn(self._connect(), *args, **kwargs)
            except (FailedPrecondition, BackendUnavailable):
                raise
            except Exception as e:  # pymilvus raises MilvusException and grpc errors for connection failures
                self._drop_client()
                raise BackendUnavailable(
                    self.name, f"vector store (Milvus) at {self.uri} failed: {e}; retry later"
                ) from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _drop_client(self) -> None:
        if self._client is not None and not self.is_lite:
            with contextlib.suppress(Exception):  # best effort on a broken connection
                self._client.close()
            self._client = None

    # -- schema
    def _ensure(self, client: Any, image_dim: int, text_dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        if client.has_collection(self.collection):
            fields = {f["name"]: f for f in client.describe_collection(self.collection)["fields"]}
            have = (int(fields["image_vector"]["params"]["dim"]), int(fields["text_vector"]["params"]["dim"]))
            if have != (image_dim, text_dim):
                raise FailedPrecondition(
                    f"collection '{self.collection}' holds vectors of dimensions {have} but the models give "
                    f"{(image_dim, text_dim)}; set ACG2VEC_MILVUS_COLLECTION to a new name and re-index "
                    "(`acg2vec index`), or reinstall the models the collection was built with"
                )
        else:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
            schema.add_field("image_vector", DataType.FLOAT_VECTOR, dim=image_dim)
            schema.add_field("text_vector", DataType.FLOAT_VECTOR, dim=text_dim)
            schema.add_field("rating", DataType.INT8)
            schema.add_field(
                "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS, max_length=MAX_TAG_CHARS
            )
            schema.add_field("fields", DataType.JSON)
            index = client.prepare_index_params()
            params = self.index_params()
            for field_name in ("image_vector", "text_vector"):
                index.add_index(field_name, index_type=self.index_type, metric_type="COSINE", params=params)
            client.create_collection(self.collection, schema=schema, index_params=index)
            log.info(
                "created Milvus collection %s (%s, dims %d/%d)", self.collection, self.index_type, image_dim, text_dim
            )
        existing = client.describe_index(self.collection, "image_vector").get("index_type")
        if existing and existing != self.index_type:
            log.warning(
                "collection %s has a %s index, not the configured %s; the existing index stays (drop and "
                "rebuild it, or index into a new ACG2VEC_MILVUS_COLLECTION, to change it)",
                self.collection, existing, self.index_type,
            )  # fmt: skip
        self.active_index_type = existing or self.index_type
        client.load_collection(self.collection)
        self.dims = (image_dim, text_dim)

    def index_params(self) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return dict(self.hnsw)
        if self.index_type.startswith("IVF"):
            return {"nlist": self.ivf_nlist}
        return {}

    async def ensure_collection(self, image_dim: int, text_dim: int) -> None:
        await self._run(self._ensure, image_dim, text_dim)

    def _require(self) -> None:
        if self.dims is None:
            raise FailedPrecondition(
                "the vector collection is not ready: models are missing or still loading; retry later"
            )

    # -- data
    async def upsert(self, rows: list[VectorRow]) -> None:
        self._require()
        data = [
            {
                "id": r.id,
                "image_vector": np.asarray(r.image_vector, np.float32).tolist(),
                "text_vector": np.asarray(r.text_vector, np.float32).tolist(),
                "rating": RATINGS.index(r.rating) + 1 if r.rating in RATINGS else 0,
                "tags": [t[:MAX_TAG_CHARS] for t in r.tags[:MAX_TAGS]],
                "fields": json.loads(json.dumps(r.fields)),
            }
            for r in rows
        ]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._upserts.append((data, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_upserts())
        await future

    def _upsert_rows(self, client: Any, rows: list[dict[str, Any]]) -> None:
        client.upsert(self.collection, rows)

    async def _drain_upserts(self) -> None:
        """Coalesces concurrent upserts (e.g. the items of one indexing batch) into one Milvus call: what
        arrives while a call runs goes out together in the next."""
        while self._upserts:
            waiting, self._upserts = self._upserts, []
            merged = list({row["id"]: row for data, _ in waiting for row in data}.values())  # the later write wins
            try:
                await self._run(self._upsert_rows, merged)
            except Exception as e:
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(e)
            else:
                for _, future in waiting:
                    if not future.done():
                        future.set_result(None)

    async def delete(self, ids: list[str]) -> None:
        self._require()
        await self._run(lambda c: c.delete(self.collection, ids=ids))

    async def search(
        self, space: Space, vector: np.ndarray, limit: int, offset: int, flt: SearchFilter, exclude_id: str = ""
    ) -> list[VectorHit]:
        self._require()
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if self.active_index_type == "HNSW":
            params["params"] = {"ef": max(self.ef_search, limit + offset)}
        elif self.active_index_type.startswith("IVF"):
            params["params"] = {"nprobe": self.ivf_nprobe}
        result = await self._run(
            lambda c: c.search(
                self.collection,
                data=[np.asarray(vector, np.float32).tolist()],
                anns_field=f"{space}_vector",
                limit=limit,
                offset=offset,
                filter=filter_expression(flt, exclude_id),
                output_fields=["id"],
                search_params=params,
            )
        )
        return [VectorHit(hit["id"], float(hit["distance"])) for hit in result[0]]

    async def get_vectors(self, ids: list[str], space: Space) -> dict[str, np.ndarray]:
        self._require()
        if not ids:
            return {}
        field_name = f"{space}_vector"
        rows = await self._run(lambda c: c.get(self.collection, ids=ids, output_fields=[field_name]))
        return {row["id"]: np.asarray(row[field_name], np.float32) for row in rows}

    async def count(self) -> int:
        self._require()
        rows = await self._run(lambda c: c.query(self.collection, filter="", output_fields=["count(*)"]))
        return int(rows[0]["count(*)"])

    async def ids(self) -> set[str]:
        """Every stored id (a query iterator; for the full repair pass, not hot paths)."""
        self._require()

        def scan(client: Any) -> set[str]:
            found: set[str] = set()
            iterator = client.query_iterator(self.collection, batch_size=4096, output_fields=["id"])
            try:
                while batch := iterator.next():
                    found.update(row["id"] for row in batch)
            finally:
                iterator.close()
            return found

        return await self._run(scan)

    async def ping(self) -> None:
        await self._run(lambda c: c.has_collection(self.collection))

    async def close(self) -> None:
        def shut() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)
