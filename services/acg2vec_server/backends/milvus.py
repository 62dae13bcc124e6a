"""Vector store: illustration vectors in Milvus through pymilvus' MilvusClient.

A file path as URI means Milvus Lite (embedded, one process holds it); http://host:19530 a Milvus server or cluster
(the standalone server of backends/milvus_standalone.py, Milvus 2.3, or a cluster >= 2.4). One collection per vector
space (image, text) and model version, `<base>_<space>_<model>_v<version>`, each with the id and the filterable
fields (rating, tags, custom fields) so that filters apply inside the ANN search; one vector field per collection,
which Milvus 2.3 requires. The alias `<base>_<space>` names the live collection of a space; a new model version
fills its own collections and becomes live by one alias change (`acg2vec collections switch`), so vectors of two
versions never meet in one collection or one search. Cosine metric on L2-normalised vectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from acg2vec_server.domain.errors import BackendUnavailable, FailedPrecondition
from acg2vec_server.domain.ports import CollectionInfo, VectorStore
from acg2vec_server.domain.types import RATINGS, ModelRef, SearchFilter, Space, VectorHit, VectorRow
from acg2vec_server.telemetry.backend_calls import instrumented

log = logging.getLogger(__name__)

MAX_TAGS = 256
MAX_TAG_CHARS = 256
SPACES: tuple[Space, Space] = ("image", "text")
#: Retry a lost connection within a second, not after gRPC's exponential backoff (up to minutes): a restarted
#: Milvus is used again as soon as it answers.
RECONNECT = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 1000}
CALL_RETRIES = 2
#: Longest wait for a connection to a Milvus server (the client is made again after a failure).
CONNECT_TIMEOUT_S = 3.0
#: Read-your-writes for this process's own writes (pymilvus tracks their timestamps), without the wait for the
#: newest time tick that Strong costs on every search.
CONSISTENCY = "Session"
#: Milvus 2.3 answers a delete without its timestamp, so Session reads do not see it yet: reads this soon after a
#: delete of this process ask for Strong consistency instead.
STRONG_AFTER_DELETE_S = 2.0


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def collection_name(base: str, space: Space, model: ModelRef) -> str:
    """The collection of `space` vectors embedded by `model` (name and version are part of the name)."""
    return f"{base}_{space}_{_safe(model.name)}_v{model.version}"


def alias_name(base: str, space: Space) -> str:
    return f"{base}_{space}"


def parse_collection(base: str, name: str) -> tuple[Space, str, int] | None:
    """(space, model name as written in the name, version) of one of this base's collections, else None."""
    m = re.fullmatch(re.escape(base) + r"_(image|text)_(\w+)_v(\d+)", name)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None  # type: ignore[return-value]


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
        concurrency: int = 8,
    ):
        self.uri = uri
        self.base = collection
        self.token = token
        self.index_type = index_type
        self.hnsw = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
        self.ef_search = hnsw_ef_search
        self.ivf_nlist, self.ivf_nprobe = ivf_nlist, ivf_nprobe
        self.timeout_s = timeout_s
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        # Milvus Lite is one embedded engine: one thread. A server answers concurrent calls on one gRPC channel, so
        # searches are not serialised behind each other (a bounded pool: `milvus_concurrency`).
        self.concurrency = 1 if self.is_lite else max(1, concurrency)
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="milvus")
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._connect_failed_at = -CONNECT_TIMEOUT_S
        #: Per data call: its deadline, and few retries of pymilvus' own (75 by default, with backoff: a Milvus that
        #: went away would hold each call for many seconds; our clients retry on UNAVAILABLE with RetryInfo).
        self._calls: dict[str, Any] = {"timeout": timeout_s, "retry_times": CALL_RETRIES}
        self.dims: tuple[int, int] | None = None
        #: Why the collections are not bound (set by the domain when its check failed), for FAILED_PRECONDITION.
        self.unready_reason = ""
        self._unreachable = False
        self._reload = False
        self.bound: dict[Space, ModelRef] = {}
        self._names: dict[Space, str] = {}
        self._known: set[str] = set()
        self._aliases_seen: set[str] = set()  # collections seen to exist (created or described), with their index type
        self.active_index_type = index_type
        self._deleted_at = -STRONG_AFTER_DELETE_S
        self._upserts: list[tuple[list[VectorRow], asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    # -- plumbing
    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from pymilvus import MilvusClient

                if self.is_lite:
                    Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                # A short wait for the connection, and none for the calls that queue behind a failed attempt: a
                # Milvus that is down answers UNAVAILABLE in seconds (the health probe tries again soon).
                if time.monotonic() - self._connect_failed_at < CONNECT_TIMEOUT_S:
                    raise ConnectionError("a connection attempt failed a moment ago")
                try:
                    self._client = MilvusClient(
                        uri=self.uri, token=self.token, timeout=min(self.timeout_s, CONNECT_TIMEOUT_S),
                        grpc_options=RECONNECT,
                    )  # fmt: skip
                except Exception:
                    self._connect_failed_at = time.monotonic()
                    raise
            return self._client

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            try:
                client = self._connect()
                result = fn(client, *args, **kwargs)
            except (FailedPrecondition, BackendUnavailable):
                raise
            except Exception as e:  # pymilvus raises MilvusException and grpc errors for connection failures
                self._unreachable = self._reload = True
                self._known.clear()
                self._drop_client(self._client)
                raise BackendUnavailable(
                    self.name, f"vector store (Milvus) at {self.uri} failed: {e}; retry later"
                ) from None
            self._unreachable = False
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _drop_client(self, client: Any) -> None:
        if self.is_lite or client is None:
            return
        with self._client_lock:
            if self._client is not client:
                return  # another thread replaced it already
            self._client = None
        with contextlib.suppress(Exception):  # best effort on a broken connection
            client.close()

    # -- schema
    def _create(self, client: Any, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("rating", DataType.INT8)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS, max_length=MAX_TAG_CHARS
        )
        schema.add_field("fields", DataType.JSON)
        index = client.prepare_index_params()
        index.add_index("vector", index_type=self.index_type, metric_type="COSINE", params=self.index_params())
        client.create_collection(name, schema=schema, index_params=index, consistency_level=CONSISTENCY)
        log.info("created Milvus collection %s (%s, dim %d)", name, self.index_type, dim)

    def _ensure(self, client: Any, space: Space, model: ModelRef, dim: int) -> str:
        name = collection_name(self.base, space, model)
        if client.has_collection(name):
            fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
            have = int(fields["vector"]["params"]["dim"])
            if have != dim:
                raise FailedPrecondition(
                    f"collection '{name}' holds {space} vectors of dimension {have} but {model.name} version "
                    f"{model.version} gives {dim}: a model changed without a new version number; install it as a new "
                    f"version (or drop the collection with `acg2vec collections drop {space} {model.version}` and "
                    "re-index)"
                )
        else:
            self._create(client, name, dim)
        existing = client.describe_index(name, "vector").get("index_type")
        if existing and existing != self.index_type and name not in self._known:
            log.warning(
                "collection %s has a %s index, not the configured %s; the existing index stays (drop and rebuild "
                "it, or re-index into a new ACG2VEC_MILVUS_COLLECTION, to change it)", name, existing, self.index_type,
            )  # fmt: skip
        self.active_index_type = existing or self.index_type
        client.load_collection(name)
        self._known.add(name)
        return name

    def index_params(self) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return dict(self.hnsw)
        if self.index_type.startswith("IVF"):
            return {"nlist": self.ivf_nlist}
        return {}

    def _alias_target(self, client: Any, alias: str) -> str | None:
        """The collection an alias names, None if there is no such alias. An alias seen before is described (one
        call, every health probe); otherwise each of this deployment's collections is asked for its aliases, because
        describe_alias answers a missing alias with an error that pymilvus logs on stderr."""
        if alias in self._aliases_seen:
            with contextlib.suppress(Exception):  # dropped meanwhile: look again below
                target = client.describe_alias(alias).get("collection_name")
                if target:
                    return target
            self._aliases_seen.discard(alias)
        for name in client.list_collections():
            if parse_collection(self.base, name) is not None and alias in client.list_aliases(name)["aliases"]:
                self._aliases_seen.add(alias)
                return name
        return None

    def _live(self, client: Any, space: Space, model_name: str) -> ModelRef | None:
        alias = alias_name(self.base, space)
        target = self._alias_target(client, alias)
        if target is None:
            return None
        parsed = parse_collection(self.base, target)
        if parsed is None:
            raise FailedPrecondition(
                f"the Milvus alias {alias} points at {target!r}, which is not an acg2vec collection of this "
                f"deployment; point it at one (`acg2vec collections switch`) or drop the alias"
            )
        _, name, version = parsed
        return ModelRef(model_name if name == _safe(model_name) else name, version)

    async def live(self, space: Space, model_name: str) -> ModelRef | None:
        return await self._run(self._live, space, model_name)

    async def bind(self, image: ModelRef, image_dim: int, text: ModelRef, text_dim: int) -> None:
        if self.bound == {"image": image, "text": text} and self.dims == (image_dim, text_dim) and not self._reload:
            return
        self._reload = False  # a call failed since the last bind: Milvus may have restarted, its collections released
        names = {
            "image": await self._run(self._ensure, "image", image, image_dim),
            "text": await self._run(self._ensure, "text", text, text_dim),
        }
        self._names, self.bound, self.dims = names, {"image": image, "text": text}, (image_dim, text_dim)

    async def set_live(self, space: Space, model: ModelRef) -> None:
        def switch(client: Any) -> None:
            name, alias = collection_name(self.base, space, model), alias_name(self.base, space)
            if not client.has_collection(name):
                raise FailedPrecondition(f"there is no collection {name} to make live; index into it first")
            current = self._alias_target(client, alias)
            if current is None:
                client.create_alias(name, alias)
            elif current != name:
                client.alter_alias(name, alias)
            log.info("alias %s -> %s (was %s)", alias, name, current)

        await self._run(switch)

    async def collections(self) -> list[CollectionInfo]:
        def listing(client: Any) -> list[CollectionInfo]:
            live = {space: self._alias_target(client, alias_name(self.base, space)) for space in SPACES}
            found = []
            for name in sorted(client.list_collections()):
                parsed = parse_collection(self.base, name)
                if parsed is None:
                    continue
                space, model_name, version = parsed
                fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
                client.load_collection(name)
                rows = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
                found.append(
                    CollectionInfo(
                        name,
                        space,
                        ModelRef(model_name, version),
                        int(fields["vector"]["params"]["dim"]),
                        int(rows[0]["count(*)"]),
                        live.get(space) == name,
                    )
                )
            return found

        return await self._run(listing)

    async def drop(self, space: Space, model: ModelRef) -> None:
        def drop(client: Any) -> None:
            name, alias = collection_name(self.base, space, model), alias_name(self.base, space)
            if self._alias_target(client, alias) == name:
                raise FailedPrecondition(f"{name} is the live {space} collection; switch to another one first")
            client.drop_collection(name)
            self._known.discard(name)

        await self._run(drop)

    def require(self) -> None:
        """Raises unless the collections are bound and Milvus answered the last call: UNAVAILABLE while it is
        unreachable (at once, before any inference; the health probe's ping finds it back), else
        FAILED_PRECONDITION."""
        if self._unreachable:  # down at start or since: UNAVAILABLE, as any outage
            raise BackendUnavailable(self.name, f"vector store (Milvus) at {self.uri} is unreachable; retry later")
        if self.dims is not None:
            return
        reason = "the vector collections are not ready: models are missing or still loading; retry later"
        raise FailedPrecondition(self.unready_reason or reason)

    # -- data
    async def upsert(self, rows: list[VectorRow]) -> None:
        self.require()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._upserts.append((rows, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_upserts())
        await future

    def _upsert_rows(self, client: Any, rows: list[VectorRow]) -> None:
        """Each row's image and text vector into the collections of the versions that embedded them."""
        per_collection: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            common = {
                "id": r.id,
                "rating": RATINGS.index(r.rating) + 1 if r.rating in RATINGS else 0,
                "tags": [t[:MAX_TAG_CHARS] for t in r.tags[:MAX_TAGS]],
                "fields": json.loads(json.dumps(r.fields)),
            }
            parts = (("image", r.image_vector, r.image_model), ("text", r.text_vector, r.text_model))
            for space, vector, model in parts:
                name = collection_name(self.base, space, model)  # type: ignore[arg-type]
                row = {**common, "vector": np.asarray(vector, np.float32).tolist()}
                per_collection.setdefault(name, []).append(row)
        for name, data in per_collection.items():
            if name not in self._known:
                if not client.has_collection(name):  # a version nobody serves any more (dropped): nothing to keep
                    log.warning("no collection %s: %d rows of that model version are not stored", name, len(data))
                    continue
                client.load_collection(name)
                self._known.add(name)
            client.upsert(name, data, **self._calls)

    async def _drain_upserts(self) -> None:
        """Coalesces concurrent upserts (e.g. the items of one indexing batch) into one Milvus call per collection:
        what arrives while a call runs goes out together in the next."""
        while self._upserts:
            waiting, self._upserts = self._upserts, []
            merged = list({row.id: row for rows, _ in waiting for row in rows}.values())  # the later write wins
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
        """Removes the ids from every collection of this deployment (every model version: none keeps a stale row)."""
        self.require()

        def delete(client: Any) -> None:
            names = set(self._names.values()) | self._known
            names |= {n for n in client.list_collections() if parse_collection(self.base, n) is not None}
            for name in sorted(names):
                if name not in self._known:
                    client.load_collection(name)
                    self._known.add(name)
                client.delete(name, ids=ids, **self._calls)
            self._deleted_at = time.monotonic()

        await self._run(delete)

    def _reads(self) -> dict[str, Any]:
        """Consistency of a read: the collection's (Session) unless this process deleted rows a moment ago."""
        if time.monotonic() - self._deleted_at < STRONG_AFTER_DELETE_S:
            return {"consistency_level": "Strong"}
        return {}

    async def search(
        self, space: Space, vector: np.ndarray, limit: int, offset: int, flt: SearchFilter, exclude_id: str = ""
    ) -> list[VectorHit]:
        self.require()
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if self.active_index_type == "HNSW":
            params["params"] = {"ef": max(self.ef_search, limit + offset)}
        elif self.active_index_type.startswith("IVF"):
            params["params"] = {"nprobe": self.ivf_nprobe}
        name = self._names[space]
        result = await self._run(
            lambda c: c.search(
                name,
                data=[np.asarray(vector, np.float32).tolist()],
                anns_field="vector",
                limit=limit,
                offset=offset,
                filter=filter_expression(flt, exclude_id),
                output_fields=["id"],
                search_params=params,
                **self._reads(),
                **self._calls,
            )
        )
        return [VectorHit(hit["id"], float(hit["distance"])) for hit in result[0]]

    async def get_vectors(self, ids: list[str], space: Space) -> dict[str, np.ndarray]:
        self.require()
        if not ids:
            return {}
        name = self._names[space]
        rows = await self._run(lambda c: c.get(name, ids=ids, output_fields=["vector"], **self._reads(), **self._calls))
        return {row["id"]: np.asarray(row["vector"], np.float32) for row in rows}

    async def count(self) -> int:
        """Rows of the bound image collection (every illustration has one row per space)."""
        self.require()
        name = self._names["image"]
        options = {**self._reads(), **self._calls}
        rows = await self._run(lambda c: c.query(name, filter="", output_fields=["count(*)"], **options))
        return int(rows[0]["count(*)"])

    async def ids(self, space: Space = "image", model: ModelRef | None = None) -> set[str]:
        """Every id stored in the bound collection of `space` (or that version's); for the full repair pass and the
        switch check, not hot paths."""
        if model is None:
            self.require()
        name = self._names[space] if model is None else collection_name(self.base, space, model)

        def scan(client: Any) -> set[str]:
            found: set[str] = set()
            if name not in self._known:
                if not client.has_collection(name):
                    return found
                client.load_collection(name)
                self._known.add(name)
            iterator = client.query_iterator(name, batch_size=4096, output_fields=["id"])
            try:
                while batch := iterator.next():
                    found.update(row["id"] for row in batch)
            finally:
                iterator.close()
            return found

        return await self._run(scan)

    async def ping(self) -> None:
        await self._run(lambda c: c.has_collection(self._names.get("image", self.base), **self._calls))

    async def close(self) -> None:
        def shut() -> None:
            with self._client_lock:
                client, self._client = self._client, None
            if client is not None:
                client.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)
