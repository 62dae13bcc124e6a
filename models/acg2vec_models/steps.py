"""Wall time of each step of a long build (`acg2vec models build-defaults` prints them at the end).

Why: a first start is dominated by the default models' build; timing each step says where its minutes go. A step is
a `with step("name"):` block anywhere below `build_default_models`; a build records its steps in order, a
step that runs again (another model's) adds up under its name. Adding a step is one `with` block.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: (name, seconds) of the steps of the build in progress, in the order they first ran.
_steps: dict[str, float] = {}


def reset() -> None:
    _steps.clear()


@contextmanager
def step(name: str) -> Iterator[None]:
    """Times the block under `name` (logged when it ends, kept for `recorded()`)."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        _steps[name] = _steps.get(name, 0.0) + seconds
        print(f"[build-defaults] {name}: {seconds:.1f} s", file=sys.stderr, flush=True)


def recorded() -> list[tuple[str, float]]:
    return list(_steps.items())


def table(steps: list[tuple[str, float]], total_s: float) -> str:
    """The steps, what ran outside them (checks, imports) and the total, as aligned text lines."""
    rest = max(0.0, total_s - sum(s for _, s in steps))
    rows = [*steps, ("other (imports, checks, config)", rest), ("total", total_s)]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in rows)
