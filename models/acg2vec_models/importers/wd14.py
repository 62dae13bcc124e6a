"""WD14 tagger (SmilingWolf's wd-v1-4-*-tagger-v2: a Keras SavedModel + selected_tags.csv) -> tagger.

The SavedModel's serving signature takes one float32 batch [N, H, W, 3] (448 x 448) of BGR values 0..255 and
returns one [N, T] sigmoid output, T = the rows of selected_tags.csv (tag_id,name,category,count; categories 9
rating, 0 general, 4 character). It is loaded as a SavedModel (its Keras custom layers are not needed) and
wrapped so that our `image_bytes` signature feeds it with the reference app's preprocessing
(`wd14_preprocessing`: Pillow-exact JPEG decode, alpha on white, BGR, pad to a white square of side
max(h, w, 448), area downscale rounded like OpenCV's uint8 INTER_AREA).
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from acg2vec_models.importers import ImportFailed
from acg2vec_models.importers.common import find_saved_model, finish, load_signature, version_dir
from acg2vec_models.vocab import read_selected_tags_csv


def import_wd14(model_dir: Path, root: Path, name: str = "tagger", tags_csv: Path | None = None) -> dict[str, Path]:
    from acg2vec_models.export import export_wrapped_image_model
    from acg2vec_models.preprocessing import wd14_preprocessing

    saved = find_saved_model(model_dir)
    csv_path = tags_csv or next(
        (p for p in (saved / "selected_tags.csv", model_dir / "selected_tags.csv") if p.exists()), None
    )
    if csv_path is None:
        raise ImportFailed(f"no selected_tags.csv in {model_dir}; give it with --tags")
    tags = read_selected_tags_csv(csv_path)
    sig = load_signature(saved)
    shape = sig.input_spec.shape
    if sig.input_spec.dtype != tf.float32 or shape.rank != 4 or shape[3] != 3 or shape[1] != shape[2] or not shape[1]:
        raise ImportFailed(f"{saved}: input {sig.input_name} is {sig.input_spec}; WD14 takes float32 [N, S, S, 3]")
    if len(sig.outputs) != 1:
        raise ImportFailed(f"{saved}: outputs {sorted(sig.outputs)}; WD14 has one [N, tags] output")
    ((output_name, output_spec),) = sig.outputs.items()
    if output_spec.shape[-1] != len(tags):
        raise ImportFailed(f"{saved}: {output_spec.shape[-1]} outputs but {csv_path} lists {len(tags)} tags")
    function, input_name = sig.function, sig.input_name

    def call(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": function(**{input_name: images})[output_name]}

    path = export_wrapped_image_model(
        sig.loaded, call, version_dir(root, name), wd14_preprocessing(int(shape[1])), tags
    )
    finish(root)
    return {name: path}
