"""SentencePiece unigram models as Hugging Face `tokenizers` definitions (one JSON string, Rust-fast).

The multilingual USE ships a SentencePiece `.model`; TensorFlow core has no SentencePiece op and the
`sentencepiece` package is a C++ build. A unigram `.model` is fully described by its pieces, their
scores and the precompiled normaliser charsmap, which `tokenizers` implements natively; this module reads
those from the protobuf (a dozen lines, no generated code) and builds the equivalent `Tokenizer`.
`xlm_roberta_tokenizer` does the same for XLM-R checkpoints that ship only `sentencepiece.bpe.model`
(fairseq's id layout, as transformers' converter builds it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPACE = "\u2581"  # SentencePiece's whitespace symbol
_NORMAL = 1


@dataclass(frozen=True)
class SentencePieceModel:
    pieces: list[tuple[str, float, int]]  # (piece, score, type)
    charsmap: bytes
    add_dummy_prefix: bool
    unk_id: int
    bos_id: int
    eos_id: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((field, value))
        elif wire == 1:
            out.append((field, data[pos : pos + 8]))
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((field, data[pos : pos + length]))
            pos += length
        elif wire == 5:
            out.append((field, data[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"not a SentencePiece model: protobuf wire type {wire}")
    return out


def read_model(data: bytes) -> SentencePieceModel:
    """Parses a SentencePiece ModelProto (pieces = 1, trainer_spec = 2, normalizer_spec = 3)."""
    pieces: list[tuple[str, float, int]] = []
    trainer: dict[int, int | bytes] = {}
    normalizer: dict[int, int | bytes] = {}
    for field, value in _fields(data):
        if field == 1 and isinstance(value, bytes):
            piece = dict(_fields(value))
            text, score = piece.get(1, b""), piece.get(2, b"\0\0\0\0")
            assert isinstance(text, bytes) and isinstance(score, bytes)
            pieces.append((text.decode("utf-8"), struct.unpack("<f", score)[0], int(piece.get(3, _NORMAL))))  # type: ignore[arg-type]
        elif field == 2 and isinstance(value, bytes):
            trainer = dict(_fields(value))
        elif field == 3 and isinstance(value, bytes):
            normalizer = dict(_fields(value))
    if not pieces:
        raise ValueError("not a SentencePiece model: it has no pieces")
    if trainer.get(3, 1) != 1:  # model_type: 1 = UNIGRAM
        raise ValueError(f"only unigram SentencePiece models are supported (model_type {trainer.get(3)})")
    charsmap = normalizer.get(2, b"")
    assert isinstance(charsmap, bytes)
    return SentencePieceModel(
        pieces=pieces,
        charsmap=charsmap,
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        unk_id=int(trainer.get(40, 0)),  # type: ignore[arg-type]
        bos_id=int(trainer.get(41, 1)),  # type: ignore[arg-type]
        eos_id=int(trainer.get(42, 2)),  # type: ignore[arg-type]
    )


def to_tokenizer(model: SentencePieceModel, *, add_bos: bool = True, add_eos: bool = True) -> Tokenizer:
    """The `tokenizers` equivalent of SentencePiece's Encode(text) with optional <s> ... </s>."""
    vocab = [(piece, score) for piece, score, _ in model.pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=model.unk_id, byte_fallback=False))
    steps: list[normalizers.Normalizer] = []
    if model.charsmap:
        steps.append(normalizers.Precompiled(model.charsmap))
    steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]  # remove_extra_whitespaces
    tokenizer.normalizer = normalizers.Sequence(steps)
    scheme = "always" if model.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=scheme)
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme=scheme)
    bos, eos = model.pieces[model.bos_id][0], model.pieces[model.eos_id][0]
    single = " ".join([*([f"{bos}:0"] if add_bos else []), "$A:0", *([f"{eos}:0"] if add_eos else [])])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single,
        special_tokens=[(bos, model.bos_id), (eos, model.eos_id)],
    )
    return tokenizer


XLM_R_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def xlm_roberta_tokenizer(model: SentencePieceModel) -> Tokenizer:
    """XLM-R's tokenizer from its `sentencepiece.bpe.model`, as transformers' XLMRobertaConverter builds it:
    ids 0-3 are <s> <pad> </s> <unk>, the model's pieces follow from its fourth piece on (fairseq's offset of one),
    <mask> comes last; the charsmap normaliser, whitespace split then "▁" prefixing, and <s> ... </s>."""
    vocab = [(token, 0.0) for token in XLM_R_SPECIALS]
    vocab += [(piece, score) for piece, score, _ in model.pieces[3:]]
    vocab.append(("<mask>", 0.0))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    if model.charsmap:
        tokenizer.normalizer = normalizers.Precompiled(model.charsmap)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.add_special_tokens([*XLM_R_SPECIALS, "<mask>"])
    return tokenizer
