"""The original ACG2vec's TF-Serving models (OysterQAQ/ACG2vec-model, served by ACG2vec-webapp) -> our roles.

Its image models were exported with Keras 2 `model.save` around a `Base64DecoderLayer`: serving_default takes
`b64_input_bytes` (string [N], URL-safe base64 of an encoded image; the web app sends it without padding),
decodes it with decode_image(channels=3), resizes to the model's size (bilinear, no aspect ratio) and divides by
255 inside the graph. The import keeps that graph as it is and puts our signature in front of it:
`image_bytes` -> tf.io.encode_base64(pad=False) (the URL-safe alphabet) -> the original -> renamed outputs. The
folders it knows (ACG2vec-webapp's TFServingModelInfo names):

  deepdanbooru                         -> tagger      one [N, T] sigmoid output; tags from --tags, or the
                                                       DeepDanbooru v3 vocabulary when T is 9,176
  img_semantics_feature_extract_model  -> illust2vec  one [N, D] output (DeepDanbooru add_43 + pooling)
  illust2vec                           -> illust2vec  (the older deepix-based extractor)
  img_score_feature_extract_model      -> deepix      pix2score: outputs pix2score, pix2score_1, pix2score_2
  pix2score, deepix                    -> deepix      (or bookmark_predict, view_predict, sanity_predict)

deepix outputs must have our bins (bookmarks 15, views 15, sanity 5); the first deepix (10 bins) is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from acg2vec_models import repository
from acg2vec_models.importers import ImportFailed
from acg2vec_models.importers.common import Signature, find_saved_model, finish, load_signature, version_dir
from acg2vec_models.vocab import DEEPDANBOORU_V3, TagEntry, read_tags_txt

log = logging.getLogger(__name__)

INPUT_NAME = "b64_input_bytes"
ROLES = ("tagger", "illust2vec", "deepix")
#: Folder names of ACG2vec's model repository -> our role. img_semantics... wins over the older illust2vec.
FOLDER_ROLES: dict[str, str] = {
    "deepdanbooru": "tagger",
    "img_semantics_feature_extract_model": "illust2vec",
    "illust2vec": "illust2vec",
    "img_score_feature_extract_model": "deepix",
    "pix2score": "deepix",
    "deepix": "deepix",
}
#: Output names of a deepix-style model -> our names, for each export the original project made.
DEEPIX_OUTPUTS: tuple[dict[str, str], ...] = (
    {"pix2score": "bookmarks", "pix2score_1": "views", "pix2score_2": "sanity"},
    {"bookmark_predict": "bookmarks", "view_predict": "views", "sanity_predict": "sanity"},
)
DEEPIX_BINS = {"bookmarks": 15, "views": 15, "sanity": 5}


def _check_input(sig: Signature, path: Path) -> None:
    if sig.input_name != INPUT_NAME or sig.input_spec.dtype != tf.string:
        raise ImportFailed(
            f"{path}: serving_default takes {sig.input_name} ({sig.input_spec.dtype.name}); ACG2vec models take "
            f"{INPUT_NAME} (string)"
        )


def _outputs_for(role: str, sig: Signature, path: Path, tags: list[TagEntry] | None) -> dict[str, str]:
    """Their output name -> ours."""
    if role in ("tagger", "illust2vec"):
        if len(sig.outputs) != 1:
            raise ImportFailed(f"{path}: outputs {sorted(sig.outputs)}; a {role} has one output")
        ((name, spec),) = sig.outputs.items()
        if role == "tagger" and tags is not None and spec.shape[-1] != len(tags):
            raise ImportFailed(f"{path}: {spec.shape[-1]} outputs but the vocabulary has {len(tags)} tags")
        return {name: "scores" if role == "tagger" else "embedding"}
    for mapping in DEEPIX_OUTPUTS:
        if set(mapping) <= set(sig.outputs):
            for theirs, ours in mapping.items():
                bins = sig.outputs[theirs].shape[-1]
                if bins != DEEPIX_BINS[ours]:
                    raise ImportFailed(
                        f"{path}: {theirs} has {bins} bins; the service serves {ours} over {DEEPIX_BINS[ours]} bins "
                        "(the pix2score export has them; the first deepix with 10 bins cannot be served)"
                    )
            return mapping
    raise ImportFailed(f"{path}: outputs {sorted(sig.outputs)} are not a known deepix export ({DEEPIX_OUTPUTS})")


def _default_tags(sig: Signature) -> list[TagEntry]:
    tags = read_tags_txt(DEEPDANBOORU_V3)
    (spec,) = sig.outputs.values()
    if spec.shape[-1] != len(tags):
        raise ImportFailed(
            f"the tagger has {spec.shape[-1]} outputs, not the {len(tags)} of DeepDanbooru v3: "
            "give its tags.txt with --tags"
        )
    return tags


def import_acg2vec_model(
    model_dir: Path, root: Path, role: str, name: str | None = None, tags_path: Path | None = None
) -> Path:
    """One ACG2vec SavedModel (or TF-Serving model folder) as a new version of our `role` (or `name`)."""
    from acg2vec_models.export import export_wrapped_image_model

    if role not in ROLES:
        raise ImportFailed(f"role {role!r}: use one of {ROLES}")
    saved = find_saved_model(model_dir)
    sig = load_signature(saved)
    _check_input(sig, saved)
    tags = read_tags_txt(tags_path) if tags_path else (_default_tags(sig) if role == "tagger" else None)
    renames = _outputs_for(role, sig, saved, tags)
    function = sig.function

    def call(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = function(**{INPUT_NAME: tf.io.encode_base64(image_bytes, pad=False)})
        return {ours: outputs[theirs] for theirs, ours in renames.items()}

    return export_wrapped_image_model(sig.loaded, call, version_dir(root, name or role), tags=tags)


def import_acg2vec(
    path: Path, root: Path, role: str | None = None, name: str | None = None, tags_path: Path | None = None
) -> dict[str, Path]:
    """PATH is ACG2vec's model repository (folders named as in FOLDER_ROLES), one model folder, or a SavedModel.
    Folders it does not serve (acgvoc2vec is text, dclip_*, style, recommendation) are skipped with a note."""
    is_one_model = path.name in FOLDER_ROLES or (path / repository.SAVED_MODEL_FILE).exists()
    if role is None and path.is_dir() and not is_one_model:
        chosen: dict[str, Path] = {}
        for folder_name, folder_role in FOLDER_ROLES.items():  # in priority order
            if (path / folder_name).is_dir():
                chosen.setdefault(folder_role, path / folder_name)
        if chosen:
            skipped = [p.name for p in sorted(path.iterdir()) if p.is_dir() and p not in chosen.values()]
            if skipped:
                log.warning("not imported (not an image model this service serves, or superseded): %s", skipped)
            paths = {r: import_acg2vec_model(folder, root, r, tags_path=tags_path if r == "tagger" else None)
                     for r, folder in chosen.items()}  # fmt: skip
            finish(root)
            return paths
    role = role or FOLDER_ROLES.get(path.name) or FOLDER_ROLES.get(path.parent.name)
    if role is None:
        raise ImportFailed(
            f"cannot tell what {path} is from its name; give --role ({', '.join(ROLES)}), or the folder holding "
            f"ACG2vec's model folders ({', '.join(FOLDER_ROLES)})"
        )
    out = import_acg2vec_model(path, root, role, name, tags_path)
    finish(root)
    return {name or role: out}
