"""The TypeScript client (clients/typescript): generated code up to date, versioned with the protos; its unit
test (an in-process grpc-js fake server) and live test from a clean `npm ci` (dependencies from the npm registry,
cached in node_modules per package-lock.json) and build; and the packed tarball installed into a fresh project
whose @grpc/grpc-js is another minor version, called from an ES module and a CommonJS script."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

import acg2vec
from acg2vec_testing.paths import ROOT, SAMPLE_PNG

PACKAGE = ROOT / "clients" / "typescript"
STAMP = ".acg2vec-stamp"
#: The fresh project's grpc-js: one minor below the client's dev dependency, inside its peer range.
CONSUMER_GRPC_JS = "1.13.7"


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(PACKAGE)).encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def npm(*args: str, cwd: Path = PACKAGE, timeout: float = 300) -> str:
    result = subprocess.run(["npm", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


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
    """`npm ci` (only when package-lock.json changed) and `npm run build` (only when a source changed).

    `--ignore-scripts`: `npm ci` would run the package's `prepare` (the build) too; the build runs on its own line.
    """
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the TypeScript client needs Node.js >= 18 with npm")
    lock = digest(PACKAGE / "package-lock.json")
    ensure(PACKAGE / "node_modules", lock, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
    build_inputs = ["package-lock.json", "package.json", "tsconfig.json", "tsconfig.esm.json", "build.cjs", "src"]
    ensure(PACKAGE / "dist", digest(*(PACKAGE / name for name in build_inputs)), "run", "build")
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
    """grpc-js is a peer dependency (the app's one copy: its credentials and the client's are the same classes),
    with a dev dependency to build and test against; everything else is pinned exactly."""
    package = json.loads((PACKAGE / "package.json").read_text())
    for section in ("dependencies", "devDependencies"):
        for name, spec in package[section].items():
            assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"{name}@{spec}: pin an exact version"
    assert "@grpc/grpc-js" not in package["dependencies"], "a second grpc-js copy breaks the app's credentials"
    peer = re.fullmatch(r"\^(\d+)\.(\d+)\.(\d+)", package["peerDependencies"]["@grpc/grpc-js"])
    assert peer, "peer range: ^<floor>"
    dev = tuple(int(x) for x in package["devDependencies"]["@grpc/grpc-js"].split("."))
    consumer = tuple(int(x) for x in CONSUMER_GRPC_JS.split("."))
    floor = tuple(int(x) for x in peer.groups())
    assert floor <= consumer < dev and consumer[0] == dev[0] and consumer[1] == dev[1] - 1
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if path and not entry.get("link"):
            # npm leaves `resolved` out for the default registry; anything else (git, file:, tarball URL) is refused
            resolved = entry.get("resolved", "https://registry.npmjs.org/")
            assert resolved.startswith("https://registry.npmjs.org/"), (path, resolved)
            assert entry.get("integrity"), path


def test_exports_map_and_prepare():
    """ESM and CommonJS builds behind one `exports` map (types per condition); `prepare` builds a git or folder
    install; the tarball ships the LICENSE."""
    package = json.loads((PACKAGE / "package.json").read_text())
    assert package["exports"]["."] == {
        "import": {"types": "./dist/esm/index.d.ts", "default": "./dist/esm/index.js"},
        "require": {"types": "./dist/cjs/index.d.ts", "default": "./dist/cjs/index.js"},
    }
    assert package["scripts"]["prepare"] == "npm run build"
    assert "LICENSE" in package["files"] and (PACKAGE / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


async def test_typescript_unit_tests(ts_package):
    """Call credentials, RetryInfo, interceptors, streams and AbortSignal against an in-process grpc-js server."""
    argv = ["node", "--test", "--test-reporter=tap", "test/unit.test.cjs"]
    env = {**os.environ, "NODE_OPTIONS": ""}
    result = subprocess.run(argv, cwd=ts_package, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = dict(re.findall(r"^# (pass|fail|tests) (\d+)$", result.stdout, re.MULTILINE))
    assert counts.get("fail") == "0" and int(counts.get("pass", 0)) >= 13 and counts["pass"] == counts["tests"], output


@pytest.fixture(scope="module")
def consumer(ts_package, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project with the packed tarball and its own grpc-js (CONSUMER_GRPC_JS), installed by npm.

    The install is kept per tarball (npm packs reproducibly: same files, same bytes) in .cache/npm-consumer-<hash>.
    """
    work = tmp_path_factory.mktemp("npm-pack")
    packed = json.loads(npm("pack", "--ignore-scripts", "--json", "--pack-destination", str(work)))
    tarball = work / packed[0]["filename"]
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        license_file = archive.extractfile("package/LICENSE")
        assert license_file is not None and license_file.read() == (ROOT / "LICENSE").read_bytes()
    assert {"package/dist/esm/index.js", "package/dist/cjs/index.js", "package/dist/esm/package.json"} <= set(names)
    assert not [n for n in names if n.startswith(("package/node_modules", "package/test"))], names
    key = hashlib.sha256(tarball.read_bytes() + CONSUMER_GRPC_JS.encode()).hexdigest()[:16]
    project = ROOT / ".cache" / f"npm-consumer-{key}"
    if not (project / STAMP).exists():
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
        shutil.copy(tarball, project / tarball.name)
        dependencies = {"@acg2vec/client": f"file:{tarball.name}", "@grpc/grpc-js": CONSUMER_GRPC_JS}
        package = {"name": "app", "private": True, "dependencies": dependencies}
        (project / "package.json").write_text(json.dumps(package))
        npm("install", "--no-audit", "--no-fund", "--prefer-offline", cwd=project)
        (project / STAMP).write_text(key)
    for script in ("esm.mjs", "cjs.cjs"):
        shutil.copy(PACKAGE / "test" / "consumer" / script, project / script)
    return project


async def test_packed_tarball_in_a_fresh_project_esm_and_cjs(app, consumer):
    modules = consumer / "node_modules"
    assert json.loads((modules / "@grpc" / "grpc-js" / "package.json").read_text())["version"] == CONSUMER_GRPC_JS
    assert not (modules / "@acg2vec" / "client" / "node_modules" / "@grpc").exists(), "one grpc-js: the app's"
    env = {**os.environ, "ACG2VEC_TARGET": f"127.0.0.1:{app.port}", "ACG2VEC_SAMPLE_PNG": str(SAMPLE_PNG)}
    env["NODE_OPTIONS"] = ""
    for script, flavour in (("esm.mjs", "esm"), ("cjs.cjs", "cjs")):
        result = await asyncio.to_thread(
            subprocess.run, ["node", script], cwd=consumer, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = json.loads(result.stdout)
        assert f"/@acg2vec/client/dist/{flavour}/index.js" in out["resolved"], out["resolved"]
        assert out["grpcJs"] == CONSUMER_GRPC_JS
        assert out["version"] == acg2vec.__version__
        assert out["serving"] is True and out["tags"] == 3 and out["stream"] == [["t", True]], out
        assert out["cancelled"] is True, out


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
    assert counts.get("fail") == "0" and int(counts.get("pass", 0)) >= 9, output
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
    header = "\n".join(imports)  # "@acg2vec/client" resolves to this package itself (its exports map)
    return f"{header}\ndeclare const paths: string[];\nexport async function main() {{\n" + "\n".join(body) + "\n}\n"


def test_readme_examples_type_check(ts_package):
    """The usage examples compile (strict) against the built package's declarations, through its exports map."""
    example = ts_package / "readme-example.check.ts"
    example.write_text(readme_example(ts_package))
    try:
        tsc = [str(ts_package / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict", "--skipLibCheck"]
        tsc += ["--module", "node16", "--moduleResolution", "node16", "--target", "es2022", "--types", "node"]
        result = subprocess.run([*tsc, example.name], cwd=ts_package, capture_output=True, text=True, timeout=120)
    finally:
        example.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
