"""`acg2vec models import deepdanbooru|wd14|acg2vec PATH` and `acg2vec train tagger|deepix`.

Published models in, trained models out.

Both write new versions into the model repository (TF-Serving layout), which a running server picks up.
Details: docs/image-models-import-train.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from acg2vec_server.settings import Settings


def _repository_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--repository", type=click.Path(path_type=Path), default=None,
        help="model repository (default: ACG2VEC_MODEL_REPOSITORY or <data_dir>/models)",
    )(fn)  # fmt: skip


def _quiet_logs() -> None:
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _echo(line: str) -> None:
    """A line between progress bars, flushed at once (a supervising process reads it as it comes)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def _tags_option(help_text: str) -> Callable[..., Any]:
    return click.option(
        "--tags", "tags_path", type=click.Path(exists=True, path_type=Path), default=None, help=help_text
    )


def _import_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--name", default=None, help="repository name of the model (default: tagger, illust2vec or deepix)"
    )(fn)
    fn = _repository_option(fn)
    return click.argument("path", type=click.Path(exists=True, path_type=Path))(fn)


def _run_import(kind: str, path: Path, repository: Path | None, importer: Callable[[Path], dict[str, Path]]) -> None:
    from acg2vec_models.importers import ImportFailed

    _quiet_logs()
    root = repository or Settings().models_root
    click.echo(f"importing {kind} model from {path} into {root} ...")
    try:
        paths = importer(root)
    except ImportFailed as e:
        raise click.ClickException(str(e)) from None
    for model, out in sorted(paths.items()):
        click.echo(f"  {model}: {out}")


@click.command("deepdanbooru")
@_import_options
@click.option("--illust2vec-name", default="illust2vec", show_default=True, help="name of the add_43 cut")
@click.option("--verify", is_flag=True, help="also run the source with Keras 2 and compare (slower)")
def import_deepdanbooru(
    path: Path, repository: Path | None, name: str | None, illust2vec_name: str, verify: bool
) -> None:
    """DeepDanbooru project folder (project.json, tags.txt, model-*.h5) -> tagger + illust2vec."""
    from acg2vec_models.importers.deepdanbooru import import_deepdanbooru as run

    _run_import(
        "deepdanbooru", path, repository, lambda root: run(path, root, name or "tagger", illust2vec_name, verify=verify)
    )


@click.command("wd14")
@_import_options
@_tags_option("selected_tags.csv (default: the one in PATH)")
def import_wd14(path: Path, repository: Path | None, name: str | None, tags_path: Path | None) -> None:
    """WD14 tagger SavedModel folder with selected_tags.csv -> tagger."""
    from acg2vec_models.importers.wd14 import import_wd14 as run

    _run_import("wd14", path, repository, lambda root: run(path, root, name or "tagger", tags_path))


@click.command("acg2vec")
@_import_options
@_tags_option("tagger vocabulary tags.txt (default: the one in PATH, else DeepDanbooru v3)")
@click.option(
    "--role", type=click.Choice(["tagger", "illust2vec", "deepix"]), default=None,
    help="what a single model folder is (default: from its name)",
)  # fmt: skip
def import_acg2vec(
    path: Path, repository: Path | None, name: str | None, tags_path: Path | None, role: str | None
) -> None:
    """ACG2vec's TF-Serving model folder(s) (b64_input_bytes) -> tagger / illust2vec / deepix."""
    from acg2vec_models.importers.acg2vec import import_acg2vec as run

    _run_import("acg2vec", path, repository, lambda root: run(path, root, role, name, tags_path))


IMAGE_IMPORTERS = (import_deepdanbooru, import_wd14, import_acg2vec)


@click.command("train")
@click.argument("task", type=click.Choice(["tagger", "deepix"]))
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help='JSONL: one {"image": path, "tags": [...], "bookmarks"/"views"/"sanity": n} a line',
)
@_repository_option
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="checkpoints and run state; a rerun with the same one continues (default .cache/train/<task>)",
)
@click.option(
    "--backbone",
    default="deepdanbooru",
    show_default=True,
    help="deepdanbooru (fresh, at --width), deepdanbooru-project (--backbone-path), keras (--backbone-path)",
)
@click.option("--backbone-path", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--variant", default="resnet_custom_v3", show_default=True, help="DeepDanbooru family member")
@click.option("--width", type=float, default=0.25, show_default=True, help="filter width factor (fresh backbone)")
@click.option("--input-size", type=int, default=256, show_default=True, help="input pixels (fresh backbone)")
@click.option("--repeats", default=None, help="blocks per stage, e.g. 1,1,1,1,1,1 (fresh backbone; small tests)")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--encoder-lr", type=float, default=1e-5, show_default=True)
@click.option("--head-lr", type=float, default=1e-2, show_default=True)
@click.option("--held-out-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-tag-count", type=int, default=1, show_default=True, help="tagger: tags on at least N images")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="tagger: for the micro-F1")
@click.option("--checkpoint-every", type=int, default=100, show_default=True, help="steps between checkpoints")
@click.option("--stop-after-steps", type=int, default=None, help="end this run after N steps (a rerun continues)")
@click.option("--deepix-blocks", type=int, default=10, show_default=True, help="deepix: residual blocks of the head")
@click.option("--name", default=None, help="repository name (default: tagger or deepix)")
def train(task: str, manifest: Path, repository: Path | None, work_dir: Path | None, backbone: str,
          backbone_path: Path | None, variant: str, width: float, input_size: int, repeats: str | None, epochs: int,
          batch_size: int, encoder_lr: float, head_lr: float, held_out_fraction: float, seed: int,
          min_tag_count: int, threshold: float, checkpoint_every: int, stop_after_steps: int | None,
          deepix_blocks: int, name: str | None) -> None:  # fmt: skip
    """Train a tagger (multi-label) or deepix (bookmark/view/sanity bins) and export it into the repository."""
    from acg2vec_models.training.backbones import BackboneOptions
    from acg2vec_models.training.manifest import ManifestError
    from acg2vec_models.training.trainer import TrainConfig, TrainingError
    from acg2vec_models.training.trainer import train as run

    _quiet_logs()
    try:
        parsed_repeats = tuple(int(r) for r in repeats.split(",")) if repeats else None
    except ValueError:
        raise click.BadParameter(
            "give whole numbers separated by commas, e.g. 2,7,19,19,2,2", param_hint="--repeats"
        ) from None
    options = BackboneOptions(backbone_path, variant, width, input_size, parsed_repeats)
    config = TrainConfig(
        task=task,  # type: ignore[arg-type]
        manifest=manifest,
        repository=repository or Settings().models_root,
        work_dir=work_dir or Path(".cache") / "train" / task,
        backbone=backbone, backbone_options=options, epochs=epochs, batch_size=batch_size, encoder_lr=encoder_lr,
        head_lr=head_lr, held_out_fraction=held_out_fraction, seed=seed, min_tag_count=min_tag_count,
        threshold=threshold, checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps,
        deepix_blocks=deepix_blocks, name=name,
    )  # fmt: skip
    try:
        result = run(config, echo=_echo)
    except (ManifestError, TrainingError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if result.status == "stopped":
        click.echo(f"run stopped at step {result.step}/{result.total_steps}; the same command continues it")
