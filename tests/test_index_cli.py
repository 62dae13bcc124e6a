"""`acg2vec index` as a process against the live server: the Indexed Job's arguments, journal and resume after a
SIGKILL, a connection cut mid-run, per-item failures in the summary and the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml

from acg2vec.indexer.journal import Journal
from acg2vec.indexer.sources import manifest_item, shard_of
from acg2vec.v1 import search_pb2, search_pb2_grpc
from acg2vec_server.app import Application
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import ROOT

ACG2VEC = str(Path(sys.executable).parent / "acg2vec")


def write_dataset(folder: Path, n: int, seed: int, tag: str) -> Path:
    """n small PNGs under folder/images and a manifest (relative paths, metadata, openclipart-style tags)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (folder / "images" / f"{i}.png").write_bytes(image_bytes(seed + i, size=(48, 40)))
        lines.append({
            "id": f"{tag}/{i}", "image": f"images/{i}.png", "title": f"picture {i}", "artist": "cli test",
            "source_url": f"https://example.org/{tag}/{i}", "fields": {"run": tag}, "tags": ["frog", "green"],
        })  # fmt: skip
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest_asyncio.fixture(autouse=True)
async def _clean_up(app: Application) -> AsyncIterator[None]:
    """Removes what each test indexed, so that the shared server's other tests see their own data only."""
    yield
    assert app.domain is not None
    for id in sorted(await app.domain.illustrations.meta.ids()):
        if id.startswith(("job/", "resume/", "cut/")):
            await app.domain.illustrations.delete(id)


async def run_cli(*args: str | Path, stdin: int | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        ACG2VEC, "index", *map(str, args), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def search_stub(app: Application) -> AsyncIterator[search_pb2_grpc.SearchServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


async def open_fifo_for_writing(fifo: Path, process: asyncio.subprocess.Process) -> int:
    """Waits (on the condition, not a timer) until the indexer has opened the pipe for reading."""
    for _ in range(3000):
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert process.returncode is None, "the indexer ended before it opened its manifest"
            await asyncio.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return fd
    raise AssertionError("the indexer never opened its manifest")


def summary(path: Path) -> dict:
    return json.loads(path.read_text())


def journal_entries(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


async def wait_for_lines(path: Path, n: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(3000):
        if path.exists() and len(journal_entries(path)) >= n:
            return
        assert process.returncode is None, "the indexer ended before it was killed"
        await asyncio.sleep(0.02)
    raise AssertionError(f"journal {path} did not reach {n} lines")


def job_args(target: str, manifest: Path, shard: int) -> list[str]:
    """The Indexed Job's container args with the cluster's values replaced by this test's."""
    job = yaml.safe_load((ROOT / "k8s" / "base" / "indexer" / "job.yaml").read_text())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "index"
    swap = {"/data/manifest.jsonl": str(manifest), "acg2vec:50051": target, "$(JOB_COMPLETION_INDEX)": str(shard)}
    out: list[str] = []
    rest = iter(args[1:])
    for arg in rest:
        if arg in ("--tls-ca-file", "--token-file"):  # the test server is plaintext, without tokens
            next(rest)
            continue
        out.append(swap.get(arg, arg))
    return out


async def test_indexed_job_shards_index_everything_once(app: Application, tmp_path: Path):
    target = f"127.0.0.1:{app.port}"
    manifest = write_dataset(tmp_path, 16, seed=500, tag="job")
    with manifest.open("a") as f:  # one item of each kind of failure
        f.write(json.dumps({"id": "job/missing", "image": "images/nope.png"}) + "\n")
        f.write(json.dumps({"id": "job/bad id!", "image": "images/0.png"}) + "\n")
        f.write("{not json\n")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with manifest.open("a") as f:
        f.write(json.dumps({"id": "job/broken", "image": "images/broken.png"}) + "\n")
    count = int(job_args(target, manifest, 0)[job_args(target, manifest, 0).index("--shard-count") + 1])
    runs = await asyncio.gather(*[
        run_cli(*job_args(target, manifest, shard), "--journal", tmp_path / f"j{shard}.jsonl",
                "--summary-json", tmp_path / f"s{shard}.json")
        for shard in range(count)
    ])  # fmt: skip
    created: dict[str, int] = {}
    failed: dict[str, str] = {}
    for shard, (code, out, err) in enumerate(runs):
        s = summary(tmp_path / f"s{shard}.json")
        assert code == (1 if s["failed"] else 0), (out, err)
        assert "indexed" in out and "failed" in out
        for entry in journal_entries(tmp_path / f"j{shard}.jsonl"):
            assert shard_of(entry["id"], count) == shard
            created[entry["id"]] = created.get(entry["id"], 0) + 1
        failed |= s["failed"]
        assert s["created"] == len(journal_entries(tmp_path / f"j{shard}.jsonl"))
    assert created == {f"job/{i}": 1 for i in range(16)}
    assert set(failed) == {"job/missing", "job/bad id!", "<line 19>", "job/broken"}
    assert failed["job/missing"].startswith("SOURCE: cannot read")
    assert failed["job/bad id!"].startswith("INVALID_ARGUMENT") and "not a valid id" in failed["job/bad id!"]
    assert "not valid JSON" in failed["<line 19>"]
    assert failed["job/broken"].startswith("INVALID_ARGUMENT")

    async with search_stub(app) as search:
        got = await search.GetIllustration(search_pb2.GetIllustrationRequest(id="job/3"))
    meta = got.illustration.metadata
    assert (meta.title, meta.artist, meta.source_url) == ("picture 3", "cli test", "https://example.org/job/3")
    assert dict(meta.fields) == {"run": "job", "keywords": "frog, green"}
    assert got.illustration.tags and got.illustration.rating

    # idempotent: with the journal nothing is sent; without it the server answers UNCHANGED
    code, out, _ = await run_cli(*job_args(target, manifest, 0), "--journal", tmp_path / "j0.jsonl",
                                 "--summary-json", tmp_path / "again.json")  # fmt: skip
    again = summary(tmp_path / "again.json")
    assert again["skipped"] == len(journal_entries(tmp_path / "j0.jsonl")) and again["created"] == 0
    code, out, _ = await run_cli(manifest, "--target", target, "--no-journal", "--summary-json", tmp_path / "nj.json")
    assert (
        code == 1 and summary(tmp_path / "nj.json")["unchanged"] == 16 and summary(tmp_path / "nj.json")["indexed"] == 0
    )


async def test_kill_and_resume_indexes_everything_exactly_once(app: Application, tmp_path: Path):
    """The first run reads its manifest from a pipe that stays open, so it is surely killed mid-run (SIGKILL,
    with items in flight); the rerun on the full manifest skips what the journal has, the server answers
    UNCHANGED for what was stored but not acknowledged, and indexes the rest."""
    target = f"127.0.0.1:{app.port}"
    n = 30
    manifest = write_dataset(tmp_path, n, seed=700, tag="resume")
    journal = tmp_path / "journal.jsonl"
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    process = await asyncio.create_subprocess_exec(
        ACG2VEC, "index", str(fifo), "--target", target, "--journal", str(journal), "--window", "4",
        "--no-progress", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    fd = await open_fifo_for_writing(fifo, process)
    try:
        os.write(fd, "".join(manifest.read_text().splitlines(keepends=True)[:20]).encode())
        await wait_for_lines(journal, 6, process)
        process.send_signal(signal.SIGKILL)  # the pipe is still open: the indexer cannot have finished
        assert await process.wait() == -signal.SIGKILL
    finally:
        os.close(fd)
    first = journal_entries(journal)
    assert 6 <= len(first) <= 20 and all(e["outcome"] == "created" for e in first)

    code, out, err = await run_cli(manifest, "--target", target, "--journal", journal, "--summary-json",
                                   tmp_path / "s.json")  # fmt: skip
    s = summary(tmp_path / "s.json")
    assert code == 0, (out, err)
    assert s["skipped"] == len(first) and s["updated"] == 0 and s["failed"] == {}
    assert s["created"] + s["unchanged"] == n - len(first)
    assert len(first) + s["created"] + s["unchanged"] == n
    # each id stored once: n distinct hits for this run's field, and the journal now covers everything
    async with search_stub(app) as search:
        hits = await search.Search(
            search_pb2.SearchRequest(text="frog", top_k=100, filter=search_pb2.SearchFilter(fields={"run": "resume"}))
        )
    assert sorted(h.id for h in hits.hits) == sorted(f"resume/{i}" for i in range(n))
    assert {e["id"] for e in journal_entries(journal)} == {f"resume/{i}" for i in range(n)}
    code, out, _ = await run_cli(manifest, "--target", target, "--journal", journal)
    assert code == 0 and f"skipped {n}" in out


class CuttableProxy:
    """A TCP proxy to the server whose connections the test can cut: a real network failure mid-stream."""

    def __init__(self, port: int):
        self.port = port
        self.connections: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.connections += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        for w in self.connections:
            w.transport.abort()
        self.connections.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_connection_cut_mid_run_is_retried(app: Application, tmp_path: Path):
    n = 24
    manifest = write_dataset(tmp_path, n, seed=900, tag="cut")
    proxy = CuttableProxy(app.port)
    port = await proxy.start()
    journal = tmp_path / "journal.jsonl"
    process = await asyncio.create_subprocess_exec(
        ACG2VEC, "index", str(manifest), "--target", f"127.0.0.1:{port}", "--journal", str(journal), "--window", "4",
        "--summary-json", str(tmp_path / "s.json"), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for_lines(journal, 4, process)
        proxy.cut()
        out, err = await asyncio.wait_for(process.communicate(), 180)
    finally:
        await proxy.close()
    s = summary(tmp_path / "s.json")
    assert process.returncode == 0, (out.decode(), err.decode())
    assert "stream failed (UNAVAILABLE" in err.decode()
    assert s["failed"] == {} and s["created"] + s["unchanged"] == n and s["updated"] == 0


# -- the pieces, without a server ------------------------------------------------------------------------------


def test_shard_function_is_stable_and_balanced():
    assert [shard_of(f"animals/frog_{i}", 4) for i in range(8)] == [shard_of(f"animals/frog_{i}", 4) for i in range(8)]
    assert shard_of("animals/2_dead_frogs_lumen_desig_01", 4) == 0  # pinned: changing it reshuffles running jobs
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"id-{i}", 4)] += 1
    assert min(counts) > 900


def test_manifest_lines(tmp_path: Path):
    item = manifest_item(
        json.dumps({"id": "a", "image": "x/a.png", "fields": {"year": 2001, "ok": True}, "tags": ["cat"]}), 1, tmp_path
    )
    assert item is not None and item.path == tmp_path / "x" / "a.png" and not item.error
    assert item.fields == {"year": "2001", "ok": "true", "keywords": "cat"}
    assert manifest_item("   \n", 2, tmp_path) is None
    assert "not valid JSON" in manifest_item("[1,", 3, tmp_path).error
    assert "'id' is missing" in manifest_item('{"image": "a.png"}', 4, tmp_path).error
    assert "'image'" in manifest_item('{"id": "a"}', 5, tmp_path).error
    assert "fields.k" in manifest_item('{"id": "a", "image": "a.png", "fields": {"k": [1]}}', 6, tmp_path).error
    absolute = manifest_item(json.dumps({"id": "b", "image": "/abs/b.png"}), 7, tmp_path)
    assert absolute is not None and absolute.path == Path("/abs/b.png")


def test_journal_survives_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.record("a", "k1", "created")
    journal.close()
    with path.open("a") as f:
        f.write('{"id": "b", "ke')  # killed mid-write
    again = Journal(path)
    assert again.done == {"a": "k1"}
    again.record("c", "k3", "created")
    again.close()
    assert Journal(path).done == {"a": "k1", "c": "k3"}


@pytest.mark.parametrize("args", [["--shard-index", "4", "--shard-count", "4"], ["--shard-count", "0"]])
async def test_bad_shard_arguments_are_refused(tmp_path: Path, args: list[str]):
    manifest = write_dataset(tmp_path, 1, seed=1, tag="x")
    code, _, err = await run_cli(manifest, "--target", "127.0.0.1:1", *args)
    assert code == 2 and "--shard-index" in err
