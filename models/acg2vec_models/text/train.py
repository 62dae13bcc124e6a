"""Fine-tunes a sentence-transformers model on sentence pairs with MultipleNegativesRankingLoss.

acgvoc2vec is the multilingual USE trained on bangumi title pairs (defaults.py); `acg2vec train text --pairs`
trains any sentence-transformers model on any pairs (JSONL, `read_pairs`). Each epoch draws one pair per group
(an anime for bangumi; a pair without a group is its own group), so no batch holds two pairs of one group, which
would be false negatives for the in-batch loss; in a random orientation, shuffled with the recipe's seed. The
USE's big piece table is trained with sparse Adam (only the rows of the batch's pieces move) or frozen; any
other model trains all its parameters with AdamW. `Recipe` says which (defaults.fingerprint names the result).

With a work directory the run checkpoints (model, optimizers, the position in the epoch and the random states)
every `checkpoint_every` steps and at each epoch end, keeping the last two; run it again and it continues from
the last one, giving the same weights as a run that was never stopped. A GPU is used when PyTorch sees one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from acg2vec_models.datasets.bangumi import Pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    epochs: int = 6
    batch_size: int = 128
    learning_rate: float = 3e-4  # the network (projections, convolutions, feed-forward); all of a model w/o table
    embedding_learning_rate: float = 3e-3  # the USE's piece embedding table (sparse Adam)
    train_network: bool = True
    train_embeddings: bool = True
    scale: float = 20.0  # MultipleNegativesRankingLoss temperature (cosine * scale)
    symmetric: bool = True  # also rank the anchors for each positive (retrieval runs in both directions)
    warmup_steps: int = 20
    seed: int = 0
    #: CPU threads. Two: on the 2-core reference machine, quiet, 25 steps take 21 s instead of 40 s with one
    #: (build-defaults' longest step after the image features). One is bit-for-bit reproducible across machines
    #: and better on a machine busy with other work.
    threads: int = 2


TRAINING_CODE_VERSION = 1  # bump when a change to the training code changes what a recipe produces
#: Recipe fields that may change between a run and its resumption (the rest would train a different model).
RESUMABLE_CHANGES = ("epochs", "threads")
KEEP_CHECKPOINTS = 2


class TrainingError(ValueError):
    """Bad pairs file or a resumption that would mix two different runs; the message says what to do."""


@dataclass
class Outcome:
    folder: Path  # the trained sentence-transformers model
    steps: int
    resumed_from_step: int = 0
    device: str = "cpu"
    checkpoints: list[Path] = field(default_factory=list)
    finished: bool = True  # False: stopped after stop_after_steps, the model not saved yet


def epoch_batches(pairs: list[Pair], batch_size: int, rng: random.Random) -> list[list[tuple[str, str]]]:
    """One pair per group, random orientation, shuffled, cut into full batches (a short tail is dropped)."""
    by_group: dict[str, list[Pair]] = {}
    for p in pairs:
        by_group.setdefault(p.anime, []).append(p)
    chosen = []
    for key in sorted(by_group):
        p = rng.choice(by_group[key])
        chosen.append((p.anchor, p.positive) if rng.random() < 0.5 else (p.positive, p.anchor))
    rng.shuffle(chosen)
    return [chosen[i : i + batch_size] for i in range(0, len(chosen) - batch_size + 1, batch_size)]


_ANCHOR_KEYS = ("anchor", "query", "sentence1", "text1")
_POSITIVE_KEYS = ("positive", "document", "sentence2", "text2")


def read_pairs(path: Path) -> list[Pair]:
    """JSONL, one pair a line: {"anchor": ..., "positive": ...} (or query/document, sentence1/sentence2,
    text1/text2), optional "group" (pairs of one group never share a batch; bangumi's pairs use "anime")."""
    pairs = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise TrainingError(f"{path}:{number}: not a JSON object") from None
            anchor = next((record[k] for k in _ANCHOR_KEYS if k in record), None)
            positive = next((record[k] for k in _POSITIVE_KEYS if k in record), None)
            if (
                not isinstance(anchor, str)
                or not isinstance(positive, str)
                or not anchor.strip()
                or not positive.strip()
            ):
                raise TrainingError(
                    f"{path}:{number}: each line needs two non-empty texts, e.g. "
                    '{"anchor": "進撃の巨人", "positive": "Attack on Titan"}'
                )
            group = str(record.get("group", record.get("anime", f"line-{number}")))
            pairs.append(Pair(anchor, positive, str(record.get("anchor_lang", "")),
                              str(record.get("positive_lang", "")), group))  # fmt: skip
    if not pairs:
        raise TrainingError(f"{path} holds no pairs")
    return pairs


def _pairs_digest(pairs: list[Pair]) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(f"{p.anchor}\0{p.positive}\0{p.anime}\n".encode())
    return digest.hexdigest()[:16]


def choose_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _optimizers(encoder: Any, model: Any, recipe: Recipe) -> list[torch.optim.Optimizer]:
    table = getattr(encoder, "embedding", None)
    optimizers: list[torch.optim.Optimizer] = []
    if isinstance(table, torch.nn.Embedding):  # the USE: sparse table + dense network
        table.sparse = True  # gradients only for the rows of the batch's pieces
        table.weight.requires_grad_(recipe.train_embeddings)
        network = [p for n, p in encoder.named_parameters() if not n.startswith("embedding.")]
        for p in network:
            p.requires_grad_(recipe.train_network)
        if recipe.train_embeddings:
            optimizers.append(torch.optim.SparseAdam([table.weight], lr=recipe.embedding_learning_rate))
        if recipe.train_network:
            optimizers.append(torch.optim.AdamW(network, lr=recipe.learning_rate, weight_decay=0.0))
    elif recipe.train_network:
        optimizers.append(torch.optim.AdamW(list(model.parameters()), lr=recipe.learning_rate, weight_decay=0.0))
    if not optimizers:
        raise TrainingError("the recipe trains nothing: set train_network or train_embeddings")
    return optimizers


class _Checkpoints:
    """<work_dir>/checkpoints/step-<n>.pt, written atomically; the last KEEP_CHECKPOINTS are kept."""

    def __init__(self, work_dir: Path):
        self.folder = work_dir / "checkpoints"

    def latest(self) -> Path | None:
        found = sorted(self.folder.glob("step-*.pt")) if self.folder.is_dir() else []
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{step:09d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a checkpoint exists complete or not at all
        for old in sorted(self.folder.glob("step-*.pt"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path


def _identity(recipe: Recipe, model_dir: Path, pairs: list[Pair]) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    fixed = {k: v for k, v in asdict(recipe).items() if k not in RESUMABLE_CHANGES}
    return {"recipe": fixed, "base_model": str(Path(model_dir).resolve()), "pairs": _pairs_digest(pairs),
            "code": TRAINING_CODE_VERSION}  # fmt: skip


def _to_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def train(
    model_dir: Path,
    pairs: list[Pair],
    out: Path,
    recipe: Recipe,
    progress: Callable[[int, int, float], None] | None = None,
    *,
    work_dir: Path | None = None,
    checkpoint_every: int = 0,
    stop_after_steps: int | None = None,
    device: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> Outcome:
    """Loads the sentence-transformers model at model_dir, fine-tunes it on pairs and saves it to out.

    With work_dir: checkpoints every `checkpoint_every` steps (0: at epoch ends only) and resumes from the last
    checkpoint there; `stop_after_steps` ends this run after that many steps (checkpointed), for time-boxed jobs."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    say = echo or log.info
    if stop_after_steps is not None and work_dir is None:
        raise TrainingError("stopping after some steps needs a work directory to continue from")
    device = choose_device(device)
    if device == "cpu":
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model = SentenceTransformer(str(model_dir), device=device, trust_remote_code=True)
    encoder = model[0]
    directions = ("query_to_doc", "doc_to_query") if recipe.symmetric else ("query_to_doc",)
    loss_fn = MultipleNegativesRankingLoss(model, scale=recipe.scale, directions=directions)
    optimizers = _optimizers(encoder, model, recipe)
    batches_per_epoch = len(epoch_batches(pairs, recipe.batch_size, random.Random(0)))
    if batches_per_epoch == 0:
        raise TrainingError(
            f"{len({p.anime for p in pairs})} groups of pairs make no full batch of {recipe.batch_size}: "
            "lower the batch size or add pairs"
        )
    total = recipe.epochs * batches_per_epoch
    base_lrs = [[g["lr"] for g in o.param_groups] for o in optimizers]
    identity = _identity(recipe, model_dir, pairs)
    checkpoints = _Checkpoints(work_dir) if work_dir is not None else None

    step = first_epoch = skip = resumed_from = 0
    epoch_state = rng.getstate()
    latest = checkpoints.latest() if checkpoints else None
    if latest is not None:
        state = torch.load(latest, map_location=device, weights_only=False)
        if state["identity"] != identity:
            raise TrainingError(
                f"{work_dir} holds a run with other settings ({latest.name}); use another --work-dir, or the same "
                "model, pairs and settings (only --epochs may grow)"
            )
        model.load_state_dict(state["model"])
        for o, saved in zip(optimizers, state["optimizers"], strict=True):
            o.load_state_dict(saved)
        step, first_epoch, skip = state["step"], state["epoch"], state["batch"]
        epoch_state = state["epoch_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if device == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        resumed_from = step
        say(f"resumed from {latest} at step {step} (epoch {first_epoch + 1}, batch {skip})")
    say(f"training on {device}: {len(pairs)} pairs, {batches_per_epoch} batches an epoch, {total} steps")

    def checkpoint(epoch: int, batch: int) -> Path | None:
        if checkpoints is None:
            return None
        state = {
            "identity": identity, "step": step, "epoch": epoch, "batch": batch, "epoch_rng": epoch_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device == "cuda" else None,
            "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
        }  # fmt: skip
        path = checkpoints.save(step, state)
        say(f"checkpoint saved at step {step}: {path}")
        return path

    saved: list[Path] = []

    def keep(path: Path | None) -> None:
        if path is not None:
            saved.append(path)

    if step >= total:
        say(f"already trained ({step} steps); saving the model to {out} again")
    model.train()
    started, ran = time.monotonic(), 0
    for epoch in range(first_epoch, recipe.epochs):
        if epoch > first_epoch or latest is None:
            epoch_state = rng.getstate()
        else:
            rng.setstate(epoch_state)  # the same order for the rest of the interrupted epoch
        batches = epoch_batches(pairs, recipe.batch_size, rng)
        for index in range(skip if epoch == first_epoch else 0, len(batches)):
            batch = batches[index]
            factor = min(1.0, (step + 1) / max(1, recipe.warmup_steps)) * (1 - step / total)  # warm-up, decay
            for o, lrs in zip(optimizers, base_lrs, strict=True):
                for g, lr in zip(o.param_groups, lrs, strict=True):
                    g["lr"] = lr * factor
            anchors = _to_device(encoder.preprocess([a for a, _ in batch]), device)
            positives = _to_device(encoder.preprocess([b for _, b in batch]), device)
            loss = loss_fn([anchors, positives], torch.empty(0, device=device))
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in optimizers:
                o.step()
            step, ran = step + 1, ran + 1
            if progress is not None:
                progress(step, total, float(loss.detach()))
            if index == len(batches) - 1:
                break  # the epoch-end checkpoint below covers this step
            stopping = stop_after_steps is not None and ran >= stop_after_steps
            if (checkpoint_every and step % checkpoint_every == 0) or stopping:
                keep(checkpoint(epoch, index + 1))
            if stopping:
                say(f"stopped after {ran} steps at step {step}; run again to continue")
                return Outcome(out, step, resumed_from, device, saved, finished=False)
        skip = 0
        if checkpoints is not None:
            epoch_state = rng.getstate()
            keep(checkpoint(epoch + 1, 0))
        if stop_after_steps is not None and ran >= stop_after_steps and epoch + 1 < recipe.epochs:
            say(f"stopped after {ran} steps at step {step}; run again to continue")
            return Outcome(out, step, resumed_from, device, saved, finished=False)
    table = getattr(encoder, "embedding", None)
    if isinstance(table, torch.nn.Embedding):
        table.sparse = False
    model.eval()
    log.info("trained %d steps in %.0f s", ran, time.monotonic() - started)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return Outcome(out, step, resumed_from, device, saved)
