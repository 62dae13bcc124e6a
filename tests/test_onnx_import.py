"""ONNX taggers: tiny random-weight models of each published family (tests/support/onnx_sources.py), exported with each
source's interface, go through `acg2vec models import onnx`; the SavedModel fed encoded bytes must give
onnxruntime's probabilities on the source's own preprocessing (written here with Pillow, as each source's code does
it) within 1e-4, on real illustrations and the test image. The in-graph preprocessing is also compared with those
references value for value on all the images, and the real server serves one imported tagger."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image
from prometheus_client import REGISTRY

from acg2vec.v1 import common_pb2, tagging_pb2
from acg2vec_models.export import read_labels
from acg2vec_models.importers import ImportFailed
from acg2vec_models.importers.onnx_tagger import INTERFACES, import_onnx_tagger, read_camie_tags
from acg2vec_models.preprocessing import preprocess_batch
from acg2vec_models.vocab import read_selected_tags_csv, read_tags_txt
from acg2vec_server.cli.main import main
from acg2vec_testing.model_repository import copy_repository, dev_model_repository
from acg2vec_testing.paths import ROOT, SAMPLE_PNG, SHARED_IMAGES
from tests.support.onnx_sources import cached_sources
from tests.support.servers import serving

TOLERANCE = 1e-4
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def _images() -> list[bytes]:
    """The four real illustrations, the test image (RGBA, 320 x 240), and three made from the illustrations: a wide
    JPEG crop, a tall grayscale PNG, a small picture (upscaled by the sources that resize up)."""
    real = [p.read_bytes() for p in sorted(SHARED_IMAGES.glob("*.jpg"))]
    chika, kyouko, marin = (Image.open(SHARED_IMAGES / f"{n}.jpg") for n in ("chika", "kyouko", "marin"))
    return [
        *real,
        SAMPLE_PNG.read_bytes(),
        _encode(chika.crop((0, 250, 1200, 950)), "JPEG"),
        _encode(kyouko.crop((200, 0, 617, 817)).convert("L"), "PNG"),
        _encode(marin.resize((300, 210), Image.Resampling.BICUBIC), "PNG"),
    ]


IMAGES = _images()


# ---------------------------------------------------------------- the sources' preprocessing, as their code does it
def wd_v3_input(encoded: bytes, size: int = 448) -> np.ndarray:
    """SmilingWolf's wd-tagger app: RGBA composited on white, pad to a white square of side max(w, h) (left/top =
    delta // 2), Pillow BICUBIC to size when the side differs, float32 0..255, RGB -> BGR; NHWC."""
    image = Image.open(io.BytesIO(encoded)).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    side = max(image.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    return np.asarray(padded, dtype=np.float32)[:, :, ::-1]


def camie_v2_input(encoded: bytes, size: int = 512) -> np.ndarray:
    """Camie v2's inference code: RGBA / P converted to RGB (alpha dropped), the longer side to size keeping the
    aspect ratio (int() of the other), LANCZOS, pasted centred on (124, 116, 104), / 255, ImageNet mean / std;
    NCHW."""
    image = Image.open(io.BytesIO(encoded))
    if image.mode in ("RGBA", "P"):
        image = image.convert("RGB")
    width, height = image.size
    aspect = width / height
    if aspect > 1:
        new_w, new_h = size, int(size / aspect)
    else:
        new_h, new_w = size, int(size * aspect)
    image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (124, 116, 104))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    x = np.asarray(canvas, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def pixai_input(encoded: bytes, size: int = 448) -> np.ndarray:
    """PixAI's handler: RGBA (or P) pasted on white with its alpha as mask, else convert("RGB"); torchvision
    Resize((448, 448)) = Pillow BILINEAR; ToTensor (/ 255); Normalize(0.5, 0.5); NCHW."""
    image = Image.open(io.BytesIO(encoded))
    if image.mode in ("RGBA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    else:
        image = image.convert("RGB")
    x = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return ((x - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1)


def deepdanbooru_input(encoded: bytes, size: int = 512) -> np.ndarray:
    from tests.support.source_models import deepdanbooru_reference_input

    return deepdanbooru_reference_input(encoded, size)


REFERENCE_INPUT = {"wd-v3": wd_v3_input, "camie-v2": camie_v2_input, "pixai": pixai_input,
                   "deepdanbooru": deepdanbooru_input}  # fmt: skip
#: source folder -> (interface it must be detected as, output compared, the output is logits)
SOURCES = {
    "wd-vit": ("wd-v3", "output", False),
    "wd-eva02": ("wd-v3", "output", False),
    "wd-swinv2": ("wd-v3", "output", False),
    "wd-convnext": ("wd-v3", "output", False),
    "camie-v2": ("camie-v2", "refined_predictions", True),
    "pixai": ("pixai", "prediction", False),
    "deepdanbooru": ("deepdanbooru", "activation_1", False),
}


@pytest.fixture(scope="module")
def sources() -> dict[str, Path]:
    return cached_sources(ROOT / ".cache")


@dataclass(frozen=True)
class CliImport:
    """What `acg2vec models import onnx` printed about one import."""

    interface: str
    input: str
    output_name: str
    tags: int
    path: Path
    difference: float | None  # from onnxruntime, when the command compared


def cli_import(source: Path, repo: Path, name: str, *flags: str) -> CliImport:
    result = CliRunner().invoke(main, ["models", "import", "onnx", str(source), "--repository", str(repo), "--name",
                                       name, *flags])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    output, tags = re.fullmatch(r"(\S+) \((\d+) tags\)", lines["output"]).groups()  # type: ignore[union-attr]
    difference = lines.get("largest difference from onnxruntime on 2 pictures")
    return CliImport(
        lines["interface"].removesuffix(" (detected)"), lines["input"], output, int(tags),
        Path(lines[f"{name} version 1"]), float(difference) if difference else None,
    )  # fmt: skip


#: the source whose import the command also checks against onnxruntime (the test below checks them all)
VERIFIED = "wd-eva02"


@pytest.fixture(scope="module")
def imported(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliImport]:
    """Each source imported with the command line, its interface detected."""
    repo = tmp_path_factory.mktemp("onnx-repo")
    flags = {source: () if source == VERIFIED else ("--no-verify",) for source in SOURCES}
    return {source: cli_import(sources[source], repo, source, *flags[source]) for source in SOURCES}


def family_images(source: str) -> list[bytes]:
    """Three of IMAGES for one family: two real illustrations and one of the others, a different choice for each
    family, so that together they use them all (the preprocessing test runs every interface on all of them)."""
    i = list(SOURCES).index(source)
    return [IMAGES[i % 4], IMAGES[(i + 1) % 4], IMAGES[4 + i % 4]]


def onnxruntime_probabilities(
    model_file: Path, interface: str, output: str, logits: bool, images: list[bytes]
) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    batch = np.stack([REFERENCE_INPUT[interface](b) for b in images])
    (result,) = session.run([output], {session.get_inputs()[0].name: batch})
    return 1.0 / (1.0 + np.exp(-result.astype(np.float64))) if logits else result


@pytest.mark.parametrize("source", list(SOURCES))
def test_imported_onnx_tagger_gives_onnxruntime_probabilities_on_encoded_images(source, sources, imported):
    interface, output, logits = SOURCES[source]
    result = imported[source]
    assert result.interface == interface and result.output_name == output
    if source == VERIFIED:
        assert result.difference is not None and result.difference < TOLERANCE  # the command's own check
        assert result.input == "input float32 Nx448x448x3, 448 px"
    model_file = next(sources[source].glob("*.onnx"))
    images = family_images(source)
    expected = onnxruntime_probabilities(model_file, interface, output, logits, images)
    served = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    scores = served(image_bytes=tf.constant(images))["scores"].numpy()
    assert scores.shape == expected.shape == (len(images), result.tags)
    assert np.abs(scores - expected).max() < TOLERANCE
    # the probabilities vary from image to image, so agreeing on them means something
    assert expected.std(axis=0).mean() > 0.005


@pytest.mark.parametrize("interface", list(INTERFACES))
def test_in_graph_preprocessing_matches_the_sources_code(interface):
    prep = INTERFACES[interface].preprocessing(INTERFACES[interface].default_size)
    ours = preprocess_batch(tf.constant(IMAGES), prep).numpy()
    reference = np.stack([REFERENCE_INPUT[interface](b) for b in IMAGES])
    if INTERFACES[interface].layout == "NCHW":
        reference = reference.transpose(0, 2, 3, 1)
    tolerance = 2e-5 if interface == "deepdanbooru" else 1e-6  # float rounding of the normalisation only
    assert np.abs(ours - reference).max() <= tolerance


def test_labels_carry_the_tag_files_names_and_categories(sources, imported):
    def labels(path: Path) -> tuple[list[str], list[str]]:
        return read_labels(tf.saved_model.load(str(path)))

    names, categories = labels(imported["wd-eva02"].path)
    csv = read_selected_tags_csv(sources["wd-eva02"] / "selected_tags.csv")
    assert names == [t.name for t in csv] and categories == [t.category for t in csv]
    assert names[:4] == ["general", "sensitive", "questionable", "explicit"] and set(categories[:4]) == {"rating"}
    names, categories = labels(imported["camie-v2"].path)
    camie = read_camie_tags(sources["camie-v2"] / "camie-tagger-v2-metadata.json")
    assert names == [t.name for t in camie] and categories == [t.category for t in camie]
    assert "year" not in categories and {"rating", "character", "general", "meta"} <= set(categories)
    names, _ = labels(imported["deepdanbooru"].path)
    assert names == [t.name for t in read_tags_txt(sources["deepdanbooru"] / "tags.txt")]


def test_import_refuses_what_does_not_fit(sources, tmp_path):
    with pytest.raises(ImportFailed, match="takes float32 NHWC"):
        import_onnx_tagger(sources["pixai"], tmp_path / "repo", interface="wd-v3")
    folder = tmp_path / "no-tags"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((sources["wd-vit"] / "model.onnx").read_bytes())
    with pytest.raises(ImportFailed, match="cannot tell which tagger"):
        import_onnx_tagger(folder, tmp_path / "repo")
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,solo,0,5\n", encoding="utf-8")
    with pytest.raises(ImportFailed, match="lists 1 tags"):
        import_onnx_tagger(folder, tmp_path / "repo")
    assert not (tmp_path / "repo" / "tagger").exists()
    refused = CliRunner().invoke(main, ["models", "import", "onnx", str(sources["pixai"]), "--interface", "wd-v3",
                                        "--repository", str(tmp_path / "repo")])  # fmt: skip
    assert refused.exit_code == 1 and "Error: " in refused.output and "give the interface" in refused.output


def test_a_conversion_that_fails_its_check_installs_nothing(sources, tmp_path):
    """The check sees the SavedModel before it becomes a version: refused, the repository is as it was."""
    seen: list[Path] = []

    def check(result) -> None:
        seen.append(result.path)
        assert (result.path / "saved_model.pb").exists() and not result.path.name.isdigit()
        raise ImportFailed("differs from onnxruntime")

    with pytest.raises(ImportFailed, match="differs"):
        import_onnx_tagger(sources["deepdanbooru"], tmp_path / "repo", check=check)
    assert seen and not seen[0].exists() and list((tmp_path / "repo" / "tagger").iterdir()) == []


async def test_the_server_tags_with_an_imported_onnx_tagger(imported, tmp_path, redis_server):
    """The real server over a repository holding the imported Camie v2 tagger (ratings named rating_*, characters),
    with a per-tag thresholds file and the tagger's own batch size and timeout: its scores, categories and
    ratings; the file under the request's options; MCut on characters; a batch request run in chunks."""
    result = imported["camie-v2"]
    repo = copy_repository(dev_model_repository(), tmp_path / "repo", only=["illust2vec", "deepix", "acgvoc2vec"])
    (repo / "tagger").mkdir()
    (repo / "tagger" / "1").symlink_to(result.path)
    loaded = tf.saved_model.load(str(result.path))
    scores = loaded.signatures["serving_default"](image_bytes=tf.constant(IMAGES[:3]))["scores"].numpy()
    names, category_list = read_labels(loaded)
    categories = np.array(category_list)
    row, general, characters = scores[0], categories == "general", categories == "character"
    always = names[int(np.argmin(np.where(general, row, 2)))]  # the least likely general tag, below 0.5
    never = names[int(np.argmax(np.where(general, row, -1)))]  # the most likely one, above 0.5
    assert row[names.index(always)] < 0.5 <= row[names.index(never)]
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text(f"tag,threshold\n{always},0\n{never},1\n", encoding="utf-8")

    def expected(keep: np.ndarray) -> list[str]:
        kept = np.flatnonzero(keep & (categories != "rating"))
        return [names[i] for i in kept[np.argsort(-row[kept], kind="stable")]]

    settings = dict(tag_thresholds_file=thresholds, batch_max_size_per_model="tagger=2",
                    inference_timeout_s_per_model="tagger=120", max_top_k=1000)  # fmt: skip
    async with serving(repo, tmp_path / "data", redis_server.url, "onnx:v1", **settings) as stubs:

        async def tag(**options) -> tagging_pb2.ImageTags:
            options = tagging_pb2.TagOptions(top_k=1000, **options)
            return (await stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=IMAGES[0], options=options))).result

        file_thresholds = np.where(np.array(names) == always, 0.0, np.where(np.array(names) == never, 1.0, 0.5))
        default = await tag()
        assert [t.name for t in default.tags] == expected(row >= file_thresholds)
        assert always in [t.name for t in default.tags] and never not in [t.name for t in default.tags]
        np.testing.assert_allclose([t.score for t in default.tags], [row[names.index(t.name)] for t in default.tags],
                                   atol=1e-5)  # fmt: skip
        assert {common_pb2.TagCategory.Name(t.category) for t in default.tags} <= {
            "TAG_CATEGORY_GENERAL", "TAG_CATEGORY_CHARACTER", "TAG_CATEGORY_META"}  # fmt: skip
        ratings = {r.rating: r.score for r in default.rating_scores}  # from rating_general ... rating_explicit
        assert len(ratings) == 4 and default.rating == max(ratings, key=ratings.__getitem__)
        assert never in [t.name for t in (await tag(tag_thresholds={never: 0.0})).tags]  # the request's tag wins
        opened = await tag(thresholds=tagging_pb2.CategoryThresholds(general=0.0))  # its category wins too
        assert never in [t.name for t in opened.tags] and len(opened.tags) > len(default.tags)

        shut = tagging_pb2.CategoryThresholds(general=1.0, meta=1.0)
        mcut = await tag(thresholds=shut, modes=tagging_pb2.CategoryModes(character=tagging_pb2.THRESHOLD_MODE_MCUT))
        values = row[characters].astype(np.float64)
        ordered = np.sort(values)[::-1]
        gap = int(np.argmax(ordered[:-1] - ordered[1:]))
        cut = max(0.15, (ordered[gap] + ordered[gap + 1]) / 2)
        assert [t.name for t in mcut.tags] == expected(characters & (row > cut)) != []

        before = REGISTRY.get_sample_value("acg2vec_inference_batch_items_count", {"model": "tagger"}) or 0
        batch = await stubs.tagging.BatchTagImages(tagging_pb2.BatchTagImagesRequest(
            images=IMAGES[:3], options=tagging_pb2.TagOptions(top_k=5)))  # fmt: skip
        after = REGISTRY.get_sample_value("acg2vec_inference_batch_items_count", {"model": "tagger"})
        assert after - before == 2  # the tagger's batch size is 2: two model runs, of two images and one
        for result_tags, image_scores in zip(batch.results, scores, strict=True):
            keep = (categories != "rating") & (image_scores >= file_thresholds)
            np.testing.assert_allclose([t.score for t in result_tags.tags], np.sort(image_scores[keep])[::-1][:5],
                                       atol=1e-5)  # fmt: skip
