"""`acg2vec train`: a tagger run killed with SIGKILL continues from its last checkpoint, evaluates on the held-out
images and exports tagger + illust2vec; deepix trains its three heads; the real server serves what was trained.
Tiny data made here (acg2vec_testing.images) and a tiny DeepDanbooru (width 1/32, 32 px, one block a stage)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from acg2vec.v1 import common_pb2, image_feature_pb2, tagging_pb2
from acg2vec_models.export import read_labels
from acg2vec_models.training.backbones import BackboneOptions
from acg2vec_models.training.trainer import TrainConfig, TrainResult, train
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository, dev_model_repository
from tests.support.servers import serving

SMALL = BackboneOptions(width=1 / 32, input_size=32, repeats=(1, 1, 1, 1, 1, 1))
SMALL_FLAGS = ["--width", "0.03125", "--input-size", "32", "--repeats", "1,1,1,1,1,1"]


def write_manifest(folder: Path, n: int = 24) -> Path:
    """PNG files and a manifest in the openclipart shape (id, image, tags, title, artist) plus deepix numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (folder / f"{i}.png").write_bytes(image_bytes(i, size=(48, 40)))
        tags = ["even" if i % 2 == 0 else "odd"] + (["third"] if i % 3 == 0 else [])
        record = {"id": f"img/{i}", "image": f"{i}.png", "tags": tags, "title": f"picture {i}", "artist": "test",
                  "bookmarks": 7 * i * i, "views": 400 + 900 * i, "sanity": i % 8}  # fmt: skip
        if i == 5:
            del record["views"]  # a missing number leaves that head out for this line
        lines.append(json.dumps(record))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def kill_after_first_checkpoint(command: list[str], log: Path) -> int:
    """Runs the CLI, SIGKILLs it as soon as it reports a checkpoint; returns that checkpoint's step."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith("checkpoint saved at step"):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return int(line.split()[4].rstrip(":"))
        process.wait()
    raise AssertionError(f"no checkpoint before exit {process.returncode}: {''.join(seen)}{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("training")
    manifest = write_manifest(base / "data")
    repo = copy_repository(dev_model_repository(), base / "repo", only=["acgvoc2vec"])
    work = base / "work-tagger"
    command = [sys.executable, "-m", "acg2vec_server.cli.main", "train", "tagger", "--manifest", str(manifest),
               "--repository", str(repo), "--work-dir", str(work), *SMALL_FLAGS, "--epochs", "500",
               "--batch-size", "4", "--held-out-fraction", "0.25", "--checkpoint-every", "2"]  # fmt: skip
    killed_at = kill_after_first_checkpoint(command, base / "killed.log")
    assert not list(repo.glob("tagger/*")), "the killed run exported nothing"
    lines: list[str] = []
    tagger = train(
        TrainConfig("tagger", manifest, repo, work, backbone_options=SMALL, epochs=3, batch_size=4,
                    held_out_fraction=0.25, checkpoint_every=2),
        echo=lines.append,
    )  # fmt: skip
    deepix = train(
        TrainConfig("deepix", manifest, repo, base / "work-deepix", backbone_options=SMALL, epochs=1, batch_size=6,
                    held_out_fraction=0.25, deepix_blocks=2),
        echo=lines.append,
    )  # fmt: skip
    return {"repo": repo, "work": work, "killed_at": killed_at, "tagger": tagger, "deepix": deepix, "lines": lines}


def test_killed_tagger_run_continues_from_its_last_checkpoint(trained):
    result: TrainResult = trained["tagger"]  # type: ignore[assignment]
    assert result.resumed_from_step >= trained["killed_at"] >= 2
    assert any(
        line.startswith("resuming from ") and f"(step {result.resumed_from_step})" in line for line in trained["lines"]
    )
    assert result.status == "finished" and result.step == max(result.total_steps, result.resumed_from_step)
    assert result.total_steps == 3 * 5  # 18 training images in batches of 4, three epochs
    state = json.loads((trained["work"] / "run.json").read_text())
    assert sorted(state["identity"]["tags"]) == ["even", "odd", "third"] and state["exported"] == result.exported


def test_tagger_evaluation_is_printed_saved_and_exported(trained):
    result: TrainResult = trained["tagger"]  # type: ignore[assignment]
    evaluation = result.evaluation
    assert evaluation is not None and evaluation["images"] == 6 and evaluation["tags_evaluated"] >= 2
    assert 0.0 <= evaluation["micro_f1"] <= 1.0 and 0.0 < evaluation["macro_map"] <= 1.0
    assert any(line.startswith("held-out: macro mAP") for line in trained["lines"])
    assert json.loads((trained["work"] / "evaluation.json").read_text()) == evaluation
    tagger, illust2vec = Path(result.exported["tagger"]), Path(result.exported["illust2vec"])
    beside = json.loads((tagger / "assets.extra" / "evaluation.json").read_text())
    assert beside["evaluation"] == evaluation and beside["config"]["encoder_lr"] == 1e-5
    loaded = tf.saved_model.load(str(tagger))
    assert sorted(read_labels(loaded)[0]) == ["even", "odd", "third"]
    out = tf.saved_model.load(str(illust2vec)).signatures["serving_default"](image_bytes=tf.constant([image_bytes(1)]))
    assert out["embedding"].shape == (1, 32)  # the add_43-style cut: 1024 channels x width 1/32


def test_deepix_trains_three_heads_over_the_bins(trained):
    result: TrainResult = trained["deepix"]  # type: ignore[assignment]
    assert result.status == "finished" and set(result.exported) == {"deepix"}
    assert set(result.evaluation) == {"bookmarks", "views", "sanity"}
    for head in result.evaluation.values():
        assert head["examples"] >= 5 and 0.0 <= head["accuracy"] <= 1.0 and head["log_loss"] > 0.0
    out = tf.saved_model.load(result.exported["deepix"]).signatures["serving_default"](
        image_bytes=tf.constant([image_bytes(1), image_bytes(2)])
    )
    assert {k: tuple(v.shape) for k, v in out.items()} == {"bookmarks": (2, 15), "views": (2, 15), "sanity": (2, 5)}
    np.testing.assert_allclose(out["sanity"].numpy().sum(axis=1), 1.0, atol=1e-5)


async def test_trained_models_serve(trained, redis_server, tmp_path):
    async with serving(trained["repo"], tmp_path / "data", redis_server.url, "trained:v1") as stubs:
        tagged = await stubs.tagging.TagImage(
            tagging_pb2.TagImageRequest(
                image=image_bytes(3),
                options=tagging_pb2.TagOptions(
                    thresholds=tagging_pb2.CategoryThresholds(general=0.0), top_k=10, include_popularity=True
                ),
            )
        )
        vector = await stubs.image.ExtractImageFeature(
            image_feature_pb2.ExtractImageFeatureRequest(image=image_bytes(3))
        )
    tags = tagged.result.tags
    assert sorted(t.name for t in tags) == ["even", "odd", "third"]
    assert {t.category for t in tags} == {common_pb2.TAG_CATEGORY_GENERAL}
    popularity = tagged.result.popularity
    assert (len(popularity.bookmarks.bins), len(popularity.views.bins), len(popularity.sanity_level.bins)) == (
        15,
        15,
        5,
    )
    assert vector.feature.dimension == 32 and vector.feature.model.name == "illust2vec"
