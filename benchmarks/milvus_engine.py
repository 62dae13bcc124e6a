"""What a real Milvus engine (not Milvus Lite) gives on this machine for top-10 search over N vectors: recall@10
against exact search, QPS and p50/p99 latency with 1 and 16 concurrent clients, unfiltered and with a rating
filter (prints numbers; not a test). A yardstick for the service on Milvus Lite, whose search is an O(N) loop.

The engine is the embedded Milvus 2.3 standalone server of the PyPI package `milvus` (a real `milvus run
standalone` child process, with etcd and local storage in the data dir), reached over gRPC with pymilvus. The
collection mirrors the service's (VARCHAR id `syn-<i>`, one FLOAT_VECTOR `image_vector`, INT8 `rating` 1-4
cycling, so `rating in [1, 2]` keeps half; Milvus 2.3 takes one vector field per collection), bounded
consistency, HNSW with metric COSINE. Vectors: the Gaussian mixture of search_scale.py (same chunks, same seeds),
L2-normalised, inserted in chunks of 10,000, flushed, indexed, loaded. Queries: fresh points of the same
mixture (another seed); ground truth: exact cosine top-10 over all N in NumPy (with and without the filter).
Each client is a thread with its own MilvusClient (a dedicated gRPC connection); the latencies include
pymilvus's request encoding and result decoding, as the service's own calls would.

    .venv/bin/pip install -e '.[standalone]'    # the embedded server (scripts/setup.sh installs it)
    .venv/bin/python benchmarks/milvus_engine.py --n 100000
    .venv/bin/python benchmarks/milvus_engine.py --n 1000000 --seconds 20
    .venv/bin/python benchmarks/milvus_engine.py --n 1000000 --ef 64    # a rerun reuses the loaded collection

The server's data lives in --data-dir (default .cache/bench/milvus-engine-<n>; ~600 MB at N=20,000, of which
250 MB are the unpacked binaries): a rerun with the same N, dim, M and efConstruction only restarts the server,
loads and queries (its first search waits ~25 s for the previous server's sessions to expire: ready_s);
--reload builds it again. The server is stopped, and its process killed if it lingers, on exit, Ctrl-C or
SIGTERM. One such server at a time per machine: the binary locks /run/milvus/standalone.pid.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import CHUNK, chunk, mixture, percentiles, process_tree_rss_mb

from acg2vec_server.backends.embedded_redis import free_port
from acg2vec_testing.paths import ROOT

COLLECTION = "acg2vec_engine_bench"
VECTOR = "image_vector"
INDEX = "image_vector_hnsw"
FILTER = "rating in [1, 2]"
INSTALL = ".venv/bin/pip install -e '.[standalone]'"


def rating(ids: np.ndarray) -> np.ndarray:
    """The synthetic rating of row i: 1-4 cycling, so FILTER keeps rows with i % 4 in (0, 1)."""
    return ids % 4 + 1


def ground_truth(queries: np.ndarray, n: int, dim: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k row numbers over all n rows, without and with FILTER (the vectors are unit length)."""
    from tqdm import tqdm

    best = [(np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)) for _ in range(2)]
    for c in tqdm(range((n + CHUNK - 1) // CHUNK), desc="ground truth", unit="chunk", leave=False):
        scores = queries @ chunk(c, n, dim).T
        ids = np.arange(c * CHUNK, c * CHUNK + scores.shape[1])
        keep = np.isin(rating(ids), (1, 2))
        for slot, (s, i) in enumerate([(scores, ids), (scores[:, keep], ids[keep])]):
            all_scores = np.concatenate([best[slot][0], s], 1)
            all_ids = np.concatenate([best[slot][1], np.broadcast_to(i, s.shape)], 1)
            top = np.argsort(-all_scores, axis=1)[:, :k]
            best[slot] = (np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_ids, top, 1))
    return best[0][1], best[1][1]


# -- the embedded server


def own_milvus_pids(base_dir: Path) -> list[int]:
    """Processes running this data dir's milvus binary (`<base_dir>/bin/milvus run standalone`), from /proc."""
    exe = str(base_dir / "bin" / "milvus")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 3 and argv[0].decode(errors="replace") == exe and argv[1:3] == [b"run", b"standalone"]:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
        found += children
        todo += children
    return found


def kill_all(pids: list[int], grace_s: float) -> None:
    """SIGTERM, wait up to grace_s for the processes to go, SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class EmbeddedMilvus:
    """milvus.default_server in base_dir on a free port; stop() always leaves no milvus process of ours behind."""

    def __init__(self, base_dir: Path):
        try:
            from milvus import default_server
        except ImportError:
            sys.exit(f"the embedded Milvus server is not installed; install it into the venv with:\n    {INSTALL}")
        self.server = default_server
        self.base_dir = base_dir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.pid: int | None = None

    def start(self) -> None:
        stale = own_milvus_pids(self.base_dir)
        if stale:  # a run killed without its finally (SIGKILL) left its server holding this data dir
            print(f"stopping a stale Milvus server of {self.base_dir}: pids {stale}", file=sys.stderr)
            kill_all(stale, grace_s=30)
        self.server.set_base_dir(str(self.base_dir))
        self.server.listen_port = self.port
        try:
            self.server.start()  # waits for /healthz
        finally:
            if self.server.server_proc is not None:
                self.pid = self.server.server_proc.pid

    def rss_mb(self) -> float:
        return process_tree_rss_mb(self.pid) if self.pid else 0.0

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after grace_s for the process, its children and any other server of this data
        dir. A graceful stop of the 2.3 standalone does not finish: its query node waits ~30 s to hand its
        segments to the already stopped query coordinator, then the proxy retries the gone root coordinator; so
        the kill comes soon. Flushed data and the etcd metadata survive it (a rerun reuses them), but the
        killed server's node sessions stay in etcd until their TTL runs out: a rerun's first search waits for
        that (ready_s)."""
        pids = [self.pid, *descendants(self.pid)] if self.pid else []
        kill_all(pids, grace_s=grace_s)
        self.server.stop()  # closes its log files; the process is gone already
        left = own_milvus_pids(self.base_dir)
        if left:
            kill_all(left, grace_s=5)
        if self.pid:  # what the binary writes outside the data dir (it ignores MILVUS_RUN_DIR)
            Path(f"/tmp/milvus/server_id_{self.pid}").unlink(missing_ok=True)
            pid_file = Path("/run/milvus/standalone.pid")
            with contextlib.suppress(OSError):
                if pid_file.read_text().strip() == str(self.pid):
                    pid_file.unlink()
        self.pid = None


# -- data


def connect(uri: str) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, dedicated=True, timeout=60)


def build(client: Any, args: argparse.Namespace) -> dict[str, float]:
    """Create, insert, flush, index: the collection from scratch. Returns the timings."""
    from pymilvus import DataType, MilvusClient
    from tqdm import tqdm

    if client.has_collection(COLLECTION):
        client.drop_collection(COLLECTION)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=args.dim)
    schema.add_field("rating", DataType.INT8)
    client.create_collection(COLLECTION, schema=schema, consistency_level="Bounded")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with tqdm(total=args.n, desc="insert", unit="row", unit_scale=True) as bar:
        for c in range((args.n + CHUNK - 1) // CHUNK):
            vectors = chunk(c, args.n, args.dim)
            ids = np.arange(c * CHUNK, c * CHUNK + len(vectors))
            ratings = rating(ids)
            rows = [
                {"id": f"syn-{i}", VECTOR: v, "rating": int(r)} for i, v, r in zip(ids, vectors, ratings, strict=True)
            ]
            client.insert(COLLECTION, rows)
            bar.update(len(rows))
    timings["insert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    client.flush(COLLECTION)
    timings["flush_s"] = time.perf_counter() - t0

    index = MilvusClient.prepare_index_params()
    index.add_index(
        VECTOR, index_type="HNSW", index_name=INDEX, metric_type="COSINE",
        params={"M": args.m, "efConstruction": args.ef_construction},
    )  # fmt: skip
    t0 = time.perf_counter()
    client.create_index(COLLECTION, index, sync=False)
    with tqdm(total=args.n, desc="index", unit="row", unit_scale=True) as bar:
        while True:
            info = client.describe_index(COLLECTION, INDEX) or {}
            bar.n = int(info.get("indexed_rows", 0))
            bar.refresh()
            if info.get("state") == "Finished" and int(info.get("pending_index_rows", 0)) == 0:
                break
            if info.get("state") == "Failed":
                raise RuntimeError(f"index build failed: {info}")
            time.sleep(1)
    timings["index_build_s"] = time.perf_counter() - t0
    return timings


def reusable(client: Any, args: argparse.Namespace, marker: Path) -> bool:
    """The data dir holds this run's collection, fully indexed, with exactly N rows."""
    if not marker.exists() or json.loads(marker.read_text()) != built_with(args):
        return False
    if not client.has_collection(COLLECTION):
        return False
    if client.get_collection_stats(COLLECTION).get("row_count") != args.n:
        return False
    info = client.describe_index(COLLECTION, INDEX) or {}
    return info.get("state") == "Finished" and int(info.get("indexed_rows", -1)) == args.n


def built_with(args: argparse.Namespace) -> dict[str, int]:
    return {"n": args.n, "dim": args.dim, "m": args.m, "ef_construction": args.ef_construction}


# -- queries


def search_once(
    client: Any, vector: list[float], ef: int, expr: str, collection: str = COLLECTION, field: str = VECTOR
) -> list[int]:
    result = client.search(
        collection, data=[vector], anns_field=field, limit=10, filter=expr,
        search_params={"metric_type": "COSINE", "params": {"ef": ef}},
    )  # fmt: skip
    return [int(str(hit["id"]).removeprefix("syn-")) for hit in result[0]]


def wait_serviceable(client: Any, vector: list[float], ef: int, timeout_s: float = 600) -> float:
    """Seconds until a search answers (after a restart, the shard leader may still be the killed server's query
    node until its session expires)."""
    t0 = time.perf_counter()
    while True:
        try:
            search_once(client, vector, ef, "")
            return time.perf_counter() - t0
        except Exception as e:
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"Milvus not serving searches after {timeout_s} s: {e}") from e
            time.sleep(1)


def recall(client: Any, vectors: list[list[float]], truth: np.ndarray, ef: int, expr: str) -> float:
    """Mean recall@10 over all queries (one sequential pass; also the warm-up)."""
    hits = [len(set(search_once(client, v, ef, expr)) & set(t)) for v, t in zip(vectors, truth.tolist(), strict=True)]
    return float(np.mean(hits)) / 10


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(uri: str, vectors: list[list[float]], ef: int, expr: str, clients: int, seconds: float,
            stop: threading.Event, server_pid: int | None, collection: str = COLLECTION,
            field: str = VECTOR) -> dict[str, float]:  # fmt: skip
    """`clients` threads, each with its own connection, searching back to back for `seconds`; also the CPU the
    benchmark's own process (the clients) and the server used meanwhile, in cores (1.0 = one core busy)."""
    connections = [connect(uri) for _ in range(clients)]
    for c in connections:
        search_once(c, vectors[0], ef, expr, collection, field)  # warm the connection
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    counter = itertools.count()
    deadline = time.perf_counter() + seconds

    def client_loop(k: int) -> None:
        try:
            while not stop.is_set() and time.perf_counter() < deadline:
                v = vectors[next(counter) % len(vectors)]
                t0 = time.perf_counter()
                search_once(connections[k], v, ef, expr, collection, field)
                latencies[k].append(time.perf_counter() - t0)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(clients)]
    start, client_cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_s(server_pid)
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins keep Ctrl-C responsive
    elapsed = time.perf_counter() - start
    client_cpu, server_cpu = time.process_time() - client_cpu, cpu_s(server_pid) - server_cpu
    for c in connections:
        c.close()
    if errors:
        raise errors[0]
    flat = [x for per_client in latencies for x in per_client]
    return {
        "qps": round(len(flat) / elapsed, 1), "requests": len(flat),
        **{k: round(v, 2) for k, v in percentiles(flat).items()},
        "client_cores": round(client_cpu / elapsed, 2), "server_cores": round(server_cpu / elapsed, 2),
    }  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'filter':<18} {'clients':>7} {'QPS':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'recall@10':>9} "
        f"{'cores client/server':>19}"
    ]
    for r in results:
        lines.append(
            f"{r['filter'] or '-':<18} {r['clients']:>7} {r['qps']:>8.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['mean_ms']:>8.2f} {r['recall@10']:>9.4f} {r['client_cores']:>9.2f}/{r['server_cores']:<9.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, help="the default illust2vec's output size")
    parser.add_argument("--m", type=int, default=16, help="HNSW M")
    parser.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction")
    parser.add_argument("--ef", type=int, default=128, help="HNSW ef at search time (as ACG2VEC_HNSW_EF_SEARCH)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level and filter")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--reload", action="store_true", help="drop the collection and build it again")
    args = parser.parse_args()
    data = (args.data_dir or ROOT / ".cache" / "bench" / f"milvus-engine-{args.n}").resolve()
    data.mkdir(parents=True, exist_ok=True)
    marker = data / ".built.json"

    server = EmbeddedMilvus(data)  # fails early, with the install command, if the server package is missing
    queries = mixture(args.queries, args.dim, seed=99)
    vectors = queries.tolist()
    t0 = time.perf_counter()
    truth, truth_filtered = ground_truth(queries, args.n, args.dim)
    report: dict[str, Any] = {
        "engine": "milvus-standalone-2.3.5", **built_with(args), "ef": args.ef, "queries": args.queries,
        "exact_search_s_per_query_numpy": round((time.perf_counter() - t0) / len(queries), 4),
    }  # fmt: skip

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally below
    try:
        t0 = time.perf_counter()
        server.start()
        report["server_start_s"] = round(time.perf_counter() - t0, 1)
        print(f"Milvus server up in {report['server_start_s']} s at {server.uri} (data: {data})", file=sys.stderr)
        client = connect(server.uri)
        report["server_version"] = client.get_server_version()
        report["reused"] = not args.reload and reusable(client, args, marker)
        if not report["reused"]:
            marker.unlink(missing_ok=True)
            report |= {k: round(v, 1) for k, v in build(client, args).items()}
            report["insert_rows_per_s"] = round(args.n / report["insert_s"])
            marker.write_text(json.dumps(built_with(args)))
        t0 = time.perf_counter()
        client.load_collection(COLLECTION)
        report["load_s"] = round(time.perf_counter() - t0, 1)
        try:
            report["segments"] = len(client.list_loaded_segments(COLLECTION))
        except Exception:  # the listing API is newer than the 2.3 server on some paths; it is only informative
            report["segments"] = None
        report["ready_s"] = round(wait_serviceable(client, vectors[0], args.ef), 1)
        print(json.dumps({k: v for k, v in report.items() if k.endswith("_s") or k in ("reused", "segments")}))

        results = []
        for expr, expected in (("", truth), (FILTER, truth_filtered)):
            hit_rate = round(recall(client, vectors, expected, args.ef, expr), 4)
            for clients in [int(c) for c in args.clients.split(",")]:
                result = {"filter": expr, "clients": clients, "recall@10": hit_rate}
                result |= measure(server.uri, vectors, args.ef, expr, clients, args.seconds, stop, server.pid)
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
        report["server_rss_mb"] = round(server.rss_mb())
        client.close()
        report["results"] = results
        print(table(results))
        print(json.dumps(report))
    finally:
        stop.set()
        t0 = time.perf_counter()
        server.stop()
        print(f"Milvus server stopped in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
