"""`acg2vec train tagger|deepix|text`: train a model on your own data and install it into the repository. Image
models train on a manifest (docs/image-models-import-train.md), the text model on sentence pairs
(docs/text-model.md). Each checkpoints into its work directory; the same command continues a killed run."""

from __future__ import annotations

import json
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


@click.group("train")
def train() -> None:
    """Train a model on your own data and install it into the model repository."""


@click.command("tagger")  # also registered as `deepix`: the invoked name is the task
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
@click.pass_context
def train_image(ctx: click.Context, manifest: Path, repository: Path | None, work_dir: Path | None, backbone: str,
          backbone_path: Path | None, variant: str, width: float, input_size: int, repeats: str | None, epochs: int,
          batch_size: int, encoder_lr: float, head_lr: float, held_out_fraction: float, seed: int,
          min_tag_count: int, threshold: float, checkpoint_every: int, stop_after_steps: int | None,
          deepix_blocks: int, name: str | None) -> None:  # fmt: skip
    """Train a tagger (multi-label) or deepix (bookmark/view/sanity bins) and export it into the repository."""
    task = ctx.info_name or "tagger"
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


train.add_command(train_image, "tagger")
train.add_command(train_image, "deepix")


#: `train text` defaults: those of acgvoc2vec's recipe (acg2vec_models.text.train.Recipe, not imported here: torch)
@train.command("text")
@click.option(
    "--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
    help='JSONL, one pair a line: {"anchor": ..., "positive": ...} (or query/document, sentence1/sentence2, '
    'text1/text2), optional "group" (pairs of one group never share a batch)',
)  # fmt: skip
@click.option(
    "--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="sentence-transformers folder to fine-tune (default: the multilingual USE acgvoc2vec starts from)",
)  # fmt: skip
@repository_option
@click.option("--name", default=None, help="repository name (default: the text model setting, acgvoc2vec)")
@click.option(
    "--work-dir", type=click.Path(path_type=Path), default=None,
    help="checkpoints and the trained model; a rerun with the same one continues (default .cache/train/text)",
)  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="pairs a step; the other pairs of the batch are each pair's negatives")  # fmt: skip
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=3e-4,
              show_default=True)  # fmt: skip
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="steps between checkpoints (0: at epoch ends only)")  # fmt: skip
@click.option("--stop-after-steps", type=click.IntRange(min=1), default=None,
              help="end this run after N steps (a rerun continues)")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when PyTorch sees a GPU)")
def train_text(pairs: Path, model: Path | None, repository: Path | None, name: str | None, work_dir: Path | None,
               epochs: int, batch_size: int, learning_rate: float, checkpoint_every: int,
               stop_after_steps: int | None, seed: int, device: str | None) -> None:  # fmt: skip
    """Fine-tune a sentence encoder on your sentence pairs (in-batch negatives), then install it as a new version
    of the text model."""
    try:
        import sentence_transformers  # noqa: F401
        import torch
    except ImportError as e:
        raise click.ClickException(
            f"training needs {e.name}: install acg2vec with its training extra (pip install 'acg2vec[train]'; "
            "scripts/setup.sh does)"
        ) from None
    from tqdm import tqdm

    from acg2vec_models.progress import ON_TERMINAL_ONLY
    from acg2vec_models.text.importer import CHECK_TEXTS, UnsupportedModel, import_sentence_transformers
    from acg2vec_models.text.train import Recipe, TrainingError, read_pairs
    from acg2vec_models.text.train import train as run

    setup_logging("INFO", timestamps=False)
    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its weight-loading bars, line noise in a log
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("PyTorch sees no GPU here; give cpu, or leave it out", param_hint="--device")
    settings = Settings()
    root, name = repository or settings.models_root, name or settings.text_model
    work = work_dir or Path(".cache") / "train" / "text"
    recipe = Recipe(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    try:
        training_pairs = read_pairs(pairs)
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    if model is None:
        from acg2vec_models.text.defaults import base_model, default_cache_dir

        model = base_model(default_cache_dir())
    out = work / "model"
    with tqdm(desc="training", unit="step", dynamic_ncols=True, disable=ON_TERMINAL_ONLY) as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        try:
            outcome = run(model, training_pairs, out, recipe, progress, work_dir=work, device=device,
                          checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps, echo=_echo)  # fmt: skip
        except TrainingError as e:
            raise click.ClickException(str(e)) from None
    if not outcome.finished:
        click.echo(f"run stopped at step {outcome.steps}; the same command continues it")
        return
    installed = work / "installed.json"
    record = {"repository": str(Path(root).resolve()), "name": name, "steps": outcome.steps}
    if installed.exists():
        previous = json.loads(installed.read_text())
        if {k: previous.get(k) for k in record} == record and Path(previous["path"]).is_dir():
            click.echo(f"already trained and installed: {name} version {previous['version']} ({previous['path']})")
            return
    try:
        imported = import_sentence_transformers(out, root, name)
    except UnsupportedModel as e:
        raise click.ClickException(str(e)) from None
    installed.write_text(json.dumps({**record, "version": imported.version, "path": str(imported.path)}) + "\n")
    click.echo(f"{name} version {imported.version} ({imported.dim}-d, trained {outcome.steps} steps on "
               f"{outcome.device}): {imported.path}")  # fmt: skip
    if imported.min_cosine is not None:
        click.echo(f"lowest cosine vs sentence-transformers on {len(CHECK_TEXTS)} texts: {imported.min_cosine:.6f}")
