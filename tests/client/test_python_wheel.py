"""The acg2vec-client wheel, installed in a clean venv (no project packages, dependencies from the registry),
calls a live server: what a user of `pip install acg2vec-client` gets. Twice: with every direct dependency at
the lowest version the wheel allows (its `>=` floors, like `uv pip install --resolution lowest-direct`), which
proves the floors, and at the versions of constraints.txt, which the server runs with.

Building the wheel and the venvs happens on every run (about 10 s each); only the downloaded dependency wheels
are cached (.cache/client-wheelhouse-<hash of what was asked for>).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from acg2vec_testing.paths import ROOT, SAMPLE_PNG

CLIENT = ROOT / "clients" / "python"
CONSTRAINTS = ROOT / "constraints.txt"
GENERATED = CLIENT / "src" / "acg2vec" / "v1"

SMOKE = r'''
"""Runs inside the clean venv: only the wheel and its dependencies are importable."""
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

import acg2vec
from acg2vec.client import Acg2vecClient
from acg2vec.v1 import common_pb2, search_pb2


class CountCalls(grpc.UnaryUnaryClientInterceptor):
    def __init__(self):
        self.methods = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.methods.append(client_call_details.method)
        return continuation(client_call_details, request)

target, sample = sys.argv[1], sys.argv[2]


def serving(client, name, wait_s=30.0):
    """Health status, waiting out a NOT_SERVING blip (a slow backend probe on a busy machine) as a caller would."""
    deadline = time.monotonic() + wait_s
    while (status := client.health_check(name).status) != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


out = {
    "acg2vec_file": acg2vec.__file__,
    "version": acg2vec.__version__,
    "project_modules": [m for m in ("acg2vec_server", "acg2vec_models", "tensorflow", "tests")
                        if importlib.util.find_spec(m) is not None],
    "installed": {name: importlib.metadata.version(name) for name in sorted(
        {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in importlib.metadata.requires("acg2vec-client")})},
}
# the bulk indexer's command line (the `indexer` extra) starts with its dependencies at the same versions
indexer = os.path.join(os.path.dirname(sys.executable), "acg2vec-index")
out["indexer_help"] = subprocess.run([indexer, "--help"], capture_output=True, text=True).returncode
image = open(sample, "rb").read()
counter = CountCalls()
# the token travels as call credentials (local credentials on a loopback target)
token = os.environ.get("ACG2VEC_TOKEN") or "unused-when-auth-is-off"
with Acg2vecClient(target, token=token, timeout_s=30, interceptors=[counter]) as c:
    out["health"] = {name or "server": serving(c, name)
                     for name in ("", "acg2vec.v1.TaggingService", "acg2vec.v1.SearchService")}
    tagged = c.tag_image(image, top_k=4, thresholds={"general": 0.0}).result
    out["tags"] = [[t.name, t.score] for t in tagged.tags]
    out["rating"] = common_pb2.Rating.Name(tagged.rating)
    feature = c.extract_text_feature("魔法少女まどか☆マギカ").feature
    out["text_feature"] = {"dimension": feature.dimension, "len": len(feature.values),
                           "norm": sum(v * v for v in feature.values) ** 0.5, "model": feature.model.name}
    indexed = c.index_illustration("wheel:sample", image, title="sample", fields={"source": "wheel"})
    out["indexed"] = search_pb2.IndexOutcome.Name(indexed.outcome)
    page = c.search(text="sample", top_k=3, fields={"source": "wheel"})
    out["search_text"] = [h.id for h in page.hits]
    page = c.search(image=image, top_k=3, fields={"source": "wheel"})
    out["search_image"] = [[h.id, h.score] for h in page.hits]
    out["deleted"] = c.delete_illustration("wheel:sample").existed
    try:
        c.extract_text_feature("")
    except grpc.RpcError as e:
        status = rpc_status.from_call(e)
        out["empty_text"] = {"code": e.code().name, "details": e.details(), "rich": status is not None}
    streamed = list(c.stream_extract_text_features([("a", "初音ミク"), ("b", "")]))
    out["stream"] = {a.request_id: a.WhichOneof("outcome") for a in streamed}
out["intercepted"] = sorted(set(counter.methods))
print(json.dumps(out))
'''


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(out: Path) -> Path:
    """From a copy of clients/python, so that stale build/ leftovers in the checkout cannot leak into it."""
    source = out / "src"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", source, "-w", out / "dist")
    (wheel,) = (out / "dist").glob("acg2vec_client-*.whl")
    return wheel


def lowest_pins(wheel: Path) -> list[str]:
    """`name==floor` for every dependency the wheel declares as `name>=floor` (its extras' too): the lowest-direct
    resolution."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = re.findall(r"^Requires-Dist: (.+)$", archive.read(metadata).decode(), re.MULTILINE)
    pins = []
    for requirement in requires:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(;extra==\"[a-z]+\")?", requirement.replace(" ", ""))
        assert match, f"{requirement!r}: declare dependencies as name>=floor, so the floor is testable"
        pins.append(f"{match[1]}=={match[2]}")
    return pins


def wheelhouse(wheel: Path, requirements: list[str]) -> Path:
    """The wheel's dependencies as `requirements` select them, downloaded once per selection."""
    key = hashlib.sha256(
        "\n".join(["[indexer]", *requirements]).encode() + (CLIENT / "pyproject.toml").read_bytes()
    ).hexdigest()
    house = ROOT / ".cache" / f"client-wheelhouse-{key[:16]}"
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        run(
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-d",
            house,
            f"{wheel}[indexer]",
            *requirements,
        )
        for own in house.glob("acg2vec_client-*"):
            own.unlink()  # only the dependencies are cached; the wheel under test is built fresh
        (house / ".complete").write_text("ok")
    return house


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_wheel(tmp_path_factory.mktemp("wheel"))
    version = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["version"]
    assert built.name == f"acg2vec_client-{version}-py3-none-any.whl"
    with zipfile.ZipFile(built) as archive:
        names = archive.namelist()
        assert "acg2vec/v1/tagging_pb2.pyi" in names and "acg2vec/py.typed" in names
        assert "acg2vec/client/_sync.py" in names
        (license_file,) = [n for n in names if re.search(r"\.dist-info/(licenses/)?LICENSE$", n)]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes(), "the wheel ships the Apache-2.0 LICENSE"
    return built


@pytest.fixture(scope="module", params=["lowest", "constraints"])
def clean_python(request: pytest.FixtureRequest, wheel: Path, tmp_path_factory: pytest.TempPathFactory):
    """A venv with only the wheel and its dependencies: at their floors, or at constraints.txt's versions."""
    requirements = lowest_pins(wheel) if request.param == "lowest" else ["-c", str(CONSTRAINTS)]
    house = wheelhouse(wheel, requirements)
    venv = tmp_path_factory.mktemp(f"venv-{request.param}") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # this venv's pip installs into the clean one (--python): the clean venv needs no pip of its own
    install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", "--find-links", house]
    run(*install, f"{wheel}[indexer]", *requirements)
    expected = {pin.partition("==")[0]: pin.partition("==")[2] for pin in requirements if "==" in pin}
    return python, expected


def test_dependency_floors_match_the_generated_code():
    """The floors in pyproject.toml are what the checked-in generated code demands at import: protobuf's runtime
    check (ValidateProtobufRuntimeVersion) and grpcio's (GRPC_GENERATED_VERSION). Regenerating with newer tools
    without raising the floors fails here."""
    dependencies = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = dict(re.fullmatch(r"([a-z0-9-]+)>=([0-9.]+)", d).groups() for d in dependencies)  # type: ignore[union-attr]

    def newest(pattern: str, glob: str) -> tuple[int, ...]:
        found = {re.search(pattern, p.read_text(), re.DOTALL).group(1) for p in GENERATED.glob(glob)}  # type: ignore[union-attr]
        versions = {tuple(int(x) for x in re.findall(r"\d+", v)) for v in found}
        return max(versions)

    protobuf = newest(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+,\s*\d+,\s*\d+)", "*_pb2.py"
    )
    grpcio = newest(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", "*_pb2_grpc.py")
    as_tuple = {name: tuple(int(x) for x in floor.split(".")) for name, floor in floors.items()}
    assert as_tuple["protobuf"] == protobuf, f"protobuf floor {floors['protobuf']} != gencode {protobuf}"
    assert as_tuple["grpcio"] == grpcio, f"grpcio floor {floors['grpcio']} != generated for {grpcio}"


async def test_wheel_in_a_clean_venv_calls_a_live_server(app, clean_python, tmp_path):
    clean_python, expected_versions = clean_python
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    argv = [str(clean_python), "-I", str(script), f"127.0.0.1:{app.port}", str(SAMPLE_PNG)]
    # in a thread: the server under test runs on this event loop
    result = await asyncio.to_thread(
        subprocess.run, argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)

    assert Path(out["acg2vec_file"]).is_relative_to(clean_python.parent.parent), out["acg2vec_file"]
    assert out["project_modules"] == [], "the clean venv must hold only the client and its dependencies"
    if expected_versions:  # the lowest-direct venv: each direct dependency exactly at its floor
        assert out["installed"] == expected_versions
    assert out["indexer_help"] == 0, "acg2vec-index --help failed in the clean venv"
    assert out["version"] == tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["version"]
    assert out["health"] == dict.fromkeys(
        ["server", "acg2vec.v1.TaggingService", "acg2vec.v1.SearchService"], "SERVING"
    )
    assert len(out["tags"]) == 4
    scores = [score for _, score in out["tags"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert out["rating"].startswith("RATING_") and out["rating"] != "RATING_UNSPECIFIED"
    feature = out["text_feature"]
    assert feature["dimension"] == feature["len"] > 0 and abs(feature["norm"] - 1) < 1e-3
    assert out["indexed"] in ("INDEX_OUTCOME_CREATED", "INDEX_OUTCOME_UPDATED", "INDEX_OUTCOME_UNCHANGED")
    assert out["search_text"] == ["wheel:sample"], "the field filter leaves only the indexed one"
    assert out["search_image"][0][0] == "wheel:sample" and out["search_image"][0][1] > 0.99
    assert out["deleted"] is True
    assert out["empty_text"]["code"] == "INVALID_ARGUMENT" and "text is empty" in out["empty_text"]["details"]
    assert out["empty_text"]["rich"], "the google.rpc.Status details reach a client installed from the wheel"
    assert out["stream"] == {"a": "feature", "b": "error"}
    assert "/acg2vec.v1.TaggingService/TagImage" in out["intercepted"], "a user interceptor saw the calls"
