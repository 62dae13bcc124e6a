"""The joint image–text space: training aligns pictures with their texts, the export serves both sides, and a real
server answers Search(text) through it over gRPC, pinned to the version whose vectors the live collection holds.

Tiny parts: a token-id text tower with random token vectors (acgvoc2vec's interface: the server tokenises with
the tokenizer the model carries), an image tower that averages the picture's colour, pictures of four colours with
texts naming the colour; both inference backends (in-process, the TF-Serving emulator with batching on). Quality
on openclipart is measured by benchmarks/joint_search.py, not here."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

from acg2vec.v1 import search_pb2, search_pb2_grpc
from acg2vec_models import repository
from acg2vec_models.joint.export import IMAGE_SIGNATURE, export_joint, text_tower_vectors
from acg2vec_models.joint.train import JointSpec, train_heads, unit
from acg2vec_models.preprocessing import ImagePreprocessing
from acg2vec_models.repository import check_batchable
from acg2vec_models.text.export import export_token_text_model
from acg2vec_models.text.tf_encoders import TextEncoder
from acg2vec_models.text.tokens import serving_definition
from acg2vec_server.app import Application
from acg2vec_server.testing.tfserving_emulator import start_emulator
from acg2vec_testing.model_repository import copy_repository
from tests.support.servers import make_settings

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "yellow": (235, 215, 30)}
GET_RED = search_pb2.GetIllustrationRequest(id="joint-red", include_vectors=True)
PREP = ImagePreprocessing(size=16, resize="stretch", offset=127.0, scale=128.0)
SPEC = JointSpec(dim=16, image_hidden=32, dropout=0.0, epochs=60, batch_size=16, learning_rate=1e-2)


def picture(rgb: tuple[int, int, int], seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(-25, 26, (24, 24, 3))
    pixels = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def mean_colour(rgb: tuple[int, int, int], seed: int) -> np.ndarray:
    jitter = np.random.default_rng(seed).normal(0, 12, 3)
    return ((np.array(rgb) + jitter - PREP.offset) / PREP.scale).astype(np.float32)


def train_and_export(root: Path, version: int) -> Path:
    """Heads trained on the colour pictures' features, exported around a colour-averaging image tower."""
    text_model = root / "acgvoc2vec" / str(repository.latest_version(root, "acgvoc2vec"))
    names = list(COLOURS)
    features = np.stack([mean_colour(COLOURS[n], 100 * i + j) for i, n in enumerate(names) for j in range(8)])
    texts, owners = [], []
    for p in range(len(features)):
        name = names[p // 8]
        texts += [name, f"a {name} picture", f"{name} square"]
        owners += [p, p, p]
    image_head, text_head = train_heads(features, text_tower_vectors(text_model, texts), owners, SPEC)
    image = keras.Input((PREP.size, PREP.size, 3))
    image_model = keras.Model(image, image_head(keras.layers.GlobalAveragePooling2D()(image)))
    return export_joint(text_model, text_head, image_model, PREP, root / "joint" / str(version))


class _MeanEncoder(TextEncoder):
    """A tiny token-id text tower (like acgvoc2vec's interface): the mean of random token vectors."""

    def __init__(self, vocab: int, dim: int = 8):
        super().__init__()
        self.table = tf.Variable(np.random.default_rng(0).normal(size=(vocab, dim)).astype(np.float32))

    def __call__(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(attention_mask, tf.float32)[..., None]
        return tf.reduce_sum(tf.gather(self.table, input_ids) * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)


@pytest.fixture(scope="module")
def joint_repo(tmp_path_factory, model_repo) -> Path:
    """The dev tagger and illust2vec, a token-id acgvoc2vec (tokenizer carried in the model), joint version 1."""
    root = copy_repository(model_repo, tmp_path_factory.mktemp("joint") / "models", ["tagger", "illust2vec"])
    words = ["[PAD]", "[UNK]", "a", "picture", "square", *COLOURS]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    definition = serving_definition(tokenizer, 16, 0, "[PAD]")
    export_token_text_model(_MeanEncoder(len(words)), definition, root / "acgvoc2vec" / "1")
    train_and_export(root, 1)
    repository.write_models_config(root)
    return root


def test_training_and_export_put_each_colour_name_nearest_its_pictures(joint_repo):
    path = joint_repo / "joint" / "1"
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) >= {"serving_default", IMAGE_SIGNATURE, "tokenizer"}
    check_batchable(path)  # TF-Serving's batching rules (every signature takes and returns a batch)
    names = list(COLOURS)
    images = tf.constant([picture(COLOURS[n], 1000 + i) for i, n in enumerate(names)])  # unseen pictures
    pictures = loaded.signatures[IMAGE_SIGNATURE](image_bytes=images)["embedding"].numpy()
    queries = text_tower_vectors(path, names)  # tokenised with the tokenizer the joint model carries
    assert np.allclose(np.linalg.norm(pictures, axis=1), 1, atol=1e-5)
    similarity = unit(queries) @ unit(pictures).T
    assert list(similarity.argmax(axis=1)) == list(range(len(names))), similarity


@pytest.mark.parametrize("backend", ["inprocess", "tfserving"])
async def test_server_searches_text_in_the_joint_space_and_follows_a_new_version(
    tmp_path, joint_repo, redis_server, backend
):
    root = joint_repo
    # a generous inference timeout: the first calls load the models, slow on a busy shared machine
    overrides: dict[str, object] = {"redis_key_prefix": f"joint-{backend}:v1", "inference_timeout_s": 120}
    emulator = None
    if backend == "tfserving":  # TF-Serving as deployed (batching on), serving the same repository
        emulator = await start_emulator(root)
        overrides |= {"inference_backend": "tfserving", "tfserving_target": f"127.0.0.1:{emulator.port}"}
    app = Application(make_settings(tmp_path / "data", root, redis_server.url, **overrides))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            search = search_pb2_grpc.SearchServiceStub(channel)
            for i, (name, rgb) in enumerate(COLOURS.items()):
                indexed = await search.IndexIllustration(
                    search_pb2.IndexIllustrationRequest(id=f"joint-{name}", image=picture(rgb, 2000 + i))
                )
                assert indexed.outcome == search_pb2.INDEX_OUTCOME_CREATED
            for name in COLOURS:
                response = await search.Search(search_pb2.SearchRequest(text=name, top_k=2))
                assert response.space == search_pb2.VECTOR_SPACE_TEXT
                assert (response.model.name, response.model.version) == ("joint", 1)
                assert response.hits[0].id == f"joint-{name}", [h.id for h in response.hits]
            stored = await search.GetIllustration(GET_RED)
            assert stored.illustration.text_vector.model.name == "joint"

            if backend == "tfserving":
                return  # the emulator serves the newest version only (TF-Serving's version policy is not emulated)
            # a new version (a copy: the version number is what is under test) is installed: the live text
            # collection holds version 1's vectors, so queries and new rows stay on version 1 until a re-index
            # into version 2's collection is made live (the Milvus upgrade rules; docs/search.md)
            shutil.copytree(root / "joint" / "1", root / "joint" / "2")
            await app.domain.illustrations.ensure_ready()  # what each health probe runs
            response = await search.Search(search_pb2.SearchRequest(text="red", top_k=1))
            assert (response.model.name, response.model.version) == ("joint", 1)
            assert response.hits[0].id == "joint-red"
            again = await search.IndexIllustration(
                search_pb2.IndexIllustrationRequest(id="joint-red", image=picture(COLOURS["red"], 2000))
            )
            assert again.outcome == search_pb2.INDEX_OUTCOME_UNCHANGED
    finally:
        await app.stop(grace_s=0)
        if emulator is not None:
            await emulator.stop(0)
        shutil.rmtree(root / "joint" / "2", ignore_errors=True)
