"""Imports a sentence-transformers model folder into the model repository as a TF SavedModel (a new version).

Supported pipelines: a BERT-family `Transformer` (bert, roberta, xlm-roberta, camembert; safetensors weights,
a `tokenizer.json` -- WordPiece, BPE or SentencePiece unigram alike -- or, for XLM-R, only its
`sentencepiece.bpe.model`) followed by `Pooling` (cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken),
optional `Dense` layers and `Normalize`; or this project's `UseM3Encoder` (acgvoc2vec). The forward pass is
rebuilt in TensorFlow from the weights (transformers 5 has no TensorFlow models), so PyTorch is not needed;
when sentence-transformers is installed, the import checks the SavedModel against it on fixed texts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acg2vec_models import repository
from acg2vec_models.progress import on_terminal
from acg2vec_models.text.tokens import TextTokenizer, serving_definition

# zh / ja / en (and a mixed one): the texts an import is checked on
CHECK_TEXTS = (
    "魔法少女小圆",
    "魔法少女まどか☆マギカ",
    "Puella Magi Madoka Magica",
    "进击的巨人 第二季",
    "進撃の巨人",
    "Attack on Titan",
    "銀魂",
    "long hair, blue eyes, school uniform",
    "a girl with a red umbrella in the rain",
    "涼宮ハルヒの憂鬱 The Melancholy of Haruhi Suzumiya",
)
MIN_COSINE = 0.9999


class UnsupportedModel(ValueError):
    """The folder is not a sentence-transformers model this importer can convert (the message says why)."""


@dataclass(frozen=True)
class ImportedModel:
    name: str
    version: int
    path: Path
    dim: int
    pipeline: list[str]
    min_cosine: float | None  # against sentence-transformers on CHECK_TEXTS; None when it is not installed


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    single = folder / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(_json(index)["weight_map"].values())):
            out.update(load_file(str(folder / shard)))
        return out
    if (folder / "pytorch_model.bin").exists():
        raise UnsupportedModel(
            f"{folder} has PyTorch pickle weights only; save the model again with safe_serialization=True "
            "(SentenceTransformer(path).save(new_path)) to get model.safetensors"
        )
    raise UnsupportedModel(f"{folder} has no model.safetensors")


def _kind(module: Mapping[str, Any]) -> str:
    return str(module["type"]).rsplit(".", 1)[-1]


def _pooling_modes(config: Mapping[str, Any]) -> list[str]:
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    legacy = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens": "weightedmean",
        "pooling_mode_lasttoken": "lasttoken",
    }
    return [mode for key, mode in legacy.items() if config.get(key)] or ["mean"]


def _tokenizer(module: Path) -> Any:
    """The module's tokenizer.json, or (XLM-R checkpoints without one) its sentencepiece.bpe.model converted."""
    from tokenizers import Tokenizer

    from acg2vec_models.text.sentencepiece import read_model, xlm_roberta_tokenizer

    if (module / "tokenizer.json").exists():
        return Tokenizer.from_file(str(module / "tokenizer.json"))
    spm = module / "sentencepiece.bpe.model"
    if spm.exists() and _json(module / "config.json").get("model_type") == "xlm-roberta":
        try:
            return xlm_roberta_tokenizer(read_model(spm.read_bytes()))
        except ValueError as e:
            raise UnsupportedModel(f"{spm}: {e}") from None
    raise UnsupportedModel(
        f"{module} has no tokenizer.json (nor an XLM-R sentencepiece.bpe.model); save the model with a fast tokenizer"
    )


def build_encoder(folder: Path) -> tuple[Any, str, list[str]]:
    """(TF encoder, tokenizer definition for serving, module kinds) of a sentence-transformers folder."""
    from tokenizers import normalizers

    from acg2vec_models.text.tf_encoders import BertConfig, BertTF, UseM3TF

    modules = sorted(_json(folder / "modules.json") or [], key=lambda m: int(m.get("idx", 0)))
    if not modules:
        raise UnsupportedModel(f"{folder} is not a sentence-transformers model folder (no modules.json)")
    kinds = [_kind(m) for m in modules]
    first = folder / modules[0].get("path", "")
    tokenizer = _tokenizer(first)

    if kinds[0] == "UseM3Encoder":
        if len(kinds) > 1:
            raise UnsupportedModel(f"UseM3Encoder must be the only module (found {kinds})")
        config = _json(first / "config.json")
        encoder = UseM3TF(_weights(first), float(config.get("eps", 1e-12)))
        return encoder, serving_definition(tokenizer, int(config.get("max_seq_length", 256))), kinds

    if kinds[0] != "Transformer":
        raise UnsupportedModel(f"the first module is {modules[0]['type']}; supported: Transformer, UseM3Encoder")
    config = _json(first / "config.json")
    try:
        bert = BertConfig.from_json(config)
    except ValueError as e:
        raise UnsupportedModel(str(e)) from None
    st_config = _json(first / "sentence_bert_config.json")
    limit = int(config.get("max_position_embeddings", 512)) - bert.position_offset
    # sentence-transformers < 6 wrote max_seq_length into sentence_bert_config.json; 6 keeps it as the tokenizer's
    # model_max_length (a huge sentinel when unset), both capped by the position table
    declared = st_config.get("max_seq_length") or _json(first / "tokenizer_config.json").get("model_max_length")
    max_length = min(int(declared or limit), limit)
    if st_config.get("do_lower_case"):
        steps = [normalizers.Lowercase()] + ([tokenizer.normalizer] if tokenizer.normalizer else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
    padding = tokenizer.padding or {}
    pad_id = int(padding.get("pad_id", config.get("pad_token_id") or 0))

    pooling: list[str] | None = None
    dense: list[tuple[dict[str, np.ndarray], str]] = []
    normalize = False
    for module, kind in zip(modules[1:], kinds[1:], strict=True):
        path = folder / module.get("path", "")
        if kind == "Pooling" and pooling is None and not dense:
            pooling = _pooling_modes(_json(path / "config.json"))  # no prompts here: include_prompt is moot
        elif kind == "Dense" and pooling is not None and not normalize:
            dense_config = _json(path / "config.json")
            if dense_config.get("use_residual"):
                raise UnsupportedModel("Dense with use_residual is not supported")
            activation = dense_config.get("activation_function", "torch.nn.modules.activation.Tanh")
            dense.append((_weights(path), activation))
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        else:
            raise UnsupportedModel(
                f"module {module['type']} at position {module.get('idx')} is not supported "
                "(expected Transformer, Pooling, optional Dense layers, optional Normalize)"
            )
    if pooling is None:
        raise UnsupportedModel("the model has no Pooling module after its Transformer")
    try:
        encoder = BertTF(bert, _weights(first), pooling, dense, normalize)
    except (ValueError, KeyError) as e:
        raise UnsupportedModel(f"cannot build the encoder: {e}") from None
    pad_token = padding.get("pad_token") or tokenizer.id_to_token(pad_id)
    return encoder, serving_definition(tokenizer, max_length, pad_id, pad_token), kinds


def saved_model_vectors(path: Path, texts: list[str]) -> np.ndarray:
    """Vectors from an exported SavedModel, tokenised with the tokenizer it carries (as the server does)."""
    import tensorflow as tf

    from acg2vec_models.repository import ROWS_INPUT
    from acg2vec_models.text.tokens import TOKENIZER_OUTPUT, TOKENIZER_SIGNATURE

    loaded = tf.saved_model.load(str(path))
    answer = loaded.signatures[TOKENIZER_SIGNATURE](**{ROWS_INPUT: tf.zeros([1], tf.int64)})
    definition = answer[TOKENIZER_OUTPUT].numpy()[0].decode()
    inputs = TextTokenizer(definition)(texts)
    return loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})["embedding"].numpy()


def compare_with_sentence_transformers(folder: Path, saved_model: Path, texts: list[str]) -> float | None:
    """Lowest cosine between the SavedModel's and sentence-transformers' vectors; None without the library."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    reference = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True).encode(
        texts, show_progress_bar=on_terminal()
    )
    ours = saved_model_vectors(saved_model, texts)
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def import_sentence_transformers(
    folder: Path,
    root: Path,
    name: str,
    *,
    check: bool = True,
    version: int | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> ImportedModel:
    """Converts folder into <root>/<name>/<next version>; with check, refuses a conversion that drifts.
    extra_files (name -> text) go into the version's assets.extra/ (TF-Serving ignores them)."""
    folder = Path(folder)
    encoder, definition, kinds = build_encoder(folder)
    from acg2vec_models.text.export import export_token_text_model

    target = root / name / str(version) if version is not None else repository.next_version_dir(root, name)
    staging = target.with_name(target.name + ".import")
    if staging.exists():
        shutil.rmtree(staging)
    export_token_text_model(encoder, definition, staging)
    min_cosine = compare_with_sentence_transformers(folder, staging, list(CHECK_TEXTS)) if check else None
    if min_cosine is not None and min_cosine < MIN_COSINE:
        shutil.rmtree(staging)
        raise UnsupportedModel(
            f"the converted model drifts from sentence-transformers (lowest cosine {min_cosine:.6f} < {MIN_COSINE})"
        )
    for file_name, content in (extra_files or {}).items():
        (staging / "assets.extra").mkdir(exist_ok=True)
        (staging / "assets.extra" / file_name).write_text(content, encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)  # the version appears complete or not at all
    return ImportedModel(name, int(target.name), target, encoder.dim, kinds, min_cosine)
