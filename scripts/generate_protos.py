#!/usr/bin/env python3
"""Generates the Python code of protos/ into clients/python/src (messages, gRPC stubs, .pyi stubs).

Run after changing a .proto: `.venv/bin/python scripts/generate_protos.py`. tests/test_generated.py
fails when the checked-in output differs from what this script produces.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python" / "src"
PACKAGE_DIR = Path("acg2vec") / "v1"
BIN = Path(sys.executable).parent


def generate(out: Path) -> None:
    """Runs protoc (bundled with grpcio-tools) with the python, grpc_python and mypy-protobuf plugins."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE_DIR).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    (out / PACKAGE_DIR / "__init__.py").write_text(
        '"""Generated from protos/acg2vec/v1 by scripts/generate_protos.py; do not edit."""\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT, help="output root (default: clients/python/src)")
    out = parser.parse_args().out
    target = out / PACKAGE_DIR
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(tmp) / PACKAGE_DIR, target)
    print(f"generated {sorted(p.name for p in target.iterdir())} in {target}")


if __name__ == "__main__":
    main()
