"""Tagger and deepix training: a custom train step with two learning rates, checkpoints, resume, evaluation, export.

- The encoder (a backbone from backbones.py) learns at a low rate (1e-5) and the new layers (tagger head or deepix
  stage + heads) at a high one (1e-2): two Adam optimizers, one per group of variables, as ACG2vec trained deepix
  (optimizer.py: fused Adam, so that a deep network's train step traces in seconds).
- Input: tf.data over the manifest with `preprocess_image`, the very function the exported SavedModel runs on
  image bytes, so training sees what serving sees.
- Checkpoints (model and both optimizers, step counter) go to <work_dir>/checkpoints every `checkpoint_every` steps
  and at each epoch end. A rerun with the same work dir continues from the last one: each epoch's order is fixed by
  (seed, epoch), so the rest of the epoch is exactly what was left. Settings that change the network or the
  vocabulary are refused on resume; epochs may grow.
- At the end: a held-out evaluation (tagger: macro mAP, micro-F1; deepix: accuracy and log-loss per head), printed
  and saved, then the models are exported as new versions into the repository (tagger + illust2vec, or deepix).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from acg2vec_models.image.popularity_bins import BOOKMARK_EDGES, SANITY_EDGES, VIEW_EDGES
from acg2vec_models.metrics import classification_metrics, multi_hot, tagger_metrics
from acg2vec_models.progress import ON_TERMINAL_ONLY
from acg2vec_models.training.backbones import BackboneOptions, build_backbone
from acg2vec_models.training.manifest import Example, read_manifest, split, vocabulary
from acg2vec_models.training.optimizer import FusedAdam

log = logging.getLogger(__name__)
Task = Literal["tagger", "deepix"]
DEEPIX_TARGETS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("bookmarks", BOOKMARK_EDGES),
    ("views", VIEW_EDGES),
    ("sanity", SANITY_EDGES),
)


class TrainingError(ValueError):
    """Settings or data that cannot train; the message says what to change."""


@dataclass
class TrainConfig:
    task: Task
    manifest: Path
    repository: Path
    work_dir: Path
    backbone: str = "deepdanbooru"
    backbone_options: BackboneOptions = field(default_factory=BackboneOptions)
    epochs: int = 5
    batch_size: int = 16
    encoder_lr: float = 1e-5
    head_lr: float = 1e-2
    held_out_fraction: float = 0.2
    seed: int = 0
    min_tag_count: int = 1
    threshold: float = 0.5
    checkpoint_every: int = 100
    #: End this run after so many steps (checkpointed); a rerun continues. For time-boxed or preemptible jobs.
    stop_after_steps: int | None = None
    deepix_blocks: int = 10
    #: Repository names: tagger (or deepix) and, for the tagger, illust2vec.
    name: str | None = None
    illust2vec_name: str = "illust2vec"


@dataclass
class TrainResult:
    status: Literal["finished", "stopped"]
    resumed_from_step: int
    step: int
    total_steps: int
    evaluation: dict[str, Any] | None = None
    exported: dict[str, str] = field(default_factory=dict)


def deepix_bins(examples: list[Example]) -> np.ndarray:
    """[n, 3] bin index per head (bookmarks, views, sanity) as Keras's Discretization bins them; -1 = missing."""
    out = np.full((len(examples), len(DEEPIX_TARGETS)), -1, dtype=np.int32)
    for i, e in enumerate(examples):
        for k, (name, edges) in enumerate(DEEPIX_TARGETS):
            value = getattr(e, name)
            if value is not None:
                out[i, k] = int(np.searchsorted(edges, value, side="right"))
    return out


class _Run:
    """One training run: data, network, optimizers and checkpoint, built from a config."""

    def __init__(self, config: TrainConfig, echo: Callable[[str], None]):
        import keras
        import tensorflow as tf

        self.config, self.echo = config, echo
        examples = read_manifest(config.manifest)
        self.train_set, self.held_out = split(examples, config.held_out_fraction, config.seed)
        if not self.train_set:
            raise TrainingError("no training images left after the held-out split; lower --held-out-fraction")
        keras.utils.set_random_seed(config.seed)
        self.backbone = build_backbone(config.backbone, config.backbone_options)
        encoder = self.backbone.encoder
        if config.task == "tagger":
            from acg2vec_models.image.deepdanbooru import build_tagger

            self.tags = vocabulary(self.train_set, config.min_tag_count)
            if not self.tags:
                raise TrainingError(f"no tag is on {config.min_tag_count} training images; lower --min-tag-count")
            self.model = build_tagger(encoder, len(self.tags))
            self.targets = multi_hot(self.train_set, self.tags)
        else:
            from acg2vec_models.image.deepdanbooru import build_deepix_head

            self.tags = []
            self.targets = deepix_bins(self.train_set)
            if (self.targets < 0).all():
                raise TrainingError("no manifest line has bookmarks, views or sanity: deepix has nothing to learn")
            heads = build_deepix_head(encoder.outputs[1], self.backbone.width, config.deepix_blocks)
            self.model = keras.Model(encoder.inputs[0], heads, name="deepix")
        self.identity = {
            "task": config.task, "backbone": self.backbone.identity, "tags": self.tags, "seed": config.seed,
            "held_out_fraction": config.held_out_fraction, "batch_size": config.batch_size,
            "deepix_blocks": config.deepix_blocks if config.task == "deepix" else None,
        }  # fmt: skip
        self.encoder_variables = list(encoder.trainable_variables)
        known = {id(v) for v in self.encoder_variables}
        self.head_variables = [v for v in self.model.trainable_variables if id(v) not in known]
        self.encoder_optimizer = FusedAdam(self.encoder_variables, config.encoder_lr)
        self.head_optimizer = FusedAdam(self.head_variables, config.head_lr)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            step=self.step,
            model=[getattr(v, "value", v) for v in self.model.variables],
            encoder_optimizer=self.encoder_optimizer,
            head_optimizer=self.head_optimizer,
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(config.work_dir / "checkpoints"), max_to_keep=2)
        self.train_step = self._train_step_function()

    def _loss(self, targets: Any, predictions: Any) -> Any:
        import tensorflow as tf

        if self.config.task == "tagger":
            return tf.reduce_mean(tf.keras.losses.binary_crossentropy(targets, predictions))
        total = tf.constant(0.0)
        for k, (name, _) in enumerate(DEEPIX_TARGETS):
            bins = targets[:, k]
            present = tf.cast(bins >= 0, tf.float32)
            ce = tf.keras.losses.sparse_categorical_crossentropy(tf.maximum(bins, 0), predictions[name])
            total += tf.reduce_sum(ce * present) / tf.maximum(tf.reduce_sum(present), 1.0)
        return total

    def _train_step_function(self) -> Any:
        import tensorflow as tf

        size = self.backbone.prep.size
        target_spec = tf.TensorSpec([None, *self.targets.shape[1:]], tf.as_dtype(self.targets.dtype))
        n_encoder = len(self.encoder_variables)
        variables = self.encoder_variables + self.head_variables

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32), target_spec])
        def train_step(images: Any, targets: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = self._loss(targets, self.model(images, training=True))
            gradients = tape.gradient(loss, variables)
            self.encoder_optimizer.apply(gradients[:n_encoder])
            self.head_optimizer.apply(gradients[n_encoder:])
            return loss

        return train_step

    def dataset(self, examples: list[Example], targets: np.ndarray) -> Any:
        """Batches of (preprocessed images, targets) in the given order, decoded in parallel."""
        import tensorflow as tf

        from acg2vec_models.preprocessing import preprocess_image

        prep = self.backbone.prep
        paths = np.array([e.image for e in examples], dtype=object)
        ds = tf.data.Dataset.from_tensor_slices((paths, targets))
        ds = ds.map(
            lambda p, y: (preprocess_image(tf.io.read_file(p), prep), y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return ds.batch(self.config.batch_size).prefetch(tf.data.AUTOTUNE)


def _check_resume(config: TrainConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """run.json of the work dir: created on the first run, compared on later ones."""
    path = config.work_dir / "run.json"
    if path.exists():
        state = json.loads(path.read_text())
        if state["identity"] != identity:
            differs = sorted(k for k in identity if state["identity"].get(k) != identity[k])
            raise TrainingError(
                f"{config.work_dir} holds a run with other settings ({', '.join(differs)}); use another --work-dir "
                "or delete it to start over"
            )
        return state
    config.work_dir.mkdir(parents=True, exist_ok=True)
    state = {"identity": identity, "exported": {}}
    path.write_text(json.dumps(state, indent=1))
    return state


def _named_errors(batches: Any, examples: list[Example], batch_size: int) -> Any:
    """Yields the batches; an image the graph cannot decode stops training with the files of its batch named."""
    import tensorflow as tf

    iterator, index = iter(batches), 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            files = [ex.image for ex in examples[index * batch_size : (index + 1) * batch_size]]
            reason = re.sub(r"\{\{.*?\}\}\s*", "", e.message.splitlines()[0])
            raise TrainingError(
                f"an image could not be decoded ({reason}); it is one of {files}: fix or remove it and rerun"
            ) from None
        index += 1
        yield batch


def _save(run: _Run, echo: Callable[[str], None]) -> None:
    if run.manager.latest_checkpoint != run.manager.directory + f"/ckpt-{int(run.step)}":
        echo(f"checkpoint saved at step {int(run.step)}: {run.manager.save(checkpoint_number=int(run.step))}")


def train(config: TrainConfig, echo: Callable[[str], None] = print) -> TrainResult:
    """Trains (or continues training) and, when all epochs are done, evaluates and exports."""
    import tensorflow as tf
    from tqdm import tqdm

    gpus = tf.config.list_physical_devices("GPU")
    echo(f"training on {'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'CPU'}")
    run = _Run(config, echo)
    state = _check_resume(config, run.identity)
    if run.manager.latest_checkpoint:
        run.checkpoint.restore(run.manager.latest_checkpoint).assert_existing_objects_matched()
        echo(f"resuming from {run.manager.latest_checkpoint} (step {int(run.step)})")
    start = int(run.step)
    per_epoch = math.ceil(len(run.train_set) / config.batch_size)
    total = per_epoch * config.epochs
    if start >= total and state.get("exported"):
        echo(f"already trained for {config.epochs} epochs and exported: {state['exported']}")
        return TrainResult("finished", start, start, total, state.get("evaluation"), state["exported"])
    echo(
        f"{config.task}: {len(run.train_set)} training / {len(run.held_out)} held-out images"
        + (f", {len(run.tags)} tags" if run.tags else "")
        + f"; {per_epoch} steps per epoch, {config.epochs} epochs"
    )
    done_here = 0
    while int(run.step) < total:
        step = int(run.step)
        epoch, offset = divmod(step, per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(run.train_set))
        rest = order[offset * config.batch_size :]
        examples = [run.train_set[i] for i in rest]
        batches = run.dataset(examples, run.targets[rest])
        bar = tqdm(
            total=per_epoch, initial=offset, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
            disable=ON_TERMINAL_ONLY,
        )  # fmt: skip
        with bar:
            for images, targets in _named_errors(batches, examples, config.batch_size):
                loss = float(run.train_step(images, targets))
                run.step.assign_add(1)
                done_here += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if not math.isfinite(loss):
                    raise TrainingError(f"loss became {loss} at step {int(run.step)}; lower --head-lr or --encoder-lr")
                if int(run.step) % config.checkpoint_every == 0:
                    _save(run, echo)
                if config.stop_after_steps is not None and done_here >= config.stop_after_steps:
                    _save(run, echo)
                    echo(f"stopped after {done_here} steps at step {int(run.step)} of {total}; rerun to continue")
                    return TrainResult("stopped", start, int(run.step), total)
        _save(run, echo)
    evaluation = evaluate(run, echo)
    exported = export(run, evaluation)
    state.update(evaluation=evaluation, exported=exported)
    (config.work_dir / "run.json").write_text(json.dumps(state, indent=1))
    (config.work_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    for name, path in exported.items():
        echo(f"exported {name}: {path}")
    return TrainResult("finished", start, int(run.step), total, evaluation, exported)


def evaluate(run: _Run, echo: Callable[[str], None]) -> dict[str, Any]:
    """Predictions on the held-out images; the metrics are printed and returned."""
    from tqdm import tqdm

    config = run.config
    if not run.held_out:
        echo("no held-out images (--held-out-fraction 0): no evaluation")
        return {}
    targets = multi_hot(run.held_out, run.tags) if config.task == "tagger" else deepix_bins(run.held_out)
    predictions: list[Any] = []
    batches = _named_errors(run.dataset(run.held_out, targets), run.held_out, config.batch_size)
    for images, _ in tqdm(batches, desc="held-out evaluation", unit="batch", disable=ON_TERMINAL_ONLY):
        predictions.append(run.model(images, training=False))
    if config.task == "tagger":
        scores = np.concatenate([np.asarray(p) for p in predictions])
        result: dict[str, Any] = tagger_metrics(targets > 0, scores, config.threshold)
        echo(
            f"held-out: macro mAP {result['macro_map']:.4f} over {result['tags_evaluated']} tags, "
            f"micro-F1 {result['micro_f1']:.4f} at {config.threshold} ({result['images']} images)"
        )
        return result
    result = {}
    for k, (name, _) in enumerate(DEEPIX_TARGETS):
        probabilities = np.concatenate([np.asarray(p[name]) for p in predictions])
        present = targets[:, k] >= 0
        result[name] = classification_metrics(targets[present, k], probabilities[present])
        if result[name]["examples"]:
            echo(
                f"held-out {name}: accuracy {result[name]['accuracy']:.4f}, log-loss {result[name]['log_loss']:.4f} "
                f"({result[name]['examples']} images)"
            )
    return result


def export(run: _Run, evaluation: dict[str, Any]) -> dict[str, str]:
    """New versions in the repository; evaluation.json beside each (assets.extra, which TF-Serving ignores)."""
    from acg2vec_models.export import export_deepix, export_image_embedder, export_tagger
    from acg2vec_models.image.folding import fold_batch_norms, fold_tagger_family
    from acg2vec_models.importers.common import finish, version_dir
    from acg2vec_models.vocab import TagEntry

    config, prep, root = run.config, run.backbone.prep, run.config.repository
    paths: dict[str, Path] = {}
    if config.task == "tagger":
        name = config.name or "tagger"
        entries = [TagEntry(t, "rating" if t.startswith("rating:") else "general") for t in run.tags]
        tagger, illust2vec = fold_tagger_family(run.backbone.encoder, run.model)  # BNs folded for serving
        paths[name] = export_tagger(tagger, prep, entries, version_dir(root, name))
        paths[config.illust2vec_name] = export_image_embedder(
            illust2vec, prep, version_dir(root, config.illust2vec_name)
        )
    else:
        name = config.name or "deepix"
        paths[name] = export_deepix(fold_batch_norms(run.model), prep, version_dir(root, name))
    for path in paths.values():
        extra = path / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / "evaluation.json").write_text(
            json.dumps({"evaluation": evaluation, "config": _plain(config)}, indent=1)
        )
    finish(root)
    return {k: str(v) for k, v in paths.items()}


def _plain(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))
