"""The TypeScript client (clients/typescript): generated code up to date, versioned with the protos, and its
Node test calling a live server from a clean `npm ci` (dependencies from the npm registry, cached in node_modules
per package-lock.json) and a `tsc` build."""

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
from pathlib import Path

import pytest

import acg2vec
from acg2vec_testing.paths import ROOT, SAMPLE_PNG

PACKAGE = ROOT / "clients" / "typescript"
STAMP = ".acg2vec-stamp"


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(PACKAGE)).encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def npm(*args: str, timeout: float = 300) -> None:
    result = subprocess.run(["npm", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def ensure(folder: Path, key: str, *command: str) -> None:
    """Runs an npm command unless `folder` carries the stamp of the same inputs (a clean run otherwise)."""
    stamp = folder / STAMP
    if stamp.exists() and stamp.read_text() == key:
        return
    shutil.rmtree(folder, ignore_errors=True)
    npm(*command)
    stamp.write_text(key)


@pytest.fixture(scope="module")
def ts_package() -> Path:
    """`npm ci` (only when package-lock.json changed) and `npm run build` (only when a source changed)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the TypeScript client needs Node.js >= 18 with npm")
    lock = digest(PACKAGE / "package-lock.json")
    ensure(PACKAGE / "node_modules", lock, "ci", "--no-audit", "--no-fund")
    sources = digest(PACKAGE / "package-lock.json", PACKAGE / "tsconfig.json", PACKAGE / "src")
    ensure(PACKAGE / "dist", sources, "run", "build")
    return PACKAGE


def test_generated_typescript_is_current(ts_package, tmp_path):
    out = tmp_path / "gen"
    result = subprocess.run(
        [sys.executable, "scripts/generate_ts.py", "--out", str(out), "--no-version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    checked_in_dir = ts_package / "src" / "gen"
    fresh = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    checked_in = {p.relative_to(checked_in_dir): p.read_bytes() for p in checked_in_dir.rglob("*") if p.is_file()}
    stale = sorted(str(k) for k in fresh.keys() | checked_in.keys() if fresh.get(k) != checked_in.get(k))
    assert not stale, f"run `.venv/bin/python scripts/generate_ts.py`; stale: {stale}"


def test_both_clients_carry_the_protos_version():
    """clients/python/pyproject.toml is the one source; generate_ts.py copies it into the npm package."""
    version = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]["version"]
    assert acg2vec.__version__ == version, "acg2vec/__init__.py __version__ differs from clients/python/pyproject.toml"
    package = json.loads((PACKAGE / "package.json").read_text())
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    assert package["name"] == "@acg2vec/client"
    found = {
        "package.json": package["version"],
        "package-lock.json": lock["version"],
        "package-lock.json packages['']": lock["packages"][""]["version"],
    }
    assert found == dict.fromkeys(found, version), "run `.venv/bin/python scripts/generate_ts.py`"
    assert f'PROTOS_VERSION = "{version}"' in (PACKAGE / "src" / "gen" / "version.ts").read_text()


def test_dependencies_are_pinned_and_from_the_npm_registry():
    package = json.loads((PACKAGE / "package.json").read_text())
    for section in ("dependencies", "devDependencies"):
        for name, spec in package[section].items():
            assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"{name}@{spec}: pin an exact version"
    assert "@grpc/grpc-js" in package["dependencies"]
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if path and not entry.get("link"):
            # npm leaves `resolved` out for the default registry; anything else (git, file:, tarball URL) is refused
            resolved = entry.get("resolved", "https://registry.npmjs.org/")
            assert resolved.startswith("https://registry.npmjs.org/"), (path, resolved)
            assert entry.get("integrity"), path


async def test_typescript_client_against_live_server(app, ts_package):
    env = {
        **os.environ,
        "ACG2VEC_TARGET": f"127.0.0.1:{app.port}",
        "ACG2VEC_SAMPLE_PNG": str(SAMPLE_PNG),
        "NODE_OPTIONS": "",
    }
    argv = ["node", "--test", "--test-reporter=tap", "test/live.test.cjs"]
    # in a thread: the server under test runs on this event loop
    result = await asyncio.to_thread(
        subprocess.run, argv, cwd=ts_package, env=env, capture_output=True, text=True, timeout=180
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = dict(re.findall(r"^# (pass|fail|tests) (\d+)$", result.stdout, re.MULTILINE))
    assert counts.get("fail") == "0" and int(counts.get("pass", 0)) >= 7, output
    assert counts["pass"] == counts["tests"], output


async def test_typescript_client_against_secured_server(secure_server, ts_package):
    """Mutual TLS (CA, client certificate and key as PEM options) and bearer tokens with scopes."""
    pki = secure_server.pki
    env = {
        **os.environ,
        "ACG2VEC_TARGET": secure_server.target,
        "ACG2VEC_CA_FILE": str(pki.ca),
        "ACG2VEC_CERT_FILE": str(pki.client_cert),
        "ACG2VEC_KEY_FILE": str(pki.client_key),
        "ACG2VEC_READ_TOKEN": secure_server.tokens["reader"],
        "ACG2VEC_WRITE_TOKEN": secure_server.tokens["writer"],
        "NODE_OPTIONS": "",
    }
    argv = ["node", "--test", "--test-reporter=tap", "test/secure.test.cjs"]
    result = await asyncio.to_thread(
        subprocess.run, argv, cwd=ts_package, env=env, capture_output=True, text=True, timeout=180
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = dict(re.findall(r"^# (pass|fail|tests) (\d+)$", result.stdout, re.MULTILINE))
    assert counts.get("fail") == "0" and counts.get("pass") == counts.get("tests") == "4", output


def readme_example(package: Path) -> str:
    """The README's ```ts blocks as one module: imports first, the rest inside an async function."""
    blocks = re.findall(r"^```ts\n(.*?)^```", (package / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert blocks, "clients/typescript/README.md has no ```ts example"
    imports: list[str] = []
    body: list[str] = []
    for block in blocks:
        for line in block.splitlines():
            in_import = bool(imports) and not imports[-1].rstrip().endswith(";")
            (imports if line.startswith("import ") or in_import else body).append(line)
    header = "\n".join(imports).replace('"@acg2vec/client"', '"./dist/index"')
    return f"{header}\ndeclare const paths: string[];\nexport async function main() {{\n" + "\n".join(body) + "\n}\n"


def test_readme_examples_type_check(ts_package):
    """The usage examples compile (strict) against the built package's declarations."""
    example = ts_package / "readme-example.check.ts"
    example.write_text(readme_example(ts_package))
    try:
        tsc = [str(ts_package / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict", "--skipLibCheck"]
        tsc += ["--module", "node16", "--moduleResolution", "node16", "--target", "es2022", "--types", "node"]
        result = subprocess.run([*tsc, example.name], cwd=ts_package, capture_output=True, text=True, timeout=120)
    finally:
        example.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
