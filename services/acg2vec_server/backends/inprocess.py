"""In-process inference: the repository's SavedModels loaded with TensorFlow (the embedded default).

Like TF-Serving it serves the newest version of each model and picks up a newer one when it appears; a model named
`name@version` is that version only (the server pins the embedding models to its live vector collections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acg2vec_models import repository
from acg2vec_server.backends.signatures import read_signature_defs, signature_infos
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.ports import (
    InferenceBackend,
    InferenceInputError,
    ModelDescription,
    ModelNotInstalled,
    split_model,
)
from acg2vec_server.telemetry.backend_calls import instrumented

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    description: ModelDescription
    module: Any


def tf_error_summary(message: str) -> str:
    """The useful line of a TensorFlow error (not 'Graph execution error:' nor node names)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("[[", "Detected at node", "Graph execution error", "<stack"))]
    return useful[-1] if useful else (lines[0] if lines else "invalid input")


@instrumented("inprocess", InferenceBackend)
class InProcessBackend:
    name = "inference"

    def __init__(self, root: Path, threads: int = 2):
        self.root = root
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tf")
        self._models: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    def _resolve(self, model: str) -> tuple[str, int | None, int | None]:
        """(name, pinned version or None, the version to serve or None if it is not installed)."""
        name, pinned = split_model(model)
        if pinned is None:
            return name, None, repository.latest_version(self.root, name)
        return name, pinned, pinned if pinned in repository.versions(self.root, name) else None

    def _load(self, model: str) -> _Loaded:
        """The loaded SavedModel for `model`; one version per model name stays loaded (a newer one replaces it)."""
        name, pinned, version = self._resolve(model)
        with self._lock:
            if version is None:
                current = self._models.get(name)
                if current is not None and not (self.root / name / str(current.description.version)).exists():
                    del self._models[name]  # removed from the repository: unload, as TF-Serving does
                    current = None
                if current is None or pinned is not None:
                    where = f"{self.root / name}/{pinned if pinned is not None else '<version>'}/"
                    raise ModelNotInstalled(model, f"no SavedModel under {where}; run `acg2vec models build-defaults`")
                return current
            current = self._models.get(name)
            if current is not None and current.description.version == version:
                return current
            import tensorflow as tf

            path = self.root / name / str(version)
            log.info("loading model %s version %d from %s", name, version, path)
            module = tf.saved_model.load(str(path))
            loaded = _Loaded(ModelDescription(name, version, signature_infos(read_signature_defs(path))), module)
            self._models[name] = loaded
            return loaded

    def _describe(self, model: str) -> ModelDescription:
        """Loads the model (a warm-up before its first call), except for the newest version of a model pinned to
        another one: that is read from its signature file, so that asking which version is newest loads nothing."""
        name, pinned, version = self._resolve(model)
        with self._lock:
            current = self._models.get(name)
        if pinned is None and version is not None and current is not None and current.description.version != version:
            path = self.root / name / str(version)
            return ModelDescription(name, version, signature_infos(read_signature_defs(path)))
        return self._load(model).description

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Runs fn on a TensorFlow thread. Cancelled (the caller went away, or its inference timeout passed) before
        it started, it never runs; once started, a TensorFlow call cannot be stopped, so cancellation waits until
        it returns: the batcher then sees the model busy until its thread is free again, and a slow model does
        not take one thread after the other from the other models."""
        work = self._executor.submit(fn, *args)
        result = asyncio.wrap_future(work)
        try:
            return await asyncio.shield(result)
        except asyncio.CancelledError:
            if not work.cancel():
                with contextlib.suppress(BaseException):
                    await result
            raise

    async def describe(self, model: str) -> ModelDescription:
        return await self._run(self._describe, model)

    def _predict(
        self, model: str, inputs: Mapping[str, np.ndarray], signature: str
    ) -> tuple[dict[str, np.ndarray], int]:
        import tensorflow as tf

        loaded = self._load(model)
        try:
            fn = loaded.module.signatures[signature]
        except KeyError:
            raise ModelNotInstalled(model, f"it has no signature '{signature}'") from None
        try:
            out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            raise InferenceInputError(tf_error_summary(e.message)) from None
        except TypeError as e:  # inputs that are not the signature's (TF-Serving: INVALID_ARGUMENT)
            raise InferenceInputError(f"inputs do not match signature '{signature}': {e}") from None
        return {k: v.numpy() for k, v in out.items()}, loaded.description.version

    async def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default"
    ) -> tuple[dict[str, np.ndarray], int]:
        return await self._run(self._predict, model, inputs, signature)

    async def ping(self) -> None:
        if not self.root.is_dir():
            raise BackendUnavailable(self.name, f"model repository {self.root} does not exist")

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
