"""The domain's view of the models: named roles (tagger, image/text embedder, popularity) over a backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acg2vec_models.repository import LABELS_SIGNATURE, ROWS_INPUT
from acg2vec_models.text.tokens import IDS_INPUT, TOKENIZER_OUTPUT, TOKENIZER_SIGNATURE, TextTokenizer
from acg2vec_server.domain.batching import Batcher
from acg2vec_server.domain.errors import BackendUnavailable, FailedPrecondition, FieldViolation, InvalidInput
from acg2vec_server.domain.ports import (
    InferenceBackend,
    InferenceInputError,
    ModelDescription,
    ModelNotInstalled,
    split_model,
)
from acg2vec_server.domain.types import Embedding, ModelRef


@dataclass(frozen=True)
class Labels:
    version: int
    names: list[str]
    categories: np.ndarray  # object array of category names, aligned with names


@dataclass(frozen=True)
class TextInputs:
    """How the text model's version `version` takes its input: raw strings, or token ids from its tokenizer."""

    version: int
    tokenizer: TextTokenizer | None  # None: serving_default takes `text` and tokenises in the graph

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            return {"text": np.array([t.encode() for t in texts], dtype=object)}
        return self.tokenizer(texts)


#: The joint image–text model's image signature (its serving_default is the text side: see acg2vec_models/joint).
JOINT_IMAGE_SIGNATURE = "image"


class Models:
    """Runs the configured models; turns backend failures into domain errors with a fix in the message."""

    def __init__(
        self, backend: InferenceBackend, tagger: str, image: str, text: str, popularity: str,
        batcher: Batcher | None = None, joint: str = "joint",
    ):  # fmt: skip
        self.backend = backend
        self.tagger, self.image, self.text, self.popularity = tagger, image, text, popularity
        #: The embedding models' names without a pinned version (`image` and `text` may carry `@version`: pin()).
        self.image_name, self.text_name = split_model(image)[0], split_model(text)[0]
        #: The joint image–text model's name; the text space's model (`text_space`, maybe pinned) is it or the
        #: text model (choose_text_space()).
        self.joint_name = joint
        self.text_space_name, self.text_space = self.text_name, text
        self._labels: Labels | None = None
        self._text_inputs: dict[str, TextInputs] = {}
        #: Joins concurrent requests into model-sized batches (domain/batching.py); None runs each as it comes.
        self.batcher = batcher

    async def run(
        self, model: str, inputs: dict[str, np.ndarray], signature: str = "serving_default", optional: bool = False
    ) -> tuple[dict[str, np.ndarray], ModelRef]:
        try:
            predict = self.batcher.predict if self.batcher is not None else self.backend.predict
            outputs, version = await predict(model, inputs, signature)
        except ModelNotInstalled as e:
            if optional:
                raise FailedPrecondition(f"{e}. This server answers without it; install one to use this call") from None
            raise BackendUnavailable("inference", f"{e}") from None
        except InferenceInputError as e:
            raise InvalidInput(
                f"the input is corrupt: the model's decoder refused it ({e})",
                [FieldViolation("image", "corrupt image")],
            ) from None
        return outputs, ModelRef(split_model(model)[0], version)

    def pin(self, image_version: int | None, text_version: int | None) -> None:
        """Embeds with these versions of the image model and the text space's model from now on (None: the newest
        installed), so that query vectors and new rows belong to the vector collections being served."""
        self.image = self.image_name if image_version is None else f"{self.image_name}@{image_version}"
        space = self.text_space_name
        self.text_space = space if text_version is None else f"{space}@{text_version}"
        if space == self.text_name:
            self.text = self.text_space

    async def run_images(
        self, model: str, images: list[bytes], optional: bool = False, field: str = "images",
        signature: str = "serving_default",
    ) -> tuple[dict[str, np.ndarray], ModelRef]:  # fmt: skip
        """Runs an image model on a batch; if the graph refuses the batch, names the item(s) it refused."""
        try:
            return await self.run(model, {"image_bytes": np.array(images, dtype=object)}, signature, optional)
        except InvalidInput as e:
            if len(images) == 1:
                raise
            bad = []
            for i, image in enumerate(images):
                try:
                    await self.run(model, {"image_bytes": np.array([image], dtype=object)}, signature, optional)
                except InvalidInput:
                    bad.append(FieldViolation(f"{field}[{i}]", "corrupt image"))
            raise InvalidInput(f"{', '.join(v.field for v in bad) or field}: {e.message}", bad) from None

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def describe(self, model: str) -> ModelDescription:
        try:
            return await self.backend.describe(model)
        except ModelNotInstalled as e:
            raise BackendUnavailable("inference", str(e)) from None

    async def run_data(self, model: str, signature: str) -> tuple[dict[str, np.ndarray], ModelRef]:
        """Runs a signature that carries data (labels, tokenizer): one row in (`rows`, as TF-Serving's batching
        needs an input), the first row of each output out. A version exported before these signatures took `rows`
        still answers where the backend allows a call without input (in-process, TF-Serving without batching)."""
        signatures = (await self.describe(model)).signatures
        info = signatures.get(signature)
        if info is None or info.inputs:
            outputs, ref = await self.run(model, {ROWS_INPUT: np.zeros(1, np.int64)}, signature=signature)
            return {k: np.asarray(v)[0] for k, v in outputs.items()}, ref
        try:
            return await self.run(model, {}, signature=signature)
        except InvalidInput as e:
            raise BackendUnavailable(
                "inference",
                f"model '{model}' has a '{signature}' signature without input, which TF-Serving refuses with "
                f"batching on ({e.message}); export the model again with this release (`acg2vec models "
                "build-defaults`, or the import command that made it)",
            ) from None

    async def labels(self, version: int) -> Labels:
        """The tagger's vocabulary for the version that answered (re-read when the version changes)."""
        if self._labels is None or self._labels.version != version:
            outputs, ref = await self.run_data(self.tagger, LABELS_SIGNATURE)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in outputs["names"]]
            cats = np.array(
                [c.decode() if isinstance(c, bytes) else str(c) for c in outputs["categories"]], dtype=object
            )
            self._labels = Labels(ref.version, names, cats)
        return self._labels

    async def embed_images(self, images: list[bytes]) -> list[Embedding]:
        outputs, ref = await self.run_images(self.image, images)
        return normalize(outputs["embedding"], ref)

    async def text_inputs(self, refresh: bool = False, model: str | None = None) -> TextInputs:
        """A text model's input path (default: the text model), from its signature; a token-id model's tokenizer
        is fetched from the model itself (signature `tokenizer`), once per version, so a remote TF-Serving needs
        no local files."""
        model = model or self.text
        if model not in self._text_inputs or refresh:
            description = await self.describe(model)
            signature = description.signatures.get("serving_default")
            if signature is not None and IDS_INPUT in signature.inputs:
                outputs, ref = await self.run_data(model, TOKENIZER_SIGNATURE)
                definition = np.asarray(outputs[TOKENIZER_OUTPUT]).reshape(-1)[0]
                definition = definition.decode() if isinstance(definition, bytes) else str(definition)
                self._text_inputs[model] = TextInputs(ref.version, TextTokenizer(definition))
            else:
                self._text_inputs[model] = TextInputs(description.version, None)
        return self._text_inputs[model]

    async def embed_texts(self, texts: list[str], model: str | None = None) -> list[Embedding]:
        """Batch of texts -> L2-normalised vectors of a text model (default: the text model; the joint model's
        serving_default is its text side); a new model version (other inputs or tokenizer) is picked up on the
        call that first meets it."""
        model = model or self.text
        plan = await self.text_inputs(model=model)
        for retry in (False, True):
            try:
                outputs, ref = await self.run(model, plan(texts))
            except InvalidInput:
                if retry:
                    raise
                plan = await self.text_inputs(refresh=True, model=model)  # inputs of an older version
                continue
            if ref.version == plan.version or retry:
                break
            fresh = await self.text_inputs(refresh=True, model=model)  # another version answered
            if fresh.tokenizer is None and plan.tokenizer is None:
                break
            plan = fresh
        return normalize(outputs["embedding"], ref)

    # ---------------------------------------------------------------------------------- the text space
    async def joint_installed(self) -> bool:
        try:
            await self.backend.describe(self.joint_name)
        except ModelNotInstalled:
            return False
        return True

    async def choose_text_space(self, live: str | None) -> str:
        """Which model fills the search index's text space: the live text collection's model if there is one (a
        joint model installed later does not take over a live tag-text collection: re-index into it, as for a
        new version), else the joint image–text model when installed (an illustration by its picture), else the
        text model (an illustration by its tag text)."""
        if live in (self.joint_name, self.text_name):
            name = live
        else:
            name = self.joint_name if await self.joint_installed() else self.text_name
        if name != self.text_space_name:
            self.text_space_name = self.text_space = name
        return name

    async def embed_text_queries(self, texts: list[str]) -> list[Embedding]:
        """Texts as queries of the text space (see choose_text_space)."""
        return await self.embed_texts(texts, self.text_space)

    async def embed_for_text_space(self, images: list[bytes], tag_texts: list[str]) -> list[Embedding]:
        """Illustrations' vectors in the text space: their pictures through the joint model's image side when it
        fills the space, else their tag texts through the text model."""
        if self.text_space_name == self.joint_name:
            outputs, ref = await self.run_images(self.text_space, images, signature=JOINT_IMAGE_SIGNATURE)
            return normalize(outputs["embedding"], ref)
        return await self.embed_texts(tag_texts)


def normalize(matrix: np.ndarray, ref: ModelRef) -> list[Embedding]:
    """L2-normalises rows so that cosine similarity is a dot product (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return [Embedding(row, ref, True) for row in unit]
