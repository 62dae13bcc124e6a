"""An illustration record with every field set (metadata, tags, rating, both vectors and models, times), for the
metadata store tests on a single server and on a cluster."""

from __future__ import annotations

import numpy as np

from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, ModelRef, TagScore


def record(id: str, seed: int = 0) -> IllustrationRecord:
    rng = np.random.default_rng(seed)
    return IllustrationRecord(
        id=id, metadata=IllustrationMetadata("t", "a", "https://example.org/x", {"k": "v"}),
        tags=[TagScore("long_hair", 0.9, "general"), TagScore("hatsune_miku", 0.7, "character")], rating="sensitive",
        content_sha256="ab" * 32, image_vector=rng.random(8, dtype=np.float32),
        text_vector=rng.random(4, dtype=np.float32),
        image_model=ModelRef("illust2vec", 3), text_model=ModelRef("acgvoc2vec", 1), create_time=1.5, update_time=2.5,
    )  # fmt: skip
