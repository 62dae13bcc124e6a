"""`acg2vec tfserving-emulator`: the TF-Serving test double (acg2vec_server/testing) as a process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from acg2vec_server.cli.options import models_root, repository_option, setup_logging


@click.command("tfserving-emulator")
@repository_option
@click.option("--listen", default="127.0.0.1:8500", show_default=True)
@click.option(
    "--enable-batching/--no-enable-batching", default=True, show_default=True,
    help="TF-Serving's --enable_batching: every Predict through the batch scheduler, with its rules.",
)  # fmt: skip
@click.option(
    "--batching-parameters-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TF-Serving's BatchingParameters text file (default: the deployment's, k8s/base/tfserving).",
)  # fmt: skip
def tfserving_emulator(
    repository: Path | None, listen: str, enable_batching: bool, batching_parameters_file: Path | None
) -> None:
    """Serve the repository over TF-Serving's PredictionService API (stands in for tensorflow_model_server)."""
    from acg2vec_server.testing.tfserving_emulator import DEFAULT_BATCHING, BatchingParameters, start_emulator

    setup_logging("INFO")
    batching = None
    if enable_batching:
        batching = (
            BatchingParameters.parse(batching_parameters_file.read_text())
            if batching_parameters_file
            else DEFAULT_BATCHING
        )

    async def run() -> None:
        emulator = await start_emulator(models_root(repository), listen, batching=batching)
        click.echo(
            f"PredictionService on port {emulator.port}, repository {models_root(repository)}, batching {batching}"
        )
        await emulator.wait_for_termination()

    asyncio.run(run())
