"""The data plane: every domain object the servicers delegate to, built from backend adapters."""

from __future__ import annotations

from dataclasses import dataclass

from acg2vec_server.backends.inference import InferenceBackend
from acg2vec_server.backends.metadata import MetadataStore
from acg2vec_server.backends.vectors import VectorStore
from acg2vec_server.domain.batching import Batcher, BatchPolicy
from acg2vec_server.domain.illustrations import Illustrations
from acg2vec_server.domain.inference import Models
from acg2vec_server.domain.inputs import Limits
from acg2vec_server.domain.tagging import Tagger
from acg2vec_server.settings import Settings


@dataclass
class Domain:
    limits: Limits
    models: Models
    tagger: Tagger
    illustrations: Illustrations

    @classmethod
    def build(
        cls, settings: Settings, inference: InferenceBackend, meta: MetadataStore, vectors: VectorStore
    ) -> Domain:
        limits = Limits(
            settings.max_image_bytes, settings.max_image_pixels, settings.max_text_chars,
            settings.max_batch_size, settings.max_top_k, settings.downscale_above_pixels,
        )  # fmt: skip
        policy = BatchPolicy(
            settings.batch_max_size, settings.batch_max_wait_ms / 1000, settings.inference_queue_items,
            settings.inference_concurrency,
        )  # fmt: skip
        models = Models(
            inference, settings.tagger_model, settings.image_feature_model, settings.text_model,
            settings.popularity_model, Batcher(inference.predict, policy, settings.batch_max_sizes()),
        )  # fmt: skip
        tagger = Tagger(models, settings.default_tag_threshold, settings.default_tag_top_k)
        return cls(limits, models, tagger, Illustrations(models, tagger, meta, vectors, limits))
