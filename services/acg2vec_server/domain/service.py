"""The data plane: every domain object the servicers delegate to (app.py builds it from plain values)."""

from __future__ import annotations

from dataclasses import dataclass

from acg2vec_server.domain.illustrations import Illustrations
from acg2vec_server.domain.inputs import Limits
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.tagging import Tagger


@dataclass
class Domain:
    limits: Limits
    models: Models
    tagger: Tagger
    illustrations: Illustrations
