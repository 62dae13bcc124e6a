"""`acg2vec train tagger|deepix`: train an image model on a manifest and export it into the repository
(docs/image-models-import-train.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acg2vec_server.cli.options import repository_option, setup_logging
from acg2vec_server.settings import Settings


def _echo(line: str) -> None:
    """A line between progress bars, flushed at once (a supervising process reads it as it comes)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


@click.command("train")
@click.argument("task", type=click.Choice(["tagger", "deepix"]))
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help='JSONL: one {"image": path, "tags": [...], "bookmarks"/"views"/"sanity": n} a line',
)
@repository_option
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

    setup_logging("INFO", timestamps=False)
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
