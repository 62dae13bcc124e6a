"""ONNX taggers (WD v3, Camie v2, PixAI, DeepDanbooru exports) -> `tagger`, converted to a TensorFlow SavedModel.

Each published ONNX tagger has its own interface: input layout, size, colour order, value range, preprocessing,
output and tag file. `INTERFACES` holds one entry per source; `detect` picks one from the files in the folder
and the model's input layout (or the caller names it), and the import checks the ONNX input and output against
it. The graph is converted node by node (acg2vec_models.onnx_tf) and wrapped so that `serving_default(image_bytes)`
decodes and preprocesses in the graph exactly as the source's reference code does (Pillow's resampling
included) and returns probabilities; `labels()` carries the tag file's names and categories.

- wd-v3: NHWC 448, BGR 0..255; white square of side max(h, w), Pillow BICUBIC; its [N, T] output (sigmoid);
  selected_tags.csv.
- camie-v2: NCHW 512, RGB with ImageNet mean / std; longer side to 512 with LANCZOS, padded with (124, 116, 104);
  `refined_predictions` (logits); the metadata json (idx_to_tag, tag_to_category).
- pixai: NCHW 448, RGB (x / 255 - 0.5) / 0.5; alpha on white, BILINEAR stretch; `prediction` (sigmoid; `output`
  in later ports, beside `logits` and `embedding`); selected_tags.csv.
- deepdanbooru: NHWC 512, RGB 0..1; DeepDanbooru's own preprocessing (area resize, edge padding); its [N, T]
  output (sigmoid); tags.txt (or a csv).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from acg2vec_models.importers import ImportFailed
from acg2vec_models.importers.common import finish, version_dir
from acg2vec_models.preprocessing import (
    ImagePreprocessing,
    camie_v2_preprocessing,
    deepdanbooru_preprocessing,
    pixai_preprocessing,
    wd_v3_preprocessing,
)
from acg2vec_models.vocab import (
    CATEGORIES,
    TagEntry,
    category_files,
    read_selected_tags_csv,
    read_tags_txt,
)

log = logging.getLogger(__name__)
Layout = Literal["NHWC", "NCHW"]


@dataclass(frozen=True)
class Interface:
    """How one source feeds its ONNX model and reads its output."""

    name: str
    source: str
    layout: Layout
    default_size: int
    preprocessing: Callable[[int], ImagePreprocessing]
    #: Output names to use, in order of preference; none found: the one output with a column per tag.
    outputs: tuple[str, ...]
    #: The chosen output holds logits: the SavedModel applies the sigmoid.
    logits: bool


INTERFACES: dict[str, Interface] = {
    i.name: i
    for i in (
        Interface("wd-v3", "SmilingWolf's WD v3 taggers (EVA02, ViT, SwinV2, ConvNeXt)", "NHWC", 448,
                  wd_v3_preprocessing, (), False),
        Interface("camie-v2", "Camie Tagger v2", "NCHW", 512, camie_v2_preprocessing, ("refined_predictions",), True),
        Interface("pixai", "PixAI tagger (ONNX port)", "NCHW", 448, pixai_preprocessing, ("prediction", "output"),
                  False),
        Interface("deepdanbooru", "DeepDanbooru (ONNX export)", "NHWC", 512, deepdanbooru_preprocessing, (), False),
    )
}  # fmt: skip


@dataclass(frozen=True)
class ImportedTagger:
    name: str
    version: int
    path: Path
    interface: str
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str
    tags: int
    op_types: list[str]
    size: int = 0
    model_file: Path | None = None


#: The steps of an import, in order, as `import_onnx_tagger` reports them to its `progress` callback.
IMPORT_STEPS = ("reading the ONNX model", "checking the interface and the tag file", "writing the SavedModel")


def find_onnx(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ImportFailed(f"{path} does not exist; give an .onnx file or the folder that holds it")
    if (path / "model.onnx").exists():
        return path / "model.onnx"
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ImportFailed(f"{path} holds {len(found)} .onnx files ({names}); give the model file itself")
    return found[0]


def _camie_metadata(folder: Path) -> Path | None:
    for candidate in sorted(folder.glob("*.json")):
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and "tag_mapping" in data.get("dataset_info", {}):
            return candidate
    return None


def detect(folder: Path, layout: Layout | None) -> str:
    """The interface a folder's files say: a Camie metadata json, DeepDanbooru's tags.txt, or selected_tags.csv
    (NCHW input: PixAI; NHWC: WD v3)."""
    if _camie_metadata(folder):
        return "camie-v2"
    if (folder / "tags.txt").exists() or (folder / "project.json").exists():
        return "deepdanbooru"
    if (folder / "selected_tags.csv").exists():
        return "pixai" if layout == "NCHW" else "wd-v3"
    raise ImportFailed(
        f"cannot tell which tagger {folder} holds (no selected_tags.csv, Camie metadata json or tags.txt); "
        f"give --interface ({', '.join(INTERFACES)}) and --tags"
    )


def _category(name: str) -> str:
    name = name.lower()
    if name == "year":
        return "meta"
    return name if name in CATEGORIES else "general"


def read_camie_tags(path: Path) -> list[TagEntry]:
    """Camie's metadata json: dataset_info.tag_mapping.idx_to_tag {index: tag} and tag_to_category {tag: name};
    its "year" tags become meta (our categories have no year)."""
    mapping = json.loads(path.read_text(encoding="utf-8"))["dataset_info"]["tag_mapping"]
    idx_to_tag = {int(k): v for k, v in mapping["idx_to_tag"].items()}
    if sorted(idx_to_tag) != list(range(len(idx_to_tag))):
        raise ImportFailed(f"{path}: idx_to_tag does not number the tags 0..{len(idx_to_tag) - 1}")
    categories = mapping.get("tag_to_category", {})
    return [TagEntry(idx_to_tag[i], _category(categories.get(idx_to_tag[i], "general"))) for i in sorted(idx_to_tag)]


def read_tags(interface: str, folder: Path, tags: Path | None) -> tuple[list[TagEntry], Path]:
    """The vocabulary in output order, from --tags or the folder's tag file of that interface."""
    if interface == "camie-v2":
        path = tags or _camie_metadata(folder)
        if path is None:
            raise ImportFailed(f"no Camie metadata json in {folder}; give it with --tags")
        return read_camie_tags(path), path
    if tags is None:
        candidates = [folder / "selected_tags.csv", folder / "tags.txt", *sorted(folder.glob("*tags*.csv"))]
        tags = next((p for p in candidates if p.exists()), None)
        if tags is None:
            raise ImportFailed(f"no selected_tags.csv (or tags.txt) in {folder}; give the tag file with --tags")
    if tags.suffix == ".txt":
        return read_tags_txt(tags, category_files(tags.parent)), tags
    if tags.suffix == ".json":
        return read_camie_tags(tags), tags
    return read_selected_tags_csv(tags), tags


def _input_layout(shape: tuple[int | None, ...] | None) -> Layout | None:
    if shape is None or len(shape) != 4:
        return None
    if shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    return None


def _choose_output(graph: Any, interface: Interface, tag_count: int) -> str:
    names = [o.name for o in graph.outputs]
    for wanted in interface.outputs:
        if wanted in names:
            return wanted
    fitting = [o.name for o in graph.outputs if o.shape and o.shape[-1] == tag_count]
    if len(fitting) == 1:
        return fitting[0]
    if len(names) == 1:
        return names[0]
    if interface.name == "camie-v2" and len(names) >= 2:
        return names[1]  # Camie's order: initial, refined, selected candidates
    raise ImportFailed(f"cannot tell which of the outputs {names} holds the {tag_count} tag scores")


def import_onnx_tagger(
    path: Path,
    root: Path,
    name: str = "tagger",
    interface: str | None = None,
    tags: Path | None = None,
    progress: Callable[[str], None] | None = None,
    check: Callable[[ImportedTagger], None] | None = None,
) -> ImportedTagger:
    """Converts an ONNX tagger (a folder with the model and its tag file, or the .onnx file) into a new version of
    `name` in the model repository. `progress` is called with each of IMPORT_STEPS as it starts (a big model
    takes tens of seconds to read and to write). `check` sees the written SavedModel before it becomes a version
    (servers serve the newest version at once); raising ImportFailed there leaves the repository as it was."""
    import tensorflow as tf

    from acg2vec_models.export import export_wrapped_image_model
    from acg2vec_models.onnx_tf import OnnxGraph, UnsupportedOnnx

    step = progress or (lambda _: None)
    path = Path(path)
    model_file = find_onnx(path)
    folder = model_file.parent
    step(IMPORT_STEPS[0])
    try:
        graph = OnnxGraph(model_file)
    except UnsupportedOnnx as e:
        raise ImportFailed(str(e)) from None
    if len(graph.inputs) != 1:
        raise ImportFailed(f"{model_file} takes {[i.name for i in graph.inputs]}; a tagger takes one image batch")
    (image_input,) = graph.inputs
    step(IMPORT_STEPS[1])
    layout = _input_layout(image_input.shape)
    chosen = interface or detect(folder, layout)
    if chosen not in INTERFACES:
        raise ImportFailed(f"unknown interface {chosen!r}; one of {', '.join(INTERFACES)}")
    spec = INTERFACES[chosen]
    if image_input.dtype != tf.float32 or layout != spec.layout:
        raise ImportFailed(
            f"{model_file}: input {image_input.name} is {image_input.dtype.name} {list(image_input.shape or [])}; "
            f"{spec.source} takes float32 {spec.layout} with 3 channels: give the interface the model was exported "
            "with (--interface), or none to detect it"
        )
    spatial = image_input.shape[1:3] if layout == "NHWC" else image_input.shape[2:4]
    size = spatial[0] or spatial[1] or spec.default_size
    if spatial[0] and spatial[1] and spatial[0] != spatial[1]:
        raise ImportFailed(f"{model_file}: input {list(image_input.shape)} is not square")
    entries, tag_file = read_tags(chosen, folder, tags)
    output = _choose_output(graph, spec, len(entries))
    output_info = next(o for o in graph.outputs if o.name == output)
    if output_info.shape and output_info.shape[-1] not in (None, len(entries)):
        raise ImportFailed(f"{model_file}: output {output} has {output_info.shape[-1]} columns but {tag_file} lists "
                           f"{len(entries)} tags")  # fmt: skip
    input_name, nchw, logits = image_input.name, layout == "NCHW", spec.logits
    single = image_input.shape[0] == 1  # exported with a fixed batch of one: run the images one by one

    def run(images: tf.Tensor) -> tf.Tensor:
        x = tf.transpose(images, [0, 3, 1, 2]) if nchw else images
        scores = graph(**{input_name: x})[output]
        return tf.sigmoid(scores) if logits else scores

    def call(images: tf.Tensor) -> dict[str, tf.Tensor]:
        if single:
            scores = tf.map_fn(lambda one: run(one[None])[0], images, fn_output_signature=tf.float32)
        else:
            scores = run(images)
        scores = tf.ensure_shape(scores, [None, len(entries)])
        return {"scores": scores}

    log.info("importing %s as %s (%s, %d tags, %d px)", model_file, chosen, spec.source, len(entries), size)
    step(IMPORT_STEPS[2])
    target = version_dir(root, name)
    staging = target.with_name(f".import-{target.name}")  # not a version: servers ignore it until the rename
    export_wrapped_image_model(graph, call, staging, spec.preprocessing(int(size)), entries)
    result = ImportedTagger(
        name=name, version=int(target.name), path=staging, interface=chosen, input_name=input_name,
        input_shape=tuple(image_input.shape or ()), output_name=output, tags=len(entries), op_types=graph.op_types,
        size=int(size), model_file=model_file,
    )  # fmt: skip
    try:
        if check is not None:
            check(result)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    finish(root)
    return replace(result, path=target)


#: How far the imported model's probabilities may be from onnxruntime's (`acg2vec models import onnx --verify`).
VERIFY_TOLERANCE = 1e-4


def check_images() -> list[bytes]:
    """Two made-up pictures (a wide one with transparency, a tall JPEG) for `compare_with_onnxruntime`."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = []
    for (w, h), mode, fmt in (((300, 200), "RGBA", "PNG"), ((180, 260), "RGB", "JPEG")):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1) + rng.normal(0, 20, (h, w, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
        if mode == "RGBA":
            image.putalpha(Image.fromarray((xx * 255 // w).astype(np.uint8)))
        out = io.BytesIO()
        image.save(out, format=fmt)
        pictures.append(out.getvalue())
    return pictures


def compare_with_onnxruntime(result: ImportedTagger, images: list[bytes] | None = None) -> float:
    """Largest |difference| between the imported SavedModel's probabilities and onnxruntime's on the same
    preprocessed pixels (the graph's own preprocessing, so this checks the conversion). Needs onnxruntime."""
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    from acg2vec_models.preprocessing import preprocess_batch

    if result.model_file is None:
        raise ValueError("the import result does not say which ONNX file it came from")
    images = images or check_images()
    spec = INTERFACES[result.interface]
    prep = spec.preprocessing(result.size)
    pixels = tf.function(lambda batch: preprocess_batch(batch, prep))(tf.constant(images)).numpy()
    if spec.layout == "NCHW":
        pixels = pixels.transpose(0, 3, 1, 2)
    session = onnxruntime.InferenceSession(str(result.model_file), providers=["CPUExecutionProvider"])
    batches = [pixels[i : i + 1] for i in range(len(images))] if result.input_shape[:1] == (1,) else [pixels]
    expected = np.concatenate([session.run([result.output_name], {result.input_name: b})[0] for b in batches])
    if spec.logits:
        expected = 1.0 / (1.0 + np.exp(-expected.astype(np.float64)))
    served = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    scores = served(image_bytes=tf.constant(images))["scores"].numpy()
    return float(np.abs(scores - expected).max())
