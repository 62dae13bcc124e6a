"""XLM-R sentence encoders with a real SentencePiece model (multilingual-e5, bge-m3, paraphrase-xlm-r style):
a unigram model trained here with the `sentencepiece` trainer on zh / ja / en text, turned into an XLM-R
tokenizer by transformers, a small random XLM-R + mean pooling + Normalize saved by sentence-transformers; the
imported SavedModel, tokenised with the tokenizer it carries (as the server does), gives sentence-transformers'
vectors -- with the checkpoint's tokenizer.json, and with only its sentencepiece.bpe.model (older checkpoints)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from acg2vec_models.text.importer import import_sentence_transformers, saved_model_vectors
from acg2vec_models.vocab import DEEPDANBOORU_V3

TITLES = [
    "魔法少女小圆", "魔法少女まどか☆マギカ", "Puella Magi Madoka Magica", "进击的巨人 第二季", "進撃の巨人",
    "Attack on Titan", "銀魂", "涼宮ハルヒの憂鬱", "The Melancholy of Haruhi Suzumiya", "刀剑神域",
    "ソードアート・オンライン", "Sword Art Online", "鬼灭之刃", "鬼滅の刃", "Demon Slayer", "葬送的芙莉莲",
    "葬送のフリーレン", "Frieren: Beyond Journey's End", "孤独摇滚！", "ぼっち・ざ・ろっく！", "Bocchi the Rock!",
]  # fmt: skip
#: checked texts: seen and unseen words, runs of spaces, full-width forms, characters outside the vocabulary
TEXTS = [
    *TITLES[:6], "long hair, blue eyes, school uniform", "  leading and   inner   spaces ",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３",
    "ｶﾀｶﾅ ① ②", "咕噜咕噜魔法阵", "emoji 🎸 and ♪", "a girl with a red umbrella in the rain", "",
    " ".join(TITLES),  # longer than max_seq_length: truncated the same way
]  # fmt: skip


def _corpus() -> list[str]:
    tags = [t.strip().replace("_", " ") for t in DEEPDANBOORU_V3.read_text(encoding="utf-8").splitlines()]
    return [*TITLES * 20, *[t for t in tags if t][:4000]]


def build_xlmr_folder(path: Path) -> tuple[Path, Path]:
    """(sentence-transformers folder, its SentencePiece model file)."""
    import sentencepiece
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    spm_bytes = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=spm_bytes, vocab_size=700, model_type="unigram",
        character_coverage=1.0, normalization_rule_name="nmt_nfkc", num_threads=1, minloglevel=2,
    )  # fmt: skip
    hf = path / "hf"
    hf.mkdir(parents=True)
    spm_file = hf / "sentencepiece.bpe.model"
    spm_file.write_bytes(spm_bytes.getvalue())
    (hf / "tokenizer_config.json").write_text('{"tokenizer_class": "XLMRobertaTokenizer"}', encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(hf))  # transformers converts the SentencePiece model
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
    )  # fmt: skip
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    modules = [Transformer(str(hf), max_seq_length=24), Pooling(32, pooling_mode="mean"), Normalize()]
    folder = path / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder, spm_file


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_xlmr_folder(tmp_path_factory.mktemp("xlmr"))


def _reference(folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(TEXTS)


def _module(folder: Path) -> Path:
    """The Transformer module's folder (sentence-transformers 6 saves it at the root)."""
    import json

    first = json.loads((folder / "modules.json").read_text(encoding="utf-8"))[0]
    return folder / first.get("path", "")


def test_xlm_roberta_with_a_sentencepiece_tokenizer_serves_sentence_transformers_vectors(xlmr, tmp_path):
    folder, _ = xlmr
    imported = import_sentence_transformers(folder, tmp_path / "repo", "xlmr")
    assert imported.pipeline == ["Transformer", "Pooling", "Normalize"] and imported.dim == 32
    ours, theirs = saved_model_vectors(imported.path, TEXTS), _reference(folder)
    assert np.abs(ours - theirs).max() < 1e-5
    assert imported.min_cosine is not None and imported.min_cosine >= 0.99999


def test_xlm_roberta_checkpoint_with_only_its_sentencepiece_model(xlmr, tmp_path):
    """Older checkpoints ship sentencepiece.bpe.model and no tokenizer.json: the importer converts it as
    transformers does, and the served tokenizer gives transformers' ids on every text."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from acg2vec_models.text.sentencepiece import read_model, xlm_roberta_tokenizer

    source, spm_file = xlmr
    folder = tmp_path / "st"
    shutil.copytree(source, folder)
    module = _module(folder)
    (module / "tokenizer.json").unlink()
    shutil.copy(spm_file, module / "sentencepiece.bpe.model")

    reference = AutoTokenizer.from_pretrained(str(module))
    ours = Tokenizer.from_str(xlm_roberta_tokenizer(read_model(spm_file.read_bytes())).to_str())
    assert [e.ids for e in ours.encode_batch(TEXTS)] == [reference(t)["input_ids"] for t in TEXTS]
    assert 3 in ours.encode("咕噜咕噜魔法阵").ids  # outside the vocabulary: <unk>

    imported = import_sentence_transformers(folder, tmp_path / "repo", "xlmr")
    assert np.abs(saved_model_vectors(imported.path, TEXTS) - _reference(folder)).max() < 1e-5
