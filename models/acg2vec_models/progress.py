"""Progress bars for long work (downloads, features, training, indexing): on a terminal only.

In a pod, a CI job or any redirected output a bar would fill the log with carriage-return redraws, so every tqdm in
the CLI and the model builds passes `disable=None`, which tqdm defines as "off when the bar's stream is not a TTY";
libraries that draw their own bars (sentence-transformers' encode) get `show_progress_bar=on_terminal()`.
tests/test_progress.py checks both, and every call site.
"""

from __future__ import annotations

import sys
from typing import TextIO

#: tqdm(disable=ON_TERMINAL_ONLY): the bar shows only when its stream (stderr by default) is a terminal.
ON_TERMINAL_ONLY = None


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default stderr, where bars go) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
