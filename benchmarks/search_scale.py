"""Search at scale through the gRPC service: recall@10 against exact search, QPS and p50/p99 latency with 1 and
16 concurrent clients, over N synthetic vectors (prints numbers; not a test).

The vectors are a Gaussian mixture (clusters, like real embeddings), L2-normalised, loaded through the
adapters (MilvusVectorStore.upsert in batches, RedisMetadataStore.put of full records, vectors included) into
Milvus and the embedded Redis-protocol server; then `acg2vec serve` runs on that data with a model repository
whose embedders have the production output sizes, and clients send raw-vector queries (queries: fresh points of
the same mixture), without and with a rating filter (`general`: half the rows). Ground truth: exact cosine top-10
over all N in NumPy (with the filter: over the rows it keeps).

--engine lite (default): Milvus Lite, the embedded default. --engine standalone: the Milvus 2.3 standalone server
(PyPI `milvus`), which the server starts itself (`acg2vec serve --milvus-standalone`, data under the data dir);
then the same run also measures the bare engine (benchmarks/milvus_engine.py's threaded pymilvus clients on the
same collection, same ef and filter) and prints the service's 16-client QPS as a ratio of it.

    .venv/bin/python benchmarks/search_scale.py --n 100000
    .venv/bin/python benchmarks/search_scale.py --n 1000000 --image-dim 512 --text-dim 512
    .venv/bin/python benchmarks/search_scale.py --engine standalone --n 100000

The data set is cached under --data-dir (default .cache/bench/search-<n>-<dims>-<index>): a rerun only queries
(--load-only loads and stops, so that the long load can run while the machine is busy and the queries when it is
quiet).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _common import CHUNK, chunk, mixture, percentiles, process_tree_rss_mb, server_process, shaped_repository

from acg2vec_testing.paths import ROOT
from acg2vec_testing.services import SEARCH


async def load(args: argparse.Namespace, data: Path) -> None:
    from acg2vec_server.backends.embedded_redis import EmbeddedRedis
    from acg2vec_server.backends.milvus import MilvusVectorStore
    from acg2vec_server.backends.redis import RedisMetadataStore
    from acg2vec_server.domain.illustrations.consistency import to_row
    from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, ModelRef, TagScore

    redis = EmbeddedRedis(data / "redis")
    redis.start(timeout_s=1800)
    # Bulk load only: fsync the append-only file once a second instead of on every write (this disk needs ~10 ms
    # per fsync); the server itself runs with the embedded default, appendfsync always.
    import redis as redis_py

    redis_py.Redis.from_url(redis.url, protocol=2).config_set("appendfsync", "everysec")
    meta = RedisMetadataStore(redis.url)
    standalone = None
    uri = str(data / "milvus.db")
    if args.engine == "standalone":
        from acg2vec_server.backends.milvus_standalone import MilvusStandalone

        standalone = MilvusStandalone(data / "milvus-standalone")
        standalone.start()
        uri = standalone.uri
    vectors = MilvusVectorStore(
        uri, "acg2vec_illustrations", index_type=args.index, hnsw_m=args.m, hnsw_ef_construction=args.ef_construction,
        timeout_s=600,
    )  # fmt: skip
    image_model, text_model = ModelRef("illust2vec", 1), ModelRef("acgvoc2vec", 1)
    await vectors.bind(image_model, args.image_dim, text_model, args.text_dim)
    await vectors.set_live("image", image_model)
    await vectors.set_live("text", text_model)
    start = time.perf_counter()
    rng = np.random.default_rng(7)
    tag_pool = [f"tag_{i}" for i in range(200)]
    for c in range((args.n + CHUNK - 1) // CHUNK):
        image = chunk(c, args.n, args.image_dim)
        text = mixture(len(image), args.text_dim, seed=5000 + c)
        records = [
            IllustrationRecord(
                id=f"syn-{c * CHUNK + j}",
                metadata=IllustrationMetadata(title=f"synthetic {c * CHUNK + j}"),
                tags=[TagScore(t, 0.9, "general") for t in rng.choice(tag_pool, 5, replace=False)],
                rating=("general", "sensitive")[j % 2],
                content_sha256="0" * 64,
                image_vector=image[j],
                text_vector=text[j],
                image_model=image_model,
                text_model=text_model,
                create_time=0.0,
                update_time=0.0,
            )
            for j in range(len(image))
        ]
        for k in range(0, len(records), 500):
            await meta.put_many(records[k : k + 500])
        for k in range(0, len(records), 2000):
            await vectors.upsert([to_row(r) for r in records[k : k + 2000]])
        done = c * CHUNK + len(image)
        print(f"\rloaded {done}/{args.n} ({done / (time.perf_counter() - start):.0f}/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    if standalone is not None:
        await asyncio.to_thread(built, vectors._connect(), [vectors._names["image"], vectors._names["text"]], args.n)
    await vectors.close()
    await meta.close()
    if standalone is not None:
        standalone.stop()
    redis.stop()
    print(json.dumps({"load_s": round(time.perf_counter() - start, 1), "n": args.n}))


def built(client, names: list[str], n: int) -> None:
    """Flushes the collections and waits until their indexes cover all n rows (a server builds them in the
    background; until then, the unindexed segments are scanned)."""
    for name in names:
        client.flush(name)
    start = time.perf_counter()
    for name in names:
        while True:
            info = client.describe_index(name, "vector") or {}
            done = int(info.get("indexed_rows", 0))
            print(f"\rindex {name}: {done}/{n} rows ({time.perf_counter() - start:.0f} s)", end="", file=sys.stderr)
            if info.get("state") == "Finished" and done >= n:  # (2.3 reports pending_index_rows > 0 even then)
                break
            time.sleep(2)
        print(file=sys.stderr)
    print(json.dumps({"index_build_s": round(time.perf_counter() - start, 1)}))


def load_entry(args: argparse.Namespace, data: Path) -> None:
    asyncio.run(load(args, data))


def ground_truth(queries: np.ndarray, n: int, dim: int, k: int = 10, general_only: bool = False) -> list[list[str]]:
    """Exact top-k ids; general_only: among the rows rated general (the even ones, see load)."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for c in range((n + CHUNK - 1) // CHUNK):
        scores = queries @ chunk(c, n, dim).T
        ids = np.arange(c * CHUNK, c * CHUNK + scores.shape[1])[None, :].repeat(len(queries), 0)
        if general_only:
            scores, ids = scores[:, ::2], ids[:, ::2]  # CHUNK is even: row j of a chunk is general when j is even
        all_scores, all_ids = np.concatenate([best_scores, scores], 1), np.concatenate([best_ids, ids], 1)
        top = np.argsort(-all_scores, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_ids, top, 1)
    return [[f"syn-{i}" for i in row] for row in best_ids]


async def measure(target: str, queries: np.ndarray, truth: list[list[str]], concurrency: int, seconds: float,
                  rerank: bool, general_only: bool = False) -> dict[str, float]:  # fmt: skip
    import grpc

    from acg2vec.v1 import common_pb2, search_pb2, search_pb2_grpc

    latencies: list[float] = []
    recalls: list[float] = []
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        requests = [
            search_pb2.SearchRequest(
                vector=search_pb2.VectorQuery(values=q.tolist(), space=search_pb2.VECTOR_SPACE_IMAGE),
                top_k=10,
                exact_rerank=rerank,
                filter=search_pb2.SearchFilter(ratings=[common_pb2.RATING_GENERAL] if general_only else []),
            )
            for q in queries
        ]
        await stub.Search(requests[0])  # warm-up
        stop = time.perf_counter() + seconds
        next_query = 0

        async def client() -> None:
            nonlocal next_query
            while time.perf_counter() < stop:
                i = next_query % len(requests)
                next_query += 1
                t0 = time.perf_counter()
                response = await stub.Search(requests[i])
                latencies.append(time.perf_counter() - t0)
                if len(recalls) < len(requests):
                    recalls.append(len({h.id for h in response.hits} & set(truth[i])) / 10)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "clients": concurrency, "qps": round(len(latencies) / elapsed, 1), "requests": len(latencies),
        "recall@10": round(float(np.mean(recalls)), 4), **{k: round(v, 2) for k, v in percentiles(latencies).items()},
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--image-dim", type=int, default=512, help="the default illust2vec's output size")
    parser.add_argument("--text-dim", type=int, default=512, help="the default acgvoc2vec's output size")
    parser.add_argument("--index", default="HNSW", choices=["HNSW", "FLAT", "IVF_FLAT", "IVF_SQ8"])
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef", type=int, default=128, help="HNSW ef at search time (ACG2VEC_HNSW_EF_SEARCH)")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--rerank", action="store_true", help="also measure exact_rerank=true")
    parser.add_argument("--engine", default="lite", choices=["lite", "standalone"])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--reload", action="store_true", help="drop the cached data set and load again")
    parser.add_argument(
        "--load-only", action="store_true", help="load (and on a server index) the data set, then stop; query later"
    )
    args = parser.parse_args()
    engine = "" if args.engine == "lite" else f"-{args.engine}"
    name = f"search-{args.n}-{args.image_dim}-{args.text_dim}-{args.index}{engine}"
    data = args.data_dir or ROOT / ".cache" / "bench" / name
    if args.reload and data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    if not (data / ".loaded").exists():
        # Milvus Lite keeps its data dir locked for as long as the process that opened it lives: load in a child
        # process, so that the server can open the data afterwards.
        child = multiprocessing.get_context("spawn").Process(target=load_entry, args=(args, data))
        child.start()
        await asyncio.to_thread(child.join)
        if child.exitcode != 0:
            raise SystemExit(f"loading the data set failed (exit code {child.exitcode})")
        (data / ".loaded").write_text("ok")
    if args.load_only:
        return
    models = shaped_repository(ROOT / ".cache" / "bench" / f"models-{args.image_dim}-{args.text_dim}",
                               args.image_dim, args.text_dim)  # fmt: skip
    queries = mixture(args.queries, args.image_dim, seed=99)
    t0 = time.perf_counter()
    truth = ground_truth(queries, args.n, args.image_dim)
    print(json.dumps({"exact_search_s_per_query_numpy": round((time.perf_counter() - t0) / len(queries), 4)}))
    truth_general = ground_truth(queries, args.n, args.image_dim, general_only=True)

    from acg2vec_server.backends.embedded_redis import EmbeddedRedis

    redis = EmbeddedRedis(data / "redis")
    redis.start(timeout_s=1800)  # reading a large append-only file back takes a while
    milvus: dict[str, object] = {}
    if args.engine == "standalone":
        from acg2vec_server.backends.embedded_redis import free_port

        milvus = {"milvus_standalone": "true", "milvus_standalone_port": free_port()}
    server = server_process(
        data, model_repository=models, redis_url=redis.url,
        milvus_index_type=args.index, hnsw_ef_search=args.ef, ivf_nprobe=args.nprobe, max_top_k=1000, **milvus,
    )  # fmt: skip
    try:
        t0 = time.perf_counter()
        await server.start(timeout_s=1800, service=SEARCH)
        print(json.dumps({"server_ready_s": round(time.perf_counter() - t0, 1)}))
        results = []
        for general_only, expected in ((False, truth), (True, truth_general)):
            for concurrency in [int(c) for c in args.clients.split(",")]:
                for rerank in (False, True) if args.rerank else (False,):
                    result = await measure(
                        server.target, queries, expected, concurrency, args.seconds, rerank, general_only
                    )
                    result |= {"n": args.n, "dim": args.image_dim, "index": args.index, "rerank": rerank}
                    result |= {"filter": "rating general" if general_only else "-"}
                    if milvus and concurrency == max(int(c) for c in args.clients.split(",")) and not rerank:
                        bare = bare_engine(f"http://127.0.0.1:{milvus['milvus_standalone_port']}", queries, args,
                                           concurrency, "rating in [1]" if general_only else "")  # fmt: skip
                        result |= {"bare_engine_qps": bare["qps"], "bare_p99_ms": bare["p99_ms"]}
                        result["qps_ratio"] = round(result["qps"] / bare["qps"], 3)
                    results.append(result)
                    print(json.dumps(result))
        assert redis._process is not None
        redis_mb = process_tree_rss_mb(redis._process.pid)
        assert server.process is not None
        milvus = milvus_pids(data)  # with --milvus-standalone a child of the server: counted apart
        server_mb = sum(rss_mb(pid) for pid in descendants(server.process.pid) if pid not in milvus)
        milvus_mb = sum(process_tree_rss_mb(pid) for pid in milvus)
        print(json.dumps({"server_rss_mb": round(server_mb), "milvus_rss_mb": round(milvus_mb),
                          "redis_rss_mb": round(redis_mb)}))  # fmt: skip
    finally:
        server.stop(timeout_s=120)
        redis.stop()


def descendants(pid: int) -> list[int]:
    """pid and every process below it (children of any of its threads), from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def milvus_pids(data: Path) -> list[int]:
    """The standalone Milvus servers of this data dir (the binary under it), from /proc."""
    exe = str((data / "milvus-standalone" / "bin" / "milvus").resolve())
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).resolve() == Path(exe) and b"standalone" in argv:
            found.append(int(entry.name))
    return found


def bare_engine(uri: str, queries: np.ndarray, args: argparse.Namespace, clients: int, expr: str) -> dict:
    """The same search on the same collection straight from pymilvus (benchmarks/milvus_engine.py's clients)."""
    import threading

    from milvus_engine import measure as engine_measure

    result = engine_measure(
        uri, queries.tolist(), args.ef, expr, clients, args.seconds, threading.Event(), None,
        collection="acg2vec_illustrations_image_illust2vec_v1", field="vector",
    )  # fmt: skip
    print(json.dumps({"bare_engine": result, "filter": expr or "-"}))
    return result


if __name__ == "__main__":
    asyncio.run(main())
