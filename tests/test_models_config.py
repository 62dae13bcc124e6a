"""models.config: written in one place (acg2vec_models.repository.write_models_config) through TF-Serving's config
proto and text format, atomically, and parsed back by the same proto."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from acg2vec_models import repository


def _install(root: Path, name: str, version: int = 1) -> None:
    path = root / name / str(version)
    path.mkdir(parents=True)
    (path / repository.SAVED_MODEL_FILE).write_bytes(b"")


def _parse(path: Path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_models_config_lists_every_model_through_the_config_proto(tmp_path):
    _install(tmp_path, "tagger")
    _install(tmp_path, 'odd "name"')  # escaped by the text format, not by hand
    (tmp_path / "empty").mkdir()  # no SavedModel: not a model
    path = repository.write_models_config(tmp_path, "/srv/models/")
    config = _parse(path)
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] == [
        ('odd "name"', '/srv/models/odd "name"', "tensorflow"),
        ("tagger", "/srv/models/tagger", "tensorflow"),
    ]


def test_an_empty_repository_gives_an_empty_model_list(tmp_path):
    config = _parse(repository.write_models_config(tmp_path))
    assert config.HasField("model_config_list") and len(config.model_config_list.config) == 0


def test_the_write_is_atomic(tmp_path, monkeypatch):
    """A reader (TF-Serving polls the file) sees the old file or the new one, never a part; a failed write leaves the
    old file and no temporary file."""
    _install(tmp_path, "tagger")
    path = repository.write_models_config(tmp_path)
    before = path.read_text()
    _install(tmp_path, "illust2vec")
    stop, seen = threading.Event(), set()

    def read() -> None:
        while not stop.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            repository.write_models_config(tmp_path)
    finally:
        stop.set()
        reader.join()
    after = path.read_text()
    assert seen <= {before, after} and after != before

    def fail(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    _install(tmp_path, "deepix")
    with pytest.raises(OSError, match="disk full"):
        repository.write_models_config(tmp_path)
    assert path.read_text() == after
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["models.config"]
