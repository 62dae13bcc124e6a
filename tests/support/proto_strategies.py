"""Hypothesis strategies for any protobuf message, from its descriptor: every field gets random values of its
type (extreme numbers, NaN, weird unicode, wrong sizes, unknown enum values), mixed with plausible ones
(real and damaged images, ids, vectors of the served dimensions) so that calls get past the first check."""

from __future__ import annotations

from functools import cache

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from acg2vec_testing.image_fuzz import base_images, mutate

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip
ODD_TEXT = (
    "", " ", "\x00", "a\x00b", "\u200b\u200d\ufeff", "\u202eevil", "e\u0301\u0301\u0301", "🧑‍🎨🇯🇵",
    "魔法少女まどか☆マギカ", "../../etc/passwd", 'quote"\\back', "%s%n", "long hair", "general", "rating:safe",
    "x" * 256, "x" * 257, "あ" * 3000,
)  # fmt: skip
#: Vector lengths worth trying: empty, tiny, and around the served dimensions.
VECTOR_SIZES = (0, 1, 63, 64, 65, 127, 128, 129, 512, 1024, 5000)

text = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40),
    st.sampled_from(ODD_TEXT),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,20}", fullmatch=True).map(lambda s: f"fuzz-{s}"),
)


@st.composite
def images(draw: st.DrawFn) -> bytes:
    _, data = draw(st.sampled_from(base_images()))
    return mutate(data, draw(st.randoms(use_true_random=False)))


#: Half intact files (so calls get past the image check and reach the models), half damaged or junk.
raw_bytes = st.one_of(
    st.sampled_from(base_images()).map(lambda named: named[1]),
    st.one_of(images(), st.binary(max_size=300), st.sampled_from([b"", b"\x00" * 10])),
)


def floats(width: int) -> st.SearchStrategy[float]:
    return st.one_of(st.floats(width=width), st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-45, 3.4e38]))


@cache
def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    t = field.type
    if t in INT_RANGES:
        low, high = INT_RANGES[t]
        return st.one_of(st.integers(low, high), st.integers(-3, 1100).filter(lambda v: low <= v <= high))
    if t == F.TYPE_FLOAT:
        return floats(32)
    if t == F.TYPE_DOUBLE:
        return floats(64)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return text
    if t == F.TYPE_BYTES:
        return raw_bytes
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if t == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    raise NotImplementedError(f"field type {t} of {field.full_name}")


def is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if is_map(field):
        key, val = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key, depth), scalar(val, depth), max_size=5)
    if field.is_repeated:
        element = scalar(field, depth)
        if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):  # vectors: also exactly the served sizes
            sized = st.sampled_from(VECTOR_SIZES).flatmap(lambda n: st.lists(element, min_size=n, max_size=n))
            return st.one_of(st.lists(element, max_size=12), sized)
        return st.lists(element, max_size=10)
    return scalar(field, depth)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random instances of the message: each field set or not, at most one field of each real oneof."""
    cls = message_class(descriptor)
    if depth > 3:
        return st.just(cls())
    plain = {}
    choices: list[st.SearchStrategy] = []
    for oneof in descriptor.oneofs:
        if len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}":  # proto3 `optional`
            continue
        options = [st.tuples(st.just(f.name), value(f, depth)) for f in oneof.fields]
        choices.append(st.one_of(st.none(), *options))
    for field in descriptor.fields:
        real_oneof = field.containing_oneof is not None and field.containing_oneof.name != f"_{field.name}"
        if not real_oneof:
            plain[field.name] = st.one_of(st.none(), value(field, depth))

    def build(args: tuple[dict, list]) -> Message:
        fields, picked = args
        kwargs = {k: v for k, v in fields.items() if v is not None}
        kwargs.update(dict(p for p in picked if p is not None))
        return cls(**kwargs)

    return st.tuples(st.fixed_dictionaries(plain), st.tuples(*choices).map(list)).map(build)
