"""Makes the client sources importable when acg2vec-client is not pip-installed into the environment."""

import importlib.util
import sys
from pathlib import Path

_CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "python" / "src"

if importlib.util.find_spec("acg2vec") is None and _CLIENT_SRC.is_dir():
    sys.path.insert(0, str(_CLIENT_SRC))
