"""Several server replicas on one metadata store, under a storm on the same ids, as a table (prints numbers; not a
test; tests/test_replica_storm.py asserts the same in short).

The rig (testing/acg2vec_testing/replicas.py): the Redis-protocol server (Tendis commands disabled), one Milvus
server process (`milvus-lite server`), the TF-Serving emulator and --replicas `acg2vec serve` processes on them.
--clients clients send IndexIllustration / UpdateIllustrationMetadata / DeleteIllustration (and a
GetIllustration now and then) for 50 ids, each call to the next replica in turn, for --storm seconds; at --kill-at
the last replica is SIGKILLed and started again. Then: the time until nothing is pending (the replicas' background
repair), `acg2vec repair --full`, and the verdict. Operations: calls made. Acknowledged writes: writes answered OK.
Lost: ids whose final state no history of the acknowledged writes allows (an acknowledged write that was undone;
goal 0). Partial: ids in one store only, still pending, or whose Milvus row is not the record's (goal 0).

    .venv/bin/python benchmarks/replicas.py
    .venv/bin/python benchmarks/replicas.py --storm 120 --clients 12
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import models_or_dev

from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.replicas import Replicas, milvus_lite_server, settled, storm_with_a_kill, verdict

HEADER = (
    "| replicas | clients | storm s | operations | acknowledged writes | answers other than OK | lost | partial "
    "| settled after s | repair --full |\n" + "| --- " * 10 + "|"
)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="acg2vec-replicas-") as tmp:
        root = Path(tmp)
        models = copy_repository(models_or_dev(args.models), root / "models", ["tagger", "illust2vec", "acgvoc2vec"])
        env = {"ACG2VEC_LEASE_TTL_S": str(args.lease_ttl)}
        async with milvus_lite_server(root) as milvus_uri:
            await run(Replicas(root, models, milvus_uri, count=args.replicas, server_env=env), args)


async def run(group: Replicas, args: argparse.Namespace) -> None:
    await group.start()
    try:
        start = time.monotonic()
        storm = await storm_with_a_kill(group, args.storm, args.kill_at, args.clients)
        storm_s = time.monotonic() - start
        start = time.monotonic()
        await settled(group, timeout_s=120)
        settle_s = time.monotonic() - start
        repair = " / ".join(line.strip() for line in group.repair("--full").splitlines() if line.strip())
        result = await verdict(group, storm)
        others = ", ".join(f"{k} {v}" for k, v in sorted(result.codes.items()) if k != "OK") or "0"
        print(HEADER)
        print(
            f"| {args.replicas} (one SIGKILLed at {args.kill_at:g} s, restarted) | {args.clients} | "
            f"{storm_s:.0f} | {result.operations} | {result.acknowledged_writes} | {others} | "
            f"{len(result.lost)} | {len(result.partial)} | {settle_s:.1f} | {repair} |",
            flush=True,
        )
        if result.lost or result.partial:
            print(f"lost: {result.lost}\npartial: {result.partial}")
    finally:
        await group.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=9)
    parser.add_argument("--storm", type=float, default=60, help="seconds of storm (longer if the restart is slower)")
    parser.add_argument("--kill-at", type=float, default=20, help="second of the storm at which a replica dies")
    parser.add_argument("--lease-ttl", type=float, default=6, help="ACG2VEC_LEASE_TTL_S of the replicas")
    asyncio.run(main(parser.parse_args()))
