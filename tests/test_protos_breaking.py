"""`buf breaking` against the previous release of the protos (a committed copy in protos-releases/), and the
version rule that comes with it: protos that differ from the last release need a higher version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from acg2vec_testing.paths import ROOT

BUF = Path(sys.executable).parent / "buf"
RELEASES = ROOT / "protos-releases"
PROTOS = ROOT / "protos"


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.removeprefix("v").split("."))


def newest_release() -> Path:
    releases = [p for p in RELEASES.iterdir() if p.is_dir()]
    assert releases, f"no released protos in {RELEASES}"
    return max(releases, key=lambda p: version(p.name))


def proto_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.proto"))}


def buf_breaking(workspace: Path, against: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(BUF), "breaking", "protos", "--against", str(against)]
    return subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=120)


def test_protos_do_not_break_the_previous_release():
    result = buf_breaking(ROOT, newest_release())
    assert result.returncode == 0, f"breaking changes against {newest_release().name}:\n{result.stdout}{result.stderr}"


def test_changed_protos_raise_the_version():
    release = newest_release()
    current = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]["version"]
    assert version(current) >= version(release.name), f"version {current} is older than release {release.name}"
    if proto_files(PROTOS) != proto_files(release):
        assert version(current) > version(release.name), (
            f"protos/ changed since release {release.name}: raise version in clients/python/pyproject.toml "
            "and run scripts/generate_ts.py"
        )


def test_a_breaking_change_is_caught(tmp_path):
    """The check is not vacuous: deleting a field of the released contract fails it."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(PROTOS, tmp_path / "protos")
    proto = tmp_path / "protos" / "acg2vec" / "v1" / "text_feature.proto"
    text = proto.read_text()
    assert text.count("  string request_id = 1;\n") >= 1
    proto.write_text(text.replace("  string request_id = 1;\n", "", 1))
    result = buf_breaking(tmp_path, newest_release())
    assert result.returncode != 0
    assert 'Previously present field "1" with name "request_id"' in result.stdout, result.stdout + result.stderr
