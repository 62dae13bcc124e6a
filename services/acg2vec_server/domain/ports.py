"""The interfaces the domain needs from its backends, declared once; adapters in `backends/` implement them.

InferenceBackend (TF-Serving semantics: model, version, signature, named tensors), VectorStore (Milvus) and
MetadataStore (a Redis-protocol server). Plain types and Protocols only: nothing here imports a backend's library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from acg2vec_server.domain.types import IllustrationRecord, SearchFilter, Space, VectorHit, VectorRow


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # numpy dtype name: float32, int32, int64, object (strings)
    shape: tuple[int, ...]  # -1 for unknown dimensions


@dataclass(frozen=True)
class SignatureInfo:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: int
    signatures: dict[str, SignatureInfo] = field(default_factory=dict)

    def output_dim(self, output: str, signature: str = "serving_default") -> int:
        """Size of the last axis of an output (e.g. the embedding dimension)."""
        return self.signatures[signature].outputs[output].shape[-1]


class InferenceBackend(Protocol):
    """Runs SavedModels of a TF-Serving model repository, in-process or remotely."""

    name: str

    async def describe(self, model: str) -> ModelDescription:
        """Version and signatures of the model's newest version; ModelNotInstalled if absent."""
        ...

    async def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default"
    ) -> tuple[dict[str, np.ndarray], int]:
        """Runs a signature; returns its outputs and the model version that answered."""
        ...

    async def ping(self) -> None:
        """Raises BackendUnavailable when the backend cannot answer."""
        ...

    async def close(self) -> None: ...


class ModelNotInstalled(Exception):
    """The model repository has no (loadable) version of this model."""

    def __init__(self, model: str, hint: str):
        super().__init__(f"model '{model}' is not installed: {hint}")
        self.model = model


class InferenceInputError(Exception):
    """The model refused the input (e.g. an image its decoder cannot read)."""


#: Milvus' limit on offset + limit of one search: the deepest result a search can reach.
MAX_WINDOW = 16384


class VectorStore(Protocol):
    """Illustration vectors (image and text space) with their filter fields; one collection per model pair."""

    #: (image, text) dimensions once the collection is ready, else None.
    dims: tuple[int, int] | None

    async def ensure_collection(self, image_dim: int, text_dim: int) -> None: ...
    async def upsert(self, rows: list[VectorRow]) -> None: ...
    async def delete(self, ids: list[str]) -> None: ...
    async def search(
        self, space: Space, vector: np.ndarray, limit: int, offset: int, flt: SearchFilter, exclude_id: str = ""
    ) -> list[VectorHit]: ...
    async def get_vectors(self, ids: list[str], space: Space) -> dict[str, np.ndarray]: ...
    async def count(self) -> int: ...
    async def ids(self) -> set[str]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class MetadataStore(Protocol):
    """Illustration records, the set of ids whose two-store write has not finished (the repair work list), and a
    per-id lease with a fencing token (several server processes share the store)."""

    async def get(self, id: str) -> IllustrationRecord | None:
        """The record; one that cannot be decoded comes back with state "damaged", never as an error."""
        ...

    async def get_many(self, ids: list[str]) -> dict[str, IllustrationRecord]: ...
    async def put(self, record: IllustrationRecord) -> None:
        """Stores the whole record in one command: a record is never half-written."""
        ...

    async def put_many(self, records: list[IllustrationRecord]) -> None: ...
    async def delete(self, id: str) -> None: ...
    async def acquire(self, id: str, token: str, ttl_ms: int) -> int | None:
        """Takes the id's lease for `token` for ttl_ms unless someone holds it; returns a fencing token greater
        than every earlier one of this id, or None."""
        ...

    async def holds(self, id: str, token: str, fence: int) -> bool:
        """`token` still holds the lease and no later holder (greater fence) has stored the record."""
        ...

    async def release(self, id: str, token: str) -> None: ...
    async def add_pending(self, id: str) -> None: ...
    async def remove_pending(self, id: str) -> None: ...
    async def pending(self) -> list[str]: ...
    async def count(self) -> int: ...
    async def ids(self) -> set[str]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...
