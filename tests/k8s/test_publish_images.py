"""scripts/publish_images.sh: the docker commands it runs (a fake docker on PATH records them), and that the images
it pushes are the ones the manifests name (kustomize `images:` entries, Dockerfile targets)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "publish_images.sh"


def run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Runs the script with a fake docker that records each call; returns the run and the recorded calls."""
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir(exist_ok=True)
    quoted = shlex.quote(str(log))
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> {quoted}\necho >> {quoted}\n')
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", **env},
    )  # fmt: skip
    calls = [line.strip("\0").split("\0") for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def test_builds_both_images_and_pushes_them_to_the_named_registry(tmp_path):
    result, calls = run(tmp_path, "registry.example:5000/team/", "1.2.3")
    assert result.returncode == 0, result.stderr
    server, trainer = "registry.example:5000/team/acg2vec:1.2.3", "registry.example:5000/team/acg2vec-trainer:1.2.3"
    assert calls == [
        ["build", "--target", "runtime", "--build-arg", "BAKE_MODELS=0", "-t", server, "."],
        ["build", "--target", "trainer", "-t", trainer, "."],
        ["push", server],
        ["push", trainer],
    ]
    assert f"kustomize edit set image acg2vec={server} acg2vec-trainer={trainer}" in result.stdout


def test_platform_baked_models_and_the_default_tag(tmp_path):
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert version
    result, calls = run(tmp_path, "ghcr.io/you", PLATFORM="linux/amd64", BAKE_MODELS="1")
    assert result.returncode == 0, result.stderr
    server = f"ghcr.io/you/acg2vec:{version.group(1)}"
    assert calls[0] == ["build", "--platform", "linux/amd64", "--target", "runtime", "--build-arg", "BAKE_MODELS=1",
                        "-t", server, "."]  # fmt: skip
    assert calls[1][:3] == ["build", "--platform", "linux/amd64"] and calls[2] == ["push", server]


def test_without_a_registry_it_says_how_to_call_it(tmp_path):
    result, calls = run(tmp_path)
    assert result.returncode == 2 and calls == []
    assert "scripts/publish_images.sh REGISTRY [TAG]" in result.stderr


def test_the_pushed_images_are_the_ones_the_manifests_and_dockerfile_name(tmp_path):
    result, _ = run(tmp_path, "r.example", "9")
    line = next(ln for ln in result.stdout.splitlines() if "kustomize edit set image" in ln)
    pushed = dict(pair.split("=", 1) for pair in line.split("set image ", 1)[1].rstrip(")").split())
    kustomization = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())
    assert set(pushed) == {image["name"] for image in kustomization["images"]} == {"acg2vec", "acg2vec-trainer"}
    used = set()
    for manifest in (REPO / "k8s/base").rglob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            text = yaml.safe_dump(doc or {})
            used |= set(re.findall(r"image: (acg2vec[\w-]*)\n", text))
    assert used == set(pushed)  # every image the workloads name is one the script pushes
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", (REPO / "Dockerfile").read_text(), re.M))
    assert {"runtime", "trainer"} <= stages
    assert re.findall(r"^FROM \S+ AS (\S+)", (REPO / "Dockerfile").read_text(), re.M)[-1] == "runtime"
