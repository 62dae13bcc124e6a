"""Paths in the checkout this editable install comes from: the repository root, the shared anime images beside it,
and the sample PNG of tests/data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "images"
SAMPLE_PNG = ROOT / "tests" / "data" / "sample.png"
