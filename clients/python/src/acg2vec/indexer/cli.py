"""`acg2vec index` (also `acg2vec-index`): the command line of the bulk indexer."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from acg2vec.indexer.connection import client_kwargs, connection_options
from acg2vec.indexer.journal import default_journal
from acg2vec.indexer.run import Summary, run_index


@click.command("index")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@connection_options
@click.option("--shard-index", type=int, default=0, show_default=True, help="index only the ids of this shard")
@click.option("--shard-count", type=int, default=1, show_default=True, help="number of shards (Indexed Job size)")
@click.option("--window", type=click.IntRange(1, 4096), default=64, show_default=True, help="items in flight")
@click.option("--retries", type=click.IntRange(0, 100), default=8, show_default=True, help="retries on UNAVAILABLE")
@click.option(
    "--journal", "journal", type=click.Path(path_type=Path), default=None,
    help="journal of acknowledged items (default: one per source, target and shard under ~/.cache/acg2vec)",
)  # fmt: skip
@click.option("--no-journal", is_flag=True, help="keep no journal (the server still skips unchanged items)")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None, help="also write the summary here")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bar on stderr")
def index(
    source: Path, shard_index: int, shard_count: int, window: int, retries: int, journal: Path | None,
    no_journal: bool, summary_json: Path | None, progress: bool, **connection_flags: Any,
) -> None:  # fmt: skip
    """Index SOURCE (a folder of images, or a JSONL manifest) into the server at --target.

    Folder: every PNG/JPEG/GIF/BMP/WebP file, id = its path relative to the folder without the suffix.
    Manifest: one JSON object per line with id, image (a path, relative to the manifest's folder), and
    optionally title, artist, source_url, fields {name: value} and tags (kept as the field `keywords`).
    Idempotent and resumable: run it again after a failure or a kill. Exits 1 if any item failed.
    """
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise click.BadParameter(f"need 0 <= --shard-index < --shard-count, got {shard_index} of {shard_count}")
    connection = client_kwargs(**connection_flags)
    target = connection.pop("target")
    journal_path = None if no_journal else journal or default_journal(source, target, shard_index, shard_count)

    async def main() -> Summary:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await run_index(
            source, target, shard_index=shard_index, shard_count=shard_count, journal_path=journal_path,
            window=window, retries=retries, progress=progress, **connection,
        )  # fmt: skip

    try:
        summary = asyncio.run(main())
    except asyncio.CancelledError:
        click.echo("interrupted: acknowledged items are in the journal; run the same command to resume", err=True)
        sys.exit(130)
    click.echo(summary.text())
    if journal_path is not None:
        click.echo(f"journal: {journal_path}")
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.to_json(), indent=1, ensure_ascii=False))
    sys.exit(0 if summary.ok else 1)
