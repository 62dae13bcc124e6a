"""Generated code up to date, buf lint/format clean, grpcurl against a live server, the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

from acg2vec_testing.paths import ROOT, SAMPLE_PNG
from acg2vec_testing.services import LISTED

BIN = Path(sys.executable).parent


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def test_generated_code_is_current(tmp_path):
    result = run(sys.executable, "scripts/generate_protos.py", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "acg2vec" / "v1").iterdir()}
    checked_in_dir = ROOT / "clients" / "python" / "src"
    checked_in = {
        p.relative_to(checked_in_dir): p.read_bytes()
        for p in (checked_in_dir / "acg2vec" / "v1").iterdir()
        if p.is_file()
    }
    stale = sorted(str(k) for k in fresh.keys() | checked_in.keys() if fresh.get(k) != checked_in.get(k))
    assert not stale, f"run `.venv/bin/python scripts/generate_protos.py`; stale: {stale}"


def test_buf_lint_and_format():
    lint = run(str(BIN / "buf"), "lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(str(BIN / "buf"), "format", "--diff", "--exit-code")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


async def grpcurl(port: int, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs grpcurl in a thread: the server under test shares this event loop."""
    cmd = [str(BIN / "grpcurl"), "-plaintext", "-max-msg-sz", str(64 << 20)]
    if data is not None:
        cmd += ["-d", "@"]
    argv = [*cmd, f"127.0.0.1:{port}", *args]
    return await asyncio.to_thread(subprocess.run, argv, input=data, capture_output=True, text=True, timeout=60)


async def test_grpcurl_lists_services_and_tags_a_png(app):
    listed = await grpcurl(app.port, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == LISTED
    described = await grpcurl(app.port, "describe", "acg2vec.v1.TaggingService")
    assert "rpc StreamTagImages ( stream .acg2vec.v1.StreamTagImagesRequest )" in described.stdout
    health = await grpcurl(app.port, "grpc.health.v1.Health/Check", data='{"service": "acg2vec.v1.TaggingService"}')
    assert json.loads(health.stdout)["status"] == "SERVING"
    body = json.dumps({"image": base64.b64encode(SAMPLE_PNG.read_bytes()).decode(), "options": {"topK": 3}})
    tagged = await grpcurl(app.port, "acg2vec.v1.TaggingService/TagImage", data=body)
    assert tagged.returncode == 0, tagged.stderr
    result = json.loads(tagged.stdout)["result"]
    assert len(result["tags"]) == 3 and result["rating"].startswith("RATING_")
    bad = await grpcurl(app.port, "acg2vec.v1.TextFeatureService/ExtractTextFeature", data='{"text": ""}')
    assert "InvalidArgument" in bad.stderr and "text is empty" in bad.stderr and "BadRequest" in bad.stderr


def test_cli_help():
    for args in ((), ("serve",), ("models", "build-defaults"), ("repair",), ("tfserving-emulator",)):
        result = run(str(BIN / "acg2vec"), *args, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage: acg2vec" in result.stdout
    assert "ACG2VEC_MILVUS_URI" in run(str(BIN / "acg2vec"), "serve", "--help").stdout
