"""Backend faults under load, as a table: fault, calls during it, errors, recovery time, writes lost
(prints numbers; not a test; tests/test_faults.py asserts the same behaviour in short).

The test rig (testing/acg2vec_testing/rig.py): the Redis-protocol server, a `milvus-lite server` process (reached
over http://) and the TF-Serving emulator (`acg2vec tfserving-emulator`) each as a process, `acg2vec serve` on them,
and --clients concurrent clients looping over IndexIllustration, TagImage, Search and GetIllustration. Each backend
in turn is killed (SIGKILL), held down for --down seconds after the service noticed, and restarted; the server itself
is never restarted. Last, SIGTERM to the server during a bulk index (StreamIndexIllustrations), then a restart.
Calls during: calls that started after the kill and ended before the backend answered again. Backend restart:
from the restart command until the backend answers (process start, model loading). Recovery: from then until
every broken call kind succeeds again. Writes lost: acknowledged index calls that Get or Search no longer return
afterwards (goal 0).

    .venv/bin/python benchmarks/faults.py
    .venv/bin/python benchmarks/faults.py --down 10 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

import grpc
from _common import models_or_dev

from acg2vec.v1 import search_pb2, search_pb2_grpc
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.rig import Load, Rig, outage, stored_ids
from acg2vec_testing.services import ALL_SERVICES, SEARCH

HEADER = (
    "| fault | calls during | errors | slowest failure ms | backend restart s | recovery s | acknowledged writes "
    "| writes lost |\n" + "| --- " * 8 + "|"
)


async def lost(target: str, acked: set[str]) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        got, found = await stored_ids(channel, acked)
    return len(acked - (got & found))


async def fault_row(rig: Rig, name: str, kill, restart, broken, services, clients: int, down: float) -> str:
    load = Load(rig.server.target, clients=clients)
    async with load.running(), grpc.aio.insecure_channel(rig.server.target) as channel:
        await load.wait_for("IndexIllustration", grpc.StatusCode.OK, after=0)
        fault = await outage(name, load, channel, kill, restart, broken, services, hold_s=down)
        await asyncio.sleep(1)  # calls after the recovery, in the count of acknowledged writes
    slowest = max((c.seconds for c in fault.errors), default=0) * 1000
    errors = ", ".join(f"{k} {v}" for k, v in sorted(fault.codes.items()) if k != "OK") or "0"
    return (
        f"| {name} killed | {len(fault.calls)} | {errors} | {slowest:.0f} | {fault.restart_s:.1f} | "
        f"{fault.recovery_s:.1f} | "
        f"{len(load.acked)} | {await lost(rig.server.target, load.acked)} |"
    )


async def sigterm_row(rig: Rig, after: int) -> str:
    server, acked, after_term = rig.server, set(), 0
    ended = "stream completed"

    async def requests():
        for i in range(1_000_000):
            image, meta = image_bytes(i % 50), search_pb2.IllustrationMetadata(title=f"bulk {i}")
            yield search_pb2.StreamIndexIllustrationsRequest(id=f"bulk-{i}", image=image, metadata=meta)

    async with grpc.aio.insecure_channel(server.target) as channel:
        call = search_pb2_grpc.SearchServiceStub(channel).StreamIndexIllustrations(requests())
        try:
            async for answer in call:
                if answer.HasField("outcome"):
                    acked.add(answer.id)
                    after_term += len(acked) > after
                if len(acked) == after:
                    server.signal(signal.SIGTERM)
        except grpc.aio.AioRpcError as e:
            ended = f"stream ended {e.code().name} at the grace period's end"
    code = await asyncio.to_thread(server.process.wait, 120)
    start = time.monotonic()
    rig.server = rig.make_server()
    await rig.server.start()
    restart_s = time.monotonic() - start
    return (
        f"| SIGTERM during bulk index (exit code {code}) | {after_term} items after SIGTERM | {ended} | - | "
        f"{restart_s:.1f} (the server) | - | {len(acked)} | {await lost(rig.server.target, acked)} |"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="acg2vec-faults-") as tmp:
        root = Path(tmp)
        models = copy_repository(models_or_dev(args.models), root / "models", ["tagger", "illust2vec", "acgvoc2vec"])
        rig = Rig(root, models, {"ACG2VEC_GRACE_PERIOD_S": str(args.grace)})
        await rig.start()
        try:
            print(HEADER, flush=True)
            rows = [
                ("Redis-protocol server", rig.redis.kill, lambda: asyncio.to_thread(rig.redis.start),
                 ("IndexIllustration", "Search", "GetIllustration"), (SEARCH, "")),
                ("Milvus Lite server", rig.milvus.kill, rig.milvus.start,
                 ("IndexIllustration", "Search"), (SEARCH, "")),
                ("TF-Serving", rig.tfserving.kill, rig.tfserving.start, ("IndexIllustration", "TagImage", "Search"),
                 (*ALL_SERVICES, "")),
            ]  # fmt: skip
            for name, kill, restart, broken, services in rows:
                print(await fault_row(rig, name, kill, restart, broken, services, args.clients, args.down), flush=True)
            print(await sigterm_row(rig, after=args.bulk_before_sigterm), flush=True)
        finally:
            await rig.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--down", type=float, default=5, help="seconds a backend stays down after it was noticed")
    parser.add_argument("--grace", type=float, default=5, help="the server's grace period on SIGTERM")
    parser.add_argument("--bulk-before-sigterm", type=int, default=50, help="acknowledged items before SIGTERM")
    asyncio.run(main(parser.parse_args()))
