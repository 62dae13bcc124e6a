"""`acg2vec repair`: finish interrupted writes, from the stores themselves (no gRPC server is started)."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from acg2vec_server.cli.options import make_settings, settings_options, setup_logging


@click.command()
@click.option("--full", is_flag=True, help="also compare every id of both stores (restores lost rows, drops orphans)")
@settings_options
def repair(full: bool, **overrides: Any) -> None:
    """Finish interrupted writes and deletes so metadata and vectors agree (the server does this at start-up)."""
    from acg2vec_server.app import Core
    from acg2vec_server.domain.errors import Acg2vecError

    settings = make_settings(overrides)
    setup_logging(settings.log_level, fmt=settings.log_format)

    async def run() -> int:
        core = await Core.open(settings)
        try:
            illustrations = core.domain.illustrations
            await illustrations.ensure_ready()  # the collection of the installed models' vectors
            if full:
                restored, removed = await illustrations.reconcile()
                click.echo(f"restored {restored} vector rows from their records, removed {removed} orphan rows")
            return await illustrations.repair()
        finally:
            await core.close()

    try:
        click.echo(f"repaired {asyncio.run(run())} illustrations")
    except Acg2vecError as e:
        raise click.ClickException(e.message) from None
