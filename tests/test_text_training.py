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
from safetensors.numpy import load_file

from acg2vec_models.text.importer import import_sentence_transformers
from acg2vec_models.text.train import Recipe, TrainingError, read_pairs, train
from acg2vec_models.vocab import DEEPDANBOORU_V3
from tests.test_text_sentencepiece import TITLES, build_xlmr_folder

RECIPE = Recipe(epochs=2, batch_size=8, learning_rate=1e-3, warmup_steps=2, seed=3)


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


def runner(base: Path, pairs: Path, out: Path, work: Path) -> list[str]:
    code = (
        "from pathlib import Path\n"
        "from acg2vec_models.text.train import Recipe, read_pairs, train\n"
        f"train(Path({str(base)!r}), read_pairs(Path({str(pairs)!r})), Path({str(out)!r}),\n"
        f"      Recipe(**{RECIPE.__dict__!r}), work_dir=Path({str(work)!r}), checkpoint_every=3,\n"
        "      echo=lambda s: print(s, flush=True))\n"
    )
    return [sys.executable, "-c", code]


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
    out, work = tmp_path / "out", tmp_path / "work"
    killed_at = kill_after_first_checkpoint(runner(setup["model"], setup["pairs"], out, work), tmp_path / "log")
    assert killed_at >= 3 and not (out / "model.safetensors").exists()
    lines: list[str] = []
    outcome = train(setup["model"], read_pairs(setup["pairs"]), out, RECIPE, work_dir=work, checkpoint_every=3,
                    echo=lines.append)  # fmt: skip
    assert outcome.resumed_from_step >= killed_at and any(line.startswith("resumed from") for line in lines)
    pairs = read_pairs(setup["pairs"])
    assert outcome.steps == RECIPE.epochs * (len({p.anime for p in pairs}) // RECIPE.batch_size)
    assert outcome.device == "cpu" and (out / "model.safetensors").exists()
    assert len(list((work / "checkpoints").glob("step-*.pt"))) == 2  # the last two are kept

    repo = tmp_path / "repo"
    imported = import_sentence_transformers(out, repo, "trained")  # checked against sentence-transformers
    assert imported.min_cosine is not None and imported.min_cosine >= 0.9999


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
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="not a JSON object"):
        read_pairs(bad)
