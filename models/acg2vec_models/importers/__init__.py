"""Importers: published models in their own formats -> new versions in the model repository.

Each writes `<root>/<name>/<next version>/` SavedModels with the repository's signatures (repository.py) and
keeps the source model's own preprocessing, then regenerates models.config. See
docs/image-models-import-train.md.
"""

from __future__ import annotations


class ImportFailed(ValueError):
    """The source is not what the importer expects; the message says what to give it instead."""
