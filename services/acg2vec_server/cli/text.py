"""`acg2vec text ...`: training data, training and evaluation of the text model acgvoc2vec (docs/text-model.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def text() -> None:
    """The text model acgvoc2vec: training pairs, training, evaluation."""


def _cache_option(fn):  # type: ignore[no-untyped-def]
    return click.option(
        "--cache-dir", type=click.Path(path_type=Path), default=None,
        help="where downloads and trained models are cached (default .cache/text)",
    )(fn)  # fmt: skip


@text.command("build-pairs")
@_cache_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="default <cache-dir>/bangumi-pairs")
def build_pairs(cache_dir: Path | None, out: Path | None) -> None:
    """Training pairs and held-out anime from bangumi-data (CC-BY-4.0; attribution written alongside)."""
    from acg2vec_models.datasets import bangumi
    from acg2vec_models.text.defaults import default_cache_dir

    cache = cache_dir or default_cache_dir()
    dataset = bangumi.build_pairs(cache, out or cache / "bangumi-pairs")
    click.echo(json.dumps(dataset.manifest(), indent=2))
    click.echo(f"written to {dataset.folder}")


@text.command("train")
@_cache_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="default <cache-dir>/acgvoc2vec-<id>")
@click.option("--evaluate/--no-evaluate", default=True, help="print held-out retrieval after training")
def train_command(cache_dir: Path | None, out: Path | None, evaluate: bool) -> None:
    """Fine-tune acgvoc2vec with the default recipe into a sentence-transformers folder (cached by recipe)."""
    from acg2vec_models.text.defaults import default_cache_dir, train_default

    trained = train_default(cache_dir or default_cache_dir(), out=out, evaluate=evaluate)
    click.echo(f"sentence-transformers model: {trained.folder}")
    for line in trained.report():
        click.echo(line)
