"""npm packages without npm: the registry's JSON document of a version gives the tarball's URL and its integrity
(Subresource Integrity, `sha512-<base64>`), which must equal the pin we ship and the downloaded bytes.

The registry is the one npm would use: `npm_config_registry` / `NPM_CONFIG_REGISTRY` in the environment, else a
`registry=` line of ~/.npmrc, else https://registry.npmjs.org/ (npm's default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from urllib.parse import quote

from acg2vec_models.registries import http

DEFAULT_REGISTRY = "https://registry.npmjs.org/"


def registry_url() -> str:
    for name in ("npm_config_registry", "NPM_CONFIG_REGISTRY"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/") + "/"
    npmrc = Path.home() / ".npmrc"
    if npmrc.is_file():
        for line in npmrc.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "registry" and value.strip():
                return value.strip().rstrip("/") + "/"
    return DEFAULT_REGISTRY


def integrity_of(data_digest: bytes, algorithm: str) -> str:
    return f"{algorithm}-{base64.b64encode(data_digest).decode()}"


def fetch_tarball(package: str, version: str, integrity: str, directory: Path) -> Path:
    """`<package>-<version>.tgz` in `directory`, downloaded once and checked against `integrity` (the pin)."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha512", "sha384", "sha256") or not expected:
        raise ValueError(f"{integrity!r} is not a Subresource Integrity value such as sha512-<base64>")
    target = directory / f"{package.replace('/', '-').lstrip('@')}-{version}.tgz"
    if target.is_file() and integrity_of(hashlib.new(algorithm, target.read_bytes()).digest(), algorithm) == integrity:
        return target
    registry = registry_url()
    document_url = f"{registry}{quote(package, safe='@')}/{quote(version)}"  # a scoped name's "/" is %2F
    dist = json.loads(http.get(document_url))["dist"]
    if dist.get("integrity") != integrity:
        raise RuntimeError(
            f"{package}@{version}: the registry {registry} publishes integrity {dist.get('integrity')}, not the pinned "
            f"{integrity}: a different package (or registry) than the one this build was made for"
        )
    digest = http.download(dist["tarball"], target, algorithm)
    got = integrity_of(bytes.fromhex(digest), algorithm)
    if got != integrity:
        target.unlink(missing_ok=True)
        raise RuntimeError(f"{dist['tarball']}: integrity mismatch ({got}, expected {integrity})")
    return target


def unpack(tarball: Path, target: Path) -> Path:
    """Extracts an npm tarball (its files under `package/`) into `target`, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(target, filter="data")
    return target
