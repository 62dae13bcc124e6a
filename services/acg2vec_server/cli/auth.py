"""`acg2vec auth`: make tokens and their tokens-file lines (docs/security.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from acg2vec_server.transport.auth import MIN_TOKEN_CHARS, SCOPES, hash_token, make_token, parse_tokens


def _line(name: str, scopes: str, token: str) -> str:
    line = f"{name} {scopes} {hash_token(token)}"
    parse_tokens(line, "the new entry")  # the same checks the server applies
    return line


def _append(tokens_file: Path, line: str) -> None:
    """Appends one line, creating the file readable by its owner only."""
    existing = tokens_file.read_text(encoding="utf-8") if tokens_file.exists() else ""
    parse_tokens(existing + "\n" + line, str(tokens_file))  # no duplicate name or token
    fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(("" if not existing or existing.endswith("\n") else "\n") + line + "\n")


@click.group()
def auth() -> None:
    """Tokens for the server's token authentication (ACG2VEC_AUTH=token, the default)."""


@auth.command("make-token")
@click.argument("name")
@click.option("--scopes", default="read", show_default=True, help=f"comma list of {', '.join(SCOPES)}")
@click.option(
    "--tokens-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="append the hashed entry to this tokens file (created with mode 600)",
)  # fmt: skip
def make_token_command(name: str, scopes: str, tokens_file: Path | None) -> None:
    """Make a random token for NAME. The token goes to stdout (give it to the client; it is not stored
    anywhere); the tokens-file line with its sha256 goes to stderr, or into --tokens-file."""
    token = make_token()
    try:
        line = _line(name, scopes, token)
        if tokens_file is not None:
            _append(tokens_file, line)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if tokens_file is None:
        click.echo(f"# tokens-file line for the server:\n{line}", err=True)
    else:
        click.echo(f"added {name} ({scopes}) to {tokens_file}", err=True)
    click.echo(token)


@auth.command("hash-token")
@click.argument("name")
@click.option("--scopes", default="read", show_default=True, help=f"comma list of {', '.join(SCOPES)}")
def hash_token_command(name: str, scopes: str) -> None:
    """Read an existing token from stdin and print its tokens-file line (the server then keeps only the hash)."""
    token = sys.stdin.readline().strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or c == ";" for c in token):
        raise click.ClickException(f"a token has at least {MIN_TOKEN_CHARS} characters, no spaces and no ';'")
    try:
        click.echo(_line(name, scopes, token))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
