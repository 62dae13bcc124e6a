"""`acg2vec text ...` (training data, training, evaluation of acgvoc2vec) and
`acg2vec models import sentence-transformers PATH` (serve any sentence-transformers model)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from acg2vec_server.settings import Settings


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


@click.command("sentence-transformers")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="model name in the repository (default: the text model setting)")
@click.option(
    "--repository", type=click.Path(path_type=Path), default=None,
    help="model repository (default: ACG2VEC_MODEL_REPOSITORY or <data_dir>/models)",
)  # fmt: skip
@click.option("--no-check", is_flag=True, help="skip the comparison with sentence-transformers on fixed texts")
def import_sentence_transformers(path: Path, name: str | None, repository: Path | None, no_check: bool) -> None:
    """Import a sentence-transformers model folder (BERT family + pooling, or acgvoc2vec) as a new version."""
    from acg2vec_models import repository as repo
    from acg2vec_models.text.importer import CHECK_TEXTS, UnsupportedModel
    from acg2vec_models.text.importer import import_sentence_transformers as run

    settings = Settings()
    root = repository or settings.models_root
    try:
        imported = run(path, root, name or settings.text_model, check=not no_check)
    except UnsupportedModel as e:
        raise click.ClickException(str(e)) from None
    repo.write_models_config(root)
    pipeline = " + ".join(imported.pipeline)
    click.echo(f"{imported.name} version {imported.version} ({imported.dim}-d, {pipeline}): {imported.path}")
    if imported.min_cosine is None:
        click.echo("not compared with sentence-transformers (not installed, or --no-check)")
    else:
        click.echo(f"lowest cosine vs sentence-transformers on {len(CHECK_TEXTS)} texts: {imported.min_cosine:.6f}")
