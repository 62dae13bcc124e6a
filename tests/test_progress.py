"""Progress bars only on a terminal: a model build's feature pass draws its bar on a TTY and writes nothing to a pipe
(a pod's log); every tqdm in the CLI, the model builds and the indexer is made that way, and every
sentence-transformers encode is told the same."""

from __future__ import annotations

import ast
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from acg2vec_models.progress import on_terminal
from acg2vec_testing.paths import ROOT

SOURCES = [ROOT / "services", ROOT / "models", ROOT / "clients" / "python" / "src" / "acg2vec"]

#: A real model-build step (frozen-backbone features over 40 images, with its bar), as the CLI runs it.
FEATURE_PASS = """
import numpy as np, tensorflow as tf
from acg2vec_models.image.features import extract
from acg2vec_models.preprocessing import ImagePreprocessing
from acg2vec_testing.images import image_bytes
images = [image_bytes(i, (40, 30)) for i in range(40)]
mean = lambda x: tf.reduce_mean(x, axis=[1, 2])
out = extract(mean, images, ImagePreprocessing(size=32), batch_size=4, desc="bar-test")
assert out["output"].shape == (40, 3)
print("done", flush=True)
"""


def _tqdm_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ((isinstance(node.func, ast.Name) and node.func.id == "tqdm") or getattr(node.func, "attr", "") == "tqdm")
    ]


def _on_terminal_only(value: ast.expr) -> bool:
    """disable=None, disable=ON_TERMINAL_ONLY, or `None if <bars wanted> else True`."""
    if isinstance(value, ast.Constant) and value.value is None:
        return True
    if isinstance(value, ast.Name) and value.id == "ON_TERMINAL_ONLY":
        return True
    return isinstance(value, ast.IfExp) and _on_terminal_only(value.body)


def test_every_progress_bar_is_drawn_on_a_terminal_only():
    calls, problems = 0, []
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            text = path.read_text()
            tree = ast.parse(text)
            for call in _tqdm_calls(tree):
                calls += 1
                disable = next((k.value for k in call.keywords if k.arg == "disable"), None)
                if disable is None or not _on_terminal_only(disable):
                    problems.append(f"{path.relative_to(ROOT)}:{call.lineno}: tqdm without disable=ON_TERMINAL_ONLY")
            if "sentence_transformers" not in text:
                continue
            for node in ast.walk(tree):  # SentenceTransformer.encode draws its own bar, by the logging level
                encode = isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "encode" and node.args
                if not encode or (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    continue
                if "show_progress_bar" not in {k.arg for k in node.keywords}:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: encode without show_progress_bar")
    assert calls >= 5, "the call sites moved: update this test"
    assert problems == []


def test_a_feature_pass_writes_no_bar_into_a_pipe():
    out = subprocess.run(
        [sys.executable, "-c", FEATURE_PASS], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done" in out.stdout
    assert "bar-test" not in out.stderr and "\r" not in out.stderr, out.stderr[-2000:]


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="no pseudo-terminals here")
def test_a_feature_pass_draws_its_bar_on_a_terminal():
    primary, secondary = pty.openpty()
    # a terminal of 24 x 100 characters (a fresh pseudo-terminal is 0 x 0, where tqdm draws an empty bar)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-c", FEATURE_PASS], stdout=subprocess.PIPE, stderr=secondary, cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 300)
        if not ready:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert process.wait(timeout=60) == 0
    assert b"bar-test" in seen and b"40/40" in seen, seen[-2000:]


def test_on_terminal_answers_for_the_stream(tmp_path):
    with (tmp_path / "log").open("w") as file:
        assert on_terminal(file) is False
    primary, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as tty:
            assert on_terminal(tty) is True
    finally:
        os.close(primary)
        os.close(secondary)
    with Path(tmp_path / "x").open("w") as closed:
        pass
    assert on_terminal(closed) is False
