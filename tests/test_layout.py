"""The server's layering: the domain imports no gRPC, TensorFlow, Redis or Milvus library, and none of the
packages built around it (backends, transport, settings); checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_LIBRARIES = ("tensorflow", "tensorflow_serving", "grpc", "grpc_status", "redis", "pymilvus", "milvus_lite")
FORBIDDEN_PACKAGES = ("acg2vec_server.backends", "acg2vec_server.transport", "acg2vec_server.settings")

IMPORT_EVERY_DOMAIN_MODULE = """
import importlib, json, pkgutil, sys
import acg2vec_server.domain as domain
names = [m.name for m in pkgutil.walk_packages(domain.__path__, "acg2vec_server.domain.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def test_the_domain_loads_no_backend_library_nor_transport():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_DOMAIN_MODULE], capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(result.stdout)
    assert {"acg2vec_server.domain.ports", "acg2vec_server.domain.illustrations.consistency"} <= set(out["imported"])
    loaded = set(out["modules"])
    libraries = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_LIBRARIES)
    assert not libraries, f"the domain must not load these (move the code into an adapter): {libraries[:10]}"
    packages = sorted(m for m in loaded if m.startswith(FORBIDDEN_PACKAGES))
    assert not packages, f"the domain must not import these (app.py composes them around it): {packages}"
