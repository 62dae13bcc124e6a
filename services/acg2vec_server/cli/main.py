"""`acg2vec` command line: the click group; each command lives in its own module of this package."""

from __future__ import annotations

import click

from acg2vec.indexer.cli import index
from acg2vec_server.cli.auth import auth
from acg2vec_server.cli.collections import collections
from acg2vec_server.cli.emulator import tfserving_emulator
from acg2vec_server.cli.models import models
from acg2vec_server.cli.repair import repair
from acg2vec_server.cli.serve import serve
from acg2vec_server.cli.text import text
from acg2vec_server.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
def main() -> None:
    """acg2vec: tag anime illustrations, embed images and text, search similar illustrations (gRPC)."""


for _command in (serve, repair, collections, models, text, tfserving_emulator, auth, index, train):
    main.add_command(_command)

if __name__ == "__main__":
    main()
