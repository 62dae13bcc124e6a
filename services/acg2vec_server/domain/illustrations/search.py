"""Reading illustrations: get by id, similarity search (ANN pages ranked by score then id, or an exact rerank),
paging tokens, query vector checks. Reads only: a pending record is settled by the consistency component."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from acg2vec_server.domain import inputs
from acg2vec_server.domain.errors import FailedPrecondition, FieldViolation, InvalidInput, NotFound
from acg2vec_server.domain.illustrations.consistency import Consistency
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.ports import MAX_WINDOW, MetadataStore, VectorStore
from acg2vec_server.domain.types import IllustrationRecord, ModelRef, SearchFilter, Space


@dataclass
class Query:
    """Exactly one of image, illustration_id, vector (with space) or text."""

    image: bytes | None = None
    illustration_id: str | None = None
    vector: list[float] | None = None
    vector_space: Space | None = None
    text: str | None = None


@dataclass
class Hit:
    id: str
    score: float
    record: IllustrationRecord


@dataclass
class SearchPage:
    hits: list[Hit]
    next_page_token: str
    space: Space
    model: ModelRef | None


class Search:
    def __init__(
        self, models: Models, meta: MetadataStore, vectors: VectorStore, consistency: Consistency,
        limits: inputs.Limits,
    ):  # fmt: skip
        self.models, self.meta, self.vectors, self.consistency, self.limits = models, meta, vectors, consistency, limits

    async def get(self, id: str) -> IllustrationRecord:
        inputs.check_id(id)
        record = await self.consistency.read(id)
        if record is None:
            raise NotFound(f"no illustration with id {id!r}", [FieldViolation("id", "unknown")])
        return record

    async def search(
        self, query: Query, top_k: int, flt: SearchFilter, page_token: str = "", exact_rerank: bool = False
    ) -> SearchPage:
        inputs.check_top_k(top_k, self.limits)
        self.vectors.require()  # the query must be embedded by the served collection's model version
        exclude = ""
        model: ModelRef | None = None
        if query.image is not None:
            embedding = (await self.models.embed_images([inputs.check_image(query.image, self.limits)]))[0]
            vector, space, model = embedding.values, "image", embedding.model
            fingerprint = hashlib.sha256(query.image).hexdigest()
        elif query.illustration_id is not None:
            record = await self.get(query.illustration_id)
            vector, space, exclude = await self._stored_vector(record, "image"), "image", record.id
            fingerprint = f"id:{record.id}"
        elif query.text is not None:
            embedding = (await self.models.embed_text_queries([inputs.check_text(query.text, self.limits)]))[0]
            vector, space, model = embedding.values, "text", embedding.model
            fingerprint = f"text:{query.text}"
        elif query.vector is not None:
            space = query.vector_space or "image"
            vector = self._check_vector(query.vector, space)
            fingerprint = hashlib.sha256(np.asarray(vector, "<f4").tobytes()).hexdigest()
        else:
            raise InvalidInput(
                "set one query: image, illustration_id, vector or text", [FieldViolation("query", "unset")]
            )
        if model is not None and model != self.vectors.bound.get(space):
            raise FailedPrecondition(  # the models were re-pinned between the embedding and now (a switch)
                f"the query was embedded by {model.name} version {model.version}, but the {space} collection being "
                "served holds another version's vectors (a switch is in progress); retry"
            )
        fingerprint = hashlib.sha256(
            json.dumps([fingerprint, space, flt.__dict__, exact_rerank], sort_keys=True).encode()
        ).hexdigest()[:16]
        offset = decode_page_token(page_token, fingerprint)
        if offset + top_k > MAX_WINDOW:
            raise InvalidInput(
                f"page window {offset}+{top_k} is past the deepest searchable result ({MAX_WINDOW}); narrow the filter",
                [FieldViolation("page_token", "too deep")],
            )
        if exact_rerank:
            window = min(MAX_WINDOW, max(4 * (offset + top_k), 64))
            candidates = await self.vectors.search(space, vector, window, 0, flt, exclude)
            stored = await self.vectors.get_vectors([c.id for c in candidates], space)
            scored = sorted(  # by score, ties by id, as in _ranked_window
                ((float(np.dot(stored[c.id], vector)), c.id) for c in candidates if c.id in stored),
                key=lambda s: (-s[0], s[1]),
            )
            page = [(id, s) for s, id in scored[offset : offset + top_k + 1]]
        else:
            page = await self._ranked_window(space, vector, offset, top_k, flt, exclude)
        has_more = len(page) > top_k
        page = page[:top_k]
        records = await self.meta.get_many([id for id, _ in page])
        visible = {id for id, r in records.items() if r.state in ("committed", "pending")}  # not deleting, damaged
        hits = [Hit(id, score, records[id]) for id, score in page if id in visible]
        token = encode_page_token(offset + top_k, fingerprint) if has_more else ""
        return SearchPage(hits, token, space, model)

    async def _ranked_window(
        self, space: Space, vector: np.ndarray, offset: int, top_k: int, flt: SearchFilter, exclude: str
    ) -> list[tuple[str, float]]:
        """Hits offset .. offset+top_k (one more to tell whether a next page exists), ranked by score and then id.

        Milvus orders equal scores (identical images) arbitrarily, and differently for each offset and limit, so
        paging with its own offset skips some tied hits and repeats others. Instead every page ranks the same
        window from the top, and the window grows until the tie at its far end is complete."""
        need = offset + top_k + 1
        window = min(MAX_WINDOW, need + 16)
        while True:
            hits = sorted(
                await self.vectors.search(space, vector, window, 0, flt, exclude), key=lambda h: (-h.score, h.id)
            )
            complete = len(hits) < window or len(hits) <= need or hits[-1].score < hits[need - 1].score
            if complete or window >= MAX_WINDOW:
                return [(h.id, h.score) for h in hits[offset:need]]
            window = min(MAX_WINDOW, window * 2)

    async def _stored_vector(self, record: IllustrationRecord, space: Space) -> np.ndarray:
        """The illustration's vector in the served collection's version: the record's own if the same version
        embedded it, else the row of the served collection (a record re-indexed by a newer version meanwhile)."""
        model = record.image_model if space == "image" else record.text_model
        if model == self.vectors.bound.get(space):
            return record.image_vector if space == "image" else record.text_vector
        stored = await self.vectors.get_vectors([record.id], space)
        if record.id not in stored:
            bound = self.vectors.bound.get(space)
            raise FailedPrecondition(
                f"illustration {record.id!r} was embedded by {model.name} version {model.version} and is not yet in "
                f"the {space} collection being served ({bound.name if bound else '?'} version "
                f"{bound.version if bound else '?'}); index it again, or query by image",
                [FieldViolation("illustration_id", "not in the served collection")],
            )
        return stored[record.id]

    def _check_vector(self, values: list[float], space: Space) -> np.ndarray:
        dims = self.vectors.dims
        expected = dims[0 if space == "image" else 1] if dims else None
        vector = np.asarray(values, dtype=np.float32)
        if vector.ndim != 1 or (expected is not None and vector.shape[0] != expected):
            raise InvalidInput(
                f"vector has {vector.shape[0]} dimensions; the {space} space has {expected}",
                [FieldViolation("vector.values", f"expected {expected} values")],
            )
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            raise InvalidInput(
                "vector must be finite and non-zero", [FieldViolation("vector.values", "not finite or zero")]
            )
        return vector / np.linalg.norm(vector)


def encode_page_token(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": fingerprint}).encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, query = int(data["o"]), str(data["q"])
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(
            "page_token is not one this server issued; start again without it",
            [FieldViolation("page_token", "malformed")],
        ) from None
    if query != fingerprint or offset < 0:
        raise InvalidInput(
            "page_token belongs to a different query or filter; send the same query as the first page",
            [FieldViolation("page_token", "query mismatch")],
        )
    return offset
