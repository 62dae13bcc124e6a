"""Fine-tunes the multilingual USE on bangumi title pairs with MultipleNegativesRankingLoss: acgvoc2vec.

Each epoch draws one pair per training anime (so no batch holds two pairs of the same anime, which would be
false negatives for the in-batch loss), in a random orientation, shuffled with the recipe's seed. The big
embedding table can be trained (sparse gradients: only the rows of pieces in the batch move) or frozen, and
the rest of the network likewise; `Recipe` says which (defaults.fingerprint names the result).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from acg2vec_models.datasets.bangumi import Pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    epochs: int = 6
    batch_size: int = 128
    learning_rate: float = 3e-4  # the network (projections, convolutions, feed-forward)
    embedding_learning_rate: float = 3e-3  # the piece embedding table (sparse Adam)
    train_network: bool = True
    train_embeddings: bool = True
    scale: float = 20.0  # MultipleNegativesRankingLoss temperature (cosine * scale)
    symmetric: bool = True  # also rank the anchors for each positive (retrieval runs in both directions)
    warmup_steps: int = 20
    seed: int = 0
    threads: int = 1  # one thread: bit-for-bit reproducible, and faster than two on a busy machine


TRAINING_CODE_VERSION = 1  # bump when a change to the training code changes what a recipe produces


def epoch_batches(pairs: list[Pair], batch_size: int, rng: random.Random) -> list[list[tuple[str, str]]]:
    """One pair per anime, random orientation, shuffled, cut into full batches (a short tail is dropped)."""
    by_anime: dict[str, list[Pair]] = {}
    for p in pairs:
        by_anime.setdefault(p.anime, []).append(p)
    chosen = []
    for key in sorted(by_anime):
        p = rng.choice(by_anime[key])
        chosen.append((p.anchor, p.positive) if rng.random() < 0.5 else (p.positive, p.anchor))
    rng.shuffle(chosen)
    return [chosen[i : i + batch_size] for i in range(0, len(chosen) - batch_size + 1, batch_size)]


def train(
    model_dir: Path,
    pairs: list[Pair],
    out: Path,
    recipe: Recipe,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Loads the sentence-transformers model at model_dir, fine-tunes it, saves it to out; returns out."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=True)
    encoder = model[0]
    directions = ("query_to_doc", "doc_to_query") if recipe.symmetric else ("query_to_doc",)
    loss_fn = MultipleNegativesRankingLoss(model, scale=recipe.scale, directions=directions)

    table = encoder.embedding
    table.sparse = True  # gradients only for the rows of the batch's pieces
    table.weight.requires_grad_(recipe.train_embeddings)
    network = [p for n, p in encoder.named_parameters() if not n.startswith("embedding.")]
    for p in network:
        p.requires_grad_(recipe.train_network)
    optimizers: list[torch.optim.Optimizer] = []
    if recipe.train_embeddings:
        optimizers.append(torch.optim.SparseAdam([table.weight], lr=recipe.embedding_learning_rate))
    if recipe.train_network:
        optimizers.append(torch.optim.AdamW(network, lr=recipe.learning_rate, weight_decay=0.0))
    if not optimizers:
        raise ValueError("the recipe trains nothing: set train_network or train_embeddings")
    batches_per_epoch = len(epoch_batches(pairs, recipe.batch_size, random.Random(0)))
    total = recipe.epochs * batches_per_epoch
    base_lrs = [[g["lr"] for g in o.param_groups] for o in optimizers]

    model.train()
    step, started = 0, time.monotonic()
    for _ in range(recipe.epochs):
        for batch in epoch_batches(pairs, recipe.batch_size, rng):
            factor = min(1.0, (step + 1) / max(1, recipe.warmup_steps)) * (1 - step / total)  # warm-up, linear decay
            for o, lrs in zip(optimizers, base_lrs, strict=True):
                for g, lr in zip(o.param_groups, lrs, strict=True):
                    g["lr"] = lr * factor
            anchors = encoder.preprocess([a for a, _ in batch])
            positives = encoder.preprocess([b for _, b in batch])
            loss = loss_fn([anchors, positives], torch.empty(0))
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in optimizers:
                o.step()
            step += 1
            if progress is not None:
                progress(step, total, float(loss.detach()))
    table.sparse = False
    model.eval()
    log.info("trained %d steps in %.0f s", step, time.monotonic() - started)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return out
