"""`acg2vec collections`: the vector collections per space and model version; make a re-indexed version live.

Opens the stores directly, as `acg2vec repair` does (with Milvus Lite, stop the server first: one process holds
its file; with a Milvus server, a running acg2vec server follows a switch within one health probe interval).
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from acg2vec_server.cli.options import make_settings, settings_options, setup_logging

SPACES = ("image", "text")


def _run(settings: Any, work: Any) -> Any:
    from acg2vec_server.app import Core
    from acg2vec_server.domain.errors import Acg2vecError

    async def run() -> Any:
        core = await Core.open(settings)
        try:
            return await work(core)
        finally:
            await core.close()

    try:
        return asyncio.run(run())
    except Acg2vecError as e:
        raise click.ClickException(e.message) from None


async def _newest(core: Any, settings: Any, space: str) -> Any:
    """The configured model of a space at its newest installed version (text space: the joint image–text model when
    one is installed, else the text model; in-process: from the repository's folders, without loading TensorFlow;
    TF-Serving: what it serves)."""
    from acg2vec_models import repository
    from acg2vec_server.domain.errors import FailedPrecondition
    from acg2vec_server.domain.types import ModelRef

    models = core.domain.models
    name = models.image_name if space == "image" else await models.choose_text_space(None)
    if settings.inference_backend == "inprocess":
        version = repository.latest_version(settings.models_root, name)
        if version is None:
            raise FailedPrecondition(f"no version of {name} under {settings.models_root}; install one first")
        return ModelRef(name, version)
    return ModelRef(name, (await models.describe(name)).version)


@click.group()
def collections() -> None:
    """Vector collections per space and model version; the live one of each space is the alias's."""


@collections.command()
@settings_options
def status(**overrides: Any) -> None:
    """List the collections (rows, live or not) and what each space needs: nothing, or a re-index and a switch."""
    settings = make_settings(overrides)
    setup_logging("WARNING", fmt=settings.log_format)

    async def work(core: Any) -> None:
        vectors = core.vectors
        infos = await vectors.collections()
        click.echo(f"{'collection':<60} {'space':<6} {'version':>7} {'dim':>5} {'rows':>10}  live")
        for c in infos:
            live = "live" if c.live else ""
            click.echo(f"{c.name:<60} {c.space:<6} {c.model.version:>7} {c.dim:>5} {c.rows:>10}  {live}")
        click.echo(f"metadata records: {await core.meta.count()}")
        for space in SPACES:
            newest = await _newest(core, settings, space)
            live = await vectors.live(space, newest.name)
            if live is None:
                click.echo(f"{space}: no live collection yet (a server creates {newest.name} v{newest.version}'s)")
            elif live == newest:
                click.echo(f"{space}: live {live.name} v{live.version}, the newest installed: nothing to do")
            else:
                click.echo(
                    f"{space}: live {live.name} v{live.version}; installed {newest.name} v{newest.version}: re-index "
                    "with a server started with --milvus-collections next, then `acg2vec collections switch`"
                )

    _run(settings, work)


@collections.command()
@click.option("--space", type=click.Choice([*SPACES, "all"]), default="all", show_default=True)
@click.option("--force", is_flag=True, help="switch even if the new collection lacks illustrations")
@settings_options
def switch(space: str, force: bool, **overrides: Any) -> None:
    """Make the newest installed model version's collection live (one alias change per space). Refuses while that
    collection lacks illustrations the metadata store has: finish the re-index first, or --force."""
    settings = make_settings(overrides)
    setup_logging("WARNING", fmt=settings.log_format)

    async def work(core: Any) -> None:
        vectors = core.vectors
        stored = await core.meta.ids()
        for s in SPACES if space == "all" else (space,):
            newest = await _newest(core, settings, s)
            live = await vectors.live(s, newest.name)
            if live == newest:
                click.echo(f"{s}: {newest.name} v{newest.version} is live already")
                continue
            missing = stored - await vectors.ids(s, newest)
            if missing and not force:
                raise click.ClickException(
                    f"{s}: the {newest.name} v{newest.version} collection lacks {len(missing)} of {len(stored)} "
                    f"illustrations (e.g. {sorted(missing)[:3]}); re-index them with a server started with "
                    "--milvus-collections next (`acg2vec index`), or switch anyway with --force"
                )
            await vectors.set_live(s, newest)
            was = f"v{live.version}" if live else "none"
            click.echo(f"{s}: live is now {newest.name} v{newest.version} (was {was})")

    _run(settings, work)


@collections.command()
@click.argument("space", type=click.Choice(SPACES))
@click.argument("version", type=int)
@click.option("--model", default=None, help="model name (default: the configured model of the space)")
@click.option("--yes", is_flag=True, help="do not ask")
@settings_options
def drop(space: str, version: int, model: str | None, yes: bool, **overrides: Any) -> None:
    """Drop the collection of one model version (never the live one), e.g. the old version after a switch."""
    from acg2vec_server.domain.types import ModelRef

    settings = make_settings(overrides)
    setup_logging("WARNING", fmt=settings.log_format)
    name = model or (settings.image_feature_model if space == "image" else settings.text_model)
    if not yes:
        click.confirm(f"drop the {space} vectors of {name} v{version}?", abort=True)

    async def work(core: Any) -> None:
        await core.vectors.drop(space, ModelRef(name, version))
        click.echo(f"dropped the {space} collection of {name} v{version}")

    _run(settings, work)
