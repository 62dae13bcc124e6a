"""Connection flags for CLI commands that call a running server (e.g. `acg2vec index`): target, TLS, token.

    @click.command()
    @connection_options
    def index(path, **connection):
        with Acg2vecClient(**client_kwargs(**connection)) as client: ...

The token is read from a file (a mounted Secret in Kubernetes), never taken from the command line, where every
local user could read it (ps, /proc).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_File = click.Path(exists=True, dir_okay=False, path_type=Path)


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--target", default="127.0.0.1:50051", show_default=True, help="server host:port"),
        click.option("--token-file", type=_File, default=None, help="file holding the bearer token (auth on)"),
        click.option("--tls/--no-tls", default=None, help="TLS (default: on when a --tls-* file is given)"),
        click.option("--tls-ca-file", type=_File, default=None, help="PEM CA of the server certificate (implies TLS)"),
        click.option("--tls-cert-file", type=_File, default=None, help="PEM client certificate (mutual TLS)"),
        click.option("--tls-key-file", type=_File, default=None, help="PEM client private key (mutual TLS)"),
        click.option(
            "--allow-plaintext-token",
            is_flag=True,
            default=False,
            help="send the token without TLS to another host (a trusted network only; refused otherwise)",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def client_kwargs(
    target: str,
    token_file: Path | None = None,
    tls: bool | None = None,
    tls_ca_file: Path | None = None,
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    allow_plaintext_token: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for Acg2vecClient / AsyncAcg2vecClient from the connection flags."""
    if (tls_cert_file is None) != (tls_key_file is None):
        raise click.UsageError("mutual TLS needs both --tls-cert-file and --tls-key-file")
    any_file = tls_ca_file or tls_cert_file
    if tls is False and any_file:
        raise click.UsageError("--no-tls contradicts the --tls-* files")
    kwargs: dict[str, Any] = {"target": target, "tls": bool(tls or any_file)}
    if tls_ca_file:
        kwargs["root_certificates"] = tls_ca_file.read_bytes()
    if tls_cert_file and tls_key_file:
        kwargs["certificate_chain"] = tls_cert_file.read_bytes()
        kwargs["private_key"] = tls_key_file.read_bytes()
    if token_file is not None:
        token = token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise click.UsageError(f"the token file {token_file} is empty")
        kwargs["token"] = token
        kwargs["allow_plaintext_token"] = allow_plaintext_token
    return kwargs
