"""Bad input: each case gets its canonical code, a message that says what to fix, and BadRequest details."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from acg2vec.v1 import image_feature_pb2, search_pb2, tagging_pb2, text_feature_pb2
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import SAMPLE_PNG

INVALID, EXHAUSTED, NOT_FOUND = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


async def expect(call, code: grpc.StatusCode, *words: str, field: str | None = None):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    error = info.value
    assert error.code() == code, error.details()
    for word in words:
        assert word in error.details(), error.details()
    if field is not None:
        status = rpc_status.from_call(error)
        assert status is not None, "google.rpc.Status details missing"
        violations = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [v.field for v in bad.field_violations]
        assert field in violations, violations
    return error


def tag(stubs, image: bytes):
    return stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=image))


async def test_zero_bytes(stubs):
    await expect(tag(stubs, b""), INVALID, "empty", "JPEG", field="image")


async def test_non_image(stubs):
    await expect(tag(stubs, b"%PDF-1.4 definitely not a picture"), INVALID, "not an image", field="image")


async def test_truncated_png(stubs):
    data = SAMPLE_PNG.read_bytes()
    await expect(tag(stubs, data[: len(data) // 2]), INVALID, "corrupt or truncated", field="image")


async def test_truncated_jpeg(stubs):
    data = image_bytes(5, size=(300, 300), fmt="JPEG")
    await expect(tag(stubs, data[: len(data) // 3]), INVALID, "truncated", field="image")


async def test_corrupt_bytes_in_the_middle(stubs):
    data = bytearray(SAMPLE_PNG.read_bytes())
    data[200:260] = b"\x00" * 60
    await expect(tag(stubs, bytes(data)), INVALID, "corrupt", field="image")


async def test_decompression_bomb(stubs):
    await expect(tag(stubs, png_header_claiming(60000, 60000)), EXHAUSTED, "pixels", "downscale", field="image")


async def test_image_over_byte_limit(stubs):
    noise = Image.frombytes("RGB", (1000, 1000), bytes(range(256)) * 11718 + bytes(192))
    out = io.BytesIO()
    noise.save(out, format="BMP")  # 3 MB, over the tests' 2 MB limit
    await expect(tag(stubs, out.getvalue()), EXHAUSTED, "bytes", "limit", field="image")


async def test_other_formats_are_converted(stubs):
    for fmt, mode in (("TIFF", "RGB"), ("WEBP", "RGB"), ("JPEG", "CMYK"), ("PNG", "LA"), ("GIF", "P")):
        response = await tag(stubs, image_bytes(7, fmt=fmt, mode=mode))
        assert response.result.tags, fmt


async def test_batch_names_the_bad_item(stubs):
    request = tagging_pb2.BatchTagImagesRequest(images=[image_bytes(1), b"junk", image_bytes(2)])
    await expect(stubs.tagging.BatchTagImages(request), INVALID, "images[1]", field="images[1]")
    await expect(
        stubs.tagging.BatchTagImages(tagging_pb2.BatchTagImagesRequest()), INVALID, "at least one", field="images"
    )
    too_many = tagging_pb2.BatchTagImagesRequest(images=[image_bytes(1)] * 9)
    await expect(stubs.tagging.BatchTagImages(too_many), EXHAUSTED, "streaming", field="images")


async def test_empty_and_long_text(stubs):
    await expect(
        stubs.text.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text="")),
        INVALID,
        "empty",
        field="text",
    )
    await expect(
        stubs.text.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text=" \n\t")), INVALID, "empty"
    )
    long_text = text_feature_pb2.ExtractTextFeatureRequest(text="あ" * 501)
    await expect(stubs.text.ExtractTextFeature(long_text), EXHAUSTED, "501 characters", field="text")
    batch = text_feature_pb2.BatchExtractTextFeaturesRequest(texts=["ok", ""])
    await expect(stubs.text.BatchExtractTextFeatures(batch), INVALID, field="texts[1]")


async def test_top_k_bounds(stubs):
    for top_k in (0, -3, 101):
        request = search_pb2.SearchRequest(text="long hair", top_k=top_k)
        await expect(stubs.search.Search(request), INVALID, "between 1 and 100", field="top_k")


async def test_unknown_id(stubs):
    await expect(
        stubs.search.GetIllustration(search_pb2.GetIllustrationRequest(id="nope-404")),
        NOT_FOUND,
        "nope-404",
        field="id",
    )
    await expect(
        stubs.search.Search(search_pb2.SearchRequest(illustration_id="nope-404", top_k=5)), NOT_FOUND, "nope-404"
    )
    update = search_pb2.UpdateIllustrationMetadataRequest(id="nope-404")
    await expect(stubs.search.UpdateIllustrationMetadata(update), NOT_FOUND, "index it first")


async def test_invalid_ids_and_fields(stubs):
    bad_id = search_pb2.IndexIllustrationRequest(id="has space", image=image_bytes(1))
    await expect(stubs.search.IndexIllustration(bad_id), INVALID, "not a valid id", field="id")
    bad_field = search_pb2.IndexIllustrationRequest(
        id="ok-id", image=image_bytes(1), metadata=search_pb2.IllustrationMetadata(fields={"bad-key": "x"})
    )
    await expect(stubs.search.IndexIllustration(bad_field), INVALID, "bad-key")


async def test_wrong_vector_dimension(stubs):
    query = search_pb2.VectorQuery(values=[0.1] * 7, space=search_pb2.VECTOR_SPACE_IMAGE)
    await expect(
        stubs.search.Search(search_pb2.SearchRequest(vector=query, top_k=5)),
        INVALID,
        "7 dimensions",
        field="vector.values",
    )
    no_space = search_pb2.VectorQuery(values=[0.1] * 7)
    await expect(stubs.search.Search(search_pb2.SearchRequest(vector=no_space, top_k=5)), INVALID, "vector.space")


async def test_no_query_and_foreign_page_token(stubs):
    await expect(stubs.search.Search(search_pb2.SearchRequest(top_k=5)), INVALID, "set one query")
    await expect(
        stubs.search.Search(search_pb2.SearchRequest(text="a", top_k=5, page_token="garbage!")), INVALID, "page_token"
    )


async def test_bad_image_in_feature_and_search_calls(stubs):
    await expect(
        stubs.image.ExtractImageFeature(image_feature_pb2.ExtractImageFeatureRequest(image=b"GIF89a")), INVALID
    )
    await expect(stubs.search.Search(search_pb2.SearchRequest(image=b"\xff\xd8\xff", top_k=3)), INVALID)


async def test_thresholds_out_of_range(stubs):
    options = tagging_pb2.TagOptions(thresholds=tagging_pb2.CategoryThresholds(general=1.5))
    await expect(
        stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=image_bytes(1), options=options)), INVALID, "general"
    )
    negative = tagging_pb2.TagOptions(top_k=-1)
    await expect(
        stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=image_bytes(1), options=negative)), INVALID, "top_k"
    )


async def test_message_over_grpc_limit(app, stubs):
    huge = b"x" * (app.settings.max_message_bytes + 1)
    await expect(tag(stubs, huge), EXHAUSTED)


async def test_batch_names_the_item_only_the_model_refuses(stubs):
    data = bytearray(SAMPLE_PNG.read_bytes())
    data[200:260] = b"\x00" * 60  # Pillow decodes this, TensorFlow's decoder does not
    request = image_feature_pb2.BatchExtractImageFeaturesRequest(images=[image_bytes(1), bytes(data)])
    await expect(stubs.image.BatchExtractImageFeatures(request), INVALID, "images[1]", "corrupt", field="images[1]")
