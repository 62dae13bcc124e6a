"""Training a sentence encoder on any sentence pairs (`acg2vec train text --pairs`): a run killed with SIGKILL
continues from its last checkpoint; a run stopped and resumed ends with the same weights as one never stopped;
the trained model imports and serves. A tiny XLM-R with a SentencePiece tokenizer trained here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from acg2vec_models.text.train import Recipe, TrainingError, read_pairs, train
from acg2vec_models.vocab import DEEPDANBOORU_V3
from acg2vec_server.cli.main import main
from tests.test_text_sentencepiece import TITLES, build_xlmr_folder

#: One thread: the resumption test compares weights bit for bit (the default, two, may order sums differently).
RECIPE = Recipe(epochs=2, batch_size=8, learning_rate=1e-3, warmup_steps=2, seed=3, threads=1)


def write_pairs(path: Path) -> Path:
    """Title translations grouped by anime, and tags with their spaced forms, in the accepted key spellings."""
    lines = []
    for i in range(0, 21, 3):
        zh, ja, en = TITLES[i : i + 3]
        lines += [
            {"anchor": ja, "positive": zh, "group": f"anime-{i}"},
            {"query": ja, "document": en, "group": f"anime-{i}"},
        ]
    tags = [t.strip() for t in DEEPDANBOORU_V3.read_text(encoding="utf-8").splitlines() if "_" in t][:60]
    lines += [{"sentence1": t, "sentence2": t.replace("_", " ")} for t in tags]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    return path


def train_text_args(base: Path, pairs: Path, work: Path, repo: Path) -> list[str]:
    """`acg2vec train text` with the test's recipe (checkpoints every 3 steps)."""
    return ["train", "text", "--pairs", str(pairs), "--model", str(base), "--work-dir", str(work), "--repository",
            str(repo), "--name", "trained", "--epochs", str(RECIPE.epochs), "--batch-size", str(RECIPE.batch_size),
            "--learning-rate", str(RECIPE.learning_rate), "--seed", str(RECIPE.seed), "--checkpoint-every", "3",
            "--device", "cpu"]  # fmt: skip


def kill_after_first_checkpoint(command: list[str], log: Path) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("checkpoint saved at step"):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return int(line.split()[4].rstrip(":"))
        process.wait()
    raise AssertionError(f"no checkpoint before exit {process.returncode}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("text-training")
    folder, _ = build_xlmr_folder(base / "model")
    return {"base": base, "model": folder, "pairs": write_pairs(base / "pairs.jsonl")}


def weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def test_killed_run_continues_from_its_last_checkpoint(setup, tmp_path):
    """`acg2vec train text` killed with SIGKILL after its first checkpoint; the same command continues from the
    last checkpoint, trains to the end and installs the model; run once more, it only says where it is."""
    work, repo = tmp_path / "work", tmp_path / "repo"
    args = train_text_args(setup["model"], setup["pairs"], work, repo)
    command = [sys.executable, "-m", "acg2vec_server.cli.main", *args]
    killed_at = kill_after_first_checkpoint(command, tmp_path / "log")
    assert killed_at >= 3 and not (work / "model" / "model.safetensors").exists() and not repo.exists()

    resumed = CliRunner().invoke(main, args, catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    lines = resumed.output.splitlines()
    resumed_at = next(int(line.split(" at step ")[1].split()[0]) for line in lines if "resumed from" in line)
    pairs = read_pairs(setup["pairs"])
    steps = RECIPE.epochs * (len({p.anime for p in pairs}) // RECIPE.batch_size)
    assert resumed_at >= killed_at and "trained version 1 (" in resumed.output
    assert f"trained {steps} steps on cpu" in resumed.output
    assert len(list((work / "checkpoints").glob("step-*.pt"))) == 2  # the last two are kept
    cosine = float(next(line for line in lines if line.startswith("lowest cosine")).rsplit(" ", 1)[1])
    assert cosine >= 0.9999  # the installed model gives sentence-transformers' vectors

    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and "already trained and installed: trained version 1" in again.output
    assert sorted(p.name for p in (repo / "trained").iterdir()) == ["1"]


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(setup, tmp_path):
    pairs = read_pairs(setup["pairs"])
    whole = train(setup["model"], pairs, tmp_path / "whole", RECIPE, work_dir=tmp_path / "w1", checkpoint_every=4)
    first = train(setup["model"], pairs, tmp_path / "split", RECIPE, work_dir=tmp_path / "w2", checkpoint_every=4,
                  stop_after_steps=5)  # fmt: skip
    assert first.steps == 5 and not (tmp_path / "split" / "model.safetensors").exists()
    second = train(setup["model"], pairs, tmp_path / "split", RECIPE, work_dir=tmp_path / "w2", checkpoint_every=4)
    assert second.resumed_from_step == 5 and second.steps == whole.steps
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    base = weights(setup["model"])
    assert any(not np.array_equal(a[k], base[k]) for k in a)  # it did train

    with pytest.raises(TrainingError, match="other settings"):
        train(setup["model"], pairs, tmp_path / "x", Recipe(**{**RECIPE.__dict__, "learning_rate": 5e-4}),
              work_dir=tmp_path / "w2")  # fmt: skip


def test_pairs_files_are_checked(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "only one"}\n', encoding="utf-8")
    with pytest.raises(TrainingError, match=r"bad.jsonl:2: each line needs two non-empty texts"):
        read_pairs(bad)
    refused = CliRunner().invoke(main, ["train", "text", "--pairs", str(bad), "--model", str(tmp_path)])
    assert refused.exit_code == 1 and "Error: " in refused.output and "bad.jsonl:2: each line needs" in refused.output
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="not a JSON object"):
        read_pairs(bad)
