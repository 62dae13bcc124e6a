"""Top frames of a py-spy profile in collapsed-stack form (the `--profile` output of the speed benchmarks).

Prints, as shares of all samples: each thread's share; the frames with the most samples on top of the stack
(self: where the CPU or the wait is); and chosen groups of work by the frames they contain (inclusive: a sample
counts once per group it falls in), so the questions of issue 16 read as one table.

    .venv/bin/python benchmarks/profile_summary.py var/profiles/tagging.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

#: Kinds of work, recognised by a substring of any frame of the stack (first match wins within a group list).
GROUPS = {
    "TensorFlow model call (in-process backend)": ("_predict (acg2vec_server/backends/inprocess.py",),
    "image check (Pillow decode, inputs.check_image)": ("check_image (acg2vec_server/domain/inputs.py",),
    "tokenising (TextTokenizer)": ("__call__ (acg2vec_models/text/tokens.py",),
    "batcher (domain/batching.py)": ("acg2vec_server/domain/batching.py",),
    "proto building (servicers/convert.py)": ("acg2vec_server/transport/servicers/convert.py",),
    "tag cutting (domain/tagging.py)": ("acg2vec_server/domain/tagging.py",),
    "normalising (models.normalize)": ("normalize (acg2vec_server/domain/models.py",),
    "interceptors (auth, admission, observability)": ("acg2vec_server/transport/observability.py",
                                                        "acg2vec_server/transport/admission.py",
                                                        "acg2vec_server/transport/auth.py"),
    "Milvus (pymilvus, milvus-lite)": ("pymilvus", "milvus_lite"),
    "Redis (redis-py)": ("redis/",),
    "gRPC core (cygrpc, aio server loop)": ("grpc/_cython", "cygrpc"),
    "asyncio event loop (select, callbacks)": ("base_events.py", "selectors.py"),
    "thread pool idle wait": ("_worker (concurrent/futures/thread.py",),
}  # fmt: skip


def read(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    """`fn (path/to/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    return re.sub(r"\((?:[^()]*/(?:site-packages|lib/python3\.\d+|services|models|clients/python/src)/)", "(", frame)


OURS = re.compile(r"^(\S+) \(((?:acg2vec_server|acg2vec_models|acg2vec)/[^:]+)")


def owners(stacks: list[tuple[list[str], int]]) -> Counter[str]:
    """Samples by the innermost frame of our packages (function and file); stacks without one by thread role."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        owner = None
        for frame in reversed(frames):
            if m := OURS.match(short(frame)):
                owner = f"{m.group(1)} ({m.group(2)})"
                break
        if owner is None:
            joined = ";".join(frames)
            if "_worker (concurrent/futures/thread.py" in joined:
                owner = "(idle worker threads)"
            elif "grpc" in joined:
                owner = "(gRPC core, outside our code)"
            elif "asyncio" in joined:
                owner = "(asyncio loop, outside our code)"
            else:
                owner = "(other, outside our code)"
        counts[owner] += n
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    stacks = read(args.profile)
    total = sum(n for _, n in stacks) or 1
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for frames, n in stacks:
        threads[frames[0] if frames[0].startswith(("thread", "process")) else "?"] += n
        leaves[short(frames[-1])] += n
        joined = ";".join(frames)
        for group, needles in GROUPS.items():
            if any(needle in joined for needle in needles):
                groups[group] += n
    print(f"{args.profile}: {total} samples")
    print("\nsamples by thread:")
    for name, n in threads.most_common(8):
        print(f"  {100 * n / total:5.1f} %  {name}")
    cpu_file = args.profile.with_suffix(".cpu.tsv")
    if cpu_file.exists():  # written by _common.profiled: CPU seconds per native thread id over the same span
        rows = [line.split("\t") for line in cpu_file.read_text().splitlines() if line]
        wall = float(rows[0][1])
        names = {re.search(r"\((\d+)\)", t).group(1): t.split(": ", 1)[-1] for t in threads if "(" in t}  # type: ignore[union-attr]
        cpu: Counter[str] = Counter()
        for tid, seconds, comm in rows[1:]:  # threads py-spy did not see (TensorFlow's pools): their OS names
            name = names.get(tid) or f"{comm} (native)"
            cpu[re.sub(r"[_-]\d+( \(native\))?$", r"_*\1", name)] += float(seconds)
        print(f"\nCPU by thread over {wall:.1f} s (cores busy: {sum(cpu.values()) / wall:.2f}):")
        for name, seconds in cpu.most_common(10):
            print(f"  {100 * seconds / max(sum(cpu.values()), 1e-9):5.1f} %  {seconds:7.1f} s  {name}")
    print("\nkinds of work (inclusive):")
    for name, n in groups.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("\nby the deepest frame of our code (exclusive; what it calls in libraries is included):")
    for name, n in owners(stacks).most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {name}")
    print(f"\ntop {args.top} frames (self):")
    for name, n in leaves.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
