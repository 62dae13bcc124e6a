"""`acg2vec tfserving-emulator`: the TF-Serving test double (acg2vec_server/testing) as a process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from acg2vec_server.cli.options import models_root, repository_option, setup_logging


@click.command("tfserving-emulator")
@repository_option
@click.option("--listen", default="127.0.0.1:8500", show_default=True)
def tfserving_emulator(repository: Path | None, listen: str) -> None:
    """Serve the repository over TF-Serving's PredictionService API (stands in for tensorflow_model_server)."""
    from acg2vec_server.testing.tfserving_emulator import start_emulator

    setup_logging("INFO")

    async def run() -> None:
        server, port = await start_emulator(models_root(repository), listen)
        click.echo(f"PredictionService on port {port}, repository {models_root(repository)}")
        await server.wait_for_termination()

    asyncio.run(run())
