"""The interfaces the domain needs from its backends, declared once; adapters in `backends/` implement them.

InferenceBackend (TF-Serving semantics: model, version, signature, named tensors), VectorStore (Milvus) and
MetadataStore (a Redis-protocol server). Plain types and Protocols only: nothing here imports a backend's library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from acg2vec_server.domain.types import IllustrationRecord, ModelRef, SearchFilter, Space, VectorHit, VectorRow


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


def split_model(model: str) -> tuple[str, int | None]:
    """`name@version` (a model pinned to one version, e.g. the one the live vector collection was embedded with)
    -> (name, version); a plain name -> (name, None): the newest version."""
    name, at, version = model.partition("@")
    return (name, int(version)) if at and version.isdigit() else (model, None)


class InferenceBackend(Protocol):
    """Runs SavedModels of a TF-Serving model repository, in-process or remotely. A model is named `name` (its
    newest version) or `name@version` (that version only)."""

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


@dataclass(frozen=True)
class CollectionInfo:
    """One vector collection: the space and the model version whose vectors it holds, and whether it is live."""

    name: str
    space: Space
    model: ModelRef
    dim: int
    rows: int
    live: bool


class VectorStore(Protocol):
    """Illustration vectors with their filter fields: one collection per vector space (image, text) and model
    version, the live one per space reached through an alias. A store serves (`bind`) one model version per space;
    a row's vectors go to the collections of the versions that embedded them, never to another version's."""

    #: (image, text) dimensions of the bound collections once ready, else None.
    dims: tuple[int, int] | None
    #: The model versions bound per space (what searches read), once ready.
    bound: dict[Space, ModelRef]
    #: Why the collections are not bound, when the domain's check refused them (the FAILED_PRECONDITION message).
    unready_reason: str

    async def live(self, space: Space, model_name: str) -> ModelRef | None:
        """The model version of the space's live collection (its alias), None if there is none yet."""
        ...

    async def bind(self, image: ModelRef, image_dim: int, text: ModelRef, text_dim: int) -> None:
        """Creates (if missing), checks and loads these versions' collections; searches read them from now on."""
        ...

    async def set_live(self, space: Space, model: ModelRef) -> None:
        """Points the space's alias at that version's collection (one atomic alias change)."""
        ...

    def require(self) -> None:
        """Raises BackendUnavailable (Milvus unreachable) or FailedPrecondition unless the collections are bound."""
        ...

    async def collections(self) -> list[CollectionInfo]: ...
    async def drop(self, space: Space, model: ModelRef) -> None: ...
    async def upsert(self, rows: list[VectorRow]) -> None: ...
    async def delete(self, ids: list[str]) -> None: ...
    async def search(
        self, space: Space, vector: np.ndarray, limit: int, offset: int, flt: SearchFilter, exclude_id: str = ""
    ) -> list[VectorHit]: ...
    async def get_vectors(self, ids: list[str], space: Space) -> dict[str, np.ndarray]: ...
    async def count(self) -> int: ...
    async def ids(self, space: Space = "image", model: ModelRef | None = None) -> set[str]: ...
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
