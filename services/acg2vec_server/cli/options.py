"""What several commands share: one flag per setting, the --repository option, logging set-up."""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from acg2vec_server.settings import LogFormat, Settings
from acg2vec_server.telemetry import logs


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


def repository_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--repository", type=click.Path(path_type=Path), default=None,
        help="model repository (default: ACG2VEC_MODEL_REPOSITORY or <data_dir>/models)",
    )(fn)  # fmt: skip


def models_root(repository: Path | None) -> Path:
    """--repository, else the configured model repository."""
    return repository or Settings().models_root


def setup_logging(level: str = "INFO", timestamps: bool = True, fmt: LogFormat = "text") -> None:
    logs.setup(level, timestamps, fmt)
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # grpc's *synchronous* server logs handler exceptions here. Our server is grpc.aio (it logs elsewhere); the
    # only sync server in the process is Milvus Lite's, which answers pymilvus' optional AllocTimestamp call with
    # a logged NotImplementedError traceback on every connect: noise that looks like a failure.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
