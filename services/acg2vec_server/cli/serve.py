"""`acg2vec serve`: the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from acg2vec_server.cli.options import make_settings, settings_options, setup_logging


@click.command()
@settings_options
def serve(**overrides: Any) -> None:
    """Run the gRPC server (embedded backends unless configured otherwise)."""
    from acg2vec_server.transport.security import Security, SecurityConfigError

    settings = make_settings(overrides)
    setup_logging(settings.log_level, fmt=settings.log_format)
    try:
        Security.from_settings(settings)  # fail fast, before the heavy imports and any backend
    except SecurityConfigError as e:
        raise click.ClickException(f"refusing to start: {e}") from None
    if settings.tag_thresholds_file:
        from acg2vec_server.domain.tagging import read_tag_thresholds

        try:
            read_tag_thresholds(settings.tag_thresholds_file)
        except ValueError as e:
            raise click.ClickException(f"refusing to start: {e}") from None

    from acg2vec_models import repository
    from acg2vec_server.app import serve as run

    if settings.inference_backend == "inprocess" and not repository.model_names(settings.models_root):
        logging.getLogger("acg2vec").warning(
            "model repository %s is empty: run `acg2vec models build-defaults` (services stay NOT_SERVING until then)",
            settings.models_root,
        )
    from acg2vec_server.backends.milvus_standalone import StandaloneUnavailable

    try:
        asyncio.run(run(settings))
    except (SecurityConfigError, StandaloneUnavailable) as e:
        raise click.ClickException(f"refusing to start: {e}") from None
